//! `hangar-server demo-backend`: the backend of dev's `hangar-demo` image. It serves HTTP on
//! `$PORT` and answers every request with which backend answered (its id, key and fencing
//! token), the `x-verified-*` headers the proxy set, and how many requests it has answered: a
//! page for browsers, plain text for `curl`. It ends cleanly on SIGTERM, as a backend should.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::task::JoinSet;

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
        Identity {
            backend_id: var("HANGAR_BACKEND_ID"),
            key: var("HANGAR_BACKEND_KEY"),
            fencing_token: var("HANGAR_FENCING_TOKEN"),
        }
    }
}

struct Demo {
    identity: Identity,
    hits: AtomicU64,
}

/// Serves on `host:$PORT` until SIGTERM or SIGINT.
pub async fn run(host: IpAddr) -> anyhow::Result<()> {
    let port = match std::env::var("PORT") {
        Ok(port) => port.parse().with_context(|| format!("PORT={port:?} is not a port number"))?,
        Err(_) => DEFAULT_PORT,
    };
    let address = SocketAddr::new(host, port);
    let listener =
        tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
    let demo = Arc::new(Demo { identity: Identity::from_env(), hits: AtomicU64::new(0) });
    tracing::info!(%address, backend_id = demo.identity.backend_id, "demo backend listening");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Connections end with the process: a demo keeps nothing worth draining for.
    let mut connections = JoinSet::new();
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
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let demo = demo.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let demo = demo.clone();
                async move { Ok::<_, Infallible>(demo.answer(&request)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
    tracing::info!(hits = demo.hits.load(Ordering::Relaxed), "demo backend stopping");
    Ok(())
}

impl Demo {
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
             you reach this same backend.</p>\n</body></html>\n"
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

    fn demo() -> Demo {
        let identity = Identity { backend_id: "bk-1".into(), key: "docs/doc-1".into(), fencing_token: "3".into() };
        Demo { identity, hits: AtomicU64::new(0) }
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
}
