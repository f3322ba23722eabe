//! The `hangar` command line: argument definitions (clap derive), the commands, and rendering.
//!
//! `main` only parses and calls [`run`]. Tests and scripts can drive the same path with
//! [`Cli::try_parse_from`](clap::Parser::try_parse_from) and [`execute`], which returns what
//! would be printed instead of printing it.

mod args;
mod nodes;
pub mod render;

pub use args::{FilterArgs, OutputFormat, parse_deadline, parse_interval, parse_label};
pub use nodes::watch;

use crate::{ClientError, DEFAULT_CONTROLLER};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

const TOP_EXAMPLES: &str = "\
Examples:
  hangar-server dev                      # start a local controller with one drone
  hangar nodes list                      # every drone and proxy, as a table
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
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Client(_) => ExitCode::from(1),
        }
    }
}

/// Runs the command and returns what it prints on stdout. `nodes watch` never ends by itself;
/// it is driven by [`watch`] instead.
pub async fn execute(cli: &Cli) -> Result<String, CliError> {
    match &cli.command {
        Command::Nodes(command) => nodes::execute(cli, command).await,
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
