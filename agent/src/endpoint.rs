//! How a node agent dials a controller.
//!
//! An agent's attach stream can sit idle on the wire between heartbeats, and a controller that
//! vanished without closing its sockets (a host that lost power, a dropped NAT entry) would leave
//! the agent waiting on a dead connection until its next write failed. HTTP/2 pings find that
//! out within seconds, so the agent moves on to another controller instead.

use std::time::Duration;

use tonic::transport::Endpoint;

/// How long dialing one controller may take before the agent tries the next one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an HTTP/2 ping goes out on a connection to a controller.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection counts as dead.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The endpoint of one controller (`http://HOST:PORT`), with the connect timeout and keep-alives
/// every agent connection uses: the attach streams and the proxy's route lookups alike.
pub fn controller_endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_controller_url_becomes_an_endpoint_and_garbage_does_not() {
        let endpoint = controller_endpoint("http://127.0.0.1:7070").unwrap();
        assert_eq!(endpoint.uri().to_string(), "http://127.0.0.1:7070/");
        assert!(controller_endpoint("not a url").is_err());
    }
}
