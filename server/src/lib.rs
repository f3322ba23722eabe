//! The Hangar controller and proxy.

pub mod store;
