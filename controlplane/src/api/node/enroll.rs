//! `NodeService.Enroll`: a new node trades a bootstrap (enroll) token and a
//! certificate signing request for a node certificate.
//!
//! 1. Every field is checked; a bad one is INVALID_ARGUMENT naming it.
//! 2. The replica's intermediate ([`NodeIssuer`]) signs the certificate:
//!    local and cheap, and nothing leaves the replica yet.
//! 3. One transaction spends one use of the token, creates or refreshes
//!    `nodes/<machine id>` and appends the audit entry, guarded by the mod
//!    revisions of the token and node records it read. Enrollments arriving
//!    together share that transaction ([`super::batch`]); a lost race is
//!    planned again on the newer state, so concurrent enrollments never
//!    spend more uses than the token has.
//! 4. Only a committed enrollment returns the certificate.
//!
//! Refusals of a genuine token id (wrong secret, expired, revoked, used up)
//! are audited with the token id and machine id, never the secret.

use std::sync::Arc;

use kairos_fleet_proto::fleet::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Request, Response, Status};

use super::batch::{self, Pending};

use crate::api::admin::{enroll_token_id, ENROLL_TOKENS_PREFIX};
use crate::api::audit::{code_name, method, truncate, AuditRecord, Outcome};
use crate::nodes::{check_node_id, family_to_pb, identity_from_pb};
use crate::replica::ReplicaClient;
use crate::security::node_ca::{NODE_CA_CERT_FILE, NODE_CA_KEY_FILE};
use crate::security::{NodeCsr, NodeIssuer, SecurityError, TokenId};

/// Longest bootstrap token accepted, in characters.
pub const MAX_BOOTSTRAP_TOKEN_CHARS: usize = 256;
/// Longest hostname accepted, in characters.
pub const MAX_HOSTNAME_CHARS: usize = 253;
/// How long an enrollment waits for an unknown token to be applied here.
const TOKEN_WAIT_STEP: std::time::Duration = std::time::Duration::from_millis(100);
const TOKEN_WAIT_ROUNDS: u32 = 15;
/// Longest audit summary and error message kept (the audit log's limit).
const MAX_AUDIT_TEXT: usize = 1024;

/// Answers `NodeService.Enroll` on one replica.
#[derive(Clone)]
pub struct Enroller {
    client: ReplicaClient,
    issuer: Option<Arc<NodeIssuer>>,
    batches: mpsc::Sender<Pending>,
}

/// A request whose fields all passed their checks.
pub(crate) struct Enrollment {
    pub(crate) token_id: TokenId,
    pub(crate) node_id: String,
    pub(crate) hostname: String,
    pub(crate) identity: pb::NodeIdentity,
    pub(crate) family: pb::ImageFamily,
    family_text: String,
    csr: NodeCsr,
}

/// Who asked, from where, when: what the audit entries of one call share.
pub(crate) struct Audited {
    actor: String,
    target: String,
    summary: String,
    peer: String,
    received_ms: i64,
    replica_id: u64,
}

impl Audited {
    pub(crate) fn entry(&self, outcome: Outcome, error: Option<&Status>) -> AuditRecord {
        AuditRecord {
            sequence: 0,
            time_ms: self.received_ms,
            actor: self.actor.clone(),
            role: None,
            method: method::ENROLL.to_owned(),
            target: self.target.clone(),
            summary: self.summary.clone(),
            outcome,
            status_code: code_name(error.map_or(Code::Ok, Status::code)),
            error_message: error.map(|e| truncate(e.message(), MAX_AUDIT_TEXT)).unwrap_or_default(),
            peer_address: self.peer.clone(),
            replica_id: self.replica_id,
        }
    }
}

impl Enroller {
    /// Enrolls through `client`'s replica, signing with `issuer`; without
    /// an issuer every enrollment is FAILED_PRECONDITION.
    ///
    /// Starts the replica's enrollment batcher: call it inside the runtime.
    pub fn new(client: ReplicaClient, issuer: Option<Arc<NodeIssuer>>) -> Self {
        let (batches, rx) = mpsc::channel(4 * batch::MAX_BATCH);
        tokio::spawn(batch::run(client.clone(), rx));
        Enroller { client, issuer, batches }
    }

    /// Handles one Enroll call (see the module docs for the steps).
    pub async fn enroll(&self, request: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let received_ms = jiff::Timestamp::now().as_millisecond();
        let req = request.into_inner();
        let enrollment = check_request(&req)?;
        let Some(issuer) = self.issuer.as_deref() else {
            return Err(self.no_issuer());
        };
        let certificate = issuer.sign(&enrollment.csr, &enrollment.node_id).map_err(signing_status)?;
        let not_after_ms = u64::try_from(certificate.not_after.unix_timestamp()).unwrap_or(0).saturating_mul(1000);

        let audited = Audited {
            actor: format!("enroll-token:{}", enrollment.token_id),
            target: format!("node/{}", enrollment.node_id),
            summary: truncate(
                &format!(
                    "machine_id={} hostname={:?} family={} key={}",
                    enrollment.node_id,
                    enrollment.hostname,
                    enrollment.family_text,
                    enrollment.csr.key_type()
                ),
                MAX_AUDIT_TEXT,
            ),
            peer,
            received_ms,
            replica_id: self.client.id(),
        };
        let token_id = enrollment.token_id.clone();
        self.await_token(&token_id).await;
        let node_id = enrollment.node_id.clone();
        let peer = audited.peer.clone();
        let (reply, answer) = oneshot::channel();
        let pending = Pending { enrollment, bootstrap_token: req.bootstrap_token, not_after_ms, audited, reply };
        if self.batches.send(pending).await.is_err() {
            return Err(Status::unavailable("the replica is shutting down"));
        }
        let enrolled = answer.await.map_err(|_| Status::unavailable("the replica is shutting down"))?;
        let (record, reenrolled) = match enrolled {
            Ok(done) => done,
            Err(status) => {
                tracing::info!(
                    token_id = %token_id,
                    machine_id = %node_id,
                    peer = %peer,
                    code = ?status.code(),
                    error = %status.message(),
                    "enrollment refused"
                );
                return Err(status);
            }
        };
        tracing::info!(
            node_id = %record.node_id,
            token_id = %token_id,
            reenrolled,
            not_after_ms,
            "node enrolled"
        );
        Ok(Response::new(pb::EnrollResponse {
            node_id: record.node_id.clone(),
            certificate_chain_pem: certificate.chain_pem,
            ca_bundle_pem: issuer.ca_bundle_pem().to_owned(),
            server_endpoints: self.server_endpoints(),
            certificate_not_after: Some(prost_types::Timestamp {
                seconds: certificate.not_after.unix_timestamp(),
                nanos: 0,
            }),
            labels: record.enrollment_labels.into_iter().collect(),
        }))
    }

    /// A token created a moment ago through the leader may not be applied
    /// here yet: wait briefly for it rather than refuse (no raft entry is
    /// spent on an unauthenticated caller; an unknown token just answers
    /// a little later).
    async fn await_token(&self, token_id: &TokenId) {
        let key = format!("{ENROLL_TOKENS_PREFIX}{token_id}");
        for _ in 0..TOKEN_WAIT_ROUNDS {
            if !matches!(self.client.reader().get(key.as_bytes()), Ok(None)) {
                return;
            }
            tokio::time::sleep(TOKEN_WAIT_STEP).await;
        }
    }

    /// `https://host:port` of every replica in the raft membership, by id.
    fn server_endpoints(&self) -> Vec<String> {
        let metrics = self.client.raft().metrics().borrow().clone();
        metrics.membership_config.membership().nodes().map(|(_, node)| format!("https://{}", node.addr)).collect()
    }

    fn no_issuer(&self) -> Status {
        let id = self.client.id();
        Status::failed_precondition(format!(
            "replica {id} cannot issue node certificates: its data dir has no {NODE_CA_CERT_FILE} and \
             {NODE_CA_KEY_FILE}; create them where the cluster CA key is with `kairos-controlplane issue-node-ca \
             --data-dir <init dir> --replica-id {id}`, copy them into the replica's folder and restart it, or \
             enroll through another replica"
        ))
    }
}

/// Checks every field; errors are INVALID_ARGUMENT naming the field and rule.
fn check_request(req: &pb::EnrollRequest) -> Result<Enrollment, Status> {
    let invalid = |message: String| Status::invalid_argument(message);
    let token_id = check_bootstrap_token(&req.bootstrap_token)?;
    check_node_id("machine_id", &req.machine_id).map_err(invalid)?;
    if req.machine_id.bytes().all(|b| b == b'0') {
        return Err(invalid("machine_id: must not be all zeros, which is an uninitialised machine id".into()));
    }
    let hostname_chars = req.hostname.chars().count();
    if hostname_chars > MAX_HOSTNAME_CHARS {
        return Err(invalid(format!("hostname: at most {MAX_HOSTNAME_CHARS} characters (got {hostname_chars})")));
    }
    if req.hostname.chars().any(char::is_control) {
        return Err(invalid("hostname: must not contain control characters".into()));
    }
    let wire = req.identity.as_ref().ok_or_else(|| {
        invalid(
            "identity: required: the node's /etc/kairos-release fields (flavor, variant, arch, release, ...)".into(),
        )
    })?;
    let identity = identity_from_pb(wire).map_err(|e| invalid(e.to_string()))?;
    let csr = NodeCsr::parse(&req.csr_pem).map_err(|e| invalid(format!("csr_pem: {e}")))?;
    let family = identity.family();
    Ok(Enrollment {
        token_id,
        node_id: req.machine_id.clone(),
        hostname: req.hostname.clone(),
        identity: wire.clone(),
        family: family_to_pb(&family),
        family_text: family.to_string(),
        csr,
    })
}

/// The token id of a well-formed bootstrap token. The messages never echo
/// the token: it is a secret even when it is the wrong one.
fn check_bootstrap_token(token: &str) -> Result<TokenId, Status> {
    let invalid = |rule: String| Status::invalid_argument(format!("bootstrap_token: {rule}"));
    let chars = token.chars().count();
    if token.is_empty() {
        return Err(invalid("required: the enroll token `kairosctl enroll-tokens create` printed".into()));
    }
    if chars > MAX_BOOTSTRAP_TOKEN_CHARS {
        return Err(invalid(format!("at most {MAX_BOOTSTRAP_TOKEN_CHARS} characters (got {chars})")));
    }
    if token.trim().starts_with("kft_") {
        return Err(invalid(
            "this is an operator token (kft_...); Enroll takes an enroll token (kfe_...) from \
             `kairosctl enroll-tokens create`"
                .into(),
        ));
    }
    enroll_token_id(token).map_err(|_| invalid("must be an enroll token of the form kfe_<8 hex>_<64 hex>".into()))
}

/// The status of a failed signing: an expired intermediate is the
/// replica's problem, a CSR the node's.
fn signing_status(e: SecurityError) -> Status {
    match e {
        SecurityError::Expired { .. } => Status::failed_precondition(e.to_string()),
        SecurityError::InvalidCsr { .. } => Status::invalid_argument(format!("csr_pem: {e}")),
        SecurityError::InvalidName { .. } => Status::invalid_argument(format!("machine_id: {e}")),
        other => Status::internal(format!("signing the node certificate: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_token_errors_name_the_field_and_never_echo_the_token() {
        let operator = format!("kft_0123abcd_{}", "a".repeat(64));
        let long = format!("kfe_0123abcd_{}", "b".repeat(300));
        let cases: [(&str, &str); 4] = [
            ("", "required"),
            (&long, "at most 256 characters"),
            (&operator, "this is an operator token"),
            ("kfe_secretsecret", "kfe_<8 hex>_<64 hex>"),
        ];
        for (token, rule) in cases {
            let status = check_bootstrap_token(token).expect_err(rule);
            assert_eq!(status.code(), Code::InvalidArgument, "{rule}");
            assert!(status.message().starts_with("bootstrap_token: "), "{}", status.message());
            assert!(status.message().contains(rule), "{}", status.message());
            assert!(token.is_empty() || !status.message().contains(token), "echoed: {}", status.message());
        }
        let good = format!("kfe_0123abcd_{}", "c".repeat(64));
        assert_eq!(check_bootstrap_token(&good).map(|id| id.to_string()).ok().as_deref(), Some("0123abcd"));
    }

    #[test]
    fn an_expired_intermediate_is_the_replicas_precondition_not_the_nodes_argument() {
        let expired = SecurityError::Expired { what: "node-ca.pem".into(), not_after: "yesterday".into() };
        assert_eq!(signing_status(expired).code(), Code::FailedPrecondition);
        let csr = SecurityError::InvalidCsr { reason: "bad".into() };
        let status = signing_status(csr);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("csr_pem: "), "{}", status.message());
    }
}
