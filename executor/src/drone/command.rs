//! `hangar-drone run`: attach this host to one or more controllers and keep it attached.

use super::{DroneConfig, spawn};
use crate::executor_command::{RuntimeChoice, build_runtime};
use crate::socket::client::ExecutorClient;
use anyhow::Context;
use clap::Args;
use hangar_agent::admin::{AdminListen, AdminServer};
use hangar_client::{CredentialFlags, Credentials};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    hangar-drone run --controller http://127.0.0.1:7070 --name worker-1\n  \
    hangar-drone run --controller http://ctl-a:7070 --controller http://ctl-b:7070 --name worker-1 --pool gpu\n  \
    hangar-drone run --controller https://ctl.example:7070 --name worker-1 \\\n      \
    --tls-ca ca.pem --tls-cert worker-1.pem --tls-key worker-1.key\n\n\
    Then check it with:  hangar nodes list --kind drone")]
pub struct RunArgs {
    /// Controller URL (http:// or https://); repeat (or separate with commas) to give several,
    /// tried in turn when one is unreachable.
    #[arg(long = "controller", env = "HANGAR_CONTROLLER", required = true, value_delimiter = ',')]
    controllers: Vec<String>,
    /// Token and TLS towards the controllers (docs/security.md).
    #[command(flatten)]
    credentials: CredentialFlags,
    /// Name of this drone, unique in its cluster: lowercase letters, digits and '-'. The same
    /// name reconnecting keeps its node id.
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "default")]
    cluster: String,
    #[arg(long, default_value = "default")]
    pool: String,
    /// KEY=VALUE, repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Backends this drone accepts at most.
    #[arg(long, default_value_t = 100)]
    capacity: u32,
    /// Longest wait between reconnect attempts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    max_backoff: Duration,
    /// Drive an executor over this Unix socket (start one with `hangar-drone executor --socket
    /// PATH --runtime docker|process`). Without it and without --runtime, the drone registers but
    /// runs no backends.
    #[arg(long, value_name = "PATH", env = "HANGAR_EXECUTOR_SOCKET", conflicts_with = "runtime")]
    executor_socket: Option<PathBuf>,
    /// Run backends in this process instead of through an executor socket.
    #[arg(long, value_enum)]
    runtime: Option<RuntimeChoice>,
    /// Host (IP or DNS name of this machine) that proxies on other hosts reach this drone's
    /// backends at: they are reported at HOST:PORT instead of 127.0.0.1:PORT. With --runtime
    /// process backends must listen on every interface (0.0.0.0:$PORT, as the demo backend
    /// does); with --runtime docker their port is published on every interface of the engine's
    /// host. Without it only a proxy on this host reaches them (an executor socket's executor
    /// takes its own --advertise-host).
    #[arg(long, value_name = "HOST", env = "HANGAR_ADVERTISE_HOST")]
    advertise_host: Option<String>,
    #[command(flatten)]
    docker_network: crate::executor_command::DockerNetworkArgs,
    /// Directory of the drone's journal (unacknowledged events, seen actions, its backends), so
    /// a restarted drone resumes where it stopped. Created if missing.
    #[arg(long, value_name = "DIR", env = "HANGAR_DRONE_DATA_DIR", default_value = "./hangar-drone-data")]
    data_dir: PathBuf,
    /// Address of the admin listener: /metrics (Prometheus), /healthz, and /readyz (ready once
    /// attached to a controller with the runtime answering). It is not authenticated: keep it
    /// on loopback or a private network. `off` serves none.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:7091")]
    admin_listen: AdminListen,
    #[command(flatten)]
    trace: hangar_agent::telemetry::TraceArgs,
}

impl RunArgs {
    /// Where the drone exports its traces, if anywhere.
    pub fn otlp_endpoint(&self) -> Option<&str> {
        self.trace.otlp_endpoint.as_deref()
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// Runs the drone until SIGINT/SIGTERM, or until a controller refuses it for good.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut config = DroneConfig::new(args.controllers, args.name);
    config.credentials = Credentials::from_env_and_flags(&args.credentials)?;
    // A missing certificate or a typo in a URL fails the start, not every reconnect.
    hangar_agent::check_controllers(&config.controllers, &config.credentials)?;
    config.cluster = args.cluster;
    config.pool = args.pool;
    config.labels = args.labels.into_iter().collect::<BTreeMap<_, _>>();
    config.backend_capacity = args.capacity;
    config.backoff.max = args.max_backoff;
    config.data_dir = Some(args.data_dir.clone());
    config.runtime = match (&args.executor_socket, args.runtime) {
        (Some(socket), _) => {
            let client = ExecutorClient::connect(socket, "hangar-drone").await.with_context(|| {
                format!(
                    "cannot reach the executor at {}; start one with `hangar-drone executor --socket {}`",
                    socket.display(),
                    socket.display()
                )
            })?;
            let info = client.info();
            tracing::info!(executor = %info.executor_name, runtime = %info.kind.as_str(), "executor handshake done");
            // After a restart, what the executor still runs is the ground truth.
            let running = client.reconcile().await?;
            tracing::info!(backends = running.len(), "reconciled with the executor");
            Some(std::sync::Arc::new(client))
        }
        (None, Some(choice)) => {
            // This drone's own name on what its runtime runs, so drones sharing a Docker engine
            // never reconcile each other's containers (an external executor has its --instance).
            // A data dir from before instance ids keeps the name its containers were given.
            let instance = super::instance::load_or_create(&args.data_dir, "default")
                .with_context(|| format!("cannot read or create the instance id in {}", args.data_dir.display()))?;
            tracing::info!(instance, "drone instance");
            Some(build_runtime(choice, &instance, false, args.advertise_host.as_deref(), &args.docker_network).await?)
        }
        (None, None) => None,
    };
    let runtime = config.runtime.clone();
    // Bound, and the recorder installed, before the drone starts: a taken port fails the start,
    // and the drone's first events are counted.
    let admin_listener = match args.admin_listen.0 {
        Some(addr) => {
            hangar_agent::admin::metrics_handle();
            hangar_agent::admin::describe(crate::metrics::DRONE);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--admin-listen; `off` serves no admin listener)"))?;
            Some(listener)
        }
        None => None,
    };
    let mut drone = spawn(config);
    let admin = match admin_listener {
        Some(listener) => {
            let router = hangar_agent::admin::router(super::readiness(drone.state(), runtime.clone()));
            let admin = AdminServer::serve(listener, router)?;
            // A closed stdout (a supervisor that stopped reading) must not end the drone.
            let _ = writeln!(std::io::stdout(), "admin (metrics, health) on {}", admin.url());
            Some(admin)
        }
        None => None,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        result = drone.finished() => return Ok(result?),
    }
    drone.shutdown().await;
    // The runtime's own tasks end too (the docker runtime removes the sandboxes it kept ready).
    if let Some(runtime) = runtime {
        runtime.shutdown().await;
    }
    if let Some(admin) = admin {
        admin.shutdown().await;
    }
    Ok(())
}
