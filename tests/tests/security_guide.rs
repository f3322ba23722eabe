//! docs/security.md's token steps, run as written: `hangar-server token generate` prints what
//! the guide shows, the guide's script issues the tokens and writes the auth file, the controller
//! starts with it, and the drone, the proxy and the CLI run with their tokens until the proxy
//! serves the backend the CLI connected. The blocks are the ones after the guide's
//! `<!-- security: NAME -->` markers; a missing marker fails the test, since the guide drifted.

use hangar_testkit::{check, eventually};
use hangar_tests::binary;
use hangar_tests::processes::{Process, start};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
/// The controller URL the guide's commands use.
const GUIDE_URL: &str = "http://127.0.0.1:7070";

fn guide() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::read_to_string(root.join("docs/security.md")).expect("read docs/security.md")
}

/// The fenced block of `language` right after `<!-- security: NAME` in the guide.
fn block(guide: &str, name: &str, language: &str) -> String {
    let marker = format!("<!-- security: {name}");
    let (_, after) = guide
        .split_once(&format!("{marker} "))
        .or_else(|| guide.split_once(&format!("{marker}-->")))
        .unwrap_or_else(|| panic!("docs/security.md has no {marker} -->"));
    let (_, after) = after.split_once("-->\n").expect("the marker ends");
    let fence = format!("```{language}\n");
    let block = after.strip_prefix(&fence).unwrap_or_else(|| panic!("no {fence} right after {marker}"));
    block.split_once("```").expect("the block ends").0.to_string()
}

/// The block's lines without blank lines and comment lines.
fn commands(block: &str) -> Vec<String> {
    block.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

/// PATH with this build's binaries first, as if installed.
fn path_with_binaries() -> String {
    let bin_dir = binary("hangar-server").parent().unwrap().to_path_buf();
    format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default())
}

fn sh(script: &str, dir: &Path) -> Output {
    Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .env("PATH", path_with_binaries())
        .env_remove("HANGAR_TOKEN")
        .env_remove("HANGAR_TOKEN_FILE")
        .env_remove("HANGAR_CONTROLLER")
        .output()
        .expect("run sh")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn is_secret(line: &str) -> bool {
    line.len() == 43 && line.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn sha256_of(line: &str) -> Option<&str> {
    let hex = line.strip_prefix("sha256 = \"")?.strip_suffix('"')?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())).then_some(hex)
}

/// Runs the `$ ` command of a console block and compares what it prints with the block's other
/// lines: the same, except for the secret and its digest, which are fresh on every run.
fn console_block_as_shown(guide: &str, name: &str) -> Vec<String> {
    let block = block(guide, name, "console");
    let mut lines = block.lines();
    let command = lines.next().and_then(|l| l.strip_prefix("$ ")).expect("the block starts with `$ `");
    let shown: Vec<&str> = lines.collect();
    let dir = tempfile::tempdir().unwrap();
    let output = sh(command, dir.path());
    assert!(output.status.success(), "`{command}` failed:\n{}", text(&output));
    let printed: Vec<String> = String::from_utf8_lossy(&output.stdout).lines().map(String::from).collect();
    assert_eq!(printed.len(), shown.len(), "`{command}` prints\n{}\nthe guide shows\n{block}", printed.join("\n"));
    for (printed, shown) in printed.iter().zip(&shown) {
        let alike = printed == shown
            || (is_secret(printed) && is_secret(shown))
            || (sha256_of(printed).is_some() && sha256_of(shown).is_some());
        assert!(alike, "`{command}` printed {printed:?} where the guide shows {shown:?}");
    }
    printed
}

#[test]
fn token_generate_prints_what_the_guide_shows_and_the_entry_names_the_secret_by_its_sha256() {
    let guide = guide();
    let printed = console_block_as_shown(&guide, "token-generate");
    let secret = &printed[0];
    assert!(is_secret(secret), "the first line is the secret: {printed:?}");
    let digest = printed.iter().find_map(|l| sha256_of(l)).expect("a sha256 line");
    let dir = tempfile::tempdir().unwrap();
    let sum = sh(&format!("printf %s '{secret}' | sha256sum"), dir.path());
    assert_eq!(String::from_utf8_lossy(&sum.stdout).split_whitespace().next(), Some(digest), "sha256 of the secret");

    let printed = console_block_as_shown(&guide, "token-generate-drone");
    assert!(printed.contains(&"nodes = [\"drone-a\"]".to_string()), "{printed:?}");
}

/// A guide line that starts a server (`[VAR=value…] program args…`) as a command, with the
/// controller at `url`, and every listener on port 0 of loopback so tests run side by side.
fn server_command(line: &str, url: &str, dir: &Path) -> Command {
    let mut words = line.split_whitespace().peekable();
    let mut env = Vec::new();
    while let Some((name, value)) = words.peek().and_then(|w| w.split_once('=')) {
        env.push((name.to_string(), value.to_string()));
        words.next();
    }
    let program = words.next().expect("a program");
    let mut args: Vec<String> = words.map(|w| w.replace(GUIDE_URL, url)).collect();
    // A drone has no listener of its own but its admin one.
    let flags: &[&str] = if program == "hangar-drone" { &["--admin-listen"] } else { &["--listen", "--admin-listen"] };
    for flag in flags {
        match args.iter().position(|a| a == flag) {
            Some(at) => {
                let host = args[at + 1].rsplit_once(':').expect("HOST:PORT").0.to_string();
                args[at + 1] = format!("{host}:0");
            }
            None => args.extend([flag.to_string(), "127.0.0.1:0".to_string()]),
        }
    }
    let mut command = Command::new(binary(program));
    command.args(args).envs(env).current_dir(dir).env_remove("HANGAR_TOKEN").env_remove("HANGAR_CONTROLLER");
    command
}

/// The `hangar` CLI in `dir` against `url` with the token in `token_file`, if any.
fn hangar(dir: &Path, url: &str, token_file: Option<&PathBuf>, args: &[&str]) -> Output {
    let mut command = Command::new(binary("hangar"));
    command.current_dir(dir).args(["--controller", url]).env_remove("HANGAR_TOKEN").env_remove("HANGAR_TOKEN_FILE");
    if let Some(file) = token_file {
        command.arg("--token-file").arg(file);
    }
    command.args(args).output().expect("run hangar")
}

#[tokio::test]
async fn the_guides_token_steps_run_as_written_secure_a_controller_its_drone_proxy_and_cli() {
    let guide = guide();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();

    // Step 2: the script issues the tokens and writes the auth file.
    let script = block(&guide, "tokens", "sh");
    let output = sh(&script, dir);
    assert!(output.status.success(), "the token script failed:\n{}", text(&output));
    let auth = std::fs::read_to_string(dir.join("hangar-auth/auth.toml")).unwrap();
    for name in ["ci", "drone-a", "edge-1"] {
        let secret = std::fs::read_to_string(dir.join(format!("hangar-auth/{name}.token"))).unwrap();
        assert!(is_secret(secret.trim()), "{name}.token holds a secret: {secret:?}");
        assert!(!auth.contains(secret.trim()), "the auth file holds no secret");
        assert!(auth.contains(&format!("name = \"{name}\"")), "{auth}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("hangar-auth/ci.token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the secrets are their owner's alone");

    // Step 3: the controller with the auth file, on every interface as the guide has it.
    let controller_lines = commands(&block(&guide, "tokens-controller", "sh"));
    assert_eq!(controller_lines.len(), 1, "{controller_lines:?}");
    let (_controller, listening) =
        start(server_command(&controller_lines[0], GUIDE_URL, dir), "hangar-server controller listening on ");
    let port = listening.rsplit(':').next().unwrap().trim_end_matches('/');
    let url = format!("http://127.0.0.1:{port}");
    let ci_token = dir.join("hangar-auth/ci.token");

    // Without a token the controller refuses.
    let refused = hangar(dir, &url, None, &["nodes", "list"]);
    assert!(!refused.status.success() && text(&refused).contains("UNAUTHENTICATED"), "{}", text(&refused));

    // Step 4: the drone and the proxy with their token files, then the CLI lines in one shell.
    let client_lines = commands(&block(&guide, "tokens-clients", "sh"));
    let mut servers = Vec::new();
    let mut proxy_url = None;
    let mut shell = vec!["set -eu".to_string()];
    for line in &client_lines {
        if line.contains("hangar-drone run") {
            let mut drone = server_command(line, &url, dir);
            drone.arg("--data-dir").arg(dir.join("drone-a-data"));
            servers.push(Process(drone.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start the drone")));
        } else if line.contains("hangar-server proxy") {
            let (proxy, listening) = start(server_command(line, &url, dir), "hangar-server proxy listening on ");
            servers.push(proxy);
            proxy_url = Some(listening);
        } else {
            shell.push(line.replace(GUIDE_URL, &url));
        }
    }
    let proxy_url = proxy_url.expect("the guide starts a proxy");
    assert_eq!(servers.len(), 2, "the guide starts a drone and a proxy: {client_lines:?}");
    eventually(WAIT, "drone-a and edge-1 READY, attached with their tokens", async || {
        let listed = hangar(dir, &url, Some(&ci_token), &["nodes", "list", "-o", "json"]);
        let listing: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap_or_default();
        let mut ready: Vec<String> = listing["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|node| node["state"] == "READY")
            .filter_map(|node| node["name"].as_str().map(String::from))
            .collect();
        ready.sort();
        check(ready, |names| names == &["drone-a", "edge-1"])
    })
    .await;
    let output = sh(&shell.join("\n"), dir);
    assert!(output.status.success(), "the guide's CLI lines failed:\n{}\n{}", shell.join("\n"), text(&output));

    // The backend the CLI connected answers through the proxy.
    let connected = hangar(dir, &url, Some(&ci_token), &["connect", "docs/doc-1", "-o", "json"]);
    let connection: serde_json::Value =
        serde_json::from_slice(&connected.stdout).unwrap_or_else(|err| panic!("{err}: {}", text(&connected)));
    assert_eq!(connection["state"], "READY", "{connection}");
    let route = connection["token"].as_str().unwrap();
    let address = proxy_url.trim_start_matches("http://").trim_end_matches('/');
    let (status, body) = hangar_executor::testing::http_get(address, &format!("/{route}/")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(connection["backend_id"].as_str().unwrap()), "the demo backend answered: {body}");

    // The drone's token is a drone's: it may not list nodes.
    let drone_token = dir.join("hangar-auth/drone-a.token");
    let refused = hangar(dir, &url, Some(&drone_token), &["nodes", "list"]);
    assert!(!refused.status.success() && text(&refused).contains("ROLE_NOT_ALLOWED"), "{}", text(&refused));
}
