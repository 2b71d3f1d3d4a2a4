//! Pulling the target image onto the node: resolve the tag (or check the
//! given digest), take this node's platform from an image index, download
//! config and layers with resume, verify every digest, and write the OCI
//! image-layout archive the executor installs from.
//!
//! ```text
//! config     the [registry] section: default registry, mirrors, credentials
//! source     mirrors and upstream for a reference, with their credentials
//! blob       download with Range resume, verification, the bandwidth cap
//! progress   DOWNLOADING / VERIFYING progress, a few times per second
//! layout     the OCI image-layout tar
//! ```

pub mod config;
pub mod source;

mod blob;
mod layout;
mod progress;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use kairos_fleet_proto::fleet::v1 as pb;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{
    ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest, IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

pub use config::{Credential, RegistryConfig};

use crate::upgrader::{BoxFuture, FetchError, FetchedImage, ImageFetcher, Reporter};
use blob::Throttle;
use progress::Tracker;
use source::Source;

/// First wait before retrying a failed request; doubles on each retry.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
/// Longest wait between two retries.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(8);
/// Largest manifest or index accepted.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// The platform whose manifest is taken from an image index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// OCI architecture: `amd64` or `arm64`.
    pub architecture: String,
    /// OCI variant, `v8` for arm64; an index entry without one matches too.
    pub variant: Option<String>,
}

impl Platform {
    /// linux/amd64.
    pub fn linux_amd64() -> Platform {
        Platform { architecture: "amd64".to_string(), variant: None }
    }

    /// linux/arm64/v8.
    pub fn linux_arm64() -> Platform {
        Platform { architecture: "arm64".to_string(), variant: Some("v8".to_string()) }
    }

    /// The platform this binary was built for, when it is one Kairos ships.
    pub fn current() -> Option<Platform> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Platform::linux_amd64()),
            "aarch64" => Some(Platform::linux_arm64()),
            _ => None,
        }
    }

    fn matches(&self, entry: &ImageIndexEntry) -> bool {
        let Some(platform) = &entry.platform else { return false };
        platform.os.to_string() == "linux"
            && platform.architecture.to_string() == self.architecture
            && match (&self.variant, &platform.variant) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "linux/{}", self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// Who hears about a pull: state transitions, progress, cancellation.
/// [`Reporter`] is one; tests use their own.
pub trait PullObserver: Send + Sync {
    /// The pull entered `state` (DOWNLOADING, then VERIFYING).
    fn phase(&self, state: pb::NodeState);
    /// Progress of the current phase (offered at most a few times per second).
    fn progress(&self, progress: pb::Progress);
    /// Why the pull must stop, once it must.
    fn cancelled(&self) -> Option<String>;
}

impl PullObserver for Reporter {
    fn phase(&self, state: pb::NodeState) {
        if let Err(e) = self.report(self.update(state)) {
            tracing::warn!(error = %e, ?state, "cannot record the pull's state");
        }
    }

    fn progress(&self, progress: pb::Progress) {
        Reporter::progress(self, progress);
    }

    fn cancelled(&self) -> Option<String> {
        Reporter::cancelled(self)
    }
}

/// Pulls images from registries into `<state_dir>/images/`.
pub struct Puller {
    client: Client,
    config: RegistryConfig,
    images: PathBuf,
    platform: Platform,
}

impl Puller {
    /// A puller with `config`, keeping blobs and archives under
    /// `<state_dir>/images/` and taking `platform` from image indexes.
    pub fn new(config: RegistryConfig, state_dir: &Path, platform: Platform) -> Puller {
        // reqwest is built without a provider of its own.
        kairos_fleet_domain::install_crypto_provider();
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(config.plain_http.clone()),
            platform_resolver: None,
            read_timeout: Some(Duration::from_secs(30)),
            connect_timeout: Some(Duration::from_secs(10)),
            ..ClientConfig::default()
        });
        Puller { client, config, images: state_dir.join("images"), platform }
    }

    /// Where blobs and archives are kept.
    pub fn images_dir(&self) -> &Path {
        &self.images
    }

    /// Pulls `image_ref` (checked against `digest` unless it is empty) from
    /// its mirrors, then its registry, and writes its archive.
    pub async fn pull(
        &self,
        image_ref: &str,
        digest: &str,
        observer: &dyn PullObserver,
    ) -> Result<FetchedImage, FetchError> {
        let sources =
            source::sources(image_ref, &self.config).map_err(|e| fail(pb::FailureReason::PullFailed, e.to_string()))?;
        let blobs = self.images.join("blobs").join("sha256");
        tokio::fs::create_dir_all(&blobs).await.map_err(|e| blob::disk_error(&blobs, e))?;
        observer.phase(pb::NodeState::Downloading);
        let mut failures = Vec::new();
        for source in &sources {
            match self.pull_from(source, digest, observer, &blobs).await {
                Ok(image) => return Ok(image),
                // Only a registry that could not serve the image sends us
                // to the next one; a bad blob or a full disk is final.
                Err(e) if e.reason == pb::FailureReason::PullFailed => {
                    tracing::warn!(source = %source.reference.whole(), error = %e.message, "pull failed; trying the next source");
                    failures.push(e.message);
                }
                Err(e) => return Err(e),
            }
        }
        Err(fail(pb::FailureReason::PullFailed, failures.join("; then ")))
    }

    async fn pull_from(
        &self,
        source: &Source,
        digest: &str,
        observer: &dyn PullObserver,
        blobs: &Path,
    ) -> Result<FetchedImage, FetchError> {
        let auth = source::auth_for(&source.registry, &self.config)
            .map_err(|e| fail(pb::FailureReason::PullFailed, e.to_string()))?;
        let fetch = Fetch {
            client: &self.client,
            source,
            auth,
            observer,
            blobs: blobs.to_path_buf(),
            retries: self.config.retries,
            plain_http: self.config.plain_http.contains(&source.registry),
            throttle: Mutex::new(Throttle::new(self.config.max_bytes_per_second)),
        };
        let resolved = self.resolve(&fetch, digest).await?;
        let archive = self.images.join(format!("{}.tar", blob::sha256_hex(&resolved.digest)?));
        if archive.exists() {
            // Written whole and renamed into place by an earlier pull.
            let size = blob::len_on_disk(&archive);
            return Ok(FetchedImage { archive, manifest_digest: resolved.digest, size });
        }
        let mut wanted: Vec<&OciDescriptor> = vec![&resolved.manifest.config];
        wanted.extend(resolved.manifest.layers.iter());
        let mut total = 0u64;
        let mut on_disk = 0u64;
        for desc in &wanted {
            let size = u64::try_from(desc.size).map_err(|_| {
                fail(
                    pb::FailureReason::PullFailed,
                    format!(
                        "{}: manifest {} gives blob {} a negative size",
                        source.registry, resolved.digest, desc.digest
                    ),
                )
            })?;
            total = total.saturating_add(size);
            let paths = blob::blob_paths(blobs, &desc.digest)?;
            on_disk += blob::len_on_disk(&paths.complete).max(blob::len_on_disk(&paths.partial));
        }
        self.check_space(
            total.saturating_sub(on_disk).saturating_add(total).saturating_add(resolved.raw.len() as u64),
        )?;

        let layers_total = u32::try_from(resolved.manifest.layers.len()).unwrap_or(u32::MAX);
        let mut tracker = Tracker::new(observer, pb::NodeState::Downloading, total, layers_total);
        tracker.add(on_disk);
        for (i, desc) in wanted.iter().enumerate() {
            blob::download(&fetch, desc, &mut tracker).await?;
            if i > 0 {
                tracker.layer_done();
            }
        }
        tracker.flush();

        observer.phase(pb::NodeState::Verifying);
        let mut tracker = Tracker::new(observer, pb::NodeState::Verifying, total, layers_total);
        let mut verified = Vec::new();
        for (i, desc) in wanted.iter().enumerate() {
            verified.push((desc.digest.clone(), blob::verify(&fetch, desc, &mut tracker).await?));
            if i > 0 {
                tracker.layer_done();
            }
        }
        tracker.flush();

        let layout = layout::Layout {
            manifest_media_type: resolved.media_type,
            manifest_digest: resolved.digest.clone(),
            manifest: resolved.raw,
            tag: source.reference.tag().map(str::to_string),
            blobs: verified.clone(),
        };
        let target = archive.clone();
        let size = tokio::task::spawn_blocking(move || layout::write_archive(&layout, &target))
            .await
            .map_err(|e| fail(pb::FailureReason::PullFailed, format!("writing {}: {e}", archive.display())))?
            .map_err(|e| blob::disk_error(&archive, e))?;
        // The archive holds every blob now; on a small disk one copy is enough.
        for (_, path) in &verified {
            let _ = std::fs::remove_file(path);
        }
        Ok(FetchedImage { archive, manifest_digest: resolved.digest, size })
    }

    /// The platform manifest `source` names, checked against `digest`.
    async fn resolve(&self, fetch: &Fetch<'_>, digest: &str) -> Result<Resolved, FetchError> {
        let reference = if digest.is_empty() {
            fetch.source.reference.clone()
        } else {
            blob::sha256_hex(digest)?;
            fetch.source.reference.clone_with_digest(digest.to_string())
        };
        let (raw, top) = match fetch.manifest(&reference).await {
            Ok(found) => found,
            Err(e) if !digest.is_empty() && e.reason == pb::FailureReason::PullFailed => {
                return Err(self.digest_not_found(fetch, digest, e).await)
            }
            Err(e) => return Err(e),
        };
        if !digest.is_empty() && top != digest {
            return Err(fail(
                pb::FailureReason::DigestMismatch,
                format!(
                    "{}: {} has digest {top}, not the target digest {digest}",
                    fetch.source.registry,
                    reference.whole()
                ),
            ));
        }
        let probe: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| fetch.bad_manifest(&top, e))?;
        if probe.get("manifests").is_none() {
            let manifest: OciImageManifest = serde_json::from_slice(&raw).map_err(|e| fetch.bad_manifest(&top, e))?;
            let media_type = manifest.media_type.clone().unwrap_or_else(|| OCI_IMAGE_MEDIA_TYPE.to_string());
            return Ok(Resolved { raw: raw.to_vec(), digest: top, media_type, manifest });
        }
        let index: OciImageIndex = serde_json::from_slice(&raw).map_err(|e| fetch.bad_manifest(&top, e))?;
        let entry = index.manifests.iter().find(|m| self.platform.matches(m)).ok_or_else(|| {
            fail(
                pb::FailureReason::IncompatibleTarget,
                format!("{}: {} has no manifest for {}", fetch.source.registry, reference.whole(), self.platform),
            )
        })?;
        let (raw, found) = fetch.manifest(&fetch.source.reference.clone_with_digest(entry.digest.clone())).await?;
        if found != entry.digest {
            return Err(fail(
                pb::FailureReason::DigestMismatch,
                format!("{}: manifest {} has digest {found}", fetch.source.registry, entry.digest),
            ));
        }
        let manifest: OciImageManifest = serde_json::from_slice(&raw).map_err(|e| fetch.bad_manifest(&found, e))?;
        Ok(Resolved { raw, digest: found, media_type: entry.media_type.clone(), manifest })
    }

    /// Why the target digest could not be read: DIGEST_MISMATCH when the
    /// tag now names another digest, else the read's own error.
    async fn digest_not_found(&self, fetch: &Fetch<'_>, digest: &str, error: FetchError) -> FetchError {
        let tagged = &fetch.source.reference;
        if tagged.tag().is_none() {
            return error;
        }
        match self.client.fetch_manifest_digest(tagged, &fetch.auth).await {
            Ok(current) if current != digest => fail(
                pb::FailureReason::DigestMismatch,
                format!(
                    "{}: {} has digest {current}, not the target digest {digest} ({})",
                    fetch.source.registry,
                    tagged.whole(),
                    error.message
                ),
            ),
            _ => error,
        }
    }

    /// INSUFFICIENT_SPACE unless the images dir's file system has `needed` bytes free.
    fn check_space(&self, needed: u64) -> Result<(), FetchError> {
        let stat = nix::sys::statvfs::statvfs(&self.images)
            .map_err(|e| fail(pb::FailureReason::PullFailed, format!("{}: {e}", self.images.display())))?;
        #[allow(clippy::useless_conversion)] // the field types differ between targets
        let free = u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size()));
        if free < needed {
            return Err(fail(
                pb::FailureReason::InsufficientSpace,
                format!("{}: {free} bytes free, the image needs {needed} (layers and archive)", self.images.display()),
            ));
        }
        Ok(())
    }
}

impl ImageFetcher for Puller {
    fn fetch<'a>(
        &'a self,
        desired: &'a pb::DesiredState,
        reporter: &'a Reporter,
    ) -> BoxFuture<'a, Result<FetchedImage, FetchError>> {
        Box::pin(self.pull(&desired.target_image_ref, &desired.target_image_digest, reporter))
    }
}

/// A platform manifest and what the archive needs of it.
struct Resolved {
    raw: Vec<u8>,
    digest: String,
    media_type: String,
    manifest: OciImageManifest,
}

/// One pull from one source.
pub(crate) struct Fetch<'a> {
    client: &'a Client,
    source: &'a Source,
    auth: RegistryAuth,
    observer: &'a dyn PullObserver,
    blobs: PathBuf,
    retries: u32,
    plain_http: bool,
    throttle: Mutex<Throttle>,
}

impl Fetch<'_> {
    /// CANCELLED once the observer says so.
    fn check_cancelled(&self) -> Result<(), FetchError> {
        match self.observer.cancelled() {
            Some(reason) => Err(fail(pb::FailureReason::Cancelled, format!("pull cancelled: {reason}"))),
            None => Ok(()),
        }
    }

    /// Waits for the bandwidth cap to allow `n` more bytes.
    async fn throttle(&self, n: u64) {
        let wait = self.throttle.lock().unwrap_or_else(PoisonError::into_inner).delay(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// A manifest and the sha256 of its bytes, with retries.
    async fn manifest(&self, reference: &Reference) -> Result<(Vec<u8>, String), FetchError> {
        let accepted = [
            OCI_IMAGE_MEDIA_TYPE,
            OCI_IMAGE_INDEX_MEDIA_TYPE,
            IMAGE_MANIFEST_MEDIA_TYPE,
            IMAGE_MANIFEST_LIST_MEDIA_TYPE,
        ];
        let what = format!("reading the manifest of {}", reference.whole());
        let mut failures = 0;
        loop {
            self.check_cancelled()?;
            match self.client.pull_manifest_raw(reference, &self.auth, &accepted).await {
                Ok((raw, _)) if raw.len() > MAX_MANIFEST_BYTES => {
                    return Err(fail(
                        pb::FailureReason::PullFailed,
                        format!("{}: {what}: larger than {MAX_MANIFEST_BYTES} bytes", self.source.registry),
                    ))
                }
                Ok((raw, _)) => {
                    let digest = blob::sha256_digest(&raw);
                    return Ok((raw.to_vec(), digest));
                }
                Err(e) => failures = self.retry_or_fail(&what, e, failures).await?,
            }
        }
    }

    /// After `failures` failed tries and now `error`: waits and returns the
    /// new count when another try is worth it, or the error to report.
    async fn retry_or_fail(&self, what: &str, error: OciDistributionError, failures: u32) -> Result<u32, FetchError> {
        if let OciDistributionError::DigestError(e) = &error {
            return Err(fail(pb::FailureReason::DigestMismatch, format!("{}: {what}: {e}", self.source.registry)));
        }
        if !retryable(&error) || failures >= self.retries {
            let hint = match &error {
                OciDistributionError::RequestError(e) if !self.plain_http && (e.is_connect() || e.is_request()) => format!(
                    "; registries are reached over HTTPS only: if {} speaks plain HTTP, list it in [registry] plain_http",
                    self.source.registry
                ),
                _ => String::new(),
            };
            return Err(fail(
                pb::FailureReason::PullFailed,
                format!("{}: {what}: {}{}{hint}", self.source.registry, describe(&error), attempts(failures)),
            ));
        }
        let delay = FIRST_RETRY_DELAY.saturating_mul(1 << failures.min(8)).min(MAX_RETRY_DELAY);
        tracing::debug!(registry = %self.source.registry, what, error = %describe(&error), ?delay, "retrying");
        tokio::time::sleep(delay).await;
        self.check_cancelled()?;
        Ok(failures + 1)
    }

    fn bad_manifest(&self, digest: &str, e: serde_json::Error) -> FetchError {
        fail(
            pb::FailureReason::PullFailed,
            format!(
                "{}: manifest {digest} of {} is not an OCI manifest or index: {e}",
                self.source.registry,
                self.source.reference.whole()
            ),
        )
    }
}

fn attempts(failures: u32) -> String {
    if failures == 0 {
        String::new()
    } else {
        format!(" (after {} attempts)", failures + 1)
    }
}

/// True for failures another try may cure: connections, 5xx, 429.
fn retryable(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::RequestError(e) => {
            !e.is_builder() && e.status().is_none_or(|s| s.is_server_error() || s.as_u16() == 429)
        }
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::IoError(_) | OciDistributionError::GenericError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|e| e.code == oci_client::errors::OciErrorCode::Toomanyrequests)
        }
        _ => false,
    }
}

/// `error` for a person: the HTTP status when there was one, and the causes.
fn describe(error: &OciDistributionError) -> String {
    match error {
        OciDistributionError::ServerError { code, message, .. } => format!("HTTP {code}: {message}"),
        OciDistributionError::UnauthorizedError { .. } => {
            "HTTP 401 Unauthorized: check the credentials for this registry".to_string()
        }
        OciDistributionError::AuthenticationFailure(text) => format!("authentication refused: {text}"),
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<String> = envelope.errors.iter().map(|e| format!("{:?}: {}", e.code, e.message)).collect();
            format!("the registry refused: {}", codes.join(", "))
        }
        other => kairos_fleet_domain::error_text::chain(other),
    }
}

/// A FetchError.
pub(crate) fn fail(reason: pb::FailureReason, message: String) -> FetchError {
    FetchError { reason, message }
}
