//! Every series the drone records ([`DRONE`]), which docs/metrics.md follows, and where they are
//! recorded: [`MeteredRuntime`] around the drone's runtime (every call the drone makes to it, an
//! executor over its socket or an in-process runtime alike) and the journal's backlog
//! (`drone::journal`). The controller's and the proxy's are `hangar_server::metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hangar_agent::admin::{MetricDef, MetricKind, Series};
use metrics::Gauge;

use crate::runtime::{
    BackendInfo, BackendSpec, Capability, Condition, EventStream, ImageReady, PullPolicy, Runtime, RuntimeError,
    RuntimeKind, Started, StatsStream,
};

pub const EXECUTOR_CALLS: &str = "hangar_executor_calls_total";
pub const EXECUTOR_CALL_DURATION: &str = "hangar_executor_call_duration_seconds";
pub const JOURNAL_BACKLOG: &str = "hangar_drone_journal_backlog";

/// The drone's series.
pub const DRONE: &[MetricDef] = &[
    MetricDef {
        name: EXECUTOR_CALLS,
        kind: MetricKind::Counter,
        labels: &["method", "outcome"],
        help: "Calls the drone made to its runtime (an executor over its socket, or in process), by method and outcome (ok, or the error: unavailable, start_failed, image_pull_failed, …).",
    },
    MetricDef {
        name: EXECUTOR_CALL_DURATION,
        kind: MetricKind::Histogram,
        labels: &["method"],
        help: "Time of a call the drone made to its runtime, by method (prepare_image includes pulling).",
    },
    MetricDef {
        name: JOURNAL_BACKLOG,
        kind: MetricKind::Gauge,
        labels: &[],
        help: "Backend events in the drone's journal that no controller has acknowledged yet.",
    },
];

/// The `outcome` label of a runtime call's result.
fn outcome<T>(result: &Result<T, RuntimeError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(err) => match err {
            RuntimeError::BackendNotFound(_) => "backend_not_found",
            RuntimeError::ImageNotFound { .. } => "image_not_found",
            RuntimeError::ImagePullFailed { .. } => "image_pull_failed",
            RuntimeError::InvalidSpec { .. } => "invalid_spec",
            RuntimeError::StartFailed { .. } => "start_failed",
            RuntimeError::StoppedWhileStarting(_) => "stopped_while_starting",
            RuntimeError::Unsupported(_) => "unsupported",
            RuntimeError::EventsLagged { .. } => "events_lagged",
            RuntimeError::Unavailable(_) => "unavailable",
            RuntimeError::VersionMismatch(_) => "version_mismatch",
            RuntimeError::HandshakeRequired(_) => "handshake_required",
            RuntimeError::PermissionDenied(_) => "permission_denied",
            RuntimeError::Internal(_) => "internal",
        },
    }
}

/// Records one call. Runtime calls are a backend's steps, not a hot path: the handles are
/// looked up by name each time.
fn record<T>(method: &'static str, started: Instant, result: &Result<T, RuntimeError>) {
    if !hangar_agent::admin::recorder_installed() {
        return;
    }
    metrics::counter!(EXECUTOR_CALLS, "method" => method, "outcome" => outcome(result)).increment(1);
    metrics::histogram!(EXECUTOR_CALL_DURATION, "method" => method).record(started.elapsed());
}

/// The drone's runtime, with every call counted and timed.
pub struct MeteredRuntime {
    inner: Arc<dyn Runtime>,
}

impl MeteredRuntime {
    pub fn wrap(inner: Arc<dyn Runtime>) -> Arc<dyn Runtime> {
        Arc::new(MeteredRuntime { inner })
    }

    async fn call<T>(
        method: &'static str,
        call: impl std::future::Future<Output = Result<T, RuntimeError>>,
    ) -> Result<T, RuntimeError> {
        let started = Instant::now();
        let result = call.await;
        record(method, started, &result);
        result
    }
}

#[async_trait]
impl Runtime for MeteredRuntime {
    fn kind(&self) -> RuntimeKind {
        self.inner.kind()
    }

    fn capabilities(&self) -> Vec<Capability> {
        self.inner.capabilities()
    }

    async fn status(&self) -> Vec<Condition> {
        self.inner.status().await
    }

    async fn prepare_image(&self, image: &str, policy: PullPolicy) -> Result<ImageReady, RuntimeError> {
        Self::call("prepare_image", self.inner.prepare_image(image, policy)).await
    }

    async fn start(&self, spec: BackendSpec) -> Result<Started, RuntimeError> {
        Self::call("start", self.inner.start(spec)).await
    }

    async fn stop(&self, backend_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        Self::call("stop", self.inner.stop(backend_id, grace)).await
    }

    async fn remove(&self, backend_id: &str) -> Result<(), RuntimeError> {
        Self::call("remove", self.inner.remove(backend_id)).await
    }

    async fn inspect(&self, backend_id: &str) -> Result<BackendInfo, RuntimeError> {
        Self::call("inspect", self.inner.inspect(backend_id)).await
    }

    async fn list(&self) -> Result<Vec<BackendInfo>, RuntimeError> {
        Self::call("list", self.inner.list()).await
    }

    async fn events(&self) -> Result<EventStream, RuntimeError> {
        Self::call("events", self.inner.events()).await
    }

    async fn stats(&self, backend_id: &str, interval: Duration) -> Result<StatsStream, RuntimeError> {
        Self::call("stats", self.inner.stats(backend_id, interval)).await
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

static BACKLOG: Series<Gauge> = Series::new(|| metrics::gauge!(JOURNAL_BACKLOG));

/// The journal's backlog of unacknowledged events moved by `delta`. A gauge moved up and down
/// rather than set, so that several drones in one process (dev, tests) add up. `false` when no
/// recorder is installed (nothing was recorded).
pub fn journal_backlog(delta: f64) -> bool {
    match BACKLOG.get() {
        Some(gauge) => {
            gauge.increment(delta);
            true
        }
        None => false,
    }
}
