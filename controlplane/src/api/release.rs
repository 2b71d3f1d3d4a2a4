//! `kairos.fleet.v1.ReleaseService`: the catalog of upgrade images,
//! stored under `releases/<image ref>` as JSON [`ReleaseRecord`]s. An image
//! is stored together with its audit entry; adding one already there
//! changes nothing and is not audited. SyncReleases adds what a registry
//! lists (`sync`), through the same path as AddRelease (`catalog`).

use std::cmp::Reverse;
use std::collections::BTreeMap;

use super::audit::{method, Call};
use super::auth::authorize;
use crate::security::Role;
use kairos_fleet_proto::fleet::v1 as pb;
use kairos_fleet_proto::fleet::v1::release_service_server::{ReleaseService, ReleaseServiceServer};
use semver::Version;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use super::{read_status, wants_linearizable};
use crate::fleet::image::{ImageRef, TagGrammar};
use crate::fleet::policy::{support_status, SupportStatus};
use crate::raft::MAX_MESSAGE_BYTES;
use crate::replica::ReplicaClient;

mod catalog;
pub mod registry;
mod sync;
mod tags;

use catalog::Stored;
pub use registry::{parse_registry_host, RegistrySettings};

/// Key prefix of the catalog in the replicated store.
pub const RELEASES_PREFIX: &str = "releases/";
/// Longest accepted image reference.
const MAX_REF_LEN: usize = 512;
/// Page size when the request asks for 0, and the largest honoured.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// One catalog entry as stored (serde_json): the parsed parts of the
/// reference, so listing and filtering need no re-parsing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// Canonical image reference without digest (also the key suffix).
    pub image_ref: String,
    /// Manifest digest (`sha256:...`); empty when unresolved.
    pub digest: String,
    /// Flavor id.
    pub flavor: String,
    /// Flavor release; empty for v1.x images.
    pub flavor_release: String,
    /// `core` or `standard`.
    pub variant: String,
    /// `amd64` or `arm64`.
    pub arch: String,
    /// Board model.
    pub model: String,
    /// Kairos release, e.g. `v2.4.2`.
    pub release: String,
    /// Kubernetes version in upstream form (`v1.27.6+k3s1`); empty on core images.
    pub software_version: String,
    /// `k3s` or `k0s`; empty on core images.
    pub software_distro: String,
    /// Trusted-boot (UKI) image.
    pub trusted_boot: bool,
    /// Tag grammar: `v1`, `v2` or `v3.5`.
    pub grammar: String,
    /// When it was added, in milliseconds since the Unix epoch.
    pub added_at_ms: i64,
    /// `manual` (AddRelease) or `sync:<registry>/<org>`.
    pub source: String,
}

impl ReleaseRecord {
    /// The record for a parsed upgrade target, added now by hand.
    pub fn manual(image: &ImageRef, digest: Option<&str>) -> Self {
        Self::new(image, digest, "manual")
    }

    /// The record for a parsed upgrade target, added now from `source`
    /// (`manual` or `sync:<registry>/<org>`); `digest` wins over the reference's.
    pub fn new(image: &ImageRef, digest: Option<&str>, source: &str) -> Self {
        let family = image.family();
        let reference = image.to_string();
        let image_ref = reference.split_once('@').map_or(reference.as_str(), |(r, _)| r).to_owned();
        ReleaseRecord {
            image_ref,
            digest: digest.or(image.digest()).unwrap_or_default().to_owned(),
            flavor: family.flavor,
            flavor_release: family.flavor_release,
            variant: family.variant.as_str().to_owned(),
            arch: family.arch.as_str().to_owned(),
            model: family.model,
            release: format!("v{}", image.release()),
            software_version: image.software().map(|s| s.upstream()).unwrap_or_default(),
            software_distro: image.software().map(|s| s.distro.as_str().to_owned()).unwrap_or_default(),
            trusted_boot: image.trusted_boot(),
            grammar: image.grammar().as_str().to_owned(),
            added_at_ms: jiff::Timestamp::now().as_millisecond(),
            source: source.to_owned(),
        }
    }

    /// The store key of this record.
    pub fn key(&self) -> String {
        format!("{RELEASES_PREFIX}{}", self.image_ref)
    }

    fn version(&self) -> Option<Version> {
        Version::parse(self.release.trim_start_matches('v')).ok()
    }

    fn family_key(&self) -> (&str, &str, &str, &str, &str, bool) {
        (&self.flavor, &self.flavor_release, &self.variant, &self.arch, &self.model, self.trusted_boot)
    }

    fn to_proto(&self, support: pb::SupportStatus) -> pb::Release {
        let grammar = match self.grammar.as_str() {
            g if g == TagGrammar::V1.as_str() => pb::TagGrammar::V1,
            g if g == TagGrammar::V2.as_str() => pb::TagGrammar::V2,
            g if g == TagGrammar::V35.as_str() => pb::TagGrammar::V35,
            _ => pb::TagGrammar::Unspecified,
        };
        pb::Release {
            image_ref: self.image_ref.clone(),
            digest: self.digest.clone(),
            family: Some(pb::ImageFamily {
                flavor: self.flavor.clone(),
                flavor_release: self.flavor_release.clone(),
                variant: self.variant.clone(),
                arch: self.arch.clone(),
                model: self.model.clone(),
                trusted_boot: self.trusted_boot,
            }),
            release: self.release.clone(),
            software_version: self.software_version.clone(),
            software_distro: self.software_distro.clone(),
            prerelease: self.version().is_some_and(|v| !v.pre.is_empty()),
            trusted_boot: self.trusted_boot,
            grammar: grammar as i32,
            support_status: support as i32,
            added_at: Some(prost_types::Timestamp {
                seconds: self.added_at_ms.div_euclid(1000),
                // Below 1e9 by construction, so the cast cannot truncate.
                nanos: (self.added_at_ms.rem_euclid(1000) * 1_000_000) as i32,
            }),
            source: self.source.clone(),
        }
    }
}

/// Where a release sorts in the catalog: newest release first, then by reference.
type Position = (Reverse<Option<Version>>, String);

fn position(release: &str, image_ref: &str) -> Position {
    (Reverse(Version::parse(release.trim_start_matches('v')).ok()), image_ref.to_owned())
}

/// `ReleaseService` of one replica.
#[derive(Clone)]
pub struct ReleaseApi {
    client: ReplicaClient,
    registry: RegistrySettings,
}

impl ReleaseApi {
    /// The service answering through `client`'s replica; SyncReleases
    /// reaches registries over HTTPS only.
    pub fn new(client: ReplicaClient) -> Self {
        ReleaseApi { client, registry: RegistrySettings::default() }
    }

    /// The same service, reaching registries with `settings`.
    pub fn with_registry(self, settings: RegistrySettings) -> Self {
        ReleaseApi { registry: settings, ..self }
    }

    /// The tonic server wrapper with the replica's message limits.
    pub fn into_server(self) -> ReleaseServiceServer<Self> {
        ReleaseServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Every record in the catalog, from the local applied state.
    fn all(&self) -> Result<Vec<ReleaseRecord>, Status> {
        self.client
            .reader()
            .scan_prefix(RELEASES_PREFIX.as_bytes())
            .map(|item| {
                let (key, kv) = item.map_err(|e| Status::internal(e.to_string()))?;
                serde_json::from_slice(&kv.value).map_err(|e| {
                    Status::internal(format!("stored release {} does not decode: {e}", key.escape_ascii()))
                })
            })
            .collect()
    }
}

/// Parses the request's reference and digest; errors name the field.
fn parse_add(req: &pb::AddReleaseRequest) -> Result<ReleaseRecord, Status> {
    let reference = req.image_ref.trim();
    if reference.is_empty() || reference.len() > MAX_REF_LEN {
        return Err(Status::invalid_argument(format!(
            "image_ref: must be an image reference of 1 to {MAX_REF_LEN} characters"
        )));
    }
    let mut image = ImageRef::upgrade_target(reference)
        .map_err(|e| Status::invalid_argument(format!("image_ref: {e} (part: {})", e.field())))?;
    let digest = req.digest.trim();
    if !digest.is_empty() {
        if image.digest().is_some_and(|d| d != digest) {
            return Err(Status::invalid_argument("digest: differs from the digest in image_ref"));
        }
        image = image.with_digest(digest).map_err(|e| Status::invalid_argument(format!("digest: {e}")))?;
    }
    Ok(ReleaseRecord::manual(&image, None))
}

/// The position after which a page starts: the last (release, reference) shown.
fn page_token(record: &ReleaseRecord) -> String {
    format!("{}|{}", record.release, record.image_ref).bytes().map(|b| format!("{b:02x}")).collect()
}

fn parse_page_token(token: &str) -> Result<Option<Position>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Status::invalid_argument("page_token: not a token this server returned");
    if token.len() % 2 != 0 {
        return Err(invalid());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| token.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (release, image_ref) = text.split_once('|').ok_or_else(invalid)?;
    Ok(Some(position(release, image_ref)))
}

fn support_of(status: SupportStatus) -> pb::SupportStatus {
    match status {
        SupportStatus::Current => pb::SupportStatus::Current,
        SupportStatus::PatchAvailable => pb::SupportStatus::PatchAvailable,
        SupportStatus::UnsupportedBranch => pb::SupportStatus::UnsupportedBranch,
    }
}

fn matches(filter: &str, value: &str) -> bool {
    filter.is_empty() || filter.eq_ignore_ascii_case(value)
}

#[tonic::async_trait]
impl ReleaseService for ReleaseApi {
    async fn list_releases(
        &self,
        request: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        authorize(self.client.reader(), &request, Role::Viewer)?;
        if wants_linearizable(&request)? {
            self.client.read_linearizable().await.map_err(read_status)?;
        }
        let req = request.into_inner();
        let after = parse_page_token(&req.page_token)?;
        let page_size = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let all = self.all()?;
        // Support status is relative to the whole family, filters aside.
        let mut known: BTreeMap<(&str, &str, &str, &str, &str, bool), Vec<Version>> = BTreeMap::new();
        for record in &all {
            if let Some(v) = record.version() {
                known.entry(record.family_key()).or_default().push(v);
            }
        }
        let mut selected: Vec<&ReleaseRecord> = all
            .iter()
            .filter(|r| {
                matches(&req.flavor, &r.flavor)
                    && matches(&req.flavor_release, &r.flavor_release)
                    && matches(&req.variant, &r.variant)
                    && matches(&req.arch, &r.arch)
                    && matches(&req.model, &r.model)
                    && (req.include_prereleases || r.version().is_some_and(|v| v.pre.is_empty()))
            })
            .collect();
        selected.sort_by_cached_key(|r| position(&r.release, &r.image_ref));
        if let Some(mark) = after {
            selected.retain(|r| position(&r.release, &r.image_ref) > mark);
        }
        let more = selected.len() > page_size;
        selected.truncate(page_size);
        let releases = selected
            .iter()
            .map(|r| {
                let versions = known.get(&r.family_key()).map(Vec::as_slice).unwrap_or_default();
                let support =
                    r.version().map_or(pb::SupportStatus::Unknown, |v| support_of(support_status(&v, versions)));
                r.to_proto(support)
            })
            .collect();
        let next_page_token =
            if more { selected.last().map(|r| page_token(r)).unwrap_or_default() } else { String::new() };
        Ok(Response::new(pb::ListReleasesResponse { releases, next_page_token }))
    }

    /// Adds one image; adding a reference already in the catalog is a no-op
    /// that returns the stored entry with `created = false`.
    async fn add_release(
        &self,
        request: Request<pb::AddReleaseRequest>,
    ) -> Result<Response<pb::AddReleaseResponse>, Status> {
        let caller = authorize(self.client.reader(), &request, Role::Operator)?;
        let call = Call::new(&request, method::ADD_RELEASE, &caller);
        let req = request.into_inner();
        let record = parse_add(&req)?;
        if req.dry_run {
            return Ok(Response::new(pb::AddReleaseResponse {
                release: Some(record.to_proto(pb::SupportStatus::Unspecified)),
                created: false,
            }));
        }
        let summary = |_: &ReleaseRecord| format!("image_ref={} digest={}", req.image_ref.trim(), req.digest.trim());
        let stored = catalog::store(&self.client, &call, std::slice::from_ref(&record), summary).await?;
        let (release, created) = match stored.into_iter().next() {
            Some(Stored::Created(record)) => {
                tracing::info!(image_ref = %record.image_ref, "release added");
                (record, true)
            }
            Some(Stored::Existing(record)) => (record, false),
            None => return Err(Status::internal("storing one release answered for none")),
        };
        Ok(Response::new(pb::AddReleaseResponse {
            release: Some(release.to_proto(pb::SupportStatus::Unspecified)),
            created,
        }))
    }

    /// Lists the registry's tags and adds every upgrade image not yet in
    /// the catalog; the `sync` module tells the order of work.
    async fn sync_releases(
        &self,
        request: Request<pb::SyncReleasesRequest>,
    ) -> Result<Response<pb::SyncReleasesResponse>, Status> {
        let caller = authorize(self.client.reader(), &request, Role::Operator)?;
        let call = Call::new(&request, method::SYNC_RELEASES, &caller);
        let plan = sync::SyncPlan::parse(request.get_ref())?;
        sync::sync(&self.client, &self.registry, &call, &plan).await.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(image_ref: &str, digest: &str) -> Result<ReleaseRecord, Status> {
        parse_add(&pb::AddReleaseRequest { image_ref: image_ref.into(), digest: digest.into(), dry_run: false })
    }

    #[test]
    fn add_release_keys_the_record_by_the_canonical_reference_without_digest() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let reference = "quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1";
        let record = add(reference, &digest).expect("valid");
        assert_eq!(record.key(), format!("releases/{reference}"));
        assert_eq!((record.digest.as_str(), record.variant.as_str()), (digest.as_str(), "standard"));
        assert_eq!((record.release.as_str(), record.software_version.as_str()), ("v2.4.2", "v1.27.6+k3s1"));
        let pinned = add(&format!("{reference}@{digest}"), "").expect("digest in the reference");
        assert_eq!((pinned.key(), pinned.digest), (record.key(), digest));
    }

    #[test]
    fn add_release_errors_name_the_request_field() {
        let disk = add("quay.io/kairos/opensuse:leap-15.6-core-amd64-generic-v3.5.0-img", "").unwrap_err();
        assert!(disk.message().starts_with("image_ref:") && disk.message().contains("disk"), "{disk:?}");
        assert!(add("", "").unwrap_err().message().starts_with("image_ref:"));
        let digest = add("quay.io/kairos/ubuntu:22.04-core-amd64-generic-v2.4.2", "sha256:short").unwrap_err();
        assert!(digest.message().starts_with("digest:"), "{digest:?}");
    }

    #[test]
    fn page_tokens_round_trip_and_foreign_tokens_are_invalid_arguments() {
        let record = add("quay.io/kairos/ubuntu:22.04-core-amd64-generic-v2.4.2", "").expect("valid");
        let token = page_token(&record);
        assert_eq!(parse_page_token(&token).expect("ours"), Some(position(&record.release, &record.image_ref)));
        assert_eq!(parse_page_token("").expect("first page"), None);
        for foreign in ["xyz", "abc", "00ff"] {
            let err = parse_page_token(foreign).unwrap_err();
            assert!(err.code() == tonic::Code::InvalidArgument && err.message().starts_with("page_token:"));
        }
    }

    #[test]
    fn newer_releases_sort_first_and_unparseable_ones_last() {
        let mut positions =
            [position("v2.4.2", "b"), position("v3.0.0", "a"), position("junk", "c"), position("v2.4.2", "a")];
        positions.sort();
        let refs: Vec<&str> = positions.iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(refs, ["a", "a", "b", "c"]);
        assert_eq!(positions[0].0, Reverse(Version::parse("3.0.0").ok()));
    }
}
