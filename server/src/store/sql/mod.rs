//! The store over SQL, written once for both databases: the schema and SQL are the same, and the
//! few differences (how a transaction takes the write lock, how a snapshot is opened, announcing a
//! commit) are a `Dialect`. This module is the plumbing both halves share: the pools, the
//! revision counter, and how a write begins and how its commit is published; [`nodes`] is the
//! node store and [`backends`] the backend store on top of it.
//!
//! Every write runs in one transaction that first bumps the counter row. The row lock (PostgreSQL)
//! or the database write lock (SQLite) is held until commit, so writers are serialized and
//! revisions commit in the order they are handed out, with no gaps: a write that turns out to
//! change nothing rolls back, and its increment with it.

mod backends;
mod nodes;

use super::rows::{self, from_sqlx};
use super::{ActionWakeup, Change, LocalCommit, QueuedAction, Revision, StoreError};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Transaction, Type};

pub trait Dialect: Database {
    /// Opens a transaction that holds the write lock before anything is read: the lookups that
    /// follow (e.g. attach's by name) must not race another writer.
    const BEGIN_WRITE: &'static str;
    /// Opens a read-only transaction whose statements all see one snapshot.
    const BEGIN_SNAPSHOT: &'static str;
    /// Joins each node `n` to its newest history row `h` at or below revision `$1`; see
    /// `rows::snapshot_page_query`.
    const LATEST_VERSION: &'static str;
    /// Run inside each writing transaction just before commit, with the new revision as `$1`.
    const ANNOUNCE: Option<&'static str>;
    /// A writing transaction locks the whole database (SQLite), not rows: one statement may
    /// then update many rows in whatever order it finds them, with no other writer to deadlock.
    const LOCKS_DATABASE: bool;
    /// Parameters are numbered (`$1`, PostgreSQL) rather than taken in order (`?`, SQLite).
    /// Statements written once for both use `$N`, which SQLite also takes; those with hundreds
    /// of parameters are written for each (`backends::writes::parameters`), since SQLite finds
    /// a numbered parameter by walking the statement's list of names, once per parameter bound.
    const NUMBERED_PARAMETERS: bool;
    /// The scalar function that gives the larger of two values (`max` on SQLite, where `MAX`
    /// of two arguments is scalar; `GREATEST` on PostgreSQL).
    const GREATEST: &'static str;
    /// New key rows are stored at a row id chosen from their drone (`backends::writes::key_place`,
    /// SQLite); PostgreSQL's tables have no order to choose.
    const PLACES_KEY_ROWS: bool;

    /// Rows a statement changed (sqlx has no common trait for it).
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

/// Both stores: `SqliteStore` and `PostgresStore` are this with their database.
pub struct SqlStore<DB: Database> {
    /// The newest revision this process knows was committed: bumped after each local commit and,
    /// on PostgreSQL, by the LISTEN task for commits of other controllers.
    committed: tokio::sync::watch::Sender<Revision>,
    /// This process's own commits, with their node or backend changes.
    local: tokio::sync::broadcast::Sender<LocalCommit>,
    /// The drones each commit gave new actions to: this process's commits, and on PostgreSQL
    /// other controllers' (from the NOTIFY payload).
    wakeups: tokio::sync::broadcast::Sender<ActionWakeup>,
    /// Background work the store owns (the PostgreSQL listener); stopped when the store drops.
    background: Option<AbortOnDrop>,
    read: Pool<DB>,
    /// SQLite gets a one-connection pool here, so in-process writers queue fairly instead of
    /// polling the file lock; PostgreSQL uses the same pool for both.
    write: Pool<DB>,
    /// Backend writes waiting to be committed together (`backends::batch`).
    batch: backends::batch::WriteQueue,
    /// Key renewals waiting to be committed together (`backends::renewals`).
    renewals: backends::renewals::RenewalQueue,
    /// This store's mark in the NOTIFY payloads it sends, by which its own listener knows them:
    /// its commits woke this process's sessions already.
    origin: String,
}

/// Prepared statements a connection keeps (sqlx's default is 100). A write batch's statements
/// come in up to nine sizes per table (`backends::writes`), some eighty texts on top of the
/// store's fixed ones; with the default they pushed each other out and were prepared again.
pub(super) const STATEMENT_CACHE: usize = 256;

/// Local commits a `local_commits` receiver may trail by before it gets `Lagged`.
const LOCAL_COMMITS_BUFFER: usize = 4096;

/// Commits with new actions an `action_wakeups` receiver may trail by before it gets `Lagged`
/// (and wakes every session).
const WAKEUPS_BUFFER: usize = 4096;

/// Drone ids a NOTIFY payload names at most; a commit for more says "everyone" (`*`) instead.
/// PostgreSQL caps a payload at 8,000 bytes.
const MAX_NOTIFIED_DRONES: usize = 64;

/// The NOTIFY payload of a commit: its revision, then the store that sent it (`@ORIGIN`) and the
/// drones it gave new actions to, space separated, or `*` for all of them. A bare revision (as
/// older controllers send) names none. (An older controller reads `@ORIGIN` as a drone's id,
/// which no drone has: node ids are UUIDs.)
pub(super) fn notify_payload(revision: Revision, origin: &str, drones: &[String]) -> String {
    let mut payload = revision.to_string();
    if drones.is_empty() {
        return payload;
    }
    payload.push_str(" @");
    payload.push_str(origin);
    if drones.len() > MAX_NOTIFIED_DRONES || drones.iter().any(|d| d.is_empty() || d.contains(' ')) {
        payload.push_str(" *");
    } else {
        for drone in drones {
            payload.push(' ');
            payload.push_str(drone);
        }
    }
    payload
}

/// Reads [`notify_payload`]: the revision (`None` if it does not parse) and the wake-up it
/// carries, if any. A payload the store `own` sent carries none: that commit woke this
/// process's sessions when it was made (and carried them its Spawns).
pub(super) fn parse_notify_payload(payload: &str, own: &str) -> (Option<Revision>, Option<ActionWakeup>) {
    let mut parts = payload.split(' ');
    let Some(revision) = parts.next().and_then(|r| r.parse::<Revision>().ok()) else {
        // Not ours to read: wake everyone rather than miss an action.
        return (None, Some(ActionWakeup::All));
    };
    let mut drones: Vec<String> = Vec::new();
    for part in parts.filter(|p| !p.is_empty()) {
        match part.strip_prefix('@') {
            Some(origin) if origin == own => return (Some(revision), None),
            Some(_) => {}
            None => drones.push(part.to_string()),
        }
    }
    let wakeup = if drones.iter().any(|d| d == "*") {
        Some(ActionWakeup::All)
    } else if drones.is_empty() {
        None
    } else {
        Some(ActionWakeup::Drones(drones.into()))
    };
    (Some(revision), wakeup)
}

const BUMP_REVISION: &str = "UPDATE revision_counter SET current = current + 1 WHERE id = 1 RETURNING current";

/// A task that ends with its owner.
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<DB: Database> SqlStore<DB> {
    pub(super) fn new(read: Pool<DB>, write: Pool<DB>) -> Self {
        let (committed, _) = tokio::sync::watch::channel(0);
        let (local, _) = tokio::sync::broadcast::channel(LOCAL_COMMITS_BUFFER);
        let (wakeups, _) = tokio::sync::broadcast::channel(WAKEUPS_BUFFER);
        SqlStore {
            committed,
            local,
            wakeups,
            background: None,
            read,
            write,
            batch: backends::batch::write_queue(),
            renewals: backends::renewals::renewal_queue(),
            origin: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
        }
    }

    pub(super) fn origin(&self) -> String {
        self.origin.clone()
    }

    /// Records that `revision` is committed and wakes subscribers (never moves backwards).
    pub(super) fn announce(committed: &tokio::sync::watch::Sender<Revision>, revision: Option<Revision>) {
        committed.send_if_modified(|current| match revision {
            Some(r) if r > *current => {
                *current = r;
                true
            }
            Some(_) => false,
            // Unknown revision (e.g. a listener that reconnected and may have missed some):
            // wake subscribers so that they read the log.
            None => true,
        });
    }

    pub(super) fn committed_sender(&self) -> tokio::sync::watch::Sender<Revision> {
        self.committed.clone()
    }

    pub(super) fn wakeups_sender(&self) -> tokio::sync::broadcast::Sender<ActionWakeup> {
        self.wakeups.clone()
    }

    pub(super) fn own(&mut self, task: AbortOnDrop) {
        self.background = Some(task);
    }

    pub(super) fn read_pool(&self) -> &Pool<DB> {
        &self.read
    }

    pub(super) fn write_pool(&self) -> &Pool<DB> {
        &self.write
    }
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
    pub(super) async fn begin_write(&self) -> Result<(Transaction<'static, DB>, Revision), StoreError> {
        let mut tx = self.write.begin_with(DB::BEGIN_WRITE).await.map_err(from_sqlx)?;
        let row = sqlx::query(BUMP_REVISION).fetch_one(&mut *tx).await.map_err(from_sqlx)?;
        let revision = rows::revision_from_db(row.try_get(0).map_err(from_sqlx)?)?;
        Ok((tx, revision))
    }

    /// Takes `extra` more revisions in a transaction opened by [`begin_write`](Self::begin_write),
    /// for a write that records several changes at once (the retention pass: one REMOVED per
    /// backend). Returns the last one; together with the first they are consecutive.
    pub(super) async fn take_more_revisions(
        tx: &mut Transaction<'static, DB>,
        extra: u64,
    ) -> Result<Revision, StoreError> {
        let row = sqlx::query("UPDATE revision_counter SET current = current + $1 WHERE id = 1 RETURNING current")
            .bind(rows::db_revision(extra))
            .fetch_one(&mut **tx)
            .await
            .map_err(from_sqlx)?;
        rows::revision_from_db(row.try_get(0).map_err(from_sqlx)?)
    }

    /// Announces `revision` (PostgreSQL: NOTIFY, sent only if the commit succeeds), commits, and
    /// wakes this process's subscribers.
    pub(super) async fn commit_announced(
        &self,
        tx: Transaction<'static, DB>,
        revision: Revision,
    ) -> Result<(), StoreError> {
        self.commit_published(tx, revision, None, &[]).await
    }

    /// [`commit_announced`](Self::commit_announced) for a commit that gave `drones` new actions:
    /// their sessions (on any controller) are woken, and only theirs.
    pub(super) async fn commit_waking(
        &self,
        tx: Transaction<'static, DB>,
        revision: Revision,
        change: Option<Change>,
        drones: &[String],
    ) -> Result<(), StoreError> {
        self.commit_published(tx, revision, change, drones).await
    }

    /// [`commit_announced`](Self::commit_announced), and publishes the commit with its change
    /// (if any) to this process's `local_commits` receivers before waking subscribers.
    async fn commit_published(
        &self,
        tx: Transaction<'static, DB>,
        revision: Revision,
        change: Option<Change>,
        drones: &[String],
    ) -> Result<(), StoreError> {
        self.commit_publishing(tx, revision, [LocalCommit { revision, change }], drones, Vec::new()).await
    }

    /// [`commit_published`](Self::commit_published) for a write of several consecutive
    /// revisions, the last being `last`: each change is published under its own revision, in
    /// order, so the watch hub fans them out as if they had been committed one by one.
    async fn commit_published_all(
        &self,
        tx: Transaction<'static, DB>,
        last: Revision,
        changes: Vec<Change>,
    ) -> Result<(), StoreError> {
        let commits =
            changes.into_iter().map(|change| LocalCommit { revision: change.revision(), change: Some(change) });
        self.commit_publishing(tx, last, commits, &[], Vec::new()).await
    }

    /// Every commit ends here: announces `last` (the NOTIFY naming the drones given actions,
    /// inside the transaction), commits, publishes `commits` in order to this process's
    /// `local_commits` receivers, carries `spawns` to their drones' sessions and wakes those of
    /// `drones` to read theirs, then wakes the subscribers.
    pub(super) async fn commit_publishing(
        &self,
        mut tx: Transaction<'static, DB>,
        last: Revision,
        commits: impl IntoIterator<Item = LocalCommit>,
        drones: &[String],
        spawns: Vec<QueuedAction>,
    ) -> Result<(), StoreError> {
        if let Some(announce) = DB::ANNOUNCE {
            // Another controller's sessions read what this one carries to its own.
            let mut named = drones.to_vec();
            named.extend(spawns.iter().map(|spawn| spawn.action.drone_id.clone()));
            named.sort_unstable();
            named.dedup();
            let payload = notify_payload(last, &self.origin, &named);
            sqlx::query(announce).bind(payload).execute(&mut *tx).await.map_err(from_sqlx)?;
        }
        tx.commit().await.map_err(from_sqlx)?;
        // No receiver is not an error: nobody in this process fans out.
        for commit in commits {
            crate::metrics::record_commit(&commit);
            let _ = self.local.send(commit);
        }
        if !spawns.is_empty() {
            let _ = self.wakeups.send(ActionWakeup::Spawns(spawns.into()));
        }
        if !drones.is_empty() {
            let _ = self.wakeups.send(ActionWakeup::Drones(drones.into()));
        }
        Self::announce(&self.committed, Some(last));
        Ok(())
    }

    async fn begin_snapshot(&self) -> Result<(Transaction<'static, DB>, Revision, Revision), StoreError> {
        let mut tx = self.read.begin_with(DB::BEGIN_SNAPSHOT).await.map_err(from_sqlx)?;
        let (current, compacted) = counter(&mut tx).await?;
        Ok((tx, current, compacted))
    }

    async fn counter_now(&self) -> Result<(Revision, Revision), StoreError> {
        let mut connection = self.read.acquire().await.map_err(from_sqlx)?;
        counter(&mut connection).await
    }
}

async fn counter<DB>(connection: &mut DB::Connection) -> Result<(Revision, Revision), StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    let row = sqlx::query("SELECT current, compacted FROM revision_counter WHERE id = 1")
        .fetch_one(connection)
        .await
        .map_err(from_sqlx)?;
    Ok((
        rows::revision_from_db(row.try_get(0).map_err(from_sqlx)?)?,
        rows::revision_from_db(row.try_get(1).map_err(from_sqlx)?)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notify_payload_names_the_revision_and_the_drones_it_wakes() {
        let drones = vec!["d-1".to_string(), "d-2".to_string()];
        let payload = notify_payload(7, "a1", &drones);
        assert_eq!(payload, "7 @a1 d-1 d-2");
        assert_eq!(parse_notify_payload(&payload, "b2"), (Some(7), Some(ActionWakeup::Drones(drones.into()))));
        // The sender's own listener: its commit woke its sessions already.
        assert_eq!(parse_notify_payload(&payload, "a1"), (Some(7), None));
        // An older controller's payload, without an origin.
        assert_eq!(
            parse_notify_payload("7 d-1", "a1"),
            (Some(7), Some(ActionWakeup::Drones(vec!["d-1".to_string()].into())))
        );
        // No drones: a bare revision, as older controllers send and read it.
        assert_eq!(notify_payload(8, "a1", &[]), "8");
        assert_eq!(parse_notify_payload("8", "a1"), (Some(8), None));
        // Too many to name: everyone (but not for the sender).
        let many: Vec<String> = (0..=MAX_NOTIFIED_DRONES).map(|i| format!("d-{i}")).collect();
        assert_eq!(parse_notify_payload(&notify_payload(9, "a1", &many), "b2"), (Some(9), Some(ActionWakeup::All)));
        assert_eq!(parse_notify_payload(&notify_payload(9, "a1", &many), "a1"), (Some(9), None));
        assert_eq!(parse_notify_payload("garbage", "a1"), (None, Some(ActionWakeup::All)));
    }

    /// A statement journal past 64 KiB (a batch's or a renewal group's multi-row statement)
    /// went to a file in the temporary directory, written through the kernel each time; the
    /// store's connections keep them, and sorts, in memory (`SqliteStore::open`).
    #[tokio::test]
    async fn a_sqlite_stores_connections_keep_their_temporary_files_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::SqliteStore::open(&crate::store::sqlite_url(&dir.path().join("hangar.db"))).await.unwrap();
        for pool in [&store.write, &store.read] {
            let temp_store: i64 = sqlx::query_scalar("PRAGMA temp_store").fetch_one(pool).await.unwrap();
            assert_eq!(temp_store, 2, "MEMORY");
        }
    }
}
