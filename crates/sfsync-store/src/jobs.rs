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
    /// Compaction of the applied raw change log into Parquet files on the archive store,
    /// verified, then pruning of the hot log past its retention (object [`ALL_OBJECTS`]).
    Archive,
    /// Deletion of archive partitions and audit entries past their retention (object
    /// [`ALL_OBJECTS`]).
    Retention,
}

/// The `object` of a job that concerns every object (archive, retention).
pub const ALL_OBJECTS: &str = "*";

impl SyncJobKind {
    pub const ALL: [SyncJobKind; 7] = [
        SyncJobKind::Backfill,
        SyncJobKind::Resync,
        SyncJobKind::Reconcile,
        SyncJobKind::Replay,
        SyncJobKind::FormulaRefresh,
        SyncJobKind::Archive,
        SyncJobKind::Retention,
    ];

    /// Whether a job of this kind concerns the store as a whole, not one object's records.
    pub fn is_maintenance(self) -> bool {
        matches!(self, SyncJobKind::Archive | SyncJobKind::Retention)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SyncJobKind::Backfill => "backfill",
            SyncJobKind::Resync => "resync",
            SyncJobKind::Reconcile => "reconcile",
            SyncJobKind::Replay => "replay",
            SyncJobKind::FormulaRefresh => "formula_refresh",
            SyncJobKind::Archive => "archive",
            SyncJobKind::Retention => "retention",
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

    /// These counts less `o` (what was added since `o` was taken), never below zero.
    pub fn since(&self, o: &SyncCounts) -> SyncCounts {
        SyncCounts {
            read: (self.read - o.read).max(0),
            applied: (self.applied - o.applied).max(0),
            skipped: (self.skipped - o.skipped).max(0),
            held: (self.held - o.held).max(0),
            deleted: (self.deleted - o.deleted).max(0),
            failed: (self.failed - o.failed).max(0),
            api_calls: (self.api_calls - o.api_calls).max(0),
        }
    }
}

/// Where one slice of a large job stands. Legal moves: pending → running → succeeded | failed
/// | cancelled, pending → cancelled, and failed | cancelled | running → pending (a retry of the
/// job); a running slice stays running across a crash and resumes. A succeeded slice never
/// moves again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SliceStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl SliceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SliceStatus::Pending => "pending",
            SliceStatus::Running => "running",
            SliceStatus::Succeeded => "succeeded",
            SliceStatus::Failed => "failed",
            SliceStatus::Cancelled => "cancelled",
        }
    }

    /// Whether a slice may move from this status to `to` (staying put is always allowed).
    pub fn can_become(self, to: SliceStatus) -> bool {
        use SliceStatus::*;
        self == to
            || matches!(
                (self, to),
                (Pending, Running)
                    | (Pending, Cancelled)
                    | (Running, Succeeded)
                    | (Running, Failed)
                    | (Running, Cancelled)
                    | (Running, Pending)
                    | (Failed, Pending)
                    | (Cancelled, Pending)
            )
    }
}

/// One slice of a large backfill or re-sync: the records whose SystemModstamp is in
/// `[since_ms, until_ms)` (an open end is unbounded), read by a Bulk query of its own. Slices are
/// carried out in order, oldest first, so a record modified while the job runs moves into a
/// later (or the open last) slice that is still to be read, and is never missed. A slice that
/// succeeded is never read again, also not when the job is retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncJobSlice {
    /// 1 for the first.
    pub seq: u32,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub status: SliceStatus,
    /// Times it was started (1, then one more per retry of the job).
    pub attempts: i64,
    /// What its latest attempt did (known once it ended).
    pub counts: SyncCounts,
    /// The job's counts when its latest attempt started (its own are the difference).
    #[serde(default)]
    pub counts_before: SyncCounts,
    pub error: Option<String>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

/// The slices of a window `[since, until)` for slices of `span_ms` (at most `max_slices`: the
/// span widens to fit), or none when it fits one slice. `earliest_ms` (the oldest record's
/// SystemModstamp) bounds a window with no start; `now_ms` one with no end. The first slice
/// keeps the window's own start and the last its own end, so nothing outside the slices
/// belongs to the window.
pub fn plan_slices(
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    earliest_ms: Option<i64>,
    now_ms: i64,
    span_ms: i64,
    max_slices: usize,
) -> Vec<SyncJobSlice> {
    let Some(lower) = since_ms.or(earliest_ms) else {
        return Vec::new();
    };
    let upper = until_ms.unwrap_or(now_ms);
    let width = upper - lower;
    if span_ms <= 0 || width <= span_ms || max_slices < 2 {
        return Vec::new();
    }
    let mut span = span_ms;
    if (width + span - 1) / span > max_slices as i64 {
        span = (width + max_slices as i64 - 1) / max_slices as i64;
    }
    let n = ((width + span - 1) / span) as u32;
    (1..=n)
        .map(|seq| SyncJobSlice {
            seq,
            since_ms: if seq == 1 {
                since_ms
            } else {
                Some(lower + span * (seq as i64 - 1))
            },
            until_ms: if seq == n {
                until_ms
            } else {
                Some(lower + span * seq as i64)
            },
            status: SliceStatus::Pending,
            attempts: 0,
            counts: SyncCounts::default(),
            counts_before: SyncCounts::default(),
            error: None,
            started_at_ms: None,
            finished_at_ms: None,
        })
        .collect()
}

/// The slice to carry out next: the first that has not succeeded.
pub fn current_slice(slices: &[SyncJobSlice]) -> Option<&SyncJobSlice> {
    slices.iter().find(|s| s.status != SliceStatus::Succeeded)
}

/// `slices` with slice `seq` moved to `to` (pure): running records when its attempt started and
/// the job's counts then; an end records its counts (the job's `job_counts` less those at its
/// start), the error and the time. Refused, with the reason, when the move is illegal.
pub fn slice_moved(
    slices: &[SyncJobSlice],
    seq: u32,
    to: SliceStatus,
    job_counts: &SyncCounts,
    error: Option<&str>,
    now_ms: i64,
) -> std::result::Result<Vec<SyncJobSlice>, String> {
    let mut out = slices.to_vec();
    let Some(s) = out.iter_mut().find(|s| s.seq == seq) else {
        return Err(format!("the job has no slice {seq}"));
    };
    if !s.status.can_become(to) {
        return Err(format!(
            "slice {seq} is {} and cannot become {}",
            s.status.as_str(),
            to.as_str()
        ));
    }
    if s.status == to {
        return Ok(out);
    }
    match to {
        SliceStatus::Running => {
            s.attempts += 1;
            s.counts_before = *job_counts;
            s.counts = SyncCounts::default();
            s.started_at_ms = Some(now_ms);
            s.finished_at_ms = None;
            s.error = None;
        }
        SliceStatus::Pending => {}
        _ => {
            if s.status == SliceStatus::Running {
                s.counts = job_counts.since(&s.counts_before);
            }
            s.finished_at_ms = Some(now_ms);
            s.error = error.map(str::to_string);
        }
    }
    s.status = to;
    Ok(out)
}

/// Checks that a stored job's slices may be replaced by `new`: the same slices (a plan is made
/// once, when there is none), each moving only as [`SliceStatus::can_become`] allows.
pub fn check_slices(
    id: i64,
    old: &[SyncJobSlice],
    new: &[SyncJobSlice],
) -> std::result::Result<(), String> {
    if old.is_empty() {
        return Ok(());
    }
    if old.len() != new.len() {
        return Err(format!(
            "sync job {id} has {} slices; a plan of {} cannot replace them",
            old.len(),
            new.len()
        ));
    }
    for (o, n) in old.iter().zip(new) {
        if (o.seq, o.since_ms, o.until_ms) != (n.seq, n.since_ms, n.until_ms) {
            return Err(format!(
                "sync job {id}: slice {} covers another window than the stored one",
                o.seq
            ));
        }
        if !o.status.can_become(n.status) {
            return Err(format!(
                "sync job {id}: slice {} is {} and cannot become {}",
                o.seq,
                o.status.as_str(),
                n.status.as_str()
            ));
        }
    }
    Ok(())
}

/// Stored `slices` (JSON array text; NULL is none).
pub(crate) fn slices_json(s: &[SyncJobSlice]) -> Option<String> {
    (!s.is_empty()).then(|| serde_json::to_string(s).expect("slices serialise"))
}

/// Reads stored `slices`.
pub(crate) fn parse_slices(
    id: i64,
    text: Option<&str>,
) -> std::result::Result<Vec<SyncJobSlice>, String> {
    match text {
        None => Ok(Vec::new()),
        Some(t) => {
            serde_json::from_str(t).map_err(|e| format!("sync job {id} has unreadable slices: {e}"))
        }
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
    /// A large backfill or re-sync, carried out slice by slice (empty: in one piece).
    pub slices: Vec<SyncJobSlice>,
}

/// The job's row as a retry leaves it (pure): pending, the attempt count raised, the earlier
/// attempt's outcome appended to `previous_attempts`, and everything of the attempt itself
/// cleared — run, Bulk job, page position, totals, counts, times, error and report — so the new
/// attempt starts from the beginning (re-applying what the last one committed is harmless: the
/// apply path skips rows that are not newer). The watermark and re-read point stay: they only
/// ever move as far as committed rows allow. Slices that succeeded stay done (they are not read
/// again); the others are pending again. Refused (with the reason) unless it failed or was
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
    for s in &mut next.slices {
        if s.status != SliceStatus::Succeeded {
            s.status = SliceStatus::Pending;
        }
    }
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

#[cfg(test)]
mod slice_tests {
    use super::*;

    #[test]
    fn windows_are_planned_contiguous_and_bounded() {
        // Fits one slice: none.
        assert!(plan_slices(Some(0), Some(1_000), None, 5_000, 1_000, 10).is_empty());
        assert!(
            plan_slices(None, None, None, 5_000, 1_000, 10).is_empty(),
            "no records"
        );
        let s = plan_slices(None, None, Some(1_000), 3_500, 1_000, 10);
        let w: Vec<_> = s.iter().map(|s| (s.seq, s.since_ms, s.until_ms)).collect();
        assert_eq!(
            w,
            vec![
                (1, None, Some(2_000)),
                (2, Some(2_000), Some(3_000)),
                (3, Some(3_000), None)
            ]
        );
        let s = plan_slices(Some(0), Some(10_000), None, 0, 10, 4);
        assert_eq!(s.len(), 4, "the span widens to the cap");
        assert_eq!((s[0].since_ms, s[3].until_ms), (Some(0), Some(10_000)));
        assert!(s.iter().all(|s| s.status == SliceStatus::Pending));
    }

    #[test]
    fn slices_move_only_along_legal_transitions() {
        let plan = plan_slices(Some(0), Some(3_000), None, 0, 1_000, 10);
        let c = |read| SyncCounts {
            read,
            ..Default::default()
        };
        let s = slice_moved(&plan, 1, SliceStatus::Running, &c(5), None, 10).unwrap();
        assert_eq!((s[0].attempts, s[0].counts_before.read), (1, 5));
        let s = slice_moved(&s, 1, SliceStatus::Succeeded, &c(305), None, 20).unwrap();
        assert_eq!((s[0].counts.read, s[0].finished_at_ms), (300, Some(20)));
        for to in [
            SliceStatus::Running,
            SliceStatus::Pending,
            SliceStatus::Failed,
        ] {
            let e = slice_moved(&s, 1, to, &c(0), None, 30).unwrap_err();
            assert!(e.contains("slice 1 is succeeded"), "{e}");
        }
        assert!(slice_moved(&s, 9, SliceStatus::Running, &c(0), None, 30).is_err());
        let e = slice_moved(&s, 2, SliceStatus::Succeeded, &c(0), None, 30).unwrap_err();
        assert!(e.contains("pending and cannot become succeeded"), "{e}");
        let f = slice_moved(&s, 2, SliceStatus::Running, &c(305), None, 30).unwrap();
        let f = slice_moved(
            &f,
            2,
            SliceStatus::Failed,
            &c(310),
            Some("QUERY_TIMEOUT"),
            40,
        )
        .unwrap();
        assert_eq!(f[1].error.as_deref(), Some("QUERY_TIMEOUT"));
        let e = check_slices(7, &s, &f).unwrap_err();
        assert!(
            e.contains("slice 2 is pending and cannot become failed"),
            "{e}"
        );
        let running = slice_moved(&s, 2, SliceStatus::Running, &c(305), None, 30).unwrap();
        assert!(check_slices(7, &s, &running).is_ok() && check_slices(7, &running, &f).is_ok());
        let e = check_slices(7, &f, &plan).unwrap_err();
        assert!(
            e.contains("slice 1 is succeeded and cannot become pending"),
            "{e}"
        );
        let e = check_slices(7, &f, &plan[..2]).unwrap_err();
        assert!(e.contains("has 3 slices"), "{e}");

        // A retry keeps the finished slice and makes the others pending.
        let job = SyncJob {
            id: 7,
            kind: SyncJobKind::Backfill,
            object: "Account".into(),
            reason: "r".into(),
            status: SyncJobStatus::Failed,
            since_ms: None,
            until_ms: None,
            params: "{}".into(),
            requested_by: "t".into(),
            resync_id: None,
            run_id: None,
            bulk_job_id: None,
            locator: None,
            page_rows_done: 0,
            rows_total: None,
            counts: c(310),
            requested_at_ms: 0,
            started_at_ms: None,
            finished_at_ms: None,
            error: None,
            report: None,
            watermark_ms: None,
            reread_from_ms: None,
            attempts: 1,
            previous_attempts: Vec::new(),
            slices: f.clone(),
        };
        let next = retried(&job, "op", 50).unwrap();
        let st: Vec<_> = next.slices.iter().map(|s| s.status).collect();
        assert_eq!(
            st,
            vec![
                SliceStatus::Succeeded,
                SliceStatus::Pending,
                SliceStatus::Pending
            ]
        );
        assert_eq!(next.slices[0], f[0]);
        assert!(check_slices(7, &f, &next.slices).is_ok());
    }
}
