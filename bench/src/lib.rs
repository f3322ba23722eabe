//! `hangar-bench`: benchmarks that print figures next to an anchor measured in the same run.
//!
//! `hangar-bench watch` measures `WatchNodes` (or, with `--kind backends`, `WatchBackends`)
//! against etcd's watch: the same number of watcher
//! streams over the same number of HTTP/2 connections, the same writes (one value of the size of
//! a Hangar node event, changed E times at a fixed rate and then in a burst), and for each system
//! the delivery latency, the fan-out throughput and the server's memory per watcher. Each server
//! runs in its own process so that its RSS can be read from `/proc`.
//!
//! The Hangar side of `watch` runs in a child process of its own, the `hangar-bench-controller`
//! binary built next to this one (`src/bin/hangar-bench-controller.rs`), on jemalloc as
//! `hangar-server` is; this process, the load generator, keeps the system's allocator.
//!
//! The scale benchmarks (`heartbeats`, `placements`, `churn`, `list`) run the release
//! `hangar-server controller` as a child and load it with simulated drones speaking the real
//! `DroneService.Attach` protocol (`sim_drone`) and callers of the real `BackendService`. Each has
//! a `--quick` smoke mode of a few seconds, which the test suite runs (`tests/quick.rs`).

mod backend_side;
mod callers;
mod churn;
mod coldstart;
mod controller_proc;
mod etcd;
mod fanout;
pub mod hangar_side;
mod heartbeats;
mod hold;
mod list;
mod measure;
mod placements;
mod procs;
mod proxy;
mod result;
mod sim_drone;

use clap::{Parser, Subcommand};
use std::time::Duration;

#[derive(Parser)]
#[command(name = "hangar-bench", about = "Hangar benchmarks (figures side by side with an anchor)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// WatchNodes fan-out vs etcd watch: latency, throughput, memory per watcher.
    Watch(WatchArgs),
    /// 10,000 simulated drones heartbeating: the controller's CPU and RSS, wrongly unhealthy
    /// nodes, time to attach them all.
    Heartbeats(heartbeats::HeartbeatsArgs),
    /// Connects with distinct keys onto 100 simulated drones: READY backends per second, Connect
    /// latency, over-capacity spawns, duplicate keys, KEY_EXPIRED backends.
    Placements(placements::PlacementsArgs),
    /// 10,000 backends placed on 2 simulated drones, then held for 5 minutes: all still READY,
    /// none KEY_EXPIRED, the controller's CPU while they idle.
    Hold(hold::HoldArgs),
    /// Connect → Terminate loops on one drone: cycles per second, refusals, database bytes per
    /// backend.
    Churn(churn::ChurnArgs),
    /// A full ListNodes of 10,000 nodes in pages of 1,000, next to an etcd range read.
    List(list::ListArgs),
    /// The data plane: the same backend directly, through nginx and through Hangar's proxy (wrk,
    /// keep-alive HTTP/1.1, 1 KiB and 1 MiB bodies).
    Proxy(proxy::ProxyArgs),
    /// A new session's wait: Connect → first HTTP 200 through the proxy (Docker and process
    /// runtimes) next to `docker run` → first 200 of the same local image.
    Coldstart(coldstart::ColdstartArgs),
}

/// Which watch the Hangar side measures.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    /// WatchNodes: each change is a change of one node.
    Nodes,
    /// WatchBackends: each change is one backend state change (backends are started, then moved
    /// through their life, SCHEDULED to TERMINATED).
    Backends,
}

impl WatchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchKind::Nodes => "nodes",
            WatchKind::Backends => "backends",
        }
    }
}

#[derive(Parser, Debug, Clone)]
pub struct WatchArgs {
    /// What the Hangar watchers watch: node changes (WatchNodes) or backend state changes
    /// (WatchBackends). etcd's side is the same either way, with values of the event's size.
    #[arg(long, value_enum, default_value = "nodes")]
    pub kind: WatchKind,
    /// Watcher streams per system (each its own WatchNodes / etcd Watch call).
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// HTTP/2 connections the watchers are spread over, round robin.
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// Changes written per system: `--paced-events` at `--rate`, `--loaded-events` at
    /// `--loaded-rate`, `--heavy-events` at `--heavy-rate`, the rest in a burst.
    #[arg(long, default_value_t = 3750)]
    pub events: u32,
    /// Changes written at `--rate`, first: a lightly loaded system.
    #[arg(long, default_value_t = 200)]
    pub paced_events: u32,
    /// Writes per second in the paced phase. Keep rate × watchers well below the fan-out
    /// throughput, so that the paced latency is the latency of an unloaded system.
    #[arg(long, default_value_t = 20)]
    pub rate: u32,
    /// Changes written at `--loaded-rate`, after the paced ones (0 skips the phase).
    #[arg(long, default_value_t = 750)]
    pub loaded_events: u32,
    /// Writes per second in the loaded phase: a busy system that still keeps up (150/s is
    /// 150,000 deliveries/s to 1,000 watchers, about half of what either system manages here).
    #[arg(long, default_value_t = 150)]
    pub loaded_rate: u32,
    /// Changes written at `--heavy-rate`, after the loaded ones (0 skips the phase).
    #[arg(long, default_value_t = 1000)]
    pub heavy_events: u32,
    /// Writes per second in the heavy phase: the same offered load for both systems, close to
    /// etcd's capacity on this machine (250/s is 250,000 deliveries/s; etcd manages ~300,000).
    #[arg(long, default_value_t = 250)]
    pub heavy_rate: u32,
    /// Writes in flight at most, in every phase (in the burst, always this many).
    #[arg(long, default_value_t = 16)]
    pub burst_writers: usize,
    /// Where the databases go. The default, a tmpfs, takes the disk's fsync out of the figures
    /// (for both systems alike): what is measured is the watch path, not the disk; give a disk
    /// directory (e.g. /var/tmp) to include it.
    #[arg(long, default_value = "/dev/shm")]
    pub data_dir: std::path::PathBuf,
    /// The etcd server binary.
    #[arg(long, default_value = "etcd")]
    pub etcd_bin: String,
    /// Run only one side (`hangar` or `etcd`).
    #[arg(long)]
    pub only: Option<String>,
    /// Give up on a phase after this long.
    #[arg(long, default_value = "60s", value_parser = humantime_duration)]
    pub timeout: Duration,
    /// Nodes registered besides the one the writer changes (Hangar side, node watches). With
    /// any, each watcher asks for `send_initial` and the run reports how long the snapshots took.
    #[arg(long, default_value_t = 0)]
    pub nodes: usize,
    /// Also write one line per change to `PATH.hangar` and `PATH.etcd`: when it was issued, its
    /// commit time, and the fastest, median and slowest watcher's latency. Shows whether a
    /// latency tail is a few spells in which every watcher is late, or spread over the run.
    #[arg(long, value_name = "PATH")]
    pub per_change: Option<std::path::PathBuf>,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number.parse().map_err(|_| format!("bad duration {s:?}"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration {s:?}: use e.g. 60s, 500ms, 2m")),
    }
}

/// Logs to stderr, warnings and above unless `RUST_LOG` says otherwise: stdout carries the
/// figures (and, for `hangar-bench-controller`, its answers to `watch`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
}

/// `hangar-bench`'s `main`: parses the command line and runs the benchmark it names.
pub fn main() -> anyhow::Result<()> {
    init_logging();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Watch(args) => runtime.block_on(async move {
            // Ctrl-C ends the run through the normal unwinding path: the child processes and
            // temporary directories are owned by guards that clean up when dropped.
            tokio::select! {
                result = watch(args) => result,
                _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
            }
        }),
        Command::Heartbeats(args) => runtime.block_on(interruptible(heartbeats::run(args))),
        Command::Placements(args) => runtime.block_on(interruptible(placements::run(args))),
        Command::Hold(args) => runtime.block_on(interruptible(hold::run(args))),
        Command::Churn(args) => runtime.block_on(interruptible(churn::run(args))),
        Command::List(args) => runtime.block_on(interruptible(list::run(args))),
        Command::Proxy(args) => runtime.block_on(interruptible(proxy::run(args))),
        Command::Coldstart(args) => runtime.block_on(interruptible(coldstart::run(args))),
    }
}

/// Ctrl-C ends the run through the normal unwinding path, as for `watch`.
async fn interruptible(run: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::select! {
        result = run => result,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
    }
}

async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.watchers > 0
            && args.connections > 0
            && args.paced_events > 0
            && args.rate > 0
            && (args.loaded_events == 0 || args.loaded_rate > 0)
            && (args.heavy_events == 0 || args.heavy_rate > 0)
            && args.events > args.paced_events + args.loaded_events + args.heavy_events,
        "nothing to measure: need watchers, connections, rates above 0, and more events than paced and \
         loaded and heavy events together (the rest is the burst)"
    );
    let plan = measure::Plan {
        paced: args.paced_events,
        rate: args.rate,
        loaded: args.loaded_events,
        loaded_rate: args.loaded_rate,
        heavy: args.heavy_events,
        heavy_rate: args.heavy_rate,
        burst: args.events - args.paced_events - args.loaded_events - args.heavy_events,
    };
    println!(
        "watch benchmark ({}): {} watchers over {} HTTP/2 connections, {} changes ({} at {}/s, {} at {}/s, {} at \
         {}/s, then {} in a burst; at most {} writes in flight)",
        args.kind.as_str(),
        args.watchers,
        args.connections,
        args.events,
        plan.paced,
        plan.rate,
        plan.loaded,
        plan.loaded_rate,
        plan.heavy,
        plan.heavy_rate,
        plan.burst,
        args.burst_writers
    );
    let run_hangar = args.only.as_deref().is_none_or(|o| o == "hangar");
    let run_etcd = args.only.as_deref().is_none_or(|o| o == "etcd");

    let mut value_size = hangar_side::NODE_EVENT_SIZE_HINT;
    let hangar = if run_hangar {
        let report = hangar_side::run(&args, &plan).await?;
        value_size = report.event_bytes;
        Some(report)
    } else {
        None
    };
    let etcd = if run_etcd { Some(etcd::run(&args, &plan, value_size).await?) } else { None };
    measure::print_table(hangar.as_ref(), etcd.as_ref());
    measure::print_result(hangar.as_ref(), etcd.as_ref());
    Ok(())
}
