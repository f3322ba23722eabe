//! The controller: a stateless gRPC server over a [`Store`](crate::store::Store). It registers
//! drones and proxies, tracks their liveness in memory, serves the node and backend APIs and the
//! drone and proxy links, and runs the backend sweep.

mod coalescing_stream;
mod incoming;
mod liveness;
mod registry;
mod server;
mod store_outage;
mod sweep;

pub use liveness::LivenessConfig;
pub use registry::{
    ATTACH_CONCURRENCY, ATTACH_QUEUE, AttachPermit, AttachQueueFull, AttachedNode, CloseCause, Mail, NodeRegistry,
};
pub use server::{Controller, ControllerConfig, RunningController};
pub use store_outage::{StoreContact, TICK_INTERVAL};
pub use sweep::{BackendSweep, SweepReport};
