//! Hangar drone agent and executors.

pub mod drone;
