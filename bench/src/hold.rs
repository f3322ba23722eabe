//! `hold`: many live backends on few drones, left alone. Simulated drones (`sim_drone`) take
//! `--backends` Connects with distinct keys as fast as the controller places them and renew
//! their keys as a real drone does (one batch per renewal interval); then nothing happens for
//! `--hold`. At the end every backend must still be READY, none KEY_EXPIRED, and the controller
//! must have been nearly idle while they were: what it costs to keep 10,000 sessions alive.

use crate::callers::{self, Refusals};
use crate::controller_proc::{ControllerOpts, ControllerProc, Usage};
use crate::measure::Distribution;
use crate::result::ResultLine;
use crate::sim_drone::{self, Fleet};
use hangar::v1::backend_service_client::BackendServiceClient;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct HoldArgs {
    /// Simulated drones the backends are spread over.
    #[arg(long, default_value_t = 2)]
    pub drones: usize,
    /// Live backends to place and hold (each drone's capacity is its share).
    #[arg(long, default_value_t = 10_000)]
    pub backends: usize,
    /// Concurrent callers placing them, each one Connect at a time.
    #[arg(long, default_value_t = 64)]
    pub callers: usize,
    /// HTTP/2 connections the callers share.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// How long the backends are held once all are READY.
    #[arg(long, default_value = "5m", value_parser = crate::humantime_duration)]
    pub hold: Duration,
    /// How long after the last READY the idle CPU measurement starts (the last renewals and
    /// liveness writes of the placement burst settle first).
    #[arg(long, default_value = "15s", value_parser = crate::humantime_duration)]
    pub settle: Duration,
    /// A few seconds' smoke run (200 backends, 8 callers, 3 s held, 1 s settle).
    #[arg(long)]
    pub quick: bool,
    #[command(flatten)]
    pub controller: ControllerOpts,
}

const CLUSTER: &str = "hold";

pub async fn run(mut args: HoldArgs) -> anyhow::Result<()> {
    if args.quick {
        (args.backends, args.callers, args.connections) = (200, 8, 2);
        (args.hold, args.settle) = (Duration::from_secs(3), Duration::from_secs(1));
    }
    anyhow::ensure!(args.drones > 0 && args.backends > 0 && args.callers > 0, "nothing to hold");
    let store = if args.controller.postgres { "PostgreSQL" } else { "SQLite" };
    println!(
        "hold benchmark: 1 controller on {store}, {} backends on {} simulated drones placed by {} callers, then held for {:?}",
        args.backends, args.drones, args.callers, args.hold
    );
    let controllers = ControllerProc::start_many(&args.controller, &[], 1).await?;
    let fleet = Arc::new(Fleet::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let capacity = u32::try_from(args.backends.div_ceil(args.drones))?;
    let mut drones =
        sim_drone::start_fleet(&controllers, &fleet, &stop, args.drones, args.drones, capacity, CLUSTER).await?;
    sim_drone::wait_attached(&fleet, args.drones, Instant::now(), Duration::from_secs(60)).await?;

    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(controllers[0].connect().await?);
    }
    let issued = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for c in 0..args.callers {
        let mut client = BackendServiceClient::new(channels[c % channels.len()].clone());
        let (issued, total) = (issued.clone(), args.backends);
        callers.spawn(async move {
            let (mut latencies, mut refusals) = (Vec::new(), Refusals::default());
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return (latencies, refusals);
                }
                let request = callers::connect_request(CLUSTER, &format!("h-{n}"));
                let sent = Instant::now();
                match client.connect(request).await {
                    Ok(_) => latencies.push(sent.elapsed().as_nanos() as u64),
                    Err(status) => refusals.add(callers::refusal(&status)),
                }
            }
        });
    }
    let (mut latencies, mut refusals) = (Vec::new(), Refusals::default());
    while let Some(joined) = callers.join_next().await {
        let (l, r) = joined?;
        latencies.extend(l);
        refusals.merge(r);
    }
    let connects = latencies.len();
    let distribution = Distribution::of(latencies);
    // Every answered Connect is a backend that must reach READY.
    let deadline = Instant::now() + Duration::from_secs(120);
    while fleet.ready_between(start, Instant::now()) < connects && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let placed = start.elapsed();
    let ready_placed = fleet.ready_between(start, Instant::now());
    println!(
        "{ready_placed} of {connects} backends READY in {:.1} s; holding for {:?}",
        placed.as_secs_f64(),
        args.hold
    );

    tokio::time::sleep(args.settle).await;
    let mut usage = Usage::begin(&controllers)?;
    let idle_start = Instant::now();
    let mut sampler = tokio::time::interval(Duration::from_secs(1));
    let mut last_report = Instant::now();
    while idle_start.elapsed() < args.hold {
        sampler.tick().await;
        usage.sample(&controllers);
        if last_report.elapsed() >= Duration::from_secs(30) {
            last_report = Instant::now();
            println!(
                "  {:>4.0} s held: controller {:.3} cores on average, {} renewals sent, {} refused, {} ended KEY_EXPIRED by the drones",
                idle_start.elapsed().as_secs_f64(),
                usage.cores(&controllers)?,
                Fleet::get(&fleet.renewals_sent),
                Fleet::get(&fleet.renewals_refused),
                Fleet::get(&fleet.expired_by_drone)
            );
        }
    }
    let idle_cores = usage.cores(&controllers)?;
    let rss = usage.peak_rss_mib;

    let ready_after = callers::count_backends(channels[0].clone(), CLUSTER, hangar::v1::BackendState::Ready).await?;
    let (expired, terminated) = callers::key_expired_backends(channels[0].clone()).await?;
    let lost = Fleet::get(&fleet.sessions_lost);
    let _ = stop_tx.send(true);
    while drones.join_next().await.is_some() {}
    let warnings: usize = controllers.iter().map(|c| c.log_lines_containing("WARN")).sum();
    for controller in controllers {
        controller.stop().await;
    }

    println!();
    println!("| figure                                     | value |");
    println!("|--------------------------------------------|-------|");
    println!("| Connects answered OK                       | {connects} |");
    println!("| Connects refused                           | {} ({}) |", refusals.total(), refusals.describe());
    println!(
        "| Connect latency p50 / p99 / max            | {} / {} / {} |",
        callers::ms(distribution.p50),
        callers::ms(distribution.p99),
        callers::ms(distribution.max)
    );
    println!(
        "| all READY after                            | {:.1} s ({:.0}/s) |",
        placed.as_secs_f64(),
        ready_placed as f64 / placed.as_secs_f64()
    );
    println!("| READY after the hold (ListBackends)        | {ready_after} |");
    println!("| terminated / of them KEY_EXPIRED           | {terminated} / {expired} |");
    println!("| ended KEY_EXPIRED by the drones            | {} |", Fleet::get(&fleet.expired_by_drone));
    println!(
        "| renewals sent / refused                    | {} / {} |",
        Fleet::get(&fleet.renewals_sent),
        Fleet::get(&fleet.renewals_refused)
    );
    println!("| drone sessions lost                        | {lost} |");
    println!("| controller CPU while held (cores, average) | {idle_cores:.3} |");
    println!("| controller RSS, largest seen while held    | {rss:.1} MiB |");
    println!("| controller log lines at WARN               | {warnings} |");
    ResultLine::new("hold")
        .figure("backends", connects)
        .figure("placed_seconds", placed.as_secs_f64())
        .figure("ready_after_hold", ready_after)
        .figure("expired", expired + Fleet::get(&fleet.expired_by_drone))
        .figure("idle_cpu_cores", idle_cores)
        .print();
    Ok(())
}
