//! Store errors. Every error names the backend and the operation (and for rejected input the
//! channel, item and event key) and carries an [`ErrorClass`]: `User` for input the store refuses
//! (retrying cannot help), `Retry` for an external condition (database busy, unreachable, disk),
//! `Internal` for a bug or a database that does not look like ours.

use sfsync_core::ErrorClass;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A database call failed.
    #[error("{backend} store: {op} failed")]
    Database {
        backend: &'static str,
        op: &'static str,
        class: ErrorClass,
        #[source]
        source: BoxError,
    },
    /// One change of a batch was refused by the store; nothing of the batch was written.
    #[error(
        "{backend} store: change #{index} (event key '{event_key}') of the batch for channel \
         '{channel}' was rejected; nothing from the batch and no checkpoint was written"
    )]
    RejectedChange {
        backend: &'static str,
        channel: String,
        index: usize,
        event_key: String,
        #[source]
        source: BoxError,
    },
    /// Input refused before reaching the database.
    #[error("{backend} store: {op}: {reason}")]
    InvalidInput {
        backend: &'static str,
        op: &'static str,
        reason: String,
    },
    /// An apply offset would move backwards.
    #[error(
        "{backend} store: apply offset of consumer '{consumer}' would move back from {current} \
         to {requested}"
    )]
    OffsetRegression {
        backend: &'static str,
        consumer: String,
        current: u64,
        requested: u64,
    },
    /// A compare-and-set apply offset was moved by another worker since this one read it.
    #[error(
        "{backend} store: apply offset of consumer '{consumer}' is {found:?}, not {expected:?} \
         as this worker read it: another worker applied it meanwhile (nothing of this batch was \
         written)"
    )]
    PositionMoved {
        backend: &'static str,
        consumer: String,
        expected: Option<u64>,
        found: Option<u64>,
    },
    /// A write made under a lease that is no longer held (expired, taken over or released).
    #[error(
        "{backend} store: lease '{lease}' is no longer held by '{holder}' at epoch {epoch} \
         (now: {now}); nothing was written"
    )]
    Fenced {
        backend: &'static str,
        lease: String,
        holder: String,
        epoch: i64,
        now: String,
    },
    /// The database was migrated by a newer sfsync.
    #[error(
        "{backend} store: database schema is at version {found}, newer than this build knows \
         ({known}); upgrade sfsync"
    )]
    SchemaTooNew {
        backend: &'static str,
        found: i64,
        known: i64,
    },
    /// A stored row cannot be read back as what we wrote.
    #[error("{backend} store: corrupt row in {table} at log offset {offset}: {reason}")]
    Corrupt {
        backend: &'static str,
        table: &'static str,
        offset: i64,
        reason: String,
    },
    /// Sealing or opening a PII value failed (never shows key material or plaintext).
    #[error("PII {op} with key '{key_id}': {reason}")]
    Pii {
        op: &'static str,
        key_id: String,
        reason: String,
        class: ErrorClass,
    },
    /// One write of a curated batch failed; the whole batch and its apply offset were rolled
    /// back.
    #[error(
        "{backend} store: {what} for {object} record '{record_id}' failed; nothing of the \
         curated batch and no apply offset was written"
    )]
    CuratedWrite {
        backend: &'static str,
        object: String,
        record_id: String,
        what: String,
        class: ErrorClass,
        #[source]
        source: BoxError,
    },
    /// Another process holds the single-applier lock.
    #[error("{backend} store: another sfsync process is applying to {database}")]
    ApplyLockHeld {
        backend: &'static str,
        database: String,
    },
    /// The blocking worker running a SQLite call panicked or was cancelled.
    #[error("sqlite store: worker thread for {op} did not complete")]
    Worker {
        op: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// An operation on the Parquet archive of the raw change log failed. `path` is where: the
    /// file, manifest or archive root as `file:///…` or `s3://bucket/prefix/…`.
    #[error("archive: {op} {path}: {reason}")]
    Archive {
        op: &'static str,
        path: String,
        reason: String,
        class: ErrorClass,
        #[source]
        source: Option<BoxError>,
    },
}

impl StoreError {
    /// What a caller should do about this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::Database { class, .. }
            | StoreError::Pii { class, .. }
            | StoreError::CuratedWrite { class, .. }
            | StoreError::Archive { class, .. } => *class,
            StoreError::ApplyLockHeld { .. } => ErrorClass::User,
            StoreError::RejectedChange { .. } | StoreError::InvalidInput { .. } => ErrorClass::User,
            StoreError::SchemaTooNew { .. } => ErrorClass::User,
            StoreError::PositionMoved { .. } | StoreError::Fenced { .. } => ErrorClass::Retry,
            StoreError::OffsetRegression { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Worker { .. } => ErrorClass::Internal,
        }
    }

    /// The error and all its causes, `: `-separated (for logs and CLI output).
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(self);
        while let Some(e) = cur {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cur = e.source();
        }
        out
    }

    pub(crate) fn sqlite(op: &'static str, e: rusqlite::Error) -> StoreError {
        StoreError::Database {
            backend: "sqlite",
            op,
            class: sqlite_class(&e),
            source: Box::new(e),
        }
    }

    pub(crate) fn postgres(op: &'static str, e: tokio_postgres::Error) -> StoreError {
        StoreError::Database {
            backend: "postgres",
            op,
            class: postgres_class(&e),
            source: Box::new(e),
        }
    }
}

pub(crate) fn sqlite_class(e: &rusqlite::Error) -> ErrorClass {
    use rusqlite::ErrorCode::*;
    match e.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked | SystemIoFailure | DiskFull | CannotOpen) => {
            ErrorClass::Retry
        }
        Some(ConstraintViolation | TooBig) => ErrorClass::User,
        _ => ErrorClass::Internal,
    }
}

/// The class of an object-store (archive) error: an unreachable or failing store (network, S3
/// 5xx, local I/O, all reported as `Generic`) is worth retrying; a missing object, a refused
/// path or missing permissions or credentials are not; an operation the store lacks is a bug.
pub(crate) fn object_store_class(e: &object_store::Error) -> ErrorClass {
    use object_store::Error::*;
    match e {
        NotFound { .. }
        | InvalidPath { .. }
        | AlreadyExists { .. }
        | Precondition { .. }
        | NotModified { .. }
        | PermissionDenied { .. }
        | Unauthenticated { .. }
        | UnknownConfigurationKey { .. } => ErrorClass::User,
        NotSupported { .. } | NotImplemented { .. } | JoinError { .. } => ErrorClass::Internal,
        _ => ErrorClass::Retry,
    }
}

pub(crate) fn postgres_class(e: &tokio_postgres::Error) -> ErrorClass {
    if e.is_closed() {
        return ErrorClass::Retry;
    }
    match e.code() {
        // No SQLSTATE: connection, I/O or protocol trouble.
        None => ErrorClass::Retry,
        Some(code) => {
            let c = code.code();
            if c.starts_with("08") // connection exception
                || c.starts_with("53") // insufficient resources
                || c.starts_with("57") // operator intervention (shutdown)
                || c == "40001" // serialization failure
                || c == "40P01"
            // deadlock
            {
                ErrorClass::Retry
            } else if c.starts_with("22") || c.starts_with("23") {
                // data exception, integrity constraint violation
                ErrorClass::User
            } else {
                ErrorClass::Internal
            }
        }
    }
}
