//! WatchNodes on one controller: snapshot then live, resume, compaction, slow consumers,
//! bookmarks.

use chrono::Utc;
use hangar::domain::NodeState;
use hangar::error::error_info;
use hangar::v1::{self, NodeEventType};
use hangar_server::store::{NodeUpdate, Retention, UpdateCondition};
use hangar_server::watch::WatchConfig;
use hangar_testkit::{check, eventually};
use hangar_tests::{TestCluster, next_event, registration, test_config, watch};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

fn request(filter: v1::NodeFilter, start_revision: u64, send_initial: bool) -> v1::WatchNodesRequest {
    v1::WatchNodesRequest { filter: Some(filter), start_revision, send_initial, bookmark_interval: None }
}

fn set_state(state: NodeState) -> NodeUpdate {
    NodeUpdate { state: Some(state), ..NodeUpdate::default() }
}

#[tokio::test]
async fn send_initial_on_a_filter_gives_the_matching_nodes_then_snapshot_end_then_live_events() {
    let cluster = TestCluster::sqlite().await;
    let s = &cluster.store;
    let a = s.attach_node(registration("a"), "c", Utc::now()).await.unwrap();
    let b = s.attach_node(registration("b"), "c", Utc::now()).await.unwrap();
    let off = s.attach_node(registration("off"), "c", Utc::now()).await.unwrap();
    s.update_node(&off.id, set_state(NodeState::Offline), UpdateCondition::Always).await.unwrap();

    let ready = v1::NodeFilter { states: vec![v1::NodeState::Ready as i32], ..Default::default() };
    let mut stream = watch(&cluster.url(), request(ready, 0, true)).await.unwrap();
    let mut initial = Vec::new();
    let snapshot = loop {
        let event = next_event(&mut stream, WAIT).await.unwrap();
        match event.r#type() {
            NodeEventType::Added => initial.push(event.node.unwrap().name),
            NodeEventType::SnapshotEnd => break event.revision,
            other => panic!("unexpected {other:?} before SNAPSHOT_END"),
        }
    };
    initial.sort();
    assert_eq!(initial, ["a", "b"], "exactly the READY nodes");
    assert_eq!(snapshot, s.current_revision().await.unwrap());

    // Live: b leaves the filter (REMOVED), off enters it (ADDED), a changes (MODIFIED).
    s.update_node(&b.id, set_state(NodeState::Unhealthy), UpdateCondition::Always).await.unwrap();
    s.update_node(&off.id, set_state(NodeState::Ready), UpdateCondition::Always).await.unwrap();
    s.update_node(&a.id, NodeUpdate { backend_count: Some(3), ..Default::default() }, UpdateCondition::Always)
        .await
        .unwrap();
    let mut live = Vec::new();
    for _ in 0..3 {
        let event = next_event(&mut stream, WAIT).await.unwrap();
        live.push((event.r#type(), event.node.unwrap().name, event.revision));
    }
    assert_eq!(
        live.iter().map(|(t, n, _)| (*t, n.as_str())).collect::<Vec<_>>(),
        [(NodeEventType::Removed, "b"), (NodeEventType::Added, "off"), (NodeEventType::Modified, "a")]
    );
    assert_eq!(live.iter().map(|e| e.2).collect::<Vec<_>>(), [snapshot + 1, snapshot + 2, snapshot + 3]);
    cluster.shutdown().await;
}

#[tokio::test]
async fn resume_from_a_middle_revision_yields_exactly_the_changes_after_it() {
    let cluster = TestCluster::sqlite().await;
    let s = &cluster.store;
    let mut revisions = Vec::new();
    for i in 0..20 {
        revisions.push(s.attach_node(registration(&format!("n{i}")), "c", Utc::now()).await.unwrap().revision);
    }
    let middle = revisions[9];
    let mut stream = watch(&cluster.url(), request(Default::default(), middle, false)).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let event = next_event(&mut stream, WAIT).await.unwrap();
        assert_eq!(event.r#type(), NodeEventType::Added);
        seen.push(event.revision);
    }
    assert_eq!(seen, revisions[10..]);
    // Then live.
    let n = s.attach_node(registration("later"), "c", Utc::now()).await.unwrap();
    assert_eq!(next_event(&mut stream, WAIT).await.unwrap().revision, n.revision);
    cluster.shutdown().await;
}

#[tokio::test]
async fn resume_from_a_compacted_revision_is_out_of_range_naming_the_oldest_retained() {
    let cluster = TestCluster::sqlite().await;
    let s = &cluster.store;
    let first = s.attach_node(registration("old"), "c", Utc::now()).await.unwrap();
    for i in 0..30 {
        s.update_node(&first.id, NodeUpdate { backend_count: Some(i), ..Default::default() }, UpdateCondition::Always)
            .await
            .unwrap();
    }
    // `now` a second ahead: the age bound counts only changes recorded strictly before it.
    let oldest = s
        .compact(
            Retention { min_revisions: 5, max_age: chrono::Duration::zero() },
            Utc::now() + chrono::Duration::seconds(1),
        )
        .await
        .unwrap();
    assert!(oldest > first.revision);

    let mut stream = watch(&cluster.url(), request(Default::default(), first.revision, false)).await.unwrap();
    let status = next_event(&mut stream, WAIT).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    let (reason, metadata) = error_info(&status).unwrap();
    assert_eq!(reason, "REVISION_COMPACTED");
    assert_eq!(metadata["oldest_revision"], oldest.to_string());

    // From the oldest retained revision itself, the watch works.
    let mut stream = watch(&cluster.url(), request(Default::default(), oldest, false)).await.unwrap();
    let event = next_event(&mut stream, WAIT).await.unwrap();
    assert_eq!(event.revision, oldest + 1);
    cluster.shutdown().await;
}

/// A controller with `watch` and one node carrying ~4 KiB of labels, as realistic nodes do: 1,200
/// of its events are far more than the transport buffers for a stream that is not read (HTTP/2
/// window plus hyper's send buffer), so such a stream's queue fills.
async fn cluster_with_a_busy_node(watch: WatchConfig) -> (TestCluster, hangar::domain::Node) {
    let config = hangar_server::controller::ControllerConfig { watch, ..test_config() };
    let cluster = TestCluster::sqlite_with(config).await;
    let mut busy = registration("busy");
    busy.labels = (0..16).map(|i| (format!("label-{i}"), "x".repeat(250))).collect();
    let node = cluster.store.attach_node(busy, "c", Utc::now()).await.unwrap();
    (cluster, node)
}

/// The slow watcher stops reading; the hub takes it out of the fan-out without ever waiting for
/// it, the other watcher keeps receiving every change promptly, and when the slow one reads
/// again it is cut off, the ring no longer reaching back to it.
#[tokio::test]
async fn a_watcher_that_stops_reading_is_cut_off_while_another_keeps_its_latency() {
    let (cluster, node) =
        cluster_with_a_busy_node(WatchConfig { watcher_buffer: 64, ring_capacity: 256, ..WatchConfig::default() })
            .await;
    let s = cluster.store.clone();
    let start = node.revision;

    let mut slow = watch(&cluster.url(), request(Default::default(), start, false)).await.unwrap();
    let mut fast = watch(&cluster.url(), request(Default::default(), start, false)).await.unwrap();

    const CHANGES: u32 = 1200;
    let written = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
    let writer = {
        let (s, written, id) = (s.clone(), written.clone(), node.id.clone());
        tokio::spawn(async move {
            for i in 0..CHANGES {
                let update = NodeUpdate { backend_count: Some(i + 1), ..Default::default() };
                let node = s.update_node(&id, update, UpdateCondition::Always).await.unwrap().unwrap();
                written.lock().unwrap().insert(node.revision, Instant::now());
            }
        })
    };
    let mut latencies = Vec::new();
    let mut expected = start + 1;
    while expected <= start + u64::from(CHANGES) {
        let event = next_event(&mut fast, WAIT).await.expect("the fast watcher is never cut off");
        assert_eq!(event.revision, expected, "in order, no gap");
        let received = Instant::now();
        if let Some(at) = written.lock().unwrap().get(&event.revision) {
            latencies.push(received.saturating_duration_since(*at));
        }
        expected += 1;
    }
    writer.await.unwrap();
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "fast watcher latency with a stalled peer: p50 {p50:?}, p99 {p99:?}, max {:?}",
        latencies.last().unwrap()
    );
    assert!(p99 < Duration::from_millis(500), "p99 {p99:?}: the stalled watcher slowed the other one");

    // Now the slow one reads: a contiguous run of events, then RESOURCE_EXHAUSTED naming the
    // last revision it delivered.
    let mut last = start;
    let status = loop {
        match next_event(&mut slow, WAIT).await {
            Ok(event) => {
                assert_eq!(event.revision, last + 1);
                last = event.revision;
            }
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let (reason, metadata) = error_info(&status).unwrap();
    assert_eq!(reason, "WATCH_TOO_SLOW");
    assert_eq!(metadata["last_revision"], last.to_string());
    assert!(last < start + u64::from(CHANGES), "it was cut off before the end");

    // Resuming from there misses nothing.
    let mut resumed = watch(&cluster.url(), request(Default::default(), last, false)).await.unwrap();
    assert_eq!(next_event(&mut resumed, WAIT).await.unwrap().revision, last + 1);
    cluster.shutdown().await;
}

/// A watcher that stops reading for a while overflows its queue; when it reads again it
/// catches up from the hub's ring and misses nothing, while the ring still reaches back to it.
#[tokio::test]
async fn a_watcher_that_falls_behind_its_queue_catches_up_from_the_ring_without_a_gap() {
    let (cluster, node) =
        cluster_with_a_busy_node(WatchConfig { watcher_buffer: 16, ring_capacity: 4096, ..WatchConfig::default() })
            .await;
    let s = cluster.store.clone();
    let start = node.revision;
    let mut lagging = watch(&cluster.url(), request(Default::default(), start, false)).await.unwrap();

    const CHANGES: u32 = 1200;
    for i in 0..CHANGES {
        let update = NodeUpdate { backend_count: Some(i + 1), ..Default::default() };
        s.update_node(&node.id, update, UpdateCondition::Always).await.unwrap().unwrap();
    }
    for expected in start + 1..=start + u64::from(CHANGES) {
        let event = next_event(&mut lagging, WAIT).await.expect("caught up from the ring, not cut off");
        assert_eq!(event.revision, expected, "in order, no gap");
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_quiet_filtered_watch_gets_bookmarks_with_the_current_revision() {
    let cluster = TestCluster::sqlite().await;
    let proxies = v1::NodeFilter { kinds: vec![v1::NodeKind::Proxy as i32], ..Default::default() };
    let mut req = request(proxies, 0, false);
    req.bookmark_interval = Some(prost_types::Duration { seconds: 0, nanos: 200_000_000 });
    let mut stream = watch(&cluster.url(), req).await.unwrap();
    // Drone changes do not match the filter, but move the revision on.
    let node = cluster.store.attach_node(registration("d"), "c", Utc::now()).await.unwrap();
    eventually(WAIT, &format!("a bookmark at revision {}", node.revision), async || {
        let event = next_event(&mut stream, WAIT).await.unwrap();
        assert_eq!(event.r#type(), NodeEventType::Bookmark);
        assert!(event.node.is_none());
        check(event, |e| e.revision == node.revision)
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn bad_watch_requests_are_invalid_argument() {
    let cluster = TestCluster::sqlite().await;
    let mut req = request(Default::default(), 5, true);
    let status = watch(&cluster.url(), req.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    req.send_initial = false;
    req.bookmark_interval = Some(prost_types::Duration { seconds: 0, nanos: 1_000 });
    let status = watch(&cluster.url(), req).await.unwrap_err();
    assert_eq!(hangar::error::field_violations(&status)[0].0, "bookmark_interval");
    cluster.shutdown().await;
}

#[tokio::test]
async fn controller_shutdown_ends_watches_with_unavailable_and_the_last_revision() {
    let cluster = TestCluster::sqlite().await;
    let first = cluster.store.attach_node(registration("w"), "c", Utc::now()).await.unwrap();
    let node = cluster.store.attach_node(registration("x"), "c", Utc::now()).await.unwrap();
    let mut stream = watch(&cluster.url(), request(Default::default(), first.revision, false)).await.unwrap();
    assert_eq!(next_event(&mut stream, WAIT).await.unwrap().revision, node.revision);
    let stopping = tokio::spawn(cluster.shutdown());
    // Whatever the stream delivered before the end, the status names the last of it.
    let mut last = node.revision;
    let status = loop {
        match next_event(&mut stream, WAIT).await {
            Ok(event) => last = event.revision,
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(error_info(&status).unwrap().1["last_revision"], last.to_string());
    stopping.await.unwrap();
}
