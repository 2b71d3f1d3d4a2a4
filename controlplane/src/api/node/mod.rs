//! `kairos.fleet.v1.NodeService`: what enrolled nodes call.

pub mod enroll;
