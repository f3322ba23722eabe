//! The exit codes of `hangar`, for scripts: the one place they are defined. `--help` shows
//! [`EXIT_CODES_HELP`] and the README lists the same table; tests hold both to [`Exit::ALL`].

use super::CliError;
use crate::ClientError;
use hangar::error::reason;
use std::process::ExitCode;

/// How a `hangar` command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did what it was asked (a watch that was interrupted or whose stdout closed
    /// included).
    Success,
    /// The command failed and repeating it as it is will fail again: the controller refused it
    /// (FAILED_PRECONDITION such as KEY_TAG_MISMATCH, a TLS handshake that failed), `connect
    /// --wait` saw the backend end before it was READY, or anything not listed below.
    Failed,
    /// The command line is wrong: an unknown flag, a bad value, or arguments the controller
    /// rejects as INVALID_ARGUMENT. clap's own usage errors exit with 2 too.
    Usage,
    /// The node or backend named does not exist (NOT_FOUND).
    NotFound,
    /// Try again later: the controller cannot be reached or is unavailable (shutting down, its
    /// database away), no drone has room, or the call was rate limited.
    Unavailable,
    /// The controller refused the caller: no or unknown credentials (UNAUTHENTICATED) or a
    /// role that may not do this (PERMISSION_DENIED).
    Denied,
    /// `connect --wait` gave up after `--timeout`; the backend may still become READY.
    Timeout,
}

/// The exit code table as a literal, so that `--help` (args.rs) can `concat!` it.
macro_rules! exit_codes_help {
    () => {
        "\
Exit codes (for scripts):
  0  success (an interrupted watch included)
  1  failed: refused by the controller, the backend ended before READY, or any other error
  2  usage: a wrong flag or value, or arguments the controller rejects (INVALID_ARGUMENT)
  3  not found: no node or backend with that id (NOT_FOUND)
  4  unavailable: controller unreachable or unavailable, no drone with room, rate limited; retry later
  5  denied: missing or unknown credentials, or a role that may not do this
  6  timeout: `connect --wait` gave up after --timeout"
    };
}

/// The exit code table `hangar --help` ends with; a test holds it to [`Exit::ALL`].
pub const EXIT_CODES_HELP: &str = exit_codes_help!();

impl Exit {
    /// Every exit code, in order.
    pub const ALL: [Exit; 7] =
        [Exit::Success, Exit::Failed, Exit::Usage, Exit::NotFound, Exit::Unavailable, Exit::Denied, Exit::Timeout];

    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::NotFound => 3,
            Exit::Unavailable => 4,
            Exit::Denied => 5,
            Exit::Timeout => 6,
        }
    }

    /// How the command ended with `err`.
    pub fn of(err: &CliError) -> Exit {
        match err {
            CliError::Usage(_) => Exit::Usage,
            CliError::WaitTimeout { .. } => Exit::Timeout,
            CliError::Terminated { .. } => Exit::Failed,
            CliError::Client(err) => Exit::of_client(err),
        }
    }

    fn of_client(err: &ClientError) -> Exit {
        let tls =
            |text: &str| ["certificate", "tls", "handshake", "alert"].iter().any(|w| text.to_lowercase().contains(w));
        match err {
            ClientError::InvalidAddress { .. } | ClientError::InvalidArgument { .. } => Exit::Usage,
            ClientError::NotFound { .. } => Exit::NotFound,
            // A handshake that failed fails again until the TLS options change.
            ClientError::Connect { detail, .. } if tls(detail) => Exit::Failed,
            ClientError::Connect { .. } | ClientError::Unavailable { .. } => Exit::Unavailable,
            ClientError::ResourceExhausted { reason: why, .. }
                if why == reason::RATE_LIMITED || why == reason::POOL_FULL =>
            {
                Exit::Unavailable
            }
            ClientError::Other(status)
                if matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) =>
            {
                Exit::Denied
            }
            _ => Exit::Failed,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackendStatusView;
    use hangar::domain::BackendState;
    use std::collections::HashMap;
    use std::time::Duration;
    use tonic::{Code, Status};

    fn client(err: ClientError) -> Exit {
        Exit::of(&CliError::Client(err))
    }

    #[test]
    fn every_exit_code_is_distinct_and_listed_once_in_the_help_text() {
        let lines: Vec<&str> = EXIT_CODES_HELP.lines().skip(1).collect();
        assert_eq!(lines.len(), Exit::ALL.len(), "{EXIT_CODES_HELP}");
        for (exit, line) in Exit::ALL.iter().zip(&lines) {
            assert!(line.starts_with(&format!("  {}  ", exit.code())), "{exit:?} is documented as `{line}`");
        }
        let mut codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        codes.dedup();
        assert_eq!(codes, (0..Exit::ALL.len() as u8).collect::<Vec<_>>());
    }

    #[test]
    fn the_readme_lists_the_same_exit_codes() {
        let readme = include_str!("../../../README.md");
        for line in EXIT_CODES_HELP.lines().skip(1) {
            let (code, meaning) = line.trim().split_once("  ").unwrap();
            let word = meaning.split(':').next().unwrap();
            assert!(
                readme.lines().any(|l| l.starts_with(&format!("| {code} | {word}"))),
                "README.md has no `| {code} | {word}` row in its exit code table"
            );
        }
    }

    #[test]
    fn api_errors_map_to_the_code_a_script_can_act_on() {
        let status = |code: Code| ClientError::Other(Status::new(code, "x"));
        let not_found = ClientError::NotFound { reason: reason::NODE_NOT_FOUND.into(), message: String::new() };
        assert_eq!(client(not_found), Exit::NotFound);
        let refused =
            ClientError::Connect { address: "http://127.0.0.1:1".into(), detail: "connection refused".into() };
        assert_eq!(client(refused), Exit::Unavailable);
        let handshake = ClientError::Connect {
            address: "https://ctl".into(),
            detail: "invalid peer certificate: UnknownIssuer".into(),
        };
        assert_eq!(client(handshake), Exit::Failed);
        let shutting_down = ClientError::Unavailable {
            reason: reason::SHUTTING_DOWN.into(),
            message: String::new(),
            metadata: HashMap::new(),
        };
        assert_eq!(client(shutting_down), Exit::Unavailable);
        let rate_limited = ClientError::ResourceExhausted {
            reason: reason::RATE_LIMITED.into(),
            message: String::new(),
            last_revision: None,
            metadata: HashMap::new(),
        };
        assert_eq!(client(rate_limited), Exit::Unavailable);
        let invalid = ClientError::InvalidArgument { reason: String::new(), message: "x".into(), violations: vec![] };
        assert_eq!(client(invalid), Exit::Usage);
        let precondition =
            ClientError::FailedPrecondition { reason: reason::KEY_TAG_MISMATCH.into(), message: String::new() };
        assert_eq!(client(precondition), Exit::Failed);
        assert_eq!(client(status(Code::Unauthenticated)), Exit::Denied);
        assert_eq!(client(status(Code::PermissionDenied)), Exit::Denied);
        assert_eq!(client(status(Code::Internal)), Exit::Failed);
    }

    #[test]
    fn connect_wait_outcomes_and_usage_mistakes_have_their_own_codes() {
        assert_eq!(Exit::of(&CliError::Usage("x".into())), Exit::Usage);
        let timeout =
            CliError::WaitTimeout { id: "bk-1".into(), waited: Duration::from_secs(1), state: BackendState::Starting };
        assert_eq!(Exit::of(&timeout), Exit::Timeout);
        let status = BackendStatusView {
            state: BackendState::Terminated,
            time: None,
            termination_kind: None,
            termination_reason: None,
            exit_code: None,
            message: String::new(),
        };
        assert_eq!(Exit::of(&CliError::Terminated { id: "bk-1".into(), status }), Exit::Failed);
    }
}
