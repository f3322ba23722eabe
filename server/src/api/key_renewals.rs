//! A drone session's key renewals, on their own task (docs/design/backends-and-leases.md#key-leases-and-fencing):
//! the session's reader hands each `RenewKeys` batch (or an older drone's single `RenewKey`)
//! here as it arrives, so renewals never wait behind the store writes of backend events or
//! action deliveries for other backends. A batch is renewed in one store transaction
//! ([`BackendStore::renew_keys`](crate::store::BackendStore::renew_keys)) and answered in one
//! message, per key, in the request's order.

use super::{ApiError, validate};
use crate::store::{DynStore, KeyRenewal};
use chrono::Utc;
use hangar::domain::{BackendKey, timestamp_to_proto};
use hangar::v1;
use std::time::Duration;
use tokio::sync::mpsc;
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

type Outbound = mpsc::Sender<Result<v1::DroneAttachResponse, Status>>;

/// Renews and answers until the session drops its sender. A message that is not valid, or a store
/// that fails, ends the stream with that error, as in-line handling would: the drone reattaches.
pub(super) async fn serve(
    store: DynStore,
    lease_duration: Duration,
    mut renewals: mpsc::Receiver<Renewal>,
    outbound: Outbound,
) {
    use v1::drone_attach_response::Message as Reply;
    while let Some(renewal) = renewals.recv().await {
        let reply = match renewal {
            Renewal::Batch(batch) => renew(&store, lease_duration, batch.keys, false)
                .await
                .map(|keys| Reply::RenewKeysResponse(v1::RenewKeysResponse { keys })),
            Renewal::Single(key) => renew(&store, lease_duration, vec![key], true)
                .await
                .map(|mut keys| Reply::RenewKeyResponse(keys.pop().expect("one answer per key"))),
        };
        let message = match reply {
            Ok(reply) => Ok(v1::DroneAttachResponse { message: Some(reply) }),
            Err(err) => {
                if let ApiError::Store(err) = &err {
                    tracing::warn!(error = %err, "store failed renewing keys");
                }
                Err(Status::from(err))
            }
        };
        let failed = message.is_err();
        // A drone that stopped reading ends its stream; the session notices when its read fails.
        if outbound.send(message).await.is_err() || failed {
            return;
        }
    }
}

/// Validates and renews `keys` in one transaction; one answer per key, in order.
async fn renew(
    store: &DynStore,
    lease_duration: Duration,
    keys: Vec<v1::RenewKey>,
    single: bool,
) -> Result<Vec<v1::RenewKeyResponse>, ApiError> {
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
    // Read after the request arrived: the drone counts from before it sent, so its deadlines
    // fall before this expiry whatever the delay.
    let now = Utc::now();
    let expires_at = now + chrono::Duration::from_std(lease_duration).unwrap_or_default();
    let started = std::time::Instant::now();
    let renewed = store.renew_keys(&renewals, now, expires_at).await?;
    tracing::debug!(keys = renewals.len(), elapsed = ?started.elapsed(), "key renewals");
    Ok(renewals
        .into_iter()
        .zip(renewed)
        .map(|(renewal, renewed)| {
            if !renewed {
                tracing::warn!(backend_id = %renewal.backend_id, fencing_token = renewal.fencing_token, "key lease not renewed");
            }
            v1::RenewKeyResponse {
                backend_id: renewal.backend_id,
                renewed,
                expires_at: renewed.then(|| timestamp_to_proto(expires_at)),
            }
        })
        .collect())
}
