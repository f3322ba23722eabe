//! `hangar.v1.WatchNodesResponse`, written by hand so that a watch event is encoded once and
//! shared by every stream that sends it.
//!
//! prost-build maps the message here (`extern_path` in `build.rs`); the wire format is exactly
//! the generated one. A response is either a decoded [`NodeEvent`] (what clients receive and what
//! the server builds for one-off events) or a [`SharedEvent`]: the event type and revision of one
//! stream plus the node encoded once per change, which encoding copies instead of serializing
//! the node again for each of a thousand watchers (BENCHMARKS.md, "Encode once").

use crate::v1::{Node, NodeEvent, NodeEventType};
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, int32, key_len, uint64};
use prost::{DecodeError, Message};

#[derive(Clone, PartialEq, Default, Debug)]
pub struct WatchNodesResponse {
    /// The event, when this response was decoded or built from a `NodeEvent`.
    pub event: Option<NodeEvent>,
    /// The event, when built from a node encoded once for every stream.
    shared: Option<SharedEvent>,
}

/// A `Node` encoded once, cheap to clone (a reference count).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EncodedNode(Bytes);

impl EncodedNode {
    pub fn new(node: &Node) -> EncodedNode {
        EncodedNode(node.encode_to_vec().into())
    }
}

#[derive(Clone, PartialEq, Debug)]
struct SharedEvent {
    r#type: i32,
    node: Option<EncodedNode>,
    revision: u64,
}

impl SharedEvent {
    /// The length of the encoded `NodeEvent`, as prost would encode it (default values omitted).
    fn encoded_len(&self) -> usize {
        let node = self.node.as_ref().map_or(0, |n| key_len(2) + encoded_len_varint(n.0.len() as u64) + n.0.len());
        let kind = if self.r#type != 0 { int32::encoded_len(1, &self.r#type) } else { 0 };
        let revision = if self.revision != 0 { uint64::encoded_len(3, &self.revision) } else { 0 };
        kind + node + revision
    }

    fn encode_raw(&self, buf: &mut impl BufMut) {
        if self.r#type != 0 {
            int32::encode(1, &self.r#type, buf);
        }
        if let Some(node) = &self.node {
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(node.0.len() as u64, buf);
            buf.put_slice(&node.0);
        }
        if self.revision != 0 {
            uint64::encode(3, &self.revision, buf);
        }
    }
}

impl WatchNodesResponse {
    pub fn new(event: NodeEvent) -> WatchNodesResponse {
        WatchNodesResponse { event: Some(event), shared: None }
    }

    /// An event whose node was encoded once for every stream.
    pub fn shared(kind: NodeEventType, node: Option<EncodedNode>, revision: u64) -> WatchNodesResponse {
        WatchNodesResponse { event: None, shared: Some(SharedEvent { r#type: kind as i32, node, revision }) }
    }

    /// The event, decoding a shared node if need be (for code that inspects a response built
    /// in this process rather than received).
    pub fn into_event(self) -> Result<Option<NodeEvent>, DecodeError> {
        match self.shared {
            None => Ok(self.event),
            Some(shared) => Ok(Some(NodeEvent {
                r#type: shared.r#type,
                node: shared.node.map(|n| Node::decode(n.0)).transpose()?,
                revision: shared.revision,
            })),
        }
    }
}

impl From<NodeEvent> for WatchNodesResponse {
    fn from(event: NodeEvent) -> Self {
        WatchNodesResponse::new(event)
    }
}

impl Message for WatchNodesResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(shared) = &self.shared {
            encode_key(1, WireType::LengthDelimited, buf);
            encode_varint(shared.encoded_len() as u64, buf);
            shared.encode_raw(buf);
        } else if let Some(event) = &self.event {
            prost::encoding::message::encode(1, event, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == 1 {
            let event = self.event.get_or_insert_with(NodeEvent::default);
            prost::encoding::message::merge(wire_type, event, buf, ctx).map_err(|mut err| {
                err.push("WatchNodesResponse", "event");
                err
            })
        } else {
            prost::encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        if let Some(shared) = &self.shared {
            let len = shared.encoded_len();
            key_len(1) + encoded_len_varint(len as u64) + len
        } else {
            self.event.as_ref().map_or(0, |event| prost::encoding::message::encoded_len(1, event))
        }
    }

    fn clear(&mut self) {
        self.event = None;
        self.shared = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::NodeResources;

    fn node() -> Node {
        Node {
            id: "0190-abc".into(),
            name: "drone-1".into(),
            labels: [("zone".to_string(), "a".to_string())].into(),
            backend_count: 3,
            resources: Some(NodeResources { cpu_cores: 8, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_shared_event_encodes_exactly_like_the_generated_message() {
        for (kind, node, revision) in [
            (NodeEventType::Modified, Some(node()), 42),
            (NodeEventType::Added, Some(Node::default()), 1 << 40),
            (NodeEventType::Bookmark, None, 7),
            (NodeEventType::Unspecified, None, 0),
        ] {
            let plain = WatchNodesResponse::new(NodeEvent { r#type: kind as i32, node: node.clone(), revision });
            let shared = WatchNodesResponse::shared(kind, node.as_ref().map(EncodedNode::new), revision);
            assert_eq!(shared.encoded_len(), plain.encoded_len(), "{kind:?}");
            assert_eq!(shared.encode_to_vec(), plain.encode_to_vec(), "{kind:?}");
            let decoded = WatchNodesResponse::decode(shared.encode_to_vec().as_slice()).unwrap();
            assert_eq!(decoded, plain);
            assert_eq!(shared.into_event().unwrap(), plain.event);
        }
    }
}
