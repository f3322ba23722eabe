//! The README's quick start, tried as a new user would: `hangar-server dev`, then
//! `hangar nodes list` shows the dev drone READY, and the first-backend section, read from the
//! README itself, gets a 200 from the demo backend through the proxy on either runtime.

use hangar_executor::testing::{ContainerCleanup, http_get, sandboxes_in_any_state};
use hangar_tests::{DevProcess, binary, docker_available};
use std::process::Command;

#[test]
fn dev_server_then_nodes_list_shows_the_dev_drone_ready() {
    let data = tempfile::tempdir().unwrap();
    // Declared before the server, so dropped after it: on Docker, a server killed by a failing
    // assertion leaves its warm sandboxes (and one it was making) behind.
    let mut _cleanup: Option<ContainerCleanup> = None;
    let dev = DevProcess::start(data.path(), &[]);
    let instance = dev.instance();
    _cleanup = Some(ContainerCleanup::new(&instance));
    // The banner names the controller URL and the next commands to try.
    assert!(dev.banner.contains("nodes list"), "the banner says what to try next:\n{}", dev.banner);

    let table = dev.hangar(&["nodes", "list"]);
    let drone_row =
        table.lines().find(|l| l.contains("dev-drone")).unwrap_or_else(|| panic!("no dev-drone in:\n{table}"));
    assert!(drone_row.contains("READY") && drone_row.contains("DRONE"), "{drone_row}");

    let doc: serde_json::Value =
        serde_json::from_str(&dev.hangar(&["--output", "json", "nodes", "list"])).expect("one JSON document");
    let all = doc["nodes"].as_array().unwrap();
    let proxies: Vec<_> = all.iter().filter(|n| n["kind"] == "PROXY").collect();
    assert_eq!(proxies.len(), 1, "the dev proxy registers as a PROXY node: {all:?}");
    let nodes: Vec<_> = all.iter().filter(|n| n["kind"] == "DRONE").collect();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["name"], "dev-drone");
    assert_eq!(nodes[0]["state"], "READY");
    // Docker when an engine answers, the process runtime otherwise; CI requires the engine.
    let runtime = nodes[0]["labels"]["hangar.dev/runtime"].as_str().unwrap_or_default().to_string();
    if std::env::var("HANGAR_REQUIRE_DOCKER").as_deref() == Ok("1") {
        assert_eq!(runtime, "docker");
    } else {
        assert!(runtime == "docker" || runtime == "process", "runtime label {runtime:?}");
    }
    assert!(dev.banner.contains(&format!("{runtime} runtime")), "the banner names the runtime:\n{}", dev.banner);
    assert!(doc["revision"].as_u64().unwrap() > 0);

    // Ctrl-C, as the banner says: the server stops cleanly and takes its warm sandboxes along,
    // created ones too.
    dev.stop();
    if runtime == "docker" {
        let left = sandboxes_in_any_state(&instance);
        assert!(left.is_empty(), "sandboxes left after the server stopped: {left:?}");
    }
}

/// The README at the root of the workspace.
fn readme() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::read_to_string(root.join("README.md")).expect("read README.md")
}

/// The commands of the fenced block right after `<!-- quickstart: NAME -->` in the README, one
/// per line, without comment lines. Missing markers fail the test: the README drifted.
fn readme_commands(readme: &str, name: &str) -> Vec<String> {
    let marker = format!("<!-- quickstart: {name} -->");
    let (_, after) = readme.split_once(&marker).unwrap_or_else(|| panic!("README.md has no {marker}"));
    let block = after.trim_start().strip_prefix("```sh\n").unwrap_or_else(|| panic!("no ```sh block after {marker}"));
    let (block, _) = block.split_once("```").expect("the block ends");
    block.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

/// Follows the README's quick start and first-backend section on `runtime`: the dev command as
/// written (plus port 0 and a temporary data dir, so tests can run side by side), `hangar` on
/// the PATH as the install step puts it there, then every command of the first-backend block
/// exactly as written, in a shell. The last one must reach the demo backend through the proxy.
async fn readme_first_backend_answers(runtime: &str) {
    let readme = readme();

    let dev_commands = readme_commands(&readme, "dev");
    assert_eq!(dev_commands.len(), 1, "{dev_commands:?}");
    let dev_args = dev_commands[0]
        .strip_prefix("cargo run -p hangar-server -- dev")
        .unwrap_or_else(|| panic!("the quick start runs hangar-server dev: {:?}", dev_commands[0]));
    let mut args: Vec<&str> = dev_args.split_whitespace().collect();
    args.extend(["--runtime", runtime]);
    let data = tempfile::tempdir().unwrap();
    // Declared before the server, so dropped after it (see above).
    let mut _cleanup: Option<ContainerCleanup> = None;
    let dev = DevProcess::start(data.path(), &args);
    _cleanup = (runtime == "docker").then(|| ContainerCleanup::new(&dev.instance()));
    assert!(dev.banner.contains("hangar connect docs/doc-1 --image hangar-demo --wait"), "{}", dev.banner);

    // `cargo install --path client` installs the package's binaries: one of them must be `hangar`.
    let install = readme_commands(&readme, "install");
    assert_eq!(install, ["cargo install --locked --path client    # builds `hangar` into ~/.cargo/bin"]);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let manifest = std::fs::read_to_string(root.join("client/Cargo.toml")).unwrap();
    assert!(manifest.contains("[[bin]]\nname = \"hangar\""), "client/ builds no `hangar` binary");
    assert!(manifest.contains("name = \"hangar-client\"") && readme.contains("cargo run -q -p hangar-client --"));
    // The built `hangar` stands in for the installed one.
    let bin_dir = binary("hangar").parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());

    let commands = readme_commands(&readme, "first-backend");
    assert!(commands.len() >= 2, "{commands:?}");
    let shell_dir = tempfile::tempdir().unwrap();
    let mut last = String::new();
    for command in &commands {
        let output = Command::new("sh")
            .args(["-c", command])
            .current_dir(shell_dir.path())
            .env("PATH", &path)
            .env("HANGAR_CONTROLLER", &dev.controller_url)
            .output()
            .expect("run sh");
        last = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "`{command}` failed ({}):\n{last}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(commands.last().unwrap().starts_with("curl "), "the section ends with curl: {commands:?}");
    let backend: serde_json::Value =
        serde_json::from_str(&dev.hangar(&["-o", "json", "connect", "docs/doc-1"])).unwrap();
    let backend_id = backend["backend_id"].as_str().unwrap();
    assert!(last.contains("Hello from Hangar's demo backend") && last.contains(backend_id), "curl printed:\n{last}");

    // And the status is a 200, through the proxy.
    let url = backend["url"].as_str().unwrap();
    assert!(url.starts_with(&dev.proxy_url), "{url} is a URL of dev's proxy {}", dev.proxy_url);
    let rest = url.strip_prefix("http://").unwrap();
    let (address, request_path) = rest.split_at(rest.find('/').unwrap());
    let (status, body) = http_get(address, request_path).await.expect("GET the connection URL");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(backend_id), "{body}");

    dev.hangar(&["backends", "terminate", backend_id, "--hard"]);
    dev.stop();
}

#[tokio::test]
async fn readme_first_backend_answers_200_through_the_proxy_on_docker() {
    if docker_available("readme_first_backend_answers_200_through_the_proxy_on_docker").await {
        readme_first_backend_answers("docker").await;
    }
}

#[tokio::test]
async fn readme_first_backend_answers_200_through_the_proxy_on_the_process_runtime() {
    readme_first_backend_answers("process").await;
}
