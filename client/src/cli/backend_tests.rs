//! Rendering, JSON shape and argument parsing of `hangar connect` and `hangar backends …`.

use super::render;
use super::*;
use crate::{BackendStatusView, BackendView, Connection};
use chrono::{DateTime, TimeZone, Utc};
use clap::{Parser, error::ErrorKind};
use hangar::domain::{BackendFilter, PullPolicy, TerminationReason, duration_to_proto, timestamp_to_proto};
use hangar::error::{reason, status_with_reason};
use hangar::v1;
use tonic::Code;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

/// A status `millis` after the backend was created, as the controller sends it.
fn status(state: v1::BackendState, millis: i64) -> v1::BackendStatus {
    v1::BackendStatus {
        state: state as i32,
        time: Some(timestamp_to_proto(now() - chrono::Duration::minutes(5) + chrono::Duration::milliseconds(millis))),
        ..Default::default()
    }
}

fn view(state: v1::BackendState, millis: i64) -> BackendStatusView {
    BackendStatusView::from_proto(&status(state, millis)).unwrap()
}

fn exited(code: i32) -> v1::BackendStatus {
    v1::BackendStatus {
        termination_kind: v1::TerminationKind::Soft as i32,
        termination_reason: v1::TerminationReason::Exited as i32,
        exit_code: Some(code),
        ..status(v1::BackendState::Terminated, 2100)
    }
}

fn proto_backend(id: &str, name: Option<&str>, status: v1::BackendStatus) -> v1::Backend {
    v1::Backend {
        id: id.into(),
        key: name.map(|name| v1::BackendKey { namespace: "docs".into(), name: name.into(), tag: "v2".into() }),
        status: Some(status),
        drone_id: "nd-7".into(),
        cluster: "default".into(),
        pool: "default".into(),
        labels: [("team".to_string(), "docs".to_string())].into(),
        created_at: Some(timestamp_to_proto(now() - chrono::Duration::minutes(5))),
        fencing_token: 17,
        address: "10.0.0.7:41234".into(),
        spawn_config: Some(v1::SpawnConfig {
            executable: Some(v1::Executable {
                image: "ghcr.io/acme/editor:2".into(),
                command: vec!["serve".into(), "--fast".into()],
                args: vec!["--root".into(), "/srv/my docs".into()],
                env: [("MODE".to_string(), "edit".to_string())].into(),
                pull_policy: v1::PullPolicy::Never as i32,
                container_port: 9000,
                resources: Some(v1::ResourceLimits { cpu_millis: 500, memory_bytes: 256 << 20, pids: 0 }),
            }),
            max_idle: Some(duration_to_proto(std::time::Duration::from_secs(600))),
            static_token: "s3cret".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn backend(id: &str, name: Option<&str>, status: v1::BackendStatus) -> BackendView {
    BackendView::from_proto(&proto_backend(id, name, status)).unwrap()
}

fn connection(state: v1::BackendState) -> Connection {
    Connection::from_proto(&v1::ConnectResponse {
        backend_id: "bk-1".into(),
        spawned: true,
        status: Some(status(state, 0)),
        token: "tok-abc".into(),
        url: "http://127.0.0.1:8080/bk-1/tok-abc/".into(),
        token_expires_at: Some(timestamp_to_proto(now())),
        static_token: String::new(),
        backend: Some(proto_backend("bk-1", Some("doc-1"), status(state, 0))),
    })
    .unwrap()
}

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("hangar").chain(args.iter().copied()))
}

fn connect_args(args: &[&str]) -> ConnectArgs {
    match parse(&[&["connect"], args].concat()).unwrap().command {
        Command::Connect(args) => *args,
        other => panic!("parsed {other:?}"),
    }
}

// ---- rendering ----

#[test]
fn backend_table_has_a_row_per_backend_with_key_state_drone_and_age() {
    let ready = backend("bk-0001", Some("doc-1"), status(v1::BackendState::Ready, 1400));
    let keyless = backend("bk-0002-long-id", None, exited(3));
    let out = render::backends_table(&[ready, keyless], now());
    println!("{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for header in ["KEY", "STATE", "DRONE", "CLUSTER/POOL", "IMAGE", "AGE", "ENDED"] {
        let column = 3 + lines[0].find(&format!("   {header}")).unwrap_or_else(|| panic!("no {header} in {out}"));
        for line in &lines[1..] {
            assert_eq!(line.as_bytes()[column - 1], b' ', "{header} misaligned:\n{out}");
            assert_ne!(line.as_bytes()[column], b' ', "{header} misaligned:\n{out}");
        }
    }
    assert!(lines[1].starts_with("bk-0001           docs/doc-1@v2   READY        nd-7"), "{out}");
    assert!(lines[1].contains("ghcr.io/acme/editor:2   5m    -"), "{out}");
    assert!(lines[2].contains(" -               TERMINATED"), "keyless shows a dash: {out}");
    assert!(lines[2].ends_with("EXITED (SOFT), exit code 3"), "{out}");
}

#[test]
fn empty_backend_listing_names_the_filter() {
    let filter = BackendFilter {
        states: vec![hangar::domain::BackendState::Ready],
        key_namespace: Some("docs".into()),
        ..BackendFilter::default()
    };
    let out = render::backend_list(&[], &filter, OutputFormat::Table, now());
    assert_eq!(
        out,
        "No backends match.\nFilter: state=READY namespace=docs\nList every backend with `hangar backends list`.\n"
    );
    let out = render::backend_list(&[], &BackendFilter::default(), OutputFormat::Table, now());
    assert!(out.contains("hangar connect KEY --image IMAGE"), "{out}");
}

#[test]
fn backend_detail_shows_termination_address_fencing_token_and_spawn_config() {
    let out = render::backend_detail(&backend("bk-0002", Some("doc-1"), exited(3)), now());
    println!("{out}");
    for expected in [
        "ID:            bk-0002\n",
        "Key:           docs/doc-1@v2\n",
        "State:         TERMINATED since 2026-03-01T11:55:02Z (4m57s ago)\n",
        "Termination:   EXITED (SOFT), exit code 3\n",
        "Address:       10.0.0.7:41234\n",
        "Fencing token: 17\n",
        "Labels:        team=docs\n",
        "Spawn config:\n",
        "  Image:        ghcr.io/acme/editor:2\n",
        "  Command:      serve --fast\n",
        "  Args:         --root \"/srv/my docs\"\n",
        "  Env:          MODE=edit\n",
        "  Pull:         Never\n",
        "  Port:         9000\n",
        "  Resources:    cpu 500m, memory 256MiB\n",
        "  Max idle:     10m\n",
        "  Static token: set\n",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in\n{out}");
    }
    assert!(!out.contains("s3cret"), "the static token is not printed");
}

#[test]
fn progress_lines_align_states_and_count_from_the_first_status() {
    let since = view(v1::BackendState::Scheduled, 0).time;
    let lines: String = [
        (v1::BackendState::Scheduled, 0),
        (v1::BackendState::Loading, 300),
        (v1::BackendState::Starting, 900),
        (v1::BackendState::Ready, 1400),
    ]
    .iter()
    .map(|(state, ms)| render::progress_line(&view(*state, *ms), since))
    .collect();
    println!("{lines}");
    assert_eq!(lines, "  SCHEDULED 0.0s\n  LOADING   0.3s\n  STARTING  0.9s\n  READY     1.4s\n");
    let end = render::progress_line(&BackendStatusView::from_proto(&exited(1)).unwrap(), since);
    assert_eq!(end, "  TERMINATED 2.1s  EXITED (SOFT), exit code 1\n");
}

#[test]
fn connect_json_has_backend_id_url_and_state() {
    let out = render::connection(&connection(v1::BackendState::Scheduled), None, OutputFormat::Json, false);
    println!("{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["backend_id"], "bk-1");
    assert_eq!(doc["url"], "http://127.0.0.1:8080/bk-1/tok-abc/");
    assert_eq!(doc["state"], "SCHEDULED");
    assert_eq!(doc["spawned"], true);
    assert_eq!(doc["token"], "tok-abc");
    assert_eq!(doc["token_expires_at"], "2026-03-01T12:00:00Z");
    assert!(doc.get("static_token").is_none(), "absent when not set");
    assert_eq!(doc["backend"]["key"]["name"], "doc-1");
    assert_eq!(doc["backend"]["spawn_config"]["max_idle"], "10m");
}

#[test]
fn connect_table_says_spawned_and_prints_the_url_and_how_to_follow() {
    let out = render::connection(&connection(v1::BackendState::Scheduled), None, OutputFormat::Table, false);
    println!("{out}");
    assert!(
        out.starts_with(
            "Spawned backend bk-1 for docs/doc-1@v2.\nState: SCHEDULED\nURL: http://127.0.0.1:8080/bk-1/tok-abc/\n"
        ),
        "{out}"
    );
    assert!(out.contains("hangar backends watch bk-1"), "{out}");
}

#[test]
fn watch_lines_are_aligned_rows_or_ndjson() {
    let since = view(v1::BackendState::Scheduled, 0).time;
    let line = render::watch_line("bk-1", &view(v1::BackendState::Loading, 300), since, OutputFormat::Table);
    assert_eq!(line, "2026-03-01T11:55:00.300Z  LOADING           +0.3s\n".replace(".300Z", "Z"));
    let end = BackendStatusView::from_proto(&exited(0)).unwrap();
    let json = render::watch_line("bk-1", &end, since, OutputFormat::Json);
    assert!(json.ends_with('\n') && json.lines().count() == 1, "{json}");
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!((doc["backend_id"].as_str(), doc["state"].as_str()), (Some("bk-1"), Some("TERMINATED")));
    assert_eq!((doc["termination_reason"].as_str(), doc["exit_code"].as_i64()), (Some("EXITED"), Some(0)));
}

#[test]
fn backend_list_json_is_one_document_with_a_backends_array() {
    let backends = [backend("bk-1", Some("doc-1"), status(v1::BackendState::Ready, 0))];
    let doc: serde_json::Value =
        serde_json::from_str(&render::backend_list(&backends, &BackendFilter::default(), OutputFormat::Json, now()))
            .unwrap();
    assert_eq!(doc["backends"][0]["id"], "bk-1");
    assert_eq!(doc["backends"][0]["state"], "READY");
    assert_eq!(doc["backends"][0]["status"]["time"], "2026-03-01T11:55:00Z");
}

#[test]
fn errors_carry_the_reason_and_a_next_step() {
    let cases = [
        (Code::Unavailable, reason::NO_DRONE_AVAILABLE, "hangar-drone run"),
        (Code::ResourceExhausted, reason::POOL_FULL, "add drones to the pool"),
        (Code::FailedPrecondition, reason::KEY_TAG_MISMATCH, "another tag"),
        (Code::NotFound, reason::BACKEND_NOT_FOUND, "hangar backends list"),
    ];
    for (code, why, hint) in cases {
        let err = CliError::from(ClientError::from(status_with_reason(code, "no luck", why, &[])));
        let out = render::error(&err, "http://ctl:7070");
        assert!(out.starts_with(&format!("error: no luck ({why})\nhint: ")), "{out}");
        assert!(out.contains(hint), "{out}");
        assert_eq!(out.lines().count(), 2, "{out}");
    }
    let ended = CliError::Terminated {
        id: "bk-9".into(),
        status: BackendStatusView {
            termination_reason: Some(TerminationReason::ImagePullFailed),
            ..view(v1::BackendState::Terminated, 0)
        },
    };
    assert_eq!(
        render::error(&ended, "x"),
        "error: backend bk-9 ended before it was ready: IMAGE_PULL_FAILED\n\
         hint: check the image name and that its drone can pull it (see --pull); see `hangar backends get bk-9`\n"
    );
    assert_eq!(ended.exit_code(), std::process::ExitCode::from(1));
}

#[test]
fn no_drone_available_is_not_retried() {
    let err = ClientError::from(status_with_reason(Code::Unavailable, "full", reason::NO_DRONE_AVAILABLE, &[]));
    assert!(!err.is_retryable());
}

// ---- argument parsing ----

#[test]
fn connect_sends_the_user_and_claims_as_the_tokens_identity() {
    let request =
        connect_args(&["docs/doc-1", "--user", "alice", "--claim", "team=blue", "--claim", "org-id=42"]).to_request();
    let request = request.unwrap();
    assert_eq!(request.user, "alice");
    let claims: Vec<_> = request.auth.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(claims, [("org-id", "42"), ("team", "blue")]);
    let wire = request.to_proto();
    assert_eq!((wire.user.as_str(), wire.auth["team"].as_str()), ("alice", "blue"));
    // Without them, no identity is asserted.
    let plain = connect_args(&["docs/doc-1"]).to_request().unwrap();
    assert_eq!((plain.user.as_str(), plain.auth.len()), ("", 0));
}

#[test]
fn claims_that_cannot_be_headers_are_usage_errors() {
    for (claim, expected) in [
        ("Team=blue", "may contain only lowercase letters, digits and '-'"),
        ("team_id=1", "may contain only lowercase letters, digits and '-'"),
        ("user=mallory", "reserved"),
        ("team", "expected KEY=VALUE"),
        ("team=bl\u{e9}u", "printable ASCII"),
    ] {
        let err = parse(&["connect", "docs/doc-1", "--claim", claim]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation, "{claim}");
        assert!(err.to_string().contains(expected), "{claim}: {err}");
    }
    let err = parse(&["connect", "docs/doc-1", "--user", "al\tice"]).unwrap_err();
    assert!(err.to_string().contains("printable ASCII"), "{err}");
    let twice = connect_args(&["docs/doc-1", "--claim", "team=blue", "--claim", "team=red"]).to_request();
    assert!(twice.unwrap_err().contains("--claim team is given twice"));
}

#[test]
fn connect_builds_the_spawn_config_from_every_flag() {
    let args = connect_args(&[
        "docs/doc-1@v2",
        "--image",
        "editor:2",
        "--env",
        "MODE=edit",
        "--env",
        "URL=http://x/?a=b",
        "--port",
        "9000",
        "--cpu-millis",
        "500",
        "--memory",
        "256MiB",
        "--pids",
        "64",
        "--cluster",
        "eu",
        "--pool",
        "gpu",
        "--label",
        "team=docs",
        "--lifetime",
        "8h",
        "--max-idle",
        "10m",
        "--static-token",
        "T",
        "--pull",
        "if-not-present",
        "--command",
        "python",
        "--",
        "-m",
        "http.server",
        "--bind",
        "0.0.0.0",
    ]);
    let request = args.to_request().unwrap();
    let key = request.key.as_ref().unwrap();
    assert_eq!((key.namespace.as_str(), key.name.as_str(), key.tag.as_str()), ("docs", "doc-1", "v2"));
    let spec = request.spawn.unwrap();
    assert_eq!(spec.env["URL"], "http://x/?a=b", "only the first = splits");
    assert_eq!(spec.command, ["python"]);
    assert_eq!(spec.args, ["-m", "http.server", "--bind", "0.0.0.0"]);
    assert_eq!((spec.container_port, spec.resources.memory_bytes, spec.resources.pids), (Some(9000), 256 << 20, 64));
    assert_eq!(spec.pull_policy, Some(PullPolicy::IfNotPresent));
    assert_eq!(spec.lifetime_limit, Some(std::time::Duration::from_secs(8 * 3600)));
    assert_eq!(spec.max_idle, Some(std::time::Duration::from_secs(600)));
    let proto = spec.to_proto();
    assert_eq!(proto.static_token, "T");
    let executable = proto.executable.unwrap();
    assert_eq!(executable.pull_policy, v1::PullPolicy::IfNotPresent as i32);
    assert_eq!((executable.command.len(), executable.args.len()), (1, 4));
}

#[test]
fn command_takes_exactly_one_value_and_flags_after_it_stay_flags() {
    let args = connect_args(&["k", "--image", "i", "--command", "/nonexistent", "--wait"]);
    assert_eq!(args.command.as_deref(), Some("/nonexistent"));
    assert!(args.wait, "--wait after --command is the flag, not an argument of the command");
    let spec = args.to_request().unwrap().spawn.unwrap();
    assert_eq!((spec.command, spec.args), (vec!["/nonexistent".to_string()], vec![]));

    let err = parse(&["connect", "k", "--image", "i", "--command", "python", "-m"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownArgument, "{err}");
    let err = parse(&["connect", "k", "--image", "i", "--command", "python", "serve"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownArgument, "a second value is not taken: {err}");
}

#[test]
fn args_come_from_repeated_arg_flags_or_after_a_double_dash_but_not_both() {
    let spec = |args: &[&str]| connect_args(args).to_request().unwrap().spawn.unwrap();
    let repeated = spec(&["k", "--image", "i", "--arg", "-m", "--arg", "http.server", "--arg", "two words"]);
    assert_eq!(repeated.args, ["-m", "http.server", "two words"]);
    assert!(repeated.command.is_empty(), "arguments alone keep the image's ENTRYPOINT");

    let trailing = spec(&["k", "--image", "i", "--command", "python", "--wait", "--", "-m", "http.server", "--wait"]);
    assert_eq!(trailing.command, ["python"]);
    assert_eq!(trailing.args, ["-m", "http.server", "--wait"], "after `--` everything is an argument");
    assert!(connect_args(&["k", "--image", "i", "--wait", "--", "--wait"]).wait);

    let keyless = spec(&["--no-key", "--image", "/usr/bin/server", "--", "serve"]);
    assert_eq!(keyless.args, ["serve"]);
    // The README's examples, as written.
    let readme = spec(&["docs/doc-2", "--image", "IMG", "--arg", "--log-level", "--arg", "debug"]);
    assert_eq!(readme.args, ["--log-level", "debug"]);
    let readme = spec(&[
        "--no-key",
        "--image",
        "python:3.12",
        "--port",
        "8000",
        "--command",
        "python",
        "--",
        "-m",
        "http.server",
        "8000",
    ]);
    assert_eq!(
        (readme.command, readme.args),
        (vec!["python".to_string()], vec!["-m".into(), "http.server".into(), "8000".into()])
    );

    let both = parse(&["connect", "k", "--image", "i", "--arg", "a", "--", "b"]).unwrap_err();
    assert_eq!(both.kind(), ErrorKind::ArgumentConflict, "{both}");
    for flags in [&["k", "--command", "p"][..], &["k", "--arg", "a"], &["k", "--", "a"]] {
        let err = connect_args(flags).to_request().unwrap_err();
        assert!(err.contains("needs --image"), "{flags:?}: {err}");
    }
}

#[test]
fn key_forms_fill_namespace_and_tag_from_flags_or_defaults() {
    let key = |args: &[&str]| connect_args(args).to_request().map(|r| r.key.unwrap().to_string());
    assert_eq!(key(&["doc-1"]).unwrap(), "default/doc-1");
    assert_eq!(key(&["doc-1", "--namespace", "docs", "--tag", "v2"]).unwrap(), "docs/doc-1@v2");
    assert_eq!(key(&["docs/doc-1", "--tag", "v2"]).unwrap(), "docs/doc-1@v2");
    let err = key(&["docs/doc-1", "--namespace", "other"]).unwrap_err();
    assert!(err.contains("namespace `docs`"), "{err}");
    let err = key(&["doc-1", "--env", "A=b"]).unwrap_err();
    assert!(err.contains("--env") && err.contains("--image"), "{err}");
    assert!(connect_args(&["doc-1"]).to_request().unwrap().spawn.is_none());
}

#[test]
fn no_key_needs_an_image_and_no_key() {
    let request = connect_args(&["--no-key", "--image", "editor:2"]).to_request().unwrap();
    assert!(request.key.is_none() && !request.is_idempotent());
    assert_eq!(parse(&["connect", "--no-key"]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument);
    assert_eq!(parse(&["connect", "--image", "x"]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument);
    assert_eq!(parse(&["connect", "k", "--no-key", "--image", "x"]).unwrap_err().kind(), ErrorKind::ArgumentConflict);
}

#[test]
fn memory_units_follow_kubernetes() {
    assert_eq!(parse_memory("256MiB").unwrap(), 256 << 20);
    assert_eq!(parse_memory("1.5GiB").unwrap(), 3 << 29);
    assert_eq!(parse_memory("512M").unwrap(), 512_000_000);
    assert_eq!(parse_memory("1gi").unwrap(), 1 << 30);
    assert_eq!(parse_memory("4096").unwrap(), 4096);
    for bad in ["", "lots", "12XB", "0", "-1MiB", "1.2.3G"] {
        assert!(parse_memory(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn bad_values_are_clap_errors_naming_the_flag() {
    let cases: [&[&str]; 8] = [
        &["connect", "k", "--image", "i", "--memory", "lots"],
        &["connect", "k", "--image", "i", "--env", "NOEQUALS"],
        &["connect", "k", "--image", "i", "--env", "PORT=1"],
        &["connect", "k", "--image", "i", "--max-idle", "soon"],
        &["connect", "k", "--image", "i", "--lifetime", "0s"],
        &["connect", "k", "--image", "i", "--port", "0"],
        &["connect", "k", "--image", "i", "--pull", "sometimes"],
        &["connect", "a/b/c", "--image", "i"],
    ];
    for args in cases {
        let err = parse(args).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue), "{args:?}: {err}");
    }
    assert_eq!(parse(&["connect", "k", "--timeout", "1m"]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument);
    assert!(parse(&["connect", "k", "--wait", "--timeout", "30s"]).is_ok());
}

#[test]
fn backends_list_states_parse_in_any_case_and_comma_separated() {
    let cli = parse(&["backends", "list", "--state", "ready,hard-terminating", "--state", "LOADING"]).unwrap();
    let Command::Backends(BackendsCommand::List(args)) = cli.command else { panic!() };
    use hangar::domain::BackendState::*;
    assert_eq!(args.state, [Ready, HardTerminating, Loading]);
    assert!(parse(&["backends", "list", "--state", "running"]).is_err());
    let cli = parse(&["backends", "terminate", "bk-1", "--hard", "-o", "json"]).unwrap();
    assert!(matches!(
        cli.command,
        Command::Backends(BackendsCommand::Terminate(BackendsTerminateArgs { hard: true, .. }))
    ));
}

#[test]
fn every_backend_command_has_examples_in_its_help() {
    for path in [
        &["connect"][..],
        &["backends", "list"],
        &["backends", "get"],
        &["backends", "watch"],
        &["backends", "terminate"],
    ] {
        let err = parse(&[path, &["--help"]].concat()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DisplayHelp);
        assert!(err.to_string().contains("Examples:"), "{path:?}");
    }
}

// ---- status messages ----

fn pull_failed() -> v1::BackendStatus {
    v1::BackendStatus {
        termination_reason: v1::TerminationReason::ImagePullFailed as i32,
        message: "image hangar-test-backend:dev not found: not present locally; pull failed: no such host".into(),
        ..status(v1::BackendState::Terminated, 900)
    }
}

#[test]
fn a_failed_start_shows_its_message_wherever_the_termination_is_shown() {
    let ended = BackendStatusView::from_proto(&pull_failed()).unwrap();
    let since = view(v1::BackendState::Scheduled, 0).time;
    assert_eq!(
        render::progress_line(&ended, since),
        "  TERMINATED 0.9s  IMAGE_PULL_FAILED: image hangar-test-backend:dev not found: not present locally; \
         pull failed: no such host\n"
    );
    let err = CliError::Terminated { id: "bk-9".into(), status: ended.clone() };
    let out = render::error(&err, "x");
    assert!(
        out.starts_with(
            "error: backend bk-9 ended before it was ready: IMAGE_PULL_FAILED: image hangar-test-backend:dev not \
             found: not present locally; pull failed: no such host\nhint: "
        ),
        "{out}"
    );
    let watch = render::watch_line("bk-9", &ended, since, OutputFormat::Table);
    assert!(
        watch.trim_end().ends_with(
            "IMAGE_PULL_FAILED: image hangar-test-backend:dev not found: not present locally; pull failed: no such host"
        ),
        "{watch}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&render::watch_line("bk-9", &ended, since, OutputFormat::Json)).unwrap();
    assert_eq!(json["message"], ended.message);

    let failed = backend("bk-9", Some("doc-1"), pull_failed());
    let detail = render::backend_detail(&failed, now());
    assert!(detail.contains("Termination:   IMAGE_PULL_FAILED: image hangar-test-backend:dev not found"), "{detail}");
    let get: serde_json::Value = serde_json::from_str(&render::backend(&failed, OutputFormat::Json, now())).unwrap();
    assert_eq!(get["status"]["message"], ended.message);
    let table = render::backends_table(&[failed], now());
    assert!(table.lines().nth(1).unwrap().ends_with("IMAGE_PULL_FAILED"), "the table keeps to the reason: {table}");
}

#[test]
fn a_live_status_with_a_message_shows_it_and_one_without_shows_nothing_more() {
    let terminating = v1::BackendStatus {
        termination_kind: v1::TerminationKind::Soft as i32,
        message: "did not answer HTTP on 127.0.0.1:4000 within the startup timeout of 1m".into(),
        ..status(v1::BackendState::Terminating, 60_000)
    };
    let detail = render::backend_detail(&backend("bk-3", None, terminating.clone()), now());
    assert!(detail.contains("Message:       did not answer HTTP on 127.0.0.1:4000"), "{detail}");
    let since = view(v1::BackendState::Scheduled, 0).time;
    let line = render::progress_line(&BackendStatusView::from_proto(&terminating).unwrap(), since);
    assert_eq!(line, "  TERMINATING 1m  did not answer HTTP on 127.0.0.1:4000 within the startup timeout of 1m\n");
    let ready = render::backend_detail(&backend("bk-4", None, status(v1::BackendState::Ready, 0)), now());
    assert!(!ready.contains("Message:"), "{ready}");
    let json = render::watch_line("bk-4", &view(v1::BackendState::Ready, 0), since, OutputFormat::Json);
    assert!(!json.contains("message"), "an empty message is left out of JSON: {json}");
}

#[test]
fn backends_watch_without_an_id_takes_filters_and_prints_rows_and_ndjson() {
    let cli = parse(&[
        "backends",
        "watch",
        "--namespace",
        "docs",
        "--state",
        "ready,waiting",
        "--label",
        "team=blue",
        "--key-prefix",
        "doc-",
        "--pool",
        "gpu",
    ])
    .unwrap();
    let Command::Backends(BackendsCommand::Watch(args)) = cli.command else { panic!("not backends watch") };
    assert!(args.id.is_none() && args.has_filter());
    let filter = args.to_filter().unwrap();
    assert_eq!(filter.key_namespace.as_deref(), Some("docs"));
    assert_eq!(filter.key_prefix.as_deref(), Some("doc-"));
    assert_eq!(filter.pool.as_deref(), Some("gpu"));
    assert_eq!(filter.labels["team"], "blue");
    assert_eq!(filter.states.len(), 2);
    assert!(parse(&["backends", "watch", "bk-1", "--pool", "gpu"]).is_err(), "a filter conflicts with an id");

    let b = backend("bk-1", Some("doc-1"), status(v1::BackendState::Ready, 0));
    let at = chrono::NaiveTime::from_hms_opt(12, 0, 0).unwrap();
    let mut table = render::BackendWatchPrinter::new(OutputFormat::Table);
    assert_eq!(table.event(&crate::WatchEvent::Init, at), "", "the first snapshot has no marker");
    let row = table.event(&crate::WatchEvent::Removed(b.clone(), 42), at);
    assert!(row.starts_with("12:00:00  REMOVED   bk-1"), "{row}");
    assert!(row.contains("doc-1") && row.contains("READY") && row.ends_with("rev 42\n"), "{row}");
    assert_eq!(
        table.event(&crate::WatchEvent::InitDone { revision: 9 }, at),
        "-- snapshot at revision 9; watching --\n"
    );
    let mut json = render::BackendWatchPrinter::new(OutputFormat::Json);
    let line: serde_json::Value = serde_json::from_str(&json.event(&crate::WatchEvent::Modified(b, 7), at)).unwrap();
    assert_eq!((line["type"].as_str(), line["revision"].as_u64()), (Some("MODIFIED"), Some(7)));
    assert_eq!(line["backend"]["id"], "bk-1");
}
