//! Test support shared by this crate's tests and the cross-component tests in `tests/`; built
//! only with the `test-support` feature.

mod postgres;

pub use postgres::{PgCluster, PgClusterError};
