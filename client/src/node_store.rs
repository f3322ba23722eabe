//! [`NodeStore`]: the nodes of a watch, kept up to date from its events (the kube-rs reflector's
//! store). It only applies events; [`HangarClient::watch_nodes`](crate::HangarClient::watch_nodes)
//! produces them.

use crate::NodeWatchEvent;
use hangar::domain::Node;
use std::collections::BTreeMap;

/// The nodes of a watch, kept up to date by feeding it every [`NodeWatchEvent`] (a reflector).
///
/// ```no_run
/// # async fn example(client: hangar_client::HangarClient) -> Result<(), hangar_client::ClientError> {
/// use futures::StreamExt;
/// use hangar_client::{NodeStore, WatchOptions, domain::NodeFilter};
///
/// let mut store = NodeStore::default();
/// let mut watch = std::pin::pin!(client.watch_nodes(NodeFilter::default(), WatchOptions::default()));
/// while let Some(event) = watch.next().await {
///     store.apply(&event?);
///     if store.is_ready() {
///         println!("{} nodes at revision {:?}", store.len(), store.revision());
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

    /// Whether a snapshot has been completed; before that the store is empty.
    pub fn is_ready(&self) -> bool {
        self.revision.is_some()
    }

    /// The revision the store reflects.
    pub fn revision(&self) -> Option<u64> {
        self.revision
    }

    pub fn get(&self, id: &str) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// The nodes by id.
    pub fn nodes(&self) -> &BTreeMap<String, Node> {
        &self.nodes
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

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
