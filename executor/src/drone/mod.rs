//! The drone agent: one long-lived `DroneService.Attach` stream to a controller. It says Hello,
//! heartbeats with the host's real resources, runs the backends the controller asks for (see
//! docs/design/drone-link.md), and when the stream breaks it reconnects with exponential
//! backoff, moving on to the next controller in its list. Events and actions survive reconnects
//! and restarts through the journal in the drone's data dir.
//!
//! - `attach`: what the drone does on one stream (moving between controllers is
//!   [`hangar_agent::attach::attach_forever`]'s, shared with the proxy);
//! - `fleet`: the drone's backends; [`backend`]: one backend's state machine and task;
//! - `outbox`: what backend tasks send to the controller, shared by the fleet and the stream;
//! - [`journal`], [`lease`]: the durable record, and the key lease a backend must keep renewing;
//! - `renewer`: every live key renewed in one batch per interval, on the stream's priority lane;
//! - [`instance`]: the drone's instance identity, which an in-process runtime labels its backends with.

mod attach;
pub mod backend;
pub mod command;
mod fleet;
pub mod instance;
pub mod journal;
pub mod lease;
mod outbox;
mod readiness;
mod renewer;

/// How much of a key's lease its Spawn spent on the way: the drone counts the key from its start.
pub use fleet::lease_spent;
pub use hangar_agent::Backoff;
pub use journal::{Journal, JournalError};
/// How the drone batches key renewals: what a simulation of it (the benchmarks) must match.
pub use renewer::{FRESH_DELAY as RENEW_FRESH_DELAY, MAX_BATCH as RENEW_MAX_BATCH, renew_at_once};

use crate::runtime::Runtime;
use attach::DroneAttach;
use fleet::Fleet;
use hangar_agent::admin::{AttachedTo, Check, Readiness};
use hangar_client::Credentials;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct DroneConfig {
    /// Controller URLs (`http://HOST:PORT` or `https://HOST:PORT`), tried in turn.
    pub controllers: Vec<String>,
    /// Token and TLS towards the controllers.
    pub credentials: Credentials,
    pub name: String,
    pub cluster: String,
    pub pool: String,
    pub labels: BTreeMap<String, String>,
    pub backend_capacity: u32,
    /// The runtime backends run on: an in-process one, or an executor over its socket
    /// ([`crate::socket::client::ExecutorClient`]). `None` for a drone that only registers.
    pub runtime: Option<Arc<dyn Runtime>>,
    /// Used until the controller's Welcome names its own interval.
    pub heartbeat_interval: Duration,
    /// Delays between reconnects; the connect timeout and keep-alives are
    /// [`hangar_agent::controller_endpoint`]'s.
    pub backoff: Backoff,
    /// Where the journal lives (`journal.sqlite`). `None` keeps it in memory: the drone then
    /// forgets its backends and unacknowledged events when its process ends.
    pub data_dir: Option<PathBuf>,
}

impl DroneConfig {
    pub fn new(controllers: Vec<String>, name: impl Into<String>) -> Self {
        DroneConfig {
            controllers,
            credentials: Credentials::default(),
            name: name.into(),
            cluster: "default".into(),
            pool: "default".into(),
            labels: BTreeMap::new(),
            backend_capacity: 100,
            runtime: None,
            heartbeat_interval: Duration::from_secs(5),
            backoff: Backoff::default(),
            data_dir: None,
        }
    }
}

/// Whether the drone is attached to a controller right now, and to which; for callers and tests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AttachState {
    #[default]
    Connecting,
    Attached {
        node_id: String,
        controller: String,
    },
}

/// A running drone; stop it with [`DroneHandle::shutdown`].
pub struct DroneHandle {
    state: watch::Receiver<AttachState>,
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
    pub fn state(&self) -> watch::Receiver<AttachState> {
        self.state.clone()
    }

    /// Waits until the drone is attached and returns its node id.
    pub async fn attached(&self) -> String {
        let mut state = self.state.clone();
        loop {
            if let AttachState::Attached { node_id, .. } = &*state.borrow_and_update() {
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

/// How long `/readyz` waits for the runtime's status before calling it unreachable.
const RUNTIME_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A drone's readiness (`/readyz`): attached to a controller (named), and its runtime (the
/// executor behind the socket, or the in-process one) answering with every condition true.
pub fn readiness(state: watch::Receiver<AttachState>, runtime: Option<Arc<dyn Runtime>>) -> Readiness {
    Readiness::new(move || {
        let attached = match &*state.borrow() {
            AttachState::Attached { node_id, controller } => {
                Some(AttachedTo { controller: controller.clone(), node_id: node_id.clone() })
            }
            AttachState::Connecting => None,
        };
        let runtime = runtime.clone();
        async move { vec![AttachedTo::check("drone", attached.as_ref()), runtime_check(runtime.as_deref()).await] }
    })
}

async fn runtime_check(runtime: Option<&dyn Runtime>) -> Check {
    let Some(runtime) = runtime else {
        return Check::ok("runtime", "none: this drone registers but runs no backends");
    };
    let kind = runtime.kind().as_str();
    match tokio::time::timeout(RUNTIME_CHECK_TIMEOUT, runtime.status()).await {
        Err(_) => Check::failed("runtime", format!("{kind} runtime: no answer within {RUNTIME_CHECK_TIMEOUT:?}")),
        Ok(conditions) => match conditions.iter().find(|c| !c.status) {
            Some(c) => {
                Check::failed("runtime", format!("{kind} runtime: {} is false: {} {}", c.kind, c.reason, c.message))
            }
            None => Check::ok("runtime", format!("{kind} runtime answers")),
        },
    }
}

pub fn spawn(config: DroneConfig) -> DroneHandle {
    let (state_tx, state) = watch::channel(AttachState::Connecting);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(config, state_tx, shutdown.clone()));
    DroneHandle { state, shutdown, task }
}

async fn run(
    config: DroneConfig,
    state: watch::Sender<AttachState>,
    shutdown: CancellationToken,
) -> Result<(), DroneError> {
    let journal = Journal::open(config.data_dir.as_deref()).await?;
    // Every call to the runtime is counted and timed (`hangar_executor_calls_total`).
    let runtime = config.runtime.clone().map(crate::metrics::MeteredRuntime::wrap);
    // Backend tasks get their own token: they end with the drone, not with one stream.
    let fleet = Fleet::start(journal.clone(), runtime, shutdown.child_token()).await?;
    let mut attach = DroneAttach::new(&config, &fleet, &state);
    let backoff = config.backoff.clone();
    let result =
        hangar_agent::attach::attach_forever(&config.controllers, &config.credentials, backoff, &mut attach, &shutdown)
            .await
            .map_err(DroneError::Refused);
    shutdown.cancel();
    fleet.stopped().await;
    journal.close().await;
    result
}
