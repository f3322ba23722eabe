//! The drone side of the backend lifecycle (docs/design/drone-link.md), against a fake
//! controller: a real tonic `DroneService` on 127.0.0.1:0 that the test scripts (send actions,
//! record events, ack or withhold acks, answer renewals, drop the stream, refuse attaches).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar::domain::{BackendState, TerminationReason, duration_to_proto};
use hangar::v1::{self, drone_service_server::DroneService, drone_service_server::DroneServiceServer};
use hangar_executor::drone::{self, Backoff, DroneConfig, DroneHandle};
use hangar_executor::runtime::mock::MockRuntime;
use hangar_executor::runtime::process::ProcessRuntime;
use hangar_executor::runtime::{
    BackendInfo, BackendSpec, Capability, Condition, EventStream, ImageReady, PullPolicy, Runtime, RuntimeError,
    RuntimeKind, Started, StatsStream,
};
use hangar_executor::testing;
use hangar_testkit::eventually;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

// ---------------------------------------------------------------------------------------------
// The fake controller.

type Outbound = mpsc::Sender<Result<v1::DroneAttachResponse, Status>>;

#[derive(Default)]
struct Script {
    /// Every event received, duplicates included, in arrival order.
    events: Vec<v1::DroneBackendEvent>,
    acked_actions: Vec<String>,
    /// Arrival time of every renewal.
    renewals: Vec<Instant>,
    /// Actions not yet acknowledged; sent again at every attach, as a real controller does.
    pending: Vec<v1::DroneAction>,
    withhold_event_acks: bool,
    /// `None`: renewals go unanswered.
    renew_answer: Option<bool>,
    /// Play a controller that cannot reach its store: renewals answered deferred, with this
    /// grace promised in the Welcome.
    defer_renewals: Option<Duration>,
    /// Answer renewals again (renewed) from the next attach on: a stuck stream left behind.
    answer_on_next_attach: bool,
    refuse_attach: bool,
    /// Play a controller from before batched renewals: no `batch_renewals` in the Welcome.
    single_renewals: bool,
    /// Keys per renewal message received (a `RenewKey` counts 1).
    renewal_sizes: Vec<usize>,
    attaches: u32,
    /// When each attach arrived.
    attached_at: Vec<Instant>,
    current: Option<Outbound>,
}

#[derive(Clone, Default)]
struct FakeController {
    script: Arc<Mutex<Script>>,
}

fn reply(message: v1::drone_attach_response::Message) -> Result<v1::DroneAttachResponse, Status> {
    Ok(v1::DroneAttachResponse { message: Some(message) })
}

#[tonic::async_trait]
impl DroneService for FakeController {
    type AttachStream = ReceiverStream<Result<v1::DroneAttachResponse, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<v1::DroneAttachRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        use v1::drone_attach_request::Message;
        use v1::drone_attach_response::Message as Reply;
        if self.script.lock().unwrap().refuse_attach {
            return Err(Status::unavailable("fake controller refuses attaches"));
        }
        let mut inbound = request.into_inner();
        match inbound.message().await? {
            Some(v1::DroneAttachRequest { message: Some(Message::Hello(_)) }) => {}
            other => return Err(Status::invalid_argument(format!("expected hello, got {other:?}"))),
        }
        let (tx, rx) = mpsc::channel(256);
        let (single_renewals, defer_renewals) = {
            let script = self.script.lock().unwrap();
            (script.single_renewals, script.defer_renewals)
        };
        let welcome = v1::Welcome {
            node_id: "node-fake".into(),
            controller_id: "fake".into(),
            heartbeat_interval: Some(duration_to_proto(Duration::from_millis(500))),
            batch_renewals: !single_renewals,
            store_outage_grace: defer_renewals.map(duration_to_proto),
        };
        tx.send(reply(Reply::Welcome(welcome))).await.unwrap();
        let pending = {
            let mut script = self.script.lock().unwrap();
            script.attaches += 1;
            script.attached_at.push(Instant::now());
            if std::mem::take(&mut script.answer_on_next_attach) {
                script.renew_answer = Some(true);
            }
            script.current = Some(tx.clone());
            script.pending.clone()
        };
        for action in pending {
            let _ = tx.send(reply(Reply::Action(action))).await;
        }
        let script = self.script.clone();
        tokio::spawn(async move {
            while let Ok(Some(request)) = inbound.message().await {
                let answer = {
                    let mut s = script.lock().unwrap();
                    match request.message {
                        Some(Message::BackendEvent(event)) => {
                            let ack = (!s.withhold_event_acks)
                                .then(|| Reply::AckEvent(v1::AckEvent { event_id: event.event_id.clone() }));
                            s.events.push(event);
                            ack
                        }
                        Some(Message::AckAction(ack)) => {
                            s.pending.retain(|a| a.action_id != ack.action_id);
                            s.acked_actions.push(ack.action_id);
                            None
                        }
                        Some(Message::RenewKeys(batch)) => {
                            s.renewals.push(Instant::now());
                            s.renewal_sizes.push(batch.keys.len());
                            let deferred = s.defer_renewals.is_some();
                            s.renew_answer.or(deferred.then_some(false)).map(|renewed| {
                                let keys = batch
                                    .keys
                                    .into_iter()
                                    .map(|k| v1::RenewKeyResponse {
                                        backend_id: k.backend_id,
                                        renewed,
                                        expires_at: None,
                                        deferred,
                                    })
                                    .collect();
                                Reply::RenewKeysResponse(v1::RenewKeysResponse { keys })
                            })
                        }
                        Some(Message::RenewKey(renew)) => {
                            s.renewals.push(Instant::now());
                            s.renewal_sizes.push(1);
                            s.renew_answer.map(|renewed| {
                                Reply::RenewKeyResponse(v1::RenewKeyResponse {
                                    backend_id: renew.backend_id,
                                    renewed,
                                    expires_at: None,
                                    deferred: false,
                                })
                            })
                        }
                        _ => None,
                    }
                };
                if let Some(answer) = answer
                    && tx.send(reply(answer)).await.is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Controller {
    fake: FakeController,
    url: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Controller {
    async fn start() -> Controller {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fake = FakeController::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let service = DroneServiceServer::new(fake.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Controller { fake, url, stop: Some(stop) }
    }

    fn script<R>(&self, f: impl FnOnce(&mut Script) -> R) -> R {
        f(&mut self.fake.script.lock().unwrap())
    }

    /// Stores an action and sends it on the current stream (and at every attach until acked).
    fn send(&self, action: v1::DroneAction) {
        self.script(|s| s.pending.push(action.clone()));
        self.redeliver(action);
    }

    /// Sends an action on the current stream, whatever its ack state.
    fn redeliver(&self, action: v1::DroneAction) {
        let tx = self.script(|s| s.current.clone()).expect("a drone is attached");
        tx.try_send(reply(v1::drone_attach_response::Message::Action(action))).unwrap();
    }

    /// Ends the current stream with an error, as a controller that dies would.
    fn drop_stream(&self) {
        if let Some(tx) = self.script(|s| s.current.take()) {
            let _ = tx.try_send(Err(Status::unavailable("fake controller dropped the stream")));
        }
    }

    /// Events of one backend, first occurrence of each event id, in order.
    fn events_of(&self, backend_id: &str) -> Vec<v1::DroneBackendEvent> {
        let mut seen = HashSet::new();
        self.script(|s| {
            s.events.iter().filter(|e| e.backend_id == backend_id && seen.insert(e.event_id.clone())).cloned().collect()
        })
    }

    fn states_of(&self, backend_id: &str) -> Vec<BackendState> {
        self.events_of(backend_id).iter().map(state_of).collect()
    }

    /// Waits until `done` holds; a wait that runs out shows the events received.
    async fn wait_for(&self, what: &str, timeout: Duration, mut done: impl FnMut(&Controller) -> bool) {
        eventually(timeout, what, async || if done(self) { Ok(()) } else { Err(self.script(|s| s.events.clone())) })
            .await
    }

    /// Waits for the backend to report `state` and returns that event.
    async fn wait_state(&self, backend_id: &str, state: BackendState, timeout: Duration) -> v1::DroneBackendEvent {
        self.wait_for(&format!("{backend_id} {state}"), timeout, |c| c.states_of(backend_id).contains(&state)).await;
        self.events_of(backend_id).into_iter().find(|e| state_of(e) == state).unwrap()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn state_of(event: &v1::DroneBackendEvent) -> BackendState {
    BackendState::from_proto(event.status.as_ref().unwrap().state).unwrap()
}

fn reason_of(event: &v1::DroneBackendEvent) -> Option<TerminationReason> {
    TerminationReason::from_proto(event.status.as_ref().unwrap().termination_reason)
}

fn exit_code_of(event: &v1::DroneBackendEvent) -> Option<i32> {
    event.status.as_ref().unwrap().exit_code
}

fn message_of(event: &v1::DroneBackendEvent) -> &str {
    &event.status.as_ref().unwrap().message
}

// ---------------------------------------------------------------------------------------------
// Drones and actions.

fn start_drone(controller: &Controller, runtime: Arc<dyn Runtime>, data_dir: Option<PathBuf>) -> DroneHandle {
    let mut config = DroneConfig::new(vec![controller.url.clone()], "drone-under-test");
    config.runtime = Some(runtime);
    config.data_dir = data_dir;
    config.heartbeat_interval = Duration::from_millis(500);
    config.backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(200));
    drone::spawn(config)
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

#[derive(Clone)]
struct Spawn {
    image: String,
    env: BTreeMap<String, String>,
    key: Option<v1::BackendKey>,
    startup_timeout: Duration,
    lease: Duration,
    /// What the controller says is left of the lease (`None`: an older controller says nothing).
    remaining: Option<Duration>,
    grace: Duration,
}

impl Spawn {
    fn new(image: impl Into<String>) -> Self {
        Spawn {
            image: image.into(),
            env: BTreeMap::new(),
            key: None,
            startup_timeout: Duration::from_secs(10),
            lease: Duration::from_secs(30),
            remaining: None,
            grace: Duration::from_secs(2),
        }
    }

    fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    fn keyed(mut self, name: &str) -> Self {
        self.key = Some(v1::BackendKey { namespace: "docs".into(), name: name.into(), tag: String::new() });
        self
    }

    fn action(&self, backend_id: &str) -> v1::DroneAction {
        v1::DroneAction {
            action_id: new_id("act"),
            backend_id: backend_id.into(),
            action: Some(v1::drone_action::Action::Spawn(v1::SpawnBackend {
                executable: Some(v1::Executable {
                    image: self.image.clone(),
                    env: self.env.clone().into_iter().collect(),
                    ..Default::default()
                }),
                key: self.key.clone(),
                fencing_token: 7,
                static_token: "static-secret".into(),
                startup_timeout: Some(duration_to_proto(self.startup_timeout)),
                lease_duration: Some(duration_to_proto(self.lease)),
                stop_grace: Some(duration_to_proto(self.grace)),
                lease_remaining: self.remaining.map(duration_to_proto),
            })),
            trace_context: Default::default(),
        }
    }
}

fn terminate(backend_id: &str, hard: bool) -> v1::DroneAction {
    let kind = if hard { v1::TerminationKind::Hard } else { v1::TerminationKind::Soft };
    v1::DroneAction {
        action_id: new_id("act"),
        backend_id: backend_id.into(),
        action: Some(v1::drone_action::Action::Terminate(v1::TerminateBackend {
            kind: kind as i32,
            reason: v1::TerminationReason::External as i32,
        })),
        trace_context: Default::default(),
    }
}

const T: Duration = Duration::from_secs(10);

use BackendState::*;

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// Spawn → LOADING → STARTING → WAITING → READY with a real process, the env reaching it, then an
/// external terminate → TERMINATING → TERMINATED with its exit code.
#[tokio::test]
async fn process_backend_reaches_ready_with_its_env_and_terminates_with_its_exit_code() {
    let controller = Controller::start().await;
    let runtime: Arc<dyn Runtime> = Arc::new(ProcessRuntime::new());
    let drone = start_drone(&controller, runtime.clone(), None);
    drone.attached().await;

    let backend = new_id("bk");
    let binary = testing::test_backend_binary().display().to_string();
    let began = Instant::now();
    controller.send(Spawn::new(binary).env("GREETING", "hello").keyed("doc-1").action(&backend));
    let ready = controller.wait_state(&backend, Ready, T).await;
    println!("process runtime: spawn → READY in {:?}", began.elapsed());
    assert_eq!(controller.states_of(&backend), [Loading, Starting, Waiting, Ready]);

    let (status, env) = testing::http_get(&ready.address, "/env").await.unwrap();
    assert_eq!(status, 200);
    for line in [
        format!("HANGAR_BACKEND_ID={backend}"),
        "HANGAR_BACKEND_KEY=docs/doc-1".into(),
        "HANGAR_FENCING_TOKEN=7".into(),
        "HANGAR_STATIC_TOKEN=static-secret".into(),
        "GREETING=hello".into(),
    ] {
        assert!(env.lines().any(|l| l == line), "{line} missing from {env}");
    }

    controller.send(terminate(&backend, false));
    let terminated = controller.wait_state(&backend, Terminated, T).await;
    assert_eq!(controller.states_of(&backend), [Loading, Starting, Waiting, Ready, Terminating, Terminated]);
    assert_eq!(reason_of(&terminated), Some(TerminationReason::External));
    assert_eq!(exit_code_of(&terminated), Some(143));
    assert!(runtime.list().await.unwrap().is_empty(), "the process was removed");
    drone.shutdown().await;
    runtime.shutdown().await;
}

/// The same happy path in a container; skipped loudly without an engine.
#[tokio::test]
async fn docker_backend_reaches_ready_and_terminates() {
    let instance = testing::unique_name("drone-bk");
    let Some(docker) = testing::docker_or_skip("docker_backend_reaches_ready_and_terminates", &instance).await else {
        return;
    };
    let _cleanup = testing::ContainerCleanup::new(&instance);
    let image = testing::test_image();
    let controller = Controller::start().await;
    let runtime: Arc<dyn Runtime> = Arc::new(docker);
    let drone = start_drone(&controller, runtime.clone(), None);
    drone.attached().await;

    let backend = new_id("bk");
    let began = Instant::now();
    controller.send(Spawn::new(image).env("GREETING", "container").action(&backend));
    let ready = controller.wait_state(&backend, Ready, Duration::from_secs(30)).await;
    println!("docker runtime: spawn → READY in {:?}", began.elapsed());
    assert_eq!(controller.states_of(&backend), [Loading, Starting, Waiting, Ready]);
    let (_, env) = testing::http_get(&ready.address, "/env").await.unwrap();
    assert!(env.contains(&format!("HANGAR_BACKEND_ID={backend}")), "{env}");
    assert!(env.contains("GREETING=container"), "{env}");

    controller.send(terminate(&backend, false));
    let terminated = controller.wait_state(&backend, Terminated, Duration::from_secs(30)).await;
    assert_eq!(reason_of(&terminated), Some(TerminationReason::External));
    assert_eq!(exit_code_of(&terminated), Some(143));
    drone.shutdown().await;
}

/// A runtime whose image preparation takes a while, so a terminate can land during LOADING.
struct SlowImages {
    inner: MockRuntime,
    delay: Duration,
}

#[async_trait::async_trait]
impl Runtime for SlowImages {
    fn kind(&self) -> RuntimeKind {
        self.inner.kind()
    }
    fn capabilities(&self) -> Vec<Capability> {
        self.inner.capabilities()
    }
    async fn status(&self) -> Vec<Condition> {
        self.inner.status().await
    }
    async fn prepare_image(&self, image: &str, policy: PullPolicy) -> Result<ImageReady, RuntimeError> {
        tokio::time::sleep(self.delay).await;
        self.inner.prepare_image(image, policy).await
    }
    async fn start(&self, spec: BackendSpec) -> Result<Started, RuntimeError> {
        self.inner.start(spec).await
    }
    async fn stop(&self, backend_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.inner.stop(backend_id, grace).await
    }
    async fn remove(&self, backend_id: &str) -> Result<(), RuntimeError> {
        self.inner.remove(backend_id).await
    }
    async fn inspect(&self, backend_id: &str) -> Result<BackendInfo, RuntimeError> {
        self.inner.inspect(backend_id).await
    }
    async fn list(&self) -> Result<Vec<BackendInfo>, RuntimeError> {
        self.inner.list().await
    }
    async fn events(&self) -> Result<EventStream, RuntimeError> {
        self.inner.events().await
    }
    async fn stats(&self, backend_id: &str, interval: Duration) -> Result<StatsStream, RuntimeError> {
        self.inner.stats(backend_id, interval).await
    }
}

#[tokio::test]
async fn terminate_during_loading_abandons_the_spawn() {
    let controller = Controller::start().await;
    let runtime: Arc<dyn Runtime> = Arc::new(SlowImages { inner: MockRuntime::new(), delay: Duration::from_secs(5) });
    let drone = start_drone(&controller, runtime.clone(), None);
    drone.attached().await;

    let backend = new_id("bk");
    let began = Instant::now();
    controller.send(Spawn::new("app:1").action(&backend));
    controller.wait_state(&backend, Loading, T).await;
    controller.send(terminate(&backend, false));
    let terminated = controller.wait_state(&backend, Terminated, T).await;
    assert!(began.elapsed() < Duration::from_secs(4), "the preparation was abandoned, not waited out");
    assert_eq!(controller.states_of(&backend), [Loading, Terminated]);
    assert_eq!(reason_of(&terminated), Some(TerminationReason::External));
    assert!(runtime.list().await.unwrap().is_empty());
    drone.shutdown().await;
}

#[tokio::test]
async fn terminate_during_starting_stops_the_backend_once_start_returns() {
    let controller = Controller::start().await;
    let runtime: Arc<dyn Runtime> = Arc::new(MockRuntime::new());
    let drone = start_drone(&controller, runtime.clone(), None);
    drone.attached().await;

    let backend = new_id("bk");
    controller.send(Spawn::new("app:1").env("HANGAR_MOCK_START_DELAY_MS", "800").action(&backend));
    controller.wait_state(&backend, Starting, T).await;
    controller.send(terminate(&backend, false));
    let terminated = controller.wait_state(&backend, Terminated, T).await;
    assert_eq!(controller.states_of(&backend), [Loading, Starting, Terminating, Terminated]);
    assert_eq!(reason_of(&terminated), Some(TerminationReason::External));
    assert!(runtime.list().await.unwrap().is_empty(), "nothing is left running");
    drone.shutdown().await;
}

#[tokio::test]
async fn backend_that_never_answers_http_ends_with_startup_timeout() {
    let controller = Controller::start().await;
    let runtime: Arc<dyn Runtime> = Arc::new(ProcessRuntime::new());
    let drone = start_drone(&controller, runtime.clone(), None);
    drone.attached().await;

    let backend = new_id("bk");
    let mut spawn =
        Spawn::new(testing::test_backend_binary().display().to_string()).env("TEST_BACKEND_START_DELAY_MS", "30000");
    spawn.startup_timeout = Duration::from_millis(700);
    controller.send(spawn.action(&backend));
    let terminated = controller.wait_state(&backend, Terminated, T).await;
    assert_eq!(controller.states_of(&backend), [Loading, Starting, Waiting, Terminating, Terminated]);
    assert_eq!(reason_of(&terminated), Some(TerminationReason::StartupTimeout));
    let message = message_of(&terminated);
    assert!(message.contains("did not answer HTTP on 127.0.0.1:") && message.contains("700ms"), "{message}");
    let terminating = controller.wait_state(&backend, Terminating, T).await;
    assert_eq!(message_of(&terminating), message, "TERMINATING already says why");
    assert!(runtime.list().await.unwrap().is_empty());
    drone.shutdown().await;
    runtime.shutdown().await;
}

#[tokio::test]
async fn missing_image_ends_with_image_pull_failed() {
    let controller = Controller::start().await;
    let drone = start_drone(&controller, Arc::new(MockRuntime::new()), None);
    drone.attached().await;

    let backend = new_id("bk");
    controller.send(Spawn::new("registry.invalid/missing:1").action(&backend));
    let terminated = controller.wait_state(&backend, Terminated, T).await;
    assert_eq!(controller.states_of(&backend), [Loading, Terminated]);
    assert_eq!(reason_of(&terminated), Some(TerminationReason::ImagePullFailed));
    drone.shutdown().await;
}

#[tokio::test]
async fn backend_that_exits_by_itself_reports_exited_with_its_code() {
    let controller = Controller::start().await;
    let drone = start_drone(&controller, Arc::new(MockRuntime::new()), None);
    drone.attached().await;

    let backend = new_id("bk");
    controller.send(
        Spawn::new("app:1").env("HANGAR_MOCK_EXIT_AFTER_MS", "400").env("HANGAR_MOCK_EXIT_CODE", "3").action(&backend),
    );
    let terminated = controller.wait_state(&backend, Terminated, T).await;
    assert_eq!(controller.states_of(&backend), [Loading, Starting, Waiting, Ready, Terminated]);
    assert_eq!(reason_of(&terminated), Some(TerminationReason::Exited));
    assert_eq!(exit_code_of(&terminated), Some(3));
    drone.shutdown().await;
}

#[tokio::test]
async fn sigterm_ignoring_backend_is_hard_terminated_after_the_grace() {
    let controller = Controller::start().await;
    let drone = start_drone(&controller, Arc::new(MockRuntime::new()), None);
    drone.attached().await;

    let backend = new_id("bk");
    let mut spawn = Spawn::new("app:1").env("HANGAR_MOCK_IGNORE_SIGTERM", "1");
    spawn.grace = Duration::from_millis(400);
    controller.send(spawn.action(&backend));
    controller.wait_state(&backend, Ready, T).await;
    controller.send(terminate(&backend, false));
    let terminated = controller.wait_state(&backend, Terminated, T).await;
    assert_eq!(
        controller.states_of(&backend),
        [Loading, Starting, Waiting, Ready, Terminating, HardTerminating, Terminated]
    );
    assert_eq!(exit_code_of(&terminated), Some(137));
    drone.shutdown().await;
}

#[tokio::test]
async fn drone_reconnects_and_replays_unacked_events_with_the_same_ids() {
    let controller = Controller::start().await;
    controller.script(|s| s.withhold_event_acks = true);
    let drone = start_drone(&controller, Arc::new(MockRuntime::new()), None);
    drone.attached().await;

    let backend = new_id("bk");
    controller.send(Spawn::new("app:1").action(&backend));
    controller.wait_state(&backend, Ready, T).await;
    let first: Vec<String> = controller.script(|s| s.events.iter().map(|e| e.event_id.clone()).collect());
    assert_eq!(first.len(), 4);

    controller.drop_stream();
    controller.wait_for("the replay", T, |c| c.script(|s| s.attaches == 2 && s.events.len() == 8)).await;
    let all: Vec<String> = controller.script(|s| s.events.iter().map(|e| e.event_id.clone()).collect());
    assert_eq!(all[4..], first[..], "the replay repeats the unacked events, in order, with their ids");

    // Acked this time: the next attach replays nothing.
    controller.script(|s| s.withhold_event_acks = false);
    controller.drop_stream();
    controller.wait_for("the second replay", T, |c| c.script(|s| s.attaches == 3 && s.events.len() == 12)).await;
    controller.drop_stream();
    controller.wait_for("the third attach", T, |c| c.script(|s| s.attaches == 4)).await;
    // A window for a replay that must not happen.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(controller.script(|s| s.events.len()), 12, "acknowledged events are not sent again");
    drone.shutdown().await;
}

#[tokio::test]
async fn redelivered_action_is_acked_but_not_executed_twice() {
    let controller = Controller::start().await;
    let runtime: Arc<dyn Runtime> = Arc::new(MockRuntime::new());
    let drone = start_drone(&controller, runtime.clone(), None);
    drone.attached().await;

    let backend = new_id("bk");
    let spawn = Spawn::new("app:1").action(&backend);
    controller.send(spawn.clone());
    controller.wait_state(&backend, Ready, T).await;
    controller.redeliver(spawn.clone());
    controller
        .wait_for("the second ack", T, |c| {
            c.script(|s| s.acked_actions.iter().filter(|a| **a == spawn.action_id).count() == 2)
        })
        .await;
    // A window for a second run that must not happen.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(controller.states_of(&backend), [Loading, Starting, Waiting, Ready], "no second run");
    assert_eq!(runtime.list().await.unwrap().len(), 1);

    // A terminate for a backend the drone never heard of still converges.
    let stranger = new_id("bk");
    controller.send(terminate(&stranger, true));
    let terminated = controller.wait_state(&stranger, Terminated, T).await;
    assert_eq!(reason_of(&terminated), Some(TerminationReason::External));
    drone.shutdown().await;
}

#[tokio::test]
async fn restarted_drone_replays_its_journal_and_reconciles_with_the_runtime() {
    let data_dir = tempfile::tempdir().unwrap();
    let controller = Controller::start().await;
    let runtime = Arc::new(MockRuntime::new());
    let drone = start_drone(&controller, runtime.clone(), Some(data_dir.path().to_path_buf()));
    drone.attached().await;

    let (kept, lost) = (new_id("bk"), new_id("bk"));
    controller.send(Spawn::new("app:1").action(&kept));
    // `lost` ignores SIGTERM, so it is still TERMINATING when the drone goes down.
    let mut slow_to_stop = Spawn::new("app:1").env("HANGAR_MOCK_IGNORE_SIGTERM", "1");
    slow_to_stop.grace = Duration::from_secs(30);
    controller.send(slow_to_stop.action(&lost));
    controller.wait_state(&kept, Ready, T).await;
    controller.wait_state(&lost, Ready, T).await;
    // The last event of `kept` is never acknowledged: the restarted drone must send it again.
    controller.script(|s| s.withhold_event_acks = true);
    controller.send(terminate(&lost, false));
    controller.wait_state(&lost, Terminating, T).await;
    drone.shutdown().await;
    let before_restart = controller.script(|s| s.events.len());

    // While the drone is down: the runtime loses one backend, and gains one nobody asked for.
    runtime.remove(&lost).await.unwrap();
    let orphan = new_id("bk");
    runtime
        .start(BackendSpec { backend_id: orphan.clone(), image: "app:1".into(), ..Default::default() })
        .await
        .unwrap();

    controller.script(|s| s.withhold_event_acks = false);
    let drone = start_drone(&controller, runtime.clone(), Some(data_dir.path().to_path_buf()));
    drone.attached().await;
    let terminated = controller.wait_state(&lost, Terminated, T).await;
    assert_eq!(reason_of(&terminated), Some(TerminationReason::Lost));
    let replayed: Vec<String> =
        controller.script(|s| s.events[before_restart..].iter().map(|e| e.event_id.clone()).collect());
    let terminating_id = controller.events_of(&lost).into_iter().find(|e| state_of(e) == Terminating).unwrap().event_id;
    assert!(replayed.contains(&terminating_id), "the unacknowledged TERMINATING event was replayed");
    assert!(runtime.inspect(&orphan).await.is_err(), "the orphan was removed");
    assert_eq!(controller.states_of(&kept), [Loading, Starting, Waiting, Ready], "READY stays READY");

    // Its task was resumed: it still obeys.
    controller.send(terminate(&kept, false));
    let terminated = controller.wait_state(&kept, Terminated, T).await;
    assert_eq!(exit_code_of(&terminated), Some(143));
    drone.shutdown().await;
}

#[tokio::test]
async fn cut_off_drone_soft_terminates_then_kills_keyed_backend_before_the_lease_expires() {
    let controller = Controller::start().await;
    controller.script(|s| s.renew_answer = Some(true));
    let runtime: Arc<dyn Runtime> = Arc::new(MockRuntime::new());
    let drone = start_drone(&controller, runtime.clone(), None);
    drone.attached().await;

    let backend = new_id("bk");
    let lease = Duration::from_millis(2400);
    let mut spawn = Spawn::new("app:1").keyed("doc-lease").env("HANGAR_MOCK_IGNORE_SIGTERM", "1");
    spawn.lease = lease;
    spawn.grace = Duration::from_secs(30);
    controller.send(spawn.action(&backend));
    controller.wait_state(&backend, Ready, T).await;
    controller.wait_for("a renewal", T, |c| c.script(|s| !s.renewals.is_empty())).await;

    // Cut off from every controller.
    controller.script(|s| s.refuse_attach = true);
    controller.drop_stream();
    let last_renewal = controller.script(|s| *s.renewals.last().unwrap());
    let lease_left = (last_renewal + lease).saturating_duration_since(Instant::now());
    eventually(lease_left, "the backend to be killed before its lease runs out", async || {
        match runtime.inspect(&backend).await {
            Ok(info) if info.state != hangar_executor::runtime::BackendState::Exited => Err(info),
            _gone_or_exited => Ok(()),
        }
    })
    .await;
    let killed_after = last_renewal.elapsed();
    println!("cut off: killed {killed_after:?} after the last renewal (lease {lease:?})");
    assert!(killed_after < lease);

    controller.script(|s| s.refuse_attach = false);
    let terminated = controller.wait_state(&backend, Terminated, T).await;
    assert_eq!(
        controller.states_of(&backend),
        [Loading, Starting, Waiting, Ready, Terminating, HardTerminating, Terminated]
    );
    assert_eq!(reason_of(&terminated), Some(TerminationReason::KeyExpired));
    drone.shutdown().await;
}

/// A Spawn that waited on its way (a drone reconnecting, say) spent part of its key's lease: the
/// drone counts its deadlines from the lease's start the controller tells, not from the arrival,
/// so a drone cut off from then on stops the backend before the controller's lease runs out.
#[tokio::test]
async fn a_spawn_that_spent_part_of_its_lease_on_the_way_is_killed_before_the_lease_runs_out() {
    let controller = Controller::start().await;
    let runtime: Arc<dyn Runtime> = Arc::new(MockRuntime::new());
    let drone = start_drone(&controller, runtime.clone(), None);
    drone.attached().await;

    let backend = new_id("bk");
    let mut spawn = Spawn::new("app:1").keyed("doc-late").env("HANGAR_MOCK_IGNORE_SIGTERM", "1");
    spawn.lease = Duration::from_millis(4000);
    // 1.6 s of the 4 s lease spent: the controller's expiry is 2.4 s after the send. Counted
    // from the arrival, the kill (three quarters of a lease) would come at 3 s, after it.
    let remaining = Duration::from_millis(2400);
    spawn.remaining = Some(remaining);
    spawn.grace = Duration::from_secs(30);
    let sent = Instant::now();
    // No renewal is ever answered.
    controller.send(spawn.action(&backend));
    controller.wait_state(&backend, HardTerminating, T).await;
    let killed_after = sent.elapsed();
    println!("killed {killed_after:?} after the send, with {remaining:?} of the lease left then");
    assert!(killed_after < remaining, "killed {killed_after:?} after the send, past the lease ({remaining:?} left)");
    let terminated = controller.wait_state(&backend, Terminated, T).await;
    assert_eq!(reason_of(&terminated), Some(TerminationReason::KeyExpired));
    drone.shutdown().await;
}

/// A Spawn with less than half its lease left (it waited long on its way) is not started at once,
/// which would run it past the controller's expiry or end it at the soft deadline right away: it
/// waits, started by nothing, for its key's first renewal, and starts once that is confirmed.
#[tokio::test]
async fn a_spawn_late_in_its_lease_starts_only_once_its_key_is_renewed() {
    let controller = Controller::start().await;
    let runtime: Arc<dyn Runtime> = Arc::new(MockRuntime::new());
    let drone = start_drone(&controller, runtime.clone(), None);
    drone.attached().await;

    let backend = new_id("bk");
    let mut spawn = Spawn::new("app:1").keyed("doc-late-renewed");
    spawn.lease = Duration::from_millis(6000);
    spawn.remaining = Some(Duration::from_millis(1000));
    controller.send(spawn.action(&backend));
    controller.wait_for("the key's first renewal", T, |c| c.script(|s| !s.renewals.is_empty())).await;
    // Unanswered so far: nothing started.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(controller.states_of(&backend), Vec::<BackendState>::new(), "started before its key was renewed");
    assert!(runtime.inspect(&backend).await.is_err(), "the runtime was asked to start it");

    // The next round is answered: it starts, and keeps running on the renewed lease.
    controller.script(|s| s.renew_answer = Some(true));
    controller.wait_state(&backend, Ready, T).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(controller.states_of(&backend), [Loading, Starting, Waiting, Ready]);
    drone.shutdown().await;
}

/// The same late Spawn whose key renewal is refused (the key went to another holder), or never
/// answered within half a lease, ends KEY_EXPIRED without ever being started.
#[tokio::test]
async fn a_spawn_late_in_its_lease_whose_key_is_not_renewed_ends_key_expired_unstarted() {
    let controller = Controller::start().await;
    let runtime: Arc<dyn Runtime> = Arc::new(MockRuntime::new());
    let drone = start_drone(&controller, runtime.clone(), None);
    drone.attached().await;

    for (name, answer) in [("refused", Some(false)), ("unanswered", None)] {
        controller.script(|s| s.renew_answer = answer);
        let backend = new_id("bk");
        let mut spawn = Spawn::new("app:1").keyed(&format!("doc-late-{name}"));
        spawn.lease = Duration::from_millis(2000);
        spawn.remaining = Some(Duration::ZERO);
        controller.send(spawn.action(&backend));
        let terminated = controller.wait_state(&backend, Terminated, T).await;
        assert_eq!(controller.states_of(&backend), [Terminated], "{name}");
        assert_eq!(reason_of(&terminated), Some(TerminationReason::KeyExpired), "{name}");
        assert!(runtime.inspect(&backend).await.is_err(), "{name}: the runtime was asked to start it");
    }
    drone.shutdown().await;
}

/// A store outage: the controller answers every renewal deferred. The backend outlives its lease
/// by the grace, then stops as a cut-off one would (docs/design/backends-and-leases.md#store-outages).
#[tokio::test]
async fn deferred_renewals_keep_a_keyed_backend_for_the_grace_and_no_longer() {
    let controller = Controller::start().await;
    controller.script(|s| s.renew_answer = Some(true));
    let runtime: Arc<dyn Runtime> = Arc::new(MockRuntime::new());
    let drone = start_drone(&controller, runtime.clone(), None);
    drone.attached().await;

    let backend = new_id("bk");
    let lease = Duration::from_millis(3000);
    let grace = Duration::from_millis(3000);
    let mut spawn = Spawn::new("app:1").keyed("doc-outage");
    spawn.lease = lease;
    controller.send(spawn.action(&backend));
    controller.wait_state(&backend, Ready, T).await;
    controller.wait_for("a renewal", T, |c| c.script(|s| !s.renewals.is_empty())).await;
    // The store goes: the next stream's controller defers (a drone learns the grace at attach).
    controller.script(|s| {
        s.renew_answer = None;
        s.defer_renewals = Some(grace);
    });
    controller.drop_stream();
    let outage = Instant::now();
    let last_confirmed = controller.script(|s| *s.renewals.last().unwrap());
    // Past its lease and its soft deadline, still serving: the deferrals kept it.
    tokio::time::sleep((last_confirmed + lease + Duration::from_millis(300)).saturating_duration_since(Instant::now()))
        .await;
    assert!(controller.states_of(&backend).ends_with(&[Ready]), "{:?}", controller.states_of(&backend));
    controller.wait_state(&backend, Terminating, T).await;
    let stopped_after = last_confirmed.elapsed();
    println!("deferred from {:?}: stopped {stopped_after:?} after the last confirmed renewal", outage.elapsed());
    assert!(stopped_after >= lease / 2 + grace - Duration::from_millis(500), "stopped after {stopped_after:?}");
    assert!(stopped_after < lease + grace, "stopped after {stopped_after:?}: past the store's hold");
    let terminated = controller.wait_state(&backend, Terminated, T).await;
    assert_eq!(reason_of(&terminated), Some(TerminationReason::KeyExpired));
    drone.shutdown().await;
}

/// A controller that answers no renewal at all (paused, wedged) is left for another before the
/// keys' soft deadline, and the keys are renewed on the new stream at once.
#[tokio::test]
async fn a_drone_leaves_a_controller_that_answers_no_renewal_and_renews_at_once_on_the_next_stream() {
    let controller = Controller::start().await;
    controller.script(|s| s.renew_answer = Some(true));
    let drone = start_drone(&controller, Arc::new(MockRuntime::new()), None);
    drone.attached().await;
    let backend = new_id("bk");
    let lease = Duration::from_secs(12);
    let mut spawn = Spawn::new("app:1").keyed("doc-stuck");
    spawn.lease = lease;
    controller.send(spawn.action(&backend));
    controller.wait_state(&backend, Ready, T).await;
    controller.wait_for("a renewal", T, |c| c.script(|s| !s.renewals.is_empty())).await;
    let attaches = controller.script(|s| {
        s.renew_answer = None;
        s.answer_on_next_attach = true;
        s.attaches
    });
    // The next round (a third of the lease after the first) goes unanswered; a tenth of the lease
    // later (1.2 s) the drone gives the stream up and attaches again, renewing at once.
    controller.wait_for("a reattach", lease, |c| c.script(|s| s.attaches > attaches)).await;
    let reattached = controller.script(|s| *s.attached_at.last().unwrap());
    controller
        .wait_for("a renewal on the new stream", Duration::from_secs(2), |c| {
            c.script(|s| s.renewals.last().is_some_and(|at| *at >= reattached))
        })
        .await;
    let renewed_after = controller.script(|s| *s.renewals.last().unwrap()) - reattached;
    assert!(renewed_after < Duration::from_secs(1), "renewed {renewed_after:?} after the attach, not at once");
    // Nothing ended: the keys were renewed in time on the new stream.
    tokio::time::sleep(lease / 2).await;
    assert!(controller.states_of(&backend).ends_with(&[Ready]), "{:?}", controller.states_of(&backend));
    drone.shutdown().await;
}

#[tokio::test]
async fn refused_renewal_terminates_with_key_expired() {
    let controller = Controller::start().await;
    controller.script(|s| s.renew_answer = Some(false));
    let drone = start_drone(&controller, Arc::new(MockRuntime::new()), None);
    drone.attached().await;

    let backend = new_id("bk");
    let mut spawn = Spawn::new("app:1").keyed("doc-taken");
    spawn.lease = Duration::from_millis(1500);
    controller.send(spawn.action(&backend));
    let terminated = controller.wait_state(&backend, Terminated, T).await;
    assert_eq!(reason_of(&terminated), Some(TerminationReason::KeyExpired));
    assert!(controller.states_of(&backend).contains(&Terminating));
    assert!(message_of(&terminated).contains("refused to renew the key lease"), "{terminated:?}");
    drone.shutdown().await;
}

#[tokio::test]
async fn keys_are_renewed_in_one_batch_and_one_refused_key_ends_only_its_backend() {
    let controller = Controller::start().await;
    controller.script(|s| s.renew_answer = Some(true));
    let drone = start_drone(&controller, Arc::new(MockRuntime::new()), None);
    drone.attached().await;

    let lease = Duration::from_millis(1500);
    let backends: Vec<String> = (0..5).map(|_| new_id("bk")).collect();
    for (i, backend) in backends.iter().enumerate() {
        let mut spawn = Spawn::new("app:1").keyed(&format!("doc-batch-{i}"));
        spawn.lease = lease;
        controller.send(spawn.action(backend));
    }
    for backend in &backends {
        controller.wait_state(backend, Ready, T).await;
    }
    controller.wait_for("one renewal carrying all five keys", T, |c| c.script(|s| s.renewal_sizes.contains(&5))).await;
    // Several leases pass: every key stays confirmed, in batches, never one message per key.
    tokio::time::sleep(lease * 2).await;
    for backend in &backends {
        assert_eq!(controller.states_of(backend).last(), Some(&Ready), "{backend} still READY");
    }
    assert!(controller.script(|s| s.renewal_sizes.iter().all(|n| *n > 1)), "batched renewals only");

    controller.script(|s| s.renew_answer = Some(false));
    let terminated = controller.wait_state(&backends[0], Terminated, T).await;
    assert_eq!(reason_of(&terminated), Some(TerminationReason::KeyExpired));
    drone.shutdown().await;
}

#[tokio::test]
async fn an_older_controller_gets_one_renew_key_per_key_and_a_refusal_still_ends_the_backend() {
    let controller = Controller::start().await;
    controller.script(|s| {
        s.single_renewals = true;
        s.renew_answer = Some(true);
    });
    let drone = start_drone(&controller, Arc::new(MockRuntime::new()), None);
    drone.attached().await;

    let lease = Duration::from_millis(1500);
    let (a, b) = (new_id("bk"), new_id("bk"));
    for (backend, name) in [(&a, "doc-old-a"), (&b, "doc-old-b")] {
        let mut spawn = Spawn::new("app:1").keyed(name);
        spawn.lease = lease;
        controller.send(spawn.action(backend));
        controller.wait_state(backend, Ready, T).await;
    }
    // Renewed one key per message for more than a lease: both stay READY.
    tokio::time::sleep(lease).await;
    assert_eq!(controller.states_of(&a).last(), Some(&Ready));
    assert_eq!(controller.states_of(&b).last(), Some(&Ready));
    assert!(controller.script(|s| !s.renewal_sizes.is_empty() && s.renewal_sizes.iter().all(|n| *n == 1)));

    controller.script(|s| s.renew_answer = Some(false));
    let terminated = controller.wait_state(&a, Terminated, T).await;
    assert_eq!(reason_of(&terminated), Some(TerminationReason::KeyExpired));
    drone.shutdown().await;
}

#[tokio::test]
async fn a_failed_start_carries_the_runtimes_words_with_the_backends_secrets_masked() {
    let controller = Controller::start().await;
    let drone = start_drone(&controller, Arc::new(MockRuntime::new()), None);
    drone.attached().await;

    let missing = new_id("bk");
    controller.send(Spawn::new("registry.invalid/missing:1").action(&missing));
    let terminated = controller.wait_state(&missing, Terminated, T).await;
    assert_eq!(reason_of(&terminated), Some(TerminationReason::ImagePullFailed));
    assert_eq!(message_of(&terminated), "image registry.invalid/missing:1 not found: not present");

    // A runtime's error may quote the backend's configuration; its values never leave. (The
    // mock fails with the text of an env variable, so here the whole text is one.)
    let failing = new_id("bk");
    let spawn = Spawn::new("app:1")
        .env("DATABASE_PASSWORD", "pw-0123456789")
        .env("HANGAR_MOCK_START_FAIL", "cannot log in with pw-0123456789\nretry later");
    controller.send(spawn.action(&failing));
    let terminated = controller.wait_state(&failing, Terminated, T).await;
    assert_eq!(reason_of(&terminated), Some(TerminationReason::InternalError));
    assert_eq!(message_of(&terminated), format!("backend {failing} failed to start: ***"));

    let exits = new_id("bk");
    controller.send(
        Spawn::new("app:1").env("HANGAR_MOCK_EXIT_AFTER_MS", "300").env("HANGAR_MOCK_EXIT_CODE", "3").action(&exits),
    );
    let terminated = controller.wait_state(&exits, Terminated, T).await;
    assert_eq!(message_of(&terminated), "exited with code 3");
    let ready = controller.wait_state(&exits, Ready, T).await;
    assert_eq!(message_of(&ready), "", "a state nobody needs to explain has no message");

    let unknown = new_id("bk");
    controller.send(terminate(&unknown, false));
    let terminated = controller.wait_state(&unknown, Terminated, T).await;
    assert!(message_of(&terminated).contains("does not run the backend"), "{terminated:?}");
    drone.shutdown().await;
}
