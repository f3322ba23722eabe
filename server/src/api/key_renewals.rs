//! A drone session's key renewals, on their own task (docs/design/backends-and-leases.md#key-leases-and-fencing):
//! the session's reader hands each `RenewKeys` batch (or an older drone's single `RenewKey`)
//! here as it arrives, so renewals never wait behind the store writes of backend events or
//! action deliveries for other backends. A batch is renewed in one store transaction
//! ([`BackendStore::renew_keys`](crate::store::BackendStore::renew_keys)) and answered in one
//! message, per key, in the request's order.

use super::queue;
use super::{ApiError, validate};
use crate::controller::StoreContact;
use crate::store::{DynStore, KeyRenewal, StoreError};
use chrono::Utc;
use hangar::domain::{BackendKey, timestamp_to_proto};
use hangar::v1;
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;

/// Keys one `RenewKeys` may carry (the proto says so); drones send at most 1,000.
pub(super) const MAX_KEYS: usize = 10_000;

/// Batches waiting for the store; past this the session's reader waits too.
pub(super) const QUEUE: usize = 16;

/// What the reader hands over.
pub(super) enum Renewal {
    Batch(v1::RenewKeys),
    /// From a drone that renews one key per message; answered with one `RenewKeyResponse`.
    Single(v1::RenewKey),
}

type Outbound = queue::Sender<Result<v1::DroneAttachResponse, Status>>;

/// Messages renewed in one transaction at most, when several wait: under load the renewals of a
/// drone cost fewer, larger transactions instead of queueing.
const COALESCE: usize = 8;

/// Renews and answers until the session drops its sender. A message that is not valid ends the
/// stream with that error, as in-line handling would. A store that fails or does not answer in
/// time: with `deferrals` (a drone that understands them, on a controller that may defer now),
/// every key of the messages is answered *deferred* and the session goes on
/// (docs/design/backends-and-leases.md#store-outages); otherwise the stream ends with the error
/// and the drone reattaches.
pub(super) async fn serve(
    store: DynStore,
    lease_duration: Duration,
    deferrals: Option<Arc<StoreContact>>,
    mut renewals: queue::Receiver<Renewal>,
    outbound: Outbound,
) {
    while let Some(first) = renewals.recv().await {
        let mut taken = vec![first];
        while taken.len() < COALESCE {
            match renewals.try_recv() {
                Ok(more) => taken.push(more),
                Err(_) => break,
            }
        }
        let answers = match renew(&store, lease_duration, deferrals.as_deref(), taken).await {
            Ok(answers) => {
                answers.into_iter().map(|reply| Ok(v1::DroneAttachResponse { message: Some(reply) })).collect()
            }
            Err(err) => {
                if let ApiError::Store(err) = &err {
                    tracing::warn!(error = %err, "store failed renewing keys");
                }
                vec![Err(Status::from(err))]
            }
        };
        for answer in answers {
            let failed = answer.is_err();
            // A drone that stopped reading ends its stream; the session notices when its read
            // fails.
            if outbound.send(answer).await.is_err() || failed {
                return;
            }
        }
    }
}

/// How long a renewal may wait for the store before it is answered deferred: a fifteenth of the
/// lease (2 s of 30 s), so that the answer reaches the drone before its soft deadline (half the
/// lease after the last confirmed renewal, which the next renewal follows by a third), and before
/// the drone gives up on an unanswered batch (a tenth of the lease) and takes this controller for
/// a stuck one.
fn store_wait(lease_duration: Duration) -> Duration {
    (lease_duration / 15).clamp(Duration::from_millis(200), Duration::from_secs(5))
}

/// Validates and renews the keys of `messages` in one transaction; one answer per message, each
/// with one answer per key in the message's order.
async fn renew(
    store: &DynStore,
    lease_duration: Duration,
    deferrals: Option<&StoreContact>,
    messages: Vec<Renewal>,
) -> Result<Vec<v1::drone_attach_response::Message>, ApiError> {
    use v1::drone_attach_response::Message as Reply;
    let mut all = Vec::new();
    // Per message: whether it was a single RenewKey, and how many keys it carried.
    let mut shapes = Vec::with_capacity(messages.len());
    for message in messages {
        let (keys, single) = match message {
            Renewal::Batch(batch) => (batch.keys, false),
            Renewal::Single(key) => (vec![key], true),
        };
        let renewals = validated(&keys, single)?;
        shapes.push((single, renewals.len()));
        all.extend(renewals);
    }
    // Read after the requests arrived: the drone counts from before it sent, so its deadlines
    // fall before this expiry whatever the delay.
    let now = Utc::now();
    let expires_at = now + chrono::Duration::from_std(lease_duration).unwrap_or_default();
    let started = std::time::Instant::now();
    let stored = match deferrals {
        Some(_) => {
            let wait = store_wait(lease_duration);
            match tokio::time::timeout(wait, store.renew_keys(&all, expires_at)).await {
                Ok(stored) => stored,
                Err(_) => Err(StoreError::Unavailable(format!("no answer within {wait:?}"))),
            }
        }
        None => store.renew_keys(&all, expires_at).await,
    };
    let outcome = match stored {
        Ok(renewed) => renewed.into_iter().map(Outcome::from).collect(),
        Err(err) if deferrals.is_some_and(StoreContact::defer) => {
            tracing::warn!(error = %err, keys = all.len(), "the store did not take key renewals; answering them deferred");
            vec![Outcome::Deferred; all.len()]
        }
        Err(err) => return Err(err.into()),
    };
    tracing::debug!(keys = all.len(), elapsed = ?started.elapsed(), "key renewals");
    let mut answers = all.into_iter().zip(outcome).map(|(renewal, outcome)| {
        if outcome == Outcome::Refused {
            tracing::warn!(backend_id = %renewal.backend_id, fencing_token = renewal.fencing_token, "key lease not renewed");
        }
        let renewed = outcome == Outcome::Renewed;
        v1::RenewKeyResponse {
            backend_id: renewal.backend_id,
            renewed,
            expires_at: renewed.then(|| timestamp_to_proto(expires_at)),
            deferred: outcome == Outcome::Deferred,
        }
    });
    Ok(shapes
        .into_iter()
        .map(|(single, count)| {
            let keys: Vec<_> = answers.by_ref().take(count).collect();
            if single {
                Reply::RenewKeyResponse(keys.into_iter().next().expect("one answer per key"))
            } else {
                Reply::RenewKeysResponse(v1::RenewKeysResponse { keys })
            }
        })
        .collect())
}

/// What became of one key's renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Renewed,
    Refused,
    /// The store could not be reached: neither renewed nor lost.
    Deferred,
}

impl From<bool> for Outcome {
    fn from(renewed: bool) -> Self {
        if renewed { Outcome::Renewed } else { Outcome::Refused }
    }
}

/// The keys of one message, validated.
fn validated(keys: &[v1::RenewKey], single: bool) -> Result<Vec<KeyRenewal>, ApiError> {
    let mut violations = validate::Violations::default();
    if keys.len() > MAX_KEYS {
        violations.check("renew_keys.keys", Some(format!("at most {MAX_KEYS} keys (got {})", keys.len())));
    }
    let mut renewals = Vec::with_capacity(keys.len());
    for (i, renew) in keys.iter().enumerate() {
        let field = if single { "renew_key".to_string() } else { format!("renew_keys.keys[{i}]") };
        violations
            .absorb(&format!("{field}.backend_id"), validate::id(&format!("{field}.backend_id"), &renew.backend_id));
        match &renew.key {
            Some(key) => {
                violations.extend(BackendKey::from(key).violations(&format!("{field}.key")));
                renewals.push(KeyRenewal {
                    backend_id: renew.backend_id.clone(),
                    key: BackendKey::from(key),
                    fencing_token: renew.fencing_token,
                });
            }
            None => {
                violations.check(format!("{field}.key"), Some("is required".into()));
            }
        }
    }
    violations.into_result()?;
    Ok(renewals)
}
