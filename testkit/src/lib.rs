//! Test parts shared by the tests of the Kairos Fleet crates.
//!
//! [`LocalRegistry`] is a real OCI registry (Debian's `docker-registry`)
//! on 127.0.0.1, its storage in a temporary folder, holding the small
//! images a test pushes. `scripts/test` installs the package; a test that
//! needs it fails (never skips) when it is missing.
#![deny(missing_docs)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;

/// Where Debian's `docker-registry` package installs the registry.
pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A `docker-registry` on 127.0.0.1 speaking plain HTTP; killed when dropped,
/// so a failing test leaves nothing behind.
pub struct LocalRegistry {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl LocalRegistry {
    /// Starts a registry with `extra_yaml` appended to its configuration
    /// (e.g. an `auth:` section), and waits until it answers.
    pub async fn start_with(extra_yaml: &str) -> LocalRegistry {
        assert!(
            Path::new(REGISTRY_BINARY).exists(),
            "{REGISTRY_BINARY} is missing: run scripts/test, which installs the Debian package docker-registry \
             this test needs"
        );
        // reqwest (the readiness probe, oci-client) needs the process's crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yml");
        let yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n{extra_yaml}",
            dir.path().join("data").display()
        );
        std::fs::write(&config, yaml).expect("write the registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut registry = LocalRegistry { child, addr, dir };
        for _ in 0..200 {
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!("docker-registry exited with {status}: {}", registry.log());
            }
            if registry_answers(&registry.addr).await {
                return registry;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("docker-registry did not answer http://{}/v2/ within 10 s: {}", registry.addr, registry.log());
    }

    /// Starts a registry without authentication.
    pub async fn start() -> LocalRegistry {
        LocalRegistry::start_with("").await
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The registry's storage root (blobs live under
    /// `docker/registry/v2/blobs/sha256/<xx>/<digest>/data`).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What the registry logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `<addr>/<repository>:<tag>`.
    pub fn reference(&self, repository: &str, tag: &str) -> String {
        format!("{}/{repository}:{tag}", self.addr)
    }

    /// Pushes one image for `linux/<arch>` made of `layers` to `repository`
    /// under every tag of `tags` (the first must exist); returns its
    /// manifest digest as the registry reported it.
    pub async fn push(&self, repository: &str, tags: &[&str], layers: Vec<Vec<u8>>, arch: &str) -> String {
        push_image(&self.addr, repository, tags, layers, arch).await
    }
}

/// Whether the registry at `addr` (`host:port`, plain HTTP) answers its
/// API root; 401 counts, as a registry with auth answers the probe that way.
pub async fn registry_answers(addr: &str) -> bool {
    // reqwest needs the process's crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = format!("http://{addr}/v2/");
    reqwest::get(&url).await.is_ok_and(|r| r.status().is_success() || r.status().as_u16() == 401)
}

/// Pushes one image for `linux/<arch>` made of `layers` to `repository` of
/// the plain-HTTP registry at `addr` (`host:port`, e.g. a registry
/// container's published port) under every tag of `tags` (the first must
/// exist); returns its manifest digest as the registry reported it.
pub async fn push_image(addr: &str, repository: &str, tags: &[&str], layers: Vec<Vec<u8>>, arch: &str) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = oci_client::Client::try_from(ClientConfig { protocol: ClientProtocol::Http, ..Default::default() })
        .expect("oci client");
    let layers: Vec<ImageLayer> = layers.into_iter().map(|l| ImageLayer::oci_v1(l, None)).collect();
    let config = Config::oci_v1(format!(r#"{{"architecture":"{arch}","os":"linux"}}"#).into_bytes(), None);
    let manifest = OciImageManifest::build(&layers, &config, None);
    let reference = |tag: &str| Reference::with_tag(addr.to_string(), repository.to_string(), tag.into());
    let (first, rest) = tags.split_first().expect("at least one tag");
    let pushed = client
        .push(&reference(first), &layers, config, &RegistryAuth::Anonymous, Some(manifest.clone()))
        .await
        .expect("push");
    for tag in rest {
        client.push_manifest(&reference(tag), &OciManifest::Image(manifest.clone())).await.expect("tag");
    }
    // The registry answers with the manifest's location, ending in its digest.
    let digest = pushed.manifest_url.rsplit('/').next().expect("a location").to_owned();
    assert!(digest.starts_with("sha256:"), "{}", pushed.manifest_url);
    digest
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
