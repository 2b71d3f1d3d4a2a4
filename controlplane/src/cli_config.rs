//! kairosctl's config file: kubectl-style named contexts, TOML.
//!
//! ```toml
//! current_context = "default"
//!
//! [contexts.default]
//! endpoints = ["https://127.0.0.1:7001", "https://127.0.0.1:7002"]
//! ca_file = "ca.pem"          # relative paths start at this file's folder
//! token_file = "admin.token"  # or: token = "kft_..."
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::security::fs::write_atomic;

/// Environment variable naming the config file, overriding the default path.
pub const CONFIG_ENV: &str = "KAIROS_CONFIG";

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CliConfig {
    /// Context used when none is named on the command line.
    #[serde(default)]
    pub current_context: String,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
    /// The file this was loaded from; relative paths resolve against its folder.
    #[serde(skip)]
    path: PathBuf,
}

/// One cluster and the credentials to use with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// Replica endpoints, `https://HOST:PORT`; any of them may be called.
    pub endpoints: Vec<String>,
    /// The cluster CA certificate, as written in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// File holding the bearer token, as written in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The bearer token inline (instead of `token_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Folder relative paths resolve against; set when loaded.
    #[serde(skip)]
    base_dir: PathBuf,
}

/// Why the config could not be loaded, saved or used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why the filesystem refused.
        source: io::Error,
    },
    /// The config file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why the filesystem refused.
        source: io::Error,
    },
    /// The file is not valid TOML or does not match the format.
    #[error("{} is not a valid kairosctl config: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A context breaks a rule.
    #[error("context {context:?} in {}: {rule}", path.display())]
    InvalidContext {
        /// The config file.
        path: PathBuf,
        /// The context's name.
        context: String,
        /// The rule it breaks.
        rule: String,
    },
    /// No context was named and `current_context` is empty.
    #[error("no context selected in {}: set current_context or pass --context (known: {})", path.display(), list(known))]
    NoCurrentContext {
        /// The config file.
        path: PathBuf,
        /// The contexts it has.
        known: Vec<String>,
    },
    /// The named context does not exist.
    #[error("no context named {name:?} in {} (known: {})", path.display(), list(known))]
    UnknownContext {
        /// The name asked for.
        name: String,
        /// The config file.
        path: PathBuf,
        /// The contexts it has.
        known: Vec<String>,
    },
    /// Neither `$KAIROS_CONFIG`, `$XDG_CONFIG_HOME` nor `$HOME` is set.
    #[error("cannot find the kairosctl config: set KAIROS_CONFIG, XDG_CONFIG_HOME or HOME, or pass --config")]
    NoDefaultPath,
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

impl CliConfig {
    /// Reads and checks the config at `path`.
    pub fn load(path: &Path) -> Result<CliConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut config: CliConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), reason: e.to_string() })?;
        config.path = path.to_path_buf();
        let base_dir = base_dir(path);
        for (name, context) in &mut config.contexts {
            context.base_dir = base_dir.clone();
            context.check().map_err(|rule| ConfigError::InvalidContext {
                path: path.into(),
                context: name.clone(),
                rule,
            })?;
        }
        Ok(config)
    }

    /// Writes the config to `path` (mode 0600: it may hold a token),
    /// creating its folder.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let write_err = |source| ConfigError::Write { path: path.into(), source };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(write_err)?;
        }
        let text =
            toml::to_string(self).map_err(|e| ConfigError::Parse { path: path.into(), reason: e.to_string() })?;
        write_atomic(path, text.as_bytes(), 0o600).map_err(write_err)
    }

    /// `$KAIROS_CONFIG`, else `$XDG_CONFIG_HOME/kairos/config.toml`, else
    /// `~/.config/kairos/config.toml`.
    pub fn default_path() -> Result<PathBuf, ConfigError> {
        let var = std::env::var_os;
        default_path_from(var(CONFIG_ENV), var("XDG_CONFIG_HOME"), var("HOME"))
    }

    /// The context named `name`, or the current one when `None`.
    pub fn context(&self, name: Option<&str>) -> Result<&Context, ConfigError> {
        let known = || self.contexts.keys().cloned().collect::<Vec<_>>();
        let name = match name {
            Some(name) => name,
            None if self.current_context.is_empty() => {
                return Err(ConfigError::NoCurrentContext { path: self.path.clone(), known: known() })
            }
            None => &self.current_context,
        };
        self.contexts.get(name).ok_or_else(|| ConfigError::UnknownContext {
            name: name.to_string(),
            path: self.path.clone(),
            known: known(),
        })
    }

    /// Adds or replaces context `name`, making it current if none is.
    pub fn set_context(&mut self, name: &str, context: Context) {
        if self.current_context.is_empty() {
            self.current_context = name.to_string();
        }
        self.contexts.insert(name.to_string(), context);
    }

    /// The file this config was loaded from (empty if built in memory).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The config at `path`, or an empty one bound to `path` when no file
    /// is there yet (what `kairosctl config init` starts from).
    pub fn load_or_empty(path: &Path) -> Result<CliConfig, ConfigError> {
        match CliConfig::load(path) {
            Err(ConfigError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(CliConfig { path: path.to_path_buf(), ..CliConfig::default() })
            }
            other => other,
        }
    }

    /// Names of every context, sorted.
    pub fn context_names(&self) -> Vec<String> {
        self.contexts.keys().cloned().collect()
    }

    /// Makes `name` the current context; it must exist.
    pub fn use_context(&mut self, name: &str) -> Result<(), ConfigError> {
        self.context(Some(name))?;
        self.current_context = name.to_string();
        Ok(())
    }

    /// Removes context `name` and returns it; when it was the current one,
    /// no context is current afterwards.
    pub fn remove_context(&mut self, name: &str) -> Result<Context, ConfigError> {
        self.context(Some(name))?;
        if self.current_context == name {
            self.current_context.clear();
        }
        self.contexts.remove(name).ok_or_else(|| ConfigError::UnknownContext {
            name: name.to_string(),
            path: self.path.clone(),
            known: self.context_names(),
        })
    }
}

/// Where a context's bearer token comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `token_file` names a file holding it.
    File,
    /// `token` holds it inline in the config.
    Inline,
    /// The context has no token (a client certificate, or none).
    None,
}

impl TokenSource {
    /// `file`, `inline` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::File => "file",
            TokenSource::Inline => "inline",
            TokenSource::None => "none",
        }
    }
}

impl Context {
    /// A context with these endpoints and no credentials.
    pub fn new(endpoints: Vec<String>) -> Context {
        Context { endpoints, ..Context::default() }
    }

    /// `ca_file`, resolved against the config file's folder.
    pub fn ca_path(&self) -> Option<PathBuf> {
        self.ca_file.as_ref().map(|p| self.base_dir.join(p))
    }

    /// `token_file`, resolved against the config file's folder.
    pub fn token_path(&self) -> Option<PathBuf> {
        self.token_file.as_ref().map(|p| self.base_dir.join(p))
    }

    /// The CA certificate PEM, read from [`ca_path`](Context::ca_path).
    pub fn ca_pem(&self) -> Result<Option<String>, ConfigError> {
        self.ca_path().map(|path| read(&path)).transpose()
    }

    /// The bearer token: inline, or read from the token file with
    /// surrounding whitespace removed.
    pub fn bearer_token(&self) -> Result<Option<String>, ConfigError> {
        if let Some(token) = &self.token {
            return Ok(Some(token.trim().to_string()));
        }
        self.token_path().map(|path| read(&path).map(|t| t.trim().to_string())).transpose()
    }

    /// Where the bearer token comes from.
    pub fn token_source(&self) -> TokenSource {
        match (&self.token, &self.token_file) {
            (Some(_), _) => TokenSource::Inline,
            (None, Some(_)) => TokenSource::File,
            (None, None) => TokenSource::None,
        }
    }

    /// `Err(rule)` when the context breaks a rule of the file format:
    /// no endpoints, an endpoint that is not `https://`, or both a token
    /// and a token file.
    pub fn check(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("endpoints is empty: list at least one https://HOST:PORT".into());
        }
        if let Some(bad) = self.endpoints.iter().find(|e| !e.starts_with("https://")) {
            return Err(format!("endpoint {bad:?} must start with https:// (the control plane only speaks TLS)"));
        }
        if self.token.is_some() && self.token_file.is_some() {
            return Err("set token or token_file, not both".into());
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })
}

/// The folder of `path`; `.` for a bare file name.
fn base_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// [`CliConfig::default_path`] with the environment passed in. Empty
/// variables count as unset, and a relative `XDG_CONFIG_HOME` is ignored,
/// as the XDG spec says.
fn default_path_from(
    kairos_config: Option<OsString>,
    xdg_config_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, ConfigError> {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(path) = set(kairos_config) {
        return Ok(path);
    }
    if let Some(xdg) = set(xdg_config_home).filter(|p| p.is_absolute()) {
        return Ok(xdg.join("kairos").join("config.toml"));
    }
    set(home).map(|home| home.join(".config").join("kairos").join("config.toml")).ok_or(ConfigError::NoDefaultPath)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CliConfig {
        let mut config = CliConfig::default();
        let mut prod = Context::new(vec!["https://10.0.0.1:7001".into(), "https://10.0.0.2:7001".into()]);
        prod.ca_file = Some("certs/ca.pem".into());
        prod.token_file = Some("/etc/kairos/admin.token".into());
        config.set_context("prod", prod);
        let mut lab = Context::new(vec!["https://127.0.0.1:7001".into()]);
        lab.token = Some("kft_0123abcd_x".into());
        config.set_context("lab", lab);
        config
    }

    #[test]
    fn config_round_trips_through_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/config.toml");
        let config = sample();
        config.save(&path).expect("save");
        let loaded = CliConfig::load(&path).expect("load");
        assert_eq!(loaded.current_context, "prod");
        assert_eq!(loaded.contexts.len(), 2);
        for (name, context) in &config.contexts {
            let got = &loaded.contexts[name];
            assert_eq!(
                (&got.endpoints, &got.ca_file, &got.token_file, &got.token),
                (&context.endpoints, &context.ca_file, &context.token_file, &context.token)
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "the config may hold a token");
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        sample().save(&path).expect("save");
        std::fs::create_dir(dir.path().join("certs")).expect("mkdir");
        std::fs::write(dir.path().join("certs/ca.pem"), "PEM").expect("write");
        let loaded = CliConfig::load(&path).expect("load");
        let prod = loaded.context(None).expect("current context");
        assert_eq!(prod.ca_path(), Some(dir.path().join("certs/ca.pem")));
        assert_eq!(prod.ca_pem().expect("read ca").as_deref(), Some("PEM"));
        assert_eq!(prod.token_path(), Some(PathBuf::from("/etc/kairos/admin.token")), "absolute stays absolute");
        let lab = loaded.context(Some("lab")).expect("lab");
        assert_eq!(lab.bearer_token().expect("inline").as_deref(), Some("kft_0123abcd_x"));
    }

    #[test]
    fn token_file_is_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("t"), "kft_0123abcd_secret\n").expect("write");
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "current_context = \"a\"\n[contexts.a]\nendpoints = [\"https://h:1\"]\ntoken_file = \"t\"\n",
        )
        .expect("write");
        let config = CliConfig::load(&path).expect("load");
        let token = config.context(None).expect("a").bearer_token().expect("read");
        assert_eq!(token.as_deref(), Some("kft_0123abcd_secret"));
    }

    #[test]
    fn unknown_context_error_lists_the_known_ones() {
        let err = sample().context(Some("staging")).expect_err("no such context").to_string();
        assert!(err.contains("\"staging\""), "{err}");
        assert!(err.contains("known: lab, prod"), "{err}");
        let mut none_current = sample();
        none_current.current_context.clear();
        let err = none_current.context(None).expect_err("no current").to_string();
        assert!(err.contains("known: lab, prod"), "{err}");
    }

    #[test]
    fn use_and_remove_context_keep_current_context_pointing_at_a_context() {
        let mut config = sample();
        let err = config.use_context("staging").expect_err("unknown").to_string();
        assert!(err.contains("known: lab, prod"), "{err}");
        assert_eq!(config.current_context, "prod", "a refused switch changes nothing");
        config.use_context("lab").expect("switch");
        assert_eq!(config.current_context, "lab");
        let removed = config.remove_context("prod").expect("remove");
        assert_eq!(removed.token_source(), TokenSource::File);
        assert_eq!((config.current_context.as_str(), config.context_names()), ("lab", vec!["lab".to_string()]));
        assert_eq!(config.remove_context("lab").expect("remove").token_source(), TokenSource::Inline);
        assert!(config.current_context.is_empty(), "the current context was removed");
        assert!(matches!(config.remove_context("lab"), Err(ConfigError::UnknownContext { .. })));
        assert_eq!(Context::new(vec!["https://h:1".into()]).token_source(), TokenSource::None);
    }

    #[test]
    fn load_or_empty_starts_empty_only_when_the_file_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        let empty = CliConfig::load_or_empty(&path).expect("missing is empty");
        assert!(empty.contexts.is_empty() && empty.current_context.is_empty());
        assert_eq!(empty.path(), path);
        std::fs::write(&path, "contexts = 3").expect("write");
        assert!(
            matches!(CliConfig::load_or_empty(&path), Err(ConfigError::Parse { .. })),
            "a broken file is not replaced"
        );
    }

    #[test]
    fn contexts_that_break_a_rule_are_refused_at_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        for (body, rule) in [
            ("endpoints = []", "endpoints is empty"),
            ("endpoints = [\"http://h:1\"]", "must start with https://"),
            ("endpoints = [\"https://h:1\"]\ntoken = \"a\"\ntoken_file = \"b\"", "not both"),
        ] {
            std::fs::write(&path, format!("[contexts.x]\n{body}\n")).expect("write");
            let err = CliConfig::load(&path).expect_err(body).to_string();
            assert!(err.contains("context \"x\"") && err.contains(rule), "{err}");
        }
        std::fs::write(&path, "contexts = 3").expect("write");
        assert!(matches!(CliConfig::load(&path), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn default_path_prefers_kairos_config_then_xdg_then_home() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(default_path_from(os("/k.toml"), os("/xdg"), os("/home/u")).ok(), Some("/k.toml".into()));
        assert_eq!(default_path_from(os(""), os("/xdg"), os("/home/u")).ok(), Some("/xdg/kairos/config.toml".into()));
        let home = Some(PathBuf::from("/home/u/.config/kairos/config.toml"));
        assert_eq!(default_path_from(None, os("relative"), os("/home/u")).ok(), home);
        assert_eq!(default_path_from(None, None, os("/home/u")).ok(), home);
        assert!(matches!(default_path_from(None, None, None), Err(ConfigError::NoDefaultPath)));
    }
}
