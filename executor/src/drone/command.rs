//! `hangar-drone run`: attach this host to one or more controllers and keep it attached.

use super::{DroneConfig, spawn};
use clap::Args;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    hangar-drone run --controller http://127.0.0.1:7070 --name worker-1\n  \
    hangar-drone run --controller http://ctl-a:7070 --controller http://ctl-b:7070 --name worker-1 --pool gpu\n\n\
    Then check it with:  hangar nodes list --kind drone")]
pub struct RunArgs {
    /// Controller URL; repeat (or separate with commas) to give several, tried in turn when one
    /// is unreachable.
    #[arg(long = "controller", env = "HANGAR_CONTROLLER", required = true, value_delimiter = ',')]
    controllers: Vec<String>,
    /// Name of this drone, unique in its cluster: lowercase letters, digits and '-'. The same
    /// name reconnecting keeps its node id.
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "default")]
    cluster: String,
    #[arg(long, default_value = "default")]
    pool: String,
    /// KEY=VALUE, repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Backends this drone accepts at most.
    #[arg(long, default_value_t = 100)]
    capacity: u32,
    /// Longest wait between reconnect attempts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    max_backoff: Duration,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// Runs the drone until SIGINT/SIGTERM, or until a controller refuses it for good.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut config = DroneConfig::new(args.controllers, args.name);
    config.cluster = args.cluster;
    config.pool = args.pool;
    config.labels = args.labels.into_iter().collect::<BTreeMap<_, _>>();
    config.backend_capacity = args.capacity;
    config.backoff.max = args.max_backoff;
    let mut drone = spawn(config);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        result = drone.finished() => return Ok(result?),
    }
    drone.shutdown().await;
    Ok(())
}
