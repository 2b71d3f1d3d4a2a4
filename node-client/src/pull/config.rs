//! The `[registry]` section of node-client.toml: where images are pulled
//! from and how.
//!
//! ```toml
//! [registry]
//! default = "quay.io"                 # for references without a registry
//! plain_http = ["mirror.local:5000"]  # everything else is HTTPS only
//! max_bytes_per_second = 10485760     # 0 or absent: no cap
//! retries = 3                         # per request, with backoff
//!
//! [registry.mirrors]                  # tried in order, upstream last
//! "quay.io" = ["mirror.local:5000/quay"]
//!
//! [registry.credentials."quay.io"]
//! username = "robot"
//! password = "secret"
//! [registry.credentials."mirror.local:5000"]
//! token = "bearer-token"
//! [registry.credentials."ghcr.io"]
//! docker_config = "/etc/kairos/docker-config.json"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Registry used for references that name none (`kairos/opensuse:tag`).
pub const DEFAULT_REGISTRY: &str = "quay.io";
/// Retries of a failed registry request when the section does not say.
pub const DEFAULT_RETRIES: u32 = 3;

/// How the node reaches registries (`[registry]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registry (`host[:port]`) for references without one; quay.io.
    pub default: String,
    /// Per upstream registry (`host[:port]`), the prefixes it is mirrored
    /// under (`host[:port][/path]`), tried in order before the upstream.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Per registry (`host[:port]`, upstream or mirror), how to log in;
    /// registries not listed are read anonymously.
    pub credentials: BTreeMap<String, Credential>,
    /// Registries (`host[:port]`) reached over plain HTTP; every other
    /// registry is reached over HTTPS only.
    pub plain_http: Vec<String>,
    /// Download cap in bytes per second over all blobs; 0 = no cap.
    pub max_bytes_per_second: u64,
    /// Retries of a failed request (connection, 5xx, 429) before the pull
    /// from that source is given up.
    pub retries: u32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            default: DEFAULT_REGISTRY.to_string(),
            mirrors: BTreeMap::new(),
            credentials: BTreeMap::new(),
            plain_http: Vec::new(),
            max_bytes_per_second: 0,
            retries: DEFAULT_RETRIES,
        }
    }
}

/// How to log in to one registry.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Credential {
    /// HTTP basic credentials (also exchanged for a bearer token when the
    /// registry asks for one).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// A bearer token sent as is.
    Token {
        /// The token.
        token: String,
    },
    /// A docker `config.json` whose `auths.<registry>.auth` holds
    /// base64 `user:password`; read when the puller first talks to that
    /// registry (the client keeps credentials for its lifetime).
    DockerConfig {
        /// Path of the file.
        docker_config: PathBuf,
    },
}

impl std::fmt::Debug for Credential {
    // Secrets stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => {
                f.debug_struct("Basic").field("username", username).finish_non_exhaustive()
            }
            Credential::Token { .. } => f.debug_struct("Token").finish_non_exhaustive(),
            Credential::DockerConfig { docker_config } => {
                f.debug_struct("DockerConfig").field("docker_config", docker_config).finish()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_section_reads_mirrors_and_each_kind_of_credential() {
        let text = r#"
            plain_http = ["mirror.local:5000"]
            max_bytes_per_second = 1000
            [mirrors]
            "quay.io" = ["mirror.local:5000/quay"]
            [credentials."quay.io"]
            username = "u"
            password = "p"
            [credentials."mirror.local:5000"]
            token = "t"
            [credentials."ghcr.io"]
            docker_config = "/etc/docker.json"
        "#;
        let config: RegistryConfig = toml::from_str(text).expect("valid section");
        assert_eq!(config.default, "quay.io");
        assert_eq!(config.retries, DEFAULT_RETRIES);
        assert_eq!(config.mirrors["quay.io"], vec!["mirror.local:5000/quay".to_string()]);
        assert_eq!(config.credentials["quay.io"], Credential::Basic { username: "u".into(), password: "p".into() });
        assert_eq!(config.credentials["mirror.local:5000"], Credential::Token { token: "t".into() });
        assert_eq!(
            config.credentials["ghcr.io"],
            Credential::DockerConfig { docker_config: PathBuf::from("/etc/docker.json") }
        );
        assert!(!format!("{:?}", config.credentials).contains("\"p\""));
    }
}
