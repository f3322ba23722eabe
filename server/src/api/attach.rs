//! The long-lived node streams: `DroneService.Attach` and `ProxyService.Attach`. Both follow one
//! session shape: a Hello, a Welcome with the node id, then heartbeats until the stream ends, the
//! node goes silent, a newer stream of the same node replaces it, or the controller shuts down.

use super::{ApiError, validate};
use crate::controller::{AttachedNode, NodeRegistry};
use crate::store::NodeRegistration;
use hangar::domain::{NodeKind, NodeResources, duration_to_proto};
use hangar::v1::{self, drone_service_server::DroneService, proxy_service_server::ProxyService};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

/// Label on drone nodes naming the runtime their backends run on ("docker", "process", "mock").
pub const RUNTIME_LABEL: &str = "hangar.dev/runtime";
/// Label on proxy nodes with the base URL clients reach them at.
pub const PUBLIC_URL_LABEL: &str = "hangar.dev/public-url";

/// Outbound messages queued per stream before the session stops reading from its node.
const OUTBOUND_BUFFER: usize = 64;

/// What the drone and proxy links share: the registry, and the owner of their session tasks.
#[derive(Clone)]
struct Sessions {
    registry: Arc<NodeRegistry>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Sessions {
    /// Waits for the first message, which must come within the hello timeout.
    async fn first<M>(&self, inbound: &mut Streaming<M>) -> Result<M, Status> {
        let timeout = self.registry.config().hello_timeout;
        match tokio::time::timeout(timeout, inbound.message()).await {
            Err(_) => Err(ApiError::Protocol(format!("no hello within {timeout:?}")).into()),
            Ok(Err(status)) => Err(status),
            Ok(Ok(None)) => Err(ApiError::Protocol("the stream ended before its hello".into()).into()),
            Ok(Ok(Some(message))) => Ok(message),
        }
    }

    /// Reads the node's messages until the session ends, then records the node offline.
    fn spawn<M, R>(
        &self,
        attached: AttachedNode,
        mut inbound: Streaming<M>,
        outbound: mpsc::Sender<Result<R, Status>>,
        mut handle: impl FnMut(&NodeRegistry, &AttachedNode, M) -> Result<(), ApiError> + Send + 'static,
    ) where
        M: Send + 'static,
        R: Send + 'static,
    {
        let this = self.clone();
        self.tasks.spawn(async move {
            let end: Option<Status> = loop {
                tokio::select! {
                    _ = this.shutdown.cancelled() => break Some(ApiError::ShuttingDown.into()),
                    _ = attached.closed.cancelled() => break Some(Status::unavailable(
                        "stream closed by the controller: the node was silent too long or attached again elsewhere",
                    )),
                    message = inbound.message() => match message {
                        Ok(Some(message)) => {
                            if let Err(err) = handle(&this.registry, &attached, message) {
                                break Some(err.into());
                            }
                        }
                        Ok(None) => break None,
                        Err(status) => {
                            tracing::debug!(node_id = %attached.node_id, %status, "node stream failed");
                            break None;
                        }
                    },
                }
            };
            if let Some(status) = end {
                // The node may already be gone; nobody is left to tell then.
                let _ = outbound.try_send(Err(status));
            }
            drop(outbound);
            this.registry.detach(&attached).await;
        });
    }
}

fn registration_error(err: crate::store::StoreError) -> Status {
    ApiError::from(err).into()
}

/// `DroneService`: drones attach here.
#[derive(Clone)]
pub struct DroneLink {
    sessions: Sessions,
}

impl DroneLink {
    pub fn new(registry: Arc<NodeRegistry>, tasks: TaskTracker, shutdown: CancellationToken) -> Self {
        DroneLink { sessions: Sessions { registry, tasks, shutdown } }
    }
}

fn drone_registration(hello: &v1::DroneHello) -> Result<NodeRegistration, ApiError> {
    let mut violations = Vec::new();
    let mut check = |r: Result<(), ApiError>| {
        if let Err(ApiError::InvalidArgument(v)) = r {
            violations.extend(v);
        }
    };
    check(validate::name("hello.name", &hello.name));
    check(validate::name_or_default("hello.cluster", &hello.cluster, "default").map(drop));
    check(validate::name_or_default("hello.pool", &hello.pool, "default").map(drop));
    check(validate::labels("hello.labels", &hello.labels));
    if hello.backend_capacity == 0 {
        violations.push(("hello.backend_capacity".into(), "must be at least 1".into()));
    }
    if !violations.is_empty() {
        return Err(ApiError::InvalidArgument(violations));
    }
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

fn or_default(value: &str) -> String {
    if value.is_empty() { "default".to_string() } else { value.to_string() }
}

#[tonic::async_trait]
impl DroneService for DroneLink {
    type AttachStream = ReceiverStream<Result<v1::DroneAttachResponse, Status>>;

    async fn attach(
        &self,
        req: Request<Streaming<v1::DroneAttachRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        use v1::drone_attach_request::Message;
        use v1::drone_attach_response::Message as Reply;

        let mut inbound = req.into_inner();
        let hello = match self.sessions.first(&mut inbound).await?.message {
            Some(Message::Hello(hello)) => hello,
            _ => return Err(ApiError::Protocol("a drone's first message must be a hello".into()).into()),
        };
        let registration = drone_registration(&hello)?;
        let registry = &self.sessions.registry;
        let (node, attached) = registry.attach(registration).await.map_err(registration_error)?;
        tracing::info!(node_id = %node.id, name = %node.name, cluster = %node.cluster, "drone attached");

        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let welcome = v1::Welcome {
            node_id: node.id.clone(),
            controller_id: registry.controller_id().to_string(),
            heartbeat_interval: Some(duration_to_proto(registry.config().heartbeat_interval)),
        };
        tx.try_send(Ok(v1::DroneAttachResponse { message: Some(Reply::Welcome(welcome)) }))
            .expect("a fresh channel has room");
        self.sessions.spawn(attached, inbound, tx, |registry, attached, message: v1::DroneAttachRequest| {
            match message.message {
                Some(Message::Heartbeat(hb)) => {
                    let resources = hb.resources.as_ref().map(NodeResources::from).unwrap_or_default();
                    registry.heartbeat(attached, resources, hb.backend_count);
                    Ok(())
                }
                Some(Message::Hello(_)) => Err(ApiError::Protocol("hello sent twice on one stream".into())),
                // Backend events, action acks and key renewals belong to the backend lifecycle,
                // which this controller version does not run yet.
                Some(other) => {
                    tracing::debug!(node_id = %attached.node_id, ?other, "ignoring backend message");
                    Ok(())
                }
                None => Err(ApiError::Protocol("empty message".into())),
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// `ProxyService`: proxies register here as PROXY nodes.
#[derive(Clone)]
pub struct ProxyLink {
    sessions: Sessions,
}

impl ProxyLink {
    pub fn new(registry: Arc<NodeRegistry>, tasks: TaskTracker, shutdown: CancellationToken) -> Self {
        ProxyLink { sessions: Sessions { registry, tasks, shutdown } }
    }
}

fn proxy_registration(hello: &v1::ProxyHello) -> Result<NodeRegistration, ApiError> {
    validate::name("hello.name", &hello.name)?;
    validate::name_or_default("hello.cluster", &hello.cluster, "default")?;
    validate::labels("hello.labels", &hello.labels)?;
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

#[tonic::async_trait]
impl ProxyService for ProxyLink {
    type AttachStream = ReceiverStream<Result<v1::ProxyAttachResponse, Status>>;

    async fn attach(
        &self,
        req: Request<Streaming<v1::ProxyAttachRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        use v1::proxy_attach_request::Message;
        use v1::proxy_attach_response::Message as Reply;

        let mut inbound = req.into_inner();
        let hello = match self.sessions.first(&mut inbound).await?.message {
            Some(Message::Hello(hello)) => hello,
            _ => return Err(ApiError::Protocol("a proxy's first message must be a hello".into()).into()),
        };
        let registration = proxy_registration(&hello)?;
        let registry = &self.sessions.registry;
        let (node, attached) = registry.attach(registration).await.map_err(registration_error)?;
        tracing::info!(node_id = %node.id, name = %node.name, "proxy attached");

        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let welcome =
            v1::ProxyWelcome { node_id: node.id.clone(), controller_id: registry.controller_id().to_string() };
        tx.try_send(Ok(v1::ProxyAttachResponse { message: Some(Reply::Welcome(welcome)) }))
            .expect("a fresh channel has room");
        self.sessions.spawn(attached, inbound, tx, |registry, attached, message: v1::ProxyAttachRequest| {
            match message.message {
                Some(Message::Heartbeat(hb)) => {
                    let resources = hb.resources.as_ref().map(NodeResources::from).unwrap_or_default();
                    registry.heartbeat(attached, resources, 0);
                    Ok(())
                }
                Some(Message::Hello(_)) => Err(ApiError::Protocol("hello sent twice on one stream".into())),
                // Traffic reports feed the idle sweep of the backend lifecycle.
                Some(Message::Traffic(_)) => Ok(()),
                None => Err(ApiError::Protocol("empty message".into())),
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lookup_route(
        &self,
        _req: Request<v1::LookupRouteRequest>,
    ) -> Result<Response<v1::LookupRouteResponse>, Status> {
        Err(Status::unimplemented("LookupRoute is not served by this controller version yet"))
    }
}
