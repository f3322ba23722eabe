//! Who is calling, and what they may do: the controller's authentication and authorization
//! (docs/design/security.md).
//!
//! Every call passes one tower layer that names its [`Principal`] (a bearer token, a client
//! certificate, or nobody), checks the method against the one authorization table, applies the
//! principal's limits, and leaves the principal in the request's extensions for the services
//! (a drone may attach only as the nodes its principal names; audit lines name the principal).

pub mod audit;
pub mod authenticator;
pub mod bind;
pub mod file;
pub mod layer;
pub mod table;

pub use authenticator::Authenticator;
pub use layer::AuthLayer;
pub use table::Reflection;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

/// What a principal may do. `Reader < Client < Operator < Admin` is a ladder: each role may do
/// everything the one below it may. `Drone` and `Proxy` stand aside: each reaches only its own
/// service (`DroneService`, `ProxyService`). `Admin` reaches every method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Lists, gets and watches nodes and backends.
    Reader,
    /// A reader that also connects and terminates backends.
    Client,
    /// A client that also drains and undrains nodes.
    Operator,
    /// Everything.
    Admin,
    /// Only `DroneService.Attach`, and only as the node names its principal allows.
    Drone,
    /// Only `ProxyService`.
    Proxy,
}

impl Role {
    pub const ALL: [Role; 6] = [Role::Reader, Role::Client, Role::Operator, Role::Admin, Role::Drone, Role::Proxy];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Client => "client",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Drone => "drone",
            Role::Proxy => "proxy",
        }
    }

    /// Whether a principal with this role holds `required` (the ladder for reader … admin; a
    /// side role holds only itself; admin holds every role).
    pub fn includes(self, required: Role) -> bool {
        match (self, required) {
            (Role::Admin, _) => true,
            (have, want) if have == want => true,
            (Role::Drone | Role::Proxy, _) | (_, Role::Drone | Role::Proxy) => false,
            (have, want) => have >= want,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|role| role.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
            format!("unknown role {s:?}; one of {}", names.join(", "))
        })
    }
}

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A bearer token from the auth file.
    Token,
    /// A client certificate (mTLS) whose common name the auth file maps to a role.
    Certificate,
    /// Nobody: authentication is off (no auth file), or an open method called without
    /// credentials.
    Anonymous,
    /// A component of this very process (`hangar-server dev`'s embedded drone and proxy).
    Internal,
}

/// Who is calling. Handlers read it with [`principal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The name in the auth file (or the certificate's common name): what logs and audit lines
    /// show. Never a secret.
    pub name: String,
    pub role: Role,
    /// For drones and proxies: the node names this principal may attach as; `None` = any.
    pub nodes: Option<Vec<String>>,
    pub source: Source,
}

impl Principal {
    /// Everyone, when authentication is off: what Hangar allowed before it had authentication,
    /// kept for loopback and `--insecure` deployments.
    pub fn anonymous_admin() -> Self {
        Principal { name: "anonymous".into(), role: Role::Admin, nodes: None, source: Source::Anonymous }
    }

    /// Nobody: a caller without credentials, on a method open to everyone (health). May do
    /// nothing that needs a role, and attach as no node.
    pub fn anonymous() -> Self {
        Principal { name: "anonymous".into(), role: Role::Reader, nodes: Some(Vec::new()), source: Source::Anonymous }
    }

    /// Whether this principal may attach a drone or proxy node named `node`.
    pub fn may_attach_as(&self, node: &str) -> bool {
        self.nodes.as_ref().is_none_or(|names| names.iter().any(|n| n == node))
    }
}

/// What the transport knows about a connection: the controller's
/// `tonic::transport::server::Connected::ConnectInfo`, found in every request's extensions.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity {
    pub remote_addr: Option<SocketAddr>,
    /// The verified client certificate, on a TLS connection whose client presented one.
    pub certificate: Option<Arc<PeerCertificate>>,
}

/// A client certificate that chained to the configured client CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject's common name, when it has one.
    pub common_name: Option<String>,
    /// The leaf certificate, DER-encoded.
    pub der: Vec<u8>,
}

/// The principal the auth layer attached to a request. Every request that reached a service
/// went through the layer, so a missing one is a wiring bug: it answers as nobody, never as
/// admin.
pub fn principal<T>(request: &tonic::Request<T>) -> Arc<Principal> {
    request.extensions().get::<Arc<Principal>>().cloned().unwrap_or_else(|| {
        Arc::new(Principal {
            name: "unknown".into(),
            role: Role::Reader,
            nodes: Some(Vec::new()),
            source: Source::Anonymous,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ladder_includes_the_roles_below_and_side_roles_only_themselves() {
        assert!(Role::Operator.includes(Role::Client));
        assert!(Role::Client.includes(Role::Reader));
        assert!(!Role::Reader.includes(Role::Client));
        assert!(!Role::Drone.includes(Role::Reader));
        assert!(!Role::Operator.includes(Role::Drone));
        assert!(Role::Admin.includes(Role::Proxy));
        assert!(Role::Proxy.includes(Role::Proxy));
    }

    #[test]
    fn roles_parse_from_their_names_and_an_unknown_one_lists_them() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("superuser".parse::<Role>().unwrap_err().contains("reader, client"));
    }

    #[test]
    fn a_bound_principal_attaches_only_as_its_nodes() {
        let drone = Principal {
            name: "d".into(),
            role: Role::Drone,
            nodes: Some(vec!["drone-a".into()]),
            source: Source::Token,
        };
        assert!(drone.may_attach_as("drone-a"));
        assert!(!drone.may_attach_as("drone-b"));
        assert!(Principal::anonymous_admin().may_attach_as("anything"));
    }
}
