//! The drone agent: one long-lived `DroneService.Attach` stream to a controller. It says Hello,
//! heartbeats with the host's real resources, runs the backends the controller asks for (see
//! docs/design/drone-link.md), and when the stream breaks it reconnects with exponential
//! backoff, moving on to the next controller in its list. Events and actions survive reconnects
//! and restarts through the journal in the drone's data dir.

pub mod backend;
mod backoff;
pub mod command;
mod fleet;
mod host;
pub mod journal;
pub mod lease;
mod link;
mod readiness;

pub use backoff::Backoff;
pub use host::HostResources;
pub use journal::{Journal, JournalError};

use crate::runtime::Runtime;
use anyhow::Context;
use fleet::Fleet;
use hangar::domain::duration_from_proto;
use hangar::v1::{self, drone_service_client::DroneServiceClient};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

#[derive(Clone)]
pub struct DroneConfig {
    /// Controller URLs (`http://HOST:PORT`), tried in turn.
    pub controllers: Vec<String>,
    pub name: String,
    pub cluster: String,
    pub pool: String,
    pub labels: BTreeMap<String, String>,
    pub backend_capacity: u32,
    /// The runtime backends run on: an in-process one, or an executor over its socket
    /// ([`crate::client::ExecutorClient`]). `None` for a drone that only registers.
    pub runtime: Option<Arc<dyn Runtime>>,
    /// Used until the controller's Welcome names its own interval.
    pub heartbeat_interval: Duration,
    pub connect_timeout: Duration,
    pub backoff: Backoff,
    /// Where the journal lives (`journal.sqlite`). `None` keeps it in memory: the drone then
    /// forgets its backends and unacknowledged events when its process ends.
    pub data_dir: Option<PathBuf>,
}

impl DroneConfig {
    pub fn new(controllers: Vec<String>, name: impl Into<String>) -> Self {
        DroneConfig {
            controllers,
            name: name.into(),
            cluster: "default".into(),
            pool: "default".into(),
            labels: BTreeMap::new(),
            backend_capacity: 100,
            runtime: None,
            heartbeat_interval: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            backoff: Backoff::default(),
            data_dir: None,
        }
    }
}

/// What the drone's link currently looks like, for callers and tests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LinkState {
    #[default]
    Connecting,
    Attached {
        node_id: String,
        controller: String,
    },
}

/// A running drone; stop it with [`DroneHandle::shutdown`].
pub struct DroneHandle {
    state: watch::Receiver<LinkState>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), DroneError>>,
}

/// Why a drone gave up. Transient failures (an unreachable controller, a dropped stream) are
/// retried forever; only a refusal that retrying cannot fix ends the drone.
#[derive(Debug, thiserror::Error)]
pub enum DroneError {
    #[error("the controller refused this drone: {0}")]
    Refused(String),
    #[error("the drone's journal failed: {0}")]
    Journal(#[from] JournalError),
}

impl DroneHandle {
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// Waits until the drone is attached and returns its node id.
    pub async fn attached(&self) -> String {
        let mut state = self.state.clone();
        loop {
            if let LinkState::Attached { node_id, .. } = &*state.borrow_and_update() {
                return node_id.clone();
            }
            if state.changed().await.is_err() {
                return String::new();
            }
        }
    }

    /// Resolves when the drone gives up on its own (see [`DroneError`]).
    pub async fn finished(&mut self) -> Result<(), DroneError> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(join) => Err(DroneError::Refused(format!("drone task failed: {join}"))),
        }
    }

    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

pub fn spawn(config: DroneConfig) -> DroneHandle {
    let (state_tx, state) = watch::channel(LinkState::Connecting);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(config, state_tx, shutdown.clone()));
    DroneHandle { state, shutdown, task }
}

async fn run(
    config: DroneConfig,
    state: watch::Sender<LinkState>,
    shutdown: CancellationToken,
) -> Result<(), DroneError> {
    let journal = Journal::open(config.data_dir.as_deref()).await?;
    // Backend tasks get their own token: they end with the drone, not with one stream.
    let fleet = Fleet::start(journal.clone(), config.runtime.clone(), shutdown.child_token()).await?;
    let result = attach_forever(&config, &fleet, &state, &shutdown).await;
    shutdown.cancel();
    fleet.stopped().await;
    journal.close().await;
    result
}

async fn attach_forever(
    config: &DroneConfig,
    fleet: &Arc<Fleet>,
    state: &watch::Sender<LinkState>,
    shutdown: &CancellationToken,
) -> Result<(), DroneError> {
    let mut backoff = config.backoff.clone();
    let mut host = HostResources::new();
    let mut next = 0;
    loop {
        let controller = &config.controllers[next % config.controllers.len()];
        next += 1;
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            outcome = session(config, fleet, controller, &mut host, state, &mut backoff) => outcome,
        };
        state.send_replace(LinkState::Connecting);
        if let Err(err) = &outcome
            && let Some(status) = err.downcast_ref::<tonic::Status>()
            && status.code() == tonic::Code::InvalidArgument
        {
            return Err(DroneError::Refused(status.message().to_string()));
        }
        let delay = backoff.next_delay();
        match outcome {
            Ok(()) => tracing::warn!(%controller, retry_in = ?delay, "controller closed the stream; reconnecting"),
            Err(err) => tracing::warn!(%controller, retry_in = ?delay, "drone link failed: {err:#}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One attachment, from connect to the end of the stream.
async fn session(
    config: &DroneConfig,
    fleet: &Arc<Fleet>,
    controller: &str,
    host: &mut HostResources,
    state: &watch::Sender<LinkState>,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    use v1::drone_attach_request::Message;
    use v1::drone_attach_response::Message as Reply;

    let channel = Endpoint::from_shared(controller.to_string())
        .with_context(|| format!("invalid controller URL {controller:?}"))?
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach controller {controller}"))?;
    let mut client = DroneServiceClient::new(channel);

    let (tx, rx) = mpsc::channel(64);
    let hello = v1::DroneHello {
        name: config.name.clone(),
        cluster: config.cluster.clone(),
        pool: config.pool.clone(),
        version: hangar::VERSION.to_string(),
        labels: config.labels.clone().into_iter().collect(),
        backend_capacity: config.backend_capacity,
        resources: Some(host.sample().into()),
        runtime: config.runtime.as_ref().map_or("none", |r| r.kind().as_str()).to_string(),
    };
    tx.send(v1::DroneAttachRequest { message: Some(Message::Hello(hello)) }).await?;
    // The status itself is the error, so that `run` can tell a refusal from a transient failure.
    let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();

    let welcome = match inbound.message().await.context("no welcome")? {
        Some(v1::DroneAttachResponse { message: Some(Reply::Welcome(welcome)) }) => welcome,
        other => anyhow::bail!("expected a welcome, got {other:?}"),
    };
    let interval =
        welcome.heartbeat_interval.as_ref().and_then(duration_from_proto).unwrap_or(config.heartbeat_interval);
    tracing::info!(node_id = %welcome.node_id, %controller, "drone attached");
    state.send_replace(LinkState::Attached { node_id: welcome.node_id.clone(), controller: controller.to_string() });
    backoff.reset();

    let generation = fleet.shared.link.attach(tx.clone());
    let result = attached(fleet, &tx, &mut inbound, interval, host, generation).await;
    fleet.shared.link.detach(generation);
    result
}

/// Events sent per journal read; keeps one replay from holding a huge batch in memory.
const EVENT_BATCH: i64 = 256;

/// The attached part of a session: heartbeats, journaled events out (all unacknowledged ones
/// first, in order), actions, acks and renewal answers in.
async fn attached(
    fleet: &Arc<Fleet>,
    tx: &mpsc::Sender<v1::DroneAttachRequest>,
    inbound: &mut tonic::Streaming<v1::DroneAttachResponse>,
    interval: Duration,
    host: &mut HostResources,
    generation: u64,
) -> anyhow::Result<()> {
    use v1::drone_attach_request::Message;
    use v1::drone_attach_response::Message as Reply;

    let send = |message: Message| async move {
        tx.send(v1::DroneAttachRequest { message: Some(message) })
            .await
            .map_err(|_| anyhow::anyhow!("the stream to the controller closed"))
    };
    let journal = &fleet.shared.journal;
    let mut written = fleet.shared.written.subscribe();
    // Every attach starts from the beginning of the journal: whatever is still there was not
    // acknowledged, whichever controller it was sent to.
    let mut cursor = 0;
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        written.borrow_and_update();
        loop {
            let batch = journal.events_after(cursor, EVENT_BATCH).await?;
            let full = batch.len() as i64 == EVENT_BATCH;
            for (seq, event) in batch {
                send(Message::BackendEvent(event)).await?;
                cursor = seq;
            }
            if !full {
                break;
            }
        }
        tokio::select! {
            _ = ticker.tick() => {
                let heartbeat = v1::DroneHeartbeat {
                    local_time: Some(hangar::domain::timestamp_to_proto(chrono::Utc::now())),
                    resources: Some(host.sample().into()),
                    backend_count: fleet.live_count(),
                };
                send(Message::Heartbeat(heartbeat)).await?;
            }
            _ = written.changed() => {}
            message = inbound.message() => match message {
                Ok(Some(v1::DroneAttachResponse { message: Some(reply) })) => match reply {
                    Reply::Action(action) => {
                        let action_id = action.action_id.clone();
                        // Journaled (and started) before the ack, so a crash cannot lose it.
                        fleet.handle_action(action).await?;
                        send(Message::AckAction(v1::AckAction { action_id })).await?;
                    }
                    Reply::AckEvent(ack) => journal.ack_event(&ack.event_id).await?,
                    Reply::RenewKeyResponse(answer) => fleet.renewal_answer(generation, answer),
                    Reply::Welcome(_) => tracing::warn!("unexpected second welcome; ignoring it"),
                },
                Ok(Some(_)) => tracing::debug!("empty message from the controller"),
                Ok(None) => return Ok(()),
                Err(status) => return Err(anyhow::anyhow!("{}: {}", status.code(), status.message())),
            }
        }
    }
}
