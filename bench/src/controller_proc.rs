//! The controller under test for the scale benchmarks: the release `hangar-server controller`
//! binary as a child process, on SQLite in a temporary directory (or, with `--postgres`, on a
//! throwaway PostgreSQL cluster that `initdb` makes, `hangar_server::testing::PgCluster`), so
//! that its CPU and memory are its own and read from `/proc`.
//!
//! Per-caller limits are off (`--rate-limit 0` and friends): every simulated drone and caller of
//! the benchmark comes from 127.0.0.1, which the limits would count as one caller.

use crate::procs;
use hangar_server::testing::PgCluster;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

/// Options of the controller child.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerOpts {
    /// The `hangar-server` binary (default: next to this one, as `scripts/bench` builds both).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Where the SQLite database goes. The default, a tmpfs, takes the disk's fsync out of the
    /// figures; give a disk directory (e.g. /var/tmp) to include it.
    #[arg(long, default_value = "/dev/shm")]
    pub data_dir: PathBuf,
    /// Store on PostgreSQL (a throwaway cluster: initdb, fsync off) instead of SQLite.
    #[arg(long)]
    pub postgres: bool,
}

pub struct ControllerProc {
    child: Child,
    pub pid: u32,
    pub url: String,
    dir: tempfile::TempDir,
    /// The PostgreSQL cluster the controller's database is on, shared by the controllers of a
    /// run and stopped after the last of them.
    _postgres: Option<Arc<PgCluster>>,
}

impl ControllerProc {
    /// Starts a controller with `extra` flags (liveness timings) and waits until it answers.
    pub async fn start(opts: &ControllerOpts, extra: &[&str]) -> anyhow::Result<ControllerProc> {
        Ok(Self::start_many(opts, extra, 1).await?.remove(0))
    }

    /// Starts `count` controllers on one database: with `--postgres` they share it as a
    /// deployment does; on SQLite only one controller may run.
    pub async fn start_many(
        opts: &ControllerOpts,
        extra: &[&str],
        count: usize,
    ) -> anyhow::Result<Vec<ControllerProc>> {
        anyhow::ensure!(count == 1 || opts.postgres, "several controllers need --postgres (SQLite serves one)");
        let postgres = match opts.postgres {
            true => {
                let cluster = PgCluster::new().await?;
                let url = cluster.create_database().await?;
                Some((Arc::new(cluster), url))
            }
            false => None,
        };
        let mut controllers = Vec::with_capacity(count);
        for _ in 0..count {
            controllers.push(Self::start_one(opts, extra, postgres.clone()).await?);
        }
        Ok(controllers)
    }

    async fn start_one(
        opts: &ControllerOpts,
        extra: &[&str],
        postgres: Option<(Arc<PgCluster>, String)>,
    ) -> anyhow::Result<ControllerProc> {
        let bin = server_binary(opts.server_bin.as_deref())?;
        let dir = tempfile::Builder::new().prefix("hangar-bench-").tempdir_in(&opts.data_dir)?;
        let port = procs::free_port()?;
        let mut command = Command::new(&bin);
        command
            .arg("controller")
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg(format!("--data-dir={}", dir.path().display()))
            .args(["--rate-limit=0", "--rate-burst=0", "--max-concurrent-calls=0", "--max-watches=0"])
            .args(["--reflection=off", "--admin-listen=off"])
            .args(extra)
            .args(postgres.as_ref().map(|(_, url)| format!("--database={url}")))
            .env("RUST_LOG", std::env::var("HANGAR_BENCH_CONTROLLER_LOG").unwrap_or_else(|_| "warn".into()))
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("controller.log"))?));
        let mut child = procs::spawn_owned(command)?;
        let pid = child.id().ok_or_else(|| anyhow::anyhow!("the controller exited at once"))?;
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if Endpoint::from_shared(url.clone())?.connect().await.is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.path().join("controller.log")).unwrap_or_default();
                anyhow::bail!("the controller exited with {status}:\n{log}");
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the controller did not start within 30s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(ControllerProc { child, pid, url, dir, _postgres: postgres.map(|(cluster, _)| cluster) })
    }

    /// A new HTTP/2 connection to the controller.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        Ok(Endpoint::from_shared(self.url.clone())?.tcp_nodelay(true).http2_adaptive_window(true).connect().await?)
    }

    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        procs::cpu_seconds(self.pid)
    }

    pub fn rss_mib(&self) -> anyhow::Result<f64> {
        Ok(procs::rss_bytes(self.pid)? as f64 / (1024.0 * 1024.0))
    }

    /// Bytes of the SQLite database file, and of its write-ahead log (whose file keeps its
    /// high-water mark between checkpoints, so it is reported apart).
    pub fn db_bytes(&self) -> (u64, u64) {
        let len = |name: &str| std::fs::metadata(self.dir.path().join(name)).map_or(0, |m| m.len());
        (len("hangar.db"), len("hangar.db-wal"))
    }

    /// Copies the controller's log to `$HANGAR_BENCH_KEEP_LOG.PID`, when that is set, before
    /// the temporary directory goes.
    fn keep_log(&self) {
        if let Ok(path) = std::env::var("HANGAR_BENCH_KEEP_LOG") {
            let _ = std::fs::copy(self.dir.path().join("controller.log"), format!("{path}.{}", self.pid));
        }
    }

    /// Lines of the controller's log (stderr) that contain `needle`.
    pub fn log_lines_containing(&self, needle: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join("controller.log"))
            .map(|log| log.lines().filter(|l| l.contains(needle)).count())
            .unwrap_or(0)
    }

    /// Stops the controller with SIGTERM, as an operator would, and returns its database's
    /// bytes once it has exited, with the WAL checkpointed into the database file (the
    /// controller's last connection usually does that as it closes; when a WAL is left, the
    /// `sqlite3` shell folds it in, so that every run measures the same thing).
    pub async fn stop_gracefully(mut self) -> anyhow::Result<u64> {
        self.keep_log();
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(status) => anyhow::ensure!(status?.success(), "the controller did not exit cleanly on SIGTERM"),
            Err(_) => anyhow::bail!("the controller did not exit within 20s of SIGTERM"),
        }
        if self.db_bytes().1 > 0 {
            let db = self.dir.path().join("hangar.db");
            let checkpoint = Command::new("sqlite3").arg(&db).arg("PRAGMA wal_checkpoint(TRUNCATE);").output().await;
            anyhow::ensure!(
                checkpoint.is_ok_and(|o| o.status.success()) && self.db_bytes().1 == 0,
                "the controller left a WAL behind and `sqlite3` could not fold it in (apt-get install sqlite3)"
            );
        }
        Ok(self.db_bytes().0)
    }

    pub async fn stop(mut self) {
        self.keep_log();
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Samples the controllers' CPU and RSS: average cores over a window and the largest RSS seen,
/// both summed over the controllers of the run.
pub struct Usage {
    start_cpu: f64,
    start: Instant,
    pub peak_rss_mib: f64,
}

impl Usage {
    pub fn begin(controllers: &[ControllerProc]) -> anyhow::Result<Usage> {
        let mut usage = Usage { start_cpu: cpu_seconds(controllers)?, start: Instant::now(), peak_rss_mib: 0.0 };
        usage.sample(controllers);
        Ok(usage)
    }

    pub fn sample(&mut self, controllers: &[ControllerProc]) {
        if let Ok(rss) = controllers.iter().map(ControllerProc::rss_mib).sum::<anyhow::Result<f64>>() {
            self.peak_rss_mib = self.peak_rss_mib.max(rss);
        }
    }

    /// Average cores since `begin`.
    pub fn cores(&self, controllers: &[ControllerProc]) -> anyhow::Result<f64> {
        Ok((cpu_seconds(controllers)? - self.start_cpu) / self.start.elapsed().as_secs_f64())
    }
}

fn cpu_seconds(controllers: &[ControllerProc]) -> anyhow::Result<f64> {
    controllers.iter().map(ControllerProc::cpu_seconds).sum()
}

/// The `hangar-server` binary to start: `explicit` (from `--server-bin`), or the one next to this
/// executable; an error saying how to get it if it is not there.
pub fn server_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let bin = match explicit {
        Some(bin) => bin.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("hangar-server"),
    };
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it (`cargo build --release -p hangar-server`) or pass --server-bin",
        bin.display()
    );
    Ok(bin)
}
