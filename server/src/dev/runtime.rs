//! What dev's drone runs backends on, and the demo backend it offers on it: on Docker the local
//! image `hangar-demo:latest` built from this very binary (nothing pulled), on the process
//! runtime the alias `hangar-demo` for `hangar-server demo-backend`. Either way
//! `hangar connect docs/doc-1 --image hangar-demo --wait` works on a fresh machine.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hangar_executor::runtime::Runtime;
use hangar_executor::runtime::docker::{DockerOptions, DockerRuntime, ExecutableImage, ImageOutcome, WarmSandboxes};
use hangar_executor::runtime::process::{ProcessAlias, ProcessRuntime};

/// The name users give `--image` for the demo backend, on either runtime.
pub const DEMO_IMAGE: &str = "hangar-demo";
/// The Docker image dev builds for it.
pub const DEMO_IMAGE_REFERENCE: &str = "hangar-demo:latest";
/// Label of the demo image holding the digest of the binary (and libraries) it was built from.
const DEMO_DIGEST_LABEL: &str = "hangar.demo-digest";
/// How long dev waits for a Docker engine to answer before it runs backends as processes.
const DOCKER_WAIT: Duration = Duration::from_secs(3);

/// Which runtime dev's drone uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DevRuntime {
    /// Docker when an engine answers within 3 s, local processes otherwise.
    #[default]
    Auto,
    /// Containers on the local Docker engine; dev fails to start without one.
    Docker,
    /// Local child processes; `--image` is the path of an executable (or `hangar-demo`).
    Process,
}

/// Whether the demo backend can be started, for the banner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DemoStatus {
    Ready,
    /// Why not (the build failed, no executable was given).
    Unavailable(String),
}

/// The runtime `choice` names, under the drone's `instance` (Docker labels and container names),
/// with the demo backend made available on it from `demo_executable` (a `hangar-server` binary).
pub async fn start(
    choice: DevRuntime,
    instance: &str,
    demo_executable: Option<&Path>,
) -> anyhow::Result<(Arc<dyn Runtime>, DemoStatus)> {
    let docker = match choice {
        DevRuntime::Process => None,
        DevRuntime::Docker => Some(connect_docker(instance, demo_executable).await.context(
            "--runtime docker: no Docker engine answers (is it running, and may this user use its socket?)",
        )?),
        DevRuntime::Auto => match tokio::time::timeout(DOCKER_WAIT, connect_docker(instance, demo_executable)).await {
            Ok(Ok(docker)) => Some(docker),
            Ok(Err(err)) => {
                tracing::info!(error = %err, "no Docker engine answers; running backends as local processes");
                None
            }
            Err(_) => {
                tracing::info!("the Docker engine did not answer within 3 s; running backends as local processes");
                None
            }
        },
    };
    let Some(executable) = demo_executable else {
        let status = DemoStatus::Unavailable("no hangar-server executable to run it from".into());
        return Ok(match docker {
            Some(docker) => (Arc::new(docker), status),
            None => (Arc::new(ProcessRuntime::new()), status),
        });
    };
    Ok(match docker {
        Some(docker) => {
            let status = build_demo_image(&docker, executable).await;
            (Arc::new(docker), status)
        }
        None => (Arc::new(ProcessRuntime::with_aliases(demo_alias(executable))), DemoStatus::Ready),
    })
}

/// The Docker runtime, keeping two network sandboxes ready (made from `executable`, this
/// `hangar-server`) so a backend's start skips the engine's making of its network namespace.
async fn connect_docker(instance: &str, executable: Option<&Path>) -> anyhow::Result<DockerRuntime> {
    let warm_sandboxes = executable.map(|executable| WarmSandboxes::of_executable(2, executable.to_path_buf()));
    Ok(DockerRuntime::connect(DockerOptions { instance: instance.to_string(), warm_sandboxes, ..Default::default() })
        .await?)
}

/// `hangar-demo` on the process runtime: this binary's demo backend, on the loopback only.
fn demo_alias(executable: &Path) -> HashMap<String, ProcessAlias> {
    let alias = ProcessAlias {
        program: executable.to_path_buf(),
        args: ["demo-backend", "--host", "127.0.0.1"].map(String::from).to_vec(),
    };
    HashMap::from([(DEMO_IMAGE.to_string(), alias)])
}

/// Makes sure the engine has the demo image for `executable`, saying so on stdout when it has to
/// build it. A failure is reported, never fatal: dev runs without the demo.
async fn build_demo_image(docker: &DockerRuntime, executable: &Path) -> DemoStatus {
    let image = ExecutableImage {
        reference: DEMO_IMAGE_REFERENCE.into(),
        executable: PathBuf::from(executable),
        args: vec!["demo-backend".into()],
        digest_label: DEMO_DIGEST_LABEL.into(),
    };
    let started = Instant::now();
    let mut building = false;
    let outcome = docker
        .ensure_executable_image(&image, || {
            building = true;
            print!("building the demo image {DEMO_IMAGE_REFERENCE} from this binary… ");
            let _ = std::io::stdout().flush();
        })
        .await;
    match outcome {
        Ok(ImageOutcome::UpToDate) => DemoStatus::Ready,
        Ok(ImageOutcome::Built) => {
            println!("done in {:.1} s", started.elapsed().as_secs_f64());
            DemoStatus::Ready
        }
        Err(err) => {
            if building {
                println!("failed");
            }
            tracing::warn!(error = %err, image = DEMO_IMAGE_REFERENCE, "cannot build the demo image; dev runs without it");
            DemoStatus::Unavailable(format!("cannot build {DEMO_IMAGE_REFERENCE}: {err}"))
        }
    }
}
