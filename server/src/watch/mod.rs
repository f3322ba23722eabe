//! Node and backend watches: one [`WatchHub`] per controller tails the store's change log (node
//! and backend changes under one revision counter) and fans each change out to every watcher;
//! each `WatchNodes` stream is a [`NodeWatch`] and each `WatchBackends` stream a
//! [`BackendWatch`], which turn changes of their kind into the events their filter should see.
//!
//! The hot path does no per-watcher database reads and never waits on a watcher: the hub takes
//! each change once (from this process's commit feed, or from the log for commits made
//! elsewhere), converts and encodes it once, and hands an `Arc` of it to each watcher's bounded
//! buffer with a non-blocking send. A watcher whose buffer is full leaves the live fan-out,
//! catches up from the hub's ring of recent changes and rejoins; only one that falls further
//! behind than the ring reaches is cut off with RESOURCE_EXHAUSTED naming the last revision it
//! delivered, so the client resumes without loss. The others carry on undelayed. See
//! docs/design/nodes-and-watch.md#the-hub.

mod backends;
mod changes;
mod hub;
mod stream;

pub use backends::BackendWatch;
pub use changes::ChangeWatch;
pub use hub::{HubChange, LiveHeartbeat, NodeListing, Subscription, WatchConfig, WatchHub, Watched};
pub use stream::{NodeWatch, WatchRequest, WatchStream};
