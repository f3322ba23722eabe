//! Per-caller limits on a real controller: a caller over its rate, its calls in flight or its
//! watch streams gets RESOURCE_EXHAUSTED with the reason and recovers once under the limit again,
//! while what it already has open keeps running and a drone's link is never refused.

use futures::StreamExt;
use hangar::error::{error_info, metadata, reason, retry_after};
use hangar::v1::{self, backend_service_client::BackendServiceClient, node_service_client::NodeServiceClient};
use hangar_server::limits::{LimitLayer, LimitsConfig};
use hangar_testkit::eventually;
use hangar_tests::{ManualDrone, TestCluster, drone_hello, test_config};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Status};

const WAIT: Duration = Duration::from_secs(10);

async fn cluster_with(limits: LimitsConfig) -> TestCluster {
    TestCluster::sqlite_with(hangar_server::controller::ControllerConfig { limits, ..test_config() }).await
}

fn reason_of(status: &Status) -> String {
    error_info(status).map(|(reason, _)| reason).unwrap_or_default()
}

fn watch_all() -> v1::WatchNodesRequest {
    v1::WatchNodesRequest { send_initial: true, ..Default::default() }
}

#[tokio::test]
async fn a_caller_over_its_rate_is_told_when_to_retry_and_is_served_again_after_that() {
    let cluster = cluster_with(LimitsConfig { rate_per_second: 5, burst: 5, ..LimitsConfig::default() }).await;
    let mut nodes = cluster.nodes().await;
    for i in 0..5 {
        nodes
            .list_nodes(v1::ListNodesRequest::default())
            .await
            .unwrap_or_else(|s| panic!("call {i} of the burst: {s:?}"));
    }
    let refused =
        nodes.list_nodes(v1::ListNodesRequest::default()).await.expect_err("the sixth call is over the burst");
    assert_eq!((refused.code(), reason_of(&refused).as_str()), (Code::ResourceExhausted, reason::RATE_LIMITED));
    let delay = retry_after(&refused).expect("a retry delay");
    assert!(delay > Duration::ZERO && delay <= Duration::from_millis(200), "one token every 200 ms: {delay:?}");
    let (_, meta) = error_info(&refused).unwrap();
    assert!(meta[metadata::RETRY_AFTER_MS].parse::<u64>().unwrap() >= 1, "{meta:?}");
    assert!(refused.metadata().get(metadata::RETRY_AFTER_MS).is_some(), "also as gRPC metadata");

    // Opening a watch is a request too.
    let watch = NodeServiceClient::new(cluster.channel().await).watch_nodes(watch_all()).await;
    assert_eq!(watch.expect_err("still over the rate").code(), Code::ResourceExhausted);

    tokio::time::sleep(retry_after(&refused).unwrap()).await;
    nodes.list_nodes(v1::ListNodesRequest::default()).await.expect("served again after the delay it was given");
    cluster.shutdown().await;
}

#[tokio::test]
async fn the_watch_cap_holds_per_caller_counts_every_watch_kind_and_frees_a_slot_when_a_watch_ends() {
    let cluster = cluster_with(LimitsConfig { max_watches: 2, ..LimitsConfig::default() }).await;
    let channel = cluster.channel().await;
    let mut nodes = NodeServiceClient::new(channel.clone());
    let mut backends = BackendServiceClient::new(channel.clone());
    let first = nodes.watch_nodes(watch_all()).await.expect("first watch").into_inner();
    let mut second = nodes.watch_nodes(watch_all()).await.expect("second watch").into_inner();
    let refused = nodes.watch_nodes(watch_all()).await.expect_err("a third watch");
    assert_eq!((refused.code(), reason_of(&refused).as_str()), (Code::ResourceExhausted, reason::WATCH_LIMIT_REACHED));
    assert_eq!(error_info(&refused).unwrap().1[metadata::LIMIT], "2");
    // WatchBackend is a watch too: refused before it looks the backend up.
    let refused = backends.watch_backend(v1::WatchBackendRequest { id: "bk-none".into() }).await.unwrap_err();
    assert_eq!(reason_of(&refused), reason::WATCH_LIMIT_REACHED);
    // Unary calls are not watches.
    nodes.list_nodes(v1::ListNodesRequest::default()).await.expect("a unary call passes");

    // The open watches keep running: at the cap, nothing is cut off.
    assert_eq!(second.next().await.unwrap().unwrap().event.unwrap().r#type(), v1::NodeEventType::SnapshotEnd);
    let drone = ManualDrone::attach(&cluster.url(), drone_hello("d1")).await.expect("a drone attaches at the cap");
    let added = tokio::time::timeout(WAIT, second.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(added.event.unwrap().node.unwrap().id, drone.node_id);

    drop(first);
    let mut third = eventually(WAIT, "a slot freed by the closed watch", async || {
        nodes.watch_nodes(watch_all()).await.map(tonic::Response::into_inner)
    })
    .await;
    assert!(third.next().await.unwrap().is_ok());
    cluster.shutdown().await;
}

#[tokio::test]
async fn drones_and_proxies_attach_whatever_the_rate_and_watch_limits() {
    let limits = LimitsConfig { rate_per_second: 1, burst: 1, max_watches: 1, ..LimitsConfig::default() };
    let cluster = cluster_with(limits).await;
    let mut nodes = cluster.nodes().await;
    nodes.list_nodes(v1::ListNodesRequest::default()).await.expect("the one token");
    let refused = nodes.list_nodes(v1::ListNodesRequest::default()).await.unwrap_err();
    assert_eq!(reason_of(&refused), reason::RATE_LIMITED);
    let mut drones = Vec::new();
    for name in ["d1", "d2", "d3"] {
        drones.push(ManualDrone::attach(&cluster.url(), drone_hello(name)).await.expect("a drone is never limited"));
    }
    let proxy = hangar_tests::ManualProxy::attach(&cluster.url(), "edge").await;
    assert!(!proxy.node_id.is_empty());
    // Health checks are exempt too: a probe sees the truth while its address is limited.
    let mut health = tonic_health::pb::health_client::HealthClient::new(cluster.channel().await);
    for _ in 0..5 {
        health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health");
    }
    cluster.shutdown().await;
}

/// A stand-in for the controller's routes whose calls wait at a gate: what makes calls stay in
/// flight long enough to see the concurrency limit, behind the same layer the controller uses.
#[derive(Clone)]
struct Gated {
    gate: Arc<tokio::sync::Semaphore>,
    arrived: Arc<std::sync::atomic::AtomicUsize>,
}

impl tower::Service<http::Request<tonic::body::Body>> for Gated {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
        self.arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let gate = self.gate.clone();
        Box::pin(async move {
            gate.acquire().await.expect("gate open").forget();
            Ok(Status::not_found("passed the gate").into_http())
        })
    }
}

#[tokio::test]
async fn calls_over_the_concurrency_limit_are_refused_until_one_in_flight_finishes() {
    let gated = Gated { gate: Arc::new(tokio::sync::Semaphore::new(0)), arrived: Default::default() };
    let (gate, arrived) = (gated.gate.clone(), gated.arrived.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let stop = Arc::new(tokio::sync::Notify::new());
    let server = tokio::spawn({
        let stop = stop.clone();
        tonic::transport::Server::builder()
            .layer(LimitLayer::new(LimitsConfig { max_concurrent_calls: 2, ..LimitsConfig::default() }))
            .serve_with_incoming_shutdown(gated, incoming, async move { stop.notified().await })
    });
    let channel = hangar_tests::channel(&url).await;
    let call = |channel: Channel| async move {
        NodeServiceClient::new(channel).get_node(v1::GetNodeRequest { id: "nd-1".into() }).await.unwrap_err()
    };
    let in_flight: Vec<_> = (0..2).map(|_| tokio::spawn(call(channel.clone()))).collect();
    eventually(WAIT, "two calls waiting at the gate", async || arrived.load(std::sync::atomic::Ordering::SeqCst) == 2)
        .await;
    let refused = call(channel.clone()).await;
    assert_eq!((refused.code(), reason_of(&refused).as_str()), (Code::ResourceExhausted, reason::CONCURRENCY_LIMITED));
    assert_eq!(arrived.load(std::sync::atomic::Ordering::SeqCst), 2, "refused before it reached the service");
    assert_eq!(error_info(&refused).unwrap().1[metadata::LIMIT], "2");

    gate.add_permits(2);
    for call in in_flight {
        assert_eq!(call.await.unwrap().code(), Code::NotFound, "the calls in flight finish as they would have");
    }
    gate.add_permits(1);
    assert_eq!(call(channel.clone()).await.code(), Code::NotFound, "served again once under the limit");
    stop.notify_one();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_flood_of_calls_from_one_caller_is_cut_to_its_rate_and_others_are_served_meanwhile() {
    let cluster = cluster_with(LimitsConfig { rate_per_second: 50, burst: 50, ..LimitsConfig::default() }).await;
    let channel = cluster.channel().await;
    let started = Instant::now();
    let calls: Vec<_> = (0..300)
        .map(|_| {
            let mut nodes = NodeServiceClient::new(channel.clone());
            tokio::spawn(async move { nodes.list_nodes(v1::ListNodesRequest::default()).await.map(drop) })
        })
        .collect();
    let mut served = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(()) => served += 1,
            Err(status) => assert_eq!(reason_of(&status), reason::RATE_LIMITED, "{status:?}"),
        }
    }
    let allowed = 50.0 + 50.0 * started.elapsed().as_secs_f64();
    assert!(served >= 50 && served as f64 <= allowed + 1.0, "{served} served; at most {allowed} allowed");
    // A drone's link is untouched by the flood from its address.
    let drone = ManualDrone::attach(&cluster.url(), drone_hello("d1")).await.expect("attach during the flood");
    assert!(!drone.node_id.is_empty());
    cluster.shutdown().await;
}
