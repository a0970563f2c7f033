//! What the archive and retention jobs ask of a store: the raw log's rows in archive form, the
//! record of what is archived (files and the offset through which every entry is), pruning of
//! the hot raw log, and pruning of the audit trail's oldest entries.
//!
//! Safety rules, enforced here rather than trusted to callers:
//! - a raw-log entry is deleted only when it is archived (offset at or below
//!   [`Retention::archived_through`], which moves only after the files holding it were written
//!   and verified) **and** applied by every consumer (`apply_offsets`);
//! - the audit trail loses only a prefix, never its newest entry (the next entry links to it),
//!   and the hash of the last deleted entry is kept as the chain's anchor, so `sfsync audit
//!   verify` still checks every remaining link.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::archive::{ArchiveFile, ArchiveRow};
use crate::{LogOffset, Result};

/// What an audit prune deleted (or, in a dry run, would delete).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPrune {
    /// Entries deleted (would be).
    pub entries: u64,
    /// Oldest and newest `created_at_ms` among them.
    pub oldest_ms: Option<i64>,
    pub newest_ms: Option<i64>,
    /// The sequence number of the last entry deleted (the chain's new anchor).
    pub through_seq: Option<i64>,
}

/// What a raw-log prune deleted (or would delete).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPrune {
    pub entries: u64,
    /// The highest offset deleted.
    pub through_offset: Option<i64>,
    /// The bound the prune applied: min(asked, archived through, every consumer's applied
    /// offset).
    pub bound: i64,
}

/// The chain anchor left by audit pruning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditAnchor {
    pub seq: i64,
    pub hash: String,
    pub pruned_entries: i64,
    pub pruned_at_ms: i64,
}

#[async_trait]
pub trait Retention: Send + Sync {
    /// Raw-log entries with `from <= offset <= through`, at most `limit`, in log order, as the
    /// archive holds them: the Avro payload as received, or — for objects with PII — sealed
    /// under the keyring (AAD [`crate::pii::archive_aad`]), so the archive holds no PII in
    /// the clear.
    async fn archive_rows(
        &self,
        from: LogOffset,
        through: LogOffset,
        limit: usize,
    ) -> Result<Vec<ArchiveRow>>;

    /// Every raw-log entry at or below this offset is archived (0: none yet).
    async fn archived_through(&self) -> Result<LogOffset>;

    /// Records written and verified archive files and moves [`Self::archived_through`] to
    /// `through` (never backwards), in one transaction.
    async fn record_archived(&self, files: &[ArchiveFile], through: LogOffset) -> Result<()>;

    /// Recorded archive files, newest first, at most `limit`.
    async fn archive_files(&self, limit: usize) -> Result<Vec<ArchiveFile>>;

    /// Forgets the recorded files of a partition (after retention deleted it); returns how
    /// many were recorded.
    async fn forget_archive_partition(&self, object: &str, day: &str) -> Result<u64>;

    /// Deletes raw-log entries committed before `before_ms` with offsets at or below `through`,
    /// bounded by what is archived and applied (module docs); `dry_run` only counts.
    async fn prune_raw_log(
        &self,
        through: LogOffset,
        before_ms: i64,
        dry_run: bool,
    ) -> Result<LogPrune>;

    /// Deletes the audit trail's entries created before `before_ms`, keeping the newest entry
    /// and anchoring the chain at the last deleted one; `dry_run` only counts.
    async fn prune_audit(&self, before_ms: i64, dry_run: bool) -> Result<AuditPrune>;

    /// The anchor left by audit pruning, if any.
    async fn audit_anchor(&self) -> Result<Option<AuditAnchor>>;
}

/// Rows deleted per transaction when pruning (keeps each lock short).
pub(crate) const PRUNE_CHUNK: i64 = 10_000;
