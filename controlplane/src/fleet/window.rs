//! Maintenance windows: when a rollout may start work on a wave.

use serde::{Deserialize, Serialize};

/// A recurring maintenance window such as `Mon-Fri 02:00+3h Europe/Berlin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    /// The window as written.
    pub spec: String,
}
