//! The controller's durable state behind one trait, with an SQLite implementation (embedded,
//! one controller) and a PostgreSQL implementation (any number of controllers).
//!
//! Node state is kept as an MVCC history in the etcd manner: every change to a node is one row
//! under a new global revision. Revisions are gapless and assigned in commit order (a counter row
//! updated inside the writing transaction, so its lock orders commits), which makes the history
//! both the event log that watchers replay and the snapshot source that makes every page of a
//! listing come from the same revision. Compaction drops history older than the retention window
//! but always keeps each node's latest version at or below the compaction revision, so a read at
//! any revision at or above it stays exact.

mod backends;
mod lease_expiry;
mod offload;
mod postgres;
mod rows;
mod sql;
mod sqlite;

pub use backends::{
    ActionPayload, BackendChange, BackendFilter, BackendPage, BackendStore, ConnectOutcome, ConnectSpec, DroneEvent,
    DroneLoad, DroneSlot, EventOutcome, IssuedToken, KeyRenewal, PendingAction, Pick, QueuedAction, SpawnPlan,
    TokenRoute, new_action_id,
};
pub use lease_expiry::{CLOCK_SKEW, ControllerTick, ExpiryRule, forget_before};
pub use offload::OffloadedStore;
pub use postgres::{NODE_CHANGES_CHANNEL, PostgresStore};
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hangar::domain::{Node, NodeFilter, NodeKind, NodeResources, NodeState};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A global, gapless, commit-ordered change number. 0 means "nothing yet".
pub type Revision = u64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The revision asked for is older than the retention window.
    #[error("revision {requested} has been compacted; the oldest retained revision is {oldest}")]
    Compacted { requested: Revision, oldest: Revision },
    /// The revision asked for has not been written yet: a forged or foreign token, or a database
    /// restored from an older backup.
    #[error("revision {requested} is in the future; the current revision is {current}")]
    FutureRevision { requested: Revision, current: Revision },
    /// The database cannot be reached or refused the operation; retrying may help.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored row could not be decoded, or a migration failed: a bug or a corrupted database.
    #[error("store corrupt: {0}")]
    Corrupt(String),
}

/// What a node says about itself when it attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRegistration {
    pub kind: NodeKind,
    pub name: String,
    pub cluster: String,
    pub pool: String,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub backend_capacity: u32,
    pub resources: NodeResources,
}

/// Fields of a node to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeUpdate {
    pub state: Option<NodeState>,
    pub controller_id: Option<String>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub resources: Option<NodeResources>,
    pub backend_count: Option<u32>,
    pub drain_deadline: Option<Option<DateTime<Utc>>>,
    pub draining: Option<bool>,
}

impl NodeUpdate {
    /// DrainNode: no new backends, and with a deadline the remaining ones are terminated then.
    pub fn drain(deadline: Option<DateTime<Utc>>) -> Self {
        NodeUpdate { draining: Some(true), drain_deadline: Some(deadline), ..NodeUpdate::default() }
    }

    /// UndrainNode: the drain and its deadline are gone, so [`NodeUpdate::apply_to`] makes a
    /// healthy attached node READY again and the sweep finds no deadline to enforce. On a node
    /// that is not draining it changes nothing (and so writes nothing).
    pub fn undrain() -> Self {
        NodeUpdate { draining: Some(false), drain_deadline: Some(None), ..NodeUpdate::default() }
    }

    /// Applies the update to `node`; returns whether anything changed. This is the one place
    /// that keeps the drain invariant: a healthy attached node that is draining shows DRAINING,
    /// and one that stops draining shows READY. Both stores call it, so they cannot disagree.
    pub fn apply_to(&self, node: &mut Node) -> bool {
        let before = node.clone();
        if let Some(state) = self.state {
            node.state = state;
        }
        if let Some(controller_id) = &self.controller_id {
            node.controller_id.clone_from(controller_id);
        }
        if let Some(at) = self.last_heartbeat_at {
            node.last_heartbeat_at = at;
        }
        if let Some(resources) = self.resources {
            node.resources = resources;
        }
        if let Some(count) = self.backend_count {
            node.backend_count = count;
        }
        if let Some(deadline) = self.drain_deadline {
            node.drain_deadline = deadline;
        }
        if let Some(draining) = self.draining {
            node.draining = draining;
        }
        if matches!(node.state, NodeState::Ready | NodeState::Draining) {
            node.state = NodeState::healthy(node.draining);
        }
        *node != before
    }
}

/// Guards an update so that a controller that lost a node to another one cannot overwrite it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateCondition {
    Always,
    /// Only while the node's `controller_id` is exactly this.
    HeldBy(String),
    /// Only while the node is exactly as read at `revision` (its last change), held by
    /// `controller`: a decision made from that read (the stale-node sweep's) is not applied to a
    /// node that re-attached or was refreshed since.
    Unchanged {
        controller: String,
        revision: Revision,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Removed,
}

/// One row of the node history: the node as it was right after `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeChange {
    pub revision: Revision,
    pub kind: ChangeKind,
    pub node: Node,
}

/// One entry of the watch log: nodes and backends are two kinds of change under the one revision
/// counter, read and fanned out together (docs/design/nodes-and-watch.md#the-hub).
// Changes are moved from the store to the hub one at a time, never held in bulk by value (the
// hub keeps them behind an `Arc`): a box per backend change would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Node(NodeChange),
    Backend(BackendChange),
}

impl Change {
    pub fn revision(&self) -> Revision {
        match self {
            Change::Node(change) => change.revision,
            Change::Backend(change) => change.revision,
        }
    }
}

/// A commit made through this store object, published right after it committed: its revision
/// and, for a node or backend change, the change. Commits of several tasks are published in the order they
/// finish, which can differ from revision order; commits of other processes are not published
/// (see [`Store::subscribe`] for those).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCommit {
    pub revision: Revision,
    pub change: Option<Change>,
}

/// Which drone sessions a commit concerns: the drones it gave new actions to (a spawn, a
/// terminate), on this controller or, on PostgreSQL, on any (docs/design/drone-link.md#wake-ups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionWakeup {
    /// These drones have new pending actions.
    Drones(Arc<[String]>),
    /// Some commits' targets may have been missed (a listener that reconnected, a payload that
    /// did not parse): every session reads its actions.
    All,
    /// Spawns this process just committed, each with its backend's row: the drone's session
    /// sends them as they are, without reading the store (docs/design/drone-link.md#wake-ups).
    /// Only Spawns travel this way: a Spawn is its backend's first action, so none of the
    /// backend's can be due before it; every other action is read.
    Spawns(Arc<[QueuedAction]>),
}

/// One page of nodes read at a snapshot revision, ordered by node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePage {
    pub nodes: Vec<Node>,
    /// The snapshot the page was read at.
    pub revision: Revision,
    /// Whether nodes after the last one returned may match.
    pub more: bool,
}

/// How many drones of one cluster and pool are in each state: why a Connect found no drone to
/// place a backend on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DroneCensus {
    pub ready: u32,
    pub draining: u32,
    pub unhealthy: u32,
    pub offline: u32,
}

impl DroneCensus {
    /// Counts `count` more drones in `state`.
    pub fn add(&mut self, state: NodeState, count: u32) {
        let slot = match state {
            NodeState::Ready => &mut self.ready,
            NodeState::Draining => &mut self.draining,
            NodeState::Unhealthy => &mut self.unhealthy,
            NodeState::Offline => &mut self.offline,
        };
        *slot = slot.saturating_add(count);
    }
}

/// Retention of the node history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Keep at least the newest this many revisions.
    pub min_revisions: u64,
    /// Drop history older than this, subject to `min_revisions`.
    pub max_age: chrono::Duration,
}

/// Backends live in the same store (`BackendStore`): one transaction may change a node's and a
/// backend's rows, and both share the revision counter.
#[async_trait]
pub trait Store: BackendStore + Send + Sync + 'static {
    /// Moves whenever this process learns of a new commit: its own writes, and on PostgreSQL
    /// every controller's (LISTEN/NOTIFY). It may also move without a new revision (after a
    /// listener reconnects), so subscribers read the log rather than trust the value.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Revision>;

    /// Every commit made through this store object from now on, with the change it made,
    /// so that this process can fan out its own changes without reading them back. A receiver
    /// that falls more than a few thousand commits behind gets `Lagged` and must read the log.
    fn local_commits(&self) -> tokio::sync::broadcast::Receiver<LocalCommit>;

    /// The drones that got new actions, per commit: this process's commits and, on PostgreSQL,
    /// every controller's (the NOTIFY payload names them). A drone session reads the store when
    /// its drone is named here (or on `All`), not on every commit. A receiver that lags must
    /// treat it as `All`.
    fn action_wakeups(&self) -> tokio::sync::broadcast::Receiver<ActionWakeup>;

    /// The newest committed revision.
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// The oldest revision that reads and replays may start from.
    async fn compacted_revision(&self) -> Result<Revision, StoreError>;

    /// Attaches a node: the same `(kind, cluster, name)` keeps its id (MODIFIED), a new one gets a
    /// fresh id (ADDED). The node becomes READY, or stays DRAINING if it was draining, with
    /// `controller_id` set and `last_heartbeat_at = now`. (DRAINING exactly when the stored node
    /// has `draining` set: a drain outlives disconnects.)
    async fn attach_node(
        &self,
        registration: NodeRegistration,
        controller_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Node, StoreError>;

    /// Applies `update` as one MODIFIED change. `Ok(None)` when no node has that id or the
    /// condition does not hold; an update that changes nothing writes nothing and returns the node.
    async fn update_node(
        &self,
        id: &str,
        update: NodeUpdate,
        condition: UpdateCondition,
    ) -> Result<Option<Node>, StoreError>;

    /// [`update_node`](Self::update_node) for several nodes in one transaction, all under one
    /// `condition`: each node that changes is one MODIFIED change with its own revision, in the
    /// order given. The answer has one entry per update, as `update_node` would answer it. For
    /// the liveness pass's periodic refresh of heartbeat times (10,000 drones: one transaction
    /// instead of 10,000, docs/design/nodes-and-watch.md#liveness).
    async fn update_nodes(
        &self,
        updates: Vec<(String, NodeUpdate)>,
        condition: UpdateCondition,
    ) -> Result<Vec<Option<Node>>, StoreError>;

    /// Removes a node as one REMOVED change whose node is its last version; `Ok(None)` when no node
    /// has that id or the condition does not hold. Its `(kind, cluster, name)` is free afterwards:
    /// attaching it again gives a fresh id.
    async fn remove_node(&self, id: &str, condition: UpdateCondition) -> Result<Option<Node>, StoreError>;

    /// The node's latest version.
    async fn get_node(&self, id: &str) -> Result<Option<Node>, StoreError>;

    /// Up to `limit` nodes matching `filter` with ids greater than `after_id`, as of `at`
    /// (`None`: the current revision). `Compacted` when `at` is older than the retention window,
    /// `FutureRevision` when it is newer than the current revision.
    async fn list_nodes(
        &self,
        filter: &NodeFilter,
        at: Option<Revision>,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<NodePage, StoreError>;

    /// The drones of `cluster`/`pool` counted by their current state, in one query. Cheap enough
    /// for an error path: it reads each node's current version, not the history.
    async fn drone_census(&self, cluster: &str, pool: &str) -> Result<DroneCensus, StoreError>;

    /// Changes with revisions greater than `after`, in revision order, at most `limit` of them.
    /// `Compacted` when `after` is older than the retention window.
    async fn node_changes_since(&self, after: Revision, limit: usize) -> Result<Vec<NodeChange>, StoreError>;

    /// The watch log: node and backend changes with revisions greater than `after`, in revision
    /// order, at most `limit` of them, read at one snapshot. Fewer than `limit` means every change
    /// up to the revision current at the read is included. `Compacted` when `after` is older than
    /// the retention window.
    async fn changes_since(&self, after: Revision, limit: usize) -> Result<Vec<Change>, StoreError>;

    /// Drops history outside `retention`; returns the new compaction revision.
    async fn compact(&self, retention: Retention, now: DateTime<Utc>) -> Result<Revision, StoreError>;

    /// A random secret shared by every controller on this database (created on first use), e.g.
    /// to sign page tokens.
    async fn shared_secret(&self, name: &str) -> Result<Vec<u8>, StoreError>;
}

pub type DynStore = Arc<dyn Store>;

/// Opens the store a `--database` URL names: `sqlite://PATH` (created if missing) or
/// `postgres://…`. Migrations run before it returns.
pub async fn open(url: &str) -> Result<DynStore, StoreError> {
    let store: DynStore = if url.starts_with("sqlite:") {
        Arc::new(SqliteStore::open(url).await?)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Arc::new(PostgresStore::open(url).await?)
    } else {
        return Err(StoreError::Unavailable(format!(
            "unsupported database URL {url:?}: use sqlite://PATH or postgres://USER@HOST/DB"
        )));
    };
    let offloaded = OffloadedStore::new(store, STORE_THREADS)
        .map_err(|err| StoreError::Unavailable(format!("cannot start the store's threads: {err}")))?;
    Ok(Arc::new(offloaded))
}

/// The `--database` URL of a SQLite file, for [`open`].
pub fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Threads of the runtime that runs store operations ([`OffloadedStore`]). They mostly wait on
/// the database; two let a long read (a large listing) proceed beside writes.
const STORE_THREADS: usize = 2;
