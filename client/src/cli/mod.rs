//! The `hangar` command line: argument definitions (clap derive), the commands, and rendering.
//!
//! `main` only parses and calls [`run`]. Tests and scripts can drive the same path with
//! [`Cli::try_parse_from`](clap::Parser::try_parse_from) and [`execute`], which returns what
//! would be printed instead of printing it.

mod args;
mod backends;
mod nodes;
pub mod render;

pub use args::{
    FilterArgs, KeyArg, OutputFormat, PullArg, parse_backend_state, parse_deadline, parse_env, parse_interval,
    parse_key, parse_label, parse_limit, parse_memory,
};
pub use backends::{connect, watch_backend};
pub use nodes::watch;

use crate::{BackendStatusView, ClientError, DEFAULT_CONTROLLER};
use clap::{Args, Parser, Subcommand};
use hangar::domain::BackendState;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

const TOP_EXAMPLES: &str = "\
Examples:
  hangar-server dev                      # start a local controller with one drone
  hangar nodes list                      # every drone and proxy, as a table
  hangar connect docs/doc-1 --image ghcr.io/acme/editor:2 --wait
  hangar backends list --state ready
  hangar nodes list --state ready -o json
  hangar nodes watch --kind drone         # every change, live, until Ctrl-C
  hangar --controller http://ctl:7070 nodes get nd-0193…

The controller address comes from --controller, else $HANGAR_CONTROLLER, else http://127.0.0.1:7070.";

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
  hangar nodes get nd-0193… -o json | jq .labels

Find ids with `hangar nodes list`.";

const NODES_DRAIN_EXAMPLES: &str = "\
Examples:
  hangar nodes drain nd-0193…                  # no new backends; running ones stay
  hangar nodes drain nd-0193… --deadline 10m   # and soft-terminate what still runs in 10 minutes

Only drones can be drained. Draining again is harmless; the drain outlives reconnects.";

const CONNECT_EXAMPLES: &str = "\
Examples:
  hangar connect doc-1 --image ghcr.io/acme/editor:2          # namespace \"default\"
  hangar connect docs/doc-1@v2 --image ghcr.io/acme/editor:2 --env MODE=edit --wait
  hangar connect doc-1 --namespace docs --tag v2 --image editor:2 --memory 512MiB --cpu-millis 500 \\
      --max-idle 10m --lifetime 8h --label team=docs
  hangar connect docs/doc-1                                   # only an existing backend
  hangar connect --no-key --image python:3.12 --port 8000 --command python -m http.server 8000
  hangar connect doc-1 --image editor:2 -o json | jq -r .url

A key (NAME, NS/NAME or NS/NAME@TAG) names at most one live backend: connecting again returns it
(\"found\"), and a key held with another tag is refused (KEY_TAG_MISMATCH). Without --image only a live
backend can be returned. --command takes every argument after it, so put it last.
With --wait, one line per state until READY (exit 0), or the termination reason (exit 1).
With -o json the output is one document: {\"backend_id\", \"spawned\", \"state\", \"url\", \"token\", …}.";

const BACKENDS_LIST_EXAMPLES: &str = "\
Examples:
  hangar backends list                              # every backend, terminated ones included
  hangar backends list --state ready,waiting --namespace docs
  hangar backends list --drone nd-0193… -o json | jq -r '.backends[].id'

Filters combine with AND; repeated --state values combine with OR.
With -o json the output is one document: {\"backends\": [...]}.";

const BACKENDS_GET_EXAMPLES: &str = "\
Examples:
  hangar backends get bk-0193…
  hangar backends get bk-0193… -o json | jq .status.termination_reason";

const BACKENDS_WATCH_EXAMPLES: &str = "\
Examples:
  hangar backends watch bk-0193…           # its history, then each change, until TERMINATED
  hangar backends watch bk-0193… -o json   # one JSON object per line

A dropped stream is resumed without repeating a state.";

const BACKENDS_TERMINATE_EXAMPLES: &str = "\
Examples:
  hangar backends terminate bk-0193…          # SIGTERM, then a kill after the grace period
  hangar backends terminate bk-0193… --hard   # kill at once
  hangar backends watch bk-0193…               # follow it to TERMINATED";

#[derive(Debug, Parser)]
#[command(
    name = "hangar",
    version,
    about = "Inspect and manage a Hangar cluster.",
    after_help = TOP_EXAMPLES,
    propagate_version = true
)]
pub struct Cli {
    /// Controller to talk to (http://HOST:PORT).
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

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Drones and proxies: list, inspect, drain.
    #[command(subcommand)]
    Nodes(NodesCommand),
    /// Get the backend of a key, starting it when there is none; print its URL.
    #[command(after_help = CONNECT_EXAMPLES)]
    Connect(Box<ConnectArgs>),
    /// Session backends: list, inspect, watch, terminate.
    #[command(subcommand)]
    Backends(BackendsCommand),
}

#[derive(Debug, Subcommand)]
pub enum BackendsCommand {
    /// List the backends that match a filter (all of them by default).
    #[command(after_help = BACKENDS_LIST_EXAMPLES)]
    List(BackendsListArgs),
    /// Show one backend in detail: status, termination, drone, address, spawn config.
    #[command(after_help = BACKENDS_GET_EXAMPLES)]
    Get(BackendIdArgs),
    /// Print the backend's states as they happen, until it is TERMINATED.
    #[command(after_help = BACKENDS_WATCH_EXAMPLES)]
    Watch(BackendIdArgs),
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

    /// Command and arguments instead of the image's default; takes everything after it.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "ARG")]
    pub command: Vec<String>,

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
}

#[derive(Debug, Args)]
pub struct BackendIdArgs {
    /// Backend id, as `hangar connect` and `hangar backends list` show it.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct BackendsTerminateArgs {
    /// Backend id.
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
    /// Node id, as `hangar nodes list` shows it.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct NodesDrainArgs {
    /// Id of the drone to drain.
    pub id: String,

    /// Soft-terminate the backends still running after this long (e.g. 90s, 10m, 1h30m).
    #[arg(long, value_parser = parse_deadline, value_name = "DURATION")]
    pub deadline: Option<Duration>,
}

/// Why a command failed: a usage mistake clap cannot see (exit 2) or an API error (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    /// `connect --wait` saw the backend end instead of becoming READY.
    #[error("backend {id} ended before it was ready: {}", render::termination(status))]
    Terminated { id: String, status: BackendStatusView },
    /// `connect --wait` gave up.
    #[error("backend {id} is not ready after {}; it is {state}", humantime::format_duration(*waited))]
    WaitTimeout { id: String, waited: Duration, state: BackendState },
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Client(_) | CliError::Terminated { .. } | CliError::WaitTimeout { .. } => ExitCode::from(1),
        }
    }
}

/// Runs the command and returns what it prints on stdout. `nodes watch` never ends by itself;
/// it is driven by [`watch`] instead. `connect` and `backends watch` end by themselves and are
/// buffered here; [`connect`] and [`watch_backend`] print their lines as they come (and keep the
/// progress printed before an error).
pub async fn execute(cli: &Cli) -> Result<String, CliError> {
    match &cli.command {
        Command::Nodes(command) => nodes::execute(cli, command).await,
        Command::Connect(args) => {
            let mut out = Vec::new();
            connect(cli, args, &mut out).await?;
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
        Command::Backends(command) => backends::execute(cli, command).await,
    }
}

/// Runs the command, prints its output or a rendered error, and returns the exit code.
pub async fn run(cli: Cli) -> ExitCode {
    if let Command::Nodes(NodesCommand::Watch(args)) = &cli.command {
        let ctrl_c = async {
            // Without a signal handler there is no Ctrl-C to wait for; the default action ends us.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        return match watch(&cli, args, &mut std::io::stdout(), &mut std::io::stderr(), ctrl_c).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprint!("{}", render::error(&err, &cli.controller));
                err.exit_code()
            }
        };
    }
    let streamed = match &cli.command {
        Command::Connect(args) => Some(connect(&cli, args, &mut std::io::stdout()).await),
        Command::Backends(BackendsCommand::Watch(args)) => {
            Some(watch_backend(&cli, args, &mut std::io::stdout()).await)
        }
        _ => None,
    };
    if let Some(result) = streamed {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprint!("{}", render::error(&err, &cli.controller));
                err.exit_code()
            }
        };
    }
    match execute(&cli).await {
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`hangar nodes list | head -1`) is not an error worth reporting.
            let _ = stdout.write_all(output.as_bytes()).and_then(|()| stdout.flush());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprint!("{}", render::error(&err, &cli.controller));
            err.exit_code()
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod backend_tests;
