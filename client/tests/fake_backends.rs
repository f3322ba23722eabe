//! The backend SDK calls and `hangar connect` / `hangar backends …` against a scripted fake
//! `BackendService` served over real tonic on 127.0.0.1:0.
//!
//! The fake's WatchBackend replays the backend's whole history on every call, as the controller
//! does; what each call does after `n` statuses (drop the stream, hang, end) is scripted, so a
//! client that resumes wrongly shows repeated or missing states.

mod support;

use futures::{Stream, StreamExt};
use hangar::domain::{BackendFilter, BackendState, timestamp_to_proto};
use hangar::error::{reason, status_with_reason};
use hangar::v1::{self, backend_service_server::BackendService, backend_service_server::BackendServiceServer};
use hangar_client::cli::{Cli, CliError, Command, connect, execute, render};
use hangar_client::{ClientError, ClientOptions, ConnectRequest, HangarClient, RetryPolicy, SpawnSpec};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::FakeServer;
use tonic::service::Routes;
use tonic::{Code, Request, Response, Status};

const URL: &str = "http://127.0.0.1:8080/b/bk-1/tok-1/";

/// What one WatchBackend call does: deliver up to `statuses` of the history, then `then`.
#[derive(Clone)]
struct WatchCall {
    statuses: usize,
    then: End,
}

#[derive(Clone)]
enum End {
    Status(Status),
    /// Quiet and open, like a live watch of a backend that does not change.
    Hang,
    /// OK end of stream (the controller does this after TERMINATED).
    Close,
}

#[derive(Default)]
struct FakeBackends {
    /// The backend's statuses in order.
    history: Vec<v1::BackendStatus>,
    /// One entry per WatchBackend call; when empty, the whole history then Close.
    watch_script: Mutex<VecDeque<WatchCall>>,
    /// Connect fails with this status (after `unavailable_connects`).
    connect_error: Option<Status>,
    unavailable_connects: AtomicU32,
    backend_count: usize,
    connects: Mutex<Vec<v1::ConnectRequest>>,
    calls: AtomicU32,
    watch_calls: AtomicU32,
}

fn status(state: v1::BackendState, millis: i64) -> v1::BackendStatus {
    let base = chrono::Utc::now() - chrono::Duration::seconds(10);
    v1::BackendStatus {
        state: state as i32,
        time: Some(timestamp_to_proto(base + chrono::Duration::milliseconds(millis))),
        ..Default::default()
    }
}

/// SCHEDULED → LOADING → STARTING → WAITING → READY at 0, 0.3, 0.9, 1.1 and 1.4 s.
fn to_ready() -> Vec<v1::BackendStatus> {
    use v1::BackendState::*;
    vec![status(Scheduled, 0), status(Loading, 300), status(Starting, 900), status(Waiting, 1100), status(Ready, 1400)]
}

/// SCHEDULED → LOADING → TERMINATED (IMAGE_PULL_FAILED).
fn pull_failure() -> Vec<v1::BackendStatus> {
    use v1::BackendState::*;
    let end = v1::BackendStatus {
        termination_kind: v1::TerminationKind::Hard as i32,
        termination_reason: v1::TerminationReason::ImagePullFailed as i32,
        exit_code: None,
        ..status(Terminated, 2000)
    };
    vec![status(Scheduled, 0), status(Loading, 300), end]
}

fn proto_backend(i: usize) -> v1::Backend {
    v1::Backend {
        id: format!("bk-{i:05}"),
        key: Some(v1::BackendKey { namespace: "docs".into(), name: format!("doc-{i}"), tag: String::new() }),
        status: Some(status(v1::BackendState::Ready, 0)),
        drone_id: "nd-1".into(),
        cluster: "default".into(),
        pool: "default".into(),
        created_at: Some(timestamp_to_proto(chrono::Utc::now())),
        ..Default::default()
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<v1::WatchBackendResponse, Status>> + Send>>;

#[async_trait::async_trait]
impl BackendService for FakeBackends {
    type WatchBackendStream = StatusStream;

    async fn connect(&self, request: Request<v1::ConnectRequest>) -> Result<Response<v1::ConnectResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.connects.lock().unwrap().push(request.into_inner());
        if self.unavailable_connects.load(Ordering::SeqCst) > 0 {
            self.unavailable_connects.fetch_sub(1, Ordering::SeqCst);
            return Err(Status::unavailable("controller restarting"));
        }
        if let Some(status) = &self.connect_error {
            return Err(status.clone());
        }
        let first = self.history.first().cloned().unwrap_or_else(|| status(v1::BackendState::Scheduled, 0));
        Ok(Response::new(v1::ConnectResponse {
            backend_id: "bk-1".into(),
            spawned: true,
            status: Some(first),
            token: "tok-1".into(),
            url: URL.into(),
            token_expires_at: Some(timestamp_to_proto(chrono::Utc::now() + chrono::Duration::hours(1))),
            static_token: String::new(),
            backend: None,
        }))
    }

    async fn get_backend(
        &self,
        request: Request<v1::GetBackendRequest>,
    ) -> Result<Response<v1::GetBackendResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let id = request.into_inner().id;
        let backend = (0..self.backend_count).map(proto_backend).find(|b| b.id == id).ok_or_else(|| {
            status_with_reason(Code::NotFound, format!("no backend {id}"), reason::BACKEND_NOT_FOUND, &[])
        })?;
        Ok(Response::new(v1::GetBackendResponse { backend: Some(backend) }))
    }

    async fn list_backends(
        &self,
        request: Request<v1::ListBackendsRequest>,
    ) -> Result<Response<v1::ListBackendsResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        let page: usize = if request.page_token.is_empty() { 0 } else { request.page_token.parse().unwrap() };
        let size = if request.page_size == 0 { 100 } else { request.page_size as usize };
        let end = ((page + 1) * size).min(self.backend_count);
        Ok(Response::new(v1::ListBackendsResponse {
            backends: (page * size..end).map(proto_backend).collect(),
            next_page_token: if end < self.backend_count { (page + 1).to_string() } else { String::new() },
            revision: 0,
        }))
    }

    async fn watch_backend(
        &self,
        _: Request<v1::WatchBackendRequest>,
    ) -> Result<Response<Self::WatchBackendStream>, Status> {
        self.watch_calls.fetch_add(1, Ordering::SeqCst);
        let call = self.watch_script.lock().unwrap().pop_front();
        let call = call.unwrap_or(WatchCall { statuses: usize::MAX, then: End::Close });
        let history: Vec<_> = self.history.iter().take(call.statuses).cloned().collect();
        let stream = async_stream::stream! {
            for status in history {
                yield Ok(v1::WatchBackendResponse { status: Some(status) });
            }
            match call.then {
                End::Status(status) => yield Err(status),
                End::Hang => std::future::pending::<()>().await,
                End::Close => {}
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    type WatchBackendsStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<v1::WatchBackendsResponse, Status>> + Send>>;

    /// Not what these tests drive: `tests/tests/backend_watch.rs` watches a real controller.
    async fn watch_backends(
        &self,
        _: Request<v1::WatchBackendsRequest>,
    ) -> Result<Response<Self::WatchBackendsStream>, Status> {
        Err(Status::unimplemented("the fake controller has no WatchBackends"))
    }

    async fn terminate_backend(
        &self,
        request: Request<v1::TerminateBackendRequest>,
    ) -> Result<Response<v1::TerminateBackendResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        let mut backend = proto_backend(0);
        backend.id = request.id;
        let state = if request.hard { v1::BackendState::HardTerminating } else { v1::BackendState::Terminating };
        backend.status = Some(status(state, 0));
        Ok(Response::new(v1::TerminateBackendResponse { backend: Some(backend) }))
    }
}

/// The fake behind a [`FakeServer`].
struct FakeController {
    server: FakeServer,
    backends: Arc<FakeBackends>,
}

impl FakeController {
    async fn start(fake: FakeBackends) -> Self {
        let backends = Arc::new(fake);
        let server = FakeServer::start(Routes::new(BackendServiceServer::from_arc(backends.clone()))).await;
        FakeController { server, backends }
    }

    async fn client(&self) -> HangarClient {
        HangarClient::connect_with(&self.server.url, ClientOptions { retry: fast_retry(4), ..ClientOptions::default() })
            .await
            .unwrap()
    }

    fn cli(&self, args: &[&str]) -> Cli {
        use clap::Parser;
        let base = ["hangar", "--controller", self.server.url.as_str()];
        Cli::try_parse_from(base.iter().copied().chain(args.iter().copied())).unwrap()
    }

    fn calls(&self) -> u32 {
        self.backends.calls.load(Ordering::SeqCst)
    }
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy { max_attempts, initial_backoff: Duration::from_millis(5), max_backoff: Duration::from_millis(20) }
}

/// Runs `hangar connect …` the way `main` does and returns (stdout, result).
async fn run_connect(controller: &FakeController, args: &[&str]) -> (String, Result<(), CliError>) {
    let cli = controller.cli(&[&["connect"], args].concat());
    let Command::Connect(connect_args) = &cli.command else { unreachable!() };
    let mut out = Vec::new();
    let result = tokio::time::timeout(Duration::from_secs(10), connect(&cli, connect_args, &mut out))
        .await
        .expect("connect ends");
    (String::from_utf8(out).unwrap(), result)
}

#[tokio::test]
async fn connect_prints_the_backend_id_whether_it_was_spawned_and_the_url() {
    let controller = FakeController::start(FakeBackends::default()).await;
    let out = execute(&controller.cli(&["connect", "docs/doc-1@v2", "--image", "editor:2", "--env", "MODE=edit"]))
        .await
        .unwrap();
    println!("{out}");
    assert!(out.starts_with(&format!("Spawned backend bk-1 for docs/doc-1@v2.\nState: SCHEDULED\nURL: {URL}\n")));
    let sent = controller.backends.connects.lock().unwrap()[0].clone();
    assert_eq!(sent.key.unwrap().tag, "v2");
    let executable = sent.spawn_config.unwrap().executable.unwrap();
    assert_eq!((executable.image.as_str(), executable.env["MODE"].as_str()), ("editor:2", "edit"));
}

#[tokio::test]
async fn connect_json_is_one_document_with_backend_id_url_and_state() {
    let controller = FakeController::start(FakeBackends::default()).await;
    let out = execute(&controller.cli(&["connect", "doc-1", "--image", "editor:2", "-o", "json"])).await.unwrap();
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((doc["backend_id"].as_str(), doc["url"].as_str()), (Some("bk-1"), Some(URL)));
    assert_eq!((doc["state"].as_str(), doc["spawned"].as_bool()), (Some("SCHEDULED"), Some(true)));
}

#[tokio::test]
async fn connect_wait_prints_a_line_per_state_until_ready_then_the_url() {
    let fake = FakeBackends { history: to_ready(), ..FakeBackends::default() };
    fake.watch_script.lock().unwrap().push_back(WatchCall { statuses: usize::MAX, then: End::Hang });
    let controller = FakeController::start(fake).await;
    let (out, result) = run_connect(&controller, &["doc-1", "--image", "editor:2", "--wait"]).await;
    println!("{out}");
    result.unwrap();
    assert_eq!(
        out,
        format!(
            "Spawned backend bk-1 for default/doc-1.\n  SCHEDULED 0.0s\n  LOADING   0.3s\n  STARTING  0.9s\n  \
             WAITING   1.1s\n  READY     1.4s\nURL: {URL}\nToken expires: {}\n",
            out.lines().last().unwrap().trim_start_matches("Token expires: ")
        )
    );
}

#[tokio::test]
async fn connect_wait_that_ends_terminated_prints_the_reason_and_exits_1() {
    let controller = FakeController::start(FakeBackends { history: pull_failure(), ..FakeBackends::default() }).await;
    let (out, result) = run_connect(&controller, &["doc-1", "--image", "nope:1", "--wait"]).await;
    println!("{out}");
    assert!(out.ends_with("  LOADING   0.3s\n  TERMINATED 2.0s  IMAGE_PULL_FAILED (HARD)\n"), "{out}");
    let err = result.unwrap_err();
    assert_eq!(err.exit_code(), std::process::ExitCode::from(1));
    let rendered = render::error(&err, &controller.server.url);
    println!("{rendered}");
    assert!(rendered.starts_with("error: backend bk-1 ended before it was ready: IMAGE_PULL_FAILED (HARD)\n"));
    assert!(rendered.contains("hint: check the image name"), "{rendered}");
}

#[tokio::test]
async fn connect_wait_json_prints_one_document_with_the_final_state() {
    let controller = FakeController::start(FakeBackends { history: to_ready(), ..FakeBackends::default() }).await;
    let (out, result) = run_connect(&controller, &["doc-1", "--image", "editor:2", "--wait", "-o", "json"]).await;
    result.unwrap();
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((doc["state"].as_str(), doc["url"].as_str()), (Some("READY"), Some(URL)));
}

#[tokio::test]
async fn connect_wait_gives_up_after_the_timeout() {
    let fake = FakeBackends { history: to_ready()[..2].to_vec(), ..FakeBackends::default() };
    fake.watch_script.lock().unwrap().push_back(WatchCall { statuses: usize::MAX, then: End::Hang });
    let controller = FakeController::start(fake).await;
    let (out, result) = run_connect(&controller, &["doc-1", "--image", "e", "--wait", "--timeout", "300ms"]).await;
    assert!(out.ends_with("  LOADING   0.3s\n"), "{out}");
    let err = result.unwrap_err();
    assert!(matches!(err, CliError::WaitTimeout { .. }), "{err:?}");
}

#[tokio::test]
async fn watch_resumes_after_dropped_streams_without_repeating_a_state() {
    let fake = FakeBackends { history: to_ready(), ..FakeBackends::default() };
    {
        let mut script = fake.watch_script.lock().unwrap();
        script.push_back(WatchCall { statuses: 2, then: End::Status(Status::unavailable("controller restarting")) });
        script.push_back(WatchCall { statuses: 0, then: End::Status(Status::unavailable("still restarting")) });
        script.push_back(WatchCall { statuses: 4, then: End::Close });
        script.push_back(WatchCall { statuses: usize::MAX, then: End::Hang });
    }
    let controller = FakeController::start(fake).await;
    let client = controller.client().await;
    let mut statuses = std::pin::pin!(client.watch_backend_with("bk-1", fast_retry(5)));
    let mut states = Vec::new();
    while states.last() != Some(&BackendState::Ready) {
        let status = tokio::time::timeout(Duration::from_secs(5), statuses.next()).await.unwrap().unwrap();
        states.push(status.unwrap().state);
    }
    use BackendState::*;
    assert_eq!(states, [Scheduled, Loading, Starting, Waiting, Ready]);
    assert_eq!(controller.backends.watch_calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn watch_ends_after_terminated_and_backends_watch_prints_ndjson() {
    let controller = FakeController::start(FakeBackends { history: pull_failure(), ..FakeBackends::default() }).await;
    let out = execute(&controller.cli(&["backends", "watch", "bk-1", "-o", "json"])).await.unwrap();
    println!("{out}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let states: Vec<&str> = lines.iter().map(|l| l["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["SCHEDULED", "LOADING", "TERMINATED"]);
    assert_eq!(lines[2]["termination_reason"], "IMAGE_PULL_FAILED");
    let table = execute(&controller.cli(&["backends", "watch", "bk-1"])).await.unwrap();
    println!("{table}");
    assert!(table.lines().nth(2).unwrap().ends_with("TERMINATED        +2.0s  IMAGE_PULL_FAILED (HARD)"), "{table}");
}

#[tokio::test]
async fn watch_gives_up_with_the_error_when_retries_run_out() {
    let fake = FakeBackends { history: to_ready(), ..FakeBackends::default() };
    for _ in 0..3 {
        let end = End::Status(Status::unavailable("down"));
        fake.watch_script.lock().unwrap().push_back(WatchCall { statuses: 0, then: end });
    }
    let controller = FakeController::start(fake).await;
    let client = controller.client().await;
    let items: Vec<_> = client.watch_backend_with("bk-1", fast_retry(3)).collect().await;
    assert_eq!(items.len(), 1);
    assert!(matches!(&items[0], Err(ClientError::Unavailable { .. })), "{items:?}");
}

#[tokio::test]
async fn listing_all_backends_follows_page_tokens() {
    let controller = FakeController::start(FakeBackends { backend_count: 1203, ..FakeBackends::default() }).await;
    let backends = controller.client().await.list_all_backends(&BackendFilter::default()).await.unwrap();
    assert_eq!(backends.len(), 1203);
    let mut ids: Vec<&str> = backends.iter().map(|b| b.id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 1203);
    assert_eq!(controller.calls(), 3, "pages of 500");
}

#[tokio::test]
async fn cli_backends_list_get_and_terminate() {
    let controller = FakeController::start(FakeBackends { backend_count: 2, ..FakeBackends::default() }).await;
    let table = execute(&controller.cli(&["backends", "list", "--state", "ready"])).await.unwrap();
    println!("{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("ID         KEY          STATE   DRONE"), "{table}");
    assert!(lines[1].starts_with("bk-00000   docs/doc-0   READY   nd-1"), "{table}");
    let json = execute(&controller.cli(&["backends", "list", "-o", "json"])).await.unwrap();
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["backends"].as_array().unwrap().len(), 2);

    let detail = execute(&controller.cli(&["backends", "get", "bk-00001"])).await.unwrap();
    assert!(detail.starts_with("ID:            bk-00001\nKey:           docs/doc-1\nState:         READY"), "{detail}");

    let out = execute(&controller.cli(&["backends", "terminate", "bk-00001", "--hard"])).await.unwrap();
    assert_eq!(
        out,
        "Killing backend bk-00001 (at once). State: HARD_TERMINATING.\n\
         Follow it with `hangar backends watch bk-00001`.\n"
    );
}

#[tokio::test]
async fn errors_render_with_their_reason_and_a_hint() {
    let cases = [
        (Code::FailedPrecondition, reason::KEY_TAG_MISMATCH, "key docs/doc-1 is held with tag v1"),
        (Code::Unavailable, reason::NO_DRONE_AVAILABLE, "no drone has room"),
        (Code::ResourceExhausted, reason::POOL_FULL, "pool default is full"),
        (Code::NotFound, reason::BACKEND_NOT_FOUND, "no live backend for docs/doc-1"),
    ];
    for (code, why, message) in cases {
        let fake =
            FakeBackends { connect_error: Some(status_with_reason(code, message, why, &[])), ..Default::default() };
        let controller = FakeController::start(fake).await;
        let cli = controller.cli(&["connect", "docs/doc-1@v2", "--image", "editor:2"]);
        let err = execute(&cli).await.unwrap_err();
        let out = render::error(&err, &controller.server.url);
        println!("{out}");
        assert!(out.starts_with(&format!("error: {message} ({why})\nhint: ")), "{out}");
        assert_eq!(controller.calls(), 1, "{why} is not retried");
    }
    let controller = FakeController::start(FakeBackends::default()).await;
    let err = execute(&controller.cli(&["backends", "get", "bk-nope"])).await.unwrap_err();
    assert_eq!(
        render::error(&err, &controller.server.url),
        "error: no backend has the id or key \"bk-nope\" (BACKEND_NOT_FOUND)\nhint: list backends with `hangar backends list`; `hangar \
         connect KEY --image IMAGE` starts one\n"
    );
}

#[tokio::test]
async fn keyed_connect_is_retried_after_unavailable_and_keyless_is_not() {
    let fake = FakeBackends { unavailable_connects: AtomicU32::new(2), ..FakeBackends::default() };
    let controller = FakeController::start(fake).await;
    let client = controller.client().await;
    let keyed = ConnectRequest::key("docs", "doc-1", "").spawn(SpawnSpec::new("editor:2"));
    assert_eq!(client.connect_backend(&keyed).await.unwrap().backend_id, "bk-1");
    assert_eq!(controller.calls(), 3);

    controller.backends.unavailable_connects.store(1, Ordering::SeqCst);
    let err = client.connect_backend(&ConnectRequest::keyless(SpawnSpec::new("editor:2"))).await.unwrap_err();
    assert!(matches!(err, ClientError::Unavailable { .. }), "{err:?}");
    assert_eq!(controller.calls(), 4, "a keyless Connect may have started a backend; it is not repeated");
}
