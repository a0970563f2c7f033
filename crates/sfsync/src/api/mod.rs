//! The operator HTTP API that `sfsync run` serves beside the pipeline: versioned JSON under
//! `/api/v1/` (status, runs, quarantine, dead letters, the writeback ingress), its OpenAPI 3.1
//! document, Prometheus `/metrics`, and the dashboard at `/ui/` ([`ui`], public: it holds no
//! data, the page fetches every figure with the person's token).
//!
//! Guarantees: every endpoint but `/api/v1/openapi.json` (and `/metrics` when
//! `metrics_public`) needs a configured bearer token ([`auth`]); roles gate reads (viewer),
//! actions (operator) and the ingress (operator or writer, a writer only as its bound
//! `source_system`). Every operator action — run cancel, quarantine release and discard, write
//! batches — is recorded in the hash-chained operator audit chain BEFORE it is carried out, so
//! nothing happens unaudited (an action that then fails is still recorded as attempted). A write
//! batch is answered only after the store has committed it (`submit_writes` is durable and
//! idempotent per source system and idempotency key). A listener that is not loopback-only is
//! served over TLS or not at all (enforced by config validation). Bodies over `max_body_bytes`
//! get 413 before they are parsed; errors are JSON (`{"error": {"code", "message"}}`).

pub mod auth;
pub mod deployment;
pub mod error;
pub mod events;
pub mod metrics;
pub mod odata;
pub mod odata_query;
pub mod openapi;
pub mod outbound;
pub mod read;
pub mod read_limit;
mod routes;
pub mod ui;
pub mod views;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use axum::body::Body;
use axum::http::Request;
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sfsync_pipeline::PipelineStats;
use sfsync_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::Service;

use crate::config::secrets::ApiToken;
use crate::config::validate::{ValidApi, ValidConfig};
use auth::KnownToken;
pub use events::EventsApi;

/// Every route: (method, path). The router is built from this list and the OpenAPI document
/// must describe exactly these (checked by a test).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/runs"),
    ("GET", "/api/v1/runs/{id}"),
    ("POST", "/api/v1/runs/{id}/cancel"),
    ("GET", "/api/v1/quarantine"),
    ("GET", "/api/v1/quarantine/{id}"),
    ("POST", "/api/v1/quarantine/{id}/release"),
    ("POST", "/api/v1/quarantine/{id}/discard"),
    ("GET", "/api/v1/flows"),
    ("GET", "/api/v1/sync-status"),
    ("GET", "/api/v1/budget"),
    ("GET", "/api/v1/map"),
    ("GET", "/api/v1/deadletters"),
    ("POST", "/api/v1/deadletters/{kind}/{id}/redrive"),
    ("POST", "/api/v1/deadletters/{kind}/{id}/discard"),
    ("GET", "/api/v1/conflicts"),
    ("GET", "/api/v1/conflicts/{id}"),
    ("POST", "/api/v1/conflicts/{id}/resolve"),
    ("POST", "/api/v1/writes"),
    ("GET", "/api/v1/writes"),
    ("GET", "/api/v1/writes/{id}"),
    ("POST", "/api/v1/events/{name}"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/records/{object}"),
    ("GET", "/api/v1/records/{object}/{id}"),
    ("GET", "/api/v1/records/{object}/by/{field}/{value}"),
    ("GET", "/odata/v4/"),
    ("GET", "/odata/v4/$metadata"),
    ("GET", "/odata/v4/{resource}"),
    ("GET", "/odata/v4/{resource}/$count"),
    ("POST", "/soap/outbound/{flow}/{secret}"),
    ("GET", "/api/v1/outbound-messages"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/ui/"),
    ("GET", "/ui/{file}"),
];

/// A synced object as status and metrics show it.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub name: String,
    pub channel: Option<String>,
    pub mode: &'static str,
    pub pii_fields: Vec<String>,
    /// Configured in `[[writeback.objects]]` (writes to others are rejected at the ingress).
    pub writable: bool,
}

/// What the handlers share.
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub stats: Arc<PipelineStats>,
    pub tokens: Vec<KnownToken>,
    pub objects: Vec<ObjectInfo>,
    pub run_id: String,
    pub started: Instant,
    pub metrics_public: bool,
    pub max_batch_writes: usize,
    /// The integration map drawn from the config.
    pub map: crate::map_cmd::IntegrationMap,
    /// Which fields are PII (masked in conflict details).
    pub pii: crate::writes_ops::Pii,
    /// The budget governor's state, when this process talks to Salesforce.
    pub budget: Option<views::BudgetSource>,
    /// Counter readings for throughput and burn-rate charts ([`views::sampler`]).
    pub history: parking_lot::Mutex<views::History>,
    /// Counters of the delivery sinks this process runs.
    pub sinks: Option<Arc<sfsync_pipeline::sinks::SinksStats>>,
    /// The OData endpoint (`None`: `[odata]` absent or off).
    pub odata: Option<Arc<odata::OdataService>>,
    /// Per-caller rate limit of the read API and OData.
    pub read_limiter: read_limit::ReadLimiter,
    /// Platform events this process publishes and counts (`None`: not this process).
    pub events: Option<EventsApi>,
    /// Platform events that may be published (`[platform_events] publish`).
    pub publishable: Vec<String>,
    /// Most events in one `POST /api/v1/events/{name}`.
    pub max_events_per_request: usize,
    /// The Outbound Message endpoint (`None`: no `[[outbound_messages]]`).
    pub outbound: Option<Arc<outbound::OutboundService>>,
}

impl ApiState {
    /// The state for `config`'s API with the resolved `tokens`.
    pub fn new(
        config: &ValidConfig,
        api: &ValidApi,
        tokens: &[ApiToken],
        store: Arc<dyn Store>,
        stats: Arc<PipelineStats>,
        run_id: String,
        budget: Option<views::BudgetSource>,
    ) -> ApiState {
        let objects = config
            .objects
            .iter()
            .map(|o| ObjectInfo {
                name: o.name.clone(),
                channel: o.channel.clone(),
                mode: match o.mode {
                    crate::config::model::SyncMode::Cdc => "cdc",
                    crate::config::model::SyncMode::Poll => "poll",
                    crate::config::model::SyncMode::OutboundMessage => "outbound_message",
                },
                pii_fields: o.pii_fields.clone(),
                writable: config.writeback.objects.contains_key(&o.name),
            })
            .collect();
        ApiState {
            store,
            stats,
            tokens: tokens.iter().map(KnownToken::from_config).collect(),
            objects,
            run_id,
            started: Instant::now(),
            metrics_public: api.metrics_public,
            max_batch_writes: api.max_batch_writes as usize,
            map: crate::map_cmd::IntegrationMap::from_config(config),
            pii: crate::writes_ops::Pii::from_config(config, false),
            budget,
            history: Default::default(),
            sinks: None,
            odata: config.odata.as_ref().map(|o| {
                Arc::new(odata::OdataService::from_config(
                    o,
                    &config.objects,
                    api.tls.is_some(),
                ))
            }),
            read_limiter: read_limit::ReadLimiter::new(api.read_rate_per_sec, api.read_burst),
            events: None,
            publishable: config.platform_events.publish.clone(),
            max_events_per_request: config.platform_events.max_events_per_request.max(1),
            outbound: None,
        }
    }

    /// Sets the OData endpoint's HTTP Basic principals (resolved secrets).
    pub fn set_basic_principals(&mut self, principals: &[crate::config::secrets::BasicPrincipal]) {
        if let Some(o) = self.odata.as_mut() {
            Arc::make_mut(o).basic = principals
                .iter()
                .map(auth::KnownBasic::from_config)
                .collect();
        }
    }
}

fn method_router(method: &str, path: &str) -> MethodRouter<Arc<ApiState>> {
    use routes::*;
    match (method, path) {
        ("GET", "/api/v1/openapi.json") => get(openapi_doc),
        ("GET", "/api/v1/status") => get(status),
        ("GET", "/api/v1/runs") => get(list_runs),
        ("GET", "/api/v1/runs/{id}") => get(show_run),
        ("POST", "/api/v1/runs/{id}/cancel") => post(cancel_run),
        ("GET", "/api/v1/quarantine") => get(list_quarantine),
        ("GET", "/api/v1/quarantine/{id}") => get(show_quarantine),
        ("POST", "/api/v1/quarantine/{id}/release") => post(release_quarantine),
        ("POST", "/api/v1/quarantine/{id}/discard") => post(discard_quarantine),
        ("GET", "/api/v1/flows") => get(views::flows),
        ("GET", "/api/v1/sync-status") => get(views::sync_status),
        ("GET", "/api/v1/budget") => get(views::budget),
        ("GET", "/api/v1/map") => get(views::map),
        ("GET", "/api/v1/deadletters") => get(list_dead_letters),
        ("POST", "/api/v1/deadletters/{kind}/{id}/redrive") => post(redrive_dead_letter),
        ("POST", "/api/v1/deadletters/{kind}/{id}/discard") => post(discard_dead_letter),
        ("GET", "/api/v1/conflicts") => get(list_conflicts),
        ("GET", "/api/v1/conflicts/{id}") => get(show_conflict),
        ("POST", "/api/v1/conflicts/{id}/resolve") => post(resolve_conflict),
        ("POST", "/api/v1/writes") => post(submit_writes),
        ("GET", "/api/v1/writes") => get(list_writes),
        ("GET", "/api/v1/writes/{id}") => get(show_write),
        ("POST", "/api/v1/events/{name}") => post(events::publish_events),
        ("GET", "/api/v1/events") => get(events::list_events),
        ("GET", "/api/v1/records/{object}") => get(read::list_records),
        ("GET", "/api/v1/records/{object}/{id}") => get(read::record_by_id),
        ("GET", "/api/v1/records/{object}/by/{field}/{value}") => get(read::record_by_field),
        ("GET", "/odata/v4/") => get(odata::service_document),
        ("GET", "/odata/v4/$metadata") => get(odata::metadata),
        ("GET", "/odata/v4/{resource}") => get(odata::resource),
        ("GET", "/odata/v4/{resource}/$count") => get(odata::resource_count),
        ("POST", "/soap/outbound/{flow}/{secret}") => post(outbound::receive),
        ("GET", "/api/v1/outbound-messages") => get(outbound::list),
        ("GET", "/metrics") => get(metrics::metrics),
        ("GET", "/") => get(ui::root),
        ("GET", "/ui/") => get(ui::index),
        ("GET", "/ui/{file}") => get(ui::asset),
        _ => unreachable!("ROUTES lists {method} {path} without a handler"),
    }
}

/// The API's router (from [`ROUTES`]), with the body limit and JSON fallbacks.
pub fn router(state: Arc<ApiState>, max_body_bytes: usize) -> Router {
    let mut r: Router<Arc<ApiState>> = Router::new();
    for (method, path) in ROUTES {
        r = r.route(path, method_router(method, path));
    }
    r.fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// A listener bound (and TLS loaded) before the pipeline starts, so a bad address or
/// certificate stops `sfsync run` before it does anything.
pub struct BoundApi {
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    pub addr: SocketAddr,
    max_body_bytes: usize,
}

/// Binds `api.listen` and loads its TLS files. `Ok(None)` when the implicit default address
/// (no `[api]` table) is taken: reported, and the pipeline runs without the API.
pub async fn bind(api: &ValidApi) -> Result<Option<BoundApi>> {
    let tls = match &api.tls {
        Some((cert, key)) => Some(tls_config(cert, key)?),
        None => None,
    };
    let listener = match TcpListener::bind(api.listen).await {
        Ok(l) => l,
        Err(e) if !api.explicit => {
            tracing::warn!(
                listen = %api.listen,
                error = %e,
                "The API's default address is not available; running without the API (add an [api] table to require it)."
            );
            return Ok(None);
        }
        Err(e) => return Err(anyhow!("api.listen: cannot listen on {}: {e}", api.listen)),
    };
    let addr = listener.local_addr().context("reading the API's address")?;
    Ok(Some(BoundApi {
        listener,
        tls,
        addr,
        max_body_bytes: api.max_body_bytes.min(usize::MAX as u64) as usize,
    }))
}

/// The rustls server configuration of the API's certificate and key (errors name the key).
fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let cert_pem = std::fs::read(cert)
        .with_context(|| format!("api.tls_cert_file: cannot read {}", cert.display()))?;
    let key_pem = std::fs::read(key)
        .with_context(|| format!("api.tls_key_file: cannot read {}", key.display()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .with_context(|| format!("api.tls_cert_file: {} is not PEM", cert.display()))?;
    if certs.is_empty() {
        return Err(anyhow!(
            "api.tls_cert_file: {} holds no certificate",
            cert.display()
        ));
    }
    let private = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("api.tls_key_file: {} is not PEM", key.display()))?
        .ok_or_else(|| anyhow!("api.tls_key_file: {} holds no private key", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, private)
    .context("api.tls_cert_file / api.tls_key_file: the certificate and key do not make a TLS configuration")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The API being served; [`RunningApi::stop`] stops accepting connections.
pub struct RunningApi {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    sampler: tokio::task::JoinHandle<()>,
}

impl RunningApi {
    /// Stops accepting and waits for the accept loop to end (open connections are dropped
    /// with the process).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.sampler.abort();
        let _ = self.task.await;
    }
}

/// Starts the sampler of `state`'s throughput and burn-rate charts (a deployment's orgs have no
/// listener of their own to start it).
pub fn spawn_sampler(state: Arc<ApiState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(views::sampler(state))
}

impl BoundApi {
    /// Serves `router` (a deployment's, see [`deployment`]) until [`RunningApi::stop`].
    pub fn serve_router(self, router: Router) -> RunningApi {
        let (stop, rx) = watch::channel(false);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        tracing::info!(address = %format!("{scheme}://{}", self.addr), "Deployment API listening.");
        let task = tokio::spawn(accept_loop(self.listener, router, self.tls, rx));
        RunningApi {
            addr: self.addr,
            stop,
            task,
            sampler: tokio::spawn(async {}),
        }
    }

    /// The most bytes a request body may have.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Serves the API with `state` until [`RunningApi::stop`].
    pub fn serve(self, state: Arc<ApiState>) -> RunningApi {
        let (stop, rx) = watch::channel(false);
        let sampler = tokio::spawn(views::sampler(state.clone()));
        let router = router(state, self.max_body_bytes);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        tracing::info!(address = %format!("{scheme}://{}", self.addr), "API listening.");
        let task = tokio::spawn(accept_loop(self.listener, router, self.tls, rx));
        RunningApi {
            addr: self.addr,
            stop,
            task,
            sampler,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "API: accept failed.");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let mut router = router.clone();
                async move { router.call(req.map(Body::new)).await }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let result = match acceptor {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => builder.serve_connection(TokioIo::new(tls), service).await,
                    Err(e) => {
                        tracing::debug!(peer = %peer, error = %e, "API: TLS handshake failed.");
                        return;
                    }
                },
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(peer = %peer, error = %e, "API: connection ended with an error.");
            }
        });
    }
}

/// The path the API is served under, from `X-Forwarded-Prefix` (set by a deployment for each
/// org's API under `/orgs/<name>`, or by a reverse proxy): empty when absent or not a plain
/// path (`/` followed by letters, digits, `-`, `_`, `.` and `/`), so links stay on this server.
pub(crate) fn forwarded_prefix(headers: &axum::http::HeaderMap) -> String {
    let Some(p) = headers
        .get("x-forwarded-prefix")
        .and_then(|h| h.to_str().ok())
    else {
        return String::new();
    };
    let p = p.trim_end_matches('/');
    let plain = p.starts_with('/')
        && !p.contains("//")
        && !p.split('/').any(|seg| seg == "..")
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if plain {
        p.to_string()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod forwarded_prefix_tests {
    use super::forwarded_prefix;

    #[test]
    fn links_follow_a_forwarded_prefix_when_it_is_a_plain_path() {
        let h = |v: &str| {
            let mut m = axum::http::HeaderMap::new();
            m.insert(
                "x-forwarded-prefix",
                axum::http::HeaderValue::from_str(v).unwrap(),
            );
            m
        };
        assert_eq!(forwarded_prefix(&axum::http::HeaderMap::new()), "");
        assert_eq!(forwarded_prefix(&h("/orgs/east")), "/orgs/east");
        assert_eq!(forwarded_prefix(&h("/orgs/east/")), "/orgs/east");
        for bad in ["orgs", "//evil.example", "/a/../b", "/a?b", "/a b", "/é"] {
            assert_eq!(forwarded_prefix(&h(bad)), "", "{bad}");
        }
    }
}
