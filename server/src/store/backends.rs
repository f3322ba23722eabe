//! What the controller stores about backends: the backends themselves with their status
//! history, key leases with fencing tokens, the actions waiting for their drones, and
//! connection tokens. Every backend change takes the revision counter's lock like a node change,
//! so writes on several controllers serialize and `Store::subscribe` wakes on them.

use super::{ChangeKind, Revision, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hangar::domain::{
    Backend, BackendKey, BackendState, BackendStatus, SpawnConfig, TerminationKind, TerminationReason,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A drone the scheduler may place on, as the caller found it (READY in the right pool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroneSlot {
    pub node_id: String,
    pub capacity: u32,
}

/// A candidate drone with the live backends the store counts on it, read under the write lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroneLoad {
    pub node_id: String,
    pub capacity: u32,
    pub live: u32,
}

impl DroneLoad {
    pub fn free(&self) -> u32 {
        self.capacity.saturating_sub(self.live)
    }
}

/// Chooses among drones that all have room; `None` leaves the backend unplaced.
pub type Pick<'a> = &'a (dyn Fn(&[DroneLoad]) -> Option<usize> + Send + Sync);

/// What a controller asks a drone to do, as stored until the drone acknowledges it. The wire
/// message is built from this and the backend when it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ActionPayload {
    Spawn {
        startup_timeout: Duration,
        lease_duration: Duration,
        stop_grace: Duration,
        /// The trace context of the Connect that placed the backend (`traceparent`), sent to the
        /// drone with the action so that its spans join the caller's trace. Kept in the stored
        /// payload (JSON), so actions written before it still read, and it costs nothing empty.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        trace_context: BTreeMap<String, String>,
    },
    Terminate {
        kind: TerminationKind,
        reason: TerminationReason,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAction {
    /// `act-` + UUIDv7.
    pub id: String,
    pub drone_id: String,
    pub backend_id: String,
    pub payload: ActionPayload,
    pub created_at: DateTime<Utc>,
}

/// A pending action with its place in the drone's queue. `seq` grows in commit order (actions
/// are written only inside write batches, which hold the revision counter's lock until they
/// commit), so a reader that has seen every action up to `seq` finds the newer ones by asking
/// for those after it.
///
/// A Spawn comes with its backend as it is now, read in the same statement: the drone session
/// builds the spawn message from it without a store call per action. `None` for a Terminate,
/// and for a Spawn whose backend is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedAction {
    pub seq: i64,
    pub action: PendingAction,
    pub backend: Option<Backend>,
}

pub fn new_action_id() -> String {
    format!("act-{}", uuid::Uuid::now_v7().simple())
}

/// A connection token as stored: only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub hash: String,
    pub user: String,
    pub auth: BTreeMap<String, String>,
    pub expires_at: DateTime<Utc>,
}

/// A new backend, should Connect have to start one.
#[derive(Debug, Clone)]
pub struct SpawnPlan {
    pub backend_id: String,
    pub action_id: String,
    pub config: SpawnConfig,
    /// READY drones of the pool, as a recent snapshot shows them (shared: Connects of one pool
    /// between two node changes get the same list).
    pub candidates: std::sync::Arc<[DroneSlot]>,
    pub lease_duration: Duration,
    pub action: ActionPayload,
    /// SHA-256 of the config's static token, stored like a connection token without expiry.
    pub static_token_hash: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ConnectSpec {
    pub key: Option<BackendKey>,
    pub spawn: Option<SpawnPlan>,
    pub token: IssuedToken,
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// The key's live backend.
    Found(Backend),
    /// A new backend, placed, with its Spawn action stored.
    Spawned(Backend),
    /// The key is held by a live backend with another tag.
    TagMismatch { held_tag: String },
    /// No live backend and no spawn plan.
    NotFound,
    /// No candidate drone at all.
    NoDrone,
    /// Candidates exist but every one is at capacity.
    PoolFull,
}

/// What applying a drone's event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    Applied(Box<Backend>),
    /// Stale or repeated: nothing changed.
    Ignored,
    /// No such backend on that drone.
    Unknown,
}

/// Which backends a listing returns: the domain's, which the API reads from the wire.
pub use hangar::domain::BackendFilter;

/// One row of the backend history as the watch log carries it: the backend right after
/// `revision`, and its state before (`None` for a new backend), so a watcher can tell whether
/// the change moved it into or out of its filter without remembering anything per backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChange {
    pub revision: Revision,
    pub kind: ChangeKind,
    pub backend: Backend,
    pub previous: Option<BackendState>,
}

/// One page of backends, read at one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendPage {
    pub backends: Vec<Backend>,
    /// The revision the page was read at.
    pub revision: Revision,
    /// Whether backends after the last one returned may match.
    pub more: bool,
}

#[async_trait]
pub trait BackendStore: Send + Sync {
    /// Get-or-create by key in one write transaction: the key's live backend, or a new one placed
    /// by `pick` among the candidates that still have room (counted from the store), with its
    /// Spawn action, the key taken with the next fencing token, and `spec.token` issued.
    async fn connect_backend(&self, spec: ConnectSpec, pick: Pick<'static>) -> Result<ConnectOutcome, StoreError>;

    async fn get_backend(&self, id: &str) -> Result<Option<Backend>, StoreError>;

    /// Up to `limit` backends matching `filter` with ids greater than `after_id`, by id, read at
    /// one snapshot whose revision the page carries; and whether more may follow.
    async fn list_backends(
        &self,
        filter: &BackendFilter,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<BackendPage, StoreError>;

    /// Every backend matching `filter`, by id, read at one snapshot: the initial state of a
    /// `WatchBackends` stream, exact at the page's revision.
    async fn backend_snapshot(&self, filter: &BackendFilter) -> Result<BackendPage, StoreError>;

    /// The backend's statuses recorded after `after`, oldest first.
    async fn backend_history(&self, id: &str, after: Revision) -> Result<Vec<(Revision, BackendStatus)>, StoreError>;

    /// How many backends are in each state (states with none are left out): one
    /// `COUNT … GROUP BY state` over the state index, for the `hangar_backends` gauge.
    async fn backend_state_counts(&self) -> Result<Vec<(BackendState, u64)>, StoreError>;

    /// Applies a drone's event with the forward-only transition; on TERMINATED frees the key and
    /// drops the backend's tokens and pending actions. The one change after TERMINATED: a LOST
    /// record takes the drone's KEY_EXPIRED ([`BackendStatus::refined_by`]), as a new revision.
    async fn apply_backend_event(
        &self,
        drone_id: &str,
        backend_id: &str,
        status: BackendStatus,
        address: &str,
        now: DateTime<Utc>,
    ) -> Result<EventOutcome, StoreError>;

    /// A drone's waiting reports in one store transaction: its backend events in order, each
    /// applied as [`apply_backend_event`](Self::apply_backend_event) would (one outcome each, in
    /// order), and its action acknowledgements as [`ack_action`](Self::ack_action).
    async fn apply_drone_reports(
        &self,
        drone_id: &str,
        events: Vec<DroneEvent>,
        acks: Vec<String>,
    ) -> Result<Vec<EventOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(events.len());
        for event in events {
            outcomes.push(
                self.apply_backend_event(drone_id, &event.backend_id, event.status, &event.address, event.now).await?,
            );
        }
        for ack in acks {
            self.ack_action(drone_id, &ack).await?;
        }
        Ok(outcomes)
    }

    /// Stores a Terminate action for a live backend, unless one at least as hard is pending.
    /// `None` for an unknown backend; a terminated one is returned unchanged.
    async fn request_termination(
        &self,
        id: &str,
        kind: TerminationKind,
        reason: TerminationReason,
        now: DateTime<Utc>,
    ) -> Result<Option<Backend>, StoreError>;

    /// Soft-terminates (EXTERNAL) a live backend whose drone is draining with a deadline at or
    /// before `now`. The drain is read in the same write transaction, so once UndrainNode has
    /// committed a passed deadline terminates nothing. Whether a Terminate action was stored.
    async fn terminate_for_drain(&self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;

    /// The drone's pending actions, oldest first.
    async fn pending_actions(&self, drone_id: &str) -> Result<Vec<PendingAction>, StoreError> {
        Ok(self.queued_actions(drone_id, 0).await?.into_iter().map(|queued| queued.action).collect())
    }

    /// The drone's pending actions after `after_seq` in its queue (0: all), oldest first.
    async fn queued_actions(&self, drone_id: &str, after_seq: i64) -> Result<Vec<QueuedAction>, StoreError>;

    /// The drones that have pending actions (delivered but unacknowledged ones included): what
    /// the controller's one periodic poll wakes, instead of every session reading its own.
    async fn drones_with_pending_actions(&self) -> Result<Vec<String>, StoreError>;

    /// The drone acknowledged the action: it is deleted (only if it is that drone's).
    async fn ack_action(&self, drone_id: &str, action_id: &str) -> Result<(), StoreError>;

    /// Extends the key's lease to `expires_at` while `backend_id` holds it with `fencing_token`;
    /// `false` otherwise. A lease that ran out is renewed as long as the key is still held: only
    /// the sweep frees a key, by the rule of [`ExpiryRule`](super::ExpiryRule), which holds it
    /// for the drones a store outage made wait (docs/design/backends-and-leases.md#store-outages).
    async fn renew_key(
        &self,
        backend_id: &str,
        key: &BackendKey,
        fencing_token: u64,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// A batch of [`renew_key`](Self::renew_key)s in one transaction: for each renewal, in
    /// order, whether it was renewed. Each key is decided on its own condition; the transaction
    /// only saves commits (docs/design/backends-and-leases.md#key-leases-and-fencing).
    async fn renew_keys(&self, renewals: &[KeyRenewal], expires_at: DateTime<Utc>) -> Result<Vec<bool>, StoreError>;

    /// Proxy traffic: moves `last_activity_at` forward. Not a revision: nobody watches it.
    async fn record_activity(&self, backend_ids: &[String], now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Backends whose stored limit time (a lower bound of when their lifetime or idle limit is
    /// reached, see [`Backend::limit_due_at`]) is at or before `now`, earliest first, at most
    /// `limit`. Backends without a limit or no longer running are never among them.
    async fn backends_due_for_limits(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Backend>, StoreError>;

    /// Stores new limit times for backends a sweep found not due yet (traffic moved their idle
    /// deadline) or no longer running (`None`). Not a revision: nobody watches it.
    async fn defer_limits(&self, deferrals: &[(String, Option<DateTime<Utc>>)]) -> Result<(), StoreError>;

    /// Live holders of keys whose lease (of `lease`) ended before `now` and that
    /// [`ExpiryRule`](super::ExpiryRule) lets go, by every controller's tick.
    async fn expired_key_holders(&self, now: DateTime<Utc>, lease: Duration) -> Result<Vec<Backend>, StoreError>;

    /// Frees the key `backend_id` holds if its lease is still expired at `now` and the rule still
    /// lets it go, both read again under the write lock; with `lost`, the backend also ends
    /// TERMINATED (LOST). Returns the backend as it is afterwards.
    async fn release_expired_key(
        &self,
        backend_id: &str,
        lost: bool,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Backend>, StoreError>;

    /// Records that this controller reached the store (its row of `controller_ticks`, replaced),
    /// and forgets other controllers' ticks older than `forget_before`.
    async fn record_controller_tick(
        &self,
        tick: &super::ControllerTick,
        forget_before: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Every controller's last tick.
    async fn controller_ticks(&self) -> Result<Vec<super::ControllerTick>, StoreError>;

    /// Ends a live backend TERMINATED (LOST) without its drone: the drone is gone for good.
    /// Returns the backend as it is afterwards; `None` for an unknown id.
    async fn mark_lost(&self, backend_id: &str, now: DateTime<Utc>) -> Result<Option<Backend>, StoreError>;

    /// Deletes connection tokens that expired before `now` (static ones never do); returns how
    /// many.
    async fn purge_expired_tokens(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Retention: removes up to `limit` backends that ended TERMINATED before
    /// `terminated_before`, oldest first, in one write transaction. Each removal is one REMOVED
    /// change under its own revision (the backend as it ended, state before TERMINATED), so
    /// watchers see it; the backend's row, tokens and actions go, and its key row too when the
    /// key is free and this backend was its last holder (its fencing token is kept as the floor
    /// a key without a row starts above). Returns how many were removed; fewer than `limit`
    /// means none is left to remove.
    async fn remove_terminated_backends(
        &self,
        terminated_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError>;

    /// Status changes of every backend after revision `after`, oldest first, at most `limit`:
    /// `(revision, backend id, status)`. Proxies' sessions use it to learn which routes died.
    async fn backend_changes_since(
        &self,
        after: Revision,
        limit: usize,
    ) -> Result<Vec<(Revision, String, BackendStatus)>, StoreError>;

    /// What a connection token (by hash) opens at `now`: its backend and the identity it carries.
    /// `None` for an unknown or expired token.
    async fn token_route(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<TokenRoute>, StoreError>;
}

/// A drone's report of a backend's new status, as [`BackendStore::apply_drone_reports`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroneEvent {
    pub backend_id: String,
    pub status: BackendStatus,
    pub address: String,
    pub now: DateTime<Utc>,
}

/// One key of a batch renewal: the drone says `backend_id` holds `key` with `fencing_token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRenewal {
    pub backend_id: String,
    pub key: BackendKey,
    pub fencing_token: u64,
}

/// The backend behind a connection token, for the proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRoute {
    pub backend: Backend,
    pub user: String,
    pub auth: BTreeMap<String, String>,
    /// `None` for static tokens.
    pub expires_at: Option<DateTime<Utc>>,
}
