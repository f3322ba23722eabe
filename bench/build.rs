//! Compiles the etcd API subset in `proto/` with protox, like the root crate does for Hangar's
//! protos: no system `protoc` (which the `etcd-client` crate's build script would need).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["proto/etcd.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
