//! Forwarding one request: token → route → backend, with the headers a backend can trust, and a
//! distinct answer for each way it can fail.

use super::routes::{CachedRoute, ConnRoute, Lookup, RouteCache};
use super::traffic::Traffic;
use bytes::Bytes;
use futures::FutureExt;
use hangar::domain::BackendState;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Header on the proxy's own error answers, naming the case for machines.
pub const ERROR_HEADER: &str = "x-hangar-error";

const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The most a backend connection reads at once. hyper's default (~400 KiB) let its read buffer
/// grow past glibc's mmap threshold on large bodies, and a cap of 64 KiB (the size nginx proxies
/// with here) took that out of the profile, but it halved the throughput of 1 MiB answers:
/// sixteen reads, sixteen writes and sixteen wake-ups of each side per body. With 256 KiB,
/// 1 MiB answers went from 0.54–0.57× nginx's rate to 0.89–1.04× over HTTP/1.1 and from
/// 0.41–0.48× to 0.69–0.70× over HTTP/2 (A/B of the two builds, alternating; BENCHMARKS.md,
/// "The backend read buffer"). 512 KiB measured the same within the noise.
const BACKEND_READ_BUFFER: usize = 256 * 1024;

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
    #[error("extended CONNECT is served for the websocket protocol only")]
    UnsupportedProtocol,
    #[error("the backend answered the WebSocket request without switching protocols")]
    UpgradeRefused,
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
            ProxyError::UnsupportedProtocol => (StatusCode::NOT_IMPLEMENTED, "unsupported-protocol"),
            ProxyError::UpgradeRefused => (StatusCode::BAD_GATEWAY, "upgrade-refused"),
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

/// What a client connection keeps between its requests.
pub struct Conn {
    peer: SocketAddr,
    /// `x-forwarded-for` for a request that comes without one.
    peer_ip: Option<HeaderValue>,
    route: ConnRoute,
    /// The connection's own connection to its backend, for HTTP/1.1 requests (see `send_own`).
    backend: std::sync::Mutex<Option<BackendConn>>,
}

impl Conn {
    pub fn new(peer: SocketAddr) -> Conn {
        Conn {
            peer,
            peer_ip: HeaderValue::from_str(&peer.ip().to_string()).ok(),
            route: ConnRoute::default(),
            backend: std::sync::Mutex::new(None),
        }
    }
}

struct BackendConn {
    authority: Authority,
    send: hyper::client::conn::http1::SendRequest<Incoming>,
}

impl BackendConn {
    async fn connect(authority: &Authority) -> Result<BackendConn, String> {
        let stream = tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(authority.as_str()))
            .await
            .map_err(|_| "connecting timed out".to_string())?
            .map_err(|err| err.to_string())?;
        let _ = stream.set_nodelay(true);
        let (send, connection) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(BACKEND_READ_BUFFER)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|err| err.to_string())?;
        // The one task of this backend connection; it ends when `send` is dropped.
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "backend connection ended with an error");
            }
        });
        Ok(BackendConn { authority: authority.clone(), send })
    }
}

pub struct Forwarder {
    routes: Arc<RouteCache>,
    client: Client<HttpConnector, Incoming>,
    traffic: Arc<Traffic>,
    startup_wait: Duration,
    /// Where upgraded connections run, so that the proxy's shutdown waits for them.
    tasks: TaskTracker,
    /// The proxy's shutdown: upgraded connections end (WebSockets with a close frame).
    stop: CancellationToken,
}

impl Forwarder {
    pub fn new(routes: Arc<RouteCache>, startup_wait: Duration, tasks: TaskTracker, stop: CancellationToken) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(BACKEND_CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .http1_max_buf_size(BACKEND_READ_BUFFER)
            .build(connector);
        Forwarder { routes, client, traffic: Arc::default(), startup_wait, tasks, stop }
    }

    pub fn traffic(&self) -> Arc<Traffic> {
        self.traffic.clone()
    }

    /// Answers one client request: forwarded to its backend, or the proxy's own error answer.
    /// Every answer is counted by status class (`hangar_proxy_requests_total`).
    pub async fn handle(&self, req: Request<Incoming>, conn: &Conn) -> Response<ProxyBody> {
        let response = self.answer(req, conn).await;
        crate::metrics::record_proxy_response(response.status());
        response
    }

    async fn answer(&self, mut req: Request<Incoming>, conn: &Conn) -> Response<ProxyBody> {
        let kind = match UpgradeKind::of(&req) {
            Ok(kind) => kind,
            Err(err) => return err.response(),
        };
        let upgrade = kind.is_some();
        // Taken before the request is split up; dropped unused if the request is not forwarded.
        let client_upgrade = kind.map(|kind| ClientUpgrade { on: hyper::upgrade::on(&mut req), kind });
        let (mut parts, body) = req.into_parts();
        let Some((token, rest)) = split_target(&parts.uri) else {
            return ProxyError::NoToken.response();
        };
        let route = match self.route(token, &conn.route).await {
            Ok(route) => route,
            Err(err) => return err.response(),
        };
        self.traffic.record_route(&route);
        let Some(authority) = route.authority.clone() else {
            tracing::info!(backend_id = %route.route.backend_id, address = %route.route.address, "backend address is not host:port");
            return ProxyError::BackendUnreachable.response();
        };
        // An HTTP/1.1 client sends one request at a time: it goes over the connection's own
        // backend connection, in origin form. HTTP/2 streams and upgrades go through the pool.
        let own = !upgrade && parts.version <= Version::HTTP_11;
        parts.uri = if own {
            Uri::from(rest)
        } else {
            let mut uri = http::uri::Parts::default();
            (uri.scheme, uri.authority, uri.path_and_query) = (Some(Scheme::HTTP), Some(authority.clone()), Some(rest));
            match Uri::from_parts(uri) {
                Ok(uri) => uri,
                Err(_) => return ProxyError::BackendUnreachable.response(),
            }
        };
        parts.version = Version::HTTP_11;
        backend_headers(&mut parts.headers, &route, conn, upgrade);
        if kind == Some(UpgradeKind::ExtendedConnect) {
            as_http1_websocket_upgrade(&mut parts);
        }
        let span = forward_span(&mut parts, &route);
        let backend = if own { Some((conn, &authority)) } else { None };
        let forwarded = self
            .forward(Request::from_parts(parts, body), client_upgrade, &route, backend)
            .instrument(span.clone())
            .await;
        span.record(
            "http.response.status_code",
            match &forwarded {
                Ok(response) => response.status().as_u16(),
                Err(err) => err.status().0.as_u16(),
            },
        );
        match forwarded {
            Ok(response) => response,
            Err(err) => {
                // The cached address may be stale (the backend moved or died): look it up again
                // next time.
                self.routes.invalidate(&route);
                err.response()
            }
        }
    }

    /// The route to a READY backend, waiting up to `startup_wait` for one that is starting.
    /// The controller holds the lookup until the backend is READY (`RouteCache::wait_ready`):
    /// no polling, and the request goes out as soon as the backend can take it.
    async fn route(&self, token: &str, conn: &ConnRoute) -> Result<Arc<CachedRoute>, ProxyError> {
        let began = Instant::now();
        let mut wait = Duration::ZERO;
        loop {
            let asked = Instant::now();
            let lookup = if wait.is_zero() {
                self.routes.get(token, conn).await
            } else {
                self.routes.wait_ready(token, conn, wait).await
            };
            match lookup {
                Lookup::NotFound => return Err(ProxyError::UnknownToken),
                Lookup::Unavailable(detail) => {
                    tracing::warn!(%detail, "route lookup failed");
                    return Err(ProxyError::ControllerUnavailable);
                }
                Lookup::Found(route) if route.route.state == BackendState::Ready => return Ok(route),
                Lookup::Found(route) if route.route.state >= BackendState::Terminating => {
                    return Err(ProxyError::BackendTerminated);
                }
                Lookup::Found(_) if began.elapsed() >= self.startup_wait => return Err(ProxyError::BackendStarting),
                Lookup::Found(_) => {
                    // Answered long before the wait ran out with the backend still starting: a
                    // controller that predates `wait_for_ready`; poll it as before.
                    if !wait.is_zero() && asked.elapsed() < wait / 2 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    wait = self.startup_wait.saturating_sub(began.elapsed());
                }
            }
        }
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        client_upgrade: Option<ClientUpgrade>,
        route: &CachedRoute,
        own: Option<(&Conn, &Authority)>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let websocket =
            req.headers().get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let backend_id = &route.route.backend_id;
        let sent = Instant::now();
        let response = match own {
            Some((conn, authority)) => send_own(conn, authority, req).await,
            None => self.client.request(req).await.map_err(|err| err.to_string()),
        };
        if response.is_ok() {
            crate::metrics::record_upstream(sent.elapsed());
        }
        let mut response = response.map_err(|err| {
            tracing::info!(%backend_id, address = %route.route.address, error = %err, "backend unreachable");
            ProxyError::BackendUnreachable
        })?;
        let extended_connect = client_upgrade.as_ref().is_some_and(|u| u.kind == UpgradeKind::ExtendedConnect);
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let backend_upgrade = hyper::upgrade::on(&mut response);
            let (backend_id, traffic, stop) = (backend_id.clone(), self.traffic.clone(), self.stop.clone());
            self.tasks.spawn(async move {
                match tokio::try_join!(client_upgrade.on, backend_upgrade) {
                    Ok((client, backend)) => tunnel(client, backend, websocket, &backend_id, &traffic, &stop).await,
                    Err(err) => tracing::info!(%backend_id, error = %err, "upgrade failed"),
                }
            });
            if extended_connect {
                return Ok(extended_connect_accepted(response));
            }
        } else {
            // A success other than 101 would open a tunnel to an HTTP/2 client that the backend
            // never agreed to (RFC 8441 §5); a refusal (4xx, 5xx) is passed back as it is.
            if extended_connect && response.status().is_success() {
                tracing::info!(%backend_id, status = %response.status(), "backend did not switch to WebSocket");
                return Err(ProxyError::UpgradeRefused);
            }
            strip_hop_by_hop(response.headers_mut(), false);
        }
        Ok(response.map(|body| body.boxed()))
    }
}

/// How a client asks for a connection that outlives its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpgradeKind {
    /// HTTP/1.1 `Connection: upgrade` (RFC 9110 §7.8): forwarded as it is.
    Http1,
    /// HTTP/2 extended CONNECT with `:protocol = websocket` (RFC 8441): forwarded as an HTTP/1.1
    /// WebSocket upgrade, whose 101 the HTTP/2 client gets as a 200.
    ExtendedConnect,
}

impl UpgradeKind {
    fn of(req: &Request<Incoming>) -> Result<Option<UpgradeKind>, ProxyError> {
        if req.method() == Method::CONNECT {
            return match req.extensions().get::<hyper::ext::Protocol>() {
                Some(protocol) if protocol.as_str().eq_ignore_ascii_case("websocket") => {
                    Ok(Some(UpgradeKind::ExtendedConnect))
                }
                Some(_) => Err(ProxyError::UnsupportedProtocol),
                // A plain CONNECT names a host, not a path: it has no token.
                None => Err(ProxyError::NoToken),
            };
        }
        Ok(wants_upgrade(req.headers()).then_some(UpgradeKind::Http1))
    }
}

/// The client's side of an upgrade, ready once its answer is sent.
struct ClientUpgrade {
    on: hyper::upgrade::OnUpgrade,
    kind: UpgradeKind,
}

/// Turns an extended CONNECT (already given the backend's headers) into the HTTP/1.1 request
/// RFC 6455 §4.1 describes: `GET` with `Upgrade: websocket` and a fresh `Sec-WebSocket-Key`.
/// `Sec-WebSocket-Protocol` and `Sec-WebSocket-Extensions` are the client's, passed on as they
/// are; the request has no body (hyper gives a CONNECT stream's data to the upgrade).
fn as_http1_websocket_upgrade(parts: &mut http::request::Parts) {
    use base64::Engine;
    parts.method = Method::GET;
    parts.extensions.remove::<hyper::ext::Protocol>();
    let headers = &mut parts.headers;
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    headers.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::try_from(key).expect("base64 is a valid header value"));
}

/// The HTTP/2 client's answer to a WebSocket the backend accepted: 200 with the backend's
/// headers (its chosen subprotocol and extensions among them), without those of the HTTP/1.1
/// handshake, and no body: the stream is the WebSocket from here on (RFC 8441 §5).
fn extended_connect_accepted(backend: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, _) = backend.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    parts.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.status = StatusCode::OK;
    parts.extensions = http::Extensions::new();
    Response::from_parts(parts, http_body_util::Empty::new().map_err(|never| match never {}).boxed())
}

/// Sends `req` over the client connection's own backend connection, made on first use (or when
/// the route moved to another address, or the backend closed it). No pool lock and no task per
/// request: the connection is the client connection's for as long as it lives. A request the old
/// connection did not take (it had closed) is sent again on a new one.
async fn send_own(
    conn: &Conn,
    authority: &Authority,
    mut req: Request<Incoming>,
) -> Result<Response<Incoming>, String> {
    let held = conn.backend.lock().unwrap().take().filter(|b| b.authority == *authority && !b.send.is_closed());
    let (mut backend, mut fresh) = match held {
        Some(backend) => (backend, false),
        None => (BackendConn::connect(authority).await?, true),
    };
    loop {
        // Waits for the previous response's body to be through (it is, for an HTTP/1.1 client).
        let sent = match backend.send.ready().await {
            Ok(()) => backend.send.try_send_request(req).await,
            Err(err) if fresh => return Err(err.to_string()),
            Err(_) => {
                (backend, fresh) = (BackendConn::connect(authority).await?, true);
                continue;
            }
        };
        match sent {
            Ok(response) => {
                *conn.backend.lock().unwrap() = Some(backend);
                return Ok(response);
            }
            Err(mut err) => match err.take_message() {
                Some(unsent) if !fresh => {
                    req = unsent;
                    (backend, fresh) = (BackendConn::connect(authority).await?, true);
                }
                _ => return Err(err.into_error().to_string()),
            },
        }
    }
}

/// A close frame with status 1001 (going away), as a server sends it (unmasked) …
const CLOSE_TO_CLIENT: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];
/// … and as a client sends it (masked, here with a zero key, which leaves the payload as is).
const CLOSE_TO_BACKEND: [u8; 8] = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE9];
/// How long a drained upgraded connection waits for its peers to close after the close frame.
const TUNNEL_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// An upgraded connection, both ways, until either side closes or the proxy shuts down. On
/// shutdown each direction finishes the WebSocket frame it is in, sends a close frame (1001,
/// going away) and closes; other upgrades just close.
async fn tunnel(
    client: hyper::upgrade::Upgraded,
    backend: hyper::upgrade::Upgraded,
    websocket: bool,
    backend_id: &str,
    traffic: &Traffic,
    stop: &CancellationToken,
) {
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (backend_read, backend_write) = tokio::io::split(TokioIo::new(backend));
    let to_backend = pump(client_read, backend_write, websocket.then_some(&CLOSE_TO_BACKEND[..]), stop);
    let to_client = pump(backend_read, client_write, websocket.then_some(&CLOSE_TO_CLIENT[..]), stop);
    let both = async { tokio::join!(to_backend, to_client) };
    tokio::pin!(both);
    // An open WebSocket is a session in use: keep reporting its backend so the idle sweep does
    // not end it under a connected client.
    let mut in_use = tokio::time::interval(TUNNEL_ACTIVITY_INTERVAL);
    loop {
        tokio::select! {
            (a, b) = &mut both => {
                if let Err(err) = a.and(b) {
                    tracing::debug!(%backend_id, error = %err, "upgraded connection ended");
                }
                return;
            }
            _ = in_use.tick() => traffic.record(backend_id),
        }
    }
}

/// How much an upgraded connection reads at once, per direction, while bytes flow.
const TUNNEL_BUFFER: usize = 16 * 1024;
/// How much an idle direction reads when bytes come: a small message (a keystroke, an echo)
/// passes through this without the large buffer.
const TUNNEL_IDLE_READ: usize = 512;

/// Copies `from` to `to` until `from` ends or `stop`; see [`tunnel`]. The large buffer is held
/// only while bytes flow: an idle direction waits in a small read and frees it, so that an idle
/// WebSocket costs the proxy no copy buffer; a read that fills the small one takes the large one
/// for what follows.
async fn pump<R, W>(mut from: R, mut to: W, close_frame: Option<&[u8]>, stop: &CancellationToken) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frames = Frames::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut stopping = false;
    let websocket = close_frame.is_some();
    loop {
        stopping |= stop.is_cancelled();
        if stopping && (!websocket || frames.at_boundary()) {
            break;
        }
        if buf.is_empty() {
            let mut small = [0u8; TUNNEL_IDLE_READ];
            let n = tokio::select! {
                biased;
                _ = stop.cancelled(), if !stopping => continue,
                n = from.read(&mut small) => n?,
            };
            if n == 0 {
                return to.shutdown().await;
            }
            if n < TUNNEL_IDLE_READ {
                pass_on(&mut to, &small[..n], &mut frames, websocket, stopping).await?;
                continue;
            }
            // More may be waiting: take it in the large buffer, without waiting.
            buf = vec![0u8; TUNNEL_BUFFER];
            buf[..n].copy_from_slice(&small);
            let more = match from.read(&mut buf[n..]).now_or_never() {
                Some(more) => more?,
                None => 0,
            };
            pass_on(&mut to, &buf[..n + more], &mut frames, websocket, stopping).await?;
        } else {
            match from.read(&mut buf).now_or_never() {
                Some(n) => match n? {
                    0 => return to.shutdown().await,
                    n => pass_on(&mut to, &buf[..n], &mut frames, websocket, stopping).await?,
                },
                // Nothing more for now: idle again, without the buffer.
                None => buf = Vec::new(),
            }
        }
    }
    if let Some(close_frame) = close_frame {
        to.write_all(close_frame).await?;
    }
    to.shutdown().await?;
    // Read (and drop) what the peer still sends, its close frame, until it closes: closing with
    // unread data would reset the connection under it.
    buf.resize(TUNNEL_BUFFER, 0);
    let _ = tokio::time::timeout(TUNNEL_CLOSE_WAIT, async { while from.read(&mut buf).await.is_ok_and(|n| n > 0) {} })
        .await;
    Ok(())
}

/// Writes `data` to `to`, keeping track of WebSocket frames; once stopping, nothing after the end
/// of the current frame is passed on.
async fn pass_on<W: AsyncWrite + Unpin>(
    to: &mut W,
    data: &[u8],
    frames: &mut Frames,
    websocket: bool,
    stopping: bool,
) -> std::io::Result<()> {
    let upto = if !websocket {
        data.len()
    } else if stopping {
        frames.feed_to_boundary(data)
    } else {
        frames.feed(data);
        data.len()
    };
    to.write_all(&data[..upto]).await
}

/// Where a WebSocket byte stream is between frames (RFC 6455 §5.2), so that a drain never cuts a
/// frame.
#[derive(Default)]
struct Frames {
    head: [u8; 14],
    have: usize,
    payload_left: u64,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            data = &data[self.feed_to_boundary(data)..];
        }
    }

    /// Consumes `data` up to and including the end of the current frame; returns how many bytes
    /// that is (all of them when the frame goes on past `data`).
    fn feed_to_boundary(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() {
            if self.payload_left > 0 {
                let take = self.payload_left.min((data.len() - i) as u64);
                (i, self.payload_left) = (i + take as usize, self.payload_left - take);
                if self.payload_left == 0 {
                    return i;
                }
                continue;
            }
            self.head[self.have] = data[i];
            (self.have, i) = (self.have + 1, i + 1);
            if let Some(len) = self.header_len() {
                (self.have, self.payload_left) = (0, len);
                if len == 0 {
                    return i;
                }
            }
        }
        i
    }

    /// The payload length once the header is complete.
    fn header_len(&self) -> Option<u64> {
        if self.have < 2 {
            return None;
        }
        let len7 = self.head[1] & 0x7f;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        if self.have < 2 + ext + mask {
            return None;
        }
        Some(match len7 {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => u64::from_be_bytes(self.head[2..10].try_into().expect("8 bytes")),
            n => u64::from(n),
        })
    }
}

/// `/{token}/rest?query` → (token, `/rest?query`).
fn split_target(uri: &Uri) -> Option<(&str, PathAndQuery)> {
    let path = uri.path().strip_prefix('/')?;
    let (token, rest) = match path.split_once('/') {
        Some((token, rest)) => (token, rest),
        None => (path, ""),
    };
    if token.is_empty() {
        return None;
    }
    let query = uri.query();
    let mut target = String::with_capacity(1 + rest.len() + query.map_or(0, |q| q.len() + 1));
    target.push('/');
    target.push_str(rest);
    if let Some(query) = query {
        target.push('?');
        target.push_str(query);
    }
    Some((token, PathAndQuery::try_from(target).ok()?))
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade")))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) are for one connection and never forwarded; for an
/// upgrade, `Connection: upgrade` and `Upgrade` are what is being forwarded.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Names the Connection header lists; the usual `keep-alive`, `close` and `upgrade` name no
    // other header (or one removed below), so the common case allocates nothing.
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for name in value.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            if name.is_empty()
                || ["keep-alive", "close", "upgrade"].iter().any(|c| name.eq_ignore_ascii_case(c.as_bytes()))
            {
                continue;
            }
            // Names are normalized to lower case.
            if let Ok(name) = HeaderName::from_bytes(name) {
                named.push(name);
            }
        }
    }
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

/// With traces on, the span of one forwarded request: it continues the client's `traceparent`
/// (or starts a trace), and the backend gets this hop's `traceparent` in its place. With traces
/// off, none, and the client's trace headers pass through untouched.
fn forward_span(parts: &mut http::request::Parts, route: &CachedRoute) -> tracing::Span {
    if !crate::telemetry::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: crate::telemetry::SPAN_TARGET,
        "proxy.forward",
        otel.name = format_args!("{} /{{token}}", parts.method),
        otel.kind = "server",
        http.request.method = %parts.method,
        hangar.backend_id = %route.route.backend_id,
        http.response.status_code = tracing::field::Empty,
    );
    crate::telemetry::set_parent_from_headers(&span, &parts.headers);
    crate::telemetry::inject_headers(&span, &mut parts.headers);
    span
}

/// What the backend may rely on: `x-hangar-backend-id` and `x-verified-*` come from the proxy
/// only (a client's own are dropped), plus the usual forwarding headers.
fn backend_headers(headers: &mut HeaderMap, route: &CachedRoute, conn: &Conn, upgrade: bool) {
    strip_hop_by_hop(headers, upgrade);
    let spoofable =
        |name: &HeaderName| name.as_str().starts_with("x-verified-") || name.as_str().starts_with("x-hangar-");
    if headers.keys().any(spoofable) {
        let names: Vec<HeaderName> = headers.keys().filter(|name| spoofable(name)).cloned().collect();
        for name in names {
            headers.remove(name);
        }
    }
    let original_host = match &route.host {
        Some(host) => headers.insert(header::HOST, host.clone()),
        None => headers.remove(header::HOST),
    };
    for (name, value) in &route.identity {
        headers.insert(name.clone(), value.clone());
    }
    match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => {
            if let Ok(value) = HeaderValue::from_str(&format!("{previous}, {}", conn.peer.ip())) {
                headers.insert("x-forwarded-for", value);
            }
        }
        None => {
            if let Some(value) = &conn.peer_ip {
                headers.insert("x-forwarded-for", value.clone());
            }
        }
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = original_host {
        headers.insert("x-forwarded-host", host);
    }
}

#[cfg(test)]
mod tests {
    use super::super::routes::BACKEND_ID_HEADER;
    use super::*;

    #[test]
    fn frame_boundaries_are_found_across_reads() {
        // A masked 3-byte text frame, then an unmasked one with a 16-bit length of 200.
        let mut stream = vec![0x81, 0x83, 1, 2, 3, 4, b'a', b'b', b'c', 0x82, 126, 0, 200];
        stream.extend([7u8; 200]);
        let mut frames = Frames::default();
        assert_eq!(frames.feed_to_boundary(&stream[..5]), 5);
        assert!(!frames.at_boundary());
        assert_eq!(frames.feed_to_boundary(&stream[5..]), 4, "the first frame ends after its payload");
        assert!(frames.at_boundary());
        frames.feed(&stream[9..100]);
        assert!(!frames.at_boundary());
        frames.feed(&stream[100..]);
        assert!(frames.at_boundary());
    }

    #[test]
    fn the_token_is_the_first_segment_and_the_rest_keeps_its_query() {
        let uri: Uri = "/tok123/api/items?x=1&y=2".parse().unwrap();
        let split = |uri: &str| {
            let uri: Uri = uri.parse().unwrap();
            split_target(&uri).map(|(token, rest)| (token.to_string(), rest.as_str().to_string()))
        };
        assert_eq!(
            split_target(&uri).map(|(t, r)| (t, r.as_str().to_string())),
            Some(("tok123", "/api/items?x=1&y=2".into()))
        );
        assert_eq!(split("/tok123"), Some(("tok123".into(), "/".into())));
        assert_eq!(split("/tok123?q"), Some(("tok123".into(), "/?q".into())));
        assert_eq!(split("/"), None);
    }

    #[test]
    fn spoofed_verified_headers_are_replaced_by_the_routes_identity() {
        let mut headers = HeaderMap::new();
        headers.insert("x-verified-user", HeaderValue::from_static("mallory"));
        headers.insert("x-verified-role", HeaderValue::from_static("admin"));
        headers.insert("x-hangar-backend-id", HeaderValue::from_static("bk-other"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("hop"));
        let route = super::super::routes::Route {
            backend_id: "bk-1".into(),
            state: BackendState::Ready,
            address: "127.0.0.1:1".into(),
            user: "alice".into(),
            auth: [("Team".to_string(), "blue".to_string())].into(),
            expires_at: None,
        };
        headers.insert(header::HOST, HeaderValue::from_static("proxy.example"));
        let route = CachedRoute::new(route, Duration::from_secs(5));
        backend_headers(&mut headers, &route, &Conn::new("10.0.0.9:5000".parse().unwrap()), false);
        assert_eq!(headers["x-verified-user"], "alice");
        assert_eq!(headers["x-verified-team"], "blue");
        assert!(!headers.contains_key("x-verified-role"));
        assert_eq!(headers[BACKEND_ID_HEADER], "bk-1");
        assert!(!headers.contains_key("x-secret") && !headers.contains_key(header::CONNECTION));
        assert_eq!(headers["x-forwarded-for"], "10.0.0.9");
        assert_eq!(
            (headers[header::HOST].as_bytes(), headers["x-forwarded-host"].as_bytes()),
            (&b"127.0.0.1:1"[..], &b"proxy.example"[..])
        );
    }
}
