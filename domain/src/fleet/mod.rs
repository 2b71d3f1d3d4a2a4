//! The pure fleet domain: what Kairos images, nodes, versions and rollouts
//! are, and every decision the control plane takes about them.
//!
//! Nothing in here does IO, spawns tasks or knows about gRPC. Time enters as
//! a parameter (milliseconds since the Unix epoch), so every decision is a
//! deterministic function of its inputs and is tested as such.

pub mod identity;
pub mod image;
pub mod matrix;
pub mod model;
pub mod planner;
pub mod policy;
pub mod report;
pub mod rollout;
pub mod strategy;
pub mod window;

pub use model::{Arch, ImageFamily, K3sMembership, K3sRole, NodeFacts, NodeId, SoftwareVersion, Target, Variant};
