//! HTTP error responses in Salesforce's shapes: REST errors are a JSON array of
//! `{message, errorCode, fields}`; Bulk API 2.0 errors are `[{errorCode, message}]`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sfsync_org::SfError;

/// A REST error response (one or more errors, one status).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub errors: Vec<SfError>,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError::from(SfError::new(status, code, message))
    }

    pub fn invalid_session() -> ApiError {
        ApiError::new(401, "INVALID_SESSION_ID", "Session expired or invalid")
    }

    pub fn not_found() -> ApiError {
        ApiError::from(SfError::not_found())
    }

    pub fn bad_json(detail: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            400,
            "JSON_PARSER_ERROR",
            format!("The request body is not valid JSON: {detail}"),
        )
    }
}

impl From<SfError> for ApiError {
    fn from(e: SfError) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            errors: vec![e],
        }
    }
}

impl From<Vec<SfError>> for ApiError {
    fn from(errors: Vec<SfError>) -> ApiError {
        let status = errors
            .first()
            .and_then(|e| StatusCode::from_u16(e.status).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        ApiError { status, errors }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body: Vec<_> = self.errors.iter().map(SfError::to_json).collect();
        (self.status, Json(body)).into_response()
    }
}

/// A Bulk API 2.0 error response: `[{"errorCode": …, "message": …}]`.
#[derive(Debug)]
pub struct BulkError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl BulkError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> BulkError {
        BulkError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            code: code.to_string(),
            message: message.into(),
        }
    }
}

impl IntoResponse for BulkError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!([{ "errorCode": self.code, "message": self.message }])),
        )
            .into_response()
    }
}

impl From<ApiError> for BulkError {
    fn from(e: ApiError) -> BulkError {
        let first = e.errors.into_iter().next();
        match first {
            Some(err) => BulkError {
                status: e.status,
                code: err.error_code,
                message: err.message,
            },
            None => BulkError::new(500, "UNKNOWN_EXCEPTION", "unknown error"),
        }
    }
}
