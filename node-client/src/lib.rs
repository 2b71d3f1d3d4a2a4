//! Kairos Fleet node client: reads the node's identity from its root
//! filesystem, enrolls with the control plane, and keeps a session with it
//! (hello, heartbeats, status updates, desired state). `simulate` runs many
//! virtual nodes on the same session code for load tests.
//!
//! ```text
//! config      node-client.toml: labels, k3s membership, executors, servers
//! state       the state dir: credentials, enrollment.toml, the status log
//! tls         TLS settings and channels for enrollment and the session
//! enroll      key pair, CSR and the Enroll call
//! hello       what the node says about itself at the start of every stream
//! session     connect, hello, heartbeats, status resend, reconnect with backoff
//! upgrader    the seam for acting on desired state
//! agent       the upgrader of `run`: executor, reboot, outcome after the reboot
//! pull        pulling and verifying upgrade images (ImageFetcher)
//! simulate    N virtual nodes in one process
//! cli         the command line (clap) shared by the binary and its tests
//! ```
#![deny(missing_docs)]

pub mod agent;
pub mod cli;
pub mod config;
pub mod enroll;
pub mod hello;
pub mod local;
pub mod pull;
pub mod session;
pub mod simulate;
pub mod state;
pub mod tls;
pub mod upgrader;

/// Version of this client, reported in every Hello.
pub const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");
