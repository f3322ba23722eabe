//! Group commit for the backend writes that come in bursts: placements (`Connect`), drone reports
//! (backend events and action acknowledgements) and termination requests.
//!
//! Every write serializes on the revision counter (see [`super::super`]), and on SQLite each
//! commit is an fsync, so one transaction per write capped placements at the commit rate. Here a
//! write joins a queue; whoever holds the queue's leader lock takes *every* write waiting and runs
//! them, in queue order, in one write transaction, each with its own revision (the counter is
//! bumped once per change inside the transaction). Nothing is decided differently from a write
//! alone: the writes of a batch run one after the other under the same lock a lone write holds,
//! each sees the ones before it (a second Connect for a key finds the first one's backend; a
//! placement counts the backends placed before it), and none is answered before the batch has
//! committed. A batch that fails is rolled back whole and its writes are retried one by one, so a
//! write that fails fails alone.
//! (docs/design/backends-and-leases.md#connect-get-or-create-by-key)

use super::super::{Dialect, SqlStore};
use super::group::{GroupQueue, Runs};
use super::writes::{ActionRow, BackendRow, HistoryRow, KeyRow, ReleaseRow, Rows, TokenRow, padded_chunks, parameters};
use crate::store::backends::*;
use crate::store::rows::{self, from_sqlx};
use crate::store::{Change, ChangeKind, LocalCommit, Revision, StoreError};
use chrono::{DateTime, Utc};
use hangar::domain::{
    Backend, BackendKey, BackendState, BackendStatus, TerminationKind, TerminationReason, status_message,
};
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Transaction, Type};
use std::collections::HashMap;
use std::future::Future;

/// One write waiting for a batch.
pub(in crate::store::sql) enum Op {
    Connect(Box<ConnectSpec>, Pick<'static>),
    Reports { drone_id: String, events: Vec<DroneEvent>, acks: Vec<String> },
    Terminate { id: String, kind: TerminationKind, reason: TerminationReason, now: DateTime<Utc> },
}

/// What a write did, once its batch committed.
pub(in crate::store::sql) enum Done {
    Connect(Box<ConnectOutcome>),
    Reports(Vec<EventOutcome>),
    Terminate(Option<Box<Backend>>),
}

/// The writes waiting for the next batch, and the lock its leader holds.
pub(in crate::store::sql) type WriteQueue = GroupQueue<Op, Done>;

pub(in crate::store::sql) fn write_queue() -> WriteQueue {
    GroupQueue::new("the write's batch")
}

/// One batch's transaction: the revisions it handed out, with the change each made (if any).
struct Batch<DB: sqlx::Database> {
    tx: Transaction<'static, DB>,
    /// Bumped by `begin_write`; the first change takes it, the next ones the revisions after
    /// it, and the counter is moved past them once, before the commit (the batch holds the
    /// write lock, so nobody else takes a revision meanwhile).
    first: Revision,
    revisions: Vec<(Revision, Option<Change>)>,
    /// Something other than a revision was written (a token, an acknowledgement).
    wrote: bool,
    /// Live backends per drone as this transaction sees them, counted once per batch and kept
    /// up to date by the batch's own placements and terminations.
    live: HashMap<String, u32>,
    /// The drones this batch gave actions other than Spawns to: their sessions, and only
    /// theirs, are woken to read them once it commits (docs/design/drone-link.md#wake-ups).
    woken: Vec<String>,
    /// The Spawns this batch queued: carried to their drones' sessions once it commits, with
    /// their places in the queues (`queued`) and their backends' rows, instead of read.
    spawns: Vec<PendingAction>,
    /// Each action written so far, by id: its place in its drone's queue.
    queued: HashMap<String, i64>,
    /// The fencing floor, read once per batch (only retention raises it, never inside a batch).
    fencing_floor: Option<i64>,
    /// Keys as this transaction sees them (`None`: no row), for every key the batch's Connects
    /// name: read in one statement before the first write, then kept up to date by the batch's
    /// own placements and releases.
    keys: HashMap<(String, String), Option<Holder>>,
    /// Backends as this transaction sees them (`None`: no row): those the batch's events and
    /// terminations name, read in one statement before the first write, and those it creates or
    /// changes, in their newest version.
    backends: HashMap<String, Option<Backend>>,
    /// The rows the batch writes and the ends it releases, held back until it ends: what the
    /// batch reads after a write of its own, it reads from its copies above (`keys`, `backends`,
    /// `live`), never from the database.
    rows: Rows,
}

/// A key's row as a batch sees it.
#[derive(Clone)]
struct Holder {
    tag: String,
    /// The live holder's id, `""` when the key is free.
    backend_id: String,
    fencing_token: i64,
}

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    /// Runs `op` in the next batch and answers what it did, once that batch committed.
    pub(in crate::store::sql) async fn batched(&self, op: Op) -> Result<Done, StoreError> {
        self.batch.submit(self, op).await
    }

    /// The writes of `ops` in one transaction, in order; commits and publishes their changes.
    async fn run_batch(&self, ops: &[Op]) -> Result<Vec<Done>, StoreError> {
        let started = std::time::Instant::now();
        let (tx, first) = self.begin_write().await?;
        let locked = started.elapsed();
        let mut batch = Batch {
            tx,
            first,
            revisions: Vec::new(),
            wrote: false,
            live: HashMap::new(),
            woken: Vec::new(),
            spawns: Vec::new(),
            queued: HashMap::new(),
            fencing_floor: None,
            keys: HashMap::new(),
            backends: HashMap::new(),
            rows: Rows::default(),
        };
        Self::read_ahead(&mut batch, ops).await?;
        let read = started.elapsed();
        let mut done = Vec::with_capacity(ops.len());
        for op in ops {
            done.push(match op {
                Op::Connect(spec, pick) => Done::Connect(Box::new(Self::connect_in(&mut batch, spec, *pick).await?)),
                Op::Reports { drone_id, events, acks } => {
                    Done::Reports(Self::reports_in(&mut batch, drone_id, events, acks).await?)
                }
                Op::Terminate { id, kind, reason, now } => {
                    Done::Terminate(Self::terminate_batched(&mut batch, id, *kind, *reason, *now).await?.map(Box::new))
                }
            });
        }
        let applied = started.elapsed();
        // The rows held back, written at the batch's end.
        if !batch.rows.is_empty() {
            batch.wrote = true;
            let queued = Self::write_rows(&mut batch.tx, &mut batch.rows).await?;
            batch.queued.extend(queued);
        }
        let written = started.elapsed();
        let spawns = Self::carried_spawns(&mut batch);
        let Batch { mut tx, revisions, wrote, mut woken, .. } = batch;
        if revisions.is_empty() && !wrote {
            // Nothing changed: the revision goes back with the rollback.
            tx.rollback().await.map_err(from_sqlx)?;
            return Ok(done);
        }
        let last = revisions.last().map_or(first, |(r, _)| *r);
        if last > first {
            let counter = Self::take_more_revisions(&mut tx, last - first).await?;
            if counter != last {
                return Err(StoreError::Corrupt(format!(
                    "the revision counter moved under a write batch: {counter}, expected {last}"
                )));
            }
        }
        woken.sort_unstable();
        woken.dedup();
        // Only other writes (a token, an acknowledgement): one commit without a change.
        let commits: Vec<LocalCommit> = if revisions.is_empty() {
            vec![LocalCommit { revision: first, change: None }]
        } else {
            revisions.into_iter().map(|(revision, change)| LocalCommit { revision, change }).collect()
        };
        self.commit_publishing(tx, last, commits, &woken, spawns).await?;
        // Each phase's end, from the start: where a batch's time goes.
        tracing::debug!(writes = ops.len(), ?locked, ?read, ?applied, ?written, elapsed = ?started.elapsed(), "backend write batch");
        Ok(done)
    }

    /// The next revision of the batch: the one `begin_write` took, then one more each time (the
    /// caller records a change under it before asking again).
    fn next_revision(batch: &Batch<DB>) -> Revision {
        batch.first + batch.revisions.len() as Revision
    }

    /// Takes the next revision for `change` (`None`: a write no watcher sees).
    async fn record(
        batch: &mut Batch<DB>,
        change: impl FnOnce(Revision) -> Option<Change>,
    ) -> Result<Revision, StoreError> {
        let revision = Self::next_revision(batch);
        batch.revisions.push((revision, change(revision)));
        Ok(revision)
    }

    /// Reads, in one statement each, the keys the batch's Connects name and the backends its
    /// events and terminations name, instead of one statement per write.
    async fn read_ahead(batch: &mut Batch<DB>, ops: &[Op]) -> Result<(), StoreError> {
        let mut keys: Vec<&BackendKey> = Vec::new();
        let mut ids: Vec<&str> = Vec::new();
        for op in ops {
            match op {
                Op::Connect(spec, _) => keys.extend(spec.key.as_ref()),
                Op::Reports { events, .. } => ids.extend(events.iter().map(|e| e.backend_id.as_str())),
                Op::Terminate { id, .. } => ids.push(id),
            }
        }
        keys.sort_unstable_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        keys.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        ids.sort_unstable();
        ids.dedup();
        Self::read_keys(batch, &keys).await?;
        for chunk in padded_chunks(&ids) {
            let sql = format!(
                "SELECT {} FROM backends WHERE id IN ({})",
                super::BACKEND_COLUMNS,
                parameters::<DB>(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in &chunk {
                query = query.bind(id.to_string());
                batch.backends.insert(id.to_string(), None);
            }
            for row in query.fetch_all(&mut *batch.tx).await.map_err(from_sqlx)? {
                let backend = super::decode_backend(&row)?;
                batch.backends.insert(backend.id.clone(), Some(backend));
            }
        }
        Ok(())
    }

    /// Reads the rows of `keys` (`None`: no row) into the batch's copies, one statement per
    /// chunk of keys.
    async fn read_keys(batch: &mut Batch<DB>, keys: &[&BackendKey]) -> Result<(), StoreError> {
        for chunk in padded_chunks(keys) {
            // One lookup of the primary key per key, their rows together: for a long `OR` of
            // keys, or a join with the keys as a list of values, PostgreSQL's planner scanned the
            // whole table (4–11 ms a batch, `pg_stat_statements`).
            let lookups: Vec<String> = (0..chunk.len())
                .map(|i| {
                    format!(
                        "SELECT namespace, name, tag, backend_id, fencing_token FROM backend_keys \
                         WHERE namespace = {} AND name = {}",
                        parameters::<DB>(2 * i + 1, 1),
                        parameters::<DB>(2 * i + 2, 1)
                    )
                })
                .collect();
            let sql = lookups.join(" UNION ALL ");
            let mut query = sqlx::query(&sql);
            for key in &chunk {
                query = query.bind(key.namespace.clone()).bind(key.name.clone());
                batch.keys.insert((key.namespace.clone(), key.name.clone()), None);
            }
            for row in query.fetch_all(&mut *batch.tx).await.map_err(from_sqlx)? {
                let name = (row.try_get(0).map_err(from_sqlx)?, row.try_get(1).map_err(from_sqlx)?);
                let mut holder = Holder {
                    tag: row.try_get(2).map_err(from_sqlx)?,
                    backend_id: row.try_get(3).map_err(from_sqlx)?,
                    fencing_token: row.try_get(4).map_err(from_sqlx)?,
                };
                // A holder the batch ended still holds the row until the batch's rows are
                // written (`Rows::release`); to the batch the key is free.
                if let Some(Some(ended)) = batch.backends.get(&holder.backend_id)
                    && ended.status.state == BackendState::Terminated
                {
                    holder.backend_id.clear();
                }
                batch.keys.insert(name, Some(holder));
            }
        }
        Ok(())
    }

    /// The backend `id` as the batch sees it.
    async fn backend(batch: &mut Batch<DB>, id: &str) -> Result<Option<Backend>, StoreError> {
        if let Some(known) = batch.backends.get(id) {
            return Ok(known.clone());
        }
        // Not named up front (a key's holder): not one the batch wrote either, so its row is
        // as the database has it.
        let found = Self::backend_in(&mut batch.tx, id).await?;
        batch.backends.insert(id.to_string(), found.clone());
        Ok(found)
    }

    /// The key's row as the batch sees it.
    async fn key_holder(batch: &mut Batch<DB>, key: &BackendKey) -> Result<Option<Holder>, StoreError> {
        let name = (key.namespace.clone(), key.name.clone());
        if let Some(known) = batch.keys.get(&name) {
            return Ok(known.clone());
        }
        // Every key a Connect of the batch names was read ahead; this is for one that was not.
        Self::read_keys(batch, &[key]).await?;
        Ok(batch.keys.get(&name).cloned().flatten())
    }

    /// A new version of a backend: its row (held back) and the batch's view of it.
    fn put_backend(batch: &mut Batch<DB>, backend: &Backend, revision: Revision) -> Result<(), StoreError> {
        Self::hold_backend(batch, backend, BackendRow::of(backend, revision)?);
        Ok(())
    }

    /// A new status of a backend (`previous`: the state before it; `None`, a new backend): its
    /// row and its history row, held back, with the backend encoded once for both, and the
    /// batch's view of it.
    fn put_status(
        batch: &mut Batch<DB>,
        backend: &Backend,
        revision: Revision,
        previous: Option<BackendState>,
    ) -> Result<(), StoreError> {
        let row = BackendRow::of(backend, revision)?;
        batch.rows.history(HistoryRow::with_data(backend, revision, previous, row.data.clone())?);
        Self::hold_backend(batch, backend, row);
        Ok(())
    }

    /// Holds `row`, the new version of `backend`, and makes it the batch's view of it.
    fn hold_backend(batch: &mut Batch<DB>, backend: &Backend, row: BackendRow) {
        batch.rows.backend(row);
        batch.backends.insert(backend.id.clone(), Some(backend.clone()));
    }

    /// The Spawns the batch queued, each with its place in the drone's queue and its backend as
    /// the batch leaves it, for the sessions of their drones. A Spawn whose backend the batch
    /// also ended is not carried (nor, having been released with it, queued); should one lack
    /// its place or its row, its drone reads it instead.
    fn carried_spawns(batch: &mut Batch<DB>) -> Vec<QueuedAction> {
        let mut carried = Vec::with_capacity(batch.spawns.len());
        for action in std::mem::take(&mut batch.spawns) {
            let backend = batch.backends.get(&action.backend_id).cloned().flatten();
            match (batch.queued.get(&action.id), backend) {
                (Some(&seq), Some(backend))
                    if backend.status.state.is_live() && backend.termination_requested.is_none() =>
                {
                    // As the store keeps it, to the millisecond: as a read would find it.
                    let created_at = DateTime::from_timestamp_millis(rows::millis(action.created_at));
                    let action = PendingAction { created_at: created_at.unwrap_or(action.created_at), ..action };
                    carried.push(QueuedAction { seq, action, backend: Some(backend) })
                }
                (Some(_), Some(_)) => {}
                _ => batch.woken.push(action.drone_id),
            }
        }
        carried
    }

    /// Reads the live backends of every drone of `drones` the batch has not read yet, from
    /// `drone_load` (kept by triggers on `backends`), in one statement; `live` then keeps them
    /// current through the batch's own placements and ends. A load read here never misses a row
    /// the batch holds back: a placement reads its candidates' loads before placing on one, and
    /// an end reads its drone's before counting itself out.
    async fn read_loads(batch: &mut Batch<DB>, drones: &[&str]) -> Result<(), StoreError> {
        let unread: Vec<&str> = drones.iter().copied().filter(|id| !batch.live.contains_key(*id)).collect();
        for chunk in padded_chunks(&unread) {
            let sql = format!(
                "SELECT drone_id, live FROM drone_load WHERE drone_id IN ({})",
                parameters::<DB>(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in &chunk {
                query = query.bind(id.to_string());
                batch.live.insert(id.to_string(), 0);
            }
            for row in query.fetch_all(&mut *batch.tx).await.map_err(from_sqlx)? {
                let live: i64 = row.try_get(1).map_err(from_sqlx)?;
                batch.live.insert(row.try_get(0).map_err(from_sqlx)?, u32::try_from(live.max(0)).unwrap_or(u32::MAX));
            }
        }
        Ok(())
    }

    /// `BackendStore::connect_backend` inside a batch.
    async fn connect_in(
        batch: &mut Batch<DB>,
        spec: &ConnectSpec,
        pick: Pick<'static>,
    ) -> Result<ConnectOutcome, StoreError> {
        let ConnectSpec { key, spawn, token, now } = spec;
        let now = *now;
        let token_expiry = rows::millis(token.expires_at);
        let mut previous_fence: Option<i64> = None;
        if let Some(key) = key
            && let Some(holder) = Self::key_holder(batch, key).await?
        {
            previous_fence = Some(holder.fencing_token);
            if !holder.backend_id.is_empty() {
                if holder.tag != key.tag {
                    return Ok(ConnectOutcome::TagMismatch { held_tag: holder.tag });
                }
                let backend = Self::backend(batch, &holder.backend_id).await?.ok_or_else(|| {
                    StoreError::Corrupt(format!("key {key} held by missing backend {}", holder.backend_id))
                })?;
                // No backend change, so no revision: only the token is written.
                batch.rows.token(TokenRow::of(&backend.id, token, token_expiry, now)?);
                return Ok(ConnectOutcome::Found(backend));
            }
        }
        let Some(plan) = spawn else { return Ok(ConnectOutcome::NotFound) };
        if plan.candidates.is_empty() {
            return Ok(ConnectOutcome::NoDrone);
        }
        let candidates: Vec<&str> = plan.candidates.iter().map(|slot| slot.node_id.as_str()).collect();
        Self::read_loads(batch, &candidates).await?;
        let mut loads = Vec::with_capacity(plan.candidates.len());
        for slot in plan.candidates.iter() {
            let live = batch.live.get(&slot.node_id).copied().unwrap_or_default();
            let load = DroneLoad { node_id: slot.node_id.clone(), capacity: slot.capacity, live };
            if load.free() > 0 {
                loads.push(load);
            }
        }
        let Some(chosen) = pick(&loads).and_then(|i| loads.get(i)) else { return Ok(ConnectOutcome::PoolFull) };
        let fencing_token = match (key, previous_fence) {
            (Some(_), Some(previous)) => previous + 1,
            // No row: a new key, or one whose row retention removed; either way above every
            // token a removed row held.
            (Some(_), None) => {
                let floor = match batch.fencing_floor {
                    Some(floor) => floor,
                    None => *batch.fencing_floor.insert(Self::fencing_floor_in(&mut batch.tx).await?),
                };
                floor + 1
            }
            (None, _) => 0,
        };
        let config = plan.config.clone();
        let backend = Backend {
            id: plan.backend_id.clone(),
            key: key.clone(),
            status: BackendStatus::new(BackendState::Scheduled, now),
            drone_id: chosen.node_id.clone(),
            cluster: config.cluster.clone(),
            pool: config.pool.clone(),
            labels: config.labels.clone(),
            created_at: now,
            updated_at: now,
            last_activity_at: now,
            fencing_token: u64::try_from(fencing_token).unwrap_or_default(),
            spawn_config: config,
            address: String::new(),
            termination_requested: None,
        };
        let revision = Self::next_revision(batch);
        if let Some(key) = key {
            let lease = rows::millis(now + chrono::Duration::from_std(plan.lease_duration).unwrap_or_default());
            batch.rows.key(KeyRow::new(key, &backend.id, fencing_token, lease, &backend.drone_id, revision));
            let holder = Holder { tag: key.tag.clone(), backend_id: backend.id.clone(), fencing_token };
            batch.keys.insert((key.namespace.clone(), key.name.clone()), Some(holder));
        }
        Self::put_status(batch, &backend, revision, None)?;
        let action = PendingAction {
            id: plan.action_id.clone(),
            drone_id: backend.drone_id.clone(),
            backend_id: backend.id.clone(),
            payload: plan.action.clone(),
            created_at: now,
        };
        batch.rows.action(ActionRow::of(&action)?);
        batch.spawns.push(action);
        batch.rows.token(TokenRow::of(&backend.id, token, token_expiry, now)?);
        if let Some(hash) = &plan.static_token_hash {
            let static_token = IssuedToken { hash: hash.clone(), ..token.clone() };
            batch.rows.token(TokenRow::of(&backend.id, &static_token, 0, now)?);
        }
        *batch.live.entry(backend.drone_id.clone()).or_default() += 1;
        let change = BackendChange { revision, kind: ChangeKind::Added, backend: backend.clone(), previous: None };
        batch.revisions.push((revision, Some(Change::Backend(change))));
        Ok(ConnectOutcome::Spawned(backend))
    }

    /// A drone's events (each as `apply_backend_event`) and acknowledgements, inside a batch.
    async fn reports_in(
        batch: &mut Batch<DB>,
        drone_id: &str,
        events: &[DroneEvent],
        acks: &[String],
    ) -> Result<Vec<EventOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(events.len());
        for event in events {
            let Some(mut backend) = Self::backend(batch, &event.backend_id).await? else {
                outcomes.push(EventOutcome::Unknown);
                continue;
            };
            if backend.drone_id != drone_id {
                outcomes.push(EventOutcome::Unknown);
                continue;
            }
            // A LOST record told how it really ended is the one change after TERMINATED; it has
            // nothing left to release.
            let refined = backend.status.refined_by(&event.status);
            if !refined && backend.status.state.transition(event.status.state).is_err() {
                outcomes.push(EventOutcome::Ignored);
                continue;
            }
            let terminated = event.status.state == BackendState::Terminated && !refined;
            let previous = backend.status.state;
            let mut status = event.status.clone();
            status.message = status_message(&status.message, backend.spawn_config.secrets());
            backend.status = status;
            if !event.address.is_empty() {
                backend.address = event.address.clone();
            }
            backend.updated_at = event.now;
            let revision = Self::next_revision(batch);
            Self::put_status(batch, &backend, revision, Some(previous))?;
            if terminated {
                // Released with the batch's other rows, after them (`Rows::release`); the batch's
                // own view of the key and of the drone's load changes now. The load is read
                // first if the batch has not read it yet: the database still counts this backend
                // live (its end is held back with the rest), so the count read, less one, is
                // right.
                batch.rows.release(ReleaseRow::of(&backend.id, event.now));
                for holder in batch.keys.values_mut().flatten() {
                    if holder.backend_id == backend.id {
                        holder.backend_id.clear();
                    }
                }
                Self::read_loads(batch, &[backend.drone_id.as_str()]).await?;
                if let Some(live) = batch.live.get_mut(&backend.drone_id) {
                    *live = live.saturating_sub(1);
                }
            }
            let change = BackendChange {
                revision,
                kind: ChangeKind::Modified,
                backend: backend.clone(),
                previous: Some(previous),
            };
            batch.revisions.push((revision, Some(Change::Backend(change))));
            outcomes.push(EventOutcome::Applied(Box::new(backend)));
        }
        // Deleted with the batch's other rows (`Rows::ack`), after the actions it queued.
        for ack in acks {
            batch.rows.ack(drone_id, ack);
        }
        Ok(outcomes)
    }

    /// `BackendStore::request_termination` inside a batch: a Terminate action for a live
    /// backend, unless one at least as hard is pending.
    async fn terminate_batched(
        batch: &mut Batch<DB>,
        id: &str,
        kind: TerminationKind,
        reason: TerminationReason,
        now: DateTime<Utc>,
    ) -> Result<Option<Backend>, StoreError> {
        let Some(mut backend) = Self::backend(batch, id).await? else { return Ok(None) };
        if !backend.status.state.is_live()
            || backend.termination_requested.is_some_and(|asked| super::kind_rank(asked) >= super::kind_rank(kind))
        {
            return Ok(Some(backend));
        }
        backend.termination_requested = Some(kind);
        backend.updated_at = now;
        // Not a status change: a revision (the row carries it), but no watch event.
        let revision = Self::record(batch, |_| None).await?;
        Self::put_backend(batch, &backend, revision)?;
        let action = PendingAction {
            id: new_action_id(),
            drone_id: backend.drone_id.clone(),
            backend_id: backend.id.clone(),
            payload: ActionPayload::Terminate { kind, reason },
            created_at: now,
        };
        batch.rows.action(ActionRow::of(&action)?);
        batch.woken.push(action.drone_id);
        Ok(Some(backend))
    }
}

impl<DB> Runs<Op, Done> for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    fn run<'a>(&'a self, ops: &'a [Op]) -> impl Future<Output = Result<Vec<Done>, StoreError>> + Send + 'a {
        self.run_batch(ops)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::backends::*;
    use crate::store::{PostgresStore, SqliteStore};
    use chrono::Utc;
    use hangar::domain::{Backend, BackendKey, BackendState, BackendStatus, SpawnConfig, TerminationReason};
    use std::time::Duration;

    fn key(name: &str) -> BackendKey {
        BackendKey { namespace: "batch".into(), name: name.into(), tag: String::new() }
    }

    fn spec(key: BackendKey) -> ConnectSpec {
        spec_on(key, 100)
    }

    /// A Connect whose one candidate is drone `d1` with room for `capacity` backends.
    fn spec_on(key: BackendKey, capacity: u32) -> ConnectSpec {
        let wire = hangar::v1::SpawnConfig {
            executable: Some(hangar::v1::Executable { image: "hangar/test:1".into(), ..Default::default() }),
            ..Default::default()
        };
        let lease = Duration::from_secs(30);
        let now = Utc::now();
        ConnectSpec {
            key: Some(key),
            spawn: Some(SpawnPlan {
                backend_id: Backend::new_id(),
                action_id: new_action_id(),
                config: SpawnConfig::from_proto(&wire, "spawn_config").unwrap(),
                candidates: vec![DroneSlot { node_id: "d1".into(), capacity }].into(),
                lease_duration: lease,
                action: ActionPayload::Spawn {
                    startup_timeout: Duration::from_secs(5),
                    lease_duration: lease,
                    stop_grace: Duration::from_secs(1),
                    trace_context: Default::default(),
                },
                static_token_hash: None,
            }),
            token: IssuedToken {
                hash: uuid::Uuid::new_v4().simple().to_string(),
                user: "u".into(),
                auth: Default::default(),
                expires_at: now + chrono::Duration::hours(1),
            },
            now,
        }
    }

    fn first(loads: &[DroneLoad]) -> Option<usize> {
        (!loads.is_empty()).then_some(0)
    }

    /// Writes that reach the store together are one batch, in the order they were queued: here
    /// a first Connect takes the leader's lock alone, and while its batch runs, a drone's report
    /// that ends the holder of key `k`, then Connects for `k` and for fresh keys, queue behind
    /// it and run as the next batch. Inside that batch, the rows of earlier writes are held back
    /// until its end; each write must still see the ones before it.
    async fn a_batch_that_ends_a_keys_holder_and_places_the_key_again<DB>(store: &super::SqlStore<DB>)
    where
        super::SqlStore<DB>: BackendStore + crate::store::Store,
        DB: super::Dialect,
    {
        let mut wakeups = crate::store::Store::action_wakeups(store);
        let old = match store.connect_backend(spec(key("k")), &first).await.unwrap() {
            ConnectOutcome::Spawned(backend) => backend,
            other => panic!("expected a spawn, got {other:?}"),
        };
        let now = Utc::now();
        let mut ended = BackendStatus::new(BackendState::Terminated, now);
        ended.termination_reason = Some(TerminationReason::Exited);
        let end = DroneEvent { backend_id: old.id.clone(), status: ended, address: String::new(), now };
        let leader = store.connect_backend(spec(key("leader")), &first);
        let report = store.apply_drone_reports("d1", vec![end], Vec::new());
        let connects = futures::future::join_all((0..6).map(|i| {
            let name = if i % 2 == 0 { "k".to_string() } else { format!("fresh-{i}") };
            store.connect_backend(spec(key(&name)), &first)
        }));
        let (leader, report, connects) = tokio::join!(leader, report, connects);
        assert!(matches!(leader.unwrap(), ConnectOutcome::Spawned(_)));
        assert!(matches!(report.unwrap().as_slice(), [EventOutcome::Applied(_)]));
        let outcomes: Vec<ConnectOutcome> = connects.into_iter().map(Result::unwrap).collect();
        // The first Connect for `k` after the end places a new holder, one above the old token;
        // the next ones find it, although its rows were not written yet when they ran.
        let new = match &outcomes[0] {
            ConnectOutcome::Spawned(backend) => backend.clone(),
            other => panic!("expected a new holder of k, got {other:?}"),
        };
        assert_eq!(new.fencing_token, old.fencing_token + 1);
        assert_eq!(outcomes[2], ConnectOutcome::Found(new.clone()));
        assert_eq!(outcomes[4], ConnectOutcome::Found(new.clone()));
        for fresh in [&outcomes[1], &outcomes[3], &outcomes[5]] {
            assert!(matches!(fresh, ConnectOutcome::Spawned(b) if b.fencing_token == 1), "{fresh:?}");
        }
        // What the batch wrote is all there: the rows, the history, the actions, the tokens.
        let stored = store.get_backend(&new.id).await.unwrap().expect("the new holder's row");
        assert_eq!(stored.status.state, BackendState::Scheduled);
        assert_eq!(store.get_backend(&old.id).await.unwrap().unwrap().status.state, BackendState::Terminated);
        let history: Vec<_> =
            store.backend_history(&old.id, 0).await.unwrap().into_iter().map(|(_, s)| s.state).collect();
        assert_eq!(history, [BackendState::Scheduled, BackendState::Terminated]);
        let actions = store.pending_actions("d1").await.unwrap();
        let spawned: Vec<&str> = actions.iter().map(|a| a.backend_id.as_str()).collect();
        assert!(!spawned.contains(&old.id.as_str()), "the ended backend's action went with it");
        assert_eq!(actions.len(), 5, "the leader, the new holder and three fresh keys: {spawned:?}");
        assert!(spawned.contains(&new.id.as_str()));
        // The drone's queue: each action has its place, and asking for those after a place
        // answers exactly the ones behind it.
        let queued = store.queued_actions("d1", 0).await.unwrap();
        assert_eq!(queued.iter().map(|q| q.action.clone()).collect::<Vec<_>>(), actions);
        for spawn in &queued {
            let row = store.get_backend(&spawn.action.backend_id).await.unwrap();
            assert!(row.is_some() && spawn.backend == row, "a spawn comes with its backend's row: {spawn:?}");
        }
        assert!(queued.windows(2).all(|w| w[0].seq < w[1].seq), "{queued:?}");
        assert_eq!(store.queued_actions("d1", queued[1].seq).await.unwrap(), queued[2..]);
        // Each batch carried its Spawns to the drone's session, exactly as a read finds them
        // (the ended backend's too: it was live when its batch committed), and woke nobody to
        // read: these batches queued no other action. (On PostgreSQL the store's listener also
        // wakes sessions: every one as it starts listening, and the drone its own NOTIFY names,
        // meant for the other controllers.)
        let mut carried = Vec::new();
        while let Ok(wakeup) = wakeups.try_recv() {
            match wakeup {
                crate::store::ActionWakeup::Spawns(spawns) => carried.extend(spawns.iter().cloned()),
                _ if DB::ANNOUNCE.is_some() => {}
                other => panic!("only Spawns were queued, yet a wake-up asks for a read: {other:?}"),
            }
        }
        let (ended, live): (Vec<QueuedAction>, Vec<QueuedAction>) =
            carried.into_iter().partition(|spawn| spawn.action.backend_id == old.id);
        assert_eq!(ended.len(), 1, "{ended:?}");
        let mut live = live;
        live.sort_by_key(|spawn| spawn.seq);
        assert_eq!(live, queued);
        let mut counts = store.backend_state_counts().await.unwrap();
        counts.sort_by_key(|(state, _)| state.as_str());
        assert_eq!(counts, [(BackendState::Scheduled, 5), (BackendState::Terminated, 1)]);
        // Acknowledging them all is one statement; the renewals find the new holder's key row.
        let ids: Vec<String> = actions.iter().map(|a| a.id.clone()).collect();
        store.apply_drone_reports("d1", Vec::new(), ids).await.unwrap();
        assert!(store.pending_actions("d1").await.unwrap().is_empty());
        let renewal = KeyRenewal { backend_id: new.id.clone(), key: key("k"), fencing_token: new.fencing_token };
        let stale = KeyRenewal { backend_id: old.id.clone(), key: key("k"), fencing_token: old.fencing_token };
        let renewed = store.renew_keys(&[renewal, stale], Utc::now() + chrono::Duration::seconds(30)).await.unwrap();
        assert_eq!(renewed, [true, false]);
        // The drone's load (kept by triggers as the batch's rows were written) agrees: with room
        // for six, it takes one more and then none.
        assert!(matches!(
            store.connect_backend(spec_on(key("sixth"), 6), &first).await.unwrap(),
            ConnectOutcome::Spawned(_)
        ));
        // A place in the queue is never handed out again, not even once the actions at the end
        // of the queue were acknowledged (and their rows deleted): a drone session that sent
        // them finds the new one after them.
        let newer = store.queued_actions("d1", queued.last().unwrap().seq).await.unwrap();
        assert_eq!(newer.len(), 1, "the sixth's spawn, behind every earlier action: {newer:?}");
        assert_eq!(store.connect_backend(spec_on(key("seventh"), 6), &first).await.unwrap(), ConnectOutcome::PoolFull);
    }

    /// A drone's report that ends a backend and a Connect, queued behind a leader into one
    /// batch, on a drone with room for one: the end is released only as the batch's rows are
    /// written, yet within the batch its slot is free to the Connect at once (the drone's load,
    /// not read before the end, is read and counted down), and after the commit its key is free
    /// and its token is kept only for the grace after its end, not until its own expiry.
    async fn an_end_frees_its_slot_key_and_token_within_its_batch<DB>(store: &super::SqlStore<DB>)
    where
        super::SqlStore<DB>: BackendStore + crate::store::Store,
        DB: super::Dialect,
    {
        let mut placing = spec_on(key("ending"), 1);
        placing.token.expires_at = Utc::now() + chrono::Duration::hours(6);
        let token = placing.token.hash.clone();
        let ending = match store.connect_backend(placing, &first).await.unwrap() {
            ConnectOutcome::Spawned(backend) => backend,
            other => panic!("expected a spawn, got {other:?}"),
        };
        assert_eq!(store.connect_backend(spec_on(key("full"), 1), &first).await.unwrap(), ConnectOutcome::PoolFull);
        let now = Utc::now();
        let mut ended = BackendStatus::new(BackendState::Terminated, now);
        ended.termination_reason = Some(TerminationReason::Exited);
        let end = DroneEvent { backend_id: ending.id.clone(), status: ended, address: String::new(), now };
        // The leader finds the live holder (no slot taken) and runs alone; the end and the
        // Connect queue behind it and run together.
        let leader = store.connect_backend(spec_on(key("ending"), 1), &first);
        let report = store.apply_drone_reports("d1", vec![end], Vec::new());
        let placed = store.connect_backend(spec_on(key("after"), 1), &first);
        let (leader, report, placed) = tokio::join!(leader, report, placed);
        assert_eq!(leader.unwrap(), ConnectOutcome::Found(ending.clone()));
        assert!(matches!(report.unwrap().as_slice(), [EventOutcome::Applied(_)]));
        assert!(matches!(placed.unwrap(), ConnectOutcome::Spawned(_)), "the ended backend's slot was free");
        // The key went with the end: the next Connect for it places a new holder.
        match store.connect_backend(spec_on(key("ending"), 2), &first).await.unwrap() {
            ConnectOutcome::Spawned(holder) => assert_eq!(holder.fencing_token, ending.fencing_token + 1),
            other => panic!("expected a new holder of the ended backend's key, got {other:?}"),
        }
        // The token still routes (to the ended backend), for the grace after the end only.
        let route = store.token_route(&token, Utc::now()).await.unwrap().expect("the ended backend's token");
        assert_eq!(route.backend.id, ending.id);
        let until = route.expires_at.expect("an expiry");
        assert!(until <= now + chrono::Duration::hours(1) + chrono::Duration::seconds(1), "{until} vs end {now}");
        assert!(store.pending_actions("d1").await.unwrap().iter().all(|a| a.backend_id != ending.id));
    }

    /// SQLite stores a drone's new keys together, whichever order their placements came in, so
    /// that a round renewing them dirties few pages; a key taken over by a new holder on
    /// another drone keeps its row where it was.
    #[tokio::test]
    async fn sqlite_a_drones_new_keys_are_stored_together_whatever_the_order_of_placements() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&crate::store::sqlite_url(&dir.path().join("hangar.db"))).await.unwrap();
        let on = |name: &str, drone: &str| {
            let mut spec = spec(key(name));
            spec.spawn.as_mut().unwrap().candidates = vec![DroneSlot { node_id: drone.into(), capacity: 100 }].into();
            spec
        };
        // A key's row written by a controller from before, at the id SQLite chose.
        sqlx::query(
            "INSERT INTO backend_keys (namespace, name, tag, backend_id, fencing_token, lease_expires_at) \
             VALUES ('batch', 'old-0', '', '', 3, 0)",
        )
        .execute(&store.write)
        .await
        .unwrap();
        // One at a time, then many in one batch; the two drones' placements interleave.
        let mut placed = Vec::new();
        for i in 0..6 {
            let drone = ["d1", "d2"][i % 2];
            placed.push(store.connect_backend(on(&format!("{drone}-{i}"), drone), &first).await.unwrap());
        }
        let store = &store;
        let together = futures::future::join_all((6..20).map(|i| {
            let drone = ["d1", "d2"][i % 2];
            let spec = on(&format!("{drone}-{i}"), drone);
            async move { store.connect_backend(spec, &first).await.unwrap() }
        }))
        .await;
        placed.extend(together);
        assert!(placed.iter().all(|outcome| matches!(outcome, ConnectOutcome::Spawned(_))), "{placed:?}");
        let rows = |store: &SqliteStore| {
            let pool = store.read.clone();
            async move {
                sqlx::query_as::<_, (i64, String)>("SELECT rowid, name FROM backend_keys ORDER BY rowid")
                    .fetch_all(&pool)
                    .await
                    .unwrap()
            }
        };
        let stored = rows(store).await;
        assert_eq!(stored.len(), 21);
        let drones: Vec<&str> = stored.iter().map(|(_, name)| &name[..2]).collect();
        let runs = 1 + drones.windows(2).filter(|pair| pair[0] != pair[1]).count();
        assert_eq!((drones[0], runs), ("ol", 3), "the old row first, then each drone's keys in one run: {drones:?}");
        // Within its drone's run, a key follows the keys placed before it.
        for drone in ["d1", "d2"] {
            let order: Vec<usize> =
                stored.iter().filter(|(_, n)| n.starts_with(drone)).map(|(_, n)| n[3..].parse().unwrap()).collect();
            assert!(order.is_sorted(), "{drone}: {order:?}");
        }
        // `d1-0` ends; its key is placed again, on d2: the row is taken over where it was.
        let ConnectOutcome::Spawned(old) = &placed[0] else { unreachable!() };
        let mut ended = BackendStatus::new(BackendState::Terminated, Utc::now());
        ended.termination_reason = Some(TerminationReason::Exited);
        let end = DroneEvent { backend_id: old.id.clone(), status: ended, address: String::new(), now: Utc::now() };
        store.apply_drone_reports("d1", vec![end], Vec::new()).await.unwrap();
        let again = store.connect_backend(on("d1-0", "d2"), &first).await.unwrap();
        assert!(
            matches!(&again, ConnectOutcome::Spawned(b) if b.drone_id == "d2" && b.fencing_token == 2),
            "{again:?}"
        );
        assert_eq!(rows(store).await, stored);
    }

    #[tokio::test]
    async fn sqlite_an_end_frees_its_slot_key_and_token_within_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&crate::store::sqlite_url(&dir.path().join("hangar.db"))).await.unwrap();
        an_end_frees_its_slot_key_and_token_within_its_batch(&store).await;
    }

    #[tokio::test]
    async fn postgres_an_end_frees_its_slot_key_and_token_within_its_batch() {
        let cluster = crate::testing::PgCluster::shared().await.expect("PostgreSQL test cluster");
        let store = PostgresStore::open(&cluster.create_database().await.unwrap()).await.unwrap();
        an_end_frees_its_slot_key_and_token_within_its_batch(&store).await;
    }

    #[tokio::test]
    async fn sqlite_a_batch_that_ends_a_keys_holder_and_places_the_key_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&crate::store::sqlite_url(&dir.path().join("hangar.db"))).await.unwrap();
        a_batch_that_ends_a_keys_holder_and_places_the_key_again(&store).await;
    }

    #[tokio::test]
    async fn postgres_a_batch_that_ends_a_keys_holder_and_places_the_key_again() {
        let cluster = crate::testing::PgCluster::shared().await.expect("PostgreSQL test cluster");
        let store = PostgresStore::open(&cluster.create_database().await.unwrap()).await.unwrap();
        a_batch_that_ends_a_keys_holder_and_places_the_key_again(&store).await;
    }
}
