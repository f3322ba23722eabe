//! `hangar.v1.WatchNodesResponse` and `hangar.v1.WatchBackendsResponse`, written by hand so that
//! a watch event is encoded once and shared by every stream that sends it.
//!
//! prost-build maps the messages here (`extern_path` in `build.rs`); the wire format is exactly
//! the generated one. A response is either a decoded event (what clients receive and what the
//! server builds for one-off events) or a [`SharedEvent`]: the event type and revision of one
//! stream plus the object encoded once per change, which encoding copies instead of serializing
//! the object again for each of a thousand watchers (BENCHMARKS.md, "Encode once"). Both events
//! have the same shape (`type = 1`, the object `= 2`, `revision = 3`), so one macro writes both.

use crate::v1::{Backend, BackendEvent, BackendEventType, Node, NodeEvent, NodeEventType};
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, int32, key_len, uint64};
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{BackendKey, BackendStatus, NodeResources};

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
