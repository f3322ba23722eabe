//! One watch stream: the initial snapshot or replay, then live changes seen through the
//! stream's filter. The live phase is the same for every kind ([`Live`]); what a kind adds is a
//! [`Lens`] (which changes it shows, as which event) and its setup (`NodeWatch::stream` here,
//! `BackendWatch::stream` in `backends.rs`).

use super::hub::{HubChange, Subscription, WatchHub, Watched};
use crate::api::ApiError;
use crate::metrics::{WatchKind, WatchSeries};
use crate::store::{ChangeKind, Revision, StoreError};
use futures::Stream;
use hangar::domain::NodeFilter;
use hangar::v1::{self, NodeEventType};
use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::mpsc;

/// Nodes per snapshot page while sending the initial state.
const SNAPSHOT_PAGE: usize = 500;

/// A watch request of either kind, validated: `F` is its filter.
#[derive(Debug, Clone)]
pub struct WatchRequest<F = NodeFilter> {
    pub filter: F,
    /// Deliver every change after this revision; 0 = from now.
    pub start_revision: Revision,
    pub send_initial: bool,
    pub bookmark_interval: Option<Duration>,
}

/// Which nodes of the filter this stream has shown as present, for filters a node can enter and
/// leave (state, pool, labels change; kind and cluster do not). `None` when the filter only looks
/// at fixed fields: a node's match never changes then, so no set is needed.
type View = Option<HashSet<String>>;

fn needs_view(filter: &NodeFilter) -> bool {
    !filter.states.is_empty() || filter.pool.is_some() || !filter.labels.is_empty()
}

pub struct NodeWatch;

/// How one kind of watch sees the hub's changes.
pub(super) trait Lens: Send + 'static {
    type Response: Send + 'static;
    /// The event this stream sends for `change`, if any; changes of another kind are none.
    fn classify(&mut self, change: &HubChange) -> Option<Self::Response>;
    /// A BOOKMARK at `revision`.
    fn bookmark(&self, revision: Revision) -> Self::Response;
}

/// `WatchNodes`: the node filter and, for filters a node can leave, the nodes shown.
struct NodeLens {
    filter: NodeFilter,
    view: View,
}

impl Lens for NodeLens {
    type Response = v1::WatchNodesResponse;

    fn classify(&mut self, change: &HubChange) -> Option<v1::WatchNodesResponse> {
        let Watched::Node { encoded, .. } = &change.object else { return None };
        let kind = classify(&self.filter, &mut self.view, change)?;
        // The node's bytes as the hub encoded them once: a reference count per stream.
        Some(v1::WatchNodesResponse::shared(kind, Some(encoded.clone()), change.revision))
    }

    fn bookmark(&self, revision: Revision) -> v1::WatchNodesResponse {
        event(NodeEventType::Bookmark, None, revision)
    }
}

fn event(kind: NodeEventType, node: Option<v1::Node>, revision: Revision) -> v1::WatchNodesResponse {
    v1::WatchNodesResponse::new(v1::NodeEvent { r#type: kind as i32, node, revision })
}

impl NodeWatch {
    /// The event stream for one request. Errors before the first event (a compacted start
    /// revision) arrive as the stream's first item.
    pub fn stream(hub: WatchHub, request: WatchRequest) -> WatchStream<v1::WatchNodesResponse> {
        let setup = async_stream::stream! {
            let store = hub.store().clone();
            let filter = request.filter;
            let mut view: View = needs_view(&filter).then(HashSet::new);

            // Where live delivery starts, and the initial events before it.
            let start = if request.send_initial {
                let mut after: Option<String> = None;
                let mut at: Option<Revision> = None;
                loop {
                    // The hub's node view when it can answer: each node's bytes as encoded once.
                    let page = match hub.list_nodes(&filter, at, after.as_deref(), SNAPSHOT_PAGE).await {
                        Ok(page) => page,
                        Err(err) => { yield Err(ApiError::from(err)); return; }
                    };
                    at = Some(page.revision);
                    for change in &page.nodes {
                        let Watched::Node { node, encoded, .. } = &change.object else { continue };
                        if let Some(view) = view.as_mut() {
                            view.insert(node.id.clone());
                        }
                        let added = v1::WatchNodesResponse::shared(NodeEventType::Added, Some(encoded.clone()), node.revision);
                        yield Ok(Step::Event(added));
                        after = Some(node.id.clone());
                    }
                    if !page.more || page.nodes.is_empty() {
                        break;
                    }
                }
                let revision = at.unwrap_or_default();
                yield Ok(Step::Event(event(NodeEventType::SnapshotEnd, None, revision)));
                revision
            } else {
                let start = if request.start_revision == 0 {
                    match store.current_revision().await {
                        Ok(r) => r,
                        Err(err) => { yield Err(ApiError::from(err)); return; }
                    }
                } else {
                    request.start_revision
                };
                // The view must describe the world as of `start`.
                if let Some(view) = view.as_mut()
                    && let Err(err) = seed_view(&hub, &filter, start, view).await
                {
                    yield Err(ApiError::from(err));
                    return;
                }
                start
            };

            let subscription = match hub.subscribe(start).await {
                Ok(subscription) => subscription,
                Err(err) => { yield Err(ApiError::from(err)); return; }
            };
            let lens: Box<dyn Lens<Response = v1::WatchNodesResponse>> = Box::new(NodeLens { filter, view });
            yield Ok(Step::Live(Live::new(hub, subscription, start, lens, request.bookmark_interval)));
        };
        WatchStream::new(WatchKind::Nodes, Box::pin(setup))
    }
}

/// What the setup phase produces: events of the initial snapshot, then the live feed that
/// follows them.
pub(super) enum Step<R> {
    Event(R),
    Live(Live<R>),
}

pub(super) type Setup<R> = Pin<Box<dyn Stream<Item = Result<Step<R>, ApiError>> + Send>>;

/// An event, or the error that ends the stream (the service turns it into its status).
type Item<R> = Result<R, ApiError>;

/// A watch stream: the setup phase (async, runs once), then the live phase, written as a plain
/// `poll_next` because it runs once per change per watcher.
pub struct WatchStream<R> {
    phase: Phase<R>,
    /// Its kind's series (open, delivered, cut off), taken when it opened so that the open
    /// gauge it raised is the one it lowers when it ends.
    series: Option<&'static WatchSeries>,
}

impl<R> Drop for WatchStream<R> {
    fn drop(&mut self) {
        if let Some(series) = self.series {
            series.open.decrement(1);
        }
    }
}

enum Phase<R> {
    Setup(Setup<R>),
    Live(Box<Live<R>>),
    /// After the last item, an error included.
    Done,
}

impl<R: Send + 'static> WatchStream<R> {
    pub(super) fn new(kind: WatchKind, setup: Setup<R>) -> Self {
        let series = crate::metrics::watch_series(kind);
        if let Some(series) = series {
            series.open.increment(1);
        }
        WatchStream { phase: Phase::Setup(setup), series }
    }
}

impl<R: Send + 'static> Stream for WatchStream<R> {
    type Item = Item<R>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item<R>>> {
        let this = &mut *self;
        loop {
            let item = match &mut this.phase {
                Phase::Setup(setup) => match ready!(setup.as_mut().poll_next(cx)) {
                    Some(Ok(Step::Event(event))) => {
                        if let Some(series) = this.series {
                            series.delivered.increment(1);
                        }
                        return Poll::Ready(Some(Ok(event)));
                    }
                    Some(Ok(Step::Live(live))) => {
                        this.phase = Phase::Live(Box::new(live));
                        continue;
                    }
                    Some(Err(err)) => Some(Err(err)),
                    None => None,
                },
                Phase::Live(live) => ready!(live.poll_next(cx)),
                Phase::Done => None,
            };
            if let Some(series) = this.series {
                match &item {
                    Some(Ok(_)) => series.delivered.increment(1),
                    Some(Err(ApiError::WatchTooSlow { .. })) => series.cut_off.increment(1),
                    _ => {}
                }
            }
            if !matches!(item, Some(Ok(_))) {
                this.phase = Phase::Done;
            }
            return Poll::Ready(item);
        }
    }
}

/// The live phase of one stream: the history it asked for, then changes as the hub fans them
/// out, each seen through the stream's filter.
///
/// When its queue overflows (the client reads slowly, or the controller is busier than it can
/// fan out), the hub takes it out of the live fan-out; once it has sent what it holds, it
/// catches up from the hub's ring and rejoins. It ends with [`ApiError::WatchTooSlow`] when the
/// ring no longer reaches back to it, and with [`ApiError::ShuttingDown`] when the hub stopped;
/// both name the last revision this stream delivered, to resume from.
pub(super) struct Live<R> {
    hub: WatchHub,
    backlog: VecDeque<Arc<HubChange>>,
    live: mpsc::Receiver<Arc<HubChange>>,
    overflowed: Arc<AtomicBool>,
    /// Everything up to here has been delivered or skipped on purpose.
    position: Revision,
    lens: Box<dyn Lens<Response = R>>,
    bookmark: Option<tokio::time::Interval>,
}

impl<R: Send + 'static> Live<R> {
    pub(super) fn new(
        hub: WatchHub,
        subscription: Subscription,
        start: Revision,
        lens: Box<dyn Lens<Response = R>>,
        bookmark_interval: Option<Duration>,
    ) -> Live<R> {
        let Subscription { backlog, live, overflowed } = subscription;
        let bookmark = bookmark_interval.map(|every| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        Live { hub, backlog, live, overflowed, position: start, lens, bookmark }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item<R>>> {
        loop {
            let change = match self.backlog.pop_front() {
                Some(change) => change,
                None => match self.live.poll_recv(cx) {
                    Poll::Ready(Some(change)) => change,
                    Poll::Ready(None) if self.overflowed.load(Ordering::Acquire) => {
                        let batch = self.hub.config().watcher_buffer;
                        match self.hub.resume(self.position, batch) {
                            Some(Subscription { backlog, live, overflowed }) => {
                                (self.backlog, self.live, self.overflowed) = (backlog, live, overflowed);
                                continue;
                            }
                            // The ring no longer reaches back to this stream.
                            None => {
                                return Poll::Ready(Some(Err(ApiError::WatchTooSlow { last_revision: self.position })));
                            }
                        }
                    }
                    // The hub stopped: the controller is shutting down.
                    Poll::Ready(None) => {
                        return Poll::Ready(Some(Err(ApiError::ShuttingDown { last_revision: Some(self.position) })));
                    }
                    Poll::Pending => {
                        if let Some(bookmark) = self.bookmark.as_mut()
                            && bookmark.poll_tick(cx).is_ready()
                        {
                            return Poll::Ready(Some(Ok(self.lens.bookmark(self.position))));
                        }
                        return Poll::Pending;
                    }
                },
            };
            if change.revision <= self.position {
                continue;
            }
            self.position = change.revision;
            if let Some(response) = self.lens.classify(&change) {
                if let Some(bookmark) = self.bookmark.as_mut() {
                    bookmark.reset();
                }
                return Poll::Ready(Some(Ok(response)));
            }
        }
    }
}

/// The nodes matching `filter` at revision `at`.
async fn seed_view(
    hub: &WatchHub,
    filter: &NodeFilter,
    at: Revision,
    view: &mut HashSet<String>,
) -> Result<(), StoreError> {
    let mut after: Option<String> = None;
    loop {
        let page = hub.store().list_nodes(filter, Some(at), after.as_deref(), SNAPSHOT_PAGE).await?;
        view.extend(page.nodes.iter().map(|n| n.id.clone()));
        match (page.more, page.nodes.last()) {
            (true, Some(last)) => after = Some(last.id.clone()),
            _ => return Ok(()),
        }
    }
}

/// What this stream should say about `change`, if anything.
fn classify(filter: &NodeFilter, view: &mut View, change: &HubChange) -> Option<NodeEventType> {
    let Watched::Node { node, .. } = &change.object else { return None };
    let matches = change.kind != ChangeKind::Removed && filter.matches(node);
    let Some(view) = view else {
        // Only fixed fields in the filter: the change kind is the event kind.
        return (change.kind == ChangeKind::Removed && filter.matches(node) || matches).then_some(match change.kind {
            ChangeKind::Added => NodeEventType::Added,
            ChangeKind::Modified => NodeEventType::Modified,
            ChangeKind::Removed => NodeEventType::Removed,
        });
    };
    let shown = view.contains(&node.id);
    match (shown, matches) {
        (false, true) => {
            view.insert(node.id.clone());
            Some(NodeEventType::Added)
        }
        (true, true) => Some(NodeEventType::Modified),
        (true, false) => {
            view.remove(&node.id);
            Some(NodeEventType::Removed)
        }
        (false, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use hangar::domain::{Node, NodeKind, NodeResources, NodeState};

    fn change(kind: ChangeKind, state: NodeState, revision: Revision) -> Arc<HubChange> {
        let node = Node {
            id: "n1".into(),
            name: "n1".into(),
            kind: NodeKind::Drone,
            cluster: "default".into(),
            pool: "default".into(),
            labels: Default::default(),
            state,
            version: String::new(),
            controller_id: String::new(),
            registered_at: Utc::now(),
            last_heartbeat_at: Utc::now(),
            resources: NodeResources::default(),
            backend_count: 0,
            backend_capacity: 1,
            drain_deadline: None,
            draining: false,
            revision,
        };
        HubChange::new(crate::store::Change::Node(crate::store::NodeChange { revision, kind, node }))
    }

    #[test]
    fn nodes_entering_and_leaving_a_state_filter_are_added_and_removed() {
        let filter = NodeFilter { states: vec![NodeState::Ready], ..Default::default() };
        let mut view: View = Some(HashSet::new());
        let seq = [
            (ChangeKind::Added, NodeState::Ready, Some(NodeEventType::Added)),
            (ChangeKind::Modified, NodeState::Ready, Some(NodeEventType::Modified)),
            (ChangeKind::Modified, NodeState::Unhealthy, Some(NodeEventType::Removed)),
            (ChangeKind::Modified, NodeState::Offline, None),
            (ChangeKind::Modified, NodeState::Ready, Some(NodeEventType::Added)),
            (ChangeKind::Removed, NodeState::Ready, Some(NodeEventType::Removed)),
        ];
        for (i, (kind, state, expected)) in seq.into_iter().enumerate() {
            assert_eq!(classify(&filter, &mut view, &change(kind, state, i as u64 + 1)), expected, "step {i}");
        }
    }

    #[test]
    fn fixed_field_filters_pass_change_kinds_through() {
        let filter = NodeFilter { kinds: vec![NodeKind::Drone], ..Default::default() };
        let mut view: View = None;
        assert_eq!(
            classify(&filter, &mut view, &change(ChangeKind::Modified, NodeState::Offline, 1)),
            Some(NodeEventType::Modified)
        );
        assert_eq!(
            classify(&filter, &mut view, &change(ChangeKind::Removed, NodeState::Offline, 2)),
            Some(NodeEventType::Removed)
        );
        let proxies = NodeFilter { kinds: vec![NodeKind::Proxy], ..Default::default() };
        assert_eq!(classify(&proxies, &mut view, &change(ChangeKind::Added, NodeState::Ready, 3)), None);
    }
}
