//! One `WatchNodes` stream: the initial snapshot or replay, then live changes seen through the
//! stream's filter.

use super::hub::{HubChange, NodeWatchHub, Subscription};
use crate::api::ApiError;
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

#[derive(Debug, Clone)]
pub struct WatchRequest {
    pub filter: NodeFilter,
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

/// An event, or the error that ends the stream (the service turns it into its status).
type Item = Result<v1::WatchNodesResponse, ApiError>;

fn event(kind: NodeEventType, node: Option<v1::Node>, revision: Revision) -> v1::WatchNodesResponse {
    v1::WatchNodesResponse::new(v1::NodeEvent { r#type: kind as i32, node, revision })
}

impl NodeWatch {
    /// The event stream for one request. Errors before the first event (a compacted start
    /// revision) arrive as the stream's first item.
    pub fn stream(hub: NodeWatchHub, request: WatchRequest) -> WatchStream {
        let setup = async_stream::stream! {
            let store = hub.store().clone();
            let filter = request.filter;
            let mut view: View = needs_view(&filter).then(HashSet::new);

            // Where live delivery starts, and the initial events before it.
            let start = if request.send_initial {
                let mut after: Option<String> = None;
                let mut at: Option<Revision> = None;
                loop {
                    let page = match store.list_nodes(&filter, at, after.as_deref(), SNAPSHOT_PAGE).await {
                        Ok(page) => page,
                        Err(err) => { yield Err(ApiError::from(err)); return; }
                    };
                    at = Some(page.revision);
                    for node in &page.nodes {
                        if let Some(view) = view.as_mut() {
                            view.insert(node.id.clone());
                        }
                        yield Ok(Step::Event(event(NodeEventType::Added, Some(v1::Node::from(node)), node.revision)));
                    }
                    match (page.more, page.nodes.last()) {
                        (true, Some(last)) => after = Some(last.id.clone()),
                        _ => break,
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
            yield Ok(Step::Live(Live::new(hub, subscription, start, filter, view, request.bookmark_interval)));
        };
        WatchStream { phase: Phase::Setup(Box::pin(setup)) }
    }
}

/// What the setup phase produces: events of the initial snapshot, then the live feed that
/// follows them.
enum Step {
    Event(v1::WatchNodesResponse),
    Live(Live),
}

type Setup = Pin<Box<dyn Stream<Item = Result<Step, ApiError>> + Send>>;

/// A `WatchNodes` stream: the setup phase (async, runs once), then the live phase, written as
/// a plain `poll_next` because it runs once per change per watcher.
pub struct WatchStream {
    phase: Phase,
}

enum Phase {
    Setup(Setup),
    Live(Box<Live>),
    /// After the last item, an error included.
    Done,
}

impl Stream for WatchStream {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let this = &mut *self;
        loop {
            let item = match &mut this.phase {
                Phase::Setup(setup) => match ready!(setup.as_mut().poll_next(cx)) {
                    Some(Ok(Step::Event(event))) => return Poll::Ready(Some(Ok(event))),
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
struct Live {
    hub: NodeWatchHub,
    backlog: VecDeque<Arc<HubChange>>,
    live: mpsc::Receiver<Arc<HubChange>>,
    overflowed: Arc<AtomicBool>,
    /// Everything up to here has been delivered or skipped on purpose.
    position: Revision,
    filter: NodeFilter,
    view: View,
    bookmark: Option<tokio::time::Interval>,
}

impl Live {
    fn new(
        hub: NodeWatchHub,
        subscription: Subscription,
        start: Revision,
        filter: NodeFilter,
        view: View,
        bookmark_interval: Option<Duration>,
    ) -> Live {
        let Subscription { backlog, live, overflowed } = subscription;
        let bookmark = bookmark_interval.map(|every| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        Live { hub, backlog, live, overflowed, position: start, filter, view, bookmark }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
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
                            return Poll::Ready(Some(Ok(event(NodeEventType::Bookmark, None, self.position))));
                        }
                        return Poll::Pending;
                    }
                },
            };
            if change.revision <= self.position {
                continue;
            }
            self.position = change.revision;
            if let Some(kind) = classify(&self.filter, &mut self.view, &change) {
                if let Some(bookmark) = self.bookmark.as_mut() {
                    bookmark.reset();
                }
                // The node's bytes as the hub encoded them once: a reference count per stream.
                let response = v1::WatchNodesResponse::shared(kind, Some(change.encoded.clone()), change.revision);
                return Poll::Ready(Some(Ok(response)));
            }
        }
    }
}

/// The nodes matching `filter` at revision `at`.
async fn seed_view(
    hub: &NodeWatchHub,
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
fn classify(filter: &NodeFilter, view: &mut View, change: &Arc<HubChange>) -> Option<NodeEventType> {
    let matches = change.kind != ChangeKind::Removed && filter.matches(&change.node);
    let Some(view) = view else {
        // Only fixed fields in the filter: the change kind is the event kind.
        return (change.kind == ChangeKind::Removed && filter.matches(&change.node) || matches).then_some(match change
            .kind
        {
            ChangeKind::Added => NodeEventType::Added,
            ChangeKind::Modified => NodeEventType::Modified,
            ChangeKind::Removed => NodeEventType::Removed,
        });
    };
    let shown = view.contains(&change.node.id);
    match (shown, matches) {
        (false, true) => {
            view.insert(change.node.id.clone());
            Some(NodeEventType::Added)
        }
        (true, true) => Some(NodeEventType::Modified),
        (true, false) => {
            view.remove(&change.node.id);
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
        HubChange::new(crate::store::NodeChange { revision, kind, node })
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
