//! The API's errors and their one mapping to gRPC status codes and `ErrorInfo` reasons.
//!
//! Every status the controller's services send is built here, from an [`ApiError`]: each
//! variant has one code, one stable reason (`hangar::error::reason`) and its metadata under the
//! keys of `hangar::error::metadata`. INVALID_ARGUMENT carries `BadRequest` field violations,
//! which are what clients read, and a reason too where a client matches the case without
//! reading fields (INVALID_PAGE_TOKEN).

use crate::auth::Role;
use crate::controller::CloseCause;
use crate::store::{DroneCensus, Revision, StoreError};
use hangar::error::{
    invalid_argument, invalid_argument_with_reason, metadata, reason, status_with_reason, status_with_retry,
};
use std::time::Duration;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request")]
    InvalidArgument(Vec<(String, String)>),
    #[error("no node with id {0:?}")]
    NodeNotFound(String),
    #[error("node {0:?} is a proxy; only drones can be drained and undrained")]
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
    /// No READY drone in the pool; the census says what the others are doing.
    #[error("no drone is ready in cluster {cluster:?}, pool {pool:?}: {}", census_text(.census, None))]
    NoDroneAvailable { cluster: String, pool: String, census: DroneCensus },
    /// Every READY drone of the pool (`full` of them) was at capacity.
    #[error(
        "every ready drone in cluster {cluster:?}, pool {pool:?} is at capacity: {}",
        census_text(.census, Some(*.full))
    )]
    PoolFull { cluster: String, pool: String, full: u32, census: DroneCensus },
    #[error("{0}")]
    Protocol(String),
    #[error("unknown or expired connection token")]
    TokenNotFound,
    /// The controller is shutting down. A watch names the last revision it delivered, to resume
    /// from on another controller.
    #[error("the controller is shutting down{}", resume_hint(.last_revision))]
    ShuttingDown { last_revision: Option<Revision> },
    /// A watch fell behind further than the hub's ring reaches.
    #[error("this watch fell too far behind and was cut off; resume from revision {last_revision}")]
    WatchTooSlow { last_revision: Revision },
    /// The controller closed a node's stream: no heartbeat for `after`.
    #[error("no heartbeat for {after:?}: the controller closed this stream; attach again")]
    HeartbeatTimeout { after: Duration },
    /// The controller closed a node's stream: the same node attached again on a newer one, or the
    /// store no longer records the node as attached to this controller.
    #[error(
        "the controller closed this stream: the same node attached again on a newer stream, or the store no longer records it as attached here; attach again"
    )]
    StreamReplaced,
    /// A method that needs credentials, called without any.
    #[error(
        "{method} needs credentials: a bearer token (`authorization: Bearer …`) or a client certificate the controller knows"
    )]
    Unauthenticated { method: String },
    /// A bearer token the auth file does not (or no longer) name, or a malformed header. The
    /// token itself is never repeated.
    #[error("the bearer token is not valid: unknown, revoked, or not sent as `authorization: Bearer <token>`")]
    TokenInvalid,
    /// A verified client certificate whose common name the auth file maps to no principal.
    #[error("no principal in the controller's auth file has the client certificate's common name {common_name:?}")]
    CertificateNotMapped { common_name: String },
    /// The caller is known, but its role does not reach the method.
    #[error("role {role} may not call {method}; it needs role {required} (or one that includes it)")]
    RoleNotAllowed { role: Role, required: Role, method: String },
    /// A drone or proxy principal asked to attach under a node name it may not use.
    #[error("this principal may not attach as node {node:?}")]
    NodeNotAllowed { node: String },
    /// The caller's token bucket is empty (`crate::limits`).
    #[error("rate limit exceeded: at most {rate} requests per second with bursts of {burst}; retry in {retry_after:?}")]
    RateLimited { retry_after: Duration, rate: u32, burst: u32 },
    /// The caller already has `limit` unary calls in flight.
    #[error("at most {limit} calls may be in flight at once per caller; retry when one has finished")]
    ConcurrencyLimited { limit: u32 },
    /// An attach storm past what the controller lets wait (`NodeRegistry::admit`).
    #[error("{limit} node attaches are already waiting to be admitted; retry in {retry_after:?}")]
    AttachQueueFull { limit: usize, retry_after: Duration },
    /// The caller already has `limit` watch streams open.
    #[error("at most {limit} watch streams may be open at once per caller; close one first")]
    WatchLimitReached { limit: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        ApiError::InvalidArgument(vec![(field.into(), description.into())])
    }

    /// The controller is shutting down (for calls with no revision to resume from).
    pub fn shutting_down() -> Self {
        ApiError::ShuttingDown { last_revision: None }
    }
}

fn resume_hint(last_revision: &Option<Revision>) -> String {
    match last_revision {
        Some(revision) => format!("; resume from revision {revision} on another controller"),
        None => String::new(),
    }
}

/// `1 draining, 0 unhealthy, 0 offline` (after `N full` for a full pool), and how to undo a
/// drain when one is the reason.
fn census_text(census: &DroneCensus, full: Option<u32>) -> String {
    let DroneCensus { ready, draining, unhealthy, offline } = *census;
    if full.is_none() && ready + draining + unhealthy + offline == 0 {
        return "no drone has registered there".to_string();
    }
    let mut parts = Vec::new();
    match full {
        Some(full) => parts.push(format!("{full} full")),
        // The census is read after the placement failed: a drone may have become ready since.
        None if ready > 0 => parts.push(format!("{ready} ready since")),
        None => {}
    }
    parts.push(format!("{draining} draining"));
    parts.push(format!("{unhealthy} unhealthy"));
    parts.push(format!("{offline} offline"));
    let mut text = parts.join(", ");
    if draining > 0 {
        text.push_str("; a draining drone takes backends again after UndrainNode (`hangar nodes undrain NODE_ID`)");
    }
    text
}

/// The census as `ErrorInfo` metadata, next to the cluster and pool.
fn census_metadata(cluster: String, pool: String, census: &DroneCensus, full: u32) -> Vec<(&'static str, String)> {
    use metadata::{CLUSTER, DRAINING, FULL, OFFLINE, POOL, READY, UNHEALTHY};
    vec![
        (CLUSTER, cluster),
        (POOL, pool),
        (READY, census.ready.to_string()),
        (DRAINING, census.draining.to_string()),
        (UNHEALTHY, census.unhealthy.to_string()),
        (OFFLINE, census.offline.to_string()),
        (FULL, full.to_string()),
    ]
}

impl From<crate::controller::AttachQueueFull> for ApiError {
    fn from(full: crate::controller::AttachQueueFull) -> Self {
        ApiError::AttachQueueFull { limit: full.limit, retry_after: full.retry_after }
    }
}

impl From<CloseCause> for ApiError {
    fn from(cause: CloseCause) -> Self {
        match cause {
            CloseCause::Silent { after } => ApiError::HeartbeatTimeout { after },
            CloseCause::Replaced | CloseCause::NotHeld => ApiError::StreamReplaced,
            CloseCause::ShuttingDown => ApiError::shutting_down(),
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Status {
        use metadata::{BACKEND_ID, HELD_TAG, KEY, LAST_REVISION, NODE_ID, OLDEST_REVISION};
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
                invalid_argument_with_reason(vec![("page_token".into(), detail)], reason::INVALID_PAGE_TOKEN)
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
            ApiError::NoDroneAvailable { cluster, pool, census } => status_with_reason(
                Code::Unavailable,
                message,
                reason::NO_DRONE_AVAILABLE,
                &census_metadata(cluster, pool, &census, 0),
            ),
            ApiError::PoolFull { cluster, pool, full, census } => status_with_reason(
                Code::ResourceExhausted,
                message,
                reason::POOL_FULL,
                &census_metadata(cluster, pool, &census, full),
            ),
            ApiError::Protocol(_) => {
                status_with_reason(Code::FailedPrecondition, message, reason::PROTOCOL_VIOLATION, &[])
            }
            ApiError::TokenNotFound => status_with_reason(Code::NotFound, message, reason::TOKEN_NOT_FOUND, &[]),
            ApiError::ShuttingDown { last_revision } => {
                let resume: Vec<_> = last_revision.map(|r| (LAST_REVISION, r.to_string())).into_iter().collect();
                status_with_reason(Code::Unavailable, message, reason::SHUTTING_DOWN, &resume)
            }
            ApiError::WatchTooSlow { last_revision } => status_with_reason(
                Code::ResourceExhausted,
                message,
                reason::WATCH_TOO_SLOW,
                &[(LAST_REVISION, last_revision.to_string())],
            ),
            ApiError::HeartbeatTimeout { .. } => {
                status_with_reason(Code::Unavailable, message, reason::HEARTBEAT_TIMEOUT, &[])
            }
            ApiError::StreamReplaced => status_with_reason(Code::Unavailable, message, reason::STREAM_REPLACED, &[]),
            ApiError::Unauthenticated { method } => status_with_reason(
                Code::Unauthenticated,
                message,
                reason::UNAUTHENTICATED,
                &[(metadata::METHOD, method)],
            ),
            ApiError::TokenInvalid => status_with_reason(Code::Unauthenticated, message, reason::TOKEN_INVALID, &[]),
            ApiError::CertificateNotMapped { common_name } => status_with_reason(
                Code::Unauthenticated,
                message,
                reason::CERTIFICATE_NOT_MAPPED,
                &[(metadata::COMMON_NAME, common_name)],
            ),
            ApiError::RoleNotAllowed { role, required, method } => status_with_reason(
                Code::PermissionDenied,
                message,
                reason::ROLE_NOT_ALLOWED,
                &[
                    (metadata::ROLE, role.to_string()),
                    (metadata::REQUIRED_ROLE, required.to_string()),
                    (metadata::METHOD, method),
                ],
            ),
            ApiError::NodeNotAllowed { node } => status_with_reason(
                Code::PermissionDenied,
                message,
                reason::NODE_NOT_ALLOWED,
                &[(metadata::NODE_NAME, node)],
            ),
            ApiError::RateLimited { retry_after, .. } => {
                status_with_retry(Code::ResourceExhausted, message, reason::RATE_LIMITED, &[], retry_after)
            }
            ApiError::AttachQueueFull { limit, retry_after } => status_with_retry(
                Code::ResourceExhausted,
                message,
                reason::CONCURRENCY_LIMITED,
                &[(metadata::LIMIT, limit.to_string())],
                retry_after,
            ),
            ApiError::ConcurrencyLimited { limit } => status_with_reason(
                Code::ResourceExhausted,
                message,
                reason::CONCURRENCY_LIMITED,
                &[(metadata::LIMIT, limit.to_string())],
            ),
            ApiError::WatchLimitReached { limit } => status_with_reason(
                Code::ResourceExhausted,
                message,
                reason::WATCH_LIMIT_REACHED,
                &[(metadata::LIMIT, limit.to_string())],
            ),
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
    use hangar::error::{error_info, field_violations};

    fn reason_of(err: ApiError) -> (Code, String, std::collections::HashMap<String, String>) {
        let status = Status::from(err);
        let (reason, meta) = error_info(&status).unwrap_or_else(|| panic!("no ErrorInfo on {status:?}"));
        (status.code(), reason, meta)
    }

    #[test]
    fn every_error_a_client_can_see_has_a_code_and_a_reason() {
        let cases = [
            (ApiError::NodeNotFound("nd-1".into()), Code::NotFound, reason::NODE_NOT_FOUND),
            (ApiError::NodeNotDrone("nd-1".into()), Code::FailedPrecondition, reason::NODE_NOT_DRONE),
            (ApiError::InvalidPageToken("malformed".into()), Code::InvalidArgument, reason::INVALID_PAGE_TOKEN),
            (ApiError::PageTokenExpired { requested: 1, oldest: 5 }, Code::OutOfRange, reason::PAGE_TOKEN_EXPIRED),
            (ApiError::RevisionCompacted { requested: 1, oldest: 5 }, Code::OutOfRange, reason::REVISION_COMPACTED),
            (ApiError::BackendNotFound("bk-1".into()), Code::NotFound, reason::BACKEND_NOT_FOUND),
            (ApiError::NoLiveBackend("ns/name".into()), Code::NotFound, reason::BACKEND_NOT_FOUND),
            (
                ApiError::KeyTagMismatch { key: "ns/name".into(), held_tag: "v1".into() },
                Code::FailedPrecondition,
                reason::KEY_TAG_MISMATCH,
            ),
            (
                ApiError::NoDroneAvailable { cluster: "c".into(), pool: "p".into(), census: DroneCensus::default() },
                Code::Unavailable,
                reason::NO_DRONE_AVAILABLE,
            ),
            (
                ApiError::PoolFull { cluster: "c".into(), pool: "p".into(), full: 1, census: DroneCensus::default() },
                Code::ResourceExhausted,
                reason::POOL_FULL,
            ),
            (ApiError::Protocol("empty message".into()), Code::FailedPrecondition, reason::PROTOCOL_VIOLATION),
            (ApiError::TokenNotFound, Code::NotFound, reason::TOKEN_NOT_FOUND),
            (ApiError::shutting_down(), Code::Unavailable, reason::SHUTTING_DOWN),
            (ApiError::ShuttingDown { last_revision: Some(7) }, Code::Unavailable, reason::SHUTTING_DOWN),
            (ApiError::WatchTooSlow { last_revision: 7 }, Code::ResourceExhausted, reason::WATCH_TOO_SLOW),
            (
                ApiError::HeartbeatTimeout { after: Duration::from_secs(30) },
                Code::Unavailable,
                reason::HEARTBEAT_TIMEOUT,
            ),
            (ApiError::StreamReplaced, Code::Unavailable, reason::STREAM_REPLACED),
            (ApiError::Unauthenticated { method: "m".into() }, Code::Unauthenticated, reason::UNAUTHENTICATED),
            (ApiError::TokenInvalid, Code::Unauthenticated, reason::TOKEN_INVALID),
            (
                ApiError::CertificateNotMapped { common_name: "cn".into() },
                Code::Unauthenticated,
                reason::CERTIFICATE_NOT_MAPPED,
            ),
            (
                ApiError::RoleNotAllowed { role: Role::Reader, required: Role::Client, method: "m".into() },
                Code::PermissionDenied,
                reason::ROLE_NOT_ALLOWED,
            ),
            (ApiError::NodeNotAllowed { node: "drone-b".into() }, Code::PermissionDenied, reason::NODE_NOT_ALLOWED),
            (
                ApiError::RateLimited { retry_after: Duration::from_millis(10), rate: 1, burst: 1 },
                Code::ResourceExhausted,
                reason::RATE_LIMITED,
            ),
            (ApiError::ConcurrencyLimited { limit: 64 }, Code::ResourceExhausted, reason::CONCURRENCY_LIMITED),
            (ApiError::WatchLimitReached { limit: 256 }, Code::ResourceExhausted, reason::WATCH_LIMIT_REACHED),
            (
                ApiError::Store(StoreError::Compacted { requested: 1, oldest: 5 }),
                Code::OutOfRange,
                reason::REVISION_COMPACTED,
            ),
            (ApiError::Store(StoreError::Unavailable("down".into())), Code::Unavailable, reason::STORE_UNAVAILABLE),
            (ApiError::Store(StoreError::Corrupt("bad row".into())), Code::Internal, reason::INTERNAL),
        ];
        for (err, code, reason) in cases {
            let described = format!("{err:?}");
            let (got_code, got_reason, _) = reason_of(err);
            assert_eq!((got_code, got_reason.as_str()), (code, reason), "{described}");
        }
    }

    #[test]
    fn invalid_arguments_name_their_fields() {
        let status = Status::from(ApiError::invalid("page_size", "must be at most 1000"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(field_violations(&status), vec![("page_size".to_string(), "must be at most 1000".to_string())]);
        let status = Status::from(ApiError::Store(StoreError::FutureRevision { requested: 9, current: 3 }));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(field_violations(&status)[0].0, "revision");
    }

    #[test]
    fn a_shutdown_names_the_revision_to_resume_from_only_when_there_is_one() {
        let (_, _, meta) = reason_of(ApiError::ShuttingDown { last_revision: Some(7) });
        assert_eq!(meta[metadata::LAST_REVISION], "7");
        let (_, _, meta) = reason_of(ApiError::shutting_down());
        assert!(meta.is_empty(), "{meta:?}");
    }

    #[test]
    fn backends_and_nodes_are_named_under_one_key_each() {
        let (_, _, meta) = reason_of(ApiError::BackendNotFound("bk-1".into()));
        assert_eq!(meta.get(metadata::BACKEND_ID).map(String::as_str), Some("bk-1"));
        let (_, _, meta) = reason_of(ApiError::NodeNotFound("nd-1".into()));
        assert_eq!(meta.get(metadata::NODE_ID).map(String::as_str), Some("nd-1"));
        let (_, _, meta) = reason_of(ApiError::WatchTooSlow { last_revision: 7 });
        assert_eq!(meta.get(metadata::LAST_REVISION).map(String::as_str), Some("7"));
    }

    #[test]
    fn a_role_not_allowed_names_the_role_needed_and_a_node_not_allowed_names_only_that_node() {
        let err = ApiError::RoleNotAllowed {
            role: Role::Reader,
            required: Role::Operator,
            method: "hangar.v1.NodeService/DrainNode".into(),
        };
        let (_, _, meta) = reason_of(err);
        assert_eq!(meta[metadata::ROLE], "reader");
        assert_eq!(meta[metadata::REQUIRED_ROLE], "operator");
        assert_eq!(meta[metadata::METHOD], "hangar.v1.NodeService/DrainNode");
        let status = Status::from(ApiError::NodeNotAllowed { node: "drone-b".into() });
        assert_eq!(status.message(), "this principal may not attach as node \"drone-b\"");
        let (_, _, meta) = reason_of(ApiError::NodeNotAllowed { node: "drone-b".into() });
        assert_eq!(meta, [("node".to_string(), "drone-b".to_string())].into_iter().collect());
    }

    #[test]
    fn a_rate_limited_call_says_when_to_retry_and_the_other_limits_name_theirs() {
        let status =
            Status::from(ApiError::RateLimited { retry_after: Duration::from_millis(250), rate: 100, burst: 200 });
        assert_eq!(hangar::error::retry_after(&status), Some(Duration::from_millis(250)));
        assert_eq!(status.metadata().get(metadata::RETRY_AFTER_MS).unwrap(), "250");
        assert!(status.message().contains("100 requests per second"), "{}", status.message());
        let (_, _, meta) = reason_of(ApiError::WatchLimitReached { limit: 3 });
        assert_eq!(meta[metadata::LIMIT], "3");
        let (_, _, meta) = reason_of(ApiError::ConcurrencyLimited { limit: 2 });
        assert_eq!(meta[metadata::LIMIT], "2");
    }

    #[test]
    fn no_drone_available_counts_the_drones_that_are_not_ready_and_says_how_to_undo_a_drain() {
        let census = DroneCensus { ready: 0, draining: 1, unhealthy: 2, offline: 3 };
        let status = Status::from(ApiError::NoDroneAvailable { cluster: "default".into(), pool: "gpu".into(), census });
        assert_eq!(
            status.message(),
            "no drone is ready in cluster \"default\", pool \"gpu\": 1 draining, 2 unhealthy, 3 offline; a \
             draining drone takes backends again after UndrainNode (`hangar nodes undrain NODE_ID`)"
        );
        let (_, _, meta) =
            reason_of(ApiError::NoDroneAvailable { cluster: "default".into(), pool: "gpu".into(), census });
        let expected = [
            ("cluster", "default"),
            ("pool", "gpu"),
            ("ready", "0"),
            ("draining", "1"),
            ("unhealthy", "2"),
            ("offline", "3"),
            ("full", "0"),
        ];
        assert_eq!(meta, expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    }

    #[test]
    fn without_draining_drones_no_undrain_is_suggested() {
        let census = DroneCensus { unhealthy: 1, ..DroneCensus::default() };
        let err = ApiError::NoDroneAvailable { cluster: "c".into(), pool: "p".into(), census };
        assert_eq!(
            err.to_string(),
            "no drone is ready in cluster \"c\", pool \"p\": 0 draining, 1 unhealthy, 0 offline"
        );
        let err = ApiError::NoDroneAvailable { cluster: "c".into(), pool: "p".into(), census: DroneCensus::default() };
        assert_eq!(err.to_string(), "no drone is ready in cluster \"c\", pool \"p\": no drone has registered there");
    }

    #[test]
    fn a_full_pool_counts_the_full_drones_and_the_draining_ones() {
        let census = DroneCensus { ready: 2, draining: 1, ..DroneCensus::default() };
        let err = ApiError::PoolFull { cluster: "c".into(), pool: "p".into(), full: 2, census };
        assert!(
            err.to_string().starts_with(
                "every ready drone in cluster \"c\", pool \"p\" is at capacity: 2 full, 1 draining, 0 unhealthy, \
                 0 offline; a draining drone takes backends again after UndrainNode"
            ),
            "{err}"
        );
        let (_, _, meta) = reason_of(err);
        assert_eq!((meta["full"].as_str(), meta["draining"].as_str()), ("2", "1"));
    }

    #[test]
    fn each_close_cause_is_its_own_error() {
        let after = Duration::from_secs(30);
        assert!(
            matches!(ApiError::from(CloseCause::Silent { after }), ApiError::HeartbeatTimeout { after: a } if a == after)
        );
        assert!(matches!(ApiError::from(CloseCause::Replaced), ApiError::StreamReplaced));
        assert!(matches!(ApiError::from(CloseCause::ShuttingDown), ApiError::ShuttingDown { last_revision: None }));
    }
}
