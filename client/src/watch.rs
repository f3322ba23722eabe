//! `watch_nodes`: WatchNodes as one endless, typed stream with resume and re-list built in (the
//! kube-rs `watcher` idea). [`NodeStore`](crate::NodeStore) keeps a local copy of the nodes from
//! its events.
//!
//! The first call asks for the initial state (`send_initial`), so listing and watching are one
//! round trip with no race between them. The stream then tracks the last revision it has seen;
//! when the server stream ends (controller shutting down, connection lost, cut off as too slow)
//! it waits a jittered backoff and resumes from that revision, moving to the next controller if
//! several are known. When the revision has been compacted away (OUT_OF_RANGE) it starts over
//! with a fresh snapshot, announced by a new [`NodeWatchEvent::Init`]: a consumer never misses a
//! change silently. Errors that a retry cannot fix end the stream with that error.

use crate::{ClientError, HangarClient, RetryPolicy};
use futures::Stream;
use hangar::domain::{Node, NodeFilter, duration_to_proto};
use hangar::v1;
use std::time::Duration;
use tonic::Code;

/// One item of [`HangarClient::watch_nodes`].
///
/// The initial state arrives as `Init`, one `InitApply` per node, then `InitDone`, mirroring
/// the wire (ADDED… SNAPSHOT_END) rather than buffering the whole snapshot in the client: a
/// cache collects the `InitApply` nodes into a fresh map and swaps it in at `InitDone`, so its
/// readers never see a half-built state, and a large cluster does not have to fit in memory twice
/// before the first node can be printed. After a re-list the same sequence comes again; whatever
/// the consumer knew before `Init` is to be forgotten at `InitDone`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeWatchEvent {
    /// A (new) snapshot begins.
    Init,
    /// A node of the snapshot.
    InitApply(Node),
    /// The snapshot is complete at `revision`; live changes follow.
    InitDone { revision: u64 },
    /// The node appeared, or now matches the filter; with the event's revision.
    Added(Node, u64),
    /// The node changed.
    Modified(Node, u64),
    /// The node was removed, or no longer matches the filter; the node as it was last.
    Removed(Node, u64),
    /// Nothing matching changed up to this revision (sent when the stream is quiet and
    /// [`WatchOptions::bookmark_interval`] is set).
    Bookmark(u64),
    /// The server stream ended; the watch continues after `delay`. Informational: a cache
    /// ignores it, a person should see it.
    Reconnecting(Reconnect),
}

impl NodeWatchEvent {
    /// The revision the watch has reached with this event, if it carries one.
    pub fn revision(&self) -> Option<u64> {
        match self {
            NodeWatchEvent::InitDone { revision } | NodeWatchEvent::Bookmark(revision) => Some(*revision),
            NodeWatchEvent::Added(_, revision)
            | NodeWatchEvent::Modified(_, revision)
            | NodeWatchEvent::Removed(_, revision) => Some(*revision),
            NodeWatchEvent::Init | NodeWatchEvent::InitApply(_) | NodeWatchEvent::Reconnecting(_) => None,
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

/// How [`HangarClient::watch_nodes`] watches.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Ask the controller for a BOOKMARK after this much quiet time, so that a filtered watch
    /// keeps a recent resume revision (and a consumer sees the stream is alive).
    pub bookmark_interval: Option<Duration>,
    /// Start by replaying the changes after this revision (e.g. a `list_all_nodes` revision)
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

impl HangarClient {
    /// Watches the nodes matching `filter`: the initial state, then every change, for as long as
    /// the stream is polled. See [`NodeWatchEvent`] for the sequence and
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
        let controllers: Vec<HangarClient> = std::iter::once(self.clone()).chain(options.fallbacks).collect();
        let retry = options.retry;
        let template = v1::WatchNodesRequest {
            filter: Some(filter.to_proto()),
            start_revision: 0,
            send_initial: false,
            bookmark_interval: options.bookmark_interval.map(duration_to_proto),
        };
        let mut position = options.start_revision.map_or(Position::Snapshot, Position::from_revision);
        async_stream::stream! {
            let mut current = 0;
            let mut failures = 0u32;
            loop {
                let controller = &controllers[current];
                let initial = position == Position::Snapshot;
                let request = v1::WatchNodesRequest {
                    start_revision: match position {
                        Position::Snapshot => 0,
                        Position::After(revision) => revision,
                    },
                    send_initial: initial,
                    ..template.clone()
                };
                let mut delivered = false;
                let mut snapshot = SnapshotState { initial, started: false };
                let ended = match controller.node_service().watch_nodes(request).await {
                    Err(status) => ClientError::from(status),
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        loop {
                            let message = match stream.message().await {
                                Ok(Some(message)) => message,
                                Ok(None) => {
                                    break ClientError::from(tonic::Status::unavailable("the watch stream ended"));
                                }
                                Err(status) => break ClientError::from(status),
                            };
                            match decode(message, &mut snapshot, &mut position) {
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
                tracing::debug!(error = %ended, ?position, ?delay, "node watch stream ended; reconnecting");
                yield Ok(NodeWatchEvent::Reconnecting(Reconnect {
                    resume: position.resume(),
                    controller: controllers[current].address().to_string(),
                    delay,
                    cause: ended.to_string(),
                }));
                tokio::time::sleep(delay).await;
            }
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
fn decode(
    message: v1::WatchNodesResponse,
    snapshot: &mut SnapshotState,
    position: &mut Position,
) -> Result<Vec<NodeWatchEvent>, ClientError> {
    let invalid = |what: String| Err(ClientError::InvalidResponse(what));
    let Some(event) = message.event else {
        return invalid("a WatchNodesResponse without an event".to_string());
    };
    let kind = v1::NodeEventType::try_from(event.r#type).unwrap_or(v1::NodeEventType::Unspecified);
    let revision = event.revision;
    let node = || -> Result<Node, ClientError> {
        let node = event
            .node
            .as_ref()
            .ok_or_else(|| ClientError::InvalidResponse(format!("a {} event without a node", kind.as_str_name())))?;
        Node::try_from(node).map_err(ClientError::InvalidResponse)
    };
    let mut events = Vec::with_capacity(2);
    if snapshot.initial {
        if !snapshot.started {
            snapshot.started = true;
            events.push(NodeWatchEvent::Init);
        }
        match kind {
            v1::NodeEventType::Added => events.push(NodeWatchEvent::InitApply(node()?)),
            v1::NodeEventType::SnapshotEnd => {
                snapshot.initial = false;
                *position = Position::from_revision(revision);
                events.push(NodeWatchEvent::InitDone { revision });
            }
            other => return invalid(format!("{} before the end of the snapshot", other.as_str_name())),
        }
        return Ok(events);
    }
    // Revisions only grow on a stream and a resumed stream replays strictly after its start, so
    // an older revision is a repeat: dropping it keeps a cache consistent.
    if let Position::After(seen) = *position
        && revision <= seen
        && kind != v1::NodeEventType::Bookmark
    {
        tracing::warn!(revision, seen, "dropping a repeated node event");
        return Ok(events);
    }
    let event = match kind {
        v1::NodeEventType::Added => NodeWatchEvent::Added(node()?, revision),
        v1::NodeEventType::Modified => NodeWatchEvent::Modified(node()?, revision),
        v1::NodeEventType::Removed => NodeWatchEvent::Removed(node()?, revision),
        v1::NodeEventType::Bookmark => NodeWatchEvent::Bookmark(revision),
        other => return invalid(format!("a {} event on a live stream", other.as_str_name())),
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
        let repeated = decode(message(v1::NodeEventType::Modified, Some(&a), 10), &mut snapshot, &mut position);
        assert_eq!(repeated.unwrap(), []);
        let bookmark = decode(message(v1::NodeEventType::Bookmark, None, 14), &mut snapshot, &mut position);
        assert_eq!(bookmark.unwrap(), [NodeWatchEvent::Bookmark(14)]);
        assert_eq!(position, Position::After(14));
    }

    #[test]
    fn protocol_violations_are_errors_not_guesses() {
        let mut position = Position::Snapshot;
        let mut snapshot = SnapshotState { initial: true, started: false };
        let a = node("a", 3);
        let err = decode(message(v1::NodeEventType::Modified, Some(&a), 3), &mut snapshot, &mut position);
        assert!(matches!(err, Err(ClientError::InvalidResponse(m)) if m.contains("before the end of the snapshot")));

        let mut live = SnapshotState { initial: false, started: false };
        let err = decode(message(v1::NodeEventType::Added, None, 4), &mut live, &mut Position::After(3));
        assert!(matches!(err, Err(ClientError::InvalidResponse(m)) if m.contains("without a node")));
        let err = decode(message(v1::NodeEventType::Unspecified, None, 4), &mut live, &mut Position::After(3));
        assert!(err.is_err());
    }

    #[test]
    fn an_empty_store_at_revision_zero_lists_again_instead_of_resuming_from_now() {
        assert_eq!(Position::from_revision(0), Position::Snapshot);
        assert_eq!(Position::from_revision(7).resume(), Resume::FromRevision(7));
    }
}
