//! Drones and proxies register, heartbeat, and turn UNHEALTHY and OFFLINE as
//! docs/design/nodes-and-watch.md#liveness says.

use hangar::error::{error_info, field_violations};
use hangar::v1::{self, NodeState};
use hangar_executor::drone::{self, AttachState, Backoff, DroneConfig};
use hangar_tests::{ManualDrone, TestCluster, drone_hello, wait_for_node};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn state(node: &v1::Node) -> NodeState {
    node.state()
}

#[tokio::test]
async fn drone_registers_and_reports_real_host_resources() {
    let cluster = TestCluster::sqlite().await;
    let mut config = DroneConfig::new(vec![cluster.url()], "worker-1");
    config.heartbeat_interval = Duration::from_millis(100);
    let drone = drone::spawn(config);
    let node_id = tokio::time::timeout(WAIT, drone.attached()).await.expect("attached");

    let mut nodes = cluster.nodes().await;
    let node =
        wait_for_node(&mut nodes, &node_id, WAIT, |n| n.resources.is_some_and(|r| r.memory_total_bytes > 0)).await;
    assert_eq!(node.name, "worker-1");
    assert_eq!(node.kind(), v1::NodeKind::Drone);
    assert_eq!(state(&node), NodeState::Ready);
    assert_eq!(node.controller_id, cluster.controller.controller_id());
    let resources = node.resources.unwrap();
    let host = hangar_agent::HostResources::new().sample();
    assert_eq!(resources.cpu_cores, host.cpu_cores, "cores of this host");
    assert_eq!(resources.memory_total_bytes, host.memory_total_bytes, "memory of this host");
    drone.shutdown().await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn silent_drone_turns_unhealthy_then_ready_again_when_heartbeats_resume() {
    let cluster = TestCluster::sqlite().await;
    let mut nodes = cluster.nodes().await;
    let drone = ManualDrone::attach(&cluster.url(), drone_hello("quiet-1")).await.unwrap();
    let keep_alive = drone.keep_alive(Duration::from_millis(50));
    // Healthy well past the UNHEALTHY threshold while heartbeating (a window for a change that
    // must not happen).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let node = wait_for_node(&mut nodes, &drone.node_id, WAIT, |_| true).await;
    assert_eq!(state(&node), NodeState::Ready);

    keep_alive.abort();
    wait_for_node(&mut nodes, &drone.node_id, WAIT, |n| state(n) == NodeState::Unhealthy).await;

    drone.heartbeat(1 << 21).await;
    let _keep_alive = drone.keep_alive(Duration::from_millis(50));
    wait_for_node(&mut nodes, &drone.node_id, WAIT, |n| state(n) == NodeState::Ready).await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn drone_silent_past_the_offline_threshold_is_cut_off_and_offline() {
    let cluster = TestCluster::sqlite().await;
    let mut nodes = cluster.nodes().await;
    let mut drone = ManualDrone::attach(&cluster.url(), drone_hello("gone-quiet")).await.unwrap();
    // No heartbeats at all: UNHEALTHY, then the controller closes the stream.
    let ended = tokio::time::timeout(WAIT, drone.inbound.message()).await.expect("stream closed by the controller");
    let status = ended.expect_err("closed with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let node = wait_for_node(&mut nodes, &drone.node_id, WAIT, |n| state(n) == NodeState::Offline).await;
    assert_eq!(node.controller_id, "", "an offline node is held by no controller");
    cluster.shutdown().await;
}

#[tokio::test]
async fn dropped_stream_turns_drone_offline_and_reconnect_keeps_its_id() {
    let cluster = TestCluster::sqlite().await;
    let mut nodes = cluster.nodes().await;
    let first = ManualDrone::attach(&cluster.url(), drone_hello("roamer")).await.unwrap();
    let node_id = first.node_id.clone();
    drop(first);
    wait_for_node(&mut nodes, &node_id, WAIT, |n| state(n) == NodeState::Offline).await;

    let again = ManualDrone::attach(&cluster.url(), drone_hello("roamer")).await.unwrap();
    assert_eq!(again.node_id, node_id, "same (cluster, name) keeps its node id");
    let _alive = again.keep_alive(Duration::from_millis(50));
    wait_for_node(&mut nodes, &node_id, WAIT, |n| state(n) == NodeState::Ready).await;

    let elsewhere =
        ManualDrone::attach(&cluster.url(), v1::DroneHello { cluster: "eu-1".into(), ..drone_hello("roamer") })
            .await
            .unwrap();
    assert_ne!(elsewhere.node_id, node_id, "the same name in another cluster is another node");
    cluster.shutdown().await;
}

#[tokio::test]
async fn real_drone_reconnects_after_the_controller_restarts() {
    let (store, _dir) = hangar_tests::sqlite_store().await;
    let controller = hangar_tests::start_controller(store.clone(), hangar_tests::fast_liveness()).await;
    let addr = controller.local_addr();
    let mut config = DroneConfig::new(vec![controller.url()], "phoenix");
    config.backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(200));
    let drone = drone::spawn(config);
    let node_id = tokio::time::timeout(WAIT, drone.attached()).await.unwrap();
    let mut link = drone.state();

    controller.shutdown().await.unwrap();
    tokio::time::timeout(WAIT, link.wait_for(|s| *s == AttachState::Connecting)).await.unwrap().unwrap();

    // The same address again: the drone's backoff finds it.
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind the same port");
    let config =
        hangar_server::controller::ControllerConfig { liveness: hangar_tests::fast_liveness(), ..Default::default() };
    let controller = hangar_server::controller::Controller::start(store, config, listener).await.unwrap();
    let again = tokio::time::timeout(WAIT, link.wait_for(|s| matches!(s, AttachState::Attached { .. })))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert_eq!(again, AttachState::Attached { node_id: node_id.clone(), controller: format!("http://{addr}") });
    let mut nodes = v1::node_service_client::NodeServiceClient::new(hangar_tests::channel(&controller.url()).await);
    let node = wait_for_node(&mut nodes, &node_id, WAIT, |n| state(n) == NodeState::Ready).await;
    assert_eq!(node.controller_id, controller.controller_id());
    drone.shutdown().await;
    controller.shutdown().await.unwrap();
}

#[tokio::test]
async fn drone_with_an_empty_name_is_refused_with_a_field_violation() {
    let cluster = TestCluster::sqlite().await;
    let status = ManualDrone::attach(&cluster.url(), drone_hello("")).await.err().expect("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(field_violations(&status), vec![("hello.name".to_string(), "must not be empty".to_string())]);

    let status = ManualDrone::attach(&cluster.url(), v1::DroneHello { backend_capacity: 0, ..drone_hello("Bad_Name") })
        .await
        .err()
        .expect("refused");
    let fields: Vec<_> = field_violations(&status).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["hello.name", "hello.backend_capacity"], "every problem reported at once");
    cluster.shutdown().await;
}

#[tokio::test]
async fn first_message_other_than_hello_is_a_protocol_violation() {
    use tokio_stream::wrappers::ReceiverStream;
    let cluster = TestCluster::sqlite().await;
    let mut client = v1::drone_service_client::DroneServiceClient::new(cluster.channel().await);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let hb = v1::DroneHeartbeat { local_time: None, resources: None, backend_count: 0 };
    tx.send(v1::DroneAttachRequest { message: Some(v1::drone_attach_request::Message::Heartbeat(hb)) }).await.unwrap();
    let status = client.attach(ReceiverStream::new(rx)).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(error_info(&status).unwrap().0, "PROTOCOL_VIOLATION");
    cluster.shutdown().await;
}

#[tokio::test]
async fn drain_survives_unhealthy_spells_and_reconnects() {
    let cluster = TestCluster::sqlite().await;
    let mut nodes = cluster.nodes().await;
    let drone = ManualDrone::attach(&cluster.url(), drone_hello("drained")).await.unwrap();
    let node_id = drone.node_id.clone();
    let keep_alive = drone.keep_alive(Duration::from_millis(50));
    let drained = nodes
        .drain_node(v1::DrainNodeRequest {
            id: node_id.clone(),
            deadline: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
        })
        .await
        .unwrap()
        .into_inner()
        .node
        .unwrap();
    assert_eq!(state(&drained), NodeState::Draining);
    assert!(drained.draining && drained.drain_deadline.is_some());

    keep_alive.abort();
    wait_for_node(&mut nodes, &node_id, WAIT, |n| state(n) == NodeState::Unhealthy).await;
    let alive = drone.keep_alive(Duration::from_millis(50));
    wait_for_node(&mut nodes, &node_id, WAIT, |n| state(n) == NodeState::Draining).await;

    // The keep-alive task holds a sender of the stream: stop it, then drop the drone.
    alive.abort();
    drop(drone);
    wait_for_node(&mut nodes, &node_id, WAIT, |n| state(n) == NodeState::Offline).await;
    let again = ManualDrone::attach(&cluster.url(), drone_hello("drained")).await.unwrap();
    let _alive = again.keep_alive(Duration::from_millis(50));
    let node = wait_for_node(&mut nodes, &node_id, WAIT, |n| state(n) != NodeState::Offline).await;
    assert_eq!(state(&node), NodeState::Draining, "a drained drone comes back draining, not ready");
    cluster.shutdown().await;
}

#[tokio::test]
async fn proxy_registers_as_a_proxy_node() {
    use tokio_stream::wrappers::ReceiverStream;
    let cluster = TestCluster::sqlite().await;
    let mut client = v1::proxy_service_client::ProxyServiceClient::new(cluster.channel().await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello =
        v1::ProxyHello { name: "edge-1".into(), public_url: "http://127.0.0.1:9090".into(), ..Default::default() };
    tx.send(v1::ProxyAttachRequest { message: Some(v1::proxy_attach_request::Message::Hello(hello)) }).await.unwrap();
    let mut inbound = client.attach(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let Some(v1::ProxyAttachResponse { message: Some(v1::proxy_attach_response::Message::Welcome(welcome)) }) =
        inbound.message().await.unwrap()
    else {
        panic!("expected a welcome");
    };
    let mut nodes = cluster.nodes().await;
    let node = wait_for_node(&mut nodes, &welcome.node_id, WAIT, |_| true).await;
    assert_eq!(node.kind(), v1::NodeKind::Proxy);
    assert_eq!(node.labels["hangar.dev/public-url"], "http://127.0.0.1:9090");

    let status = nodes.drain_node(v1::DrainNodeRequest { id: node.id.clone(), deadline: None }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(error_info(&status).unwrap().0, "NODE_NOT_DRONE");
    drop(tx);
    cluster.shutdown().await;
}

/// Controllers that die without shutting down leave nodes that look attached; another
/// controller's sweep marks them OFFLINE once their heartbeat is stale.
#[tokio::test]
async fn nodes_of_a_vanished_controller_are_swept_offline() {
    use chrono::Utc;
    use hangar_server::store::{NodeRegistration, NodeUpdate, UpdateCondition};
    let cluster = TestCluster::sqlite().await;
    let registration = NodeRegistration {
        kind: hangar::domain::NodeKind::Drone,
        name: "orphan".into(),
        cluster: "default".into(),
        pool: "default".into(),
        labels: Default::default(),
        version: "test".into(),
        backend_capacity: 1,
        resources: Default::default(),
    };
    let long_ago = Utc::now() - chrono::Duration::minutes(10);
    let node = cluster.store.attach_node(registration, "ctl-crashed", long_ago).await.unwrap();
    let fresh = cluster.store.attach_node(
        hangar_server::store::NodeRegistration { name: "fresh".into(), ..registration_clone(&node) },
        "ctl-alive-elsewhere",
        Utc::now(),
    );
    let fresh = fresh.await.unwrap();
    // As a controller that has reached the store all along sweeps.
    let marked = cluster.controller.registry().sweep_stale(std::time::Duration::MAX).await.unwrap();
    assert_eq!(marked, 1);
    assert_eq!(cluster.store.get_node(&node.id).await.unwrap().unwrap().state, hangar::domain::NodeState::Offline);
    assert_eq!(cluster.store.get_node(&fresh.id).await.unwrap().unwrap().state, hangar::domain::NodeState::Ready);
    // The sweep is conditional on the holder: a node that moved on is left alone.
    let moved = NodeUpdate { controller_id: Some("ctl-new".into()), ..NodeUpdate::default() };
    assert!(
        cluster
            .store
            .update_node(&node.id, moved, UpdateCondition::HeldBy("ctl-crashed".into()))
            .await
            .unwrap()
            .is_none()
    );
    cluster.shutdown().await;
}

fn registration_clone(node: &hangar::domain::Node) -> hangar_server::store::NodeRegistration {
    hangar_server::store::NodeRegistration {
        kind: node.kind,
        name: node.name.clone(),
        cluster: node.cluster.clone(),
        pool: node.pool.clone(),
        labels: node.labels.clone(),
        version: node.version.clone(),
        backend_capacity: node.backend_capacity,
        resources: node.resources,
    }
}

/// A refusal that retrying cannot fix ends the drone with the reason, instead of a silent loop.
#[test]
fn hangar_drone_run_exits_with_the_reason_when_its_name_is_refused() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cluster = runtime.block_on(TestCluster::sqlite());
    let data = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(hangar_tests::binary("hangar-drone"))
        .args([
            "run",
            "--controller",
            &cluster.url(),
            "--name",
            "Not_A_Dns_Label",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refused") && stderr.contains("hello.name"), "{stderr}");
    runtime.block_on(cluster.shutdown());
}

/// A proxy heartbeats at the interval its controller's welcome names, not at its own default:
/// against a controller that expects a heartbeat every 100 ms (UNHEALTHY after 300 ms), a proxy
/// left at its 5 s default stays READY. It used to keep its own interval, so a controller with a
/// shorter one cut it off every few seconds and it reattached.
#[tokio::test]
async fn a_proxy_heartbeats_at_the_interval_its_controller_asks_for() {
    use hangar_server::proxy::{Proxy, ProxyConfig};
    use hangar_testkit::{check, eventually};
    let cluster = TestCluster::sqlite().await;
    let config = ProxyConfig::new(vec![cluster.url()], "edge-1");
    assert!(config.heartbeat_interval >= Duration::from_secs(1), "the proxy's own default is the slower one");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(config, listener).await.unwrap();
    let mut nodes = cluster.nodes().await;
    let proxy_node = eventually(WAIT, "the proxy READY", async || {
        let listed = nodes.clone().list_nodes(v1::ListNodesRequest::default()).await.unwrap().into_inner().nodes;
        check(listed.into_iter().find(|n| n.name == "edge-1"), |n| {
            n.as_ref().is_some_and(|n| state(n) == NodeState::Ready)
        })
    })
    .await
    .unwrap();
    // Six of the controller's UNHEALTHY windows: a proxy on its own 5 s interval misses them all.
    let window = tokio::time::Instant::now() + Duration::from_millis(1800);
    while tokio::time::Instant::now() < window {
        let node =
            nodes.get_node(v1::GetNodeRequest { id: proxy_node.id.clone() }).await.unwrap().into_inner().node.unwrap();
        assert_eq!(state(&node), NodeState::Ready, "the proxy missed the controller's heartbeat interval: {node:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.shutdown().await;
    cluster.shutdown().await;
}
