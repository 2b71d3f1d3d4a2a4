//! Blobs on disk under `<state_dir>/images/blobs/sha256/`: downloaded to
//! `<hex>.partial` (kept across attempts and restarts, continued with a
//! Range request), verified, then renamed to `<hex>`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kairos_fleet_proto::fleet::v1 as pb;
use oci_client::client::BlobResponse;
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::manifest::OciDescriptor;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::progress::Tracker;
use super::{fail, Fetch};
use crate::upgrader::FetchError;

/// Where a blob lives once verified, and while it is being downloaded.
#[derive(Debug, Clone)]
pub(super) struct BlobPaths {
    /// The verified blob.
    pub complete: PathBuf,
    /// The download in progress.
    pub partial: PathBuf,
}

/// The paths of `digest` under `dir`; refuses anything but `sha256:<64 hex>`,
/// so a manifest cannot name a path outside the store.
pub(super) fn blob_paths(dir: &Path, digest: &str) -> Result<BlobPaths, FetchError> {
    let hex = sha256_hex(digest)?;
    Ok(BlobPaths { complete: dir.join(hex), partial: dir.join(format!("{hex}.partial")) })
}

/// The hex part of a `sha256:` digest.
pub(super) fn sha256_hex(digest: &str) -> Result<&str, FetchError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
            Ok(hex)
        }
        _ => Err(fail(
            pb::FailureReason::DigestMismatch,
            format!("{digest:?} is not a sha256 digest (`sha256:` and 64 lowercase hex digits)"),
        )),
    }
}

/// `sha256:<hex>` of `bytes`.
pub(super) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Bytes of `path` on disk, 0 when absent.
pub(super) fn len_on_disk(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Downloads `desc` to its partial file until it holds `desc.size` bytes,
/// continuing from what is already there.
pub(super) async fn download(
    fetch: &Fetch<'_>,
    desc: &OciDescriptor,
    tracker: &mut Tracker<'_>,
) -> Result<(), FetchError> {
    let paths = blob_paths(&fetch.blobs, &desc.digest)?;
    if paths.complete.exists() {
        return Ok(());
    }
    let size = u64::try_from(desc.size).unwrap_or(0);
    let what = format!("downloading blob {}", desc.digest);
    let mut failures = 0u32;
    loop {
        fetch.check_cancelled()?;
        let mut offset = len_on_disk(&paths.partial);
        if offset > size {
            // More than the manifest promised: not this blob.
            remove(&paths.partial);
            offset = 0;
        }
        if offset == size {
            return Ok(());
        }
        let response = if offset == 0 {
            fetch.client.pull_blob_stream(&fetch.source.reference, desc).await.map(BlobResponse::Full)
        } else {
            fetch.client.pull_blob_stream_partial(&fetch.source.reference, desc, offset, None).await
        };
        let (mut stream, append) = match response {
            Ok(BlobResponse::Partial(stream)) => (stream, true),
            Ok(BlobResponse::Full(stream)) => (stream, false),
            Err(e) => {
                failures = fetch.retry_or_fail(&what, e, failures).await?;
                continue;
            }
        };
        if !append && offset > 0 {
            // The registry ignored the Range: start over.
            tracker.undo(offset);
            offset = 0;
        }
        let mut file = open_partial(&paths.partial, append).await?;
        let mut received = 0u64;
        let mut broke = None;
        while let Some(chunk) = stream.next().await {
            fetch.check_cancelled()?;
            match chunk {
                Ok(bytes) => {
                    let n = bytes.len() as u64;
                    if offset + received + n > size {
                        remove(&paths.partial);
                        return Err(fail(
                            pb::FailureReason::DigestMismatch,
                            format!(
                                "{}: blob {} is longer than the {size} bytes its manifest gives",
                                fetch.source.registry, desc.digest
                            ),
                        ));
                    }
                    file.write_all(&bytes).await.map_err(|e| disk_error(&paths.partial, e))?;
                    received += n;
                    tracker.add(n);
                    fetch.throttle(n).await;
                }
                Err(e) => {
                    broke = Some(e);
                    break;
                }
            }
        }
        file.flush().await.map_err(|e| disk_error(&paths.partial, e))?;
        drop(file);
        match broke {
            None if offset + received == size => return Ok(()),
            None => {
                failures = fetch
                    .retry_or_fail(
                        &what,
                        OciDistributionError::GenericError(Some(format!(
                            "the download stopped after {} of {size} bytes",
                            offset + received
                        ))),
                        if received > 0 { 0 } else { failures },
                    )
                    .await?;
            }
            Some(e) if e.get_ref().is_some_and(|inner| inner.is::<DigestError>()) => {
                remove(&paths.partial);
                return Err(fail(
                    pb::FailureReason::DigestMismatch,
                    format!("{}: blob {} does not match its digest: {e}; deleted", fetch.source.registry, desc.digest),
                ));
            }
            // Progress resets the retry budget: a link that breaks now and
            // then still gets there.
            Some(e) => {
                failures = fetch
                    .retry_or_fail(&what, OciDistributionError::IoError(e), if received > 0 { 0 } else { failures })
                    .await?;
            }
        }
    }
}

/// Checks the downloaded `desc` against its digest and moves it into the
/// store; a mismatch deletes it.
pub(super) async fn verify(
    fetch: &Fetch<'_>,
    desc: &OciDescriptor,
    tracker: &mut Tracker<'_>,
) -> Result<PathBuf, FetchError> {
    let paths = blob_paths(&fetch.blobs, &desc.digest)?;
    let path = if paths.complete.exists() { paths.complete.clone() } else { paths.partial.clone() };
    let expected = desc.digest.clone();
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| disk_error(&path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        fetch.check_cancelled()?;
        let n = tokio::io::AsyncReadExt::read(&mut file, &mut buf).await.map_err(|e| disk_error(&path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tracker.add(n as u64);
    }
    let actual = format!("sha256:{:x}", hasher.finalize());
    if actual != expected {
        remove(&path);
        return Err(fail(
            pb::FailureReason::DigestMismatch,
            format!("{}: blob {expected} has digest {actual}; deleted, nothing installed", fetch.source.registry),
        ));
    }
    if path != paths.complete {
        tokio::fs::rename(&path, &paths.complete).await.map_err(|e| disk_error(&paths.complete, e))?;
    }
    Ok(paths.complete)
}

async fn open_partial(path: &Path, append: bool) -> Result<tokio::fs::File, FetchError> {
    let mut options = tokio::fs::OpenOptions::new();
    options.create(true);
    if append {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    options.open(path).await.map_err(|e| disk_error(path, e))
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete a blob");
        }
    }
}

/// A local file error; a full disk is INSUFFICIENT_SPACE.
pub(super) fn disk_error(path: &Path, e: std::io::Error) -> FetchError {
    let reason = if e.raw_os_error() == Some(nix::libc::ENOSPC) {
        pb::FailureReason::InsufficientSpace
    } else {
        pb::FailureReason::PullFailed
    };
    fail(reason, format!("{}: {e}", path.display()))
}

/// A token bucket over the download stream: at most `rate` bytes per
/// second on average, with at most one second of burst after a pause.
#[derive(Debug)]
pub(super) struct Throttle {
    rate: u64,
    start: Instant,
    sent: u64,
}

impl Throttle {
    /// A throttle at `rate` bytes per second; 0 = none.
    pub fn new(rate: u64) -> Throttle {
        Throttle { rate, start: Instant::now(), sent: 0 }
    }

    /// How long to wait before `n` more bytes fit the rate.
    pub fn delay(&mut self, n: u64) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let elapsed = self.start.elapsed();
        let allowed = Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
        if elapsed > allowed + Duration::from_secs(1) {
            // Idle for a while: refill one second's worth, not more.
            self.start = Instant::now().checked_sub(Duration::from_secs(1)).unwrap_or_else(Instant::now);
            self.sent = 0;
        }
        self.sent += n;
        let due = Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
        due.saturating_sub(self.start.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_holds_the_rate_and_no_cap_never_waits() {
        assert_eq!(Throttle::new(0).delay(u64::MAX / 2), Duration::ZERO);
        let mut throttle = Throttle::new(1000);
        let wait = throttle.delay(2000);
        assert!(wait > Duration::from_millis(1900) && wait <= Duration::from_secs(2), "{wait:?}");
        let wait = throttle.delay(1000);
        assert!(wait > Duration::from_millis(2900), "{wait:?}");
    }

    #[test]
    fn only_sha256_digests_name_blob_files() {
        let dir = Path::new("/state/images/blobs/sha256");
        let hex = "a".repeat(64);
        assert_eq!(blob_paths(dir, &format!("sha256:{hex}")).expect("valid").complete, dir.join(&hex));
        for bad in ["sha256:../../etc/passwd", "sha512:aa", &format!("sha256:{}", "A".repeat(64))] {
            assert_eq!(blob_paths(dir, bad).expect_err(bad).reason, pb::FailureReason::DigestMismatch);
        }
    }
}
