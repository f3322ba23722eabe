//! Argument types and value parsers shared by the commands.

use clap::{Args, ValueEnum};
use hangar::domain::{NodeFilter, NodeKind, NodeState};
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
