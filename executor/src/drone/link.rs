//! The drone's current stream to a controller, as seen by backend tasks that need to send on it
//! (key renewals). Each attachment gets a new generation, so an answer can be matched to the
//! stream its request went out on.

use std::sync::Mutex;

use hangar::v1;
use tokio::sync::mpsc;

#[derive(Default)]
pub struct Link {
    current: Mutex<Option<(u64, mpsc::Sender<v1::DroneAttachRequest>)>>,
    generations: std::sync::atomic::AtomicU64,
}

impl Link {
    /// A new stream is up; returns its generation.
    pub fn attach(&self, tx: mpsc::Sender<v1::DroneAttachRequest>) -> u64 {
        let generation = self.generations.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
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
