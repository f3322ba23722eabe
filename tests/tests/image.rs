//! The container image (`Dockerfile`, `scripts/image`): built here with nothing pulled, it runs
//! `hangar-server --version` as a non-root user, and a controller and a drone (process runtime)
//! in two containers make a working Hangar: the drone attaches by the controller's container
//! name, is READY, and runs a backend that answers HTTP.

use std::time::Duration;

use hangar::v1::{self, backend_service_client::BackendServiceClient, node_service_client::NodeServiceClient};
use hangar_executor::testing::wait_for_http;
use hangar_testkit::{check, eventually};
use hangar_tests::containers::{Image, docker};

/// Removes the test's containers (label `hangar.test=ID`) and its network when dropped.
struct Cleanup {
    id: String,
    network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // No panicking docker() here: a drop may run while the test is already panicking.
        let filter = format!("label=hangar.test={}", self.id);
        let listed = std::process::Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output();
        let listed = listed.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
        let ids: Vec<&str> = listed.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = std::process::Command::new("docker").args(&args).output();
        }
        let _ = std::process::Command::new("docker").args(["network", "rm", &self.network]).output();
    }
}

fn ip_of(container: &str) -> String {
    docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_a_controller_and_a_drone_that_runs_a_backend() {
    if !hangar_tests::docker_available("the_image_runs_a_controller_and_a_drone_that_runs_a_backend").await {
        return;
    }
    let image = Image::build("image");

    // --version, as the entrypoint (hangar-server) and as the two other binaries.
    assert_eq!(
        docker(&["run", "--rm", &image.tag, "--version"]),
        format!("hangar-server {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        docker(&["run", "--rm", "--entrypoint", "hangar-drone", &image.tag, "--version"]),
        format!("hangar-drone {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        docker(&["run", "--rm", "--entrypoint", "hangar", &image.tag, "--version"]),
        format!("hangar {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(docker(&["image", "inspect", "-f", "{{.Config.User}}", &image.tag]), "10001:10001", "not root");

    let id = image.tag.rsplit('-').next().unwrap().to_string();
    let network = format!("hangar-image-test-{id}");
    let _cleanup = Cleanup { id: id.clone(), network: network.clone() };
    let label = format!("hangar.test={id}");
    docker(&["network", "create", "--label", &label, &network]);
    let controller = format!("{network}-ctl");
    let drone = format!("{network}-drone");
    // The controller on SQLite in the image's /var/lib/hangar (writable by uid 10001).
    docker(&[
        "run",
        "-d",
        "--name",
        &controller,
        "--network",
        &network,
        "--label",
        &label,
        &image.tag,
        "controller",
        "--listen",
        "0.0.0.0:7070",
        "--admin-listen",
        "0.0.0.0:7071",
        "--insecure",
    ]);
    // The drone finds the controller by its container name (Docker's DNS through the image's
    // nsswitch.conf) and runs backends as its own child processes.
    docker(&[
        "run",
        "-d",
        "--init",
        "--name",
        &drone,
        "--network",
        &network,
        "--label",
        &label,
        "--entrypoint",
        "hangar-drone",
        &image.tag,
        "run",
        "--controller",
        &format!("http://{controller}:7070"),
        "--name",
        "smoke",
        "--runtime",
        "process",
        "--data-dir",
        "/var/lib/hangar/drone",
    ]);

    let url = format!("http://{}:7070", ip_of(&controller));
    let channel = eventually(Duration::from_secs(30), "the controller in its container answering", async || {
        tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await
    })
    .await;
    let mut nodes = NodeServiceClient::new(channel.clone());
    let node = eventually(Duration::from_secs(30), "the drone READY in ListNodes", async || {
        let listed = nodes.list_nodes(v1::ListNodesRequest::default()).await.map(|r| r.into_inner().nodes);
        check(
            listed.map(|nodes| nodes.into_iter().find(|n| n.name == "smoke")),
            |found| matches!(found, Ok(Some(node)) if node.state == v1::NodeState::Ready as i32),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(node.kind, v1::NodeKind::Drone as i32);

    // A backend: the image's own demo backend, run by the drone inside its container.
    let mut backends = BackendServiceClient::new(channel);
    let spawn_config = v1::SpawnConfig {
        executable: Some(v1::Executable {
            image: "/usr/local/bin/hangar-server".into(),
            args: vec!["demo-backend".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let key = v1::BackendKey { namespace: "image".into(), name: "smoke".into(), tag: String::new() };
    let connected = backends
        .connect(v1::ConnectRequest { key: Some(key), spawn_config: Some(spawn_config), ..Default::default() })
        .await
        .expect("connect")
        .into_inner();
    let backend_id = connected.backend_id;
    let ready = eventually(Duration::from_secs(30), "the backend READY", async || {
        let backend = backends
            .get_backend(v1::GetBackendRequest { id: backend_id.clone() })
            .await
            .expect("get backend")
            .into_inner()
            .backend
            .unwrap();
        let state = backend.status.as_ref().map(|s| s.state);
        check(backend, |_| state == Some(v1::BackendState::Ready as i32))
    })
    .await;
    assert_eq!(ready.drone_id, node.id);
    // Reported as the drone sees it (127.0.0.1:PORT, no --advertise-host); the demo backend
    // listens on every interface, so the host reaches it at the drone container's address.
    let port = ready.address.rsplit(':').next().unwrap();
    let (status, body) = wait_for_http(&format!("{}:{port}", ip_of(&drone)), "/", Duration::from_secs(10)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&backend_id), "the demo backend names itself: {body}");
}
