//! The `hangar` command line: the commands and how they end (output, error, exit code). The
//! argument tree is in `args`, the text in `render`.
//!
//! `main` only parses and calls [`run`]. Tests and scripts can drive the same path with
//! [`Cli::try_parse_from`](clap::Parser::try_parse_from) and [`execute`], which returns what
//! would be printed instead of printing it.

// First: it defines the `exit_codes_help!` macro that `args` uses.
#[macro_use]
mod exit;

mod args;
mod backends;
mod completions;
mod nodes;
pub mod render;

pub use args::{
    BackendIdArgs, BackendsCommand, BackendsListArgs, BackendsTerminateArgs, BackendsWatchArgs, Cli, Command,
    CompletionsArgs, ConnectArgs, FilterArgs, KeyArg, NodesCommand, NodesDrainArgs, NodesGetArgs, NodesListArgs,
    NodesUndrainArgs, NodesWatchArgs, OutputFormat, PullArg, parse_backend_state, parse_claim, parse_deadline,
    parse_env, parse_interval, parse_key, parse_label, parse_limit, parse_memory, parse_user,
};
pub use backends::{connect, watch_backend, watch_backends};
pub use completions::{CompletionShell, completions};
pub use exit::{EXIT_CODES_HELP, Exit};
pub use nodes::watch;

use crate::{BackendStatusView, ClientError};
use hangar::domain::BackendState;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// Why a command failed: a usage mistake clap cannot see, an API error, or how `connect --wait`
/// ended; [`Exit::of`] says which exit code each gets.
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
    /// The process exit code (see [`Exit`]).
    pub fn exit_code(&self) -> ExitCode {
        Exit::of(self).into()
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
        Command::Completions(args) => {
            let mut out = Vec::new();
            completions(args.shell, &mut out);
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
    }
}

/// Runs the command, prints its output or a rendered error, and returns the exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let ctrl_c = async {
        // Without a signal handler there is no Ctrl-C to wait for; the default action ends us.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let endless = match &cli.command {
        Command::Nodes(NodesCommand::Watch(args)) => {
            Some(watch(&cli, args, &mut std::io::stdout(), &mut std::io::stderr(), ctrl_c).await)
        }
        Command::Backends(BackendsCommand::Watch(args)) if args.id.is_none() => {
            Some(watch_backends(&cli, args, &mut std::io::stdout(), &mut std::io::stderr(), ctrl_c).await)
        }
        _ => None,
    };
    if let Some(result) = endless {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprint!("{}", render::error(&err, &cli.controller));
                err.exit_code()
            }
        };
    }
    let streamed = match &cli.command {
        Command::Connect(args) => Some(connect(&cli, args, &mut std::io::stdout()).await),
        Command::Backends(BackendsCommand::Watch(args)) => match &args.id {
            Some(_) if args.has_filter() => {
                Some(Err(CliError::Usage("filter flags watch every backend; leave out the id".to_string())))
            }
            Some(id) => Some(watch_backend(&cli, &BackendIdArgs { id: id.clone() }, &mut std::io::stdout()).await),
            None => None,
        },
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

#[cfg(test)]
mod credential_tests;
