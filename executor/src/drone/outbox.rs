//! What backend tasks send to the controller, and how it gets there.
//!
//! Two lanes, because the two kinds of message want opposite things from a broken stream:
//!
//! - Backend events must never be lost: [`Outbox::emit`] journals each one and wakes the attach
//!   stream, which sends everything after its cursor and replays the whole journal after every
//!   reconnect, until the controller acknowledges it.
//! - Key renewals are worthless once late: [`CurrentStream::try_send`] puts one straight onto
//!   whichever stream is up, or fails at once, and the key lease retries on its own timer.
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

pub struct Outbox {
    pub journal: Journal,
    /// Sequence of the newest journaled event; the attach stream sends everything after its cursor.
    pub written: watch::Sender<i64>,
    /// The attach stream that is up, if any, for messages that skip the journal.
    pub stream: CurrentStream,
}

impl Outbox {
    pub fn new(journal: Journal) -> Self {
        Outbox { journal, written: watch::Sender::new(0), stream: CurrentStream::default() }
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

/// The drone's current attach stream to a controller, as seen by backend tasks that send on it
/// directly. Each stream gets a new generation, so an answer can be matched to the stream its
/// request went out on.
#[derive(Default)]
pub struct CurrentStream {
    current: Mutex<Option<(u64, mpsc::Sender<v1::DroneAttachRequest>)>>,
    generations: AtomicU64,
}

impl CurrentStream {
    /// A new stream is up; returns its generation.
    pub fn attach(&self, tx: mpsc::Sender<v1::DroneAttachRequest>) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        *self.current.lock().unwrap() = Some((generation, tx));
        generation
    }

    /// The stream of `generation` is gone (a newer one may already have replaced it).
    pub fn detach(&self, generation: u64) {
        let mut current = self.current.lock().unwrap();
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
        }
    }

    /// Sends without waiting; the generation it went out on, or `None` when no stream is up or
    /// its buffer is full (the caller retries soon).
    pub fn try_send(&self, message: v1::drone_attach_request::Message) -> Option<u64> {
        let current = self.current.lock().unwrap();
        let (generation, tx) = current.as_ref()?;
        tx.try_send(v1::DroneAttachRequest { message: Some(message) }).ok().map(|()| *generation)
    }
}
