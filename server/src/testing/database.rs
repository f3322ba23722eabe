//! A fresh database per store test, SQLite or PostgreSQL, and the macro that runs one scenario
//! against both.

use crate::store::{self, DynStore};

/// A fresh, empty database and what keeps it alive; `open` may be called any number of times to
/// get independent store instances (own pools) on the same database, like several controllers.
pub struct TestDatabase {
    pub url: String,
    _keep: Box<dyn std::any::Any + Send + Sync>,
}

impl TestDatabase {
    /// SQLite in a temporary directory (in a subdirectory that does not exist yet, so opening
    /// also proves the store creates it).
    pub async fn sqlite() -> TestDatabase {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/nested/hangar.db", dir.path().display());
        TestDatabase { url, _keep: Box::new(dir) }
    }

    /// A new database on this process's shared PostgreSQL test cluster.
    pub async fn postgres() -> TestDatabase {
        let cluster = super::PgCluster::shared().await.expect("PostgreSQL test cluster");
        let url = cluster.create_database().await.expect("create test database");
        TestDatabase { url, _keep: Box::new(()) }
    }

    /// "sqlite" or "postgres".
    pub fn backend(&self) -> &str {
        self.url.split(':').next().unwrap_or_default()
    }

    pub async fn open(&self) -> DynStore {
        store::open(&self.url).await.unwrap_or_else(|e| panic!("open {}: {e}", self.url))
    }
}

/// Runs every named scenario (an `async fn NAME(db: TestDatabase)` in scope) once per
/// database, as the tests `sqlite::NAME` and `postgres::NAME`.
#[macro_export]
macro_rules! store_scenarios {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::testing::TestDatabase::sqlite().await).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::testing::TestDatabase::postgres().await).await
                }
            )+
        }
    };
}
