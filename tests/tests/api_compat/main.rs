//! The API compatibility guard (docs/design/api-evolution.md): `hangar.v1` and
//! `hangar.executor.v1` as build.rs compiles them must stay wire-compatible with the descriptor
//! sets committed in `api-baseline/`; only additions pass.
//!
//! The guard proves it can fail: copies of `proto/` with one break each (a field number changed,
//! a type changed, an RPC renamed, a stream made unary, …) are compiled with protox, as build.rs
//! compiles the real ones, and each break must be reported, while the additions a new version may
//! make are not.
//!
//! `scripts/api-baseline` records the current API as the baseline (it runs this test with
//! `HANGAR_API_BASELINE=update`, or `=force` to record a deliberate break).

mod checker;

use checker::{Break, Side, additions, breaking_changes};
use prost::Message;
use prost_types::FileDescriptorSet;
use std::path::{Path, PathBuf};

/// Every guarded package with the descriptor set build.rs embeds for it.
const GUARDED: [(&str, &[u8]); 2] =
    [("hangar.v1", hangar::v1::FILE_DESCRIPTOR_SET), ("hangar.executor.v1", hangar::executor::v1::FILE_DESCRIPTOR_SET)];

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repository").to_path_buf()
}

fn baseline_path(package: &str) -> PathBuf {
    repository().join("api-baseline").join(format!("{package}.binpb"))
}

fn baseline(package: &str) -> FileDescriptorSet {
    let path = baseline_path(package);
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; record a baseline with scripts/api-baseline", path.display()));
    FileDescriptorSet::decode(bytes.as_slice()).expect("the baseline is an encoded FileDescriptorSet")
}

/// Comments are not API: dropping them keeps the committed baseline small and stable.
fn without_source_info(mut set: FileDescriptorSet) -> FileDescriptorSet {
    for file in &mut set.file {
        file.source_code_info = None;
    }
    set
}

#[test]
fn the_api_build_rs_compiles_is_compatible_with_the_committed_baseline() {
    let mode = std::env::var("HANGAR_API_BASELINE").unwrap_or_default();
    let mut report = Vec::new();
    for (package, embedded) in GUARDED {
        let current = FileDescriptorSet::decode(embedded).expect("build.rs embeds an encoded FileDescriptorSet");
        let path = baseline_path(package);
        let breaks = if path.exists() { breaking_changes(&baseline(package), &current, package) } else { Vec::new() };
        let added = if path.exists() { additions(&baseline(package), &current, package) } else { Vec::new() };
        match mode.as_str() {
            "" => {}
            "update" | "force" => {
                assert!(
                    breaks.is_empty() || mode == "force",
                    "{package}: not recording a baseline with breaking changes:\n  {}\nA deliberate break is a new \
                     major version (a new package, docs/design/api-evolution.md); `scripts/api-baseline --force` \
                     records it anyway.",
                    render(&breaks)
                );
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, without_source_info(current).encode_to_vec()).unwrap();
                println!("{package}: recorded {} ({} additions)", path.display(), added.len());
                continue;
            }
            other => panic!("HANGAR_API_BASELINE={other}: expected `update` or `force`"),
        }
        assert!(path.exists(), "{}: no baseline; record one with scripts/api-baseline", path.display());
        if !added.is_empty() {
            // Compatible, but until recorded, a later removal of these would go unnoticed.
            println!(
                "{package}: {} additions not in the baseline yet (scripts/api-baseline records them):",
                added.len()
            );
            for addition in &added {
                println!("  + {addition}");
            }
        }
        if !breaks.is_empty() {
            report.push(format!("{package}:\n  {}", render(&breaks)));
        }
    }
    assert!(
        report.is_empty(),
        "breaking changes against api-baseline/ (rules and the way out in docs/design/api-evolution.md):\n{}",
        report.join("\n")
    );
}

fn render(breaks: &[Break]) -> String {
    breaks.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  ")
}

/// A copy of `proto/` with each `(file, from, to)` edit applied, compiled with protox the way
/// build.rs compiles the real one. Every `from` must occur exactly once in its file, so an edit
/// that no longer matches the protos fails the test instead of proving nothing.
fn compile_edited(edits: &[(&str, &str, &str)]) -> FileDescriptorSet {
    let copy = tempfile::tempdir().unwrap();
    let source = repository().join("proto");
    let mut files = Vec::new();
    copy_protos(&source, &source, copy.path(), &mut files);
    for (file, from, to) in edits {
        let path = copy.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(text.matches(from).count(), 1, "{file} must contain {from:?} exactly once");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    }
    protox::compile(&files, [copy.path()]).unwrap_or_else(|e| panic!("the edited protos do not compile: {e:?}"))
}

fn copy_protos(root: &Path, dir: &Path, to: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let relative = path.strip_prefix(root).unwrap();
        if path.is_dir() {
            std::fs::create_dir_all(to.join(relative)).unwrap();
            copy_protos(root, &path, to, files);
        } else if path.extension().is_some_and(|e| e == "proto") {
            std::fs::copy(&path, to.join(relative)).unwrap();
            files.push(relative.to_path_buf());
        }
    }
}

/// The breaking changes of `package` in a copy of the protos with `edits`.
fn breaks_after(package: &str, edits: &[(&str, &str, &str)]) -> Vec<Break> {
    breaking_changes(&baseline(package), &compile_edited(edits), package)
}

const NODE: &str = "hangar/v1/node.proto";
const BACKEND: &str = "hangar/v1/backend.proto";
const DRONE: &str = "hangar/v1/drone.proto";
const EXECUTOR: &str = "hangar/executor/v1/executor.proto";

fn s(text: &str) -> String {
    text.to_string()
}

#[test]
fn an_unedited_copy_of_the_protos_compiled_with_protox_passes() {
    // The control for every test below: what they report comes from their edit alone.
    for (package, _) in GUARDED {
        assert_eq!(breaks_after(package, &[]), [], "{package}");
    }
}

#[test]
fn changing_a_field_number_is_reported_as_the_old_number_removed() {
    let breaks = breaks_after("hangar.v1", &[(NODE, "string name = 2;", "string name = 40;")]);
    assert_eq!(breaks, [Break::FieldRemoved { message: s("hangar.v1.Node"), number: 2, name: s("name") }]);
    assert!(breaks[0].to_string().contains("reserved 2;"), "the report says how to fix it: {}", breaks[0]);
}

#[test]
fn a_field_number_reused_with_another_name_or_type_is_reported() {
    let renamed = breaks_after("hangar.v1", &[(NODE, "string name = 2;", "string display_name = 2;")]);
    assert_eq!(
        renamed,
        [Break::FieldRenamed { message: s("hangar.v1.Node"), number: 2, was: s("name"), now: s("display_name") }]
    );
    let retyped = breaks_after("hangar.v1", &[(NODE, "string name = 2;", "uint64 name = 2;")]);
    assert_eq!(
        retyped,
        [Break::FieldTypeChanged {
            message: s("hangar.v1.Node"),
            number: 2,
            name: s("name"),
            was: s("string"),
            now: s("uint64")
        }]
    );
    let other_enum = breaks_after("hangar.v1", &[(NODE, "NodeKind kind = 3;", "NodeState kind = 3;")]);
    assert_eq!(
        other_enum,
        [Break::FieldTypeChanged {
            message: s("hangar.v1.Node"),
            number: 3,
            name: s("kind"),
            was: s("hangar.v1.NodeKind"),
            now: s("hangar.v1.NodeState")
        }]
    );
}

#[test]
fn a_changed_label_or_oneof_is_reported() {
    let singular = breaks_after("hangar.v1", &[(NODE, "repeated NodeKind kinds = 1;", "NodeKind kinds = 1;")]);
    assert_eq!(
        singular,
        [Break::FieldLabelChanged {
            message: s("hangar.v1.NodeFilter"),
            number: 1,
            name: s("kinds"),
            was: "repeated",
            now: "singular"
        }]
    );
    let presence = breaks_after("hangar.v1", &[(BACKEND, "optional int32 exit_code = 5;", "int32 exit_code = 5;")]);
    assert_eq!(
        presence,
        [Break::FieldLabelChanged {
            message: s("hangar.v1.BackendStatus"),
            number: 5,
            name: s("exit_code"),
            was: "optional",
            now: "singular"
        }]
    );
    let out_of_oneof = breaks_after(
        "hangar.v1",
        &[
            (DRONE, "    RenewKey renew_key = 5;\n", ""),
            (
                DRONE,
                "    RenewKeys renew_keys = 6;\n  }\n}",
                "    RenewKeys renew_keys = 6;\n  }\n  RenewKey renew_key = 5;\n}",
            ),
        ],
    );
    assert_eq!(
        out_of_oneof,
        [Break::FieldOneofChanged {
            message: s("hangar.v1.DroneAttachRequest"),
            number: 5,
            name: s("renew_key"),
            was: s("message"),
            now: s("(none)")
        }]
    );
}

#[test]
fn renamed_or_removed_messages_services_and_rpcs_are_reported() {
    let message = breaks_after(
        "hangar.v1",
        &[
            (NODE, "message GetNodeRequest {", "message FetchNodeRequest {"),
            (NODE, "GetNode(GetNodeRequest)", "GetNode(FetchNodeRequest)"),
        ],
    );
    assert_eq!(
        message,
        [
            Break::MessageRemoved { message: s("hangar.v1.GetNodeRequest") },
            Break::RpcTypeChanged {
                rpc: s("hangar.v1.NodeService.GetNode"),
                side: Side::Request,
                was: s("hangar.v1.GetNodeRequest"),
                now: s("hangar.v1.FetchNodeRequest")
            },
        ]
    );
    let rpc = breaks_after("hangar.v1", &[(NODE, "rpc GetNode(GetNodeRequest)", "rpc FetchNode(GetNodeRequest)")]);
    assert_eq!(rpc, [Break::RpcRemoved { service: s("hangar.v1.NodeService"), rpc: s("GetNode") }]);
    let service = breaks_after("hangar.v1", &[(NODE, "service NodeService {", "service NodesService {")]);
    assert_eq!(service, [Break::ServiceRemoved { service: s("hangar.v1.NodeService") }]);
}

#[test]
fn a_changed_request_type_or_streaming_mode_is_reported() {
    let request = breaks_after(
        "hangar.v1",
        &[(NODE, "rpc UndrainNode(UndrainNodeRequest)", "rpc UndrainNode(DrainNodeRequest)")],
    );
    assert_eq!(
        request,
        [Break::RpcTypeChanged {
            rpc: s("hangar.v1.NodeService.UndrainNode"),
            side: Side::Request,
            was: s("hangar.v1.UndrainNodeRequest"),
            now: s("hangar.v1.DrainNodeRequest")
        }]
    );
    let unary =
        breaks_after("hangar.v1", &[(NODE, "returns (stream WatchNodesResponse)", "returns (WatchNodesResponse)")]);
    assert_eq!(
        unary,
        [Break::RpcStreamingChanged {
            rpc: s("hangar.v1.NodeService.WatchNodes"),
            side: Side::Response,
            was: true,
            now: false
        }]
    );
    // The executor protocol is guarded the same way.
    let executor = breaks_after(
        "hangar.executor.v1",
        &[(EXECUTOR, "returns (stream WatchEventsResponse)", "returns (WatchEventsResponse)")],
    );
    assert_eq!(
        executor,
        [Break::RpcStreamingChanged {
            rpc: s("hangar.executor.v1.ExecutorService.WatchEvents"),
            side: Side::Response,
            was: true,
            now: false
        }]
    );
}

#[test]
fn enum_values_removed_without_reserved_or_renamed_are_reported() {
    let removed = breaks_after("hangar.v1", &[(NODE, "NODE_STATE_OFFLINE = 4;", "")]);
    assert_eq!(
        removed,
        [Break::EnumValueRemoved { name: s("hangar.v1.NodeState"), number: 4, value: s("NODE_STATE_OFFLINE") }]
    );
    let renamed = breaks_after("hangar.v1", &[(NODE, "NODE_STATE_OFFLINE = 4;", "NODE_STATE_GONE = 4;")]);
    assert_eq!(
        renamed,
        [Break::EnumValueRenamed {
            name: s("hangar.v1.NodeState"),
            number: 4,
            was: s("NODE_STATE_OFFLINE"),
            now: s("NODE_STATE_GONE")
        }]
    );
}

#[test]
fn reserving_what_is_removed_and_adding_new_definitions_pass() {
    let edits = [
        // Removals the rules allow: the numbers are reserved so that they are never reused.
        (NODE, "string version = 8;", "reserved 8;\n  reserved \"version\";"),
        (NODE, "NODE_STATE_OFFLINE = 4;", "reserved 4;\n  reserved \"NODE_STATE_OFFLINE\";"),
        // Additions: a field, an enum value, an RPC, a message, a service.
        (NODE, "uint64 revision = 16;", "uint64 revision = 16;\n  string zone = 40;"),
        (NODE, "NODE_KIND_PROXY = 2;", "NODE_KIND_PROXY = 2;\n  NODE_KIND_GATEWAY = 3;"),
        (NODE, "service NodeService {", "service NodeService {\n  rpc CordonNode(GetNodeRequest) returns (Zone);"),
        (
            NODE,
            "message NodeEvent {",
            "message Zone { string name = 1; }\nservice ZoneService { rpc GetZone(Zone) returns (Zone); }\nmessage NodeEvent {",
        ),
    ];
    let current = compile_edited(&edits);
    let baseline = baseline("hangar.v1");
    assert_eq!(breaking_changes(&baseline, &current, "hangar.v1"), []);
    let added = additions(&baseline, &current, "hangar.v1");
    for expected in [
        "field hangar.v1.Node.zone = 40",
        "enum value hangar.v1.NodeKind.NODE_KIND_GATEWAY = 3",
        "rpc hangar.v1.NodeService.CordonNode",
        "message hangar.v1.Zone",
        "service hangar.v1.ZoneService",
    ] {
        assert!(added.iter().any(|a| a == expected), "{expected} is listed as an addition: {added:?}");
    }
}
