//! Tests of the replicated store (`kairos_controlplane::store`) through its
//! public API: openraft's conformance suite, the key-value rules on sled,
//! restarts, kill -9 durability and a single-node raft.
//!
//! One test binary on purpose: every extra binary is another link on a
//! two-core builder.

mod common;
mod kill;
mod kv_semantics;
mod log_reader;
mod raft_single_node;
mod restart;
mod snapshot;
mod suite;
