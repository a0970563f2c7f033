//! The emulator's HTTP(S) server: OAuth, SOAP login, REST, Composite, Bulk API 2.0 and the admin
//! API on one listener. Every `/services/data/vNN.N/…` call is authenticated, counted against the
//! daily allocation (refused with 403 `REQUEST_LIMIT_EXCEEDED` when exhausted), subject to fault
//! injection, and answered with a `Sforce-Limit-Info` header. Trailing slashes are accepted.

pub mod admin;
pub mod admin_cdc;
pub mod admin_outbound;
pub mod bulk;
pub mod composite;
pub mod error;
pub mod oauth;
pub mod rest;
pub mod soap;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::Service;

use crate::auth::bearer_token;
use crate::state::AppState;
use error::ApiError;

/// Supported REST API versions (inclusive).
pub const MIN_API_VERSION: u32 = 50;
pub const MAX_API_VERSION: u32 = 66;

/// Parses a `vNN.N` path segment into `NN.N`, or answers 404 `NOT_FOUND` like Salesforce does for
/// an unknown version.
pub fn api_version(segment: &str) -> Result<String, ApiError> {
    let v = segment.strip_prefix('v').ok_or_else(ApiError::not_found)?;
    let (major, minor) = v.split_once('.').ok_or_else(ApiError::not_found)?;
    let major: u32 = major.parse().map_err(|_| ApiError::not_found())?;
    if minor != "0" || !(MIN_API_VERSION..=MAX_API_VERSION).contains(&major) {
        return Err(ApiError::not_found());
    }
    Ok(format!("{major}.0"))
}

/// The whole application router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(oauth::routes())
        .merge(soap::routes())
        .merge(rest::routes())
        .merge(composite::routes())
        .merge(bulk::routes())
        .merge(admin::routes())
        .merge(admin_cdc::routes())
        .merge(admin_outbound::routes())
        .fallback(|| async { ApiError::not_found() })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api_middleware,
        ))
        .with_state(state)
}

/// Header marking a Composite sub-request dispatched inside the emulator. Salesforce counts a
/// composite call as one API request, so sub-requests are not counted again. Requests from the
/// network never carry it: the server strips it before routing.
pub const INTERNAL_SUBREQUEST_HEADER: &str = "x-sfsync-internal-subrequest";

fn is_counted_api_call(path: &str) -> bool {
    path.starts_with("/services/data/v") || path.starts_with("/services/async/")
}

/// Latency and error injection, allocation enforcement and the `Sforce-Limit-Info` header.
async fn api_middleware(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if !is_counted_api_call(&path) || req.headers().contains_key(INTERNAL_SUBREQUEST_HEADER) {
        return next.run(req).await;
    }
    let latency = state.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    // Only authenticated calls count against the allocation (a 401 costs nothing).
    let authenticated = bearer_token(req.headers())
        .map(|t| state.auth.validate(t).is_some())
        .unwrap_or(false);
    let mut response = if !authenticated {
        next.run(req).await
    } else {
        match state.limits.begin_api_request() {
            Err(e) => ApiError::from(e).into_response(),
            Ok(guard) => {
                let method = req.method().as_str().to_string();
                let r = match state.faults.draw(&method, &path) {
                    Some(e) => ApiError::from(e).into_response(),
                    None => next.run(req).await,
                };
                drop(guard);
                r
            }
        }
    };
    if let Ok(v) = HeaderValue::from_str(&state.limits.limit_info_header()) {
        response.headers_mut().insert("sforce-limit-info", v);
    }
    response
}

/// Rewrites `/path/` to `/path` so routes match with or without a trailing slash.
fn trim_trailing_slash(req: &mut Request<hyper::body::Incoming>) {
    let path = req.uri().path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/');
        let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
        let new = match req.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_string(),
        };
        if let Ok(uri) = new.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
}

/// Serves `router` on `listener` (TLS when `tls` is set) until `shutdown` turns true.
pub async fn serve(
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
                tracing::warn!(error = %e, "Accept failed on the HTTP listener");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    trim_trailing_slash(&mut req);
                    req.headers_mut().remove(INTERNAL_SUBREQUEST_HEADER);
                    let mut router = router.clone();
                    async move {
                        let req = req.map(Body::new);
                        let resp: Result<Response, Infallible> = router.call(req).await;
                        resp
                    }
                });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let result = match acceptor {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => builder.serve_connection(TokioIo::new(tls), service).await,
                    Err(e) => {
                        tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
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
                tracing::debug!(peer = %peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

/// True when `addr` is a loopback address (plain HTTP is allowed only there).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
