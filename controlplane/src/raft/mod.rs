//! The raft transport between replicas: openraft's network over tonic
//! ([`network`]) and the gRPC service that receives it ([`service`]).
//!
//! Every payload is the serde_json encoding of an openraft 0.9 type (see
//! `proto/kairos/raft/v1/raft.proto`); gRPC status codes only ever mean a
//! transport problem, never a raft decision.

pub mod network;
pub mod service;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use network::{ForwardError, Network, PeerClient, PeerContact, PeerTls, Peers};
pub use service::{authorize_peer, RaftRpcService};

/// Largest gRPC message a replica sends or accepts on its port, both ways.
///
/// Set explicitly on every client and server: tonic's 4 MiB default
/// decoding limit is close to what a batch of log entries re-encoded as
/// JSON may reach.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Snapshot bytes per `InstallSnapshot` chunk.
///
/// serde_json writes a byte array as decimal numbers, up to four bytes per
/// byte, so 1 MiB of snapshot becomes at most ~4 MiB on the wire: well
/// below [`MAX_MESSAGE_BYTES`].
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;

/// Encodes a raft message for a `payload` field.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(value)
}

/// Decodes a `payload` field.
pub(crate) fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(payload)
}

/// The host part of a `host:port` address (brackets of an IPv6 literal removed),
/// which is the name a peer's certificate must carry.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_strips_port_and_ipv6_brackets() {
        assert_eq!(host_of("127.0.0.1:7001"), "127.0.0.1");
        assert_eq!(host_of("fleet-1.example:443"), "fleet-1.example");
        assert_eq!(host_of("[::1]:7001"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
