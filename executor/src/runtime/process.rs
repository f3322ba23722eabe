//! The process runtime: each backend is a local child process in its own process group, with the
//! same environment contract as a container. It is what `hangar-server dev` uses where no Docker
//! engine answers.
//!
//! `spec.image` is the path of the executable — the "image"'s ENTRYPOINT with no CMD — or the
//! name of an alias the runtime was given ([`ProcessAlias`]: an executable and its first
//! arguments; `hangar-server dev` names its demo backend `hangar-demo`, as its docker image is
//! named). The backend runs `command[0]` with `command[1..]` when `command` is set (it replaces
//! the entrypoint, alias included), else the image's program with the alias's arguments; `args`
//! follow either ([`BackendSpec::argv`] without aliases). The runtime picks a free port on
//! 127.0.0.1 and passes it as `PORT` (with an advertised host, [`ProcessRuntime::advertising`]: a
//! port free on every interface, reported at that host). Backends live and die with the executor:
//! a process cannot be re-adopted after a restart, so shutdown kills every process group, and a
//! new executor lists nothing.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::locks::BackendLocks;
use super::{
    BackendInfo, BackendSpec, BackendState, Capability, Condition, EventHub, EventStream, ImageReady, PullPolicy,
    Runtime, RuntimeError, RuntimeKind, Started, Stats, StatsStream,
};

/// How long to wait for a SIGKILLed process group leader to be reaped before calling it a bug.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
struct Exit {
    code: i32,
    at: DateTime<Utc>,
}

struct ProcessBackend {
    pid: i32,
    started: Started,
    started_at: DateTime<Utc>,
    /// Set once by the reaper.
    exit: watch::Receiver<Option<Exit>>,
}

impl ProcessBackend {
    fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    fn info(&self, backend_id: &str) -> BackendInfo {
        let exit = self.exit();
        BackendInfo {
            backend_id: backend_id.to_string(),
            runtime_id: self.started.runtime_id.clone(),
            state: if exit.is_some() { BackendState::Exited } else { BackendState::Running },
            exit_code: exit.map(|e| e.code),
            oom_killed: false,
            created_at: Some(self.started_at),
            started_at: Some(self.started_at),
            finished_at: exit.map(|e| e.at),
            address: self.started.address.clone(),
        }
    }
}

/// An image name that stands for a local executable and the arguments that come first, so a
/// name means the same backend whichever runtime runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessAlias {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Runs backends as child processes.
pub struct ProcessRuntime {
    aliases: HashMap<String, ProcessAlias>,
    hub: EventHub,
    backends: Mutex<HashMap<String, Arc<ProcessBackend>>>,
    locks: BackendLocks,
    /// Owns the reapers.
    tasks: TaskTracker,
    cancel: CancellationToken,
    /// The host backends are reported at (`HOST:PORT`) instead of 127.0.0.1, so that a proxy on
    /// another host reaches them ([`ProcessRuntime::advertising`]).
    advertise_host: Option<String>,
}

impl Default for ProcessRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessRuntime {
    pub fn new() -> Self {
        Self::with_aliases(HashMap::new())
    }

    /// A runtime where each name of `aliases` (also with `:latest` after it) runs its executable.
    pub fn with_aliases(aliases: HashMap<String, ProcessAlias>) -> Self {
        ProcessRuntime {
            aliases,
            hub: EventHub::default(),
            backends: Mutex::new(HashMap::new()),
            locks: BackendLocks::default(),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            advertise_host: None,
        }
    }

    /// Reports each backend at `host:PORT` instead of `127.0.0.1:PORT` (`hangar-drone run
    /// --advertise-host`): a proxy forwards to the address a drone reports, so without this only a
    /// proxy on the drone's own host reaches its backends. The port is then picked free on every
    /// interface, and the backend must listen on every interface (`0.0.0.0:$PORT`), as the demo
    /// and test backends do.
    pub fn advertising(mut self, host: impl Into<String>) -> Self {
        self.advertise_host = Some(host.into());
        self
    }

    /// The executable `image` names and the arguments that precede the spec's.
    fn resolve<'a>(&'a self, image: &'a str) -> (&'a Path, &'a [String]) {
        let alias = self.aliases.get(image).or_else(|| self.aliases.get(image.strip_suffix(":latest")?));
        match alias {
            Some(alias) => (&alias.program, &alias.args),
            None => (Path::new(image), &[]),
        }
    }

    fn get(&self, backend_id: &str) -> Option<Arc<ProcessBackend>> {
        self.backends.lock().unwrap().get(backend_id).cloned()
    }

    /// SIGTERM to the group, SIGKILL after `grace`; returns once the leader is reaped.
    async fn terminate(&self, backend_id: &str, backend: &ProcessBackend, grace: Duration) -> Result<(), RuntimeError> {
        let mut exit = backend.exit.clone();
        if exit.borrow().is_some() {
            return Ok(());
        }
        let group = Pid::from_raw(backend.pid);
        if !grace.is_zero() {
            signal_group(group, Signal::SIGTERM);
            if tokio::time::timeout(grace, exit.wait_for(Option::is_some)).await.is_ok() {
                return Ok(());
            }
            tracing::info!(backend_id, ?grace, "backend ignored SIGTERM for the grace period; killing it");
        }
        signal_group(group, Signal::SIGKILL);
        match tokio::time::timeout(KILL_TIMEOUT, exit.wait_for(Option::is_some)).await {
            Ok(_) => Ok(()),
            Err(_) => {
                Err(RuntimeError::internal(format!("backend {backend_id} (pid {}) survived SIGKILL", backend.pid)))
            }
        }
    }
}

fn signal_group(group: Pid, signal: Signal) {
    // ESRCH: the group is already gone, which is what we wanted.
    if let Err(err) = killpg(group, signal)
        && err != nix::errno::Errno::ESRCH
    {
        tracing::warn!(%group, ?signal, %err, "could not signal process group");
    }
}

/// A missing executable cannot be pulled: with ALWAYS that is a failed pull, otherwise not found.
fn missing_executable(image: &str, policy: PullPolicy, message: String) -> RuntimeError {
    match policy {
        PullPolicy::Always => RuntimeError::ImagePullFailed { image: image.into(), message },
        _ => RuntimeError::ImageNotFound { image: image.into(), message },
    }
}

fn free_port(any_interface: bool) -> Result<u16, RuntimeError> {
    // The port is free when we look; another process could take it before the backend binds it.
    // The window is small and the backend then fails loudly, which is acceptable for a dev runtime.
    let bind = if any_interface { "0.0.0.0:0" } else { "127.0.0.1:0" };
    let listener = std::net::TcpListener::bind(bind).map_err(RuntimeError::internal)?;
    Ok(listener.local_addr().map_err(RuntimeError::internal)?.port())
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    fn capabilities(&self) -> Vec<Capability> {
        // No cgroups here: limits cannot be enforced and OOM kills cannot be told apart.
        vec![Capability::PrepareImage, Capability::Stats, Capability::Events]
    }

    async fn status(&self) -> Vec<Condition> {
        vec![
            Condition::new("RuntimeReachable", true, "LocalProcesses", "child processes of the executor"),
            Condition::new("RuntimeReady", true, "LocalProcesses", ""),
        ]
    }

    async fn prepare_image(&self, image: &str, policy: PullPolicy) -> Result<ImageReady, RuntimeError> {
        // Nothing can be pulled: the "image" is an executable that must already be there.
        let (program, _) = self.resolve(image);
        match std::fs::metadata(program) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {
                let path = std::fs::canonicalize(program).map_err(RuntimeError::internal)?;
                Ok(ImageReady { image_id: path.display().to_string(), pulled: false })
            }
            Ok(_) => Err(missing_executable(image, policy, "not an executable file".into())),
            Err(err) => Err(missing_executable(image, policy, err.to_string())),
        }
    }

    async fn start(&self, spec: BackendSpec) -> Result<Started, RuntimeError> {
        spec.validate()?;
        let backend_id = spec.backend_id.clone();
        let _guard = self.locks.lock(&backend_id).await;
        if let Some(existing) = self.get(&backend_id) {
            return Ok(existing.started.clone());
        }
        if !spec.resources.eq(&Default::default()) {
            tracing::warn!(backend_id, "the process runtime cannot enforce resource limits; ignoring them");
        }
        let port = free_port(self.advertise_host.is_some())?;
        let (program, leading_args) = match spec.command.split_first() {
            Some((program, rest)) => (Path::new(program.as_str()), rest),
            None => self.resolve(&spec.image),
        };
        let mut command = tokio::process::Command::new(program);
        command.args(leading_args).args(&spec.args).env_clear().envs(&spec.env).env("PORT", port.to_string());
        if !spec.env.contains_key("PATH")
            && let Some(path) = std::env::var_os("PATH")
        {
            command.env("PATH", path);
        }
        // Own process group: a stop reaches every process the backend forked.
        command.process_group(0).stdin(Stdio::null());
        // If the process running this runtime dies (even by SIGKILL), the kernel kills the
        // backend: an orphan would keep serving a key whose lease is about to be handed to
        // another drone. (Linux: the signal follows the death of the spawning thread, which is a
        // runtime worker thread that lives as long as the process.)
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let mut child = command.spawn().map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound if spec.command.is_empty() => {
                RuntimeError::ImageNotFound { image: spec.image.clone(), message: "no such executable".into() }
            }
            _ => RuntimeError::StartFailed {
                backend_id: backend_id.clone(),
                message: format!("cannot run {}: {err}", program.display()),
            },
        })?;
        let pid = child.id().ok_or_else(|| RuntimeError::internal("spawned child has no pid"))? as i32;
        let host = self.advertise_host.as_deref().unwrap_or("127.0.0.1");
        let address = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let started = Started { runtime_id: pid.to_string(), address };
        let (exit_tx, exit_rx) = watch::channel(None);
        let backend = Arc::new(ProcessBackend { pid, started: started.clone(), started_at: Utc::now(), exit: exit_rx });
        self.backends.lock().unwrap().insert(backend_id.clone(), backend);
        // STARTED is published before the reaper exists, so it always precedes EXITED.
        self.hub.started(&backend_id);
        let hub = self.hub.clone();
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                status = child.wait() => {
                    let code = match status {
                        Ok(status) => exit_code(status),
                        Err(err) => {
                            tracing::error!(backend_id, %err, "waiting for backend failed");
                            -1
                        }
                    };
                    let _ = exit_tx.send(Some(Exit { code, at: Utc::now() }));
                    hub.exited(&backend_id, Some(code), false);
                }
                _ = cancel.cancelled() => {}
            }
        });
        tracing::info!(backend_id = spec.backend_id, pid, address = started.address, "process backend started");
        Ok(started)
    }

    async fn stop(&self, backend_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let _guard = self.locks.lock(backend_id).await;
        match self.get(backend_id) {
            Some(backend) => self.terminate(backend_id, &backend, grace).await,
            None => Ok(()),
        }
    }

    async fn remove(&self, backend_id: &str) -> Result<(), RuntimeError> {
        let _guard = self.locks.lock(backend_id).await;
        let Some(backend) = self.get(backend_id) else { return Ok(()) };
        self.terminate(backend_id, &backend, Duration::ZERO).await?;
        self.backends.lock().unwrap().remove(backend_id);
        self.hub.removed(backend_id);
        Ok(())
    }

    async fn inspect(&self, backend_id: &str) -> Result<BackendInfo, RuntimeError> {
        self.get(backend_id)
            .map(|backend| backend.info(backend_id))
            .ok_or_else(|| RuntimeError::BackendNotFound(backend_id.to_string()))
    }

    async fn list(&self) -> Result<Vec<BackendInfo>, RuntimeError> {
        let backends = self.backends.lock().unwrap();
        Ok(backends.iter().map(|(id, backend)| backend.info(id)).collect())
    }

    async fn events(&self) -> Result<EventStream, RuntimeError> {
        Ok(self.hub.subscribe())
    }

    async fn stats(&self, backend_id: &str, interval: Duration) -> Result<StatsStream, RuntimeError> {
        let backend = self.get(backend_id).ok_or_else(|| RuntimeError::BackendNotFound(backend_id.to_string()))?;
        let interval = interval.max(Duration::from_millis(10));
        let stream = async_stream::stream! {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                if backend.exit().is_some() {
                    break;
                }
                match proc_stats(backend.pid) {
                    Ok(stats) => yield Ok(stats),
                    // The process ended between the check and the read.
                    Err(_) if backend.exit().is_some() => break,
                    Err(err) => {
                        yield Err(err);
                        break;
                    }
                }
            }
        };
        Ok(Box::pin(stream))
    }

    async fn shutdown(&self) {
        let backends: Vec<(String, Arc<ProcessBackend>)> =
            self.backends.lock().unwrap().iter().map(|(id, b)| (id.clone(), b.clone())).collect();
        for (id, backend) in backends {
            if let Err(err) = self.terminate(&id, &backend, Duration::ZERO).await {
                tracing::error!(backend_id = id, %err, "could not kill backend on shutdown");
            }
        }
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        // Backends live and die with the runtime, also when nobody called shutdown (a failed
        // test, a panic): no orphaned process groups.
        for backend in self.backends.lock().unwrap().values() {
            if backend.exit().is_none() {
                signal_group(Pid::from_raw(backend.pid), Signal::SIGKILL);
            }
        }
        self.cancel.cancel();
    }
}

/// Cumulative CPU time, resident memory and threads of the group leader, from `/proc`. Only the
/// leader is counted: walking every process of the group on each sample costs more than it tells.
fn proc_stats(pid: i32) -> Result<Stats, RuntimeError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(RuntimeError::internal)?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state) of proc(5).
    let field = |n: usize| -> u64 { fields.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
    let ticks = (field(14) + field(15)) as u128;
    let clock_ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u128;
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    Ok(Stats {
        time: Utc::now(),
        cpu_total_ns: (ticks * 1_000_000_000 / clock_ticks) as u64,
        memory_used_bytes: field(24) * page_size,
        memory_limit_bytes: 0,
        pids: field(20),
        net_rx_bytes: 0,
        net_tx_bytes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_alias_runs_its_program_with_its_arguments_first() {
        let alias = ProcessAlias { program: "/bin/sh".into(), args: vec!["-c".into(), "exit \"$0\"".into()] };
        let runtime = ProcessRuntime::with_aliases(HashMap::from([("hello".to_string(), alias)]));
        let ready = runtime.prepare_image("hello:latest", PullPolicy::IfNotPresent).await.unwrap();
        assert!(ready.image_id.ends_with("sh"), "{ready:?}");
        let spec = BackendSpec {
            backend_id: "alias-1".into(),
            image: "hello".into(),
            // After the alias's own arguments: `$0` of the `-c` script.
            args: vec!["7".into()],
            ..Default::default()
        };
        runtime.start(spec).await.unwrap();
        let exit = hangar_testkit::eventually(Duration::from_secs(10), "the aliased program's exit", async || {
            runtime.inspect("alias-1").await.unwrap().exit_code
        })
        .await;
        assert_eq!(exit, 7);
        // Not an alias: still a path, and a missing one is not found.
        assert!(matches!(
            runtime.prepare_image("hello-not", PullPolicy::IfNotPresent).await,
            Err(RuntimeError::ImageNotFound { .. })
        ));
        runtime.shutdown().await;
    }

    /// `--command` on an alias: the spec's command replaces the alias's program and its leading
    /// arguments (as it replaces a container's ENTRYPOINT), and the spec's `--arg`s follow it.
    #[tokio::test]
    async fn a_command_replaces_an_aliased_program_and_its_arguments_follow() {
        // Were the alias run, or its arguments passed, the backend would exit 3.
        let alias = ProcessAlias { program: "/bin/sh".into(), args: vec!["-c".into(), "exit 3".into()] };
        let runtime = ProcessRuntime::with_aliases(HashMap::from([("hello".to_string(), alias)]));
        let spec = BackendSpec {
            backend_id: "alias-command-1".into(),
            image: "hello".into(),
            command: vec!["/usr/bin/env".into(), "sh".into(), "-c".into(), "exit \"$0$1\"".into()],
            // `$0` and `$1` of the command's script, in order.
            args: vec!["4".into(), "2".into()],
            ..Default::default()
        };
        runtime.start(spec).await.unwrap();
        let exit = hangar_testkit::eventually(Duration::from_secs(10), "the command's exit", async || {
            runtime.inspect("alias-command-1").await.unwrap().exit_code
        })
        .await;
        assert_eq!(exit, 42, "the command ran with both arguments, in order, instead of the alias");
        runtime.shutdown().await;
    }

    /// `--advertise-host`: the backend is reported at that host, on a port it can be reached at
    /// from there (here `localhost`, standing for the drone's own IP in scripts/cluster).
    #[tokio::test]
    async fn an_advertised_host_is_the_address_a_backend_is_reported_at() {
        let runtime = ProcessRuntime::new().advertising("localhost");
        let spec = BackendSpec {
            backend_id: "advertised-1".into(),
            image: "/bin/sh".into(),
            // Listens on every interface, as the runtime's contract asks with an advertised host.
            args: vec!["-c".into(), "exec python3 -m http.server --bind 0.0.0.0 \"$PORT\"".into()],
            ..Default::default()
        };
        let started = runtime.start(spec).await.unwrap();
        let port = started.address.strip_prefix("localhost:").expect("reported at the advertised host");
        assert!(port.parse::<u16>().is_ok(), "{}", started.address);
        hangar_testkit::eventually(
            Duration::from_secs(10),
            "the backend answering at its reported address",
            async || tokio::net::TcpStream::connect(&started.address).await.ok(),
        )
        .await;
        runtime.shutdown().await;
    }
}
