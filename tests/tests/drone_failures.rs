//! Drones that die: a `hangar-drone run` process killed with SIGKILL, and one restarted on its
//! journal. The backends run on the process runtime inside the drone process.

use hangar::domain::{BackendState, TerminationReason};
use hangar_client::{BackendView, ConnectRequest, Connection, HangarClient, SpawnSpec};
use hangar_executor::drone::{self, DroneConfig};
use hangar_executor::runtime::process::ProcessRuntime;
use hangar_testkit::{check, eventually};
use hangar_tests::{TestCluster, binary, test_config};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

struct DroneProcess(std::process::Child);

impl DroneProcess {
    fn start(controller: &str, name: &str, data_dir: &std::path::Path) -> DroneProcess {
        let child = std::process::Command::new(binary("hangar-drone"))
            .args([
                "run",
                "--controller",
                controller,
                "--name",
                name,
                "--runtime",
                "process",
                "--admin-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start hangar-drone run");
        DroneProcess(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for DroneProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn wait_for(client: &HangarClient, id: &str, state: BackendState) -> BackendView {
    eventually(WAIT, &format!("backend {id} {state:?}"), async || {
        check(client.get_backend(id).await.unwrap(), |b| b.state == state)
    })
    .await
}

/// Connects once a drone has attached and taken the backend.
async fn connect_once_a_drone_is_there(client: &HangarClient, request: &ConnectRequest) -> Connection {
    eventually(WAIT, "a drone to take the backend", async || client.connect_backend(request).await).await
}

fn answers(address: &str) -> bool {
    std::net::TcpStream::connect_timeout(&address.parse().unwrap(), Duration::from_millis(200)).is_ok()
}

#[tokio::test]
async fn a_killed_drones_backend_ends_lost_and_its_key_moves_on_with_a_higher_fencing_token() {
    let mut config = test_config();
    config.backends.lease_duration = Duration::from_secs(2);
    config.backends.sweep_interval = Duration::from_millis(100);
    let cluster = TestCluster::sqlite_with(config).await;
    let client = HangarClient::connect(&cluster.url()).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut drone_a = DroneProcess::start(&cluster.url(), "drone-a", &data.path().join("a"));

    let image = hangar_executor::testing::test_backend_binary().display().to_string();
    let request = ConnectRequest::key("e2e", "room-1", "").spawn(SpawnSpec::new(image));
    let first = connect_once_a_drone_is_there(&client, &request).await;
    let first = wait_for(&client, &first.backend_id, BackendState::Ready).await;
    assert_eq!(first.fencing_token, 1);
    assert!(answers(&first.address));

    let killed = Instant::now();
    drone_a.kill();
    // The backend dies with its drone: it cannot go on serving a key that is about to move.
    eventually(Duration::from_secs(5), "the backend to die with its drone", async || !answers(&first.address)).await;

    let mut b_config = DroneConfig::new(vec![cluster.url()], "drone-b");
    b_config.runtime = Some(Arc::new(ProcessRuntime::new()));
    let drone_b = drone::spawn(b_config);
    tokio::time::timeout(WAIT, drone_b.attached()).await.unwrap();

    let lost = wait_for(&client, &first.id, BackendState::Terminated).await;
    assert_eq!(lost.status.termination_reason, Some(TerminationReason::Lost));
    eprintln!("backend LOST {:?} after its drone was killed (lease 2 s)", killed.elapsed());

    let second = client.connect_backend(&request).await.unwrap();
    assert!(second.spawned);
    assert_ne!(second.backend_id, first.id);
    let second = wait_for(&client, &second.backend_id, BackendState::Ready).await;
    assert_eq!(second.fencing_token, 2, "a new holder gets a higher fencing token");
    let env = hangar_executor::testing::http_get(&second.address, "/env").await.unwrap().1;
    assert!(env.lines().any(|l| l == "HANGAR_FENCING_TOKEN=2"), "{env}");
    assert!(!answers(&first.address), "never two live backends for one key");
    drone_b.shutdown().await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_restarted_drone_replays_its_journal_and_the_controller_converges_on_its_states() {
    let cluster = TestCluster::sqlite().await;
    let client = HangarClient::connect(&cluster.url()).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let journal = data.path().join("journal");
    let mut drone = DroneProcess::start(&cluster.url(), "phoenix", &journal);

    let image = hangar_executor::testing::test_backend_binary().display().to_string();
    let request = ConnectRequest::keyless(SpawnSpec::new(image));
    let connection = connect_once_a_drone_is_there(&client, &request).await;
    let ready = wait_for(&client, &connection.backend_id, BackendState::Ready).await;

    // Killed: its backend dies with it, and the controller still believes READY.
    drone.kill();
    assert_eq!(client.get_backend(&ready.id).await.unwrap().state, BackendState::Ready);

    // Back on the same journal: it reconciles with its runtime (which lost the backend), and the
    // event reaches the controller.
    let _drone = DroneProcess::start(&cluster.url(), "phoenix", &journal);
    let ended = wait_for(&client, &ready.id, BackendState::Terminated).await;
    assert_eq!(ended.status.termination_reason, Some(TerminationReason::Lost));
    let history: Vec<_> = {
        use futures::StreamExt;
        let statuses = client.watch_backend(&ready.id);
        tokio::pin!(statuses);
        let mut seen = Vec::new();
        while let Some(status) = tokio::time::timeout(WAIT, statuses.next()).await.unwrap() {
            seen.push(status.unwrap().state);
        }
        seen
    };
    assert!(history.windows(2).all(|w| w[0] < w[1]), "states only move forward, none twice: {history:?}");
    assert_eq!(history.last(), Some(&BackendState::Terminated));
    cluster.shutdown().await;
}
