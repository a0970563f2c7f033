//! The one error type of the Salesforce client. Every error names the place (HTTP method and path,
//! bulk job id, CSV row and column) and the reason, and carries an [`ErrorClass`] computed from the
//! single error-code table in `sfsync-core`, so callers decide retries from the class alone.

use std::fmt;

use serde::Deserialize;
use sfsync_core::{classify_error_code, ErrorClass};

use crate::bulk::csv::CsvError;

/// Result alias of this crate.
pub type Result<T, E = SalesforceError> = std::result::Result<T, E>;

/// One entry of a Salesforce REST / Bulk error body (`[{message, errorCode, fields}]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ApiErrorItem {
    #[serde(default)]
    pub message: String,
    #[serde(default, rename = "errorCode", alias = "statusCode")]
    pub error_code: String,
    #[serde(default)]
    pub fields: Vec<String>,
}

/// A non-success HTTP answer from Salesforce, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP method of the failed request.
    pub method: String,
    /// Path of the failed request (without query string, which may hold SOQL).
    pub path: String,
    /// HTTP status code.
    pub status: u16,
    /// `errorCode` of the first error entry (or OAuth `error`), empty when the body had none.
    pub error_code: String,
    /// Human-readable message (or the start of a non-JSON body).
    pub message: String,
    /// Fields named by the first error entry.
    pub fields: Vec<String>,
    /// Every entry of the error body (REST bodies may list several).
    pub errors: Vec<ApiErrorItem>,
    /// What the caller should do, from [`classify_error_code`].
    pub class: ErrorClass,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} failed with HTTP {}",
            self.method, self.path, self.status
        )?;
        if !self.error_code.is_empty() {
            write!(f, " {}", self.error_code)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if !self.fields.is_empty() {
            write!(f, " (fields: {})", self.fields.join(", "))?;
        }
        write!(f, " [class {}]", self.class.as_str())
    }
}

/// Every way a Salesforce call can fail.
#[derive(Debug, thiserror::Error)]
pub enum SalesforceError {
    /// Salesforce answered with an error status and (possibly) an error body.
    #[error("{0}")]
    Api(Box<ApiError>),

    /// An upsert by external id matched several records (HTTP 300).
    #[error("{method} {path}: external id matched {} records: {}", urls.len(), urls.join(", "))]
    MultipleMatches {
        method: String,
        path: String,
        /// URLs of the matching records, as listed by Salesforce.
        urls: Vec<String>,
    },

    /// The OAuth token endpoint refused to issue a token.
    #[error("OAuth token request to {url} ({flow}) failed with HTTP {status}: {error}: {description} [class {}]", class.as_str())]
    Auth {
        url: String,
        flow: &'static str,
        status: u16,
        error: String,
        description: String,
        class: ErrorClass,
    },

    /// The request could not be sent or the response could not be read (DNS, TLS, reset, timeout).
    #[error("{method} {path}: {reason}")]
    Transport {
        method: String,
        path: String,
        reason: &'static str,
        #[source]
        source: reqwest::Error,
    },

    /// A response arrived but its body does not have the documented shape.
    #[error("{method} {path}: cannot decode the response (HTTP {status}): {reason}")]
    Decode {
        method: String,
        path: String,
        status: u16,
        reason: String,
    },

    /// The caller asked for something the client refuses before sending (e.g. > 200 records).
    #[error("invalid request {place}: {reason}")]
    InvalidRequest { place: String, reason: String },

    /// Configuration or credentials cannot be used (missing key, unreadable file, bad PEM).
    #[error("configuration error in {place}: {reason}")]
    Config { place: String, reason: String },

    /// A Bulk job ended in `Failed` or `Aborted`, or a query job failed.
    #[error("bulk job {job_id} ended in state {state}: {message}")]
    JobFailed {
        job_id: String,
        state: String,
        message: String,
    },

    /// A Bulk job did not reach a terminal state within the poll policy's limit.
    #[error("bulk job {job_id} still in state {state} after {waited_secs} s of polling")]
    JobTimeout {
        job_id: String,
        state: String,
        waited_secs: u64,
    },

    /// Bulk CSV data is malformed.
    #[error("CSV from {place}: {source}")]
    Csv {
        place: String,
        #[source]
        source: CsvError,
    },
}

impl SalesforceError {
    /// What a caller should do about this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            SalesforceError::Api(e) => e.class,
            SalesforceError::MultipleMatches { .. } => ErrorClass::User,
            SalesforceError::Auth { class, .. } => *class,
            SalesforceError::Transport { source, .. } => {
                if source.is_builder() {
                    ErrorClass::User
                } else {
                    ErrorClass::Retry
                }
            }
            SalesforceError::Decode { status, .. } => {
                if *status >= 500 {
                    ErrorClass::Retry
                } else {
                    ErrorClass::Internal
                }
            }
            SalesforceError::InvalidRequest { .. } | SalesforceError::Config { .. } => {
                ErrorClass::User
            }
            SalesforceError::JobFailed { .. } => ErrorClass::User,
            SalesforceError::JobTimeout { .. } => ErrorClass::Retry,
            SalesforceError::Csv { .. } => ErrorClass::Internal,
        }
    }

    /// HTTP status of the failed answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            SalesforceError::Api(e) => Some(e.status),
            SalesforceError::MultipleMatches { .. } => Some(300),
            SalesforceError::Auth { status, .. } | SalesforceError::Decode { status, .. } => {
                Some(*status)
            }
            SalesforceError::Transport { source, .. } => source.status().map(|s| s.as_u16()),
            _ => None,
        }
    }

    /// Salesforce error code (`errorCode`, OAuth `error`), when there was one.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            SalesforceError::Api(e) if !e.error_code.is_empty() => Some(&e.error_code),
            SalesforceError::Auth { error, .. } if !error.is_empty() => Some(error),
            _ => None,
        }
    }

    /// The decoded API error, when this is one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            SalesforceError::Api(e) => Some(e),
            _ => None,
        }
    }

    /// The whole cause chain on one line: `top: cause: cause`.
    pub fn report(&self) -> String {
        error_chain(self)
    }

    pub(crate) fn invalid(place: impl Into<String>, reason: impl Into<String>) -> Self {
        SalesforceError::InvalidRequest {
            place: place.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn config(place: impl Into<String>, reason: impl Into<String>) -> Self {
        SalesforceError::Config {
            place: place.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn decode(method: &str, path: &str, status: u16, reason: impl Into<String>) -> Self {
        SalesforceError::Decode {
            method: method.to_string(),
            path: path.to_string(),
            status,
            reason: reason.into(),
        }
    }
}

/// Formats an error and all its sources as `top: cause: cause`.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// Decodes a non-success response body into an [`ApiError`]. Accepts the REST/Bulk form
/// (`[{message, errorCode, fields}]`), a single object of that form, the OAuth form
/// (`{error, error_description}`) and non-JSON bodies (plain text, HTML, empty). Never panics.
pub fn parse_error_body(method: &str, path: &str, status: u16, body: &[u8]) -> ApiError {
    #[derive(Deserialize)]
    struct OAuthErr {
        error: String,
        #[serde(default)]
        error_description: String,
    }

    let mut errors: Vec<ApiErrorItem> = Vec::new();
    let mut code = String::new();
    let mut message = String::new();
    let trimmed = trim_ascii(body);
    if let Ok(items) = serde_json::from_slice::<Vec<ApiErrorItem>>(trimmed) {
        errors = items;
    } else if let Ok(oauth) = serde_json::from_slice::<OAuthErr>(trimmed) {
        code = oauth.error;
        message = oauth.error_description;
    } else if let Ok(item) = serde_json::from_slice::<ApiErrorItem>(trimmed) {
        if !item.error_code.is_empty() || !item.message.is_empty() {
            errors.push(item);
        }
    }
    if errors.is_empty() && code.is_empty() && message.is_empty() {
        message = snippet(trimmed);
    }
    let mut fields = Vec::new();
    if let Some(first) = errors.first() {
        code = first.error_code.clone();
        message = first.message.clone();
        fields = first.fields.clone();
    }
    if code.is_empty() {
        code = default_code_for_status(status).to_string();
    }
    let class = classify_error_code(&code, Some(status));
    ApiError {
        method: method.to_string(),
        path: path.to_string(),
        status,
        error_code: code,
        message,
        fields,
        errors,
        class,
    }
}

/// A conventional code for bodies that carry none, so the one table still classifies them.
fn default_code_for_status(status: u16) -> &'static str {
    match status {
        401 => "INVALID_SESSION_ID",
        503 => "SERVER_UNAVAILABLE",
        _ => "",
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &b[start..end.max(start)]
}

/// The start of a body as text, for error messages (at most 300 characters).
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(1200)]);
    let mut s: String = text.chars().take(300).collect();
    if text.chars().count() > 300 || body.len() > 1200 {
        s.push('…');
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_array_body() {
        let body = br#"[{"message":"No such column 'Foo' on entity 'Account'","errorCode":"INVALID_FIELD","fields":["Foo"]}]"#;
        let e = parse_error_body("GET", "/services/data/v66.0/query", 400, body);
        assert_eq!(e.error_code, "INVALID_FIELD");
        assert_eq!(e.fields, vec!["Foo"]);
        assert_eq!(e.class, ErrorClass::User);
        let text = e.to_string();
        assert!(text.contains("GET /services/data/v66.0/query"), "{text}");
        assert!(text.contains("INVALID_FIELD"), "{text}");
    }

    #[test]
    fn limit_exceeded_defers_and_session_refreshes() {
        let body = br#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#;
        let e = parse_error_body("GET", "/x", 403, body);
        assert_eq!(e.class, ErrorClass::Defer);
        let body =
            br#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#;
        let e = parse_error_body("GET", "/x", 401, body);
        assert_eq!(e.class, ErrorClass::RefreshAuth);
    }

    #[test]
    fn oauth_body() {
        let body = br#"{"error":"invalid_grant","error_description":"authentication failure"}"#;
        let e = parse_error_body("POST", "/services/oauth2/token", 400, body);
        assert_eq!(e.error_code, "invalid_grant");
        assert_eq!(e.message, "authentication failure");
        assert_eq!(e.class, ErrorClass::User);
    }

    #[test]
    fn non_json_bodies() {
        let e = parse_error_body("GET", "/x", 503, b"Server too busy\n");
        assert_eq!(e.error_code, "SERVER_UNAVAILABLE");
        assert_eq!(e.message, "Server too busy");
        assert_eq!(e.class, ErrorClass::Retry);
        let e = parse_error_body("GET", "/x", 420, b"");
        assert_eq!(e.class, ErrorClass::Retry);
        assert_eq!(e.message, "");
        let e = parse_error_body("GET", "/x", 401, b"<html>nope</html>");
        assert_eq!(e.class, ErrorClass::RefreshAuth);
        let e = parse_error_body("GET", "/x", 404, b"{not json");
        assert_eq!(e.class, ErrorClass::User);
        assert_eq!(e.message, "{not json");
        // Invalid UTF-8 and long bodies never panic.
        let big = vec![0xffu8; 5000];
        let e = parse_error_body("GET", "/x", 500, &big);
        assert!(e.message.ends_with('…'));
    }

    #[test]
    fn bulk_single_object_body() {
        let body = br#"{"errorCode":"JOB_NOT_COMPLETE","message":"not yet"}"#;
        let e = parse_error_body("GET", "/jobs/query/750/results", 412, body);
        assert_eq!(e.error_code, "JOB_NOT_COMPLETE");
        assert_eq!(e.class, ErrorClass::Retry);
    }

    #[test]
    fn chain_is_reported() {
        let inner = std::io::Error::other("connection reset");
        #[derive(Debug, thiserror::Error)]
        #[error("reading page 3")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(
            error_chain(&Outer(inner)),
            "reading page 3: connection reset"
        );
    }
}
