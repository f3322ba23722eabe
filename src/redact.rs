//! `Debug` for the generated messages that carry secrets (build.rs skips deriving theirs): env
//! values, the static token and connection tokens print as [`REDACTED`], so a message that ends
//! up in a log line or a test failure shows its shape and never its secrets. Everything else is
//! printed as the derived `Debug` would.

use crate::secret::REDACTED;
use crate::{executor, v1};
use std::collections::BTreeMap;
use std::fmt;

/// A map's keys, each with [`REDACTED`] for its value, in key order.
fn redacted_values(map: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    map.keys().map(|key| (key.as_str(), REDACTED)).collect()
}

/// [`REDACTED`] for a secret that is set, `""` for one that is not (it shows whether it was).
fn redacted(secret: &str) -> &str {
    if secret.is_empty() { "" } else { REDACTED }
}

impl fmt::Debug for v1::Executable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executable")
            .field("image", &self.image)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &redacted_values(&self.env))
            .field("pull_policy", &self.pull_policy)
            .field("container_port", &self.container_port)
            .field("resources", &self.resources)
            .finish()
    }
}

impl fmt::Debug for v1::SpawnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpawnConfig")
            .field("executable", &self.executable)
            .field("cluster", &self.cluster)
            .field("pool", &self.pool)
            .field("labels", &self.labels)
            .field("lifetime_limit", &self.lifetime_limit)
            .field("max_idle", &self.max_idle)
            .field("static_token", &redacted(&self.static_token))
            .finish()
    }
}

impl fmt::Debug for v1::SpawnBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpawnBackend")
            .field("executable", &self.executable)
            .field("key", &self.key)
            .field("fencing_token", &self.fencing_token)
            .field("static_token", &redacted(&self.static_token))
            .field("startup_timeout", &self.startup_timeout)
            .field("lease_duration", &self.lease_duration)
            .field("stop_grace", &self.stop_grace)
            .finish()
    }
}

impl fmt::Debug for v1::ConnectResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL ends in the token.
        f.debug_struct("ConnectResponse")
            .field("backend_id", &self.backend_id)
            .field("spawned", &self.spawned)
            .field("status", &self.status)
            .field("token", &redacted(&self.token))
            .field("url", &redacted(&self.url))
            .field("token_expires_at", &self.token_expires_at)
            .field("static_token", &redacted(&self.static_token))
            .field("backend", &self.backend)
            .finish()
    }
}

impl fmt::Debug for v1::LookupRouteRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LookupRouteRequest")
            .field("token", &redacted(&self.token))
            .field("wait_for_ready", &self.wait_for_ready)
            .finish()
    }
}

impl fmt::Debug for executor::v1::BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendSpec")
            .field("backend_id", &self.backend_id)
            .field("image", &self.image)
            .field("args", &self.args)
            .field("command", &self.command)
            .field("env", &redacted_values(&self.env))
            .field("port", &self.port)
            .field("resources", &self.resources)
            .field("labels", &self.labels)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV_SECRET: &str = "env-value-0123456789";
    const TOKEN: &str = "token-0123456789abcdef";

    fn executable() -> v1::Executable {
        v1::Executable {
            image: "app:1".into(),
            env: [("API_KEY".to_string(), ENV_SECRET.to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn messages_that_carry_secrets_print_their_shape_and_not_their_secrets() {
        let spawn_config =
            v1::SpawnConfig { executable: Some(executable()), static_token: TOKEN.into(), ..Default::default() };
        let printed = [
            format!("{:?}", v1::ConnectRequest { spawn_config: Some(spawn_config.clone()), ..Default::default() }),
            format!(
                "{:?}",
                v1::DroneAction {
                    action: Some(v1::drone_action::Action::Spawn(v1::SpawnBackend {
                        executable: Some(executable()),
                        static_token: TOKEN.into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                v1::ConnectResponse {
                    token: TOKEN.into(),
                    url: format!("http://proxy/{TOKEN}/"),
                    static_token: TOKEN.into(),
                    backend: Some(v1::Backend { spawn_config: Some(spawn_config), ..Default::default() }),
                    ..Default::default()
                }
            ),
            format!("{:?}", v1::LookupRouteRequest { token: TOKEN.into(), ..Default::default() }),
            format!(
                "{:?}",
                executor::v1::StartBackendRequest {
                    spec: Some(executor::v1::BackendSpec {
                        env: [("HANGAR_STATIC_TOKEN".to_string(), TOKEN.to_string())].into(),
                        ..Default::default()
                    })
                }
            ),
        ];
        for text in printed {
            assert!(!text.contains(ENV_SECRET) && !text.contains(TOKEN), "a secret shows in {text}");
            assert!(text.contains(REDACTED), "{text}");
        }
        assert!(format!("{:?}", executable()).contains("\"API_KEY\": \"<redacted>\""), "keys stay");
        assert!(format!("{:?}", v1::SpawnConfig::default()).contains("static_token: \"\""), "unset shows as unset");
    }
}
