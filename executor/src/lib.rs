//! The Hangar drone side: the drone agent that attaches a host to controllers, the
//! [`runtime::Runtime`] trait with its docker, process and mock runtimes, and the executor socket
//! ([`socket`]): the server that exposes a runtime on a Unix socket and the client that drives an
//! executor over it; and the [`conformance`] suite any executor can be checked with.

pub mod conformance;
pub mod drone;
pub mod executor_command;
pub mod metrics;
pub mod runtime;
pub mod socket;

#[cfg(feature = "testing")]
pub mod testing;
