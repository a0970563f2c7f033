//! Wire behaviour of the client against a small local HTTP(S) server that answers like
//! Salesforce: token minting and single-flight re-authentication, limits that must not re-login,
//! `Sforce-Limit-Info`, SOQL paging, upsert outcomes, transient-error retries, Bulk query result
//! paging with gzip and chunked bodies, and TLS trust through a custom CA file. The full
//! emulator-based integration tests live elsewhere; these pin the client's own contract.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Form, Router};
use futures::StreamExt;
use parking_lot::Mutex;
use sfsync_core::ErrorClass;
use sfsync_salesforce::bulk::QueryResultsOptions;
use sfsync_salesforce::{
    BulkConfig, ClientConfig, Credentials, QueryOptions, RetryPolicy, SalesforceClient,
    SalesforceError,
};

#[derive(Default)]
struct Server {
    mints: AtomicU32,
    valid_token: Mutex<String>,
    api_calls: AtomicU32,
    flaky_left: AtomicU32,
    last_batch_size: Mutex<Option<String>>,
    last_call_options: Mutex<Option<String>>,
    jwt_public_pem: Mutex<Option<String>>,
    jwt_claims: Mutex<Option<serde_json::Value>>,
    jwt_audience: Mutex<String>,
    /// Query result pages: (csv, declared count override).
    pages: Mutex<Vec<(Vec<u8>, Option<u64>)>>,
}

type S = Arc<Server>;

fn authorized(s: &Server, headers: &HeaderMap) -> bool {
    let want = format!("Bearer {}", s.valid_token.lock());
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == want)
}

fn invalid_session() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        r#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#,
    )
        .into_response()
}

async fn token(State(s): State<S>, Form(form): Form<HashMap<String, String>>) -> Response {
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {
            if form.get("client_secret").map(String::as_str) != Some("cs") {
                return (
                    StatusCode::BAD_REQUEST,
                    r#"{"error":"invalid_client","error_description":"invalid client credentials"}"#,
                )
                    .into_response();
            }
        }
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
            let pem = s.jwt_public_pem.lock().clone().unwrap_or_default();
            let key = jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            v.set_audience(&[s.jwt_audience.lock().clone()]);
            let data = jsonwebtoken::decode::<serde_json::Value>(
                form.get("assertion").cloned().unwrap_or_default(),
                &key,
                &v,
            );
            match data {
                Ok(d) => *s.jwt_claims.lock() = Some(d.claims),
                Err(e) => {
                    return (
                        StatusCode::BAD_REQUEST,
                        format!(r#"{{"error":"invalid_grant","error_description":"{e}"}}"#),
                    )
                        .into_response()
                }
            }
        }
        _ => return (
            StatusCode::BAD_REQUEST,
            r#"{"error":"unsupported_grant_type","error_description":"grant type not supported"}"#,
        )
            .into_response(),
    }
    // Slow mint, so that concurrent refreshers overlap.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let n = s.mints.fetch_add(1, Ordering::SeqCst) + 1;
    let tok = format!("tok-{n}");
    *s.valid_token.lock() = tok.clone();
    axum::Json(serde_json::json!({
        "access_token": tok,
        "instance_url": "http://ignored.invalid",
        "id": "https://login.example/id/00D000000000001AAA/005000000000001AAA",
        "token_type": "Bearer",
        "issued_at": "1712345678901",
        "scope": "api"
    }))
    .into_response()
}

async fn limits(State(s): State<S>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return invalid_session();
    }
    let n = s.api_calls.fetch_add(1, Ordering::SeqCst) + 1;
    *s.last_call_options.lock() = headers
        .get("sforce-call-options")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (
        [("Sforce-Limit-Info", format!("api-usage={n}/5000; per-app-api-usage={n}/250(appName=sfsync)"))],
        axum::Json(serde_json::json!({
            "DailyApiRequests": {"Max": 5000, "Remaining": 5000 - n, "sfsync": {"Max": 250, "Remaining": 250 - n}},
            "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000}
        })),
    )
        .into_response()
}

async fn limited(State(s): State<S>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return invalid_session();
    }
    (
        StatusCode::FORBIDDEN,
        r#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#,
    )
        .into_response()
}

async fn flaky(State(s): State<S>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return invalid_session();
    }
    if s.flaky_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "Server too busy").into_response();
    }
    axum::Json(serde_json::json!([{"label": "Spring '26", "url": "/services/data/v66.0", "version": "66.0"}]))
        .into_response()
}

async fn query(
    State(s): State<S>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&s, &headers) {
        return invalid_session();
    }
    *s.last_batch_size.lock() = headers
        .get("sforce-query-options")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert_eq!(
        q.get("q").map(String::as_str),
        Some("SELECT Id FROM Account")
    );
    query_page(0)
}

async fn query_more(State(s): State<S>, headers: HeaderMap, Path(loc): Path<String>) -> Response {
    if !authorized(&s, &headers) {
        return invalid_session();
    }
    let n: usize = loc.rsplit('-').next().unwrap().parse().unwrap();
    query_page(n)
}

fn query_page(start: usize) -> Response {
    let total = 5;
    let end = (start + 2).min(total);
    let records: Vec<_> = (start..end)
        .map(|i| serde_json::json!({"attributes": {"type": "Account"}, "Id": format!("001{i}")}))
        .collect();
    let mut body =
        serde_json::json!({"totalSize": total, "done": end == total, "records": records});
    if end < total {
        body["nextRecordsUrl"] = format!("/services/data/v66.0/query/01gLOC-{end}").into();
    }
    axum::Json(body).into_response()
}

async fn upsert(
    State(s): State<S>,
    headers: HeaderMap,
    Path((_obj, _field, value)): Path<(String, String, String)>,
) -> Response {
    if !authorized(&s, &headers) {
        return invalid_session();
    }
    match value.as_str() {
        "new" => (
            StatusCode::CREATED,
            axum::Json(serde_json::json!({"id": "001000000000001AAA", "success": true, "errors": [], "created": true})),
        )
            .into_response(),
        "dup" => (
            StatusCode::MULTIPLE_CHOICES,
            axum::Json(serde_json::json!(["/services/data/v66.0/sobjects/Account/001A", "/services/data/v66.0/sobjects/Account/001B"])),
        )
            .into_response(),
        _ => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"id": "001000000000002AAA", "success": true, "errors": [], "created": false})),
        )
            .into_response(),
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn results(
    State(s): State<S>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&s, &headers) {
        return invalid_session();
    }
    let pages = s.pages.lock().clone();
    let idx: usize = q.get("locator").map_or(0, |l| l.parse().unwrap());
    let (csv, declared) = pages[idx].clone();
    let rows = sfsync_salesforce::bulk::csv::parse_all(&csv, b',')
        .unwrap()
        .len() as u64
        - 1;
    let locator = if idx + 1 < pages.len() {
        (idx + 1).to_string()
    } else {
        "null".to_string()
    };
    let gz = headers
        .get("accept-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let body = if gz { gzip(&csv) } else { csv };
    // Send in 7-byte pieces so records straddle chunk boundaries.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(7).map(|c| Ok(c.to_vec())).collect();
    let mut resp = Response::new(Body::from_stream(futures::stream::iter(pieces)));
    let h = resp.headers_mut();
    h.insert("content-type", "text/csv".parse().unwrap());
    if gz {
        h.insert("content-encoding", "gzip".parse().unwrap());
    }
    h.insert("sforce-locator", locator.parse().unwrap());
    h.insert(
        "sforce-numberofrecords",
        declared.unwrap_or(rows).to_string().parse().unwrap(),
    );
    resp
}

fn router(s: S) -> Router {
    Router::new()
        .route("/services/oauth2/token", post(token))
        .route("/services/data/", get(flaky))
        .route("/services/data/v66.0/limits", get(limits))
        .route("/services/data/v66.0/limited", get(limited))
        .route("/services/data/v66.0/query", get(query))
        .route("/services/data/v66.0/query/{loc}", get(query_more))
        .route(
            "/services/data/v66.0/sobjects/{obj}/{field}/{value}",
            patch(upsert),
        )
        .route("/services/data/v66.0/jobs/query/{id}/results", get(results))
        .with_state(s)
}

async fn start() -> (S, String) {
    let s: S = Arc::new(Server::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(s.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (s, format!("http://{addr}"))
}

fn client(base: &str) -> SalesforceClient {
    let mut config = ClientConfig::new(base, None);
    config.call_options_client = Some("sfsync-test".into());
    config.retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff_ms: 1,
        max_backoff_ms: 5,
        multiplier: 2.0,
        jitter: true,
    };
    SalesforceClient::new(
        config,
        Credentials::ClientCredentials {
            instance_url: base.to_string(),
            client_id: "cid".into(),
            client_secret: "cs".into(),
        },
    )
    .unwrap()
}

#[tokio::test]
async fn concurrent_401s_cause_one_remint_and_one_retry_each() {
    let (s, base) = start().await;
    let c = client(&base);
    c.limits().await.unwrap();
    assert_eq!(s.mints.load(Ordering::SeqCst), 1);
    assert_eq!(
        c.tokens().cached().unwrap().org_id.as_deref(),
        Some("00D000000000001AAA")
    );
    // The session expires server-side.
    *s.valid_token.lock() = "expired".into();
    let calls: Vec<_> = (0..10).map(|_| c.limits()).collect();
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    assert_eq!(
        s.mints.load(Ordering::SeqCst),
        2,
        "one re-mint for all concurrent 401s"
    );
    assert_eq!(c.tokens().mint_count(), 2);
}

#[tokio::test]
async fn limits_and_usage_are_observable() {
    let (s, base) = start().await;
    let c = client(&base);
    let mut watch = c.watch_api_usage();
    assert!(c.api_usage().is_none());
    let l = c.limits().await.unwrap();
    let d = l.get("DailyApiRequests").unwrap();
    assert_eq!((d.max, d.remaining), (5000, 4999));
    assert_eq!(d.per_app["sfsync"].remaining, 249);
    let u = c.api_usage().unwrap();
    assert_eq!((u.used, u.max), (1, 5000));
    assert_eq!(u.per_app.unwrap().app_name, "sfsync");
    assert!(watch.has_changed().unwrap());
    watch.borrow_and_update();
    c.limits().await.unwrap();
    assert_eq!(watch.borrow_and_update().as_ref().unwrap().used, 2);
    assert_eq!(
        s.last_call_options.lock().as_deref(),
        Some("client=sfsync-test")
    );
}

#[tokio::test]
async fn request_limit_exceeded_defers_without_relogin() {
    let (s, base) = start().await;
    // The stub refuses `limited` whatever `/limits` says: the governor defers the call a few
    // times (probing `/limits` quickly here), then returns the Defer-class refusal.
    let mut cfg = ClientConfig::new(&base, None);
    cfg.budget.probe_initial_ms = 10;
    cfg.budget.probe_max_ms = 20;
    let c = SalesforceClient::new(
        cfg,
        Credentials::ClientCredentials {
            instance_url: base.clone(),
            client_id: "cid".into(),
            client_secret: "cs".into(),
        },
    )
    .unwrap();
    let err = c
        .get_json::<serde_json::Value>("limited")
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Defer);
    assert_eq!(err.status(), Some(403));
    assert_eq!(err.error_code(), Some("REQUEST_LIMIT_EXCEEDED"));
    assert!(
        err.to_string().contains("GET /services/data/v66.0/limited"),
        "{err}"
    );
    assert_eq!(s.mints.load(Ordering::SeqCst), 1, "403 must not re-login");
}

#[tokio::test]
async fn bad_client_secret_is_a_user_auth_error() {
    let (_s, base) = start().await;
    let c = SalesforceClient::new(
        ClientConfig::new(&base, None),
        Credentials::ClientCredentials {
            instance_url: base.clone(),
            client_id: "cid".into(),
            client_secret: "wrong".into(),
        },
    )
    .unwrap();
    let err = c.limits().await.unwrap_err();
    assert!(matches!(err, SalesforceError::Auth { .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::User);
    let text = err.report();
    assert!(
        text.contains("invalid_client") && !text.contains("wrong"),
        "{text}"
    );
}

#[tokio::test]
async fn transient_503_is_retried_for_reads() {
    let (s, base) = start().await;
    let c = client(&base);
    s.flaky_left.store(2, Ordering::SeqCst);
    let v = c.versions().await.unwrap();
    assert_eq!(v[0].version, "66.0");
    s.flaky_left.store(5, Ordering::SeqCst);
    let err = c.versions().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Retry);
    assert_eq!(err.status(), Some(503));
    assert_eq!(
        s.flaky_left.load(Ordering::SeqCst),
        2,
        "bounded: 3 attempts"
    );
}

#[tokio::test]
async fn soql_pages_follow_next_records_url() {
    let (s, base) = start().await;
    let c = client(&base);
    let opts = QueryOptions {
        batch_size: Some(200),
        include_deleted: false,
    };
    let ids: Vec<String> = c
        .query("SELECT Id FROM Account", opts.clone())
        .map(|r| r.unwrap()["Id"].as_str().unwrap().to_string())
        .collect()
        .await;
    assert_eq!(ids, vec!["0010", "0011", "0012", "0013", "0014"]);
    assert_eq!(s.last_batch_size.lock().as_deref(), Some("batchSize=200"));
    assert_eq!(
        c.query_all_pages("SELECT Id FROM Account", opts)
            .await
            .unwrap()
            .len(),
        5
    );
}

#[tokio::test]
async fn upsert_outcomes() {
    let (_s, base) = start().await;
    let c = client(&base);
    let body = serde_json::json!({"Name": "Acme"});
    let r = c.upsert("Account", "Ext__c", "new", &body).await.unwrap();
    assert!(r.created);
    let r = c.upsert("Account", "Ext__c", "old", &body).await.unwrap();
    assert!(!r.created);
    assert_eq!(r.id.as_deref(), Some("001000000000002AAA"));
    match c
        .upsert("Account", "Ext__c", "dup", &body)
        .await
        .unwrap_err()
    {
        SalesforceError::MultipleMatches { urls, path, .. } => {
            assert_eq!(urls.len(), 2);
            assert!(path.ends_with("/sobjects/Account/Ext__c/dup"));
        }
        other => panic!("{other:?}"),
    }
}

fn csv_page(start: usize, n: usize) -> Vec<u8> {
    let mut s = String::from("Id,Name,Description\n");
    for i in start..start + n {
        s.push_str(&format!(
            "001{i:015},\"Acme {i}, Inc.\",\"multi\nline \"\"{i}\"\"\"\n"
        ));
    }
    s.into_bytes()
}

#[tokio::test]
async fn bulk_query_results_page_through_locators_streaming() {
    let (s, base) = start().await;
    *s.pages.lock() = vec![
        (csv_page(0, 1000), None),
        (csv_page(1000, 1000), None),
        (csv_page(2000, 37), None),
    ];
    let c = client(&base);
    let bulk = c.bulk_with(BulkConfig {
        batch_rows: 100,
        ..BulkConfig::default()
    });
    let mut stream = bulk
        .query_results(
            "750000000000001AAA",
            b',',
            QueryResultsOptions {
                max_records: Some(1000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut n = 0usize;
    let mut max_batch = 0;
    while let Some(batch) = stream.next_batch().await.unwrap() {
        max_batch = max_batch.max(batch.len());
        for row in batch.iter() {
            assert_eq!(row.get(0).unwrap(), format!("001{n:015}"));
            assert_eq!(row.get(1).unwrap(), format!("Acme {n}, Inc."));
            assert_eq!(row.get(2).unwrap(), format!("multi\nline \"{n}\""));
            n += 1;
        }
    }
    assert_eq!(n, 2037);
    assert!(max_batch <= 100, "batches are bounded, got {max_batch}");
    assert_eq!(stream.pages(), 3);
    assert_eq!(stream.header().unwrap(), &["Id", "Name", "Description"]);
}

#[tokio::test]
async fn truncated_result_page_is_an_error() {
    let (s, base) = start().await;
    *s.pages.lock() = vec![(csv_page(0, 10), Some(11))];
    let c = client(&base);
    let stream = c
        .bulk()
        .query_results("750000000000001AAA", b',', QueryResultsOptions::default())
        .await
        .unwrap();
    let err = stream.collect_all().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("750000000000001AAA") && text.contains("says 11 rows but the page held 10"),
        "{text}"
    );
}

#[tokio::test]
async fn jwt_bearer_flow_signs_a_verifiable_assertion() {
    let (s, base) = start().await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    *s.jwt_public_pem.lock() = Some(key.public_key_pem());
    *s.jwt_audience.lock() = base.clone();
    let c = SalesforceClient::new(
        ClientConfig::new(&base, None),
        Credentials::JwtBearer {
            login_url: base.clone(),
            client_id: "cid".into(),
            username: "admin@example.com".into(),
            private_key_pem: key.serialize_pem().into(),
        },
    )
    .unwrap();
    let token = c.access_token().await.unwrap();
    assert_eq!(token.user_id.as_deref(), Some("005000000000001AAA"));
    let claims = s.jwt_claims.lock().clone().unwrap();
    assert_eq!(claims["iss"], "cid");
    assert_eq!(claims["sub"], "admin@example.com");
    let exp = claims["exp"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(exp > now + 170 && exp <= now + 181, "exp {exp} now {now}");
}

struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((sock, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(sock).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

#[tokio::test]
async fn tls_with_custom_ca_file() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // A CA and a server certificate for 127.0.0.1 signed by it.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sfsync test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let srv_key = rcgen::KeyPair::generate().unwrap();
    let srv_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let srv_cert = srv_params.signed_by(&srv_key, &issuer).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();

    let certs = vec![srv_cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::try_from(srv_key.serialize_der()).unwrap();
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let s: S = Arc::new(Server::default());
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
    };
    let app = router(s.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let base = format!("https://127.0.0.1:{}", addr.port());

    let creds = || Credentials::ClientCredentials {
        instance_url: base.clone(),
        client_id: "cid".into(),
        client_secret: "cs".into(),
    };
    // Trusted through the CA file.
    let c =
        SalesforceClient::new(ClientConfig::new(&base, Some(ca_path.clone())), creds()).unwrap();
    let l = c.limits().await.unwrap();
    assert!(l.get("DailyApiRequests").is_some());
    // Without it the certificate is refused.
    let c = SalesforceClient::new(ClientConfig::new(&base, None), creds()).unwrap();
    let err = c.limits().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Retry);
    assert!(err.report().contains("oauth2/token"), "{}", err.report());
    // A broken CA file is a configuration error naming the file.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a pem").unwrap();
    let err = SalesforceClient::new(ClientConfig::new(&base, Some(bad)), creds()).unwrap_err();
    assert!(err.to_string().contains("bad.pem"), "{err}");
}
