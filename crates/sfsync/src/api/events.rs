//! `/api/v1/events`: platform events to publish to Salesforce.
//!
//! `POST /api/v1/events/{name}` takes a batch `{"events": [{"idempotency_key", "fields"}]}` (an
//! `Idempotency-Key` header stands for missing per-event keys: `<header>:<index>`), records the
//! request in the operator audit chain, stores the events durably and only then answers 202 —
//! each event `accepted` (new) or `duplicate` (its key was known: the stored event is returned,
//! nothing is published again). The running publisher sends them within the hourly publish
//! allocation. `GET /api/v1/events` lists them with their state (pending, published with its
//! replay id, dead with Salesforce's error, discarded).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value as J};
use sfsync_store::{NewOutboundEvent, OutboundEvent, OutboundFilter, OutboundState};

use super::auth::Caller;
use super::error::ApiError;
use super::routes::{audit, json_body, ok, query, ts, ApiResult};
use super::ApiState;

type S = State<Arc<ApiState>>;

/// What the events endpoints need from the running service.
#[derive(Clone)]
pub struct EventsApi {
    pub stats: Arc<sfsync_pipeline::events::EventStats>,
    /// Wakes the publisher after an enqueue (`None`: this process does not publish).
    pub publisher: Option<Arc<tokio::sync::Notify>>,
}

/// An event to publish as the API shows it.
pub fn event_json(e: &OutboundEvent) -> J {
    json!({
        "id": e.id,
        "event": e.name,
        "idempotency_key": e.idempotency_key,
        "event_uuid": e.event_uuid,
        "source": e.source,
        "state": e.state.as_str(),
        "attempts": e.attempts,
        "replay_id": e.replay_id,
        "error": e.last_error,
        "fields": e.fields,
        "created_at": ts(e.created_at_ms),
        "updated_at": ts(e.updated_at_ms),
        "published_at": e.published_at_ms.map(ts),
    })
}

fn is_field_name(k: &str) -> bool {
    let mut c = k.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// One event of a request, checked; the error names `events[i]…`.
fn parse_event(
    i: usize,
    v: &J,
    header_key: Option<&str>,
) -> Result<(String, serde_json::Map<String, J>), String> {
    let o = v
        .as_object()
        .ok_or_else(|| format!("events[{i}]: not an object"))?;
    if let Some(k) = o
        .keys()
        .find(|k| !["idempotency_key", "fields"].contains(&k.as_str()))
    {
        return Err(format!(
            "events[{i}].{k}: unknown field, expected idempotency_key and fields"
        ));
    }
    let key = match (o.get("idempotency_key"), header_key) {
        (Some(J::String(k)), _) if !k.trim().is_empty() && k.len() <= 255 => k.clone(),
        (Some(_), _) => {
            return Err(format!(
                "events[{i}].idempotency_key: not a non-empty string of at most 255 characters"
            ))
        }
        (None, Some(h)) => format!("{h}:{i}"),
        (None, None) => {
            return Err(format!(
                "events[{i}].idempotency_key: missing (give one per event, or an Idempotency-Key header for the request), so a retry never publishes twice"
            ))
        }
    };
    let fields = match o.get("fields") {
        Some(J::Object(m)) => m.clone(),
        None => serde_json::Map::new(),
        Some(_) => return Err(format!("events[{i}].fields: not an object")),
    };
    if let Some(k) = fields.keys().find(|k| !is_field_name(k)) {
        return Err(format!("events[{i}].fields.{k}: not a field API name"));
    }
    if let Some((k, _)) = fields
        .iter()
        .find(|(_, v)| matches!(v, J::Array(_) | J::Object(_)))
    {
        return Err(format!(
            "events[{i}].fields.{k}: platform event fields take text, numbers, booleans or null"
        ));
    }
    Ok((key, fields))
}

pub async fn publish_events(
    State(s): S,
    caller: Caller,
    p: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    caller.require_writer()?;
    let Path(name) = p.map_err(ApiError::from)?;
    if !s.publishable.contains(&name) {
        return Err(ApiError::not_found(format!(
            "'{name}' is not a platform event sfsync publishes ([platform_events] publish = [{}])",
            s.publishable
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let header_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if !k.trim().is_empty() && k.len() <= 200 => Some(k.trim().to_string()),
            _ => {
                return Err(ApiError::bad_request(
                    "Idempotency-Key: not a non-empty text of at most 200 characters",
                ))
            }
        },
    };
    let body = json_body(body)?;
    let o = body.as_object().expect("json_body returns an object");
    if let Some(k) = o.keys().find(|k| k.as_str() != "events") {
        return Err(ApiError::bad_request(format!(
            "{k}: unknown field, expected events"
        )));
    }
    let events = match o.get("events") {
        Some(J::Array(a)) if !a.is_empty() => a,
        Some(J::Array(_)) => return Err(ApiError::bad_request("events: the batch is empty")),
        _ => return Err(ApiError::bad_request("events: missing or not an array")),
    };
    if events.len() > s.max_events_per_request {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "events: {} events is over the maximum of {} per request ([platform_events] max_events_per_request)",
                events.len(),
                s.max_events_per_request
            ),
        ));
    }
    // All or nothing: one bad event rejects the request (nothing stored), naming it.
    let mut parsed = Vec::with_capacity(events.len());
    for (i, v) in events.iter().enumerate() {
        let (key, fields) =
            parse_event(i, v, header_key.as_deref()).map_err(ApiError::bad_request)?;
        if parsed
            .iter()
            .any(|e: &NewOutboundEvent| e.idempotency_key == key)
        {
            return Err(ApiError::bad_request(format!(
                "events[{i}].idempotency_key: '{key}' is used twice in the request"
            )));
        }
        parsed.push(NewOutboundEvent {
            name: name.clone(),
            idempotency_key: key,
            source: format!("api:{}", caller.name),
            fields,
        });
    }
    let keys: Vec<&str> = parsed.iter().map(|e| e.idempotency_key.as_str()).collect();
    audit(
        &s,
        &caller,
        "events.publish",
        format!("platform event {name}"),
        json!({ "events": parsed.len(), "idempotency_keys": keys }),
    )
    .await?;
    let stored = s
        .store
        .enqueue_outbound(&parsed)
        .await
        .map_err(|e| ApiError::internal("storing the events", e))?;
    let accepted = stored.iter().filter(|e| e.created).count();
    if let Some(ev) = &s.events {
        ev.stats
            .enqueued
            .fetch_add(accepted as u64, std::sync::atomic::Ordering::Relaxed);
        if let Some(w) = &ev.publisher {
            w.notify_one();
        }
    }
    let results: Vec<J> = stored
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut j = event_json(&e.event);
            j["index"] = json!(i);
            j["status"] = json!(if e.created { "accepted" } else { "duplicate" });
            j
        })
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "event": name,
            "accepted": accepted,
            "duplicates": stored.len() - accepted,
            "results": results,
        })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only this event.
    event: Option<String>,
    /// pending, published, dead or discarded.
    state: Option<String>,
    /// Ids above this (paging, oldest first).
    after: Option<i64>,
    limit: Option<usize>,
}

pub async fn list_events(
    State(s): S,
    caller: Caller,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult {
    caller.require_viewer()?;
    let q = query(q)?;
    let states = match q.state.as_deref() {
        None => Vec::new(),
        Some(st) => vec![OutboundState::parse(st).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state '{st}': use pending, published, dead or discarded"
            ))
        })?],
    };
    let limit = match q.limit {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "limit {n}: must be 1 to 1000"
            )))
        }
    };
    let rows = s
        .store
        .outbound_events(&OutboundFilter {
            name: q.event,
            states,
            after: q.after,
            limit,
        })
        .await
        .map_err(|e| ApiError::internal("reading the events", e))?;
    let counts = s
        .store
        .outbound_counts()
        .await
        .map_err(|e| ApiError::internal("counting the events", e))?;
    ok(json!({
        "events": rows.iter().map(event_json).collect::<Vec<_>>(),
        "counts": counts,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_need_a_key_and_plain_fields() {
        let (k, f) = parse_event(
            0,
            &json!({"idempotency_key": "a", "fields": {"X__c": 1}}),
            None,
        )
        .unwrap();
        assert_eq!((k.as_str(), f["X__c"].clone()), ("a", json!(1)));
        let (k, _) = parse_event(3, &json!({"fields": {}}), Some("req-1")).unwrap();
        assert_eq!(k, "req-1:3");
        let e = parse_event(2, &json!({"fields": {}}), None).unwrap_err();
        assert!(e.starts_with("events[2].idempotency_key"), "{e}");
        let e = parse_event(
            0,
            &json!({"idempotency_key": "a", "fields": {"X": [1]}}),
            None,
        )
        .unwrap_err();
        assert!(e.starts_with("events[0].fields.X"), "{e}");
        let e = parse_event(0, &json!({"idempotency_key": "a", "extra": 1}), None).unwrap_err();
        assert!(e.contains("events[0].extra"), "{e}");
        let e = parse_event(
            0,
            &json!({"idempotency_key": "a", "fields": {"1x": 1}}),
            None,
        )
        .unwrap_err();
        assert!(e.contains("fields.1x"), "{e}");
    }
}
