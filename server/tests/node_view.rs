//! The watch hub's node view: listings served from memory read exactly what the store reads at
//! the same revision, page after page at one revision while nodes change between the pages, on
//! SQLite and on PostgreSQL.

use chrono::Utc;
use hangar::domain::{Node, NodeFilter, NodeKind, NodeResources, NodeState};
use hangar_server::store::{DynStore, NodeRegistration, NodeUpdate, Revision, UpdateCondition};
use hangar_server::testing::TestDatabase;
use hangar_server::watch::{WatchConfig, WatchHub, Watched};
use hangar_testkit::eventually;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn drone(name: &str, pool: &str, zone: &str) -> NodeRegistration {
    NodeRegistration {
        kind: NodeKind::Drone,
        name: name.to_string(),
        cluster: "default".to_string(),
        pool: pool.to_string(),
        labels: [("zone".to_string(), zone.to_string())].into(),
        version: "1.0.0".to_string(),
        backend_capacity: 100,
        resources: NodeResources { cpu_cores: 4, memory_total_bytes: 8 << 30, ..Default::default() },
    }
}

async fn running_hub(store: &DynStore, shutdown: &CancellationToken) -> WatchHub {
    let hub = WatchHub::new(store.clone(), WatchConfig::default(), shutdown.clone()).await.unwrap();
    let (notified, local) = (store.subscribe(), store.local_commits());
    let runner = hub.clone();
    tokio::spawn(async move { runner.run(notified, local).await });
    eventually(Duration::from_secs(10), "the node view seeded", async || hub.lists_from_memory()).await;
    hub
}

/// Every node of `filter` at `at` (`None`: now) through the hub, in pages of `page`, calling
/// `between` after each page; returns the nodes and the listing's revision.
async fn list_through_hub(
    hub: &WatchHub,
    filter: &NodeFilter,
    page: usize,
    mut between: impl AsyncFnMut(),
) -> (Vec<Node>, Revision) {
    let (mut nodes, mut at, mut after) = (Vec::new(), None, None::<String>);
    loop {
        let listing = hub.list_nodes(filter, at, after.as_deref(), page).await.unwrap();
        assert!(at.is_none_or(|at| at == listing.revision), "every page at the first page's revision");
        at = Some(listing.revision);
        for change in &listing.nodes {
            let Watched::Node { node, .. } = &change.object else { panic!("a listing holds nodes") };
            nodes.push(node.clone());
        }
        after = nodes.last().map(|n| n.id.clone());
        between().await;
        if !listing.more {
            return (nodes, at.unwrap());
        }
    }
}

/// The same listing read by the store itself, at `at`.
async fn list_from_store(store: &DynStore, filter: &NodeFilter, at: Revision) -> Vec<Node> {
    let (mut nodes, mut after) = (Vec::new(), None::<String>);
    loop {
        let page = store.list_nodes(filter, Some(at), after.as_deref(), 1000).await.unwrap();
        nodes.extend(page.nodes);
        after = nodes.last().map(|n| n.id.clone());
        if !page.more {
            return nodes;
        }
    }
}

async fn a_listing_from_memory_is_the_stores_listing_at_its_revision_while_nodes_change_between_pages(
    db: TestDatabase,
) {
    let store = db.open().await;
    let mut ids = Vec::new();
    for i in 0..60 {
        let (pool, zone) = (["a", "b"][i % 2], ["x", "y", "z"][i % 3]);
        ids.push(store.attach_node(drone(&format!("d-{i:02}"), pool, zone), "ctl", Utc::now()).await.unwrap().id);
    }
    let name = |i: usize| format!("d-{:02}", i % 60);
    let shutdown = CancellationToken::new();
    let hub = running_hub(&store, &shutdown).await;
    let filters = [
        NodeFilter::default(),
        // Fields a node can leave between the pages: its pool and its state.
        NodeFilter { pool: Some("a".into()), ..NodeFilter::default() },
        NodeFilter { states: vec![NodeState::Ready], ..NodeFilter::default() },
        NodeFilter { labels: [("zone".to_string(), "y".to_string())].into(), ..NodeFilter::default() },
    ];
    let mut step = 0;
    for filter in &filters {
        // Between pages: a node is drained, one turns unhealthy, one re-attaches in another
        // pool and zone, one is removed and a new one joins. None of it may show in this listing.
        let changes = async || {
            step += 1;
            let drain = NodeUpdate::drain(None);
            store.update_node(&ids[(step * 7) % ids.len()], drain, UpdateCondition::Always).await.unwrap();
            let unhealthy = NodeUpdate { state: Some(NodeState::Unhealthy), ..NodeUpdate::default() };
            store.update_node(&ids[(step * 5) % ids.len()], unhealthy, UpdateCondition::Always).await.unwrap();
            store.attach_node(drone(&name(step * 11), "b", "z"), "ctl", Utc::now()).await.unwrap();
            store.remove_node(&ids[(step * 13) % ids.len()], UpdateCondition::Always).await.unwrap();
            store.attach_node(drone(&format!("late-{step}"), "a", "y"), "ctl", Utc::now()).await.unwrap();
        };
        let (listed, at) = list_through_hub(&hub, filter, 7, changes).await;
        assert!(!listed.is_empty(), "{filter:?} matches some nodes");
        assert_eq!(listed, list_from_store(&store, filter, at).await, "{filter:?} at {at}");
        // A new listing sees what changed meanwhile, again exactly as the store does.
        let (now, later) = list_through_hub(&hub, filter, 1000, async || {}).await;
        assert!(later > at, "a new listing starts at the newest revision");
        assert_eq!(now, list_from_store(&store, filter, later).await, "{filter:?} at {later}");
    }
    assert_eq!(hub.store_pages(), 0, "every page was served from the view");
    shutdown.cancel();
}

#[tokio::test]
async fn sqlite_a_listing_from_memory_is_the_stores_listing_at_its_revision_while_nodes_change_between_pages() {
    a_listing_from_memory_is_the_stores_listing_at_its_revision_while_nodes_change_between_pages(
        TestDatabase::sqlite().await,
    )
    .await;
}

#[tokio::test]
async fn postgres_a_listing_from_memory_is_the_stores_listing_at_its_revision_while_nodes_change_between_pages() {
    a_listing_from_memory_is_the_stores_listing_at_its_revision_while_nodes_change_between_pages(
        TestDatabase::postgres().await,
    )
    .await;
}

/// Two hubs on one PostgreSQL database, as two controllers: a commit through the first store
/// is in the next listing on the second hub as soon as the commit returns, from its view.
#[tokio::test]
async fn postgres_a_commit_through_one_store_is_in_the_next_listing_of_another_controllers_hub() {
    let db = TestDatabase::postgres().await;
    let (store_a, store_b) = (db.open().await, db.open().await);
    let shutdown = CancellationToken::new();
    let hub_b = running_hub(&store_b, &shutdown).await;
    for i in 0..20 {
        let node = store_a.attach_node(drone(&format!("d-{i:02}"), "a", "x"), "ctl-a", Utc::now()).await.unwrap();
        let (listed, at) = list_through_hub(&hub_b, &NodeFilter::default(), 1000, async || {}).await;
        assert!(at >= node.revision, "the listing is at or after the commit");
        assert_eq!(listed.len(), i + 1, "every node attached so far");
        assert_eq!(listed.iter().find(|n| n.id == node.id), Some(&node));
        let drained = store_a.update_node(&node.id, NodeUpdate::drain(None), UpdateCondition::Always).await.unwrap();
        let (listed, _) = list_through_hub(&hub_b, &NodeFilter::default(), 1000, async || {}).await;
        assert_eq!(listed.iter().find(|n| n.id == node.id), drained.as_ref(), "the drain shows at once");
    }
    // Almost every page came from the view; a page reads the store only when the hub has not
    // heard of the commit within the wait (a NOTIFY later than that).
    assert!(hub_b.store_pages() <= 2, "{} pages read from the store", hub_b.store_pages());
    shutdown.cancel();
}

/// Placement candidates come from the node view, and a node change this process committed is in
/// the very next list (a Connect right after a DrainNode must not place on the drained drone),
/// with no store read of the nodes.
async fn placement_candidates_come_from_the_view_and_follow_this_processs_commits_at_once(db: TestDatabase) {
    let store = db.open().await;
    let shutdown = CancellationToken::new();
    let hub = running_hub(&store, &shutdown).await;
    let a = store.attach_node(drone("a", "gpu", "z1"), "ctl-a", Utc::now()).await.unwrap();
    let b = store.attach_node(drone("b", "gpu", "z1"), "ctl-a", Utc::now()).await.unwrap();
    store.attach_node(drone("c", "cpu", "z1"), "ctl-a", Utc::now()).await.unwrap();
    let slots = |slots: std::sync::Arc<[hangar_server::store::DroneSlot]>| {
        let mut ids: Vec<String> = slots.iter().map(|s| s.node_id.clone()).collect();
        ids.sort();
        ids
    };
    let mut both = vec![a.id.clone(), b.id.clone()];
    both.sort();
    let first = hub.drone_slots("default", "gpu").await.expect("the view answers");
    assert_eq!(slots(first.clone()), both, "the READY drones of the pool, and only those");
    let again = hub.drone_slots("default", "gpu").await.unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again), "no node changed: the same list, not computed again");

    for _ in 0..20 {
        store.update_node(&a.id, NodeUpdate::drain(None), UpdateCondition::Always).await.unwrap();
        assert_eq!(
            slots(hub.drone_slots("default", "gpu").await.unwrap()),
            vec![b.id.clone()],
            "drained: gone at once"
        );
        store.update_node(&a.id, NodeUpdate::undrain(), UpdateCondition::Always).await.unwrap();
        assert_eq!(slots(hub.drone_slots("default", "gpu").await.unwrap()), both, "undrained: back at once");
    }
    assert_eq!(hub.store_pages(), 0, "no listing fell back to the store");
    shutdown.cancel();
}

#[tokio::test]
async fn sqlite_placement_candidates_come_from_the_view_and_follow_this_processs_commits_at_once() {
    placement_candidates_come_from_the_view_and_follow_this_processs_commits_at_once(TestDatabase::sqlite().await).await
}

#[tokio::test]
async fn postgres_placement_candidates_come_from_the_view_and_follow_this_processs_commits_at_once() {
    placement_candidates_come_from_the_view_and_follow_this_processs_commits_at_once(TestDatabase::postgres().await)
        .await
}
