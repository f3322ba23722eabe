//! Targeted wake-ups (docs/design/drone-link.md#wake-ups): a commit wakes only the drone sessions
//! it gave actions to, on one controller and across controllers on PostgreSQL; a storm of
//! attaches is admitted without refusing any. Real controllers on port 0, drones played by hand
//! over the real `DroneService.Attach` stream.

use hangar::v1::{self, backend_service_client::BackendServiceClient, drone_action::Action};
use hangar_server::controller::{ControllerConfig, RunningController};
use hangar_server::store::{self, DynStore};
use hangar_server::testing::PgCluster;
use hangar_testkit::{check, eventually};
use hangar_tests::{ManualDrone, TestCluster, drone_hello, start_controller_with, test_config};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// Test timings, but with the poll floor far beyond the test: any read a session makes here was
/// caused by a wake-up.
fn no_poll() -> ControllerConfig {
    let mut config = test_config();
    config.liveness.session_poll = Duration::from_secs(600);
    config
}

fn spawn_in(pool: &str) -> v1::ConnectRequest {
    v1::ConnectRequest {
        key: None,
        spawn_config: Some(v1::SpawnConfig {
            executable: Some(v1::Executable { image: "hangar/test-backend:1".into(), ..Default::default() }),
            pool: pool.into(),
            ..Default::default()
        }),
        user: "alice".into(),
        auth: Default::default(),
    }
}

/// A drone in `pool` that heartbeats in the background until the handle is aborted.
async fn drone(url: &str, name: &str, pool: &str) -> (ManualDrone, tokio::task::JoinHandle<()>) {
    let mut hello = drone_hello(name);
    hello.pool = pool.into();
    hello.backend_capacity = 100;
    let drone = ManualDrone::attach(url, hello).await.expect("attach");
    let beat = drone.keep_alive(Duration::from_millis(50));
    (drone, beat)
}

fn reads(controller: &RunningController, node_id: &str) -> u64 {
    controller.registry().session_store_reads(node_id).expect("attached here")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_for_drone_a_cause_no_store_read_in_drone_b_session() {
    let cluster = TestCluster::sqlite_with(no_poll()).await;
    let mut client = BackendServiceClient::new(cluster.channel().await);
    let (mut a, a_beat) = drone(&cluster.url(), "drone-a", "a").await;
    let (b, b_beat) = drone(&cluster.url(), "drone-b", "b").await;
    let controller = &cluster.controller;
    // Each session's attach reads its actions once.
    let (a_before, b_before) = (reads(controller, &a.node_id), reads(controller, &b.node_id));
    assert_eq!((a_before, b_before), (1, 1));

    // Spawns and terminations for A, beside the liveness refreshes of both nodes (fast timings:
    // a node commit every few hundred milliseconds), which used to wake every session as well.
    const SPAWNS: usize = 10;
    let mut ids = Vec::new();
    for _ in 0..SPAWNS {
        let response = client.connect(spawn_in("a")).await.expect("connect").into_inner();
        assert_eq!(response.backend.as_ref().unwrap().drone_id, a.node_id);
        ids.push(response.backend_id);
        let action = a.next_action(WAIT).await;
        assert!(matches!(action.action, Some(Action::Spawn(_))));
        a.ack_action(&action.action_id).await;
    }
    // A Spawn placed by this controller comes with its wake-up: A's session sent them all
    // without a read (docs/design/drone-link.md#wake-ups). A Terminate is read.
    assert_eq!(reads(controller, &a.node_id), a_before, "A's session read the store for Spawns it was handed");
    for id in &ids {
        let request = v1::TerminateBackendRequest { id: id.clone(), hard: true };
        client.terminate_backend(request).await.expect("terminate");
        let action = a.next_action(WAIT).await;
        assert!(matches!(action.action, Some(Action::Terminate(_))));
        a.ack_action(&action.action_id).await;
    }
    // Liveness refreshes commit after the last action (every 400 ms): commits that give B no
    // action, which must not wake B's session. Wait until two of them wrote B's heartbeat, the
    // first of them a refresh interval before the check below.
    let heartbeat = async || cluster.store.get_node(&b.node_id).await.unwrap().expect("B stored").last_heartbeat_at;
    let mut stored = vec![heartbeat().await];
    eventually(WAIT, "two liveness refreshes of drone B's heartbeat", async || {
        let now = heartbeat().await;
        if Some(&now) != stored.last() {
            stored.push(now);
        }
        check(stored.len(), |seen| *seen >= 3)
    })
    .await;

    let (a_after, b_after) = (reads(controller, &a.node_id), reads(controller, &b.node_id));
    eprintln!("store reads for actions: drone A {a_before} -> {a_after}, drone B {b_before} -> {b_after}");
    assert!(a_after > a_before, "A's session read its Terminates when they came");
    assert!(a_after <= a_before + SPAWNS as u64, "one read per Terminate for A at most: {a_after}");
    assert_eq!(b_after, b_before, "B's session read the store for commits that were not B's");
    a_beat.abort();
    b_beat.abort();
    cluster.shutdown().await;
}

async fn open(url: &str) -> DynStore {
    store::open(url).await.expect("open store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_committed_on_one_controller_reaches_a_drone_attached_to_another_promptly() {
    hangar_tests::init_logging();
    let pg = PgCluster::shared().await.unwrap();
    let url = pg.create_database().await.unwrap();
    let one = start_controller_with(open(&url).await, no_poll()).await;
    let two = start_controller_with(open(&url).await, no_poll()).await;
    let (mut a, a_beat) = drone(&two.url(), "drone-a", "a").await;
    let (b, b_beat) = drone(&two.url(), "drone-b", "b").await;
    let b_before = reads(&two, &b.node_id);
    let mut client = BackendServiceClient::new(hangar_tests::channel(&one.url()).await);
    // Connect answers once the commit is made: the drone, on the other controller, gets its
    // action from the NOTIFY that names it, well inside the 5 s poll floor (here 600 s).
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let response = client.connect(spawn_in("a")).await.expect("connect").into_inner();
        let action = a.next_action(WAIT).await;
        let took = started.elapsed();
        slowest = slowest.max(took);
        assert_eq!(action.backend_id, response.backend_id);
        a.ack_action(&action.action_id).await;
    }
    eprintln!("slowest connect-to-action across controllers: {slowest:?}");
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    assert_eq!(reads(&two, &b.node_id), b_before, "B was not woken by A's actions");

    // Spawns placed by A's own controller come with their wake-ups: no read, and the NOTIFY of
    // those commits, which comes back to that controller's listener, wakes nobody there. One
    // more Spawn from the other controller, whose NOTIFY comes after theirs, is then A's only
    // read.
    let a_before = reads(&two, &a.node_id);
    let mut local = BackendServiceClient::new(hangar_tests::channel(&two.url()).await);
    for _ in 0..5 {
        let response = local.connect(spawn_in("a")).await.expect("connect").into_inner();
        let action = a.next_action(WAIT).await;
        assert_eq!(action.backend_id, response.backend_id);
        a.ack_action(&action.action_id).await;
    }
    let response = client.connect(spawn_in("a")).await.expect("connect").into_inner();
    assert_eq!(a.next_action(WAIT).await.backend_id, response.backend_id);
    assert_eq!(reads(&two, &a.node_id), a_before + 1, "one read, for the Spawn from the other controller");
    a_beat.abort();
    b_beat.abort();
    one.shutdown().await.unwrap();
    two.shutdown().await.unwrap();
}

/// Drones attaching at once: all admitted, none refused or timed out. Returns them attached.
async fn attach_storm(url: &str, drones: usize) -> Vec<ManualDrone> {
    let started = Instant::now();
    let attaches = (0..drones).map(|i| {
        let url = url.to_string();
        async move {
            let mut hello = drone_hello(&format!("storm-{i}"));
            hello.pool = "storm".into();
            ManualDrone::attach(&url, hello).await
        }
    });
    let results = futures::future::join_all(attaches).await;
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    eprintln!("{drones} attaches at once: {} refused, all answered in {:?}", refused.len(), started.elapsed());
    assert!(refused.is_empty(), "{} of {drones} refused, first: {:?}", refused.len(), refused.first());
    results.into_iter().map(Result::unwrap).collect()
}

const STORM: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_storm_on_sqlite_is_admitted_without_refusing_any() {
    let mut config = no_poll();
    // Slow-start heartbeats are not under test: nothing turns unhealthy during the storm.
    config.liveness = hangar_server::controller::LivenessConfig::default();
    let cluster = TestCluster::sqlite_with(config).await;
    let _drones = attach_storm(&cluster.url(), STORM).await;
    eventually(WAIT, "every storm drone attached", async || {
        check(cluster.controller.registry().attached_count(), |n| *n == STORM)
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_storm_on_postgres_is_admitted_without_exhausting_the_pool() {
    hangar_tests::init_logging();
    let pg = PgCluster::shared().await.unwrap();
    let url = pg.create_database().await.unwrap();
    let config = ControllerConfig { liveness: Default::default(), ..no_poll() };
    let controller = start_controller_with(open(&url).await, config).await;
    let _drones = attach_storm(&controller.url(), STORM).await;
    eventually(WAIT, "every storm drone attached", async || {
        check(controller.registry().attached_count(), |n| *n == STORM)
    })
    .await;
    controller.shutdown().await.unwrap();
}
