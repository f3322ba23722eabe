//! The command line as clap sees it: the command tree with each command's arguments, the value
//! types and parsers they share, and the examples `--help` shows.

use crate::{ClientError, ClientOptions, CredentialFlags, Credentials, DEFAULT_CONTROLLER, HangarClient};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hangar::domain::{BackendFilter, BackendState, NodeFilter, NodeKind, NodeState, PullPolicy};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "hangar",
    version,
    about = "Inspect and manage a Hangar cluster.",
    after_help = TOP_HELP,
    propagate_version = true
)]
pub struct Cli {
    /// Controller to talk to (http://HOST:PORT, or https://HOST:PORT for TLS); several,
    /// comma-separated, of one cluster are failed over between.
    #[arg(
        long,
        global = true,
        env = "HANGAR_CONTROLLER",
        default_value = DEFAULT_CONTROLLER,
        value_name = "URL",
        display_order = 100
    )]
    pub controller: String,

    /// `table` for people, `json` for scripts (exactly one JSON document on stdout).
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        default_value_t = OutputFormat::Table,
        value_name = "FORMAT",
        display_order = 101
    )]
    pub output: OutputFormat,

    /// Token and TLS towards the controller (docs/security.md).
    #[command(flatten)]
    pub credentials: CredentialFlags,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The client options of every command: defaults, with the credentials from the flags and
    /// the environment.
    pub fn client_options(&self) -> Result<ClientOptions, ClientError> {
        Ok(ClientOptions {
            credentials: Credentials::from_env_and_flags(&self.credentials)?,
            ..ClientOptions::default()
        })
    }

    /// A client of `--controller` with [`Cli::client_options`].
    pub async fn connect(&self) -> Result<HangarClient, ClientError> {
        HangarClient::connect_with(&self.controller, self.client_options()?).await
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Drones and proxies: list, inspect, drain, undrain.
    #[command(subcommand)]
    Nodes(NodesCommand),
    /// Get the backend of a key, starting it when there is none; print its URL.
    #[command(after_help = CONNECT_EXAMPLES)]
    Connect(Box<ConnectArgs>),
    /// Session backends: list, inspect, watch, terminate.
    #[command(subcommand)]
    Backends(BackendsCommand),
    /// Print the shell completion script for bash, zsh or fish.
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: super::CompletionShell,
}

#[derive(Debug, Subcommand)]
pub enum BackendsCommand {
    /// List the backends that match a filter (all of them by default).
    #[command(after_help = BACKENDS_LIST_EXAMPLES)]
    List(BackendsListArgs),
    /// Show one backend in detail: status, termination, drone, address, spawn config.
    #[command(after_help = BACKENDS_GET_EXAMPLES)]
    Get(BackendIdArgs),
    /// With an id or key: the backend's states as they happen, until it is TERMINATED. Without: the
    /// matching backends, then every change to them across the cluster, until Ctrl-C.
    #[command(after_help = BACKENDS_WATCH_EXAMPLES)]
    Watch(BackendsWatchArgs),
    /// Stop a backend: soft (SIGTERM, then kill) or, with --hard, at once.
    #[command(after_help = BACKENDS_TERMINATE_EXAMPLES)]
    Terminate(BackendsTerminateArgs),
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The backend's key: NAME, NS/NAME or NS/NAME@TAG.
    #[arg(value_parser = parse_key, value_name = "KEY", required_unless_present = "no_key")]
    pub key: Option<KeyArg>,

    /// Start a fresh backend that no key names (needs --image); every call starts another one.
    #[arg(long, conflicts_with_all = ["key", "namespace", "tag"])]
    pub no_key: bool,

    /// Namespace of the key (default "default"), unless KEY is NS/NAME.
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,

    /// Tag of the key: the version of the backend code its holder must run.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,

    /// Image (docker runtime) or program (process runtime) to start when the key has no live
    /// backend. Without it only a live backend is returned.
    #[arg(long, value_name = "IMAGE", required_if_eq("no_key", "true"))]
    pub image: Option<String>,

    /// Environment of the backend; repeat for several.
    #[arg(long, value_parser = parse_env, value_name = "KEY=VALUE")]
    pub env: Vec<(String, String)>,

    /// Program to run instead of the image's ENTRYPOINT (process runtime: instead of the program
    /// --image names). One value: its arguments come with --arg or after `--`.
    #[arg(long, value_name = "PROG")]
    pub command: Option<String>,

    /// An argument instead of the image's CMD; repeat for several, in order. May start with '-'.
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,

    /// Arguments instead of the image's CMD, everything after `--` (like --arg for each).
    #[arg(last = true, value_name = "ARGS", conflicts_with = "args")]
    pub trailing_args: Vec<String>,

    /// Port the backend listens on inside its container (8080 when left out).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..), value_name = "PORT")]
    pub port: Option<u16>,

    /// CPU limit in millicores (1000 = one core).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub cpu_millis: Option<u64>,

    /// Memory limit: 256MiB, 1.5GiB, 512M, or bytes.
    #[arg(long, value_parser = parse_memory, value_name = "SIZE")]
    pub memory: Option<u64>,

    /// Process count limit.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub pids: Option<u64>,

    /// Cluster to place the backend in ("default" when left out).
    #[arg(long, value_name = "CLUSTER")]
    pub cluster: Option<String>,

    /// Pool within the cluster ("default" when left out).
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,

    /// Label of the backend; repeat for several.
    #[arg(long, value_parser = parse_label, value_name = "KEY=VALUE")]
    pub label: Vec<(String, String)>,

    /// Terminate (LIFETIME) after this long whatever the traffic, e.g. 8h.
    #[arg(long, value_parser = parse_limit, value_name = "DURATION")]
    pub lifetime: Option<Duration>,

    /// Terminate (SWEPT) after this long without traffic, e.g. 10m.
    #[arg(long, value_parser = parse_limit, value_name = "DURATION")]
    pub max_idle: Option<Duration>,

    /// A token that never expires, for clients that cannot refresh one.
    #[arg(long, value_name = "TOKEN")]
    pub static_token: Option<String>,

    /// When to pull the image.
    #[arg(long, value_enum, value_name = "POLICY")]
    pub pull: Option<PullArg>,

    /// Identity of the user this connection is for; the backend sees it as the
    /// `x-verified-user` header of requests through the proxy.
    #[arg(long, value_parser = parse_user, value_name = "NAME")]
    pub user: Option<String>,

    /// A claim about the user; the backend sees it as the `x-verified-KEY` header of requests
    /// through the proxy. Repeat for several.
    #[arg(long, value_parser = parse_claim, value_name = "KEY=VALUE")]
    pub claim: Vec<(String, String)>,

    /// Follow the backend until it is READY (exit 0) or TERMINATED (exit 1).
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits for READY.
    #[arg(long, requires = "wait", value_parser = parse_limit, default_value = "2m", value_name = "DURATION")]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct BackendsListArgs {
    /// Only backends in this state; repeat or comma-separate for several.
    #[arg(long, value_parser = parse_backend_state, value_delimiter = ',', value_name = "STATE")]
    pub state: Vec<BackendState>,

    /// Only backends on this drone.
    #[arg(long, value_name = "ID")]
    pub drone: Option<String>,

    /// Only backends whose key is in this namespace.
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,

    /// Only backends of this cluster.
    #[arg(long, value_name = "CLUSTER")]
    pub cluster: Option<String>,

    /// Only backends whose key name starts with this.
    #[arg(long, value_name = "PREFIX")]
    pub key_prefix: Option<String>,

    /// Only backends of this pool.
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,

    /// Only backends carrying this label with this value; repeat for several (all must match).
    #[arg(long, value_parser = parse_label, value_name = "KEY=VALUE")]
    pub label: Vec<(String, String)>,
}

impl BackendsListArgs {
    /// Whether a filter flag was given.
    pub fn has_filter(&self) -> bool {
        !self.state.is_empty()
            || self.drone.is_some()
            || self.namespace.is_some()
            || self.cluster.is_some()
            || self.key_prefix.is_some()
            || self.pool.is_some()
            || !self.label.is_empty()
    }

    /// The domain filter; an error names a label given twice with different values.
    pub fn to_filter(&self) -> Result<BackendFilter, String> {
        let non_empty = |s: &Option<String>| s.as_ref().filter(|s| !s.is_empty()).cloned();
        let mut labels = BTreeMap::new();
        for (key, value) in &self.label {
            if let Some(previous) = labels.insert(key.clone(), value.clone())
                && previous != *value
            {
                return Err(format!("--label {key} is given twice ({key}={previous} and {key}={value}); give one"));
            }
        }
        let mut states = self.state.clone();
        states.sort();
        states.dedup();
        Ok(BackendFilter {
            states,
            drone_id: non_empty(&self.drone),
            key_namespace: non_empty(&self.namespace),
            cluster: non_empty(&self.cluster),
            pool: non_empty(&self.pool),
            labels,
            key_prefix: non_empty(&self.key_prefix),
        })
    }
}

#[derive(Debug, Args)]
pub struct BackendsWatchArgs {
    /// Backend id, or a key (its live backend, or the latest it had): follow this one backend
    /// to TERMINATED. Without it, watch every backend the filter flags match.
    #[arg(
        value_name = "BACKEND",
        conflicts_with_all = ["state", "drone", "namespace", "cluster", "key_prefix", "pool", "label", "bookmark_interval"]
    )]
    pub id: Option<String>,

    /// Filter flags: only for the watch of every backend (without BACKEND).
    #[command(flatten)]
    pub filter: BackendsListArgs,

    /// Ask for a BOOKMARK line after this much quiet time (e.g. 30s), to show the watch is alive.
    #[arg(long, value_parser = parse_interval, value_name = "DURATION")]
    pub bookmark_interval: Option<Duration>,
}

impl BackendsWatchArgs {
    /// Whether a filter flag was given (they only apply to the watch of every backend).
    pub fn has_filter(&self) -> bool {
        self.filter.has_filter()
    }

    /// The domain filter; an error names a label given twice with different values.
    pub fn to_filter(&self) -> Result<BackendFilter, String> {
        self.filter.to_filter()
    }
}

#[derive(Debug, Args)]
pub struct BackendIdArgs {
    /// Backend id, as `hangar connect` and `hangar backends list` show it, or a key (NAME, NS/NAME
    /// or NS/NAME@TAG): its live backend, or the latest it had.
    #[arg(value_name = "BACKEND")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct BackendsTerminateArgs {
    /// Backend id, or a key (NAME, NS/NAME or NS/NAME@TAG): its live backend.
    #[arg(value_name = "BACKEND")]
    pub id: String,

    /// Kill at once instead of SIGTERM and a grace period.
    #[arg(long)]
    pub hard: bool,
}

#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// List the nodes that match a filter (all of them by default).
    #[command(after_help = NODES_LIST_EXAMPLES)]
    List(NodesListArgs),
    /// Print the matching nodes, then every change to them as it happens, until Ctrl-C.
    #[command(after_help = NODES_WATCH_EXAMPLES)]
    Watch(NodesWatchArgs),
    /// Show one node in detail, labels and resources included.
    #[command(after_help = NODES_GET_EXAMPLES)]
    Get(NodesGetArgs),
    /// Stop placing new backends on a drone, optionally terminating the rest after a deadline.
    #[command(after_help = NODES_DRAIN_EXAMPLES)]
    Drain(NodesDrainArgs),
    /// Undo a drain: the drone takes new backends again, and its drain deadline is dropped.
    #[command(after_help = NODES_UNDRAIN_EXAMPLES)]
    Undrain(NodesUndrainArgs),
}

#[derive(Debug, Args)]
pub struct NodesListArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Debug, Args)]
pub struct NodesWatchArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    /// Ask for a BOOKMARK line after this much quiet time (e.g. 30s), to show the watch is alive.
    #[arg(long, value_parser = parse_interval, value_name = "DURATION")]
    pub bookmark_interval: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct NodesGetArgs {
    /// Node id, or the node's name where only one node has it (`hangar nodes list` shows both).
    #[arg(value_name = "NODE")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct NodesDrainArgs {
    /// Id of the drone to drain, or its name where only one drone has it.
    #[arg(value_name = "DRONE")]
    pub id: String,

    /// Soft-terminate the backends still running after this long (e.g. 90s, 10m, 1h30m).
    #[arg(long, value_parser = parse_deadline, value_name = "DURATION")]
    pub deadline: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct NodesUndrainArgs {
    /// Id of the drained drone, or its name where only one drone has it.
    #[arg(value_name = "DRONE")]
    pub id: String,
}

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

/// `--user NAME`: a valid header value (printable ASCII, at most 256 characters).
pub fn parse_user(text: &str) -> Result<String, String> {
    match hangar::domain::identity_value_problem(text) {
        Some(problem) => Err(format!("the user {problem}")),
        None => Ok(text.to_string()),
    }
}

/// `--claim KEY=VALUE`: KEY becomes the header `x-verified-KEY`, so it is lowercase letters,
/// digits and '-'; VALUE is a valid header value.
pub fn parse_claim(text: &str) -> Result<(String, String), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("expected KEY=VALUE, got `{text}` (e.g. --claim team=blue)"));
    };
    if let Some(problem) = hangar::domain::claim_name_problem(key) {
        return Err(format!(
            "the claim name {problem}; it becomes the header x-verified-NAME (e.g. --claim team=blue)"
        ));
    }
    if let Some(problem) = hangar::domain::identity_value_problem(value) {
        return Err(format!("the value of claim {key} {problem}"));
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

const TOP_HELP: &str = concat!(
    "\
Examples:
  hangar-server dev                      # start a local controller with one drone
  hangar nodes list                      # every drone and proxy, as a table
  hangar connect docs/doc-1 --image ghcr.io/acme/editor:2 --wait
  hangar backends list --state ready
  hangar nodes list --state ready -o json
  hangar nodes watch --kind drone         # every change, live, until Ctrl-C
  hangar --controller http://ctl:7070 nodes get nd-0193…
  hangar --controller https://ctl:7070 --tls-ca ca.pem --tls-cert alice.pem --tls-key alice.key nodes list

The controller address comes from --controller, else $HANGAR_CONTROLLER, else http://127.0.0.1:7070.
Credentials left out on the command line come from HANGAR_TOKEN, HANGAR_TOKEN_FILE and HANGAR_TLS_*
(docs/security.md).",
    "\n\n",
    exit_codes_help!()
);

const NODES_LIST_EXAMPLES: &str = "\
Examples:
  hangar nodes list --kind drone --state ready,draining
  hangar nodes list --cluster eu-1 --pool gpu --label zone=a --label tier=batch
  hangar nodes list -o json | jq -r '.nodes[] | select(.state == \"UNHEALTHY\") | .id'

Filters combine with AND; repeated --kind or --state values combine with OR.
With -o json the output is one document: {\"revision\": N, \"nodes\": [...]}. Watching from that
revision afterwards misses no change.";

const NODES_WATCH_EXAMPLES: &str = "\
Examples:
  hangar nodes watch                               # the current nodes, then every change
  hangar nodes watch --state unhealthy,offline     # a node entering the filter shows as ADDED
  hangar nodes watch -o json | jq -c 'select(.type != \"BOOKMARK\")'
  hangar --controller http://ctl-a:7070,http://ctl-b:7070 nodes watch

One line per event, flushed at once. First the matching nodes (ADDED), then
`-- snapshot at revision N; watching --`, then ADDED, MODIFIED and REMOVED as they happen.
With -o json every line is one JSON object: {\"type\": \"ADDED\", \"revision\": N, \"node\": {...}};
SNAPSHOT_START / SNAPSHOT_END frame a snapshot (again after a re-list: forget what came before) and
BOOKMARK (with --bookmark-interval) only carries a revision.
A dropped stream is resumed from the last revision seen, on the next controller when --controller
lists several (comma-separated); each reconnect is reported on stderr. Ctrl-C ends the watch.";

const NODES_GET_EXAMPLES: &str = "\
Examples:
  hangar nodes get nd-0193…
  hangar nodes get dev-drone                     # a name, where only one node has it
  hangar nodes get nd-0193… -o json | jq .labels

Find ids and names with `hangar nodes list`. A name is unique within a cluster and kind: where
several nodes have it, the command names them and asks for an id.";

const NODES_DRAIN_EXAMPLES: &str = "\
Examples:
  hangar nodes drain nd-0193…                  # no new backends; running ones stay
  hangar nodes drain nd-0193… --deadline 10m   # and soft-terminate what still runs in 10 minutes
  hangar nodes drain dev-drone                 # by name, where only one drone has it

Only drones can be drained. Draining again is harmless; the drain outlives reconnects.
`hangar nodes undrain DRONE` undoes it.";

const NODES_UNDRAIN_EXAMPLES: &str = "\
Examples:
  hangar nodes list --kind drone --state draining   # the drained drones
  hangar nodes undrain nd-0193…                      # READY again; a pending deadline terminates nothing

Backends a passed deadline already asked to stop are not brought back. Undraining a drone that is
not draining changes nothing.";

const CONNECT_EXAMPLES: &str = "\
Examples:
  hangar connect doc-1 --image ghcr.io/acme/editor:2          # namespace \"default\"
  hangar connect docs/doc-1@v2 --image ghcr.io/acme/editor:2 --env MODE=edit --wait
  hangar connect docs/doc-1 --user alice --claim team=blue    # the backend sees x-verified-user, x-verified-team
  hangar connect doc-1 --namespace docs --tag v2 --image editor:2 --memory 512MiB --cpu-millis 500 \\
      --max-idle 10m --lifetime 8h --label team=docs
  hangar connect docs/doc-1                                   # only an existing backend
  hangar connect --no-key --image python:3.12 --port 8000 --command python -- -m http.server 8000
  hangar connect --no-key --image python:3.12 --port 8000 --command python --arg -m --arg http.server --arg 8000
  hangar connect doc-1 --image editor:2 -- --log-level debug      # the image's ENTRYPOINT, other arguments
  hangar connect doc-1 --image editor:2 -o json | jq -r .url

A key (NAME, NS/NAME or NS/NAME@TAG) names at most one live backend: connecting again returns it
(\"found\"), and a key held with another tag is refused (KEY_TAG_MISMATCH). Without --image only a live
backend can be returned. --image is an image reference, or an absolute program path for a drone
with the process runtime.
As in Kubernetes, --command PROG replaces the image's ENTRYPOINT (and drops its CMD), and the
arguments (--arg, repeated, or everything after `--`) replace its CMD.
With --wait, one line per state until READY (exit 0), or the termination reason (exit 1).
With -o json the output is one document: {\"backend_id\", \"spawned\", \"state\", \"url\", \"token\", …}.";

const BACKENDS_LIST_EXAMPLES: &str = "\
Examples:
  hangar backends list                              # every backend, terminated ones included
  hangar backends list --state ready,waiting --namespace docs
  hangar backends list --drone nd-0193… -o json | jq -r '.backends[].id'
  hangar backends list --key-prefix doc- --pool gpu --label team=blue

Filters combine with AND; repeated --state values combine with OR, repeated --label values with
AND. With -o json the output is one document: {\"backends\": [...]}.";

const BACKENDS_GET_EXAMPLES: &str = "\
Examples:
  hangar backends get bk-0193…
  hangar backends get docs/doc-1               # the key's live backend, or the latest it had
  hangar backends get bk-0193… -o json | jq .status.termination_reason";

const BACKENDS_WATCH_EXAMPLES: &str = "\
Examples:
  hangar backends watch bk-0193…           # its history, then each change, until TERMINATED
  hangar backends watch bk-0193… -o json   # one JSON object per line
  hangar backends watch docs/doc-1         # a key: its live backend, or the latest it had
  hangar backends watch                    # every backend, then every change in the cluster, until Ctrl-C
  hangar backends watch --namespace docs --state ready,waiting   # leaving the filter shows as REMOVED
  hangar backends watch --key-prefix doc- --label team=blue -o json | jq -c 'select(.type != \"BOOKMARK\")'

A dropped stream is resumed without repeating a state. Without an id, the watch prints the matching
backends, `-- snapshot at revision N; watching --`, then ADDED, MODIFIED and REMOVED as they happen;
it resumes from the last revision after a dropped stream (moving to the next --controller if
several are given) and lists again if that revision was compacted. -o json prints NDJSON: one
{\"type\", \"revision\", \"backend\"} object per line.";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  hangar completions bash > ~/.local/share/bash-completion/completions/hangar
  hangar completions zsh > \"${fpath[1]}/_hangar\"     # a directory on $fpath
  hangar completions fish > ~/.config/fish/completions/hangar.fish

Open a new shell afterwards. The script completes every command, flag and enum value.";

const BACKENDS_TERMINATE_EXAMPLES: &str = "\
Examples:
  hangar backends terminate bk-0193…          # SIGTERM, then a kill after the grace period
  hangar backends terminate bk-0193… --hard   # kill at once
  hangar backends terminate docs/doc-1        # a key: its live backend
  hangar backends watch bk-0193…               # follow it to TERMINATED";
