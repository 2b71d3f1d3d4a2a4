//! Pulling images from a real registry: Debian's docker-registry, started
//! per test on a free port with its storage in a temp dir; the tests push
//! tiny images with oci-client and pull them with [`Puller`].

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kairos_fleet_proto::fleet::v1 as pb;
use kairos_fleet_testkit::LocalRegistry;
use kairos_node_client::pull::{Credential, Platform, PullObserver, Puller, RegistryConfig};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OciImageIndex, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LAYER_BYTES: usize = 300 * 1024;

/// A docker-registry (the shared test registry), optionally with basic auth.
struct Registry {
    inner: LocalRegistry,
    addr: String,
    /// Holds the htpasswd file while the registry runs.
    _auth: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; with `htpasswd` (user, password) it requires them.
    async fn start(htpasswd: Option<(&str, &str)>) -> Registry {
        let auth = tempfile::tempdir().expect("tempdir");
        let mut extra = String::new();
        if let Some((user, password)) = htpasswd {
            let hash = bcrypt::hash(password, 4).expect("bcrypt");
            let path = auth.path().join("htpasswd");
            std::fs::write(&path, format!("{user}:{hash}\n")).expect("write htpasswd");
            extra = format!("auth:\n  htpasswd:\n    realm: test\n    path: {}\n", path.display());
        }
        let inner = LocalRegistry::start_with(&extra).await;
        Registry { addr: inner.addr().to_string(), inner, _auth: auth }
    }

    /// The file docker-registry keeps `digest`'s bytes in.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.inner.storage().join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

/// What a pull told its observer.
#[derive(Default)]
struct Recorder {
    phases: Mutex<Vec<pb::NodeState>>,
    progress: Mutex<Vec<pb::Progress>>,
    cancel: Mutex<Option<String>>,
}

impl PullObserver for Recorder {
    fn phase(&self, state: pb::NodeState) {
        self.phases.lock().expect("lock").push(state);
    }
    fn progress(&self, progress: pb::Progress) {
        self.progress.lock().expect("lock").push(progress);
    }
    fn cancelled(&self) -> Option<String> {
        self.cancel.lock().expect("lock").clone()
    }
}

/// An image as pushed: its manifest digest and its blobs' digests.
struct Pushed {
    manifest_digest: String,
    manifest_size: usize,
    blobs: Vec<String>,
}

fn pusher() -> Client {
    kairos_fleet_domain::install_crypto_provider();
    Client::new(ClientConfig { protocol: ClientProtocol::Http, ..ClientConfig::default() })
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes);
    bytes
}

/// Pushes an image of a config and two random layers for `arch` to `reference`.
async fn push_image(client: &Client, reference: &str, auth: &RegistryAuth, arch: &str, seed: u64) -> Pushed {
    let reference: Reference = reference.parse().expect("reference");
    let layers = vec![
        ImageLayer::oci_v1(random_bytes(LAYER_BYTES, seed), None),
        ImageLayer::oci_v1(random_bytes(LAYER_BYTES + 1000, seed + 1), None),
    ];
    let config = serde_json::json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}});
    let config = Config::oci_v1(serde_json::to_vec(&config).expect("json"), None);
    let manifest = OciImageManifest::build(&layers, &config, None);
    let mut blobs = vec![manifest.config.digest.clone()];
    blobs.extend(manifest.layers.iter().map(|l| l.digest.clone()));
    client.push(&reference, &layers, config, auth, Some(manifest)).await.expect("push image");
    let (raw, digest) = client
        .pull_manifest_raw(&reference, auth, &[oci_client::manifest::OCI_IMAGE_MEDIA_TYPE])
        .await
        .expect("read back");
    Pushed { manifest_digest: digest, manifest_size: raw.len(), blobs }
}

fn plain_puller(state: &Path, plain_http: &[&str], platform: Platform) -> Puller {
    let config = RegistryConfig {
        plain_http: plain_http.iter().map(|s| s.to_string()).collect(),
        retries: 2,
        ..RegistryConfig::default()
    };
    Puller::new(config, state, platform)
}

/// The archive's index.json and the blob names it holds.
fn read_archive(path: &Path) -> (serde_json::Value, Vec<String>) {
    let mut archive = tar::Archive::new(std::fs::File::open(path).expect("open archive"));
    let mut index = serde_json::Value::Null;
    let mut names = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").display().to_string();
        if name == "index.json" {
            let mut text = String::new();
            entry.read_to_string(&mut text).expect("read index.json");
            index = serde_json::from_str(&text).expect("index.json is JSON");
        }
        names.push(name);
    }
    (index, names)
}

fn blob_name(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

#[tokio::test]
async fn index_yields_the_manifest_of_the_node_platform() {
    let registry = Registry::start(None).await;
    let client = pusher();
    let auth = RegistryAuth::Anonymous;
    let repo = format!("{}/kairos/os", registry.addr);
    let amd = push_image(&client, &format!("{repo}:amd"), &auth, "amd64", 1).await;
    let arm = push_image(&client, &format!("{repo}:arm"), &auth, "arm64", 10).await;
    let entry = |p: &Pushed, arch: &str, variant: Option<&str>| {
        let mut platform = serde_json::json!({"architecture": arch, "os": "linux"});
        if let Some(v) = variant {
            platform["variant"] = v.into();
        }
        serde_json::json!({"mediaType": oci_client::manifest::OCI_IMAGE_MEDIA_TYPE, "digest": p.manifest_digest, "size": p.manifest_size, "platform": platform})
    };
    let index: OciImageIndex = serde_json::from_value(serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
        "manifests": [entry(&amd, "amd64", None), entry(&arm, "arm64", Some("v8"))],
    }))
    .expect("index");
    let tag: Reference = format!("{repo}:v1").parse().expect("reference");
    client.push_manifest_list(&tag, &auth, index).await.expect("push index");
    let (_, index_digest) = client
        .pull_manifest_raw(&tag, &auth, &[oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE])
        .await
        .expect("index digest");

    let state = tempfile::tempdir().expect("tempdir");
    let puller = plain_puller(state.path(), &[&registry.addr], Platform::linux_arm64());
    let recorder = Recorder::default();
    let image = puller.pull(&tag.whole(), "", &recorder).await.expect("pull arm64");
    assert_eq!(image.manifest_digest, arm.manifest_digest);
    assert_eq!(image.size, std::fs::metadata(&image.archive).expect("archive").len());
    let (index, names) = read_archive(&image.archive);
    assert_eq!(index["manifests"][0]["digest"], arm.manifest_digest.as_str());
    assert!(names.contains(&"oci-layout".to_string()));
    assert!(names.contains(&blob_name(&arm.manifest_digest)));
    for blob in &arm.blobs {
        assert!(names.contains(&blob_name(blob)), "{blob} missing from {names:?}");
    }
    for blob in &amd.blobs[1..] {
        assert!(!names.contains(&blob_name(blob)), "amd64 layer {blob} in the arm64 archive");
    }
    assert_eq!(*recorder.phases.lock().expect("lock"), vec![pb::NodeState::Downloading, pb::NodeState::Verifying]);
    let progress = recorder.progress.lock().expect("lock").clone();
    let last_download = progress.iter().rfind(|p| p.phase() == pb::NodeState::Downloading).expect("download progress");
    assert_eq!((last_download.layers_done, last_download.layers_total), (2, 2));
    assert_eq!(last_download.bytes_done, last_download.bytes_total);

    // The same tag for amd64, pinned to the index digest.
    let amd_state = tempfile::tempdir().expect("tempdir");
    let amd_puller = plain_puller(amd_state.path(), &[&registry.addr], Platform::linux_amd64());
    let image = amd_puller.pull(&tag.whole(), &index_digest, &Recorder::default()).await.expect("pull amd64");
    assert_eq!(image.manifest_digest, amd.manifest_digest);

    // A target digest the tag does not have.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let error = amd_puller.pull(&tag.whole(), &wrong, &Recorder::default()).await.expect_err("wrong digest");
    assert_eq!(error.reason, pb::FailureReason::DigestMismatch, "{error:?}");

    // A cancelled generation stops before downloading.
    let cancelled = Recorder::default();
    *cancelled.cancel.lock().expect("lock") = Some("superseded".to_string());
    let fresh = tempfile::tempdir().expect("tempdir");
    let error = plain_puller(fresh.path(), &[&registry.addr], Platform::linux_arm64())
        .pull(&tag.whole(), "", &cancelled)
        .await
        .expect_err("cancelled");
    assert_eq!(error.reason, pb::FailureReason::Cancelled, "{error:?}");
}

#[tokio::test]
async fn tampered_blob_is_refused_and_deleted() {
    let registry = Registry::start(None).await;
    let client = pusher();
    let reference = format!("{}/kairos/os:v1", registry.addr);
    let pushed = push_image(&client, &reference, &RegistryAuth::Anonymous, "amd64", 20).await;
    let layer = &pushed.blobs[2];
    let stored = registry.blob_file(layer);
    let len = std::fs::metadata(&stored).expect("stored blob").len();
    std::fs::write(&stored, random_bytes(usize::try_from(len).expect("size"), 99)).expect("tamper");

    let state = tempfile::tempdir().expect("tempdir");
    let puller = plain_puller(state.path(), &[&registry.addr], Platform::linux_amd64());
    let error = puller.pull(&reference, "", &Recorder::default()).await.expect_err("tampered");
    assert_eq!(error.reason, pb::FailureReason::DigestMismatch, "{error:?}");
    let blobs = puller.images_dir().join("blobs/sha256");
    let hex = layer.trim_start_matches("sha256:");
    assert!(!blobs.join(hex).exists() && !blobs.join(format!("{hex}.partial")).exists(), "tampered blob kept");
    let archives: Vec<_> = std::fs::read_dir(puller.images_dir())
        .expect("images dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tar"))
        .collect();
    assert!(archives.is_empty(), "an archive was written");
}

/// A TCP proxy that cuts the first response to a GET of `digest` after
/// `cut_after` bytes and records every request head it forwards.
struct CuttingProxy {
    addr: String,
    requests: Arc<Mutex<String>>,
}

impl CuttingProxy {
    async fn start(upstream: String, digest: String, cut_after: usize) -> CuttingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let requests = Arc::new(Mutex::new(String::new()));
        let cut_done = Arc::new(AtomicBool::new(false));
        let log = requests.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let armed = Arc::new(AtomicBool::new(false));
                let (log, digest, cut_done, armed2) = (log.clone(), digest.clone(), cut_done.clone(), armed.clone());
                let upward = tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = client_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]).to_string();
                        if text.contains(&format!("/blobs/{digest}")) && !cut_done.swap(true, Ordering::SeqCst) {
                            armed2.store(true, Ordering::SeqCst);
                        }
                        log.lock().expect("lock").push_str(&text);
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4 * 1024];
                    let mut sent = 0;
                    while let Ok(n) = server_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let n = if armed.load(Ordering::SeqCst) { n.min(cut_after - sent) } else { n };
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        if armed.load(Ordering::SeqCst) {
                            sent += n;
                            if sent >= cut_after {
                                break;
                            }
                        }
                    }
                    upward.abort();
                    let _ = client_write.shutdown().await;
                });
            }
        });
        CuttingProxy { addr, requests }
    }
}

#[tokio::test]
async fn interrupted_download_resumes_with_a_range_request() {
    let registry = Registry::start(None).await;
    let client = pusher();
    let path = "kairos/os:v1";
    let pushed = push_image(&client, &format!("{}/{path}", registry.addr), &RegistryAuth::Anonymous, "amd64", 30).await;
    let layer = pushed.blobs[1].clone();
    let cut_after = 100 * 1024;
    let proxy = CuttingProxy::start(registry.addr.clone(), layer.clone(), cut_after).await;

    let state = tempfile::tempdir().expect("tempdir");
    let puller = plain_puller(state.path(), &[&proxy.addr], Platform::linux_amd64());
    let image = puller
        .pull(&format!("{}/{path}", proxy.addr), "", &Recorder::default())
        .await
        .expect("pull through a cut connection");
    assert_eq!(image.manifest_digest, pushed.manifest_digest);

    let requests = proxy.requests.lock().expect("lock").to_ascii_lowercase();
    let gets = requests.matches(&format!("/blobs/{layer}")).count();
    assert_eq!(gets, 2, "the layer was requested {gets} times:\n{requests}");
    let range = requests
        .split("range: bytes=")
        .nth(1)
        .and_then(|rest| rest.split('-').next())
        .and_then(|start| start.parse::<usize>().ok())
        .expect("the second request asks for a range");
    // The first response carried the headers and part of the body.
    assert!(range > cut_after / 2 && range < cut_after, "resumed at {range}, the cut was at {cut_after} bytes");
}

#[tokio::test]
async fn credentials_are_required_and_checked() {
    let registry = Registry::start(Some(("robot", "s3cret"))).await;
    let client = pusher();
    let reference = format!("{}/kairos/os:v1", registry.addr);
    let auth = RegistryAuth::Basic("robot".into(), "s3cret".into());
    let pushed = push_image(&client, &reference, &auth, "amd64", 40).await;

    let with = |password: &str| {
        let mut config =
            RegistryConfig { plain_http: vec![registry.addr.clone()], retries: 1, ..RegistryConfig::default() };
        config
            .credentials
            .insert(registry.addr.clone(), Credential::Basic { username: "robot".into(), password: password.into() });
        config
    };
    let state = tempfile::tempdir().expect("tempdir");
    let wrong = Puller::new(with("guess"), state.path(), Platform::linux_amd64());
    let error = wrong.pull(&reference, "", &Recorder::default()).await.expect_err("wrong password");
    assert_eq!(error.reason, pb::FailureReason::PullFailed, "{error:?}");
    assert!(error.message.contains(&registry.addr) && error.message.contains("401"), "{}", error.message);

    let right = Puller::new(with("s3cret"), state.path(), Platform::linux_amd64());
    let image = right.pull(&reference, "", &Recorder::default()).await.expect("right password");
    assert_eq!(image.manifest_digest, pushed.manifest_digest);
}

#[tokio::test]
async fn plain_http_only_towards_listed_registries() {
    let registry = Registry::start(None).await;
    let client = pusher();
    let reference = format!("{}/kairos/os:v1", registry.addr);
    let pushed = push_image(&client, &reference, &RegistryAuth::Anonymous, "amd64", 50).await;

    let state = tempfile::tempdir().expect("tempdir");
    let https_only =
        Puller::new(RegistryConfig { retries: 0, ..RegistryConfig::default() }, state.path(), Platform::linux_amd64());
    let error =
        https_only.pull(&reference, "", &Recorder::default()).await.expect_err("https towards a plain registry");
    assert_eq!(error.reason, pb::FailureReason::PullFailed, "{error:?}");
    assert!(error.message.contains(&registry.addr) && error.message.contains("plain_http"), "{}", error.message);

    let listed = plain_puller(state.path(), &[&registry.addr], Platform::linux_amd64());
    assert_eq!(
        listed.pull(&reference, "", &Recorder::default()).await.expect("listed").manifest_digest,
        pushed.manifest_digest
    );
}

#[tokio::test]
async fn mirrors_are_tried_in_order_before_the_upstream() {
    let mirror = Registry::start(None).await;
    let client = pusher();
    // Nothing listens on the upstream nor on the first mirror.
    let dead = |_| TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").to_string();
    let (upstream, dead_mirror) = (dead(0), dead(1));
    let pushed =
        push_image(&client, &format!("{}/quay/kairos/os:v1", mirror.addr), &RegistryAuth::Anonymous, "amd64", 60).await;

    let mut config = RegistryConfig {
        plain_http: vec![upstream.clone(), dead_mirror.clone(), mirror.addr.clone()],
        retries: 0,
        ..RegistryConfig::default()
    };
    config.mirrors.insert(upstream.clone(), vec![dead_mirror.clone(), format!("{}/quay", mirror.addr)]);
    let state = tempfile::tempdir().expect("tempdir");
    let puller = Puller::new(config, state.path(), Platform::linux_amd64());
    let image =
        puller.pull(&format!("{upstream}/kairos/os:v1"), "", &Recorder::default()).await.expect("pull from the mirror");
    assert_eq!(image.manifest_digest, pushed.manifest_digest);

    // With the working mirror gone, every source's failure is reported.
    drop(mirror);
    let error =
        puller.pull(&format!("{upstream}/kairos/os:v2"), "", &Recorder::default()).await.expect_err("no source left");
    assert_eq!(error.reason, pb::FailureReason::PullFailed, "{error:?}");
    assert!(error.message.contains(&dead_mirror) && error.message.contains(&upstream), "{}", error.message);
}

#[tokio::test]
async fn too_little_disk_space_stops_before_downloading() {
    let registry = Registry::start(None).await;
    let client = pusher();
    let auth = RegistryAuth::Anonymous;
    let repo = format!("{}/kairos/os", registry.addr);
    push_image(&client, &format!("{repo}:v1"), &auth, "amd64", 70).await;
    // The same blobs under a manifest that claims a petabyte-sized layer.
    let reference: Reference = format!("{repo}:v1").parse().expect("reference");
    let (raw, _) = client
        .pull_manifest_raw(&reference, &auth, &[oci_client::manifest::OCI_IMAGE_MEDIA_TYPE])
        .await
        .expect("manifest");
    let mut manifest: OciImageManifest = serde_json::from_slice(&raw).expect("manifest json");
    manifest.layers[1].size = 1 << 50;
    let huge: Reference = format!("{repo}:huge").parse().expect("reference");
    client.push_manifest(&huge, &manifest.into()).await.expect("push the huge manifest");

    let state = tempfile::tempdir().expect("tempdir");
    let puller = plain_puller(state.path(), &[&registry.addr], Platform::linux_amd64());
    let recorder = Recorder::default();
    let error = puller.pull(&huge.whole(), "", &recorder).await.expect_err("no room");
    assert_eq!(error.reason, pb::FailureReason::InsufficientSpace, "{error:?}");
    assert!(recorder.progress.lock().expect("lock").is_empty(), "progress reported before the space check");
}

#[tokio::test]
async fn bandwidth_cap_paces_the_download_and_progress_stays_sparse() {
    let registry = Registry::start(None).await;
    let client = pusher();
    let reference = format!("{}/kairos/os:v1", registry.addr);
    push_image(&client, &reference, &RegistryAuth::Anonymous, "amd64", 80).await;
    let cap = 512 * 1024;
    let config = RegistryConfig {
        plain_http: vec![registry.addr.clone()],
        max_bytes_per_second: cap,
        ..RegistryConfig::default()
    };
    let state = tempfile::tempdir().expect("tempdir");
    let puller = Puller::new(config, state.path(), Platform::linux_amd64());
    let recorder = Recorder::default();
    let started = Instant::now();
    puller.pull(&reference, "", &recorder).await.expect("capped pull");
    let elapsed = started.elapsed();
    // Two layers of ~300 KiB at 512 KiB/s take more than a second.
    let bytes = 2 * LAYER_BYTES as u64;
    assert!(elapsed.as_secs_f64() > 0.9 * bytes as f64 / cap as f64, "{bytes} bytes in {elapsed:?} at {cap} B/s");
    let sent = recorder.progress.lock().expect("lock").len();
    // At most four a second, plus one per layer and phase end.
    assert!(sent as f64 <= elapsed.as_secs_f64() * 4.0 + 10.0, "{sent} progress messages in {elapsed:?}");
}
