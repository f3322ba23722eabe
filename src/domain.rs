//! Domain types shared by every component, each next to its protobuf conversion.

mod backend;
mod env;
mod fields;
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
pub use env::{
    BACKEND_ID_VAR, BACKEND_KEY_VAR, BackendEnv, FENCING_TOKEN_VAR, PORT_VAR, RESERVED_ENV, STATIC_TOKEN_VAR,
};
pub use fields::{
    ADDRESS_MAX, DURATION_MAX, ID_MAX, LABEL_KEY_MAX, LABEL_VALUE_MAX, LABELS_MAX, URL_MAX, VERSION_MAX,
    address_problem, duration_in, id_problem, label_violations, url_problem, version_problem,
};
pub use identity::{MAX_CLAIMS, MAX_IDENTITY_VALUE, claim_name_problem, identity_value_problem, identity_violations};
pub use image::{ImageReference, image_problem};
pub use node::{Node, NodeFilter, NodeKind, NodeResources, NodeState, ParseEnumError};
pub use spawn::{
    DEFAULT_BACKEND_PORT, EnvRules, Executable, PullPolicy, ResourceLimits, SpawnConfig, argv_violations, spawn_limits,
};
pub use status_message::{SECRET_MIN_LEN, STATUS_MESSAGE_MAX, spawn_secrets, status_message};
pub use time::{duration_from_proto, duration_to_proto, timestamp_from_proto, timestamp_to_proto};
