//! `churn`: backends that come and go. Callers each loop Connect (a fresh key) → TerminateBackend
//! on one simulated drone of capacity 1,000, so that at most one backend per caller is meant to be
//! live at any time; a POOL_FULL or NO_DRONE_AVAILABLE answer means that capacity is still held by
//! backends already asked to end. At the end, the database size per backend created.

use crate::callers::{self, Refusals};
use crate::controller_proc::{ControllerOpts, ControllerProc, Usage};
use crate::measure::Distribution;
use crate::result::ResultLine;
use crate::sim_drone::{self, Fleet};
use hangar::v1;
use hangar::v1::backend_service_client::BackendServiceClient;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct ChurnArgs {
    /// Concurrent callers, each one Connect → Terminate cycle at a time.
    #[arg(long, default_value_t = 64)]
    pub callers: usize,
    /// Capacity of the one simulated drone.
    #[arg(long, default_value_t = 1000)]
    pub capacity: u32,
    /// HTTP/2 connections the callers share (round robin).
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// How long the callers run.
    #[arg(long, default_value = "60s", value_parser = crate::humantime_duration)]
    pub duration: Duration,
    /// Wait after the run before the database is measured (no retention exists yet to wait for).
    #[arg(long, default_value = "5s", value_parser = crate::humantime_duration)]
    pub settle: Duration,
    /// A few seconds' smoke run (8 callers, 2 s), so that the harness cannot rot.
    #[arg(long)]
    pub quick: bool,
    #[command(flatten)]
    pub controller: ControllerOpts,
}

const CLUSTER: &str = "bench";
const REFUSED: [&str; 2] = [hangar::error::reason::POOL_FULL, hangar::error::reason::NO_DRONE_AVAILABLE];

pub async fn run(mut args: ChurnArgs) -> anyhow::Result<()> {
    if args.quick {
        (args.callers, args.connections) = (8, 2);
        (args.duration, args.settle) = (Duration::from_secs(2), Duration::from_millis(200));
    }
    println!(
        "churn benchmark: {} callers over {} connections looping Connect (fresh key) → Terminate on one simulated drone of capacity {}, for {:?}",
        args.callers, args.connections, args.capacity, args.duration
    );
    // The database figure reads SQLite's file; on PostgreSQL it is not built.
    anyhow::ensure!(!args.controller.postgres, "churn measures the SQLite database file: run it without --postgres");
    let controller = ControllerProc::start(&args.controller, &[]).await?;
    let fleet = Arc::new(Fleet::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut drones =
        sim_drone::start_fleet(std::slice::from_ref(&controller), &fleet, &stop, 1, 1, args.capacity, CLUSTER).await?;
    sim_drone::wait_attached(&fleet, 1, Instant::now(), Duration::from_secs(30)).await?;
    let db_before = controller.db_bytes();

    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(controller.connect().await?);
    }
    let mut usage = Usage::begin(std::slice::from_ref(&controller))?;
    let start = Instant::now();
    let end = start + args.duration;
    let mut callers = tokio::task::JoinSet::new();
    for c in 0..args.callers {
        let mut client = BackendServiceClient::new(channels[c % channels.len()].clone());
        callers.spawn(async move {
            let (mut cycles, mut created, mut refusals) = (Vec::new(), 0u64, Refusals::default());
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let issued = Instant::now();
                let id = match client.connect(callers::connect_request(CLUSTER, &format!("c-{c}-{n}"))).await {
                    Ok(answer) => answer.into_inner().backend_id,
                    Err(status) => {
                        refusals.add(callers::refusal(&status));
                        continue;
                    }
                };
                created += 1;
                match client.terminate_backend(v1::TerminateBackendRequest { id, hard: false }).await {
                    Ok(_) => cycles.push(issued.elapsed().as_nanos() as u64),
                    Err(status) => refusals.add(format!("terminate: {}", callers::refusal(&status))),
                }
            }
            (cycles, created, refusals)
        });
    }
    let mut sampler = tokio::time::interval(Duration::from_secs(1));
    let (mut cycles, mut created, mut refusals) = (Vec::new(), 0u64, Refusals::default());
    loop {
        tokio::select! {
            _ = sampler.tick() => usage.sample(std::slice::from_ref(&controller)),
            joined = callers.join_next() => match joined {
                Some(result) => {
                    let (c, n, r) = result?;
                    cycles.extend(c);
                    created += n;
                    refusals.merge(r);
                }
                None => break,
            },
        }
    }
    let elapsed = start.elapsed();
    let cores = usage.cores(std::slice::from_ref(&controller))?;
    tokio::time::sleep(args.settle).await;
    let db_live = controller.db_bytes();
    let rss = controller.rss_mib()?.max(usage.peak_rss_mib);
    let _ = stop_tx.send(true);
    while drones.join_next().await.is_some() {}
    let db_after = controller.stop_gracefully().await?;

    let completed = cycles.len();
    let cycles_per_second = completed as f64 / elapsed.as_secs_f64();
    let distribution = Distribution::of(cycles);
    let refused = refusals.count(&REFUSED);
    // The database's growth per backend created, with the WAL checkpointed at shutdown.
    let db_before = db_before.0 + db_before.1;
    let db_bytes_per_backend =
        if created > 0 { db_after.saturating_sub(db_before) as f64 / created as f64 } else { 0.0 };
    println!();
    println!("| figure                                     | value |");
    println!("|--------------------------------------------|-------|");
    println!("| cycles completed                           | {completed} ({cycles_per_second:.1}/s) |");
    println!(
        "| cycle latency p50 / p99 / max              | {} / {} / {} |",
        callers::ms(distribution.p50),
        callers::ms(distribution.p99),
        callers::ms(distribution.max)
    );
    println!("| backends created                           | {created} |");
    println!("| calls refused                              | {} ({}) |", refusals.total(), refusals.describe());
    println!("| of them POOL_FULL or NO_DRONE_AVAILABLE    | {refused} |");
    println!(
        "| spawns / terminates the drone received     | {} / {} |",
        Fleet::get(&fleet.spawns),
        Fleet::get(&fleet.terminates)
    );
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "| database before the run / after, running   | {:.1} / {:.1} MiB (file {:.1}, WAL {:.1}) |",
        mib(db_before),
        mib(db_live.0 + db_live.1),
        mib(db_live.0),
        mib(db_live.1)
    );
    println!("| database after the controller stopped      | {:.1} MiB |", mib(db_after));
    println!(
        "| database growth per backend created        | {db_bytes_per_backend:.0} bytes (no retention exists yet: nothing is compacted) |"
    );
    println!("| controller CPU while callers ran (cores)   | {cores:.2} |");
    println!("| controller RSS, largest seen               | {rss:.1} MiB |");
    ResultLine::new("churn")
        .figure("cycles_per_second", cycles_per_second)
        .figure("refused", refused)
        .figure("db_bytes_per_backend", db_bytes_per_backend.round() as u64)
        .print();
    Ok(())
}
