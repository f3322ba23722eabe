//! `watch_nodes` and `watch_backends`: WatchNodes and WatchBackends as one endless, typed
//! stream each, with resume and re-list built in (the kube-rs `watcher` idea), written once for
//! both kinds ([`Watched`]). [`NodeStore`](crate::NodeStore) keeps a local copy of the nodes from
//! their events.
//!
//! The first call asks for the initial state (`send_initial`), so listing and watching are one
//! round trip with no race between them. The stream then tracks the last revision it has seen;
//! when the server stream ends (controller shutting down, connection lost, cut off as too slow)
//! it waits a jittered backoff and resumes from that revision, moving to the next controller if
//! several are known. When the revision has been compacted away (OUT_OF_RANGE) it starts over
//! with a fresh snapshot, announced by a new [`WatchEvent::Init`]: a consumer never misses a
//! change silently. Errors that a retry cannot fix end the stream with that error.

use crate::backend_views::BackendView;
use crate::{ClientError, HangarClient, RetryPolicy};
use futures::Stream;
use futures::future::BoxFuture;
use hangar::domain::{BackendFilter, Node, NodeFilter, duration_to_proto};
use hangar::v1;
use std::time::Duration;
use tonic::Code;

/// One item of [`HangarClient::watch_nodes`].
pub type NodeWatchEvent = WatchEvent<Node>;

/// One item of [`HangarClient::watch_backends`].
pub type BackendWatchEvent = WatchEvent<BackendView>;

/// One item of a watch of `T`s (nodes or backends).
///
/// The initial state arrives as `Init`, one `InitApply` per node, then `InitDone`, mirroring
/// the wire (ADDED… SNAPSHOT_END) rather than buffering the whole snapshot in the client: a
/// cache collects the `InitApply` nodes into a fresh map and swaps it in at `InitDone`, so its
/// readers never see a half-built state, and a large cluster does not have to fit in memory twice
/// before the first node can be printed. After a re-list the same sequence comes again; whatever
/// the consumer knew before `Init` is to be forgotten at `InitDone`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent<T> {
    /// A (new) snapshot begins.
    Init,
    /// A node (backend) of the snapshot.
    InitApply(T),
    /// The snapshot is complete at `revision`; live changes follow.
    InitDone { revision: u64 },
    /// It appeared, or now matches the filter; with the event's revision.
    Added(T, u64),
    /// It changed.
    Modified(T, u64),
    /// It was removed, or no longer matches the filter; as it was last (a backend: as it is now).
    Removed(T, u64),
    /// Nothing matching changed up to this revision (sent when the stream is quiet and
    /// [`WatchOptions::bookmark_interval`] is set).
    Bookmark(u64),
    /// The server stream ended; the watch continues after `delay`. Informational: a cache
    /// ignores it, a person should see it.
    Reconnecting(Reconnect),
}

impl<T> WatchEvent<T> {
    /// The revision the watch has reached with this event, if it carries one.
    pub fn revision(&self) -> Option<u64> {
        match self {
            WatchEvent::InitDone { revision } | WatchEvent::Bookmark(revision) => Some(*revision),
            WatchEvent::Added(_, revision) | WatchEvent::Modified(_, revision) | WatchEvent::Removed(_, revision) => {
                Some(*revision)
            }
            WatchEvent::Init | WatchEvent::InitApply(_) | WatchEvent::Reconnecting(_) => None,
        }
    }
}

/// Why and how a watch reconnects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconnect {
    /// Where the next stream starts.
    pub resume: Resume,
    /// The controller the next stream is opened on.
    pub controller: String,
    /// How long the watch waits before opening it.
    pub delay: Duration,
    /// What ended the previous stream (the rendered [`ClientError`]).
    pub cause: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Every change after this revision is replayed; nothing is lost or repeated.
    FromRevision(u64),
    /// A fresh snapshot (`Init` … `InitDone`) is fetched: the revision was compacted, or the
    /// previous snapshot never completed.
    Relist,
}

/// How [`HangarClient::watch_nodes`] and [`HangarClient::watch_backends`] watch.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Ask the controller for a BOOKMARK after this much quiet time, so that a filtered watch
    /// keeps a recent resume revision (and a consumer sees the stream is alive).
    pub bookmark_interval: Option<Duration>,
    /// Start by replaying the changes after this revision (e.g. a listing's revision)
    /// instead of with a snapshot. Compacted → a snapshot after all.
    pub start_revision: Option<u64>,
    /// Backoff between streams. `max_attempts` counts consecutive streams that ended without
    /// delivering anything; when they run out, the stream ends with the last error.
    pub retry: RetryPolicy,
    /// Other controllers of the same cluster, moved to in turn (after the client's own) when
    /// the current one fails. Clients made with [`HangarClient::connect_lazy`] cost nothing
    /// until used.
    pub fallbacks: Vec<HangarClient>,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            bookmark_interval: None,
            start_revision: None,
            // A watch outlives controller restarts, so it never gives up by default.
            retry: RetryPolicy {
                max_attempts: u32::MAX,
                initial_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(10),
            },
            fallbacks: Vec::new(),
        }
    }
}

/// What the next stream asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    Snapshot,
    After(u64),
}

impl Position {
    /// Start revision 0 means "now" on the wire, so a watch that has only seen revision 0 (an
    /// empty store) must list again rather than resume from it.
    fn from_revision(revision: u64) -> Position {
        if revision == 0 { Position::Snapshot } else { Position::After(revision) }
    }

    fn resume(self) -> Resume {
        match self {
            Position::Snapshot => Resume::Relist,
            Position::After(revision) => Resume::FromRevision(revision),
        }
    }
}

/// How a stream ended, and what the watch does about it.
pub(crate) enum Next {
    /// Same position, next controller (the current one went away).
    Rotate,
    /// Same position, same controller (it is well, the stream was not).
    Stay,
    /// A fresh snapshot, same controller.
    Relist,
    /// Retrying cannot help.
    Fail,
}

pub(crate) fn next_step(err: &ClientError) -> Next {
    match err {
        ClientError::Unavailable { .. } | ClientError::Connect { .. } => Next::Rotate,
        ClientError::OutOfRange { .. } => Next::Relist,
        ClientError::ResourceExhausted { .. } => Next::Stay,
        // A reset HTTP/2 stream or a dropped connection surfaces as one of these.
        ClientError::Other(status)
            if matches!(
                status.code(),
                Code::Unknown | Code::Internal | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted
            ) =>
        {
            Next::Rotate
        }
        _ => Next::Fail,
    }
}

/// The event types of both watches, which share their numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Added,
    Modified,
    Removed,
    Bookmark,
    SnapshotEnd,
    Unspecified,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Added => "ADDED",
            Kind::Modified => "MODIFIED",
            Kind::Removed => "REMOVED",
            Kind::Bookmark => "BOOKMARK",
            Kind::SnapshotEnd => "SNAPSHOT_END",
            Kind::Unspecified => "UNSPECIFIED",
        }
    }
}

/// What a watch of one kind needs from the wire: its request, how to open the stream, and how to
/// read an event. Everything else (positions, resume, re-list, rotation) is shared.
trait Watched: Sized + Send + 'static {
    type Request: Clone + Send + Sync + 'static;
    type Response: Send + 'static;
    /// The message name, for errors.
    const RESPONSE: &'static str;
    /// What an event carries, for errors.
    const OBJECT: &'static str;

    fn request(template: &Self::Request, start_revision: u64, send_initial: bool) -> Self::Request;

    fn open(
        client: HangarClient,
        request: Self::Request,
    ) -> BoxFuture<'static, Result<tonic::Streaming<Self::Response>, tonic::Status>>;

    /// The event's kind and revision and, when present, its object; `None` without an event.
    #[allow(clippy::type_complexity)]
    fn event(response: Self::Response) -> Option<(Kind, u64, Option<Result<Self, ClientError>>)>;
}

impl Watched for Node {
    type Request = v1::WatchNodesRequest;
    type Response = v1::WatchNodesResponse;
    const RESPONSE: &'static str = "WatchNodesResponse";
    const OBJECT: &'static str = "node";

    fn request(template: &Self::Request, start_revision: u64, send_initial: bool) -> Self::Request {
        v1::WatchNodesRequest { start_revision, send_initial, ..template.clone() }
    }

    fn open(
        client: HangarClient,
        request: Self::Request,
    ) -> BoxFuture<'static, Result<tonic::Streaming<Self::Response>, tonic::Status>> {
        Box::pin(async move { Ok(client.node_service().watch_nodes(request).await?.into_inner()) })
    }

    fn event(response: Self::Response) -> Option<(Kind, u64, Option<Result<Self, ClientError>>)> {
        let event = response.event?;
        let kind = match v1::NodeEventType::try_from(event.r#type).unwrap_or(v1::NodeEventType::Unspecified) {
            v1::NodeEventType::Added => Kind::Added,
            v1::NodeEventType::Modified => Kind::Modified,
            v1::NodeEventType::Removed => Kind::Removed,
            v1::NodeEventType::Bookmark => Kind::Bookmark,
            v1::NodeEventType::SnapshotEnd => Kind::SnapshotEnd,
            v1::NodeEventType::Unspecified => Kind::Unspecified,
        };
        let node = event.node.as_ref().map(|n| Node::try_from(n).map_err(ClientError::InvalidResponse));
        Some((kind, event.revision, node))
    }
}

impl Watched for BackendView {
    type Request = v1::WatchBackendsRequest;
    type Response = v1::WatchBackendsResponse;
    const RESPONSE: &'static str = "WatchBackendsResponse";
    const OBJECT: &'static str = "backend";

    fn request(template: &Self::Request, start_revision: u64, send_initial: bool) -> Self::Request {
        v1::WatchBackendsRequest { start_revision, send_initial, ..template.clone() }
    }

    fn open(
        client: HangarClient,
        request: Self::Request,
    ) -> BoxFuture<'static, Result<tonic::Streaming<Self::Response>, tonic::Status>> {
        Box::pin(async move { Ok(client.backend_service().watch_backends(request).await?.into_inner()) })
    }

    fn event(response: Self::Response) -> Option<(Kind, u64, Option<Result<Self, ClientError>>)> {
        let event = response.event?;
        let kind = match v1::BackendEventType::try_from(event.r#type).unwrap_or(v1::BackendEventType::Unspecified) {
            v1::BackendEventType::Added => Kind::Added,
            v1::BackendEventType::Modified => Kind::Modified,
            v1::BackendEventType::Removed => Kind::Removed,
            v1::BackendEventType::Bookmark => Kind::Bookmark,
            v1::BackendEventType::SnapshotEnd => Kind::SnapshotEnd,
            v1::BackendEventType::Unspecified => Kind::Unspecified,
        };
        Some((kind, event.revision, event.backend.as_ref().map(BackendView::from_proto)))
    }
}

impl HangarClient {
    /// Watches the nodes matching `filter`: the initial state, then every change, for as long as
    /// the stream is polled. See [`WatchEvent`] for the sequence and
    /// [`NodeStore`](crate::NodeStore) for a ready-made cache.
    ///
    /// Resumes by itself after dropped streams and re-lists after OUT_OF_RANGE; an `Err` item
    /// (INVALID_ARGUMENT, UNIMPLEMENTED, a response this client cannot read, or retries run out)
    /// is the last item. Dropping the stream ends the watch.
    pub fn watch_nodes(
        &self,
        filter: NodeFilter,
        options: WatchOptions,
    ) -> impl Stream<Item = Result<NodeWatchEvent, ClientError>> + Send + 'static {
        let template = v1::WatchNodesRequest {
            filter: Some(filter.to_proto()),
            start_revision: 0,
            send_initial: false,
            bookmark_interval: options.bookmark_interval.map(duration_to_proto),
        };
        watch::<Node>(self.clone(), template, options)
    }

    /// Watches the backends matching `filter` across the cluster: the initial state, then every
    /// status change, for as long as the stream is polled; the same sequence, resume and re-list
    /// as [`watch_nodes`](Self::watch_nodes). A backend leaving the filter (its state no longer
    /// matches) comes as `Removed` with the backend as it is now.
    pub fn watch_backends(
        &self,
        filter: BackendFilter,
        options: WatchOptions,
    ) -> impl Stream<Item = Result<BackendWatchEvent, ClientError>> + Send + 'static {
        let template = v1::WatchBackendsRequest {
            filter: Some(filter.to_proto()),
            start_revision: 0,
            send_initial: false,
            bookmark_interval: options.bookmark_interval.map(duration_to_proto),
        };
        watch::<BackendView>(self.clone(), template, options)
    }
}

/// The one watch loop: streams of `T` events, resumed, rotated and re-listed as they end.
fn watch<T: Watched>(
    client: HangarClient,
    template: T::Request,
    options: WatchOptions,
) -> impl Stream<Item = Result<WatchEvent<T>, ClientError>> + Send + 'static {
    // A client of several controllers rotates over each of them, then over the fallbacks.
    let controllers: Vec<HangarClient> = client.split().into_iter().chain(options.fallbacks).collect();
    let retry = options.retry;
    let mut position = options.start_revision.map_or(Position::Snapshot, Position::from_revision);
    async_stream::stream! {
        let mut current = 0;
        let mut failures = 0u32;
        loop {
            let controller = &controllers[current];
            let initial = position == Position::Snapshot;
            let start_revision = match position {
                Position::Snapshot => 0,
                Position::After(revision) => revision,
            };
            let request = T::request(&template, start_revision, initial);
            let mut delivered = false;
            let mut snapshot = SnapshotState { initial, started: false };
            let ended = match T::open(controller.clone(), request).await {
                Err(status) => ClientError::from(status),
                Ok(mut stream) => {
                    loop {
                        let message = match stream.message().await {
                            Ok(Some(message)) => message,
                            Ok(None) => {
                                break ClientError::from(tonic::Status::unavailable("the watch stream ended"));
                            }
                            Err(status) => break ClientError::from(status),
                        };
                        match decode::<T>(message, &mut snapshot, &mut position) {
                            Ok(events) => {
                                for event in events {
                                    delivered = true;
                                    yield Ok(event);
                                }
                            }
                            Err(err) => {
                                yield Err(err);
                                return;
                            }
                        }
                    }
                }
            };
            if delivered {
                failures = 0;
            }
            failures += 1;
            match next_step(&ended) {
                Next::Fail => {
                    yield Err(ended);
                    return;
                }
                _ if failures >= retry.max_attempts => {
                    yield Err(ended);
                    return;
                }
                Next::Rotate => current = (current + 1) % controllers.len(),
                Next::Stay => {}
                Next::Relist => position = Position::Snapshot,
            }
            if let ClientError::ResourceExhausted { last_revision: Some(theirs), .. } = &ended
                && Position::After(*theirs) != position
            {
                // Resuming from what this client has actually seen is never wrong; the
                // server's figure is only a cross-check.
                tracing::debug!(theirs, ?position, "the server's last delivered revision differs from ours");
            }
            let delay = retry.backoff(failures);
            tracing::debug!(error = %ended, ?position, ?delay, "watch stream ended; reconnecting");
            yield Ok(WatchEvent::Reconnecting(Reconnect {
                resume: position.resume(),
                controller: controllers[current].address().to_string(),
                delay,
                cause: ended.to_string(),
            }));
            tokio::time::sleep(delay).await;
        }
    }
}

/// Where one stream is in its snapshot.
struct SnapshotState {
    /// The stream was asked for a snapshot and SNAPSHOT_END has not come yet.
    initial: bool,
    /// `Init` has been yielded for this stream.
    started: bool,
}

/// The events of one message, and the position after it. A message that breaks the protocol
/// ends the watch: guessing could hide a gap.
fn decode<T: Watched>(
    message: T::Response,
    snapshot: &mut SnapshotState,
    position: &mut Position,
) -> Result<Vec<WatchEvent<T>>, ClientError> {
    let invalid = |what: String| Err(ClientError::InvalidResponse(what));
    let Some((kind, revision, object)) = T::event(message) else {
        return invalid(format!("a {} without an event", T::RESPONSE));
    };
    let mut object = object;
    let mut object = || -> Result<T, ClientError> {
        object
            .take()
            .ok_or_else(|| ClientError::InvalidResponse(format!("a {} event without a {}", kind.name(), T::OBJECT)))?
    };
    let mut events = Vec::with_capacity(2);
    if snapshot.initial {
        if !snapshot.started {
            snapshot.started = true;
            events.push(WatchEvent::Init);
        }
        match kind {
            Kind::Added => events.push(WatchEvent::InitApply(object()?)),
            Kind::SnapshotEnd => {
                snapshot.initial = false;
                *position = Position::from_revision(revision);
                events.push(WatchEvent::InitDone { revision });
            }
            other => return invalid(format!("{} before the end of the snapshot", other.name())),
        }
        return Ok(events);
    }
    // Revisions only grow on a stream and a resumed stream replays strictly after its start, so
    // an older revision is a repeat: dropping it keeps a cache consistent.
    if let Position::After(seen) = *position
        && revision <= seen
        && kind != Kind::Bookmark
    {
        tracing::warn!(revision, seen, "dropping a repeated watch event");
        return Ok(events);
    }
    let event = match kind {
        Kind::Added => WatchEvent::Added(object()?, revision),
        Kind::Modified => WatchEvent::Modified(object()?, revision),
        Kind::Removed => WatchEvent::Removed(object()?, revision),
        Kind::Bookmark => WatchEvent::Bookmark(revision),
        other => return invalid(format!("a {} event on a live stream", other.name())),
    };
    if !matches!(*position, Position::After(seen) if seen >= revision) {
        *position = Position::from_revision(revision);
    }
    events.push(event);
    Ok(events)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A drone node at `revision`, as a watch delivers it.
    pub(crate) fn node(id: &str, revision: u64) -> Node {
        let proto = v1::Node {
            id: id.into(),
            name: id.into(),
            kind: v1::NodeKind::Drone as i32,
            state: v1::NodeState::Ready as i32,
            revision,
            ..Default::default()
        };
        Node::try_from(&proto).unwrap()
    }

    fn message(kind: v1::NodeEventType, node: Option<&Node>, revision: u64) -> v1::WatchNodesResponse {
        v1::WatchNodesResponse::new(v1::NodeEvent { r#type: kind as i32, node: node.map(v1::Node::from), revision })
    }

    #[test]
    fn a_repeated_revision_is_dropped_and_a_bookmark_moves_the_position() {
        let mut snapshot = SnapshotState { initial: false, started: false };
        let mut position = Position::After(10);
        let a = node("a", 10);
        let repeated = decode::<Node>(message(v1::NodeEventType::Modified, Some(&a), 10), &mut snapshot, &mut position);
        assert_eq!(repeated.unwrap(), []);
        let bookmark = decode::<Node>(message(v1::NodeEventType::Bookmark, None, 14), &mut snapshot, &mut position);
        assert_eq!(bookmark.unwrap(), [NodeWatchEvent::Bookmark(14)]);
        assert_eq!(position, Position::After(14));
    }

    #[test]
    fn protocol_violations_are_errors_not_guesses() {
        let mut position = Position::Snapshot;
        let mut snapshot = SnapshotState { initial: true, started: false };
        let a = node("a", 3);
        let err = decode::<Node>(message(v1::NodeEventType::Modified, Some(&a), 3), &mut snapshot, &mut position);
        assert!(matches!(err, Err(ClientError::InvalidResponse(m)) if m.contains("before the end of the snapshot")));

        let mut live = SnapshotState { initial: false, started: false };
        let err = decode::<Node>(message(v1::NodeEventType::Added, None, 4), &mut live, &mut Position::After(3));
        assert!(matches!(err, Err(ClientError::InvalidResponse(m)) if m.contains("without a node")));
        let err = decode::<Node>(message(v1::NodeEventType::Unspecified, None, 4), &mut live, &mut Position::After(3));
        assert!(err.is_err());
    }

    #[test]
    fn an_empty_store_at_revision_zero_lists_again_instead_of_resuming_from_now() {
        assert_eq!(Position::from_revision(0), Position::Snapshot);
        assert_eq!(Position::from_revision(7).resume(), Resume::FromRevision(7));
    }
}
