//! Docker-only behaviour beyond the conformance suite: the watch on the engine's event stream is
//! resubscribed (with a reconcile by label) whenever it ends, and changes made behind the
//! executor's back are noticed; an advertised host publishes backends for proxies on other hosts.

use std::time::Duration;

use futures::StreamExt;
use hangar_executor::runtime::docker::DockerOptions;
use hangar_executor::runtime::{BackendSpec, BackendState, EventKind, Runtime};
use hangar_executor::testing::{ContainerCleanup, docker_or_skip, docker_or_skip_with, test_image, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_event_stream_is_resubscribed_without_losing_or_repeating_events() {
    let instance = unique_name("resub");
    let _cleanup = ContainerCleanup::new(&instance);
    // Subscriptions that the engine itself ends every second stand in for an engine restart.
    let options =
        DockerOptions { instance: instance.clone(), resubscribe_every: Duration::from_secs(1), ..Default::default() };
    let Some(runtime) =
        docker_or_skip_with("engine_event_stream_is_resubscribed_without_losing_or_repeating_events", options).await
    else {
        return;
    };
    let image = tokio::task::spawn_blocking(test_image).await.unwrap();
    let mut events = runtime.events().await.unwrap();
    assert_eq!(events.next().await.unwrap().unwrap().kind, EventKind::Sync);

    let spec = BackendSpec {
        backend_id: "resub-1".into(),
        image: image.into(),
        env: [("TEST_BACKEND_EXIT_AFTER_MS", "3500"), ("TEST_BACKEND_EXIT_CODE", "3")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    runtime.start(spec).await.expect("start");

    // The exit happens seconds after the start returned: only the engine watch can report it.
    let mut mine = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !mine.iter().any(|k| matches!(k, EventKind::Exited { .. })) {
        let event = tokio::time::timeout_at(deadline, events.next()).await.expect("EXITED in time").unwrap().unwrap();
        if event.backend_id == "resub-1" {
            mine.push(event.kind);
        }
    }
    let subscriptions = runtime.event_subscriptions();
    assert!(subscriptions >= 3, "the engine stream was resubscribed every second: {subscriptions}");

    // Later subscriptions replay the recent past (`since`); none of it may be published twice
    // (a window for duplicates that must not come).
    let settle = tokio::time::Instant::now() + Duration::from_millis(2500);
    while let Ok(Some(event)) = tokio::time::timeout_at(settle, events.next()).await {
        let event = event.unwrap();
        if event.backend_id == "resub-1" {
            mine.push(event.kind);
        }
    }
    assert!(runtime.event_subscriptions() > subscriptions, "still resubscribing");
    assert_eq!(mine, vec![EventKind::Started, EventKind::Exited { exit_code: Some(3) }]);
    runtime.remove("resub-1").await.unwrap();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_removed_behind_the_executors_back_is_reported_and_started_afresh() {
    let instance = unique_name("behind");
    let _cleanup = ContainerCleanup::new(&instance);
    let test = "container_removed_behind_the_executors_back_is_reported_and_started_afresh";
    let Some(runtime) = docker_or_skip(test, &instance).await else { return };
    let image = tokio::task::spawn_blocking(test_image).await.unwrap();
    let mut events = runtime.events().await.unwrap();
    events.next().await.unwrap().unwrap();
    let spec = BackendSpec { backend_id: "b1".into(), image: image.into(), ..Default::default() };
    let first = runtime.start(spec.clone()).await.unwrap();

    let removed = std::process::Command::new("docker").args(["rm", "-f", &first.runtime_id]).output().unwrap();
    assert!(removed.status.success());
    let mut kinds = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !kinds.contains(&EventKind::Removed) {
        let event = tokio::time::timeout_at(deadline, events.next()).await.expect("REMOVED in time").unwrap().unwrap();
        kinds.push(event.kind);
    }
    assert!(
        matches!(kinds.as_slice(), [EventKind::Started, EventKind::Exited { .. }, EventKind::Removed]),
        "{kinds:?}"
    );

    let second = runtime.start(spec).await.unwrap();
    assert_ne!(second.runtime_id, first.runtime_id, "a new container, not the stale answer");
    assert_eq!(runtime.inspect("b1").await.unwrap().state, BackendState::Running);
    runtime.shutdown().await;
}

/// `--advertise-host` on the docker runtime: the backend's port is published on every interface
/// of the engine's host and the backend is reported at the advertised host, so a proxy on
/// another host reaches it; without it, on 127.0.0.1 and reported there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advertised_host_publishes_a_backend_on_every_interface_and_reports_it_there() {
    let test = "an_advertised_host_publishes_a_backend_on_every_interface_and_reports_it_there";
    let instance = unique_name("advertised");
    let _cleanup = ContainerCleanup::new(&instance);
    let options =
        DockerOptions { instance: instance.clone(), advertise_host: Some("localhost".into()), ..Default::default() };
    let Some(runtime) = docker_or_skip_with(test, options).await else { return };
    let image = tokio::task::spawn_blocking(test_image).await.unwrap();
    let spec = BackendSpec { backend_id: "adv-1".into(), image: image.into(), ..Default::default() };
    let started = runtime.start(spec).await.unwrap();
    let port = started
        .address
        .strip_prefix("localhost:")
        .unwrap_or_else(|| panic!("reported at the advertised host: {}", started.address));
    let binding = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range $p, $b := .NetworkSettings.Ports}}{{range $b}}{{.HostIp}} {{end}}{{end}}",
            &started.runtime_id,
        ])
        .output()
        .unwrap();
    let host_ips = String::from_utf8_lossy(&binding.stdout).trim().to_string();
    assert!(
        host_ips.split_whitespace().all(|ip| ip == "0.0.0.0" || ip == "::"),
        "published on every interface: {host_ips:?}"
    );
    let (status, _) =
        hangar_executor::testing::wait_for_http(&format!("127.0.0.1:{port}"), "/", Duration::from_secs(20)).await;
    assert_eq!(status, 200);
    assert_eq!(runtime.inspect("adv-1").await.unwrap().address, started.address, "inspect reports the same");
    runtime.remove("adv-1").await.unwrap();
    runtime.shutdown().await;

    // The same runtime without an advertised host: loopback only.
    let instance = unique_name("loopback");
    let _cleanup = ContainerCleanup::new(&instance);
    let Some(runtime) = docker_or_skip(test, &instance).await else { return };
    let image = tokio::task::spawn_blocking(test_image).await.unwrap();
    let spec = BackendSpec { backend_id: "lo-1".into(), image: image.into(), ..Default::default() };
    let started = runtime.start(spec).await.unwrap();
    assert!(started.address.starts_with("127.0.0.1:"), "{}", started.address);
    runtime.remove("lo-1").await.unwrap();
    runtime.shutdown().await;
}

/// `--docker-network` with `--docker-addresses` on the docker runtime: every backend joins the
/// network at an address of the runtime's own slice, is reported there with nothing published
/// on the engine's host, and an address a removed backend had is not the next one handed out
/// (the engine's own choice would be: a proxy still routing the ended backend's URL there would
/// reach the new one). A client on the network (here the host, which has an interface on every
/// bridge network it made) reaches the backend at its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_on_a_docker_network_get_addresses_in_turn_from_the_runtimes_slice_and_publish_nothing() {
    let test = "backends_on_a_docker_network_get_addresses_in_turn_from_the_runtimes_slice_and_publish_nothing";
    let instance = unique_name("network");
    // A /24 of its own per run, from the name's hash: runs in parallel do not collide.
    let third = instance.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % 200 + 20;
    let slice: ipnet::Ipv4Net = format!("10.252.{third}.64/29").parse().unwrap();
    // The engine first (a runtime on a network checks at start-up that the network holds its
    // slice), then the network, then the runtime on it.
    let Some(engine) = docker_or_skip(test, &instance).await else { return };
    engine.shutdown().await;
    // Dropped in reverse: the containers go first, then the network they were on.
    let _network = DockerNetwork::create(&instance, &format!("10.252.{third}.0/24"));
    let _cleanup = ContainerCleanup::new(&instance);
    let network = hangar_executor::runtime::docker::DockerNetwork { name: instance.clone(), addresses: slice };
    let options = DockerOptions { instance: instance.clone(), network: Some(network), ..Default::default() };
    let runtime = hangar_executor::runtime::docker::DockerRuntime::connect(options).await.unwrap();
    let image = tokio::task::spawn_blocking(test_image).await.unwrap();
    let start = |id: &str| BackendSpec { backend_id: id.into(), image: image.into(), ..Default::default() };

    let first = runtime.start(start("net-1")).await.unwrap();
    let (ip, port) = first.address.rsplit_once(':').expect("IP:PORT");
    assert!(slice.contains(&ip.parse::<std::net::Ipv4Addr>().unwrap()), "{ip} in {slice}");
    assert_eq!(port, "8080", "the container's own port");
    let on_network = docker(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{instance}\").IPAddress}}}}"),
        &first.runtime_id,
    ]);
    assert_eq!(ip, on_network, "reported at its address on the network");
    let published = docker(&[
        "inspect",
        "-f",
        "{{range $p, $b := .NetworkSettings.Ports}}{{range $b}}{{.HostPort}} {{end}}{{end}}",
        &first.runtime_id,
    ]);
    assert!(published.is_empty(), "nothing published on the host: {published:?}");
    let (status, _) = hangar_executor::testing::wait_for_http(&first.address, "/", Duration::from_secs(20)).await;
    assert_eq!(status, 200);
    assert_eq!(runtime.inspect("net-1").await.unwrap().address, first.address, "inspect reports the same");

    // Removed, its address is not the next one given; the slice's six are used in turn.
    runtime.remove("net-1").await.unwrap();
    let mut seen = vec![ip.to_string()];
    for i in 2..=6 {
        let id = format!("net-{i}");
        let started = runtime.start(start(&id)).await.unwrap();
        let ip = started.address.rsplit_once(':').unwrap().0.to_string();
        assert!(!seen.contains(&ip), "{ip} given again before the others of {slice}: {seen:?}");
        seen.push(ip);
        runtime.remove(&id).await.unwrap();
    }
    runtime.shutdown().await;
}

/// A Docker network made for one test, removed when dropped (after the test's containers).
struct DockerNetwork(String);

impl DockerNetwork {
    fn create(name: &str, subnet: &str) -> DockerNetwork {
        docker(&["network", "create", "--subnet", subnet, "--label", "hangar.test=1", name]);
        DockerNetwork(name.to_string())
    }
}

impl Drop for DockerNetwork {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker").args(["network", "rm", &self.0]).output();
    }
}

/// The docker CLI's stdout, trimmed; panics with its stderr when it fails.
fn docker(args: &[&str]) -> String {
    let output = std::process::Command::new("docker").args(args).output().expect("the docker CLI");
    assert!(output.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}
