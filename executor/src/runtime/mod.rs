//! The `Runtime` trait: what an executor needs from the thing that really runs backends. The
//! executor server exposes any runtime over `hangar.executor.v1`; the executor client implements
//! the same trait over the socket, so the drone's code does not care which side of the socket the
//! runtime lives on.

mod error;
mod events;
mod locks;
mod types;

pub use types::validate_backend_id;

pub mod docker;
pub mod mock;
pub mod process;

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use error::RuntimeError;
pub use events::{EventHub, EventKind, RuntimeEvent};
/// The domain's, named here too because the trait and [`BackendSpec`] speak them.
pub use hangar::domain::{DEFAULT_BACKEND_PORT, PullPolicy, ResourceLimits};
pub use types::{
    BackendInfo, BackendSpec, BackendState, Capability, Condition, ImageReady, RuntimeKind, Started, Stats,
};

/// A stream of runtime events: first one [`EventKind::Sync`], then live events in sequence order.
/// It ends with [`RuntimeError::EventsLagged`] when the reader fell too far behind.
pub type EventStream = BoxStream<'static, Result<RuntimeEvent, RuntimeError>>;

/// Resource samples of one backend; ends when the backend exits.
pub type StatsStream = BoxStream<'static, Result<Stats, RuntimeError>>;

/// Label put on everything Hangar runs, so an executor can find its own after a restart.
pub const LABEL_MANAGED: &str = "hangar.managed";
/// Label carrying the backend id.
pub const LABEL_BACKEND_ID: &str = "hangar.backend-id";
/// Label naming the executor instance that owns the backend (several executors may share one
/// Docker engine, e.g. in tests).
pub const LABEL_EXECUTOR: &str = "hangar.executor";

/// Runs backends. Every method is idempotent where the protocol says so
/// (docs/design/executor-protocol.md): `start` by backend id, `stop` and `remove` on missing or
/// stopped backends.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Which runtime this is.
    fn kind(&self) -> RuntimeKind;

    /// What this runtime supports; anything else answers [`RuntimeError::Unsupported`].
    fn capabilities(&self) -> Vec<Capability>;

    /// Whether the runtime is reachable and ready.
    async fn status(&self) -> Vec<Condition>;

    /// Makes an image available according to `policy`.
    async fn prepare_image(&self, image: &str, policy: PullPolicy) -> Result<ImageReady, RuntimeError>;

    /// Starts a backend; a retry with the same backend id returns the same result.
    async fn start(&self, spec: BackendSpec) -> Result<Started, RuntimeError>;

    /// SIGTERM, then kill after `grace` (zero = kill at once). Missing or stopped = Ok.
    async fn stop(&self, backend_id: &str, grace: Duration) -> Result<(), RuntimeError>;

    /// Removes a backend (killing it if it still runs). Missing = Ok.
    async fn remove(&self, backend_id: &str) -> Result<(), RuntimeError>;

    /// State of one backend; [`RuntimeError::BackendNotFound`] if missing.
    async fn inspect(&self, backend_id: &str) -> Result<BackendInfo, RuntimeError>;

    /// Every backend this runtime runs for Hangar.
    async fn list(&self) -> Result<Vec<BackendInfo>, RuntimeError>;

    /// Subscribes to runtime events.
    async fn events(&self) -> Result<EventStream, RuntimeError>;

    /// Samples one backend's resources every `interval`.
    async fn stats(&self, backend_id: &str, interval: Duration) -> Result<StatsStream, RuntimeError>;

    /// Stops the runtime's background tasks. Called once when the executor shuts down.
    async fn shutdown(&self) {}
}
