//! Faults under load: two controller processes on one real PostgreSQL, proxies and drones given
//! both, backends on the process runtime, steady traffic or Connects through SDK clients given
//! both controllers, and one part killed (a controller, a drone, a proxy: SIGKILL) or restarted
//! (PostgreSQL) while it runs. What users of the data plane must not notice, a recorded history
//! that the checker (`hangar_testkit::history`) finds no violation in, and one line of
//! availability figures per scenario (`chaos-figures ...`, collected by `scripts/chaos`).

use hangar::domain::BackendState;
use hangar_client::{ConnectRequest, HangarClient, SpawnSpec};
use hangar_executor::drone::{self, AttachState, Backoff, DroneConfig};
use hangar_executor::runtime::process::ProcessRuntime;
use hangar_server::proxy::{Proxy, ProxyConfig, RunningProxy};
use hangar_server::testing::PgCluster;
use hangar_testkit::history::{BackendLife, ConnectOutcome, Final, Recorder, WatcherLog};
use hangar_testkit::{check, eventually};
use hangar_tests::ControllerProcess;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// HTTP clients sending requests through the proxy one after another, each on its own
/// keep-alive connection.
const CLIENTS: usize = 4;

/// What one client saw: requests sent, and each failure with when it happened.
#[derive(Debug, Default)]
struct Traffic {
    sent: usize,
    failures: Vec<(Duration, String)>,
}

/// Sends GETs to `url` until `stop`, recording every answer that is not a 200 with the body the
/// backend wrote.
async fn steady_traffic(url: String, backend_id: String, began: Instant, stop: Arc<AtomicBool>) -> Traffic {
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

/// The proxy's route ttl is short (100 ms), so that while the controller is dead the cached route
/// expires dozens of times and every expiry is a lookup that meets the dead controller if the
/// proxy still sends it there.
#[tokio::test]
async fn no_proxied_request_fails_while_one_of_two_controllers_is_killed() {
    hangar_tests::init_logging();
    let pg = PgCluster::shared().await.unwrap();
    let database = pg.create_database().await.unwrap();
    let ControlPlane { mut a, b, controllers, proxy, .. } =
        control_plane(&database, |config| config.route_ttl = Duration::from_millis(100)).await;
    let drone = attached_drone(&controllers, "worker").await;

    // The SDK talks to the controller that survives; the proxy and the drone start on the one
    // that dies (each tries its list in order).
    let client = HangarClient::connect(&b.url).await.unwrap();
    let backend = hangar_executor::testing::test_backend_binary().display().to_string();
    let request = ConnectRequest::key("faults", "doc-1", "v1").spawn(SpawnSpec::new(backend));
    // The survivor learns of the drone (attached to the other controller) through its node view.
    let connection = eventually(WAIT, "a Connect placed", async || client.connect_backend(&request).await).await;
    eventually(WAIT, "the backend READY", async || {
        check(client.get_backend(&connection.backend_id).await.unwrap().state, |s| *s == BackendState::Ready)
    })
    .await;

    let began = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(steady_traffic(connection.url.clone(), connection.backend_id.clone(), began, stop.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = began.elapsed();
    a.kill();
    let killed = Instant::now();
    // The drone and the proxy move to the survivor within 5 s (the bound).
    let survivor = format!("attached to {}", b.url);
    let mut drone_state = drone.state();
    tokio::time::timeout(
        Duration::from_secs(5),
        drone_state.wait_for(|s| matches!(s, AttachState::Attached { controller, .. } if *controller == b.url)),
    )
    .await
    .expect("the drone attached to the survivor within 5 s")
    .unwrap();
    let drone_moved = killed.elapsed();
    let readiness = proxy.readiness();
    eventually(Duration::from_secs(5), "the proxy attached to the survivor", async || {
        let checks = readiness.check().await;
        check(checks, |checks| checks.iter().any(|c| c.ok && c.detail.contains(&survivor)))
    })
    .await;
    let proxy_moved = killed.elapsed();
    // Long enough for the cached route to expire thirty times: the failures the bug caused came
    // within the first second.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(killed.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    let mut failures = Vec::new();
    for client in clients {
        let traffic = client.await.unwrap();
        sent += traffic.sent;
        failures.extend(traffic.failures);
    }
    eprintln!(
        "{sent} proxied requests from {CLIENTS} clients over {:?}, controller killed at {killed_at:?}: {} failed; \
         drone attached to the survivor {drone_moved:?} after the kill, proxy {proxy_moved:?}",
        began.elapsed(),
        failures.len()
    );
    print_figures("controller-kill-traffic", None, Some((failures.len(), sent)), Some(drone_moved), None);
    assert!(sent > 100, "the traffic ran: {sent} requests");
    assert!(failures.is_empty(), "proxied requests failed while one controller was dead: {failures:?}");

    // The survivor still serves the control plane: the backend ends as asked.
    client.terminate_backend(&connection.backend_id, false).await.unwrap();
    eventually(WAIT, "the backend TERMINATED", async || {
        check(client.get_backend(&connection.backend_id).await.unwrap().state, |s| *s == BackendState::Terminated)
    })
    .await;
    proxy.shutdown().await;
    drone.shutdown().await;
}

/// Keys the scenario's Connects share, so that backends of one key follow each other.
const KEYS: usize = 3;

/// What the scenario's backends said of themselves: each backend's key and token (its `/env`),
/// and when the test saw it serving first and last.
#[derive(Default)]
struct Observed {
    lives: std::collections::BTreeMap<String, BackendLife>,
}

/// Polls every backend the Connects acknowledged through the proxy for its `/env` until `stop`,
/// every 50 ms; records the key and fencing token each reports and the span it was seen
/// serving. The spans lie within the real lifetimes, so two of them overlapping proves two
/// owners at once.
async fn observe_backends(
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

/// Connects on the shared keys through `controllers` in turn (whichever is listed now), and
/// terminates the backend it is answered every seventh round (7 is prime to the number of keys,
/// so every key's backends come and go), until `stop`.
async fn connect_load(
    worker: usize,
    recorder: Arc<Recorder>,
    controllers: Arc<std::sync::Mutex<Vec<HangarClient>>>,
    urls: Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>,
    stop: Arc<AtomicBool>,
) -> std::collections::BTreeMap<String, usize> {
    let backend = hangar_executor::testing::test_backend_binary().display().to_string();
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
            Ok((backend_id, _)) if round.is_multiple_of(7) => {
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
async fn try_watch(
    url: &str,
    start_revision: u64,
) -> Result<tonic::Streaming<hangar::v1::WatchNodesResponse>, Box<dyn std::error::Error>> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?.connect().await?;
    let mut nodes = hangar::v1::node_service_client::NodeServiceClient::new(channel);
    Ok(nodes.watch_nodes(node_watch(start_revision)).await?.into_inner())
}

/// The store's revision now, as `url` reports it.
async fn store_revision(url: &str) -> u64 {
    let mut nodes = hangar::v1::node_service_client::NodeServiceClient::new(hangar_tests::channel(url).await);
    nodes.list_nodes(hangar::v1::ListNodesRequest::default()).await.unwrap().into_inner().revision
}

fn node_watch(start_revision: u64) -> hangar::v1::WatchNodesRequest {
    hangar::v1::WatchNodesRequest { filter: None, start_revision, send_initial: false, bookmark_interval: None }
}

/// The revision of a node change (ADDED, MODIFIED, REMOVED), `None` for bookmarks and the like.
fn change_revision(response: &hangar::v1::WatchNodesResponse) -> Option<u64> {
    use hangar::v1::NodeEventType::{Added, Modified, Removed};
    let event = response.event.as_ref()?;
    matches!(event.r#type(), Added | Modified | Removed).then_some(event.revision)
}

/// Watches every node change after `from` on `first`, and when that stream ends (its controller
/// died) resumes on the next URL `controllers` lists, after the last revision received, until
/// `stop`. The log of what it received.
async fn resuming_watcher(
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
async fn node_log(url: &str, from: u64, until: u64) -> Vec<u64> {
    let mut stream = hangar_tests::watch(url, node_watch(from)).await.unwrap();
    let mut revisions = Vec::new();
    while revisions.last().is_none_or(|last| *last < until) {
        let response = tokio::time::timeout(WAIT, stream.message()).await.expect("the replay").unwrap().unwrap();
        revisions.extend(change_revision(&response));
    }
    revisions
}

fn error_code(err: &hangar_client::ClientError) -> String {
    let text = format!("{err:?}");
    text.split([' ', '(', '{']).next().unwrap_or("?").to_string()
}

/// A controller killed with SIGKILL under a Connect/terminate load, and replaced by a new one
/// on the same database: the recorded history (Connect answers, the backends' own reports of key
/// and fencing token, how every backend ended) passes the checker. The SDK clients are given
/// both controllers: no Connect or termination fails, and none that was answered is lost.
#[tokio::test]
async fn a_controller_killed_and_replaced_under_load_leaves_a_history_without_violations() {
    hangar_tests::init_logging();
    let pg = PgCluster::shared().await.unwrap();
    let database = pg.create_database().await.unwrap();
    let ControlPlane { mut a, b, controllers, proxy, proxy_url } = control_plane(&database, |_| {}).await;
    let mut drones = Vec::new();
    for name in ["worker-1", "worker-2"] {
        drones.push(attached_drone(&controllers, name).await);
    }
    let sdk = |url: &str| HangarClient::connect_lazy(url, Default::default()).unwrap();
    // Each SDK client is given both controllers and fails over between them; half the calls go
    // first to the controller that dies.
    let clients = Arc::new(std::sync::Mutex::new(vec![
        sdk(&format!("{},{}", a.url, b.url)),
        sdk(&format!("{},{}", b.url, a.url)),
    ]));
    // Both controllers see both drones before the load starts.
    for client in [sdk(&a.url), sdk(&b.url)] {
        eventually(WAIT, "two drones READY", async || {
            let nodes = client.list_all_nodes(&Default::default()).await.unwrap();
            check(nodes.nodes.iter().filter(|n| n.state == hangar::domain::NodeState::Ready).count(), |n| *n >= 2)
        })
        .await;
    }

    let recorder = Arc::new(Recorder::new());
    let urls = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let observer = tokio::spawn(observe_backends(recorder.clone(), urls.clone(), stop.clone()));
    // A node watcher on the controller that dies, resuming elsewhere: it sees the drones move.
    let watched = Arc::new(std::sync::Mutex::new(vec![a.url.clone(), b.url.clone()]));
    let watcher = tokio::spawn(resuming_watcher("on-a", 1, a.url.clone(), watched.clone(), stop.clone()));
    let workers: Vec<_> = (0..2)
        .map(|w| tokio::spawn(connect_load(w, recorder.clone(), clients.clone(), urls.clone(), stop.clone())))
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = recorder.now();
    let killed_revision = store_revision(&b.url).await;
    a.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let replacement = controller(&database, &proxy_url);
    // The replacement listens on a new port (port 0): the clients are told of it.
    *clients.lock().unwrap() =
        vec![sdk(&format!("{},{}", replacement.url, b.url)), sdk(&format!("{},{}", b.url, replacement.url))];
    watched.lock().unwrap()[0] = replacement.url.clone();
    let replaced_at = recorder.now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = std::collections::BTreeMap::<String, usize>::new();
    for worker in workers {
        for (code, n) in worker.await.unwrap() {
            *failures.entry(code).or_default() += n;
        }
    }
    let observed = observer.await.unwrap();
    let watched = watcher.await.unwrap();
    let store_revisions = node_log(&replacement.url, watched.from, watched.until).await;

    // Every backend ends: terminated through the replacement, and waited for.
    let survivor = sdk(&replacement.url);
    let ids: Vec<String> = urls.lock().unwrap().keys().cloned().collect();
    let mut finals = Vec::new();
    for id in &ids {
        survivor.terminate_backend(id, false).await.unwrap();
    }
    for id in &ids {
        let ended = eventually(WAIT, &format!("backend {id} TERMINATED"), async || {
            check(survivor.get_backend(id).await.unwrap(), |b| b.state == BackendState::Terminated)
        })
        .await;
        let reason = ended.status.termination_reason.map(|r| format!("{r:?}"));
        finals.push(Final { backend_id: id.clone(), state: "TERMINATED".into(), reason });
    }
    recorder.record(|history| {
        history.lives = observed.lives.into_values().collect();
        history.finals = finals;
        history.watchers.push(watched);
        history.store_revisions = store_revisions;
    });
    let history = recorder.history();
    let answered = history.connects.iter().filter(|c| matches!(c.outcome, ConnectOutcome::Ok { .. })).count();
    eprintln!(
        "{} Connects ({answered} answered), {} backends, {} seen serving, {} node changes watched; controller \
         killed at {killed_at:?}, replaced at {replaced_at:?}; failures by call and code: {failures:?}",
        history.connects.len(),
        ids.len(),
        history.lives.len(),
        history.watchers[0].received.len(),
    );
    print_figures("controller-kill", Some(&failures), None, None, None);
    // That the load ran (see `Load::finish`).
    assert!(
        answered >= 10 && !history.lives.is_empty(),
        "the load ran: {answered} answered Connects, {} seen serving",
        history.lives.len()
    );
    // Keyed Connects and terminations are idempotent: the SDK moves them to the survivor.
    assert!(failures.is_empty(), "idempotent SDK calls failed while one controller of two was down: {failures:?}");
    assert!(
        history.watchers[0].received.iter().any(|r| *r > killed_revision),
        "the watcher resumed past the kill: {:?}",
        history.watchers[0]
    );
    history.check().assert_ok();
    proxy.shutdown().await;
    for drone in drones {
        drone.shutdown().await;
    }
}

// ---- The scenarios below share one load and one ending. ----

type Clients = Arc<std::sync::Mutex<Vec<HangarClient>>>;
type Urls = Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>;

/// Two SDK clients, each given every controller of `urls` (in two orders, so that half the
/// calls go first to the first controller).
fn failover_clients(urls: &[String]) -> Clients {
    let sdk = |list: Vec<&String>| {
        let list: Vec<&str> = list.iter().map(|u| u.as_str()).collect();
        HangarClient::connect_lazy(&list.join(","), Default::default()).unwrap()
    };
    Arc::new(std::sync::Mutex::new(vec![sdk(urls.iter().collect()), sdk(urls.iter().rev().collect())]))
}

/// The Connect/terminate load of two workers on [`KEYS`] keys and the observer of every
/// backend they were answered, recorded for the checker.
struct Load {
    recorder: Arc<Recorder>,
    urls: Urls,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<std::collections::BTreeMap<String, usize>>>,
    observer: tokio::task::JoinHandle<Observed>,
}

impl Load {
    fn start(clients: Clients) -> Load {
        let recorder = Arc::new(Recorder::new());
        let urls: Urls = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let observer = tokio::spawn(observe_backends(recorder.clone(), urls.clone(), stop.clone()));
        let workers = (0..2)
            .map(|w| tokio::spawn(connect_load(w, recorder.clone(), clients.clone(), urls.clone(), stop.clone())))
            .collect();
        Load { recorder, urls, stop, workers, observer }
    }

    /// Stops the load, terminates every backend it was answered through `survivor` and waits
    /// for each to end; the checker must find no violation. Returns the failed calls by call and
    /// code, the number of answered Connects, and how many backends ended LOST.
    async fn finish(self, survivor: &HangarClient) -> (std::collections::BTreeMap<String, usize>, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = std::collections::BTreeMap::<String, usize>::new();
        for worker in self.workers {
            for (code, n) in worker.await.unwrap() {
                *failures.entry(code).or_default() += n;
            }
        }
        let observed = self.observer.await.unwrap();
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
        let lost = history.finals.iter().filter(|f| f.reason.as_deref() == Some("Lost")).count();
        (failures, answered, lost)
    }
}

/// One line of availability figures, the same for every scenario (`scripts/chaos` collects
/// them): failed SDK calls by call and code, failed proxied requests, time until the drones were
/// READY again and until a new Connect succeeded (`-` where the scenario does not measure it).
fn print_figures(
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

/// A child process killed with SIGKILL when dropped.
struct Process(std::process::Child);

impl Process {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn drone_process(controllers: &[String], name: &str, data_dir: &std::path::Path) -> Process {
    let child = std::process::Command::new(hangar_tests::binary("hangar-drone"))
        .args(["run", "--controller", &controllers.join(","), "--name", name, "--runtime", "process"])
        .args(["--admin-listen", "off", "--data-dir"])
        .arg(data_dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start hangar-drone run");
    Process(child)
}

fn proxy_process(controllers: &[String], name: &str, listen: &str) -> Process {
    let child = std::process::Command::new(hangar_tests::binary("hangar-server"))
        .args(["proxy", "--controller", &controllers.join(","), "--name", name, "--listen", listen])
        .args(["--admin-listen", "off"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start hangar-server proxy");
    Process(child)
}

/// A loopback address nothing listens on now (bound, then released).
fn free_address() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

async fn ready_nodes(client: &HangarClient) -> Vec<String> {
    let nodes = client.list_all_nodes(&Default::default()).await.map(|l| l.nodes).unwrap_or_default();
    nodes.into_iter().filter(|n| n.state == hangar::domain::NodeState::Ready).map(|n| n.name).collect()
}

/// A controller process on `database`, whose Connects send clients to `proxy_url`.
fn controller(database: &str, proxy_url: &str) -> ControllerProcess {
    ControllerProcess::spawn_with(database, &[std::ffi::OsStr::new("--proxy-url"), std::ffi::OsStr::new(proxy_url)])
}

/// Two controllers on `database`, whose Connects send clients to `proxy_url`.
fn two_controllers(database: &str, proxy_url: &str) -> (ControllerProcess, ControllerProcess) {
    (controller(database, proxy_url), controller(database, proxy_url))
}

/// Two controller processes on one database and an in-process proxy given both, the proxy their
/// Connects name.
struct ControlPlane {
    a: ControllerProcess,
    b: ControllerProcess,
    /// `a`'s URL, then `b`'s.
    controllers: Vec<String>,
    proxy: RunningProxy,
    proxy_url: String,
}

/// A [`ControlPlane`] on `database`, its proxy named "edge" and configured by `configure`.
async fn control_plane(database: &str, configure: impl FnOnce(&mut ProxyConfig)) -> ControlPlane {
    let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy_listener.local_addr().unwrap());
    let (a, b) = two_controllers(database, &proxy_url);
    let controllers = vec![a.url.clone(), b.url.clone()];
    let mut config = ProxyConfig::new(controllers.clone(), "edge");
    configure(&mut config);
    let proxy = Proxy::start(config, proxy_listener).await.unwrap();
    ControlPlane { a, b, controllers, proxy, proxy_url }
}

fn in_process_drone(controllers: &[String], name: &str) -> drone::DroneHandle {
    let mut config = DroneConfig::new(controllers.to_vec(), name);
    config.runtime = Some(Arc::new(ProcessRuntime::new()));
    config.backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
    drone::spawn(config)
}

/// An in-process drone given `controllers`, once it has attached.
async fn attached_drone(controllers: &[String], name: &str) -> drone::DroneHandle {
    let drone = in_process_drone(controllers, name);
    tokio::time::timeout(WAIT, drone.attached()).await.expect("the drone attached");
    drone
}

/// A drone process SIGKILLed under the Connect load (its backends die with it) and restarted on
/// its journal a second later: it reports them LOST, keys move on with higher tokens, and no key
/// ever has two owners.
#[tokio::test]
async fn a_drone_killed_and_restarted_under_load_leaves_a_history_without_violations() {
    hangar_tests::init_logging();
    let pg = PgCluster::shared().await.unwrap();
    let database = pg.create_database().await.unwrap();
    let ControlPlane { a: _a, b: _b, controllers, proxy, .. } = control_plane(&database, |_| {}).await;
    let steady = in_process_drone(&controllers, "steady");
    let journal = tempfile::tempdir().unwrap();
    let mut victim = drone_process(&controllers, "victim", journal.path());
    let clients = failover_clients(&controllers);
    let client = clients.lock().unwrap()[0].clone();
    eventually(WAIT, "both drones READY", async || check(ready_nodes(&client).await, |n| n.len() >= 2)).await;

    let load = Load::start(clients);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    victim.kill();
    // The controllers see it gone (its stream reset) before it comes back.
    eventually(Duration::from_secs(5), "the killed drone not READY", async || {
        check(ready_nodes(&client).await, |n| !n.iter().any(|n| n == "victim"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(killed.elapsed())).await;
    let restarted = Instant::now();
    let _victim = drone_process(&controllers, "victim", journal.path());
    eventually(WAIT, "the restarted drone READY", async || {
        check(ready_nodes(&client).await, |n| n.iter().any(|n| n == "victim"))
    })
    .await;
    let drones_ready = restarted.elapsed();
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(restarted.elapsed())).await;
    let (failures, answered, lost) = load.finish(&client).await;
    eprintln!(
        "{answered} Connects answered, {lost} backends LOST with the drone; drone killed at 2 s and restarted at 3 s"
    );
    assert!(lost >= 1, "the killed drone held backends of the load");
    print_figures("drone-kill", Some(&failures), None, Some(drones_ready), None);
    proxy.shutdown().await;
    steady.shutdown().await;
}

/// Sends GETs to `path` through the first of `proxies` that answers, until `stop`: a request
/// that fails on one proxy is sent to the other at once (what a load balancer in front of the
/// proxies does), and later requests go to the other first. Counts requests sent, requests
/// that failed on every proxy, and requests moved to another proxy.
async fn traffic_over_proxies(
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

/// Two proxy processes in front of one READY backend; one is SIGKILLed while four clients send
/// requests through it: the requests move to the other proxy and none fails on both. The
/// Connect load runs throughout (its backends observed through the surviving proxy).
#[tokio::test]
async fn a_proxy_killed_under_load_moves_its_traffic_to_the_other_proxy() {
    hangar_tests::init_logging();
    let pg = PgCluster::shared().await.unwrap();
    let database = pg.create_database().await.unwrap();
    let (doomed_at, survivor_at) = (free_address(), free_address());
    let (doomed_url, survivor_url) = (format!("http://{doomed_at}"), format!("http://{survivor_at}"));
    let (a, b) = two_controllers(&database, &survivor_url);
    let controllers = vec![a.url.clone(), b.url.clone()];
    let mut doomed = proxy_process(&controllers, "edge-1", &doomed_at);
    let _survivor = proxy_process(&controllers, "edge-2", &survivor_at);
    let drone = in_process_drone(&controllers, "worker");
    let clients = failover_clients(&controllers);
    let client = clients.lock().unwrap()[0].clone();
    eventually(WAIT, "the drone READY", async || check(ready_nodes(&client).await, |n| !n.is_empty())).await;

    let backend = hangar_executor::testing::test_backend_binary().display().to_string();
    let request = ConnectRequest::key("faults", "steady", "v1").spawn(SpawnSpec::new(backend));
    let connection = eventually(WAIT, "a Connect placed", async || client.connect_backend(&request).await).await;
    let path = connection.url.strip_prefix(&survivor_url).expect("a URL of the proxy the controllers name").to_string();
    let probe = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    for proxy in [&doomed_url, &survivor_url] {
        eventually(WAIT, "the backend READY through both proxies", async || {
            let request = http::Request::get(format!("{proxy}{path}")).body(Default::default()).unwrap();
            let status = probe.request(request).await.map(|r| r.status().as_u16()).unwrap_or(0);
            check(status, |s| *s == 200)
        })
        .await;
    }

    let load = Load::start(clients);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let proxies = vec![doomed_url.clone(), survivor_url.clone()];
            tokio::spawn(traffic_over_proxies(proxies, path.clone(), connection.backend_id.clone(), stop.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    doomed.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut failed, mut moved) = (0, 0, 0);
    for t in traffic {
        let (s, f, m) = t.await.unwrap();
        (sent, failed, moved) = (sent + s, failed + f, moved + m);
    }
    eprintln!("{sent} requests from {CLIENTS} clients, {moved} moved to the other proxy, {failed} failed on both");
    assert!(sent > 100 && moved >= CLIENTS, "the traffic ran and moved: {sent} sent, {moved} moved");
    assert_eq!(failed, 0, "requests failed on both proxies");
    client.terminate_backend(&connection.backend_id, false).await.unwrap();
    let (failures, _, _) = load.finish(&client).await;
    print_figures("proxy-kill", Some(&failures), Some((failed, sent)), None, None);
    drone.shutdown().await;
}

/// PostgreSQL stopped for 2 s and started again (its own throwaway cluster) under the Connect
/// load and steady traffic to a READY backend: no proxied request fails, a new Connect succeeds
/// within 5 s of the database being back, and the history has no violation.
#[tokio::test]
async fn a_postgresql_restart_under_load_keeps_sessions_serving() {
    hangar_tests::init_logging();
    let pg = PgCluster::new().await.unwrap();
    let database = pg.create_database().await.unwrap();
    let ControlPlane { a: _a, b: _b, controllers, proxy, .. } = control_plane(&database, |_| {}).await;
    let drones = [in_process_drone(&controllers, "worker-1"), in_process_drone(&controllers, "worker-2")];
    let clients = failover_clients(&controllers);
    let client = clients.lock().unwrap()[0].clone();
    eventually(WAIT, "two drones READY", async || check(ready_nodes(&client).await, |n| n.len() >= 2)).await;
    let backend = hangar_executor::testing::test_backend_binary().display().to_string();
    let request = ConnectRequest::key("faults", "steady", "v1").spawn(SpawnSpec::new(backend.clone()));
    let connection = eventually(WAIT, "a Connect placed", async || client.connect_backend(&request).await).await;
    eventually(WAIT, "the backend READY", async || {
        check(client.get_backend(&connection.backend_id).await.unwrap().state, |s| *s == BackendState::Ready)
    })
    .await;

    let load = Load::start(clients);
    let began = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(steady_traffic(connection.url.clone(), connection.backend_id.clone(), began, stop.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pg.stop().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.start().await.unwrap();
    let back = Instant::now();
    let mut fresh = 0;
    let connect_ok = loop {
        fresh += 1;
        let request =
            ConnectRequest::key("faults", format!("fresh-{fresh}"), "v1").spawn(SpawnSpec::new(backend.clone()));
        match client.connect_backend(&request).await {
            Ok(connection) => {
                client.terminate_backend(&connection.backend_id, false).await.unwrap();
                break back.elapsed();
            }
            Err(err) if back.elapsed() < WAIT => tracing::info!("a Connect after the restart failed: {err}"),
            Err(err) => panic!("no Connect succeeded within {WAIT:?} of the database's return: {err}"),
        }
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut failed) = (0, Vec::new());
    for t in traffic {
        let t = t.await.unwrap();
        sent += t.sent;
        failed.extend(t.failures);
    }
    client.terminate_backend(&connection.backend_id, false).await.unwrap();
    let (failures, answered, _) = load.finish(&client).await;
    eprintln!(
        "{answered} Connects answered; database down 2 s from 1.5 s; a new Connect succeeded {connect_ok:?} after it was back"
    );
    print_figures("postgres-restart", Some(&failures), Some((failed.len(), sent)), None, Some(connect_ok));
    assert!(failed.is_empty(), "proxied requests failed while the database restarted: {failed:?}");
    assert!(connect_ok <= Duration::from_secs(5), "a new Connect took {connect_ok:?} after the database was back");
    proxy.shutdown().await;
    for drone in drones {
        drone.shutdown().await;
    }
}
