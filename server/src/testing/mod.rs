//! Test support shared by this crate's tests and the cross-component tests in `tests/`; built
//! only with the `test-support` feature.

mod database;
mod postgres;

pub use database::TestDatabase;
pub use postgres::{PgCluster, PgClusterError};
