//! Faults that leases and liveness must absorb without ending a session wrongly, under the
//! Connect load of `hangar_tests::faults` and read by the history checker: an executor SIGKILLed under its
//! drone, a controller paused (SIGSTOP) past the liveness timeouts, a drone cut off from every
//! controller for longer than the key lease, and drones whose clocks are a few seconds off.
//! Each prints one `chaos-figures` line (`scripts/chaos`).

use hangar::domain::{BackendState, NodeState};
use hangar_client::{ConnectRequest, HangarClient, SpawnSpec};
use hangar_executor::drone::AttachState;
use hangar_server::testing::PgCluster;
use hangar_testkit::history::ConnectOutcome;
use hangar_testkit::relay::Relay;
use hangar_testkit::{check, eventually, eventually_every, holds_within};
use hangar_tests::faults::*;
use std::time::{Duration, Instant};

/// The key lease of a controller started without `--lease-duration` (docs/design/backends-and-leases.md).
const LEASE: Duration = Duration::from_secs(30);

/// Nodes of `client`'s controller in `state`, by name.
async fn nodes_in(client: &HangarClient, state: NodeState) -> Vec<String> {
    let nodes = client.list_all_nodes(&Default::default()).await.map(|l| l.nodes).unwrap_or_default();
    nodes.into_iter().filter(|n| n.state == state).map(|n| n.name).collect()
}

/// How many of `history`'s backends ended with `reason` (`TerminationReason`'s `Debug`).
fn ended_with(history: &hangar_testkit::history::History, reason: &str) -> Vec<String> {
    history.finals.iter().filter(|f| f.reason.as_deref() == Some(reason)).map(|f| f.backend_id.clone()).collect()
}

/// The executor process under a drone (`hangar-drone run --executor-socket`) is SIGKILLed under
/// the Connect load, its backends (its children) dying with it, and restarted on the same socket
/// a second later. The drone is the only one, so every Connect of the load lands on it. The
/// design's promises (docs/design/executor-protocol.md#the-client, drone-link.md#restarts-and-reconciliation):
/// the drone's next call reconnects and handshakes with the new executor, the backends the dead
/// one ran end (LOST, the runtime no longer knows them) rather than stay READY, new Connects
/// run again, and no key ever has two owners. The load stops terminating from just before the
/// kill until those backends have ended, so that each READY one nothing asked to end must end LOST.
#[tokio::test]
async fn an_executor_killed_under_its_drone_ends_its_backends_and_the_drone_runs_new_ones() {
    hangar_tests::init_logging();
    let pg = PgCluster::shared().await.unwrap();
    let database = pg.create_database().await.unwrap();
    let ControlPlane { a: _a, b: _b, controllers, proxy, .. } = control_plane(&database, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("exec").join("executor.sock");
    let mut executor = executor_process(&socket);
    // The drone refuses to start without a live executor: wait for the socket.
    eventually(WAIT, "the executor serving", async || check(socket.exists(), |s| *s)).await;
    let _drone = LoggedProcess::spawn(
        "the drone exec-drone",
        drone_command(&controllers, "exec-drone", &dir.path().join("drone")).arg("--executor-socket").arg(&socket),
    );
    let clients = failover_clients(&controllers);
    let client = clients.lock().unwrap()[0].clone();
    eventually(WAIT, "the drone READY", async || check(ready_drones(&client).await, |n| !n.is_empty())).await;

    let load = Load::start(clients);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The load goes on connecting but stops terminating until the dead executor's backends have
    // ended: one it asked to end would end with the request's reason, not LOST.
    load.set_terminating(false);
    // Backends the executor runs now: each must end, none may stay READY on a dead executor.
    let before: Vec<String> = load.urls.lock().unwrap().keys().cloned().collect();
    // Those READY that the load never asked to end: only the executor's death can end them, and
    // they must end LOST.
    let mut untouched = Vec::new();
    for id in before.iter().filter(|id| !load.asked_to_end(id)) {
        if client.get_backend(id).await.unwrap().state == BackendState::Ready {
            untouched.push(id.clone());
        }
    }
    executor.process.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = Instant::now();
    let _executor = executor_process(&socket);
    // A new Connect on a fresh key is placed on the drone (the only one) and runs on the new
    // executor: the drone reconnected to it.
    // Each try is a recorded Connect that may spawn a backend: tried every 200 ms, not faster.
    let mut fresh = 0;
    eventually_every(WAIT, Duration::from_millis(200), "a backend READY on the restarted executor", async || {
        fresh += 1;
        let key = format!("after-restart-{fresh}");
        let (backend_id, _) = load.connect(&client, &key).await.map_err(|err| format!("a Connect failed: {err}"))?;
        let ended = eventually(WAIT, "the new backend READY or ended", async || {
            check(client.get_backend(&backend_id).await.unwrap().state, |s| {
                matches!(s, BackendState::Ready | BackendState::Terminated)
            })
        })
        .await;
        check(ended, |s| *s == BackendState::Ready).map_err(|s| format!("{backend_id} ended {s:?}"))
    })
    .await;
    let connect_ok = restarted.elapsed();
    // Every backend of the dead executor ends, whatever the load did with it.
    for id in &before {
        eventually(WAIT, &format!("{id}, run by the killed executor, TERMINATED"), async || {
            check(client.get_backend(id).await.unwrap().state, |s| *s == BackendState::Terminated)
        })
        .await;
    }
    load.set_terminating(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (failures, history) = load.finish_history(&client).await;
    let lost = ended_with(&history, "Lost");
    eprintln!(
        "{} backends answered before the kill, {} of them READY and never asked to end; {} backends ended LOST; \
         a new backend READY {connect_ok:?} after the executor's restart; failures by call and code: {failures:?}",
        before.len(),
        untouched.len(),
        lost.len()
    );
    print_figures("executor-kill", Some(&failures), None, None, Some(connect_ok));
    assert!(!untouched.is_empty(), "the killed executor ran backends of the load that nothing asked to end");
    let not_lost: Vec<&String> = untouched.iter().filter(|id| !lost.contains(id)).collect();
    assert!(
        not_lost.is_empty(),
        "backends of the killed executor that nothing asked to end ended other than LOST: {not_lost:?}"
    );
    proxy.shutdown().await;
}

/// Controller `a` (the one both drones and the proxy attach to, listed first) is paused with
/// SIGSTOP for 25 s, longer than the agents' HTTP/2 keep-alive (a ping after 10 s, dead after
/// 5 s more) and the controllers' fast liveness timeouts, then resumed with SIGCONT. Its
/// sockets stay open and silent, as a hung host's would. The drones and the proxy move to `b`
/// (how long they take is a figure; the strict test below asserts a bound); the resumed
/// controller does no damage to the nodes: every drone is READY on both controllers within 5 s of
/// the resume and no node stays OFFLINE (2 s or more) in the 3 s after; the checker finds no
/// violation. The SDK clients
/// have a 3 s call deadline, so that a call the paused controller holds ends (DEADLINE_EXCEEDED,
/// which the SDK does not fail over; counted in the figures).
///
/// What this does not assert is what the ignored test below does: that no backend ends, and
/// that the agents leave the paused controller within 22 s.
// Two worker threads: the drones, the proxy and the load share the test's process, and on one
// thread their heartbeats (1.2 s offline threshold here) starve on a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_paused_past_the_liveness_timeouts_loses_its_agents_and_does_no_damage_when_resumed() {
    paused_controller(false).await;
}

/// The pause above, asserting that the drones and the proxy are on `b` within 22 s of the pause
/// (the keep-alive's 15 s, a reconnect, and slack), and that it ends no backend and fails no
/// proxied request to a READY keyed backend (what must hold while a controller is
/// down). It fails today, two ways.
///
/// 1. When the pause catches the controller inside a store transaction (often, on a loaded
///    machine), its PostgreSQL session stays "idle in transaction" holding the lock on the
///    `revision_counter` row, and every write of the other controller (an attach, a renewal, a
///    Connect) queues behind it until SIGCONT: seen in `pg_stat_activity` during a pause, the
///    paused session idle in transaction for 19 s and five of the other controller's
///    `UPDATE revision_counter` waiting on it. The drones leave the paused controller at 15 s
///    but their attach to the other one hangs ("Connecting"): in 6 of 14 runs a drone was not on
///    `b` 18–22 s after the pause. Nothing bounds such a transaction
///    (`idle_in_transaction_session_timeout`, a lock timeout).
/// 2. Even when the store is free, keyed backends end: the drones find the silent controller
///    dead only by their keep-alive, 10–15 s after the pause, while a keyed backend is
///    soft-terminated (KEY_EXPIRED) half a lease (15 s) after the send time of the last renewal
///    batch the controller confirmed, and batches go every third of a lease (10 s): a pause that
///    begins up to 10 s after a confirmed batch leaves the drone 5–15 s, less than its
///    keep-alive needs. Every keyed backend of the drones attached to the paused controller
///    ends, and the proxied requests to them fail.
///
/// Both are fixed: PostgreSQL ends a session idle in a transaction after 5 s, and a drone leaves a
/// controller that answers no renewal for a tenth of the lease
/// (docs/design/backends-and-leases.md#store-outages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_paused_past_the_liveness_timeouts_ends_no_backend() {
    paused_controller(true).await;
}

/// The pause scenario; `strict` asserts that no backend ended and no proxied request failed.
async fn paused_controller(strict: bool) {
    hangar_tests::init_logging();
    let pg = PgCluster::shared().await.unwrap();
    let database = pg.create_database().await.unwrap();
    let ControlPlane { a, b, controllers, proxy, .. } = control_plane(&database, |_| {}).await;
    let drones = [attached_drone(&controllers, "worker-1").await, attached_drone(&controllers, "worker-2").await];
    let options = hangar_client::ClientOptions { request_timeout: Duration::from_secs(3), ..Default::default() };
    let clients = failover_clients_with(&controllers, options);
    let on_a = HangarClient::connect(&a.url).await.unwrap();
    let on_b = HangarClient::connect(&b.url).await.unwrap();
    eventually(WAIT, "both drones READY on b", async || check(ready_drones(&on_b).await, |n| n.len() == 2)).await;
    let backend = hangar_executor::testing::test_backend_binary().display().to_string();
    let request = ConnectRequest::key("faults", "steady", "v1").spawn(SpawnSpec::new(backend));
    let connection = eventually(WAIT, "a Connect placed", async || on_b.connect_backend(&request).await).await;
    backend_ready(&on_b, &connection.backend_id).await;

    let load = SteadyLoad::start(clients, std::slice::from_ref(&connection));
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(a.child.id(), "STOP");
    let paused = Instant::now();
    // Every drone should leave the silent controller for b once its keep-alive gives up (≤ 15 s
    // after the pause). The bound on moving, measured from the pause; the pause outlasts it, so
    // that a drone does not go back to the resumed controller before it is seen on b. A drone
    // that has not moved by then is a failure of the strict test only (see its comment).
    let bound = Duration::from_secs(22);
    let mut moved = Some(Duration::ZERO);
    for (i, drone) in drones.iter().enumerate() {
        let mut state = drone.state();
        let on_b = tokio::time::timeout(
            bound.saturating_sub(paused.elapsed()),
            state.wait_for(|s| matches!(s, AttachState::Attached { controller, .. } if *controller == b.url)),
        )
        .await;
        if on_b.is_err() {
            let now = drone.state().borrow().clone();
            assert!(!strict, "drone {i} not attached to b {bound:?} after the pause: {now:?}");
            eprintln!("drone {i} not attached to b {bound:?} after the pause: {now:?}");
            moved = None;
        }
        moved = moved.map(|m| m.max(paused.elapsed()));
    }
    let survivor = format!("attached to {}", b.url);
    let readiness = proxy.readiness();
    let proxy_moved = holds_within(bound.saturating_sub(paused.elapsed()), async || {
        readiness.check().await.iter().any(|c| c.ok && c.detail.contains(&survivor))
    })
    .await
    .map(|()| paused.elapsed());
    assert!(!strict || proxy_moved.is_some(), "the proxy not attached to b {bound:?} after the pause");
    tokio::time::sleep(Duration::from_secs(25).saturating_sub(paused.elapsed())).await;
    signal(a.child.id(), "CONT");
    let resumed = Instant::now();
    // The resumed controller still believes it holds both drones until its first look at the
    // store: soon after, both are READY again as seen by either controller. Typically within
    // 50 ms; once in CI, with a neighbour test resuming its own paused controller on the same
    // two cores, a's first answer took over 5 s. So each look is cut off after 2 s and tried
    // again, and the whole wait is 10 s.
    for (name, client) in [("a", &on_a), ("b", &on_b)] {
        eventually(Duration::from_secs(10), &format!("both drones READY on {name} after the resume"), async || {
            let Ok(listed) = tokio::time::timeout(Duration::from_secs(2), ready_drones(client)).await else {
                return Err(vec!["(no answer within 2 s)".to_string()]);
            };
            check(listed, |n| n.len() == 2)
        })
        .await;
    }
    let ready_again = resumed.elapsed();
    // And no node (drone or proxy) stays OFFLINE: a verdict the resumed controller reached
    // before it stopped must not stick. A node attached elsewhere may read OFFLINE for one
    // refresh interval (800 ms here, docs/design/faults.md#sweep-decisions-apply-only-to-what-they-read),
    // and an agent on a loaded machine may re-attach once; so each node's longest OFFLINE span
    // over 3 s, sampled every 100 ms on both controllers, must stay under 2 s.
    let mut offline_since = std::collections::BTreeMap::<(String, &str), Instant>::new();
    let mut longest = std::collections::BTreeMap::<(String, &str), Duration>::new();
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        for (name, client) in [("a", &on_a), ("b", &on_b)] {
            let offline = nodes_in(client, NodeState::Offline).await;
            offline_since.retain(|(node, on), _| *on != name || offline.contains(node));
            for node in offline {
                let since = *offline_since.entry((node.clone(), name)).or_insert_with(Instant::now);
                let span = longest.entry((node, name)).or_default();
                *span = (*span).max(since.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stuck: Vec<_> = longest.iter().filter(|(_, span)| **span >= Duration::from_secs(2)).collect();
    assert!(stuck.is_empty(), "nodes OFFLINE for 2 s or more after the resume (node, on controller): {stuck:?}");
    let (load, sent, failed) = load.stop_traffic().await;
    let steady = on_b.get_backend(&connection.backend_id).await.unwrap();
    on_b.terminate_backend(&connection.backend_id, false).await.unwrap();
    let (failures, history) = load.finish_history(&on_b).await;
    let ended: Vec<String> = [ended_with(&history, "Lost"), ended_with(&history, "KeyExpired")].concat();
    eprintln!(
        "controller paused 25 s from 2 s: drones on b {moved:?} after the pause (None: not within {bound:?}), \
         proxy {proxy_moved:?}; both drones \
         READY on both {ready_again:?} after the resume; {} of {sent} proxied requests failed; the steady backend \
         {:?} ({:?}); backends of the load ended LOST or KEY_EXPIRED: {ended:?}; failures by call and code: \
         {failures:?}",
        failed.len(),
        steady.state,
        steady.status.termination_reason,
    );
    print_figures("controller-pause", Some(&failures), Some((failed.len(), sent)), moved, None);
    if strict {
        assert_eq!(steady.state, BackendState::Ready, "the keyed backend ended during the pause: {steady:?}");
        assert!(ended.is_empty(), "backends ended because of the pause: {ended:?}");
        let first: Vec<_> = failed.iter().take(5).collect();
        assert!(
            failed.is_empty(),
            "{} proxied requests failed while a controller was paused, first: {first:?}",
            failed.len()
        );
    }
    proxy.shutdown().await;
    for drone in drones {
        drone.shutdown().await;
    }
}

/// A drone process reaches both controllers only through a relay each; it takes the load's
/// keys (it is the only drone when the load starts), a second drone joins, then both relays are
/// cut (every connection reset, new ones refused) for longer than the key lease while the drone
/// keeps its backends' network. The design (docs/design/backends-and-leases.md#key-leases-and-fencing):
/// the drone stops its keyed backends at half the lease without a confirmed renewal, before the
/// controller's lease runs out and a later Connect starts the key on the other drone with a
/// higher fencing token. The observer polls every backend through the proxy throughout, so the
/// checker sees two owners at once if the cut drone's backend still serves when the new one
/// does. Healed, the drone attaches again and is READY.
#[tokio::test]
async fn a_drone_cut_off_from_every_controller_past_the_key_lease_stops_its_keys_before_they_move() {
    hangar_tests::init_logging();
    let pg = PgCluster::shared().await.unwrap();
    let database = pg.create_database().await.unwrap();
    let ControlPlane { a: _a, b: _b, controllers, proxy, .. } = control_plane(&database, |_| {}).await;
    let mut relays = Vec::new();
    for url in &controllers {
        relays.push(Relay::start(url.trim_start_matches("http://").parse().unwrap()).await.unwrap());
    }
    let relayed: Vec<String> = relays.iter().map(Relay::url).collect();
    let journal = tempfile::tempdir().unwrap();
    let _cut = drone_process(&relayed, "cut", journal.path());
    let clients = failover_clients(&controllers);
    let client = clients.lock().unwrap()[0].clone();
    eventually(WAIT, "the relayed drone READY", async || check(ready_drones(&client).await, |n| n.len() == 1)).await;

    let load = Load::start(clients);
    // Every key of the load held by the relayed drone, READY.
    let mut held = std::collections::BTreeMap::new();
    for k in 0..KEYS {
        let key = format!("k{k}");
        let (backend_id, token) =
            eventually(WAIT, "a Connect on the relayed drone", async || load.connect(&client, &key).await).await;
        held.insert(key, (backend_id, token));
    }
    for (backend_id, _) in held.values() {
        eventually(WAIT, "the relayed drone's backend READY", async || {
            check(client.get_backend(backend_id).await.unwrap().state, |s| *s == BackendState::Ready)
        })
        .await;
    }
    let other = attached_drone(&controllers, "other").await;
    let other_id = other.attached().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cut_at = load.recorder.now();
    for relay in &relays {
        relay.cut();
    }
    let cut = Instant::now();
    eventually(Duration::from_secs(5), "the cut drone not READY", async || {
        check(ready_drones(&client).await, |n| !n.iter().any(|n| n == "cut"))
    })
    .await;
    // Each key moves to the other drone, with a higher token, once the controller's lease ran
    // out (at most a lease after the cut, since the drone renewed before it) and a sweep freed it.
    let mut moved = std::collections::BTreeMap::new();
    for (key, (old_id, old_token)) in &held {
        // Asked every 250 ms (each ask is a recorded Connect): the key moves within seconds of
        // the lease's end, and a tighter loop would only load the controllers.
        let moves = (LEASE + WAIT).saturating_sub(cut.elapsed());
        let (new_id, new_token) =
            eventually_every(moves, Duration::from_millis(250), &format!("{key} moved"), async || {
                load.connect(&client, key)
                    .await
                    .map_err(|err| format!("{err:?}"))
                    .and_then(|(id, token)| if id == *old_id { Err(format!("still on {id}")) } else { Ok((id, token)) })
            })
            .await;
        let new = client.get_backend(&new_id).await.unwrap();
        assert_eq!(new.drone_id, other_id, "{key} moved to the drone that is not cut off");
        assert!(new_token > *old_token, "{key}'s new holder has a higher token: {new_token} after {old_token}");
        moved.insert(key.clone(), cut.elapsed());
    }
    let keys_moved = cut.elapsed();
    for relay in &relays {
        relay.heal();
    }
    let healed = Instant::now();
    eventually(WAIT, "the healed drone READY", async || {
        check(ready_drones(&client).await, |n| n.iter().any(|n| n == "cut"))
    })
    .await;
    let ready_again = healed.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (failures, history) = load.finish_history(&client).await;
    // The cut drone's backends were seen serving last before any later holder of their key was
    // seen first: the checker checks that for every key; this says by how much.
    let lives = |id: &str| history.lives.iter().find(|l| l.backend_id == id).cloned();
    let mut by_lease = 0;
    for (key, (old_id, _)) in &held {
        let reason = history.finals.iter().find(|f| f.backend_id == *old_id).and_then(|f| f.reason.clone());
        let last_seen = lives(old_id).and_then(|l| l.ended).map(|ended| ended.saturating_sub(cut_at));
        eprintln!(
            "{key}: the cut drone's backend ended {reason:?}, last seen serving {last_seen:?} after the cut; the key \
             moved {:?} after the cut",
            moved[key]
        );
        // The load terminates every seventh backend it is answered: one of these may have been
        // asked to end (EXTERNAL) before the cut. The others end by their lease: KEY_EXPIRED on
        // the drone, or LOST when a controller swept the key while the drone was away.
        if reason.as_deref() == Some("External") {
            continue;
        }
        assert!(matches!(reason.as_deref(), Some("KeyExpired" | "Lost")), "{old_id} ended by its lease: {reason:?}");
        // The drone stops it at half the lease after its last confirmed renewal (before the
        // cut), well before the key moved.
        let last_seen = last_seen.expect("the cut drone's backend seen serving");
        assert!(last_seen < LEASE / 2 + Duration::from_secs(3), "{key}'s backend served {last_seen:?} into the cut");
        by_lease += 1;
    }
    assert!(by_lease >= 1, "at least one of the cut drone's backends ended by its lease");
    let answered = history.connects.iter().filter(|c| matches!(c.outcome, ConnectOutcome::Ok { .. })).count();
    eprintln!(
        "{answered} Connects answered; every key moved {keys_moved:?} after the cut; the healed drone READY {ready_again:?} \
         after the heal; failures by call and code: {failures:?}"
    );
    print_figures("drone-cut-off", Some(&failures), None, Some(ready_again), Some(keys_moved));
    proxy.shutdown().await;
    other.shutdown().await;
}

/// libfaketime (Debian's `faketime` package; scripts/test installs it), preloaded into a
/// process rather than run through the `faketime` wrapper: the wrapper forks, and killing it
/// would leave the drone running.
fn libfaketime() -> std::path::PathBuf {
    let dirs = ["/usr/lib/x86_64-linux-gnu/faketime", "/usr/lib/aarch64-linux-gnu/faketime", "/usr/lib/faketime"];
    dirs.iter()
        .map(|dir| std::path::Path::new(dir).join("libfaketime.so.1"))
        .find(|path| path.exists())
        .expect("libfaketime.so.1 (Debian's faketime package; scripts/test installs it)")
}

/// `command` with its clock moved by `offset` (`+5s`, `-5s`): wall clock and monotonic clock.
fn skewed<'a>(command: &'a mut std::process::Command, offset: &str) -> &'a mut std::process::Command {
    command.env("LD_PRELOAD", libfaketime()).env("FAKETIME", offset)
}

/// How far `offset` moves a child's wall clock on this host, in seconds (`date +%s` under it):
/// proves the preload works here before a scenario relies on it.
fn faketime_skew(offset: &str) -> i64 {
    let output = skewed(std::process::Command::new("date").arg("+%s"), offset).output().unwrap();
    assert!(output.status.success(), "date under libfaketime {offset}: {output:?}");
    let skewed: i64 = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    skewed - now
}

/// Two drone processes whose clocks are off by +5 s and -5 s (libfaketime: wall clock and
/// monotonic clock alike), under the Connect load for longer than a renewal period (a third of
/// the lease), so that every key the load keeps is renewed at least once from a skewed drone.
/// The drone counts its lease on its monotonic clock from the send time of the renewal that
/// confirmed it, and the controller its expiry on its own clock: a skew of the drone's clock
/// moves neither. No backend ends KEY_EXPIRED, and the checker finds no key with two owners.
#[tokio::test]
async fn drones_with_clocks_five_seconds_off_keep_their_leases_and_fencing() {
    hangar_tests::init_logging();
    let (ahead, behind) = (faketime_skew("+5s"), faketime_skew("-5s"));
    assert!((4..=6).contains(&ahead) && (-6..=-4).contains(&behind), "faketime skews: {ahead} s and {behind} s");
    let pg = PgCluster::shared().await.unwrap();
    let database = pg.create_database().await.unwrap();
    let ControlPlane { a: _a, b: _b, controllers, proxy, .. } = control_plane(&database, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let drone = |offset: &str, name: &str| {
        let mut command = drone_command(&controllers, name, &dir.path().join(name));
        Process::spawn(skewed(&mut command, offset).args(["--runtime", "process"]))
    };
    let _drones = [drone("+5s", "ahead"), drone("-5s", "behind")];
    let clients = failover_clients(&controllers);
    let client = clients.lock().unwrap()[0].clone();
    eventually(WAIT, "both skewed drones READY", async || check(ready_drones(&client).await, |n| n.len() == 2)).await;

    let started = Instant::now();
    let load = Load::start(clients);
    // Past one renewal period (lease / 3) and a half: every key held that long was renewed.
    tokio::time::sleep(LEASE / 3 + Duration::from_secs(5)).await;
    // A key held across the whole run, renewed by a skewed drone: still held, same backend.
    let (held_id, _) = load.connect(&client, "held").await.unwrap();
    let held_since = Instant::now();
    tokio::time::sleep(LEASE / 3 + Duration::from_secs(2)).await;
    let (still_id, _) = load.connect(&client, "held").await.unwrap();
    let held = held_since.elapsed();
    let (failures, history) = load.finish_history(&client).await;
    let expired = ended_with(&history, "KeyExpired");
    let answered = history.connects.iter().filter(|c| matches!(c.outcome, ConnectOutcome::Ok { .. })).count();
    eprintln!(
        "drones {ahead:+} s and {behind:+} s off; {answered} Connects answered over {:?}; backends ended KEY_EXPIRED: \
         {expired:?}; failures by call and code: {failures:?}",
        started.elapsed()
    );
    print_figures("clock-skew", Some(&failures), None, None, None);
    assert_eq!(still_id, held_id, "the key held {held:?} across a renewal by a skewed drone kept its backend");
    assert!(expired.is_empty(), "backends ended KEY_EXPIRED on skewed drones: {expired:?}");
    proxy.shutdown().await;
}
