//! Every component over mTLS, as an operator runs them: the `hangar-server controller` binary
//! requiring client certificates, a `hangar-drone run` and a `hangar-server proxy` attached with
//! their own certificates, and the `hangar` CLI listing nodes and connecting a backend that the
//! proxy then serves. Certificates are made here (`hangar_tests::pki`). With an auth file whose
//! `[[certificate]]` entries name them, the certificates alone are the principals: no token.

use hangar_testkit::{check, eventually};
use hangar_tests::pki::{CertFiles, TestCa, served_certificate};
use hangar_tests::{ControllerProcess, binary};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// A process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command` and waits for a stdout line starting with `prefix`; returns the rest.
fn start(mut command: Command, prefix: &str) -> (Running, String) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (lines_tx, lines) = std::sync::mpsc::channel();
    // Read on a thread so a process that hangs before its line fails the test instead of
    // blocking it; it drains stdout until the process ends.
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let running = Running(child);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|_| panic!("no line starting with {prefix:?}"));
        if let Some(rest) = line.strip_prefix(prefix) {
            return (running, rest.trim().to_string());
        }
    }
}

fn tls_flags<'a>(prefix: &str, ca: &'a Path, identity: &'a CertFiles) -> Vec<(String, &'a OsStr)> {
    vec![
        (format!("--{prefix}tls-ca"), ca.as_os_str()),
        (format!("--{prefix}tls-cert"), identity.cert.as_os_str()),
        (format!("--{prefix}tls-key"), identity.key.as_os_str()),
    ]
}

fn with_flags(mut command: Command, flags: Vec<(String, &OsStr)>) -> Command {
    for (flag, value) in flags {
        command.arg(flag).arg(value);
    }
    command
}

/// Runs the `hangar` CLI against `url` with `identity`'s certificate.
fn hangar(url: &str, ca: &TestCa, identity: Option<&CertFiles>, args: &[&str]) -> Output {
    let mut command = Command::new(binary("hangar"));
    command.args(["--controller", url]).arg("--tls-ca").arg(ca.ca());
    if let Some(identity) = identity {
        command.arg("--tls-cert").arg(&identity.cert).arg("--tls-key").arg(&identity.key);
    }
    command.args(args).output().expect("run hangar")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "hangar failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn a_drone_a_proxy_and_the_cli_work_against_a_controller_that_requires_client_certificates() {
    let ca = TestCa::new("hangar-ca");
    let data = tempfile::tempdir().unwrap();
    let server = ca.server("controller");
    let controller = ControllerProcess::spawn_with(
        &format!("sqlite://{}", data.path().join("hangar.db").display()),
        &[
            "--tls-cert".as_ref(),
            server.cert.as_os_str(),
            "--tls-key".as_ref(),
            server.key.as_os_str(),
            "--tls-client-ca".as_ref(),
            ca.ca().as_os_str(),
        ],
    );
    let url = controller.url.clone();
    assert!(url.starts_with("https://"), "{url}");

    // The drone, with its certificate and a token file (read at start; the controller has no
    // auth file, so it is not checked).
    let token = data.path().join("drone-token");
    std::fs::write(&token, "drone-token-0123456789\n").unwrap();
    let drone_cert = ca.client("drone-a");
    let mut drone = Command::new(binary("hangar-drone"));
    drone.args([
        "run",
        "--controller",
        &url,
        "--name",
        "drone-a",
        "--runtime",
        "process",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
    ]);
    drone.arg(data.path().join("drone")).arg("--token-file").arg(&token);
    let _drone =
        Running(with_flags(drone, tls_flags("", &ca.ca(), &drone_cert)).stderr(Stdio::null()).spawn().unwrap());

    let proxy_cert = ca.client("edge-1");
    let mut proxy = Command::new(binary("hangar-server"));
    proxy.args([
        "proxy",
        "--controller",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--name",
        "edge-1",
    ]);
    let (_proxy, proxy_url) =
        start(with_flags(proxy, tls_flags("controller-", &ca.ca(), &proxy_cert)), "hangar-server proxy listening on ");

    // The CLI lists both nodes, READY.
    let cli = ca.client("cli");
    eventually(WAIT, "drone-a and edge-1 READY in `hangar nodes list`", async || {
        let listing: serde_json::Value =
            serde_json::from_str(&stdout(&hangar(&url, &ca, Some(&cli), &["nodes", "list", "-o", "json"]))).unwrap();
        let mut ready: Vec<String> = listing["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|node| node["state"] == "READY")
            .map(|node| node["name"].as_str().unwrap().to_string())
            .collect();
        ready.sort();
        check(ready, |names| names == &["drone-a", "edge-1"])
    })
    .await;

    // A backend through the CLI, on the drone, served by the proxy (which looks its route up
    // over mTLS).
    let image = hangar_executor::testing::test_backend_binary().display().to_string();
    let connected =
        stdout(&hangar(&url, &ca, Some(&cli), &["connect", "mtls/doc-1", "--image", &image, "--wait", "-o", "json"]));
    let connection: serde_json::Value = serde_json::from_str(&connected).unwrap();
    assert_eq!(connection["state"], "READY", "{connected}");
    // The controller does not know the proxy's port-0 address; the token is the route.
    let (status, body) = http_get(&format!("{proxy_url}/{}/", connection["token"].as_str().unwrap())).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(connection["backend_id"].as_str().unwrap()), "the backend answered: {body}");

    // Without a client certificate the CLI is refused, says why and how to fix it.
    let refused = hangar(&url, &ca, None, &["nodes", "list"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("CertificateRequired") && stderr.contains("--tls-cert"), "{stderr}");
}

#[tokio::test]
async fn certificates_named_in_the_auth_file_are_the_principals_of_a_drone_a_proxy_and_the_cli() {
    let ca = TestCa::new("hangar-ca");
    let data = tempfile::tempdir().unwrap();
    let server = ca.server("controller");
    let auth = data.path().join("auth.toml");
    std::fs::write(
        &auth,
        "[[certificate]]\ncommon_name = \"drone-a\"\nrole = \"drone\"\n\n\
         [[certificate]]\ncommon_name = \"edge-1\"\nrole = \"proxy\"\n\n\
         [[certificate]]\ncommon_name = \"cli\"\nrole = \"client\"\n",
    )
    .unwrap();
    let controller = ControllerProcess::spawn_with(
        &format!("sqlite://{}", data.path().join("hangar.db").display()),
        &[
            "--tls-cert".as_ref(),
            server.cert.as_os_str(),
            "--tls-key".as_ref(),
            server.key.as_os_str(),
            "--tls-client-ca".as_ref(),
            ca.ca().as_os_str(),
            "--auth-file".as_ref(),
            auth.as_os_str(),
        ],
    );
    let url = controller.url.clone();

    // The drone and the proxy present their certificates and no token at all.
    let drone_cert = ca.client("drone-a");
    let mut drone = Command::new(binary("hangar-drone"));
    drone.args([
        "run",
        "--controller",
        &url,
        "--name",
        "drone-a",
        "--runtime",
        "process",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
    ]);
    drone.arg(data.path().join("drone")).env_remove("HANGAR_TOKEN").env_remove("HANGAR_TOKEN_FILE");
    let _drone =
        Running(with_flags(drone, tls_flags("", &ca.ca(), &drone_cert)).stderr(Stdio::null()).spawn().unwrap());
    let proxy_cert = ca.client("edge-1");
    let mut proxy = Command::new(binary("hangar-server"));
    proxy.args([
        "proxy",
        "--controller",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--name",
        "edge-1",
    ]);
    proxy.env_remove("HANGAR_TOKEN").env_remove("HANGAR_TOKEN_FILE");
    let (_proxy, proxy_url) =
        start(with_flags(proxy, tls_flags("controller-", &ca.ca(), &proxy_cert)), "hangar-server proxy listening on ");

    // The CLI, as the client its certificate names, sees both READY and connects a backend that
    // the proxy serves.
    let cli = ca.client("cli");
    eventually(WAIT, "drone-a and edge-1 READY, attached by certificate", async || {
        let listing: serde_json::Value =
            serde_json::from_str(&stdout(&hangar(&url, &ca, Some(&cli), &["nodes", "list", "-o", "json"]))).unwrap();
        let mut ready: Vec<String> = listing["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|node| node["state"] == "READY")
            .map(|node| node["name"].as_str().unwrap().to_string())
            .collect();
        ready.sort();
        check(ready, |names| names == &["drone-a", "edge-1"])
    })
    .await;
    let image = hangar_executor::testing::test_backend_binary().display().to_string();
    let connected =
        stdout(&hangar(&url, &ca, Some(&cli), &["connect", "mtls/by-cert", "--image", &image, "--wait", "-o", "json"]));
    let connection: serde_json::Value = serde_json::from_str(&connected).unwrap();
    assert_eq!(connection["state"], "READY", "{connected}");
    let (status, body) = http_get(&format!("{proxy_url}/{}/", connection["token"].as_str().unwrap())).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(connection["backend_id"].as_str().unwrap()), "the backend answered: {body}");

    // A certificate from the client CA whose common name the file does not name passes the
    // handshake and is still no principal.
    let stranger = ca.client("stranger");
    let refused = hangar(&url, &ca, Some(&stranger), &["nodes", "list"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a stranger's certificate lists nodes: {stderr}");
    assert!(stderr.contains("CERTIFICATE_NOT_MAPPED"), "{stderr}");
    // And a mapped certificate carries its role, not more: the drone's may not list nodes.
    let refused = hangar(&url, &ca, Some(&drone_cert), &["nodes", "list"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("ROLE_NOT_ALLOWED"), "{stderr}");
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

#[tokio::test]
async fn sighup_makes_the_controller_serve_its_renewed_certificate() {
    let ca = TestCa::new("hangar-ca");
    let data = tempfile::tempdir().unwrap();
    let (first, renewed) = (ca.server("controller"), ca.server("controller-renewed"));
    let (cert, key) = (data.path().join("controller.pem"), data.path().join("controller.key"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let controller = ControllerProcess::spawn_with(
        &format!("sqlite://{}", data.path().join("hangar.db").display()),
        &["--tls-cert".as_ref(), cert.as_os_str(), "--tls-key".as_ref(), key.as_os_str()],
    );
    assert_eq!(served_certificate(&controller.url, &ca).await, first.der());

    std::fs::copy(&renewed.cert, &cert).unwrap();
    std::fs::copy(&renewed.key, &key).unwrap();
    let status = Command::new("kill").args(["-HUP", &controller.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    eventually(WAIT, "the renewed certificate served after SIGHUP", async || {
        check(served_certificate(&controller.url, &ca).await, |served| *served == renewed.der())
    })
    .await;
}
