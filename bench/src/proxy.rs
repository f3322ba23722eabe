//! `proxy`: the data plane next to nginx. One backend (an nginx serving static files of 1 KiB and
//! 1 MiB) is loaded three ways, alternating in one run: directly (the physical limit), through
//! nginx as a reverse proxy (upstream keep-alive, `worker_processes` = the Hangar proxy's threads,
//! responses streamed like Hangar's) and through Hangar's proxy. The loads: wrk over HTTP/1.1
//! keep-alive connections, h2load over HTTP/2 (h2c with prior knowledge; nginx and Hangar speak
//! HTTP/1.1 to the backend either way), and WebSocket echo round trips (a client in this process
//! against a tungstenite echo backend on a runtime of its own). Hangar's proxy runs in this
//! process on a runtime of its own with `--threads` workers and routes the way it does in
//! production: `/{token}/…` resolved by `ProxyService.LookupRoute` at a control plane (here a
//! scripted one answering READY for the tokens, as the proxy tests do), cached for its
//! `route_ttl`.

use crate::result::ResultLine;
use futures::Stream;
use hangar::v1::{self, proxy_service_server::ProxyService};
use hangar_server::proxy::{Proxy, ProxyConfig};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::time::{Duration, Instant};
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
    /// Seconds of each measurement (one path, one load): 5 loads x 3 paths x 3 rounds of 5 s keep
    /// the default run under 5 minutes.
    #[arg(long, default_value_t = 5)]
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
    #[arg(long, default_value = "h2load")]
    pub h2load_bin: String,
    /// Concurrent streams h2load keeps open on each of its `--connections` HTTP/2 connections.
    #[arg(long, default_value_t = 1)]
    pub h2_streams: usize,
    /// WebSocket connections of the echo load, each one message in flight (64 bytes of text).
    #[arg(long, default_value_t = 64)]
    pub ws_connections: usize,
    /// Idle WebSockets whose memory in the proxy is measured (fewer if the open-file limit is
    /// lower than two descriptors each, plus some; scripts/bench raises it).
    #[arg(long, default_value_t = 10_000)]
    pub idle_websockets: usize,
    /// A few seconds' smoke run (1 s per measurement, one round), so that the harness cannot rot.
    #[arg(long)]
    pub quick: bool,
    /// Only these loads (comma-separated: h1-1k, h1-1m, h2-1k, h2-1m, ws), e.g. one row to profile
    /// the proxy under (`--idle-websockets 0` skips the idle WebSockets too).
    #[arg(long, value_delimiter = ',', value_parser = parse_load)]
    pub loads: Vec<Load>,
}

fn parse_load(name: &str) -> Result<Load, String> {
    Load::ALL.into_iter().find(|load| load.name() == name).ok_or_else(|| {
        let names: Vec<_> = Load::ALL.iter().map(|load| load.name()).collect();
        format!("no load {name:?}: one of {}", names.join(", "))
    })
}

const TOKEN: &str = "bench-token";
/// The token of the WebSocket echo backend.
const WS_TOKEN: &str = "bench-ws-token";
const BACKEND_ID: &str = "bk-bench";
const SIZES: [(&str, usize); 2] = [("1k", 1024), ("1m", 1024 * 1024)];
/// The text each WebSocket echo round trip sends (and gets back).
const WS_MESSAGE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// What loads a path: a body over HTTP/1.1 (wrk) or HTTP/2 (h2load), or WebSocket echoes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Load {
    Http1(&'static str),
    Http2(&'static str),
    WsEcho,
    /// WebSocket echoes over HTTP/2 (RFC 8441 extended CONNECT), one connection per WebSocket:
    /// Hangar's proxy only (neither nginx nor the echo backend serves it), next to the others'
    /// HTTP/1.1 WebSockets.
    WsEchoH2,
}

impl Load {
    const ALL: [Load; 6] =
        [Load::Http1("1k"), Load::Http1("1m"), Load::Http2("1k"), Load::Http2("1m"), Load::WsEcho, Load::WsEchoH2];

    /// Whether `path` serves this load.
    fn runs_on(self, path: Path3) -> bool {
        self != Load::WsEchoH2 || path == Path3::Hangar
    }

    /// Its name for `--loads`.
    fn name(self) -> &'static str {
        match self {
            Load::Http1("1k") => "h1-1k",
            Load::Http1(_) => "h1-1m",
            Load::Http2("1k") => "h2-1k",
            Load::Http2(_) => "h2-1m",
            Load::WsEcho => "ws",
            Load::WsEchoH2 => "ws-h2",
        }
    }

    fn label(self) -> String {
        match self {
            Load::Http1(size) => format!("h1 {size}"),
            Load::Http2(size) => format!("h2 {size}"),
            Load::WsEcho => "ws echo".into(),
            Load::WsEchoH2 => "ws h2".into(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(usize)]
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

/// One run's figures (wrk's, h2load's or the WebSocket echo's).
#[derive(Debug, Clone, Default)]
pub struct WrkFigures {
    /// Requests per second; for WebSocket echoes, round trips per second.
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Non-2xx answers and socket errors.
    pub errors: u64,
}

pub async fn run(mut args: ProxyArgs) -> anyhow::Result<()> {
    if args.quick {
        (args.seconds, args.rounds, args.idle_websockets) = (1, 1, args.idle_websockets.min(500));
    }
    anyhow::ensure!(
        args.threads > 0 && args.connections > 0 && args.rounds > 0 && args.seconds > 0,
        "nothing to measure"
    );
    for (bin, package) in [(&args.nginx_bin, "nginx"), (&args.wrk_bin, "wrk"), (&args.h2load_bin, "nghttp2-client")] {
        anyhow::ensure!(
            std::process::Command::new(bin)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok(),
            "{bin} is missing: scripts/bench installs it (apt-get install {package})"
        );
    }
    println!(
        "proxy benchmark: wrk, {} keep-alive HTTP/1.1 connections ({} wrk threads); h2load, {} HTTP/2 connections \
         x {} stream(s) ({} threads); {} WebSocket echo connections (64-byte text, one in flight each); {} s per \
         measurement, {} rounds; Hangar's proxy with {} worker thread(s) vs nginx with worker_processes {}; \
         backend: nginx ({} workers) serving static files, a tungstenite echo server ({} threads) for WebSockets",
        args.connections,
        args.wrk_threads,
        args.connections,
        args.h2_streams,
        args.wrk_threads,
        args.ws_connections,
        args.seconds,
        args.rounds,
        args.threads,
        args.threads,
        args.backend_workers,
        args.backend_workers
    );
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root)?;
    for (name, size) in SIZES {
        std::fs::write(root.join(name), vec![b'x'; size])?;
    }
    let (backend_port, backend_h2_port) = (crate::procs::free_port()?, crate::procs::free_port()?);
    let _backend = Nginx::start(
        &args.nginx_bin,
        &dir.path().join("backend"),
        &backend_conf(&root, backend_port, backend_h2_port, args.backend_workers),
    )
    .await?;
    let echo = EchoBackend::start(args.backend_workers)?;
    let (nginx_port, nginx_h2_port) = (crate::procs::free_port()?, crate::procs::free_port()?);
    let _nginx = Nginx::start(
        &args.nginx_bin,
        &dir.path().join("proxy"),
        &proxy_conf(backend_port, echo.port, nginx_port, nginx_h2_port, args.threads),
    )
    .await?;
    let control_url = start_plane(backend_port, echo.port).await?;
    let hangar = HangarProxy::start(control_url.clone(), args.threads).await?;

    let url = |path: Path3, size: &str| match path {
        Path3::Direct => format!("http://127.0.0.1:{backend_port}/{size}"),
        Path3::Nginx => format!("http://127.0.0.1:{nginx_port}/{size}"),
        Path3::Hangar => format!("http://127.0.0.1:{}/{TOKEN}/{size}", hangar.port),
    };
    let load_url = |load: Load, path: Path3| match (load, path) {
        (Load::Http1(size), path) => url(path, size),
        (Load::Http2(size), Path3::Direct) => format!("http://127.0.0.1:{backend_h2_port}/{size}"),
        (Load::Http2(size), Path3::Nginx) => format!("http://127.0.0.1:{nginx_h2_port}/{size}"),
        (Load::Http2(size), Path3::Hangar) => url(Path3::Hangar, size),
        (Load::WsEcho, Path3::Direct) => format!("ws://127.0.0.1:{}/ws", echo.port),
        (Load::WsEcho, Path3::Nginx) => format!("ws://127.0.0.1:{nginx_port}/ws"),
        (Load::WsEcho, Path3::Hangar) => format!("ws://127.0.0.1:{}/{WS_TOKEN}/ws", hangar.port),
        (Load::WsEchoH2, _) => format!("http://127.0.0.1:{}/{WS_TOKEN}/ws", hangar.port),
    };
    // Every path answers the same bytes before anything is measured.
    for path in Path3::ALL {
        for (name, size) in SIZES {
            let got = fetch_len(&url(path, name)).await?;
            anyhow::ensure!(got == size, "{} /{name} answered {got} bytes, not {size}", path.name());
        }
    }
    // Every path echoes a WebSocket message before anything is measured.
    for path in Path3::ALL {
        let f = ws_echo(&load_url(Load::WsEcho, path), 1, Duration::from_millis(100)).await?;
        anyhow::ensure!(f.rps > 0.0 && f.errors == 0, "{} does not echo WebSocket messages", path.name());
    }
    let f = ws_echo_h2(&load_url(Load::WsEchoH2, Path3::Hangar), 1, Duration::from_millis(100)).await?;
    anyhow::ensure!(f.rps > 0.0 && f.errors == 0, "hangar does not echo WebSocket messages over HTTP/2");
    // Warm-up: connections, the route cache, nginx's upstream pool.
    for path in Path3::ALL {
        wrk(&args, &url(path, "1k"), 1).await?;
    }

    let measure = |load: Load, path: Path3, seconds: u64| {
        let (args, url) = (&args, load_url(load, path));
        async move {
            match load {
                Load::Http1(_) => wrk(args, &url, seconds).await,
                Load::Http2(_) => h2load(args, &url, seconds).await,
                Load::WsEcho => ws_echo(&url, args.ws_connections, Duration::from_secs(seconds)).await,
                Load::WsEchoH2 => ws_echo_h2(&url, args.ws_connections, Duration::from_secs(seconds)).await,
            }
        }
    };
    let loads = if args.loads.is_empty() { Load::ALL.to_vec() } else { args.loads.clone() };
    let mut figures: Vec<Vec<Vec<WrkFigures>>> = vec![vec![Vec::new(); Path3::ALL.len()]; loads.len()];
    for round in 0..args.rounds {
        for (l, &load) in loads.iter().enumerate() {
            for k in 0..Path3::ALL.len() {
                let p = (k + round) % Path3::ALL.len();
                if !load.runs_on(Path3::ALL[p]) {
                    continue;
                }
                let f = measure(load, Path3::ALL[p], args.seconds).await?;
                eprintln!("round {} {} {}: {f:?}", round + 1, load.label(), Path3::ALL[p].name());
                figures[l][p].push(f);
            }
        }
    }
    hangar.stop().await;
    let idle = match args.idle_websockets {
        0 => None,
        wanted => Some(idle_websocket_memory(&control_url, wanted).await?),
    };

    let summary: Vec<Vec<WrkFigures>> =
        figures.iter().map(|per| per.iter().map(|runs| summarize(runs)).collect()).collect();
    println!();
    println!("| load    | path   |        per s |  p50 ms |  p99 ms |  max ms | errors | / nginx |");
    println!("|---------|--------|--------------|---------|---------|---------|--------|---------|");
    for (l, load) in loads.iter().enumerate() {
        // nginx serves no WebSocket over HTTP/2: that row is set against its HTTP/1.1 WebSockets.
        let nginx_rps = match load {
            Load::WsEchoH2 => loads.iter().position(|l| *l == Load::WsEcho).map_or(0.0, |w| summary[w][1].rps),
            _ => summary[l][1].rps,
        };
        for (p, path) in Path3::ALL.iter().enumerate() {
            if !load.runs_on(*path) {
                continue;
            }
            let f = &summary[l][p];
            println!(
                "| {:<7} | {:<6} | {:>12.0} | {:>7.2} | {:>7.2} | {:>7.2} | {:>6} | {:>7.2} |",
                load.label(),
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
    println!("(per s: requests, or WebSocket round trips; medians over {} rounds, max the largest)", args.rounds);
    if loads.contains(&Load::WsEchoH2) {
        println!("(ws h2: WebSockets over HTTP/2, which nginx does not serve; its / nginx is against nginx's ws echo)");
    }
    if let Some((idle, idle_bytes_each)) = idle {
        println!(
            "idle WebSockets through `hangar-server proxy` (a process of its own): {idle} opened, one echo each, then \
             idle; its resident memory grew {:.1} MiB, {:.1} KiB per WebSocket",
            idle_bytes_each * idle as f64 / (1024.0 * 1024.0),
            idle_bytes_each / 1024.0
        );
    }
    let errors: u64 = summary.iter().flatten().map(|f| f.errors).sum();
    anyhow::ensure!(errors == 0, "{errors} non-2xx answers or socket errors: the figures are not comparable");
    // The RESULT line leads with the HTTP/1.1 1 KiB figures (requests per second is what a proxy
    // adds cost to), then HTTP/2's and the WebSocket echo's; a load that did not run (`--loads`)
    // has none.
    let figure = |load: Load, path: Path3| Some(&summary[loads.iter().position(|l| *l == load)?][path as usize]);
    let ratio = |hangar: &WrkFigures, nginx: &WrkFigures| hangar.rps / nginx.rps.max(f64::MIN_POSITIVE);
    let mut line = ResultLine::new("proxy");
    if let (Some(direct), Some(nginx), Some(hangar)) = (
        figure(Load::Http1("1k"), Path3::Direct),
        figure(Load::Http1("1k"), Path3::Nginx),
        figure(Load::Http1("1k"), Path3::Hangar),
    ) {
        line = line
            .figure("hangar_rps", hangar.rps.round())
            .figure("nginx_rps", nginx.rps.round())
            .figure("ratio", ratio(hangar, nginx))
            .figure("hangar_p99_ms", hangar.p99_ms)
            .figure("nginx_p99_ms", nginx.p99_ms)
            .figure("added_p99_ms", hangar.p99_ms - direct.p99_ms);
    }
    let rps_of =
        |line: ResultLine, load: Load, key: &str| match (figure(load, Path3::Nginx), figure(load, Path3::Hangar)) {
            (Some(nginx), Some(hangar)) => line
                .figure(&format!("hangar_{key}_rps"), hangar.rps.round())
                .figure(&format!("nginx_{key}_rps"), nginx.rps.round())
                .figure(&format!("{key}_ratio"), ratio(hangar, nginx)),
            _ => line,
        };
    line = rps_of(line, Load::Http2("1k"), "h2");
    if let (Some(nginx), Some(hangar)) = (figure(Load::WsEcho, Path3::Nginx), figure(Load::WsEcho, Path3::Hangar)) {
        line = line
            .figure("hangar_ws_echo_per_s", hangar.rps.round())
            .figure("nginx_ws_echo_per_s", nginx.rps.round())
            .figure("ws_ratio", ratio(hangar, nginx));
    }
    if let Some((idle, idle_bytes_each)) = idle {
        line = line.figure("ws_idle", idle).figure("ws_idle_kib_each", idle_bytes_each / 1024.0);
    }
    // Added after the figures above, so that scripts reading the earlier keys see them unmoved.
    line = rps_of(line, Load::Http1("1m"), "h1_1m");
    line = rps_of(line, Load::Http2("1m"), "h2_1m");
    if let Some(hangar) = figure(Load::WsEchoH2, Path3::Hangar) {
        line = line.figure("hangar_ws_h2_echo_per_s", hangar.rps.round());
    }
    line.print();
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn summarize(runs: &[WrkFigures]) -> WrkFigures {
    if runs.is_empty() {
        return WrkFigures::default();
    }
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

/// h2load over HTTP/2 with prior knowledge (h2c) for `seconds`; latencies from its per-request
/// log (h2load's own report has no percentiles).
async fn h2load(args: &ProxyArgs, url: &str, seconds: u64) -> anyhow::Result<WrkFigures> {
    let log = tempfile::NamedTempFile::new()?;
    let output = tokio::process::Command::new(&args.h2load_bin)
        .args(["-c", &args.connections.to_string(), "-m", &args.h2_streams.to_string()])
        .args(["-t", &args.wrk_threads.to_string(), "-D", &seconds.to_string()])
        .arg("--log-file")
        .arg(log.path())
        .arg(url)
        .kill_on_drop(true)
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "h2load failed on {url}: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut f = parse_h2load(&text).ok_or_else(|| anyhow::anyhow!("cannot read h2load's output for {url}:\n{text}"))?;
    // Columns: start (µs since the epoch), status, microseconds to the end of the response.
    let mut micros: Vec<u64> = std::fs::read_to_string(log.path())?
        .lines()
        .filter_map(|line| line.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    if micros.is_empty() {
        // h2load ran and none of its requests finished within the window (1 MiB bodies on a
        // loaded machine in a one-second --quick pass): that is a figure (0), not a broken run.
        eprintln!("h2load: no request to {url} finished within the measurement");
        return Ok(f);
    }
    micros.sort_unstable();
    (f.p50_ms, f.p99_ms, f.max_ms) =
        (percentile_ms(&micros, 0.50), percentile_ms(&micros, 0.99), percentile_ms(&micros, 1.0));
    Ok(f)
}

/// Requests per second and errors from h2load's report.
pub fn parse_h2load(text: &str) -> Option<WrkFigures> {
    let mut f = WrkFigures::default();
    let mut rps = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().map(|w| w.trim_end_matches(',')).collect();
        match words.as_slice() {
            ["finished", "in", _, r, "req/s", ..] => rps = r.parse().ok(),
            ["requests:", rest @ ..] => {
                // `N total, N started, N done, N succeeded, N failed, N errored, N timeout`
                for pair in rest.chunks(2) {
                    if let [n, "failed" | "errored" | "timeout"] = pair {
                        f.errors += n.parse::<u64>().ok()?;
                    }
                }
            }
            ["status", "codes:", rest @ ..] => {
                for pair in rest.chunks(2) {
                    if let [n, "4xx" | "5xx"] = pair {
                        f.errors += n.parse::<u64>().ok()?;
                    }
                }
            }
            _ => {}
        }
    }
    f.rps = rps?;
    Some(f)
}

/// The `q` quantile of sorted microseconds, in milliseconds.
fn percentile_ms(sorted_micros: &[u64], q: f64) -> f64 {
    let i = ((sorted_micros.len() - 1) as f64 * q).round() as usize;
    sorted_micros[i] as f64 / 1000.0
}

/// WebSocket echo round trips for `duration` over `connections` connections to `url`, each with
/// one message in flight: what an interactive session (a terminal, a notebook) does.
async fn ws_echo(url: &str, connections: usize, duration: Duration) -> anyhow::Result<WrkFigures> {
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        sockets.push(tokio_tungstenite::connect_async(url).await.map_err(|err| anyhow::anyhow!("{url}: {err}"))?.0);
    }
    echo_round_trips(sockets, url, duration).await
}

/// [`ws_echo`] with WebSockets over HTTP/2 (RFC 8441): each an extended CONNECT with
/// `:protocol = websocket` on an h2c connection of its own, as a browser's would be on its
/// HTTP/2 connection to the proxy.
async fn ws_echo_h2(url: &str, connections: usize, duration: Duration) -> anyhow::Result<WrkFigures> {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_tungstenite::tungstenite::protocol::Role;
    let uri: http::Uri = url.parse()?;
    let authority = uri.authority().ok_or_else(|| anyhow::anyhow!("no host in {url}"))?.to_string();
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        let tcp = tokio::net::TcpStream::connect(&authority).await?;
        tcp.set_nodelay(true)?;
        let (mut send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        send.ready().await?;
        let request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(uri.clone())
            .header("sec-websocket-version", "13")
            .extension(hyper::ext::Protocol::from_static("websocket"))
            .body(Empty::<bytes::Bytes>::new())?;
        let mut response = send.send_request(request).await?;
        anyhow::ensure!(response.status() == http::StatusCode::OK, "{url} answered {}", response.status());
        let upgraded = hyper::upgrade::on(&mut response).await?;
        sockets.push(
            tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await,
        );
    }
    echo_round_trips(sockets, url, duration).await
}

/// Each socket sends a message and waits for its echo, again and again until `duration` is up.
async fn echo_round_trips<S>(
    sockets: Vec<tokio_tungstenite::WebSocketStream<S>>,
    url: &str,
    duration: Duration,
) -> anyhow::Result<WrkFigures>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let began = Instant::now();
    let deadline = began + duration;
    let clients: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move {
                let (mut micros, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    if socket.send(Message::text(WS_MESSAGE)).await.is_err() {
                        errors += 1;
                        break;
                    }
                    match socket.next().await {
                        Some(Ok(Message::Text(text))) if text.as_str() == WS_MESSAGE => {
                            micros.push(sent.elapsed().as_micros() as u64)
                        }
                        _ => {
                            errors += 1;
                            break;
                        }
                    }
                }
                let _ = socket.close(None).await;
                (micros, errors)
            })
        })
        .collect();
    let (mut micros, mut errors) = (Vec::new(), 0);
    for client in clients {
        let (m, e) = client.await?;
        micros.extend(m);
        errors += e;
    }
    let elapsed = began.elapsed().as_secs_f64();
    anyhow::ensure!(!micros.is_empty(), "no WebSocket echo came back from {url}");
    micros.sort_unstable();
    Ok(WrkFigures {
        rps: micros.len() as f64 / elapsed,
        p50_ms: percentile_ms(&micros, 0.50),
        p99_ms: percentile_ms(&micros, 0.99),
        max_ms: percentile_ms(&micros, 1.0),
        errors,
    })
}

/// A WebSocket echo backend (tungstenite) on a runtime of its own, stopped when dropped.
struct EchoBackend {
    port: u16,
    runtime: Option<tokio::runtime::Runtime>,
}

impl EchoBackend {
    fn start(threads: usize) -> anyhow::Result<EchoBackend> {
        use futures::{SinkExt, StreamExt};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("ws-echo-backend")
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(async move {
                    let Ok(mut socket) = tokio_tungstenite::accept_async(tcp).await else { return };
                    while let Some(Ok(message)) = socket.next().await {
                        if (message.is_text() || message.is_binary()) && socket.send(message).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(EchoBackend { port, runtime: Some(runtime) })
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
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

/// The backend: static files on `port` (HTTP/1.1) and `h2_port` (HTTP/2 with prior knowledge,
/// without `sendfile`: with it, nginx 1.22 answers each HTTP/2 request late, at a small fraction
/// of the throughput (measured here; BENCHMARKS.md, the HTTP/2 `proxy` section, has the figures).
fn backend_conf(root: &Path, port: u16, h2_port: u16, workers: usize) -> String {
    format!(
        "{}http {{\n access_log off;\n {} sendfile on; tcp_nopush on; keepalive_requests 100000000;\n \
         server {{ listen 127.0.0.1:{port} reuseport backlog=4096; location / {{ root {root}; }} }}\n \
         server {{ listen 127.0.0.1:{h2_port} http2 reuseport backlog=4096; sendfile off; location / {{ root {root}; }} }}\n}}\n",
        common_conf(workers),
        temp_paths(),
        root = root.display()
    )
}

/// nginx as the reverse proxy users would put in front of a backend: upstream keep-alive,
/// responses streamed as they come (`proxy_buffering off`, as Hangar does) rather than spooled.
/// Clients reach it over HTTP/1.1 on `port` and HTTP/2 (prior knowledge) on `h2_port`; `/ws` goes
/// to the WebSocket echo backend as an upgrade, the rest to the static backend.
fn proxy_conf(backend_port: u16, echo_port: u16, port: u16, h2_port: u16, workers: usize) -> String {
    format!(
        "{}http {{\n access_log off;\n {} keepalive_requests 100000000;\n \
         upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 256; keepalive_requests 100000000; }}\n \
         server {{ listen 127.0.0.1:{port} reuseport backlog=4096; listen 127.0.0.1:{h2_port} http2 reuseport backlog=4096;\n  \
         location / {{ proxy_pass http://backend; \
         proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; proxy_buffer_size 64k; proxy_buffers 8 64k; }}\n  \
         location /ws {{ proxy_pass http://127.0.0.1:{echo_port}; proxy_http_version 1.1; \
         proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\"; proxy_read_timeout 1h; }} }}\n}}\n",
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
    async fn start(control_url: String, threads: usize) -> anyhow::Result<HangarProxy> {
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

/// Serves a [`ScriptedPlane`] on 127.0.0.1:0; its `http://` URL.
async fn start_plane(backend_port: u16, echo_port: u16) -> anyhow::Result<String> {
    let plane =
        ScriptedPlane { address: format!("127.0.0.1:{backend_port}"), ws_address: format!("127.0.0.1:{echo_port}") };
    let control = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let control_url = format!("http://{}", control.local_addr()?);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(v1::proxy_service_server::ProxyServiceServer::new(plane))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(control)),
    );
    Ok(control_url)
}

/// The memory of idle WebSockets through Hangar's proxy: `hangar-server proxy` as a process of its
/// own (so that its resident memory is its alone), `wanted` WebSockets opened through it to the
/// echo backend, one round trip each, then left idle. Returns how many were opened (fewer than
/// `wanted` when the open-file limit does not allow two descriptors each, here and in the proxy)
/// and the proxy's resident memory growth per WebSocket, in bytes.
async fn idle_websocket_memory(control_url: &str, wanted: usize) -> anyhow::Result<(usize, f64)> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let n = wanted.min(open_file_limit()?.saturating_sub(1024) / 2);
    anyhow::ensure!(n > 0, "the open-file limit leaves no room for idle WebSockets");
    let server = std::env::current_exe()?.with_file_name("hangar-server");
    anyhow::ensure!(server.exists(), "{} is missing: scripts/bench builds it", server.display());
    let port = crate::procs::free_port()?;
    let mut command = tokio::process::Command::new(&server);
    command.args(["proxy", "--controller", control_url, "--listen", &format!("127.0.0.1:{port}")]);
    command.args(["--admin-listen", "off", "--name", "bench-idle-proxy"]).stderr(Stdio::null());
    let child = crate::procs::spawn_owned(command)?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("the proxy exited at once"))?;
    let url = format!("ws://127.0.0.1:{port}/{WS_TOKEN}/ws");
    let began = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        anyhow::ensure!(began.elapsed() < Duration::from_secs(10), "{} proxy did not listen", server.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One WebSocket first: the route is cached and the runtime's threads and buffers are there.
    ws_echo(&url, 1, Duration::from_millis(100)).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = crate::procs::rss_bytes(pid)?;
    let open = |_| {
        let url = url.clone();
        async move {
            let (mut socket, _) = tokio_tungstenite::connect_async(&url).await?;
            socket.send(Message::text(WS_MESSAGE)).await?;
            match socket.next().await {
                Some(Ok(Message::Text(text))) if text.as_str() == WS_MESSAGE => Ok(socket),
                other => Err(anyhow::anyhow!("no echo on an idle WebSocket: {other:?}")),
            }
        }
    };
    let sockets: Vec<_> = futures::stream::iter(0..n).map(open).buffer_unordered(64).collect().await;
    let sockets = sockets.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    // Idle: what the proxy holds for each once nothing moves.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = crate::procs::rss_bytes(pid)?;
    drop(sockets);
    drop(child);
    Ok((n, after.saturating_sub(before) as f64 / n as f64))
}

/// This process's soft limit on open files (children inherit it).
fn open_file_limit() -> anyhow::Result<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or_else(|| anyhow::anyhow!("no open-file limit in /proc/self/limits"))?;
    let soft = line.split_whitespace().nth(3).ok_or_else(|| anyhow::anyhow!("bad limits line {line:?}"))?;
    Ok(if soft == "unlimited" { usize::MAX } else { soft.parse()? })
}

/// Answers every lookup of the benchmark's tokens with the READY backend, as a controller does for
/// a session's token.
#[derive(Clone)]
struct ScriptedPlane {
    address: String,
    /// The WebSocket echo backend's, for [`WS_TOKEN`].
    ws_address: String,
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
        let welcome =
            v1::ProxyWelcome { node_id: "proxy-node".into(), controller_id: "bench".into(), heartbeat_interval: None };
        let first = v1::ProxyAttachResponse { message: Some(v1::proxy_attach_response::Message::Welcome(welcome)) };
        Ok(Response::new(futures::stream::once(async move { Ok(first) }).chain(futures::stream::pending()).boxed()))
    }

    async fn lookup_route(
        &self,
        req: Request<v1::LookupRouteRequest>,
    ) -> Result<Response<v1::LookupRouteResponse>, Status> {
        let address = match req.into_inner().token.as_str() {
            TOKEN => &self.address,
            WS_TOKEN => &self.ws_address,
            _ => return Err(Status::not_found("no such token")),
        };
        Ok(Response::new(v1::LookupRouteResponse {
            backend_id: BACKEND_ID.into(),
            state: v1::BackendState::Ready as i32,
            address: address.clone(),
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

    #[test]
    fn h2load_reports_give_requests_per_second_and_every_kind_of_error() {
        let text = "starting benchmark...\nfinished in 2.00s, 41234.50 req/s, 44.21MB/s\nrequests: 82469 total, 82469 started, 82469 done, 82460 succeeded, 9 failed, 2 errored, 1 timeout\nstatus codes: 82460 2xx, 0 3xx, 4 4xx, 5 5xx\ntraffic: 88.42MB (92716066) total\n";
        let f = parse_h2load(text).unwrap();
        assert_eq!((f.rps, f.errors), (41234.5, 9 + 2 + 1 + 4 + 5));
        assert!(parse_h2load("no report").is_none());
    }
}
