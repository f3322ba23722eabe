//! The Hangar controller and proxy.

pub mod admin;
pub mod api;
pub mod auth;
pub mod controller;
pub mod dashboard;
#[cfg(feature = "dev")]
pub mod dev;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod scheduler;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod watch;

#[cfg(feature = "test-support")]
pub mod testing;
