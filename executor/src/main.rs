//! `hangar-drone`: the drone agent and its executors.

use clap::{Parser, Subcommand};
use hangar_executor::conformance::command::{self as conformance_command, ConformanceArgs};
use hangar_executor::drone::command::{self as drone_command, RunArgs};
use hangar_executor::executor_command::{self, ExecutorArgs};

#[derive(Parser, Debug)]
#[command(
    name = "hangar-drone",
    version,
    about = "Hangar drone: attaches a worker host to Hangar controllers and runs session backends on it."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Attach this host to the controllers and keep it attached.
    Run(Box<RunArgs>),
    /// Serve the executor protocol (hangar.executor.v1) on a Unix socket, running backends on
    /// docker, local processes or a mock.
    Executor(ExecutorArgs),
    /// Run the runtime conformance suite against the executor on a Unix socket (any
    /// implementation of hangar.executor.v1), one PASS/FAIL/SKIP line per case.
    Conformance(ConformanceArgs),
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
            Command::Run(args) => drone_command::run(*args).await,
            Command::Executor(args) => executor_command::run(args).await,
            Command::Conformance(args) => {
                let code = conformance_command::main(args).await;
                std::process::exit(code)
            }
        }
    })
}
