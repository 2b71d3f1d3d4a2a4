//! `kairosctl releases sync`: add every upgrade image a registry lists.

use std::fmt::Write as _;

use kairos_fleet_proto::fleet::v1 as pb;
use pb::release_service_client::ReleaseServiceClient;
use serde::{Deserialize, Serialize};

use super::output::{Render, Table};
use super::releases::ReleaseView;
use super::{CliError, Connection};

/// A tag the sync did not add.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedView {
    /// The tag's full reference.
    pub image_ref: String,
    /// `disk-image`, `not-a-release`, `unparseable`, `prerelease`,
    /// `registry-error` or `unknown`.
    pub reason: String,
    /// What to do about it.
    pub detail: String,
}

/// `releases sync`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncView {
    /// Images added (or that would be, on dry run).
    pub added: Vec<ReleaseView>,
    /// Tags not added, with reasons.
    pub skipped: Vec<SkippedView>,
    /// Tags skipped as already in the catalog.
    pub already_known: u32,
    /// Tags the registry listed.
    pub tags_seen: u32,
    /// Whether nothing was stored.
    pub dry_run: bool,
}

/// The lowercase name of a skip reason.
pub fn skip_reason_name(reason: pb::SkipReason) -> &'static str {
    match reason {
        pb::SkipReason::DiskImage => "disk-image",
        pb::SkipReason::NotARelease => "not-a-release",
        pb::SkipReason::Unparseable => "unparseable",
        pb::SkipReason::Prerelease => "prerelease",
        pb::SkipReason::RegistryError => "registry-error",
        pb::SkipReason::Unspecified => "unknown",
    }
}

impl From<pb::SyncReleasesResponse> for SyncView {
    fn from(r: pb::SyncReleasesResponse) -> SyncView {
        SyncView {
            added: r.added.into_iter().map(ReleaseView::from).collect(),
            skipped: r
                .skipped
                .into_iter()
                .map(|s| SkippedView {
                    reason: skip_reason_name(s.reason()).to_string(),
                    image_ref: s.image_ref,
                    detail: s.detail,
                })
                .collect(),
            already_known: r.already_known,
            tags_seen: r.tags_seen,
            dry_run: r.dry_run,
        }
    }
}

impl Render for SyncView {
    fn table(&self, out: &mut String) {
        let verb = if self.dry_run { "would add" } else { "added" };
        let _ = writeln!(
            out,
            "{} tags seen: {verb} {}, {} already known, {} skipped",
            self.tags_seen,
            self.added.len(),
            self.already_known,
            self.skipped.len()
        );
        if !self.added.is_empty() {
            let mut table = Table::new(&["RELEASE", "IMAGE"]);
            for r in &self.added {
                table.row(vec![r.release.clone(), r.image_ref.clone()]);
            }
            table.write(out);
        }
        if !self.skipped.is_empty() {
            let mut table = Table::new(&["SKIPPED", "REASON", "DETAIL"]);
            for s in &self.skipped {
                table.row(vec![s.image_ref.clone(), s.reason.clone(), s.detail.clone()]);
            }
            table.write(out);
        }
    }
}

/// `releases sync`.
pub async fn sync(conn: &Connection, request: pb::SyncReleasesRequest) -> Result<SyncView, CliError> {
    let response = conn
        .call("ReleaseService/SyncReleases", |channel| {
            let request = request.clone();
            async move { ReleaseServiceClient::new(channel).sync_releases(request).await }
        })
        .await?;
    Ok(response.into())
}
