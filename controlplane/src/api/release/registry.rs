//! Reading an OCI registry for SyncReleases: tag lists and manifest
//! digests, with a deadline on every request.
//!
//! HTTPS only, except for the registries the control plane was started
//! with `--registry-plain-http` for. Tag lists follow the distribution
//! spec's `Link: <...>; rel="next"` pagination, which works on registries
//! that page with their own tokens (quay.io) as well as with `last`;
//! oci-client hides that header, so tag pages are fetched with reqwest (the
//! client oci-client itself uses), with oci-client's anonymous token.
//! Digests and tokens come from oci-client.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use reqwest::header::LINK;
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use crate::fleet::image::RegistryPrefix;

/// Tags asked for per page; registries cap pages anyway (quay.io at 100).
const DEFAULT_PAGE_SIZE: u32 = 100;
/// Pages followed per repository before the listing is cut short.
const MAX_PAGES: usize = 2_000;
/// Tags kept per repository; a registry answering more is cut short.
const MAX_TAGS: usize = 100_000;
/// Largest tag-list page read (a registry ignoring `n` sends every tag at once).
const MAX_PAGE_BYTES: usize = 16 * 1024 * 1024;
/// Redirects followed per request, all on the registry's own origin.
const MAX_REDIRECTS: usize = 5;

/// How SyncReleases reaches registries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Registries (`host[:port]`, lowercase) reached over plain HTTP; every
    /// other registry is reached over HTTPS only.
    pub plain_http: Vec<String>,
    /// Tags asked for per page of a tag list (`n`).
    pub page_size: u32,
    /// Deadline of each registry request.
    pub request_timeout: Duration,
    /// Deadline of each connection set-up (TCP and TLS).
    pub connect_timeout: Duration,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            plain_http: Vec::new(),
            page_size: DEFAULT_PAGE_SIZE,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl RegistrySettings {
    /// The defaults, with plain HTTP allowed towards `hosts` (as [`parse_registry_host`] returns them).
    pub fn with_plain_http(hosts: Vec<String>) -> Self {
        RegistrySettings { plain_http: hosts, ..RegistrySettings::default() }
    }

    /// Whether `registry` (lowercase `host[:port]`) is reached over plain HTTP.
    pub fn is_plain_http(&self, registry: &str) -> bool {
        self.plain_http.iter().any(|h| h == registry)
    }
}

/// A registry host that is not `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{value:?}: a registry is `host[:port]` where the host has a `.`, is `localhost` or has a port \
     (e.g. quay.io, registry.local:5000), without scheme or path"
)]
pub struct InvalidRegistryHost {
    /// The text as given.
    pub value: String,
}

/// Parses a registry host (`--registry-plain-http`, SyncReleases' `registry`):
/// `host[:port]` as image references name registries, returned lowercase.
pub fn parse_registry_host(text: &str) -> Result<String, InvalidRegistryHost> {
    let invalid = || InvalidRegistryHost { value: text.to_owned() };
    let host = text.trim().to_ascii_lowercase();
    if host.is_empty() || host.contains('/') {
        return Err(invalid());
    }
    match RegistryPrefix::parse(&host) {
        Ok(prefix) if prefix.registry() == Some(host.as_str()) => Ok(host),
        _ => Err(invalid()),
    }
}

/// What failed on the wire: the HTTP client's error or oci-client's.
#[derive(Debug, thiserror::Error)]
pub enum Transport {
    /// A tag-list request failed.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// oci-client failed (token or manifest digest).
    #[error(transparent)]
    Oci(#[from] OciDistributionError),
}

/// Why a registry request failed. Every message names the registry and
/// what was being done.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No connection (DNS, TCP, TLS) or the connection broke.
    #[error(
        "{registry}: {operation}: cannot talk {scheme} to it: {}{}",
        crate::error_text::chain(source),
        plain_http_hint(registry, scheme)
    )]
    Unreachable {
        /// `host[:port]`.
        registry: String,
        /// `https` or `http`.
        scheme: &'static str,
        /// What was being done, e.g. `listing the tags of kairos/opensuse`.
        operation: String,
        /// The client's error.
        source: Transport,
    },
    /// No answer within the deadline.
    #[error("{registry}: {operation}: no answer within {timeout:?}")]
    Timeout {
        /// `host[:port]`.
        registry: String,
        /// What was being done.
        operation: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The repository or tag does not exist.
    #[error(
        "{registry}: {operation}: not found (HTTP 404{}); check the repository name and the organisation",
        code_suffix(code)
    )]
    NotFound {
        /// `host[:port]`.
        registry: String,
        /// What was being done.
        operation: String,
        /// The OCI error code, if the registry sent one (e.g. `NAME_UNKNOWN`).
        code: String,
    },
    /// Anonymous reading was refused.
    #[error(
        "{registry}: {operation}: refused (HTTP {status}{}); SyncReleases reads public repositories \
         anonymously",
        code_suffix(code)
    )]
    Denied {
        /// `host[:port]`.
        registry: String,
        /// What was being done.
        operation: String,
        /// The HTTP status.
        status: u16,
        /// The OCI error code, if any (e.g. `UNAUTHORIZED`, `DENIED`).
        code: String,
    },
    /// The registry answered with an error status (5xx, 429, ...).
    #[error("{registry}: {operation}: HTTP {status}: {message}")]
    Status {
        /// `host[:port]`.
        registry: String,
        /// What was being done.
        operation: String,
        /// The HTTP status.
        status: u16,
        /// The registry's message, shortened.
        message: String,
    },
    /// The answer breaks the distribution spec or a bound of ours.
    #[error("{registry}: {operation}: {rule}")]
    Protocol {
        /// `host[:port]`.
        registry: String,
        /// What was being done.
        operation: String,
        /// What was wrong with the answer.
        rule: String,
    },
}

impl RegistryError {
    /// True when the registry could not serve the request at all
    /// (connection, deadline, 5xx, 429), as opposed to answering about
    /// this repository or tag.
    pub fn is_unavailable(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } | RegistryError::Timeout { .. } => true,
            RegistryError::Status { status, .. } => *status >= 500 || *status == 429,
            RegistryError::NotFound { .. } | RegistryError::Denied { .. } | RegistryError::Protocol { .. } => false,
        }
    }
}

fn code_suffix(code: &str) -> String {
    if code.is_empty() {
        String::new()
    } else {
        format!(" {code}")
    }
}

fn plain_http_hint(registry: &str, scheme: &str) -> String {
    if scheme == "https" {
        format!(
            "; registries are reached over HTTPS only: if {registry} speaks plain HTTP, start the control \
             plane with `--registry-plain-http {registry}`"
        )
    } else {
        String::new()
    }
}

/// The tags a repository listed; `error` tells why the listing stopped
/// early (the tags before it are still good).
#[derive(Debug, Default)]
pub struct TagListing {
    /// Tags, in the order the registry listed them.
    pub tags: Vec<String>,
    /// Why the listing ended before the last page, if it did.
    pub error: Option<RegistryError>,
}

/// One page of `GET /v2/<name>/tags/list`.
#[derive(Debug, Deserialize)]
struct TagPage {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// The body of an error answer, as the distribution spec defines it.
#[derive(Debug, Default, Deserialize)]
struct ErrorEnvelope {
    #[serde(default)]
    errors: Vec<ErrorBody>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// One registry, as one SyncReleases call reads it.
pub struct Registry {
    host: String,
    scheme: &'static str,
    page_size: u32,
    request_timeout: Duration,
    oci: oci_client::Client,
    http: reqwest::Client,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").field("host", &self.host).field("scheme", &self.scheme).finish_non_exhaustive()
    }
}

impl Registry {
    /// A client of `host` (lowercase `host[:port]`) with `settings`.
    pub fn new(host: &str, settings: &RegistrySettings) -> Result<Registry, Transport> {
        // reqwest is built without a crypto provider of its own: ring, as everywhere.
        crate::security::install_crypto_provider();
        let plain = settings.is_plain_http(host);
        let config = ClientConfig {
            protocol: if plain { ClientProtocol::Http } else { ClientProtocol::Https },
            read_timeout: Some(settings.request_timeout),
            connect_timeout: Some(settings.connect_timeout),
            user_agent: concat!("kairos-fleet/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let oci = oci_client::Client::try_from(config)?;
        let http = reqwest::Client::builder()
            .https_only(!plain)
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .user_agent(concat!("kairos-fleet/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let same_origin = attempt.previous().first().is_some_and(|first| same_origin(first, attempt.url()));
                if attempt.previous().len() > MAX_REDIRECTS {
                    attempt.error("too many redirects")
                } else if same_origin {
                    attempt.follow()
                } else {
                    attempt.stop()
                }
            }))
            .build()?;
        Ok(Registry {
            host: host.to_owned(),
            scheme: if plain { "http" } else { "https" },
            page_size: settings.page_size.max(1),
            request_timeout: settings.request_timeout,
            oci,
            http,
        })
    }

    /// Every tag of `repository` (e.g. `kairos/opensuse`), page by page.
    pub async fn list_tags(&self, repository: &str) -> TagListing {
        let mut tags = Vec::new();
        let error = self.collect_tags(repository, &mut tags).await.err();
        TagListing { tags, error }
    }

    /// Appends the tags of `repository` to `tags` until the last page or an error.
    async fn collect_tags(&self, repository: &str, tags: &mut Vec<String>) -> Result<(), RegistryError> {
        let operation = format!("listing the tags of {repository}");
        let token = self.token(repository, &operation).await?;
        let first = format!("{}://{}/v2/{repository}/tags/list?n={}", self.scheme, self.host, self.page_size);
        let mut url =
            Url::parse(&first).map_err(|e| self.protocol(&operation, format!("{first} is not a URL: {e}")))?;
        let mut fetched = HashSet::from([url.clone()]);
        for _ in 0..MAX_PAGES {
            let (page, link) = self.tag_page(&url, token.as_deref(), &operation).await?;
            tags.extend(page);
            if tags.len() > MAX_TAGS {
                tags.truncate(MAX_TAGS);
                return Err(self.protocol(&operation, format!("stopped after {MAX_TAGS} tags")));
            }
            match self.next_page(&url, link.as_deref(), &operation)? {
                None => return Ok(()),
                Some(next) if !fetched.insert(next.clone()) => {
                    let rule = format!("the next-page link {next} points back to a page already read");
                    return Err(self.protocol(&operation, rule));
                }
                Some(next) => url = next,
            }
        }
        Err(self.protocol(&operation, format!("stopped after {MAX_PAGES} pages")))
    }

    /// The manifest digest `repository:tag` resolves to now (HEAD, else GET).
    pub async fn resolve_digest(&self, repository: &str, tag: &str) -> Result<String, RegistryError> {
        let operation = format!("resolving the digest of {repository}:{tag}");
        let reference = Reference::with_tag(self.host.clone(), repository.to_owned(), tag.to_owned());
        // A HEAD, then a GET when the registry sends no digest header.
        let fetch = self.oci.fetch_manifest_digest(&reference, &RegistryAuth::Anonymous);
        self.deadline(2, &operation, fetch).await?.map_err(|e| self.oci_error(&operation, e))
    }

    /// An anonymous pull token for `repository`; None when the registry needs none.
    async fn token(&self, repository: &str, operation: &str) -> Result<Option<String>, RegistryError> {
        let reference = Reference::with_tag(self.host.clone(), repository.to_owned(), "latest".to_owned());
        // `GET /v2/`, then the token endpoint its challenge names.
        let auth = self.oci.auth(&reference, &RegistryAuth::Anonymous, RegistryOperation::Pull);
        self.deadline(2, operation, auth).await?.map_err(|e| self.oci_error(operation, e))
    }

    /// One page: its tags and the `Link` header, if the registry sent one.
    async fn tag_page(
        &self,
        url: &Url,
        token: Option<&str>,
        operation: &str,
    ) -> Result<(Vec<String>, Option<String>), RegistryError> {
        let mut request = self.http.get(url.clone()).header(reqwest::header::ACCEPT, "application/json");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| self.transport(operation, e))?;
        let status = response.status();
        let link = match response.headers().get(LINK).map(|v| v.to_str()) {
            None => None,
            Some(Ok(header)) => Some(header.to_owned()),
            Some(Err(_)) => return Err(self.protocol(operation, "the Link header is not ASCII".to_owned())),
        };
        let body = self.read_body(response, operation).await?;
        if !status.is_success() {
            return Err(self.status_error(operation, status, &body));
        }
        let page: TagPage = serde_json::from_slice(&body)
            .map_err(|e| self.protocol(operation, format!("the tag list is not `{{\"tags\": [...]}}` JSON: {e}")))?;
        Ok((page.tags.unwrap_or_default(), link))
    }

    /// The next page's URL, if the `Link` header of `url`'s page names one.
    fn next_page(&self, url: &Url, link: Option<&str>, operation: &str) -> Result<Option<Url>, RegistryError> {
        let Some(target) = link.and_then(next_link) else { return Ok(None) };
        let next = url
            .join(target)
            .map_err(|e| self.protocol(operation, format!("the next-page link {target:?} is not a URL: {e}")))?;
        if !same_origin(url, &next) {
            let rule = format!("the next-page link {next} leaves {}://{}", self.scheme, self.host);
            return Err(self.protocol(operation, rule));
        }
        Ok(Some(next))
    }

    async fn read_body(&self, mut response: reqwest::Response, operation: &str) -> Result<Vec<u8>, RegistryError> {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport(operation, e))? {
            if body.len() + chunk.len() > MAX_PAGE_BYTES {
                return Err(self.protocol(operation, format!("a tag-list page is larger than {MAX_PAGE_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Runs an oci-client call of up to `requests` requests under one deadline.
    async fn deadline<T>(
        &self,
        requests: u32,
        operation: &str,
        call: impl Future<Output = T>,
    ) -> Result<T, RegistryError> {
        let timeout = self.request_timeout * requests;
        tokio::time::timeout(timeout, call).await.map_err(|_| RegistryError::Timeout {
            registry: self.host.clone(),
            operation: operation.to_owned(),
            timeout,
        })
    }

    fn transport(&self, operation: &str, error: reqwest::Error) -> RegistryError {
        // A connection (TCP or TLS) that never completes is unreachable,
        // not slow: an HTTP-only port answering nothing to a TLS hello ends so.
        if error.is_timeout() && !error.is_connect() {
            return RegistryError::Timeout {
                registry: self.host.clone(),
                operation: operation.to_owned(),
                timeout: self.request_timeout,
            };
        }
        RegistryError::Unreachable {
            registry: self.host.clone(),
            scheme: self.scheme,
            operation: operation.to_owned(),
            source: Transport::Http(error),
        }
    }

    fn protocol(&self, operation: &str, rule: String) -> RegistryError {
        RegistryError::Protocol { registry: self.host.clone(), operation: operation.to_owned(), rule }
    }

    fn status_error(&self, operation: &str, status: StatusCode, body: &[u8]) -> RegistryError {
        let envelope: ErrorEnvelope = serde_json::from_slice(body).unwrap_or_default();
        let first = envelope.errors.first();
        let code = first.map(|e| e.code.clone()).unwrap_or_default();
        let message = match first {
            Some(e) if !e.message.is_empty() => format!("{} {}", e.code, e.message),
            _ => String::from_utf8_lossy(body).chars().take(200).collect(),
        };
        self.classify_status(operation, status.as_u16(), code, message)
    }

    fn classify_status(&self, operation: &str, status: u16, code: String, message: String) -> RegistryError {
        let (registry, operation) = (self.host.clone(), operation.to_owned());
        match status {
            404 => RegistryError::NotFound { registry, operation, code },
            401 | 403 => RegistryError::Denied { registry, operation, status, code },
            _ => RegistryError::Status { registry, operation, status, message },
        }
    }

    fn oci_error(&self, operation: &str, error: OciDistributionError) -> RegistryError {
        match error {
            OciDistributionError::RequestError(e) => self.transport(operation, e),
            OciDistributionError::ServerError { code, message, .. } => {
                let message: String = message.chars().take(200).collect();
                self.classify_status(operation, code, String::new(), message)
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let first = envelope.errors.first();
                let code = first.map(|e| code_name(&e.code)).unwrap_or_default();
                let message = first.map(|e| format!("{code} {}", e.message)).unwrap_or_default();
                let status = match first.map(|e| &e.code) {
                    Some(OciErrorCode::NameUnknown | OciErrorCode::ManifestUnknown | OciErrorCode::NotFound) => 404,
                    Some(OciErrorCode::Unauthorized) => 401,
                    Some(OciErrorCode::Denied) => 403,
                    Some(OciErrorCode::Toomanyrequests) => 429,
                    _ => 400,
                };
                self.classify_status(operation, status, code, message)
            }
            OciDistributionError::UnauthorizedError { .. } => {
                self.classify_status(operation, 401, String::new(), String::new())
            }
            OciDistributionError::AuthenticationFailure(reason) => {
                let reason: String = reason.chars().take(200).collect();
                self.classify_status(operation, 401, String::new(), reason)
            }
            other => self.protocol(operation, crate::error_text::chain(&other)),
        }
    }
}

/// The spec's name of an OCI error code, e.g. `NAME_UNKNOWN`.
fn code_name(code: &OciErrorCode) -> String {
    serde_json::to_value(code).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_else(|| format!("{code:?}"))
}

/// The target of the `rel="next"` link of a `Link` header (RFC 8288).
fn next_link(header: &str) -> Option<&str> {
    header.split('<').skip(1).find_map(|link| {
        let (target, params) = link.split_once('>')?;
        let is_next = params.split(';').any(|param| {
            let Some((name, value)) = param.split_once('=') else { return false };
            name.trim().eq_ignore_ascii_case("rel")
                && value
                    .trim()
                    .trim_end_matches(',')
                    .trim()
                    .trim_matches('"')
                    .split_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
        });
        is_next.then_some(target.trim())
    })
}

/// Same scheme, host and port: a registry may not send us elsewhere.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

#[cfg(test)]
mod tests;
