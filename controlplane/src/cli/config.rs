//! `kairosctl config ...`: the contexts of kairosctl's own config file,
//! kubectl style. Nothing here calls a replica.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde::{Deserialize, Serialize};

use super::args::GlobalArgs;
use super::output::{Format, Render, Table};
use super::settings::bearer_header;
use super::{print, CliError};
use crate::cli_config::{CliConfig, ConfigError, Context};

/// Context `config init` writes when `--context` is not given.
pub const DEFAULT_CONTEXT: &str = "default";
/// What `config view` shows instead of an inline token.
pub const REDACTED: &str = "REDACTED";

/// `kairosctl config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Write a context from --server (repeat for each replica), --ca and
    /// --token-file or --token; named by --context [default: default].
    Init {
        /// The bearer token itself, stored inline (mode 0600); it shows in
        /// shell history and `ps`, so prefer --token-file.
        #[arg(long, value_name = "TOKEN")]
        token: Option<String>,
        /// Replace the context if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Print the config file, inline tokens redacted.
    View {
        /// Show inline tokens as they are.
        #[arg(long)]
        raw: bool,
    },
    /// List the contexts: which is current, endpoints, CA, where the token comes from.
    GetContexts,
    /// Make a context the current one.
    UseContext {
        /// The context's name.
        name: String,
    },
    /// Print the current context's name.
    CurrentContext,
    /// Remove a context from the config file.
    DeleteContext {
        /// The context's name.
        name: String,
    },
}

/// Runs a config command against the file `--config` (else
/// `$KAIROS_CONFIG`, else the default path) names.
pub fn run(global: &GlobalArgs, command: ConfigCommand, format: Format, out: &mut dyn Write) -> Result<(), CliError> {
    let path = match &global.config {
        Some(path) => path.clone(),
        None => CliConfig::default_path()?,
    };
    match command {
        ConfigCommand::Init { token, force } => {
            let cwd = std::env::current_dir().map_err(|e| {
                CliError::usage(format!("cannot read the working directory: {e}"), "run from an existing folder")
            })?;
            let name = global.context.clone().unwrap_or_else(|| DEFAULT_CONTEXT.to_string());
            let request = InitRequest {
                name: &name,
                servers: &global.servers,
                ca: global.ca.as_deref(),
                token_file: global.token_file.as_deref(),
                token: token.as_deref(),
                force,
            };
            print(out, &init(&path, &request, &cwd)?, format)
        }
        ConfigCommand::View { raw } => print(out, &ConfigView::new(&load(&path)?, raw), format),
        ConfigCommand::GetContexts => print(out, &ContextListView::from(&load(&path)?), format),
        ConfigCommand::UseContext { name } => {
            let mut config = load(&path)?;
            config.use_context(&name)?;
            config.save(&path)?;
            print(out, &ChangeView::new(&config, Action::Switched, &name), format)
        }
        ConfigCommand::CurrentContext => {
            let config = load(&path)?;
            // Names the file and the known contexts when none is current.
            config.context(None)?;
            print(out, &CurrentContextView { current_context: config.current_context.clone() }, format)
        }
        ConfigCommand::DeleteContext { name } => {
            let mut config = load(&path)?;
            config.remove_context(&name)?;
            config.save(&path)?;
            print(out, &ChangeView::new(&config, Action::Deleted, &name), format)
        }
    }
}

/// The config at `path`, which must exist.
fn load(path: &Path) -> Result<CliConfig, CliError> {
    CliConfig::load(path).map_err(|e| match e {
        ConfigError::Read { path, source } if source.kind() == std::io::ErrorKind::NotFound => CliError::usage(
            format!("no kairosctl config at {}", path.display()),
            "create one with `kairosctl config init --server https://HOST:PORT --ca ca.pem --token-file TOKEN`, \
             or point --config or KAIROS_CONFIG at an existing file",
        ),
        e => e.into(),
    })
}

/// What `config init` was asked to write.
#[derive(Debug, Clone, Copy)]
pub struct InitRequest<'a> {
    /// The context's name.
    pub name: &'a str,
    /// `--server`, one per replica.
    pub servers: &'a [String],
    /// `--ca`, relative to the working directory.
    pub ca: Option<&'a Path>,
    /// `--token-file`, relative to the working directory.
    pub token_file: Option<&'a Path>,
    /// `--token`, stored inline.
    pub token: Option<&'a str>,
    /// Replace an existing context of that name.
    pub force: bool,
}

/// Adds the context `request` describes to the config at `path` (created
/// when missing) and saves it. Files named are checked now, so a typo
/// fails here rather than at the first call; their paths are stored
/// absolute because the config may live in another folder than `cwd`.
pub fn init(path: &Path, request: &InitRequest<'_>, cwd: &Path) -> Result<ChangeView, CliError> {
    let name = request.name.trim();
    if name.is_empty() {
        return Err(CliError::usage("--context: the context name is empty", "e.g. --context prod"));
    }
    let mut config = CliConfig::load_or_empty(path)?;
    let replaced = config.contexts.contains_key(name);
    if replaced && !request.force {
        return Err(CliError::usage(
            format!("context {name:?} already exists in {}", path.display()),
            "pass --force to replace it, or choose another name with --context NAME",
        ));
    }
    if request.servers.is_empty() {
        return Err(CliError::usage(
            "config init needs at least one --server",
            "e.g. --server https://10.0.0.1:7443 --server https://10.0.0.2:7443 (one per replica)",
        ));
    }
    let mut context = Context::new(request.servers.to_vec());
    let Some(ca) = request.ca else {
        return Err(CliError::usage(
            "config init needs --ca: kairosctl trusts only the cluster's CA",
            "pass --ca FILE, the ca.pem `kairos-controlplane init` wrote",
        ));
    };
    let ca = cwd.join(ca);
    let pem = read_flag_file("--ca", &ca)?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(CliError::usage(
            format!("--ca {}: holds no PEM certificate", ca.display()),
            "pass the cluster's ca.pem",
        ));
    }
    context.ca_file = Some(ca);
    match (request.token, request.token_file) {
        (Some(_), Some(_)) => {
            return Err(CliError::usage("pass --token or --token-file, not both", "prefer --token-file"));
        }
        (Some(token), None) => {
            let token = token.trim();
            if token.is_empty() {
                return Err(CliError::usage("--token is empty", "pass the whole token, kft_<id>_<secret>"));
            }
            bearer_header(token)?;
            context.token = Some(token.to_string());
        }
        (None, Some(file)) => {
            let file = cwd.join(file);
            read_flag_file("--token-file", &file)?;
            context.token_file = Some(file);
        }
        (None, None) => {}
    }
    context.check().map_err(|rule| CliError::usage(format!("--server: {rule}"), "e.g. --server https://HOST:PORT"))?;
    config.set_context(name, context);
    config.save(path)?;
    let action = if replaced { Action::Replaced } else { Action::Created };
    Ok(ChangeView::new(&config, action, name))
}

fn read_flag_file(flag: &str, path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| {
        CliError::usage(format!("{flag} {}: cannot read it: {e}", path.display()), format!("check the {flag} path"))
    })
}

/// What a config command changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// `init` added a context.
    Created,
    /// `init --force` replaced a context.
    Replaced,
    /// `use-context` made a context current.
    Switched,
    /// `delete-context` removed a context.
    Deleted,
}

/// The outcome of `init`, `use-context` and `delete-context`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeView {
    /// The config file written.
    pub path: PathBuf,
    /// What happened.
    pub action: Action,
    /// The context it happened to.
    pub context: String,
    /// The current context afterwards; empty when none is.
    pub current_context: String,
}

impl ChangeView {
    fn new(config: &CliConfig, action: Action, context: &str) -> ChangeView {
        ChangeView {
            path: config.path().to_path_buf(),
            action,
            context: context.to_string(),
            current_context: config.current_context.clone(),
        }
    }
}

impl Render for ChangeView {
    fn table(&self, out: &mut String) {
        let (name, path) = (&self.context, self.path.display());
        let _ = match self.action {
            Action::Created => writeln!(out, "context {name:?} created in {path}"),
            Action::Replaced => writeln!(out, "context {name:?} replaced in {path}"),
            Action::Switched => writeln!(out, "switched to context {name:?}"),
            Action::Deleted => writeln!(out, "deleted context {name:?} from {path}"),
        };
        if self.current_context.is_empty() {
            out.push_str("no context is current: choose one with `kairosctl config use-context NAME`\n");
        } else if self.action != Action::Switched {
            let _ = writeln!(out, "current context: {}", self.current_context);
        }
    }
}

/// The config file as `config view` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigView {
    /// The file shown.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub path: String,
    /// The current context; empty when none is.
    pub current_context: String,
    /// Contexts by name.
    pub contexts: BTreeMap<String, ContextView>,
}

/// One context as `config view` shows it: paths as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextView {
    /// Replica endpoints.
    pub endpoints: Vec<String>,
    /// The cluster CA file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// The token file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// The inline token, [`REDACTED`] unless `--raw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl ConfigView {
    /// `config` as shown; inline tokens replaced by [`REDACTED`] unless `raw`.
    pub fn new(config: &CliConfig, raw: bool) -> ConfigView {
        let shown = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let contexts = config
            .contexts
            .iter()
            .map(|(name, c)| {
                let token = c.token.as_ref().map(|t| if raw { t.clone() } else { REDACTED.to_string() });
                let view = ContextView {
                    endpoints: c.endpoints.clone(),
                    ca_file: shown(&c.ca_file),
                    token_file: shown(&c.token_file),
                    token,
                };
                (name.clone(), view)
            })
            .collect();
        ConfigView {
            path: config.path().display().to_string(),
            current_context: config.current_context.clone(),
            contexts,
        }
    }
}

impl Render for ConfigView {
    /// The file's own TOML form, with its path as a comment.
    fn table(&self, out: &mut String) {
        #[derive(Serialize)]
        struct File<'a> {
            current_context: &'a str,
            contexts: &'a BTreeMap<String, ContextView>,
        }
        if !self.path.is_empty() {
            let _ = writeln!(out, "# {}", self.path);
        }
        let file = File { current_context: &self.current_context, contexts: &self.contexts };
        match toml::to_string(&file) {
            Ok(text) => out.push_str(&text),
            Err(e) => {
                let _ = writeln!(out, "# cannot show the config as TOML ({e}); use -o yaml");
            }
        }
    }
}

/// `config get-contexts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextListView {
    /// The current context; empty when none is.
    pub current_context: String,
    /// Every context, by name.
    pub contexts: Vec<ContextRowView>,
}

/// One row of `config get-contexts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextRowView {
    /// The context's name.
    pub name: String,
    /// Whether it is the current context.
    pub current: bool,
    /// Replica endpoints.
    pub endpoints: Vec<String>,
    /// The cluster CA file, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Where the token comes from: `file`, `inline` or `none`.
    pub token: String,
}

impl From<&CliConfig> for ContextListView {
    fn from(config: &CliConfig) -> ContextListView {
        let contexts = config
            .contexts
            .iter()
            .map(|(name, c)| ContextRowView {
                name: name.clone(),
                current: *name == config.current_context,
                endpoints: c.endpoints.clone(),
                ca_file: c.ca_file.as_ref().map(|p| p.display().to_string()),
                token: c.token_source().as_str().to_string(),
            })
            .collect();
        ContextListView { current_context: config.current_context.clone(), contexts }
    }
}

impl Render for ContextListView {
    fn table(&self, out: &mut String) {
        if self.contexts.is_empty() {
            out.push_str("no contexts: add one with `kairosctl config init`\n");
            return;
        }
        let mut table = Table::new(&["CURRENT", "NAME", "ENDPOINTS", "CA", "TOKEN"]);
        for c in &self.contexts {
            table.row(vec![
                if c.current { "*" } else { "" }.to_string(),
                c.name.clone(),
                c.endpoints.join(","),
                c.ca_file.clone().unwrap_or_else(|| "-".into()),
                c.token.clone(),
            ]);
        }
        table.write(out);
    }
}

/// `config current-context`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentContextView {
    /// The current context's name.
    pub current_context: String,
}

impl Render for CurrentContextView {
    fn table(&self, out: &mut String) {
        out.push_str(&self.current_context);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n";

    fn request<'a>(name: &'a str, servers: &'a [String]) -> InitRequest<'a> {
        InitRequest { name, servers, ca: Some(Path::new("ca.pem")), token_file: None, token: None, force: false }
    }

    #[test]
    fn init_refuses_to_overwrite_a_context_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), PEM).expect("write");
        let path = dir.path().join("k/config.toml");
        let servers = vec!["https://a:1".to_string()];
        let first = init(&path, &request("lab", &servers), dir.path()).expect("first init");
        assert_eq!((first.action, first.current_context.as_str()), (Action::Created, "lab"));
        let err = init(&path, &request("lab", &servers), dir.path()).expect_err("exists");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("\"lab\" already exists"), "{err}");
        assert!(err.hint().is_some_and(|h| h.contains("--force")), "{err:?}");
        let other = vec!["https://b:1".to_string()];
        let replaced = init(&path, &InitRequest { force: true, ..request("lab", &other) }, dir.path()).expect("force");
        assert_eq!(replaced.action, Action::Replaced);
        let config = CliConfig::load(&path).expect("load");
        assert_eq!(config.contexts["lab"].endpoints, other);
        assert_eq!(config.contexts["lab"].ca_file, Some(dir.path().join("ca.pem")), "stored absolute");
    }

    #[test]
    fn init_checks_the_files_and_endpoints_it_is_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), PEM).expect("write");
        std::fs::write(dir.path().join("junk.pem"), "junk").expect("write");
        let path = dir.path().join("config.toml");
        let good = vec!["https://a:1".to_string()];
        let plain = vec!["http://a:1".to_string()];
        let cases: [(InitRequest<'_>, &str); 6] = [
            (request("x", &[]), "at least one --server"),
            (request("x", &plain), "must start with https://"),
            (InitRequest { ca: None, ..request("x", &good) }, "needs --ca"),
            (InitRequest { ca: Some(Path::new("junk.pem")), ..request("x", &good) }, "holds no PEM certificate"),
            (InitRequest { token_file: Some(Path::new("missing")), ..request("x", &good) }, "--token-file"),
            (InitRequest { token: Some("kft_0123abcd_a\nb"), ..request("x", &good) }, "cannot be sent in a header"),
        ];
        for (req, want) in cases {
            let err = init(&path, &req, dir.path()).expect_err(want);
            assert!(err.to_string().contains(want), "{want}: {err}");
            assert_eq!(err.exit_code(), 2);
        }
        assert!(!path.exists(), "nothing written after a refusal");
    }

    #[test]
    fn view_redacts_inline_tokens_unless_raw() {
        let mut config = CliConfig::default();
        let mut lab = Context::new(vec!["https://a:1".into()]);
        lab.token = Some("kft_0123abcd_secret".into());
        config.set_context("lab", lab);
        let shown = ConfigView::new(&config, false);
        assert_eq!(shown.contexts["lab"].token.as_deref(), Some(REDACTED));
        let mut table = String::new();
        shown.table(&mut table);
        assert!(table.contains("current_context = \"lab\"") && !table.contains("secret"), "{table}");
        assert_eq!(ConfigView::new(&config, true).contexts["lab"].token.as_deref(), Some("kft_0123abcd_secret"));
    }
}
