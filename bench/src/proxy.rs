//! `proxy`: the data plane next to nginx. One backend (an nginx serving static files of 1 KiB and
//! 1 MiB) is loaded by wrk over HTTP/1.1 keep-alive connections three ways, alternating in one
//! run: directly (the physical limit), through nginx as a reverse proxy (upstream keep-alive,
//! `worker_processes` = the Hangar proxy's threads, responses streamed like Hangar's) and through
//! Hangar's proxy. Hangar's proxy runs in this process on a runtime of its own with `--threads`
//! workers and routes the way it does in production: `/{token}/…` resolved by
//! `ProxyService.LookupRoute` at a control plane (here a scripted one answering READY for the
//! token, as the proxy tests do), cached for its `route_ttl`.

use crate::result::ResultLine;
use futures::Stream;
use hangar::v1::{self, proxy_service_server::ProxyService};
use hangar_server::proxy::{Proxy, ProxyConfig};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;
use tonic::{Request, Response, Status, Streaming};

#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Worker threads of Hangar's proxy, and `worker_processes` of the nginx reverse proxy.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Keep-alive connections wrk holds open.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// wrk's threads.
    #[arg(long, default_value_t = 2)]
    pub wrk_threads: usize,
    /// Seconds of each measurement (one path, one body size).
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
    /// Rounds; each measures every path and size once, in an order that rotates between rounds.
    /// Figures are the median over rounds (max: the largest).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// `worker_processes` of the backend nginx.
    #[arg(long, default_value_t = 2)]
    pub backend_workers: usize,
    #[arg(long, default_value = "nginx")]
    pub nginx_bin: String,
    #[arg(long, default_value = "wrk")]
    pub wrk_bin: String,
    /// A few seconds' smoke run (1 s per measurement, one round), so that the harness cannot rot.
    #[arg(long)]
    pub quick: bool,
}

const TOKEN: &str = "bench-token";
const BACKEND_ID: &str = "bk-bench";
const SIZES: [(&str, usize); 2] = [("1k", 1024), ("1m", 1024 * 1024)];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path3 {
    Direct,
    Nginx,
    Hangar,
}

impl Path3 {
    const ALL: [Path3; 3] = [Path3::Direct, Path3::Nginx, Path3::Hangar];
    fn name(self) -> &'static str {
        match self {
            Path3::Direct => "direct",
            Path3::Nginx => "nginx",
            Path3::Hangar => "hangar",
        }
    }
}

/// One wrk run's figures.
#[derive(Debug, Clone, Default)]
pub struct WrkFigures {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Non-2xx answers and socket errors.
    pub errors: u64,
}

pub async fn run(mut args: ProxyArgs) -> anyhow::Result<()> {
    if args.quick {
        (args.seconds, args.rounds) = (1, 1);
    }
    anyhow::ensure!(
        args.threads > 0 && args.connections > 0 && args.rounds > 0 && args.seconds > 0,
        "nothing to measure"
    );
    for (bin, package) in [(&args.nginx_bin, "nginx"), (&args.wrk_bin, "wrk")] {
        anyhow::ensure!(
            std::process::Command::new(bin).arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok(),
            "{bin} is missing: scripts/bench installs it (apt-get install {package})"
        );
    }
    println!(
        "proxy benchmark: wrk, {} keep-alive HTTP/1.1 connections ({} wrk threads), {} s per measurement, {} rounds; \
         Hangar's proxy with {} worker thread(s) vs nginx with worker_processes {}; backend: nginx ({} workers) \
         serving static files",
        args.connections, args.wrk_threads, args.seconds, args.rounds, args.threads, args.threads, args.backend_workers
    );
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root)?;
    for (name, size) in SIZES {
        std::fs::write(root.join(name), vec![b'x'; size])?;
    }
    let backend_port = crate::procs::free_port()?;
    let _backend = Nginx::start(
        &args.nginx_bin,
        &dir.path().join("backend"),
        &backend_conf(&root, backend_port, args.backend_workers),
    )
    .await?;
    let nginx_port = crate::procs::free_port()?;
    let _nginx =
        Nginx::start(&args.nginx_bin, &dir.path().join("proxy"), &proxy_conf(backend_port, nginx_port, args.threads))
            .await?;
    let hangar = HangarProxy::start(args.threads, backend_port).await?;

    let url = |path: Path3, size: &str| match path {
        Path3::Direct => format!("http://127.0.0.1:{backend_port}/{size}"),
        Path3::Nginx => format!("http://127.0.0.1:{nginx_port}/{size}"),
        Path3::Hangar => format!("http://127.0.0.1:{}/{TOKEN}/{size}", hangar.port),
    };
    // Every path answers the same bytes before anything is measured.
    for path in Path3::ALL {
        for (name, size) in SIZES {
            let got = fetch_len(&url(path, name)).await?;
            anyhow::ensure!(got == size, "{} /{name} answered {got} bytes, not {size}", path.name());
        }
    }
    // Warm-up: connections, the route cache, nginx's upstream pool.
    for path in Path3::ALL {
        wrk(&args, &url(path, "1k"), 1).await?;
    }

    let mut figures: Vec<Vec<Vec<WrkFigures>>> = vec![vec![Vec::new(); Path3::ALL.len()]; SIZES.len()];
    for round in 0..args.rounds {
        for (s, (name, _)) in SIZES.iter().enumerate() {
            for k in 0..Path3::ALL.len() {
                let p = (k + round) % Path3::ALL.len();
                let f = wrk(&args, &url(Path3::ALL[p], name), args.seconds).await?;
                eprintln!("round {} {name} {}: {f:?}", round + 1, Path3::ALL[p].name());
                figures[s][p].push(f);
            }
        }
    }
    hangar.stop().await;

    let summary: Vec<Vec<WrkFigures>> =
        figures.iter().map(|per| per.iter().map(|runs| summarize(runs)).collect()).collect();
    println!();
    println!("| body | path   |   requests/s |  p50 ms |  p99 ms |  max ms | errors | rps / nginx |");
    println!("|------|--------|--------------|---------|---------|---------|--------|-------------|");
    for (s, (name, _)) in SIZES.iter().enumerate() {
        let nginx_rps = summary[s][1].rps;
        for (p, path) in Path3::ALL.iter().enumerate() {
            let f = &summary[s][p];
            println!(
                "| {name:<4} | {:<6} | {:>12.0} | {:>7.2} | {:>7.2} | {:>7.2} | {:>6} | {:>11.2} |",
                path.name(),
                f.rps,
                f.p50_ms,
                f.p99_ms,
                f.max_ms,
                f.errors,
                f.rps / nginx_rps.max(f64::MIN_POSITIVE)
            );
        }
    }
    println!(
        "(medians over {} rounds, max the largest; HTTP/2, WebSocket echo and idle WebSocket memory are not measured \
         by this benchmark yet)",
        args.rounds
    );
    let errors: u64 = summary.iter().flatten().map(|f| f.errors).sum();
    anyhow::ensure!(errors == 0, "{errors} non-2xx answers or socket errors: the figures are not comparable");
    // The RESULT line carries the 1 KiB figures: requests per second is what a proxy adds cost to.
    let (direct, nginx, hangar) = (&summary[0][0], &summary[0][1], &summary[0][2]);
    ResultLine::new("proxy")
        .figure("hangar_rps", hangar.rps.round())
        .figure("nginx_rps", nginx.rps.round())
        .figure("ratio", hangar.rps / nginx.rps.max(f64::MIN_POSITIVE))
        .figure("hangar_p99_ms", hangar.p99_ms)
        .figure("nginx_p99_ms", nginx.p99_ms)
        .figure("added_p99_ms", hangar.p99_ms - direct.p99_ms)
        .print();
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn summarize(runs: &[WrkFigures]) -> WrkFigures {
    WrkFigures {
        rps: median(runs.iter().map(|f| f.rps).collect()),
        p50_ms: median(runs.iter().map(|f| f.p50_ms).collect()),
        p99_ms: median(runs.iter().map(|f| f.p99_ms).collect()),
        max_ms: runs.iter().map(|f| f.max_ms).fold(0.0, f64::max),
        errors: runs.iter().map(|f| f.errors).sum(),
    }
}

async fn wrk(args: &ProxyArgs, url: &str, seconds: u64) -> anyhow::Result<WrkFigures> {
    let output = tokio::process::Command::new(&args.wrk_bin)
        .args(["-t", &args.wrk_threads.to_string(), "-c", &args.connections.to_string()])
        .args(["-d", &format!("{seconds}s"), "--latency", url])
        .kill_on_drop(true)
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "wrk failed on {url}: {text}{}", String::from_utf8_lossy(&output.stderr));
    parse_wrk(&text).ok_or_else(|| anyhow::anyhow!("cannot read wrk's output for {url}:\n{text}"))
}

/// Reads wrk's `--latency` report.
pub fn parse_wrk(text: &str) -> Option<WrkFigures> {
    let mut f = WrkFigures::default();
    let (mut rps, mut p50, mut p99, mut max) = (None, None, None, None);
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Latency", _avg, _stdev, m, ..] => max = duration_ms(m),
            ["50%", v] => p50 = duration_ms(v),
            ["99%", v] => p99 = duration_ms(v),
            ["Requests/sec:", v] => rps = v.parse().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => f.errors += n.parse::<u64>().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                f.errors += rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum::<u64>()
            }
            _ => {}
        }
    }
    (f.rps, f.p50_ms, f.p99_ms, f.max_ms) = (rps?, p50?, p99?, max?);
    Some(f)
}

fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// The body length of a GET, over a fresh HTTP/1.1 connection (`Connection: close`).
async fn fetch_len(url: &str) -> anyhow::Result<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow::anyhow!("not http: {url}"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await??;
    let end =
        answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no header end from {url}"))?;
    let head = String::from_utf8_lossy(&answer[..end]);
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{url} answered {}", head.lines().next().unwrap_or(""));
    Ok(answer.len() - end - 4)
}

fn common_conf(prefix_workers: usize) -> String {
    format!(
        "worker_processes {prefix_workers};\nerror_log stderr error;\npid nginx.pid;\n\
         events {{ worker_connections 4096; }}\n"
    )
}

fn temp_paths() -> &'static str {
    "client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi; \
     uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;\n"
}

fn backend_conf(root: &Path, port: u16, workers: usize) -> String {
    format!(
        "{}http {{\n access_log off;\n {} sendfile on; tcp_nopush on; keepalive_requests 100000000;\n \
         server {{ listen 127.0.0.1:{port} reuseport backlog=4096; location / {{ root {}; }} }}\n}}\n",
        common_conf(workers),
        temp_paths(),
        root.display()
    )
}

/// nginx as the reverse proxy users would put in front of a backend: upstream keep-alive,
/// responses streamed as they come (`proxy_buffering off`, as Hangar does) rather than spooled.
fn proxy_conf(backend_port: u16, port: u16, workers: usize) -> String {
    format!(
        "{}http {{\n access_log off;\n {} keepalive_requests 100000000;\n \
         upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 256; keepalive_requests 100000000; }}\n \
         server {{ listen 127.0.0.1:{port} reuseport backlog=4096;\n  location / {{ proxy_pass http://backend; \
         proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; proxy_buffer_size 64k; proxy_buffers 8 64k; }} }}\n}}\n",
        common_conf(workers),
        temp_paths()
    )
}

/// An nginx in the foreground, ended (with its workers) by SIGTERM to its master when dropped.
struct Nginx(std::process::Child);

impl Nginx {
    async fn start(bin: &str, prefix: &Path, conf: &str) -> anyhow::Result<Nginx> {
        std::fs::create_dir_all(prefix.join("tmp"))?;
        let conf_path: PathBuf = prefix.join("nginx.conf");
        // As root, nginx would switch its workers to `nobody`, who may not read the temporary files.
        let user = if nix::unistd::Uid::effective().is_root() { "user root;\n" } else { "" };
        std::fs::write(&conf_path, format!("{user}{conf}"))?;
        let mut command = std::process::Command::new(bin);
        command.arg("-p").arg(prefix).arg("-c").arg(&conf_path).args(["-g", "daemon off;"]);
        command.stdin(Stdio::null()).stdout(Stdio::null());
        // SAFETY: one async-signal-safe system call between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let mut child = Nginx(command.spawn()?);
        let port = conf.split("listen 127.0.0.1:").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("0").to_string();
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(format!("127.0.0.1:{port}")).await.is_ok() {
                return Ok(child);
            }
            if let Some(status) = child.0.try_wait()? {
                anyhow::bail!("nginx ({}) exited: {status}", conf_path.display());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        anyhow::bail!("nginx ({}) did not listen on {port}", conf_path.display())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// Hangar's proxy on a runtime of its own (`threads` workers) next to a scripted control plane.
struct HangarProxy {
    port: u16,
    runtime: Option<tokio::runtime::Runtime>,
    proxy: Option<hangar_server::proxy::RunningProxy>,
}

impl HangarProxy {
    async fn start(threads: usize, backend_port: u16) -> anyhow::Result<HangarProxy> {
        let plane = ScriptedPlane { address: format!("127.0.0.1:{backend_port}") };
        let control = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let control_url = format!("http://{}", control.local_addr()?);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(v1::proxy_service_server::ProxyServiceServer::new(plane))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(control)),
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("hangar-proxy")
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let config = ProxyConfig::new(vec![control_url], "bench-proxy");
        let proxy = runtime
            .spawn(async move { Proxy::start(config, tokio::net::TcpListener::from_std(listener)?).await })
            .await??;
        Ok(HangarProxy { port, runtime: Some(runtime), proxy: Some(proxy) })
    }

    async fn stop(mut self) {
        if let (Some(runtime), Some(proxy)) = (self.runtime.as_ref(), self.proxy.take()) {
            let _ = runtime.spawn(proxy.shutdown()).await;
        }
    }
}

impl Drop for HangarProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Answers every lookup of the benchmark's token with the READY backend, as a controller does for
/// a session's token.
#[derive(Clone)]
struct ScriptedPlane {
    address: String,
}

type AttachStream = Pin<Box<dyn Stream<Item = Result<v1::ProxyAttachResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ProxyService for ScriptedPlane {
    type AttachStream = AttachStream;

    async fn attach(
        &self,
        req: Request<Streaming<v1::ProxyAttachRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        use futures::StreamExt;
        let mut inbound = req.into_inner();
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        let welcome = v1::ProxyWelcome { node_id: "proxy-node".into(), controller_id: "bench".into() };
        let first = v1::ProxyAttachResponse { message: Some(v1::proxy_attach_response::Message::Welcome(welcome)) };
        Ok(Response::new(futures::stream::once(async move { Ok(first) }).chain(futures::stream::pending()).boxed()))
    }

    async fn lookup_route(
        &self,
        req: Request<v1::LookupRouteRequest>,
    ) -> Result<Response<v1::LookupRouteResponse>, Status> {
        if req.into_inner().token != TOKEN {
            return Err(Status::not_found("no such token"));
        }
        Ok(Response::new(v1::LookupRouteResponse {
            backend_id: BACKEND_ID.into(),
            state: v1::BackendState::Ready as i32,
            address: self.address.clone(),
            user: "bench-user".into(),
            auth: Default::default(),
            expires_at: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_latency_reports_are_read_in_milliseconds() {
        let text = "Running 1s test @ http://127.0.0.1:1/1k\n  2 threads and 64 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   635.91us    0.89ms  12.92ms   93.69%\n    Req/Sec    48.40k     3.21k   53.10k    80.00%\n  Latency Distribution\n     50%  491.00us\n     75%    0.94ms\n     90%    1.39ms\n     99%    4.72s\n  96342 requests in 1.00s, 117.70MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 3\nRequests/sec:  96342.58\nTransfer/sec:    117.66MB\n";
        let f = parse_wrk(text).unwrap();
        assert_eq!((f.rps, f.p50_ms, f.p99_ms, f.max_ms, f.errors), (96342.58, 0.491, 4720.0, 12.92, 6));
    }
}
