//! Node watches: one [`NodeWatchHub`] per controller tails the store's change log and fans each
//! change out to every watcher; each `WatchNodes` stream is a [`NodeWatch`] that turns changes
//! into the events its filter should see.
//!
//! The hot path does no per-watcher database reads and never waits on a watcher: the hub reads
//! each change once, converts it to protobuf once, and hands an `Arc` of it to each watcher's
//! bounded buffer with a non-blocking send. A watcher whose buffer is full is dropped by the hub
//! and its stream ends with RESOURCE_EXHAUSTED naming the last revision it delivered, so the
//! client resumes without loss while the others carry on undelayed.

mod hub;
mod stream;

pub use hub::{HubChange, NodeWatchHub, Subscription, WatchConfig};
pub use stream::{NodeWatch, WatchRequest};
