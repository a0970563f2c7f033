//! The REST API resources under `/services/data`: version discovery, the resource map, `/limits`,
//! describe (global, basic, full), single-record CRUD, upsert and retrieval by external id, SOQL
//! (`query`, `queryAll`) with server-side cursors, and the `updated`/`deleted` replication helpers.
//!
//! Guarantees: every DML call is exactly one org transaction (one [`Org::execute`] call);
//! every error is answered in Salesforce's shape (a JSON array of `{message, errorCode, fields}`)
//! with the status Salesforce uses, and no client input can panic a handler. Query pages are cut
//! from one consistent result computed when the query ran, so paging with `nextRecordsUrl` never
//! skips or repeats a row; a cursor unused for 15 minutes (or evicted because too many are open)
//! answers `INVALID_QUERY_LOCATOR`.
//!
//! [`Org::execute`]: sfsync_org::Org::execute

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::Mutex;
use serde_json::{json, Value};
use sfsync_core::SfId;
use sfsync_org::{ApiKind, DmlOp, DmlOutcome, DmlResult, Fields, ObjectDef, QueryResult, SfError};

use crate::auth::Session;
use crate::http::error::ApiError;
use crate::http::{api_version, MAX_API_VERSION, MIN_API_VERSION};
use crate::state::AppState;

/// Default (and maximum) SOQL page size; `Sforce-Query-Options: batchSize=N` is clamped to
/// `MIN_BATCH_SIZE..=MAX_BATCH_SIZE`.
pub const MAX_BATCH_SIZE: usize = 2000;
pub const MIN_BATCH_SIZE: usize = 200;
/// A query cursor expires after this much inactivity.
pub const CURSOR_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// At most this many open cursors per emulator; the least recently used one is dropped first.
pub const MAX_OPEN_CURSORS: usize = 100;
/// Largest accepted request body (axum's 2 MB default is too small for 200 wide records).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The REST routes (full paths; trailing slashes are stripped before routing).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/services/data", get(versions))
        .route("/services/data/{v}", get(resources))
        .route("/services/data/{v}/limits", get(limits))
        .route("/services/data/{v}/sobjects", get(global_describe))
        .route(
            "/services/data/{v}/sobjects/{obj}",
            get(basic_info).post(create),
        )
        .route("/services/data/{v}/sobjects/{obj}/describe", get(describe))
        .route("/services/data/{v}/sobjects/{obj}/updated", get(updated))
        .route("/services/data/{v}/sobjects/{obj}/deleted", get(deleted))
        .route(
            "/services/data/{v}/sobjects/{obj}/{id}",
            get(retrieve).patch(update).delete(delete),
        )
        .route(
            "/services/data/{v}/sobjects/{obj}/{field}/{value}",
            get(retrieve_by_external_id)
                .patch(upsert)
                .delete(delete_by_external_id),
        )
        .route("/services/data/{v}/query", get(query))
        .route("/services/data/{v}/queryAll", get(query_all))
        .route("/services/data/{v}/query/{locator}", get(query_more))
        .route("/services/data/{v}/queryAll/{locator}", get(query_all_more))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// 405 in Salesforce's shape.
pub(crate) async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        405,
        "METHOD_NOT_ALLOWED",
        format!("HTTP Method '{method}' not allowed for this resource"),
    )
}

// ---------------------------------------------------------------------------------------------
// Shared helpers (also used by Composite and admin).

/// Runs blocking org work off the async workers. A panic inside becomes a 500
/// `UNKNOWN_EXCEPTION` instead of taking the connection down.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "An org operation panicked");
        ApiError::new(
            500,
            "UNKNOWN_EXCEPTION",
            "An unexpected error occurred. Please include this ErrorId if you contact support: emulator-panic",
        )
    })
}

/// Parses a request body that must be one JSON object (a record); drops its `attributes`.
pub(crate) fn parse_record_body(body: &[u8]) -> Result<Fields, ApiError> {
    match parse_json_body(body)? {
        Value::Object(mut m) => {
            m.remove("attributes");
            Ok(m)
        }
        other => Err(ApiError::bad_json(format!(
            "expected a JSON object, found {}",
            json_kind(&other)
        ))),
    }
}

/// Parses any JSON body; malformed → 400 `JSON_PARSER_ERROR` with the parser's message.
pub(crate) fn parse_json_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(ApiError::bad_json)
}

pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The object definition for a name in the URL (case-insensitive); unknown → 404 `NOT_FOUND`.
pub(crate) fn object_def(state: &AppState, name: &str) -> Result<ObjectDef, ApiError> {
    state
        .org
        .schema()
        .object(name)
        .cloned()
        .ok_or_else(|| ApiError::from(SfError::invalid_type(name)))
}

/// `/services/data/vNN.N/sobjects/Object/id`.
pub(crate) fn record_url(version: &str, object: &str, id: &str) -> String {
    format!("/services/data/v{version}/sobjects/{object}/{id}")
}

pub(crate) fn ext_id_not_found(what: &str) -> SfError {
    SfError::new(
        404,
        "NOT_FOUND",
        format!("Provided external ID field does not exist or is not accessible: {what}"),
    )
}

/// Checks an id from the URL against the object: an id-shaped value of another object's key
/// prefix is 404 `NOT_FOUND`; a value that is not an id at all is Salesforce's external-id 404.
fn check_record_id(object: &ObjectDef, id: &str) -> Result<(), ApiError> {
    match SfId::parse(id) {
        Ok(parsed) if parsed.key_prefix() == object.key_prefix => Ok(()),
        Ok(_) => Err(ApiError::not_found()),
        Err(_) => Err(ApiError::from(ext_id_not_found(id))),
    }
}

/// Resolves an external id field of `object` (or `Id`); anything else is 404 `NOT_FOUND`.
pub(crate) fn external_id_field(object: &ObjectDef, field: &str) -> Result<String, ApiError> {
    match object.field(field) {
        Some(f) if f.external_id || f.name == "Id" => Ok(f.name.clone()),
        _ => Err(ApiError::from(ext_id_not_found(field))),
    }
}

/// What a prepared single-record DML answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DmlKind {
    Create,
    Update,
    Delete,
    Upsert,
}

/// One single-record REST DML, validated and ready for [`sfsync_org::Org::execute`].
#[derive(Debug, Clone)]
pub(crate) struct PreparedDml {
    pub kind: DmlKind,
    pub object: String,
    pub op: DmlOp,
}

/// `POST /sobjects/{obj}`.
pub(crate) fn prepare_create(
    state: &AppState,
    obj: &str,
    body: &[u8],
) -> Result<PreparedDml, ApiError> {
    let object = object_def(state, obj)?;
    let fields = parse_record_body(body)?;
    Ok(PreparedDml {
        kind: DmlKind::Create,
        object: object.name.clone(),
        op: DmlOp::Insert {
            object: object.name,
            fields,
        },
    })
}

/// `PATCH /sobjects/{obj}/{id}`.
pub(crate) fn prepare_update(
    state: &AppState,
    obj: &str,
    id: &str,
    body: &[u8],
) -> Result<PreparedDml, ApiError> {
    let object = object_def(state, obj)?;
    check_record_id(&object, id)?;
    let fields = parse_record_body(body)?;
    Ok(PreparedDml {
        kind: DmlKind::Update,
        object: object.name.clone(),
        op: DmlOp::Update {
            object: object.name,
            id: id.to_string(),
            fields,
        },
    })
}

/// `DELETE /sobjects/{obj}/{id}`.
pub(crate) fn prepare_delete(
    state: &AppState,
    obj: &str,
    id: &str,
) -> Result<PreparedDml, ApiError> {
    let object = object_def(state, obj)?;
    check_record_id(&object, id)?;
    Ok(PreparedDml {
        kind: DmlKind::Delete,
        object: object.name,
        op: DmlOp::Delete { id: id.to_string() },
    })
}

/// `PATCH /sobjects/{obj}/{extField}/{value}` (without `updateOnly`).
pub(crate) fn prepare_upsert(
    state: &AppState,
    obj: &str,
    field: &str,
    value: &str,
    body: &[u8],
) -> Result<PreparedDml, ApiError> {
    let object = object_def(state, obj)?;
    let field = external_id_field(&object, field)?;
    let fields = parse_record_body(body)?;
    Ok(PreparedDml {
        kind: DmlKind::Upsert,
        object: object.name.clone(),
        op: DmlOp::Upsert {
            object: object.name,
            external_id_field: field,
            external_id: value.to_string(),
            fields,
        },
    })
}

/// The single-record REST answer for one DML result: `(status, body)`; `None` = no body (204).
pub(crate) fn dml_response(
    kind: DmlKind,
    version: &str,
    object: &str,
    result: DmlResult,
) -> (StatusCode, Option<Value>) {
    match result {
        Ok(outcome) => {
            let id = outcome.id();
            match kind {
                DmlKind::Create => (
                    StatusCode::CREATED,
                    Some(json!({"id": id.as_str(), "success": true, "errors": []})),
                ),
                DmlKind::Upsert => {
                    let created = matches!(outcome, DmlOutcome::Created(_));
                    let status = if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    (
                        status,
                        Some(
                            json!({"id": id.as_str(), "success": true, "errors": [], "created": created}),
                        ),
                    )
                }
                DmlKind::Update | DmlKind::Delete => (StatusCode::NO_CONTENT, None),
            }
        }
        Err(errors) => {
            let (status, body) = errors_response(version, object, &errors);
            (status, Some(body))
        }
    }
}

/// Errors as a REST answer. An external id that matched several records is 300 with the
/// matching records' URLs, as Salesforce answers it.
pub(crate) fn errors_response(
    version: &str,
    object: &str,
    errors: &[SfError],
) -> (StatusCode, Value) {
    if let Some(multi) = errors.iter().find(|e| e.status == 300) {
        let urls: Vec<String> = multi
            .matched_ids
            .iter()
            .map(|id| record_url(version, object, id))
            .collect();
        return (StatusCode::MULTIPLE_CHOICES, json!(urls));
    }
    let status = errors
        .first()
        .and_then(|e| StatusCode::from_u16(e.status).ok())
        .unwrap_or(StatusCode::BAD_REQUEST);
    let body: Vec<Value> = errors.iter().map(SfError::to_json).collect();
    let body = if body.is_empty() {
        json!([{"message": "An unexpected error occurred.", "errorCode": "UNKNOWN_EXCEPTION", "fields": []}])
    } else {
        Value::Array(body)
    };
    (status, body)
}

pub(crate) fn to_response(status: StatusCode, body: Option<Value>) -> Response {
    match body {
        Some(b) => (status, Json(b)).into_response(),
        None => status.into_response(),
    }
}

/// Runs one prepared DML as its own transaction.
pub(crate) async fn run_one(
    state: &AppState,
    ctx: sfsync_org::CallContext,
    op: DmlOp,
) -> Result<DmlResult, ApiError> {
    let org = state.org.clone();
    let mut results = blocking(move || org.execute(&ctx, vec![op], false)).await?;
    Ok(results.pop().unwrap_or_else(|| {
        Err(vec![SfError::new(
            500,
            "UNKNOWN_EXCEPTION",
            "The org returned no result for the operation",
        )])
    }))
}

async fn run_prepared(
    state: &AppState,
    session: &Session,
    version: &str,
    headers: &HeaderMap,
    p: PreparedDml,
) -> Result<Response, ApiError> {
    let ctx = session.call_context(ApiKind::Rest, version, headers);
    let result = run_one(state, ctx, p.op).await?;
    let (status, body) = dml_response(p.kind, version, &p.object, result);
    Ok(to_response(status, body))
}

// ---------------------------------------------------------------------------------------------
// Discovery, limits, describe.

/// The release name of API version `major` (v50.0 = Winter '21, three releases a year).
pub fn release_label(major: u32) -> String {
    let n = major.saturating_sub(50);
    let season = ["Winter", "Spring", "Summer"][(n % 3) as usize];
    format!("{season} '{:02}", 21 + n / 3)
}

async fn versions() -> Json<Value> {
    let list: Vec<Value> = (MIN_API_VERSION..=MAX_API_VERSION)
        .map(|m| {
            json!({
                "label": release_label(m),
                "url": format!("/services/data/v{m}.0"),
                "version": format!("{m}.0"),
            })
        })
        .collect();
    Json(Value::Array(list))
}

async fn resources(_session: Session, Path(v): Path<String>) -> Result<Json<Value>, ApiError> {
    let version = api_version(&v)?;
    let base = format!("/services/data/v{version}");
    let mut map = serde_json::Map::new();
    for name in [
        "sobjects",
        "query",
        "queryAll",
        "limits",
        "composite",
        "jobs",
        "jobs/ingest",
        "jobs/query",
    ] {
        map.insert(name.to_string(), Value::String(format!("{base}/{name}")));
    }
    Ok(Json(Value::Object(map)))
}

async fn limits(
    _session: Session,
    State(state): State<AppState>,
    Path(v): Path<String>,
) -> Result<Json<Value>, ApiError> {
    api_version(&v)?;
    Ok(Json(state.limits.limits_json(&state.cdc.limits_extra())))
}

async fn global_describe(
    _session: Session,
    State(state): State<AppState>,
    Path(v): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let version = api_version(&v)?;
    let schema = state.org.schema();
    Ok(Json(sfsync_org::describe::global(&schema, &version)))
}

async fn basic_info(
    _session: Session,
    State(state): State<AppState>,
    Path((v, obj)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let version = api_version(&v)?;
    let object = object_def(&state, &obj)?;
    Ok(Json(sfsync_org::describe::basic(&object, &version)))
}

async fn describe(
    _session: Session,
    State(state): State<AppState>,
    Path((v, obj)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let version = api_version(&v)?;
    let schema = state.org.schema();
    let object = schema
        .object(&obj)
        .ok_or_else(|| ApiError::from(SfError::invalid_type(&obj)))?;
    Ok(Json(sfsync_org::describe::object(
        object, &schema, &version,
    )))
}

// ---------------------------------------------------------------------------------------------
// Records.

async fn create(
    session: Session,
    State(state): State<AppState>,
    Path((v, obj)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let version = api_version(&v)?;
    if obj.ends_with("__e") {
        return publish_event(&session, &state, &obj, &body);
    }
    let p = prepare_create(&state, &obj, &body)?;
    run_prepared(&state, &session, &version, &headers, p).await
}

/// `POST /sobjects/<Name>__e`: publishes one platform event (as Apex, Flow or an integration
/// would inside the org), taking one from the hourly publish allocation. 201
/// `{"id", "success": true, "errors": []}`; an unknown event is `NOT_FOUND`, a bad field
/// `INVALID_FIELD`, an exhausted allocation `LIMIT_EXCEEDED` (nothing published).
fn publish_event(
    session: &Session,
    state: &AppState,
    name: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    if state.cdc.platform_schema(name).is_none() {
        return Err(SfError::invalid_type(name).into());
    }
    let fields = parse_record_body(body)?;
    // Validate before taking the allocation: a refused event must not use it up.
    let schema = state.cdc.platform_schema(name).expect("checked above");
    if let Some(k) = fields
        .keys()
        .find(|k| !schema.fields.iter().any(|f| f.name() == k.as_str()))
    {
        return Err(ApiError::new(
            400,
            "INVALID_FIELD",
            format!("No such column '{k}' on sobject of type {name}"),
        ));
    }
    state.limits.take_published_event()?;
    let (id, _replay) = state
        .cdc
        .publish_fields(name, &fields, session.user_id.as_str())
        .map_err(|e| ApiError::new(400, "INVALID_FIELD", e))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "success": true, "errors": []})),
    )
        .into_response())
}

pub(crate) fn fields_param(params: &HashMap<String, String>) -> Option<Vec<String>> {
    params.get("fields").map(|f| {
        f.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    })
}

async fn retrieve_record(
    state: &AppState,
    object: &str,
    id: &str,
    fields: Option<Vec<String>>,
    version: &str,
) -> Result<Fields, ApiError> {
    let org = state.org.clone();
    let (object, id, version) = (object.to_string(), id.to_string(), version.to_string());
    blocking(move || org.retrieve(&object, &id, fields.as_deref(), &version))
        .await?
        .map_err(ApiError::from)
}

async fn retrieve(
    _session: Session,
    State(state): State<AppState>,
    Path((v, obj, id)): Path<(String, String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let version = api_version(&v)?;
    let object = object_def(&state, &obj)?;
    check_record_id(&object, &id)?;
    // A single-record read under the org's read lock takes microseconds: it runs inline (no
    // blocking-pool hand-off) and is rendered straight to JSON bytes.
    let fields = fields_param(&params);
    let body = state
        .org
        .retrieve_json(&object.name, &id, fields.as_deref(), &version)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

async fn update(
    session: Session,
    State(state): State<AppState>,
    Path((v, obj, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let version = api_version(&v)?;
    let p = prepare_update(&state, &obj, &id, &body)?;
    run_prepared(&state, &session, &version, &headers, p).await
}

async fn delete(
    session: Session,
    State(state): State<AppState>,
    Path((v, obj, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let version = api_version(&v)?;
    let p = prepare_delete(&state, &obj, &id)?;
    run_prepared(&state, &session, &version, &headers, p).await
}

/// Ids of live records of `object` whose external id `field` equals `value`.
async fn find_external(
    state: &AppState,
    object: &str,
    field: &str,
    value: &str,
) -> Result<Vec<SfId>, ApiError> {
    let org = state.org.clone();
    let (object, field, value) = (object.to_string(), field.to_string(), value.to_string());
    blocking(move || org.find_by_external_id(&object, &field, &value))
        .await?
        .map_err(ApiError::from)
}

fn multiple_matches(version: &str, object: &str, ids: &[SfId]) -> Response {
    let urls: Vec<String> = ids
        .iter()
        .map(|id| record_url(version, object, id.as_str()))
        .collect();
    (StatusCode::MULTIPLE_CHOICES, Json(json!(urls))).into_response()
}

async fn retrieve_by_external_id(
    _session: Session,
    State(state): State<AppState>,
    Path((v, obj, field, value)): Path<(String, String, String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let version = api_version(&v)?;
    let object = object_def(&state, &obj)?;
    let field = external_id_field(&object, &field)?;
    let ids = find_external(&state, &object.name, &field, &value).await?;
    match ids.as_slice() {
        [] => Err(ApiError::not_found()),
        [id] => {
            let record = retrieve_record(
                &state,
                &object.name,
                id.as_str(),
                fields_param(&params),
                &version,
            )
            .await?;
            Ok(Json(Value::Object(record)).into_response())
        }
        many => Ok(multiple_matches(&version, &object.name, many)),
    }
}

pub(crate) fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

async fn upsert(
    session: Session,
    State(state): State<AppState>,
    Path((v, obj, field, value)): Path<(String, String, String, String)>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let version = api_version(&v)?;
    let p = prepare_upsert(&state, &obj, &field, &value, &body)?;
    if !flag(&params, "updateOnly") {
        return run_prepared(&state, &session, &version, &headers, p).await;
    }
    // updateOnly: never insert; a missing record is 404.
    let DmlOp::Upsert {
        object,
        external_id_field,
        fields,
        ..
    } = p.op
    else {
        return Err(ApiError::new(
            500,
            "UNKNOWN_EXCEPTION",
            "unexpected upsert shape",
        ));
    };
    let ids = find_external(&state, &object, &external_id_field, &value).await?;
    let id = match ids.as_slice() {
        [] => return Err(ApiError::not_found()),
        [id] => *id,
        many => return Ok(multiple_matches(&version, &object, many)),
    };
    let ctx = session.call_context(ApiKind::Rest, &version, &headers);
    let op = DmlOp::Update {
        object: object.clone(),
        id: id.as_str().to_string(),
        fields,
    };
    let result = run_one(&state, ctx, op).await?;
    let (status, body) = dml_response(DmlKind::Upsert, &version, &object, result);
    Ok(to_response(status, body))
}

async fn delete_by_external_id(
    session: Session,
    State(state): State<AppState>,
    Path((v, obj, field, value)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let version = api_version(&v)?;
    let object = object_def(&state, &obj)?;
    let field = external_id_field(&object, &field)?;
    let ids = find_external(&state, &object.name, &field, &value).await?;
    let id = match ids.as_slice() {
        [] => return Err(ApiError::not_found()),
        [id] => *id,
        many => return Ok(multiple_matches(&version, &object.name, many)),
    };
    let p = PreparedDml {
        kind: DmlKind::Delete,
        object: object.name,
        op: DmlOp::Delete {
            id: id.as_str().to_string(),
        },
    };
    run_prepared(&state, &session, &version, &headers, p).await
}

// ---------------------------------------------------------------------------------------------
// Replication helpers.

/// Parses a `start`/`end` parameter (ISO 8601; a `+` decoded to a space is tolerated).
fn replication_date(params: &HashMap<String, String>, name: &str) -> Result<i64, ApiError> {
    let raw = params.get(name).ok_or_else(|| {
        ApiError::new(
            400,
            "INVALID_REPLICATION_DATE",
            format!("The '{name}' parameter is required, e.g. {name}=2024-01-15T10:00:00+00:00"),
        )
    })?;
    let fixed = raw.trim().replace(' ', "+");
    sfsync_org::value::parse_datetime(&fixed).ok_or_else(|| {
        ApiError::new(
            400,
            "INVALID_REPLICATION_DATE",
            format!("'{raw}' is not a valid ISO 8601 date-time for the '{name}' parameter"),
        )
    })
}

fn soql_datetime(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => "1970-01-01T00:00:00Z".to_string(),
    }
}

fn replication_window(params: &HashMap<String, String>) -> Result<(i64, i64), ApiError> {
    let start = replication_date(params, "start")?;
    let end = replication_date(params, "end")?;
    if end < start {
        return Err(ApiError::new(
            400,
            "INVALID_REPLICATION_DATE",
            "The 'end' date is before the 'start' date",
        ));
    }
    Ok((start, end))
}

async fn run_soql(
    state: &AppState,
    soql: String,
    include_deleted: bool,
) -> Result<QueryResult, ApiError> {
    let org = state.org.clone();
    blocking(move || org.query(&soql, include_deleted))
        .await?
        .map_err(ApiError::from)
}

async fn updated(
    _session: Session,
    State(state): State<AppState>,
    Path((v, obj)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    api_version(&v)?;
    let object = object_def(&state, &obj)?;
    let (start, end) = replication_window(&params)?;
    let soql = format!(
        "SELECT Id FROM {} WHERE SystemModstamp >= {} AND SystemModstamp <= {} ORDER BY Id",
        object.name,
        soql_datetime(start),
        soql_datetime(end)
    );
    let result = run_soql(&state, soql, false).await?;
    let ids: Vec<&str> = result.ids.iter().map(SfId::as_str).collect();
    Ok(Json(json!({
        "ids": ids,
        "latestDateCovered": sfsync_org::value::format_datetime(end),
    })))
}

async fn deleted(
    _session: Session,
    State(state): State<AppState>,
    Path((v, obj)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    api_version(&v)?;
    let object = object_def(&state, &obj)?;
    let (start, end) = replication_window(&params)?;
    let soql = format!(
        "SELECT Id, SystemModstamp FROM {} WHERE IsDeleted = true AND SystemModstamp >= {} AND SystemModstamp <= {} ORDER BY Id",
        object.name,
        soql_datetime(start),
        soql_datetime(end)
    );
    let result = run_soql(&state, soql, true).await?;
    let records: Vec<Value> = result
        .ids
        .iter()
        .zip(result.rows.iter())
        .map(|(id, row)| {
            json!({
                "id": id.as_str(),
                "deletedDate": row.get(1).cloned().unwrap_or(Value::Null),
            })
        })
        .collect();
    Ok(Json(json!({
        "deletedRecords": records,
        // Nothing is purged from the emulator's recycle bin by age.
        "earliestDateAvailable": sfsync_org::value::format_datetime(0),
        "latestDateCovered": sfsync_org::value::format_datetime(end),
    })))
}

// ---------------------------------------------------------------------------------------------
// SOQL and cursors.

struct Cursor {
    result: Arc<QueryResult>,
    batch_size: usize,
    last_used: Instant,
}

/// Open query cursors (`nextRecordsUrl` locators) of one emulator.
#[derive(Default)]
pub struct QueryCursors {
    inner: Mutex<HashMap<String, Cursor>>,
}

impl QueryCursors {
    fn open(&self, result: Arc<QueryResult>, batch_size: usize) -> String {
        let now = Instant::now();
        let locator = SfId::from_parts("01g", rand::random::<u64>())
            .as_str()
            .to_string();
        let mut g = self.inner.lock();
        g.retain(|_, c| now.duration_since(c.last_used) < CURSOR_IDLE_TIMEOUT);
        while g.len() >= MAX_OPEN_CURSORS {
            let oldest = g
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    g.remove(&k);
                }
                None => break,
            }
        }
        g.insert(
            locator.clone(),
            Cursor {
                result,
                batch_size,
                last_used: now,
            },
        );
        locator
    }

    fn get(&self, locator: &str) -> Option<(Arc<QueryResult>, usize)> {
        let now = Instant::now();
        let mut g = self.inner.lock();
        let expired = match g.get(locator) {
            None => return None,
            Some(c) => now.duration_since(c.last_used) >= CURSOR_IDLE_TIMEOUT,
        };
        if expired {
            g.remove(locator);
            return None;
        }
        let c = g.get_mut(locator)?;
        c.last_used = now;
        Some((c.result.clone(), c.batch_size))
    }

    /// Number of open cursors (for tests and stats).
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `Sforce-Query-Options: batchSize=N`, clamped to 200..=2000; absent or unparsable → 2000.
pub fn batch_size(headers: &HeaderMap) -> Option<usize> {
    let raw = headers.get("sforce-query-options")?.to_str().ok()?;
    raw.split([';', ','])
        .filter_map(|part| {
            let (k, v) = part.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("batchSize")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .next()
        .map(|n| n.clamp(MIN_BATCH_SIZE, MAX_BATCH_SIZE))
}

fn invalid_locator() -> ApiError {
    ApiError::new(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
}

/// Renders one page (in a blocking task: records can be many and wide).
async fn render_page(
    result: Arc<QueryResult>,
    offset: usize,
    batch: usize,
    version: String,
) -> Result<(Vec<Value>, usize), ApiError> {
    blocking(move || {
        let len = result.rows.len();
        let end = offset.saturating_add(batch).min(len);
        let records = (offset..end)
            .map(|i| result.record_json(i, &version))
            .collect();
        (records, end)
    })
    .await
}

async fn page_response(
    cursors: &QueryCursors,
    result: Arc<QueryResult>,
    locator: Option<String>,
    offset: usize,
    batch: usize,
    version: &str,
    resource: &str,
) -> Result<Json<Value>, ApiError> {
    if result.is_count {
        return Ok(Json(
            json!({"totalSize": result.total_size, "done": true, "records": []}),
        ));
    }
    let total = result.total_size;
    let len = result.rows.len();
    let (records, end) = render_page(result.clone(), offset, batch, version.to_string()).await?;
    let mut out = serde_json::Map::new();
    out.insert("totalSize".into(), json!(total));
    if end < len {
        let locator = match locator {
            Some(l) => l,
            None => cursors.open(result, batch),
        };
        out.insert("done".into(), json!(false));
        out.insert(
            "nextRecordsUrl".into(),
            json!(format!(
                "/services/data/v{version}/{resource}/{locator}-{end}"
            )),
        );
    } else {
        out.insert("done".into(), json!(true));
    }
    out.insert("records".into(), Value::Array(records));
    Ok(Json(Value::Object(out)))
}

async fn run_query(
    state: AppState,
    cursors: Arc<QueryCursors>,
    v: String,
    params: HashMap<String, String>,
    headers: HeaderMap,
    include_deleted: bool,
) -> Result<Json<Value>, ApiError> {
    let version = api_version(&v)?;
    let soql = params
        .get("q")
        .map(|q| q.trim().to_string())
        .filter(|q| !q.is_empty())
        .ok_or_else(|| {
            ApiError::from(SfError::malformed_query(
                "A SOQL query must be given in the 'q' parameter",
            ))
        })?;
    let result = Arc::new(run_soql(&state, soql, include_deleted).await?);
    let batch = batch_size(&headers).unwrap_or(MAX_BATCH_SIZE);
    let resource = if include_deleted { "queryAll" } else { "query" };
    page_response(&cursors, result, None, 0, batch, &version, resource).await
}

async fn query(
    _session: Session,
    State(state): State<AppState>,
    Path(v): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let cursors = state.query_cursors.clone();
    run_query(state, cursors, v, params, headers, false).await
}

async fn query_all(
    _session: Session,
    State(state): State<AppState>,
    Path(v): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let cursors = state.query_cursors.clone();
    run_query(state, cursors, v, params, headers, true).await
}

async fn continue_query(
    cursors: Arc<QueryCursors>,
    v: String,
    locator: String,
    headers: HeaderMap,
    resource: &str,
) -> Result<Json<Value>, ApiError> {
    let version = api_version(&v)?;
    let (id, offset) = locator.rsplit_once('-').ok_or_else(invalid_locator)?;
    let offset: usize = offset.parse().map_err(|_| invalid_locator())?;
    let (result, stored_batch) = cursors.get(id).ok_or_else(invalid_locator)?;
    if offset > result.rows.len() {
        return Err(invalid_locator());
    }
    let batch = batch_size(&headers).unwrap_or(stored_batch);
    page_response(
        &cursors,
        result,
        Some(id.to_string()),
        offset,
        batch,
        &version,
        resource,
    )
    .await
}

async fn query_more(
    _session: Session,
    State(state): State<AppState>,
    Path((v, locator)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    continue_query(state.query_cursors.clone(), v, locator, headers, "query").await
}

async fn query_all_more(
    _session: Session,
    State(state): State<AppState>,
    Path((v, locator)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    continue_query(state.query_cursors.clone(), v, locator, headers, "queryAll").await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn release_labels_follow_the_three_releases_a_year() {
        assert_eq!(release_label(50), "Winter '21");
        assert_eq!(release_label(59), "Winter '24");
        assert_eq!(release_label(60), "Spring '24");
        assert_eq!(release_label(61), "Summer '24");
        assert_eq!(release_label(66), "Spring '26");
    }

    #[test]
    fn batch_size_is_clamped() {
        let mut h = HeaderMap::new();
        assert_eq!(batch_size(&h), None);
        h.insert(
            "sforce-query-options",
            HeaderValue::from_static("batchSize=500"),
        );
        assert_eq!(batch_size(&h), Some(500));
        h.insert(
            "sforce-query-options",
            HeaderValue::from_static("batchSize=5"),
        );
        assert_eq!(batch_size(&h), Some(200));
        h.insert(
            "sforce-query-options",
            HeaderValue::from_static("batchSize=99999"),
        );
        assert_eq!(batch_size(&h), Some(2000));
        h.insert(
            "sforce-query-options",
            HeaderValue::from_static("batchSize=abc"),
        );
        assert_eq!(batch_size(&h), None);
    }

    #[test]
    fn record_bodies_must_be_objects() {
        assert!(
            parse_record_body(br#"{"Name": "x", "attributes": {"type": "Account"}}"#)
                .map(|m| !m.contains_key("attributes") && m.contains_key("Name"))
                .unwrap()
        );
        let e = parse_record_body(b"[1]").unwrap_err();
        assert_eq!(e.errors[0].error_code, "JSON_PARSER_ERROR");
        let e = parse_record_body(b"{\"Name\": ").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.errors[0].message.contains("EOF"));
    }

    fn result(rows: usize) -> Arc<QueryResult> {
        Arc::new(QueryResult {
            object: "Account".into(),
            columns: vec!["Id".into()],
            rows: vec![vec![Value::Null]; rows],
            ids: vec![SfId::from_parts("001", 1); rows],
            total_size: rows,
            is_count: false,
            relations: Vec::new(),
            parent_ids: vec![Vec::new(); rows],
        })
    }

    #[test]
    fn cursors_are_capped_least_recently_used_first() {
        let cursors = QueryCursors::default();
        let first = cursors.open(result(3), 200);
        let second = cursors.open(result(3), 500);
        assert_eq!(cursors.get(&second).map(|(_, b)| b), Some(500));
        // Touch the first so the second is the least recently used.
        std::thread::sleep(Duration::from_millis(2));
        assert!(cursors.get(&first).is_some());
        for _ in 0..MAX_OPEN_CURSORS - 1 {
            std::thread::sleep(Duration::from_micros(50));
            cursors.open(result(1), 200);
        }
        assert_eq!(cursors.len(), MAX_OPEN_CURSORS);
        assert!(cursors.get(&second).is_none(), "evicted");
        assert!(cursors.get(&first).is_some());
        assert!(first.starts_with("01g") && first.len() == 18);
    }

    #[test]
    fn multiple_matches_answer_300_with_urls() {
        let mut e = SfError::new(300, "MULTIPLE_CHOICES", "several");
        e.matched_ids = vec!["001000000000001AAA".into()];
        let (status, body) = errors_response("66.0", "Account", &[e]);
        assert_eq!(status, StatusCode::MULTIPLE_CHOICES);
        assert_eq!(
            body[0],
            "/services/data/v66.0/sobjects/Account/001000000000001AAA"
        );
    }
}
