//! The admin listener that every Hangar process serves next to its main one (`--admin-listen`,
//! loopback by default): `/metrics` in Prometheus text format, `/healthz` (the process answers)
//! and `/readyz` (what it needs to do its job works: the store for a controller, an attached
//! controller for a drone or a proxy). A process adds its own routes (the controller's dashboard)
//! by merging them into [`router`]'s.
//!
//! Metrics go through the `metrics` facade: code anywhere records with `metrics::counter!` and
//! friends, and [`metrics_handle`] installs, once per process, the recorder that `/metrics`
//! renders. Until it is installed (a library used without an admin listener, most tests), every
//! recording is a no-op.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The value of `--admin-listen`: an address, or `off` for no admin listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminListen(pub Option<SocketAddr>);

impl std::str::FromStr for AdminListen {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        if value.eq_ignore_ascii_case("off") {
            return Ok(AdminListen(None));
        }
        value
            .parse()
            .map(|addr| AdminListen(Some(addr)))
            .map_err(|_| format!("{value:?} is not an address like 127.0.0.1:7071 (or `off` for no admin listener)"))
    }
}

/// One readiness condition, as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// Why it fails, or what it found ("attached to http://ctl-a:7070").
    pub detail: String,
}

impl Check {
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Check { name, ok: true, detail: detail.into() }
    }

    pub fn failed(name: &'static str, detail: impl Into<String>) -> Self {
        Check { name, ok: false, detail: detail.into() }
    }
}

type CheckFuture = Pin<Box<dyn Future<Output = Vec<Check>> + Send>>;

/// What `/readyz` runs on each request: the process's readiness conditions.
#[derive(Clone)]
pub struct Readiness(Arc<dyn Fn() -> CheckFuture + Send + Sync>);

impl Readiness {
    pub fn new<F, Fut>(check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Check>> + Send + 'static,
    {
        Readiness(Arc::new(move || Box::pin(check())))
    }

    /// Ready as soon as the process serves (nothing else to wait for).
    pub fn always() -> Self {
        Readiness::new(|| async { Vec::new() })
    }

    pub async fn check(&self) -> Vec<Check> {
        (self.0)().await
    }
}

/// The process-wide Prometheus recorder, installed on first use. Later calls return the same
/// handle, so a process that serves several admin listeners (dev) renders one set of series.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder installed first (an embedding program's) keeps its place; ours
            // then renders nothing, which `/metrics` shows as an empty page rather than failing.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics shows only ours");
            }
            handle
        })
        .clone()
}

/// `/metrics`, `/healthz` and `/readyz`.
pub fn router(readiness: Readiness) -> Router {
    let handle = metrics_handle();
    Router::new()
        .route("/metrics", get(move || std::future::ready(metrics_page(&handle))))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz).with_state(readiness))
}

fn metrics_page(handle: &PrometheusHandle) -> Response {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()).into_response()
}

async fn readyz(State(readiness): State<Readiness>) -> Response {
    let checks = readiness.check().await;
    let ready = checks.iter().all(|c| c.ok);
    let mut body = String::new();
    for check in &checks {
        let mark = if check.ok { "ok" } else { "FAILED" };
        body.push_str(&format!("{mark} {}: {}\n", check.name, check.detail));
    }
    body.push_str(if ready { "ready\n" } else { "not ready\n" });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, body).into_response()
}

/// A running admin listener.
pub struct AdminServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Serves `router` on `listener` until [`AdminServer::shutdown`].
    pub fn serve(listener: TcpListener, router: Router) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(error) = serve.await {
                tracing::warn!(%error, "admin listener failed");
            }
        });
        Ok(AdminServer { addr, shutdown, task })
    }

    /// Binds `addr` and serves `router` there.
    pub async fn bind(addr: SocketAddr, router: Router) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--admin-listen): {e}"))?;
        Ok(Self::serve(listener, router)?)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting; open requests (a dashboard's event stream) end with it.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get_text(url: &str) -> (u16, String) {
        // A minimal HTTP/1.1 GET, so the test needs no HTTP client crate.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
        let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    }

    #[tokio::test]
    async fn readyz_answers_503_naming_the_failed_check_and_200_once_it_passes() {
        let ok = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ok.clone();
        let readiness = Readiness::new(move || {
            let ok = flag.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                vec![
                    Check::ok("listener", "serving"),
                    if ok { Check::ok("store", "reachable") } else { Check::failed("store", "connection refused") },
                ]
            }
        });
        let admin = AdminServer::bind("127.0.0.1:0".parse().unwrap(), router(readiness)).await.unwrap();

        let (status, body) = get_text(&format!("{}/readyz", admin.url())).await;
        assert_eq!(status, 503);
        assert!(body.contains("FAILED store: connection refused"), "{body}");
        assert!(body.ends_with("not ready\n"), "{body}");

        ok.store(true, std::sync::atomic::Ordering::SeqCst);
        let (status, body) = get_text(&format!("{}/readyz", admin.url())).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("ok store: reachable"), "{body}");

        let (status, body) = get_text(&format!("{}/healthz", admin.url())).await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        admin.shutdown().await;
    }

    #[tokio::test]
    async fn metrics_renders_what_the_process_recorded() {
        let admin = AdminServer::bind("127.0.0.1:0".parse().unwrap(), router(Readiness::always())).await.unwrap();
        metrics::counter!("hangar_admin_test_total", "kind" => "unit").increment(3);
        let (status, body) = get_text(&format!("{}/metrics", admin.url())).await;
        assert_eq!(status, 200);
        assert!(body.contains("hangar_admin_test_total{kind=\"unit\"} 3"), "{body}");
        admin.shutdown().await;
    }
}
