//! The store's debug lines under `RUST_LOG` directives per target, as operators write them
//! (`info,hangar_server::store=debug`). Its own test binary: the subscriber is the process's.

use chrono::Utc;
use hangar::domain::BackendKey;
use hangar_agent::telemetry::{LogFormat, log_layer};
use hangar_server::store::KeyRenewal;
use hangar_server::testing::TestDatabase;
use std::io::Write;
use std::sync::{Arc, Mutex};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A renewal group logs at DEBUG right after its commit. On PostgreSQL, sqlx's query logger runs
/// on the store's threads and asks, before each query, whether `sqlx::query` logs; those lines
/// were dropped whenever a directive named a target, while `RUST_LOG=debug` showed them.
#[tokio::test]
async fn the_stores_debug_lines_are_written_when_a_directive_names_their_target() {
    let lines = Lines::default();
    let writer = lines.clone();
    let filter = EnvFilter::new("info,hangar_server::store=debug");
    let layer = log_layer(LogFormat::Text, filter, move || writer.clone(), false);
    tracing_subscriber::registry().with(layer).try_init().expect("the only subscriber of this test binary");

    for db in [TestDatabase::sqlite().await, TestDatabase::postgres().await] {
        lines.0.lock().unwrap().clear();
        let store = db.open().await;
        let key = BackendKey { namespace: "default".into(), name: "no-such-key".into(), tag: String::new() };
        for _ in 0..3 {
            let renewal = KeyRenewal { backend_id: "no-such-backend".into(), key: key.clone(), fencing_token: 1 };
            let renewed = store.renew_keys(&[renewal], Utc::now()).await.unwrap();
            assert_eq!(renewed, [false], "nobody holds the key");
        }
        let text = String::from_utf8_lossy(&lines.0.lock().unwrap()).into_owned();
        let groups = text.lines().filter(|line| line.contains("key renewal group")).count();
        assert_eq!(groups, 3, "{}: one debug line per renewal group, in:\n{text}", db.backend());
        assert!(
            !text.contains("sqlx::query"),
            "{}: sqlx's lines are not enabled by this filter:\n{text}",
            db.backend()
        );
    }
}
