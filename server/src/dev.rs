//! `hangar-server dev`: the embedded all-in-one. A controller on SQLite, a proxy, and one drone
//! attached over real gRPC, in one process, for trying Hangar on a laptop.

use crate::controller::{Controller, ControllerConfig, RunningController};
use crate::proxy::{Proxy, ProxyConfig, RunningProxy};
use crate::store;
use anyhow::Context;
use hangar_executor::drone::{self, DroneConfig, DroneHandle};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub struct DevOptions {
    pub listen: SocketAddr,
    /// Where the HTTP proxy listens (port 0 picks a free one).
    pub proxy_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub drone_name: String,
    pub controller: ControllerConfig,
}

pub struct DevCluster {
    pub controller: RunningController,
    pub proxy: RunningProxy,
    pub drone: DroneHandle,
    pub drone_node_id: String,
    pub drone_name: String,
    /// "docker" or "process".
    pub runtime: &'static str,
}

impl DevCluster {
    pub async fn start(options: DevOptions) -> anyhow::Result<DevCluster> {
        std::fs::create_dir_all(&options.data_dir)
            .with_context(|| format!("cannot create data dir {}", options.data_dir.display()))?;
        let database = sqlite_url(&options.data_dir.join("hangar.db"));
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
        let controller = Controller::start(store, controller_config, listener).await?;
        let proxy = Proxy::start(ProxyConfig::new(vec![controller.url()], "dev-proxy"), proxy_listener).await?;

        let drone_name = options.drone_name.clone();
        let mut config = DroneConfig::new(vec![controller.url()], options.drone_name);
        config.heartbeat_interval = controller.registry().config().heartbeat_interval;
        let runtime = hangar_executor::executor_command::docker_or_process("dev").await;
        let runtime_kind = runtime.kind().as_str();
        config.runtime = Some(runtime);
        // The drone's journal lives next to the controller's database, so a restarted dev
        // cluster resumes its backends.
        config.data_dir = Some(options.data_dir.join("drone"));
        let drone = drone::spawn(config);
        let drone_node_id = tokio::time::timeout(std::time::Duration::from_secs(30), drone.attached())
            .await
            .context("the embedded drone did not attach within 30 s")?;
        Ok(DevCluster { controller, proxy, drone, drone_node_id, drone_name, runtime: runtime_kind })
    }

    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.proxy.shutdown().await;
        self.drone.shutdown().await;
        self.controller.shutdown().await
    }
}

pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// What `dev` prints once it is up: where it listens and what to try next.
pub fn banner(cluster: &DevCluster, data_dir: &Path) -> String {
    let addr = cluster.controller.local_addr();
    format!(
        "\nHangar dev is running.\n\
         \x20 controller  {url}   (gRPC, reflection on)\n\
         \x20 proxy       {proxy}   (HTTP: connection URLs)\n\
         \x20 drone       {name} (node {drone}, {runtime} runtime)\n\
         \x20 data        {data}\n\n\
         Try next, in another terminal:\n\
         \x20 cargo run -p hangar-client -- --controller {url} nodes list\n\
         \x20 grpcurl -plaintext {addr} list\n\n\
         Stop with Ctrl-C.\n",
        url = cluster.controller.url(),
        proxy = cluster.proxy.url(),
        name = cluster.drone_name,
        runtime = cluster.runtime,
        drone = cluster.drone_node_id,
        data = data_dir.display(),
    )
}
