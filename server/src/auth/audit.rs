//! The audit log: one structured line on target `hangar::audit` for every mutating call (a
//! Connect that spawns, TerminateBackend, DrainNode, UndrainNode, a drone or proxy attaching)
//! and every call refused for want of credentials or role. Lines name principals, never
//! secrets.

use super::Principal;
use std::net::SocketAddr;
use tonic::Status;

/// The tracing target of audit lines: `RUST_LOG=hangar::audit=info` keeps them alone.
pub const TARGET: &str = "hangar::audit";

/// What a call acted on; fields left `None` are not logged.
#[derive(Debug, Default, Clone, Copy)]
pub struct Target<'a> {
    pub backend_id: Option<&'a str>,
    pub node_id: Option<&'a str>,
    /// A node's name (drones and proxies attach by name).
    pub node: Option<&'a str>,
    /// A backend key, `namespace/name`.
    pub key: Option<&'a str>,
}

/// `ok`, or the stable reason of the status the call ended with (its code when it has none).
pub fn outcome<T>(result: &Result<T, Status>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(status) => match hangar::error::error_info(status) {
            Some((reason, _)) => reason,
            None => format!("{:?}", status.code()),
        },
    }
}

/// One audit line at `$level` naming the principal (name, role, where its identity came from),
/// then the given fields.
macro_rules! line {
    ($level:ident, $principal:expr, $($field:tt)*) => {
        tracing::$level!(
            target: TARGET,
            principal = %$principal.name,
            role = %$principal.role,
            source = ?$principal.source,
            $($field)*
            "audit"
        )
    };
}

/// One audit line: `principal` made (or tried) `method` on `target`, with `outcome`.
pub fn record(principal: &Principal, method: &str, target: Target<'_>, outcome: &str) {
    let Target { backend_id, node_id, node, key } = target;
    if outcome == "ok" {
        line!(info, principal, method, backend_id, node_id, node, key, outcome,);
    } else {
        line!(warn, principal, method, backend_id, node_id, node, key, outcome,);
    }
}

/// The audit line of a call refused before it reached its service: by whom, if the caller was
/// identified (a role that falls short), and from where.
pub fn refused(principal: Option<&Principal>, method: &str, remote_addr: Option<SocketAddr>, status: &Status) {
    let outcome = outcome::<()>(&Err(status.clone()));
    let remote_addr = remote_addr.map(|addr| addr.to_string());
    let remote_addr = remote_addr.as_deref();
    match principal {
        Some(principal) => line!(warn, principal, method, remote_addr, outcome,),
        None => tracing::warn!(target: TARGET, principal = "-", method, remote_addr, outcome, "audit"),
    }
}
