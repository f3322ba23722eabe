//! The backend half of the store, scenario by scenario against SQLite and a real PostgreSQL.

use chrono::{Duration, Utc};
use hangar::domain::{
    BackendKey, BackendState, BackendStatus, NodeKind, NodeResources, SpawnConfig, TerminationKind, TerminationReason,
};
use hangar::v1;
use hangar_server::store::{
    ActionPayload, BackendFilter, Change, ChangeKind, ConnectOutcome, ConnectSpec, ControllerTick, DroneEvent,
    DroneLoad, DroneSlot, EventOutcome, IssuedToken, KeyRenewal, NodeRegistration, NodeUpdate, SpawnPlan,
    UpdateCondition, new_action_id,
};
use std::collections::BTreeSet;
use std::time::Instant;

type Database = hangar_server::testing::TestDatabase;

hangar_server::store_scenarios!(
    connect_spawns_once_then_finds_the_live_backend,
    fifty_concurrent_connects_through_two_stores_yield_one_backend,
    a_different_tag_is_refused_while_the_key_is_held,
    expired_lease_frees_the_key_and_the_next_holder_gets_a_higher_fencing_token,
    a_lost_backend_takes_its_drones_key_expired_report_once_and_nothing_else,
    an_expired_key_whose_drone_was_told_to_wait_is_held_for_the_grace_and_no_longer,
    events_move_forward_only_and_termination_frees_key_and_actions,
    placement_counts_live_backends_and_reports_a_full_pool,
    terminate_stores_one_action_per_kind_and_ignores_terminated_backends,
    renewal_needs_the_current_fencing_token,
    a_batch_renewal_renews_each_held_key_and_refuses_the_others_alone,
    renewal_calls_that_arrive_together_each_keep_their_own_expiry_and_answers,
    a_renewal_that_commits_after_a_later_one_never_moves_the_lease_back,
    renewals_of_the_same_keys_through_two_stores_in_opposite_orders_all_commit,
    a_status_message_is_kept_in_the_history_and_never_shows_a_secret,
    a_passed_drain_deadline_terminates_only_while_the_drone_is_still_drained,
    the_watch_log_carries_backend_and_node_changes_in_revision_order_with_the_state_before,
    listings_and_snapshots_carry_their_revision_and_filter_by_pool_labels_and_key_prefix,
    retention_removes_a_terminated_backends_rows_keeps_a_live_keys_and_a_reused_key_gets_a_higher_token,
    retention_removes_in_batches_each_backend_one_removed_change_under_its_own_revision,
    compaction_past_many_revisions_reaches_its_target_in_steps_for_nodes_and_backends,
    concurrent_connects_through_two_stores_onto_small_drones_never_overfill_one_and_give_one_backend_per_key,
    a_drones_reports_in_one_call_apply_in_order_free_capacity_and_acknowledge_actions,
    the_sweep_reads_only_backends_past_a_limit_and_traffic_defers_an_idle_one,
);

fn key(name: &str, tag: &str) -> BackendKey {
    BackendKey { namespace: "docs".into(), name: name.into(), tag: tag.into() }
}

fn config() -> SpawnConfig {
    let wire = v1::SpawnConfig {
        executable: Some(v1::Executable { image: "hangar/test:1".into(), ..Default::default() }),
        ..Default::default()
    };
    SpawnConfig::from_proto(&wire, "spawn_config").unwrap()
}

fn drones(capacity: u32, names: &[&str]) -> Vec<DroneSlot> {
    names.iter().map(|n| DroneSlot { node_id: n.to_string(), capacity }).collect()
}

fn spec(key: Option<BackendKey>, candidates: Vec<DroneSlot>, lease: std::time::Duration) -> ConnectSpec {
    let now = Utc::now();
    ConnectSpec {
        key,
        spawn: Some(SpawnPlan {
            backend_id: hangar::domain::Backend::new_id(),
            action_id: new_action_id(),
            config: config(),
            candidates: candidates.into(),
            lease_duration: lease,
            action: ActionPayload::Spawn {
                startup_timeout: std::time::Duration::from_secs(5),
                lease_duration: lease,
                stop_grace: std::time::Duration::from_secs(1),
                trace_context: Default::default(),
            },
            static_token_hash: None,
        }),
        token: IssuedToken {
            hash: format!("{:x}", rand_u128()),
            user: "u".into(),
            auth: Default::default(),
            expires_at: now + Duration::hours(1),
        },
        now,
    }
}

fn rand_u128() -> u128 {
    uuid::Uuid::new_v4().as_u128()
}

fn first(loads: &[DroneLoad]) -> Option<usize> {
    (!loads.is_empty()).then_some(0)
}

const LEASE: std::time::Duration = std::time::Duration::from_secs(30);

async fn connect_spawns_once_then_finds_the_live_backend(db: Database) {
    let store = db.open().await;
    let spawned = match store.connect_backend(spec(Some(key("a", "")), drones(5, &["d1"]), LEASE), &first).await {
        Ok(ConnectOutcome::Spawned(b)) => b,
        other => panic!("expected a spawn, got {other:?}"),
    };
    assert_eq!(spawned.status.state, BackendState::Scheduled);
    assert_eq!(spawned.fencing_token, 1);
    assert_eq!(spawned.drone_id, "d1");
    let found = store.connect_backend(spec(Some(key("a", "")), drones(5, &["d1"]), LEASE), &first).await.unwrap();
    assert_eq!(found, ConnectOutcome::Found(spawned.clone()));
    let actions = store.pending_actions("d1").await.unwrap();
    assert_eq!(actions.len(), 1, "one Spawn action, not one per Connect");
    assert_eq!(actions[0].backend_id, spawned.id);
    store.ack_action("d1", &actions[0].id).await.unwrap();
    assert!(store.pending_actions("d1").await.unwrap().is_empty());
    let history = store.backend_history(&spawned.id, 0).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].1.state, BackendState::Scheduled);
    // Without a key: a fresh backend every time.
    let mut ids = BTreeSet::new();
    for _ in 0..2 {
        match store.connect_backend(spec(None, drones(5, &["d1"]), LEASE), &first).await.unwrap() {
            ConnectOutcome::Spawned(b) => assert!(ids.insert(b.id)),
            other => panic!("{other:?}"),
        }
    }
}

async fn fifty_concurrent_connects_through_two_stores_yield_one_backend(db: Database) {
    let stores = [db.open().await, db.open().await];
    let revision_before = stores[0].current_revision().await.unwrap();
    let started = Instant::now();
    let calls = (0..50).map(|i| {
        let store = stores[i % 2].clone();
        tokio::spawn(async move {
            store.connect_backend(spec(Some(key("shared", "v1")), drones(100, &["d1", "d2"]), LEASE), &first).await
        })
    });
    let outcomes: Vec<_> = futures::future::join_all(calls).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
    let elapsed = started.elapsed();
    let mut ids = BTreeSet::new();
    let mut spawned = 0;
    for outcome in &outcomes {
        match outcome {
            ConnectOutcome::Spawned(b) => {
                spawned += 1;
                ids.insert(b.id.clone());
            }
            ConnectOutcome::Found(b) => {
                ids.insert(b.id.clone());
            }
            other => panic!("{other:?}"),
        }
    }
    println!("50 concurrent connects over two stores ({}): {elapsed:?}", db.url.split(':').next().unwrap());
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(spawned, 1);
    assert!(stores[1].current_revision().await.unwrap() > revision_before);
}

async fn a_different_tag_is_refused_while_the_key_is_held(db: Database) {
    let store = db.open().await;
    assert!(matches!(
        store.connect_backend(spec(Some(key("t", "v1")), drones(5, &["d1"]), LEASE), &first).await.unwrap(),
        ConnectOutcome::Spawned(_)
    ));
    assert_eq!(
        store.connect_backend(spec(Some(key("t", "v2")), drones(5, &["d1"]), LEASE), &first).await.unwrap(),
        ConnectOutcome::TagMismatch { held_tag: "v1".into() }
    );
    let mut no_spawn = spec(Some(key("other", "")), drones(5, &["d1"]), LEASE);
    no_spawn.spawn = None;
    assert_eq!(store.connect_backend(no_spawn, &first).await.unwrap(), ConnectOutcome::NotFound);
}

async fn expired_lease_frees_the_key_and_the_next_holder_gets_a_higher_fencing_token(db: Database) {
    let store = db.open().await;
    // A lease long enough that a loaded machine cannot expire it before the first check; the
    // expiry is then observed at a time given to the store, not by waiting for it.
    let short = std::time::Duration::from_secs(30);
    let ConnectOutcome::Spawned(first_holder) =
        store.connect_backend(spec(Some(key("l", "")), drones(5, &["d1"]), short), &first).await.unwrap()
    else {
        panic!("no spawn")
    };
    assert!(store.expired_key_holders(Utc::now(), LEASE).await.unwrap().is_empty());
    let later = Utc::now() + Duration::seconds(31);
    let expired = store.expired_key_holders(later, LEASE).await.unwrap();
    assert_eq!(expired.iter().map(|b| b.id.clone()).collect::<Vec<_>>(), vec![first_holder.id.clone()]);
    let released = store.release_expired_key(&first_holder.id, true, later, LEASE).await.unwrap().unwrap();
    assert_eq!(released.status.state, BackendState::Terminated);
    assert_eq!(released.status.termination_reason, Some(TerminationReason::Lost));
    assert!(store.pending_actions("d1").await.unwrap().is_empty(), "actions of a lost backend are dropped");
    let ConnectOutcome::Spawned(second) =
        store.connect_backend(spec(Some(key("l", "")), drones(5, &["d1"]), LEASE), &first).await.unwrap()
    else {
        panic!("key not free")
    };
    assert_ne!(second.id, first_holder.id);
    assert_eq!(second.fencing_token, first_holder.fencing_token + 1);
}

/// A drone cut off from every controller stops its keyed backend at half the lease (KEY_EXPIRED)
/// while the controllers, hearing nothing, record it LOST once the lease runs out. When the drone
/// comes back, its report replaces the LOST record's reason and time, as a new revision, through
/// either write path (one event, or a drone's batch); the key stays with its next holder. Any
/// other late report of a LOST backend, and a second KEY_EXPIRED, is ignored.
async fn a_lost_backend_takes_its_drones_key_expired_report_once_and_nothing_else(db: Database) {
    let store = db.open().await;
    let short = std::time::Duration::from_secs(30);
    let later = Utc::now() + Duration::seconds(31);
    let mut lost = Vec::new();
    for name in ["cut-1", "cut-2"] {
        let ConnectOutcome::Spawned(b) =
            store.connect_backend(spec(Some(key(name, "")), drones(5, &["d1"]), short), &first).await.unwrap()
        else {
            panic!("no spawn")
        };
        let released = store.release_expired_key(&b.id, true, later, LEASE).await.unwrap().unwrap();
        assert_eq!(released.status.termination_reason, Some(TerminationReason::Lost));
        lost.push(released);
    }
    let ConnectOutcome::Spawned(next) =
        store.connect_backend(spec(Some(key("cut-1", "")), drones(5, &["d2"]), LEASE), &first).await.unwrap()
    else {
        panic!("the key of a LOST backend is free")
    };
    let stopped_at = later - Duration::seconds(16);
    let report = |reason| {
        let mut status = BackendStatus::new(BackendState::Terminated, stopped_at);
        status.termination_kind = Some(TerminationKind::Soft);
        status.termination_reason = Some(reason);
        status.message = "no key lease renewal was confirmed for half the lease".into();
        status
    };
    // Reports that do not tell how a LOST backend ended are ignored.
    for reason in [TerminationReason::Lost, TerminationReason::External, TerminationReason::Swept] {
        let outcome = store.apply_backend_event("d1", &lost[0].id, report(reason), "", later).await.unwrap();
        assert_eq!(outcome, EventOutcome::Ignored, "{reason:?} after LOST");
    }
    assert_eq!(
        store.apply_backend_event("d2", &lost[0].id, report(TerminationReason::KeyExpired), "", later).await.unwrap(),
        EventOutcome::Unknown,
        "only its own drone tells"
    );
    let before = store.current_revision().await.unwrap();
    let outcome =
        store.apply_backend_event("d1", &lost[0].id, report(TerminationReason::KeyExpired), "", later).await.unwrap();
    let EventOutcome::Applied(refined) = outcome else { panic!("KEY_EXPIRED after LOST: {outcome:?}") };
    assert_eq!(refined.status.state, BackendState::Terminated);
    assert_eq!(refined.status.termination_reason, Some(TerminationReason::KeyExpired));
    assert_eq!(refined.status.time, stopped_at, "when the drone stopped it");
    assert!(store.current_revision().await.unwrap() > before, "a new revision");
    let history = store.backend_history(&lost[0].id, 0).await.unwrap();
    let reasons: Vec<_> = history.iter().filter_map(|(_, s)| s.termination_reason).collect();
    assert_eq!(reasons, vec![TerminationReason::Lost, TerminationReason::KeyExpired]);
    let again =
        store.apply_backend_event("d1", &lost[0].id, report(TerminationReason::KeyExpired), "", later).await.unwrap();
    assert_eq!(again, EventOutcome::Ignored, "once");
    // The batch path, as a drone's reports after it re-attached.
    let event = DroneEvent {
        backend_id: lost[1].id.clone(),
        status: report(TerminationReason::KeyExpired),
        address: String::new(),
        now: later,
    };
    let outcomes = store.apply_drone_reports("d1", vec![event], Vec::new()).await.unwrap();
    assert!(
        matches!(&outcomes[..], [EventOutcome::Applied(b)] if b.status.termination_reason == Some(TerminationReason::KeyExpired))
    );
    // The key stayed with its next holder, whose fencing token is higher.
    let holder = store.get_backend(&next.id).await.unwrap().unwrap();
    assert!(holder.status.state.is_live());
    assert!(holder.fencing_token > lost[0].fencing_token);
    let ConnectOutcome::Found(found) =
        store.connect_backend(spec(Some(key("cut-1", "")), drones(5, &["d2"]), LEASE), &first).await.unwrap()
    else {
        panic!("the key's holder found")
    };
    assert_eq!(found.id, next.id);
}

/// A store outage: controller A deferred the key's renewal; B, which reaches the store again
/// first, must not free the key while A's drone may still serve it
/// (docs/design/backends-and-leases.md#store-outages).
async fn an_expired_key_whose_drone_was_told_to_wait_is_held_for_the_grace_and_no_longer(db: Database) {
    let store = db.open().await;
    let grace = std::time::Duration::from_secs(120);
    let connected_at = Utc::now();
    let ConnectOutcome::Spawned(holder) =
        store.connect_backend(spec(Some(key("w", "")), drones(5, &["d1"]), LEASE), &first).await.unwrap()
    else {
        panic!("no spawn")
    };
    let tick = |id: &str, seen: chrono::DateTime<Utc>, deferral: Option<chrono::DateTime<Utc>>| ControllerTick {
        controller_id: id.into(),
        seen_at: seen,
        last_deferral_at: deferral,
        outage_grace: grace,
        stopped_at: None,
    };
    let long_ago = connected_at - Duration::days(1);
    // The lease runs out during the outage (30 s after Connect); A deferred 5 s after Connect.
    let back = connected_at + Duration::seconds(60);
    store
        .record_controller_tick(&tick("ctl-a", back, Some(connected_at + Duration::seconds(5))), long_ago)
        .await
        .unwrap();
    store.record_controller_tick(&tick("ctl-b", back, None), long_ago).await.unwrap();
    let ticks = store.controller_ticks().await.unwrap();
    assert_eq!(ticks.len(), 2);
    let later = back + Duration::seconds(1);
    assert!(store.expired_key_holders(later, LEASE).await.unwrap().is_empty(), "held for the grace");
    let still = store.release_expired_key(&holder.id, true, later, LEASE).await.unwrap().unwrap();
    assert_eq!(still.status.state, BackendState::Scheduled, "the sweep's second look holds it too");
    // A's drone renews once the store is back: the key is still its own.
    assert!(
        store.renew_key(&holder.id, &key("w", ""), holder.fencing_token, later + Duration::seconds(30)).await.unwrap()
    );
    assert!(store.expired_key_holders(later + Duration::seconds(20), LEASE).await.unwrap().is_empty());

    // Had it not: past the grace, the key goes.
    let past_grace = later + Duration::seconds(30) + Duration::seconds(122);
    let expired = store.expired_key_holders(past_grace, LEASE).await.unwrap();
    assert_eq!(expired.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), [holder.id.as_str()]);
    let freed = store.release_expired_key(&holder.id, true, past_grace, LEASE).await.unwrap().unwrap();
    assert_eq!(freed.status.termination_reason, Some(TerminationReason::Lost));

    // Ticks a controller no longer needs are forgotten by the next tick of another.
    store.record_controller_tick(&tick("ctl-b", past_grace, None), back + Duration::seconds(1)).await.unwrap();
    let ids: Vec<_> = store.controller_ticks().await.unwrap().into_iter().map(|t| t.controller_id).collect();
    assert_eq!(ids, ["ctl-b"]);
}

async fn events_move_forward_only_and_termination_frees_key_and_actions(db: Database) {
    let store = db.open().await;
    let ConnectOutcome::Spawned(b) =
        store.connect_backend(spec(Some(key("e", "")), drones(5, &["d1"]), LEASE), &first).await.unwrap()
    else {
        panic!()
    };
    let now = Utc::now();
    let ready = BackendStatus::new(BackendState::Ready, now);
    let applied = store.apply_backend_event("d1", &b.id, ready.clone(), "127.0.0.1:9000", now).await.unwrap();
    assert!(matches!(&applied, EventOutcome::Applied(b) if b.address == "127.0.0.1:9000"));
    let starting = BackendStatus::new(BackendState::Starting, now);
    assert_eq!(store.apply_backend_event("d1", &b.id, starting, "", now).await.unwrap(), EventOutcome::Ignored);
    assert_eq!(store.apply_backend_event("d1", &b.id, ready, "", now).await.unwrap(), EventOutcome::Ignored);
    assert_eq!(
        store
            .apply_backend_event("d2", &b.id, BackendStatus::new(BackendState::Terminated, now), "", now)
            .await
            .unwrap(),
        EventOutcome::Unknown,
        "another drone cannot end it"
    );
    let mut ended = BackendStatus::new(BackendState::Terminated, now);
    ended.exit_code = Some(3);
    ended.termination_reason = Some(TerminationReason::Exited);
    assert!(matches!(store.apply_backend_event("d1", &b.id, ended, "", now).await.unwrap(), EventOutcome::Applied(_)));
    assert!(store.pending_actions("d1").await.unwrap().is_empty());
    let states: Vec<_> = store.backend_history(&b.id, 0).await.unwrap().into_iter().map(|(_, s)| s.state).collect();
    assert_eq!(states, vec![BackendState::Scheduled, BackendState::Ready, BackendState::Terminated]);
    let ConnectOutcome::Spawned(next) =
        store.connect_backend(spec(Some(key("e", "")), drones(5, &["d1"]), LEASE), &first).await.unwrap()
    else {
        panic!("key not freed by TERMINATED")
    };
    assert_eq!(next.fencing_token, 2);
}

async fn placement_counts_live_backends_and_reports_a_full_pool(db: Database) {
    let store = db.open().await;
    for _ in 0..2 {
        assert!(matches!(
            store.connect_backend(spec(None, drones(2, &["d1"]), LEASE), &first).await.unwrap(),
            ConnectOutcome::Spawned(_)
        ));
    }
    assert_eq!(
        store.connect_backend(spec(None, drones(2, &["d1"]), LEASE), &first).await.unwrap(),
        ConnectOutcome::PoolFull
    );
    assert_eq!(store.connect_backend(spec(None, vec![], LEASE), &first).await.unwrap(), ConnectOutcome::NoDrone);
}

async fn terminate_stores_one_action_per_kind_and_ignores_terminated_backends(db: Database) {
    let store = db.open().await;
    let ConnectOutcome::Spawned(b) =
        store.connect_backend(spec(None, drones(5, &["d1"]), LEASE), &first).await.unwrap()
    else {
        panic!()
    };
    let now = Utc::now();
    for _ in 0..2 {
        store.request_termination(&b.id, TerminationKind::Soft, TerminationReason::External, now).await.unwrap();
    }
    store.request_termination(&b.id, TerminationKind::Hard, TerminationReason::External, now).await.unwrap();
    let kinds: Vec<_> = store.pending_actions("d1").await.unwrap().into_iter().map(|a| a.payload).collect();
    assert_eq!(kinds.len(), 3, "spawn, one soft and one hard terminate: {kinds:?}");
    store.apply_backend_event("d1", &b.id, BackendStatus::new(BackendState::Terminated, now), "", now).await.unwrap();
    let after =
        store.request_termination(&b.id, TerminationKind::Hard, TerminationReason::External, now).await.unwrap();
    assert_eq!(after.unwrap().status.state, BackendState::Terminated);
    assert!(store.pending_actions("d1").await.unwrap().is_empty());
    assert!(
        store
            .request_termination("bk-missing", TerminationKind::Soft, TerminationReason::External, now)
            .await
            .unwrap()
            .is_none()
    );
}

async fn a_passed_drain_deadline_terminates_only_while_the_drone_is_still_drained(db: Database) {
    let store = db.open().await;
    let registration = NodeRegistration {
        kind: NodeKind::Drone,
        name: "d1".into(),
        cluster: "default".into(),
        pool: "default".into(),
        labels: Default::default(),
        version: "1.0.0".into(),
        backend_capacity: 5,
        resources: NodeResources::default(),
    };
    let now = Utc::now();
    let node = store.attach_node(registration, "controller-a", now).await.unwrap();
    let spawn = |node_id: &str| spec(None, drones(5, &[node_id]), LEASE);
    let (ConnectOutcome::Spawned(a), ConnectOutcome::Spawned(b)) = (
        store.connect_backend(spawn(&node.id), &first).await.unwrap(),
        store.connect_backend(spawn(&node.id), &first).await.unwrap(),
    ) else {
        panic!("two backends on the drone")
    };
    let terminates = |store: &hangar_server::store::DynStore| {
        let (store, id) = (store.clone(), node.id.clone());
        async move {
            let actions = store.pending_actions(&id).await.unwrap();
            actions.into_iter().filter(|a| matches!(a.payload, ActionPayload::Terminate { .. })).count()
        }
    };

    // Not draining, or draining with a deadline still ahead: nothing happens.
    assert!(!store.terminate_for_drain(&a.id, now).await.unwrap());
    let ahead = NodeUpdate::drain(Some(now + Duration::minutes(10)));
    store.update_node(&node.id, ahead, UpdateCondition::Always).await.unwrap().unwrap();
    assert!(!store.terminate_for_drain(&a.id, now).await.unwrap());
    // Undrained before the deadline passed: the deadline is gone with the drain.
    store.update_node(&node.id, NodeUpdate::undrain(), UpdateCondition::Always).await.unwrap().unwrap();
    assert!(!store.terminate_for_drain(&a.id, now + Duration::minutes(11)).await.unwrap());
    assert_eq!(terminates(&store).await, 0);

    // Drained with a deadline that passed: a soft EXTERNAL terminate, once per backend.
    let passed = NodeUpdate::drain(Some(now - Duration::seconds(1)));
    store.update_node(&node.id, passed, UpdateCondition::Always).await.unwrap().unwrap();
    assert!(store.terminate_for_drain(&a.id, now).await.unwrap());
    assert!(!store.terminate_for_drain(&a.id, now).await.unwrap(), "asked once");
    let actions = store.pending_actions(&node.id).await.unwrap();
    let terminate = actions.iter().find(|a| matches!(a.payload, ActionPayload::Terminate { .. })).unwrap();
    assert_eq!(
        terminate.payload,
        ActionPayload::Terminate { kind: TerminationKind::Soft, reason: TerminationReason::External }
    );
    assert_eq!(terminate.backend_id, a.id);
    // Undrained now: the other backend is left alone, the first stays asked to stop.
    store.update_node(&node.id, NodeUpdate::undrain(), UpdateCondition::Always).await.unwrap().unwrap();
    assert!(!store.terminate_for_drain(&b.id, now).await.unwrap());
    assert_eq!(terminates(&store).await, 1);
    assert!(!store.terminate_for_drain("bk-missing", now).await.unwrap());
}

async fn renewal_needs_the_current_fencing_token(db: Database) {
    let store = db.open().await;
    let ConnectOutcome::Spawned(b) =
        store.connect_backend(spec(Some(key("r", "")), drones(5, &["d1"]), LEASE), &first).await.unwrap()
    else {
        panic!()
    };
    let now = Utc::now();
    let k = key("r", "");
    assert!(store.renew_key(&b.id, &k, b.fencing_token, now + Duration::seconds(30)).await.unwrap());
    assert!(!store.renew_key(&b.id, &k, b.fencing_token + 1, now + Duration::seconds(30)).await.unwrap());
    assert!(!store.renew_key("bk-other", &k, b.fencing_token, now + Duration::seconds(30)).await.unwrap());
    // Past its expiry, a lease the sweep has not freed is renewed: only the sweep frees a key, by
    // its rule, which may hold it for a drone a store outage made wait.
    let late = now + Duration::seconds(31);
    assert!(store.renew_key(&b.id, &k, b.fencing_token, late + Duration::seconds(30)).await.unwrap());
    // Once freed, it is not: the key may have another holder.
    let freed_at = late + Duration::seconds(31);
    store.release_expired_key(&b.id, false, freed_at, LEASE).await.unwrap();
    assert!(!store.renew_key(&b.id, &k, b.fencing_token, freed_at + Duration::seconds(30)).await.unwrap());
}

async fn a_batch_renewal_renews_each_held_key_and_refuses_the_others_alone(db: Database) {
    let store = db.open().await;
    let mut held = Vec::new();
    for name in ["b0", "b1", "b2", "b3"] {
        let ConnectOutcome::Spawned(b) =
            store.connect_backend(spec(Some(key(name, "")), drones(10, &["d1"]), LEASE), &first).await.unwrap()
        else {
            panic!()
        };
        held.push(b);
    }
    let renewal = |i: usize, token: u64| KeyRenewal {
        backend_id: held[i].id.clone(),
        key: key(&format!("b{i}"), ""),
        fencing_token: token,
    };
    let now = Utc::now();
    // b2's lease runs out and the sweep frees it before the batch arrives; the batch may not
    // revive it.
    let late = now + Duration::seconds(31);
    assert!(store.renew_key(&held[0].id, &key("b0", ""), held[0].fencing_token, late).await.unwrap());
    assert!(store.renew_key(&held[1].id, &key("b1", ""), held[1].fencing_token, late).await.unwrap());
    assert!(store.renew_key(&held[3].id, &key("b3", ""), held[3].fencing_token, late).await.unwrap());
    let freed = store.release_expired_key(&held[2].id, false, late, LEASE).await.unwrap().unwrap();
    assert_eq!(freed.status.state, BackendState::Scheduled, "freed, not ended: its drone is attached");
    let batch = vec![
        // b0's holder naming other keys with its own token (a confused or hostile drone), before
        // and after its own key: its renewal answers for its key alone.
        KeyRenewal { backend_id: held[0].id.clone(), key: key("b3", ""), fencing_token: held[0].fencing_token },
        renewal(0, held[0].fencing_token),
        KeyRenewal { backend_id: held[0].id.clone(), key: key("b1", ""), fencing_token: held[0].fencing_token },
        // A wrong fencing token: an older holder's.
        renewal(1, held[1].fencing_token + 1),
        renewal(2, held[2].fencing_token),
        renewal(3, held[3].fencing_token),
        // A backend that does not hold the key at all.
        KeyRenewal { backend_id: "bk-other".into(), key: key("b0", ""), fencing_token: held[0].fencing_token },
    ];
    let renewed = store.renew_keys(&batch, late + Duration::seconds(30)).await.unwrap();
    assert_eq!(
        renewed,
        [false, true, false, false, false, true, false],
        "each key decided alone, answers in request order"
    );

    // The renewed leases really moved: still valid past the old expiry, the refused ones not.
    let later = late + Duration::seconds(20);
    let expired: BTreeSet<String> =
        store.expired_key_holders(later, LEASE).await.unwrap().into_iter().map(|b| b.id).collect();
    assert_eq!(expired, BTreeSet::from([held[1].id.clone()]), "b2's key is free: it holds nothing");
    assert!(store.renew_keys(&[], now).await.unwrap().is_empty());
}

/// Renewal calls from many sessions at once are committed together: each call's keys still move
/// to that call's own expiry, and a refused key (a stale token, another backend's key) refuses
/// nothing in its call or in the others.
async fn renewal_calls_that_arrive_together_each_keep_their_own_expiry_and_answers(db: Database) {
    let store = db.open().await;
    let mut held = Vec::new();
    for i in 0..6 {
        let name = format!("g{i}");
        let ConnectOutcome::Spawned(b) =
            store.connect_backend(spec(Some(key(&name, "")), drones(10, &["d1"]), LEASE), &first).await.unwrap()
        else {
            panic!()
        };
        held.push(b);
    }
    let renewal = |i: usize| KeyRenewal {
        backend_id: held[i].id.clone(),
        key: key(&format!("g{i}"), ""),
        fencing_token: held[i].fencing_token,
    };
    let now = Utc::now();
    // Call i renews key i to now + 100 s + 100 s × i; call 0 also carries a stale token for key 5
    // and call 3 a backend that holds no key; call 6 renews key 1 again, to the latest expiry.
    // The calls reach the store in no set order (each runs on a task of its own), so call 6 may
    // commit before call 1: key 1 ends at call 6's expiry all the same, since no renewal moves a
    // lease back.
    let stale = KeyRenewal { fencing_token: held[5].fencing_token + 1, ..renewal(5) };
    let stranger = KeyRenewal { backend_id: "bk-stranger".into(), ..renewal(4) };
    let calls: Vec<Vec<KeyRenewal>> = (0..7)
        .map(|i| match i {
            0 => vec![renewal(0), stale.clone()],
            3 => vec![stranger.clone(), renewal(3)],
            6 => vec![renewal(1)],
            i => vec![renewal(i)],
        })
        .collect();
    let expiry = |i: usize| now + Duration::seconds(100 + 100 * i as i64);
    let answers =
        futures::future::join_all(calls.iter().enumerate().map(|(i, call)| store.renew_keys(call, expiry(i))))
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
    let expected: Vec<Vec<bool>> = (0..7)
        .map(|i| {
            if i == 0 {
                vec![true, false]
            } else if i == 3 {
                vec![false, true]
            } else {
                vec![true]
            }
        })
        .collect();
    assert_eq!(answers, expected, "each key decided alone, each call answered in its own order");
    // Each key's lease runs out at its own call's expiry (key 1 at call 6's): between two
    // expiries exactly the keys renewed to the earlier ones have run out.
    for i in 0..7 {
        let between = expiry(i) + Duration::seconds(50);
        let expired: BTreeSet<String> =
            store.expired_key_holders(between, LEASE).await.unwrap().into_iter().map(|b| b.id).collect();
        let wanted: BTreeSet<String> =
            (0..6.min(i + 1)).filter(|&k| k != 1 || i == 6).map(|k| held[k].id.clone()).collect();
        assert_eq!(expired, wanted, "at {}s past now", 150 + 100 * i);
    }
}

/// Two renewals of one holder's key commit in the order their tasks reach the store, not the
/// order the drone sent them: the one computed earlier, committed last, still holds the key (it
/// is answered renewed) but leaves the later expiry in place, alone or in a batch.
async fn a_renewal_that_commits_after_a_later_one_never_moves_the_lease_back(db: Database) {
    let store = db.open().await;
    let k = key("late", "");
    let b = spawned(&store, Some(k.clone())).await;
    let now = Utc::now();
    let holders = |at| {
        let store = store.clone();
        async move { store.expired_key_holders(at, LEASE).await.unwrap().into_iter().map(|b| b.id).collect::<Vec<_>>() }
    };
    assert!(store.renew_key(&b.id, &k, b.fencing_token, now + Duration::seconds(200)).await.unwrap());
    assert!(store.renew_key(&b.id, &k, b.fencing_token, now + Duration::seconds(100)).await.unwrap());
    assert!(holders(now + Duration::seconds(150)).await.is_empty(), "one key alone: the later expiry stays");
    let batch = [KeyRenewal { backend_id: b.id.clone(), key: k.clone(), fencing_token: b.fencing_token }];
    assert_eq!(store.renew_keys(&batch, now + Duration::seconds(300)).await.unwrap(), [true]);
    assert_eq!(store.renew_keys(&batch, now + Duration::seconds(250)).await.unwrap(), [true]);
    assert!(holders(now + Duration::seconds(280)).await.is_empty(), "in a batch: the later expiry stays");
    assert_eq!(
        holders(now + Duration::seconds(310)).await,
        std::slice::from_ref(&b.id),
        "and runs out at its own time"
    );
}

/// Two controllers renew the same keys at once, one in the keys' order and the other in reverse
/// (a drone's stale session on one, its new one on the other): on PostgreSQL each takes its row
/// locks in the keys' order, whatever the order of the call, so neither deadlocks the other
/// (which PostgreSQL would end by failing one) and every renewal commits. Each call is alone in
/// its group, so a failure is not retried away.
async fn renewals_of_the_same_keys_through_two_stores_in_opposite_orders_all_commit(db: Database) {
    let stores = [db.open().await, db.open().await];
    let mut renewals = Vec::new();
    for i in 0..300 {
        let k = key(&format!("both-{i:03}"), "");
        let ConnectOutcome::Spawned(b) =
            stores[0].connect_backend(spec(Some(k.clone()), drones(1000, &["d1"]), LEASE), &first).await.unwrap()
        else {
            panic!("key {i} is new")
        };
        renewals.push(KeyRenewal { backend_id: b.id, key: k, fencing_token: b.fencing_token });
    }
    let reversed: Vec<KeyRenewal> = renewals.iter().rev().cloned().collect();
    for round in 0..10 {
        let expires_at = Utc::now() + Duration::seconds(100 + round);
        let (forward, backward) =
            tokio::join!(stores[0].renew_keys(&renewals, expires_at), stores[1].renew_keys(&reversed, expires_at));
        assert_eq!(forward.unwrap(), vec![true; 300], "round {round}, in order");
        assert_eq!(backward.unwrap(), vec![true; 300], "round {round}, reversed");
    }
}

#[tokio::test]
async fn expired_connection_tokens_are_purged_and_static_ones_kept() {
    let db = Database::sqlite().await;
    let store = db.open().await;
    let mut with_static = spec(None, drones(5, &["d1"]), LEASE);
    with_static.spawn.as_mut().unwrap().static_token_hash = Some("static-hash".into());
    store.connect_backend(with_static, &first).await.unwrap();
    assert_eq!(store.purge_expired_tokens(Utc::now()).await.unwrap(), 0);
    assert_eq!(store.purge_expired_tokens(Utc::now() + Duration::hours(2)).await.unwrap(), 1, "the static token stays");
}

async fn a_status_message_is_kept_in_the_history_and_never_shows_a_secret(db: Database) {
    let store = db.open().await;
    let mut with_secrets = spec(None, drones(5, &["d1"]), LEASE);
    let plan = with_secrets.spawn.as_mut().unwrap();
    plan.config.executable.env.insert("REGISTRY_TOKEN".into(), "rt-0123456789".into());
    plan.config.static_token = Some("static-token-0123456789".into());
    let ConnectOutcome::Spawned(b) = store.connect_backend(with_secrets, &first).await.unwrap() else { panic!() };
    let now = Utc::now();
    let mut ended = BackendStatus::new(BackendState::Terminated, now);
    ended.termination_reason = Some(TerminationReason::ImagePullFailed);
    ended.message = "image app:1 not found: pull with rt-0123456789 refused (static-token-0123456789)".into();
    assert!(matches!(store.apply_backend_event("d1", &b.id, ended, "", now).await.unwrap(), EventOutcome::Applied(_)));
    let expected = "image app:1 not found: pull with *** refused (***)";
    assert_eq!(store.get_backend(&b.id).await.unwrap().unwrap().status.message, expected);
    let history = store.backend_history(&b.id, 0).await.unwrap();
    assert_eq!(history.last().unwrap().1.message, expected, "the history keeps it too");
    assert_eq!(history[0].1.message, "", "SCHEDULED needs no words");
    let changes = store.backend_changes_since(0, 100).await.unwrap();
    assert!(changes.iter().any(|(_, id, status)| *id == b.id && status.message == expected));

    // The controller says why it gave a backend up.
    let ConnectOutcome::Spawned(lost) =
        store.connect_backend(spec(Some(key("m", "")), drones(5, &["d1"]), LEASE), &first).await.unwrap()
    else {
        panic!()
    };
    let later = Utc::now() + Duration::minutes(1);
    let released = store.release_expired_key(&lost.id, true, later, LEASE).await.unwrap().unwrap();
    assert_eq!(released.status.termination_reason, Some(TerminationReason::Lost));
    assert!(released.status.message.contains("its drone d1 went away"), "{}", released.status.message);
}

async fn the_watch_log_carries_backend_and_node_changes_in_revision_order_with_the_state_before(db: Database) {
    let store = db.open().await;
    let start = store.current_revision().await.unwrap();
    let node = store.attach_node(drone_registration("d1"), "c", Utc::now()).await.unwrap();
    let ConnectOutcome::Spawned(b) =
        store.connect_backend(spec(Some(key("log", "")), drones(5, &[&node.id]), LEASE), &first).await.unwrap()
    else {
        panic!("spawn")
    };
    let now = Utc::now();
    let ready = BackendStatus::new(BackendState::Ready, now);
    store.apply_backend_event(&node.id, &b.id, ready, "127.0.0.1:9000", now).await.unwrap();
    store
        .update_node(&node.id, NodeUpdate { backend_count: Some(1), ..Default::default() }, UpdateCondition::Always)
        .await
        .unwrap();
    // A termination request is a revision but no status: no entry in the log.
    store.request_termination(&b.id, TerminationKind::Soft, TerminationReason::External, now).await.unwrap();
    store.mark_lost(&b.id, now).await.unwrap();

    let log = store.changes_since(start, 100).await.unwrap();
    let summary: Vec<String> = log
        .iter()
        .map(|change| match change {
            Change::Node(c) => format!("node {:?}", c.kind),
            Change::Backend(c) => format!("backend {:?} {:?} from {:?}", c.kind, c.backend.status.state, c.previous),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "node Added",
            "backend Added Scheduled from None",
            "backend Modified Ready from Some(Scheduled)",
            "node Modified",
            "backend Modified Terminated from Some(Ready)",
        ]
    );
    let revisions: Vec<_> = log.iter().map(Change::revision).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
    let Change::Backend(ready) = &log[2] else { panic!() };
    assert_eq!(ready.backend.address, "127.0.0.1:9000", "the whole backend as it was after the change");
    assert_eq!(ready.kind, ChangeKind::Modified);
    // A limit cuts the log into complete prefixes.
    let mut pieces = Vec::new();
    let mut after = start;
    loop {
        let piece = store.changes_since(after, 2).await.unwrap();
        let Some(last) = piece.last() else { break };
        after = last.revision();
        pieces.extend(piece);
    }
    assert_eq!(pieces, log);
}

async fn listings_and_snapshots_carry_their_revision_and_filter_by_pool_labels_and_key_prefix(db: Database) {
    let store = db.open().await;
    let mut labelled = spec(Some(key("report-1", "")), drones(50, &["d1"]), LEASE);
    if let Some(plan) = labelled.spawn.as_mut() {
        plan.config.labels = [("team".to_string(), "blue".to_string())].into();
        plan.config.pool = "gpu".into();
    }
    let ConnectOutcome::Spawned(report) = store.connect_backend(labelled, &first).await.unwrap() else { panic!() };
    for name in ["note-1", "note-2"] {
        store.connect_backend(spec(Some(key(name, "")), drones(50, &["d1"]), LEASE), &first).await.unwrap();
    }
    let current = store.current_revision().await.unwrap();
    let page = store.list_backends(&BackendFilter::default(), None, 10).await.unwrap();
    assert_eq!((page.backends.len(), page.revision, page.more), (3, current, false));
    let ids = |page: hangar_server::store::BackendPage| page.backends.into_iter().map(|b| b.id).collect::<Vec<_>>();
    let by_labels = BackendFilter { labels: [("team".to_string(), "blue".to_string())].into(), ..Default::default() };
    assert_eq!(ids(store.list_backends(&by_labels, None, 10).await.unwrap()), [report.id.as_str()]);
    let by_pool = BackendFilter { pool: Some("gpu".into()), ..Default::default() };
    assert_eq!(ids(store.list_backends(&by_pool, None, 10).await.unwrap()), [report.id.as_str()]);
    let by_prefix = BackendFilter { key_prefix: Some("note-".into()), ..Default::default() };
    let notes = store.list_backends(&by_prefix, None, 1).await.unwrap();
    assert!(notes.more, "a page of one of two");
    let snapshot = store.backend_snapshot(&by_prefix).await.unwrap();
    assert_eq!((snapshot.backends.len(), snapshot.revision), (2, current));
    assert!(snapshot.backends.iter().all(|b| b.key.as_ref().is_some_and(|k| k.name.starts_with("note-"))));
}

fn drone_registration(name: &str) -> NodeRegistration {
    NodeRegistration {
        kind: NodeKind::Drone,
        name: name.into(),
        cluster: "default".into(),
        pool: "default".into(),
        labels: Default::default(),
        version: "1.0.0".into(),
        backend_capacity: 5,
        resources: NodeResources::default(),
    }
}

/// Rows `sql` (a `SELECT COUNT(*) …` with the backend id as `$1`) counts, read straight from the
/// database: what retention must have deleted, whatever the store's reads hide.
async fn count(db: &Database, sql: &str, id: &str) -> i64 {
    if db.backend() == "sqlite" {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        sqlx::query_scalar(sql).bind(id).fetch_one(&pool).await.unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::query_scalar(sql).bind(id).fetch_one(&pool).await.unwrap()
    }
}

/// Every row retention and compaction must leave nothing of, for one backend.
async fn rows_of(db: &Database, id: &str) -> [i64; 4] {
    [
        count(db, "SELECT COUNT(*) FROM backends WHERE id = $1", id).await,
        count(db, "SELECT COUNT(*) FROM backend_history WHERE backend_id = $1", id).await,
        count(db, "SELECT COUNT(*) FROM connection_tokens WHERE backend_id = $1", id).await,
        count(db, "SELECT COUNT(*) FROM drone_actions WHERE backend_id = $1", id).await,
    ]
}

async fn key_rows(db: &Database, name: &str) -> i64 {
    count(db, "SELECT COUNT(*) FROM backend_keys WHERE name = $1", name).await
}

async fn end(store: &hangar_server::store::DynStore, id: &str) {
    let now = Utc::now();
    let outcome =
        store.apply_backend_event("d1", id, BackendStatus::new(BackendState::Terminated, now), "", now).await.unwrap();
    assert!(matches!(outcome, EventOutcome::Applied(_)), "{outcome:?}");
}

async fn spawned(store: &hangar_server::store::DynStore, key: Option<BackendKey>) -> hangar::domain::Backend {
    match store.connect_backend(spec(key, drones(100, &["d1"]), LEASE), &first).await.unwrap() {
        ConnectOutcome::Spawned(b) => b,
        other => panic!("expected a spawn, got {other:?}"),
    }
}

async fn retention_removes_a_terminated_backends_rows_keeps_a_live_keys_and_a_reused_key_gets_a_higher_token(
    db: Database,
) {
    let store = db.open().await;
    // `gone`: keyed, ends, is removed. `live`: keyed, READY throughout. `keyless`: ends too.
    let gone = spawned(&store, Some(key("gone", ""))).await;
    let live = spawned(&store, Some(key("live", ""))).await;
    let keyless = spawned(&store, None).await;
    let now = Utc::now();
    store.apply_backend_event("d1", &live.id, BackendStatus::new(BackendState::Ready, now), "a:1", now).await.unwrap();
    // `shared`: the first holder's lease runs out, a second holder takes the key, then the
    // first one ends: its removal must leave the key (held by the second) alone.
    let shared_first = spawned(&store, Some(key("shared", ""))).await;
    let later = Utc::now() + Duration::seconds(31);
    store.release_expired_key(&shared_first.id, false, later, LEASE).await.unwrap();
    let shared_second = spawned(&store, Some(key("shared", ""))).await;
    assert_eq!(shared_second.fencing_token, 2);
    for id in [&gone.id, &keyless.id, &shared_first.id] {
        end(&store, id).await;
    }
    let live_history = store.backend_history(&live.id, 0).await.unwrap();
    assert_eq!(rows_of(&db, &gone.id).await, [1, 2, 1, 0], "the Spawn action went at TERMINATED");

    // Not yet: they ended less than an hour ago.
    assert_eq!(store.remove_terminated_backends(Utc::now() - Duration::hours(1), 100).await.unwrap(), 0);
    let before = store.current_revision().await.unwrap();
    assert_eq!(store.remove_terminated_backends(Utc::now() + Duration::seconds(1), 100).await.unwrap(), 3);
    assert_eq!(store.current_revision().await.unwrap(), before + 3, "one revision per removed backend");
    for id in [&gone.id, &keyless.id, &shared_first.id] {
        assert_eq!(store.get_backend(id).await.unwrap(), None);
        // Its history (and the REMOVED row) stays until compaction passes it, for resuming
        // watchers; WatchBackend's replay never shows the removal as a status of its own.
        assert_eq!(rows_of(&db, id).await[1], 3, "{id}: SCHEDULED, TERMINATED, REMOVED");
        let statuses: Vec<_> = store.backend_history(id, 0).await.unwrap().into_iter().map(|(_, s)| s.state).collect();
        assert_eq!(statuses, [BackendState::Scheduled, BackendState::Terminated]);
        assert_eq!(rows_of(&db, id).await[0], 0, "{id}: the backend row is gone");
        assert_eq!(rows_of(&db, id).await[2], 0, "{id}: its tokens are gone");
    }
    assert_eq!(key_rows(&db, "gone").await, 0, "a free key whose last holder was removed");
    assert_eq!(key_rows(&db, "shared").await, 1, "a key another backend holds stays");
    assert_eq!(key_rows(&db, "live").await, 1);
    // Nothing live was touched: the live backend, its history and its lease.
    assert_eq!(store.get_backend(&live.id).await.unwrap().unwrap().status.state, BackendState::Ready);
    assert_eq!(store.backend_history(&live.id, 0).await.unwrap(), live_history);
    assert!(store.renew_key(&live.id, &key("live", ""), 1, Utc::now() + Duration::seconds(30)).await.unwrap());
    assert!(
        store.renew_key(&shared_second.id, &key("shared", ""), 2, Utc::now() + Duration::seconds(30)).await.unwrap()
    );
    // Nothing left to remove: the next pass takes no revision.
    assert_eq!(store.remove_terminated_backends(Utc::now() + Duration::seconds(1), 100).await.unwrap(), 0);
    assert_eq!(store.current_revision().await.unwrap(), before + 3);

    // Compaction then drops their history, while the live backend's present stays readable.
    let all = hangar_server::store::Retention { min_revisions: 0, max_age: Duration::zero() };
    let compacted = store.compact(all, Utc::now() + Duration::seconds(1)).await.unwrap();
    assert_eq!(compacted, before + 3);
    for id in [&gone.id, &keyless.id, &shared_first.id] {
        assert_eq!(rows_of(&db, id).await, [0, 0, 0, 0], "{id}: nothing of it is left");
    }
    let live_now: Vec<_> =
        store.backend_history(&live.id, 0).await.unwrap().into_iter().map(|(_, s)| s.state).collect();
    assert_eq!(live_now, [BackendState::Ready], "a live backend keeps its newest status");

    // The removed key comes back with a higher fencing token than any holder it had.
    let again = spawned(&store, Some(key("gone", ""))).await;
    assert!(again.fencing_token > gone.fencing_token, "{} after {}", again.fencing_token, gone.fencing_token);
    // And so does the shared key once its last holder went the same way.
    end(&store, &shared_second.id).await;
    assert_eq!(store.remove_terminated_backends(Utc::now() + Duration::seconds(1), 100).await.unwrap(), 1);
    assert_eq!(key_rows(&db, "shared").await, 0);
    let shared_third = spawned(&store, Some(key("shared", ""))).await;
    assert_eq!(shared_third.fencing_token, 3, "above the removed row's 2");
}

async fn retention_removes_in_batches_each_backend_one_removed_change_under_its_own_revision(db: Database) {
    let store = db.open().await;
    let mut ended = Vec::new();
    for i in 0..5 {
        let b = spawned(&store, Some(key(&format!("batch-{i}"), ""))).await;
        end(&store, &b.id).await;
        ended.push(b.id);
    }
    let before = store.current_revision().await.unwrap();
    let mut commits = store.local_commits();
    let due = Utc::now() + Duration::seconds(1);
    let sizes = [
        store.remove_terminated_backends(due, 2).await.unwrap(),
        store.remove_terminated_backends(due, 2).await.unwrap(),
        store.remove_terminated_backends(due, 2).await.unwrap(),
    ];
    assert_eq!(sizes, [2, 2, 1]);
    let log = store.changes_since(before, 100).await.unwrap();
    let removed: Vec<(u64, String)> = log
        .iter()
        .map(|change| match change {
            Change::Backend(c) => {
                assert_eq!((c.kind, c.previous), (ChangeKind::Removed, Some(BackendState::Terminated)));
                assert_eq!(c.backend.status.state, BackendState::Terminated, "the backend as it ended");
                (c.revision, c.backend.id.clone())
            }
            other => panic!("only removals: {other:?}"),
        })
        .collect();
    assert_eq!(removed.iter().map(|(r, _)| *r).collect::<Vec<_>>(), (before + 1..=before + 5).collect::<Vec<_>>());
    assert_eq!(removed.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>(), ended, "oldest first");
    // This process's watch hub gets each removal as its own commit, in revision order.
    for revision in before + 1..=before + 5 {
        let commit = commits.recv().await.unwrap();
        assert_eq!(commit.revision, revision);
        assert!(matches!(commit.change, Some(Change::Backend(ref c)) if c.kind == ChangeKind::Removed));
    }
}

/// More revisions than one compaction step (2,000) covers: compaction still reaches its target,
/// step by step, and leaves each node's and live backend's present readable.
async fn compaction_past_many_revisions_reaches_its_target_in_steps_for_nodes_and_backends(db: Database) {
    let store = db.open().await;
    let node = store.attach_node(drone_registration("d1"), "c", Utc::now()).await.unwrap();
    let live = spawned(&store, Some(key("steps", ""))).await;
    for i in 0..2_300u32 {
        let update = NodeUpdate { backend_count: Some(i % 7 + 1), ..Default::default() };
        store.update_node(&node.id, update, UpdateCondition::Always).await.unwrap();
    }
    let now = Utc::now();
    store.apply_backend_event("d1", &live.id, BackendStatus::new(BackendState::Ready, now), "a:1", now).await.unwrap();
    let current = store.current_revision().await.unwrap();
    assert!(current > 2_300);
    let all = hangar_server::store::Retention { min_revisions: 0, max_age: Duration::zero() };
    assert_eq!(store.compact(all, Utc::now() + Duration::seconds(1)).await.unwrap(), current);
    assert_eq!(store.compacted_revision().await.unwrap(), current);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM node_history WHERE node_id = $1", &node.id).await, 1);
    assert_eq!(store.get_node(&node.id).await.unwrap().unwrap().backend_count, 2_299 % 7 + 1);
    let history: Vec<_> = store.backend_history(&live.id, 0).await.unwrap().into_iter().map(|(_, s)| s.state).collect();
    assert_eq!(history, [BackendState::Ready]);
    assert!(store.changes_since(current, 10).await.unwrap().is_empty());
}

/// Batched placement (docs/design/backends-and-leases.md#scheduling): 160 Connects at once, over
/// two stores (two controllers on PostgreSQL), for 40 keys each asked 4 times, onto 3 drones of 4
/// slots with the scheduler's own pick. Every slot is taken, no drone gets a fifth backend, and
/// every answer for a key names the one backend that key has.
async fn concurrent_connects_through_two_stores_onto_small_drones_never_overfill_one_and_give_one_backend_per_key(
    db: Database,
) {
    const CAPACITY: u32 = 4;
    let names = ["small-1", "small-2", "small-3"];
    let stores = [db.open().await, db.open().await];
    let calls = (0..160).map(|i| {
        let store = stores[i % 2].clone();
        let candidates = drones(CAPACITY, &names);
        tokio::spawn(async move {
            let key = key(&format!("room-{}", i % 40), "v1");
            let outcome = store
                .connect_backend(
                    spec(Some(key.clone()), candidates, LEASE),
                    &hangar_server::scheduler::power_of_two_choices,
                )
                .await
                .unwrap();
            (key.name, outcome)
        })
    });
    let outcomes: Vec<_> = futures::future::join_all(calls).await.into_iter().map(Result::unwrap).collect();
    let mut per_key: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    let (mut spawned, mut full) = (0, 0);
    for (name, outcome) in &outcomes {
        match outcome {
            ConnectOutcome::Spawned(b) => {
                spawned += 1;
                per_key.entry(name.clone()).or_default().insert(b.id.clone());
            }
            ConnectOutcome::Found(b) => {
                per_key.entry(name.clone()).or_default().insert(b.id.clone());
            }
            ConnectOutcome::PoolFull => full += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(spawned, 3 * CAPACITY as usize, "every slot taken, none twice");
    assert_eq!(outcomes.len(), 160);
    assert!(full > 0, "more keys than slots: some Connects find the pool full");
    for (name, ids) in &per_key {
        assert_eq!(ids.len(), 1, "key {name} answered with several backends: {ids:?}");
    }
    let live = stores[0].list_backends(&BackendFilter::default(), None, 1000).await.unwrap().backends;
    assert_eq!(live.len(), 3 * CAPACITY as usize);
    for name in names {
        let on = live.iter().filter(|b| b.drone_id == name).count();
        assert_eq!(on, CAPACITY as usize, "{name} holds {on} backends, capacity {CAPACITY}");
    }
    let keys: BTreeSet<_> = live.iter().map(|b| b.key.clone().unwrap().name).collect();
    assert_eq!(keys.len(), live.len(), "one live backend per key");
}

/// Batched drone events: one call carries a drone's events (in the order it sent them) and
/// its action acknowledgements; each event gets its own outcome and revision, a TERMINATED
/// among them frees its slot for the next placement, and the acknowledged actions are gone (but
/// not when another drone names them).
async fn a_drones_reports_in_one_call_apply_in_order_free_capacity_and_acknowledge_actions(db: Database) {
    let store = db.open().await;
    let mut backends = Vec::new();
    for i in 0..2 {
        match store.connect_backend(spec(Some(key(&format!("r{i}"), "")), drones(2, &["d1"]), LEASE), &first).await {
            Ok(ConnectOutcome::Spawned(b)) => backends.push(b),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        store.connect_backend(spec(None, drones(2, &["d1"]), LEASE), &first).await.unwrap(),
        ConnectOutcome::PoolFull
    );
    let actions: Vec<String> = store.pending_actions("d1").await.unwrap().into_iter().map(|a| a.id).collect();
    assert_eq!(actions.len(), 2);
    store.apply_drone_reports("d2", Vec::new(), actions.clone()).await.unwrap();
    assert_eq!(store.pending_actions("d1").await.unwrap().len(), 2, "another drone cannot acknowledge d1's actions");
    let revision_before = store.current_revision().await.unwrap();
    let now = Utc::now();
    let event = |b: &hangar::domain::Backend, state| DroneEvent {
        backend_id: b.id.clone(),
        status: BackendStatus::new(state, now),
        address: String::new(),
        now,
    };
    let mut ended = event(&backends[0], BackendState::Terminated);
    ended.status.termination_reason = Some(TerminationReason::Exited);
    let events = vec![
        event(&backends[0], BackendState::Starting),
        event(&backends[0], BackendState::Ready),
        // Stale after READY: ignored, in order.
        event(&backends[0], BackendState::Starting),
        event(&backends[1], BackendState::Ready),
        ended,
        DroneEvent { backend_id: "bk-unknown".into(), ..event(&backends[1], BackendState::Ready) },
    ];
    let outcomes = store.apply_drone_reports("d1", events, actions).await.unwrap();
    let kinds: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            EventOutcome::Applied(_) => "applied",
            EventOutcome::Ignored => "ignored",
            EventOutcome::Unknown => "unknown",
        })
        .collect();
    assert_eq!(kinds, ["applied", "applied", "ignored", "applied", "applied", "unknown"]);
    assert_eq!(store.current_revision().await.unwrap(), revision_before + 4, "one revision per applied event");
    assert!(store.pending_actions("d1").await.unwrap().is_empty(), "both actions acknowledged");
    let states: Vec<_> =
        store.backend_history(&backends[0].id, 0).await.unwrap().into_iter().map(|(_, s)| s.state).collect();
    assert_eq!(
        states,
        [BackendState::Scheduled, BackendState::Starting, BackendState::Ready, BackendState::Terminated]
    );
    assert!(
        matches!(
            store.connect_backend(spec(None, drones(2, &["d1"]), LEASE), &first).await.unwrap(),
            ConnectOutcome::Spawned(_)
        ),
        "the terminated backend's slot is free again"
    );
}

async fn spawned_with(store: &hangar_server::store::DynStore, config: SpawnConfig) -> hangar::domain::Backend {
    let mut spec = spec(None, drones(100, &["d1"]), LEASE);
    spec.spawn.as_mut().unwrap().config = config;
    match store.connect_backend(spec, &first).await.unwrap() {
        ConnectOutcome::Spawned(b) => b,
        other => panic!("expected a spawn, got {other:?}"),
    }
}

async fn the_sweep_reads_only_backends_past_a_limit_and_traffic_defers_an_idle_one(db: Database) {
    let store = db.open().await;
    let seconds = |s: u64| Some(std::time::Duration::from_secs(s));
    let limited = |edit: &dyn Fn(&mut SpawnConfig)| {
        let mut c = config();
        edit(&mut c);
        c
    };
    let unlimited = spawned_with(&store, config()).await;
    let idle = spawned_with(&store, limited(&|c| c.max_idle = seconds(10))).await;
    let old = spawned_with(&store, limited(&|c| c.lifetime_limit = seconds(60))).await;
    let t0 = idle.created_at.max(old.created_at);
    let at = |s: i64| t0 + Duration::seconds(s);
    let due = async |time| -> Vec<String> {
        store.backends_due_for_limits(time, 100).await.unwrap().into_iter().map(|b| b.id).collect()
    };

    assert!(due(at(0)).await.is_empty(), "no limit has come yet");
    assert_eq!(due(at(11)).await, std::slice::from_ref(&idle.id), "only the idle one is past its limit");

    // Traffic moves the idle deadline later without touching the stored time, which stays a
    // lower bound: the backend is still read, and a sweep finds it not due and defers it.
    store.record_activity(std::slice::from_ref(&idle.id), at(5)).await.unwrap();
    let sweep = hangar_server::controller::BackendSweep::new(store.clone(), LEASE);
    let report = sweep.pass(at(11)).await.unwrap();
    assert_eq!((report.swept_idle, report.swept_lifetime), (0, 0), "{report:?}");
    assert!(due(at(11)).await.is_empty(), "the pass stored the idle backend's real deadline");
    assert_eq!(due(at(16)).await, std::slice::from_ref(&idle.id));

    // Past both: earliest first, and the limit is honoured.
    assert_eq!(due(at(61)).await, [idle.id.clone(), old.id.clone()]);
    assert_eq!(store.backends_due_for_limits(at(61), 1).await.unwrap().len(), 1);
    let report = sweep.pass(at(61)).await.unwrap();
    assert_eq!((report.swept_idle, report.swept_lifetime), (1, 1), "{report:?}");
    for (id, reason) in [(&idle.id, TerminationReason::Swept), (&old.id, TerminationReason::Lifetime)] {
        let backend = store.get_backend(id).await.unwrap().unwrap();
        assert_eq!(backend.termination_requested, Some(TerminationKind::Soft), "{reason:?}");
    }
    // Asked to terminate: neither is read again, and one without limits never was.
    assert!(due(at(3600)).await.is_empty());
    let report = sweep.pass(at(3600)).await.unwrap();
    assert_eq!((report.swept_idle, report.swept_lifetime), (0, 0), "{report:?}");
    assert!(store.get_backend(&unlimited.id).await.unwrap().unwrap().termination_requested.is_none());
}
