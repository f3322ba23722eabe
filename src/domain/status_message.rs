//! The `message` of a backend status: why the backend is in its state, in words, for people
//! (`hangar backends get`, `connect --wait`). It often carries a runtime's error text, which
//! Hangar does not control, so every message is made safe the same way before it is sent or
//! stored: the backend's secrets are masked, it is one line, and it is bounded.

use crate::v1;

/// Longest message in bytes: enough for a runtime's error, small enough that no runtime can
/// bloat the store through it (every status is kept in the backend's history).
pub const STATUS_MESSAGE_MAX: usize = 1024;

/// Secrets shorter than this are not masked: they are too short to be credentials and too
/// common (`1`, `on`, `dev`) to be told apart from the rest of a message.
pub const SECRET_MIN_LEN: usize = 4;

const MASK: &str = "***";
const CUT: &str = "…";

/// `text` as a status message: every secret of at least [`SECRET_MIN_LEN`] bytes replaced by
/// `***`, line breaks and tabs turned into spaces and other control characters dropped, trimmed,
/// and cut on a character boundary to at most [`STATUS_MESSAGE_MAX`] bytes (ending in `…` when
/// cut). Masking comes first, so a cut can never leave part of a secret behind.
pub fn status_message<'a>(text: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut secrets: Vec<&str> = secrets.into_iter().filter(|s| s.len() >= SECRET_MIN_LEN).collect();
    // Longest first, so a secret that contains another is masked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    let mut masked = text.to_string();
    for secret in secrets {
        if masked.contains(secret) {
            masked = masked.replace(secret, MASK);
        }
    }
    let one_line: String = masked
        .chars()
        .filter_map(|c| match c {
            '\n' | '\r' | '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect();
    let trimmed = one_line.trim();
    if trimmed.len() <= STATUS_MESSAGE_MAX {
        return trimmed.to_string();
    }
    let mut end = STATUS_MESSAGE_MAX - CUT.len();
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT}", &trimmed[..end])
}

/// What a message about a spawned backend must never show: the values of its environment (the
/// spawn config's own; Hangar's variables are not secret) and its static token.
pub fn spawn_secrets(spawn: &v1::SpawnBackend) -> Vec<&str> {
    let env = spawn.executable.iter().flat_map(|e| e.env.values());
    env.map(String::as_str).chain(std::iter::once(spawn.static_token.as_str())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_longest_first_and_short_values_are_left_alone() {
        let message = status_message(
            "pull failed for token=hunter2-long and hunter2 (DEBUG=1)",
            ["hunter2", "hunter2-long", "1", "", "absent-secret"],
        );
        assert_eq!(message, "pull failed for token=*** and *** (DEBUG=1)");
    }

    #[test]
    fn a_message_is_one_line_and_bounded_on_a_character_boundary() {
        assert_eq!(status_message("  exited\nwith code 3\r\n\u{7}  ", []), "exited with code 3");
        let long = "é".repeat(STATUS_MESSAGE_MAX);
        let cut = status_message(&long, []);
        assert!(cut.len() <= STATUS_MESSAGE_MAX, "{}", cut.len());
        assert!(cut.ends_with('…') && cut.starts_with("éé"));
        assert_eq!(status_message(&"x".repeat(STATUS_MESSAGE_MAX), []).len(), STATUS_MESSAGE_MAX, "not cut");
    }

    #[test]
    fn a_secret_is_masked_before_the_cut_so_no_part_of_it_survives() {
        let secret = "s3cr3t-value-that-is-long";
        let text = format!("{}{secret}", "x".repeat(STATUS_MESSAGE_MAX - 10));
        let message = status_message(&text, [secret]);
        assert!(!message.contains("s3cr3t"), "{message}");
    }

    #[test]
    fn a_spawns_secrets_are_its_env_values_and_static_token() {
        let spawn = v1::SpawnBackend {
            executable: Some(v1::Executable {
                env: [("API_KEY".to_string(), "k-123456".to_string())].into(),
                ..Default::default()
            }),
            static_token: "static-token-0001".into(),
            ..Default::default()
        };
        let mut secrets = spawn_secrets(&spawn);
        secrets.sort();
        assert_eq!(secrets, ["k-123456", "static-token-0001"]);
    }
}
