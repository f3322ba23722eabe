//! The drone's journal: a SQLite file in the drone's data dir that makes the attach stream
//! reliable across reconnects and drone restarts (docs/design/drone-link.md#the-journal).
//!
//! - `events`: backend events not yet acknowledged, in the order they happened. An event is
//!   written here before it is sent and deleted on `AckEvent`; after every attach the whole table
//!   is replayed, so a duplicate carries the same event id.
//! - `actions`: every action id the drone has accepted. The row is written (together with the
//!   action's effect) before `AckAction` goes out, so a redelivered action is acked again and not
//!   executed twice.
//! - `backends`: the backends this drone runs, with their last state, address, spawn action and
//!   any termination requested, so a restarted drone can resume them.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hangar::domain::{BackendState, TerminationKind, TerminationReason};
use hangar::v1;
use prost::Message;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

/// File name of the journal inside the drone's data dir.
pub const JOURNAL_FILE: &str = "journal.sqlite";

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT NOT NULL UNIQUE,
    backend_id TEXT NOT NULL,
    payload    BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS actions (
    action_id   TEXT PRIMARY KEY,
    backend_id  TEXT NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS backends (
    backend_id       TEXT PRIMARY KEY,
    spawn            BLOB,
    state            TEXT NOT NULL,
    address          TEXT NOT NULL DEFAULT '',
    terminate_kind   TEXT,
    terminate_reason TEXT,
    lease_renewed_ms INTEGER,
    updated_ms       INTEGER NOT NULL
);
"#;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot create the drone data dir {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("journal database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("corrupt journal row: {0}")]
    Corrupt(String),
}

/// A backend as the journal last saw it.
#[derive(Debug, Clone)]
pub struct JournaledBackend {
    pub backend_id: String,
    pub spawn: Option<v1::SpawnBackend>,
    pub state: BackendState,
    pub address: String,
    /// A termination that was requested (or begun) and has not finished.
    pub termination: Option<(TerminationKind, TerminationReason)>,
    /// Wall-clock send time of the last successful key renewal (or the spawn's arrival).
    pub lease_renewed_at: Option<DateTime<Utc>>,
}

#[derive(Clone)]
pub struct Journal {
    pool: SqlitePool,
    /// What this journal added to the process's `hangar_drone_journal_backlog` gauge (taken off
    /// again on close): its unacknowledged events, counted from when a recorder is installed.
    backlog: Arc<AtomicI64>,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl Journal {
    /// Opens (creating if needed) the journal in `data_dir`; `None` keeps it in memory, for drones
    /// that need no persistence across restarts (embedded dev drone, tests).
    pub async fn open(data_dir: Option<&Path>) -> Result<Journal, JournalError> {
        let (options, max) = match data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|source| JournalError::DataDir { path: dir.display().to_string(), source })?;
                let options = SqliteConnectOptions::new()
                    .filename(dir.join(JOURNAL_FILE))
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // WAL + NORMAL survives a crash of the drone process (the case that matters
                    // here); only a power loss may lose the last commits.
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5));
                (options, 4)
            }
            // Every connection to `:memory:` is its own database: exactly one, kept forever.
            None => (SqliteConnectOptions::from_str("sqlite::memory:")?, 1),
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        let journal = Journal { pool, backlog: Arc::default() };
        journal.moved(journal.unacked_events().await?);
        Ok(journal)
    }

    /// Records a spawn action and its backend in one transaction. False when the action id was
    /// seen before (a redelivery: ack again, do nothing).
    pub async fn accept_spawn(
        &self,
        action_id: &str,
        backend_id: &str,
        spawn: &v1::SpawnBackend,
        lease_started: DateTime<Utc>,
    ) -> Result<bool, JournalError> {
        let mut tx = self.pool.begin().await?;
        if !insert_action(&mut tx, action_id, backend_id).await? {
            return Ok(false);
        }
        let now = now_ms();
        sqlx::query(
            "INSERT INTO backends (backend_id, spawn, state, lease_renewed_ms, updated_ms) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (backend_id) DO NOTHING",
        )
        .bind(backend_id)
        .bind(spawn.encode_to_vec())
        .bind(BackendState::Scheduled.as_str())
        .bind(lease_started.timestamp_millis())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records a terminate action, and the requested termination on its backend if the journal
    /// knows it, in one transaction. False for a redelivery.
    pub async fn accept_terminate(
        &self,
        action_id: &str,
        backend_id: &str,
        kind: TerminationKind,
        reason: TerminationReason,
    ) -> Result<bool, JournalError> {
        let mut tx = self.pool.begin().await?;
        if !insert_action(&mut tx, action_id, backend_id).await? {
            return Ok(false);
        }
        set_termination(&mut *tx, backend_id, kind, reason).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Remembers a termination the drone decided on itself (startup timeout, lost lease), so a
    /// restart finishes it.
    pub async fn record_termination(
        &self,
        backend_id: &str,
        kind: TerminationKind,
        reason: TerminationReason,
    ) -> Result<(), JournalError> {
        set_termination(&self.pool, backend_id, kind, reason).await
    }

    /// Appends an event and moves its backend's row to the event's state, atomically. Returns the
    /// event's sequence number in the journal.
    pub async fn append_event(&self, event: &v1::DroneBackendEvent, state: BackendState) -> Result<i64, JournalError> {
        let mut tx = self.pool.begin().await?;
        let seq = sqlx::query("INSERT INTO events (event_id, backend_id, payload) VALUES (?, ?, ?)")
            .bind(&event.event_id)
            .bind(&event.backend_id)
            .bind(event.encode_to_vec())
            .execute(&mut *tx)
            .await?
            .last_insert_rowid();
        let terminated = state == BackendState::Terminated;
        sqlx::query(
            "UPDATE backends SET state = ?, address = CASE WHEN ? = '' THEN address ELSE ? END, \
             terminate_kind = CASE WHEN ? THEN NULL ELSE terminate_kind END, \
             terminate_reason = CASE WHEN ? THEN NULL ELSE terminate_reason END, updated_ms = ? \
             WHERE backend_id = ?",
        )
        .bind(state.as_str())
        .bind(&event.address)
        .bind(&event.address)
        .bind(terminated)
        .bind(terminated)
        .bind(now_ms())
        .bind(&event.backend_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.moved(1);
        Ok(seq)
    }

    /// Unacknowledged events after `seq`, oldest first, at most `limit`.
    pub async fn events_after(&self, seq: i64, limit: i64) -> Result<Vec<(i64, v1::DroneBackendEvent)>, JournalError> {
        let rows = sqlx::query("SELECT seq, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let payload: Vec<u8> = row.get("payload");
                let event = v1::DroneBackendEvent::decode(payload.as_slice())
                    .map_err(|err| JournalError::Corrupt(format!("event payload: {err}")))?;
                Ok((row.get("seq"), event))
            })
            .collect()
    }

    /// The controller committed the event: forget it. Unknown ids (a second ack) are fine.
    pub async fn ack_event(&self, event_id: &str) -> Result<(), JournalError> {
        self.ack_events(std::slice::from_ref(&event_id)).await
    }

    /// Several acknowledgements in one transaction: a controller acknowledges a batch of reports
    /// at once, and one commit each made the drone fall behind its own acknowledgements (its
    /// reader then stops reading, renewal answers included).
    pub async fn ack_events(&self, event_ids: &[impl AsRef<str>]) -> Result<(), JournalError> {
        let mut tx = self.pool.begin().await?;
        let mut deleted = 0;
        for event_id in event_ids {
            deleted += sqlx::query("DELETE FROM events WHERE event_id = ?")
                .bind(event_id.as_ref())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        self.moved(-i64::try_from(deleted).unwrap_or(0));
        Ok(())
    }

    pub async fn unacked_events(&self) -> Result<i64, JournalError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM events").fetch_one(&self.pool).await?.get("n"))
    }

    /// The key renewals of `backend_ids`, sent in one batch at `sent_at`, succeeded: one
    /// transaction for the batch.
    pub async fn record_renewals(&self, backend_ids: &[String], sent_at: DateTime<Utc>) -> Result<(), JournalError> {
        if backend_ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for backend_id in backend_ids {
            sqlx::query(
                "UPDATE backends SET lease_renewed_ms = MAX(COALESCE(lease_renewed_ms, 0), ?) WHERE backend_id = ?",
            )
            .bind(sent_at.timestamp_millis())
            .bind(backend_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Backends the journal believes are not yet terminated.
    pub async fn live_backends(&self) -> Result<Vec<JournaledBackend>, JournalError> {
        let rows = sqlx::query(
            "SELECT backend_id, spawn, state, address, terminate_kind, terminate_reason, lease_renewed_ms \
             FROM backends WHERE state <> ? ORDER BY updated_ms",
        )
        .bind(BackendState::Terminated.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(journaled_backend).collect()
    }

    /// Whether the journal has ever known this backend.
    pub async fn knows_backend(&self, backend_id: &str) -> Result<bool, JournalError> {
        Ok(sqlx::query("SELECT 1 FROM backends WHERE backend_id = ?")
            .bind(backend_id)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    pub async fn close(&self) {
        self.moved(-self.backlog.load(Ordering::Relaxed));
        self.pool.close().await;
    }

    /// The backlog of unacknowledged events moved by `delta`.
    fn moved(&self, delta: i64) {
        if delta != 0 && crate::metrics::journal_backlog(delta as f64) {
            self.backlog.fetch_add(delta, Ordering::Relaxed);
        }
    }
}

async fn insert_action(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    action_id: &str,
    backend_id: &str,
) -> Result<bool, JournalError> {
    let inserted = sqlx::query(
        "INSERT INTO actions (action_id, backend_id, received_ms) VALUES (?, ?, ?) ON CONFLICT (action_id) DO NOTHING",
    )
    .bind(action_id)
    .bind(backend_id)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

async fn set_termination<'e, E: sqlx::SqliteExecutor<'e>>(
    executor: E,
    backend_id: &str,
    kind: TerminationKind,
    reason: TerminationReason,
) -> Result<(), JournalError> {
    // The first termination asked for is the one reported; only a hard kind may upgrade it.
    sqlx::query(
        "UPDATE backends SET terminate_kind = CASE WHEN terminate_kind IS NULL OR ? = 'HARD' THEN ? ELSE terminate_kind END, \
         terminate_reason = COALESCE(terminate_reason, ?), updated_ms = ? WHERE backend_id = ? AND state <> ?",
    )
    .bind(kind.as_str())
    .bind(kind.as_str())
    .bind(reason.as_str())
    .bind(now_ms())
    .bind(backend_id)
    .bind(BackendState::Terminated.as_str())
    .execute(executor)
    .await?;
    Ok(())
}

fn journaled_backend(row: &sqlx::sqlite::SqliteRow) -> Result<JournaledBackend, JournalError> {
    let corrupt = |what: &str, err: &dyn std::fmt::Display| JournalError::Corrupt(format!("{what}: {err}"));
    let spawn = row
        .get::<Option<Vec<u8>>, _>("spawn")
        .map(|bytes| v1::SpawnBackend::decode(bytes.as_slice()))
        .transpose()
        .map_err(|err| corrupt("spawn", &err))?;
    let state = BackendState::from_str(row.get("state")).map_err(|err| corrupt("state", &err))?;
    let kind: Option<String> = row.get("terminate_kind");
    let reason: Option<String> = row.get("terminate_reason");
    let termination = match (kind, reason) {
        (Some(kind), Some(reason)) => Some((
            TerminationKind::from_str(&kind).map_err(|err| corrupt("terminate_kind", &err))?,
            TerminationReason::from_str(&reason).map_err(|err| corrupt("terminate_reason", &err))?,
        )),
        _ => None,
    };
    Ok(JournaledBackend {
        backend_id: row.get("backend_id"),
        spawn,
        state,
        address: row.get("address"),
        termination,
        lease_renewed_at: row.get::<Option<i64>, _>("lease_renewed_ms").and_then(DateTime::from_timestamp_millis),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, backend: &str) -> v1::DroneBackendEvent {
        v1::DroneBackendEvent { event_id: id.into(), backend_id: backend.into(), status: None, address: String::new() }
    }

    #[tokio::test]
    async fn redelivered_actions_are_recognised_and_events_survive_until_acked() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(Some(dir.path())).await.unwrap();
        let spawn = v1::SpawnBackend::default();
        // The key's lease started before the Spawn arrived: a restart counts from then.
        let lease_started = DateTime::from_timestamp_millis(Utc::now().timestamp_millis() - 12_000).unwrap();
        assert!(journal.accept_spawn("act-1", "bk-1", &spawn, lease_started).await.unwrap());
        assert!(!journal.accept_spawn("act-1", "bk-1", &spawn, Utc::now()).await.unwrap());
        journal.append_event(&event("ev-1", "bk-1"), BackendState::Loading).await.unwrap();
        journal.append_event(&event("ev-2", "bk-1"), BackendState::Starting).await.unwrap();
        journal.ack_event("ev-1").await.unwrap();
        journal.close().await;

        let journal = Journal::open(Some(dir.path())).await.unwrap();
        let left = journal.events_after(0, 100).await.unwrap();
        assert_eq!(left.iter().map(|(_, e)| e.event_id.as_str()).collect::<Vec<_>>(), ["ev-2"]);
        let live = journal.live_backends().await.unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].lease_renewed_at, Some(lease_started));
        assert_eq!(live[0].state, BackendState::Starting);
        journal.accept_terminate("act-2", "bk-1", TerminationKind::Soft, TerminationReason::External).await.unwrap();
        let live = journal.live_backends().await.unwrap();
        assert_eq!(live[0].termination, Some((TerminationKind::Soft, TerminationReason::External)));
    }
}
