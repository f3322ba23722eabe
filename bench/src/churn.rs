//! `churn`: backends that come and go. Callers each loop Connect (a fresh key) → TerminateBackend
//! on one simulated drone of capacity 1,000, so that at most one backend per caller is meant to be
//! live at any time; a POOL_FULL or NO_DRONE_AVAILABLE answer means that capacity is still held by
//! backends already asked to end. At the end, the database size per backend created, with the
//! controller removing terminated backends after a short `--backend-retention` and compacting its
//! change log after a short `--history-retention`, so that the figure is what stays once retention
//! has caught up (and `--history-min-revisions` 1,000 rather than 10,000, which a short run would
//! never get past).

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
    /// After the run, wait at most this long for retention to have removed every backend (each
    /// one ended on the drone, then `--backend-retention` passed) before the database is
    /// measured; how many were left is printed.
    #[arg(long, default_value = "60s", value_parser = crate::humantime_duration)]
    pub settle: Duration,
    /// The controller's `--backend-retention`: how long a terminated backend stays before it is
    /// removed.
    #[arg(long, default_value = "1s")]
    pub backend_retention: String,
    /// The controller's `--history-retention`: the age bound of its change log.
    #[arg(long, default_value = "1s")]
    pub history_retention: String,
    /// The controller's `--history-min-revisions`: changes of the log kept whatever their age
    /// (its default, 10,000, is more than a short run writes, which would hide the steady state).
    #[arg(long, default_value_t = 1000)]
    pub history_min_revisions: u64,
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
        (args.duration, args.settle) = (Duration::from_secs(2), Duration::from_secs(5));
    }
    println!(
        "churn benchmark: {} callers over {} connections looping Connect (fresh key) → Terminate on one simulated drone of capacity {}, for {:?}",
        args.callers, args.connections, args.capacity, args.duration
    );
    // The database figure reads SQLite's file; on PostgreSQL it is not built.
    anyhow::ensure!(!args.controller.postgres, "churn measures the SQLite database file: run it without --postgres");
    let retention = [
        format!("--backend-retention={}", args.backend_retention),
        format!("--history-retention={}", args.history_retention),
        format!("--history-min-revisions={}", args.history_min_revisions),
    ];
    let retention: Vec<&str> = retention.iter().map(String::as_str).collect();
    let controller = ControllerProc::start(&args.controller, &retention).await?;
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
    // The database at half time: with retention at work it should not grow much after it.
    let half = tokio::time::sleep_until(start + args.duration / 2);
    tokio::pin!(half);
    let mut db_half = None;
    loop {
        tokio::select! {
            _ = &mut half, if db_half.is_none() => db_half = Some(controller.db_bytes()),
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
    let (left, settled) = retained_away(&channels[0], args.settle).await?;
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
    println!("| backends not yet removed when measured     | {left} (after waiting {settled:.1?}) |");
    let (half_file, half_wal) = db_half.unwrap_or_default();
    println!(
        "| database at half time (file + WAL)         | {:.1} MiB ({:.1} + {:.1}) |",
        mib(half_file + half_wal),
        mib(half_file),
        mib(half_wal)
    );
    println!(
        "| database growth per backend created        | {db_bytes_per_backend:.0} bytes (backend retention {}, history retention {} / {} changes) |",
        args.backend_retention, args.history_retention, args.history_min_revisions
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

/// Waits until ListBackends finds no backend (every one ended and was removed by retention), at
/// most `limit`; how many were left (0, or a lower bound of 1,000 when more) and how long it took.
async fn retained_away(channel: &tonic::transport::Channel, limit: Duration) -> anyhow::Result<(usize, Duration)> {
    let mut client = BackendServiceClient::new(channel.clone());
    let start = Instant::now();
    loop {
        let request = v1::ListBackendsRequest { page_size: 1000, ..Default::default() };
        let left = client.list_backends(request).await?.into_inner().backends.len();
        if left == 0 || start.elapsed() >= limit {
            return Ok((left, start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
