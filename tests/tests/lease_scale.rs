//! Key leases at scale (docs/design/backends-and-leases.md#key-leases-and-fencing): a healthy
//! drone attached to a healthy controller never loses a key, whatever the number of keyed
//! backends it runs. A real controller (SQLite) and two in-process drones on the mock runtime.

use futures::StreamExt;
use hangar::domain::{BackendFilter, BackendState, TerminationReason};
use hangar_client::{ClientError, ConnectRequest, HangarClient, SpawnSpec};
use hangar_executor::drone::{self, DroneConfig};
use hangar_executor::runtime::mock::MockRuntime;
use hangar_server::controller::ControllerConfig;
use hangar_server::limits::LimitsConfig;
use hangar_server::store::KeyRenewal;
use hangar_testkit::eventually;
use hangar_tests::TestCluster;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Backends per drone, and drones: the figure at which every backend used to end KEY_EXPIRED.
const PER_DRONE: u32 = 1_500;
const DRONES: u32 = 2;
/// Keys per renewal batch, as the drone sends them.
const MAX_BATCH: usize = 1_000;
/// Short, so that several leases pass in a test of a minute; renewals go every second.
const LEASE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_thousand_keyed_backends_on_two_drones_outlive_several_leases_without_losing_a_key() {
    // Default liveness (heartbeat 5 s, UNHEALTHY after 15 s): the scenario is about leases, and a
    // drone busy with a burst of spawns must not flap unhealthy under the tests' 300 ms bound.
    let mut config = ControllerConfig::default();
    config.backends.lease_duration = LEASE;
    // One test client places thousands of backends: the per-caller rate limit is not under test.
    config.limits = LimitsConfig { rate_per_second: 100_000, burst: 100_000, ..LimitsConfig::default() };
    config.backends.sweep_interval = Duration::from_millis(200);
    let cluster = TestCluster::sqlite_with(config).await;
    let client = HangarClient::connect(&cluster.url()).await.unwrap();

    let mut drones = Vec::new();
    for i in 0..DRONES {
        let mut config = DroneConfig::new(vec![cluster.url()], format!("drone-{i}"));
        config.runtime = Some(Arc::new(MockRuntime::new()));
        config.backend_capacity = PER_DRONE;
        let drone = drone::spawn(config);
        tokio::time::timeout(Duration::from_secs(10), drone.attached()).await.unwrap();
        drones.push(drone);
    }

    let total = (PER_DRONE * DRONES) as usize;
    let request = |i: usize| ConnectRequest::key("scale", format!("room-{i}"), "").spawn(SpawnSpec::new("app:1"));
    // Both drones attached and healthy (their first heartbeat) before the burst.
    eventually(Duration::from_secs(10), "both drones ready", async || {
        let nodes = client.list_all_nodes(&Default::default()).await.unwrap();
        let ready = nodes.nodes.iter().filter(|n| n.state == hangar::domain::NodeState::Ready).count();
        if ready == DRONES as usize { Ok(()) } else { Err(ready) }
    })
    .await;
    let started = Instant::now();
    let connects = futures::stream::iter(0..total)
        .map(|i| {
            let client = client.clone();
            async move {
                // A drone may look unhealthy for a moment under the burst (its heartbeat late):
                // that is not what this test is about, so such a refusal is retried, and counted.
                let mut refused = 0;
                loop {
                    match client.connect_backend(&request(i)).await {
                        Ok(connection) => return (connection, refused),
                        Err(ClientError::Unavailable { reason, .. })
                            if refused < 120 && reason == hangar::error::reason::NO_DRONE_AVAILABLE =>
                        {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        Err(err) => panic!("connect {i}: {err}"),
                    }
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    assert!(connects.iter().all(|(c, _)| c.spawned));
    let refused: u32 = connects.iter().map(|(_, refused)| refused).sum();
    let connected_after = started.elapsed();
    eprintln!("{total} connects in {connected_after:?} ({refused} NO_DRONE_AVAILABLE answers retried)");

    // Every backend READY; a lost key would show up as TERMINATED here.
    let all = BackendFilter::default();
    eventually(Duration::from_secs(120), "every backend READY", async || {
        // Listing 3,000 backends is work for the controller too: not in a tight loop.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let backends = client.list_all_backends(&all).await.unwrap();
        let ready = backends.iter().filter(|b| b.state == BackendState::Ready).count();
        let expired =
            backends.iter().filter(|b| b.status.termination_reason == Some(TerminationReason::KeyExpired)).count();
        assert_eq!(
            expired,
            0,
            "{expired} of {total} backends ended KEY_EXPIRED {:?} after the first connect",
            started.elapsed()
        );
        if ready == total { Ok(()) } else { Err(format!("{ready} of {total} READY")) }
    })
    .await;
    let ready_after = started.elapsed();
    eprintln!("{total} backends READY {ready_after:?} after the first connect");

    // Several leases, every key renewed in each: nothing may end meanwhile. (A fixed wait: it
    // asserts that something does *not* happen.)
    tokio::time::sleep(LEASE * 4).await;
    let backends = client.list_all_backends(&all).await.unwrap();
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for b in &backends {
        let reason = b.status.termination_reason.map(|r| format!("/{r:?}")).unwrap_or_default();
        *states.entry(format!("{:?}{reason}", b.state)).or_default() += 1;
    }
    eprintln!("after {:?} (lease {LEASE:?}): {states:?}", started.elapsed());
    assert_eq!(backends.len(), total);
    assert_eq!(states.get("Ready"), Some(&total), "every backend still READY: {states:?}");

    // What a batch costs the store, next to the same keys renewed one by one (this build, this
    // machine, SQLite; the drones' own renewals run meanwhile).
    let renewals: Vec<KeyRenewal> = backends
        .iter()
        .take(MAX_BATCH)
        .map(|b| KeyRenewal {
            backend_id: b.id.clone(),
            key: b.key.clone().expect("keyed"),
            fencing_token: b.fencing_token,
        })
        .collect();
    let now = chrono::Utc::now();
    let expires_at = now + chrono::Duration::from_std(LEASE).unwrap();
    let timer = Instant::now();
    let renewed = cluster.store.renew_keys(&renewals, now, expires_at).await.unwrap();
    let batch = timer.elapsed();
    assert!(renewed.iter().all(|r| *r), "every held key renews");
    let timer = Instant::now();
    for r in &renewals {
        assert!(cluster.store.renew_key(&r.backend_id, &r.key, r.fencing_token, now, expires_at).await.unwrap());
    }
    let one_by_one = timer.elapsed();
    eprintln!("renewing {} keys: one batch {batch:?}, one by one {one_by_one:?}", renewals.len());

    for drone in drones {
        drone.shutdown().await;
    }
    cluster.shutdown().await;
}
