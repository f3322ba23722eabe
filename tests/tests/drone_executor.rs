//! A drone drives a real executor process over its Unix socket: the runtime it reports is on
//! its node, backends the controller places run on that executor, and the node counts them.

use hangar::v1::{self, node_service_client::NodeServiceClient};
use hangar_executor::drone::{self, DroneConfig};
use hangar_executor::runtime::Runtime;
use hangar_executor::socket::client::ExecutorClient;
use hangar_server::api::RUNTIME_LABEL;
use hangar_testkit::{check, eventually};
use hangar_tests::{TestCluster, binary, channel, wait_for_node};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn drone_runs_backends_on_its_executor_and_reports_its_runtime_and_count() {
    let cluster = TestCluster::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("exec").join("executor.sock");
    let _executor = KillOnDrop(
        std::process::Command::new(binary("hangar-drone"))
            .args(["executor", "--runtime", "mock", "--socket"])
            .arg(&socket)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = eventually(WAIT, "the executor to serve on its socket", async || {
        ExecutorClient::connect(&socket, "test").await
    })
    .await;
    let executor_client: Arc<dyn Runtime> = Arc::new(client);

    let mut config = DroneConfig::new(vec![cluster.url()], "exec-drone");
    config.runtime = Some(executor_client.clone());
    let drone = drone::spawn(config);
    let node_id = tokio::time::timeout(WAIT, drone.attached()).await.unwrap();

    let mut nodes: NodeServiceClient<_> = NodeServiceClient::new(channel(&cluster.url()).await);
    let node = wait_for_node(&mut nodes, &node_id, WAIT, |_| true).await;
    assert_eq!(node.labels.get(RUNTIME_LABEL).map(String::as_str), Some("mock"));

    // A backend placed through the controller runs on the executor behind the socket, and the
    // drone's heartbeats count it.
    let client = hangar_client::HangarClient::connect(&cluster.url()).await.unwrap();
    let connection = client
        .connect_backend(&hangar_client::ConnectRequest::keyless(hangar_client::SpawnSpec::new("mock-image")))
        .await
        .unwrap();
    eventually(WAIT, "the backend READY on the executor", async || {
        let backend = client.get_backend(&connection.backend_id).await.unwrap();
        check(backend, |b| b.state == hangar::domain::BackendState::Ready)
    })
    .await;
    let on_executor = executor_client.list().await.unwrap();
    assert_eq!(on_executor.iter().map(|b| b.backend_id.as_str()).collect::<Vec<_>>(), [connection.backend_id.as_str()]);
    wait_for_node(&mut nodes, &node_id, WAIT, |n: &v1::Node| n.backend_count == 1).await;
    client.terminate_backend(&connection.backend_id, true).await.unwrap();
    wait_for_node(&mut nodes, &node_id, WAIT, |n: &v1::Node| n.backend_count == 0).await;
    drone.shutdown().await;
    cluster.shutdown().await;
}

#[test]
fn hangar_drone_run_without_a_live_executor_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("missing.sock");
    let output = std::process::Command::new(binary("hangar-drone"))
        .args([
            "run",
            "--controller",
            "http://127.0.0.1:1",
            "--name",
            "d",
            "--admin-listen",
            "127.0.0.1:0",
            "--executor-socket",
        ])
        .arg(&socket)
        .arg("--data-dir")
        .arg(dir.path().join("drone"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach the executor") && stderr.contains("hangar-drone executor --socket"),
        "{stderr}"
    );
}

/// `--docker-network` needs `--docker-addresses` and the docker runtime, and a slice too small to
/// hand out in turn is refused; each mistake is named before anything starts.
#[test]
fn hangar_drone_run_refuses_a_docker_network_without_its_slice_or_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let output = std::process::Command::new(binary("hangar-drone"))
            .args(["run", "--controller", "http://127.0.0.1:1", "--name", "d", "--admin-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("drone"))
            .args(extra)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{extra:?} refused");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = run(&["--runtime", "docker", "--docker-network", "backends"]);
    assert!(stderr.contains("--docker-addresses"), "{stderr}");
    let stderr = run(&["--runtime", "process", "--docker-network", "backends", "--docker-addresses", "10.9.0.64/27"]);
    assert!(stderr.contains("works with the docker runtime only"), "{stderr}");
    let stderr = run(&["--runtime", "docker", "--docker-network", "backends", "--docker-addresses", "10.9.0.64/32"]);
    assert!(stderr.contains("at least two addresses"), "{stderr}");
    let stderr = run(&["--runtime", "docker", "--docker-network", "backends", "--docker-addresses", "not-a-cidr"]);
    assert!(stderr.contains("--docker-addresses"), "{stderr}");
    // With an engine: a network that does not exist, or a slice outside its subnet.
    if !std::process::Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success()) {
        assert_ne!(std::env::var("HANGAR_REQUIRE_DOCKER").as_deref(), Ok("1"), "HANGAR_REQUIRE_DOCKER=1 but no engine");
        eprintln!("!!!!!!!! SKIPPED the Docker half of this test: no Docker engine answers !!!!!!!!");
        return;
    }
    let missing = format!("hangar-no-such-network-{}", std::process::id());
    let stderr = run(&["--runtime", "docker", "--docker-network", &missing, "--docker-addresses", "10.9.0.64/27"]);
    assert!(stderr.contains(&format!("there is no Docker network {missing}")), "{stderr}");
    let stderr = run(&["--runtime", "docker", "--docker-network", "bridge", "--docker-addresses", "10.9.0.64/27"]);
    assert!(stderr.contains("is not inside the subnet of the Docker network bridge"), "{stderr}");
}
