//! Kairos Fleet node client: reads the node's identity from its root
//! filesystem, and (as the product grows) keeps a session with the control
//! plane, pulls upgrade images and runs the upgrade.
#![deny(missing_docs)]

pub mod local;
