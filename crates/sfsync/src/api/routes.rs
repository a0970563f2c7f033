//! The `/api/v1/` handlers. Reads go straight to the store; actions are recorded in the
//! operator audit chain first, then carried out through the same store calls the CLI makes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value as J};
use sfsync_store::{
    ConflictDetail, LedgerWrite, NewWrite, OperatorAction, QuarantineActOutcome, QuarantineAction,
    QuarantineFilter, QuarantineStatus, SubmitOutcome, SyncJob, SyncJobFilter, SyncJobKind,
    SyncJobPatch, SyncJobStatus, WriteFilter, WriteState, WriteTarget,
};

use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;
use crate::config::validate::ApiRole;

type S = State<Arc<ApiState>>;
pub(super) type ApiResult = Result<Response, ApiError>;

/// Most rows a list returns.
const MAX_LIMIT: usize = 1000;
/// Rows a list returns when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;
/// What PII values read back as.
const MASK: &str = crate::admin_cmd::MASK;

pub(super) fn ok(v: J) -> ApiResult {
    Ok(Json(v).into_response())
}

fn limit(l: Option<usize>) -> Result<usize, ApiError> {
    match l {
        None => Ok(DEFAULT_LIMIT),
        Some(0) => Err(ApiError::bad_request("limit must be at least 1")),
        Some(n) if n > MAX_LIMIT => Err(ApiError::bad_request(format!(
            "limit {n} is over the maximum of {MAX_LIMIT}"
        ))),
        Some(n) => Ok(n),
    }
}

pub(super) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(super) fn ts(ms: i64) -> J {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| J::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(J::Null)
}

fn ts_opt(ms: Option<i64>) -> J {
    ms.map(ts).unwrap_or(J::Null)
}

/// Records an operator action before it is carried out: no audit entry, no action.
pub(super) async fn audit(
    s: &ApiState,
    caller: &Caller,
    action: &str,
    target: String,
    detail: J,
) -> Result<(), ApiError> {
    s.store
        .record_operator_action(&OperatorAction {
            actor: caller.name.clone(),
            role: caller.role.as_str().into(),
            action: action.into(),
            target,
            detail,
            at_ms: now_ms(),
        })
        .await
        .map_err(|e| ApiError::internal("recording the action in the audit trail", e))?;
    Ok(())
}

/// A JSON object body; an empty body is `{}`.
pub(super) fn json_body(body: Result<Bytes, BytesRejection>) -> Result<J, ApiError> {
    let body = body.map_err(|r| {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "bad_request"
        };
        ApiError::new(status, code, r.body_text())
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let v: J = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok(v)
}

fn path_id(p: Result<Path<i64>, PathRejection>) -> Result<i64, ApiError> {
    p.map(|Path(id)| id).map_err(ApiError::from)
}

pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(ApiError::from)
}

/// The store's queue sizes (one consistent read).
pub(super) async fn ops_counts(s: &ApiState) -> Result<sfsync_store::OpsCounts, ApiError> {
    s.store
        .ops_counts()
        .await
        .map_err(|e| ApiError::internal("counting the queues", e))
}

// ---- fallbacks ----

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint {}; see /api/v1/openapi.json",
        uri.path()
    ))
}

pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

// ---- openapi & status ----

pub async fn openapi_doc() -> Json<J> {
    Json(super::openapi::document())
}

pub async fn status(State(s): S, caller: Caller) -> ApiResult {
    caller.require_viewer()?;
    let counts = ops_counts(&s).await?;
    let open_runs = s
        .store
        .sync_jobs(&SyncJobFilter::open())
        .await
        .map_err(|e| ApiError::internal("reading the runs", e))?;
    let st = &s.stats;
    let last_commit = st.last_commit_ms.load(std::sync::atomic::Ordering::Relaxed);
    let last_applied = st
        .last_applied_at_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    let lag = (last_commit > 0).then(|| (now_ms() - last_commit).max(0) as f64 / 1000.0);
    let snap = st.snapshot();
    let counters: Map<String, J> = [
        "ingested",
        "duplicates",
        "applied",
        "late",
        "stale",
        "own_writes",
        "repairs_requested",
        "repairs_done",
        "resyncs_requested",
        "snapshot_rows",
        "jobs_done",
        "drift_found",
        "dead_letters",
        "quarantined",
        "released",
        "errors",
        "batches",
    ]
    .iter()
    .map(|k| (k.to_string(), snap[*k].clone()))
    .collect();
    let per_channel = st.channels();
    let per_object = st.objects();
    let now = now_ms();
    let objects: Vec<J> = s
        .objects
        .iter()
        .map(|o| {
            let ingested = o
                .channel
                .as_ref()
                .and_then(|c| per_channel.iter().find(|(k, _)| k == c).map(|(_, n)| *n));
            let applied = per_object
                .iter()
                .find(|(k, _)| *k == o.name)
                .map(|(_, v)| *v)
                .unwrap_or_default();
            let last = applied.last_commit_ms;
            json!({
                "name": o.name,
                "mode": o.mode,
                "channel": o.channel,
                "writeback": o.writable,
                // Events of the object's channel (a channel may carry several objects).
                "channel_events_ingested": ingested.unwrap_or(0),
                "changes_committed": applied.changes,
                "last_applied_commit_time": (last > 0).then(|| ts(last)),
                "lag_seconds": (last > 0).then(|| (now - last).max(0) as f64 / 1000.0),
            })
        })
        .collect();
    let writes: Map<String, J> = counts
        .writes_by_state
        .iter()
        .map(|(st, n)| (st.as_str().to_string(), json!(n)))
        .collect();
    ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "run_id": s.run_id,
        // Who is asking: the dashboard shows its actions only to an operator.
        "caller": { "name": caller.name, "role": caller.role.as_str() },
        "uptime_seconds": s.started.elapsed().as_secs_f64(),
        "pipeline": {
            "last_applied_commit_time": (last_commit > 0).then(|| ts(last_commit)),
            "last_batch_applied_at": (last_applied > 0).then(|| ts(last_applied)),
            "lag_seconds": lag,
            "counters": counters,
        },
        "objects": objects,
        "pending_repairs": counts.pending_repairs,
        "pending_resyncs": counts.pending_resyncs,
        "open_runs": open_runs.len(),
        "quarantine_open": counts.quarantine_open,
        "dead_letters": counts.dead_letters,
        "writes": writes,
    }))
}

// ---- runs (sync jobs) ----

fn run_json(j: &SyncJob) -> J {
    let c = &j.counts;
    json!({
        "id": j.id,
        "kind": j.kind.as_str(),
        "object": j.object,
        "state": j.status.as_str(),
        "reason": j.reason,
        "requested_by": j.requested_by,
        "since": ts_opt(j.since_ms),
        "until": ts_opt(j.until_ms),
        "run_id": j.run_id,
        "rows_total": j.rows_total,
        "counts": {
            "read": c.read, "applied": c.applied, "skipped": c.skipped, "held": c.held,
            "deleted": c.deleted, "failed": c.failed, "api_calls": c.api_calls,
        },
        "requested_at": ts(j.requested_at_ms),
        "started_at": ts_opt(j.started_at_ms),
        "finished_at": ts_opt(j.finished_at_ms),
        "error": j.error,
        "report": j.report.as_deref().map(|r| serde_json::from_str::<J>(r).unwrap_or_else(|_| J::String(r.into()))),
        "slices": j.slices.iter().map(slice_json).collect::<Vec<_>>(),
    })
}

/// One slice of a large run (see `sfsync_store::SyncJobSlice`).
fn slice_json(s: &sfsync_store::SyncJobSlice) -> J {
    let c = &s.counts;
    json!({
        "seq": s.seq,
        "since": ts_opt(s.since_ms),
        "until": ts_opt(s.until_ms),
        "state": s.status.as_str(),
        "attempts": s.attempts,
        "counts": {
            "read": c.read, "applied": c.applied, "skipped": c.skipped, "held": c.held,
            "deleted": c.deleted, "failed": c.failed, "api_calls": c.api_calls,
        },
        "error": s.error,
        "started_at": ts_opt(s.started_at_ms),
        "finished_at": ts_opt(s.finished_at_ms),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    /// `open`, `all` (default) or a state.
    state: Option<String>,
    kind: Option<String>,
    object: Option<String>,
    limit: Option<usize>,
}

pub async fn list_runs(
    State(s): S,
    caller: Caller,
    q: Result<Query<RunsQuery>, QueryRejection>,
) -> ApiResult {
    caller.require_viewer()?;
    let q = query(q)?;
    let statuses = match q.state.as_deref() {
        None | Some("all") => Vec::new(),
        Some("open") => vec![SyncJobStatus::Pending, SyncJobStatus::Running],
        Some(other) => vec![SyncJobStatus::parse(other).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state '{other}': use open, all, pending, running, succeeded, failed or cancelled"
            ))
        })?],
    };
    let kind = match q.kind.as_deref() {
        None => None,
        Some(k) => Some(SyncJobKind::parse(k).ok_or_else(|| {
            let kinds: Vec<&str> = SyncJobKind::ALL.iter().map(|k| k.as_str()).collect();
            ApiError::bad_request(format!("kind '{k}': use one of {}", kinds.join(", ")))
        })?),
    };
    let jobs = s
        .store
        .sync_jobs(&SyncJobFilter {
            statuses,
            kind,
            object: q.object,
            newest_first: true,
            limit: limit(q.limit)?,
        })
        .await
        .map_err(|e| ApiError::internal("reading the runs", e))?;
    ok(json!({ "runs": jobs.iter().map(run_json).collect::<Vec<_>>() }))
}

async fn run_or_404(s: &ApiState, id: i64) -> Result<SyncJob, ApiError> {
    s.store
        .sync_job(id)
        .await
        .map_err(|e| ApiError::internal("reading the run", e))?
        .ok_or_else(|| ApiError::not_found(format!("run {id} does not exist")))
}

pub async fn show_run(
    State(s): S,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult {
    caller.require_viewer()?;
    let id = path_id(id)?;
    ok(run_json(&run_or_404(&s, id).await?))
}

pub async fn cancel_run(
    State(s): S,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    caller.require_operator("cancelling a run")?;
    let id = path_id(id)?;
    let body = json_body(body)?;
    let note = note(&body)?;
    let job = run_or_404(&s, id).await?;
    if !job.status.is_open() {
        return Err(ApiError::conflict(format!(
            "run {id} is {} already",
            job.status.as_str()
        )));
    }
    audit(
        &s,
        &caller,
        "run.cancel",
        format!("run {id}"),
        json!({ "kind": job.kind.as_str(), "object": job.object, "note": note }),
    )
    .await?;
    s.store
        .patch_sync_job(
            id,
            &SyncJobPatch {
                status: Some(SyncJobStatus::Cancelled),
                error: Some(format!("cancelled by operator:{} (API)", caller.name)),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| ApiError::internal("cancelling the run", e))?;
    ok(run_json(&run_or_404(&s, id).await?))
}

/// The optional `note` of an action body.
fn note(body: &J) -> Result<String, ApiError> {
    match body.get("note") {
        None | Some(J::Null) => Ok(String::new()),
        Some(J::String(n)) => Ok(n.clone()),
        Some(_) => Err(ApiError::bad_request("note must be a string")),
    }
}

// ---- quarantine ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineQuery {
    /// `open` (default), `all` or a status.
    status: Option<String>,
    object: Option<String>,
    limit: Option<usize>,
}

pub async fn list_quarantine(
    State(s): S,
    caller: Caller,
    q: Result<Query<QuarantineQuery>, QueryRejection>,
) -> ApiResult {
    caller.require_viewer()?;
    let q = query(q)?;
    let statuses = match q.status.as_deref() {
        None | Some("open") => vec![
            QuarantineStatus::Held,
            QuarantineStatus::ReleaseRequested,
            QuarantineStatus::ForceRequested,
        ],
        Some("all") => Vec::new(),
        Some(other) => vec![QuarantineStatus::parse(other).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status '{other}': use open, all, held, release_requested, force_requested, released or discarded"
            ))
        })?],
    };
    let rows = s
        .store
        .quarantine_list(&QuarantineFilter {
            object: q.object,
            statuses,
            limit: limit(q.limit)?,
            ..Default::default()
        })
        .await
        .map_err(|e| ApiError::internal("reading the quarantine", e))?;
    ok(json!({
        "entries": rows.iter().map(crate::quarantine_cmd::summary).collect::<Vec<_>>()
    }))
}

async fn quarantine_or_404(
    s: &ApiState,
    id: i64,
) -> Result<sfsync_store::QuarantineRecord, ApiError> {
    s.store
        .quarantine_list(&QuarantineFilter {
            ids: vec![id],
            ..Default::default()
        })
        .await
        .map_err(|e| ApiError::internal("reading the quarantine", e))?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(format!("no quarantined change has id {id}")))
}

pub async fn show_quarantine(
    State(s): S,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult {
    caller.require_viewer()?;
    let id = path_id(id)?;
    let q = quarantine_or_404(&s, id).await?;
    let pii = s
        .objects
        .iter()
        .find(|o| o.name == q.entry.object)
        .map(|o| o.pii_fields.clone())
        .unwrap_or_default();
    ok(crate::quarantine_cmd::detail(&q, &pii))
}

async fn quarantine_act(
    s: &ApiState,
    caller: &Caller,
    id: i64,
    action: QuarantineAction,
    note: String,
) -> ApiResult {
    let name = match action {
        QuarantineAction::Release => "quarantine.release",
        QuarantineAction::ForceRelease => "quarantine.force_release",
        QuarantineAction::Discard => "quarantine.discard",
    };
    let q = quarantine_or_404(s, id).await?;
    // Refused without an audit entry when it is resolved already (the store re-checks in its
    // transaction, so a race still answers 409).
    if !q.status.is_open() {
        return Err(ApiError::conflict(format!(
            "quarantined change {id} is {} already",
            q.status.as_str()
        )));
    }
    audit(
        s,
        caller,
        name,
        format!("quarantine {id}"),
        json!({ "object": q.entry.object, "record_id": q.entry.record_id, "rule": q.entry.rule, "note": note }),
    )
    .await?;
    let by = format!("api:{}", caller.name);
    let done = s
        .store
        .quarantine_act(&[id], action, &by, &note)
        .await
        .map_err(|e| ApiError::internal("recording the decision", e))?;
    match done.into_iter().next().map(|(_, o)| o) {
        Some(QuarantineActOutcome::Done(st)) => ok(json!({
            "id": id,
            "status": st.as_str(),
            "by": by,
        })),
        Some(QuarantineActOutcome::AlreadyResolved(st)) => Err(ApiError::conflict(format!(
            "quarantined change {id} is {} already",
            st.as_str()
        ))),
        Some(QuarantineActOutcome::NotFound) | None => Err(ApiError::not_found(format!(
            "no quarantined change has id {id}"
        ))),
    }
}

pub async fn release_quarantine(
    State(s): S,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    caller.require_operator("releasing a quarantined change")?;
    let id = path_id(id)?;
    let body = json_body(body)?;
    let force = match body.get("force") {
        None | Some(J::Null) => false,
        Some(J::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("force must be true or false")),
    };
    let action = if force {
        QuarantineAction::ForceRelease
    } else {
        QuarantineAction::Release
    };
    quarantine_act(&s, &caller, id, action, note(&body)?).await
}

pub async fn discard_quarantine(
    State(s): S,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    caller.require_operator("discarding a quarantined change")?;
    let id = path_id(id)?;
    let body = json_body(body)?;
    quarantine_act(&s, &caller, id, QuarantineAction::Discard, note(&body)?).await
}

// ---- dead letters ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    /// `event`, `write` or both (default).
    kind: Option<String>,
    /// Event dead letters with ids above this only (paging).
    after: Option<i64>,
    object: Option<String>,
    limit: Option<usize>,
}

fn ops_error(context: &str, e: crate::writes_ops::OpsError) -> ApiError {
    use crate::writes_ops::OpsError;
    match e {
        OpsError::NotFound(m) => ApiError::not_found(m),
        OpsError::Refused(m) => ApiError::conflict(m),
        OpsError::Store(e) => ApiError::internal(context, e),
    }
}

/// A write as the dead-letter and conflict lists show it.
fn write_summary_json(kind: &str, w: &crate::writes_ops::WriteSummary) -> J {
    let mut v = serde_json::to_value(w).unwrap_or(J::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("kind".into(), json!(kind));
        o.insert(
            "error".into(),
            json!(w.last_error.as_deref().or(w.reason.as_deref())),
        );
    }
    v
}

pub async fn list_dead_letters(
    State(s): S,
    caller: Caller,
    q: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> ApiResult {
    caller.require_viewer()?;
    let q = query(q)?;
    let (events, writes, deliveries, publishes) = match q.kind.as_deref() {
        None => (true, true, true, true),
        Some("event") => (true, false, false, false),
        Some("write") => (false, true, false, false),
        Some("delivery") => (false, false, true, false),
        Some("publish") => (false, false, false, true),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "kind '{other}': use event, write, delivery or publish"
            )))
        }
    };
    let limit = limit(q.limit)?;
    let mut items: Vec<J> = Vec::new();
    if events {
        let rows = s
            .store
            .dead_letters(&sfsync_store::DeadLetterFilter {
                after: q.after,
                object: q.object.clone(),
                limit,
                ..Default::default()
            })
            .await
            .map_err(|e| ApiError::internal("reading the dead letters", e))?;
        items.extend(rows.iter().map(|d| {
            json!({
                "id": d.id,
                "kind": "event",
                "channel": d.channel,
                "replay_id": d.replay_id,
                "schema_id": d.schema_id,
                "stage": d.stage,
                "error": d.error,
                "object": d.object,
                "payload_bytes": d.payload_bytes,
                "created_at": ts(d.created_at_ms),
                "hint": crate::writes_ops::event_redrive_hint(d),
            })
        }));
    }
    if writes {
        let rows = crate::writes_ops::list_failed_writes(
            s.store.as_ref(),
            &crate::writes_ops::ListFilter {
                object: q.object.clone(),
                limit,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| ops_error("reading the failed writes", e))?;
        items.extend(rows.iter().map(|w| write_summary_json("write", w)));
    }
    if deliveries {
        let rows = crate::writes_ops::list_delivery_dead_letters(
            s.store.as_ref(),
            q.object.as_deref(),
            None,
            q.after,
            limit,
        )
        .await
        .map_err(|e| ops_error("reading the delivery dead letters", e))?;
        items.extend(
            rows.iter()
                .map(crate::writes_ops::delivery_dead_letter_json),
        );
    }
    if publishes {
        let rows = crate::writes_ops::list_publish_dead_letters(
            s.store.as_ref(),
            q.object.as_deref(),
            q.after,
            limit,
        )
        .await
        .map_err(|e| ops_error("reading the platform events that could not be published", e))?;
        items.extend(rows.iter().map(crate::writes_ops::publish_dead_letter_json));
    }
    ok(json!({ "dead_letters": items }))
}

/// `{kind}/{id}` of a dead-letter action.
fn dead_letter_ref(
    p: Result<Path<(String, i64)>, PathRejection>,
) -> Result<crate::writes_ops::DeadLetterRef, ApiError> {
    let Path((kind, id)) = p.map_err(ApiError::from)?;
    match kind.as_str() {
        "write" => Ok(crate::writes_ops::DeadLetterRef::Write(id)),
        "event" => Ok(crate::writes_ops::DeadLetterRef::Event(id)),
        "delivery" => Ok(crate::writes_ops::DeadLetterRef::Delivery(id)),
        "publish" => Ok(crate::writes_ops::DeadLetterRef::Publish(id)),
        other => Err(ApiError::not_found(format!(
            "no dead-letter kind '{other}' (event, write, delivery or publish)"
        ))),
    }
}

async fn dead_letter_act(
    s: &ApiState,
    caller: &Caller,
    r: crate::writes_ops::DeadLetterRef,
    redrive: bool,
    note: String,
) -> ApiResult {
    use crate::writes_ops::{ActOutcome, DeadLetterRef};
    let verb = if redrive { "redrive" } else { "discard" };
    // Checked before the audit entry: a request that cannot act is refused unrecorded (the
    // store re-checks in its transaction).
    match r {
        DeadLetterRef::Event(id) => {
            let d = crate::writes_ops::show_event_dead_letter(s.store.as_ref(), id)
                .await
                .map_err(|e| ops_error("reading the dead letter", e))?;
            return Err(ApiError::conflict(if redrive {
                crate::writes_ops::event_redrive_hint(&d)
            } else {
                "event dead letters are kept as a record and cannot be discarded".into()
            }));
        }
        DeadLetterRef::Delivery(id) => {
            let found = crate::writes_ops::delivery_dead_letter(
                s.store.as_ref(),
                id,
                sfsync_store::PiiMode::Omit,
            )
            .await
            .map_err(|e| ops_error("reading the delivery dead letter", e))?
            .ok_or_else(|| ApiError::not_found(format!("no delivery dead letter has id {id}")))?;
            audit(
                s,
                caller,
                &format!("deadletter.{verb}"),
                format!("delivery {id}"),
                json!({ "sink": found.sink, "object": found.change.object, "record_id": found.change.record_id, "note": note }),
            )
            .await?;
        }
        DeadLetterRef::Publish(id) => {
            let e = s
                .store
                .outbound_event(id)
                .await
                .map_err(|e| ApiError::internal("reading the platform event", e))?
                .ok_or_else(|| {
                    ApiError::not_found(format!("no platform event to publish has id {id}"))
                })?;
            audit(
                s,
                caller,
                &format!("deadletter.{verb}"),
                format!("publish {id}"),
                json!({ "event": e.name, "idempotency_key": e.idempotency_key, "note": note }),
            )
            .await?;
        }
        DeadLetterRef::Write(id) => {
            let w = write_or_404(s, id).await?;
            let allowed = match redrive {
                true => w.state == WriteState::Failed,
                false => matches!(w.state, WriteState::Failed | WriteState::Conflict),
            };
            if !allowed {
                return Err(ApiError::conflict(format!(
                    "write {id} is {}: only a failed write can be {}",
                    w.state.as_str(),
                    if redrive {
                        "redriven"
                    } else {
                        "discarded (or a conflicted one)"
                    }
                )));
            }
            audit(
                s,
                caller,
                &format!("deadletter.{verb}"),
                format!("write {id}"),
                json!({ "object": w.object, "source_system": w.source_system, "note": note }),
            )
            .await?;
        }
    }
    let by = format!("api:{}", caller.name);
    let done = crate::writes_ops::act(s.store.as_ref(), &[r], redrive, &by, &note)
        .await
        .map_err(|e| ops_error("acting on the dead letter", e))?
        .pop()
        .ok_or_else(|| {
            ApiError::internal(
                "acting on the dead letter",
                anyhow::anyhow!("no outcome reported"),
            )
        })?;
    match (&done.outcome, done.done) {
        (_, true) => ok(serde_json::to_value(&done).unwrap_or(J::Null)),
        (ActOutcome::Write(sfsync_store::WriteActOutcome::NotFound), _) => {
            Err(ApiError::not_found(done.message))
        }
        _ => Err(ApiError::conflict(format!("{r}: {}", done.message))),
    }
}

pub async fn redrive_dead_letter(
    State(s): S,
    caller: Caller,
    p: Result<Path<(String, i64)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    caller.require_operator("redriving a dead letter")?;
    let r = dead_letter_ref(p)?;
    let body = json_body(body)?;
    dead_letter_act(&s, &caller, r, true, note(&body)?).await
}

pub async fn discard_dead_letter(
    State(s): S,
    caller: Caller,
    p: Result<Path<(String, i64)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    caller.require_operator("discarding a dead letter")?;
    let r = dead_letter_ref(p)?;
    let body = json_body(body)?;
    dead_letter_act(&s, &caller, r, false, note(&body)?).await
}

/// One write of the ledger, or 404.
async fn write_or_404(s: &ApiState, id: i64) -> Result<LedgerWrite, ApiError> {
    s.store
        .write(id)
        .await
        .map_err(|e| ApiError::internal("reading the write", e))?
        .ok_or_else(|| ApiError::not_found(format!("no write has id {id}")))
}

// ---- conflicts ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConflictQuery {
    /// `open` (default: writes in the conflict queue) or `all` (also writes that were in
    /// conflict once and were resolved).
    state: Option<String>,
    object: Option<String>,
    limit: Option<usize>,
}

pub async fn list_conflicts(
    State(s): S,
    caller: Caller,
    q: Result<Query<ConflictQuery>, QueryRejection>,
) -> ApiResult {
    caller.require_viewer()?;
    let q = query(q)?;
    match q.state.as_deref() {
        None | Some("open") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "state '{other}': only open conflicts are listed (resolved ones are writes: GET /api/v1/writes/{{id}})"
            )))
        }
    }
    let rows = crate::writes_ops::list_conflicts(
        s.store.as_ref(),
        &crate::writes_ops::ListFilter {
            object: q.object,
            limit: limit(q.limit)?,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| ops_error("reading the conflicts", e))?;
    ok(json!({
        "conflicts": rows.iter().map(|w| write_summary_json("conflict", w)).collect::<Vec<_>>()
    }))
}

pub async fn show_conflict(
    State(s): S,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult {
    caller.require_viewer()?;
    let id = path_id(id)?;
    let view = crate::writes_ops::show_write(s.store.as_ref(), id, &s.pii)
        .await
        .map_err(|e| ops_error("reading the write", e))?;
    ok(serde_json::to_value(&view).map_err(|e| ApiError::internal("encoding", e))?)
}

pub async fn resolve_conflict(
    State(s): S,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    use sfsync_store::Resolution;
    caller.require_operator("resolving a conflict")?;
    let id = path_id(id)?;
    let body = json_body(body)?;
    let note = note(&body)?;
    if let Some(k) = body.as_object().and_then(|o| {
        o.keys()
            .find(|k| !["action", "values", "note"].contains(&k.as_str()))
    }) {
        return Err(ApiError::bad_request(format!(
            "{k}: unknown field, expected action, values, note"
        )));
    }
    let resolution = match (body.get("action").and_then(J::as_str), body.get("values")) {
        (Some("keep_salesforce"), None | Some(J::Null)) => Resolution::KeepSalesforce,
        (Some("take_writer"), None | Some(J::Null)) => Resolution::TakeWriter,
        (Some("set"), Some(J::Object(m))) if !m.is_empty() => Resolution::Value(m.clone()),
        (Some("set"), _) => {
            return Err(ApiError::bad_request(
                "values: action set needs a non-empty object of field → value",
            ))
        }
        (Some("keep_salesforce" | "take_writer"), Some(_)) => {
            return Err(ApiError::bad_request(
                "values: only action set takes values",
            ))
        }
        (Some(other), _) => {
            return Err(ApiError::bad_request(format!(
                "action '{other}': use keep_salesforce, take_writer or set"
            )))
        }
        (None, _) => {
            return Err(ApiError::bad_request(
                "action: missing (keep_salesforce, take_writer or set)",
            ))
        }
    };
    let w = write_or_404(s.as_ref(), id).await?;
    if w.state != WriteState::Conflict {
        return Err(ApiError::conflict(format!(
            "write {id} is {}, not in conflict",
            w.state.as_str()
        )));
    }
    audit(
        &s,
        &caller,
        "conflict.resolve",
        format!("write {id}"),
        // Values may be PII: the audit names the fields, not their values.
        json!({
            "object": w.object,
            "resolution": resolution.as_str(),
            "fields": match &resolution {
                Resolution::Value(m) => m.keys().cloned().collect::<Vec<_>>(),
                _ => Vec::new(),
            },
            "note": note,
        }),
    )
    .await?;
    let by = format!("api:{}", caller.name);
    let done = crate::writes_ops::resolve(s.store.as_ref(), id, &resolution, &by, &note)
        .await
        .map_err(|e| ops_error("resolving the conflict", e))?;
    ok(json!({ "resolved": done }))
}

// ---- writes ----

/// Parses one write of a batch; the reason names the field (`writes[3].record_id: …`).
fn parse_write(i: usize, source_system: &str, v: &J, s: &ApiState) -> Result<NewWrite, String> {
    let p = format!("writes[{i}]");
    let Some(o) = v.as_object() else {
        return Err(format!("{p}: must be an object"));
    };
    const KNOWN: [&str; 7] = [
        "object",
        "record_id",
        "external_id_field",
        "external_id",
        "fields",
        "seen_version_ms",
        "idempotency_key",
    ];
    if let Some(k) = o.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!(
            "{p}.{k}: unknown field, expected one of {}",
            KNOWN.join(", ")
        ));
    }
    let text = |k: &str| -> Result<Option<String>, String> {
        match o.get(k) {
            None | Some(J::Null) => Ok(None),
            Some(J::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{p}.{k}: must be a string")),
        }
    };
    let object = text("object")?.ok_or(format!("{p}.object: missing"))?;
    let idempotency_key =
        text("idempotency_key")?.ok_or(format!("{p}.idempotency_key: missing"))?;
    let target = match (
        text("record_id")?,
        text("external_id_field")?,
        text("external_id")?,
    ) {
        (Some(id), None, None) => WriteTarget::RecordId(id),
        (None, Some(field), Some(value)) => WriteTarget::ExternalId { field, value },
        (Some(_), _, _) => {
            return Err(format!(
                "{p}.record_id: give record_id or external_id_field + external_id, not both"
            ))
        }
        (None, Some(_), None) => {
            return Err(format!(
                "{p}.external_id: missing (required with external_id_field)"
            ))
        }
        (None, None, Some(_)) => {
            return Err(format!(
                "{p}.external_id_field: missing (required with external_id)"
            ))
        }
        (None, None, None) => {
            return Err(format!(
                "{p}.record_id: missing: give record_id or external_id_field + external_id"
            ))
        }
    };
    let fields = match o.get("fields") {
        Some(J::Object(m)) => m.clone(),
        None => return Err(format!("{p}.fields: missing")),
        Some(_) => return Err(format!("{p}.fields: must be an object of field → value")),
    };
    let seen_version_ms = match o.get("seen_version_ms") {
        None | Some(J::Null) => None,
        Some(v) => Some(v.as_i64().ok_or(format!(
            "{p}.seen_version_ms: must be an integer (epoch milliseconds)"
        ))?),
    };
    match s.objects.iter().find(|x| x.name == object) {
        Some(x) if x.writable => {}
        Some(_) => {
            return Err(format!(
                "{p}.object: '{object}' is not configured for writeback ([[writeback.objects]])"
            ))
        }
        None => {
            return Err(format!(
                "{p}.object: '{object}' is not a synced object ([[objects]])"
            ))
        }
    }
    let w = NewWrite {
        source_system: source_system.to_string(),
        idempotency_key,
        object,
        target,
        fields,
        seen_version_ms,
    };
    sfsync_store::validate_new_write(&w).map_err(|r| store_reason(i, &r))?;
    Ok(w)
}

/// A store validation reason (`record_id '1' is not …`) as `writes[i].record_id: '1' is not …`.
fn store_reason(i: usize, reason: &str) -> String {
    match reason.split_once(' ') {
        Some((field, rest)) => format!("writes[{i}].{field}: {rest}"),
        None => format!("writes[{i}]: {reason}"),
    }
}

pub async fn submit_writes(
    State(s): S,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    caller.require_writer()?;
    let body = json_body(body)?;
    let o = body.as_object().expect("json_body returns an object");
    if let Some(k) = o
        .keys()
        .find(|k| !["source_system", "writes"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "{k}: unknown field, expected source_system and writes"
        )));
    }
    let source_system = match o.get("source_system") {
        Some(J::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => {
            return Err(ApiError::bad_request(
                "source_system: missing or not a non-empty string",
            ))
        }
    };
    if let Some(bound) = &caller.source_system {
        if *bound != source_system {
            return Err(ApiError::forbidden(format!(
                "token '{}' may only write as source_system '{bound}', not '{source_system}'",
                caller.name
            )));
        }
    }
    let writes = match o.get("writes") {
        Some(J::Array(a)) => a,
        _ => return Err(ApiError::bad_request("writes: missing or not an array")),
    };
    if writes.is_empty() {
        return Err(ApiError::bad_request("writes: the batch is empty"));
    }
    if writes.len() > s.max_batch_writes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "writes: {} writes is over the maximum of {} per batch (api.max_batch_writes)",
                writes.len(),
                s.max_batch_writes
            ),
        ));
    }
    // Parse all, then submit the valid ones in one transaction; answers keep input order.
    let parsed: Vec<Result<NewWrite, String>> = writes
        .iter()
        .enumerate()
        .map(|(i, w)| parse_write(i, &source_system, w, &s))
        .collect();
    let valid: Vec<NewWrite> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok().cloned())
        .collect();
    let keys: Vec<&str> = valid.iter().map(|w| w.idempotency_key.as_str()).collect();
    audit(
        &s,
        &caller,
        "writes.submit",
        format!("source_system {source_system}"),
        json!({
            "writes": writes.len(),
            "valid": valid.len(),
            "idempotency_keys": keys,
        }),
    )
    .await?;
    let outcomes = if valid.is_empty() {
        Vec::new()
    } else {
        s.store
            .submit_writes(&valid)
            .await
            .map_err(|e| ApiError::internal("storing the writes", e))?
    };
    let mut outcomes = outcomes.into_iter();
    let (mut accepted, mut duplicates, mut rejected) = (0, 0, 0);
    let mut results = Vec::with_capacity(parsed.len());
    for (i, p) in parsed.into_iter().enumerate() {
        let r = match p {
            Err(reason) => {
                rejected += 1;
                json!({ "index": i, "status": "rejected", "reason": reason })
            }
            Ok(w) => match outcomes.next() {
                Some(SubmitOutcome::Accepted { id }) => {
                    accepted += 1;
                    json!({ "index": i, "status": "accepted", "id": id, "idempotency_key": w.idempotency_key })
                }
                Some(SubmitOutcome::Duplicate { id }) => {
                    duplicates += 1;
                    json!({ "index": i, "status": "duplicate", "id": id, "idempotency_key": w.idempotency_key })
                }
                Some(SubmitOutcome::Rejected { reason }) => {
                    rejected += 1;
                    json!({ "index": i, "status": "rejected", "reason": store_reason(i, &reason) })
                }
                None => {
                    return Err(ApiError::internal(
                        "storing the writes",
                        anyhow::anyhow!("the store answered fewer outcomes than writes"),
                    ))
                }
            },
        };
        results.push(r);
    }
    let status = if rejected > 0 {
        StatusCode::MULTI_STATUS
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({
            "source_system": source_system,
            "accepted": accepted,
            "duplicates": duplicates,
            "rejected": rejected,
            "results": results,
        })),
    )
        .into_response())
}

/// A write as JSON, PII fields of its object masked.
fn write_json(w: &LedgerWrite, s: &ApiState) -> J {
    let pii = s
        .objects
        .iter()
        .find(|o| o.name == w.object)
        .map(|o| o.pii_fields.as_slice())
        .unwrap_or(&[]);
    let mut fields = serde_json::from_str::<J>(&w.fields).unwrap_or(J::String(w.fields.clone()));
    if let J::Object(m) = &mut fields {
        for (k, v) in m.iter_mut() {
            if pii.iter().any(|p| p.eq_ignore_ascii_case(k)) && !v.is_null() {
                *v = J::String(MASK.into());
            }
        }
    }
    let reason = match (&w.reason, w.state) {
        (Some(r), WriteState::Conflict) => ConflictDetail::parse(r)
            .and_then(|d| serde_json::to_value(d).ok())
            .unwrap_or(J::String(r.clone())),
        (Some(r), _) => J::String(r.clone()),
        (None, _) => J::Null,
    };
    json!({
        "id": w.id,
        "source_system": w.source_system,
        "idempotency_key": w.idempotency_key,
        "origin": w.origin.as_str(),
        "object": w.object,
        "record_id": w.record_id,
        "external_id_field": w.external_id_field,
        "external_id": w.external_id,
        "fields": fields,
        "seen_version_ms": w.seen_version_ms,
        "state": w.state.as_str(),
        "attempts": w.attempts,
        "last_error": w.last_error,
        "reason": reason,
        "created_at": ts(w.created_at_ms),
        "updated_at": ts(w.updated_at_ms),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritesQuery {
    /// One state or several, comma-separated.
    state: Option<String>,
    object: Option<String>,
    source_system: Option<String>,
    limit: Option<usize>,
}

/// A writer token reads only its own system's writes.
fn visible_to(caller: &Caller, w: &LedgerWrite) -> bool {
    caller.role != ApiRole::Writer || caller.source_system.as_deref() == Some(&w.source_system)
}

pub async fn list_writes(
    State(s): S,
    caller: Caller,
    q: Result<Query<WritesQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let mut states = Vec::new();
    for part in q
        .state
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|p| !p.is_empty())
    {
        states.push(WriteState::parse(part).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state '{part}': use pending, sent, applied, confirmed, conflict, rejected or failed"
            ))
        })?);
    }
    let source_system = if caller.role == ApiRole::Writer {
        match (&caller.source_system, &q.source_system) {
            (Some(b), Some(asked)) if b != asked => {
                return Err(ApiError::forbidden(format!(
                    "token '{}' may only read the writes of source_system '{b}'",
                    caller.name
                )))
            }
            (b, _) => b.clone(),
        }
    } else {
        q.source_system
    };
    let ws = s
        .store
        .writes(&WriteFilter {
            states,
            object: q.object,
            source_system,
            newest_first: true,
            limit: limit(q.limit)?,
            ..Default::default()
        })
        .await
        .map_err(|e| ApiError::internal("reading the writes", e))?;
    ok(json!({
        "writes": ws.iter().filter(|w| visible_to(&caller, w)).map(|w| write_json(w, &s)).collect::<Vec<_>>()
    }))
}

pub async fn show_write(
    State(s): S,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult {
    let id = path_id(id)?;
    let missing = || ApiError::not_found(format!("write {id} does not exist"));
    let w = s
        .store
        .write(id)
        .await
        .map_err(|e| ApiError::internal("reading the write", e))?
        .ok_or_else(missing)?;
    if !visible_to(&caller, &w) {
        return Err(missing());
    }
    let transitions = s
        .store
        .write_transitions(id)
        .await
        .map_err(|e| ApiError::internal("reading the write's transitions", e))?;
    let mut out = write_json(&w, &s);
    out["transitions"] = transitions
        .iter()
        .map(|t| {
            json!({
                "from": t.from.map(|f| f.as_str()),
                "to": t.to.as_str(),
                "at": ts(t.at_ms),
                "detail": t.detail,
            })
        })
        .collect();
    ok(out)
}
