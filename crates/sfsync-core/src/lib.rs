//! Domain types shared by every sfsync crate: Salesforce record ids, error classes and the
//! Salesforce error-code classification. This crate does no I/O; everything here is pure and
//! deterministic, so the client, the emulator and the pipeline agree on the same facts.

pub mod change;
pub mod error;
pub mod id;

pub use change::{
    Change, ChangeHeader, ChangeType, EventKey, FieldValue, RecordVersion, ReplayId,
    ReplayIdHexError,
};
pub use error::{classify_error_code, ErrorClass};
pub use id::{IdError, SfId};
