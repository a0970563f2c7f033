//! The API of a deployment (several orgs in one process, see `deploy_cmd`): one listener with
//! - `GET /metrics`: every org's exposition as one, each sample labelled `org="<name>"`, plus
//!   `sfsync_org_up{org}` and `sfsync_org_start_failures_total{org}` for every org, running
//!   or not;
//! - `GET /api/v1/orgs`: each org's state (starting, running, failed with the error and the
//!   next attempt, stopping);
//! - `/orgs/<name>/…`: that org's whole API (status, runs, writes, read API, OData, …), exactly
//!   as a one-org process serves it at `/…`; 503 while the org is not running.
//!
//! Auth: the deployment's `[[api.tokens]]`; `/metrics` is public only with
//! `[api] metrics_public = true`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde::Serialize;
use tower::ServiceExt as _;

use super::auth::{bearer, find, KnownToken};
use super::error::ApiError;
use super::metrics::{exposition, merge_labelled, CONTENT_TYPE};
use super::ApiState;
use crate::config::validate::ApiRole;

/// One org's place in the deployment: its state, and its API once it runs.
pub struct OrgSlot {
    pub name: String,
    pub status: parking_lot::Mutex<OrgStatus>,
    /// The running service's API state and router (`None` while it is not running).
    pub api: parking_lot::RwLock<Option<(Arc<ApiState>, Router)>>,
    /// The running service's counters (for progress lines and the stats file).
    pub stats: parking_lot::Mutex<Option<Arc<sfsync_pipeline::PipelineStats>>>,
}

/// What `GET /api/v1/orgs` says of one org.
#[derive(Debug, Clone, Serialize)]
pub struct OrgStatus {
    /// `starting`, `running`, `failed` (waiting for its next attempt), `stopping`, `stopped`.
    pub state: &'static str,
    /// Milliseconds since the epoch when the org entered this state.
    pub since_ms: i64,
    pub run_id: Option<String>,
    /// Start attempts that failed since the process started.
    pub start_failures: u64,
    /// The last start failure, with its cause chain.
    pub last_error: Option<String>,
    /// When the next start attempt is due (state `failed`).
    pub next_attempt_ms: Option<i64>,
}

impl OrgSlot {
    pub fn new(name: &str) -> OrgSlot {
        OrgSlot {
            name: name.to_string(),
            status: parking_lot::Mutex::new(OrgStatus {
                state: "starting",
                since_ms: now_ms(),
                run_id: None,
                start_failures: 0,
                last_error: None,
                next_attempt_ms: None,
            }),
            api: parking_lot::RwLock::new(None),
            stats: parking_lot::Mutex::new(None),
        }
    }

    /// Moves to `state` (keeping the failure count and last error).
    pub fn set(&self, state: &'static str, run_id: Option<String>) {
        let mut s = self.status.lock();
        s.state = state;
        s.since_ms = now_ms();
        s.run_id = run_id;
        s.next_attempt_ms = None;
    }

    /// Records a failed start; the next attempt is due in `retry_in`.
    pub fn failed(&self, error: String, retry_in: std::time::Duration) {
        let mut s = self.status.lock();
        s.state = "failed";
        s.since_ms = now_ms();
        s.run_id = None;
        s.start_failures += 1;
        s.last_error = Some(error);
        s.next_attempt_ms = Some(now_ms() + retry_in.as_millis() as i64);
    }

    /// Serves `state` under `/orgs/<name>/` (with the body limit of `max_body_bytes`).
    pub fn serve(&self, state: Arc<ApiState>, max_body_bytes: usize) {
        let router = super::router(state.clone(), max_body_bytes);
        *self.api.write() = Some((state, router));
    }

    /// Stops serving the org's API.
    pub fn unserve(&self) {
        *self.api.write() = None;
    }
}

/// The deployment API's state.
pub struct DeploymentState {
    pub orgs: Vec<Arc<OrgSlot>>,
    pub tokens: Vec<KnownToken>,
    pub metrics_public: bool,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A viewer (or operator) token, or the refusal.
fn require_viewer(s: &DeploymentState, headers: &HeaderMap) -> Result<(), ApiError> {
    let mut parts = Request::new(()).into_parts().0;
    parts.headers = headers.clone();
    let presented = bearer(&parts)?;
    match find(&s.tokens, presented) {
        Some(t) if matches!(t.role, ApiRole::Viewer | ApiRole::Operator) => Ok(()),
        Some(t) => Err(ApiError::forbidden(format!(
            "token '{}' is a writer token: the deployment's status and metrics need a viewer or \
             operator token",
            t.name
        ))),
        None => {
            tracing::warn!("Deployment API: a request with an unknown bearer token was refused.");
            Err(ApiError::unauthorized("the bearer token is not valid"))
        }
    }
}

/// The deployment API's router.
pub fn router(state: Arc<DeploymentState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/orgs", get(orgs))
        .route("/orgs/{org}", any(org_root))
        .route("/orgs/{org}/", any(org_root))
        .route("/orgs/{org}/{*rest}", any(org_api))
        .fallback(|| async {
            ApiError::not_found(
                "no such route: a deployment serves /metrics, /api/v1/orgs and each org's API \
                 under /orgs/<name>/",
            )
        })
        .with_state(state)
}

async fn metrics(
    State(s): State<Arc<DeploymentState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !s.metrics_public {
        require_viewer(&s, &headers)?;
    }
    let mut own = String::new();
    own.push_str(
        "# HELP sfsync_org_up Whether the org's service is running in this process (1) or not \
         (0: starting, failed or stopping).\n# TYPE sfsync_org_up gauge\n",
    );
    for o in &s.orgs {
        let up = o.status.lock().state == "running";
        own.push_str(&format!(
            "sfsync_org_up{{org=\"{}\"}} {}\n",
            o.name,
            u8::from(up)
        ));
    }
    own.push_str(
        "# HELP sfsync_org_start_failures_total Start attempts of the org's service that failed \
         (each is retried with backoff).\n# TYPE sfsync_org_start_failures_total counter\n",
    );
    for o in &s.orgs {
        own.push_str(&format!(
            "sfsync_org_start_failures_total{{org=\"{}\"}} {}\n",
            o.name,
            o.status.lock().start_failures
        ));
    }
    let mut parts: Vec<(String, String)> = Vec::new();
    for o in &s.orgs {
        let state = o.api.read().as_ref().map(|(st, _)| st.clone());
        let Some(state) = state else { continue };
        // One org's store failing leaves the others' figures readable.
        match exposition(&state).await {
            Ok(text) => parts.push((o.name.clone(), text)),
            Err(e) => {
                tracing::warn!(org = %o.name, error = %e.message, "Deployment metrics: the org's exposition failed; it is left out of this scrape.")
            }
        }
    }
    let refs: Vec<(&str, &str)> = parts
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    own.push_str(&merge_labelled("org", &refs));
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], own).into_response())
}

async fn orgs(
    State(s): State<Arc<DeploymentState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_viewer(&s, &headers)?;
    let list: Vec<serde_json::Value> = s
        .orgs
        .iter()
        .map(|o| {
            let mut v = serde_json::to_value(&*o.status.lock()).unwrap_or_default();
            v["name"] = serde_json::Value::String(o.name.clone());
            v
        })
        .collect();
    Ok(Json(serde_json::json!({ "orgs": list })).into_response())
}

async fn org_root(
    State(s): State<Arc<DeploymentState>>,
    UrlPath(org): UrlPath<String>,
    req: Request<Body>,
) -> Response {
    forward(&s, &org, "", req).await
}

async fn org_api(
    State(s): State<Arc<DeploymentState>>,
    UrlPath((org, rest)): UrlPath<(String, String)>,
    req: Request<Body>,
) -> Response {
    forward(&s, &org, &rest, req).await
}

/// Hands the request to the org's own router with the `/orgs/<name>` prefix taken off.
async fn forward(s: &DeploymentState, org: &str, rest: &str, mut req: Request<Body>) -> Response {
    let Some(slot) = s.orgs.iter().find(|o| o.name == org) else {
        let names: Vec<&str> = s.orgs.iter().map(|o| o.name.as_str()).collect();
        return ApiError::not_found(format!(
            "no org '{org}' in this deployment (orgs: {})",
            names.join(", ")
        ))
        .into_response();
    };
    let router = slot.api.read().as_ref().map(|(_, r)| r.clone());
    let Some(router) = router else {
        let st = slot.status.lock().clone();
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "org_unavailable",
            format!(
                "org '{org}' is not running ({}{})",
                st.state,
                st.last_error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        );
        e.retry_after = Some(5);
        return e.into_response();
    };
    let path_and_query = match req.uri().query() {
        Some(q) => format!("/{rest}?{q}"),
        None => format!("/{rest}"),
    };
    match path_and_query.parse::<Uri>() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return ApiError::bad_request("the request path is not valid").into_response(),
    }
    // Links the org's API builds (OData's @odata.nextLink and context) stay under its prefix.
    let prefix = req
        .headers()
        .get("x-forwarded-prefix")
        .and_then(|h| h.to_str().ok())
        .map(|p| p.trim_end_matches('/').to_string())
        .unwrap_or_default();
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("{prefix}/orgs/{org}")) {
        req.headers_mut().insert("x-forwarded-prefix", v);
    }
    match router.oneshot(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    }
}
