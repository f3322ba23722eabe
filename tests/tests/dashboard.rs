//! The dashboard's API on a real controller's admin listener, over real HTTP: the JSON
//! snapshots, the server-sent-event stream (a drone attaching and a backend changing state
//! arrive as events; a reconnect with `Last-Event-ID` misses nothing; a compacted resume point
//! answers 410), and who may read it when the controller has an auth file.

use bytes::Bytes;
use chrono::Utc;
use hangar::v1::{self, backend_service_client::BackendServiceClient};
use hangar_server::api::BackendSettings;
use hangar_server::controller::ControllerConfig;
use hangar_server::store::Retention;
use hangar_tests::{ManualDrone, TestCluster, drone_hello, status, test_config};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use serde_json::Value;
use std::time::Duration;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(10);

fn config() -> ControllerConfig {
    ControllerConfig {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        backends: BackendSettings { sweep_interval: Duration::from_millis(100), ..Default::default() },
        ..test_config()
    }
}

fn admin(cluster: &TestCluster) -> String {
    cluster.controller.admin_url().expect("the controller serves an admin listener")
}

type Client = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

async fn request(url: &str, headers: &[(&str, &str)]) -> http::Response<Incoming> {
    let mut request = http::Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    tokio::time::timeout(WAIT, client().request(request.body(Empty::new()).unwrap()))
        .await
        .unwrap_or_else(|_| panic!("GET {url}: no answer within {WAIT:?}"))
        .unwrap_or_else(|err| panic!("GET {url}: {err}"))
}

/// Status, headers and body of a GET.
async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
    let response = request(url, headers).await;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status.as_u16(), parts.headers, String::from_utf8_lossy(&body).into_owned())
}

/// A GET that must answer 200 with JSON.
async fn get_json(url: &str, headers: &[(&str, &str)]) -> Value {
    let (status, headers, body) = get(url, headers).await;
    assert_eq!(status, 200, "GET {url}: {body}");
    assert_eq!(headers["content-type"], "application/json", "GET {url}");
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("GET {url}: {err}: {body}"))
}

/// An error answer: its status and the JSON body's reason.
async fn get_error(url: &str, headers: &[(&str, &str)]) -> (u16, String, http::HeaderMap) {
    let (status, headers, body) = get(url, headers).await;
    let body: Value = serde_json::from_str(&body).unwrap_or_else(|err| panic!("GET {url}: {err}: {body}"));
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "an error says why: {body}");
    (status, body["reason"].as_str().unwrap_or_default().to_string(), headers)
}

/// One server-sent event.
#[derive(Debug, Clone)]
struct Event {
    event: String,
    id: Option<u64>,
    data: Value,
}

/// An open `/api/events` stream, read frame by frame.
struct Events {
    body: Incoming,
    buffer: String,
}

impl Events {
    /// Opens `{admin}/api/events{query}`.
    async fn open(admin: &str, query: &str, headers: &[(&str, &str)]) -> Events {
        let response = request(&format!("{admin}/api/events{query}"), headers).await;
        assert_eq!(response.status(), 200, "the event stream opens");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events { body: response.into_body(), buffer: String::new() }
    }

    /// The next event, keep-alive comments skipped.
    async fn next(&mut self) -> Event {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let mut event = Event { event: "message".into(), id: None, data: Value::Null };
                let mut data = Vec::new();
                for line in frame.lines().filter(|l| !l.is_empty() && !l.starts_with(':')) {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => event.event = value.to_string(),
                        "id" => event.id = Some(value.parse().expect("event ids are revisions")),
                        "data" => data.push(value.to_string()),
                        _ => {}
                    }
                }
                if event.event == "message" && data.is_empty() {
                    continue;
                }
                let data = data.join("\n");
                event.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return event;
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("no event within {WAIT:?}; holding {:?}", self.buffer))
                .expect("the stream is open")
                .expect("the stream reads");
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&data).expect("UTF-8 events"));
            }
        }
    }

    /// Events up to the first `accept` takes, which is returned; bookmarks and other changes
    /// are passed over.
    async fn until(&mut self, what: &str, accept: impl Fn(&Event) -> bool) -> Event {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            assert!(tokio::time::Instant::now() < deadline, "no {what} within {WAIT:?}; saw {seen:#?}");
            let event = self.next().await;
            if accept(&event) {
                return event;
            }
            seen.push(event);
        }
    }
}

fn is_backend(event: &Event, id: &str, state: &str) -> bool {
    event.event == "backend" && event.data["backend"]["id"] == id && event.data["backend"]["state"] == state
}

async fn backends(cluster: &TestCluster) -> BackendServiceClient<Channel> {
    BackendServiceClient::new(cluster.channel().await)
}

/// A backend scheduled onto the only drone, keyed `docs/doc-1@v1`; its environment holds a
/// value the dashboard must never show.
async fn connect(client: &mut BackendServiceClient<Channel>) -> String {
    let config = v1::SpawnConfig {
        executable: Some(v1::Executable {
            image: "hangar/test-backend:1".into(),
            env: [("API_SECRET".to_string(), "hunter2-never-shown".to_string())].into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let request = v1::ConnectRequest {
        key: Some(v1::BackendKey { namespace: "docs".into(), name: "doc-1".into(), tag: "v1".into() }),
        spawn_config: Some(config),
        user: "alice".into(),
        auth: Default::default(),
    };
    let response = client.connect(request).await.expect("connect").into_inner();
    assert!(response.spawned);
    response.backend_id
}

/// The drone takes the spawn and reports `state`.
async fn report(drone: &mut ManualDrone, backend_id: &str, event_id: &str, state: v1::BackendState) {
    drone.event_acked(event_id, backend_id, status(state), "127.0.0.1:9").await;
}

async fn take_spawn(drone: &mut ManualDrone, backend_id: &str) {
    let action = drone.next_action(WAIT).await;
    assert_eq!(action.backend_id, backend_id);
    drone.ack_action(&action.action_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_show_nodes_backends_and_a_backends_history_as_json_without_secrets() {
    let cluster = TestCluster::sqlite_with(config()).await;
    let url = admin(&cluster);
    let mut hello = drone_hello("drone-a");
    hello.labels.insert("zone".into(), "<img src=x onerror=alert(1)>".into());
    let mut drone = ManualDrone::attach(&cluster.url(), hello).await.expect("attach");
    let _beat = drone.keep_alive(Duration::from_millis(50));
    let mut client = backends(&cluster).await;
    let backend_id = connect(&mut client).await;

    let nodes = get_json(&format!("{url}/api/nodes"), &[]).await;
    assert!(nodes["revision"].as_u64().unwrap() > 0, "{nodes}");
    assert!(nodes["now"].is_string() && nodes["controller_id"] == cluster.controller.controller_id(), "{nodes}");
    let listed = nodes["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{nodes}");
    let node = &listed[0];
    assert_eq!((node["id"].as_str(), node["name"].as_str()), (Some(drone.node_id.as_str()), Some("drone-a")));
    assert_eq!((node["kind"].as_str(), node["state"].as_str()), (Some("DRONE"), Some("READY")));
    assert_eq!((node["cluster"].as_str(), node["pool"].as_str()), (Some("default"), Some("default")));
    assert_eq!(node["resources"]["cpu_cores"], 2, "{node}");
    assert_eq!(node["backend_capacity"], 10, "{node}");
    // Labels are data: the API hands them over as they are; the page escapes them.
    assert_eq!(node["labels"]["zone"], "<img src=x onerror=alert(1)>");

    // Filters: by state (any case, comma-separated), cluster, pool; a wrong state says which exist.
    let offline = get_json(&format!("{url}/api/nodes?state=offline,unhealthy"), &[]).await;
    assert_eq!(offline["nodes"].as_array().unwrap().len(), 0, "{offline}");
    let other_pool = get_json(&format!("{url}/api/nodes?pool=gpu"), &[]).await;
    assert_eq!(other_pool["nodes"].as_array().unwrap().len(), 0, "{other_pool}");
    let (status, _, body) = get(&format!("{url}/api/nodes?state=SLEEPING"), &[]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("SLEEPING") && body.contains("READY") && body.contains("\"field\":\"state\""), "{body}");

    let (status, _, body) = get(&format!("{url}/api/backends"), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("hunter2"), "the spawn config's environment is not shown: {body}");
    let listing: Value = serde_json::from_str(&body).unwrap();
    let backend = &listing["backends"][0];
    assert_eq!(backend["id"], backend_id.as_str());
    assert_eq!(backend["state"], "SCHEDULED");
    assert_eq!(backend["key"], "docs/doc-1@v1");
    assert_eq!(backend["drone_id"], drone.node_id.as_str());
    assert_eq!(backend["image"], "hangar/test-backend:1");
    assert!(backend["created_at"].is_string(), "{backend}");
    let ready_only = get_json(&format!("{url}/api/backends?state=READY"), &[]).await;
    assert_eq!(ready_only["backends"].as_array().unwrap().len(), 0, "{ready_only}");

    take_spawn(&mut drone, &backend_id).await;
    report(&mut drone, &backend_id, "ev-1", v1::BackendState::Starting).await;
    report(&mut drone, &backend_id, "ev-2", v1::BackendState::Ready).await;
    let (status, _, body) = get(&format!("{url}/api/backends/{backend_id}"), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("hunter2"), "{body}");
    let detail: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(detail["backend"]["state"], "READY");
    let history: Vec<(&str, u64)> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["state"].as_str().unwrap(), s["revision"].as_u64().unwrap()))
        .collect();
    let states: Vec<&str> = history.iter().map(|(state, _)| *state).collect();
    assert_eq!(states, ["SCHEDULED", "STARTING", "READY"], "{detail}");
    assert!(history.windows(2).all(|w| w[0].1 < w[1].1), "revisions grow: {history:?}");

    let (status, reason, _) = get_error(&format!("{url}/api/backends/bk-0000000000000000"), &[]).await;
    assert_eq!((status, reason.as_str()), (404, "BACKEND_NOT_FOUND"));
    let (status, _, _) = get_error(&format!("{url}/api/backends/not%20an%20id"), &[]).await;
    assert_eq!(status, 400);
    let (status, _, _) = get_error(&format!("{url}/api/nope"), &[]).await;
    assert_eq!(status, 404);
    // The admin listener's own routes are still there next to the dashboard's.
    assert_eq!(get(&format!("{url}/healthz"), &[]).await.0, 200);
    assert_eq!(get(&format!("{url}/metrics"), &[]).await.0, 200);

    // The page and its assets, from the binary, with a policy that runs only its own script.
    let (status, headers, page) = get(&format!("{url}/"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"), "{policy}");
    assert!(page.contains("<script src=\"/app.js\"") && !page.contains("http"), "nothing fetched from elsewhere");
    for (asset, kind) in [("app.js", "text/javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")] {
        let (status, headers, body) = get(&format!("{url}/{asset}"), &[]).await;
        assert_eq!(status, 200, "{asset}");
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind), "{asset}");
        assert!(!body.is_empty(), "{asset}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_shows_a_drone_attach_and_a_backend_going_ready_and_a_reconnect_misses_nothing() {
    let cluster = TestCluster::sqlite_with(config()).await;
    let url = admin(&cluster);
    let mut events = Events::open(&url, "", &[]).await;
    let hello = events.next().await;
    assert_eq!(hello.event, "hello");
    let start = hello.id.expect("hello names the revision the stream starts after");
    assert_eq!(hello.data["revision"], start);

    let mut drone = ManualDrone::attach(&cluster.url(), drone_hello("drone-a")).await.expect("attach");
    let _beat = drone.keep_alive(Duration::from_millis(50));
    let attached =
        events.until("the drone's ADDED", |e| e.event == "node" && e.data["node"]["name"] == "drone-a").await;
    assert_eq!(attached.data["type"], "ADDED");
    assert_eq!(attached.data["node"]["state"], "READY");
    assert_eq!(attached.data["node"]["id"], drone.node_id.as_str());
    let attached_at = attached.id.unwrap();
    assert!(attached_at > start);
    assert_eq!(attached.data["revision"], attached_at, "the id is the change's revision");

    let mut client = backends(&cluster).await;
    let backend_id = connect(&mut client).await;
    let scheduled = events.until("the backend SCHEDULED", |e| is_backend(e, &backend_id, "SCHEDULED")).await;
    assert_eq!(scheduled.data["type"], "ADDED");
    assert!(scheduled.data["previous_state"].is_null());
    assert!(!scheduled.data.to_string().contains("hunter2"), "{:?}", scheduled.data);
    take_spawn(&mut drone, &backend_id).await;
    report(&mut drone, &backend_id, "ev-1", v1::BackendState::Ready).await;
    let ready = events.until("the backend READY", |e| is_backend(e, &backend_id, "READY")).await;
    assert_eq!(
        (ready.data["type"].as_str(), ready.data["previous_state"].as_str()),
        (Some("MODIFIED"), Some("SCHEDULED"))
    );
    let last_seen = ready.id.unwrap();
    assert!(last_seen > scheduled.id.unwrap());
    drop(events);

    // While no dashboard listens, the backend ends.
    let ended = v1::BackendStatus {
        state: v1::BackendState::Terminated as i32,
        termination_reason: v1::TerminationReason::Exited as i32,
        exit_code: Some(3),
        ..Default::default()
    };
    drone.event_acked("ev-2", &backend_id, ended, "").await;

    // A reconnect from the last event seen gets what happened meanwhile, and nothing before it.
    let mut events = Events::open(&url, "", &[("last-event-id", &last_seen.to_string())]).await;
    let hello = events.next().await;
    assert_eq!((hello.event.as_str(), hello.id), ("hello", Some(last_seen)));
    let terminated = events.until("the backend TERMINATED", |e| e.event == "backend").await;
    assert!(
        is_backend(&terminated, &backend_id, "TERMINATED"),
        "the first backend change after {last_seen}: {terminated:?}"
    );
    assert!(terminated.id.unwrap() > last_seen);
    assert_eq!(terminated.data["backend"]["status"]["termination_reason"], "EXITED");
    assert_eq!(terminated.data["backend"]["status"]["exit_code"], 3);
    drop(events);

    // From the drone's attach: every backend change since, in revision order, none twice.
    let mut events = Events::open(&url, "", &[("last-event-id", &attached_at.to_string())]).await;
    events.next().await;
    let mut ids = vec![attached_at];
    let mut states = Vec::new();
    while states.last() != Some(&"TERMINATED".to_string()) {
        let event = events.until("a backend change", |e| e.event != "bookmark").await;
        ids.push(event.id.unwrap());
        if event.event == "backend" {
            states.push(event.data["backend"]["state"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(states, ["SCHEDULED", "READY", "TERMINATED"]);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow, none repeats: {ids:?}");
    drop(events);

    // `?since=` is the same resume point for a first connection.
    let mut events = Events::open(&url, &format!("?since={attached_at}"), &[]).await;
    assert_eq!(events.next().await.id, Some(attached_at));

    // A controller shutting down ends an open stream with a reason (the page reconnects,
    // elsewhere if a balancer sends it there) rather than waiting on it.
    let shutdown = tokio::spawn(cluster.shutdown());
    let end = events.until("the stream's end", |e| e.event == "end").await;
    assert_eq!(end.data["reason"], "SHUTTING_DOWN", "{:?}", end.data);
    tokio::time::timeout(WAIT, shutdown).await.expect("the controller stops with a dashboard open").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_point_that_is_not_a_revision_is_400_and_a_compacted_one_410() {
    let cluster = TestCluster::sqlite_with(config()).await;
    let url = admin(&cluster);
    let (status, reason, _) = get_error(&format!("{url}/api/events"), &[("last-event-id", "yesterday")]).await;
    assert_eq!((status, reason.as_str()), (400, "INVALID_ARGUMENT"));
    let (status, _, _) = get_error(&format!("{url}/api/events?since=99999999"), &[]).await;
    assert_eq!(status, 400, "a revision the cluster has not reached");

    let start = cluster.store.current_revision().await.unwrap();
    for i in 0..4 {
        let drone = ManualDrone::attach(&cluster.url(), drone_hello(&format!("drone-{i}"))).await.unwrap();
        drop(drone);
    }
    let later = Utc::now() + chrono::Duration::seconds(1);
    let retention = Retention { min_revisions: 2, max_age: chrono::Duration::zero() };
    let oldest = cluster.store.compact(retention, later).await.unwrap();
    assert!(oldest > start, "history was compacted past {start}: oldest {oldest}");
    let (status, reason, _) = get_error(&format!("{url}/api/events"), &[("last-event-id", &start.to_string())]).await;
    assert_eq!((status, reason.as_str()), (410, "REVISION_COMPACTED"), "the page must load a fresh snapshot");
    let (status, reason, _) = get_error(&format!("{url}/api/nodes?at={start}"), &[]).await;
    assert_eq!((status, reason.as_str()), (410, "REVISION_COMPACTED"));
    cluster.shutdown().await;
}

fn auth_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("auth.toml");
    let text = "[[token]]\nname = \"viewer\"\nrole = \"reader\"\nsecret = \"reader-secret-0123456789abcdef\"\n\n\
                [[token]]\nname = \"drone-token\"\nrole = \"drone\"\nsecret = \"drone-secret-0123456789abcdef\"\n\
                nodes = [\"drone-a\"]\n";
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_auth_file_the_api_needs_a_token_whose_role_may_read_and_the_page_asks_for_one() {
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        TestCluster::sqlite_with(ControllerConfig { auth_file: Some(auth_file(dir.path())), ..config() }).await;
    let url = admin(&cluster);
    let reader = [("authorization", "Bearer reader-secret-0123456789abcdef")];
    let drone = [("authorization", "Bearer drone-secret-0123456789abcdef")];
    let wrong = [("authorization", "Bearer not-a-token-0123456789abcdef")];

    // The page holds no data: it loads, then asks for a token.
    let (status, _, page) = get(&format!("{url}/"), &[]).await;
    assert_eq!(status, 200);
    assert!(page.contains("id=\"token-form\""), "the page has a token form");

    for route in ["/api/nodes", "/api/backends", "/api/backends/bk-0000000000000000", "/api/events"] {
        let (status, reason, headers) = get_error(&format!("{url}{route}"), &[]).await;
        assert_eq!((status, reason.as_str()), (401, "UNAUTHENTICATED"), "{route} without a token");
        assert_eq!(headers["www-authenticate"], "Bearer realm=\"hangar\"", "{route}");
        let (status, reason, _) = get_error(&format!("{url}{route}"), &wrong).await;
        assert_eq!((status, reason.as_str()), (401, "TOKEN_INVALID"), "{route} with an unknown token");
        let (status, reason, _) = get_error(&format!("{url}{route}"), &drone).await;
        assert_eq!((status, reason.as_str()), (403, "ROLE_NOT_ALLOWED"), "{route} as a drone");
    }
    let nodes = get_json(&format!("{url}/api/nodes"), &reader).await;
    assert!(nodes["nodes"].is_array());
    let listing = get_json(&format!("{url}/api/backends"), &reader).await;
    assert!(listing["backends"].is_array());
    let (status, reason, _) = get_error(&format!("{url}/api/backends/bk-0000000000000000"), &reader).await;
    assert_eq!((status, reason.as_str()), (404, "BACKEND_NOT_FOUND"), "a reader gets past auth");
    let mut events = Events::open(&url, "", &reader).await;
    assert_eq!(events.next().await.event, "hello");
    drop(events);
    cluster.shutdown().await;
}
