//! OAuth 2.0 endpoints as Salesforce serves them: `POST /services/oauth2/token` with the JWT
//! bearer (RS256 verified against the connected app's certificate), client credentials, refresh
//! token and username-password grants; `revoke`, `introspect`, `userinfo` and the identity URL.
//! Token responses carry `access_token`, `instance_url` (no path), `id`, `token_type`,
//! `issued_at`, `signature` and `scope` — and never `expires_in`, like Salesforce. Errors are
//! `{"error", "error_description"}` with HTTP 400 (401 for a bad client secret on introspect).

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use crate::auth::{Session, UserLogin};
use crate::http::error::ApiError;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/services/oauth2/token", post(token))
        .route("/services/oauth2/revoke", post(revoke).get(revoke_get))
        .route("/services/oauth2/introspect", post(introspect))
        .route("/services/oauth2/userinfo", get(userinfo).post(userinfo))
        .route("/id/{org}/{user}", get(identity).post(identity))
}

/// An OAuth error response.
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

fn oauth_error(error: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError {
        status: StatusCode::BAD_REQUEST,
        error,
        description: description.into(),
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response()
    }
}

/// Client id and secret from the form or from HTTP Basic auth.
fn client_credentials(
    form: &HashMap<String, String>,
    headers: &HeaderMap,
) -> (Option<String>, Option<String>) {
    let mut id = form.get("client_id").cloned();
    let mut secret = form.get("client_secret").cloned();
    if let Some(v) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(b64) = v
            .strip_prefix("Basic ")
            .or_else(|| v.strip_prefix("basic "))
        {
            if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
                if let Ok(text) = String::from_utf8(raw) {
                    if let Some((i, s)) = text.split_once(':') {
                        let dec = |x: &str| {
                            percent_encoding::percent_decode_str(x)
                                .decode_utf8_lossy()
                                .into_owned()
                        };
                        id.get_or_insert_with(|| dec(i));
                        secret.get_or_insert_with(|| dec(s));
                    }
                }
            }
        }
    }
    (id, secret)
}

fn check_client_id(state: &AppState, client_id: Option<&str>) -> Result<(), OAuthError> {
    match client_id {
        Some(id) if id == state.auth.app.client_id => Ok(()),
        Some(_) => Err(oauth_error(
            "invalid_client_id",
            "client identifier invalid",
        )),
        None => Err(oauth_error(
            "invalid_client_id",
            "client identifier invalid",
        )),
    }
}

fn check_client_secret(state: &AppState, secret: Option<&str>) -> Result<(), OAuthError> {
    match secret {
        Some(s) if constant_time_eq(s.as_bytes(), state.auth.app.client_secret.as_bytes()) => {
            Ok(())
        }
        _ => Err(oauth_error("invalid_client", "invalid client credentials")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token response for a freshly issued session.
fn token_response(
    state: &AppState,
    user: &UserLogin,
    scope: &str,
    refresh_token: Option<&str>,
) -> Response {
    let (token, issued_at) = state.auth.issue(user.user_id);
    let id = format!(
        "{}/id/{}/{}",
        state.base_url, state.auth.org_id, user.user_id
    );
    let issued_at = issued_at.to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(state.auth.app.client_secret.as_bytes())
        .expect("HMAC accepts any key length");
    mac.update(id.as_bytes());
    mac.update(issued_at.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let mut body = json!({
        "access_token": token,
        "signature": signature,
        "scope": scope,
        "instance_url": &*state.base_url,
        "id": id,
        "token_type": "Bearer",
        "issued_at": issued_at,
    });
    if let Some(r) = refresh_token {
        body["refresh_token"] = json!(r);
    }
    Json(body).into_response()
}

#[derive(Debug, Deserialize)]
struct JwtClaims {
    iss: String,
    sub: String,
    aud: serde_json::Value,
    /// Epoch seconds; some clients (simple-salesforce) send it as a string, which Salesforce
    /// accepts, so both forms are read.
    exp: serde_json::Value,
}

async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match token_inner(&state, &headers, &body) {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn token_inner(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Response, OAuthError> {
    let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    let grant = form
        .get("grant_type")
        .ok_or_else(|| oauth_error("unsupported_grant_type", "grant type not supported"))?;
    let (client_id, client_secret) = client_credentials(&form, headers);
    match grant.as_str() {
        "password" => {
            check_client_id(state, client_id.as_deref())?;
            check_client_secret(state, client_secret.as_deref())?;
            let username = form.get("username").map(String::as_str).unwrap_or_default();
            let password = form.get("password").map(String::as_str).unwrap_or_default();
            let user = state
                .auth
                .user_by_name(username)
                .filter(|u| password_matches(u, password))
                .ok_or_else(|| oauth_error("invalid_grant", "authentication failure"))?;
            Ok(token_response(state, user, "api", None))
        }
        "refresh_token" => {
            check_client_id(state, client_id.as_deref())?;
            if let Some(secret) = client_secret.as_deref() {
                check_client_secret(state, Some(secret))?;
            }
            let refresh = form
                .get("refresh_token")
                .map(String::as_str)
                .unwrap_or_default();
            let user = state
                .auth
                .refresh_token_user(refresh)
                .ok_or_else(|| oauth_error("invalid_grant", "expired access/refresh token"))?;
            // Salesforce does not rotate refresh tokens: no refresh_token in this response.
            Ok(token_response(state, user, "api refresh_token", None))
        }
        "client_credentials" => {
            check_client_id(state, client_id.as_deref())?;
            check_client_secret(state, client_secret.as_deref())?;
            let user = state.auth.integration_user().clone();
            Ok(token_response(state, &user, "api", None))
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            let assertion = form
                .get("assertion")
                .ok_or_else(|| oauth_error("invalid_grant", "invalid assertion"))?;
            let user = verify_jwt(state, assertion)?;
            Ok(token_response(state, &user, "api", None))
        }
        _ => Err(oauth_error(
            "unsupported_grant_type",
            "grant type not supported",
        )),
    }
}

fn password_matches(user: &UserLogin, given: &str) -> bool {
    if user.password.is_empty() {
        return false;
    }
    // Loopback is a trusted IP range, so the security token may be omitted (as Salesforce allows
    // for trusted ranges); when given it must be right.
    let with_token = format!("{}{}", user.password, user.security_token);
    constant_time_eq(given.as_bytes(), with_token.as_bytes())
        || constant_time_eq(given.as_bytes(), user.password.as_bytes())
}

/// Verifies an RS256 JWT assertion: signature by the connected app's key, `iss` = client id,
/// `sub` = a known username, `aud` = the login URL or Salesforce's login/test hosts, `exp` in the
/// future (30 s leeway).
fn verify_jwt(state: &AppState, assertion: &str) -> Result<UserLogin, OAuthError> {
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
    let header = decode_header(assertion)
        .map_err(|e| oauth_error("invalid_grant", format!("invalid assertion: {e}")))?;
    if header.alg != Algorithm::RS256 {
        return Err(oauth_error(
            "invalid_grant",
            "invalid assertion: algorithm must be RS256",
        ));
    }
    let key =
        DecodingKey::from_rsa_pem(state.auth.app.jwt_public_key_pem.as_bytes()).map_err(|e| {
            oauth_error(
                "invalid_grant",
                format!("connected app certificate unusable: {e}"),
            )
        })?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_aud = false;
    // `exp` is checked below: jsonwebtoken only accepts it as a number.
    validation.validate_exp = false;
    validation.set_required_spec_claims::<&str>(&[]);
    let data = decode::<JwtClaims>(assertion, &key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::ExpiredSignature => {
                oauth_error("invalid_grant", "expired authorization code")
            }
            ErrorKind::InvalidSignature => {
                oauth_error("invalid_grant", "invalid assertion: signature")
            }
            _ => oauth_error("invalid_grant", format!("invalid assertion: {e}")),
        }
    })?;
    let claims = data.claims;
    let exp = match &claims.exp {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        oauth_error(
            "invalid_grant",
            "invalid assertion: exp is missing or not a number",
        )
    })?;
    let now = chrono::Utc::now().timestamp() as f64;
    if exp + 30.0 < now {
        return Err(oauth_error("invalid_grant", "expired authorization code"));
    }
    if claims.iss != state.auth.app.client_id {
        return Err(oauth_error(
            "invalid_client_id",
            "client identifier invalid",
        ));
    }
    let allowed = [
        state.base_url.to_string(),
        "https://login.salesforce.com".to_string(),
        "https://test.salesforce.com".to_string(),
    ];
    let aud_ok = match &claims.aud {
        serde_json::Value::String(s) => allowed.iter().any(|a| a == s.trim_end_matches('/')),
        serde_json::Value::Array(v) => v
            .iter()
            .filter_map(|x| x.as_str())
            .any(|s| allowed.iter().any(|a| a == s.trim_end_matches('/'))),
        _ => false,
    };
    if !aud_ok {
        return Err(oauth_error("invalid_grant", "audience is invalid"));
    }
    state
        .auth
        .user_by_name(&claims.sub)
        .cloned()
        .ok_or_else(|| oauth_error("invalid_grant", "user hasn't approved this consumer"))
}

#[derive(Debug, Deserialize)]
struct TokenParam {
    token: Option<String>,
}

async fn revoke(State(state): State<AppState>, Form(p): Form<TokenParam>) -> Response {
    revoke_token(&state, p.token)
}

async fn revoke_get(
    State(state): State<AppState>,
    axum::extract::Query(p): axum::extract::Query<TokenParam>,
) -> Response {
    revoke_token(&state, p.token)
}

fn revoke_token(state: &AppState, token: Option<String>) -> Response {
    match token {
        Some(t) if state.auth.revoke(&t) => StatusCode::OK.into_response(),
        _ => oauth_error("unsupported_token_type", "this token type is not supported")
            .into_response(),
    }
}

async fn introspect(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let (id, secret) = client_credentials(&form, &headers);
    if check_client_id(&state, id.as_deref()).is_err()
        || check_client_secret(&state, secret.as_deref()).is_err()
    {
        let mut e = oauth_error("invalid_client", "invalid client credentials");
        e.status = StatusCode::UNAUTHORIZED;
        return e.into_response();
    }
    let token = form.get("token").map(String::as_str).unwrap_or_default();
    match state.auth.validate(token) {
        Some(s) => Json(json!({
            "active": true,
            "scope": "api",
            "client_id": state.auth.app.client_id,
            "username": s.username,
            "sub": format!("{}/id/{}/{}", state.base_url, state.auth.org_id, s.user_id),
            "token_type": "access_token",
        }))
        .into_response(),
        None => Json(json!({"active": false})).into_response(),
    }
}

fn identity_json(state: &AppState, session: &Session) -> serde_json::Value {
    let user = state.auth.user_by_id(session.user_id);
    let base = &*state.base_url;
    let org = state.auth.org_id;
    let uid = session.user_id;
    json!({
        "id": format!("{base}/id/{org}/{uid}"),
        "asserted_user": true,
        "user_id": uid.to_string(),
        "organization_id": org.to_string(),
        "username": session.username,
        "nick_name": session.username.split('@').next().unwrap_or_default(),
        "display_name": user.map(|u| u.full_name.clone()).unwrap_or_default(),
        "email": user.map(|u| u.email.clone()).unwrap_or_default(),
        "active": true,
        "user_type": "STANDARD",
        "language": "en_US",
        "locale": "en_US",
        "utcOffset": 0,
        "urls": {
            "enterprise": format!("{base}/services/Soap/c/{{version}}/{}", org.short()),
            "partner": format!("{base}/services/Soap/u/{{version}}/{}", org.short()),
            "rest": format!("{base}/services/data/v{{version}}/"),
            "sobjects": format!("{base}/services/data/v{{version}}/sobjects/"),
            "query": format!("{base}/services/data/v{{version}}/query/"),
            "limits": format!("{base}/services/data/v{{version}}/limits/"),
        },
    })
}

async fn identity(
    State(state): State<AppState>,
    session: Session,
    Path((org, user)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let org_ok = sfsync_core::SfId::parse(&org)
        .map(|o| o == state.auth.org_id)
        .unwrap_or(false);
    let user_ok = sfsync_core::SfId::parse(&user)
        .map(|u| u == session.user_id)
        .unwrap_or(false);
    if !org_ok || !user_ok {
        return Err(ApiError::new(403, "INSUFFICIENT_ACCESS", "Bad_Id"));
    }
    Ok(Json(identity_json(&state, &session)))
}

async fn userinfo(State(state): State<AppState>, session: Session) -> Json<serde_json::Value> {
    let id = identity_json(&state, &session);
    Json(json!({
        "sub": id["id"],
        "user_id": id["user_id"],
        "organization_id": id["organization_id"],
        "preferred_username": id["username"],
        "nickname": id["nick_name"],
        "name": id["display_name"],
        "email": id["email"],
        "email_verified": true,
        "active": true,
        "user_type": "STANDARD",
        "language": "en_US",
        "locale": "en_US",
        "utcOffset": 0,
        "urls": id["urls"],
    }))
}
