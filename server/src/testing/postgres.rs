//! A throwaway PostgreSQL server: `initdb` in a temporary directory, `postgres` on a free port on
//! 127.0.0.1 with its socket in that directory, a fresh database per test, and everything gone
//! when the cluster is dropped — or when the test process dies, however it dies.
//!
//! ```no_run
//! # async fn example() -> Result<(), hangar_server::testing::PgClusterError> {
//! let cluster = hangar_server::testing::PgCluster::shared().await?;
//! let url = cluster.create_database().await?; // postgres://postgres@127.0.0.1:PORT/test_…
//! # Ok(()) }
//! ```

use sqlx::Connection;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
#[error("PostgreSQL test cluster: {0}")]
pub struct PgClusterError(String);

fn fail(context: impl std::fmt::Display, error: impl std::fmt::Display) -> PgClusterError {
    PgClusterError(format!("{context}: {error}"))
}

/// Runs the postmaster and watches the pipe from the test process: a line on it means "stop"
/// (the cluster is restarted later), end of file means the test process is gone — dropped the
/// cluster or died, even by SIGKILL — so the server is shut down and its directory removed.
/// A static cluster is never dropped; this is what cleans up after it.
const SUPERVISOR: &str = r#"
"$0" "$@" >>"$HANGAR_PG_ROOT/postgres.log" 2>&1 &
pid=$!
if read -r _line; then
    kill -INT "$pid"; wait "$pid"
else
    kill -QUIT "$pid"; wait "$pid"; rm -rf "$HANGAR_PG_ROOT"
fi
"#;

/// Time allowed for the server to accept connections after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct PgCluster {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    /// Who runs `initdb` and `postgres`: they refuse to run as root, so when we are root they
    /// run as the `postgres` user.
    run_as: Option<(u32, u32)>,
    server: Mutex<Option<Server>>,
}

struct Server {
    supervisor: Child,
    control: ChildStdin,
}

impl PgCluster {
    /// Creates a cluster with `initdb` and starts it on a free port.
    pub async fn new() -> Result<PgCluster, PgClusterError> {
        let bin = postgres_bin_dir()?;
        let run_as = postgres_user_if_root()?;
        let root = std::env::temp_dir().join(format!("hangar-pg-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&root).map_err(|e| fail(format_args!("create {}", root.display()), e))?;
        let mut cluster = PgCluster { root, bin, port: 0, run_as, server: Mutex::new(None) };
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&cluster.root, Some(uid), Some(gid))
                .map_err(|e| fail(format_args!("chown {}", cluster.root.display()), e))?;
        }
        cluster.initdb().await?;
        // Another process may take the free port between our probe and the server's bind.
        let mut last_error = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.start().await {
                Ok(()) => return Ok(cluster),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// One cluster per test process, started on first use; each test takes its own database
    /// with `create_database`. It is shut down and removed when the process exits.
    pub async fn shared() -> Result<&'static PgCluster, PgClusterError> {
        static SHARED: tokio::sync::OnceCell<PgCluster> = tokio::sync::OnceCell::const_new();
        SHARED.get_or_try_init(PgCluster::new).await
    }

    /// The superuser's URL for the `postgres` database.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    pub fn database_url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory that holds the cluster's data and socket; removed on drop.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates an empty database with a fresh name and returns its URL.
    pub async fn create_database(&self) -> Result<String, PgClusterError> {
        let name = format!("test_{:016x}", rand::random::<u64>());
        let mut admin = sqlx::PgConnection::connect(&self.url()).await.map_err(|e| fail("connect", e))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .map_err(|e| fail(format_args!("create database {name}"), e))?;
        admin.close().await.ok();
        Ok(self.database_url(&name))
    }

    /// Shuts the server down (fast shutdown: open connections are cut); data is kept for `start`.
    pub async fn stop(&self) -> Result<(), PgClusterError> {
        let Some(mut server) = self.server.lock().expect("cluster lock").take() else {
            return Ok(());
        };
        writeln!(server.control, "stop").map_err(|e| fail("signal the supervisor", e))?;
        tokio::task::spawn_blocking(move || server.supervisor.wait())
            .await
            .map_err(|e| fail("wait for shutdown", e))?
            .map_err(|e| fail("wait for shutdown", e))?;
        Ok(())
    }

    /// Starts the server on the cluster's port and waits until it accepts connections; nothing
    /// happens if it is running.
    pub async fn start(&self) -> Result<(), PgClusterError> {
        if self.server.lock().expect("cluster lock").is_some() {
            return Ok(());
        }
        let port = self.port.to_string();
        let (data, sockets) = (self.root.join("data"), self.root.join("sockets"));
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", SUPERVISOR])
            .arg(self.bin.join("postgres"))
            .args(["-D".as_ref(), data.as_os_str(), "-k".as_ref(), sockets.as_os_str()])
            .args(["-p", &port, "-c", "listen_addresses=127.0.0.1"])
            // Durability is pointless for a throwaway server and costs most of its time.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=32MB"])
            .env("HANGAR_PG_ROOT", &self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C meant for the test runner must not skip cleanup.
            .process_group(0);
        self.as_postgres(&mut command);
        std::fs::create_dir_all(&sockets).map_err(|e| fail("create socket directory", e))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&sockets, Some(uid), Some(gid)).map_err(|e| fail("chown sockets", e))?;
        }
        let mut supervisor = command.spawn().map_err(|e| fail("spawn postgres", e))?;
        let control = supervisor.stdin.take().expect("piped stdin");
        *self.server.lock().expect("cluster lock") = Some(Server { supervisor, control });

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match sqlx::PgConnection::connect(&self.url()).await {
                Ok(connection) => {
                    connection.close().await.ok();
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline || !self.server_alive() => {
                    self.kill();
                    return Err(fail(
                        format_args!("postgres on port {port} did not come up ({e}); log:\n{}", self.log_tail()),
                        "giving up",
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    /// `stop` then `start`, as a database failover or restart looks to clients.
    pub async fn restart(&self) -> Result<(), PgClusterError> {
        self.stop().await?;
        self.start().await
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn initdb(&self) -> Result<(), PgClusterError> {
        let mut command = Command::new(self.bin.join("initdb"));
        command
            .arg("-D")
            .arg(self.root.join("data"))
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
            .stdin(Stdio::null());
        self.as_postgres(&mut command);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .map_err(|e| fail("initdb", e))?
            .map_err(|e| fail("run initdb", e))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(fail("initdb", format_args!("{}: {stderr}", output.status)));
        }
        Ok(())
    }

    fn as_postgres(&self, command: &mut Command) {
        command.env("LC_ALL", "C").env_remove("PGDATA");
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid).env("HOME", &self.root).current_dir(&self.root);
        }
    }

    fn server_alive(&self) -> bool {
        let mut server = self.server.lock().expect("cluster lock");
        server.as_mut().is_some_and(|s| matches!(s.supervisor.try_wait(), Ok(None)))
    }

    /// Immediate shutdown, keeping the data directory.
    fn kill(&self) {
        if let Some(mut server) = self.server.lock().expect("cluster lock").take() {
            writeln!(server.control, "stop").ok();
            drop(server.control);
            server.supervisor.wait().ok();
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(server) = self.server.get_mut().expect("cluster lock").take() {
            let Server { mut supervisor, control } = server;
            // End of file on its stdin tells the supervisor to stop postgres and remove the tree.
            drop(control);
            supervisor.wait().ok();
        }
        std::fs::remove_dir_all(&self.root).ok();
    }
}

/// `HANGAR_PG_BIN` if set, else the newest `/usr/lib/postgresql/*/bin` that has `initdb`.
fn postgres_bin_dir() -> Result<PathBuf, PgClusterError> {
    if let Some(dir) = std::env::var_os("HANGAR_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let base = Path::new("/usr/lib/postgresql");
    let entries =
        std::fs::read_dir(base).map_err(|e| fail(format_args!("find PostgreSQL in {}", base.display()), e))?;
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
        .ok_or_else(|| fail(format_args!("no {}/*/bin/initdb", base.display()), "set HANGAR_PG_BIN"))
}

fn postgres_user_if_root() -> Result<Option<(u32, u32)>, PgClusterError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")
        .map_err(|e| fail("look up the postgres user", e))?
        .ok_or_else(|| fail("running as root", "initdb refuses root and there is no `postgres` user"))?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

fn free_port() -> Result<u16, PgClusterError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| fail("find a free port", e))?;
    Ok(listener.local_addr().map_err(|e| fail("find a free port", e))?.port())
}
