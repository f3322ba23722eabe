//! The environment Hangar gives every backend. The drone builds it, from the spawn action's
//! backend id, key, fencing token and static token, when it asks its runtime to start the
//! backend; the controller sends only the spawn config's own variables.

use super::backend::BackendKey;
use crate::v1;
use std::collections::BTreeMap;

/// The backend's id.
pub const BACKEND_ID_VAR: &str = "HANGAR_BACKEND_ID";
/// `namespace/name` of the backend's key; empty without one.
pub const BACKEND_KEY_VAR: &str = "HANGAR_BACKEND_KEY";
/// The key's fencing token (0 without a key).
pub const FENCING_TOKEN_VAR: &str = "HANGAR_FENCING_TOKEN";
/// The static token, when the spawn config sets one.
pub const STATIC_TOKEN_VAR: &str = "HANGAR_STATIC_TOKEN";
/// The port to listen on; the runtime sets it.
pub const PORT_VAR: &str = "PORT";

/// Environment names Hangar sets itself; a spawn config may not override them.
pub const RESERVED_ENV: &[&str] = &[PORT_VAR, BACKEND_ID_VAR, BACKEND_KEY_VAR, FENCING_TOKEN_VAR, STATIC_TOKEN_VAR];

/// What Hangar tells a backend about itself through its environment, on top of the spawn
/// config's variables (which cannot override it). `PORT` is the runtime's. `Debug` hides the
/// static token.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendEnv {
    pub backend_id: String,
    pub key: Option<BackendKey>,
    pub fencing_token: u64,
    pub static_token: Option<String>,
}

impl std::fmt::Debug for BackendEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendEnv")
            .field("backend_id", &self.backend_id)
            .field("key", &self.key)
            .field("fencing_token", &self.fencing_token)
            .field("static_token", &self.static_token.as_ref().map(|_| crate::secret::REDACTED))
            .finish()
    }
}

impl BackendEnv {
    /// The environment of the backend a drone is told to spawn; an empty static token is none.
    pub fn from_spawn(backend_id: &str, spawn: &v1::SpawnBackend) -> Self {
        BackendEnv {
            backend_id: backend_id.to_string(),
            key: spawn.key.as_ref().map(BackendKey::from),
            fencing_token: spawn.fencing_token,
            static_token: (!spawn.static_token.is_empty()).then(|| spawn.static_token.clone()),
        }
    }

    /// The variables by name.
    pub fn vars(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert(BACKEND_ID_VAR.to_string(), self.backend_id.clone());
        env.insert(BACKEND_KEY_VAR.to_string(), self.key.as_ref().map(BackendKey::path).unwrap_or_default());
        env.insert(FENCING_TOKEN_VAR.to_string(), self.fencing_token.to_string());
        if let Some(token) = &self.static_token {
            env.insert(STATIC_TOKEN_VAR.to_string(), token.clone());
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn(static_token: &str) -> v1::SpawnBackend {
        v1::SpawnBackend {
            key: Some(v1::BackendKey { namespace: "docs".into(), name: "doc-1".into(), tag: "v2".into() }),
            fencing_token: 7,
            static_token: static_token.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_keyed_backend_sees_its_id_key_path_and_fencing_token() {
        let vars = BackendEnv::from_spawn("bk-1", &spawn("")).vars();
        let expected = [
            (BACKEND_ID_VAR, "bk-1"),
            // The tag is the holder's business, not part of the key's path.
            (BACKEND_KEY_VAR, "docs/doc-1"),
            (FENCING_TOKEN_VAR, "7"),
        ];
        assert_eq!(vars, expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    }

    #[test]
    fn a_keyless_backend_gets_an_empty_key_and_the_static_token_only_when_set() {
        let keyless = v1::SpawnBackend { key: None, fencing_token: 0, ..spawn("s3cr3t") };
        let vars = BackendEnv::from_spawn("bk-2", &keyless).vars();
        assert_eq!(vars[BACKEND_KEY_VAR], "");
        assert_eq!(vars[FENCING_TOKEN_VAR], "0");
        assert_eq!(vars[STATIC_TOKEN_VAR], "s3cr3t");
        assert!(!BackendEnv::from_spawn("bk-2", &spawn("")).vars().contains_key(STATIC_TOKEN_VAR));
    }

    #[test]
    fn debug_hides_the_static_token() {
        let env = BackendEnv::from_spawn("bk-4", &spawn("s3cr3t-static-token"));
        let printed = format!("{env:?}");
        assert!(!printed.contains("s3cr3t") && printed.contains("<redacted>"), "{printed}");
    }

    #[test]
    fn every_variable_hangar_sets_is_reserved() {
        let vars = BackendEnv::from_spawn("bk-3", &spawn("s3cr3t")).vars();
        assert!(vars.keys().all(|name| RESERVED_ENV.contains(&name.as_str())), "{vars:?}");
    }
}
