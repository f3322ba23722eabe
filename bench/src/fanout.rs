//! The part of a run that both systems share: watchers that record receipts, a writer driven
//! through the paced, loaded, heavy and burst phases, and the server's RSS and CPU read around them.

use crate::WatchArgs;
use crate::measure::{Distribution, Plan, Report, WatcherLog, WriteTimes, now_ns, summarize};
use crate::procs;
use futures::StreamExt as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Writes changes to the system under test.
pub trait Writer {
    /// A warm-up change `k` (not measured; watchers see it as change 0).
    fn warm_up(&mut self, k: u32) -> impl Future<Output = anyhow::Result<()>>;
    /// Writes changes `from..=to` as [`paced`] does, and records when each was issued and
    /// acknowledged.
    fn write(
        &mut self,
        from: u32,
        to: u32,
        rate: u32,
        concurrency: usize,
        times: &mut WriteTimes,
    ) -> impl Future<Output = anyhow::Result<()>>;
}

/// What a watcher task gets: where to count its warm-up and when to give up.
#[derive(Clone)]
pub struct WatcherCtx {
    pub plan: Plan,
    warmed: Arc<AtomicUsize>,
    stop: watch::Receiver<bool>,
}

impl WatcherCtx {
    /// Records one received change (`None`: a warm-up); returns whether the watcher is done.
    pub fn received(&self, log: &mut WatcherLog, index: Option<u32>, warm: &mut bool) -> bool {
        let at = now_ns();
        match index {
            None => {
                if !*warm {
                    *warm = true;
                    self.warmed.fetch_add(1, Ordering::Relaxed);
                }
                false
            }
            Some(i) => log.record(i, at),
        }
    }

    /// Resolves when the run gives up on outstanding deliveries.
    pub async fn stopped(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|s| *s).await;
    }
}

/// Runs one system through the plan: `spawn_watcher(i, ctx)` is one watcher's whole life.
pub async fn drive<W, F, Fut>(
    system: &'static str,
    args: &WatchArgs,
    plan: &Plan,
    server_pid: u32,
    event_bytes: usize,
    writer: &mut W,
    spawn_watcher: F,
) -> anyhow::Result<Report>
where
    W: Writer,
    F: Fn(usize, WatcherCtx) -> Fut,
    Fut: Future<Output = WatcherLog> + Send + 'static,
{
    // Let the server settle after start-up before reading its idle footprint.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = procs::rss_bytes(server_pid)?;

    let (stop_tx, stop) = watch::channel(false);
    let ctx = WatcherCtx { plan: *plan, warmed: Arc::new(AtomicUsize::new(0)), stop };
    let mut tasks = JoinSet::new();
    for i in 0..args.watchers {
        tasks.spawn(spawn_watcher(i, ctx.clone()));
    }

    // Warm up until every watcher has seen a change: only then is each one subscribed.
    let opened = tokio::time::Instant::now();
    let mut k = 0;
    while ctx.warmed.load(Ordering::Relaxed) < args.watchers {
        anyhow::ensure!(
            opened.elapsed() < args.timeout,
            "{system}: only {} of {} watchers subscribed within {:?}",
            ctx.warmed.load(Ordering::Relaxed),
            args.watchers,
            args.timeout
        );
        k += 1;
        writer.warm_up(k).await?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("{system}: {} watchers subscribed in {:.1?}", args.watchers, opened.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_watching = procs::rss_bytes(server_pid)?;
    let cpu_before = procs::cpu_seconds(server_pid)?;
    let client_cpu_before = procs::cpu_seconds(std::process::id())?;

    let mut times = WriteTimes::new(plan.last() as usize + 1);
    let in_flight = args.burst_writers;
    let phases = [
        (plan.paced_range(), plan.rate),
        (plan.loaded_range(), plan.loaded_rate),
        (plan.heavy_range(), plan.heavy_rate),
    ];
    for (range, rate) in phases {
        if !range.is_empty() {
            writer.write(*range.start(), *range.end(), rate, in_flight, &mut times).await?;
        }
    }
    writer.write(*plan.burst_range().start(), plan.last(), 0, in_flight, &mut times).await?;

    let mut logs = Vec::with_capacity(args.watchers);
    let collect = async {
        while let Some(log) = tasks.join_next().await {
            logs.push(log?);
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(args.timeout, collect).await {
        Ok(result) => result?,
        Err(_) => {
            eprintln!("{system}: not every change arrived within {:?}; counting what did", args.timeout);
            let _ = stop_tx.send(true);
            while let Some(log) = tasks.join_next().await {
                logs.push(log?);
            }
        }
    }
    let cpu_after = procs::cpu_seconds(server_pid)?;
    let client_cpu_after = procs::cpu_seconds(std::process::id())?;
    let rss_after = procs::rss_bytes(server_pid)?;

    if let Some(path) = &args.per_change {
        let path = format!("{}.{system}", path.display());
        write_per_change(&path, &times, &logs)?;
        eprintln!("{system}: per-change latencies in {path}");
    }
    let mut report = summarize(plan, &times, &logs, event_bytes);
    report.rss_idle = rss_idle;
    report.rss_watching = rss_watching;
    report.rss_after = rss_after;
    report.server_cpu = cpu_after - cpu_before;
    report.client_cpu = client_cpu_after - client_cpu_before;
    if let Some(err) = logs.iter().find_map(|l| l.error.as_ref()) {
        eprintln!("{system}: {} watchers failed, e.g.: {err}", report.watchers_failed);
    }
    Ok(report)
}

/// Writes `from..=to` by calling `write_one` for each, with up to `concurrency` writes in
/// flight: with `rate` > 0 each write is issued at its time on a fixed schedule (open loop: a slow
/// write does not hold back the next, unless `concurrency` are in flight), with `rate` 0 as fast
/// as possible. Calls `done(i, issued, acked)` with the wall-clock times just before each write
/// and after it committed.
pub async fn paced<F, Fut>(
    from: u32,
    to: u32,
    rate: u32,
    concurrency: usize,
    write_one: F,
    mut done: impl FnMut(u32, u64, u64),
) -> anyhow::Result<()>
where
    F: Fn(u32) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let timed = |i| {
        let write = write_one(i);
        async move {
            let issued = now_ns();
            write.await?;
            anyhow::Ok((i, issued, now_ns()))
        }
    };
    let start = tokio::time::Instant::now();
    let scheduled = futures::stream::iter((from..=to).enumerate()).then(|(n, i)| async move {
        if rate > 0 {
            tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / f64::from(rate))).await;
        }
        i
    });
    let writes = scheduled.map(timed).buffer_unordered(concurrency.max(1));
    let mut writes = std::pin::pin!(writes);
    while let Some(result) = writes.next().await {
        let (i, issued, acked) = result?;
        done(i, issued, acked);
    }
    Ok(())
}

/// The writer's own thread: a writer stands in for the system's clients, so its schedule
/// (timers, issuing writes) must not wait behind the work it is measuring, whether that is the
/// controller's fan-out (Hangar's writer runs in the controller's process) or the watchers'
/// client (etcd's runs in this one).
pub struct WriterThread(Option<tokio::runtime::Runtime>);

impl WriterThread {
    pub fn new() -> std::io::Result<WriterThread> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-writer")
            .enable_all()
            .build()?;
        Ok(WriterThread(Some(runtime)))
    }

    /// Runs `phase` on the writer's thread and waits for it.
    pub async fn run<T: Send + 'static>(
        &self,
        phase: impl Future<Output = anyhow::Result<T>> + Send + 'static,
    ) -> anyhow::Result<T> {
        let runtime = self.0.as_ref().expect("the writer thread runs until dropped");
        runtime.spawn(phase).await?
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which async code may not do.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// `--per-change`: one line per change, its index, when it was issued (ms from the first), its
/// commit time and the fastest, median and slowest watcher's latency (ms), and last the issue
/// time (ns since the epoch, to match with `perf record -k CLOCK_REALTIME`).
fn write_per_change(path: &str, times: &WriteTimes, logs: &[WatcherLog]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "# change issued_ms commit_ms fastest_ms median_ms slowest_ms issued_epoch_ns")?;
    let first = times.issued.get(1).copied().unwrap_or(0);
    let ms = |n: u64| n as f64 / 1e6;
    for i in 1..times.issued.len() {
        let issued = times.issued[i];
        let got = Distribution::of(
            logs.iter().map(|l| l.received[i]).filter(|&t| t != 0).map(|t| t.saturating_sub(issued)).collect(),
        );
        // -1: no watcher received it.
        let latency = |d: Duration| if got.count == 0 { -1.0 } else { d.as_secs_f64() * 1e3 };
        writeln!(
            out,
            "{i} {:.1} {:.2} {:.2} {:.2} {:.2} {issued}",
            ms(issued.saturating_sub(first)),
            ms(times.acked[i].saturating_sub(issued)),
            latency(got.min),
            latency(got.p50),
            latency(got.max)
        )?;
    }
    Ok(())
}
