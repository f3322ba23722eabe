//! The one error type of every runtime, and its mapping to and from gRPC status codes and
//! `ErrorInfo` reasons — in both directions, here and nowhere else. Every status the executor
//! sends carries a reason, so the drone (or any other client of the socket) reads back the same
//! error it would have got from an in-process runtime.

use hangar::error::{error_info, field_violations, invalid_argument, metadata, reason, status_with_reason};
use tonic::{Code, Status};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("backend {0} not found")]
    BackendNotFound(String),
    #[error("image {image} not found: {message}")]
    ImageNotFound { image: String, message: String },
    #[error("pulling image {image} failed: {message}")]
    ImagePullFailed { image: String, message: String },
    #[error("invalid backend spec: {field}: {message}")]
    InvalidSpec { field: String, message: String },
    #[error("backend {backend_id} failed to start: {message}")]
    StartFailed { backend_id: String, message: String },
    #[error("backend {0} was stopped while it was starting")]
    StoppedWhileStarting(String),
    #[error("{0}")]
    Unsupported(String),
    /// The reader of an event stream fell further behind than the buffer allows; it resumes
    /// knowing the last sequence it saw, instead of silently missing events.
    #[error("event stream fell behind; last sequence delivered was {last_sequence}")]
    EventsLagged { last_sequence: u64 },
    /// The runtime (Docker engine, or the executor behind a socket) cannot be reached.
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    /// The executor refused the handshake: incompatible protocol versions.
    #[error("protocol version mismatch: {0}")]
    VersionMismatch(String),
    /// The executor was restarted or the connection replaced and wants a handshake first.
    #[error("handshake required: {0}")]
    HandshakeRequired(String),
    /// The executor refuses this peer (uid not allowed).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Anything else. The message stays in the executor's log; clients see a generic text.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RuntimeError {
    pub fn invalid_spec(field: &str, message: impl Into<String>) -> Self {
        RuntimeError::InvalidSpec { field: field.into(), message: message.into() }
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        RuntimeError::Internal(message.to_string())
    }

    /// The gRPC code this error travels as.
    pub fn code(&self) -> Code {
        match self {
            RuntimeError::BackendNotFound(_) | RuntimeError::ImageNotFound { .. } => Code::NotFound,
            RuntimeError::ImagePullFailed { .. } | RuntimeError::Unavailable(_) => Code::Unavailable,
            RuntimeError::InvalidSpec { .. } => Code::InvalidArgument,
            RuntimeError::StartFailed { .. }
            | RuntimeError::VersionMismatch(_)
            | RuntimeError::HandshakeRequired(_) => Code::FailedPrecondition,
            RuntimeError::StoppedWhileStarting(_) => Code::Aborted,
            RuntimeError::Unsupported(_) => Code::Unimplemented,
            RuntimeError::EventsLagged { .. } => Code::ResourceExhausted,
            RuntimeError::PermissionDenied(_) => Code::PermissionDenied,
            RuntimeError::Internal(_) => Code::Internal,
        }
    }

    /// The status sent to the client.
    pub fn to_status(&self) -> Status {
        let code = self.code();
        match self {
            RuntimeError::BackendNotFound(id) => status_with_reason(
                code,
                self.to_string(),
                reason::BACKEND_NOT_FOUND,
                &[(metadata::BACKEND_ID, id.clone())],
            ),
            // `detail` carries the bare message, so the client rebuilds the same error.
            RuntimeError::ImageNotFound { image, message } => status_with_reason(
                code,
                self.to_string(),
                reason::IMAGE_NOT_FOUND,
                &[(metadata::IMAGE, image.clone()), (metadata::DETAIL, message.clone())],
            ),
            RuntimeError::ImagePullFailed { image, message } => status_with_reason(
                code,
                self.to_string(),
                reason::IMAGE_PULL_FAILED,
                &[(metadata::IMAGE, image.clone()), (metadata::DETAIL, message.clone())],
            ),
            RuntimeError::InvalidSpec { field, message } => invalid_argument(vec![(field.clone(), message.clone())]),
            RuntimeError::StartFailed { backend_id, message } => status_with_reason(
                code,
                self.to_string(),
                reason::BACKEND_START_FAILED,
                &[(metadata::BACKEND_ID, backend_id.clone()), (metadata::DETAIL, message.clone())],
            ),
            RuntimeError::StoppedWhileStarting(id) => status_with_reason(
                code,
                self.to_string(),
                reason::BACKEND_STOPPED_WHILE_STARTING,
                &[(metadata::BACKEND_ID, id.clone())],
            ),
            RuntimeError::Unsupported(_) => {
                status_with_reason(code, self.to_string(), reason::CAPABILITY_NOT_SUPPORTED, &[])
            }
            RuntimeError::EventsLagged { last_sequence } => status_with_reason(
                code,
                self.to_string(),
                reason::EVENTS_LAGGED,
                &[(metadata::LAST_SEQUENCE, last_sequence.to_string())],
            ),
            RuntimeError::Unavailable(_) => {
                status_with_reason(code, self.to_string(), reason::RUNTIME_UNAVAILABLE, &[])
            }
            RuntimeError::VersionMismatch(_) => {
                status_with_reason(code, self.to_string(), reason::PROTOCOL_VERSION_MISMATCH, &[])
            }
            RuntimeError::HandshakeRequired(_) => {
                status_with_reason(code, self.to_string(), reason::HANDSHAKE_REQUIRED, &[])
            }
            RuntimeError::PermissionDenied(_) => {
                status_with_reason(code, self.to_string(), reason::PEER_NOT_ALLOWED, &[])
            }
            RuntimeError::Internal(detail) => {
                tracing::error!(%detail, "internal runtime error");
                status_with_reason(code, "internal error in the executor", reason::INTERNAL, &[])
            }
        }
    }

    /// Reads back an error the executor sent. Statuses without a known reason (e.g. transport
    /// failures) map by code.
    pub fn from_status(status: &Status) -> Self {
        let message = status.message().to_string();
        let (reason, metadata) = error_info(status).unwrap_or_default();
        let meta = |key: &str| metadata.get(key).cloned().unwrap_or_default();
        let detail = metadata.get(metadata::DETAIL).cloned().unwrap_or_else(|| message.clone());
        match reason.as_str() {
            reason::BACKEND_NOT_FOUND => RuntimeError::BackendNotFound(meta(metadata::BACKEND_ID)),
            reason::IMAGE_NOT_FOUND => RuntimeError::ImageNotFound { image: meta(metadata::IMAGE), message: detail },
            reason::IMAGE_PULL_FAILED => {
                RuntimeError::ImagePullFailed { image: meta(metadata::IMAGE), message: detail }
            }
            reason::BACKEND_START_FAILED => {
                RuntimeError::StartFailed { backend_id: meta(metadata::BACKEND_ID), message: detail }
            }
            reason::BACKEND_STOPPED_WHILE_STARTING => RuntimeError::StoppedWhileStarting(meta(metadata::BACKEND_ID)),
            reason::CAPABILITY_NOT_SUPPORTED => RuntimeError::Unsupported(message),
            reason::EVENTS_LAGGED => {
                RuntimeError::EventsLagged { last_sequence: meta(metadata::LAST_SEQUENCE).parse().unwrap_or(0) }
            }
            reason::RUNTIME_UNAVAILABLE => RuntimeError::Unavailable(message),
            reason::PROTOCOL_VERSION_MISMATCH => RuntimeError::VersionMismatch(message),
            reason::HANDSHAKE_REQUIRED => RuntimeError::HandshakeRequired(message),
            reason::PEER_NOT_ALLOWED => RuntimeError::PermissionDenied(message),
            reason::INVALID_ARGUMENT => invalid_from_status(status, message),
            reason::INTERNAL => RuntimeError::Internal(message),
            _ => match status.code() {
                Code::InvalidArgument => invalid_from_status(status, message),
                Code::Unavailable | Code::Cancelled | Code::Unknown => RuntimeError::Unavailable(message),
                Code::Unimplemented => RuntimeError::Unsupported(message),
                Code::PermissionDenied => RuntimeError::PermissionDenied(message),
                _ => RuntimeError::Internal(format!("{:?}: {message}", status.code())),
            },
        }
    }
}

/// The first field violation of an INVALID_ARGUMENT status (the executor sends one).
fn invalid_from_status(status: &Status, message: String) -> RuntimeError {
    let (field, message) = field_violations(status).into_iter().next().unwrap_or((String::new(), message));
    RuntimeError::InvalidSpec { field, message }
}

impl From<RuntimeError> for Status {
    fn from(err: RuntimeError) -> Self {
        err.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_domain_error_survives_the_round_trip_through_a_status() {
        let errors = [
            RuntimeError::BackendNotFound("b1".into()),
            RuntimeError::ImageNotFound { image: "img".into(), message: "x".into() },
            RuntimeError::ImagePullFailed { image: "img".into(), message: "x".into() },
            RuntimeError::invalid_spec("spec.image", "must not be empty"),
            RuntimeError::StoppedWhileStarting("b1".into()),
            RuntimeError::StartFailed { backend_id: "b1".into(), message: "exec format error".into() },
            RuntimeError::EventsLagged { last_sequence: 42 },
        ];
        for err in errors {
            let back = RuntimeError::from_status(&err.to_status());
            assert_eq!(back, err);
        }
    }

    #[test]
    fn every_error_a_client_can_see_carries_its_own_reason() {
        let errors = [
            (RuntimeError::BackendNotFound("b1".into()), reason::BACKEND_NOT_FOUND),
            (RuntimeError::ImageNotFound { image: "img".into(), message: "x".into() }, reason::IMAGE_NOT_FOUND),
            (RuntimeError::ImagePullFailed { image: "img".into(), message: "x".into() }, reason::IMAGE_PULL_FAILED),
            (RuntimeError::invalid_spec("spec.image", "must not be empty"), reason::INVALID_ARGUMENT),
            (RuntimeError::StartFailed { backend_id: "b1".into(), message: "x".into() }, reason::BACKEND_START_FAILED),
            (RuntimeError::StoppedWhileStarting("b1".into()), reason::BACKEND_STOPPED_WHILE_STARTING),
            (RuntimeError::Unsupported("no stats".into()), reason::CAPABILITY_NOT_SUPPORTED),
            // Not the controller's WATCH_TOO_SLOW: a client can tell which stream it fell behind on.
            (RuntimeError::EventsLagged { last_sequence: 42 }, reason::EVENTS_LAGGED),
            (RuntimeError::Unavailable("docker is down".into()), reason::RUNTIME_UNAVAILABLE),
            (RuntimeError::VersionMismatch("v2".into()), reason::PROTOCOL_VERSION_MISMATCH),
            (RuntimeError::HandshakeRequired("first".into()), reason::HANDSHAKE_REQUIRED),
            (RuntimeError::PermissionDenied("uid 7".into()), reason::PEER_NOT_ALLOWED),
            (RuntimeError::internal("boom"), reason::INTERNAL),
        ];
        for (err, expected) in errors {
            let status = err.to_status();
            let (reason, _) = error_info(&status).unwrap_or_else(|| panic!("{err:?} travels without an ErrorInfo"));
            assert_eq!(reason, expected, "{err:?}");
            assert_eq!(status.code(), err.code(), "{err:?}");
        }
    }

    #[test]
    fn errors_read_back_as_the_same_variant() {
        let errors = [
            RuntimeError::Unsupported("StreamStats is not supported by the mock runtime".into()),
            RuntimeError::Unavailable("docker is down".into()),
            RuntimeError::VersionMismatch("v2".into()),
            RuntimeError::HandshakeRequired("first".into()),
            RuntimeError::PermissionDenied("uid 7".into()),
            RuntimeError::internal("boom"),
        ];
        for err in errors {
            let back = RuntimeError::from_status(&err.to_status());
            assert_eq!(std::mem::discriminant(&back), std::mem::discriminant(&err), "{err:?} came back as {back:?}");
        }
    }

    #[test]
    fn internal_details_stay_out_of_the_status() {
        let status = RuntimeError::internal("secret path /var/lib/x").to_status();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
