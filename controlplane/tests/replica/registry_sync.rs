//! SyncReleases against a real registry: Debian's `docker-registry`
//! (distribution 2.8) on loopback, holding small OCI images this test
//! pushes under Kairos tags of every grammar and under tags that must be
//! skipped; the sync runs through a real replica, and what it stored is
//! read back with ListReleases and the audit log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kairos_controlplane::api::release::RegistrySettings;
use kairos_fleet_proto::fleet::v1 as pb;
use kairos_fleet_proto::fleet::v1::admin_service_client::AdminServiceClient;
use kairos_fleet_testkit::LocalRegistry;
use tonic::Code;

use kairos_controlplane::sessions::SessionSettings;

use crate::common::{channel, free_port, leader_of, list_all, release_client, tuning, Pki, Slot};

/// Tags pushed per repository of `kairos/`, and what SyncReleases must make of each.
const PUSHED: &[(&str, &[(&str, Expect)])] = &[
    (
        "opensuse",
        &[
            ("leap-15.6-standard-amd64-generic-v2.4.2-k3sv1.30.2-k3s1", Expect::Added),
            ("leap-15.6-core-amd64-generic-v2.4.2", Expect::Added),
            ("leap-15.6-core-amd64-generic-v3.0.0-rc1", Expect::Skipped(pb::SkipReason::Prerelease)),
            ("leap-15.6-core-amd64-generic-v2.4.2-img", Expect::Skipped(pb::SkipReason::DiskImage)),
            ("latest", Expect::Skipped(pb::SkipReason::NotARelease)),
            ("leap-15.6-core-amd64-generic-v2.4", Expect::Skipped(pb::SkipReason::Unparseable)),
        ],
    ),
    (
        "ubuntu",
        &[
            ("24.04-standard-arm64-rpi4-v3.5.0-k3s-v1.33.2-k3s1", Expect::Added),
            ("24.04-core-amd64-generic-v3.5.0-uki", Expect::Added),
            (
                "sha256-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.sig",
                Expect::Skipped(pb::SkipReason::NotARelease),
            ),
        ],
    ),
    ("core-alpine-arm-rpi", &[("v1.5.0", Expect::Added), ("v1.5.0.img", Expect::Skipped(pb::SkipReason::DiskImage))]),
    (
        "kairos-opensuse",
        &[("v1.5.1-k3sv1.26.1-k3s1", Expect::Added), ("master", Expect::Skipped(pb::SkipReason::NotARelease))],
    ),
];
/// A repository the registry does not have.
const MISSING: &str = "nothere";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Added,
    Skipped(pb::SkipReason),
}

/// Pushes one small image (a config blob and one layer, distinct per
/// repository) to `kairos/<repository>` under every tag; returns its
/// manifest digest as the registry reported it.
async fn push(registry: &LocalRegistry, repository: &str, tags: &[&str]) -> String {
    let layer = format!("kairos {repository} layer").into_bytes();
    registry.push(&format!("kairos/{repository}"), tags, vec![layer], "amd64").await
}

/// Pushes [`PUSHED`]; returns the manifest digest per repository.
async fn push_all(registry: &LocalRegistry) -> BTreeMap<&'static str, String> {
    let mut digests = BTreeMap::new();
    for (repository, tags) in PUSHED {
        let names: Vec<&str> = tags.iter().map(|(tag, _)| *tag).collect();
        digests.insert(*repository, push(registry, repository, &names).await);
    }
    digests
}

/// `127.0.0.1:<port>/kairos/<repository>:<tag>`.
fn reference(registry: &LocalRegistry, repository: &str, tag: &str) -> String {
    registry.reference(&format!("kairos/{repository}"), tag)
}

/// How many pushed tags must be skipped.
fn expected_skips() -> usize {
    PUSHED.iter().flat_map(|(_, tags)| tags.iter()).filter(|(_, e)| matches!(e, Expect::Skipped(_))).count()
}

/// The references of the pushed tags expected as `expect`, sorted.
fn expected(registry: &LocalRegistry, expect: Expect) -> Vec<String> {
    let mut refs: Vec<String> = PUSHED
        .iter()
        .flat_map(|(repo, tags)| {
            tags.iter().filter(|(_, e)| *e == expect).map(|(tag, _)| reference(registry, repo, tag))
        })
        .collect();
    refs.sort();
    refs
}

fn request(registry: &LocalRegistry, repositories: &[&str]) -> pb::SyncReleasesRequest {
    pb::SyncReleasesRequest {
        registry: registry.addr().to_string(),
        organization: "kairos".into(),
        repositories: repositories.iter().map(|r| (*r).to_owned()).collect(),
        ..Default::default()
    }
}

fn sorted_refs<'a>(refs: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut refs: Vec<String> = refs.cloned().collect();
    refs.sort();
    refs
}

/// The skipped tags of `response`, reference → reason.
fn skips(response: &pb::SyncReleasesResponse) -> BTreeMap<String, pb::SkipReason> {
    response.skipped.iter().map(|s| (s.image_ref.clone(), s.reason())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_adds_the_release_images_of_a_real_registry_and_says_why_it_skips_the_rest() {
    let registry = LocalRegistry::start().await;
    let digests = push_all(&registry).await;
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Arc::new(Pki::new());
    let slot = Slot::new(1, root.path());
    let mut config = slot.config(&pki, true, tuning(), SessionSettings::with_heartbeat(Duration::from_millis(500)));
    config.registry = RegistrySettings::with_plain_http(vec![registry.addr().to_string()]);
    let replica = slot.start_config(config).await;
    leader_of(&replica).await;
    let addr = slot.addr();
    let mut releases = release_client(&pki, &addr);
    let tags_pushed: usize = PUSHED.iter().map(|(_, tags)| tags.len()).sum();

    // Dry run over the default repositories, which hold the pushed ones.
    let dry = pb::SyncReleasesRequest { dry_run: true, resolve_digests: true, ..request(&registry, &[]) };
    let dry = releases.sync_releases(dry).await.expect("dry run").into_inner();
    assert!(dry.dry_run);
    assert_eq!(sorted_refs(dry.added.iter().map(|r| &r.image_ref)), expected(&registry, Expect::Added));
    assert_eq!(dry.tags_seen as usize, tags_pushed);
    let missing = dry.skipped.iter().filter(|s| s.reason() == pb::SkipReason::RegistryError).count();
    assert_eq!(missing, 19 - PUSHED.len(), "every other default repository is missing: {:?}", dry.skipped);
    assert!(list_all(&pki, &addr, true).await.expect("list").is_empty(), "a dry run stores nothing");

    // The real thing, with a repository the registry does not have.
    let mut repositories: Vec<&str> = PUSHED.iter().map(|(repo, _)| *repo).collect();
    repositories.push(MISSING);
    let sync = pb::SyncReleasesRequest { resolve_digests: true, ..request(&registry, &repositories) };
    let synced = releases.sync_releases(sync.clone()).await.expect("sync").into_inner();
    assert!(!synced.dry_run);
    assert_eq!((synced.tags_seen as usize, synced.already_known), (tags_pushed, 0));
    assert_eq!(sorted_refs(synced.added.iter().map(|r| &r.image_ref)), expected(&registry, Expect::Added));
    let skipped = skips(&synced);
    for (repo, tags) in PUSHED {
        for (tag, expect) in tags.iter() {
            if let Expect::Skipped(reason) = expect {
                assert_eq!(skipped.get(&reference(&registry, repo, tag)), Some(reason), "{repo}:{tag}");
            }
        }
    }
    let missing_ref = format!("{}/kairos/{MISSING}", registry.addr());
    assert_eq!(skipped.get(&missing_ref), Some(&pb::SkipReason::RegistryError), "{skipped:?}");
    assert_eq!(skipped.len(), expected_skips() + 1, "{skipped:?}");
    let detail = &synced.skipped.iter().find(|s| s.image_ref == missing_ref).expect("missing repository").detail;
    assert!(detail.contains("not found") && detail.contains("NAME_UNKNOWN"), "{detail}");
    for skip in &synced.skipped {
        assert!(!skip.detail.is_empty() && skip.detail.len() <= 1024, "{skip:?}");
    }

    // What ListReleases shows is what the sync added, pinned to the pushed digests.
    let listed = list_all(&pki, &addr, true).await.expect("list");
    assert_eq!(sorted_refs(listed.iter().map(|r| &r.image_ref)), expected(&registry, Expect::Added));
    let source = format!("sync:{}/kairos", registry.addr());
    for release in &listed {
        let repo = release.image_ref.rsplit_once(':').and_then(|(r, _)| r.rsplit('/').next()).expect("repository");
        assert_eq!(release.digest, digests[repo], "{}", release.image_ref);
        assert_eq!(release.source, source);
    }
    let rpi = listed.iter().find(|r| r.image_ref.contains("rpi4")).expect("the v3.5 arm64 image");
    let family = rpi.family.clone().expect("family");
    assert_eq!((family.flavor.as_str(), family.arch.as_str(), family.model.as_str()), ("ubuntu", "arm64", "rpi4"));
    assert_eq!((rpi.grammar(), rpi.software_version.as_str()), (pb::TagGrammar::V35, "v1.33.2+k3s1"));

    // Each added image has its audit entry, as AddRelease writes one.
    let audit = AdminServiceClient::new(channel(&pki, &addr))
        .list_audit(pb::ListAuditRequest {
            method: "/kairos.fleet.v1.ReleaseService/SyncReleases".into(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner();
    let targets = sorted_refs(audit.entries.iter().map(|e| &e.target));
    let expected_targets: Vec<String> =
        expected(&registry, Expect::Added).iter().map(|r| format!("release/{r}")).collect();
    assert_eq!(targets, expected_targets);

    // Again: nothing new, everything already known.
    let again = releases.sync_releases(sync.clone()).await.expect("second sync").into_inner();
    assert!(again.added.is_empty(), "{:?}", again.added);
    assert_eq!(again.already_known as usize, expected(&registry, Expect::Added).len());
    assert_eq!(skips(&again), skipped);

    // Asking for pre-releases adds the one pre-release.
    let pre = pb::SyncReleasesRequest { include_prereleases: true, ..sync };
    let pre = releases.sync_releases(pre).await.expect("with pre-releases").into_inner();
    let prerelease = expected(&registry, Expect::Skipped(pb::SkipReason::Prerelease));
    assert_eq!(sorted_refs(pre.added.iter().map(|r| &r.image_ref)), prerelease);
    assert!(pre.added.iter().all(|r| r.prerelease && r.digest == digests["opensuse"]), "{:?}", pre.added);
    assert!(!skips(&pre).contains_key(&prerelease[0]));
    replica.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_speaks_https_only_unless_the_registry_is_opted_in_to_plain_http() {
    let registry = LocalRegistry::start().await;
    push(&registry, "opensuse", &["leap-15.6-core-amd64-generic-v2.4.2"]).await;
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Arc::new(Pki::new());
    let slot = Slot::new(1, root.path());
    let replica = slot.start(&pki, true, tuning()).await;
    leader_of(&replica).await;
    let addr = slot.addr();
    let mut releases = release_client(&pki, &addr);

    let refused = releases.sync_releases(request(&registry, &["opensuse"])).await.expect_err("HTTPS to an HTTP port");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let message = refused.message();
    assert!(message.starts_with(&format!("registry {} ", registry.addr())), "{message}");
    assert!(message.contains(&format!("--registry-plain-http {}", registry.addr())), "{message}");

    let closed = format!("127.0.0.1:{}", free_port());
    let nobody = pb::SyncReleasesRequest { registry: closed.clone(), ..request(&registry, &["opensuse"]) };
    let unreachable = releases.sync_releases(nobody).await.expect_err("nothing listens");
    assert_eq!(unreachable.code(), Code::Unavailable, "{unreachable:?}");
    assert!(unreachable.message().contains(&closed), "{unreachable:?}");

    let scheme = pb::SyncReleasesRequest { registry: format!("http://{}", registry.addr()), ..Default::default() };
    let invalid = releases.sync_releases(scheme).await.expect_err("a scheme is no host");
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");
    assert!(invalid.message().starts_with("registry:"), "{invalid:?}");

    let listed = list_all(&pki, &addr, true).await.expect("list");
    assert!(listed.is_empty(), "{listed:?}");
    replica.shutdown().await.expect("shutdown");
}
