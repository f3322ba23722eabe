//! What Hangar's two node agents share. A drone and a proxy both keep one `Attach` stream open to
//! one of several controllers, heartbeat with the host's real resources, and move on to the next
//! controller when a stream breaks. Those pieces live here, once, so the two cannot drift apart,
//! and so the proxy (built into `hangar-server`) does not link the drone's runtimes to get them:
//!
//! - [`attach::attach_forever`]: round-robin over the controllers with jittered backoff, until
//!   shutdown or a refusal; each agent supplies what one stream does ([`attach::Attach`]);
//! - [`controller_endpoint`] and [`connect_controller`]: how an agent dials a controller
//!   (connect timeout, HTTP/2 keep-alives, and the TLS and token of its
//!   [`Credentials`](hangar_client::Credentials));
//! - [`Backoff`] and [`HostResources`];
//! - [`admin`]: the admin listener (`/metrics`, `/healthz`, `/readyz`) every Hangar process
//!   serves, the controller's included;
//! - [`telemetry`]: logs and OpenTelemetry traces (OTLP export, `traceparent` propagation, the
//!   gRPC server span layer), the same in every Hangar process;
//! - [`oversized`]: a request message over a server's size limit is RESOURCE_EXHAUSTED, on the
//!   controller's API and on the executor socket alike.

pub mod admin;
pub mod attach;
mod backoff;
mod endpoint;
mod host;
pub mod oversized;
pub mod telemetry;

pub use backoff::Backoff;
pub use endpoint::{CONNECT_TIMEOUT, check_controllers, connect_controller, controller_endpoint, serves};
pub use host::HostResources;
