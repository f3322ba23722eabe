//! `hangar-server`: the controller, the proxy, and the embedded all-in-one `dev` mode (only with
//! the default `dev` feature, since it embeds a drone and with it the runtimes).

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use hangar::secret::Secret;
use hangar_agent::admin::AdminListen;
use hangar_client::{CredentialFlags, Credentials};
use hangar_server::api::BackendSettings;
use hangar_server::auth::{self, Reflection, Role, bind::BindDecision};
use hangar_server::controller::{Controller, ControllerConfig, LivenessConfig};
#[cfg(feature = "dev")]
use hangar_server::dev::{DevCluster, DevOptions, DevRuntime, banner, demo_backend};
use hangar_server::limits::LimitsConfig;
use hangar_server::proxy::{Proxy, ProxyConfig, TlsFiles};
use hangar_server::store;
use hangar_server::telemetry::{self, LogFormat, TraceArgs};
use hangar_server::tls::ControllerTlsFiles;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// jemalloc instead of the system's allocator. A placement allocates and frees on three kinds of
/// thread (the runtime's workers, the store's thread, SQLite's connection threads), and with
/// glibc's malloc `perf` put ~17 % of the controller's CPU in the allocator (`malloc_consolidate`
/// and the free lists). With jemalloc, placements ran 16 % faster and heartbeats took less CPU for
/// 3 % more memory; mimalloc was as fast but held a third more memory (BENCHMARKS.md, "Session of
/// 2026-12-06 (8)"). It also serves the C allocations (`malloc`, which the workspace's
/// `unprefixed_malloc_on_supported_platforms` feature makes jemalloc's): the bundled SQLite's, all
/// on the write connection's thread, where glibc's allocator was ~5 % of that thread's samples;
/// placements ran 4–5 % faster (BENCHMARKS.md, "Session of 2026-12-07 (10)").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "hangar-server",
    version,
    about = "Hangar controller: schedules session backends on drones and serves the hangar.v1 gRPC API."
)]
struct Cli {
    /// Log line format on stderr. Filter with RUST_LOG (e.g. RUST_LOG=hangar_server=debug).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a controller. Several controllers may share one PostgreSQL database.
    #[command(after_help = "Examples:\n  \
        hangar-server controller --listen 0.0.0.0:7070 --data-dir /var/lib/hangar\n  \
        hangar-server controller --database postgres://hangar@db/hangar\n  \
        hangar-server controller --listen 0.0.0.0:7070 --auth-file /etc/hangar/auth.toml\n  \
        hangar-server controller --listen 0.0.0.0:7070 --tls-cert controller.pem --tls-key controller.key --tls-client-ca ca.pem\n\n\
        Check it with:  grpcurl -plaintext 127.0.0.1:7070 grpc.health.v1.Health/Check\n\n\
        SIGHUP re-reads the auth file and the TLS certificate, key and client CA; a broken file \
        keeps the one in force (docs/security.md).")]
    Controller(ControllerArgs),
    /// Run an HTTP proxy that routes connection URLs (`/{token}/…`) to backends.
    #[command(after_help = "Examples:\n  \
        hangar-server proxy --controller http://127.0.0.1:7070 --listen 0.0.0.0:7080 --name edge-1\n  \
        hangar-server proxy --controller https://ctl.example:7070 --controller-tls-ca ca.pem \\\n      \
        --controller-tls-cert edge-1.pem --controller-tls-key edge-1.key --name edge-1\n\n\
        Clients open the URL that Connect returned, e.g. http://edge-1:7080/TOKEN/. Answers when \
        the request cannot be forwarded: 404 unknown or expired token, 410 backend terminated, \
        502 backend unreachable, 503 backend still starting or no controller reachable; the \
        x-hangar-error header names the case.")]
    Proxy(ProxyArgs),
    /// Run everything in one process: a controller on SQLite, a proxy and one drone. For trying
    /// Hangar.
    #[cfg(feature = "dev")]
    #[command(
        after_help = "Then, in another terminal (with `hangar` from `cargo install --locked --path client`):\n  \
        hangar connect docs/doc-1 --image hangar-demo --wait\n  \
        curl \"$(hangar connect docs/doc-1 -o json | jq -r .url)\"\n\n\
        `hangar-demo` is dev's demo backend: on Docker a local image (hangar-demo:latest) built from this \
        binary at start-up, with nothing pulled; on the process runtime this binary's `demo-backend`."
    )]
    Dev(DevArgs),
    /// Serve dev's demo backend on $PORT: what the `hangar-demo` image runs.
    ///
    /// Every request gets a page saying which backend answered (its id, key and fencing token),
    /// the x-verified-* headers the proxy set and a hit counter: HTML for browsers, text for
    /// curl. /ws is a WebSocket echo. Ends on SIGTERM.
    #[cfg(feature = "dev")]
    DemoBackend(DemoBackendArgs),
    /// What dev's warm network sandboxes run: waits for SIGTERM.
    #[cfg(feature = "dev")]
    #[command(hide = true)]
    Sandbox,
    /// Bearer tokens for the controller's auth file.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a fresh random secret (first line) and the `[[token]]` entry that names it by its
    /// SHA-256, for the auth file.
    #[command(after_help = "Example:\n  \
        hangar-server token generate --name ci --role client\n\n\
        Give the secret to its holder (HANGAR_TOKEN, --token-file); it is stored nowhere. Append the \
        entry to the auth file and send the controller SIGHUP.")]
    Generate(TokenGenerateArgs),
}

#[derive(Args)]
struct TokenGenerateArgs {
    /// The principal's name, as logs and audit lines show it. Default: token-XXXXXXXX.
    #[arg(long)]
    name: Option<String>,
    /// reader, client, operator, admin, drone or proxy (docs/security.md).
    #[arg(long, default_value = "reader")]
    role: Role,
    /// A node name a drone or proxy token may attach as (repeat for several). Default for those
    /// roles: the token's name.
    #[arg(long = "node")]
    nodes: Vec<String>,
}

#[cfg(feature = "dev")]
#[derive(Args)]
struct DemoBackendArgs {
    /// Address to listen on, with the port from $PORT (8080 without it).
    #[arg(long, default_value = "0.0.0.0")]
    host: std::net::IpAddr,
}

#[derive(Args)]
struct ControllerArgs {
    #[command(flatten)]
    trace: TraceArgs,
    /// Address the gRPC API listens on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Address of the admin listener: /metrics (Prometheus), /healthz, /readyz and the
    /// dashboard at /. Plain HTTP; with --auth-file the dashboard's data asks for a token, the
    /// rest is open: keep it on loopback or a private network. `off` serves none.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:7071")]
    admin_listen: AdminListen,
    /// sqlite://PATH (one controller) or postgres://USER@HOST/DB (any number of controllers).
    /// Default: sqlite in --data-dir.
    #[arg(long, env = "HANGAR_DATABASE")]
    database: Option<String>,
    /// Where the default SQLite database lives.
    #[arg(long, default_value = "./hangar-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    liveness: LivenessArgs,
    /// Auth file (TOML): the tokens and client certificates that may call, and their roles
    /// (docs/security.md). Without it everyone may call everything, so the controller listens
    /// only on loopback unless --insecure.
    #[arg(long, env = "HANGAR_AUTH_FILE", value_name = "PATH")]
    auth_file: Option<PathBuf>,
    /// gRPC server reflection: open to everyone, for authenticated callers only, or off.
    #[arg(long, value_enum, default_value = "open")]
    reflection: Reflection,
    /// Do not serve gRPC server reflection: the same as --reflection off.
    #[arg(long)]
    no_reflection: bool,
    /// Listen on a non-loopback address without --auth-file: anyone who reaches it may call
    /// every method as admin. Prints a loud warning.
    #[arg(long)]
    insecure: bool,
    /// Base URL clients reach the proxy at; Connect answers `{proxy-url}/{token}/`.
    #[arg(long, env = "HANGAR_PROXY_URL", default_value = "http://127.0.0.1:7080")]
    proxy_url: String,
    /// Serve TLS: PEM certificate chain (leaf first). Needs --tls-key.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Require every client to present a certificate signed by this PEM CA (mTLS). Needs
    /// --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    retention: RetentionArgs,
    #[command(flatten)]
    leases: LeaseArgs,
    #[command(flatten)]
    backend_defaults: BackendDefaultArgs,
}

/// Key leases (docs/design/backends-and-leases.md#key-leases-and-fencing). Every controller on
/// one database should be given the same values.
#[derive(Args)]
struct LeaseArgs {
    /// How long a key's lease lasts without renewal. Drones renew every third of it and stop a
    /// backend they cannot renew at half of it; a key whose drone died is given to a new backend
    /// after about this long. At least 3s.
    #[arg(long, default_value = "30s", value_parser = parse_lease, value_name = "DURATION")]
    lease_duration: Duration,
    /// While this controller cannot reach its database, it tells drones that their renewals are
    /// deferred, and they keep their backends up to this long past their lease deadlines: a
    /// database outage shorter than this ends no session. The database holds such keys from
    /// other holders as long. 0 turns deferrals off (an outage then ends every keyed backend
    /// within half a lease).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    store_outage_grace: Duration,
}

impl LeaseArgs {
    fn apply(&self, backends: BackendSettings) -> BackendSettings {
        BackendSettings { lease_duration: self.lease_duration, store_outage_grace: self.store_outage_grace, ..backends }
    }
}

/// What every backend this controller places is given (docs/design/backends-and-leases.md,
/// "Defaults"). Every controller on one database should be given the same values.
#[derive(Args)]
struct BackendDefaultArgs {
    /// How long a backend may take from its start to answering HTTP on its port: one still not
    /// READY after this ends TERMINATED with STARTUP_TIMEOUT. Raise it for images that load
    /// for long. At least 1s.
    #[arg(long, default_value = "60s", value_parser = parse_at_least_a_second, value_name = "DURATION")]
    startup_timeout: Duration,
    /// How long a backend asked to stop gets between SIGTERM and the kill (a terminate that is
    /// not --hard, an idle or lifetime limit, a lost key lease). 0 kills at once.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    stop_grace: Duration,
    /// How long the URL token a Connect answers admits requests through the proxy: every
    /// request after it expires is refused, even on a connection open since before, while a
    /// WebSocket opened before then stays open. At least 1s.
    #[arg(long, default_value = "1h", value_parser = parse_at_least_a_second, value_name = "DURATION")]
    token_ttl: Duration,
}

impl BackendDefaultArgs {
    fn apply(&self, backends: BackendSettings) -> BackendSettings {
        BackendSettings {
            startup_timeout: self.startup_timeout,
            stop_grace: self.stop_grace,
            token_ttl: self.token_ttl,
            ..backends
        }
    }
}

/// A startup timeout or token lifetime: humantime, at least one second.
fn parse_at_least_a_second(value: &str) -> Result<Duration, String> {
    parse_at_least(value, Duration::from_secs(1), "it")
}

/// `value` (humantime: `90s`, `24h`, `7d`) if it is at least `min`; `what` names it in the error.
fn parse_at_least(value: &str, min: Duration, what: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if duration < min {
        return Err(format!("{value:?} is too short: {what} must be at least {}", humantime::format_duration(min)));
    }
    Ok(duration)
}

/// A lease: humantime, at least 3 s, so that a third of it leaves room for a renewal's round trip.
fn parse_lease(value: &str) -> Result<Duration, String> {
    parse_at_least(value, Duration::from_secs(3), "a lease")
}

/// How long the controller keeps what is over: terminated backends, and the change log watchers
/// resume from (docs/design/storage-and-revisions.md, "Retention").
#[derive(Args)]
struct RetentionArgs {
    /// How long a TERMINATED backend stays readable (GetBackend, ListBackends, its tokens answer
    /// "terminated") before it is removed with its tokens and, if it was the last holder of a
    /// free key, its key row; watchers see it as REMOVED. At least 1s.
    #[arg(long, default_value = "24h", value_parser = parse_retention, value_name = "DURATION")]
    backend_retention: Duration,
    /// How long the change log is kept for watchers to resume from (but see
    /// --history-min-revisions); older start revisions answer OUT_OF_RANGE. At least 1s.
    #[arg(long, default_value = "15m", value_parser = parse_retention, value_name = "DURATION")]
    history_retention: Duration,
    /// The newest this many changes of the change log are kept whatever their age.
    #[arg(long, default_value_t = ControllerConfig::default().retention.min_revisions, value_name = "CHANGES")]
    history_min_revisions: u64,
}

impl RetentionArgs {
    /// `config` with these retention times.
    fn apply(&self, config: ControllerConfig) -> ControllerConfig {
        let max_age = chrono::Duration::from_std(self.history_retention).unwrap_or(chrono::Duration::MAX);
        ControllerConfig {
            backend_retention: self.backend_retention,
            retention: store::Retention { max_age, min_revisions: self.history_min_revisions },
            ..config
        }
    }
}

/// A retention time: humantime (`90s`, `24h`, `7d`), at least one second. Zero would remove a
/// backend the moment it ends, while its drone's last events and its clients' reads of the end
/// are still on their way.
fn parse_retention(value: &str) -> Result<Duration, String> {
    parse_at_least(value, Duration::from_secs(1), "a retention time")
}

/// Per-caller limits: a caller is its principal, or its address when it has none. 0 turns a
/// limit off. A caller over one gets RESOURCE_EXHAUSTED (docs/security.md, "Limits").
#[derive(Args)]
struct LimitArgs {
    /// Requests per second one caller may make on average (unary calls; opening a stream).
    #[arg(long, value_name = "PER_SECOND", default_value_t = LimitsConfig::default().rate_per_second)]
    rate_limit: u32,
    /// Requests one caller may make in one burst: the size of its token bucket, which refills
    /// at --rate-limit.
    #[arg(long, value_name = "REQUESTS", default_value_t = LimitsConfig::default().burst)]
    rate_burst: u32,
    /// Unary calls of one caller in flight at once.
    #[arg(long, value_name = "CALLS", default_value_t = LimitsConfig::default().max_concurrent_calls)]
    max_concurrent_calls: u32,
    /// Watch streams one caller may hold open (a drone's or proxy's link is not one).
    #[arg(long, value_name = "STREAMS", default_value_t = LimitsConfig::default().max_watches)]
    max_watches: u32,
}

impl LimitArgs {
    fn config(&self) -> LimitsConfig {
        LimitsConfig {
            rate_per_second: self.rate_limit,
            burst: self.rate_burst,
            max_concurrent_calls: self.max_concurrent_calls,
            max_watches: self.max_watches,
            ..LimitsConfig::default()
        }
    }
}

#[derive(Args)]
struct LivenessArgs {
    /// How often nodes heartbeat.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// Silence after which a node is UNHEALTHY.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    unhealthy_after: Duration,
    /// Silence after which a node is OFFLINE and its stream closed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    offline_after: Duration,
    /// How often heartbeat times and resource figures are written to the store.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    refresh_interval: Duration,
}

impl LivenessArgs {
    fn config(&self) -> anyhow::Result<LivenessConfig> {
        anyhow::ensure!(
            self.heartbeat_interval < self.unhealthy_after && self.unhealthy_after < self.offline_after,
            "liveness timings must satisfy --heartbeat-interval < --unhealthy-after < --offline-after"
        );
        Ok(LivenessConfig {
            heartbeat_interval: self.heartbeat_interval,
            unhealthy_after: self.unhealthy_after,
            offline_after: self.offline_after,
            refresh_interval: self.refresh_interval,
            ..LivenessConfig::default()
        })
    }
}

#[derive(Args)]
struct ProxyArgs {
    #[command(flatten)]
    trace: TraceArgs,
    /// Controller URL; repeat (or separate with commas) for several.
    #[arg(long = "controller", env = "HANGAR_CONTROLLER", required = true, value_delimiter = ',')]
    controllers: Vec<String>,
    /// Address the HTTP proxy listens on.
    #[arg(long, default_value = "127.0.0.1:7080")]
    listen: SocketAddr,
    /// Address of the admin listener: /metrics (Prometheus), /healthz, and /readyz (ready once
    /// attached to a controller). It is not authenticated: keep it on loopback or a private
    /// network. `off` serves none.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:7081")]
    admin_listen: AdminListen,
    /// Name of this proxy node, unique in its cluster.
    #[arg(long, default_value = "proxy")]
    name: String,
    #[arg(long, default_value = "default")]
    cluster: String,
    /// Base URL clients reach this proxy at, if not http://LISTEN (e.g. behind a load balancer).
    #[arg(long)]
    public_url: Option<String>,
    /// How long a request for a backend that is still starting waits for it.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    startup_wait: Duration,
    /// Serve HTTPS: PEM certificate chain (leaf first). Needs --tls-key.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Token and TLS towards the controllers. (--tls-cert and --tls-key are this proxy's own
    /// HTTPS listener; its client certificate is --controller-tls-cert.)
    #[command(flatten)]
    controller_credentials: ControllerCredentialArgs,
}

/// The proxy's credentials towards its controllers: the flags of every Hangar client, with
/// `--controller-` before the TLS ones, since the proxy's own `--tls-*` serve its listener. The
/// variables are every client's (HANGAR_TOKEN, HANGAR_TLS_CA, …).
#[derive(Args)]
struct ControllerCredentialArgs {
    /// Bearer token for the controllers [env: HANGAR_TOKEN]. Prefer --token-file or the variable:
    /// other users of the host can read a command line.
    #[arg(long, value_name = "TOKEN", value_parser = parse_secret)]
    token: Option<Secret>,
    /// File holding the bearer token, read at each connection [env: HANGAR_TOKEN_FILE].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// PEM file of the CA that signed the controllers' certificates (https:// URLs; default: the
    /// system's roots) [env: HANGAR_TLS_CA].
    #[arg(long, value_name = "FILE")]
    controller_tls_ca: Option<PathBuf>,
    /// PEM client certificate for controllers that require one (mTLS) [env: HANGAR_TLS_CERT].
    #[arg(long, value_name = "FILE")]
    controller_tls_cert: Option<PathBuf>,
    /// PEM private key of --controller-tls-cert [env: HANGAR_TLS_KEY].
    #[arg(long, value_name = "FILE")]
    controller_tls_key: Option<PathBuf>,
    /// Name the controllers' certificates must carry, when it is not the URL's host
    /// [env: HANGAR_TLS_SERVER_NAME].
    #[arg(long, value_name = "NAME")]
    controller_tls_server_name: Option<String>,
}

impl ControllerCredentialArgs {
    fn credentials(self) -> anyhow::Result<Credentials> {
        let flags = CredentialFlags {
            token: self.token,
            token_file: self.token_file,
            tls_ca: self.controller_tls_ca,
            tls_cert: self.controller_tls_cert,
            tls_key: self.controller_tls_key,
            tls_server_name: self.controller_tls_server_name,
        };
        Ok(Credentials::from_env_and_flags(&flags)?)
    }
}

fn parse_secret(value: &str) -> Result<Secret, String> {
    Ok(Secret::new(value))
}

#[cfg(feature = "dev")]
#[derive(Args)]
struct DevArgs {
    #[command(flatten)]
    trace: TraceArgs,
    /// Address the gRPC API listens on (port 0 picks a free one and prints it).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Where the SQLite database lives.
    #[arg(long, default_value = "./hangar-data")]
    data_dir: PathBuf,
    /// Address the HTTP proxy listens on (port 0 picks a free one and prints it).
    #[arg(long, default_value = "127.0.0.1:7080")]
    proxy_listen: SocketAddr,
    /// Address of the admin listener of the whole dev process: /metrics (Prometheus), /healthz,
    /// /readyz (store, proxy and drone) and the dashboard at /. Port 0 picks a free one and
    /// prints it; `off` serves none.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:7071")]
    admin_listen: AdminListen,
    /// Name of the embedded drone.
    #[arg(long, default_value = "dev-drone")]
    drone_name: String,
    /// What runs backends: Docker if an engine answers (auto), or always one of the two.
    #[arg(long, value_enum, default_value = "auto")]
    runtime: DevRuntime,
    /// Listen for gRPC on a non-loopback address: dev has no authentication, so anyone who
    /// reaches it may call every method. Prints a loud warning.
    #[arg(long)]
    insecure: bool,
    #[command(flatten)]
    retention: RetentionArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Traces for the long-running parts, under their default service names.
    let (service, endpoint) = match &cli.command {
        Command::Controller(args) => ("hangar-controller", args.trace.otlp_endpoint.as_deref()),
        Command::Proxy(args) => ("hangar-proxy", args.trace.otlp_endpoint.as_deref()),
        #[cfg(feature = "dev")]
        Command::Dev(args) => ("hangar-dev", args.trace.otlp_endpoint.as_deref()),
        _ => ("hangar-server", None),
    };
    let telemetry = telemetry::init(cli.log_format, endpoint, service)?;
    let result = run(cli.command).await;
    telemetry.shutdown().await;
    result
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Controller(args) => run_controller(args).await,
        Command::Proxy(args) => run_proxy(args).await,
        #[cfg(feature = "dev")]
        Command::Dev(args) => run_dev(args).await,
        #[cfg(feature = "dev")]
        Command::DemoBackend(args) => demo_backend::run(args.host).await,
        #[cfg(feature = "dev")]
        Command::Sandbox => Ok(hangar_executor::runtime::docker::hold_sandbox().await?),
        Command::Token(TokenCommand::Generate(args)) => {
            generate_token(args);
            Ok(())
        }
    }
}

fn generate_token(args: TokenGenerateArgs) {
    let name = args.name.unwrap_or_else(|| format!("token-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let nodes = match (args.nodes.is_empty(), args.role) {
        (true, Role::Drone | Role::Proxy) => vec![name.clone()],
        _ => args.nodes,
    };
    let (secret, entry) = auth::file::generate_token(&name, args.role, &nodes);
    // The secret alone on the first line, so that scripts can take it with `head -1`.
    println!("{}", secret.expose());
    println!();
    println!("# Append to the auth file, then send the controller SIGHUP:");
    print!("{entry}");
    eprintln!(
        "The first line is {name:?}'s secret: hand it to its holder (HANGAR_TOKEN or --token-file). \
         It is stored nowhere; the entry holds only its SHA-256."
    );
}

/// Prints a line after the "listening on" line, or the dev server's banner. A harness (or
/// `| head`) may stop reading and close the pipe once it has seen what it waits for (the
/// "listening on" line, the banner's "Stop with Ctrl-C"): a write to a closed stdout must not end
/// the server, as `println!` would (it panics, exit code 101).
fn print_after_ready(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// Refuses a listen address anyone may call as admin unless `--insecure`, and warns loudly
/// when it is given.
fn check_bind(addr: SocketAddr, authenticated: bool, insecure: bool) -> anyhow::Result<()> {
    match auth::bind::check(addr, authenticated, insecure) {
        Ok(BindDecision::Safe) => Ok(()),
        Ok(BindDecision::Insecure(warning)) => {
            eprintln!("{warning}");
            tracing::warn!(%addr, "--insecure: serving without authentication");
            Ok(())
        }
        Err(refusal) => anyhow::bail!(refusal),
    }
}

async fn run_proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let mut config = ProxyConfig::new(args.controllers, args.name);
    config.credentials = args.controller_credentials.credentials()?;
    config.cluster = args.cluster;
    config.public_url = args.public_url;
    config.startup_wait = args.startup_wait;
    config.admin_listen = args.admin_listen.0;
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(TlsFiles { cert, key });
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let proxy = Proxy::start(config, listener).await?;
    let stop = shutdown_signal();
    println!("hangar-server proxy listening on {}", proxy.url());
    if let Some(admin) = proxy.admin_url() {
        print_after_ready(&format!("admin (metrics, health) on {admin}"));
    }
    stop.await;
    proxy.shutdown().await;
    Ok(())
}

async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    // Callers prove who they are with an auth file, or with a client certificate every
    // connection must present (`--tls-client-ca`).
    let authenticated = args.auth_file.is_some() || (args.tls_cert.is_some() && args.tls_client_ca.is_some());
    check_bind(args.listen, authenticated, args.insecure)?;
    let database = match args.database {
        Some(url) => url,
        None => {
            std::fs::create_dir_all(&args.data_dir)
                .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
            store::sqlite_url(&args.data_dir.join("hangar.db"))
        }
    };
    let store = store::open(&database).await.context("cannot open the database")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let config = ControllerConfig {
        liveness: args.liveness.config()?,
        reflection: if args.no_reflection { Reflection::Off } else { args.reflection },
        auth_file: args.auth_file,
        proxy_url: args.proxy_url,
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .map(|(cert, key)| ControllerTlsFiles { files: TlsFiles { cert, key }, client_ca: args.tls_client_ca }),
        limits: args.limits.config(),
        admin_listen: args.admin_listen.0,
        backends: args.backend_defaults.apply(args.leases.apply(BackendSettings::default())),
        ..args.retention.apply(ControllerConfig::default())
    };
    let controller = Controller::start(store, config, listener).await?;
    // Before the line that says the controller is up: a SIGHUP sent upon reading it must not
    // meet the default action (termination).
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let stop = shutdown_signal();
    println!("hangar-server controller listening on {}", controller.url());
    if let Some(admin) = controller.admin_url() {
        print_after_ready(&format!("admin (metrics, health, dashboard) on {admin}"));
    }
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading");
                // A failure is logged by reload and leaves everything as it was.
                let _ = controller.reload();
            }
        }
    }
    controller.shutdown().await
}

#[cfg(feature = "dev")]
async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    // Dev has no authentication: loopback only, unless --insecure.
    check_bind(args.listen, false, args.insecure)?;
    let options = DevOptions {
        listen: args.listen,
        proxy_listen: args.proxy_listen,
        admin_listen: args.admin_listen.0,
        data_dir: args.data_dir.clone(),
        drone_name: args.drone_name,
        controller: args.retention.apply(ControllerConfig::default()),
        runtime: args.runtime,
        // The demo backend is this very binary.
        demo_executable: std::env::current_exe()
            .inspect_err(|err| tracing::warn!(error = %err, "cannot find this executable; no demo backend"))
            .ok(),
    };
    let cluster = DevCluster::start(options).await?;
    let stop = shutdown_signal();
    print_after_ready(&banner(&cluster, &args.data_dir));
    stop.await;
    cluster.shutdown().await
}

/// SIGINT (Ctrl-C) or SIGTERM. The handlers are in place once this returns, so call it before
/// printing that the server is up: a signal sent by whoever reads that line must not meet the
/// default action (termination without the graceful shutdown).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    }
}
