//! PostgreSQL store: several controllers share one database.

use super::ActionWakeup;
use super::Revision;
use super::StoreError;
use super::rows::{from_migrate, from_sqlx};
use super::sql::{AbortOnDrop, Dialect, SqlStore, parse_notify_payload};
use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::watch;

pub type PostgresStore = SqlStore<Postgres>;

/// The NOTIFY channel every commit that takes a revision (node and backend changes alike) is
/// announced on; the payload is the revision as decimal text, followed (space separated) by the
/// ids of the drones the commit gave new actions to, or `*` for all; listeners read the rows
/// themselves.
pub const NODE_CHANGES_CHANNEL: &str = "hangar_node_changes";

impl Dialect for Postgres {
    // The counter-row UPDATE that opens every write takes the lock; plain READ COMMITTED lets the
    // statements after it see what the writer before committed.
    const BEGIN_WRITE: &'static str = "BEGIN";
    const BEGIN_SNAPSHOT: &'static str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
    // With the join SQLite uses, PostgreSQL's planner may hash the whole history and sort every
    // node for each page; LATERAL keeps it an index walk (BENCHMARKS.md, "Snapshot pages").
    const LATEST_VERSION: &'static str = "CROSS JOIN LATERAL (SELECT * FROM node_history v \
        WHERE v.node_id = n.id AND v.revision <= $1 ORDER BY v.revision DESC LIMIT 1) h";
    // Sent at commit, in commit order, and only if the transaction commits.
    const ANNOUNCE: Option<&'static str> = Some("SELECT pg_notify('hangar_node_changes', $1)");
    const LOCKS_DATABASE: bool = false;
    const NUMBERED_PARAMETERS: bool = true;
    const GREATEST: &'static str = "GREATEST";
    const PLACES_KEY_ROWS: bool = false;

    fn rows_affected(result: &sqlx::postgres::PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// How long a controller's session may sit in an open transaction without a statement.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "SET idle_in_transaction_session_timeout = '5s'";

impl SqlStore<Postgres> {
    /// Connects to and migrates `postgres://…`. Concurrent controllers may migrate at once: sqlx
    /// serializes migrations with an advisory lock.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad PostgreSQL URL: {e}")))?
            .statement_cache_capacity(super::sql::STATEMENT_CACHE);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            // A call while the database is down fails as Unavailable after this, not hangs.
            .acquire_timeout(Duration::from_secs(5))
            // A controller that stops inside a write transaction (paused, swapped out, cut off
            // from the database mid-batch) holds the revision counter's row lock, and with it
            // every other controller's writes, until its session ends: the database ends it
            // after this much silence instead (docs/design/faults.md, "A paused controller").
            .after_connect(|connection, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(&mut *connection, IDLE_IN_TRANSACTION_TIMEOUT).await.map(drop)
                })
            })
            .connect_with(options)
            .await
            .map_err(from_sqlx)?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await.map_err(from_migrate)?;
        let mut store = SqlStore::new(pool.clone(), pool);
        let listener = PgListener::connect_with(store.read_pool()).await.map_err(from_sqlx)?;
        let committed = store.committed_sender();
        let wakeups = store.wakeups_sender();
        store.own(AbortOnDrop(tokio::spawn(listen(listener, committed, wakeups, store.origin()))));
        Ok(store)
    }
}

/// Carries other controllers' commits into this process. NOTIFY payloads are hints: after the
/// listener reconnects, some may have been missed, so subscribers are woken to read the log.
/// The drones named in a payload are woken; after a reconnect every drone is.
async fn listen(
    mut listener: PgListener,
    committed: watch::Sender<Revision>,
    wakeups: tokio::sync::broadcast::Sender<ActionWakeup>,
    origin: String,
) {
    let mut listening = false;
    loop {
        if !listening {
            match listener.listen(NODE_CHANGES_CHANNEL).await {
                Ok(()) => {
                    listening = true;
                    SqlStore::<Postgres>::announce(&committed, None);
                    let _ = wakeups.send(ActionWakeup::All);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot LISTEN for node changes; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                // This process's own commits name no wake-up here: they were published (and
                // their Spawns carried) at commit.
                let (revision, wakeup) = parse_notify_payload(notification.payload(), &origin);
                if let Some(wakeup) = wakeup {
                    let _ = wakeups.send(wakeup);
                }
                SqlStore::<Postgres>::announce(&committed, revision);
            }
            // The connection was lost; the next call reconnects and re-listens by itself.
            Ok(None) => {
                tracing::warn!("lost the LISTEN connection; reconnecting");
                SqlStore::<Postgres>::announce(&committed, None);
                let _ = wakeups.send(ActionWakeup::All);
            }
            Err(err) => {
                tracing::warn!(error = %err, "LISTEN connection failed; reconnecting");
                listening = false;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_announced_on_the_documented_channel() {
        let announce = <Postgres as Dialect>::ANNOUNCE.unwrap();
        assert!(announce.contains(&format!("'{NODE_CHANGES_CHANNEL}'")), "{announce}");
    }
}
