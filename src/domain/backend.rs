//! Backends: the state machine every component agrees on.

use super::node::{ParseEnumError, string_enum};
use crate::v1;
use serde::{Deserialize, Serialize};
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
}
