//! The harness every integration test uses: real controllers on port 0, real stores (SQLite in a
//! temp dir, or PostgreSQL started with initdb), real drones over real gRPC, and the built
//! binaries for tests that act as a user would.

pub mod auth;
pub mod browser;
pub mod containers;
pub mod faults;
pub mod pki;
pub mod processes;
pub mod proxy_plane;

use hangar::v1::{self, drone_service_client::DroneServiceClient, node_service_client::NodeServiceClient};
use hangar_server::controller::{Controller, ControllerConfig, LivenessConfig, RunningController};
use hangar_server::store::{self, DynStore};
use hangar_testkit::{check, eventually};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Liveness timings for tests: heartbeat every 100 ms, UNHEALTHY after 300 ms, OFFLINE after
/// 600 ms.
pub fn fast_liveness() -> LivenessConfig {
    LivenessConfig::fast(Duration::from_millis(100))
}

/// A store in a fresh temporary SQLite database, removed with the returned guard.
pub async fn sqlite_store() -> (DynStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("hangar.db").display());
    let store = store::open(&url).await.expect("open sqlite store");
    (store, dir)
}

/// A controller on 127.0.0.1:0 over `store`.
pub async fn start_controller(store: DynStore, liveness: LivenessConfig) -> RunningController {
    start_controller_with(store, ControllerConfig { liveness, ..ControllerConfig::default() }).await
}

pub async fn start_controller_with(store: DynStore, config: ControllerConfig) -> RunningController {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    Controller::start(store, config, listener).await.expect("start controller")
}

/// Test controller settings: fast liveness, everything else default.
pub fn test_config() -> ControllerConfig {
    ControllerConfig { liveness: fast_liveness(), ..ControllerConfig::default() }
}

/// One controller on a private SQLite database, with fast liveness timings.
pub struct TestCluster {
    pub controller: RunningController,
    pub store: DynStore,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    pub async fn sqlite() -> TestCluster {
        Self::sqlite_with(test_config()).await
    }

    pub async fn sqlite_with(config: ControllerConfig) -> TestCluster {
        init_logging();
        let (store, dir) = sqlite_store().await;
        let controller = start_controller_with(store.clone(), config).await;
        TestCluster { controller, store, _dir: dir }
    }

    pub fn url(&self) -> String {
        self.controller.url()
    }

    pub async fn channel(&self) -> Channel {
        channel(&self.url()).await
    }

    pub async fn nodes(&self) -> NodeServiceClient<Channel> {
        NodeServiceClient::new(self.channel().await)
    }

    pub async fn shutdown(self) {
        self.controller.shutdown().await.expect("controller shutdown");
    }
}

pub async fn channel(url: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to controller")
}

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A drone driven by hand over the real `DroneService.Attach` protocol, for tests that need
/// to control exactly when heartbeats are sent or when the stream drops.
pub struct ManualDrone {
    pub node_id: String,
    outbound: mpsc::Sender<v1::DroneAttachRequest>,
    pub inbound: tonic::Streaming<v1::DroneAttachResponse>,
}

pub fn drone_hello(name: &str) -> v1::DroneHello {
    v1::DroneHello {
        name: name.into(),
        cluster: "default".into(),
        pool: "default".into(),
        version: "test".into(),
        labels: Default::default(),
        backend_capacity: 10,
        resources: Some(v1::NodeResources {
            cpu_cores: 2,
            cpu_used_millis: 100,
            memory_total_bytes: 1 << 30,
            memory_used_bytes: 1 << 20,
        }),
        runtime: "mock".into(),
        // Driven by hand: a test that wants deferred renewals asks for them.
        lease_deferrals: false,
    }
}

impl ManualDrone {
    /// Attaches with `hello`; fails with the controller's status if it refuses.
    pub async fn attach(url: &str, hello: v1::DroneHello) -> Result<ManualDrone, tonic::Status> {
        let mut client = DroneServiceClient::new(channel(url).await);
        let (outbound, rx) = mpsc::channel(16);
        outbound
            .send(v1::DroneAttachRequest { message: Some(v1::drone_attach_request::Message::Hello(hello)) })
            .await
            .unwrap();
        let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
        match inbound.message().await? {
            Some(v1::DroneAttachResponse { message: Some(v1::drone_attach_response::Message::Welcome(w)) }) => {
                Ok(ManualDrone { node_id: w.node_id, outbound, inbound })
            }
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    pub async fn heartbeat(&self, memory_used_bytes: u64) {
        let hb = v1::DroneHeartbeat {
            local_time: None,
            resources: Some(v1::NodeResources {
                cpu_cores: 2,
                cpu_used_millis: 250,
                memory_total_bytes: 1 << 30,
                memory_used_bytes,
            }),
            backend_count: 0,
        };
        let _ = self
            .outbound
            .send(v1::DroneAttachRequest { message: Some(v1::drone_attach_request::Message::Heartbeat(hb)) })
            .await;
    }

    /// Heartbeats every `interval` until the returned task is aborted.
    pub fn keep_alive(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let outbound = self.outbound.clone();
        tokio::spawn(async move {
            loop {
                let hb = v1::DroneHeartbeat { local_time: None, resources: None, backend_count: 0 };
                if outbound
                    .send(v1::DroneAttachRequest { message: Some(v1::drone_attach_request::Message::Heartbeat(hb)) })
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(interval).await;
            }
        })
    }
}

impl ManualDrone {
    pub async fn send(&self, message: v1::drone_attach_request::Message) {
        self.outbound.send(v1::DroneAttachRequest { message: Some(message) }).await.expect("drone stream open");
    }

    /// The controller's next message, failing the test after `timeout`.
    pub async fn next_message(&mut self, timeout: Duration) -> v1::drone_attach_response::Message {
        match tokio::time::timeout(timeout, self.inbound.message()).await {
            Err(_) => panic!("drone {}: no message from the controller within {timeout:?}", self.node_id),
            Ok(Err(status)) => panic!("drone {}: stream failed: {status:?}", self.node_id),
            Ok(Ok(None)) => panic!("drone {}: stream ended", self.node_id),
            Ok(Ok(Some(response))) => response.message.expect("message"),
        }
    }

    /// The next message, or `None` when nothing arrives within `quiet`.
    pub async fn maybe_message(&mut self, quiet: Duration) -> Option<v1::drone_attach_response::Message> {
        match tokio::time::timeout(quiet, self.inbound.message()).await {
            Err(_) => None,
            Ok(Ok(Some(response))) => response.message,
            Ok(other) => panic!("drone {}: stream ended: {other:?}", self.node_id),
        }
    }

    /// The next action; other messages in between fail the test.
    pub async fn next_action(&mut self, timeout: Duration) -> v1::DroneAction {
        match self.next_message(timeout).await {
            v1::drone_attach_response::Message::Action(action) => action,
            other => panic!("drone {}: expected an action, got {other:?}", self.node_id),
        }
    }

    pub async fn ack_action(&self, action_id: &str) {
        self.send(v1::drone_attach_request::Message::AckAction(v1::AckAction { action_id: action_id.into() })).await;
    }

    /// Sends a backend event with `event_id` and waits for its AckEvent.
    pub async fn event_acked(&mut self, event_id: &str, backend_id: &str, status: v1::BackendStatus, address: &str) {
        let event = v1::DroneBackendEvent {
            event_id: event_id.into(),
            backend_id: backend_id.into(),
            status: Some(status),
            address: address.into(),
        };
        self.send(v1::drone_attach_request::Message::BackendEvent(event)).await;
        match self.next_message(Duration::from_secs(5)).await {
            v1::drone_attach_response::Message::AckEvent(ack) => assert_eq!(ack.event_id, event_id),
            other => panic!("expected the ack of {event_id}, got {other:?}"),
        }
    }
}

/// A status for a drone event: `state` now, no termination.
pub fn status(state: v1::BackendState) -> v1::BackendStatus {
    v1::BackendStatus { state: state as i32, ..Default::default() }
}

/// A proxy driven by hand over `ProxyService.Attach`, for traffic reports.
pub struct ManualProxy {
    pub node_id: String,
    outbound: mpsc::Sender<v1::ProxyAttachRequest>,
    pub inbound: tonic::Streaming<v1::ProxyAttachResponse>,
}

impl ManualProxy {
    pub async fn attach(url: &str, name: &str) -> ManualProxy {
        use v1::proxy_service_client::ProxyServiceClient;
        let mut client = ProxyServiceClient::new(channel(url).await);
        let (outbound, rx) = mpsc::channel(16);
        let hello = v1::ProxyHello { name: name.into(), version: "test".into(), ..Default::default() };
        outbound
            .send(v1::ProxyAttachRequest { message: Some(v1::proxy_attach_request::Message::Hello(hello)) })
            .await
            .unwrap();
        let mut inbound = client.attach(ReceiverStream::new(rx)).await.expect("proxy attach").into_inner();
        match inbound.message().await.expect("welcome") {
            Some(v1::ProxyAttachResponse { message: Some(v1::proxy_attach_response::Message::Welcome(w)) }) => {
                ManualProxy { node_id: w.node_id, outbound, inbound }
            }
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    pub async fn report_traffic(&self, backend_ids: &[String]) {
        let report = v1::TrafficReport { backend_ids: backend_ids.to_vec() };
        self.outbound
            .send(v1::ProxyAttachRequest { message: Some(v1::proxy_attach_request::Message::Traffic(report)) })
            .await
            .expect("proxy stream open");
    }

    pub async fn heartbeat(&self) {
        let hb = v1::ProxyHeartbeat { local_time: None, resources: None };
        let _ = self
            .outbound
            .send(v1::ProxyAttachRequest { message: Some(v1::proxy_attach_request::Message::Heartbeat(hb)) })
            .await;
    }
}

/// Reads the node with `GetNode` until `accept` holds for it, failing the test after `timeout`;
/// returns the node.
pub async fn wait_for_node(
    nodes: &mut NodeServiceClient<Channel>,
    id: &str,
    timeout: Duration,
    accept: impl Fn(&v1::Node) -> bool,
) -> v1::Node {
    eventually(timeout, &format!("node {id} in the expected state"), async || {
        let node =
            nodes.get_node(v1::GetNodeRequest { id: id.into() }).await.expect("get node").into_inner().node.unwrap();
        check(node, &accept)
    })
    .await
}

/// Path of a binary of this workspace, built by `cargo build --workspace --bins` (the README's
/// test command does that before running the tests).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test binary> → target/<profile>/<name>
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// A node registration for tests that write to the store directly.
pub fn registration(name: &str) -> hangar_server::store::NodeRegistration {
    hangar_server::store::NodeRegistration {
        kind: hangar::domain::NodeKind::Drone,
        name: name.into(),
        cluster: "default".into(),
        pool: "default".into(),
        labels: Default::default(),
        version: "test".into(),
        backend_capacity: 10,
        resources: Default::default(),
    }
}

/// Opens `WatchNodes` on `url`.
pub async fn watch(
    url: &str,
    request: v1::WatchNodesRequest,
) -> Result<tonic::Streaming<v1::WatchNodesResponse>, tonic::Status> {
    let mut client = NodeServiceClient::new(channel(url).await);
    Ok(client.watch_nodes(request).await?.into_inner())
}

/// The next event of a watch stream, failing the test after `timeout`.
pub async fn next_event(
    stream: &mut tonic::Streaming<v1::WatchNodesResponse>,
    timeout: Duration,
) -> Result<v1::NodeEvent, tonic::Status> {
    match tokio::time::timeout(timeout, stream.message()).await {
        Err(_) => panic!("no watch event within {timeout:?}"),
        Ok(Err(status)) => Err(status),
        Ok(Ok(None)) => panic!("watch stream ended without a status"),
        Ok(Ok(Some(response))) => Ok(response.event.expect("event")),
    }
}

/// A `hangar-server controller` process, killed (SIGKILL) when dropped.
pub struct ControllerProcess {
    pub child: std::process::Child,
    pub url: String,
    /// Its log, when [`ControllerProcess::spawn_with`] kept it: printed if the test fails.
    log: Option<tempfile::NamedTempFile>,
}

impl ControllerProcess {
    /// Starts the built binary on 127.0.0.1:0 against `database` with fast liveness timings and
    /// waits for it to print its URL.
    pub fn spawn(database: &str) -> ControllerProcess {
        Self::spawn_with(database, &[])
    }

    /// [`ControllerProcess::spawn`], with more arguments (TLS files, say). Its log is kept in a
    /// temporary file and printed when the test panics: a failure that needs two processes and
    /// a minute to happen must be readable from the one run that showed it.
    pub fn spawn_with(database: &str, args: &[&std::ffi::OsStr]) -> ControllerProcess {
        let log = tempfile::NamedTempFile::new().expect("a temporary file for the controller's log");
        let stderr = log.reopen().expect("the controller's log file");
        let mut controller = Self::spawn_logging(database, args, stderr);
        controller.log = Some(log);
        controller
    }

    /// [`ControllerProcess::spawn_with`], with its log (stderr) sent to `stderr`.
    pub fn spawn_logging(
        database: &str,
        args: &[&std::ffi::OsStr],
        stderr: impl Into<std::process::Stdio>,
    ) -> ControllerProcess {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(binary("hangar-server"))
            .args(["controller", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--database", database])
            .args(["--heartbeat-interval", "200ms", "--unhealthy-after", "600ms", "--offline-after", "1200ms"])
            .args(["--refresh-interval", "800ms"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start hangar-server controller");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut lines = stdout.lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("hangar-server controller listening on ") {
                        break url.trim().to_string();
                    }
                }
                _ => panic!("hangar-server controller exited before listening"),
            }
        };
        ControllerProcess { child, url, log: None }
    }

    /// SIGKILL: no shutdown, no goodbye to its drones or watchers.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
        if let Some(log) = &self.log {
            processes::print_log_if_panicking(&format!("the controller at {}", self.url), log.path());
        }
    }
}

/// A `hangar-server dev` process, as a user runs it: on port 0 for both listeners, over its own
/// data dir. Killed (SIGKILL) when dropped; [`DevProcess::stop`] stops it as Ctrl-C would.
pub struct DevProcess {
    pub child: std::process::Child,
    /// Everything it printed up to and including the banner.
    pub banner: String,
    pub controller_url: String,
    pub proxy_url: String,
}

impl DevProcess {
    /// Starts `hangar-server dev` with `args` after the listen and data-dir flags, and waits (up
    /// to 60 s) for its banner.
    pub fn start(data_dir: &std::path::Path, args: &[&str]) -> DevProcess {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(binary("hangar-server"))
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--proxy-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start hangar-server dev");
        let (lines_tx, lines) = std::sync::mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        // Read on a thread so a dev that hangs before its banner fails the test instead of
        // blocking it. It drains stdout until the process ends, so a late line never meets a
        // closed pipe; it ends with the process.
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut banner = String::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    banner.push_str(&line);
                    banner.push('\n');
                    if line.contains("Stop with Ctrl-C") {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("hangar-server dev printed no banner within 60 s (or exited); it printed:\n{banner}");
                }
            }
        }
        let address = |name: &str| {
            banner
                .lines()
                .find_map(|line| line.trim().strip_prefix(name)?.split_whitespace().next().map(str::to_string))
                .unwrap_or_else(|| panic!("no {name} URL in the banner:\n{banner}"))
        };
        let (controller_url, proxy_url) = (address("controller"), address("proxy"));
        DevProcess { child, banner, controller_url, proxy_url }
    }

    /// The drone's instance id (the `hangar.executor` label of its containers), from the banner.
    pub fn instance(&self) -> String {
        hangar_server::dev::banner_instance(&self.banner)
            .unwrap_or_else(|| panic!("the banner names the drone's instance:\n{}", self.banner))
            .to_string()
    }

    /// SIGTERM, as Ctrl-C or a service manager would, and waits until it has exited.
    pub fn stop(mut self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
        let exit = self.child.wait().expect("wait for hangar-server dev");
        assert!(exit.success(), "hangar-server dev did not stop cleanly on SIGTERM: {exit}");
    }

    /// Runs the `hangar` CLI against this dev server; stdout on success, a failed test otherwise.
    pub fn hangar(&self, args: &[&str]) -> String {
        let output = std::process::Command::new(binary("hangar"))
            .args(["--controller", &self.controller_url])
            .args(args)
            .output()
            .expect("run hangar");
        assert!(
            output.status.success(),
            "hangar {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether tests may use Docker: true when an engine answers; otherwise a loud SKIP line and
/// false, or a failed test with `HANGAR_REQUIRE_DOCKER=1`.
pub async fn docker_available(test: &str) -> bool {
    hangar_executor::testing::docker_or_skip(test, "availability-check").await.is_some()
}
