//! Backends: the state machine every component agrees on.

use super::node::{ParseEnumError, string_enum};
use super::spawn::SpawnConfig;
use super::status_message::status_message;
use super::time::{timestamp_from_proto, timestamp_to_proto};
use crate::v1;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

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

/// Where a backend is in its life, and why it ended if it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub state: BackendState,
    pub time: DateTime<Utc>,
    pub termination_kind: Option<TerminationKind>,
    pub termination_reason: Option<TerminationReason>,
    pub exit_code: Option<i32>,
    /// Why it is in this state, in words, when whoever moved it knew (a runtime's error, a
    /// timeout, an exit); empty otherwise. Always made with [`status_message`]. Statuses stored
    /// before it existed have none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl BackendStatus {
    pub fn new(state: BackendState, time: DateTime<Utc>) -> Self {
        BackendStatus {
            state,
            time,
            termination_kind: None,
            termination_reason: None,
            exit_code: None,
            message: String::new(),
        }
    }

    /// Whether a drone's report `reported` replaces this recorded status although both are
    /// TERMINATED: a backend recorded LOST (its drone went away past the key lease, and how the
    /// backend ended was unknown) whose drone comes back and says it stopped the backend for its
    /// key lease (KEY_EXPIRED), as a drone cut off from every controller does at half the lease
    /// (docs/design/backends-and-leases.md#a-lost-backend-whose-drone-comes-back). The state
    /// stays TERMINATED; what is known of the end, and when it was, changes. No other report
    /// does: the record's other ends are final, and a drone's later LOST, EXTERNAL or SWEPT
    /// would describe what happened after the controllers had given up on it.
    pub fn refined_by(&self, reported: &BackendStatus) -> bool {
        self.state == BackendState::Terminated
            && self.termination_reason == Some(TerminationReason::Lost)
            && reported.state == BackendState::Terminated
            && reported.termination_reason == Some(TerminationReason::KeyExpired)
    }

    /// A status from the wire (a drone's event). `None` when the state is unspecified or unknown.
    /// The message is bounded here, whatever the sender did.
    pub fn from_proto(s: &v1::BackendStatus, fallback_time: DateTime<Utc>) -> Option<BackendStatus> {
        Some(BackendStatus {
            state: BackendState::from_proto(s.state)?,
            time: s.time.as_ref().and_then(timestamp_from_proto).unwrap_or(fallback_time),
            termination_kind: TerminationKind::from_proto(s.termination_kind),
            termination_reason: TerminationReason::from_proto(s.termination_reason),
            exit_code: s.exit_code,
            message: status_message(&s.message, []),
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
            message: s.message.clone(),
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

    /// Not yet asked to stop: neither terminating nor asked to terminate.
    pub fn is_running(&self) -> bool {
        self.status.state < BackendState::Terminating && self.termination_requested.is_none()
    }

    /// The earliest time at which one of this backend's limits (`lifetime_limit` from creation,
    /// `max_idle` from the last traffic) is reached, as things stand; `None` when it has no limit
    /// or is no longer running. Traffic only moves it later, so a stored copy of it is a lower
    /// bound of the real deadline (docs/design/backends-and-leases.md#limits).
    pub fn limit_due_at(&self) -> Option<DateTime<Utc>> {
        if !self.is_running() {
            return None;
        }
        // A limit too far away to be a time is never reached.
        let after = |since: DateTime<Utc>, limit: Option<std::time::Duration>| {
            limit.and_then(|l| chrono::Duration::from_std(l).ok()).and_then(|l| since.checked_add_signed(l))
        };
        let lifetime = after(self.created_at, self.spawn_config.lifetime_limit);
        let idle = after(self.last_activity_at, self.spawn_config.max_idle);
        match (lifetime, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Which backends a listing returns; empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendFilter {
    /// Any of these states.
    pub states: Vec<BackendState>,
    pub drone_id: Option<String>,
    pub key_namespace: Option<String>,
    pub cluster: Option<String>,
    pub pool: Option<String>,
    /// Every one of these labels, with exactly this value.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The key's name starts with this; backends without a key never match.
    #[serde(default)]
    pub key_prefix: Option<String>,
}

impl BackendFilter {
    /// Every live (not TERMINATED) backend.
    pub fn live() -> Self {
        BackendFilter {
            states: BackendState::ALL.iter().copied().filter(|s| s.is_live()).collect(),
            ..BackendFilter::default()
        }
    }

    /// A filter from the wire, its states sorted and without repeats (so the same filter always
    /// reads the same); the field path and message of the first unknown state otherwise.
    pub fn from_proto(f: &v1::BackendFilter) -> Result<Self, (String, String)> {
        let mut states = f
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| {
                BackendState::from_proto(*s).ok_or((format!("filter.states[{i}]"), format!("unknown state {s}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        states.sort();
        states.dedup();
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Ok(BackendFilter {
            states,
            drone_id: non_empty(&f.drone_id),
            key_namespace: non_empty(&f.key_namespace),
            cluster: non_empty(&f.cluster),
            pool: non_empty(&f.pool),
            labels: f.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            key_prefix: non_empty(&f.key_prefix),
        })
    }

    /// Whether `backend` is one this filter selects. Of its fields only the status changes
    /// during a backend's life, so a backend enters or leaves a filter only through `states`.
    pub fn matches(&self, backend: &Backend) -> bool {
        self.matches_in(backend, backend.status.state)
    }

    /// Whether `backend` would match were it in `state`: a watch tells from the state before a
    /// change whether the backend was in the filter.
    pub fn matches_in(&self, backend: &Backend, state: BackendState) -> bool {
        let key = backend.key.as_ref();
        (self.states.is_empty() || self.states.contains(&state))
            && self.drone_id.as_ref().is_none_or(|d| *d == backend.drone_id)
            && self.key_namespace.as_ref().is_none_or(|n| key.is_some_and(|k| k.namespace == *n))
            && self.key_prefix.as_ref().is_none_or(|p| key.is_some_and(|k| k.name.starts_with(p.as_str())))
            && self.cluster.as_ref().is_none_or(|c| *c == backend.cluster)
            && self.pool.as_ref().is_none_or(|p| *p == backend.pool)
            && self.labels.iter().all(|(k, v)| backend.labels.get(k) == Some(v))
    }

    pub fn to_proto(&self) -> v1::BackendFilter {
        v1::BackendFilter {
            states: self.states.iter().map(|s| s.to_proto() as i32).collect(),
            drone_id: self.drone_id.clone().unwrap_or_default(),
            key_namespace: self.key_namespace.clone().unwrap_or_default(),
            cluster: self.cluster.clone().unwrap_or_default(),
            pool: self.pool.clone().unwrap_or_default(),
            labels: self.labels.clone().into_iter().collect(),
            key_prefix: self.key_prefix.clone().unwrap_or_default(),
        }
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
    fn a_status_message_from_the_wire_is_bounded_and_survives_the_round_trip() {
        let now = Utc::now();
        let wire = v1::BackendStatus {
            state: v1::BackendState::Terminated as i32,
            termination_reason: v1::TerminationReason::ImagePullFailed as i32,
            message: format!("image app:1 not found:\n{}", "x".repeat(5000)),
            ..Default::default()
        };
        let status = BackendStatus::from_proto(&wire, now).unwrap();
        assert!(status.message.len() <= crate::domain::STATUS_MESSAGE_MAX, "{}", status.message.len());
        assert!(status.message.starts_with("image app:1 not found: xxx"), "{}", status.message);
        assert_eq!(v1::BackendStatus::from(&status).message, status.message);
        let json = serde_json::json!({"state": "TERMINATED", "time": now, "termination_kind": null,
            "termination_reason": "LOST", "exit_code": null});
        let stored: BackendStatus = serde_json::from_value(json).expect("a status stored before messages reads");
        assert_eq!(stored.message, "");
    }

    #[test]
    fn key_displays_namespace_name_and_tag() {
        let key = BackendKey { namespace: "docs".into(), name: "doc-1".into(), tag: "v2".into() };
        assert_eq!(key.to_string(), "docs/doc-1@v2");
    }

    #[test]
    fn a_filter_reads_the_same_whatever_order_its_states_came_in() {
        let wire = |states: &[BackendState]| v1::BackendFilter {
            states: states.iter().map(|s| s.to_proto() as i32).collect(),
            cluster: "eu-1".into(),
            ..Default::default()
        };
        let filter = BackendFilter::from_proto(&wire(&[Ready, Loading, Ready])).unwrap();
        assert_eq!(filter, BackendFilter::from_proto(&wire(&[Loading, Ready])).unwrap());
        assert_eq!(filter.states, [Loading, Ready]);
        assert_eq!((filter.cluster.as_deref(), filter.drone_id.as_deref()), (Some("eu-1"), None));
        assert_eq!(BackendFilter::from_proto(&filter.to_proto()), Ok(filter));
        let unknown = v1::BackendFilter { states: vec![Ready.to_proto() as i32, 99], ..Default::default() };
        assert_eq!(BackendFilter::from_proto(&unknown).unwrap_err().0, "filter.states[1]");
        assert!(!BackendFilter::live().states.contains(&Terminated));
    }

    #[test]
    fn key_violations_name_namespace_and_name() {
        let key = BackendKey { namespace: "Docs".into(), name: String::new(), tag: String::new() };
        let fields: Vec<String> = key.violations("key").into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, vec!["key.namespace".to_string(), "key.name".to_string()]);
    }
}
