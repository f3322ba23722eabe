//! Faults across hosts: the cluster of `scripts/cluster` (PostgreSQL, two controllers, three
//! drones on the process runtime, or on the Docker runtime in one variant, and two proxies, each
//! its own container and address on a private network) under the Connect/terminate load and the observer of `hangar_tests::faults`,
//! its history read by the checker. Links are cut with iptables inside a node's network
//! namespace, so a cut is a real partition between two hosts while every other link still
//! works: a drone cut off from both controllers still serves its backends to both proxies, which
//! is what the in-process scenarios of `faults_liveness.rs` can only imitate with relays.
//! Controllers die with `docker kill` (SIGKILL to every process of the host) and come back with
//! `docker start` on the same address.
//!
//! What each scenario asserts is in docs/design/faults.md#across-hosts; `scripts/chaos` runs
//! them several times with the others.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hangar::domain::{BackendState, NodeFilter, NodeKind, NodeState, TerminationReason};
use hangar_client::HangarClient;
use hangar_testkit::history::ConnectOutcome;
use hangar_testkit::{check, eventually, eventually_every};
use hangar_tests::containers::{Cluster, Image, docker};
use hangar_tests::faults::{
    KEYS, Load, SteadyLoad, WAIT, backend_ready, failover_clients, print_figures, store_revision,
};

/// Where the test backend is copied into every drone's container: what the load's backends run.
const BACKEND: &str = "/usr/local/bin/hangar-test-backend";

/// The key lease the controllers run with: short, so that a key moves within the scenario.
const LEASE: Duration = Duration::from_secs(12);

/// The controllers' liveness settings and lease: a node missing for 6 s is OFFLINE.
const CONTROLLER_ARGS: &str = "--lease-duration 12s --heartbeat-interval 1s --unhealthy-after 3s --offline-after 6s";

/// How the cluster's drones run their backends.
#[derive(Clone, Copy, PartialEq)]
enum Runtime {
    /// As processes in the drone's own container, reported at the drone's address.
    Process,
    /// As containers of the host's engine on the cluster's network, at addresses of the drone's
    /// own slice (`HANGAR_CLUSTER_DRONE_RUNTIME=docker`): a drone cut off from the controllers
    /// leaves its backends' own network untouched.
    Docker,
}

/// The cluster, its controllers' gRPC URLs, what its backends run, and the image it runs
/// (removed last).
struct Hosts {
    cluster: Cluster,
    controllers: Vec<String>,
    /// The load's spawn image: the test backend's path in the drones' containers, or its image.
    backend: String,
    _image: Image,
}

impl Hosts {
    /// Builds the image and starts the cluster, its drones on `runtime`; for the process runtime,
    /// copies the test backend into every drone's container. `None` (after a loud SKIP line)
    /// when no Docker engine answers and `HANGAR_REQUIRE_DOCKER` is not set.
    async fn up(test: &str, prefix: &str, runtime: Runtime) -> Option<Hosts> {
        if !hangar_tests::docker_available(test).await {
            return None;
        }
        hangar_tests::init_logging();
        let image = Image::build(prefix);
        let mut env = vec![("HANGAR_CLUSTER_CONTROLLER_ARGS", CONTROLLER_ARGS)];
        if runtime == Runtime::Docker {
            env.push(("HANGAR_CLUSTER_DRONE_RUNTIME", "docker"));
        }
        let cluster = Cluster::up(prefix, &image, 120, &env);
        let backend = match runtime {
            Runtime::Process => {
                let binary = hangar_executor::testing::test_backend_binary().display().to_string();
                for drone in ["drone-1", "drone-2", "drone-3"] {
                    docker(&["cp", &binary, &format!("{}:{BACKEND}", cluster.container(drone))]);
                }
                BACKEND.to_string()
            }
            Runtime::Docker => tokio::task::spawn_blocking(hangar_executor::testing::test_image).await.unwrap().into(),
        };
        let controllers = cluster.controllers();
        Some(Hosts { cluster, controllers, backend, _image: image })
    }

    /// Drops every packet between `node` and each of `peers`, both ways, with iptables in
    /// `node`'s network namespace (the other links of both stay up).
    fn cut(&self, node: &str, peers: &[&str]) {
        self.rules("-I", node, peers);
    }

    /// What `node`'s processes wrote to stdout and stderr (`docker logs`).
    fn logs(&self, node: &str) -> String {
        let output = std::process::Command::new("docker")
            .args(["logs", &self.cluster.container(node)])
            .output()
            .expect("docker logs");
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    }

    /// Removes what [`Hosts::cut`] added.
    fn heal(&self, node: &str, peers: &[&str]) {
        self.rules("-D", node, peers);
    }

    fn rules(&self, op: &str, node: &str, peers: &[&str]) {
        for peer in peers {
            let ip = self.cluster.ip(peer);
            for (chain, direction) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
                let output = self.cluster.netns(node, &["iptables", op, chain, direction, ip, "-j", "DROP"]);
                assert!(output.status.success(), "iptables {op} {chain} {direction} {ip} in {node}'s namespace");
            }
        }
    }
}

/// Every READY node `client` lists, by name, with the controller it is attached to.
async fn ready_nodes(client: &HangarClient) -> BTreeMap<String, (NodeKind, String)> {
    let filter = NodeFilter { states: vec![NodeState::Ready], ..Default::default() };
    let nodes = client.list_all_nodes(&filter).await.map(|l| l.nodes).unwrap_or_default();
    nodes.into_iter().map(|n| (n.name, (n.kind, n.controller_id))).collect()
}

/// Waits (up to `within`) until `client` lists all five nodes READY and attached to one
/// controller that `accept` takes (by its id); that id, and how long the wait took.
async fn all_attached(
    client: &HangarClient,
    within: Duration,
    what: &str,
    accept: impl Fn(&str) -> bool,
) -> (String, Duration) {
    let since = Instant::now();
    let nodes = eventually(within, what, async || {
        check(ready_nodes(client).await, |nodes| {
            let first = nodes.values().next().map(|(_, c)| c.as_str()).unwrap_or_default();
            nodes.len() == 5 && accept(first) && nodes.values().all(|(_, c)| c == first)
        })
    })
    .await;
    (nodes.into_values().next().unwrap().1, since.elapsed())
}

/// drone-N cut off from both controllers (iptables in its namespace) for longer than the key
/// lease, while both proxies still reach it: the drone stops its keyed backends at half the
/// lease without a confirmed renewal (KEY_EXPIRED), before the controllers' lease runs out and a
/// later Connect starts each key on another drone with a higher fencing token. The observer polls
/// every backend through the proxies throughout, over links the cut left up, so the checker
/// would see two owners at once if the cut drone's backend served after its successor began.
/// Healed, the drone is READY again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drone_host_cut_off_from_both_controllers_stops_its_keys_before_they_move_and_returns_when_healed() {
    let test = "a_drone_host_cut_off_from_both_controllers_stops_its_keys_before_they_move_and_returns_when_healed";
    drone_cut_off(test, "cut", Runtime::Process).await;
}

/// The same with drones on the Docker runtime: the backends are containers of the host's engine
/// on the cluster's network, which the drone drives through the engine's socket and stops when
/// its key lease runs short, while the proxies reach them at their own addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_drone_host_cut_off_from_both_controllers_stops_its_containers_before_their_keys_move() {
    let test = "a_docker_drone_host_cut_off_from_both_controllers_stops_its_containers_before_their_keys_move";
    drone_cut_off(test, "dcut", Runtime::Docker).await;
}

async fn drone_cut_off(test: &str, prefix: &str, runtime: Runtime) {
    let Some(hosts) = Hosts::up(test, prefix, runtime).await else { return };
    let scenario = match runtime {
        Runtime::Process => "hosts-drone-cut-off",
        Runtime::Docker => "hosts-docker-drone-cut-off",
    };
    let clients = failover_clients(&hosts.controllers);
    let client = clients.lock().unwrap()[0].clone();
    let load = Load::start_with(clients, hosts.backend.clone());
    // Keys of the scenario's own, next to the load's (which it terminates now and then): only
    // their lease ends these backends.
    let mut held = BTreeMap::new();
    for k in 0..KEYS {
        let key = format!("held-{k}");
        let (backend_id, token) = eventually(WAIT, &format!("{key} held by a READY backend"), async || {
            let (id, token) = load.connect(&client, &key).await.map_err(|err| format!("{err:?}"))?;
            let state = client.get_backend(&id).await.map_err(|err| format!("{err:?}"))?.state;
            if state == BackendState::Ready { Ok((id, token)) } else { Err(format!("{id} {state:?}")) }
        })
        .await;
        held.insert(key, (backend_id, token));
    }
    // The drone that holds held-0 is cut off; the keys it holds are the ones that must move.
    let victim_id = client.get_backend(&held["held-0"].0).await.unwrap().drone_id;
    let nodes = client.list_all_nodes(&NodeFilter::default()).await.unwrap().nodes;
    let victim = nodes.iter().find(|n| n.id == victim_id).expect("k0's drone listed").name.clone();
    let mut on_victim = BTreeMap::new();
    for (key, (backend_id, token)) in &held {
        if client.get_backend(backend_id).await.unwrap().drone_id == victim_id {
            on_victim.insert(key.clone(), (backend_id.clone(), *token));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cut_at = load.recorder.now();
    hosts.cut(&victim, &["ctl-1", "ctl-2"]);
    let cut = Instant::now();
    // OFFLINE after 6 s without a heartbeat (CONTROLLER_ARGS); the controllers notice sooner when
    // the stream's keep-alive gives up.
    eventually(Duration::from_secs(20), "the cut drone not READY", async || {
        check(ready_nodes(&client).await, |n| !n.contains_key(&victim))
    })
    .await;
    let not_ready = cut.elapsed();
    let mut moved = BTreeMap::new();
    for (key, (old_id, old_token)) in &on_victim {
        let moves = (LEASE + WAIT).saturating_sub(cut.elapsed());
        let (new_id, new_token) =
            eventually_every(moves, Duration::from_millis(250), &format!("{key} moved"), async || {
                // The load ends backends of its own now and then, so a key may have a new holder
                // on the cut drone placed just before the cut: moved means held elsewhere.
                let (id, token) = load.connect(&client, key).await.map_err(|err| format!("{err:?}"))?;
                let drone = client.get_backend(&id).await.map_err(|err| format!("{err:?}"))?.drone_id;
                if drone == victim_id { Err(format!("{id} on the cut drone")) } else { Ok((id, token)) }
            })
            .await;
        assert_ne!(new_id, *old_id);
        assert!(new_token > *old_token, "{key}'s new holder has a higher token: {new_token} after {old_token}");
        moved.insert(key.clone(), cut.elapsed());
    }
    let keys_moved = cut.elapsed();
    // A key the load ended itself moves at once; the cut drone is OFFLINE 6 s after its last
    // heartbeat (CONTROLLER_ARGS) and stays so until the heal.
    eventually(Duration::from_secs(15), &format!("{victim} OFFLINE before the heal"), async || {
        let listed = client.list_all_nodes(&NodeFilter::default()).await.map_err(|err| format!("{err:?}"))?.nodes;
        let state = listed.iter().find(|n| n.name == victim).map(|n| n.state);
        if state == Some(NodeState::Offline) { Ok(()) } else { Err(format!("{state:?}")) }
    })
    .await;
    hosts.heal(&victim, &["ctl-1", "ctl-2"]);
    let healed = Instant::now();
    eventually(WAIT, "the healed drone READY", async || check(ready_nodes(&client).await, |n| n.contains_key(&victim)))
        .await;
    let ready_again = healed.elapsed();
    // Back, the drone reports how it ended each of its keyed backends: KEY_EXPIRED, which
    // replaces the LOST a controller recorded while it could not be heard.
    for (old_id, _) in on_victim.values() {
        eventually(WAIT, &format!("{old_id}'s end reported by its drone"), async || {
            let backend = client.get_backend(old_id).await.unwrap();
            let reason = backend.status.termination_reason;
            check(backend, |_| !matches!(reason, Some(TerminationReason::Lost) | None))
        })
        .await;
    }
    let (failures, history) = load.finish_history(&client).await;
    let lives = |id: &str| history.lives.iter().find(|l| l.backend_id == id).cloned();
    let drone_log = hosts.logs(&victim);
    assert!(on_victim.contains_key("held-0"));
    for (key, (old_id, _)) in &on_victim {
        let reason = history.finals.iter().find(|f| f.backend_id == *old_id).and_then(|f| f.reason.clone());
        let last_seen = lives(old_id).and_then(|l| l.ended).map(|ended| ended.saturating_sub(cut_at));
        eprintln!(
            "{key}: the cut drone's ({victim}) backend ended {reason:?}, last seen serving through a proxy \
             {last_seen:?} after the cut; the key moved {:?} after the cut",
            moved[key]
        );
        // Each ends by its lease: the drone stops it itself (KEY_EXPIRED, in its own log and,
        // once it is back, in the record).
        assert_eq!(reason.as_deref(), Some("KeyExpired"), "{old_id} ended by its lease");
        assert!(
            drone_log.lines().any(|l| l.contains(old_id) && l.contains("no key renewal confirmed for half the lease")),
            "{victim} stopped {old_id} itself for its key lease (KEY_EXPIRED); its log:\n{drone_log}"
        );
        // Seen serving after the cut: the proxies reached it across the partition, until the
        // drone stopped it at half a lease after its last confirmed renewal.
        let last_seen = last_seen.expect("the cut drone's backend seen serving");
        assert!(last_seen > Duration::ZERO, "{key}'s backend served on after the cut (the proxies still reach it)");
        assert!(last_seen < LEASE / 2 + Duration::from_secs(3), "{key}'s backend served {last_seen:?} into the cut");
    }
    let answered = history.connects.iter().filter(|c| matches!(c.outcome, ConnectOutcome::Ok { .. })).count();
    eprintln!(
        "{answered} Connects answered; {victim} not READY {not_ready:?} after the cut; its keys moved {keys_moved:?} \
         after the cut; READY again {ready_again:?} after the heal; failures by call and code: {failures:?}"
    );
    print_figures(scenario, Some(&failures), None, Some(ready_again), Some(keys_moved));
}

/// Under the load and steady HTTP traffic through both proxies to a READY backend: ctl-1 is cut
/// off from PostgreSQL (iptables in its namespace) while every drone and proxy is attached to
/// it, and every node moves to ctl-2; healed, ctl-2's host is killed (`docker kill`) and every
/// node is attached to ctl-1 within 5 s; ctl-2 is started again. Through both faults no proxied
/// request and no SDK call fails, and the history passes the checker, the node watchers on both
/// controllers (each resuming on the other when its own fails) included: none missed, repeated
/// or reordered a change of the store's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_host_cut_off_from_postgresql_then_another_killed_fails_no_call_and_no_request() {
    let test = "a_controller_host_cut_off_from_postgresql_then_another_killed_fails_no_call_and_no_request";
    let Some(hosts) = Hosts::up(test, "ctl", Runtime::Process).await else { return };
    let clients = failover_clients(&hosts.controllers);
    let on_first = HangarClient::connect(&hosts.controllers[0]).await.unwrap();
    let on_second = HangarClient::connect(&hosts.controllers[1]).await.unwrap();
    // The drones and proxies are given ctl-1 first: all attach there, and the id they carry is
    // ctl-1's (a controller's id is not configured; it is made at start-up). Were they on ctl-2,
    // the partition below would move none of them and the test would fail.
    let (first, _) = all_attached(&on_second, WAIT, "every node attached to one controller", |_| true).await;

    // One backend, reached through both proxies (ctl-1's Connect URLs name proxy-1, ctl-2's
    // proxy-2), and a node watcher on each controller that resumes on the other when its own
    // fails: the checker compares what each received with the store's log.
    let mut load = Load::start_with(clients, BACKEND.to_string());
    let from = store_revision(&hosts.controllers[0]).await;
    load.watch_nodes("on-ctl-1", from, &hosts.controllers[0], &hosts.controllers);
    load.watch_nodes("on-ctl-2", from, &hosts.controllers[1], &hosts.controllers);
    let steady = eventually(WAIT, "the steady Connect", async || {
        let request = hangar_client::ConnectRequest::key("faults", "steady", "v1")
            .spawn(hangar_client::SpawnSpec::new(BACKEND.to_string()));
        on_first.connect_backend(&request).await
    })
    .await;
    backend_ready(&on_first, &steady.backend_id).await;
    let request = hangar_client::ConnectRequest::key("faults", "steady", "v1");
    let again = on_second.connect_backend(&request).await.unwrap();
    assert_eq!(again.backend_id, steady.backend_id);
    assert_ne!(again.url, steady.url, "the second URL is on the other proxy");
    let load = SteadyLoad::with(load, &[steady.clone(), again]);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // ctl-1 loses PostgreSQL: its health says so within seconds, and every node moves to ctl-2.
    hosts.cut("ctl-1", &["postgres"]);
    let partitioned = Instant::now();
    let (_, moved_off_partition) =
        all_attached(&on_second, WAIT, "every node attached to ctl-2 during the partition", |c| c != first).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    hosts.heal("ctl-1", &["postgres"]);
    let partition = partitioned.elapsed();
    eventually(WAIT, "ctl-1 lists every node READY after the heal", async || {
        check(ready_nodes(&on_first).await, |n| n.len() == 5)
    })
    .await;

    // ctl-2, which every node is attached to now, dies with its host.
    tokio::time::sleep(Duration::from_secs(2)).await;
    docker(&["kill", &hosts.cluster.container("ctl-2")]);
    let killed = Instant::now();
    let within = Duration::from_secs(5);
    let (_, moved_off_dead) =
        all_attached(&on_first, within, "every node attached to ctl-1 within 5 s", |c| c == first).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    docker(&["start", &hosts.cluster.container("ctl-2")]);
    eventually(WAIT, "the restarted ctl-2 lists every node READY", async || {
        check(ready_nodes(&on_second).await, |n| n.len() == 5)
    })
    .await;
    let down = killed.elapsed();
    let connect_after =
        hangar_tests::faults::first_new_connect(&on_second, BACKEND, Instant::now(), "ctl-2's restart").await;

    let (load, sent, failed) = load.stop_traffic().await;
    let (failures, history) = load.finish_history(&on_first).await;
    for watcher in &history.watchers {
        assert!(
            watcher.until > watcher.from && !watcher.received.is_empty(),
            "the watcher {} received the nodes' changes: {watcher:?}",
            watcher.watcher
        );
    }
    eprintln!(
        "ctl-1 cut off from PostgreSQL for {partition:?}: every node on ctl-2 {moved_off_partition:?} after the cut; \
         ctl-2 killed for {down:?}: every node on ctl-1 {moved_off_dead:?} after the kill; a new Connect through the \
         restarted ctl-2 in {connect_after:?}; {} of {sent} proxied requests failed; failed calls: {failures:?}",
        failed.len()
    );
    print_figures(
        "hosts-controller-partition",
        Some(&failures),
        Some((failed.len(), sent)),
        Some(moved_off_partition),
        None,
    );
    print_figures(
        "hosts-controller-kill",
        Some(&failures),
        Some((failed.len(), sent)),
        Some(moved_off_dead),
        Some(connect_after),
    );
    let first_failed: Vec<_> = failed.iter().take(5).collect();
    assert!(failed.is_empty(), "{} of {sent} proxied requests failed, first: {first_failed:?}", failed.len());
    assert!(failures.is_empty(), "SDK calls failed: {failures:?}");
}
