//! `hangar`: the Hangar command-line client. Everything but argument parsing and the exit code
//! lives in `hangar_client::cli`.

use clap::Parser;
use hangar_client::cli::Cli;
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    hangar_client::cli::run(Cli::parse()).await
}
