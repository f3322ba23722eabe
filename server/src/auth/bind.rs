//! Bind safety: a controller that does not know its callers listens only on loopback, unless the
//! operator says `--insecure` and is warned loudly.

use std::net::SocketAddr;

/// What `hangar-server controller` and `dev` do about the address they were asked to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindDecision {
    /// Loopback, or callers are authenticated: nothing to say.
    Safe,
    /// Anyone who reaches the address may call as admin, as the operator asked with
    /// `--insecure`: the warning to print.
    Insecure(String),
}

/// Whether to listen on `addr`. `authenticated`: callers must prove who they are (an auth file,
/// or a client CA every connection's certificate must chain to); otherwise anyone may call as
/// admin.
pub fn check(addr: SocketAddr, authenticated: bool, insecure: bool) -> Result<BindDecision, String> {
    if authenticated {
        return Ok(BindDecision::Safe);
    }
    if !insecure {
        if addr.ip().is_loopback() {
            return Ok(BindDecision::Safe);
        }
        return Err(format!(
            "refusing to listen on {addr}: without --auth-file anyone who reaches that address may call every \
             method as admin (start backends, drain nodes, attach as a drone). Give --auth-file (see \
             docs/security.md), listen on 127.0.0.1, or pass --insecure if the network itself is trusted"
        ));
    }
    Ok(BindDecision::Insecure(format!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !! WARNING: --insecure: listening on {addr} WITHOUT AUTHENTICATION.\n\
         !! Anyone who can reach this address can start containers on every drone, drain\n\
         !! nodes, attach as a drone and read every backend. Use --auth-file (docs/security.md).\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_needs_authentication_or_insecure_and_insecure_always_warns() {
        let loopback: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        let v6_loopback: SocketAddr = "[::1]:7070".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        let lan: SocketAddr = "192.168.1.10:7070".parse().unwrap();
        assert_eq!(check(loopback, false, false), Ok(BindDecision::Safe));
        assert_eq!(check(v6_loopback, false, false), Ok(BindDecision::Safe));
        assert!(matches!(check(loopback, false, true), Ok(BindDecision::Insecure(_))));
        assert_eq!(check(loopback, true, true), Ok(BindDecision::Safe));
        for addr in [any, lan] {
            let refusal = check(addr, false, false).unwrap_err();
            assert!(refusal.contains("--auth-file") && refusal.contains("--insecure"), "{refusal}");
            assert_eq!(check(addr, true, false), Ok(BindDecision::Safe));
            assert!(
                matches!(check(addr, false, true), Ok(BindDecision::Insecure(w)) if w.contains("WITHOUT AUTHENTICATION"))
            );
        }
    }
}
