//! The scale benchmarks' `--quick` passes: each runs for a few seconds against the real
//! `hangar-server` binary (built next to `hangar-bench`; `scripts/test` builds every binary
//! first) and must end with its `RESULT` line carrying exactly the keys BENCHMARKS.md documents,
//! so that the harness cannot rot between the runs that record figures; and a small `watch` run.
//! The benchmarks themselves never run here.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Runs `hangar-bench NAME --quick` and returns the figures of its last line, which must be
/// `RESULT scenario=NAME` followed by exactly `keys`, in order.
fn quick_pass(name: &str, keys: &[&str]) -> BTreeMap<String, f64> {
    let bench = env!("CARGO_BIN_EXE_hangar-bench");
    let server = Path::new(bench).with_file_name("hangar-server");
    assert!(
        server.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`, as scripts/test does)",
        server.display()
    );
    let output = Command::new(bench).args([name, "--quick"]).output().expect("hangar-bench starts");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "`hangar-bench {name} --quick` failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    let mut fields = last.split(' ');
    assert_eq!(fields.next(), Some("RESULT"), "last line: {last}");
    assert_eq!(fields.next(), Some(format!("scenario={name}").as_str()), "last line: {last}");
    let pairs: Vec<(&str, &str)> = fields.map(|f| f.split_once('=').expect("key=value")).collect();
    assert_eq!(pairs.iter().map(|(k, _)| *k).collect::<Vec<_>>(), keys, "last line: {last}");
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.parse::<f64>().unwrap_or_else(|_| panic!("{k}={v} is not a number"))))
        .collect()
}

#[test]
fn heartbeats_quick_pass_attaches_every_drone_and_prints_its_result_line() {
    let figures = quick_pass(
        "heartbeats",
        &["drones", "controller_cpu_cores", "controller_rss_mib", "wrongly_unhealthy", "attach_all_seconds"],
    );
    assert_eq!(figures["drones"], 200.0);
    assert!(figures["controller_rss_mib"] > 0.0 && figures["attach_all_seconds"] > 0.0, "{figures:?}");
}

#[test]
fn placements_quick_pass_never_overfills_a_drone_or_doubles_a_key() {
    let figures = quick_pass(
        "placements",
        &["per_second", "connect_p50_ms", "connect_p99_ms", "over_capacity", "duplicate_keys", "expired"],
    );
    assert!(figures["per_second"] > 0.0, "no backend reached READY: {figures:?}");
    assert_eq!(figures["over_capacity"], 0.0, "{figures:?}");
    assert_eq!(figures["duplicate_keys"], 0.0, "{figures:?}");
}

#[test]
fn churn_quick_pass_completes_cycles_and_prints_its_result_line() {
    let figures = quick_pass("churn", &["cycles_per_second", "refused", "db_bytes_per_backend"]);
    assert!(figures["cycles_per_second"] > 0.0, "{figures:?}");
}

#[test]
fn list_quick_pass_lists_every_node_next_to_etcd() {
    assert!(
        Command::new("etcd").arg("--version").output().is_ok_and(|o| o.status.success()),
        "etcd is missing: scripts/test installs it (apt-get install etcd-server)"
    );
    let figures = quick_pass(
        "list",
        &[
            "hangar_p50_ms",
            "etcd_p50_ms",
            "ratio",
            "hangar_undecoded_p50_ms",
            "undecoded_ratio",
            "decoding_p50_ms",
            "decoding_ratio",
        ],
    );
    assert!(figures["hangar_p50_ms"] > 0.0 && figures["etcd_p50_ms"] > 0.0, "{figures:?}");
    assert!(figures["hangar_undecoded_p50_ms"] > 0.0 && figures["decoding_p50_ms"] > 0.0, "{figures:?}");
}

#[test]
fn proxy_quick_pass_serves_the_same_bytes_directly_through_nginx_and_through_hangar() {
    // `wrk -v` exits 1: that it starts is what counts.
    let present = |bin: &str| Command::new(bin).arg("-v").output().is_ok();
    if !(present("nginx") && present("wrk") && present("h2load")) {
        // Allowed only where they cannot be installed; scripts/bench installs them
        // (apt-get install nginx wrk nghttp2-client).
        eprintln!(
            "\n!!!!! SKIPPED: nginx, wrk or h2load is missing, so the proxy benchmark's quick pass did not run !!!!!\n"
        );
        return;
    }
    let figures = quick_pass(
        "proxy",
        &[
            "hangar_rps",
            "nginx_rps",
            "ratio",
            "hangar_p99_ms",
            "nginx_p99_ms",
            "added_p99_ms",
            "hangar_h2_rps",
            "nginx_h2_rps",
            "h2_ratio",
            "hangar_ws_echo_per_s",
            "nginx_ws_echo_per_s",
            "ws_ratio",
            "ws_idle",
            "ws_idle_kib_each",
            "hangar_h1_1m_rps",
            "nginx_h1_1m_rps",
            "h1_1m_ratio",
            "hangar_h2_1m_rps",
            "nginx_h2_1m_rps",
            "h2_1m_ratio",
            "hangar_ws_h2_echo_per_s",
        ],
    );
    assert!(figures["hangar_rps"] > 0.0 && figures["nginx_rps"] > 0.0 && figures["ratio"] > 0.0, "{figures:?}");
    assert!(figures["hangar_h2_rps"] > 0.0 && figures["hangar_ws_echo_per_s"] > 0.0, "{figures:?}");
    assert_eq!(figures["ws_idle"], 500.0, "{figures:?}");
    assert!(figures["hangar_ws_h2_echo_per_s"] > 0.0, "{figures:?}");
}

#[test]
fn hold_quick_pass_keeps_every_backend_ready_and_none_expired() {
    let figures = quick_pass("hold", &["backends", "placed_seconds", "ready_after_hold", "expired", "idle_cpu_cores"]);
    assert_eq!(figures["backends"], 200.0, "{figures:?}");
    assert_eq!(figures["ready_after_hold"], 200.0, "{figures:?}");
    assert_eq!(figures["expired"], 0.0, "{figures:?}");
}

#[test]
fn coldstart_quick_pass_reaches_a_first_200_through_hangar_docker_run_and_the_process_runtime() {
    let engine = Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output();
    if !engine.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var("HANGAR_REQUIRE_DOCKER").as_deref() != Ok("1"),
            "HANGAR_REQUIRE_DOCKER=1 but no Docker engine answers `docker version`"
        );
        eprintln!(
            "\n!!!!! SKIPPED: no Docker engine answers, so the coldstart benchmark's quick pass did not run; set \
             HANGAR_REQUIRE_DOCKER=1 to fail instead !!!!!\n"
        );
        return;
    }
    let figures = quick_pass(
        "coldstart",
        &[
            "hangar_p50_ms",
            "docker_run_p50_ms",
            "ratio",
            "hangar_p90_ms",
            "hangar_max_ms",
            "docker_run_p90_ms",
            "docker_run_max_ms",
            "process_p50_ms",
        ],
    );
    assert!(
        figures["hangar_p50_ms"] > 0.0 && figures["docker_run_p50_ms"] > 0.0 && figures["process_p50_ms"] > 0.0,
        "{figures:?}"
    );
    assert!(figures["hangar_max_ms"] >= figures["hangar_p50_ms"], "{figures:?}");
}

/// `watch` has no `--quick`; a run of a few watchers and changes on the Hangar side alone (etcd's
/// side is the `list` pass's etcd) proves that the controller it measures, the
/// `hangar-bench-controller` binary, starts, and that every change reaches every watcher.
#[test]
fn a_small_watch_run_delivers_every_change_to_every_watcher_and_writes_each_change_line() {
    let bench = env!("CARGO_BIN_EXE_hangar-bench");
    let dir = tempfile::tempdir().unwrap();
    let per_change = dir.path().join("changes");
    let output = Command::new(bench)
        .args(["watch", "--only", "hangar", "--watchers", "20", "--connections", "2", "--events", "130"])
        .args(["--paced-events", "40", "--rate", "100", "--loaded-events", "40", "--loaded-rate", "200"])
        .args(["--heavy-events", "20", "--heavy-rate", "400", "--timeout", "30s"])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--per-change")
        .arg(&per_change)
        .output()
        .expect("hangar-bench starts");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "`hangar-bench watch` failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("RESULT scenario=watch hangar_paced_p99_ms="), "last line: {last}");
    assert!(last.contains(" hangar_missing=0"), "a change did not reach every watcher: {last}");

    let lines = std::fs::read_to_string(dir.path().join("changes.hangar")).unwrap();
    let lines: Vec<&str> = lines.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 130, "one line per change");
    for line in lines {
        let fields: Vec<f64> = line.split(' ').map(|f| f.parse().unwrap()).collect();
        assert_eq!(fields.len(), 7, "{line}");
        assert!(
            fields[3] >= 0.0 && fields[3] <= fields[4] && fields[4] <= fields[5],
            "fastest ≤ median ≤ slowest: {line}"
        );
    }
}
