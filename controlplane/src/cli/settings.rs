//! Where a connection's settings come from: the config file's context,
//! overridden by command-line flags.
//!
//! Precedence, highest first: `--server` / `--ca` / `--token-file`, then
//! the context named by `--context` (else `current_context`) in the file
//! named by `--config` (else `$KAIROS_CONFIG`, else the default path).
//! With `--server` a missing default config file is not an error: every
//! setting can come from flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};

use super::CliError;
use crate::cli_config::{CliConfig, ConfigError, Context};

/// Connect timeout used unless a flag says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Per-call timeout used unless `--timeout` says otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything [`Connection`](super::Connection) needs, resolved and read.
#[derive(Clone)]
pub struct ConnectionSettings {
    /// Replica endpoints, `https://HOST:PORT`, tried in order.
    pub endpoints: Vec<String>,
    /// PEM of the cluster CA, the only root trusted.
    pub ca_pem: String,
    /// The bearer token, when there is one.
    pub token: Option<String>,
    /// Bound on opening one endpoint's connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Bound on one call to one endpoint.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSettings")
            .field("endpoints", &self.endpoints)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl ConnectionSettings {
    /// Reads the CA and token `ctx` names; default timeouts.
    pub fn from_context(ctx: &Context) -> Result<ConnectionSettings, CliError> {
        let ca_pem = ctx.ca_pem()?.ok_or_else(|| {
            CliError::usage(
                "no cluster CA: the context has no ca_file",
                "pass --ca FILE (the ca.pem `kairos-controlplane init` wrote) or set ca_file in the context",
            )
        })?;
        if !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
            let file = ctx.ca_path().map(|p| p.display().to_string()).unwrap_or_default();
            return Err(CliError::usage(
                format!("{file} holds no PEM certificate"),
                "point --ca or the context's ca_file at the cluster's ca.pem",
            ));
        }
        let token = ctx.bearer_token()?.filter(|t| !t.is_empty());
        if let Some(token) = &token {
            bearer_header(token)?;
        }
        Ok(ConnectionSettings {
            endpoints: ctx.endpoints.clone(),
            ca_pem,
            token,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }
}

/// The `authorization` metadata value for `token`.
pub(crate) fn bearer_header(token: &str) -> Result<MetadataValue<Ascii>, CliError> {
    let mut value: MetadataValue<Ascii> = format!("Bearer {token}").parse().map_err(|_| {
        CliError::usage(
            "the bearer token has characters that cannot be sent in a header",
            "use the whole token exactly as it was printed (`kft_<8 hex>_<secret>`)",
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Command-line overrides of the config file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config`, or `$KAIROS_CONFIG`.
    pub config: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
    /// `--server`, replacing the context's endpoints when not empty.
    pub servers: Vec<String>,
    /// `--ca`.
    pub ca: Option<PathBuf>,
    /// `--token-file`, replacing the context's token or token_file.
    pub token_file: Option<PathBuf>,
}

/// The context to use: loaded from the config file, then overridden by
/// flags. Relative flag paths start at `cwd`.
pub fn resolve_context(overrides: &Overrides, cwd: &Path) -> Result<Context, CliError> {
    let mut ctx = match load_config(overrides)? {
        Some(config) => config.context(overrides.context.as_deref())?.clone(),
        None => Context::default(),
    };
    if !overrides.servers.is_empty() {
        ctx.endpoints = overrides.servers.clone();
    }
    if let Some(ca) = &overrides.ca {
        // Context paths resolve against the config's folder; an absolute
        // path keeps a flag relative to where the command was run.
        ctx.ca_file = Some(cwd.join(ca));
    }
    if let Some(token_file) = &overrides.token_file {
        ctx.token = None;
        ctx.token_file = Some(cwd.join(token_file));
    }
    if ctx.endpoints.is_empty() {
        return Err(CliError::usage(
            "no endpoints: the context lists none and no --server was given",
            "pass --server https://HOST:PORT or add endpoints to the context",
        ));
    }
    Ok(ctx)
}

/// The config file, or `None` when no file was named and the default one
/// is missing but `--server` makes it unnecessary.
fn load_config(overrides: &Overrides) -> Result<Option<CliConfig>, CliError> {
    let may_skip = !overrides.servers.is_empty() && overrides.context.is_none();
    let path = match &overrides.config {
        Some(path) => path.clone(),
        None => match CliConfig::default_path() {
            Ok(path) => path,
            Err(_) if may_skip => return Ok(None),
            Err(e) => return Err(e.into()),
        },
    };
    match CliConfig::load(&path) {
        Ok(config) => Ok(Some(config)),
        Err(ConfigError::Read { source, .. })
            if overrides.config.is_none() && may_skip && source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(ConfigError::Read { path, source }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(CliError::usage(
                format!("no kairosctl config at {}", path.display()),
                "create one with `kairosctl config init --server https://HOST:PORT --ca ca.pem --token-file TOKEN`, \
                 point --config or KAIROS_CONFIG at the kairosctl.toml `kairos-controlplane init` wrote, \
                 or pass --server, --ca and --token-file",
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// Parses `--timeout`: `30s`, `500ms`, `2m`, `1m30s`, ISO 8601 (`PT30S`),
/// or a bare number of seconds. Must be above zero.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let signed: jiff::SignedDuration =
                text.parse().map_err(|e| format!("{text:?} is not a duration such as 30s, 500ms or 2m: {e}"))?;
            Duration::try_from(signed).map_err(|_| format!("{text:?} is negative"))?
        }
    };
    if duration.is_zero() {
        return Err("the timeout must be above zero".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM_A: &str = "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n";
    const PEM_B: &str = "-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n";

    /// A config dir with context `a` (endpoint a, ca.pem, token file) and
    /// context `b` (endpoint b, inline token).
    fn config_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), PEM_A).expect("write");
        std::fs::write(dir.path().join("a.token"), "kft_aaaaaaaa_a\n").expect("write");
        std::fs::write(
            dir.path().join("kairosctl.toml"),
            "current_context = \"a\"\n\
             [contexts.a]\nendpoints = [\"https://a:7001\"]\nca_file = \"ca.pem\"\ntoken_file = \"a.token\"\n\
             [contexts.b]\nendpoints = [\"https://b:7001\"]\nca_file = \"ca.pem\"\ntoken = \"kft_bbbbbbbb_b\"\n",
        )
        .expect("write");
        dir
    }

    fn overrides(dir: &Path) -> Overrides {
        Overrides { config: Some(dir.join("kairosctl.toml")), ..Overrides::default() }
    }

    fn settings(o: &Overrides, cwd: &Path) -> ConnectionSettings {
        ConnectionSettings::from_context(&resolve_context(o, cwd).expect("context")).expect("settings")
    }

    #[test]
    fn context_comes_from_the_config_file() {
        let dir = config_dir();
        let s = settings(&overrides(dir.path()), Path::new("/"));
        assert_eq!(s.endpoints, ["https://a:7001"]);
        assert_eq!((s.ca_pem.as_str(), s.token.as_deref()), (PEM_A, Some("kft_aaaaaaaa_a")));
        let s = settings(&Overrides { context: Some("b".into()), ..overrides(dir.path()) }, Path::new("/"));
        assert_eq!((s.endpoints[0].as_str(), s.token.as_deref()), ("https://b:7001", Some("kft_bbbbbbbb_b")));
    }

    #[test]
    fn server_flag_overrides_the_contexts_endpoints() {
        let dir = config_dir();
        let o = Overrides { servers: vec!["https://flag:9".into(), "https://flag:10".into()], ..overrides(dir.path()) };
        let s = settings(&o, Path::new("/"));
        assert_eq!(s.endpoints, ["https://flag:9", "https://flag:10"]);
        assert_eq!(s.ca_pem, PEM_A, "the rest of the context still applies");
    }

    #[test]
    fn ca_and_token_flags_resolve_against_the_working_directory() {
        let dir = config_dir();
        let cwd = tempfile::tempdir().expect("tempdir");
        std::fs::write(cwd.path().join("other-ca.pem"), PEM_B).expect("write");
        std::fs::write(cwd.path().join("viewer.token"), "kft_cccccccc_c").expect("write");
        let o = Overrides {
            context: Some("b".into()),
            ca: Some("other-ca.pem".into()),
            token_file: Some("viewer.token".into()),
            ..overrides(dir.path())
        };
        let s = settings(&o, cwd.path());
        assert_eq!(s.ca_pem, PEM_B);
        assert_eq!(s.token.as_deref(), Some("kft_cccccccc_c"), "--token-file beats the inline token");
    }

    #[test]
    fn flags_alone_work_without_a_config_file() {
        let cwd = tempfile::tempdir().expect("tempdir");
        std::fs::write(cwd.path().join("ca.pem"), PEM_A).expect("write");
        let o = Overrides { servers: vec!["https://h:1".into()], ca: Some("ca.pem".into()), ..Overrides::default() };
        // An explicitly named config must exist, even with --server.
        let named = Overrides { config: Some(cwd.path().join("missing.toml")), ..o.clone() };
        let err = resolve_context(&named, cwd.path()).expect_err("missing named config");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("missing.toml"), "{err}");
        // Without --config, whether the default file exists depends on the
        // machine; skipping it is allowed only with --server, as here.
        if let Ok(ctx) = resolve_context(&o, cwd.path()) {
            assert_eq!(ctx.endpoints, ["https://h:1"]);
        }
    }

    #[test]
    fn unknown_context_and_missing_ca_are_usage_errors() {
        let dir = config_dir();
        let err = resolve_context(&Overrides { context: Some("zz".into()), ..overrides(dir.path()) }, Path::new("/"))
            .expect_err("unknown context");
        assert_eq!(err.exit_code(), 2);
        let ctx = Context::new(vec!["https://h:1".into()]);
        let err = ConnectionSettings::from_context(&ctx).expect_err("no ca");
        assert!(err.hint().is_some_and(|h| h.contains("--ca")), "{err:?}");
        std::fs::write(dir.path().join("junk.pem"), "not a certificate").expect("write");
        let o = Overrides { ca: Some(dir.path().join("junk.pem")), ..overrides(dir.path()) };
        let err = ConnectionSettings::from_context(&resolve_context(&o, Path::new("/")).expect("context"))
            .expect_err("junk ca");
        assert!(err.to_string().contains("junk.pem holds no PEM certificate"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn timeouts_parse_in_friendly_and_bare_forms() {
        assert_eq!(parse_timeout("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("PT2S"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("7"), Ok(Duration::from_secs(7)));
        for bad in ["0", "0s", "-5s", "soon", ""] {
            assert!(parse_timeout(bad).is_err(), "{bad:?}");
        }
    }
}
