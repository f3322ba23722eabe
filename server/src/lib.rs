//! The Hangar controller and proxy.

pub mod store;

#[cfg(feature = "test-support")]
pub mod testing;
