//! The raft transport between replicas: openraft's network over tonic
//! ([`network`]) and the gRPC service that receives it ([`service`]).
//!
//! Every payload is the serde encoding of an openraft 0.9 type, postcard
//! by default, serde_json when a peer sends that (see
//! `proto/kairos/raft/v1/raft.proto`); gRPC status codes only ever mean a
//! transport problem, never a raft decision.

pub mod network;
pub mod service;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use kairos_fleet_proto::raft::v1::PayloadEncoding;

pub use network::{ForwardError, Network, PeerClient, PeerContact, PeerTls, Peers};
pub use service::{authorize_peer, RaftRpcService};

/// Largest gRPC message a replica sends or accepts on its port, both ways.
///
/// Set explicitly on every client and server: tonic's 4 MiB default
/// decoding limit is close to what a batch of log entries may reach.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Snapshot bytes per `InstallSnapshot` chunk.
///
/// Even in serde_json (a byte array as decimal numbers, up to four bytes
/// per byte) 1 MiB of snapshot stays below [`MAX_MESSAGE_BYTES`].
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;

/// Encoding replicas send their payloads in.
pub const SEND_ENCODING: PayloadEncoding = PayloadEncoding::Postcard;

/// A payload that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// serde_json failed.
    #[error("serde_json: {0}")]
    Json(#[from] serde_json::Error),
    /// postcard failed.
    #[error("postcard: {0}")]
    Postcard(#[from] postcard::Error),
    /// The encoding field holds a value this build does not know.
    #[error("unknown payload encoding {0}")]
    Unknown(i32),
}

/// Encodes a raft message for a `payload` field.
pub(crate) fn encode<T: Serialize>(value: &T, encoding: PayloadEncoding) -> Result<Vec<u8>, CodecError> {
    Ok(match encoding {
        PayloadEncoding::Json => serde_json::to_vec(value)?,
        PayloadEncoding::Postcard => postcard::to_stdvec(value)?,
    })
}

/// Decodes a `payload` field sent with the `encoding` field's value.
pub(crate) fn decode<T: DeserializeOwned>(payload: &[u8], encoding: i32) -> Result<T, CodecError> {
    match PayloadEncoding::try_from(encoding) {
        Ok(PayloadEncoding::Json) => Ok(serde_json::from_slice(payload)?),
        Ok(PayloadEncoding::Postcard) => Ok(postcard::from_bytes(payload)?),
        Err(_) => Err(CodecError::Unknown(encoding)),
    }
}

/// The encoding an answer uses: the request's, or ours when it is unknown.
pub(crate) fn answer_encoding(encoding: i32) -> PayloadEncoding {
    PayloadEncoding::try_from(encoding).unwrap_or(SEND_ENCODING)
}

/// The host part of a `host:port` address (brackets of an IPv6 literal removed),
/// which is the name a peer's certificate must carry.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Op, Request};

    #[test]
    fn writes_round_trip_in_both_encodings_and_postcard_keeps_bytes_compact() {
        let write = Request::batch(vec![Op::put("nodes/a", vec![0xffu8; 1000])]);
        let json = encode(&write, PayloadEncoding::Json).expect("json");
        let binary = encode(&write, PayloadEncoding::Postcard).expect("postcard");
        assert_eq!(decode::<Request>(&json, PayloadEncoding::Json as i32).expect("json decodes"), write);
        assert_eq!(decode::<Request>(&binary, PayloadEncoding::Postcard as i32).expect("postcard decodes"), write);
        assert!(binary.len() * 3 < json.len(), "postcard {} bytes, json {}", binary.len(), json.len());
    }

    #[test]
    fn a_payload_from_a_peer_without_the_encoding_field_is_json() {
        let write = Request::put("k", "v");
        let json = serde_json::to_vec(&write).expect("json");
        // proto3: an absent enum field reads as 0.
        assert_eq!(decode::<Request>(&json, 0).expect("decodes"), write);
        assert!(matches!(decode::<Request>(&json, 9), Err(CodecError::Unknown(9))));
        assert_eq!(answer_encoding(0), PayloadEncoding::Json);
        assert_eq!(answer_encoding(9), SEND_ENCODING);
    }

    #[test]
    fn host_of_strips_port_and_ipv6_brackets() {
        assert_eq!(host_of("127.0.0.1:7001"), "127.0.0.1");
        assert_eq!(host_of("fleet-1.example:443"), "fleet-1.example");
        assert_eq!(host_of("[::1]:7001"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
