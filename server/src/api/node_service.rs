//! NodeService: list, get, drain and undrain nodes.

use super::page_token::PageCursor;
use super::{ApiError, PageTokens, validate};
use crate::auth::{self, audit};
use crate::controller::NodeRegistry;
use crate::store::{DynStore, NodeUpdate, StoreError, UpdateCondition};
use crate::watch::{NodeWatch, WatchHub, WatchRequest, Watched};
use chrono::Utc;
use futures::TryStreamExt;
use hangar::domain::{DURATION_MAX, Node, NodeFilter, NodeKind, duration_from_proto, timestamp_to_proto};
use hangar::v1::{self, node_service_server::NodeService};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The node API, free of transport concerns; [`NodeService`] below adapts it to tonic.
#[derive(Clone)]
pub struct NodeApi {
    store: DynStore,
    tokens: PageTokens,
    hub: WatchHub,
    /// Live heartbeat times of the nodes attached to this controller.
    registry: Arc<NodeRegistry>,
}

/// Shortest bookmark interval a client may ask for: bookmarks are for quiet streams, not a clock.
pub(super) const MIN_BOOKMARK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// Longest bookmark interval: a day of quiet is as long as a bookmark is worth waiting for.
pub(super) const MAX_BOOKMARK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl NodeApi {
    pub fn new(store: DynStore, tokens: PageTokens, hub: WatchHub, registry: Arc<NodeRegistry>) -> Self {
        NodeApi { store, tokens, hub, registry }
    }

    /// Validates a watch request; the stream itself reports a compacted start revision.
    pub fn watch_nodes(&self, req: v1::WatchNodesRequest) -> Result<EventStream, ApiError> {
        let filter = node_filter(req.filter.as_ref())?;
        let bookmark_interval = validate::duration(
            "bookmark_interval",
            req.bookmark_interval.as_ref(),
            MIN_BOOKMARK_INTERVAL,
            MAX_BOOKMARK_INTERVAL,
        )?;
        if req.send_initial && req.start_revision != 0 {
            return Err(ApiError::invalid(
                "start_revision",
                "send_initial starts from the snapshot's revision; leave start_revision 0 with it",
            ));
        }
        let request = WatchRequest {
            filter,
            start_revision: req.start_revision,
            send_initial: req.send_initial,
            bookmark_interval,
        };
        Ok(Box::pin(NodeWatch::stream(self.hub.clone(), request).map_err(Status::from)))
    }

    pub async fn list_nodes(&self, req: v1::ListNodesRequest) -> Result<v1::ListNodesResponse, ApiError> {
        let page_size = validate::page_size(req.page_size)?;
        let filter = node_filter(req.filter.as_ref())?;
        let digest = PageTokens::filter_digest(&filter);
        let cursor = if req.page_token.is_empty() { None } else { Some(self.tokens.decode(&req.page_token, &digest)?) };
        let (at, after) = match &cursor {
            Some(c) => (Some(c.revision), Some(c.after.as_str())),
            None => (None, None),
        };
        // Served from the hub's node view (nodes encoded once) when it has reached the revision;
        // from the store otherwise (docs/design/nodes-and-watch.md#listing).
        let page = self.hub.list_nodes(&filter, at, after, page_size).await.map_err(|err| match err {
            StoreError::Compacted { requested, oldest } if cursor.is_some() => {
                ApiError::PageTokenExpired { requested, oldest }
            }
            StoreError::FutureRevision { .. } if cursor.is_some() => {
                ApiError::InvalidPageToken("names a revision this cluster has not reached".into())
            }
            other => other.into(),
        })?;
        let listed: Vec<_> = page
            .nodes
            .iter()
            .filter_map(|change| match &change.object {
                Watched::Node { node, listed, live, .. } => Some((node, listed, live)),
                Watched::Backend { .. } => None,
            })
            .collect();
        let next_page_token = match listed.last() {
            Some((last, _, _)) if page.more => self.tokens.encode(&PageCursor {
                revision: page.revision,
                after: last.id.clone(),
                filter_digest: digest,
            }),
            _ => String::new(),
        };
        // The one field not read at the snapshot: the live heartbeat time of the nodes attached
        // here, put into each node's bytes without encoding it again.
        let heartbeats = self.registry.listed_heartbeat_times(listed.iter().map(|(node, _, live)| (*node, *live)));
        let listed = listed
            .iter()
            .zip(heartbeats)
            .map(|((_, listed, _), at)| listed.with_heartbeat(Some(timestamp_to_proto(at))))
            .collect();
        Ok(v1::ListNodesResponse { nodes: Vec::new(), next_page_token, revision: page.revision, listed })
    }

    pub async fn get_node(&self, req: v1::GetNodeRequest) -> Result<v1::GetNodeResponse, ApiError> {
        validate::id("id", &req.id)?;
        let mut node = self.store.get_node(&req.id).await?.ok_or_else(|| ApiError::NodeNotFound(req.id.clone()))?;
        self.registry.show_live_heartbeats(std::slice::from_mut(&mut node));
        Ok(v1::GetNodeResponse { node: Some((&node).into()) })
    }

    /// Marks a drone draining. Enforcing the deadline on its backends belongs to the backend
    /// lifecycle; here the deadline is recorded on the node.
    pub async fn drain_node(&self, req: v1::DrainNodeRequest) -> Result<v1::DrainNodeResponse, ApiError> {
        validate::id("id", &req.id)?;
        // Zero is a deadline too: now.
        let deadline = match &req.deadline {
            None => None,
            Some(d) => {
                let d = duration_from_proto(d).filter(|d| *d <= DURATION_MAX).ok_or_else(|| {
                    ApiError::invalid("deadline", "must be a non-negative duration of at most 10 years")
                })?;
                Some(Utc::now() + chrono::Duration::from_std(d).expect("ten years fit in a chrono duration"))
            }
        };
        let node = self.update_drone(&req.id, NodeUpdate::drain(deadline)).await?;
        tracing::info!(node_id = %node.id, ?deadline, "node draining");
        Ok(v1::DrainNodeResponse { node: Some((&node).into()) })
    }

    /// Clears a drone's drain and its deadline. Idempotent: a drone that is not draining is
    /// returned as it is, and no revision is written.
    pub async fn undrain_node(&self, req: v1::UndrainNodeRequest) -> Result<v1::UndrainNodeResponse, ApiError> {
        validate::id("id", &req.id)?;
        let node = self.update_drone(&req.id, NodeUpdate::undrain()).await?;
        tracing::info!(node_id = %node.id, state = %node.state, "node undrained");
        Ok(v1::UndrainNodeResponse { node: Some((&node).into()) })
    }

    /// Applies a drain or undrain: NOT_FOUND for an unknown id, FAILED_PRECONDITION for a proxy.
    async fn update_drone(&self, id: &str, update: NodeUpdate) -> Result<Node, ApiError> {
        let node = self.store.get_node(id).await?.ok_or_else(|| ApiError::NodeNotFound(id.to_string()))?;
        if node.kind != NodeKind::Drone {
            return Err(ApiError::NodeNotDrone(id.to_string()));
        }
        self.store
            .update_node(id, update, UpdateCondition::Always)
            .await?
            .ok_or_else(|| ApiError::NodeNotFound(id.to_string()))
    }
}

fn node_filter(filter: Option<&v1::NodeFilter>) -> Result<NodeFilter, ApiError> {
    let Some(filter) = filter else { return Ok(NodeFilter::default()) };
    let mut violations = validate::Violations::default();
    violations
        .absorb("filter.kinds", validate::filter_values("filter.kinds", filter.kinds.len()))
        .absorb("filter.states", validate::filter_values("filter.states", filter.states.len()))
        .absorb("filter.cluster", validate::filter_name("filter.cluster", &filter.cluster))
        .absorb("filter.pool", validate::filter_name("filter.pool", &filter.pool))
        .absorb("filter.labels", validate::labels("filter.labels", &filter.labels));
    violations.into_result()?;
    NodeFilter::from_proto(filter).map_err(|(field, message)| ApiError::invalid(field, message))
}

pub type EventStream = Pin<Box<dyn futures::Stream<Item = Result<v1::WatchNodesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn list_nodes(&self, req: Request<v1::ListNodesRequest>) -> Result<Response<v1::ListNodesResponse>, Status> {
        Ok(Response::new(NodeApi::list_nodes(self, req.into_inner()).await?))
    }

    async fn get_node(&self, req: Request<v1::GetNodeRequest>) -> Result<Response<v1::GetNodeResponse>, Status> {
        Ok(Response::new(NodeApi::get_node(self, req.into_inner()).await?))
    }

    async fn drain_node(&self, req: Request<v1::DrainNodeRequest>) -> Result<Response<v1::DrainNodeResponse>, Status> {
        let principal = auth::principal(&req);
        let req = req.into_inner();
        let node_id = req.id.clone();
        let result = NodeApi::drain_node(self, req).await.map_err(Status::from);
        let target = audit::Target { node_id: Some(&node_id), ..Default::default() };
        audit::record(&principal, "hangar.v1.NodeService/DrainNode", target, &audit::outcome(&result));
        Ok(Response::new(result?))
    }

    async fn undrain_node(
        &self,
        req: Request<v1::UndrainNodeRequest>,
    ) -> Result<Response<v1::UndrainNodeResponse>, Status> {
        let principal = auth::principal(&req);
        let req = req.into_inner();
        let node_id = req.id.clone();
        let result = NodeApi::undrain_node(self, req).await.map_err(Status::from);
        let target = audit::Target { node_id: Some(&node_id), ..Default::default() };
        audit::record(&principal, "hangar.v1.NodeService/UndrainNode", target, &audit::outcome(&result));
        Ok(Response::new(result?))
    }

    type WatchNodesStream = EventStream;

    async fn watch_nodes(&self, req: Request<v1::WatchNodesRequest>) -> Result<Response<EventStream>, Status> {
        Ok(Response::new(NodeApi::watch_nodes(self, req.into_inner())?))
    }
}
