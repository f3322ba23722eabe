//! `hangar-drone executor`: serves one runtime on a Unix socket until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::runtime::Runtime;
use crate::runtime::docker::{DockerNetwork, DockerOptions, DockerRuntime, WarmSandboxes};
use crate::runtime::mock::MockRuntime;
use crate::runtime::process::ProcessRuntime;
use crate::socket::DEFAULT_MAX_MESSAGE_BYTES;
use crate::socket::server::{self, ServerOptions};

/// Which runtime runs the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuntimeChoice {
    /// Containers on the local Docker engine (labelled `hangar.backend-id`).
    Docker,
    /// Child processes of the executor; `image` is the path of the executable.
    Process,
    /// A scriptable fake for tests (see `HANGAR_MOCK_*` in the backend environment).
    Mock,
}

/// Serve `hangar.executor.v1` on a Unix socket. The drone connects to it with
/// `hangar-drone run --executor-socket PATH`.
#[derive(Args, Clone, Debug)]
#[command(after_help = "The socket is created 0600 inside a 0700 directory (created if missing; an existing \
directory must not be accessible to group or others). A stale socket left by a dead executor is replaced; a \
live one is refused. Peers are checked by uid (SO_PEERCRED).")]
pub struct ExecutorArgs {
    /// Traces of the executor's calls, joining the drone's (`--otlp-endpoint`).
    #[command(flatten)]
    pub trace: hangar_agent::telemetry::TraceArgs,

    /// Path of the Unix socket to serve on (at most 107 bytes).
    #[arg(long, value_name = "PATH", env = "HANGAR_EXECUTOR_SOCKET")]
    pub socket: PathBuf,

    /// Runtime that runs the backends.
    #[arg(long, value_enum, default_value = "docker", env = "HANGAR_EXECUTOR_RUNTIME")]
    pub runtime: RuntimeChoice,

    /// Peer uid allowed to connect; repeat for several. Default: only the executor's own uid.
    #[arg(long = "allow-uid", value_name = "UID")]
    pub allow_uids: Vec<u32>,

    /// Name of this executor instance, put on every container as the `hangar.executor` label, so
    /// several executors can share one Docker engine and each reconciles only its own.
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub instance: String,

    /// Host (IP or DNS name of this machine) that proxies on other hosts reach the backends at:
    /// they are reported at HOST:PORT instead of 127.0.0.1:PORT. Process runtime: backends must
    /// listen on every interface (0.0.0.0:$PORT). Docker runtime: their port is published on
    /// every interface of the engine's host. Without it only a proxy on this host reaches them.
    #[arg(long, value_name = "HOST", env = "HANGAR_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,

    #[command(flatten)]
    pub docker_network: DockerNetworkArgs,

    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
}

/// `--docker-network` and `--docker-addresses`, for a drone's and an executor's command line.
#[derive(Args, Debug, Clone, Default)]
pub struct DockerNetworkArgs {
    /// Docker runtime: a Docker network every backend joins, at an address of
    /// --docker-addresses, reported there (CONTAINER_IP:PORT) with nothing published on this
    /// host. For proxies on that network (an overlay network across hosts, or a bridge they
    /// share). Takes precedence over --advertise-host.
    #[arg(long, value_name = "NAME", env = "HANGAR_DOCKER_NETWORK", requires = "docker_addresses")]
    pub docker_network: Option<String>,

    /// With --docker-network: this drone's own slice of the network's subnet (CIDR, e.g.
    /// 10.20.0.64/26), which no other drone on the network uses. Addresses are handed out in turn
    /// around it, so one is given again only after every other; make it large enough that this
    /// takes longer than a key lease at your peak start rate (a proxy may route an ended
    /// backend's URL to its address until the lease runs out).
    #[arg(long, value_name = "CIDR", env = "HANGAR_DOCKER_ADDRESSES", requires = "docker_network")]
    pub docker_addresses: Option<ipnet::Ipv4Net>,

    /// Docker runtime: network sandboxes kept ready. A sandbox is a container that only holds a
    /// network namespace with port 8080 published, or with --docker-network an address of the
    /// drone's slice there (made from this executable's `sandbox` subcommand, as an image built
    /// on this host); a backend on the default port starts in one, skipping the engine's ~100 ms
    /// of making a namespace of its own. Each sandbox serves one backend, is removed with it and
    /// replaced in the background. 0: none.
    #[arg(long, value_name = "N", env = "HANGAR_DOCKER_WARM_SANDBOXES", default_value_t = 2)]
    pub docker_warm_sandboxes: usize,
}

impl DockerNetworkArgs {
    /// The runtime's network, if one was given.
    pub fn network(&self) -> Option<DockerNetwork> {
        let (name, addresses) = (self.docker_network.clone()?, self.docker_addresses?);
        Some(DockerNetwork { name, addresses })
    }
}

/// The runtime `choice` names; Docker fails clearly when no engine answers. `own_process` says
/// the runtime is the only thing in this process (an executor), so a mock may be scripted to
/// crash it for reconnect tests; a drone running a runtime in-process never allows that.
/// `advertise_host` is `--advertise-host` (process and docker runtimes), `docker` the docker
/// runtime's network and sandboxes.
pub async fn build_runtime(
    choice: RuntimeChoice,
    instance: &str,
    own_process: bool,
    advertise_host: Option<&str>,
    docker: &DockerNetworkArgs,
) -> anyhow::Result<Arc<dyn Runtime>> {
    let network = docker.network();
    if let Some(network) = &network {
        anyhow::ensure!(
            choice == RuntimeChoice::Docker,
            "--docker-network {} works with the docker runtime only (--runtime docker)",
            network.name
        );
        anyhow::ensure!(
            network.addresses.hosts().count() >= 2,
            "--docker-addresses {}: give a slice of at least two addresses (a /30 or wider)",
            network.addresses
        );
    }
    if let Some(host) = advertise_host {
        anyhow::ensure!(
            choice != RuntimeChoice::Mock,
            "--advertise-host {host} works with the process and docker runtimes: the mock runtime runs nothing \
             a proxy could reach"
        );
        anyhow::ensure!(!host.trim().is_empty(), "--advertise-host must name a host (an IP or DNS name)");
    }
    Ok(match choice {
        RuntimeChoice::Docker => {
            let options = DockerOptions {
                instance: instance.to_string(),
                advertise_host: advertise_host.map(str::to_string),
                network,
                warm_sandboxes: warm_sandboxes(docker.docker_warm_sandboxes)?,
                ..Default::default()
            };
            Arc::new(DockerRuntime::connect(options).await.context("cannot use the Docker engine")?)
        }
        RuntimeChoice::Process => match advertise_host {
            Some(host) => Arc::new(ProcessRuntime::new().advertising(host)),
            None => Arc::new(ProcessRuntime::new()),
        },
        // Only the real executor process may be told to crash itself (for reconnect tests).
        RuntimeChoice::Mock if own_process => Arc::new(MockRuntime::allowing_executor_crash()),
        RuntimeChoice::Mock => Arc::new(MockRuntime::new()),
    })
}

/// `count` warm sandboxes of an image made from this executable (its `sandbox` subcommand).
fn warm_sandboxes(count: usize) -> anyhow::Result<Option<WarmSandboxes>> {
    if count == 0 {
        return Ok(None);
    }
    let executable = std::env::current_exe().context("--docker-warm-sandboxes: cannot find this executable")?;
    Ok(Some(WarmSandboxes::of_executable(count, executable)))
}

/// Builds the runtime, binds the socket and serves until a termination signal.
pub async fn run(args: ExecutorArgs) -> anyhow::Result<()> {
    let runtime =
        build_runtime(args.runtime, &args.instance, true, args.advertise_host.as_deref(), &args.docker_network).await?;
    let stop = termination_signal();
    let listener = server::bind_socket(&args.socket)?;
    tracing::info!(socket = %args.socket.display(), runtime = %runtime.kind(), "executor serving");
    let options = ServerOptions {
        allowed_uids: args.allow_uids,
        max_message_bytes: args.max_message_bytes,
        executor_name: format!("hangar-drone executor ({})", args.instance),
    };
    server::serve(listener, runtime, options, stop).await.context("executor server failed")?;
    tracing::info!("executor stopped");
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now, before the socket is bound, and returns the
/// future that resolves on the first of them: a signal sent as soon as a client can connect must
/// stop the executor cleanly, not kill it by the default action.
fn termination_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; the executor stops only when killed");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
