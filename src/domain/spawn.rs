//! What a backend runs and where: the spawn config, checked once on its way in, and the pull
//! policy and resource limits that travel on to the drone and its runtime.

use super::backend::dns_label_problem;
use super::env::RESERVED_ENV;
use super::fields::{DURATION_MAX, duration_in, label_violations};
use super::image::image_problem;
use super::node::{ParseEnumError, string_enum};
use super::time::duration_to_proto;
use crate::executor::v1 as executor_v1;
use crate::secret::REDACTED;
use crate::v1;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// When a runtime pulls the image before starting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PullPolicy {
    /// Pull only when the image is not present locally (the default).
    #[default]
    IfNotPresent,
    Always,
    /// A missing image fails the start.
    Never,
}

string_enum!(PullPolicy, "pull policy", v1::PullPolicy, {
    IfNotPresent => "IF_NOT_PRESENT", Always => "ALWAYS", Never => "NEVER",
});

impl PullPolicy {
    /// The executor protocol's value, as the drone asks its runtime.
    pub fn to_executor_proto(self) -> executor_v1::PullPolicy {
        match self {
            PullPolicy::IfNotPresent => executor_v1::PullPolicy::IfNotPresent,
            PullPolicy::Always => executor_v1::PullPolicy::Always,
            PullPolicy::Never => executor_v1::PullPolicy::Never,
        }
    }

    /// Like [`PullPolicy::from_proto`], for the executor protocol: `None` for UNSPECIFIED or a
    /// value this build does not know.
    pub fn from_executor_proto(value: i32) -> Option<Self> {
        match executor_v1::PullPolicy::try_from(value).ok()? {
            executor_v1::PullPolicy::IfNotPresent => Some(PullPolicy::IfNotPresent),
            executor_v1::PullPolicy::Always => Some(PullPolicy::Always),
            executor_v1::PullPolicy::Never => Some(PullPolicy::Never),
            executor_v1::PullPolicy::Unspecified => None,
        }
    }
}

/// Resource limits; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pids: u64,
}

impl ResourceLimits {
    /// Problems of the limits, each under `field.<name>`: memory, when limited, between what a
    /// runtime needs to start and what no host has; CPU and pids no higher than any host could
    /// give.
    pub fn violations(&self, field: &str) -> Vec<(String, String)> {
        use spawn_limits::*;
        let mut violations = Vec::new();
        if self.memory_bytes != 0 && !(MEMORY_MIN..=MEMORY_MAX).contains(&self.memory_bytes) {
            violations.push((
                format!("{field}.memory_bytes"),
                format!("must be 0 (no limit) or 4 MiB–1 PiB (got {})", self.memory_bytes),
            ));
        }
        if self.cpu_millis > CPU_MILLIS_MAX {
            violations.push((
                format!("{field}.cpu_millis"),
                format!("must be at most {CPU_MILLIS_MAX} (1024 cores; got {})", self.cpu_millis),
            ));
        }
        if self.pids > PIDS_MAX {
            violations.push((
                format!("{field}.pids"),
                format!("must be at most {PIDS_MAX}, the kernel's own limit (got {})", self.pids),
            ));
        }
        violations
    }
}

/// What an environment may hold, where it crosses a boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvRules {
    pub max_vars: usize,
    /// Every name and value together.
    pub max_bytes: usize,
    /// Whether the names Hangar sets itself ([`RESERVED_ENV`]) may appear.
    pub hangar_names: bool,
}

impl EnvRules {
    /// A spawn config's own environment: Hangar's names are Hangar's.
    pub const SPAWN_CONFIG: EnvRules =
        EnvRules { max_vars: spawn_limits::ENV_VARS_MAX, max_bytes: spawn_limits::ENV_BYTES_MAX, hangar_names: false };

    /// What a drone asks its executor to run: the spawn config's environment with Hangar's
    /// variables added, bounded with room to spare.
    pub const BACKEND: EnvRules = EnvRules {
        max_vars: spawn_limits::ENV_VARS_MAX + RESERVED_ENV.len(),
        max_bytes: 256 * 1024,
        hangar_names: true,
    };

    /// Problems of `env`, each under `field[name]` (or `field` for its size): names are
    /// `[A-Za-z_][A-Za-z0-9_]*`, values hold no NUL (neither could reach a process).
    pub fn violations<'a>(
        &self,
        field: &str,
        env: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Vec<(String, String)> {
        let mut violations = Vec::new();
        let (mut count, mut bytes) = (0, 0);
        for (name, value) in env {
            count += 1;
            bytes += name.len() + value.len();
            // A few are enough to say what is wrong; a flood of bad names makes no flood of
            // violations.
            if violations.len() >= spawn_limits::ENV_VARS_MAX {
                continue;
            }
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                violations.push((format!("{field}[{name:?}]"), "names are [A-Za-z_][A-Za-z0-9_]*".into()));
            } else if !self.hangar_names && RESERVED_ENV.contains(&name.as_str()) {
                violations.push((format!("{field}[{name:?}]"), "is set by Hangar and cannot be overridden".into()));
            }
            if value.contains('\0') {
                violations.push((format!("{field}[{name:?}]"), "values must not contain NUL".into()));
            }
        }
        if count > self.max_vars || bytes > self.max_bytes {
            let (max_vars, max_bytes) = (self.max_vars, self.max_bytes);
            violations.push((
                field.to_string(),
                format!("at most {max_vars} variables of {max_bytes} bytes in total (got {count} of {bytes})"),
            ));
        }
        violations
    }
}

/// The API and the executor protocol carry the same three numbers; both convert here.
macro_rules! resource_limits_proto {
    ($proto:path) => {
        impl From<$proto> for ResourceLimits {
            fn from(r: $proto) -> Self {
                ResourceLimits { cpu_millis: r.cpu_millis, memory_bytes: r.memory_bytes, pids: r.pids }
            }
        }

        impl From<ResourceLimits> for $proto {
            fn from(r: ResourceLimits) -> Self {
                Self { cpu_millis: r.cpu_millis, memory_bytes: r.memory_bytes, pids: r.pids }
            }
        }
    };
}

resource_limits_proto!(v1::ResourceLimits);
resource_limits_proto!(executor_v1::ResourceLimits);

/// Port a backend listens on inside its container when its spawn config (or runtime spec) names
/// none.
pub const DEFAULT_BACKEND_PORT: u16 = 8080;

/// What a backend runs. The process started is `command` (the image's ENTRYPOINT when empty)
/// followed by `args` (the image's CMD when both are empty), as in Kubernetes; the proto's
/// `Executable` says how the process runtime reads them.
///
/// Its environment's values are secrets: `Debug` and every `v1::Executable` made with `From`
/// show them as [`REDACTED`]; only [`Executable::to_spawn_proto`], for the drone that runs the
/// backend, carries them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Executable {
    pub image: String,
    /// Overrides the image's ENTRYPOINT: the program and its leading arguments.
    pub command: Vec<String>,
    /// Overrides the image's CMD. Rows stored before it existed have none.
    #[serde(default)]
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub pull_policy: PullPolicy,
    pub container_port: u16,
    pub resources: ResourceLimits,
}

/// A validated spawn configuration, with defaults filled in. `Debug` shows neither its env values
/// nor its static token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnConfig {
    pub executable: Executable,
    pub cluster: String,
    pub pool: String,
    pub labels: BTreeMap<String, String>,
    pub lifetime_limit: Option<Duration>,
    pub max_idle: Option<Duration>,
    /// Kept out of logs and listings: it is a credential. `None` when not set.
    pub static_token: Option<String>,
}

/// Limits of a spawn config. Generous, but bounded: a config travels in every Spawn action and
/// every Backend message.
pub mod spawn_limits {
    pub const IMAGE_MAX: usize = 512;
    /// Per list: `command` and `args` each.
    pub const COMMAND_ARGS_MAX: usize = 256;
    /// Per list: `command` and `args` each.
    pub const COMMAND_BYTES_MAX: usize = 64 * 1024;
    /// Below this a container cannot even start its runtime.
    pub const MEMORY_MIN: u64 = 4 << 20;
    /// 1 PiB: far above any host, and far below where the runtime's signed 64-bit field wraps.
    pub const MEMORY_MAX: u64 = 1 << 50;
    pub const CPU_MILLIS_MAX: u64 = 1_024_000;
    /// `PID_MAX_LIMIT` of a 64-bit Linux kernel.
    pub const PIDS_MAX: u64 = 4 << 20;
    pub const ENV_VARS_MAX: usize = 256;
    /// Total bytes of every env name and value together.
    pub const ENV_BYTES_MAX: usize = 64 * 1024;
    pub const LABELS_MAX: usize = super::super::fields::LABELS_MAX;
    /// Minimum of `max_idle` and `lifetime_limit`: the sweep runs about once a second.
    pub const MIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);
    pub const STATIC_TOKEN_MIN: usize = 16;
    pub const STATIC_TOKEN_MAX: usize = 256;
}

impl SpawnConfig {
    /// Validates a spawn config from the wire; every problem is one `(field, description)` under
    /// `field` (e.g. `spawn_config.executable.image`).
    pub fn from_proto(config: &v1::SpawnConfig, field: &str) -> Result<SpawnConfig, Vec<(String, String)>> {
        use spawn_limits::*;
        let mut violations = Vec::new();
        let mut violate = |f: String, d: String| violations.push((f, d));
        let exe_field = format!("{field}.executable");
        let default_exe = v1::Executable::default();
        let exe = match &config.executable {
            Some(exe) => exe,
            None => {
                violate(exe_field.clone(), "is required".into());
                &default_exe
            }
        };
        if let Some(problem) = image_problem(&exe.image, IMAGE_MAX) {
            violate(format!("{exe_field}.image"), problem);
        }
        for (problem_field, problem) in argv_violations(&exe.command, &format!("{exe_field}.command"), true) {
            violate(problem_field, problem);
        }
        for (problem_field, problem) in argv_violations(&exe.args, &format!("{exe_field}.args"), false) {
            violate(problem_field, problem);
        }
        for (problem_field, problem) in EnvRules::SPAWN_CONFIG.violations(&format!("{exe_field}.env"), &exe.env) {
            violate(problem_field, problem);
        }
        let pull_policy = match exe.pull_policy {
            0 => PullPolicy::IfNotPresent,
            p => PullPolicy::from_proto(p).unwrap_or_else(|| {
                violate(format!("{exe_field}.pull_policy"), format!("unknown pull policy {p}"));
                PullPolicy::IfNotPresent
            }),
        };
        let container_port = match exe.container_port {
            0 => DEFAULT_BACKEND_PORT,
            p => u16::try_from(p).unwrap_or_else(|_| {
                violate(format!("{exe_field}.container_port"), format!("must be 1–65535 (got {p})"));
                DEFAULT_BACKEND_PORT
            }),
        };
        let limits = exe.resources.unwrap_or_default();
        for (problem_field, problem) in ResourceLimits::from(limits).violations(&format!("{exe_field}.resources")) {
            violate(problem_field, problem);
        }
        let mut name_or_default = |f: &str, value: &str| {
            if value.is_empty() {
                return "default".to_string();
            }
            if let Some(problem) = dns_label_problem(value) {
                violate(format!("{field}.{f}"), problem);
            }
            value.to_string()
        };
        let cluster = name_or_default("cluster", &config.cluster);
        let pool = name_or_default("pool", &config.pool);
        violations.extend(label_violations(&format!("{field}.labels"), &config.labels));
        let mut limit = |f: &str, d: &Option<prost_types::Duration>| {
            duration_in(d.as_ref(), MIN_LIMIT, DURATION_MAX).unwrap_or_else(|problem| {
                violations.push((format!("{field}.{f}"), problem));
                None
            })
        };
        let lifetime_limit = limit("lifetime_limit", &config.lifetime_limit);
        let max_idle = limit("max_idle", &config.max_idle);
        let static_token = match config.static_token.as_str() {
            "" => None,
            t if t.len() < STATIC_TOKEN_MIN || t.len() > STATIC_TOKEN_MAX => {
                violations.push((
                    format!("{field}.static_token"),
                    format!("must be {STATIC_TOKEN_MIN}–{STATIC_TOKEN_MAX} characters"),
                ));
                None
            }
            t if !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => {
                violations.push((format!("{field}.static_token"), "must be URL-safe: [A-Za-z0-9_-]".into()));
                None
            }
            t => Some(t.to_string()),
        };
        if !violations.is_empty() {
            return Err(violations);
        }
        Ok(SpawnConfig {
            executable: Executable {
                image: exe.image.clone(),
                command: exe.command.clone(),
                args: exe.args.clone(),
                env: exe.env.clone().into_iter().collect(),
                pull_policy,
                container_port,
                resources: limits.into(),
            },
            cluster,
            pool,
            labels: config.labels.clone().into_iter().collect(),
            lifetime_limit,
            max_idle,
            static_token,
        })
    }
}

impl SpawnConfig {
    /// What a status message about this backend must never show: the values of its environment
    /// and its static token (see [`status_message`](super::status_message)).
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.executable.env.values().map(String::as_str).chain(self.static_token.as_deref())
    }
}

/// Problems of a `command` or `args` list, each under `field` or `field[i]`: the count and total
/// size are bounded, no argument may hold a NUL (it cannot reach a process), and a command's
/// first element is the program, so it must not be empty.
pub fn argv_violations(argv: &[String], field: &str, names_program: bool) -> Vec<(String, String)> {
    use spawn_limits::*;
    let mut problems = Vec::new();
    let bytes: usize = argv.iter().map(String::len).sum();
    if argv.len() > COMMAND_ARGS_MAX || bytes > COMMAND_BYTES_MAX {
        problems.push((
            field.to_string(),
            format!(
                "at most {COMMAND_ARGS_MAX} arguments and {COMMAND_BYTES_MAX} bytes (got {} of {bytes})",
                argv.len()
            ),
        ));
    }
    if names_program && argv.first().is_some_and(String::is_empty) {
        problems.push((format!("{field}[0]"), "is the program to run and must not be empty".into()));
    }
    for (i, arg) in argv.iter().enumerate() {
        if arg.contains('\0') {
            problems.push((format!("{field}[{i}]"), "must not contain NUL".into()));
        }
    }
    problems
}

impl Executable {
    /// The executable with its environment's values: what the Spawn action hands the drone that
    /// runs the backend, and nothing else may send.
    pub fn to_spawn_proto(&self) -> v1::Executable {
        v1::Executable { env: self.env.clone().into_iter().collect(), ..v1::Executable::from(self) }
    }
}

impl From<&Executable> for v1::Executable {
    /// The environment's keys with [`REDACTED`] values: what anyone who may read a backend sees.
    fn from(e: &Executable) -> Self {
        v1::Executable {
            image: e.image.clone(),
            command: e.command.clone(),
            args: e.args.clone(),
            env: e.env.keys().map(|name| (name.clone(), REDACTED.to_string())).collect(),
            pull_policy: e.pull_policy.to_proto() as i32,
            container_port: u32::from(e.container_port),
            resources: Some(e.resources.into()),
        }
    }
}

impl fmt::Debug for Executable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env: BTreeMap<&str, &str> = self.env.keys().map(|name| (name.as_str(), REDACTED)).collect();
        f.debug_struct("Executable")
            .field("image", &self.image)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &env)
            .field("pull_policy", &self.pull_policy)
            .field("container_port", &self.container_port)
            .field("resources", &self.resources)
            .finish()
    }
}

impl fmt::Debug for SpawnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpawnConfig")
            .field("executable", &self.executable)
            .field("cluster", &self.cluster)
            .field("pool", &self.pool)
            .field("labels", &self.labels)
            .field("lifetime_limit", &self.lifetime_limit)
            .field("max_idle", &self.max_idle)
            .field("static_token", &self.static_token.as_ref().map(|_| REDACTED))
            .finish()
    }
}

impl From<&SpawnConfig> for v1::SpawnConfig {
    /// What readers of a backend see (`GetBackend`, `ListBackends`, `Connect`'s `backend`): the
    /// environment's values are [`REDACTED`] and the static token is left out.
    fn from(c: &SpawnConfig) -> Self {
        v1::SpawnConfig {
            executable: Some((&c.executable).into()),
            cluster: c.cluster.clone(),
            pool: c.pool.clone(),
            labels: c.labels.clone().into_iter().collect(),
            lifetime_limit: c.lifetime_limit.map(duration_to_proto),
            max_idle: c.max_idle.map(duration_to_proto),
            static_token: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_config() -> v1::SpawnConfig {
        v1::SpawnConfig {
            executable: Some(v1::Executable { image: "hangar/test:1".into(), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn spawn_config_fills_defaults() {
        let config = SpawnConfig::from_proto(&valid_config(), "spawn_config").unwrap();
        assert_eq!(config.cluster, "default");
        assert_eq!(config.pool, "default");
        assert_eq!(config.executable.container_port, 8080);
        assert_eq!(config.executable.pull_policy, PullPolicy::IfNotPresent);
        assert_eq!(config.static_token, None);
    }

    #[test]
    fn command_and_args_travel_apart_and_rows_from_before_args_still_read() {
        let mut wire = valid_config();
        let exe = wire.executable.as_mut().unwrap();
        exe.command = vec!["/bin/server".into(), "--verbose".into()];
        exe.args = vec!["serve".into(), "--port=1".into()];
        let config = SpawnConfig::from_proto(&wire, "spawn_config").unwrap();
        assert_eq!(config.executable.command, ["/bin/server", "--verbose"]);
        assert_eq!(config.executable.args, ["serve", "--port=1"]);
        let back = v1::Executable::from(&config.executable);
        let sent = wire.executable.as_ref().unwrap();
        assert_eq!((back.command, back.args), (sent.command.clone(), sent.args.clone()));

        let mut stored = serde_json::to_value(&config.executable).unwrap();
        stored.as_object_mut().unwrap().remove("args");
        let old: Executable = serde_json::from_value(stored).unwrap();
        assert!(old.args.is_empty());
    }

    #[test]
    fn spawn_config_names_each_bad_field() {
        let mut config = valid_config();
        let exe = config.executable.as_mut().unwrap();
        exe.image = String::new();
        exe.env.insert("HANGAR_BACKEND_ID".into(), "x".into());
        exe.env.insert("BIG".into(), "x".repeat(70_000));
        exe.container_port = 70_000;
        config.pool = "Bad_Pool".into();
        config.max_idle = Some(prost_types::Duration { seconds: 0, nanos: 1_000 });
        config.static_token = "short".into();
        let violations = SpawnConfig::from_proto(&config, "spawn_config").unwrap_err();
        let fields: Vec<&str> = violations.iter().map(|(f, _)| f.as_str()).collect();
        for expected in [
            "spawn_config.executable.image",
            "spawn_config.executable.env[\"HANGAR_BACKEND_ID\"]",
            "spawn_config.executable.env",
            "spawn_config.executable.container_port",
            "spawn_config.pool",
            "spawn_config.max_idle",
            "spawn_config.static_token",
        ] {
            assert!(fields.contains(&expected), "{expected} missing from {fields:?}");
        }
    }

    #[test]
    fn every_field_a_controller_can_check_is_refused_under_its_own_path() {
        type Edit = fn(&mut v1::SpawnConfig);
        fn exe(c: &mut v1::SpawnConfig) -> &mut v1::Executable {
            c.executable.as_mut().unwrap()
        }
        let cases: Vec<(Edit, &str, &str)> = vec![
            (|c| exe(c).image = "./my-server".into(), "spawn_config.executable.image", "relative path"),
            (|c| exe(c).image = "Acme/App".into(), "spawn_config.executable.image", "lowercase"),
            (|c| exe(c).command = vec![String::new()], "spawn_config.executable.command[0]", "program"),
            (|c| exe(c).command = vec!["/bin/x".into(), "a\0b".into()], "spawn_config.executable.command[1]", "NUL"),
            (|c| exe(c).command = vec!["x".into(); 257], "spawn_config.executable.command", "at most 256"),
            (|c| exe(c).args = vec!["a".into(), "\0".into()], "spawn_config.executable.args[1]", "NUL"),
            (|c| exe(c).args = vec!["x".repeat(70_000)], "spawn_config.executable.args", "65536 bytes"),
            (|c| exe(c).env = [("A=B".into(), "v".into())].into(), "spawn_config.executable.env[\"A=B\"]", "names"),
            (|c| exe(c).env = [(String::new(), "v".into())].into(), "spawn_config.executable.env[\"\"]", "names"),
            (|c| exe(c).env = [("A".into(), "\0".into())].into(), "spawn_config.executable.env[\"A\"]", "NUL"),
            (|c| exe(c).container_port = 65_536, "spawn_config.executable.container_port", "1–65535"),
            (|c| exe(c).pull_policy = 9, "spawn_config.executable.pull_policy", "unknown"),
            (
                |c| exe(c).resources = Some(v1::ResourceLimits { memory_bytes: u64::MAX, ..Default::default() }),
                "spawn_config.executable.resources.memory_bytes",
                "1 PiB",
            ),
            (
                |c| exe(c).resources = Some(v1::ResourceLimits { memory_bytes: 1, ..Default::default() }),
                "spawn_config.executable.resources.memory_bytes",
                "4 MiB",
            ),
            (
                |c| exe(c).resources = Some(v1::ResourceLimits { pids: u64::MAX, ..Default::default() }),
                "spawn_config.executable.resources.pids",
                "at most",
            ),
            (
                |c| exe(c).resources = Some(v1::ResourceLimits { cpu_millis: 2_000_000, ..Default::default() }),
                "spawn_config.executable.resources.cpu_millis",
                "1024 cores",
            ),
            (
                |c| c.lifetime_limit = Some(prost_types::Duration { seconds: -5, nanos: 0 }),
                "spawn_config.lifetime_limit",
                "at least",
            ),
            (|c| c.labels = [("team".into(), "a\nb".into())].into(), "spawn_config.labels[\"team\"]", "control"),
            (|c| c.labels = [(String::new(), "x".into())].into(), "spawn_config.labels[\"\"]", "1–63"),
            (|c| c.cluster = "EU".into(), "spawn_config.cluster", "lowercase"),
            (|c| c.executable = None, "spawn_config.executable", "required"),
        ];
        for (edit, field, says) in cases {
            let mut config = valid_config();
            edit(&mut config);
            let violations = SpawnConfig::from_proto(&config, "spawn_config").expect_err(field);
            assert!(
                violations.iter().any(|(f, d)| f == field && d.contains(says)),
                "{field} saying {says:?} missing from {violations:?}"
            );
        }
        let mut fine = valid_config();
        let exe = fine.executable.as_mut().unwrap();
        exe.image = "/usr/local/bin/server".into();
        exe.command = vec!["/usr/bin/env".into(), String::new()];
        exe.args = vec![String::new()];
        exe.resources = Some(v1::ResourceLimits { cpu_millis: 500, memory_bytes: 64 << 20, pids: 128 });
        assert!(SpawnConfig::from_proto(&fine, "spawn_config").is_ok(), "an empty argument after the program is fine");
    }

    #[test]
    fn env_values_and_the_static_token_reach_only_the_spawn_proto() {
        let mut wire = valid_config();
        wire.executable.as_mut().unwrap().env = [("API_KEY".to_string(), "k-0123456789".to_string())].into();
        wire.static_token = "static-0123456789abcdef".into();
        let config = SpawnConfig::from_proto(&wire, "spawn_config").unwrap();
        assert_eq!(config.executable.to_spawn_proto().env["API_KEY"], "k-0123456789", "the drone's copy");
        let read = v1::SpawnConfig::from(&config);
        assert_eq!(read.executable.as_ref().unwrap().env["API_KEY"], REDACTED, "the key stays, its value does not");
        assert_eq!(read.static_token, "");
        let debug = format!("{config:?} {:?}", config.executable);
        assert!(debug.contains("API_KEY") && debug.contains(REDACTED), "{debug}");
        for secret in ["k-0123456789", "static-0123456789abcdef"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
    }

    #[test]
    fn pull_policy_and_limits_convert_to_both_protocols_and_back() {
        for &policy in PullPolicy::ALL {
            assert_eq!(PullPolicy::from_proto(policy.to_proto() as i32), Some(policy));
            assert_eq!(PullPolicy::from_executor_proto(policy.to_executor_proto() as i32), Some(policy));
        }
        assert_eq!(PullPolicy::from_executor_proto(executor_v1::PullPolicy::Unspecified as i32), None);
        assert_eq!(PullPolicy::from_executor_proto(99), None);
        let limits = ResourceLimits { cpu_millis: 500, memory_bytes: 256 << 20, pids: 64 };
        assert_eq!(ResourceLimits::from(v1::ResourceLimits::from(limits)), limits);
        assert_eq!(ResourceLimits::from(executor_v1::ResourceLimits::from(limits)), limits);
    }
}
