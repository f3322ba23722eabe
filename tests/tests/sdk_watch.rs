//! The SDK watch helper and `hangar nodes watch` against a real controller: initial state,
//! live changes, resume across a controller restart, re-list after compaction.

use chrono::Utc;
use futures::StreamExt;
use hangar::domain::{NodeFilter, NodeState};
use hangar_client::{HangarClient, NodeStore, NodeWatchEvent, WatchOptions};
use hangar_server::controller::Controller;
use hangar_server::store::{NodeUpdate, Retention, UpdateCondition};
use hangar_tests::{TestCluster, binary, registration, test_config};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

async fn next(
    stream: &mut (impl futures::Stream<Item = Result<NodeWatchEvent, hangar_client::ClientError>> + Unpin),
) -> NodeWatchEvent {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a watch event in time")
        .expect("stream open")
        .expect("no error")
}

#[tokio::test]
async fn sdk_watch_keeps_a_cache_in_step_across_a_controller_restart() {
    let cluster = TestCluster::sqlite().await;
    let (store, url) = (cluster.store.clone(), cluster.url());
    let addr = cluster.controller.local_addr();
    let a = store.attach_node(registration("a"), "c", Utc::now()).await.unwrap();

    let client = HangarClient::connect(&url).await.unwrap();
    let mut events = Box::pin(client.watch_nodes(NodeFilter::default(), WatchOptions::default()));
    let mut cache = NodeStore::default();
    loop {
        let event = next(&mut events).await;
        cache.apply(&event);
        if matches!(event, NodeWatchEvent::InitDone { .. }) {
            break;
        }
    }
    assert!(cache.is_ready());
    assert_eq!(cache.nodes().len(), 1);

    // The controller goes away and comes back on the same address; changes happen meanwhile.
    cluster.controller.shutdown().await.unwrap();
    let b = store.attach_node(registration("b"), "c", Utc::now()).await.unwrap();
    store
        .update_node(
            &a.id,
            NodeUpdate { state: Some(NodeState::Offline), ..Default::default() },
            UpdateCondition::Always,
        )
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let controller = Controller::start(store.clone(), test_config(), listener).await.unwrap();

    let mut reconnected = false;
    while !(cache.nodes().len() == 2 && cache.nodes()[&a.id].state == NodeState::Offline) {
        let event = next(&mut events).await;
        if let NodeWatchEvent::Reconnecting(_) = &event {
            reconnected = true;
        }
        assert!(!matches!(event, NodeWatchEvent::Init), "resumed, not re-listed");
        cache.apply(&event);
    }
    assert!(reconnected, "the drop was reported");
    assert_eq!(cache.nodes()[&b.id].name, "b");
    assert_eq!(cache.revision(), Some(store.current_revision().await.unwrap()));
    controller.shutdown().await.unwrap();
}

#[tokio::test]
async fn sdk_watch_relists_when_its_revision_was_compacted() {
    let cluster = TestCluster::sqlite().await;
    let store = cluster.store.clone();
    let a = store.attach_node(registration("a"), "c", Utc::now()).await.unwrap();
    let client = HangarClient::connect(&cluster.url()).await.unwrap();
    // Start from a revision, then compact past it before the watch connects.
    let options = WatchOptions { start_revision: Some(a.revision), ..WatchOptions::default() };
    for i in 0..10 {
        store
            .update_node(
                &a.id,
                NodeUpdate { backend_count: Some(i + 1), ..Default::default() },
                UpdateCondition::Always,
            )
            .await
            .unwrap();
    }
    // `now` a second ahead: the age bound counts only changes recorded strictly before it.
    store
        .compact(
            Retention { min_revisions: 2, max_age: chrono::Duration::zero() },
            Utc::now() + chrono::Duration::seconds(1),
        )
        .await
        .unwrap();
    let mut events = Box::pin(client.watch_nodes(NodeFilter::default(), options));
    let mut cache = NodeStore::default();
    let mut saw_init = false;
    while !cache.is_ready() {
        let event = next(&mut events).await;
        saw_init |= matches!(event, NodeWatchEvent::Init);
        cache.apply(&event);
    }
    assert!(saw_init, "OUT_OF_RANGE led to a fresh snapshot");
    assert_eq!(cache.nodes()[&a.id].backend_count, 10);
    cluster.shutdown().await;
}

#[tokio::test]
async fn hangar_nodes_watch_prints_the_snapshot_then_live_changes_as_ndjson() {
    use tokio::io::AsyncBufReadExt;
    let cluster = TestCluster::sqlite().await;
    cluster.store.attach_node(registration("first"), "c", Utc::now()).await.unwrap();
    let mut child = tokio::process::Command::new(binary("hangar"))
        .args(["--controller", &cluster.url(), "--output", "json", "nodes", "watch"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut read = async || -> serde_json::Value {
        let line = tokio::time::timeout(WAIT, lines.next_line()).await.unwrap().unwrap().expect("a line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };
    assert_eq!(read().await["type"], "SNAPSHOT_START");
    let added = read().await;
    assert_eq!((added["type"].as_str(), added["node"]["name"].as_str()), (Some("ADDED"), Some("first")));
    let end = read().await;
    assert_eq!(end["type"], "SNAPSHOT_END");
    let second = cluster.store.attach_node(registration("second"), "c", Utc::now()).await.unwrap();
    let live = read().await;
    assert_eq!(live["type"], "ADDED");
    assert_eq!(live["node"]["name"], "second");
    assert_eq!(live["revision"], second.revision);
    child.kill().await.unwrap();
    cluster.shutdown().await;
}
