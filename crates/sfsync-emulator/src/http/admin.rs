//! The emulator's admin API under `/admin/…` (JSON), used by tests and the CLI to drive the org:
//! reset, seed, drift (changes the CDC stream never reports), snapshot, stats, fault injection,
//! forced token expiry, session timeout, limits and schema changes.
//!
//! Guarantees: every call needs `Authorization: Bearer <admin_token>` (the `admin_token` of
//! `credentials.json`) and is refused with 401 `INVALID_SESSION_ID` otherwise; admin calls are
//! never counted against the org's API allocation and never hit injected faults. Bad input is
//! answered with 400 in Salesforce's error shape, naming what is wrong. The snapshot is
//! streamed (`application/x-ndjson`) so a large org is never held as one string in memory.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sfsync_org::{ApiKind, CallContext, Drift, FieldDef};

use crate::auth::bearer_token;
use crate::config::LimitsConfig;
use crate::faults::FaultConfig;
use crate::http::error::ApiError;
use crate::http::rest::{blocking, json_kind, method_not_allowed, parse_json_body};
use crate::http::MAX_API_VERSION;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/reset", post(reset))
        .route("/admin/seed", post(seed))
        .route("/admin/drift", post(drift))
        .route("/admin/snapshot", get(snapshot))
        .route("/admin/stats", get(stats))
        .route("/admin/faults", get(get_faults).put(put_faults))
        .route("/admin/expire-tokens", post(expire_tokens))
        .route("/admin/session-timeout", put(session_timeout))
        .route("/admin/limits", get(get_limits).put(put_limits))
        .route("/admin/objects/{obj}/fields", post(add_field))
        .method_not_allowed_fallback(method_not_allowed)
}

/// Proof that the caller presented the admin token (axum extractor).
pub struct Admin;

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let expected = state.admin_token.as_bytes();
        match bearer_token(&parts.headers) {
            Some(t) if !expected.is_empty() && constant_time_eq(t.as_bytes(), expected) => Ok(Admin),
            _ => Err(ApiError::new(
                401,
                "INVALID_SESSION_ID",
                "Admin token missing or invalid: send 'Authorization: Bearer <admin_token>' from credentials.json",
            )),
        }
    }
}

/// Parses a JSON body into `T`; malformed → 400 `JSON_PARSER_ERROR` with serde's message.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(ApiError::bad_json)
}

fn admin_context(state: &AppState) -> CallContext {
    CallContext {
        user_id: state.auth.admin().user_id,
        api: ApiKind::Admin,
        api_version: format!("{MAX_API_VERSION}.0"),
        client: None,
    }
}

async fn reset(_admin: Admin, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let org = state.org.clone();
    blocking(move || org.reset()).await?;
    state.limits.reset_usage();
    Ok(Json(json!({"reset": true})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedRequest {
    /// Object → number of records, in the order to seed them (parents before children).
    objects: serde_json::Map<String, Value>,
    #[serde(default)]
    seed: u64,
    /// Share (0–100) of the records with their long text fields filled (default 100).
    #[serde(default = "all_records")]
    long_text_percent: u8,
}

fn all_records() -> u8 {
    100
}

async fn seed(
    _admin: Admin,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: SeedRequest = parse(&body)?;
    let mut plan = Vec::with_capacity(req.objects.len());
    for (object, count) in &req.objects {
        let n = count.as_u64().ok_or_else(|| {
            ApiError::new(
                400,
                "INVALID_INPUT",
                format!("objects.{object} must be a non-negative integer, found {count}"),
            )
        })?;
        let name = crate::http::rest::object_def(&state, object)?.name;
        let n = usize::try_from(n).map_err(|_| {
            ApiError::new(
                400,
                "INVALID_INPUT",
                format!("objects.{object} is too large"),
            )
        })?;
        plan.push((name, n));
    }
    let org = state.org.clone();
    let ctx = admin_context(&state);
    let seed = req.seed;
    let long_text_percent = req.long_text_percent;
    if long_text_percent > 100 {
        return Err(ApiError::new(
            400,
            "INVALID_INPUT",
            format!("long_text_percent must be 0–100, found {long_text_percent}"),
        ));
    }
    let created = blocking(
        move || -> Result<serde_json::Map<String, Value>, ApiError> {
            let mut created = serde_json::Map::new();
            for (i, (object, n)) in plan.into_iter().enumerate() {
                // A different stream per object so Account and Contact do not share names.
                let ids = org.seed_with(
                    &ctx,
                    &object,
                    n,
                    seed.wrapping_add(i as u64),
                    long_text_percent,
                )?;
                created.insert(object, json!(ids.len()));
            }
            Ok(created)
        },
    )
    .await??;
    Ok(Json(json!({"created": created})))
}

fn invalid_input(msg: impl Into<String>) -> ApiError {
    ApiError::new(400, "INVALID_INPUT", msg)
}

/// The body of `POST /admin/drift`, checked key by key so every refusal names the key:
/// `{"action": "silent_update" | "silent_delete" | "purge", "object": "Account",
/// "ids": ["001…", …], "fields": {…}}` (`fields` with `silent_update` only).
fn drift_request(body: &[u8]) -> Result<(String, Vec<String>, Drift), ApiError> {
    let Value::Object(mut m) = parse_json_body(body)? else {
        return Err(invalid_input("The body must be a JSON object"));
    };
    if let Some(k) = m
        .keys()
        .find(|k| !["action", "object", "ids", "fields"].contains(&k.as_str()))
    {
        return Err(invalid_input(format!(
            "{k}: unknown key (expected action, object, ids and, for silent_update, fields)"
        )));
    }
    let text = |m: &serde_json::Map<String, Value>, key: &str| match m.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(invalid_input(format!(
            "{key} must be a string, found {}",
            json_kind(other)
        ))),
        None => Err(invalid_input(format!("{key} is required"))),
    };
    let action = text(&m, "action")?;
    let object = text(&m, "object")?;
    let ids = match m.remove("ids") {
        Some(Value::Array(a)) => a
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                other => Err(invalid_input(format!(
                    "ids[{i}] must be a record id string, found {}",
                    json_kind(&other)
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(invalid_input(format!(
                "ids must be an array of record ids, found {}",
                json_kind(&other)
            )))
        }
        None => return Err(invalid_input("ids is required")),
    };
    let fields = match m.remove("fields") {
        Some(Value::Object(f)) => Some(f),
        Some(other) => {
            return Err(invalid_input(format!(
                "fields must be an object of field → value, found {}",
                json_kind(&other)
            )))
        }
        None => None,
    };
    let drift = match (action.as_str(), fields) {
        ("silent_update", Some(f)) => Drift::SilentUpdate(f),
        ("silent_update", None) => {
            return Err(invalid_input(
                "fields is required for silent_update (an object of field → value)",
            ))
        }
        ("silent_delete" | "purge", Some(_)) => {
            return Err(invalid_input(format!(
                "fields is only allowed with silent_update, not {action}"
            )))
        }
        ("silent_delete", None) => Drift::SilentDelete,
        ("purge", None) => Drift::Purge,
        (other, _) => {
            return Err(invalid_input(format!(
                "action {other:?} is unknown (expected silent_update, silent_delete or purge)"
            )))
        }
    };
    Ok((object, ids, drift))
}

/// `POST /admin/drift`: changes records without a change event (see `sfsync_org::drift`):
/// `silent_update` (values plus LastModifiedDate, LastModifiedById and SystemModstamp, validated
/// like a REST update), `silent_delete` (to the recycle bin) or `purge` (gone, also from
/// queryAll). All or nothing; journalled with persistence. Answers
/// `{"affected": N, "ids": [...]}` (the distinct ids changed, 18 characters, in request order).
async fn drift(
    _admin: Admin,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (object, ids, drift) = drift_request(&body)?;
    let object = crate::http::rest::object_def(&state, &object)?.name;
    let org = state.org.clone();
    let ctx = admin_context(&state);
    let ids = blocking(move || org.drift(&ctx, &object, &ids, &drift)).await??;
    Ok(Json(json!({"affected": ids.len(), "ids": ids})))
}

/// Forwards what the blocking snapshot writer produces, in 256 KiB chunks, to the response.
struct ChannelWriter {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
}

const SNAPSHOT_CHUNK: usize = 256 * 1024;

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= SNAPSHOT_CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

async fn snapshot(_admin: Admin, State(state): State<AppState>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let org = state.org.clone();
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            buf: Vec::with_capacity(SNAPSHOT_CHUNK),
            tx: tx.clone(),
        };
        let result = org
            .snapshot_jsonl(&mut w)
            .and_then(|_| std::io::Write::flush(&mut w));
        if let Err(e) = result {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                tracing::warn!(error = %e, "Writing the org snapshot failed");
                // Ends the body with an error so the client sees a truncated transfer.
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn stats(_admin: Admin, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let org = state.org.clone();
    let org_stats = blocking(move || org.stats()).await?;
    let (used, max) = state.limits.api_usage();
    Ok(Json(json!({
        "org": org_stats,
        "api_requests": {"used": used, "max": max},
        "refused_requests": state.limits.refused(),
        "sessions": state.auth.session_count(),
    })))
}

async fn get_faults(_admin: Admin, State(state): State<AppState>) -> Json<FaultConfig> {
    Json(state.faults.get())
}

async fn put_faults(
    _admin: Admin,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<FaultConfig>, ApiError> {
    let config: FaultConfig = parse(&body)?;
    config
        .validate()
        .map_err(|m| ApiError::new(400, "INVALID_INPUT", m))?;
    state.faults.set(config);
    Ok(Json(state.faults.get()))
}

async fn expire_tokens(_admin: Admin, State(state): State<AppState>) -> Json<Value> {
    let n = state.auth.expire_all();
    Json(json!({"expired": n}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionTimeout {
    seconds: u64,
}

async fn session_timeout(
    _admin: Admin,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: SessionTimeout = parse(&body)?;
    state.auth.set_timeout(Duration::from_secs(req.seconds));
    Ok(Json(json!({"seconds": req.seconds})))
}

/// `LimitsConfig` as the admin API shows it.
#[derive(Debug, Serialize)]
struct LimitsView {
    daily_api_requests: u64,
    concurrent_long_running: u64,
    daily_bulk_batches: u64,
    daily_bulk_query_jobs: u64,
    daily_bulk_ingest_records: u64,
    long_running_threshold_ms: u64,
    api_window_ms: u64,
    hourly_published_platform_events: u64,
    publish_window_ms: u64,
    /// Events published in the current publish window, and events refused for it so far.
    published_events: u64,
    publish_refused: u64,
}

impl From<&LimitsConfig> for LimitsView {
    fn from(c: &LimitsConfig) -> LimitsView {
        LimitsView {
            daily_api_requests: c.daily_api_requests,
            concurrent_long_running: c.concurrent_long_running,
            daily_bulk_batches: c.daily_bulk_batches,
            daily_bulk_query_jobs: c.daily_bulk_query_jobs,
            daily_bulk_ingest_records: c.daily_bulk_ingest_records,
            long_running_threshold_ms: u64::try_from(c.long_running_threshold.as_millis())
                .unwrap_or(u64::MAX),
            api_window_ms: u64::try_from(c.api_window.as_millis()).unwrap_or(u64::MAX),
            hourly_published_platform_events: c.hourly_published_platform_events,
            publish_window_ms: u64::try_from(c.publish_window.as_millis()).unwrap_or(u64::MAX),
            published_events: 0,
            publish_refused: 0,
        }
    }
}

/// A partial update: only the given allocations change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsUpdate {
    daily_api_requests: Option<u64>,
    concurrent_long_running: Option<u64>,
    daily_bulk_batches: Option<u64>,
    daily_bulk_query_jobs: Option<u64>,
    daily_bulk_ingest_records: Option<u64>,
    long_running_threshold_ms: Option<u64>,
    /// Rolling window of the API request allocation; changing it starts a fresh count.
    api_window_ms: Option<u64>,
    hourly_published_platform_events: Option<u64>,
    /// Rolling window of the publish allocation; changing it starts a fresh count.
    publish_window_ms: Option<u64>,
}

fn limits_view(state: &AppState) -> LimitsView {
    let mut v = LimitsView::from(&state.limits.config());
    let (used, _, refused) = state.limits.publish_usage();
    v.published_events = used;
    v.publish_refused = refused;
    v
}

async fn get_limits(_admin: Admin, State(state): State<AppState>) -> Json<LimitsView> {
    Json(limits_view(&state))
}

async fn put_limits(
    _admin: Admin,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<LimitsView>, ApiError> {
    let u: LimitsUpdate = parse(&body)?;
    let mut c = state.limits.config();
    if let Some(v) = u.daily_api_requests {
        c.daily_api_requests = v;
    }
    if let Some(v) = u.concurrent_long_running {
        c.concurrent_long_running = v;
    }
    if let Some(v) = u.daily_bulk_batches {
        c.daily_bulk_batches = v;
    }
    if let Some(v) = u.daily_bulk_query_jobs {
        c.daily_bulk_query_jobs = v;
    }
    if let Some(v) = u.daily_bulk_ingest_records {
        c.daily_bulk_ingest_records = v;
    }
    if let Some(v) = u.long_running_threshold_ms {
        c.long_running_threshold = Duration::from_millis(v);
    }
    if let Some(v) = u.api_window_ms {
        if v == 0 {
            return Err(ApiError::new(
                400,
                "INVALID_INPUT",
                "api_window_ms must be at least 1",
            ));
        }
        c.api_window = Duration::from_millis(v);
    }
    if let Some(v) = u.hourly_published_platform_events {
        c.hourly_published_platform_events = v;
    }
    if let Some(v) = u.publish_window_ms {
        if v == 0 {
            return Err(ApiError::new(
                400,
                "INVALID_INPUT",
                "publish_window_ms must be at least 1",
            ));
        }
        c.publish_window = Duration::from_millis(v);
    }
    state.limits.set_config(c);
    Ok(Json(limits_view(&state)))
}

async fn add_field(
    _admin: Admin,
    State(state): State<AppState>,
    Path(obj): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Parse as a value first so a body that is not JSON and a body that is not a field
    // definition get distinct messages.
    let value = parse_json_body(&body)?;
    let field: FieldDef = serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            400,
            "INVALID_INPUT",
            format!("The body is not a field definition: {e}"),
        )
    })?;
    let object = crate::http::rest::object_def(&state, &obj)?.name;
    let name = field.name.clone();
    let org = state.org.clone();
    let target = object.clone();
    blocking(move || org.add_field(&target, field)).await??;
    Ok((
        StatusCode::CREATED,
        Json(json!({"object": object, "field": name})),
    )
        .into_response())
}
