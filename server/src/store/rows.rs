//! What the SQL stores share apart from talking to the database: how nodes and changes are
//! encoded in rows, how attaching and updating transform a node, the snapshot-listing query, and
//! how driver errors map onto `StoreError`.

use super::{ChangeKind, NodeRegistration, Revision, StoreError, UpdateCondition};
use chrono::{DateTime, Utc};
use hangar::domain::{Node, NodeFilter, NodeState};
use rand::RngCore;

pub(super) fn change_as_str(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Added => "ADDED",
        ChangeKind::Modified => "MODIFIED",
        ChangeKind::Removed => "REMOVED",
    }
}

pub(super) fn change_from_str(text: &str) -> Result<ChangeKind, StoreError> {
    match text {
        "ADDED" => Ok(ChangeKind::Added),
        "MODIFIED" => Ok(ChangeKind::Modified),
        "REMOVED" => Ok(ChangeKind::Removed),
        other => Err(StoreError::Corrupt(format!("unknown change kind {other:?} in node history"))),
    }
}

/// Revisions are `u64` in the API and `BIGINT` in the databases; nothing above `i64::MAX` is ever
/// written, so clamping only affects comparisons against impossible revisions.
pub(super) fn db_revision(revision: Revision) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

pub(super) fn revision_from_db(value: i64) -> Result<Revision, StoreError> {
    Revision::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative revision {value}")))
}

pub(super) fn encode_node(node: &Node) -> Result<String, StoreError> {
    serde_json::to_string(node).map_err(|e| StoreError::Corrupt(format!("cannot encode node {}: {e}", node.id)))
}

/// The row's revision column is authoritative over the copy inside the JSON document.
pub(super) fn decode_node(data: &str, revision: i64) -> Result<Node, StoreError> {
    let mut node: Node = serde_json::from_str(data)
        .map_err(|e| StoreError::Corrupt(format!("cannot decode node at revision {revision}: {e}")))?;
    node.revision = revision_from_db(revision)?;
    Ok(node)
}

pub(super) fn new_node_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub(super) fn new_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    secret
}

pub(super) fn millis(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

pub(super) fn from_millis(millis: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(millis)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {millis} out of range")))
}

/// The node as `registration` attaches it, before it gets its revision. A re-attach keeps the
/// node's identity, registration time, backend count and drain: a drone that reconnects while
/// draining must not become schedulable again.
pub(super) fn attached(
    existing: Option<&Node>,
    registration: NodeRegistration,
    controller_id: &str,
    now: DateTime<Utc>,
) -> Node {
    let NodeRegistration { kind, name, cluster, pool, labels, version, backend_capacity, resources } = registration;
    let draining = existing.is_some_and(|n| n.draining);
    Node {
        id: existing.map_or_else(new_node_id, |n| n.id.clone()),
        name,
        kind,
        cluster,
        pool,
        labels,
        state: NodeState::healthy(draining),
        version,
        controller_id: controller_id.to_string(),
        registered_at: existing.map_or(now, |n| n.registered_at),
        last_heartbeat_at: now,
        resources,
        backend_count: existing.map_or(0, |n| n.backend_count),
        backend_capacity,
        drain_deadline: existing.and_then(|n| n.drain_deadline),
        draining,
        revision: existing.map_or(0, |n| n.revision),
    }
}

pub(super) fn holds(node: &Node, condition: &UpdateCondition) -> bool {
    match condition {
        UpdateCondition::Always => true,
        UpdateCondition::HeldBy(controller) => node.controller_id == *controller,
        UpdateCondition::Unchanged { controller, revision } => {
            node.controller_id == *controller && node.revision == *revision
        }
    }
}

/// A bound parameter of a dynamically built query.
pub(super) enum Param {
    Int(i64),
    Text(String),
}

/// The page query at a snapshot revision: for each node id after the cursor, its newest history
/// row at or below the snapshot, unless that row is a removal. Driving the scan from `nodes` (one
/// row per node, removed ones included until compacted) in id order keeps a page one index probe
/// per node however long the history is; `latest_version` is the dialect's way of saying "join
/// each `n` to its newest version `h`". Labels are matched in Rust by the caller.
///
/// Parameters: `$1` snapshot revision, `$2` cursor id, `$3` row limit, then the filter's.
pub(super) fn snapshot_page_query(
    latest_version: &str,
    filter: &NodeFilter,
    at: i64,
    after_id: String,
    limit: i64,
) -> (String, Vec<Param>) {
    let mut sql =
        format!("SELECT h.revision, h.data FROM nodes n {latest_version} WHERE n.id > $2 AND h.change <> 'REMOVED'");
    let mut params = vec![Param::Int(at), Param::Text(after_id), Param::Int(limit)];
    let mut any_of = |column: &str, values: Vec<String>, sql: &mut String| {
        let mut slots = Vec::with_capacity(values.len());
        for value in values {
            params.push(Param::Text(value));
            slots.push(format!("${}", params.len()));
        }
        sql.push_str(&format!(" AND h.{column} IN ({})", slots.join(", ")));
    };
    if !filter.kinds.is_empty() {
        any_of("kind", filter.kinds.iter().map(|k| k.as_str().to_string()).collect(), &mut sql);
    }
    if !filter.states.is_empty() {
        any_of("state", filter.states.iter().map(|s| s.as_str().to_string()).collect(), &mut sql);
    }
    if let Some(cluster) = &filter.cluster {
        any_of("cluster", vec![cluster.clone()], &mut sql);
    }
    if let Some(pool) = &filter.pool {
        any_of("pool", vec![pool.clone()], &mut sql);
    }
    sql.push_str(" ORDER BY n.id LIMIT $3");
    (sql, params)
}

/// Connection, I/O and server-side failures may pass; decoding failures will not.
pub(super) fn from_sqlx(error: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match error {
        E::Decode(_) | E::ColumnDecode { .. } | E::ColumnNotFound(_) | E::ColumnIndexOutOfBounds { .. } => {
            StoreError::Corrupt(error.to_string())
        }
        E::TypeNotFound { .. } | E::RowNotFound | E::Encode(_) | E::InvalidArgument(_) => {
            StoreError::Corrupt(error.to_string())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

pub(super) fn from_migrate(error: sqlx::migrate::MigrateError) -> StoreError {
    match error {
        sqlx::migrate::MigrateError::Execute(e) => match from_sqlx(e) {
            StoreError::Unavailable(m) => StoreError::Unavailable(format!("migration: {m}")),
            other => other,
        },
        other => StoreError::Corrupt(format!("migration: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar::domain::NodeKind;

    #[test]
    fn filter_values_become_numbered_parameters_after_the_fixed_ones() {
        let filter = NodeFilter {
            kinds: vec![NodeKind::Drone, NodeKind::Proxy],
            cluster: Some("eu".into()),
            ..Default::default()
        };
        let (sql, params) = snapshot_page_query("", &filter, 7, String::new(), 10);
        assert!(sql.contains("h.kind IN ($4, $5)"), "{sql}");
        assert!(sql.contains("h.cluster IN ($6)"), "{sql}");
        assert_eq!(params.len(), 6);
    }
}
