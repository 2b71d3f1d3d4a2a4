//! In-process replicas on 127.0.0.1 with TLS (a throwaway CA from rcgen):
//! membership changes through `ClusterService`, writes forwarded from
//! followers, leader failover, snapshot catch-up, the error codes of
//! the public services, node enrollment and sessions, the fleet views
//! (`FleetService`), and SyncReleases against a real local registry.
//!
//! One test binary on purpose: every extra binary is another link on a
//! two-core builder.

mod common;
mod enroll;
mod errors;
mod fleet;
mod fleet_watch;
mod reflection;
mod registry_sync;
mod rollouts;
mod sessions;
mod snapshot;
mod three_replicas;
