//! What the backend calls of [`HangarClient`](crate::HangarClient) send and answer: the spawn
//! spec and Connect request going out, and serializable views of the backends and statuses coming
//! back, each read from or written to `hangar.v1` once, here.
//!
//! The views are not the domain's [`Backend`](hangar::domain::Backend): that is the controller's
//! record, with fields the wire does not carry (the static token, the pending termination), while
//! a view is exactly what a reader is told. The views are checked on the way in: a state this
//! client does not know is an [`ClientError::InvalidResponse`], not a silent default.

use crate::ClientError;
use chrono::{DateTime, Utc};
use hangar::domain::{
    BackendKey, BackendState, PullPolicy, ResourceLimits, TerminationKind, TerminationReason, duration_from_proto,
    duration_to_proto, timestamp_from_proto,
};
use hangar::v1;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// What to start when Connect finds no live backend: the `SpawnConfig` of the proto, also used
/// to show the configuration a backend was started with. Empty strings and `None` leave the
/// choice to the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SpawnSpec {
    /// Container image reference (docker runtime) or absolute program path (process runtime).
    pub image: String,
    /// Overrides the image's ENTRYPOINT: the program and its leading arguments; empty = the
    /// image's. (The process runtime runs `command[0]` instead of `image`.)
    pub command: Vec<String>,
    /// Overrides the image's CMD: the arguments after the program; empty = the image's, unless
    /// `command` is set (then none), as in Kubernetes.
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub pull_policy: Option<PullPolicy>,
    /// Port the backend listens on inside its container; `None` = the controller's default,
    /// [`DEFAULT_BACKEND_PORT`](hangar::domain::DEFAULT_BACKEND_PORT).
    pub container_port: Option<u32>,
    pub resources: ResourceLimits,
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

    /// The program and its leading arguments, instead of the image's ENTRYPOINT.
    pub fn command<I: IntoIterator<Item = S>, S: Into<String>>(mut self, command: I) -> Self {
        self.command = command.into_iter().map(Into::into).collect();
        self
    }

    /// The arguments, instead of the image's CMD.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
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

    pub fn resources(mut self, resources: ResourceLimits) -> Self {
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
        v1::SpawnConfig {
            executable: Some(v1::Executable {
                image: self.image.clone(),
                command: self.command.clone(),
                args: self.args.clone(),
                env: self.env.clone().into_iter().collect(),
                pull_policy: self.pull_policy.map_or(v1::PullPolicy::Unspecified, PullPolicy::to_proto) as i32,
                container_port: self.container_port.unwrap_or(0),
                resources: Some(self.resources.into()),
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
        SpawnSpec {
            image: executable.image,
            command: executable.command,
            args: executable.args,
            env: executable.env.into_iter().collect(),
            pull_policy: PullPolicy::from_proto(executable.pull_policy),
            container_port: (executable.container_port != 0).then_some(executable.container_port),
            resources: executable.resources.map(Into::into).unwrap_or_default(),
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
    /// Why it is in this state, in words (a runtime's error, a timeout, an exit); empty when
    /// nobody said. For people: programs match on `termination_reason`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
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
            message: status.message.clone(),
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

/// One page of `ListBackends`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendPage {
    pub backends: Vec<BackendView>,
    /// Token of the next page; `None` on the last page.
    pub next_page_token: Option<String>,
    /// The listing's revision (its first page's snapshot): `watch_backends` with this
    /// `start_revision` continues after the listing without a gap.
    pub revision: u64,
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
