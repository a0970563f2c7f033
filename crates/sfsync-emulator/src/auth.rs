//! Sessions, users and the connected app. Access tokens are issued by the OAuth flows and SOAP
//! login, expire after a configurable inactivity timeout (Salesforce's session timeout), can be
//! revoked or force-expired, and are checked on every API call and Pub/Sub RPC. A bad, expired or
//! revoked token is always answered with 401 `INVALID_SESSION_ID`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use parking_lot::{Mutex, RwLock};
use rand::distr::Alphanumeric;
use rand::Rng;
use sfsync_core::SfId;
use sfsync_org::{ApiKind, CallContext};

use crate::http::error::ApiError;
use crate::state::AppState;

/// The connected app the credentials file describes.
#[derive(Debug, Clone)]
pub struct ConnectedApp {
    pub client_id: String,
    pub client_secret: String,
    /// PEM public key of the certificate uploaded to the app (JWT bearer flow, RS256).
    pub jwt_public_key_pem: String,
}

/// A user who can log in with a password (+ security token).
#[derive(Debug, Clone)]
pub struct UserLogin {
    pub user_id: SfId,
    pub username: String,
    pub password: String,
    pub security_token: String,
    pub full_name: String,
    pub email: String,
}

/// A live session.
#[derive(Debug)]
pub struct SessionInfo {
    pub user_id: SfId,
    pub username: String,
    pub issued_at_ms: i64,
    last_used_ms: AtomicI64,
}

/// An authenticated caller (axum extractor: `Authorization: Bearer <token>` or `OAuth <token>`).
#[derive(Debug, Clone)]
pub struct Session {
    pub token: String,
    pub user_id: SfId,
    pub username: String,
}

impl Session {
    /// The DML context for this caller: commit user, API kind and version, and the `client=`
    /// value of `Sforce-Call-Options` (separated by `;` in current docs, `,` in older ones).
    pub fn call_context(
        &self,
        api: ApiKind,
        api_version: &str,
        headers: &HeaderMap,
    ) -> CallContext {
        CallContext {
            user_id: self.user_id,
            api,
            api_version: api_version.to_string(),
            client: call_options_client(headers),
        }
    }
}

/// The `client=` part of `Sforce-Call-Options`.
pub fn call_options_client(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get("sforce-call-options")?.to_str().ok()?;
    raw.split([';', ','])
        .filter_map(|part| {
            let (k, v) = part.split_once('=')?;
            (k.trim().eq_ignore_ascii_case("client")).then(|| v.trim().to_string())
        })
        .find(|v| !v.is_empty())
}

pub struct Auth {
    pub org_id: SfId,
    pub app: ConnectedApp,
    /// Users that can log in; the first is the admin, the second the integration ("run as")
    /// user of the client-credentials flow.
    pub users: Vec<UserLogin>,
    refresh_tokens: RwLock<HashMap<String, usize>>,
    sessions: RwLock<HashMap<String, Arc<SessionInfo>>>,
    timeout: Mutex<Duration>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Auth {
    pub fn new(org_id: SfId, app: ConnectedApp, users: Vec<UserLogin>, timeout: Duration) -> Auth {
        assert!(!users.is_empty(), "an org has at least its admin user");
        Auth {
            org_id,
            app,
            users,
            refresh_tokens: RwLock::new(HashMap::new()),
            sessions: RwLock::new(HashMap::new()),
            timeout: Mutex::new(timeout),
        }
    }

    pub fn admin(&self) -> &UserLogin {
        &self.users[0]
    }

    /// The user the client-credentials flow runs as.
    pub fn integration_user(&self) -> &UserLogin {
        self.users.get(1).unwrap_or(&self.users[0])
    }

    pub fn user_by_name(&self, username: &str) -> Option<&UserLogin> {
        self.users
            .iter()
            .find(|u| u.username.eq_ignore_ascii_case(username))
    }

    pub fn user_by_id(&self, id: SfId) -> Option<&UserLogin> {
        self.users.iter().find(|u| u.user_id == id)
    }

    /// Registers a refresh token for a user (tokens survive restarts via the credentials file).
    pub fn add_refresh_token(&self, token: &str, user_id: SfId) {
        if let Some(i) = self.users.iter().position(|u| u.user_id == user_id) {
            self.refresh_tokens.write().insert(token.to_string(), i);
        }
    }

    /// The user a refresh token belongs to.
    pub fn refresh_token_user(&self, token: &str) -> Option<&UserLogin> {
        let i = *self.refresh_tokens.read().get(token)?;
        self.users.get(i)
    }

    /// Issues a new access token for `user_id`: `<org id 15>!<random>` like Salesforce's.
    pub fn issue(&self, user_id: SfId) -> (String, i64) {
        let user = self.user_by_id(user_id).unwrap_or_else(|| self.admin());
        let random: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(96)
            .map(char::from)
            .collect();
        let token = format!("{}!AQ{}", self.org_id.short(), random);
        let now = now_ms();
        let info = Arc::new(SessionInfo {
            user_id: user.user_id,
            username: user.username.clone(),
            issued_at_ms: now,
            last_used_ms: AtomicI64::new(now),
        });
        self.sessions.write().insert(token.clone(), info);
        (token, now)
    }

    /// The session for `token` if it is live; touches it (inactivity timeout).
    pub fn validate(&self, token: &str) -> Option<Session> {
        let timeout = self.timeout.lock().as_millis() as i64;
        let now = now_ms();
        let info = self.sessions.read().get(token).cloned()?;
        let last = info.last_used_ms.load(Ordering::Relaxed);
        if now - last > timeout {
            self.sessions.write().remove(token);
            return None;
        }
        info.last_used_ms.store(now, Ordering::Relaxed);
        Some(Session {
            token: token.to_string(),
            user_id: info.user_id,
            username: info.username.clone(),
        })
    }

    /// Revokes an access token or a refresh token. Returns whether it existed.
    pub fn revoke(&self, token: &str) -> bool {
        let a = self.sessions.write().remove(token).is_some();
        let b = self.refresh_tokens.write().remove(token).is_some();
        a || b
    }

    /// Expires every access token now (fault injection); refresh tokens stay valid.
    pub fn expire_all(&self) -> usize {
        let mut s = self.sessions.write();
        let n = s.len();
        s.clear();
        n
    }

    pub fn set_timeout(&self, timeout: Duration) {
        *self.timeout.lock() = timeout;
    }

    pub fn session_count(&self) -> usize {
        self.sessions.read().len()
    }
}

/// The token of an `Authorization: Bearer|OAuth <token>` header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("oauth"))
        .then(|| token.trim())
}

impl FromRequestParts<AppState> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers).ok_or_else(ApiError::invalid_session)?;
        state
            .auth
            .validate(token)
            .ok_or_else(ApiError::invalid_session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth() -> Auth {
        let org = SfId::from_parts("00D", 1);
        Auth::new(
            org,
            ConnectedApp {
                client_id: "cid".into(),
                client_secret: "secret".into(),
                jwt_public_key_pem: String::new(),
            },
            vec![UserLogin {
                user_id: SfId::from_parts("005", 1),
                username: "admin@example.org".into(),
                password: "pw".into(),
                security_token: "tok".into(),
                full_name: "Admin".into(),
                email: "admin@example.org".into(),
            }],
            Duration::from_secs(3600),
        )
    }

    #[test]
    fn tokens_validate_until_revoked_or_expired() {
        let a = auth();
        let (t, _) = a.issue(a.admin().user_id);
        assert!(t.starts_with(a.org_id.short()));
        assert_eq!(a.validate(&t).unwrap().username, "admin@example.org");
        assert!(a.revoke(&t));
        assert!(a.validate(&t).is_none());
        let (t2, _) = a.issue(a.admin().user_id);
        a.set_timeout(Duration::from_millis(0));
        std::thread::sleep(Duration::from_millis(5));
        assert!(a.validate(&t2).is_none());
    }

    #[test]
    fn call_options_client_is_parsed_in_both_separators() {
        let mut h = HeaderMap::new();
        h.insert(
            "sforce-call-options",
            HeaderValue::from_static("client=sfsync; defaultNamespace=x"),
        );
        assert_eq!(call_options_client(&h).as_deref(), Some("sfsync"));
        h.insert(
            "sforce-call-options",
            HeaderValue::from_static("defaultNamespace=x, client=etl"),
        );
        assert_eq!(call_options_client(&h).as_deref(), Some("etl"));
        h.insert(
            "sforce-call-options",
            HeaderValue::from_static("defaultNamespace=x"),
        );
        assert_eq!(call_options_client(&h), None);
    }
}
