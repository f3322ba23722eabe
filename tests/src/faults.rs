//! What every fault scenario shares: two controller processes on one real
//! PostgreSQL, an in-process proxy or proxy processes, drones in-process or as processes,
//! steady HTTP traffic through a proxy, the Connect/terminate load on a few keys with an
//! observer of every backend it was answered (its history read by
//! `hangar_testkit::history`), node watchers that resume on another controller, and one line of
//! availability figures per scenario (`chaos-figures ...`, collected by `scripts/chaos`).
//!
//! The scenarios live in `tests/tests/faults*.rs` and other test files; this module is their
//! plumbing, so that a new scenario is the fault and its assertions, not another copy of it.

use crate::ControllerProcess;
use hangar::domain::BackendState;
use hangar_client::{ConnectRequest, HangarClient, SpawnSpec};
use hangar_executor::drone::{self, Backoff, DroneConfig};
use hangar_executor::runtime::process::ProcessRuntime;
use hangar_server::proxy::{Proxy, ProxyConfig, RunningProxy};
use hangar_testkit::history::{BackendLife, ConnectOutcome, Final, Recorder, WatcherLog};
use hangar_testkit::{check, eventually};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a scenario waits for what must happen (a node READY, a backend TERMINATED).
pub const WAIT: Duration = Duration::from_secs(30);

/// HTTP clients sending requests through the proxy one after another, each on its own
/// keep-alive connection.
pub const CLIENTS: usize = 4;

/// What one client saw: requests sent, and each failure with when it happened.
#[derive(Debug, Default)]
pub struct Traffic {
    pub sent: usize,
    pub failures: Vec<(Duration, String)>,
}

/// Sends GETs to `url` until `stop`, recording every answer that is not a 200 with the body the
/// backend wrote.
pub async fn steady_traffic(url: String, backend_id: String, began: Instant, stop: Arc<AtomicBool>) -> Traffic {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut traffic = Traffic::default();
    while !stop.load(Ordering::Relaxed) {
        traffic.sent += 1;
        let request = http::Request::get(&url).body(Default::default()).unwrap();
        let outcome = match tokio::time::timeout(Duration::from_secs(5), client.request(request)).await {
            Err(_) => Err("no answer within 5 s".to_string()),
            Ok(Err(err)) => Err(format!("request failed: {err}")),
            Ok(Ok(response)) => {
                let status = response.status();
                let error = response.headers().get("x-hangar-error").map(|v| v.to_str().unwrap_or("?").to_string());
                match response.into_body().collect().await.map(|body| body.to_bytes()) {
                    Ok(body) if status == 200 && String::from_utf8_lossy(&body).contains(&backend_id) => Ok(()),
                    Ok(_) => Err(format!("{status} {error:?}")),
                    Err(err) => Err(format!("{status}: body failed: {err}")),
                }
            }
        };
        if let Err(failure) = outcome {
            traffic.failures.push((began.elapsed(), failure));
        }
        // About 100 requests a second per client: steady, and light on two shared cores.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    traffic
}

/// Keys the scenario's Connects share, so that backends of one key follow each other.
pub const KEYS: usize = 3;

/// What the scenario's backends said of themselves: each backend's key and token (its `/env`),
/// and when the test saw it serving first and last.
#[derive(Default)]
pub struct Observed {
    pub lives: std::collections::BTreeMap<String, BackendLife>,
}

/// Polls every backend the Connects acknowledged through the proxy for its `/env` until `stop`,
/// every 50 ms; records the key and fencing token each reports and the span it was seen
/// serving. The spans lie within the real lifetimes, so two of them overlapping proves two
/// owners at once.
pub async fn observe_backends(
    recorder: Arc<Recorder>,
    urls: Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>,
    stop: Arc<AtomicBool>,
) -> Observed {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut observed = Observed::default();
    // Backends whose URL answered 410: ended, not asked again.
    let mut ended = std::collections::BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        let targets: Vec<(String, String)> = urls
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| !ended.contains(*id))
            .map(|(id, url)| (id.clone(), url.clone()))
            .collect();
        // All at once: a backend still starting holds its request in the proxy's startup wait.
        let asks = targets.into_iter().map(|(backend_id, url)| {
            let client = client.clone();
            async move {
                let request = http::Request::get(format!("{url}env")).body(Default::default()).unwrap();
                let response = tokio::time::timeout(Duration::from_millis(300), client.request(request)).await;
                let Ok(Ok(response)) = response else { return (backend_id, None) };
                let status = response.status().as_u16();
                let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                (backend_id, Some((status, String::from_utf8_lossy(&body).into_owned())))
            }
        });
        for (backend_id, answer) in futures::future::join_all(asks).await {
            let now = recorder.now();
            let env = match answer {
                Some((200, env)) => env,
                Some((410, _)) => {
                    ended.insert(backend_id);
                    continue;
                }
                _ => continue,
            };
            let var = |name: &str| env.lines().find_map(|l| l.strip_prefix(&format!("{name}="))).map(str::to_string);
            let (Some(id), Some(key), Some(token)) =
                (var("HANGAR_BACKEND_ID"), var("HANGAR_BACKEND_KEY"), var("HANGAR_FENCING_TOKEN"))
            else {
                continue;
            };
            assert_eq!(id, backend_id, "the proxy routed {backend_id}'s URL to the backend it names");
            let life = observed
                .lives
                .entry(id.clone())
                .or_insert_with(|| BackendLife::new(&id, &key, token.parse().unwrap(), now, Some(now)));
            life.ended = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    observed
}

/// The terminations of [`connect_load`]: whether it makes them, and the backends it asked to end.
#[derive(Debug)]
pub struct Terminations {
    pub on: AtomicBool,
    pub asked: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Default for Terminations {
    fn default() -> Self {
        Terminations { on: AtomicBool::new(true), asked: Default::default() }
    }
}

/// Connects on the shared keys through `controllers` in turn (whichever is listed now), each
/// backend running the executable `backend` (the test backend: its `/env` is what the observer
/// reads), and
/// terminates the backend it is answered every seventh round while `terminations` are on (7 is
/// prime to the number of keys, so every key's backends come and go), until `stop`.
pub async fn connect_load(
    worker: usize,
    recorder: Arc<Recorder>,
    controllers: Arc<std::sync::Mutex<Vec<HangarClient>>>,
    urls: Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>,
    backend: String,
    terminations: Arc<Terminations>,
    stop: Arc<AtomicBool>,
) -> std::collections::BTreeMap<String, usize> {
    let mut failures = std::collections::BTreeMap::<String, usize>::new();
    let mut round = worker;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let client = {
            let clients = controllers.lock().unwrap();
            clients[round % clients.len()].clone()
        };
        let key = format!("k{}", round % KEYS);
        let request = ConnectRequest::key("faults", &key, "v1").spawn(SpawnSpec::new(backend.clone()));
        let answer = recorder
            .connect(&format!("faults/{key}"), async {
                let connection = client.connect_backend(&request).await?;
                let token = match &connection.backend {
                    Some(backend) => backend.fencing_token,
                    None => client.get_backend(&connection.backend_id).await?.fencing_token,
                };
                urls.lock().unwrap().insert(connection.backend_id.clone(), connection.url.clone());
                Ok::<_, hangar_client::ClientError>((connection.backend_id, token))
            })
            .await;
        match answer {
            Ok((backend_id, _)) if round.is_multiple_of(7) && terminations.on.load(Ordering::Relaxed) => {
                terminations.asked.lock().unwrap().insert(backend_id.clone());
                if let Err(err) = client.terminate_backend(&backend_id, false).await {
                    *failures.entry(format!("terminate: {}", error_code(&err))).or_default() += 1;
                }
            }
            Ok(_) => {}
            Err(err) => *failures.entry(format!("connect: {}", error_code(&err))).or_default() += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    failures
}

/// `WatchNodes` on `url` after `start_revision`; an error when the controller cannot be reached.
pub async fn try_watch(
    url: &str,
    start_revision: u64,
) -> Result<tonic::Streaming<hangar::v1::WatchNodesResponse>, Box<dyn std::error::Error>> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?.connect().await?;
    let mut nodes = hangar::v1::node_service_client::NodeServiceClient::new(channel);
    Ok(nodes.watch_nodes(node_watch(start_revision)).await?.into_inner())
}

/// The store's revision now, as `url` reports it.
pub async fn store_revision(url: &str) -> u64 {
    let mut nodes = hangar::v1::node_service_client::NodeServiceClient::new(crate::channel(url).await);
    nodes.list_nodes(hangar::v1::ListNodesRequest::default()).await.unwrap().into_inner().revision
}

pub fn node_watch(start_revision: u64) -> hangar::v1::WatchNodesRequest {
    hangar::v1::WatchNodesRequest { filter: None, start_revision, send_initial: false, bookmark_interval: None }
}

/// The revision of a node change (ADDED, MODIFIED, REMOVED), `None` for bookmarks and the like.
pub fn change_revision(response: &hangar::v1::WatchNodesResponse) -> Option<u64> {
    use hangar::v1::NodeEventType::{Added, Modified, Removed};
    let event = response.event.as_ref()?;
    matches!(event.r#type(), Added | Modified | Removed).then_some(event.revision)
}

/// Watches every node change after `from` on `first`, and when that stream ends (its controller
/// died) resumes on the next URL `controllers` lists, after the last revision received, until
/// `stop`. The log of what it received.
pub async fn resuming_watcher(
    name: &str,
    from: u64,
    first: String,
    controllers: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) -> WatcherLog {
    let mut log = WatcherLog { watcher: name.into(), from, until: from, received: Vec::new() };
    let mut url = first;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = try_watch(&url, log.until).await else {
            // Dead: the next controller listed that is not this one.
            url = controllers.lock().unwrap().iter().find(|u| **u != url).cloned().expect("another controller");
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(100), stream.message()).await {
                Err(_) => continue,
                Ok(Ok(Some(response))) => {
                    if let Some(revision) = change_revision(&response) {
                        log.received.push(revision);
                        log.until = log.until.max(revision);
                    }
                }
                Ok(_) => break,
            }
        }
    }
    log
}

/// The node changes after `from` up to `until`, replayed from the store's history by `url`.
pub async fn node_log(url: &str, from: u64, until: u64) -> Vec<u64> {
    let mut stream = crate::watch(url, node_watch(from)).await.unwrap();
    let mut revisions = Vec::new();
    while revisions.last().is_none_or(|last| *last < until) {
        let response = tokio::time::timeout(WAIT, stream.message()).await.expect("the replay").unwrap().unwrap();
        revisions.extend(change_revision(&response));
    }
    revisions
}

pub fn error_code(err: &hangar_client::ClientError) -> String {
    let text = format!("{err:?}");
    text.split([' ', '(', '{']).next().unwrap_or("?").to_string()
}

// ---- The scenarios below share one load and one ending. ----

pub type Clients = Arc<std::sync::Mutex<Vec<HangarClient>>>;
pub type Urls = Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>;

/// Two SDK clients, each given every controller of `urls` (in two orders, so that half the
/// calls go first to the first controller).
pub fn failover_clients(urls: &[String]) -> Clients {
    failover_clients_with(urls, Default::default())
}

/// [`failover_clients`] with `options` (a shorter request timeout, say).
pub fn failover_clients_with(urls: &[String], options: hangar_client::ClientOptions) -> Clients {
    let sdk = |list: Vec<&String>| {
        let list: Vec<&str> = list.iter().map(|u| u.as_str()).collect();
        HangarClient::connect_lazy(&list.join(","), options.clone()).unwrap()
    };
    Arc::new(std::sync::Mutex::new(vec![sdk(urls.iter().collect()), sdk(urls.iter().rev().collect())]))
}

/// The Connect/terminate load of two workers on [`KEYS`] keys and the observer of every
/// backend they were answered, recorded for the checker.
pub struct Load {
    /// The history every call and observation goes to; a scenario records its own Connects here
    /// too ([`Load::connect`]).
    pub recorder: Arc<Recorder>,
    /// Every backend answered, by id, with its URL: the observer polls each.
    pub urls: Urls,
    /// The executable every backend of the load runs.
    backend: String,
    /// The workers' terminations ([`connect_load`]).
    terminations: Arc<Terminations>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<std::collections::BTreeMap<String, usize>>>,
    observer: tokio::task::JoinHandle<Observed>,
    watchers: Vec<tokio::task::JoinHandle<WatcherLog>>,
}

impl Load {
    /// The load on drones that run the test backend from this machine's target directory.
    pub fn start(clients: Clients) -> Load {
        Load::start_with(clients, hangar_executor::testing::test_backend_binary().display().to_string())
    }

    /// The load with backends running the test backend at `backend`, a path on the drones' hosts
    /// (drones in containers: where it was copied into them).
    pub fn start_with(clients: Clients, backend: String) -> Load {
        let recorder = Arc::new(Recorder::new());
        let urls: Urls = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let terminations = Arc::new(Terminations::default());
        let observer = tokio::spawn(observe_backends(recorder.clone(), urls.clone(), stop.clone()));
        let workers = (0..2)
            .map(|w| {
                let (recorder, clients, urls) = (recorder.clone(), clients.clone(), urls.clone());
                let (terminations, stop) = (terminations.clone(), stop.clone());
                tokio::spawn(connect_load(w, recorder, clients, urls, backend.clone(), terminations, stop))
            })
            .collect();
        Load { recorder, urls, backend, terminations, stop, workers, observer, watchers: Vec::new() }
    }

    /// Stops (`false`) or resumes the workers' terminations; they go on connecting. A scenario
    /// that asserts how the fault ends backends stops them, so that no backend it watches ends
    /// at the load's request instead. A terminate call already sent completes.
    pub fn set_terminating(&self, on: bool) {
        self.terminations.on.store(on, Ordering::Relaxed);
    }

    /// Whether a worker asked to end `backend_id` (its terminate call may have failed).
    pub fn asked_to_end(&self, backend_id: &str) -> bool {
        self.terminations.asked.lock().unwrap().contains(backend_id)
    }

    /// A node watcher on `first` from revision `from`, which resumes on another of `controllers`
    /// when its controller dies, until the load ends; [`Load::finish_history`] checks what it
    /// received against the store's own log of those revisions.
    pub fn watch_nodes(&mut self, name: &str, from: u64, first: &str, controllers: &[String]) {
        let (name, first) = (name.to_string(), first.to_string());
        let controllers = Arc::new(std::sync::Mutex::new(controllers.to_vec()));
        let stop = self.stop.clone();
        self.watchers.push(tokio::spawn(async move { resuming_watcher(&name, from, first, controllers, stop).await }));
    }

    /// A keyed Connect of the scenario's own (outside the load's workers), recorded in the
    /// history, its backend observed like the load's. The backend id and fencing token.
    pub async fn connect(&self, client: &HangarClient, key: &str) -> Result<(String, u64), hangar_client::ClientError> {
        let request = ConnectRequest::key("faults", key, "v1").spawn(SpawnSpec::new(self.backend.clone()));
        let urls = self.urls.clone();
        self.recorder
            .connect(&format!("faults/{key}"), async {
                let connection = client.connect_backend(&request).await?;
                let token = match &connection.backend {
                    Some(backend) => backend.fencing_token,
                    None => client.get_backend(&connection.backend_id).await?.fencing_token,
                };
                urls.lock().unwrap().insert(connection.backend_id.clone(), connection.url.clone());
                Ok((connection.backend_id, token))
            })
            .await
    }

    /// Stops the load, terminates every backend it was answered through `survivor` and waits
    /// for each to end; the checker must find no violation. Returns the failed calls by call and
    /// code, the number of answered Connects, and how many backends ended LOST.
    pub async fn finish(self, survivor: &HangarClient) -> (std::collections::BTreeMap<String, usize>, usize, usize) {
        let (failures, history) = self.finish_history(survivor).await;
        let answered = history.connects.iter().filter(|c| matches!(c.outcome, ConnectOutcome::Ok { .. })).count();
        let lost = history.finals.iter().filter(|f| f.reason.as_deref() == Some("Lost")).count();
        (failures, answered, lost)
    }

    /// [`Load::finish`], returning the failed calls by call and code and the whole checked
    /// history (how each backend ended is in `finals`, its reason as `TerminationReason`'s
    /// `Debug`: `"KeyExpired"`, `"Lost"`, `"External"`).
    pub async fn finish_history(
        self,
        survivor: &HangarClient,
    ) -> (std::collections::BTreeMap<String, usize>, hangar_testkit::history::History) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = std::collections::BTreeMap::<String, usize>::new();
        for worker in self.workers {
            for (code, n) in worker.await.unwrap() {
                *failures.entry(code).or_default() += n;
            }
        }
        let observed = self.observer.await.unwrap();
        let mut watched = Vec::new();
        for watcher in self.watchers {
            watched.push(watcher.await.unwrap());
        }
        let from = watched.iter().map(|w| w.from).min();
        let until = watched.iter().map(|w| w.until).max();
        let store_revisions = match (from, until) {
            (Some(from), Some(until)) if until > from => node_log(survivor.address(), from, until).await,
            _ => Vec::new(),
        };
        let ids: Vec<String> = self.urls.lock().unwrap().keys().cloned().collect();
        for id in &ids {
            survivor.terminate_backend(id, false).await.unwrap();
        }
        let mut finals = Vec::new();
        for id in &ids {
            let ended = eventually(WAIT, &format!("backend {id} TERMINATED"), async || {
                check(survivor.get_backend(id).await.unwrap(), |b| b.state == BackendState::Terminated)
            })
            .await;
            let reason = ended.status.termination_reason.map(|r| format!("{r:?}"));
            finals.push(Final { backend_id: id.clone(), state: "TERMINATED".into(), reason });
        }
        self.recorder.record(|history| {
            history.lives = observed.lives.into_values().collect();
            history.finals = finals;
            history.watchers = watched;
            history.store_revisions = store_revisions;
        });
        let history = self.recorder.history();
        let answered = history.connects.iter().filter(|c| matches!(c.outcome, ConnectOutcome::Ok { .. })).count();
        // That the load ran, so the checker has something to read; how many backends the
        // observer saw serve in a few seconds depends on the machine's load (the checker's
        // findings do not).
        assert!(
            answered >= 10 && !history.lives.is_empty(),
            "the load ran: {answered} answered Connects, {} backends seen serving",
            history.lives.len()
        );
        history.check().assert_ok();
        (failures, history)
    }
}

/// One line of availability figures, the same for every scenario (`scripts/chaos` collects
/// them): failed SDK calls by call and code, failed proxied requests, time until the drones were
/// READY again and until a new Connect succeeded (`-` where the scenario does not measure it).
pub fn print_figures(
    scenario: &str,
    failures: Option<&std::collections::BTreeMap<String, usize>>,
    proxied: Option<(usize, usize)>,
    drones_ready: Option<Duration>,
    connect_ok: Option<Duration>,
) {
    let calls = match failures {
        None => "-".to_string(),
        Some(failures) if failures.is_empty() => "0".to_string(),
        Some(failures) => {
            failures.iter().map(|(code, n)| format!("{code}:{n}")).collect::<Vec<_>>().join(",").replace(' ', "")
        }
    };
    let proxied = proxied.map_or("-".to_string(), |(failed, sent)| format!("{failed}/{sent}"));
    let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{}ms", d.as_millis()));
    eprintln!(
        "chaos-figures scenario={scenario} failed_calls={calls} failed_proxied={proxied} drones_ready_again={} \
         new_connect_ok={}",
        ms(drones_ready),
        ms(connect_ok)
    );
}

pub use crate::processes::{LoggedProcess, Process};

/// `hangar-drone run` given `controllers`, named `name`, its journal in `data_dir`, no admin
/// listener and its stderr discarded; the runtime (`--runtime`, `--executor-socket`) is the
/// caller's to add.
pub fn drone_command(controllers: &[String], name: &str, data_dir: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new(crate::binary("hangar-drone"));
    command
        .args(["run", "--controller", &controllers.join(","), "--name", name])
        .args(["--admin-listen", "off", "--data-dir"])
        .arg(data_dir)
        .stderr(std::process::Stdio::null());
    command
}

/// A drone process running its backends in itself (the process runtime).
pub fn drone_process(controllers: &[String], name: &str, data_dir: &std::path::Path) -> Process {
    Process::spawn(drone_command(controllers, name, data_dir).args(["--runtime", "process"]))
}

/// `hangar-drone executor` on `socket` with the process runtime: the backends are its children
/// (and die with it: the runtime sets their parent-death signal).
/// Its log is printed if the test fails.
pub fn executor_process(socket: &std::path::Path) -> LoggedProcess {
    let mut command = std::process::Command::new(crate::binary("hangar-drone"));
    command.args(["executor", "--runtime", "process", "--socket"]).arg(socket);
    LoggedProcess::spawn(&format!("the executor on {}", socket.display()), &mut command)
}

/// Sends `signal` (`STOP`, `CONT`, ...) to process `pid` with kill(1): the tests crate has no
/// libc binding of its own.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

pub fn proxy_process(controllers: &[String], name: &str, listen: &str) -> Process {
    let child = std::process::Command::new(crate::binary("hangar-server"))
        .args(["proxy", "--controller", &controllers.join(","), "--name", name, "--listen", listen])
        .args(["--admin-listen", "off"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start hangar-server proxy");
    Process(child)
}

pub use hangar_testkit::free_address;

/// The names of the READY drones; proxies, nodes too, are left out.
pub async fn ready_drones(client: &HangarClient) -> Vec<String> {
    let drones = hangar::domain::NodeFilter { kinds: vec![hangar::domain::NodeKind::Drone], ..Default::default() };
    let nodes = client.list_all_nodes(&drones).await.map(|l| l.nodes).unwrap_or_default();
    nodes.into_iter().filter(|n| n.state == hangar::domain::NodeState::Ready).map(|n| n.name).collect()
}

/// A controller process on `database`, whose Connects send clients to `proxy_url`.
pub fn controller(database: &str, proxy_url: &str) -> ControllerProcess {
    ControllerProcess::spawn_with(database, &[std::ffi::OsStr::new("--proxy-url"), std::ffi::OsStr::new(proxy_url)])
}

/// Two controllers on `database`, whose Connects send clients to `proxy_url`.
pub fn two_controllers(database: &str, proxy_url: &str) -> (ControllerProcess, ControllerProcess) {
    (controller(database, proxy_url), controller(database, proxy_url))
}

/// Two controller processes on one database and an in-process proxy given both, the proxy their
/// Connects name.
pub struct ControlPlane {
    pub a: ControllerProcess,
    pub b: ControllerProcess,
    /// `a`'s URL, then `b`'s.
    pub controllers: Vec<String>,
    pub proxy: RunningProxy,
    pub proxy_url: String,
}

/// A [`ControlPlane`] on `database`, its proxy named "edge" and configured by `configure`.
pub async fn control_plane(database: &str, configure: impl FnOnce(&mut ProxyConfig)) -> ControlPlane {
    let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy_listener.local_addr().unwrap());
    let (a, b) = two_controllers(database, &proxy_url);
    let controllers = vec![a.url.clone(), b.url.clone()];
    let mut config = ProxyConfig::new(controllers.clone(), "edge");
    configure(&mut config);
    let proxy = Proxy::start(config, proxy_listener).await.unwrap();
    ControlPlane { a, b, controllers, proxy, proxy_url }
}

pub fn in_process_drone(controllers: &[String], name: &str) -> drone::DroneHandle {
    let mut config = DroneConfig::new(controllers.to_vec(), name);
    config.runtime = Some(Arc::new(ProcessRuntime::new()));
    config.backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
    drone::spawn(config)
}

/// An in-process drone given `controllers`, once it has attached.
pub async fn attached_drone(controllers: &[String], name: &str) -> drone::DroneHandle {
    let drone = in_process_drone(controllers, name);
    tokio::time::timeout(WAIT, drone.attached()).await.expect("the drone attached");
    drone
}

/// Sends GETs to `path` through the first of `proxies` that answers, until `stop`: a request
/// that fails on one proxy is sent to the other at once (what a load balancer in front of the
/// proxies does), and later requests go to the other first. Counts requests sent, requests
/// that failed on every proxy, and requests moved to another proxy.
pub async fn traffic_over_proxies(
    proxies: Vec<String>,
    path: String,
    backend_id: String,
    stop: Arc<AtomicBool>,
) -> (usize, usize, usize) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let (mut sent, mut failed, mut moved) = (0, 0, 0);
    let mut current = 0;
    while !stop.load(Ordering::Relaxed) {
        sent += 1;
        let mut ok = false;
        for attempt in 0..proxies.len() {
            let proxy = &proxies[(current + attempt) % proxies.len()];
            let request = http::Request::get(format!("{proxy}{path}")).body(Default::default()).unwrap();
            let answered = match tokio::time::timeout(Duration::from_secs(2), client.request(request)).await {
                Ok(Ok(response)) if response.status() == 200 => {
                    let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    String::from_utf8_lossy(&body).contains(&backend_id)
                }
                _ => false,
            };
            if answered {
                ok = true;
                if attempt > 0 {
                    moved += 1;
                    current = (current + attempt) % proxies.len();
                }
                break;
            }
        }
        if !ok {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (sent, failed, moved)
}

/// A controller process on `database` like [`controller`], with `args` added (`--lease-duration`,
/// say) and its log (stderr) written to `log` for the scenario to read: the lines a failed
/// scenario reports.
pub fn controller_logged(database: &str, proxy_url: &str, args: &[&str], log: &std::path::Path) -> ControllerProcess {
    let mut all: Vec<&std::ffi::OsStr> = vec!["--proxy-url".as_ref(), proxy_url.as_ref()];
    all.extend(args.iter().map(|arg| std::ffi::OsStr::new(*arg)));
    ControllerProcess::spawn_logging(database, &all, std::fs::File::create(log).unwrap())
}

/// The lines of the log at `path` at WARN or ERROR, the last `last` of them, without colours.
pub fn log_warnings(path: &std::path::Path, last: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let plain = |line: &str| {
        let mut out = String::with_capacity(line.len());
        let mut escape = false;
        for c in line.chars() {
            match (escape, c) {
                (false, '\x1b') => escape = true,
                (false, c) => out.push(c),
                (true, 'm') => escape = false,
                (true, _) => {}
            }
        }
        out
    };
    let lines: Vec<String> = text.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).map(plain).collect();
    lines[lines.len().saturating_sub(last)..].to_vec()
}

/// Connects on fresh keys (`fresh-1`, `fresh-2`, ...) through `client` until one succeeds,
/// terminates that backend and returns how long after `since` (the end of the fault, `what`) it
/// succeeded. Panics when none has succeeded [`WAIT`] after `since`.
pub async fn first_new_connect(client: &HangarClient, backend: &str, since: Instant, what: &str) -> Duration {
    let mut fresh = 0;
    loop {
        fresh += 1;
        let request = ConnectRequest::key("faults", format!("fresh-{fresh}"), "v1").spawn(SpawnSpec::new(backend));
        match client.connect_backend(&request).await {
            Ok(connection) => {
                client.terminate_backend(&connection.backend_id, false).await.unwrap();
                break since.elapsed();
            }
            Err(err) if since.elapsed() < WAIT => tracing::info!("a Connect after {what} failed: {err}"),
            Err(err) => panic!("no Connect succeeded within {WAIT:?} of {what}: {err}"),
        }
    }
}

/// Waits (up to [`WAIT`]) until `client` reads the backend `backend_id` READY.
pub async fn backend_ready(client: &HangarClient, backend_id: &str) {
    eventually(WAIT, "the backend READY", async || {
        check(client.get_backend(backend_id).await.unwrap().state, |s| *s == BackendState::Ready)
    })
    .await;
}

/// The Connect [`Load`] on `clients` and, with it, [`CLIENTS`] steady-traffic clients sending to
/// READY backends until [`SteadyLoad::stop_traffic`].
pub struct SteadyLoad {
    load: Load,
    /// When the traffic began: what each failure's time is measured from.
    pub began: Instant,
    stop: Arc<AtomicBool>,
    traffic: Vec<tokio::task::JoinHandle<Traffic>>,
}

impl SteadyLoad {
    /// Starts the load, then the traffic: client `i` sends to `targets[i % targets.len()]`.
    pub fn start(clients: Clients, targets: &[hangar_client::Connection]) -> SteadyLoad {
        SteadyLoad::with(Load::start(clients), targets)
    }

    /// The traffic to `targets` next to a load already started.
    pub fn with(load: Load, targets: &[hangar_client::Connection]) -> SteadyLoad {
        let began = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let traffic = (0..CLIENTS)
            .map(|i| {
                let target = &targets[i % targets.len()];
                tokio::spawn(steady_traffic(target.url.clone(), target.backend_id.clone(), began, stop.clone()))
            })
            .collect();
        SteadyLoad { load, began, stop, traffic }
    }

    /// Stops the traffic clients; returns the load, still running, with the requests they sent
    /// and every failure they saw.
    pub async fn stop_traffic(self) -> (Load, usize, Vec<(Duration, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut sent, mut failed) = (0, Vec::new());
        for t in self.traffic {
            let t = t.await.unwrap();
            sent += t.sent;
            failed.extend(t.failures);
        }
        (self.load, sent, failed)
    }
}

/// A fresh database on `pg`, its URL, and the same database reached through a [`Relay`] the test
/// can cut, blackhole and heal: the link from one controller to PostgreSQL.
pub async fn database_with_relay(
    pg: &hangar_server::testing::PgCluster,
) -> (String, hangar_testkit::relay::Relay, String) {
    let database = pg.create_database().await.unwrap();
    let relay = hangar_testkit::relay::Relay::start(format!("127.0.0.1:{}", pg.port()).parse().unwrap()).await.unwrap();
    let relayed = database.replace(&format!(":{}/", pg.port()), &format!(":{}/", relay.addr().port()));
    assert_ne!(relayed, database, "the relay's port in the URL");
    (database, relay, relayed)
}
