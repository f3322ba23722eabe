//! `hangar-server controller` with an auth file, as an operator runs it: SIGHUP reloads the file
//! (a broken one keeps the one in force and says why), every mutating call (a node's attach
//! included) and every refusal is an audit line on `hangar::audit` naming principals and never secrets, and the controller (and
//! dev) refuse to listen beyond loopback without authentication unless `--insecure`.

use hangar::error::error_info;
use hangar::v1::{self, backend_service_client::BackendServiceClient, node_service_client::NodeServiceClient};
use hangar_testkit::eventually;
use hangar_tests::auth::{attach_drone, attach_proxy, authed};
use hangar_tests::binary;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Code;

const OPS: &str = "ops-secret-0123456789abcdef";
const READER: &str = "reader-secret-0123456789abcdef";
const CLIENT: &str = "client-secret-0123456789abcdef";
const DRONE: &str = "drone-a-secret-0123456789abcdef";
const PROXY: &str = "proxy-a-secret-0123456789abcdef";
const SECRETS: [&str; 5] = [OPS, READER, CLIENT, DRONE, PROXY];

fn token(name: &str, role: &str, secret: &str) -> String {
    // By digest, as `hangar-server token generate` writes entries.
    let sha256 = hangar_server::auth::file::secret_sha256_hex(secret);
    format!("[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{sha256}\"\n")
}

fn full_auth_file() -> String {
    [
        token("ops", "operator", OPS),
        token("reader", "reader", READER),
        token("ci", "client", CLIENT),
        token("drone-a", "drone", DRONE) + "nodes = [\"drone-a\"]\n",
        token("proxy-a", "proxy", PROXY) + "nodes = [\"edge-a\"]\n",
    ]
    .join("\n")
}

/// A `hangar-server` process; its stdout until the listening line, its stderr collected line by
/// line. Killed when dropped.
struct Server {
    child: Child,
    stdout: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `hangar-server ARGS` and waits for `ready` on stdout, or for the process to end.
    fn start(args: &[&str], ready: &str) -> Server {
        let mut child = Command::new(binary("hangar-server"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hangar-server");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        {
            let stderr = stderr.clone();
            let pipe = BufReader::new(child.stderr.take().unwrap());
            std::thread::spawn(move || {
                for line in pipe.lines().map_while(Result::ok) {
                    stderr.lock().unwrap().push(line);
                }
            });
        }
        let (lines_tx, lines) = std::sync::mpsc::channel();
        let pipe = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in pipe.lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let mut stdout = String::new();
        // Until `ready`, or until stdout closes (the process ended) or 30 s pass.
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(30)) {
            stdout.push_str(&line);
            stdout.push('\n');
            if line.contains(ready) {
                break;
            }
        }
        Server { child, stdout, stderr }
    }

    fn url(&self) -> String {
        let line = self.stdout.lines().find_map(|l| l.strip_prefix("hangar-server controller listening on "));
        line.unwrap_or_else(|| panic!("no listening line; stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr_text()))
            .trim()
            .to_string()
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn hangup(&self) {
        let status = Command::new("kill").args(["-HUP", &self.child.id().to_string()]).status().expect("run kill");
        assert!(status.success());
    }

    /// The audit lines logged so far, as JSON.
    fn audit_lines(&self) -> Vec<serde_json::Value> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|line| line["target"] == "hangar::audit")
            .collect()
    }

    /// Waits for the process to end by itself; its exit status.
    async fn exited(&mut self) -> std::process::ExitStatus {
        eventually(Duration::from_secs(10), "hangar-server exits", async || self.child.try_wait().ok().flatten()).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn controller(dir: &Path, extra: &[&str]) -> Server {
    let data_dir = dir.join("data");
    let mut args = vec![
        "--log-format",
        "json",
        "controller",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Server::start(&args, "listening on")
}

/// The one audit line with these `fields` (JSON strings), failing the test with all audit lines
/// when there is none.
async fn audit_line(server: &Server, fields: &[(&str, &str)]) -> serde_json::Value {
    eventually(Duration::from_secs(5), &format!("an audit line with {fields:?}"), async || {
        let lines = server.audit_lines();
        let found = lines.iter().find(|line| fields.iter().all(|(k, v)| line["fields"][*k] == *v)).cloned();
        found.ok_or(lines)
    })
    .await
}

#[tokio::test]
async fn sighup_reloads_the_auth_file_and_mutations_and_refusals_are_audit_lines() {
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, full_auth_file()).unwrap();
    let server = controller(dir.path(), &["--listen", "127.0.0.1:0", "--auth-file", auth.to_str().unwrap()]);
    let url = server.url();

    // Attaches: as itself, and as another drone.
    let mut drone = attach_drone(&url, DRONE, "drone-a").await.expect("drone-a attaches");
    let refused = attach_drone(&url, DRONE, "drone-b").await.map(drop).unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let proxy = attach_proxy(&url, PROXY, "edge-a").await.expect("edge-a attaches");
    let refused = attach_proxy(&url, PROXY, "edge-b").await.map(drop).unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    // A Connect that spawns, and its termination.
    let mut backends = BackendServiceClient::new(authed(&url, Some(CLIENT)).await);
    let spawn_config = v1::SpawnConfig {
        executable: Some(v1::Executable { image: "hangar/test-backend:1".into(), ..Default::default() }),
        ..Default::default()
    };
    let key = v1::BackendKey { namespace: "docs".into(), name: "doc-1".into(), tag: String::new() };
    let connected = backends
        .connect(v1::ConnectRequest { key: Some(key), spawn_config: Some(spawn_config), ..Default::default() })
        .await
        .expect("connect")
        .into_inner();
    assert!(connected.spawned);
    backends
        .terminate_backend(v1::TerminateBackendRequest { id: connected.backend_id.clone(), hard: false })
        .await
        .expect("terminate");

    // A drain and an undrain by an operator, a drain a reader may not do, a call without a token.
    let mut nodes = NodeServiceClient::new(authed(&url, Some(OPS)).await);
    nodes.drain_node(v1::DrainNodeRequest { id: drone.node_id.clone(), ..Default::default() }).await.expect("drain");
    nodes.undrain_node(v1::UndrainNodeRequest { id: drone.node_id.clone() }).await.expect("undrain");
    let mut reader = NodeServiceClient::new(authed(&url, Some(READER)).await);
    let denied = reader.drain_node(v1::DrainNodeRequest { id: drone.node_id.clone(), ..Default::default() }).await;
    assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);
    let mut anonymous = NodeServiceClient::new(authed(&url, None).await);
    assert_eq!(anonymous.list_nodes(v1::ListNodesRequest::default()).await.unwrap_err().code(), Code::Unauthenticated);

    let attach = "hangar.v1.DroneService/Attach";
    let line = audit_line(&server, &[("method", attach), ("node", "drone-a"), ("outcome", "ok")]).await;
    assert_eq!(
        (line["fields"]["principal"].as_str(), line["fields"]["role"].as_str()),
        (Some("drone-a"), Some("drone"))
    );
    assert_eq!(line["fields"]["node_id"], drone.node_id.as_str());
    audit_line(&server, &[("method", attach), ("node", "drone-b"), ("outcome", "NODE_NOT_ALLOWED")]).await;
    let proxy_attach = "hangar.v1.ProxyService/Attach";
    let line = audit_line(&server, &[("method", proxy_attach), ("node", "edge-a"), ("outcome", "ok")]).await;
    assert_eq!(
        (line["fields"]["principal"].as_str(), line["fields"]["role"].as_str()),
        (Some("proxy-a"), Some("proxy"))
    );
    assert_eq!(line["fields"]["node_id"], proxy.node_id.as_str());
    let line =
        audit_line(&server, &[("method", proxy_attach), ("node", "edge-b"), ("outcome", "NODE_NOT_ALLOWED")]).await;
    assert_eq!(line["fields"]["principal"], "proxy-a");
    assert!(line["fields"]["node_id"].is_null(), "a refused attach registers no node: {line}");
    let line = audit_line(&server, &[("method", "hangar.v1.BackendService/Connect"), ("outcome", "ok")]).await;
    assert_eq!(line["fields"]["principal"], "ci");
    assert_eq!(line["fields"]["backend_id"], connected.backend_id.as_str());
    assert_eq!(line["fields"]["node_id"], drone.node_id.as_str());
    assert_eq!(line["fields"]["key"].as_str().map(|k| k.starts_with("docs/doc-1")), Some(true), "{line}");
    let terminate = "hangar.v1.BackendService/TerminateBackend";
    audit_line(&server, &[("method", terminate), ("backend_id", &connected.backend_id), ("principal", "ci")]).await;
    for method in ["hangar.v1.NodeService/DrainNode", "hangar.v1.NodeService/UndrainNode"] {
        audit_line(
            &server,
            &[("method", method), ("principal", "ops"), ("node_id", &drone.node_id), ("outcome", "ok")],
        )
        .await;
    }
    let drain = "hangar.v1.NodeService/DrainNode";
    audit_line(&server, &[("method", drain), ("principal", "reader"), ("outcome", "ROLE_NOT_ALLOWED")]).await;
    audit_line(&server, &[("method", "hangar.v1.NodeService/ListNodes"), ("outcome", "UNAUTHENTICATED")]).await;

    // A broken file on SIGHUP: logged with why, and the old one stays in force.
    std::fs::write(&auth, "[[token]]\nname = \"x\"\nrole = \"superuser\"\n").unwrap();
    server.hangup();
    eventually(Duration::from_secs(5), "the refused reload logged with its reason", async || {
        server.stderr_text().lines().any(|l| l.contains("auth file not reloaded") && l.contains("token[0].role"))
    })
    .await;
    assert!(nodes.list_nodes(v1::ListNodesRequest::default()).await.is_ok(), "the old file is gone");

    // A good file on SIGHUP revokes ops for new calls; the drone's open stream goes on.
    std::fs::write(&auth, [token("reader", "reader", READER), token("drone-a", "drone", DRONE)].join("\n")).unwrap();
    server.hangup();
    let status = eventually(Duration::from_secs(5), "ops revoked", async || {
        nodes.list_nodes(v1::ListNodesRequest::default()).await.err().ok_or("still admitted")
    })
    .await;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(error_info(&status).unwrap().0, "TOKEN_INVALID");
    let listed = reader.list_nodes(v1::ListNodesRequest::default()).await.expect("reader still admitted").into_inner();
    let mut names: Vec<_> = listed.nodes.iter().map(|node| node.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["drone-a", "edge-a"], "the drone and the proxy, not the nodes refused");
    let heartbeat = v1::DroneHeartbeat { local_time: None, resources: None, backend_count: 0 };
    let heartbeat = v1::DroneAttachRequest { message: Some(v1::drone_attach_request::Message::Heartbeat(heartbeat)) };
    drone.outbound.send(heartbeat).await.expect("the drone's stream is open");
    // Actions may still be on their way (the spawn, the termination); the stream must not end.
    // A fixed wait, for something that must not happen.
    loop {
        match tokio::time::timeout(Duration::from_millis(300), drone.inbound.message()).await {
            Err(_) => break,
            Ok(Ok(Some(_))) => continue,
            Ok(ended) => panic!("the drone's stream ended after the reload: {ended:?}"),
        }
    }

    // Principals are named; no secret and no authorization header reaches the log.
    let log = server.stderr_text();
    for secret in SECRETS {
        assert!(!log.contains(secret), "a secret in the log:\n{log}");
    }
    assert!(!log.to_lowercase().contains("bearer"), "an authorization header in the log:\n{log}");
}

#[tokio::test]
async fn the_controller_refuses_a_network_address_without_auth_unless_insecure_and_then_warns() {
    let dir = tempfile::tempdir().unwrap();
    let mut refused = controller(dir.path(), &["--listen", "0.0.0.0:0"]);
    assert!(!refused.exited().await.success());
    let stderr = refused.stderr_text();
    assert!(stderr.contains("refusing to listen on 0.0.0.0:0") && stderr.contains("--insecure"), "{stderr}");

    let insecure = controller(dir.path(), &["--listen", "0.0.0.0:0", "--insecure"]);
    assert!(insecure.url().starts_with("http://0.0.0.0:"), "{}", insecure.stdout);
    let stderr = insecure.stderr_text();
    assert!(stderr.contains("WARNING: --insecure") && stderr.contains("WITHOUT AUTHENTICATION"), "{stderr}");
    drop(insecure);

    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, full_auth_file()).unwrap();
    let authenticated = controller(dir.path(), &["--listen", "0.0.0.0:0", "--auth-file", auth.to_str().unwrap()]);
    assert!(authenticated.url().starts_with("http://0.0.0.0:"));
    assert!(!authenticated.stderr_text().contains("WARNING"), "{}", authenticated.stderr_text());

    // A broken auth file stops the start, naming the entry and field.
    std::fs::write(&auth, "[[token]]\nname = \"x\"\nrole = \"reader\"\nsecret = \"short\"\n").unwrap();
    let mut broken = controller(dir.path(), &["--auth-file", auth.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert!(!broken.exited().await.success());
    assert!(broken.stderr_text().contains("token[0].secret: too short"), "{}", broken.stderr_text());
}

#[tokio::test]
async fn dev_refuses_a_network_address_unless_insecure_and_then_warns() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let args = [
        "dev",
        "--listen",
        "0.0.0.0:0",
        "--proxy-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir,
    ];
    let mut refused = Server::start(&args, "Stop with Ctrl-C");
    assert!(!refused.exited().await.success());
    assert!(refused.stderr_text().contains("refusing to listen on 0.0.0.0:0"), "{}", refused.stderr_text());
    // It refused before starting anything: no database was made.
    assert!(!dir.path().join("hangar.db").exists());

    let mut args = args.to_vec();
    args.extend(["--runtime", "process", "--insecure"]);
    let insecure = Server::start(&args, "Stop with Ctrl-C");
    assert!(insecure.stdout.contains("Hangar dev is running"), "{}\n{}", insecure.stdout, insecure.stderr_text());
    assert!(insecure.stderr_text().contains("WITHOUT AUTHENTICATION"), "{}", insecure.stderr_text());
}

#[tokio::test]
async fn token_generate_prints_a_secret_and_an_entry_the_controller_accepts() {
    let output = Command::new(binary("hangar-server"))
        .args(["token", "generate", "--name", "ci", "--role", "client"])
        .output()
        .expect("run token generate");
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (secret, entry) = stdout.split_once('\n').unwrap();
    assert_eq!(secret.len(), 43, "{stdout}");
    assert!(!entry.contains(secret), "the entry holds the secret: {stdout}");

    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, entry).unwrap();
    let server = controller(dir.path(), &["--listen", "127.0.0.1:0", "--auth-file", auth.to_str().unwrap()]);
    let mut backends = BackendServiceClient::new(authed(&server.url(), Some(secret)).await);
    let listed = backends.list_backends(v1::ListBackendsRequest::default()).await;
    assert!(listed.is_ok(), "{listed:?}");
}
