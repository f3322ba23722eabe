//! [`NodeStore`]: the nodes of a watch, kept up to date from its events (the kube-rs reflector's
//! store). It only applies events; [`HangarClient::watch_nodes`](crate::HangarClient::watch_nodes)
//! produces them (the kube-rs watcher), with list, resume and re-list built in.

use crate::{ClientError, NodeWatchEvent};
use futures::{Stream, StreamExt};
use hangar::domain::Node;
use std::collections::BTreeMap;

/// The nodes of a watch, kept up to date by feeding it every [`NodeWatchEvent`]: a local,
/// always-current copy of the cluster's nodes instead of periodic listings (a reflector).
///
/// Fed by [`HangarClient::watch_nodes`](crate::HangarClient::watch_nodes), the store
/// - **lists, then watches**: the first events are a snapshot (`Init`, one `InitApply` per node,
///   `InitDone`), then every change, in revision order, with no gap and no repeat;
/// - **resumes** after a dropped stream or a controller restart from the last revision it has
///   seen: nothing is listed again, nothing missed (`Reconnecting` tells it happened);
/// - **re-lists** when that revision was compacted away (OUT_OF_RANGE): a fresh snapshot comes
///   and replaces the old one at its `InitDone`, so readers never see a half-built state.
///
/// [`NodeStore::wait_for`] drives a watch until the nodes are as a caller needs them.
///
/// ```no_run
/// # async fn example(client: hangar_client::HangarClient) -> Result<(), hangar_client::ClientError> {
/// use futures::StreamExt;
/// use hangar_client::{NodeStore, WatchOptions, domain::{NodeFilter, NodeKind, NodeState}};
/// use std::time::Duration;
///
/// let drones = NodeFilter { kinds: vec![NodeKind::Drone], ..NodeFilter::default() };
/// let mut watch = std::pin::pin!(client.watch_nodes(drones, WatchOptions::default()));
/// let mut store = NodeStore::default();
///
/// // Wait (at most a minute) until three drones are READY.
/// let three_ready = |store: &NodeStore| store.nodes().values().filter(|n| n.state == NodeState::Ready).count() >= 3;
/// tokio::time::timeout(Duration::from_secs(60), store.wait_for(&mut watch, three_ready))
///     .await
///     .expect("three drones within a minute")?;
///
/// // Then keep the copy current for as long as it is needed.
/// while let Some(event) = watch.next().await {
///     store.apply(&event?);
///     if store.is_ready() {
///         println!("{} drones at revision {:?}", store.len(), store.revision());
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStore {
    nodes: BTreeMap<String, Node>,
    /// The snapshot being received, swapped in at `InitDone`.
    pending: Option<BTreeMap<String, Node>>,
    revision: Option<u64>,
}

impl NodeStore {
    /// Applies one event of the watch. A snapshot (`Init` … `InitDone`) is collected aside and
    /// replaces the nodes at its `InitDone`; `Reconnecting` changes nothing.
    pub fn apply(&mut self, event: &NodeWatchEvent) {
        match event {
            NodeWatchEvent::Init => self.pending = Some(BTreeMap::new()),
            NodeWatchEvent::InitApply(node) => {
                self.pending.get_or_insert_default().insert(node.id.clone(), node.clone());
            }
            NodeWatchEvent::InitDone { revision } => {
                self.nodes = self.pending.take().unwrap_or_default();
                self.revision = Some(*revision);
            }
            NodeWatchEvent::Added(node, revision) | NodeWatchEvent::Modified(node, revision) => {
                self.nodes.insert(node.id.clone(), node.clone());
                self.revision = Some(*revision);
            }
            NodeWatchEvent::Removed(node, revision) => {
                self.nodes.remove(&node.id);
                self.revision = Some(*revision);
            }
            NodeWatchEvent::Bookmark(revision) => self.revision = Some(*revision),
            NodeWatchEvent::Reconnecting(_) => {}
        }
    }

    /// Applies the events of `events` until `predicate` holds for the store, and returns; the
    /// predicate is asked once a snapshot is complete and after every event from then on, so it
    /// never sees a half-built state. Returns at once when it already holds.
    ///
    /// Fails with the watch's error (one that resuming cannot fix), or when the stream ends
    /// first. Keep using `events` and the store afterwards to stay current. For a deadline, wrap
    /// the call in `tokio::time::timeout`: no event is lost when it fires, since an event is
    /// applied as soon as it is taken from the stream.
    pub async fn wait_for<S>(
        &mut self,
        events: &mut S,
        mut predicate: impl FnMut(&NodeStore) -> bool,
    ) -> Result<(), ClientError>
    where
        S: Stream<Item = Result<NodeWatchEvent, ClientError>> + Unpin + ?Sized,
    {
        loop {
            if self.is_ready() && predicate(self) {
                return Ok(());
            }
            match events.next().await {
                Some(event) => self.apply(&event?),
                None => {
                    return Err(ClientError::InvalidResponse(
                        "the node watch ended before the condition held".to_string(),
                    ));
                }
            }
        }
    }

    /// Whether a snapshot has been completed; before that the store is empty.
    pub fn is_ready(&self) -> bool {
        self.revision.is_some()
    }

    /// The revision the store reflects.
    pub fn revision(&self) -> Option<u64> {
        self.revision
    }

    /// The node with this id, if the watch has it.
    pub fn get(&self, id: &str) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// The nodes by id.
    pub fn nodes(&self) -> &BTreeMap<String, Node> {
        &self.nodes
    }

    /// How many nodes the store holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the store holds no node (also before the first snapshot).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::tests::node;

    #[test]
    fn store_swaps_in_a_new_snapshot_only_when_it_is_complete() {
        let mut store = NodeStore::default();
        for event in [
            NodeWatchEvent::Init,
            NodeWatchEvent::InitApply(node("a", 1)),
            NodeWatchEvent::InitApply(node("b", 2)),
            NodeWatchEvent::InitDone { revision: 5 },
            NodeWatchEvent::Modified(node("a", 6), 6),
            NodeWatchEvent::Removed(node("b", 2), 7),
            NodeWatchEvent::Added(node("c", 8), 8),
        ] {
            store.apply(&event);
        }
        assert_eq!(store.nodes().keys().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(store.get("a").unwrap().revision, 6);
        assert_eq!(store.revision(), Some(8));

        // A re-list: the old state stays visible until the new snapshot is complete.
        store.apply(&NodeWatchEvent::Init);
        store.apply(&NodeWatchEvent::InitApply(node("d", 20)));
        assert_eq!(store.len(), 2);
        store.apply(&NodeWatchEvent::InitDone { revision: 30 });
        assert_eq!(store.nodes().keys().collect::<Vec<_>>(), ["d"]);
        assert_eq!(store.revision(), Some(30));
    }

    fn stream(
        events: Vec<Result<NodeWatchEvent, ClientError>>,
    ) -> impl Stream<Item = Result<NodeWatchEvent, ClientError>> + Unpin {
        futures::stream::iter(events)
    }

    #[tokio::test]
    async fn wait_for_asks_the_predicate_only_of_complete_snapshots_and_stops_when_it_holds() {
        let mut events = stream(vec![
            Ok(NodeWatchEvent::Init),
            Ok(NodeWatchEvent::InitApply(node("a", 1))),
            Ok(NodeWatchEvent::InitDone { revision: 1 }),
            Ok(NodeWatchEvent::Added(node("b", 2), 2)),
            Ok(NodeWatchEvent::Added(node("c", 3), 3)),
        ]);
        let mut store = NodeStore::default();
        let mut asked = Vec::new();
        store
            .wait_for(&mut events, |store| {
                asked.push(store.len());
                store.len() == 2
            })
            .await
            .unwrap();
        assert_eq!(asked, [1, 2], "asked after InitDone and after each event, never mid-snapshot");
        assert_eq!(store.revision(), Some(2));
        // The rest of the stream is still there for the caller.
        assert_eq!(events.next().await.unwrap().unwrap(), NodeWatchEvent::Added(node("c", 3), 3));
        // Already true: returns without taking an event.
        store.wait_for(&mut stream(vec![]), |store| store.get("a").is_some()).await.unwrap();
    }

    #[tokio::test]
    async fn wait_for_fails_with_the_watch_error_or_when_the_stream_ends_first() {
        let mut store = NodeStore::default();
        let failing = vec![
            Ok(NodeWatchEvent::Init),
            Err(ClientError::InvalidArgument {
                reason: String::new(),
                message: "bad filter".into(),
                violations: vec![],
            }),
        ];
        let err = store.wait_for(&mut stream(failing), |_| true).await.unwrap_err();
        assert!(matches!(err, ClientError::InvalidArgument { .. }), "{err}");
        let ended = vec![Ok(NodeWatchEvent::Init), Ok(NodeWatchEvent::InitDone { revision: 4 })];
        let err = NodeStore::default().wait_for(&mut stream(ended), |store| !store.is_empty()).await.unwrap_err();
        assert!(err.to_string().contains("ended before the condition held"), "{err}");
    }

    #[test]
    fn store_is_not_ready_before_the_first_snapshot() {
        let mut store = NodeStore::default();
        store.apply(&NodeWatchEvent::Init);
        store.apply(&NodeWatchEvent::InitApply(node("a", 1)));
        assert!(!store.is_ready() && store.is_empty());
        store.apply(&NodeWatchEvent::InitDone { revision: 1 });
        assert!(store.is_ready());
        assert_eq!(store.len(), 1);
    }
}
