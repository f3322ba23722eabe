//! [`BackendStore`] over SQL, for both databases (see [`super`] for how writes serialize).

use super::{Dialect, SqlStore};
use crate::store::backends::*;
use crate::store::rows::{self, db_revision, from_sqlx};
use crate::store::{Change, ChangeKind, ControllerTick, ExpiryRule, Revision, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hangar::domain::{
    Backend, BackendKey, BackendState, BackendStatus, TerminationKind, TerminationReason, status_message,
};
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Transaction, Type};
use std::time::Duration;

pub(super) mod batch;
mod group;
pub(super) mod renewals;
mod writes;

use batch::{Done, Op};
use writes::{ActionRow, BackendRow, HistoryRow};

const BACKEND_COLUMNS: &str = "data, last_activity_at";

/// Backends per query while reading a watch's initial snapshot (all in one transaction).
const SNAPSHOT_PAGE: usize = 1000;

fn time(millis: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(millis).ok_or_else(|| StoreError::Corrupt(format!("time {millis} out of range")))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn decode_backend<R>(row: &R) -> Result<Backend, StoreError>
where
    R: Row,
    for<'q> i64: Decode<'q, R::Database> + Type<R::Database>,
    for<'q> String: Decode<'q, R::Database> + Type<R::Database>,
    usize: ColumnIndex<R>,
{
    decode_backend_at(row, 0)
}

/// A backend from [`BACKEND_COLUMNS`] read at columns `first` and `first + 1` of `row`.
fn decode_backend_at<R>(row: &R, first: usize) -> Result<Backend, StoreError>
where
    R: Row,
    for<'q> i64: Decode<'q, R::Database> + Type<R::Database>,
    for<'q> String: Decode<'q, R::Database> + Type<R::Database>,
    usize: ColumnIndex<R>,
{
    let data: String = row.try_get(first).map_err(from_sqlx)?;
    let activity: i64 = row.try_get(first + 1).map_err(from_sqlx)?;
    let mut backend: Backend = serde_json::from_str(&data).map_err(|e| corrupt("backend row", e))?;
    // The column is authoritative: traffic reports update only it.
    backend.last_activity_at = backend.last_activity_at.max(time(activity)?);
    Ok(backend)
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| corrupt("encode", e))
}

/// How long a terminated backend's tokens keep answering "terminated" before they are purged.
const TERMINATED_TOKEN_GRACE: chrono::Duration = chrono::Duration::hours(1);

/// The hard kind wins over the soft one; anything beats nothing.
fn kind_rank(kind: TerminationKind) -> u8 {
    match kind {
        TerminationKind::Soft => 1,
        TerminationKind::Hard => 2,
    }
}

/// The lease of the key backend `$1` holds, found as in [`writes::free_holders_keys`].
const HOLDERS_LEASE: &str = "SELECT lease_expires_at FROM backend_keys WHERE backend_id = $1 AND backend_id <> ''";

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
    /// Every controller's tick (docs/design/backends-and-leases.md#store-outages).
    async fn ticks_in<'e, E>(executor: E) -> Result<Vec<ControllerTick>, StoreError>
    where
        E: Executor<'e, Database = DB>,
    {
        let rows = sqlx::query(
            "SELECT controller_id, seen_at, last_deferral_at, outage_grace_ms, stopped_at FROM controller_ticks",
        )
        .fetch_all(executor)
        .await
        .map_err(from_sqlx)?;
        let optional = |millis: i64| if millis == 0 { Ok(None) } else { time(millis).map(Some) };
        rows.iter()
            .map(|row| {
                Ok(ControllerTick {
                    controller_id: row.try_get(0).map_err(from_sqlx)?,
                    seen_at: time(row.try_get(1).map_err(from_sqlx)?)?,
                    last_deferral_at: optional(row.try_get(2).map_err(from_sqlx)?)?,
                    outage_grace: Duration::from_millis(
                        u64::try_from(row.try_get::<i64, _>(3).map_err(from_sqlx)?).unwrap_or(0),
                    ),
                    stopped_at: optional(row.try_get(4).map_err(from_sqlx)?)?,
                })
            })
            .collect()
    }

    async fn backend_in(tx: &mut Transaction<'static, DB>, id: &str) -> Result<Option<Backend>, StoreError> {
        let row = sqlx::query(&format!("SELECT {BACKEND_COLUMNS} FROM backends WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&mut **tx)
            .await
            .map_err(from_sqlx)?;
        row.map(|r| decode_backend(&r)).transpose()
    }

    /// A new status (the backend was in `previous` before): the row and a history entry.
    async fn update_backend(
        tx: &mut Transaction<'static, DB>,
        backend: &Backend,
        revision: Revision,
        previous: BackendState,
    ) -> Result<(), StoreError> {
        // Encoded once, for the row and the history entry, as a write batch does.
        let row = BackendRow::of(backend, revision)?;
        let history = HistoryRow::with_data(backend, revision, Some(previous), row.data.clone())?;
        Self::write_backends(&mut **tx, vec![row]).await?;
        Self::write_history(&mut **tx, vec![history]).await
    }

    /// The row only: for changes that are not a new status.
    async fn update_backend_row(
        tx: &mut Transaction<'static, DB>,
        backend: &Backend,
        revision: Revision,
    ) -> Result<(), StoreError> {
        Self::write_backends(&mut **tx, vec![BackendRow::of(backend, revision)?]).await
    }

    /// Commits a transaction that recorded one status of `backend`, publishing it to this
    /// process's watch hub with the state it had before (`None`: new).
    async fn commit_status(
        &self,
        tx: Transaction<'static, DB>,
        revision: Revision,
        backend: &Backend,
        previous: Option<BackendState>,
    ) -> Result<(), StoreError> {
        let kind = if previous.is_none() { ChangeKind::Added } else { ChangeKind::Modified };
        // A backend is added with its spawn action: that wakes its drone's session.
        let drones = if previous.is_none() { std::slice::from_ref(&backend.drone_id) } else { &[] };
        let change = BackendChange { revision, kind, backend: backend.clone(), previous };
        self.commit_waking(tx, revision, Some(Change::Backend(change)), drones).await
    }

    /// The backend half of the watch log after `after`, at most `limit` rows, inside `tx` (the
    /// snapshot the node half is read at).
    pub(super) async fn backend_log_in(
        tx: &mut Transaction<'static, DB>,
        after: Revision,
        limit: usize,
    ) -> Result<Vec<BackendChange>, StoreError> {
        // Rows from before the watch log existed have no `data`: the backend's current row
        // stands in, with the row's status.
        let rows = sqlx::query(
            "SELECT h.revision, h.status, h.change, h.previous_state, h.data, COALESCE(b.data, '') \
             FROM backend_history h LEFT JOIN backends b ON b.id = h.backend_id \
             WHERE h.revision > $1 ORDER BY h.revision LIMIT $2",
        )
        .bind(db_revision(after))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut **tx)
        .await
        .map_err(from_sqlx)?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in &rows {
            let revision = rows::revision_from_db(row.try_get(0).map_err(from_sqlx)?)?;
            let status: String = row.try_get(1).map_err(from_sqlx)?;
            let change: String = row.try_get(2).map_err(from_sqlx)?;
            let previous: String = row.try_get(3).map_err(from_sqlx)?;
            let data: String = row.try_get(4).map_err(from_sqlx)?;
            let current: String = row.try_get(5).map_err(from_sqlx)?;
            let status: BackendStatus = serde_json::from_str(&status).map_err(|e| corrupt("backend status", e))?;
            let backend = if !data.is_empty() {
                serde_json::from_str::<Backend>(&data).map_err(|e| corrupt("backend history", e))?
            } else if !current.is_empty() {
                let mut backend: Backend = serde_json::from_str(&current).map_err(|e| corrupt("backend row", e))?;
                backend.status = status.clone();
                backend
            } else {
                return Err(StoreError::Corrupt(format!("backend history row {revision} has no backend")));
            };
            let kind = match change.as_str() {
                "" if status.state == BackendState::Scheduled => ChangeKind::Added,
                "" => ChangeKind::Modified,
                other => rows::change_from_str(other)?,
            };
            let previous = if previous.is_empty() {
                None
            } else {
                Some(previous.parse::<BackendState>().map_err(|e| corrupt("backend history", e))?)
            };
            changes.push(BackendChange { revision, kind, backend, previous });
        }
        Ok(changes)
    }

    /// Up to `limit` backends matching `filter` after `after_id`, inside `tx`. The filter's
    /// columns are matched in SQL, labels in Rust (reading on until the page is full).
    async fn backend_page_in(
        tx: &mut Transaction<'static, DB>,
        filter: &BackendFilter,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Backend>, bool), StoreError> {
        let batch = if filter.labels.is_empty() { limit.saturating_add(1) } else { limit.saturating_add(1).max(500) };
        let mut cursor = after_id.unwrap_or_default().to_string();
        let mut backends = Vec::with_capacity(limit.min(1024));
        loop {
            let mut sql = format!("SELECT {BACKEND_COLUMNS} FROM backends WHERE id > $1");
            let mut params = vec![cursor.clone()];
            let slot = |value: String, params: &mut Vec<String>| {
                params.push(value);
                format!("${}", params.len())
            };
            if !filter.states.is_empty() {
                let slots: Vec<String> =
                    filter.states.iter().map(|s| slot(s.as_str().to_string(), &mut params)).collect();
                sql.push_str(&format!(" AND state IN ({})", slots.join(", ")));
            }
            for (column, value) in [
                ("drone_id", &filter.drone_id),
                ("key_namespace", &filter.key_namespace),
                ("cluster", &filter.cluster),
                ("pool", &filter.pool),
            ] {
                if let Some(value) = value {
                    let s = slot(value.clone(), &mut params);
                    sql.push_str(&format!(" AND {column} = {s}"));
                }
            }
            if let Some(prefix) = &filter.key_prefix {
                // Both databases count characters in SUBSTR and LENGTH alike.
                let s = slot(prefix.clone(), &mut params);
                sql.push_str(&format!(" AND SUBSTR(key_name, 1, LENGTH({s})) = {s}"));
            }
            sql.push_str(&format!(" ORDER BY id LIMIT {batch}"));
            let mut query = sqlx::query(&sql);
            for p in params {
                query = query.bind(p);
            }
            let rows = query.fetch_all(&mut **tx).await.map_err(from_sqlx)?;
            let exhausted = rows.len() < batch;
            for row in &rows {
                let backend = decode_backend(row)?;
                cursor.clone_from(&backend.id);
                if !filter.matches(&backend) {
                    continue;
                }
                if backends.len() == limit {
                    return Ok((backends, true));
                }
                backends.push(backend);
            }
            if exhausted {
                return Ok((backends, false));
            }
        }
    }

    /// TERMINATED with reason LOST: nobody saw it end, so there is no kind and no exit code.
    async fn end_lost(
        tx: &mut Transaction<'static, DB>,
        backend: &mut Backend,
        revision: Revision,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let previous = backend.status.state;
        let message = format!(
            "its drone {} went away and did not come back within the key lease; whether it still runs is unknown",
            backend.drone_id
        );
        backend.status = BackendStatus {
            state: BackendState::Terminated,
            time: now,
            termination_kind: None,
            termination_reason: Some(TerminationReason::Lost),
            exit_code: None,
            message: status_message(&message, []),
        };
        backend.updated_at = now;
        Self::update_backend(tx, backend, revision, previous).await?;
        Self::release(tx, &backend.id, now).await
    }

    /// What a backend's end takes with it ([`Self::release_many`]).
    async fn release(
        tx: &mut Transaction<'static, DB>,
        backend_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        Self::release_many(&mut **tx, vec![writes::ReleaseRow::of(backend_id, now)]).await
    }

    async fn insert_action(tx: &mut Transaction<'static, DB>, action: &PendingAction) -> Result<(), StoreError> {
        Self::write_actions(&mut **tx, vec![ActionRow::of(action)?]).await.map(drop)
    }

    /// Stores a Terminate action for a live backend inside `tx`, unless one at least as hard is
    /// pending; returns the backend as it is afterwards and whether the action was stored. When
    /// nothing is stored, `tx` rolls back with its revision.
    async fn terminate_in(
        &self,
        mut tx: Transaction<'static, DB>,
        revision: Revision,
        mut backend: Backend,
        kind: TerminationKind,
        reason: TerminationReason,
        now: DateTime<Utc>,
    ) -> Result<(Backend, bool), StoreError> {
        if !backend.status.state.is_live() {
            return Ok((backend, false));
        }
        if backend.termination_requested.is_some_and(|asked| kind_rank(asked) >= kind_rank(kind)) {
            // Already asked at least this hard; a second action would only be acknowledged and
            // ignored by the drone.
            return Ok((backend, false));
        }
        backend.termination_requested = Some(kind);
        backend.updated_at = now;
        Self::update_backend_row(&mut tx, &backend, revision).await?;
        let action = PendingAction {
            id: new_action_id(),
            drone_id: backend.drone_id.clone(),
            backend_id: backend.id.clone(),
            payload: ActionPayload::Terminate { kind, reason },
            created_at: now,
        };
        Self::insert_action(&mut tx, &action).await?;
        self.commit_waking(tx, revision, None, std::slice::from_ref(&action.drone_id)).await?;
        Ok((backend, true))
    }

    /// The highest fencing token of a key row retention removed (0: none yet), inside `tx`.
    async fn fencing_floor_in(tx: &mut Transaction<'static, DB>) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT token FROM fencing_floor WHERE id = 1")
            .fetch_optional(&mut **tx)
            .await
            .map_err(from_sqlx)?;
        row.map_or(Ok(0), |row| row.try_get(0).map_err(from_sqlx))
    }

    /// Retention inside `tx`: removes `backends` (all TERMINATED), the first under revision
    /// `first` and each next one under the next revision, and returns their REMOVED changes.
    async fn retire_in(
        tx: &mut Transaction<'static, DB>,
        backends: &[Backend],
        first: Revision,
    ) -> Result<Vec<Change>, StoreError> {
        let now = rows::millis(Utc::now());
        let ids: Vec<String> = backends.iter().map(|b| b.id.clone()).collect();
        let list = (1..=ids.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
        // History rows from before the watch log (0003) have no backend of their own and fall
        // back on the backend's row, which goes now: they get the backend with their status.
        let sql = format!(
            "SELECT revision, backend_id, status FROM backend_history WHERE data = '' AND backend_id IN ({list})"
        );
        let mut old_rows = sqlx::query(&sql);
        for id in &ids {
            old_rows = old_rows.bind(id.clone());
        }
        for row in old_rows.fetch_all(&mut **tx).await.map_err(from_sqlx)? {
            let revision: i64 = row.try_get(0).map_err(from_sqlx)?;
            let backend_id: String = row.try_get(1).map_err(from_sqlx)?;
            let status: String = row.try_get(2).map_err(from_sqlx)?;
            let Some(backend) = backends.iter().find(|b| b.id == backend_id) else { continue };
            let mut then = backend.clone();
            then.status = serde_json::from_str(&status).map_err(|e| corrupt("backend status", e))?;
            sqlx::query("UPDATE backend_history SET data = $2 WHERE revision = $1")
                .bind(revision)
                .bind(encode(&then)?)
                .execute(&mut **tx)
                .await
                .map_err(from_sqlx)?;
        }
        let mut floor = 0i64;
        let mut changes = Vec::with_capacity(backends.len());
        for (i, backend) in backends.iter().enumerate() {
            let revision = first + i as Revision;
            sqlx::query(
                "INSERT INTO backend_history (revision, backend_id, status, recorded_at, change, previous_state, data) \
                 VALUES ($1, $2, $3, $4, 'REMOVED', $5, $6)",
            )
            .bind(db_revision(revision))
            .bind(backend.id.clone())
            .bind(encode(&backend.status)?)
            .bind(now)
            .bind(backend.status.state.as_str().to_string())
            .bind(encode(backend)?)
            .execute(&mut **tx)
            .await
            .map_err(from_sqlx)?;
            if let Some(key) = &backend.key {
                // Only a free key whose last holder this was: a later holder keeps it, and its
                // own removal takes the row.
                let token = i64::try_from(backend.fencing_token).unwrap_or(i64::MAX);
                let result = sqlx::query(
                    "DELETE FROM backend_keys WHERE namespace = $1 AND name = $2 AND backend_id = '' \
                     AND fencing_token = $3",
                )
                .bind(key.namespace.clone())
                .bind(key.name.clone())
                .bind(token)
                .execute(&mut **tx)
                .await
                .map_err(from_sqlx)?;
                if rows_affected::<DB>(&result) > 0 {
                    floor = floor.max(token);
                }
            }
            changes.push(Change::Backend(BackendChange {
                revision,
                kind: ChangeKind::Removed,
                backend: backend.clone(),
                previous: Some(backend.status.state),
            }));
        }
        for (table, column) in
            [("backends", "id"), ("connection_tokens", "backend_id"), ("drone_actions", "backend_id")]
        {
            let sql = format!("DELETE FROM {table} WHERE {column} IN ({list})");
            let mut query = sqlx::query(&sql);
            for id in &ids {
                query = query.bind(id.clone());
            }
            query.execute(&mut **tx).await.map_err(from_sqlx)?;
        }
        if floor > 0 {
            sqlx::query("UPDATE fencing_floor SET token = $1 WHERE id = 1 AND token < $1")
                .bind(floor)
                .execute(&mut **tx)
                .await
                .map_err(from_sqlx)?;
        }
        Ok(changes)
    }
}

#[async_trait]
impl<DB> BackendStore for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    async fn connect_backend(&self, spec: ConnectSpec, pick: Pick<'static>) -> Result<ConnectOutcome, StoreError> {
        // In a batch with the other writes waiting ([`batch`]): one transaction, one commit.
        match self.batched(Op::Connect(Box::new(spec), pick)).await? {
            Done::Connect(outcome) => Ok(*outcome),
            _ => Err(StoreError::Corrupt("a batch answered a Connect with another write's outcome".into())),
        }
    }

    async fn get_backend(&self, id: &str) -> Result<Option<Backend>, StoreError> {
        let row = sqlx::query(&format!("SELECT {BACKEND_COLUMNS} FROM backends WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(self.read_pool())
            .await
            .map_err(from_sqlx)?;
        row.map(|r| decode_backend(&r)).transpose()
    }

    async fn list_backends(
        &self,
        filter: &BackendFilter,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<BackendPage, StoreError> {
        let (mut tx, revision, _) = self.begin_snapshot().await?;
        let (backends, more) = Self::backend_page_in(&mut tx, filter, after_id, limit).await?;
        Ok(BackendPage { backends, revision, more })
    }

    async fn backend_snapshot(&self, filter: &BackendFilter) -> Result<BackendPage, StoreError> {
        let (mut tx, revision, _) = self.begin_snapshot().await?;
        let mut backends: Vec<Backend> = Vec::new();
        loop {
            let after = backends.last().map(|b| b.id.clone());
            let (page, more) = Self::backend_page_in(&mut tx, filter, after.as_deref(), SNAPSHOT_PAGE).await?;
            backends.extend(page);
            if !more {
                return Ok(BackendPage { backends, revision, more: false });
            }
        }
    }

    async fn backend_history(&self, id: &str, after: Revision) -> Result<Vec<(Revision, BackendStatus)>, StoreError> {
        let rows = sqlx::query(
            "SELECT revision, status FROM backend_history WHERE backend_id = $1 AND revision > $2 \
             AND change <> 'REMOVED' ORDER BY revision",
        )
        .bind(id.to_string())
        .bind(db_revision(after))
        .fetch_all(self.read_pool())
        .await
        .map_err(from_sqlx)?;
        rows.iter()
            .map(|row| {
                let revision = rows::revision_from_db(row.try_get(0).map_err(from_sqlx)?)?;
                let status: String = row.try_get(1).map_err(from_sqlx)?;
                Ok((revision, serde_json::from_str(&status).map_err(|e| corrupt("backend status", e))?))
            })
            .collect()
    }

    async fn apply_backend_event(
        &self,
        drone_id: &str,
        backend_id: &str,
        status: BackendStatus,
        address: &str,
        now: DateTime<Utc>,
    ) -> Result<EventOutcome, StoreError> {
        // Replays and stale events are the common repeat: answer them without the write lock.
        match self.get_backend(backend_id).await? {
            None => return Ok(EventOutcome::Unknown),
            Some(b) if b.drone_id != drone_id => return Ok(EventOutcome::Unknown),
            Some(b) if !b.status.refined_by(&status) && b.status.state.transition(status.state).is_err() => {
                return Ok(EventOutcome::Ignored);
            }
            Some(_) => {}
        }
        let event = DroneEvent { backend_id: backend_id.to_string(), status, address: address.to_string(), now };
        let mut outcomes = self.apply_drone_reports(drone_id, vec![event], Vec::new()).await?;
        outcomes.pop().ok_or_else(|| StoreError::Corrupt("a batch answered no outcome for an event".into()))
    }

    async fn apply_drone_reports(
        &self,
        drone_id: &str,
        events: Vec<DroneEvent>,
        acks: Vec<String>,
    ) -> Result<Vec<EventOutcome>, StoreError> {
        if events.is_empty() && acks.is_empty() {
            return Ok(Vec::new());
        }
        match self.batched(Op::Reports { drone_id: drone_id.to_string(), events, acks }).await? {
            Done::Reports(outcomes) => Ok(outcomes),
            _ => Err(StoreError::Corrupt("a batch answered reports with another write's outcome".into())),
        }
    }

    async fn request_termination(
        &self,
        id: &str,
        kind: TerminationKind,
        reason: TerminationReason,
        now: DateTime<Utc>,
    ) -> Result<Option<Backend>, StoreError> {
        let op = Op::Terminate { id: id.to_string(), kind, reason, now };
        match self.batched(op).await? {
            Done::Terminate(backend) => Ok(backend.map(|b| *b)),
            _ => Err(StoreError::Corrupt("a batch answered a termination with another write's outcome".into())),
        }
    }

    async fn terminate_for_drain(&self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let (mut tx, revision) = self.begin_write().await?;
        let Some(backend) = Self::backend_in(&mut tx, id).await? else { return Ok(false) };
        // Read under the write lock: an UndrainNode that committed first has cleared the
        // deadline, and one that commits later finds the backend already asked to stop.
        let drone = Self::node_in(&mut tx, &backend.drone_id).await?;
        if !drone.is_some_and(|n| n.draining && n.drain_deadline.is_some_and(|deadline| deadline <= now)) {
            return Ok(false);
        }
        // No reason names a drain; it is an operator's request, hence EXTERNAL.
        let (_, stored) =
            self.terminate_in(tx, revision, backend, TerminationKind::Soft, TerminationReason::External, now).await?;
        Ok(stored)
    }

    async fn backend_state_counts(&self) -> Result<Vec<(BackendState, u64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM backends GROUP BY state")
            .fetch_all(self.read_pool())
            .await
            .map_err(from_sqlx)?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get(0).map_err(from_sqlx)?;
                let count: i64 = row.try_get(1).map_err(from_sqlx)?;
                let state = state.parse().map_err(|e| StoreError::Corrupt(format!("backend state {state:?}: {e}")))?;
                Ok((state, u64::try_from(count).unwrap_or_default()))
            })
            .collect()
    }

    async fn drones_with_pending_actions(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT DISTINCT drone_id FROM drone_actions")
            .fetch_all(self.read_pool())
            .await
            .map_err(from_sqlx)?;
        rows.iter().map(|row| row.try_get(0).map_err(from_sqlx)).collect()
    }

    async fn queued_actions(&self, drone_id: &str, after_seq: i64) -> Result<Vec<QueuedAction>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.seq, a.id, a.backend_id, a.payload, a.created_at, b.data, b.last_activity_at \
             FROM drone_actions a LEFT JOIN backends b ON b.id = a.backend_id \
             WHERE a.drone_id = $1 AND a.seq > $2 ORDER BY a.seq",
        )
        .bind(drone_id.to_string())
        .bind(after_seq)
        .fetch_all(self.read_pool())
        .await
        .map_err(from_sqlx)?;
        rows.iter()
            .map(|row| {
                let payload: String = row.try_get(3).map_err(from_sqlx)?;
                let action = PendingAction {
                    id: row.try_get(1).map_err(from_sqlx)?,
                    drone_id: drone_id.to_string(),
                    backend_id: row.try_get(2).map_err(from_sqlx)?,
                    payload: serde_json::from_str(&payload).map_err(|e| corrupt("action payload", e))?,
                    created_at: time(row.try_get(4).map_err(from_sqlx)?)?,
                };
                let has_backend = row.try_get::<Option<String>, _>(5).map_err(from_sqlx)?.is_some();
                let backend = match action.payload {
                    ActionPayload::Spawn { .. } if has_backend => Some(decode_backend_at(row, 5)?),
                    _ => None,
                };
                Ok(QueuedAction { seq: row.try_get(0).map_err(from_sqlx)?, action, backend })
            })
            .collect()
    }

    async fn ack_action(&self, drone_id: &str, action_id: &str) -> Result<(), StoreError> {
        self.apply_drone_reports(drone_id, Vec::new(), vec![action_id.to_string()]).await.map(drop)
    }

    async fn renew_key(
        &self,
        backend_id: &str,
        key: &BackendKey,
        fencing_token: u64,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // One conditional statement: the row lock orders it against a sweep or Connect that
        // frees or takes the key, and the condition is checked again after waiting for it.
        let result = sqlx::query(&renewals::one_key::<DB>())
            .bind(key.namespace.clone())
            .bind(key.name.clone())
            .bind(backend_id.to_string())
            .bind(i64::try_from(fencing_token).unwrap_or(-1))
            .bind(rows::millis(expires_at))
            .execute(self.write_pool())
            .await
            .map_err(from_sqlx)?;
        Ok(rows_affected::<DB>(&result) > 0)
    }

    async fn renew_keys(&self, renewals: &[KeyRenewal], expires_at: DateTime<Utc>) -> Result<Vec<bool>, StoreError> {
        if renewals.is_empty() {
            return Ok(Vec::new());
        }
        // With the other calls waiting, in one transaction (`backends::renewals`). No revision:
        // a renewed lease is no change anyone watches.
        self.renew_grouped(renewals.to_vec(), expires_at).await
    }

    async fn record_activity(&self, backend_ids: &[String], now: DateTime<Utc>) -> Result<(), StoreError> {
        for id in backend_ids {
            sqlx::query("UPDATE backends SET last_activity_at = $2 WHERE id = $1 AND last_activity_at < $2")
                .bind(id.clone())
                .bind(rows::millis(now))
                .execute(self.write_pool())
                .await
                .map_err(from_sqlx)?;
        }
        Ok(())
    }

    async fn backends_due_for_limits(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Backend>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {BACKEND_COLUMNS} FROM backends WHERE limit_at IS NOT NULL AND limit_at <= $1 \
             ORDER BY limit_at LIMIT $2"
        ))
        .bind(rows::millis(now))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.read_pool())
        .await
        .map_err(from_sqlx)?;
        rows.iter().map(decode_backend).collect()
    }

    async fn defer_limits(&self, deferrals: &[(String, Option<DateTime<Utc>>)]) -> Result<(), StoreError> {
        let mut tx = self.write_pool().begin().await.map_err(from_sqlx)?;
        for (id, at) in deferrals {
            sqlx::query("UPDATE backends SET limit_at = $2 WHERE id = $1")
                .bind(id.clone())
                .bind(at.map(rows::millis))
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
        }
        tx.commit().await.map_err(from_sqlx)
    }

    async fn expired_key_holders(&self, now: DateTime<Utc>, lease: Duration) -> Result<Vec<Backend>, StoreError> {
        let ticks = Self::ticks_in(self.read_pool()).await?;
        let rule = ExpiryRule::new(&ticks, now, lease);
        let rows = sqlx::query(
            "SELECT b.data, b.last_activity_at FROM backend_keys k JOIN backends b ON b.id = k.backend_id \
             WHERE k.backend_id <> '' AND k.lease_expires_at < $1 \
             AND (k.lease_expires_at < $2 OR (k.lease_expires_at > $3 AND k.lease_expires_at < $4)) ORDER BY b.id",
        )
        .bind(rule.now)
        .bind(rule.slow_before)
        .bind(rule.fast_after)
        .bind(rule.fast_before)
        .fetch_all(self.read_pool())
        .await
        .map_err(from_sqlx)?;
        rows.iter().map(decode_backend).collect()
    }

    async fn release_expired_key(
        &self,
        backend_id: &str,
        lost: bool,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Backend>, StoreError> {
        let (mut tx, revision) = self.begin_write().await?;
        let row = sqlx::query(HOLDERS_LEASE)
            .bind(backend_id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(from_sqlx)?;
        // The ticks as of now, under the write lock: a controller that came back from an outage
        // since the sweep read them has recorded its deferrals by now.
        let ticks = Self::ticks_in(&mut *tx).await?;
        let expired = match row {
            Some(row) => ExpiryRule::new(&ticks, now, lease).frees(row.try_get::<i64, _>(0).map_err(from_sqlx)?),
            None => false,
        };
        let Some(mut backend) = Self::backend_in(&mut tx, backend_id).await? else { return Ok(None) };
        if !expired {
            // Renewed (or already freed) since the sweep looked, or held for a drone an outage
            // made wait.
            return Ok(Some(backend));
        }
        sqlx::query(&writes::free_holders_keys("$1"))
            .bind(backend_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
        if lost && backend.status.state.is_live() {
            let previous = backend.status.state;
            Self::end_lost(&mut tx, &mut backend, revision, now).await?;
            self.commit_status(tx, revision, &backend, Some(previous)).await?;
        } else {
            self.commit_announced(tx, revision).await?;
        }
        Ok(Some(backend))
    }

    async fn record_controller_tick(
        &self,
        tick: &ControllerTick,
        forget_before: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // Not a revision: nobody watches ticks, and a tick must not wait for the writers' lock
        // the batches hold (an upsert of one row and a delete of old ones, in one transaction).
        let mut tx = self.write_pool().begin().await.map_err(from_sqlx)?;
        sqlx::query(
            "INSERT INTO controller_ticks (controller_id, seen_at, last_deferral_at, outage_grace_ms, stopped_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (controller_id) DO UPDATE SET seen_at = excluded.seen_at, \
             last_deferral_at = excluded.last_deferral_at, outage_grace_ms = excluded.outage_grace_ms, \
             stopped_at = excluded.stopped_at",
        )
        .bind(tick.controller_id.clone())
        .bind(rows::millis(tick.seen_at))
        .bind(tick.last_deferral_at.map(rows::millis).unwrap_or(0))
        .bind(i64::try_from(tick.outage_grace.as_millis()).unwrap_or(i64::MAX))
        .bind(tick.stopped_at.map(rows::millis).unwrap_or(0))
        .execute(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        sqlx::query("DELETE FROM controller_ticks WHERE seen_at < $1 AND controller_id <> $2")
            .bind(rows::millis(forget_before))
            .bind(tick.controller_id.clone())
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
        tx.commit().await.map_err(from_sqlx)
    }

    async fn controller_ticks(&self) -> Result<Vec<ControllerTick>, StoreError> {
        Self::ticks_in(self.read_pool()).await
    }

    async fn purge_expired_tokens(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM connection_tokens WHERE expires_at <> 0 AND expires_at < $1")
            .bind(rows::millis(now))
            .execute(self.write_pool())
            .await
            .map_err(from_sqlx)?;
        Ok(rows_affected::<DB>(&result))
    }

    async fn remove_terminated_backends(
        &self,
        terminated_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        if limit == 0 {
            return Ok(0);
        }
        let before = rows::millis(terminated_before);
        // Most passes find nothing: look without the write lock first.
        let due = sqlx::query("SELECT id FROM backends WHERE state = 'TERMINATED' AND updated_at < $1 LIMIT 1")
            .bind(before)
            .fetch_optional(self.read_pool())
            .await
            .map_err(from_sqlx)?;
        if due.is_none() {
            return Ok(0);
        }
        // Chosen again under the write lock: another controller's pass may have removed them.
        let (mut tx, first) = self.begin_write().await?;
        let rows = sqlx::query(&format!(
            "SELECT {BACKEND_COLUMNS} FROM backends WHERE state = 'TERMINATED' AND updated_at < $1 \
             ORDER BY updated_at LIMIT $2"
        ))
        .bind(before)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        let backends = rows.iter().map(decode_backend).collect::<Result<Vec<_>, _>>()?;
        if backends.is_empty() {
            // Rolls back, and the revision with it.
            return Ok(0);
        }
        let last = match backends.len() as Revision - 1 {
            0 => first,
            extra => Self::take_more_revisions(&mut tx, extra).await?,
        };
        let changes = Self::retire_in(&mut tx, &backends, first).await?;
        self.commit_published_all(tx, last, changes).await?;
        Ok(backends.len())
    }

    async fn backend_changes_since(
        &self,
        after: Revision,
        limit: usize,
    ) -> Result<Vec<(Revision, String, BackendStatus)>, StoreError> {
        let rows = sqlx::query(
            "SELECT revision, backend_id, status FROM backend_history WHERE revision > $1 ORDER BY revision LIMIT $2",
        )
        .bind(db_revision(after))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.read_pool())
        .await
        .map_err(from_sqlx)?;
        rows.iter()
            .map(|row| {
                let revision = rows::revision_from_db(row.try_get(0).map_err(from_sqlx)?)?;
                let backend_id: String = row.try_get(1).map_err(from_sqlx)?;
                let status: String = row.try_get(2).map_err(from_sqlx)?;
                Ok((revision, backend_id, serde_json::from_str(&status).map_err(|e| corrupt("backend status", e))?))
            })
            .collect()
    }

    async fn token_route(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<TokenRoute>, StoreError> {
        let row =
            sqlx::query("SELECT backend_id, user_name, auth, expires_at FROM connection_tokens WHERE token_hash = $1")
                .bind(token_hash.to_string())
                .fetch_optional(self.read_pool())
                .await
                .map_err(from_sqlx)?;
        let Some(row) = row else { return Ok(None) };
        let backend_id: String = row.try_get(0).map_err(from_sqlx)?;
        let user: String = row.try_get(1).map_err(from_sqlx)?;
        let auth: String = row.try_get(2).map_err(from_sqlx)?;
        let expires_at: i64 = row.try_get(3).map_err(from_sqlx)?;
        // 0 marks a static token, which never expires.
        let expires_at = (expires_at != 0).then(|| rows::from_millis(expires_at)).transpose()?;
        if expires_at.is_some_and(|t| t <= now) {
            return Ok(None);
        }
        let auth = serde_json::from_str(&auth).map_err(|e| StoreError::Corrupt(format!("token auth: {e}")))?;
        let Some(backend) = self.get_backend(&backend_id).await? else { return Ok(None) };
        Ok(Some(TokenRoute { backend, user, auth, expires_at }))
    }

    async fn mark_lost(&self, backend_id: &str, now: DateTime<Utc>) -> Result<Option<Backend>, StoreError> {
        let (mut tx, revision) = self.begin_write().await?;
        let Some(mut backend) = Self::backend_in(&mut tx, backend_id).await? else { return Ok(None) };
        if !backend.status.state.is_live() {
            return Ok(Some(backend));
        }
        let previous = backend.status.state;
        Self::end_lost(&mut tx, &mut backend, revision, now).await?;
        self.commit_status(tx, revision, &backend, Some(previous)).await?;
        Ok(Some(backend))
    }
}

/// Rows an UPDATE touched, whatever the database.
fn rows_affected<DB: Dialect>(result: &DB::QueryResult) -> u64 {
    DB::rows_affected(result)
}

#[cfg(test)]
mod tests {
    use super::HOLDERS_LEASE;
    use super::writes::free_holders_keys;
    use crate::store::SqliteStore;
    use sqlx::Row;

    /// SQLite plans by rules, not table sizes, so its plan on an empty database is the plan on
    /// a full one: no statement may scan the keys, whether it names one holder or several (a
    /// write batch's ends).
    #[tokio::test]
    async fn sqlite_finds_a_key_by_its_holder_on_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&crate::store::sqlite_url(&dir.path().join("hangar.db"))).await.unwrap();
        for (sql, holders) in
            [(free_holders_keys("$1"), 1), (free_holders_keys("$1, $2"), 2), (HOLDERS_LEASE.into(), 1)]
        {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let mut query = sqlx::query(&explain);
            for i in 1..=holders {
                query = query.bind(format!("bk-{i}"));
            }
            let rows = query.fetch_all(store.read_pool()).await.unwrap();
            let plan: Vec<String> = rows.iter().map(|row| row.get::<String, _>(3)).collect();
            assert!(plan.iter().any(|step| step.contains("USING INDEX backend_keys_by_holder")), "{sql}: {plan:?}");
        }
    }
}
