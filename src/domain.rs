//! Domain types shared by every component, each next to its protobuf conversion.

mod backend;
mod env;
mod identity;
mod image;
mod node;
mod spawn;
mod status_message;
mod time;

pub use backend::{
    Backend, BackendFilter, BackendKey, BackendState, BackendStatus, TerminationKind, TerminationReason,
    TransitionError, dns_label_problem,
};
pub use env::{BackendEnv, RESERVED_ENV};
pub use identity::{MAX_CLAIMS, MAX_IDENTITY_VALUE, claim_name_problem, identity_value_problem, identity_violations};
pub use image::{ImageReference, image_problem};
pub use node::{Node, NodeFilter, NodeKind, NodeResources, NodeState, ParseEnumError};
pub use spawn::{DEFAULT_BACKEND_PORT, Executable, PullPolicy, ResourceLimits, SpawnConfig, spawn_limits};
pub use status_message::{SECRET_MIN_LEN, STATUS_MESSAGE_MAX, spawn_secrets, status_message};
pub use time::{duration_from_proto, duration_to_proto, timestamp_from_proto, timestamp_to_proto};
