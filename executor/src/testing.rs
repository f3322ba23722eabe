//! Test support, behind the `testing` feature: the test backend binary and its Docker image,
//! built once per test run, an executor served on a temporary socket in one line, and a guard
//! that removes a test's containers even when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use tokio::sync::oneshot;

use crate::runtime::docker::{DockerOptions, DockerRuntime, LABEL_ROLE};
use crate::runtime::{LABEL_EXECUTOR, Runtime, RuntimeError};
use crate::socket::client::ExecutorClient;
use crate::socket::server::{self, ServerOptions};

/// Tag of the locally built test image (nothing can be pulled here).
pub const TEST_IMAGE: &str = "hangar-test-backend:dev";
/// Target triple the test backend is linked statically for.
const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("executor/ has a parent").to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

fn newest_source_mtime() -> std::time::SystemTime {
    let dir = workspace_root().join("tests/backend");
    ["Cargo.toml", "src/main.rs"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok())
        .max()
        .unwrap_or(std::time::UNIX_EPOCH)
}

/// The statically linked `hangar-test-backend`, built on first use in this process. Cargo's own
/// lock on the target directory makes concurrent builds from parallel test processes safe; an
/// up-to-date binary skips cargo altogether.
pub fn test_backend_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let binary = target_dir().join(STATIC_TARGET).join("release/hangar-test-backend");
        let fresh =
            std::fs::metadata(&binary).and_then(|m| m.modified()).is_ok_and(|built| built >= newest_source_mtime());
        if !fresh {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(workspace_root())
                .args(["build", "--release", "-p", "hangar-test-backend", "--target", STATIC_TARGET])
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env("CARGO_TARGET_DIR", target_dir())
                .status()
                .expect("run cargo to build hangar-test-backend");
            assert!(status.success(), "building hangar-test-backend failed");
        }
        binary
    })
}

fn digest(path: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).expect("read test backend binary");
    // SipHash with fixed keys: stable across processes, enough to tell two builds apart.
    let mut hasher = std::hash::DefaultHasher::new();
    bytes.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn docker_cli(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("run the docker CLI")
}

/// [`TEST_IMAGE`], built from the static test backend (`FROM scratch`) unless the engine already
/// has it for this exact binary. Race-safe across test processes: each builds under its own
/// temporary tag, then moves [`TEST_IMAGE`] onto the result (a tag move is atomic).
pub fn test_image() -> &'static str {
    static IMAGE: OnceLock<()> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let binary = test_backend_binary();
        let digest = digest(binary);
        let inspect = docker_cli(&[
            "image",
            "inspect",
            "--format",
            "{{ index .Config.Labels \"hangar.test-backend-digest\" }}",
            TEST_IMAGE,
        ]);
        if inspect.status.success() && String::from_utf8_lossy(&inspect.stdout).trim() == digest {
            return;
        }
        let context = tempfile::tempdir().expect("temporary build context");
        std::fs::copy(binary, context.path().join("hangar-test-backend")).expect("copy test backend");
        std::fs::write(
            context.path().join("Dockerfile"),
            "FROM scratch\nCOPY hangar-test-backend /hangar-test-backend\nENTRYPOINT [\"/hangar-test-backend\"]\n",
        )
        .expect("write Dockerfile");
        let temp_tag = format!("hangar-test-backend:build-{}-{}", std::process::id(), rand::random::<u32>());
        let label = format!("hangar.test-backend-digest={digest}");
        let build = Command::new("docker")
            .args(["build", "-q", "--label", &label, "-t", &temp_tag])
            .arg(context.path())
            // The classic builder needs no buildx plugin and works with old engines.
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .expect("run docker build");
        assert!(build.status.success(), "docker build failed: {}", String::from_utf8_lossy(&build.stderr));
        let tag = docker_cli(&["tag", &temp_tag, TEST_IMAGE]);
        assert!(tag.status.success(), "docker tag failed: {}", String::from_utf8_lossy(&tag.stderr));
        let _ = docker_cli(&["rmi", &temp_tag]);
    });
    TEST_IMAGE
}

/// Connects to the Docker engine for a test. Without an engine this prints a loud skip line and
/// returns `None` — unless `HANGAR_REQUIRE_DOCKER=1`, where it fails the test.
pub async fn docker_or_skip(test: &str, instance: &str) -> Option<DockerRuntime> {
    docker_or_skip_with(test, DockerOptions { instance: instance.to_string(), ..Default::default() }).await
}

/// [`docker_or_skip`] with explicit options.
pub async fn docker_or_skip_with(test: &str, options: DockerOptions) -> Option<DockerRuntime> {
    match DockerRuntime::connect(options).await {
        Ok(runtime) => Some(runtime),
        Err(err) => {
            if std::env::var("HANGAR_REQUIRE_DOCKER").as_deref() == Ok("1") {
                panic!("HANGAR_REQUIRE_DOCKER=1 but no Docker engine answers: {err}");
            }
            eprintln!(
                "!!!!!!!! SKIPPED {test}: no Docker engine answers ({err}); set HANGAR_REQUIRE_DOCKER=1 to fail instead !!!!!!!!"
            );
            None
        }
    }
}

/// Removes every container of one executor instance when dropped, also when the test panics.
pub struct ContainerCleanup {
    instance: String,
}

impl ContainerCleanup {
    pub fn new(instance: &str) -> Self {
        ContainerCleanup { instance: instance.to_string() }
    }
}

impl Drop for ContainerCleanup {
    /// Never panics (it may run while a panic unwinds): without a `docker` CLI there is nothing
    /// to remove.
    fn drop(&mut self) {
        let filter = format!("label={LABEL_EXECUTOR}={}", self.instance);
        let Ok(listed) = Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output() else { return };
        let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout).split_whitespace().map(String::from).collect();
        if !ids.is_empty() {
            eprintln!("removing {} container(s) of executor instance {}", ids.len(), self.instance);
            let _ = Command::new("docker").args(["rm", "-f"]).args(&ids).output();
        }
    }
}

/// A unique, short name for executor instances and backend ids in one test.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// An executor serving a runtime on a temporary socket, with a connected client.
pub struct TestExecutor {
    pub client: ExecutorClient,
    pub socket: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
    _dir: tempfile::TempDir,
}

impl TestExecutor {
    /// Serves `runtime` on a fresh socket (own uid allowed) and connects a client.
    pub async fn start(runtime: Arc<dyn Runtime>) -> Result<Self, RuntimeError> {
        let dir = tempfile::Builder::new().prefix("hx").tempdir().expect("temporary socket directory");
        // A subdirectory, so the server creates it 0700 itself (a temp dir may be 0755).
        let socket = dir.path().join("run/executor.sock");
        let (shutdown, server) = serve_on(&socket, runtime, ServerOptions::default());
        let client = ExecutorClient::connect(&socket, "conformance-test").await?;
        Ok(TestExecutor { client, socket, shutdown: Some(shutdown), server: Some(server), _dir: dir })
    }

    /// Graceful shutdown: streams end, the runtime shuts down, the socket file goes away.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server");
        }
    }
}

impl Drop for TestExecutor {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

/// Binds `socket` and serves `runtime` on it in a task; send on the returned sender to stop.
pub fn serve_on(
    socket: &Path,
    runtime: Arc<dyn Runtime>,
    options: ServerOptions,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<Result<(), tonic::transport::Error>>) {
    let listener = server::bind_socket(socket).expect("bind executor socket");
    let (shutdown, signal) = oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(listener, runtime, options, async move {
        let _ = signal.await;
    }));
    (shutdown, task)
}

/// The suite's HTTP helpers, for tests that check a backend the same way.
pub use crate::conformance::{http_get, wait_for_http};

/// Runs the `docker` CLI with `args` and returns what it printed, failing the test if it fails:
/// what a test checks of the engine, asked the way an operator would.
pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("run docker");
    assert!(output.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The network mode of `container` (`container:<id>` for a backend in a sandbox).
pub fn network_mode(container: &str) -> String {
    docker(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", container])
}

/// Whether the engine knows `container`.
pub fn container_exists(container: &str) -> bool {
    Command::new("docker").args(["inspect", container]).output().unwrap().status.success()
}

/// Ids of the instance's running sandboxes.
pub fn running_sandboxes(instance: &str) -> Vec<String> {
    sandboxes_listed(instance, &[])
}

/// Ids of the instance's sandboxes in any state, created and exited ones too: what a drone that
/// stopped must not leave behind.
pub fn sandboxes_in_any_state(instance: &str) -> Vec<String> {
    sandboxes_listed(instance, &["--all"])
}

fn sandboxes_listed(instance: &str, more: &[&str]) -> Vec<String> {
    let (executor, role) = (format!("label={LABEL_EXECUTOR}={instance}"), format!("label={LABEL_ROLE}=sandbox"));
    let mut args = vec!["ps", "-q", "--no-trunc", "--filter", &executor, "--filter", &role];
    args.extend_from_slice(more);
    docker(&args).split_whitespace().map(String::from).collect()
}

/// Waits until `check` holds on the instance's running sandboxes, returning them.
pub async fn sandboxes_until(instance: &str, what: &str, check: impl Fn(&[String]) -> bool) -> Vec<String> {
    // The first wait includes building the sandbox image from the drone's binary.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let sandboxes = running_sandboxes(instance);
        if check(&sandboxes) {
            return sandboxes;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: sandboxes now {sandboxes:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Runs a sandbox of `instance` from `image` as a killed runtime would have left it (no backend
/// in it), with more `docker run` arguments (a network and an address); returns its id.
pub fn leftover_sandbox(instance: &str, image: &str, more: &[&str]) -> String {
    let (executor, role) = (format!("{LABEL_EXECUTOR}={instance}"), format!("{LABEL_ROLE}=sandbox"));
    let mut args = vec!["run", "-d", "--label", "hangar.managed=true", "--label", &executor, "--label", &role];
    args.extend_from_slice(more);
    args.push(image);
    docker(&args)
}
