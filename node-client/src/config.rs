//! The node client's configuration file, `/etc/kairos-fleet/node-client.toml`.
//!
//! Every key is optional and a missing file means all defaults: a node that
//! was only enrolled runs with its enrollment's endpoints and no labels.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where `run` looks for its configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/kairos-fleet/node-client.toml";
/// Where the node keeps its key, certificates, enrollment and status log.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/kairos-fleet";

/// Most labels a node may declare (node.proto, Hello.labels).
pub const MAX_LABELS: usize = 64;
/// Longest label name (the part after an optional DNS prefix) and value.
pub const MAX_LABEL_PART: usize = 63;
/// Longest DNS prefix of a label key.
pub const MAX_LABEL_PREFIX: usize = 253;
/// Longest k3s cluster name.
pub const MAX_CLUSTER_NAME: usize = 253;
/// Most executors in the local allow-list.
pub const MAX_EXECUTORS: usize = 32;
/// Longest executor name.
pub const MAX_EXECUTOR_NAME: usize = 64;
/// Most server endpoints.
pub const MAX_SERVERS: usize = 16;
/// Most words in a configured command (program and arguments).
pub const MAX_COMMAND_WORDS: usize = 64;
/// Placeholders a command template may use; see [`UpgradeConfig`].
pub const PLACEHOLDERS: [&str; 3] = ["{archive}", "{image}", "{digest}"];

/// A configuration that cannot be used; each names the file or field and the rule.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
    /// The file is not valid TOML, or has an unknown key or a wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line.
        message: String,
    },
    /// A value breaks a rule.
    #[error("{field}: {rule} (got {value:?})")]
    Invalid {
        /// The field, e.g. `k3s_role` or `labels.site`.
        field: String,
        /// The rule it broke.
        rule: String,
        /// The offending value.
        value: String,
    },
}

fn invalid(field: impl Into<String>, rule: impl Into<String>, value: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), rule: rule.into(), value: value.into() }
}

/// The node's role in its k3s cluster, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum K3sRoleSetting {
    /// Not part of a cluster (core images, or k3s disabled).
    #[default]
    None,
    /// Runs the Kubernetes control plane.
    Server,
    /// Worker node.
    Agent,
}

impl K3sRoleSetting {
    /// Parses `none`, `server` or `agent`.
    pub fn parse(text: &str) -> Option<K3sRoleSetting> {
        match text {
            "none" => Some(K3sRoleSetting::None),
            "server" => Some(K3sRoleSetting::Server),
            "agent" => Some(K3sRoleSetting::Agent),
            _ => None,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per event.
    Json,
}

/// The validated configuration of `run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Where credentials, enrollment and the status log live.
    pub state_dir: PathBuf,
    /// Labels the node declares in its Hello.
    pub labels: BTreeMap<String, String>,
    /// Role in the k3s cluster.
    pub k3s_role: K3sRoleSetting,
    /// Cluster name; empty exactly when the role is `none`.
    pub k3s_cluster: String,
    /// Upgrade executors this node agrees to run.
    pub allowed_executors: Vec<String>,
    /// Endpoints to use instead of the ones enrollment returned.
    pub servers: Option<Vec<String>>,
    /// Log line format.
    pub log_format: LogFormat,
    /// How upgrades are installed, rebooted into and checked.
    pub upgrade: UpgradeConfig,
    /// Where upgrade images are pulled from: default registry, mirrors,
    /// credentials, plain-HTTP registries, bandwidth cap.
    pub registry: crate::pull::RegistryConfig,
}

/// The `[upgrade]` section: the executor, the reboot and the health hook.
///
/// Commands are arrays, program first, run without a shell. Executor
/// arguments may use `{archive}` (the pulled OCI image-layout tar),
/// `{image}` (the target reference) and `{digest}` (its manifest digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeConfig {
    /// The default executor (`ExecutorHints.name` empty or `kairos-agent`).
    pub command: Vec<String>,
    /// Appended to the executor's arguments when the upgrade is of the
    /// recovery partition (`ExecutorHints.recovery`).
    pub recovery_arguments: Vec<String>,
    /// Commands of the other executors, by name; each name must also be
    /// in `allowed_executors`.
    pub executors: BTreeMap<String, Vec<String>>,
    /// How long an executor may run when the desired state sets no timeout.
    pub executor_timeout: Duration,
    /// Reboots the node once the new image is installed.
    pub reboot_command: Vec<String>,
    /// How long the node may take to go down after the reboot command
    /// returned; after it the upgrade is reported failed.
    pub reboot_timeout: Duration,
    /// Run after the reboot on the target release; exit 0 means healthy.
    /// None: the node is healthy when it booted the target from active.
    pub health_command: Option<Vec<String>>,
    /// How long the health command may run.
    pub health_timeout: Duration,
}

/// The default executor's name in `ExecutorHints.name` (besides the empty name).
pub const DEFAULT_EXECUTOR: &str = "kairos-agent";
/// Default `upgrade.executor_timeout`.
pub const DEFAULT_EXECUTOR_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default `upgrade.reboot_timeout`.
pub const DEFAULT_REBOOT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Default `upgrade.health_timeout`.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2 * 60);

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|w| w.to_string()).collect()
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        UpgradeConfig {
            command: words(&["kairos-agent", "upgrade", "--source", "ocifile:{archive}"]),
            recovery_arguments: words(&["--recovery"]),
            executors: BTreeMap::new(),
            executor_timeout: DEFAULT_EXECUTOR_TIMEOUT,
            reboot_command: words(&["reboot"]),
            reboot_timeout: DEFAULT_REBOOT_TIMEOUT,
            health_command: None,
            health_timeout: DEFAULT_HEALTH_TIMEOUT,
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            labels: BTreeMap::new(),
            k3s_role: K3sRoleSetting::None,
            k3s_cluster: String::new(),
            allowed_executors: Vec::new(),
            servers: None,
            log_format: LogFormat::Human,
            upgrade: UpgradeConfig::default(),
            registry: crate::pull::RegistryConfig::default(),
        }
    }
}

/// The file as written: strings are checked by [`ClientConfig::parse`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    k3s_role: Option<String>,
    #[serde(default)]
    k3s_cluster: String,
    #[serde(default)]
    allowed_executors: Vec<String>,
    servers: Option<Vec<String>>,
    log_format: Option<String>,
    upgrade: Option<RawUpgrade>,
    #[serde(default)]
    registry: crate::pull::RegistryConfig,
}

/// `[upgrade]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpgrade {
    command: Option<Vec<String>>,
    recovery_arguments: Option<Vec<String>>,
    #[serde(default)]
    executors: BTreeMap<String, Vec<String>>,
    executor_timeout: Option<String>,
    reboot_command: Option<Vec<String>>,
    reboot_timeout: Option<String>,
    health_command: Option<Vec<String>>,
    health_timeout: Option<String>,
}

impl ClientConfig {
    /// Reads and validates `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<ClientConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => ClientConfig::parse(&text).map_err(|e| match e {
                ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_path_buf(), message },
                other => other,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ClientConfig::default()),
            Err(source) => Err(ConfigError::Read { path: path.to_path_buf(), source }),
        }
    }

    /// Parses and validates the text of a configuration file.
    pub fn parse(text: &str) -> Result<ClientConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: PathBuf::from("<config>"), message: e.to_string() })?;
        let state_dir = raw.state_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        if !state_dir.is_absolute() {
            return Err(invalid("state_dir", "must be an absolute path", state_dir.display().to_string()));
        }
        if raw.labels.len() > MAX_LABELS {
            return Err(invalid("labels", format!("at most {MAX_LABELS} labels"), raw.labels.len().to_string()));
        }
        for (key, value) in &raw.labels {
            check_label(key, value)?;
        }
        let k3s_role = match raw.k3s_role.as_deref() {
            None => K3sRoleSetting::None,
            Some(text) => K3sRoleSetting::parse(text)
                .ok_or_else(|| invalid("k3s_role", "must be `none`, `server` or `agent`", text))?,
        };
        check_cluster(k3s_role, &raw.k3s_cluster)?;
        if raw.allowed_executors.len() > MAX_EXECUTORS {
            let count = raw.allowed_executors.len().to_string();
            return Err(invalid("allowed_executors", format!("at most {MAX_EXECUTORS} entries"), count));
        }
        for name in &raw.allowed_executors {
            check_executor(name)?;
        }
        if let Some(servers) = &raw.servers {
            check_servers("servers", servers)?;
        }
        let log_format = match raw.log_format.as_deref() {
            None | Some("human") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(invalid("log_format", "must be `human` or `json`", other)),
        };
        let upgrade = match raw.upgrade {
            None => UpgradeConfig::default(),
            Some(raw_upgrade) => parse_upgrade(raw_upgrade, &raw.allowed_executors)?,
        };
        Ok(ClientConfig {
            state_dir,
            labels: raw.labels,
            k3s_role,
            k3s_cluster: raw.k3s_cluster,
            allowed_executors: raw.allowed_executors,
            servers: raw.servers,
            log_format,
            upgrade,
            registry: raw.registry,
        })
    }
}

fn parse_upgrade(raw: RawUpgrade, allowed_executors: &[String]) -> Result<UpgradeConfig, ConfigError> {
    let defaults = UpgradeConfig::default();
    let command = raw.command.unwrap_or(defaults.command);
    check_command("upgrade.command", &command, true)?;
    let recovery_arguments = raw.recovery_arguments.unwrap_or(defaults.recovery_arguments);
    check_arguments("upgrade.recovery_arguments", &recovery_arguments, true)?;
    for (name, command) in &raw.executors {
        let field = format!("upgrade.executors.{name}");
        check_executor(name)
            .map_err(|_| invalid(&field, "the name must be 1 to 64 characters of A-Z a-z 0-9 . _ -", name.as_str()))?;
        if name == DEFAULT_EXECUTOR {
            return Err(invalid(field, "the default executor is set with upgrade.command", name.as_str()));
        }
        if !allowed_executors.contains(name) {
            return Err(invalid(field, "the executor must also be listed in allowed_executors", name.as_str()));
        }
        check_command(&field, command, true)?;
    }
    let executor_timeout = timeout_of("upgrade.executor_timeout", raw.executor_timeout, defaults.executor_timeout)?;
    let reboot_command = raw.reboot_command.unwrap_or(defaults.reboot_command);
    check_command("upgrade.reboot_command", &reboot_command, false)?;
    let reboot_timeout = timeout_of("upgrade.reboot_timeout", raw.reboot_timeout, defaults.reboot_timeout)?;
    if let Some(health) = &raw.health_command {
        check_command("upgrade.health_command", health, false)?;
    }
    let health_timeout = timeout_of("upgrade.health_timeout", raw.health_timeout, defaults.health_timeout)?;
    Ok(UpgradeConfig {
        command,
        recovery_arguments,
        executors: raw.executors,
        executor_timeout,
        reboot_command,
        reboot_timeout,
        health_command: raw.health_command,
        health_timeout,
    })
}

/// A positive duration such as `30m`; `default` when unset.
fn timeout_of(field: &str, text: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    let Some(text) = text else { return Ok(default) };
    let duration = parse_duration(&text).map_err(|e| invalid(field, e, text.as_str()))?;
    if duration.is_zero() {
        return Err(invalid(field, "must be longer than zero", text));
    }
    Ok(duration)
}

/// A command: a non-empty program and at most [`MAX_COMMAND_WORDS`] words;
/// `placeholders` allows the [`PLACEHOLDERS`] in its arguments.
fn check_command(field: &str, command: &[String], placeholders: bool) -> Result<(), ConfigError> {
    let Some(program) = command.first() else {
        return Err(invalid(field, "must name a program, e.g. [\"/usr/bin/true\"]", "[]"));
    };
    if program.trim().is_empty() || program.contains('{') {
        return Err(invalid(field, "the program (first word) must be a plain path or name", program.as_str()));
    }
    check_arguments(field, &command[1..], placeholders)
}

fn check_arguments(field: &str, arguments: &[String], placeholders: bool) -> Result<(), ConfigError> {
    if arguments.len() >= MAX_COMMAND_WORDS {
        return Err(invalid(field, format!("at most {MAX_COMMAND_WORDS} words"), arguments.len().to_string()));
    }
    for word in arguments {
        if word.contains('\0') {
            return Err(invalid(field, "a word must not contain NUL", word.as_str()));
        }
        let mut rest = word.as_str();
        while let Some(start) = rest.find(['{', '}']) {
            let tail = &rest[start..];
            let known = PLACEHOLDERS.iter().find(|p| tail.starts_with(**p));
            match known {
                Some(p) if placeholders => rest = &tail[p.len()..],
                _ => {
                    let rule = if placeholders {
                        "braces may only form {archive}, {image} or {digest}"
                    } else {
                        "this command takes no placeholders (no braces)"
                    };
                    return Err(invalid(field, rule, word.as_str()));
                }
            }
        }
    }
    Ok(())
}

/// A label key is an optional DNS prefix and `/`, then 1 to 63 characters
/// of `[A-Za-z0-9._-]`; a value is at most 63 printable characters (the
/// control plane's rule for enrollment labels).
pub fn check_label(key: &str, value: &str) -> Result<(), ConfigError> {
    let field = format!("labels.{key}");
    let (prefix, name) = key.rsplit_once('/').map_or((None, key), |(p, n)| (Some(p), n));
    let name_ok = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > MAX_LABEL_PART || !name_ok {
        return Err(invalid(field, "the key's name must be 1 to 63 characters of A-Z a-z 0-9 . _ -", key));
    }
    if let Some(prefix) = prefix {
        let dns_ok =
            |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if prefix.len() > MAX_LABEL_PREFIX || !prefix.split('.').all(dns_ok) {
            return Err(invalid(field, "the key's prefix must be a DNS name, e.g. fleet.kairos.io/wave", key));
        }
    }
    if value.chars().count() > MAX_LABEL_PART || value.chars().any(char::is_control) {
        return Err(invalid(field, "the value must be at most 63 printable characters", value));
    }
    Ok(())
}

fn check_cluster(role: K3sRoleSetting, cluster: &str) -> Result<(), ConfigError> {
    match role {
        K3sRoleSetting::None if !cluster.is_empty() => {
            Err(invalid("k3s_cluster", "must be empty when k3s_role is `none` (or unset)", cluster))
        }
        K3sRoleSetting::Server | K3sRoleSetting::Agent if cluster.is_empty() => {
            Err(invalid("k3s_cluster", "must name the cluster when k3s_role is `server` or `agent`", cluster))
        }
        _ if cluster.len() > MAX_CLUSTER_NAME || cluster.chars().any(char::is_control) => {
            Err(invalid("k3s_cluster", "must be at most 253 bytes without control characters", cluster))
        }
        _ => Ok(()),
    }
}

fn check_executor(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_EXECUTOR_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(invalid("allowed_executors", "each name must be 1 to 64 characters of A-Z a-z 0-9 . _ -", name));
    }
    Ok(())
}

/// Server endpoints: 1 to 16 `https://host[:port]` URLs.
pub fn check_servers(field: &str, servers: &[String]) -> Result<(), ConfigError> {
    if servers.is_empty() || servers.len() > MAX_SERVERS {
        let rule = format!("must list 1 to {MAX_SERVERS} endpoints");
        return Err(invalid(field, rule, servers.len().to_string()));
    }
    for url in servers {
        crate::tls::endpoint_host(url).map_err(|e| invalid(field, e.to_string(), url.as_str()))?;
    }
    Ok(())
}

/// Parses a duration such as `500ms`, `2s`, `5m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 2s or 500ms"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("{text:?}: unknown unit {other:?}; use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_means_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ClientConfig::load(&dir.path().join("absent.toml")).expect("defaults");
        assert_eq!(config, ClientConfig::default());
        assert_eq!(config.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    }

    #[test]
    fn full_config_parses() {
        let config = ClientConfig::parse(
            r#"
            state_dir = "/var/lib/kf"
            labels = { site = "berlin", "fleet.kairos.io/wave" = "canary" }
            k3s_role = "server"
            k3s_cluster = "edge-1"
            allowed_executors = ["kairos-agent"]
            servers = ["https://fleet-1.example:7443", "https://[::1]:7443"]
            log_format = "json"
            "#,
        )
        .expect("valid");
        assert_eq!(config.k3s_role, K3sRoleSetting::Server);
        assert_eq!(config.labels.get("site").map(String::as_str), Some("berlin"));
        assert_eq!(config.servers.as_ref().map(Vec::len), Some(2));
        assert_eq!(config.log_format, LogFormat::Json);
    }

    fn field_of(text: &str) -> String {
        match ClientConfig::parse(text) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{text}: expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn invalid_values_name_their_field() {
        assert_eq!(field_of("k3s_role = \"master\""), "k3s_role");
        assert_eq!(field_of("k3s_role = \"agent\""), "k3s_cluster");
        assert_eq!(field_of("k3s_cluster = \"c1\""), "k3s_cluster");
        assert_eq!(field_of("labels = { \"bad key\" = \"x\" }"), "labels.bad key");
        assert_eq!(field_of("labels = { \"a..example/b\" = \"x\" }"), "labels.a..example/b");
        assert_eq!(field_of("allowed_executors = [\"rm -rf\"]"), "allowed_executors");
        assert_eq!(field_of("servers = [\"http://plain:80\"]"), "servers");
        assert_eq!(field_of("servers = []"), "servers");
        assert_eq!(field_of("log_format = \"xml\""), "log_format");
        assert_eq!(field_of("state_dir = \"relative\""), "state_dir");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = ClientConfig::parse("heartbeat = 5").expect_err("unknown key");
        assert!(err.to_string().contains("heartbeat"), "{err}");
    }

    #[test]
    fn upgrade_section_defaults_to_kairos_agent_and_reboot() {
        let config = ClientConfig::parse("").expect("empty");
        assert_eq!(config.upgrade, UpgradeConfig::default());
        assert_eq!(config.upgrade.command, ["kairos-agent", "upgrade", "--source", "ocifile:{archive}"]);
        assert_eq!(config.upgrade.reboot_command, ["reboot"]);
        assert_eq!(config.upgrade.health_command, None);
        let config = ClientConfig::parse("[upgrade]\n").expect("empty section");
        assert_eq!(config.upgrade, UpgradeConfig::default());
    }

    #[test]
    fn upgrade_section_parses() {
        let config = ClientConfig::parse(
            r#"
            allowed_executors = ["custom"]
            [upgrade]
            command = ["/opt/agent", "upgrade", "--source", "ocifile:{archive}", "--ref={image}@{digest}"]
            recovery_arguments = []
            executors = { custom = ["/opt/custom", "{archive}"] }
            executor_timeout = "45m"
            reboot_command = ["systemctl", "reboot"]
            reboot_timeout = "5m"
            health_command = ["/opt/health", "--quick"]
            health_timeout = "30s"
            "#,
        )
        .expect("valid");
        let upgrade = config.upgrade;
        assert_eq!(upgrade.command[0], "/opt/agent");
        assert!(upgrade.recovery_arguments.is_empty());
        assert_eq!(upgrade.executors.get("custom").map(Vec::len), Some(2));
        assert_eq!(upgrade.executor_timeout, Duration::from_secs(45 * 60));
        assert_eq!(upgrade.reboot_timeout, Duration::from_secs(5 * 60));
        assert_eq!(upgrade.health_command.as_deref().map(<[String]>::len), Some(2));
        assert_eq!(upgrade.health_timeout, Duration::from_secs(30));
    }

    #[test]
    fn invalid_upgrade_values_name_their_key() {
        let upgrade = |body: &str| field_of(&format!("allowed_executors = [\"custom\"]\n[upgrade]\n{body}\n"));
        assert_eq!(upgrade("command = []"), "upgrade.command");
        assert_eq!(upgrade("command = [\"\"]"), "upgrade.command");
        assert_eq!(upgrade("command = [\"a\", \"{archve}\"]"), "upgrade.command");
        assert_eq!(upgrade("command = [\"a\", \"{archive\"]"), "upgrade.command");
        assert_eq!(upgrade("recovery_arguments = [\"{x}\"]"), "upgrade.recovery_arguments");
        assert_eq!(upgrade("executors = { other = [\"a\"] }"), "upgrade.executors.other");
        assert_eq!(upgrade("executors = { custom = [] }"), "upgrade.executors.custom");
        assert_eq!(upgrade("executors = { kairos-agent = [\"a\"] }"), "upgrade.executors.kairos-agent");
        assert_eq!(upgrade("executor_timeout = \"0s\""), "upgrade.executor_timeout");
        assert_eq!(upgrade("executor_timeout = \"soon\""), "upgrade.executor_timeout");
        assert_eq!(upgrade("reboot_command = []"), "upgrade.reboot_command");
        assert_eq!(upgrade("reboot_command = [\"reboot\", \"{image}\"]"), "upgrade.reboot_command");
        assert_eq!(upgrade("reboot_timeout = \"0ms\""), "upgrade.reboot_timeout");
        assert_eq!(upgrade("health_command = []"), "upgrade.health_command");
        assert_eq!(upgrade("health_timeout = \"-1s\""), "upgrade.health_timeout");
        let err = ClientConfig::parse("[upgrade]\nreboot = [\"x\"]\n").expect_err("unknown key");
        assert!(err.to_string().contains("reboot"), "{err}");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("2 fortnights").is_err());
        assert!(parse_duration("s").is_err());
    }
}
