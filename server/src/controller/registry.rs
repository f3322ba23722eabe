//! The nodes attached to this controller, their heartbeats (in memory only), and the liveness
//! task that turns silence into UNHEALTHY and OFFLINE.
//!
//! One task owns every liveness write: heartbeats only touch memory, and the task compares what
//! each node's silence says its state should be with what it last wrote. That keeps the store
//! write rate independent of the heartbeat rate and leaves no two writers racing on one node.

use super::LivenessConfig;
use crate::store::{ActionWakeup, DynStore, NodeRegistration, NodeUpdate, QueuedAction, StoreError, UpdateCondition};
use crate::watch::LiveHeartbeat;
use chrono::{DateTime, Utc};
use hangar::domain::{Node, NodeFilter, NodeKind, NodeResources, NodeState};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why the controller closed a node's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// No heartbeat for `after` (the liveness config's `offline_after`).
    Silent { after: Duration },
    /// The same node attached again to this controller: the newest stream wins.
    Replaced,
    /// The store no longer records the node as attached here (another controller's sweep marked
    /// it OFFLINE, or it attached elsewhere): a liveness write found it so. The agent attaches
    /// again and so records itself, rather than staying attached to a node the store calls
    /// OFFLINE.
    NotHeld,
    /// The controller is shutting down.
    ShuttingDown,
}

/// Closes one attachment, once, recording why: the first cause wins.
#[derive(Debug, Clone, Default)]
struct Closer {
    token: CancellationToken,
    cause: Arc<OnceLock<CloseCause>>,
}

impl Closer {
    fn close(&self, cause: CloseCause) {
        // Set before the token is cancelled, so that whoever wakes on the token finds it.
        let _ = self.cause.set(cause);
        self.token.cancel();
    }

    async fn closed(&self) -> CloseCause {
        self.token.cancelled().await;
        *self.cause.get().expect("the cause is set before the token is cancelled")
    }
}

/// A node's attachment to this controller: ends when the controller closes it (see
/// [`closed`](Self::closed)) or when its stream ends.
#[derive(Debug, Clone)]
pub struct AttachedNode {
    pub node_id: String,
    /// For the heartbeat-age series, labelled by kind.
    kind: NodeKind,
    session: u64,
    closer: Closer,
    wake: Arc<Wake>,
}

/// How a commit reaches the one session it concerns (docs/design/drone-link.md#wake-ups).
#[derive(Debug, Default)]
struct Wake {
    notify: tokio::sync::Notify,
    /// What the wake-ups since the session last took it brought.
    mail: Mutex<Mail>,
    /// Store reads the session made for its node's actions: what a test counts to prove that a
    /// commit for another drone costs this session nothing.
    store_reads: AtomicU64,
}

/// What a drone's session was woken for: Spawns committed by this process, carried with their
/// backends' rows ([`ActionWakeup::Spawns`]), and whether some other action (or a wake-up that
/// named no action) wants a read of the store.
#[derive(Debug, Default)]
pub struct Mail {
    pub spawns: Vec<QueuedAction>,
    pub read: bool,
}

/// Spawns a session may hold before it takes them; past this (a session stuck on a drone that
/// does not read) they are dropped for a read, which finds them in the store.
const MAIL_SPAWNS: usize = 4_096;

impl Wake {
    fn read(&self) {
        self.mail.lock().unwrap().read = true;
        self.notify.notify_one();
    }
}

impl AttachedNode {
    /// Resolves when the controller closes this attachment, with the reason.
    pub async fn closed(&self) -> CloseCause {
        self.closer.closed().await
    }

    /// Resolves when a commit gave this node new actions (or may have: see
    /// [`ActionWakeup::All`]) since the last time it resolved. A wake-up that comes while
    /// nobody waits is kept for the next wait, so none is lost.
    pub async fn woken(&self) {
        self.wake.notify.notified().await
    }

    /// Takes what the wake-ups since the last call brought.
    pub fn take_mail(&self) -> Mail {
        std::mem::take(&mut *self.wake.mail.lock().unwrap())
    }

    /// Asks the session's next [`take_mail`](Self::take_mail) for a read of the store (the
    /// session's own poll).
    pub fn want_read(&self) {
        self.wake.mail.lock().unwrap().read = true;
    }

    /// Counts one store read made for this node's session.
    pub fn count_store_read(&self) {
        self.wake.store_reads.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Entry {
    session: u64,
    closer: Closer,
    wake: Arc<Wake>,
    last_heartbeat: Instant,
    last_heartbeat_at: DateTime<Utc>,
    /// `last_heartbeat_at`, for listings (the node's cell in [`Attached::live`]).
    live: Arc<LiveHeartbeat>,
    resources: NodeResources,
    backend_count: u32,
    /// Whether the last liveness write said the node is healthy.
    written_healthy: bool,
    /// Heartbeat time, resources and count as last written to the store.
    written_refresh: (DateTime<Utc>, NodeResources, u32),
    /// When the liveness pass next looks at this node's silence (its key in [`Attached::due`]).
    next_check: Instant,
    /// Queued in [`Attached::dirty`] for the next pass.
    dirty: bool,
}

/// The nodes attached here, and what the liveness pass must look at: O(changes) per pass, not
/// O(nodes) (docs/design/nodes-and-watch.md#liveness).
#[derive(Debug, Default)]
struct Attached {
    nodes: HashMap<String, Entry>,
    /// When each node's silence must next be looked at, by time: (when, session, node id). A
    /// heartbeat does not move its node's key (it only touches the entry); the pass that finds a
    /// node's time come re-queues it from its last heartbeat, so a node that heartbeats is looked
    /// at once per `unhealthy_after`, not once per pass.
    due: BTreeSet<(Instant, u64, String)>,
    /// Nodes whose state must be written at the next pass whatever their time: a heartbeat
    /// after an UNHEALTHY spell, a changed backend count, a write that failed.
    dirty: Vec<String>,
    /// Attaches between their first store write and their entry in `nodes`, by node identity
    /// (kind, cluster, name): the store may already say such a node is held here while memory
    /// does not know it yet, and the stale-node sweep must not take it for an orphan.
    attaching: HashMap<(NodeKind, String, String), usize>,
    /// The live heartbeat cell of each node attached here, by id. A node that attaches again
    /// gets the cell it had, so that the node view's versions that keep a reference to it stay
    /// right; a detached node's cell goes once no version keeps it.
    live: HashMap<String, Arc<LiveHeartbeat>>,
}

impl std::ops::Deref for Attached {
    type Target = HashMap<String, Entry>;
    fn deref(&self) -> &Self::Target {
        &self.nodes
    }
}

impl std::ops::DerefMut for Attached {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.nodes
    }
}

impl Attached {
    /// Looks at `id` again at `at` (replacing its earlier time).
    fn schedule(&mut self, id: &str, at: Instant) {
        let Some(entry) = self.nodes.get_mut(id) else { return };
        let old = (entry.next_check, entry.session, id.to_string());
        entry.next_check = at;
        let new = (at, entry.session, id.to_string());
        self.due.remove(&old);
        self.due.insert(new);
    }

    /// Queues `id` for the next pass.
    fn mark_dirty(&mut self, id: &str) {
        if let Some(entry) = self.nodes.get_mut(id)
            && !entry.dirty
        {
            entry.dirty = true;
            self.dirty.push(id.to_string());
        }
    }
}

pub struct NodeRegistry {
    store: DynStore,
    controller_id: String,
    config: LivenessConfig,
    next_session: AtomicU64,
    attached: Mutex<Attached>,
    /// Attaches in their store phase at once (see [`admit`](Self::admit)).
    admission: Arc<tokio::sync::Semaphore>,
    /// Attaches waiting for admission, and how many may.
    waiting: std::sync::atomic::AtomicUsize,
    queue_bound: usize,
}

/// Attaches in their store phase (the node's write, the first read of its actions) at once. An
/// attach holds one store connection at a time; this leaves the rest of a PostgreSQL pool (8)
/// to placements, renewals and reads while a fleet reconnects.
pub const ATTACH_CONCURRENCY: usize = 4;

/// Attaches that may wait for admission before more are refused: above any fleet one controller
/// takes (10,000 drones reconnecting after a restart wait in line, in order, none refused); past
/// it, RESOURCE_EXHAUSTED with a retry delay.
pub const ATTACH_QUEUE: usize = 20_000;

/// What a refused attach is told to wait: the drone's own jittered backoff adds to it.
const ATTACH_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Nodes one liveness transaction writes at most (see `check_liveness`).
const LIVENESS_WRITE_BATCH: usize = 500;

/// An attach of one node identity under way (see [`Attached::attaching`]); counted out when dropped.
struct Attaching<'a> {
    registry: &'a NodeRegistry,
    identity: (NodeKind, String, String),
}

impl Drop for Attaching<'_> {
    fn drop(&mut self) {
        let mut attached = self.registry.attached.lock().unwrap();
        if let Some(count) = attached.attaching.get_mut(&self.identity) {
            *count -= 1;
            if *count == 0 {
                attached.attaching.remove(&self.identity);
            }
        }
    }
}

/// An attach's turn at the store; the next one in line goes when it drops.
pub struct AttachPermit(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

/// The attach queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachQueueFull {
    pub limit: usize,
    pub retry_after: Duration,
}

impl NodeRegistry {
    pub fn new(store: DynStore, controller_id: String, config: LivenessConfig) -> Self {
        NodeRegistry {
            store,
            controller_id,
            config,
            next_session: AtomicU64::new(1),
            attached: Mutex::new(Attached::default()),
            admission: Arc::new(tokio::sync::Semaphore::new(ATTACH_CONCURRENCY)),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            queue_bound: ATTACH_QUEUE,
        }
    }

    /// Admission control for attaches (docs/design/drone-link.md#attach-storms): waits, in
    /// arrival order (the semaphore is fair), until fewer than [`ATTACH_CONCURRENCY`] attaches
    /// are in their store phase. A storm is then answered as fast as the store writes, without
    /// the pool timing attaches out; only past [`ATTACH_QUEUE`] waiting is an attach refused.
    pub async fn admit(&self) -> Result<AttachPermit, AttachQueueFull> {
        if let Ok(permit) = self.admission.clone().try_acquire_owned() {
            return Ok(AttachPermit(permit));
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue_bound {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(AttachQueueFull { limit: self.queue_bound, retry_after: ATTACH_RETRY_AFTER });
        }
        // Counted out again even if the caller gives up while waiting.
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(&self.waiting);
        let permit = self.admission.clone().acquire_owned().await.expect("the semaphore is never closed");
        Ok(AttachPermit(permit))
    }

    pub fn controller_id(&self) -> &str {
        &self.controller_id
    }

    pub fn config(&self) -> &LivenessConfig {
        &self.config
    }

    /// Records the node in the store as attached here. A previous attachment of the same node to
    /// this controller is closed: the newest stream wins.
    pub async fn attach(&self, registration: NodeRegistration) -> Result<(Node, AttachedNode), StoreError> {
        let attaching = self.attaching(&registration);
        let now = Utc::now();
        let node = self.store.attach_node(registration, &self.controller_id, now).await?;
        Ok(self.attached_now(node, now, attaching))
    }

    /// Marks an attach of `registration` as under way until the guard drops, which
    /// [`attached_now`](Self::attached_now) does once the node is in memory.
    fn attaching(&self, registration: &NodeRegistration) -> Attaching<'_> {
        let identity = (registration.kind, registration.cluster.clone(), registration.name.clone());
        *self.attached.lock().unwrap().attaching.entry(identity.clone()).or_default() += 1;
        Attaching { registry: self, identity }
    }

    /// The second half of [`attach`](Self::attach): `node` as the store recorded it at `now`
    /// goes into memory, and only then does the attach stop counting as under way.
    fn attached_now(&self, node: Node, now: DateTime<Utc>, attaching: Attaching<'_>) -> (Node, AttachedNode) {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let closer = Closer::default();
        let wake = Arc::new(Wake::default());
        let mut attached = self.attached.lock().unwrap();
        let live = attached.live.entry(node.id.clone()).or_default().clone();
        live.set(Some(now));
        let entry = Entry {
            session,
            closer: closer.clone(),
            wake: wake.clone(),
            last_heartbeat: Instant::now(),
            last_heartbeat_at: now,
            live,
            resources: node.resources,
            backend_count: node.backend_count,
            written_healthy: true,
            written_refresh: (now, node.resources, node.backend_count),
            next_check: Instant::now(),
            dirty: false,
        };
        let first_check = entry.last_heartbeat + self.config.unhealthy_after.min(self.config.offline_after);
        if let Some(previous) = attached.insert(node.id.clone(), entry) {
            tracing::info!(node_id = %node.id, "node attached again; closing its previous stream");
            previous.closer.close(CloseCause::Replaced);
        }
        attached.schedule(&node.id, first_check);
        // Cells of nodes that detached while versions kept them go once those versions have (an
        // attached node's entry holds its cell too).
        if attached.live.len() > 2 * attached.nodes.len() + 1024 {
            attached.live.retain(|_, cell| Arc::strong_count(cell) > 1);
        }
        drop(attached);
        drop(attaching);
        (node.clone(), AttachedNode { node_id: node.id, kind: node.kind, session, closer, wake })
    }

    /// A heartbeat: memory only. The liveness task persists what matters.
    pub fn heartbeat(&self, attached: &AttachedNode, resources: NodeResources, backend_count: u32) {
        let mut map = self.attached.lock().unwrap();
        if let Some(entry) = map.get_mut(&attached.node_id)
            && entry.session == attached.session
        {
            let now = Instant::now();
            crate::metrics::record_heartbeat(attached.kind, now.duration_since(entry.last_heartbeat));
            entry.last_heartbeat = now;
            entry.last_heartbeat_at = Utc::now();
            entry.live.set(Some(entry.last_heartbeat_at));
            entry.resources = resources;
            entry.backend_count = backend_count;
            // Back from an UNHEALTHY spell, or a new count: written at the next pass, not when
            // the node's time next comes.
            if !entry.written_healthy || backend_count != entry.written_refresh.2 {
                map.mark_dirty(&attached.node_id);
            }
        }
    }

    /// Sets `last_heartbeat_at` of the nodes attached to this controller to the live time held
    /// here, for GetNode and ListNodes: the store's copy is refreshed only every
    /// `refresh_interval`, so it can be that much older than the last heartbeat. Nodes held by
    /// another controller keep the store's copy (docs/design/nodes-and-watch.md#liveness). One
    /// lock and a map lookup per node, no store read, so a page of a large listing stays cheap;
    /// nothing is written, so no revision and no watch event.
    pub fn show_live_heartbeats(&self, nodes: &mut [Node]) {
        let attached = self.attached.lock().unwrap();
        for node in nodes.iter_mut().filter(|n| n.controller_id == self.controller_id) {
            if let Some(entry) = attached.get(&node.id) {
                node.last_heartbeat_at = node.last_heartbeat_at.max(entry.last_heartbeat_at);
            }
        }
    }

    /// [`Self::show_live_heartbeats`] for nodes read elsewhere: the heartbeat time this
    /// controller shows for each of `nodes`, under one lock.
    pub fn live_heartbeat_times<'a>(&self, nodes: impl IntoIterator<Item = &'a Node>) -> Vec<DateTime<Utc>> {
        let attached = self.attached.lock().unwrap();
        let live = |node: &Node| match attached.get(&node.id) {
            Some(entry) if node.controller_id == self.controller_id => {
                node.last_heartbeat_at.max(entry.last_heartbeat_at)
            }
            _ => node.last_heartbeat_at,
        };
        nodes.into_iter().map(live).collect()
    }

    /// [`Self::live_heartbeat_times`] for the node view's versions, each with its cache of
    /// whether it is held here (`held`): the same times, but a version looked up once is read
    /// from its cell thereafter, without the lock, the map or the comparison of controller ids,
    /// each a cache miss per node in a page of a thousand (BENCHMARKS.md, "list").
    pub fn listed_heartbeat_times<'a>(
        &self,
        nodes: impl IntoIterator<Item = (&'a Node, &'a OnceLock<Option<Arc<LiveHeartbeat>>>)>,
    ) -> Vec<DateTime<Utc>> {
        // Taken at the first version not looked up yet, and kept for the rest of the page.
        let mut attached = None;
        let mut time = |(node, held): (&Node, &OnceLock<Option<Arc<LiveHeartbeat>>>)| {
            let cell = match held.get() {
                Some(cell) => cell.as_deref(),
                None if node.controller_id != self.controller_id => held.get_or_init(|| None).as_deref(),
                None => {
                    let map = attached.get_or_insert_with(|| self.attached.lock().unwrap());
                    // Not cached while the node has no cell: it may be attaching here.
                    map.live.get(&node.id).map(|cell| {
                        let _ = held.set(Some(cell.clone()));
                        &**cell
                    })
                }
            };
            match cell.and_then(LiveHeartbeat::get) {
                Some(live) => node.last_heartbeat_at.max(live),
                None => node.last_heartbeat_at,
            }
        };
        nodes.into_iter().map(&mut time).collect()
    }

    /// The node's stream ended: it is OFFLINE, unless a newer attachment replaced this one or
    /// another controller holds it by now.
    pub async fn detach(&self, attached: &AttachedNode) {
        let removed = {
            let mut map = self.attached.lock().unwrap();
            let removed = match map.get(&attached.node_id) {
                Some(entry) if entry.session == attached.session => map.remove(&attached.node_id),
                _ => None,
            };
            if let Some(entry) = &removed {
                entry.live.set(None);
                // Kept by the map and this entry only: no version of the node refers to it.
                if Arc::strong_count(&entry.live) == 2 {
                    map.live.remove(&attached.node_id);
                }
            }
            removed
        };
        let Some(entry) = removed else { return };
        let update = NodeUpdate {
            state: Some(NodeState::Offline),
            controller_id: Some(String::new()),
            last_heartbeat_at: Some(entry.last_heartbeat_at),
            resources: Some(entry.resources),
            backend_count: Some(entry.backend_count),
            ..NodeUpdate::default()
        };
        match self.store.update_node(&attached.node_id, update, self.held_by_me()).await {
            Ok(_) => tracing::info!(node_id = %attached.node_id, "node offline: its stream ended"),
            Err(err) => {
                tracing::warn!(node_id = %attached.node_id, error = %err, "could not record node offline; the stale-node sweep will")
            }
        }
    }

    /// Closes every attachment (shutdown).
    pub fn close_all(&self) {
        for entry in self.attached.lock().unwrap().values() {
            entry.closer.close(CloseCause::ShuttingDown);
        }
    }

    /// Store reads the session attached here for `node_id` made for its actions (`None`: not
    /// attached here).
    pub fn session_store_reads(&self, node_id: &str) -> Option<u64> {
        self.attached.lock().unwrap().get(node_id).map(|entry| entry.wake.store_reads.load(Ordering::Relaxed))
    }

    /// Wakes the sessions of the drones named in `wakeup` that are attached here.
    pub fn wake(&self, wakeup: &ActionWakeup) {
        let attached = self.attached.lock().unwrap();
        match wakeup {
            ActionWakeup::Drones(drones) => {
                for drone in drones.iter() {
                    if let Some(entry) = attached.get(drone) {
                        entry.wake.read();
                    }
                }
            }
            ActionWakeup::All => {
                for entry in attached.values() {
                    entry.wake.read();
                }
            }
            ActionWakeup::Spawns(spawns) => {
                for spawn in spawns.iter() {
                    let Some(entry) = attached.get(&spawn.action.drone_id) else { continue };
                    let mut mail = entry.wake.mail.lock().unwrap();
                    if mail.spawns.len() < MAIL_SPAWNS {
                        mail.spawns.push(spawn.clone());
                    } else {
                        mail.spawns = Vec::new();
                        mail.read = true;
                    }
                    drop(mail);
                    entry.wake.notify.notify_one();
                }
            }
        }
    }

    /// Routes the store's action wake-ups to the sessions they concern until `shutdown`: one
    /// task and a map lookup per named drone, in place of every session waking on every commit.
    pub async fn run_wakeups(
        &self,
        mut wakeups: tokio::sync::broadcast::Receiver<ActionWakeup>,
        shutdown: CancellationToken,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let wakeup = tokio::select! {
                _ = shutdown.cancelled() => return,
                wakeup = wakeups.recv() => wakeup,
            };
            match wakeup {
                Ok(wakeup) => self.wake(&wakeup),
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "wake-ups lagged; waking every session");
                    self.wake(&ActionWakeup::All);
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// The floor under a missed wake-up (a NOTIFY lost with a listener's connection, an older
    /// controller's payload that names no drone): every `session_poll`, one store read lists the
    /// drones with pending actions and wakes the sessions of those attached here. One read per
    /// interval for the whole controller, instead of one per session (2,000 reads a second at
    /// 10,000 drones and 5 s).
    pub async fn run_action_poll(&self, store: DynStore, shutdown: CancellationToken) {
        let mut poll = tokio::time::interval(self.config().session_poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = poll.tick() => {}
            }
            match store.drones_with_pending_actions().await {
                Ok(drones) if drones.is_empty() => {}
                Ok(drones) => self.wake(&ActionWakeup::Drones(drones.into())),
                Err(err) => {
                    tracing::warn!(error = %err, "reading the drones with pending actions failed; waking every session");
                    self.wake(&ActionWakeup::All);
                }
            }
        }
    }

    pub fn attached_count(&self) -> usize {
        self.attached.lock().unwrap().len()
    }

    fn held_by_me(&self) -> UpdateCondition {
        UpdateCondition::HeldBy(self.controller_id.clone())
    }

    /// One liveness pass: close silent streams, write health flips, refresh heartbeat figures
    /// that are due. Store errors are logged and retried on the next pass.
    pub async fn check_liveness(&self, refresh_due: bool) {
        let now = Instant::now();
        let mut writes = Vec::new();
        {
            let mut map = self.attached.lock().unwrap();
            // What this pass looks at: nodes whose time came, nodes marked dirty, and on a
            // refresh every node (their heartbeat figures are written then anyway).
            let mut look: Vec<String> = std::mem::take(&mut map.dirty);
            while let Some(first) = map.due.first()
                && first.0 <= now
            {
                let (when, session, id) = map.due.pop_first().expect("not empty");
                if map.get(&id).is_some_and(|e| e.session == session && e.next_check == when) {
                    look.push(id);
                }
            }
            if refresh_due {
                look = map.keys().cloned().collect();
            }
            look.sort_unstable();
            look.dedup();
            for id in look {
                let Some(entry) = map.get_mut(&id) else { continue };
                entry.dirty = false;
                let silence = now.duration_since(entry.last_heartbeat);
                if silence >= self.config.offline_after {
                    tracing::warn!(node_id = %id, silence_ms = silence.as_millis() as u64, "no heartbeat; closing the node's stream");
                    entry.closer.close(CloseCause::Silent { after: self.config.offline_after });
                    continue;
                }
                let healthy = silence < self.config.unhealthy_after;
                let refresh = (entry.last_heartbeat_at, entry.resources, entry.backend_count);
                let mut update = NodeUpdate::default();
                if healthy != entry.written_healthy {
                    // READY is normalized to DRAINING by the store when the node is draining.
                    update.state = Some(if healthy { NodeState::Ready } else { NodeState::Unhealthy });
                    entry.written_healthy = healthy;
                }
                // A changed backend count is rare and is what operators look at: write it now,
                // not at the next refresh.
                let count_changed = refresh.2 != entry.written_refresh.2;
                if (refresh_due || count_changed || update.state.is_some()) && refresh != entry.written_refresh {
                    update.last_heartbeat_at = Some(refresh.0);
                    update.resources = Some(refresh.1);
                    update.backend_count = Some(refresh.2);
                    entry.written_refresh = refresh;
                }
                let session = entry.session;
                // Next look: when it would turn UNHEALTHY, or (already unhealthy) OFFLINE.
                let next = entry.last_heartbeat
                    + if healthy {
                        self.config.unhealthy_after.min(self.config.offline_after)
                    } else {
                        self.config.offline_after
                    };
                map.schedule(&id, next);
                if update != NodeUpdate::default() {
                    writes.push((id, session, update));
                }
            }
        }
        for (id, _, update) in &writes {
            if let Some(state) = update.state {
                tracing::info!(node_id = %id, ?state, "node liveness changed");
            }
        }
        // A refresh writes every attached node: in transactions of a bounded size rather than one
        // per node (10,000 drones: 20 commits instead of 10,000), each short enough not to hold
        // the write lock against Connects for long.
        while !writes.is_empty() {
            let batch: Vec<_> = writes.drain(..writes.len().min(LIVENESS_WRITE_BATCH)).collect();
            let ids: Vec<(String, u64)> = batch.iter().map(|(id, session, _)| (id.clone(), *session)).collect();
            let batch = batch.into_iter().map(|(id, _, update)| (id, update)).collect();
            match self.store.update_nodes(batch, self.held_by_me()).await {
                Ok(results) => {
                    for ((id, session), result) in ids.iter().zip(results) {
                        if result.is_none() {
                            self.close_not_held(id, *session);
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(nodes = ids.len(), error = %err, "could not record node liveness; retrying next pass");
                    for (id, _) in &ids {
                        self.forget_written(id);
                    }
                }
            }
        }
    }

    /// A liveness write for `node_id` found it no longer held here: closes its attachment of
    /// `session` (not a newer one), so the agent attaches again.
    fn close_not_held(&self, node_id: &str, session: u64) {
        let attached = self.attached.lock().unwrap();
        if let Some(entry) = attached.get(node_id)
            && entry.session == session
        {
            tracing::warn!(%node_id, "the store no longer records this node as attached here; closing its stream");
            entry.closer.close(CloseCause::NotHeld);
        }
    }

    /// After a failed write, make the next pass write everything again.
    fn forget_written(&self, node_id: &str) {
        let mut map = self.attached.lock().unwrap();
        if let Some(entry) = map.get_mut(node_id) {
            entry.written_healthy = !entry.written_healthy;
            entry.written_refresh.2 = u32::MAX;
        }
        map.mark_dirty(node_id);
    }

    /// Marks OFFLINE the nodes that the store says are attached but whose controller stopped
    /// refreshing them (it crashed or lost its database connection), and nodes this controller
    /// holds in the store but no longer in memory. Returns how many were marked.
    ///
    /// `in_reach` is how long this controller has reached the store without a break
    /// ([`StoreContact::in_reach_for`]). Other controllers' nodes are judged only once it is
    /// at least [`LivenessConfig::stale_after`]: after a database outage every controller comes
    /// back with its nodes' heartbeats as old as the outage, and the first to return would
    /// otherwise take every other controller's nodes away before their holders could refresh
    /// them (their drones would all have to attach again, and for that moment the store would
    /// call attached drones OFFLINE).
    ///
    /// [`StoreContact::in_reach_for`]: super::StoreContact::in_reach_for
    ///
    /// Each decision is made from one read of the node and applied only if the node is still as
    /// read (its revision): a node that re-attached or was refreshed between the read and the
    /// write (after a database outage, say, when reads, attaches and writes all resume at once)
    /// is left alone. A node this controller is attaching right now is no orphan, even though
    /// the store already names this controller before the node is in memory.
    pub async fn sweep_stale(&self, in_reach: std::time::Duration) -> Result<usize, StoreError> {
        let filter = NodeFilter {
            states: vec![NodeState::Ready, NodeState::Draining, NodeState::Unhealthy],
            ..NodeFilter::default()
        };
        let stale_after = self.config.stale_after();
        let stale_before =
            (in_reach >= stale_after).then(|| Utc::now() - chrono::Duration::from_std(stale_after).unwrap_or_default());
        let mut after: Option<String> = None;
        let mut marked = 0;
        loop {
            let page = self.store.list_nodes(&filter, None, after.as_deref(), 500).await?;
            for node in &page.nodes {
                if self.sweep_node(node, stale_before).await? {
                    marked += 1;
                }
            }
            match (page.more, page.nodes.last()) {
                (true, Some(last)) => after = Some(last.id.clone()),
                _ => return Ok(marked),
            }
        }
    }

    /// The sweep on `node` as it was read: marked OFFLINE if [`sweep_verdict`] says so and it
    /// has not changed since. Whether it was marked.
    ///
    /// [`sweep_verdict`]: Self::sweep_verdict
    async fn sweep_node(&self, node: &Node, stale_before: Option<DateTime<Utc>>) -> Result<bool, StoreError> {
        let Some(why) = self.sweep_verdict(node, stale_before) else { return Ok(false) };
        let marked = self.mark_swept(node).await?;
        if marked {
            tracing::warn!(node_id = %node.id, controller = %node.controller_id, why, "node offline: its controller stopped refreshing it");
        }
        Ok(marked)
    }

    /// Why `node`, as read, is to be marked OFFLINE: an orphan (held here in the store, neither
    /// in memory nor being attached) or stale (held by another controller, heartbeat older than
    /// `stale_before`; `None`: other controllers' nodes are not judged now).
    fn sweep_verdict(&self, node: &Node, stale_before: Option<DateTime<Utc>>) -> Option<&'static str> {
        if node.controller_id != self.controller_id {
            return stale_before.is_some_and(|before| node.last_heartbeat_at < before).then_some("stale");
        }
        let attached = self.attached.lock().unwrap();
        let identity = (node.kind, node.cluster.clone(), node.name.clone());
        let orphaned = !attached.contains_key(&node.id) && !attached.attaching.contains_key(&identity);
        orphaned.then_some("orphaned")
    }

    /// Marks `node` OFFLINE if it is still exactly as read (see [`UpdateCondition::Unchanged`]).
    async fn mark_swept(&self, node: &Node) -> Result<bool, StoreError> {
        let update =
            NodeUpdate { state: Some(NodeState::Offline), controller_id: Some(String::new()), ..NodeUpdate::default() };
        let condition = UpdateCondition::Unchanged { controller: node.controller_id.clone(), revision: node.revision };
        let marked = self.store.update_node(&node.id, update, condition).await?.is_some();
        if !marked {
            tracing::debug!(node_id = %node.id, "node changed since the sweep read it; left alone");
        }
        Ok(marked)
    }

    /// Runs liveness passes until `shutdown`.
    pub async fn run_liveness(&self, contact: Arc<super::StoreContact>, shutdown: CancellationToken) {
        let pass = (self.config.heartbeat_interval / 2).min(std::time::Duration::from_secs(1));
        let mut ticker = tokio::time::interval(pass);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_refresh = Instant::now();
        let mut last_sweep = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let refresh_due = last_refresh.elapsed() >= self.config.refresh_interval;
            if refresh_due {
                last_refresh = Instant::now();
            }
            self.check_liveness(refresh_due).await;
            if last_sweep.elapsed() >= self.config.offline_after {
                last_sweep = Instant::now();
                if let Err(err) = self.sweep_stale(contact.in_reach_for()).await {
                    tracing::warn!(error = %err, "stale-node sweep failed; retrying later");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use hangar::domain::NodeKind;
    use std::sync::Arc;

    async fn registry(config: LivenessConfig) -> (NodeRegistry, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&crate::store::sqlite_url(&dir.path().join("hangar.db"))).await.expect("store");
        (NodeRegistry::new(Arc::new(store), "ctl-test".into(), config), dir)
    }

    fn drone(name: &str) -> NodeRegistration {
        NodeRegistration {
            kind: NodeKind::Drone,
            name: name.into(),
            cluster: "default".into(),
            pool: "default".into(),
            labels: Default::default(),
            version: String::new(),
            backend_capacity: 1,
            resources: NodeResources::default(),
        }
    }

    /// The cause, if the attachment is closed by now.
    fn closed_now(attached: &AttachedNode) -> Option<CloseCause> {
        futures::FutureExt::now_or_never(attached.closed())
    }

    #[tokio::test]
    async fn a_newer_stream_of_the_same_node_closes_the_older_one_as_replaced() {
        let (registry, _dir) = registry(LivenessConfig::default()).await;
        let (_, first) = registry.attach(drone("d1")).await.unwrap();
        assert_eq!(closed_now(&first), None);
        let (_, second) = registry.attach(drone("d1")).await.unwrap();
        assert_eq!(closed_now(&first), Some(CloseCause::Replaced));
        assert_eq!(closed_now(&second), None);
    }

    #[tokio::test]
    async fn a_silent_node_is_closed_as_silent_and_the_first_cause_stays() {
        let config = LivenessConfig { offline_after: Duration::ZERO, ..LivenessConfig::default() };
        let (registry, _dir) = registry(config).await;
        let (_, attached) = registry.attach(drone("d1")).await.unwrap();
        registry.check_liveness(false).await;
        assert_eq!(closed_now(&attached), Some(CloseCause::Silent { after: Duration::ZERO }));
        registry.close_all();
        assert_eq!(closed_now(&attached), Some(CloseCause::Silent { after: Duration::ZERO }));
    }

    #[tokio::test]
    async fn live_heartbeats_replace_the_stored_time_only_for_nodes_attached_here() {
        let (registry, _dir) = registry(LivenessConfig::default()).await;
        let (node, attached) = registry.attach(drone("d1")).await.unwrap();
        registry.heartbeat(&attached, NodeResources::default(), 0);
        let live = registry.attached.lock().unwrap()[&node.id].last_heartbeat_at;
        // As a listing might read them: a store copy a refresh interval old.
        let stored = Node { last_heartbeat_at: live - chrono::Duration::seconds(30), ..node };
        let elsewhere = Node { controller_id: "ctl-other".into(), ..stored.clone() };
        let unknown = Node { id: "not-attached".into(), ..stored.clone() };
        let mut nodes = [stored.clone(), elsewhere.clone(), unknown.clone()];
        registry.show_live_heartbeats(&mut nodes);
        assert_eq!(nodes[0].last_heartbeat_at, live, "attached here: the live time");
        assert_eq!(nodes[1], elsewhere, "held by another controller: the stored copy");
        assert_eq!(nodes[2], unknown, "not attached here: the stored copy");
    }

    #[tokio::test]
    async fn a_listed_version_shows_the_same_time_as_a_lookup_through_detach_and_a_new_attachment() {
        let (registry, _dir) = registry(LivenessConfig::default()).await;
        let (node, attached) = registry.attach(drone("d1")).await.unwrap();
        let stored = Node { last_heartbeat_at: node.last_heartbeat_at - chrono::Duration::seconds(30), ..node };
        let elsewhere = Node { controller_id: "ctl-other".into(), ..stored.clone() };
        let unknown = Node { id: "not-attached".into(), ..stored.clone() };
        // Each as one version of the node view, with its cache of the live cell.
        let versions = [stored.clone(), elsewhere, unknown].map(|node| (node, OnceLock::new()));
        let listed = || registry.listed_heartbeat_times(versions.iter().map(|(node, held)| (node, held)));
        let looked_up = || registry.live_heartbeat_times(versions.iter().map(|(node, _)| node));

        registry.heartbeat(&attached, NodeResources::default(), 0);
        let live = registry.attached.lock().unwrap()[&stored.id].last_heartbeat_at;
        assert_eq!(listed(), [live, stored.last_heartbeat_at, stored.last_heartbeat_at]);
        assert!(versions[0].1.get().is_some_and(Option::is_some), "held here: the cell is kept");
        assert!(versions[1].1.get().is_some_and(Option::is_none), "held elsewhere: known for good");
        assert!(versions[2].1.get().is_none(), "no cell yet: looked up again next time");

        registry.heartbeat(&attached, NodeResources::default(), 0);
        assert_eq!(listed(), looked_up(), "a later heartbeat, read from the kept cell");
        assert!(listed()[0] > live);

        registry.detach(&attached).await;
        assert_eq!(listed(), looked_up(), "detached: the stored time");
        assert_eq!(listed()[0], stored.last_heartbeat_at);

        let (_, again) = registry.attach(drone("d1")).await.unwrap();
        registry.heartbeat(&again, NodeResources::default(), 0);
        assert_eq!(listed(), looked_up(), "attached again: the kept cell is the node's cell again");
        assert!(listed()[0] > stored.last_heartbeat_at);
    }

    #[tokio::test]
    async fn attaches_past_the_concurrency_wait_in_order_and_only_past_the_queue_bound_are_refused() {
        use futures::FutureExt;
        let (mut registry, _dir) = registry(LivenessConfig::default()).await;
        registry.queue_bound = 2;
        let mut held: Vec<_> =
            (0..ATTACH_CONCURRENCY).map(|_| registry.admit().now_or_never().unwrap().unwrap()).collect();
        // Two wait in line; a third is refused with a delay to retry after.
        let mut first = Box::pin(registry.admit());
        let mut second = Box::pin(registry.admit());
        assert!((&mut first).now_or_never().is_none());
        assert!((&mut second).now_or_never().is_none());
        let refused = registry.admit().now_or_never().expect("answered at once").err().expect("refused");
        assert_eq!(refused, AttachQueueFull { limit: 2, retry_after: ATTACH_RETRY_AFTER });
        // One finishes its store phase: the first in line goes, the second still waits.
        drop(held.pop());
        assert!((&mut second).now_or_never().is_none());
        let _first = (&mut first).now_or_never().expect("admitted").unwrap();
        // A waiter that gives up leaves the line: room for one more again.
        drop(second);
        let mut third = Box::pin(registry.admit());
        assert!((&mut third).now_or_never().is_none());
    }

    #[tokio::test]
    async fn a_wakeup_reaches_only_the_sessions_it_names_and_is_kept_until_awaited() {
        use futures::FutureExt;
        let (registry, _dir) = registry(LivenessConfig::default()).await;
        let (a_node, a) = registry.attach(drone("a")).await.unwrap();
        let (_, b) = registry.attach(drone("b")).await.unwrap();
        registry.wake(&ActionWakeup::Drones(vec![a_node.id.clone(), "not-here".to_string()].into()));
        assert!(a.woken().now_or_never().is_some(), "A was named");
        assert!(b.woken().now_or_never().is_none(), "B was not");
        assert!(a.woken().now_or_never().is_none(), "one wake-up, one read");
        registry.wake(&ActionWakeup::All);
        assert!(a.woken().now_or_never().is_some() && b.woken().now_or_never().is_some());
    }

    #[tokio::test]
    async fn a_pass_looks_only_at_nodes_whose_time_came_and_a_heartbeat_after_silence_is_written_at_once() {
        let config = LivenessConfig { unhealthy_after: Duration::from_millis(50), ..LivenessConfig::default() };
        let (registry, _dir) = registry(config).await;
        let (node, attached) = registry.attach(drone("d1")).await.unwrap();
        // Nothing is due before `unhealthy_after`: a pass looks at nobody.
        registry.check_liveness(false).await;
        assert_eq!(registry.attached.lock().unwrap().due.len(), 1);
        tokio::time::sleep(Duration::from_millis(80)).await;
        registry.check_liveness(false).await;
        let stored = registry.store.get_node(&node.id).await.unwrap().unwrap();
        assert_eq!(stored.state, NodeState::Unhealthy);
        // Its next look is at OFFLINE time (30 s); the heartbeat marks it for the next pass.
        registry.heartbeat(&attached, NodeResources::default(), 0);
        registry.check_liveness(false).await;
        let stored = registry.store.get_node(&node.id).await.unwrap().unwrap();
        assert_eq!(stored.state, NodeState::Ready);
        let map = registry.attached.lock().unwrap();
        assert_eq!((map.due.len(), map.dirty.len()), (1, 0), "one key per node, nothing left queued");
    }

    #[tokio::test]
    async fn shutdown_closes_every_stream_as_shutting_down() {
        let (registry, _dir) = registry(LivenessConfig::default()).await;
        let (_, d1) = registry.attach(drone("d1")).await.unwrap();
        let (_, d2) = registry.attach(drone("d2")).await.unwrap();
        registry.close_all();
        assert_eq!(closed_now(&d1), Some(CloseCause::ShuttingDown));
        assert_eq!(closed_now(&d2), Some(CloseCause::ShuttingDown));
    }

    /// What the store says of the node named `name`.
    async fn stored(registry: &NodeRegistry, id: &str) -> Node {
        registry.store.get_node(id).await.unwrap().expect("the node is stored")
    }

    fn long_ago() -> DateTime<Utc> {
        Utc::now() - chrono::Duration::hours(1)
    }

    /// The ordering seen after a PostgreSQL outage: the store says a drone is held by this
    /// controller (its stream ended during the outage and the OFFLINE write failed), the sweep
    /// reads it and finds an orphan, the drone re-attaches here, and only then does the sweep
    /// write. The write must not land: the node is not as the sweep read it.
    #[tokio::test]
    async fn an_orphan_verdict_made_before_a_reattach_is_not_applied_after_it() {
        let (registry, _dir) = registry(LivenessConfig::default()).await;
        let left_behind = registry.store.attach_node(drone("d1"), "ctl-test", Utc::now()).await.unwrap();
        let read = stored(&registry, &left_behind.id).await;
        assert_eq!(registry.sweep_verdict(&read, Some(long_ago())), Some("orphaned"));

        let (_, session) = registry.attach(drone("d1")).await.unwrap();
        assert!(!registry.mark_swept(&read).await.unwrap(), "the verdict on the old read is dropped");

        let node = stored(&registry, &left_behind.id).await;
        assert_eq!((node.state, node.controller_id.as_str()), (NodeState::Ready, "ctl-test"), "still attached here");
        assert_eq!(closed_now(&session), None);
        assert_eq!(
            registry.sweep_stale(std::time::Duration::MAX).await.unwrap(),
            0,
            "and a new sweep finds nothing to do"
        );
    }

    /// The same for a node of another controller whose heartbeat looked stale when read (no
    /// controller could refresh it during the outage) and that re-attached to it since.
    #[tokio::test]
    async fn a_stale_verdict_made_before_a_reattach_is_not_applied_after_it() {
        let (registry, _dir) = registry(LivenessConfig::default()).await;
        let far = registry.store.attach_node(drone("far"), "ctl-other", long_ago()).await.unwrap();
        let read = stored(&registry, &far.id).await;
        let stale_before = Utc::now() - chrono::Duration::minutes(5);
        assert_eq!(registry.sweep_verdict(&read, Some(stale_before)), Some("stale"));

        registry.store.attach_node(drone("far"), "ctl-other", Utc::now()).await.unwrap();
        assert!(!registry.sweep_node(&read, Some(stale_before)).await.unwrap(), "re-attached since the read");
        assert_eq!(stored(&registry, &far.id).await.state, NodeState::Ready);
    }

    /// The store already names this controller while the attach has not put the node in memory
    /// yet: a sweep that reads in between finds no orphan.
    #[tokio::test]
    async fn a_node_between_its_attach_write_and_memory_is_no_orphan() {
        let (registry, _dir) = registry(LivenessConfig::default()).await;
        let attaching = registry.attaching(&drone("d1"));
        let now = Utc::now();
        let written = registry.store.attach_node(drone("d1"), "ctl-test", now).await.unwrap();

        assert_eq!(
            registry.sweep_stale(std::time::Duration::MAX).await.unwrap(),
            0,
            "no orphan while the attach is under way"
        );
        assert_eq!(stored(&registry, &written.id).await.state, NodeState::Ready);

        let (_, session) = registry.attached_now(written.clone(), now, attaching);
        assert_eq!(registry.sweep_stale(std::time::Duration::MAX).await.unwrap(), 0);
        assert_eq!(stored(&registry, &written.id).await.state, NodeState::Ready);
        assert_eq!(closed_now(&session), None);
    }

    /// A controller back from a database outage finds every other controller's nodes with
    /// heartbeats as old as the outage: it leaves them to their holders until it has reached the
    /// store for as long as a live holder takes to refresh them; its own orphans it sweeps at once.
    #[tokio::test]
    async fn back_from_an_outage_a_controller_waits_before_it_calls_other_controllers_nodes_stale() {
        let config = LivenessConfig::default();
        let (registry, _dir) = registry(config).await;
        let theirs = registry.store.attach_node(drone("theirs"), "ctl-other", long_ago()).await.unwrap();
        let orphan = registry.store.attach_node(drone("orphan"), "ctl-test", Utc::now()).await.unwrap();

        let just_back = config.stale_after() - std::time::Duration::from_millis(1);
        assert_eq!(registry.sweep_stale(just_back).await.unwrap(), 1, "only the orphan");
        assert_eq!(stored(&registry, &orphan.id).await.state, NodeState::Offline);
        let node = stored(&registry, &theirs.id).await;
        assert_eq!((node.state, node.controller_id.as_str()), (NodeState::Ready, "ctl-other"), "left to its holder");

        assert_eq!(registry.sweep_stale(config.stale_after()).await.unwrap(), 1, "its holder had its chance");
        assert_eq!(stored(&registry, &theirs.id).await.state, NodeState::Offline);
    }

    /// Orphans and stale nodes that did not change since the read are still swept; a fresh
    /// node of another controller is not.
    #[tokio::test]
    async fn the_sweep_still_marks_orphans_and_stale_nodes_that_did_not_change() {
        let (registry, _dir) = registry(LivenessConfig::default()).await;
        let fresh = registry.store.attach_node(drone("fresh"), "ctl-other", Utc::now()).await.unwrap();
        let gone = registry.store.attach_node(drone("gone"), "ctl-crashed", long_ago()).await.unwrap();
        let orphan = registry.store.attach_node(drone("orphan"), "ctl-test", Utc::now()).await.unwrap();
        assert_eq!(registry.sweep_stale(std::time::Duration::MAX).await.unwrap(), 2);
        assert_eq!(stored(&registry, &gone.id).await.state, NodeState::Offline);
        assert_eq!(stored(&registry, &orphan.id).await.state, NodeState::Offline);
        assert_eq!(stored(&registry, &fresh.id).await.state, NodeState::Ready);
    }

    /// Another controller's sweep marked an attached node OFFLINE (its decision was right by
    /// what it could see: no refresh during a long database outage). The next liveness write of
    /// the holder finds the node no longer held and closes the stream, so the drone attaches
    /// again instead of staying attached to a node the store calls OFFLINE.
    #[tokio::test]
    async fn a_liveness_write_that_finds_the_node_taken_away_closes_its_stream() {
        let (registry, _dir) = registry(LivenessConfig::default()).await;
        let (node, session) = registry.attach(drone("d1")).await.unwrap();
        let (_, other) = registry.attach(drone("d2")).await.unwrap();
        let swept =
            NodeUpdate { state: Some(NodeState::Offline), controller_id: Some(String::new()), ..NodeUpdate::default() };
        let condition = UpdateCondition::Unchanged { controller: "ctl-test".into(), revision: node.revision };
        registry.store.update_node(&node.id, swept, condition).await.unwrap().expect("swept");

        registry.heartbeat(&session, NodeResources::default(), 0);
        registry.heartbeat(&other, NodeResources::default(), 0);
        registry.check_liveness(true).await;
        assert_eq!(closed_now(&session), Some(CloseCause::NotHeld));
        assert_eq!(closed_now(&other), None, "a node still held here keeps its stream");
    }
}
