//! `ClientError`: what a Hangar call can fail with, decoded from the `tonic::Status` once, here.
//!
//! Callers match on variants and on the stable `ErrorInfo.reason` strings
//! (`hangar::error::reason`), never on messages.

use hangar::error::{error_info, field_violations, metadata};
use std::collections::HashMap;
use std::time::Duration;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The controller URL cannot be used (bad syntax, unsupported scheme).
    #[error("invalid controller address {address:?}: {detail}")]
    InvalidAddress { address: String, detail: String },

    /// The credentials cannot be used: a file that is missing or not PEM, a key that does not
    /// match its certificate, TLS options on a plain `http://` URL.
    #[error(transparent)]
    Credentials(#[from] crate::CredentialsError),

    /// Nothing answered at the controller address within the connect timeout, or the TLS
    /// handshake failed (an unknown CA, a refused client certificate).
    #[error("cannot reach the controller at {address}: {detail}")]
    Connect { address: String, detail: String },

    /// NOT_FOUND, e.g. reason `NODE_NOT_FOUND`.
    #[error("{}", with_reason(message, reason))]
    NotFound { reason: String, message: String },

    /// INVALID_ARGUMENT with one `(field, description)` per `BadRequest` field violation.
    #[error("invalid argument: {}", with_specific_reason(&describe_violations(message, violations), reason))]
    InvalidArgument { reason: String, message: String, violations: Vec<(String, String)> },

    /// FAILED_PRECONDITION, e.g. reason `NODE_NOT_DRONE` or `KEY_TAG_MISMATCH`.
    #[error("{}", with_reason(message, reason))]
    FailedPrecondition { reason: String, message: String },

    /// UNAVAILABLE: the controller went away, is shutting down, or has no room. Idempotent calls
    /// have already been retried when this reaches the caller. `metadata` is the `ErrorInfo`'s
    /// (NO_DRONE_AVAILABLE counts the pool's drones by state in it).
    #[error("{}", describe_unavailable(message, reason))]
    Unavailable { reason: String, message: String, metadata: HashMap<String, String> },

    /// OUT_OF_RANGE (reason `REVISION_COMPACTED`): a watch started before the retention window.
    /// List again, then watch from the listing's revision.
    #[error("{} (oldest retained revision: {})", with_reason(message, reason), fmt_revision(*oldest_revision))]
    OutOfRange { reason: String, message: String, oldest_revision: Option<u64> },

    /// RESOURCE_EXHAUSTED, e.g. reason `WATCH_TOO_SLOW` (resume from `last_revision`) or
    /// `POOL_FULL` (the pool's drones by state in `metadata`).
    #[error("{}", with_reason(message, reason))]
    ResourceExhausted { reason: String, message: String, last_revision: Option<u64>, metadata: HashMap<String, String> },

    /// The controller answered with something this client cannot represent (a newer enum value,
    /// a missing field, pages of one listing from different revisions).
    #[error("unexpected response from the controller: {0}")]
    InvalidResponse(String),

    /// Any other status, kept whole.
    #[error("{}", describe_status(.0))]
    Other(Status),
}

impl ClientError {
    /// The stable `ErrorInfo.reason`, when the controller sent one.
    pub fn reason(&self) -> Option<String> {
        let reason = match self {
            ClientError::NotFound { reason, .. }
            | ClientError::InvalidArgument { reason, .. }
            | ClientError::FailedPrecondition { reason, .. }
            | ClientError::Unavailable { reason, .. }
            | ClientError::OutOfRange { reason, .. }
            | ClientError::ResourceExhausted { reason, .. } => reason.clone(),
            ClientError::Other(status) => error_info(status)?.0,
            _ => return None,
        };
        (!reason.is_empty()).then_some(reason)
    }

    /// A value of the `ErrorInfo` metadata, where the variant keeps it (UNAVAILABLE,
    /// RESOURCE_EXHAUSTED); keys are `hangar::error::metadata`'s.
    pub fn metadata(&self, key: &str) -> Option<String> {
        match self {
            ClientError::Unavailable { metadata, .. } | ClientError::ResourceExhausted { metadata, .. } => {
                metadata.get(key).cloned()
            }
            ClientError::Other(status) => error_info(status)?.1.remove(key),
            _ => None,
        }
    }

    /// Whether repeating the same idempotent call may succeed. NO_DRONE_AVAILABLE is an
    /// UNAVAILABLE answer too, but the scheduler fails fast on purpose: repeating it at once only
    /// delays the answer.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unavailable { reason, .. } => reason != hangar::error::reason::NO_DRONE_AVAILABLE,
            // The controller refused the call before doing anything, and says when to come back.
            ClientError::ResourceExhausted { reason, .. } => reason == hangar::error::reason::RATE_LIMITED,
            _ => false,
        }
    }

    /// How long the controller asked the caller to wait before trying again (RATE_LIMITED's
    /// `retry_after_ms`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::ResourceExhausted { metadata: meta, .. } => {
                meta.get(metadata::RETRY_AFTER_MS)?.parse().ok().map(Duration::from_millis)
            }
            _ => None,
        }
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        let (reason, metadata) = error_info(&status).unwrap_or_default();
        let message = status.message().to_string();
        match status.code() {
            Code::NotFound => ClientError::NotFound { reason, message },
            Code::InvalidArgument => {
                ClientError::InvalidArgument { reason, message, violations: field_violations(&status) }
            }
            Code::FailedPrecondition => ClientError::FailedPrecondition { reason, message },
            Code::Unavailable => ClientError::Unavailable { reason, message, metadata },
            Code::OutOfRange => {
                let oldest_revision = revision(&metadata, metadata::OLDEST_REVISION);
                ClientError::OutOfRange { reason, message, oldest_revision }
            }
            Code::ResourceExhausted => {
                let last_revision = revision(&metadata, metadata::LAST_REVISION);
                ClientError::ResourceExhausted { reason, message, last_revision, metadata }
            }
            _ => ClientError::Other(status),
        }
    }
}

fn revision(metadata: &HashMap<String, String>, key: &str) -> Option<u64> {
    metadata.get(key).and_then(|v| v.parse().ok())
}

/// `message (REASON)`, leaving out the generic `INVALID_ARGUMENT` reason that only repeats what
/// the line already says.
fn with_specific_reason(message: &str, reason: &str) -> String {
    with_reason(message, if reason == hangar::error::reason::INVALID_ARGUMENT { "" } else { reason })
}

fn with_reason(message: &str, reason: &str) -> String {
    match (message.is_empty(), reason.is_empty()) {
        (_, true) => message.to_string(),
        (true, false) => reason.to_string(),
        (false, false) => format!("{message} ({reason})"),
    }
}

/// NO_DRONE_AVAILABLE comes from a controller that is up and answering; only the scheduler has
/// no room, so it is not announced as an unavailable controller.
fn describe_unavailable(message: &str, reason: &str) -> String {
    if reason == hangar::error::reason::NO_DRONE_AVAILABLE {
        with_reason(message, reason)
    } else {
        format!("controller unavailable: {}", with_reason(message, reason))
    }
}

fn describe_violations(message: &str, violations: &[(String, String)]) -> String {
    if violations.is_empty() {
        return message.to_string();
    }
    violations.iter().map(|(field, description)| format!("{field}: {description}")).collect::<Vec<_>>().join("; ")
}

fn fmt_revision(revision: Option<u64>) -> String {
    revision.map_or_else(|| "unknown".to_string(), |r| r.to_string())
}

fn describe_status(status: &Status) -> String {
    let code = format!("{:?}", status.code());
    // A call that failed below gRPC ("transport error") keeps the cause in its source: the
    // refused TLS handshake or the reset connection is what the reader needs to see.
    let message = match std::error::Error::source(status) {
        Some(source) => {
            let cause = crate::credentials::error_chain(source);
            if cause.starts_with(status.message()) { cause } else { format!("{}: {cause}", status.message()) }
        }
        None => status.message().to_string(),
    };
    let message = message.as_str();
    let reason = error_info(status).map(|(reason, _)| reason).unwrap_or_default();
    match (message.is_empty(), reason.is_empty()) {
        (true, true) => code,
        (true, false) => format!("{code} ({reason})"),
        (false, true) => format!("{message} ({code})"),
        (false, false) => format!("{message} ({code}, {reason})"),
    }
}
