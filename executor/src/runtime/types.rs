//! Types of the executor protocol that only the runtimes speak, and their conversions to and
//! from `hangar.executor.v1`, kept here once. What the rest of Hangar shares (the pull policy,
//! resource limits, times) is `hangar::domain`'s and converts there.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use hangar::domain::{ResourceLimits, timestamp_from_proto, timestamp_to_proto};
use hangar::executor::v1 as pb;

use super::{DEFAULT_BACKEND_PORT, RuntimeError};

/// Which runtime runs the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuntimeKind {
    Docker,
    Process,
    Mock,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Process => "process",
            RuntimeKind::Mock => "mock",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "docker" => Some(RuntimeKind::Docker),
            "process" => Some(RuntimeKind::Process),
            "mock" => Some(RuntimeKind::Mock),
            _ => None,
        }
    }
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Optional features a runtime advertises in the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Capability {
    PrepareImage,
    Stats,
    Events,
    ResourceLimits,
    OomReporting,
}

impl Capability {
    pub fn to_proto(self) -> pb::Capability {
        match self {
            Capability::PrepareImage => pb::Capability::PrepareImage,
            Capability::Stats => pb::Capability::Stats,
            Capability::Events => pb::Capability::Events,
            Capability::ResourceLimits => pb::Capability::ResourceLimits,
            Capability::OomReporting => pb::Capability::OomReporting,
        }
    }

    /// `None` for values this build does not know (a newer executor's capabilities).
    pub fn from_proto(value: i32) -> Option<Self> {
        match pb::Capability::try_from(value).ok()? {
            pb::Capability::PrepareImage => Some(Capability::PrepareImage),
            pb::Capability::Stats => Some(Capability::Stats),
            pb::Capability::Events => Some(Capability::Events),
            pb::Capability::ResourceLimits => Some(Capability::ResourceLimits),
            pb::Capability::OomReporting => Some(Capability::OomReporting),
            pb::Capability::Unspecified => None,
        }
    }
}

/// What to run: the process is `command` (the image's ENTRYPOINT when empty) followed by `args`
/// (the image's CMD when both are empty), as in Kubernetes. For docker `image` is an image
/// reference; for the process runtime it is the path of the executable, which is its ENTRYPOINT
/// (so `command[0]`, when given, replaces it) with an empty CMD — see [`BackendSpec::argv`].
/// `Debug` hides the environment's values (the spawn config's secrets, the static token).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BackendSpec {
    pub backend_id: String,
    pub image: String,
    /// Overrides the image's ENTRYPOINT: the program and its leading arguments.
    pub command: Vec<String>,
    /// Overrides the image's CMD.
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Port inside the container; 0 = [`DEFAULT_BACKEND_PORT`]. The process runtime picks a free
    /// host port instead and ignores this.
    pub port: u16,
    pub resources: ResourceLimits,
    pub labels: BTreeMap<String, String>,
}

impl std::fmt::Debug for BackendSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: BTreeMap<&str, &str> = self.env.keys().map(|k| (k.as_str(), hangar::secret::REDACTED)).collect();
        f.debug_struct("BackendSpec")
            .field("backend_id", &self.backend_id)
            .field("image", &self.image)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &env)
            .field("port", &self.port)
            .field("resources", &self.resources)
            .field("labels", &self.labels)
            .finish()
    }
}

/// Longest backend id accepted; ids end up in container names and labels.
const MAX_BACKEND_ID_LEN: usize = 128;
/// Upper bound on the total size of a spec's environment.
const MAX_ENV_BYTES: usize = 256 * 1024;

/// Checks a backend id: non-empty, short, and safe in a container name.
pub fn validate_backend_id(id: &str) -> Result<(), RuntimeError> {
    if id.is_empty() {
        return Err(RuntimeError::invalid_spec("backend_id", "must not be empty"));
    }
    if id.len() > MAX_BACKEND_ID_LEN {
        return Err(RuntimeError::invalid_spec("backend_id", format!("must be at most {MAX_BACKEND_ID_LEN} bytes")));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
        return Err(RuntimeError::invalid_spec(
            "backend_id",
            "may contain only ASCII letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(())
}

impl BackendSpec {
    pub fn container_port(&self) -> u16 {
        if self.port == 0 { DEFAULT_BACKEND_PORT } else { self.port }
    }

    /// The whole command line of a runtime whose "image" is a program with no arguments of its
    /// own (the process and mock runtimes): `command`, or `image` when it is empty, then `args`.
    pub fn argv(&self) -> Vec<String> {
        let program = if self.command.is_empty() { std::slice::from_ref(&self.image) } else { &self.command[..] };
        program.iter().chain(&self.args).cloned().collect()
    }

    /// Rejects specs no runtime could run.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        validate_backend_id(&self.backend_id)?;
        if self.image.is_empty() {
            return Err(RuntimeError::invalid_spec("spec.image", "must not be empty"));
        }
        let env_bytes: usize = self.env.iter().map(|(k, v)| k.len() + v.len()).sum();
        if env_bytes > MAX_ENV_BYTES {
            return Err(RuntimeError::invalid_spec("spec.env", format!("must be at most {MAX_ENV_BYTES} bytes")));
        }
        if let Some(key) = self.env.keys().find(|k| k.is_empty() || k.contains('=') || k.contains('\0')) {
            return Err(RuntimeError::invalid_spec("spec.env", format!("invalid variable name {key:?}")));
        }
        if self.command.first().is_some_and(String::is_empty) {
            return Err(RuntimeError::invalid_spec("spec.command[0]", "is the program and must not be empty"));
        }
        for (field, argv) in [("spec.command", &self.command), ("spec.args", &self.args)] {
            if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
                return Err(RuntimeError::invalid_spec(&format!("{field}[{i}]"), "must not contain NUL"));
            }
        }
        Ok(())
    }

    pub fn to_proto(&self) -> pb::BackendSpec {
        pb::BackendSpec {
            backend_id: self.backend_id.clone(),
            image: self.image.clone(),
            command: self.command.clone(),
            args: self.args.clone(),
            env: self.env.clone().into_iter().collect(),
            port: self.port.into(),
            resources: Some(self.resources.into()),
            labels: self.labels.clone().into_iter().collect(),
        }
    }

    pub fn from_proto(spec: pb::BackendSpec) -> Result<Self, RuntimeError> {
        let port =
            u16::try_from(spec.port).map_err(|_| RuntimeError::invalid_spec("spec.port", "must be at most 65535"))?;
        Ok(BackendSpec {
            backend_id: spec.backend_id,
            image: spec.image,
            command: spec.command,
            args: spec.args,
            env: spec.env.into_iter().collect(),
            port,
            resources: spec.resources.map(Into::into).unwrap_or_default(),
            labels: spec.labels.into_iter().collect(),
        })
    }
}

/// Result of a start: the same on every retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    /// Container id or process id.
    pub runtime_id: String,
    /// `host:port` reachable from the drone's host.
    pub address: String,
}

/// Result of preparing an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageReady {
    pub image_id: String,
    pub pulled: bool,
}

/// Where a backend is in its life, as the runtime sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendState {
    Created,
    Running,
    Exited,
    Unknown,
}

impl BackendState {
    pub fn to_proto(self) -> pb::RuntimeState {
        match self {
            BackendState::Created => pb::RuntimeState::Created,
            BackendState::Running => pb::RuntimeState::Running,
            BackendState::Exited => pb::RuntimeState::Exited,
            BackendState::Unknown => pb::RuntimeState::Unknown,
        }
    }

    pub fn from_proto(value: i32) -> Self {
        match pb::RuntimeState::try_from(value) {
            Ok(pb::RuntimeState::Created) => BackendState::Created,
            Ok(pb::RuntimeState::Running) => BackendState::Running,
            Ok(pb::RuntimeState::Exited) => BackendState::Exited,
            _ => BackendState::Unknown,
        }
    }
}

/// What inspect and list report about a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    pub backend_id: String,
    pub runtime_id: String,
    pub state: BackendState,
    /// Exit code once exited; a death by signal N reads 128+N, as in a shell and in Docker.
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub address: String,
}

impl BackendInfo {
    pub fn to_proto(&self) -> pb::BackendInfo {
        pb::BackendInfo {
            backend_id: self.backend_id.clone(),
            runtime_id: self.runtime_id.clone(),
            state: self.state.to_proto().into(),
            exit_code: self.exit_code,
            oom_killed: self.oom_killed,
            created_at: self.created_at.map(timestamp_to_proto),
            started_at: self.started_at.map(timestamp_to_proto),
            finished_at: self.finished_at.map(timestamp_to_proto),
            address: self.address.clone(),
        }
    }

    pub fn from_proto(info: pb::BackendInfo) -> Self {
        BackendInfo {
            backend_id: info.backend_id,
            runtime_id: info.runtime_id,
            state: BackendState::from_proto(info.state),
            exit_code: info.exit_code,
            oom_killed: info.oom_killed,
            created_at: info.created_at.as_ref().and_then(timestamp_from_proto),
            started_at: info.started_at.as_ref().and_then(timestamp_from_proto),
            finished_at: info.finished_at.as_ref().and_then(timestamp_from_proto),
            address: info.address,
        }
    }
}

/// One resource sample with cumulative counters; the drone derives rates from two samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub time: DateTime<Utc>,
    pub cpu_total_ns: u64,
    pub memory_used_bytes: u64,
    /// 0 = no limit known.
    pub memory_limit_bytes: u64,
    pub pids: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

impl Stats {
    pub fn to_proto(&self) -> pb::BackendStats {
        pb::BackendStats {
            time: Some(timestamp_to_proto(self.time)),
            cpu_total_ns: self.cpu_total_ns,
            memory_used_bytes: self.memory_used_bytes,
            memory_limit_bytes: self.memory_limit_bytes,
            pids: self.pids,
            net_rx_bytes: self.net_rx_bytes,
            net_tx_bytes: self.net_tx_bytes,
        }
    }

    pub fn from_proto(stats: pb::BackendStats) -> Self {
        Stats {
            time: stats.time.as_ref().and_then(timestamp_from_proto).unwrap_or_else(Utc::now),
            cpu_total_ns: stats.cpu_total_ns,
            memory_used_bytes: stats.memory_used_bytes,
            memory_limit_bytes: stats.memory_limit_bytes,
            pids: stats.pids,
            net_rx_bytes: stats.net_rx_bytes,
            net_tx_bytes: stats.net_tx_bytes,
        }
    }
}

/// A readiness condition reported by `Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// "RuntimeReachable" or "RuntimeReady".
    pub kind: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Condition {
    pub fn new(kind: &str, status: bool, reason: &str, message: impl Into<String>) -> Self {
        Condition { kind: kind.into(), status, reason: reason.into(), message: message.into() }
    }

    pub fn to_proto(&self) -> pb::Condition {
        pb::Condition {
            r#type: self.kind.clone(),
            status: self.status,
            reason: self.reason.clone(),
            message: self.message.clone(),
        }
    }

    pub fn from_proto(c: pb::Condition) -> Self {
        Condition { kind: c.r#type, status: c.status, reason: c.reason, message: c.message }
    }
}
