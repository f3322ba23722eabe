//! A partition between one controller and PostgreSQL, under load: two controller processes on
//! one real PostgreSQL, controller A reaching it through a relay that the test blackholes (or
//! cuts) for longer than the key lease, B directly; two drones, one attached to A only, a proxy,
//! HTTP traffic to READY backends on both drones and Connects on a few keys. A answers its drone's
//! renewals deferred, so the drone holds its keys through the partition, and B's sweep may not free
//! them (A's ticks stopped): no backend ends, no proxied request fails, no idempotent SDK call
//! fails (B answers what A cannot), a new Connect succeeds within 5 s of the heal, and the
//! recorded history shows no key with two owners
//! (docs/design/backends-and-leases.md#store-outages).

use hangar::domain::{BackendFilter, BackendState, TerminationReason};
use hangar_client::{ConnectRequest, HangarClient, SpawnSpec};
use hangar_server::proxy::{Proxy, ProxyConfig};
use hangar_server::testing::PgCluster;
use hangar_testkit::relay::Mode;
use hangar_testkit::{check, eventually};
use hangar_tests::faults::{
    SteadyLoad, WAIT, backend_ready, controller_logged, database_with_relay, failover_clients, first_new_connect,
    in_process_drone, log_warnings, print_figures, ready_drones,
};
use std::time::{Duration, Instant};

/// The key lease both controllers are given: short, so that the partition outlasts it in a
/// test that runs in about a minute.
const LEASE: &str = "15s";

/// Longer than the lease (every lease A's drone held runs out meanwhile, and the sweep on B sees
/// them expired) and well within the store outage grace (120 s, the default).
const PARTITION: Duration = Duration::from_secs(22);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_link_between_one_controller_and_postgresql_ends_no_session_and_gives_no_key_two_owners() {
    partition_scenario(Mode::Blackhole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_between_one_controller_and_postgresql_ends_no_session_and_gives_no_key_two_owners() {
    partition_scenario(Mode::Cut).await;
}

/// The scenario, the partition made by `fault` (the relay's [`Mode::Blackhole`] or [`Mode::Cut`]).
async fn partition_scenario(fault: Mode) {
    hangar_tests::init_logging();
    let logs = tempfile::tempdir().unwrap();
    let pg = PgCluster::new().await.unwrap();
    let (database, relay, relayed_database) = database_with_relay(&pg).await;

    let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy_listener.local_addr().unwrap());
    let lease = ["--lease-duration", LEASE];
    let (log_a, log_b) = (logs.path().join("a.log"), logs.path().join("b.log"));
    let a = controller_logged(&relayed_database, &proxy_url, &lease, &log_a);
    let b = controller_logged(&database, &proxy_url, &lease, &log_b);
    let (a_url, b_url) = (a.url.clone(), b.url.clone());
    let controllers = vec![a_url.clone(), b_url.clone()];
    let proxy = Proxy::start(ProxyConfig::new(controllers.clone(), "edge"), proxy_listener).await.unwrap();

    // worker-1 knows only A: it is A's drone through the partition. worker-2 tries B first.
    let on_a = in_process_drone(std::slice::from_ref(&a_url), "worker-1");
    let on_b = in_process_drone(&[b_url.clone(), a_url.clone()], "worker-2");
    let a_node = tokio::time::timeout(WAIT, on_a.attached()).await.expect("worker-1 attached to A");
    let b_node = tokio::time::timeout(WAIT, on_b.attached()).await.expect("worker-2 attached");
    let clients = failover_clients(&controllers);
    let client = clients.lock().unwrap()[0].clone();
    let only = |url: &str| HangarClient::connect_lazy(url, Default::default()).unwrap();
    let (only_a, only_b) = (only(&a_url), only(&b_url));
    eventually(WAIT, "two drones READY", async || check(ready_drones(&client).await, |n| n.len() >= 2)).await;

    // A READY keyed backend on each drone, the traffic's targets: keys until both drones have one.
    let backend = hangar_executor::testing::test_backend_binary().display().to_string();
    let mut steady: Vec<hangar_client::Connection> = Vec::new();
    let mut placed: Vec<String> = Vec::new();
    for i in 0..12 {
        let request = ConnectRequest::key("faults", format!("steady-{i}"), "v1").spawn(SpawnSpec::new(backend.clone()));
        let connection = eventually(WAIT, "a Connect placed", async || client.connect_backend(&request).await).await;
        let drone = client.get_backend(&connection.backend_id).await.unwrap().drone_id;
        if placed.contains(&drone) {
            client.terminate_backend(&connection.backend_id, false).await.unwrap();
        } else {
            placed.push(drone);
            steady.push(connection);
        }
        if steady.len() == 2 {
            break;
        }
    }
    assert!(placed.contains(&a_node) && placed.contains(&b_node), "a steady backend on each drone: {placed:?}");
    for s in &steady {
        backend_ready(&client, &s.backend_id).await;
    }

    let load = SteadyLoad::start(clients, &steady);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Every backend serving when the partition starts: each must still be READY, as the same
    // backend, after it.
    let ready_filter = BackendFilter { states: vec![BackendState::Ready], ..Default::default() };
    let serving: Vec<_> = client.list_all_backends(&ready_filter).await.unwrap();
    assert!(steady.iter().all(|s| serving.iter().any(|b| b.id == s.backend_id)));
    assert!(serving.iter().any(|b| b.drone_id == a_node), "A's drone serves keyed backends");

    match fault {
        Mode::Blackhole => relay.blackhole(),
        Mode::Cut => relay.cut(),
        Mode::Open => unreachable!("a partition"),
    }
    let parted = Instant::now();
    eprintln!("{} partition ({fault:?}): worker-1 {a_node} on A only, worker-2 {b_node}", chrono::Utc::now());
    // A new Connect through B during the partition: the figure, whatever it is.
    let mut during = 0;
    let connect_during = loop {
        during += 1;
        let request =
            ConnectRequest::key("faults", format!("during-{during}"), "v1").spawn(SpawnSpec::new(backend.clone()));
        match tokio::time::timeout(PARTITION.saturating_sub(parted.elapsed()), only_b.connect_backend(&request)).await {
            Ok(Ok(connection)) => {
                let took = parted.elapsed();
                only_b.terminate_backend(&connection.backend_id, false).await.unwrap();
                break Some(took);
            }
            Ok(Err(err)) if parted.elapsed() < PARTITION => {
                tracing::info!("a Connect through B during the partition failed: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => break None,
        }
    };
    tokio::time::sleep(PARTITION.saturating_sub(parted.elapsed())).await;
    relay.heal();
    let healed = Instant::now();
    eprintln!("{} healed", chrono::Utc::now());
    eprintln!("A partitioned from PostgreSQL ({fault:?}) for {:?}", healed - parted);

    let connect_ok = first_new_connect(&client, &backend, healed, "the heal").await;
    eventually(WAIT, "both drones READY on A and on B", async || {
        check((ready_drones(&only_a).await, ready_drones(&only_b).await), |(a, b)| a.len() == 2 && b.len() == 2)
    })
    .await;
    let drones_ready = healed.elapsed();
    // Long enough for every drone to renew its keys (every third of the lease) with A's store back.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (load, sent, failed) = load.stop_traffic().await;
    let mut ended = Vec::new();
    for before in &serving {
        let now = client.get_backend(&before.id).await.unwrap();
        // The load terminates some of its backends itself (EXTERNAL); any other end is the partition's.
        let asked = now.status.termination_reason == Some(TerminationReason::External);
        if (now.state != BackendState::Ready && !asked) || now.fencing_token != before.fencing_token {
            ended.push(format!(
                "{} {:?} {:?}: {}",
                now.id, now.state, now.status.termination_reason, now.status.message
            ));
        }
    }
    for s in &steady {
        client.terminate_backend(&s.backend_id, false).await.unwrap();
    }
    let (failures, history) = load.finish_history(&client).await;
    let lapsed: Vec<_> =
        history.finals.iter().filter(|f| matches!(f.reason.as_deref(), Some("KeyExpired" | "Lost"))).collect();
    let scenario = match fault {
        Mode::Cut => "postgres-partition-cut",
        _ => "postgres-partition-blackhole",
    };
    print_figures(scenario, Some(&failures), Some((failed.len(), sent)), Some(drones_ready), Some(connect_ok));
    eprintln!("{scenario}: a new Connect through B during the partition: {connect_during:?} after it began");
    let failing = !(ended.is_empty() && lapsed.is_empty() && failed.is_empty() && failures.is_empty())
        || connect_ok > Duration::from_secs(5);
    if failing {
        for (name, log) in [("A", &log_a), ("B", &log_b)] {
            for line in log_warnings(log, 30) {
                eprintln!("controller {name}: {line}");
            }
        }
    }
    assert!(ended.is_empty(), "backends READY before the partition did not survive it: {ended:?}");
    assert!(lapsed.is_empty(), "backends ended for a lapsed lease or a lost drone: {lapsed:?}");
    assert!(failed.is_empty(), "proxied requests failed during the partition: {failed:?}");
    assert!(failures.is_empty(), "idempotent SDK calls failed with B reachable: {failures:?}");
    assert!(connect_ok <= Duration::from_secs(5), "a new Connect took {connect_ok:?} after the heal");
    proxy.shutdown().await;
    on_a.shutdown().await;
    on_b.shutdown().await;
    drop((a, b));
}
