//! The HTTP core every Salesforce call goes through.
//!
//! Guarantees: each request carries a Bearer token from the [`TokenSource`]; a 401
//! `INVALID_SESSION_ID` answer causes one re-authentication (shared by concurrent callers) and
//! exactly one retry of that request; 403 `REQUEST_LIMIT_EXCEEDED` never causes a re-login. Every
//! response's `Sforce-Limit-Info` header updates the shared [`ApiUsage`], which callers read or
//! watch. Errors name the method and path and carry the class from the one error-code table.
//! Automatic retries (exponential backoff with jitter, bounded) apply only to idempotent requests
//! and only to errors of class `Retry`.
//!
//! Every counted call (everything except the OAuth token endpoint) first takes a permit from the
//! client's [`Governor`] in the client's [`Lane`] (see [`SalesforceClient::lane`]). A 403
//! `REQUEST_LIMIT_EXCEEDED` is never returned to the caller: the call waits until the governor
//! sees room again and is sent again (Salesforce refuses such calls before doing any work, so
//! this is safe for non-idempotent requests too).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sfsync_core::ErrorClass;

use crate::auth::{AccessToken, Credentials, TokenSource};
use crate::error::{parse_error_body, snippet, Result, SalesforceError};
use crate::governor::{BudgetConfig, BudgetStatus, Governor, Lane, Permit, ProbeGuard};

/// Times one call is deferred after `REQUEST_LIMIT_EXCEEDED` refusals before the refusal is
/// returned: each deferral waits until `/limits` shows room, so refusals beyond this are not the
/// daily allocation the governor tracks (another limit, or a proxy answering for Salesforce).
pub const MAX_LIMIT_DEFERRALS: u32 = 3;

/// Default REST API version.
pub const DEFAULT_API_VERSION: &str = "66.0";

/// Client settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Base URL for API calls. `None` uses the `instance_url` of the token response.
    pub instance_url: Option<String>,
    /// API version without the `v`, e.g. `66.0`.
    pub api_version: String,
    /// Extra trusted CA certificates (PEM file), added to the platform roots. The emulator writes
    /// `DIR/ca.pem`.
    pub ca_pem: Option<PathBuf>,
    /// Sent as `Sforce-Call-Options: client=<value>` so our own writes can be recognised in CDC.
    pub call_options_client: Option<String>,
    pub connect_timeout_secs: u64,
    /// Whole-request timeout for ordinary calls (Salesforce's own limit is 10 min).
    pub request_timeout_secs: u64,
    pub user_agent: String,
    /// Retry policy for idempotent calls on `Retry`-class errors.
    pub retry: RetryPolicy,
    /// The API budget the governor enforces.
    pub budget: BudgetConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            instance_url: None,
            api_version: DEFAULT_API_VERSION.to_string(),
            ca_pem: None,
            call_options_client: None,
            connect_timeout_secs: 10,
            request_timeout_secs: 600,
            user_agent: format!("sfsync/{}", env!("CARGO_PKG_VERSION")),
            retry: RetryPolicy::default(),
            budget: BudgetConfig::default(),
        }
    }
}

impl ClientConfig {
    /// Settings for a base URL and an optional extra CA file.
    pub fn new(instance_url: impl Into<String>, ca_pem: Option<PathBuf>) -> Self {
        ClientConfig {
            instance_url: Some(instance_url.into()),
            ca_pem,
            ..ClientConfig::default()
        }
    }
}

/// Exponential backoff with full jitter, bounded in attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Total attempts including the first; 1 disables retries.
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub multiplier: f64,
    /// Randomise each wait in `[wait/2, wait]`.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff_ms: 250,
            max_backoff_ms: 10_000,
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Wait before retry number `retry` (1-based).
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(retry.saturating_sub(1).min(60) as i32);
        let base = (self.initial_backoff_ms as f64 * exp).min(self.max_backoff_ms as f64);
        let ms = if self.jitter {
            base * (0.5 + rand::random::<f64>() * 0.5)
        } else {
            base
        };
        Duration::from_millis(ms.max(0.0) as u64)
    }

    /// Runs `op` until it succeeds, fails with a non-`Retry` error, or attempts run out.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        loop {
            match op(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) if e.class() == ErrorClass::Retry && attempt < self.max_attempts.max(1) => {
                    let wait = self.backoff(attempt);
                    tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, error = %e.report(), "Retrying a Salesforce call after a transient error.");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// API request usage reported by `Sforce-Limit-Info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiUsage {
    pub used: u64,
    pub max: u64,
    /// `per-app-api-usage`, when the connected app has its own allocation.
    pub per_app: Option<PerAppUsage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerAppUsage {
    pub used: u64,
    pub max: u64,
    pub app_name: String,
}

impl ApiUsage {
    /// Requests left in the org-wide allocation.
    pub fn remaining(&self) -> u64 {
        self.max.saturating_sub(self.used)
    }
}

/// Parses `api-usage=18/5000[; per-app-api-usage=17/250(appName=x)]`. Unknown parts are ignored;
/// returns None when `api-usage` is absent or malformed.
pub fn parse_limit_info(header: &str) -> Option<ApiUsage> {
    fn ratio(s: &str) -> Option<(u64, u64)> {
        let (a, b) = s.trim().split_once('/')?;
        Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
    }
    let mut usage: Option<(u64, u64)> = None;
    let mut per_app = None;
    for part in header.split([';', ',']) {
        let Some((key, value)) = part.split_once('=') else {
            continue;
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "api-usage" => usage = ratio(value),
            "per-app-api-usage" => {
                // Value is `17/250(appName=x)`; the split on '=' cut at the first one only.
                let (nums, rest) = match value.find('(') {
                    Some(i) => (&value[..i], &value[i + 1..]),
                    None => (value, ""),
                };
                if let Some((used, max)) = ratio(nums) {
                    let name = rest
                        .trim_end()
                        .trim_end_matches(')')
                        .split_once('=')
                        .map(|(_, n)| n.trim().to_string())
                        .unwrap_or_default();
                    per_app = Some(PerAppUsage {
                        used,
                        max,
                        app_name: name,
                    });
                }
            }
            _ => {}
        }
    }
    let (used, max) = usage?;
    Some(ApiUsage { used, max, per_app })
}

/// One entry of `GET /limits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitValue {
    pub max: i64,
    pub remaining: i64,
    /// Per connected-app sub-limits, by app name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_app: BTreeMap<String, LimitValue>,
}

impl LimitValue {
    pub fn used(&self) -> i64 {
        self.max - self.remaining
    }
}

/// The `GET /limits` resource, by limit name (`DailyApiRequests`, `DailyBulkV2QueryJobs`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits(pub BTreeMap<String, LimitValue>);

impl Limits {
    pub fn get(&self, name: &str) -> Option<&LimitValue> {
        self.0.get(name)
    }

    /// Parses the JSON object `{"Name": {"Max": n, "Remaining": n, "<App>": {…}}}`. Entries
    /// without `Max`/`Remaining` are skipped.
    pub fn from_json(v: &serde_json::Value) -> Option<Limits> {
        fn entry(v: &serde_json::Value) -> Option<LimitValue> {
            let o = v.as_object()?;
            let max = o.get("Max")?.as_i64()?;
            let remaining = o.get("Remaining")?.as_i64()?;
            let per_app = o
                .iter()
                .filter(|(k, _)| *k != "Max" && *k != "Remaining")
                .filter_map(|(k, v)| entry(v).map(|e| (k.clone(), e)))
                .collect();
            Some(LimitValue {
                max,
                remaining,
                per_app,
            })
        }
        let o = v.as_object()?;
        Some(Limits(
            o.iter()
                .filter_map(|(k, v)| entry(v).map(|e| (k.clone(), e)))
                .collect(),
        ))
    }
}

/// A request body.
#[derive(Debug, Clone, Default)]
pub enum Body {
    #[default]
    Empty,
    /// Serialized JSON.
    Json(Bytes),
    /// CSV (Bulk uploads).
    Csv(Bytes),
}

impl Body {
    /// Serializes `v` as JSON.
    pub fn json<T: Serialize + ?Sized>(v: &T) -> Result<Body> {
        serde_json::to_vec(v)
            .map(|b| Body::Json(Bytes::from(b)))
            .map_err(|e| SalesforceError::invalid("request body", format!("cannot serialize: {e}")))
    }
}

/// A request relative to the instance.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: Method,
    /// Path from the host (`/services/data/v66.0/...`), or a full `http(s)://` URL.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Body,
    /// Whether the request may be repeated safely (enables automatic retries).
    pub idempotent: bool,
    /// Overrides the client's request timeout (e.g. long result downloads).
    pub timeout: Option<Duration>,
}

impl ApiRequest {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        let idempotent = matches!(method, Method::GET | Method::HEAD | Method::DELETE);
        ApiRequest {
            method,
            path: path.into(),
            query: Vec::new(),
            headers: Vec::new(),
            body: Body::Empty,
            idempotent,
            timeout: None,
        }
    }

    pub fn query(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((key.into(), value.into()));
        self
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    pub fn idempotent(mut self, yes: bool) -> Self {
        self.idempotent = yes;
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// The path without query string, for error messages.
    fn place(&self) -> String {
        self.path.split('?').next().unwrap_or("").to_string()
    }
}

/// A successful response: status, headers and a body still to be read.
pub struct ApiResponse {
    pub method: Method,
    pub path: String,
    pub response: reqwest::Response,
    /// Held until the body is read or dropped, so lane concurrency caps cover downloads.
    _permit: Option<Permit>,
}

impl ApiResponse {
    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    pub fn headers(&self) -> &HeaderMap {
        self.response.headers()
    }

    /// A header as text.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
    }

    /// Reads the whole body.
    pub async fn bytes(self) -> Result<(StatusCode, Bytes)> {
        let status = self.response.status();
        let method = self.method;
        let path = self.path;
        let b = self
            .response
            .bytes()
            .await
            .map_err(|source| SalesforceError::Transport {
                method: method.to_string(),
                path,
                reason: "reading the response body failed",
                source,
            })?;
        Ok((status, b))
    }

    /// Reads and decodes a JSON body.
    pub async fn json<T: DeserializeOwned>(self) -> Result<T> {
        let method = self.method.to_string();
        let path = self.path.clone();
        let (status, body) = self.bytes().await?;
        decode_json(&method, &path, status.as_u16(), &body)
    }

    /// Reads the next chunk of the body (for streaming).
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        self.response
            .chunk()
            .await
            .map_err(|source| SalesforceError::Transport {
                method: self.method.to_string(),
                path: self.path.clone(),
                reason: "reading the response body failed",
                source,
            })
    }
}

pub(crate) fn decode_json<T: DeserializeOwned>(
    method: &str,
    path: &str,
    status: u16,
    body: &[u8],
) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        SalesforceError::decode(
            method,
            path,
            status,
            format!("{e}; body starts: {}", snippet(body)),
        )
    })
}

struct Inner {
    http: reqwest::Client,
    config: ClientConfig,
    tokens: TokenSource,
    usage: tokio::sync::watch::Sender<Option<ApiUsage>>,
    call_options: Option<HeaderValue>,
    governor: Governor,
}

/// A Salesforce API client. Cheap to clone; clones share the token, the API usage and the budget
/// governor. Each clone tags its calls with a [`Lane`] (default [`Lane::Default`]).
#[derive(Clone)]
pub struct SalesforceClient {
    inner: Arc<Inner>,
    lane: Lane,
}

impl std::fmt::Debug for SalesforceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SalesforceClient")
            .field("instance_url", &self.inner.config.instance_url)
            .field("api_version", &self.inner.config.api_version)
            .field("tokens", &self.inner.tokens)
            .finish()
    }
}

/// Builds the reqwest client: rustls with platform roots plus `ca_pem`, HTTP/2, gzip.
pub fn build_http_client(config: &ClientConfig) -> Result<reqwest::Client> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .user_agent(config.user_agent.clone())
        .connect_timeout(Duration::from_secs(config.connect_timeout_secs.max(1)))
        .read_timeout(Duration::from_secs(config.request_timeout_secs.max(1)))
        .gzip(true)
        .pool_idle_timeout(Duration::from_secs(90));
    if let Some(path) = &config.ca_pem {
        let place = path.display().to_string();
        let pem = std::fs::read(path).map_err(|e| {
            SalesforceError::config(&place, format!("cannot read the CA file: {e}"))
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            SalesforceError::config(&place, format!("not a PEM certificate bundle: {e}"))
        })?;
        if certs.is_empty() {
            return Err(SalesforceError::config(
                &place,
                "no certificate in the CA file",
            ));
        }
        b = b.tls_certs_merge(certs);
    }
    b.build()
        .map_err(|e| SalesforceError::config("HTTP client", crate::error::error_chain(&e)))
}

impl SalesforceClient {
    /// Builds a client from settings and credentials. No network access happens here.
    pub fn new(config: ClientConfig, credentials: Credentials) -> Result<Self> {
        let http = build_http_client(&config)?;
        Self::with_http(config, credentials, http)
    }

    /// Builds a client over an existing reqwest client.
    pub fn with_http(
        config: ClientConfig,
        credentials: Credentials,
        http: reqwest::Client,
    ) -> Result<Self> {
        let call_options = match &config.call_options_client {
            Some(c) => Some(HeaderValue::from_str(&format!("client={c}")).map_err(|_| {
                SalesforceError::config("call_options_client", "not a valid header value")
            })?),
            None => None,
        };
        let tokens = TokenSource::new(http.clone(), credentials);
        let (usage, _) = tokio::sync::watch::channel(None);
        let governor = Governor::new(config.budget.clone());
        Ok(SalesforceClient {
            inner: Arc::new(Inner {
                http,
                config,
                tokens,
                usage,
                call_options,
                governor,
            }),
            lane: Lane::Default,
        })
    }

    /// A clone whose calls go through the governor in `lane` (cheap: shares everything).
    pub fn lane(&self, lane: Lane) -> SalesforceClient {
        SalesforceClient {
            inner: self.inner.clone(),
            lane,
        }
    }

    /// The lane this handle's calls use.
    pub fn current_lane(&self) -> Lane {
        self.lane
    }

    /// The budget governor shared by all clones.
    pub fn governor(&self) -> &Governor {
        &self.inner.governor
    }

    /// API budget usage, per-lane counts, deferred calls and the forecast.
    pub fn budget_status(&self) -> BudgetStatus {
        self.inner.governor.status()
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The token source (for the Pub/Sub client, which needs the token, instance and org id).
    pub fn tokens(&self) -> &TokenSource {
        &self.inner.tokens
    }

    /// The underlying reqwest client.
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// A current access token, minting one if needed.
    pub async fn access_token(&self) -> Result<Arc<AccessToken>> {
        self.inner.tokens.token().await
    }

    /// Latest API usage seen in a `Sforce-Limit-Info` header.
    pub fn api_usage(&self) -> Option<ApiUsage> {
        self.inner.usage.borrow().clone()
    }

    /// A receiver notified whenever a response reports API usage.
    pub fn watch_api_usage(&self) -> tokio::sync::watch::Receiver<Option<ApiUsage>> {
        self.inner.usage.subscribe()
    }

    /// `/services/data/v<version>/<rest>`.
    pub fn data_path(&self, rest: &str) -> String {
        format!(
            "/services/data/v{}/{}",
            self.inner.config.api_version,
            rest.trim_start_matches('/')
        )
    }

    fn base_url(&self, token: &AccessToken) -> String {
        self.inner
            .config
            .instance_url
            .as_deref()
            .unwrap_or(&token.instance_url)
            .trim_end_matches('/')
            .to_string()
    }

    /// Sends a request: auth header, call options, usage tracking, one re-auth on 401, retries for
    /// idempotent requests. Non-success statuses become errors, except 300 (returned for callers
    /// that handle multiple matches).
    ///
    /// Waits for a permit from the governor first (deferred, never failed, when the budget is
    /// tight); a `REQUEST_LIMIT_EXCEEDED` answer defers the call and sends it again later.
    pub async fn send(&self, req: ApiRequest) -> Result<ApiResponse> {
        let policy = if req.idempotent {
            self.inner.config.retry.clone()
        } else {
            RetryPolicy::none()
        };
        let mut deferrals: u32 = 0;
        loop {
            let r = policy
                .run(|_| async {
                    let permit = self.permit().await;
                    self.send_once(&req, Some(permit)).await
                })
                .await;
            match r {
                Err(SalesforceError::Api(e)) if e.error_code == "REQUEST_LIMIT_EXCEEDED" => {
                    deferrals += 1;
                    if deferrals > MAX_LIMIT_DEFERRALS {
                        // Refused again each time `/limits` showed room: not the allocation the
                        // governor tracks. The caller gets the Defer-class error.
                        tracing::warn!(method = %req.method, path = %req.place(), deferrals, "Salesforce keeps refusing a call for an API limit although /limits shows room; returning the refusal to the caller.");
                        return Err(SalesforceError::Api(e));
                    }
                    if e.message.contains("TotalRequests") {
                        tracing::warn!(method = %req.method, path = %req.place(), lane = self.lane.as_str(), deferrals, "Salesforce refused a call for the daily API limit; deferring it until the budget frees up.");
                        self.inner.governor.mark_exhausted();
                    } else {
                        // Concurrent long-running limit: back off, then try again.
                        let wait = self.inner.config.retry.backoff(deferrals.min(10));
                        tracing::warn!(method = %req.method, path = %req.place(), wait_ms = wait.as_millis() as u64, "Salesforce refused a call for concurrent long-running requests; retrying later.");
                        tokio::time::sleep(wait).await;
                    }
                }
                other => return other,
            }
        }
    }

    /// Waits for a permit in this handle's lane, running `/limits` probes the governor asks for.
    ///
    /// (See [`MAX_LIMIT_DEFERRALS`] for refusals the budget does not explain.)
    async fn permit(&self) -> Permit {
        self.inner
            .governor
            .acquire(self.lane, |guard| self.probe(guard))
            .await
    }

    /// Waits until up to `want` platform events may be published under the hourly publish
    /// budget ([`crate::governor::publish`]) and returns how many (at least 1 when `want` > 0;
    /// they are counted as published — hand back what was not with
    /// [`PublishBudget::settle`](crate::governor::publish::PublishBudget::settle)). Reads
    /// `/limits` through the governor (an API request in the default lane) when the budget asks
    /// for it. Cancellation-safe.
    pub async fn publish_allowance(&self, want: u64) -> u64 {
        use crate::governor::publish::PublishDecision;
        let budget = self.inner.governor.publish_budget();
        loop {
            let changed = budget.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match budget.decide(want, tokio::time::Instant::now()) {
                PublishDecision::Go(n) => return n,
                PublishDecision::Probe => {
                    // A cancelled read must not leave the budget waiting for it.
                    struct Abandon<'a>(&'a crate::governor::publish::PublishBudget, bool);
                    impl Drop for Abandon<'_> {
                        fn drop(&mut self) {
                            if !self.1 {
                                self.0.abandon_probe();
                            }
                        }
                    }
                    let mut guard = Abandon(budget, false);
                    let read = self.lane(Lane::Default).limits().await;
                    guard.1 = true;
                    match read
                        .as_ref()
                        .ok()
                        .and_then(|l| l.get("HourlyPublishedPlatformEvents"))
                    {
                        Some(v) => budget.observe(
                            u64::try_from(v.used()).unwrap_or(0),
                            u64::try_from(v.max).unwrap_or(0),
                        ),
                        None => {
                            match &read {
                                Err(e) => tracing::warn!(error = %e.report(), "Reading /limits for the publish budget failed."),
                                Ok(_) => tracing::warn!("/limits has no HourlyPublishedPlatformEvents; publishing under max_hourly_events and Salesforce's refusals only."),
                            }
                            budget.observe_failed();
                        }
                    }
                }
                PublishDecision::Wait(Some(at)) => {
                    tokio::select! {
                        _ = &mut changed => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                PublishDecision::Wait(None) => changed.await,
            }
        }
    }

    /// Reads `/limits` outside the lanes (the governor has already counted it).
    async fn probe(&self, guard: ProbeGuard) {
        let req = ApiRequest::new(Method::GET, self.data_path("limits"));
        let result = match self.send_once(&req, None).await {
            Ok(resp) => resp.json::<serde_json::Value>().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(v) => match Limits::from_json(&v)
                .as_ref()
                .and_then(|l| l.get("DailyApiRequests"))
            {
                Some(d) => self.inner.governor.observe(
                    u64::try_from(d.used()).unwrap_or(0),
                    u64::try_from(d.max).unwrap_or(0),
                    0,
                ),
                None => self.inner.governor.set_blind(),
            },
            Err(SalesforceError::Api(e)) if e.error_code == "REQUEST_LIMIT_EXCEEDED" => {
                self.inner.governor.mark_exhausted();
            }
            Err(e) => {
                // While usage is unknown, a failed probe (no route, TLS, login, 404) must not hold
                // the call back: it goes out under the concurrency caps and fails, or succeeds and
                // reports usage, on its own.
                tracing::warn!(error = %e.report(), "Reading /limits for the API budget failed.");
                self.inner.governor.set_blind();
            }
        }
        drop(guard);
    }

    /// Sends and decodes a JSON response.
    pub async fn send_json<T: DeserializeOwned>(&self, req: ApiRequest) -> Result<T> {
        self.send(req).await?.json().await
    }

    /// Sends and expects no meaningful body (204 or similar).
    pub async fn send_empty(&self, req: ApiRequest) -> Result<StatusCode> {
        let (status, _) = self.send(req).await?.bytes().await?;
        Ok(status)
    }

    /// `GET` a data-API path and decode JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, rest: &str) -> Result<T> {
        self.send_json(ApiRequest::new(Method::GET, self.data_path(rest)))
            .await
    }

    async fn send_once(&self, req: &ApiRequest, permit: Option<Permit>) -> Result<ApiResponse> {
        let mut token = self.inner.tokens.token().await?;
        let mut reauthed = false;
        let holding = u64::from(permit.is_some());
        loop {
            let resp = self.dispatch(req, &token, holding).await?;
            let status = resp.status();
            if status.is_success() || status == StatusCode::MULTIPLE_CHOICES {
                return Ok(ApiResponse {
                    method: req.method.clone(),
                    path: req.place(),
                    response: resp,
                    _permit: permit,
                });
            }
            let body = resp.bytes().await.unwrap_or_default();
            let err = parse_error_body(req.method.as_str(), &req.place(), status.as_u16(), &body);
            if status == StatusCode::UNAUTHORIZED
                && err.class == ErrorClass::RefreshAuth
                && !reauthed
                && !matches!(
                    self.inner.tokens.credentials(),
                    Credentials::AccessToken { .. }
                )
            {
                tracing::info!(method = %req.method, path = %req.place(), "Session expired or invalid; re-authenticating once.");
                token = self.inner.tokens.refresh(&token).await?;
                reauthed = true;
                continue;
            }
            return Err(SalesforceError::Api(Box::new(err)));
        }
    }

    async fn dispatch(
        &self,
        req: &ApiRequest,
        token: &AccessToken,
        holding: u64,
    ) -> Result<reqwest::Response> {
        let url = if req.path.starts_with("http://") || req.path.starts_with("https://") {
            req.path.clone()
        } else {
            format!(
                "{}/{}",
                self.base_url(token),
                req.path.trim_start_matches('/')
            )
        };
        let mut url = url::Url::parse(&url).map_err(|e| {
            SalesforceError::invalid(
                format!("{} {}", req.method, req.place()),
                format!("bad URL {url}: {e}"),
            )
        })?;
        if !req.query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(req.query.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        let mut rb = self
            .inner
            .http
            .request(req.method.clone(), url)
            .bearer_auth(token.access_token.expose());
        if let Some(t) = req.timeout {
            rb = rb.timeout(t);
        } else {
            rb = rb.timeout(Duration::from_secs(
                self.inner.config.request_timeout_secs.max(1),
            ));
        }
        if let Some(co) = &self.inner.call_options {
            rb = rb.header("Sforce-Call-Options", co.clone());
        }
        let mut has_accept = false;
        for (k, v) in &req.headers {
            has_accept |= k == reqwest::header::ACCEPT;
            rb = rb.header(k.clone(), v.clone());
        }
        if !has_accept {
            rb = rb.header(reqwest::header::ACCEPT, "application/json");
        }
        rb = match &req.body {
            Body::Empty => rb,
            Body::Json(b) => rb
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.clone()),
            Body::Csv(b) => rb
                .header(reqwest::header::CONTENT_TYPE, "text/csv")
                .body(b.clone()),
        };
        let resp = rb
            .send()
            .await
            .map_err(|source| SalesforceError::Transport {
                method: req.method.to_string(),
                path: req.place(),
                reason: if source.is_timeout() {
                    "request timed out"
                } else if source.is_connect() {
                    "cannot connect"
                } else {
                    "request failed"
                },
                source,
            })?;
        if let Some(usage) = resp
            .headers()
            .get("Sforce-Limit-Info")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_limit_info)
        {
            self.inner.governor.observe(usage.used, usage.max, holding);
            self.inner.usage.send_replace(Some(usage));
        }
        Ok(resp)
    }

    /// `GET /limits`.
    pub async fn limits(&self) -> Result<Limits> {
        let path = self.data_path("limits");
        let v: serde_json::Value = self.get_json("limits").await?;
        Limits::from_json(&v).ok_or_else(|| {
            SalesforceError::decode(
                "GET",
                &path,
                200,
                "the limits resource is not a JSON object",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_info_header() {
        assert_eq!(
            parse_limit_info("api-usage=18/5000"),
            Some(ApiUsage {
                used: 18,
                max: 5000,
                per_app: None
            })
        );
        let u = parse_limit_info(
            "api-usage=25/5000; per-app-api-usage=17/250(appName=sample-connected-app)",
        )
        .unwrap();
        assert_eq!(u.used, 25);
        assert_eq!(u.remaining(), 4975);
        assert_eq!(
            u.per_app,
            Some(PerAppUsage {
                used: 17,
                max: 250,
                app_name: "sample-connected-app".into()
            })
        );
        assert_eq!(parse_limit_info(" API-Usage = 1 / 2 ").unwrap().max, 2);
        assert_eq!(parse_limit_info("api-usage=x/5000"), None);
        assert_eq!(parse_limit_info(""), None);
        assert_eq!(parse_limit_info("per-app-api-usage=1/2(appName=a)"), None);
        assert_eq!(
            parse_limit_info("api-usage=99999999999999999999999/1"),
            None
        );
    }

    #[test]
    fn limits_resource() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"DailyApiRequests":{"Max":15000,"Remaining":14998,"Ant Migration Tool":{"Max":0,"Remaining":0}},
                "DailyBulkV2QueryJobs":{"Max":10000,"Remaining":9990},
                "Weird":"x"}"#,
        )
        .unwrap();
        let l = Limits::from_json(&v).unwrap();
        let d = l.get("DailyApiRequests").unwrap();
        assert_eq!((d.max, d.remaining, d.used()), (15000, 14998, 2));
        assert_eq!(d.per_app["Ant Migration Tool"].max, 0);
        assert_eq!(l.get("DailyBulkV2QueryJobs").unwrap().remaining, 9990);
        assert!(l.get("Weird").is_none());
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        let p = RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff(1), Duration::from_millis(250));
        assert_eq!(p.backoff(2), Duration::from_millis(500));
        assert_eq!(p.backoff(20), Duration::from_millis(10_000));
        assert_eq!(p.backoff(u32::MAX), Duration::from_millis(10_000));
        let j = RetryPolicy::default();
        for r in 1..10 {
            let w = j.backoff(r);
            assert!(w <= Duration::from_millis(10_000));
        }
    }

    #[tokio::test]
    async fn retry_only_retry_class_and_bounded() {
        let p = RetryPolicy {
            max_attempts: 3,
            initial_backoff_ms: 1,
            max_backoff_ms: 2,
            multiplier: 2.0,
            jitter: true,
        };
        let mut calls = 0;
        let r: Result<()> = p
            .run(|_| {
                calls += 1;
                async {
                    Err(SalesforceError::Api(Box::new(parse_error_body(
                        "GET", "/x", 503, b"",
                    ))))
                }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 3);
        let mut calls = 0;
        let r: Result<()> = p
            .run(|_| {
                calls += 1;
                async {
                    Err(SalesforceError::Api(Box::new(parse_error_body(
                        "GET",
                        "/x",
                        403,
                        br#"[{"errorCode":"REQUEST_LIMIT_EXCEEDED","message":"TotalRequests Limit exceeded."}]"#,
                    ))))
                }
            })
            .await;
        assert_eq!(r.unwrap_err().class(), ErrorClass::Defer);
        assert_eq!(calls, 1);
    }
}
