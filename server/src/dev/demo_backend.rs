//! `hangar-server demo-backend`: the backend of dev's `hangar-demo` image. It serves HTTP on
//! `$PORT` and answers every request with which backend answered (its id, key and fencing
//! token), the `x-verified-*` headers the proxy set, and how many requests it has answered: a
//! page for browsers, plain text for `curl`. `/ws` is a WebSocket that echoes every message. It
//! ends cleanly on SIGTERM, as a backend should.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hangar::domain::{BACKEND_ID_VAR, BACKEND_KEY_VAR, FENCING_TOKEN_VAR, PORT_VAR};
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The port a backend listens on when `PORT` is not set (the runtimes always set it).
const DEFAULT_PORT: u16 = 8080;

/// User agent of the drone's readiness probe: its requests are not counted as hits.
const PROBE_USER_AGENT: &str = "hangar-drone";

/// Who this backend is, from the environment every backend gets.
#[derive(Clone, Debug, Default)]
struct Identity {
    backend_id: String,
    key: String,
    fencing_token: String,
}

impl Identity {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        Identity { backend_id: var(BACKEND_ID_VAR), key: var(BACKEND_KEY_VAR), fencing_token: var(FENCING_TOKEN_VAR) }
    }
}

struct Demo {
    identity: Identity,
    hits: AtomicU64,
    /// Owns the WebSocket sessions, which outlive the HTTP exchange that opened them.
    sessions: TaskTracker,
    stop: CancellationToken,
}

/// Serves on `host:$PORT` until SIGTERM or SIGINT.
pub async fn run(host: IpAddr) -> anyhow::Result<()> {
    let port = match std::env::var(PORT_VAR) {
        Ok(port) => port.parse().with_context(|| format!("PORT={port:?} is not a port number"))?,
        Err(_) => DEFAULT_PORT,
    };
    let address = SocketAddr::new(host, port);
    let listener =
        tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
    let identity = Identity::from_env();
    tracing::info!(%address, backend_id = identity.backend_id, "demo backend listening");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let hits = serve(listener, identity, stop).await;
    tracing::info!(hits, "demo backend stopped");
    Ok(())
}

/// Serves on `listener` until `stop` resolves; returns the number of hits.
async fn serve(listener: tokio::net::TcpListener, identity: Identity, stop: impl Future<Output = ()>) -> u64 {
    let demo = Arc::new(Demo {
        identity,
        hits: AtomicU64::new(0),
        sessions: TaskTracker::new(),
        stop: CancellationToken::new(),
    });
    // Connections end with the server: a demo keeps nothing worth draining for.
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let demo = demo.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let demo = demo.clone();
                async move { Ok::<_, Infallible>(demo.handle(request)) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
        });
    }
    connections.shutdown().await;
    demo.stop.cancel();
    demo.sessions.close();
    demo.sessions.wait().await;
    demo.hits.load(Ordering::Relaxed)
}

/// A WebSocket opening handshake (RFC 6455 §4.2.1): its `Sec-WebSocket-Key`.
fn websocket_key<B>(request: &Request<B>) -> Option<&[u8]> {
    let headers = request.headers();
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
    };
    if request.method() != http::Method::GET
        || !has(header::CONNECTION, "upgrade")
        || !has(header::UPGRADE, "websocket")
    {
        return None;
    }
    headers.get(header::SEC_WEBSOCKET_KEY).map(|key| key.as_bytes())
}

impl Demo {
    fn handle(self: Arc<Self>, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if request.uri().path() == "/ws"
            && let Some(key) = websocket_key(&request)
        {
            return self.echo(&derive_accept_key(key), request);
        }
        self.answer(&request)
    }

    /// Accepts the WebSocket and echoes every text and binary message back until the client
    /// closes it or the server stops.
    fn echo(self: Arc<Self>, accept: &str, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        self.hits.fetch_add(1, Ordering::Relaxed);
        let stop = self.stop.clone();
        self.sessions.spawn(async move {
            let upgraded = match hyper::upgrade::on(request).await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    tracing::debug!(%err, "websocket upgrade failed");
                    return;
                }
            };
            let mut socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            loop {
                let message = tokio::select! {
                    message = socket.next() => message,
                    _ = stop.cancelled() => {
                        let _ = socket.close(None).await;
                        return;
                    }
                };
                match message {
                    Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                        if socket.send(message).await.is_err() {
                            return;
                        }
                    }
                    // Pings are answered by the library; a close ends the session.
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .body(Full::new(Bytes::new()))
            .expect("static headers are valid")
    }

    fn answer<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let headers = request.headers();
        let probe = headers.get(header::USER_AGENT).is_some_and(|ua| ua == PROBE_USER_AGENT);
        let hits =
            if probe { self.hits.load(Ordering::Relaxed) } else { self.hits.fetch_add(1, Ordering::Relaxed) + 1 };
        let page =
            Page { identity: &self.identity, hits, path: request.uri().path(), verified: verified_headers(headers) };
        let wants_html = headers
            .get(header::ACCEPT)
            .and_then(|accept| accept.to_str().ok())
            .is_some_and(|accept| accept.contains("text/html"));
        let (content_type, body) = if wants_html {
            ("text/html; charset=utf-8", page.html())
        } else {
            ("text/plain; charset=utf-8", page.text())
        };
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CACHE_CONTROL, "no-store")
            .body(Full::new(Bytes::from(body)))
            .expect("static headers are valid")
    }
}

/// The `x-verified-*` headers (and the proxy's `x-hangar-backend-id`), sorted by name.
fn verified_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-verified-") || name.as_str() == "x-hangar-backend-id")
        .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    found.sort();
    found
}

struct Page<'a> {
    identity: &'a Identity,
    hits: u64,
    path: &'a str,
    verified: Vec<(String, String)>,
}

impl Page<'_> {
    fn rows(&self) -> Vec<(&'static str, String)> {
        let or_none = |value: &str| if value.is_empty() { "(none)".to_string() } else { value.to_string() };
        vec![
            ("backend", or_none(&self.identity.backend_id)),
            ("key", or_none(&self.identity.key)),
            ("fencing token", or_none(&self.identity.fencing_token)),
            ("hits", self.hits.to_string()),
            ("path", self.path.to_string()),
        ]
    }

    fn text(&self) -> String {
        let mut out = String::from("Hello from Hangar's demo backend.\n\n");
        for (name, value) in self.rows() {
            out.push_str(&format!("{name:<15}{value}\n"));
        }
        out.push_str("\nHeaders the proxy set:\n");
        if self.verified.is_empty() {
            out.push_str("  (none: this request did not come through the proxy)\n");
        }
        for (name, value) in &self.verified {
            out.push_str(&format!("  {name}: {value}\n"));
        }
        out.push_str("\nConnect with the same key again and you reach this same backend.\n");
        out.push_str("A WebSocket at ws://…/TOKEN/ws echoes every message you send.\n");
        out
    }

    fn html(&self) -> String {
        let rows: String = self
            .rows()
            .into_iter()
            .map(|(name, value)| format!("<tr><th>{name}</th><td>{}</td></tr>", escape(&value)))
            .collect();
        let headers: String = if self.verified.is_empty() {
            "<li><em>none: this request did not come through the proxy</em></li>".into()
        } else {
            self.verified
                .iter()
                .map(|(name, value)| format!("<li><code>{name}: {}</code></li>", escape(value)))
                .collect()
        };
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Hangar demo backend</title>\n\
             <style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#222}}\
             h1{{font-size:1.4rem}}table{{border-collapse:collapse}}th{{text-align:left;padding:.3rem 1.5rem .3rem 0;\
             color:#666;font-weight:normal}}td{{font-family:ui-monospace,monospace}}code{{font-size:.95em}}</style>\n\
             </head><body>\n<h1>Hello from Hangar's demo backend</h1>\n<table>{rows}</table>\n\
             <h2 style=\"font-size:1.1rem\">Headers the proxy set</h2>\n<ul>{headers}</ul>\n\
             <p>Reload: the same backend answers and the hits go up. Connect with the same key again and \
             you reach this same backend. A WebSocket at <code>ws/</code> under this URL echoes every message.</p>\n\
             </body></html>\n"
        )
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity { backend_id: "bk-1".into(), key: "docs/doc-1".into(), fencing_token: "3".into() }
    }

    fn demo() -> Demo {
        Demo {
            identity: identity(),
            hits: AtomicU64::new(0),
            sessions: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    fn body(response: Response<Full<Bytes>>) -> (String, String) {
        let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap().to_string();
        let body =
            futures::executor::block_on(http_body_util::BodyExt::collect(response.into_body())).unwrap().to_bytes();
        (content_type, String::from_utf8(body.to_vec()).unwrap())
    }

    #[test]
    fn curl_gets_text_naming_the_backend_its_headers_and_the_hits() {
        let demo = demo();
        let request = Request::get("/notes")
            .header("x-verified-user", "alice")
            .header("x-hangar-backend-id", "bk-1")
            .header("x-other", "not shown")
            .body(())
            .unwrap();
        let _ = demo.answer(&request);
        let (content_type, text) = body(demo.answer(&request));
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        for expected in
            ["bk-1", "docs/doc-1", "fencing token  3", "hits           2", "/notes", "x-verified-user: alice"]
        {
            assert!(text.contains(expected), "{expected:?} in:\n{text}");
        }
        assert!(!text.contains("x-other"), "{text}");
    }

    #[test]
    fn browsers_get_a_page_with_header_values_escaped() {
        let demo = demo();
        let request = Request::get("/")
            .header(header::ACCEPT, "text/html,application/xhtml+xml")
            .header("x-verified-user", "<script>alert(1)</script>")
            .body(())
            .unwrap();
        let (content_type, html) = body(demo.answer(&request));
        assert!(content_type.starts_with("text/html"), "{content_type}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !html.contains("<script>"), "{html}");
        assert!(html.contains("docs/doc-1"), "{html}");
    }

    #[test]
    fn the_drones_readiness_probe_is_not_a_hit() {
        let demo = demo();
        let probe = Request::get("/").header(header::USER_AGENT, PROBE_USER_AGENT).body(()).unwrap();
        let _ = demo.answer(&probe);
        let (_, text) = body(demo.answer(&Request::get("/").body(()).unwrap()));
        assert!(text.contains("hits           1"), "{text}");
    }

    #[tokio::test]
    async fn websocket_at_ws_echoes_until_the_server_stops() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, identity(), async move {
            let _ = stop_rx.await;
        }));
        let (mut socket, response) = tokio_tungstenite::connect_async(format!("ws://{address}/ws")).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        socket.send(Message::text("hello")).await.unwrap();
        assert_eq!(socket.next().await.unwrap().unwrap(), Message::text("hello"));
        socket.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        assert_eq!(socket.next().await.unwrap().unwrap(), Message::binary(vec![1u8, 2, 3]));
        // Stopping ends the session with a close, and the server returns.
        stop_tx.send(()).unwrap();
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while let Some(Ok(message)) = socket.next().await {
                if message.is_close() {
                    return;
                }
            }
        });
        closed.await.expect("the session ends when the server stops");
        let hits = tokio::time::timeout(std::time::Duration::from_secs(5), server).await.unwrap().unwrap();
        assert_eq!(hits, 1, "the WebSocket counts as one hit");
    }
}
