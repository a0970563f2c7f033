//! Sync jobs: backfills, re-syncs, reconciliations, replays and formula-field refreshes, as
//! durable requests the single apply process carries out.
//!
//! A job is requested (by the CLI, by `sfsync run` itself for a new object or a re-sync request,
//! or on a schedule), taken by the apply process, and carried out in steps between streamed
//! batches. Its progress — the Bulk job id, the result-page locator and how many rows of that page
//! are committed, and the counts — commits in the SAME transaction as the curated rows it covers
//! ([`crate::CuratedBatch::job_progress`]), so a crash resumes exactly where the last commit left
//! off without re-reading finished pages. Jobs are never deleted; a finished job keeps its counts
//! and report.

use serde::{Deserialize, Serialize};

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncJobKind {
    /// Initial or on-demand load of an object (Bulk API 2.0 query), optionally since a time.
    Backfill,
    /// Windowed re-load after a GAP_OVERFLOW or an expired replay id (queryAll: deletes too).
    Resync,
    /// Comparison of the warehouse with Salesforce, with repair of what differs.
    Reconcile,
    /// Re-application of changes from the raw log (or Salesforce where not retained).
    Replay,
    /// Re-read of the formula fields of records changed since the previous refresh's watermark
    /// (change events never carry formula fields); updates only those columns of existing rows.
    FormulaRefresh,
}

impl SyncJobKind {
    pub const ALL: [SyncJobKind; 5] = [
        SyncJobKind::Backfill,
        SyncJobKind::Resync,
        SyncJobKind::Reconcile,
        SyncJobKind::Replay,
        SyncJobKind::FormulaRefresh,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncJobKind::Backfill => "backfill",
            SyncJobKind::Resync => "resync",
            SyncJobKind::Reconcile => "reconcile",
            SyncJobKind::Replay => "replay",
            SyncJobKind::FormulaRefresh => "formula_refresh",
        }
    }

    pub fn parse(s: &str) -> Option<SyncJobKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncJobStatus {
    /// Requested, not started.
    Pending,
    /// Being carried out (or interrupted by a crash: resumed at the next start).
    Running,
    Succeeded,
    /// Gave up after an error that retrying cannot fix; the error is recorded.
    Failed,
    /// An operator cancelled it.
    Cancelled,
}

impl SyncJobStatus {
    pub const ALL: [SyncJobStatus; 5] = [
        SyncJobStatus::Pending,
        SyncJobStatus::Running,
        SyncJobStatus::Succeeded,
        SyncJobStatus::Failed,
        SyncJobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncJobStatus::Pending => "pending",
            SyncJobStatus::Running => "running",
            SyncJobStatus::Succeeded => "succeeded",
            SyncJobStatus::Failed => "failed",
            SyncJobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<SyncJobStatus> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Pending or running: still to be carried out.
    pub fn is_open(self) -> bool {
        matches!(self, SyncJobStatus::Pending | SyncJobStatus::Running)
    }

    /// Failed or cancelled: an operator may start it again as a new attempt
    /// ([`crate::Warehouse::retry_sync_job`]); a running, pending or succeeded job may not.
    pub fn can_retry(self) -> bool {
        matches!(self, SyncJobStatus::Failed | SyncJobStatus::Cancelled)
    }
}

/// How one earlier attempt of a job ended (kept when the job is retried).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncJobAttempt {
    /// 1 for the first.
    pub attempt: i64,
    /// Failed or cancelled.
    pub status: SyncJobStatus,
    pub error: Option<String>,
    /// Its run record (`runs` table).
    pub run_id: Option<String>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub counts: SyncCounts,
    /// Who retried it, and when.
    pub retried_by: String,
    pub retried_at_ms: i64,
}

/// A job as requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSyncJob {
    pub kind: SyncJobKind,
    /// Object API name (`Account`).
    pub object: String,
    /// Why: `requested by operator`, `new object`, `GAP_OVERFLOW …`, `replay id rejected …`.
    pub reason: String,
    /// Records modified at or after this time (epoch ms) only; `None` = all.
    pub since_ms: Option<i64>,
    /// Records modified before this time only; `None` = no upper bound.
    pub until_ms: Option<i64>,
    /// Kind-specific parameters, JSON (`{}` when none): replay ids, record ids, options.
    pub params: String,
    /// Who asked: `operator:<user>`, `sfsync run`, `schedule`.
    pub requested_by: String,
    /// The re-sync request this job carries out (marked done with the job's success).
    pub resync_id: Option<i64>,
}

/// Counts of a job, added to by each committed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncCounts {
    /// Rows read from Salesforce (or raw-log entries, for a replay).
    pub read: i64,
    /// Rows that changed the warehouse.
    pub applied: i64,
    /// Rows not newer than the warehouse (a streamed change had already brought them).
    pub skipped: i64,
    /// Rows held in the quarantine.
    pub held: i64,
    /// Rows applied as deletes (IsDeleted in a queryAll, or purged).
    pub deleted: i64,
    /// Rows that could not be converted (dead letters with their cause).
    pub failed: i64,
    /// Salesforce API calls made.
    pub api_calls: i64,
}

impl SyncCounts {
    pub fn add(&mut self, o: &SyncCounts) {
        self.read += o.read;
        self.applied += o.applied;
        self.skipped += o.skipped;
        self.held += o.held;
        self.deleted += o.deleted;
        self.failed += o.failed;
        self.api_calls += o.api_calls;
    }

    pub fn is_zero(&self) -> bool {
        *self == SyncCounts::default()
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncJob {
    pub id: i64,
    pub kind: SyncJobKind,
    pub object: String,
    pub reason: String,
    pub status: SyncJobStatus,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub params: String,
    pub requested_by: String,
    pub resync_id: Option<i64>,
    /// The run record of this job (`runs` table).
    pub run_id: Option<String>,
    /// The Salesforce Bulk query job being read.
    pub bulk_job_id: Option<String>,
    /// Locator of the result page to read next (`None`: the first page).
    pub locator: Option<String>,
    /// Rows of that page already committed (skipped when the page is read again after a crash).
    pub page_rows_done: i64,
    /// Rows the Bulk job returned in all (known once it completed).
    pub rows_total: Option<i64>,
    pub counts: SyncCounts,
    pub requested_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub error: Option<String>,
    /// Outcome details, JSON (a reconciliation's report).
    pub report: Option<String>,
    /// The highest SystemModstamp (epoch ms) among the rows the job has committed (formula
    /// refreshes: where the next refresh starts). Only ever raised, with the rows it covers.
    pub watermark_ms: Option<i64>,
    /// The lowest SystemModstamp of a row the job read but could not apply yet and that a later
    /// job must read again (formula refreshes: a record whose create the stream has not
    /// brought yet); the next refresh starts no later than this. Only ever lowered, with the
    /// rows it covers.
    pub reread_from_ms: Option<i64>,
    /// This is attempt number … (1, then one more per retry).
    pub attempts: i64,
    /// The earlier attempts, oldest first.
    pub previous_attempts: Vec<SyncJobAttempt>,
}

/// The job's row as a retry leaves it (pure): pending, the attempt count raised, the earlier
/// attempt's outcome appended to `previous_attempts`, and everything of the attempt itself
/// cleared — run, Bulk job, page position, totals, counts, times, error and report — so the new
/// attempt starts from the beginning (re-applying what the last one committed is harmless: the
/// apply path skips rows that are not newer). The watermark and re-read point stay: they only
/// ever move as far as committed rows allow. Refused (with the reason) unless it failed or was
/// cancelled.
pub fn retried(job: &SyncJob, by: &str, now_ms: i64) -> std::result::Result<SyncJob, String> {
    if by.trim().is_empty() {
        return Err("the person retrying must be named".into());
    }
    if !job.status.can_retry() {
        return Err(format!(
            "sync job {} is {}: only a failed or cancelled job can be retried; nothing was changed",
            job.id,
            job.status.as_str()
        ));
    }
    let mut next = job.clone();
    next.previous_attempts.push(SyncJobAttempt {
        attempt: job.attempts,
        status: job.status,
        error: job.error.clone(),
        run_id: job.run_id.clone(),
        started_at_ms: job.started_at_ms,
        finished_at_ms: job.finished_at_ms,
        counts: job.counts,
        retried_by: by.to_string(),
        retried_at_ms: now_ms,
    });
    next.attempts = job.attempts + 1;
    next.status = SyncJobStatus::Pending;
    next.run_id = None;
    next.bulk_job_id = None;
    next.locator = None;
    next.page_rows_done = 0;
    next.rows_total = None;
    next.counts = SyncCounts::default();
    next.started_at_ms = None;
    next.finished_at_ms = None;
    next.error = None;
    next.report = None;
    Ok(next)
}

/// `previous_attempts` as stored (JSON array text).
pub(crate) fn attempts_json(a: &[SyncJobAttempt]) -> String {
    serde_json::to_string(a).expect("attempts serialise")
}

/// Reads stored `previous_attempts`; `None` (NULL) is none.
pub(crate) fn parse_attempts(
    id: i64,
    text: Option<&str>,
) -> std::result::Result<Vec<SyncJobAttempt>, String> {
    match text {
        None => Ok(Vec::new()),
        Some(t) => serde_json::from_str(t)
            .map_err(|e| format!("sync job {id} has unreadable previous attempts: {e}")),
    }
}

/// Progress of a job committed with the curated rows it covers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncJobProgress {
    pub job_id: i64,
    /// The page position after this step: locator of the page to read next and the rows of it
    /// already committed. `None` leaves the stored position as it is.
    pub position: Option<(Option<String>, i64)>,
    /// Added to the stored counts.
    pub counts: SyncCounts,
    /// Raises the stored watermark to at least this (never lowers it).
    pub watermark_ms: Option<i64>,
    /// Lowers the stored re-read point to at most this (never raises it).
    pub reread_from_ms: Option<i64>,
}

/// A change of a job outside a curated batch. `None` fields are left as they are.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncJobPatch {
    pub status: Option<SyncJobStatus>,
    pub run_id: Option<String>,
    /// `Some(None)` clears it (the Bulk job is gone: a new one is created, from page one).
    pub bulk_job_id: Option<Option<String>>,
    /// Resets the page position (with a new Bulk job).
    pub position: Option<(Option<String>, i64)>,
    pub rows_total: Option<i64>,
    pub error: Option<String>,
    pub report: Option<String>,
    /// Added to the stored counts (API calls of waiting and polling, say).
    pub counts: SyncCounts,
}

/// Which jobs to list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncJobFilter {
    /// Any of these statuses (empty: all).
    pub statuses: Vec<SyncJobStatus>,
    pub kind: Option<SyncJobKind>,
    pub object: Option<String>,
    /// Newest first when set; oldest first otherwise (the order jobs are carried out).
    pub newest_first: bool,
    pub limit: usize,
}

impl SyncJobFilter {
    /// Pending and running jobs, oldest first.
    pub fn open() -> SyncJobFilter {
        SyncJobFilter {
            statuses: vec![SyncJobStatus::Pending, SyncJobStatus::Running],
            limit: 1000,
            ..Default::default()
        }
    }
}

/// The key of a curated row as reconciliation compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowKey {
    pub id: String,
    /// Commit time of the newest change applied (`_sf_commit_ms`): a CDC commit timestamp, or a
    /// snapshot's SystemModstamp.
    pub commit_ms: i64,
    pub deleted: bool,
}
