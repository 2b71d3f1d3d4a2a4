//! A connection to a control-plane cluster: one lazily opened TLS channel
//! per endpoint, a bearer token on every call, failover across endpoints
//! and one redirect to the leader when a replica names it (see
//! [`leader`](super::leader)).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tonic::codegen::http::Uri;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use super::error::{Attempt, CliError, RpcError};
use super::leader::LeaderHint;
use super::settings::{bearer_header, ConnectionSettings};
use crate::cli_config::Context;
use crate::security::{client_tls_for_operator, install_crypto_provider};

/// How often an idle or streaming connection is pinged (HTTP/2 PING).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(3);
/// A ping unanswered this long closes the connection: a partitioned replica
/// is given up in at most the interval plus this.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// A channel that adds the bearer token and deadline to every call; what
/// the generated clients are built on (`ClusterServiceClient::new(channel)`).
pub type AuthChannel = InterceptedService<Channel, BearerAuth>;

/// Interceptor adding `authorization: Bearer <token>` and `grpc-timeout`.
#[derive(Clone)]
pub struct BearerAuth {
    header: Option<MetadataValue<Ascii>>,
    timeout: Duration,
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request.metadata_mut().insert("authorization", header.clone());
        }
        // Tells the server when kairosctl stops waiting, so it can stop too.
        request.set_timeout(self.timeout);
        Ok(request)
    }
}

/// A cluster connection. Cheap to open: nothing touches the network until
/// the first call.
pub struct Connection {
    endpoints: Vec<String>,
    ca_pem: String,
    auth: BearerAuth,
    connect_timeout: Duration,
    request_timeout: Duration,
    /// Open channels by endpoint URL.
    channels: Mutex<HashMap<String, Channel>>,
    /// The URL that last answered, tried first next time (e.g. the leader
    /// found through a redirect, for the following pages of a list).
    preferred: Mutex<Option<String>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("endpoints", &self.endpoints).finish_non_exhaustive()
    }
}

impl Connection {
    /// Opens a connection with `ctx`'s endpoints, CA and token and the
    /// default timeouts (connect 3 s, call 30 s).
    pub fn open(ctx: &Context) -> Result<Connection, CliError> {
        Connection::new(ConnectionSettings::from_context(ctx)?)
    }

    /// Opens a connection with these settings, checking every endpoint URL.
    pub fn new(settings: ConnectionSettings) -> Result<Connection, CliError> {
        install_crypto_provider();
        let header = settings.token.as_deref().map(bearer_header).transpose()?;
        let connection = Connection {
            endpoints: settings.endpoints,
            ca_pem: settings.ca_pem,
            auth: BearerAuth { header, timeout: settings.request_timeout },
            connect_timeout: settings.connect_timeout,
            request_timeout: settings.request_timeout,
            channels: Mutex::new(HashMap::new()),
            preferred: Mutex::new(None),
        };
        if connection.endpoints.is_empty() {
            return Err(CliError::usage("no endpoints to call", "pass --server https://HOST:PORT"));
        }
        for url in &connection.endpoints {
            connection.endpoint(url)?;
        }
        Ok(connection)
    }

    /// The endpoints, in the order they are tried.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The endpoint that answered the last successful call, tried first by
    /// the next one.
    pub fn last_answered(&self) -> Option<String> {
        self.preferred.lock().ok().and_then(|p| p.clone())
    }

    /// Makes the next call start at the endpoint after `url` in the
    /// configured list (wrapping around), e.g. when a stream from `url`
    /// broke and its replica may be gone. A URL outside the list (a leader
    /// redirect) restores the configured order.
    pub fn prefer_after(&self, url: &str) {
        let next = self
            .endpoints
            .iter()
            .position(|e| e == url)
            .and_then(|i| self.endpoints.get((i + 1) % self.endpoints.len()))
            .cloned();
        if let Ok(mut preferred) = self.preferred.lock() {
            *preferred = next;
        }
    }

    /// Runs `call` (named `method`, `Service/Method`, in errors) against
    /// the endpoints in order until one answers, following one leader
    /// redirect. `call` builds a client on the channel it is given and
    /// makes the request; it may run more than once.
    pub async fn call<T, F, Fut>(&self, method: &'static str, mut call: F) -> Result<T, CliError>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let mut tried = Vec::new();
        // The last "cannot serve" message of a replica that answered.
        let mut last = None;
        for url in self.order() {
            match self.attempt(&url, &mut call).await {
                Ok(response) => return Ok(response),
                Err(Failure::Unreachable(detail)) => {
                    tried.push(Attempt { endpoint: url, outcome: format!("unreachable: {detail}") });
                }
                Err(Failure::TimedOut) => return Err(self.timed_out(method, &url, tried)),
                Err(Failure::Status(status)) => {
                    tried.push(Attempt { endpoint: url.clone(), outcome: status.message().to_string() });
                    if status.code() != Code::Unavailable {
                        return Err(rpc_error(method, &status, tried, None));
                    }
                    if let Some(leader) = LeaderHint::from_status(&status) {
                        return self.follow(method, leader, status, &url, tried, &mut call).await;
                    }
                    // No leader named: another replica may know better.
                    last = Some(status.message().to_string());
                }
            }
        }
        let message = last.unwrap_or_else(|| match tried.len() {
            1 => "the endpoint could not be reached".into(),
            n => format!("none of the {n} endpoints could be reached"),
        });
        Err(RpcError { method, code: Code::Unavailable, message, tried, leader: None }.into())
    }

    /// Retries once on the leader a replica named; if that fails too, the
    /// error names the leader.
    async fn follow<T, F, Fut>(
        &self,
        method: &'static str,
        leader: LeaderHint,
        status: Status,
        from: &str,
        mut tried: Vec<Attempt>,
        call: &mut F,
    ) -> Result<T, CliError>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let Some(url) = leader.url().filter(|url| url != from) else {
            return Err(rpc_error(method, &status, tried, Some(leader)));
        };
        match self.attempt(&url, call).await {
            Ok(response) => Ok(response),
            Err(Failure::TimedOut) => Err(self.timed_out(method, &url, tried)),
            Err(Failure::Unreachable(detail)) => {
                tried.push(Attempt { endpoint: url, outcome: format!("unreachable: {detail}") });
                let message = format!("the leader, {leader}, is unreachable: {detail}");
                Err(RpcError { method, code: Code::Unavailable, message, tried, leader: Some(leader) }.into())
            }
            Err(Failure::Status(status)) => {
                tried.push(Attempt { endpoint: url, outcome: status.message().to_string() });
                // A second redirect means leadership is moving: report it
                // rather than chase it.
                let newer = LeaderHint::from_status(&status).unwrap_or(leader);
                Err(rpc_error(method, &status, tried, Some(newer)))
            }
        }
    }

    /// One call to one endpoint, opening its channel if needed.
    async fn attempt<T, F, Fut>(&self, url: &str, call: &mut F) -> Result<T, Failure>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let channel = self.channel(url).await.map_err(Failure::Unreachable)?;
        let channel = InterceptedService::new(channel, self.auth.clone());
        match tokio::time::timeout(self.request_timeout, call(channel)).await {
            Err(_) => Err(Failure::TimedOut),
            Ok(Ok(response)) => {
                if let Ok(mut preferred) = self.preferred.lock() {
                    *preferred = Some(url.to_string());
                }
                Ok(response.into_inner())
            }
            // The channel's own timeout layer reports a timeout this way.
            Ok(Err(status)) if status.code() == Code::Cancelled && status.message() == "Timeout expired" => {
                Err(Failure::TimedOut)
            }
            Ok(Err(status)) if is_transport_failure(&status) => Err(Failure::Unreachable(error_chain(&status))),
            Ok(Err(status)) => Err(Failure::Status(status)),
        }
    }

    /// The open channel to `url`, connecting (TCP + TLS) on first use.
    async fn channel(&self, url: &str) -> Result<Channel, String> {
        if let Some(channel) = self.channels.lock().ok().and_then(|c| c.get(url).cloned()) {
            return Ok(channel);
        }
        let endpoint = self.endpoint(url).map_err(|e| e.to_string())?;
        // Bounded twice: tonic's connect timeout covers the connector, this
        // one the whole handshake.
        let channel = tokio::time::timeout(self.connect_timeout, endpoint.connect())
            .await
            .map_err(|_| format!("no connection within {:?}", self.connect_timeout))?
            .map_err(|e| error_chain(&e))?;
        if let Ok(mut channels) = self.channels.lock() {
            channels.insert(url.to_string(), channel.clone());
        }
        Ok(channel)
    }

    /// The channel configuration for `url`: TLS trusting only the cluster
    /// CA, with the URL's host as the server name.
    fn endpoint(&self, url: &str) -> Result<Endpoint, CliError> {
        let bad = |rule: &str| {
            CliError::usage(format!("endpoint {url:?}: {rule}"), "endpoints look like https://fleet-1.example:7443")
        };
        if !url.starts_with("https://") {
            return Err(bad("must start with https:// (the control plane only speaks TLS)"));
        }
        let uri: Uri = url.parse().map_err(|e| bad(&format!("not a URL: {e}")))?;
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| bad("has no host"))?;
        let tls = client_tls_for_operator(&self.ca_pem, host);
        Ok(Endpoint::from_shared(url.to_string())
            .map_err(|e| bad(&error_chain(&e)))?
            .tls_config(tls)
            .map_err(|e| bad(&format!("TLS: {}", error_chain(&e))))?
            .connect_timeout(self.connect_timeout)
            // A backstop behind the per-call timeout in `attempt`.
            .timeout(self.request_timeout + Duration::from_secs(1))
            // A replica cut off by a partition never resets the connection:
            // without pings a stream (`rollout watch`) would wait on it
            // forever instead of breaking and resuming on another replica.
            // Only while a call is open: idle pings make some proxies
            // answer GOAWAY (too_many_pings).
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(false))
    }

    /// Endpoints in the order to try: the one that last answered first.
    fn order(&self) -> Vec<String> {
        let preferred = self.preferred.lock().ok().and_then(|p| p.clone());
        let mut order: Vec<String> = preferred.into_iter().collect();
        order.extend(self.endpoints.iter().filter(|url| !order.contains(url)).cloned().collect::<Vec<_>>());
        order
    }

    fn timed_out(&self, method: &'static str, url: &str, mut tried: Vec<Attempt>) -> CliError {
        let outcome = format!("no answer within {:?}", self.request_timeout);
        tried.push(Attempt { endpoint: url.to_string(), outcome: outcome.clone() });
        // Not retried elsewhere: the call may have been carried out.
        RpcError { method, code: Code::DeadlineExceeded, message: format!("{url}: {outcome}"), tried, leader: None }
            .into()
    }
}

/// Why one attempt failed.
enum Failure {
    /// The endpoint could not be reached (connect, TLS or transport error).
    Unreachable(String),
    /// The per-call timeout passed.
    TimedOut,
    /// The server answered with an error.
    Status(Status),
}

fn rpc_error(method: &'static str, status: &Status, tried: Vec<Attempt>, leader: Option<LeaderHint>) -> CliError {
    RpcError { method, code: status.code(), message: status.message().to_string(), tried, leader }.into()
}

/// True when the status was made on this side from a transport error (a
/// lost or refused connection) rather than sent by a server.
fn is_transport_failure(status: &Status) -> bool {
    status.code() == Code::Unavailable && std::error::Error::source(status).is_some()
}

/// An error and its sources, `outer: inner: innermost`, without repeats.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(endpoints: &[&str]) -> ConnectionSettings {
        ConnectionSettings {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            ca_pem: "not checked until connect".into(),
            token: Some("kft_0123abcd_secret".into()),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn endpoints_must_be_https_urls_with_a_host() {
        for bad in ["http://h:1", "h:1", "https://", "https://exa mple:1"] {
            let err = Connection::new(settings(&[bad])).expect_err(bad);
            assert_eq!(err.exit_code(), 2, "{bad}: {err}");
        }
        assert!(Connection::new(settings(&["https://127.0.0.1:7001", "https://[::1]:7001"])).is_ok());
    }

    #[test]
    fn a_broken_stream_moves_the_next_call_to_the_following_endpoint() {
        let conn = Connection::new(settings(&["https://a:1", "https://b:1", "https://c:1"])).expect("open");
        conn.prefer_after("https://b:1");
        assert_eq!(conn.order(), ["https://c:1", "https://a:1", "https://b:1"]);
        conn.prefer_after("https://c:1");
        assert_eq!(conn.order(), ["https://a:1", "https://b:1", "https://c:1"]);
        conn.prefer_after("https://leader-elsewhere:1");
        assert_eq!(conn.last_answered(), None);
        assert_eq!(conn.order(), ["https://a:1", "https://b:1", "https://c:1"]);
    }

    #[test]
    fn bearer_interceptor_adds_the_token_and_deadline() {
        let header = bearer_header("kft_0123abcd_secret").ok();
        let mut auth = BearerAuth { header, timeout: Duration::from_secs(5) };
        let request = auth.call(Request::new(())).expect("intercept");
        let got = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        assert_eq!(got, Some("Bearer kft_0123abcd_secret"));
        assert!(request.metadata().get("grpc-timeout").is_some());
    }

    #[tokio::test]
    async fn unreachable_endpoints_are_all_named() {
        // Port 9 on loopback: discard, never listening in a test sandbox.
        let conn = Connection::new(ConnectionSettings {
            connect_timeout: Duration::from_millis(500),
            ..settings(&["https://127.0.0.1:9", "https://localhost:9"])
        })
        .expect("open");
        let err = conn
            .call("ClusterService/Status", |channel| async move {
                use kairos_fleet_proto::fleet::v1::cluster_service_client::ClusterServiceClient;
                ClusterServiceClient::new(channel).status(kairos_fleet_proto::fleet::v1::ClusterStatusRequest {}).await
            })
            .await
            .expect_err("nothing listens");
        assert_eq!(err.exit_code(), 5);
        let hint = err.hint().unwrap_or_default();
        assert!(hint.contains("https://127.0.0.1:9 (unreachable") && hint.contains("https://localhost:9"), "{hint}");
    }
}
