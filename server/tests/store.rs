//! The store contract, checked scenario by scenario against SQLite and a real PostgreSQL.

use chrono::{DateTime, Duration, TimeZone, Utc};
use hangar::domain::{Node, NodeFilter, NodeKind, NodeResources, NodeState};
use hangar_server::store::{
    self, ChangeKind, DroneCensus, DynStore, NodeRegistration, NodeUpdate, Retention, Revision, StoreError,
    UpdateCondition,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

type Database = hangar_server::testing::TestDatabase;

hangar_server::store_scenarios!(
    attach_keeps_node_id_for_same_cluster_and_name,
    revisions_are_gapless_and_ordered,
    list_pages_come_from_one_snapshot_while_nodes_change,
    pagination_over_2500_nodes_returns_each_exactly_once,
    list_filters_by_kind,
    list_filters_by_state,
    list_filters_by_cluster,
    list_filters_by_pool,
    list_filters_by_labels_across_sparse_pages,
    update_with_held_by_condition_skips_foreign_nodes,
    noop_update_writes_no_revision,
    a_batch_update_writes_each_changed_node_as_its_own_revision_in_one_commit,
    compaction_keeps_latest_versions_and_reports_compacted_reads,
    changes_since_replays_in_order,
    draining_survives_reattach,
    undrain_clears_the_drain_and_its_deadline_once,
    drone_census_counts_the_pools_drones_by_their_current_state,
    removed_node_frees_its_name_and_stays_in_older_snapshots,
    reads_at_a_future_revision_are_refused,
    concurrent_writers_get_gapless_revisions,
    concurrent_attaches_of_one_name_yield_one_node,
    shared_secret_is_stable_across_store_instances,
);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn drone(cluster: &str, name: &str) -> NodeRegistration {
    NodeRegistration {
        kind: NodeKind::Drone,
        name: name.to_string(),
        cluster: cluster.to_string(),
        pool: "default".to_string(),
        labels: BTreeMap::new(),
        version: "1.0.0".to_string(),
        backend_capacity: 16,
        resources: NodeResources { cpu_cores: 4, memory_total_bytes: 8 << 30, ..Default::default() },
    }
}

fn state(s: NodeState) -> NodeUpdate {
    NodeUpdate { state: Some(s), ..Default::default() }
}

async fn attach(store: &DynStore, registration: NodeRegistration) -> Node {
    store.attach_node(registration, "controller-a", t0()).await.unwrap()
}

/// Every node matching `filter` at `at`, read page by page; asserts the pages' invariants.
async fn list_all(store: &DynStore, filter: &NodeFilter, at: Option<Revision>, limit: usize) -> (Vec<Node>, Revision) {
    list_from(store, filter, at, None, limit).await
}

/// Like `list_all`, starting after the node id `after`.
async fn list_from(
    store: &DynStore,
    filter: &NodeFilter,
    at: Option<Revision>,
    mut after: Option<String>,
    limit: usize,
) -> (Vec<Node>, Revision) {
    let mut nodes: Vec<Node> = Vec::new();
    let mut revision = at;
    loop {
        let page = store.list_nodes(filter, revision, after.as_deref(), limit).await.unwrap();
        assert!(page.nodes.len() <= limit, "page of {} over limit {limit}", page.nodes.len());
        assert_eq!(*revision.get_or_insert(page.revision), page.revision, "every page from one snapshot");
        if let (Some(last), Some(first)) = (nodes.last(), page.nodes.first()) {
            assert!(last.id < first.id, "pages continue in id order");
        }
        nodes.extend(page.nodes);
        if !page.more {
            break;
        }
        after = Some(nodes.last().expect("a page with more has nodes").id.clone());
    }
    (nodes, revision.unwrap())
}

fn ids(nodes: &[Node]) -> Vec<String> {
    nodes.iter().map(|n| n.id.clone()).collect()
}

async fn attach_keeps_node_id_for_same_cluster_and_name(db: Database) {
    let store = db.open().await;
    let first = attach(&store, drone("eu", "d1")).await;
    let again = store.attach_node(drone("eu", "d1"), "controller-b", t0() + Duration::seconds(5)).await.unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(again.controller_id, "controller-b");
    assert_eq!(again.registered_at, first.registered_at, "registration time survives a reconnect");
    assert_eq!(again.last_heartbeat_at, t0() + Duration::seconds(5));
    assert_eq!(again.revision, first.revision + 1);

    let other_cluster = attach(&store, drone("us", "d1")).await;
    let proxy = attach(&store, NodeRegistration { kind: NodeKind::Proxy, ..drone("eu", "d1") }).await;
    let distinct: BTreeSet<_> = [&first.id, &other_cluster.id, &proxy.id].into_iter().collect();
    assert_eq!(distinct.len(), 3, "cluster and kind are part of a node's identity");

    let changes = store.node_changes_since(0, 100).await.unwrap();
    let kinds: Vec<_> = changes.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, [ChangeKind::Added, ChangeKind::Modified, ChangeKind::Added, ChangeKind::Added]);
    assert_eq!(store.get_node(&first.id).await.unwrap(), Some(again));
}

async fn revisions_are_gapless_and_ordered(db: Database) {
    let store = db.open().await;
    let a = attach(&store, drone("eu", "a")).await;
    let b = attach(&store, drone("eu", "b")).await;
    store.update_node(&a.id, state(NodeState::Unhealthy), UpdateCondition::Always).await.unwrap().unwrap();
    store.update_node(&b.id, state(NodeState::Unhealthy), UpdateCondition::Always).await.unwrap().unwrap();
    attach(&store, drone("eu", "a")).await;
    store.remove_node(&b.id, UpdateCondition::Always).await.unwrap().unwrap();

    let changes = store.node_changes_since(0, 100).await.unwrap();
    let revisions: Vec<Revision> = changes.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, (1..=6).collect::<Vec<_>>());
    assert!(changes.iter().all(|c| c.node.revision == c.revision), "each version carries its revision");
    assert_eq!(store.current_revision().await.unwrap(), 6);
    assert_eq!(changes[5].kind, ChangeKind::Removed);
    assert_eq!(changes[5].node.state, NodeState::Unhealthy, "a removal carries the node's last version");
}

async fn list_pages_come_from_one_snapshot_while_nodes_change(db: Database) {
    let store = db.open().await;
    for i in 0..10 {
        attach(&store, drone("eu", &format!("d{i:02}"))).await;
    }
    let everything = NodeFilter::default();
    let (before, _) = list_all(&store, &everything, None, 100).await;

    let first = store.list_nodes(&everything, None, None, 4).await.unwrap();
    assert_eq!(ids(&first.nodes), ids(&before[..4]));
    assert!(first.more);
    // Change what the second page would show: modify, remove, and add nodes sorting after it.
    store.update_node(&before[5].id, state(NodeState::Offline), UpdateCondition::Always).await.unwrap();
    store.remove_node(&before[6].id, UpdateCondition::Always).await.unwrap();
    for i in 0..5 {
        attach(&store, drone("eu", &format!("late{i}"))).await;
    }
    let last_seen = first.nodes.last().map(|n| n.id.clone());
    let (rest, revision) = list_from(&store, &everything, Some(first.revision), last_seen, 4).await;
    assert_eq!(revision, first.revision);
    let mut seen = first.nodes.clone();
    seen.extend(rest);
    assert_eq!(seen, before, "later pages show the snapshot, not the present");

    let (now, _) = list_all(&store, &everything, None, 4).await;
    assert_eq!(now.len(), 10 - 1 + 5);
    assert_eq!(now.iter().find(|n| n.id == before[5].id).unwrap().state, NodeState::Offline);
}

async fn pagination_over_2500_nodes_returns_each_exactly_once(db: Database) {
    let store = db.open().await;
    let started = Instant::now();
    let mut attached = BTreeSet::new();
    for i in 0..2500 {
        attached.insert(attach(&store, drone("eu", &format!("drone-{i:04}"))).await.id);
    }
    // History several versions deep, so that snapshot reads have to pick among them.
    for id in attached.iter().step_by(5) {
        store.update_node(id, state(NodeState::Unhealthy), UpdateCondition::Always).await.unwrap();
        store.update_node(id, state(NodeState::Ready), UpdateCondition::Always).await.unwrap();
    }
    let writes = started.elapsed();

    let everything = NodeFilter::default();
    let mut page_times = Vec::new();
    let mut seen = Vec::new();
    let first = store.list_nodes(&everything, None, None, 100).await.unwrap();
    let revision = first.revision;
    let mut page = first;
    loop {
        assert!(page.nodes.len() <= 100);
        assert_eq!(page.revision, revision);
        seen.extend(page.nodes.iter().map(|n| n.id.clone()));
        if !page.more {
            break;
        }
        // Writes between pages must not show up in later ones.
        store.update_node(&seen[seen.len() - 1], state(NodeState::Offline), UpdateCondition::Always).await.unwrap();
        let t = Instant::now();
        page = store.list_nodes(&everything, Some(revision), seen.last().map(String::as_str), 100).await.unwrap();
        page_times.push(t.elapsed());
        assert!(page.nodes.iter().all(|n| n.state == NodeState::Ready), "a later page shows the snapshot");
    }
    assert_eq!(seen.len(), 2500);
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), attached, "each node exactly once");
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    page_times.sort();
    let total: std::time::Duration = page_times.iter().sum();
    eprintln!(
        "figure ({}): {} writes took {writes:?}; {} pages of 100 at a snapshot: median {:?}, max {:?}, total {total:?}",
        db.backend(),
        2500 + 1000,
        page_times.len(),
        page_times[page_times.len() / 2],
        page_times.last().unwrap()
    );
}

/// A small fleet spread over every filterable attribute, for the filter scenarios.
async fn fleet(store: &DynStore) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 0..24 {
        let registration = NodeRegistration {
            kind: if i % 4 == 0 { NodeKind::Proxy } else { NodeKind::Drone },
            pool: ["default", "gpu"][i % 2].to_string(),
            labels: BTreeMap::from([
                ("zone".to_string(), ["a", "b", "c"][i % 3].to_string()),
                ("tier".to_string(), if i % 5 == 0 { "gold" } else { "basic" }.to_string()),
            ]),
            ..drone(["eu", "us"][(i / 2) % 2], &format!("n{i:02}"))
        };
        let node = attach(store, registration).await;
        let node = match i % 6 {
            1 => store.update_node(&node.id, state(NodeState::Unhealthy), UpdateCondition::Always).await,
            2 => store.update_node(&node.id, state(NodeState::Offline), UpdateCondition::Always).await,
            3 => {
                let drain = NodeUpdate { draining: Some(true), ..Default::default() };
                store.update_node(&node.id, drain, UpdateCondition::Always).await
            }
            _ => Ok(Some(node)),
        };
        nodes.push(node.unwrap().unwrap());
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    nodes
}

/// Lists with `filter` in pages of 3 and compares with the fleet filtered in Rust.
async fn assert_filter_lists_exactly_the_matches(db: Database, filter: NodeFilter) {
    let store = db.open().await;
    let fleet = fleet(&store).await;
    let expected: Vec<Node> = fleet.iter().filter(|n| filter.matches(n)).cloned().collect();
    assert!(!expected.is_empty() && expected.len() < fleet.len(), "the filter must select some of the fleet");
    let (listed, _) = list_all(&store, &filter, None, 3).await;
    assert_eq!(ids(&listed), ids(&expected), "{filter:?}");
}

async fn list_filters_by_kind(db: Database) {
    assert_filter_lists_exactly_the_matches(db, NodeFilter { kinds: vec![NodeKind::Proxy], ..Default::default() }).await
}

async fn list_filters_by_state(db: Database) {
    let filter = NodeFilter { states: vec![NodeState::Draining, NodeState::Offline], ..Default::default() };
    assert_filter_lists_exactly_the_matches(db, filter).await
}

async fn list_filters_by_cluster(db: Database) {
    assert_filter_lists_exactly_the_matches(db, NodeFilter { cluster: Some("us".into()), ..Default::default() }).await
}

async fn list_filters_by_pool(db: Database) {
    let filter = NodeFilter { pool: Some("gpu".into()), kinds: vec![NodeKind::Drone], ..Default::default() };
    assert_filter_lists_exactly_the_matches(db, filter).await
}

async fn list_filters_by_labels_across_sparse_pages(db: Database) {
    let store = db.open().await;
    // 1,200 nodes of which every 300th is gold: each page has to read past a batch of misses.
    let mut gold = Vec::new();
    for i in 0..1200 {
        let tier = if i % 300 == 7 { "gold" } else { "basic" };
        let registration = NodeRegistration {
            labels: BTreeMap::from([("tier".into(), tier.into())]),
            ..drone("eu", &format!("n{i:04}"))
        };
        let node = attach(&store, registration).await;
        if tier == "gold" {
            gold.push(node.id);
        }
    }
    let filter = NodeFilter { labels: BTreeMap::from([("tier".into(), "gold".into())]), ..Default::default() };
    let first = store.list_nodes(&filter, None, None, 2).await.unwrap();
    assert_eq!(ids(&first.nodes), gold[..2]);
    assert!(first.more);
    let second = store.list_nodes(&filter, Some(first.revision), Some(&gold[1]), 2).await.unwrap();
    assert_eq!(ids(&second.nodes), gold[2..]);
    assert!(!second.more, "`more` is exact: nothing matches after the last gold node");

    let none = NodeFilter { labels: BTreeMap::from([("tier".into(), "platinum".into())]), ..Default::default() };
    let empty = store.list_nodes(&none, None, None, 10).await.unwrap();
    assert!(empty.nodes.is_empty() && !empty.more);
    // Labels combine with the filters applied in SQL.
    let (both, _) = list_all(&store, &NodeFilter { cluster: Some("us".into()), ..filter.clone() }, None, 10).await;
    assert!(both.is_empty());
}

async fn update_with_held_by_condition_skips_foreign_nodes(db: Database) {
    let store = db.open().await;
    let node = attach(&store, drone("eu", "d1")).await;
    let before = store.current_revision().await.unwrap();
    let foreign = UpdateCondition::HeldBy("controller-b".into());
    assert_eq!(store.update_node(&node.id, state(NodeState::Offline), foreign.clone()).await.unwrap(), None);
    assert_eq!(store.remove_node(&node.id, foreign).await.unwrap(), None);
    assert_eq!(store.current_revision().await.unwrap(), before, "a refused update writes nothing");

    let held = UpdateCondition::HeldBy("controller-a".into());
    let updated = store.update_node(&node.id, state(NodeState::Offline), held).await.unwrap().unwrap();
    assert_eq!(updated.state, NodeState::Offline);
    assert_eq!(updated.revision, before + 1);
    assert_eq!(
        store.update_node("no-such-node", state(NodeState::Offline), UpdateCondition::Always).await.unwrap(),
        None
    );
    assert_eq!(store.get_node("no-such-node").await.unwrap(), None);
}

async fn noop_update_writes_no_revision(db: Database) {
    let store = db.open().await;
    let node = attach(&store, drone("eu", "d1")).await;
    let same = NodeUpdate {
        state: Some(NodeState::Ready),
        controller_id: Some("controller-a".into()),
        last_heartbeat_at: Some(t0()),
        resources: Some(node.resources),
        ..Default::default()
    };
    assert_eq!(store.update_node(&node.id, same, UpdateCondition::Always).await.unwrap(), Some(node.clone()));
    assert_eq!(
        store.update_node(&node.id, NodeUpdate::default(), UpdateCondition::Always).await.unwrap(),
        Some(node.clone())
    );
    // Re-attaching exactly as before changes nothing either.
    assert_eq!(attach(&store, drone("eu", "d1")).await, node);
    assert_eq!(store.current_revision().await.unwrap(), node.revision);
    assert_eq!(store.node_changes_since(0, 10).await.unwrap().len(), 1);
}

async fn a_batch_update_writes_each_changed_node_as_its_own_revision_in_one_commit(db: Database) {
    let store = db.open().await;
    let a = attach(&store, drone("eu", "a")).await;
    let b = attach(&store, drone("eu", "b")).await;
    let foreign = store.attach_node(drone("eu", "f"), "controller-b", t0()).await.unwrap();
    let c = attach(&store, drone("eu", "c")).await;
    let before = store.current_revision().await.unwrap();
    let mut committed = store.subscribe();
    committed.mark_unchanged();

    let later = t0() + Duration::seconds(30);
    let refresh = NodeUpdate { last_heartbeat_at: Some(later), backend_count: Some(3), ..Default::default() };
    let answers = store
        .update_nodes(
            vec![
                (c.id.clone(), refresh.clone()),
                (foreign.id.clone(), refresh.clone()),
                (a.id.clone(), NodeUpdate::default()),
                ("no-such-node".to_string(), refresh.clone()),
                (b.id.clone(), state(NodeState::Unhealthy)),
            ],
            UpdateCondition::HeldBy("controller-a".into()),
        )
        .await
        .unwrap();

    // One answer per update, as update_node would give it.
    assert_eq!(answers.len(), 5);
    let c_after = answers[0].clone().expect("held here: written");
    assert_eq!((c_after.last_heartbeat_at, c_after.backend_count, c_after.revision), (later, 3, before + 1));
    assert_eq!(answers[1], None, "held by another controller: skipped");
    assert_eq!(answers[2], Some(a.clone()), "nothing to change: the node as it is, no revision");
    assert_eq!(answers[3], None, "no such node");
    let b_after = answers[4].clone().expect("written");
    assert_eq!((b_after.state, b_after.revision), (NodeState::Unhealthy, before + 2));

    // Two changes, consecutive revisions in the order given, announced once at the last.
    let changes = store.node_changes_since(before, 10).await.unwrap();
    let written: Vec<_> = changes.iter().map(|c| (c.revision, c.node.id.clone(), c.kind)).collect();
    assert_eq!(
        written,
        [(before + 1, c.id.clone(), ChangeKind::Modified), (before + 2, b.id.clone(), ChangeKind::Modified)]
    );
    assert_eq!(store.current_revision().await.unwrap(), before + 2);
    assert!(committed.has_changed().unwrap());
    assert_eq!(*committed.borrow_and_update(), before + 2);
    assert_eq!(store.get_node(&foreign.id).await.unwrap(), Some(foreign), "untouched");
    assert_eq!(store.get_node(&c.id).await.unwrap(), Some(c_after));

    // A batch in which nothing changes takes no revision.
    let again = store.update_nodes(vec![(a.id.clone(), NodeUpdate::default())], UpdateCondition::Always).await.unwrap();
    assert_eq!(again, [Some(a)]);
    assert_eq!(store.current_revision().await.unwrap(), before + 2);
    assert_eq!(store.update_nodes(Vec::new(), UpdateCondition::Always).await.unwrap(), []);
}

async fn compaction_keeps_latest_versions_and_reports_compacted_reads(db: Database) {
    let store = db.open().await;
    let a = attach(&store, drone("eu", "a")).await; // 1
    let b = attach(&store, drone("eu", "b")).await; // 2
    let gone = attach(&store, drone("eu", "gone")).await; // 3
    for i in 0..3u32 {
        let load = NodeUpdate { backend_count: Some(i + 1), ..Default::default() };
        store.update_node(&a.id, load, UpdateCondition::Always).await.unwrap(); // 4, 5, 6
    }
    store.remove_node(&gone.id, UpdateCondition::Always).await.unwrap(); // 7
    store.update_node(&b.id, state(NodeState::Unhealthy), UpdateCondition::Always).await.unwrap(); // 8
    let everything = NodeFilter::default();
    let (at_6, _) = list_all(&store, &everything, Some(6), 10).await;
    let (at_7, _) = list_all(&store, &everything, Some(7), 10).await;
    let later = store.node_changes_since(7, 10).await.unwrap();

    // Keep the newest 1 revision: compacts up to 7, so reads at 7 and replays after 7 stay exact.
    let far_future = t0() + Duration::days(365 * 10);
    let retention = Retention { min_revisions: 1, max_age: Duration::zero() };
    assert_eq!(store.compact(retention, far_future).await.unwrap(), 7);
    assert_eq!(store.compacted_revision().await.unwrap(), 7);
    assert_eq!(list_all(&store, &everything, Some(7), 10).await.0, at_7);
    assert_eq!(list_all(&store, &everything, Some(7), 1).await.0, at_7);
    assert_eq!(store.node_changes_since(7, 10).await.unwrap(), later);
    assert_ne!(at_6, at_7);
    match store.list_nodes(&everything, Some(6), None, 10).await {
        Err(StoreError::Compacted { requested: 6, oldest: 7 }) => {}
        other => panic!("expected Compacted{{6, 7}}, got {other:?}"),
    }
    match store.node_changes_since(3, 10).await {
        Err(StoreError::Compacted { requested: 3, oldest: 7 }) => {}
        other => panic!("expected Compacted{{3, 7}}, got {other:?}"),
    }
    // The removed node is not resurrected, and the remaining nodes read as before.
    assert_eq!(store.get_node(&gone.id).await.unwrap(), None);
    assert_eq!(store.get_node(&a.id).await.unwrap().unwrap().backend_count, 3);

    // Age bounds compaction too: nothing is old enough at t0, so it does not move.
    let young = Retention { min_revisions: 0, max_age: Duration::days(365 * 100) };
    assert_eq!(store.compact(young, Utc::now()).await.unwrap(), 7);
    // Compacting everything still keeps the present readable.
    let all = Retention { min_revisions: 0, max_age: Duration::zero() };
    assert_eq!(store.compact(all, far_future).await.unwrap(), 8);
    let (now, _) = list_all(&store, &everything, None, 10).await;
    assert_eq!(ids(&now), {
        let mut expected = vec![a.id.clone(), b.id.clone()];
        expected.sort();
        expected
    });
    assert_eq!(store.node_changes_since(8, 10).await.unwrap(), vec![]);
    let c = attach(&store, drone("eu", "gone")).await;
    assert_ne!(c.id, gone.id);
    assert_eq!(c.revision, 9, "revisions keep counting after compaction");
}

async fn changes_since_replays_in_order(db: Database) {
    let store = db.open().await;
    let mut expected = Vec::new();
    for i in 0..20 {
        // Re-attaches of the same few names, each a change because time moves on.
        let now = t0() + Duration::seconds(i);
        let node = store.attach_node(drone("eu", &format!("d{}", i % 7)), "controller-a", now).await.unwrap();
        expected.push((node.revision, node.id.clone(), node.name.clone()));
    }
    // Read in small batches, resuming after the last revision seen, as a watcher does.
    let mut replayed = Vec::new();
    let mut after = 0;
    loop {
        let batch = store.node_changes_since(after, 6).await.unwrap();
        assert!(batch.len() <= 6);
        let Some(last) = batch.last() else { break };
        after = last.revision;
        replayed.extend(batch.into_iter().map(|c| (c.revision, c.node.id, c.node.name)));
    }
    assert_eq!(replayed, expected);
    let from_middle = store.node_changes_since(13, 100).await.unwrap();
    assert_eq!(from_middle.iter().map(|c| c.revision).collect::<Vec<_>>(), (14..=20).collect::<Vec<_>>());
    assert_eq!(store.node_changes_since(20, 100).await.unwrap(), vec![]);
    assert_eq!(store.node_changes_since(1000, 100).await.unwrap(), vec![]);
}

async fn draining_survives_reattach(db: Database) {
    let store = db.open().await;
    let node = attach(&store, drone("eu", "d1")).await;
    let deadline = t0() + Duration::minutes(10);
    let drain = NodeUpdate { draining: Some(true), drain_deadline: Some(Some(deadline)), ..Default::default() };
    let drained = store.update_node(&node.id, drain, UpdateCondition::Always).await.unwrap().unwrap();
    assert_eq!(drained.state, NodeState::Draining);
    let offline =
        NodeUpdate { state: Some(NodeState::Offline), controller_id: Some(String::new()), ..Default::default() };
    store.update_node(&node.id, offline, UpdateCondition::Always).await.unwrap().unwrap();

    let back = attach(&store, drone("eu", "d1")).await;
    assert_eq!(back.id, node.id);
    assert_eq!(back.state, NodeState::Draining);
    assert!(back.draining);
    assert_eq!(back.drain_deadline, Some(deadline));
    let listed = store
        .list_nodes(&NodeFilter { states: vec![NodeState::Draining], ..Default::default() }, None, None, 10)
        .await
        .unwrap();
    assert_eq!(ids(&listed.nodes), std::slice::from_ref(&node.id));
}

async fn undrain_clears_the_drain_and_its_deadline_once(db: Database) {
    let store = db.open().await;
    let node = attach(&store, drone("eu", "d1")).await;
    let deadline = t0() + Duration::minutes(10);
    let drained =
        store.update_node(&node.id, NodeUpdate::drain(Some(deadline)), UpdateCondition::Always).await.unwrap().unwrap();
    assert_eq!((drained.state, drained.draining, drained.drain_deadline), (NodeState::Draining, true, Some(deadline)));

    let undrained = store.update_node(&node.id, NodeUpdate::undrain(), UpdateCondition::Always).await.unwrap().unwrap();
    assert_eq!((undrained.state, undrained.draining, undrained.drain_deadline), (NodeState::Ready, false, None));
    assert_eq!(undrained.revision, drained.revision + 1, "an undrain is one revision");
    let changes = store.node_changes_since(drained.revision, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!((changes[0].kind, &changes[0].node), (ChangeKind::Modified, &undrained));

    // Again: nothing to change, nothing written.
    let again = store.update_node(&node.id, NodeUpdate::undrain(), UpdateCondition::Always).await.unwrap();
    assert_eq!(again, Some(undrained.clone()));
    assert_eq!(store.current_revision().await.unwrap(), undrained.revision);

    // A drained drone that is UNHEALTHY stays UNHEALTHY when undrained, and comes back READY.
    store.update_node(&node.id, NodeUpdate::drain(None), UpdateCondition::Always).await.unwrap().unwrap();
    store.update_node(&node.id, state(NodeState::Unhealthy), UpdateCondition::Always).await.unwrap().unwrap();
    let sick = store.update_node(&node.id, NodeUpdate::undrain(), UpdateCondition::Always).await.unwrap().unwrap();
    assert_eq!((sick.state, sick.draining), (NodeState::Unhealthy, false));
    let well = store.update_node(&node.id, state(NodeState::Ready), UpdateCondition::Always).await.unwrap().unwrap();
    assert_eq!(well.state, NodeState::Ready);
    // And an undrained drone that reattaches is READY, not DRAINING.
    let offline = NodeUpdate { state: Some(NodeState::Offline), ..Default::default() };
    store.update_node(&node.id, offline, UpdateCondition::Always).await.unwrap().unwrap();
    assert_eq!(attach(&store, drone("eu", "d1")).await.state, NodeState::Ready);
}

async fn drone_census_counts_the_pools_drones_by_their_current_state(db: Database) {
    let store = db.open().await;
    assert_eq!(store.drone_census("eu", "default").await.unwrap(), DroneCensus::default());
    let mut drones = Vec::new();
    for name in ["ready", "drained", "sick", "gone", "gone-too"] {
        drones.push(attach(&store, drone("eu", name)).await);
    }
    let (drained, sick) = (&drones[1], &drones[2]);
    store.update_node(&drained.id, NodeUpdate::drain(None), UpdateCondition::Always).await.unwrap().unwrap();
    store.update_node(&sick.id, state(NodeState::Unhealthy), UpdateCondition::Always).await.unwrap().unwrap();
    for gone in &drones[3..] {
        store.update_node(&gone.id, state(NodeState::Offline), UpdateCondition::Always).await.unwrap().unwrap();
    }
    // Not counted: another cluster, another pool, a proxy, a removed drone.
    attach(&store, drone("us", "elsewhere")).await;
    attach(&store, NodeRegistration { pool: "gpu".into(), ..drone("eu", "gpu-1") }).await;
    attach(&store, NodeRegistration { kind: NodeKind::Proxy, ..drone("eu", "edge") }).await;
    let removed = attach(&store, drone("eu", "removed")).await;
    store.remove_node(&removed.id, UpdateCondition::Always).await.unwrap().unwrap();

    let census = store.drone_census("eu", "default").await.unwrap();
    assert_eq!(census, DroneCensus { ready: 1, draining: 1, unhealthy: 1, offline: 2 });
    assert_eq!(store.drone_census("eu", "gpu").await.unwrap(), DroneCensus { ready: 1, ..DroneCensus::default() });

    // Current state only: the drained drone undrained, the sick one moved to another pool.
    store.update_node(&drained.id, NodeUpdate::undrain(), UpdateCondition::Always).await.unwrap().unwrap();
    attach(&store, NodeRegistration { pool: "gpu".into(), ..drone("eu", "sick") }).await;
    let census = store.drone_census("eu", "default").await.unwrap();
    assert_eq!(census, DroneCensus { ready: 2, draining: 0, unhealthy: 0, offline: 2 });
}

async fn removed_node_frees_its_name_and_stays_in_older_snapshots(db: Database) {
    let store = db.open().await;
    let node = attach(&store, drone("eu", "d1")).await;
    let before = store.current_revision().await.unwrap();
    let removed = store.remove_node(&node.id, UpdateCondition::Always).await.unwrap().unwrap();
    assert_eq!(removed.revision, before + 1);
    assert_eq!(store.get_node(&node.id).await.unwrap(), None);
    assert_eq!(store.remove_node(&node.id, UpdateCondition::Always).await.unwrap(), None);
    let everything = NodeFilter::default();
    assert!(store.list_nodes(&everything, None, None, 10).await.unwrap().nodes.is_empty());
    assert_eq!(
        ids(&store.list_nodes(&everything, Some(before), None, 10).await.unwrap().nodes),
        std::slice::from_ref(&node.id)
    );

    let reborn = attach(&store, drone("eu", "d1")).await;
    assert_ne!(reborn.id, node.id);
    let last = store.node_changes_since(before, 10).await.unwrap();
    assert_eq!(last.iter().map(|c| c.kind).collect::<Vec<_>>(), [ChangeKind::Removed, ChangeKind::Added]);
}

async fn reads_at_a_future_revision_are_refused(db: Database) {
    let store = db.open().await;
    attach(&store, drone("eu", "d1")).await;
    match store.list_nodes(&NodeFilter::default(), Some(2), None, 10).await {
        Err(StoreError::FutureRevision { requested: 2, current: 1 }) => {}
        other => panic!("expected FutureRevision, got {other:?}"),
    }
}

async fn concurrent_writers_get_gapless_revisions(db: Database) {
    const TASKS: usize = 8;
    const UPDATES: usize = 100;
    // Two store instances with their own pools stand for two controllers.
    let stores = [db.open().await, db.open().await];
    let mut ids = Vec::new();
    for t in 0..TASKS {
        ids.push(attach(&stores[t % 2], drone("eu", &format!("d{t}"))).await.id);
    }
    let start_revision = stores[0].current_revision().await.unwrap();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (t, id) in ids.into_iter().enumerate() {
        let store = stores[t % 2].clone();
        tasks.spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..UPDATES {
                let update = NodeUpdate { backend_count: Some(i as u32 + 1), ..Default::default() };
                revisions
                    .push(store.update_node(&id, update, UpdateCondition::Always).await.unwrap().unwrap().revision);
            }
            assert!(revisions.windows(2).all(|w| w[0] < w[1]), "one writer's revisions increase");
            revisions
        });
    }
    let mut all: Vec<Revision> = tasks.join_all().await.into_iter().flatten().collect();
    let elapsed = started.elapsed();
    let total = (TASKS * UPDATES) as u64;
    eprintln!(
        "figure ({}): {total} concurrent updates through 2 stores in {elapsed:?} ({:.0} writes/s)",
        db.backend(),
        total as f64 / elapsed.as_secs_f64()
    );
    all.sort();
    assert_eq!(all, (start_revision + 1..=start_revision + total).collect::<Vec<_>>(), "each revision exactly once");

    // Replayed in batches as a watcher would, and in one go.
    let mut replayed = Vec::new();
    loop {
        let batch = stores[1].node_changes_since(replayed.last().copied().unwrap_or(0), 250).await.unwrap();
        if batch.is_empty() {
            break;
        }
        replayed.extend(batch.iter().map(|c| c.revision));
    }
    let changes = stores[1].node_changes_since(0, 10_000).await.unwrap();
    let revisions: Vec<Revision> = changes.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, (1..=start_revision + total).collect::<Vec<_>>(), "the log has no gaps, in order");
    assert_eq!(replayed, revisions);
    // Per node, the replayed versions count up in order: commit order is revision order.
    let mut last_count: BTreeMap<String, u32> = BTreeMap::new();
    for change in &changes {
        let previous = last_count.insert(change.node.id.clone(), change.node.backend_count).unwrap_or(0);
        assert!(change.kind == ChangeKind::Added || change.node.backend_count == previous + 1);
    }
}

async fn concurrent_attaches_of_one_name_yield_one_node(db: Database) {
    let stores = [db.open().await, db.open().await];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let store = stores[i % 2].clone();
        tasks.spawn(async move {
            let controller = format!("controller-{i}");
            store.attach_node(drone("eu", "contested"), &controller, t0()).await.unwrap().id
        });
    }
    let ids: BTreeSet<String> = tasks.join_all().await.into_iter().collect();
    assert_eq!(ids.len(), 1, "every attach found the same node");
    let changes = stores[0].node_changes_since(0, 100).await.unwrap();
    assert_eq!(changes.iter().filter(|c| c.kind == ChangeKind::Added).count(), 1);
}

async fn shared_secret_is_stable_across_store_instances(db: Database) {
    let (one, two) = (db.open().await, db.open().await);
    let (a, b) = tokio::join!(one.shared_secret("page-tokens"), two.shared_secret("page-tokens"));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len(), 32);
    assert_eq!(a, b, "racing creators agree");
    assert_eq!(db.open().await.shared_secret("page-tokens").await.unwrap(), a, "stable across reopen");
    assert_ne!(one.shared_secret("other").await.unwrap(), a, "each name has its own secret");
    assert_eq!(
        store::open(&db.url).await.unwrap().current_revision().await.unwrap(),
        0,
        "secrets are not node changes"
    );
}
