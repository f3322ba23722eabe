//! Every component over mTLS, as an operator runs them: the `hangar-server controller` binary
//! requiring client certificates, a `hangar-drone run` and a `hangar-server proxy` attached with
//! their own certificates, and the `hangar` CLI listing nodes and connecting a backend that the
//! proxy then serves. Certificates are made here (`hangar_tests::pki`). With an auth file whose
//! `[[certificate]]` entries name them, the certificates alone are the principals: no token.

use hangar_testkit::{check, eventually};
use hangar_tests::pki::{CertFiles, TestCa, served_certificate};
use hangar_tests::processes::{Process, drone_command, proxy_command, start};
use hangar_tests::{ControllerProcess, binary};
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// A controller process over a database in `data`, serving `ca`'s certificate for `controller`
/// and requiring client certificates from `ca`; `more` arguments after those.
fn mtls_controller(ca: &TestCa, data: &Path, more: &[&OsStr]) -> ControllerProcess {
    let server = ca.server("controller");
    let ca_file = ca.ca();
    let mut args: Vec<&OsStr> = vec!["--tls-cert".as_ref(), server.cert.as_os_str(), "--tls-key".as_ref()];
    args.extend([server.key.as_os_str(), "--tls-client-ca".as_ref(), ca_file.as_os_str()]);
    args.extend(more);
    ControllerProcess::spawn_with(&format!("sqlite://{}", data.join("hangar.db").display()), &args)
}

/// Adds `--{prefix}tls-ca`, `--{prefix}tls-cert` and `--{prefix}tls-key` to `command`: trust
/// `ca`, present `identity`.
fn with_tls(command: &mut Command, prefix: &str, ca: &Path, identity: &CertFiles) {
    command.arg(format!("--{prefix}tls-ca")).arg(ca);
    command.arg(format!("--{prefix}tls-cert")).arg(&identity.cert);
    command.arg(format!("--{prefix}tls-key")).arg(&identity.key);
}

/// A `hangar-drone run` named `drone-a` on `url` with `identity`'s certificate, its journal
/// under `data`; `configure` adds the rest (its token, or none).
fn start_drone(
    url: &str,
    ca: &TestCa,
    identity: &CertFiles,
    data: &Path,
    configure: impl FnOnce(&mut Command),
) -> Process {
    let mut drone = drone_command(url, "drone-a", &data.join("drone"));
    configure(&mut drone);
    with_tls(&mut drone, "", &ca.ca(), identity);
    Process(drone.stderr(Stdio::null()).spawn().unwrap())
}

/// A `hangar-server proxy` named `edge-1` on `url` with `identity`'s certificate; `configure`
/// adds the rest. Returns it with the URL it serves on.
fn start_proxy(
    url: &str,
    ca: &TestCa,
    identity: &CertFiles,
    configure: impl FnOnce(&mut Command),
) -> (Process, String) {
    let mut proxy = proxy_command(url, "edge-1");
    configure(&mut proxy);
    with_tls(&mut proxy, "controller-", &ca.ca(), identity);
    start(proxy, "hangar-server proxy listening on ")
}

/// The names of the nodes READY in `hangar nodes list`, run as `cli`, sorted.
fn ready_nodes(url: &str, ca: &TestCa, cli: &CertFiles) -> Vec<String> {
    let listing: serde_json::Value =
        serde_json::from_str(&stdout(&hangar(url, ca, Some(cli), &["nodes", "list", "-o", "json"]))).unwrap();
    let mut ready: Vec<String> = listing["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|node| node["state"] == "READY")
        .map(|node| node["name"].as_str().unwrap().to_string())
        .collect();
    ready.sort();
    ready
}

/// `hangar connect KEY --wait` as `cli`: the backend is READY and the proxy at `proxy_url` serves
/// it (the controller does not know the proxy's port-0 address; the token is the route).
async fn connect_through_proxy(url: &str, ca: &TestCa, cli: &CertFiles, key: &str, proxy_url: &str) {
    let image = hangar_executor::testing::test_backend_binary().display().to_string();
    let connected = stdout(&hangar(url, ca, Some(cli), &["connect", key, "--image", &image, "--wait", "-o", "json"]));
    let connection: serde_json::Value = serde_json::from_str(&connected).unwrap();
    assert_eq!(connection["state"], "READY", "{connected}");
    let (status, body) = http_get(&format!("{proxy_url}/{}/", connection["token"].as_str().unwrap())).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(connection["backend_id"].as_str().unwrap()), "the backend answered: {body}");
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
    let controller = mtls_controller(&ca, data.path(), &[]);
    let url = controller.url.clone();
    assert!(url.starts_with("https://"), "{url}");

    // The drone, with its certificate and a token file (read at start; the controller has no
    // auth file, so it is not checked).
    let token = data.path().join("drone-token");
    std::fs::write(&token, "drone-token-0123456789\n").unwrap();
    let drone_cert = ca.client("drone-a");
    let _drone = start_drone(&url, &ca, &drone_cert, data.path(), |drone| {
        drone.arg("--token-file").arg(&token);
    });
    let (_proxy, proxy_url) = start_proxy(&url, &ca, &ca.client("edge-1"), |_| {});

    // The CLI lists both nodes, READY.
    let cli = ca.client("cli");
    eventually(WAIT, "drone-a and edge-1 READY in `hangar nodes list`", async || {
        check(ready_nodes(&url, &ca, &cli), |names| names == &["drone-a", "edge-1"])
    })
    .await;

    // A backend through the CLI, on the drone, served by the proxy (which looks its route up
    // over mTLS).
    connect_through_proxy(&url, &ca, &cli, "mtls/doc-1", &proxy_url).await;

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
    let auth = data.path().join("auth.toml");
    std::fs::write(
        &auth,
        "[[certificate]]\ncommon_name = \"drone-a\"\nrole = \"drone\"\n\n\
         [[certificate]]\ncommon_name = \"edge-1\"\nrole = \"proxy\"\n\n\
         [[certificate]]\ncommon_name = \"cli\"\nrole = \"client\"\n",
    )
    .unwrap();
    let controller = mtls_controller(&ca, data.path(), &["--auth-file".as_ref(), auth.as_os_str()]);
    let url = controller.url.clone();

    // The drone and the proxy present their certificates and no token at all.
    let drone_cert = ca.client("drone-a");
    let _drone = start_drone(&url, &ca, &drone_cert, data.path(), |drone| {
        drone.env_remove("HANGAR_TOKEN").env_remove("HANGAR_TOKEN_FILE");
    });
    let (_proxy, proxy_url) = start_proxy(&url, &ca, &ca.client("edge-1"), |proxy| {
        proxy.env_remove("HANGAR_TOKEN").env_remove("HANGAR_TOKEN_FILE");
    });

    // The CLI, as the client its certificate names, sees both READY and connects a backend that
    // the proxy serves.
    let cli = ca.client("cli");
    eventually(WAIT, "drone-a and edge-1 READY, attached by certificate", async || {
        check(ready_nodes(&url, &ca, &cli), |names| names == &["drone-a", "edge-1"])
    })
    .await;
    connect_through_proxy(&url, &ca, &cli, "mtls/by-cert", &proxy_url).await;

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
