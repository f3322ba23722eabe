//! Secrets stay secret, end to end with real processes: a controller, a proxy and a drone on the
//! process runtime, each logging at debug level into a file. A backend is connected with env
//! values and a static token marked as secrets; the backend itself gets them, and nothing
//! else shows them: not a read RPC, not the CLI's output in any format, not a log line of any
//! of the three processes, not an event of `WatchBackends` or `WatchNodes`. Connection tokens are
//! in no log either. With an auth file, the bearer tokens of the drone, the proxy (both read
//! with --token-file) and the client are in no log of any process, the CLI's included.

use hangar::secret::REDACTED;
use hangar::v1::{self, backend_service_client::BackendServiceClient};
use hangar_testkit::{check, eventually};
use hangar_tests::processes::{controller_command, drone_command, line_after, proxy_command, stdout_lines};
use prost::Message;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const API_KEY: &str = "envsecret-7f3a9c1e-api-key";
const DB_PASSWORD: &str = "envsecret-b2d4e6f8-db-password";
const STATIC_TOKEN: &str = "staticsecret-5c7e9a1b3d-room";

/// A process of this workspace with its stderr (its log, at debug level) in `log`, ended with
/// SIGTERM, and SIGKILL when dropped before.
struct Logged {
    child: Child,
    name: &'static str,
}

impl Logged {
    /// Starts `command` and waits for the stdout line that starts with `ready_prefix`; returns
    /// what follows it (the URL it serves) when `ready_prefix` is given.
    fn start(mut command: Command, name: &'static str, log: &Path, ready_prefix: Option<&str>) -> (Logged, String) {
        let mut child = command
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap_or_else(|err| panic!("start {name}: {err}"));
        let lines = stdout_lines(&mut child);
        let ready = match ready_prefix {
            Some(prefix) => line_after(&lines, prefix, WAIT)
                .unwrap_or_else(|| panic!("{name} did not print {prefix:?}; its log:\n{}", read_log(log))),
            None => String::new(),
        };
        (Logged { child, name }, ready)
    }

    /// A controller over `database` (heartbeats every 200 ms), `more` arguments after those.
    fn controller(database: &str, more: &[&str], log: &Path) -> (Logged, String) {
        let mut command = controller_command(database);
        command.args(["--heartbeat-interval", "200ms"]).args(more);
        Logged::start(command, "controller", log, Some("hangar-server controller listening on "))
    }

    /// A proxy named `edge` attached to `url`, `more` arguments after those.
    fn proxy(url: &str, more: &[&str], log: &Path) -> (Logged, String) {
        let mut command = proxy_command(url, "edge");
        command.args(more);
        Logged::start(command, "proxy", log, Some("hangar-server proxy listening on "))
    }

    /// A drone named `d1` on the process runtime attached to `url`, its journal in `data_dir`,
    /// `more` arguments after those.
    fn drone(url: &str, data_dir: &Path, more: &[&str], log: &Path) -> Logged {
        let mut command = drone_command(url, "d1", data_dir);
        command.args(more);
        Logged::start(command, "drone", log, None).0
    }

    /// SIGTERM and wait, so that everything it logs on the way out is in its file too.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let what = format!("{} to stop on SIGTERM", self.name);
        hangar_testkit::eventually_blocking(WAIT, &what, || self.child.try_wait().unwrap());
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_log(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Fails the test, naming `what` and the line, when `text` shows any of `secrets`.
fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        if let Some(line) = text.lines().find(|line| line.contains(secret)) {
            panic!("{what} shows the secret {secret:?}:\n{line}");
        }
    }
}

/// Runs the `hangar` CLI; its stdout and stderr together.
async fn hangar(controller: &str, args: &[&str]) -> String {
    let output = tokio::process::Command::new(hangar_tests::binary("hangar"))
        .args(["--controller", controller])
        .args(args)
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "hangar {args:?} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_values_static_and_connection_tokens_reach_the_backend_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let logs = |name: &str| dir.path().join(format!("{name}.log"));
    let database = format!("sqlite://{}", dir.path().join("hangar.db").display());
    let (controller, url) = Logged::controller(&database, &[], &logs("controller"));
    let (proxy, proxy_url) = Logged::proxy(&url, &[], &logs("proxy"));
    let drone = Logged::drone(&url, &dir.path().join("drone"), &[], &logs("drone"));
    let channel = hangar_tests::channel(&url).await;
    let mut nodes = v1::node_service_client::NodeServiceClient::new(channel.clone());
    eventually(WAIT, "the drone and the proxy attached", async || {
        let listed = nodes.list_nodes(v1::ListNodesRequest::default()).await.unwrap().into_inner();
        check(listed.nodes.len(), |n| *n == 2)
    })
    .await;

    // The watch streams see the backend from before it is connected until it is terminated:
    // every event they send is scanned too.
    let mut backends = BackendServiceClient::new(channel.clone());
    let watch_backends =
        collect(backends.watch_backends(v1::WatchBackendsRequest::default()).await.unwrap().into_inner());
    let watch_nodes = collect(
        nodes
            .watch_nodes(v1::WatchNodesRequest { send_initial: true, ..Default::default() })
            .await
            .unwrap()
            .into_inner(),
    );

    // Connect through the CLI, as a user would: its answer is the caller's own, so it holds the
    // static token and the connection URL by design.
    let backend = hangar_executor::testing::test_backend_binary().display().to_string();
    let connected = hangar(
        &url,
        &["-o", "json", "connect", "secrets/doc-1", "--image", &backend, "--wait", "--static-token", STATIC_TOKEN]
            .into_iter()
            .chain(["--env", &format!("API_KEY={API_KEY}"), "--env", &format!("DB_PASSWORD={DB_PASSWORD}")])
            .collect::<Vec<_>>(),
    )
    .await;
    let connection: serde_json::Value = serde_json::from_str(&connected).expect("one JSON document");
    let id = connection["backend_id"].as_str().unwrap().to_string();
    let connect_url = connection["url"].as_str().unwrap().to_string();
    assert_eq!(connection["static_token"], STATIC_TOKEN, "Connect hands its caller the static token");
    let token = connect_url.trim_end_matches('/').rsplit('/').next().unwrap().to_string();
    assert!(token.len() >= 43, "{connect_url}");
    // The controller was not told where this proxy listens (it started first): the same URL on
    // the proxy's real address.
    let connect_url = format!("{proxy_url}/{token}/");
    assert_no_secret("Connect's answer", &connected, &[API_KEY, DB_PASSWORD]);

    // The backend has them, through its address and through both of its proxy URLs.
    let got = backends.get_backend(v1::GetBackendRequest { id: id.clone() }).await.unwrap().into_inner();
    let address = got.backend.as_ref().unwrap().address.clone();
    let env = hangar_executor::testing::http_get(&address, "/env").await.unwrap().1;
    for expected in [format!("API_KEY={API_KEY}"), format!("DB_PASSWORD={DB_PASSWORD}")] {
        assert!(env.lines().any(|l| l == expected), "the backend lacks {expected}:\n{env}");
    }
    assert!(env.lines().any(|l| l == format!("HANGAR_STATIC_TOKEN={STATIC_TOKEN}")), "{env}");
    for through in [format!("{connect_url}env"), format!("{proxy_url}/{STATIC_TOKEN}/env")] {
        let (status, body) = http_get(&through).await;
        assert_eq!(status, 200, "{through}: {body}");
        assert!(body.contains(API_KEY), "through the proxy: {body}");
    }

    // Every read RPC: the env's keys with redacted values, no static token, no connection token.
    let mut read = Vec::new();
    let shown = got.backend.as_ref().unwrap().spawn_config.as_ref().unwrap().executable.clone().unwrap();
    assert_eq!((shown.env["API_KEY"].as_str(), shown.env["DB_PASSWORD"].as_str()), (REDACTED, REDACTED));
    read.push(("GetBackend", got.encode_to_vec(), format!("{got:?}")));
    let listed = backends.list_backends(v1::ListBackendsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.backends.len(), 1);
    read.push(("ListBackends", listed.encode_to_vec(), format!("{listed:?}")));
    let again = v1::ConnectRequest {
        key: Some(v1::BackendKey { namespace: "secrets".into(), name: "doc-1".into(), tag: String::new() }),
        ..Default::default()
    };
    let found = backends.connect(again).await.unwrap().into_inner();
    assert!(!found.spawned);
    assert_eq!(found.static_token, STATIC_TOKEN, "Connect hands its caller the static token");
    let found_backend = found.backend.clone().unwrap();
    read.push(("Connect's backend", found_backend.encode_to_vec(), format!("{found_backend:?}")));
    read.push(("Connect's Debug", Vec::new(), format!("{found:?}")));
    let nodes_listed = nodes.list_nodes(v1::ListNodesRequest::default()).await.unwrap().into_inner();
    read.push(("ListNodes", nodes_listed.encode_to_vec(), format!("{nodes_listed:?}")));

    // The CLI shows what the API returns, in every format.
    let mut cli = Vec::new();
    for args in [
        vec!["backends", "get", &id],
        vec!["backends", "get", &id, "-o", "json"],
        vec!["backends", "list"],
        vec!["backends", "list", "-o", "json"],
        vec!["nodes", "list", "-o", "json"],
    ] {
        cli.push((args.join(" "), hangar(&url, &args).await));
    }
    let get_json: serde_json::Value = serde_json::from_str(&cli[1].1).unwrap();
    assert!(cli[1].1.contains("API_KEY") && cli[1].1.contains(REDACTED), "the keys show: {get_json}");
    hangar(&url, &["backends", "terminate", &id]).await;
    let mut watch = backends.watch_backend(v1::WatchBackendRequest { id: id.clone() }).await.unwrap().into_inner();
    let mut statuses = Vec::new();
    while let Some(status) = tokio::time::timeout(WAIT, watch.message()).await.expect("watch ends").unwrap() {
        statuses.push(status);
    }
    for status in &statuses {
        read.push(("WatchBackend", status.encode_to_vec(), format!("{status:?}")));
    }
    for args in [vec!["backends", "watch", &id], vec!["backends", "watch", &id, "-o", "json"]] {
        cli.push((args.join(" "), hangar(&url, &args).await));
    }
    let terminated = |event: &Option<v1::BackendEvent>| {
        event
            .as_ref()
            .and_then(|e| e.backend.as_ref())
            .is_some_and(|b| b.id == id && b.status.as_ref().is_some_and(|s| s.state() == v1::BackendState::Terminated))
    };
    eventually(WAIT, "WatchBackends sent the backend's termination", async || {
        check(watch_backends.0.lock().unwrap().iter().any(|r| terminated(&r.event)), |seen| *seen)
    })
    .await;
    watch_backends.1.abort();
    watch_nodes.1.abort();
    let backend_events = watch_backends.0.lock().unwrap().clone();
    assert!(backend_events.len() >= 3, "WatchBackends sent the backend's changes: {backend_events:?}");
    for response in &backend_events {
        read.push(("WatchBackends", response.encode_to_vec(), format!("{response:?}")));
    }
    let node_events = watch_nodes.0.lock().unwrap().clone();
    let watched_nodes: std::collections::BTreeSet<&str> =
        node_events.iter().filter_map(|r| r.event.as_ref()?.node.as_ref()).map(|n| n.name.as_str()).collect();
    assert!(
        watched_nodes.contains("d1") && watched_nodes.contains("edge"),
        "WatchNodes sent both nodes: {node_events:?}"
    );
    for response in &node_events {
        read.push(("WatchNodes", response.encode_to_vec(), format!("{response:?}")));
    }

    let with_token = [API_KEY, DB_PASSWORD, STATIC_TOKEN, token.as_str()];
    for (what, bytes, debug) in &read {
        assert_no_secret(what, &String::from_utf8_lossy(bytes), &with_token);
        assert_no_secret(what, debug, &with_token);
    }
    for (args, output) in &cli {
        assert_no_secret(&format!("hangar {args}"), output, &with_token);
    }

    drone.stop();
    proxy.stop();
    controller.stop();
    for name in ["controller", "proxy", "drone"] {
        let log = read_log(&logs(name));
        assert!(log.contains("DEBUG"), "the {name} logged at debug level:\n{log}");
        println!("the {name}'s log: {} lines scanned", log.lines().count());
        assert_no_secret(&format!("the {name}'s log"), &log, &with_token);
    }
    let controller_log = read_log(&logs("controller"));
    assert!(controller_log.contains(&id), "the controller's log names the backend: the scan read real lines");
}

/// A fresh token from `hangar-server token generate`: its secret and its auth file entry.
fn generate_token(name: &str, role: &str) -> (String, String) {
    let output = Command::new(hangar_tests::binary("hangar-server"))
        .args(["token", "generate", "--name", name, "--role", role])
        .output()
        .unwrap();
    assert!(output.status.success(), "token generate: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (secret, entry) = stdout.split_once('\n').unwrap();
    (secret.to_string(), entry.to_string())
}

/// Runs the `hangar` CLI at debug level with the token in `token_file`; whether it succeeded,
/// and its stdout and stderr together.
async fn hangar_with_token(controller: &str, token_file: &Path, args: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new(hangar_tests::binary("hangar"))
        .args(["--controller", controller])
        .arg("--token-file")
        .arg(token_file)
        .args(args)
        .env("RUST_LOG", "debug")
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_tokens_of_a_drone_a_proxy_and_a_client_appear_in_no_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let (drone_token, drone_entry) = generate_token("d1", "drone");
    let (proxy_token, proxy_entry) = generate_token("edge", "proxy");
    let (client_token, client_entry) = generate_token("ci", "client");
    std::fs::write(path("auth.toml"), format!("{drone_entry}{proxy_entry}{client_entry}")).unwrap();
    for (name, token) in [("drone", &drone_token), ("proxy", &proxy_token), ("ci", &client_token)] {
        std::fs::write(path(&format!("{name}.token")), format!("{token}\n")).unwrap();
    }
    // A token the auth file does not name: refused, and not repeated either.
    let wrong_token = "wrongsecret-0d9c8b7a6f5e4d3c2b1a";
    std::fs::write(path("wrong.token"), wrong_token).unwrap();
    let log = |name: &str| path(&format!("{name}.log"));

    let database = format!("sqlite://{}", path("hangar.db").display());
    let auth_file = path("auth.toml").display().to_string();
    let (controller, url) = Logged::controller(&database, &["--auth-file", &auth_file], &log("controller"));
    let proxy_token_file = path("proxy.token").display().to_string();
    let (proxy, proxy_url) = Logged::proxy(&url, &["--token-file", &proxy_token_file], &log("proxy"));
    let drone_token_file = path("drone.token").display().to_string();
    let drone = Logged::drone(&url, &path("drone"), &["--token-file", &drone_token_file], &log("drone"));
    let mut nodes =
        v1::node_service_client::NodeServiceClient::new(hangar_tests::auth::authed(&url, Some(&client_token)).await);
    eventually(WAIT, "the drone and the proxy attached with their tokens", async || {
        let listed = nodes.list_nodes(v1::ListNodesRequest::default()).await.unwrap().into_inner();
        check(listed.nodes.len(), |n| *n == 2)
    })
    .await;

    // The client connects a backend through the CLI and the proxy serves it.
    let image = hangar_executor::testing::test_backend_binary().display().to_string();
    let (ok, connected) = hangar_with_token(
        &url,
        &path("ci.token"),
        &["-o", "json", "connect", "secrets/tokens", "--image", &image, "--wait"],
    )
    .await;
    assert!(ok, "hangar connect with the client's token:\n{connected}");
    let json_start = connected.find('{').expect("a JSON document");
    let connection: serde_json::Value =
        serde_json::Deserializer::from_str(&connected[json_start..]).into_iter().next().unwrap().unwrap();
    let id = connection["backend_id"].as_str().unwrap().to_string();
    let route = connection["token"].as_str().unwrap().to_string();
    let (status, body) = http_get(&format!("{proxy_url}/{route}/")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&id), "the backend answered through the proxy: {body}");

    let (ok, refused) = hangar_with_token(&url, &path("wrong.token"), &["backends", "list"]).await;
    assert!(!ok && refused.contains("TOKEN_INVALID"), "a token the auth file does not name is refused:\n{refused}");
    let (ok, terminated) = hangar_with_token(&url, &path("ci.token"), &["backends", "terminate", &id]).await;
    assert!(ok, "{terminated}");

    drone.stop();
    proxy.stop();
    controller.stop();
    let secrets = [drone_token.as_str(), proxy_token.as_str(), client_token.as_str(), wrong_token, route.as_str()];
    for (what, text) in
        [("hangar connect", &connected), ("hangar backends list", &refused), ("hangar backends terminate", &terminated)]
    {
        assert_no_secret(&format!("the output of {what} at debug level"), text, &secrets[..4]);
    }
    for name in ["controller", "proxy", "drone"] {
        let text = read_log(&log(name));
        assert!(text.contains("DEBUG"), "the {name} logged at debug level:\n{text}");
        println!("the {name}'s log: {} lines scanned", text.lines().count());
        assert_no_secret(&format!("the {name}'s log"), &text, &secrets);
    }
    let controller_log = without_colors(&read_log(&log("controller")));
    for principal in ["d1", "edge", "ci"] {
        assert!(
            controller_log.contains(&format!("principal={principal} ")),
            "the controller's audit lines name {principal}: the scan read real lines"
        );
    }
}

/// `text` without its ANSI escape sequences (a log's colours).
fn without_colors(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ parameters… final byte in @..=~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Everything `stream` sends, collected as it arrives until the task is aborted.
fn collect<T: Send + 'static>(
    mut stream: tonic::Streaming<T>,
) -> (std::sync::Arc<std::sync::Mutex<Vec<T>>>, tokio::task::JoinHandle<()>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let into = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(message)) = stream.message().await {
            into.lock().unwrap().push(message);
        }
    });
    (seen, task)
}

async fn http_get(url: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
