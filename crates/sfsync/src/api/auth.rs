//! Bearer-token authentication and role checks.
//!
//! Guarantees: a request without `Authorization: Bearer <token>`, or with a token that is not
//! configured, is refused (401) before any handler reads its body or the store; tokens are
//! compared in constant time (SHA-256 digests of the presented and each configured token are
//! compared byte by byte without early exit, and every configured token is compared); a caller
//! whose role does not allow an endpoint gets 403. Token values are never logged or echoed.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::ApiState;
use crate::config::secrets::ApiToken;
use crate::config::validate::ApiRole;

/// A configured token, kept as its digest.
#[derive(Debug, Clone)]
pub struct KnownToken {
    pub name: String,
    pub role: ApiRole,
    pub source_system: Option<String>,
    /// May read PII in clear.
    pub pii: bool,
    digest: [u8; 32],
}

impl KnownToken {
    pub fn from_config(t: &ApiToken) -> KnownToken {
        KnownToken {
            name: t.name.clone(),
            role: t.role,
            source_system: t.source_system.clone(),
            pii: t.pii,
            digest: digest(t.token.expose()),
        }
    }
}

/// A configured HTTP Basic principal (OData), kept as the digest of `username:password`.
#[derive(Debug, Clone)]
pub struct KnownBasic {
    pub username: String,
    pub pii: bool,
    digest: [u8; 32],
}

impl KnownBasic {
    pub fn from_config(b: &crate::config::secrets::BasicPrincipal) -> KnownBasic {
        KnownBasic {
            username: b.username.clone(),
            pii: b.pii,
            digest: digest(&format!("{}:{}", b.username, b.password.expose())),
        }
    }
}

/// The principal whose `user:password` is `presented`, after comparing against all of them.
pub fn find_basic<'a>(principals: &'a [KnownBasic], presented: &str) -> Option<&'a KnownBasic> {
    let d = digest(presented);
    let mut found = None;
    for p in principals {
        if ct_eq(&p.digest, &d) && found.is_none() {
            found = Some(p);
        }
    }
    found
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality without an early exit.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// The token that matches `presented`, after comparing against all of them.
pub fn find<'a>(tokens: &'a [KnownToken], presented: &str) -> Option<&'a KnownToken> {
    let d = digest(presented);
    let mut found = None;
    for t in tokens {
        if ct_eq(&t.digest, &d) && found.is_none() {
            found = Some(t);
        }
    }
    found
}

/// Who is calling: the authenticated token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: ApiRole,
    pub source_system: Option<String>,
    /// May read PII in clear (read API, OData).
    pub pii: bool,
}

impl Caller {
    /// Viewer endpoints: viewers and operators (a writer token is for the ingress only).
    pub fn require_viewer(&self) -> Result<(), ApiError> {
        match self.role {
            ApiRole::Viewer | ApiRole::Operator => Ok(()),
            ApiRole::Writer => Err(ApiError::forbidden(format!(
                "token '{}' has role writer, which may only use the writeback ingress (/api/v1/writes)",
                self.name
            ))),
        }
    }

    /// Actions: operators only.
    pub fn require_operator(&self, what: &str) -> Result<(), ApiError> {
        match self.role {
            ApiRole::Operator => Ok(()),
            r => Err(ApiError::forbidden(format!(
                "{what} needs role operator; token '{}' has role {}",
                self.name,
                r.as_str()
            ))),
        }
    }

    /// Submitting writes: operators and writers.
    pub fn require_writer(&self) -> Result<(), ApiError> {
        match self.role {
            ApiRole::Operator | ApiRole::Writer => Ok(()),
            ApiRole::Viewer => Err(ApiError::forbidden(format!(
                "submitting writes needs role operator or writer; token '{}' has role viewer",
                self.name
            ))),
        }
    }
}

/// The bearer token of a request, if it has one.
pub fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let Some(v) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing Authorization header: send `Authorization: Bearer <token>`",
        ));
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
    match v.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(ApiError::unauthorized(
            "the Authorization header is not `Bearer <token>`",
        )),
    }
}

impl FromRequestParts<Arc<ApiState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, Self::Rejection> {
        let presented = bearer(parts)?;
        match find(&state.tokens, presented) {
            Some(t) => Ok(Caller {
                name: t.name.clone(),
                role: t.role,
                source_system: t.source_system.clone(),
                pii: t.pii,
            }),
            None => {
                tracing::warn!(path = %parts.uri.path(), "API: a request with an unknown bearer token was refused.");
                Err(ApiError::unauthorized("the bearer token is not valid"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, value: &str, role: ApiRole) -> KnownToken {
        KnownToken {
            name: name.into(),
            role,
            source_system: None,
            pii: false,
            digest: digest(value),
        }
    }

    #[test]
    fn tokens_match_exactly() {
        let ts = vec![
            token("a", "token-aaaaaaaaaaaaaaaa", ApiRole::Viewer),
            token("b", "token-bbbbbbbbbbbbbbbb", ApiRole::Operator),
        ];
        assert_eq!(find(&ts, "token-bbbbbbbbbbbbbbbb").unwrap().name, "b");
        assert!(find(&ts, "token-bbbbbbbbbbbbbbb").is_none());
        assert!(find(&ts, "token-bbbbbbbbbbbbbbbbb").is_none());
        assert!(find(&ts, "").is_none());
        assert!(find(&[], "token-aaaaaaaaaaaaaaaa").is_none());
    }

    #[test]
    fn basic_principals_match_user_and_password_together() {
        let p = |u: &str, pw: &str| {
            KnownBasic::from_config(&crate::config::secrets::BasicPrincipal {
                username: u.into(),
                password: crate::config::Secret::new(pw),
                pii: false,
            })
        };
        let ps = vec![
            p("sfconnect", "password-0123456789"),
            p("bi", "other-password-0123"),
        ];
        assert_eq!(
            find_basic(&ps, "bi:other-password-0123").unwrap().username,
            "bi"
        );
        assert!(find_basic(&ps, "bi:password-0123456789").is_none());
        assert!(find_basic(&ps, "sfconnect:password-012345678").is_none());
    }

    #[test]
    fn roles_gate_endpoints() {
        let c = |role| Caller {
            name: "t".into(),
            role,
            source_system: None,
            pii: false,
        };
        assert!(c(ApiRole::Viewer).require_viewer().is_ok());
        assert!(c(ApiRole::Writer).require_viewer().is_err());
        assert!(c(ApiRole::Viewer).require_operator("x").is_err());
        assert!(c(ApiRole::Operator).require_operator("x").is_ok());
        assert!(c(ApiRole::Viewer).require_writer().is_err());
        assert!(c(ApiRole::Writer).require_writer().is_ok());
    }
}
