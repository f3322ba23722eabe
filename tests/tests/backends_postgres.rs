//! Backends across several controllers on one real PostgreSQL: one live backend per key under
//! concurrent Connects on every controller, and actions reaching a drone through whichever
//! controller holds its stream.

use hangar::v1::{self, backend_service_client::BackendServiceClient, drone_action::Action};
use hangar_server::controller::RunningController;
use hangar_server::store;
use hangar_server::testing::PgCluster;
use hangar_tests::{ManualDrone, channel, drone_hello, start_controller_with, test_config};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

async fn two_controllers() -> (RunningController, RunningController) {
    hangar_tests::init_logging();
    let pg = PgCluster::shared().await.expect("PostgreSQL test cluster");
    let url = pg.create_database().await.expect("database");
    let a = start_controller_with(store::open(&url).await.unwrap(), test_config()).await;
    let b = start_controller_with(store::open(&url).await.unwrap(), test_config()).await;
    (a, b)
}

fn request(name: &str, tag: &str) -> v1::ConnectRequest {
    v1::ConnectRequest {
        key: Some(v1::BackendKey { namespace: "docs".into(), name: name.into(), tag: tag.into() }),
        spawn_config: Some(v1::SpawnConfig {
            executable: Some(v1::Executable { image: "hangar/test-backend:1".into(), ..Default::default() }),
            ..Default::default()
        }),
        user: String::new(),
        auth: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_connects_for_one_key_over_two_controllers_yield_one_backend() {
    let (a, b) = two_controllers().await;
    let drone = ManualDrone::attach(&a.url(), drone_hello("d1")).await.unwrap();
    let beat = drone.keep_alive(Duration::from_millis(50));
    let clients =
        [BackendServiceClient::new(channel(&a.url()).await), BackendServiceClient::new(channel(&b.url()).await)];
    let started = Instant::now();
    let calls = (0..50).map(|i| {
        let mut client = clients[i % 2].clone();
        tokio::spawn(async move { client.connect(request("shared", "v1")).await.map(|r| r.into_inner()) })
    });
    let responses: Vec<_> =
        futures::future::join_all(calls).await.into_iter().map(|r| r.unwrap().expect("connect")).collect();
    println!("50 concurrent Connect RPCs over two controllers on PostgreSQL: {:?}", started.elapsed());
    let ids: BTreeSet<_> = responses.iter().map(|r| r.backend_id.clone()).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(responses.iter().filter(|r| r.spawned).count(), 1);
    let tokens: BTreeSet<_> = responses.iter().map(|r| r.token.clone()).collect();
    assert_eq!(tokens.len(), 50, "every caller gets its own token");

    let err = clients[1].clone().connect(request("shared", "v2")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    beat.abort();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminate_on_controller_a_reaches_the_drone_attached_to_controller_b() {
    let (a, b) = two_controllers().await;
    let mut drone = ManualDrone::attach(&b.url(), drone_hello("d1")).await.unwrap();
    let beat = drone.keep_alive(Duration::from_millis(50));
    let mut on_a = BackendServiceClient::new(channel(&a.url()).await);
    // Controller A learns of the drone attached to B through the database, a moment later:
    // until then its Connect answers NO_DRONE_AVAILABLE and places nothing.
    let deadline = Instant::now() + WAIT;
    let id = loop {
        match on_a.connect(request("doc", "")).await {
            Ok(answer) => break answer.into_inner().backend_id,
            Err(status) if status.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("Connect on controller A: {status:?}"),
        }
    };
    let spawn = drone.next_action(WAIT).await;
    assert!(matches!(spawn.action, Some(Action::Spawn(_))));
    drone.ack_action(&spawn.action_id).await;

    let started = Instant::now();
    on_a.terminate_backend(v1::TerminateBackendRequest { id: id.clone(), hard: true }).await.unwrap();
    let terminate = drone.next_action(WAIT).await;
    println!("Terminate on controller A to the action on the drone of controller B: {:?}", started.elapsed());
    assert_eq!(terminate.backend_id, id);
    match terminate.action {
        Some(Action::Terminate(t)) => assert_eq!(t.kind, v1::TerminationKind::Hard as i32),
        other => panic!("{other:?}"),
    }
    beat.abort();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
