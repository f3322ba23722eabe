//! `hangar.v1.WatchNodesResponse` and `hangar.v1.WatchBackendsResponse`, written by hand so that
//! a watch event is encoded once and shared by every stream that sends it.
//!
//! prost-build maps the messages here (`extern_path` in `build.rs`); the wire format is exactly
//! the generated one. A response is either a decoded event (what clients receive and what the
//! server builds for one-off events) or a [`SharedEvent`]: the event type and revision of one
//! stream plus the object encoded once per change, which encoding copies instead of serializing
//! the object again for each of a thousand watchers (BENCHMARKS.md, "Encode once"). Both events
//! have the same shape (`type = 1`, the object `= 2`, `revision = 3`), so one macro writes both.
//!
//! `hangar.v1.ListNodesResponse` is here too, so that a listing copies nodes encoded once
//! ([`ListedNode`]) rather than converting and encoding every node of every page again.

use crate::v1::{Backend, BackendEvent, BackendEventType, Node, NodeEvent, NodeEventType};
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{
    DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, int32, key_len, message, string, uint64,
};
use prost::{DecodeError, Message};
use std::marker::PhantomData;

/// A message encoded once, cheap to clone (a reference count).
#[derive(Debug)]
pub struct Encoded<T>(Bytes, PhantomData<fn() -> T>);

impl<T> Clone for Encoded<T> {
    fn clone(&self) -> Self {
        Encoded(self.0.clone(), PhantomData)
    }
}

impl<T> PartialEq for Encoded<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<T> Eq for Encoded<T> {}

impl<T: Message> Encoded<T> {
    pub fn new(message: &T) -> Encoded<T> {
        Encoded(message.encode_to_vec().into(), PhantomData)
    }
}

/// A `Node` encoded once.
pub type EncodedNode = Encoded<Node>;
/// A `Backend` encoded once.
pub type EncodedBackend = Encoded<Backend>;

/// One stream's event around an object encoded once: `type = 1`, object `= 2`, `revision = 3`.
#[derive(Clone, PartialEq, Debug)]
struct SharedEvent<T> {
    r#type: i32,
    object: Option<Encoded<T>>,
    revision: u64,
}

impl<T> SharedEvent<T> {
    /// The length of the encoded event, as prost would encode it (default values omitted).
    fn encoded_len(&self) -> usize {
        let object = self.object.as_ref().map_or(0, |n| key_len(2) + encoded_len_varint(n.0.len() as u64) + n.0.len());
        let kind = if self.r#type != 0 { int32::encoded_len(1, &self.r#type) } else { 0 };
        let revision = if self.revision != 0 { uint64::encoded_len(3, &self.revision) } else { 0 };
        kind + object + revision
    }

    fn encode_raw(&self, buf: &mut impl BufMut) {
        if self.r#type != 0 {
            int32::encode(1, &self.r#type, buf);
        }
        if let Some(object) = &self.object {
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(object.0.len() as u64, buf);
            buf.put_slice(&object.0);
        }
        if self.revision != 0 {
            uint64::encode(3, &self.revision, buf);
        }
    }
}

macro_rules! watch_response {
    ($response:ident, $event:ident, $event_type:ident, $object:ident, $field:ident) => {
        #[derive(Clone, PartialEq, Default, Debug)]
        pub struct $response {
            /// The event, when this response was decoded or built from an event.
            pub event: Option<$event>,
            /// The event, when built from an object encoded once for every stream.
            shared: Option<SharedEvent<$object>>,
        }

        impl $response {
            pub fn new(event: $event) -> $response {
                $response { event: Some(event), shared: None }
            }

            /// An event whose object was encoded once for every stream.
            pub fn shared(kind: $event_type, object: Option<Encoded<$object>>, revision: u64) -> $response {
                $response { event: None, shared: Some(SharedEvent { r#type: kind as i32, object, revision }) }
            }

            /// The event, decoding a shared object if need be (for code that inspects a response
            /// built in this process rather than received).
            pub fn into_event(self) -> Result<Option<$event>, DecodeError> {
                match self.shared {
                    None => Ok(self.event),
                    Some(shared) => Ok(Some($event {
                        r#type: shared.r#type,
                        $field: shared.object.map(|n| $object::decode(n.0)).transpose()?,
                        revision: shared.revision,
                    })),
                }
            }
        }

        impl From<$event> for $response {
            fn from(event: $event) -> Self {
                $response::new(event)
            }
        }

        impl Message for $response {
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
                    let event = self.event.get_or_insert_with($event::default);
                    prost::encoding::message::merge(wire_type, event, buf, ctx).map_err(|mut err| {
                        err.push(stringify!($response), "event");
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
    };
}

watch_response!(WatchNodesResponse, NodeEvent, NodeEventType, Node, node);
watch_response!(WatchBackendsResponse, BackendEvent, BackendEventType, Backend, backend);

/// The tag of `Node.last_heartbeat_at`: the one field a listing may show differently from the
/// stored node (the live heartbeat time of a node attached to the answering controller).
const LAST_HEARTBEAT_AT: u32 = 11;

/// A `Node` encoded once for listings, around `last_heartbeat_at`: `bytes[..split]` holds the
/// fields before it, `bytes[split..]` those after it, so that the head, the heartbeat time and
/// the tail are exactly the generated encoding, and a listing puts in the time it shows without
/// encoding the node again. Cheap to clone (one reference count).
#[derive(Clone, PartialEq, Debug)]
pub struct ListedNode {
    bytes: Bytes,
    split: usize,
    /// The heartbeat time this copy shows.
    pub last_heartbeat_at: Option<prost_types::Timestamp>,
}

impl ListedNode {
    pub fn new(node: &Node) -> ListedNode {
        // The fields after 11, by name; any other field goes in the head, which stays a valid
        // encoding of the same node even if a later field lands there out of tag order.
        let tail = Node {
            resources: node.resources,
            backend_count: node.backend_count,
            backend_capacity: node.backend_capacity,
            drain_deadline: node.drain_deadline,
            revision: node.revision,
            draining: node.draining,
            ..Node::default()
        };
        let head = Node {
            last_heartbeat_at: None,
            resources: None,
            backend_count: 0,
            backend_capacity: 0,
            drain_deadline: None,
            revision: 0,
            draining: false,
            ..node.clone()
        };
        let mut buf = Vec::with_capacity(head.encoded_len() + tail.encoded_len());
        head.encode_raw(&mut buf);
        let split = buf.len();
        tail.encode_raw(&mut buf);
        ListedNode { bytes: Bytes::from(buf), split, last_heartbeat_at: node.last_heartbeat_at }
    }

    /// The same node showing `last_heartbeat_at` instead.
    pub fn with_heartbeat(&self, last_heartbeat_at: Option<prost_types::Timestamp>) -> ListedNode {
        ListedNode { bytes: self.bytes.clone(), split: self.split, last_heartbeat_at }
    }

    fn encoded_len(&self) -> usize {
        let heartbeat = self.last_heartbeat_at.as_ref().map_or(0, |t| message::encoded_len(LAST_HEARTBEAT_AT, t));
        self.bytes.len() + heartbeat
    }

    fn encode_raw(&self, buf: &mut impl BufMut) {
        let (head, tail) = self.bytes.split_at(self.split);
        buf.put_slice(head);
        if let Some(t) = &self.last_heartbeat_at {
            message::encode(LAST_HEARTBEAT_AT, t, buf);
        }
        buf.put_slice(tail);
    }

    /// The node as one encoded message (a copy of its bytes), e.g. for a watch event.
    pub fn encoded(&self) -> EncodedNode {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode_raw(&mut buf);
        Encoded(buf.into(), PhantomData)
    }
}

/// `hangar.v1.ListNodesResponse`. Built by a server from [`ListedNode`]s (`listed`, encoded
/// after `nodes` as more entries of the same field 1); decoded, every node is in `nodes`.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct ListNodesResponse {
    pub nodes: Vec<Node>,
    /// Token of the next page; empty on the last page.
    pub next_page_token: String,
    /// Snapshot revision every page of this listing was read at.
    pub revision: u64,
    /// Nodes encoded once, sent after `nodes` (a server's answer; never set by decoding).
    pub listed: Vec<ListedNode>,
}

impl Message for ListNodesResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for node in &self.nodes {
            message::encode(1, node, buf);
        }
        for node in &self.listed {
            encode_key(1, WireType::LengthDelimited, buf);
            encode_varint(node.encoded_len() as u64, buf);
            node.encode_raw(buf);
        }
        if !self.next_page_token.is_empty() {
            string::encode(2, &self.next_page_token, buf);
        }
        if self.revision != 0 {
            uint64::encode(3, &self.revision, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let (result, field) = match tag {
            1 => (message::merge_repeated(wire_type, &mut self.nodes, buf, ctx), "nodes"),
            2 => (string::merge(wire_type, &mut self.next_page_token, buf, ctx), "next_page_token"),
            3 => (uint64::merge(wire_type, &mut self.revision, buf, ctx), "revision"),
            _ => return prost::encoding::skip_field(wire_type, tag, buf, ctx),
        };
        result.map_err(|mut err| {
            err.push("ListNodesResponse", field);
            err
        })
    }

    fn encoded_len(&self) -> usize {
        let listed: usize =
            self.listed.iter().map(|n| n.encoded_len()).map(|len| encoded_len_varint(len as u64) + len).sum();
        let token = if self.next_page_token.is_empty() { 0 } else { string::encoded_len(2, &self.next_page_token) };
        let revision = if self.revision != 0 { uint64::encoded_len(3, &self.revision) } else { 0 };
        message::encoded_len_repeated(1, &self.nodes) + key_len(1) * self.listed.len() + listed + token + revision
    }

    fn clear(&mut self) {
        self.nodes.clear();
        self.next_page_token.clear();
        self.revision = 0;
        self.listed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{BackendKey, BackendStatus, NodeResources};

    #[test]
    fn a_listing_of_nodes_encoded_once_encodes_exactly_like_the_generated_message() {
        let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 5 });
        let full = Node {
            last_heartbeat_at: at(1_700_000_000),
            registered_at: at(1_600_000_000),
            drain_deadline: at(1_800_000_000),
            backend_capacity: 7,
            revision: 99,
            draining: true,
            ..node()
        };
        let nodes = [full.clone(), Node::default(), Node { last_heartbeat_at: None, ..full.clone() }];
        let live = at(1_700_000_042);
        let plain = ListNodesResponse {
            nodes: nodes.iter().map(|n| Node { last_heartbeat_at: live, ..n.clone() }).collect(),
            next_page_token: "tok".into(),
            revision: 12,
            listed: Vec::new(),
        };
        let shared = ListNodesResponse {
            nodes: Vec::new(),
            next_page_token: "tok".into(),
            revision: 12,
            listed: nodes.iter().map(|n| ListedNode::new(n).with_heartbeat(live)).collect(),
        };
        assert_eq!(shared.encoded_len(), plain.encoded_len());
        assert_eq!(shared.encode_to_vec(), plain.encode_to_vec());
        assert_eq!(ListNodesResponse::decode(shared.encode_to_vec().as_slice()).unwrap(), plain);
        // Unchanged, a listed node is the node as stored, the same bytes as a watch event's.
        assert_eq!(ListedNode::new(&full).encoded(), EncodedNode::new(&full));
        assert_eq!(ListNodesResponse::default().encode_to_vec(), Vec::<u8>::new());
    }

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

    #[test]
    fn a_shared_backend_event_encodes_exactly_like_the_generated_message() {
        let backend = Backend {
            id: "b-1".into(),
            key: Some(BackendKey { namespace: "docs".into(), name: "d1".into(), tag: "v1".into() }),
            status: Some(BackendStatus { state: 5, ..Default::default() }),
            labels: [("team".to_string(), "a".to_string())].into(),
            ..Default::default()
        };
        for (kind, backend, revision) in [
            (BackendEventType::Modified, Some(backend), 42),
            (BackendEventType::Removed, Some(Backend::default()), 1 << 40),
            (BackendEventType::SnapshotEnd, None, 7),
        ] {
            let plain =
                WatchBackendsResponse::new(BackendEvent { r#type: kind as i32, backend: backend.clone(), revision });
            let shared = WatchBackendsResponse::shared(kind, backend.as_ref().map(EncodedBackend::new), revision);
            assert_eq!(shared.encoded_len(), plain.encoded_len(), "{kind:?}");
            assert_eq!(shared.encode_to_vec(), plain.encode_to_vec(), "{kind:?}");
            let decoded = WatchBackendsResponse::decode(shared.encode_to_vec().as_slice()).unwrap();
            assert_eq!(decoded, plain);
            assert_eq!(shared.into_event().unwrap(), plain.event);
        }
    }
}
