//! The backend sweep: ends backends that outlived their limits, frees keys whose lease ran out,
//! and enforces drain deadlines. Every controller runs it; each step is idempotent (the store
//! re-checks under its write lock and does not stack up duplicate actions), so running it on
//! several controllers at once is safe.

use crate::store::{BackendFilter, DynStore, StoreError};
use chrono::{DateTime, Utc};
use hangar::domain::{BackendState, NodeFilter, NodeKind, NodeState, TerminationKind, TerminationReason};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Backends read per page while sweeping.
const PAGE: usize = 500;

/// What one pass did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub swept_idle: usize,
    pub swept_lifetime: usize,
    pub keys_released: usize,
    pub lost: usize,
    pub drained: usize,
    pub tokens_purged: u64,
}

/// At most this many pages of backends past a limit are handled in one pass; the rest wait for
/// the next (a burst of due backends cannot hold the sweep's other duties back for long).
const LIMIT_PAGES_PER_PASS: usize = 20;

/// Nodes read per page while sweeping.
const NODE_PAGE: usize = 500;

pub struct BackendSweep {
    store: DynStore,
    /// The key lease. Also how long a drone may stay away before the backends without a key that
    /// it ran count as LOST (keyed ones follow their lease, which runs out after the same time).
    lease_duration: Duration,
}

fn elapsed(since: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - since).to_std().unwrap_or_default()
}

impl BackendSweep {
    pub fn new(store: DynStore, lease_duration: Duration) -> Self {
        BackendSweep { store, lease_duration }
    }

    /// Passes every `interval` until `shutdown`. Failures are logged and retried next pass.
    pub async fn run(&self, interval: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.pass(Utc::now()).await {
                Ok(report) if report != SweepReport::default() => tracing::info!(?report, "backend sweep"),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "backend sweep failed; retrying next pass"),
            }
        }
    }

    pub async fn pass(&self, now: DateTime<Utc>) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        self.limits(now, &mut report).await?;
        self.leases(now, &mut report).await?;
        self.drains(now, &mut report).await?;
        self.vanished_drones(now, &mut report).await?;
        report.tokens_purged = self.store.purge_expired_tokens(now).await?;
        Ok(report)
    }

    /// `max_idle` (no proxy traffic) and `lifetime_limit`: soft terminate, SWEPT / LIFETIME.
    /// Reads only the backends whose stored limit time has come (an index), not every live one:
    /// most passes read nothing (docs/design/backends-and-leases.md#limits).
    async fn limits(&self, now: DateTime<Utc>, report: &mut SweepReport) -> Result<(), StoreError> {
        for _ in 0..LIMIT_PAGES_PER_PASS {
            let due = self.store.backends_due_for_limits(now, PAGE).await?;
            let mut deferred = Vec::new();
            for backend in &due {
                let config = &backend.spawn_config;
                let reached =
                    |since: DateTime<Utc>, limit: Option<Duration>| limit.is_some_and(|l| elapsed(since, now) >= l);
                let reason = if !backend.is_running() {
                    None
                } else if reached(backend.created_at, config.lifetime_limit) {
                    report.swept_lifetime += 1;
                    Some(TerminationReason::Lifetime)
                } else if reached(backend.last_activity_at, config.max_idle) {
                    report.swept_idle += 1;
                    Some(TerminationReason::Swept)
                } else {
                    None
                };
                match reason {
                    // The request clears the backend's limit time: it is no longer running.
                    Some(reason) => {
                        tracing::info!(backend_id = %backend.id, ?reason, "sweeping backend");
                        self.store.request_termination(&backend.id, TerminationKind::Soft, reason, now).await?;
                    }
                    // Traffic moved its idle deadline, or it is already ending.
                    None => deferred.push((backend.id.clone(), backend.limit_due_at())),
                }
            }
            if !deferred.is_empty() {
                self.store.defer_limits(&deferred).await?;
            }
            if due.len() < PAGE {
                break;
            }
        }
        Ok(())
    }

    /// Keys whose lease ran out are freed; their backend ends LOST when its drone is not
    /// attached (an attached drone ends it itself: its renewals now fail, KEY_EXPIRED).
    async fn leases(&self, now: DateTime<Utc>, report: &mut SweepReport) -> Result<(), StoreError> {
        for backend in self.store.expired_key_holders(now, self.lease_duration).await? {
            let attached = match self.store.get_node(&backend.drone_id).await? {
                Some(node) => node.state.is_attached(),
                None => false,
            };
            if let Some(after) =
                self.store.release_expired_key(&backend.id, !attached, now, self.lease_duration).await?
            {
                report.keys_released += 1;
                if after.status.state == BackendState::Terminated && backend.status.state.is_live() {
                    report.lost += 1;
                    tracing::warn!(backend_id = %backend.id, drone_id = %backend.drone_id, "backend lost: its lease expired and its drone is gone");
                }
            }
        }
        Ok(())
    }

    /// Past a drone's drain deadline, its remaining backends are soft-terminated.
    async fn drains(&self, now: DateTime<Utc>, report: &mut SweepReport) -> Result<(), StoreError> {
        let filter = NodeFilter { kinds: vec![NodeKind::Drone], ..NodeFilter::default() };
        let mut after_node: Option<String> = None;
        loop {
            let page = self.store.list_nodes(&filter, None, after_node.as_deref(), PAGE).await?;
            for node in page.nodes.iter().filter(|n| n.draining && n.drain_deadline.is_some_and(|d| d <= now)) {
                let backends = BackendFilter { drone_id: Some(node.id.clone()), ..BackendFilter::live() };
                let mut after: Option<String> = None;
                loop {
                    let crate::store::BackendPage { backends: page, more, .. } =
                        self.store.list_backends(&backends, after.as_deref(), PAGE).await?;
                    for backend in page.iter().filter(|b| b.is_running()) {
                        // Checks the drain again under the write lock: an undrain since this
                        // listing wins.
                        if self.store.terminate_for_drain(&backend.id, now).await? {
                            report.drained += 1;
                        }
                    }
                    match (more, page.last()) {
                        (true, Some(last)) => after = Some(last.id.clone()),
                        _ => break,
                    }
                }
            }
            match (page.more, page.nodes.last()) {
                (true, Some(last)) => after_node = Some(last.id.clone()),
                _ => return Ok(()),
            }
        }
    }

    /// Backends without a key on a drone offline for longer than `lost_after` end LOST: with no
    /// lease to expire, nothing else would ever end them.
    async fn vanished_drones(&self, now: DateTime<Utc>, report: &mut SweepReport) -> Result<(), StoreError> {
        let filter =
            NodeFilter { kinds: vec![NodeKind::Drone], states: vec![NodeState::Offline], ..NodeFilter::default() };
        let gone_before = now - chrono::Duration::from_std(self.lease_duration).unwrap_or_default();
        let mut after_node: Option<String> = None;
        loop {
            let page = self.store.list_nodes(&filter, None, after_node.as_deref(), NODE_PAGE).await?;
            for node in page.nodes.iter().filter(|n| n.last_heartbeat_at < gone_before) {
                let backends = BackendFilter { drone_id: Some(node.id.clone()), ..BackendFilter::live() };
                let mut after: Option<String> = None;
                loop {
                    let crate::store::BackendPage { backends: page, more, .. } =
                        self.store.list_backends(&backends, after.as_deref(), PAGE).await?;
                    for backend in page.iter().filter(|b| b.key.is_none()) {
                        if self.store.mark_lost(&backend.id, now).await?.is_some() {
                            report.lost += 1;
                            tracing::warn!(backend_id = %backend.id, drone_id = %node.id, "backend lost: its drone never came back");
                        }
                    }
                    match (more, page.last()) {
                        (true, Some(last)) => after = Some(last.id.clone()),
                        _ => break,
                    }
                }
            }
            match (page.more, page.nodes.last()) {
                (true, Some(last)) => after_node = Some(last.id.clone()),
                _ => return Ok(()),
            }
        }
    }
}
