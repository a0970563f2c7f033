//! Durable state for sfsync: the raw change log, subscription checkpoints and apply offsets, on
//! SQLite (embedded default) or Postgres, behind one [`ChangeLog`] interface.
//!
//! Guarantees: a batch of raw changes and the subscription checkpoint (replay id) that covers it
//! commit in ONE transaction — either both are durable or neither is (architecture invariant 1).
//! Each change has a unique event key, so re-delivering a change is a counted no-op (invariant 3).
//! Replay ids are stored as the exact bytes received, never parsed (invariant 2). Log offsets are
//! assigned in commit order and only increase, so a reader that has seen offset `n` never later
//! finds a new entry below `n`. Bad input is rejected with an error naming the channel, the item
//! and the reason, and nothing of its batch is written (invariant 9).
//!
//! The same database holds the curated warehouse ([`Warehouse`]): current-state and SCD2
//! history tables per object, a hash-chained audit trail and the apply bookkeeping, written
//! with the apply offset in ONE transaction per batch. Fields declared PII, raw payloads of
//! objects with PII and dead letters are sealed with AES-256-GCM ([`Keyring`]) before they
//! reach the database and opened on read; a store refuses to write them without a keyring
//! (invariant 10).
//!
//! Raw-log rows can be archived as Parquet files in a local directory or an S3 bucket
//! ([`archive`]); a file enters its partition's manifest only after it was read back and matched.
//!
//! Platform events received and to publish live beside them ([`events`], migration 20): a
//! received batch and its channel's replay id commit in one transaction, and events to publish
//! are idempotent per (event, key).
//!
//! This crate never calls Salesforce.

pub mod archive;
pub mod curated;
pub mod delivery;
pub mod error;
pub mod events;
pub mod jobs;
pub mod lease;
pub mod migrate;
pub mod operator;
pub mod outbound;
pub mod pii;
pub mod postgres;
pub mod quality;
pub mod query;
pub mod retention;
pub mod sqlite;
pub mod sync_status;
mod tail;
mod warehouse;
pub mod writeback;

use async_trait::async_trait;
use bytes::Bytes;
use sfsync_core::{Change, ChangeType, EventKey, RecordVersion, ReplayId};

pub use curated::*;
pub use delivery::{
    Delivery, DeliveryBacklog, DeliveryDeadFilter, DeliveryDeadLetter, DeliveryDeadState,
    DeliveryPosition, NewDeliveryDeadLetter, OutboxChange, PiiMode, RedriveOutcome, StoredDelivery,
};
pub use error::{Result, StoreError};
pub use events::{
    EventAppend, InboundEvent, NewOutboundEvent, OutboundCounts, OutboundEvent, OutboundFilter,
    OutboundState, PlatformEvents, PublishOutcome, StoredInboundEvent,
};
pub use jobs::*;
pub use lease::{Fence, Lease, Leases, LogPosition};
pub use migrate::{AppliedMigration, Migration};
pub use operator::*;
pub use outbound::{
    OutboundContent, OutboundItem, OutboundOutcome, OutboundReceipt, OutboundReceipts,
    ReceiptOutcome, StoredReceipt,
};
pub use pii::Keyring;
pub use postgres::PostgresChangeLog;
pub use quality::*;
pub use query::{
    CmpOp, Operand, OrderKey, QueryRow, QueryTable, RowFilter, RowQuery, RowStore, StrFn,
    KEY_COLUMN, OUTBOX_COLUMNS, SYNC_COLUMNS,
};
pub use retention::{AuditAnchor, AuditPrune, LogPrune, Retention};
pub use sqlite::{SqliteChangeLog, SqliteOptions, SqliteSynchronous};
pub use sync_status::{
    FreshnessStatus, LastReconcile, OpenWork, ReconcileResult, SyncStatus, SyncStatusState,
    SyncStatusStore,
};
pub use writeback::*;

/// One raw change as it goes into the log: the identity and ordering fields the apply stage
/// needs, plus the payload bytes exactly as received (e.g. the Avro record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChange {
    /// The dedupe identity. For a change event use the key of its first record id (see
    /// [`RawChange::from_change`]); re-delivery yields the same key.
    pub event_key: EventKey,
    /// Replay id of the event that carried this change, verbatim.
    pub replay_id: ReplayId,
    /// Writer schema id of the payload.
    pub schema_id: String,
    /// `entityName` of the change (`Account`, `Case`, …).
    pub entity: String,
    pub change_type: ChangeType,
    /// Commit timestamp (epoch ms), commit number and sequence number.
    pub version: RecordVersion,
    /// Payload bytes, stored verbatim.
    pub payload: Bytes,
}

impl RawChange {
    /// The raw-log form of a decoded change with its payload bytes; `None` when the change has no
    /// change type (a header that lacked it cannot be applied and belongs in quarantine).
    pub fn from_change(change: &Change, payload: impl Into<Bytes>) -> Option<RawChange> {
        let event_key = change.event_keys().into_iter().next()?;
        Some(RawChange {
            event_key,
            replay_id: change.replay_id.clone(),
            schema_id: change.schema_id.clone(),
            entity: change.header.entity_name.clone(),
            change_type: change.change_type()?,
            version: change.version(),
            payload: payload.into(),
        })
    }
}

/// A position in the raw change log. Offsets start at 1, only increase in commit order, and may
/// have holes (rolled-back appends, duplicates).
pub type LogOffset = u64;

/// A change read back from the log with its position and channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedChange {
    pub offset: LogOffset,
    pub channel: String,
    pub change: RawChange,
}

/// A raw-log entry's position and identity, without its payload (see [`ChangeLog::locate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogMark {
    pub offset: LogOffset,
    pub channel: String,
    /// The entry's replay id, verbatim.
    pub replay_id: ReplayId,
    /// Commit timestamp of its change (epoch ms).
    pub commit_timestamp: i64,
}

/// An entry [`ChangeLog::locate`] looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogPoint {
    /// The oldest retained entry: of one channel, or of the whole log.
    Oldest { channel: Option<String> },
    /// The first entry (lowest offset) of `entity` whose change was committed at or after
    /// `commit_ms`.
    FirstCommittedSince { entity: String, commit_ms: i64 },
    /// The entry of `channel` carrying exactly these replay id bytes (compared as bytes, never
    /// parsed).
    ReplayId {
        channel: String,
        replay_id: ReplayId,
    },
    /// The first entry (lowest offset) of `entity` above offset `after`: the oldest change of
    /// the object an apply offset of `after` has not covered yet.
    FirstAfter { entity: String, after: LogOffset },
}

/// What one [`ChangeLog::append_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppendOutcome {
    /// Changes newly written to the log.
    pub appended: u64,
    /// Changes whose event key was already in the log (or earlier in the same batch): skipped.
    pub duplicates: u64,
    /// Offset of the last change written by this batch, if any.
    pub last_offset: Option<LogOffset>,
}

/// The raw change log with its checkpoints and apply offsets.
///
/// Contracts: every method is one transaction (atomic); [`ChangeLog::append_batch`] is
/// idempotent per event key; methods are safe to call concurrently from one process (writes are
/// serialised); a future dropped before completion leaves either the whole transaction committed
/// or nothing.
#[async_trait]
pub trait ChangeLog: Send + Sync {
    /// Backend name for logs and errors (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Appends `changes` (in order) and sets the checkpoint of `channel` to `checkpoint`, in one
    /// transaction. A change whose event key is already logged is skipped and counted. If any
    /// change is rejected, nothing of the batch and no checkpoint is written and the error names
    /// the item. An empty batch only moves the checkpoint.
    async fn append_batch(
        &self,
        channel: &str,
        changes: &[RawChange],
        checkpoint: &ReplayId,
    ) -> Result<AppendOutcome>;

    /// The last committed checkpoint of `channel` (replay id bytes verbatim), if any.
    async fn checkpoint(&self, channel: &str) -> Result<Option<ReplayId>>;

    /// Up to `limit` changes with offset `>= from`, in log order.
    async fn read_from(&self, from: LogOffset, limit: usize) -> Result<Vec<LoggedChange>>;

    /// Up to `limit` changes of `entity` with `from <= offset <= to`, in log order (a replay
    /// reads one object's changes of a window without the other objects' payloads).
    async fn read_entity(
        &self,
        entity: &str,
        from: LogOffset,
        to: LogOffset,
        limit: usize,
    ) -> Result<Vec<LoggedChange>>;

    /// The changes at exactly these offsets (those still in the log), in log order.
    async fn read_offsets(&self, offsets: &[LogOffset]) -> Result<Vec<LoggedChange>>;

    /// Finds an entry by time, replay id or age, without reading payloads; `None` when the log
    /// holds no such entry.
    async fn locate(&self, point: &LogPoint) -> Result<Option<LogMark>>;

    /// The last log offset `consumer` has applied, if any.
    async fn applied_offset(&self, consumer: &str) -> Result<Option<LogOffset>>;

    /// Records that `consumer` has applied everything up to `offset`, in its own transaction.
    /// Offsets never move backwards: a smaller offset is an internal error. Curated writers set
    /// it inside their own transaction instead (see the backends' transaction handles).
    async fn set_applied_offset(&self, consumer: &str, offset: LogOffset) -> Result<()>;

    /// Migrations recorded in `schema_migrations`, in version order.
    async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>>;
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Rebuilds an [`EventKey`] from its text form (as stored, or carried in a Kafka header).
pub fn event_key_from_text(s: &str) -> Option<EventKey> {
    event_key_from_stored(s)
}

/// Rebuilds an [`EventKey`] from its stored text form.
pub(crate) fn event_key_from_stored(s: &str) -> Option<EventKey> {
    use serde::Deserialize;
    let de = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s);
    EventKey::deserialize(de).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfsync_core::ChangeHeader;

    #[test]
    fn raw_change_from_change_keeps_identity_and_bytes() {
        let change = Change {
            header: ChangeHeader {
                entity_name: "Case".into(),
                record_ids: vec!["500A".into(), "500B".into()],
                change_type: Some(ChangeType::Update),
                transaction_key: "tx1".into(),
                sequence_number: 3,
                commit_timestamp: 10,
                commit_number: 11,
                ..Default::default()
            },
            schema_id: "s1".into(),
            replay_id: ReplayId::from_bytes(vec![0xff, 0]),
            fields: vec![],
        };
        let raw = RawChange::from_change(&change, vec![1u8, 2]).unwrap();
        assert_eq!(raw.event_key.as_str(), "tx1/3/500A");
        assert_eq!(raw.replay_id.as_bytes(), &[0xff, 0]);
        assert_eq!(raw.version, change.version());
        assert_eq!(&raw.payload[..], &[1, 2]);

        let mut headerless = change.clone();
        headerless.header.change_type = None;
        assert_eq!(RawChange::from_change(&headerless, vec![]), None);
    }

    #[test]
    fn stored_event_keys_round_trip() {
        let k = EventKey::new("tx", 1, "001");
        assert_eq!(event_key_from_stored(k.as_str()), Some(k));
    }
}
