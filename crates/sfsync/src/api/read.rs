//! The operational read API: curated records by Salesforce Id
//! (`GET /api/v1/records/{object}/{id}`), by an External Id (or any other non-PII) field
//! (`GET /api/v1/records/{object}/by/{field}/{value}`) and as filtered, cursor-paged lists
//! (`GET /api/v1/records/{object}?Field=value&limit=&cursor=`), so an operational system reads
//! Salesforce data at low latency from the warehouse without spending Salesforce API calls.
//!
//! Guarantees: a viewer or operator token is enough; each caller is rate limited (token bucket,
//! `[api] read_rate_per_sec` / `read_burst`; over it: 429 with `Retry-After`) before the store
//! is read; every record carries its sync metadata (the last applied change's commit time and
//! version, its event key, when sfsync applied it, the deleted flag) and every answer the
//! object's freshness from the `sync_status` view (status, reason, `current_as_of`, lag);
//! PII fields are decrypted only for tokens with `pii` (operators by default) and read `null`
//! for the others, who also cannot filter on them. Lists page by keyset on the record Id (the
//! cursor), so paging neither repeats nor skips a record while records are added.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use base64::Engine;
use serde_json::{json, Map, Value as J};
use sfsync_store::{QueryRow, QueryTable, RowFilter, RowQuery, Value};

use super::auth::Caller;
use super::error::ApiError;
use super::odata::curated_props;
use super::odata_query::{Edm, Prop};
use super::routes::{ok, ts, ApiResult};
use super::ApiState;

/// Records a list returns when `limit` is not given, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// 429 with the seconds until the caller's next read is allowed.
pub fn too_many(secs: u64) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "this caller is over its read rate ([api] read_rate_per_sec / read_burst); retry in {secs} s"
        ),
    );
    e.retry_after = Some(secs);
    e
}

/// The caller (viewer or operator) within its rate.
fn begin(s: &ApiState, caller: &Caller) -> Result<(), ApiError> {
    caller.require_viewer()?;
    s.read_limiter.take(&caller.name).map_err(too_many)
}

/// The entity properties of a synced object (404 for an object this process does not sync).
fn object_props(s: &ApiState, object: &str) -> Result<Vec<Prop>, ApiError> {
    let Some(info) = s.objects.iter().find(|o| o.name == object) else {
        let known: Vec<&str> = s.objects.iter().map(|o| o.name.as_str()).collect();
        return Err(ApiError::not_found(format!(
            "object {object} is not synced by this process (synced: {})",
            known.join(", ")
        )));
    };
    let model = s.store.curated_model(object).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("object {object} has no curated table yet (sfsync has not synced it); retry shortly"),
        )
    })?;
    Ok(curated_props(&model, &info.pii_fields))
}

/// A text path or query value as a value of `prop`'s type.
fn typed(prop: &Prop, text: &str, what: &str) -> Result<Value, ApiError> {
    let fail = |kind: &str| {
        ApiError::bad_request(format!(
            "{what}: '{text}' is not {kind} ({} is {})",
            prop.name,
            prop.edm.name()
        ))
    };
    Ok(match prop.edm {
        Edm::String => Value::Text(text.to_string()),
        Edm::Int64 => Value::Int(text.parse().map_err(|_| fail("an integer"))?),
        Edm::Decimal => Value::Real(
            text.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| fail("a number"))?,
        ),
        Edm::Boolean => Value::Bool(match text {
            "true" => true,
            "false" => false,
            _ => return Err(fail("true or false")),
        }),
        Edm::Date => Value::Date(
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map(|d| {
                    (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days()
                        as i32
                })
                .map_err(|_| fail("a date (YYYY-MM-DD)"))?,
        ),
        Edm::DateTimeOffset => Value::Timestamp(
            chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| t.timestamp_millis())
                .map_err(|_| fail("an RFC 3339 time"))?,
        ),
    })
}

/// A field usable in a filter: known (by API name, any case) and, when PII, readable by the
/// caller and not sealed.
fn filter_prop<'a>(props: &'a [Prop], caller: &Caller, name: &str) -> Result<&'a Prop, ApiError> {
    let p = props
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| ApiError::bad_request(format!("{name}: not a field of this object")))?;
    if p.pii && !caller.pii {
        return Err(ApiError::forbidden(format!(
            "{}: a PII field; token '{}' is not authorised for PII",
            p.name, caller.name
        )));
    }
    if p.sealed {
        return Err(ApiError::bad_request(format!(
            "{}: a PII field stored encrypted cannot be looked up by value",
            p.name
        )));
    }
    Ok(p)
}

/// A record with its sync metadata.
fn record_json(props: &[Prop], row: &QueryRow, pii: bool) -> J {
    let refs: Vec<&Prop> = props.iter().collect();
    let fields = super::odata::entity_json(&refs, row, pii);
    let id = match &row.key {
        Value::Text(s) => s.clone(),
        v => format!("{v:?}"),
    };
    let sync = row.meta.as_ref().map_or(J::Null, |m| {
        json!({
            "deleted": row.deleted,
            "change_type": m.change_type,
            "source": m.source.as_str(),
            "commit_timestamp": ts(m.version.commit_timestamp),
            "commit_number": m.version.commit_number,
            "sequence_number": m.version.sequence_number,
            "version": format!("{}:{}:{}", m.version.commit_timestamp, m.version.commit_number, m.version.sequence_number),
            "event_key": match m.source {
                sfsync_store::ChangeSource::Cdc
                | sfsync_store::ChangeSource::OutboundMessage
                | sfsync_store::ChangeSource::Poll => J::String(
                    sfsync_core::EventKey::new(&m.transaction_key, m.version.sequence_number, &id).to_string(),
                ),
                sfsync_store::ChangeSource::Snapshot => J::Null,
            },
            "transaction_key": m.transaction_key,
            "replay_id": m.replay_id.as_ref().map(|r| r.to_hex()),
            "applied_at": ts(m.applied_at_ms),
            "run_id": m.run_id,
            "origin_client": m.origin_client,
        })
    });
    json!({ "id": id, "fields": fields, "sync": sync })
}

/// The object's freshness from the `sync_status` view.
async fn freshness(s: &ApiState, object: &str) -> Result<J, ApiError> {
    let rows = s
        .store
        .sync_status(Some(object))
        .await
        .map_err(|e| ApiError::internal("reading the warehouse's sync_status view", e))?;
    Ok(match rows.into_iter().find(|r| r.state.object == object) {
        None => json!({
            "status": "delayed",
            "status_reason": "sfsync has not recorded this object's freshness yet",
            "current_as_of": null,
            "lag_seconds": null,
            "last_applied_commit_time": null,
            "last_applied_at": null,
        }),
        Some(r) => json!({
            "status": r.status.as_str(),
            "status_reason": r.status_reason,
            "current_as_of": r.state.current_as_of_ms.map(ts),
            "lag_seconds": r.lag_seconds,
            "last_applied_commit_time": r.state.last_commit_ms.map(ts),
            "last_applied_at": r.state.last_applied_ms.map(ts),
            "delayed_after_secs": r.state.delayed_after_secs,
        }),
    })
}

async fn query(s: &ApiState, q: &RowQuery) -> Result<Vec<QueryRow>, ApiError> {
    s.store.query_rows(q).await.map_err(|e| match e {
        sfsync_store::StoreError::InvalidInput { reason, .. } => ApiError::bad_request(reason),
        e => ApiError::internal("reading records", e),
    })
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(t)| t).map_err(ApiError::from)
}

pub async fn record_by_id(
    State(s): State<Arc<ApiState>>,
    caller: Caller,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult {
    begin(&s, &caller)?;
    let (object, id) = path(p)?;
    let props = object_props(&s, &object)?;
    let mut q = RowQuery::new(QueryTable::Curated(object.clone()), 1);
    q.filter = Some(RowFilter::eq(
        sfsync_store::KEY_COLUMN,
        Value::Text(id.clone()),
    ));
    q.include_deleted = true;
    q.open_pii = caller.pii;
    let rows = query(&s, &q).await?;
    let Some(row) = rows.first() else {
        return Err(ApiError::not_found(format!(
            "{object} {id} is not in the warehouse"
        )));
    };
    let mut out = record_json(&props, row, caller.pii);
    out["object"] = json!(object);
    out["freshness"] = freshness(&s, &object).await?;
    ok(out)
}

pub async fn record_by_field(
    State(s): State<Arc<ApiState>>,
    caller: Caller,
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> ApiResult {
    begin(&s, &caller)?;
    let (object, field, value) = path(p)?;
    let props = object_props(&s, &object)?;
    let prop = filter_prop(&props, &caller, &field)?;
    let v = typed(prop, &value, &field)?;
    let mut q = RowQuery::new(QueryTable::Curated(object.clone()), 2);
    q.filter = Some(RowFilter::eq(&prop.column, v));
    q.open_pii = caller.pii;
    let rows = query(&s, &q).await?;
    match rows.as_slice() {
        [] => Err(ApiError::not_found(format!(
            "no live {object} has {} = '{value}'",
            prop.name
        ))),
        [row] => {
            let mut out = record_json(&props, row, caller.pii);
            out["object"] = json!(object);
            out["freshness"] = freshness(&s, &object).await?;
            ok(out)
        }
        _ => Err(ApiError::conflict(format!(
            "several live {object} records have {} = '{value}'; it is not a unique (External Id) field — list them with GET /api/v1/records/{object}?{}={value}",
            prop.name, prop.name
        ))),
    }
}

/// The list cursor: the last record's Id, opaque to callers.
fn encode_cursor(id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

fn decode_cursor(c: &str) -> Result<String, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::bad_request("cursor: not a cursor this API issued"))
}

pub async fn list_records(
    State(s): State<Arc<ApiState>>,
    caller: Caller,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> ApiResult {
    begin(&s, &caller)?;
    let object = path(p)?;
    let params = super::routes::query(q)?;
    let props = object_props(&s, &object)?;
    let mut limit = DEFAULT_LIMIT;
    let mut cursor = None;
    let mut include_deleted = false;
    let mut filter: Option<RowFilter> = None;
    for (k, v) in &params {
        match k.as_str() {
            "limit" => {
                limit = match v.parse::<usize>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "limit: '{v}' is not between 1 and {MAX_LIMIT}"
                        )))
                    }
                }
            }
            "cursor" => cursor = Some(decode_cursor(v)?),
            "include_deleted" => {
                include_deleted = match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(ApiError::bad_request("include_deleted: true or false")),
                }
            }
            field => {
                let prop = filter_prop(&props, &caller, field)?;
                let cond = RowFilter::eq(&prop.column, typed(prop, v, field)?);
                filter = Some(match filter {
                    None => cond,
                    Some(f) => f.and(cond),
                });
            }
        }
    }
    let mut q = RowQuery::new(QueryTable::Curated(object.clone()), limit + 1);
    q.filter = filter;
    q.include_deleted = include_deleted;
    q.open_pii = caller.pii;
    q.after = cursor.map(|c| vec![Value::Text(c)]);
    let mut rows = query(&s, &q).await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().and_then(|r| match &r.key {
            Value::Text(id) => Some(encode_cursor(id)),
            _ => None,
        })
    } else {
        None
    };
    let records: Vec<J> = rows
        .iter()
        .map(|r| record_json(&props, r, caller.pii))
        .collect();
    let mut out = Map::new();
    out.insert("object".into(), json!(object));
    out.insert("records".into(), J::Array(records));
    out.insert("next_cursor".into(), json!(next));
    out.insert("freshness".into(), freshness(&s, &object).await?);
    ok(J::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values_and_cursors() {
        let p = |edm| Prop {
            name: "F".into(),
            column: "f".into(),
            edm,
            pii: false,
            sealed: false,
        };
        assert_eq!(typed(&p(Edm::Int64), "12", "F").unwrap(), Value::Int(12));
        assert_eq!(
            typed(&p(Edm::Boolean), "true", "F").unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            typed(&p(Edm::Date), "1970-01-03", "F").unwrap(),
            Value::Date(2)
        );
        assert!(typed(&p(Edm::Decimal), "x", "F")
            .unwrap_err()
            .message
            .contains("is not a number"));
        assert_eq!(decode_cursor(&encode_cursor("001A")).unwrap(), "001A");
        assert!(decode_cursor("!!").is_err());
        assert_eq!(
            super::super::odata::json_value(&Value::Date(0)),
            json!("1970-01-01")
        );
    }
}
