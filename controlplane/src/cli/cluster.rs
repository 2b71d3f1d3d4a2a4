//! `kairosctl cluster ...`: replica membership and replication health.

use std::fmt::Write as _;

use kairos_fleet_proto::fleet::v1 as pb;
use pb::cluster_service_client::ClusterServiceClient;
use serde::{Deserialize, Serialize};

use super::output::{or_dash, yes_no, Render, Table};
use super::{timestamp, CliError, Connection};

/// The cluster's replication state (`cluster status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatusView {
    /// Current raft term.
    pub term: u64,
    /// Leader's replica id; 0 when there is none.
    pub leader_id: u64,
    /// Leader's public API address; empty when there is none.
    pub leader_address: String,
    /// Index of the last committed log entry.
    pub commit_index: u64,
    /// Replica that answered.
    pub answered_by: u64,
    /// Whether the answer came from the leader (else progress may be stale).
    pub from_leader: bool,
    /// Every member.
    pub replicas: Vec<ReplicaView>,
}

/// One replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    /// Raft node id.
    pub replica_id: u64,
    /// Raft address, `host:port`.
    pub address: String,
    /// Public API address; empty when unknown.
    pub api_address: String,
    /// `leader`, `follower`, `learner`, `candidate` or `unknown`.
    pub role: String,
    /// Last log index the leader knows it holds (MATCHED).
    pub last_log_index: u64,
    /// Last applied index.
    pub applied_index: u64,
    /// Entries behind the leader.
    pub lag: u64,
    /// Whether the leader reached it on its last attempt.
    pub reachable: bool,
    /// When the leader last heard from it, RFC 3339; absent if never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<String>,
}

/// The membership after `add-replica` or `remove-replica`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipView {
    /// Raft log index of the committed membership change.
    pub log_index: u64,
    /// The members now.
    pub replicas: Vec<ReplicaView>,
}

/// The lowercase name of a replica role.
pub fn role_name(role: pb::ReplicaRole) -> &'static str {
    match role {
        pb::ReplicaRole::Leader => "leader",
        pb::ReplicaRole::Follower => "follower",
        pb::ReplicaRole::Learner => "learner",
        pb::ReplicaRole::Candidate => "candidate",
        pb::ReplicaRole::Unspecified => "unknown",
    }
}

impl From<pb::Replica> for ReplicaView {
    fn from(r: pb::Replica) -> ReplicaView {
        ReplicaView {
            replica_id: r.replica_id,
            role: role_name(r.role()).to_string(),
            address: r.address,
            api_address: r.api_address,
            last_log_index: r.last_log_index,
            applied_index: r.applied_index,
            lag: r.lag,
            reachable: r.reachable,
            last_contact: r.last_contact.as_ref().and_then(timestamp),
        }
    }
}

impl From<pb::ClusterStatusResponse> for ClusterStatusView {
    fn from(s: pb::ClusterStatusResponse) -> ClusterStatusView {
        ClusterStatusView {
            term: s.term,
            leader_id: s.leader_id,
            leader_address: s.leader_address,
            commit_index: s.commit_index,
            answered_by: s.answered_by,
            from_leader: s.from_leader,
            replicas: s.replicas.into_iter().map(ReplicaView::from).collect(),
        }
    }
}

fn replica_table(replicas: &[ReplicaView], out: &mut String) {
    let mut table = Table::new(&["ID", "ADDRESS", "ROLE", "MATCHED", "APPLIED", "LAG", "REACHABLE"]);
    for r in replicas {
        table.row(vec![
            r.replica_id.to_string(),
            or_dash(&r.address),
            r.role.clone(),
            r.last_log_index.to_string(),
            r.applied_index.to_string(),
            r.lag.to_string(),
            yes_no(r.reachable),
        ]);
    }
    table.write(out);
}

impl Render for ClusterStatusView {
    fn table(&self, out: &mut String) {
        let leader = match (self.leader_id, self.leader_address.as_str()) {
            (0, _) => "none".to_string(),
            (id, "") => id.to_string(),
            (id, address) => format!("{id} ({address})"),
        };
        let _ = writeln!(out, "term {}   leader {leader}   commit index {}", self.term, self.commit_index);
        if !self.from_leader {
            let _ = writeln!(
                out,
                "answered by replica {}, not the leader: other replicas' progress may be stale",
                self.answered_by
            );
        }
        replica_table(&self.replicas, out);
    }
}

impl Render for MembershipView {
    fn table(&self, out: &mut String) {
        let _ = writeln!(out, "membership change committed at log index {}", self.log_index);
        replica_table(&self.replicas, out);
    }
}

/// `cluster status`.
pub async fn status(conn: &Connection) -> Result<ClusterStatusView, CliError> {
    let response = conn
        .call("ClusterService/Status", |channel| async move {
            ClusterServiceClient::new(channel).status(pb::ClusterStatusRequest {}).await
        })
        .await?;
    Ok(response.into())
}

/// `cluster add-replica`.
pub async fn add_replica(conn: &Connection, request: pb::AddReplicaRequest) -> Result<MembershipView, CliError> {
    let response = conn
        .call("ClusterService/AddReplica", |channel| {
            let request = request.clone();
            async move { ClusterServiceClient::new(channel).add_replica(request).await }
        })
        .await?;
    Ok(MembershipView {
        log_index: response.log_index,
        replicas: response.replicas.into_iter().map(ReplicaView::from).collect(),
    })
}

/// `cluster remove-replica`.
pub async fn remove_replica(conn: &Connection, replica_id: u64) -> Result<MembershipView, CliError> {
    let response = conn
        .call("ClusterService/RemoveReplica", |channel| async move {
            ClusterServiceClient::new(channel).remove_replica(pb::RemoveReplicaRequest { replica_id }).await
        })
        .await?;
    Ok(MembershipView {
        log_index: response.log_index,
        replicas: response.replicas.into_iter().map(ReplicaView::from).collect(),
    })
}
