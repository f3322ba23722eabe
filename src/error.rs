//! Error details shared by servers and clients: the `ErrorInfo` domain, the stable reason
//! strings, and helpers to build and read `google.rpc` details on a `tonic::Status`.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// `ErrorInfo.domain` of every Hangar error.
pub const ERROR_DOMAIN: &str = "hangar.dev";

/// Stable `ErrorInfo.reason` strings. Clients match on these, never on messages.
pub mod reason {
    pub const NODE_NOT_FOUND: &str = "NODE_NOT_FOUND";
    pub const NODE_NOT_DRONE: &str = "NODE_NOT_DRONE";
    pub const INVALID_PAGE_TOKEN: &str = "INVALID_PAGE_TOKEN";
    pub const PAGE_TOKEN_EXPIRED: &str = "PAGE_TOKEN_EXPIRED";
    pub const REVISION_COMPACTED: &str = "REVISION_COMPACTED";
    pub const WATCH_TOO_SLOW: &str = "WATCH_TOO_SLOW";
    pub const PROTOCOL_VIOLATION: &str = "PROTOCOL_VIOLATION";
    pub const NAME_IN_USE: &str = "NAME_IN_USE";
    pub const BACKEND_NOT_FOUND: &str = "BACKEND_NOT_FOUND";
    pub const KEY_TAG_MISMATCH: &str = "KEY_TAG_MISMATCH";
    pub const NO_DRONE_AVAILABLE: &str = "NO_DRONE_AVAILABLE";
    pub const POOL_FULL: &str = "POOL_FULL";
    pub const TOKEN_NOT_FOUND: &str = "TOKEN_NOT_FOUND";
    pub const SHUTTING_DOWN: &str = "SHUTTING_DOWN";
    pub const STORE_UNAVAILABLE: &str = "STORE_UNAVAILABLE";
    pub const INTERNAL: &str = "INTERNAL";
    pub const PROTOCOL_VERSION_MISMATCH: &str = "PROTOCOL_VERSION_MISMATCH";
    pub const HANDSHAKE_REQUIRED: &str = "HANDSHAKE_REQUIRED";
    pub const IMAGE_NOT_FOUND: &str = "IMAGE_NOT_FOUND";
    pub const IMAGE_PULL_FAILED: &str = "IMAGE_PULL_FAILED";
    pub const RUNTIME_UNAVAILABLE: &str = "RUNTIME_UNAVAILABLE";
    pub const BACKEND_START_FAILED: &str = "BACKEND_START_FAILED";
    pub const BACKEND_STOPPED_WHILE_STARTING: &str = "BACKEND_STOPPED_WHILE_STARTING";
    pub const CAPABILITY_NOT_SUPPORTED: &str = "CAPABILITY_NOT_SUPPORTED";
    pub const PEER_NOT_ALLOWED: &str = "PEER_NOT_ALLOWED";
    /// A node's stream was closed because the node sent no heartbeat for too long.
    pub const HEARTBEAT_TIMEOUT: &str = "HEARTBEAT_TIMEOUT";
    /// A node's stream was closed because the same node attached again on a newer stream.
    pub const STREAM_REPLACED: &str = "STREAM_REPLACED";
    /// A reader of the executor's event stream fell too far behind (metadata `last_sequence`).
    pub const EVENTS_LAGGED: &str = "EVENTS_LAGGED";
    /// A request's arguments were refused; `BadRequest` names each field.
    pub const INVALID_ARGUMENT: &str = "INVALID_ARGUMENT";
    /// A method that needs credentials was called without any (UNAUTHENTICATED).
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    /// The bearer token is unknown, revoked or malformed (UNAUTHENTICATED); never echoed back.
    pub const TOKEN_INVALID: &str = "TOKEN_INVALID";
    /// A verified client certificate whose common name the auth file does not map to a
    /// principal (UNAUTHENTICATED; metadata `common_name`).
    pub const CERTIFICATE_NOT_MAPPED: &str = "CERTIFICATE_NOT_MAPPED";
    /// The caller's role may not call the method (PERMISSION_DENIED; metadata `role`,
    /// `required_role`, `method`).
    pub const ROLE_NOT_ALLOWED: &str = "ROLE_NOT_ALLOWED";
    /// A drone or proxy principal attached under a node name it may not use (PERMISSION_DENIED;
    /// metadata `node`).
    pub const NODE_NOT_ALLOWED: &str = "NODE_NOT_ALLOWED";
    /// The caller sent requests faster than its rate limit allows; retry after `retry_after_ms`
    /// (metadata, and `google.rpc.RetryInfo`).
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    /// The caller has as many calls in flight as it may (metadata `limit`).
    pub const CONCURRENCY_LIMITED: &str = "CONCURRENCY_LIMITED";
    /// The caller has as many watch streams open as it may (metadata `limit`).
    pub const WATCH_LIMIT_REACHED: &str = "WATCH_LIMIT_REACHED";
}

/// `ErrorInfo.metadata` keys: one key per concept, whichever error carries it.
pub mod metadata {
    /// The node an error is about (NODE_NOT_FOUND, NODE_NOT_DRONE): `id`, as the requests that
    /// name a node call it, and as clients have read it from the start.
    pub const NODE_ID: &str = "id";
    /// The backend an error is about, on the controller and on the executor alike.
    pub const BACKEND_ID: &str = "backend_id";
    /// A backend key, `namespace/name`.
    pub const KEY: &str = "key";
    /// The tag of the live backend that holds a key.
    pub const HELD_TAG: &str = "held_tag";
    pub const CLUSTER: &str = "cluster";
    pub const POOL: &str = "pool";
    /// Drones of the cluster and pool by state, and those with no room (NO_DRONE_AVAILABLE,
    /// POOL_FULL): why no drone could take a backend.
    pub const READY: &str = "ready";
    pub const DRAINING: &str = "draining";
    pub const UNHEALTHY: &str = "unhealthy";
    pub const OFFLINE: &str = "offline";
    pub const FULL: &str = "full";
    /// The oldest revision still retained: list again, then watch from there.
    pub const OLDEST_REVISION: &str = "oldest_revision";
    /// The last revision a watch delivered: resume from it.
    pub const LAST_REVISION: &str = "last_revision";
    /// A container image (or, for the process runtime, a program path).
    pub const IMAGE: &str = "image";
    /// What the runtime said, for an error whose message is Hangar's own.
    pub const DETAIL: &str = "detail";
    /// The last sequence number an executor's event stream delivered: resume after it.
    pub const LAST_SEQUENCE: &str = "last_sequence";
    /// The caller's role (ROLE_NOT_ALLOWED).
    pub const ROLE: &str = "role";
    /// The least role that may call the method (ROLE_NOT_ALLOWED).
    pub const REQUIRED_ROLE: &str = "required_role";
    /// The method called, `package.Service/Method`.
    pub const METHOD: &str = "method";
    /// A node's name, where an error is about the name rather than the node's id.
    pub const NODE_NAME: &str = "node";
    /// A client certificate's subject common name.
    pub const COMMON_NAME: &str = "common_name";
    /// How long to wait before retrying, in milliseconds (RATE_LIMITED). Also sent as gRPC
    /// response metadata of the same name, for clients that read no error details.
    pub const RETRY_AFTER_MS: &str = "retry_after_ms";
    /// The limit that was reached (CONCURRENCY_LIMITED, WATCH_LIMIT_REACHED).
    pub const LIMIT: &str = "limit";
}

/// Longest status message, in bytes. A status travels in HTTP/2 trailers, which clients cap (16
/// KiB by default in most gRPC clients, and a client that gets more drops the whole connection);
/// messages, metadata and violations often quote what the caller sent, so each is bounded here,
/// where every status is built, whatever the caller sent.
pub const MESSAGE_MAX: usize = 1024;
/// Longest `ErrorInfo` metadata value.
pub const METADATA_VALUE_MAX: usize = 256;
/// Most field violations one status carries; the last one says how many more there were.
pub const VIOLATIONS_MAX: usize = 12;
/// Longest field path of one field violation.
pub const VIOLATION_FIELD_MAX: usize = 128;
/// Longest description of one field violation.
pub const VIOLATION_DESCRIPTION_MAX: usize = 256;

/// `text` cut on a character boundary to at most `max` bytes, ending in `…` when cut.
pub fn bounded(text: impl Into<String>, max: usize) -> String {
    const CUT: &str = "…";
    let mut text = text.into();
    if text.len() > max {
        let mut end = max.saturating_sub(CUT.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(CUT);
    }
    text
}

/// A status with an `ErrorInfo` (domain [`ERROR_DOMAIN`]) and metadata.
pub fn status_with_reason(code: Code, message: impl Into<String>, reason: &str, metadata: &[(&str, String)]) -> Status {
    let metadata: std::collections::HashMap<String, String> =
        metadata.iter().map(|(k, v)| (k.to_string(), bounded(v.clone(), METADATA_VALUE_MAX))).collect();
    let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(code, bounded(message, MESSAGE_MAX), details)
}

/// A status with an `ErrorInfo` and a `google.rpc.RetryInfo` saying when to try again; the delay
/// is also in the `ErrorInfo` metadata and in the gRPC metadata as [`metadata::RETRY_AFTER_MS`].
pub fn status_with_retry(
    code: Code,
    message: impl Into<String>,
    reason: &str,
    metadata: &[(&str, String)],
    retry_after: std::time::Duration,
) -> Status {
    let retry_ms = retry_after_millis(retry_after);
    let mut error_metadata: std::collections::HashMap<String, String> =
        metadata.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    error_metadata.insert(metadata::RETRY_AFTER_MS.to_string(), retry_ms.to_string());
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, error_metadata);
    details.set_retry_info(Some(retry_after));
    let mut status = Status::with_error_details(code, message, details);
    status.metadata_mut().insert(metadata::RETRY_AFTER_MS, retry_ms.to_string().parse().expect("digits are ASCII"));
    status
}

/// A delay in whole milliseconds, rounded up so that a client waiting that long is never early.
fn retry_after_millis(delay: std::time::Duration) -> u128 {
    delay.as_nanos().div_ceil(1_000_000)
}

/// How long a status asks the caller to wait before retrying (`google.rpc.RetryInfo`, else the
/// `retry_after_ms` metadata), if it says.
pub fn retry_after(status: &Status) -> Option<std::time::Duration> {
    if let Some(delay) = status.get_error_details().retry_info().and_then(|r| r.retry_delay) {
        return Some(delay);
    }
    let millis = status.metadata().get(metadata::RETRY_AFTER_MS)?.to_str().ok()?.parse().ok()?;
    Some(std::time::Duration::from_millis(millis))
}

/// INVALID_ARGUMENT with one `BadRequest` field violation per `(field, description)` and the
/// reason [`reason::INVALID_ARGUMENT`].
pub fn invalid_argument(violations: Vec<(String, String)>) -> Status {
    invalid_argument_with_reason(violations, reason::INVALID_ARGUMENT)
}

/// INVALID_ARGUMENT with field violations and a more specific `ErrorInfo` reason, for cases
/// clients should be able to match without reading the violations (e.g. `INVALID_PAGE_TOKEN`).
pub fn invalid_argument_with_reason(mut violations: Vec<(String, String)>, reason: &str) -> Status {
    if violations.len() > VIOLATIONS_MAX {
        let more = violations.len() - (VIOLATIONS_MAX - 1);
        violations.truncate(VIOLATIONS_MAX - 1);
        violations.push((String::new(), format!("and {more} more problems")));
    }
    let violations: Vec<(String, String)> = violations
        .into_iter()
        .map(|(field, description)| {
            (bounded(field, VIOLATION_FIELD_MAX), bounded(description, VIOLATION_DESCRIPTION_MAX))
        })
        .collect();
    let message =
        violations.iter().map(|(field, description)| format!("{field}: {description}")).collect::<Vec<_>>().join("; ");
    let message = bounded(message, MESSAGE_MAX);
    let violations: Vec<FieldViolation> =
        violations.into_iter().map(|(field, description)| FieldViolation::new(field, description)).collect();
    let mut details = ErrorDetails::with_bad_request(violations);
    details.set_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new());
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// The `ErrorInfo` reason and metadata a status carries, if any.
pub fn error_info(status: &Status) -> Option<(String, std::collections::HashMap<String, String>)> {
    let details = status.get_error_details();
    details.error_info().map(|info| (info.reason.clone(), info.metadata.clone()))
}

/// The field violations an INVALID_ARGUMENT status carries.
pub fn field_violations(status: &Status) -> Vec<(String, String)> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| (v.field.clone(), v.description.clone())).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_and_metadata_survive_the_status() {
        let status =
            status_with_reason(Code::NotFound, "no node nd-1", reason::NODE_NOT_FOUND, &[("id", "nd-1".into())]);
        let (reason, metadata) = error_info(&status).expect("error info");
        assert_eq!(reason, reason::NODE_NOT_FOUND);
        assert_eq!(metadata["id"], "nd-1");
    }

    #[test]
    fn a_retry_delay_travels_as_retry_info_error_metadata_and_grpc_metadata() {
        let delay = std::time::Duration::from_micros(12_300);
        let status = status_with_retry(Code::ResourceExhausted, "slow down", reason::RATE_LIMITED, &[], delay);
        assert_eq!(retry_after(&status), Some(delay));
        let (reason, metadata) = error_info(&status).expect("error info");
        assert_eq!((reason.as_str(), metadata["retry_after_ms"].as_str()), (reason::RATE_LIMITED, "13"));
        assert_eq!(status.metadata().get("retry_after_ms").unwrap(), "13", "rounded up, never early");
        let bare = Status::resource_exhausted("no details");
        assert_eq!(retry_after(&bare), None);
    }

    #[test]
    fn a_status_quoting_huge_input_stays_small_enough_for_any_clients_trailers() {
        let huge = "é".repeat(100_000);
        let violations: Vec<_> = (0..1000).map(|i| (format!("labels[{i}{huge}]"), huge.clone())).collect();
        let status = invalid_argument(violations);
        let details = status.details().len();
        assert!(status.message().len() <= MESSAGE_MAX, "{}", status.message().len());
        // Base64 in the trailers: with the message (percent-encoded, up to three times its size)
        // well under the 16 KiB most clients accept.
        assert!(details <= 6 * 1024, "details of {details} bytes");
        let kept = field_violations(&status);
        assert_eq!(kept.len(), VIOLATIONS_MAX);
        assert_eq!(kept.last().unwrap().1, format!("and {} more problems", 1000 - VIOLATIONS_MAX + 1));
        assert!(kept[0].0.starts_with("labels[0") && kept[0].0.ends_with('…'), "the path is cut, not dropped");

        let status = status_with_reason(Code::NotFound, huge.clone(), reason::NODE_NOT_FOUND, &[("id", huge)]);
        assert!(status.message().len() <= MESSAGE_MAX);
        assert!(error_info(&status).unwrap().1["id"].len() <= METADATA_VALUE_MAX);
    }

    #[test]
    fn field_violations_name_each_field() {
        let status = invalid_argument(vec![("page_size".into(), "must be at most 1000".into())]);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(field_violations(&status), vec![("page_size".to_string(), "must be at most 1000".to_string())]);
        assert_eq!(status.message(), "page_size: must be at most 1000");
    }
}
