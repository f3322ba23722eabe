//! The controller's side of the backend lifecycle, driven through the real gRPC API with drones
//! and proxies played by hand over the real DroneService and ProxyService streams.

use hangar::domain::duration_from_proto;
use hangar::error::{error_info, reason};
use hangar::v1::{
    self, BackendState, backend_service_client::BackendServiceClient, drone_action::Action,
    drone_attach_request::Message as Req, drone_attach_response::Message as Reply,
};
use hangar_server::api::BackendSettings;
use hangar_server::controller::ControllerConfig;
use hangar_testkit::{check, eventually};
use hangar_tests::{ManualDrone, ManualProxy, TestCluster, drone_hello, status, test_config};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(5);

fn config_with(backends: BackendSettings) -> ControllerConfig {
    ControllerConfig { proxy_url: "http://proxy.test:7080".into(), backends, ..test_config() }
}

fn fast_backends() -> BackendSettings {
    BackendSettings {
        sweep_interval: Duration::from_millis(100),
        watch_poll: Duration::from_millis(200),
        ..Default::default()
    }
}

async fn cluster() -> TestCluster {
    TestCluster::sqlite_with(config_with(fast_backends())).await
}

async fn backends(cluster: &TestCluster) -> BackendServiceClient<Channel> {
    BackendServiceClient::new(cluster.channel().await)
}

fn spawn_config(env: &[(&str, &str)]) -> v1::SpawnConfig {
    v1::SpawnConfig {
        executable: Some(v1::Executable {
            image: "hangar/test-backend:1".into(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn key(name: &str, tag: &str) -> Option<v1::BackendKey> {
    Some(v1::BackendKey { namespace: "docs".into(), name: name.into(), tag: tag.into() })
}

fn connect_request(key: Option<v1::BackendKey>, config: Option<v1::SpawnConfig>) -> v1::ConnectRequest {
    v1::ConnectRequest { key, spawn_config: config, user: "alice".into(), auth: Default::default() }
}

/// A drone that heartbeats in the background; the handle stops it.
async fn drone(cluster: &TestCluster, name: &str, capacity: u32) -> (ManualDrone, tokio::task::JoinHandle<()>) {
    let mut hello = drone_hello(name);
    hello.backend_capacity = capacity;
    let drone = ManualDrone::attach(&cluster.url(), hello).await.expect("attach");
    let beat = drone.keep_alive(Duration::from_millis(50));
    (drone, beat)
}

async fn get(client: &mut BackendServiceClient<Channel>, id: &str) -> v1::Backend {
    client
        .get_backend(v1::GetBackendRequest { id: id.into() })
        .await
        .expect("get backend")
        .into_inner()
        .backend
        .unwrap()
}

fn state_of(backend: &v1::Backend) -> BackendState {
    BackendState::try_from(backend.status.as_ref().unwrap().state).unwrap()
}

async fn wait_for_state(client: &mut BackendServiceClient<Channel>, id: &str, state: BackendState) -> v1::Backend {
    eventually(WAIT, &format!("backend {id} {state:?}"), async || {
        check(get(client, id).await, |b| state_of(b) == state)
    })
    .await
}

fn spawn_of(action: &v1::DroneAction) -> &v1::SpawnBackend {
    match action.action.as_ref() {
        Some(Action::Spawn(spawn)) => spawn,
        other => panic!("expected a spawn, got {other:?}"),
    }
}

fn terminate_of(action: &v1::DroneAction) -> &v1::TerminateBackend {
    match action.action.as_ref() {
        Some(Action::Terminate(t)) => t,
        other => panic!("expected a terminate, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_schedules_onto_the_drone_with_room_and_sends_a_spawn_with_env_and_fencing_token() {
    let cluster = cluster().await;
    let mut client = backends(&cluster).await;
    let (mut small, small_beat) = drone(&cluster, "small", 1).await;
    let first = client.connect(connect_request(None, Some(spawn_config(&[])))).await.unwrap().into_inner();
    assert!(first.spawned);
    assert_eq!(first.backend.as_ref().unwrap().drone_id, small.node_id);
    let first_action = small.next_action(WAIT).await;
    assert_eq!(first_action.backend_id, first.backend_id);
    assert!(first_action.action_id.starts_with("act-"));

    let (mut big, big_beat) = drone(&cluster, "big", 5).await;
    let started = Instant::now();
    let response = client
        .connect(connect_request(key("doc-1", "v1"), Some(spawn_config(&[("MODE", "test")]))))
        .await
        .unwrap()
        .into_inner();
    println!("Connect (spawn) latency over gRPC on SQLite: {:?}", started.elapsed());
    assert!(response.spawned);
    assert!(response.backend_id.starts_with("bk-"));
    assert_eq!(response.backend.as_ref().unwrap().drone_id, big.node_id, "the full drone is skipped");
    assert_eq!(response.url, format!("http://proxy.test:7080/{}/", response.token));
    assert!(response.token.len() >= 43, "32 random bytes, base64url");
    assert!(response.token_expires_at.is_some());
    assert_eq!(BackendState::try_from(response.status.as_ref().unwrap().state).unwrap(), BackendState::Scheduled);

    let action = big.next_action(WAIT).await;
    assert_eq!(action.backend_id, response.backend_id);
    let spawn = spawn_of(&action);
    assert_eq!(spawn.fencing_token, 1);
    assert_eq!(spawn.key, key("doc-1", "v1"));
    // The config's environment only: the drone adds Hangar's own variables from the action's
    // key and fencing token (the end-to-end tests read them inside a real backend).
    let env = &spawn.executable.as_ref().unwrap().env;
    assert_eq!(env.len(), 1, "{env:?}");
    assert_eq!(env["MODE"], "test");
    assert!(spawn.lease_duration.is_some() && spawn.startup_timeout.is_some() && spawn.stop_grace.is_some());

    // The same key again: the same backend, a fresh token, nothing new for the drone.
    let again =
        client.connect(connect_request(key("doc-1", "v1"), Some(spawn_config(&[])))).await.unwrap().into_inner();
    assert!(!again.spawned);
    assert_eq!(again.backend_id, response.backend_id);
    assert_ne!(again.token, response.token);
    assert!(big.maybe_message(Duration::from_millis(300)).await.is_none());

    small_beat.abort();
    big_beat.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drone_events_move_the_backend_through_states_visible_in_get_and_watch() {
    let cluster = cluster().await;
    let mut client = backends(&cluster).await;
    let (mut d, beat) = drone(&cluster, "d1", 5).await;
    let id =
        client.connect(connect_request(key("doc", ""), Some(spawn_config(&[])))).await.unwrap().into_inner().backend_id;
    let action = d.next_action(WAIT).await;
    d.ack_action(&action.action_id).await;

    for (i, state) in [BackendState::Loading, BackendState::Starting, BackendState::Waiting].into_iter().enumerate() {
        d.event_acked(&format!("ev-{i}"), &id, status(state), "").await;
    }
    d.event_acked("ev-ready", &id, status(BackendState::Ready), "127.0.0.1:41000").await;
    let backend = get(&mut client, &id).await;
    assert_eq!(state_of(&backend), BackendState::Ready);
    assert_eq!(backend.address, "127.0.0.1:41000");

    // Opened late: replays the history, then follows live, and ends after TERMINATED.
    let mut watch = client.watch_backend(v1::WatchBackendRequest { id: id.clone() }).await.unwrap().into_inner();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let status = tokio::time::timeout(WAIT, watch.message()).await.unwrap().unwrap().unwrap().status.unwrap();
        seen.push(BackendState::try_from(status.state).unwrap());
    }
    assert_eq!(
        seen,
        [
            BackendState::Scheduled,
            BackendState::Loading,
            BackendState::Starting,
            BackendState::Waiting,
            BackendState::Ready
        ]
    );
    let exited = v1::BackendStatus {
        state: BackendState::Terminated as i32,
        termination_reason: v1::TerminationReason::Exited as i32,
        exit_code: Some(7),
        ..Default::default()
    };
    d.event_acked("ev-exit", &id, exited, "").await;
    let last = tokio::time::timeout(WAIT, watch.message()).await.unwrap().unwrap().unwrap().status.unwrap();
    assert_eq!(last.state, BackendState::Terminated as i32);
    assert_eq!(last.exit_code, Some(7));
    assert!(tokio::time::timeout(WAIT, watch.message()).await.unwrap().unwrap().is_none(), "the watch ends");
    let backend = get(&mut client, &id).await;
    assert_eq!(backend.status.unwrap().termination_reason, v1::TerminationReason::Exited as i32);

    // The key is free again: a new backend with the next fencing token.
    let next = client.connect(connect_request(key("doc", ""), Some(spawn_config(&[])))).await.unwrap().into_inner();
    assert!(next.spawned);
    assert_eq!(next.backend.unwrap().fencing_token, 2);
    beat.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_during_starting_sends_a_terminate_action_and_is_idempotent_once_terminated() {
    let cluster = cluster().await;
    let mut client = backends(&cluster).await;
    let (mut d, beat) = drone(&cluster, "d1", 5).await;
    let id = client.connect(connect_request(None, Some(spawn_config(&[])))).await.unwrap().into_inner().backend_id;
    let spawn = d.next_action(WAIT).await;
    d.ack_action(&spawn.action_id).await;
    d.event_acked("ev-1", &id, status(BackendState::Starting), "").await;

    client.terminate_backend(v1::TerminateBackendRequest { id: id.clone(), hard: false }).await.unwrap();
    let action = d.next_action(WAIT).await;
    assert_eq!(action.backend_id, id);
    let terminate = terminate_of(&action);
    assert_eq!(terminate.kind, v1::TerminationKind::Soft as i32);
    assert_eq!(terminate.reason, v1::TerminationReason::External as i32);
    d.ack_action(&action.action_id).await;
    let ended = v1::BackendStatus {
        state: BackendState::Terminated as i32,
        termination_kind: v1::TerminationKind::Soft as i32,
        termination_reason: v1::TerminationReason::External as i32,
        ..Default::default()
    };
    d.event_acked("ev-2", &id, ended, "").await;
    let again = client.terminate_backend(v1::TerminateBackendRequest { id: id.clone(), hard: true }).await.unwrap();
    assert_eq!(state_of(&again.into_inner().backend.unwrap()), BackendState::Terminated);
    assert!(d.maybe_message(Duration::from_millis(300)).await.is_none(), "no action for a terminated backend");
    let missing = client.terminate_backend(v1::TerminateBackendRequest { id: "bk-nope".into(), hard: false }).await;
    assert_eq!(error_info(&missing.unwrap_err()).unwrap().0, reason::BACKEND_NOT_FOUND);
    beat.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_action_survives_a_drone_reconnect_and_is_redelivered() {
    let cluster = cluster().await;
    let mut client = backends(&cluster).await;
    let (mut d, beat) = drone(&cluster, "d1", 5).await;
    let id = client.connect(connect_request(None, Some(spawn_config(&[])))).await.unwrap().into_inner().backend_id;
    let first = d.next_action(WAIT).await;
    // Not acknowledged: the drone goes away.
    beat.abort();
    drop(d);
    let mut nodes = cluster.nodes().await;
    let node_id = first_node_id(&mut nodes).await;
    hangar_tests::wait_for_node(&mut nodes, &node_id, WAIT, |n| n.state == v1::NodeState::Offline as i32).await;

    let (mut d, beat) = drone(&cluster, "d1", 5).await;
    assert_eq!(d.node_id, node_id);
    let again = d.next_action(WAIT).await;
    assert_eq!(again.action_id, first.action_id);
    assert_eq!(again.backend_id, id);
    d.ack_action(&again.action_id).await;
    eventually(WAIT, "the controller to record the ack", async || {
        check(cluster.store.pending_actions(&node_id).await.unwrap(), Vec::is_empty)
    })
    .await;
    beat.abort();
    drop(d);
    hangar_tests::wait_for_node(&mut nodes, &node_id, WAIT, |n| n.state == v1::NodeState::Offline as i32).await;
    let (mut d, beat) = drone(&cluster, "d1", 5).await;
    assert!(d.maybe_message(Duration::from_millis(500)).await.is_none(), "an acknowledged action is not sent again");
    beat.abort();
    cluster.shutdown().await;
}

/// A Spawn tells the drone how much of its key's lease is left as it is sent: all of it at once,
/// less the time it waited when it is sent again after a reconnect, nothing for a keyless one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_says_how_much_of_its_keys_lease_is_left_when_it_is_sent() {
    let cluster = cluster().await;
    let mut client = backends(&cluster).await;
    let lease = BackendSettings::default().lease_duration;
    let (mut d, beat) = drone(&cluster, "d1", 5).await;
    client.connect(connect_request(None, Some(spawn_config(&[])))).await.unwrap();
    let keyless = d.next_action(WAIT).await;
    assert_eq!(spawn_of(&keyless).lease_remaining, None, "a keyless backend has no lease");
    d.ack_action(&keyless.action_id).await;

    client.connect(connect_request(key("doc-left", "v1"), Some(spawn_config(&[])))).await.unwrap();
    let first = d.next_action(WAIT).await;
    let first_at = Instant::now();
    let left = |action: &v1::DroneAction| {
        duration_from_proto(spawn_of(action).lease_remaining.as_ref().expect("a keyed Spawn says")).unwrap()
    };
    let first_left = left(&first);
    assert!(first_left <= lease && first_left + Duration::from_secs(2) > lease, "{first_left:?} of {lease:?}");

    // Not acknowledged: the drone goes away, and gets it again when it comes back.
    beat.abort();
    drop(d);
    let mut nodes = cluster.nodes().await;
    let node_id = first_node_id(&mut nodes).await;
    hangar_tests::wait_for_node(&mut nodes, &node_id, WAIT, |n| n.state == v1::NodeState::Offline as i32).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut d, beat) = drone(&cluster, "d1", 5).await;
    let again = d.next_action(WAIT).await;
    assert_eq!(again.action_id, first.action_id);
    let waited = first_at.elapsed();
    let again_left = left(&again);
    println!("lease left: {first_left:?} when first sent, {again_left:?} when sent again {waited:?} later");
    // What the two sends are apart, give or take their deliveries' difference.
    let spent = first_left - again_left;
    assert!(
        spent + Duration::from_millis(250) > waited && spent < waited + Duration::from_millis(250),
        "{spent:?} spent in {waited:?}"
    );
    beat.abort();
    cluster.shutdown().await;
}

/// `hangar-server controller`'s backend flags reach every Spawn and every Connect's token, and a
/// value that makes no sense is refused before the controller starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controllers_backend_flags_reach_each_spawn_and_bad_values_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", data.path().join("hangar.db").display());
    let flags = ["--startup-timeout", "7s", "--stop-grace", "0s", "--token-ttl", "90s", "--lease-duration", "9s"];
    let args: Vec<&std::ffi::OsStr> = flags.iter().map(std::ffi::OsStr::new).collect();
    let controller = hangar_tests::ControllerProcess::spawn_with(&database, &args);
    let mut d = ManualDrone::attach(&controller.url, drone_hello("d1")).await.expect("attach");
    let beat = d.keep_alive(Duration::from_millis(50));
    let mut client =
        BackendServiceClient::new(Channel::from_shared(controller.url.clone()).unwrap().connect().await.unwrap());
    let connected = eventually(WAIT, "a Connect the drone can take", async || {
        client.connect(connect_request(key("doc-flags", "v1"), Some(spawn_config(&[])))).await.map(|r| r.into_inner())
    })
    .await;
    let ttl = connected.token_expires_at.unwrap().seconds
        - std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_secs() as i64;
    assert!((85..=90).contains(&ttl), "the token expires in {ttl} s");
    let action = d.next_action(WAIT).await;
    let spawn = spawn_of(&action);
    let duration = |d: &Option<prost_types::Duration>| duration_from_proto(d.as_ref().unwrap()).unwrap();
    assert_eq!(duration(&spawn.startup_timeout), Duration::from_secs(7));
    assert_eq!(duration(&spawn.stop_grace), Duration::ZERO);
    assert_eq!(duration(&spawn.lease_duration), Duration::from_secs(9));
    beat.abort();

    for (flag, value) in [("--startup-timeout", "0s"), ("--token-ttl", "500ms"), ("--stop-grace", "soon")] {
        let refused = std::process::Command::new(hangar_tests::binary("hangar-server"))
            .args(["controller", "--database", &database, "--listen", "127.0.0.1:0", flag, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag) && stderr.contains(value), "{flag} {value}: {stderr}");
    }
}

async fn first_node_id(nodes: &mut hangar::v1::node_service_client::NodeServiceClient<Channel>) -> String {
    let list = nodes.list_nodes(v1::ListNodesRequest::default()).await.unwrap().into_inner();
    list.nodes[0].id.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_stale_events_are_acknowledged_and_ignored() {
    let cluster = cluster().await;
    let mut client = backends(&cluster).await;
    let (mut d, beat) = drone(&cluster, "d1", 5).await;
    let id = client.connect(connect_request(None, Some(spawn_config(&[])))).await.unwrap().into_inner().backend_id;
    d.next_action(WAIT).await;
    d.event_acked("ev-ready", &id, status(BackendState::Ready), "127.0.0.1:1").await;
    // The same event replayed after a reconnect, and an older one arriving late.
    d.event_acked("ev-ready", &id, status(BackendState::Ready), "127.0.0.1:1").await;
    d.event_acked("ev-old", &id, status(BackendState::Starting), "").await;
    // An event for a backend the controller does not know is acknowledged too.
    d.event_acked("ev-unknown", "bk-unknown", status(BackendState::Ready), "").await;
    assert_eq!(state_of(&get(&mut client, &id).await), BackendState::Ready);

    let mut watch = client.watch_backend(v1::WatchBackendRequest { id: id.clone() }).await.unwrap().into_inner();
    let mut states = Vec::new();
    while let Ok(Ok(Some(message))) = tokio::time::timeout(Duration::from_millis(500), watch.message()).await {
        states.push(BackendState::try_from(message.status.unwrap().state).unwrap());
    }
    assert_eq!(states, [BackendState::Scheduled, BackendState::Ready], "one history entry per change");
    beat.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_drone_is_unavailable_and_a_full_pool_is_resource_exhausted() {
    let cluster = cluster().await;
    let mut client = backends(&cluster).await;
    let err = client.connect(connect_request(None, Some(spawn_config(&[])))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(error_info(&err).unwrap().0, reason::NO_DRONE_AVAILABLE);
    assert!(err.message().ends_with("no drone has registered there"), "{err:?}");

    let (_d, beat) = drone(&cluster, "d1", 2).await;
    for _ in 0..2 {
        client.connect(connect_request(None, Some(spawn_config(&[])))).await.unwrap();
    }
    let err = client.connect(connect_request(None, Some(spawn_config(&[])))).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    let (found, metadata) = error_info(&err).unwrap();
    assert_eq!(found, reason::POOL_FULL);
    assert_eq!((metadata["full"].as_str(), metadata["draining"].as_str()), ("1", "0"), "{metadata:?}");
    assert!(err.message().contains("1 full"), "{err:?}");

    // Another pool has no drone at all.
    let mut elsewhere = spawn_config(&[]);
    elsewhere.pool = "gpu".into();
    let err = client.connect(connect_request(None, Some(elsewhere))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    // Without a spawn config only a live backend can be returned.
    let err = client.connect(connect_request(key("nobody", ""), None)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(error_info(&err).unwrap().0, reason::BACKEND_NOT_FOUND);

    // Bad input names its fields.
    let mut bad = spawn_config(&[("HANGAR_FENCING_TOKEN", "9")]);
    bad.executable.as_mut().unwrap().image = String::new();
    let err = client.connect(connect_request(None, Some(bad))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = hangar::error::field_violations(&err).into_iter().map(|(f, _)| f).collect();
    assert!(fields.contains(&"spawn_config.executable.image".to_string()), "{fields:?}");
    beat.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_held_with_another_tag_is_refused() {
    let cluster = cluster().await;
    let mut client = backends(&cluster).await;
    let (_d, beat) = drone(&cluster, "d1", 5).await;
    client.connect(connect_request(key("doc", "v1"), Some(spawn_config(&[])))).await.unwrap();
    let err = client.connect(connect_request(key("doc", "v2"), Some(spawn_config(&[])))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let (reason, metadata) = error_info(&err).unwrap();
    assert_eq!(reason, reason::KEY_TAG_MISMATCH);
    assert_eq!(metadata["held_tag"], "v1");
    beat.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_that_cannot_become_verified_headers_is_refused_with_field_violations() {
    let cluster = cluster().await;
    let mut client = backends(&cluster).await;
    let (_d, beat) = drone(&cluster, "d1", 5).await;
    let mut request = connect_request(key("doc", ""), Some(spawn_config(&[])));
    request.user = "al\nice".into();
    request.auth = [("Team", "blue"), ("x_y", "1"), ("user", "mallory"), ("ok", "bl\u{e9}u")]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
    let err = client.connect(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: BTreeSet<String> = hangar::error::field_violations(&err).into_iter().map(|(f, _)| f).collect();
    let expected = ["user", "auth[\"Team\"]", "auth[\"x_y\"]", "auth[\"user\"]", "auth[\"ok\"]"];
    assert_eq!(fields, expected.map(String::from).into(), "{err:?}");
    // Header-safe names and values pass.
    let mut request = connect_request(key("doc", ""), Some(spawn_config(&[])));
    request.auth = [("team".to_string(), "blue".to_string()), ("org-id".to_string(), "42".to_string())].into();
    client.connect(request).await.unwrap();
    beat.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_drones_lease_expires_to_lost_and_the_key_is_taken_again_with_a_higher_fencing_token() {
    let settings = BackendSettings { lease_duration: Duration::from_millis(600), ..fast_backends() };
    let cluster = TestCluster::sqlite_with(config_with(settings)).await;
    let mut client = backends(&cluster).await;
    let (mut gone, gone_beat) = drone(&cluster, "gone", 5).await;
    let first = client.connect(connect_request(key("doc", ""), Some(spawn_config(&[])))).await.unwrap().into_inner();
    let spawn = gone.next_action(WAIT).await;
    assert_eq!(spawn_of(&spawn).fencing_token, 1);
    gone.ack_action(&spawn.action_id).await;
    gone.event_acked("ev-1", &first.backend_id, status(BackendState::Ready), "127.0.0.1:1").await;
    // A renewal with the holder's fencing token works while the drone is there.
    gone.send(Req::RenewKey(v1::RenewKey {
        backend_id: first.backend_id.clone(),
        key: key("doc", ""),
        fencing_token: 1,
    }))
    .await;
    match gone.next_message(WAIT).await {
        Reply::RenewKeyResponse(r) => assert!(r.renewed && r.expires_at.is_some()),
        other => panic!("{other:?}"),
    }
    gone_beat.abort();
    drop(gone);

    let lost = wait_for_state(&mut client, &first.backend_id, BackendState::Terminated).await;
    assert_eq!(lost.status.unwrap().termination_reason, v1::TerminationReason::Lost as i32);

    let (mut other, beat) = drone(&cluster, "other", 5).await;
    let second = client.connect(connect_request(key("doc", ""), Some(spawn_config(&[])))).await.unwrap().into_inner();
    assert!(second.spawned);
    assert_ne!(second.backend_id, first.backend_id);
    assert_eq!(second.backend.unwrap().drone_id, other.node_id);
    let spawn = other.next_action(WAIT).await;
    assert_eq!(spawn_of(&spawn).fencing_token, 2, "the new holder is fenced above the lost one");
    // The lost holder's token no longer renews anything.
    other
        .send(Req::RenewKey(v1::RenewKey {
            backend_id: first.backend_id.clone(),
            key: key("doc", ""),
            fencing_token: 1,
        }))
        .await;
    match other.next_message(WAIT).await {
        Reply::RenewKeyResponse(r) => assert!(!r.renewed),
        other => panic!("{other:?}"),
    }
    beat.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_lifetime_sweeps_end_the_right_backends_and_spare_the_busy_one() {
    let cluster = cluster().await;
    let mut client = backends(&cluster).await;
    let (mut d, beat) = drone(&cluster, "d1", 10).await;
    let proxy = ManualProxy::attach(&cluster.url(), "p1").await;
    let second = Some(prost_types::Duration { seconds: 1, nanos: 0 });
    let mut idle_config = spawn_config(&[]);
    idle_config.max_idle = second;
    let mut lifetime_config = spawn_config(&[]);
    lifetime_config.lifetime_limit = second;
    let mut connect = async |config: v1::SpawnConfig| {
        client.connect(connect_request(None, Some(config))).await.unwrap().into_inner().backend_id
    };
    let idle = connect(idle_config.clone()).await;
    let busy = connect(idle_config).await;
    let limited = connect(lifetime_config).await;
    let untouched = connect(spawn_config(&[])).await;

    let mut terminated = BTreeMap::new();
    let started = Instant::now();
    eventually(WAIT, "the idle and the lifetime-limited backends to be swept", async || {
        serve_for_a_moment(&mut d, &proxy, &busy, &mut terminated).await;
        check(terminated.clone(), |t| t.contains_key(&idle) && t.contains_key(&limited))
    })
    .await;
    // Serving goes on until 2.5 s after the start: the busy backend, as old as the idle one,
    // would be swept by then had its traffic not counted (a window for what must not happen).
    while started.elapsed() < Duration::from_millis(2500) {
        serve_for_a_moment(&mut d, &proxy, &busy, &mut terminated).await;
    }
    assert_eq!(terminated.get(&idle), Some(&(v1::TerminationReason::Swept as i32)), "{terminated:?}");
    assert_eq!(terminated.get(&limited), Some(&(v1::TerminationReason::Lifetime as i32)), "{terminated:?}");
    assert!(!terminated.contains_key(&busy), "the busy backend is spared: {terminated:?}");
    assert!(!terminated.contains_key(&untouched), "{terminated:?}");
    let busy_backend = get(&mut backends(&cluster).await, &busy).await;
    assert!(busy_backend.last_activity_at.unwrap().seconds >= busy_backend.created_at.unwrap().seconds);
    beat.abort();
    cluster.shutdown().await;
}

/// The proxy reports traffic to `busy`; the drone acknowledges what arrives within 100 ms and
/// records the terminations in `terminated`.
async fn serve_for_a_moment(
    d: &mut ManualDrone,
    proxy: &ManualProxy,
    busy: &str,
    terminated: &mut BTreeMap<String, i32>,
) {
    proxy.report_traffic(&[busy.to_string()]).await;
    proxy.heartbeat().await;
    while let Some(message) = d.maybe_message(Duration::from_millis(100)).await {
        if let Reply::Action(action) = message {
            d.ack_action(&action.action_id).await;
            if let Some(Action::Terminate(t)) = action.action {
                terminated.insert(action.backend_id, t.reason);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_backends_filters_and_pages() {
    let cluster = cluster().await;
    let mut client = backends(&cluster).await;
    let (_d, beat) = drone(&cluster, "d1", 20).await;
    let mut ids = BTreeSet::new();
    for i in 0..7 {
        let id = client
            .connect(connect_request(key(&format!("doc-{i}"), ""), Some(spawn_config(&[]))))
            .await
            .unwrap()
            .into_inner()
            .backend_id;
        ids.insert(id);
    }
    let mut seen = BTreeSet::new();
    let mut token = String::new();
    loop {
        let filter = v1::BackendFilter {
            states: vec![BackendState::Scheduled as i32],
            key_namespace: "docs".into(),
            ..Default::default()
        };
        let page = client
            .list_backends(v1::ListBackendsRequest { filter: Some(filter), page_size: 3, page_token: token })
            .await
            .unwrap()
            .into_inner();
        assert!(page.backends.len() <= 3);
        for b in page.backends {
            assert!(seen.insert(b.id));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids);
    let none = client
        .list_backends(v1::ListBackendsRequest {
            filter: Some(v1::BackendFilter { cluster: "elsewhere".into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.backends.is_empty());
    beat.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_without_a_key_on_a_drone_that_never_comes_back_ends_lost() {
    let settings = BackendSettings { lease_duration: Duration::from_millis(600), ..fast_backends() };
    let cluster = TestCluster::sqlite_with(config_with(settings)).await;
    let mut client = backends(&cluster).await;
    let (mut gone, beat) = drone(&cluster, "gone", 5).await;
    let id = client.connect(connect_request(None, Some(spawn_config(&[])))).await.unwrap().into_inner().backend_id;
    let spawn = gone.next_action(WAIT).await;
    gone.ack_action(&spawn.action_id).await;
    gone.event_acked("ev-1", &id, status(BackendState::Ready), "127.0.0.1:1").await;
    beat.abort();
    drop(gone);
    let lost = wait_for_state(&mut client, &id, BackendState::Terminated).await;
    assert_eq!(lost.status.unwrap().termination_reason, v1::TerminationReason::Lost as i32);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_drain_deadline_soft_terminates_the_drones_backends_once() {
    let cluster = cluster().await;
    let mut client = backends(&cluster).await;
    let (mut d, beat) = drone(&cluster, "d1", 5).await;
    let id = client.connect(connect_request(None, Some(spawn_config(&[])))).await.unwrap().into_inner().backend_id;
    let spawn = d.next_action(WAIT).await;
    d.ack_action(&spawn.action_id).await;
    let mut nodes = cluster.nodes().await;
    let deadline = Some(prost_types::Duration { seconds: 0, nanos: 0 });
    nodes.drain_node(v1::DrainNodeRequest { id: d.node_id.clone(), deadline }).await.unwrap();
    let action = d.next_action(WAIT).await;
    assert_eq!(action.backend_id, id);
    assert_eq!(terminate_of(&action).kind, v1::TerminationKind::Soft as i32);
    d.ack_action(&action.action_id).await;
    // Later passes do not ask again.
    assert!(d.maybe_message(Duration::from_millis(500)).await.is_none());
    beat.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_pool_says_so_and_an_undrain_before_the_deadline_keeps_the_backends() {
    let cluster = cluster().await;
    let mut client = backends(&cluster).await;
    let (mut d, beat) = drone(&cluster, "d1", 5).await;
    let id = client.connect(connect_request(None, Some(spawn_config(&[])))).await.unwrap().into_inner().backend_id;
    let spawn = d.next_action(WAIT).await;
    d.ack_action(&spawn.action_id).await;
    let mut nodes = cluster.nodes().await;
    let deadline = Some(prost_types::Duration { seconds: 1, nanos: 0 });
    nodes.drain_node(v1::DrainNodeRequest { id: d.node_id.clone(), deadline }).await.unwrap();

    // The only drone is draining: the error counts it and names the way back.
    let err = client.connect(connect_request(None, Some(spawn_config(&[])))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let (found, metadata) = error_info(&err).unwrap();
    assert_eq!(found, reason::NO_DRONE_AVAILABLE);
    let counts: Vec<_> = ["ready", "draining", "unhealthy", "offline"].iter().map(|k| metadata[*k].as_str()).collect();
    assert_eq!(counts, ["0", "1", "0", "0"], "{metadata:?}");
    assert!(err.message().contains("1 draining") && err.message().contains("hangar nodes undrain"), "{err:?}");

    nodes.undrain_node(v1::UndrainNodeRequest { id: d.node_id.clone() }).await.unwrap();
    // Several sweep passes (every 100 ms) past the old deadline: the backend is not asked to
    // stop. A fixed wait, as this shows that something does not happen.
    let quiet_until = Instant::now() + Duration::from_millis(1500);
    while let Some(message) = d.maybe_message(quiet_until.saturating_duration_since(Instant::now())).await {
        assert!(!matches!(&message, Reply::Action(a) if a.backend_id == id), "{message:?}");
    }
    assert_eq!(state_of(&get(&mut client, &id).await), BackendState::Scheduled);
    // And the drone takes new backends again.
    let again = client.connect(connect_request(None, Some(spawn_config(&[])))).await.unwrap().into_inner();
    assert!(again.spawned);
    beat.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_drone_that_stops_renewing_loses_the_key_without_its_backend_being_marked_lost() {
    let settings = BackendSettings { lease_duration: Duration::from_millis(600), ..fast_backends() };
    let cluster = TestCluster::sqlite_with(config_with(settings)).await;
    let mut client = backends(&cluster).await;
    let (mut d, beat) = drone(&cluster, "d1", 5).await;
    let first = client.connect(connect_request(key("doc", ""), Some(spawn_config(&[])))).await.unwrap().into_inner();
    let spawn = d.next_action(WAIT).await;
    d.ack_action(&spawn.action_id).await;
    d.event_acked("ev-1", &first.backend_id, status(BackendState::Ready), "127.0.0.1:1").await;
    // The sweep frees the key once its lease runs out; until then a Connect without a spawn
    // config finds the holder.
    eventually(WAIT, "the sweep to free the key whose lease ran out", async || {
        match client.connect(connect_request(key("doc", ""), None)).await {
            Err(status) if status.code() == Code::NotFound => Ok(()),
            held => Err(held),
        }
    })
    .await;

    // The sweep frees the key and marks the holder LOST in one step, and only for a drone that
    // is gone. This one is attached, so only it can say how the backend ended: it is not LOST.
    assert_eq!(state_of(&get(&mut client, &first.backend_id).await), BackendState::Ready);
    d.send(Req::RenewKey(v1::RenewKey { backend_id: first.backend_id.clone(), key: key("doc", ""), fencing_token: 1 }))
        .await;
    match d.next_message(WAIT).await {
        Reply::RenewKeyResponse(r) => assert!(!r.renewed, "an expired lease is not revived"),
        other => panic!("{other:?}"),
    }
    // The key was freed: a new holder, fenced above the old one, while the drone winds the old
    // backend down (KEY_EXPIRED).
    let second = client.connect(connect_request(key("doc", ""), Some(spawn_config(&[])))).await.unwrap().into_inner();
    assert!(second.spawned);
    assert_eq!(second.backend.unwrap().fencing_token, 2);
    let spawn = d.next_action(WAIT).await;
    assert_eq!(spawn.backend_id, second.backend_id);
    d.ack_action(&spawn.action_id).await;
    let ended = v1::BackendStatus {
        state: BackendState::Terminated as i32,
        termination_reason: v1::TerminationReason::KeyExpired as i32,
        ..Default::default()
    };
    d.event_acked("ev-2", &first.backend_id, ended, "").await;
    let old = get(&mut client, &first.backend_id).await;
    assert_eq!(old.status.unwrap().termination_reason, v1::TerminationReason::KeyExpired as i32);
    // The old holder's end does not free the key the new holder has.
    let again = client.connect(connect_request(key("doc", ""), Some(spawn_config(&[])))).await.unwrap().into_inner();
    assert_eq!(again.backend_id, second.backend_id);
    beat.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_an_image_no_drone_could_run_before_scheduling_anything() {
    let cluster = cluster().await;
    let mut client = backends(&cluster).await;
    let (mut drone, beat) = drone(&cluster, "d1", 5).await;

    // As the README's user typed it: a relative path means nothing on a drone.
    let output = tokio::process::Command::new(hangar_tests::binary("hangar"))
        .args(["--controller", &cluster.url(), "connect", "--no-key", "--image", "./my-server", "-o", "json"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a refused Connect exits non-zero; stderr: {stderr}");
    assert!(output.stdout.is_empty(), "nothing on stdout: {}", String::from_utf8_lossy(&output.stdout));
    assert!(stderr.contains("spawn_config.executable.image"), "the field is named: {stderr}");
    assert!(stderr.contains("relative path") && stderr.contains("absolute program path"), "{stderr}");

    for (image, says) in [("./my-server", "relative path"), ("Acme/Editor:2", "lowercase"), ("app:-1", "tag")] {
        let mut config = spawn_config(&[]);
        config.executable.as_mut().unwrap().image = image.into();
        let err = client.connect(connect_request(None, Some(config))).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{image}");
        assert_eq!(error_info(&err).unwrap().0, reason::INVALID_ARGUMENT);
        let violations = hangar::error::field_violations(&err);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].0, "spawn_config.executable.image");
        assert!(violations[0].1.contains(says), "{image}: {violations:?}");
    }

    let listed = client.list_backends(v1::ListBackendsRequest::default()).await.unwrap().into_inner();
    assert!(listed.backends.is_empty(), "nothing was scheduled: {:?}", listed.backends);
    // Waiting a moment is the point here: no spawn may reach the drone.
    assert!(drone.maybe_message(Duration::from_millis(300)).await.is_none(), "the drone got no action");
    beat.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_lookup_that_waits_for_ready_answers_as_the_backend_turns_ready_and_not_before() {
    use hangar::v1::proxy_service_client::ProxyServiceClient;
    let cluster = cluster().await;
    let mut client = backends(&cluster).await;
    let (mut d, beat) = drone(&cluster, "d1", 5).await;
    let connected = client.connect(connect_request(None, Some(spawn_config(&[])))).await.unwrap().into_inner();
    let action = d.next_action(WAIT).await;
    d.ack_action(&action.action_id).await;
    let mut proxies = ProxyServiceClient::new(cluster.channel().await);
    let lookup = |wait: Option<Duration>| v1::LookupRouteRequest {
        token: connected.token.clone(),
        wait_for_ready: wait.map(|w| prost_types::Duration::try_from(w).unwrap()),
    };

    // Without the field the answer is the state at once, as for a controller that predates it.
    let now = proxies.lookup_route(lookup(None)).await.unwrap().into_inner();
    assert_eq!(now.state, BackendState::Scheduled as i32);
    // A wait shorter than the start: answered with the starting state once it runs out.
    let started = Instant::now();
    let short = proxies.lookup_route(lookup(Some(Duration::from_millis(300)))).await.unwrap().into_inner();
    assert_eq!(short.state, BackendState::Scheduled as i32);
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());

    // Waiting: a change that is not READY does not end the wait; READY does, at once.
    let mut waiting = proxies.clone();
    let request = lookup(Some(Duration::from_secs(20)));
    let waiter = tokio::spawn(async move {
        let answer = waiting.lookup_route(request).await.unwrap().into_inner();
        (answer, Instant::now())
    });
    // Two windows in which nothing may happen (the fixed sleeps prove an absence): the lookup is
    // not answered while the backend is SCHEDULED, nor after it turns STARTING. The first window
    // also gives the lookup time to be waiting when STARTING is committed, the change this must
    // not answer; a lookup arriving later reads STARTING and waits all the same.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "answered while the backend was SCHEDULED");
    d.event_acked("ev-1", &connected.backend_id, status(BackendState::Starting), "").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "answered before the backend was READY");
    d.event_acked("ev-2", &connected.backend_id, status(BackendState::Ready), "127.0.0.1:9").await;
    let ready_at = Instant::now();
    let (answer, answered_at) = tokio::time::timeout(WAIT, waiter).await.expect("answered").unwrap();
    assert_eq!(answer.state, BackendState::Ready as i32);
    assert_eq!(answer.address, "127.0.0.1:9");
    let after = answered_at.saturating_duration_since(ready_at);
    // The hub's fan-out, not a poll: well under the controller's poll floor.
    assert!(after < Duration::from_millis(150), "answered {after:?} after READY");

    let bad = v1::LookupRouteRequest {
        token: connected.token.clone(),
        wait_for_ready: Some(prost_types::Duration { seconds: -1, nanos: 0 }),
    };
    let err = proxies.lookup_route(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    beat.abort();
    cluster.shutdown().await;
}
