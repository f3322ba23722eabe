//! `DroneService`: drones attach here. Each drone's stream is a [`DroneSession`] that delivers its
//! pending actions, applies its backend events and renews its keys. A drone principal attaches
//! only under the node names its credentials allow (NodeRestriction), and every attach, accepted
//! or refused, is an audit line.

use super::drone_reports::{self, Report};
use super::key_renewals::{self, Renewal};
use super::queue;
use super::session::{Divert, NodeSessions, OUTBOUND_BUFFER, Routed, SessionHandler, or_default};
use super::{ApiError, BackendSettings, validate};
use crate::auth::{self, Principal, audit};
use crate::controller::{AttachedNode, Mail, NodeRegistry, StoreContact};
use crate::store::{ActionPayload, DynStore, EventOutcome, NodeRegistration, PendingAction, QueuedAction};
use chrono::Utc;
use hangar::domain::{BackendStatus, NodeKind, NodeResources, duration_to_proto};
use hangar::v1::{self, drone_service_server::DroneService};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

/// Label on drone nodes naming the runtime their backends run on ("docker", "process", "mock").
pub const RUNTIME_LABEL: &str = "hangar.dev/runtime";

/// `DroneService`: drones attach here.
#[derive(Clone)]
pub struct DroneApi {
    sessions: NodeSessions,
    settings: BackendSettings,
    /// Whether this controller reaches its store, for renewals it may answer deferred.
    contact: Arc<StoreContact>,
}

impl DroneApi {
    pub fn new(
        registry: Arc<NodeRegistry>,
        store: DynStore,
        settings: BackendSettings,
        contact: Arc<StoreContact>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        DroneApi { sessions: NodeSessions { registry, store, tasks, shutdown }, settings, contact }
    }
}

/// One drone's stream: delivers its pending actions, applies its backend events, renews its keys.
struct DroneSession {
    registry: Arc<NodeRegistry>,
    store: DynStore,
    attached: AttachedNode,
    outbound: queue::Sender<Result<v1::DroneAttachResponse, Status>>,
    /// Actions sent on this stream and not yet acknowledged: not sent again on this stream (a
    /// new stream sends them all again).
    sent: HashSet<String>,
    /// Every pending action up to this place in the drone's queue has been read and sent on this
    /// stream (or skipped): a wake-up reads only the actions after it. Spawns carried by a
    /// wake-up do not move it (see `send_carried`).
    read_through: i64,
    /// When this stream last read all of the drone's pending actions (see `FULL_READ_EVERY`).
    full_read_at: Option<std::time::Instant>,
    /// The way to this session's renewal task, until the session's reader takes it.
    renewals: Option<queue::Sender<Renewal>>,
    /// The way to this session's reports task (backend events and acknowledgements, applied in
    /// batches), until the session's reader takes it.
    reports: Option<queue::Sender<Report>>,
}

impl DroneSession {
    async fn reply(&self, message: v1::drone_attach_response::Message) -> Result<(), ApiError> {
        // A drone that stopped reading ends its stream; its session notices when the read fails.
        let _ = self.outbound.send(Ok(v1::DroneAttachResponse { message: Some(message) })).await;
        Ok(())
    }

    /// Sends what a wake-up brought (see [`Mail`]): the Spawns it carried, as they are, and when
    /// it asks for one (or the periodic full read is due), a read of the store.
    async fn deliver(&mut self, mail: Mail) -> Result<(), ApiError> {
        let full = self.full_read_at.is_none_or(|at| at.elapsed() >= FULL_READ_EVERY);
        if mail.read || full {
            // The read finds every carried Spawn not yet sent: each is in the store, after
            // `read_through` (or behind it and then sent already).
            return self.read_actions(if full { 0 } else { self.read_through }).await;
        }
        match self.send_carried(mail.spawns).await {
            None => Ok(()),
            Some(after) => self.read_actions(after).await,
        }
    }

    /// Sends the carried Spawns not sent yet, oldest first. A Spawn is its backend's first
    /// action, so whatever was sent or is still to come, none of its backend's is due before it.
    /// One behind `read_through` and not in `sent` was either sent and acknowledged already
    /// (then a read no longer finds it) or overtaken by a newer commit's wake-up: returns where
    /// a read must start to tell.
    async fn send_carried(&mut self, mut spawns: Vec<QueuedAction>) -> Option<i64> {
        spawns.sort_unstable_by_key(|spawn| spawn.seq);
        let mut read_from: Option<i64> = None;
        for QueuedAction { seq, action, backend } in spawns {
            if self.sent.contains(&action.id) {
                continue;
            }
            if seq <= self.read_through {
                read_from = Some(read_from.map_or(seq - 1, |at| at.min(seq - 1)));
                continue;
            }
            let Some(message) = action_message(&action, backend) else { continue };
            if !self.send(message).await {
                // The rest is in the store, after `read_through`: a later wake-up or the poll
                // reads it.
                break;
            }
            self.sent.insert(action.id);
        }
        read_from
    }

    /// Sends every pending action of this drone after `after` in its queue (all of them: 0) not
    /// yet sent on this stream, oldest first.
    ///
    /// A wake-up reads only the actions queued after the last one read, not the drone's whole
    /// backlog of unacknowledged ones (which grows with the placement rate while acknowledgements
    /// are on their way). Every `FULL_READ_EVERY` the read is whole again: it forgets acknowledged
    /// actions and, should an action ever be queued behind the cursor, sends it.
    async fn read_actions(&mut self, after: i64) -> Result<(), ApiError> {
        self.attached.count_store_read();
        let pending = self.store.queued_actions(&self.attached.node_id, after).await?;
        if after == 0 {
            let pending_ids: HashSet<&str> = pending.iter().map(|q| q.action.id.as_str()).collect();
            // Forget acknowledged (or dropped) actions so the set stays small.
            self.sent.retain(|id| pending_ids.contains(id.as_str()));
            self.full_read_at = Some(std::time::Instant::now());
        }
        for QueuedAction { seq, action, backend } in pending {
            if !self.sent.contains(&action.id) {
                let Some(message) = action_message(&action, backend) else {
                    self.read_through = self.read_through.max(seq);
                    continue;
                };
                if !self.send(message).await {
                    break;
                }
                self.sent.insert(action.id);
            }
            self.read_through = self.read_through.max(seq);
        }
        Ok(())
    }

    /// Sends one action; `false` if the drone did not take it (see `FULL_OUTBOUND_WAIT`).
    async fn send(&self, action: v1::DroneAction) -> bool {
        let message = Ok(v1::DroneAttachResponse { message: Some(v1::drone_attach_response::Message::Action(action)) });
        match self.outbound.try_send(message) {
            Ok(()) => true,
            // Full: wake-ups are targeted, so no other commit may come to wake this session
            // again; wait a while for the drone to take some. A drone that stops reading gets
            // the rest, in order, on a later wake-up or the poll.
            Err(mpsc::error::TrySendError::Full(message)) => {
                matches!(tokio::time::timeout(FULL_OUTBOUND_WAIT, self.outbound.send(message)).await, Ok(Ok(())))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    async fn backend_event(&mut self, event: v1::DroneBackendEvent) -> Result<(), ApiError> {
        use v1::drone_attach_response::Message as Reply;
        let mut violations = validate::Violations::default();
        violations
            .absorb("backend_event.event_id", validate::id("backend_event.event_id", &event.event_id))
            .absorb("backend_event.backend_id", validate::id("backend_event.backend_id", &event.backend_id))
            .absorb("backend_event.address", validate::address("backend_event.address", &event.address));
        violations.into_result()?;
        let now = Utc::now();
        let Some(status) = event.status.as_ref().and_then(|s| BackendStatus::from_proto(s, now)) else {
            return Err(ApiError::Protocol(format!("event {} carries no known backend state", event.event_id)));
        };
        let node_id = &self.attached.node_id;
        match self.store.apply_backend_event(node_id, &event.backend_id, status, &event.address, now).await? {
            EventOutcome::Applied(backend) => {
                tracing::info!(backend_id = %backend.id, state = %backend.status.state, "backend state changed");
            }
            EventOutcome::Ignored => {
                tracing::debug!(event_id = %event.event_id, backend_id = %event.backend_id, "stale or repeated event")
            }
            // Acknowledged all the same: the drone would otherwise replay it forever.
            EventOutcome::Unknown => {
                tracing::warn!(event_id = %event.event_id, backend_id = %event.backend_id, drone_id = %node_id, "event for a backend this drone does not hold")
            }
        }
        self.reply(Reply::AckEvent(v1::AckEvent { event_id: event.event_id })).await
    }
}

/// The message for `action`; a Spawn is built from `backend`, read with it (`None`: it is gone).
fn action_message(action: &PendingAction, backend: Option<hangar::domain::Backend>) -> Option<v1::DroneAction> {
    use v1::drone_action::Action;
    let action_kind = match &action.payload {
        ActionPayload::Terminate { kind, reason } => {
            Action::Terminate(v1::TerminateBackend { kind: kind.to_proto() as i32, reason: reason.to_proto() as i32 })
        }
        ActionPayload::Spawn { startup_timeout, lease_duration, stop_grace, .. } => {
            let Some(backend) = backend else {
                tracing::warn!(action_id = %action.id, backend_id = %action.backend_id, "spawn action for a missing backend");
                return None;
            };
            // Only the config's own environment: the drone adds Hangar's variables
            // (`BackendEnv`) from the key, fencing token and static token below.
            Action::Spawn(v1::SpawnBackend {
                // The one message that carries the env's values: to the drone that runs it.
                executable: Some(backend.spawn_config.executable.to_spawn_proto()),
                key: backend.key.as_ref().map(Into::into),
                fencing_token: backend.fencing_token,
                static_token: backend.spawn_config.static_token.clone().unwrap_or_default(),
                startup_timeout: Some(duration_to_proto(*startup_timeout)),
                lease_duration: Some(duration_to_proto(*lease_duration)),
                stop_grace: Some(duration_to_proto(*stop_grace)),
                lease_remaining: backend
                    .key
                    .is_some()
                    .then(|| duration_to_proto(lease_left(&backend, *lease_duration))),
            })
        }
    };
    Some(v1::DroneAction {
        action_id: action.id.clone(),
        backend_id: action.backend_id.clone(),
        action: Some(action_kind),
        trace_context: match &action.payload {
            ActionPayload::Spawn { trace_context, .. } => trace_context.clone().into_iter().collect(),
            ActionPayload::Terminate { .. } => Default::default(),
        },
    })
}

/// What is left of the lease Connect gave `backend`'s key (from its creation), zero once it ran
/// out. Renewals only ever move a lease later, so the stored expiry is at least this: the drone's
/// deadlines counted from it stay before the controller's (docs/design/backends-and-leases.md,
/// "Key leases and fencing").
fn lease_left(backend: &hangar::domain::Backend, lease_duration: std::time::Duration) -> std::time::Duration {
    let expires_at = backend.created_at + chrono::Duration::from_std(lease_duration).unwrap_or_default();
    (expires_at - Utc::now()).to_std().unwrap_or_default()
}

#[tonic::async_trait]
impl SessionHandler<v1::DroneAttachRequest> for DroneSession {
    async fn message(&mut self, message: v1::DroneAttachRequest) -> Result<(), ApiError> {
        use v1::drone_attach_request::Message;
        match message.message {
            Some(Message::Heartbeat(hb)) => {
                let resources = hb.resources.as_ref().map(NodeResources::from).unwrap_or_default();
                self.registry.heartbeat(&self.attached, resources, hb.backend_count);
                Ok(())
            }
            Some(Message::Hello(_)) => Err(ApiError::Protocol("hello sent twice on one stream".into())),
            Some(Message::BackendEvent(event)) => self.backend_event(event).await,
            Some(Message::AckAction(ack)) => {
                validate::id("ack_action.action_id", &ack.action_id)?;
                self.store.ack_action(&self.attached.node_id, &ack.action_id).await?;
                self.sent.remove(&ack.action_id);
                Ok(())
            }
            // Diverted to the renewal task by the reader; only reached without one.
            Some(Message::RenewKey(_) | Message::RenewKeys(_)) => {
                Err(ApiError::Protocol("key renewals have no path on this session".into()))
            }
            None => Err(ApiError::Protocol("empty message".into())),
        }
    }

    /// Heartbeats (memory only) and key renewals (their own task) never wait behind the store
    /// writes of events and actions for other backends.
    fn divert(&mut self) -> Option<Divert<v1::DroneAttachRequest>> {
        use v1::drone_attach_request::Message;
        let renewals = self.renewals.take()?;
        let reports = self.reports.take();
        let (registry, attached) = (self.registry.clone(), self.attached.clone());
        Some(Box::new(move |message: v1::DroneAttachRequest| {
            let divert_report = |report: Report| -> Routed<v1::DroneAttachRequest> {
                let reports = reports.clone().expect("checked by the caller");
                // All of a drone's waiting reports go to the store together (`drone_reports`).
                Routed::Diverted(Box::pin(async move {
                    let _ = reports.send(report).await;
                }))
            };
            let renewal = match message.message {
                Some(Message::BackendEvent(event)) if reports.is_some() => return divert_report(Report::Event(event)),
                Some(Message::AckAction(ack)) if reports.is_some() => return divert_report(Report::Ack(ack.action_id)),
                Some(Message::RenewKeys(batch)) => Renewal::Batch(batch),
                Some(Message::RenewKey(key)) => Renewal::Single(key),
                Some(Message::Heartbeat(hb)) => {
                    let resources = hb.resources.as_ref().map(NodeResources::from).unwrap_or_default();
                    registry.heartbeat(&attached, resources, hb.backend_count);
                    return Routed::Handled;
                }
                other => return Routed::InLine(v1::DroneAttachRequest { message: other }),
            };
            let renewals = renewals.clone();
            // Waits only when the renewal task is QUEUE batches behind.
            Routed::Diverted(Box::pin(async move {
                let _ = renewals.send(renewal).await;
            }))
        }))
    }

    async fn woken(&mut self) -> Result<(), ApiError> {
        let mail = self.attached.take_mail();
        self.deliver(mail).await
    }
}

fn drone_registration(hello: &v1::DroneHello) -> Result<NodeRegistration, ApiError> {
    let mut violations = validate::Violations::default();
    violations
        .absorb("hello.name", validate::name("hello.name", &hello.name))
        .absorb("hello.cluster", validate::filter_name("hello.cluster", &hello.cluster))
        .absorb("hello.pool", validate::filter_name("hello.pool", &hello.pool))
        .absorb("hello.labels", validate::labels("hello.labels", &hello.labels))
        .check(
            "hello.backend_capacity",
            match hello.backend_capacity {
                0 => Some("must be at least 1".to_string()),
                n if n > validate::MAX_BACKEND_CAPACITY => {
                    Some(format!("must be at most {} (got {n})", validate::MAX_BACKEND_CAPACITY))
                }
                _ => None,
            },
        )
        .absorb("hello.version", validate::version("hello.version", &hello.version))
        // It becomes a label value that operators select drones by: a name like "docker".
        .absorb("hello.runtime", validate::filter_name("hello.runtime", &hello.runtime));
    violations.into_result()?;
    let mut labels: std::collections::BTreeMap<_, _> = hello.labels.clone().into_iter().collect();
    if !hello.runtime.is_empty() {
        // A label, so operators can select drones by runtime like any other property.
        labels.insert(RUNTIME_LABEL.into(), hello.runtime.clone());
    }
    Ok(NodeRegistration {
        kind: NodeKind::Drone,
        name: hello.name.clone(),
        cluster: or_default(&hello.cluster),
        pool: or_default(&hello.pool),
        labels,
        version: hello.version.clone(),
        backend_capacity: hello.backend_capacity,
        resources: hello.resources.as_ref().map(NodeResources::from).unwrap_or_default(),
    })
}

type DroneStream = queue::Receiver<Result<v1::DroneAttachResponse, Status>>;

/// The method an audit line names for an attach.
const ATTACH: &str = "hangar.v1.DroneService/Attach";

/// How long a session waits for its drone to make room for the next action before leaving the
/// rest to a later wake-up (docs/design/drone-link.md#wake-ups).
const FULL_OUTBOUND_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// How often a drone session reads all of its drone's pending actions rather than those after
/// the last one it read (`DroneSession::read_actions`).
const FULL_READ_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl DroneApi {
    /// The drone's first message, which must be its Hello.
    async fn hello(&self, inbound: &mut Streaming<v1::DroneAttachRequest>) -> Result<v1::DroneHello, ApiError> {
        match self.sessions.first(inbound).await?.message {
            Some(v1::drone_attach_request::Message::Hello(hello)) => Ok(hello),
            _ => Err(ApiError::Protocol("a drone's first message must be a hello".into())),
        }
    }

    /// A drone's stream after its Hello: a Welcome and a session until the stream ends. Returns
    /// the node id too, for the audit line.
    async fn attach(
        &self,
        principal: &Principal,
        hello: &v1::DroneHello,
        inbound: Streaming<v1::DroneAttachRequest>,
    ) -> Result<(String, DroneStream), ApiError> {
        use v1::drone_attach_response::Message as Reply;

        // A stolen drone token must not take over another drone's node and its spawn configs.
        if !principal.may_attach_as(&hello.name) {
            return Err(ApiError::NodeNotAllowed { node: hello.name.clone() });
        }
        let registration = drone_registration(hello)?;
        let registry = &self.sessions.registry;
        // In line behind other attaches while a fleet reconnects; held through the first
        // store read below.
        let admitted = registry.admit().await?;
        let (node, attached) = registry.attach(registration).await?;
        tracing::info!(node_id = %node.id, name = %node.name, cluster = %node.cluster, "drone attached");

        let (tx, rx) = queue::channel(OUTBOUND_BUFFER);
        let welcome = v1::Welcome {
            node_id: node.id.clone(),
            controller_id: registry.controller_id().to_string(),
            heartbeat_interval: Some(duration_to_proto(registry.config().heartbeat_interval)),
            batch_renewals: true,
            // Only to drones that understand a deferred renewal; an older one would take it for
            // a refusal and end its backend.
            store_outage_grace: (hello.lease_deferrals && !self.contact.grace().is_zero())
                .then(|| duration_to_proto(self.contact.grace())),
        };
        let welcome_deferrals = welcome.store_outage_grace.is_some();
        tx.try_send(Ok(v1::DroneAttachResponse { message: Some(Reply::Welcome(welcome)) }))
            .expect("a fresh channel has room");
        // The session's renewal task: ends once the session's reader (which holds its sender)
        // has stopped.
        let (renewals_tx, renewals_rx) = queue::channel(key_renewals::QUEUE);
        let (store, lease) = (self.sessions.store.clone(), self.settings.lease_duration);
        let deferrals = welcome_deferrals.then(|| self.contact.clone());
        self.sessions.tasks.spawn(key_renewals::serve(store, lease, deferrals, renewals_rx, tx.clone()));
        let (reports_tx, reports_rx) = queue::channel(drone_reports::QUEUE);
        self.sessions.tasks.spawn(drone_reports::serve(
            self.sessions.store.clone(),
            attached.node_id.clone(),
            reports_rx,
            tx.clone(),
        ));
        let mut session = DroneSession {
            registry: registry.clone(),
            store: self.sessions.store.clone(),
            attached: attached.clone(),
            outbound: tx.clone(),
            sent: HashSet::new(),
            read_through: 0,
            full_read_at: None,
            renewals: Some(renewals_tx),
            reports: Some(reports_tx),
        };
        // After the Welcome, before anything else: what is waiting for this drone.
        session.read_actions(0).await?;
        drop(admitted);
        self.sessions.spawn(attached, inbound, tx, session);
        Ok((node.id, rx))
    }
}

#[tonic::async_trait]
impl DroneService for DroneApi {
    type AttachStream = DroneStream;

    async fn attach(&self, req: Request<Streaming<v1::DroneAttachRequest>>) -> Result<Response<DroneStream>, Status> {
        let principal = auth::principal(&req);
        let mut inbound = req.into_inner();
        let hello = self.hello(&mut inbound).await?;
        let result = DroneApi::attach(self, &principal, &hello, inbound).await.map_err(Status::from);
        let node_id = result.as_ref().ok().map(|(id, _)| id.as_str());
        let target = audit::Target { node: Some(&hello.name), node_id, ..Default::default() };
        audit::record(&principal, ATTACH, target, &audit::outcome(&result));
        Ok(Response::new(result?.1))
    }
}
