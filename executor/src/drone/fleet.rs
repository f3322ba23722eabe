//! The backends of one drone: accepting actions, one task per backend, the runtime's event
//! stream fanned out to those tasks, and reconciliation with the runtime after a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hangar::domain::{BackendState, TerminationKind, TerminationReason, duration_from_proto};
use hangar::v1;
use hangar_agent::telemetry::{self, SPAN_TARGET};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::backend::{BackendTask, Command, DEFAULT_LEASE_DURATION, Lifecycle, Resume};
use super::journal::{Journal, JournalError, JournaledBackend};
use super::lease::Confirmation;
use super::outbox::Outbox;
use super::renewer::Confirmed;
use crate::runtime::{BackendState as RuntimeState, EventKind, Runtime, RuntimeError};

pub struct Fleet {
    pub outbox: Arc<Outbox>,
    runtime: Option<Arc<dyn Runtime>>,
    backends: Mutex<HashMap<String, mpsc::Sender<Command>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Fleet {
    /// Starts the runtime event fan-out, then resumes what the journal says this drone runs,
    /// reconciled with what the runtime actually runs.
    pub async fn start(
        journal: Journal,
        runtime: Option<Arc<dyn Runtime>>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Fleet>, JournalError> {
        let fleet = Arc::new(Fleet {
            outbox: Arc::new(Outbox::new(journal)),
            runtime,
            backends: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            shutdown,
        });
        let this = fleet.clone();
        fleet.tasks.spawn(async move { this.outbox.keys.run(&this.outbox.stream, this.shutdown.clone()).await });
        if let Some(runtime) = fleet.runtime.clone() {
            // Subscribe before resuming, so no exit between the two goes unseen.
            let events = runtime.events().await;
            let this = fleet.clone();
            fleet.tasks.spawn(async move { this.fan_out_runtime_events(runtime, events).await });
        }
        fleet.reconcile().await?;
        Ok(fleet)
    }

    /// Waits for every task to stop (after the shutdown token was cancelled).
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Backends that are not yet TERMINATED.
    pub fn live_count(&self) -> u32 {
        self.backends.lock().unwrap().values().filter(|tx| !tx.is_closed()).count() as u32
    }

    fn command(&self, backend_id: &str) -> Option<mpsc::Sender<Command>> {
        self.backends.lock().unwrap().get(backend_id).filter(|tx| !tx.is_closed()).cloned()
    }

    fn broadcast(&self, make: impl Fn() -> Command) {
        let senders: Vec<_> = self.backends.lock().unwrap().values().cloned().collect();
        for tx in senders {
            let _ = tx.try_send(make());
        }
    }

    /// Applies one action; once this returns Ok the action is journaled and may be acked.
    pub async fn handle_action(self: &Arc<Self>, action: v1::DroneAction) -> Result<(), JournalError> {
        use v1::drone_action::Action;
        let journal = &self.outbox.journal;
        match action.action {
            Some(Action::Spawn(spawn)) => {
                // Joins the trace of the Connect that placed the backend, when it sent one.
                let span = tracing::info_span!(
                    target: SPAN_TARGET,
                    "drone.spawn",
                    otel.name = "drone spawn",
                    hangar.backend_id = %action.backend_id,
                    hangar.action_id = %action.action_id,
                );
                telemetry::set_parent(&span, &action.trace_context.into_iter().collect());
                self.accept_spawn(action.action_id, action.backend_id, spawn).instrument(span).await?;
            }
            Some(Action::Terminate(terminate)) => {
                let kind = TerminationKind::from_proto(terminate.kind).unwrap_or(TerminationKind::Soft);
                let reason = TerminationReason::from_proto(terminate.reason).unwrap_or(TerminationReason::External);
                if !journal.accept_terminate(&action.action_id, &action.backend_id, kind, reason).await? {
                    tracing::debug!(action_id = %action.action_id, "redelivered terminate; already handled");
                    return Ok(());
                }
                match self.command(&action.backend_id) {
                    Some(tx) => {
                        // The task may end between the lookup and the send; then it is TERMINATED.
                        let _ = tx.send(Command::Terminate { kind, reason }).await;
                    }
                    None => {
                        // Unknown or already gone: still report TERMINATED so the controller's
                        // view converges (a repeat changes nothing there).
                        let mut lifecycle =
                            Lifecycle::new(action.backend_id.clone(), BackendState::Scheduled, String::new());
                        let message = "this drone does not run the backend: it never arrived here, or had ended";
                        let event = lifecycle
                            .transition(BackendState::Terminated, Some((Some(kind), reason)), None, message.into())
                            .expect("SCHEDULED → TERMINATED is forward");
                        self.outbox.emit(event, BackendState::Terminated, &self.shutdown).await;
                    }
                }
            }
            None => tracing::warn!(action_id = %action.action_id, "action without a payload; acknowledging it"),
        }
        Ok(())
    }

    /// A spawn action: journaled, then its backend task started (unless it is a repeat).
    async fn accept_spawn(
        self: &Arc<Self>,
        action_id: String,
        backend_id: String,
        spawn: v1::SpawnBackend,
    ) -> Result<(), JournalError> {
        // The lease started at Connect, and the Spawn may have waited since: what the controller
        // says is left counts (an older controller says nothing: a whole lease from now). The
        // journal keeps its start as the key's last renewal, for a restart to count from.
        let spent = lease_spent(&spawn);
        let lease_started = chrono::Utc::now() - chrono::Duration::from_std(spent).unwrap_or_default();
        if !self.outbox.journal.accept_spawn(&action_id, &backend_id, &spawn, lease_started).await? {
            tracing::debug!(%action_id, "redelivered spawn; already handled");
            return Ok(());
        }
        if self.command(&backend_id).is_some() {
            return Ok(());
        }
        // From here to READY (or the end, if it never gets there): the image, the runtime's
        // start, the readiness probe and the READY report.
        let startup = tracing::info_span!(target: SPAN_TARGET, "drone.start", otel.name = "drone start backend", hangar.backend_id = %backend_id);
        let lifecycle = Lifecycle::new(backend_id.clone(), BackendState::Scheduled, String::new());
        let lease_confirmed = Confirmation::ago(spent, Instant::now());
        self.launch(backend_id, spawn, lifecycle, Resume::FromScratch, None, lease_confirmed, startup);
        Ok(())
    }

    /// Dispatches a batch renewal's answers to their backends and journals the renewed keys.
    pub async fn renewal_answers(&self, generation: u64, answer: v1::RenewKeysResponse) {
        let confirmed = self.outbox.keys.batch_answered(generation, answer);
        self.journal_renewals(confirmed).await;
    }

    /// The same for one key's answer (from a controller that answers keys one by one).
    pub async fn renewal_answer(&self, generation: u64, answer: v1::RenewKeyResponse) {
        let confirmed = self.outbox.keys.key_answered(generation, answer);
        self.journal_renewals(confirmed).await;
    }

    /// A restarted drone counts each key's lease from its last journaled renewal.
    async fn journal_renewals(&self, confirmed: Confirmed) {
        if let Err(err) = self.outbox.journal.record_renewals(&confirmed.backend_ids, confirmed.sent_at).await {
            tracing::warn!(error = %err, keys = confirmed.backend_ids.len(), "cannot journal key renewals");
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        self: &Arc<Self>,
        backend_id: String,
        spawn: v1::SpawnBackend,
        lifecycle: Lifecycle,
        resume: Resume,
        requested: Option<(TerminationKind, TerminationReason)>,
        lease_confirmed: Confirmation,
        startup: tracing::Span,
    ) {
        let Some(runtime) = self.runtime.clone() else {
            // A drone without a runtime cannot run anything; say so through the normal path.
            let outbox = self.outbox.clone();
            let shutdown = self.shutdown.clone();
            let mut lifecycle = lifecycle;
            self.tasks.spawn(async move {
                let message = "this drone has no runtime, so it cannot run backends".to_string();
                if let Ok(event) = lifecycle.transition(
                    BackendState::Terminated,
                    Some((None, TerminationReason::InternalError)),
                    None,
                    message,
                ) {
                    tracing::warn!(%backend_id, "this drone has no runtime; the backend cannot run");
                    outbox.emit(event, BackendState::Terminated, &shutdown).await;
                }
            });
            return;
        };
        let (tx, rx) = mpsc::channel(32);
        self.backends.lock().unwrap().retain(|_, tx| !tx.is_closed());
        self.backends.lock().unwrap().insert(backend_id.clone(), tx.clone());
        let key = spawn.key.clone();
        let fencing_token = spawn.fencing_token;
        let task = BackendTask::new(
            self.outbox.clone(),
            runtime,
            backend_id.clone(),
            spawn,
            lifecycle,
            rx,
            self.shutdown.child_token(),
            lease_confirmed,
        )
        .with_startup_span(startup);
        let task = match resume {
            Resume::FromScratch => task.held_for_renewal(Instant::now()),
            _ => task,
        };
        if let (Some(key), Some(lease)) = (key, task.lease_duration()) {
            // Renewed with every other key of this drone until the task ends.
            self.outbox.keys.hold(&backend_id, key, fencing_token, lease, lease_confirmed, tx);
        }
        self.tasks.spawn(task.run(resume, requested));
    }

    /// Journal versus runtime after a (re)start: resume what both know, end what the runtime
    /// lost, and stop what only the runtime knows (orphans nobody will ever ask about).
    async fn reconcile(self: &Arc<Self>) -> Result<(), JournalError> {
        let journaled = self.outbox.journal.live_backends().await?;
        let running = match &self.runtime {
            Some(runtime) => match runtime.list().await {
                Ok(list) => Some(list),
                Err(err) => {
                    tracing::error!(error = %err, "cannot list the runtime's backends; resuming from the journal alone");
                    None
                }
            },
            None => None,
        };
        let mut by_id: HashMap<String, _> =
            running.iter().flatten().map(|info| (info.backend_id.clone(), info.clone())).collect();
        for backend in journaled {
            let resume = match (by_id.remove(&backend.backend_id), backend.state) {
                (Some(info), _) if info.state == RuntimeState::Exited => Resume::Exited(info.exit_code),
                (Some(_), _) => Resume::Running,
                // Nothing was started yet: do it now.
                (None, BackendState::Scheduled | BackendState::Loading | BackendState::Starting) => Resume::FromScratch,
                (None, _) if running.is_none() => Resume::Running,
                (None, _) => Resume::Lost,
            };
            tracing::info!(backend_id = %backend.backend_id, state = %backend.state, ?resume, "resuming backend");
            self.resume(backend, resume);
        }
        if let Some(runtime) = &self.runtime {
            // `list` holds only what this drone's runtime instance created (the docker runtime
            // lists by its instance label and re-checks it before removing anything), so an
            // orphan here is this drone's own leftover, never another drone's backend.
            for orphan in by_id.into_values() {
                tracing::warn!(backend_id = %orphan.backend_id, runtime_id = %orphan.runtime_id, "the runtime runs a backend this drone never journaled; removing it");
                let _ = runtime.stop(&orphan.backend_id, Duration::ZERO).await;
                if let Err(err) = runtime.remove(&orphan.backend_id).await {
                    tracing::warn!(backend_id = %orphan.backend_id, error = %err, "cannot remove an orphan");
                }
            }
        }
        Ok(())
    }

    fn resume(self: &Arc<Self>, backend: JournaledBackend, resume: Resume) {
        // Translate the last confirmed renewal's wall time to the monotonic clock; time spent
        // down counts against the lease.
        let since = backend
            .lease_renewed_at
            .map(|at| (chrono::Utc::now() - at).to_std().unwrap_or_default())
            .unwrap_or_default();
        let confirmed = Confirmation::ago(since, Instant::now());
        let lifecycle = Lifecycle::new(backend.backend_id.clone(), backend.state, backend.address);
        let spawn = backend.spawn.unwrap_or_default();
        self.launch(
            backend.backend_id,
            spawn,
            lifecycle,
            resume,
            backend.termination,
            confirmed,
            tracing::Span::none(),
        );
    }

    /// Feeds runtime events to backend tasks; resubscribes when the stream breaks and asks every
    /// task to look for itself after a resync, since events may have been missed meanwhile.
    async fn fan_out_runtime_events(
        self: Arc<Self>,
        runtime: Arc<dyn Runtime>,
        mut first: Result<crate::runtime::EventStream, RuntimeError>,
    ) {
        loop {
            match first {
                Ok(mut events) => loop {
                    let event = tokio::select! {
                        event = events.next() => event,
                        _ = self.shutdown.cancelled() => return,
                    };
                    match event {
                        Some(Ok(event)) => match event.kind {
                            EventKind::Sync => self.broadcast(|| Command::Check),
                            EventKind::Exited { exit_code } => {
                                if let Some(tx) = self.command(&event.backend_id) {
                                    let _ = tx.send(Command::Exited { exit_code }).await;
                                }
                            }
                            EventKind::Started | EventKind::Oom | EventKind::Removed => {}
                        },
                        Some(Err(err)) => {
                            tracing::warn!(error = %err, "runtime event stream failed; resubscribing");
                            break;
                        }
                        None => break,
                    }
                },
                Err(err) => tracing::warn!(error = %err, "cannot subscribe to runtime events; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.shutdown.cancelled() => return,
            }
            first = runtime.events().await;
        }
    }
}

/// How much of a new backend's key lease its Spawn spent before it arrived: the lease less what
/// the controller said was left when it sent it; nothing when it did not say (an older
/// controller) or the backend has no key.
pub fn lease_spent(spawn: &v1::SpawnBackend) -> Duration {
    let lease = spawn.lease_duration.as_ref().and_then(duration_from_proto).unwrap_or(DEFAULT_LEASE_DURATION);
    match spawn.lease_remaining.as_ref().and_then(duration_from_proto) {
        Some(remaining) if spawn.key.is_some() => lease.saturating_sub(remaining),
        _ => Duration::ZERO,
    }
}
