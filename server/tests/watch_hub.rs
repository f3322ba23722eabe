//! The watch hub's feed: this process's commits fanned out as they are published, commits of
//! other store objects (other controllers) read from the log, and every node change delivered
//! exactly once, in revision order, whichever way it arrived.

use chrono::Utc;
use hangar::domain::{NodeKind, NodeResources};
use hangar_server::store::{Change, DynStore, LocalCommit, NodeRegistration, NodeUpdate, Revision, UpdateCondition};
use hangar_server::testing::TestDatabase;
use hangar_server::watch::{HubChange, WatchConfig, WatchHub, Watched};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn drone(name: &str) -> NodeRegistration {
    NodeRegistration {
        kind: NodeKind::Drone,
        name: name.to_string(),
        cluster: "default".to_string(),
        pool: "default".to_string(),
        labels: BTreeMap::new(),
        version: "1.0.0".to_string(),
        backend_capacity: 1_000_000,
        resources: NodeResources { cpu_cores: 4, memory_total_bytes: 8 << 30, ..Default::default() },
    }
}

/// A hub on `store`, running as a controller runs it. The poll interval is long so that a
/// change can only arrive through the local feed or a notification, not by the periodic read.
async fn running_hub(store: &DynStore, shutdown: &CancellationToken) -> WatchHub {
    let config = WatchConfig { poll_interval: Duration::from_secs(3600), ..WatchConfig::default() };
    let hub = WatchHub::new(store.clone(), config, shutdown.clone()).await.unwrap();
    let (notified, local) = (store.subscribe(), store.local_commits());
    let runner = hub.clone();
    tokio::spawn(async move { runner.run(notified, local).await });
    hub
}

/// The backend count of a node change (these tests change nothing else).
fn backend_count(change: &HubChange) -> u32 {
    match &change.object {
        Watched::Node { node, .. } => node.backend_count,
        Watched::Backend { .. } => panic!("these tests make node changes only"),
    }
}

/// Receives changes until `count` have arrived; returns their revisions and backend counts.
async fn receive(subscription: &mut hangar_server::watch::Subscription, count: usize) -> Vec<(Revision, u32)> {
    let mut seen: Vec<(Revision, u32)> =
        subscription.backlog.drain(..).map(|c| (c.revision, backend_count(&c))).collect();
    while seen.len() < count {
        let change = tokio::time::timeout(Duration::from_secs(10), subscription.live.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} changes arrived: {seen:?}", seen.len()))
            .expect("the feed stays open");
        seen.push((change.revision, backend_count(&change)));
    }
    seen
}

/// Writes `count` changes through `store` with 16 in flight, so that commits finish (and are
/// published) in an order that differs from their revisions.
async fn concurrent_writes(store: &DynStore, node_id: &str, values: std::ops::Range<u32>) {
    let writes = values.map(|i| {
        let store = store.clone();
        let id = node_id.to_string();
        async move {
            let update = NodeUpdate { backend_count: Some(i), ..Default::default() };
            store.update_node(&id, update, UpdateCondition::Always).await.unwrap().expect("node exists");
        }
    });
    futures::stream::iter(writes).buffer_unordered(16).collect::<Vec<()>>().await;
}

use futures::StreamExt as _;

async fn local_commits_out_of_order_reach_watchers_once_in_revision_order(db: TestDatabase) {
    let store = db.open().await;
    let shutdown = CancellationToken::new();
    let node = store.attach_node(drone("d1"), "controller-a", Utc::now()).await.unwrap();
    let hub = running_hub(&store, &shutdown).await;
    let mut subscription = hub.subscribe(store.current_revision().await.unwrap()).await.unwrap();

    concurrent_writes(&store, &node.id, 1..401).await;
    let seen = receive(&mut subscription, 400).await;

    let revisions: Vec<Revision> = seen.iter().map(|(r, _)| *r).collect();
    assert!(revisions.windows(2).all(|w| w[1] == w[0] + 1), "gapless and ordered: {revisions:?}");
    let mut values: Vec<u32> = seen.iter().map(|(_, v)| *v).collect();
    values.sort_unstable();
    assert_eq!(values, (1..401).collect::<Vec<_>>(), "every write exactly once");
    assert_eq!(hub.cursor(), store.current_revision().await.unwrap());
    shutdown.cancel();
}

async fn changes_of_another_controller_interleave_with_local_ones_without_loss(db: TestDatabase) {
    // Two store objects on one database are two controllers: B's commits never reach A's local
    // feed; on PostgreSQL A learns of them by NOTIFY, on SQLite (one controller in production)
    // by the local commits that follow them, whose revisions leave a gap the hub fills from the
    // log.
    let a = db.open().await;
    let b = db.open().await;
    let shutdown = CancellationToken::new();
    let node = a.attach_node(drone("d1"), "controller-a", Utc::now()).await.unwrap();
    let hub = running_hub(&a, &shutdown).await;
    let mut subscription = hub.subscribe(a.current_revision().await.unwrap()).await.unwrap();

    let mut expected = Vec::new();
    for round in 0..20u32 {
        let base = round * 20;
        let (through_a, through_b) = (base + 1..base + 11, base + 11..base + 21);
        expected.extend(through_a.clone().chain(through_b.clone()));
        tokio::join!(concurrent_writes(&a, &node.id, through_a), concurrent_writes(&b, &node.id, through_b));
    }
    // A last local write, so that B's final commits are behind a gap on SQLite too.
    concurrent_writes(&a, &node.id, 1000..1001).await;
    expected.push(1000);

    let seen = receive(&mut subscription, expected.len()).await;
    let revisions: Vec<Revision> = seen.iter().map(|(r, _)| *r).collect();
    assert!(revisions.windows(2).all(|w| w[1] == w[0] + 1), "gapless and ordered: {revisions:?}");
    let mut values: Vec<u32> = seen.iter().map(|(_, v)| *v).collect();
    values.sort_unstable();
    expected.sort_unstable();
    assert_eq!(values, expected, "every write of both controllers exactly once");
    shutdown.cancel();
}

async fn a_local_commit_waits_for_the_revisions_before_it_then_the_log_fills_the_gap(db: TestDatabase) {
    // The hub gets a local feed and a notifier driven by the test, so that commits can be
    // published in any order: the store's own feed is not connected.
    let store = db.open().await;
    let shutdown = CancellationToken::new();
    let node = store.attach_node(drone("d1"), "controller-a", Utc::now()).await.unwrap();
    let before = store.current_revision().await.unwrap();
    let config = WatchConfig { poll_interval: Duration::from_secs(3600), ..WatchConfig::default() };
    let hub = WatchHub::new(store.clone(), config, shutdown.clone()).await.unwrap();
    let mut subscription = hub.subscribe(before).await.unwrap();
    // The hub reads the log once when it starts. A change committed before it runs can reach it
    // only through that read, so receiving it shows the read is over: the writes below can then
    // reach the hub only through the feed and the notifier.
    let update = NodeUpdate { backend_count: Some(100), ..Default::default() };
    store.update_node(&node.id, update, UpdateCondition::Always).await.unwrap().expect("node exists");
    let (feed, local) = tokio::sync::broadcast::channel(16);
    let (notify, notified) = tokio::sync::watch::channel(before);
    let runner = hub.clone();
    tokio::spawn(async move { runner.run(notified, local).await });
    let start = receive(&mut subscription, 1).await[0].0;
    assert_eq!(start, before + 1, "the startup read delivers the change made before it");

    concurrent_writes(&store, &node.id, 1..6).await;
    let changes = store.node_changes_since(start, 10).await.unwrap();
    assert_eq!(changes.len(), 5);
    let commit =
        |i: usize| LocalCommit { revision: changes[i].revision, change: Some(Change::Node(changes[i].clone())) };

    // Published out of order: nothing goes out ahead of an earlier revision.
    for i in [2, 0, 1] {
        feed.send(commit(i)).unwrap();
    }
    let seen = receive(&mut subscription, 3).await;
    assert_eq!(seen.iter().map(|(r, _)| *r).collect::<Vec<_>>(), (start + 1..=start + 3).collect::<Vec<_>>());

    // Revision 4 is never published here (another controller made it): 5 waits for it...
    feed.send(commit(4)).unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), subscription.live.recv()).await;
    assert!(early.is_err(), "a change went out ahead of the revision before it: {early:?}");
    // ...until the store announces the commit and the hub reads it from the log.
    notify.send(changes[3].revision).unwrap();
    let seen = receive(&mut subscription, 2).await;
    assert_eq!(seen.iter().map(|(r, _)| *r).collect::<Vec<_>>(), vec![start + 4, start + 5]);
    assert!(subscription.live.try_recv().is_err(), "nothing twice");
    shutdown.cancel();
}

hangar_server::store_scenarios!(
    local_commits_out_of_order_reach_watchers_once_in_revision_order,
    changes_of_another_controller_interleave_with_local_ones_without_loss,
    a_local_commit_waits_for_the_revisions_before_it_then_the_log_fills_the_gap,
);
