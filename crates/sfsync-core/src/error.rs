//! Error classes and the single table that maps Salesforce error codes to what a caller should do.
//! Every crate tags its errors with an [`ErrorClass`]; the client and the pipeline decide retries
//! from the class alone, never from ad-hoc string matching.

use serde::{Deserialize, Serialize};

/// What a caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Transient (lock contention, 5xx, timeouts): retry with backoff, possibly in smaller batches.
    Retry,
    /// A limit or allocation is exhausted: defer the work until the budget allows; never re-login.
    Defer,
    /// The session expired or is invalid: obtain a new token once, then retry.
    RefreshAuth,
    /// Bad input or configuration: retrying cannot help; report it with its cause.
    User,
    /// A bug or an unexpected state in sfsync or the peer.
    Internal,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retry => "retry",
            ErrorClass::Defer => "defer",
            ErrorClass::RefreshAuth => "refresh_auth",
            ErrorClass::User => "user",
            ErrorClass::Internal => "internal",
        }
    }

    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::Retry | ErrorClass::Defer | ErrorClass::RefreshAuth
        )
    }
}

/// The one table mapping Salesforce error codes (REST `errorCode`, Bulk `errorCode`, OAuth `error`,
/// Pub/Sub `error-code` trailer) to a class. Unknown codes are `User` when the HTTP status is 4xx
/// and `Retry` when it is 5xx or absent.
pub fn classify_error_code(code: &str, http_status: Option<u16>) -> ErrorClass {
    use ErrorClass::*;
    match code {
        // Limits: never re-login, never fail work — wait for the budget.
        "REQUEST_LIMIT_EXCEEDED"
        | "ExceededQuota"
        | "LIMIT_EXCEEDED"
        | "TXN_SECURITY_METERING_ERROR"
        | "sfdc.platform.eventbus.grpc.subscription.limit.exceeded"
        | "sfdc.platform.eventbus.grpc.concurrent.client.limit.exceeded" => Defer,
        // Transient server-side conditions.
        "UNABLE_TO_LOCK_ROW"
        | "SERVER_UNAVAILABLE"
        | "QUERY_TIMEOUT"
        | "Timeout"
        | "TooManyLockFailure"
        | "REQUEST_RUNNING_TOO_LONG"
        | "JOB_NOT_COMPLETE"
        // The record itself was fine: it was rolled back or not run because another one failed.
        | "ALL_OR_NONE_OPERATION_ROLLED_BACK"
        | "BATCH_PROCESSING_HALTED"
        | "PROCESSING_HALTED"
        | "sfdc.platform.eventbus.grpc.service.unavailable" => Retry,
        // Session problems.
        "INVALID_SESSION_ID"
        | "InvalidSessionId"
        | "sfdc.platform.eventbus.grpc.service.auth.error"
        | "sfdc.platform.eventbus.grpc.service.auth.refresh.invalid" => RefreshAuth,
        // Data and request errors: the input must change.
        "INVALID_FIELD"
        | "MALFORMED_QUERY"
        | "MALFORMED_ID"
        | "INVALID_TYPE"
        | "NOT_FOUND"
        | "NotFound"
        | "ENTITY_IS_DELETED"
        | "REQUIRED_FIELD_MISSING"
        | "STRING_TOO_LONG"
        | "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
        | "INVALID_CROSS_REFERENCE_KEY"
        | "FIELD_INTEGRITY_EXCEPTION"
        | "DUPLICATE_VALUE"
        | "DUPLICATES_DETECTED"
        | "FIELD_CUSTOM_VALIDATION_EXCEPTION"
        | "INVALID_FIELD_FOR_INSERT_UPDATE"
        | "INVALID_TYPE_ON_FIELD_IN_RECORD"
        | "JSON_PARSER_ERROR"
        | "ClientInputError"
        | "InvalidBatch"
        | "InvalidJob"
        | "InvalidJobState"
        | "InvalidOperation"
        | "InvalidUrl"
        | "FUNCTIONALITY_NOT_ENABLED"
        | "FeatureNotEnabled"
        | "INVALIDENTITY"
        | "InvalidUser"
        | "MethodNotAllowed"
        | "InvalidXML"
        | "EXCEEDED_ID_LIMIT"
        | "DUPLICATE_EXTERNAL_ID"
        | "INVALID_EMAIL_ADDRESS"
        | "NUMBER_OUTSIDE_VALID_RANGE"
        | "UNDELETE_FAILED"
        | "INVALID_QUERY_LOCATOR"
        | "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY"
        | "INSUFFICIENT_ACCESS_OR_READONLY"
        | "API_DISABLED_FOR_ORG"
        | "invalid_grant"
        | "invalid_client"
        | "invalid_client_id"
        | "unsupported_grant_type"
        | "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
        | "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed"
        | "sfdc.platform.eventbus.grpc.subscription.fetch.requested.events.invalid" => User,
        _ => match http_status {
            Some(s) if (400..500).contains(&s) && s != 406 && s != 420 && s != 408 => User,
            _ => Retry,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_errors_defer_and_never_refresh_auth() {
        assert_eq!(
            classify_error_code("REQUEST_LIMIT_EXCEEDED", Some(403)),
            ErrorClass::Defer
        );
        assert_eq!(
            classify_error_code("INVALID_SESSION_ID", Some(401)),
            ErrorClass::RefreshAuth
        );
        assert_eq!(
            classify_error_code("UNABLE_TO_LOCK_ROW", Some(400)),
            ErrorClass::Retry
        );
        assert_eq!(
            classify_error_code("INVALID_FIELD", Some(400)),
            ErrorClass::User
        );
    }

    #[test]
    fn unknown_codes_fall_back_on_status() {
        assert_eq!(classify_error_code("WHATEVER", Some(400)), ErrorClass::User);
        assert_eq!(
            classify_error_code("WHATEVER", Some(503)),
            ErrorClass::Retry
        );
        assert_eq!(classify_error_code("", Some(420)), ErrorClass::Retry);
        assert_eq!(classify_error_code("", None), ErrorClass::Retry);
    }

    #[test]
    fn rolled_back_records_are_retried_not_reported_as_bad() {
        assert_eq!(
            classify_error_code("ALL_OR_NONE_OPERATION_ROLLED_BACK", Some(200)),
            ErrorClass::Retry
        );
        assert_eq!(
            classify_error_code("DUPLICATE_EXTERNAL_ID", Some(300)),
            ErrorClass::User
        );
    }
}
