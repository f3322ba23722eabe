//! Nodes: the drones and proxies of a cluster.

use super::time::{timestamp_from_proto, timestamp_to_proto};
use crate::v1;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeKind {
    Drone,
    Proxy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    Ready,
    Draining,
    Unhealthy,
    Offline,
}

/// A string that names no variant of an enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}; expected one of: {expected}")]
pub struct ParseEnumError {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

macro_rules! string_enum {
    ($ty:ident, $what:literal, $proto:path, { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }

            /// `None` for UNSPECIFIED or a value this build does not know.
            pub fn from_proto(value: i32) -> Option<Self> {
                match <$proto>::try_from(value).ok()? {
                    $(<$proto>::$variant => Some($ty::$variant),)+
                    _ => None,
                }
            }

            pub fn to_proto(self) -> $proto {
                match self { $($ty::$variant => <$proto>::$variant),+ }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = ParseEnumError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let upper = s.to_ascii_uppercase();
                match upper.as_str() {
                    $($text => Ok($ty::$variant),)+
                    _ => Err(ParseEnumError {
                        what: $what,
                        value: s.to_string(),
                        expected: concat!($($text, " "),+),
                    }),
                }
            }
        }
    };
}
pub(crate) use string_enum;

string_enum!(NodeKind, "node kind", v1::NodeKind, { Drone => "DRONE", Proxy => "PROXY" });
string_enum!(NodeState, "node state", v1::NodeState, {
    Ready => "READY", Draining => "DRAINING", Unhealthy => "UNHEALTHY", Offline => "OFFLINE",
});

impl NodeState {
    /// Whether the node holds a live stream to a controller.
    pub fn is_attached(self) -> bool {
        !matches!(self, NodeState::Offline)
    }

    /// The state of an attached node that heartbeats: DRAINING when drained, else READY.
    pub fn healthy(draining: bool) -> NodeState {
        if draining { NodeState::Draining } else { NodeState::Ready }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    pub cpu_cores: u32,
    pub cpu_used_millis: u64,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
}

impl From<&v1::NodeResources> for NodeResources {
    fn from(r: &v1::NodeResources) -> Self {
        NodeResources {
            cpu_cores: r.cpu_cores,
            cpu_used_millis: r.cpu_used_millis,
            memory_total_bytes: r.memory_total_bytes,
            memory_used_bytes: r.memory_used_bytes,
        }
    }
}

impl From<NodeResources> for v1::NodeResources {
    fn from(r: NodeResources) -> Self {
        v1::NodeResources {
            cpu_cores: r.cpu_cores,
            cpu_used_millis: r.cpu_used_millis,
            memory_total_bytes: r.memory_total_bytes,
            memory_used_bytes: r.memory_used_bytes,
        }
    }
}

/// A drone or proxy as the store records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub kind: NodeKind,
    pub cluster: String,
    pub pool: String,
    pub labels: BTreeMap<String, String>,
    pub state: NodeState,
    pub version: String,
    /// Controller holding the node's stream; empty when offline.
    pub controller_id: String,
    pub registered_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    pub resources: NodeResources,
    pub backend_count: u32,
    pub backend_capacity: u32,
    pub drain_deadline: Option<DateTime<Utc>>,
    /// Set by a drain; outlives disconnects. `state` is DRAINING while this is set and the node is
    /// attached and healthy.
    #[serde(default)]
    pub draining: bool,
    /// Revision of the node's last change.
    pub revision: u64,
}

impl From<&Node> for v1::Node {
    fn from(n: &Node) -> Self {
        v1::Node {
            id: n.id.clone(),
            name: n.name.clone(),
            kind: n.kind.to_proto() as i32,
            cluster: n.cluster.clone(),
            pool: n.pool.clone(),
            labels: n.labels.clone().into_iter().collect(),
            state: n.state.to_proto() as i32,
            version: n.version.clone(),
            controller_id: n.controller_id.clone(),
            registered_at: Some(timestamp_to_proto(n.registered_at)),
            last_heartbeat_at: Some(timestamp_to_proto(n.last_heartbeat_at)),
            resources: Some(n.resources.into()),
            backend_count: n.backend_count,
            backend_capacity: n.backend_capacity,
            drain_deadline: n.drain_deadline.map(timestamp_to_proto),
            revision: n.revision,
            draining: n.draining,
        }
    }
}

impl TryFrom<&v1::Node> for Node {
    type Error = String;

    /// For clients: a node from the wire. Fails only on values this build cannot represent.
    fn try_from(n: &v1::Node) -> Result<Self, Self::Error> {
        let time = |t: &Option<prost_types::Timestamp>| t.as_ref().and_then(timestamp_from_proto).unwrap_or_default();
        Ok(Node {
            id: n.id.clone(),
            name: n.name.clone(),
            kind: NodeKind::from_proto(n.kind).ok_or_else(|| format!("node {}: unknown kind {}", n.id, n.kind))?,
            cluster: n.cluster.clone(),
            pool: n.pool.clone(),
            labels: n.labels.clone().into_iter().collect(),
            state: NodeState::from_proto(n.state).ok_or_else(|| format!("node {}: unknown state {}", n.id, n.state))?,
            version: n.version.clone(),
            controller_id: n.controller_id.clone(),
            registered_at: time(&n.registered_at),
            last_heartbeat_at: time(&n.last_heartbeat_at),
            resources: n.resources.as_ref().map(NodeResources::from).unwrap_or_default(),
            backend_count: n.backend_count,
            backend_capacity: n.backend_capacity,
            drain_deadline: n.drain_deadline.as_ref().and_then(timestamp_from_proto),
            draining: n.draining,
            revision: n.revision,
        })
    }
}

/// Which nodes a list or watch returns; empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFilter {
    pub kinds: Vec<NodeKind>,
    pub states: Vec<NodeState>,
    pub cluster: Option<String>,
    pub pool: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl NodeFilter {
    pub fn matches(&self, node: &Node) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&node.kind))
            && (self.states.is_empty() || self.states.contains(&node.state))
            && self.cluster.as_ref().is_none_or(|c| *c == node.cluster)
            && self.pool.as_ref().is_none_or(|p| *p == node.pool)
            && self.labels.iter().all(|(k, v)| node.labels.get(k) == Some(v))
    }

    /// Field path (for error details) and message of the first invalid value, if any.
    pub fn from_proto(f: &v1::NodeFilter) -> Result<Self, (String, String)> {
        let kinds = f
            .kinds
            .iter()
            .enumerate()
            .map(|(i, k)| {
                NodeKind::from_proto(*k).ok_or((format!("filter.kinds[{i}]"), format!("unknown node kind {k}")))
            })
            .collect::<Result<_, _>>()?;
        let states = f
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| {
                NodeState::from_proto(*s).ok_or((format!("filter.states[{i}]"), format!("unknown node state {s}")))
            })
            .collect::<Result<_, _>>()?;
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Ok(NodeFilter {
            kinds,
            states,
            cluster: non_empty(&f.cluster),
            pool: non_empty(&f.pool),
            labels: f.labels.clone().into_iter().collect(),
        })
    }

    pub fn to_proto(&self) -> v1::NodeFilter {
        v1::NodeFilter {
            kinds: self.kinds.iter().map(|k| k.to_proto() as i32).collect(),
            states: self.states.iter().map(|s| s.to_proto() as i32).collect(),
            cluster: self.cluster.clone().unwrap_or_default(),
            pool: self.pool.clone().unwrap_or_default(),
            labels: self.labels.clone().into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_parse_case_insensitively_and_name_the_choices_on_error() {
        assert_eq!("drone".parse::<NodeKind>(), Ok(NodeKind::Drone));
        assert_eq!("Offline".parse::<NodeState>(), Ok(NodeState::Offline));
        let err = "zombie".parse::<NodeState>().unwrap_err();
        assert!(err.to_string().contains("READY DRAINING UNHEALTHY OFFLINE"), "{err}");
    }

    #[test]
    fn unspecified_proto_enums_are_not_domain_values() {
        assert_eq!(NodeKind::from_proto(0), None);
        assert_eq!(NodeState::from_proto(99), None);
        assert_eq!(NodeState::from_proto(v1::NodeState::Draining as i32), Some(NodeState::Draining));
    }
}
