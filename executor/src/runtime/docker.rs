//! The docker runtime: backends are containers on the local engine, driven through bollard.
//!
//! Every container carries `hangar.managed=true`, `hangar.backend-id=<id>` and
//! `hangar.executor=<instance>`, and is named `hangar-<instance>-<id>`, so starts are idempotent
//! (the name is taken) and a restarted executor finds its containers by label. The backend's port
//! (spec.port, default 8080, also passed as `PORT`) is published on an ephemeral port of
//! 127.0.0.1, read back from the engine once it is bound; or, on a Docker network, reached at the
//! container's own address there, one of the runtime's slice ([`addresses`]). When the runtime
//! keeps warm network sandboxes, a backend joins one made ahead of it, which has the port
//! published or its address on the network already ([`sandbox`]).
//!
//! Events come from the engine's event stream. When that stream ends (engine restart, dropped
//! connection), it is resubscribed with `since` set before a reconcile by label, so exits that
//! happened in between are still reported; the [`EventHub`] drops the duplicates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, ContainerStatsResponse,
    EndpointIpamConfig, EndpointSettings, HostConfig, NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, KillContainerOptions, ListContainersOptions,
    RemoveContainerOptions, StatsOptions, StopContainerOptions,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use std::net::Ipv4Addr;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod addresses;
mod local_image;
mod sandbox;
mod watch;

use self::addresses::AddressPicker;
pub use self::local_image::{ExecutableImage, ImageOutcome};
pub use self::sandbox::{LABEL_ROLE, LABEL_SANDBOX, WarmSandboxes, hold as hold_sandbox};
use self::sandbox::{Sandbox, SandboxKeeper, SandboxPool, remove_container};

use self::watch::EngineWatcher;
use super::locks::BackendLocks;
use super::{
    BackendInfo, BackendSpec, BackendState, Capability, Condition, DEFAULT_BACKEND_PORT, EventHub, EventStream,
    ImageReady, LABEL_BACKEND_ID, LABEL_EXECUTOR, LABEL_MANAGED, PullPolicy, Runtime, RuntimeError, RuntimeKind,
    Started, Stats, StatsStream,
};

/// Label recording the container port, so the published host port can be found again later.
const LABEL_PORT: &str = "hangar.port";

/// How the docker runtime behaves.
#[derive(Clone, Debug)]
pub struct DockerOptions {
    /// Executor instance name, in labels and container names.
    pub instance: String,
    /// How long a start waits for the engine to report the published host port.
    pub port_wait: Duration,
    /// Upper bound on one image pull.
    pub pull_timeout: Duration,
    /// How long one subscription to the engine's event stream lives before the watcher
    /// reconciles and subscribes again. A safety net against a stream that stalls without
    /// ending (a half-dead connection would otherwise hide every exit from then on).
    pub resubscribe_every: Duration,
    /// The engine host's address as proxies on other hosts reach it (`--advertise-host`): a
    /// backend's port is then published on every interface of that host and reported at
    /// `HOST:PORT`. `None`: published on the host's 127.0.0.1 only and reported there, so only a
    /// proxy on that host reaches it.
    pub advertise_host: Option<String>,
    /// A Docker network every backend joins at an address of this runtime's own slice of it
    /// (`--docker-network`, `--docker-addresses`), reported at that address with nothing
    /// published on the engine's host; takes precedence over `advertise_host`.
    pub network: Option<DockerNetwork>,
    /// Network sandboxes kept ready for backends to start in (`--docker-warm-sandboxes`; see
    /// [`WarmSandboxes`]). With `network`, they are made on it, each at an address of the slice.
    pub warm_sandboxes: Option<WarmSandboxes>,
}

/// Backends on a Docker network, each at an address this runtime picks from `addresses`, a
/// slice of the network's subnet that no other runtime on the network uses. Addresses are
/// handed out in turn around the slice, skipping those in use: one a backend had is given again
/// only after every other address of the slice, so a proxy still routing an ended backend's URL
/// to it (for as long as the controllers believe the backend live) does not reach a newer one
/// there. The engine's own choice would hand a freed address to the very next container
/// (docs/design/faults.md#across-hosts). Warm sandboxes take theirs in the same rotation (a
/// backend in one is reached at the sandbox's address), so the slice must hold them too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerNetwork {
    pub name: String,
    pub addresses: ipnet::Ipv4Net,
}

impl Default for DockerOptions {
    fn default() -> Self {
        DockerOptions {
            instance: "default".into(),
            port_wait: Duration::from_secs(10),
            pull_timeout: Duration::from_secs(300),
            resubscribe_every: Duration::from_secs(300),
            advertise_host: None,
            network: None,
            warm_sandboxes: None,
        }
    }
}

impl DockerOptions {
    /// Makes `body`'s `port` reachable as the runtime's backends are, for a backend or a network
    /// sandbox alike: on the network at `address`, with nothing published on the engine's host;
    /// or published on an ephemeral port (an empty host port asks the engine for one) of
    /// 127.0.0.1, reachable only from the engine's host (a proxy there), or with an advertised
    /// host of every interface, for proxies on other hosts (docs/operations.md#drones).
    fn expose(&self, body: &mut ContainerCreateBody, port: u16, address: Option<Ipv4Addr>) {
        let port_key = format!("{port}/tcp");
        let host_config = body.host_config.get_or_insert_with(HostConfig::default);
        match &self.network {
            Some(network) => {
                host_config.network_mode = Some(network.name.clone());
                body.networking_config = address.map(|address| {
                    let ipam_config =
                        EndpointIpamConfig { ipv4_address: Some(address.to_string()), ..Default::default() };
                    let endpoint = EndpointSettings { ipam_config: Some(ipam_config), ..Default::default() };
                    NetworkingConfig { endpoints_config: Some(HashMap::from([(network.name.clone(), endpoint)])) }
                });
            }
            None => host_config.port_bindings = Some(port_bindings(&port_key, self.advertise_host.is_some())),
        }
        body.exposed_ports = Some(HashMap::from([(port_key, HashMap::new())]));
    }

    /// Where a proxy reaches `container`'s port (its `hangar.port`): its address on the
    /// runtime's network, or its published port (see [`published_address`]); `None` while the
    /// engine reports neither yet.
    fn reached_at(&self, container: &ContainerInspectResponse) -> Option<String> {
        match &self.network {
            Some(network) => network_address(container, &network.name),
            None => published_address(container, self.advertise_host.as_deref()),
        }
    }
}

/// Runs backends as Docker containers.
pub struct DockerRuntime {
    docker: Docker,
    options: DockerOptions,
    hub: EventHub,
    locks: BackendLocks,
    /// Start results, so a retry answers exactly what the first start did.
    started: Mutex<HashMap<String, Started>>,
    /// With a network: the addresses of the runtime's slice, shared with the sandbox keeper.
    addresses: Option<Arc<AddressPicker>>,
    /// Whether the engine's event stream is currently subscribed.
    watching: Arc<AtomicBool>,
    /// How many times the engine's event stream was subscribed.
    subscriptions: Arc<AtomicU64>,
    /// The ready network sandboxes, when the runtime keeps some.
    sandboxes: Option<Arc<SandboxPool>>,
    /// Owns the event watcher and the sandbox keeper.
    tasks: TaskTracker,
    cancel: CancellationToken,
}

/// How a backend's create and start failed.
enum Failure {
    Runtime(RuntimeError),
    /// The engine refused to start `container` (its id) in its sandbox.
    JoinFailed {
        container: String,
        message: String,
    },
}

impl From<RuntimeError> for Failure {
    fn from(err: RuntimeError) -> Self {
        Failure::Runtime(err)
    }
}

pub(super) fn status_code(err: &DockerError) -> Option<u16> {
    match err {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn unavailable(err: DockerError) -> RuntimeError {
    match err {
        DockerError::DockerResponseServerError { status_code, message } if status_code < 500 => {
            RuntimeError::internal(format!("docker answered {status_code}: {message}"))
        }
        err => RuntimeError::Unavailable(format!("docker engine: {err}")),
    }
}

/// Docker reports "never" as the zero time.
pub(super) fn parse_time(time: Option<&str>) -> Option<DateTime<Utc>> {
    let time = DateTime::parse_from_rfc3339(time?).ok()?.with_timezone(&Utc);
    (time.timestamp() > 0).then_some(time)
}

/// The engine's view of the network `name`; `None` when it has none by that name.
async fn inspect_network(docker: &Docker, name: &str) -> Result<Option<bollard::models::Network>, RuntimeError> {
    match docker.inspect_network(name, None::<bollard::query_parameters::InspectNetworkOptions>).await {
        Ok(found) => Ok(Some(found)),
        Err(err) if status_code(&err) == Some(404) => Ok(None),
        Err(err) => Err(unavailable(err)),
    }
}

/// That `network` exists and its subnet holds the runtime's slice, so that a mistake is named
/// at start-up rather than at the first backend.
async fn check_network(docker: &Docker, network: &DockerNetwork) -> Result<(), RuntimeError> {
    let Some(found) = inspect_network(docker, &network.name).await? else {
        return Err(RuntimeError::invalid_spec("network", format!("there is no Docker network {}", network.name)));
    };
    let subnets: Vec<ipnet::Ipv4Net> = found
        .ipam
        .and_then(|ipam| ipam.config)
        .unwrap_or_default()
        .iter()
        .filter_map(|config| config.subnet.as_deref()?.parse().ok())
        .collect();
    if subnets.iter().any(|subnet| subnet.contains(&network.addresses)) {
        return Ok(());
    }
    Err(RuntimeError::invalid_spec(
        "addresses",
        format!(
            "{} is not inside the subnet of the Docker network {} ({})",
            network.addresses,
            network.name,
            subnets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        ),
    ))
}

fn valid_name_part(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl DockerRuntime {
    /// Connects to the local engine (DOCKER_HOST or the default socket), agrees on an API version,
    /// and starts watching its events.
    pub async fn connect(options: DockerOptions) -> Result<Self, RuntimeError> {
        if !valid_name_part(&options.instance) {
            return Err(RuntimeError::invalid_spec(
                "instance",
                "may contain only ASCII letters, digits, '-', '_', '.'",
            ));
        }
        let docker = Docker::connect_with_local_defaults().map_err(unavailable)?;
        // The engine may be older than bollard's default API version; speak the engine's.
        let docker = docker.negotiate_version().await.map_err(unavailable)?;
        docker.ping().await.map_err(unavailable)?;
        if let Some(network) = &options.network {
            check_network(&docker, network).await?;
        }
        let addresses = options.network.clone().map(|network| Arc::new(AddressPicker::new(docker.clone(), network)));
        let mut runtime = DockerRuntime {
            docker,
            options,
            hub: EventHub::default(),
            locks: BackendLocks::default(),
            started: Mutex::new(HashMap::new()),
            addresses,
            watching: Arc::new(AtomicBool::new(false)),
            subscriptions: Arc::new(AtomicU64::new(0)),
            sandboxes: None,
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
        };
        let watcher = EngineWatcher {
            docker: runtime.docker.clone(),
            instance: runtime.options.instance.clone(),
            hub: runtime.hub.clone(),
            watching: runtime.watching.clone(),
            subscriptions: runtime.subscriptions.clone(),
            resubscribe_every: runtime.options.resubscribe_every,
        };
        let cancel = runtime.cancel.clone();
        runtime.tasks.spawn(async move { watcher.run(cancel).await });
        if let Some(warm) = runtime.options.warm_sandboxes.clone().filter(|warm| warm.count > 0) {
            let pool = Arc::new(SandboxPool::default());
            let keeper = SandboxKeeper {
                docker: runtime.docker.clone(),
                options: runtime.options.clone(),
                warm,
                pool: pool.clone(),
                addresses: runtime.addresses.clone(),
            };
            let cancel = runtime.cancel.clone();
            runtime.tasks.spawn(async move { keeper.run(cancel).await });
            runtime.sandboxes = Some(pool);
        }
        Ok(runtime)
    }

    /// How many times the engine's event stream has been subscribed (1 + resubscriptions).
    pub fn event_subscriptions(&self) -> u64 {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// The underlying engine client, e.g. for tests that check what the engine sees.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Name of the container of `backend_id`.
    pub fn container_name(&self, backend_id: &str) -> String {
        format!("hangar-{}-{backend_id}", self.options.instance)
    }

    /// The container of `backend_id`, if there is one and it is this instance's. Every call that
    /// acts on a container (stop, remove, stats, adopting it at start) finds it here, so a
    /// container carrying another instance's labels is never touched, whatever its name.
    async fn inspect_container(&self, backend_id: &str) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        let name = self.container_name(backend_id);
        match self.docker.inspect_container(&name, None::<InspectContainerOptions>).await {
            Ok(container) if self.owns(&container) => Ok(Some(container)),
            Ok(container) => {
                let labels = container.config.and_then(|c| c.labels).unwrap_or_default();
                tracing::warn!(
                    container = name,
                    instance = self.options.instance,
                    owner = labels.get(LABEL_EXECUTOR).map(String::as_str).unwrap_or("none"),
                    "a container with this instance's name is not labelled as this instance's; leaving it alone"
                );
                Ok(None)
            }
            Err(err) if status_code(&err) == Some(404) => Ok(None),
            Err(err) => Err(unavailable(err)),
        }
    }

    /// Whether this instance created `container`: managed by Hangar and labelled with this
    /// instance's name. Names alone prove nothing (anyone can create a container of any name).
    fn owns(&self, container: &ContainerInspectResponse) -> bool {
        let Some(labels) = container.config.as_ref().and_then(|c| c.labels.as_ref()) else { return false };
        labels.get(LABEL_MANAGED).map(String::as_str) == Some("true")
            && labels.get(LABEL_EXECUTOR) == Some(&self.options.instance)
    }

    /// Reports what inspect shows about an ended container, in the order readers expect.
    fn report_exit(&self, backend_id: &str, container: &ContainerInspectResponse) {
        if let Some(state) = &container.state
            && state.running != Some(true)
            && state.started_at.as_deref().and_then(|t| parse_time(Some(t))).is_some()
        {
            self.hub.exited(backend_id, state.exit_code.map(|c| c as i32), state.oom_killed == Some(true));
        }
    }

    /// Where a proxy reaches the backend in `container`: its own address, or what its start
    /// reported, or (after a restart) its sandbox's: the port the sandbox publishes, or its
    /// address on the network.
    async fn address_of(&self, backend_id: &str, container: &ContainerInspectResponse) -> String {
        if let Some(address) = self
            .options
            .reached_at(container)
            .or_else(|| self.started.lock().unwrap().get(backend_id).map(|s| s.address.clone()))
        {
            return address;
        }
        let Some(sandbox) = sandbox_of(container) else { return String::new() };
        match self.docker.inspect_container(sandbox, None::<InspectContainerOptions>).await {
            Ok(sandbox) => self.options.reached_at(&sandbox).unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    fn info(&self, backend_id: &str, container: &ContainerInspectResponse, address: String) -> BackendInfo {
        let state = container.state.clone().unwrap_or_default();
        let backend_state = match state.status {
            Some(ContainerStateStatusEnum::CREATED) => BackendState::Created,
            Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::PAUSED)
            | Some(ContainerStateStatusEnum::RESTARTING) => BackendState::Running,
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD)
            | Some(ContainerStateStatusEnum::REMOVING) => BackendState::Exited,
            _ => BackendState::Unknown,
        };
        BackendInfo {
            backend_id: backend_id.to_string(),
            runtime_id: container.id.clone().unwrap_or_default(),
            state: backend_state,
            exit_code: (backend_state == BackendState::Exited).then(|| state.exit_code.unwrap_or(0) as i32),
            oom_killed: state.oom_killed.unwrap_or(false),
            created_at: parse_time(container.created.as_deref()),
            started_at: parse_time(state.started_at.as_deref()),
            finished_at: parse_time(state.finished_at.as_deref()),
            address,
        }
    }

    /// The backend's container, with no say yet on its network (see [`DockerOptions::expose`] and
    /// [`join_sandbox`]).
    fn create_body(&self, spec: &BackendSpec) -> ContainerCreateBody {
        let port = spec.container_port();
        let mut env: Vec<String> =
            spec.env.iter().filter(|(k, _)| k.as_str() != "PORT").map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("PORT={port}"));
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert(LABEL_MANAGED.into(), "true".into());
        labels.insert(LABEL_BACKEND_ID.into(), spec.backend_id.clone());
        labels.insert(LABEL_EXECUTOR.into(), self.options.instance.clone());
        labels.insert(LABEL_PORT.into(), port.to_string());
        let limits = spec.resources;
        let host_config = HostConfig {
            nano_cpus: (limits.cpu_millis > 0).then(|| (limits.cpu_millis * 1_000_000) as i64),
            memory: (limits.memory_bytes > 0).then_some(limits.memory_bytes as i64),
            // Same as memory: no swap, so exceeding the limit is an OOM kill, not a slow crawl.
            memory_swap: (limits.memory_bytes > 0).then_some(limits.memory_bytes as i64),
            pids_limit: (limits.pids > 0).then_some(limits.pids as i64),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            // Kubernetes' rule, which is also the engine's: an ENTRYPOINT given here drops the
            // image's CMD, so `command` alone runs without it.
            entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
            cmd: (!spec.command.is_empty() || !spec.args.is_empty()).then(|| spec.args.clone()),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Creates the backend's container (in `sandbox`, when given) and starts it, or adopts the
    /// one an earlier start made.
    async fn create_and_start(&self, spec: &BackendSpec, mut sandbox: Option<Sandbox>) -> Result<Started, Failure> {
        let backend_id = spec.backend_id.clone();
        let name = self.container_name(&backend_id);
        let options = CreateContainerOptions { name: Some(name.clone()), ..Default::default() };
        // On a network, a backend in a sandbox is at the sandbox's address; any other takes the
        // next of the slice, and is created before the picker lets another pick.
        let picked = match (&self.addresses, &sandbox) {
            (Some(addresses), None) => Some(addresses.pick(0).await?),
            _ => None,
        };
        let mut body = self.create_body(spec);
        match &sandbox {
            Some(sandbox) => join_sandbox(&mut body, sandbox),
            None => self.options.expose(&mut body, spec.container_port(), picked.as_ref().map(|p| p.address)),
        }
        let created = self.docker.create_container(Some(options), body).await;
        drop(picked);
        if created.is_err()
            && let (Some(pool), Some(sandbox)) = (&self.sandboxes, sandbox.take())
        {
            // Not used: the backend's container existed already, or the create failed.
            pool.put_back(sandbox);
        }
        let created = match created {
            Ok(created) => Some(created.id),
            // Created by an earlier start (before an executor restart): adopt it.
            Err(err) if status_code(&err) == Some(409) => None,
            Err(err) if status_code(&err) == Some(404) => {
                return Err(Failure::Runtime(RuntimeError::ImageNotFound {
                    image: spec.image.clone(),
                    message: "not present locally; call PrepareImage first".into(),
                }));
            }
            Err(DockerError::DockerResponseServerError { status_code: 400, message }) => {
                return Err(Failure::Runtime(RuntimeError::StartFailed { backend_id, message }));
            }
            Err(err) => return Err(Failure::Runtime(unavailable(err))),
        };
        // Whether the container is the one just created: then it has never run, and the engine
        // need not be asked before starting it (one round trip fewer on every cold start).
        let never_started = created.is_some() || {
            let existing = self.inspect_container(&backend_id).await?;
            existing
                .as_ref()
                .and_then(|c| c.state.as_ref())
                .is_some_and(|s| s.status == Some(ContainerStateStatusEnum::CREATED))
        };
        // An adopted container that already ran is not restarted: that would be a new life, not a retry.
        if never_started {
            match self.docker.start_container(&name, None::<bollard::query_parameters::StartContainerOptions>).await {
                Ok(()) => {}
                Err(err) if status_code(&err) == Some(304) => {}
                Err(DockerError::DockerResponseServerError { message, .. })
                    if let (Some(_), Some(container)) = (&sandbox, &created) =>
                {
                    return Err(Failure::JoinFailed { container: container.clone(), message });
                }
                Err(DockerError::DockerResponseServerError { status_code, message })
                    if status_code < 500 || message.contains("OCI") =>
                {
                    return Err(Failure::Runtime(RuntimeError::StartFailed { backend_id, message }));
                }
                Err(err) => return Err(Failure::Runtime(unavailable(err))),
            }
        }
        let (address, container) = match &sandbox {
            // The sandbox's port, known since it was made: nothing to wait for.
            Some(sandbox) => (sandbox.address.clone(), self.inspect_container(&backend_id).await?),
            None => self.wait_for_address(&backend_id).await?,
        };
        let container = container.ok_or_else(|| RuntimeError::StartFailed {
            backend_id: backend_id.clone(),
            message: "the container vanished while starting".into(),
        })?;
        self.hub.started(&backend_id);
        self.report_exit(&backend_id, &container);
        Ok(Started { runtime_id: container.id.clone().unwrap_or_default(), address })
    }

    /// Waits until the engine reports the published host port. Right after a start the binding
    /// may not be visible yet, so this retries; a container that already ended has no address.
    async fn wait_for_address(
        &self,
        backend_id: &str,
    ) -> Result<(String, Option<ContainerInspectResponse>), RuntimeError> {
        let mut wait = PortWait::new(self.options.port_wait);
        loop {
            let container = self.inspect_container(backend_id).await?;
            let Some(container) = container else { return Ok((String::new(), None)) };
            if let Some(address) = self.options.reached_at(&container) {
                return Ok((address, Some(container)));
            }
            if sandbox_of(&container).is_some() {
                // Adopted in its sandbox, which has been reachable since it was made.
                let address = self.address_of(backend_id, &container).await;
                return Ok((address, Some(container)));
            }
            let running = container.state.as_ref().and_then(|s| s.running).unwrap_or(false);
            if !running || wait.expired() {
                if running {
                    tracing::warn!(backend_id, "engine did not report the published port in time");
                }
                return Ok((String::new(), Some(container)));
            }
            wait.pause().await;
        }
    }

    async fn pull(&self, image: &str) -> Result<(), String> {
        // Without a tag the engine would pull every tag of the repository.
        let last = image.rsplit('/').next().unwrap_or(image);
        let reference =
            if last.contains(':') || image.contains('@') { image.to_string() } else { format!("{image}:latest") };
        let options = CreateImageOptions { from_image: Some(reference), ..Default::default() };
        let mut progress = self.docker.create_image(Some(options), None, None);
        let pull = async {
            while let Some(item) = progress.next().await {
                item.map_err(|err| err.to_string())?;
            }
            Ok(())
        };
        tokio::time::timeout(self.options.pull_timeout, pull).await.map_err(|_| "pull timed out".to_string())?
    }
}

/// The pacing of the inspects that wait for the engine to report a published port. The engine
/// almost always reports it on the first inspect after the start; when it does not, it does within
/// milliseconds, so the pauses begin at 1 ms and double up to 25 ms.
struct PortWait {
    deadline: tokio::time::Instant,
    next: Duration,
}

impl PortWait {
    fn new(wait: Duration) -> Self {
        PortWait { deadline: tokio::time::Instant::now() + wait, next: Duration::from_millis(1) }
    }

    fn expired(&self) -> bool {
        tokio::time::Instant::now() >= self.deadline
    }

    async fn pause(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_millis(25));
    }
}

/// Removes a container by name or id, whatever state it is in. Gone already (404) is fine, and
/// so is a removal already in progress (409, e.g. a concurrent remove): it will be gone shortly.
async fn force_remove(docker: &Docker, container: &str) -> Result<(), DockerError> {
    match docker.remove_container(container, Some(RemoveContainerOptions { force: true, ..Default::default() })).await {
        Err(err) if !matches!(status_code(&err), Some(404 | 409)) => Err(err),
        _ => Ok(()),
    }
}

/// `port_key` (`PORT/tcp`) published on an ephemeral port of 127.0.0.1, or of every interface.
fn port_bindings(port_key: &str, every_interface: bool) -> HashMap<String, Option<Vec<PortBinding>>> {
    let host_ip = if every_interface { "0.0.0.0" } else { "127.0.0.1" };
    HashMap::from([(
        port_key.to_string(),
        Some(vec![PortBinding { host_ip: Some(host_ip.into()), host_port: Some(String::new()) }]),
    )])
}

/// The sandbox a backend's container is in, if it is in one.
fn sandbox_of(container: &ContainerInspectResponse) -> Option<&str> {
    container.config.as_ref()?.labels.as_ref()?.get(LABEL_SANDBOX).map(String::as_str)
}

/// Makes `body` a backend in `sandbox`'s network namespace, which is reached already (published
/// port, or address on the network): nothing of the backend's own is published or attached.
fn join_sandbox(body: &mut ContainerCreateBody, sandbox: &Sandbox) {
    if let Some(host_config) = body.host_config.as_mut() {
        host_config.network_mode = Some(format!("container:{}", sandbox.id));
    }
    if let Some(labels) = body.labels.as_mut() {
        labels.insert(LABEL_SANDBOX.into(), sandbox.id.clone());
    }
}

/// Where the backend's published port is reached, if the engine reports one: `HOST:<host port>`
/// for a port published on every interface when the runtime advertises `HOST`, else the
/// binding's own address (`127.0.0.1:<host port>`). A container published on 127.0.0.1 (made
/// before the drone advertised a host) stays reported there: that is where it listens.
fn published_address(container: &ContainerInspectResponse, advertise: Option<&str>) -> Option<String> {
    let labels = container.config.as_ref()?.labels.as_ref()?;
    let port = labels.get(LABEL_PORT)?;
    let ports = container.network_settings.as_ref()?.ports.as_ref()?;
    let bindings = ports.get(&format!("{port}/tcp"))?.as_ref()?;
    bindings.iter().find_map(|binding| {
        let host_port = binding.host_port.as_deref().filter(|p| !p.is_empty() && *p != "0")?;
        let every_interface =
            binding.host_ip.as_deref().is_none_or(|ip| ip.is_empty() || ip == "0.0.0.0" || ip == "::");
        let host = match advertise {
            Some(host) if every_interface => host,
            _ => binding.host_ip.as_deref().filter(|_| !every_interface).unwrap_or("127.0.0.1"),
        };
        Some(format!("{host}:{host_port}"))
    })
}

/// `CONTAINER_IP:<container port>` on `network`, once the engine has given the container its
/// address there.
fn network_address(container: &ContainerInspectResponse, network: &str) -> Option<String> {
    let port = container.config.as_ref()?.labels.as_ref()?.get(LABEL_PORT)?;
    let networks = container.network_settings.as_ref()?.networks.as_ref()?;
    let ip = networks.get(network)?.ip_address.as_deref().filter(|ip| !ip.is_empty())?;
    Some(format!("{ip}:{port}"))
}

fn stats_from_docker(stats: &ContainerStatsResponse) -> Stats {
    let memory = stats.memory_stats.as_ref();
    let (rx, tx) = stats.networks.as_ref().map_or((0, 0), |networks| {
        networks.values().fold((0, 0), |(rx, tx), n| (rx + n.rx_bytes.unwrap_or(0), tx + n.tx_bytes.unwrap_or(0)))
    });
    Stats {
        time: Utc::now(),
        cpu_total_ns: stats
            .cpu_stats
            .as_ref()
            .and_then(|c| c.cpu_usage.as_ref())
            .and_then(|u| u.total_usage)
            .unwrap_or(0),
        memory_used_bytes: memory.and_then(|m| m.usage).unwrap_or(0),
        memory_limit_bytes: memory.and_then(|m| m.limit).unwrap_or(0),
        pids: stats.pids_stats.as_ref().and_then(|p| p.current).unwrap_or(0),
        net_rx_bytes: rx,
        net_tx_bytes: tx,
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Docker
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
        let reachable = match self.docker.ping().await {
            Ok(_) => Condition::new("RuntimeReachable", true, "EngineAnswers", ""),
            Err(err) => Condition::new("RuntimeReachable", false, "EngineUnreachable", err.to_string()),
        };
        let ready = if reachable.status && self.watching.load(Ordering::Acquire) {
            Condition::new("RuntimeReady", true, "WatchingEvents", "")
        } else {
            Condition::new("RuntimeReady", false, "NotWatchingEvents", "the engine's event stream is not subscribed")
        };
        vec![reachable, ready]
    }

    async fn prepare_image(&self, image: &str, policy: PullPolicy) -> Result<ImageReady, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(found) if policy != PullPolicy::Always => {
                return Ok(ImageReady { image_id: found.id.unwrap_or_default(), pulled: false });
            }
            Ok(_) => {}
            Err(err) if status_code(&err) == Some(404) => {
                if policy == PullPolicy::Never {
                    return Err(RuntimeError::ImageNotFound {
                        image: image.into(),
                        message: "not present locally and the pull policy is NEVER".into(),
                    });
                }
            }
            Err(err) => return Err(unavailable(err)),
        }
        if let Err(message) = self.pull(image).await {
            tracing::warn!(image, message, "image pull failed");
            return Err(if policy == PullPolicy::Always {
                RuntimeError::ImagePullFailed { image: image.into(), message }
            } else {
                RuntimeError::ImageNotFound {
                    image: image.into(),
                    message: format!("not present locally; pull failed: {message}"),
                }
            });
        }
        let found = self.docker.inspect_image(image).await.map_err(unavailable)?;
        Ok(ImageReady { image_id: found.id.unwrap_or_default(), pulled: true })
    }

    async fn start(&self, spec: BackendSpec) -> Result<Started, RuntimeError> {
        spec.validate()?;
        let backend_id = spec.backend_id.clone();
        let _guard = self.locks.lock(&backend_id).await;
        let cached = self.started.lock().unwrap().get(&backend_id).cloned();
        if let Some(started) = cached {
            // A container removed behind the executor's back (docker rm) is started afresh.
            if self.inspect_container(&backend_id).await?.is_some() {
                return Ok(started);
            }
            self.started.lock().unwrap().remove(&backend_id);
        }
        // A ready sandbox when the backend can use one: on the default port, the one sandboxes
        // are reached at.
        let sandbox = match &self.sandboxes {
            Some(pool) if spec.container_port() == DEFAULT_BACKEND_PORT => pool.take(),
            _ => None,
        };
        let started = match self.create_and_start(&spec, sandbox.clone()).await {
            Err(Failure::JoinFailed { container, message }) => {
                // The sandbox could not be joined (it ended behind the runtime's back, say): the
                // backend starts in a namespace of its own, as it would with no sandbox ready.
                tracing::warn!(backend_id, %message, "starting in a network sandbox failed; starting without one");
                remove_container(&self.docker, &container).await;
                if let Some(sandbox) = &sandbox {
                    remove_container(&self.docker, &sandbox.id).await;
                }
                self.create_and_start(&spec, None).await
            }
            result => result,
        };
        let started = started.map_err(|failure| match failure {
            Failure::Runtime(err) => err,
            Failure::JoinFailed { message, .. } => {
                RuntimeError::StartFailed { backend_id: backend_id.clone(), message }
            }
        })?;
        self.started.lock().unwrap().insert(backend_id.clone(), started.clone());
        tracing::info!(backend_id, address = started.address, "container started");
        Ok(started)
    }

    async fn stop(&self, backend_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let _guard = self.locks.lock(backend_id).await;
        let name = self.container_name(backend_id);
        let Some(container) = self.inspect_container(backend_id).await? else { return Ok(()) };
        if container.state.as_ref().and_then(|s| s.running) != Some(true) {
            return Ok(());
        }
        // By id, not name: exactly the container whose labels were just checked.
        let name = container.id.clone().unwrap_or(name);
        let result = if grace.is_zero() {
            self.docker.kill_container(&name, Some(KillContainerOptions { signal: "SIGKILL".into() })).await
        } else {
            // The engine counts whole seconds; round up so the backend never gets less than asked.
            let seconds = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
            let options = StopContainerOptions { t: Some(seconds.min(i32::MAX as u64) as i32), signal: None };
            self.docker.stop_container(&name, Some(options)).await
        };
        match result {
            Ok(()) => {}
            // Gone or already stopped in the meantime: that is what was asked.
            Err(err) if matches!(status_code(&err), Some(304 | 404 | 409)) => {}
            Err(err) => return Err(unavailable(err)),
        }
        // A kill returns before the container is reaped; wait for the engine to see the exit.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.inspect_container(backend_id).await? {
                Some(container) if container.state.as_ref().and_then(|s| s.running) == Some(true) => {}
                Some(container) => {
                    self.report_exit(backend_id, &container);
                    return Ok(());
                }
                None => return Ok(()),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::internal(format!("container {name} still runs after being killed")));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn remove(&self, backend_id: &str) -> Result<(), RuntimeError> {
        let Some(container) = self.inspect_container(backend_id).await? else {
            self.started.lock().unwrap().remove(backend_id);
            return Ok(());
        };
        let sandbox = sandbox_of(&container).map(String::from);
        // Killed first so its exit code is reported before it disappears.
        self.stop(backend_id, Duration::ZERO).await?;
        let _guard = self.locks.lock(backend_id).await;
        // By id: the container whose labels say it is this instance's, nothing else of that name.
        let name = container.id.unwrap_or_else(|| self.container_name(backend_id));
        tracing::info!(backend_id, container = name, instance = self.options.instance, "removing container");
        force_remove(&self.docker, &name).await.map_err(unavailable)?;
        // Its sandbox served it alone and goes with it.
        if let Some(sandbox) = sandbox {
            remove_container(&self.docker, &sandbox).await;
        }
        self.started.lock().unwrap().remove(backend_id);
        self.hub.removed(backend_id);
        Ok(())
    }

    async fn inspect(&self, backend_id: &str) -> Result<BackendInfo, RuntimeError> {
        match self.inspect_container(backend_id).await? {
            Some(container) => {
                let address = self.address_of(backend_id, &container).await;
                Ok(self.info(backend_id, &container, address))
            }
            None => Err(RuntimeError::BackendNotFound(backend_id.to_string())),
        }
    }

    async fn list(&self) -> Result<Vec<BackendInfo>, RuntimeError> {
        let ids = list_backend_ids(&self.docker, &self.options.instance).await.map_err(unavailable)?;
        let infos = futures::stream::iter(ids)
            .map(|id| async move {
                let Some(container) = self.inspect_container(&id).await? else { return Ok(None) };
                let address = self.address_of(&id, &container).await;
                Ok(Some(self.info(&id, &container, address)))
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
        // A container removed between the listing and its inspect is simply not there any more.
        infos.into_iter().filter_map(Result::transpose).collect()
    }

    async fn events(&self) -> Result<EventStream, RuntimeError> {
        Ok(self.hub.subscribe())
    }

    async fn stats(&self, backend_id: &str, interval: Duration) -> Result<StatsStream, RuntimeError> {
        if self.inspect_container(backend_id).await?.is_none() {
            return Err(RuntimeError::BackendNotFound(backend_id.to_string()));
        }
        let docker = self.docker.clone();
        let name = self.container_name(backend_id);
        let stream = async_stream::stream! {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                let running = match docker.inspect_container(&name, None::<InspectContainerOptions>).await {
                    Ok(container) => container.state.and_then(|s| s.running).unwrap_or(false),
                    Err(err) if status_code(&err) == Some(404) => false,
                    Err(err) => {
                        yield Err(unavailable(err));
                        break;
                    }
                };
                if !running {
                    break;
                }
                // One-shot: a single sample now, instead of the engine's own 1 s cadence.
                let options = StatsOptions { stream: false, one_shot: true };
                match docker.stats(&name, Some(options)).next().await {
                    Some(Ok(stats)) => yield Ok(stats_from_docker(&stats)),
                    Some(Err(err)) if status_code(&err) == Some(404) => break,
                    Some(Err(err)) => {
                        yield Err(unavailable(err));
                        break;
                    }
                    None => break,
                }
            }
        };
        Ok(Box::pin(stream))
    }

    async fn shutdown(&self) {
        // Containers keep running: a restarted executor adopts them by label.
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for DockerRuntime {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

pub(super) fn label_filters(instance: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        vec![format!("{LABEL_MANAGED}=true"), format!("{LABEL_EXECUTOR}={instance}")],
    )])
}

async fn list_backend_ids(docker: &Docker, instance: &str) -> Result<Vec<String>, DockerError> {
    let options = ListContainersOptions { all: true, filters: Some(label_filters(instance)), ..Default::default() };
    let containers = docker.list_containers(Some(options)).await?;
    Ok(containers.into_iter().filter_map(|c| c.labels.and_then(|mut labels| labels.remove(LABEL_BACKEND_ID))).collect())
}
