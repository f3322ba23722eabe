//! `last_heartbeat_at` as GetNode, ListNodes and the CLI show it: the live time for nodes attached
//! to the controller that answers, the store's coarse copy everywhere else
//! (`proto/hangar/v1/node.proto`, docs/design/nodes-and-watch.md#liveness).

use chrono::{DateTime, Utc};
use hangar::domain::timestamp_from_proto;
use hangar::v1::{self, node_service_client::NodeServiceClient};
use hangar_executor::drone::{self, DroneConfig, DroneHandle};
use hangar_server::controller::{ControllerConfig, LivenessConfig};
use hangar_server::store::{self, DynStore};
use hangar_server::testing::PgCluster;
use hangar_tests::{TestCluster, binary, channel, start_controller_with};
use std::time::Duration;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(10);

/// Heartbeats every 100 ms, but the store hears of them only every 30 s (the default refresh).
fn slow_refresh() -> ControllerConfig {
    let liveness = LivenessConfig {
        heartbeat_interval: Duration::from_millis(100),
        unhealthy_after: Duration::from_millis(300),
        offline_after: Duration::from_millis(600),
        refresh_interval: Duration::from_secs(30),
        hello_timeout: Duration::from_secs(2),
        ..LivenessConfig::default()
    };
    ControllerConfig { liveness, ..ControllerConfig::default() }
}

/// A real drone on `url`, heartbeating as the controller's Welcome says; returns its node id.
async fn heartbeating_drone(url: &str, name: &str) -> (DroneHandle, String) {
    let mut config = DroneConfig::new(vec![url.to_string()], name);
    config.heartbeat_interval = Duration::from_millis(100);
    let drone = drone::spawn(config);
    let node_id = tokio::time::timeout(WAIT, drone.attached()).await.expect("drone attached");
    (drone, node_id)
}

fn heartbeat_of(node: &v1::Node) -> DateTime<Utc> {
    timestamp_from_proto(node.last_heartbeat_at.as_ref().expect("last_heartbeat_at set")).expect("valid timestamp")
}

async fn get(nodes: &mut NodeServiceClient<Channel>, id: &str) -> v1::Node {
    nodes.get_node(v1::GetNodeRequest { id: id.into() }).await.expect("get node").into_inner().node.unwrap()
}

async fn listed(nodes: &mut NodeServiceClient<Channel>, id: &str) -> v1::Node {
    let page = nodes.list_nodes(v1::ListNodesRequest::default()).await.expect("list nodes").into_inner();
    page.nodes.into_iter().find(|n| n.id == id).expect("the drone is listed")
}

async fn stored_heartbeat(store: &DynStore, id: &str) -> DateTime<Utc> {
    store.get_node(id).await.expect("store read").expect("node stored").last_heartbeat_at
}

fn assert_recent(what: &str, heartbeat: DateTime<Utc>, within: Duration) {
    let age = Utc::now() - heartbeat;
    assert!(
        age <= chrono::Duration::from_std(within).unwrap(),
        "{what}: last heartbeat {heartbeat} is {age} old, more than {within:?}"
    );
}

/// A READY drone once showed "last heartbeat 25s ago" while 15 s of silence makes a node
/// UNHEALTHY.
#[tokio::test]
async fn get_list_and_the_cli_show_the_live_heartbeat_of_a_drone_attached_here() {
    let cluster = TestCluster::sqlite_with(slow_refresh()).await;
    let (drone, node_id) = heartbeating_drone(&cluster.url(), "beating").await;
    let mut nodes = cluster.nodes().await;

    // For three seconds the answers must never lag (a window for a staleness that must not
    // happen), while the store's copy stays at the attach time.
    for _ in 0..15 {
        assert_recent("GetNode", heartbeat_of(&get(&mut nodes, &node_id).await), Duration::from_secs(1));
        assert_recent("ListNodes", heartbeat_of(&listed(&mut nodes, &node_id).await), Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored_age = Utc::now() - stored_heartbeat(&cluster.store, &node_id).await;
    assert!(stored_age >= chrono::Duration::seconds(3), "the store's copy is not refreshed yet: {stored_age} old");

    // tokio's Command: the controller runs on this test's runtime and must answer meanwhile.
    let cli = async |args: &[&str]| {
        let output = tokio::process::Command::new(binary("hangar"))
            .args(["--controller", &cluster.url(), "nodes"])
            .args(args)
            .output()
            .await
            .expect("run hangar");
        assert!(output.status.success(), "hangar nodes {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let fresh = |line: &str| ["(just now)", "(1s ago)", "(2s ago)"].iter().any(|age| line.contains(age));
    let shown = cli(&["get", &node_id]).await;
    let line = shown.lines().find(|l| l.starts_with("Last heartbeat")).expect("a Last heartbeat line");
    assert!(fresh(line), "nodes get: {line}\n(the store's copy is {stored_age} old)");
    let table = cli(&["list"]).await;
    let row = table.lines().find(|l| l.contains("beating")).unwrap_or_else(|| panic!("no drone row in:\n{table}"));
    let fresh_cell = ["just now", "1s ago", "2s ago"].iter().any(|age| row.contains(age));
    assert!(fresh_cell, "nodes list: {row}\n(the store's copy is {stored_age} old)");

    drone.shutdown().await;
    cluster.shutdown().await;
}

/// A controller knows live heartbeats only of the nodes attached to it; for the others it answers
/// with the store's copy, which the holding controller refreshes every `refresh_interval`.
#[tokio::test]
async fn another_controller_shows_the_stored_heartbeat_of_a_drone_attached_elsewhere() {
    let pg = PgCluster::shared().await.unwrap();
    let url = pg.create_database().await.unwrap();
    let store_a = store::open(&url).await.expect("store A");
    let a = start_controller_with(store_a.clone(), slow_refresh()).await;
    let b = start_controller_with(store::open(&url).await.expect("store B"), slow_refresh()).await;
    let (drone, node_id) = heartbeating_drone(&a.url(), "on-a").await;
    let mut on_a = NodeServiceClient::new(channel(&a.url()).await);
    let mut on_b = NodeServiceClient::new(channel(&b.url()).await);

    // Long enough for the store's copy to lag the live time by far more than a heartbeat.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored = stored_heartbeat(&store_a, &node_id).await;
    assert!(Utc::now() - stored >= chrono::Duration::seconds(2), "the store's copy is not refreshed yet");

    for (what, node) in
        [("GetNode on B", get(&mut on_b, &node_id).await), ("ListNodes on B", listed(&mut on_b, &node_id).await)]
    {
        assert_eq!(node.controller_id, a.controller_id(), "{what}: held by A");
        assert_eq!(heartbeat_of(&node), stored, "{what}: the store's copy");
    }
    assert_recent("GetNode on A", heartbeat_of(&get(&mut on_a, &node_id).await), Duration::from_secs(1));
    assert_recent("ListNodes on A", heartbeat_of(&listed(&mut on_a, &node_id).await), Duration::from_secs(1));

    drone.shutdown().await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
