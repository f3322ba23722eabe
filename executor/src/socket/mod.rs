//! The executor socket: `hangar.executor.v1` over a local Unix socket, between a drone and the
//! executor that runs its backends. The [`server`] exposes any [`Runtime`](crate::runtime::Runtime)
//! on the socket; the [`client`] is a `Runtime` that calls an executor through it, so the drone
//! runs the same code against an in-process runtime or a separate executor process.

pub mod client;
pub mod server;

/// Default limit on one gRPC message in either direction. Specs and listings are small; the
/// limit keeps a confused peer from making the executor allocate without bound.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
