//! `hangar-drone`: the drone agent and its executors.

use clap::{Parser, Subcommand};
use hangar_agent::telemetry::{self, LogFormat};
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
    /// What a warm network sandbox runs (--docker-warm-sandboxes): waits for SIGTERM.
    #[command(hide = true)]
    Sandbox,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Sandbox = cli.command {
        // One thread, no logging: a sandbox holds a network namespace and nothing else.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return Ok(runtime.block_on(hangar_executor::runtime::docker::hold_sandbox())?);
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        // The same logging (and, with an endpoint, trace export) as hangar-server's.
        let (service, endpoint) = match &cli.command {
            Command::Run(args) => ("hangar-drone", args.otlp_endpoint()),
            Command::Executor(args) => ("hangar-executor", args.trace.otlp_endpoint.as_deref()),
            Command::Conformance(_) => ("hangar-conformance", None),
            Command::Sandbox => unreachable!("handled above"),
        };
        let telemetry = telemetry::init(LogFormat::Text, endpoint, service)?;
        let result = match cli.command {
            Command::Run(args) => drone_command::run(*args).await,
            Command::Executor(args) => executor_command::run(args).await,
            Command::Conformance(args) => {
                let code = conformance_command::main(args).await;
                std::process::exit(code)
            }
            Command::Sandbox => unreachable!("handled above"),
        };
        telemetry.shutdown().await;
        result
    })
}
