//! The fleet domain of Kairos Fleet, shared by the control plane and the
//! node client.
//!
//! - [`fleet`]: what Kairos images, nodes, versions and rollouts are, and
//!   every decision taken about them (pure: no IO, time is a parameter).
//! - [`wire`]: between the wire identity of `kairos.fleet.v1` and the
//!   domain's.
//! - [`error_text`]: one line out of an error and its sources.
//! - [`install_crypto_provider`]: the rustls provider both sides use.
#![deny(missing_docs)]

pub mod error_text;
pub mod fleet;
pub mod wire;

use std::sync::Once;

/// Makes rustls' ring provider the process default (idempotent).
///
/// tonic builds its rustls configs with the process default provider, so
/// this runs before the first TLS server or channel is built. A provider
/// installed earlier by someone else is kept: rustls allows only one.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means a provider is already installed: exactly what we want.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
