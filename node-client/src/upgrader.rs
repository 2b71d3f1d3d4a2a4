//! The seam between the session and whatever acts on desired state.
//!
//! The session persists each new DesiredState generation and hands it to
//! an [`Upgrader`] exactly once, with a [`Reporter`] to emit status
//! transitions and download progress. `run` uses the
//! [`AgentUpgrader`](crate::agent::AgentUpgrader), which fetches through an
//! [`ImageFetcher`]; `simulate` uses its simulated one.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use kairos_fleet_proto::fleet::v1 as pb;
use tokio::sync::watch;

use crate::session::NodeHandle;
use crate::state::StateError;

/// A boxed, sendable future, so [`Upgrader`] can be a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Acts on desired state.
///
/// ### Contract
/// `apply` is called at most once per generation, in increasing generation
/// order, and never while an earlier `apply` of the same session is still
/// running: a newer generation first cancels the running one
/// ([`Reporter::cancellation`]) and waits for it to return. Every
/// transition must be reported through the reporter, which persists it
/// before it is sent; `apply` may outlive any number of streams.
pub trait Upgrader: Send + Sync {
    /// Converges on `desired`, reporting through `reporter`.
    fn apply<'a>(&'a self, desired: pb::DesiredState, reporter: Reporter) -> BoxFuture<'a, ()>;
}

/// What an upgrader uses to speak to the control plane about one generation.
#[derive(Clone)]
pub struct Reporter {
    node: NodeHandle,
    generation: u64,
    rollout_id: String,
    server_executors: Vec<String>,
    cancel: watch::Receiver<Option<String>>,
}

impl Reporter {
    /// A reporter for `desired` on `node`; `cancel` carries the reason once
    /// the generation is withdrawn or superseded.
    pub fn new(
        node: NodeHandle,
        desired: &pb::DesiredState,
        server_executors: Vec<String>,
        cancel: watch::Receiver<Option<String>>,
    ) -> Reporter {
        Reporter {
            node,
            generation: desired.generation,
            rollout_id: desired.rollout_id.clone(),
            server_executors,
            cancel,
        }
    }

    /// The generation this reporter speaks for.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Executors the server allowed in its NodeConfig (empty = no restriction).
    pub fn server_executors(&self) -> &[String] {
        &self.server_executors
    }

    /// The session this reporter belongs to.
    pub fn node(&self) -> &NodeHandle {
        &self.node
    }

    /// A StatusUpdate for `state` with this generation, rollout and the current time.
    pub fn update(&self, state: pb::NodeState) -> pb::StatusUpdate {
        let mut update = pb::StatusUpdate {
            rollout_id: self.rollout_id.clone(),
            generation: self.generation,
            observed_at: Some(prost_types::Timestamp::from(SystemTime::now())),
            ..Default::default()
        };
        update.set_state(state);
        update
    }

    /// Records `update` durably and queues it for sending; returns it with its seq.
    pub fn report(&self, update: pb::StatusUpdate) -> Result<pb::StatusUpdate, StateError> {
        self.node.report(update)
    }

    /// Offers download progress (best effort; the session sends the newest
    /// at most once per progress interval).
    pub fn progress(&self, mut progress: pb::Progress) {
        progress.generation = self.generation;
        progress.rollout_id = self.rollout_id.clone();
        self.node.progress(progress);
    }

    /// The reason, once this generation was cancelled or superseded.
    pub fn cancelled(&self) -> Option<String> {
        self.cancel.borrow().clone()
    }

    /// Resolves when this generation is cancelled or superseded.
    pub async fn cancellation(&mut self) -> String {
        match self.cancel.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The session is gone: nobody will hear about this generation.
            Err(_) => "the session ended".to_string(),
        }
    }

    /// Closes the current stream and opens a new one after `downtime` (a
    /// reboot); resolves once the new stream is up or after `limit`.
    pub async fn restart_stream(&self, downtime: Duration, limit: Duration) -> bool {
        self.node.restart_stream(downtime, limit).await
    }
}

/// An image pulled and verified on the node, ready for the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedImage {
    /// An OCI image-layout archive (tar: `oci-layout`, `index.json`,
    /// `blobs/sha256/...`) holding the image for this node's platform, so
    /// `kairos-agent upgrade --source ocifile:<path>` downloads nothing again.
    pub archive: std::path::PathBuf,
    /// Digest of the image manifest that was pulled (`sha256:...`).
    pub manifest_digest: String,
    /// Bytes of the archive.
    pub size: u64,
}

/// Why an image could not be fetched, as the node reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    /// PULL_FAILED, DIGEST_MISMATCH, INSUFFICIENT_SPACE, INCOMPATIBLE_TARGET
    /// or CANCELLED.
    pub reason: pb::FailureReason,
    /// What went wrong, for the operator.
    pub message: String,
}

/// Fetches the image a desired state names: resolves the tag (or checks
/// the given digest), picks the node's platform from an index, downloads
/// and verifies every blob (resuming what an earlier attempt left) and
/// reports DOWNLOADING / VERIFYING progress through `reporter`.
pub trait ImageFetcher: Send + Sync {
    /// Fetches `desired`'s image; stops early with CANCELLED when the
    /// reporter's generation is cancelled.
    fn fetch<'a>(
        &'a self,
        desired: &'a pb::DesiredState,
        reporter: &'a Reporter,
    ) -> BoxFuture<'a, Result<FetchedImage, FetchError>>;
}

/// True when executor `name` may run: it must be in the local allow-list
/// and, when the server sent one, in the server's. The empty name is the
/// default executor (`kairos-agent upgrade`), always allowed.
pub fn executor_allowed(name: &str, local: &[String], server: &[String]) -> bool {
    name.is_empty() || (local.iter().any(|e| e == name) && (server.is_empty() || server.iter().any(|e| e == name)))
}

/// An upgrader that logs each desired state and reports nothing, so the
/// control plane sees the node stay where it is (tests of the session).
#[derive(Debug, Clone, Default)]
pub struct LoggingUpgrader {
    /// The local executor allow-list, for the log line.
    pub allowed_executors: Vec<String>,
}

impl Upgrader for LoggingUpgrader {
    fn apply<'a>(&'a self, desired: pb::DesiredState, reporter: Reporter) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let executor = desired.executor.as_ref().map(|e| e.name.as_str()).unwrap_or_default();
            tracing::info!(
                generation = desired.generation,
                rollout = %desired.rollout_id,
                wave = desired.wave,
                target = %desired.target_image_ref,
                digest = %desired.target_image_digest,
                release = %desired.target_release,
                rollback = desired.rollback,
                executor,
                executor_allowed = executor_allowed(executor, &self.allowed_executors, reporter.server_executors()),
                "desired state received; this build has no upgrade executor, so the node stays on its image"
            );
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executors_must_be_allowed_locally_and_by_the_server() {
        let local = vec!["kairos-agent".to_string(), "custom".to_string()];
        assert!(executor_allowed("", &[], &[]));
        assert!(executor_allowed("custom", &local, &[]));
        assert!(executor_allowed("custom", &local, &["custom".to_string()]));
        assert!(!executor_allowed("custom", &local, &["kairos-agent".to_string()]));
        assert!(!executor_allowed("rm", &local, &["rm".to_string()]));
    }
}
