//! Domain types shared by every component, each next to its protobuf conversion.

mod backend;
mod node;
mod time;

pub use backend::{
    Backend, BackendKey, BackendState, BackendStatus, Executable, PullPolicy, RESERVED_ENV, ResourceLimits,
    SpawnConfig, TerminationKind, TerminationReason, TransitionError, dns_label_problem, spawn_limits,
};
pub use node::{Node, NodeFilter, NodeKind, NodeResources, NodeState, ParseEnumError};
pub use time::{duration_from_proto, duration_to_proto, timestamp_from_proto, timestamp_to_proto};
