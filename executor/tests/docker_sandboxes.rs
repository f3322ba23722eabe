//! Warm network sandboxes on the docker runtime (`--docker-warm-sandboxes`): a backend on the
//! default port starts in a sandbox made ahead of it and is reached at the sandbox's published
//! port; the sandbox goes with the backend and is replaced; a restarted runtime finds the
//! backend's address through its sandbox and removes sandboxes nobody uses; a backend that cannot
//! use one (another port, a sandbox that died behind the runtime's back) starts in a namespace
//! of its own; a backend whose sandbox ends under it, unreachable from then on, is killed and
//! reported EXITED, by the event watch or by the reconcile of a runtime that was not running.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use hangar_executor::conformance::wait_for_http;
use hangar_executor::runtime::docker::{DockerOptions, DockerRuntime, LABEL_SANDBOX, WarmSandboxes};
use hangar_executor::runtime::{BackendSpec, EventKind, EventStream, Runtime};
use hangar_executor::testing::{
    ContainerCleanup, container_exists, docker, docker_or_skip_with, leftover_sandbox, network_mode, running_sandboxes,
    sandboxes_until, test_image, unique_name,
};

fn options(instance: &str, count: usize) -> DockerOptions {
    // The drone's own binary has the `sandbox` subcommand the sandbox image runs.
    let executable = PathBuf::from(env!("CARGO_BIN_EXE_hangar-drone"));
    DockerOptions {
        instance: instance.to_string(),
        warm_sandboxes: Some(WarmSandboxes::of_executable(count, executable)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_starts_in_a_warm_sandbox_and_takes_it_along_when_removed_and_the_pool_refills() {
    let test = "a_backend_starts_in_a_warm_sandbox_and_takes_it_along_when_removed_and_the_pool_refills";
    let instance = unique_name("sandbox");
    let _cleanup = ContainerCleanup::new(&instance);
    let Some(runtime) = docker_or_skip_with(test, options(&instance, 1)).await else { return };
    let image = tokio::task::spawn_blocking(test_image).await.unwrap();
    let ready = sandboxes_until(&instance, "one sandbox made ahead", |s| s.len() == 1).await;

    let spec = BackendSpec { backend_id: "in-sandbox".into(), image: image.into(), ..Default::default() };
    let started = runtime.start(spec).await.unwrap();
    assert_eq!(network_mode(&started.runtime_id), format!("container:{}", ready[0]), "joined the ready sandbox");
    let label = format!("{{{{index .Config.Labels \"{LABEL_SANDBOX}\"}}}}");
    assert_eq!(docker(&["inspect", "-f", &label, &started.runtime_id]), ready[0]);
    let published = docker(&["port", &ready[0], "8080/tcp"]);
    assert!(
        published.lines().any(|line| line == started.address),
        "{} is the sandbox's port: {published}",
        started.address
    );
    let (status, _) = wait_for_http(&started.address, "/", Duration::from_secs(20)).await;
    assert_eq!(status, 200, "the backend answers at its sandbox's port");

    // The taken sandbox is replaced in the background.
    let both = sandboxes_until(&instance, "a new sandbox beside the one in use", |s| s.len() == 2).await;
    let spare = both.iter().find(|id| **id != ready[0]).cloned().unwrap();

    // A runtime that ends removes the sandbox nobody took; one left by a runtime that could not
    // (killed) is removed by the next one. The backend's own stays, and the next runtime reports
    // the backend at its port without having started it.
    runtime.shutdown().await;
    assert!(!container_exists(&spare), "the spare sandbox went with the runtime");
    let orphan = leftover_sandbox(&instance, &options(&instance, 1).warm_sandboxes.unwrap().image.reference, &[]);
    drop(runtime);
    let runtime = DockerRuntime::connect(options(&instance, 1)).await.unwrap();
    sandboxes_until(&instance, "the orphan removed, a new spare made", |s| {
        s.len() == 2 && s.contains(&ready[0]) && !s.contains(&orphan)
    })
    .await;
    assert_eq!(runtime.inspect("in-sandbox").await.unwrap().address, started.address);

    // The backend's removal takes its sandbox along.
    runtime.remove("in-sandbox").await.unwrap();
    assert!(!container_exists(&ready[0]), "the backend's sandbox is removed with it");
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_cannot_use_a_sandbox_starts_in_a_namespace_of_its_own() {
    let test = "a_backend_that_cannot_use_a_sandbox_starts_in_a_namespace_of_its_own";
    let instance = unique_name("nosandbox");
    let _cleanup = ContainerCleanup::new(&instance);
    let Some(runtime) = docker_or_skip_with(test, options(&instance, 1)).await else { return };
    let image = tokio::task::spawn_blocking(test_image).await.unwrap();
    let ready = sandboxes_until(&instance, "one sandbox made ahead", |s| s.len() == 1).await;

    // Another port than the one sandboxes publish: no sandbox, and the ready one stays ready.
    let spec = BackendSpec { backend_id: "own-port".into(), image: image.into(), port: 9090, ..Default::default() };
    let started = runtime.start(spec).await.unwrap();
    assert_eq!(network_mode(&started.runtime_id), "default", "a namespace of its own");
    assert_eq!(wait_for_http(&started.address, "/", Duration::from_secs(20)).await.0, 200);
    assert_eq!(running_sandboxes(&instance), ready, "the ready sandbox was not taken");

    // A sandbox that ended behind the runtime's back cannot be joined: the start falls back.
    docker(&["kill", &ready[0]]);
    let spec = BackendSpec { backend_id: "fallback".into(), image: image.into(), ..Default::default() };
    let started = runtime.start(spec).await.unwrap();
    assert_eq!(network_mode(&started.runtime_id), "default", "started without the dead sandbox");
    assert_eq!(wait_for_http(&started.address, "/", Duration::from_secs(20)).await.0, 200);
    assert!(!container_exists(&ready[0]), "the dead sandbox is removed");
    runtime.remove("own-port").await.unwrap();
    runtime.remove("fallback").await.unwrap();
    runtime.shutdown().await;
}

/// Waits for `backend_id`'s EXITED on `events`.
async fn exited(events: &mut EventStream, backend_id: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, events.next()).await.unwrap_or_else(|_| panic!("{what}"));
        let event = event.expect("the event stream goes on").expect("an event");
        if event.backend_id == backend_id && matches!(event.kind, EventKind::Exited { .. }) {
            return;
        }
    }
}

fn running(container: &str) -> bool {
    docker(&["inspect", "-f", "{{.State.Running}}", container]) == "true"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_whose_sandbox_ends_under_it_is_killed_and_reported_exited() {
    let test = "a_backend_whose_sandbox_ends_under_it_is_killed_and_reported_exited";
    let instance = unique_name("sandboxdies");
    let _cleanup = ContainerCleanup::new(&instance);
    let Some(runtime) = docker_or_skip_with(test, options(&instance, 2)).await else { return };
    let image = tokio::task::spawn_blocking(test_image).await.unwrap();
    sandboxes_until(&instance, "two sandboxes made ahead", |s| s.len() == 2).await;
    let mut events = runtime.events().await.unwrap();
    let in_sandbox =
        |backend_id: &str| BackendSpec { backend_id: backend_id.into(), image: image.into(), ..Default::default() };

    // Killed while the runtime watches: the engine's "die" of the sandbox.
    let first = runtime.start(in_sandbox("watched")).await.unwrap();
    let sandbox = network_mode(&first.runtime_id).strip_prefix("container:").expect("in a sandbox").to_string();
    assert_eq!(wait_for_http(&first.address, "/", Duration::from_secs(20)).await.0, 200);
    docker(&["kill", &sandbox]);
    exited(&mut events, "watched", "the backend reported EXITED after its sandbox was killed").await;
    assert!(!running(&first.runtime_id), "the backend is killed");

    // Killed while no runtime runs: found by the next runtime's reconcile.
    sandboxes_until(&instance, "a sandbox ready again", |s| !s.is_empty()).await;
    let second = runtime.start(in_sandbox("unwatched")).await.unwrap();
    let sandbox = network_mode(&second.runtime_id).strip_prefix("container:").expect("in a sandbox").to_string();
    runtime.shutdown().await;
    drop(runtime);
    docker(&["kill", &sandbox]);
    // Past the second of events a new runtime's watch replays: only its reconcile can find this.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(running(&second.runtime_id), "nothing killed the backend while no runtime ran");
    let runtime = DockerRuntime::connect(options(&instance, 0)).await.unwrap();
    let mut events = runtime.events().await.unwrap();
    if running(&second.runtime_id) {
        exited(&mut events, "unwatched", "the next runtime reported the backend EXITED").await;
    }
    assert!(!running(&second.runtime_id), "the next runtime killed the backend");
    runtime.remove("watched").await.unwrap();
    runtime.remove("unwatched").await.unwrap();
    runtime.shutdown().await;
}
