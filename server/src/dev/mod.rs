//! `hangar-server dev`: the embedded all-in-one. A controller on SQLite, a proxy, and one drone
//! attached over real gRPC, in one process, for trying Hangar on a laptop. The only part of
//! `hangar-server` that embeds a drone, so it sits behind the `dev` feature: without it the
//! controller and proxy do not link the drone's runtimes.
//!
//! - [`runtime`]: Docker or local processes, and the demo backend image on them;
//! - [`demo_backend`]: `hangar-server demo-backend`, what that image runs.

pub mod demo_backend;
pub mod runtime;

use crate::controller::{Controller, ControllerConfig, RunningController};
use crate::proxy::{Proxy, ProxyConfig, RunningProxy};
use crate::store;
use anyhow::Context;
use hangar_agent::admin::{Check, Readiness};
use hangar_executor::drone::{self, DroneConfig, DroneHandle};
use hangar_executor::runtime::Runtime;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub use runtime::{DEMO_IMAGE, DemoStatus, DevRuntime};

pub struct DevOptions {
    pub listen: SocketAddr,
    /// Where the HTTP proxy listens (port 0 picks a free one).
    pub proxy_listen: SocketAddr,
    /// Where the one admin listener of the process serves `/metrics` (the controller's, the
    /// proxy's and the drone's series), `/healthz`, `/readyz` (store, proxy and drone) and the
    /// dashboard; port 0 picks a free one, `None` serves none.
    pub admin_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub drone_name: String,
    pub controller: ControllerConfig,
    pub runtime: DevRuntime,
    /// The `hangar-server` executable the demo backend runs from (the running one, for
    /// `hangar-server dev`); `None` offers no demo backend.
    pub demo_executable: Option<PathBuf>,
}

pub struct DevCluster {
    pub controller: RunningController,
    pub proxy: RunningProxy,
    pub drone: DroneHandle,
    pub drone_node_id: String,
    pub drone_name: String,
    /// The drone's instance id: the `hangar.executor` label of its containers.
    pub instance: String,
    /// "docker" or "process".
    pub runtime: &'static str,
    pub demo: DemoStatus,
    /// The drone's runtime, shut down after the drone.
    backends: Arc<dyn Runtime>,
}

impl DevCluster {
    pub async fn start(options: DevOptions) -> anyhow::Result<DevCluster> {
        std::fs::create_dir_all(&options.data_dir)
            .with_context(|| format!("cannot create data dir {}", options.data_dir.display()))?;
        let database = store::sqlite_url(&options.data_dir.join("hangar.db"));
        let store = store::open(&database).await.with_context(|| format!("cannot open {database}"))?;
        let listener = tokio::net::TcpListener::bind(options.listen).await.with_context(|| {
            format!("cannot listen on {}; is another hangar-server running? pick another with --listen", options.listen)
        })?;
        let proxy_listener = tokio::net::TcpListener::bind(options.proxy_listen).await.with_context(|| {
            format!("cannot listen on {} for the proxy; pick another with --proxy-listen", options.proxy_listen)
        })?;
        // Connect hands out URLs of this proxy.
        let mut controller_config = options.controller;
        controller_config.proxy_url = format!("http://{}", proxy_listener.local_addr()?);
        // One admin listener for the process: the controller's, ready once the proxy and the
        // drone (started after it) are too.
        let later: Arc<OnceLock<Readiness>> = Arc::default();
        if let Some(addr) = options.admin_listen {
            hangar_agent::admin::metrics_handle();
            hangar_agent::admin::describe(crate::metrics::PROXY);
            hangar_agent::admin::describe(hangar_executor::metrics::DRONE);
            controller_config.admin_listen = Some(addr);
            let later = later.clone();
            controller_config.admin_readiness = Some(Readiness::new(move || {
                let parts = later.get().cloned();
                async move {
                    match parts {
                        Some(parts) => parts.check().await,
                        None => vec![Check::failed("dev", "the proxy and the drone are starting")],
                    }
                }
            }));
        }
        let controller = Controller::start(store, controller_config, listener).await.map_err(|err| {
            if options.admin_listen.is_some() {
                err.context("pick another admin address with --admin-listen (port 0 picks a free one)")
            } else {
                err
            }
        })?;
        let proxy = Proxy::start(ProxyConfig::new(vec![controller.url()], "dev-proxy"), proxy_listener).await?;

        let drone_name = options.drone_name.clone();
        let mut config = DroneConfig::new(vec![controller.url()], options.drone_name);
        config.heartbeat_interval = controller.registry().config().heartbeat_interval;
        // The drone's journal lives next to the controller's database, so a restarted dev
        // cluster resumes its backends.
        let drone_dir = options.data_dir.join("drone");
        // Its own instance id, so that dev servers with other data dirs on the same Docker
        // engine never take each other's containers for orphans. Data dirs from before instance
        // ids keep the name every dev drone used then.
        let instance = drone::instance::load_or_create(&drone_dir, "dev")
            .with_context(|| format!("cannot read or create the drone's instance id in {}", drone_dir.display()))?;
        let (runtime, demo) = runtime::start(options.runtime, &instance, options.demo_executable.as_deref()).await?;
        let runtime_kind = runtime.kind().as_str();
        config.runtime = Some(runtime.clone());
        config.data_dir = Some(drone_dir);
        let drone = drone::spawn(config);
        let _ = later.set(proxy.readiness().and(drone::readiness(drone.state(), Some(runtime.clone()))));
        let drone_node_id = tokio::time::timeout(std::time::Duration::from_secs(30), drone.attached())
            .await
            .context("the embedded drone did not attach within 30 s")?;
        Ok(DevCluster {
            controller,
            proxy,
            drone,
            drone_node_id,
            drone_name,
            instance,
            runtime: runtime_kind,
            demo,
            backends: runtime,
        })
    }

    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.proxy.shutdown().await;
        self.drone.shutdown().await;
        // Its own tasks end too: the docker runtime removes the sandboxes it kept ready.
        self.backends.shutdown().await;
        self.controller.shutdown().await
    }
}

/// The controller URL the CLI uses when neither `--controller` nor `HANGAR_CONTROLLER` is given.
const CLI_DEFAULT_CONTROLLER: &str = "http://127.0.0.1:7070";

/// What precedes the drone's instance id in the banner.
const INSTANCE_MARK: &str = "instance ";

/// The drone's instance id (the `hangar.executor` label of every container it makes), read back
/// from [`banner`]'s text or any part of it: what tests and benchmarks need to find, and remove,
/// whatever a dev server left on the engine.
pub fn banner_instance(banner: &str) -> Option<&str> {
    let (_, rest) = banner.split_once(&format!(", {INSTANCE_MARK}"))?;
    rest.split(|c: char| c == ')' || c.is_whitespace()).next().filter(|id| !id.is_empty())
}

/// What `dev` prints once it is up: where it listens and the next commands to type.
pub fn banner(cluster: &DevCluster, data_dir: &Path) -> String {
    let url = cluster.controller.url();
    let demo = match &cluster.demo {
        DemoStatus::Ready if cluster.runtime == "docker" => {
            format!("{DEMO_IMAGE}  (local image {}, built from this binary)", runtime::DEMO_IMAGE_REFERENCE)
        }
        DemoStatus::Ready => format!("{DEMO_IMAGE}  (runs this binary's demo backend)"),
        DemoStatus::Unavailable(why) => format!("not available: {why}"),
    };
    // The CLI finds this controller by itself only on the default address.
    let export =
        if url == CLI_DEFAULT_CONTROLLER { String::new() } else { format!("  export HANGAR_CONTROLLER={url}\n") };
    format!(
        "\nHangar dev is running.\n\
         \x20 controller  {url}   (gRPC, reflection on)\n\
         \x20 proxy       {proxy}   (HTTP: connection URLs)\n\
         \x20 drone       {name} (node {drone}, {runtime} runtime, {INSTANCE_MARK}{instance})\n\
         {admin}\
         \x20 demo        {demo}\n\
         \x20 data        {data}\n\n\
         Your first backend, in another terminal (`hangar` comes from `cargo install --locked --path\n\
         client`, or alias hangar='cargo run -q -p hangar-client --'):\n\
         {export}\
         \x20 hangar connect docs/doc-1 --image {DEMO_IMAGE} --wait\n\
         \x20 curl \"$(hangar connect docs/doc-1 -o json | jq -r .url)\"   # or open that URL in a browser\n\n\
         More to try:\n\
         \x20 hangar nodes list\n\
         \x20 hangar backends list\n\
         \x20 grpcurl -plaintext {addr} list\n\n\
         Stop with Ctrl-C.\n",
        proxy = cluster.proxy.url(),
        admin = match cluster.controller.admin_url() {
            Some(url) => format!("  admin       {url}   (metrics, health, dashboard)\n"),
            None => String::new(),
        },
        name = cluster.drone_name,
        runtime = cluster.runtime,
        instance = cluster.instance,
        drone = cluster.drone_node_id,
        data = data_dir.display(),
        addr = cluster.controller.local_addr(),
    )
}

#[cfg(test)]
mod tests {
    use super::banner_instance;

    #[test]
    fn the_drones_instance_is_read_back_from_the_banner() {
        let line = "  drone       dev-drone (node drone-1, docker runtime, instance dev-4f2a9c1e)\n  demo  ...";
        assert_eq!(banner_instance(line), Some("dev-4f2a9c1e"));
        assert_eq!(banner_instance("  data        /tmp/instance x"), None, "only the drone line's mark counts");
        assert_eq!(banner_instance("  drone  d (node n, docker runtime, instance )"), None);
    }
}
