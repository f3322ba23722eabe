//! The nodes attached to this controller, their heartbeats (in memory only), and the liveness
//! task that turns silence into UNHEALTHY and OFFLINE.
//!
//! One task owns every liveness write: heartbeats only touch memory, and the task compares what
//! each node's silence says its state should be with what it last wrote. That keeps the store
//! write rate independent of the heartbeat rate and leaves no two writers racing on one node.

use super::LivenessConfig;
use crate::store::{DynStore, NodeRegistration, NodeUpdate, StoreError, UpdateCondition};
use chrono::{DateTime, Utc};
use hangar::domain::{Node, NodeFilter, NodeResources, NodeState};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// A node's attachment to this controller: ends when `closed` is cancelled (silence, a newer
/// attachment of the same node, or shutdown) or when its stream ends.
#[derive(Debug, Clone)]
pub struct AttachedNode {
    pub node_id: String,
    session: u64,
    pub closed: CancellationToken,
}

#[derive(Debug)]
struct Entry {
    session: u64,
    closed: CancellationToken,
    last_heartbeat: Instant,
    last_heartbeat_at: DateTime<Utc>,
    resources: NodeResources,
    backend_count: u32,
    /// Whether the last liveness write said the node is healthy.
    written_healthy: bool,
    /// Heartbeat time, resources and count as last written to the store.
    written_refresh: (DateTime<Utc>, NodeResources, u32),
}

pub struct NodeRegistry {
    store: DynStore,
    controller_id: String,
    config: LivenessConfig,
    next_session: AtomicU64,
    attached: Mutex<HashMap<String, Entry>>,
}

impl NodeRegistry {
    pub fn new(store: DynStore, controller_id: String, config: LivenessConfig) -> Self {
        NodeRegistry {
            store,
            controller_id,
            config,
            next_session: AtomicU64::new(1),
            attached: Mutex::new(HashMap::new()),
        }
    }

    pub fn controller_id(&self) -> &str {
        &self.controller_id
    }

    pub fn config(&self) -> &LivenessConfig {
        &self.config
    }

    /// Records the node in the store as attached here. A previous attachment of the same node to
    /// this controller is closed: the newest stream wins.
    pub async fn attach(&self, registration: NodeRegistration) -> Result<(Node, AttachedNode), StoreError> {
        let now = Utc::now();
        let node = self.store.attach_node(registration, &self.controller_id, now).await?;
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let closed = CancellationToken::new();
        let entry = Entry {
            session,
            closed: closed.clone(),
            last_heartbeat: Instant::now(),
            last_heartbeat_at: now,
            resources: node.resources,
            backend_count: node.backend_count,
            written_healthy: true,
            written_refresh: (now, node.resources, node.backend_count),
        };
        if let Some(previous) = self.attached.lock().unwrap().insert(node.id.clone(), entry) {
            tracing::info!(node_id = %node.id, "node attached again; closing its previous stream");
            previous.closed.cancel();
        }
        Ok((node.clone(), AttachedNode { node_id: node.id, session, closed }))
    }

    /// A heartbeat: memory only. The liveness task persists what matters.
    pub fn heartbeat(&self, attached: &AttachedNode, resources: NodeResources, backend_count: u32) {
        if let Some(entry) = self.attached.lock().unwrap().get_mut(&attached.node_id)
            && entry.session == attached.session
        {
            entry.last_heartbeat = Instant::now();
            entry.last_heartbeat_at = Utc::now();
            entry.resources = resources;
            entry.backend_count = backend_count;
        }
    }

    /// The node's stream ended: it is OFFLINE, unless a newer attachment replaced this one or
    /// another controller holds it by now.
    pub async fn detach(&self, attached: &AttachedNode) {
        let removed = {
            let mut map = self.attached.lock().unwrap();
            match map.get(&attached.node_id) {
                Some(entry) if entry.session == attached.session => map.remove(&attached.node_id),
                _ => None,
            }
        };
        let Some(entry) = removed else { return };
        let update = NodeUpdate {
            state: Some(NodeState::Offline),
            controller_id: Some(String::new()),
            last_heartbeat_at: Some(entry.last_heartbeat_at),
            resources: Some(entry.resources),
            backend_count: Some(entry.backend_count),
            ..NodeUpdate::default()
        };
        match self.store.update_node(&attached.node_id, update, self.held_by_me()).await {
            Ok(_) => tracing::info!(node_id = %attached.node_id, "node offline: its stream ended"),
            Err(err) => {
                tracing::warn!(node_id = %attached.node_id, error = %err, "could not record node offline; the stale-node sweep will")
            }
        }
    }

    /// Closes every attachment (shutdown).
    pub fn close_all(&self) {
        for entry in self.attached.lock().unwrap().values() {
            entry.closed.cancel();
        }
    }

    pub fn attached_count(&self) -> usize {
        self.attached.lock().unwrap().len()
    }

    fn held_by_me(&self) -> UpdateCondition {
        UpdateCondition::HeldBy(self.controller_id.clone())
    }

    /// One liveness pass: close silent streams, write health flips, refresh heartbeat figures
    /// that are due. Store errors are logged and retried on the next pass.
    pub async fn check_liveness(&self, refresh_due: bool) {
        let now = Instant::now();
        let mut writes = Vec::new();
        {
            let mut map = self.attached.lock().unwrap();
            for (id, entry) in map.iter_mut() {
                let silence = now.duration_since(entry.last_heartbeat);
                if silence >= self.config.offline_after {
                    tracing::warn!(node_id = %id, silence_ms = silence.as_millis() as u64, "no heartbeat; closing the node's stream");
                    entry.closed.cancel();
                    continue;
                }
                let healthy = silence < self.config.unhealthy_after;
                let refresh = (entry.last_heartbeat_at, entry.resources, entry.backend_count);
                let mut update = NodeUpdate::default();
                if healthy != entry.written_healthy {
                    // READY is normalized to DRAINING by the store when the node is draining.
                    update.state = Some(if healthy { NodeState::Ready } else { NodeState::Unhealthy });
                    entry.written_healthy = healthy;
                }
                // A changed backend count is rare and is what operators look at: write it now,
                // not at the next refresh.
                let count_changed = refresh.2 != entry.written_refresh.2;
                if (refresh_due || count_changed || update.state.is_some()) && refresh != entry.written_refresh {
                    update.last_heartbeat_at = Some(refresh.0);
                    update.resources = Some(refresh.1);
                    update.backend_count = Some(refresh.2);
                    entry.written_refresh = refresh;
                }
                if update != NodeUpdate::default() {
                    writes.push((id.clone(), update));
                }
            }
        }
        for (id, update) in writes {
            if let Some(state) = update.state {
                tracing::info!(node_id = %id, ?state, "node liveness changed");
            }
            if let Err(err) = self.store.update_node(&id, update, self.held_by_me()).await {
                tracing::warn!(node_id = %id, error = %err, "could not record node liveness; retrying next pass");
                self.forget_written(&id);
            }
        }
    }

    /// After a failed write, make the next pass write everything again.
    fn forget_written(&self, node_id: &str) {
        if let Some(entry) = self.attached.lock().unwrap().get_mut(node_id) {
            entry.written_healthy = !entry.written_healthy;
            entry.written_refresh.2 = u32::MAX;
        }
    }

    /// Marks OFFLINE the nodes that the store says are attached but whose controller stopped
    /// refreshing them (it crashed or lost its database connection), and nodes this controller
    /// holds in the store but no longer in memory. Returns how many were marked.
    pub async fn sweep_stale(&self) -> Result<usize, StoreError> {
        let filter = NodeFilter {
            states: vec![NodeState::Ready, NodeState::Draining, NodeState::Unhealthy],
            ..NodeFilter::default()
        };
        let stale_before = Utc::now() - chrono::Duration::from_std(self.config.stale_after()).unwrap_or_default();
        let mut after: Option<String> = None;
        let mut marked = 0;
        loop {
            let page = self.store.list_nodes(&filter, None, after.as_deref(), 500).await?;
            for node in &page.nodes {
                let mine = node.controller_id == self.controller_id;
                let orphaned = mine && !self.attached.lock().unwrap().contains_key(&node.id);
                let stale = !mine && node.last_heartbeat_at < stale_before;
                if !(orphaned || stale) {
                    continue;
                }
                let update = NodeUpdate {
                    state: Some(NodeState::Offline),
                    controller_id: Some(String::new()),
                    ..NodeUpdate::default()
                };
                let condition = UpdateCondition::HeldBy(node.controller_id.clone());
                if self.store.update_node(&node.id, update, condition).await?.is_some() {
                    tracing::warn!(node_id = %node.id, controller = %node.controller_id, "node offline: its controller stopped refreshing it");
                    marked += 1;
                }
            }
            match (page.more, page.nodes.last()) {
                (true, Some(last)) => after = Some(last.id.clone()),
                _ => return Ok(marked),
            }
        }
    }

    /// Runs liveness passes until `shutdown`.
    pub async fn run_liveness(&self, shutdown: CancellationToken) {
        let pass = (self.config.heartbeat_interval / 2).min(std::time::Duration::from_secs(1));
        let mut ticker = tokio::time::interval(pass);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_refresh = Instant::now();
        let mut last_sweep = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let refresh_due = last_refresh.elapsed() >= self.config.refresh_interval;
            if refresh_due {
                last_refresh = Instant::now();
            }
            self.check_liveness(refresh_due).await;
            if last_sweep.elapsed() >= self.config.offline_after {
                last_sweep = Instant::now();
                if let Err(err) = self.sweep_stale().await {
                    tracing::warn!(error = %err, "stale-node sweep failed; retrying later");
                }
            }
        }
    }
}
