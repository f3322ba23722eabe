//! How a node agent dials a controller.
//!
//! An agent's attach stream can sit idle on the wire between heartbeats, and a controller that
//! vanished without closing its sockets (a host that lost power, a dropped NAT entry) would leave
//! the agent waiting on a dead connection until its next write failed. HTTP/2 pings find that
//! out within seconds, so the agent moves on to another controller instead.
//!
//! TLS and the bearer token are the SDK's ([`hangar_client::Credentials`]): the drone, the proxy
//! and every other client set up a connection to a controller the same way.

use std::time::Duration;

use anyhow::Context;
use hangar_client::{Credentials, HangarChannel};
use tonic::transport::Endpoint;

/// How long dialing one controller may take before the agent tries the next one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an HTTP/2 ping goes out on a connection to a controller.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection counts as dead.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The endpoint of one controller (`http://HOST:PORT` or `https://HOST:PORT`), with the connect
/// timeout and keep-alives every agent connection uses (the attach streams and the proxy's route
/// lookups alike) and the TLS of `credentials`, whose files are read now.
pub fn controller_endpoint(url: &str, credentials: &Credentials) -> anyhow::Result<Endpoint> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("invalid controller URL {url:?}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    Ok(credentials.configure(endpoint)?)
}

/// A connection to one controller, with the token of `credentials` on every call.
pub async fn connect_controller(url: &str, credentials: &Credentials) -> anyhow::Result<HangarChannel> {
    let endpoint = controller_endpoint(url, credentials)?;
    let bearer = credentials.bearer()?;
    let channel = endpoint.connect().await.with_context(|| format!("cannot reach controller {url}"))?;
    Ok(HangarChannel::new(channel, bearer))
}

/// Checks, before an agent starts, that every controller URL and the credentials' files can be
/// used, so that a typo or a missing certificate fails the start instead of being retried
/// forever.
pub fn check_controllers(urls: &[String], credentials: &Credentials) -> anyhow::Result<()> {
    anyhow::ensure!(!urls.is_empty(), "at least one controller URL is needed");
    for url in urls {
        controller_endpoint(url, credentials)?;
    }
    credentials.bearer()?;
    Ok(())
}

/// Whether the controller at `url` answers, within `within`, that it serves `service` (the gRPC
/// health service's SERVING; health is open to every caller). A controller that cannot be
/// reached, or says NOT_SERVING, does not.
pub async fn serves(url: &str, credentials: &Credentials, service: &str, within: Duration) -> bool {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let check = async {
        let channel = connect_controller(url, credentials).await.ok()?;
        let request = HealthCheckRequest { service: service.to_string() };
        let answer = HealthClient::new(channel).check(request).await.ok()?;
        Some(answer.into_inner().status() == ServingStatus::Serving)
    };
    tokio::time::timeout(within, check).await.ok().flatten().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_controller_url_becomes_an_endpoint_and_garbage_does_not() {
        let endpoint = controller_endpoint("http://127.0.0.1:7070", &Credentials::default()).unwrap();
        assert_eq!(endpoint.uri().to_string(), "http://127.0.0.1:7070/");
        let err = controller_endpoint("not a url", &Credentials::default()).unwrap_err();
        assert!(format!("{err:#}").contains("invalid controller URL \"not a url\""), "{err:#}");
    }

    #[test]
    fn a_check_names_the_file_that_cannot_be_used() {
        let credentials = Credentials {
            tls: Some(hangar_client::ClientTls { ca: Some("/no/such/ca.pem".into()), ..Default::default() }),
            ..Credentials::default()
        };
        let err = check_controllers(&["https://ctl:7070".into()], &credentials).unwrap_err();
        assert!(format!("{err:#}").contains("/no/such/ca.pem"), "{err:#}");
        let err = check_controllers(&["http://ctl:7070".into()], &credentials).unwrap_err();
        assert!(format!("{err:#}").contains("use an https:// URL"), "{err:#}");
        assert!(check_controllers(&["http://ctl:7070".into()], &Credentials::default()).is_ok());
    }
}
