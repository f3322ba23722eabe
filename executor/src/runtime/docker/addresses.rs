//! The addresses of the runtime's slice of its Docker network (`--docker-addresses`), handed out
//! to the containers it puts there: backends, and the network sandboxes made ahead of them.
//!
//! One picker, and so one cursor, serves both: the rotation that keeps a freed address from the
//! next container ([`DockerNetwork`]) holds only if every address of the slice comes from it,
//! and two containers can never be given one address only if every pick is made under one lock.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use bollard::Docker;
use tokio::sync::{Mutex, MutexGuard};

use super::{DockerNetwork, inspect_network};
use crate::runtime::RuntimeError;

/// Hands out the addresses of `network`'s slice in turn around it, skipping those a container on
/// the network holds (an idle sandbox included: it is an endpoint there).
pub(super) struct AddressPicker {
    docker: Docker,
    network: DockerNetwork,
    /// Where the next address is looked for in the slice (an offset).
    cursor: Mutex<u32>,
}

/// An address just picked. The picker stays locked until this is dropped, which the caller does
/// once it has created the container that takes the address, so that two picks never take one.
pub(super) struct Picked<'a> {
    pub address: Ipv4Addr,
    _cursor: MutexGuard<'a, u32>,
}

impl AddressPicker {
    pub fn new(docker: Docker, network: DockerNetwork) -> Self {
        // A restarted runtime does not start again where its last life began handing out.
        let cursor = Mutex::new(uuid::Uuid::new_v4().as_u128() as u32);
        AddressPicker { docker, network, cursor }
    }

    /// The next address of the slice after the cursor that no container on the network holds,
    /// provided that at least `keep_free` others stay free; the cursor moves past it.
    pub async fn pick(&self, keep_free: usize) -> Result<Picked<'_>, RuntimeError> {
        let network = &self.network;
        let mut cursor = self.cursor.lock().await;
        let Some(found) = inspect_network(&self.docker, &network.name).await? else {
            return Err(RuntimeError::Unavailable(format!("no Docker network {}", network.name)));
        };
        let in_use: HashSet<Ipv4Addr> = found
            .containers
            .unwrap_or_default()
            .values()
            .filter_map(|c| c.ipv4_address.as_deref()?.split('/').next()?.parse().ok())
            .collect();
        let address = next_free(network.addresses, &mut cursor, &in_use, keep_free).ok_or_else(|| {
            let spared = if keep_free > 0 { format!(" but {keep_free}") } else { String::new() };
            RuntimeError::Unavailable(format!(
                "every address{spared} of {} on the Docker network {} is in use",
                network.addresses, network.name
            ))
        })?;
        Ok(Picked { address, _cursor: cursor })
    }
}

/// The first address of `slice` at or after offset `cursor` (around the slice) not in `in_use`,
/// when more than `keep_free` are free; `cursor` then moves past it.
fn next_free(
    slice: ipnet::Ipv4Net,
    cursor: &mut u32,
    in_use: &HashSet<Ipv4Addr>,
    keep_free: usize,
) -> Option<Ipv4Addr> {
    let hosts: Vec<Ipv4Addr> = slice.hosts().collect();
    if hosts.iter().filter(|host| !in_use.contains(host)).count() <= keep_free {
        return None;
    }
    let size = hosts.len() as u32;
    let offset =
        (0..size).map(|step| cursor.wrapping_add(step) % size).find(|&o| !in_use.contains(&hosts[o as usize]))?;
    *cursor = (offset + 1) % size;
    Some(hosts[offset as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice() -> ipnet::Ipv4Net {
        "10.0.0.0/29".parse().unwrap()
    }

    fn host(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    #[test]
    fn addresses_are_handed_out_in_turn_around_the_slice_skipping_those_in_use() {
        let mut cursor = 4;
        let in_use = HashSet::from([host(6), host(2)]);
        let picked: Vec<Ipv4Addr> = (0..4).map(|_| next_free(slice(), &mut cursor, &in_use, 0).unwrap()).collect();
        assert_eq!(picked, vec![host(5), host(1), host(3), host(4)]);
    }

    #[test]
    fn a_pick_that_must_keep_addresses_free_fails_when_no_more_are() {
        let in_use: HashSet<Ipv4Addr> = (1..=4).map(host).collect();
        let mut cursor = 0;
        assert_eq!(next_free(slice(), &mut cursor, &in_use, 2), None, "two free, two to keep");
        assert_eq!(cursor, 0, "the cursor stays");
        assert_eq!(next_free(slice(), &mut cursor, &in_use, 1), Some(host(5)));
        let full: HashSet<Ipv4Addr> = (1..=6).map(host).collect();
        assert_eq!(next_free(slice(), &mut cursor, &full, 0), None);
    }
}
