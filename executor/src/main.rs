//! `hangar-drone`: the drone agent and its executors.

use clap::{Parser, Subcommand};
use hangar_executor::executor_command::{self, ExecutorArgs};

#[derive(Parser, Debug)]
#[command(name = "hangar-drone", version, about = "Hangar drone: runs session backends on this host.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the executor protocol (hangar.executor.v1) on a Unix socket, running backends on
    /// docker, local processes or a mock.
    Executor(ExecutorArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match cli.command {
            Command::Executor(args) => executor_command::run(args).await,
        }
    })
}
