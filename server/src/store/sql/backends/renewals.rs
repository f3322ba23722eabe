//! Group commit for key renewals (docs/design/backends-and-leases.md#key-leases-and-fencing).
//!
//! Each drone session renews its keys on a task of its own, one store call per `RenewKeys`
//! message it has waiting. With a hundred drones placing backends, that was some two thousand
//! write transactions a second, each with its commit (on SQLite an fsync and the touched pages
//! written to the log again), more than the placements themselves. Here a renewal call joins a
//! queue; whoever holds the queue's leader lock takes every call waiting and renews them all in
//! one transaction, each call's keys to its own expiry, as they would have been alone. The queue
//! is apart from the write batches' (`super::batch`): renewals never wait behind placements
//! queued before them, only for the connection. A group that fails is retried call by call, so
//! a call that fails fails alone.

use super::super::{Dialect, SqlStore};
use super::group::{GroupQueue, Runs};
use super::{rows_affected, writes};
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

pub(in crate::store::sql) fn renewal_queue() -> RenewalQueue {
    GroupQueue::new("the renewal's group")
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
        if DB::LOCKS_DATABASE {
            // No row locks to order: the whole group's keys in as few statements as it takes
            // (one per chunk of keys, whatever the number of calls), each key joined to its
            // holder and expiry, each statement returning the holders it renewed. A key that
            // several calls renew for the same holder is renewed once, to the latest of their
            // expiries; each of those calls is answered by it.
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
            let mut held = vec![false; entries.len()];
            for chunk in writes::padded_chunks(&entries) {
                let values: Vec<String> =
                    (0..chunk.len()).map(|i| format!("({})", writes::parameters::<DB>(1 + 5 * i, 5))).collect();
                let sql = format!(
                    "UPDATE backend_keys SET lease_expires_at = {}(backend_keys.lease_expires_at, v.column5) \
                     FROM (VALUES {}) AS v \
                     WHERE backend_keys.namespace = v.column1 AND backend_keys.name = v.column2 \
                     AND backend_keys.backend_id = v.column3 AND backend_keys.fencing_token = v.column4 \
                     RETURNING backend_keys.namespace, backend_keys.name, backend_keys.backend_id, \
                     backend_keys.fencing_token",
                    DB::GREATEST,
                    values.join(", ")
                );
                let mut query = sqlx::query(&sql);
                for (holder, expiry) in &chunk {
                    query = query
                        .bind(holder.namespace.to_string())
                        .bind(holder.name.to_string())
                        .bind(holder.backend_id.to_string())
                        .bind(holder.fencing_token)
                        .bind(*expiry);
                }
                for row in query.fetch_all(&mut *tx).await.map_err(from_sqlx)? {
                    let (namespace, name, backend_id): (String, String, String) = (
                        row.try_get(0).map_err(from_sqlx)?,
                        row.try_get(1).map_err(from_sqlx)?,
                        row.try_get(2).map_err(from_sqlx)?,
                    );
                    let fencing_token = row.try_get(3).map_err(from_sqlx)?;
                    let returned =
                        Holder { namespace: &namespace, name: &name, backend_id: &backend_id, fencing_token };
                    if let Some(&entry) = at.get(&returned) {
                        held[entry] = true;
                    }
                }
            }
            for ((keys, _), renewed) in calls.iter().zip(&mut renewed) {
                for (renewal, renewed) in keys.iter().zip(renewed.iter_mut()) {
                    *renewed = at.get(&Holder::of(renewal)).is_some_and(|&entry| held[entry]);
                }
            }
        } else {
            // One statement per key, every key of the group in one order, so that two groups
            // that overlap (a drone's stale session on another controller) take their row locks
            // in the same order and cannot deadlock.
            let mut order: Vec<(usize, usize)> =
                calls.iter().enumerate().flat_map(|(c, (keys, _))| (0..keys.len()).map(move |k| (c, k))).collect();
            order.sort_by(|&(ca, ka), &(cb, kb)| {
                let (a, b) = (&calls[ca].0[ka].key, &calls[cb].0[kb].key);
                (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
            });
            let statement = one_key::<DB>();
            for (call, index) in order {
                let (keys, expires_at) = &calls[call];
                let renewal = &keys[index];
                let result = sqlx::query(&statement)
                    .bind(renewal.key.namespace.clone())
                    .bind(renewal.key.name.clone())
                    .bind(renewal.backend_id.clone())
                    .bind(i64::try_from(renewal.fencing_token).unwrap_or(-1))
                    .bind(rows::millis(*expires_at))
                    .execute(&mut *tx)
                    .await
                    .map_err(from_sqlx)?;
                renewed[call][index] = rows_affected::<DB>(&result) > 0;
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
