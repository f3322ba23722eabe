//! Backends end to end with every real component: a controller on SQLite, the HTTP proxy, a
//! drone running backends on the process runtime (the test backend binary) or on Docker (the
//! locally built test image), driven through the Rust SDK and plain HTTP as a user would.

use futures::{SinkExt, StreamExt};
use hangar::domain::{BackendState, TerminationReason};
use hangar_client::HangarClient;
use hangar_client::{BackendView, ConnectRequest, SpawnSpec};
use hangar_executor::drone::{self, DroneConfig, DroneHandle};
use hangar_executor::runtime::Runtime;
use hangar_executor::runtime::process::ProcessRuntime;
use hangar_server::controller::ControllerConfig;
use hangar_server::proxy::{Proxy, ProxyConfig, RunningProxy};
use hangar_testkit::eventually;
use hangar_tests::{TestCluster, test_config};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

struct Stack {
    cluster: TestCluster,
    proxy: RunningProxy,
    drone: DroneHandle,
    client: HangarClient,
}

impl Stack {
    async fn shutdown(self) {
        self.proxy.shutdown().await;
        self.drone.shutdown().await;
        self.cluster.shutdown().await;
    }
}

/// Controller + proxy + one drone on `runtime`, with lifecycle timings shortened for tests.
async fn stack(runtime: Arc<dyn Runtime>, tune: impl FnOnce(&mut ControllerConfig)) -> Stack {
    let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = test_config();
    config.proxy_url = format!("http://{}", proxy_listener.local_addr().unwrap());
    config.backends.sweep_interval = Duration::from_millis(200);
    config.backends.stop_grace = Duration::from_secs(2);
    tune(&mut config);
    let cluster = TestCluster::sqlite_with(config).await;
    let mut proxy_config = ProxyConfig::new(vec![cluster.url()], "edge");
    proxy_config.traffic_report_interval = Duration::from_millis(200);
    let proxy = Proxy::start(proxy_config, proxy_listener).await.unwrap();
    let mut drone_config = DroneConfig::new(vec![cluster.url()], "worker");
    drone_config.heartbeat_interval = Duration::from_millis(100);
    drone_config.runtime = Some(runtime);
    let drone = drone::spawn(drone_config);
    tokio::time::timeout(WAIT, drone.attached()).await.expect("drone attached");
    let client = HangarClient::connect(&cluster.url()).await.unwrap();
    Stack { cluster, proxy, drone, client }
}

fn test_backend() -> String {
    hangar_executor::testing::test_backend_binary().display().to_string()
}

/// Waits for the backend to reach `state`; fails at once when it went past it.
async fn wait_for_state(client: &HangarClient, id: &str, state: BackendState) -> BackendView {
    eventually(WAIT, &format!("backend {id} {state:?}"), async || {
        let backend = client.get_backend(id).await.unwrap();
        assert!(backend.state <= state, "backend {id} went past {state:?}: {:?} ({:?})", backend.state, backend.status);
        if backend.state == state { Ok(backend) } else { Err(backend) }
    })
    .await
}

async fn http_get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut request = http::Request::get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = client.request(request.body(Default::default()).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Connect → READY → the backend answers (directly and through the proxy) → Terminate →
/// TERMINATED with its exit code.
async fn connect_serve_terminate(stack: &Stack, image: String) {
    let request =
        ConnectRequest::key("e2e", "doc-1", "v1").spawn(SpawnSpec::new(image)).user("alice").auth("team", "blue");
    let connection = stack.client.connect_backend(&request).await.unwrap();
    assert!(connection.spawned);
    assert!(connection.url.starts_with(&stack.proxy.url()), "{} is a URL of the proxy", connection.url);
    let ready = wait_for_state(&stack.client, &connection.backend_id, BackendState::Ready).await;
    assert_eq!(ready.fencing_token, 1);

    let (status, body) = http_get(&format!("http://{}/", ready.address), &[]).await;
    assert_eq!(status, 200);
    assert!(body.contains(&connection.backend_id), "the backend knows its id: {body}");
    let (status, env) = http_get(&format!("http://{}/env", ready.address), &[]).await;
    assert_eq!(status, 200);
    for expected in [
        format!("HANGAR_BACKEND_ID={}", connection.backend_id),
        "HANGAR_BACKEND_KEY=e2e/doc-1".to_string(),
        "HANGAR_FENCING_TOKEN=1".to_string(),
    ] {
        assert!(env.lines().any(|l| l == expected), "{expected} missing from\n{env}");
    }

    // Through the proxy: the backend sees its id and the verified identity, never the spoofed one.
    let (status, headers) = http_get(&format!("{}headers", connection.url), &[("x-verified-user", "mallory")]).await;
    assert_eq!(status, 200, "{headers}");
    let headers = headers.to_ascii_lowercase();
    assert!(headers.contains(&format!("x-hangar-backend-id: {}", connection.backend_id)), "{headers}");
    assert!(headers.contains("x-verified-user: alice") && headers.contains("x-verified-team: blue"), "{headers}");
    assert!(!headers.contains("mallory"), "{headers}");

    // The same key again: the same backend, no second spawn.
    let again = stack.client.connect_backend(&request).await.unwrap();
    assert_eq!((again.backend_id.as_str(), again.spawned), (connection.backend_id.as_str(), false));

    stack.client.terminate_backend(&connection.backend_id, false).await.unwrap();
    let ended = wait_for_state(&stack.client, &connection.backend_id, BackendState::Terminated).await;
    assert_eq!(ended.status.termination_reason, Some(TerminationReason::External));
    assert_eq!(ended.status.exit_code, Some(143), "SIGTERM exit code: {:?}", ended.status);
    // Its URL now says so, distinctly from an unknown token.
    let (status, body) = http_get(&connection.url, &[]).await;
    assert_eq!(status, 410, "a terminated backend's URL answers 410: {body}");
    let unknown = format!("{}/no-such-token/", stack.proxy.url());
    assert_eq!(http_get(&unknown, &[]).await.0, 404);
}

#[tokio::test]
async fn process_runtime_connect_ready_serve_terminate() {
    let stack = stack(Arc::new(ProcessRuntime::new()), |_| {}).await;
    connect_serve_terminate(&stack, test_backend()).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn docker_runtime_connect_ready_serve_terminate() {
    let instance = hangar_executor::testing::unique_name("e2e");
    let Some(docker) =
        hangar_executor::testing::docker_or_skip("docker_runtime_connect_ready_serve_terminate", &instance).await
    else {
        return;
    };
    let _cleanup = hangar_executor::testing::ContainerCleanup::new(&instance);
    let image = hangar_executor::testing::test_image().to_string();
    let stack = stack(Arc::new(docker), |_| {}).await;
    connect_serve_terminate(&stack, image).await;
    stack.shutdown().await;
}

/// `hangar connect --user … --claim …`, the CLI binary as a user runs it: the backend sees that
/// identity as `x-verified-*` headers through the proxy, and not what the HTTP client claims.
#[tokio::test]
async fn the_identity_given_to_the_cli_reaches_the_backend_as_verified_headers() {
    let stack = stack(Arc::new(ProcessRuntime::new()), |_| {}).await;
    let controller = stack.cluster.url();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(hangar_tests::binary("hangar"))
            .args(["--controller", &controller, "-o", "json", "connect", "cli/doc-1", "--image", &test_backend()])
            .args(["--user", "alice", "--claim", "team=blue", "--wait"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let connection: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_eq!(connection["state"], "READY", "{connection}");
    let url = connection["url"].as_str().unwrap();

    let spoofed = [("x-verified-user", "mallory"), ("x-verified-team", "red")];
    let (status, headers) = http_get(&format!("{url}headers"), &spoofed).await;
    assert_eq!(status, 200, "{headers}");
    let headers = headers.to_ascii_lowercase();
    assert!(headers.lines().any(|l| l == "x-verified-user: alice"), "{headers}");
    assert!(headers.lines().any(|l| l == "x-verified-team: blue"), "{headers}");
    assert!(!headers.contains("mallory") && !headers.contains(": red"), "{headers}");
    stack.shutdown().await;
}

#[tokio::test]
async fn websocket_and_a_10_mib_upload_through_the_real_proxy() {
    let stack = stack(Arc::new(ProcessRuntime::new()), |_| {}).await;
    let request = ConnectRequest::keyless(SpawnSpec::new(test_backend()));
    let connection = stack.client.connect_backend(&request).await.unwrap();
    wait_for_state(&stack.client, &connection.backend_id, BackendState::Ready).await;

    let ws_url = format!("{}ws", connection.url.replacen("http://", "ws://", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.expect("websocket through the proxy");
    socket.send(tokio_tungstenite::tungstenite::Message::text("ping over hangar")).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "ping over hangar");
    socket.close(None).await.unwrap();

    use http_body_util::BodyExt;
    let chunk = bytes::Bytes::from(vec![7u8; 1 << 20]);
    let frames = futures::stream::iter(
        (0..10).map(move |_| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk.clone()))),
    );
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let upload =
        http::Request::post(format!("{}upload", connection.url)).body(http_body_util::StreamBody::new(frames)).unwrap();
    let response = client.request(upload).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).starts_with(&format!("{} ", 10 << 20)),
        "{}",
        String::from_utf8_lossy(&body)
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn an_idle_backend_is_swept_and_a_busy_one_survives() {
    let stack = stack(Arc::new(ProcessRuntime::new()), |_| {}).await;
    let spec = || SpawnSpec::new(test_backend()).max_idle(Duration::from_secs(2));
    let idle = stack.client.connect_backend(&ConnectRequest::keyless(spec())).await.unwrap();
    let busy = stack.client.connect_backend(&ConnectRequest::keyless(spec())).await.unwrap();
    wait_for_state(&stack.client, &idle.backend_id, BackendState::Ready).await;
    wait_for_state(&stack.client, &busy.backend_id, BackendState::Ready).await;
    // Traffic through the proxy every 300 ms keeps one of them alive. It goes on for 4 s, twice
    // max_idle: a window in which the busy one would be swept too had its traffic not counted.
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(4) {
        assert_eq!(http_get(&busy.url, &[]).await.0, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let swept = wait_for_state(&stack.client, &idle.backend_id, BackendState::Terminated).await;
    assert_eq!(swept.status.termination_reason, Some(TerminationReason::Swept));
    assert_eq!(stack.client.get_backend(&busy.backend_id).await.unwrap().state, BackendState::Ready);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_missing_executable_ends_image_pull_failed_and_an_exit_ends_exited_with_its_code() {
    let stack = stack(Arc::new(ProcessRuntime::new()), |_| {}).await;
    let missing = ConnectRequest::keyless(SpawnSpec::new("/no/such/backend"));
    let connection = stack.client.connect_backend(&missing).await.unwrap();
    let ended = wait_for_state(&stack.client, &connection.backend_id, BackendState::Terminated).await;
    assert_eq!(ended.status.termination_reason, Some(TerminationReason::ImagePullFailed));

    let exits =
        SpawnSpec::new(test_backend()).env("TEST_BACKEND_EXIT_AFTER_MS", "500").env("TEST_BACKEND_EXIT_CODE", "7");
    let connection = stack.client.connect_backend(&ConnectRequest::keyless(exits)).await.unwrap();
    let ended = wait_for_state(&stack.client, &connection.backend_id, BackendState::Terminated).await;
    assert_eq!(ended.status.termination_reason, Some(TerminationReason::Exited));
    assert_eq!(ended.status.exit_code, Some(7));
    stack.shutdown().await;
}

#[tokio::test]
async fn a_static_token_opens_the_backend_through_the_proxy_and_reaches_its_env() {
    let stack = stack(Arc::new(ProcessRuntime::new()), |_| {}).await;
    let spec = SpawnSpec::new(test_backend()).static_token("room-42-static-secret");
    let connection = stack.client.connect_backend(&ConnectRequest::keyless(spec)).await.unwrap();
    let ready = wait_for_state(&stack.client, &connection.backend_id, BackendState::Ready).await;
    let (status, body) = http_get(&format!("{}/room-42-static-secret/request?s=1", stack.proxy.url()), &[]).await;
    assert_eq!((status, body.trim()), (200, "GET /request?s=1"));
    let env = hangar_executor::testing::http_get(&ready.address, "/env").await.unwrap().1;
    assert!(env.lines().any(|l| l == "HANGAR_STATIC_TOKEN=room-42-static-secret"), "{env}");
    stack.shutdown().await;
}

#[tokio::test]
async fn an_open_websocket_keeps_its_backend_from_being_swept_as_idle() {
    let stack = stack(Arc::new(ProcessRuntime::new()), |_| {}).await;
    let spec = SpawnSpec::new(test_backend()).max_idle(Duration::from_secs(2));
    let connection = stack.client.connect_backend(&ConnectRequest::keyless(spec)).await.unwrap();
    wait_for_state(&stack.client, &connection.backend_id, BackendState::Ready).await;
    let ws_url = format!("{}ws", connection.url.replacen("http://", "ws://", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    // Connected but silent for twice max_idle: still a session in use (a window for a sweep
    // that must not happen).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(stack.client.get_backend(&connection.backend_id).await.unwrap().state, BackendState::Ready);
    socket.send(tokio_tungstenite::tungstenite::Message::text("still here")).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "still here");
    socket.close(None).await.unwrap();
    stack.shutdown().await;
}

#[tokio::test]
async fn command_and_args_travel_from_connect_to_the_backends_command_line() {
    let stack = stack(Arc::new(ProcessRuntime::new()), |_| {}).await;
    let backend = test_backend();
    let spec =
        SpawnSpec::new(backend.clone()).command([backend.as_str(), "--from-command"]).args(["--from-args", "x y"]);
    let connection = stack.client.connect_backend(&ConnectRequest::keyless(spec)).await.unwrap();
    let ready = wait_for_state(&stack.client, &connection.backend_id, BackendState::Ready).await;
    let shown = ready.spawn_config.as_ref().unwrap();
    assert_eq!((shown.command.len(), shown.args.len()), (2, 2), "GetBackend shows both: {shown:?}");
    let argv = hangar_executor::testing::http_get(&ready.address, "/argv").await.unwrap().1;
    assert_eq!(argv.lines().collect::<Vec<_>>(), [backend.as_str(), "--from-command", "--from-args", "x y"]);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_failed_start_tells_connect_wait_backends_get_and_the_watch_why() {
    let stack = stack(Arc::new(ProcessRuntime::new()), |_| {}).await;
    let hangar = hangar_tests::binary("hangar");
    let url = stack.cluster.url();
    let output = tokio::process::Command::new(&hangar)
        .args(["--controller", &url, "connect", "--no-key", "--image", "/no/such/backend", "--wait"])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "stdout: {stdout}\nstderr: {stderr}");
    let why = "IMAGE_PULL_FAILED: image /no/such/backend not found: No such file or directory";
    assert!(stderr.contains(why), "the error says why: {stderr}");
    let progress = stdout.lines().find(|l| l.trim_start().starts_with("TERMINATED")).expect("a TERMINATED line");
    assert!(progress.contains(why), "{stdout}");
    let id = stdout.split_whitespace().find(|w| w.starts_with("bk-")).expect("the backend id").to_string();

    let output = tokio::process::Command::new(&hangar)
        .args(["--controller", &url, "backends", "get", &id, "-o", "json"])
        .output()
        .await
        .unwrap();
    let got: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let message = got["status"]["message"].as_str().unwrap().to_string();
    assert!(message.starts_with("image /no/such/backend not found: No such file or directory"), "{got}");

    let statuses: Vec<_> = stack.client.watch_backend(&id).collect().await;
    let last = statuses.last().unwrap().as_ref().unwrap();
    assert_eq!((last.state, last.message.as_str()), (BackendState::Terminated, message.as_str()));
    stack.shutdown().await;
}

#[tokio::test]
async fn docker_an_image_that_cannot_be_pulled_ends_with_the_engines_words() {
    let instance = hangar_executor::testing::unique_name("e2e");
    let test = "docker_an_image_that_cannot_be_pulled_ends_with_the_engines_words";
    let Some(docker) = hangar_executor::testing::docker_or_skip(test, &instance).await else { return };
    let _cleanup = hangar_executor::testing::ContainerCleanup::new(&instance);
    let stack = stack(Arc::new(docker), |_| {}).await;
    let spec = SpawnSpec::new("hangar-missing.invalid/missing:0");
    let connection = stack.client.connect_backend(&ConnectRequest::keyless(spec)).await.unwrap();
    let ended = wait_for_state(&stack.client, &connection.backend_id, BackendState::Terminated).await;
    assert_eq!(ended.status.termination_reason, Some(TerminationReason::ImagePullFailed));
    let message = &ended.status.message;
    assert!(
        message.starts_with("image hangar-missing.invalid/missing:0 not found: not present locally; pull failed: "),
        "{message}"
    );
    println!("the message: {message}");
    assert!(message.len() > 90, "the engine's own words follow: {message}");
    stack.shutdown().await;
}
