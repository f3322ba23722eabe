//! `scripts/cluster`: two controllers on PostgreSQL, three drones and two proxies, each its own
//! container and address, come up with five READY nodes; a backend connected through one
//! controller is reached through both proxies (neither is on the backend's drone); and a node's
//! network namespace is reachable for fault tests. `scripts/cluster down` runs even when the test
//! fails (the guard's drop), and leaves nothing labelled with the cluster behind.

use std::collections::BTreeSet;
use std::time::Duration;

use hangar::v1::{self, backend_service_client::BackendServiceClient, node_service_client::NodeServiceClient};
use hangar_executor::testing::wait_for_http;
use hangar_testkit::{check, eventually};
use hangar_tests::containers::{Cluster, Image, docker};

fn spawn_config() -> v1::SpawnConfig {
    v1::SpawnConfig {
        executable: Some(v1::Executable {
            image: "/usr/local/bin/hangar-server".into(),
            args: vec!["demo-backend".into()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// GET `url` (http://HOST:PORT/PATH) until something answers; status and body.
async fn get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    wait_for_http(authority, path, Duration::from_secs(20)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_comes_up_with_five_ready_nodes_and_proxies_reach_backends_on_other_hosts() {
    let test = "the_cluster_comes_up_with_five_ready_nodes_and_proxies_reach_backends_on_other_hosts";
    if !hangar_tests::docker_available(test).await {
        return;
    }
    let image = Image::build("cluster");
    let cluster = Cluster::up("t", &image, 120, &[]);
    let controllers = cluster.controllers();
    assert_eq!(controllers.len(), 2);

    // Five READY nodes, as the second controller lists them (the script asked the first).
    let channel = hangar_tests::channel(&controllers[1]).await;
    let listed = NodeServiceClient::new(channel.clone())
        .list_nodes(v1::ListNodesRequest::default())
        .await
        .expect("list nodes")
        .into_inner()
        .nodes;
    let ready: BTreeSet<(String, i32)> =
        listed.iter().filter(|n| n.state == v1::NodeState::Ready as i32).map(|n| (n.name.clone(), n.kind)).collect();
    let drone = v1::NodeKind::Drone as i32;
    let proxy = v1::NodeKind::Proxy as i32;
    let expected: BTreeSet<(String, i32)> =
        [("drone-1", drone), ("drone-2", drone), ("drone-3", drone), ("proxy-1", proxy), ("proxy-2", proxy)]
            .into_iter()
            .map(|(name, kind)| (name.to_string(), kind))
            .collect();
    assert_eq!(ready, expected, "every node: {listed:?}");

    // A backend connected through ctl-1: its URL is on proxy-1, which forwards to the drone's
    // advertised address in another container.
    let mut first = BackendServiceClient::new(hangar_tests::channel(&controllers[0]).await);
    let key = v1::BackendKey { namespace: "cluster".into(), name: "doc-1".into(), tag: String::new() };
    let connected = first
        .connect(v1::ConnectRequest {
            key: Some(key.clone()),
            spawn_config: Some(spawn_config()),
            ..Default::default()
        })
        .await
        .expect("connect through ctl-1")
        .into_inner();
    assert!(connected.spawned);
    assert!(connected.url.starts_with(&format!("http://{}:7080/", cluster.ip("proxy-1"))), "{}", connected.url);
    let backend_id = connected.backend_id.clone();
    let ready = eventually(Duration::from_secs(30), "the backend READY", async || {
        let backend =
            first.get_backend(v1::GetBackendRequest { id: backend_id.clone() }).await.unwrap().into_inner().backend;
        let backend = backend.unwrap();
        let state = backend.status.as_ref().map(|s| s.state);
        check(backend, |_| state == Some(v1::BackendState::Ready as i32))
    })
    .await;
    let drone_ips: Vec<&str> = ["drone-1", "drone-2", "drone-3"].iter().map(|n| cluster.ip(n)).collect();
    let host = ready.address.rsplit_once(':').unwrap().0;
    assert!(drone_ips.contains(&host), "reported at its drone's address ({}), not loopback", ready.address);

    let (status, body) = get(&connected.url).await;
    assert_eq!(status, 200, "through proxy-1: {body}");
    assert!(body.contains(&backend_id), "proxy-1 reached the backend: {body}");

    // The same key through ctl-2: the same backend, its URL on proxy-2.
    let again = BackendServiceClient::new(channel)
        .connect(v1::ConnectRequest { key: Some(key), ..Default::default() })
        .await
        .expect("connect through ctl-2")
        .into_inner();
    assert_eq!((again.backend_id.as_str(), again.spawned), (backend_id.as_str(), false));
    assert!(again.url.starts_with(&format!("http://{}:7080/", cluster.ip("proxy-2"))), "{}", again.url);
    let (status, body) = get(&again.url).await;
    assert_eq!(status, 200, "through proxy-2: {body}");
    assert!(body.contains(&backend_id), "proxy-2 reached the backend: {body}");

    // What a fault suite builds on: predictable container names and a node's network namespace.
    assert_eq!(docker(&["inspect", "-f", "{{.State.Status}}", &cluster.container("drone-2")]), "running");
    let in_namespace = cluster.netns("drone-2", &["ip", "-4", "-o", "addr", "show"]);
    assert!(in_namespace.status.success(), "scripts/cluster netns (root or sudo needed)");
    let addresses = String::from_utf8_lossy(&in_namespace.stdout);
    assert!(addresses.contains(&format!("inet {}/", cluster.ip("drone-2"))), "drone-2's namespace: {addresses}");
    let status = cluster.script(&["status"]);
    assert!(status.status.success());
    assert_eq!(String::from_utf8_lossy(&status.stdout).matches(" READY ").count(), 5, "status lists five READY nodes");

    // `down` leaves nothing it made: no container, network or volume with the cluster's label.
    let label = format!("label=hangar.cluster={}", cluster.name);
    cluster.down();
    assert_eq!(docker(&["ps", "-aq", "--filter", &label]), "", "containers left");
    assert_eq!(docker(&["network", "ls", "-q", "--filter", &label]), "", "network left");
    assert_eq!(docker(&["volume", "ls", "-q", "--filter", &label]), "", "volume left");
}
