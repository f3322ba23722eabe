//! Rendering, JSON shape, error messages and argument parsing of the CLI.

use super::render::{self, compact_duration, human_bytes, relative_age};
use super::*;
use crate::{NodeList, NodeWatchEvent, Reconnect, Resume};
use chrono::{DateTime, TimeZone, Utc};
use clap::{CommandFactory, Parser, error::ErrorKind};
use hangar::domain::{Node, NodeFilter, NodeKind, NodeState, timestamp_to_proto};
use hangar::error::{invalid_argument, reason, status_with_reason};
use hangar::v1;
use tonic::{Code, Status};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

const GIB: u64 = 1 << 30;

/// A node as the controller would send it, converted like the SDK does (so the test follows
/// the wire format rather than the struct's field list).
fn node(id: &str, name: &str, kind: v1::NodeKind, state: v1::NodeState, heartbeat_secs_ago: i64) -> Node {
    let proto = v1::Node {
        id: id.into(),
        name: name.into(),
        kind: kind as i32,
        cluster: "default".into(),
        pool: "default".into(),
        state: state as i32,
        version: "0.1.0".into(),
        controller_id: "ctl-1".into(),
        registered_at: Some(timestamp_to_proto(now() - chrono::Duration::hours(3))),
        last_heartbeat_at: Some(timestamp_to_proto(now() - chrono::Duration::seconds(heartbeat_secs_ago))),
        resources: Some(v1::NodeResources {
            cpu_cores: 8,
            cpu_used_millis: 1250,
            memory_total_bytes: 16 * GIB,
            memory_used_bytes: 3 * GIB / 2,
        }),
        backend_count: 2,
        backend_capacity: 10,
        revision: 42,
        ..Default::default()
    };
    Node::try_from(&proto).unwrap()
}

fn drone(id: &str, name: &str, heartbeat_secs_ago: i64) -> Node {
    node(id, name, v1::NodeKind::Drone, v1::NodeState::Ready, heartbeat_secs_ago)
}

fn listing(nodes: Vec<Node>) -> NodeList {
    NodeList { revision: 1234, nodes }
}

// ---- tables ----

#[test]
fn node_table_aligns_every_column_to_its_widest_cell() {
    let mut long = drone("nd-0002", "a-much-longer-drone-name", 75);
    long.state = NodeState::Draining;
    let proxy = node("nd-0003", "px", v1::NodeKind::Proxy, v1::NodeState::Ready, 3);
    let out = render::nodes_table(&[drone("nd-0001", "d1", 3), long, proxy], now());
    println!("{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("ID "), "{out}");
    // Each header starts at the same character offset as its cells in every row.
    for header in ["NAME", "KIND", "STATE", "CLUSTER", "POOL", "BACKENDS", "CPU", "MEMORY", "LAST HEARTBEAT", "VERSION"]
    {
        let column = lines[0].find(header).unwrap_or_else(|| panic!("no {header} in {out}"));
        for line in &lines[1..] {
            assert!(column == 0 || line.as_bytes()[column - 1] == b' ', "{header} misaligned:\n{out}");
            assert_ne!(line.as_bytes()[column], b' ', "{header} misaligned:\n{out}");
        }
    }
    assert!(lines[2].contains("a-much-longer-drone-name   DRONE   DRAINING"), "{out}");
    assert!(lines[1].contains("2/10       1.25/8   1.5GiB/16.0GiB   3s ago"), "{out}");
    assert!(lines[2].contains("1m15s ago"), "{out}");
    assert!(!out.lines().any(|l| l.ends_with(' ')), "no trailing spaces:\n{out}");
}

#[test]
fn proxies_show_no_backends_and_a_node_without_heartbeat_shows_dashes() {
    let proxy = node("nd-px", "px", v1::NodeKind::Proxy, v1::NodeState::Ready, 3);
    let fresh = Node::try_from(&v1::Node {
        id: "nd-new".into(),
        name: "new".into(),
        kind: v1::NodeKind::Drone as i32,
        state: v1::NodeState::Unhealthy as i32,
        ..Default::default()
    })
    .unwrap();
    let out = render::nodes_table(&[proxy, fresh], now());
    let proxy_row = out.lines().nth(1).unwrap();
    assert!(proxy_row.contains("PROXY") && proxy_row.contains(" -   "), "{out}");
    let fresh_row = out.lines().nth(2).unwrap();
    assert!(fresh_row.contains("never"), "{out}");
    assert!(fresh_row.ends_with('-'), "empty version shows a dash: {out}");
}

#[test]
fn empty_listing_says_no_nodes_match_and_names_the_filter() {
    let filter = NodeFilter {
        kinds: vec![NodeKind::Drone],
        states: vec![NodeState::Ready, NodeState::Draining],
        cluster: Some("eu-1".into()),
        labels: [("zone".to_string(), "a".to_string())].into(),
        ..NodeFilter::default()
    };
    let out = render::node_list(&listing(vec![]), &filter, OutputFormat::Table, now());
    assert_eq!(
        out,
        "No nodes match.\nFilter: kind=DRONE state=READY,DRAINING cluster=eu-1 label zone=a\n\
         List every node with `hangar nodes list`.\n"
    );
}

#[test]
fn empty_listing_without_a_filter_says_how_to_start_a_drone() {
    let out = render::node_list(&listing(vec![]), &NodeFilter::default(), OutputFormat::Table, now());
    assert!(out.starts_with("No nodes match.\n"), "{out}");
    assert!(out.contains("hangar-server dev"), "{out}");
}

#[test]
fn memory_is_shown_in_binary_units() {
    assert_eq!(human_bytes(0), "0B");
    assert_eq!(human_bytes(1023), "1023B");
    assert_eq!(human_bytes(1536), "1.5KiB");
    assert_eq!(human_bytes(512 << 20), "512MiB");
    assert_eq!(human_bytes(3 * GIB / 2), "1.5GiB");
    assert_eq!(human_bytes(16 * GIB), "16.0GiB");
    assert_eq!(human_bytes(2 << 40), "2.0TiB");
    assert_eq!(human_bytes(u64::MAX), "16.0EiB");
}

#[test]
fn heartbeat_ages_are_relative_to_now() {
    let ago = |s: i64| relative_age(now() - chrono::Duration::seconds(s), now());
    assert_eq!(ago(0), "just now");
    assert_eq!(ago(3), "3s ago");
    assert_eq!(ago(59), "59s ago");
    assert_eq!(ago(60), "1m ago");
    assert_eq!(ago(252), "4m12s ago");
    assert_eq!(ago(37 * 60 + 5), "37m ago");
    assert_eq!(ago(5 * 3600 + 180), "5h3m ago");
    assert_eq!(ago(14 * 3600), "14h ago");
    assert_eq!(ago(3 * 86400 + 5), "3d ago");
    assert_eq!(ago(-600), "in 10m", "a future time (clock skew, deadlines)");
    assert_eq!(relative_age(DateTime::<Utc>::UNIX_EPOCH, now()), "never");
    assert_eq!(compact_duration(7200), "2h");
}

#[test]
fn a_drained_node_that_went_offline_shows_it_will_come_back_draining() {
    let mut n = node("nd-0001", "d1", v1::NodeKind::Drone, v1::NodeState::Offline, 40);
    n.draining = true;
    let table = render::nodes_table(std::slice::from_ref(&n), now());
    assert!(table.lines().nth(1).unwrap().contains("OFFLINE,DRAINING"), "{table}");
    let detail = render::node_detail(&n, now());
    assert!(detail.contains("State:          OFFLINE,DRAINING\n"), "{detail}");
    assert!(detail.contains("Draining:       yes"), "{detail}");
}

// ---- nodes watch ----

fn at() -> chrono::NaiveTime {
    chrono::NaiveTime::from_hms_opt(15, 4, 5).unwrap()
}

fn watch_sequence() -> Vec<NodeWatchEvent> {
    let id = "0193a1b2-0000-7000-8000-000000000001";
    let mut drained = drone(id, "dev-drone", 3);
    drained.state = NodeState::Draining;
    let mut gone = drone("0193a1b2-0000-7000-8000-000000000002", "a-much-longer-drone-name", 3);
    gone.state = NodeState::Offline;
    gone.draining = true;
    vec![
        NodeWatchEvent::Init,
        NodeWatchEvent::InitApply(drone(id, "dev-drone", 3)),
        NodeWatchEvent::InitDone { revision: 12 },
        NodeWatchEvent::Modified(drained, 13),
        NodeWatchEvent::Removed(gone, 14),
        NodeWatchEvent::Bookmark(20),
        NodeWatchEvent::Init,
        NodeWatchEvent::Added(node("nd-px", "px", v1::NodeKind::Proxy, v1::NodeState::Ready, 1), 21),
    ]
}

#[test]
fn watch_table_prints_one_aligned_line_per_event_and_marks_the_snapshot() {
    let mut printer = render::WatchPrinter::new(OutputFormat::Table);
    let out: String = watch_sequence().iter().map(|e| printer.event(e, at())).collect();
    println!("{out}");
    assert_eq!(
        out,
        "\
15:04:05  ADDED     0193a1b2-0000-7000-8000-000000000001  dev-drone     DRONE  READY      rev 42
-- snapshot at revision 12; watching --
15:04:05  MODIFIED  0193a1b2-0000-7000-8000-000000000001  dev-drone     DRONE  DRAINING   rev 13
15:04:05  REMOVED   0193a1b2-0000-7000-8000-000000000002  a-much-longer-drone-name  DRONE  OFFLINE,DRAINING  rev 14
15:04:05  BOOKMARK  rev 20
-- could not resume; listing again from scratch --
15:04:05  ADDED     nd-px                                 px                        PROXY  READY             rev 21
"
    );
    let reconnect = NodeWatchEvent::Reconnecting(Reconnect {
        resume: Resume::Relist,
        controller: "http://ctl:7070".into(),
        delay: std::time::Duration::from_millis(5),
        cause: "x".into(),
    });
    assert_eq!(printer.event(&reconnect, at()), "", "reconnects go to stderr");
}

#[test]
fn watch_json_is_one_object_per_line_with_the_wire_event_types() {
    let mut printer = render::WatchPrinter::new(OutputFormat::Json);
    let out: String = watch_sequence().iter().map(|e| printer.event(e, at())).collect();
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    println!("{out}");
    assert_eq!(lines.len(), 8, "{out}");
    assert_eq!(lines[0], serde_json::json!({"type": "SNAPSHOT_START"}));
    assert_eq!(
        (&lines[1]["type"], &lines[1]["revision"], &lines[1]["node"]["name"]),
        (&"ADDED".into(), &42.into(), &"dev-drone".into())
    );
    assert_eq!(lines[2], serde_json::json!({"type": "SNAPSHOT_END", "revision": 12}));
    assert_eq!(
        (&lines[3]["type"], &lines[3]["revision"], &lines[3]["node"]["state"]),
        (&"MODIFIED".into(), &13.into(), &"DRAINING".into())
    );
    assert_eq!((&lines[4]["type"], &lines[4]["node"]["draining"]), (&"REMOVED".into(), &true.into()));
    assert_eq!(lines[5], serde_json::json!({"type": "BOOKMARK", "revision": 20}));
    assert_eq!(lines[6], serde_json::json!({"type": "SNAPSHOT_START"}));
    assert_eq!((&lines[7]["type"], &lines[7]["node"]["kind"]), (&"ADDED".into(), &"PROXY".into()));
    // The node object is the same as `nodes get -o json` prints.
    let node: Node = serde_json::from_value(lines[7]["node"].clone()).unwrap();
    assert_eq!(node.id, "nd-px");
}

#[test]
fn watch_reconnects_are_reported_with_where_they_resume() {
    let resume = Reconnect {
        resume: Resume::FromRevision(12),
        controller: "http://ctl-b:7070".into(),
        delay: std::time::Duration::from_millis(180),
        cause: "controller unavailable: shutting down (SHUTTING_DOWN)".into(),
    };
    assert_eq!(
        render::watch_reconnect(&resume),
        "reconnecting from revision 12 to http://ctl-b:7070 in 180ms \
         (stream ended: controller unavailable: shutting down (SHUTTING_DOWN))\n"
    );
    let relist = Reconnect { resume: Resume::Relist, delay: std::time::Duration::from_millis(2500), ..resume };
    assert!(
        render::watch_reconnect(&relist).starts_with("listing again from scratch at http://ctl-b:7070 in 2.5s ("),
        "{}",
        render::watch_reconnect(&relist)
    );
}

#[test]
fn watch_takes_the_list_filters_and_a_bookmark_interval() {
    let cli = parse(&["nodes", "watch", "--kind", "drone", "--state", "ready,draining", "--bookmark-interval", "30s"])
        .unwrap();
    let Command::Nodes(NodesCommand::Watch(args)) = cli.command else { panic!("not watch") };
    assert_eq!(args.bookmark_interval, Some(std::time::Duration::from_secs(30)));
    let filter = args.filter.to_filter().unwrap();
    assert_eq!(filter.states, [NodeState::Ready, NodeState::Draining]);
    let err = parse(&["nodes", "watch", "--bookmark-interval", "0s"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueValidation);
}

// ---- detail views ----

#[test]
fn node_detail_lists_every_field_with_labels() {
    let mut n = drone("nd-0001", "d1", 3);
    n.labels = [("zone".to_string(), "a".to_string()), ("gpu".to_string(), "none".to_string())].into();
    n.drain_deadline = Some(now() + chrono::Duration::minutes(10));
    let out = render::node(&n, OutputFormat::Table, now());
    println!("{out}");
    for expected in [
        "ID:             nd-0001\n",
        "Name:           d1\n",
        "Kind:           DRONE\n",
        "State:          READY\n",
        "Draining:       no\n",
        "Labels:         gpu=none, zone=a\n",
        "Controller:     ctl-1\n",
        "Registered:     2026-03-01T09:00:00Z (3h ago)\n",
        "Last heartbeat: 2026-03-01T11:59:57Z (3s ago)\n",
        "Backends:       2/10\n",
        "CPU:            1.25/8 cores\n",
        "Memory:         1.5GiB/16.0GiB\n",
        "Drain deadline: 2026-03-01T12:10:00Z (in 10m)\n",
        "Revision:       42\n",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in\n{out}");
    }
}

#[test]
fn node_detail_says_none_for_no_labels_and_omits_an_unset_deadline() {
    let out = render::node_detail(&drone("nd-0001", "d1", 3), now());
    assert!(out.contains("Labels:         <none>\n"), "{out}");
    assert!(!out.contains("Drain deadline"), "{out}");
}

#[test]
fn drain_output_explains_the_deadline() {
    let mut n = drone("nd-0001", "d1", 3);
    n.state = NodeState::Draining;
    n.drain_deadline = Some(now() + chrono::Duration::minutes(10));
    let out = render::drained(&n, OutputFormat::Table, now());
    assert_eq!(
        out,
        "Drained node nd-0001 (d1): no new backends will be placed on it. State: DRAINING.\n\
         Backends still running at 2026-03-01T12:10:00Z (in 10m) will be soft-terminated.\n\
         Undo with `hangar nodes undrain nd-0001`.\n"
    );
}

#[test]
fn undrain_output_says_when_the_drone_takes_backends_again() {
    let ready = drone("nd-0001", "d1", 3);
    assert_eq!(
        render::undrained(&ready, OutputFormat::Table),
        "Undrained node nd-0001 (d1): new backends may be placed on it again. State: READY.\n"
    );
    let mut away = drone("nd-0001", "d1", 3);
    away.state = NodeState::Offline;
    let out = render::undrained(&away, OutputFormat::Table);
    assert!(out.ends_with("once it is attached and healthy again (READY); now it is OFFLINE.\n"), "{out}");
    let doc: serde_json::Value = serde_json::from_str(&render::undrained(&ready, OutputFormat::Json)).unwrap();
    assert_eq!((&doc["id"], &doc["state"], &doc["draining"]), (&"nd-0001".into(), &"READY".into(), &false.into()));
}

#[test]
fn undrain_takes_a_node_id() {
    let cli = parse(&["nodes", "undrain", "nd-1"]).unwrap();
    let Command::Nodes(NodesCommand::Undrain(args)) = &cli.command else { panic!("{cli:?}") };
    assert_eq!(args.id, "nd-1");
    assert_eq!(parse(&["nodes", "undrain"]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument);
}

#[test]
fn no_drone_available_with_draining_drones_suggests_undrain() {
    let census = |draining: &str| {
        [("cluster", "eu"), ("pool", "gpu"), ("ready", "0"), ("draining", draining), ("unhealthy", "0")]
            .map(|(k, v)| (k, v.to_string()))
    };
    let status = status_with_reason(Code::Unavailable, "no drone is ready", reason::NO_DRONE_AVAILABLE, &census("1"));
    let out = rendered(status);
    assert_eq!(
        out.lines().nth(1),
        Some(
            "hint: 1 drone of the pool is draining: find it with `hangar nodes list --kind drone --state draining \
             --cluster eu --pool gpu`, then `hangar nodes undrain NODE_ID` lets it take backends again"
        ),
        "{out}"
    );
    let status = status_with_reason(Code::ResourceExhausted, "all full", reason::POOL_FULL, &census("2"));
    let out = rendered(status);
    assert!(
        out.contains("every drone of the pool is full") && out.contains("2 drones of the pool are draining"),
        "{out}"
    );
    // No drone draining: the hint is about starting drones.
    let status = status_with_reason(Code::Unavailable, "no drone is ready", reason::NO_DRONE_AVAILABLE, &census("0"));
    let out = rendered(status);
    assert!(out.contains("hangar-drone run") && !out.contains("undrain"), "{out}");
}

// ---- JSON ----

#[test]
fn list_json_is_one_document_with_the_revision_and_the_nodes() {
    let out = render::node_list(
        &listing(vec![drone("nd-0001", "d1", 3), drone("nd-0002", "d2", 4)]),
        &NodeFilter::default(),
        OutputFormat::Json,
        now(),
    );
    println!("{out}");
    // Exactly one document: a streaming parse finds one value and then the end.
    let mut values = serde_json::Deserializer::from_str(&out).into_iter::<serde_json::Value>();
    let doc = values.next().unwrap().unwrap();
    assert!(values.next().is_none(), "more than one JSON document:\n{out}");

    let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["nodes", "revision"]);
    assert_eq!(doc["revision"], 1234);
    let nodes = doc["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    let first = &nodes[0];
    assert_eq!(first["id"], "nd-0001");
    assert_eq!(first["kind"], "DRONE");
    assert_eq!(first["state"], "READY");
    assert_eq!(first["last_heartbeat_at"], "2026-03-01T11:59:57Z");
    assert_eq!(first["resources"]["memory_total_bytes"], 16 * GIB);
    assert_eq!(first["backend_capacity"], 10);
    assert!(first["drain_deadline"].is_null());
    for key in first.as_object().unwrap().keys() {
        assert_eq!(*key, key.to_lowercase(), "keys are snake_case: {key}");
    }
}

#[test]
fn empty_list_json_is_still_a_document_with_an_empty_array() {
    let out = render::node_list(&listing(vec![]), &NodeFilter::default(), OutputFormat::Json, now());
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc, serde_json::json!({"revision": 1234, "nodes": []}));
}

#[test]
fn get_and_drain_json_are_the_node_object_and_parse_back() {
    let mut n = drone("nd-0001", "d1", 3);
    n.drain_deadline = Some(now() + chrono::Duration::minutes(10));
    for out in [render::node(&n, OutputFormat::Json, now()), render::drained(&n, OutputFormat::Json, now())] {
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["id"], "nd-0001");
        assert_eq!(doc["drain_deadline"], "2026-03-01T12:10:00Z");
        let back: Node = serde_json::from_str(&out).unwrap();
        assert_eq!(back, n);
    }
}

// ---- errors ----

fn rendered(status: Status) -> String {
    render::error(&CliError::Client(status.into()), "http://127.0.0.1:7070")
}

#[test]
fn node_not_found_names_the_reason_and_suggests_listing_nodes() {
    let status = status_with_reason(Code::NotFound, "no node nd-9", reason::NODE_NOT_FOUND, &[("id", "nd-9".into())]);
    assert_eq!(rendered(status), "error: no node nd-9 (NODE_NOT_FOUND)\nhint: list nodes with `hangar nodes list`\n");
}

#[test]
fn invalid_argument_lists_every_field_violation_on_one_line() {
    let status = invalid_argument(vec![
        ("page_size".into(), "must be at most 1000".into()),
        ("filter.kinds[0]".into(), "unknown node kind 7".into()),
    ]);
    let err = ClientError::from(status.clone());
    match &err {
        ClientError::InvalidArgument { violations, .. } => assert_eq!(violations.len(), 2),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let out = rendered(status);
    let first = out.lines().next().unwrap();
    assert_eq!(first, "error: invalid argument: page_size: must be at most 1000; filter.kinds[0]: unknown node kind 7");
    assert!(out.lines().nth(1).unwrap().starts_with("hint: "), "{out}");
}

#[test]
fn an_unreachable_controller_suggests_starting_one() {
    let err = ClientError::Connect {
        address: "http://127.0.0.1:7070".into(),
        detail: "transport error: tcp connect error: Connection refused (os error 111)".into(),
    };
    let out = render::error(&CliError::Client(err), "http://127.0.0.1:7070");
    println!("{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("error: cannot reach the controller at http://127.0.0.1:7070: "), "{out}");
    assert!(lines[1].contains("is the controller running") && lines[1].contains("hangar-server dev"), "{out}");
}

#[test]
fn draining_a_proxy_suggests_listing_drones() {
    let status = status_with_reason(Code::FailedPrecondition, "nd-3 is a proxy", reason::NODE_NOT_DRONE, &[]);
    let out = rendered(status);
    assert!(out.starts_with("error: nd-3 is a proxy (NODE_NOT_DRONE)\n"), "{out}");
    assert!(out.contains("hangar nodes list --kind drone"), "{out}");
}

#[test]
fn a_bad_page_token_names_its_reason_and_suggests_listing_again() {
    let status = hangar::error::invalid_argument_with_reason(
        vec![("page_token".into(), "malformed".into())],
        reason::INVALID_PAGE_TOKEN,
    );
    assert_eq!(
        rendered(status),
        "error: invalid argument: page_token: malformed (INVALID_PAGE_TOKEN)\nhint: list again from the first page\n"
    );
}

#[test]
fn a_controller_shutting_down_is_unavailable_with_its_reason() {
    let status = status_with_reason(Code::Unavailable, "shutting down", reason::SHUTTING_DOWN, &[]);
    let err = ClientError::from(status.clone());
    assert!(err.is_retryable());
    assert_eq!(err.reason().as_deref(), Some(reason::SHUTTING_DOWN));
    assert!(rendered(status).contains("shutting down; try again"));
}

#[test]
fn compacted_and_too_slow_watch_errors_carry_their_revisions() {
    let compacted = status_with_reason(
        Code::OutOfRange,
        "revision 5 is compacted",
        reason::REVISION_COMPACTED,
        &[("oldest_revision", "900".into())],
    );
    match ClientError::from(compacted) {
        ClientError::OutOfRange { oldest_revision, reason, .. } => {
            assert_eq!(oldest_revision, Some(900));
            assert_eq!(reason, "REVISION_COMPACTED");
        }
        other => panic!("expected OutOfRange, got {other:?}"),
    }
    let slow = status_with_reason(
        Code::ResourceExhausted,
        "watcher too slow",
        reason::WATCH_TOO_SLOW,
        &[("last_revision", "77".into())],
    );
    assert!(matches!(ClientError::from(slow), ClientError::ResourceExhausted { last_revision: Some(77), .. }));
}

#[test]
fn other_statuses_keep_their_code_and_message_on_one_line() {
    let out = rendered(Status::internal("database said:\nno"));
    assert_eq!(out, "error: database said: no (Internal)\n");
    let out = rendered(Status::deadline_exceeded("timeout"));
    assert!(out.contains("hint: the controller did not answer in time"), "{out}");
}

#[test]
fn api_errors_and_usage_errors_exit_with_their_documented_codes() {
    let not_found = CliError::Client(Status::not_found("x").into());
    assert_eq!(not_found.exit_code(), ExitCode::from(3));
    let refused = CliError::Client(Status::failed_precondition("x").into());
    assert_eq!(refused.exit_code(), ExitCode::from(1));
    assert_eq!(CliError::Usage("x".into()).exit_code(), ExitCode::from(2));
}

// ---- arguments ----

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("hangar").chain(args.iter().copied()))
}

#[test]
fn the_command_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn list_filters_parse_case_insensitively_and_comma_separated() {
    let cli = parse(&[
        "nodes",
        "list",
        "--kind",
        "DRONE",
        "--state",
        "ready,Draining",
        "--state",
        "offline",
        "--cluster",
        "eu-1",
        "--label",
        "zone=a",
        "--label",
        "empty=",
        "-o",
        "json",
    ])
    .unwrap();
    assert_eq!(cli.output, OutputFormat::Json);
    assert_eq!(cli.controller, "http://127.0.0.1:7070");
    let Command::Nodes(NodesCommand::List(args)) = &cli.command else { panic!("{cli:?}") };
    let filter = args.filter.to_filter().unwrap();
    assert_eq!(filter.kinds, [NodeKind::Drone]);
    assert_eq!(filter.states, [NodeState::Ready, NodeState::Draining, NodeState::Offline]);
    assert_eq!(filter.cluster.as_deref(), Some("eu-1"));
    assert_eq!(filter.pool, None);
    assert_eq!(filter.labels["zone"], "a");
    assert_eq!(filter.labels["empty"], "");
}

#[test]
fn global_flags_work_before_and_after_the_subcommand() {
    let cli = parse(&["--controller", "http://ctl:7070", "nodes", "get", "nd-1", "--output", "json"]).unwrap();
    assert_eq!(cli.controller, "http://ctl:7070");
    assert_eq!(cli.output, OutputFormat::Json);
    let cli = parse(&["nodes", "get", "nd-1", "--controller", "http://other:7070"]).unwrap();
    assert_eq!(cli.controller, "http://other:7070");
}

#[test]
fn a_label_without_equals_sign_is_a_usage_error() {
    let err = parse(&["nodes", "list", "--label", "zone"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueValidation);
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("expected KEY=VALUE, got `zone`"), "{err}");
    let err = parse(&["nodes", "list", "--label", "=a"]).unwrap_err();
    assert!(err.to_string().contains("label key is empty"), "{err}");
}

#[test]
fn the_same_label_with_two_values_is_a_usage_error() {
    let cli = parse(&["nodes", "list", "--label", "zone=a", "--label", "zone=b"]).unwrap();
    let Command::Nodes(NodesCommand::List(args)) = &cli.command else { panic!("{cli:?}") };
    let err = args.filter.to_filter().unwrap_err();
    assert!(err.contains("zone=a and zone=b"), "{err}");
    // Repeating the same pair is harmless.
    let cli = parse(&["nodes", "list", "--label", "zone=a", "--label", "zone=a"]).unwrap();
    let Command::Nodes(NodesCommand::List(args)) = &cli.command else { panic!("{cli:?}") };
    assert_eq!(args.filter.to_filter().unwrap().labels.len(), 1);
}

#[test]
fn unknown_kinds_and_states_name_the_choices() {
    let err = parse(&["nodes", "list", "--state", "zombie"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidValue);
    let text = err.to_string();
    assert!(text.contains("ready") && text.contains("offline"), "{text}");
    let err = parse(&["nodes", "list", "-o", "yaml"]).unwrap_err();
    assert!(err.to_string().contains("table") && err.to_string().contains("json"), "{err}");
}

#[test]
fn drain_deadlines_are_human_durations() {
    let cli = parse(&["nodes", "drain", "nd-1", "--deadline", "1h30m"]).unwrap();
    let Command::Nodes(NodesCommand::Drain(args)) = &cli.command else { panic!("{cli:?}") };
    assert_eq!(args.deadline, Some(std::time::Duration::from_secs(5400)));
    assert_eq!(parse_deadline("90s"), Ok(std::time::Duration::from_secs(90)));
}

#[test]
fn a_malformed_or_zero_deadline_is_a_usage_error_with_examples() {
    let err = parse(&["nodes", "drain", "nd-1", "--deadline", "10x"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueValidation);
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("`10x` is not a duration"), "{err}");
    assert!(err.to_string().contains("e.g. 90s, 10m or 1h30m"), "{err}");
    let err = parse_deadline("0s").unwrap_err();
    assert!(err.contains("longer than zero"), "{err}");
}

#[test]
fn a_missing_node_id_is_a_usage_error() {
    let err = parse(&["nodes", "get"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    assert_eq!(err.exit_code(), 2);
}

#[tokio::test]
async fn executing_against_a_closed_port_fails_with_the_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let cli = parse(&["--controller", &url, "nodes", "list"]).unwrap();
    let err = execute(&cli).await.unwrap_err();
    assert_eq!(err.exit_code(), ExitCode::from(4), "unavailable: a script may retry");
    let out = render::error(&err, &cli.controller);
    assert!(out.starts_with(&format!("error: cannot reach the controller at {url}: ")), "{out}");
    assert!(out.contains(&format!("is the controller running at {url}?")), "{out}");
}

#[test]
fn refusals_of_the_auth_layer_say_what_credentials_would_do() {
    let unauthenticated = hangar::error::status_with_reason(
        tonic::Code::Unauthenticated,
        "hangar.v1.NodeService/ListNodes needs credentials",
        reason::UNAUTHENTICATED,
        &[],
    );
    let out = rendered(unauthenticated);
    assert!(out.contains("hint: this controller wants credentials: pass a token with --token-file"), "{out}");
    let denied = hangar::error::status_with_reason(
        tonic::Code::PermissionDenied,
        "role client may not call hangar.v1.NodeService/DrainNode",
        reason::ROLE_NOT_ALLOWED,
        &[("role", "client".into()), ("required_role", "operator".into())],
    );
    let out = rendered(denied);
    assert!(out.contains("hint: ask an operator for credentials with role operator or above"), "{out}");
}
