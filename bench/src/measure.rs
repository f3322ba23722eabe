//! What a run measures and how it is summarized and printed.
//!
//! Timestamps are wall-clock nanoseconds (`CLOCK_REALTIME`), because the Hangar writer runs in
//! the controller's process and the watchers in this one: the writer takes `issued` just before a
//! write and `acked` when the write has committed; each watcher takes `received` when its client
//! has decoded the message carrying the change. Latency is `received - issued`.

use crate::result::ResultLine;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Which changes are written how. Change 0 is the warm-up (it proves that every watcher is
/// subscribed); then `paced` changes at `rate` per second (a lightly loaded system), `loaded` at
/// `loaded_rate` (a busy one that still keeps up), `heavy` at `heavy_rate` (close to what etcd
/// manages here), and `burst` as fast as the writer goes.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub paced: u32,
    pub rate: u32,
    pub loaded: u32,
    pub loaded_rate: u32,
    pub heavy: u32,
    pub heavy_rate: u32,
    pub burst: u32,
}

impl Plan {
    /// The last change index.
    pub fn last(&self) -> u32 {
        self.paced + self.loaded + self.heavy + self.burst
    }
    pub fn paced_range(&self) -> std::ops::RangeInclusive<u32> {
        1..=self.paced
    }
    pub fn loaded_range(&self) -> std::ops::RangeInclusive<u32> {
        self.paced + 1..=self.paced + self.loaded
    }
    pub fn heavy_range(&self) -> std::ops::RangeInclusive<u32> {
        self.paced + self.loaded + 1..=self.paced + self.loaded + self.heavy
    }
    pub fn burst_range(&self) -> std::ops::RangeInclusive<u32> {
        self.paced + self.loaded + self.heavy + 1..=self.last()
    }
}

/// When each change was written, indexed by change.
#[derive(Debug, Clone, Default)]
pub struct WriteTimes {
    pub issued: Vec<u64>,
    pub acked: Vec<u64>,
}

impl WriteTimes {
    pub fn new(len: usize) -> WriteTimes {
        WriteTimes { issued: vec![0; len], acked: vec![0; len] }
    }
}

/// What one watcher saw: when it first received each change (0 = never), and how it ended.
#[derive(Debug)]
pub struct WatcherLog {
    pub received: Vec<u64>,
    /// Changes not received yet (burst writes can commit out of index order).
    remaining: usize,
    /// The stream ended with an error before the last change (e.g. cut off as too slow).
    pub error: Option<String>,
}

impl WatcherLog {
    pub fn new(len: usize) -> WatcherLog {
        WatcherLog { received: vec![0; len], remaining: len.saturating_sub(1), error: None }
    }
    /// Records a receipt; returns whether every change has been received.
    pub fn record(&mut self, index: u32, at: u64) -> bool {
        if index > 0
            && let Some(slot) = self.received.get_mut(index as usize)
            && *slot == 0
        {
            *slot = at;
            self.remaining -= 1;
        }
        self.remaining == 0
    }
}

/// Percentiles of a set of durations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Distribution {
    pub min: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub count: usize,
}

impl Distribution {
    pub fn of(mut nanos: Vec<u64>) -> Distribution {
        if nanos.is_empty() {
            return Distribution::default();
        }
        nanos.sort_unstable();
        let at = |q: f64| Duration::from_nanos(nanos[((nanos.len() - 1) as f64 * q).round() as usize]);
        Distribution { min: at(0.0), p50: at(0.50), p99: at(0.99), max: at(1.0), count: nanos.len() }
    }
}

/// The figures of one system.
#[derive(Debug, Clone)]
pub struct Report {
    pub watchers: usize,
    /// Size of one change as the server sends it (the Hangar `Node`, the etcd value).
    pub event_bytes: usize,
    pub commit: Distribution,
    pub paced: Distribution,
    pub loaded: Distribution,
    pub heavy: Distribution,
    pub burst: Distribution,
    /// Deliveries per second in the burst: changes × watchers received, over the time from the
    /// first burst write to the last burst receipt.
    pub burst_throughput: f64,
    pub burst_seconds: f64,
    /// How long the writer took for the burst (the fan-out cannot finish sooner).
    pub burst_write_seconds: f64,
    /// From the last burst write committing to the last receipt: the fan-out backlog.
    pub drain_seconds: f64,
    pub expected: usize,
    pub missing: usize,
    pub watchers_failed: usize,
    pub rss_idle: u64,
    pub rss_watching: u64,
    pub rss_after: u64,
    /// Server CPU time over all phases.
    pub server_cpu: f64,
    /// This process's CPU time over the same phases: the watchers' client (and, for etcd, the
    /// writer).
    pub client_cpu: f64,
}

impl Report {
    pub fn per_watcher_bytes(&self) -> f64 {
        self.rss_watching.saturating_sub(self.rss_idle) as f64 / self.watchers as f64
    }
    pub fn cpu_per_delivery_us(&self) -> f64 {
        self.per_delivery_us(self.server_cpu)
    }
    pub fn client_cpu_per_delivery_us(&self) -> f64 {
        self.per_delivery_us(self.client_cpu)
    }
    fn per_delivery_us(&self, cpu_seconds: f64) -> f64 {
        let delivered = self.expected - self.missing;
        if delivered == 0 { 0.0 } else { cpu_seconds * 1e6 / delivered as f64 }
    }
}

/// Summarizes a run from the writer's times and every watcher's log.
pub fn summarize(plan: &Plan, writes: &WriteTimes, logs: &[WatcherLog], event_bytes: usize) -> Report {
    let latencies = |range: std::ops::RangeInclusive<u32>| {
        let mut nanos = Vec::with_capacity(logs.len() * range.clone().count());
        for log in logs {
            for i in range.clone() {
                let (sent, got) = (writes.issued[i as usize], log.received[i as usize]);
                if got != 0 {
                    nanos.push(got.saturating_sub(sent));
                }
            }
        }
        Distribution::of(nanos)
    };
    let commit = Distribution::of(
        (1..=plan.last() as usize).map(|i| writes.acked[i].saturating_sub(writes.issued[i])).collect(),
    );
    let paced = latencies(plan.paced_range());
    let loaded = latencies(plan.loaded_range());
    let heavy = latencies(plan.heavy_range());
    let burst = latencies(plan.burst_range());
    let burst_start = writes.issued[*plan.burst_range().start() as usize];
    let burst_end = logs
        .iter()
        .flat_map(|log| plan.burst_range().map(move |i| log.received[i as usize]))
        .max()
        .unwrap_or(burst_start);
    let burst_seconds = (burst_end.saturating_sub(burst_start)) as f64 / 1e9;
    let last_ack = writes.acked[plan.last() as usize];
    let burst_write_seconds = last_ack.saturating_sub(burst_start) as f64 / 1e9;
    let drain_seconds = burst_end.saturating_sub(last_ack) as f64 / 1e9;
    let expected = logs.len() * plan.last() as usize;
    let missing = expected - paced.count - loaded.count - heavy.count - burst.count;
    Report {
        watchers: logs.len(),
        event_bytes,
        commit,
        paced,
        loaded,
        heavy,
        burst,
        burst_throughput: if burst_seconds > 0.0 { burst.count as f64 / burst_seconds } else { 0.0 },
        burst_seconds,
        burst_write_seconds,
        drain_seconds,
        expected,
        missing,
        watchers_failed: logs.iter().filter(|l| l.error.is_some()).count(),
        rss_idle: 0,
        rss_watching: 0,
        rss_after: 0,
        server_cpu: 0.0,
        client_cpu: 0.0,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Prints the figures side by side with Hangar/etcd ratios (< 1 is better for Hangar except for
/// throughput, where > 1 is).
pub fn print_table(hangar: Option<&Report>, etcd: Option<&Report>) {
    type Row = (&'static str, fn(&Report) -> String, Option<fn(&Report) -> f64>);
    let rows: Vec<Row> = vec![
        ("event size (bytes)", |r| r.event_bytes.to_string(), None),
        ("write commit p50", |r| ms(r.commit.p50), Some(|r| r.commit.p50.as_secs_f64())),
        ("paced latency p50", |r| ms(r.paced.p50), Some(|r| r.paced.p50.as_secs_f64())),
        ("paced latency p99", |r| ms(r.paced.p99), Some(|r| r.paced.p99.as_secs_f64())),
        ("paced latency max", |r| ms(r.paced.max), Some(|r| r.paced.max.as_secs_f64())),
        ("loaded latency p50", |r| ms(r.loaded.p50), Some(|r| r.loaded.p50.as_secs_f64())),
        ("loaded latency p99", |r| ms(r.loaded.p99), Some(|r| r.loaded.p99.as_secs_f64())),
        ("loaded latency max", |r| ms(r.loaded.max), Some(|r| r.loaded.max.as_secs_f64())),
        ("heavy latency p50", |r| ms(r.heavy.p50), Some(|r| r.heavy.p50.as_secs_f64())),
        ("heavy latency p99", |r| ms(r.heavy.p99), Some(|r| r.heavy.p99.as_secs_f64())),
        ("heavy latency max", |r| ms(r.heavy.max), Some(|r| r.heavy.max.as_secs_f64())),
        ("burst latency p50", |r| ms(r.burst.p50), Some(|r| r.burst.p50.as_secs_f64())),
        ("burst latency p99", |r| ms(r.burst.p99), Some(|r| r.burst.p99.as_secs_f64())),
        ("burst latency max", |r| ms(r.burst.max), Some(|r| r.burst.max.as_secs_f64())),
        (
            "burst writes, first to last commit",
            |r| format!("{:.2} s", r.burst_write_seconds),
            Some(|r| r.burst_write_seconds),
        ),
        ("burst delivery, first write to end", |r| format!("{:.2} s", r.burst_seconds), Some(|r| r.burst_seconds)),
        ("backlog after the last commit", |r| format!("{:.2} s", r.drain_seconds), Some(|r| r.drain_seconds)),
        ("fan-out throughput (deliveries/s)", |r| format!("{:.0}", r.burst_throughput), Some(|r| r.burst_throughput)),
        ("server RSS idle", |r| mib(r.rss_idle), Some(|r| r.rss_idle as f64)),
        ("server RSS, watchers open", |r| mib(r.rss_watching), Some(|r| r.rss_watching as f64)),
        ("server RSS after the run", |r| mib(r.rss_after), Some(|r| r.rss_after as f64)),
        (
            "memory per watcher",
            |r| format!("{:.1} KiB", r.per_watcher_bytes() / 1024.0),
            Some(|r| r.per_watcher_bytes()),
        ),
        ("server CPU, all phases", |r| format!("{:.2} s", r.server_cpu), Some(|r| r.server_cpu)),
        (
            "server CPU per delivery",
            |r| format!("{:.2} µs", r.cpu_per_delivery_us()),
            Some(|r| r.cpu_per_delivery_us()),
        ),
        (
            "client CPU per delivery",
            |r| format!("{:.2} µs", r.client_cpu_per_delivery_us()),
            Some(|r| r.client_cpu_per_delivery_us()),
        ),
        ("deliveries missing", |r| format!("{} of {}", r.missing, r.expected), None),
        ("watchers failed", |r| r.watchers_failed.to_string(), None),
    ];
    println!();
    println!("| {:<34} | {:>14} | {:>14} | {:>11} |", "figure", "Hangar", "etcd", "Hangar/etcd");
    println!("|{:-<36}|{:->16}|{:->16}|{:->13}|", "", "", "", "");
    let cell = |r: Option<&Report>, f: fn(&Report) -> String| r.map(f).unwrap_or_else(|| "-".into());
    for (name, show, value) in rows {
        let ratio = match (hangar, etcd, value) {
            (Some(h), Some(e), Some(v)) if v(e) != 0.0 => format!("{:.2}", v(h) / v(e)),
            _ => "-".into(),
        };
        println!("| {:<34} | {:>14} | {:>14} | {:>11} |", name, cell(hangar, show), cell(etcd, show), ratio);
    }
}

/// The `RESULT` line: each system's latency p99 per phase, fan-out throughput, memory per watcher
/// and CPU per delivery, then the ratios the watch figures are judged by (Hangar/etcd; below 1 is
/// better except for throughput). A system that was not run (`--only`) is left out.
pub fn print_result(hangar: Option<&Report>, etcd: Option<&Report>) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut line = ResultLine::new("watch");
    for (system, report) in [("hangar", hangar), ("etcd", etcd)] {
        let Some(r) = report else { continue };
        line = line
            .figure(&format!("{system}_paced_p99_ms"), ms(r.paced.p99))
            .figure(&format!("{system}_loaded_p99_ms"), ms(r.loaded.p99))
            .figure(&format!("{system}_heavy_p99_ms"), ms(r.heavy.p99))
            .figure(&format!("{system}_fanout_per_s"), r.burst_throughput.round())
            .figure(&format!("{system}_kib_per_watcher"), r.per_watcher_bytes() / 1024.0)
            .figure(&format!("{system}_cpu_us_per_delivery"), r.cpu_per_delivery_us())
            .figure(&format!("{system}_missing"), r.missing);
    }
    if let (Some(h), Some(e)) = (hangar, etcd) {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        line = line
            .figure("heavy_p99_ratio", ratio(ms(h.heavy.p99), ms(e.heavy.p99)))
            .figure("fanout_ratio", ratio(h.burst_throughput, e.burst_throughput))
            .figure("memory_ratio", ratio(h.per_watcher_bytes(), e.per_watcher_bytes()));
    }
    line.print();
}
