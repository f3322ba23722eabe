//! `ProxyService`: proxies attach here as PROXY nodes, and look up the route behind a connection
//! token. Each proxy's stream is a [`ProxySession`]. A proxy principal attaches only under the
//! node names its credentials allow, and every attach, accepted or refused, is an audit line.

use super::queue;
use super::session::{NodeSessions, OUTBOUND_BUFFER, SessionHandler, or_default};
use super::{ApiError, token_hash, validate};
use crate::auth::{self, Principal, audit};
use crate::controller::{AttachedNode, NodeRegistry};
use crate::store::{DynStore, NodeRegistration, Revision};
use crate::watch::{HubChange, WatchHub, Watched};
use chrono::Utc;
use futures::future::BoxFuture;
use hangar::domain::duration_to_proto;
use hangar::domain::{BackendState, NodeKind, NodeResources, timestamp_to_proto};
use hangar::v1::{self, proxy_service_server::ProxyService};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

/// Label on proxy nodes with the base URL clients reach them at.
pub const PUBLIC_URL_LABEL: &str = "hangar.dev/public-url";

/// `ProxyService`: proxies register here as PROXY nodes.
#[derive(Clone)]
pub struct ProxyApi {
    sessions: NodeSessions,
    hub: WatchHub,
}

impl ProxyApi {
    pub fn new(
        registry: Arc<NodeRegistry>,
        store: DynStore,
        hub: WatchHub,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        ProxyApi { sessions: NodeSessions { registry, store, tasks, shutdown }, hub }
    }
}

/// One proxy's stream: heartbeats, traffic reports for the idle sweep, and route invalidations
/// for backends that terminated (on any controller). The invalidations come from the watch hub,
/// which reads each commit once for every watcher and proxy (docs/design/drone-link.md#wake-ups):
/// no store read per proxy per commit.
struct ProxySession {
    registry: Arc<NodeRegistry>,
    store: DynStore,
    attached: AttachedNode,
    /// The invalidation feed, until the session takes it as its companion.
    invalidations: Option<BoxFuture<'static, ()>>,
}

/// Backend ids one traffic report may carry; a proxy reports per interval, so more is a bug.
const MAX_TRAFFIC_IDS: usize = 10_000;

/// The longest `LookupRoute.wait_for_ready` honoured: a proxy waiting longer asks again.
const MAX_ROUTE_WAIT: Duration = Duration::from_secs(30);

#[tonic::async_trait]
impl SessionHandler<v1::ProxyAttachRequest> for ProxySession {
    async fn message(&mut self, message: v1::ProxyAttachRequest) -> Result<(), ApiError> {
        use v1::proxy_attach_request::Message;
        match message.message {
            Some(Message::Heartbeat(hb)) => {
                let resources = hb.resources.as_ref().map(NodeResources::from).unwrap_or_default();
                self.registry.heartbeat(&self.attached, resources, 0);
                Ok(())
            }
            Some(Message::Hello(_)) => Err(ApiError::Protocol("hello sent twice on one stream".into())),
            Some(Message::Traffic(report)) => {
                if report.backend_ids.len() > MAX_TRAFFIC_IDS {
                    return Err(ApiError::Protocol(format!(
                        "a traffic report names at most {MAX_TRAFFIC_IDS} backends"
                    )));
                }
                for (i, id) in report.backend_ids.iter().enumerate() {
                    validate::id(&format!("traffic.backend_ids[{i}]"), id)?;
                }
                self.store.record_activity(&report.backend_ids, Utc::now()).await?;
                Ok(())
            }
            None => Err(ApiError::Protocol("empty message".into())),
        }
    }

    fn companion(&mut self) -> Option<BoxFuture<'static, ()>> {
        self.invalidations.take()
    }
}

/// Sends the proxy a route invalidation for every backend change to TERMINATING or beyond after
/// `seen`, as the hub fans changes out, until the proxy's stream closes or the hub stops. A proxy
/// that falls behind the hub's live fan-out catches up from its ring (or, past the ring, from
/// the store) and goes on.
async fn invalidations(
    hub: WatchHub,
    mut seen: Revision,
    outbound: queue::Sender<Result<v1::ProxyAttachResponse, Status>>,
) {
    use v1::proxy_attach_response::Message as Reply;
    let invalidate = |change: &HubChange| match &change.object {
        Watched::Backend { backend, .. } if backend.status.state >= BackendState::Terminating => {
            let invalidation = v1::RouteInvalidation { backend_id: backend.id.clone() };
            Some(v1::ProxyAttachResponse { message: Some(Reply::Invalidate(invalidation)) })
        }
        _ => None,
    };
    loop {
        let mut feed = match hub.subscribe(seen).await {
            Ok(feed) => feed,
            Err(err) => {
                // E.g. compacted past `seen` after a long stall: nothing to replay; go on live.
                tracing::warn!(error = %err, after = seen, "proxy invalidation feed cannot resume; going on from the hub's cursor");
                seen = hub.cursor();
                tokio::select! {
                    _ = outbound.closed() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => continue,
                }
            }
        };
        for change in feed.backlog.drain(..) {
            seen = change.revision;
            if let Some(message) = invalidate(&change)
                && outbound.send(Ok(message)).await.is_err()
            {
                return;
            }
        }
        loop {
            let change = tokio::select! {
                _ = outbound.closed() => return,
                change = feed.live.recv() => change,
            };
            let Some(change) = change else { break };
            seen = change.revision;
            if let Some(message) = invalidate(&change)
                && outbound.send(Ok(message)).await.is_err()
            {
                return;
            }
        }
        if !feed.overflowed.load(std::sync::atomic::Ordering::Acquire) {
            // The hub stopped (shutdown).
            return;
        }
    }
}

fn proxy_registration(hello: &v1::ProxyHello) -> Result<NodeRegistration, ApiError> {
    let mut violations = validate::Violations::default();
    violations
        .absorb("hello.name", validate::name("hello.name", &hello.name))
        .absorb("hello.cluster", validate::filter_name("hello.cluster", &hello.cluster))
        .absorb("hello.labels", validate::labels("hello.labels", &hello.labels))
        .absorb("hello.version", validate::version("hello.version", &hello.version))
        .absorb("hello.public_url", validate::url("hello.public_url", &hello.public_url));
    violations.into_result()?;
    let mut labels: std::collections::BTreeMap<_, _> = hello.labels.clone().into_iter().collect();
    if !hello.public_url.is_empty() {
        labels.insert(PUBLIC_URL_LABEL.into(), hello.public_url.clone());
    }
    Ok(NodeRegistration {
        kind: NodeKind::Proxy,
        name: hello.name.clone(),
        cluster: or_default(&hello.cluster),
        pool: "default".into(),
        labels,
        version: hello.version.clone(),
        backend_capacity: 0,
        resources: hello.resources.as_ref().map(NodeResources::from).unwrap_or_default(),
    })
}

type ProxyStream = queue::Receiver<Result<v1::ProxyAttachResponse, Status>>;

/// The method an audit line names for an attach.
const ATTACH: &str = "hangar.v1.ProxyService/Attach";

impl ProxyApi {
    /// The proxy's first message, which must be its Hello.
    async fn hello(&self, inbound: &mut Streaming<v1::ProxyAttachRequest>) -> Result<v1::ProxyHello, ApiError> {
        match self.sessions.first(inbound).await?.message {
            Some(v1::proxy_attach_request::Message::Hello(hello)) => Ok(hello),
            _ => Err(ApiError::Protocol("a proxy's first message must be a hello".into())),
        }
    }

    /// A proxy's stream after its Hello: a Welcome and a session until the stream ends. Returns
    /// the node id too, for the audit line.
    async fn attach(
        &self,
        principal: &Principal,
        hello: &v1::ProxyHello,
        inbound: Streaming<v1::ProxyAttachRequest>,
    ) -> Result<(String, ProxyStream), ApiError> {
        use v1::proxy_attach_response::Message as Reply;

        if !principal.may_attach_as(&hello.name) {
            return Err(ApiError::NodeNotAllowed { node: hello.name.clone() });
        }
        let registration = proxy_registration(hello)?;
        let registry = &self.sessions.registry;
        // In line behind other attaches while a fleet reconnects; held through the first
        // store read below.
        let admitted = registry.admit().await?;
        let (node, attached) = registry.attach(registration).await?;
        tracing::info!(node_id = %node.id, name = %node.name, "proxy attached");

        let (tx, rx) = queue::channel(OUTBOUND_BUFFER);
        let welcome = v1::ProxyWelcome {
            node_id: node.id.clone(),
            controller_id: registry.controller_id().to_string(),
            heartbeat_interval: Some(duration_to_proto(registry.config().heartbeat_interval)),
        };
        tx.try_send(Ok(v1::ProxyAttachResponse { message: Some(Reply::Welcome(welcome)) }))
            .expect("a fresh channel has room");
        let seen = self.hub.cursor();
        let session = ProxySession {
            registry: registry.clone(),
            store: self.sessions.store.clone(),
            attached: attached.clone(),
            invalidations: Some(Box::pin(invalidations(self.hub.clone(), seen, tx.clone()))),
        };
        drop(admitted);
        self.sessions.spawn(attached, inbound, tx, session);
        Ok((node.id, rx))
    }

    /// The route behind a connection token, for the proxy to forward a request.
    async fn lookup_route(&self, req: v1::LookupRouteRequest) -> Result<v1::LookupRouteResponse, ApiError> {
        let token = req.token;
        if token.is_empty() || token.len() > 512 {
            return Err(ApiError::invalid("token", "must be 1–512 characters"));
        }
        let wait = match &req.wait_for_ready {
            None => Duration::ZERO,
            Some(d) => hangar::domain::duration_from_proto(d)
                .ok_or_else(|| ApiError::invalid("wait_for_ready", "must be a duration of at least 0"))?
                .min(MAX_ROUTE_WAIT),
        };
        let hash = token_hash(&token);
        let deadline = tokio::time::Instant::now() + wait;
        let mut route = self.sessions.store.token_route(&hash, Utc::now()).await?.ok_or(ApiError::TokenNotFound)?;
        // Still starting: wait for the backend's next change (READY, or its end), not a poll;
        // registered before reading again, so a change in between is not missed.
        while route.backend.status.state < BackendState::Ready && tokio::time::Instant::now() < deadline {
            let changed = self.hub.next_backend_change(&route.backend.id);
            route = self.sessions.store.token_route(&hash, Utc::now()).await?.ok_or(ApiError::TokenNotFound)?;
            if route.backend.status.state >= BackendState::Ready {
                break;
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.sessions.shutdown.cancelled() => break,
            }
        }
        let backend = route.backend;
        Ok(v1::LookupRouteResponse {
            backend_id: backend.id,
            state: backend.status.state.to_proto() as i32,
            address: backend.address,
            user: route.user,
            auth: route.auth.into_iter().collect(),
            expires_at: route.expires_at.map(timestamp_to_proto),
        })
    }
}

#[tonic::async_trait]
impl ProxyService for ProxyApi {
    type AttachStream = ProxyStream;

    async fn attach(&self, req: Request<Streaming<v1::ProxyAttachRequest>>) -> Result<Response<ProxyStream>, Status> {
        let principal = auth::principal(&req);
        let mut inbound = req.into_inner();
        let hello = self.hello(&mut inbound).await?;
        let result = ProxyApi::attach(self, &principal, &hello, inbound).await.map_err(Status::from);
        let node_id = result.as_ref().ok().map(|(id, _)| id.as_str());
        let target = audit::Target { node: Some(&hello.name), node_id, ..Default::default() };
        audit::record(&principal, ATTACH, target, &audit::outcome(&result));
        Ok(Response::new(result?.1))
    }

    async fn lookup_route(
        &self,
        req: Request<v1::LookupRouteRequest>,
    ) -> Result<Response<v1::LookupRouteResponse>, Status> {
        Ok(Response::new(ProxyApi::lookup_route(self, req.into_inner()).await?))
    }
}
