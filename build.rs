//! Compiles every `.proto` under `proto/` with protox (a pure-Rust protobuf compiler, so no
//! system `protoc` is needed) and generates prost messages and tonic clients and servers. The
//! encoded descriptor set is written next to the generated code for server reflection.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = Path::new("proto");
    let mut files = Vec::new();
    collect_protos(proto_root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=proto");

    let descriptors = protox::compile(&files, [proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("hangar_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `BackendService.Connect` would collide with the generated `connect(endpoint)`
        // constructor; clients are built from a `Channel` instead.
        .build_transport(false)
        // Hand-written (src/wire.rs) so that a watch event is encoded once for every stream.
        .extern_path(".hangar.v1.WatchNodesResponse", "crate::wire::WatchNodesResponse")
        // prost's codec with smaller per-call buffers (src/codec.rs).
        .codec_path("crate::codec::HangarCodec")
        .compile_fds(descriptors)?;
    Ok(())
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
