//! `heartbeats`: what a large fleet of idle drones costs the controller. Simulated drones
//! (`sim_drone`) attach at once over a few HTTP/2 connections, then heartbeat at the controller's
//! `--heartbeat-interval` for a fixed time while the controller's CPU and RSS are read from
//! `/proc`. A WatchNodes stream opened after the attach counts every node that turned UNHEALTHY or
//! OFFLINE while its drone kept beating.

use crate::controller_proc::{ControllerOpts, ControllerProc, Usage};
use crate::result::ResultLine;
use crate::sim_drone::{self, Fleet};
use hangar::v1;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct HeartbeatsArgs {
    /// Simulated drones.
    #[arg(long, default_value_t = 10_000)]
    pub drones: usize,
    /// HTTP/2 connections the drones are spread over (round robin).
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// The controller's --heartbeat-interval (the drones beat at what its Welcome says).
    #[arg(long, default_value = "1s", value_parser = crate::humantime_duration)]
    pub interval: Duration,
    /// The controller's --unhealthy-after.
    #[arg(long, default_value = "5s", value_parser = crate::humantime_duration)]
    pub unhealthy_after: Duration,
    /// The controller's --offline-after.
    #[arg(long, default_value = "10s", value_parser = crate::humantime_duration)]
    pub offline_after: Duration,
    /// How long the fleet heartbeats while measured, after all drones attached.
    #[arg(long, default_value = "60s", value_parser = crate::humantime_duration)]
    pub duration: Duration,
    /// A few seconds' smoke run (200 drones over 4 connections, 3 s), so that the harness cannot rot.
    #[arg(long)]
    pub quick: bool,
    #[command(flatten)]
    pub controller: ControllerOpts,
}

pub async fn run(mut args: HeartbeatsArgs) -> anyhow::Result<()> {
    if args.quick {
        (args.drones, args.connections, args.duration) = (200, 4, Duration::from_secs(3));
    }
    println!(
        "heartbeats benchmark: {} simulated drones over {} HTTP/2 connections, heartbeat every {:?} (unhealthy after {:?}, offline after {:?}), measured for {:?}",
        args.drones, args.connections, args.interval, args.unhealthy_after, args.offline_after, args.duration
    );
    let liveness = [
        format!("--heartbeat-interval={}ms", args.interval.as_millis()),
        format!("--unhealthy-after={}ms", args.unhealthy_after.as_millis()),
        format!("--offline-after={}ms", args.offline_after.as_millis()),
    ];
    let liveness: Vec<&str> = liveness.iter().map(String::as_str).collect();
    let controller = ControllerProc::start(&args.controller, &liveness).await?;
    let idle_rss = controller.rss_mib()?;
    let fleet = Arc::new(Fleet::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let attach_start = Instant::now();
    let attach_cpu = controller.cpu_seconds()?;
    let mut drones = sim_drone::start_fleet(
        std::slice::from_ref(&controller),
        &fleet,
        &stop,
        args.drones,
        args.connections,
        1000,
        "bench",
    )
    .await?;
    // Drones that fail to attach (e.g. their Hello not read in time) are a figure, not an error.
    let attach = sim_drone::wait_settled(&fleet, args.drones, attach_start, Duration::from_secs(180)).await;
    let attach_cores = (controller.cpu_seconds()? - attach_cpu) / attach.as_secs_f64();
    let (attached, attach_failed) = (Fleet::get(&fleet.attached), Fleet::get(&fleet.attach_failed));
    println!("{attached} drones attached ({attach_failed} failed to) in {:.2} s", attach.as_secs_f64());

    // Every node that leaves READY from now on while its drone beats is wrongly unhealthy.
    let unhealthy = Arc::new(Mutex::new(HashSet::<String>::new()));
    let mut watch = v1::node_service_client::NodeServiceClient::new(controller.connect().await?)
        .watch_nodes(v1::WatchNodesRequest::default())
        .await?
        .into_inner();
    let seen = unhealthy.clone();
    let watcher = tokio::spawn(async move {
        while let Ok(Some(response)) = watch.message().await {
            let Some(node) = response.event.and_then(|e| e.node) else { continue };
            let state = v1::NodeState::try_from(node.state).unwrap_or_default();
            if matches!(state, v1::NodeState::Unhealthy | v1::NodeState::Offline) {
                seen.lock().expect("not poisoned").insert(node.id);
            }
        }
    });

    let beats_before = Fleet::get(&fleet.heartbeats);
    let mut usage = Usage::begin(std::slice::from_ref(&controller))?;
    let start = Instant::now();
    let mut sampler = tokio::time::interval(Duration::from_secs(1));
    while start.elapsed() < args.duration {
        sampler.tick().await;
        usage.sample(std::slice::from_ref(&controller));
    }
    let cores = usage.cores(std::slice::from_ref(&controller))?;
    let rss = usage.peak_rss_mib.max(controller.rss_mib()?);
    let beats = Fleet::get(&fleet.heartbeats) - beats_before;
    let lost = Fleet::get(&fleet.sessions_lost);
    let wrongly_unhealthy = unhealthy.lock().expect("not poisoned").len();
    let warnings = controller.log_lines_containing("WARN");
    // sqlx's warning when a connection took long to get from the pool.
    let slow_acquire = controller.log_lines_containing("time to acquire exceeded slow threshold");
    watcher.abort();
    let _ = stop_tx.send(true);
    while drones.join_next().await.is_some() {}
    controller.stop().await;

    println!();
    println!("| figure                                         | value |");
    println!("|------------------------------------------------|-------|");
    println!("| drones attached / failed to                    | {attached} / {attach_failed} |");
    println!("| all attached after                             | {:.2} s |", attach.as_secs_f64());
    println!("| controller CPU while attaching (cores)         | {attach_cores:.2} |");
    println!(
        "| heartbeats sent while measured                 | {beats} ({:.0}/s) |",
        beats as f64 / args.duration.as_secs_f64()
    );
    println!("| controller CPU while measured (cores, average) | {cores:.3} |");
    println!("| controller RSS idle / largest seen             | {idle_rss:.1} / {rss:.1} MiB |");
    println!("| nodes seen UNHEALTHY or OFFLINE                | {wrongly_unhealthy} |");
    println!("| drone sessions lost                            | {lost} |");
    println!("| controller log lines at WARN                   | {warnings} (slow pool acquires: {slow_acquire}) |");
    ResultLine::new("heartbeats")
        .figure("drones", attached)
        .figure("controller_cpu_cores", cores)
        .figure("controller_rss_mib", rss)
        .figure("wrongly_unhealthy", wrongly_unhealthy)
        .figure("attach_all_seconds", attach.as_secs_f64())
        .print();
    Ok(())
}
