//! `SyncReleases`: list a registry's tags, keep the Kairos upgrade images
//! and store the new ones the way AddRelease does ([`super::catalog`]).
//!
//! The work, in order: validate the request; list every repository, a
//! few at a time; answer UNAVAILABLE when the registry served none of
//! them; classify each tag ([`super::tags`]); count the ones already in
//! the catalog; resolve the new ones' digests if asked; store them in
//! batches unless it is a dry run. A sync cut short (the caller's
//! deadline, a lost leader) keeps the batches it stored: running it again
//! adds the rest and counts those as already known.

use std::collections::HashSet;

use futures_util::stream::{self, StreamExt};
use kairos_fleet_proto::fleet::v1 as pb;
use tonic::Status;

use super::catalog::{self, Stored, BATCH};
use super::registry::{parse_registry_host, Registry, RegistryError, RegistrySettings, TagListing};
use super::tags::{classify, Verdict};
use super::{position, ReleaseRecord};
use crate::api::audit::{truncate, Call};
use crate::fleet::image::{ImageRef, RegistryPrefix};
use crate::fleet::matrix::{seed_repositories, DEFAULT_REGISTRY_PREFIX};
use crate::replica::ReplicaClient;

/// Most repositories one request may name (the proto's limit).
const MAX_REPOSITORIES: usize = 128;
/// Longest registry host and organisation accepted.
const MAX_NAME_LEN: usize = 255;
/// Longest repository name accepted.
const MAX_REPOSITORY_LEN: usize = 128;
/// Longest skip detail (the proto's limit).
const MAX_DETAIL_BYTES: usize = 1024;
/// Repositories listed at once.
const LIST_CONCURRENCY: usize = 4;
/// Digests resolved at once.
const DIGEST_CONCURRENCY: usize = 8;

/// A validated SyncReleases request, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPlan {
    /// Lowercase `host[:port]`.
    pub registry: String,
    /// Organisation path, e.g. `kairos`.
    pub organization: String,
    /// Repository names under the organisation, without duplicates.
    pub repositories: Vec<String>,
    /// Store nothing.
    pub dry_run: bool,
    /// Keep pre-releases.
    pub include_prereleases: bool,
    /// Resolve each new image's digest.
    pub resolve_digests: bool,
}

impl SyncPlan {
    /// Validates `req`; errors are INVALID_ARGUMENT naming the field and the rule.
    pub fn parse(req: &pb::SyncReleasesRequest) -> Result<SyncPlan, Status> {
        let (default_registry, default_organization) =
            DEFAULT_REGISTRY_PREFIX.split_once('/').unwrap_or((DEFAULT_REGISTRY_PREFIX, ""));
        let registry = match req.registry.trim() {
            "" => default_registry.to_owned(),
            given if given.len() > MAX_NAME_LEN => {
                return Err(Status::invalid_argument(format!("registry: at most {MAX_NAME_LEN} characters")))
            }
            given => parse_registry_host(given).map_err(|e| Status::invalid_argument(format!("registry: {e}")))?,
        };
        let organization = match req.organization.trim() {
            "" => default_organization.to_owned(),
            given => given.to_owned(),
        };
        let components_ok = organization.split('/').all(|c| !c.is_empty())
            && RegistryPrefix::parse(&format!("{registry}/{organization}"))
                .is_ok_and(|p| p.to_string() == format!("{registry}/{organization}"));
        if organization.len() > MAX_NAME_LEN || !components_ok {
            return Err(Status::invalid_argument(format!(
                "organization: {organization:?}: must be at most {MAX_NAME_LEN} characters of `/`-separated \
                 names, each lowercase letters and digits joined by `.`, `_` or `-` (e.g. kairos)"
            )));
        }
        if req.repositories.len() > MAX_REPOSITORIES {
            return Err(Status::invalid_argument(format!(
                "repositories: at most {MAX_REPOSITORIES}, got {}; sync in several calls",
                req.repositories.len()
            )));
        }
        let mut repositories: Vec<String> = Vec::new();
        for (i, given) in req.repositories.iter().enumerate() {
            let name = given.trim();
            let valid = !name.is_empty()
                && name.len() <= MAX_REPOSITORY_LEN
                && !name.contains('/')
                && RegistryPrefix::parse(&format!("{registry}/{organization}/{name}")).is_ok();
            if !valid {
                return Err(Status::invalid_argument(format!(
                    "repositories[{i}]: {given:?}: must be one repository name of at most {MAX_REPOSITORY_LEN} \
                     lowercase letters and digits joined by `.`, `_` or `-` (e.g. opensuse); the \
                     organisation goes in `organization`"
                )));
            }
            if !repositories.iter().any(|r| r == name) {
                repositories.push(name.to_owned());
            }
        }
        if repositories.is_empty() {
            repositories = seed_repositories();
        }
        Ok(SyncPlan {
            registry,
            organization,
            repositories,
            dry_run: req.dry_run,
            include_prereleases: req.include_prereleases,
            resolve_digests: req.resolve_digests,
        })
    }

    /// `sync:<registry>/<organisation>`, the source of the records it adds.
    pub fn source(&self) -> String {
        format!("sync:{}/{}", self.registry, self.organization)
    }

    fn repository_path(&self, name: &str) -> String {
        format!("{}/{name}", self.organization)
    }
}

/// A listed upgrade target that is not in the catalog yet.
struct Candidate {
    repository: String,
    tag: String,
    image: ImageRef,
}

fn skipped(image_ref: String, reason: pb::SkipReason, detail: &str) -> pb::SkippedTag {
    pb::SkippedTag { image_ref, reason: reason as i32, detail: truncate(detail, MAX_DETAIL_BYTES) }
}

/// Runs `plan` against its registry and the catalog behind `client`;
/// every release stored gets an audit entry of `call`.
pub async fn sync(
    client: &ReplicaClient,
    settings: &RegistrySettings,
    call: &Call,
    plan: &SyncPlan,
) -> Result<pb::SyncReleasesResponse, Status> {
    let registry = Registry::new(&plan.registry, settings)
        .map_err(|e| Status::internal(format!("cannot set up a client for registry {}: {e}", plan.registry)))?;
    let listings = list(&registry, plan).await;
    if listings.iter().all(|l| l.tags.is_empty() && l.error.as_ref().is_some_and(RegistryError::is_unavailable)) {
        let first = listings.iter().find_map(|l| l.error.as_ref()).map(ToString::to_string).unwrap_or_default();
        return Err(Status::unavailable(format!(
            "registry {} served none of the {} repositories; the first failure: {first}",
            plan.registry,
            listings.len()
        )));
    }

    let mut response = pb::SyncReleasesResponse { dry_run: plan.dry_run, ..Default::default() };
    let mut candidates = Vec::new();
    let mut listed = HashSet::new();
    for (name, listing) in plan.repositories.iter().zip(listings) {
        let repository = plan.repository_path(name);
        response.tags_seen = response.tags_seen.saturating_add(u32::try_from(listing.tags.len()).unwrap_or(u32::MAX));
        for tag in &listing.tags {
            let reference = format!("{}/{repository}:{tag}", plan.registry);
            match classify(&reference, tag, plan.include_prereleases) {
                Verdict::Skip(reason, detail) => response.skipped.push(skipped(reference, reason, &detail)),
                Verdict::Keep(image) => {
                    let image_ref = image.to_string();
                    if catalog::contains(client.reader(), &image_ref)? {
                        response.already_known += 1;
                    } else if listed.insert(image_ref) {
                        candidates.push(Candidate { repository: repository.clone(), tag: tag.clone(), image: *image });
                    }
                }
            }
        }
        if let Some(error) = listing.error {
            let detail = match listing.tags.len() {
                0 => error.to_string(),
                n => format!("{error}; the {n} tags listed before that were synced"),
            };
            let image_ref = format!("{}/{repository}", plan.registry);
            response.skipped.push(skipped(image_ref, pb::SkipReason::RegistryError, &detail));
        }
    }

    let records = if plan.resolve_digests {
        with_digests(&registry, candidates, plan, &mut response.skipped).await
    } else {
        candidates.iter().map(|c| ReleaseRecord::new(&c.image, None, &plan.source())).collect()
    };
    let mut added = Vec::with_capacity(records.len());
    if plan.dry_run {
        added = records;
    } else {
        for batch in records.chunks(BATCH) {
            let summary =
                |r: &ReleaseRecord| format!("image_ref={} digest={} source={}", r.image_ref, r.digest, r.source);
            for stored in catalog::store(client, call, batch, summary).await? {
                match stored {
                    Stored::Created(record) => added.push(record),
                    Stored::Existing(_) => response.already_known += 1,
                }
            }
        }
    }
    added.sort_by_cached_key(|r| position(&r.release, &r.image_ref));
    response.added = added.iter().map(|r| r.to_proto(pb::SupportStatus::Unspecified)).collect();
    tracing::info!(
        registry = %plan.registry,
        organization = %plan.organization,
        tags_seen = response.tags_seen,
        added = response.added.len(),
        already_known = response.already_known,
        skipped = response.skipped.len(),
        dry_run = plan.dry_run,
        "releases synced"
    );
    Ok(response)
}

/// The tags of every repository of `plan`, in its order.
async fn list(registry: &Registry, plan: &SyncPlan) -> Vec<TagListing> {
    // Owned names: a stream over borrowed ones trips the Send check of the service future.
    let repositories: Vec<String> = plan.repositories.iter().map(|name| plan.repository_path(name)).collect();
    stream::iter(repositories)
        .map(|repository| async move { registry.list_tags(&repository).await })
        .buffered(LIST_CONCURRENCY)
        .collect()
        .await
}

/// Records of the candidates whose digest resolved; the others are
/// skipped as registry errors.
async fn with_digests(
    registry: &Registry,
    candidates: Vec<Candidate>,
    plan: &SyncPlan,
    skipped_tags: &mut Vec<pb::SkippedTag>,
) -> Vec<ReleaseRecord> {
    let tags: Vec<(String, String)> = candidates.iter().map(|c| (c.repository.clone(), c.tag.clone())).collect();
    let digests: Vec<Result<String, RegistryError>> = stream::iter(tags)
        .map(|(repository, tag)| async move { registry.resolve_digest(&repository, &tag).await })
        .buffered(DIGEST_CONCURRENCY)
        .collect()
        .await;
    let mut records = Vec::with_capacity(candidates.len());
    for (candidate, digest) in candidates.into_iter().zip(digests) {
        let pinned = digest.map_err(|e| e.to_string()).and_then(|digest| {
            candidate.image.with_digest(&digest).map_err(|e| format!("the registry's digest is unusable: {e}"))
        });
        match pinned {
            Ok(image) => records.push(ReleaseRecord::new(&image, None, &plan.source())),
            Err(error) => {
                let detail = format!(
                    "{error}; sync again, or without resolve_digests (nodes then resolve the tag and pin the \
                     digest themselves)"
                );
                skipped_tags.push(skipped(candidate.image.to_string(), pb::SkipReason::RegistryError, &detail));
            }
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(req: pb::SyncReleasesRequest) -> Result<SyncPlan, Status> {
        SyncPlan::parse(&req)
    }

    fn invalid(req: pb::SyncReleasesRequest, field: &str) -> String {
        let status = plan(req).expect_err("invalid");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{field} not first in {:?}", status.message());
        status.message().to_owned()
    }

    #[test]
    fn an_empty_request_syncs_every_seed_repository_of_quay_io_kairos() {
        let plan = plan(pb::SyncReleasesRequest::default()).expect("valid");
        assert_eq!((plan.registry.as_str(), plan.organization.as_str()), ("quay.io", "kairos"));
        assert_eq!(plan.repositories, seed_repositories());
        assert_eq!(plan.source(), "sync:quay.io/kairos");
        assert!(!plan.dry_run && !plan.include_prereleases && !plan.resolve_digests);
    }

    #[test]
    fn registry_is_a_lowercase_host_and_repositories_are_deduplicated() {
        let req = pb::SyncReleasesRequest {
            registry: " Registry.Local:5000 ".into(),
            organization: "mirror/kairos".into(),
            repositories: vec!["opensuse".into(), "ubuntu".into(), "opensuse".into()],
            ..Default::default()
        };
        let plan = plan(req).expect("valid");
        assert_eq!(plan.registry, "registry.local:5000");
        assert_eq!(plan.repositories, ["opensuse", "ubuntu"]);
        assert_eq!(plan.repository_path("ubuntu"), "mirror/kairos/ubuntu");
    }

    #[test]
    fn invalid_fields_are_named_with_their_rule() {
        let with_registry =
            |registry: &str| pb::SyncReleasesRequest { registry: registry.into(), ..Default::default() };
        let scheme = invalid(with_registry("http://registry.local:5000"), "registry:");
        assert!(scheme.contains("without scheme or path"), "{scheme}");
        invalid(with_registry("quay.io/kairos"), "registry:");
        invalid(with_registry("registry"), "registry:");
        let organization = |org: &str| pb::SyncReleasesRequest { organization: org.into(), ..Default::default() };
        for bad in ["Kairos", "kairos/", "a//b", "-x"] {
            invalid(organization(bad), "organization:");
        }
        let repositories = |repos: Vec<String>| pb::SyncReleasesRequest { repositories: repos, ..Default::default() };
        let many = invalid(repositories((0..129).map(|i| format!("r{i}")).collect()), "repositories:");
        assert!(many.contains("at most 128"), "{many}");
        let nested = invalid(repositories(vec!["opensuse".into(), "kairos/ubuntu".into()]), "repositories[1]:");
        assert!(nested.contains("organization"), "{nested}");
        invalid(repositories(vec![String::new()]), "repositories[0]:");
    }
}
