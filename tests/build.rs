//! Compiles the subset of etcd's v3 API that the replication benchmark
//! calls (`proto/etcdserverpb/rpc_subset.proto`) with protox, as the proto
//! crate does for our own API: no system `protoc`, and the generated client
//! uses the workspace's tonic and prost (the `etcd-client` crate needs a
//! system `protoc` to build).

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["etcdserverpb/rpc_subset.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
