//! [`CallerKey`]: whose limits a request counts against.

use crate::auth::{PeerIdentity, Principal, Source};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use tonic::transport::server::TcpConnectInfo;

/// Whose limits a request counts against: the principal that authenticated, else the address it
/// came from. An IPv6 address counts as its /64, since one host usually holds a whole /64 and
/// could otherwise take a fresh set of limits with every address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CallerKey {
    Principal(Arc<str>),
    Address(IpAddr),
    /// A request with neither (a connection type that reports no address): one shared key.
    Unknown,
}

impl CallerKey {
    /// The key of a request, from what the auth layer and the transport left in its extensions:
    /// an authenticated [`Principal`] (not the anonymous one, which everyone shares), else the
    /// remote address of [`PeerIdentity`] (TLS-capable connections) or [`TcpConnectInfo`].
    pub fn of(extensions: &http::Extensions) -> CallerKey {
        if let Some(principal) = extensions.get::<Arc<Principal>>()
            && principal.source != Source::Anonymous
        {
            return CallerKey::Principal(principal.name.as_str().into());
        }
        let address = extensions
            .get::<PeerIdentity>()
            .and_then(|peer| peer.remote_addr)
            .or_else(|| extensions.get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr));
        match address {
            Some(address) => CallerKey::Address(network_of(address.ip())),
            None => CallerKey::Unknown,
        }
    }
}

/// The address a caller is known by: IPv4 as it is (and IPv4 mapped into IPv6 as IPv4), IPv6 as
/// its /64 network.
fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

impl fmt::Display for CallerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallerKey::Principal(name) => write!(f, "principal {name}"),
            CallerKey::Address(IpAddr::V6(network)) => write!(f, "address {network}/64"),
            CallerKey::Address(address) => write!(f, "address {address}"),
            CallerKey::Unknown => f.write_str("unknown caller"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use std::net::SocketAddr;

    fn principal(name: &str, source: Source) -> Arc<Principal> {
        Arc::new(Principal { name: name.into(), role: Role::Client, nodes: None, source })
    }

    fn peer(address: &str) -> PeerIdentity {
        PeerIdentity { remote_addr: Some(address.parse::<SocketAddr>().unwrap()), certificate: None }
    }

    #[test]
    fn an_authenticated_principal_is_its_own_key_and_the_anonymous_one_counts_by_address() {
        let mut extensions = http::Extensions::new();
        extensions.insert(peer("10.0.0.7:5000"));
        extensions.insert(principal("ci", Source::Token));
        assert_eq!(CallerKey::of(&extensions), CallerKey::Principal("ci".into()));
        extensions.insert(principal("anonymous", Source::Anonymous));
        assert_eq!(CallerKey::of(&extensions), CallerKey::Address("10.0.0.7".parse().unwrap()));
    }

    #[test]
    fn without_a_peer_identity_the_tcp_address_counts_and_without_either_one_shared_key() {
        let extensions = http::Extensions::new();
        assert_eq!(CallerKey::of(&extensions), CallerKey::Unknown);
        let mut extensions = http::Extensions::new();
        extensions.insert(peer("127.0.0.1:1"));
        assert_eq!(CallerKey::of(&extensions).to_string(), "address 127.0.0.1");
    }

    #[test]
    fn an_ipv6_caller_counts_as_its_slash_64_and_a_mapped_ipv4_as_ipv4() {
        let key = |address: &str| {
            let mut extensions = http::Extensions::new();
            extensions.insert(peer(address));
            CallerKey::of(&extensions)
        };
        assert_eq!(key("[2001:db8:1:2:aaaa::1]:80"), key("[2001:db8:1:2:bbbb::9]:443"));
        assert_ne!(key("[2001:db8:1:2::1]:80"), key("[2001:db8:1:3::1]:80"));
        assert_eq!(key("[2001:db8:1:2::1]:80").to_string(), "address 2001:db8:1:2::/64");
        assert_eq!(key("[::ffff:192.0.2.1]:80"), key("192.0.2.1:80"));
    }
}
