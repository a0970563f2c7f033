//! Admin API for Outbound Messages (`/admin/outbound-messages…`): the rules, the delivery
//! settings and the delivery queue (see [`crate::outbound`]).
//!
//! Guarantee: as every admin endpoint — the admin token is required, bad input gets a 400
//! naming the problem and changes nothing, and rules apply to transactions committed after the
//! call.

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::admin::Admin;
use crate::http::error::ApiError;
use crate::http::rest::{method_not_allowed, parse_json_body};
use crate::outbound::{OutboundSettings, RuleSpec};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/outbound-messages", get(overview))
        .route("/admin/outbound-messages/rules", put(put_rules))
        .route("/admin/outbound-messages/settings", put(put_settings))
        .route(
            "/admin/outbound-messages/queue",
            get(queue).delete(clear_queue),
        )
        .route("/admin/outbound-messages/retry-now", post(retry_now))
        .method_not_allowed_fallback(method_not_allowed)
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(400, "INVALID_INPUT", msg.into())
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, ApiError> {
    let v = parse_json_body(body)?;
    serde_json::from_value(v).map_err(|e| bad(format!("{what}: {e}")))
}

fn overview_json(state: &AppState) -> Value {
    let om = &state.outbound;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let s = &om.stats;
    json!({
        "rules": om.rules().into_iter().map(|(spec, action_id)| {
            let mut v = serde_json::to_value(&spec).unwrap_or(Value::Null);
            v["action_id"] = json!(action_id);
            v
        }).collect::<Vec<_>>(),
        "settings": om.settings(),
        "queue_length": om.queue().len(),
        "stats": {
            "queued": n(&s.queued),
            "messages_sent": n(&s.messages_sent),
            "messages_acked": n(&s.messages_acked),
            "messages_failed": n(&s.messages_failed),
            "notifications_acked": n(&s.notifications_acked),
            "notifications_expired": n(&s.notifications_expired),
        },
    })
}

async fn overview(_a: Admin, State(state): State<AppState>) -> Json<Value> {
    Json(overview_json(&state))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rules {
    rules: Vec<RuleSpec>,
}

/// Replaces every rule: `{"rules": [{"name", "object", "fields", "endpoint_url", "trigger"?,
/// "changed_fields"?, "active"?}]}`.
async fn put_rules(
    _a: Admin,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let r: Rules = parse(&body, "outbound message rules")?;
    state.outbound.set_rules(&state.org, r.rules).map_err(bad)?;
    Ok(Json(overview_json(&state)))
}

async fn put_settings(
    _a: Admin,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let s: OutboundSettings = parse(&body, "outbound message settings")?;
    state.outbound.set_settings(s).map_err(bad)?;
    Ok(Json(overview_json(&state)))
}

async fn queue(_a: Admin, State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "queue": state.outbound.queue() }))
}

async fn clear_queue(_a: Admin, State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "cleared": state.outbound.clear_queue() }))
}

async fn retry_now(_a: Admin, State(state): State<AppState>) -> Json<Value> {
    state.outbound.retry_now();
    Json(overview_json(&state))
}
