//! The drone's instance identity: a name unique per drone and data dir, generated once and kept
//! in the data dir (`instance-id`). An in-process runtime puts it on everything it runs (the
//! docker runtime's `hangar.executor` label and container names), so two drones sharing one
//! Docker engine (two `hangar-server dev` with different data dirs) each reconcile only what
//! they created and never remove the other's containers.

use std::io;
use std::path::Path;

/// File in the drone's data dir holding its instance id.
pub const INSTANCE_FILE: &str = "instance-id";

/// The journal's file name: a data dir that has one was used by a drone before instance ids
/// existed.
const JOURNAL_FILE: &str = "journal.sqlite";

/// Reads the instance id kept in `data_dir`, or makes one: `d-` and 12 random hex digits for a
/// fresh data dir, `legacy` for one whose journal predates instance ids (its backends run under
/// that old, shared name, and must still be found). Either way it is written down, so it never
/// changes for this data dir.
pub fn load_or_create(data_dir: &Path, legacy: &str) -> io::Result<String> {
    let path = data_dir.join(INSTANCE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(content) => {
            let id = content.trim();
            return if valid(id) {
                Ok(id.to_string())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} holds {id:?}, not an instance id (1-64 ASCII letters, digits, '-', '_', '.')",
                        path.display()
                    ),
                ))
            };
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    std::fs::create_dir_all(data_dir)?;
    let id = if data_dir.join(JOURNAL_FILE).exists() {
        tracing::info!(instance = legacy, data_dir = %data_dir.display(), "this data dir predates instance ids; keeping the old instance name so its backends are still found");
        legacy.to_string()
    } else {
        format!("d-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
    };
    // Written to a temporary file and renamed: a crash leaves either no file or a whole one.
    let temporary = data_dir.join(format!(".{INSTANCE_FILE}.{}", std::process::id()));
    std::fs::write(&temporary, format!("{id}\n"))?;
    std::fs::rename(&temporary, &path)?;
    Ok(id)
}

/// What may appear in a container name and a label value.
fn valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_data_dir_gets_a_new_id_that_stays() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("drone");
        let id = load_or_create(&data, "dev").unwrap();
        assert!(id.starts_with("d-") && id.len() == 14, "{id}");
        assert!(id[2..].bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert_eq!(load_or_create(&data, "dev").unwrap(), id, "read back, not made anew");
        assert_eq!(std::fs::read_to_string(data.join(INSTANCE_FILE)).unwrap().trim(), id);
    }

    #[test]
    fn two_data_dirs_get_different_ids() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(&dir.path().join("a"), "dev").unwrap();
        let b = load_or_create(&dir.path().join("b"), "dev").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_data_dir_with_an_older_journal_keeps_the_legacy_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(JOURNAL_FILE), b"").unwrap();
        assert_eq!(load_or_create(dir.path(), "dev").unwrap(), "dev");
        // Written down: removing the journal later does not change it.
        std::fs::remove_file(dir.path().join(JOURNAL_FILE)).unwrap();
        assert_eq!(load_or_create(dir.path(), "dev").unwrap(), "dev");
    }

    #[test]
    fn a_damaged_instance_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(INSTANCE_FILE), "not a name\n").unwrap();
        let err = load_or_create(dir.path(), "dev").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("instance-id"), "{err}");
    }
}
