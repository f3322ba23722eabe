//! `coldstart`: how long a new session waits for its backend's first byte. Each round measures,
//! in an order that rotates between rounds, the same local image started three ways:
//!
//! - **hangar**: `Connect` with a fresh key to a real `hangar-server dev` on the Docker runtime
//!   (controller, proxy and drone in one process, the release binary), then one GET on the URL
//!   `Connect` returned, repeated until it answers 200. The proxy holds a request for a starting
//!   backend until it is READY, so normally the first GET is the one that answers;
//! - **docker run**: `docker run -d -p 127.0.0.1:PORT:8080 IMAGE` (the CLI), then GETs on the
//!   published port until one answers 200 (the host port is chosen up front, so no `docker port`
//!   call is needed: the anchor gets every advantage);
//! - **process**: as *hangar*, through a second dev instance on the process runtime.
//!
//! The image is dev's own demo image, `hangar-demo:latest`, built locally from the
//! `hangar-server` binary when dev starts: nothing is pulled. Every backend is terminated (hard)
//! and every container removed before the next measurement; one unmeasured warm-up round comes
//! first. For the Hangar runs the backend's recorded READY time splits the wait into the part
//! before READY (scheduling, the spawn's trip to the drone, the container's start, the readiness
//! probe) and the part after it (the proxy noticing, its first connection to the backend).

use crate::controller_proc;
use crate::measure::Distribution;
use crate::procs;
use crate::result::ResultLine;
use anyhow::Context;
use hangar::v1::{self, backend_service_client::BackendServiceClient};
use hangar_executor::testing::ContainerCleanup;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

#[derive(clap::Args, Debug, Clone)]
pub struct ColdstartArgs {
    /// Measured rounds; each starts one backend each way.
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    /// How long the client waits between two GETs that did not answer 200 (the same for every
    /// way of starting).
    #[arg(long, default_value = "2ms", value_parser = crate::humantime_duration)]
    pub poll: Duration,
    /// The `hangar-server` binary (default: next to this one, as `scripts/bench` builds both).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    #[arg(long, default_value = "docker")]
    pub docker_bin: String,
    /// Where the dev instances keep their SQLite databases. The default, a tmpfs, takes the
    /// disk's fsync out of the figures; give a disk directory (e.g. /var/tmp) to include it.
    #[arg(long, default_value = "/dev/shm")]
    pub data_dir: PathBuf,
    /// A smoke run (2 rounds), so that the harness cannot rot.
    #[arg(long)]
    pub quick: bool,
}

/// The image dev builds from its own binary; its backend listens on `$PORT`, 8080 by default.
const DOCKER_IMAGE: &str = "hangar-demo:latest";
/// What a Connect asks for: dev maps it to the image above (Docker) or to its own binary
/// (process runtime).
const CONNECT_IMAGE: &str = "hangar-demo";
const CONTAINER_PORT: u16 = 8080;
/// Label of the containers `docker run` starts here, so that a failed run can be cleaned up by hand.
const BENCH_LABEL: &str = "hangar.bench=coldstart";
/// Longest a single start may take before the run is declared failed.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Way {
    Hangar,
    DockerRun,
    Process,
}

impl Way {
    const ALL: [Way; 3] = [Way::Hangar, Way::DockerRun, Way::Process];
    fn name(self) -> &'static str {
        match self {
            Way::Hangar => "hangar (docker)",
            Way::DockerRun => "docker run",
            Way::Process => "hangar (process)",
        }
    }
}

/// One start, measured.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    /// From the start (Connect sent, `docker run` spawned) to the first 200.
    first_200: Duration,
    /// Hangar: Connect's round trip. docker run: until the CLI exited.
    call: Duration,
    /// Hangar: from the start to the READY the controller recorded.
    ready: Option<Duration>,
    /// Requests sent until one answered 200.
    attempts: u32,
}

pub async fn run(mut args: ColdstartArgs) -> anyhow::Result<()> {
    if args.quick {
        args.rounds = 2;
    }
    anyhow::ensure!(args.rounds > 0, "nothing to measure: --rounds must be above 0");
    let docker_ok = std::process::Command::new(&args.docker_bin)
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    anyhow::ensure!(
        docker_ok,
        "`{} version` found no Docker engine: the coldstart benchmark needs one",
        args.docker_bin
    );
    println!(
        "coldstart benchmark: {} rounds (+1 warm-up) of Connect → first HTTP 200 through Hangar's proxy (docker and \
         process runtimes, `hangar-server dev`) vs `docker run` → first 200 on the published port; image {DOCKER_IMAGE} \
         (built locally, nothing pulled); client polls every {:?}",
        args.rounds, args.poll
    );
    // The Docker instance starts first: it builds the image the `docker run` side uses.
    let docker_dev = Dev::start(&args, "docker").await?;
    let process_dev = Dev::start(&args, "process").await?;
    let mut docker_client = BackendServiceClient::new(docker_dev.channel().await?);
    let mut process_client = BackendServiceClient::new(process_dev.channel().await?);

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); Way::ALL.len()];
    for round in 0..=args.rounds {
        for k in 0..Way::ALL.len() {
            let way = Way::ALL[(k + round) % Way::ALL.len()];
            let key = format!("cold-{}-{round}-{k}", std::process::id());
            let sample = match way {
                Way::Hangar => hangar_start(&mut docker_client, &key, args.poll).await,
                Way::Process => hangar_start(&mut process_client, &key, args.poll).await,
                Way::DockerRun => docker_run_start(&args).await,
            }
            .with_context(|| format!("round {round}, {}", way.name()))?;
            let label = if round == 0 { "warm-up".to_string() } else { format!("round {round}") };
            eprintln!("{label} {}: {sample:?}", way.name());
            if round > 0 {
                samples[way as usize].push(sample);
            }
        }
    }
    let warnings = docker_dev.log_lines_containing("WARN") + process_dev.log_lines_containing("WARN");
    docker_dev.stop().await;
    process_dev.stop().await;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let dist = |way: Way, f: &dyn Fn(&Sample) -> Option<Duration>| {
        Distribution::of(samples[way as usize].iter().filter_map(f).map(|d| d.as_nanos() as u64).collect())
    };
    println!();
    println!(
        "| way              | first 200 p50 / p90 / max ms | call p50 ms | → READY p50 ms | READY → 200 p50 ms | GETs p50 |"
    );
    println!(
        "|------------------|------------------------------|-------------|----------------|--------------------|----------|"
    );
    for way in Way::ALL {
        let total = dist(way, &|s| Some(s.first_200));
        let call = dist(way, &|s| Some(s.call));
        let ready = dist(way, &|s| s.ready);
        let after_ready = dist(way, &|s| s.ready.map(|r| s.first_200.saturating_sub(r)));
        let mut attempts: Vec<u32> = samples[way as usize].iter().map(|s| s.attempts).collect();
        attempts.sort_unstable();
        let p90 = percentile(&samples[way as usize], 0.9);
        let (ready, after_ready) = match ready.count {
            0 => ("-".to_string(), "-".to_string()),
            _ => (format!("{:.1}", ms(ready.p50)), format!("{:.1}", ms(after_ready.p50))),
        };
        println!(
            "| {:<16} | {:>8.1} / {:>7.1} / {:>7.1} | {:>11.1} | {:>14} | {:>18} | {:>8} |",
            way.name(),
            ms(total.p50),
            ms(p90),
            ms(total.max),
            ms(call.p50),
            ready,
            after_ready,
            attempts[attempts.len() / 2]
        );
    }
    println!(
        "(over {} rounds after one warm-up; call: Connect's round trip, or the `docker run` CLI until it exited; \
         → READY: from Connect sent to the READY the controller recorded; {warnings} WARN lines in the dev logs)",
        args.rounds
    );
    let (hangar, docker, process) = (
        dist(Way::Hangar, &|s| Some(s.first_200)),
        dist(Way::DockerRun, &|s| Some(s.first_200)),
        dist(Way::Process, &|s| Some(s.first_200)),
    );
    ResultLine::new("coldstart")
        .figure("hangar_p50_ms", ms(hangar.p50))
        .figure("docker_run_p50_ms", ms(docker.p50))
        .figure("ratio", hangar.p50.as_secs_f64() / docker.p50.as_secs_f64().max(f64::MIN_POSITIVE))
        .figure("hangar_p90_ms", ms(percentile(&samples[Way::Hangar as usize], 0.9)))
        .figure("hangar_max_ms", ms(hangar.max))
        .figure("docker_run_p90_ms", ms(percentile(&samples[Way::DockerRun as usize], 0.9)))
        .figure("docker_run_max_ms", ms(docker.max))
        .figure("process_p50_ms", ms(process.p50))
        .print();
    Ok(())
}

/// The `q` quantile of the samples' first-200 times (nearest rank, as `Distribution` does).
fn percentile(samples: &[Sample], q: f64) -> Duration {
    let mut times: Vec<Duration> = samples.iter().map(|s| s.first_200).collect();
    times.sort_unstable();
    times.get(((times.len().saturating_sub(1)) as f64 * q).round() as usize).copied().unwrap_or_default()
}

/// Connect with a fresh `key`, GET the returned URL until it answers 200, then read when the
/// backend turned READY from its history and terminate it (hard), waiting for TERMINATED.
async fn hangar_start(client: &mut BackendServiceClient<Channel>, key: &str, poll: Duration) -> anyhow::Result<Sample> {
    let request = v1::ConnectRequest {
        key: Some(v1::BackendKey { namespace: "bench".into(), name: key.into(), tag: String::new() }),
        spawn_config: Some(v1::SpawnConfig {
            executable: Some(v1::Executable { image: CONNECT_IMAGE.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let wall_start = chrono::Utc::now();
    let start = Instant::now();
    let connected = client.connect(request).await?.into_inner();
    let call = start.elapsed();
    let attempts = first_200(&connected.url, poll, start).await?;
    let first_200 = start.elapsed();

    let mut history =
        client.watch_backend(v1::WatchBackendRequest { id: connected.backend_id.clone() }).await?.into_inner();
    let mut ready = None;
    while ready.is_none() {
        let status = tokio::time::timeout(Duration::from_secs(10), history.message())
            .await
            .context("no READY in the backend's history")??
            .and_then(|m| m.status)
            .ok_or_else(|| anyhow::anyhow!("the backend's history ended before READY"))?;
        if status.state == v1::BackendState::Ready as i32 {
            let at = status.time.as_ref().and_then(hangar::domain::timestamp_from_proto);
            ready = at.map(|at| (at - wall_start).to_std().unwrap_or_default());
            anyhow::ensure!(ready.is_some(), "READY without a time");
        }
    }
    client.terminate_backend(v1::TerminateBackendRequest { id: connected.backend_id.clone(), hard: true }).await?;
    // The stream ends after TERMINATED: the container is gone before the next start.
    tokio::time::timeout(START_TIMEOUT, async { while let Ok(Some(_)) = history.message().await {} })
        .await
        .context("the backend did not reach TERMINATED")?;
    Ok(Sample { first_200, call, ready, attempts })
}

/// `docker run -d` with a host port chosen here, then GETs on that port until one answers 200
/// (as a user would: `docker run -d …` and then `curl`); then `docker rm -f`. The GETs start once
/// the CLI has exited: polled from the CLI's start instead, connections Docker's port proxy took
/// before the container's network was up stalled, and the first 200 came late: an artefact of
/// polling too early, not `docker run`'s cost (BENCHMARKS.md, `coldstart`, has the figures).
async fn docker_run_start(args: &ColdstartArgs) -> anyhow::Result<Sample> {
    let port = procs::free_port()?;
    let start = Instant::now();
    let output = Command::new(&args.docker_bin)
        .args(["run", "-d", "--label", BENCH_LABEL, "-p"])
        .arg(format!("127.0.0.1:{port}:{CONTAINER_PORT}"))
        .arg(DOCKER_IMAGE)
        .kill_on_drop(true)
        .output()
        .await?;
    let call = start.elapsed();
    anyhow::ensure!(output.status.success(), "docker run failed: {}", String::from_utf8_lossy(&output.stderr));
    let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let attempts = first_200(&format!("http://127.0.0.1:{port}/"), args.poll, start).await;
    let first_200 = start.elapsed();
    let removed = Command::new(&args.docker_bin).args(["rm", "-f", &id]).stdout(Stdio::null()).status().await;
    anyhow::ensure!(removed.is_ok_and(|s| s.success()), "docker rm -f {id} failed");
    Ok(Sample { first_200, call, ready: None, attempts: attempts? })
}

/// GETs `url`, each on a fresh connection, `poll` apart, until one answers 200; the number of
/// GETs sent. Fails once `START_TIMEOUT` has passed since `start`.
async fn first_200(url: &str, poll: Duration, start: Instant) -> anyhow::Result<u32> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow::anyhow!("not an http URL: {url}"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let request = format!("GET {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n");
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = START_TIMEOUT.saturating_sub(start.elapsed());
        let answer = tokio::time::timeout(left, status_of(authority, &request)).await;
        match answer {
            Ok(Ok(200)) => return Ok(attempts),
            Ok(Ok(_)) | Ok(Err(_)) if start.elapsed() < START_TIMEOUT => tokio::time::sleep(poll).await,
            Ok(Ok(status)) => anyhow::bail!("{url} still answered {status} after {START_TIMEOUT:?}"),
            Ok(Err(err)) => anyhow::bail!("{url} still failed after {START_TIMEOUT:?}: {err}"),
            Err(_) => anyhow::bail!("{url} did not answer 200 within {START_TIMEOUT:?}"),
        }
    }
}

/// The status code of one request on a fresh connection.
async fn status_of(authority: &str, request: &str) -> std::io::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    stream.write_all(request.as_bytes()).await?;
    // "HTTP/1.1 200": the status code ends at byte 12.
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    let code = std::str::from_utf8(&head[9..12]).ok().filter(|_| head.starts_with(b"HTTP/1."));
    code.and_then(|c| c.parse().ok()).ok_or_else(|| std::io::Error::other("not an HTTP status line"))
}

/// A `hangar-server dev` child on one runtime, with a fresh data directory (and so a fresh drone
/// instance: its containers are its own).
struct Dev {
    child: Child,
    controller_url: String,
    dir: tempfile::TempDir,
    /// Removes, when the run drops it, whatever its drone left on the engine: a dev server that was
    /// killed (an error ended the run, or it did not stop within 20 s) leaves its backends and its
    /// warm network sandboxes running, and its data directory, which alone could find them
    /// again, goes with the run.
    _left_behind: Option<ContainerCleanup>,
}

impl Dev {
    async fn start(args: &ColdstartArgs, runtime: &str) -> anyhow::Result<Dev> {
        let bin = controller_proc::server_binary(args.server_bin.as_deref())?;
        let dir = tempfile::Builder::new().prefix("hangar-coldstart-").tempdir_in(&args.data_dir)?;
        let log = dir.path().join("dev.log");
        let mut command = Command::new(&bin);
        command
            .args(["dev", "--listen=127.0.0.1:0", "--proxy-listen=127.0.0.1:0", "--admin-listen=off"])
            .arg(format!("--runtime={runtime}"))
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .env("RUST_LOG", std::env::var("HANGAR_BENCH_DEV_LOG").unwrap_or_else(|_| "warn".into()))
            .stderr(Stdio::from(std::fs::File::create(&log)?));
        let mut child = procs::spawn_owned(command)?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut banner, mut controller_url, mut demo_ready, mut left_behind) = (String::new(), None, false, None);
        // The banner comes once the demo image is built (Docker: a minute at most, the first time).
        let read = tokio::time::timeout(Duration::from_secs(180), async {
            while let Some(line) = lines.next_line().await? {
                banner.push_str(&line);
                banner.push('\n');
                let words: Vec<&str> = line.split_whitespace().collect();
                if let Some(id) = hangar_server::dev::banner_instance(&line) {
                    left_behind = Some(ContainerCleanup::new(id));
                }
                match words.as_slice() {
                    ["controller", url, ..] => controller_url = Some(url.to_string()),
                    ["demo", "hangar-demo", ..] => demo_ready = true,
                    ["Stop", "with", ..] => return Ok(()),
                    _ => {}
                }
            }
            anyhow::Ok(())
        })
        .await;
        let failed = |why: &str| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            anyhow::anyhow!("hangar-server dev --runtime={runtime}: {why}\n{banner}\n{log}")
        };
        match read {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(failed(&format!("reading its banner: {err}"))),
            Err(_) => return Err(failed("no banner within 180 s")),
        }
        let Some(controller_url) = controller_url else { return Err(failed("no controller URL in its banner")) };
        if !demo_ready {
            return Err(failed("its demo backend is not available"));
        }
        // Nothing else is printed, but a full pipe must never block the child.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Dev { child, controller_url, dir, _left_behind: left_behind })
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Endpoint::from_shared(self.controller_url.clone())?.tcp_nodelay(true).connect().await?)
    }

    fn log_lines_containing(&self, needle: &str) -> usize {
        std::fs::read_to_string(self.log_path())
            .map(|log| log.lines().filter(|l| l.contains(needle)).count())
            .unwrap_or(0)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("dev.log")
    }

    /// SIGTERM, as an operator would stop it; killed if it has not exited after 20 s. With
    /// `HANGAR_BENCH_KEEP_LOG` set, its log is copied there first.
    async fn stop(mut self) {
        if let Ok(path) = std::env::var("HANGAR_BENCH_KEEP_LOG") {
            let pid = self.child.id().unwrap_or(0);
            let _ = std::fs::copy(self.log_path(), Path::new(&format!("{path}.{pid}")));
        }
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.is_err() {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

impl Drop for Dev {
    /// The child is killed first; then `_left_behind` removes its containers.
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
