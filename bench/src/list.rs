//! `list`: a full listing of a large fleet. Simulated drones (`sim_drone`) attach and heartbeat at
//! the controller's default interval; the benchmark lists every node through `ListNodes` in pages
//! of 1,000 (each page after the first from its page token, at the first page's revision), several
//! times. Then, in the same run and with the Hangar side stopped, etcd holds as many keys with
//! values of the nodes' average encoded size, and the same listing is a `Range` in pages of 1,000
//! at one revision.

use crate::callers;
use crate::controller_proc::{ControllerOpts, ControllerProc};
use crate::etcd::pb;
use crate::measure::Distribution;
use crate::result::ResultLine;
use crate::sim_drone::{self, Fleet};
use futures::StreamExt;
use hangar::v1;
use pb::kv_client::KvClient;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct ListArgs {
    /// Nodes (simulated drones) to list.
    #[arg(long, default_value_t = 10_000)]
    pub nodes: usize,
    /// HTTP/2 connections the drones are spread over (round robin).
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Page size of both listings.
    #[arg(long, default_value_t = 1000)]
    pub page_size: usize,
    /// Full listings per system; the figures are over these.
    #[arg(long, default_value_t = 10)]
    pub listings: usize,
    /// The etcd server binary.
    #[arg(long, default_value = "etcd")]
    pub etcd_bin: String,
    /// A few seconds' smoke run (300 nodes in pages of 100, 3 listings), so that the harness cannot rot.
    #[arg(long)]
    pub quick: bool,
    #[command(flatten)]
    pub controller: ControllerOpts,
}

pub async fn run(mut args: ListArgs) -> anyhow::Result<()> {
    if args.quick {
        (args.nodes, args.connections, args.page_size, args.listings) = (300, 4, 100, 3);
    }
    anyhow::ensure!(args.listings > 0 && args.page_size > 0, "need listings and a page size above 0");
    println!(
        "list benchmark: {} nodes listed in pages of {} through ListNodes, {} times, next to an etcd Range of as many keys of the same size",
        args.nodes, args.page_size, args.listings
    );
    let Listings { decoded: hangar, undecoded, decoding, node_bytes } = hangar_listings(&args).await?;
    let etcd = etcd_listings(&args, node_bytes).await?;
    let (hangar_d, etcd_d) = (Distribution::of(hangar.clone()), Distribution::of(etcd.clone()));
    let undecoded_d = Distribution::of(undecoded.clone());
    let decoding_d = Distribution::of(decoding.clone());
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let best = |v: &[u64]| Duration::from_nanos(v.iter().copied().min().unwrap_or(0));
    let ratio = ms(hangar_d.p50) / ms(etcd_d.p50).max(f64::MIN_POSITIVE);
    println!();
    println!(
        "| {:<27} |         Hangar |           etcd | Hangar/etcd |",
        format!("figure ({} listings)", args.listings)
    );
    println!("|-----------------------------|----------------|----------------|-------------|");
    println!("| entries listed              | {:>14} | {:>14} |           - |", args.nodes, args.nodes);
    println!("| entry size (bytes)          | {node_bytes:>14} | {node_bytes:>14} |           - |");
    for (name, h, e) in [
        ("full listing, best", best(&hangar), best(&etcd)),
        ("full listing, p50", hangar_d.p50, etcd_d.p50),
        ("full listing, max", hangar_d.max, etcd_d.max),
        ("undecoded listing, best", best(&undecoded), best(&etcd)),
        ("undecoded listing, p50", undecoded_d.p50, etcd_d.p50),
        ("client's decoding, p50", decoding_d.p50, etcd_d.p50),
    ] {
        println!(
            "| {name:<27} | {:>14} | {:>14} | {:>11.2} |",
            callers::ms(h),
            callers::ms(e),
            ms(h) / ms(e).max(f64::MIN_POSITIVE)
        );
    }
    ResultLine::new("list")
        .figure("hangar_p50_ms", ms(hangar_d.p50))
        .figure("etcd_p50_ms", ms(etcd_d.p50))
        .figure("ratio", ratio)
        .figure("hangar_undecoded_p50_ms", ms(undecoded_d.p50))
        .figure("undecoded_ratio", ms(undecoded_d.p50) / ms(etcd_d.p50).max(f64::MIN_POSITIVE))
        .figure("decoding_p50_ms", ms(decoding_d.p50))
        .figure("decoding_ratio", ms(decoding_d.p50) / ms(etcd_d.p50).max(f64::MIN_POSITIVE))
        .print();
    Ok(())
}

/// Hangar's listing times (ns), decoded and undecoded, and the nodes' average encoded size.
struct Listings {
    /// The client decodes every node (the SDK's `v1::Node`): what a caller of the SDK waits for.
    decoded: Vec<u64>,
    /// The client keeps each node's encoded bytes, as an etcd client keeps a value: what the
    /// controller and the wire cost without the client's decoding of 10,000 typed nodes.
    undecoded: Vec<u64>,
    /// The client's decoding alone, untimed in the listings above: each undecoded listing's nodes
    /// decoded into `v1::Node`s and dropped, as the decoded listing does, after it was timed. The
    /// decoded listing cannot take less than this, whatever the controller and the wire do.
    decoding: Vec<u64>,
    node_bytes: usize,
}

/// `hangar.v1.ListNodesResponse` with each node left as its encoded bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct UndecodedPage {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    nodes: Vec<bytes::Bytes>,
    #[prost(string, tag = "2")]
    next_page_token: String,
    #[prost(uint64, tag = "3")]
    revision: u64,
}

async fn hangar_listings(args: &ListArgs) -> anyhow::Result<Listings> {
    let controller = ControllerProc::start(&args.controller, &[]).await?;
    let fleet = Arc::new(Fleet::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let mut drones = sim_drone::start_fleet(
        std::slice::from_ref(&controller),
        &fleet,
        &stop,
        args.nodes,
        args.connections,
        1000,
        "bench",
    )
    .await?;
    let attach = sim_drone::wait_attached(&fleet, args.nodes, start, Duration::from_secs(240)).await?;
    println!("hangar: {} drones attached in {:.2} s", args.nodes, attach.as_secs_f64());
    // A plain channel with HTTP/2's default windows, as the etcd client below uses: neither side
    // is tuned, so the two listings compare the servers, not the clients' settings.
    let channel = tonic::transport::Endpoint::from_shared(controller.url.clone())?.tcp_nodelay(true).connect().await?;
    let mut client = v1::node_service_client::NodeServiceClient::new(channel.clone());
    let mut undecoded = tonic::client::Grpc::new(channel);
    let (mut times, mut undecoded_times, mut decoding_times) = (Vec::new(), Vec::new(), Vec::new());
    for listing in 0..args.listings {
        // The two listings alternate which goes first, so that neither always follows the other.
        for decode in [listing % 2 == 0, listing % 2 == 1] {
            let started = Instant::now();
            let (mut listed, mut page_token, mut kept) = (0, String::new(), Vec::new());
            loop {
                let request = v1::ListNodesRequest { filter: None, page_size: args.page_size as i32, page_token };
                let (nodes, next_page_token) = if decode {
                    let page = client.list_nodes(request).await?.into_inner();
                    (page.nodes.len(), page.next_page_token)
                } else {
                    undecoded.ready().await?;
                    let path = http::uri::PathAndQuery::from_static("/hangar.v1.NodeService/ListNodes");
                    let codec = tonic_prost::ProstCodec::<v1::ListNodesRequest, UndecodedPage>::default();
                    let page = undecoded.unary(tonic::Request::new(request), path, codec).await?.into_inner();
                    let listed = page.nodes.len();
                    kept.push(page.nodes);
                    (listed, page.next_page_token)
                };
                listed += nodes;
                if next_page_token.is_empty() {
                    break;
                }
                page_token = next_page_token;
            }
            let elapsed = started.elapsed().as_nanos() as u64;
            if decode {
                times.push(elapsed)
            } else {
                undecoded_times.push(elapsed);
                let started = Instant::now();
                for page in kept {
                    let nodes = page.into_iter().map(v1::Node::decode).collect::<Result<Vec<_>, _>>()?;
                    drop(std::hint::black_box(nodes));
                }
                decoding_times.push(started.elapsed().as_nanos() as u64);
            }
            anyhow::ensure!(listed == args.nodes, "a listing returned {listed} nodes, not {}", args.nodes);
        }
    }
    // The nodes' average encoded size, for etcd's values: measured outside the timed listings,
    // which would otherwise count the client's re-encoding of every node.
    let request = v1::ListNodesRequest { filter: None, page_size: args.page_size as i32, page_token: String::new() };
    let page = client.list_nodes(request).await?.into_inner();
    let bytes = page.nodes.iter().map(|n| n.encoded_len()).sum::<usize>() / page.nodes.len().max(1);
    let lost = Fleet::get(&fleet.sessions_lost);
    let _ = stop_tx.send(true);
    while drones.join_next().await.is_some() {}
    controller.stop().await;
    anyhow::ensure!(lost == 0, "{lost} drone sessions ended during the listings");
    Ok(Listings { decoded: times, undecoded: undecoded_times, decoding: decoding_times, node_bytes: bytes })
}

const PREFIX: &[u8] = b"/hangar-bench/nodes/";
const PREFIX_END: &[u8] = b"/hangar-bench/nodes0";

async fn etcd_listings(args: &ListArgs, value_size: usize) -> anyhow::Result<Vec<u64>> {
    let crate::etcd::Etcd { mut child, dir: _dir, channel, .. } =
        crate::etcd::Etcd::start(&args.etcd_bin, &args.controller.data_dir).await?;
    let kv = KvClient::new(channel);
    let started = Instant::now();
    // 64 puts in flight: loading is not measured.
    let puts = futures::stream::iter(0..args.nodes).map(|i| {
        let mut kv = kv.clone();
        let mut key = PREFIX.to_vec();
        key.extend_from_slice(format!("sim-drone-{i:05}").as_bytes());
        let value = vec![b'.'; value_size];
        async move { kv.put(pb::PutRequest { key, value, ..Default::default() }).await }
    });
    let results: Vec<_> = puts.buffer_unordered(64).collect().await;
    for result in results {
        result?;
    }
    println!("etcd: {} keys of {value_size} bytes written in {:.2} s", args.nodes, started.elapsed().as_secs_f64());
    let mut times = Vec::new();
    for _ in 0..args.listings {
        let mut kv = kv.clone();
        let started = Instant::now();
        let (mut listed, mut from, mut revision) = (0, PREFIX.to_vec(), 0);
        loop {
            let request = pb::RangeRequest {
                key: from,
                range_end: PREFIX_END.to_vec(),
                limit: args.page_size as i64,
                revision,
                serializable: false,
            };
            let page = kv.range(request).await?.into_inner();
            if revision == 0 {
                revision = page.header.as_ref().map_or(0, |h| h.revision);
            }
            listed += page.kvs.len();
            match (page.more, page.kvs.last()) {
                (true, Some(last)) => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
        times.push(started.elapsed().as_nanos() as u64);
        anyhow::ensure!(listed == args.nodes, "an etcd listing returned {listed} keys, not {}", args.nodes);
    }
    child.start_kill()?;
    let _ = child.wait().await;
    Ok(times)
}
