//! [`AwsClient`]: one signed AWS JSON 1.1 call (`POST /`, `X-Amz-Target: <Service>.<Operation>`,
//! `application/x-amz-json-1.1`) with timeouts and retries. Throttling, 5xx, AWS's internal
//! errors and transport failures are retried with exponential backoff and jitter, re-signed at
//! each attempt; anything else fails at once. Every error names the service, the operation and
//! the resource (key or secret id); success bodies, which carry secrets, are never quoted.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use serde_json::Value;

use crate::config::{AwsConfig, EnvError};
use crate::error::{is_throttling, is_transient, parse_error, AwsError, ErrorKind, Service};
use crate::sigv4;

const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// A client of KMS and Secrets Manager; cheap to clone.
#[derive(Clone)]
pub struct AwsClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: AwsConfig,
    http: reqwest::Client,
}

impl std::fmt::Debug for AwsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsClient")
            .field("config", &self.inner.config)
            .finish()
    }
}

/// The whole `source()` chain of an error, `: `-joined.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The `host` header as the HTTP client sends it: the port only when not the scheme's default.
fn host_header(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

impl AwsClient {
    pub fn new(config: AwsConfig) -> Result<AwsClient, EnvError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("sfsync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| EnvError(format!("building the AWS HTTP client: {}", chain(&e))))?;
        Ok(AwsClient {
            inner: Arc::new(Inner { config, http }),
        })
    }

    /// [`AwsConfig::from_env`] then [`Self::new`].
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<AwsClient, EnvError> {
        Self::new(AwsConfig::from_env(env)?)
    }

    pub fn config(&self) -> &AwsConfig {
        &self.inner.config
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let c = &self.inner.config;
        let exp = c
            .base_backoff
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(c.max_backoff);
        // "Equal jitter": between half the delay and the whole of it.
        let ms = exp.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
    }

    /// One call of `operation` on `service` with the JSON `body`; `resource` names what it is
    /// about in errors (`key alias/sfsync-pii`). Returns the answer's JSON.
    pub async fn call(
        &self,
        service: Service,
        operation: &'static str,
        resource: &str,
        body: &Value,
    ) -> Result<Value, AwsError> {
        let c = &self.inner.config;
        let err = |kind: ErrorKind, attempts: u32| AwsError {
            service,
            operation,
            resource: resource.to_string(),
            kind,
            attempts,
        };
        let url = c.endpoint(service).clone();
        let host = host_header(&url);
        let payload = serde_json::to_vec(body).expect("a JSON value serialises");
        let target = format!("{}.{operation}", service.target_prefix());
        let max = c.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let cred = c
                .credentials
                .get_credential()
                .await
                .map_err(|e| err(ErrorKind::Credentials(chain(&e)), attempt))?;
            let creds = sigv4::Credentials {
                access_key_id: cred.key_id.clone(),
                secret_access_key: cred.secret_key.clone(),
                session_token: cred.token.clone(),
            };
            let now = Utc::now();
            let mut headers = vec![
                ("host".to_string(), host.clone()),
                ("content-type".to_string(), CONTENT_TYPE.to_string()),
                ("x-amz-date".to_string(), sigv4::amz_date(now)),
                ("x-amz-target".to_string(), target.clone()),
            ];
            if let Some(t) = &creds.session_token {
                headers.push(("x-amz-security-token".to_string(), t.clone()));
            }
            let signature = sigv4::sign(
                &sigv4::Request {
                    method: "POST",
                    path: url.path(),
                    query: &[],
                    headers: &headers,
                    body: &payload,
                },
                &creds,
                &c.region,
                service.signing_name(),
                now,
            );
            let mut req = self.inner.http.post(url.clone());
            for (name, value) in headers.iter().filter(|(n, _)| n != "host") {
                req = req.header(name, value);
            }
            req = req
                .header("authorization", signature.authorization)
                .body(payload.clone());
            let (kind, retry) = match req.send().await {
                Err(e) => (ErrorKind::Transport(chain(&e)), true),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let header_type = resp
                        .headers()
                        .get("x-amzn-errortype")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    match resp.bytes().await {
                        Err(e) => (ErrorKind::Transport(chain(&e)), true),
                        Ok(bytes) if (200..300).contains(&status) => {
                            return serde_json::from_slice(&bytes).map_err(|e| {
                                // Never the body: it may hold a secret or key material.
                                err(
                                    ErrorKind::InvalidResponse(format!(
                                        "the answer is not JSON ({e}; {} bytes)",
                                        bytes.len()
                                    )),
                                    attempt,
                                )
                            });
                        }
                        Ok(bytes) => {
                            let kind = parse_error(status, header_type.as_deref(), &bytes);
                            let retry = match &kind {
                                ErrorKind::Api { code, .. } => {
                                    status >= 500
                                        || status == 429
                                        || is_throttling(code)
                                        || is_transient(code)
                                }
                                _ => false,
                            };
                            (kind, retry)
                        }
                    }
                }
            };
            if !retry || attempt >= max {
                return Err(err(kind, attempt));
            }
            let wait = self.backoff(attempt);
            tracing::warn!(
                service = %service,
                operation,
                resource,
                attempt,
                wait_ms = wait.as_millis() as u64,
                error = %err(kind, attempt),
                "An AWS call failed; retrying."
            );
            tokio::time::sleep(wait).await;
        }
    }
}

/// A string field of an answer, or an [`ErrorKind::InvalidResponse`] naming it.
pub(crate) fn str_field<'a>(v: &'a Value, name: &str) -> Result<&'a str, ErrorKind> {
    v.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| ErrorKind::InvalidResponse(format!("no {name} field")))
}

/// A base64 blob field of an answer.
pub(crate) fn blob_field(v: &Value, name: &str) -> Result<Vec<u8>, ErrorKind> {
    use base64::Engine;
    let s = str_field(v, name)?;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| ErrorKind::InvalidResponse(format!("{name} is not base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_keeps_only_explicit_ports() {
        let u = url::Url::parse("https://kms.eu-west-1.amazonaws.com/").unwrap();
        assert_eq!(host_header(&u), "kms.eu-west-1.amazonaws.com");
        let u = url::Url::parse("https://kms.internal:443/").unwrap();
        assert_eq!(host_header(&u), "kms.internal");
        let u = url::Url::parse("http://127.0.0.1:5000").unwrap();
        assert_eq!(host_header(&u), "127.0.0.1:5000");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let env = |k: &str| match k {
            "AWS_REGION" => Some("us-east-1".to_string()),
            "AWS_ACCESS_KEY_ID" => Some("AKID".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("s".to_string()),
            _ => None,
        };
        let client = AwsClient::from_env(&env).unwrap();
        for _ in 0..50 {
            let first = client.backoff(1);
            assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
            let third = client.backoff(3);
            assert!(third >= Duration::from_millis(400) && third <= Duration::from_millis(800));
            assert!(client.backoff(30) <= Duration::from_secs(5));
        }
    }
}
