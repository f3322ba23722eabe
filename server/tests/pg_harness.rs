//! The PostgreSQL test harness itself: starts, serves a store, survives a restart, cleans up.

use hangar::domain::NodeKind;
use hangar_server::store::{self, NodeRegistration, StoreError};
use hangar_server::testing::PgCluster;
use std::time::Instant;

fn registration(name: &str) -> NodeRegistration {
    NodeRegistration {
        kind: NodeKind::Drone,
        name: name.into(),
        cluster: "eu".into(),
        pool: "default".into(),
        labels: Default::default(),
        version: "1".into(),
        backend_capacity: 1,
        resources: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_serves_a_store_across_a_restart_and_cleans_up() {
    let started = Instant::now();
    let cluster = PgCluster::new().await.unwrap();
    let boot = started.elapsed();
    let t = Instant::now();
    let url = cluster.create_database().await.unwrap();
    let create_database = t.elapsed();
    let store = store::open(&url).await.unwrap();
    let node = store.attach_node(registration("d1"), "c", chrono::Utc::now()).await.unwrap();

    let t = Instant::now();
    cluster.stop().await.unwrap();
    let stop = t.elapsed();
    let t = Instant::now();
    match store.get_node(&node.id).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("a stopped database is Unavailable, got {other:?}"),
    }
    let unavailable = t.elapsed();
    let t = Instant::now();
    cluster.start().await.unwrap();
    let start = t.elapsed();
    // The same store (its pool reconnects) sees the data written before the restart.
    assert_eq!(store.get_node(&node.id).await.unwrap(), Some(node));
    assert_eq!(store.current_revision().await.unwrap(), 1);
    eprintln!(
        "figure: initdb+start {boot:?}, create database {create_database:?}, stop {stop:?}, start {start:?}, \
         store call while stopped failed after {unavailable:?}"
    );

    // The cluster's own directory, not a count of the shared temp directory, which tests in
    // other processes change at the same time.
    let root = cluster.root().to_path_buf();
    assert!(root.is_dir());
    drop(store);
    drop(cluster);
    assert!(!root.exists(), "the cluster's directory {} is removed on drop", root.display());
    assert!(std::net::TcpStream::connect(url.split('@').nth(1).unwrap().split('/').next().unwrap()).is_err());
}
