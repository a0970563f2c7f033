//! The webhook sink: each batch of one object's changes is an HTTPS `POST` of JSON, signed with
//! HMAC-SHA256.
//!
//! Request: `Content-Type: application/json`, body
//! `{"sink": …, "object": …, "batch_id": …, "changes": [OutMessage…]}`, headers
//! - `X-Sfsync-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` — the
//!   receiver recomputes it over the raw body and rejects a stale `t` (replay protection);
//! - `Idempotency-Key` / `X-Sfsync-Batch-Id`: `<sink>:<object>:<first seq>-<last seq>` (the same
//!   for every retry of the same batch); every change also carries its own `idempotency_key`;
//! - `X-Sfsync-Sink`, `User-Agent: sfsync/<version>`.
//!
//! Response: any 2xx acknowledges the whole batch. 408, 429, 5xx, timeouts and connection errors
//! are retried (a `Retry-After` in seconds is honoured); any other status rejects the batch,
//! which the lane splits to find the change(s) the receiver refuses.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{OutMessage, SendError, Transport};

/// Response bodies quoted in errors are cut to this many characters.
const BODY_QUOTE: usize = 300;

/// A webhook endpoint.
pub struct Webhook {
    sink: String,
    url: reqwest::Url,
    secret: Vec<u8>,
    http: reqwest::Client,
    headers: Vec<(String, String)>,
}

/// Settings of a webhook sink.
#[derive(Clone)]
pub struct WebhookConfig {
    pub sink: String,
    pub url: String,
    /// The HMAC key (never logged).
    pub secret: Vec<u8>,
    pub timeout: Duration,
    /// Extra PEM CA certificates to trust (a private CA).
    pub ca_pem: Option<Vec<u8>>,
    /// Extra request headers (e.g. a static authorisation header from a secret).
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("sink", &self.sink)
            .field("url", &self.url)
            .field("secret", &"***")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Whether `url` may be plain HTTP: only to a loopback host.
pub fn plain_http_allowed(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl Webhook {
    pub fn new(config: WebhookConfig) -> Result<Webhook, String> {
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| format!("url '{}' is not a URL: {e}", config.url))?;
        match url.scheme() {
            "https" => {}
            "http" if plain_http_allowed(&url) => {}
            "http" => {
                return Err(format!(
                    "url '{}': plain http is allowed to loopback receivers only; use https",
                    config.url
                ))
            }
            other => {
                return Err(format!(
                    "url '{}': scheme '{other}' is not http(s)",
                    config.url
                ))
            }
        }
        if config.secret.len() < 16 {
            return Err("the signing secret must be at least 16 bytes".into());
        }
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("sfsync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(pem) = &config.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("the CA file is not a PEM certificate bundle: {e}"))?;
            if certs.is_empty() {
                return Err("no certificate in the CA file".into());
            }
            b = b.tls_certs_merge(certs);
        }
        let http = b
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Webhook {
            sink: config.sink,
            url,
            secret: config.secret,
            http,
            headers: config.headers,
        })
    }
}

/// HMAC-SHA256 over `"<t>.<body>"`.
fn mac(secret: &[u8], unix_secs: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(unix_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &[u8], unix_secs: i64, body: &[u8]) -> String {
    let tag = mac(secret, unix_secs, body).finalize().into_bytes();
    format!("t={unix_secs},v1={}", hex::encode(tag))
}

/// Checks a signature header as a receiver would (constant-time), within `tolerance_secs` of
/// `now_secs`.
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if (now_secs - t).abs() > tolerance_secs {
        return false;
    }
    mac(secret, t, body).verify_slice(&v1).is_ok()
}

fn quote(body: &str) -> String {
    let b: String = body.chars().take(BODY_QUOTE).collect();
    b.replace(['\n', '\r'], " ")
}

#[async_trait]
impl Transport for Webhook {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn target(&self) -> String {
        // Without user info or query (they may hold credentials).
        let mut u = self.url.clone();
        let _ = u.set_username("");
        let _ = u.set_password(None);
        u.set_query(None);
        u.to_string()
    }

    async fn send(&self, object: &str, batch: &[OutMessage]) -> Result<(), SendError> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let batch_id = format!("{}:{object}:{}-{}", self.sink, first.seq, last.seq);
        let body = serde_json::to_vec(&serde_json::json!({
            "sink": self.sink,
            "object": object,
            "batch_id": batch_id,
            "changes": batch,
        }))
        .map_err(|e| SendError::Reject {
            reason: format!("encoding the batch: {e}"),
        })?;
        let t = chrono::Utc::now().timestamp();
        let mut req = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Sfsync-Signature", signature(&self.secret, t, &body))
            .header("Idempotency-Key", &batch_id)
            .header("X-Sfsync-Batch-Id", &batch_id)
            .header("X-Sfsync-Sink", &self.sink);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "could not connect"
                } else {
                    "request failed"
                };
                return Err(SendError::Retry {
                    reason: format!(
                        "POST {}: {what}: {}",
                        self.target(),
                        sfsync_salesforce::error::error_chain(&e)
                    ),
                    after: None,
                });
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.unwrap_or_default();
        let reason = format!("POST {}: HTTP {status}: {}", self.target(), quote(&text));
        if status.is_server_error()
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            Err(SendError::Retry { reason, after })
        } else {
            Err(SendError::Reject { reason })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_fail_on_any_change() {
        let secret = b"0123456789abcdef0123";
        let body = br#"{"changes":[]}"#;
        let h = signature(secret, 1_800_000_000, body);
        assert!(h.starts_with("t=1800000000,v1="));
        assert!(verify_signature(secret, &h, body, 1_800_000_100, 300));
        assert!(!verify_signature(secret, &h, b"{}", 1_800_000_100, 300));
        assert!(!verify_signature(
            b"another secret 123",
            &h,
            body,
            1_800_000_100,
            300
        ));
        // Stale: outside the tolerance.
        assert!(!verify_signature(secret, &h, body, 1_800_001_000, 300));
        assert!(!verify_signature(secret, "v1=00", body, 1_800_000_000, 300));
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let ok = |u: &str| {
            Webhook::new(WebhookConfig {
                sink: "s".into(),
                url: u.into(),
                secret: vec![7; 32],
                timeout: Duration::from_secs(5),
                ca_pem: None,
                headers: vec![],
            })
            .map(|_| ())
        };
        assert!(ok("http://127.0.0.1:9/hook").is_ok());
        assert!(ok("http://localhost:9/hook").is_ok());
        assert!(ok("http://[::1]:9/hook").is_ok());
        assert!(ok("https://receiver.example.org/hook").is_ok());
        let e = ok("http://receiver.example.org/hook").unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        assert!(ok("ftp://x/").unwrap_err().contains("scheme"));
        let short = Webhook::new(WebhookConfig {
            sink: "s".into(),
            url: "https://x.example/".into(),
            secret: vec![1; 8],
            timeout: Duration::from_secs(5),
            ca_pem: None,
            headers: vec![],
        });
        assert!(short.is_err());
    }
}
