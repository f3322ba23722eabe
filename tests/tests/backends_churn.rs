//! Backends that come and go (docs/design/backends-and-leases.md#scheduling): a drone's capacity is
//! counted from the backends it still runs, so a backend asked to end holds its slot only until
//! its drone reports it TERMINATED. Callers looping Connect (a fresh key) → TerminateBackend on one
//! drone of capacity N, with far fewer than N backends meant to be live at any time and the whole
//! capacity turned over once a second, must never be refused. A real controller (SQLite) and an
//! in-process drone on the mock runtime. (Unpaced, the loop outruns the drone's terminations: that
//! is the churn benchmark's open figure, see BENCHMARKS.md.)

use hangar::domain::BackendState;
use hangar_client::{ClientError, ConnectRequest, HangarClient, SpawnSpec};
use hangar_executor::drone::{self, DroneConfig};
use hangar_executor::runtime::mock::MockRuntime;
use hangar_server::controller::ControllerConfig;
use hangar_server::limits::LimitsConfig;
use hangar_testkit::eventually;
use hangar_tests::TestCluster;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Slots on the drone.
const CAPACITY: u32 = 24;
/// Callers, each with at most one backend meant to be live: 4 of 24 slots.
const CALLERS: usize = 4;
/// Cycles per caller: 5 times the capacity in all, so terminated backends must free their slots.
const CYCLES: usize = 30;
/// Each caller's cycle takes at least this long: together the callers turn the drone's whole
/// capacity over once a second, the ratio of the churn benchmark's target (1,000 cycles a second
/// on a drone of 1,000). A backend asked to end must then free its slot within about 0.8 s.
const CYCLE: Duration = Duration::from_millis(1000 * CALLERS as u64 / CAPACITY as u64);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connect_terminate_loop_turning_a_drones_capacity_over_each_second_is_never_refused() {
    // The test's callers are one client: the per-caller rate limit is not under test.
    let config = ControllerConfig {
        limits: LimitsConfig { rate_per_second: 100_000, burst: 100_000, ..LimitsConfig::default() },
        ..ControllerConfig::default()
    };
    let cluster = TestCluster::sqlite_with(config).await;
    let client = HangarClient::connect(&cluster.url()).await.unwrap();
    let mut drone_config = DroneConfig::new(vec![cluster.url()], "churn-drone".to_string());
    drone_config.runtime = Some(Arc::new(MockRuntime::new()));
    drone_config.backend_capacity = CAPACITY;
    let drone = drone::spawn(drone_config);
    tokio::time::timeout(Duration::from_secs(10), drone.attached()).await.unwrap();
    eventually(Duration::from_secs(10), "the drone is ready", async || {
        let nodes = client.list_all_nodes(&Default::default()).await.unwrap();
        let ready = nodes.nodes.iter().filter(|n| n.state == hangar::domain::NodeState::Ready).count();
        if ready == 1 { Ok(()) } else { Err(ready) }
    })
    .await;

    let started = Instant::now();
    let callers = (0..CALLERS).map(|c| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut refused = Vec::new();
            for n in 0..CYCLES {
                let cycle = tokio::time::sleep(CYCLE);
                let request = ConnectRequest::key("churn", format!("c{c}-{n}"), "").spawn(SpawnSpec::new("app:1"));
                let connection = match client.connect_backend(&request).await {
                    Ok(connection) => connection,
                    Err(err @ (ClientError::Unavailable { .. } | ClientError::ResourceExhausted { .. })) => {
                        refused.push(format!("cycle {n}: {err}"));
                        continue;
                    }
                    Err(err) => panic!("connect c{c}-{n}: {err}"),
                };
                assert!(connection.spawned, "a fresh key starts a backend");
                client.terminate_backend(&connection.backend_id, false).await.unwrap();
                cycle.await;
            }
            refused
        })
    });
    let refused: Vec<String> = futures::future::join_all(callers).await.into_iter().flat_map(Result::unwrap).collect();
    let elapsed = started.elapsed();
    eprintln!("{} cycles in {elapsed:?}, {} refused", CALLERS * CYCLES, refused.len());
    assert!(refused.is_empty(), "refused with at most {CALLERS} of {CAPACITY} slots meant to be live: {refused:#?}");

    // Every backend asked to end does end, and its slot with it.
    eventually(Duration::from_secs(30), "every backend terminated", async || {
        let backends = client.list_all_backends(&Default::default()).await.unwrap();
        let live = backends.iter().filter(|b| b.state != BackendState::Terminated).count();
        if backends.len() == CALLERS * CYCLES && live == 0 { Ok(()) } else { Err((backends.len(), live)) }
    })
    .await;
}
