//! One `WatchBackends` stream: the backends of the filter at one snapshot, or a replay, then
//! every status change the filter selects. It shares the hub and the live phase with
//! `WatchNodes` ([`super::stream`]); what is its own is the setup and [`BackendLens`].
//!
//! A backend's fields other than its status never change, so it enters or leaves a filter only
//! through its state. Each change carries the state before it, so a stream tells ADDED,
//! MODIFIED and REMOVED from the change alone and keeps no set of backends it has shown (unlike
//! a node filter on pool or labels, which needs one).

use super::hub::{HubChange, WatchHub, Watched};
use super::stream::{Lens, Live, Step, WatchRequest, WatchStream};
use crate::api::ApiError;
use crate::store::{BackendFilter, ChangeKind, Revision};
use hangar::domain::{Backend, BackendState};
use hangar::v1::{self, BackendEventType};

pub struct BackendWatch;

fn event(kind: BackendEventType, backend: Option<v1::Backend>, revision: Revision) -> v1::WatchBackendsResponse {
    v1::WatchBackendsResponse::new(v1::BackendEvent { r#type: kind as i32, backend, revision })
}

impl BackendWatch {
    /// The event stream for one request. Errors before the first event (a compacted start
    /// revision) arrive as the stream's first item.
    pub fn stream(hub: WatchHub, request: WatchRequest<BackendFilter>) -> WatchStream<v1::WatchBackendsResponse> {
        let setup = async_stream::stream! {
            let store = hub.store().clone();
            let filter = request.filter;
            let start = if request.send_initial {
                // One snapshot transaction: exact at its revision, however many backends.
                let snapshot = match store.backend_snapshot(&filter).await {
                    Ok(snapshot) => snapshot,
                    Err(err) => { yield Err(ApiError::from(err)); return; }
                };
                for backend in &snapshot.backends {
                    yield Ok(Step::Event(event(BackendEventType::Added, Some(v1::Backend::from(backend)), snapshot.revision)));
                }
                yield Ok(Step::Event(event(BackendEventType::SnapshotEnd, None, snapshot.revision)));
                snapshot.revision
            } else if request.start_revision == 0 {
                match store.current_revision().await {
                    Ok(r) => r,
                    Err(err) => { yield Err(ApiError::from(err)); return; }
                }
            } else {
                request.start_revision
            };
            let subscription = match hub.subscribe(start).await {
                Ok(subscription) => subscription,
                Err(err) => { yield Err(ApiError::from(err)); return; }
            };
            let lens: Box<dyn Lens<Response = v1::WatchBackendsResponse>> = Box::new(BackendLens { filter });
            yield Ok(Step::Live(Live::new(hub, subscription, start, lens, request.bookmark_interval)));
        };
        WatchStream::new(crate::metrics::WatchKind::Backends, Box::pin(setup))
    }
}

/// `WatchBackends`: backend changes through the stream's filter.
struct BackendLens {
    filter: BackendFilter,
}

impl Lens for BackendLens {
    type Response = v1::WatchBackendsResponse;

    fn classify(&mut self, change: &HubChange) -> Option<v1::WatchBackendsResponse> {
        let Watched::Backend { backend, previous, encoded } = &change.object else { return None };
        let kind = classify(&self.filter, change.kind, backend, *previous)?;
        // The backend's bytes as the hub encoded them once: a reference count per stream.
        Some(v1::WatchBackendsResponse::shared(kind, Some(encoded.clone()), change.revision))
    }

    fn bookmark(&self, revision: Revision) -> v1::WatchBackendsResponse {
        event(BackendEventType::Bookmark, None, revision)
    }
}

/// What a stream with `filter` says about a change of `backend` that was in `previous` before
/// (`None`: the backend is new): in the filter before and after, MODIFIED; only after, ADDED;
/// only before, REMOVED (carrying the backend as it is now); neither, nothing.
fn classify(
    filter: &BackendFilter,
    kind: ChangeKind,
    backend: &Backend,
    previous: Option<BackendState>,
) -> Option<BackendEventType> {
    let before = kind != ChangeKind::Added && previous.is_some_and(|state| filter.matches_in(backend, state));
    let after = kind != ChangeKind::Removed && filter.matches(backend);
    match (before, after) {
        (false, true) => Some(BackendEventType::Added),
        (true, true) => Some(BackendEventType::Modified),
        (true, false) => Some(BackendEventType::Removed),
        (false, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use hangar::domain::{BackendKey, BackendStatus, SpawnConfig};

    fn backend(namespace: &str, state: BackendState) -> Backend {
        let now = Utc::now();
        Backend {
            id: "bk-1".into(),
            key: Some(BackendKey { namespace: namespace.into(), name: "doc-1".into(), tag: "v1".into() }),
            status: BackendStatus::new(state, now),
            drone_id: "d1".into(),
            cluster: "default".into(),
            pool: "default".into(),
            labels: Default::default(),
            created_at: now,
            updated_at: now,
            last_activity_at: now,
            fencing_token: 1,
            spawn_config: SpawnConfig::from_proto(
                &v1::SpawnConfig {
                    executable: Some(v1::Executable { image: "hangar/test:1".into(), ..Default::default() }),
                    ..Default::default()
                },
                "spawn_config",
            )
            .unwrap(),
            address: String::new(),
            termination_requested: None,
        }
    }

    #[test]
    fn a_backend_leaving_a_namespace_and_state_filter_is_removed() {
        use BackendState::*;
        let filter = BackendFilter {
            key_namespace: Some("docs".into()),
            states: vec![Starting, Waiting, Ready],
            ..Default::default()
        };
        let life = [
            (ChangeKind::Added, None, Scheduled, None),
            (ChangeKind::Modified, Some(Scheduled), Loading, None),
            (ChangeKind::Modified, Some(Loading), Starting, Some(BackendEventType::Added)),
            (ChangeKind::Modified, Some(Starting), Ready, Some(BackendEventType::Modified)),
            (ChangeKind::Modified, Some(Ready), Terminating, Some(BackendEventType::Removed)),
            (ChangeKind::Modified, Some(Terminating), Terminated, None),
        ];
        for (step, (kind, previous, state, expected)) in life.into_iter().enumerate() {
            assert_eq!(classify(&filter, kind, &backend("docs", state), previous), expected, "step {step}");
            assert_eq!(
                classify(&filter, kind, &backend("other", state), previous),
                None,
                "other namespace, step {step}"
            );
        }
    }

    #[test]
    fn without_a_state_filter_every_status_is_a_change_of_a_present_backend() {
        let filter = BackendFilter::default();
        let b = |state| backend("docs", state);
        assert_eq!(
            classify(&filter, ChangeKind::Added, &b(BackendState::Scheduled), None),
            Some(BackendEventType::Added)
        );
        assert_eq!(
            classify(&filter, ChangeKind::Modified, &b(BackendState::Terminated), Some(BackendState::Ready)),
            Some(BackendEventType::Modified)
        );
        assert_eq!(
            classify(&filter, ChangeKind::Removed, &b(BackendState::Terminated), Some(BackendState::Terminated)),
            Some(BackendEventType::Removed)
        );
    }
}
