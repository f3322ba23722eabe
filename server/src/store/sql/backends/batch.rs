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
use crate::store::backends::*;
use crate::store::rows::{self, from_sqlx};
use crate::store::{Change, ChangeKind, LocalCommit, Revision, StoreError};
use chrono::{DateTime, Utc};
use hangar::domain::{Backend, BackendState, BackendStatus, TerminationKind, TerminationReason, status_message};
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Transaction, Type};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use tokio::sync::oneshot;

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

struct Queued {
    op: Op,
    reply: oneshot::Sender<Result<Done, StoreError>>,
}

/// The writes waiting for the next batch, and the lock its leader holds.
#[derive(Default)]
pub(in crate::store::sql) struct WriteQueue {
    waiting: Mutex<Vec<Queued>>,
    leader: tokio::sync::Mutex<()>,
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
    /// The drones this batch gave new actions to: their sessions, and only theirs, are woken
    /// once it commits (docs/design/drone-link.md#wake-ups).
    woken: Vec<String>,
    /// The fencing floor, read once per batch (only retention raises it, never inside a batch).
    fencing_floor: Option<i64>,
}

/// `state IN (…)` over the live states, so that the count walks `backends_by_drone` only over
/// live rows (a drone's terminated backends, which pile up under churn, are not visited).
fn live_count_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        let states: Vec<String> =
            BackendState::ALL.iter().filter(|s| s.is_live()).map(|s| format!("'{}'", s.as_str())).collect();
        format!("SELECT COUNT(*) FROM backends WHERE drone_id = $1 AND state IN ({})", states.join(", "))
    })
}

fn abandoned() -> StoreError {
    StoreError::Unavailable("the write's batch was abandoned before it committed".into())
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
        let (reply, mut answer) = oneshot::channel();
        self.batch.waiting.lock().unwrap_or_else(|e| e.into_inner()).push(Queued { op, reply });
        let leader = self.batch.leader.lock().await;
        match answer.try_recv() {
            // A leader before us took it.
            Ok(done) => return done,
            // That leader was cancelled before it committed: its whole batch rolled back.
            Err(oneshot::error::TryRecvError::Closed) => return Err(abandoned()),
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        // Ours is still waiting (only leaders take writes), so it is among these.
        let queued = std::mem::take(&mut *self.batch.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        let (ops, replies): (Vec<Op>, Vec<_>) = queued.into_iter().map(|q| (q.op, q.reply)).unzip();
        match self.run_batch(&ops).await {
            Ok(done) => {
                for (reply, done) in replies.into_iter().zip(done) {
                    let _ = reply.send(Ok(done));
                }
            }
            Err(err) if ops.len() == 1 => {
                if let Some(reply) = replies.into_iter().next() {
                    let _ = reply.send(Err(err));
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, writes = ops.len(), "a batch failed; its writes are retried one by one");
                for (op, reply) in ops.iter().zip(replies) {
                    let done = self.run_batch(std::slice::from_ref(op)).await.map(|mut d| d.remove(0));
                    let _ = reply.send(done);
                }
            }
        }
        drop(leader);
        answer.await.unwrap_or_else(|_| Err(abandoned()))
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
            fencing_floor: None,
        };
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
        self.commit_publishing(tx, last, commits, &woken).await?;
        tracing::debug!(writes = ops.len(), ?locked, elapsed = ?started.elapsed(), "backend write batch");
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

    async fn live_on(batch: &mut Batch<DB>, drone_id: &str) -> Result<u32, StoreError> {
        if let Some(live) = batch.live.get(drone_id) {
            return Ok(*live);
        }
        let row = sqlx::query(live_count_sql())
            .bind(drone_id.to_string())
            .fetch_one(&mut *batch.tx)
            .await
            .map_err(from_sqlx)?;
        let live: i64 = row.try_get(0).map_err(from_sqlx)?;
        let live = u32::try_from(live).unwrap_or(u32::MAX);
        batch.live.insert(drone_id.to_string(), live);
        Ok(live)
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
        if let Some(key) = key {
            let row = sqlx::query(
                "SELECT tag, backend_id, fencing_token FROM backend_keys WHERE namespace = $1 AND name = $2",
            )
            .bind(key.namespace.clone())
            .bind(key.name.clone())
            .fetch_optional(&mut *batch.tx)
            .await
            .map_err(from_sqlx)?;
            if let Some(row) = row {
                let tag: String = row.try_get(0).map_err(from_sqlx)?;
                let holder: String = row.try_get(1).map_err(from_sqlx)?;
                previous_fence = Some(row.try_get(2).map_err(from_sqlx)?);
                if !holder.is_empty() {
                    if tag != key.tag {
                        return Ok(ConnectOutcome::TagMismatch { held_tag: tag });
                    }
                    let backend = Self::backend_in(&mut batch.tx, &holder)
                        .await?
                        .ok_or_else(|| StoreError::Corrupt(format!("key {key} held by missing backend {holder}")))?;
                    // No backend change, so no revision: only the token is written.
                    Self::insert_token(&mut batch.tx, &backend.id, token, token_expiry, now).await?;
                    batch.wrote = true;
                    return Ok(ConnectOutcome::Found(backend));
                }
            }
        }
        let Some(plan) = spawn else { return Ok(ConnectOutcome::NotFound) };
        if plan.candidates.is_empty() {
            return Ok(ConnectOutcome::NoDrone);
        }
        let mut loads = Vec::with_capacity(plan.candidates.len());
        for slot in plan.candidates.iter() {
            let live = Self::live_on(batch, &slot.node_id).await?;
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
        if let Some(key) = key {
            let lease = rows::millis(now + chrono::Duration::from_std(plan.lease_duration).unwrap_or_default());
            let sql = if previous_fence.is_some() {
                "UPDATE backend_keys SET tag = $3, backend_id = $4, fencing_token = $5, lease_expires_at = $6 \
                 WHERE namespace = $1 AND name = $2"
            } else {
                "INSERT INTO backend_keys (namespace, name, tag, backend_id, fencing_token, lease_expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)"
            };
            sqlx::query(sql)
                .bind(key.namespace.clone())
                .bind(key.name.clone())
                .bind(key.tag.clone())
                .bind(backend.id.clone())
                .bind(fencing_token)
                .bind(lease)
                .execute(&mut *batch.tx)
                .await
                .map_err(from_sqlx)?;
        }
        let revision = Self::next_revision(batch);
        Self::insert_backend(&mut batch.tx, &backend, revision).await?;
        let action = PendingAction {
            id: plan.action_id.clone(),
            drone_id: backend.drone_id.clone(),
            backend_id: backend.id.clone(),
            payload: plan.action.clone(),
            created_at: now,
        };
        Self::insert_action(&mut batch.tx, &action).await?;
        batch.woken.push(action.drone_id.clone());
        Self::insert_token(&mut batch.tx, &backend.id, token, token_expiry, now).await?;
        if let Some(hash) = &plan.static_token_hash {
            let static_token = IssuedToken { hash: hash.clone(), ..token.clone() };
            Self::insert_token(&mut batch.tx, &backend.id, &static_token, 0, now).await?;
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
            let Some(mut backend) = Self::backend_in(&mut batch.tx, &event.backend_id).await? else {
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
            Self::update_backend(&mut batch.tx, &backend, revision, previous).await?;
            if terminated {
                Self::release(&mut batch.tx, &backend.id, event.now).await?;
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
        for ack in acks {
            sqlx::query("DELETE FROM drone_actions WHERE id = $1 AND drone_id = $2")
                .bind(ack.clone())
                .bind(drone_id.to_string())
                .execute(&mut *batch.tx)
                .await
                .map_err(from_sqlx)?;
            batch.wrote = true;
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
        let Some(mut backend) = Self::backend_in(&mut batch.tx, id).await? else { return Ok(None) };
        if !backend.status.state.is_live()
            || backend.termination_requested.is_some_and(|asked| super::kind_rank(asked) >= super::kind_rank(kind))
        {
            return Ok(Some(backend));
        }
        backend.termination_requested = Some(kind);
        backend.updated_at = now;
        // Not a status change: a revision (the row carries it), but no watch event.
        let revision = Self::record(batch, |_| None).await?;
        Self::update_backend_row(&mut batch.tx, &backend, revision).await?;
        let action = PendingAction {
            id: new_action_id(),
            drone_id: backend.drone_id.clone(),
            backend_id: backend.id.clone(),
            payload: ActionPayload::Terminate { kind, reason },
            created_at: now,
        };
        Self::insert_action(&mut batch.tx, &action).await?;
        batch.woken.push(action.drone_id.clone());
        Ok(Some(backend))
    }
}
