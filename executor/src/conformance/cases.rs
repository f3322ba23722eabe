//! The conformance cases, written once (docs/design/executor-protocol.md#conformance). Each takes
//! a [`Subject`] (an executor on a socket, and the images that run the test backend there) and
//! panics on the first broken promise, with what it saw; a case whose feature the executor does
//! not advertise is skipped and says why.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hangar_testkit::eventually;

use super::{Burst, Outcome, Subject, wait_for_http};
use crate::runtime::{
    BackendState, Capability, EventKind, EventStream, PullPolicy, ResourceLimits, Runtime, RuntimeError, RuntimeEvent,
    RuntimeKind,
};
use crate::socket::client::ExecutorClient;

const MIB: u64 = 1024 * 1024;
/// Exit codes of a backend ended by SIGTERM (its handler exits 143) and by SIGKILL.
const EXIT_SIGTERM: i32 = 143;
const EXIT_SIGKILL: i32 = 137;
const HTTP_READY: Duration = Duration::from_secs(10);

// Scripted behaviours, set for the test backend and the mock alike; each ignores the other's.
fn ignoring_sigterm() -> Vec<(&'static str, String)> {
    vec![("TEST_BACKEND_IGNORE_SIGTERM", "1".into()), ("HANGAR_MOCK_IGNORE_SIGTERM", "1".into())]
}

fn exiting(code: i32, after_ms: u64) -> Vec<(&'static str, String)> {
    vec![
        ("TEST_BACKEND_EXIT_AFTER_MS", after_ms.to_string()),
        ("TEST_BACKEND_EXIT_CODE", code.to_string()),
        ("HANGAR_MOCK_EXIT_AFTER_MS", after_ms.to_string()),
        ("HANGAR_MOCK_EXIT_CODE", code.to_string()),
    ]
}

fn slow_start(ms: u64) -> Vec<(&'static str, String)> {
    vec![("TEST_BACKEND_START_DELAY_MS", ms.to_string()), ("HANGAR_MOCK_START_DELAY_MS", ms.to_string())]
}

fn running_out_of_memory() -> Vec<(&'static str, String)> {
    vec![("TEST_BACKEND_OOM", "1".into()), ("HANGAR_MOCK_OOM", "1".into())]
}

/// Reads events until `done` holds for what was read, or fails after `timeout`.
async fn read_events_until(
    stream: &mut EventStream,
    timeout: Duration,
    mut done: impl FnMut(&[RuntimeEvent]) -> bool,
) -> Vec<RuntimeEvent> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(&seen) {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(event))) => seen.push(event),
            Ok(Some(Err(err))) => panic!("event stream failed: {err}; read so far: {seen:?}"),
            Ok(None) => panic!("event stream ended; read so far: {seen:?}"),
            Err(_) => panic!("timed out waiting for events; read so far: {seen:?}"),
        }
    }
    seen
}

/// Whether the main process of `container` has a SIGTERM handler, by the SigCgt mask of its
/// `/proc/<pid>/status` (the engine runs on this host).
async fn container_handles_sigterm(docker: &bollard::Docker, container: &str) -> bool {
    let inspected = docker
        .inspect_container(container, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .expect("inspect the container");
    let Some(pid) = inspected.state.and_then(|state| state.pid).filter(|pid| *pid > 0) else { return false };
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    let caught = status.lines().find_map(|line| line.strip_prefix("SigCgt:"));
    let sigterm = 1u64 << (nix::sys::signal::Signal::SIGTERM as u32 - 1);
    caught.and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok()).is_some_and(|mask| mask & sigterm != 0)
}

async fn subscribe(h: &Subject) -> EventStream {
    let mut events = h.client().events().await.expect("watch events");
    let sync = events.next().await.expect("a first event").expect("no error");
    assert_eq!(sync.kind, EventKind::Sync, "every stream starts with SYNC");
    events
}

fn exited(events: &[RuntimeEvent], id: &str) -> bool {
    events.iter().any(|e| e.backend_id == id && matches!(e.kind, EventKind::Exited { .. }))
}

// ---------------------------------------------------------------------------------------------
// The cases.

pub async fn handshake_reports_runtime_and_refuses_another_major_version(h: &Subject) -> Outcome {
    let info = h.client().info();
    assert_eq!(info.protocol_major, hangar::executor::PROTOCOL_MAJOR);
    assert!(info.capabilities.contains(&Capability::Events));
    let conditions = h.client().status().await;
    assert!(conditions.iter().any(|c| c.kind == "RuntimeReachable" && c.status), "{conditions:?}");

    let refused = ExecutorClient::connect_with_protocol(&h.socket, "from-the-future", 2).await;
    match refused {
        Err(RuntimeError::VersionMismatch(message)) => assert!(message.contains("v2"), "{message}"),
        Err(other) => panic!("expected a version mismatch, got {other}"),
        Ok(_) => panic!("expected a version mismatch, the executor accepted major 2"),
    }
    Outcome::Passed
}

pub async fn backend_lifecycle_runs_from_start_to_removal(h: &Subject) -> Outcome {
    let spec = h.spec("life", vec![]);
    let id = spec.backend_id.clone();
    let begun = Instant::now();
    let started = h.client().start(spec).await.expect("start");
    eprintln!("{} start returned an address in {:?}", h.kind, begun.elapsed());
    assert!(!started.runtime_id.is_empty());
    let info = h.client().inspect(&id).await.expect("inspect");
    assert_eq!(info.state, BackendState::Running);
    assert_eq!(info.address, started.address);
    assert!(info.started_at.is_some());
    // Serving means its SIGTERM handler is in place.
    wait_for_http(&started.address, "/", HTTP_READY).await;

    let begun = Instant::now();
    h.client().stop(&id, Duration::from_secs(5)).await.expect("stop");
    eprintln!("{} stop (SIGTERM honoured) took {:?}", h.kind, begun.elapsed());
    let info = h.client().inspect(&id).await.expect("inspect after stop");
    assert_eq!(info.state, BackendState::Exited);
    assert_eq!(info.exit_code, Some(EXIT_SIGTERM));
    assert!(info.finished_at.is_some());
    assert!(!info.oom_killed);

    h.client().remove(&id).await.expect("remove");
    match h.client().inspect(&id).await {
        Err(RuntimeError::BackendNotFound(missing)) => assert_eq!(missing, id),
        other => panic!("expected BACKEND_NOT_FOUND after remove, got {other:?}"),
    }
    assert!(!h.client().list().await.unwrap().iter().any(|b| b.backend_id == id));
    Outcome::Passed
}

pub async fn stop_remove_and_start_are_idempotent(h: &Subject) -> Outcome {
    let missing = h.id("never-started");
    h.client().stop(&missing, Duration::from_secs(1)).await.expect("stopping a missing backend is OK");
    h.client().remove(&missing).await.expect("removing a missing backend is OK");

    let spec = h.spec("twice", vec![]);
    let id = spec.backend_id.clone();
    let first = h.client().start(spec.clone()).await.expect("start");
    let second = h.client().start(spec).await.expect("start again");
    assert_eq!(first, second, "a retried start returns the same result");
    assert_eq!(h.client().list().await.unwrap().iter().filter(|b| b.backend_id == id).count(), 1);

    wait_for_http(&first.address, "/", HTTP_READY).await;
    h.client().stop(&id, Duration::from_secs(5)).await.expect("stop");
    h.client().stop(&id, Duration::from_secs(5)).await.expect("stopping a stopped backend is OK");
    assert_eq!(h.client().inspect(&id).await.unwrap().exit_code, Some(EXIT_SIGTERM));
    h.client().remove(&id).await.expect("remove");
    h.client().remove(&id).await.expect("removing twice is OK");
    Outcome::Passed
}

pub async fn stop_kills_backend_that_ignores_sigterm_after_grace(h: &Subject) -> Outcome {
    let spec = h.spec("stubborn", ignoring_sigterm());
    let id = spec.backend_id.clone();
    let started = h.client().start(spec).await.expect("start");
    wait_for_http(&started.address, "/", HTTP_READY).await;

    // The look during the grace leaves two seconds of margin for a busy machine.
    let grace = Duration::from_secs(3);
    let begun = Instant::now();
    let (stopped, during_grace) = tokio::join!(h.client().stop(&id, grace), async {
        // A look one second into the grace, for a kill that must not have happened yet.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        h.client().inspect(&id).await
    });
    let elapsed = begun.elapsed();
    stopped.expect("stop");
    let during_grace = during_grace.expect("inspect during the grace period");
    assert_eq!(during_grace.state, BackendState::Running, "SIGTERM was ignored, so it still runs during the grace");
    assert!(elapsed >= grace - Duration::from_millis(100), "killed before the grace period ended: {elapsed:?}");
    assert!(elapsed < grace + Duration::from_secs(8), "the kill came far too late: {elapsed:?}");
    let info = h.client().inspect(&id).await.unwrap();
    assert_eq!(info.state, BackendState::Exited);
    assert_eq!(info.exit_code, Some(EXIT_SIGKILL));
    Outcome::Passed
}

pub async fn exit_code_is_reported_in_inspect_and_events(h: &Subject) -> Outcome {
    let mut events = subscribe(h).await;
    let spec = h.spec("exits", exiting(7, 300));
    let id = spec.backend_id.clone();
    h.client().start(spec).await.expect("start");
    let seen = read_events_until(&mut events, Duration::from_secs(20), |e| exited(e, &id)).await;
    let mine: Vec<&RuntimeEvent> = seen.iter().filter(|e| e.backend_id == id).collect();
    assert_eq!(mine[0].kind, EventKind::Started, "STARTED comes first: {mine:?}");
    assert_eq!(mine.last().unwrap().kind, EventKind::Exited { exit_code: Some(7) });
    let info = h.client().inspect(&id).await.unwrap();
    assert_eq!(info.state, BackendState::Exited);
    assert_eq!(info.exit_code, Some(7));
    Outcome::Passed
}

pub async fn oom_kill_is_reported_where_supported(h: &Subject) -> Outcome {
    if !h.client().capabilities().contains(&Capability::OomReporting) {
        // A runtime without cgroups (process) says so instead of guessing.
        return Outcome::Skipped(format!("the {} runtime does not advertise OOM_REPORTING", h.kind));
    }
    let mut events = subscribe(h).await;
    let mut spec = h.spec("hungry", running_out_of_memory());
    spec.resources = ResourceLimits { memory_bytes: 32 * MIB, ..Default::default() };
    let id = spec.backend_id.clone();
    h.client().start(spec).await.expect("start");
    let seen = read_events_until(&mut events, Duration::from_secs(30), |e| exited(e, &id)).await;
    let kinds: Vec<EventKind> = seen.iter().filter(|e| e.backend_id == id).map(|e| e.kind.clone()).collect();
    assert!(kinds.contains(&EventKind::Oom), "an OOM event: {kinds:?}");
    assert_eq!(kinds.last(), Some(&EventKind::Exited { exit_code: Some(EXIT_SIGKILL) }), "{kinds:?}");
    let info = h.client().inspect(&id).await.unwrap();
    assert!(info.oom_killed, "inspect says OOM killed: {info:?}");
    assert_eq!(info.exit_code, Some(EXIT_SIGKILL));
    Outcome::Passed
}

pub async fn burst_of_backends_gives_one_started_and_one_exited_each(h: &Subject) -> Outcome {
    let Burst { count, parallel } = h.burst;
    let mut events = subscribe(h).await;
    let ids: Vec<String> = (0..count).map(|i| h.id(&format!("burst-{i}"))).collect();
    let begun = Instant::now();
    let starts = futures::stream::iter(0..count)
        .map(|i| h.client().start(h.spec(&format!("burst-{i}"), vec![])))
        .buffer_unordered(parallel)
        .collect::<Vec<_>>()
        .await;
    for started in starts {
        started.expect("start in the burst");
    }
    let start_time = begun.elapsed();
    let stops = futures::stream::iter(ids.iter())
        .map(|id| h.client().stop(id, Duration::from_secs(5)))
        .buffer_unordered(parallel)
        .collect::<Vec<_>>()
        .await;
    for stopped in stops {
        stopped.expect("stop in the burst");
    }
    let stop_time = begun.elapsed() - start_time;
    // Figures for the record, not assertions: timing depends on the machine.
    eprintln!(
        "{} burst: {count} backends ({parallel} at a time) started in {start_time:?}, stopped in {stop_time:?}",
        h.kind
    );
    let wanted: std::collections::HashSet<&String> = ids.iter().collect();
    let seen = read_events_until(&mut events, Duration::from_secs(60), |seen| {
        seen.iter().filter(|e| wanted.contains(&e.backend_id) && matches!(e.kind, EventKind::Exited { .. })).count()
            >= count
    })
    .await;
    for pair in seen.windows(2) {
        assert!(pair[1].sequence > pair[0].sequence, "sequences increase: {pair:?}");
    }
    let mut per_backend: HashMap<&str, Vec<(u64, EventKind)>> = HashMap::new();
    for event in &seen {
        per_backend.entry(event.backend_id.as_str()).or_default().push((event.sequence, event.kind.clone()));
    }
    for id in &ids {
        let events = per_backend.get(id.as_str()).unwrap_or_else(|| panic!("no events for {id}"));
        let started: Vec<u64> = events.iter().filter(|(_, k)| *k == EventKind::Started).map(|(s, _)| *s).collect();
        let exits: Vec<u64> =
            events.iter().filter(|(_, k)| matches!(k, EventKind::Exited { .. })).map(|(s, _)| *s).collect();
        assert_eq!(started.len(), 1, "{id}: exactly one STARTED: {events:?}");
        assert_eq!(exits.len(), 1, "{id}: exactly one EXITED: {events:?}");
        assert!(started[0] < exits[0], "{id}: STARTED before EXITED: {events:?}");
    }
    let removes = futures::stream::iter(ids.iter())
        .map(|id| h.client().remove(id))
        .buffer_unordered(parallel)
        .collect::<Vec<_>>()
        .await;
    for removed in removes {
        removed.expect("remove in the burst");
    }
    Outcome::Passed
}

pub async fn stats_stream_reports_cumulative_counters(h: &Subject) -> Outcome {
    let mut spec = h.spec("measured", vec![]);
    spec.resources = ResourceLimits { memory_bytes: 256 * MIB, ..Default::default() };
    let id = spec.backend_id.clone();
    let started = h.client().start(spec).await.expect("start");
    wait_for_http(&started.address, "/", HTTP_READY).await;
    let mut stats = h.client().stats(&id, Duration::from_millis(200)).await.expect("stats");
    let first = tokio::time::timeout(Duration::from_secs(10), stats.next()).await.unwrap().unwrap().unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), stats.next()).await.unwrap().unwrap().unwrap();
    assert!(second.time > first.time);
    assert!(second.cpu_total_ns >= first.cpu_total_ns, "cumulative CPU never goes back: {first:?} {second:?}");
    assert!(second.memory_used_bytes > 0, "{second:?}");
    assert!(second.pids >= 1, "{second:?}");
    if h.client().capabilities().contains(&Capability::ResourceLimits) {
        assert_eq!(second.memory_limit_bytes, 256 * MIB);
    }
    h.client().stop(&id, Duration::ZERO).await.expect("stop");
    // The stream ends once the backend is gone.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(item) = stats.next().await {
            item.expect("stats sample");
        }
    })
    .await;
    assert!(end.is_ok(), "the stats stream ends after the backend exits");
    match h.client().stats(&h.id("nobody"), Duration::from_secs(1)).await {
        Err(RuntimeError::BackendNotFound(_)) => {}
        Err(other) => panic!("stats of a missing backend: {other}"),
        Ok(_) => panic!("stats of a missing backend should be NOT_FOUND"),
    }
    Outcome::Passed
}

pub async fn resource_limits_are_applied_where_supported(h: &Subject) -> Outcome {
    if !h.client().capabilities().contains(&Capability::ResourceLimits) {
        return Outcome::Skipped(format!("the {} runtime does not advertise RESOURCE_LIMITS", h.kind));
    }
    let mut spec = h.spec("limited", vec![]);
    spec.resources = ResourceLimits { cpu_millis: 500, memory_bytes: 128 * MIB, pids: 64 };
    let id = spec.backend_id.clone();
    h.client().start(spec).await.expect("start");
    if let Some(docker) = &h.docker {
        let containers = docker
            .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([("label".to_string(), vec![format!("hangar.backend-id={id}")])])),
                ..Default::default()
            }))
            .await
            .unwrap();
        assert_eq!(containers.len(), 1, "one container carries the backend id label");
        let container = docker
            .inspect_container(
                containers[0].id.as_deref().unwrap(),
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .unwrap();
        let host = container.host_config.unwrap();
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.memory, Some((128 * MIB) as i64));
        assert_eq!(host.pids_limit, Some(64));
        let labels = container.config.unwrap().labels.unwrap();
        assert_eq!(labels.get("hangar.managed").map(String::as_str), Some("true"));
    }
    let mut stats = h.client().stats(&id, Duration::from_millis(200)).await.expect("stats");
    let sample = tokio::time::timeout(Duration::from_secs(10), stats.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(sample.memory_limit_bytes, 128 * MIB, "the memory limit is in force");
    Outcome::Passed
}

pub async fn host_address_accepts_tcp_and_answers_http(h: &Subject) -> Outcome {
    let spec = h.spec("web", vec![]);
    let id = spec.backend_id.clone();
    let started = h.client().start(spec).await.expect("start");
    let (status, body) = wait_for_http(&started.address, "/", HTTP_READY).await;
    assert_eq!(status, 200);
    assert!(body.contains(&id), "the answer names the backend: {body:?}");
    if h.kind != RuntimeKind::Mock {
        let (_, env) = wait_for_http(&started.address, "/env", HTTP_READY).await;
        let host_port = started.address.rsplit(':').next().unwrap();
        let expected_port = if h.kind == RuntimeKind::Docker { "8080" } else { host_port };
        assert!(env.lines().any(|l| l == format!("PORT={expected_port}")), "PORT matches the assigned port: {env}");
        assert!(env.lines().any(|l| l == format!("HANGAR_BACKEND_ID={id}")), "env passes through: {env}");
        assert!(env.lines().any(|l| l == "HANGAR_FENCING_TOKEN=7"), "env passes through: {env}");
    }
    Outcome::Passed
}

pub async fn command_overrides_the_entrypoint_and_args_override_cmd(h: &Subject) -> Outcome {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let (entry, other) = (h.entrypoint.as_str(), h.other_program.as_str());
    // (case, command, args, the backend's argv)
    let cases = [
        ("defaults", vec![], vec![], vec![entry]),
        ("args", vec![], vec!["from-args", "two words"], vec![entry, "from-args", "two words"]),
        ("command", vec![other, "from-command"], vec![], vec![other, "from-command"]),
        ("both", vec![other, "from-command"], vec!["from-args"], vec![other, "from-command", "from-args"]),
    ];
    for (case, command, args, expected) in cases {
        let mut spec = h.spec(&format!("argv-{case}"), vec![]);
        let id = spec.backend_id.clone();
        spec.command = strings(&command);
        spec.args = strings(&args);
        let started = h.client().start(spec).await.unwrap_or_else(|err| panic!("{case}: start: {err}"));
        let (status, body) = wait_for_http(&started.address, "/argv", HTTP_READY).await;
        assert_eq!(status, 200, "{case}: {body}");
        assert_eq!(
            body.lines().collect::<Vec<_>>(),
            expected,
            "{}: {case}: command {command:?}, args {args:?}",
            h.kind
        );
        h.client().remove(&id).await.expect("remove");
    }
    Outcome::Passed
}

pub async fn missing_image_fails_with_image_not_found(h: &Subject) -> Outcome {
    for policy in [PullPolicy::Never, PullPolicy::IfNotPresent] {
        match h.client().prepare_image(&h.missing_image, policy).await {
            Err(RuntimeError::ImageNotFound { image, .. }) => assert_eq!(image, h.missing_image),
            other => panic!("{policy:?} on a missing image: expected IMAGE_NOT_FOUND, got {other:?}"),
        }
    }
    match h.client().prepare_image(&h.missing_image, PullPolicy::Always).await {
        Err(RuntimeError::ImagePullFailed { image, .. }) => assert_eq!(image, h.missing_image),
        other => panic!("ALWAYS on an unpullable image: expected IMAGE_PULL_FAILED, got {other:?}"),
    }
    let mut spec = h.spec("imageless", vec![]);
    spec.image = h.missing_image.clone();
    match h.client().start(spec).await {
        Err(RuntimeError::ImageNotFound { image, .. }) => assert_eq!(image, h.missing_image),
        other => panic!("starting from a missing image: expected IMAGE_NOT_FOUND, got {other:?}"),
    }
    assert!(h.client().inspect(&h.id("imageless")).await.is_err(), "nothing was left behind");
    let ready = h.client().prepare_image(&h.image, PullPolicy::IfNotPresent).await.expect("present image");
    assert!(!ready.pulled);
    assert!(!ready.image_id.is_empty());
    Outcome::Passed
}

pub async fn stop_during_slow_start_leaves_backend_exited(h: &Subject) -> Outcome {
    let spec = h.spec("slow", slow_start(3000));
    let id = spec.backend_id.clone();
    let begun = Instant::now();
    let (started, stopped) = tokio::join!(h.client().start(spec.clone()), async {
        // Stopped as soon as the backend is in its slow start. A stop before the runtime knows
        // the backend would find nothing to stop and leave the start to finish; one that
        // reaches a container before its process handles SIGTERM is ignored (that process is
        // the container's PID 1) until the grace runs out.
        let known = eventually(Duration::from_secs(5), "the runtime to know the starting backend", async || {
            h.client().inspect(&id).await
        })
        .await;
        if let Some(docker) = &h.docker {
            eventually(Duration::from_secs(5), "the container's process to handle SIGTERM", async || {
                container_handles_sigterm(docker, &known.runtime_id).await
            })
            .await;
        }
        h.client().stop(&id, Duration::from_secs(2)).await
    });
    stopped.expect("a stop during the start succeeds");
    match &started {
        Ok(_) => {}
        Err(RuntimeError::StoppedWhileStarting(stopped_id)) => assert_eq!(stopped_id, &id),
        Err(other) => panic!("start during which a stop came: {other}"),
    }
    assert!(begun.elapsed() < Duration::from_secs(8), "neither call hangs: {:?}", begun.elapsed());
    let info = h.client().inspect(&id).await.expect("inspect");
    assert_eq!(info.state, BackendState::Exited, "{info:?}");
    if started.is_ok() {
        // It really ran (slowly) and was terminated, not left behind.
        assert_eq!(info.exit_code, Some(EXIT_SIGTERM));
    } else {
        // Aborted before it ran: the stop cut the 3 s start short, and a retry says the same.
        assert!(begun.elapsed() < Duration::from_millis(2500));
        assert!(matches!(h.client().start(spec).await, Err(RuntimeError::StoppedWhileStarting(_))));
    }
    Outcome::Passed
}
