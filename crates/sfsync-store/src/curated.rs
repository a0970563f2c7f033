//! The curated warehouse model: one current-state table per object with typed columns from
//! describe, an SCD2 history table for configured fields, a hash-chained audit table, and the
//! bookkeeping the apply stage needs (repair and re-sync requests, dead letters, writer schemas,
//! runs).
//!
//! Guarantee: everything in one [`CuratedBatch`] — current rows, history versions, audit entries,
//! repair bookkeeping — and the apply offset commit in ONE transaction (architecture invariant 1).
//! PII columns are sealed with AES-256-GCM before they reach the database and opened on read
//! (invariant 10); the apply stage only ever sees plaintext [`Value`]s.
//!
//! This module holds the backend-neutral types and the [`Warehouse`] trait; the SQLite and
//! Postgres backends implement it.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sfsync_core::{RecordVersion, ReplayId};

use crate::error::Result;
use crate::quality::*;
use crate::{AppendOutcome, ChangeLog, LogOffset, RawChange};

/// Column prefix of sfsync's sync-metadata columns; no Salesforce field starts with `_`.
pub const META_PREFIX: &str = "_sf_";

/// SQL type of a curated column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    Text,
    Integer,
    Real,
    Boolean,
    /// A calendar date ([`Value::Date`]).
    Date,
    /// An instant ([`Value::Timestamp`]).
    Timestamp,
}

/// A typed column value, always plaintext in memory.
///
/// SQLite stores dates as `YYYY-MM-DD` text, timestamps as RFC 3339 text in UTC with
/// milliseconds (`2026-11-21T09:30:00.000Z`) and booleans as 0/1, so the `sqlite3` tool shows
/// readable values; Postgres uses `date`, `timestamptz`, `boolean`, `bigint`,
/// `double precision` and `text`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", content = "v", rename_all = "snake_case")]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Real(f64),
    Text(String),
    /// Days since 1970-01-01.
    Date(i32),
    /// Milliseconds since the Unix epoch, UTC.
    Timestamp(i64),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// One curated column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// Column name in the warehouse: the Salesforce field API name in lower case
    /// (`billingcity`, `service_type__c`).
    pub name: String,
    /// The Salesforce field API name it holds (`BillingCity`).
    pub field: String,
    pub ty: ColumnType,
    /// Sealed with AES-256-GCM at rest (stored as text whatever `ty` is).
    pub pii: bool,
}

/// SCD2 history of an object: which columns open a new version when they change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistorySpec {
    /// History table name (`sf_case_history`).
    pub table: String,
    /// Tracked column names (a subset of the model's columns).
    pub columns: Vec<String>,
}

/// The curated model of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectModel {
    /// Salesforce API name (`Case`).
    pub object: String,
    /// Current-state table name (`sf_case`).
    pub table: String,
    /// Data columns in describe order; the record id column `id` is always first.
    pub columns: Vec<ColumnDef>,
    pub history: Option<HistorySpec>,
}

impl ObjectModel {
    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Names of the PII columns.
    pub fn pii_columns(&self) -> impl Iterator<Item = &str> {
        self.columns
            .iter()
            .filter(|c| c.pii)
            .map(|c| c.name.as_str())
    }
}

/// What [`Warehouse::ensure_model`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelChange {
    /// The current-state (and history) tables were created.
    pub created: bool,
    /// Columns added to existing tables (a new schema id brought new fields).
    pub added_columns: Vec<String>,
    /// Columns present in the database whose type differs from the model (kept as they are;
    /// reported so an operator can decide).
    pub retyped_columns: Vec<String>,
}

/// Where a curated row version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeSource {
    /// A Change Data Capture event.
    Cdc,
    /// A re-read of the record (gap repair, backfill, reconciliation).
    Snapshot,
    /// A Salesforce Outbound Message notification (the record's selected fields as of its
    /// SystemModstamp).
    OutboundMessage,
    /// A polled read of the record (`mode = "poll"`: SOQL `queryAll` by SystemModstamp), as of
    /// its SystemModstamp.
    Poll,
}

impl ChangeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeSource::Cdc => "cdc",
            ChangeSource::Snapshot => "snapshot",
            ChangeSource::OutboundMessage => "outbound_message",
            ChangeSource::Poll => "poll",
        }
    }
}

/// Sync metadata written on every curated row (columns `_sf_*`), so consumers can see freshness
/// and provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncMeta {
    /// Version of the newest change applied to the row.
    pub version: RecordVersion,
    /// `CREATE`, `UPDATE`, `DELETE`, `UNDELETE` or `SNAPSHOT`.
    pub change_type: String,
    pub source: ChangeSource,
    pub transaction_key: String,
    /// Replay id of the event (none for snapshots).
    pub replay_id: Option<ReplayId>,
    /// The run (`sfsync run` process, repair, backfill) that applied it.
    pub run_id: String,
    /// When sfsync applied it (epoch ms).
    pub applied_at_ms: i64,
    /// The `client=` of the change origin (`sfsync` for sfsync's own writes), if any.
    pub origin_client: Option<String>,
}

/// A current-state row as loaded for the apply stage (PII opened).
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentRow {
    pub id: String,
    /// Data column → value; a column the row never received is absent. The stores write an
    /// absent column and [`Value::Null`] alike as SQL NULL and read NULL back as absent, so a
    /// loaded row never holds `Value::Null` (nor the `id` column, which is [`CurrentRow::id`]).
    pub values: BTreeMap<String, Value>,
    pub meta: SyncMeta,
    /// The record is deleted in Salesforce (the row is kept, flagged).
    pub deleted: bool,
    /// The version of the last full-row write (create, undelete, snapshot).
    pub base_version: RecordVersion,
    /// Opaque per-field version map owned by the apply stage (`None` when empty).
    pub field_versions: Option<String>,
    /// Number of the open SCD2 version, if the object has history and the record a version.
    pub history_version: Option<i64>,
    /// The row lacks fields (an UPDATE arrived for a record never seen in full); a repair
    /// re-reads it.
    pub partial: bool,
}

/// The state a row must have after the batch: written as one upsert.
pub type RowWrite = CurrentRow;

/// One step on an SCD2 history table, applied in batch order.
#[derive(Debug, Clone, PartialEq)]
pub enum HistoryWrite {
    /// Closes the open version `version` of `id` at `valid_to_ms` (the commit time of the change
    /// that ended it).
    Close {
        object: String,
        id: String,
        version: i64,
        valid_to_ms: i64,
        end_change_type: String,
    },
    /// Opens version `version` (valid from `valid_from_ms`, open-ended, current) with the tracked
    /// column values.
    Open {
        object: String,
        id: String,
        version: i64,
        valid_from_ms: i64,
        values: BTreeMap<String, Value>,
        meta: SyncMeta,
    },
    /// A change to untracked fields only: refreshes the open version's sync metadata in place.
    Touch {
        object: String,
        id: String,
        version: i64,
        meta: SyncMeta,
    },
}

/// One audit trail entry: who changed which fields, when, from where, and how sfsync applied it.
///
/// It names the changed fields but holds none of their values: the values live in the curated
/// current-state table, the SCD2 history table (tracked columns) and the raw change log, so the
/// audit trail adds no copy of them — and no PII — of its own. Entries written by older versions
/// may still carry a `values` map inside their stored (hashed) JSON; it is left as written, and
/// this type must keep ignoring unknown fields so those entries still parse when verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub object: String,
    pub record_id: String,
    pub change_type: String,
    pub event_key: String,
    pub commit_timestamp_ms: i64,
    /// Salesforce user id of the committer (empty for snapshots).
    pub commit_user: String,
    /// The raw `changeOrigin`.
    pub change_origin: String,
    pub source: ChangeSource,
    /// Field API names the change set or nulled (the "what"; values are not recorded).
    pub fields: Vec<String>,
    /// How the apply stage treated it: `applied`, `stale` (older than the row), `late`
    /// (older, applied to fields only), `repair_requested`.
    pub outcome: String,
    pub replay_id: Option<ReplayId>,
    pub run_id: String,
    pub applied_at_ms: i64,
}

/// A request to re-read records from Salesforce and apply them as snapshots (after a GAP_*
/// event, an UPDATE for an unknown record, or a diff that could not be applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairRequest {
    pub object: String,
    pub record_ids: Vec<String>,
    /// `GAP_UPDATE`, `unknown_record`, `diff_mismatch`, …
    pub reason: String,
    /// Event key of the change that caused it.
    pub event_key: String,
    pub commit_timestamp_ms: i64,
}

/// A repair request as stored, with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRepair {
    pub id: i64,
    pub request: RepairRequest,
    pub created_at_ms: i64,
}

/// A request for a windowed re-sync of a whole object (GAP_OVERFLOW, an expired replay id),
/// carried out by backfill. Never dropped: it stays `pending` until a run completes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncRequest {
    /// Object API name; empty when the whole channel is affected (expired replay id).
    pub object: String,
    pub channel: String,
    /// Re-sync changes committed at or after this time (epoch ms).
    pub from_ms: i64,
    pub reason: String,
    pub event_key: Option<String>,
}

/// A re-sync request as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResync {
    pub id: i64,
    pub request: ResyncRequest,
    pub status: String,
    pub created_at_ms: i64,
}

/// An event that could not be decoded or applied, kept whole with its cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub channel: String,
    pub replay_id: Option<ReplayId>,
    pub schema_id: String,
    /// `decode`, `apply`, …
    pub stage: String,
    /// The error with its cause chain.
    pub error: String,
    /// The payload bytes as received (sealed by the store when the object has PII).
    pub payload: Vec<u8>,
    /// Object, when known.
    pub object: Option<String>,
}

/// A stored event dead letter as listed: everything but the payload itself (which may hold PII
/// and is Avro anyway), with its size and whether it is sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDeadLetter {
    pub id: i64,
    pub channel: String,
    /// Hex, as sfsync prints replay ids (`sfsync replay --from-replay-id`).
    pub replay_id: Option<String>,
    pub schema_id: String,
    /// `decode`, `apply`, `repair`, …
    pub stage: String,
    pub error: String,
    pub object: Option<String>,
    pub payload_bytes: u64,
    pub payload_sealed: bool,
    pub created_at_ms: i64,
}

/// Which event dead letters to read; every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only these ids (empty: any).
    pub ids: Vec<i64>,
    pub object: Option<String>,
    /// Only ids above this (paging oldest first).
    pub after: Option<i64>,
    /// Newest first when set; oldest first otherwise.
    pub newest_first: bool,
    /// At most this many (0: no limit).
    pub limit: usize,
}

impl StoredDeadLetter {
    /// From a stored row: (id, channel, replay id bytes, schema, stage, error, object, payload,
    /// created).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        id: i64,
        channel: String,
        replay_id: Option<Vec<u8>>,
        schema_id: String,
        stage: String,
        error: String,
        object: Option<String>,
        payload: &[u8],
        created_at_ms: i64,
    ) -> StoredDeadLetter {
        StoredDeadLetter {
            id,
            channel,
            replay_id: replay_id.map(|b| b.iter().map(|x| format!("{x:02x}")).collect()),
            schema_id,
            stage,
            error,
            object,
            payload_bytes: payload.len() as u64,
            payload_sealed: crate::pii::is_sealed_bytes(payload),
            created_at_ms,
        }
    }
}

/// Everything the apply stage writes for one batch; committed with the apply offset in one
/// transaction by [`Warehouse::commit_curated`].
#[derive(Debug, Clone, Default)]
pub struct CuratedBatch {
    /// Final state of each touched row, keyed by (object, id); at most one per key.
    pub rows: Vec<(String, RowWrite)>,
    pub history: Vec<HistoryWrite>,
    pub audit: Vec<AuditEntry>,
    pub repairs: Vec<RepairRequest>,
    /// Ids of repair requests this batch completes.
    pub repairs_done: Vec<i64>,
    pub resyncs: Vec<ResyncRequest>,
    pub dead_letters: Vec<DeadLetter>,
    /// Changes held instead of merged.
    pub quarantine: Vec<QuarantineEntry>,
    /// Held changes this batch released (their rows are in `rows`) or re-checked.
    pub quarantine_updates: Vec<QuarantineUpdate>,
    /// Warn-severity failures kept as samples.
    pub dq_failures: Vec<DqFailure>,
    /// Failure counts per run, object and rule, added to the stored ones.
    pub dq_counts: Vec<DqCount>,
    /// Progress of the sync job (backfill, re-sync, replay) whose rows this batch writes.
    pub job_progress: Option<crate::jobs::SyncJobProgress>,
    /// The batch's applied changes for the delivery outbox (empty when no sink is configured).
    pub deliveries: Vec<crate::delivery::OutboxChange>,
    /// Apply offsets moved by compare-and-set with this batch (an external log's partitions);
    /// when any was moved by another worker, nothing of the batch is written.
    pub log_positions: Vec<crate::lease::LogPosition>,
}

impl CuratedBatch {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
            && self.history.is_empty()
            && self.audit.is_empty()
            && self.deliveries.is_empty()
            && self.repairs.is_empty()
            && self.repairs_done.is_empty()
            && self.resyncs.is_empty()
            && self.dead_letters.is_empty()
            && self.quarantine.is_empty()
            && self.quarantine_updates.is_empty()
            && self.dq_failures.is_empty()
            && self.dq_counts.is_empty()
            && self.job_progress.is_none()
            && self.log_positions.is_empty()
    }
}

/// A history row as read back (PII opened).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub id: String,
    pub version: i64,
    pub valid_from_ms: i64,
    pub valid_to_ms: Option<i64>,
    pub is_current: bool,
    pub change_type: String,
    pub end_change_type: Option<String>,
    pub transaction_key: String,
    /// Tracked column → value (SQL NULL reads back as absent).
    pub values: BTreeMap<String, Value>,
}

/// Result of [`Warehouse::verify_audit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerification {
    pub entries: u64,
    /// The first entry whose hash or link does not match, with the reason.
    pub first_break: Option<(u64, String)>,
    /// Hex hash of the last entry (the chain head).
    pub head: Option<String>,
    /// Entries of the operator action chain checked (`operator_actions`, see
    /// [`crate::operator`]); a break there is reported in `first_break`, named
    /// `operator_actions`.
    pub operator_actions: u64,
    /// Hex hash of the last operator action.
    pub operator_head: Option<String>,
}

/// Result of [`Warehouse::rotate_keys`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RotationReport {
    /// PII cells of curated current-state and history tables re-sealed (the audit trail holds
    /// no values, so nothing of it is re-sealed).
    pub values_resealed: u64,
    /// Raw change payloads, held changes (quarantine entries with their change, of objects with
    /// PII) and dead letters re-sealed.
    pub raw_payloads_resealed: u64,
    pub new_key_id: String,
}

/// A run of sfsync (the streaming `run` process, a repair, a backfill) as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub run_id: String,
    pub kind: String,
    pub status: String,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    /// Counts and reason, JSON.
    pub detail: String,
}

/// The warehouse side of a store: curated tables, history, audit and apply bookkeeping, in the
/// same database as the raw change log.
///
/// Contracts: [`Warehouse::commit_curated`] is one transaction with the apply offset; every read
/// returns PII opened; a column is never dropped or retyped by sfsync (only added); one process
/// applies to a database at a time (the apply stage holds [`Warehouse::acquire_apply_lock`]).
#[async_trait]
pub trait Warehouse:
    ChangeLog
    + crate::WriteLedger
    + crate::Retention
    + crate::Delivery
    + crate::SyncStatusStore
    + crate::Leases
    + crate::OutboundReceipts
    + crate::PlatformEvents
{
    /// Creates the tables of `model` or adds its missing columns, and registers the model (its
    /// PII columns) for sealing. Idempotent.
    async fn ensure_model(&self, model: &ObjectModel) -> Result<ModelChange>;

    /// Raw-change payloads as this store writes them to its raw log: compressed, and sealed
    /// (AES-256-GCM, AAD of the object's raw log) when the object's registered model has PII.
    /// For a raw log kept outside the database (Kafka), so PII rests sealed there too.
    fn encode_raw_payloads(&self, changes: &[crate::RawChange]) -> Result<Vec<Vec<u8>>>;

    /// Opens and decompresses a payload made by [`Warehouse::encode_raw_payloads`].
    fn decode_raw_payload(&self, entity: &str, stored: Vec<u8>) -> Result<Vec<u8>>;

    /// Current rows of `object` for `ids` (those that exist), PII opened.
    async fn load_current(
        &self,
        object: &str,
        ids: &[String],
    ) -> Result<HashMap<String, CurrentRow>>;

    /// Live (not deleted) current rows of `object` whose `column` (a curated column name, e.g.
    /// `code__c`) holds one of `values` (compared as text): (value, record id) pairs. For the
    /// `unique` data-quality rule; never used on PII columns (they are sealed) — an error if asked.
    ///
    /// "As text" is the database's own text form of the stored value (SQLite `CAST(… AS TEXT)`,
    /// Postgres `::text`): the same on both backends for text and integer columns; booleans,
    /// reals, dates and timestamps render differently per backend. Pairs come ordered by value,
    /// then record id; an unknown column is an error naming the object and column.
    async fn ids_by_value(
        &self,
        object: &str,
        column: &str,
        values: &[String],
    ) -> Result<Vec<(String, String)>>;

    /// All current rows of `object` ordered by id, PII opened (tests, reconciliation, tools).
    async fn read_current(&self, object: &str) -> Result<Vec<CurrentRow>>;

    /// All history rows of `object` ordered by id and version, PII opened.
    async fn read_history(&self, object: &str) -> Result<Vec<HistoryRow>>;

    /// The newest history version (highest `_sf_version`) of each of `ids` that has one, PII
    /// opened; empty when the object has no history. A replay and authoritative re-reads plan
    /// against it, so a current row damaged behind sfsync's back does not open spurious versions.
    async fn latest_history(
        &self,
        object: &str,
        ids: &[String],
    ) -> Result<HashMap<String, HistoryRow>>;

    /// Writes `batch` and, when `offset` is given, sets `consumer`'s apply offset to it — in ONE
    /// transaction. Offsets never move back.
    async fn commit_curated(
        &self,
        consumer: &str,
        offset: Option<LogOffset>,
        batch: &CuratedBatch,
    ) -> Result<()>;

    /// Appends raw changes and dead letters (undecodable events of the same fetch) and moves the
    /// channel checkpoint, in one transaction (see [`ChangeLog::append_batch`]).
    async fn append_with_dead_letters(
        &self,
        channel: &str,
        changes: &[RawChange],
        dead_letters: &[DeadLetter],
        checkpoint: &ReplayId,
    ) -> Result<AppendOutcome>;

    /// Pending repair requests, oldest first.
    async fn pending_repairs(&self, limit: usize) -> Result<Vec<StoredRepair>>;

    /// All re-sync requests, oldest first.
    async fn resync_requests(&self) -> Result<Vec<StoredResync>>;

    /// Records a re-sync request outside an apply batch (e.g. an expired replay id at subscribe).
    async fn add_resync(&self, request: &ResyncRequest) -> Result<()>;

    /// Number of stored dead letters.
    async fn dead_letter_count(&self) -> Result<u64>;

    /// Stored event dead letters matching `filter` (read only; payloads are not returned).
    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<StoredDeadLetter>>;

    /// Stores a writer schema (JSON) by id; idempotent.
    async fn put_schema(&self, schema_id: &str, json: &str) -> Result<()>;

    /// A stored writer schema.
    async fn schema(&self, schema_id: &str) -> Result<Option<String>>;

    /// Walks the audit chain and checks every link and hash.
    async fn verify_audit(&self) -> Result<AuditVerification>;

    /// Re-seals every PII value (curated, history, raw payloads, held changes in the quarantine,
    /// dead letters) under the keyring's current key.
    async fn rotate_keys(&self) -> Result<RotationReport>;

    /// Records the start of a run.
    async fn start_run(&self, run_id: &str, kind: &str, detail: &str) -> Result<()>;

    /// Records the end of a run.
    async fn finish_run(&self, run_id: &str, status: &str, detail: &str) -> Result<()>;

    /// Runs, newest first.
    async fn runs(&self, limit: usize) -> Result<Vec<RunRecord>>;

    /// Quarantined changes matching `filter`, oldest first, with their changes (opened).
    async fn quarantine_list(&self, filter: &QuarantineFilter) -> Result<Vec<QuarantineRecord>>;

    /// Number of open quarantined changes (held, release requested or force requested).
    async fn quarantine_open_count(&self) -> Result<u64>;

    /// An operator's decision on quarantined changes, recorded with who made it and why.
    /// Releases are requests the running apply stage carries out; a discard is final and puts
    /// the record's changes that were held behind it up for a re-check.
    async fn quarantine_act(
        &self,
        ids: &[i64],
        action: QuarantineAction,
        by: &str,
        note: &str,
    ) -> Result<Vec<(i64, QuarantineActOutcome)>>;

    /// Records that the late-parent alert of these held changes was raised.
    async fn quarantine_mark_alerted(&self, ids: &[i64]) -> Result<()>;

    /// Data-quality counts of one run, or summed over all runs (run id `*`), by object and rule.
    async fn dq_counts(&self, run_id: Option<&str>) -> Result<Vec<DqCount>>;

    /// Stored warn-severity failure samples (of one run or all), newest first.
    async fn dq_samples(&self, run_id: Option<&str>, limit: usize) -> Result<Vec<DqFailure>>;

    /// Requests a sync job (pending until the apply process takes it). Returns its id.
    async fn add_sync_job(&self, job: &crate::jobs::NewSyncJob) -> Result<i64>;

    /// Sync jobs matching `filter`.
    async fn sync_jobs(
        &self,
        filter: &crate::jobs::SyncJobFilter,
    ) -> Result<Vec<crate::jobs::SyncJob>>;

    /// One sync job.
    async fn sync_job(&self, id: i64) -> Result<Option<crate::jobs::SyncJob>>;

    /// Changes a job's status, Bulk job, position, totals, error or report (outside a batch). A
    /// job that succeeds marks the re-sync request it carries out done, in the same transaction.
    async fn patch_sync_job(&self, id: i64, patch: &crate::jobs::SyncJobPatch) -> Result<()>;

    /// Starts a failed or cancelled job again as a new attempt (see [`crate::jobs::retried`]),
    /// in one transaction, and returns it. Any other status, or an unknown id, is an error that
    /// names it and changes nothing.
    async fn retry_sync_job(&self, id: i64, by: &str) -> Result<crate::jobs::SyncJob>;

    /// Replaces a job's slices, checked against the stored ones (a plan is made once; each slice
    /// moves only as [`crate::jobs::SliceStatus::can_become`] allows — an illegal move is an
    /// error naming the slice and changes nothing). With `reset_position` the Bulk job and page
    /// position are cleared in the same transaction (the next slice starts its own query).
    async fn set_sync_job_slices(
        &self,
        id: i64,
        slices: &[crate::jobs::SyncJobSlice],
        reset_position: bool,
    ) -> Result<()>;

    /// Turns each pending re-sync request into a re-sync job, once. Returns the new job ids.
    async fn schedule_resyncs(&self, requested_by: &str) -> Result<Vec<i64>>;

    /// Keys of `object`'s curated rows ordered by id, after `after` (exclusive), at most `limit`.
    async fn row_keys(
        &self,
        object: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::jobs::RowKey>>;

    /// Takes the single-applier lock for this database (SQLite: an exclusive lock file beside
    /// the database; Postgres: a session advisory lock). Fails with a clear error when another
    /// process holds it.
    async fn acquire_apply_lock(&self) -> Result<()>;
}
