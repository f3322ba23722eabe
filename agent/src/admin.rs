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
//!
//! Hot paths (heartbeats, proxy forwarding, watch fan-out) record through handles registered once
//! ([`Series`]), not through the macros, which look the series up by name and labels on every
//! call. Every series a process records is declared once in a [`MetricDef`] list (the
//! controller's in `hangar_server::metrics`, the drone's in `hangar_executor::metrics`), from
//! which its help text is registered ([`describe`]) and docs/metrics.md is checked.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
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

/// The controller a node agent (drone, proxy) is attached to right now, as its readiness names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedTo {
    pub controller: String,
    pub node_id: String,
}

impl AttachedTo {
    /// The `controller` check of an agent's (`"drone"`, `"proxy"`) `/readyz`: attached (to which
    /// controller, as which node), or not yet or no longer.
    pub fn check(agent: &str, attached: Option<&AttachedTo>) -> Check {
        match attached {
            Some(to) => {
                Check::ok("controller", format!("{agent} attached to {} as node {}", to.controller, to.node_id))
            }
            None => Check::failed(
                "controller",
                format!("{agent} not attached to any controller (connecting; its log says why)"),
            ),
        }
    }
}

type CheckFuture = Pin<Box<dyn Future<Output = Vec<Check>> + Send>>;

/// What `/readyz` runs on each request: the process's readiness conditions.
#[derive(Clone)]
pub struct Readiness(Arc<dyn Fn() -> CheckFuture + Send + Sync>);

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Readiness(..)")
    }
}

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

    /// Both sets of conditions, `self`'s first.
    pub fn and(self, other: Readiness) -> Readiness {
        Readiness::new(move || {
            let (a, b) = (self.clone(), other.clone());
            async move {
                let mut checks = a.check().await;
                checks.extend(b.check().await);
                checks
            }
        })
    }
}

/// Histogram buckets of every `*_seconds` series: from half a millisecond (a store read, a
/// forwarded request) to a minute (a placement whose backend pulls an image).
pub const SECONDS_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// How often histogram samples are folded into their buckets between scrapes, so that a process
/// nobody scrapes does not hold every sample it recorded.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use. Later calls return the same
/// handle, so a process that serves several admin listeners (dev) renders one set of series.
/// Histograms named `*_seconds` are rendered as Prometheus histograms with [`SECONDS_BUCKETS`].
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder installed first (an embedding program's) keeps its place; ours
            // then renders nothing, which `/metrics` shows as an empty page rather than failing.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics shows only ours");
            }
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new().name("hangar-metrics".into()).spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                }
            });
            if let Err(error) = spawned {
                tracing::warn!(%error, "no metrics upkeep thread; histogram samples are folded at scrape time only");
            }
            handle
        })
        .clone()
}

/// Whether [`metrics_handle`] installed the recorder: before that, recording is a no-op and a
/// [`Series`] registers nothing.
pub fn recorder_installed() -> bool {
    HANDLE.get().is_some()
}

/// Handles of a group of series (`metrics::Counter`, `Gauge`, `Histogram`), registered with the
/// recorder the first time they are asked for once it is installed, then reused: recording
/// through them is an atomic operation with no lookup and no allocation. Before the recorder is
/// installed [`Series::get`] is `None` (nothing would be recorded anyway), so that a handle
/// taken too early never stays a no-op for the life of the process.
pub struct Series<T> {
    cell: OnceLock<T>,
    register: fn() -> T,
}

impl<T> Series<T> {
    pub const fn new(register: fn() -> T) -> Self {
        Series { cell: OnceLock::new(), register }
    }

    pub fn get(&self) -> Option<&T> {
        if let Some(handles) = self.cell.get() {
            return Some(handles);
        }
        if !recorder_installed() {
            return None;
        }
        Some(self.cell.get_or_init(self.register))
    }
}

/// What kind of series a [`MetricDef`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    /// Its Prometheus `# TYPE`.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// One series a process records: its name, kind, label names and help text. The lists of these
/// are the one place names are spelled; code records through them and docs/metrics.md lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: MetricKind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

/// Registers the help text of `defs` with the recorder (`# HELP` lines); harmless to repeat.
pub fn describe(defs: &[MetricDef]) {
    for def in defs {
        match def.kind {
            MetricKind::Counter => metrics::describe_counter!(def.name, def.help),
            MetricKind::Gauge => metrics::describe_gauge!(def.name, def.help),
            MetricKind::Histogram => metrics::describe_histogram!(def.name, metrics::Unit::Seconds, def.help),
        }
    }
}

type ScrapeFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What runs before each `/metrics` render: sets the gauges that are cheaper to compute when
/// asked for than to keep up to date (the controller's nodes and backends by state).
#[derive(Clone)]
pub struct Scrape(Arc<dyn Fn() -> ScrapeFuture + Send + Sync>);

impl Scrape {
    pub fn new<F, Fut>(update: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Scrape(Arc::new(move || Box::pin(update())))
    }

    /// Nothing to compute: `/metrics` renders what was recorded.
    pub fn nothing() -> Self {
        Scrape::new(|| async {})
    }
}

/// `/metrics`, `/healthz` and `/readyz`.
pub fn router(readiness: Readiness) -> Router {
    router_with_scrape(readiness, Scrape::nothing())
}

/// [`router`], with `scrape` run before each `/metrics` render.
pub fn router_with_scrape(readiness: Readiness, scrape: Scrape) -> Router {
    let handle = metrics_handle();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let (handle, scrape) = (handle.clone(), scrape.clone());
                async move {
                    (scrape.0)().await;
                    metrics_page(&handle)
                }
            }),
        )
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
