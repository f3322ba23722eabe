//! A drone drives a real executor process over its Unix socket: the runtime it reports is on
//! its node, and so is the number of backends the executor runs.

use hangar::v1::{self, node_service_client::NodeServiceClient};
use hangar_executor::client::ExecutorClient;
use hangar_executor::drone::{self, DroneConfig};
use hangar_executor::runtime::{BackendSpec, Runtime};
use hangar_server::api::RUNTIME_LABEL;
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
async fn drone_reports_its_executors_runtime_and_running_backends() {
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
    let deadline = tokio::time::Instant::now() + WAIT;
    let client = loop {
        match ExecutorClient::connect(&socket, "test").await {
            Ok(client) => break client,
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%err, "executor not up yet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("executor never came up: {err}"),
        }
    };
    let client: Arc<dyn Runtime> = Arc::new(client);

    let mut config = DroneConfig::new(vec![cluster.url()], "exec-drone");
    config.runtime = Some(client.clone());
    let drone = drone::spawn(config);
    let node_id = tokio::time::timeout(WAIT, drone.attached()).await.unwrap();

    let mut nodes: NodeServiceClient<_> = NodeServiceClient::new(channel(&cluster.url()).await);
    let node = wait_for_node(&mut nodes, &node_id, WAIT, |_| true).await;
    assert_eq!(node.labels.get(RUNTIME_LABEL).map(String::as_str), Some("mock"));

    let spec = BackendSpec {
        backend_id: "bk-counted".into(),
        image: "mock".into(),
        command: vec![],
        env: Default::default(),
        port: 0,
        resources: Default::default(),
        labels: Default::default(),
    };
    client.start(spec).await.unwrap();
    wait_for_node(&mut nodes, &node_id, WAIT, |n: &v1::Node| n.backend_count == 1).await;
    client.stop("bk-counted", Duration::ZERO).await.unwrap();
    wait_for_node(&mut nodes, &node_id, WAIT, |n: &v1::Node| n.backend_count == 0).await;
    drone.shutdown().await;
    cluster.shutdown().await;
}

#[test]
fn hangar_drone_run_without_a_live_executor_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("missing.sock");
    let output = std::process::Command::new(binary("hangar-drone"))
        .args(["run", "--controller", "http://127.0.0.1:1", "--name", "d", "--executor-socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach the executor") && stderr.contains("hangar-drone executor --socket"),
        "{stderr}"
    );
}
