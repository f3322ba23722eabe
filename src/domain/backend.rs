//! Backends: the state machine every component agrees on.

use super::node::{ParseEnumError, string_enum};
use super::time::{duration_from_proto, duration_to_proto, timestamp_from_proto, timestamp_to_proto};
use crate::v1;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Lifecycle of a backend. The declaration order is the only order states may move in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BackendState {
    Scheduled,
    Loading,
    Starting,
    Waiting,
    Ready,
    Terminating,
    HardTerminating,
    Terminated,
}

string_enum!(BackendState, "backend state", v1::BackendState, {
    Scheduled => "SCHEDULED", Loading => "LOADING", Starting => "STARTING", Waiting => "WAITING",
    Ready => "READY", Terminating => "TERMINATING", HardTerminating => "HARD_TERMINATING",
    Terminated => "TERMINATED",
});

/// A move the state machine refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("backend cannot move from {from} to {to}: states only move forward")]
pub struct TransitionError {
    pub from: BackendState,
    pub to: BackendState,
}

impl BackendState {
    /// The single transition function: forward moves (skipping steps is allowed) succeed;
    /// staying put or moving backwards is refused, so a late or replayed event cannot undo a
    /// newer state.
    pub fn transition(self, to: BackendState) -> Result<BackendState, TransitionError> {
        if to > self { Ok(to) } else { Err(TransitionError { from: self, to }) }
    }

    /// Not yet terminated: the backend holds its key and counts against its drone's capacity.
    pub fn is_live(self) -> bool {
        self != BackendState::Terminated
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TerminationKind {
    Soft,
    Hard,
}

string_enum!(TerminationKind, "termination kind", v1::TerminationKind, { Soft => "SOFT", Hard => "HARD" });

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TerminationReason {
    Swept,
    Lifetime,
    External,
    KeyExpired,
    Lost,
    StartupTimeout,
    Exited,
    ImagePullFailed,
    InternalError,
}

string_enum!(TerminationReason, "termination reason", v1::TerminationReason, {
    Swept => "SWEPT", Lifetime => "LIFETIME", External => "EXTERNAL", KeyExpired => "KEY_EXPIRED",
    Lost => "LOST", StartupTimeout => "STARTUP_TIMEOUT", Exited => "EXITED",
    ImagePullFailed => "IMAGE_PULL_FAILED", InternalError => "INTERNAL_ERROR",
});

/// A key names at most one live backend cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BackendKey {
    pub namespace: String,
    pub name: String,
    pub tag: String,
}

impl From<&v1::BackendKey> for BackendKey {
    fn from(k: &v1::BackendKey) -> Self {
        BackendKey { namespace: k.namespace.clone(), name: k.name.clone(), tag: k.tag.clone() }
    }
}

impl From<&BackendKey> for v1::BackendKey {
    fn from(k: &BackendKey) -> Self {
        v1::BackendKey { namespace: k.namespace.clone(), name: k.name.clone(), tag: k.tag.clone() }
    }
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.tag.is_empty() {
            write!(f, "@{}", self.tag)?;
        }
        Ok(())
    }
}

impl BackendKey {
    /// Field violations of a key from the wire, named under `field`. The namespace is a DNS
    /// label (it shows up in URLs and metrics); the name is free-form but bounded.
    pub fn violations(&self, field: &str) -> Vec<(String, String)> {
        let mut violations = Vec::new();
        if let Some(problem) = dns_label_problem(&self.namespace) {
            violations.push((format!("{field}.namespace"), problem));
        }
        if self.name.is_empty() || self.name.len() > 253 {
            violations.push((format!("{field}.name"), format!("must be 1–253 characters (got {})", self.name.len())));
        } else if self.name.chars().any(|c| c.is_control() || c == '/') {
            violations.push((format!("{field}.name"), "must not contain '/' or control characters".into()));
        }
        if self.tag.len() > 128 || self.tag.chars().any(char::is_control) {
            violations.push((format!("{field}.tag"), "must be at most 128 printable characters".into()));
        }
        violations
    }

    /// `namespace/name`, as handed to the backend in `HANGAR_BACKEND_KEY`.
    pub fn path(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Why a DNS-label-like name is refused, if it is.
pub fn dns_label_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        Some("must not be empty".to_string())
    } else if value.len() > 63 {
        Some(format!("must be at most 63 characters (got {})", value.len()))
    } else if !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        Some(format!("{value:?} may contain only lowercase letters, digits and '-'"))
    } else if value.starts_with('-') || value.ends_with('-') {
        Some(format!("{value:?} must start and end with a letter or digit"))
    } else {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PullPolicy {
    #[default]
    IfNotPresent,
    Always,
    Never,
}

string_enum!(PullPolicy, "pull policy", v1::PullPolicy, {
    IfNotPresent => "IF_NOT_PRESENT", Always => "ALWAYS", Never => "NEVER",
});

/// Resource limits; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pids: u64,
}

/// What a backend runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Executable {
    pub image: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub pull_policy: PullPolicy,
    pub container_port: u16,
    pub resources: ResourceLimits,
}

/// A validated spawn configuration, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnConfig {
    pub executable: Executable,
    pub cluster: String,
    pub pool: String,
    pub labels: BTreeMap<String, String>,
    pub lifetime_limit: Option<Duration>,
    pub max_idle: Option<Duration>,
    /// Kept out of logs and listings: it is a credential. `None` when not set.
    pub static_token: Option<String>,
}

/// Limits of a spawn config. Generous, but bounded: a config travels in every Spawn action and
/// every Backend message.
pub mod spawn_limits {
    pub const IMAGE_MAX: usize = 512;
    pub const COMMAND_ARGS_MAX: usize = 256;
    pub const COMMAND_BYTES_MAX: usize = 64 * 1024;
    pub const ENV_VARS_MAX: usize = 256;
    /// Total bytes of every env name and value together.
    pub const ENV_BYTES_MAX: usize = 64 * 1024;
    pub const LABELS_MAX: usize = 64;
    /// Minimum of `max_idle` and `lifetime_limit`: the sweep runs about once a second.
    pub const MIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);
    pub const STATIC_TOKEN_MIN: usize = 16;
    pub const STATIC_TOKEN_MAX: usize = 256;
}

/// Environment names Hangar sets itself; a spawn config may not override them.
pub const RESERVED_ENV: &[&str] =
    &["PORT", "HANGAR_BACKEND_ID", "HANGAR_BACKEND_KEY", "HANGAR_FENCING_TOKEN", "HANGAR_STATIC_TOKEN"];

impl SpawnConfig {
    /// Validates a spawn config from the wire; every problem is one `(field, description)` under
    /// `field` (e.g. `spawn_config.executable.image`).
    pub fn from_proto(config: &v1::SpawnConfig, field: &str) -> Result<SpawnConfig, Vec<(String, String)>> {
        use spawn_limits::*;
        let mut violations = Vec::new();
        let mut violate = |f: String, d: String| violations.push((f, d));
        let exe_field = format!("{field}.executable");
        let default_exe = v1::Executable::default();
        let exe = match &config.executable {
            Some(exe) => exe,
            None => {
                violate(exe_field.clone(), "is required".into());
                &default_exe
            }
        };
        if let Some(problem) = image_problem(&exe.image) {
            violate(format!("{exe_field}.image"), problem);
        }
        let command_bytes: usize = exe.command.iter().map(String::len).sum();
        if exe.command.len() > COMMAND_ARGS_MAX || command_bytes > COMMAND_BYTES_MAX {
            violate(
                format!("{exe_field}.command"),
                format!("at most {COMMAND_ARGS_MAX} arguments and {COMMAND_BYTES_MAX} bytes"),
            );
        }
        if exe.command.iter().any(|a| a.contains('\0')) {
            violate(format!("{exe_field}.command"), "arguments must not contain NUL".into());
        }
        let mut env_bytes = 0;
        for (name, value) in &exe.env {
            env_bytes += name.len() + value.len();
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                violate(format!("{exe_field}.env[{name:?}]"), "names are [A-Za-z_][A-Za-z0-9_]*".into());
            } else if RESERVED_ENV.contains(&name.as_str()) {
                violate(format!("{exe_field}.env[{name:?}]"), "is set by Hangar and cannot be overridden".into());
            }
            if value.contains('\0') {
                violate(format!("{exe_field}.env[{name:?}]"), "values must not contain NUL".into());
            }
        }
        if exe.env.len() > ENV_VARS_MAX || env_bytes > ENV_BYTES_MAX {
            violate(
                format!("{exe_field}.env"),
                format!(
                    "at most {ENV_VARS_MAX} variables of {ENV_BYTES_MAX} bytes in total (got {} of {env_bytes})",
                    exe.env.len()
                ),
            );
        }
        let pull_policy = match exe.pull_policy {
            0 => PullPolicy::IfNotPresent,
            p => PullPolicy::from_proto(p).unwrap_or_else(|| {
                violate(format!("{exe_field}.pull_policy"), format!("unknown pull policy {p}"));
                PullPolicy::IfNotPresent
            }),
        };
        let container_port = match exe.container_port {
            0 => 8080,
            p => u16::try_from(p).unwrap_or_else(|_| {
                violate(format!("{exe_field}.container_port"), format!("must be 1–65535 (got {p})"));
                8080
            }),
        };
        let limits = exe.resources.unwrap_or_default();
        if limits.memory_bytes != 0 && limits.memory_bytes < 4 << 20 {
            violate(format!("{exe_field}.resources.memory_bytes"), "must be 0 (no limit) or at least 4 MiB".into());
        }
        if limits.cpu_millis > 1_024_000 {
            violate(format!("{exe_field}.resources.cpu_millis"), "must be at most 1024000 (1024 cores)".into());
        }
        let mut name_or_default = |f: &str, value: &str| {
            if value.is_empty() {
                return "default".to_string();
            }
            if let Some(problem) = dns_label_problem(value) {
                violate(format!("{field}.{f}"), problem);
            }
            value.to_string()
        };
        let cluster = name_or_default("cluster", &config.cluster);
        let pool = name_or_default("pool", &config.pool);
        for (key, value) in &config.labels {
            if key.is_empty() || key.len() > 63 || value.len() > 256 {
                violations.push((
                    format!("{field}.labels[{key:?}]"),
                    "keys must be 1–63 characters and values at most 256".into(),
                ));
            }
        }
        if config.labels.len() > LABELS_MAX {
            violations.push((format!("{field}.labels"), format!("at most {LABELS_MAX} labels")));
        }
        let mut limit = |f: &str, d: &Option<prost_types::Duration>| match d {
            None => None,
            Some(d) => match duration_from_proto(d) {
                Some(d) if d.is_zero() => None,
                Some(d) if d >= MIN_LIMIT => Some(d),
                _ => {
                    violations.push((format!("{field}.{f}"), format!("must be unset, 0, or at least {MIN_LIMIT:?}")));
                    None
                }
            },
        };
        let lifetime_limit = limit("lifetime_limit", &config.lifetime_limit);
        let max_idle = limit("max_idle", &config.max_idle);
        let static_token = match config.static_token.as_str() {
            "" => None,
            t if t.len() < STATIC_TOKEN_MIN || t.len() > STATIC_TOKEN_MAX => {
                violations.push((
                    format!("{field}.static_token"),
                    format!("must be {STATIC_TOKEN_MIN}–{STATIC_TOKEN_MAX} characters"),
                ));
                None
            }
            t if !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => {
                violations.push((format!("{field}.static_token"), "must be URL-safe: [A-Za-z0-9_-]".into()));
                None
            }
            t => Some(t.to_string()),
        };
        if !violations.is_empty() {
            return Err(violations);
        }
        Ok(SpawnConfig {
            executable: Executable {
                image: exe.image.clone(),
                command: exe.command.clone(),
                env: exe.env.clone().into_iter().collect(),
                pull_policy,
                container_port,
                resources: ResourceLimits {
                    cpu_millis: limits.cpu_millis,
                    memory_bytes: limits.memory_bytes,
                    pids: limits.pids,
                },
            },
            cluster,
            pool,
            labels: config.labels.clone().into_iter().collect(),
            lifetime_limit,
            max_idle,
            static_token,
        })
    }
}

/// Why an image reference (or, for the process runtime, a program path) is refused.
fn image_problem(image: &str) -> Option<String> {
    if image.is_empty() {
        return Some("must not be empty".into());
    }
    if image.len() > spawn_limits::IMAGE_MAX {
        return Some(format!("must be at most {} characters", spawn_limits::IMAGE_MAX));
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!("{image:?} must not contain whitespace or control characters"));
    }
    None
}

impl From<&Executable> for v1::Executable {
    fn from(e: &Executable) -> Self {
        v1::Executable {
            image: e.image.clone(),
            command: e.command.clone(),
            env: e.env.clone().into_iter().collect(),
            pull_policy: e.pull_policy.to_proto() as i32,
            container_port: u32::from(e.container_port),
            resources: Some(v1::ResourceLimits {
                cpu_millis: e.resources.cpu_millis,
                memory_bytes: e.resources.memory_bytes,
                pids: e.resources.pids,
            }),
        }
    }
}

impl From<&SpawnConfig> for v1::SpawnConfig {
    /// The static token is not echoed: `Backend` messages are listed and watched by readers.
    fn from(c: &SpawnConfig) -> Self {
        v1::SpawnConfig {
            executable: Some((&c.executable).into()),
            cluster: c.cluster.clone(),
            pool: c.pool.clone(),
            labels: c.labels.clone().into_iter().collect(),
            lifetime_limit: c.lifetime_limit.map(duration_to_proto),
            max_idle: c.max_idle.map(duration_to_proto),
            static_token: String::new(),
        }
    }
}

/// Where a backend is in its life, and why it ended if it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub state: BackendState,
    pub time: DateTime<Utc>,
    pub termination_kind: Option<TerminationKind>,
    pub termination_reason: Option<TerminationReason>,
    pub exit_code: Option<i32>,
}

impl BackendStatus {
    pub fn new(state: BackendState, time: DateTime<Utc>) -> Self {
        BackendStatus { state, time, termination_kind: None, termination_reason: None, exit_code: None }
    }

    /// A status from the wire (a drone's event). `None` when the state is unspecified or unknown.
    pub fn from_proto(s: &v1::BackendStatus, fallback_time: DateTime<Utc>) -> Option<BackendStatus> {
        Some(BackendStatus {
            state: BackendState::from_proto(s.state)?,
            time: s.time.as_ref().and_then(timestamp_from_proto).unwrap_or(fallback_time),
            termination_kind: TerminationKind::from_proto(s.termination_kind),
            termination_reason: TerminationReason::from_proto(s.termination_reason),
            exit_code: s.exit_code,
        })
    }
}

impl From<&BackendStatus> for v1::BackendStatus {
    fn from(s: &BackendStatus) -> Self {
        v1::BackendStatus {
            state: s.state.to_proto() as i32,
            time: Some(timestamp_to_proto(s.time)),
            termination_kind: s.termination_kind.map_or(0, |k| k.to_proto() as i32),
            termination_reason: s.termination_reason.map_or(0, |r| r.to_proto() as i32),
            exit_code: s.exit_code,
        }
    }
}

/// A backend as the controller records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// `bk-` + a UUIDv7 in simple form.
    pub id: String,
    pub key: Option<BackendKey>,
    pub status: BackendStatus,
    pub drone_id: String,
    pub cluster: String,
    pub pool: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Last proxy traffic report (the creation time until the first one).
    pub last_activity_at: DateTime<Utc>,
    /// 0 for backends without a key.
    pub fencing_token: u64,
    pub spawn_config: SpawnConfig,
    /// host:port as seen from the drone; empty until started.
    pub address: String,
    /// The hardest termination asked of the drone so far: a repeated request (a sweep every
    /// second, a retried TerminateBackend) is not sent again.
    #[serde(default)]
    pub termination_requested: Option<TerminationKind>,
}

impl Backend {
    /// A fresh id: `bk-` + UUIDv7 (time-ordered, so listings by id are roughly by age).
    pub fn new_id() -> String {
        format!("bk-{}", uuid::Uuid::now_v7().simple())
    }

    /// The environment Hangar adds to the spawn config's (which cannot override it); `PORT` is
    /// the runtime's.
    pub fn hangar_env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert("HANGAR_BACKEND_ID".to_string(), self.id.clone());
        env.insert("HANGAR_BACKEND_KEY".to_string(), self.key.as_ref().map(BackendKey::path).unwrap_or_default());
        env.insert("HANGAR_FENCING_TOKEN".to_string(), self.fencing_token.to_string());
        if let Some(token) = &self.spawn_config.static_token {
            env.insert("HANGAR_STATIC_TOKEN".to_string(), token.clone());
        }
        env
    }
}

impl From<&Backend> for v1::Backend {
    fn from(b: &Backend) -> Self {
        v1::Backend {
            id: b.id.clone(),
            key: b.key.as_ref().map(Into::into),
            status: Some((&b.status).into()),
            drone_id: b.drone_id.clone(),
            cluster: b.cluster.clone(),
            pool: b.pool.clone(),
            labels: b.labels.clone().into_iter().collect(),
            created_at: Some(timestamp_to_proto(b.created_at)),
            last_activity_at: Some(timestamp_to_proto(b.last_activity_at)),
            fencing_token: b.fencing_token,
            spawn_config: Some((&b.spawn_config).into()),
            address: b.address.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BackendState::*;

    #[test]
    fn states_move_forward_and_may_skip_steps() {
        assert_eq!(Scheduled.transition(Loading), Ok(Loading));
        assert_eq!(Starting.transition(Terminated), Ok(Terminated));
    }

    #[test]
    fn backward_and_repeated_moves_are_refused() {
        assert_eq!(Ready.transition(Starting), Err(TransitionError { from: Ready, to: Starting }));
        assert!(Terminated.transition(Terminated).is_err());
        assert!(!Terminated.is_live());
    }

    #[test]
    fn key_displays_namespace_name_and_tag() {
        let key = BackendKey { namespace: "docs".into(), name: "doc-1".into(), tag: "v2".into() };
        assert_eq!(key.to_string(), "docs/doc-1@v2");
    }

    fn valid_config() -> v1::SpawnConfig {
        v1::SpawnConfig {
            executable: Some(v1::Executable { image: "hangar/test:1".into(), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn spawn_config_fills_defaults() {
        let config = SpawnConfig::from_proto(&valid_config(), "spawn_config").unwrap();
        assert_eq!(config.cluster, "default");
        assert_eq!(config.pool, "default");
        assert_eq!(config.executable.container_port, 8080);
        assert_eq!(config.executable.pull_policy, PullPolicy::IfNotPresent);
        assert_eq!(config.static_token, None);
    }

    #[test]
    fn spawn_config_names_each_bad_field() {
        let mut config = valid_config();
        let exe = config.executable.as_mut().unwrap();
        exe.image = String::new();
        exe.env.insert("HANGAR_BACKEND_ID".into(), "x".into());
        exe.env.insert("BIG".into(), "x".repeat(70_000));
        exe.container_port = 70_000;
        config.pool = "Bad_Pool".into();
        config.max_idle = Some(prost_types::Duration { seconds: 0, nanos: 1_000 });
        config.static_token = "short".into();
        let violations = SpawnConfig::from_proto(&config, "spawn_config").unwrap_err();
        let fields: Vec<&str> = violations.iter().map(|(f, _)| f.as_str()).collect();
        for expected in [
            "spawn_config.executable.image",
            "spawn_config.executable.env[\"HANGAR_BACKEND_ID\"]",
            "spawn_config.executable.env",
            "spawn_config.executable.container_port",
            "spawn_config.pool",
            "spawn_config.max_idle",
            "spawn_config.static_token",
        ] {
            assert!(fields.contains(&expected), "{expected} missing from {fields:?}");
        }
    }

    #[test]
    fn key_violations_name_namespace_and_name() {
        let key = BackendKey { namespace: "Docs".into(), name: String::new(), tag: String::new() };
        let fields: Vec<String> = key.violations("key").into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, vec!["key.namespace".to_string(), "key.name".to_string()]);
    }
}
