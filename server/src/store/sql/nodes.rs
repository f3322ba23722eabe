//! [`Store`] over SQL: nodes and their history (attach, update, remove, snapshot listings, the
//! change log and its compaction), plus the revision counter and shared secrets the trait also
//! serves. Every write goes through the plumbing in [`super`], which serializes writers and
//! publishes each commit.

use super::{Dialect, SqlStore};
use crate::store::rows::{self, Param, db_revision, from_sqlx};
use crate::store::{
    Change, ChangeKind, DroneCensus, LocalCommit, NodeChange, NodePage, NodeRegistration, NodeUpdate, Retention,
    Revision, Store, StoreError, UpdateCondition,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hangar::domain::{Node, NodeFilter, NodeKind, NodeState};
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Transaction, Type};

/// How many history rows one pass of a label-filtered listing reads; labels are matched in Rust.
const LABEL_SCAN_BATCH: usize = 500;

/// Revisions one compaction transaction covers at most: a bound on how long it holds the write
/// lock (each revision is at most one history row to delete).
const COMPACTION_STEP: u64 = 2_000;

const NODE_BY_ID: &str = "SELECT h.revision, h.data FROM nodes n JOIN node_history h ON h.revision = n.revision \
                          WHERE n.id = $1 AND n.removed = 0";

const NODE_BY_NAME: &str = "SELECT h.revision, h.data FROM nodes n JOIN node_history h ON h.revision = n.revision \
                            WHERE n.kind = $1 AND n.cluster = $2 AND n.name = $3 AND n.removed = 0";

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
    async fn node_where(
        tx: &mut Transaction<'static, DB>,
        sql: &'static str,
        params: Vec<String>,
    ) -> Result<Option<Node>, StoreError> {
        let mut query = sqlx::query(sql);
        for p in params {
            query = query.bind(p);
        }
        let row = query.fetch_optional(&mut **tx).await.map_err(from_sqlx)?;
        row.map(|r| decode(&r)).transpose()
    }

    /// The node's latest version, read inside `tx` (under the write lock in a write).
    pub(super) async fn node_in(tx: &mut Transaction<'static, DB>, id: &str) -> Result<Option<Node>, StoreError> {
        Self::node_where(tx, NODE_BY_ID, vec![id.to_string()]).await
    }

    /// Records `node` (already carrying `revision`) as one change and commits.
    async fn commit_change(
        &self,
        mut tx: Transaction<'static, DB>,
        change: ChangeKind,
        node: &Node,
    ) -> Result<(), StoreError> {
        Self::record_change(&mut tx, change, node).await?;
        let published = NodeChange { revision: node.revision, kind: change, node: node.clone() };
        self.commit_published(tx, node.revision, Some(Change::Node(published)), &[]).await
    }

    /// Writes `node` (already carrying its revision) as one change inside `tx`: its current row
    /// and its history row.
    async fn record_change(
        tx: &mut Transaction<'static, DB>,
        change: ChangeKind,
        node: &Node,
    ) -> Result<(), StoreError> {
        let revision = db_revision(node.revision);
        let current = match change {
            ChangeKind::Added => sqlx::query(
                "INSERT INTO nodes (id, kind, cluster, name, revision, removed) VALUES ($1, $2, $3, $4, $5, 0)",
            )
            .bind(node.id.clone())
            .bind(node.kind.as_str().to_string())
            .bind(node.cluster.clone())
            .bind(node.name.clone())
            .bind(revision),
            ChangeKind::Modified => {
                sqlx::query("UPDATE nodes SET revision = $2 WHERE id = $1").bind(node.id.clone()).bind(revision)
            }
            // The row stays as a tombstone so snapshots before the removal still find the node.
            ChangeKind::Removed => sqlx::query("UPDATE nodes SET revision = $2, removed = $2 WHERE id = $1")
                .bind(node.id.clone())
                .bind(revision),
        };
        current.execute(&mut **tx).await.map_err(from_sqlx)?;
        sqlx::query(
            "INSERT INTO node_history (revision, node_id, change, kind, state, cluster, pool, data, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(revision)
        .bind(node.id.clone())
        .bind(rows::change_as_str(change).to_string())
        .bind(node.kind.as_str().to_string())
        .bind(node.state.as_str().to_string())
        .bind(node.cluster.clone())
        .bind(node.pool.clone())
        .bind(rows::encode_node(node)?)
        .bind(rows::millis(Utc::now()))
        .execute(&mut **tx)
        .await
        .map_err(from_sqlx)?;
        Ok(())
    }

    /// The shared path of update and remove: `Ok(None)` when the node is absent or not held;
    /// `change` computes the next version, `None` meaning "nothing to write".
    async fn change_node(
        &self,
        id: &str,
        condition: UpdateCondition,
        kind: ChangeKind,
        change: impl Fn(&Node) -> Option<Node> + Send + Sync,
    ) -> Result<Option<Node>, StoreError> {
        // No read before the write transaction to answer no-ops without the write lock: callers
        // write only what changed (the registry compares with what it last wrote), so such a
        // read would cost every real write a round trip (three with sqlx's release ping) for
        // the rare no-op, and with a busy runtime each round trip waits its turn behind the
        // other ready tasks. A no-op or a failed condition rolls back, taking no revision.
        let (mut tx, revision) = self.begin_write().await?;
        let Some(node) = Self::node_where(&mut tx, NODE_BY_ID, vec![id.to_string()]).await? else {
            return Ok(None);
        };
        if !rows::holds(&node, &condition) {
            return Ok(None);
        }
        let Some(mut next) = change(&node) else {
            return Ok(Some(node));
        };
        next.revision = revision;
        self.commit_change(tx, kind, &next).await?;
        Ok(Some(next))
    }
}

/// A `(revision, data)` row as a node.
fn decode<R>(row: &R) -> Result<Node, StoreError>
where
    R: Row,
    for<'q> i64: Decode<'q, R::Database> + Type<R::Database>,
    for<'q> String: Decode<'q, R::Database> + Type<R::Database>,
    usize: ColumnIndex<R>,
{
    let revision: i64 = row.try_get(0).map_err(from_sqlx)?;
    let data: String = row.try_get(1).map_err(from_sqlx)?;
    rows::decode_node(&data, revision)
}

#[async_trait]
impl<DB> Store for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Revision> {
        self.committed.subscribe()
    }

    fn local_commits(&self) -> tokio::sync::broadcast::Receiver<LocalCommit> {
        self.local.subscribe()
    }

    fn action_wakeups(&self) -> tokio::sync::broadcast::Receiver<crate::store::ActionWakeup> {
        self.wakeups.subscribe()
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.counter_now().await?.0)
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.counter_now().await?.1)
    }

    async fn attach_node(
        &self,
        registration: NodeRegistration,
        controller_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Node, StoreError> {
        let (mut tx, revision) = self.begin_write().await?;
        // Looked up under the write lock: two controllers attaching the same name serialize here,
        // and the second one finds the first one's node.
        let identity =
            vec![registration.kind.as_str().to_string(), registration.cluster.clone(), registration.name.clone()];
        let existing = Self::node_where(&mut tx, NODE_BY_NAME, identity).await?;
        let mut node = rows::attached(existing.as_ref(), registration, controller_id, now);
        if existing.as_ref() == Some(&node) {
            return Ok(node);
        }
        node.revision = revision;
        let change = if existing.is_some() { ChangeKind::Modified } else { ChangeKind::Added };
        self.commit_change(tx, change, &node).await?;
        Ok(node)
    }

    async fn update_node(
        &self,
        id: &str,
        update: NodeUpdate,
        condition: UpdateCondition,
    ) -> Result<Option<Node>, StoreError> {
        let change = |node: &Node| {
            let mut next = node.clone();
            update.apply_to(&mut next).then_some(next)
        };
        self.change_node(id, condition, ChangeKind::Modified, change).await
    }

    async fn update_nodes(
        &self,
        updates: Vec<(String, NodeUpdate)>,
        condition: UpdateCondition,
    ) -> Result<Vec<Option<Node>>, StoreError> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        debug_assert!(
            updates.iter().map(|(id, _)| id).collect::<std::collections::HashSet<_>>().len() == updates.len(),
            "each node at most once per batch"
        );
        // As in `change_node`: read and compare under the write lock; one revision per node that
        // changes, consecutive from the one `begin_write` took; nothing changed rolls back.
        enum Outcome {
            Absent,
            Unchanged(Box<Node>),
            Changed(usize),
        }
        let (mut tx, first) = self.begin_write().await?;
        let mut outcomes = Vec::with_capacity(updates.len());
        let mut changed: Vec<Node> = Vec::new();
        for (id, update) in &updates {
            let Some(node) = Self::node_in(&mut tx, id).await?.filter(|node| rows::holds(node, &condition)) else {
                outcomes.push(Outcome::Absent);
                continue;
            };
            let mut next = node.clone();
            if !update.apply_to(&mut next) {
                outcomes.push(Outcome::Unchanged(Box::new(node)));
                continue;
            }
            next.revision = first + changed.len() as Revision;
            outcomes.push(Outcome::Changed(changed.len()));
            changed.push(next);
        }
        if !changed.is_empty() {
            let last = match changed.len() as Revision - 1 {
                0 => first,
                extra => Self::take_more_revisions(&mut tx, extra).await?,
            };
            for node in &changed {
                Self::record_change(&mut tx, ChangeKind::Modified, node).await?;
            }
            let changes = changed
                .iter()
                .map(|node| {
                    Change::Node(NodeChange { revision: node.revision, kind: ChangeKind::Modified, node: node.clone() })
                })
                .collect();
            self.commit_published_all(tx, last, changes).await?;
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Outcome::Absent => None,
                Outcome::Unchanged(node) => Some(*node),
                Outcome::Changed(i) => Some(changed[i].clone()),
            })
            .collect())
    }

    async fn remove_node(&self, id: &str, condition: UpdateCondition) -> Result<Option<Node>, StoreError> {
        self.change_node(id, condition, ChangeKind::Removed, |node| Some(node.clone())).await
    }

    async fn get_node(&self, id: &str) -> Result<Option<Node>, StoreError> {
        let row = sqlx::query(NODE_BY_ID).bind(id.to_string()).fetch_optional(&self.read).await.map_err(from_sqlx)?;
        row.map(|r| decode(&r)).transpose()
    }

    async fn list_nodes(
        &self,
        filter: &NodeFilter,
        at: Option<Revision>,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<NodePage, StoreError> {
        let (mut tx, current, compacted) = self.begin_snapshot().await?;
        let revision = at.unwrap_or(current);
        if revision < compacted {
            return Err(StoreError::Compacted { requested: revision, oldest: compacted });
        }
        if revision > current {
            return Err(StoreError::FutureRevision { requested: revision, current });
        }
        // One row past the limit tells whether there is more. With labels to match in Rust, read
        // in batches until the page is full or the nodes run out.
        let batch = if filter.labels.is_empty() { limit + 1 } else { (limit + 1).max(LABEL_SCAN_BATCH) };
        let mut cursor = after_id.unwrap_or_default().to_string();
        let mut nodes = Vec::with_capacity(limit.min(1024));
        loop {
            let (sql, params) = rows::snapshot_page_query(
                DB::LATEST_VERSION,
                filter,
                db_revision(revision),
                cursor.clone(),
                batch as i64,
            );
            let mut query = sqlx::query(&sql);
            for p in params {
                query = match p {
                    Param::Int(v) => query.bind(v),
                    Param::Text(v) => query.bind(v),
                };
            }
            let rows = query.fetch_all(&mut *tx).await.map_err(from_sqlx)?;
            let exhausted = rows.len() < batch;
            for row in &rows {
                let node = decode(row)?;
                cursor.clone_from(&node.id);
                if !filter.matches(&node) {
                    continue;
                }
                if nodes.len() == limit {
                    return Ok(NodePage { nodes, revision, more: true });
                }
                nodes.push(node);
            }
            if exhausted {
                return Ok(NodePage { nodes, revision, more: false });
            }
        }
    }

    async fn drone_census(&self, cluster: &str, pool: &str) -> Result<DroneCensus, StoreError> {
        // `nodes_identity` (kind, cluster, name of live nodes) narrows it to the cluster's drones;
        // each is joined to its current version for state and pool.
        let rows = sqlx::query(
            "SELECT h.state, COUNT(*) FROM nodes n JOIN node_history h ON h.revision = n.revision \
             WHERE n.removed = 0 AND n.kind = $1 AND n.cluster = $2 AND h.pool = $3 GROUP BY h.state",
        )
        .bind(NodeKind::Drone.as_str().to_string())
        .bind(cluster.to_string())
        .bind(pool.to_string())
        .fetch_all(&self.read)
        .await
        .map_err(from_sqlx)?;
        let mut census = DroneCensus::default();
        for row in &rows {
            let state: String = row.try_get(0).map_err(from_sqlx)?;
            let count: i64 = row.try_get(1).map_err(from_sqlx)?;
            let state: NodeState =
                state.parse().map_err(|e| StoreError::Corrupt(format!("node history state {state:?}: {e}")))?;
            census.add(state, u32::try_from(count).unwrap_or(u32::MAX));
        }
        Ok(census)
    }

    async fn node_changes_since(&self, after: Revision, limit: usize) -> Result<Vec<NodeChange>, StoreError> {
        let (mut tx, _, compacted) = self.begin_snapshot().await?;
        if after < compacted {
            return Err(StoreError::Compacted { requested: after, oldest: compacted });
        }
        let rows = sqlx::query(
            "SELECT revision, data, change FROM node_history WHERE revision > $1 ORDER BY revision LIMIT $2",
        )
        .bind(db_revision(after))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        rows.iter()
            .map(|row| {
                let change: String = row.try_get(2).map_err(from_sqlx)?;
                let node = decode(row)?;
                Ok(NodeChange { revision: node.revision, kind: rows::change_from_str(&change)?, node })
            })
            .collect()
    }

    async fn changes_since(&self, after: Revision, limit: usize) -> Result<Vec<Change>, StoreError> {
        let (mut tx, _, compacted) = self.begin_snapshot().await?;
        if after < compacted {
            return Err(StoreError::Compacted { requested: after, oldest: compacted });
        }
        let rows = sqlx::query(
            "SELECT revision, data, change FROM node_history WHERE revision > $1 ORDER BY revision LIMIT $2",
        )
        .bind(db_revision(after))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        let mut changes = rows
            .iter()
            .map(|row| {
                let change: String = row.try_get(2).map_err(from_sqlx)?;
                let node = decode(row)?;
                Ok(Change::Node(NodeChange { revision: node.revision, kind: rows::change_from_str(&change)?, node }))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        changes.extend(Self::backend_log_in(&mut tx, after, limit).await?.into_iter().map(Change::Backend));
        // Each half is complete up to its last row, or to the snapshot when it has fewer than
        // `limit`; the first `limit` of both together are therefore a complete prefix of the log
        // (a half that was cut has all its rows among them, or the other half filled them).
        changes.sort_by_key(Change::revision);
        changes.truncate(limit);
        Ok(changes)
    }

    async fn compact(&self, retention: Retention, now: DateTime<Utc>) -> Result<Revision, StoreError> {
        // In steps of at most COMPACTION_STEP revisions, each its own transaction: compaction
        // takes the write lock like any writer, and a step bounds how long it holds it (readers
        // are never blocked: they read from snapshots). Each step leaves the store compacted
        // exactly to its end, so stopping between two steps is as good as a smaller target.
        loop {
            let mut tx = self.write.begin_with(DB::BEGIN_WRITE).await.map_err(from_sqlx)?;
            let row = sqlx::query(
                "UPDATE revision_counter SET compacted = compacted WHERE id = 1 RETURNING current, compacted",
            )
            .fetch_one(&mut *tx)
            .await
            .map_err(from_sqlx)?;
            let current = rows::revision_from_db(row.try_get(0).map_err(from_sqlx)?)?;
            let compacted = rows::revision_from_db(row.try_get(1).map_err(from_sqlx)?)?;
            let by_count = current.saturating_sub(retention.min_revisions);
            // The newest change recorded before the cutoff, in either half of the log: revisions
            // are handed out in commit order, so everything up to it is at least that old.
            let cutoff = rows::millis(now - retention.max_age);
            let row = sqlx::query(
                "SELECT COALESCE(MAX(revision), 0) FROM (\
                   SELECT MAX(revision) AS revision FROM node_history WHERE recorded_at < $1 \
                   UNION ALL SELECT MAX(revision) AS revision FROM backend_history WHERE recorded_at < $1) oldest",
            )
            .bind(cutoff)
            .fetch_one(&mut *tx)
            .await
            .map_err(from_sqlx)?;
            let by_age = rows::revision_from_db(row.try_get(0).map_err(from_sqlx)?)?;
            let target = by_count.min(by_age);
            if target <= compacted {
                return Ok(compacted);
            }
            let step = target.min(compacted + COMPACTION_STEP);
            let step_db = db_revision(step);
            // Keep each node's newest version at or below the step (reads at the step need it)
            // unless that version is its removal (nobody can read a removed node there).
            sqlx::query(
                "DELETE FROM node_history WHERE revision <= $1 AND (change = 'REMOVED' OR revision < \
                   (SELECT MAX(v.revision) FROM node_history v WHERE v.node_id = node_history.node_id AND v.revision <= $1))",
            )
            .bind(step_db)
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
            sqlx::query("DELETE FROM nodes WHERE removed <> 0 AND removed <= $1")
                .bind(step_db)
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
            // The backend half the same way: each backend's newest row at or below the step
            // stays (WatchBackend replays a backend's history and must find its present), unless
            // it is the backend's removal by retention.
            sqlx::query(
                "DELETE FROM backend_history WHERE revision <= $1 AND (change = 'REMOVED' OR revision < \
                   (SELECT MAX(v.revision) FROM backend_history v \
                    WHERE v.backend_id = backend_history.backend_id AND v.revision <= $1))",
            )
            .bind(step_db)
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
            sqlx::query("UPDATE revision_counter SET compacted = $1 WHERE id = 1")
                .bind(step_db)
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
            tx.commit().await.map_err(from_sqlx)?;
            if step == target {
                return Ok(target);
            }
        }
    }

    async fn shared_secret(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::STANDARD;
        // Every controller may race to create it; the first insert wins and everyone reads that.
        sqlx::query("INSERT INTO shared_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name.to_string())
            .bind(engine.encode(rows::new_secret()))
            .execute(&self.write)
            .await
            .map_err(from_sqlx)?;
        let row = sqlx::query("SELECT value FROM shared_secrets WHERE name = $1")
            .bind(name.to_string())
            .fetch_one(&self.read)
            .await
            .map_err(from_sqlx)?;
        let value: String = row.try_get(0).map_err(from_sqlx)?;
        engine.decode(value).map_err(|e| StoreError::Corrupt(format!("shared secret {name:?}: {e}")))
    }
}
