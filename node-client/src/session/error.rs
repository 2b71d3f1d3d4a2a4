//! Why a stream could not be opened or ended.

use crate::local::LocalError;
use crate::state::StateError;

/// Why a stream could not be opened or ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// TCP, TLS or HTTP/2 connection failed.
    #[error("{endpoint}: cannot connect: {message}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// What failed.
        message: String,
    },
    /// A network await took too long.
    #[error("{endpoint}: timed out {what}")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// What the session was waiting for.
        what: &'static str,
    },
    /// The server answered with an error status.
    #[error("{endpoint}: {code:?}: {message}")]
    Rpc {
        /// The endpoint.
        endpoint: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
    /// The server broke the protocol (e.g. did not start with NodeConfig).
    #[error("{endpoint}: protocol: {rule}")]
    Protocol {
        /// The endpoint.
        endpoint: String,
        /// The rule it broke.
        rule: String,
    },
    /// The stream ended.
    #[error("{endpoint}: the stream was closed")]
    Closed {
        /// The endpoint.
        endpoint: String,
    },
    /// The node's own facts could not be read for the Hello.
    #[error("reading the node's facts: {0}")]
    Local(#[from] LocalError),
    /// The status log could not be written.
    #[error("status log: {0}")]
    State(#[from] StateError),
}
