//! Every store operation runs on the store's own runtime.
//!
//! A store operation is a chain of round trips to the database (SQLite: to sqlx's worker
//! thread; PostgreSQL: to the server), and after each one the task that waits for it must be
//! scheduled again. On the controller's runtime that task queues behind whatever else is ready,
//! which with a thousand watch streams is a thousand tasks, so writes slowed to the pace of the
//! fan-out. Here the operation runs start to finish on a small runtime that does nothing else,
//! and the caller waits for it once. The before and after are in BENCHMARKS.md ("Store
//! threads").
//!
//! An operation that has started runs to completion even if its caller stops waiting (a
//! cancelled call, a timeout): a write is then committed or not, never half done and rolled
//! back behind the caller's back.

use super::*;
use crate::metrics::StoreSeries;
use futures::future::BoxFuture;
use hangar::domain::{Backend, BackendKey, BackendState, BackendStatus, TerminationKind, TerminationReason};
use tokio::runtime::{Handle, Runtime};
use tracing::Instrument;

/// A store whose operations run on its own runtime (`hangar-store` threads).
pub struct OffloadedStore {
    inner: DynStore,
    handle: Handle,
    /// Owned so that the threads stop with the store; `None` once shut down.
    runtime: Option<Runtime>,
}

impl OffloadedStore {
    /// Wraps `inner`; its operations run on a new runtime with `threads` worker threads.
    pub fn new(inner: DynStore, threads: usize) -> std::io::Result<OffloadedStore> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("hangar-store")
            .enable_all()
            .build()?;
        Ok(OffloadedStore { inner, handle: runtime.handle().clone(), runtime: Some(runtime) })
    }

    /// Runs `op` on the store's runtime and records its time and failure on `series` (the
    /// operation's, [`crate::store_series!`]): the one funnel every store call passes through.
    /// With traces on, the operation is one span, a child of the call's span.
    async fn run<T: Send + 'static, F>(&self, series: Option<&'static StoreSeries>, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(DynStore) -> BoxFuture<'static, Result<T, StoreError>>,
    {
        let started = std::time::Instant::now();
        let work = op(self.inner.clone());
        let work = match crate::telemetry::enabled() {
            true => work.instrument(op_span(operation_name::<F>())),
            false => work.instrument(tracing::Span::none()),
        };
        let result = match self.handle.spawn(work).await {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => Err(StoreError::Unavailable("the store is shutting down".into())),
        };
        if let Some(series) = series {
            series.record(started, result.is_err());
        }
        result
    }
}

/// The store method an operation closure was written in, from its type's name
/// (`…::OffloadedStore as …::Store>::get_node::{{closure}}::{{closure}}` → `get_node`), so that
/// every operation is named without each call site saying it again.
fn operation_name<F>() -> &'static str {
    method_of(std::any::type_name::<F>())
}

fn method_of(full: &'static str) -> &'static str {
    let mut path = full.split("::{{closure}}").next().unwrap_or(full);
    // The method's lifetimes: `connect_backend<'_, '_>`.
    if path.ends_with('>') {
        let mut depth = 0;
        for (at, c) in path.char_indices().rev() {
            match c {
                '>' => depth += 1,
                '<' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                path = &path[..at];
                break;
            }
        }
    }
    path.rsplit("::").next().unwrap_or(path)
}

fn op_span(operation: &'static str) -> tracing::Span {
    tracing::info_span!(
        target: crate::telemetry::SPAN_TARGET,
        "store",
        otel.name = format_args!("store {operation}"),
        db.operation.name = operation,
    )
}

impl Drop for OffloadedStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its threads stop, which is not allowed inside async
        // code; the store is often dropped there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[async_trait]
impl Store for OffloadedStore {
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Revision> {
        self.inner.subscribe()
    }

    fn local_commits(&self) -> tokio::sync::broadcast::Receiver<LocalCommit> {
        self.inner.local_commits()
    }

    fn action_wakeups(&self) -> tokio::sync::broadcast::Receiver<ActionWakeup> {
        self.inner.action_wakeups()
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.run(crate::store_series!("current_revision"), |s| Box::pin(async move { s.current_revision().await }))
            .await
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.run(crate::store_series!("compacted_revision"), |s| Box::pin(async move { s.compacted_revision().await }))
            .await
    }

    async fn attach_node(
        &self,
        registration: NodeRegistration,
        controller_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Node, StoreError> {
        let controller_id = controller_id.to_string();
        self.run(crate::store_series!("attach_node"), |s| {
            Box::pin(async move { s.attach_node(registration, &controller_id, now).await })
        })
        .await
    }

    async fn update_node(
        &self,
        id: &str,
        update: NodeUpdate,
        condition: UpdateCondition,
    ) -> Result<Option<Node>, StoreError> {
        let id = id.to_string();
        self.run(crate::store_series!("update_node"), |s| {
            Box::pin(async move { s.update_node(&id, update, condition).await })
        })
        .await
    }

    async fn update_nodes(
        &self,
        updates: Vec<(String, NodeUpdate)>,
        condition: UpdateCondition,
    ) -> Result<Vec<Option<Node>>, StoreError> {
        self.run(crate::store_series!("update_nodes"), |s| {
            Box::pin(async move { s.update_nodes(updates, condition).await })
        })
        .await
    }

    async fn remove_node(&self, id: &str, condition: UpdateCondition) -> Result<Option<Node>, StoreError> {
        let id = id.to_string();
        self.run(crate::store_series!("remove_node"), |s| Box::pin(async move { s.remove_node(&id, condition).await }))
            .await
    }

    async fn get_node(&self, id: &str) -> Result<Option<Node>, StoreError> {
        let id = id.to_string();
        self.run(crate::store_series!("get_node"), |s| Box::pin(async move { s.get_node(&id).await })).await
    }

    async fn list_nodes(
        &self,
        filter: &NodeFilter,
        at: Option<Revision>,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<NodePage, StoreError> {
        let (filter, after_id) = (filter.clone(), after_id.map(str::to_string));
        self.run(crate::store_series!("list_nodes"), |s| {
            Box::pin(async move { s.list_nodes(&filter, at, after_id.as_deref(), limit).await })
        })
        .await
    }

    async fn drone_census(&self, cluster: &str, pool: &str) -> Result<DroneCensus, StoreError> {
        let (cluster, pool) = (cluster.to_string(), pool.to_string());
        self.run(crate::store_series!("drone_census"), |s| {
            Box::pin(async move { s.drone_census(&cluster, &pool).await })
        })
        .await
    }

    async fn node_changes_since(&self, after: Revision, limit: usize) -> Result<Vec<NodeChange>, StoreError> {
        self.run(crate::store_series!("node_changes_since"), |s| {
            Box::pin(async move { s.node_changes_since(after, limit).await })
        })
        .await
    }

    async fn changes_since(&self, after: Revision, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.run(crate::store_series!("changes_since"), |s| {
            Box::pin(async move { s.changes_since(after, limit).await })
        })
        .await
    }

    async fn compact(&self, retention: Retention, now: DateTime<Utc>) -> Result<Revision, StoreError> {
        self.run(crate::store_series!("compact"), |s| Box::pin(async move { s.compact(retention, now).await })).await
    }

    async fn shared_secret(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let name = name.to_string();
        self.run(crate::store_series!("shared_secret"), |s| Box::pin(async move { s.shared_secret(&name).await })).await
    }
}

#[async_trait]
impl BackendStore for OffloadedStore {
    async fn connect_backend(&self, spec: ConnectSpec, pick: Pick<'static>) -> Result<ConnectOutcome, StoreError> {
        self.run(crate::store_series!("connect_backend"), |s| {
            Box::pin(async move { s.connect_backend(spec, pick).await })
        })
        .await
    }

    async fn get_backend(&self, id: &str) -> Result<Option<Backend>, StoreError> {
        let id = id.to_string();
        self.run(crate::store_series!("get_backend"), |s| Box::pin(async move { s.get_backend(&id).await })).await
    }

    async fn list_backends(
        &self,
        filter: &BackendFilter,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<BackendPage, StoreError> {
        let (filter, after_id) = (filter.clone(), after_id.map(str::to_string));
        self.run(crate::store_series!("list_backends"), |s| {
            Box::pin(async move { s.list_backends(&filter, after_id.as_deref(), limit).await })
        })
        .await
    }

    async fn backend_snapshot(&self, filter: &BackendFilter) -> Result<BackendPage, StoreError> {
        let filter = filter.clone();
        self.run(crate::store_series!("backend_snapshot"), |s| {
            Box::pin(async move { s.backend_snapshot(&filter).await })
        })
        .await
    }

    async fn backend_history(&self, id: &str, after: Revision) -> Result<Vec<(Revision, BackendStatus)>, StoreError> {
        let id = id.to_string();
        self.run(crate::store_series!("backend_history"), |s| {
            Box::pin(async move { s.backend_history(&id, after).await })
        })
        .await
    }

    async fn backend_state_counts(&self) -> Result<Vec<(BackendState, u64)>, StoreError> {
        self.run(crate::store_series!("backend_state_counts"), |s| {
            Box::pin(async move { s.backend_state_counts().await })
        })
        .await
    }

    async fn apply_backend_event(
        &self,
        drone_id: &str,
        backend_id: &str,
        status: BackendStatus,
        address: &str,
        now: DateTime<Utc>,
    ) -> Result<EventOutcome, StoreError> {
        let (drone_id, backend_id, address) = (drone_id.to_string(), backend_id.to_string(), address.to_string());
        self.run(crate::store_series!("apply_backend_event"), |s| {
            Box::pin(async move { s.apply_backend_event(&drone_id, &backend_id, status, &address, now).await })
        })
        .await
    }

    async fn apply_drone_reports(
        &self,
        drone_id: &str,
        events: Vec<DroneEvent>,
        acks: Vec<String>,
    ) -> Result<Vec<EventOutcome>, StoreError> {
        let drone_id = drone_id.to_string();
        self.run(crate::store_series!("apply_drone_reports"), |s| {
            Box::pin(async move { s.apply_drone_reports(&drone_id, events, acks).await })
        })
        .await
    }

    async fn request_termination(
        &self,
        id: &str,
        kind: TerminationKind,
        reason: TerminationReason,
        now: DateTime<Utc>,
    ) -> Result<Option<Backend>, StoreError> {
        let id = id.to_string();
        self.run(crate::store_series!("request_termination"), |s| {
            Box::pin(async move { s.request_termination(&id, kind, reason, now).await })
        })
        .await
    }

    async fn terminate_for_drain(&self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.run(crate::store_series!("terminate_for_drain"), |s| {
            Box::pin(async move { s.terminate_for_drain(&id, now).await })
        })
        .await
    }

    async fn drones_with_pending_actions(&self) -> Result<Vec<String>, StoreError> {
        self.run(crate::store_series!("drones_with_pending_actions"), |s| {
            Box::pin(async move { s.drones_with_pending_actions().await })
        })
        .await
    }

    async fn queued_actions(&self, drone_id: &str, after_seq: i64) -> Result<Vec<QueuedAction>, StoreError> {
        let drone_id = drone_id.to_string();
        self.run(crate::store_series!("queued_actions"), |s| {
            Box::pin(async move { s.queued_actions(&drone_id, after_seq).await })
        })
        .await
    }

    async fn ack_action(&self, drone_id: &str, action_id: &str) -> Result<(), StoreError> {
        let (drone_id, action_id) = (drone_id.to_string(), action_id.to_string());
        self.run(crate::store_series!("ack_action"), |s| {
            Box::pin(async move { s.ack_action(&drone_id, &action_id).await })
        })
        .await
    }

    async fn renew_key(
        &self,
        backend_id: &str,
        key: &BackendKey,
        fencing_token: u64,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (backend_id, key) = (backend_id.to_string(), key.clone());
        self.run(crate::store_series!("renew_key"), |s| {
            Box::pin(async move { s.renew_key(&backend_id, &key, fencing_token, expires_at).await })
        })
        .await
    }

    async fn renew_keys(&self, renewals: &[KeyRenewal], expires_at: DateTime<Utc>) -> Result<Vec<bool>, StoreError> {
        let renewals = renewals.to_vec();
        self.run(crate::store_series!("renew_keys"), |s| {
            Box::pin(async move { s.renew_keys(&renewals, expires_at).await })
        })
        .await
    }

    async fn record_activity(&self, backend_ids: &[String], now: DateTime<Utc>) -> Result<(), StoreError> {
        let backend_ids = backend_ids.to_vec();
        self.run(crate::store_series!("record_activity"), |s| {
            Box::pin(async move { s.record_activity(&backend_ids, now).await })
        })
        .await
    }

    async fn backends_due_for_limits(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Backend>, StoreError> {
        self.run(crate::store_series!("backends_due_for_limits"), |s| {
            Box::pin(async move { s.backends_due_for_limits(now, limit).await })
        })
        .await
    }

    async fn defer_limits(&self, deferrals: &[(String, Option<DateTime<Utc>>)]) -> Result<(), StoreError> {
        let deferrals = deferrals.to_vec();
        self.run(crate::store_series!("defer_limits"), |s| Box::pin(async move { s.defer_limits(&deferrals).await }))
            .await
    }

    async fn expired_key_holders(
        &self,
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Vec<Backend>, StoreError> {
        self.run(crate::store_series!("expired_key_holders"), |s| {
            Box::pin(async move { s.expired_key_holders(now, lease).await })
        })
        .await
    }

    async fn release_expired_key(
        &self,
        backend_id: &str,
        lost: bool,
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Option<Backend>, StoreError> {
        let backend_id = backend_id.to_string();
        self.run(crate::store_series!("release_expired_key"), |s| {
            Box::pin(async move { s.release_expired_key(&backend_id, lost, now, lease).await })
        })
        .await
    }

    async fn record_controller_tick(
        &self,
        tick: &super::ControllerTick,
        forget_before: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let tick = tick.clone();
        self.run(crate::store_series!("record_controller_tick"), |s| {
            Box::pin(async move { s.record_controller_tick(&tick, forget_before).await })
        })
        .await
    }

    async fn controller_ticks(&self) -> Result<Vec<super::ControllerTick>, StoreError> {
        self.run(crate::store_series!("controller_ticks"), |s| Box::pin(async move { s.controller_ticks().await }))
            .await
    }

    async fn mark_lost(&self, backend_id: &str, now: DateTime<Utc>) -> Result<Option<Backend>, StoreError> {
        let backend_id = backend_id.to_string();
        self.run(crate::store_series!("mark_lost"), |s| Box::pin(async move { s.mark_lost(&backend_id, now).await }))
            .await
    }

    async fn purge_expired_tokens(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.run(crate::store_series!("purge_expired_tokens"), |s| {
            Box::pin(async move { s.purge_expired_tokens(now).await })
        })
        .await
    }

    async fn remove_terminated_backends(
        &self,
        terminated_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        self.run(crate::store_series!("remove_terminated_backends"), |s| {
            Box::pin(async move { s.remove_terminated_backends(terminated_before, limit).await })
        })
        .await
    }

    async fn backend_changes_since(
        &self,
        after: Revision,
        limit: usize,
    ) -> Result<Vec<(Revision, String, BackendStatus)>, StoreError> {
        self.run(crate::store_series!("backend_changes_since"), |s| {
            Box::pin(async move { s.backend_changes_since(after, limit).await })
        })
        .await
    }

    async fn token_route(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<TokenRoute>, StoreError> {
        let token_hash = token_hash.to_string();
        self.run(crate::store_series!("token_route"), |s| {
            Box::pin(async move { s.token_route(&token_hash, now).await })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `async_trait` makes of a method: the closure inside it, in a function with lifetimes.
    fn name_inside<F>(_: &F) -> &'static str {
        operation_name::<F>()
    }

    fn get_node() -> &'static str {
        let op = |s: DynStore| -> BoxFuture<'static, Result<(), StoreError>> {
            Box::pin(async move {
                drop(s);
                Ok(())
            })
        };
        name_inside(&op)
    }

    #[test]
    fn operations_are_named_after_their_method_without_paths_or_lifetimes() {
        assert_eq!(get_node(), "get_node");
        // As seen from `async_trait`'s methods, which have early-bound lifetimes.
        let seen = "<hangar_server::store::offload::OffloadedStore as hangar_server::store::Store>\
                    ::connect_backend<'_, '_>::{{closure}}::{{closure}}";
        assert_eq!(method_of(seen), "connect_backend");
        assert_eq!(method_of("a::b::list_nodes<'_, Vec<hangar::X<'_>>>::{{closure}}"), "list_nodes");
    }
}
