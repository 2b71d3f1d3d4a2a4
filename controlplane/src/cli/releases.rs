//! `kairosctl releases ...`: the release catalog.

use kairos_fleet_proto::fleet::v1 as pb;
use pb::release_service_client::ReleaseServiceClient;
use serde::{Deserialize, Serialize};
use tonic::Code;

use super::output::{or_dash, yes_no, Render, Table};
use super::{timestamp, CliError, Connection};

/// Largest page the server serves; a larger `--limit` takes several pages.
const MAX_PAGE_SIZE: u32 = 1000;

/// An image family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyView {
    /// Flavor id.
    pub flavor: String,
    /// Upstream OS branch; empty for v1.x images.
    pub flavor_release: String,
    /// `core` or `standard`.
    pub variant: String,
    /// `amd64` or `arm64`.
    pub arch: String,
    /// Board model.
    pub model: String,
    /// Trusted-boot (UKI) family.
    pub trusted_boot: bool,
}

impl From<pb::ImageFamily> for FamilyView {
    fn from(f: pb::ImageFamily) -> FamilyView {
        FamilyView {
            flavor: f.flavor,
            flavor_release: f.flavor_release,
            variant: f.variant,
            arch: f.arch,
            model: f.model,
            trusted_boot: f.trusted_boot,
        }
    }
}

/// One upgrade image in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseView {
    /// Full image reference with tag.
    pub image_ref: String,
    /// Manifest digest; empty when unresolved.
    pub digest: String,
    /// The image family; absent when the server sent none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<FamilyView>,
    /// Kairos release, e.g. `v2.4.2`.
    pub release: String,
    /// Kubernetes version, e.g. `v1.27.6+k3s1`; empty on core images.
    pub software_version: String,
    /// `k3s` or `k0s`; empty on core images.
    pub software_distro: String,
    /// Whether the release is a pre-release.
    pub prerelease: bool,
    /// Whether this is a trusted-boot (UKI) image.
    pub trusted_boot: bool,
    /// Tag grammar: `v1`, `v2`, `v3.5` or `unknown`.
    pub grammar: String,
    /// `current`, `patch-available`, `unsupported-branch` or `unknown`.
    pub support_status: String,
    /// When it was added, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_at: Option<String>,
    /// `manual` or `sync:<registry>/<org>`.
    pub source: String,
}

/// `releases list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseListView {
    /// Releases, newest first.
    pub releases: Vec<ReleaseView>,
}

/// One `releases add` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedReleaseView {
    /// The release as stored (or as it would be, on dry run).
    pub release: ReleaseView,
    /// False when it was already in the catalog, or on dry run.
    pub created: bool,
}

/// `releases add`: every reference the server accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddReleasesView {
    /// Results in the order given.
    pub added: Vec<AddedReleaseView>,
}

/// Filters and bounds of `releases list`.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// The filters, as sent with every page (page fields are overwritten).
    pub filter: pb::ListReleasesRequest,
    /// Stop after this many releases; `None` = every page.
    pub limit: Option<u32>,
}

/// The lowercase name of a support status.
pub fn support_name(status: pb::SupportStatus) -> &'static str {
    match status {
        pb::SupportStatus::Current => "current",
        pb::SupportStatus::PatchAvailable => "patch-available",
        pb::SupportStatus::UnsupportedBranch => "unsupported-branch",
        pb::SupportStatus::Unknown | pb::SupportStatus::Unspecified => "unknown",
    }
}

/// The short name of a tag grammar.
pub fn grammar_name(grammar: pb::TagGrammar) -> &'static str {
    match grammar {
        pb::TagGrammar::V1 => "v1",
        pb::TagGrammar::V2 => "v2",
        pb::TagGrammar::V35 => "v3.5",
        pb::TagGrammar::Unspecified => "unknown",
    }
}

impl From<pb::Release> for ReleaseView {
    fn from(r: pb::Release) -> ReleaseView {
        ReleaseView {
            grammar: grammar_name(r.grammar()).to_string(),
            support_status: support_name(r.support_status()).to_string(),
            added_at: r.added_at.as_ref().and_then(timestamp),
            family: r.family.map(FamilyView::from),
            image_ref: r.image_ref,
            digest: r.digest,
            release: r.release,
            software_version: r.software_version,
            software_distro: r.software_distro,
            prerelease: r.prerelease,
            trusted_boot: r.trusted_boot,
            source: r.source,
        }
    }
}

fn release_table<'a>(releases: impl Iterator<Item = (&'a ReleaseView, Option<bool>)>, out: &mut String) {
    let mut rows = releases.peekable();
    let with_created = rows.peek().is_some_and(|(_, created)| created.is_some());
    let mut header = vec!["RELEASE", "FLAVOR", "VARIANT", "ARCH", "MODEL", "SOFTWARE", "SUPPORT", "IMAGE"];
    if with_created {
        header.push("CREATED");
    }
    let mut table = Table::new(&header);
    for (r, created) in rows {
        let family = r.family.as_ref();
        let field = |get: fn(&FamilyView) -> &str| or_dash(family.map(get).unwrap_or(""));
        let flavor = match family {
            Some(f) if !f.flavor_release.is_empty() => format!("{} {}", f.flavor, f.flavor_release),
            _ => field(|f| &f.flavor),
        };
        let mut release = r.release.clone();
        if r.trusted_boot {
            release.push_str(" (uki)");
        }
        let mut row = vec![
            release,
            flavor,
            field(|f| &f.variant),
            field(|f| &f.arch),
            field(|f| &f.model),
            or_dash(&r.software_version),
            r.support_status.clone(),
            r.image_ref.clone(),
        ];
        if let Some(created) = created {
            row.push(yes_no(created));
        }
        table.row(row);
    }
    table.write(out);
}

impl Render for ReleaseListView {
    fn table(&self, out: &mut String) {
        if self.releases.is_empty() {
            out.push_str("no releases match\n");
            return;
        }
        release_table(self.releases.iter().map(|r| (r, None)), out);
    }
}

impl Render for AddReleasesView {
    fn table(&self, out: &mut String) {
        if self.added.is_empty() {
            out.push_str("nothing added\n");
            return;
        }
        release_table(self.added.iter().map(|a| (&a.release, Some(a.created))), out);
    }
}

/// `releases list`: follows page tokens until the last page or the limit.
pub async fn list(conn: &Connection, query: ListQuery) -> Result<ReleaseListView, CliError> {
    let mut releases: Vec<ReleaseView> = Vec::new();
    let mut token = String::new();
    loop {
        let wanted = query.limit.map(|limit| limit.saturating_sub(releases.len() as u32));
        if wanted == Some(0) {
            break;
        }
        let request = pb::ListReleasesRequest {
            page_size: wanted.map_or(0, |w| w.min(MAX_PAGE_SIZE)),
            page_token: token.clone(),
            ..query.filter.clone()
        };
        let page = conn
            .call("ReleaseService/ListReleases", |channel| {
                let request = request.clone();
                async move { ReleaseServiceClient::new(channel).list_releases(request).await }
            })
            .await?;
        let take = wanted.map_or(page.releases.len(), |w| page.releases.len().min(w as usize));
        releases.extend(page.releases.into_iter().take(take).map(ReleaseView::from));
        if page.next_page_token.is_empty() {
            break;
        }
        if page.next_page_token == token {
            return Err(CliError::Output(format!(
                "the server returned page token {token:?} twice; stopping after {} releases",
                releases.len()
            )));
        }
        token = page.next_page_token;
    }
    Ok(ReleaseListView { releases })
}

/// What `releases add` did: the references accepted, and those refused.
#[derive(Debug)]
pub struct AddOutcome {
    /// Accepted references.
    pub view: AddReleasesView,
    /// Refused references with why, in the order given.
    pub refused: Vec<(String, CliError)>,
}

/// `releases add`: one AddRelease call per reference, in order. A reference
/// the server refuses is recorded and the rest still go; a failure that
/// would hit every call (auth, no replica) stops at once.
pub async fn add(conn: &Connection, refs: &[String], dry_run: bool) -> Result<AddOutcome, CliError> {
    let mut added = Vec::new();
    let mut refused = Vec::new();
    for reference in refs {
        // `image:tag@sha256:...` carries its digest along.
        let (image_ref, digest) = match reference.split_once('@') {
            Some((image, digest)) => (image.to_string(), digest.to_string()),
            None => (reference.clone(), String::new()),
        };
        let request = pb::AddReleaseRequest { image_ref, digest, dry_run };
        let result = conn
            .call("ReleaseService/AddRelease", |channel| {
                let request = request.clone();
                async move { ReleaseServiceClient::new(channel).add_release(request).await }
            })
            .await;
        match result {
            Ok(pb::AddReleaseResponse { release: Some(release), created }) => {
                added.push(AddedReleaseView { release: release.into(), created })
            }
            Ok(pb::AddReleaseResponse { release: None, .. }) => {
                let message = "the server accepted it but returned no release".to_string();
                refused.push((reference.clone(), CliError::Output(message)));
            }
            Err(e) if per_reference(&e) => refused.push((reference.clone(), e)),
            Err(e) => return Err(e),
        }
    }
    Ok(AddOutcome { view: AddReleasesView { added }, refused })
}

/// True for errors about one reference rather than the connection.
fn per_reference(e: &CliError) -> bool {
    matches!(
        e.code(),
        Some(
            Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists | Code::NotFound | Code::OutOfRange
        )
    ) || matches!(e, CliError::Output(_))
}
