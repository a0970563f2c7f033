//! [`AwsError`]: which service, operation and resource failed, and why — AWS's own error type
//! and message when it answered. Never a secret value or key material: success bodies (which
//! carry them) are never quoted, only error bodies.

use std::fmt;

/// The AWS services sfsync calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Kms,
    SecretsManager,
}

impl Service {
    /// For messages: `KMS`, `Secrets Manager`.
    pub fn display_name(self) -> &'static str {
        match self {
            Service::Kms => "KMS",
            Service::SecretsManager => "Secrets Manager",
        }
    }

    /// The SigV4 signing name and endpoint prefix.
    pub fn signing_name(self) -> &'static str {
        match self {
            Service::Kms => "kms",
            Service::SecretsManager => "secretsmanager",
        }
    }

    /// The `X-Amz-Target` prefix (`TrentService.Decrypt`).
    pub fn target_prefix(self) -> &'static str {
        match self {
            Service::Kms => "TrentService",
            Service::SecretsManager => "secretsmanager",
        }
    }

    /// The service-specific endpoint variable (`AWS_ENDPOINT_URL_<SERVICE ID>`).
    pub fn endpoint_env(self) -> &'static str {
        match self {
            Service::Kms => "AWS_ENDPOINT_URL_KMS",
            Service::SecretsManager => "AWS_ENDPOINT_URL_SECRETS_MANAGER",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.display_name())
    }
}

/// Whether retrying can help (the house error classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A bad reference, a missing key or secret, no permission: fix the config or AWS.
    User,
    /// The network or AWS failed (throttling, 5xx, timeouts) and retries were used up.
    External,
    /// AWS answered something this client does not understand.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// AWS answered with an error: its `__type` (namespace stripped) and message.
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// No answer: connection, TLS or timeout (after retries).
    Transport(String),
    /// No credentials could be had from the provider chain.
    Credentials(String),
    /// A success answer without an expected field, or with a malformed one.
    InvalidResponse(String),
}

/// A failed AWS call. `Display`: `KMS Decrypt (key alias/sfsync-pii): AccessDeniedException:
/// … (HTTP 400)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    pub service: Service,
    pub operation: &'static str,
    /// What the call was about: `key alias/sfsync-pii`, `secret prod/sfsync/salesforce`.
    pub resource: String,
    pub kind: ErrorKind,
    /// Attempts made (1 when not retried).
    pub attempts: u32,
}

impl AwsError {
    pub fn class(&self) -> ErrorClass {
        match &self.kind {
            ErrorKind::Api { status, code, .. } => {
                if *status >= 500 || *status == 429 || is_throttling(code) {
                    ErrorClass::External
                } else {
                    ErrorClass::User
                }
            }
            ErrorKind::Transport(_) => ErrorClass::External,
            ErrorKind::Credentials(_) => ErrorClass::User,
            ErrorKind::InvalidResponse(_) => ErrorClass::Internal,
        }
    }

    /// AWS's error type, when it answered with one.
    pub fn code(&self) -> Option<&str> {
        match &self.kind {
            ErrorKind::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.service, self.operation)?;
        if !self.resource.is_empty() {
            write!(f, " ({})", self.resource)?;
        }
        match &self.kind {
            ErrorKind::Api {
                status,
                code,
                message,
            } => {
                write!(f, ": {code}")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                write!(f, " (HTTP {status}")?;
            }
            ErrorKind::Transport(e) => write!(f, ": no answer: {e} (")?,
            ErrorKind::Credentials(e) => write!(f, ": no AWS credentials: {e} (")?,
            ErrorKind::InvalidResponse(e) => write!(f, ": unexpected answer: {e} (")?,
        }
        match (&self.kind, self.attempts) {
            (ErrorKind::Api { .. }, 1) => f.write_str(")"),
            (ErrorKind::Api { .. }, n) => write!(f, ", after {n} attempts)"),
            (_, 1) => f.write_str("1 attempt)"),
            (_, n) => write!(f, "{n} attempts)"),
        }
    }
}

impl std::error::Error for AwsError {}

/// AWS error types that mean "slow down" (retried with backoff).
pub fn is_throttling(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException"
            | "Throttling"
            | "ThrottledException"
            | "TooManyRequestsException"
            | "RequestLimitExceeded"
            | "RequestThrottled"
            | "RequestThrottledException"
            | "ProvisionedThroughputExceededException"
            | "SlowDown"
            | "PriorRequestNotComplete"
            | "EC2ThrottledException"
            | "BandwidthLimitExceeded"
            | "LimitExceededException"
    )
}

/// Server-side failures worth a retry even when the status is not 5xx.
pub(crate) fn is_transient(code: &str) -> bool {
    matches!(
        code,
        "KMSInternalException"
            | "InternalServiceError"
            | "InternalFailure"
            | "InternalError"
            | "ServiceUnavailable"
            | "ServiceUnavailableException"
            | "DependencyTimeoutException"
            | "RequestTimeout"
            | "RequestTimeoutException"
    )
}

/// AWS's error type and message from an error answer of the JSON protocol: the body's
/// `__type` (else the `x-amzn-ErrorType` header), namespace (`…#`) and suffix (`:…`) stripped;
/// `message` or `Message`. A body that is not such JSON is quoted (shortened): error bodies
/// carry no secrets.
pub fn parse_error(status: u16, header_type: Option<&str>, body: &[u8]) -> ErrorKind {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let raw_type = field("__type")
        .or_else(|| field("code"))
        .or_else(|| header_type.map(str::to_string));
    let code = raw_type
        .map(|t| {
            let t = t.rsplit('#').next().unwrap_or(&t).to_string();
            t.split(':').next().unwrap_or(&t).to_string()
        })
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| format!("HTTP{status}"));
    let message = field("message")
        .or_else(|| field("Message"))
        .unwrap_or_else(|| {
            if json.is_some() {
                String::new()
            } else {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let mut short: String = text.chars().take(200).collect();
                if short.len() < text.len() {
                    short.push('…');
                }
                short
            }
        });
    ErrorKind::Api {
        status,
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_types_are_read_from_body_or_header() {
        let k = parse_error(
            400,
            None,
            br#"{"__type":"com.amazonaws.kms#NotFoundException","message":"Alias x is not found."}"#,
        );
        assert_eq!(
            k,
            ErrorKind::Api {
                status: 400,
                code: "NotFoundException".into(),
                message: "Alias x is not found.".into()
            }
        );
        let k = parse_error(
            400,
            Some("ResourceNotFoundException:http://internal.amazon.com/"),
            br#"{"Message":"Secrets Manager can't find the specified secret."}"#,
        );
        assert!(matches!(&k, ErrorKind::Api { code, message, .. }
            if code == "ResourceNotFoundException" && message.starts_with("Secrets Manager")));
        let k = parse_error(503, None, b"<html>busy</html>");
        assert!(matches!(&k, ErrorKind::Api { code, message, .. }
            if code == "HTTP503" && message == "<html>busy</html>"));
    }

    #[test]
    fn display_names_service_operation_resource_and_cause() {
        let e = AwsError {
            service: Service::Kms,
            operation: "Decrypt",
            resource: "key alias/sfsync-pii".into(),
            kind: ErrorKind::Api {
                status: 400,
                code: "AccessDeniedException".into(),
                message: "not allowed".into(),
            },
            attempts: 1,
        };
        assert_eq!(
            e.to_string(),
            "KMS Decrypt (key alias/sfsync-pii): AccessDeniedException: not allowed (HTTP 400)"
        );
        assert_eq!(e.class(), ErrorClass::User);
        let e = AwsError {
            kind: ErrorKind::Api {
                status: 400,
                code: "ThrottlingException".into(),
                message: "Rate exceeded".into(),
            },
            attempts: 4,
            ..e
        };
        assert!(
            e.to_string().ends_with("(HTTP 400, after 4 attempts)"),
            "{e}"
        );
        assert_eq!(e.class(), ErrorClass::External);
        let e = AwsError {
            kind: ErrorKind::Transport("connection refused".into()),
            ..e
        };
        assert_eq!(
            e.to_string(),
            "KMS Decrypt (key alias/sfsync-pii): no answer: connection refused (4 attempts)"
        );
    }
}
