//! What backend tasks send to the controller, and how it gets there.
//!
//! Two lanes, because the two kinds of message want opposite things from a broken stream:
//!
//! - Backend events must never be lost: [`Outbox::emit`] journals each one and wakes the attach
//!   stream, which sends everything after its cursor and replays the whole journal after every
//!   reconnect, until the controller acknowledges it.
//! - Key renewals are worthless once late: the renewer ([`super::renewer`]) puts each batch on
//!   the priority lane of whichever stream is up ([`CurrentStream::priority`]), ahead of events,
//!   or fails at once and retries soon on its own timer.
//!
//! The outbox is shared by the fleet's backend tasks (which write to it) and the attach stream
//! (which drains it), so neither has to know the other.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hangar::domain::BackendState;
use hangar::v1;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::journal::Journal;
use super::renewer::KeyRenewer;

pub struct Outbox {
    pub journal: Journal,
    /// Sequence of the newest journaled event; the attach stream sends everything after its cursor.
    pub written: watch::Sender<i64>,
    /// The attach stream that is up, if any, for messages that skip the journal.
    pub stream: CurrentStream,
    /// Every live key of this drone, renewed in batches.
    pub keys: KeyRenewer,
}

impl Outbox {
    pub fn new(journal: Journal) -> Self {
        Outbox {
            journal,
            written: watch::Sender::new(0),
            stream: CurrentStream::default(),
            keys: KeyRenewer::default(),
        }
    }

    /// Journals an event (the attach stream picks it up from there). A journal that fails is
    /// retried: dropping the event would leave the controller with a stale state forever.
    pub async fn emit(&self, event: v1::DroneBackendEvent, state: BackendState, shutdown: &CancellationToken) {
        loop {
            match self.journal.append_event(&event, state).await {
                Ok(seq) => {
                    self.written.send_replace(seq);
                    return;
                }
                Err(err) => {
                    tracing::error!(backend_id = %event.backend_id, error = %err, "cannot journal a backend event; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// The drone's current attach stream to a controller, as seen by the key renewer, which sends on
/// it directly. Each stream gets a new generation, so an answer can be matched to the stream its
/// request went out on.
#[derive(Default)]
pub struct CurrentStream {
    current: Mutex<Option<Lane>>,
    generations: AtomicU64,
}

/// The priority lane of one attach stream: what goes in here is sent before anything queued on
/// the stream's main lane (events, heartbeats, acks).
#[derive(Clone)]
pub struct Lane {
    pub generation: u64,
    /// The controller answers `RenewKeys` (its Welcome said so).
    pub batch_renewals: bool,
    /// What the controller promised with a deferred renewal (its Welcome's
    /// `store_outage_grace`); zero: it never defers.
    pub outage_grace: Duration,
    tx: mpsc::Sender<v1::DroneAttachRequest>,
}

impl Lane {
    /// Whether the message went out on this stream; `false` when the stream is gone or stuck.
    pub async fn send(&self, message: v1::drone_attach_request::Message) -> bool {
        let request = v1::DroneAttachRequest { message: Some(message) };
        matches!(tokio::time::timeout(LANE_SEND_TIMEOUT, self.tx.send(request)).await, Ok(Ok(())))
    }
}

/// A stream whose priority lane takes no message for this long is as good as gone for renewals.
const LANE_SEND_TIMEOUT: Duration = Duration::from_secs(1);

impl CurrentStream {
    /// A new stream is up, with `priority` as its priority lane; returns its generation.
    pub fn attach(
        &self,
        priority: mpsc::Sender<v1::DroneAttachRequest>,
        batch_renewals: bool,
        outage_grace: Duration,
    ) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        *self.current.lock().unwrap() = Some(Lane { generation, batch_renewals, outage_grace, tx: priority });
        generation
    }

    /// The stream of `generation` is gone (a newer one may already have replaced it).
    pub fn detach(&self, generation: u64) {
        let mut current = self.current.lock().unwrap();
        if current.as_ref().is_some_and(|lane| lane.generation == generation) {
            *current = None;
        }
    }

    /// The priority lane of the stream that is up, if any.
    pub fn priority(&self) -> Option<Lane> {
        self.current.lock().unwrap().clone()
    }
}
