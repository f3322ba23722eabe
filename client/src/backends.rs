//! Backend calls of `HangarClient`: Connect (get-or-create by key), get, list, watch and
//! terminate, with serializable views of what the controller answers.
//!
//! There is no `Backend` domain type the SDK could share yet, so the views here are read from
//! `hangar::v1` once, in this module, and checked on the way in: a state this client does not
//! know is an [`ClientError::InvalidResponse`], not a silent default.

use crate::watch::{Next, next_step};
use crate::{ClientError, HangarClient, RetryPolicy};
use chrono::{DateTime, Utc};
use futures::Stream;
use hangar::domain::{
    BackendKey, BackendState, TerminationKind, TerminationReason, duration_from_proto, duration_to_proto,
    timestamp_from_proto,
};
use hangar::v1::{self, backend_service_client::BackendServiceClient};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::transport::Channel;

/// Page size `list_all_backends` asks for.
const LIST_ALL_PAGE_SIZE: i32 = 500;

/// When to pull the image before starting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PullPolicy {
    /// Pull only when the image is not present locally (the server's default).
    IfNotPresent,
    Always,
    /// A missing image fails the start.
    Never,
}

impl PullPolicy {
    fn to_proto(self) -> v1::PullPolicy {
        match self {
            PullPolicy::IfNotPresent => v1::PullPolicy::IfNotPresent,
            PullPolicy::Always => v1::PullPolicy::Always,
            PullPolicy::Never => v1::PullPolicy::Never,
        }
    }

    fn from_proto(value: i32) -> Option<Self> {
        match v1::PullPolicy::try_from(value).ok()? {
            v1::PullPolicy::IfNotPresent => Some(PullPolicy::IfNotPresent),
            v1::PullPolicy::Always => Some(PullPolicy::Always),
            v1::PullPolicy::Never => Some(PullPolicy::Never),
            v1::PullPolicy::Unspecified => None,
        }
    }
}

/// Resource limits of a backend; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pids: u64,
}

/// What to start when Connect finds no live backend: the `SpawnConfig` of the proto, also used
/// to show the configuration a backend was started with. Empty strings and `None` leave the
/// choice to the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SpawnSpec {
    /// Container image (docker runtime) or program path (process runtime).
    pub image: String,
    /// Command and arguments; empty = the image's default.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub pull_policy: Option<PullPolicy>,
    /// Port the backend listens on inside its container; `None` = 8080.
    pub container_port: Option<u32>,
    pub resources: Resources,
    pub cluster: String,
    pub pool: String,
    pub labels: BTreeMap<String, String>,
    #[serde(with = "humantime_opt")]
    pub lifetime_limit: Option<Duration>,
    #[serde(with = "humantime_opt")]
    pub max_idle: Option<Duration>,
    /// A token that never expires; omitted from JSON views of a backend's configuration.
    #[serde(skip)]
    pub static_token: Option<String>,
}

impl SpawnSpec {
    pub fn new(image: impl Into<String>) -> Self {
        SpawnSpec { image: image.into(), ..SpawnSpec::default() }
    }

    pub fn command<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.command = args.into_iter().map(Into::into).collect();
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    pub fn pull_policy(mut self, policy: PullPolicy) -> Self {
        self.pull_policy = Some(policy);
        self
    }

    pub fn container_port(mut self, port: u32) -> Self {
        self.container_port = Some(port);
        self
    }

    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    pub fn cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = cluster.into();
        self
    }

    pub fn pool(mut self, pool: impl Into<String>) -> Self {
        self.pool = pool.into();
        self
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn lifetime_limit(mut self, limit: Duration) -> Self {
        self.lifetime_limit = Some(limit);
        self
    }

    pub fn max_idle(mut self, max_idle: Duration) -> Self {
        self.max_idle = Some(max_idle);
        self
    }

    pub fn static_token(mut self, token: impl Into<String>) -> Self {
        self.static_token = Some(token.into());
        self
    }

    pub fn to_proto(&self) -> v1::SpawnConfig {
        let r = self.resources;
        v1::SpawnConfig {
            executable: Some(v1::Executable {
                image: self.image.clone(),
                command: self.command.clone(),
                env: self.env.clone().into_iter().collect(),
                pull_policy: self.pull_policy.map_or(v1::PullPolicy::Unspecified, PullPolicy::to_proto) as i32,
                container_port: self.container_port.unwrap_or(0),
                resources: Some(v1::ResourceLimits {
                    cpu_millis: r.cpu_millis,
                    memory_bytes: r.memory_bytes,
                    pids: r.pids,
                }),
            }),
            cluster: self.cluster.clone(),
            pool: self.pool.clone(),
            labels: self.labels.clone().into_iter().collect(),
            lifetime_limit: self.lifetime_limit.map(duration_to_proto),
            max_idle: self.max_idle.map(duration_to_proto),
            static_token: self.static_token.clone().unwrap_or_default(),
        }
    }

    pub fn from_proto(config: &v1::SpawnConfig) -> Self {
        let executable = config.executable.clone().unwrap_or_default();
        let resources = executable.resources.unwrap_or_default();
        SpawnSpec {
            image: executable.image,
            command: executable.command,
            env: executable.env.into_iter().collect(),
            pull_policy: PullPolicy::from_proto(executable.pull_policy),
            container_port: (executable.container_port != 0).then_some(executable.container_port),
            resources: Resources {
                cpu_millis: resources.cpu_millis,
                memory_bytes: resources.memory_bytes,
                pids: resources.pids,
            },
            cluster: config.cluster.clone(),
            pool: config.pool.clone(),
            labels: config.labels.clone().into_iter().collect(),
            lifetime_limit: config.lifetime_limit.as_ref().and_then(duration_from_proto),
            max_idle: config.max_idle.as_ref().and_then(duration_from_proto),
            static_token: (!config.static_token.is_empty()).then(|| config.static_token.clone()),
        }
    }
}

/// A Connect call: the backend of `key` (started from `spawn` when there is none), or a fresh
/// keyless backend.
///
/// ```
/// use hangar_client::{ConnectRequest, SpawnSpec};
/// let request = ConnectRequest::key("docs", "doc-1", "v2")
///     .spawn(SpawnSpec::new("ghcr.io/acme/editor:2").env("MODE", "edit"));
/// assert!(request.is_idempotent());
/// assert!(!ConnectRequest::keyless(SpawnSpec::new("ghcr.io/acme/editor:2")).is_idempotent());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectRequest {
    pub key: Option<BackendKey>,
    /// Without it, only a live backend of the key can be returned (else BACKEND_NOT_FOUND).
    pub spawn: Option<SpawnSpec>,
    /// Identity the proxy passes to the backend as `x-verified-user`.
    pub user: String,
    /// Claims the proxy passes to the backend as `x-verified-<name>` headers.
    pub auth: BTreeMap<String, String>,
}

impl ConnectRequest {
    pub fn key(namespace: impl Into<String>, name: impl Into<String>, tag: impl Into<String>) -> Self {
        let key = BackendKey { namespace: namespace.into(), name: name.into(), tag: tag.into() };
        ConnectRequest { key: Some(key), ..ConnectRequest::default() }
    }

    /// A fresh backend that no key names; every such call starts one.
    pub fn keyless(spawn: SpawnSpec) -> Self {
        ConnectRequest { spawn: Some(spawn), ..ConnectRequest::default() }
    }

    pub fn spawn(mut self, spawn: SpawnSpec) -> Self {
        self.spawn = Some(spawn);
        self
    }

    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    pub fn auth(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.auth.insert(name.into(), value.into());
        self
    }

    /// With a key, Connect is get-or-create: repeating it returns the same backend, so it may be
    /// retried. Without one, every call that reached the controller started a backend.
    pub fn is_idempotent(&self) -> bool {
        self.key.is_some()
    }

    pub fn to_proto(&self) -> v1::ConnectRequest {
        v1::ConnectRequest {
            key: self.key.as_ref().map(Into::into),
            spawn_config: self.spawn.as_ref().map(SpawnSpec::to_proto),
            user: self.user.clone(),
            auth: self.auth.clone().into_iter().collect(),
        }
    }
}

/// One step of a backend's life, as `BackendStatus` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendStatusView {
    pub state: BackendState,
    /// When the backend entered the state.
    pub time: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_kind: Option<TerminationKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_reason: Option<TerminationReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

impl BackendStatusView {
    pub fn from_proto(status: &v1::BackendStatus) -> Result<Self, ClientError> {
        let state = BackendState::from_proto(status.state).ok_or_else(|| {
            ClientError::InvalidResponse(format!("backend state {} is unknown to this client", status.state))
        })?;
        Ok(BackendStatusView {
            state,
            time: status.time.as_ref().and_then(timestamp_from_proto),
            termination_kind: TerminationKind::from_proto(status.termination_kind),
            termination_reason: TerminationReason::from_proto(status.termination_reason),
            exit_code: status.exit_code,
        })
    }

    pub fn is_terminated(&self) -> bool {
        self.state == BackendState::Terminated
    }
}

/// A backend as the controller describes it (`hangar.v1.Backend`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendView {
    pub id: String,
    /// `None` for a backend started without a key.
    pub key: Option<BackendKey>,
    pub state: BackendState,
    pub status: BackendStatusView,
    pub drone_id: String,
    pub cluster: String,
    pub pool: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: Option<DateTime<Utc>>,
    pub last_activity_at: Option<DateTime<Utc>>,
    pub fencing_token: u64,
    /// host:port as seen from its drone; empty until it has started.
    pub address: String,
    pub spawn_config: Option<SpawnSpec>,
}

impl BackendView {
    pub fn from_proto(backend: &v1::Backend) -> Result<Self, ClientError> {
        let status = backend
            .status
            .as_ref()
            .ok_or_else(|| ClientError::InvalidResponse(format!("backend {} without a status", backend.id)))?;
        let status = BackendStatusView::from_proto(status)?;
        Ok(BackendView {
            id: backend.id.clone(),
            key: backend.key.as_ref().filter(|k| !k.name.is_empty()).map(BackendKey::from),
            state: status.state,
            status,
            drone_id: backend.drone_id.clone(),
            cluster: backend.cluster.clone(),
            pool: backend.pool.clone(),
            labels: backend.labels.clone().into_iter().collect(),
            created_at: backend.created_at.as_ref().and_then(timestamp_from_proto),
            last_activity_at: backend.last_activity_at.as_ref().and_then(timestamp_from_proto),
            fencing_token: backend.fencing_token,
            address: backend.address.clone(),
            spawn_config: backend.spawn_config.as_ref().map(SpawnSpec::from_proto),
        })
    }
}

/// What Connect answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Connection {
    pub backend_id: String,
    /// True when this call started the backend; false when it found a live one.
    pub spawned: bool,
    pub state: BackendState,
    pub status: BackendStatusView,
    /// URL a client opens to reach the backend through a proxy.
    pub url: String,
    /// Connection token for `url`; it expires at `token_expires_at`.
    pub token: String,
    pub token_expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_token: Option<String>,
    pub backend: Option<BackendView>,
}

impl Connection {
    pub fn from_proto(response: &v1::ConnectResponse) -> Result<Self, ClientError> {
        let status = response
            .status
            .as_ref()
            .ok_or_else(|| ClientError::InvalidResponse("ConnectResponse without a status".to_string()))?;
        let status = BackendStatusView::from_proto(status)?;
        Ok(Connection {
            backend_id: response.backend_id.clone(),
            spawned: response.spawned,
            state: status.state,
            status,
            url: response.url.clone(),
            token: response.token.clone(),
            token_expires_at: response.token_expires_at.as_ref().and_then(timestamp_from_proto),
            static_token: (!response.static_token.is_empty()).then(|| response.static_token.clone()),
            backend: response.backend.as_ref().map(BackendView::from_proto).transpose()?,
        })
    }
}

/// Which backends a list call returns; empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendFilter {
    /// Any of these states.
    pub states: Vec<BackendState>,
    pub drone_id: Option<String>,
    pub key_namespace: Option<String>,
    pub cluster: Option<String>,
}

impl BackendFilter {
    pub fn to_proto(&self) -> v1::BackendFilter {
        v1::BackendFilter {
            states: self.states.iter().map(|s| s.to_proto() as i32).collect(),
            drone_id: self.drone_id.clone().unwrap_or_default(),
            key_namespace: self.key_namespace.clone().unwrap_or_default(),
            cluster: self.cluster.clone().unwrap_or_default(),
        }
    }
}

/// One page of `ListBackends`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendPage {
    pub backends: Vec<BackendView>,
    /// Token of the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

impl HangarClient {
    /// The generated `BackendService` client on this connection, for calls the SDK does not wrap.
    pub fn backend_service(&self) -> BackendServiceClient<Channel> {
        BackendServiceClient::new(self.channel())
    }

    /// Connect: the live backend of the request's key, or a new one started from its spawn spec.
    ///
    /// Retried after UNAVAILABLE only when the request has a key ([`ConnectRequest::is_idempotent`]):
    /// repeating a keyed Connect returns the backend the lost attempt may have started, while a
    /// repeated keyless Connect could start a second one. NO_DRONE_AVAILABLE is never retried.
    pub async fn connect_backend(&self, request: &ConnectRequest) -> Result<Connection, ClientError> {
        let message = request.to_proto();
        let call = || async { Ok(self.backend_service().connect(self.request(message.clone())).await?.into_inner()) };
        let response = if request.is_idempotent() { self.options().retry.run(call).await? } else { call().await? };
        Connection::from_proto(&response)
    }

    /// One backend by id; [`ClientError::NotFound`] with reason `BACKEND_NOT_FOUND` if there is
    /// none. Retried after UNAVAILABLE.
    pub async fn get_backend(&self, id: &str) -> Result<BackendView, ClientError> {
        let message = v1::GetBackendRequest { id: id.to_string() };
        let response = self
            .options()
            .retry
            .run(|| async { Ok(self.backend_service().get_backend(self.request(message.clone())).await?.into_inner()) })
            .await?;
        required_backend(response.backend.as_ref(), "GetBackendResponse")
    }

    /// One page of backends matching `filter`. `page_size` 0 means the server default (100);
    /// pass the previous page's `next_page_token` to continue. Retried after UNAVAILABLE.
    pub async fn list_backends(
        &self,
        filter: &BackendFilter,
        page_size: i32,
        page_token: Option<&str>,
    ) -> Result<BackendPage, ClientError> {
        let message = v1::ListBackendsRequest {
            filter: Some(filter.to_proto()),
            page_size,
            page_token: page_token.unwrap_or_default().to_string(),
        };
        let response = self
            .options()
            .retry
            .run(|| async {
                Ok(self.backend_service().list_backends(self.request(message.clone())).await?.into_inner())
            })
            .await?;
        Ok(BackendPage {
            backends: response.backends.iter().map(BackendView::from_proto).collect::<Result<_, _>>()?,
            next_page_token: (!response.next_page_token.is_empty()).then_some(response.next_page_token),
        })
    }

    /// Every backend matching `filter`, following page tokens. Backends change state while the
    /// pages are read, so one that moves between pages may be missing or listed twice; the
    /// second sighting is dropped (the first page's view of it is kept).
    pub async fn list_all_backends(&self, filter: &BackendFilter) -> Result<Vec<BackendView>, ClientError> {
        let mut backends: Vec<BackendView> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.list_backends(filter, LIST_ALL_PAGE_SIZE, token.as_deref()).await?;
            backends.extend(page.backends.into_iter().filter(|b| seen.insert(b.id.clone())));
            match page.next_page_token {
                Some(next) if Some(&next) == token.as_ref() => {
                    return Err(ClientError::InvalidResponse(format!("the page token {next:?} repeats itself")));
                }
                Some(next) => token = Some(next),
                None => return Ok(backends),
            }
        }
    }

    /// Soft-terminates the backend (SIGTERM, then a kill after the grace period) or, with
    /// `hard`, kills it at once; returns the backend as it is after the request. Not retried: an
    /// UNAVAILABLE answer leaves it open whether the request was taken (terminating again is
    /// harmless, so a caller may repeat it).
    pub async fn terminate_backend(&self, id: &str, hard: bool) -> Result<BackendView, ClientError> {
        let message = v1::TerminateBackendRequest { id: id.to_string(), hard };
        let response = self.backend_service().terminate_backend(self.request(message)).await?.into_inner();
        required_backend(response.backend.as_ref(), "TerminateBackendResponse")
    }

    /// The backend's statuses: its history, then each change, ending after TERMINATED. See
    /// [`HangarClient::watch_backend_with`]; this one never gives up on a controller that is
    /// away.
    pub fn watch_backend(
        &self,
        id: &str,
    ) -> impl Stream<Item = Result<BackendStatusView, ClientError>> + Send + 'static {
        let retry = RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        };
        self.watch_backend_with(id, retry)
    }

    /// Like [`HangarClient::watch_backend`], giving up after `retry.max_attempts` consecutive
    /// streams that ended (UNAVAILABLE, a reset connection) without a new status.
    ///
    /// A dropped stream is resumed by calling WatchBackend again: the controller replays the
    /// history, and since states only move forward, every status whose state is not past the
    /// last one delivered is skipped. So each state is delivered at most once, in order. A stream
    /// that ends cleanly before TERMINATED counts as dropped. Errors a retry cannot fix
    /// (BACKEND_NOT_FOUND, a state this client does not know) are the last item.
    pub fn watch_backend_with(
        &self,
        id: &str,
        retry: RetryPolicy,
    ) -> impl Stream<Item = Result<BackendStatusView, ClientError>> + Send + 'static {
        let client = self.clone();
        let request = v1::WatchBackendRequest { id: id.to_string() };
        async_stream::stream! {
            let mut last: Option<BackendState> = None;
            let mut failures = 0u32;
            loop {
                let mut progressed = false;
                let ended = match client.backend_service().watch_backend(request.clone()).await {
                    Err(status) => ClientError::from(status),
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        loop {
                            let message = match stream.message().await {
                                Ok(Some(message)) => message,
                                Ok(None) => {
                                    break ClientError::from(tonic::Status::unavailable(
                                        "the watch stream ended before TERMINATED",
                                    ));
                                }
                                Err(status) => break ClientError::from(status),
                            };
                            let Some(status) = message.status else {
                                yield Err(ClientError::InvalidResponse("WatchBackendResponse without a status".into()));
                                return;
                            };
                            let status = match BackendStatusView::from_proto(&status) {
                                Ok(status) => status,
                                Err(err) => {
                                    yield Err(err);
                                    return;
                                }
                            };
                            if last.is_some_and(|last| status.state <= last) {
                                continue;
                            }
                            last = Some(status.state);
                            progressed = true;
                            let terminated = status.is_terminated();
                            yield Ok(status);
                            if terminated {
                                return;
                            }
                        }
                    }
                };
                if progressed {
                    failures = 0;
                }
                failures += 1;
                if !matches!(next_step(&ended), Next::Rotate | Next::Stay) || failures >= retry.max_attempts {
                    yield Err(ended);
                    return;
                }
                let delay = retry.backoff(failures);
                tracing::debug!(error = %ended, ?delay, "backend watch stream ended; watching again");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn required_backend(backend: Option<&v1::Backend>, message: &str) -> Result<BackendView, ClientError> {
    BackendView::from_proto(
        backend.ok_or_else(|| ClientError::InvalidResponse(format!("{message} without a backend")))?,
    )
}

/// `Option<Duration>` as `"1h 30m"` or `null` in JSON.
mod humantime_opt {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_str(&humantime::format_duration(*d).to_string()),
            None => serializer.serialize_none(),
        }
    }
}
