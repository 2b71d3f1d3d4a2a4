//! Wire types and gRPC stubs of Kairos Fleet, generated at build time from
//! the `.proto` files in this crate with protox (no system `protoc`).
//!
//! - [`fleet::v1`]: the public API (`kairos.fleet.v1`): `NodeService`,
//!   `FleetService`, `ReleaseService`, `RolloutService`, `ClusterService`,
//!   `AdminService`. The comments in the `.proto` files are the API reference
//!   and appear as rustdoc on the generated items.
//! - [`raft::v1`]: the internal replica-to-replica transport (`kairos.raft.v1`),
//!   carrying serde_json-encoded openraft messages.
//!
//! Each service has a client (`<service>_client::<Service>Client`) and a
//! server (`<service>_server::<Service>Server` wrapping an implementation of
//! the `<service>_server::<Service>` trait).

#![deny(missing_docs)]

/// Generated code of the `kairos.fleet.*` packages.
pub mod fleet {
    /// Public API, package `kairos.fleet.v1`.
    pub mod v1 {
        // `node_message::Body::Hello` is much larger than a heartbeat; boxing
        // it would make every caller deal with a `Box` for no measurable gain.
        #![allow(clippy::large_enum_variant)]
        tonic::include_proto!("kairos.fleet.v1");
    }
}

/// Generated code of the `kairos.raft.*` packages.
pub mod raft {
    /// Internal raft transport, package `kairos.raft.v1`.
    pub mod v1 {
        tonic::include_proto!("kairos.raft.v1");
    }
}

/// Encoded `google.protobuf.FileDescriptorSet` of the public API
/// (`kairos.fleet.v1` and the well-known types it imports), with source
/// comments. Register it with tonic-reflection on the public port.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kairos_fleet_v1_descriptor.bin"));

/// Encoded `google.protobuf.FileDescriptorSet` of the internal raft transport
/// (`kairos.raft.v1`). Kept apart from [`FILE_DESCRIPTOR_SET`] so reflection on
/// the public port does not advertise replica-only RPCs.
pub const RAFT_FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kairos_raft_v1_descriptor.bin"));
