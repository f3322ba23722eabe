//! Several controllers on one real PostgreSQL: node changes made through any controller reach
//! watchers on every controller, gapless and in order, across PostgreSQL restarts and
//! controller crashes.

use hangar::v1::{self, NodeEventType, NodeState, node_service_client::NodeServiceClient};
use hangar_executor::drone::{self, AttachState, Backoff, DroneConfig};
use hangar_server::controller::RunningController;
use hangar_server::store::{self, DynStore};
use hangar_server::testing::PgCluster;
use hangar_testkit::eventually;
use hangar_tests::{
    ControllerProcess, ManualDrone, channel, drone_hello, next_event, start_controller_with, test_config, watch,
};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

async fn two_controllers(url: &str) -> (DynStore, RunningController, RunningController) {
    two_controllers_with(url, test_config()).await
}

async fn two_controllers_with(
    url: &str,
    config: hangar_server::controller::ControllerConfig,
) -> (DynStore, RunningController, RunningController) {
    hangar_tests::init_logging();
    let store_a = store::open(url).await.expect("store A");
    let store_b = store::open(url).await.expect("store B");
    let a = start_controller_with(store_a.clone(), config.clone()).await;
    let b = start_controller_with(store_b, config).await;
    (store_a, a, b)
}

fn all_from(start_revision: u64) -> v1::WatchNodesRequest {
    v1::WatchNodesRequest { filter: None, start_revision, send_initial: false, bookmark_interval: None }
}

/// Reads events until one satisfies `until`; returns every event read.
async fn read_until(
    stream: &mut tonic::Streaming<v1::WatchNodesResponse>,
    until: impl Fn(&v1::NodeEvent) -> bool,
) -> Vec<v1::NodeEvent> {
    let mut events = Vec::new();
    loop {
        let event = next_event(stream, WAIT).await.expect("watch event");
        let done = until(&event);
        events.push(event);
        if done {
            return events;
        }
    }
}

#[tokio::test]
async fn drone_on_controller_a_is_seen_added_drained_and_offline_by_a_watcher_on_controller_b() {
    let pg = PgCluster::shared().await.unwrap();
    let (_store, a, b) = two_controllers(&pg.create_database().await.unwrap()).await;
    // The watch starts from the revision of its (empty) snapshot, fixed when SNAPSHOT_END is
    // sent: the drone attached after it is a live change for this watch.
    let mut on_b = watch(&b.url(), v1::WatchNodesRequest { send_initial: true, ..all_from(0) }).await.unwrap();
    let snapshot = next_event(&mut on_b, WAIT).await.unwrap();
    assert_eq!(snapshot.r#type(), NodeEventType::SnapshotEnd, "no node yet: {snapshot:?}");

    let drone = ManualDrone::attach(&a.url(), drone_hello("worker-a")).await.unwrap();
    let alive = drone.keep_alive(Duration::from_millis(50));
    let added = read_until(&mut on_b, |e| e.node.as_ref().is_some_and(|n| n.name == "worker-a")).await;
    let added = added.last().unwrap();
    assert_eq!(added.r#type(), NodeEventType::Added);
    assert_eq!(added.node.as_ref().unwrap().controller_id, a.controller_id());

    let mut nodes_b = NodeServiceClient::new(channel(&b.url()).await);
    nodes_b.drain_node(v1::DrainNodeRequest { id: drone.node_id.clone(), deadline: None }).await.unwrap();
    let drained = read_until(&mut on_b, |e| e.node.as_ref().is_some_and(|n| n.draining)).await;
    assert_eq!(drained.last().unwrap().r#type(), NodeEventType::Modified);
    assert_eq!(drained.last().unwrap().node.as_ref().unwrap().state(), NodeState::Draining);

    alive.abort();
    drop(drone);
    let offline = read_until(&mut on_b, |e| e.node.as_ref().is_some_and(|n| n.state() == NodeState::Offline)).await;
    assert_eq!(offline.last().unwrap().r#type(), NodeEventType::Modified);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// 2,000 drains with distinct deadlines, 16 at a time, alternating between the two
/// controllers: each is one committed change. Watchers on both controllers see every revision
/// exactly once, in order.
#[tokio::test]
async fn changes_written_concurrently_through_two_controllers_reach_watchers_gapless_and_in_order() {
    let pg = PgCluster::shared().await.unwrap();
    // 2000 drains from one address as fast as two controllers take them: a throughput test, far
    // over the per-caller rate limit, which tests/tests/limits.rs covers.
    let mut config = test_config();
    config.limits = config.limits.per_caller_off();
    let (store, a, b) = two_controllers_with(&pg.create_database().await.unwrap(), config).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let node = store
            .attach_node(hangar_tests::registration(&format!("n{i}")), a.controller_id(), chrono::Utc::now())
            .await
            .unwrap();
        ids.push(node.id);
    }
    let start = store.current_revision().await.unwrap();
    let mut watch_a = watch(&a.url(), all_from(start)).await.unwrap();
    let mut watch_b = watch(&b.url(), all_from(start)).await.unwrap();

    const CHANGES: usize = 2000;
    let clients = [NodeServiceClient::new(channel(&a.url()).await), NodeServiceClient::new(channel(&b.url()).await)];
    let began = Instant::now();
    let writers = futures::stream::iter(0..CHANGES)
        .map(|i| {
            let mut client = clients[i % 2].clone();
            let id = ids[i % ids.len()].clone();
            async move {
                let deadline = prost_types::Duration { seconds: 3600 + i as i64, nanos: 0 };
                client.drain_node(v1::DrainNodeRequest { id, deadline: Some(deadline) }).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>();
    use futures::StreamExt;
    writers.await;
    let written = store.current_revision().await.unwrap();
    eprintln!("{CHANGES} drains through two controllers in {:?}", began.elapsed());
    assert!(written >= start + CHANGES as u64, "every drain committed a change");

    for (name, stream) in [("A", &mut watch_a), ("B", &mut watch_b)] {
        let mut expected = start + 1;
        while expected <= written {
            let event = next_event(stream, WAIT).await.unwrap_or_else(|s| panic!("watcher on {name}: {s:?}"));
            assert_eq!(event.revision, expected, "watcher on {name}: revisions arrive once each, in order");
            expected += 1;
        }
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn postgres_restart_during_a_watch_loses_no_event() {
    let pg = PgCluster::new().await.unwrap();
    let url = pg.create_database().await.unwrap();
    let (store, a, b) = two_controllers(&url).await;
    let first = store.attach_node(hangar_tests::registration("before"), "ctl-x", chrono::Utc::now()).await.unwrap();
    let mut on_a = watch(&a.url(), all_from(first.revision)).await.unwrap();
    // The server subscribes the watch right after it opens; one event through it proves that
    // happened, so the restart below meets a live watch rather than its subscription (which
    // would rightly fail with UNAVAILABLE).
    let warmup = store.attach_node(hangar_tests::registration("warmup"), "ctl-x", chrono::Utc::now()).await.unwrap();
    assert_eq!(next_event(&mut on_a, WAIT).await.unwrap().revision, warmup.revision);

    pg.restart().await.unwrap();

    // Writes through controller B once PostgreSQL is back (the pool reconnects by itself).
    let mut nodes_b = NodeServiceClient::new(channel(&b.url()).await);
    for drained in 0..20 {
        let d = prost_types::Duration { seconds: 100 + drained, nanos: 0 };
        eventually(WAIT, "a drain through B to commit on the restarted PostgreSQL", async || {
            nodes_b.drain_node(v1::DrainNodeRequest { id: first.id.clone(), deadline: Some(d) }).await
        })
        .await;
    }
    let written = store.current_revision().await.unwrap();
    let mut expected = warmup.revision + 1;
    while expected <= written {
        let event = next_event(&mut on_a, WAIT).await.unwrap();
        assert_eq!(event.revision, expected, "no change lost across the restart");
        expected += 1;
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn killed_controller_drones_reattach_elsewhere_and_a_resuming_watcher_misses_nothing() {
    let pg = PgCluster::shared().await.unwrap();
    let url = pg.create_database().await.unwrap();
    let mut a = ControllerProcess::spawn(&url);
    let b = ControllerProcess::spawn(&url);

    let mut drones = Vec::new();
    for i in 0..3 {
        let mut config = DroneConfig::new(vec![a.url.clone(), b.url.clone()], format!("drone-{i}"));
        config.backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        drones.push(drone::spawn(config));
    }
    for d in &drones {
        tokio::time::timeout(WAIT, d.attached()).await.expect("attached to A");
    }
    let mut on_a = watch(&a.url, all_from(1)).await.unwrap();
    // Read what is there so far: at least the three registrations, which name A's id.
    let mut last = 1;
    let mut controller_a = String::new();
    for _ in 0..3 {
        let event = next_event(&mut on_a, WAIT).await.unwrap();
        last = event.revision;
        controller_a = event.node.unwrap().controller_id;
    }

    let killed_at = Instant::now();
    a.kill();
    for d in &drones {
        let mut state = d.state();
        tokio::time::timeout(
            WAIT,
            state.wait_for(|s| matches!(s, AttachState::Attached { controller, .. } if *controller == b.url)),
        )
        .await
        .expect("reattached to B")
        .unwrap();
    }
    let reattach = killed_at.elapsed();
    eprintln!("3 drones reattached to the surviving controller {reattach:?} after SIGKILL");
    assert!(reattach < Duration::from_secs(5), "reattached within seconds: {reattach:?}");

    // The watcher on A: whatever A delivered before dying counts; then its stream fails and it
    // resumes on B from the last revision it received.
    while let Ok(Some(response)) = tokio::time::timeout(WAIT, on_a.message()).await.expect("A's stream ends") {
        last = response.event.unwrap().revision;
    }
    let mut on_b = watch(&b.url, all_from(last)).await.unwrap();
    // The resumed stream continues exactly where A's left off and shows every drone READY on a
    // controller other than A.
    let mut expected = last + 1;
    let mut moved = std::collections::HashSet::new();
    while moved.len() < 3 {
        let event = next_event(&mut on_b, WAIT).await.unwrap();
        assert_eq!(event.revision, expected, "resumed stream continues with no gap and no repeat");
        expected += 1;
        if let Some(node) = event.node
            && node.state() == NodeState::Ready
            && !node.controller_id.is_empty()
            && node.controller_id != controller_a
        {
            moved.insert(node.id);
        }
    }
    for d in drones {
        d.shutdown().await;
    }
}
