//! `placements`: how fast the controller places backends. Simulated drones (`sim_drone`) accept
//! every spawn at once and report READY; callers run `Connect` with distinct keys, each waiting
//! for its answer before the next, for a fixed time. Then the drones keep renewing for a while
//! and the backends that ended KEY_EXPIRED are counted from the controller's records.

use crate::callers::{self, Refusals};
use crate::controller_proc::{ControllerOpts, ControllerProc, Usage};
use crate::measure::Distribution;
use crate::result::ResultLine;
use crate::sim_drone::{self, Fleet};
use hangar::v1::backend_service_client::BackendServiceClient;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct PlacementsArgs {
    /// Simulated drones.
    #[arg(long, default_value_t = 100)]
    pub drones: usize,
    /// Backends each drone takes at most (high: placement, not capacity, is measured).
    #[arg(long, default_value_t = 10_000)]
    pub capacity: u32,
    /// Concurrent callers, each one Connect at a time.
    #[arg(long, default_value_t = 64)]
    pub callers: usize,
    /// HTTP/2 connections the callers share (round robin); the drones use their own 10.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Controllers sharing the database (more than one needs --postgres); drones and callers
    /// are spread over them round robin.
    #[arg(long, default_value_t = 1)]
    pub controllers: usize,
    /// How long the callers run.
    #[arg(long, default_value = "60s", value_parser = crate::humantime_duration)]
    pub duration: Duration,
    /// How long the drones keep renewing after the callers stop, before KEY_EXPIRED is counted.
    #[arg(long, default_value = "60s", value_parser = crate::humantime_duration)]
    pub after: Duration,
    /// A few seconds' smoke run (4 drones, 8 callers, 2 s + 1 s), so that the harness cannot rot.
    #[arg(long)]
    pub quick: bool,
    #[command(flatten)]
    pub controller: ControllerOpts,
}

const CLUSTER: &str = "bench";

pub async fn run(mut args: PlacementsArgs) -> anyhow::Result<()> {
    if args.quick {
        (args.drones, args.callers, args.connections) = (4, 8, 2);
        (args.duration, args.after) = (Duration::from_secs(2), Duration::from_secs(1));
    }
    let store = if args.controller.postgres { "PostgreSQL" } else { "SQLite" };
    println!(
        "placements benchmark: {} controller(s) on {store}, {} simulated drones, {} callers over {} connections, Connect with distinct keys for {:?}, then {:?} of renewals",
        args.controllers, args.drones, args.callers, args.connections, args.duration, args.after
    );
    let controllers = ControllerProc::start_many(&args.controller, &[], args.controllers).await?;
    let fleet = Arc::new(Fleet::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let attach_start = Instant::now();
    let mut drones =
        sim_drone::start_fleet(&controllers, &fleet, &stop, args.drones, 10, args.capacity, CLUSTER).await?;
    let attach = sim_drone::wait_attached(&fleet, args.drones, attach_start, Duration::from_secs(120)).await?;
    println!("{} drones attached in {:.2} s", args.drones, attach.as_secs_f64());

    let mut channels = Vec::new();
    for c in 0..args.connections.max(controllers.len()) {
        channels.push(controllers[c % controllers.len()].connect().await?);
    }
    let mut usage = Usage::begin(&controllers)?;
    let start = Instant::now();
    let end = start + args.duration;
    let mut callers = tokio::task::JoinSet::new();
    for c in 0..args.callers {
        let mut client = BackendServiceClient::new(channels[c % channels.len()].clone());
        callers.spawn(async move {
            let (mut latencies, mut refusals, mut n) = (Vec::new(), Refusals::default(), 0u64);
            while Instant::now() < end {
                n += 1;
                let request = callers::connect_request(CLUSTER, &format!("p-{c}-{n}"));
                let issued = Instant::now();
                match client.connect(request).await {
                    Ok(_) => latencies.push(issued.elapsed().as_nanos() as u64),
                    Err(status) => refusals.add(callers::refusal(&status)),
                }
            }
            (latencies, refusals)
        });
    }
    let mut sampler = tokio::time::interval(Duration::from_secs(1));
    let (mut latencies, mut refusals) = (Vec::new(), Refusals::default());
    loop {
        tokio::select! {
            _ = sampler.tick() => usage.sample(&controllers),
            joined = callers.join_next() => match joined {
                Some(result) => {
                    let (l, r) = result?;
                    latencies.extend(l);
                    refusals.merge(r);
                }
                None => break,
            },
        }
    }
    let elapsed = start.elapsed();
    let cores = usage.cores(&controllers)?;
    let ready_in_window = fleet.ready_between(start, end);
    let connects = latencies.len();
    let distribution = Distribution::of(latencies);

    tokio::time::sleep(args.after).await;
    let ready_total = fleet.ready_between(start, Instant::now());
    let (expired, terminated) = callers::key_expired_backends(channels[0].clone()).await?;
    let lost = Fleet::get(&fleet.sessions_lost);
    let _ = stop_tx.send(true);
    while drones.join_next().await.is_some() {}
    usage.sample(&controllers);
    let rss = usage.peak_rss_mib;
    let warnings: usize = controllers.iter().map(|c| c.log_lines_containing("WARN")).sum();
    for controller in controllers {
        controller.stop().await;
    }

    let per_second = ready_in_window as f64 / args.duration.as_secs_f64();
    let connects_per_second = connects as f64 / elapsed.as_secs_f64();
    let (over_capacity, duplicate_keys) = (Fleet::get(&fleet.over_capacity), Fleet::get(&fleet.duplicate_keys));
    println!();
    println!("| figure                                   | value |");
    println!("|------------------------------------------|-------|");
    println!("| Connects answered OK                     | {connects} ({connects_per_second:.1}/s) |");
    println!("| Connects refused                         | {} ({}) |", refusals.total(), refusals.describe());
    println!(
        "| Connect latency p50 / p99 / max          | {} / {} / {} |",
        callers::ms(distribution.p50),
        callers::ms(distribution.p99),
        callers::ms(distribution.max)
    );
    println!("| spawns received by the drones            | {} |", Fleet::get(&fleet.spawns));
    println!("| READY committed within the run           | {ready_in_window} ({per_second:.1}/s) |");
    println!("| READY committed by the end of the wait   | {ready_total} |");
    println!(
        "| renewals sent / refused                  | {} / {} |",
        Fleet::get(&fleet.renewals_sent),
        Fleet::get(&fleet.renewals_refused)
    );
    let answers = fleet.renewal_answer_times();
    println!(
        "| renewal answered after p50 / p99 / max   | {} / {} / {} ({} answered) |",
        callers::ms(answers.p50),
        callers::ms(answers.p99),
        callers::ms(answers.max),
        answers.count
    );
    println!("| backends terminated (controller's view)  | {terminated} |");
    println!("| of them KEY_EXPIRED                      | {expired} |");
    println!("| ended KEY_EXPIRED by the drones          | {} |", Fleet::get(&fleet.expired_by_drone));
    println!("| drone sessions lost                      | {lost} |");
    println!("| spawns over a drone's capacity           | {over_capacity} |");
    println!("| spawns of a key already live             | {duplicate_keys} |");
    println!("| controller CPU while callers ran (cores) | {cores:.2} |");
    println!("| controller RSS, largest seen             | {rss:.1} MiB |");
    println!("| controller log lines at WARN             | {warnings} |");
    ResultLine::new("placements")
        .figure("per_second", per_second)
        .figure("connect_p50_ms", distribution.p50.as_secs_f64() * 1000.0)
        .figure("connect_p99_ms", distribution.p99.as_secs_f64() * 1000.0)
        .figure("over_capacity", over_capacity)
        .figure("duplicate_keys", duplicate_keys)
        .figure("expired", expired)
        .print();
    Ok(())
}
