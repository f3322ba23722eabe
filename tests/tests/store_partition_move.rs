//! A partition between one controller and PostgreSQL that outlasts the store outage grace: two
//! controller processes on one real PostgreSQL, A reaching it through a relay the test blackholes,
//! B directly, both with a 20 s grace and a 15 s lease; one drone that knows both and is attached
//! to A, serving a keyed backend. A answers the drone's renewals deferred, which holds its key for
//! the grace once; but B reaches the store, so the drone moves to B (A's DroneService health says
//! NOT_SERVING, B's SERVING) and B confirms the key for good. The backend serves on, as the same
//! backend with the same fencing token, long after A's grace ran out
//! (docs/design/backends-and-leases.md#store-outages).

use hangar::domain::BackendState;
use hangar_client::{Credentials, HangarClient, SpawnSpec};
use hangar_executor::drone::AttachState;
use hangar_server::testing::PgCluster;
use hangar_testkit::{check, eventually};
use hangar_tests::faults::{WAIT, controller_logged, database_with_relay, in_process_drone, log_warnings};
use std::time::{Duration, Instant};

const LEASE: &str = "15s";
const GRACE: &str = "20s";

/// Longer than the grace and the lease together: a drone that stayed on A would have ended its
/// backend (KEY_EXPIRED) well before the heal.
const PARTITION: Duration = Duration::from_secs(45);

/// The drone is on B by then, well before A's grace runs out: A ends the drone's stream itself
/// once it may no longer defer (its grace after its last tick), so a later move would prove only
/// that.
const MOVED_WITHIN: Duration = Duration::from_secs(14);

const DRONE_SERVICE: &str = hangar::v1::drone_service_server::SERVICE_NAME;

async fn drone_service_serving(url: &str) -> bool {
    hangar_agent::serves(url, &Credentials::default(), DRONE_SERVICE, Duration::from_secs(2)).await
}

/// Two controller processes with a 15 s lease and a 20 s grace, A reaching PostgreSQL through a
/// relay, B directly; an in-process drone that knows both, attached to A.
struct Pair {
    pg: PgCluster,
    relay: hangar_testkit::relay::Relay,
    a: hangar_tests::ControllerProcess,
    b: hangar_tests::ControllerProcess,
    a_url: String,
    b_url: String,
    log_a: std::path::PathBuf,
    drone: hangar_executor::drone::DroneHandle,
}

impl Pair {
    async fn start(logs: &std::path::Path) -> Pair {
        let pg = PgCluster::new().await.unwrap();
        let (database, relay, relayed_database) = database_with_relay(&pg).await;
        // No proxy: the backend's state and fencing token and the drone's controller are what
        // these scenarios watch.
        let proxy_url = "http://127.0.0.1:9";
        let args = ["--lease-duration", LEASE, "--store-outage-grace", GRACE];
        let (log_a, log_b) = (logs.join("a.log"), logs.join("b.log"));
        let a = controller_logged(&relayed_database, proxy_url, &args, &log_a);
        let b = controller_logged(&database, proxy_url, &args, &log_b);
        let (a_url, b_url) = (a.url.clone(), b.url.clone());
        assert!(drone_service_serving(&a_url).await && drone_service_serving(&b_url).await);
        // The drone knows both and tries A first.
        let drone = in_process_drone(&[a_url.clone(), b_url.clone()], "worker");
        tokio::time::timeout(WAIT, drone.attached()).await.expect("the drone attached");
        let state = drone.state().borrow().clone();
        assert!(matches!(&state, AttachState::Attached { controller, .. } if *controller == a_url), "on A: {state:?}");
        Pair { pg, relay, a, b, a_url, b_url, log_a, drone }
    }
}

/// A drone that holds no key gets no deferred renewal to tell it that its controller lost the
/// database; it goes by that controller's DroneService health (watched on its stream's
/// connection) and moves to B, which reaches the database, within seconds: there it can be given
/// new backends, which A could not tell it of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drone_holding_no_key_leaves_a_controller_that_lost_the_database_for_one_that_reaches_it() {
    hangar_tests::init_logging();
    let logs = tempfile::tempdir().unwrap();
    let Pair { pg: _pg, relay, a: _a, b: _b, b_url, drone, .. } = Pair::start(logs.path()).await;
    relay.blackhole();
    let parted = Instant::now();
    // A's health says NOT_SERVING 3 s after its last store tick; the watch brings it at once.
    let mut state = drone.state();
    let moved = tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| matches!(s, AttachState::Attached { controller, .. } if *controller == b_url)),
    )
    .await;
    let now = drone.state().borrow().clone();
    assert!(moved.is_ok(), "the keyless drone not on B 10 s into the partition: {now:?}");
    eprintln!("the keyless drone moved to B {:.1?} after the partition began", parted.elapsed());
    relay.heal();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drone_whose_controller_lost_the_database_past_the_grace_moves_to_one_that_reaches_it_and_keeps_its_backend()
{
    hangar_tests::init_logging();
    let logs = tempfile::tempdir().unwrap();
    let Pair { pg: _pg, relay, a, b: _b, a_url, b_url, log_a, drone } = Pair::start(logs.path()).await;
    let on =
        |url: &str| matches!(&*drone.state().borrow(), AttachState::Attached { controller, .. } if controller == url);

    let client = HangarClient::connect_lazy(&b_url, Default::default()).unwrap();
    let backend = hangar_executor::testing::test_backend_binary().display().to_string();
    let request = hangar_client::ConnectRequest::key("faults", "long-partition", "v1").spawn(SpawnSpec::new(backend));
    let connection = eventually(WAIT, "a Connect placed", async || client.connect_backend(&request).await).await;
    let before = eventually(WAIT, "the backend READY", async || {
        check(client.get_backend(&connection.backend_id).await.unwrap(), |b| b.state == BackendState::Ready)
    })
    .await;

    relay.blackhole();
    let parted = Instant::now();
    eventually(Duration::from_secs(15), "A's DroneService NOT_SERVING", async || {
        check(drone_service_serving(&a_url).await, |serving| !serving)
    })
    .await;
    eprintln!("A's DroneService NOT_SERVING {:.1?} after the partition began", parted.elapsed());
    // The first deferral comes with the next renewal (a third of the lease), the look for
    // another controller within a second of it.
    eventually(MOVED_WITHIN.saturating_sub(parted.elapsed()), "the drone on B", async || {
        check(on(&b_url), |on_b| *on_b)
    })
    .await;
    eprintln!("the drone moved to B {:.1?} after the partition began", parted.elapsed());

    // Past A's grace and the lease, sampled every second: the same backend, READY throughout.
    while parted.elapsed() < PARTITION {
        let now = client.get_backend(&connection.backend_id).await.unwrap();
        assert_eq!(now.state, BackendState::Ready, "{:.1?} into the partition: {now:?}", parted.elapsed());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    relay.heal();
    eventually(Duration::from_secs(15), "A's DroneService SERVING again", async || {
        check(drone_service_serving(&a_url).await, |serving| *serving)
    })
    .await;
    let after = client.get_backend(&connection.backend_id).await.unwrap();
    assert_eq!(after.state, BackendState::Ready, "{after:?}");
    assert_eq!(after.fencing_token, before.fencing_token, "the same holder of the key");
    if std::thread::panicking() {
        for line in log_warnings(&log_a, 30) {
            eprintln!("A: {line}");
        }
    }
    drop((drone, a));
}
