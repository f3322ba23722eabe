//! One backend on this drone: its state machine and the task that drives it through the runtime.
//!
//! SCHEDULED → LOADING (prepare the image) → STARTING (runtime start) → WAITING (HTTP probe) →
//! READY → TERMINATING (stop with grace) → HARD_TERMINATING (kill) → TERMINATED. Every move goes
//! through [`Lifecycle::transition`], which relies on the domain's forward-only
//! [`BackendState::transition`], and becomes one journaled event.
//!
//! The task is one loop over: the runtime call in flight (at most one), commands (terminate,
//! runtime exits, renewal answers), the grace timer and the key lease's timers. Because a
//! terminate is just another command in that loop, it is honoured in every state: during
//! LOADING the preparation is abandoned, during STARTING the backend is stopped as soon as the
//! start returns.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use hangar::domain::{
    BackendEnv, BackendState, PullPolicy, TerminationKind, TerminationReason, TransitionError, duration_from_proto,
    spawn_secrets, status_message,
};
use hangar::v1;
use hangar_agent::telemetry::SPAN_TARGET;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::lease::{Confirmation, KeyLease};
use super::outbox::Outbox;
use super::readiness;
use crate::runtime::{BackendSpec, BackendState as RuntimeState, Runtime, RuntimeError};

pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(30);

/// What a backend task is told from outside.
#[derive(Debug)]
pub enum Command {
    Terminate {
        kind: TerminationKind,
        reason: TerminationReason,
    },
    /// The runtime reports the backend exited.
    Exited {
        exit_code: Option<i32>,
    },
    /// The runtime's event stream (re)synchronised: events may have been missed, so look.
    Check,
    /// Answer to the key renewal in the batch sent at `sent` (`super::renewer`).
    Renewal {
        sent: Instant,
        answer: RenewalAnswer,
    },
}

/// What the controller answered for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewalAnswer {
    Renewed,
    /// The lease ran out or the key has another holder: the backend must end (KEY_EXPIRED).
    Refused,
    /// The controller could not reach its store; it promised `grace`
    /// (docs/design/backends-and-leases.md#store-outages).
    Deferred {
        grace: Duration,
    },
}

/// The state machine of one backend: its state and the event each move produces.
#[derive(Debug)]
pub struct Lifecycle {
    backend_id: String,
    state: BackendState,
    address: String,
}

impl Lifecycle {
    pub fn new(backend_id: String, state: BackendState, address: String) -> Self {
        Lifecycle { backend_id, state, address }
    }

    pub fn state(&self) -> BackendState {
        self.state
    }

    /// The one transition function: moves forward (refusing anything else) and returns the event
    /// that reports the move. `message` says why, for people; it goes out as it is, so callers
    /// pass it through [`status_message`] with the backend's secrets.
    pub fn transition(
        &mut self,
        to: BackendState,
        termination: Option<(Option<TerminationKind>, TerminationReason)>,
        exit_code: Option<i32>,
        message: String,
    ) -> Result<v1::DroneBackendEvent, TransitionError> {
        self.state = self.state.transition(to)?;
        let (kind, reason) = match termination {
            Some((kind, reason)) => (kind.map_or(0, |k| k.to_proto() as i32), reason.to_proto() as i32),
            None => (0, 0),
        };
        Ok(v1::DroneBackendEvent {
            event_id: format!("ev-{}", uuid::Uuid::now_v7().simple()),
            backend_id: self.backend_id.clone(),
            status: Some(v1::BackendStatus {
                state: to.to_proto() as i32,
                time: Some(hangar::domain::timestamp_to_proto(Utc::now())),
                termination_kind: kind,
                termination_reason: reason,
                exit_code,
                message,
            }),
            address: self.address.clone(),
        })
    }
}

/// Where a backend task starts.
#[derive(Debug)]
pub enum Resume {
    /// A new spawn, or one that never reached the runtime: prepare and start.
    FromScratch,
    /// The runtime knows it and it is running (after a drone restart).
    Running,
    /// The runtime says it exited with this code while the drone was away.
    Exited(Option<i32>),
    /// The runtime does not know it although it was started: it is gone.
    Lost,
}

type Operation = Pin<Box<dyn Future<Output = Done> + Send>>;

/// Result of the runtime call in flight.
enum Done {
    Prepared(Result<(), RuntimeError>),
    Started(Result<crate::runtime::Started, RuntimeError>),
    Probed { ready: bool },
    Stopped(Result<(), RuntimeError>),
}

enum Step {
    Done(Done),
    Command(Command),
    GraceOver,
    LeaseSoft,
    LeaseHard,
    /// No renewal came for a backend held back for one (`held_for_renewal`).
    Unconfirmed,
    Shutdown,
}

pub struct BackendTask {
    outbox: Arc<Outbox>,
    runtime: Arc<dyn Runtime>,
    backend_id: String,
    spawn: v1::SpawnBackend,
    lifecycle: Lifecycle,
    commands: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
    /// The termination under way (or requested while a start is in flight).
    termination: Option<(TerminationKind, TerminationReason)>,
    /// Why, when the drone decided it (a timeout, a lost lease); empty when the controller asked
    /// or after a restart (the journal keeps the reason, not the words).
    termination_message: String,
    grace_deadline: Option<Instant>,
    lease: Option<KeyLease>,
    /// Not started yet, and held back until a renewal of its key is confirmed: its lease had
    /// less than half left when it was to start (`held_for_renewal`). Ends KEY_EXPIRED if no
    /// renewal is confirmed by then.
    unconfirmed_until: Option<Instant>,
    /// An exit reported before the start returned, or during a stop.
    exit_code: Option<Option<i32>>,
    /// A runtime start is in flight; a stop must wait for it to return.
    starting: bool,
    /// The trace span of a new backend's way to READY; none after it, or for a resumed one.
    startup: tracing::Span,
}

impl BackendTask {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        outbox: Arc<Outbox>,
        runtime: Arc<dyn Runtime>,
        backend_id: String,
        spawn: v1::SpawnBackend,
        lifecycle: Lifecycle,
        commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
        lease_confirmed: Confirmation,
    ) -> Self {
        let lease = spawn.key.as_ref().map(|_| {
            let duration =
                spawn.lease_duration.as_ref().and_then(duration_from_proto).unwrap_or(DEFAULT_LEASE_DURATION);
            KeyLease::new(duration, lease_confirmed)
        });
        BackendTask {
            outbox,
            runtime,
            backend_id,
            spawn,
            lifecycle,
            commands,
            shutdown,
            termination: None,
            termination_message: String::new(),
            grace_deadline: None,
            lease,
            unconfirmed_until: None,
            exit_code: None,
            starting: false,
            startup: tracing::Span::none(),
        }
    }

    /// The span the start's steps (image, runtime start, READY report) are traced in.
    pub fn with_startup_span(mut self, span: tracing::Span) -> Self {
        self.startup = span;
        self
    }

    /// A backend about to start whose key's lease has less than half left at `now` (its Spawn
    /// waited on the way, or the drone was down) is held in SCHEDULED until a renewal of the key
    /// is confirmed, for at most half a lease. Started as it is, it would be soft-terminated at
    /// once, or run past the controller's expiry had it counted a whole lease from here; nothing
    /// runs while it waits, and the renewer sends a new key's renewal within a fraction of a
    /// second (docs/design/backends-and-leases.md#key-leases-and-fencing).
    pub fn held_for_renewal(mut self, now: Instant) -> Self {
        if let Some(lease) = &self.lease
            && lease.soft_deadline().is_some_and(|soft| soft <= now)
        {
            self.unconfirmed_until = Some(now + lease.duration() / 2);
        }
        self
    }

    /// How long this backend's key lease lasts; `None` without a key.
    pub fn lease_duration(&self) -> Option<Duration> {
        self.lease.as_ref().map(KeyLease::duration)
    }

    fn stop_grace(&self) -> Duration {
        self.spawn.stop_grace.as_ref().and_then(duration_from_proto).unwrap_or(DEFAULT_STOP_GRACE)
    }

    fn startup_timeout(&self) -> Duration {
        self.spawn.startup_timeout.as_ref().and_then(duration_from_proto).unwrap_or(DEFAULT_STARTUP_TIMEOUT)
    }

    /// Runs until the backend is TERMINATED or the drone shuts down (which leaves the backend
    /// running: a restarted drone resumes it from the journal).
    pub async fn run(mut self, resume: Resume, requested: Option<(TerminationKind, TerminationReason)>) {
        if self.lifecycle.state() >= BackendState::Terminating {
            // A termination was under way when the drone stopped: finish it as it was asked.
            self.termination = Some(requested.unwrap_or((TerminationKind::Soft, TerminationReason::InternalError)));
        }
        let mut op = match self.unconfirmed_until {
            // Started when its key's renewal is confirmed (`on_command`).
            Some(_) => None,
            None => self.resume(resume).await,
        };
        if let Some((kind, reason)) = requested
            && self.termination.is_none()
        {
            self.terminate(kind, reason, String::new(), &mut op).await;
        }
        while self.lifecycle.state().is_live() {
            // A backend held back for a renewal runs nothing, so its lease's deadlines wait too.
            let lease = self.lease.as_ref().filter(|_| self.unconfirmed_until.is_none());
            let soft_at = lease.and_then(KeyLease::soft_deadline);
            let hard_at = lease.and_then(KeyLease::hard_deadline);
            let step = tokio::select! {
                done = async { op.as_mut().expect("guarded").await }, if op.is_some() => Step::Done(done),
                command = self.commands.recv() => command.map_or(Step::Shutdown, Step::Command),
                _ = sleep_until(self.grace_deadline) => Step::GraceOver,
                _ = sleep_until(soft_at) => Step::LeaseSoft,
                _ = sleep_until(hard_at) => Step::LeaseHard,
                _ = sleep_until(self.unconfirmed_until) => Step::Unconfirmed,
                _ = self.shutdown.cancelled() => Step::Shutdown,
            };
            match step {
                Step::Done(done) => {
                    op = None;
                    self.on_done(done, &mut op).await;
                }
                Step::Command(command) => self.on_command(command, &mut op).await,
                Step::GraceOver => {
                    self.grace_deadline = None;
                    // The runtime kills it now; say so.
                    if self.lifecycle.state() == BackendState::Terminating {
                        self.advance(BackendState::HardTerminating, None, None, String::new()).await;
                    }
                }
                Step::LeaseSoft => {
                    self.lease.as_mut().expect("lease timer").soft_fired();
                    tracing::warn!(backend_id = %self.backend_id, "no key renewal confirmed for half the lease; soft-terminating");
                    let message = "no key lease renewal was confirmed for half the lease: the controllers may be \
                                   unreachable, and the key may soon be given to another backend";
                    self.terminate(TerminationKind::Soft, TerminationReason::KeyExpired, message.into(), &mut op).await;
                }
                Step::LeaseHard => {
                    self.lease.as_mut().expect("lease timer").hard_fired();
                    tracing::warn!(backend_id = %self.backend_id, "no key renewal confirmed for 3/4 of the lease; killing");
                    let message = "no key lease renewal was confirmed for three quarters of the lease: killed before \
                                   the key can be given to another backend";
                    self.terminate(TerminationKind::Hard, TerminationReason::KeyExpired, message.into(), &mut op).await;
                }
                Step::Unconfirmed => {
                    self.unconfirmed_until = None;
                    tracing::warn!(backend_id = %self.backend_id, "no key renewal confirmed for a backend that arrived late in its lease; not starting it");
                    let message = "the key's lease was more than half over when the backend was to start, and no \
                                   renewal of it was confirmed within half a lease: it was not started";
                    self.terminate(TerminationKind::Soft, TerminationReason::KeyExpired, message.into(), &mut op).await;
                }
                Step::Shutdown => return,
            }
        }
    }

    async fn resume(&mut self, resume: Resume) -> Option<Operation> {
        match resume {
            Resume::FromScratch => {
                if self.lifecycle.state() < BackendState::Loading {
                    self.advance(BackendState::Loading, None, None, String::new()).await;
                }
                Some(self.prepare())
            }
            Resume::Running => match self.lifecycle.state() {
                // Start is idempotent: it hands back the address, and the probe goes on.
                BackendState::Scheduled | BackendState::Loading | BackendState::Starting | BackendState::Waiting => {
                    Some(self.start())
                }
                BackendState::Ready => None,
                BackendState::Terminating | BackendState::HardTerminating => {
                    let hard = self.lifecycle.state() == BackendState::HardTerminating;
                    Some(self.stop(if hard { Duration::ZERO } else { self.stop_grace() }))
                }
                BackendState::Terminated => None,
            },
            Resume::Exited(code) => {
                match self.termination {
                    Some((kind, reason)) => {
                        self.finish(Some(kind), reason, code, self.termination_message.clone()).await
                    }
                    None => {
                        let message = format!("{} while the drone was away", exited_message(code));
                        self.finish(None, TerminationReason::Exited, code, message).await
                    }
                }
                None
            }
            Resume::Lost => {
                self.finish(None, TerminationReason::Lost, None, LOST_MESSAGE.into()).await;
                None
            }
        }
    }

    fn prepare(&self) -> Operation {
        let runtime = self.runtime.clone();
        let executable = self.spawn.executable.clone().unwrap_or_default();
        Box::pin(
            async move {
                let policy = PullPolicy::from_proto(executable.pull_policy).unwrap_or_default();
                Done::Prepared(runtime.prepare_image(&executable.image, policy).await.map(|_| ()))
            }
            .instrument(self.startup.clone()),
        )
    }

    fn start(&mut self) -> Operation {
        self.starting = true;
        let runtime = self.runtime.clone();
        let spec = self.spec();
        Box::pin(async move { Done::Started(runtime.start(spec).await) }.instrument(self.startup.clone()))
    }

    fn stop(&mut self, grace: Duration) -> Operation {
        self.grace_deadline = (!grace.is_zero()).then(|| Instant::now() + grace);
        let runtime = self.runtime.clone();
        let id = self.backend_id.clone();
        Box::pin(async move { Done::Stopped(runtime.stop(&id, grace).await) })
    }

    /// The runtime spec: the executable plus the environment every backend gets.
    fn spec(&self) -> BackendSpec {
        let executable = self.spawn.executable.clone().unwrap_or_default();
        let mut env: BTreeMap<String, String> = executable.env.into_iter().collect();
        env.extend(BackendEnv::from_spawn(&self.backend_id, &self.spawn).vars());
        BackendSpec {
            backend_id: self.backend_id.clone(),
            image: executable.image,
            command: executable.command,
            args: executable.args,
            env,
            port: u16::try_from(executable.container_port).unwrap_or(0),
            resources: executable.resources.map(Into::into).unwrap_or_default(),
            labels: BTreeMap::new(),
        }
    }

    async fn on_done(&mut self, done: Done, op: &mut Option<Operation>) {
        match done {
            Done::Prepared(Ok(())) => {
                self.advance(BackendState::Starting, None, None, String::new()).await;
                *op = Some(self.start());
            }
            Done::Prepared(Err(err)) => {
                tracing::warn!(backend_id = %self.backend_id, error = %err, "image preparation failed");
                self.finish(None, TerminationReason::ImagePullFailed, None, runtime_error_message(&err)).await;
            }
            Done::Started(Ok(started)) => {
                self.starting = false;
                self.lifecycle.address = started.address.clone();
                if let Some((kind, _)) = self.termination {
                    // Terminated while starting: stop it now that it exists.
                    *op = Some(self.stop(self.grace_for(kind)));
                } else if let Some(code) = self.exit_code {
                    self.finish(None, TerminationReason::Exited, code, exited_message(code)).await;
                } else if self.lifecycle.state() == BackendState::Ready {
                    // Resumed after a restart: already ready.
                } else {
                    if self.lifecycle.state() < BackendState::Waiting {
                        self.advance(BackendState::Waiting, None, None, String::new()).await;
                    }
                    let probe = readiness::wait_until_ready(started.address, self.startup_timeout());
                    *op = Some(Box::pin(async move { Done::Probed { ready: probe.await } }));
                }
            }
            Done::Started(Err(err)) => {
                self.starting = false;
                let reason = match (&self.termination, &err) {
                    (Some((_, reason)), _) => *reason,
                    (None, RuntimeError::ImageNotFound { .. } | RuntimeError::ImagePullFailed { .. }) => {
                        TerminationReason::ImagePullFailed
                    }
                    (None, _) => TerminationReason::InternalError,
                };
                let message = if self.termination.is_none() {
                    tracing::warn!(backend_id = %self.backend_id, error = %err, "start failed");
                    runtime_error_message(&err)
                } else {
                    self.termination_message.clone()
                };
                let kind = self.termination.map(|(kind, _)| kind);
                self.finish(kind, reason, None, message).await;
            }
            Done::Probed { ready: true } => self.advance(BackendState::Ready, None, None, String::new()).await,
            Done::Probed { ready: false } => {
                tracing::warn!(backend_id = %self.backend_id, timeout = ?self.startup_timeout(), "backend did not answer HTTP in time");
                let message = format!(
                    "did not answer HTTP on {} within the startup timeout of {}",
                    self.lifecycle.address,
                    humantime::format_duration(self.startup_timeout())
                );
                self.terminate(TerminationKind::Soft, TerminationReason::StartupTimeout, message, op).await;
            }
            Done::Stopped(result) => {
                // A stop that lasted the whole grace ended in a kill, even when the runtime's
                // answer won the race against our own grace timer.
                if self.lifecycle.state() == BackendState::Terminating
                    && self.grace_deadline.is_some_and(|deadline| Instant::now() >= deadline)
                {
                    self.advance(BackendState::HardTerminating, None, None, String::new()).await;
                }
                if let Err(err) = result {
                    tracing::warn!(backend_id = %self.backend_id, error = %err, "stop failed; removing anyway");
                }
                let exit_code = match self.runtime.inspect(&self.backend_id).await {
                    Ok(info) => info.exit_code,
                    Err(_) => self.exit_code.flatten(),
                };
                let (kind, reason) =
                    self.termination.unwrap_or((TerminationKind::Soft, TerminationReason::InternalError));
                self.finish(Some(kind), reason, exit_code, self.termination_message.clone()).await;
            }
        }
    }

    async fn on_command(&mut self, command: Command, op: &mut Option<Operation>) {
        match command {
            Command::Terminate { kind, reason } => self.terminate(kind, reason, String::new(), op).await,
            Command::Exited { exit_code } => self.exited(exit_code, op).await,
            Command::Check => match self.runtime.inspect(&self.backend_id).await {
                Ok(info) if info.state == RuntimeState::Exited => self.exited(info.exit_code, op).await,
                Err(RuntimeError::BackendNotFound(_))
                    if self.lifecycle.state() >= BackendState::Waiting && self.termination.is_none() =>
                {
                    *op = None;
                    self.finish(None, TerminationReason::Lost, None, LOST_MESSAGE.into()).await;
                }
                _ => {}
            },
            Command::Renewal { sent, answer } => {
                let Some(lease) = self.lease.as_mut() else { return };
                if answer == RenewalAnswer::Renewed {
                    lease.renewed(sent);
                    if self.unconfirmed_until.take().is_some() && self.termination.is_none() {
                        *op = self.resume(Resume::FromScratch).await;
                    }
                } else if let RenewalAnswer::Deferred { grace } = answer {
                    if lease.deferred(Instant::now(), grace) {
                        tracing::warn!(backend_id = %self.backend_id, ?grace, "key renewal deferred: the controller cannot reach its store; keeping the backend for the grace");
                    }
                } else if self.termination.is_none() {
                    tracing::warn!(backend_id = %self.backend_id, "the controller refused the key renewal");
                    let message = "the controller refused to renew the key lease: it ran out, and the key may \
                                   have another holder";
                    self.terminate(TerminationKind::Soft, TerminationReason::KeyExpired, message.into(), op).await;
                }
            }
        }
    }

    /// The runtime says the backend exited.
    async fn exited(&mut self, exit_code: Option<i32>, op: &mut Option<Operation>) {
        match self.lifecycle.state() {
            // The start has not returned yet; act on it when it does.
            BackendState::Scheduled | BackendState::Loading | BackendState::Starting => {
                self.exit_code = Some(exit_code);
            }
            BackendState::Waiting | BackendState::Ready if self.termination.is_none() => {
                *op = None;
                self.finish(None, TerminationReason::Exited, exit_code, exited_message(exit_code)).await;
            }
            // A stop is in flight; it reports the exit when it returns.
            _ => self.exit_code = Some(exit_code),
        }
    }

    fn grace_for(&self, kind: TerminationKind) -> Duration {
        match kind {
            TerminationKind::Soft => self.stop_grace(),
            TerminationKind::Hard => Duration::ZERO,
        }
    }

    /// Honours a termination in whatever state the backend is. `message` says why when the drone
    /// decided it; the first termination's reason and words are the ones reported.
    async fn terminate(
        &mut self,
        kind: TerminationKind,
        reason: TerminationReason,
        message: String,
        op: &mut Option<Operation>,
    ) {
        let state = self.lifecycle.state();
        if state == BackendState::Terminated {
            return;
        }
        if self.termination.is_none() && self.termination_message.is_empty() {
            self.termination_message = message;
        }
        if let Err(err) = self.outbox.journal.record_termination(&self.backend_id, kind, reason).await {
            tracing::warn!(backend_id = %self.backend_id, error = %err, "cannot journal a termination");
        }
        match state {
            // Nothing runs yet: abandon the preparation.
            BackendState::Scheduled | BackendState::Loading => {
                *op = None;
                self.termination = Some((kind, reason));
                self.finish(Some(kind), reason, None, self.termination_message.clone()).await;
            }
            BackendState::Starting => {
                self.termination = Some((kind, reason));
                let to = if kind == TerminationKind::Hard {
                    BackendState::HardTerminating
                } else {
                    BackendState::Terminating
                };
                self.advance(to, None, None, self.termination_message.clone()).await;
                // The start in flight finishes first (see `on_done`), then the stop follows.
            }
            BackendState::Waiting | BackendState::Ready => {
                self.termination = Some((kind, reason));
                let to = if kind == TerminationKind::Hard {
                    BackendState::HardTerminating
                } else {
                    BackendState::Terminating
                };
                self.advance(to, None, None, self.termination_message.clone()).await;
                *op = Some(self.stop(self.grace_for(kind)));
            }
            BackendState::Terminating if kind == TerminationKind::Hard => {
                // Escalation (a hard terminate, or the lease's kill deadline).
                if let Some((first_kind, _)) = self.termination.as_mut() {
                    *first_kind = TerminationKind::Hard;
                }
                self.advance(BackendState::HardTerminating, None, None, String::new()).await;
                // Unless the start is still in flight, kill now instead of waiting out the grace.
                if self.starting {
                    return;
                }
                *op = Some(self.stop(Duration::ZERO));
            }
            _ => {}
        }
    }

    /// Moves forward and journals the event; a refused move is a bug worth a loud log, not a
    /// crash of the drone. `message` is masked and bounded here, once for every event.
    async fn advance(
        &mut self,
        to: BackendState,
        termination: Option<(Option<TerminationKind>, TerminationReason)>,
        exit_code: Option<i32>,
        message: String,
    ) {
        let message = status_message(&message, spawn_secrets(&self.spawn));
        match self.lifecycle.transition(to, termination, exit_code, message) {
            Ok(event) => {
                tracing::info!(backend_id = %self.backend_id, state = %to, "backend state");
                // READY ends the start's trace with the report (journaled, then sent to the
                // controller in order); any later state ends it without one.
                let report = if to == BackendState::Ready && !self.startup.is_none() {
                    tracing::info_span!(
                        target: SPAN_TARGET,
                        parent: &self.startup,
                        "drone.report_ready",
                        otel.name = "drone report READY",
                        hangar.backend_id = %self.backend_id,
                    )
                } else {
                    tracing::Span::none()
                };
                self.outbox.emit(event, to, &self.shutdown).instrument(report).await;
                if to >= BackendState::Ready {
                    self.startup = tracing::Span::none();
                }
            }
            Err(err) => tracing::error!(backend_id = %self.backend_id, error = %err, "refused state change"),
        }
    }

    /// Removes whatever the runtime holds and reports TERMINATED, with `message` saying why.
    async fn finish(
        &mut self,
        kind: Option<TerminationKind>,
        reason: TerminationReason,
        exit_code: Option<i32>,
        message: String,
    ) {
        if let Err(err) = self.runtime.remove(&self.backend_id).await {
            tracing::warn!(backend_id = %self.backend_id, error = %err, "cannot remove the backend from the runtime");
        }
        self.grace_deadline = None;
        self.advance(BackendState::Terminated, Some((kind, reason)), exit_code, message).await;
    }
}

/// What a started backend that the runtime no longer knows is told.
const LOST_MESSAGE: &str =
    "the runtime no longer knows this backend although it was started (its container or process is gone)";

/// `exited with code 3`; a death by signal N (code 128+N) says so.
fn exited_message(code: Option<i32>) -> String {
    match code {
        Some(code @ 129..=192) => format!("exited with code {code} (killed by signal {})", code - 128),
        Some(code) => format!("exited with code {code}"),
        None => "exited".to_string(),
    }
}

/// A runtime's error as a status message: its own words, except for internal errors, whose
/// details stay in the drone's log.
fn runtime_error_message(err: &RuntimeError) -> String {
    match err {
        RuntimeError::Internal(_) => "internal error in the runtime; the drone's log has the details".to_string(),
        err => err.to_string(),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
