//! A drone session's reports (backend events and action acknowledgements), on their own task:
//! the session's reader hands each one here as it arrives, and the task applies every report
//! waiting in one store call ([`BackendStore::apply_drone_reports`](crate::store::BackendStore::apply_drone_reports)),
//! which the store commits together with the other writes waiting (one transaction), instead of
//! one store write per event in line. Events of one drone are applied in the order it sent them;
//! each is acknowledged (`AckEvent`) only once its batch committed, so a drone that loses its
//! stream replays exactly what was not stored.

use super::{ApiError, validate};
use crate::store::{DroneEvent, DynStore, EventOutcome};
use chrono::Utc;
use hangar::domain::BackendStatus;
use hangar::v1;
use tokio::sync::mpsc;
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

type Outbound = mpsc::Sender<Result<v1::DroneAttachResponse, Status>>;

/// Applies and acknowledges until the session drops its sender. A report that is not valid, or
/// a store that fails, ends the stream with that error, as in-line handling did: the drone
/// reattaches and replays what was not acknowledged.
pub(super) async fn serve(store: DynStore, drone_id: String, mut reports: mpsc::Receiver<Report>, outbound: Outbound) {
    while let Some(first) = reports.recv().await {
        let mut taken = vec![first];
        while taken.len() < COALESCE {
            match reports.try_recv() {
                Ok(more) => taken.push(more),
                Err(_) => break,
            }
        }
        let answers = match apply(&store, &drone_id, taken).await {
            Ok(answers) => answers
                .into_iter()
                .map(|event_id| {
                    Ok(v1::DroneAttachResponse {
                        message: Some(v1::drone_attach_response::Message::AckEvent(v1::AckEvent { event_id })),
                    })
                })
                .collect(),
            Err(err) => {
                if let ApiError::Store(err) = &err {
                    tracing::warn!(error = %err, drone_id = %drone_id, "store failed applying a drone's reports");
                }
                vec![Err(Status::from(err))]
            }
        };
        for answer in answers {
            let failed = answer.is_err();
            if outbound.send(answer).await.is_err() || failed {
                return;
            }
        }
    }
}

/// Validates and applies `reports` in one store call; the ids of the events to acknowledge, in
/// order.
async fn apply(store: &DynStore, drone_id: &str, reports: Vec<Report>) -> Result<Vec<String>, ApiError> {
    let now = Utc::now();
    let mut events = Vec::new();
    let mut event_ids = Vec::new();
    let mut acks = Vec::new();
    for report in reports {
        match report {
            Report::Event(event) => {
                let mut violations = validate::Violations::default();
                violations
                    .absorb("backend_event.event_id", validate::id("backend_event.event_id", &event.event_id))
                    .absorb("backend_event.backend_id", validate::id("backend_event.backend_id", &event.backend_id))
                    .absorb("backend_event.address", validate::address("backend_event.address", &event.address));
                violations.into_result()?;
                let Some(status) = event.status.as_ref().and_then(|s| BackendStatus::from_proto(s, now)) else {
                    return Err(ApiError::Protocol(format!("event {} carries no known backend state", event.event_id)));
                };
                events.push(DroneEvent { backend_id: event.backend_id, status, address: event.address, now });
                event_ids.push(event.event_id);
            }
            Report::Ack(action_id) => {
                validate::id("ack_action.action_id", &action_id)?;
                acks.push(action_id);
            }
        }
    }
    let outcomes = store.apply_drone_reports(drone_id, events, acks).await?;
    for (event_id, outcome) in event_ids.iter().zip(&outcomes) {
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
    Ok(event_ids)
}
