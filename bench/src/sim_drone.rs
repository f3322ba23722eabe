//! A simulated drone: a lightweight in-process client of the real `DroneService.Attach` protocol
//! (`proto/hangar/v1/drone.proto`, docs/design/drone-link.md), so that thousands of drones fit in
//! the benchmark's process and the controller cannot tell them from real ones on the wire.
//!
//! What it does, as `executor/src/drone/` does:
//! - sends its `DroneHello` first, waits for the `Welcome`, then heartbeats at the interval the
//!   Welcome names (the first one at a per-drone phase of it, so that a fleet attached in one go
//!   does not beat in lockstep);
//! - acknowledges every action (`AckAction`); a repeated action id is acknowledged and ignored;
//! - on a spawn, runs nothing: the backend is READY at once (one `DroneBackendEvent`, where a
//!   real drone reports LOADING, STARTING, WAITING and READY as its runtime gets there);
//! - on a terminate, reports TERMINATED with the action's kind and reason;
//! - renews its keys as the real drone's renewer does: every key each round, a third of the lease
//!   apart, and between rounds the new keys that cannot wait for the next one (`renew_at_once`),
//!   gathered for 200 ms (in `RenewKeys` batches of at most 1,000); it ends a backend KEY_EXPIRED
//!   when a renewal is refused or none was confirmed for half the lease, as the real drone's lease
//!   rules do (docs/design/backends-and-leases.md).
//!
//! When its stream ends it attaches again, as the real drone does (200 ms backoff doubling to
//! 10 s), keeps its backends (in memory, where the real drone has its journal) and sends every
//! event not yet acknowledged again, in order; each lost stream is counted.
//!
//! Unlike the real drone, whose link is a 64-message channel written from the loop that also
//! reads the controller's messages, its outgoing queue is unbounded: it never stops reading
//! because it is waiting to write, so a stall measured here is the controller's alone.

use chrono::Utc;
use futures::StreamExt;
use hangar::domain::{duration_from_proto, timestamp_to_proto};
use hangar::v1::{self, drone_service_client::DroneServiceClient};
// The real drone's batch size, fresh-key rule and lease accounting, so the simulation renews as
// it does.
use hangar_executor::drone::{RENEW_FRESH_DELAY, RENEW_MAX_BATCH, lease_spent, renew_at_once};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;

/// Counters of a whole simulated fleet, shared by its drones.
#[derive(Default)]
pub struct Fleet {
    /// Drones attached at least once.
    pub attached: AtomicU64,
    /// Drones whose first attach failed and that have not attached since.
    pub attach_failed: AtomicU64,
    /// Streams that ended (or failed) after their Welcome, while the benchmark still ran.
    pub sessions_lost: AtomicU64,
    pub heartbeats: AtomicU64,
    pub spawns: AtomicU64,
    /// Spawns that arrived while the drone already ran `capacity` live backends.
    pub over_capacity: AtomicU64,
    /// Spawns for a key that a live backend on some drone of the fleet already held.
    pub duplicate_keys: AtomicU64,
    pub terminates: AtomicU64,
    pub renewals_sent: AtomicU64,
    pub renewals_refused: AtomicU64,
    /// Time from each renewal's send to its answer (ns).
    pub renewal_answers: Mutex<Vec<u64>>,
    /// Backends this fleet ended KEY_EXPIRED itself (refused, or no renewal confirmed in time).
    pub expired_by_drone: AtomicU64,
    /// When each READY event was acknowledged by the controller (i.e. committed).
    pub ready_acked: Mutex<Vec<Instant>>,
    /// Keys held by live backends across the fleet: a second live holder is a duplicate.
    live_keys: Mutex<HashSet<String>>,
}

impl Fleet {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    /// How long renewals waited for their answers.
    pub fn renewal_answer_times(&self) -> crate::measure::Distribution {
        crate::measure::Distribution::of(self.renewal_answers.lock().expect("not poisoned").clone())
    }

    /// READY acknowledgements in `[from, to)`.
    pub fn ready_between(&self, from: Instant, to: Instant) -> usize {
        self.ready_acked.lock().expect("not poisoned").iter().filter(|t| **t >= from && **t < to).count()
    }
}

/// One simulated drone.
#[derive(Clone)]
pub struct SimDrone {
    pub name: String,
    pub cluster: String,
    pub capacity: u32,
    /// Where in the heartbeat interval its first heartbeat falls, 0.0–1.0.
    pub phase: f64,
}

impl SimDrone {
    fn hello(&self) -> v1::DroneHello {
        // Labels like those of a real fleet, so that a node has a realistic size (~500 bytes).
        let labels = [
            ("topology.kubernetes.io/region", "eu-west-1"),
            ("topology.kubernetes.io/zone", "eu-west-1a"),
            ("node.kubernetes.io/instance-type", "m6i.2xlarge"),
            ("hangar.dev/team", "sessions-platform"),
            ("hangar.dev/image-cache", "warm"),
            ("kernel.version", "6.1.0-18-cloud-amd64"),
            ("os.image", "debian-12-bookworm"),
            ("cpu.arch", "amd64"),
            ("rack", "r12-u07"),
        ];
        v1::DroneHello {
            name: self.name.clone(),
            cluster: self.cluster.clone(),
            pool: String::new(),
            version: hangar::VERSION.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            backend_capacity: self.capacity,
            resources: Some(resources()),
            runtime: "mock".into(),
            // It renews what it is told to and nothing more: no grace through a store outage.
            lease_deferrals: false,
        }
    }
}

fn resources() -> v1::NodeResources {
    v1::NodeResources { cpu_cores: 8, cpu_used_millis: 0, memory_total_bytes: 32 << 30, memory_used_bytes: 1 << 30 }
}

struct Backend {
    key: Option<v1::BackendKey>,
    fencing_token: u64,
    lease: Duration,
    last_confirmed: Instant,
    /// Send times of renewals not answered yet, oldest first (answers come in order).
    outstanding: Vec<Instant>,
    /// Half a lease after `last_confirmed`: when it ends KEY_EXPIRED unless a renewal is
    /// confirmed first (its entry in `Session::deadlines`).
    deadline: Instant,
}

fn key_string(key: &v1::BackendKey) -> String {
    format!("{}/{}", key.namespace, key.name)
}

type Outbound = futures::channel::mpsc::UnboundedSender<v1::DroneAttachRequest>;

/// A drone's state across its streams.
struct Session<'a> {
    drone: &'a SimDrone,
    fleet: &'a Fleet,
    /// The current stream.
    out: Outbound,
    backends: HashMap<String, Backend>,
    /// The keyed backends by `Backend::deadline`: a wake-up looks at the backends due and no
    /// others. (A scan of every backend on each message cost this process a core per 100,000
    /// backends, taken from the controller on a shared machine.)
    deadlines: BTreeSet<(Instant, String)>,
    /// Keys that arrived since the last renewal sent, and when they go out together.
    fresh: Vec<String>,
    fresh_at: Option<Instant>,
    /// The next round, which renews every key; and a round's period, a third of the shortest
    /// lease seen.
    next_round: Option<Instant>,
    round_every: Option<Duration>,
    actions_seen: HashSet<String>,
    ready_events: HashSet<String>,
    events: u64,
    /// Events not acknowledged yet, by sequence number: sent again after a reattach.
    unacked: BTreeMap<u64, v1::DroneBackendEvent>,
    ever_attached: bool,
    /// Its first attach failed (counted in `Fleet::attach_failed` until it attaches).
    failed: bool,
}

impl Session<'_> {
    /// Moves `backend_id`'s entry in `deadlines` to half a lease after its last confirmation.
    fn reschedule(&mut self, backend_id: &str) {
        let Some(backend) = self.backends.get_mut(backend_id) else { return };
        if backend.key.is_none() {
            return;
        }
        self.deadlines.remove(&(backend.deadline, backend_id.to_string()));
        backend.deadline = backend.last_confirmed + backend.lease / 2;
        self.deadlines.insert((backend.deadline, backend_id.to_string()));
    }

    async fn send(&mut self, message: v1::drone_attach_request::Message) -> bool {
        self.out.unbounded_send(v1::DroneAttachRequest { message: Some(message) }).is_ok()
    }

    async fn event(&mut self, backend_id: &str, status: v1::BackendStatus) -> bool {
        self.events += 1;
        let event_id = format!("{}-e{}", self.drone.name, self.events);
        if status.state == v1::BackendState::Ready as i32 {
            self.ready_events.insert(event_id.clone());
        }
        let event = v1::DroneBackendEvent {
            event_id,
            backend_id: backend_id.into(),
            status: Some(status),
            address: "127.0.0.1:9".into(),
        };
        self.unacked.insert(self.events, event.clone());
        self.send(v1::drone_attach_request::Message::BackendEvent(event)).await
    }

    fn acked(&mut self, event_id: &str) {
        if let Some(seq) = event_id.rsplit_once("-e").and_then(|(_, n)| n.parse::<u64>().ok()) {
            self.unacked.remove(&seq);
        }
        if self.ready_events.remove(event_id) {
            self.fleet.ready_acked.lock().expect("not poisoned").push(Instant::now());
        }
    }

    /// A new stream: what the old one left unacknowledged goes out again, and renewals sent on
    /// it are forgotten (and retried at once).
    async fn reattached(&mut self, out: Outbound) -> bool {
        if !self.ever_attached {
            self.ever_attached = true;
            self.fleet.attached.fetch_add(1, Relaxed);
            if self.failed {
                self.fleet.attach_failed.fetch_sub(1, Relaxed);
            }
        }
        self.out = out;
        // As the real drone does on a new stream, a round at once: the renewals the old stream
        // took with it are not coming back, and their deadlines kept running.
        let mut lost = false;
        for backend in self.backends.values_mut() {
            lost |= !backend.outstanding.is_empty();
            backend.outstanding.clear();
        }
        if lost {
            self.next_round = Some(Instant::now());
        }
        let events: Vec<_> = self.unacked.values().cloned().collect();
        for event in events {
            if !self.send(v1::drone_attach_request::Message::BackendEvent(event)).await {
                return false;
            }
        }
        true
    }

    async fn end(
        &mut self,
        backend_id: &str,
        kind: v1::TerminationKind,
        reason: v1::TerminationReason,
        message: &str,
    ) -> bool {
        if let Some(backend) = self.backends.remove(backend_id)
            && let Some(key) = &backend.key
        {
            self.deadlines.remove(&(backend.deadline, backend_id.to_string()));
            self.fleet.live_keys.lock().expect("not poisoned").remove(&key_string(key));
        }
        let status = status(v1::BackendState::Terminated, kind, reason, message);
        self.event(backend_id, status).await
    }

    async fn action(&mut self, action: v1::DroneAction) -> bool {
        use v1::drone_action::Action;
        let first_time = self.actions_seen.insert(action.action_id.clone());
        let ack = v1::AckAction { action_id: action.action_id.clone() };
        if !self.send(v1::drone_attach_request::Message::AckAction(ack)).await {
            return false;
        }
        if !first_time {
            return true;
        }
        match action.action {
            Some(Action::Spawn(spawn)) => {
                self.fleet.spawns.fetch_add(1, Relaxed);
                if self.backends.contains_key(&action.backend_id) {
                    return true;
                }
                if self.backends.len() >= self.drone.capacity as usize {
                    self.fleet.over_capacity.fetch_add(1, Relaxed);
                }
                if let Some(key) = &spawn.key
                    && !self.fleet.live_keys.lock().expect("not poisoned").insert(key_string(key))
                {
                    self.fleet.duplicate_keys.fetch_add(1, Relaxed);
                }
                let lease =
                    spawn.lease_duration.as_ref().and_then(duration_from_proto).unwrap_or(Duration::from_secs(30));
                let now = Instant::now();
                // As the real drone does, the key counts as confirmed when its lease started, as
                // the Spawn tells it: what the Spawn spent on the way is gone.
                let spent = lease_spent(&spawn);
                self.backends.insert(
                    action.backend_id.clone(),
                    Backend {
                        key: spawn.key,
                        fencing_token: spawn.fencing_token,
                        lease,
                        last_confirmed: now.checked_sub(spent).unwrap_or(now),
                        outstanding: Vec::new(),
                        deadline: now,
                    },
                );
                if self.backends[&action.backend_id].key.is_some() {
                    self.reschedule(&action.backend_id);
                    // Renewed with the next round, unless that would come too close to its
                    // deadline: then within RENEW_FRESH_DELAY, with the other keys that cannot wait.
                    let deadline = self.backends[&action.backend_id].deadline;
                    if renew_at_once(deadline, lease, self.next_round) {
                        self.fresh.push(action.backend_id.clone());
                        self.fresh_at.get_or_insert(now + RENEW_FRESH_DELAY);
                    }
                    self.round_every = Some(self.round_every.map_or(lease / 3, |every| every.min(lease / 3)));
                }
                let ready = status(
                    v1::BackendState::Ready,
                    v1::TerminationKind::Unspecified,
                    v1::TerminationReason::Unspecified,
                    "",
                );
                self.event(&action.backend_id, ready).await
            }
            Some(Action::Terminate(terminate)) => {
                self.fleet.terminates.fetch_add(1, Relaxed);
                let kind = v1::TerminationKind::try_from(terminate.kind).unwrap_or(v1::TerminationKind::Soft);
                let reason =
                    v1::TerminationReason::try_from(terminate.reason).unwrap_or(v1::TerminationReason::External);
                // Also for a backend it does not know: the controller's view must converge.
                self.end(&action.backend_id, kind, reason, "").await
            }
            None => true,
        }
    }

    /// Ends what went half a lease without a confirmed renewal, and renews, as the real drone
    /// does (`executor/src/drone/renewer.rs`): every key each round, a third of the lease apart,
    /// and between rounds the keys that arrived and cannot wait for the next one, gathered for
    /// [`RENEW_FRESH_DELAY`].
    async fn leases(&mut self) -> bool {
        let now = Instant::now();
        while self.deadlines.first().is_some_and(|(at, _)| *at <= now) {
            let Some((_, id)) = self.deadlines.pop_first() else { break };
            self.fleet.expired_by_drone.fetch_add(1, Relaxed);
            let (kind, reason) = (v1::TerminationKind::Hard, v1::TerminationReason::KeyExpired);
            if !self.end(&id, kind, reason, "no key renewal confirmed for half the lease").await {
                return false;
            }
        }
        let round = self.next_round.is_some_and(|at| at <= now);
        let fresh = self.fresh_at.is_some_and(|at| at <= now);
        if !round && !fresh {
            return true;
        }
        let ids: Vec<String> = if round {
            self.backends.iter().filter(|(_, b)| b.key.is_some()).map(|(id, _)| id.clone()).collect()
        } else {
            std::mem::take(&mut self.fresh)
        };
        (self.fresh_at, self.fresh) = (None, Vec::new());
        // As the real drone does: a round plans the next; new keys only bring it forward (a
        // shorter lease than the others').
        let again = self.round_every.map(|every| now + every);
        self.next_round = match (self.next_round, again) {
            (Some(planned), Some(again)) if !round => Some(planned.min(again)),
            _ => again,
        };
        let mut due = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(backend) = self.backends.get_mut(&id) else { continue };
            let Some(key) = &backend.key else { continue };
            backend.outstanding.push(now);
            due.push(v1::RenewKey { backend_id: id, key: Some(key.clone()), fencing_token: backend.fencing_token });
        }
        // As the real drone does with a controller that answers them: the due keys in batches
        // of at most RENEW_MAX_BATCH, each answered key by key (docs/design/backends-and-leases.md).
        while !due.is_empty() {
            let batch: Vec<v1::RenewKey> = due.drain(..due.len().min(RENEW_MAX_BATCH)).collect();
            self.fleet.renewals_sent.fetch_add(batch.len() as u64, Relaxed);
            if !self.send(v1::drone_attach_request::Message::RenewKeys(v1::RenewKeys { keys: batch })).await {
                return false;
            }
        }
        true
    }

    async fn renewed(&mut self, answer: v1::RenewKeyResponse) -> bool {
        let Some(backend) = self.backends.get_mut(&answer.backend_id) else { return true };
        let sent = if backend.outstanding.is_empty() { None } else { Some(backend.outstanding.remove(0)) };
        if let Some(sent) = sent {
            self.fleet.renewal_answers.lock().expect("not poisoned").push(sent.elapsed().as_nanos() as u64);
        }
        if answer.renewed {
            if let Some(sent) = sent {
                backend.last_confirmed = backend.last_confirmed.max(sent);
                self.reschedule(&answer.backend_id);
            }
            true
        } else {
            self.fleet.renewals_refused.fetch_add(1, Relaxed);
            self.fleet.expired_by_drone.fetch_add(1, Relaxed);
            let (kind, reason) = (v1::TerminationKind::Hard, v1::TerminationReason::KeyExpired);
            self.end(&answer.backend_id, kind, reason, "key lease lost").await
        }
    }

    fn next_lease_check(&self) -> Option<Instant> {
        [self.deadlines.first().map(|(at, _)| *at), self.fresh_at, self.next_round].into_iter().flatten().min()
    }
}

fn status(
    state: v1::BackendState,
    kind: v1::TerminationKind,
    reason: v1::TerminationReason,
    message: &str,
) -> v1::BackendStatus {
    v1::BackendStatus {
        state: state as i32,
        time: Some(timestamp_to_proto(Utc::now())),
        termination_kind: kind as i32,
        termination_reason: reason as i32,
        exit_code: None,
        message: message.into(),
    }
}

/// How a stream ended.
enum Ended {
    /// The benchmark is over.
    Stopped,
    /// Refused, failed, or closed by the controller: attach again.
    Lost,
}

/// Runs `drone` on `channel` until `stop` turns true, attaching again whenever its stream ends.
pub async fn run(channel: Channel, drone: SimDrone, fleet: &Fleet, mut stop: watch::Receiver<bool>) {
    let (placeholder, _) = futures::channel::mpsc::unbounded();
    let mut session = Session {
        drone: &drone,
        fleet,
        out: placeholder,
        backends: HashMap::new(),
        deadlines: BTreeSet::new(),
        fresh: Vec::new(),
        fresh_at: None,
        next_round: None,
        round_every: None,
        actions_seen: HashSet::new(),
        ready_events: HashSet::new(),
        events: 0,
        unacked: BTreeMap::new(),
        ever_attached: false,
        failed: false,
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        let (welcomed, ended) = attach(&channel, &mut session, &mut stop).await;
        if welcomed {
            backoff = Duration::from_millis(200);
        } else if !session.ever_attached && !session.failed {
            session.failed = true;
            fleet.attach_failed.fetch_add(1, Relaxed);
        }
        match ended {
            Ended::Stopped => return,
            Ended::Lost if welcomed => {
                fleet.sessions_lost.fetch_add(1, Relaxed);
            }
            Ended::Lost => {}
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One stream: Hello, Welcome, then heartbeats, actions, events and renewals until it ends.
/// Whether it was welcomed, and how it ended.
async fn attach(channel: &Channel, session: &mut Session<'_>, stop: &mut watch::Receiver<bool>) -> (bool, Ended) {
    let (drone, fleet) = (session.drone, session.fleet);
    let (out, requests) = futures::channel::mpsc::unbounded();
    let hello = v1::DroneAttachRequest { message: Some(v1::drone_attach_request::Message::Hello(drone.hello())) };
    let _ = out.unbounded_send(hello);
    let mut inbound = match DroneServiceClient::new(channel.clone()).attach(requests).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            tracing::warn!(drone = %drone.name, %status, "attach refused");
            return (false, Ended::Lost);
        }
    };
    let interval = match inbound.message().await {
        Ok(Some(v1::DroneAttachResponse { message: Some(v1::drone_attach_response::Message::Welcome(welcome)) })) => {
            welcome.heartbeat_interval.as_ref().and_then(duration_from_proto).unwrap_or(Duration::from_secs(5))
        }
        other => {
            tracing::warn!(drone = %drone.name, ?other, "no welcome");
            return (false, Ended::Lost);
        }
    };
    if !session.reattached(out).await {
        return (true, Ended::Lost);
    }
    let first = Instant::now() + interval.mul_f64(drone.phase.clamp(0.0, 1.0));
    let mut heartbeat = tokio::time::interval_at(first, interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let lease_check = session.next_lease_check();
        let ok = tokio::select! {
            _ = stop.changed() => return (true, Ended::Stopped),
            _ = heartbeat.tick() => {
                fleet.heartbeats.fetch_add(1, Relaxed);
                let beat = v1::DroneHeartbeat {
                    local_time: Some(timestamp_to_proto(Utc::now())),
                    resources: Some(resources()),
                    backend_count: session.backends.len() as u32,
                };
                session.send(v1::drone_attach_request::Message::Heartbeat(beat)).await
            }
            _ = async { match lease_check {
                Some(at) => tokio::time::sleep_until(at).await,
                None => futures::future::pending().await,
            } } => session.leases().await,
            message = inbound.next() => {
                use v1::drone_attach_response::Message;
                match message {
                    Some(Ok(v1::DroneAttachResponse { message: Some(message) })) => match message {
                        Message::Action(action) => session.action(action).await,
                        Message::AckEvent(ack) => {
                            session.acked(&ack.event_id);
                            true
                        }
                        Message::RenewKeyResponse(answer) => session.renewed(answer).await,
                        Message::RenewKeysResponse(answers) => {
                            let mut ok = true;
                            for answer in answers.keys {
                                ok = ok && session.renewed(answer).await;
                            }
                            ok
                        }
                        Message::Welcome(_) => true,
                    },
                    Some(Ok(_)) => true,
                    Some(Err(status)) => {
                        tracing::warn!(drone = %drone.name, %status, "stream failed");
                        false
                    }
                    None => {
                        tracing::warn!(drone = %drone.name, "stream ended");
                        false
                    }
                }
            }
        };
        if !ok {
            return (true, if *stop.borrow() { Ended::Stopped } else { Ended::Lost });
        }
    }
}

/// Starts `count` drones named `sim-drone-{i}` of `capacity` over `connections` HTTP/2
/// connections (round robin, the connections spread over `controllers` the same way); they run
/// until `stop` turns true.
pub async fn start_fleet(
    controllers: &[crate::controller_proc::ControllerProc],
    fleet: &std::sync::Arc<Fleet>,
    stop: &watch::Receiver<bool>,
    count: usize,
    connections: usize,
    capacity: u32,
    cluster: &str,
) -> anyhow::Result<tokio::task::JoinSet<()>> {
    let mut channels = Vec::with_capacity(connections);
    for c in 0..connections.max(controllers.len()) {
        channels.push(controllers[c % controllers.len()].connect().await?);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let drone = SimDrone {
            name: format!("sim-drone-{i:05}"),
            cluster: cluster.into(),
            capacity,
            phase: (i % 1000) as f64 / 1000.0,
        };
        let (channel, fleet, stop) = (channels[i % channels.len()].clone(), fleet.clone(), stop.clone());
        tasks.spawn(async move { run(channel, drone, &fleet, stop).await });
    }
    Ok(tasks)
}

/// Waits until each of `count` drones is attached or failed to, or `timeout` passed; the time
/// until then.
pub async fn wait_settled(fleet: &Fleet, count: usize, since: Instant, timeout: Duration) -> Duration {
    loop {
        let settled = Fleet::get(&fleet.attached) + Fleet::get(&fleet.attach_failed);
        if settled as usize >= count || since.elapsed() >= timeout {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until all `count` drones are attached; the time it took, or an error when one could
/// not attach or `timeout` passed.
pub async fn wait_attached(fleet: &Fleet, count: usize, since: Instant, timeout: Duration) -> anyhow::Result<Duration> {
    let elapsed = wait_settled(fleet, count, since, timeout).await;
    let (attached, failed) = (Fleet::get(&fleet.attached), Fleet::get(&fleet.attach_failed));
    anyhow::ensure!(
        attached as usize == count,
        "{attached} of {count} drones attached within {elapsed:?} ({failed} failed to)"
    );
    Ok(elapsed)
}
