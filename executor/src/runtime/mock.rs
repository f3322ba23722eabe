//! The mock runtime: no processes, scripted per backend through its environment (in the spirit
//! of Nomad's mock driver), but a real TCP listener at the address it hands out, so "the address
//! accepts a connection" holds for it too.
//!
//! Script (environment variables of the spec):
//! - `HANGAR_MOCK_START_FAIL=message`: the start fails with that message.
//! - `HANGAR_MOCK_START_DELAY_MS=N`: the start blocks N ms (a stop meanwhile aborts it).
//! - `HANGAR_MOCK_EXIT_AFTER_MS=N`, `HANGAR_MOCK_EXIT_CODE=C` (default 0): exits on its own.
//! - `HANGAR_MOCK_IGNORE_SIGTERM=1`: a stop with a grace period waits it out, then kills (137).
//! - `HANGAR_MOCK_OOM=1`, `HANGAR_MOCK_OOM_AFTER_MS=N` (default 50): killed by the OOM killer.
//! - `HANGAR_MOCK_CRASH_EXECUTOR=1`: the executor process dies (SIGKILL to itself) on start,
//!   when the runtime was built with [`MockRuntime::allowing_executor_crash`].
//!
//! Images whose reference contains `missing` are absent; every other image is present.
//!
//! Its address answers every request with `hangar-mock-backend <id>`, except `GET /argv`: the
//! command line the backend would run ([`BackendSpec::argv`]: the image stands for a program
//! with no arguments of its own), one argument per line, as the test backend answers it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::locks::BackendLocks;
use super::{
    BackendInfo, BackendSpec, BackendState, Capability, Condition, EventHub, EventStream, ImageReady, PullPolicy,
    Runtime, RuntimeError, RuntimeKind, Started, Stats, StatsStream,
};

pub const ENV_START_FAIL: &str = "HANGAR_MOCK_START_FAIL";
pub const ENV_START_DELAY_MS: &str = "HANGAR_MOCK_START_DELAY_MS";
pub const ENV_EXIT_AFTER_MS: &str = "HANGAR_MOCK_EXIT_AFTER_MS";
pub const ENV_EXIT_CODE: &str = "HANGAR_MOCK_EXIT_CODE";
pub const ENV_IGNORE_SIGTERM: &str = "HANGAR_MOCK_IGNORE_SIGTERM";
pub const ENV_OOM: &str = "HANGAR_MOCK_OOM";
pub const ENV_OOM_AFTER_MS: &str = "HANGAR_MOCK_OOM_AFTER_MS";
pub const ENV_CRASH_EXECUTOR: &str = "HANGAR_MOCK_CRASH_EXECUTOR";

/// Exit codes of a process killed by SIGTERM and SIGKILL, as Docker and shells report them.
const EXIT_SIGTERM: i32 = 143;
const EXIT_SIGKILL: i32 = 137;

struct MockBackend {
    spec: BackendSpec,
    runtime_id: String,
    state: BackendState,
    address: String,
    exit_code: Option<i32>,
    oom_killed: bool,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    /// Cancelled when the backend stops: ends its listener, its script timers and a pending start.
    stopped: CancellationToken,
}

impl MockBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend_id: self.spec.backend_id.clone(),
            runtime_id: self.runtime_id.clone(),
            state: self.state,
            exit_code: self.exit_code,
            oom_killed: self.oom_killed,
            created_at: Some(self.created_at),
            started_at: self.started_at,
            finished_at: self.finished_at,
            address: self.address.clone(),
        }
    }

    fn flag(&self, name: &str) -> bool {
        self.spec.env.get(name).is_some_and(|v| v == "1" || v == "true")
    }
}

fn env_ms(spec: &BackendSpec, name: &str) -> Option<Duration> {
    spec.env.get(name).and_then(|v| v.parse().ok()).map(Duration::from_millis)
}

/// A scriptable runtime for tests.
pub struct MockRuntime {
    inner: Arc<MockInner>,
}

struct MockInner {
    hub: EventHub,
    backends: Mutex<HashMap<String, MockBackend>>,
    locks: BackendLocks,
    next_id: std::sync::atomic::AtomicU64,
    allow_executor_crash: bool,
    /// Owns listeners and script timers.
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Default for MockRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl MockRuntime {
    pub fn new() -> Self {
        Self::build(false)
    }

    /// A mock that obeys `HANGAR_MOCK_CRASH_EXECUTOR` — only for the `hangar-drone executor`
    /// process, never inside a test process.
    pub fn allowing_executor_crash() -> Self {
        Self::build(true)
    }

    /// A mock whose event readers may lag by at most `buffer` events (tests of slow readers).
    pub fn with_event_buffer(buffer: usize) -> Self {
        Self::build_with(false, EventHub::new(buffer))
    }

    fn build(allow_executor_crash: bool) -> Self {
        Self::build_with(allow_executor_crash, EventHub::default())
    }

    fn build_with(allow_executor_crash: bool, hub: EventHub) -> Self {
        MockRuntime {
            inner: Arc::new(MockInner {
                hub,
                backends: Mutex::new(HashMap::new()),
                locks: BackendLocks::default(),
                next_id: 1.into(),
                allow_executor_crash,
                tasks: TaskTracker::new(),
                cancel: CancellationToken::new(),
            }),
        }
    }
}

impl MockInner {
    /// The backend ends with `code`; a no-op unless it is running.
    fn finish(&self, backend_id: &str, code: i32, oom: bool) {
        let mut backends = self.backends.lock().unwrap();
        let Some(backend) = backends.get_mut(backend_id) else { return };
        if backend.state != BackendState::Running {
            return;
        }
        backend.state = BackendState::Exited;
        backend.exit_code = Some(code);
        backend.oom_killed = oom;
        backend.finished_at = Some(Utc::now());
        backend.stopped.cancel();
        self.hub.exited(backend_id, Some(code), oom);
    }

    fn spawn_timer(
        self: &Arc<Self>,
        backend_id: String,
        after: Duration,
        stopped: CancellationToken,
        code: i32,
        oom: bool,
    ) {
        let inner = self.clone();
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(after) => inner.finish(&backend_id, code, oom),
                _ = stopped.cancelled() => {}
                _ = cancel.cancelled() => {}
            }
        });
    }

    fn spawn_listener(&self, spec: &BackendSpec, listener: tokio::net::TcpListener, stopped: CancellationToken) {
        let cancel = self.cancel.clone();
        let greeting = format!("hangar-mock-backend {}\n", spec.backend_id);
        let argv: String = spec.argv().iter().map(|arg| format!("{arg}\n")).collect();
        self.tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stopped.cancelled() => return,
                    _ = cancel.cancelled() => return,
                };
                let Ok((mut conn, _)) = accepted else { continue };
                // Connections are answered inline: one tiny response, bounded by a timeout.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    let mut buf = [0u8; 1024];
                    let read = conn.read(&mut buf).await.unwrap_or(0);
                    let body = if buf[..read].starts_with(b"GET /argv ") { &argv } else { &greeting };
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                })
                .await;
            }
        });
    }
}

#[async_trait]
impl Runtime for MockRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Mock
    }

    fn capabilities(&self) -> Vec<Capability> {
        vec![
            Capability::PrepareImage,
            Capability::Stats,
            Capability::Events,
            Capability::ResourceLimits,
            Capability::OomReporting,
        ]
    }

    async fn status(&self) -> Vec<Condition> {
        vec![
            Condition::new("RuntimeReachable", true, "Mock", "scripted mock runtime"),
            Condition::new("RuntimeReady", true, "Mock", ""),
        ]
    }

    async fn prepare_image(&self, image: &str, policy: PullPolicy) -> Result<ImageReady, RuntimeError> {
        let missing = image.contains("missing");
        match (missing, policy) {
            (false, PullPolicy::Always) => Ok(ImageReady { image_id: format!("mock:{image}"), pulled: true }),
            (false, _) => Ok(ImageReady { image_id: format!("mock:{image}"), pulled: false }),
            (true, PullPolicy::Always) => Err(RuntimeError::ImagePullFailed {
                image: image.into(),
                message: "mock registry has no such image".into(),
            }),
            (true, _) => Err(RuntimeError::ImageNotFound { image: image.into(), message: "not present".into() }),
        }
    }

    async fn start(&self, spec: BackendSpec) -> Result<Started, RuntimeError> {
        spec.validate()?;
        let inner = &self.inner;
        let backend_id = spec.backend_id.clone();
        let _guard = inner.locks.lock(&backend_id).await;
        if let Some(existing) = inner.backends.lock().unwrap().get(&backend_id) {
            // A retry: the same answer as the first time.
            return match existing.started_at {
                Some(_) => Ok(Started { runtime_id: existing.runtime_id.clone(), address: existing.address.clone() }),
                None => Err(RuntimeError::StoppedWhileStarting(backend_id)),
            };
        }
        if spec.env.get(ENV_CRASH_EXECUTOR).is_some_and(|v| v == "1") {
            if inner.allow_executor_crash {
                tracing::warn!(backend_id, "{ENV_CRASH_EXECUTOR} set: the executor kills itself");
                let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
            }
            return Err(RuntimeError::Unsupported(format!("{ENV_CRASH_EXECUTOR} is disabled in this mock runtime")));
        }
        if spec.image.contains("missing") {
            return Err(RuntimeError::ImageNotFound { image: spec.image, message: "not present".into() });
        }
        if let Some(message) = spec.env.get(ENV_START_FAIL) {
            return Err(RuntimeError::StartFailed { backend_id, message: message.clone() });
        }
        let stopped = CancellationToken::new();
        let runtime_id = format!("mock-{}", inner.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        inner.backends.lock().unwrap().insert(
            backend_id.clone(),
            MockBackend {
                spec: spec.clone(),
                runtime_id: runtime_id.clone(),
                state: BackendState::Created,
                address: String::new(),
                exit_code: None,
                oom_killed: false,
                created_at: Utc::now(),
                started_at: None,
                finished_at: None,
                stopped: stopped.clone(),
            },
        );
        if let Some(delay) = env_ms(&spec, ENV_START_DELAY_MS) {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopped.cancelled() => return Err(RuntimeError::StoppedWhileStarting(backend_id)),
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(RuntimeError::internal)?;
        let address = listener.local_addr().map_err(RuntimeError::internal)?.to_string();
        {
            let mut backends = inner.backends.lock().unwrap();
            let backend =
                backends.get_mut(&backend_id).ok_or_else(|| RuntimeError::StoppedWhileStarting(backend_id.clone()))?;
            if backend.state != BackendState::Created {
                return Err(RuntimeError::StoppedWhileStarting(backend_id));
            }
            backend.state = BackendState::Running;
            backend.started_at = Some(Utc::now());
            backend.address = address.clone();
            inner.hub.started(&backend_id);
        }
        inner.spawn_listener(&spec, listener, stopped.clone());
        if spec.env.get(ENV_OOM).is_some_and(|v| v == "1") {
            let after = env_ms(&spec, ENV_OOM_AFTER_MS).unwrap_or(Duration::from_millis(50));
            inner.spawn_timer(backend_id.clone(), after, stopped.clone(), EXIT_SIGKILL, true);
        } else if let Some(after) = env_ms(&spec, ENV_EXIT_AFTER_MS) {
            let code = spec.env.get(ENV_EXIT_CODE).and_then(|v| v.parse().ok()).unwrap_or(0);
            inner.spawn_timer(backend_id.clone(), after, stopped, code, false);
        }
        Ok(Started { runtime_id, address })
    }

    async fn stop(&self, backend_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let inner = &self.inner;
        let ignores_sigterm = {
            let mut backends = inner.backends.lock().unwrap();
            let Some(backend) = backends.get_mut(backend_id) else { return Ok(()) };
            match backend.state {
                BackendState::Created => {
                    // A start is in flight: abort it; it never ran, so there is no exit code.
                    backend.state = BackendState::Exited;
                    backend.finished_at = Some(Utc::now());
                    backend.stopped.cancel();
                    return Ok(());
                }
                BackendState::Running => backend.flag(ENV_IGNORE_SIGTERM),
                BackendState::Exited | BackendState::Unknown => return Ok(()),
            }
        };
        if grace.is_zero() {
            inner.finish(backend_id, EXIT_SIGKILL, false);
        } else if ignores_sigterm {
            let stopped = inner.backends.lock().unwrap().get(backend_id).map(|b| b.stopped.clone());
            if let Some(stopped) = stopped {
                // Exiting on its own during the grace period ends the wait early.
                let _ = tokio::time::timeout(grace, stopped.cancelled()).await;
            }
            inner.finish(backend_id, EXIT_SIGKILL, false);
        } else {
            inner.finish(backend_id, EXIT_SIGTERM, false);
        }
        Ok(())
    }

    async fn remove(&self, backend_id: &str) -> Result<(), RuntimeError> {
        self.stop(backend_id, Duration::ZERO).await?;
        let _guard = self.inner.locks.lock(backend_id).await;
        if self.inner.backends.lock().unwrap().remove(backend_id).is_some() {
            self.inner.hub.removed(backend_id);
        }
        Ok(())
    }

    async fn inspect(&self, backend_id: &str) -> Result<BackendInfo, RuntimeError> {
        let backends = self.inner.backends.lock().unwrap();
        backends.get(backend_id).map(MockBackend::info).ok_or_else(|| RuntimeError::BackendNotFound(backend_id.into()))
    }

    async fn list(&self) -> Result<Vec<BackendInfo>, RuntimeError> {
        Ok(self.inner.backends.lock().unwrap().values().map(MockBackend::info).collect())
    }

    async fn events(&self) -> Result<EventStream, RuntimeError> {
        Ok(self.inner.hub.subscribe())
    }

    async fn stats(&self, backend_id: &str, interval: Duration) -> Result<StatsStream, RuntimeError> {
        let (stopped, limit) = {
            let backends = self.inner.backends.lock().unwrap();
            let backend = backends.get(backend_id).ok_or_else(|| RuntimeError::BackendNotFound(backend_id.into()))?;
            (backend.stopped.clone(), backend.spec.resources.memory_bytes)
        };
        let interval = interval.max(Duration::from_millis(10));
        let since = std::time::Instant::now();
        let stream = async_stream::stream! {
            let mut ticker = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopped.cancelled() => break,
                }
                // A mock backend "uses" one millisecond of CPU per second of wall time.
                yield Ok(Stats {
                    time: Utc::now(),
                    cpu_total_ns: since.elapsed().as_nanos() as u64 / 1000 + 1,
                    memory_used_bytes: 8 << 20,
                    memory_limit_bytes: limit,
                    pids: 1,
                    net_rx_bytes: 0,
                    net_tx_bytes: 0,
                });
            }
        };
        Ok(Box::pin(stream))
    }

    async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

impl Drop for MockRuntime {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
    }
}
