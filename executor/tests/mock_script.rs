//! The mock runtime's script knobs that the conformance suite does not already exercise.

use std::sync::Arc;

use hangar_executor::runtime::mock::{ENV_CRASH_EXECUTOR, ENV_START_FAIL, MockRuntime};
use hangar_executor::runtime::{BackendSpec, Runtime, RuntimeError};
use hangar_executor::testing::TestExecutor;

fn spec(id: &str, env: &[(&str, &str)]) -> BackendSpec {
    BackendSpec {
        backend_id: id.into(),
        image: "mock/x".into(),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn scripted_start_failure_reaches_the_client_with_its_message() {
    let exec = TestExecutor::start(Arc::new(MockRuntime::new())).await.unwrap();
    match exec.client.start(spec("doomed", &[(ENV_START_FAIL, "exec format error")])).await {
        Err(RuntimeError::StartFailed { backend_id, message }) => {
            assert_eq!(backend_id, "doomed");
            assert_eq!(message, "exec format error");
        }
        other => panic!("expected BACKEND_START_FAILED, got {other:?}"),
    }
    assert!(matches!(exec.client.inspect("doomed").await, Err(RuntimeError::BackendNotFound(_))));
}

#[tokio::test]
async fn in_process_mock_refuses_to_crash_its_host() {
    // Only the `hangar-drone executor` process obeys the crash knob; a test process survives it.
    let exec = TestExecutor::start(Arc::new(MockRuntime::new())).await.unwrap();
    let result = exec.client.start(spec("crash", &[(ENV_CRASH_EXECUTOR, "1")])).await;
    assert!(matches!(result, Err(RuntimeError::Unsupported(_))), "{result:?}");
}
