//! Compiles every `.proto` under `proto/` with protox (a pure-Rust protobuf compiler, so no
//! system `protoc` is needed) and generates prost messages and tonic clients and servers.
//!
//! For server reflection it also writes one encoded descriptor set per API package, each with
//! the files it imports: a server registers the set of the package it serves, so its reflection
//! lists exactly the services it serves (the controller `hangar.v1`, an executor
//! `hangar.executor.v1`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tonic_prost_build::FileDescriptorSet;

/// Each API package and the file its descriptor set is written to (in `OUT_DIR`; `src/lib.rs`
/// includes them).
const REFLECTION_SETS: [(&str, &str); 2] =
    [("hangar.v1", "hangar_v1_descriptor.bin"), ("hangar.executor.v1", "hangar_executor_v1_descriptor.bin")];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = Path::new("proto");
    let mut files = Vec::new();
    collect_protos(proto_root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=proto");

    let descriptors = protox::compile(&files, [proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    for (package, file_name) in REFLECTION_SETS {
        let set = package_with_imports(&descriptors, package)?;
        std::fs::write(out_dir.join(file_name), prost::Message::encode_to_vec(&set))?;
    }
    let packages: BTreeSet<_> =
        descriptors.file.iter().map(|f| f.package()).filter(|p| p.starts_with("hangar.")).collect();
    let covered: BTreeSet<_> = REFLECTION_SETS.iter().map(|(package, _)| *package).collect();
    if packages != covered {
        return Err(
            format!("build.rs: REFLECTION_SETS covers {covered:?}, but proto/ has packages {packages:?}").into()
        );
    }

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `BackendService.Connect` would collide with the generated `connect(endpoint)`
        // constructor; clients are built from a `Channel` instead.
        .build_transport(false)
        // Hand-written (src/wire.rs) so that a watch event is encoded once for every stream.
        .extern_path(".hangar.v1.WatchNodesResponse", "crate::wire::WatchNodesResponse")
        .extern_path(".hangar.v1.WatchBackendsResponse", "crate::wire::WatchBackendsResponse")
        // Also hand-written: a listing copies nodes encoded once.
        .extern_path(".hangar.v1.ListNodesResponse", "crate::wire::ListNodesResponse")
        // Maps (labels, environments) as `BTreeMap`: in key order wherever they are shown, as
        // the domain types hold them, and decoded a fifth faster than a `HashMap` (no hashing,
        // no rehash as a map grows; BENCHMARKS.md, "list").
        .btree_map(".")
        // prost's codec with smaller per-call buffers (src/codec.rs).
        .codec_path("crate::codec::HangarCodec")
        // Messages that carry env values or tokens get a `Debug` that hides them (src/redact.rs).
        .skip_debug([
            ".hangar.v1.Executable",
            ".hangar.v1.SpawnConfig",
            ".hangar.v1.SpawnBackend",
            ".hangar.v1.ConnectResponse",
            ".hangar.v1.LookupRouteRequest",
            ".hangar.executor.v1.BackendSpec",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}

/// The files of `package` and every file they import, directly or not, in the order of `all`
/// (protox lists a file after its imports, which is the order reflection clients expect).
fn package_with_imports(all: &FileDescriptorSet, package: &str) -> Result<FileDescriptorSet, String> {
    let by_name: HashMap<&str, _> = all.file.iter().map(|f| (f.name(), f)).collect();
    let mut needed = BTreeSet::new();
    let mut pending: Vec<&str> = all.file.iter().filter(|f| f.package() == package).map(|f| f.name()).collect();
    if pending.is_empty() {
        return Err(format!("build.rs: no proto file declares package {package}"));
    }
    while let Some(name) = pending.pop() {
        if needed.insert(name) {
            let file = by_name.get(name).ok_or_else(|| format!("build.rs: {name} is imported but not compiled"))?;
            pending.extend(file.dependency.iter().map(String::as_str));
        }
    }
    Ok(FileDescriptorSet { file: all.file.iter().filter(|f| needed.contains(f.name())).cloned().collect() })
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
