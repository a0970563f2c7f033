//! The Salesforce wire protocols sfsync speaks over HTTP: OAuth 2.0, REST, Composite and Bulk
//! API 2.0. The crate knows nothing about pipelines or storage.
//!
//! Guarantees: every call names its place (method, path, job id, CSV row/column) when it fails and
//! carries an [`ErrorClass`](sfsync_core::ErrorClass) from the one error-code table in
//! `sfsync-core`; expired sessions are renewed once, single-flight; API usage reported by
//! Salesforce is observable on the client; every counted call passes the API budget
//! [`Governor`] in a priority [`Lane`] and is deferred, never failed, when the budget is tight;
//! Bulk results stream with bounded memory.
//!
//! Start with [`SalesforceClient::new`] (a [`ClientConfig`] with base URL and optional CA file,
//! plus [`Credentials`]), then use the REST methods on the client, [`SalesforceClient::bulk`] for
//! Bulk 2.0, and the `collection_*`/`composite*` methods for Composite.

pub mod auth;
pub mod bulk;
pub mod composite;
pub mod error;
pub mod governor;
pub mod http;
pub mod outbound;
pub mod pubsub;
pub mod rest;

pub use auth::{AccessToken, AuthFlow, Credentials, CredentialsFile, Secret, TokenSource};
pub use bulk::csv::{BulkCsvWriter, BulkValue, CsvError, CsvRecordBatch, CsvRow};
pub use bulk::{
    Bulk, BulkConfig, CsvResultStream, IngestJobRequest, JobInfo, JobState, QueryJobRequest,
};
pub use error::{ApiError, Result, SalesforceError};
pub use governor::{BudgetConfig, BudgetStatus, Governor, Lane, LaneConfig, LaneStatus};
pub use http::{ApiUsage, ClientConfig, LimitValue, Limits, RetryPolicy, SalesforceClient};
pub use rest::{QueryOptions, Record};
