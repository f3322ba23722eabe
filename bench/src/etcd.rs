//! The anchor: etcd (the Debian `etcd-server` package, 3.4) on loopback with a temporary data
//! directory, one Watch call per watcher on a key prefix, and the writer putting one key.
//!
//! etcd is spoken to with the subset of its API in `proto/etcd.proto`, generated here with the
//! same tonic as Hangar's; the `etcd-client` crate would also fit (it uses tonic 0.14) but its
//! build script needs a system `protoc`, which this workspace does without.

use crate::WatchArgs;
use crate::fanout::{self, WatcherCtx, Writer};
use crate::measure::{Plan, Report, WatcherLog, WriteTimes};
use crate::procs;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;
use tonic::transport::{Channel, Endpoint};

#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::kv_client::KvClient;
use pb::watch_client::WatchClient;

const PREFIX: &[u8] = b"/hangar-bench/";
/// The end of the prefix range: the prefix with its last byte incremented ('/' + 1 = '0').
const PREFIX_END: &[u8] = b"/hangar-bench0";
const KEY: &[u8] = b"/hangar-bench/nodes/bench-drone-0001";

/// The value of change `i`: its index in ASCII, padded to the size of a Hangar node event.
/// Warm-ups start with `w`.
fn value(tag: &str, size: usize) -> Vec<u8> {
    let mut value = tag.as_bytes().to_vec();
    value.resize(size.max(tag.len()), b'.');
    value
}

fn index_of(value: &[u8]) -> Option<u32> {
    let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&value[..digits]).ok()?.parse().ok()
}

struct EtcdWriter {
    kv: KvClient<Channel>,
    value_size: usize,
    thread: fanout::WriterThread,
}

impl EtcdWriter {
    async fn put(&mut self, value: Vec<u8>) -> anyhow::Result<()> {
        self.kv.put(pb::PutRequest { key: KEY.to_vec(), value, ..Default::default() }).await?;
        Ok(())
    }
}

impl Writer for EtcdWriter {
    async fn warm_up(&mut self, k: u32) -> anyhow::Result<()> {
        self.put(value(&format!("w{k}"), self.value_size)).await
    }

    async fn write(
        &mut self,
        from: u32,
        to: u32,
        rate: u32,
        concurrency: usize,
        times: &mut WriteTimes,
    ) -> anyhow::Result<()> {
        let (size, kv) = (self.value_size, self.kv.clone());
        let write = move |i: u32| {
            let mut kv = kv.clone();
            let put =
                pb::PutRequest { key: KEY.to_vec(), value: value(&format!("{i:010}"), size), ..Default::default() };
            async move { kv.put(put).await.map(drop).map_err(anyhow::Error::from) }
        };
        let phase = async move {
            let mut written = Vec::new();
            let done = |i: u32, issued, acked| written.push((i, issued, acked));
            fanout::paced(from, to, rate, concurrency, write, done).await?;
            anyhow::Ok(written)
        };
        for (i, issued, acked) in self.thread.run(phase).await? {
            times.issued[i as usize] = issued;
            times.acked[i as usize] = acked;
        }
        Ok(())
    }
}

/// An etcd of the benchmark's own: a child process on free ports with its data in a temporary
/// directory, answering reads.
pub struct Etcd {
    pub child: tokio::process::Child,
    /// Holds the data directory and `etcd.log`; removed when dropped.
    pub dir: tempfile::TempDir,
    pub endpoint: Endpoint,
    pub channel: Channel,
}

impl Etcd {
    /// Starts `etcd_bin` with its data under `data_dir` and waits (up to 30 s) until it answers a
    /// read; an etcd that exits before is reported with its log.
    pub async fn start(etcd_bin: &str, data_dir: &std::path::Path) -> anyhow::Result<Etcd> {
        let dir = tempfile::Builder::new().prefix("hangar-bench-").tempdir_in(data_dir)?;
        let (client_port, peer_port) = (procs::free_port()?, procs::free_port()?);
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new(etcd_bin);
        command
            .arg("--name=bench")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=bench={peer_url}"))
            .arg("--logger=zap")
            .arg("--log-level=error")
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("etcd.log"))?));
        let mut child = procs::spawn_owned(command).map_err(|err| {
            anyhow::anyhow!("cannot start {etcd_bin} ({err}); install it: apt-get install etcd-server")
        })?;
        let endpoint = Endpoint::from_shared(client_url)?;
        let started = tokio::time::Instant::now();
        loop {
            if let Ok(channel) = endpoint.connect().await
                && KvClient::new(channel.clone())
                    .range(pb::RangeRequest { key: PREFIX.to_vec(), ..Default::default() })
                    .await
                    .is_ok()
            {
                return Ok(Etcd { child, dir, endpoint, channel });
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default();
                anyhow::bail!("etcd exited with {status}:\n{log}");
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "etcd did not start within 30s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub async fn run(args: &WatchArgs, plan: &Plan, value_size: usize) -> anyhow::Result<Report> {
    let Etcd { mut child, dir: _dir, endpoint, channel } = Etcd::start(&args.etcd_bin, &args.data_dir).await?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("etcd exited at once"))?;
    let mut kv = KvClient::new(channel);
    kv.put(pb::PutRequest { key: KEY.to_vec(), value: value("w0", value_size), ..Default::default() }).await?;
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        channels.push(endpoint.connect().await?);
    }

    let mut writer = EtcdWriter { kv, value_size, thread: fanout::WriterThread::new()? };
    let report = fanout::drive("etcd", args, plan, pid, value_size, &mut writer, |i, ctx| {
        watcher(channels[i % channels.len()].clone(), ctx)
    })
    .await?;
    child.start_kill()?;
    let _ = child.wait().await;
    Ok(report)
}

async fn watcher(channel: Channel, ctx: WatcherCtx) -> WatcherLog {
    let mut log = WatcherLog::new(ctx.plan.last() as usize + 1);
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: PREFIX.to_vec(),
            range_end: PREFIX_END.to_vec(),
            ..Default::default()
        })),
    };
    // The request side stays open: etcd ends a watch stream whose client half-closes.
    let requests = futures::StreamExt::chain(futures::stream::iter([create]), futures::stream::pending());
    let mut stream = match WatchClient::new(channel).watch(requests).await {
        Ok(response) => response.into_inner(),
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
                if response.canceled {
                    log.error = Some(format!("watch canceled: {}", response.cancel_reason));
                    return log;
                }
                for event in response.events {
                    let Some(kv) = event.kv else { continue };
                    if ctx.received(&mut log, index_of(&kv.value), &mut warm) {
                        return log;
                    }
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
