//! Forwarding one request: token → route → backend, with the headers a backend can trust, and a
//! distinct answer for each way it can fail.

use super::routes::{Lookup, Route, RouteCache};
use super::traffic::Traffic;
use bytes::Bytes;
use hangar::domain::BackendState;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Header naming the backend a request was routed to; set by the proxy, never taken from the
/// client.
pub const BACKEND_ID_HEADER: &str = "x-hangar-backend-id";
/// Header on the proxy's own error answers, naming the case for machines.
pub const ERROR_HEADER: &str = "x-hangar-error";

/// How often an open upgraded connection (WebSocket) counts as traffic for its backend.
const TUNNEL_ACTIVITY_INTERVAL: Duration = Duration::from_secs(1);

/// Why a request was not forwarded. Each case is its own status code and `x-hangar-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("the URL has no connection token: use the URL that Connect returned")]
    NoToken,
    #[error("unknown or expired connection token: call Connect again for a fresh URL")]
    UnknownToken,
    #[error("the backend behind this URL has terminated: call Connect again")]
    BackendTerminated,
    #[error("the backend is still starting; retry shortly")]
    BackendStarting,
    #[error("the backend does not answer")]
    BackendUnreachable,
    #[error("no controller answers; cannot look the route up")]
    ControllerUnavailable,
}

impl ProxyError {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::NoToken => (StatusCode::NOT_FOUND, "no-token"),
            ProxyError::UnknownToken => (StatusCode::NOT_FOUND, "unknown-token"),
            ProxyError::BackendTerminated => (StatusCode::GONE, "backend-terminated"),
            ProxyError::BackendStarting => (StatusCode::SERVICE_UNAVAILABLE, "backend-starting"),
            ProxyError::BackendUnreachable => (StatusCode::BAD_GATEWAY, "backend-unreachable"),
            ProxyError::ControllerUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "controller-unavailable"),
        }
    }

    pub fn response(&self) -> Response<ProxyBody> {
        let (status, code) = self.status();
        let mut response = Response::new(full(format!("{self}\n")));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        headers.insert(ERROR_HEADER, HeaderValue::from_static(code));
        if matches!(self, ProxyError::BackendStarting | ProxyError::ControllerUnavailable) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

fn full(text: String) -> ProxyBody {
    Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed()
}

pub struct Forwarder {
    routes: Arc<RouteCache>,
    client: Client<HttpConnector, Incoming>,
    traffic: Arc<Traffic>,
    startup_wait: Duration,
    tunnels: tokio_util::task::TaskTracker,
}

impl Forwarder {
    pub fn new(routes: Arc<RouteCache>, startup_wait: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Forwarder { routes, client, traffic: Arc::default(), startup_wait, tunnels: Default::default() }
    }

    pub fn traffic(&self) -> Arc<Traffic> {
        self.traffic.clone()
    }

    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let Some((token, rest)) = split_target(req.uri()) else {
            return ProxyError::NoToken.response();
        };
        let route = match self.route(&token).await {
            Ok(route) => route,
            Err(err) => return err.response(),
        };
        self.traffic.record(&route.backend_id);
        match self.forward(req, &route, &rest, peer).await {
            Ok(response) => response,
            Err(err) => {
                // The cached address may be stale (the backend moved or died): look it up again
                // next time.
                self.routes.invalidate_token(&token);
                err.response()
            }
        }
    }

    /// The route to a READY backend, waiting up to `startup_wait` for one that is starting.
    async fn route(&self, token: &str) -> Result<Route, ProxyError> {
        let began = Instant::now();
        loop {
            match self.routes.get(token).await {
                Lookup::NotFound => return Err(ProxyError::UnknownToken),
                Lookup::Unavailable(detail) => {
                    tracing::warn!(%detail, "route lookup failed");
                    return Err(ProxyError::ControllerUnavailable);
                }
                Lookup::Found(route) if route.state == BackendState::Ready => return Ok(route),
                Lookup::Found(route) if route.state >= BackendState::Terminating => {
                    return Err(ProxyError::BackendTerminated);
                }
                Lookup::Found(_) if began.elapsed() >= self.startup_wait => return Err(ProxyError::BackendStarting),
                Lookup::Found(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        route: &Route,
        rest: &str,
        peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let upgrade = wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        parts.uri =
            format!("http://{}{rest}", route.address).parse::<Uri>().map_err(|_| ProxyError::BackendUnreachable)?;
        parts.version = Version::HTTP_11;
        backend_headers(&mut parts.headers, route, peer, upgrade);
        let mut response = self.client.request(Request::from_parts(parts, body)).await.map_err(|err| {
            tracing::info!(backend_id = %route.backend_id, address = %route.address, error = %err, "backend unreachable");
            ProxyError::BackendUnreachable
        })?;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let backend_upgrade = hyper::upgrade::on(&mut response);
            let backend_id = route.backend_id.clone();
            let traffic = self.traffic.clone();
            self.tunnels.spawn(async move {
                match tokio::try_join!(client_upgrade, backend_upgrade) {
                    Ok((client, backend)) => {
                        let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
                        // An open WebSocket is a session in use: keep reporting its backend so the
                        // idle sweep does not end it under a connected client.
                        let mut in_use = tokio::time::interval(TUNNEL_ACTIVITY_INTERVAL);
                        let copy = tokio::io::copy_bidirectional(&mut client, &mut backend);
                        tokio::pin!(copy);
                        loop {
                            tokio::select! {
                                result = &mut copy => {
                                    if let Err(err) = result {
                                        tracing::debug!(%backend_id, error = %err, "upgraded connection ended");
                                    }
                                    break;
                                }
                                _ = in_use.tick() => traffic.record(&backend_id),
                            }
                        }
                    }
                    Err(err) => tracing::info!(%backend_id, error = %err, "upgrade failed"),
                }
            });
        } else {
            strip_hop_by_hop(response.headers_mut(), false);
        }
        Ok(response.map(|body| body.boxed()))
    }
}

/// `/{token}/rest?query` → (token, `/rest?query`).
fn split_target(uri: &Uri) -> Option<(String, String)> {
    let path = uri.path().strip_prefix('/')?;
    let (token, rest) = match path.split_once('/') {
        Some((token, rest)) => (token, format!("/{rest}")),
        None => (path, "/".to_string()),
    };
    if token.is_empty() {
        return None;
    }
    let rest = match uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest,
    };
    Some((token.to_string(), rest))
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.to_ascii_lowercase().contains("upgrade")))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) are for one connection and never forwarded; for an
/// upgrade, `Connection: upgrade` and `Upgrade` are what is being forwarded.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .filter(|name| !(keep_upgrade && name == "upgrade"))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// What the backend may rely on: `x-hangar-backend-id` and `x-verified-*` come from the proxy
/// only (a client's own are dropped), plus the usual forwarding headers.
fn backend_headers(headers: &mut HeaderMap, route: &Route, peer: SocketAddr, upgrade: bool) {
    strip_hop_by_hop(headers, upgrade);
    let spoofable: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-verified-") || name.as_str().starts_with("x-hangar-"))
        .cloned()
        .collect();
    for name in spoofable {
        headers.remove(name);
    }
    let original_host = headers.remove(header::HOST);
    if let Ok(value) = HeaderValue::from_str(&route.backend_id) {
        headers.insert(BACKEND_ID_HEADER, value);
    }
    if !route.user.is_empty()
        && let Ok(value) = HeaderValue::from_str(&route.user)
    {
        headers.insert("x-verified-user", value);
    }
    for (key, value) in &route.auth {
        let name = format!("x-verified-{}", key.to_ascii_lowercase());
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.insert(name, value);
        }
    }
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = original_host {
        headers.insert("x-forwarded-host", host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_the_first_segment_and_the_rest_keeps_its_query() {
        let uri: Uri = "/tok123/api/items?x=1&y=2".parse().unwrap();
        assert_eq!(split_target(&uri), Some(("tok123".into(), "/api/items?x=1&y=2".into())));
        assert_eq!(split_target(&"/tok123".parse().unwrap()), Some(("tok123".into(), "/".into())));
        assert_eq!(split_target(&"/tok123?q".parse().unwrap()), Some(("tok123".into(), "/?q".into())));
        assert_eq!(split_target(&"/".parse().unwrap()), None);
    }

    #[test]
    fn spoofed_verified_headers_are_replaced_by_the_routes_identity() {
        let mut headers = HeaderMap::new();
        headers.insert("x-verified-user", HeaderValue::from_static("mallory"));
        headers.insert("x-verified-role", HeaderValue::from_static("admin"));
        headers.insert("x-hangar-backend-id", HeaderValue::from_static("bk-other"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("hop"));
        let route = Route {
            backend_id: "bk-1".into(),
            state: BackendState::Ready,
            address: "127.0.0.1:1".into(),
            user: "alice".into(),
            auth: [("Team".to_string(), "blue".to_string())].into(),
            expires_at: None,
        };
        backend_headers(&mut headers, &route, "10.0.0.9:5000".parse().unwrap(), false);
        assert_eq!(headers["x-verified-user"], "alice");
        assert_eq!(headers["x-verified-team"], "blue");
        assert!(!headers.contains_key("x-verified-role"));
        assert_eq!(headers[BACKEND_ID_HEADER], "bk-1");
        assert!(!headers.contains_key("x-secret") && !headers.contains_key(header::CONNECTION));
        assert_eq!(headers["x-forwarded-for"], "10.0.0.9");
    }
}
