//! A database outage longer than the key lease, under load: two controller processes on one real
//! PostgreSQL that is stopped for 60 s, two drones, a proxy, HTTP traffic to a READY backend and
//! Connects on a few keys. Sessions must live through it: no backend ends, no proxied request
//! fails, a new Connect succeeds within 5 s of the database's return, and the recorded history
//! shows no key with two owners (docs/design/backends-and-leases.md#store-outages).

use hangar::domain::{BackendFilter, BackendState};
use hangar_client::{ConnectRequest, SpawnSpec};
use hangar_server::testing::PgCluster;
use hangar_testkit::{check, eventually};
use hangar_tests::faults::{
    ControlPlane, SteadyLoad, WAIT, backend_ready, control_plane, failover_clients, first_new_connect,
    in_process_drone, print_figures, ready_drones,
};
use std::time::{Duration, Instant};

/// Twice the key lease (30 s): every lease held when the database stops runs out during the
/// outage, and every drone's soft deadline (half a lease after its last confirmed renewal) passes.
const OUTAGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_down_for_a_minute_under_load_ends_no_session_and_gives_no_key_two_owners() {
    hangar_tests::init_logging();
    let pg = PgCluster::new().await.unwrap();
    let database = pg.create_database().await.unwrap();
    let ControlPlane { a: _a, b: _b, controllers, proxy, .. } = control_plane(&database, |_| {}).await;
    let drones = [in_process_drone(&controllers, "worker-1"), in_process_drone(&controllers, "worker-2")];
    let clients = failover_clients(&controllers);
    let client = clients.lock().unwrap()[0].clone();
    eventually(WAIT, "two drones READY", async || check(ready_drones(&client).await, |n| n.len() >= 2)).await;
    let backend = hangar_executor::testing::test_backend_binary().display().to_string();
    let request = ConnectRequest::key("faults", "steady", "v1").spawn(SpawnSpec::new(backend.clone()));
    let steady = eventually(WAIT, "a Connect placed", async || client.connect_backend(&request).await).await;
    backend_ready(&client, &steady.backend_id).await;

    let load = SteadyLoad::start(clients, std::slice::from_ref(&steady));
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Every backend serving when the database goes: each must still be READY, as the same
    // backend, when it is back.
    let ready_filter = BackendFilter { states: vec![BackendState::Ready], ..Default::default() };
    let serving: Vec<_> = client.list_all_backends(&ready_filter).await.unwrap();
    assert!(serving.iter().any(|b| b.id == steady.backend_id));

    pg.stop().await.unwrap();
    let stopped = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    pg.start().await.unwrap();
    let back = Instant::now();
    eprintln!("database down for {:?}", back - stopped);
    let connect_ok = first_new_connect(&client, &backend, back, "the database's return").await;
    // Long enough for every drone to renew its keys with the store back.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (load, sent, failed) = load.stop_traffic().await;
    assert_eq!(client.get_backend(&steady.backend_id).await.unwrap().state, BackendState::Ready);
    let mut ended = Vec::new();
    for before in &serving {
        let now = client.get_backend(&before.id).await.unwrap();
        // The load terminates some of its backends itself (EXTERNAL); any other end is the outage's.
        let asked = now.status.termination_reason == Some(hangar::domain::TerminationReason::External);
        if (now.state != BackendState::Ready && !asked) || now.fencing_token != before.fencing_token {
            ended.push(format!(
                "{} {:?} {:?}: {}",
                now.id, now.state, now.status.termination_reason, now.status.message
            ));
        }
    }
    client.terminate_backend(&steady.backend_id, false).await.unwrap();
    // Connects and terminations fail while the database is down (they need it); the history of
    // every call and every backend's serving must still be clean, and no backend may have ended
    // for want of a renewal or its drone.
    let (failures, history) = load.finish_history(&client).await;
    let mut lapsed = Vec::new();
    for f in history.finals.iter().filter(|f| matches!(f.reason.as_deref(), Some("KeyExpired" | "Lost"))) {
        // Who ended it, and when: the drone's message and the controller's differ.
        let status = client.get_backend(&f.backend_id).await.unwrap().status;
        lapsed.push(format!("{} {:?} at {:?}: {}", f.backend_id, f.reason, status.time, status.message));
    }
    print_figures("postgres-outage-60s", Some(&failures), Some((failed.len(), sent)), None, Some(connect_ok));
    assert!(ended.is_empty(), "backends READY before the outage did not survive it: {ended:?}");
    assert!(lapsed.is_empty(), "backends ended for a lapsed lease or a lost drone: {lapsed:?}");
    assert!(failed.is_empty(), "proxied requests failed during the outage: {failed:?}");
    assert!(connect_ok <= Duration::from_secs(5), "a new Connect took {connect_ok:?} after the database was back");
    proxy.shutdown().await;
    for drone in drones {
        drone.shutdown().await;
    }
}
