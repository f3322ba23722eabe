//! `NodeStore` as a reflector against a real controller: `wait_for` sees drones attach and go
//! away through the watch, and the store stays current across a controller restart.

use chrono::Utc;
use hangar::domain::{NodeFilter, NodeState};
use hangar_client::{HangarClient, NodeStore, WatchOptions};
use hangar_server::controller::Controller;
use hangar_tests::{ManualDrone, TestCluster, drone_hello, registration, test_config};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_sees_a_drone_attach_and_go_offline_through_a_real_watch() {
    let cluster = TestCluster::sqlite().await;
    let client = HangarClient::connect(&cluster.url()).await.unwrap();
    let mut watch = Box::pin(client.watch_nodes(NodeFilter::default(), WatchOptions::default()));
    let mut store = NodeStore::default();
    store.wait_for(&mut watch, |_| true).await.unwrap();
    assert!(store.is_ready() && store.is_empty());

    let url = cluster.url();
    let attach = tokio::spawn(async move {
        let drone = ManualDrone::attach(&url, drone_hello("d1")).await.unwrap();
        let beat = drone.keep_alive(Duration::from_millis(50));
        (drone, beat)
    });
    let ready = |store: &NodeStore| store.nodes().values().any(|n| n.name == "d1" && n.state == NodeState::Ready);
    tokio::time::timeout(WAIT, store.wait_for(&mut watch, ready)).await.expect("d1 READY in time").unwrap();
    let (drone, beat) = attach.await.unwrap();
    assert_eq!(store.get(&drone.node_id).unwrap().name, "d1");

    // It goes away: the liveness timers move it to OFFLINE, and the store sees it.
    beat.abort();
    drop(drone);
    let offline = |store: &NodeStore| store.nodes().values().any(|n| n.name == "d1" && n.state == NodeState::Offline);
    tokio::time::timeout(WAIT, store.wait_for(&mut watch, offline)).await.expect("d1 OFFLINE in time").unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_keeps_waiting_through_a_controller_restart() {
    let cluster = TestCluster::sqlite().await;
    let (store, addr) = (cluster.store.clone(), cluster.controller.local_addr());
    let client = HangarClient::connect(&cluster.url()).await.unwrap();
    let mut watch = Box::pin(client.watch_nodes(NodeFilter::default(), WatchOptions::default()));
    let mut nodes = NodeStore::default();
    nodes.wait_for(&mut watch, |_| true).await.unwrap();

    cluster.controller.shutdown().await.unwrap();
    let restart = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b = store.attach_node(registration("b"), "c", Utc::now()).await.unwrap();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        (Controller::start(store, test_config(), listener).await.unwrap(), b)
    });
    // Waiting while the controller is away: the watch reconnects instead of failing the wait.
    tokio::time::timeout(WAIT, nodes.wait_for(&mut watch, |store| store.len() == 1)).await.expect("b in time").unwrap();
    let (controller, b) = restart.await.unwrap();
    assert_eq!(nodes.get(&b.id).unwrap().name, "b");
    assert_eq!(nodes.revision(), Some(b.revision));
    controller.shutdown().await.unwrap();
}
