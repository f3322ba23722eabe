//! Network sandboxes made ahead of the backends that use them (`--docker-warm-sandboxes`).
//!
//! Most of a container's start on the engine is its network namespace: the engine makes one per
//! container, wires it to the bridge and publishes the port. Measured here, a start in a
//! namespace of its own took 200–260 ms and one joining an existing namespace 80–100 ms
//! (BENCHMARKS.md, "coldstart"). So the runtime keeps a few sandboxes ready, as Kubernetes keeps
//! a pod's network in its "pause" container: a sandbox is a container that only holds a network
//! namespace, reached as a backend on the default port would be, and a backend started while one
//! is ready joins it (`NetworkMode: container:<sandbox>`) instead of making its own. Each backend
//! still has a namespace to itself: a sandbox serves one backend, is removed with it, and the
//! pool makes another in the background. A backend that cannot use one (another port, an empty
//! pool) starts as before, so no start ever waits for the pool
//! (docs/design/executor-protocol.md#the-runtimes).
//!
//! Without a Docker network a sandbox publishes the default port. On the runtime's network it
//! publishes nothing and joins the network at an address of the runtime's slice, picked as a
//! backend's is, by the one [`AddressPicker`]: so the address a backend in a sandbox is reached
//! at comes in the same rotation as any other, and an idle sandbox's address counts as in use.
//! A sandbox never takes the slice's last free address, which is left for a backend that cannot
//! use a sandbox.
//!
//! Sandboxes carry the runtime's labels and `hangar.role=sandbox` but no backend id, so listings
//! and the event watcher never take one for a backend; a backend in one carries
//! `hangar.sandbox=<its container id>`. A restarted runtime removes the sandboxes no backend
//! uses before it makes new ones.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, InspectContainerOptions, ListContainersOptions};
use hangar_agent::Backoff;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::addresses::AddressPicker;
use super::local_image::ensure_executable_image;
use super::{DockerOptions, ExecutableImage, LABEL_PORT, PortWait, force_remove, label_filters, unavailable};
use crate::runtime::{DEFAULT_BACKEND_PORT, LABEL_EXECUTOR, LABEL_MANAGED, RuntimeError};

/// On a sandbox: `sandbox`.
pub const LABEL_ROLE: &str = "hangar.role";
/// On a backend in a sandbox: the sandbox's container id.
pub const LABEL_SANDBOX: &str = "hangar.sandbox";

/// How many sandboxes to keep ready, and the image they run: an executable whose arguments make
/// it wait for a signal and nothing else (`hangar-drone sandbox`, `hangar-server sandbox`).
#[derive(Clone, Debug)]
pub struct WarmSandboxes {
    pub count: usize,
    pub image: ExecutableImage,
}

impl WarmSandboxes {
    /// `count` sandboxes of an image made from `executable` (this binary, normally) running
    /// its `sandbox` subcommand, tagged with the executable's name (`hangar-sandbox:hangar-drone`)
    /// so that two binaries sharing an engine do not take the tag from each other.
    pub fn of_executable(count: usize, executable: std::path::PathBuf) -> Self {
        let name = executable.file_name().and_then(|n| n.to_str()).unwrap_or("latest");
        let tag: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '-' }).collect();
        WarmSandboxes {
            count,
            image: ExecutableImage {
                reference: format!("hangar-sandbox:{}", tag.trim_start_matches(['.', '-'])),
                executable,
                args: vec!["sandbox".into()],
                digest_label: "hangar.sandbox-digest".into(),
            },
        }
    }
}

/// A ready sandbox: where a backend that joins it is reached (`HOST:PORT` of the published port,
/// or `IP:8080` on the network).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Sandbox {
    pub id: String,
    pub address: String,
}

/// The ready sandboxes.
#[derive(Default)]
pub(super) struct SandboxPool {
    ready: Mutex<VecDeque<Sandbox>>,
    refill: Notify,
}

impl SandboxPool {
    /// A ready sandbox, if there is one; the keeper makes its replacement.
    pub fn take(&self) -> Option<Sandbox> {
        let sandbox = self.ready.lock().unwrap().pop_front();
        if sandbox.is_some() {
            self.refill.notify_one();
        }
        sandbox
    }

    /// A sandbox taken but not used (its backend's container already existed).
    pub fn put_back(&self, sandbox: Sandbox) {
        self.ready.lock().unwrap().push_front(sandbox);
    }

    pub fn len(&self) -> usize {
        self.ready.lock().unwrap().len()
    }
}

/// The background task that keeps `count` sandboxes ready.
pub(super) struct SandboxKeeper {
    pub docker: Docker,
    /// The runtime's: its instance, how its backends are reached, how long to wait for that.
    pub options: DockerOptions,
    pub warm: WarmSandboxes,
    pub pool: Arc<SandboxPool>,
    /// With a network: the runtime's own picker, shared with the backends' starts.
    pub addresses: Option<Arc<AddressPicker>>,
}

impl SandboxKeeper {
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        // The image first: until it exists, backends start without sandboxes.
        loop {
            match ensure_executable_image(&self.docker, &self.warm.image, || {
                tracing::info!(image = self.warm.image.reference, "building the network sandbox image");
            })
            .await
            {
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot make the network sandbox image; backends start without warm sandboxes");
                    if !pause(&mut backoff, &cancel).await {
                        return;
                    }
                }
            }
        }
        if let Err(err) = self.remove_unused().await {
            tracing::warn!(error = %err, "cannot list this runtime's sandboxes to remove unused ones");
        }
        loop {
            while self.pool.len() < self.warm.count && !cancel.is_cancelled() {
                match self.make().await {
                    Ok(sandbox) => {
                        tracing::debug!(sandbox = sandbox.id, address = sandbox.address, "network sandbox ready");
                        self.pool.ready.lock().unwrap().push_back(sandbox);
                        backoff.reset();
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot make a network sandbox; backends start without one meanwhile");
                        if !pause(&mut backoff, &cancel).await {
                            break;
                        }
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.pool.refill.notified() => {}
            }
        }
        // Sandboxes no backend took go with the runtime (a restarted one would remove them too).
        let unused: Vec<Sandbox> = self.pool.ready.lock().unwrap().drain(..).collect();
        for sandbox in unused {
            remove_container(&self.docker, &sandbox.id).await;
        }
    }

    /// Creates and starts a sandbox, and waits for the engine to report where it is reached.
    async fn make(&self) -> Result<Sandbox, RuntimeError> {
        let instance = &self.options.instance;
        let name = format!("hangar-{instance}-sandbox-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_EXECUTOR.to_string(), instance.clone()),
            (LABEL_ROLE.to_string(), "sandbox".to_string()),
            (LABEL_PORT.to_string(), DEFAULT_BACKEND_PORT.to_string()),
        ]);
        let mut body = ContainerCreateBody {
            image: Some(self.warm.image.reference.clone()),
            labels: Some(labels),
            // It only waits for a signal.
            host_config: Some(HostConfig { pids_limit: Some(8), ..Default::default() }),
            ..Default::default()
        };
        // As for a backend, the address is picked and the container created under one lock.
        let picked = match &self.addresses {
            Some(addresses) => Some(addresses.pick(1).await?),
            None => None,
        };
        let asked = picked.as_ref().map(|picked| picked.address);
        self.options.expose(&mut body, DEFAULT_BACKEND_PORT, asked);
        let options = CreateContainerOptions { name: Some(name.clone()), ..Default::default() };
        let created = self.docker.create_container(Some(options), body).await;
        drop(picked);
        let created = created.map_err(unavailable)?;
        let made = async {
            self.docker
                .start_container(&created.id, None::<bollard::query_parameters::StartContainerOptions>)
                .await
                .map_err(unavailable)?;
            let mut wait = PortWait::new(self.options.port_wait);
            loop {
                let container = self
                    .docker
                    .inspect_container(&created.id, None::<InspectContainerOptions>)
                    .await
                    .map_err(unavailable)?;
                let running = container.state.as_ref().and_then(|s| s.running) == Some(true);
                if !running {
                    return Err(RuntimeError::internal(format!("network sandbox {name} ended right after its start")));
                }
                if let Some(address) = self.options.reached_at(&container) {
                    check_address(&name, &address, asked)?;
                    return Ok(Sandbox { id: created.id.clone(), address });
                }
                if wait.expired() {
                    return Err(RuntimeError::internal(format!(
                        "the engine did not report where network sandbox {name} is reached in time"
                    )));
                }
                wait.pause().await;
            }
        }
        .await;
        if made.is_err() {
            remove_container(&self.docker, &created.id).await;
        }
        made
    }

    /// Removes this runtime's sandboxes that no backend container is in (left by an earlier
    /// life of the runtime, ready but never taken).
    async fn remove_unused(&self) -> Result<(), RuntimeError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(label_filters(&self.options.instance)),
            ..Default::default()
        };
        let containers = self.docker.list_containers(Some(options)).await.map_err(unavailable)?;
        let in_use: HashSet<String> =
            containers.iter().filter_map(|c| c.labels.as_ref().and_then(|l| l.get(LABEL_SANDBOX)).cloned()).collect();
        for container in &containers {
            let is_sandbox =
                container.labels.as_ref().and_then(|l| l.get(LABEL_ROLE)).map(String::as_str) == Some("sandbox");
            if let Some(id) = container.id.as_deref().filter(|id| is_sandbox && !in_use.contains(*id)) {
                tracing::debug!(sandbox = id, "removing an unused network sandbox");
                remove_container(&self.docker, id).await;
            }
        }
        Ok(())
    }
}

/// That the engine put a sandbox at the address it was `asked` to (`address` is where the sandbox
/// is reached, `IP:PORT`). One it put elsewhere is not used: it would be at an address out of the
/// rotation (one a proxy may still route an ended backend's URL to), or out of the slice.
fn check_address(name: &str, address: &str, asked: Option<Ipv4Addr>) -> Result<(), RuntimeError> {
    let Some(asked) = asked else { return Ok(()) };
    let ip = address.rsplit_once(':').and_then(|(ip, _)| ip.parse::<Ipv4Addr>().ok());
    if ip == Some(asked) {
        return Ok(());
    }
    Err(RuntimeError::internal(format!("the engine put network sandbox {name} at {address}, not at {asked} as asked")))
}

/// Removes a network sandbox by id, whatever state it is in; gone already is fine, and a failure
/// is logged (a restarted runtime removes what is left).
pub(super) async fn remove_container(docker: &Docker, id: &str) {
    if let Err(err) = force_remove(docker, id).await {
        tracing::warn!(container = id, error = %err, "cannot remove a network sandbox");
    }
}

/// Waits `backoff`'s next delay; false if cancelled meanwhile.
async fn pause(backoff: &mut Backoff, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(backoff.next_delay()) => true,
    }
}

/// What a sandbox runs (`sandbox` subcommands): waits for SIGTERM or SIGINT. As the container's
/// first process it gets no default action for either, so it handles them to end when asked.
pub async fn hold() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        result = tokio::signal::ctrl_c() => result?,
    }
    Ok(())
}
