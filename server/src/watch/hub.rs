//! The hub: tails the change log and fans changes out. Node and backend changes are two kinds
//! of entry in one log, so one hub, one ring and one cursor serve `WatchNodes` and
//! `WatchBackends` alike; each stream skips the kind it does not watch.

use crate::store::{Change, ChangeKind, DynStore, LocalCommit, Revision, StoreError};
use hangar::domain::{Backend, BackendState, Node};
use hangar::v1;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
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
                let encoded = v1::EncodedNode::new(&v1::Node::from(&change.node));
                HubChange {
                    revision: change.revision,
                    kind: change.kind,
                    object: Watched::Node { node: change.node, encoded },
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
}

impl WatchHub {
    /// A hub starting at the store's current revision.
    pub async fn new(store: DynStore, config: WatchConfig, shutdown: CancellationToken) -> Result<Self, StoreError> {
        let cursor = store.current_revision().await?;
        let state = HubState { cursor, ring: VecDeque::new(), watchers: HashMap::new(), next_id: 0, stopped: false };
        Ok(WatchHub { inner: Arc::new(Inner { store, config, state: Mutex::new(state), shutdown }) })
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
        self.tail(notified, local).await;
        let mut state = self.inner.state.lock().unwrap();
        state.stopped = true;
        state.watchers.clear();
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
    }
}
