//! Group commit for key renewals (docs/design/backends-and-leases.md#key-leases-and-fencing).
//!
//! Each drone session renews its keys on a task of its own, one store call per `RenewKeys`
//! message it has waiting. With a hundred drones placing backends, that was some two thousand
//! write transactions a second, each with its commit (on SQLite an fsync and the touched pages
//! written to the log again), more than the placements themselves. Here a renewal call joins a
//! queue; whoever holds the queue's leader lock takes every call waiting (up to
//! [`RENEWAL_GROUP_KEYS`] keys) and renews them all in one transaction, each call's keys to its
//! own expiry, as they would have been alone. The queue is apart from the write batches'
//! (`super::batch`): renewals never wait behind placements queued before them, only for the
//! connection. A group that fails is retried call by call, so a call that fails fails alone.

use super::super::{Dialect, SqlStore};
use super::group::{GroupQueue, Runs};
use super::writes;
use crate::store::StoreError;
use crate::store::backends::KeyRenewal;
use crate::store::rows::{self, from_sqlx};
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Type};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;

/// One renewal call: its keys and the expiry they are renewed to.
type Call = (Vec<KeyRenewal>, DateTime<Utc>);

/// A key and the holder a renewal names for it: the key's row is renewed only if it is still
/// that holder's.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Holder<'a> {
    namespace: &'a str,
    name: &'a str,
    backend_id: &'a str,
    fencing_token: i64,
}

impl<'a> Holder<'a> {
    fn of(renewal: &'a KeyRenewal) -> Self {
        Holder {
            namespace: &renewal.key.namespace,
            name: &renewal.key.name,
            backend_id: &renewal.backend_id,
            // No holder has a negative token: a token beyond i64 renews nothing.
            fencing_token: i64::try_from(renewal.fencing_token).unwrap_or(-1),
        }
    }
}

/// Renews one key (`$1`, `$2`) to `$5` while its holder is still `$3` with token `$4`. A renewal
/// never moves a lease back: two renewals of one holder may commit in either order (each store
/// call runs on a task of its own), and the one that arrives last must not undo the later
/// expiry the drone was already told of (docs/design/backends-and-leases.md#key-leases-and-fencing).
pub(in crate::store::sql) fn one_key<DB: Dialect>() -> String {
    format!(
        "UPDATE backend_keys SET lease_expires_at = {}(lease_expires_at, $5) WHERE namespace = $1 AND name = $2 \
         AND backend_id = $3 AND fencing_token = $4",
        DB::GREATEST
    )
}

/// The renewal calls waiting for the next group, and the lock its leader holds.
pub(in crate::store::sql) type RenewalQueue = GroupQueue<Call, Vec<bool>>;

/// The least time between the starts of two renewal groups. A renewal is answered up to this
/// much later, against the 15 s (half the default lease) a drone has before it stops a backend it
/// could not renew; under load, the groups are fewer and larger. Taken as they came, a hundred
/// drones placing backends made some 110 groups a second of ~100 keys each, each a transaction
/// with its own commit: 13.5 µs of the write connection a key. Spaced by 50 ms, 20 groups a second of ~850 keys: 8.9 µs a key
/// (BENCHMARKS.md, "Session of 2026-12-07 (10)").
pub(in crate::store::sql) const RENEWAL_GROUP_SPACING: std::time::Duration = std::time::Duration::from_millis(50);

/// The most keys a renewal group takes (whole calls: a call larger than this runs alone). On
/// SQLite a group holds the store's one write connection, ~9–13 µs a key here, and every other
/// write waits behind it (on PostgreSQL, only those that need its keys' rows). Uncapped, the
/// backlog of renewals a `placements` run has when its callers stop made one group of 266,669
/// keys that held the connection for 2.5 s: Connects waited up to 2 s, and a renewal that waits
/// longer than `store_wait` (2 s) is answered deferred, as in a store outage. 50,000 keys hold
/// it ~0.5–0.65 s. The cap binds only on such a backlog: a group under load is a few thousand
/// keys, and smaller caps cost placements their rate and their Connect p99 (a backlog then runs
/// as many groups, each with Connects waiting behind it):
/// BENCHMARKS.md, "Session of 2026-12-07 (13)".
pub(in crate::store::sql) const RENEWAL_GROUP_KEYS: usize = 50_000;

pub(in crate::store::sql) fn renewal_queue() -> RenewalQueue {
    GroupQueue::spaced("the renewal's group", RENEWAL_GROUP_SPACING).capped(RENEWAL_GROUP_KEYS, |(keys, _)| keys.len())
}

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    /// Renews `renewals` to `expires_at` in the next group and answers, per key, whether its
    /// holder still held it, once that group committed.
    pub(in crate::store::sql) async fn renew_grouped(
        &self,
        renewals: Vec<KeyRenewal>,
        expires_at: DateTime<Utc>,
    ) -> Result<Vec<bool>, StoreError> {
        self.renewals.submit(self, (renewals, expires_at)).await
    }

    /// Every call's keys renewed, each to its call's expiry, in one transaction: per call, per
    /// key, whether it was.
    async fn renew_in_one(&self, calls: &[Call]) -> Result<Vec<Vec<bool>>, StoreError> {
        let started = std::time::Instant::now();
        let mut renewed: Vec<Vec<bool>> = calls.iter().map(|(keys, _)| vec![false; keys.len()]).collect();
        let mut tx = self.write_pool().begin_with(DB::BEGIN_WRITE).await.map_err(from_sqlx)?;
        let locked = started.elapsed();
        // The whole group's keys in as few statements as it takes (one per chunk of keys,
        // whatever the number of calls), each key joined to its holder and expiry, each
        // statement returning the holders it renewed. A key that several calls renew for the
        // same holder is renewed once, to the latest of their expiries; each of those calls is
        // answered by it.
        let (mut entries, mut at): (Vec<(Holder<'_>, i64)>, HashMap<Holder<'_>, usize>) = Default::default();
        for (keys, expires_at) in calls {
            for renewal in keys {
                let (holder, expiry) = (Holder::of(renewal), rows::millis(*expires_at));
                match at.entry(holder) {
                    Entry::Occupied(known) => entries[*known.get()].1 = entries[*known.get()].1.max(expiry),
                    Entry::Vacant(new) => {
                        new.insert(entries.len());
                        entries.push((holder, expiry));
                    }
                }
            }
        }
        // Where the database locks rows (PostgreSQL): every key of the group in one order, so
        // that two groups that overlap (a drone's stale session on another controller) take
        // their row locks in it and cannot deadlock. The entries go in key order, and each chunk
        // locks its rows in that order (`ORDER BY … FOR UPDATE`) before its update, whose join
        // would lock them in whatever order its plan reads them. Each chunk's keys are found
        // by the key index: with a few hundred keys joined to a table of hundreds of thousands,
        // the planner may otherwise pick a hash join over the whole table. One statement per
        // key, as before, was a round trip each: on PostgreSQL at ~2,500 placements a second,
        // ~8,000 keys a second a controller, about what its renewals needed, and keys ran out on
        // their drones (BENCHMARKS.md, "Session of 2026-12-07 (13)").
        let mut order: Vec<usize> = (0..entries.len()).collect();
        if !DB::LOCKS_DATABASE {
            order.sort_by(|&a, &b| {
                let (a, b) = (&entries[a].0, &entries[b].0);
                (a.namespace, a.name).cmp(&(b.namespace, b.name))
            });
            sqlx::query("SET LOCAL enable_hashjoin = off").execute(&mut *tx).await.map_err(from_sqlx)?;
            sqlx::query("SET LOCAL enable_mergejoin = off").execute(&mut *tx).await.map_err(from_sqlx)?;
        }
        // Each statement returns only the holders it renewed, which name their entries: a
        // backend holds one key, so within a statement whose entries have distinct holders a
        // returned holder is one entry. Returning the whole key (three strings and a number a
        // row) cost ~3 % of a key's renewal. An entry whose holder an earlier entry of the group
        // names with another key or token (a confused or hostile drone) goes to a later round of
        // statements of its own.
        let mut rounds: Vec<Vec<usize>> = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
        for &entry in &order {
            let round = seen.entry(entries[entry].0.backend_id).or_default();
            if rounds.len() <= *round {
                rounds.push(Vec::new());
            }
            rounds[*round].push(entry);
            *round += 1;
        }
        let mut held = vec![false; entries.len()];
        for round in rounds {
            let by_holder: HashMap<&str, usize> =
                round.iter().map(|&entry| (entries[entry].0.backend_id, entry)).collect();
            for chunk in writes::padded_chunks(&round) {
                if !DB::LOCKS_DATABASE {
                    let keys: Vec<String> =
                        (0..chunk.len()).map(|i| format!("({})", writes::parameters::<DB>(1 + 2 * i, 2))).collect();
                    let sql = format!(
                        "SELECT 1 FROM backend_keys WHERE (namespace, name) IN (VALUES {}) \
                         ORDER BY namespace, name FOR UPDATE",
                        keys.join(", ")
                    );
                    let mut lock = sqlx::query(&sql);
                    for &entry in &chunk {
                        let holder = &entries[entry].0;
                        lock = lock.bind(holder.namespace.to_string()).bind(holder.name.to_string());
                    }
                    lock.fetch_all(&mut *tx).await.map_err(from_sqlx)?;
                }
                let values: Vec<String> =
                    (0..chunk.len()).map(|i| format!("({})", writes::parameters::<DB>(1 + 5 * i, 5))).collect();
                let sql = format!(
                    "UPDATE backend_keys SET lease_expires_at = {}(backend_keys.lease_expires_at, v.column5) \
                     FROM (VALUES {}) AS v \
                     WHERE backend_keys.namespace = v.column1 AND backend_keys.name = v.column2 \
                     AND backend_keys.backend_id = v.column3 AND backend_keys.fencing_token = v.column4 \
                     RETURNING backend_keys.backend_id",
                    DB::GREATEST,
                    values.join(", ")
                );
                let mut query = sqlx::query(&sql);
                for &entry in &chunk {
                    let (holder, expiry) = &entries[entry];
                    query = query
                        .bind(holder.namespace.to_string())
                        .bind(holder.name.to_string())
                        .bind(holder.backend_id.to_string())
                        .bind(holder.fencing_token)
                        .bind(*expiry);
                }
                for row in query.fetch_all(&mut *tx).await.map_err(from_sqlx)? {
                    let backend_id: String = row.try_get(0).map_err(from_sqlx)?;
                    if let Some(&entry) = by_holder.get(backend_id.as_str()) {
                        held[entry] = true;
                    }
                }
            }
        }
        for ((keys, _), renewed) in calls.iter().zip(&mut renewed) {
            for (renewal, renewed) in keys.iter().zip(renewed.iter_mut()) {
                *renewed = at.get(&Holder::of(renewal)).is_some_and(|&entry| held[entry]);
            }
        }
        tx.commit().await.map_err(from_sqlx)?;
        let keys: usize = renewed.iter().map(Vec::len).sum();
        tracing::debug!(calls = calls.len(), keys, ?locked, elapsed = ?started.elapsed(), "key renewal group");
        Ok(renewed)
    }
}

impl<DB> Runs<Call, Vec<bool>> for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    fn run<'a>(&'a self, calls: &'a [Call]) -> impl Future<Output = Result<Vec<Vec<bool>>, StoreError>> + Send + 'a {
        self.renew_in_one(calls)
    }
}
