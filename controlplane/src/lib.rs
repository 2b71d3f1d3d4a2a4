//! Kairos Fleet control plane.
//!
//! The crate is split the way data flows: [`api`] validates and translates,
//! [`fleet`] decides (pure, no IO; the `kairos-fleet-domain` crate), [`store`] replicates through [`raft`]
//! on each [`replica`], `engine` drives rollouts on the leader and
//! `sessions` push desired state to nodes.
#![deny(missing_docs)]

pub mod api;
pub mod cli;
pub mod cli_config;
pub mod demo;
pub mod engine;
pub mod health_port;
pub mod metrics;
pub mod nodes;
pub mod raft;
pub mod replica;
pub mod security;
pub mod serve;
pub mod sessions;
pub mod side_port;
pub mod store;

pub use kairos_fleet_domain::{error_text, fleet};
