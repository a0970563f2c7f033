//! Salesforce API errors as the org reports them: an HTTP status, an error code, a message and the
//! fields involved. Serialised as Salesforce's REST error entry `{message, errorCode, fields}`.

use serde_json::{json, Value};

/// One Salesforce error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SfError {
    /// HTTP status a single-resource REST call answers with (400, 404, 300 …).
    pub status: u16,
    /// Salesforce error code, e.g. `REQUIRED_FIELD_MISSING`.
    pub error_code: String,
    /// Human-readable message in Salesforce's wording where known.
    pub message: String,
    /// Fields involved (may be empty).
    pub fields: Vec<String>,
    /// For an upsert whose external id matched several records (HTTP 300): the matching ids.
    pub matched_ids: Vec<String>,
}

impl SfError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> SfError {
        SfError {
            status,
            error_code: code.to_string(),
            message: message.into(),
            fields: Vec::new(),
            matched_ids: Vec::new(),
        }
    }

    pub fn with_fields<I, S>(mut self, fields: I) -> SfError
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.fields = fields.into_iter().map(Into::into).collect();
        self
    }

    /// `NOT_FOUND` "The requested resource does not exist" (404).
    pub fn not_found() -> SfError {
        SfError::new(404, "NOT_FOUND", "The requested resource does not exist")
    }

    /// `MALFORMED_QUERY` (400) with a message that says where.
    pub fn malformed_query(message: impl Into<String>) -> SfError {
        SfError::new(400, "MALFORMED_QUERY", message)
    }

    /// `INVALID_FIELD` (400).
    pub fn invalid_field(message: impl Into<String>, field: &str) -> SfError {
        SfError::new(400, "INVALID_FIELD", message).with_fields([field])
    }

    /// `INVALID_TYPE` (400) "sObject type 'X' is not supported."
    pub fn invalid_type(object: &str) -> SfError {
        SfError::new(
            404,
            "NOT_FOUND",
            format!(
                "The requested resource does not exist: sObject type '{object}' is not supported."
            ),
        )
    }

    /// The REST error entry: `{"message": …, "errorCode": …, "fields": […]}`.
    pub fn to_json(&self) -> Value {
        json!({
            "message": self.message,
            "errorCode": self.error_code,
            "fields": self.fields,
        })
    }

    /// The sObject Collections / DML result form: `{"statusCode": …, "message": …, "fields": […]}`.
    pub fn to_status_json(&self) -> Value {
        json!({
            "statusCode": self.error_code,
            "message": self.message,
            "fields": self.fields,
        })
    }

    /// The Bulk 2.0 failedResults cell: `CODE:message:Field1,Field2` (`--` when no field).
    pub fn to_bulk_cell(&self) -> String {
        let fields = if self.fields.is_empty() {
            "--".to_string()
        } else {
            self.fields.join(",")
        };
        format!("{}:{}:{}", self.error_code, self.message, fields)
    }
}

impl std::fmt::Display for SfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error_code, self.message)?;
        if !self.fields.is_empty() {
            write!(f, " (fields: {})", self.fields.join(", "))?;
        }
        Ok(())
    }
}

impl std::error::Error for SfError {}
