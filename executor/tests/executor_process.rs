//! The real `hangar-drone executor` binary as a separate process: the client sees UNAVAILABLE
//! when it dies, reconnects and handshakes again when it returns, and reconciles with
//! ListBackends. Also its command line and its graceful stop on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use hangar_executor::runtime::{BackendInfo, BackendSpec, BackendState, Runtime, RuntimeError, RuntimeKind};
use hangar_executor::socket::client::ExecutorClient;
use hangar_executor::testing::{ContainerCleanup, docker_or_skip, test_image, unique_name, wait_for_http};
use hangar_testkit::eventually;

/// A running `hangar-drone executor`, killed when dropped so no test leaves one behind.
struct ExecutorProcess {
    child: Child,
}

impl ExecutorProcess {
    fn spawn(socket: &Path, args: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_hangar-drone"))
            .arg("executor")
            .arg("--socket")
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn hangar-drone executor");
        ExecutorProcess { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ExecutorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

const WAIT: Duration = Duration::from_secs(15);

/// Connects once the executor serves (it needs a moment to bind).
async fn connect(socket: &Path) -> ExecutorClient {
    eventually(WAIT, &format!("the executor to answer on {}", socket.display()), async || {
        ExecutorClient::connect(socket, "executor-process-test").await
    })
    .await
}

/// Reconciles once `client` reaches the restarted executor; an error other than UNAVAILABLE
/// fails at once.
async fn reconcile_after_restart(client: &ExecutorClient) -> Vec<BackendInfo> {
    eventually(WAIT, "the client to reach the restarted executor", async || match client.reconcile().await {
        Err(err) if !matches!(err, RuntimeError::Unavailable(_)) => {
            panic!("reconnecting to the restarted executor failed: {err}")
        }
        answer => answer,
    })
    .await
}

fn socket_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("run/executor.sock")
}

fn mock_spec(id: &str) -> BackendSpec {
    BackendSpec { backend_id: id.into(), image: "mock/x".into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reports_unavailable_when_executor_dies_and_reconnects_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_path(&dir);
    let mut first = ExecutorProcess::spawn(&socket, &["--runtime", "mock"]);
    let client = connect(&socket).await;
    assert_eq!(client.kind(), RuntimeKind::Mock);
    client.start(mock_spec("before-crash")).await.expect("start");
    let mut events = client.events().await.expect("events");
    events.next().await.unwrap().unwrap();

    // The mock kills its own executor process in the middle of this call.
    let mut crash = mock_spec("crash");
    crash.env.insert("HANGAR_MOCK_CRASH_EXECUTOR".into(), "1".into());
    match client.start(crash).await {
        Err(RuntimeError::Unavailable(_)) => {}
        other => panic!("a call that killed the executor: expected UNAVAILABLE, got {other:?}"),
    }
    let status = first.child.wait().expect("executor exit status");
    assert!(!status.success(), "the executor died: {status:?}");
    match tokio::time::timeout(Duration::from_secs(5), events.next()).await.expect("the event stream notices") {
        None | Some(Err(_)) => {}
        Some(Ok(event)) => panic!("an event from a dead executor: {event:?}"),
    }
    match client.list().await {
        Err(RuntimeError::Unavailable(_)) => {}
        other => panic!("while the executor is down: expected UNAVAILABLE, got {other:?}"),
    }

    // Same socket path: the dead executor's socket file is stale and gets replaced.
    let _second = ExecutorProcess::spawn(&socket, &["--runtime", "mock"]);
    let backends = reconcile_after_restart(&client).await;
    // The new mock executor starts empty: reconcile tells the drone its backend is gone.
    assert!(backends.iter().all(|b| b.backend_id != "before-crash"), "{backends:?}");
    // The same client handshook again (the server admits nothing without it) and works.
    client.start(mock_spec("after-restart")).await.expect("start after the restart");
    let backends = client.reconcile().await.unwrap();
    assert_eq!(backends.iter().map(|b| b.backend_id.as_str()).collect::<Vec<_>>(), vec!["after-restart"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_backend_survives_executor_restart_and_reconcile_finds_it() {
    let instance = unique_name("restart");
    let _cleanup = ContainerCleanup::new(&instance);
    let Some(probe) =
        docker_or_skip("docker_backend_survives_executor_restart_and_reconcile_finds_it", &instance).await
    else {
        return;
    };
    drop(probe);
    let image = tokio::task::spawn_blocking(test_image).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_path(&dir);
    let args = ["--runtime", "docker", "--instance", instance.as_str()];
    let mut first = ExecutorProcess::spawn(&socket, &args);
    let client = connect(&socket).await;
    let spec = BackendSpec { backend_id: "survivor".into(), image: image.into(), ..Default::default() };
    let started = client.start(spec).await.expect("start");

    first.kill();
    match client.inspect("survivor").await {
        Err(RuntimeError::Unavailable(_)) => {}
        other => panic!("with the executor killed: expected UNAVAILABLE, got {other:?}"),
    }

    let _second = ExecutorProcess::spawn(&socket, &args);
    let backends = reconcile_after_restart(&client).await;
    let survivor = backends.iter().find(|b| b.backend_id == "survivor").expect("reconcile finds the container");
    assert_eq!(survivor.state, BackendState::Running);
    assert_eq!(survivor.runtime_id, started.runtime_id);
    assert_eq!(survivor.address, started.address);
    wait_for_http(&survivor.address, "/", Duration::from_secs(10)).await;
    client.remove("survivor").await.expect("the new executor manages the adopted container");
}

#[tokio::test]
async fn executor_stops_gracefully_on_sigterm_and_removes_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_path(&dir);
    let mut executor = ExecutorProcess::spawn(&socket, &["--runtime", "process"]);
    let client = connect(&socket).await;
    assert_eq!(client.kind(), RuntimeKind::Process);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(executor.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let status = executor.child.wait();
        (status, executor)
    })
    .await
    .unwrap()
    .0
    .unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(!socket.exists(), "socket removed on shutdown");
}

#[test]
fn executor_help_names_every_option() {
    let output = Command::new(env!("CARGO_BIN_EXE_hangar-drone")).args(["executor", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for option in ["--socket", "--runtime", "--allow-uid", "--instance", "docker", "process", "mock", "0600"] {
        assert!(help.contains(option), "--help mentions {option}:\n{help}");
    }
}
