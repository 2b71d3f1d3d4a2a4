//! TLS towards the control plane: the enrollment call trusts a given CA and
//! presents no certificate; the session presents the node certificate
//! (mTLS). Both verify the server's certificate against the endpoint's host.

use std::fmt;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use crate::session::{SessionError, Transport};

/// Longest TCP + TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 ping interval on idle connections: finds dead paths between heartbeats.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A ping unanswered this long closes the connection.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keep-alive on the socket, for NATs and firewalls that forget idle flows.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// An endpoint URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The URL is malformed or not https.
    #[error("endpoint {url:?}: {rule}")]
    Invalid {
        /// The URL.
        url: String,
        /// The rule it broke.
        rule: String,
    },
}

/// The host of an `https://host[:port]` endpoint, without IPv6 brackets: the
/// name the server's certificate must carry.
pub fn endpoint_host(url: &str) -> Result<String, EndpointError> {
    let bad = |rule: &str| EndpointError::Invalid { url: url.to_string(), rule: rule.to_string() };
    if !url.starts_with("https://") {
        return Err(bad("must start with https:// (the control plane only speaks TLS)"));
    }
    let uri: Uri = url.parse().map_err(|e| bad(&format!("not a URL: {e}")))?;
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| bad("has no host"))?;
    // rustls wants an IPv6 address without the URI brackets.
    Ok(host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).to_string())
}

/// The node's credentials for mTLS, all PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeCredentials {
    /// The node certificate followed by intermediates, leaf first.
    pub cert_chain_pem: String,
    /// The node's private key (PKCS#8). Never log it.
    pub key_pem: String,
    /// CA certificates to trust for the servers.
    pub ca_pem: String,
}

impl fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCredentials")
            .field("cert_chain_pem", &self.cert_chain_pem)
            .field("key_pem", &"<redacted>")
            .field("ca_pem", &self.ca_pem)
            .finish()
    }
}

/// The channel settings shared by enrollment and sessions.
fn endpoint(url: &str, tls: ClientTlsConfig) -> Result<Endpoint, EndpointError> {
    // tonic builds its rustls config with the process default provider.
    kairos_fleet_domain::install_crypto_provider();
    let bad = |rule: String| EndpointError::Invalid { url: url.to_string(), rule };
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(format!("not a URL: {e}")))?
        .tls_config(tls)
        .map_err(|e| bad(format!("TLS settings: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .tcp_keepalive(Some(TCP_KEEPALIVE))
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// The endpoint for the Enroll call: trusts only `ca_pem`, presents no certificate.
pub fn enroll_endpoint(url: &str, ca_pem: &str) -> Result<Endpoint, EndpointError> {
    let host = endpoint_host(url)?;
    endpoint(url, ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name(host))
}

/// The endpoint for a session: trusts the enrollment's CA bundle and presents
/// the node certificate.
pub fn node_endpoint(url: &str, credentials: &NodeCredentials) -> Result<Endpoint, EndpointError> {
    let host = endpoint_host(url)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&credentials.ca_pem))
        .identity(Identity::from_pem(&credentials.cert_chain_pem, &credentials.key_pem))
        .domain_name(host);
    endpoint(url, tls)
}

/// Connects `endpoint` within [`CONNECT_TIMEOUT`], flattening tonic's error chain.
pub async fn connect(url: &str, endpoint: Endpoint) -> Result<Channel, SessionError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(SessionError::Connect { endpoint: url.to_string(), message: error_chain(&e) }),
        Err(_) => Err(SessionError::Timeout { endpoint: url.to_string(), what: "connecting" }),
    }
}

/// An error and its sources on one line: tonic's top-level transport
/// errors ("transport error") say nothing on their own.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// The real transport: a new mTLS connection per stream.
#[derive(Debug, Clone)]
pub struct TlsTransport {
    credentials: NodeCredentials,
}

impl TlsTransport {
    /// A transport presenting `credentials`.
    pub fn new(credentials: NodeCredentials) -> Self {
        TlsTransport { credentials }
    }
}

impl Transport for TlsTransport {
    async fn channel(&self, url: &str) -> Result<Channel, SessionError> {
        let endpoint = node_endpoint(url, &self.credentials)
            .map_err(|e| SessionError::Connect { endpoint: url.to_string(), message: e.to_string() })?;
        connect(url, endpoint).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_host_strips_brackets_and_refuses_plain_http() {
        assert_eq!(endpoint_host("https://fleet-1.example:7443").as_deref(), Ok("fleet-1.example"));
        assert_eq!(endpoint_host("https://[::1]:7443").as_deref(), Ok("::1"));
        assert_eq!(endpoint_host("https://127.0.0.1").as_deref(), Ok("127.0.0.1"));
        assert!(endpoint_host("http://fleet:80").is_err());
        assert!(endpoint_host("fleet:7443").is_err());
    }
}
