//! OAuth 2.0 for Salesforce: credentials, the four token flows (JWT bearer, client credentials,
//! refresh token, username-password) and a [`TokenSource`] that caches the access token.
//!
//! Guarantees: secrets are held in [`Secret`], which never prints its value (`Debug`/`Display`
//! show `***`), and no secret is ever logged. Salesforce token responses carry no `expires_in`, so
//! a token is used until the API answers 401 `INVALID_SESSION_ID`; then [`TokenSource::refresh`]
//! mints a new one. Concurrent callers that saw the same stale token cause exactly ONE mint
//! (single-flight): the others wait and receive the new token.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use sfsync_core::{classify_error_code, ErrorClass};

use crate::error::{snippet, Result, SalesforceError};

/// A secret string (password, token, key). Its value is only reachable through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret value. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// How to obtain an access token.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// OAuth 2.0 JWT bearer flow: an RS256 assertion signed with the connected app's key.
    JwtBearer {
        /// Token endpoint host and JWT `aud` (e.g. `https://login.salesforce.com`).
        login_url: String,
        client_id: String,
        username: String,
        /// PEM-encoded RSA private key.
        private_key_pem: Secret,
    },
    /// Client credentials flow; must target the My Domain / instance host.
    ClientCredentials {
        /// My Domain or instance URL hosting the token endpoint.
        instance_url: String,
        client_id: String,
        client_secret: Secret,
    },
    /// Refresh token flow.
    RefreshToken {
        login_url: String,
        client_id: String,
        client_secret: Option<Secret>,
        refresh_token: Secret,
    },
    /// Username-password flow (legacy). The security token is appended to the password.
    Password {
        login_url: String,
        client_id: String,
        client_secret: Secret,
        username: String,
        password: Secret,
        security_token: Option<Secret>,
    },
    /// A ready access token (no minting possible: a 401 is final).
    AccessToken {
        instance_url: String,
        access_token: Secret,
    },
}

/// The OAuth flow to use from a [`CredentialsFile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFlow {
    JwtBearer,
    ClientCredentials,
    RefreshToken,
    Password,
}

impl AuthFlow {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFlow::JwtBearer => "jwt_bearer",
            AuthFlow::ClientCredentials => "client_credentials",
            AuthFlow::RefreshToken => "refresh_token",
            AuthFlow::Password => "password",
        }
    }
}

impl Credentials {
    /// The flow name, for logs and errors.
    pub fn flow_name(&self) -> &'static str {
        match self {
            Credentials::JwtBearer { .. } => "jwt_bearer",
            Credentials::ClientCredentials { .. } => "client_credentials",
            Credentials::RefreshToken { .. } => "refresh_token",
            Credentials::Password { .. } => "password",
            Credentials::AccessToken { .. } => "access_token",
        }
    }

    /// The token endpoint URL of this flow (None for a fixed access token).
    pub fn token_url(&self) -> Option<String> {
        let base = match self {
            Credentials::JwtBearer { login_url, .. }
            | Credentials::RefreshToken { login_url, .. }
            | Credentials::Password { login_url, .. } => login_url,
            Credentials::ClientCredentials { instance_url, .. } => instance_url,
            Credentials::AccessToken { .. } => return None,
        };
        Some(format!(
            "{}/services/oauth2/token",
            base.trim_end_matches('/')
        ))
    }

    /// Loads a credentials JSON file (emulator style) and picks the best available flow:
    /// JWT bearer, then client credentials, then refresh token, then username-password.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Credentials> {
        CredentialsFile::load(path)?.preferred()
    }
}

/// The credentials JSON written by the emulator (and accepted from operators). Every key is
/// optional; which ones are needed depends on the flow.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct CredentialsFile {
    pub login_url: Option<String>,
    pub instance_url: Option<String>,
    pub pubsub_address: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub security_token: Option<Secret>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub refresh_token: Option<Secret>,
    pub org_id: Option<String>,
    pub admin_token: Option<Secret>,
    pub jwt_private_key_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for this org, when it uses a private CA (the emulator).
    pub ca_file: Option<PathBuf>,
    /// Directory of the file, to resolve a relative `jwt_private_key_file`.
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
}

impl fmt::Debug for CredentialsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialsFile")
            .field("login_url", &self.login_url)
            .field("instance_url", &self.instance_url)
            .field("pubsub_address", &self.pubsub_address)
            .field("username", &self.username)
            .field("client_id", &self.client_id)
            .field("org_id", &self.org_id)
            .field("jwt_private_key_file", &self.jwt_private_key_file)
            .finish_non_exhaustive()
    }
}

impl CredentialsFile {
    /// Reads and parses a credentials JSON file.
    pub fn load(path: impl AsRef<Path>) -> Result<CredentialsFile> {
        let path = path.as_ref();
        let place = path.display().to_string();
        let text = std::fs::read(path)
            .map_err(|e| SalesforceError::config(&place, format!("cannot read: {e}")))?;
        let mut file = CredentialsFile::parse(&text).map_err(|e| match e {
            SalesforceError::Config { reason, .. } => SalesforceError::config(&place, reason),
            other => other,
        })?;
        file.base_dir = path.parent().map(Path::to_path_buf);
        Ok(file)
    }

    /// Parses credentials JSON.
    pub fn parse(json: &[u8]) -> Result<CredentialsFile> {
        serde_json::from_slice(json)
            .map_err(|e| SalesforceError::config("credentials JSON", format!("invalid: {e}")))
    }

    fn need<'a, T>(&'a self, v: &'a Option<T>, key: &str, flow: AuthFlow) -> Result<&'a T> {
        v.as_ref().ok_or_else(|| {
            SalesforceError::config(
                "credentials",
                format!("key `{key}` is required for the {} flow", flow.as_str()),
            )
        })
    }

    fn login_url(&self, flow: AuthFlow) -> Result<String> {
        self.login_url
            .clone()
            .or_else(|| self.instance_url.clone())
            .ok_or_else(|| {
                SalesforceError::config(
                    "credentials",
                    format!("key `login_url` is required for the {} flow", flow.as_str()),
                )
            })
    }

    /// Credentials for one flow; fails naming the missing key.
    pub fn credentials(&self, flow: AuthFlow) -> Result<Credentials> {
        Ok(match flow {
            AuthFlow::JwtBearer => {
                let key_file =
                    self.need(&self.jwt_private_key_file, "jwt_private_key_file", flow)?;
                let key_path = match &self.base_dir {
                    Some(dir) if key_file.is_relative() => dir.join(key_file),
                    _ => key_file.clone(),
                };
                let pem = std::fs::read_to_string(&key_path).map_err(|e| {
                    SalesforceError::config(
                        key_path.display().to_string(),
                        format!("cannot read the JWT private key: {e}"),
                    )
                })?;
                Credentials::JwtBearer {
                    login_url: self.login_url(flow)?,
                    client_id: self.need(&self.client_id, "client_id", flow)?.clone(),
                    username: self.need(&self.username, "username", flow)?.clone(),
                    private_key_pem: Secret(pem),
                }
            }
            AuthFlow::ClientCredentials => Credentials::ClientCredentials {
                instance_url: self.need(&self.instance_url, "instance_url", flow)?.clone(),
                client_id: self.need(&self.client_id, "client_id", flow)?.clone(),
                client_secret: self
                    .need(&self.client_secret, "client_secret", flow)?
                    .clone(),
            },
            AuthFlow::RefreshToken => Credentials::RefreshToken {
                login_url: self.login_url(flow)?,
                client_id: self.need(&self.client_id, "client_id", flow)?.clone(),
                client_secret: self.client_secret.clone(),
                refresh_token: self
                    .need(&self.refresh_token, "refresh_token", flow)?
                    .clone(),
            },
            AuthFlow::Password => Credentials::Password {
                login_url: self.login_url(flow)?,
                client_id: self.need(&self.client_id, "client_id", flow)?.clone(),
                client_secret: self
                    .need(&self.client_secret, "client_secret", flow)?
                    .clone(),
                username: self.need(&self.username, "username", flow)?.clone(),
                password: self.need(&self.password, "password", flow)?.clone(),
                security_token: self.security_token.clone(),
            },
        })
    }

    /// The first flow whose keys are present: JWT bearer, client credentials, refresh token,
    /// username-password.
    pub fn preferred(&self) -> Result<Credentials> {
        let has = |s: &Option<Secret>| s.as_ref().is_some_and(|s| !s.is_empty());
        let flow = if self.jwt_private_key_file.is_some() {
            AuthFlow::JwtBearer
        } else if has(&self.client_secret) && self.instance_url.is_some() && self.password.is_none()
        {
            AuthFlow::ClientCredentials
        } else if has(&self.refresh_token) {
            AuthFlow::RefreshToken
        } else {
            AuthFlow::Password
        };
        self.credentials(flow)
    }
}

/// An access token and what the token endpoint said about it.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub access_token: Secret,
    /// Base URL for API calls.
    pub instance_url: String,
    /// Identity URL `…/id/<orgId>/<userId>`.
    pub id_url: Option<String>,
    /// Org id (`00D…`), from the identity URL; the Pub/Sub `tenantid`.
    pub org_id: Option<String>,
    /// User id (`005…`), from the identity URL.
    pub user_id: Option<String>,
    /// Epoch milliseconds of issue, when given.
    pub issued_at_ms: Option<i64>,
    pub token_type: Option<String>,
    pub scope: Option<String>,
    /// Only returned by some grants; never used automatically.
    pub refresh_token: Option<Secret>,
    /// Increases with each token minted by a [`TokenSource`]; used for single-flight refresh.
    pub generation: u64,
}

/// Parses a 200 token response (`access_token`, `instance_url`, `id`, `token_type`, `issued_at`
/// as a string of epoch ms, `scope`, …; no `expires_in`).
pub fn parse_token_response(body: &[u8]) -> std::result::Result<AccessToken, String> {
    #[derive(Deserialize)]
    struct Raw {
        access_token: Option<String>,
        instance_url: Option<String>,
        id: Option<String>,
        token_type: Option<String>,
        issued_at: Option<serde_json::Value>,
        scope: Option<String>,
        refresh_token: Option<String>,
    }
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|e| format!("not a token JSON object ({e}): {}", snippet(body)))?;
    let access_token = raw
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or("the response has no `access_token`")?;
    let instance_url = raw
        .instance_url
        .filter(|u| !u.is_empty())
        .ok_or("the response has no `instance_url`")?;
    let (org_id, user_id) = raw
        .id
        .as_deref()
        .map(parse_identity_url)
        .unwrap_or_default();
    let issued_at_ms = match raw.issued_at {
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        _ => None,
    };
    Ok(AccessToken {
        access_token: Secret(access_token),
        instance_url: instance_url.trim_end_matches('/').to_string(),
        id_url: raw.id,
        org_id,
        user_id,
        issued_at_ms,
        token_type: raw.token_type,
        scope: raw.scope,
        refresh_token: raw.refresh_token.map(Secret),
        generation: 0,
    })
}

/// Splits an identity URL `https://host/id/<orgId>/<userId>` into (org id, user id).
pub fn parse_identity_url(url: &str) -> (Option<String>, Option<String>) {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match parts.iter().rposition(|p| *p == "id") {
        Some(i) if i + 2 < parts.len() + 1 => {
            let org = parts
                .get(i + 1)
                .filter(|s| !s.is_empty())
                .map(|s| s.to_string());
            let user = parts
                .get(i + 2)
                .filter(|s| !s.is_empty())
                .map(|s| s.to_string());
            (org, user)
        }
        _ => (None, None),
    }
}

/// JWT claims of the bearer flow.
#[derive(serde::Serialize)]
struct JwtClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
}

/// Builds the RS256 assertion for the JWT bearer flow (exp = now + 180 s).
pub fn jwt_assertion(
    client_id: &str,
    username: &str,
    audience: &str,
    private_key_pem: &Secret,
) -> Result<String> {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_key_pem.expose().as_bytes())
        .map_err(|e| {
            SalesforceError::config("JWT private key", format!("not an RSA PEM key: {e}"))
        })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = JwtClaims {
        iss: client_id,
        sub: username,
        aud: audience.trim_end_matches('/'),
        exp: now + 180,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .map_err(|e| SalesforceError::config("JWT assertion", format!("signing failed: {e}")))
}

/// Caches an access token and mints a new one on demand, single-flight.
pub struct TokenSource {
    http: reqwest::Client,
    credentials: Credentials,
    current: parking_lot::RwLock<Option<Arc<AccessToken>>>,
    mint_lock: tokio::sync::Mutex<()>,
    mints: AtomicU64,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("flow", &self.credentials.flow_name())
            .field("mints", &self.mints.load(Ordering::Relaxed))
            .finish()
    }
}

impl TokenSource {
    /// A token source using `http` for token requests.
    pub fn new(http: reqwest::Client, credentials: Credentials) -> Self {
        let current = match &credentials {
            Credentials::AccessToken {
                instance_url,
                access_token,
            } => Some(Arc::new(AccessToken {
                access_token: access_token.clone(),
                instance_url: instance_url.trim_end_matches('/').to_string(),
                id_url: None,
                org_id: None,
                user_id: None,
                issued_at_ms: None,
                token_type: Some("Bearer".into()),
                scope: None,
                refresh_token: None,
                generation: 0,
            })),
            _ => None,
        };
        TokenSource {
            http,
            credentials,
            current: parking_lot::RwLock::new(current),
            mint_lock: tokio::sync::Mutex::new(()),
            mints: AtomicU64::new(0),
        }
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Number of tokens minted so far (for tests and metrics).
    pub fn mint_count(&self) -> u64 {
        self.mints.load(Ordering::Relaxed)
    }

    /// The cached token, if any, without network access.
    pub fn cached(&self) -> Option<Arc<AccessToken>> {
        self.current.read().clone()
    }

    /// The cached token, minting one first when there is none.
    pub async fn token(&self) -> Result<Arc<AccessToken>> {
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        let _guard = self.mint_lock.lock().await;
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        self.mint_locked().await
    }

    /// Replaces `stale` with a new token. When another caller already replaced it, returns that
    /// newer token without minting (single-flight).
    pub async fn refresh(&self, stale: &AccessToken) -> Result<Arc<AccessToken>> {
        let _guard = self.mint_lock.lock().await;
        if let Some(t) = self.cached() {
            if t.generation != stale.generation {
                return Ok(t);
            }
        }
        self.mint_locked().await
    }

    /// Drops the cached token; the next [`token`](Self::token) call mints.
    pub fn invalidate(&self) {
        if !matches!(self.credentials, Credentials::AccessToken { .. }) {
            *self.current.write() = None;
        }
    }

    async fn mint_locked(&self) -> Result<Arc<AccessToken>> {
        if let Credentials::AccessToken { .. } = &self.credentials {
            return Err(SalesforceError::Auth {
                url: String::new(),
                flow: "access_token",
                status: 401,
                error: "INVALID_SESSION_ID".into(),
                description: "the fixed access token was rejected and cannot be renewed".into(),
                class: ErrorClass::User,
            });
        }
        let generation = self.mints.fetch_add(1, Ordering::Relaxed) + 1;
        let mut token = request_token(&self.http, &self.credentials).await?;
        token.generation = generation;
        tracing::debug!(
            flow = self.credentials.flow_name(),
            instance_url = %token.instance_url,
            generation,
            "Minted a Salesforce access token."
        );
        let token = Arc::new(token);
        *self.current.write() = Some(token.clone());
        Ok(token)
    }
}

/// Performs one token request for `credentials`.
pub async fn request_token(
    http: &reqwest::Client,
    credentials: &Credentials,
) -> Result<AccessToken> {
    let flow = credentials.flow_name();
    let Some(url) = credentials.token_url() else {
        return Err(SalesforceError::config(
            "credentials",
            "a fixed access token has no token endpoint",
        ));
    };
    let form: Vec<(&str, String)> = match credentials {
        Credentials::JwtBearer {
            login_url,
            client_id,
            username,
            private_key_pem,
        } => vec![
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
            ),
            (
                "assertion",
                jwt_assertion(client_id, username, login_url, private_key_pem)?,
            ),
        ],
        Credentials::ClientCredentials {
            client_id,
            client_secret,
            ..
        } => vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", client_id.clone()),
            ("client_secret", client_secret.expose().to_string()),
        ],
        Credentials::RefreshToken {
            client_id,
            client_secret,
            refresh_token,
            ..
        } => {
            let mut v = vec![
                ("grant_type", "refresh_token".to_string()),
                ("refresh_token", refresh_token.expose().to_string()),
                ("client_id", client_id.clone()),
            ];
            if let Some(s) = client_secret {
                v.push(("client_secret", s.expose().to_string()));
            }
            v
        }
        Credentials::Password {
            client_id,
            client_secret,
            username,
            password,
            security_token,
            ..
        } => {
            let mut pw = password.expose().to_string();
            if let Some(t) = security_token {
                pw.push_str(t.expose());
            }
            vec![
                ("grant_type", "password".into()),
                ("client_id", client_id.clone()),
                ("client_secret", client_secret.expose().to_string()),
                ("username", username.clone()),
                ("password", pw),
            ]
        }
        Credentials::AccessToken { .. } => unreachable_flow()?,
    };
    let resp = http
        .post(&url)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&form)
        .send()
        .await
        .map_err(|source| SalesforceError::Transport {
            method: "POST".into(),
            path: url.clone(),
            reason: "token request failed",
            source,
        })?;
    let status = resp.status().as_u16();
    let body = resp
        .bytes()
        .await
        .map_err(|source| SalesforceError::Transport {
            method: "POST".into(),
            path: url.clone(),
            reason: "reading the token response failed",
            source,
        })?;
    if !(200..300).contains(&status) {
        let e = crate::error::parse_error_body("POST", &url, status, &body);
        let class = if e.error_code.is_empty() {
            classify_error_code("", Some(status))
        } else {
            e.class
        };
        return Err(SalesforceError::Auth {
            url,
            flow,
            status,
            error: e.error_code,
            description: e.message,
            class,
        });
    }
    parse_token_response(&body)
        .map_err(|reason| SalesforceError::decode("POST", &url, status, reason))
}

fn unreachable_flow() -> Result<Vec<(&'static str, String)>> {
    Err(SalesforceError::config(
        "credentials",
        "a fixed access token has no token endpoint",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let c = Credentials::Password {
            login_url: "https://login".into(),
            client_id: "cid".into(),
            client_secret: "topsecret".into(),
            username: "u".into(),
            password: "hunter2".into(),
            security_token: Some("tok".into()),
        };
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("topsecret"),
            "{dbg}"
        );
        let file =
            CredentialsFile::parse(br#"{"password":"hunter2","admin_token":"adm"}"#).unwrap();
        let dbg = format!("{file:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("adm\""), "{dbg}");
    }

    #[test]
    fn token_response_without_expires_in() {
        let body = br#"{"access_token":"00Dxx!AQ4","instance_url":"https://acme.my.salesforce.com/","id":"https://login.salesforce.com/id/00D5g000004abcdEAA/0055g000003xyzAAA","token_type":"Bearer","issued_at":"1712345678901","signature":"abc=","scope":"api"}"#;
        let t = parse_token_response(body).unwrap();
        assert_eq!(t.access_token.expose(), "00Dxx!AQ4");
        assert_eq!(t.instance_url, "https://acme.my.salesforce.com");
        assert_eq!(t.org_id.as_deref(), Some("00D5g000004abcdEAA"));
        assert_eq!(t.user_id.as_deref(), Some("0055g000003xyzAAA"));
        assert_eq!(t.issued_at_ms, Some(1712345678901));
        assert_eq!(t.scope.as_deref(), Some("api"));
        // JWT response: fewer keys.
        let t = parse_token_response(br#"{"access_token":"a","scope":"api","instance_url":"https://x","id":"https://x/id/00D/005","token_type":"Bearer"}"#).unwrap();
        assert_eq!(t.issued_at_ms, None);
        assert_eq!(t.org_id.as_deref(), Some("00D"));
        assert!(parse_token_response(br#"{"instance_url":"https://x"}"#)
            .unwrap_err()
            .contains("access_token"));
        assert!(parse_token_response(b"<html>").is_err());
    }

    #[test]
    fn identity_url_variants() {
        assert_eq!(
            parse_identity_url("https://h/id/00D1/0051"),
            (Some("00D1".into()), Some("0051".into()))
        );
        assert_eq!(
            parse_identity_url("https://h/id/00D1/"),
            (Some("00D1".into()), None)
        );
        assert_eq!(parse_identity_url("https://h/other"), (None, None));
        assert_eq!(parse_identity_url(""), (None, None));
    }

    #[test]
    fn credentials_file_flows() {
        let dir = tempfile::tempdir().unwrap();
        let json = r#"{"login_url":"https://127.0.0.1:8443","instance_url":"https://127.0.0.1:8443",
            "pubsub_address":"127.0.0.1:7443","username":"admin@example.com","password":"pw",
            "security_token":"st","client_id":"cid","client_secret":"cs","refresh_token":"rt",
            "org_id":"00D000000000001AAA","admin_token":"adm","jwt_private_key_file":"jwt.key"}"#;
        std::fs::write(dir.path().join("creds.json"), json).unwrap();
        let f = CredentialsFile::load(dir.path().join("creds.json")).unwrap();
        // The key file is missing: a clear error naming it.
        let err = f.credentials(AuthFlow::JwtBearer).unwrap_err().to_string();
        assert!(err.contains("jwt.key"), "{err}");
        match f.credentials(AuthFlow::Password).unwrap() {
            Credentials::Password {
                username,
                security_token,
                ..
            } => {
                assert_eq!(username, "admin@example.com");
                assert_eq!(security_token.unwrap().expose(), "st");
            }
            other => panic!("{other:?}"),
        }
        let c = f.credentials(AuthFlow::ClientCredentials).unwrap();
        assert_eq!(
            c.token_url().unwrap(),
            "https://127.0.0.1:8443/services/oauth2/token"
        );
        let partial = CredentialsFile::parse(br#"{"login_url":"https://l"}"#).unwrap();
        let err = partial
            .credentials(AuthFlow::RefreshToken)
            .unwrap_err()
            .to_string();
        assert!(err.contains("client_id"), "{err}");
    }

    #[test]
    fn jwt_rejects_bad_key() {
        let err = jwt_assertion("cid", "u", "https://login", &Secret::new("nope")).unwrap_err();
        assert!(err.to_string().contains("JWT private key"), "{err}");
    }
}
