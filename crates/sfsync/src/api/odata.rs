//! The OData 4.0 endpoint (`/odata/v4/`) for Salesforce Connect's OData 4.0 adapter and other
//! OData clients: the service document, `$metadata` (CSDL XML), and each configured curated
//! object (and, when configured, the writeback outbox) as a read-only entity set with
//! `$filter`, `$select`, `$orderby`, `$top`, `$skip`, `$count`, server-driven paging
//! (`@odata.nextLink`) and JSON (`odata.metadata=minimal`).
//!
//! Guarantees: every request is authenticated (a viewer or operator bearer token, or an
//! `[[odata.basic_auth]]` principal) and rate limited per caller before the store is read;
//! query options become parameterised SQL ([`super::odata_query`]); a page reads at most
//! `page_size + 1` rows, so memory stays bounded for any table size; `@odata.nextLink` carries
//! a keyset `$skiptoken` (the last row's sort-key values and its Id), so a client paging
//! through an entity set while rows are inserted sees no row twice and skips none that existed
//! when it started; PII properties are decrypted only for callers authorised for PII (others
//! read `null` and cannot filter or sort on them); deleted records are not served. Errors are
//! OData JSON errors (`{"error": {"code", "message"}}`), 400 naming the option, position and
//! token of a bad query.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Map, Value as J};
use sfsync_store::{OrderKey, QueryRow, QueryTable, RowFilter, RowQuery, Value};
use sha2::{Digest, Sha256};

use super::auth::{bearer, find, find_basic, KnownBasic};
use super::error::ApiError;
use super::odata_query::{parse_filter, parse_orderby, parse_select, Edm, Prop, Scope};
use super::ApiState;
use crate::config::validate::{ApiRole, ValidOdata};

/// The entity set of the writeback outbox.
pub const OUTBOX_SET: &str = "WritebackOutbox";
/// The CSDL namespace of the entity types.
pub const NAMESPACE: &str = "sfsync";
/// Most `$skip` accepted (a deep offset scan is what the keyset skiptoken avoids).
const MAX_SKIP: u64 = 1_000_000;

/// The endpoint's configuration as served.
#[derive(Debug, Clone)]
pub struct OdataService {
    /// Entity set name → (table, declared PII field API names).
    pub sets: Vec<(String, QueryTable, Vec<String>)>,
    pub page_size: usize,
    pub public_url: Option<String>,
    pub tls: bool,
    pub basic: Vec<KnownBasic>,
}

impl OdataService {
    /// From the validated config; PII fields from each object's `pii_fields`.
    pub fn from_config(
        o: &ValidOdata,
        objects: &[crate::config::validate::ValidObject],
        tls: bool,
    ) -> OdataService {
        let mut sets: Vec<(String, QueryTable, Vec<String>)> = o
            .entity_sets
            .iter()
            .map(|name| {
                let pii = objects
                    .iter()
                    .find(|x| &x.name == name)
                    .map(|x| x.pii_fields.clone())
                    .unwrap_or_default();
                (name.clone(), QueryTable::Curated(name.clone()), pii)
            })
            .collect();
        if o.outbox {
            sets.push((
                OUTBOX_SET.to_string(),
                QueryTable::Outbox,
                vec!["Fields".to_string()],
            ));
        }
        OdataService {
            sets,
            page_size: o.page_size,
            public_url: o.public_url.clone(),
            tls,
            basic: Vec::new(),
        }
    }
}

/// An entity set with its properties, as of this request.
pub struct EntitySet {
    pub name: String,
    pub table: QueryTable,
    /// The key property (`Id`) first.
    pub props: Vec<Prop>,
}

/// The outbox's properties: (OData name, column, type).
const OUTBOX_PROPS: &[(&str, &str, Edm)] = &[
    ("Id", "id", Edm::Int64),
    ("SourceSystem", "source_system", Edm::String),
    ("IdempotencyKey", "idempotency_key", Edm::String),
    ("Object", "object", Edm::String),
    ("ExternalIdField", "external_id_field", Edm::String),
    ("ExternalId", "external_id", Edm::String),
    ("RecordId", "record_id", Edm::String),
    ("Fields", "fields", Edm::String),
    ("SeenVersionMs", "seen_version_ms", Edm::Int64),
    ("CreatedAtMs", "created_at_ms", Edm::Int64),
    ("IngestedAtMs", "ingested_at_ms", Edm::Int64),
    ("WriteId", "write_id", Edm::Int64),
];

/// The properties of a curated object's entity type from its registered model: `Id`, then
/// the fields in model order (named by their API names).
pub fn curated_props(model: &sfsync_store::ObjectModel, declared_pii: &[String]) -> Vec<Prop> {
    let mut props = vec![Prop {
        name: "Id".into(),
        column: sfsync_store::KEY_COLUMN.into(),
        edm: Edm::String,
        pii: false,
        sealed: false,
    }];
    props.extend(
        model
            .columns
            .iter()
            .filter(|c| c.name != sfsync_store::KEY_COLUMN)
            .map(|c| Prop {
                name: c.field.clone(),
                column: c.name.clone(),
                edm: Edm::of(c.ty),
                pii: c.pii
                    || declared_pii
                        .iter()
                        .any(|p| p.eq_ignore_ascii_case(&c.field)),
                sealed: c.pii,
            }),
    );
    props
}

fn odata_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(status, code, message)
}

/// The entity set `name` as of now; 404 for an unknown set, 503 while an object has no
/// curated model yet.
pub fn entity_set(s: &ApiState, svc: &OdataService, name: &str) -> Result<EntitySet, ApiError> {
    let Some((set, table, pii)) = svc.sets.iter().find(|(n, _, _)| n == name) else {
        let known: Vec<&str> = svc.sets.iter().map(|(n, _, _)| n.as_str()).collect();
        return Err(ApiError::not_found(format!(
            "no entity set '{name}' (entity sets: {})",
            known.join(", ")
        )));
    };
    let props = match table {
        QueryTable::Outbox => OUTBOX_PROPS
            .iter()
            .map(|(n, c, edm)| Prop {
                name: n.to_string(),
                column: c.to_string(),
                edm: *edm,
                pii: pii.iter().any(|p| p == n),
                sealed: false,
            })
            .collect(),
        QueryTable::Curated(object) => {
            let model = s.store.curated_model(object).ok_or_else(|| {
                odata_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_ready",
                    format!("entity set '{name}': object {object} has no curated table yet (sfsync has not synced it); retry shortly"),
                )
            })?;
            curated_props(&model, pii)
        }
    };
    Ok(EntitySet {
        name: set.clone(),
        table: table.clone(),
        props,
    })
}

/// An authenticated OData caller.
#[derive(Debug, Clone)]
pub struct OdataCaller {
    pub name: String,
    pub pii: bool,
}

/// Bearer (viewer or operator token) or Basic (`[[odata.basic_auth]]`).
fn authenticate(
    s: &ApiState,
    svc: &OdataService,
    headers: &HeaderMap,
) -> Result<OdataCaller, ApiError> {
    let unauthorized =
        |m: &str| odata_error(StatusCode::UNAUTHORIZED, "unauthorized", m.to_string());
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "missing Authorization header: send `Authorization: Bearer <token>` or HTTP Basic credentials",
        ));
    };
    let v = v
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not text"))?;
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| unauthorized("the Basic credentials are not base64 of user:password"))?;
        return match find_basic(&svc.basic, &decoded) {
            Some(p) => Ok(OdataCaller {
                name: format!("basic:{}", p.username),
                pii: p.pii,
            }),
            None => {
                tracing::warn!("OData: a request with unknown Basic credentials was refused.");
                Err(unauthorized("the user name or password is not valid"))
            }
        };
    }
    let mut parts = axum::http::Request::new(()).into_parts().0;
    parts.headers = headers.clone();
    let presented = bearer(&parts).map_err(|_| {
        unauthorized("the Authorization header is not `Bearer <token>` or `Basic <credentials>`")
    })?;
    match find(&s.tokens, presented) {
        Some(t) if t.role == ApiRole::Writer => Err(ApiError::forbidden(format!(
            "token '{}' has role writer, which may only use the writeback ingress",
            t.name
        ))),
        Some(t) => Ok(OdataCaller {
            name: t.name.clone(),
            pii: t.pii,
        }),
        None => {
            tracing::warn!("OData: a request with an unknown bearer token was refused.");
            Err(unauthorized("the bearer token is not valid"))
        }
    }
}

/// The service, the caller and its rate-limit check.
fn begin<'a>(
    s: &'a ApiState,
    headers: &HeaderMap,
) -> Result<(&'a OdataService, OdataCaller), ApiError> {
    let Some(svc) = s.odata.as_deref() else {
        // Authenticate first all the same: an anonymous caller learns nothing.
        let off = OdataService {
            sets: Vec::new(),
            page_size: 1,
            public_url: None,
            tls: false,
            basic: Vec::new(),
        };
        authenticate(s, &off, headers)?;
        return Err(ApiError::not_found(
            "the OData endpoint is off (configure [odata] entity_sets)",
        ));
    };
    let caller = authenticate(s, svc, headers)?;
    s.read_limiter
        .take(&caller.name)
        .map_err(super::read::too_many)?;
    Ok((svc, caller))
}

/// The service root URL (ends with `/`).
fn service_root(svc: &OdataService, headers: &HeaderMap) -> String {
    if let Some(u) = &svc.public_url {
        return u.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = if svc.tls { "https" } else { "http" };
    format!(
        "{scheme}://{host}{}/odata/v4/",
        super::forwarded_prefix(headers)
    )
}

fn with_odata_headers(mut resp: Response, content_type: &'static str) -> Response {
    let h = resp.headers_mut();
    h.insert("OData-Version", HeaderValue::from_static("4.0"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

const JSON_MINIMAL: &str = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

fn json_response(v: J) -> Response {
    with_odata_headers(
        (StatusCode::OK, v.to_string()).into_response(),
        JSON_MINIMAL,
    )
}

/// An error with the OData version header.
fn fail(e: ApiError) -> Response {
    let mut resp = e.into_response();
    resp.headers_mut()
        .insert("OData-Version", HeaderValue::from_static("4.0"));
    resp
}

// ---- handlers ----

pub async fn service_document(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    match service_document_inner(&s, &headers) {
        Ok(r) => r,
        Err(e) => fail(e),
    }
}

fn service_document_inner(s: &ApiState, headers: &HeaderMap) -> Result<Response, ApiError> {
    let (svc, _) = begin(s, headers)?;
    let root = service_root(svc, headers);
    let sets: Vec<J> = svc
        .sets
        .iter()
        .map(|(n, _, _)| json!({ "name": n, "kind": "EntitySet", "url": n }))
        .collect();
    Ok(json_response(json!({
        "@odata.context": format!("{root}$metadata"),
        "value": sets,
    })))
}

pub async fn metadata(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    match metadata_inner(&s, &headers) {
        Ok(r) => r,
        Err(e) => fail(e),
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The CSDL XML document of `sets`.
pub fn csdl(sets: &[EntitySet]) -> String {
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<edmx:Edmx xmlns:edmx=\"http://docs.oasis-open.org/odata/ns/edmx\" Version=\"4.0\">\n  <edmx:DataServices>\n",
    );
    x.push_str(&format!(
        "    <Schema xmlns=\"http://docs.oasis-open.org/odata/ns/edm\" Namespace=\"{NAMESPACE}\">\n"
    ));
    for set in sets {
        x.push_str(&format!(
            "      <EntityType Name=\"{}\">\n        <Key><PropertyRef Name=\"{}\"/></Key>\n",
            xml_escape(&set.name),
            xml_escape(&set.props[0].name)
        ));
        for (i, p) in set.props.iter().enumerate() {
            let nullable = if i == 0 { " Nullable=\"false\"" } else { "" };
            // Salesforce numbers are decimals; their scale varies by field.
            let facets = if p.edm == Edm::Decimal {
                " Scale=\"variable\""
            } else {
                ""
            };
            x.push_str(&format!(
                "        <Property Name=\"{}\" Type=\"{}\"{nullable}{facets}/>\n",
                xml_escape(&p.name),
                p.edm.name()
            ));
        }
        x.push_str("      </EntityType>\n");
    }
    x.push_str("      <EntityContainer Name=\"Warehouse\">\n");
    for set in sets {
        x.push_str(&format!(
            "        <EntitySet Name=\"{0}\" EntityType=\"{NAMESPACE}.{0}\"/>\n",
            xml_escape(&set.name)
        ));
    }
    x.push_str("      </EntityContainer>\n    </Schema>\n  </edmx:DataServices>\n</edmx:Edmx>\n");
    x
}

fn metadata_inner(s: &ApiState, headers: &HeaderMap) -> Result<Response, ApiError> {
    let (svc, _) = begin(s, headers)?;
    let sets = svc
        .sets
        .iter()
        .map(|(n, _, _)| entity_set(s, svc, n))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(with_odata_headers(
        (StatusCode::OK, csdl(&sets)).into_response(),
        "application/xml;charset=utf-8",
    ))
}

pub async fn resource(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(resource): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    match resource_inner(&s, &headers, &resource, query.as_deref(), false).await {
        Ok(r) => r,
        Err(e) => fail(e),
    }
}

pub async fn resource_count(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(resource): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    match resource_inner(&s, &headers, &resource, query.as_deref(), true).await {
        Ok(r) => r,
        Err(e) => fail(e),
    }
}

/// The query options of a request: `$…` options by name (each at most once).
#[derive(Debug, Default)]
struct Options {
    filter: Option<String>,
    orderby: Option<String>,
    select: Option<String>,
    top: Option<u64>,
    skip: Option<u64>,
    count: bool,
    skiptoken: Option<String>,
}

fn bad(m: impl Into<String>) -> ApiError {
    odata_error(StatusCode::BAD_REQUEST, "bad_request", m)
}

fn parse_options(query: Option<&str>) -> Result<Options, ApiError> {
    let mut o = Options::default();
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let k = k.trim().to_string();
        if !k.starts_with('$') {
            continue; // custom query options are allowed and ignored
        }
        if seen.contains(&k) {
            return Err(bad(format!("{k} is given twice")));
        }
        seen.push(k.clone());
        let num = |v: &str| -> Result<u64, ApiError> {
            v.trim()
                .parse::<u64>()
                .map_err(|_| bad(format!("{k}: '{v}' is not a non-negative integer")))
        };
        match k.as_str() {
            "$filter" => o.filter = Some(v.into_owned()),
            "$orderby" => o.orderby = Some(v.into_owned()),
            "$select" => o.select = Some(v.into_owned()),
            "$top" => o.top = Some(num(&v)?),
            "$skip" => o.skip = Some(num(&v)?),
            "$skiptoken" => o.skiptoken = Some(v.into_owned()),
            "$count" => {
                o.count = match v.trim() {
                    "true" => true,
                    "false" => false,
                    other => return Err(bad(format!("$count: '{other}' is not true or false"))),
                }
            }
            "$format" => {
                if !v.trim().eq_ignore_ascii_case("json")
                    && !v.trim().starts_with("application/json")
                {
                    return Err(odata_error(
                        StatusCode::NOT_ACCEPTABLE,
                        "not_acceptable",
                        format!("$format: '{v}': this service answers JSON only"),
                    ));
                }
            }
            "$expand" | "$search" | "$apply" | "$compute" | "$levels" => {
                return Err(odata_error(
                    StatusCode::NOT_IMPLEMENTED,
                    "not_implemented",
                    format!("{k} is not supported (entity sets have no navigation properties)"),
                ))
            }
            other => {
                return Err(bad(format!(
                    "unknown system query option {other} (supported: $filter, $select, $orderby, $top, $skip, $count, $skiptoken, $format)"
                )))
            }
        }
    }
    if let Some(s) = o.skip {
        if s > MAX_SKIP {
            return Err(bad(format!(
                "$skip: {s} is over {MAX_SKIP}; page with @odata.nextLink instead"
            )));
        }
    }
    Ok(o)
}

/// `Account('001…')`, `WritebackOutbox(5)`, `Account(Id='001…')` → (set, key literal).
fn split_key(resource: &str) -> Result<(&str, Option<&str>), ApiError> {
    let Some(open) = resource.find('(') else {
        return Ok((resource, None));
    };
    let Some(inner) = resource[open + 1..].strip_suffix(')') else {
        return Err(bad(format!("'{resource}': the key is not closed with ')'")));
    };
    let inner = match inner.split_once('=') {
        Some((name, v)) if !name.trim_start().starts_with('\'') => v,
        _ => inner,
    };
    Ok((&resource[..open], Some(inner.trim())))
}

fn key_value(set: &EntitySet, literal: &str) -> Result<Value, ApiError> {
    match set.props[0].edm {
        Edm::Int64 => literal
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| bad(format!("key {literal}: {} keys are integers", set.name))),
        _ => {
            let s = literal
                .strip_prefix('\'')
                .and_then(|x| x.strip_suffix('\''))
                .ok_or_else(|| {
                    bad(format!(
                        "key {literal}: a string key is quoted: {}('…')",
                        set.name
                    ))
                })?;
            Ok(Value::Text(s.replace("''", "'")))
        }
    }
}

/// A value as OData JSON.
pub fn json_value(v: &Value) -> J {
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => json!(i),
        Value::Real(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Text(s) => J::String(s.clone()),
        Value::Date(d) => chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
            .and_then(|e| e.checked_add_signed(chrono::Duration::days(i64::from(*d))))
            .map_or(J::Null, |d| J::String(d.format("%Y-%m-%d").to_string())),
        Value::Timestamp(ms) => super::routes::ts(*ms),
    }
}

/// One entity as JSON: the selected properties, PII `null` unless the caller may see it.
pub fn entity_json(props: &[&Prop], row: &QueryRow, pii: bool) -> Map<String, J> {
    let mut m = Map::new();
    for p in props {
        let v = if p.pii && !pii {
            J::Null
        } else if p.column == sfsync_store::KEY_COLUMN {
            json_value(&row.key)
        } else {
            row.values.get(&p.column).map_or(J::Null, json_value)
        };
        m.insert(p.name.clone(), v);
    }
    m
}

/// What a `$skiptoken` carries: the last row's sort-key values and the query's fingerprint.
#[derive(serde::Serialize, serde::Deserialize)]
struct SkipToken {
    k: Vec<Value>,
    f: String,
}

fn fingerprint(set: &str, filter: Option<&str>, orderby: Option<&str>) -> String {
    let mut h = Sha256::new();
    for part in [set, filter.unwrap_or(""), orderby.unwrap_or("")] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn encode_token(t: &SkipToken) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(t).expect("a skip token serialises"))
}

fn decode_token(s: &str, fingerprint: &str, keys: usize) -> Result<Vec<Value>, ApiError> {
    let t: SkipToken = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("$skiptoken: not a token this service issued"))?;
    if t.f != fingerprint || t.k.len() != keys {
        return Err(bad(
            "$skiptoken: the token belongs to another query ($filter/$orderby changed); start again without it",
        ));
    }
    Ok(t.k)
}

fn store_error(e: sfsync_store::StoreError) -> ApiError {
    match e {
        sfsync_store::StoreError::InvalidInput { reason, .. } => bad(reason),
        e => ApiError::internal("reading the entity set", e),
    }
}

async fn resource_inner(
    s: &ApiState,
    headers: &HeaderMap,
    resource: &str,
    query: Option<&str>,
    count_only: bool,
) -> Result<Response, ApiError> {
    let (svc, caller) = begin(s, headers)?;
    let (set_name, key) = split_key(resource)?;
    let set = entity_set(s, svc, set_name)?;
    let opts = parse_options(query)?;
    let scope = Scope {
        props: &set.props,
        pii: caller.pii,
    };
    let root = service_root(svc, headers);
    let selected: Vec<&Prop> = match opts.select.as_deref() {
        Some(text) => parse_select(&scope, text)
            .map_err(|e| bad(e.to_string()))?
            .unwrap_or_else(|| set.props.iter().collect()),
        None => set.props.iter().collect(),
    };
    let mut filter: Option<RowFilter> = match opts.filter.as_deref() {
        Some(text) => Some(parse_filter(&scope, text).map_err(|e| bad(e.to_string()))?),
        None => None,
    };
    if let Some(literal) = key {
        if count_only {
            return Err(bad("$count applies to an entity set, not an entity"));
        }
        let k = key_value(&set, literal)?;
        let mut q = RowQuery::new(set.table.clone(), 1);
        q.filter = Some(RowFilter::eq(sfsync_store::KEY_COLUMN, k));
        q.open_pii = caller.pii;
        let rows = s.store.query_rows(&q).await.map_err(store_error)?;
        let Some(row) = rows.first() else {
            return Err(ApiError::not_found(format!(
                "{}({literal}) does not exist",
                set.name
            )));
        };
        let mut m = Map::new();
        m.insert(
            "@odata.context".into(),
            J::String(format!("{root}$metadata#{}/$entity", set.name)),
        );
        m.extend(entity_json(&selected, row, caller.pii));
        return Ok(json_response(J::Object(m)));
    }
    if count_only {
        let n = s
            .store
            .count_rows(&set.table, filter.as_ref(), false)
            .await
            .map_err(store_error)?;
        return Ok(with_odata_headers(
            (StatusCode::OK, n.to_string()).into_response(),
            "text/plain;charset=utf-8",
        ));
    }
    let order: Vec<OrderKey> = match opts.orderby.as_deref() {
        Some(text) => parse_orderby(&scope, text).map_err(|e| bad(e.to_string()))?,
        None => Vec::new(),
    };
    let mut q = RowQuery::new(set.table.clone(), 0);
    q.order = order;
    let effective = q.effective_order();
    let fp = fingerprint(&set.name, opts.filter.as_deref(), opts.orderby.as_deref());
    if let Some(t) = &opts.skiptoken {
        q.after = Some(decode_token(t, &fp, effective.len())?);
    } else {
        q.skip = opts.skip.unwrap_or(0);
    }
    // The client's maximum page (Prefer: odata.maxpagesize) within ours.
    let preferred = headers
        .get("Prefer")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split([',', ';'])
                .find_map(|p| p.trim().strip_prefix("odata.maxpagesize="))
                .and_then(|n| n.trim().parse::<usize>().ok())
        })
        .filter(|n| *n > 0);
    let page = preferred.map_or(svc.page_size, |p| p.min(svc.page_size));
    let want = opts.top.map_or(page, |t| (t as usize).min(page));
    q.limit = want + 1;
    q.filter = filter.take();
    q.open_pii = caller.pii;
    let mut rows = s.store.query_rows(&q).await.map_err(store_error)?;
    let more_rows = rows.len() > want;
    rows.truncate(want);
    let remaining_top = opts.top.map(|t| t.saturating_sub(want as u64));
    let next = more_rows && remaining_top != Some(0) && !rows.is_empty();
    let mut body = Map::new();
    let context = if opts.select.is_some() && selected.len() < set.props.len() {
        let names: Vec<&str> = selected.iter().map(|p| p.name.as_str()).collect();
        format!("{root}$metadata#{}({})", set.name, names.join(","))
    } else {
        format!("{root}$metadata#{}", set.name)
    };
    body.insert("@odata.context".into(), J::String(context));
    if opts.count {
        let n = s
            .store
            .count_rows(&set.table, q.filter.as_ref(), false)
            .await
            .map_err(store_error)?;
        body.insert("@odata.count".into(), json!(n));
    }
    body.insert(
        "value".into(),
        J::Array(
            rows.iter()
                .map(|r| J::Object(entity_json(&selected, r, caller.pii)))
                .collect(),
        ),
    );
    if next {
        let last = rows.last().expect("a page with a next link has rows");
        let token = encode_token(&SkipToken {
            k: last.key_values(&effective),
            f: fp,
        });
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("$filter", opts.filter.clone()),
            ("$orderby", opts.orderby.clone()),
            ("$select", opts.select.clone()),
            ("$top", remaining_top.map(|t| t.to_string())),
            ("$count", opts.count.then(|| "true".to_string())),
            ("$skiptoken", Some(token)),
        ] {
            if let Some(v) = v {
                ser.append_pair(k, &v);
            }
        }
        body.insert(
            "@odata.nextLink".into(),
            J::String(format!("{root}{}?{}", set.name, ser.finish())),
        );
    }
    let mut resp = json_response(J::Object(body));
    if let Some(p) = preferred {
        if let Ok(v) = HeaderValue::from_str(&format!("odata.maxpagesize={}", p.min(svc.page_size)))
        {
            resp.headers_mut().insert("Preference-Applied", v);
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_options() {
        assert_eq!(split_key("Account").unwrap(), ("Account", None));
        assert_eq!(
            split_key("Account('001A')").unwrap(),
            ("Account", Some("'001A'"))
        );
        assert_eq!(
            split_key("Account(Id='001A')").unwrap(),
            ("Account", Some("'001A'"))
        );
        assert_eq!(
            split_key("WritebackOutbox(5)").unwrap(),
            ("WritebackOutbox", Some("5"))
        );
        assert!(split_key("Account('001A'").is_err());
        let o = parse_options(Some("$top=5&$count=true&$filter=Name%20eq%20%27a%27&x=1")).unwrap();
        assert_eq!(
            (o.top, o.count, o.filter.as_deref()),
            (Some(5), true, Some("Name eq 'a'"))
        );
        for (q, want) in [
            ("$top=-1", "$top: '-1' is not a non-negative integer"),
            ("$top=1&$top=2", "$top is given twice"),
            ("$bogus=1", "unknown system query option $bogus"),
            ("$count=yes", "$count: 'yes' is not true or false"),
        ] {
            let e = parse_options(Some(q)).unwrap_err();
            assert!(e.message.contains(want), "{q}: {}", e.message);
        }
        assert_eq!(
            parse_options(Some("$expand=Owner")).unwrap_err().status,
            StatusCode::NOT_IMPLEMENTED
        );
    }

    #[test]
    fn skip_tokens_round_trip_and_refuse_other_queries() {
        let fp = fingerprint("Account", Some("Name eq 'a'"), None);
        let t = encode_token(&SkipToken {
            k: vec![Value::Null, Value::Text("001".into())],
            f: fp.clone(),
        });
        assert_eq!(
            decode_token(&t, &fp, 2).unwrap(),
            vec![Value::Null, Value::Text("001".into())]
        );
        let other = fingerprint("Account", Some("Name eq 'b'"), None);
        assert!(decode_token(&t, &other, 2)
            .unwrap_err()
            .message
            .contains("another query"));
        assert!(decode_token("garbage!", &fp, 2).is_err());
    }

    #[test]
    fn csdl_lists_types_keys_and_sets() {
        let set = EntitySet {
            name: "Account".into(),
            table: QueryTable::Curated("Account".into()),
            props: vec![
                Prop {
                    name: "Id".into(),
                    column: "id".into(),
                    edm: Edm::String,
                    pii: false,
                    sealed: false,
                },
                Prop {
                    name: "AnnualRevenue".into(),
                    column: "annualrevenue".into(),
                    edm: Edm::Decimal,
                    pii: false,
                    sealed: false,
                },
            ],
        };
        let x = csdl(&[set]);
        assert!(x.contains("<EntityType Name=\"Account\">"), "{x}");
        assert!(x.contains("<Key><PropertyRef Name=\"Id\"/></Key>"), "{x}");
        assert!(
            x.contains(
                "<Property Name=\"AnnualRevenue\" Type=\"Edm.Decimal\" Scale=\"variable\"/>"
            ),
            "{x}"
        );
        assert!(
            x.contains("<EntitySet Name=\"Account\" EntityType=\"sfsync.Account\"/>"),
            "{x}"
        );
    }
}
