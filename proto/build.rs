//! Compiles the .proto files with protox (pure Rust, no system `protoc`),
//! generates prost messages with tonic clients and servers, and writes the
//! descriptor sets that `src/lib.rs` embeds for server reflection.

use std::error::Error;
use std::path::{Path, PathBuf};

use protox::prost::Message as _;

/// The public API, package `kairos.fleet.v1`.
const FLEET_PROTOS: &[&str] = &[
    "kairos/fleet/v1/common.proto",
    "kairos/fleet/v1/node.proto",
    "kairos/fleet/v1/fleet.proto",
    "kairos/fleet/v1/release.proto",
    "kairos/fleet/v1/rollout.proto",
    "kairos/fleet/v1/cluster.proto",
    "kairos/fleet/v1/admin.proto",
];

/// The internal replica-to-replica transport, package `kairos.raft.v1`.
const RAFT_PROTOS: &[&str] = &["kairos/raft/v1/raft.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // A directory makes cargo rerun when any file below it changes, including
    // a newly added .proto.
    println!("cargo:rerun-if-changed=kairos");
    // The two packages get separate descriptor sets so that reflection on the
    // public port never advertises the internal raft service.
    compile(FLEET_PROTOS, &out_dir.join("kairos_fleet_v1_descriptor.bin"))?;
    compile(RAFT_PROTOS, &out_dir.join("kairos_raft_v1_descriptor.bin"))?;
    Ok(())
}

/// Compiles `protos` (relative to the crate root), writes their descriptor set,
/// imports and source comments included, to `descriptor_path`, and generates
/// Rust code into OUT_DIR.
fn compile(protos: &[&str], descriptor_path: &Path) -> Result<(), Box<dyn Error>> {
    // protox::compile keeps source info (the comments) and the imported
    // google.protobuf files, which reflection clients need to resolve types.
    let fds = protox::compile(protos, ["."])?;
    std::fs::write(descriptor_path, fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The generated `<Service>Client::connect(dst)` constructor would clash
        // with the `NodeService.Connect` RPC method. Callers build a TLS
        // `Channel` themselves anyway and use `<Service>Client::new(channel)`.
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
