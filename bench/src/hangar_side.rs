//! The Hangar side: a controller on SQLite in its own process (the `hangar-bench-controller`
//! binary, on jemalloc as `hangar-server` is), which also hosts the writer, and WatchNodes or
//! WatchBackends watchers here.
//!
//! The writer lives in the controller's process because it writes to the store directly (a
//! `backend_count` update of one node per change, or one backend state change) and the store
//! wakes the watch hub in-process; it is driven over the child's stdin and reports its write
//! times on stdout.

use crate::backend_side::BackendWriter;
use crate::fanout::{self, WatcherCtx, Writer};
use crate::measure::{Plan, Report, WatcherLog, WriteTimes};
use crate::procs;
use crate::{WatchArgs, WatchKind};
use chrono::Utc;
use futures::future::BoxFuture;
use hangar::domain::{NodeKind, NodeResources};
use hangar::v1;
use hangar_server::controller::{Controller, ControllerConfig, LivenessConfig};
use hangar_server::limits::LimitsConfig;
use hangar_server::store::{self, NodeRegistration, NodeUpdate, UpdateCondition};
use prost::Message;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};
use tonic::transport::{Channel, Endpoint};

/// Used for the etcd value when the Hangar side does not run.
pub const NODE_EVENT_SIZE_HINT: usize = 500;

#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// Directory for the SQLite database.
    #[arg(long)]
    dir: PathBuf,
    /// What the writer changes: nodes or backends.
    #[arg(long, value_enum, default_value = "nodes")]
    kind: WatchKind,
    /// Changes of the whole run (backends: how many backends each step goes round).
    #[arg(long, default_value_t = 0)]
    events: u32,
    /// Other nodes to register before serving (what a `send_initial` snapshot lists).
    #[arg(long, default_value_t = 0)]
    nodes: usize,
}

/// A node as a real drone reports it: a typical set of labels, so that an event has a
/// realistic size (~500 bytes on the wire).
fn registration() -> NodeRegistration {
    let labels = [
        ("topology.kubernetes.io/region", "eu-west-1"),
        ("topology.kubernetes.io/zone", "eu-west-1a"),
        ("node.kubernetes.io/instance-type", "m6i.2xlarge"),
        ("hangar.dev/team", "sessions-platform"),
        ("hangar.dev/image-cache", "warm"),
        ("kernel.version", "6.1.0-18-cloud-amd64"),
        ("os.image", "debian-12-bookworm"),
        ("cpu.arch", "amd64"),
        ("gpu", "none"),
        ("rack", "r12-u07"),
    ];
    NodeRegistration {
        kind: NodeKind::Drone,
        name: "bench-drone-0001.eu-west-1a.internal".into(),
        cluster: "bench".into(),
        pool: "general-purpose".into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        version: hangar::VERSION.into(),
        backend_capacity: 1_000_000,
        resources: NodeResources {
            cpu_cores: 8,
            cpu_used_millis: 0,
            memory_total_bytes: 32 << 30,
            memory_used_bytes: 1 << 30,
        },
    }
}

/// The child: serves a controller and writes changes when told to.
///
/// Protocol (one line each): it prints `ready ADDR EVENT_BYTES`; then `warm K` writes warm-up
/// change K and answers `ok`; `write FROM TO RATE CONCURRENCY` writes changes FROM..=TO and, once
/// all are written, answers one `t INDEX ISSUED_NS ACKED_NS` per change, then `ok`; end of input
/// stops it.
pub async fn serve(args: ControllerArgs) -> anyhow::Result<()> {
    let url = format!("sqlite://{}", args.dir.join("hangar.db").display());
    let store = store::open(&url).await?;
    let hour = Duration::from_secs(3600);
    let config = ControllerConfig {
        reflection: hangar_server::auth::Reflection::Off,
        // The node has no drone behind it: keep liveness from turning it OFFLINE mid-run.
        liveness: LivenessConfig { unhealthy_after: hour, offline_after: hour, ..LivenessConfig::default() },
        // Thousands of watchers from one address: per-caller limits would refuse most of them.
        limits: LimitsConfig::default().per_caller_off(),
        ..ControllerConfig::default()
    };
    let node = store.attach_node(registration(), &config.controller_id, Utc::now()).await?;
    // The other nodes, as many drones of the same shape, 16 writes in flight.
    let others = futures::StreamExt::map(futures::stream::iter(0..args.nodes), |i| {
        let (store, controller_id) = (store.clone(), config.controller_id.clone());
        let registration = NodeRegistration { name: format!("bench-drone-{i:05}"), ..registration() };
        async move { store.attach_node(registration, &controller_id, Utc::now()).await }
    });
    let others: Vec<_> = futures::StreamExt::collect(futures::StreamExt::buffer_unordered(others, 16)).await;
    others.into_iter().collect::<Result<Vec<_>, _>>()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let controller = Controller::start(store.clone(), config, listener).await?;
    let (event_bytes, warm, write): (usize, Change, Change) = match args.kind {
        WatchKind::Nodes => {
            let update = {
                let (store, id) = (store.clone(), node.id.clone());
                move |u: NodeUpdate| {
                    let (store, id) = (store.clone(), id.clone());
                    async move {
                        store
                            .update_node(&id, u, UpdateCondition::Always)
                            .await?
                            .ok_or_else(|| anyhow::anyhow!("node gone"))
                            .map(drop)
                    }
                }
            };
            let resources = node.resources;
            let warm_update = update.clone();
            let warm: Change = Arc::new(move |k| {
                let resources = NodeResources { cpu_used_millis: u64::from(k), ..resources };
                Box::pin(warm_update(NodeUpdate { resources: Some(resources), ..Default::default() }))
            });
            let write: Change =
                Arc::new(move |i| Box::pin(update(NodeUpdate { backend_count: Some(i), ..Default::default() })));
            (v1::Node::from(&node).encoded_len(), warm, write)
        }
        WatchKind::Backends => {
            let backends = Arc::new(BackendWriter::new(store.clone(), node.id.clone(), args.events));
            let event_bytes = backends.event_bytes().await?;
            let warm_writer = backends.clone();
            let warm: Change = Arc::new(move |k| {
                let backends = warm_writer.clone();
                Box::pin(async move { backends.warm_up(k).await })
            });
            let write: Change = Arc::new(move |i| {
                let backends = backends.clone();
                Box::pin(async move { backends.change(i).await })
            });
            (event_bytes, warm, write)
        }
    };
    println!("ready {} {event_bytes}", controller.local_addr());

    // The writer stands in for the controller's clients: on its own thread, its writes take the
    // controller's store path.
    let writer = fanout::WriterThread::new()?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["warm", k] => warm(k.parse()?).await?,
            ["write", from, to, rate, concurrency] => {
                let write = write.clone();
                let write = move |i| write(i);
                // The times are printed after the phase: printing is a blocking write to a pipe
                // that the busy parent may drain late, and it must not stall the controller's
                // threads while they are measured.
                let (from, to, rate, concurrency) = (from.parse()?, to.parse()?, rate.parse()?, concurrency.parse()?);
                let phase = async move {
                    let mut times = Vec::new();
                    let done = |i, issued, acked| times.push((i, issued, acked));
                    fanout::paced(from, to, rate, concurrency, write, done).await?;
                    anyhow::Ok(times)
                };
                let times = writer.run(phase).await?;
                let mut out = std::io::stdout().lock();
                for (i, issued, acked) in times {
                    writeln!(out, "t {i} {issued} {acked}")?;
                }
            }
            _ => anyhow::bail!("unknown command {line:?}"),
        }
        println!("ok");
    }
    drop(writer);
    controller.shutdown().await
}

/// One change of the run, `k` or `i`: a warm-up or a measured change.
type Change = Arc<dyn Fn(u32) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// The parent's handle on the child's writer.
struct ChildWriter {
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl ChildWriter {
    async fn command(&mut self, line: String, times: Option<&mut WriteTimes>) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        let mut times = times;
        loop {
            let reply = self.stdout.next_line().await?.ok_or_else(|| anyhow::anyhow!("controller exited"))?;
            let words: Vec<&str> = reply.split_whitespace().collect();
            match (words.as_slice(), times.as_deref_mut()) {
                (["ok"], _) => return Ok(()),
                (["t", i, issued, acked], Some(times)) => {
                    let i: usize = i.parse()?;
                    times.issued[i] = issued.parse()?;
                    times.acked[i] = acked.parse()?;
                }
                _ => anyhow::bail!("unexpected reply from the controller: {reply:?}"),
            }
        }
    }
}

impl Writer for ChildWriter {
    async fn warm_up(&mut self, k: u32) -> anyhow::Result<()> {
        self.command(format!("warm {k}"), None).await
    }

    async fn write(
        &mut self,
        from: u32,
        to: u32,
        rate: u32,
        concurrency: usize,
        times: &mut WriteTimes,
    ) -> anyhow::Result<()> {
        self.command(format!("write {from} {to} {rate} {concurrency}"), Some(times)).await
    }
}

/// `hangar-bench-controller`, which cargo builds next to `hangar-bench`.
fn controller_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name("hangar-bench-controller");
    anyhow::ensure!(
        path.exists(),
        "{} is missing: it is built with hangar-bench (cargo build --release -p hangar-bench)",
        path.display()
    );
    Ok(path)
}

pub async fn run(args: &WatchArgs, plan: &Plan) -> anyhow::Result<Report> {
    let dir = tempfile::Builder::new().prefix("hangar-bench-").tempdir_in(&args.data_dir)?;
    let mut command = Command::new(controller_binary()?);
    command.arg("--dir").arg(dir.path());
    command.arg("--kind").arg(args.kind.as_str()).arg("--events").arg(args.events.to_string());
    command.arg("--nodes").arg(args.nodes.to_string());
    let mut child = procs::spawn_owned(command)?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("controller exited at once"))?;
    let stdin = child.stdin.take().expect("piped");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
    // Registering the other nodes is part of the start.
    let start_within = Duration::from_secs(30 + args.nodes as u64 / 100);
    let ready = tokio::time::timeout(start_within, stdout.next_line())
        .await
        .map_err(|_| anyhow::anyhow!("the controller did not start within {start_within:?}"))??
        .ok_or_else(|| anyhow::anyhow!("the controller exited during start-up"))?;
    let (addr, event_bytes) = match ready.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["ready", addr, bytes] => (addr.to_string(), bytes.parse::<usize>()?),
        _ => anyhow::bail!("unexpected first line from the controller: {ready:?}"),
    };
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        channels.push(Endpoint::from_shared(format!("http://{addr}"))?.connect().await?);
    }

    let mut writer = ChildWriter { stdin, stdout };
    let kind = args.kind;
    let events = args.events;
    // With other nodes registered, node watchers start with a snapshot of them all.
    let snapshots = (args.nodes > 0 && kind == WatchKind::Nodes).then(|| Arc::new(Snapshots::default()));
    let report = fanout::drive("hangar", args, plan, pid, event_bytes, &mut writer, |i, ctx| {
        let channel = channels[i % channels.len()].clone();
        let snapshots = snapshots.clone();
        async move {
            match kind {
                WatchKind::Nodes => watcher::<ResponseIndex>(channel, ctx, (), snapshots).await,
                WatchKind::Backends => {
                    let round = BackendWriter::round(events);
                    watcher::<crate::backend_side::ResponseIndex>(channel, ctx, round, None).await
                }
            }
        }
    })
    .await?;
    if let Some(snapshots) = snapshots {
        snapshots.print(args.nodes + 1, args.watchers);
    }

    // End of input stops the controller; give it a moment, then the guard kills it.
    drop(writer);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    Ok(report)
}

/// `WatchNodesResponse` as the benchmark reads it: only the change index (`backend_count`);
/// every other field is skipped undecoded. The etcd watchers likewise only read their index
/// from the value, so that both clients cost this process about the same per message and the
/// comparison is between the servers.
#[derive(Clone, PartialEq, prost::Message)]
struct ResponseIndex {
    #[prost(message, optional, tag = "1")]
    event: Option<EventIndex>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EventIndex {
    #[prost(int32, tag = "1")]
    r#type: i32,
    #[prost(message, optional, tag = "2")]
    node: Option<NodeIndex>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NodeIndex {
    #[prost(uint32, tag = "13")]
    backend_count: u32,
}

/// A watch response read only as far as the benchmark needs: the change index it carries.
pub trait WatchIndex: prost::Message + Default + Send + 'static {
    /// The watch's request message and path.
    type Request: prost::Message + Default + Send + 'static;
    const PATH: &'static str;
    /// What the index is computed from (backends: how many backends a round has).
    type Context: Copy + Send + 'static;
    /// `None` when the response carries no change; `Some(None)` for a warm-up change.
    fn index(self, context: Self::Context) -> Option<Option<u32>>;
    /// The request, asking for the initial snapshot or not.
    fn request(send_initial: bool) -> Self::Request {
        let _ = send_initial;
        Self::Request::default()
    }
    /// Whether this response ends the initial snapshot.
    fn snapshot_end(&self) -> bool {
        false
    }
}

impl WatchIndex for ResponseIndex {
    type Request = v1::WatchNodesRequest;
    const PATH: &'static str = "/hangar.v1.NodeService/WatchNodes";
    type Context = ();

    fn index(self, (): ()) -> Option<Option<u32>> {
        let node = self.event.and_then(|e| e.node)?;
        Some((node.backend_count != 0).then_some(node.backend_count))
    }

    fn request(send_initial: bool) -> v1::WatchNodesRequest {
        v1::WatchNodesRequest { send_initial, ..Default::default() }
    }

    fn snapshot_end(&self) -> bool {
        self.event.as_ref().is_some_and(|e| e.r#type == v1::NodeEventType::SnapshotEnd as i32)
    }
}

/// How long each watcher's `send_initial` snapshot took, from the call to its SNAPSHOT_END.
#[derive(Default)]
struct Snapshots {
    times: std::sync::Mutex<Vec<u64>>,
    /// When the first watcher called and the last one had its snapshot (ns, [`now_ns`]).
    first_call: std::sync::atomic::AtomicU64,
    last_end: std::sync::atomic::AtomicU64,
}

impl Snapshots {
    fn called(&self, at: u64) {
        let _ = self.first_call.compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn ended(&self, called: u64, at: u64) {
        self.times.lock().unwrap().push(at.saturating_sub(called));
        self.last_end.fetch_max(at, Ordering::Relaxed);
    }

    fn print(&self, nodes: usize, watchers: usize) {
        let times = self.times.lock().unwrap().clone();
        let got = times.len();
        let d = crate::measure::Distribution::of(times);
        let all = Duration::from_nanos(
            self.last_end.load(Ordering::Relaxed).saturating_sub(self.first_call.load(Ordering::Relaxed)),
        );
        println!(
            "hangar: send_initial snapshot of {nodes} nodes, {got} of {watchers} watchers: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; all {watchers} within {:.2} s",
            d.p50.as_secs_f64() * 1e3,
            d.p99.as_secs_f64() * 1e3,
            d.max.as_secs_f64() * 1e3,
            all.as_secs_f64()
        );
    }
}

async fn open_watch<R: WatchIndex>(channel: Channel, send_initial: bool) -> Result<tonic::Streaming<R>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|err| tonic::Status::unavailable(err.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(R::PATH);
    let codec = tonic_prost::ProstCodec::<R::Request, R>::default();
    Ok(grpc.server_streaming(tonic::Request::new(R::request(send_initial)), path, codec).await?.into_inner())
}

async fn watcher<R: WatchIndex>(
    channel: Channel,
    ctx: WatcherCtx,
    context: R::Context,
    snapshots: Option<Arc<Snapshots>>,
) -> WatcherLog {
    let mut log = WatcherLog::new(ctx.plan.last() as usize + 1);
    let called = crate::measure::now_ns();
    if let Some(snapshots) = &snapshots {
        snapshots.called(called);
    }
    // Snapshot events (the registered nodes as ADDED) are not changes of the run.
    let mut in_snapshot = snapshots.is_some();
    let mut stream = match open_watch::<R>(channel, in_snapshot).await {
        Ok(stream) => stream,
        Err(status) => {
            log.error = Some(status.to_string());
            return log;
        }
    };
    let mut warm = false;
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            _ = ctx.stopped() => return log,
        };
        match message {
            Ok(Some(response)) => {
                if in_snapshot {
                    if response.snapshot_end() {
                        in_snapshot = false;
                        if let Some(snapshots) = &snapshots {
                            snapshots.ended(called, crate::measure::now_ns());
                        }
                    }
                    continue;
                }
                let Some(index) = response.index(context) else { continue };
                if ctx.received(&mut log, index, &mut warm) {
                    return log;
                }
            }
            Ok(None) => {
                log.error = Some("stream ended".into());
                return log;
            }
            Err(status) => {
                log.error = Some(status.to_string());
                return log;
            }
        }
    }
}
