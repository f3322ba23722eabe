//! The runtime conformance suite (docs/design/executor-protocol.md#conformance): every promise of
//! `hangar.executor.v1`, checked through a real socket against any executor, like the CRI's
//! `critest`. `hangar-drone conformance --socket PATH` runs it against whatever serves PATH
//! ([`command`]); this crate's tests run the same cases against its docker, process and mock
//! runtimes (`executor/tests/conformance.rs`).
//!
//! The backends it starts run the test backend (`tests/backend`, `hangar-test-backend`), which
//! the cases script through `TEST_BACKEND_*` variables and ask for its argv and environment over
//! HTTP; the mock runtime reads the same scripts as `HANGAR_MOCK_*`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::LocalBoxFuture;

use crate::runtime::{BackendSpec, Runtime, RuntimeError, RuntimeKind};
use crate::socket::client::ExecutorClient;

pub mod cases;
pub mod command;

/// What a case found, when it did not fail (a failure panics with what it saw).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// The executor does not advertise the capability the case checks.
    Skipped(String),
}

/// How many backends the burst case starts, and how many at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Burst {
    pub count: usize,
    pub parallel: usize,
}

impl Burst {
    /// Docker starts containers at a few per second on two cores, so it gets a smaller burst; the
    /// process and mock runtimes take 200.
    pub fn for_kind(kind: RuntimeKind) -> Self {
        match kind {
            RuntimeKind::Docker => Burst { count: 30, parallel: 6 },
            RuntimeKind::Process | RuntimeKind::Mock => Burst { count: 200, parallel: 32 },
        }
    }
}

/// What the suite runs backends from. Only `image` is needed; the rest default by the runtime
/// kind the executor reports in its handshake.
#[derive(Clone, Debug, Default)]
pub struct Images {
    /// An image (for process runtimes: the path of an executable) that runs the test backend.
    pub image: String,
    /// An image the executor does not have and cannot obtain.
    pub missing_image: Option<String>,
    /// argv[0] of a backend started from `image` without a `command`.
    pub entrypoint: Option<String>,
    /// A program name that also runs the test backend, for the case where `command` replaces the
    /// entrypoint. For a process runtime without one, the suite links `image` under another name.
    pub other_program: Option<String>,
    pub burst: Option<Burst>,
}

/// An executor under test: its socket, a handshaken client, and the images to use.
pub struct Subject {
    pub socket: PathBuf,
    pub client: ExecutorClient,
    pub kind: RuntimeKind,
    pub image: String,
    pub missing_image: String,
    pub entrypoint: String,
    pub other_program: String,
    pub burst: Burst,
    /// The Docker engine the executor uses, when its runtime is docker and the engine answers
    /// here too: cases then also check what the engine was told (limits, labels).
    pub docker: Option<bollard::Docker>,
    /// Every backend id of this run starts with it, so a run never touches other backends.
    prefix: String,
    _programs: Option<tempfile::TempDir>,
}

impl Subject {
    /// Connects and handshakes with the executor on `socket`.
    pub async fn connect(socket: &Path, images: Images) -> Result<Self, RuntimeError> {
        let client = ExecutorClient::connect(socket, "hangar-conformance").await?;
        let kind = client.info().kind;
        let image = images.image;
        let entrypoint = images.entrypoint.unwrap_or_else(|| match kind {
            RuntimeKind::Docker => "/hangar-test-backend".into(),
            RuntimeKind::Process | RuntimeKind::Mock => image.clone(),
        });
        let mut programs = None;
        let other_program = match (images.other_program, kind) {
            (Some(program), _) => program,
            (None, RuntimeKind::Docker) => entrypoint.clone(),
            (None, RuntimeKind::Mock) => "/opt/mock/another-program".into(),
            (None, RuntimeKind::Process) => {
                let dir = tempfile::Builder::new()
                    .prefix("hangar-conformance")
                    .tempdir()
                    .map_err(|err| RuntimeError::internal(format!("a directory for another program name: {err}")))?;
                let other = dir.path().join("another-program");
                std::os::unix::fs::symlink(&image, &other)
                    .map_err(|err| RuntimeError::internal(format!("linking {image} under another name: {err}")))?;
                programs = Some(dir);
                other.display().to_string()
            }
        };
        let missing_image = images.missing_image.unwrap_or_else(|| match kind {
            RuntimeKind::Docker => "hangar-missing.invalid/missing:0".into(),
            RuntimeKind::Process | RuntimeKind::Mock => "/nonexistent/hangar-missing".into(),
        });
        let docker = match kind {
            RuntimeKind::Docker => bollard::Docker::connect_with_local_defaults().ok(),
            _ => None,
        };
        Ok(Subject {
            socket: socket.to_path_buf(),
            client,
            kind,
            image,
            missing_image,
            entrypoint,
            other_program,
            burst: images.burst.unwrap_or(Burst::for_kind(kind)),
            docker,
            prefix: format!("conf-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            _programs: programs,
        })
    }

    pub fn client(&self) -> &ExecutorClient {
        &self.client
    }

    /// The backend id of `name` in this run.
    pub fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// A spec with the environment the drone would compute
    /// (docs/design/backends-and-leases.md#environment-of-a-backend) plus `extra`.
    pub fn spec(&self, name: &str, extra: Vec<(&str, String)>) -> BackendSpec {
        let backend_id = self.id(name);
        let mut env: BTreeMap<String, String> = [
            ("HANGAR_BACKEND_ID", backend_id.clone()),
            ("HANGAR_BACKEND_KEY", format!("key-{name}")),
            ("HANGAR_FENCING_TOKEN", "7".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
        BackendSpec { backend_id, image: self.image.clone(), env, ..Default::default() }
    }

    /// Removes every backend of this run that the executor still lists (a failed case leaves
    /// them behind); returns how many.
    pub async fn clean_up(&self) -> Result<usize, RuntimeError> {
        let mine: Vec<String> = self
            .client
            .list()
            .await?
            .into_iter()
            .map(|b| b.backend_id)
            .filter(|id| id.starts_with(&self.prefix))
            .collect();
        for id in &mine {
            self.client.stop(id, Duration::ZERO).await?;
            self.client.remove(id).await?;
        }
        Ok(mine.len())
    }
}

/// One case of the suite.
pub struct Case {
    pub name: &'static str,
    pub run: fn(Arc<Subject>) -> LocalBoxFuture<'static, Outcome>,
}

/// Calls `$callback!` with the suite's case names, in the order the suite runs them:
/// `conformance_cases!(my_macro!(args,))` expands to `my_macro!(args, [case_a, case_b, …])`.
/// The one list of cases: the library's [`CASES`] and the crate's tests (which run every case
/// against each runtime) are both made from it, so a case cannot be in one and not the other.
#[macro_export]
macro_rules! conformance_cases {
    ($callback:ident!($($prefix:tt)*)) => {
        $callback! {$($prefix)* [
            handshake_reports_runtime_and_refuses_another_major_version,
            backend_lifecycle_runs_from_start_to_removal,
            stop_remove_and_start_are_idempotent,
            stop_kills_backend_that_ignores_sigterm_after_grace,
            exit_code_is_reported_in_inspect_and_events,
            oom_kill_is_reported_where_supported,
            burst_of_backends_gives_one_started_and_one_exited_each,
            stats_stream_reports_cumulative_counters,
            resource_limits_are_applied_where_supported,
            host_address_accepts_tcp_and_answers_http,
            command_overrides_the_entrypoint_and_args_override_cmd,
            missing_image_fails_with_image_not_found,
            stop_during_slow_start_leaves_backend_exited,
        ]}
    };
}

macro_rules! suite {
    ([$($case:ident),* $(,)?]) => {
        /// Every case, in the order `hangar-drone conformance` runs them.
        pub const CASES: &[Case] = &[$(
            Case { name: stringify!($case), run: |subject| Box::pin(async move { cases::$case(&subject).await }) },
        )*];
    };
}

conformance_cases!(suite!());

/// One HTTP/1.1 GET on `address` (`host:port`); the status code and body. Std-only on purpose:
/// the suite checks the backend, not an HTTP client.
pub async fn http_get(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Waits until the backend answers HTTP (a backend needs a moment to bind after its start
/// returned); panics with the last error once `within` has passed.
pub async fn wait_for_http(address: &str, path: &str, within: Duration) -> (u16, String) {
    let what = format!("an HTTP answer from {address}{path}");
    hangar_testkit::eventually(within, &what, async || match http_get(address, path).await {
        Ok(answer) if answer.0 != 0 => Ok(answer),
        Ok(answer) => Err(format!("no status line: {answer:?}")),
        Err(err) => Err(err.to_string()),
    })
    .await
}
