//! The watch on the engine's event stream: engine events become hub events; a subscription
//! that ends (planned, at `until`, or by failure) is followed by a reconcile by label and a new
//! subscription whose `since` overlaps the gap.
//!
//! The watch acts on containers in one case only: a network sandbox that ends under a running
//! backend (killed, or its process gone) takes the backend's network with it: the engine drops
//! the published port, and nothing can reach the backend again. The backend is then killed, so
//! that it is reported EXITED and its clients are given a new one, rather than kept READY and
//! unreachable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::EventMessage;
use bollard::query_parameters::{EventsOptions, InspectContainerOptions, KillContainerOptions, ListContainersOptions};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{LABEL_ROLE, LABEL_SANDBOX, label_filters, parse_time, status_code};
use crate::runtime::{EventHub, LABEL_BACKEND_ID};

/// Turns the engine's event stream into hub events, resubscribing when it ends.
pub(super) struct EngineWatcher {
    pub(super) docker: Docker,
    pub(super) instance: String,
    pub(super) hub: EventHub,
    pub(super) watching: Arc<AtomicBool>,
    pub(super) subscriptions: Arc<AtomicU64>,
    pub(super) resubscribe_every: Duration,
}

/// A time as the engine's `since`/`until` parameters take it: Unix seconds with a fraction.
fn engine_time(time: DateTime<Utc>) -> String {
    format!("{}.{:09}", time.timestamp(), time.timestamp_subsec_nanos())
}

/// How one subscription to the engine's events ended.
enum Subscription {
    /// The engine closed it at `until`, as planned.
    Expired,
    /// It failed, or closed much earlier than planned.
    Failed,
    Cancelled,
}

impl EngineWatcher {
    pub(super) async fn run(self, cancel: CancellationToken) {
        const FIRST_BACKOFF: Duration = Duration::from_millis(100);
        let mut backoff = FIRST_BACKOFF;
        loop {
            // `since` is taken before the reconcile, so anything that happens between the
            // reconcile and the subscription is replayed by the engine; the hub drops repeats.
            let since = engine_time(Utc::now() - chrono::Duration::seconds(1));
            let outcome = match self.reconcile().await {
                Ok(()) => self.follow(since, &cancel).await,
                Err(err) => {
                    tracing::warn!(%err, "reconcile with the docker engine failed");
                    Subscription::Failed
                }
            };
            self.watching.store(false, Ordering::Release);
            match outcome {
                Subscription::Cancelled => return,
                Subscription::Expired => {
                    backoff = FIRST_BACKOFF;
                    continue;
                }
                Subscription::Failed => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = cancel.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One subscription, until the engine ends it (at `until`), it fails, or cancellation.
    async fn follow(&self, since: String, cancel: &CancellationToken) -> Subscription {
        let mut filters = label_filters(&self.instance);
        filters.insert("type".into(), vec!["container".into()]);
        // With `until` the engine itself ends the stream after a while, and `run` resubscribes.
        let until = engine_time(Utc::now() + self.resubscribe_every);
        let subscribed_at = tokio::time::Instant::now();
        let mut events =
            self.docker.events(Some(EventsOptions { since: Some(since), until: Some(until), filters: Some(filters) }));
        self.watching.store(true, Ordering::Release);
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
        loop {
            let item = tokio::select! {
                item = events.next() => item,
                _ = cancel.cancelled() => return Subscription::Cancelled,
            };
            match item {
                Some(Ok(event)) => self.handle(event).await,
                Some(Err(err)) => {
                    tracing::warn!(%err, "docker event stream failed; resubscribing");
                    return Subscription::Failed;
                }
                // An engine that keeps closing the stream early must not make this loop spin.
                None if subscribed_at.elapsed() < self.resubscribe_every / 2 => {
                    tracing::warn!("docker event stream ended early; resubscribing");
                    return Subscription::Failed;
                }
                None => return Subscription::Expired,
            }
        }
    }

    async fn handle(&self, event: EventMessage) {
        let Some(actor) = event.actor else { return };
        let attributes = actor.attributes.unwrap_or_default();
        let Some(backend_id) = attributes.get(LABEL_BACKEND_ID) else {
            let sandbox_died = event.action.as_deref() == Some("die")
                && attributes.get(LABEL_ROLE).map(String::as_str) == Some("sandbox");
            if let Some(sandbox) = actor.id.as_deref().filter(|_| sandbox_died) {
                self.kill_backends_in(sandbox).await;
            }
            return;
        };
        match event.action.as_deref() {
            Some("start") => self.hub.started(backend_id),
            Some("die") => {
                // The engine's separate "oom" event may come before or after "die" (or not at
                // all when only a child process was killed); the container's OOMKilled flag is
                // authoritative, so it is read here and OOM is reported right before EXITED.
                let code = attributes.get("exitCode").and_then(|c| c.parse().ok());
                let oom_killed = match actor.id.as_deref() {
                    Some(id) => self
                        .docker
                        .inspect_container(id, None::<InspectContainerOptions>)
                        .await
                        .ok()
                        .and_then(|c| c.state)
                        .and_then(|s| s.oom_killed)
                        .unwrap_or(false),
                    None => false,
                };
                self.hub.exited(backend_id, code, oom_killed);
            }
            Some("destroy") => self.hub.removed(backend_id),
            _ => {}
        }
    }

    /// Kills the running backends in `sandbox`, which has ended (see the module's comment). A
    /// backend being removed kills itself before its sandbox, so it is not found here.
    async fn kill_backends_in(&self, sandbox: &str) {
        let mut filters = label_filters(&self.instance);
        filters.entry("label".into()).or_default().push(format!("{LABEL_SANDBOX}={sandbox}"));
        let options = ListContainersOptions { filters: Some(filters), ..Default::default() };
        let backends = match self.docker.list_containers(Some(options)).await {
            Ok(backends) => backends,
            Err(err) => {
                tracing::warn!(sandbox, %err, "cannot list the backends in a network sandbox that ended");
                return;
            }
        };
        for backend in backends {
            let Some(id) = backend.id.as_deref() else { continue };
            let backend_id = backend.labels.as_ref().and_then(|l| l.get(LABEL_BACKEND_ID)).map(String::as_str);
            self.kill_unreachable(id, backend_id.unwrap_or(""), sandbox).await;
        }
    }

    async fn kill_unreachable(&self, container: &str, backend_id: &str, sandbox: &str) {
        tracing::warn!(
            backend_id,
            sandbox,
            "the backend's network sandbox ended, and with it the backend's published port; killing the backend"
        );
        let kill = KillContainerOptions { signal: "SIGKILL".into() };
        match self.docker.kill_container(container, Some(kill)).await {
            // Gone, or not running any more.
            Err(err) if !matches!(status_code(&err), Some(404 | 409)) => {
                tracing::warn!(backend_id, %err, "cannot kill a backend whose network sandbox ended");
            }
            _ => {}
        }
    }

    /// Brings the hub in line with what the engine runs: exits and removals missed while the
    /// event stream was down are reported now. Like the event subscription, it sees only this
    /// instance's containers (by label). It acts on a container only to kill a running backend
    /// whose sandbox ended meanwhile (see the module's comment).
    async fn reconcile(&self) -> Result<(), DockerError> {
        let options =
            ListContainersOptions { all: true, filters: Some(label_filters(&self.instance)), ..Default::default() };
        let containers = self.docker.list_containers(Some(options)).await?;
        let label = |c: &bollard::models::ContainerSummary, name: &str| c.labels.as_ref()?.get(name).cloned();
        let live_sandboxes: std::collections::HashSet<String> = containers
            .iter()
            .filter(|c| label(c, LABEL_ROLE).as_deref() == Some("sandbox"))
            .filter(|c| c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING))
            .filter_map(|c| c.id.clone())
            .collect();
        let mut present = std::collections::HashSet::new();
        for container in containers {
            let Some(backend_id) = label(&container, LABEL_BACKEND_ID) else { continue };
            present.insert(backend_id.clone());
            let Some(id) = container.id.clone() else { continue };
            if let Some(sandbox) = label(&container, LABEL_SANDBOX).filter(|s| !live_sandboxes.contains(s))
                && container.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            {
                self.kill_unreachable(&id, &backend_id, &sandbox).await;
            }
            let inspected = match self.docker.inspect_container(&id, None::<InspectContainerOptions>).await {
                Ok(inspected) => inspected,
                Err(err) if status_code(&err) == Some(404) => continue,
                Err(err) => return Err(err),
            };
            let state = inspected.state.unwrap_or_default();
            if state.running == Some(true) {
                self.hub.started(&backend_id);
            } else if parse_time(state.started_at.as_deref()).is_some() {
                self.hub.exited(&backend_id, state.exit_code.map(|c| c as i32), state.oom_killed == Some(true));
            }
        }
        for backend_id in self.hub.running() {
            if !present.contains(&backend_id) {
                self.hub.removed(&backend_id);
            }
        }
        Ok(())
    }
}
