//! The rows backend writes put in the database, and the statements that put them: many rows of
//! a table in one statement. A write batch ([`super::batch`]) holds its rows back and writes
//! them together just before it commits, so that a burst of placements costs a few statements
//! per batch rather than six per placement; a lone write uses the same statements with one row.
//! (docs/design/backends-and-leases.md#connect-get-or-create-by-key)
//!
//! A statement takes a power of two of rows (a batch of 37 is written as 32 + 4 + 1), so each
//! table has at most nine statement texts and the connection's prepared-statement cache keeps
//! them all, instead of preparing a new text for every batch size.

use super::{Dialect, SqlStore, encode};
use crate::store::Revision;
use crate::store::backends::{IssuedToken, PendingAction};
use crate::store::rows::{self, db_revision, from_sqlx};
use crate::store::{ChangeKind, StoreError};
use chrono::{DateTime, Utc};
use hangar::domain::{Backend, BackendKey, BackendState};
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Type};
use std::collections::HashMap;

/// Rows per statement at most (a power of two): 256 rows of the widest table (`backends`, 15
/// columns) bind 3,840 parameters, far under SQLite's limit (32,766) and PostgreSQL's (65,535).
const MAX_ROWS: usize = 256;

/// A `backends` row: a new backend, or the new version of one (its key columns, creation time and
/// activity are then left as they are: traffic reports own `last_activity_at`).
pub(in crate::store::sql) struct BackendRow {
    id: String,
    key: BackendKey,
    drone_id: String,
    cluster: String,
    pool: String,
    state: &'static str,
    fencing_token: i64,
    created_at: i64,
    updated_at: i64,
    last_activity_at: i64,
    revision: i64,
    /// The backend, encoded.
    pub(in crate::store::sql) data: String,
    limit_at: Option<i64>,
}

impl BackendRow {
    pub(in crate::store::sql) fn of(backend: &Backend, revision: Revision) -> Result<BackendRow, StoreError> {
        Ok(BackendRow {
            id: backend.id.clone(),
            key: backend.key.clone().unwrap_or(BackendKey {
                namespace: String::new(),
                name: String::new(),
                tag: String::new(),
            }),
            drone_id: backend.drone_id.clone(),
            cluster: backend.cluster.clone(),
            pool: backend.pool.clone(),
            state: backend.status.state.as_str(),
            fencing_token: i64::try_from(backend.fencing_token).unwrap_or(i64::MAX),
            created_at: rows::millis(backend.created_at),
            updated_at: rows::millis(backend.updated_at),
            last_activity_at: rows::millis(backend.last_activity_at),
            revision: db_revision(revision),
            data: encode(backend)?,
            limit_at: backend.limit_due_at().map(rows::millis),
        })
    }
}

/// A `backend_history` row: a status the backend went through and, for the watch log, the whole
/// backend and its state before (`None`: the backend is new).
pub(in crate::store::sql) struct HistoryRow {
    revision: i64,
    backend_id: String,
    status: String,
    recorded_at: i64,
    change: &'static str,
    previous_state: String,
    data: String,
}

impl HistoryRow {
    /// The history entry of `backend`'s new status, with the backend already encoded (`data`,
    /// its [`BackendRow`]'s): a changed backend is encoded once for its row and its entry.
    pub(in crate::store::sql) fn with_data(
        backend: &Backend,
        revision: Revision,
        previous: Option<BackendState>,
        data: String,
    ) -> Result<HistoryRow, StoreError> {
        let change = if previous.is_none() { ChangeKind::Added } else { ChangeKind::Modified };
        Ok(HistoryRow {
            revision: db_revision(revision),
            backend_id: backend.id.clone(),
            status: encode(&backend.status)?,
            recorded_at: rows::millis(Utc::now()),
            change: rows::change_as_str(change),
            previous_state: previous.map(|s| s.as_str().to_string()).unwrap_or_default(),
            data,
        })
    }
}

/// A `backend_keys` row for a key given to a new holder.
pub(in crate::store::sql) struct KeyRow {
    key: BackendKey,
    backend_id: String,
    fencing_token: i64,
    lease_expires_at: i64,
    /// Where a new row goes among the keys ([`key_place`]); a row taken over keeps its place.
    place: i64,
}

impl KeyRow {
    /// The row of `key` for its new holder `backend_id`, placed on `drone_id` at `revision`.
    pub(in crate::store::sql) fn new(
        key: &BackendKey,
        backend_id: &str,
        fencing_token: i64,
        lease: i64,
        drone_id: &str,
        revision: Revision,
    ) -> KeyRow {
        KeyRow {
            key: key.clone(),
            backend_id: backend_id.into(),
            fencing_token,
            lease_expires_at: lease,
            place: key_place(drone_id, revision),
        }
    }
}

/// The SQLite row id a new key's row is stored at: its drone's group in the high bits, above the
/// revision of the placement that created it. A drone renews all its keys at once, and SQLite
/// keeps a table's rows in row-id order: with ids handed out in insertion order, the keys of one
/// drone were spread over the whole table (every drone's placements interleave), a round changed
/// about one page per key, and a commit writes each changed page whole to the write-ahead log.
/// Grouped by drone, a round's rows share few pages; its expiry index entries sat together
/// already (a round gives its keys one expiry). Revisions are unique, so ids are; groups start at
/// 1, above every id SQLite gave rows before (at most the number of rows ever inserted). Only
/// where rows sit depends on it, never what a key holds or when. PostgreSQL has no such order
/// and takes no id (`Dialect::PLACES_KEY_ROWS`).
/// Design: docs/design/backends-and-leases.md#where-a-keys-row-is-stored.
pub(in crate::store::sql) fn key_place(drone_id: &str, revision: Revision) -> i64 {
    // FNV-1a: stable across builds and processes, so that a restarted controller keeps adding
    // a drone's keys to the same group.
    let hash =
        drone_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let group = 1 + hash % KEY_GROUPS;
    // At 100,000 placements a second, revisions reach 2^50 after 350 years.
    (group << KEY_REVISION_BITS | (revision & ((1 << KEY_REVISION_BITS) - 1))) as i64
}

/// Drones share these groups of key rows; with more drones than groups a group holds a few
/// drones' keys, still apart from the rest.
const KEY_GROUPS: u64 = 4095;
/// Bits of a key's row id below its group: the group (1..=4095) takes the 12 above them, and the
/// id stays a positive `i64`.
const KEY_REVISION_BITS: u32 = 50;

/// A `drone_actions` row.
pub(in crate::store::sql) struct ActionRow {
    id: String,
    drone_id: String,
    backend_id: String,
    payload: String,
    created_at: i64,
}

impl ActionRow {
    pub(in crate::store::sql) fn of(action: &PendingAction) -> Result<ActionRow, StoreError> {
        Ok(ActionRow {
            id: action.id.clone(),
            drone_id: action.drone_id.clone(),
            backend_id: action.backend_id.clone(),
            payload: encode(&action.payload)?,
            created_at: rows::millis(action.created_at),
        })
    }
}

/// A `connection_tokens` row.
pub(in crate::store::sql) struct TokenRow {
    hash: String,
    backend_id: String,
    user: String,
    auth: String,
    expires_at: i64,
    created_at: i64,
}

impl TokenRow {
    /// `expires_at`: milliseconds, 0 for a static token.
    pub(in crate::store::sql) fn of(
        backend_id: &str,
        token: &IssuedToken,
        expires_at: i64,
        now: DateTime<Utc>,
    ) -> Result<TokenRow, StoreError> {
        Ok(TokenRow {
            hash: token.hash.clone(),
            backend_id: backend_id.into(),
            user: token.user.clone(),
            auth: encode(&token.auth)?,
            expires_at,
            created_at: rows::millis(now),
        })
    }
}

/// A backend that ended at some time: what its end takes with it is released
/// ([`SqlStore::release_many`]).
#[derive(Clone)]
pub(in crate::store::sql) struct ReleaseRow {
    backend_id: String,
    /// Its tokens' new expiry, in milliseconds: [`super::TERMINATED_TOKEN_GRACE`] after its end.
    tokens_until: i64,
}

impl ReleaseRow {
    pub(in crate::store::sql) fn of(backend_id: &str, ended_at: DateTime<Utc>) -> ReleaseRow {
        ReleaseRow {
            backend_id: backend_id.into(),
            tokens_until: rows::millis(ended_at + super::TERMINATED_TOKEN_GRACE),
        }
    }
}

/// An action a drone acknowledged: deleted if it is that drone's.
#[derive(Clone)]
pub(in crate::store::sql) struct AckRow {
    drone_id: String,
    id: String,
}

/// Rows a write batch holds back until [`SqlStore::write_rows`]. A backend or key written twice is
/// written once, in its last version (one statement may not touch a row twice on PostgreSQL);
/// actions keep their order (a drone gets them oldest first). Acknowledged actions are deleted
/// after the actions are written, so that an acknowledgement always finds what was queued before
/// it, and ended backends are released last, so that their release finds every row the batch
/// gave them.
#[derive(Default)]
pub(in crate::store::sql) struct Rows {
    backends: Vec<BackendRow>,
    backend_at: HashMap<String, usize>,
    keys: Vec<KeyRow>,
    key_at: HashMap<(String, String), usize>,
    history: Vec<HistoryRow>,
    actions: Vec<ActionRow>,
    tokens: Vec<TokenRow>,
    acks: Vec<AckRow>,
    releases: Vec<ReleaseRow>,
}

impl Rows {
    pub(in crate::store::sql) fn backend(&mut self, row: BackendRow) {
        match self.backend_at.get(&row.id) {
            Some(&at) => self.backends[at] = row,
            None => {
                self.backend_at.insert(row.id.clone(), self.backends.len());
                self.backends.push(row);
            }
        }
    }

    pub(in crate::store::sql) fn key(&mut self, row: KeyRow) {
        let name = (row.key.namespace.clone(), row.key.name.clone());
        match self.key_at.get(&name) {
            Some(&at) => self.keys[at] = row,
            None => {
                self.key_at.insert(name, self.keys.len());
                self.keys.push(row);
            }
        }
    }

    pub(in crate::store::sql) fn history(&mut self, row: HistoryRow) {
        self.history.push(row);
    }

    pub(in crate::store::sql) fn action(&mut self, row: ActionRow) {
        self.actions.push(row);
    }

    pub(in crate::store::sql) fn token(&mut self, row: TokenRow) {
        self.tokens.push(row);
    }

    pub(in crate::store::sql) fn ack(&mut self, drone_id: &str, id: &str) {
        self.acks.push(AckRow { drone_id: drone_id.into(), id: id.into() });
    }

    /// A backend ended: what its end takes with it is released after the other rows are written.
    pub(in crate::store::sql) fn release(&mut self, row: ReleaseRow) {
        self.releases.push(row);
    }

    pub(in crate::store::sql) fn is_empty(&self) -> bool {
        self.backends.is_empty()
            && self.keys.is_empty()
            && self.history.is_empty()
            && self.actions.is_empty()
            && self.tokens.is_empty()
            && self.acks.is_empty()
            && self.releases.is_empty()
    }
}

/// Items per statement at most when many rows are read, renewed or deleted at once (a power of
/// two).
const MANY: usize = 256;

/// `items` in chunks of at most [`MANY`], each padded to a power of two by repeating its last
/// item (harmless in an `IN` list or an `OR`), so that a statement has at most nine texts and
/// stays in the connection's prepared-statement cache whatever the number of items.
pub(in crate::store::sql) fn padded_chunks<T: Clone>(items: &[T]) -> impl Iterator<Item = Vec<T>> + '_ {
    items.chunks(MANY).map(|chunk| {
        let mut chunk = chunk.to_vec();
        if let Some(last) = chunk.last().cloned() {
            chunk.resize(chunk.len().next_power_of_two(), last);
        }
        chunk
    })
}

/// A statement being bound.
type Statement<'q, DB> = sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>;

/// Frees the keys the backends of `list` (the statement's parameters for their ids) hold. A key
/// is found by its holder on the index of held keys (migration 0008), which the condition on
/// `''` lets the planners use: without it this scanned every key ever used, under the write lock,
/// on every backend's end (BENCHMARKS.md, "A key found by its holder").
pub(in crate::store::sql) fn free_holders_keys(list: &str) -> String {
    format!("UPDATE backend_keys SET backend_id = '' WHERE backend_id IN ({list}) AND backend_id <> ''")
}

/// `count` parameters, the first of them the statement's `first`: `$first, $first+1, …` where
/// parameters are numbered, `?, ?, …` where they are taken in order (see
/// [`Dialect::NUMBERED_PARAMETERS`]). (sqlx's `QueryBuilder` would write them, but its statements
/// cannot be run over a generic database: its arguments' lifetime is not known to be covariant
/// there.)
pub(in crate::store::sql) fn parameters<DB: Dialect>(first: usize, count: usize) -> String {
    let one = |n: usize| if DB::NUMBERED_PARAMETERS { format!("${n}") } else { "?".to_string() };
    (first..first + count).map(one).collect::<Vec<_>>().join(", ")
}

/// The statements that write rows, many to a statement.
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
    /// Writes every row `rows` holds back, and leaves it holding none. Returns each written
    /// action's id with its place in its drone's queue.
    pub(in crate::store::sql) async fn write_rows(
        connection: &mut DB::Connection,
        rows: &mut Rows,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let Rows { backends, backend_at, keys, key_at, history, actions, tokens, acks, releases } =
            std::mem::take(rows);
        drop((backend_at, key_at));
        Self::write_backends(connection, backends).await?;
        Self::write_keys(connection, keys).await?;
        Self::write_history(connection, history).await?;
        let queued = Self::write_actions(connection, actions).await?;
        Self::write_tokens(connection, tokens).await?;
        Self::delete_acked(connection, &acks).await?;
        Self::release_many(connection, releases).await?;
        Ok(queued)
    }

    /// What the ends of `releases` take with them: each backend's key, its undelivered actions,
    /// and its tokens, which stay for [`super::TERMINATED_TOKEN_GRACE`] (static ones too) so
    /// that a client following an old URL is told the backend terminated rather than that its
    /// token is unknown; the sweep purges them after that. Each statement is for a chunk of
    /// backends: a batch that ends many (`churn`) makes three statements per chunk, where each
    /// end was three of its own after a write of the rows held before it. A key is freed only
    /// while the ended backend still holds it: a later Connect of the same batch may have given
    /// it to a new holder already.
    pub(in crate::store::sql) async fn release_many(
        connection: &mut DB::Connection,
        mut releases: Vec<ReleaseRow>,
    ) -> Result<(), StoreError> {
        let ids: Vec<&str> = releases.iter().map(|r| r.backend_id.as_str()).collect();
        for chunk in padded_chunks(&ids) {
            let list = parameters::<DB>(1, chunk.len());
            for sql in [free_holders_keys(&list), format!("DELETE FROM drone_actions WHERE backend_id IN ({list})")] {
                let mut query = sqlx::query(&sql);
                for id in &chunk {
                    query = query.bind(id.to_string());
                }
                query.execute(&mut *connection).await.map_err(from_sqlx)?;
            }
        }
        // The tokens, one statement per chunk of backends that ended at the same time (a drone's
        // report ends its backends at one time).
        releases.sort_by_key(|r| r.tokens_until);
        for same in releases.chunk_by(|a, b| a.tokens_until == b.tokens_until) {
            let until = same[0].tokens_until;
            let ids: Vec<&str> = same.iter().map(|r| r.backend_id.as_str()).collect();
            for chunk in padded_chunks(&ids) {
                let sql = format!(
                    "UPDATE connection_tokens SET expires_at = {} WHERE backend_id IN ({}) \
                     AND (expires_at = 0 OR expires_at > {})",
                    parameters::<DB>(1, 1),
                    parameters::<DB>(2, chunk.len()),
                    parameters::<DB>(2 + chunk.len(), 1)
                );
                let mut query = sqlx::query(&sql).bind(until);
                for id in &chunk {
                    query = query.bind(id.to_string());
                }
                query.bind(until).execute(&mut *connection).await.map_err(from_sqlx)?;
            }
        }
        Ok(())
    }

    /// Deletes the acknowledged actions, each only if it is queued for the drone that
    /// acknowledged it, every drone's together: one statement per chunk, where one per
    /// acknowledging drone was about half of a placements batch's round trips to the database. The
    /// `id IN` list is what finds the rows (by the unique index on `id`); the pairs are what
    /// decides which of them go.
    async fn delete_acked(connection: &mut DB::Connection, acks: &[AckRow]) -> Result<(), StoreError> {
        for chunk in padded_chunks(acks) {
            let n = chunk.len();
            let pairs: Vec<String> = (0..n).map(|i| format!("({})", parameters::<DB>(n + 1 + 2 * i, 2))).collect();
            let sql = format!(
                "DELETE FROM drone_actions WHERE id IN ({}) AND (drone_id, id) IN (VALUES {})",
                parameters::<DB>(1, n),
                pairs.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for ack in &chunk {
                query = query.bind(ack.id.clone());
            }
            for ack in &chunk {
                query = query.bind(ack.drone_id.clone()).bind(ack.id.clone());
            }
            query.execute(&mut *connection).await.map_err(from_sqlx)?;
        }
        Ok(())
    }

    /// Runs `head VALUES (…), (…) tail` over `rows` (of `columns` values each, bound by `bind`),
    /// each chunk a power of two of rows. A `tail` with a `RETURNING` clause gives rows back into
    /// `returned`. The rows are moved into their statements, not copied: a batch's rows carry
    /// every backend's data and every action's payload, and are written once.
    async fn insert_many<T>(
        connection: &mut DB::Connection,
        head: &str,
        tail: &str,
        columns: usize,
        rows: Vec<T>,
        bind: impl for<'q> Fn(Statement<'q, DB>, T) -> Statement<'q, DB>,
        mut returned: Option<&mut Vec<DB::Row>>,
    ) -> Result<(), StoreError> {
        let mut left = rows.len();
        let mut rows = rows.into_iter();
        while left > 0 {
            let take = if left >= MAX_ROWS { MAX_ROWS } else { 1 << left.ilog2() };
            left -= take;
            let values: Vec<String> =
                (0..take).map(|i| format!("({})", parameters::<DB>(1 + i * columns, columns))).collect();
            let sql = format!("{head}VALUES {}{tail}", values.join(", "));
            let mut query = sqlx::query(&sql);
            for row in rows.by_ref().take(take) {
                query = bind(query, row);
            }
            match returned.as_deref_mut() {
                Some(returned) => returned.extend(query.fetch_all(&mut *connection).await.map_err(from_sqlx)?),
                None => {
                    query.execute(&mut *connection).await.map_err(from_sqlx)?;
                }
            }
        }
        Ok(())
    }

    /// New backends are inserted, known ones updated (state, times, revision, data, limit).
    pub(in crate::store::sql) async fn write_backends(
        connection: &mut DB::Connection,
        rows: Vec<BackendRow>,
    ) -> Result<(), StoreError> {
        Self::insert_many(
            connection,
            "INSERT INTO backends (id, key_namespace, key_name, key_tag, drone_id, cluster, pool, state, fencing_token, \
             created_at, updated_at, last_activity_at, revision, data, limit_at) ",
            " ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at, \
             revision = excluded.revision, data = excluded.data, limit_at = excluded.limit_at",
            15,
            rows,
            |query, b| {
                query
                    .bind(b.id)
                    .bind(b.key.namespace)
                    .bind(b.key.name)
                    .bind(b.key.tag)
                    .bind(b.drone_id)
                    .bind(b.cluster)
                    .bind(b.pool)
                    .bind(b.state.to_string())
                    .bind(b.fencing_token)
                    .bind(b.created_at)
                    .bind(b.updated_at)
                    .bind(b.last_activity_at)
                    .bind(b.revision)
                    .bind(b.data)
                    .bind(b.limit_at)
            },
            None,
        )
        .await
    }

    /// A key's row is created, or taken over by its new holder.
    async fn write_keys(connection: &mut DB::Connection, rows: Vec<KeyRow>) -> Result<(), StoreError> {
        let (head, columns) = if DB::PLACES_KEY_ROWS {
            ("INSERT INTO backend_keys (rowid, namespace, name, tag, backend_id, fencing_token, lease_expires_at) ", 7)
        } else {
            ("INSERT INTO backend_keys (namespace, name, tag, backend_id, fencing_token, lease_expires_at) ", 6)
        };
        Self::insert_many(
            connection,
            head,
            " ON CONFLICT (namespace, name) DO UPDATE SET tag = excluded.tag, backend_id = excluded.backend_id, \
             fencing_token = excluded.fencing_token, lease_expires_at = excluded.lease_expires_at",
            columns,
            rows,
            |query, k| {
                let query = if DB::PLACES_KEY_ROWS { query.bind(k.place) } else { query };
                query
                    .bind(k.key.namespace)
                    .bind(k.key.name)
                    .bind(k.key.tag)
                    .bind(k.backend_id)
                    .bind(k.fencing_token)
                    .bind(k.lease_expires_at)
            },
            None,
        )
        .await
    }

    pub(in crate::store::sql) async fn write_history(
        connection: &mut DB::Connection,
        rows: Vec<HistoryRow>,
    ) -> Result<(), StoreError> {
        Self::insert_many(
            connection,
            "INSERT INTO backend_history (revision, backend_id, status, recorded_at, change, previous_state, data) ",
            "",
            7,
            rows,
            |query, h| {
                query
                    .bind(h.revision)
                    .bind(h.backend_id)
                    .bind(h.status)
                    .bind(h.recorded_at)
                    .bind(h.change.to_string())
                    .bind(h.previous_state)
                    .bind(h.data)
            },
            None,
        )
        .await
    }

    /// Queues actions; returns each one's id with its place in its drone's queue (`seq`).
    pub(in crate::store::sql) async fn write_actions(
        connection: &mut DB::Connection,
        rows: Vec<ActionRow>,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let mut returned = Vec::with_capacity(rows.len());
        Self::insert_many(
            connection,
            "INSERT INTO drone_actions (id, drone_id, backend_id, payload, created_at) ",
            " RETURNING id, seq",
            5,
            rows,
            |query, a| query.bind(a.id).bind(a.drone_id).bind(a.backend_id).bind(a.payload).bind(a.created_at),
            Some(&mut returned),
        )
        .await?;
        returned
            .iter()
            .map(|row| {
                Ok((row.try_get::<String, _>(0).map_err(from_sqlx)?, row.try_get::<i64, _>(1).map_err(from_sqlx)?))
            })
            .collect()
    }

    pub(in crate::store::sql) async fn write_tokens(
        connection: &mut DB::Connection,
        rows: Vec<TokenRow>,
    ) -> Result<(), StoreError> {
        Self::insert_many(
            connection,
            "INSERT INTO connection_tokens (token_hash, backend_id, user_name, auth, expires_at, created_at) ",
            "",
            6,
            rows,
            |query, t| {
                query.bind(t.hash).bind(t.backend_id).bind(t.user).bind(t.auth).bind(t.expires_at).bind(t.created_at)
            },
            None,
        )
        .await
    }
}
