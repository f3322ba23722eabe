//! Placement of new backends: which drones may take one, and which of them does.
//!
//! Candidates are READY drones of the backend's cluster and pool (draining, unhealthy and
//! offline ones are skipped). Room is counted by the store from the live backends placed on each
//! drone, under the same lock that places the new one, so a burst of Connects cannot overfill a
//! drone the way counting from heartbeats would. Among drones with room, two are drawn at random
//! and the one with more free slots wins (power of two choices): near-best balance without every
//! controller piling onto the same emptiest drone.
//!
//! When no drone can take the backend, the answer says why: [`census`] counts the pool's drones
//! by state (one query, on the failure path only), so a user whose only drone is draining learns
//! that and how to undo it instead of reading "no drone is ready".

use crate::store::{DroneCensus, DroneLoad, DroneSlot, DynStore, StoreError};
use crate::watch::WatchHub;
use hangar::domain::{NodeFilter, NodeKind, NodeState};
use rand::Rng;
use std::sync::Arc;

/// READY drones of `cluster`/`pool` with their capacities: from the watch hub's node view when
/// it has caught up with every commit this controller has seen (no store read; the list is
/// computed once per node change and shared), else read from the store.
pub async fn candidates(
    store: &DynStore,
    hub: &WatchHub,
    cluster: &str,
    pool: &str,
) -> Result<Arc<[DroneSlot]>, StoreError> {
    if let Some(slots) = hub.drone_slots(cluster, pool).await {
        return Ok(slots);
    }
    let filter = candidates_filter(cluster, pool);
    let mut slots = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_nodes(&filter, None, after.as_deref(), 500).await?;
        slots.extend(page.nodes.iter().map(|n| DroneSlot { node_id: n.id.clone(), capacity: n.backend_capacity }));
        match (page.more, page.nodes.last()) {
            (true, Some(last)) => after = Some(last.id.clone()),
            _ => return Ok(slots.into()),
        }
    }
}

/// The drones that may take a new backend of `cluster`/`pool`.
pub fn candidates_filter(cluster: &str, pool: &str) -> NodeFilter {
    NodeFilter {
        kinds: vec![NodeKind::Drone],
        states: vec![NodeState::Ready],
        cluster: Some(cluster.to_string()),
        pool: Some(pool.to_string()),
        ..NodeFilter::default()
    }
}

/// The drones of `cluster`/`pool` by state, for NO_DRONE_AVAILABLE and POOL_FULL.
pub async fn census(store: &DynStore, cluster: &str, pool: &str) -> Result<DroneCensus, StoreError> {
    store.drone_census(cluster, pool).await
}

/// Index of the chosen drone among `loads` (all of which have room); `None` when empty.
pub fn power_of_two_choices(loads: &[DroneLoad]) -> Option<usize> {
    match loads.len() {
        0 => None,
        1 => Some(0),
        n => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            Some(if loads[b].free() > loads[a].free() { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(id: &str, capacity: u32, live: u32) -> DroneLoad {
        DroneLoad { node_id: id.into(), capacity, live }
    }

    #[test]
    fn two_choices_prefer_the_drone_with_more_room() {
        let loads = [load("busy", 10, 9), load("idle", 10, 0)];
        for _ in 0..50 {
            assert_eq!(power_of_two_choices(&loads), Some(1));
        }
    }

    #[test]
    fn no_candidates_means_no_choice() {
        assert_eq!(power_of_two_choices(&[]), None);
        assert_eq!(power_of_two_choices(&[load("only", 1, 0)]), Some(0));
    }

    #[test]
    fn spread_over_equal_drones_reaches_all_of_them() {
        let loads: Vec<_> = (0..4).map(|i| load(&format!("d{i}"), 10, 0)).collect();
        let mut seen = [false; 4];
        for _ in 0..200 {
            seen[power_of_two_choices(&loads).unwrap()] = true;
        }
        assert!(seen.iter().all(|s| *s), "{seen:?}");
    }
}
