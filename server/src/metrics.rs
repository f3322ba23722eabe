//! Every series the controller and the proxy record: names, kinds, labels and help text in one
//! list each ([`CONTROLLER`], [`PROXY`]), which docs/metrics.md follows and the alert rules are
//! checked against (tests/tests/metrics.rs). The drone's are `hangar_executor::metrics::DRONE`.
//!
//! Recording goes through handles registered once ([`Series`]): label values are static strings
//! or come from bounded sets (a gRPC method of the served descriptors, a state, a reason), never
//! a backend id, a key or a node name. Nothing here allocates on the hot paths (heartbeats, proxy
//! forwarding, watch fan-out).
//!
//! - [`GrpcMetricsLayer`]: the tower layer in front of the controller's gRPC services;
//! - [`scrape`]: the gauges computed when `/metrics` is read (nodes and backends by state);
//! - small `record_*` functions and handle groups for the code that records.

use crate::store::{Change, ChangeKind, DynStore, LocalCommit};
use crate::watch::WatchHub;
use hangar::domain::{BackendState, NodeFilter, NodeKind, NodeState, TerminationReason};
use hangar_agent::admin::{MetricDef, MetricKind, Scrape, Series};
use metrics::{Counter, Gauge, Histogram};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tower::{Layer, Service};

pub const GRPC_REQUESTS: &str = "hangar_grpc_server_requests_total";
pub const GRPC_DURATION: &str = "hangar_grpc_server_request_duration_seconds";
pub const WATCH_STREAMS: &str = "hangar_watch_streams_open";
pub const WATCH_EVENTS: &str = "hangar_watch_events_delivered_total";
pub const WATCH_CUT_OFF: &str = "hangar_watch_cut_off_total";
pub const NODES: &str = "hangar_nodes";
pub const BACKENDS: &str = "hangar_backends";
pub const BACKENDS_TERMINATED: &str = "hangar_backends_terminated_total";
pub const PLACEMENTS: &str = "hangar_placements_total";
pub const PLACEMENT_DURATION: &str = "hangar_placement_duration_seconds";
pub const HEARTBEAT_AGE: &str = "hangar_heartbeat_age_seconds";
pub const STORE_DURATION: &str = "hangar_store_operation_duration_seconds";
pub const STORE_ERRORS: &str = "hangar_store_operation_errors_total";
pub const PROXY_REQUESTS: &str = "hangar_proxy_requests_total";
pub const PROXY_UPSTREAM_DURATION: &str = "hangar_proxy_upstream_duration_seconds";

const fn def(name: &'static str, kind: MetricKind, labels: &'static [&'static str], help: &'static str) -> MetricDef {
    MetricDef { name, kind, labels, help }
}

use MetricKind::{Counter as C, Gauge as G, Histogram as H};

/// The controller's series.
pub const CONTROLLER: &[MetricDef] = &[
    def(
        GRPC_REQUESTS,
        C,
        &["service", "method", "code"],
        "gRPC calls answered, by service, method and status code; a stream counts when it ends, with the code it ended with.",
    ),
    def(
        GRPC_DURATION,
        H,
        &["service", "method"],
        "Time from a unary gRPC call's arrival to its answer (streams are not timed: their life is their length).",
    ),
    def(
        WATCH_STREAMS,
        G,
        &["watch"],
        "WatchNodes (watch=nodes) and WatchBackends (watch=backends) streams open on this controller.",
    ),
    def(WATCH_EVENTS, C, &["watch"], "Messages sent on watch streams: snapshot entries, changes and bookmarks."),
    def(
        WATCH_CUT_OFF,
        C,
        &["watch"],
        "Watch streams ended with RESOURCE_EXHAUSTED (WATCH_TOO_SLOW) because they fell further behind than the hub's ring reaches.",
    ),
    def(
        NODES,
        G,
        &["kind", "state"],
        "Nodes of every cluster by kind (DRONE, PROXY) and state (READY, DRAINING, UNHEALTHY, OFFLINE), as of the scrape.",
    ),
    def(
        BACKENDS,
        G,
        &["state"],
        "Backends of every cluster by state, as of the scrape; TERMINATED ones stay until --backend-retention removes them.",
    ),
    def(
        BACKENDS_TERMINATED,
        C,
        &["reason"],
        "Backends that reached TERMINATED through this controller, by termination reason.",
    ),
    def(
        PLACEMENTS,
        C,
        &["outcome"],
        "Connect calls by outcome: spawned (a backend was placed), found (the key's live backend), no_drone, pool_full, tag_mismatch, not_found.",
    ),
    def(
        PLACEMENT_DURATION,
        H,
        &[],
        "Time of a Connect that placed a new backend: candidate drones read, placed, Spawn action stored.",
    ),
    def(
        HEARTBEAT_AGE,
        H,
        &["kind"],
        "Age of a node's previous heartbeat when the next one arrives on this controller, by node kind: the heartbeat interval plus delays.",
    ),
    def(STORE_DURATION, H, &["operation"], "Time of a store operation (database round trips included), by operation."),
    def(STORE_ERRORS, C, &["operation"], "Store operations that failed, by operation."),
];

/// The proxy's series.
pub const PROXY: &[MetricDef] = &[
    def(
        PROXY_REQUESTS,
        C,
        &["class"],
        "Requests the proxy answered, by status class (1xx to 5xx), its own error answers included.",
    ),
    def(
        PROXY_UPSTREAM_DURATION,
        H,
        &[],
        "Time from sending a request to its backend to the backend's response headers.",
    ),
];

/// Every series `hangar-server` may record (the controller's and the proxy's).
pub fn all() -> impl Iterator<Item = &'static MetricDef> {
    CONTROLLER.iter().chain(PROXY)
}

// ---------------------------------------------------------------------------------------------
// gRPC

/// gRPC status codes as Prometheus label values, by their number.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const UNKNOWN_CODE: usize = 2;
const CANCELLED_CODE: usize = 1;

/// The series of one gRPC method: a counter per status code, registered on first use.
struct MethodSeries {
    service: &'static str,
    method: &'static str,
    unary: bool,
    codes: [OnceLock<Counter>; 17],
    duration: OnceLock<Histogram>,
}

impl MethodSeries {
    fn new(service: &'static str, method: &'static str, unary: bool) -> Self {
        MethodSeries { service, method, unary, codes: Default::default(), duration: OnceLock::new() }
    }

    fn record(&self, code: usize, started: Instant) {
        let code = code.min(CODES.len() - 1);
        let (service, method) = (self.service, self.method);
        self.codes[code]
            .get_or_init(
                || metrics::counter!(GRPC_REQUESTS, "service" => service, "method" => method, "code" => CODES[code]),
            )
            .increment(1);
        if self.unary {
            self.duration
                .get_or_init(|| metrics::histogram!(GRPC_DURATION, "service" => service, "method" => method))
                .record(started.elapsed());
        }
    }
}

/// Every method the controller serves (from the descriptors it serves), by path
/// (`/hangar.v1.NodeService/ListNodes`), and one series for any other path, so that a caller
/// cannot create series by calling made-up methods.
struct Methods {
    by_path: HashMap<String, MethodSeries>,
    other: MethodSeries,
}

static METHODS: Series<Methods> = Series::new(Methods::load);

impl Methods {
    fn load() -> Methods {
        use prost::Message;
        let sets = [
            hangar::v1::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut by_path = HashMap::new();
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else { continue };
            for file in set.file {
                for service in &file.service {
                    let name = match file.package() {
                        "" => service.name().to_string(),
                        package => format!("{package}.{}", service.name()),
                    };
                    // Leaked once per served service and method: a fixed, small set.
                    let service_name: &'static str = Box::leak(name.clone().into_boxed_str());
                    for method in &service.method {
                        let method_name: &'static str = Box::leak(method.name().to_string().into_boxed_str());
                        let unary = !method.client_streaming() && !method.server_streaming();
                        by_path.insert(
                            format!("/{name}/{method_name}"),
                            MethodSeries::new(service_name, method_name, unary),
                        );
                    }
                }
            }
        }
        Methods { by_path, other: MethodSeries::new("unknown", "unknown", true) }
    }

    fn get(&self, path: &str) -> &MethodSeries {
        self.by_path.get(path).unwrap_or(&self.other)
    }
}

/// Counts every gRPC call by service, method and status code, and times unary calls
/// ([`GRPC_REQUESTS`], [`GRPC_DURATION`]). Outermost in front of the services, so that calls
/// the auth and limit layers refuse are counted with their codes. A call's code is read from
/// the response headers (a trailers-only answer: an error, or a refusal) or from the trailers at
/// the end of the body; a body dropped before its end (the client went away) counts as
/// CANCELLED.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

/// A call being counted: its method's series and when it arrived.
struct Call {
    series: &'static MethodSeries,
    started: Instant,
}

impl Call {
    fn record(self, code: usize) {
        self.series.record(code, self.started);
    }
}

fn status_code(headers: &http::HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?;
    Some(value.to_str().ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(UNKNOWN_CODE))
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call =
            METHODS.get().map(|methods| Call { series: methods.get(request.uri().path()), started: Instant::now() });
        MeteredFuture { inner: self.inner.call(request), call }
    }
}

pin_project_lite::pin_project! {
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, B, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<MeteredBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                let call = match (call, status_code(response.headers())) {
                    (Some(call), Some(code)) => {
                        call.record(code);
                        None
                    }
                    (call, _) => call,
                };
                Ok(response.map(|body| MeteredBody { inner: body, call }))
            }
            Err(err) => {
                if let Some(call) = call {
                    call.record(UNKNOWN_CODE);
                }
                Err(err)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call's code when its trailers pass, or when it ends or
    /// is dropped without them.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().call.take() {
                call.record(CANCELLED_CODE);
            }
        }
    }
}

impl<B: http_body::Body> http_body::Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(code) = frame.trailers_ref().and_then(status_code)
                    && let Some(call) = this.call.take()
                {
                    call.record(code);
                }
            }
            Some(Err(_)) => {
                if let Some(call) = this.call.take() {
                    call.record(UNKNOWN_CODE);
                }
            }
            // Ended without trailers: not a gRPC answer tonic would give; count it as unknown.
            None => {
                if let Some(call) = this.call.take() {
                    call.record(UNKNOWN_CODE);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------------------------
// Watch streams

/// Which watch a stream serves: the `watch` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    Nodes,
    Backends,
    /// The dashboard's event stream (nodes and backends).
    Dashboard,
}

/// The series of one kind of watch stream.
pub struct WatchSeries {
    pub open: Gauge,
    pub delivered: Counter,
    pub cut_off: Counter,
}

impl WatchSeries {
    fn register(watch: &'static str) -> WatchSeries {
        WatchSeries {
            open: metrics::gauge!(WATCH_STREAMS, "watch" => watch),
            delivered: metrics::counter!(WATCH_EVENTS, "watch" => watch),
            cut_off: metrics::counter!(WATCH_CUT_OFF, "watch" => watch),
        }
    }
}

static NODE_WATCH: Series<WatchSeries> = Series::new(|| WatchSeries::register("nodes"));
static BACKEND_WATCH: Series<WatchSeries> = Series::new(|| WatchSeries::register("backends"));
static DASHBOARD_WATCH: Series<WatchSeries> = Series::new(|| WatchSeries::register("dashboard"));

/// The handles of `kind`'s watch streams, once the recorder is installed.
pub fn watch_series(kind: WatchKind) -> Option<&'static WatchSeries> {
    match kind {
        WatchKind::Nodes => NODE_WATCH.get(),
        WatchKind::Backends => BACKEND_WATCH.get(),
        WatchKind::Dashboard => DASHBOARD_WATCH.get(),
    }
}

// ---------------------------------------------------------------------------------------------
// Placements, terminations, heartbeats

/// What a Connect did: the `outcome` label of [`PLACEMENTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Spawned,
    Found,
    NoDrone,
    PoolFull,
    TagMismatch,
    NotFound,
}

impl Placement {
    const ALL: [Placement; 6] = [
        Placement::Spawned,
        Placement::Found,
        Placement::NoDrone,
        Placement::PoolFull,
        Placement::TagMismatch,
        Placement::NotFound,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Placement::Spawned => "spawned",
            Placement::Found => "found",
            Placement::NoDrone => "no_drone",
            Placement::PoolFull => "pool_full",
            Placement::TagMismatch => "tag_mismatch",
            Placement::NotFound => "not_found",
        }
    }
}

struct PlacementSeries {
    outcomes: [Counter; 6],
    duration: Histogram,
}

static PLACEMENT_SERIES: Series<PlacementSeries> = Series::new(|| PlacementSeries {
    outcomes: Placement::ALL.map(|outcome| metrics::counter!(PLACEMENTS, "outcome" => outcome.as_str())),
    duration: metrics::histogram!(PLACEMENT_DURATION),
});

/// A Connect ended with `outcome`; `started` is when it arrived (timed only when it spawned).
pub fn record_placement(outcome: Placement, started: Instant) {
    if let Some(series) = PLACEMENT_SERIES.get() {
        series.outcomes[outcome as usize].increment(1);
        if outcome == Placement::Spawned {
            series.duration.record(started.elapsed());
        }
    }
}

const REASONS: [TerminationReason; 9] = [
    TerminationReason::Swept,
    TerminationReason::Lifetime,
    TerminationReason::External,
    TerminationReason::KeyExpired,
    TerminationReason::Lost,
    TerminationReason::StartupTimeout,
    TerminationReason::Exited,
    TerminationReason::ImagePullFailed,
    TerminationReason::InternalError,
];

struct TerminationSeries {
    by_reason: [Counter; 9],
    /// A TERMINATED status with no reason (none is stored that way today).
    unknown: Counter,
}

static TERMINATIONS: Series<TerminationSeries> = Series::new(|| TerminationSeries {
    by_reason: REASONS.map(|reason| metrics::counter!(BACKENDS_TERMINATED, "reason" => reason.as_str())),
    unknown: metrics::counter!(BACKENDS_TERMINATED, "reason" => "UNKNOWN"),
});

/// A commit this process made: a backend that it moved to TERMINATED is counted by its reason
/// ([`BACKENDS_TERMINATED`]). Every such move is committed by exactly one controller, so the sum
/// over controllers counts each termination once.
pub fn record_commit(commit: &LocalCommit) {
    let Some(Change::Backend(change)) = &commit.change else { return };
    let ended = change.kind != ChangeKind::Removed
        && change.backend.status.state == BackendState::Terminated
        && change.previous != Some(BackendState::Terminated);
    if !ended {
        return;
    }
    let Some(series) = TERMINATIONS.get() else { return };
    let reason = change.backend.status.termination_reason;
    match reason.and_then(|reason| REASONS.iter().position(|r| *r == reason)) {
        Some(index) => series.by_reason[index].increment(1),
        None => series.unknown.increment(1),
    }
}

struct HeartbeatSeries {
    drone: Histogram,
    proxy: Histogram,
}

static HEARTBEATS: Series<HeartbeatSeries> = Series::new(|| HeartbeatSeries {
    drone: metrics::histogram!(HEARTBEAT_AGE, "kind" => NodeKind::Drone.as_str()),
    proxy: metrics::histogram!(HEARTBEAT_AGE, "kind" => NodeKind::Proxy.as_str()),
});

/// A heartbeat of a `kind` node arrived `age` after its previous one.
pub fn record_heartbeat(kind: NodeKind, age: Duration) {
    if let Some(series) = HEARTBEATS.get() {
        match kind {
            NodeKind::Drone => series.drone.record(age),
            NodeKind::Proxy => series.proxy.record(age),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Store

/// The series of one store operation.
pub struct StoreSeries {
    pub duration: Histogram,
    pub errors: Counter,
}

impl StoreSeries {
    pub fn register(operation: &'static str) -> StoreSeries {
        StoreSeries {
            duration: metrics::histogram!(STORE_DURATION, "operation" => operation),
            errors: metrics::counter!(STORE_ERRORS, "operation" => operation),
        }
    }

    /// An operation that started at `started` ended, failed or not.
    pub fn record(&self, started: Instant, failed: bool) {
        self.duration.record(started.elapsed());
        if failed {
            self.errors.increment(1);
        }
    }
}

/// The handles of one store operation, registered on first use: `store_series!("get_node")`.
#[macro_export]
macro_rules! store_series {
    ($operation:literal) => {{
        static SERIES: hangar_agent::admin::Series<$crate::metrics::StoreSeries> =
            hangar_agent::admin::Series::new(|| $crate::metrics::StoreSeries::register($operation));
        SERIES.get()
    }};
}

// ---------------------------------------------------------------------------------------------
// Proxy

struct ProxySeries {
    classes: [Counter; 5],
    upstream: Histogram,
}

static PROXY_SERIES: Series<ProxySeries> = Series::new(|| ProxySeries {
    classes: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| metrics::counter!(PROXY_REQUESTS, "class" => class)),
    upstream: metrics::histogram!(PROXY_UPSTREAM_DURATION),
});

/// The proxy answered a request with `status` (its own error answers included).
pub fn record_proxy_response(status: http::StatusCode) {
    if let Some(series) = PROXY_SERIES.get() {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        series.classes[class].increment(1);
    }
}

/// A backend answered the proxy's request with its headers `elapsed` after it was sent.
pub fn record_upstream(elapsed: Duration) {
    if let Some(series) = PROXY_SERIES.get() {
        series.upstream.record(elapsed);
    }
}

// ---------------------------------------------------------------------------------------------
// Gauges computed at scrape time

/// How long a scrape waits for the store before leaving the backend gauges as they were.
const SCRAPE_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the controller's `/metrics` computes before rendering: nodes by kind and state from the
/// hub's in-memory node view (no store read once it is seeded), and backends by state from one
/// `COUNT … GROUP BY state` on the store. Every combination is set, zeros included, so that a
/// state that empties reads 0 rather than its last value. Cluster-wide: every controller of a
/// database reports the same figures.
pub fn scrape(store: DynStore, hub: WatchHub) -> Scrape {
    hangar_agent::admin::metrics_handle();
    hangar_agent::admin::describe(CONTROLLER);
    Scrape::new(move || {
        let (store, hub) = (store.clone(), hub.clone());
        async move {
            match tokio::time::timeout(SCRAPE_STORE_TIMEOUT, count_nodes(&hub)).await {
                Ok(Ok(counts)) => {
                    for (k, kind) in NodeKind::ALL.iter().enumerate() {
                        for (s, state) in NodeState::ALL.iter().enumerate() {
                            metrics::gauge!(NODES, "kind" => kind.as_str(), "state" => state.as_str())
                                .set(f64::from(counts[k][s]));
                        }
                    }
                }
                Ok(Err(err)) => tracing::warn!(error = %err, "metrics scrape cannot list the nodes"),
                Err(_) => tracing::warn!("metrics scrape: listing the nodes timed out"),
            }
            match tokio::time::timeout(SCRAPE_STORE_TIMEOUT, store.backend_state_counts()).await {
                Ok(Ok(counts)) => {
                    for &state in BackendState::ALL {
                        let count = counts.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
                        metrics::gauge!(BACKENDS, "state" => state.as_str()).set(count as f64);
                    }
                }
                Ok(Err(err)) => tracing::warn!(error = %err, "metrics scrape cannot count the backends"),
                Err(_) => tracing::warn!("metrics scrape: counting the backends timed out"),
            }
        }
    })
}

/// Nodes listed per page while counting them.
const COUNT_PAGE: usize = 5000;

/// Nodes by kind and state at the current revision, page by page (from the node view once the
/// hub has seeded it).
async fn count_nodes(hub: &WatchHub) -> Result<Vec<Vec<u32>>, crate::store::StoreError> {
    let filter = NodeFilter::default();
    let mut counts = vec![vec![0u32; NodeState::ALL.len()]; NodeKind::ALL.len()];
    let mut at = None;
    let mut after: Option<String> = None;
    loop {
        let listing = hub.list_nodes(&filter, at, after.as_deref(), COUNT_PAGE).await?;
        at = Some(listing.revision);
        for change in &listing.nodes {
            if let crate::watch::Watched::Node { node, .. } = &change.object {
                let kind = NodeKind::ALL.iter().position(|k| *k == node.kind).unwrap_or(0);
                let state = NodeState::ALL.iter().position(|s| *s == node.state).unwrap_or(0);
                counts[kind][state] += 1;
                after = Some(node.id.clone());
            }
        }
        if !listing.more || listing.nodes.is_empty() {
            return Ok(counts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_declared_once_and_follows_the_prometheus_conventions() {
        let mut names = std::collections::HashSet::new();
        for def in all() {
            assert!(names.insert(def.name), "{} declared twice", def.name);
            assert!(def.name.starts_with("hangar_"), "{}", def.name);
            match def.kind {
                MetricKind::Counter => assert!(def.name.ends_with("_total"), "{}", def.name),
                MetricKind::Histogram => assert!(def.name.ends_with("_seconds"), "{}", def.name),
                MetricKind::Gauge => assert!(!def.name.ends_with("_total"), "{}", def.name),
            }
            assert!(!def.help.is_empty());
        }
    }

    #[test]
    fn the_served_methods_are_known_with_their_streaming_kind() {
        let methods = Methods::load();
        let connect = methods.get("/hangar.v1.BackendService/Connect");
        assert_eq!((connect.service, connect.method, connect.unary), ("hangar.v1.BackendService", "Connect", true));
        assert!(!methods.get("/hangar.v1.NodeService/WatchNodes").unary);
        assert_eq!(methods.get("/grpc.health.v1.Health/Check").method, "Check");
        assert_eq!(methods.get("/made.up.Service/Anything").service, "unknown");
    }
}
