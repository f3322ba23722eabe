//! WatchBackends: the cluster-wide stream of backend changes, on the one watch hub it shares with
//! WatchNodes. Snapshot then live, a backend's whole life in order, resume, compaction, a stalled
//! reader, filters a backend leaves, list-then-watch, and changes made on another controller on
//! one PostgreSQL.

use chrono::Utc;
use hangar::domain::{Backend, BackendKey, BackendState, BackendStatus, SpawnConfig};
use hangar::error::error_info;
use hangar::v1::{self, BackendEventType, backend_service_client::BackendServiceClient};
use hangar_server::store::{
    self, ActionPayload, ConnectOutcome, ConnectSpec, DroneLoad, DroneSlot, DynStore, EventOutcome, IssuedToken,
    Retention, SpawnPlan, new_action_id,
};
use hangar_server::testing::PgCluster;
use hangar_server::watch::WatchConfig;
use hangar_testkit::eventually;
use hangar_tests::{TestCluster, channel, registration, start_controller_with, test_config};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// Every state of a backend's life after SCHEDULED, in order.
const LIFE: [BackendState; 7] = [
    BackendState::Loading,
    BackendState::Starting,
    BackendState::Waiting,
    BackendState::Ready,
    BackendState::Terminating,
    BackendState::HardTerminating,
    BackendState::Terminated,
];

fn request(filter: v1::BackendFilter, start_revision: u64, send_initial: bool) -> v1::WatchBackendsRequest {
    v1::WatchBackendsRequest { filter: Some(filter), start_revision, send_initial, bookmark_interval: None }
}

async fn watch(
    url: &str,
    request: v1::WatchBackendsRequest,
) -> Result<tonic::Streaming<v1::WatchBackendsResponse>, tonic::Status> {
    let mut client = BackendServiceClient::new(channel(url).await);
    Ok(client.watch_backends(request).await?.into_inner())
}

async fn next_event(
    stream: &mut tonic::Streaming<v1::WatchBackendsResponse>,
    timeout: Duration,
) -> Result<v1::BackendEvent, tonic::Status> {
    match tokio::time::timeout(timeout, stream.message()).await {
        Err(_) => panic!("no watch event within {timeout:?}"),
        Ok(Err(status)) => Err(status),
        Ok(Ok(None)) => panic!("watch stream ended without a status"),
        Ok(Ok(Some(response))) => Ok(response.event.expect("event")),
    }
}

/// The event's backend id and state.
fn seen(event: &v1::BackendEvent) -> (String, i32) {
    let backend = event.backend.as_ref().expect("a backend");
    (backend.id.clone(), backend.status.as_ref().map_or(0, |s| s.state))
}

fn first(loads: &[DroneLoad]) -> Option<usize> {
    (!loads.is_empty()).then_some(0)
}

/// Starts a backend for `namespace/name` on `drone` through `store` (as Connect does).
async fn spawn(store: &DynStore, drone: &str, namespace: &str, name: &str) -> Backend {
    spawn_labelled(store, drone, namespace, name, Default::default()).await
}

async fn spawn_labelled(
    store: &DynStore,
    drone: &str,
    namespace: &str,
    name: &str,
    labels: std::collections::BTreeMap<String, String>,
) -> Backend {
    let wire = v1::SpawnConfig {
        executable: Some(v1::Executable { image: "hangar/test:1".into(), ..Default::default() }),
        labels,
        ..Default::default()
    };
    let lease = Duration::from_secs(300);
    let now = Utc::now();
    let spec = ConnectSpec {
        key: Some(BackendKey { namespace: namespace.into(), name: name.into(), tag: String::new() }),
        spawn: Some(SpawnPlan {
            backend_id: Backend::new_id(),
            action_id: new_action_id(),
            config: SpawnConfig::from_proto(&wire, "spawn_config").unwrap(),
            candidates: vec![DroneSlot { node_id: drone.into(), capacity: 10_000 }].into(),
            lease_duration: lease,
            action: ActionPayload::Spawn {
                startup_timeout: Duration::from_secs(60),
                lease_duration: lease,
                stop_grace: Duration::from_secs(1),
                trace_context: Default::default(),
            },
            static_token_hash: None,
        }),
        token: IssuedToken {
            hash: Backend::new_id(),
            user: "u".into(),
            auth: Default::default(),
            expires_at: now + chrono::Duration::hours(1),
        },
        now,
    };
    match store.connect_backend(spec, &first).await.unwrap() {
        ConnectOutcome::Spawned(backend) => backend,
        other => panic!("expected a spawn, got {other:?}"),
    }
}

/// Moves `backend` to `state` as its drone's event would; returns the backend afterwards.
async fn advance(store: &DynStore, backend: &Backend, state: BackendState) -> Backend {
    let status = BackendStatus::new(state, Utc::now());
    match store.apply_backend_event(&backend.drone_id, &backend.id, status, "10.0.0.1:8080", Utc::now()).await {
        Ok(EventOutcome::Applied(backend)) => *backend,
        other => panic!("{state:?}: {other:?}"),
    }
}

/// Reads until SNAPSHOT_END; the ADDED backends (id, state) and the snapshot revision.
async fn initial(stream: &mut tonic::Streaming<v1::WatchBackendsResponse>) -> (Vec<(String, i32)>, u64) {
    let mut added = Vec::new();
    loop {
        let event = next_event(stream, WAIT).await.unwrap();
        match event.r#type() {
            BackendEventType::Added => added.push(seen(&event)),
            BackendEventType::SnapshotEnd => return (added, event.revision),
            other => panic!("unexpected {other:?} before SNAPSHOT_END"),
        }
    }
}

#[tokio::test]
async fn send_initial_gives_the_backends_then_snapshot_end_then_every_state_of_a_life_in_order() {
    let cluster = TestCluster::sqlite().await;
    let s = &cluster.store;
    let drone = s.attach_node(registration("d1"), "c", Utc::now()).await.unwrap();
    let older = spawn(s, &drone.id, "docs", "older").await;
    let older = advance(s, &older, BackendState::Loading).await;

    let mut stream = watch(&cluster.url(), request(Default::default(), 0, true)).await.unwrap();
    let (added, snapshot) = initial(&mut stream).await;
    assert_eq!(added, [(older.id.clone(), v1::BackendState::Loading as i32)]);
    assert_eq!(snapshot, s.current_revision().await.unwrap());

    // A whole life, interleaved with node changes (same revision counter, other kind).
    let backend = spawn(s, &drone.id, "docs", "life").await;
    let mut expected = vec![(backend.id.clone(), BackendEventType::Added, v1::BackendState::Scheduled as i32)];
    for state in LIFE {
        s.update_node(
            &drone.id,
            store::NodeUpdate { backend_count: Some(state as u32 + 1), ..Default::default() },
            store::UpdateCondition::Always,
        )
        .await
        .unwrap();
        advance(s, &backend, state).await;
        expected.push((backend.id.clone(), BackendEventType::Modified, state.to_proto() as i32));
    }
    let mut revisions = Vec::new();
    for want in &expected {
        let event = next_event(&mut stream, WAIT).await.unwrap();
        let (id, state) = seen(&event);
        assert_eq!((id, event.r#type(), state), want.clone(), "in order, each state once");
        revisions.push(event.revision);
    }
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "revisions increase: {revisions:?}");
    assert!(revisions[0] > snapshot);
    // Nothing more: no duplicate (a fixed wait, to show that nothing else arrives).
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(quiet.is_err(), "an unexpected event: {quiet:?}");
    cluster.shutdown().await;
}

#[tokio::test]
async fn list_backends_carries_the_revision_a_watch_continues_from_without_a_gap() {
    let cluster = TestCluster::sqlite().await;
    let s = &cluster.store;
    let drone = s.attach_node(registration("d1"), "c", Utc::now()).await.unwrap();
    let a = spawn(s, &drone.id, "docs", "a").await;
    let mut client = BackendServiceClient::new(cluster.channel().await);
    let listed = client.list_backends(v1::ListBackendsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.backends.len(), 1);
    assert_eq!(listed.revision, s.current_revision().await.unwrap());
    let ready = advance(s, &a, BackendState::Ready).await;
    let mut stream = watch(&cluster.url(), request(Default::default(), listed.revision, false)).await.unwrap();
    let event = next_event(&mut stream, WAIT).await.unwrap();
    assert_eq!(event.r#type(), BackendEventType::Modified);
    assert_eq!(seen(&event), (ready.id, v1::BackendState::Ready as i32));
    cluster.shutdown().await;
}

#[tokio::test]
async fn resume_from_a_middle_revision_replays_exactly_the_missed_backend_changes() {
    let cluster = TestCluster::sqlite().await;
    let s = &cluster.store;
    let drone = s.attach_node(registration("d1"), "c", Utc::now()).await.unwrap();
    let backend = spawn(s, &drone.id, "docs", "resumed").await;
    let mut revisions = Vec::new();
    for state in LIFE {
        advance(s, &backend, state).await;
        revisions.push(s.current_revision().await.unwrap());
    }
    let middle = revisions[2];
    let mut stream = watch(&cluster.url(), request(Default::default(), middle, false)).await.unwrap();
    for (i, state) in LIFE.iter().enumerate().skip(3) {
        let event = next_event(&mut stream, WAIT).await.unwrap();
        assert_eq!(event.revision, revisions[i]);
        assert_eq!(seen(&event).1, state.to_proto() as i32);
    }
    // Then live.
    let next = spawn(s, &drone.id, "docs", "later").await;
    let event = next_event(&mut stream, WAIT).await.unwrap();
    assert_eq!((event.r#type(), seen(&event).0), (BackendEventType::Added, next.id));
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_compacted_start_revision_is_out_of_range_naming_the_oldest_retained() {
    let cluster = TestCluster::sqlite().await;
    let s = &cluster.store;
    let drone = s.attach_node(registration("d1"), "c", Utc::now()).await.unwrap();
    let start = s.current_revision().await.unwrap();
    for i in 0..5 {
        let backend = spawn(s, &drone.id, "docs", &format!("b{i}")).await;
        for state in LIFE {
            advance(s, &backend, state).await;
        }
    }
    // A node change after them, so that the age bound of the compaction reaches past them.
    s.update_node(
        &drone.id,
        store::NodeUpdate { backend_count: Some(1), ..Default::default() },
        store::UpdateCondition::Always,
    )
    .await
    .unwrap();
    // `now` a second ahead: the age bound counts changes recorded strictly before it, and the node
    // change above may share its millisecond with a `Utc::now()` taken right after it.
    let later = Utc::now() + chrono::Duration::seconds(1);
    let oldest = s.compact(Retention { min_revisions: 5, max_age: chrono::Duration::zero() }, later).await.unwrap();
    assert!(oldest > start);

    let mut stream = watch(&cluster.url(), request(Default::default(), start, false)).await.unwrap();
    let status = next_event(&mut stream, WAIT).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    let (reason, metadata) = error_info(&status).unwrap();
    assert_eq!(reason, "REVISION_COMPACTED");
    assert_eq!(metadata["oldest_revision"], oldest.to_string());

    // From the oldest retained revision, the backend changes after it (the last node change is
    // not a backend event).
    let mut stream = watch(&cluster.url(), request(Default::default(), oldest, false)).await.unwrap();
    let event = next_event(&mut stream, WAIT).await.unwrap();
    assert_eq!(event.revision, oldest + 1);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_namespace_and_state_filter_delivers_a_backend_leaving_it_as_removed() {
    let cluster = TestCluster::sqlite().await;
    let s = &cluster.store;
    let drone = s.attach_node(registration("d1"), "c", Utc::now()).await.unwrap();
    let filter = v1::BackendFilter {
        key_namespace: "docs".into(),
        states: vec![v1::BackendState::Ready as i32, v1::BackendState::Waiting as i32],
        ..Default::default()
    };
    let ready_before = advance(s, &spawn(s, &drone.id, "docs", "early").await, BackendState::Ready).await;
    let mut stream = watch(&cluster.url(), request(filter, 0, true)).await.unwrap();
    let (added, _) = initial(&mut stream).await;
    assert_eq!(added, [(ready_before.id.clone(), v1::BackendState::Ready as i32)]);

    let other = spawn(s, &drone.id, "other", "x").await;
    let doc = spawn(s, &drone.id, "docs", "d").await;
    for state in LIFE {
        advance(s, &other, state).await;
        advance(s, &doc, state).await;
    }
    advance(s, &ready_before, BackendState::Terminated).await;
    let want = [
        (BackendEventType::Added, doc.id.clone(), v1::BackendState::Waiting),
        (BackendEventType::Modified, doc.id.clone(), v1::BackendState::Ready),
        (BackendEventType::Removed, doc.id.clone(), v1::BackendState::Terminating),
        (BackendEventType::Removed, ready_before.id.clone(), v1::BackendState::Terminated),
    ];
    for (kind, id, state) in want {
        let event = next_event(&mut stream, WAIT).await.unwrap();
        assert_eq!((event.r#type(), seen(&event)), (kind, (id, state as i32)));
    }
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(quiet.is_err(), "the other namespace and states outside the filter send nothing: {quiet:?}");
    cluster.shutdown().await;
}

/// The slow watcher stops reading; the other keeps receiving every change promptly, and when the
/// slow one reads again it is cut off with the last revision it delivered, from which a resume
/// misses nothing.
#[tokio::test]
async fn a_stopped_backend_watcher_is_cut_off_with_its_last_revision_while_another_keeps_its_latency() {
    let config = hangar_server::controller::ControllerConfig {
        watch: WatchConfig { watcher_buffer: 64, ring_capacity: 256, ..WatchConfig::default() },
        ..test_config()
    };
    let cluster = TestCluster::sqlite_with(config).await;
    let s = cluster.store.clone();
    let drone = s.attach_node(registration("d1"), "c", Utc::now()).await.unwrap();
    let start = s.current_revision().await.unwrap();
    let mut slow = watch(&cluster.url(), request(Default::default(), start, false)).await.unwrap();
    let mut fast = watch(&cluster.url(), request(Default::default(), start, false)).await.unwrap();

    // 1,200 changes: 150 backends through 8 states, each event with ~4 KiB of labels, far more
    // than the transport buffers for a stream that is not read. The writer records each change (backend,
    // state) in commit order with its time; other revisions (the drone going OFFLINE, the
    // controller's own writes) are node changes, not backend events.
    const BACKENDS: usize = 150;
    let total = BACKENDS * (LIFE.len() + 1);
    let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::<((String, i32), Instant)>::new()));
    let writer = {
        let (s, written, drone) = (s.clone(), written.clone(), drone.id.clone());
        tokio::spawn(async move {
            for i in 0..BACKENDS {
                let labels = (0..16).map(|l| (format!("label-{l}"), "x".repeat(250))).collect();
                let backend = spawn_labelled(&s, &drone, "load", &format!("b{i}"), labels).await;
                let change = (backend.id.clone(), v1::BackendState::Scheduled as i32);
                written.lock().unwrap().push((change, Instant::now()));
                for state in LIFE {
                    advance(&s, &backend, state).await;
                    let change = (backend.id.clone(), state.to_proto() as i32);
                    written.lock().unwrap().push((change, Instant::now()));
                }
            }
        })
    };
    // Waits until the writer has recorded change `i` (the event can overtake the record).
    let record = |i: usize| {
        let written = written.clone();
        eventually(WAIT, "the writer's record of the change", async move || written.lock().unwrap().get(i).cloned())
    };
    let mut latencies = Vec::new();
    let mut last = start;
    for i in 0..total {
        let event = next_event(&mut fast, WAIT).await.expect("the fast watcher is never cut off");
        let received = Instant::now();
        let (change, at) = record(i).await;
        assert_eq!(seen(&event), change, "in order, no gap, no duplicate");
        assert!(event.revision > last);
        last = event.revision;
        latencies.push(received.saturating_duration_since(at));
    }
    writer.await.unwrap();
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!("fast backend watcher latency with a stalled peer: p50 {p50:?}, p99 {p99:?}");
    assert!(p99 < Duration::from_millis(500), "p99 {p99:?}: the stalled watcher slowed the other one");

    // The slow one reads again: a run of the changes in order, then RESOURCE_EXHAUSTED naming
    // the last revision it delivered.
    let mut last = start;
    let mut delivered = 0;
    let status = loop {
        match next_event(&mut slow, WAIT).await {
            Ok(event) => {
                assert_eq!(seen(&event), record(delivered).await.0);
                assert!(event.revision > last);
                last = event.revision;
                delivered += 1;
            }
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let (reason, metadata) = error_info(&status).unwrap();
    assert_eq!(reason, "WATCH_TOO_SLOW");
    // The stream's position: the last backend event it delivered, or a later revision when the
    // changes it passed over after that were node changes (the drone going OFFLINE, say), which
    // a backend watch skips. Either way nothing it owes is before it.
    let cut_at: u64 = metadata["last_revision"].parse().unwrap();
    assert!(cut_at >= last, "cut off at {cut_at}, before the last delivered revision {last}");
    assert!(delivered < total, "it was cut off before the end");
    // Resuming from there continues with the next change.
    let mut resumed = watch(&cluster.url(), request(Default::default(), cut_at, false)).await.unwrap();
    assert_eq!(seen(&next_event(&mut resumed, WAIT).await.unwrap()), record(delivered).await.0);
    cluster.shutdown().await;
}

/// Two controllers on one PostgreSQL: a watcher on A sees, in order and each once, every state of
/// backends whose changes are written through B's store, interleaved with A's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_changes_made_on_another_controller_reach_the_watcher_in_order_on_postgres() {
    hangar_tests::init_logging();
    let pg = PgCluster::shared().await.expect("PostgreSQL test cluster");
    let url = pg.create_database().await.expect("database");
    let (store_a, store_b) = (store::open(&url).await.unwrap(), store::open(&url).await.unwrap());
    let a = start_controller_with(store_a.clone(), test_config()).await;
    let b = start_controller_with(store_b.clone(), test_config()).await;
    let drone = store_b.attach_node(registration("d1"), "c", Utc::now()).await.unwrap();
    let before = spawn(&store_b, &drone.id, "docs", "before").await;

    let mut stream = watch(&a.url(), request(Default::default(), 0, true)).await.unwrap();
    let (added, snapshot) = initial(&mut stream).await;
    assert_eq!(added, [(before.id.clone(), v1::BackendState::Scheduled as i32)]);

    let on_b = spawn(&store_b, &drone.id, "docs", "on-b").await;
    let on_a = spawn(&store_a, &drone.id, "docs", "on-a").await;
    let mut expected = vec![(on_b.id.clone(), BackendState::Scheduled), (on_a.id.clone(), BackendState::Scheduled)];
    for state in LIFE {
        advance(&store_b, &on_b, state).await;
        advance(&store_a, &on_a, state).await;
        expected.push((on_b.id.clone(), state));
        expected.push((on_a.id.clone(), state));
    }
    let mut last = snapshot;
    for (id, state) in expected {
        let event = next_event(&mut stream, WAIT).await.unwrap();
        assert_eq!(seen(&event), (id, state.to_proto() as i32), "in commit order");
        assert!(event.revision > last, "no duplicate, increasing revisions");
        last = event.revision;
    }
    assert_eq!(last, store_a.current_revision().await.unwrap());
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(quiet.is_err(), "no duplicate: {quiet:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// The SDK's `watch_backends`: the snapshot as Init … InitDone, then live changes; a backend
/// leaving the namespace+state filter is Removed.
#[tokio::test]
async fn the_sdk_watch_backends_gives_the_snapshot_then_changes_through_its_filter() {
    use futures::StreamExt;
    use hangar_client::{BackendWatchEvent, HangarClient, WatchOptions};
    let cluster = TestCluster::sqlite().await;
    let s = &cluster.store;
    let drone = s.attach_node(registration("d1"), "c", Utc::now()).await.unwrap();
    let ready = advance(s, &spawn(s, &drone.id, "docs", "ready").await, BackendState::Ready).await;
    let client = HangarClient::connect(&cluster.url()).await.unwrap();
    let filter = hangar::domain::BackendFilter {
        key_namespace: Some("docs".into()),
        states: vec![BackendState::Ready],
        ..Default::default()
    };
    let mut events = std::pin::pin!(client.watch_backends(filter, WatchOptions::default()));
    let mut next = async || tokio::time::timeout(WAIT, events.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(next().await, BackendWatchEvent::Init);
    assert!(matches!(next().await, BackendWatchEvent::InitApply(b) if b.id == ready.id));
    assert!(matches!(next().await, BackendWatchEvent::InitDone { .. }));
    advance(s, &ready, BackendState::Terminating).await;
    match next().await {
        BackendWatchEvent::Removed(b, _) => assert_eq!((b.id, b.state), (ready.id.clone(), BackendState::Terminating)),
        other => panic!("expected REMOVED, got {other:?}"),
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn hangar_backends_watch_without_an_id_prints_the_snapshot_then_live_changes_as_ndjson() {
    use tokio::io::AsyncBufReadExt;
    let cluster = TestCluster::sqlite().await;
    let s = &cluster.store;
    let drone = s.attach_node(registration("d1"), "c", Utc::now()).await.unwrap();
    let first = spawn(s, &drone.id, "docs", "first").await;
    let mut child = tokio::process::Command::new(hangar_tests::binary("hangar"))
        .args(["--controller", &cluster.url(), "--output", "json", "backends", "watch", "--namespace", "docs"])
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
    assert_eq!((added["type"].as_str(), added["backend"]["id"].as_str()), (Some("ADDED"), Some(first.id.as_str())));
    assert_eq!(read().await["type"], "SNAPSHOT_END");
    spawn(s, &drone.id, "elsewhere", "not-shown").await;
    advance(s, &first, BackendState::Ready).await;
    let live = read().await;
    assert_eq!(live["type"], "MODIFIED");
    assert_eq!(live["backend"]["id"], first.id.as_str());
    assert_eq!(live["backend"]["state"], "READY");
    assert_eq!(live["revision"], s.current_revision().await.unwrap());
    child.kill().await.unwrap();
    cluster.shutdown().await;
}

/// Retention removes a backend a while after it ended: one REMOVED event, with its revision and
/// the backend as it ended, to every watcher whose filter still had it; GetBackend then answers
/// NOT_FOUND. A watcher whose filter let it go at TERMINATED already had its REMOVED and gets
/// nothing more.
#[tokio::test]
async fn a_watcher_sees_removed_for_a_backend_that_retention_removed() {
    let config =
        hangar_server::controller::ControllerConfig { backend_retention: Duration::from_secs(1), ..test_config() };
    let cluster = TestCluster::sqlite_with(config).await;
    let s = &cluster.store;
    let drone = s.attach_node(registration("d1"), "c", Utc::now()).await.unwrap();
    let backend = spawn(s, &drone.id, "docs", "retained").await;
    let live = spawn(s, &drone.id, "docs", "stays").await;
    let mut everything = watch(&cluster.url(), request(Default::default(), 0, true)).await.unwrap();
    let (added, _) = initial(&mut everything).await;
    assert_eq!(added.len(), 2);
    let running = v1::BackendFilter { states: vec![v1::BackendState::Scheduled as i32], ..Default::default() };
    let mut only_running = watch(&cluster.url(), request(running, 0, true)).await.unwrap();
    assert_eq!(initial(&mut only_running).await.0.len(), 2);

    let ended = advance(s, &backend, BackendState::Terminated).await;
    let event = next_event(&mut everything, WAIT).await.unwrap();
    assert_eq!(
        (event.r#type(), seen(&event)),
        (BackendEventType::Modified, (ended.id.clone(), v1::BackendState::Terminated as i32))
    );
    let terminated_at = event.revision;
    let event = next_event(&mut only_running, WAIT).await.unwrap();
    assert_eq!((event.r#type(), event.revision), (BackendEventType::Removed, terminated_at), "left the filter");

    // About a second later (the retention), one REMOVED under the next revision of its own.
    let event = next_event(&mut everything, WAIT).await.unwrap();
    assert_eq!(event.r#type(), BackendEventType::Removed);
    assert_eq!(seen(&event), (ended.id.clone(), v1::BackendState::Terminated as i32), "the backend as it ended");
    assert!(event.revision > terminated_at);
    let mut client = BackendServiceClient::new(cluster.channel().await);
    let status = client.get_backend(v1::GetBackendRequest { id: ended.id.clone() }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(client.get_backend(v1::GetBackendRequest { id: live.id.clone() }).await.is_ok(), "a live backend stays");
    // A watcher resuming from before the removal replays it too.
    let mut resumed = watch(&cluster.url(), request(Default::default(), terminated_at, false)).await.unwrap();
    let replayed = next_event(&mut resumed, WAIT).await.unwrap();
    assert_eq!((replayed.r#type(), replayed.revision), (BackendEventType::Removed, event.revision));
    // Nothing more: the removal is one event, and the filtered watcher had its REMOVED already.
    let quiet = tokio::time::timeout(Duration::from_millis(1500), only_running.message()).await;
    assert!(quiet.is_err(), "an unexpected event: {quiet:?}");
    let quiet = tokio::time::timeout(Duration::from_millis(300), everything.message()).await;
    assert!(quiet.is_err(), "an unexpected event: {quiet:?}");
    cluster.shutdown().await;
}
