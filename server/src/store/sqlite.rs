//! SQLite store: the embedded default for one controller.

use super::StoreError;
use super::rows::{from_migrate, from_sqlx};
use super::sql::{Dialect, SqlStore};
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::str::FromStr;
use std::time::Duration;

pub type SqliteStore = SqlStore<Sqlite>;

impl Dialect for Sqlite {
    // IMMEDIATE takes the write lock at BEGIN; a deferred transaction that reads first and then
    // writes can fail with SQLITE_BUSY when another writer got in between, whatever the timeout.
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    // In WAL mode a deferred transaction reads from one snapshot from its first read on.
    const BEGIN_SNAPSHOT: &'static str = "BEGIN";
    // SQLite has no LATERAL; its planner walks `nodes` in id order and probes the subquery's
    // index once per node.
    const LATEST_VERSION: &'static str = "JOIN node_history h ON h.revision = \
        (SELECT MAX(v.revision) FROM node_history v WHERE v.node_id = n.id AND v.revision <= $1)";
    const ANNOUNCE: Option<&'static str> = None;
    const LOCKS_DATABASE: bool = true;
    const NUMBERED_PARAMETERS: bool = false;
    const GREATEST: &'static str = "max";
    const PLACES_KEY_ROWS: bool = true;

    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// The writer's page cache (SQLite's `cache_size` in KiB; the default is 2 MiB).
const SQLITE_WRITER_CACHE_KIB: u64 = 8 * 1024;

/// How much of the database file the writer reads through a memory map (SQLite's `mmap_size`).
const SQLITE_WRITER_MMAP_BYTES: u64 = 1 << 30;

impl SqlStore<Sqlite> {
    /// Opens (creating the file and its directory if missing) and migrates `sqlite://PATH`.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad SQLite URL {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Revisions handed to watchers must survive a crash: a revision number that comes
            // back with different content after a power cut would confuse every resuming client.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // SQLite's temporary files stay in memory: statement journals (the pages a statement
            // changed inside a transaction, kept so that it alone can be undone), transient
            // indexes and sorts. With the default, those past 64 KiB went to a deleted file in
            // the temporary directory (`/var/tmp`), written through the kernel's file system on
            // the multi-row statements of write batches and renewal groups even with the database
            // on a tmpfs; placements ran 19 % faster without, at the median (BENCHMARKS.md,
            // "Session of 2026-12-07 (15)"). Each lives only as long as its statement or query.
            .pragma("temp_store", "memory")
            .statement_cache_capacity(super::sql::STATEMENT_CACHE);
        if let Some(dir) = options.get_filename().parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        // The one writer keeps a larger page cache, and reads the file through a memory map: it is
        // the only connection whose cache stays valid between transactions (a reader's is dropped
        // whenever another connection wrote), and every placement walks the backends' indexes.
        // With the default 2 MiB and no map, a stream of placements spent a quarter of the
        // controller's CPU in the kernel copying pages back (perf; BENCHMARKS.md "Placements").
        // The cache stays small all the same: a commit after a B-tree split that reordered pages
        // scans the whole cache (SQLite moves a page through the lock-byte page's number, and
        // the commit then drops every cached page past the file's end by walking the cache's
        // table). With 64 MiB that scan was 11 % of the writer thread's time; the map serves the
        // pages the smaller cache no longer holds without a copy (BENCHMARKS.md, "Session of
        // 2026-12-06 (7)"). The map only reads: writes still go through the write-ahead log.
        let writer_options = options
            .clone()
            .pragma("cache_size", format!("-{SQLITE_WRITER_CACHE_KIB}"))
            .pragma("mmap_size", SQLITE_WRITER_MMAP_BYTES.to_string());
        // No ping before each use (sqlx's default): a connection to a local file does not go
        // stale, and each ping was one more round trip to the connection's thread on every store
        // call, a few thousand a second under placements.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(writer_options)
            .await
            .map_err(from_sqlx)?;
        sqlx::migrate!("./migrations/sqlite").run(&write).await.map_err(from_migrate)?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(from_sqlx)?;
        Ok(SqlStore::new(read, write))
    }
}
