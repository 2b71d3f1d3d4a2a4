//! RolloutService: plan, create and steer rollouts.
//!
//! Create and the operator calls (pause, resume, abort, approve, rollback)
//! run one step of the rollout state machine on the replica that takes
//! them and commit it, with its audit entry, as one transaction guarded by
//! the revision of the rollout they read; the engine on the leader sees the
//! change and carries on from there. Reads are served from the local
//! replica unless a linearizable read is asked for.

pub mod convert;
pub mod plan;
pub mod watch;

use kairos_fleet_proto::fleet::v1 as pb;
use kairos_fleet_proto::fleet::v1::rollout_service_server::{RolloutService, RolloutServiceServer};
use prost::Message;
use std::sync::Arc;
use tonic::{Request, Response, Status};

use self::convert::{node_to_pb, rollout_to_pb};
use self::plan::{class_to_pb, strategy_to_pb, MAX_TEXT};
use super::audit::{self, method, Call, Outcome, Planned as AuditPlanned};
use super::auth::authorize;
use super::{read_status, wants_linearizable_read, write_status};
use crate::engine::records::{self, Header, Loaded, RecordError, WaveMeta};
use crate::engine::transition::{self, Pending};
use crate::engine::{now_ms, observe};
use crate::fleet::rollout::{Event, Phase, Rollout, RolloutError};
use crate::fleet::strategy::Millis;
use crate::metrics::{Counted, StreamGauges, WatchKind};
use crate::replica::ReplicaClient;
use crate::security::Role;
use crate::store::{Compare, CompareOp, KvReader, Op, Request as Write};

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
const MAX_REQUEST_ID: usize = 64;

/// The RolloutService of one replica.
#[derive(Clone)]
pub struct RolloutApi {
    client: ReplicaClient,
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
    streams: Arc<StreamGauges>,
}

fn record_status(e: RecordError) -> Status {
    match e {
        RecordError::Busy { .. } => Status::aborted(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

fn rollout_status(e: RolloutError) -> Status {
    match e {
        RolloutError::InvalidTransition { .. } | RolloutError::WrongWave { .. } => {
            Status::failed_precondition(e.to_string())
        }
        RolloutError::InvalidStrategy { .. } => Status::invalid_argument(e.to_string()),
        RolloutError::UnknownNode { .. } | RolloutError::InvalidNode { .. } => Status::internal(e.to_string()),
    }
}

fn check_id(id: &str) -> Result<(), Status> {
    if id.trim().is_empty() {
        return Err(Status::invalid_argument("rollout_id: is required"));
    }
    if id.len() > 64 || id.contains('/') {
        return Err(Status::invalid_argument("rollout_id: at most 64 characters and no `/`"));
    }
    Ok(())
}

fn check_text(field: &str, text: &str) -> Result<(), Status> {
    if text.len() > MAX_TEXT {
        return Err(Status::invalid_argument(format!("{field}: must be at most {MAX_TEXT} bytes")));
    }
    Ok(())
}

fn not_found(id: &str) -> Status {
    Status::not_found(format!("rollout {id} does not exist; `kairosctl rollout list` shows the rollouts"))
}

/// How an operator's call changes a loaded rollout.
type Steer<'a> = dyn Fn(&mut Loaded, Millis) -> Result<Vec<Event>, Status> + Send + Sync + 'a;

impl RolloutApi {
    /// A RolloutService answering from `client`'s replica.
    pub fn new(client: ReplicaClient) -> Self {
        RolloutApi { client, stopping: None, streams: Arc::default() }
    }

    /// Ends Watch streams when `stopping` turns true (replica shutdown).
    pub fn with_shutdown(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = Some(stopping);
        self
    }

    /// Counts open Watch streams in `gauges` (for `/metrics`).
    pub fn with_stream_gauges(mut self, gauges: Arc<StreamGauges>) -> Self {
        self.streams = gauges;
        self
    }

    /// The tonic service.
    pub fn into_server(self) -> RolloutServiceServer<Self> {
        RolloutServiceServer::new(self)
    }

    fn reader(&self) -> &KvReader {
        self.client.reader()
    }

    async fn read_meta(&self, linearizable: bool) -> Result<pb::ReadMeta, Status> {
        if linearizable {
            self.client.read_linearizable().await.map_err(read_status)?;
        }
        Ok(pb::ReadMeta {
            replica_id: self.client.id(),
            revision: self.reader().revision().map_err(|e| Status::internal(e.to_string()))?,
            staleness_bound: None,
        })
    }

    /// The stored rollout `id` after a write: read once this replica has
    /// caught up with the leader.
    async fn read_back(&self, id: &str) -> Result<pb::Rollout, Status> {
        self.client.read_linearizable().await.map_err(read_status)?;
        let (header, revision) =
            records::read_header(self.reader(), id).map_err(record_status)?.ok_or_else(|| not_found(id))?;
        Ok(rollout_to_pb(&header, revision))
    }

    /// Runs an operator's call on rollout `id` as one audited step.
    async fn steer<T>(
        &self,
        request: &Request<T>,
        method: &'static str,
        id: &str,
        summary: String,
        steer: &Steer<'_>,
    ) -> Result<pb::Rollout, Status> {
        let caller = authorize(self.reader(), request, Role::Operator)?;
        let call = Call::new(request, method, &caller).about(format!("rollout/{id}"), summary);
        let result = self.steer_audited(&call, id, steer).await;
        match result {
            Ok(()) => self.read_back(id).await,
            Err(status) => {
                if status.code() != tonic::Code::InvalidArgument {
                    call.failed(&self.client, &status).await;
                }
                Err(status)
            }
        }
    }

    async fn steer_audited(&self, call: &Call, id: &str, steer: &Steer<'_>) -> Result<(), Status> {
        // Ask the engine to hold its steps on this rollout while the call
        // reads and changes it; the commit takes the mark away again.
        let mark = records::steer_key(id);
        self.client.write(Write::put(mark.as_str(), now_ms().to_string())).await.map_err(write_status)?;
        let result = self.steer_commit(call, id, steer, &mark).await;
        if result.is_err() {
            if let Err(e) = self.client.write(Write::delete(mark.as_str())).await {
                tracing::warn!(rollout = %id, error = %e, "removing an operator's mark; it expires by itself");
            }
        }
        result
    }

    async fn steer_commit(&self, call: &Call, id: &str, steer: &Steer<'_>, mark: &str) -> Result<(), Status> {
        let entry = call.entry(Outcome::Succeeded, None, self.client.id());
        audit::commit_with_entry(&self.client, entry, |reader| {
            let now = now_ms();
            let mut loaded = records::load(reader, id).map_err(record_status)?.ok_or_else(|| not_found(id))?;
            // What the nodes reported since the engine's last step counts:
            // the operator's event is decided on the state as it is.
            let mut pending = Pending::default();
            let nodes: Vec<_> = loaded.rollout.nodes().map(|(n, _)| n.clone()).collect();
            observe::record_nodes(&mut loaded, reader, nodes.iter(), now, &mut pending)
                .map_err(|e| Status::internal(e.to_string()))?;
            let events = steer(&mut loaded, now)?;
            for event in events {
                transition::apply(&mut loaded, event, &mut pending).map_err(rollout_status)?;
            }
            let staged = transition::stage(&mut loaded, pending, reader, now).map_err(record_status)?;
            let (compares, mut ops) = staged.map(|s| (s.compares, s.ops)).unwrap_or_default();
            ops.push(Op::delete(mark));
            Ok(AuditPlanned { compares, ops, target: String::new(), value: () })
        })
        .await
    }
}

fn summary_of(spec: &pb::RolloutSpec) -> String {
    let mut s = format!("target_release={}", spec.target_release);
    if let Some(v) = &spec.target_software_version {
        s.push_str(&format!(" target_software_version={v}"));
    }
    if let Some(sel) = &spec.selector {
        for (name, values) in [
            ("flavors", &sel.flavors),
            ("arches", &sel.arches),
            ("variants", &sel.variants),
            ("models", &sel.models),
            ("node_ids", &sel.node_ids),
        ] {
            if !values.is_empty() {
                s.push_str(&format!(" {name}={}", values.join(",")));
            }
        }
    }
    s
}

/// What Create decided inside its transaction.
enum Created {
    /// A new rollout with this id; these nodes were refused.
    New(String, Vec<pb::NodeRefusal>),
    /// The request id was used before, for this rollout.
    Existing(String),
}

fn sequence(reader: &KvReader) -> Result<(u64, u64), Status> {
    let Some(kv) = reader.get(records::SEQUENCE_KEY.as_bytes()).map_err(|e| Status::internal(e.to_string()))? else {
        return Ok((0, 0));
    };
    let n = std::str::from_utf8(&kv.value)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| Status::internal(format!("{} does not hold a number", records::SEQUENCE_KEY)))?;
    Ok((n, kv.mod_revision))
}

/// Plans and stages a new rollout; the transaction's compares and ops.
fn create_step(
    reader: &KvReader,
    spec: &pb::RolloutSpec,
    request_id: &str,
    created_by: &str,
) -> Result<AuditPlanned<Created>, Status> {
    if !request_id.is_empty() {
        let key = records::request_key(request_id);
        if let Some(kv) = reader.get(key.as_bytes()).map_err(|e| Status::internal(e.to_string()))? {
            let id = String::from_utf8_lossy(&kv.value).into_owned();
            return Ok(AuditPlanned {
                compares: Vec::new(),
                ops: Vec::new(),
                target: format!("rollout/{id}"),
                value: Created::Existing(id),
            });
        }
    }
    let (n, sequence_revision) = sequence(reader)?;
    let id = format!("ro-{:06}", n + 1);
    let busy = records::active_nodes(reader).map_err(record_status)?;
    let planned = plan::plan(reader, spec, &id, &busy)?;
    if planned.assignments.is_empty() {
        let first: Vec<String> =
            planned.refused.iter().take(3).map(|r| format!("{} ({})", r.message, r.way_out)).collect();
        return Err(Status::failed_precondition(format!(
            "no selected node can move to v{}: {} selected, {} refused, {} already there{}{}",
            planned.target.release,
            planned.selected,
            planned.refused.len(),
            planned.up_to_date.len(),
            if first.is_empty() { "" } else { "; for example: " },
            first.join("; ")
        )));
    }
    let now = now_ms();
    let rollout = Rollout::new(id.clone(), planned.strategy.clone(), &planned.plan, planned.assignments.clone(), now)
        .map_err(|e| Status::internal(format!("planning {id}: {e}")))?
        .with_target(planned.target.clone());
    let header = Header {
        id: id.clone(),
        spec: spec.encode_to_vec(),
        created_by: created_by.to_string(),
        change_class: class_to_pb(planned.class) as i32,
        refused: u32::try_from(planned.refused.len()).unwrap_or(u32::MAX),
        target: Some(planned.target.clone()),
        strategy: planned.strategy.clone(),
        phase: Phase::Pending,
        paused_by_operator: false,
        current_wave: 0,
        waves: Vec::new(),
        counts: Vec::new(),
        created_at: now,
        started_at: None,
        updated_at: now,
        finished_at: None,
        phase_changed_at: now,
        messages: Vec::new(),
    };
    let mut loaded = Loaded::new(header, rollout, planned.meta.clone());
    let mut pending = Pending::default();
    transition::apply(&mut loaded, Event::Start { now }, &mut pending).map_err(rollout_status)?;
    let staged = transition::stage(&mut loaded, pending, reader, now)
        .map_err(record_status)?
        .ok_or_else(|| Status::internal(format!("{id}: a new rollout staged no write")))?;
    let mut compares = staged.compares;
    compares.push(Compare::mod_revision(records::SEQUENCE_KEY, CompareOp::Equal, sequence_revision));
    let mut ops = staged.ops;
    ops.push(Op::put(records::SEQUENCE_KEY, (n + 1).to_string()));
    if !request_id.is_empty() {
        let key = records::request_key(request_id);
        compares.push(Compare::missing(key.as_str()));
        ops.push(Op::put(key, id.clone()));
    }
    Ok(AuditPlanned { compares, ops, target: format!("rollout/{id}"), value: Created::New(id, planned.refused) })
}

#[tonic::async_trait]
impl RolloutService for RolloutApi {
    type WatchStream = Counted<watch::EventStream>;

    async fn plan(
        &self,
        request: Request<pb::PlanRolloutRequest>,
    ) -> Result<Response<pb::PlanRolloutResponse>, Status> {
        authorize(self.reader(), &request, Role::Viewer)?;
        let spec = request.into_inner().spec.ok_or_else(|| Status::invalid_argument("spec: is required"))?;
        let reader = self.reader().clone();
        let planned = tokio::task::spawn_blocking(move || {
            let busy = records::active_nodes(&reader).map_err(record_status)?;
            plan::plan(&reader, &spec, "plan", &busy).map(|p| (p, spec))
        })
        .await
        .map_err(|e| Status::internal(format!("Plan: {e}")))?;
        let (planned, spec) = planned?;
        let asked = spec.strategy.unwrap_or_default();
        Ok(Response::new(pb::PlanRolloutResponse {
            change_class: class_to_pb(planned.class) as i32,
            resolved_strategy: Some(strategy_to_pb(
                &planned.strategy,
                asked.allow_major.unwrap_or(false),
                asked.allow_downgrade.unwrap_or(false),
            )),
            waves: planned.waves_pb(),
            refused: planned.refused.clone(),
            up_to_date_node_ids: planned.up_to_date.clone(),
            selected_nodes: planned.selected,
            eligible_nodes: u32::try_from(planned.assignments.len()).unwrap_or(u32::MAX),
            warnings: planned.warnings.clone(),
        }))
    }

    async fn create(
        &self,
        request: Request<pb::CreateRolloutRequest>,
    ) -> Result<Response<pb::CreateRolloutResponse>, Status> {
        let caller = authorize(self.reader(), &request, Role::Operator)?;
        let call = Call::new(&request, method::CREATE_ROLLOUT, &caller);
        let req = request.get_ref();
        let spec = req.spec.clone().ok_or_else(|| Status::invalid_argument("spec: is required"))?;
        let request_id = req.request_id.trim().to_string();
        if request_id.len() > MAX_REQUEST_ID || request_id.contains('/') {
            return Err(Status::invalid_argument(format!(
                "request_id: at most {MAX_REQUEST_ID} characters and no `/`"
            )));
        }
        plan::check_spec(&spec)?;
        let call = call.about("rollout", summary_of(&spec));
        let entry = call.entry(Outcome::Succeeded, None, self.client.id());
        let created_by = caller.name();
        let created = audit::commit_with_entry(&self.client, entry, |reader| {
            create_step(reader, &spec, &request_id, &created_by)
        })
        .await;
        let (id, refused) = match created {
            Ok(Created::New(id, refused)) => (id, refused),
            Ok(Created::Existing(id)) => (id, Vec::new()),
            Err(status) => {
                call.failed(&self.client, &status).await;
                return Err(status);
            }
        };
        tracing::info!(rollout = %id, "rollout created");
        let rollout = self.read_back(&id).await?;
        Ok(Response::new(pb::CreateRolloutResponse { rollout: Some(rollout), refused }))
    }

    async fn get(&self, request: Request<pb::GetRolloutRequest>) -> Result<Response<pb::GetRolloutResponse>, Status> {
        authorize(self.reader(), &request, Role::Viewer)?;
        let linearizable = wants_linearizable_read(&request, request.get_ref().consistency)?;
        let req = request.into_inner();
        check_id(&req.rollout_id)?;
        let meta = self.read_meta(linearizable).await?;
        let id = req.rollout_id.trim();
        let (header, revision) =
            records::read_header(self.reader(), id).map_err(record_status)?.ok_or_else(|| not_found(id))?;
        let mut nodes = Vec::new();
        if req.include_nodes {
            let loaded = records::load(self.reader(), id).map_err(record_status)?.ok_or_else(|| not_found(id))?;
            let stored = records::read_nodes(self.reader(), id).map_err(record_status)?;
            for wave in loaded.rollout.waves() {
                for node in &wave.nodes {
                    if let Some(r) = stored.get(node) {
                        nodes.push(node_to_pb(node, r));
                    }
                }
            }
        }
        Ok(Response::new(pb::GetRolloutResponse {
            rollout: Some(rollout_to_pb(&header, revision)),
            nodes,
            meta: Some(meta),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        authorize(self.reader(), &request, Role::Viewer)?;
        let linearizable = wants_linearizable_read(&request, request.get_ref().consistency)?;
        let req = request.into_inner();
        let page = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => return Err(Status::invalid_argument(format!("page_size: at most {MAX_PAGE}"))),
            n => n,
        };
        let mut phases = Vec::new();
        for (i, p) in req.phases.iter().enumerate() {
            match pb::RolloutPhase::try_from(*p) {
                Ok(pb::RolloutPhase::Unspecified) | Err(_) => {
                    return Err(Status::invalid_argument(format!("phases[{i}]: unknown phase {p}")))
                }
                Ok(phase) => phases.push(phase),
            }
        }
        let meta = self.read_meta(linearizable).await?;
        let mut headers = records::read_headers(self.reader()).map_err(record_status)?;
        headers.retain(|(h, _)| phases.is_empty() || phases.contains(&convert::phase_to_pb(&h.phase)));
        // Newest first; the id breaks ties (ids grow with creation).
        headers.sort_by(|(a, _), (b, _)| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        let start = if req.page_token.is_empty() {
            0
        } else {
            headers.iter().position(|(h, _)| h.id == req.page_token).map(|i| i + 1).ok_or_else(|| {
                Status::invalid_argument("page_token: not a token of this list; start from the first page")
            })?
        };
        let rest = headers.get(start..).unwrap_or_default();
        let rollouts: Vec<pb::Rollout> = rest.iter().take(page).map(|(h, r)| rollout_to_pb(h, *r)).collect();
        let next_page_token = if rest.len() > page {
            rollouts.last().map(|r| r.rollout_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListRolloutsResponse { rollouts, next_page_token, meta: Some(meta) }))
    }

    async fn watch(&self, request: Request<pb::WatchRolloutsRequest>) -> Result<Response<Self::WatchStream>, Status> {
        authorize(self.reader(), &request, Role::Viewer)?;
        let req = request.into_inner();
        let rollout_id = match req.rollout_id.trim() {
            "" => None,
            id => {
                check_id(id)?;
                Some(id.to_string())
            }
        };
        let stream = watch::start(
            self.reader().clone(),
            watch::WatchRequest { rollout_id, resume_revision: req.resume_revision, include_nodes: req.include_nodes },
            self.stopping.clone(),
        )?;
        Ok(Response::new(self.streams.count(WatchKind::Rollouts, stream)))
    }

    async fn pause(
        &self,
        request: Request<pb::PauseRolloutRequest>,
    ) -> Result<Response<pb::PauseRolloutResponse>, Status> {
        let req = request.get_ref().clone();
        check_id(&req.rollout_id)?;
        check_text("reason", &req.reason)?;
        let reason =
            if req.reason.trim().is_empty() { "paused by an operator".to_string() } else { req.reason.clone() };
        let steer = move |loaded: &mut Loaded, now| {
            loaded.header.paused_by_operator = true;
            Ok(vec![Event::Pause { reason: reason.clone(), now }])
        };
        let summary = format!("reason={}", req.reason);
        let rollout = self.steer(&request, method::PAUSE_ROLLOUT, &req.rollout_id, summary, &steer).await?;
        Ok(Response::new(pb::PauseRolloutResponse { rollout: Some(rollout) }))
    }

    async fn resume(
        &self,
        request: Request<pb::ResumeRolloutRequest>,
    ) -> Result<Response<pb::ResumeRolloutResponse>, Status> {
        let req = request.get_ref().clone();
        check_id(&req.rollout_id)?;
        if req.accept_failures && req.retry_failed {
            return Err(Status::invalid_argument(
                "accept_failures, retry_failed: choose one: accept the failures, or command the failed nodes again",
            ));
        }
        let (accept, retry) = (req.accept_failures, req.retry_failed);
        let steer = move |loaded: &mut Loaded, now| {
            let threshold_pause =
                matches!(loaded.rollout.phase(), Phase::Paused { .. }) && !loaded.header.paused_by_operator;
            if threshold_pause && !accept && !retry {
                let reason = match loaded.rollout.phase() {
                    Phase::Paused { reason } => reason.clone(),
                    _ => String::new(),
                };
                return Err(Status::failed_precondition(format!(
                    "rollout {} paused itself: {reason}. Resume with accept_failures (`--accept-failures`: the \
                     failures so far are accepted) or retry_failed (`--retry-failed`: the failed nodes are commanded again)",
                    loaded.id()
                )));
            }
            // A pause the resume runs into again is the threshold's.
            loaded.header.paused_by_operator = false;
            Ok(vec![Event::Resume { accept_failures: accept, retry_failed: retry, now }])
        };
        let summary = format!("accept_failures={} retry_failed={}", req.accept_failures, req.retry_failed);
        let rollout = self.steer(&request, method::RESUME_ROLLOUT, &req.rollout_id, summary, &steer).await?;
        Ok(Response::new(pb::ResumeRolloutResponse { rollout: Some(rollout) }))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortRolloutRequest>,
    ) -> Result<Response<pb::AbortRolloutResponse>, Status> {
        let req = request.get_ref().clone();
        check_id(&req.rollout_id)?;
        check_text("reason", &req.reason)?;
        let reason =
            if req.reason.trim().is_empty() { "aborted by an operator".to_string() } else { req.reason.clone() };
        let steer = move |_: &mut Loaded, now| Ok(vec![Event::Abort { reason: reason.clone(), now }]);
        let summary = format!("reason={}", req.reason);
        let rollout = self.steer(&request, method::ABORT_ROLLOUT, &req.rollout_id, summary, &steer).await?;
        Ok(Response::new(pb::AbortRolloutResponse { rollout: Some(rollout) }))
    }

    async fn approve(
        &self,
        request: Request<pb::ApproveWaveRequest>,
    ) -> Result<Response<pb::ApproveWaveResponse>, Status> {
        let req = request.get_ref().clone();
        check_id(&req.rollout_id)?;
        check_text("comment", &req.comment)?;
        let approver = authorize(self.reader(), &request, Role::Operator)?.name();
        let wave = req.wave as usize;
        let steer = move |loaded: &mut Loaded, now| {
            if let Some(w) = loaded.header.waves.get_mut(wave) {
                w.approved_by.clone_from(&approver);
                w.approved_at = Some(now);
            } else if wave < loaded.rollout.waves().len() {
                loaded.header.waves.resize(wave + 1, WaveMeta::default());
                if let Some(w) = loaded.header.waves.get_mut(wave) {
                    w.approved_by.clone_from(&approver);
                    w.approved_at = Some(now);
                }
            }
            Ok(vec![Event::Approve { wave, now }])
        };
        let summary = format!("wave={} comment={}", req.wave, req.comment);
        let rollout = self.steer(&request, method::APPROVE_WAVE, &req.rollout_id, summary, &steer).await?;
        Ok(Response::new(pb::ApproveWaveResponse { rollout: Some(rollout) }))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRolloutRequest>,
    ) -> Result<Response<pb::RollbackRolloutResponse>, Status> {
        let req = request.get_ref().clone();
        check_id(&req.rollout_id)?;
        check_text("reason", &req.reason)?;
        let overrides = rollback_overrides(req.strategy.as_ref())?;
        let id = req.rollout_id.clone();
        let reader = self.reader().clone();
        let steer = move |loaded: &mut Loaded, now| {
            // A node that moved on to another rollout is that rollout's now:
            // its desired state names the rollout that last commanded it.
            let busy = records::active_nodes(&reader).map_err(record_status)?;
            let mut taken = Vec::new();
            for node in loaded.rollout.nodes().filter(|(_, e)| e.attempt > 0).map(|(n, _)| n) {
                if let Some(other) = busy.get(node).filter(|other| **other != id) {
                    taken.push(format!("{node} (part of {other})"));
                    continue;
                }
                let desired =
                    crate::nodes::read_desired(&reader, node.as_str()).map_err(|e| Status::internal(e.to_string()))?;
                if let Some((d, _)) = desired.filter(|(d, _)| d.rollout_id != id) {
                    taken.push(format!("{node} (now in {})", d.rollout_id));
                }
                if taken.len() >= 10 {
                    break;
                }
            }
            if !taken.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "rollout {id} cannot roll back: nodes it moved belong to a later rollout now: {}; \
                     let an unfinished one finish (or abort it), then roll back the later rollout first",
                    taken.join(", ")
                )));
            }
            if overrides.0.is_some() || overrides.1.is_some() {
                let mut parts = loaded.rollout.clone().into_parts();
                if let Some(n) = overrides.0 {
                    parts.strategy.max_unavailable = n;
                }
                if let Some(t) = overrides.1 {
                    parts.strategy.health_timeout = t;
                }
                loaded.rollout = Rollout::from_parts(parts).map_err(rollout_status)?;
            }
            Ok(vec![Event::Rollback { now }])
        };
        let summary = format!("reason={}", req.reason);
        let rollout = self.steer(&request, method::ROLLBACK_ROLLOUT, &req.rollout_id, summary, &steer).await?;
        Ok(Response::new(pb::RollbackRolloutResponse { rollout: Some(rollout) }))
    }
}

/// The strategy fields a rollback may change: max_unavailable and
/// health_timeout. A rollback reverts nodes last-wave-first in dispatch
/// order, so wave settings do not apply to it.
fn rollback_overrides(s: Option<&pb::RolloutStrategy>) -> Result<(Option<u32>, Option<Millis>), Status> {
    let Some(s) = s else { return Ok((None, None)) };
    let unsupported = [
        ("waves", !s.waves.is_empty()),
        ("failure_threshold", s.failure_threshold.is_some()),
        ("min_sample", s.min_sample.is_some()),
        ("on_failure", s.on_failure.is_some()),
        ("bake", s.bake.is_some()),
        ("maintenance_windows", !s.maintenance_windows.is_empty()),
        ("approve_waves", s.approve_waves.is_some()),
        ("urgent", s.urgent.is_some()),
        ("allow_major", s.allow_major.is_some()),
        ("allow_downgrade", s.allow_downgrade.is_some()),
        ("offline_grace", s.offline_grace.is_some()),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(Status::invalid_argument(format!(
            "strategy.{field}: a rollback reverts nodes last wave first within max_unavailable and health_timeout; \
             only those two may be set"
        )));
    }
    let base = crate::fleet::strategy::Strategy::defaults_for(crate::fleet::strategy::DefaultsClass::Patch, false);
    let checked = plan::overrides(Some(s), base)?;
    Ok((s.max_unavailable.map(|_| checked.max_unavailable), s.health_timeout.map(|_| checked.health_timeout)))
}
