//! A drone session's reports (backend events and action acknowledgements), on their own task:
//! the session's reader hands each one here as it arrives, and the task applies every report
//! waiting in one store call ([`BackendStore::apply_drone_reports`](crate::store::BackendStore::apply_drone_reports)),
//! which the store commits together with the other writes waiting (one transaction), instead of
//! one store write per event in line. Events of one drone are applied in the order it sent them;
//! each is acknowledged (`AckEvent`) only once its batch committed, so a drone that loses its
//! stream replays exactly what was not stored.

use super::queue;
use super::{ApiError, validate};
use crate::store::{DroneEvent, DynStore, EventOutcome, StoreError};
use chrono::Utc;
use hangar::domain::BackendStatus;
use hangar::v1;
use std::time::Duration;
use tonic::Status;

/// Reports waiting for the store; past this the session's reader waits too, renewals behind it.
/// The in-line queue's bound (`session::INBOUND_QUEUE`): a drone keeps at most 1,024 events
/// unacknowledged (`EVENT_WINDOW`) and acknowledges each action once, so a healthy drone never
/// fills it, and the reader never stops reading its renewals.
pub(super) const QUEUE: usize = 4096;

/// Reports applied in one store call at most. A drone's reports are applied one call at a time
/// (in order), so this bounds how many a drone gets through per commit: with 32, a drone
/// churning backends fell seconds behind and its capacity filled with backends already asked to
/// end, and with 256 a few calls a minute were still refused POOL_FULL at 1,000 cycles a second
/// (`scripts/bench churn`); with 1,024, as many as a drone may have unacknowledged
/// (`EVENT_WINDOW`), none. Their `AckEvent`s go out on the stream the renewal answers share; the
/// drone deletes the acknowledgements that arrive together in one journal commit, so a batch of
/// them does not hold its reader (and the renewal answers behind it) for one commit each.
const COALESCE: usize = 1024;

/// What the reader hands over.
pub(super) enum Report {
    Event(v1::DroneBackendEvent),
    Ack(String),
}

type Outbound = queue::Sender<Result<v1::DroneAttachResponse, Status>>;

/// Applies and acknowledges until the session drops its sender. A report that is not valid ends
/// the stream with that error, as in-line handling did: the drone reattaches and replays what was
/// not acknowledged. A store that fails is tried again with the same reports, after a pause that
/// grows to [`RETRY_MAX`], for as long as the session lasts: a store outage must not end the
/// session the drone's renewals are deferred on (docs/design/backends-and-leases.md#store-outages);
/// nothing is acknowledged until it is stored, and meanwhile the drone sends at most its window of
/// unacknowledged events.
pub(super) async fn serve(store: DynStore, drone_id: String, mut reports: queue::Receiver<Report>, outbound: Outbound) {
    while let Some(first) = reports.recv().await {
        let mut taken = vec![first];
        while taken.len() < COALESCE {
            match reports.try_recv() {
                Ok(more) => taken.push(more),
                Err(_) => break,
            }
        }
        let (valid, invalid) = validated(&drone_id, taken);
        let mut pause = RETRY_FIRST;
        let event_ids = loop {
            match apply(&store, &drone_id, &valid).await {
                Ok(event_ids) => break event_ids,
                Err(err) => {
                    tracing::warn!(error = %err, drone_id = %drone_id, retry_in = ?pause, "store failed applying a drone's reports");
                    tokio::select! {
                        _ = outbound.closed() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        };
        for event_id in event_ids {
            let ack = v1::DroneAttachResponse {
                message: Some(v1::drone_attach_response::Message::AckEvent(v1::AckEvent { event_id })),
            };
            if outbound.send(Ok(ack)).await.is_err() {
                return;
            }
        }
        if let Some(err) = invalid {
            let _ = outbound.send(Err(Status::from(err))).await;
            return;
        }
    }
}

/// Pauses between tries of a store that failed.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The reports as the store takes them, validated: the events with their ids and the
/// acknowledged actions. Reports after one that is not valid are dropped with it (the stream ends
/// and the drone replays them); those before it are applied first. `validated` returns them and
/// the first violation, if any.
struct Valid {
    events: Vec<DroneEvent>,
    event_ids: Vec<String>,
    acks: Vec<String>,
}

fn validated(drone_id: &str, reports: Vec<Report>) -> (Valid, Option<ApiError>) {
    let now = Utc::now();
    let mut valid = Valid { events: Vec::new(), event_ids: Vec::new(), acks: Vec::new() };
    for report in reports {
        match report {
            Report::Event(event) => {
                let mut violations = validate::Violations::default();
                violations
                    .absorb("backend_event.event_id", validate::id("backend_event.event_id", &event.event_id))
                    .absorb("backend_event.backend_id", validate::id("backend_event.backend_id", &event.backend_id))
                    .absorb("backend_event.address", validate::address("backend_event.address", &event.address));
                if let Err(err) = violations.into_result() {
                    return (valid, Some(err));
                }
                let Some(status) = event.status.as_ref().and_then(|s| BackendStatus::from_proto(s, now)) else {
                    let err = ApiError::Protocol(format!("event {} carries no known backend state", event.event_id));
                    return (valid, Some(err));
                };
                valid.events.push(DroneEvent { backend_id: event.backend_id, status, address: event.address, now });
                valid.event_ids.push(event.event_id);
            }
            Report::Ack(action_id) => {
                if let Err(err) = validate::id("ack_action.action_id", &action_id) {
                    return (valid, Some(err));
                }
                valid.acks.push(action_id);
            }
        }
    }
    tracing::trace!(drone_id, events = valid.events.len(), acks = valid.acks.len(), "drone reports");
    (valid, None)
}

/// Applies `reports` in one store call; the ids of the events to acknowledge, in order.
async fn apply(store: &DynStore, drone_id: &str, reports: &Valid) -> Result<Vec<String>, StoreError> {
    if reports.events.is_empty() && reports.acks.is_empty() {
        return Ok(Vec::new());
    }
    let outcomes = store.apply_drone_reports(drone_id, reports.events.clone(), reports.acks.clone()).await?;
    for (event_id, outcome) in reports.event_ids.iter().zip(&outcomes) {
        match outcome {
            EventOutcome::Applied(backend) => {
                tracing::info!(backend_id = %backend.id, state = %backend.status.state, "backend state changed");
            }
            EventOutcome::Ignored => tracing::debug!(%event_id, "stale or repeated event"),
            // Acknowledged all the same: the drone would otherwise replay it forever.
            EventOutcome::Unknown => {
                tracing::warn!(%event_id, drone_id = %drone_id, "event for a backend this drone does not hold")
            }
        }
    }
    Ok(reports.event_ids.clone())
}
