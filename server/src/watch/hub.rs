//! The hub: tails the change log and fans changes out. Node and backend changes are two kinds
//! of entry in one log, so one hub, one ring and one cursor serve `WatchNodes` and
//! `WatchBackends` alike; each stream skips the kind it does not watch.

use crate::scheduler;
use crate::store::{Change, ChangeKind, DroneSlot, DynStore, LocalCommit, NodeChange, Revision, StoreError};
use chrono::{DateTime, Utc};
use hangar::domain::{Backend, BackendState, Node, NodeFilter};
use hangar::v1;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchConfig {
    /// Changes queued per watcher. A watcher whose queue is full leaves the live fan-out and
    /// catches up from the ring (at most this many changes at a time), then rejoins.
    pub watcher_buffer: usize,
    /// Recent changes kept in memory, shared by every watcher: for watchers catching up, and so
    /// that resuming watchers rarely read the store. A watcher that falls further behind than
    /// the ring reaches is cut off (RESOURCE_EXHAUSTED with its last revision).
    pub ring_capacity: usize,
    /// Poll the store this often even without a notification (a missed NOTIFY, a listener that
    /// reconnected): a bound on how late a change can be, never the normal path.
    pub poll_interval: Duration,
    /// Changes read from the store per query.
    pub read_batch: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            watcher_buffer: 1024,
            ring_capacity: 8192,
            poll_interval: Duration::from_secs(1),
            read_batch: 512,
        }
    }
}

/// One change as every watcher receives it: decoded, converted to protobuf and encoded once;
/// each stream sends the same bytes.
#[derive(Debug)]
pub struct HubChange {
    pub revision: Revision,
    pub kind: ChangeKind,
    pub object: Watched,
}

/// What changed, with its encoding. Held once per change behind the hub's `Arc`, so the size
/// difference between the kinds costs nothing per watcher.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Watched {
    Node {
        node: Node,
        encoded: v1::EncodedNode,
        /// The same node encoded for listings (the node view serves pages from it).
        listed: v1::ListedNode,
        /// Whether this version is held by the controller that lists it, and if so that node's
        /// live heartbeat cell; set by the first listing that shows it (see
        /// [`LiveHeartbeat`]).
        live: OnceLock<Option<Arc<LiveHeartbeat>>>,
    },
    Backend {
        backend: Backend,
        /// Its state before the change (`None`: new), to tell entering and leaving a filter.
        previous: Option<BackendState>,
        encoded: v1::EncodedBackend,
    },
}

impl HubChange {
    pub fn new(change: Change) -> Arc<HubChange> {
        Arc::new(match change {
            Change::Node(change) => {
                let proto = v1::Node::from(&change.node);
                let (encoded, listed) = (v1::EncodedNode::new(&proto), v1::ListedNode::new(&proto));
                HubChange {
                    revision: change.revision,
                    kind: change.kind,
                    object: Watched::Node { node: change.node, encoded, listed, live: OnceLock::new() },
                }
            }
            Change::Backend(change) => {
                let encoded = v1::EncodedBackend::new(&v1::Backend::from(&change.backend));
                HubChange {
                    revision: change.revision,
                    kind: change.kind,
                    object: Watched::Backend { backend: change.backend, previous: change.previous, encoded },
                }
            }
        })
    }
}

/// A node's heartbeat time as the controller it is attached to holds it in memory (the store's
/// copy is refreshed only now and then). The registry sets it at each heartbeat and clears it
/// when the node detaches; the node view's versions of a node held here keep a reference to it,
/// so that a listing shows live times with one read per node: no lock, no map lookup, no
/// comparison of ids (docs/design/nodes-and-watch.md#listing).
#[derive(Debug)]
pub struct LiveHeartbeat(AtomicI64);

impl Default for LiveHeartbeat {
    fn default() -> Self {
        LiveHeartbeat(AtomicI64::new(LiveHeartbeat::NONE))
    }
}

impl LiveHeartbeat {
    /// No live time: the node is not attached here.
    const NONE: i64 = i64::MIN;

    /// Sets the live time (`None`: the node is no longer attached here).
    pub fn set(&self, at: Option<DateTime<Utc>>) {
        // Nanoseconds since the epoch reach the year 2262; a time past that reads as none.
        let nanos = at.and_then(|at| at.timestamp_nanos_opt()).unwrap_or(LiveHeartbeat::NONE);
        self.0.store(nanos, Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<DateTime<Utc>> {
        match self.0.load(Ordering::Relaxed) {
            LiveHeartbeat::NONE => None,
            nanos => Some(DateTime::from_timestamp_nanos(nanos)),
        }
    }
}

/// A watcher's feed: first `backlog` (history it asked for), then live changes from `live`.
/// When `live` closes, `overflowed` tells whether the hub took the watcher out of the live
/// fan-out because its queue was full (it then catches up with [`WatchHub::resume`]).
pub struct Subscription {
    pub backlog: VecDeque<Arc<HubChange>>,
    pub live: mpsc::Receiver<Arc<HubChange>>,
    pub overflowed: Arc<AtomicBool>,
}

struct Watcher {
    tx: mpsc::Sender<Arc<HubChange>>,
    overflowed: Arc<AtomicBool>,
}

struct HubState {
    /// Every revision up to here has been fanned out, or changed nothing watched (e.g. a stored
    /// action).
    cursor: Revision,
    /// The newest node and backend changes, every one from the first to `cursor`.
    ring: VecDeque<Arc<HubChange>>,
    watchers: HashMap<u64, Watcher>,
    next_id: u64,
    /// The hub stopped: feeds are closed as they are handed out.
    stopped: bool,
    /// Every node at the revisions a listing may read, following the cursor.
    view: NodeView,
    /// How often the hub restarted after falling behind compaction (the ring was cleared).
    resets: u64,
    /// Who waits for the next change of a backend, by id ([`WatchHub::next_backend_change`]).
    backend_waiters: HashMap<String, Vec<oneshot::Sender<()>>>,
}

impl HubState {
    /// Whether the ring plus live fan-out deliver every change after `from`.
    fn covers(&self, from: Revision) -> bool {
        match self.ring.front() {
            Some(first) => from + 1 >= first.revision,
            None => from >= self.cursor,
        }
    }

    /// A feed for a watcher at `from`, behind `backlog`: the ring's changes after `from` (at
    /// most `max`) are added to the backlog, and when they reach the cursor a live feed of
    /// `buffer` changes is registered in the same step, so nothing falls between them;
    /// otherwise the feed is closed and marked overflowed, to come back for the next batch. A
    /// stopped hub gives a closed feed, which ends the stream as on shutdown once it has sent
    /// its backlog. `None` (the backlog untouched) when the ring does not reach back to `from`.
    fn join(
        &mut self,
        from: Revision,
        max: usize,
        backlog: &mut VecDeque<Arc<HubChange>>,
        buffer: usize,
    ) -> Option<Subscription> {
        let overflowed = Arc::new(AtomicBool::new(false));
        let closed = |backlog, overflowed| Subscription { backlog, live: mpsc::channel(1).1, overflowed };
        if self.stopped {
            return Some(closed(std::mem::take(backlog), overflowed));
        }
        if !self.covers(from) {
            return None;
        }
        let first = self.ring.partition_point(|c| c.revision <= from);
        let pending = self.ring.len() - first;
        backlog.extend(self.ring.range(first..first + pending.min(max)).cloned());
        if pending > max {
            overflowed.store(true, Ordering::Release);
            return Some(closed(std::mem::take(backlog), overflowed));
        }
        let (tx, live) = mpsc::channel(buffer);
        let id = self.next_id;
        self.next_id += 1;
        self.watchers.insert(id, Watcher { tx, overflowed: overflowed.clone() });
        Some(Subscription { backlog: std::mem::take(backlog), live, overflowed })
    }
}

#[derive(Clone)]
pub struct WatchHub {
    inner: Arc<Inner>,
}

struct Inner {
    store: DynStore,
    config: WatchConfig,
    state: Mutex<HubState>,
    shutdown: CancellationToken,
    /// The cursor, for listings waiting for the hub to reach the revision they read at.
    cursor_moved: watch::Sender<Revision>,
    /// The node view was dropped (the hub fell behind compaction) and must be seeded again.
    view_lost: Notify,
    /// Pages `list_nodes` read from the store because the view could not answer.
    store_pages: std::sync::atomic::AtomicU64,
}

impl WatchHub {
    /// A hub starting at the store's current revision.
    pub async fn new(store: DynStore, config: WatchConfig, shutdown: CancellationToken) -> Result<Self, StoreError> {
        let cursor = store.current_revision().await?;
        let state = HubState {
            cursor,
            ring: VecDeque::new(),
            watchers: HashMap::new(),
            next_id: 0,
            stopped: false,
            view: NodeView::default(),
            resets: 0,
            backend_waiters: HashMap::new(),
        };
        let inner = Inner {
            store,
            config,
            state: Mutex::new(state),
            shutdown,
            cursor_moved: watch::Sender::new(cursor),
            view_lost: Notify::new(),
            store_pages: Default::default(),
        };
        Ok(WatchHub { inner: Arc::new(inner) })
    }

    pub fn store(&self) -> &DynStore {
        &self.inner.store
    }

    /// Every revision up to this one has been fanned out.
    pub fn cursor(&self) -> Revision {
        self.inner.state.lock().unwrap().cursor
    }

    pub fn watcher_count(&self) -> usize {
        self.inner.state.lock().unwrap().watchers.len()
    }

    /// Every change after `from`: history first (from the ring, or the store when older than
    /// the ring), then live. `Compacted` when `from` is older than the store retains.
    pub async fn subscribe(&self, from: Revision) -> Result<Subscription, StoreError> {
        // The store's retention window is the contract, even where the ring still remembers
        // more: a resume must not succeed on one controller and fail on another.
        let oldest = self.inner.store.compacted_revision().await?;
        if from < oldest {
            return Err(StoreError::Compacted { requested: from, oldest });
        }
        let mut backlog = VecDeque::new();
        let mut position = from;
        loop {
            {
                let mut state = self.inner.state.lock().unwrap();
                if let Some(subscription) =
                    state.join(position, usize::MAX, &mut backlog, self.inner.config.watcher_buffer)
                {
                    return Ok(subscription);
                }
            }
            // Older than the ring: catch up from the store, then look again.
            let changes = self.inner.store.changes_since(position, self.inner.config.read_batch).await?;
            match changes.last() {
                Some(last) => position = last.revision(),
                // The store has nothing newer but the ring does not reach back: the hub is
                // behind the store; let it catch up.
                None => tokio::time::sleep(Duration::from_millis(5)).await,
            }
            backlog.extend(changes.into_iter().map(HubChange::new));
        }
    }

    /// For a watcher whose queue overflowed, at `from`: the changes after it that the ring
    /// holds, at most `max`; when those reach the cursor, a live feed registered in the same
    /// step, so nothing falls between them. Otherwise the feed is closed and marked overflowed,
    /// to come back for the next batch. `None` when the ring no longer reaches back to `from`:
    /// the watcher fell too far behind.
    pub fn resume(&self, from: Revision, max: usize) -> Option<Subscription> {
        let mut state = self.inner.state.lock().unwrap();
        state.join(from, max, &mut VecDeque::new(), self.inner.config.watcher_buffer)
    }

    /// How this hub was configured.
    pub fn config(&self) -> &WatchConfig {
        &self.inner.config
    }

    /// Fans out every node and backend change until shutdown. This process's own commits arrive from the
    /// store with their changes and go out without a read; the store's log is read only for
    /// commits made elsewhere (another controller on PostgreSQL, announced by `notified`), when
    /// the local feed lagged, and once per poll interval as a floor. On shutdown it closes every
    /// watcher's feed, which ends each stream with UNAVAILABLE and its last revision once it
    /// has sent what it holds.
    pub async fn run(&self, notified: watch::Receiver<Revision>, local: broadcast::Receiver<LocalCommit>) {
        tokio::join!(self.tail(notified, local), self.keep_view());
        let mut state = self.inner.state.lock().unwrap();
        state.stopped = true;
        state.watchers.clear();
        state.backend_waiters.clear();
    }

    async fn tail(&self, mut notified: watch::Receiver<Revision>, mut local: broadcast::Receiver<LocalCommit>) {
        let mut poll = tokio::time::interval(self.inner.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        // Local commits that arrived ahead of an earlier revision, by revision.
        let mut early = BTreeMap::new();
        let mut local_open = true;
        loop {
            let read_log = tokio::select! {
                biased;
                _ = self.inner.shutdown.cancelled() => return,
                commit = local.recv(), if local_open => match commit {
                    Ok(commit) => {
                        early.insert(commit.revision, commit.change);
                        self.release(&mut early);
                        false
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "watch hub trailed the local commit feed; reading the log");
                        true
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        local_open = false;
                        true
                    }
                },
                // Local commits are published before `notified` moves and taken first above, so
                // a revision past the cursor here was committed elsewhere (or published out of
                // order, which the read settles too).
                _ = notified.changed() => *notified.borrow_and_update() > self.cursor(),
                _ = poll.tick() => true,
            };
            if !read_log {
                continue;
            }
            match self.catch_up().await {
                Ok(()) => {
                    failures = 0;
                    self.release(&mut early);
                }
                Err(err) => {
                    failures += 1;
                    let delay = Duration::from_millis(50 * u64::from(failures.min(20)));
                    tracing::warn!(error = %err, retry_in = ?delay, "watch hub cannot read the change log");
                    tokio::select! {
                        _ = self.inner.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Fans out the local commits that continue the cursor without a gap; keeps the rest until
    /// the revisions before them arrive (from this feed, or from the log when they were
    /// committed elsewhere).
    fn release(&self, early: &mut BTreeMap<Revision, Option<Change>>) {
        let mut through = self.cursor();
        let mut changes = Vec::new();
        while let Some(entry) = early.first_entry() {
            let revision = *entry.key();
            if revision <= through {
                entry.remove();
            } else if revision == through + 1 {
                through = revision;
                changes.extend(entry.remove().map(HubChange::new));
            } else {
                break;
            }
        }
        self.fan_out(changes, through);
    }

    /// Reads and fans out every change after the cursor.
    async fn catch_up(&self) -> Result<(), StoreError> {
        loop {
            let cursor = self.cursor();
            // Every revision up to `current` is committed (revisions are taken in commit order),
            // so a complete read of the changes after the cursor covers the log through it.
            let current = self.inner.store.current_revision().await?;
            let batch = self.inner.config.read_batch;
            let changes = match self.inner.store.changes_since(cursor, batch).await {
                Ok(changes) => changes,
                Err(StoreError::Compacted { oldest, .. }) => {
                    // The hub fell behind the retention window (a long store outage): its
                    // watchers cannot be served without a gap, so they are cut and resume or
                    // re-list; the hub restarts at the oldest retained revision.
                    tracing::error!(cursor, oldest, "watch hub fell behind compaction; cutting every watcher");
                    let mut state = self.inner.state.lock().unwrap();
                    state.watchers.clear();
                    state.ring.clear();
                    state.cursor = oldest;
                    state.resets += 1;
                    // Changes were skipped: whoever waits for one reads again.
                    state.backend_waiters.clear();
                    state.view = NodeView::default();
                    self.inner.view_lost.notify_one();
                    self.inner.cursor_moved.send_replace(oldest);
                    continue;
                }
                Err(err) => return Err(err),
            };
            let complete = changes.len() < batch;
            let last = changes.last().map_or(cursor, Change::revision);
            let through = if complete { current.max(last) } else { last };
            self.fan_out(changes.into_iter().map(HubChange::new).collect(), through);
            if complete {
                return Ok(());
            }
        }
    }

    /// Hands `changes` (in revision order) to every watcher and the ring, and moves the cursor
    /// to `through`: every revision up to it is fanned out or changed nothing watched.
    fn fan_out(&self, changes: Vec<Arc<HubChange>>, through: Revision) {
        let mut state = self.inner.state.lock().unwrap();
        for change in changes {
            if change.revision <= state.cursor {
                continue;
            }
            state.cursor = change.revision;
            if state.view.ready {
                state.view.apply(&change);
            }
            if let Watched::Backend { backend, .. } = &change.object
                && let Some(waiters) = state.backend_waiters.remove(&backend.id)
            {
                for waiter in waiters {
                    let _ = waiter.send(());
                }
            }
            state.watchers.retain(|_, watcher| match watcher.tx.try_send(change.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    watcher.overflowed.store(true, Ordering::Release);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            if state.ring.len() == self.inner.config.ring_capacity {
                state.ring.pop_front();
            }
            state.ring.push_back(change);
        }
        state.cursor = state.cursor.max(through);
        let cursor = state.cursor;
        if state.view.ready {
            state.view.advance(cursor, Instant::now());
        }
        self.inner.cursor_moved.send_if_modified(|at| std::mem::replace(at, cursor) != cursor);
    }

    /// A page of the nodes matching `filter` at revision `at` (`None`: the store's current
    /// revision, which takes in every commit made so far on any controller), after the id
    /// `after`, as [`Store::list_nodes`](crate::store::Store::list_nodes) reads it and with the
    /// same errors: `Compacted` when `at` is older than the store retains. Served from the node
    /// view once the hub has reached `at`; from the store when the view cannot answer (not
    /// seeded yet, `at` older than it keeps, or the hub not there within [`VIEW_WAIT`]).
    /// Every node is a [`Watched::Node`] change, encoded once.
    pub async fn list_nodes(
        &self,
        filter: &NodeFilter,
        at: Option<Revision>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<NodeListing, StoreError> {
        let store = &self.inner.store;
        let revision = match at {
            None => store.current_revision().await?,
            Some(at) => {
                // The store's retention is the contract, as for a resuming watch: a page token
                // must not work on one controller and fail on another.
                let oldest = store.compacted_revision().await?;
                if at < oldest {
                    return Err(StoreError::Compacted { requested: at, oldest });
                }
                at
            }
        };
        if self.reached(revision).await {
            let state = self.inner.state.lock().unwrap();
            if state.cursor >= revision
                && let Some((nodes, more)) = state.view.page(filter, revision, after, limit)
            {
                return Ok(NodeListing { nodes, revision, more });
            }
        }
        self.inner.store_pages.fetch_add(1, Ordering::Relaxed);
        let page = store.list_nodes(filter, Some(revision), after, limit).await?;
        let nodes = page
            .nodes
            .into_iter()
            .map(|node| {
                HubChange::new(Change::Node(NodeChange { revision: node.revision, kind: ChangeKind::Added, node }))
            })
            .collect();
        Ok(NodeListing { nodes, revision: page.revision, more: page.more })
    }

    /// The READY drones of `cluster`/`pool` for a placement, from the node view, once the hub
    /// has caught up with every commit this process has seen (its own writes included, so a
    /// Connect after a DrainNode on this controller does not see the drone READY); `None` when
    /// the view is not ready or does not catch up within [`VIEW_WAIT`] (read the store).
    pub async fn drone_slots(&self, cluster: &str, pool: &str) -> Option<Arc<[DroneSlot]>> {
        let committed = *self.inner.store.subscribe().borrow();
        if !self.reached(committed).await {
            return None;
        }
        let mut state = self.inner.state.lock().unwrap();
        let cursor = state.cursor;
        if cursor < committed {
            return None;
        }
        state.view.drone_slots(cluster, pool, cursor)
    }

    /// Resolves at the next change of backend `id` the hub fans out (a commit on any
    /// controller), or when the hub can no longer tell (it restarted or stopped: the receiver
    /// then sees its sender dropped). Call it *before* reading the backend, so that a change
    /// right after the read is not missed. Costs nothing per change of other backends: a route
    /// lookup waiting for its backend to become READY waits on this instead of polling.
    pub fn next_backend_change(&self, id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.inner.state.lock().unwrap();
        if !state.stopped {
            let waiters = state.backend_waiters.entry(id.to_string()).or_default();
            // Lookups that gave up (their receiver is gone) leave with the next one.
            waiters.retain(|waiter| !waiter.is_closed());
            waiters.push(tx);
        }
        rx
    }

    /// Whether the node view is seeded and following the cursor (listings are served from it).
    pub fn lists_from_memory(&self) -> bool {
        self.inner.state.lock().unwrap().view.ready
    }

    /// How many pages [`Self::list_nodes`] read from the store because the view could not answer.
    pub fn store_pages(&self) -> u64 {
        self.inner.store_pages.load(Ordering::Relaxed)
    }

    /// Whether the hub's cursor reaches `revision` with the node view ready, waiting for it at
    /// most [`VIEW_WAIT`].
    async fn reached(&self, revision: Revision) -> bool {
        if !self.inner.state.lock().unwrap().view.ready {
            return false;
        }
        let mut cursor = self.inner.cursor_moved.subscribe();
        let reached = cursor.wait_for(|at| *at >= revision);
        matches!(tokio::time::timeout(VIEW_WAIT, reached).await, Ok(Ok(_)))
    }

    /// Seeds the node view and seeds it again whenever it is lost, until shutdown.
    async fn keep_view(&self) {
        let mut failures = 0u32;
        loop {
            if !self.inner.state.lock().unwrap().view.ready {
                let seeded = self.seed_view().await.unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "watch hub cannot read the nodes to list them from memory");
                    false
                });
                if !seeded {
                    failures += 1;
                    let delay = Duration::from_millis(50 * u64::from(failures.min(20)));
                    tokio::select! {
                        _ = self.inner.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
                failures = 0;
            }
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = self.inner.view_lost.notified() => {}
            }
        }
    }

    /// Reads every node from the store at the cursor, then, under the lock, adds the ring's
    /// changes after it: the view is then complete through the cursor, and `fan_out` keeps it
    /// so. `false` when the ring no longer reaches back to the revision read (try again).
    async fn seed_view(&self) -> Result<bool, StoreError> {
        let (at, resets) = {
            let state = self.inner.state.lock().unwrap();
            (state.cursor, state.resets)
        };
        let mut nodes = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let page =
                self.inner.store.list_nodes(&NodeFilter::default(), Some(at), after.as_deref(), SEED_PAGE).await?;
            after = page.nodes.last().map(|n| n.id.clone());
            for node in page.nodes {
                let id = node.id.clone();
                let change =
                    HubChange::new(Change::Node(NodeChange { revision: node.revision, kind: ChangeKind::Added, node }));
                nodes.insert(id, vec![(change.revision, Some(change))]);
            }
            if !page.more || after.is_none() {
                break;
            }
        }
        let mut state = self.inner.state.lock().unwrap();
        // The ring only loses changes from its front when it is full, or all of them in a reset:
        // an empty ring without a reset means nothing watched changed since `at`.
        let continues = state.resets == resets && (state.ring.is_empty() || state.covers(at));
        if !continues {
            return Ok(false);
        }
        let mut view = NodeView { ready: true, seeded: at, nodes, ..NodeView::default() };
        let first = state.ring.partition_point(|c| c.revision <= at);
        for change in state.ring.range(first..) {
            view.apply(change);
        }
        view.advance(state.cursor, Instant::now());
        state.view = view;
        tracing::debug!(at, nodes = state.view.nodes.len(), "watch hub lists nodes from memory");
        Ok(true)
    }
}

/// Pools whose placement candidates the node view keeps at most (more are computed again).
const MAX_CANDIDATE_LISTS: usize = 1024;

/// How long a listing waits for the hub to reach the revision it reads at (its own commits
/// arrive within microseconds, another controller's within a NOTIFY) before it reads the store.
const VIEW_WAIT: Duration = Duration::from_millis(100);
/// How long the node view keeps versions that a node has since replaced: a listing whose pages
/// come further apart than this continues from the store.
const VIEW_HISTORY: Duration = Duration::from_secs(60);
/// Nodes per store read while seeding the view.
const SEED_PAGE: usize = 1000;

/// A page of nodes from [`WatchHub::list_nodes`]: node changes, each encoded once.
pub struct NodeListing {
    pub nodes: Vec<Arc<HubChange>>,
    /// The snapshot the page was read at.
    pub revision: Revision,
    /// Whether nodes after the last one returned may match.
    pub more: bool,
}

/// A pool's placement candidates and the node-view generation they were computed at.
type Candidates = (u64, Arc<[DroneSlot]>);

/// One version of a node: since `revision`, the node as `change` left it (`None`: removed).
type Version = (Revision, Option<Arc<HubChange>>);

/// Every node, in id order, with the versions listings may still read: an in-memory MVCC view
/// of the nodes kept by the hub, so that a page of a listing is a walk over a map and a copy of
/// bytes encoded once, with no store read of the nodes. It answers at any revision from
/// [`NodeView::oldest`] to the hub's cursor.
#[derive(Default)]
struct NodeView {
    /// Seeded and following the cursor.
    ready: bool,
    /// The revision it was seeded at.
    seeded: Revision,
    nodes: BTreeMap<String, Vec<Version>>,
    /// Of each node, versions older than its newest one at or below this are dropped.
    horizon: Revision,
    /// The cursor about once a second, to keep `horizon` [`VIEW_HISTORY`] behind.
    checkpoints: VecDeque<(Instant, Revision)>,
    /// Changes since removed nodes were last swept out.
    since_sweep: usize,
    /// Node changes applied so far: what the cached placement candidates are valid for.
    generation: u64,
    /// Placement candidates per (cluster, pool), with the generation they were computed at.
    candidates: HashMap<(String, String), Candidates>,
}

impl NodeView {
    fn oldest(&self) -> Revision {
        self.seeded.max(self.horizon)
    }

    fn apply(&mut self, change: &Arc<HubChange>) {
        let Watched::Node { node, .. } = &change.object else { return };
        let version = (change.kind != ChangeKind::Removed).then(|| change.clone());
        let versions = self.nodes.entry(node.id.clone()).or_default();
        versions.push((change.revision, version));
        prune(versions, self.horizon);
        self.since_sweep += 1;
        self.generation += 1;
    }

    /// The READY drones of `cluster`/`pool` at `at` (the cursor), computed at most once per
    /// node change; `None` when the view cannot answer.
    fn drone_slots(&mut self, cluster: &str, pool: &str, at: Revision) -> Option<Arc<[DroneSlot]>> {
        let key = (cluster.to_string(), pool.to_string());
        if let Some((generation, slots)) = self.candidates.get(&key)
            && *generation == self.generation
        {
            return Some(slots.clone());
        }
        let (nodes, _) = self.page(&scheduler::candidates_filter(cluster, pool), at, None, usize::MAX)?;
        let slots: Arc<[DroneSlot]> = nodes
            .iter()
            .filter_map(|change| match &change.object {
                Watched::Node { node, .. } => {
                    Some(DroneSlot { node_id: node.id.clone(), capacity: node.backend_capacity })
                }
                Watched::Backend { .. } => None,
            })
            .collect();
        if self.candidates.len() >= MAX_CANDIDATE_LISTS {
            self.candidates.clear();
        }
        self.candidates.insert(key, (self.generation, slots.clone()));
        Some(slots)
    }

    /// The cursor reached `cursor`: moves the horizon and now and then drops removed nodes.
    fn advance(&mut self, cursor: Revision, now: Instant) {
        let second = Duration::from_secs(1);
        if self.checkpoints.back().is_none_or(|(at, _)| now.duration_since(*at) >= second) {
            self.checkpoints.push_back((now, cursor));
        }
        while self.checkpoints.len() >= 2 && now.duration_since(self.checkpoints[1].0) >= VIEW_HISTORY {
            self.checkpoints.pop_front();
        }
        if let Some(&(at, revision)) = self.checkpoints.front()
            && now.duration_since(at) >= VIEW_HISTORY
        {
            self.horizon = self.horizon.max(revision);
        }
        if self.since_sweep >= self.nodes.len().max(1024) {
            self.since_sweep = 0;
            let horizon = self.horizon;
            self.nodes.retain(|_, versions| {
                prune(versions, horizon);
                !versions.is_empty()
            });
        }
    }

    /// Up to `limit` nodes matching `filter` at `at`, after the id `after`, and whether more
    /// may follow; `None` when the view cannot answer at `at` (the caller has checked that the
    /// cursor reaches it).
    fn page(
        &self,
        filter: &NodeFilter,
        at: Revision,
        after: Option<&str>,
        limit: usize,
    ) -> Option<(Vec<Arc<HubChange>>, bool)> {
        if !self.ready || at < self.oldest() {
            return None;
        }
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut nodes = Vec::with_capacity(limit.min(1024));
        for versions in self.nodes.range::<str, _>((from, Bound::Unbounded)).map(|(_, v)| v) {
            let Some((_, Some(change))) = versions.iter().rev().find(|(revision, _)| *revision <= at) else {
                continue;
            };
            let Watched::Node { node, .. } = &change.object else { continue };
            if !filter.matches(node) {
                continue;
            }
            if nodes.len() == limit {
                return Some((nodes, true));
            }
            nodes.push(change.clone());
        }
        Some((nodes, false))
    }
}

/// Drops the versions that no read at or above `horizon` needs: those before the newest one at
/// or below it, and that one too when it is a removal.
fn prune(versions: &mut Vec<Version>, horizon: Revision) {
    if let Some(newest) = versions.iter().rposition(|(revision, _)| *revision <= horizon) {
        versions.drain(..newest);
        // A removal reads as absence, which a missing version reads as too.
        if versions[0].1.is_none() {
            versions.remove(0);
        }
    }
}
