//! Docker-only behaviour beyond the conformance suite: the watch on the engine's event stream is
//! resubscribed (with a reconcile by label) whenever it ends, and changes made behind the
//! executor's back are noticed; an advertised host publishes backends for proxies on other hosts;
//! on a Docker network, backends and the warm sandboxes made for them take their addresses in
//! turn from the runtime's slice.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use hangar_executor::runtime::docker::{DockerOptions, DockerRuntime, LABEL_SANDBOX, WarmSandboxes};
use hangar_executor::runtime::{BackendSpec, BackendState, EventKind, Runtime};
use hangar_executor::testing::{
    ContainerCleanup, container_exists, docker, docker_or_skip, docker_or_skip_with, leftover_sandbox, network_mode,
    sandboxes_until, test_image, unique_name, wait_for_http,
};

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
    // The engine first (a runtime on a network checks at start-up that the network holds its
    // slice), then the network, then the runtime on it.
    let Some(engine) = docker_or_skip(test, &instance).await else { return };
    engine.shutdown().await;
    // Dropped in reverse: the containers go first, then the network they were on.
    let (_network, slice) = TestNetwork::create(&instance);
    let _cleanup = ContainerCleanup::new(&instance);
    let runtime = DockerRuntime::connect(on_network(&instance, slice, None)).await.unwrap();
    let image = tokio::task::spawn_blocking(test_image).await.unwrap();
    let start = |id: &str| BackendSpec { backend_id: id.into(), image: image.into(), ..Default::default() };

    let first = runtime.start(start("net-1")).await.unwrap();
    let (ip, port) = first.address.rsplit_once(':').expect("IP:PORT");
    assert!(slice.contains(&ip.parse::<Ipv4Addr>().unwrap()), "{ip} in {slice}");
    assert_eq!(port, "8080", "the container's own port");
    assert_eq!(ip, ip_on(&first.runtime_id, &instance).to_string(), "reported at its address on the network");
    let published = published_ports(&first.runtime_id);
    assert!(published.is_empty(), "nothing published on the host: {published:?}");
    let (status, _) = wait_for_http(&first.address, "/", Duration::from_secs(20)).await;
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

/// `--docker-warm-sandboxes` on a network: the keeper makes its sandboxes on the runtime's
/// network, each at an address of the slice and publishing nothing, and a backend on the default
/// port joins one (`container:<sandbox>`, `hangar.sandbox`), reported at the sandbox's address and
/// reached there; the taken sandbox is replaced at another address, and goes with its backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_on_a_docker_network_starts_in_a_warm_sandbox_at_its_own_address() {
    let test = "a_backend_on_a_docker_network_starts_in_a_warm_sandbox_at_its_own_address";
    let instance = unique_name("netsandbox");
    let Some(engine) = docker_or_skip(test, &instance).await else { return };
    engine.shutdown().await;
    let (_network, slice) = TestNetwork::create(&instance);
    let _cleanup = ContainerCleanup::new(&instance);
    let runtime = DockerRuntime::connect(on_network(&instance, slice, Some(1))).await.unwrap();
    let image = tokio::task::spawn_blocking(test_image).await.unwrap();
    let ready = sandboxes_until(&instance, "one sandbox made ahead", |s| s.len() == 1).await;
    let sandbox_ip = ip_on(&ready[0], &instance);
    assert!(slice.contains(&sandbox_ip), "the sandbox is at {sandbox_ip}, in {slice}");
    let published = published_ports(&ready[0]);
    assert!(published.is_empty(), "a sandbox on a network publishes nothing: {published:?}");

    let spec = BackendSpec { backend_id: "in-sandbox".into(), image: image.into(), ..Default::default() };
    let started = runtime.start(spec).await.unwrap();
    assert_eq!(network_mode(&started.runtime_id), format!("container:{}", ready[0]), "joined the ready sandbox");
    let label = format!("{{{{index .Config.Labels \"{LABEL_SANDBOX}\"}}}}");
    assert_eq!(docker(&["inspect", "-f", &label, &started.runtime_id]), ready[0]);
    assert_eq!(started.address, format!("{sandbox_ip}:8080"), "reported at the sandbox's address, its own port");
    let (status, _) = wait_for_http(&started.address, "/", Duration::from_secs(20)).await;
    assert_eq!(status, 200, "the backend answers at its sandbox's address on the network");
    assert_eq!(runtime.inspect("in-sandbox").await.unwrap().address, started.address, "inspect reports the same");

    // The taken sandbox is replaced in the background, at another address of the slice.
    let both = sandboxes_until(&instance, "a new sandbox beside the one in use", |s| s.len() == 2).await;
    let spare = both.iter().find(|id| **id != ready[0]).cloned().unwrap();
    let spare_ip = ip_on(&spare, &instance);
    assert!(slice.contains(&spare_ip) && spare_ip != sandbox_ip, "the spare is at {spare_ip}");

    runtime.remove("in-sandbox").await.unwrap();
    assert!(!container_exists(&ready[0]), "the backend's sandbox is removed with it");
    runtime.shutdown().await;
    assert!(!container_exists(&spare), "the spare sandbox went with the runtime");
}

/// Sandboxes take their addresses from the one rotation backends take theirs from: a backend
/// in a sandbox is reached at the next address of the slice after the previous one's, so an
/// address freed by a removed backend is handed out again only after every other of the slice;
/// a backend in a namespace of its own (another port) takes the address after the ready
/// sandboxes', never one of theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_on_a_network_take_addresses_in_the_rotation() {
    let test = "sandboxes_on_a_network_take_addresses_in_the_rotation";
    let instance = unique_name("netrotation");
    let Some(engine) = docker_or_skip(test, &instance).await else { return };
    engine.shutdown().await;
    let (_network, slice) = TestNetwork::create(&instance);
    let _cleanup = ContainerCleanup::new(&instance);
    let runtime = DockerRuntime::connect(on_network(&instance, slice, Some(2))).await.unwrap();
    let image = tokio::task::spawn_blocking(test_image).await.unwrap();
    let hosts: Vec<Ipv4Addr> = slice.hosts().collect();
    let after = |ip: Ipv4Addr| hosts[(hosts.iter().position(|h| *h == ip).unwrap() + 1) % hosts.len()];
    let spec =
        |id: &str, port: u16| BackendSpec { backend_id: id.into(), image: image.into(), port, ..Default::default() };

    // One round of the slice and one more start, each backend removed before the next starts.
    let mut given: Vec<Ipv4Addr> = Vec::new();
    for i in 0..=hosts.len() {
        let ready = ready_sandbox_addresses(&instance, 2).await;
        let id = format!("rot-{i}");
        let started = runtime.start(spec(&id, 0)).await.unwrap();
        let ip: Ipv4Addr = started.address.strip_suffix(":8080").unwrap().parse().unwrap();
        assert!(ready.contains(&ip), "{id} at {ip}, in one of the ready sandboxes {ready:?}");
        if let Some(&previous) = given.last() {
            assert_eq!(ip, after(previous), "{id}: the address after {previous}'s in {slice}; given {given:?}");
        }
        assert!(
            !given.contains(&ip) || given.len() == hosts.len(),
            "{ip} given again before the others of {slice}: {given:?}"
        );
        given.push(ip);
        runtime.remove(&id).await.unwrap();
    }
    assert_eq!(given[hosts.len()], given[0], "the first address came back after every other: {given:?}");

    // A backend that cannot use a sandbox picks from the same rotation, past the sandboxes'.
    let ready = ready_sandbox_addresses(&instance, 2).await;
    let own = runtime.start(spec("own-port", 9090)).await.unwrap();
    let ip: Ipv4Addr = own.address.strip_suffix(":9090").unwrap().parse().unwrap();
    assert_eq!(network_mode(&own.runtime_id), instance, "a namespace of its own, on the network");
    let last = *given.last().unwrap();
    let mut sorted = ready.clone();
    sorted.sort();
    let mut next_two = vec![after(last), after(after(last))];
    next_two.sort();
    assert_eq!(sorted, next_two, "the ready sandboxes are at the two addresses after {last}");
    assert_eq!(ip, after(after(after(last))), "the address after the two ready sandboxes' {ready:?}");
    assert!(!ready.contains(&ip));
    runtime.remove("own-port").await.unwrap();
    runtime.shutdown().await;
}

/// A runtime restarted on a network finds its backend in a sandbox and reports it at the
/// sandbox's address (inspect, list, and a retried start), removes a sandbox nobody uses (left
/// by a runtime that could not), and makes new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runtime_reports_a_backend_in_a_sandbox_on_a_network_at_the_sandboxs_address() {
    let test = "a_restarted_runtime_reports_a_backend_in_a_sandbox_on_a_network_at_the_sandboxs_address";
    let instance = unique_name("netadopt");
    let Some(engine) = docker_or_skip(test, &instance).await else { return };
    engine.shutdown().await;
    let (_network, slice) = TestNetwork::create(&instance);
    let _cleanup = ContainerCleanup::new(&instance);
    let options = on_network(&instance, slice, Some(1));
    let runtime = DockerRuntime::connect(options.clone()).await.unwrap();
    let image = tokio::task::spawn_blocking(test_image).await.unwrap();
    let ready = sandboxes_until(&instance, "one sandbox made ahead", |s| s.len() == 1).await;
    let spec = BackendSpec { backend_id: "adopted".into(), image: image.into(), ..Default::default() };
    let started = runtime.start(spec.clone()).await.unwrap();
    assert_eq!(network_mode(&started.runtime_id), format!("container:{}", ready[0]));
    runtime.shutdown().await;
    drop(runtime);

    // A sandbox a killed runtime left, at an address of the slice nobody holds.
    let held = ip_on(&ready[0], &instance);
    let free = slice.hosts().find(|ip| *ip != held).unwrap();
    let image = &options.warm_sandboxes.as_ref().unwrap().image.reference;
    let orphan = leftover_sandbox(&instance, image, &["--network", &instance, "--ip", &free.to_string()]);
    let runtime = DockerRuntime::connect(options).await.unwrap();
    sandboxes_until(&instance, "the orphan removed, a new spare made", |s| {
        s.len() == 2 && s.contains(&ready[0]) && !s.contains(&orphan)
    })
    .await;
    assert_eq!(runtime.inspect("adopted").await.unwrap().address, started.address, "inspect");
    let listed = runtime.list().await.unwrap();
    assert_eq!(listed.iter().map(|b| b.address.as_str()).collect::<Vec<_>>(), [started.address.as_str()], "list");
    let again = runtime.start(spec).await.unwrap();
    assert_eq!((again.runtime_id, again.address.as_str()), (started.runtime_id, started.address.as_str()), "a retry");
    assert_eq!(wait_for_http(&started.address, "/", Duration::from_secs(20)).await.0, 200);
    runtime.remove("adopted").await.unwrap();
    assert!(!container_exists(&ready[0]), "the backend's sandbox is removed with it");
    runtime.shutdown().await;
}

/// The runtime `instance` on the network of that name, with the slice `addresses` and `warm`
/// sandboxes made from the drone's own binary, which has the `sandbox` subcommand they run.
fn on_network(instance: &str, addresses: ipnet::Ipv4Net, warm: Option<usize>) -> DockerOptions {
    let network = hangar_executor::runtime::docker::DockerNetwork { name: instance.to_string(), addresses };
    let executable = PathBuf::from(env!("CARGO_BIN_EXE_hangar-drone"));
    DockerOptions {
        instance: instance.to_string(),
        network: Some(network),
        warm_sandboxes: warm.map(|count| WarmSandboxes::of_executable(count, executable)),
        ..Default::default()
    }
}

/// A Docker network made for one test, removed when dropped (after the test's containers).
struct TestNetwork(String);

impl TestNetwork {
    /// The network `name` on a /24 of its own, and the runtime's slice of it, six addresses. The
    /// /24 starts from the name's hash and moves on while the engine says it overlaps one in
    /// use (tests running in parallel, each with a network).
    fn create(name: &str) -> (TestNetwork, ipnet::Ipv4Net) {
        let start = name.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        for attempt in 0..200 {
            let third = (start + attempt) % 200 + 20;
            let subnet = format!("10.252.{third}.0/24");
            let output = std::process::Command::new("docker")
                .args(["network", "create", "--subnet", &subnet, "--label", "hangar.test=1", name])
                .output()
                .expect("run docker");
            if output.status.success() {
                return (TestNetwork(name.to_string()), format!("10.252.{third}.64/29").parse().unwrap());
            }
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(stderr.contains("overlaps"), "docker network create {name} on {subnet}: {stderr}");
        }
        panic!("no free /24 in 10.252.20.0–10.252.219.0 for the network {name}");
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker").args(["network", "rm", &self.0]).output();
    }
}

/// `container`'s address on `network`.
fn ip_on(container: &str, network: &str) -> Ipv4Addr {
    let template = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    let ip = docker(&["inspect", "-f", &template, container]);
    ip.parse().unwrap_or_else(|_| panic!("{container} has no address on {network}: {ip:?}"))
}

/// The host ports `container` publishes, space-separated.
fn published_ports(container: &str) -> String {
    let template = "{{range $p, $b := .NetworkSettings.Ports}}{{range $b}}{{.HostPort}} {{end}}{{end}}";
    docker(&["inspect", "-f", template, container])
}

/// The addresses of the instance's sandboxes once `count` are ready (none in use: each test
/// removes a backend, and its sandbox, before the next), all different and in the slice.
async fn ready_sandbox_addresses(instance: &str, count: usize) -> Vec<Ipv4Addr> {
    let sandboxes = sandboxes_until(instance, "the pool full again", |s| s.len() == count).await;
    // A sandbox runs a moment before the keeper has seen its address and put it in the pool.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ips: Vec<Ipv4Addr> = sandboxes.iter().map(|id| ip_on(id, instance)).collect();
    let distinct: std::collections::HashSet<&Ipv4Addr> = ips.iter().collect();
    assert_eq!(distinct.len(), ips.len(), "no two sandboxes share an address: {ips:?}");
    ips
}
