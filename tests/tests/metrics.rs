//! The admin listeners' `/metrics` and `/readyz` (docs/metrics.md): a controller with its admin
//! listener on port 0, a proxy and two drones in process (the mock runtime), a scripted workload,
//! and the series that must have moved, by exactly how much, read from the Prometheus text the
//! controller serves. The recorder is process-global and every component here records into it;
//! nextest runs each test in its own process, so nothing else adds to the counts.
//!
//! Also: the proxy's and a drone's `/readyz` name the controller they are attached to (and a
//! drone that is not attached answers 503 saying so), and the alert rules in
//! docs/alerts/hangar.rules.yml parse and name only series the code records.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hangar::domain::{BackendState, NodeKind, NodeResources, TerminationReason};
use hangar::v1::{self, backend_service_client::BackendServiceClient, node_service_client::NodeServiceClient};
use hangar_agent::admin::{AdminServer, MetricDef, MetricKind};
use hangar_client::{ConnectRequest, HangarClient, SpawnSpec};
use hangar_executor::drone::{self, DroneConfig, DroneHandle};
use hangar_executor::runtime::Runtime;
use hangar_executor::runtime::mock::MockRuntime;
use hangar_server::controller::ControllerConfig;
use hangar_server::proxy::{Proxy, ProxyConfig, RunningProxy};
use hangar_server::store::NodeRegistration;
use hangar_server::watch::WatchConfig;
use hangar_testkit::eventually;
use hangar_tests::{TestCluster, test_config};

const WAIT: Duration = Duration::from_secs(30);

/// A minimal HTTP/1.1 GET: (status, body).
async fn http_get(url: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response[9..12].parse().expect("a status line");
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    (status, body)
}

/// One scrape of `/metrics`, parsed: every sample with its name and labels.
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    async fn of(admin_url: &str) -> Scrape {
        let (status, body) = http_get(&format!("{admin_url}/metrics")).await;
        assert_eq!(status, 200, "{body}");
        Scrape::parse(&body)
    }

    fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {line}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("a value: {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels.strip_suffix('}').unwrap();
                    let labels = labels
                        .split("\",")
                        .filter(|l| !l.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("a label: {line}"));
                            (k.to_string(), v.trim_end_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            samples.push((name, labels, value));
        }
        Scrape(samples)
    }

    /// The sum of the samples of `name` whose labels include `labels` (0 when there is none).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, _, value)| value)
            .sum()
    }

    fn names(&self) -> HashSet<&str> {
        self.0.iter().map(|(name, _, _)| name.as_str()).collect()
    }
}

/// How much a series moved from `before` to `after`.
fn moved(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.get(name, labels) - before.get(name, labels)
}

fn grpc(method: &'static str, code: &'static str) -> [(&'static str, &'static str); 2] {
    [("method", method), ("code", code)]
}

/// A drone on the mock runtime, with an admin listener on port 0 as `hangar-drone run` serves it.
async fn drone_with_admin(controller: &str, name: &str) -> (DroneHandle, AdminServer) {
    let runtime: Arc<dyn Runtime> = Arc::new(MockRuntime::new());
    let mut config = DroneConfig::new(vec![controller.to_string()], name);
    config.heartbeat_interval = Duration::from_millis(100);
    config.runtime = Some(runtime.clone());
    let drone = drone::spawn(config);
    let router = hangar_agent::admin::router(drone::readiness(drone.state(), Some(runtime)));
    let admin = AdminServer::bind("127.0.0.1:0".parse().unwrap(), router).await.unwrap();
    (drone, admin)
}

async fn ready_within(url: &str, what: &str) -> String {
    eventually(WAIT, what, async || {
        let (status, body) = http_get(&format!("{url}/readyz")).await;
        if status == 200 { Ok(body) } else { Err(body) }
    })
    .await
}

async fn wait_for_state(client: &HangarClient, id: &str, state: BackendState) {
    eventually(WAIT, &format!("backend {id} {state:?}"), async || {
        let backend = client.get_backend(id).await.unwrap();
        if backend.state == state { Ok(()) } else { Err(backend.state) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_workload_moves_each_series_by_exactly_its_amount() {
    let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ControllerConfig {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        proxy_url: format!("http://{}", proxy_listener.local_addr().unwrap()),
        // A watcher that stops reading is cut off after a few hundred changes.
        watch: WatchConfig { watcher_buffer: 16, ring_capacity: 64, ..WatchConfig::default() },
        ..test_config()
    };
    let cluster = TestCluster::sqlite_with(config).await;
    let admin = cluster.controller.admin_url().expect("the controller serves an admin listener");
    let start = Scrape::of(&admin).await;
    assert!(start.names().contains("hangar_backends"), "the scrape-time gauges are there from the start");

    // A proxy and two drones attach; each one's /readyz names the controller.
    let mut proxy_config = ProxyConfig::new(vec![cluster.url()], "edge");
    proxy_config.heartbeat_interval = Duration::from_millis(100);
    proxy_config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let proxy: RunningProxy = Proxy::start(proxy_config, proxy_listener).await.unwrap();
    let proxy_ready = ready_within(&proxy.admin_url().unwrap(), "the proxy's /readyz").await;
    assert!(
        proxy_ready.contains(&format!("ok controller: proxy attached to {} as node ", cluster.url())),
        "{proxy_ready}"
    );
    let (drone_a, admin_a) = drone_with_admin(&cluster.url(), "worker-a").await;
    let (drone_b, admin_b) = drone_with_admin(&cluster.url(), "worker-b").await;
    let node_a = tokio::time::timeout(WAIT, drone_a.attached()).await.unwrap();
    tokio::time::timeout(WAIT, drone_b.attached()).await.unwrap();
    let drone_ready = ready_within(&admin_a.url(), "drone a's /readyz").await;
    assert!(
        drone_ready.contains(&format!("ok controller: drone attached to {} as node {node_a}", cluster.url())),
        "{drone_ready}"
    );
    assert!(drone_ready.contains("ok runtime: mock runtime answers"), "{drone_ready}");

    // A watcher of every backend change, read to the end, to compare with what was delivered.
    let mut watch = BackendServiceClient::new(hangar_tests::channel(&cluster.url()).await)
        .watch_backends(v1::WatchBackendsRequest { send_initial: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let received = Arc::new(AtomicUsize::new(0));
    let reader = {
        let received = received.clone();
        tokio::spawn(async move {
            while let Ok(Some(_)) = watch.message().await {
                received.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // Its snapshot (no backends yet: one SNAPSHOT_END) is through before the baseline.
    eventually(
        WAIT,
        "the watcher's snapshot end",
        async || {
            if received.load(Ordering::SeqCst) == 1 { Ok(()) } else { Err(()) }
        },
    )
    .await;
    let before = Scrape::of(&admin).await;
    let received_before = received.load(Ordering::SeqCst);

    // The workload: three backends placed and READY, one Connect that finds a live backend, one
    // that names a key without a backend, one backend terminated; two requests through the proxy.
    let client = HangarClient::connect(&cluster.url()).await.unwrap();
    let mut connections = Vec::new();
    for i in 0..3 {
        let request = ConnectRequest::key("metrics", format!("doc-{i}"), "").spawn(SpawnSpec::new("app:1"));
        let connection = client.connect_backend(&request).await.unwrap();
        assert!(connection.spawned);
        connections.push(connection);
    }
    for connection in &connections {
        wait_for_state(&client, &connection.backend_id, BackendState::Ready).await;
    }
    let again = ConnectRequest::key("metrics", "doc-0", "").spawn(SpawnSpec::new("app:1"));
    let found = client.connect_backend(&again).await.unwrap();
    assert!(!found.spawned);
    let missing = client.connect_backend(&ConnectRequest::key("metrics", "nobody", "")).await;
    assert!(missing.is_err(), "{missing:?}");
    client.terminate_backend(&connections[2].backend_id, false).await.unwrap();
    wait_for_state(&client, &connections[2].backend_id, BackendState::Terminated).await;
    let ended = client.get_backend(&connections[2].backend_id).await.unwrap();
    assert_eq!(ended.status.termination_reason, Some(TerminationReason::External));
    let (status, body) = http_get(&found.url).await;
    assert_eq!(status, 200, "{body}");
    let proxy_base = proxy.url();
    let (status, _) = http_get(&format!("{proxy_base}/no-such-token/")).await;
    assert_eq!(status, 404);

    // Quiet again: every backend event acknowledged by the controller and read by the watcher.
    let after = eventually(WAIT, "the journals empty and the watcher caught up", async || {
        let scrape = Scrape::of(&admin).await;
        let delivered = moved(&before, &scrape, "hangar_watch_events_delivered_total", &[("watch", "backends")]);
        let read = received.load(Ordering::SeqCst) - received_before;
        let backlog = scrape.get("hangar_drone_journal_backlog", &[]);
        // A workload faster than the heartbeat interval may see none: wait for one of each kind.
        let heartbeats = ["DRONE", "PROXY"]
            .map(|kind| moved(&before, &scrape, "hangar_heartbeat_age_seconds_count", &[("kind", kind)]));
        if backlog == 0.0 && delivered == read as f64 && read > 0 && heartbeats.iter().all(|n| *n > 0.0) {
            Ok(scrape)
        } else {
            Err((backlog, delivered, read, heartbeats))
        }
    })
    .await;
    let read = received.load(Ordering::SeqCst) - received_before;
    // Each of the three backends was at least added and made READY (6), and one also ended.
    assert!(read >= 7, "{read} backend events");

    let m = |name: &str, labels: &[(&str, &str)]| moved(&before, &after, name, labels);
    // Placements, by outcome, and the time of the three that spawned.
    assert_eq!(m("hangar_placements_total", &[("outcome", "spawned")]), 3.0);
    assert_eq!(m("hangar_placements_total", &[("outcome", "found")]), 1.0);
    assert_eq!(m("hangar_placements_total", &[("outcome", "not_found")]), 1.0);
    assert_eq!(m("hangar_placements_total", &[("outcome", "no_drone")]), 0.0);
    assert_eq!(m("hangar_placement_duration_seconds_count", &[]), 3.0);
    // gRPC calls by method and code.
    assert_eq!(m("hangar_grpc_server_requests_total", &grpc("Connect", "OK")), 4.0);
    assert_eq!(m("hangar_grpc_server_requests_total", &grpc("Connect", "NOT_FOUND")), 1.0);
    assert_eq!(m("hangar_grpc_server_requests_total", &grpc("TerminateBackend", "OK")), 1.0);
    assert_eq!(
        m("hangar_grpc_server_request_duration_seconds_count", &[("method", "Connect")]),
        5.0,
        "every unary Connect is timed"
    );
    // The store: one connect_backend operation per Connect.
    assert_eq!(m("hangar_store_operation_duration_seconds_count", &[("operation", "connect_backend")]), 5.0);
    assert_eq!(m("hangar_store_operation_errors_total", &[]), 0.0);
    // Terminations by reason, and the backends by state as of the scrape.
    assert_eq!(m("hangar_backends_terminated_total", &[("reason", "EXTERNAL")]), 1.0);
    assert_eq!(m("hangar_backends_terminated_total", &[]), 1.0);
    assert_eq!(after.get("hangar_backends", &[("state", "READY")]), 2.0);
    assert_eq!(after.get("hangar_backends", &[("state", "TERMINATED")]), 1.0);
    assert_eq!(after.get("hangar_backends", &[]), 3.0);
    // The nodes: two drones and a proxy, all READY.
    assert_eq!(after.get("hangar_nodes", &[("kind", "DRONE"), ("state", "READY")]), 2.0);
    assert_eq!(after.get("hangar_nodes", &[("kind", "PROXY"), ("state", "READY")]), 1.0);
    assert_eq!(after.get("hangar_nodes", &[]), 3.0);
    assert_eq!(start.get("hangar_nodes", &[]), 0.0);
    // Heartbeats arrived from both kinds, about 100 ms apart.
    for kind in ["DRONE", "PROXY"] {
        let count = m("hangar_heartbeat_age_seconds_count", &[("kind", kind)]);
        let sum = m("hangar_heartbeat_age_seconds_sum", &[("kind", kind)]);
        assert!(count > 0.0, "{kind} heartbeats");
        let mean = sum / count;
        assert!((0.05..1.0).contains(&mean), "{kind} heartbeat age {mean} s");
    }
    // The drones' runtime calls: three starts, one stop (the soft termination).
    assert_eq!(m("hangar_executor_calls_total", &[("method", "start"), ("outcome", "ok")]), 3.0);
    assert_eq!(m("hangar_executor_calls_total", &[("method", "start")]), 3.0);
    assert_eq!(m("hangar_executor_calls_total", &[("method", "stop"), ("outcome", "ok")]), 1.0);
    assert_eq!(m("hangar_executor_call_duration_seconds_count", &[("method", "start")]), 3.0);
    // The proxy: one answer from a backend, one of its own 404s.
    assert_eq!(m("hangar_proxy_requests_total", &[("class", "2xx")]), 1.0);
    assert_eq!(m("hangar_proxy_requests_total", &[("class", "4xx")]), 1.0);
    assert_eq!(m("hangar_proxy_requests_total", &[]), 2.0);
    assert_eq!(m("hangar_proxy_upstream_duration_seconds_count", &[]), 1.0);
    // One watch stream open; nobody cut off yet.
    assert_eq!(after.get("hangar_watch_streams_open", &[("watch", "backends")]), 1.0);
    assert_eq!(after.get("hangar_watch_streams_open", &[("watch", "nodes")]), 0.0);
    assert_eq!(after.get("hangar_watch_cut_off_total", &[]), 0.0);

    // A watcher that stops reading (a small HTTP/2 window holds its stream back) is cut off
    // once the hub's ring no longer reaches back to it.
    let slow_channel = tonic::transport::Endpoint::from_shared(cluster.url())
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let mut slow = NodeServiceClient::new(slow_channel)
        .watch_nodes(v1::WatchNodesRequest {
            start_revision: cluster.store.current_revision().await.unwrap(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let opened = eventually(WAIT, "the slow watch open", async || {
        let scrape = Scrape::of(&admin).await;
        if scrape.get("hangar_watch_streams_open", &[("watch", "nodes")]) == 1.0 { Ok(scrape) } else { Err(()) }
    })
    .await;
    // 1,000 node changes: a node of another cluster attaching again with a new label each time.
    let mut registration = NodeRegistration {
        kind: NodeKind::Drone,
        name: "filler".into(),
        cluster: "elsewhere".into(),
        pool: "default".into(),
        labels: BTreeMap::new(),
        version: "test".into(),
        backend_capacity: 1,
        resources: NodeResources::default(),
    };
    for i in 0..1000 {
        registration.labels.insert("round".into(), i.to_string());
        cluster.store.attach_node(registration.clone(), "elsewhere", chrono::Utc::now()).await.unwrap();
    }
    let status = loop {
        match tokio::time::timeout(WAIT, slow.message()).await.expect("the slow watcher gets an answer") {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the slow watch ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let cut = eventually(WAIT, "the cut-off stream closed", async || {
        let scrape = Scrape::of(&admin).await;
        if scrape.get("hangar_watch_streams_open", &[("watch", "nodes")]) == 0.0 { Ok(scrape) } else { Err(()) }
    })
    .await;
    assert_eq!(moved(&opened, &cut, "hangar_watch_cut_off_total", &[("watch", "nodes")]), 1.0);
    assert_eq!(moved(&opened, &cut, "hangar_watch_cut_off_total", &[("watch", "backends")]), 0.0);
    assert_eq!(
        moved(&opened, &cut, "hangar_grpc_server_requests_total", &grpc("WatchNodes", "RESOURCE_EXHAUSTED")),
        1.0
    );
    assert_eq!(cut.get("hangar_watch_streams_open", &[("watch", "backends")]), 1.0, "the other watcher stays");
    assert!(
        moved(&opened, &cut, "hangar_store_operation_duration_seconds_count", &[("operation", "attach_node")])
            >= 1000.0
    );

    // A drone that cannot reach any controller is alive but not ready, and says why.
    let (lonely, lonely_admin) = drone_with_admin("http://127.0.0.1:1", "lonely").await;
    let (status, body) = http_get(&format!("{}/readyz", lonely_admin.url())).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("FAILED controller: drone not attached to any controller"), "{body}");
    assert_eq!(http_get(&format!("{}/healthz", lonely_admin.url())).await.0, 200);

    reader.abort();
    for (drone, admin) in [(lonely, lonely_admin), (drone_a, admin_a), (drone_b, admin_b)] {
        admin.shutdown().await;
        drone.shutdown().await;
    }
    proxy.shutdown().await;
    cluster.shutdown().await;
}

/// `hangar-server dev` serves one admin listener for its controller, proxy and drone: ready once
/// all three are, with their series on one page.
#[tokio::test]
async fn dev_serves_one_admin_listener_for_its_controller_proxy_and_drone() {
    let data = tempfile::tempdir().unwrap();
    let dev = hangar_tests::DevProcess::start(data.path(), &["--runtime", "process"]);
    let admin = dev
        .banner
        .lines()
        .find_map(|line| line.trim().strip_prefix("admin")?.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| panic!("no admin URL in the banner:\n{}", dev.banner));
    let ready = ready_within(&admin, "dev's /readyz").await;
    assert!(ready.contains("ok store: reachable"), "{ready}");
    for agent in ["proxy", "drone"] {
        let attached = format!("ok controller: {agent} attached to {} as node ", dev.controller_url);
        assert!(ready.contains(&attached), "{ready}");
    }
    assert!(ready.contains("ok runtime: process runtime answers"), "{ready}");
    let scrape = Scrape::of(&admin).await;
    assert_eq!(scrape.get("hangar_nodes", &[("kind", "DRONE"), ("state", "READY")]), 1.0);
    assert_eq!(scrape.get("hangar_nodes", &[("kind", "PROXY"), ("state", "READY")]), 1.0);
    let (_, text) = http_get(&format!("{admin}/metrics")).await;
    // The drone's calls to its runtime at start (it lists what runs), with the drone's help text.
    assert!(scrape.get("hangar_executor_calls_total", &[("method", "list"), ("outcome", "ok")]) >= 1.0, "{text}");
    assert!(text.contains("# HELP hangar_executor_calls_total Calls the drone made"), "{text}");
    dev.stop();
}

/// Every series the code declares, by name.
fn declared() -> Vec<&'static MetricDef> {
    hangar_server::metrics::all().chain(hangar_executor::metrics::DRONE).collect()
}

/// The names Prometheus shows for a declared series (a histogram's `_bucket`, `_sum`, `_count`).
fn exposed_names() -> HashSet<String> {
    let mut names = HashSet::new();
    for def in declared() {
        names.insert(def.name.to_string());
        if def.kind == MetricKind::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{}{suffix}", def.name));
            }
        }
    }
    names
}

fn repo_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The `hangar_…` names in `text`.
fn hangar_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("hangar_") {
        let start = i + at;
        let word_start = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start
            + text[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len() - start);
        if word_start {
            names.push(text[start..end].to_string());
        }
        i = end;
    }
    names
}

#[test]
fn the_alert_rules_parse_and_name_only_series_the_code_records() {
    let text = repo_file("docs/alerts/hangar.rules.yml");
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("docs/alerts/hangar.rules.yml is valid YAML");
    let groups = docs[0]["groups"].as_vec().expect("a `groups` list");
    let exposed = exposed_names();
    let mut rules = 0;
    for group in groups {
        assert!(group["name"].as_str().is_some(), "every group has a name: {group:?}");
        for rule in group["rules"].as_vec().expect("every group has rules") {
            let alert = rule["alert"].as_str().expect("every rule is an alert with a name");
            let expr = rule["expr"].as_str().unwrap_or_else(|| panic!("{alert} has an expr"));
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{alert} has a summary");
            assert!(rule["labels"]["severity"].as_str().is_some(), "{alert} has a severity");
            let names = hangar_names(expr);
            assert!(!names.is_empty(), "{alert} names no Hangar series: {expr}");
            for name in names {
                assert!(exposed.contains(&name), "{alert} names {name}, which no Hangar process records");
            }
            rules += 1;
        }
    }
    assert!(rules >= 5, "{rules} rules");
}

#[test]
fn docs_metrics_lists_every_series_with_its_type_and_labels() {
    let text = repo_file("docs/metrics.md");
    for def in declared() {
        let row = text
            .lines()
            .find(|line| line.starts_with('|') && line.contains(&format!("`{}`", def.name)))
            .unwrap_or_else(|| panic!("docs/metrics.md has no table row for {}", def.name));
        assert!(row.contains(def.kind.as_str()), "the row of {} says it is a {}: {row}", def.name, def.kind.as_str());
        for label in def.labels {
            assert!(row.contains(&format!("`{label}`")), "the row of {} names its label {label}: {row}", def.name);
        }
    }
    let exposed = exposed_names();
    for name in hangar_names(&text) {
        assert!(exposed.contains(&name), "docs/metrics.md names {name}, which no Hangar process records");
    }
}
