//! The README's quick start, tried as a new user would: `hangar-server dev`, then
//! `hangar nodes list` shows the dev drone READY.

use hangar_tests::binary;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dev_server_then_nodes_list_shows_the_dev_drone_ready() {
    let data = tempfile::tempdir().unwrap();
    let mut dev = KillOnDrop(
        Command::new(binary("hangar-server"))
            .args(["dev", "--listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hangar-server dev"),
    );
    // The banner names the controller URL and the next commands to try.
    let stdout = BufReader::new(dev.0.stdout.take().unwrap());
    let mut banner = String::new();
    let mut url = None;
    let started = Instant::now();
    for line in stdout.lines() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if let Some(rest) = line.trim().strip_prefix("controller") {
            url = rest.split_whitespace().next().map(str::to_string);
        }
        if line.contains("Stop with Ctrl-C") || started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let url = url.unwrap_or_else(|| panic!("no controller URL in the banner:\n{banner}"));
    assert!(banner.contains("nodes list"), "the banner says what to try next:\n{banner}");

    let output = Command::new(binary("hangar")).args(["--controller", &url, "nodes", "list"]).output().unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "hangar nodes list failed: {}", String::from_utf8_lossy(&output.stderr));
    let drone_row =
        table.lines().find(|l| l.contains("dev-drone")).unwrap_or_else(|| panic!("no dev-drone in:\n{table}"));
    assert!(drone_row.contains("READY") && drone_row.contains("DRONE"), "{drone_row}");

    let output = Command::new(binary("hangar"))
        .args(["--controller", &url, "--output", "json", "nodes", "list"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
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
    assert!(banner.contains(&format!("{runtime} runtime")), "the banner names the runtime:\n{banner}");
    assert!(doc["revision"].as_u64().unwrap() > 0);
}
