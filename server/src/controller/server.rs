//! Starting and stopping a controller: the gRPC services, health, reflection, the auth layer in
//! front of them all, and the background tasks they need, all owned by one [`RunningController`].

use super::{BackendSweep, LivenessConfig, NodeRegistry, StoreContact};
use crate::admin::AdminContext;
use crate::api::{BackendApi, BackendSettings, DroneApi, NodeApi, PageTokens, ProxyApi};
use crate::auth::{AuthLayer, Authenticator, Reflection};
use crate::limits::{FirstRequestDeadline, LimitLayer, LimitsConfig, OversizedRequestLayer};
use crate::store::{DynStore, Retention};
use crate::tls::{ControllerTls, ControllerTlsFiles};
use crate::watch::{WatchConfig, WatchHub};
use futures::StreamExt;
use hangar::v1::backend_service_server::BackendServiceServer;
use hangar::v1::drone_service_server::DroneServiceServer;
use hangar::v1::node_service_server::NodeServiceServer;
use hangar::v1::proxy_service_server::ProxyServiceServer;
use hangar_agent::admin::{AdminServer, Readiness};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Unique per controller process; recorded on the nodes it holds.
    pub controller_id: String,
    pub liveness: LivenessConfig,
    /// Whether and to whom gRPC server reflection (v1 and v1alpha) is served, for grpcurl and
    /// other tools.
    pub reflection: Reflection,
    /// The auth file (docs/security.md): who may call, as what role. `None`: everyone may call
    /// everything, as before Hangar had authentication (loopback or `--insecure` only).
    pub auth_file: Option<PathBuf>,
    /// How long shutdown waits for open calls (e.g. health watches) before cutting them.
    pub shutdown_grace: Duration,
    pub watch: WatchConfig,
    /// How much node history is kept for watchers to resume from.
    pub retention: Retention,
    /// How often history outside `retention` is dropped (more often when `retention.max_age`
    /// is shorter than twice this).
    pub compaction_interval: Duration,
    /// How long a TERMINATED backend stays readable before retention removes it (with its
    /// tokens and, if it was the last holder of a free key, its key row): one REMOVED event.
    pub backend_retention: Duration,
    /// Base URL of the proxy that Connect's URLs point at (`{proxy_url}/{token}/`).
    pub proxy_url: String,
    /// Tokens, leases, timeouts and the sweep of the backend lifecycle; its `proxy_url` is
    /// replaced by the field above.
    pub backends: BackendSettings,
    /// Serve TLS (and with a client CA, require client certificates); plain HTTP/2 without.
    pub tls: Option<ControllerTlsFiles>,
    /// What one caller may ask at once, and what any connection may send.
    pub limits: LimitsConfig,
    /// Where the admin listener serves `/metrics`, `/healthz`, `/readyz` and the dashboard;
    /// `None` serves none (tests that do not look at it).
    pub admin_listen: Option<SocketAddr>,
    /// More conditions for the admin listener's `/readyz`, after the store's: those of the
    /// parts a process runs next to the controller (dev's proxy and drone).
    pub admin_readiness: Option<Readiness>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            controller_id: format!("ctl-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            liveness: LivenessConfig::default(),
            reflection: Reflection::Open,
            auth_file: None,
            shutdown_grace: Duration::from_secs(5),
            watch: WatchConfig::default(),
            retention: Retention { min_revisions: 10_000, max_age: chrono::Duration::minutes(15) },
            compaction_interval: Duration::from_secs(60),
            backend_retention: Duration::from_secs(24 * 3600),
            proxy_url: BackendSettings::default().proxy_url,
            backends: BackendSettings::default(),
            tls: None,
            limits: LimitsConfig::default(),
            admin_listen: None,
            admin_readiness: None,
        }
    }
}

pub struct Controller;

impl Controller {
    /// Serves the controller on `listener` until [`RunningController::shutdown`].
    pub async fn start(
        store: DynStore,
        config: ControllerConfig,
        listener: TcpListener,
    ) -> anyhow::Result<RunningController> {
        let local_addr = listener.local_addr()?;
        let authenticator = Arc::new(match &config.auth_file {
            Some(path) => Authenticator::from_file(path, config.reflection)?,
            None => Authenticator::disabled(config.reflection),
        });
        // An unusable certificate fails the start, not the first client.
        let tls = config.tls.clone().map(ControllerTls::load).transpose()?.map(Arc::new);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let registry = Arc::new(NodeRegistry::new(store.clone(), config.controller_id.clone(), config.liveness));
        let tokens = PageTokens::new(store.shared_secret("page-tokens").await?);

        let hub = WatchHub::new(store.clone(), config.watch, shutdown.clone()).await?;
        let transport = &config.limits.transport;
        // Every service decodes and encodes messages of at most the transport's limit.
        macro_rules! sized {
            ($service:expr) => {
                $service
                    .max_decoding_message_size(transport.max_message_bytes)
                    .max_encoding_message_size(transport.max_message_bytes)
            };
        }
        let node_api =
            sized!(NodeServiceServer::new(NodeApi::new(store.clone(), tokens.clone(), hub.clone(), registry.clone())));
        let settings = BackendSettings { proxy_url: config.proxy_url.clone(), ..config.backends.clone() };
        let backend_api = sized!(BackendServiceServer::new(BackendApi::new(
            store.clone(),
            tokens.clone(),
            settings.clone(),
            hub.clone(),
            shutdown.clone(),
        )));
        let contact =
            StoreContact::new(config.controller_id.clone(), settings.store_outage_grace, settings.lease_duration);
        let drone_api = sized!(DroneServiceServer::new(DroneApi::new(
            registry.clone(),
            store.clone(),
            settings.clone(),
            contact.clone(),
            tasks.clone(),
            shutdown.clone(),
        )));
        let proxy_api = sized!(ProxyServiceServer::new(ProxyApi::new(
            registry.clone(),
            store.clone(),
            hub.clone(),
            tasks.clone(),
            shutdown.clone()
        )));

        let (health, health_service) = tonic_health::server::health_reporter();
        let health_service = sized!(health_service);
        set_health(&health, ServingStatus::Serving).await;

        let reflection = config.reflection.served().then(|| {
            // Exactly what this server serves: `hangar.v1`, health, and both reflection versions
            // (each version would otherwise list only itself).
            let builder = || {
                tonic_reflection::server::Builder::configure()
                    .include_reflection_service(false)
                    .register_encoded_file_descriptor_set(hangar::v1::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
            };
            (builder().build_v1(), builder().build_v1alpha())
        });
        let (reflection_v1, reflection_v1alpha) = match reflection {
            Some((v1, v1alpha)) => (Some(sized!(v1?)), Some(sized!(v1alpha?))),
            None => (None, None),
        };

        // The transport's limits (docs/design/security.md, "Limits"), then the per-caller ones.
        let router = tonic::transport::Server::builder()
            .max_concurrent_streams(transport.max_concurrent_streams)
            .http2_max_header_list_size(transport.max_header_list_bytes)
            .http2_keepalive_interval(Some(transport.keepalive_interval))
            .http2_keepalive_timeout(Some(transport.keepalive_timeout))
            .http2_max_pending_accept_reset_streams(Some(transport.max_pending_accept_reset_streams))
            .http2_max_local_error_reset_streams(Some(transport.max_local_error_reset_streams))
            .timeout(transport.call_timeout)
            // Outermost: one trace span per call (refusals included), continuing the caller's
            // trace (docs/design/observability.md).
            .layer(crate::telemetry::GrpcTraceLayer)
            // Every call, health and reflection included, is authenticated and authorized first;
            // the limits layer after it (inner: tonic puts the first layer outermost) counts per
            // caller by the `Arc<Principal>` it finds in the extensions.
            // Outermost: every call is counted with its code, refused ones included.
            .layer(crate::metrics::GrpcMetricsLayer)
            .layer(AuthLayer::new(authenticator.clone()))
            .layer(LimitLayer::new(config.limits.clone()))
            // Innermost, so that the metrics and traces count what the caller reads: a request
            // message over the size limit is RESOURCE_EXHAUSTED, not tonic's OUT_OF_RANGE.
            .layer(OversizedRequestLayer)
            .add_service(health_service)
            .add_optional_service(reflection_v1)
            .add_optional_service(reflection_v1alpha)
            .add_service(node_api)
            .add_service(backend_api)
            .add_service(drone_api)
            .add_service(proxy_api);
        let stop_serving = shutdown.clone();
        // TCP_NODELAY, TLS handshakes and the peer's identity: `incoming`; then a connection that
        // sends no request within the first-request timeout is closed (slow loris).
        let first_request_timeout = transport.first_request_timeout;
        let incoming = super::incoming::incoming(listener, tls.clone()).map(move |accepted| {
            accepted.map(|connection| FirstRequestDeadline::new(connection, first_request_timeout))
        });
        let server =
            tokio::spawn(
                async move { router.serve_with_incoming_shutdown(incoming, stop_serving.cancelled_owned()).await },
            );

        {
            let (registry, contact, shutdown) = (registry.clone(), contact.clone(), shutdown.clone());
            tasks.spawn(async move { registry.run_liveness(contact, shutdown).await });
        }
        {
            // Drone sessions wake on the commits that concern them only.
            let (registry, shutdown, wakeups) = (registry.clone(), shutdown.clone(), store.action_wakeups());
            tasks.spawn(async move { registry.run_wakeups(wakeups, shutdown).await });
        }
        {
            // One poll for the controller: the floor under a missed wake-up.
            let (registry, shutdown, store) = (registry.clone(), shutdown.clone(), store.clone());
            tasks.spawn(async move { registry.run_action_poll(store, shutdown).await });
        }
        {
            let notified = store.subscribe();
            let local = store.local_commits();
            let hub = hub.clone();
            tasks.spawn(async move { hub.run(notified, local).await });
        }
        {
            let max_age = config.retention.max_age.to_std().unwrap_or_default();
            let every = config.compaction_interval.min((max_age / 2).max(MIN_RETENTION_PASS));
            tasks.spawn(compact(store.clone(), config.retention, every, shutdown.clone()));
            let every = config.compaction_interval.min((config.backend_retention / 2).max(MIN_RETENTION_PASS));
            tasks.spawn(retire_backends(store.clone(), config.backend_retention, every, shutdown.clone()));
        }
        // The first tick before serving renewals would be tidier, but a controller must start
        // while its store is away too; until a tick is taken it defers nothing.
        tasks.spawn(contact.clone().run(store.clone(), shutdown.clone()));
        tasks.spawn(drone_health_follows_the_store(contact.clone(), health.clone(), shutdown.clone()));
        {
            let sweep = BackendSweep::new(store.clone(), settings.lease_duration);
            let shutdown = shutdown.clone();
            let interval = settings.sweep_interval;
            tasks.spawn(async move { sweep.run(interval, shutdown).await });
        }

        let admin = match config.admin_listen {
            Some(addr) => {
                let context = AdminContext {
                    store: store.clone(),
                    hub: hub.clone(),
                    controller_id: config.controller_id.clone(),
                    registry: registry.clone(),
                    authenticator: authenticator.clone(),
                    more_readiness: config.admin_readiness.clone(),
                };
                Some(AdminServer::bind(addr, crate::admin::controller_router(context)).await?)
            }
            None => None,
        };

        let mtls = tls.as_ref().is_some_and(|tls| tls.requires_client_certificates());
        tracing::info!(%local_addr, controller_id = %config.controller_id, tls = tls.is_some(), mtls, "controller serving");
        Ok(RunningController {
            local_addr,
            config,
            shutdown,
            tasks,
            server,
            health,
            registry,
            authenticator,
            tls,
            admin,
            store,
            contact,
        })
    }
}

/// Drops node history outside the retention window, now and then. Every controller may run it;
/// compaction is idempotent.
async fn compact(store: DynStore, retention: Retention, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match store.compact(retention, chrono::Utc::now()).await {
            Ok(revision) => tracing::debug!(compacted = revision, "node history compacted"),
            Err(err) => tracing::warn!(error = %err, "node history compaction failed; retrying later"),
        }
    }
}

/// The retention and compaction passes run at most this often, however short the retention.
const MIN_RETENTION_PASS: Duration = Duration::from_millis(100);

/// Backends one retention transaction removes at most: a bound on how long it holds the write
/// lock. A pass repeats it until none is due.
const RETENTION_BATCH: usize = 128;

/// Removes backends TERMINATED for longer than `retention`, now and then, in batches. Every
/// controller may run it: each batch picks its backends under the write lock.
async fn retire_backends(store: DynStore, retention: Duration, every: Duration, shutdown: CancellationToken) {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let mut removed = 0;
        loop {
            let before =
                chrono::Utc::now().checked_sub_signed(retention).unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
            match store.remove_terminated_backends(before, RETENTION_BATCH).await {
                Ok(n) => {
                    removed += n;
                    if n < RETENTION_BATCH || shutdown.is_cancelled() {
                        break;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "removing terminated backends failed; retrying later");
                    break;
                }
            }
        }
        if removed > 0 {
            tracing::debug!(removed, "terminated backends removed after retention");
        }
    }
}

/// `hangar.v1.DroneService` is SERVING while this controller reaches its store, and NOT_SERVING
/// while it does not: it could not register a drone then, nor confirm its key renewals (it
/// answers them deferred), and a drone that is told to wait looks for a controller whose
/// DroneService is SERVING (docs/design/backends-and-leases.md#store-outages).
async fn drone_health_follows_the_store(
    contact: Arc<StoreContact>,
    health: HealthReporter,
    shutdown: CancellationToken,
) {
    let mut serving = true;
    let mut ticker = tokio::time::interval(super::TICK_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let reaches = contact.reaches_store();
        if reaches == serving || shutdown.is_cancelled() {
            continue;
        }
        serving = reaches;
        let status = if reaches { ServingStatus::Serving } else { ServingStatus::NotServing };
        tracing::info!(?status, "DroneService health follows the store");
        health.set_service_status(hangar::v1::drone_service_server::SERVICE_NAME, status).await;
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for service in [
        hangar::v1::node_service_server::SERVICE_NAME,
        hangar::v1::backend_service_server::SERVICE_NAME,
        hangar::v1::drone_service_server::SERVICE_NAME,
        hangar::v1::proxy_service_server::SERVICE_NAME,
    ] {
        health.set_service_status(service, status).await;
    }
}

/// A serving controller. Dropping it without [`shutdown`](Self::shutdown) leaves its tasks
/// running until the runtime ends, so callers shut it down.
pub struct RunningController {
    local_addr: SocketAddr,
    config: ControllerConfig,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    health: HealthReporter,
    registry: Arc<NodeRegistry>,
    authenticator: Arc<Authenticator>,
    tls: Option<Arc<ControllerTls>>,
    admin: Option<AdminServer>,
    store: DynStore,
    contact: Arc<StoreContact>,
}

impl RunningController {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://ADDR`, or `https://ADDR` with TLS, for clients.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// `http://ADDR` of the admin listener (`/metrics`, `/readyz`, the dashboard), if it serves one.
    pub fn admin_url(&self) -> Option<String> {
        self.admin.as_ref().map(AdminServer::url)
    }

    pub fn controller_id(&self) -> &str {
        &self.config.controller_id
    }

    pub fn registry(&self) -> &Arc<NodeRegistry> {
        &self.registry
    }

    /// Re-reads what an operator may change under a running controller (`hangar-server
    /// controller` does this on SIGHUP): the auth file, and the TLS certificate, key and client
    /// CA. New calls see the new principals and connections accepted afterwards the new
    /// certificates; calls already running, open streams included, go on as they were admitted.
    /// A file that does not load leaves what is in force as it was, and the error says why (it
    /// is logged too); the other file is still reloaded.
    pub fn reload(&self) -> anyhow::Result<()> {
        let mut failed = None;
        if let Err(err) = self.authenticator.reload() {
            tracing::error!(error = %err, "auth file not reloaded; the one in force stays");
            failed = Some(anyhow::Error::from(err));
        }
        if let Some(tls) = &self.tls
            && let Err(err) = tls.reload()
        {
            tracing::error!(error = format!("{err:#}"), "TLS certificates not reloaded; the ones in force stay");
            failed.get_or_insert(err);
        }
        match failed {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Whether callers must prove who they are (the controller has an auth file).
    pub fn authenticates(&self) -> bool {
        self.authenticator.enabled()
    }

    /// Graceful shutdown: health turns NOT_SERVING first (so balancers stop sending), node
    /// streams end with UNAVAILABLE and their nodes are recorded OFFLINE, then the server stops
    /// once open calls finish or the grace period ends.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        set_health(&self.health, ServingStatus::NotServing).await;
        self.shutdown.cancel();
        self.registry.close_all();
        self.tasks.close();
        self.tasks.wait().await;
        // Its drone sessions have ended: it defers nothing more, and says so, so that other
        // controllers need not wait for its ticks before freeing an expired key.
        self.contact.record(&self.store, true).await;
        let mut server = self.server;
        match tokio::time::timeout(self.config.shutdown_grace, &mut server).await {
            Ok(result) => result??,
            Err(_) => {
                tracing::warn!(grace = ?self.config.shutdown_grace, "open calls outlived the shutdown grace; cutting them");
                server.abort();
            }
        }
        if let Some(admin) = self.admin {
            admin.shutdown().await;
        }
        tracing::info!(controller_id = %self.config.controller_id, "controller stopped");
        Ok(())
    }
}
