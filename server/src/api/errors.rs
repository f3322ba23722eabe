//! The API's errors and their one mapping to gRPC status codes and `ErrorInfo` reasons.
//!
//! Every status the controller's services send is built here, from an [`ApiError`]: each
//! variant has one code, one stable reason (`hangar::error::reason`) and its metadata under the
//! keys of `hangar::error::metadata`. INVALID_ARGUMENT carries `BadRequest` field violations,
//! which are what clients read, and a reason too where a client matches the case without
//! reading fields (INVALID_PAGE_TOKEN).

use crate::store::StoreError;
use hangar::error::{invalid_argument, invalid_argument_with_reason, metadata, reason, status_with_reason};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request")]
    InvalidArgument(Vec<(String, String)>),
    #[error("no node with id {0:?}")]
    NodeNotFound(String),
    #[error("node {0:?} is a proxy; only drones can be drained")]
    NodeNotDrone(String),
    #[error("invalid page token: {0}")]
    InvalidPageToken(String),
    #[error(
        "the listing this page token belongs to has expired (revision {requested} was compacted; oldest retained revision is {oldest}); list again from the first page"
    )]
    PageTokenExpired { requested: u64, oldest: u64 },
    #[error("revision {requested} has been compacted; the oldest retained revision is {oldest}")]
    RevisionCompacted { requested: u64, oldest: u64 },
    #[error("no backend with id {0:?}")]
    BackendNotFound(String),
    #[error("no live backend holds key {0} and the request has no spawn_config to start one")]
    NoLiveBackend(String),
    #[error("key {key} is held by a live backend with tag {held_tag:?}")]
    KeyTagMismatch { key: String, held_tag: String },
    #[error("no drone is ready in cluster {cluster:?}, pool {pool:?}")]
    NoDroneAvailable { cluster: String, pool: String },
    #[error("every drone in cluster {cluster:?}, pool {pool:?} is at capacity")]
    PoolFull { cluster: String, pool: String },
    #[error("{0}")]
    Protocol(String),
    #[error("unknown or expired connection token")]
    TokenNotFound,
    #[error("the controller is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        ApiError::InvalidArgument(vec![(field.into(), description.into())])
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Status {
        use metadata::{BACKEND_ID, CLUSTER, HELD_TAG, KEY, NODE_ID, OLDEST_REVISION, POOL};
        let message = err.to_string();
        match err {
            ApiError::InvalidArgument(violations) => invalid_argument(violations),
            ApiError::NodeNotFound(id) => {
                status_with_reason(Code::NotFound, message, reason::NODE_NOT_FOUND, &[(NODE_ID, id)])
            }
            ApiError::NodeNotDrone(id) => {
                status_with_reason(Code::FailedPrecondition, message, reason::NODE_NOT_DRONE, &[(NODE_ID, id)])
            }
            ApiError::InvalidPageToken(detail) => {
                invalid_argument_with_reason(vec![("page_token".into(), detail)], Some(reason::INVALID_PAGE_TOKEN))
            }
            ApiError::PageTokenExpired { oldest, .. } => status_with_reason(
                Code::OutOfRange,
                message,
                reason::PAGE_TOKEN_EXPIRED,
                &[(OLDEST_REVISION, oldest.to_string())],
            ),
            ApiError::RevisionCompacted { oldest, .. } => status_with_reason(
                Code::OutOfRange,
                message,
                reason::REVISION_COMPACTED,
                &[(OLDEST_REVISION, oldest.to_string())],
            ),
            ApiError::BackendNotFound(id) => {
                status_with_reason(Code::NotFound, message, reason::BACKEND_NOT_FOUND, &[(BACKEND_ID, id)])
            }
            ApiError::NoLiveBackend(key) => {
                status_with_reason(Code::NotFound, message, reason::BACKEND_NOT_FOUND, &[(KEY, key)])
            }
            ApiError::KeyTagMismatch { key, held_tag } => status_with_reason(
                Code::FailedPrecondition,
                message,
                reason::KEY_TAG_MISMATCH,
                &[(KEY, key), (HELD_TAG, held_tag)],
            ),
            ApiError::NoDroneAvailable { cluster, pool } => status_with_reason(
                Code::Unavailable,
                message,
                reason::NO_DRONE_AVAILABLE,
                &[(CLUSTER, cluster), (POOL, pool)],
            ),
            ApiError::PoolFull { cluster, pool } => status_with_reason(
                Code::ResourceExhausted,
                message,
                reason::POOL_FULL,
                &[(CLUSTER, cluster), (POOL, pool)],
            ),
            ApiError::Protocol(_) => {
                status_with_reason(Code::FailedPrecondition, message, reason::PROTOCOL_VIOLATION, &[])
            }
            ApiError::TokenNotFound => status_with_reason(Code::NotFound, message, reason::TOKEN_NOT_FOUND, &[]),
            ApiError::ShuttingDown => status_with_reason(Code::Unavailable, message, reason::SHUTTING_DOWN, &[]),
            ApiError::Store(StoreError::Compacted { requested, oldest }) => {
                ApiError::RevisionCompacted { requested, oldest }.into()
            }
            ApiError::Store(StoreError::FutureRevision { requested, current }) => invalid_argument(vec![(
                "revision".into(),
                format!("revision {requested} has not been reached; the current revision is {current}"),
            )]),
            ApiError::Store(err @ StoreError::Unavailable(_)) => {
                tracing::warn!(error = %err, "store unavailable");
                status_with_reason(Code::Unavailable, "the store is unavailable; retry", reason::STORE_UNAVAILABLE, &[])
            }
            ApiError::Store(err @ StoreError::Corrupt(_)) => {
                // Details go to the log, not to the client.
                tracing::error!(error = %err, "store corrupt");
                status_with_reason(Code::Internal, "internal error", reason::INTERNAL, &[])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar::error::error_info;

    fn reason_of(err: ApiError) -> (Code, String, std::collections::HashMap<String, String>) {
        let status = Status::from(err);
        let (reason, meta) = error_info(&status).unwrap_or_else(|| panic!("no ErrorInfo on {status:?}"));
        (status.code(), reason, meta)
    }

    #[test]
    fn backends_and_nodes_are_named_under_one_key_each() {
        let (_, _, meta) = reason_of(ApiError::BackendNotFound("bk-1".into()));
        assert_eq!(meta.get(metadata::BACKEND_ID).map(String::as_str), Some("bk-1"));
        let (_, _, meta) = reason_of(ApiError::NodeNotFound("nd-1".into()));
        assert_eq!(meta.get(metadata::NODE_ID).map(String::as_str), Some("nd-1"));
    }
}
