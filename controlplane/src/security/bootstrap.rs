//! What `kairos-controlplane init` writes, and the files a replica reads
//! when it starts: `replica.toml` and, on the bootstrap replica,
//! `bootstrap-tokens.toml`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::fs::{create_dir, read_text, write_private, write_public};
use super::pki::{CA_CERT_FILE, CA_KEY_FILE};
use super::token::{generate_token, Role, TokenId, TokenRecord};
use super::{Ca, NodeIssuer, ReplicaCredentials, SecurityError};
use crate::cli_config::{CliConfig, Context};

/// A replica's own configuration file, in its data dir.
pub const REPLICA_CONFIG_FILE: &str = "replica.toml";
/// Token records the bootstrap replica seeds the replicated state with.
pub const BOOTSTRAP_TOKENS_FILE: &str = "bootstrap-tokens.toml";
/// The admin token `init` creates, in the init dir (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// kairosctl's config for the new cluster, in the init dir.
pub const KAIROSCTL_CONFIG_FILE: &str = "kairosctl.toml";
/// Common name of the CA `init` creates.
pub const CA_COMMON_NAME: &str = "Kairos Fleet CA";

/// One `--replica ID=HOST:PORT` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSpec {
    /// Raft node id, at least 1.
    pub id: u64,
    /// IP address (IPv6 without brackets) or DNS name clients and peers use.
    pub host: String,
    /// TCP port, not 0.
    pub port: u16,
}

impl ReplicaSpec {
    /// `HOST:PORT`, IPv6 bracketed: what the replica listens on and peers dial.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `https://HOST:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.address())
    }
}

impl fmt::Display for ReplicaSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.id, self.address())
    }
}

impl FromStr for ReplicaSpec {
    type Err = SecurityError;

    /// Parses `ID=HOST:PORT`; `[v6]:PORT` for IPv6.
    fn from_str(value: &str) -> Result<ReplicaSpec, SecurityError> {
        let invalid = |rule: &str| SecurityError::InvalidReplica { value: value.into(), rule: rule.into() };
        let (id, addr) = value.split_once('=').ok_or_else(|| invalid("expected ID=HOST:PORT, e.g. 1=10.0.0.5:7001"))?;
        let id: u64 = id.trim().parse().map_err(|_| invalid("ID must be a whole number"))?;
        if id == 0 {
            return Err(invalid("ID must be at least 1"));
        }
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| invalid("the address needs a port: HOST:PORT"))?;
        let port: u16 = port.parse().map_err(|_| invalid("PORT must be a number from 1 to 65535"))?;
        if port == 0 {
            return Err(invalid("PORT must be a number from 1 to 65535"));
        }
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<IpAddr>().map_err(|_| invalid("[...] must hold an IPv6 address"))?.to_string(),
            None if host.contains(':') => return Err(invalid("write an IPv6 address in brackets: [::1]:7001")),
            None => host.to_ascii_lowercase(),
        };
        if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
            return Err(invalid("HOST must be an address peers and clients can reach, not 0.0.0.0 or ::"));
        }
        // The same check the certificate's SAN gets, reported against the flag.
        let ca_rule = |e: SecurityError| invalid(&e.to_string());
        super::pki::check_host(&host).map_err(ca_rule)?;
        Ok(ReplicaSpec { id, host, port })
    }
}

/// A member the bootstrap replica initializes the cluster with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Raft node id.
    pub id: u64,
    /// `HOST:PORT` to dial it at.
    pub address: String,
}

/// `replica.toml`: who this replica is and how it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaConfig {
    /// Raft node id; its certificate's CN is `replica-<id>`.
    pub id: u64,
    /// `HOST:PORT` to serve gRPC (public API and raft) on, and to be dialed at.
    pub listen: String,
    /// True on exactly one replica: it initializes the raft cluster (with
    /// `initial_members`) and seeds `bootstrap-tokens.toml` once leader.
    /// The others wait to be contacted by the leader.
    #[serde(default)]
    pub bootstrap: bool,
    /// Bootstrap replica only: every replica `init` was given, itself included.
    #[serde(default)]
    pub initial_members: Vec<Member>,
}

impl ReplicaConfig {
    /// Loads `dir/replica.toml`.
    pub fn load(dir: &Path) -> Result<ReplicaConfig, SecurityError> {
        load_toml(&dir.join(REPLICA_CONFIG_FILE))
    }

    /// Writes `dir/replica.toml`.
    pub fn save(&self, dir: &Path) -> Result<(), SecurityError> {
        let path = dir.join(REPLICA_CONFIG_FILE);
        write_public(&path, to_toml(self, &path)?.as_bytes())
    }
}

/// `bootstrap-tokens.toml`: token records (hashes only) the bootstrap
/// replica writes into the replicated state when it first becomes leader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapTokens {
    /// The records, `[[tokens]]` in the file.
    #[serde(default)]
    pub tokens: Vec<TokenRecord>,
}

impl BootstrapTokens {
    /// Loads `dir/bootstrap-tokens.toml`; `None` when the file does not exist.
    pub fn load(dir: &Path) -> Result<Option<BootstrapTokens>, SecurityError> {
        let path = dir.join(BOOTSTRAP_TOKENS_FILE);
        if !path.exists() {
            return Ok(None);
        }
        load_toml(&path).map(Some)
    }

    /// Writes `dir/bootstrap-tokens.toml` (0600: hashes only, still nobody else's business).
    pub fn save(&self, dir: &Path) -> Result<(), SecurityError> {
        let path = dir.join(BOOTSTRAP_TOKENS_FILE);
        write_private(&path, to_toml(self, &path)?.as_bytes())
    }
}

/// What `init` is asked to do.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Folder to create everything in.
    pub data_dir: PathBuf,
    /// The replicas; the first one bootstraps the cluster.
    pub replicas: Vec<ReplicaSpec>,
    /// Replace an existing CA key.
    pub force: bool,
}

/// What `init` created.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// Every file written, in order.
    pub files: Vec<PathBuf>,
    /// Each replica's data dir, in the order given.
    pub replica_dirs: Vec<(ReplicaSpec, PathBuf)>,
    /// Id of the admin token (its secret is only in `admin.token`).
    pub admin_token_id: TokenId,
}

/// Checks the replica list: at least one, unique ids, unique addresses.
pub fn validate_replicas(replicas: &[ReplicaSpec]) -> Result<(), SecurityError> {
    if replicas.is_empty() {
        return Err(SecurityError::InvalidReplica { value: String::new(), rule: "give at least one replica".into() });
    }
    let (mut ids, mut addresses) = (BTreeSet::new(), BTreeSet::new());
    for spec in replicas {
        let invalid = |rule: String| SecurityError::InvalidReplica { value: spec.to_string(), rule };
        if !ids.insert(spec.id) {
            return Err(invalid(format!("replica id {} is given twice; ids must be unique", spec.id)));
        }
        if !addresses.insert(spec.address()) {
            return Err(invalid(format!("address {} is given twice; each replica needs its own", spec.address())));
        }
    }
    Ok(())
}

/// Creates the CA, every replica's data dir, the admin token and
/// kairosctl's config under `opts.data_dir` (see the module docs of
/// [`security`](super) for the layout). Refuses to replace an existing
/// `ca.key` unless `opts.force`.
pub fn init_cluster(opts: &InitOptions) -> Result<InitReport, SecurityError> {
    validate_replicas(&opts.replicas)?;
    let dir = &opts.data_dir;
    let ca_key = dir.join(CA_KEY_FILE);
    if ca_key.exists() && !opts.force {
        return Err(SecurityError::WouldOverwrite {
            path: ca_key,
            why: "it is the key of an existing cluster CA; replacing it makes every certificate it issued untrusted",
        });
    }
    // New keys next to an old raft log would make a replica that neither
    // cluster trusts; --force is about keys, never about data.
    for spec in &opts.replicas {
        let store = crate::store::Store::sled_path(&replica_dir(dir, spec.id));
        if store.exists() {
            return Err(SecurityError::ExistingReplicaData { path: store });
        }
    }
    create_dir(dir)?;
    let mut files = Vec::new();

    let ca = Ca::generate(CA_COMMON_NAME)?;
    ca.save(dir)?;
    files.extend([dir.join(CA_CERT_FILE), ca_key]);

    let admin = generate_token()?;
    let token_path = dir.join(ADMIN_TOKEN_FILE);
    write_private(&token_path, format!("{}\n", admin.expose()).as_bytes())?;
    files.push(token_path);
    let now_ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let record = TokenRecord::new(&admin, Role::Admin, "created by kairos-controlplane init", "init", now_ms, None);

    let members: Vec<Member> = opts.replicas.iter().map(|s| Member { id: s.id, address: s.address() }).collect();
    let mut replica_dirs = Vec::new();
    for (i, spec) in opts.replicas.iter().enumerate() {
        let replica_dir = replica_dir(dir, spec.id);
        ReplicaCredentials::issue(&ca, spec.id, std::slice::from_ref(&spec.host))?.save(&replica_dir)?;
        files.extend(["ca.pem", "replica.pem", "replica.key"].map(|f| replica_dir.join(f)));
        files.extend(NodeIssuer::issue(&ca, spec.id)?.save(&replica_dir)?);
        let bootstrap = i == 0;
        let config = ReplicaConfig {
            id: spec.id,
            listen: spec.address(),
            bootstrap,
            initial_members: if bootstrap { members.clone() } else { Vec::new() },
        };
        config.save(&replica_dir)?;
        files.push(replica_dir.join(REPLICA_CONFIG_FILE));
        if bootstrap {
            BootstrapTokens { tokens: vec![record.clone()] }.save(&replica_dir)?;
            files.push(replica_dir.join(BOOTSTRAP_TOKENS_FILE));
        }
        replica_dirs.push((spec.clone(), replica_dir));
    }

    let mut cli = CliConfig::default();
    let mut context = Context::new(opts.replicas.iter().map(ReplicaSpec::endpoint).collect());
    context.ca_file = Some(PathBuf::from(CA_CERT_FILE));
    context.token_file = Some(PathBuf::from(ADMIN_TOKEN_FILE));
    cli.set_context("default", context);
    let cli_path = dir.join(KAIROSCTL_CONFIG_FILE);
    cli.save(&cli_path)?;
    files.push(cli_path);

    Ok(InitReport { files, replica_dirs, admin_token_id: admin.id().clone() })
}

/// Issues replica `replica_id`'s node-issuing intermediate CA with the
/// cluster CA in `init_dir` (which needs `ca.key`) and writes it into
/// `replica_dir`, replacing one that is there; returns the files written.
///
/// For replica folders that predate node CAs, or to renew one. Node
/// certificates the old intermediate signed stay valid: each node presents
/// its own intermediate, and the root still trusts it.
pub fn issue_node_ca(init_dir: &Path, replica_id: u64, replica_dir: &Path) -> Result<Vec<PathBuf>, SecurityError> {
    let ca = Ca::load(init_dir)?;
    let replica_ca = read_text(&replica_dir.join(CA_CERT_FILE))?;
    if replica_ca.trim() != ca.cert_pem().trim() {
        return Err(SecurityError::InvalidFile {
            path: replica_dir.join(CA_CERT_FILE),
            reason: format!("this replica trusts another CA than {}", init_dir.join(CA_CERT_FILE).display()),
        });
    }
    NodeIssuer::issue(&ca, replica_id)?.save(replica_dir)
}

/// `<init dir>/replica-<id>`: replica `id`'s data dir.
pub fn replica_dir(init_dir: &Path, id: u64) -> PathBuf {
    init_dir.join(format!("replica-{id}"))
}

fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, SecurityError> {
    toml::from_str(&read_text(path)?)
        .map_err(|e| SecurityError::InvalidFile { path: path.to_path_buf(), reason: e.to_string() })
}

fn to_toml<T: Serialize>(value: &T, path: &Path) -> Result<String, SecurityError> {
    toml::to_string(value).map_err(|e| SecurityError::InvalidFile { path: path.to_path_buf(), reason: e.to_string() })
}

#[cfg(test)]
#[path = "bootstrap_tests.rs"]
mod tests;
