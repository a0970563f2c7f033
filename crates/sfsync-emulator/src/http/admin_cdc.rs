//! Admin API for CDC and Pub/Sub (`/admin/cdc/…`, `/admin/platform-events`): which objects are
//! CDC-enabled, gap fault injection, delivery allocation, retention, platform-event definitions
//! and custom channels (`/admin/platform-events/channels`).
//!
//! Guarantee: same as the other admin endpoints — the admin token is required, bad input gets
//! a 400 naming the problem, and changes apply to events committed after the call.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cdc::bus::ChannelDef;
use crate::cdc::schema::PlatformField;
use crate::http::admin::Admin;
use crate::http::error::ApiError;
use crate::http::rest::{method_not_allowed, parse_json_body};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/cdc", get(get_cdc).put(put_cdc))
        .route("/admin/cdc/faults", get(get_faults).post(post_faults))
        .route("/admin/cdc/reset-deliveries", post(reset_deliveries))
        .route("/admin/cdc/inject", post(inject))
        .route(
            "/admin/platform-events",
            get(list_platform_events).post(define_platform_event),
        )
        .route("/admin/platform-events/channels", post(define_channel))
        .method_not_allowed_fallback(method_not_allowed)
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(400, "INVALID_INPUT", msg.into())
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, ApiError> {
    let v = parse_json_body(body)?;
    serde_json::from_value(v).map_err(|e| bad(format!("{what}: {e}")))
}

fn view(state: &AppState) -> Value {
    let bus = &state.cdc;
    let c = bus.config();
    let (max, remaining) = bus.delivery_usage();
    let s = &bus.stats;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    json!({
        "enabled_objects": c.enabled_objects,
        "retention_secs": c.retention.as_secs_f64(),
        "max_event_bytes": c.max_event_bytes,
        "overflow_threshold": c.overflow_threshold,
        "daily_delivery_allocation": max,
        "daily_delivery_remaining": remaining,
        "keepalive_interval_secs": c.keepalive_interval.as_secs_f64(),
        "idle_timeout_secs": c.idle_timeout.as_secs_f64(),
        "service_available": c.service_available,
        "latest_replay_id": bus.latest_id(),
        "events": n(&s.events),
        "gaps": n(&s.gaps),
        "overflows": n(&s.overflows),
        "merged_records": n(&s.merged_records),
        "delivered": n(&s.delivered),
        "pubsub_address": format!("{}", state.config.grpc_addr),
    })
}

async fn get_cdc(_a: Admin, State(state): State<AppState>) -> Json<Value> {
    Json(view(&state))
}

/// Partial update; absent keys keep their value. `enabled_objects: null` enables every object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CdcUpdate {
    #[serde(default, with = "double_option")]
    enabled_objects: Option<Option<Vec<String>>>,
    retention_secs: Option<f64>,
    max_event_bytes: Option<usize>,
    overflow_threshold: Option<u64>,
    daily_delivery_allocation: Option<u64>,
    keepalive_interval_secs: Option<f64>,
    idle_timeout_secs: Option<f64>,
    service_available: Option<bool>,
}

mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

fn secs(v: f64, what: &str) -> Result<Duration, ApiError> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(bad(format!(
            "{what} must be a positive number of seconds, got {v}"
        )))
    }
}

async fn put_cdc(
    _a: Admin,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let u: CdcUpdate = parse(&body, "CDC settings")?;
    let mut c = state.cdc.config();
    if let Some(objs) = u.enabled_objects {
        if let Some(list) = &objs {
            let schema = state.org.schema();
            for o in list {
                if schema.object(o).is_none() {
                    return Err(bad(format!("enabled_objects: unknown object {o:?}")));
                }
            }
        }
        c.enabled_objects = objs;
    }
    if let Some(v) = u.retention_secs {
        c.retention = secs(v, "retention_secs")?;
    }
    if let Some(v) = u.max_event_bytes {
        c.max_event_bytes = v;
    }
    if let Some(v) = u.overflow_threshold {
        c.overflow_threshold = v;
    }
    if let Some(v) = u.daily_delivery_allocation {
        c.daily_delivery_allocation = v;
    }
    if let Some(v) = u.keepalive_interval_secs {
        c.keepalive_interval = secs(v, "keepalive_interval_secs")?;
    }
    if let Some(v) = u.idle_timeout_secs {
        c.idle_timeout = secs(v, "idle_timeout_secs")?;
    }
    if let Some(v) = u.service_available {
        c.service_available = v;
    }
    state.cdc.set_config(c);
    Ok(Json(view(&state)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GapFaults {
    gap_rate: Option<f64>,
    gap_next: Option<u64>,
}

async fn get_faults(_a: Admin, State(state): State<AppState>) -> Json<Value> {
    let (rate, next) = state.cdc.gap_faults();
    Json(json!({"gap_rate": rate, "gap_next": next}))
}

async fn post_faults(
    _a: Admin,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let f: GapFaults = parse(&body, "CDC faults")?;
    if let Some(r) = f.gap_rate {
        if !(0.0..=1.0).contains(&r) {
            return Err(bad(format!("gap_rate must be between 0 and 1, got {r}")));
        }
        state.cdc.set_gap_rate(r);
    }
    if let Some(n) = f.gap_next {
        state.cdc.set_gap_next(n);
    }
    let (rate, next) = state.cdc.gap_faults();
    Ok(Json(json!({"gap_rate": rate, "gap_next": next})))
}

async fn reset_deliveries(_a: Admin, State(state): State<AppState>) -> Json<Value> {
    state.cdc.reset_deliveries();
    Json(view(&state))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlatformEventDef {
    name: String,
    #[serde(default)]
    fields: Vec<PlatformField>,
}

async fn list_platform_events(_a: Admin, State(state): State<AppState>) -> Json<Value> {
    let list: Vec<Value> = state
        .cdc
        .platform_events()
        .into_iter()
        .filter_map(|n| {
            let s = state.cdc.platform_schema(&n)?;
            Some(json!({"name": n, "topic": format!("/event/{n}"), "schema_id": s.id}))
        })
        .collect();
    let channels: Vec<Value> = state
        .cdc
        .channels()
        .into_iter()
        .map(|c| {
            let prefix = if c.platform { "/event/" } else { "/data/" };
            json!({"name": c.name, "topic": format!("{prefix}{}", c.name), "members": c.members})
        })
        .collect();
    Json(json!({ "platform_events": list, "channels": channels }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelRequest {
    name: String,
    /// `platform_event` (default; `/event/<Name>__chn`) or `change_event` (`/data/<Name>__chn`).
    #[serde(default)]
    kind: Option<String>,
    members: Vec<String>,
}

async fn define_channel(
    _a: Admin,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let r: ChannelRequest = parse(&body, "custom channel")?;
    let platform = match r.kind.as_deref() {
        None | Some("platform_event") => true,
        Some("change_event") => false,
        Some(other) => {
            return Err(bad(format!(
                "kind {other:?}: expected platform_event or change_event"
            )))
        }
    };
    if !platform {
        let schema = state.org.schema();
        if let Some(m) = r.members.iter().find(|m| schema.object(m).is_none()) {
            return Err(bad(format!("members: unknown object {m:?}")));
        }
    }
    let topic = state
        .cdc
        .define_channel(ChannelDef {
            name: r.name,
            platform,
            members: r.members,
        })
        .map_err(bad)?;
    Ok(Json(json!({"topic": topic.name()})))
}

async fn define_platform_event(
    _a: Admin,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let d: PlatformEventDef = parse(&body, "platform event definition")?;
    let s = state
        .cdc
        .define_platform_event(&d.name, d.fields)
        .map_err(bad)?;
    Ok(Json(json!({
        "name": d.name,
        "topic": format!("/event/{}", d.name),
        "schema_id": s.id,
        "schema": serde_json::from_str::<Value>(&s.json).unwrap_or(Value::Null),
    })))
}

/// Fault injection: a change event with arbitrary payload bytes (hex), as a broken producer
/// would publish, so subscribers' dead-letter handling can be exercised end to end.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Inject {
    entity: String,
    payload_hex: String,
    #[serde(default)]
    schema_id: Option<String>,
}

async fn inject(
    _a: Admin,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let i: Inject = parse(&body, "injected event")?;
    let payload = hex::decode(i.payload_hex.trim())
        .map_err(|e| bad(format!("payload_hex is not hex: {e}")))?;
    let schema = state.org.schema();
    if schema.object(&i.entity).is_none() {
        return Err(bad(format!("entity: unknown object {:?}", i.entity)));
    }
    let id = state
        .cdc
        .inject_change_event(&schema, &i.entity, i.schema_id.as_deref(), payload.into())
        .ok_or_else(|| bad(format!("{} has no change event schema", i.entity)))?;
    Ok(Json(json!({"replay_id": id, "entity": i.entity})))
}
