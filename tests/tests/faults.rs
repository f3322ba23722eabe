//! Faults under load: two controller processes on one real PostgreSQL, a proxy and a drone given
//! both, a READY backend on the process runtime, steady traffic, and one controller killed with
//! SIGKILL while it runs. What users of the data plane must not notice.

use hangar::domain::BackendState;
use hangar_client::{ConnectRequest, HangarClient, SpawnSpec};
use hangar_executor::drone::{self, Backoff, DroneConfig};
use hangar_executor::runtime::process::ProcessRuntime;
use hangar_server::proxy::{Proxy, ProxyConfig};
use hangar_server::testing::PgCluster;
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
    let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy_listener.local_addr().unwrap());
    let args = [std::ffi::OsStr::new("--proxy-url"), std::ffi::OsStr::new(&proxy_url)];
    let mut a = ControllerProcess::spawn_with(&database, &args);
    let b = ControllerProcess::spawn_with(&database, &args);
    let controllers = vec![a.url.clone(), b.url.clone()];

    let mut proxy_config = ProxyConfig::new(controllers.clone(), "edge");
    proxy_config.route_ttl = Duration::from_millis(100);
    let proxy = Proxy::start(proxy_config, proxy_listener).await.unwrap();
    let mut drone_config = DroneConfig::new(controllers.clone(), "worker");
    drone_config.runtime = Some(Arc::new(ProcessRuntime::new()));
    drone_config.backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
    let drone = drone::spawn(drone_config);
    tokio::time::timeout(WAIT, drone.attached()).await.expect("the drone attached");

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
    // Long enough for the drone and the proxy to move to the survivor and for the cached route to
    // expire thirty times: the failures the bug caused came within the first second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    let mut failures = Vec::new();
    for client in clients {
        let traffic = client.await.unwrap();
        sent += traffic.sent;
        failures.extend(traffic.failures);
    }
    eprintln!(
        "{sent} proxied requests from {CLIENTS} clients over {:?}, controller killed at {killed_at:?}: {} failed",
        began.elapsed(),
        failures.len()
    );
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
