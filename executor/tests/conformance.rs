//! The conformance suite (docs/design/executor-protocol.md#conformance) against this crate's own
//! runtimes. The cases live in the library (`hangar_executor::conformance`, also run by
//! `hangar-drone conformance --socket PATH` against any executor); here each runs through real
//! tonic on a temporary Unix socket — an in-process executor server plus the [`ExecutorClient`] —
//! against the docker, process and mock runtimes, every case of the library's one list
//! (`hangar_executor::conformance_cases!`). Docker cases skip loudly without an engine, and
//! fail instead with `HANGAR_REQUIRE_DOCKER=1`.

use std::sync::Arc;

use hangar_executor::conformance::{Images, Outcome, Subject, cases};
use hangar_executor::runtime::mock::MockRuntime;
use hangar_executor::runtime::process::ProcessRuntime;
use hangar_executor::runtime::{Runtime, RuntimeKind};
use hangar_executor::testing::{
    ContainerCleanup, TestExecutor, docker_or_skip, test_backend_binary, test_image, unique_name,
};

/// An executor serving one of this crate's runtimes, and the suite's view of it.
struct Harness {
    subject: Subject,
    _exec: TestExecutor,
    _cleanup: Option<ContainerCleanup>,
}

impl Harness {
    async fn new(kind: RuntimeKind, test: &str) -> Option<Self> {
        let (runtime, image, cleanup): (Arc<dyn Runtime>, String, _) = match kind {
            RuntimeKind::Docker => {
                let instance = unique_name("conf");
                // Armed before anything can be created, so a failing test still cleans up.
                let cleanup = ContainerCleanup::new(&instance);
                let runtime = docker_or_skip(test, &instance).await?;
                let image = tokio::task::spawn_blocking(test_image).await.unwrap().to_string();
                (Arc::new(runtime), image, Some(cleanup))
            }
            RuntimeKind::Process => {
                let binary = tokio::task::spawn_blocking(test_backend_binary).await.unwrap();
                (Arc::new(ProcessRuntime::new()), binary.display().to_string(), None)
            }
            RuntimeKind::Mock => (Arc::new(MockRuntime::new()), "mock/test-backend:1".to_string(), None),
        };
        let exec = TestExecutor::start(runtime).await.expect("executor serves and handshakes");
        let subject = Subject::connect(&exec.socket, Images { image, ..Default::default() })
            .await
            .expect("the suite connects and handshakes");
        assert_eq!(subject.kind, kind, "the executor reports its runtime in the handshake");
        Some(Harness { subject, _exec: exec, _cleanup: cleanup })
    }
}

macro_rules! for_runtime {
    ($module:ident, $kind:expr, [$($case:ident),* $(,)?]) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let test = concat!(stringify!($module), "::", stringify!($case));
                    if let Some(harness) = Harness::new($kind, test).await {
                        match cases::$case(&harness.subject).await {
                            Outcome::Passed => {}
                            // Only the process runtime lacks cgroups (OOM reporting, limits).
                            Outcome::Skipped(why) => {
                                assert_eq!($kind, RuntimeKind::Process, "{test} skipped: {why}");
                                eprintln!("{test}: {why}; nothing more to check");
                            }
                        }
                    }
                }
            )*
        }
    };
}

hangar_executor::conformance_cases!(for_runtime!(docker, RuntimeKind::Docker,));
hangar_executor::conformance_cases!(for_runtime!(process, RuntimeKind::Process,));
hangar_executor::conformance_cases!(for_runtime!(mock, RuntimeKind::Mock,));
