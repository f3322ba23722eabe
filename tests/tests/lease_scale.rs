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
use hangar_testkit::{eventually, eventually_every};
use hangar_tests::TestCluster;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Backends per drone, and drones: the figure at which every backend used to end KEY_EXPIRED.
const PER_DRONE: u32 = 1_500;
const DRONES: u32 = 2;
/// Keys per renewal batch, as the drone sends them.
const MAX_BATCH: usize = 1_000;
/// Short, so that several leases pass in a test of a few minutes (renewals every 4 s); long enough
/// that a renewal's round trip may take 2 s on a machine this loaded (2 cores, several builds) and
/// still land before the drone's half-lease deadline. With 3 s the slack is 0.5 s, and this build
/// under that load missed it for 4 to 17 keys of 3,000.
const LEASE: Duration = Duration::from_secs(12);

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
        // Room to spare: a placement that leans to one drone for a moment is not under test.
        config.backend_capacity = PER_DRONE + PER_DRONE / 3;
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
                // that is not what this test is about, so such a refusal is retried every 500 ms
                // (each try is a Connect the controller must place), and counted.
                let mut refused = 0;
                let connection = eventually_every(
                    Duration::from_secs(60),
                    Duration::from_millis(500),
                    "a Connect placed",
                    async || match client.connect_backend(&request(i)).await {
                        Ok(connection) => Ok(connection),
                        Err(ClientError::Unavailable { reason, .. })
                            if reason == hangar::error::reason::NO_DRONE_AVAILABLE =>
                        {
                            refused += 1;
                            Err(reason)
                        }
                        Err(err) => panic!("connect {i}: {err}"),
                    },
                )
                .await;
                (connection, refused)
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    assert!(connects.iter().all(|(c, _)| c.spawned));
    let refused: u32 = connects.iter().map(|(_, refused)| refused).sum();
    let connected_after = started.elapsed();
    eprintln!("{total} connects in {connected_after:?} ({refused} NO_DRONE_AVAILABLE answers retried)");

    // Several leases: no backend may end, KEY_EXPIRED or otherwise. Every key is held from its
    // Connect on, READY or not yet (this debug build on a loaded machine brings backends to READY
    // at only ~10 a second: event application, not leases, bounds that; see the report). (Fixed
    // pauses between checks: they assert that something does *not* happen.)
    let all = BackendFilter::default();
    let watch_until = Instant::now() + LEASE * 4;
    let mut backends;
    loop {
        backends = client.list_all_backends(&all).await.unwrap();
        let ended: Vec<_> = backends.iter().filter(|b| b.state == BackendState::Terminated).collect();
        let ready = backends.iter().filter(|b| b.state == BackendState::Ready).count();
        if let Some(b) = ended.first() {
            eprintln!("a backend ended: {:?}, created {:?}", b.status, b.created_at);
        }
        let expired =
            ended.iter().filter(|b| b.status.termination_reason == Some(TerminationReason::KeyExpired)).count();
        assert_eq!(
            expired,
            0,
            "{expired} of {total} ended KEY_EXPIRED {:?} after the first connect",
            started.elapsed()
        );
        assert!(ended.is_empty(), "{} of {total} ended {:?} after the first connect", ended.len(), started.elapsed());
        eprintln!("{:?}: {total} live, {ready} READY, none ended (lease {LEASE:?})", started.elapsed());
        if Instant::now() >= watch_until {
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert_eq!(backends.len(), total);

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
    let renewed = cluster.store.renew_keys(&renewals, expires_at).await.unwrap();
    let batch = timer.elapsed();
    assert!(renewed.iter().all(|r| *r), "every held key renews");
    let timer = Instant::now();
    for r in &renewals {
        assert!(cluster.store.renew_key(&r.backend_id, &r.key, r.fencing_token, expires_at).await.unwrap());
    }
    let one_by_one = timer.elapsed();
    eprintln!("renewing {} keys: one batch {batch:?}, one by one {one_by_one:?}", renewals.len());

    for drone in drones {
        drone.shutdown().await;
    }
    cluster.shutdown().await;
}
