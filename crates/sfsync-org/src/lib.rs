//! The emulated Salesforce org: schema and describe metadata, records with system fields and a
//! recycle bin, validation with Salesforce's error codes, SOQL, and DML where **every call is one
//! transaction** with a transaction key, commit timestamp, commit number, per-change sequence
//! numbers, commit user and change origin. Committed transactions are handed, in commit order, to
//! listeners (the emulator's CDC bus) and, with a data directory, to a journal that makes the org
//! survive restarts. Drift ([`Org::drift`]) changes records behind the listeners' back
//! (journalled, never published) for reconciliation tests. This crate does no network I/O; the
//! emulator crate serves it over HTTP/gRPC.

pub mod bulk_csv;
pub mod describe;
pub mod drift;
pub mod error;
mod formula;
pub mod org;
pub mod persist;
pub mod schema;
pub mod seed;
pub mod soql;
mod store;
pub mod value;

pub use bulk_csv::{CsvChunk, CsvQueryOptions, CsvQueryResult};
pub use drift::{Drift, DriftAction};
pub use error::SfError;
pub use org::{
    ApiKind, CallContext, ChangeKind, CommitListener, CommittedTransaction, DmlOp, DmlOutcome,
    DmlResult, Org, OrgConfig, QueryRelation, QueryResult, QueryShape, RecordChange,
};
pub use schema::{FieldDef, FieldType, ObjectDef, Schema};

/// A record's fields as JSON, keyed by field API name (Salesforce's REST representation).
pub type Fields = serde_json::Map<String, serde_json::Value>;
