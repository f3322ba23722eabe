//! What one caller may ask of a controller, and what any connection may send: the controller's
//! defences against a caller that asks too much, by mistake or on purpose
//! (docs/design/security.md, "Limits"; the defaults are in docs/security.md).
//!
//! Two levels:
//!
//! - Per caller ([`LimitLayer`], after authentication): a request rate (token bucket), unary
//!   calls in flight, and open watch streams. A caller over a limit gets RESOURCE_EXHAUSTED with
//!   reason `RATE_LIMITED` (and when to retry), `CONCURRENCY_LIMITED` or `WATCH_LIMIT_REACHED`;
//!   nothing already running is cut off, so overload degrades new work and never ends sessions.
//! - Per connection ([`TransportLimits`], applied where the controller builds its server, and
//!   [`FirstRequestDeadline`] on every accepted connection): message sizes, HTTP/2 streams and
//!   header sizes, keep-alive, reset floods, call deadlines, and connections that never send a
//!   request. A request message over the size limit is RESOURCE_EXHAUSTED
//!   ([`OversizedRequestLayer`]), as in other gRPC servers.

mod caller;
mod counters;
mod first_request;
mod layer;
mod released_body;

pub use caller::CallerKey;
pub use first_request::FirstRequestDeadline;
pub use hangar_agent::oversized::{OversizedRequest, OversizedRequestLayer};
pub use layer::{CallKind, LimitLayer, LimitService};

use std::time::Duration;

/// What one caller may do at once. A caller is its principal when it authenticated, else its
/// address ([`CallerKey`]). 0 turns a limit off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Requests per second a caller may make on average (unary calls, and opening a stream).
    pub rate_per_second: u32,
    /// Requests a caller may make in one burst: the size of its token bucket, which refills at
    /// `rate_per_second` (0: the rate).
    pub burst: u32,
    /// Unary calls of one caller in flight at once.
    pub max_concurrent_calls: u32,
    /// Watch streams (`WatchNodes`, `WatchBackends`, `WatchBackend`, health and reflection streams) one caller
    /// may hold open. A drone's or proxy's `Attach` is not one: each node holds one stream,
    /// which a newer stream of the same node replaces.
    pub max_watches: u32,
    pub transport: TransportLimits,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            rate_per_second: 100,
            burst: 200,
            max_concurrent_calls: 64,
            max_watches: 256,
            transport: TransportLimits::default(),
        }
    }
}

impl LimitsConfig {
    /// No per-caller limit at all (the transport's limits stay): for benchmarks that open
    /// thousands of watches from one address.
    pub fn per_caller_off(self) -> Self {
        LimitsConfig { rate_per_second: 0, burst: 0, max_concurrent_calls: 0, max_watches: 0, ..self }
    }
}

/// What every connection may send, whoever sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportLimits {
    /// Largest gRPC message decoded or encoded, on every service.
    pub max_message_bytes: usize,
    /// HTTP/2 streams (calls) open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Largest header list (HPACK-decoded) one request may carry.
    pub max_header_list_bytes: u32,
    /// An HTTP/2 PING goes out after this much silence on a connection…
    pub keepalive_interval: Duration,
    /// …and the connection is closed when its answer takes longer than this.
    pub keepalive_timeout: Duration,
    /// Streams a client opened and reset before the server accepted them, at most, before the
    /// connection is closed with ENHANCE_YOUR_CALM (HTTP/2 "rapid reset", CVE-2023-44487).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server had to reset because of the client's protocol errors, at most, before
    /// the connection is closed with ENHANCE_YOUR_CALM.
    pub max_local_error_reset_streams: usize,
    /// How long a call may take until its response starts, when the client set no shorter
    /// deadline (`grpc-timeout`, always honoured). A stream's messages come after that point,
    /// so streams are bounded only by their own deadline.
    pub call_timeout: Duration,
    /// A connection whose first request has not arrived (its HTTP/2 preface and a complete
    /// header block) this long after it was accepted is closed: a slow-loris client cannot hold
    /// connections open for nothing.
    pub first_request_timeout: Duration,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            max_message_bytes: 4 << 20,
            max_concurrent_streams: 1024,
            max_header_list_bytes: 16 << 10,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            call_timeout: Duration::from_secs(60),
            first_request_timeout: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operator's table (docs/security.md, "Limits") says what the code does.
    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let docs = include_str!("../../../docs/security.md");
        let limits = &docs[docs.find("## Limits").expect("a Limits section")..];
        let config = LimitsConfig::default();
        let t = &config.transport;
        let thousands = |n: u32| if n >= 1000 { format!("{},{:03}", n / 1000, n % 1000) } else { n.to_string() };
        let expected = [
            format!("| {} per second, bursts of {} |", config.rate_per_second, config.burst),
            format!("| {} | `--max-concurrent-calls`", config.max_concurrent_calls),
            format!("| {} | `--max-watches`", config.max_watches),
            format!("| {} MiB |", t.max_message_bytes >> 20),
            format!("| {} |", thousands(t.max_concurrent_streams)),
            format!("| {} KiB |", t.max_header_list_bytes >> 10),
            format!(
                "a PING after {} s of silence; closed if unanswered for {} s",
                t.keepalive_interval.as_secs(),
                t.keepalive_timeout.as_secs()
            ),
            format!("| {} at a time |", t.max_pending_accept_reset_streams),
            format!("| {} |", thousands(t.max_local_error_reset_streams as u32)),
            format!("| {} s, or the client's `grpc-timeout`", t.call_timeout.as_secs()),
            format!("| {} s |", t.first_request_timeout.as_secs()),
        ];
        for line in expected {
            assert!(limits.contains(&line), "docs/security.md does not say {line:?}");
        }
    }
}
