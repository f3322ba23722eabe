//! The per-executor event hub: one sequence, one broadcast, and the per-backend bookkeeping that
//! makes the protocol's promises hold for every runtime — STARTED before EXITED, no duplicates,
//! and no silent gap for a reader that lags.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use hangar::domain::{timestamp_from_proto, timestamp_to_proto};
use hangar::executor::v1 as pb;
use tokio::sync::broadcast;

use super::{EventStream, RuntimeError};

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// First event of every stream: everything after it is live.
    Sync,
    Started,
    Exited {
        exit_code: Option<i32>,
    },
    Oom,
    Removed,
}

/// One event with its place in the executor's sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeEvent {
    /// Increases by one per event of this executor. A SYNC carries the sequence of the last event
    /// published before the stream went live (0 if none), so the first live event is SYNC + 1.
    pub sequence: u64,
    pub kind: EventKind,
    /// Empty on SYNC.
    pub backend_id: String,
    pub time: DateTime<Utc>,
}

impl RuntimeEvent {
    pub fn to_proto(&self) -> pb::RuntimeEvent {
        let (kind, exit_code) = match self.kind {
            EventKind::Sync => (pb::EventType::Sync, None),
            EventKind::Started => (pb::EventType::Started, None),
            EventKind::Exited { exit_code } => (pb::EventType::Exited, exit_code),
            EventKind::Oom => (pb::EventType::Oom, None),
            EventKind::Removed => (pb::EventType::Removed, None),
        };
        pb::RuntimeEvent {
            sequence: self.sequence,
            r#type: kind.into(),
            backend_id: self.backend_id.clone(),
            time: Some(timestamp_to_proto(self.time)),
            exit_code,
        }
    }

    pub fn from_proto(event: pb::RuntimeEvent) -> Result<Self, RuntimeError> {
        let kind = match pb::EventType::try_from(event.r#type) {
            Ok(pb::EventType::Sync) => EventKind::Sync,
            Ok(pb::EventType::Started) => EventKind::Started,
            Ok(pb::EventType::Exited) => EventKind::Exited { exit_code: event.exit_code },
            Ok(pb::EventType::Oom) => EventKind::Oom,
            Ok(pb::EventType::Removed) => EventKind::Removed,
            _ => return Err(RuntimeError::internal(format!("unknown event type {}", event.r#type))),
        };
        Ok(RuntimeEvent {
            sequence: event.sequence,
            kind,
            backend_id: event.backend_id,
            time: event.time.as_ref().and_then(timestamp_from_proto).unwrap_or_else(Utc::now),
        })
    }
}

/// Where a backend is as far as published events go; only moves forward until a new start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Published {
    Started,
    Exited,
    Removed,
}

struct HubState {
    last_sequence: u64,
    backends: HashMap<String, Published>,
}

/// Default number of events a reader may fall behind before its stream ends.
pub const DEFAULT_EVENT_BUFFER: usize = 4096;

/// Publishes runtime events. Runtimes report what they observe, possibly more than once and from
/// several sources (the Docker events stream and a reconcile, for instance); the hub turns that
/// into the ordered, duplicate-free stream the protocol promises.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    // The sequence is assigned and the event sent under one lock, so broadcast order is
    // sequence order.
    state: Mutex<HubState>,
    sender: broadcast::Sender<RuntimeEvent>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new(DEFAULT_EVENT_BUFFER)
    }
}

impl EventHub {
    /// A hub whose readers may lag by at most `buffer` events.
    pub fn new(buffer: usize) -> Self {
        let (sender, _) = broadcast::channel(buffer.max(1));
        EventHub {
            inner: Arc::new(HubInner {
                state: Mutex::new(HubState { last_sequence: 0, backends: HashMap::new() }),
                sender,
            }),
        }
    }

    fn publish_locked(&self, state: &mut HubState, backend_id: &str, kind: EventKind) {
        state.last_sequence += 1;
        let event =
            RuntimeEvent { sequence: state.last_sequence, kind, backend_id: backend_id.to_string(), time: Utc::now() };
        tracing::debug!(sequence = event.sequence, backend_id, kind = ?event.kind, "runtime event");
        // No receivers is fine: nobody is watching right now.
        let _ = self.inner.sender.send(event);
    }

    /// The backend runs. Ignored if already reported since its last removal.
    pub fn started(&self, backend_id: &str) {
        let mut state = self.inner.state.lock().unwrap();
        match state.backends.get(backend_id) {
            Some(Published::Started | Published::Exited) => {}
            None | Some(Published::Removed) => {
                state.backends.insert(backend_id.to_string(), Published::Started);
                self.publish_locked(&mut state, backend_id, EventKind::Started);
            }
        }
    }

    /// The backend's process ended; with `oom_killed`, an OOM event comes right before the
    /// EXITED, under the same lock, so both are published once and in that order. A STARTED is
    /// published first if nobody reported one (an exit seen before the start, e.g. in a
    /// reconcile), so readers always see STARTED first. An exit reported after the removal (a
    /// late engine event) is ignored.
    pub fn exited(&self, backend_id: &str, exit_code: Option<i32>, oom_killed: bool) {
        let mut state = self.inner.state.lock().unwrap();
        match state.backends.get(backend_id) {
            Some(Published::Exited | Published::Removed) => return,
            Some(Published::Started) => {}
            None => self.publish_locked(&mut state, backend_id, EventKind::Started),
        }
        state.backends.insert(backend_id.to_string(), Published::Exited);
        if oom_killed {
            self.publish_locked(&mut state, backend_id, EventKind::Oom);
        }
        self.publish_locked(&mut state, backend_id, EventKind::Exited { exit_code });
    }

    /// The backend is gone. Ignored for backends the hub never heard of or already removed.
    pub fn removed(&self, backend_id: &str) {
        let mut state = self.inner.state.lock().unwrap();
        match state.backends.get(backend_id) {
            None | Some(Published::Removed) => {}
            Some(Published::Started) => {
                // Removed while running (forced): it exited on the way.
                self.publish_locked(&mut state, backend_id, EventKind::Exited { exit_code: None });
                state.backends.insert(backend_id.to_string(), Published::Removed);
                self.publish_locked(&mut state, backend_id, EventKind::Removed);
            }
            Some(Published::Exited) => {
                state.backends.insert(backend_id.to_string(), Published::Removed);
                self.publish_locked(&mut state, backend_id, EventKind::Removed);
            }
        }
    }

    /// Backends the hub believes are running (STARTED published, no EXITED yet).
    pub fn running(&self) -> Vec<String> {
        let state = self.inner.state.lock().unwrap();
        state.backends.iter().filter(|(_, p)| **p == Published::Started).map(|(id, _)| id.clone()).collect()
    }

    /// A stream that starts with SYNC, then every later event. If the reader lags by more than
    /// the buffer, the stream ends with [`RuntimeError::EventsLagged`] naming the last sequence it
    /// delivered.
    pub fn subscribe(&self) -> EventStream {
        let (receiver, sync) = {
            let state = self.inner.state.lock().unwrap();
            let receiver = self.inner.sender.subscribe();
            let sync = RuntimeEvent {
                sequence: state.last_sequence,
                kind: EventKind::Sync,
                backend_id: String::new(),
                time: Utc::now(),
            };
            (receiver, sync)
        };
        let live = futures::stream::unfold((receiver, sync.sequence, false), |(mut receiver, last, done)| async move {
            if done {
                return None;
            }
            match receiver.recv().await {
                Ok(event) => {
                    let sequence = event.sequence;
                    Some((Ok(event), (receiver, sequence, false)))
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    Some((Err(RuntimeError::EventsLagged { last_sequence: last }), (receiver, last, true)))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        futures::stream::once(async move { Ok(sync) }).chain(live).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(stream: &mut EventStream, n: usize) -> Vec<Result<RuntimeEvent, RuntimeError>> {
        let mut out = Vec::new();
        for _ in 0..n {
            match stream.next().await {
                Some(item) => out.push(item),
                None => break,
            }
        }
        out
    }

    #[tokio::test]
    async fn stream_starts_with_sync_then_events_in_sequence() {
        let hub = EventHub::new(16);
        hub.started("a");
        let mut stream = hub.subscribe();
        hub.exited("a", Some(3), false);
        let events = collect(&mut stream, 2).await;
        let sync = events[0].as_ref().unwrap();
        assert_eq!(sync.kind, EventKind::Sync);
        assert_eq!(sync.sequence, 1);
        let exited = events[1].as_ref().unwrap();
        assert_eq!(exited.kind, EventKind::Exited { exit_code: Some(3) });
        assert_eq!(exited.sequence, 2);
    }

    #[tokio::test]
    async fn exit_reported_before_start_still_reads_started_then_exited_once() {
        let hub = EventHub::new(16);
        let mut stream = hub.subscribe();
        hub.exited("a", Some(0), false);
        hub.started("a");
        hub.exited("a", Some(0), false);
        hub.removed("a");
        hub.removed("a");
        let kinds: Vec<EventKind> = collect(&mut stream, 4).await.into_iter().map(|e| e.unwrap().kind).collect();
        assert_eq!(
            kinds,
            vec![EventKind::Sync, EventKind::Started, EventKind::Exited { exit_code: Some(0) }, EventKind::Removed]
        );
    }

    #[tokio::test]
    async fn oom_is_published_once_right_before_the_exit() {
        let hub = EventHub::new(16);
        let mut stream = hub.subscribe();
        hub.started("a");
        hub.exited("a", Some(137), true);
        hub.exited("a", Some(137), true);
        hub.removed("a");
        let kinds: Vec<EventKind> = collect(&mut stream, 5).await.into_iter().map(|e| e.unwrap().kind).collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::Sync,
                EventKind::Started,
                EventKind::Oom,
                EventKind::Exited { exit_code: Some(137) },
                EventKind::Removed
            ]
        );
    }

    #[tokio::test]
    async fn lagging_reader_gets_resource_exhausted_with_last_sequence_not_a_gap() {
        let hub = EventHub::new(4);
        let mut stream = hub.subscribe();
        assert_eq!(stream.next().await.unwrap().unwrap().kind, EventKind::Sync);
        hub.started("a");
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.sequence, 1);
        for i in 0..10 {
            hub.started(&format!("burst-{i}"));
        }
        let err = stream.next().await.unwrap().unwrap_err();
        assert_eq!(err, RuntimeError::EventsLagged { last_sequence: 1 });
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(stream.next().await.is_none(), "the stream ends after the overflow");
    }
}
