//! Where an image reference is pulled from: the default registry for bare
//! references, the mirrors of its registry in order and then the upstream,
//! each with the credentials configured for it.

use std::path::Path;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde::Deserialize;

use super::config::{Credential, RegistryConfig};

/// One place to pull an image from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The reference on that registry (without tag or digest rewriting).
    pub reference: Reference,
    /// `host[:port]` of that registry.
    pub registry: String,
}

/// Why a reference or a credential could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The reference does not parse.
    #[error("{reference:?} is not an image reference: {reason}")]
    Reference {
        /// The text as given.
        reference: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A docker config.json could not be used for a registry.
    #[error("credentials for {registry} from {path}: {reason}")]
    DockerConfig {
        /// The registry the credentials were for.
        registry: String,
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

/// `text` with the default registry prepended when its first path
/// component is not a registry (has no `.` or `:` and is not `localhost`).
pub fn with_default_registry(text: &str, default: &str) -> String {
    let first = text.split('/').next().unwrap_or_default();
    let names_registry = text.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if names_registry {
        text.to_string()
    } else {
        format!("{default}/{text}")
    }
}

/// The sources for `text`, mirrors first and the upstream last.
pub fn sources(text: &str, config: &RegistryConfig) -> Result<Vec<Source>, SourceError> {
    let full = with_default_registry(text.trim(), &config.default);
    let parse = |candidate: &str| {
        Reference::try_from(candidate)
            .map_err(|e| SourceError::Reference { reference: candidate.to_string(), reason: e.to_string() })
    };
    let upstream = parse(&full)?;
    let registry = upstream.registry().to_string();
    let mut out = Vec::new();
    for mirror in config.mirrors.get(&registry).into_iter().flatten() {
        let rest = full.strip_prefix(&registry).unwrap_or(&full);
        let reference = parse(&format!("{}{rest}", mirror.trim_end_matches('/')))?;
        out.push(Source { registry: reference.registry().to_string(), reference });
    }
    out.push(Source { reference: upstream, registry });
    Ok(out)
}

/// The credentials configured for `registry`, anonymous when none are.
pub fn auth_for(registry: &str, config: &RegistryConfig) -> Result<RegistryAuth, SourceError> {
    match config.credentials.get(registry) {
        None => Ok(RegistryAuth::Anonymous),
        Some(Credential::Basic { username, password }) => Ok(RegistryAuth::Basic(username.clone(), password.clone())),
        Some(Credential::Token { token }) => Ok(RegistryAuth::Bearer(token.clone())),
        Some(Credential::DockerConfig { docker_config }) => docker_config_auth(registry, docker_config),
    }
}

#[derive(Deserialize)]
struct DockerConfigFile {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: String,
}

/// Basic credentials for `registry` from a docker config.json (`auths`,
/// keyed by `host[:port]` or `https://host[:port]`).
fn docker_config_auth(registry: &str, path: &Path) -> Result<RegistryAuth, SourceError> {
    let fail = |reason: String| SourceError::DockerConfig {
        registry: registry.to_string(),
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let file: DockerConfigFile = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let entry = file
        .auths
        .iter()
        .find(|(key, _)| {
            let host = key.trim_start_matches("https://").trim_start_matches("http://");
            host.split('/').next() == Some(registry)
        })
        .map(|(_, entry)| entry)
        .ok_or_else(|| fail(format!("no `auths` entry for {registry}")))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry.auth.trim())
        .map_err(|e| fail(format!("`auth` is not base64: {e}")))?;
    let decoded = String::from_utf8(decoded).map_err(|_| fail("`auth` is not UTF-8".to_string()))?;
    let (user, password) = decoded.split_once(':').ok_or_else(|| fail("`auth` is not user:password".to_string()))?;
    Ok(RegistryAuth::Basic(user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_references_go_to_the_default_registry() {
        assert_eq!(with_default_registry("kairos/opensuse:v1", "quay.io"), "quay.io/kairos/opensuse:v1");
        assert_eq!(with_default_registry("localhost:5000/a:v1", "quay.io"), "localhost:5000/a:v1");
        assert_eq!(with_default_registry("ghcr.io/a/b:v1", "quay.io"), "ghcr.io/a/b:v1");
    }

    #[test]
    fn mirrors_come_first_and_the_upstream_last() {
        let mut config = RegistryConfig::default();
        config.mirrors.insert("quay.io".into(), vec!["mirror.local:5000/quay".into()]);
        let found = sources("kairos/opensuse:v1", &config).expect("valid reference");
        let names: Vec<String> = found.iter().map(|s| s.reference.whole()).collect();
        assert_eq!(names, vec!["mirror.local:5000/quay/kairos/opensuse:v1", "quay.io/kairos/opensuse:v1"]);
        assert_eq!(found[0].registry, "mirror.local:5000");
    }

    #[test]
    fn docker_config_auth_entries_decode_to_basic_credentials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("robot:s3cret");
        std::fs::write(&path, format!(r#"{{"auths":{{"https://quay.io":{{"auth":"{auth}"}}}}}}"#)).expect("write");
        let mut config = RegistryConfig::default();
        config.credentials.insert("quay.io".into(), Credential::DockerConfig { docker_config: path });
        assert_eq!(auth_for("quay.io", &config).expect("found"), RegistryAuth::Basic("robot".into(), "s3cret".into()));
    }
}
