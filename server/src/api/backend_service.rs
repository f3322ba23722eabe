//! BackendService: connect to a backend by key, inspect, watch and terminate backends.

use super::page_token::PageCursor;
use super::{ApiError, PageTokens, validate};
use crate::auth::{self, audit};
use crate::metrics::Placement;
use crate::scheduler;
use crate::store::{
    ActionPayload, BackendFilter, ConnectOutcome, ConnectSpec, DynStore, IssuedToken, SpawnPlan, new_action_id,
};
use crate::watch::{BackendWatch, WatchHub, WatchRequest};
use base64::Engine;
use chrono::Utc;
use futures::TryStreamExt;
use hangar::domain::{
    Backend, BackendKey, BackendState, SpawnConfig, TerminationKind, TerminationReason, timestamp_to_proto,
};
use hangar::v1::{self, backend_service_server::BackendService};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::pin::Pin;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// How backends are started and reached.
#[derive(Debug, Clone)]
pub struct BackendSettings {
    /// Base URL of the proxy clients are sent to; Connect answers `{proxy_url}/{token}/`.
    pub proxy_url: String,
    /// How long a connection token from Connect is valid.
    pub token_ttl: Duration,
    /// Key lease without renewal; drones renew every third of it.
    pub lease_duration: Duration,
    /// WAITING longer than this ends a backend with STARTUP_TIMEOUT.
    pub startup_timeout: Duration,
    /// Between SIGTERM and the kill, for soft terminations.
    pub stop_grace: Duration,
    /// How often the sweep looks for idle, expired and lost backends.
    pub sweep_interval: Duration,
    /// WatchBackend re-reads the history this often even without a notification.
    pub watch_poll: Duration,
    /// How long past its lease deadlines a drone may keep a backend whose renewal was deferred
    /// because the controller could not reach its store; zero: renewals are never deferred
    /// (docs/design/backends-and-leases.md#store-outages).
    pub store_outage_grace: Duration,
}

impl Default for BackendSettings {
    fn default() -> Self {
        BackendSettings {
            proxy_url: "http://127.0.0.1:7080".into(),
            token_ttl: Duration::from_secs(3600),
            lease_duration: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
            sweep_interval: Duration::from_secs(1),
            watch_poll: Duration::from_secs(1),
            store_outage_grace: Duration::from_secs(120),
        }
    }
}

/// The backend API, free of transport concerns; [`BackendService`] below adapts it to tonic.
#[derive(Clone)]
pub struct BackendApi {
    store: DynStore,
    tokens: PageTokens,
    settings: BackendSettings,
    /// The controller's one watch hub, shared with `WatchNodes`.
    hub: WatchHub,
    shutdown: CancellationToken,
}

/// The events of one `WatchBackends` call.
pub type BackendEventStream = Pin<Box<dyn futures::Stream<Item = Result<v1::WatchBackendsResponse, Status>> + Send>>;

pub type StatusStream = Pin<Box<dyn futures::Stream<Item = Result<v1::WatchBackendResponse, Status>> + Send>>;

/// A fresh connection token (32 random bytes, base64url) and its SHA-256, which is all the
/// store keeps.
fn new_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = token_hash(&token);
    (token, hash)
}

/// How tokens are stored and looked up: hex SHA-256. Tokens are 256 random bits, so an unsalted
/// fast hash is enough; a leaked table reveals nothing usable.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl BackendApi {
    pub fn new(
        store: DynStore,
        tokens: PageTokens,
        settings: BackendSettings,
        hub: WatchHub,
        shutdown: CancellationToken,
    ) -> Self {
        BackendApi { store, tokens, settings, hub, shutdown }
    }

    pub async fn connect(&self, req: v1::ConnectRequest) -> Result<v1::ConnectResponse, ApiError> {
        let mut violations = Vec::new();
        let key = req.key.as_ref().map(BackendKey::from);
        if let Some(key) = &key {
            violations.extend(key.violations("key"));
        }
        let config = match &req.spawn_config {
            None => None,
            Some(c) => match SpawnConfig::from_proto(c, "spawn_config") {
                Ok(c) => Some(c),
                Err(v) => {
                    violations.extend(v);
                    None
                }
            },
        };
        if key.is_none() && req.spawn_config.is_none() {
            violations.push(("spawn_config".into(), "is required when no key is given".into()));
        }
        // They become x-verified-* headers at the proxy: only names and values that are valid
        // headers, so none is dropped there.
        violations.extend(hangar::domain::identity_violations(&req.user, &req.auth));
        if !violations.is_empty() {
            return Err(ApiError::InvalidArgument(violations));
        }
        let started = std::time::Instant::now();
        let now = Utc::now();
        let (token, hash) = new_token();
        let expires_at = now + chrono::Duration::from_std(self.settings.token_ttl).unwrap_or_default();
        let (cluster, pool) = config.as_ref().map(|c| (c.cluster.clone(), c.pool.clone())).unwrap_or_default();
        let spawn = match config {
            None => None,
            Some(config) => Some(SpawnPlan {
                backend_id: Backend::new_id(),
                action_id: new_action_id(),
                candidates: scheduler::candidates(&self.store, &self.hub, &config.cluster, &config.pool).await?,
                lease_duration: self.settings.lease_duration,
                action: ActionPayload::Spawn {
                    startup_timeout: self.settings.startup_timeout,
                    lease_duration: self.settings.lease_duration,
                    stop_grace: self.settings.stop_grace,
                    // This call's span (the Connect's), when traces are on.
                    trace_context: crate::telemetry::current_context(),
                },
                static_token_hash: config.static_token.as_deref().map(token_hash),
                config,
            }),
        };
        let spec = ConnectSpec {
            key: key.clone(),
            spawn,
            token: IssuedToken {
                hash,
                user: req.user.clone(),
                auth: req.auth.clone().into_iter().collect(),
                expires_at,
            },
            now,
        };
        let key_text = || key.as_ref().map(ToString::to_string).unwrap_or_default();
        let candidates = spec.spawn.as_ref().map_or(0, |plan| plan.candidates.len());
        let outcome = self.store.connect_backend(spec, &scheduler::power_of_two_choices).await?;
        crate::metrics::record_placement(
            match &outcome {
                ConnectOutcome::Found(_) => Placement::Found,
                ConnectOutcome::Spawned(_) => Placement::Spawned,
                ConnectOutcome::TagMismatch { .. } => Placement::TagMismatch,
                ConnectOutcome::NotFound => Placement::NotFound,
                ConnectOutcome::NoDrone => Placement::NoDrone,
                ConnectOutcome::PoolFull => Placement::PoolFull,
            },
            started,
        );
        let (backend, spawned) = match outcome {
            ConnectOutcome::Found(b) => (b, false),
            ConnectOutcome::Spawned(b) => (b, true),
            ConnectOutcome::TagMismatch { held_tag } => {
                return Err(ApiError::KeyTagMismatch { key: key_text(), held_tag });
            }
            ConnectOutcome::NotFound => return Err(ApiError::NoLiveBackend(key_text())),
            ConnectOutcome::NoDrone => {
                let census = scheduler::census(&self.store, &cluster, &pool).await?;
                return Err(ApiError::NoDroneAvailable { cluster, pool, census });
            }
            ConnectOutcome::PoolFull => {
                let census = scheduler::census(&self.store, &cluster, &pool).await?;
                let full = u32::try_from(candidates).unwrap_or(u32::MAX);
                return Err(ApiError::PoolFull { cluster, pool, full, census });
            }
        };
        if spawned {
            tracing::info!(backend_id = %backend.id, drone_id = %backend.drone_id, key = %key_text(), fencing_token = backend.fencing_token, "backend scheduled");
        }
        Ok(v1::ConnectResponse {
            backend_id: backend.id.clone(),
            spawned,
            status: Some((&backend.status).into()),
            url: format!("{}/{token}/", self.settings.proxy_url.trim_end_matches('/')),
            token,
            token_expires_at: Some(timestamp_to_proto(expires_at)),
            static_token: backend.spawn_config.static_token.clone().unwrap_or_default(),
            backend: Some((&backend).into()),
        })
    }

    pub async fn get_backend(&self, req: v1::GetBackendRequest) -> Result<v1::GetBackendResponse, ApiError> {
        validate::id("id", &req.id)?;
        let backend = self.store.get_backend(&req.id).await?.ok_or(ApiError::BackendNotFound(req.id))?;
        Ok(v1::GetBackendResponse { backend: Some((&backend).into()) })
    }

    pub async fn list_backends(&self, req: v1::ListBackendsRequest) -> Result<v1::ListBackendsResponse, ApiError> {
        let page_size = validate::page_size(req.page_size)?;
        let filter = backend_filter(req.filter.as_ref())?;
        let digest = PageTokens::filter_digest(&filter);
        let cursor = if req.page_token.is_empty() { None } else { Some(self.tokens.decode(&req.page_token, &digest)?) };
        // Backend pages are a keyset walk by id, each page read at its own snapshot; the
        // listing's revision is the first page's, carried by the cursor, so that a watch from it
        // misses nothing a later page could not show (docs/design/backends-and-leases.md#listing-and-watching).
        let after = cursor.as_ref().map(|c| c.after.as_str());
        let page = self.store.list_backends(&filter, after, page_size).await?;
        let revision = cursor.as_ref().map_or(page.revision, |c| c.revision);
        let next_page_token = match page.backends.last() {
            Some(last) if page.more => {
                self.tokens.encode(&PageCursor { revision, after: last.id.clone(), filter_digest: digest })
            }
            _ => String::new(),
        };
        Ok(v1::ListBackendsResponse {
            backends: page.backends.iter().map(v1::Backend::from).collect(),
            next_page_token,
            revision,
        })
    }

    /// Validates a watch request; the stream itself reports a compacted start revision.
    pub fn watch_backends(&self, req: v1::WatchBackendsRequest) -> Result<BackendEventStream, ApiError> {
        let filter = backend_filter(req.filter.as_ref())?;
        let bookmark_interval = validate::duration(
            "bookmark_interval",
            req.bookmark_interval.as_ref(),
            super::node_service::MIN_BOOKMARK_INTERVAL,
            super::node_service::MAX_BOOKMARK_INTERVAL,
        )?;
        if req.send_initial && req.start_revision != 0 {
            return Err(ApiError::invalid(
                "start_revision",
                "send_initial starts from the snapshot's revision; leave start_revision 0 with it",
            ));
        }
        let request = WatchRequest {
            filter,
            start_revision: req.start_revision,
            send_initial: req.send_initial,
            bookmark_interval,
        };
        Ok(Box::pin(BackendWatch::stream(self.hub.clone(), request).map_err(Status::from)))
    }

    /// The backend's history, then its live changes, ending after TERMINATED.
    pub async fn watch_backend(&self, req: v1::WatchBackendRequest) -> Result<StatusStream, ApiError> {
        validate::id("id", &req.id)?;
        if self.store.get_backend(&req.id).await?.is_none() {
            return Err(ApiError::BackendNotFound(req.id));
        }
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        let poll = self.settings.watch_poll;
        let id = req.id;
        Ok(Box::pin(async_stream::try_stream! {
            let mut woken = store.subscribe();
            let mut after = 0;
            loop {
                // Marked seen before reading, so a commit during the read wakes the next round.
                woken.borrow_and_update();
                let history = store.backend_history(&id, after).await.map_err(ApiError::from)?;
                for (revision, status) in history {
                    after = revision;
                    let terminated = status.state == BackendState::Terminated;
                    yield v1::WatchBackendResponse { status: Some((&status).into()) };
                    if terminated {
                        return;
                    }
                }
                let stopping = tokio::select! {
                    _ = shutdown.cancelled() => true,
                    _ = woken.changed() => false,
                    _ = tokio::time::sleep(poll) => false,
                };
                if stopping {
                    Err(ApiError::shutting_down())?;
                }
            }
        }))
    }

    pub async fn terminate_backend(
        &self,
        req: v1::TerminateBackendRequest,
    ) -> Result<v1::TerminateBackendResponse, ApiError> {
        validate::id("id", &req.id)?;
        let kind = if req.hard { TerminationKind::Hard } else { TerminationKind::Soft };
        let backend = self
            .store
            .request_termination(&req.id, kind, TerminationReason::External, Utc::now())
            .await?
            .ok_or(ApiError::BackendNotFound(req.id))?;
        tracing::info!(backend_id = %backend.id, ?kind, "backend termination requested");
        Ok(v1::TerminateBackendResponse { backend: Some((&backend).into()) })
    }
}

fn backend_filter(filter: Option<&v1::BackendFilter>) -> Result<BackendFilter, ApiError> {
    let Some(filter) = filter else { return Ok(BackendFilter::default()) };
    let mut violations = validate::Violations::default();
    violations
        .absorb("filter.states", validate::filter_values("filter.states", filter.states.len()))
        .absorb("filter.drone_id", validate::filter_id("filter.drone_id", &filter.drone_id))
        .absorb("filter.key_namespace", validate::filter_name("filter.key_namespace", &filter.key_namespace))
        .absorb("filter.cluster", validate::filter_name("filter.cluster", &filter.cluster))
        .absorb("filter.pool", validate::filter_name("filter.pool", &filter.pool))
        .absorb("filter.labels", validate::labels("filter.labels", &filter.labels))
        .absorb("filter.key_prefix", key_prefix(&filter.key_prefix));
    violations.into_result()?;
    BackendFilter::from_proto(filter).map_err(|(field, message)| ApiError::invalid(field, message))
}

/// A key prefix is a piece of a key name: no longer than one (253 bytes, `BackendKey::violations`).
fn key_prefix(prefix: &str) -> Result<(), ApiError> {
    if prefix.len() > 253 || prefix.chars().any(char::is_control) {
        return Err(ApiError::invalid("filter.key_prefix", "at most 253 bytes, without control characters"));
    }
    Ok(())
}

#[tonic::async_trait]
impl BackendService for BackendApi {
    async fn connect(&self, req: Request<v1::ConnectRequest>) -> Result<Response<v1::ConnectResponse>, Status> {
        let principal = auth::principal(&req);
        let req = req.into_inner();
        let to_spawn = req.spawn_config.is_some();
        let key = req.key.as_ref().map(|key| BackendKey::from(key).to_string());
        let result = BackendApi::connect(self, req).await.map_err(Status::from);
        // Audited: a Connect that started a backend, or that may have and failed. One that found
        // a live backend changed nothing.
        let spawned = result.as_ref().is_ok_and(|response| response.spawned);
        if spawned || (to_spawn && result.is_err()) {
            let response = result.as_ref().ok();
            let target = audit::Target {
                backend_id: response.map(|r| r.backend_id.as_str()),
                node_id: response.and_then(|r| r.backend.as_ref()).map(|b| b.drone_id.as_str()),
                key: key.as_deref(),
                ..Default::default()
            };
            audit::record(&principal, "hangar.v1.BackendService/Connect", target, &audit::outcome(&result));
        }
        Ok(Response::new(result?))
    }

    async fn get_backend(
        &self,
        req: Request<v1::GetBackendRequest>,
    ) -> Result<Response<v1::GetBackendResponse>, Status> {
        Ok(Response::new(BackendApi::get_backend(self, req.into_inner()).await?))
    }

    async fn list_backends(
        &self,
        req: Request<v1::ListBackendsRequest>,
    ) -> Result<Response<v1::ListBackendsResponse>, Status> {
        Ok(Response::new(BackendApi::list_backends(self, req.into_inner()).await?))
    }

    type WatchBackendStream = StatusStream;

    async fn watch_backend(&self, req: Request<v1::WatchBackendRequest>) -> Result<Response<StatusStream>, Status> {
        Ok(Response::new(BackendApi::watch_backend(self, req.into_inner()).await?))
    }

    type WatchBackendsStream = BackendEventStream;

    async fn watch_backends(
        &self,
        req: Request<v1::WatchBackendsRequest>,
    ) -> Result<Response<BackendEventStream>, Status> {
        Ok(Response::new(BackendApi::watch_backends(self, req.into_inner())?))
    }

    async fn terminate_backend(
        &self,
        req: Request<v1::TerminateBackendRequest>,
    ) -> Result<Response<v1::TerminateBackendResponse>, Status> {
        let principal = auth::principal(&req);
        let req = req.into_inner();
        let backend_id = req.id.clone();
        let result = BackendApi::terminate_backend(self, req).await.map_err(Status::from);
        let backend = result.as_ref().ok().and_then(|r| r.backend.as_ref());
        let target = audit::Target {
            backend_id: Some(&backend_id),
            node_id: backend.map(|b| b.drone_id.as_str()),
            ..Default::default()
        };
        audit::record(&principal, "hangar.v1.BackendService/TerminateBackend", target, &audit::outcome(&result));
        Ok(Response::new(result?))
    }
}
