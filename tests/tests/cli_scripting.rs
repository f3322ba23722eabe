//! The `hangar` binary as scripts use it: shell completions that the shells accept, the
//! documented exit codes against a real controller, and watches that outlive a controller
//! restart (the controller stopped, then started again on the same port over the same database
//! file, as a service manager restarts it).

use chrono::Utc;
use hangar::v1::{self, BackendState};
use hangar_client::cli::{EXIT_CODES_HELP, Exit};
use hangar_client::{ConnectRequest, HangarClient, SpawnSpec};
use hangar_server::api::BackendSettings;
use hangar_server::controller::{Controller, ControllerConfig, RunningController};
use hangar_server::store::{self, DynStore};
use hangar_tests::{ManualDrone, binary, drone_hello, registration, status, test_config};
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

const WAIT: Duration = Duration::from_secs(15);

fn hangar(args: &[&str]) -> Output {
    std::process::Command::new(binary("hangar")).args(args).output().expect("run hangar")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `shell` with `args` and the script path appended; fails the test with its stderr.
fn shell_accepts(shell: &str, args: &[&str], script: &std::path::Path) -> String {
    let output = std::process::Command::new(shell)
        .args(args)
        .arg(script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shell} ({e}); scripts/test installs bash, zsh and fish"));
    assert!(output.status.success(), "{shell} {args:?} rejects the script: {}", text(&output.stderr));
    text(&output.stdout)
}

#[test]
fn completion_scripts_parse_in_bash_zsh_and_fish_and_complete_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let output = hangar(&["completions", shell]);
        assert!(output.status.success(), "hangar completions {shell}: {}", text(&output.stderr));
        assert!(output.stdout.len() > 1000, "a whole script for {shell}");
        let script = dir.path().join(format!("hangar.{shell}"));
        std::fs::write(&script, &output.stdout).unwrap();
        // Syntax only: `-n` reads without executing.
        shell_accepts(shell, &["-n"], &script);
    }

    // And they complete: the bash function offers the subcommands for `hangar no`, and fish
    // offers `nodes` and the `--state` values of `nodes list`.
    let bash = dir.path().join("hangar.bash");
    let probe = dir.path().join("probe.bash");
    std::fs::write(
        &probe,
        format!(
            "source {}\nCOMP_WORDS=(hangar no)\nCOMP_CWORD=1\nCOMP_LINE='hangar no'\nCOMP_POINT=9\n\
             _hangar hangar no hangar\necho \"${{COMPREPLY[@]}}\"\n",
            bash.display()
        ),
    )
    .unwrap();
    let offered = shell_accepts("bash", &[], &probe);
    assert_eq!(offered.split_whitespace().collect::<Vec<_>>(), ["nodes"], "bash offers: {offered}");

    let fish = dir.path().join("hangar.fish");
    let output = std::process::Command::new("fish")
        .arg("-c")
        .arg(format!("source {}; complete -C 'hangar nod'; complete -C 'hangar nodes list --state '", fish.display()))
        .output()
        .expect("run fish");
    let offered = text(&output.stdout);
    assert!(offered.lines().any(|l| l.starts_with("nodes")), "fish offers: {offered}");
    assert!(offered.lines().any(|l| l.starts_with("unhealthy")), "fish offers the states: {offered}");
}

#[test]
fn help_documents_the_exit_codes() {
    let help = text(&hangar(&["--help"]).stdout);
    assert!(help.contains(EXIT_CODES_HELP), "hangar --help ends with the exit code table:\n{help}");
}

/// A controller over a SQLite file that can be stopped and started again on the same address.
struct Restartable {
    database: String,
    addr: SocketAddr,
    controller: Option<RunningController>,
    store: DynStore,
    _dir: tempfile::TempDir,
}

fn config() -> ControllerConfig {
    let backends = BackendSettings { watch_poll: Duration::from_millis(100), ..BackendSettings::default() };
    ControllerConfig { backends, ..test_config() }
}

impl Restartable {
    async fn start() -> Restartable {
        hangar_tests::init_logging();
        let dir = tempfile::tempdir().unwrap();
        let database = format!("sqlite://{}", dir.path().join("hangar.db").display());
        let store = store::open(&database).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let controller = Controller::start(store.clone(), config(), listener).await.unwrap();
        let addr = controller.local_addr();
        Restartable { database, addr, controller: Some(controller), store, _dir: dir }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(&mut self) {
        self.controller.take().expect("running").shutdown().await.unwrap();
    }

    /// A new controller with a new store over the same database file, on the same port.
    async fn start_again(&mut self) {
        self.store = store::open(&self.database).await.unwrap();
        let listener = tokio::net::TcpListener::bind(self.addr).await.expect("the port is free again");
        self.controller = Some(Controller::start(self.store.clone(), config(), listener).await.unwrap());
    }

    async fn shutdown(mut self) {
        if let Some(controller) = self.controller.take() {
            controller.shutdown().await.unwrap();
        }
    }
}

/// `hangar ARGS` running in the background, its stdout read line by line.
struct Running {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Running {
    fn spawn(args: &[&str]) -> Running {
        let mut child = tokio::process::Command::new(binary("hangar"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Running { child, lines }
    }

    async fn json_line(&mut self) -> serde_json::Value {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("stdout open");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    async fn stderr(mut self) -> String {
        let _ = self.child.kill().await;
        let mut stderr = String::new();
        let mut pipe = self.child.stderr.take().unwrap();
        tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr).await.unwrap();
        stderr
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangar_nodes_watch_resumes_from_its_revision_across_a_controller_restart() {
    let mut cluster = Restartable::start().await;
    cluster.store.attach_node(registration("first"), "c", Utc::now()).await.unwrap();
    let url = cluster.url();
    let mut watch = Running::spawn(&["--controller", &url, "-o", "json", "nodes", "watch"]);
    assert_eq!(watch.json_line().await["type"], "SNAPSHOT_START");
    assert_eq!(watch.json_line().await["node"]["name"], "first");
    let snapshot = watch.json_line().await;
    assert_eq!(snapshot["type"], "SNAPSHOT_END");

    // Down, a change while it is down, up again on the same port over the same database.
    cluster.stop().await;
    let second = cluster.store.attach_node(registration("second"), "c", Utc::now()).await.unwrap();
    cluster.start_again().await;
    let missed = watch.json_line().await;
    assert_eq!(
        (missed["type"].as_str(), missed["node"]["name"].as_str(), missed["revision"].as_u64()),
        (Some("ADDED"), Some("second"), Some(second.revision)),
        "the change made while the controller was down comes first, not a new snapshot: {missed}"
    );
    let third = cluster.store.attach_node(registration("third"), "c", Utc::now()).await.unwrap();
    let live = watch.json_line().await;
    assert_eq!((live["node"]["name"].as_str(), live["revision"].as_u64()), (Some("third"), Some(third.revision)));

    let stderr = watch.stderr().await;
    let from = snapshot["revision"].as_u64().unwrap();
    assert!(stderr.contains(&format!("reconnecting from revision {from}")), "the reconnect is reported: {stderr}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangar_backends_watch_follows_one_backend_across_a_controller_restart_without_repeats() {
    let mut cluster = Restartable::start().await;
    let url = cluster.url();
    let mut drone = ManualDrone::attach(&url, drone_hello("d1")).await.unwrap();
    let beat = drone.keep_alive(Duration::from_millis(50));
    let client = HangarClient::connect(&url).await.unwrap();
    let id = client.connect_backend(&ConnectRequest::keyless(SpawnSpec::new("img"))).await.unwrap().backend_id;
    let spawn = drone.next_action(WAIT).await;
    drone.ack_action(&spawn.action_id).await;
    drone.event_acked("ev-1", &id, status(BackendState::Starting), "").await;

    let mut watch = Running::spawn(&["--controller", &url, "-o", "json", "backends", "watch", &id]);
    assert_eq!(watch.json_line().await["state"], "SCHEDULED");
    assert_eq!(watch.json_line().await["state"], "STARTING");

    cluster.stop().await;
    beat.abort();
    drop(drone);
    cluster.start_again().await;
    let mut drone = ManualDrone::attach(&url, drone_hello("d1")).await.expect("the drone attaches again");
    let beat = drone.keep_alive(Duration::from_millis(50));
    drone.event_acked("ev-2", &id, status(BackendState::Ready), "127.0.0.1:41000").await;
    let ready = watch.json_line().await;
    assert_eq!(ready["state"], "READY", "the states before the restart are not repeated: {ready}");
    let exited = v1::BackendStatus {
        state: BackendState::Terminated as i32,
        termination_reason: v1::TerminationReason::Exited as i32,
        exit_code: Some(0),
        ..Default::default()
    };
    drone.event_acked("ev-3", &id, exited, "").await;
    assert_eq!(watch.json_line().await["state"], "TERMINATED");
    let exit = tokio::time::timeout(WAIT, watch.child.wait()).await.expect("the watch ends after TERMINATED").unwrap();
    assert_eq!(exit.code(), Some(Exit::Success.code().into()));
    beat.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_tell_a_script_what_happened() {
    let cluster = Restartable::start().await;
    let url = cluster.url();
    let code = |args: &[&str]| {
        let output = std::process::Command::new(binary("hangar")).args(args).output().unwrap();
        (output.status.code(), text(&output.stderr))
    };
    let expect = |args: &[&str], exit: Exit| {
        let (got, stderr) = code(args);
        assert_eq!(got, Some(exit.code().into()), "hangar {args:?} → {exit:?}; stderr: {stderr}");
    };
    let list = ["--controller", url.as_str(), "nodes", "list"];
    let (ok, _) = code(&list);
    assert_eq!(ok, Some(Exit::Success.code().into()));
    expect(&["--controller", &url, "nodes", "get", "nd-nope"], Exit::NotFound);
    expect(&["--controller", &url, "backends", "get", "bk-nope"], Exit::NotFound);
    expect(&["--controller", &url, "nodes", "list", "--kind", "robot"], Exit::Usage);
    expect(&["--controller", &url, "nodes", "list", "--label", "a=1", "--label", "a=2"], Exit::Usage);
    expect(&["--controller", &url, "connect", "doc-1", "--image", "img"], Exit::Unavailable);
    cluster.shutdown().await;
    // Nothing listens there any more.
    expect(&list, Exit::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_the_auth_layer_exits_denied() {
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.toml");
    let secret = "reader-secret-0123456789abcdef";
    std::fs::write(&auth, format!("[[token]]\nname = \"ci-reader\"\nrole = \"reader\"\nsecret = \"{secret}\"\n"))
        .unwrap();
    let cluster =
        hangar_tests::TestCluster::sqlite_with(ControllerConfig { auth_file: Some(auth), ..test_config() }).await;
    let url = cluster.url();
    let run = |token: Option<&str>, args: &[&str]| {
        let mut command = std::process::Command::new(binary("hangar"));
        command.args(["--controller", &url]).args(args).env_remove("HANGAR_TOKEN").env_remove("HANGAR_TOKEN_FILE");
        if let Some(token) = token {
            command.env("HANGAR_TOKEN", token);
        }
        let output = command.output().unwrap();
        (output.status.code(), text(&output.stderr))
    };
    let (code, stderr) = run(None, &["nodes", "list"]);
    assert_eq!(code, Some(Exit::Denied.code().into()), "no token: {stderr}");
    let (code, stderr) = run(Some(secret), &["nodes", "list"]);
    assert_eq!(code, Some(Exit::Success.code().into()), "a reader may list: {stderr}");
    let (code, stderr) = run(Some(secret), &["nodes", "drain", "nd-any"]);
    assert_eq!(code, Some(Exit::Denied.code().into()), "a reader may not drain: {stderr}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_drain_and_undrain_take_a_name_that_only_one_node_has() {
    let cluster = Restartable::start().await;
    let url = cluster.url();
    let now = Utc::now();
    let edge = cluster.store.attach_node(registration("edge-1"), "c", now).await.unwrap();
    // A name is unique within a cluster and kind only.
    let mut elsewhere = registration("twin");
    elsewhere.cluster = "eu-2".into();
    let twin_a = cluster.store.attach_node(registration("twin"), "c", now).await.unwrap();
    let twin_b = cluster.store.attach_node(elsewhere, "c", now).await.unwrap();
    let mut proxy = registration("gw");
    proxy.kind = hangar::domain::NodeKind::Proxy;
    cluster.store.attach_node(proxy, "c", now).await.unwrap();
    let gw_drone = cluster.store.attach_node(registration("gw"), "c", now).await.unwrap();
    let json = |args: &[&str]| {
        let output = hangar(&[&["--controller", url.as_str(), "-o", "json"], args].concat());
        assert!(output.status.success(), "hangar {args:?}: {}", text(&output.stderr));
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let failure = |args: &[&str]| {
        let output = hangar(&[&["--controller", url.as_str()], args].concat());
        (output.status.code(), text(&output.stderr))
    };

    // By name, and by id as before.
    assert_eq!(json(&["nodes", "get", "edge-1"])["id"], edge.id.as_str());
    assert_eq!(json(&["nodes", "get", &edge.id])["name"], "edge-1");
    assert_eq!(json(&["nodes", "drain", "edge-1"])["draining"], true);
    assert_eq!(json(&["nodes", "undrain", "edge-1"])["draining"], false);

    // Two nodes share the name: nothing is guessed, the ids are named.
    let (code, stderr) = failure(&["nodes", "get", "twin"]);
    assert_eq!(code, Some(Exit::Usage.code().into()), "{stderr}");
    assert!(stderr.contains(&twin_a.id) && stderr.contains(&twin_b.id), "{stderr}");
    let (code, stderr) = failure(&["nodes", "drain", "twin"]);
    assert_eq!(code, Some(Exit::Usage.code().into()), "{stderr}");
    assert!(!json(&["nodes", "get", &twin_a.id])["draining"].as_bool().unwrap());

    // A drone and a proxy share the name: only the drone can be drained, so drain means it.
    assert_eq!(json(&["nodes", "drain", "gw"])["id"], gw_drone.id.as_str());
    assert_eq!(failure(&["nodes", "get", "gw"]).0, Some(Exit::Usage.code().into()));

    // Neither an id nor a name.
    let (code, stderr) = failure(&["nodes", "get", "nowhere"]);
    assert_eq!(code, Some(Exit::NotFound.code().into()), "{stderr}");
    assert!(stderr.contains("no node has the id or name \"nowhere\""), "{stderr}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_get_watch_and_terminate_take_a_key_for_its_live_backend_or_its_latest() {
    let cluster = Restartable::start().await;
    let url = cluster.url();
    let mut drone = ManualDrone::attach(&url, drone_hello("d1")).await.unwrap();
    let beat = drone.keep_alive(Duration::from_millis(50));
    let client = HangarClient::connect(&url).await.unwrap();
    async fn place(client: &HangarClient, drone: &mut ManualDrone, name: &str) -> String {
        let mut request = ConnectRequest::key("docs", name, "");
        request.spawn = Some(SpawnSpec::new("img"));
        let id = client.connect_backend(&request).await.unwrap().backend_id;
        let spawn = drone.next_action(WAIT).await;
        drone.ack_action(&spawn.action_id).await;
        id
    }
    let first = place(&client, &mut drone, "doc-1").await;
    // A key whose name starts with the other's: the listing by prefix finds both.
    let other = place(&client, &mut drone, "doc-10").await;
    let exited = v1::BackendStatus {
        state: BackendState::Terminated as i32,
        termination_reason: v1::TerminationReason::Exited as i32,
        exit_code: Some(0),
        ..Default::default()
    };
    drone.event_acked("ev-1", &first, exited, "").await;
    let json = |args: &[&str]| {
        let output = hangar(&[&["--controller", url.as_str(), "-o", "json"], args].concat());
        assert!(output.status.success(), "hangar {args:?}: {}", text(&output.stderr));
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };

    // No live backend of the key: the latest it had.
    assert_eq!(json(&["backends", "get", "docs/doc-1"])["id"], first.as_str());
    let second = place(&client, &mut drone, "doc-1").await;
    assert_ne!(second, first);
    // Its live backend, before the older one that ended; the id still works.
    assert_eq!(json(&["backends", "get", "docs/doc-1"])["id"], second.as_str());
    assert_eq!(json(&["backends", "get", "docs/doc-10"])["id"], other.as_str());
    assert_eq!(json(&["backends", "get", &first])["id"], first.as_str());
    let listed = |prefix: &str| {
        let doc = json(&["backends", "list", "--namespace", "docs", "--key-prefix", prefix]);
        doc["backends"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(listed("doc-1").len(), 3, "both backends of doc-1 and the one of doc-10");
    assert_eq!(listed("doc-10"), std::slice::from_ref(&other));
    let mut watch = Running::spawn(&["--controller", &url, "-o", "json", "backends", "watch", "docs/doc-10"]);
    assert_eq!(watch.json_line().await["state"], "SCHEDULED");
    assert_eq!(json(&["backends", "terminate", "docs/doc-1"])["id"], second.as_str());
    assert_eq!(json(&["backends", "get", &other])["state"], "SCHEDULED", "only the key's backend is asked to end");

    let output = hangar(&["--controller", &url, "backends", "terminate", &first]);
    assert_eq!(
        text(&output.stdout),
        format!("Backend {first} has already ended: EXITED, exit code 0. Nothing to terminate.\n")
    );

    // "doc-1" alone is in the namespace "default", where no backend has it.
    let output = hangar(&["--controller", &url, "backends", "get", "doc-1"]);
    assert_eq!(output.status.code(), Some(Exit::NotFound.code().into()));
    assert!(text(&output.stderr).contains("no backend has the id or key \"doc-1\""), "{}", text(&output.stderr));
    beat.abort();
    cluster.shutdown().await;
}
