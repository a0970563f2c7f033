//! Pipeline errors. Each names the object / channel / record and the stage, and carries an
//! [`ErrorClass`] so the caller knows whether retrying can help.

use sfsync_core::ErrorClass;

pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Configuration that cannot work with the org (unknown field, missing key).
    #[error("object {object}: {reason}")]
    Config { object: String, reason: String },
    /// A change whose content cannot be applied (wrong value type, unknown schema).
    #[error("{stage}: {object} {record}: {reason}")]
    BadChange {
        stage: &'static str,
        object: String,
        record: String,
        reason: String,
    },
    #[error("store")]
    Store(#[from] sfsync_store::StoreError),
    #[error("salesforce")]
    Salesforce(#[from] sfsync_salesforce::SalesforceError),
    #[error("pub/sub")]
    PubSub(#[from] sfsync_salesforce::pubsub::PubSubError),
    /// The raw change log in Kafka (produce, consume, seek).
    #[error("kafka raw log: {0}")]
    Kafka(String),
    #[error("shutting down")]
    Shutdown,
    /// The task committing a batch panicked or was cancelled; the batch is re-applied from the
    /// stored offset.
    #[error("apply commit task: {0}")]
    CommitTask(String),
}

impl PipelineError {
    pub fn config(object: &str, reason: impl Into<String>) -> PipelineError {
        PipelineError::Config {
            object: object.to_string(),
            reason: reason.into(),
        }
    }

    pub fn bad_change(
        stage: &'static str,
        object: &str,
        record: &str,
        reason: impl Into<String>,
    ) -> PipelineError {
        PipelineError::BadChange {
            stage,
            object: object.to_string(),
            record: record.to_string(),
            reason: reason.into(),
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            PipelineError::Config { .. } | PipelineError::BadChange { .. } => ErrorClass::User,
            PipelineError::Store(e) => e.class(),
            PipelineError::Salesforce(e) => e.class(),
            PipelineError::PubSub(e) => e.class(),
            PipelineError::Kafka(_) => ErrorClass::Retry,
            PipelineError::Shutdown | PipelineError::CommitTask(_) => ErrorClass::Internal,
        }
    }
}

/// The error and its whole cause chain on one line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}
