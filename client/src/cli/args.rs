//! Argument types and value parsers shared by the commands.

use clap::{Args, ValueEnum};
use hangar::domain::{NodeFilter, NodeKind, NodeState, PullPolicy};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns and key: value views.
    Table,
    /// One JSON document; snake_case keys, enums as "READY", RFC 3339 times.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    Drone,
    Proxy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Ready,
    Draining,
    Unhealthy,
    Offline,
}

impl From<KindArg> for NodeKind {
    fn from(kind: KindArg) -> Self {
        match kind {
            KindArg::Drone => NodeKind::Drone,
            KindArg::Proxy => NodeKind::Proxy,
        }
    }
}

impl From<StateArg> for NodeState {
    fn from(state: StateArg) -> Self {
        match state {
            StateArg::Ready => NodeState::Ready,
            StateArg::Draining => NodeState::Draining,
            StateArg::Unhealthy => NodeState::Unhealthy,
            StateArg::Offline => NodeState::Offline,
        }
    }
}

/// Node filter flags, shared by `nodes list` and `nodes watch`.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Only nodes of this kind; repeat or comma-separate for several.
    #[arg(long, value_enum, ignore_case = true, value_delimiter = ',', value_name = "KIND")]
    pub kind: Vec<KindArg>,

    /// Only nodes in this state; repeat or comma-separate for several.
    #[arg(long, value_enum, ignore_case = true, value_delimiter = ',', value_name = "STATE")]
    pub state: Vec<StateArg>,

    /// Only nodes of this cluster.
    #[arg(long, value_name = "CLUSTER")]
    pub cluster: Option<String>,

    /// Only nodes of this pool.
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,

    /// Only nodes carrying this label with this value; repeat for several (all must match).
    #[arg(long, value_parser = parse_label, value_name = "KEY=VALUE")]
    pub label: Vec<(String, String)>,
}

impl FilterArgs {
    /// The domain filter; an error names a label given twice with different values.
    pub fn to_filter(&self) -> Result<NodeFilter, String> {
        let mut labels = BTreeMap::new();
        for (key, value) in &self.label {
            if let Some(previous) = labels.insert(key.clone(), value.clone())
                && previous != *value
            {
                return Err(format!(
                    "--label {key} is given twice ({key}={previous} and {key}={value}); no node can match both"
                ));
            }
        }
        let mut kinds: Vec<NodeKind> = self.kind.iter().copied().map(Into::into).collect();
        kinds.sort();
        kinds.dedup();
        let mut states: Vec<NodeState> = self.state.iter().copied().map(Into::into).collect();
        states.sort();
        states.dedup();
        let non_empty = |s: &Option<String>| s.as_ref().filter(|s| !s.is_empty()).cloned();
        Ok(NodeFilter { kinds, states, cluster: non_empty(&self.cluster), pool: non_empty(&self.pool), labels })
    }
}

/// `KEY=VALUE`; the key must be non-empty, the value may be empty.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("expected KEY=VALUE, got `{text}` (e.g. --label zone=eu-1a)"));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("the label key is empty in `{text}`; expected KEY=VALUE"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// A positive interval such as `30s` or `1m`.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration ({e}); use e.g. 10s or 1m"))?;
    if duration.is_zero() {
        return Err("the interval must be longer than zero".to_string());
    }
    Ok(duration)
}

/// A positive duration such as `90s`, `10m`, `1h30m` or `2h 15m`.
pub fn parse_deadline(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration ({e}); use e.g. 90s, 10m or 1h30m"))?;
    if duration.is_zero() {
        return Err("the deadline must be longer than zero; leave out --deadline to drain without one".to_string());
    }
    Ok(duration)
}

/// When to pull the image (`--pull`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PullArg {
    Always,
    IfNotPresent,
    Never,
}

impl From<PullArg> for PullPolicy {
    fn from(pull: PullArg) -> Self {
        match pull {
            PullArg::Always => PullPolicy::Always,
            PullArg::IfNotPresent => PullPolicy::IfNotPresent,
            PullArg::Never => PullPolicy::Never,
        }
    }
}

/// A key as typed: `NAME`, `NS/NAME` or `NS/NAME@TAG`; what is left out comes from
/// `--namespace` / `--tag` or the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyArg {
    pub namespace: Option<String>,
    pub name: String,
    pub tag: Option<String>,
}

pub fn parse_key(text: &str) -> Result<KeyArg, String> {
    let (rest, tag) = match text.split_once('@') {
        Some((_, tag)) if tag.is_empty() || tag.contains('@') => {
            return Err(format!("`{text}` has an empty or second @TAG; expected NAME, NS/NAME or NS/NAME@TAG"));
        }
        Some((rest, tag)) => (rest, Some(tag.to_string())),
        None => (text, None),
    };
    let (namespace, name) = match rest.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, rest),
    };
    if name.is_empty() || name.contains('/') || namespace.is_some_and(str::is_empty) {
        return Err(format!("`{text}` is not a key; expected NAME, NS/NAME or NS/NAME@TAG (e.g. docs/doc-1@v2)"));
    }
    if text.chars().any(char::is_whitespace) {
        return Err(format!("`{text}` contains whitespace; keys are single words like docs/doc-1"));
    }
    Ok(KeyArg { namespace: namespace.map(str::to_string), name: name.to_string(), tag })
}

/// `KEY=VALUE` for the backend's environment. Hangar sets `PORT` and `HANGAR_*` itself, so those
/// names are refused here instead of being silently overridden on the drone.
pub fn parse_env(text: &str) -> Result<(String, String), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("expected KEY=VALUE, got `{text}` (e.g. --env MODE=edit)"));
    };
    if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c == '\0') {
        return Err(format!("`{key}` is not an environment variable name; expected KEY=VALUE"));
    }
    if key == "PORT" || key.starts_with("HANGAR_") {
        return Err(format!("{key} is set by Hangar itself; use --port for the port the backend listens on"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Bytes as `268435456`, `256MiB`, `1.5GiB`, `512M` (powers of 1000 without the `i`, as in
/// Kubernetes); unit letters in any case.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid = || format!("`{text}` is not an amount of memory; use e.g. 256MiB, 1.5GiB or 512M");
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "ti" | "tib" => 1 << 40,
        _ => return Err(invalid()),
    };
    let bytes = number * multiplier as f64;
    if bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is out of range; use at least 1 byte (leave out --memory for no limit)"));
    }
    Ok(bytes.round() as u64)
}

/// A positive duration for a limit, e.g. `10m`, `1h`, `1h30m`.
pub fn parse_limit(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration ({e}); use e.g. 90s, 10m or 1h30m"))?;
    if duration.is_zero() {
        return Err("the duration must be longer than zero; leave the flag out for no limit".to_string());
    }
    Ok(duration)
}

/// A backend state for `--state`, in any case (`ready`, `HARD_TERMINATING`, `hard-terminating`).
pub fn parse_backend_state(text: &str) -> Result<hangar::domain::BackendState, String> {
    text.trim().replace('-', "_").parse().map_err(|e: hangar::domain::ParseEnumError| e.to_string())
}
