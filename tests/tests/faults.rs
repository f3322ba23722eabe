//! Faults under load: two controller processes on one real PostgreSQL, proxies and drones given
//! both, backends on the process runtime, steady traffic or Connects through SDK clients given
//! both controllers, and one part killed (a controller, a drone, a proxy: SIGKILL) or restarted
//! (PostgreSQL) while it runs. What users of the data plane must not notice, a recorded history
//! that the checker (`hangar_testkit::history`) finds no violation in, and one line of
//! availability figures per scenario (`chaos-figures ...`, collected by `scripts/chaos`). The
//! plumbing the scenarios share is `hangar_tests::faults`.

use hangar::domain::{BackendState, NodeFilter, NodeKind, NodeState};
use hangar_client::{ConnectRequest, HangarClient, SpawnSpec};
use hangar_executor::drone::AttachState;
use hangar_server::testing::PgCluster;
use hangar_testkit::history::{ConnectOutcome, Final, Recorder};
use hangar_testkit::{check, eventually};
use hangar_tests::faults::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The proxy's route ttl is short (100 ms), so that while the controller is dead the cached route
/// expires dozens of times and every expiry is a lookup that meets the dead controller if the
/// proxy still sends it there.
#[tokio::test]
async fn no_proxied_request_fails_while_one_of_two_controllers_is_killed() {
    hangar_tests::init_logging();
    let pg = PgCluster::shared().await.unwrap();
    let database = pg.create_database().await.unwrap();
    let ControlPlane { mut a, b, controllers, proxy, .. } =
        control_plane(&database, |config| config.route_ttl = Duration::from_millis(100)).await;
    let drone = attached_drone(&controllers, "worker").await;

    // The SDK talks to the controller that survives; the proxy and the drone start on the one
    // that dies (each tries its list in order).
    let client = HangarClient::connect(&b.url).await.unwrap();
    let backend = hangar_executor::testing::test_backend_binary().display().to_string();
    let request = ConnectRequest::key("faults", "doc-1", "v1").spawn(SpawnSpec::new(backend));
    // The survivor learns of the drone (attached to the other controller) through its node view.
    let connection = eventually(WAIT, "a Connect placed", async || client.connect_backend(&request).await).await;
    eventually(WAIT, "the backend READY", async || {
        check(client.get_backend(&connection.backend_id).await.unwrap().state, |s| *s == BackendState::Ready)
    })
    .await;

    let began = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(steady_traffic(connection.url.clone(), connection.backend_id.clone(), began, stop.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = began.elapsed();
    a.kill();
    let killed = Instant::now();
    // The drone and the proxy move to the survivor within 5 s (the bound of docs/design/faults.md).
    let survivor = format!("attached to {}", b.url);
    let mut drone_state = drone.state();
    tokio::time::timeout(
        Duration::from_secs(5),
        drone_state.wait_for(|s| matches!(s, AttachState::Attached { controller, .. } if *controller == b.url)),
    )
    .await
    .expect("the drone attached to the survivor within 5 s")
    .unwrap();
    let drone_moved = killed.elapsed();
    let readiness = proxy.readiness();
    eventually(Duration::from_secs(5), "the proxy attached to the survivor", async || {
        let checks = readiness.check().await;
        check(checks, |checks| checks.iter().any(|c| c.ok && c.detail.contains(&survivor)))
    })
    .await;
    let proxy_moved = killed.elapsed();
    // Long enough for the cached route to expire thirty times: the failures the bug caused came
    // within the first second.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(killed.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    let mut failures = Vec::new();
    for client in clients {
        let traffic = client.await.unwrap();
        sent += traffic.sent;
        failures.extend(traffic.failures);
    }
    eprintln!(
        "{sent} proxied requests from {CLIENTS} clients over {:?}, controller killed at {killed_at:?}: {} failed; \
         drone attached to the survivor {drone_moved:?} after the kill, proxy {proxy_moved:?}",
        began.elapsed(),
        failures.len()
    );
    print_figures("controller-kill-traffic", None, Some((failures.len(), sent)), Some(drone_moved), None);
    assert!(sent > 100, "the traffic ran: {sent} requests");
    assert!(failures.is_empty(), "proxied requests failed while one controller was dead: {failures:?}");

    // The survivor still serves the control plane: the backend ends as asked.
    client.terminate_backend(&connection.backend_id, false).await.unwrap();
    eventually(WAIT, "the backend TERMINATED", async || {
        check(client.get_backend(&connection.backend_id).await.unwrap().state, |s| *s == BackendState::Terminated)
    })
    .await;
    proxy.shutdown().await;
    drone.shutdown().await;
}

/// A controller killed with SIGKILL under a Connect/terminate load, and replaced by a new one
/// on the same database: the recorded history (Connect answers, the backends' own reports of key
/// and fencing token, how every backend ended) passes the checker. The SDK clients are given
/// both controllers: no Connect or termination fails, and none that was answered is lost.
#[tokio::test]
async fn a_controller_killed_and_replaced_under_load_leaves_a_history_without_violations() {
    hangar_tests::init_logging();
    let pg = PgCluster::shared().await.unwrap();
    let database = pg.create_database().await.unwrap();
    let ControlPlane { mut a, b, controllers, proxy, proxy_url } = control_plane(&database, |_| {}).await;
    let mut drones = Vec::new();
    for name in ["worker-1", "worker-2"] {
        drones.push(attached_drone(&controllers, name).await);
    }
    let sdk = |url: &str| HangarClient::connect_lazy(url, Default::default()).unwrap();
    // Each SDK client is given both controllers and fails over between them; half the calls go
    // first to the controller that dies.
    let clients = Arc::new(std::sync::Mutex::new(vec![
        sdk(&format!("{},{}", a.url, b.url)),
        sdk(&format!("{},{}", b.url, a.url)),
    ]));
    // Both controllers see both drones before the load starts.
    for client in [sdk(&a.url), sdk(&b.url)] {
        eventually(WAIT, "two drones READY", async || {
            let nodes = client.list_all_nodes(&Default::default()).await.unwrap();
            check(nodes.nodes.iter().filter(|n| n.state == hangar::domain::NodeState::Ready).count(), |n| *n >= 2)
        })
        .await;
    }

    let recorder = Arc::new(Recorder::new());
    let urls = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let observer = tokio::spawn(observe_backends(recorder.clone(), urls.clone(), stop.clone()));
    // A node watcher on the controller that dies, resuming elsewhere: it sees the drones move.
    let watched = Arc::new(std::sync::Mutex::new(vec![a.url.clone(), b.url.clone()]));
    let watcher = tokio::spawn(resuming_watcher("on-a", 1, a.url.clone(), watched.clone(), stop.clone()));
    let backend = hangar_executor::testing::test_backend_binary().display().to_string();
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (recorder, clients, urls) = (recorder.clone(), clients.clone(), urls.clone());
            let terminations = Arc::new(Terminations::default());
            tokio::spawn(connect_load(w, recorder, clients, urls, backend.clone(), terminations, stop.clone()))
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = recorder.now();
    let killed_revision = store_revision(&b.url).await;
    a.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let replacement = controller(&database, &proxy_url);
    // The replacement listens on a new port (port 0): the clients are told of it.
    *clients.lock().unwrap() =
        vec![sdk(&format!("{},{}", replacement.url, b.url)), sdk(&format!("{},{}", b.url, replacement.url))];
    watched.lock().unwrap()[0] = replacement.url.clone();
    let replaced_at = recorder.now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = std::collections::BTreeMap::<String, usize>::new();
    for worker in workers {
        for (code, n) in worker.await.unwrap() {
            *failures.entry(code).or_default() += n;
        }
    }
    let observed = observer.await.unwrap();
    let watched = watcher.await.unwrap();
    let store_revisions = node_log(&replacement.url, watched.from, watched.until).await;

    // Every backend ends: terminated through the replacement, and waited for.
    let survivor = sdk(&replacement.url);
    let ids: Vec<String> = urls.lock().unwrap().keys().cloned().collect();
    let mut finals = Vec::new();
    for id in &ids {
        survivor.terminate_backend(id, false).await.unwrap();
    }
    for id in &ids {
        let ended = eventually(WAIT, &format!("backend {id} TERMINATED"), async || {
            check(survivor.get_backend(id).await.unwrap(), |b| b.state == BackendState::Terminated)
        })
        .await;
        let reason = ended.status.termination_reason.map(|r| format!("{r:?}"));
        finals.push(Final { backend_id: id.clone(), state: "TERMINATED".into(), reason });
    }
    recorder.record(|history| {
        history.lives = observed.lives.into_values().collect();
        history.finals = finals;
        history.watchers.push(watched);
        history.store_revisions = store_revisions;
    });
    let history = recorder.history();
    let answered = history.connects.iter().filter(|c| matches!(c.outcome, ConnectOutcome::Ok { .. })).count();
    eprintln!(
        "{} Connects ({answered} answered), {} backends, {} seen serving, {} node changes watched; controller \
         killed at {killed_at:?}, replaced at {replaced_at:?}; failures by call and code: {failures:?}",
        history.connects.len(),
        ids.len(),
        history.lives.len(),
        history.watchers[0].received.len(),
    );
    print_figures("controller-kill", Some(&failures), None, None, None);
    // That the load ran (see `Load::finish`).
    assert!(
        answered >= 10 && !history.lives.is_empty(),
        "the load ran: {answered} answered Connects, {} seen serving",
        history.lives.len()
    );
    // Keyed Connects and terminations are idempotent: the SDK moves them to the survivor.
    assert!(failures.is_empty(), "idempotent SDK calls failed while one controller of two was down: {failures:?}");
    assert!(
        history.watchers[0].received.iter().any(|r| *r > killed_revision),
        "the watcher resumed past the kill: {:?}",
        history.watchers[0]
    );
    history.check().assert_ok();
    proxy.shutdown().await;
    for drone in drones {
        drone.shutdown().await;
    }
}

/// A drone process SIGKILLed under the Connect load (its backends die with it) and restarted on
/// its journal a second later: it reports them LOST, keys move on with higher tokens, and no key
/// ever has two owners.
#[tokio::test]
async fn a_drone_killed_and_restarted_under_load_leaves_a_history_without_violations() {
    hangar_tests::init_logging();
    let pg = PgCluster::shared().await.unwrap();
    let database = pg.create_database().await.unwrap();
    let ControlPlane { a: _a, b: _b, controllers, proxy, .. } = control_plane(&database, |_| {}).await;
    let steady = in_process_drone(&controllers, "steady");
    let journal = tempfile::tempdir().unwrap();
    let mut victim = drone_process(&controllers, "victim", journal.path());
    let clients = failover_clients(&controllers);
    let client = clients.lock().unwrap()[0].clone();
    eventually(WAIT, "both drones READY", async || check(ready_drones(&client).await, |n| n.len() >= 2)).await;

    let load = Load::start(clients);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    victim.kill();
    // The controllers see it gone (its stream reset) before it comes back.
    eventually(Duration::from_secs(5), "the killed drone not READY", async || {
        check(ready_drones(&client).await, |n| !n.iter().any(|n| n == "victim"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(killed.elapsed())).await;
    let restarted = Instant::now();
    let _victim = drone_process(&controllers, "victim", journal.path());
    eventually(WAIT, "the restarted drone READY", async || {
        check(ready_drones(&client).await, |n| n.iter().any(|n| n == "victim"))
    })
    .await;
    let drones_ready = restarted.elapsed();
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(restarted.elapsed())).await;
    let (failures, answered, lost) = load.finish(&client).await;
    eprintln!(
        "{answered} Connects answered, {lost} backends LOST with the drone; drone killed at 2 s and restarted at 3 s"
    );
    assert!(lost >= 1, "the killed drone held backends of the load");
    print_figures("drone-kill", Some(&failures), None, Some(drones_ready), None);
    proxy.shutdown().await;
    steady.shutdown().await;
}

/// Two proxy processes in front of one READY backend; one is SIGKILLed while four clients send
/// requests through it: the requests move to the other proxy and none fails on both. The
/// Connect load runs throughout (its backends observed through the surviving proxy), and its
/// history passes the checker. The killed proxy's node goes OFFLINE; restarted on its address,
/// it serves the same URL again (tokens live in the database) and is READY, and the backend is
/// the same one throughout.
#[tokio::test]
async fn a_proxy_killed_under_load_moves_its_traffic_to_the_other_proxy() {
    hangar_tests::init_logging();
    let pg = PgCluster::shared().await.unwrap();
    let database = pg.create_database().await.unwrap();
    let (doomed_at, survivor_at) = (free_address(), free_address());
    let (doomed_url, survivor_url) = (format!("http://{doomed_at}"), format!("http://{survivor_at}"));
    let (a, b) = two_controllers(&database, &survivor_url);
    let controllers = vec![a.url.clone(), b.url.clone()];
    let mut doomed = proxy_process(&controllers, "edge-1", &doomed_at);
    let _survivor = proxy_process(&controllers, "edge-2", &survivor_at);
    let drone = in_process_drone(&controllers, "worker");
    let clients = failover_clients(&controllers);
    let client = clients.lock().unwrap()[0].clone();
    eventually(WAIT, "the drone READY", async || check(ready_drones(&client).await, |n| !n.is_empty())).await;

    let backend = hangar_executor::testing::test_backend_binary().display().to_string();
    let request = ConnectRequest::key("faults", "steady", "v1").spawn(SpawnSpec::new(backend));
    let connection = eventually(WAIT, "a Connect placed", async || client.connect_backend(&request).await).await;
    let path = connection.url.strip_prefix(&survivor_url).expect("a URL of the proxy the controllers name").to_string();
    let probe = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    for proxy in [&doomed_url, &survivor_url] {
        eventually(WAIT, "the backend READY through both proxies", async || {
            let request = http::Request::get(format!("{proxy}{path}")).body(Default::default()).unwrap();
            let status = probe.request(request).await.map(|r| r.status().as_u16()).unwrap_or(0);
            check(status, |s| *s == 200)
        })
        .await;
    }

    let load = Load::start(clients);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let proxies = vec![doomed_url.clone(), survivor_url.clone()];
            tokio::spawn(traffic_over_proxies(proxies, path.clone(), connection.backend_id.clone(), stop.clone()))
        })
        .collect();
    let before = client.get_backend(&connection.backend_id).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    doomed.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut failed, mut moved) = (0, 0, 0);
    for t in traffic {
        let (s, f, m) = t.await.unwrap();
        (sent, failed, moved) = (sent + s, failed + f, moved + m);
    }
    eprintln!("{sent} requests from {CLIENTS} clients, {moved} moved to the other proxy, {failed} failed on both");
    assert!(sent > 100 && moved >= CLIENTS, "the traffic ran and moved: {sent} sent, {moved} moved");
    assert_eq!(failed, 0, "requests failed on both proxies");

    let proxy_state = async || {
        let proxies = NodeFilter { kinds: vec![NodeKind::Proxy], ..Default::default() };
        let nodes = client.list_all_nodes(&proxies).await.map(|l| l.nodes).unwrap_or_default();
        nodes.into_iter().find(|n| n.name == "edge-1").map(|n| n.state)
    };
    eventually(WAIT, "edge-1 OFFLINE", async || check(proxy_state().await, |s| *s == Some(NodeState::Offline))).await;
    let _restarted = proxy_process(&controllers, "edge-1", &doomed_at);
    let restarted = Instant::now();
    eventually(WAIT, "the same URL served through the restarted edge-1", async || {
        let request = http::Request::get(format!("{doomed_url}{path}")).body(Default::default()).unwrap();
        let status = probe.request(request).await.map(|r| r.status().as_u16()).unwrap_or(0);
        check(status, |s| *s == 200)
    })
    .await;
    let served_again = restarted.elapsed();
    eventually(WAIT, "edge-1 READY again", async || check(proxy_state().await, |s| *s == Some(NodeState::Ready))).await;
    eprintln!("the URL served through edge-1 {served_again:.1?} after its restart");
    let after = client.get_backend(&connection.backend_id).await.unwrap();
    assert_eq!(after.state, BackendState::Ready, "{after:?}");
    assert_eq!(after.fencing_token, before.fencing_token, "the same backend serves the key");

    client.terminate_backend(&connection.backend_id, false).await.unwrap();
    let (failures, _history) = load.finish_history(&client).await;
    print_figures("proxy-kill", Some(&failures), Some((failed, sent)), None, None);
    assert!(failures.is_empty(), "SDK calls failed while a proxy was down: {failures:?}");
    drone.shutdown().await;
}

/// PostgreSQL stopped for 2 s and started again (its own throwaway cluster) under the Connect
/// load and steady traffic to a READY backend: no proxied request fails, a new Connect succeeds
/// within 5 s of the database being back, and the history has no violation.
#[tokio::test]
async fn a_postgresql_restart_under_load_keeps_sessions_serving() {
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
    let connection = eventually(WAIT, "a Connect placed", async || client.connect_backend(&request).await).await;
    backend_ready(&client, &connection.backend_id).await;

    let load = SteadyLoad::start(clients, std::slice::from_ref(&connection));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pg.stop().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.start().await.unwrap();
    let back = Instant::now();
    let connect_ok = first_new_connect(&client, &backend, back, "the database's return").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (load, sent, failed) = load.stop_traffic().await;
    client.terminate_backend(&connection.backend_id, false).await.unwrap();
    let (failures, answered, _) = load.finish(&client).await;
    eprintln!(
        "{answered} Connects answered; database down 2 s from 1.5 s; a new Connect succeeded {connect_ok:?} after it was back"
    );
    print_figures("postgres-restart", Some(&failures), Some((failed.len(), sent)), None, Some(connect_ok));
    assert!(failed.is_empty(), "proxied requests failed while the database restarted: {failed:?}");
    assert!(connect_ok <= Duration::from_secs(5), "a new Connect took {connect_ok:?} after the database was back");
    proxy.shutdown().await;
    for drone in drones {
        drone.shutdown().await;
    }
}
