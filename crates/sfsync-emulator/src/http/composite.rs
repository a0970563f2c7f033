//! Composite resources: sObject Collections (`/composite/sobjects`: create, update, upsert,
//! delete, retrieve), Composite Batch (`/composite/batch`) and Composite (`/composite`) with
//! `referenceId` references.
//!
//! Guarantees:
//! - sObject Collections run as **one** org transaction per call (one [`Org::execute`]); with
//!   `allOrNone` nothing commits unless every record succeeds, and the other records report
//!   `ALL_OR_NONE_OPERATION_ROLLED_BACK`. Without it the successful records commit together.
//!   Results are in input order. At most 200 records (2,000 ids for retrieve), else 400
//!   `EXCEEDED_ID_LIMIT` with the SOAP-era message Salesforce still answers with.
//! - Batch and Composite sub-requests are dispatched through the emulator's own router, so they
//!   behave exactly like the same call made on its own; they carry the internal sub-request
//!   marker so the whole composite call counts as **one** API request.
//! - Composite with `allOrNone: true` is exact (one transaction, rolled back as a whole) when
//!   every sub-request is a single-record sObject DML (`POST /sobjects/X`, `PATCH`/`DELETE
//!   /sobjects/X/id`, `PATCH /sobjects/X/field/value`) and none references an earlier result.
//!   When sub-requests reference earlier results (or are not plain DML) they run one after
//!   another, and after the first failure the rest answer `PROCESSING_HALTED` — but the org has
//!   no nested transactions, so sub-requests that already succeeded stay committed. Clients
//!   that need exact rollback across references should use sObject Collections.
//!   `collateSubrequests` is accepted and has no observable effect.
//!
//! [`Org::execute`]: sfsync_org::Org::execute

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Extension, Json, Router};
use percent_encoding::percent_decode_str;
use serde_json::{json, Map, Value};
use sfsync_org::{ApiKind, DmlOp, DmlOutcome, DmlResult, Fields, SfError};
use tower::ServiceExt;

use crate::auth::Session;
use crate::http::error::ApiError;
use crate::http::rest::{
    self, blocking, dml_response, errors_response, external_id_field, flag, object_def,
    parse_json_body, record_url, DmlKind, PreparedDml,
};
use crate::http::{api_version, INTERNAL_SUBREQUEST_HEADER};
use crate::state::AppState;

/// Records per sObject Collections create/update/upsert/delete call.
pub const MAX_COLLECTION_RECORDS: usize = 200;
/// Ids per sObject Collections retrieve call.
pub const MAX_RETRIEVE_IDS: usize = 2000;
/// Sub-requests per Batch or Composite call.
pub const MAX_SUBREQUESTS: usize = 25;
/// Largest sub-response body read back from the router.
const MAX_SUBRESPONSE_BYTES: usize = 512 * 1024 * 1024;

const ROLLED_BACK: &str = "ALL_OR_NONE_OPERATION_ROLLED_BACK";
const ROLLED_BACK_MESSAGE: &str =
    "Record rolled back because not all records were valid and the request was using AllOrNone header";
const HALTED_MESSAGE: &str =
    "The transaction was rolled back since another operation in the same transaction failed.";

/// The router sub-requests are dispatched through (built on first use; the app router cannot
/// be built while it is being built).
#[derive(Default)]
struct SubRouter(OnceLock<Router>);

impl SubRouter {
    fn get(&self, state: &AppState) -> Router {
        self.0
            .get_or_init(|| crate::http::router(state.clone()))
            .clone()
    }
}

pub fn routes() -> Router<AppState> {
    let sub = Arc::new(SubRouter::default());
    Router::new()
        .route(
            "/services/data/{v}/composite",
            get(composite_resources).post(composite),
        )
        .route("/services/data/{v}/composite/batch", post(batch))
        .route(
            "/services/data/{v}/composite/sobjects",
            post(collection_create)
                .patch(collection_update)
                .delete(collection_delete),
        )
        .route(
            "/services/data/{v}/composite/sobjects/{obj}",
            get(collection_retrieve).post(collection_retrieve_post),
        )
        .route(
            "/services/data/{v}/composite/sobjects/{obj}/{field}",
            patch(collection_upsert),
        )
        .method_not_allowed_fallback(rest::method_not_allowed)
        .layer(Extension(sub))
        .layer(DefaultBodyLimit::max(rest::MAX_BODY_BYTES))
}

async fn composite_resources(
    _session: Session,
    Path(v): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let version = api_version(&v)?;
    let base = format!("/services/data/v{version}/composite");
    Ok(Json(json!({
        "batch": format!("{base}/batch"),
        "sobjects": format!("{base}/sobjects"),
    })))
}

// ---------------------------------------------------------------------------------------------
// sObject Collections.

fn too_many_records() -> ApiError {
    ApiError::new(
        400,
        "EXCEEDED_ID_LIMIT",
        "record limit reached. cannot submit more than 200 records into this call",
    )
}

fn bool_field(obj: &Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::bad_json(format!(
            "'{name}' must be a boolean, found {}",
            rest::json_kind(other)
        ))),
    }
}

/// `{"allOrNone": bool, "records": [...]}`.
fn parse_collection_body(body: &[u8]) -> Result<(bool, Vec<Value>), ApiError> {
    let Value::Object(mut obj) = parse_json_body(body)? else {
        return Err(ApiError::bad_json(
            "the body must be a JSON object with a 'records' array",
        ));
    };
    let all_or_none = bool_field(&obj, "allOrNone")?;
    let records = match obj.remove("records") {
        Some(Value::Array(r)) => r,
        Some(other) => {
            return Err(ApiError::bad_json(format!(
                "'records' must be an array, found {}",
                rest::json_kind(&other)
            )))
        }
        None => return Err(ApiError::bad_json("the body has no 'records' array")),
    };
    if records.len() > MAX_COLLECTION_RECORDS {
        return Err(too_many_records());
    }
    Ok((all_or_none, records))
}

fn concrete_type_error() -> SfError {
    SfError::new(400, "INVALID_TYPE", "Must send a concrete entity type.")
}

/// A record of a collection: its fields (without `attributes`) and the canonical object name.
fn collection_record(state: &AppState, record: Value) -> Result<(String, Fields), SfError> {
    let Value::Object(mut fields) = record else {
        return Err(SfError::new(
            400,
            "JSON_PARSER_ERROR",
            "each record must be a JSON object",
        ));
    };
    let attributes = fields.remove("attributes");
    let type_name = attributes
        .as_ref()
        .and_then(|a| a.get("type"))
        .and_then(Value::as_str)
        .ok_or_else(concrete_type_error)?;
    let schema = state.org.schema();
    let object = schema.object(type_name).ok_or_else(|| {
        SfError::new(
            400,
            "INVALID_TYPE",
            format!("sObject type '{type_name}' is not supported."),
        )
    })?;
    Ok((object.name.clone(), fields))
}

/// Removes the `Id` key (any case) and returns its value.
fn take_id(fields: &mut Fields) -> Option<Value> {
    let key = fields
        .keys()
        .find(|k| k.eq_ignore_ascii_case("id"))
        .cloned()?;
    fields.remove(&key)
}

/// Runs prepared per-record operations as one transaction and renders the results in input
/// order. `prepared[i]` is the op or the error found before running.
async fn run_collection(
    state: &AppState,
    ctx: sfsync_org::CallContext,
    prepared: Vec<Result<DmlOp, SfError>>,
    all_or_none: bool,
) -> Result<Vec<DmlResult>, ApiError> {
    let failed_early = prepared.iter().any(Result::is_err);
    if all_or_none && failed_early {
        return Ok(prepared
            .into_iter()
            .map(|p| match p {
                Err(e) => Err(vec![e]),
                Ok(_) => Err(vec![SfError::new(400, ROLLED_BACK, ROLLED_BACK_MESSAGE)]),
            })
            .collect());
    }
    let mut slots: Vec<Option<DmlResult>> = Vec::with_capacity(prepared.len());
    let mut ops = Vec::new();
    for p in prepared {
        match p {
            Ok(op) => {
                ops.push(op);
                slots.push(None);
            }
            Err(e) => slots.push(Some(Err(vec![e]))),
        }
    }
    let results = if ops.is_empty() {
        Vec::new()
    } else {
        let org = state.org.clone();
        blocking(move || org.execute(&ctx, ops, all_or_none)).await?
    };
    let mut results = results.into_iter();
    Ok(slots
        .into_iter()
        .map(|slot| match slot {
            Some(r) => r,
            None => results.next().unwrap_or_else(|| {
                Err(vec![SfError::new(
                    500,
                    "UNKNOWN_EXCEPTION",
                    "The org returned too few results",
                )])
            }),
        })
        .collect())
}

/// One collection result entry. `id_on_error` is reported for failed deletes.
fn collection_entry(result: &DmlResult, upsert: bool, id_on_error: Option<&str>) -> Value {
    let mut m = Map::new();
    match result {
        Ok(outcome) => {
            m.insert("id".into(), json!(outcome.id().as_str()));
            m.insert("success".into(), json!(true));
            m.insert("errors".into(), json!([]));
            if upsert {
                m.insert(
                    "created".into(),
                    json!(matches!(outcome, DmlOutcome::Created(_))),
                );
            }
        }
        Err(errors) => {
            if let Some(id) = id_on_error {
                m.insert("id".into(), json!(id));
            }
            m.insert("success".into(), json!(false));
            let errs: Vec<Value> = errors.iter().map(SfError::to_status_json).collect();
            m.insert("errors".into(), Value::Array(errs));
        }
    }
    Value::Object(m)
}

async fn collection_create(
    session: Session,
    State(state): State<AppState>,
    Path(v): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let version = api_version(&v)?;
    let (all_or_none, records) = parse_collection_body(&body)?;
    let prepared = records
        .into_iter()
        .map(|r| {
            let (object, mut fields) = collection_record(&state, r)?;
            if take_id(&mut fields).is_some_and(|v| !v.is_null()) {
                return Err(SfError::new(
                    400,
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    "cannot specify Id in an insert call",
                )
                .with_fields(["Id"]));
            }
            Ok(DmlOp::Insert { object, fields })
        })
        .collect();
    let ctx = session.call_context(ApiKind::Rest, &version, &headers);
    let results = run_collection(&state, ctx, prepared, all_or_none).await?;
    Ok(Json(Value::Array(
        results
            .iter()
            .map(|r| collection_entry(r, false, None))
            .collect(),
    )))
}

async fn collection_update(
    session: Session,
    State(state): State<AppState>,
    Path(v): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let version = api_version(&v)?;
    let (all_or_none, records) = parse_collection_body(&body)?;
    let prepared = records
        .into_iter()
        .map(|r| {
            let (object, mut fields) = collection_record(&state, r)?;
            let id = match take_id(&mut fields) {
                Some(Value::String(id)) if !id.is_empty() => id,
                _ => {
                    return Err(SfError::new(
                        400,
                        "MISSING_ARGUMENT",
                        "Id not specified in an update call",
                    ))
                }
            };
            Ok(DmlOp::Update { object, id, fields })
        })
        .collect();
    let ctx = session.call_context(ApiKind::Rest, &version, &headers);
    let results = run_collection(&state, ctx, prepared, all_or_none).await?;
    Ok(Json(Value::Array(
        results
            .iter()
            .map(|r| collection_entry(r, false, None))
            .collect(),
    )))
}

fn id_list(raw: Option<&String>) -> Vec<String> {
    raw.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

async fn collection_delete(
    session: Session,
    State(state): State<AppState>,
    Path(v): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let version = api_version(&v)?;
    let ids = id_list(params.get("ids"));
    if ids.is_empty() {
        return Err(ApiError::new(
            400,
            "MISSING_ARGUMENT",
            "The 'ids' parameter is required",
        ));
    }
    if ids.len() > MAX_COLLECTION_RECORDS {
        return Err(too_many_records());
    }
    let all_or_none = flag(&params, "allOrNone");
    let prepared = ids
        .iter()
        .map(|id| Ok(DmlOp::Delete { id: id.clone() }))
        .collect();
    let ctx = session.call_context(ApiKind::Rest, &version, &headers);
    let results = run_collection(&state, ctx, prepared, all_or_none).await?;
    Ok(Json(Value::Array(
        results
            .iter()
            .zip(ids.iter())
            .map(|(r, id)| collection_entry(r, false, Some(id)))
            .collect(),
    )))
}

async fn retrieve_many(
    state: &AppState,
    version: String,
    obj: &str,
    ids: Vec<String>,
    fields: Option<Vec<String>>,
) -> Result<Json<Value>, ApiError> {
    let object = object_def(state, obj)?;
    if ids.is_empty() {
        return Err(ApiError::new(
            400,
            "MISSING_ARGUMENT",
            "The 'ids' parameter is required",
        ));
    }
    if ids.len() > MAX_RETRIEVE_IDS {
        return Err(ApiError::new(
            400,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 2000 records into this call",
        ));
    }
    let org = state.org.clone();
    let out = blocking(move || -> Result<Vec<Value>, SfError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            match org.retrieve(&object.name, id, fields.as_deref(), &version) {
                Ok(record) => out.push(Value::Object(record)),
                Err(e)
                    if matches!(
                        e.error_code.as_str(),
                        "NOT_FOUND" | "ENTITY_IS_DELETED" | "MALFORMED_ID"
                    ) =>
                {
                    out.push(Value::Null)
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    })
    .await??;
    Ok(Json(Value::Array(out)))
}

async fn collection_retrieve(
    _session: Session,
    State(state): State<AppState>,
    Path((v, obj)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let version = api_version(&v)?;
    let ids = id_list(params.get("ids"));
    retrieve_many(&state, version, &obj, ids, rest::fields_param(&params)).await
}

fn string_list(obj: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::bad_json(format!("'{name}' must be an array of strings"))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(ApiError::bad_json(format!(
            "'{name}' must be an array of strings"
        ))),
    }
}

async fn collection_retrieve_post(
    _session: Session,
    State(state): State<AppState>,
    Path((v, obj)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let version = api_version(&v)?;
    let Value::Object(m) = parse_json_body(&body)? else {
        return Err(ApiError::bad_json(
            "the body must be a JSON object with 'ids' and 'fields'",
        ));
    };
    let ids = string_list(&m, "ids")?.unwrap_or_default();
    let fields = string_list(&m, "fields")?;
    retrieve_many(&state, version, &obj, ids, fields).await
}

/// The external id value of a record as text (strings as they are, numbers and booleans
/// printed); missing or null → `None`.
fn external_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

async fn collection_upsert(
    session: Session,
    State(state): State<AppState>,
    Path((v, obj, field)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let version = api_version(&v)?;
    let object = object_def(&state, &obj)?;
    let field = external_id_field(&object, &field)?;
    let (all_or_none, records) = parse_collection_body(&body)?;
    let prepared = records
        .into_iter()
        .map(|r| {
            let Value::Object(mut fields) = r else {
                return Err(SfError::new(
                    400,
                    "JSON_PARSER_ERROR",
                    "each record must be a JSON object",
                ));
            };
            if let Some(t) = fields
                .remove("attributes")
                .as_ref()
                .and_then(|a| a.get("type"))
                .and_then(Value::as_str)
            {
                if !t.eq_ignore_ascii_case(&object.name) {
                    return Err(SfError::new(
                        400,
                        "INVALID_TYPE",
                        format!(
                            "Record type '{t}' does not match the upsert's sObject type '{}'",
                            object.name
                        ),
                    ));
                }
            }
            let key = fields
                .keys()
                .find(|k| k.eq_ignore_ascii_case(&field))
                .cloned();
            let value = key
                .and_then(|k| fields.remove(&k))
                .as_ref()
                .and_then(external_value)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    SfError::new(400, "MISSING_ARGUMENT", format!("{field} not specified"))
                        .with_fields([field.clone()])
                })?;
            Ok(DmlOp::Upsert {
                object: object.name.clone(),
                external_id_field: field.clone(),
                external_id: value,
                fields,
            })
        })
        .collect();
    let ctx = session.call_context(ApiKind::Rest, &version, &headers);
    let results = run_collection(&state, ctx, prepared, all_or_none).await?;
    Ok(Json(Value::Array(
        results
            .iter()
            .map(|r| collection_entry(r, true, None))
            .collect(),
    )))
}

// ---------------------------------------------------------------------------------------------
// Sub-request dispatch (Batch and Composite).

/// What one sub-request answered.
struct SubResponse {
    status: u16,
    body: Value,
    location: Option<String>,
}

impl SubResponse {
    fn error(status: u16, code: &str, message: impl Into<String>) -> SubResponse {
        SubResponse {
            status,
            body: json!([{"errorCode": code, "message": message.into()}]),
            location: None,
        }
    }

    fn from_api_error(e: ApiError) -> SubResponse {
        let body: Vec<Value> = e.errors.iter().map(SfError::to_json).collect();
        SubResponse {
            status: e.status.as_u16(),
            body: Value::Array(body),
            location: None,
        }
    }
}

/// Splits `/services/data/vNN.N/rest…?query` into (version segment, rest segments decoded, query).
fn split_data_url(url: &str) -> Option<(String, Vec<String>, Option<String>)> {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (url, None),
    };
    let rest = path.strip_prefix("/services/data/")?;
    let mut segments = rest.trim_end_matches('/').split('/');
    let version = segments.next()?.to_string();
    let decoded = segments
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    Some((version, decoded, query))
}

/// The `Location` of a created record (`201` with an `id`).
fn location_for(url: &str, status: u16, body: &Value) -> Option<String> {
    if status != 201 {
        return None;
    }
    let id = body.get("id")?.as_str()?;
    let (v, segments, _) = split_data_url(url)?;
    let version = api_version(&v).ok()?;
    match segments.as_slice() {
        [s, obj, ..] if s == "sobjects" => Some(record_url(&version, obj, id)),
        _ => None,
    }
}

/// Composite and batch requests cannot be nested; sObject Collections can be sub-requests.
fn nested_composite(segments: &[String]) -> bool {
    matches!(segments.first().map(String::as_str), Some("composite"))
        && !matches!(segments.get(1).map(String::as_str), Some("sobjects"))
}

/// Dispatches one sub-request through the app router with the caller's credentials.
async fn dispatch(
    router: &Router,
    outer: &HeaderMap,
    method: &str,
    url: &str,
    extra_headers: &[(String, String)],
    body: Option<&Value>,
) -> SubResponse {
    let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        return SubResponse::error(
            405,
            "METHOD_NOT_ALLOWED",
            format!("HTTP Method '{method}' not allowed"),
        );
    };
    let Some((_, segments, _)) = split_data_url(url) else {
        return SubResponse::from_api_error(ApiError::not_found());
    };
    if nested_composite(&segments) {
        return SubResponse::error(
            400,
            "INVALID_API_INPUT",
            "Composite and batch requests can't be sub-requests of a composite or batch request",
        );
    }
    // Trailing slashes are stripped by the server before routing; do the same here.
    let uri_text = match url.split_once('?') {
        Some((p, q)) => format!("{}?{q}", p.trim_end_matches('/')),
        None => url.trim_end_matches('/').to_string(),
    };
    let Ok(uri) = uri_text.parse::<Uri>() else {
        return SubResponse::from_api_error(ApiError::not_found());
    };
    let mut req = Request::new(match body {
        Some(b) => Body::from(serde_json::to_vec(b).unwrap_or_default()),
        None => Body::empty(),
    });
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    let h = req.headers_mut();
    for name in [
        "authorization",
        "sforce-call-options",
        "sforce-query-options",
        "x-prettyprint",
    ] {
        if let Some(v) = outer.get(name) {
            h.insert(name, v.clone());
        }
    }
    for (k, v) in extra_headers {
        let lower = k.to_ascii_lowercase();
        if matches!(lower.as_str(), "authorization" | "host" | "content-length")
            || lower == INTERNAL_SUBREQUEST_HEADER
        {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(lower.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(name, value);
        }
    }
    if body.is_some() {
        h.insert("content-type", HeaderValue::from_static("application/json"));
    }
    h.insert(INTERNAL_SUBREQUEST_HEADER, HeaderValue::from_static("1"));
    let response = match router.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    let bytes = match axum::body::to_bytes(response.into_body(), MAX_SUBRESPONSE_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            return SubResponse::error(
                500,
                "UNKNOWN_EXCEPTION",
                format!("reading the sub-response failed: {e}"),
            )
        }
    };
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    let location = location_for(url, status, &body);
    SubResponse {
        status,
        body,
        location,
    }
}

fn str_field<'a>(obj: &'a Map<String, Value>, name: &str, at: &str) -> Result<&'a str, ApiError> {
    obj.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_json(format!("{at}.{name} is required and must be a string")))
}

/// `vNN.N/…` (relative to `/services/data/`) or an absolute `/services/data/…` path.
fn batch_url(url: &str) -> String {
    if url.starts_with('/') {
        url.to_string()
    } else {
        format!("/services/data/{url}")
    }
}

async fn batch(
    _session: Session,
    State(state): State<AppState>,
    Extension(sub): Extension<Arc<SubRouter>>,
    Path(v): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    api_version(&v)?;
    let Value::Object(root) = parse_json_body(&body)? else {
        return Err(ApiError::bad_json(
            "the body must be a JSON object with 'batchRequests'",
        ));
    };
    let halt_on_error = bool_field(&root, "haltOnError")?;
    let Some(Value::Array(requests)) = root.get("batchRequests") else {
        return Err(ApiError::bad_json("the body has no 'batchRequests' array"));
    };
    if requests.len() > MAX_SUBREQUESTS {
        return Err(ApiError::new(
            400,
            "LIMIT_EXCEEDED",
            "The request can’t contain more than 25 operations.",
        ));
    }
    // Validate every entry before running any.
    let mut parsed = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        let at = format!("batchRequests[{i}]");
        let Value::Object(r) = r else {
            return Err(ApiError::bad_json(format!("{at} must be an object")));
        };
        let method = str_field(r, "method", &at)?.to_string();
        let url = batch_url(str_field(r, "url", &at)?);
        let input = r.get("richInput").filter(|v| !v.is_null()).cloned();
        parsed.push((method, url, input));
    }
    let router = sub.get(&state);
    let mut results = Vec::with_capacity(parsed.len());
    let mut has_errors = false;
    for (method, url, input) in parsed {
        if halt_on_error && has_errors {
            results.push(json!({
                "statusCode": 412,
                "result": [{"errorCode": "BATCH_PROCESSING_HALTED", "message": "Batch processing halted per request"}],
            }));
            continue;
        }
        let r = dispatch(&router, &headers, &method, &url, &[], input.as_ref()).await;
        if r.status >= 400 {
            has_errors = true;
        }
        results.push(json!({"statusCode": r.status, "result": r.body}));
    }
    Ok(Json(json!({"hasErrors": has_errors, "results": results})))
}

// ---------------------------------------------------------------------------------------------
// Composite.

struct CompositeSub {
    method: String,
    url: String,
    reference_id: String,
    body: Option<Value>,
    headers: Vec<(String, String)>,
}

fn parse_composite(root: &Map<String, Value>) -> Result<Vec<CompositeSub>, ApiError> {
    let Some(Value::Array(items)) = root.get("compositeRequest") else {
        return Err(ApiError::bad_json(
            "the body has no 'compositeRequest' array",
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("compositeRequest[{i}]");
        let Value::Object(item) = item else {
            return Err(ApiError::bad_json(format!("{at} must be an object")));
        };
        let method = str_field(item, "method", &at)?.to_string();
        let url = str_field(item, "url", &at)?.to_string();
        let reference_id = str_field(item, "referenceId", &at)?.to_string();
        let valid_ref = reference_id
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && reference_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_ref {
            return Err(ApiError::new(
                400,
                "INVALID_INPUT",
                format!("{at}.referenceId '{reference_id}' must start with a letter and contain only letters, digits and underscores"),
            ));
        }
        if !seen.insert(reference_id.clone()) {
            return Err(ApiError::new(
                400,
                "INVALID_INPUT",
                format!("Duplicate ReferenceId provided in the request: {reference_id}"),
            ));
        }
        let headers = match item.get("httpHeaders") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(h)) => h
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(ApiError::bad_json(format!(
                        "{at}.httpHeaders.{k} must be a string"
                    ))),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(ApiError::bad_json(format!(
                    "{at}.httpHeaders must be an object"
                )))
            }
        };
        out.push(CompositeSub {
            method,
            url,
            reference_id,
            body: item.get("body").filter(|b| !b.is_null()).cloned(),
            headers,
        });
    }
    Ok(out)
}

fn has_reference(sub: &CompositeSub) -> bool {
    sub.url.contains("@{")
        || sub
            .body
            .as_ref()
            .is_some_and(|b| b.to_string().contains("@{"))
}

/// Resolves `ref.path[0].x` against earlier results.
fn resolve(expr: &str, results: &HashMap<String, Value>) -> Option<Value> {
    let split = expr.find(['.', '[']).unwrap_or(expr.len());
    let (reference, mut rest) = expr.split_at(split);
    let mut current = results.get(reference)?;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let (name, tail) = r.split_at(end);
            current = current.get(name)?;
            rest = tail;
        } else if let Some(r) = rest.strip_prefix('[') {
            let (index, tail) = r.split_once(']')?;
            current = current.get(index.trim().parse::<usize>().ok()?)?;
            rest = tail;
        } else {
            return None;
        }
    }
    (!current.is_null()).then(|| current.clone())
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Replaces every `@{…}` in `s`; the unresolved expression is the error.
fn substitute_str(s: &str, results: &HashMap<String, Value>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("@{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let expr = &after[..end];
        let v = resolve(expr, results).ok_or_else(|| expr.to_string())?;
        out.push_str(&value_text(&v));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Substitutes references inside a JSON body; a string that is exactly one reference takes
/// the referenced value with its JSON type.
fn substitute_json(v: &Value, results: &HashMap<String, Value>) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => {
            if let Some(expr) = s.strip_prefix("@{").and_then(|r| r.strip_suffix('}')) {
                if !expr.contains('}') && !expr.contains("@{") {
                    return resolve(expr, results).ok_or_else(|| expr.to_string());
                }
            }
            Value::String(substitute_str(s, results)?)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| substitute_json(i, results))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| substitute_json(v, results).map(|v| (k.clone(), v)))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

fn composite_entry(reference_id: &str, r: SubResponse) -> Value {
    let mut headers = Map::new();
    if let Some(loc) = r.location {
        headers.insert("Location".into(), json!(loc));
    }
    json!({
        "body": r.body,
        "httpHeaders": headers,
        "httpStatusCode": r.status,
        "referenceId": reference_id,
    })
}

fn halted() -> SubResponse {
    SubResponse::error(400, "PROCESSING_HALTED", HALTED_MESSAGE)
}

/// A single-record sObject DML sub-request, prepared exactly as the REST handler would.
/// `None` when the sub-request is something else (then it is dispatched through the router).
fn prepare_atomic(
    state: &AppState,
    sub: &CompositeSub,
) -> Option<Result<(String, PreparedDml), ApiError>> {
    let (v, segments, query) = split_data_url(&sub.url)?;
    if query.is_some_and(|q| !q.is_empty()) {
        return None;
    }
    let method = sub.method.to_ascii_uppercase();
    let body = sub
        .body
        .as_ref()
        .map(|b| serde_json::to_vec(b).unwrap_or_default())
        .unwrap_or_default();
    let prepared = match (method.as_str(), segments.as_slice()) {
        ("POST", [s, obj]) if s == "sobjects" => rest::prepare_create(state, obj, &body),
        ("PATCH", [s, obj, id])
            if s == "sobjects" && !matches!(id.as_str(), "describe" | "updated" | "deleted") =>
        {
            rest::prepare_update(state, obj, id, &body)
        }
        ("DELETE", [s, obj, id])
            if s == "sobjects" && !matches!(id.as_str(), "describe" | "updated" | "deleted") =>
        {
            rest::prepare_delete(state, obj, id)
        }
        ("PATCH", [s, obj, field, value]) if s == "sobjects" => {
            rest::prepare_upsert(state, obj, field, value, &body)
        }
        _ => return None,
    };
    Some(api_version(&v).and_then(|version| prepared.map(|p| (version, p))))
}

/// `allOrNone` with independent single-record DML: one transaction for all of them.
async fn run_atomic(
    state: &AppState,
    ctx: sfsync_org::CallContext,
    subs: &[CompositeSub],
    prepared: Vec<Result<(String, PreparedDml), ApiError>>,
) -> Result<Vec<Value>, ApiError> {
    if prepared.iter().any(Result::is_err) {
        return Ok(subs
            .iter()
            .zip(prepared)
            .map(|(sub, p)| {
                let r = match p {
                    Err(e) => SubResponse::from_api_error(e),
                    Ok(_) => halted(),
                };
                composite_entry(&sub.reference_id, r)
            })
            .collect());
    }
    let prepared: Vec<(String, PreparedDml)> = prepared.into_iter().flatten().collect();
    let ops: Vec<DmlOp> = prepared.iter().map(|(_, p)| p.op.clone()).collect();
    let org = state.org.clone();
    let results = blocking(move || org.execute(&ctx, ops, true)).await?;
    let mut results = results.into_iter();
    Ok(subs
        .iter()
        .zip(prepared)
        .map(|(sub, (version, p))| {
            let result = results.next().unwrap_or_else(|| {
                Err(vec![SfError::new(
                    500,
                    "UNKNOWN_EXCEPTION",
                    "The org returned too few results",
                )])
            });
            let r = match &result {
                Err(errors) if errors.iter().all(|e| e.error_code == ROLLED_BACK) => halted(),
                Err(errors) => {
                    let (status, body) = errors_response(&version, &p.object, errors);
                    SubResponse {
                        status: status.as_u16(),
                        body,
                        location: None,
                    }
                }
                Ok(_) => {
                    let (status, body) = dml_response(p.kind, &version, &p.object, result.clone());
                    let body = body.unwrap_or(Value::Null);
                    let location = matches!(p.kind, DmlKind::Create | DmlKind::Upsert)
                        .then(|| body.get("id").and_then(Value::as_str))
                        .flatten()
                        .map(|id| record_url(&version, &p.object, id));
                    SubResponse {
                        status: status.as_u16(),
                        body,
                        location,
                    }
                }
            };
            composite_entry(&sub.reference_id, r)
        })
        .collect())
}

async fn composite(
    session: Session,
    State(state): State<AppState>,
    Extension(sub): Extension<Arc<SubRouter>>,
    Path(v): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let version = api_version(&v)?;
    let Value::Object(root) = parse_json_body(&body)? else {
        return Err(ApiError::bad_json(
            "the body must be a JSON object with 'compositeRequest'",
        ));
    };
    let all_or_none = bool_field(&root, "allOrNone")?;
    bool_field(&root, "collateSubrequests")?;
    if let Some(Value::Array(items)) = root.get("compositeRequest") {
        if items.len() > MAX_SUBREQUESTS {
            // Salesforce answers this one inside a 200 composite response.
            let entry = composite_entry(
                "",
                SubResponse::error(
                    400,
                    "LIMIT_EXCEEDED",
                    "The request can’t contain more than 25 operations.",
                ),
            );
            let mut entry = entry;
            entry["referenceId"] = Value::Null;
            return Ok(Json(json!({"compositeResponse": [entry]})).into_response());
        }
    }
    let subs = parse_composite(&root)?;

    if all_or_none && !subs.iter().any(has_reference) {
        let prepared: Option<Vec<_>> = subs.iter().map(|s| prepare_atomic(&state, s)).collect();
        if let Some(prepared) = prepared {
            let ctx = session.call_context(ApiKind::Rest, &version, &headers);
            let entries = run_atomic(&state, ctx, &subs, prepared).await?;
            return Ok(Json(json!({"compositeResponse": entries})).into_response());
        }
    }

    let router = sub.get(&state);
    let mut results: HashMap<String, Value> = HashMap::new();
    let mut entries = Vec::with_capacity(subs.len());
    let mut failed = false;
    for s in &subs {
        if all_or_none && failed {
            entries.push(composite_entry(&s.reference_id, halted()));
            continue;
        }
        let substituted = substitute_str(&s.url, &results).and_then(|url| {
            let body = s
                .body
                .as_ref()
                .map(|b| substitute_json(b, &results))
                .transpose()?;
            Ok((url, body))
        });
        let r = match substituted {
            Err(expr) => {
                let reference = expr
                    .split(['.', '['])
                    .next()
                    .unwrap_or_default()
                    .to_string();
                SubResponse::error(
                    400,
                    "PROCESSING_HALTED",
                    format!("Invalid reference specified. No value for {expr} found in {reference}. Provided referenceId ({reference}) must be the referenceId of an earlier sub-request that succeeded."),
                )
            }
            Ok((url, body)) => {
                dispatch(
                    &router,
                    &headers,
                    &s.method,
                    &url,
                    &s.headers,
                    body.as_ref(),
                )
                .await
            }
        };
        if r.status >= 400 {
            failed = true;
        } else {
            results.insert(s.reference_id.clone(), r.body.clone());
        }
        entries.push(composite_entry(&s.reference_id, r));
    }
    Ok(Json(json!({"compositeResponse": entries})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs() -> HashMap<String, Value> {
        let mut m = HashMap::new();
        m.insert(
            "NewAccount".to_string(),
            json!({"id": "001000000000001AAA", "success": true}),
        );
        m.insert(
            "Q".to_string(),
            json!({"totalSize": 2, "records": [{"Id": "003A"}, {"Id": "003B", "N": 5}]}),
        );
        m
    }

    #[test]
    fn references_resolve_paths_and_indexes() {
        let r = refs();
        assert_eq!(
            resolve("NewAccount.id", &r),
            Some(json!("001000000000001AAA"))
        );
        assert_eq!(resolve("Q.records[1].Id", &r), Some(json!("003B")));
        assert_eq!(resolve("Q.records[5].Id", &r), None);
        assert_eq!(resolve("Missing.id", &r), None);
        assert_eq!(
            substitute_str("/services/data/v66.0/sobjects/Account/@{NewAccount.id}", &r).unwrap(),
            "/services/data/v66.0/sobjects/Account/001000000000001AAA"
        );
        assert_eq!(substitute_str("x @{Nope.id}", &r).unwrap_err(), "Nope.id");
    }

    #[test]
    fn json_bodies_keep_the_referenced_type() {
        let r = refs();
        let body = json!({"AccountId": "@{NewAccount.id}", "Count": "@{Q.records[1].N}", "Note": "n=@{Q.totalSize}"});
        let out = substitute_json(&body, &r).unwrap();
        assert_eq!(out["AccountId"], "001000000000001AAA");
        assert_eq!(out["Count"], 5);
        assert_eq!(out["Note"], "n=2");
    }

    #[test]
    fn data_urls_split_and_nested_composites_are_refused() {
        let (v, segs, q) =
            split_data_url("/services/data/v66.0/sobjects/Account/Ext__c/a%2Fb?x=1").unwrap();
        assert_eq!(v, "v66.0");
        assert_eq!(segs, vec!["sobjects", "Account", "Ext__c", "a/b"]);
        assert_eq!(q.as_deref(), Some("x=1"));
        assert!(nested_composite(&["composite".into(), "batch".into()]));
        assert!(!nested_composite(&["composite".into(), "sobjects".into()]));
        assert!(split_data_url("v66.0/sobjects").is_none());
        assert_eq!(batch_url("v66.0/limits"), "/services/data/v66.0/limits");
    }
}
