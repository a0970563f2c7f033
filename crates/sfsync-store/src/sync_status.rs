//! The consumer freshness contract: one row per configured object in `sync_status_state`,
//! written by the running `sfsync run` every few seconds, and the `sync_status` view over it
//! that dashboards and downstream jobs read or gate on.
//!
//! Guarantee: the view computes `lag_seconds` and `status` with the *database's* clock when it
//! is read, so a stopped or dead sfsync shows `delayed` once `current_as_of` is older than the
//! object's threshold — no live process is needed to say so. `status` is `partial` while any
//! repair, re-sync or backfill of the object is open or the last reconciliation found drift
//! that is not repaired yet; else `delayed` when `current_as_of` is unknown or older than
//! `delayed_after_secs`; else `current`. `status_reason` says why in words.
//!
//! Timestamps are stored like the curated tables' `_sf_*` sync metadata: RFC 3339 text in UTC
//! with milliseconds on SQLite (`2026-11-21T09:30:00.000Z`), `timestamptz` on Postgres.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Result;

/// An object's freshness as the `sync_status` view reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FreshnessStatus {
    /// Every change received for the object was applied within its threshold, and nothing is
    /// known to be missing.
    Current,
    /// The warehouse is not known to be current within the threshold (sfsync behind, stopped or
    /// dead, or the object's stream down).
    Delayed,
    /// Records are known to be missing or stale: open repairs, re-syncs, a backfill, or drift the
    /// last reconciliation found that is not repaired yet.
    Partial,
}

impl FreshnessStatus {
    pub const ALL: [FreshnessStatus; 3] = [
        FreshnessStatus::Current,
        FreshnessStatus::Delayed,
        FreshnessStatus::Partial,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FreshnessStatus::Current => "current",
            FreshnessStatus::Delayed => "delayed",
            FreshnessStatus::Partial => "partial",
        }
    }

    pub fn parse(s: &str) -> Option<FreshnessStatus> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The status of a set of objects: `partial` if any is, else `delayed` if any is (or there
    /// is none to speak for), else `current`.
    pub fn overall(statuses: impl IntoIterator<Item = FreshnessStatus>) -> FreshnessStatus {
        let mut any = false;
        let mut worst = FreshnessStatus::Current;
        for s in statuses {
            any = true;
            worst = worst.max(s);
        }
        if any {
            worst
        } else {
            FreshnessStatus::Delayed
        }
    }
}

/// The outcome of an object's last finished reconciliation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconcileResult {
    /// Nothing differed.
    InSync,
    /// Records differed and their re-reads are still open.
    Drift,
    /// Records differed and every re-read it asked for is done.
    Repaired,
    /// The reconciliation failed (nothing was compared or repaired).
    Failed,
}

impl ReconcileResult {
    pub const ALL: [ReconcileResult; 4] = [
        ReconcileResult::InSync,
        ReconcileResult::Drift,
        ReconcileResult::Repaired,
        ReconcileResult::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReconcileResult::InSync => "in_sync",
            ReconcileResult::Drift => "drift",
            ReconcileResult::Repaired => "repaired",
            ReconcileResult::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<ReconcileResult> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One object's row of `sync_status_state`: the facts sfsync records (times in epoch ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatusState {
    pub object: String,
    /// Salesforce commit time of the newest applied change of the object.
    pub last_commit_ms: Option<i64>,
    /// When a change of the object was last applied.
    pub last_applied_ms: Option<i64>,
    /// The newest time at which every change received for the object had been applied (it
    /// advances while the pipeline is caught up, also when the object is idle).
    pub current_as_of_ms: Option<i64>,
    /// Record re-reads (gap events, unknown records, reconciliation drift) not done yet.
    pub open_repairs: u64,
    /// Windowed re-syncs (GAP_OVERFLOW, a rejected replay id) requested, running, or failed and
    /// not followed by a successful re-sync or backfill.
    pub open_resyncs: u64,
    /// A backfill of the object is pending or running.
    pub backfill_running: bool,
    /// When the last reconciliation finished.
    pub last_reconcile_ms: Option<i64>,
    pub last_reconcile_result: Option<ReconcileResult>,
    /// Its counts (`3 missing, 0 extra, 1 stale`) or error.
    pub last_reconcile_detail: Option<String>,
    /// `delayed` once `current_as_of` is older than this.
    pub delayed_after_secs: u64,
    /// When sfsync wrote this row.
    pub updated_ms: i64,
}

/// One row of the `sync_status` view: the stored facts and what the database computed from
/// them when it was read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncStatus {
    #[serde(flatten)]
    pub state: SyncStatusState,
    /// Now (the database's clock) minus `current_as_of`, in seconds; `None` when unknown.
    pub lag_seconds: Option<f64>,
    pub status: FreshnessStatus,
    pub status_reason: String,
}

/// An object's last finished reconciliation as stored (see [`OpenWork`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastReconcile {
    pub job_id: i64,
    /// `true`: it succeeded (its report says what differed); `false`: it failed.
    pub succeeded: bool,
    pub finished_at_ms: Option<i64>,
    /// The job's report (JSON), as written by reconciliation.
    pub report: Option<String>,
    pub error: Option<String>,
    /// Re-reads the job asked for (repair requests with event key `job/<id>`) not done yet.
    pub repairs_pending: u64,
}

/// What is open for one object, counted in the store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpenWork {
    /// Pending repair requests (re-reads of records), of any cause.
    pub repairs: u64,
    /// Re-sync requests not yet scheduled, re-sync jobs pending or running, and failed re-sync
    /// jobs with no successful re-sync or backfill of the object after them.
    pub resyncs: u64,
    /// Backfill jobs pending or running.
    pub backfills: u64,
    /// The newest finished (succeeded or failed) reconciliation.
    pub last_reconcile: Option<LastReconcile>,
}

/// Pending repairs per object.
pub(crate) const OPEN_REPAIRS_SQL: &str = "SELECT object, COUNT(*) FROM repair_requests \
     WHERE status = 'pending' GROUP BY object";

/// Pending repairs per requesting sync job (`job/<id>` event keys).
pub(crate) const JOB_REPAIRS_SQL: &str = "SELECT event_key, COUNT(*) FROM repair_requests \
     WHERE status = 'pending' AND event_key LIKE 'job/%' GROUP BY event_key";

/// Re-sync requests not yet turned into jobs, per object.
pub(crate) const OPEN_RESYNC_REQUESTS_SQL: &str = "SELECT object, COUNT(*) FROM resync_requests \
     WHERE status = 'pending' AND object <> '' GROUP BY object";

/// Open backfill and re-sync jobs per object and kind; a failed re-sync stays open until a later
/// re-sync or backfill of the object succeeds.
pub(crate) const OPEN_JOBS_SQL: &str = "SELECT object, kind, COUNT(*) FROM sync_jobs j \
     WHERE (kind IN ('backfill', 'resync') AND status IN ('pending', 'running')) \
        OR (kind = 'resync' AND status = 'failed' AND NOT EXISTS (SELECT 1 FROM sync_jobs k \
            WHERE k.object = j.object AND k.kind IN ('backfill', 'resync') \
            AND k.status = 'succeeded' AND k.id > j.id)) \
     GROUP BY object, kind";

/// The newest finished reconciliation of each object.
pub(crate) const LAST_RECONCILE_SQL: &str = "SELECT id, object, status, finished_at_ms, report, \
     error FROM sync_jobs j WHERE kind = 'reconcile' AND status IN ('succeeded', 'failed') \
     AND NOT EXISTS (SELECT 1 FROM sync_jobs k WHERE k.kind = 'reconcile' \
        AND k.object = j.object AND k.status IN ('succeeded', 'failed') AND k.id > j.id)";

/// One row of [`LAST_RECONCILE_SQL`].
pub(crate) struct ReconcileRow {
    pub id: i64,
    pub object: String,
    pub status: String,
    pub finished_at_ms: Option<i64>,
    pub report: Option<String>,
    pub error: Option<String>,
}

/// Folds the rows of the open-work queries into one [`OpenWork`] per object (objects with
/// nothing open and no reconciliation are absent).
pub(crate) fn fold_open_work(
    repairs: Vec<(String, i64)>,
    job_repairs: Vec<(String, i64)>,
    resync_requests: Vec<(String, i64)>,
    jobs: Vec<(String, String, i64)>,
    reconciles: Vec<ReconcileRow>,
) -> BTreeMap<String, OpenWork> {
    let n = |v: i64| v.max(0) as u64;
    let mut out: BTreeMap<String, OpenWork> = BTreeMap::new();
    for (object, c) in repairs {
        out.entry(object).or_default().repairs += n(c);
    }
    for (object, c) in resync_requests {
        out.entry(object).or_default().resyncs += n(c);
    }
    for (object, kind, c) in jobs {
        let w = out.entry(object).or_default();
        match kind.as_str() {
            "backfill" => w.backfills += n(c),
            _ => w.resyncs += n(c),
        }
    }
    let by_job: BTreeMap<i64, u64> = job_repairs
        .into_iter()
        .filter_map(|(key, c)| {
            key.strip_prefix("job/")
                .and_then(|id| id.parse().ok())
                .map(|id| (id, n(c)))
        })
        .collect();
    for r in reconciles {
        out.entry(r.object).or_default().last_reconcile = Some(LastReconcile {
            job_id: r.id,
            succeeded: r.status == "succeeded",
            finished_at_ms: r.finished_at_ms,
            report: r.report,
            error: r.error,
            repairs_pending: by_job.get(&r.id).copied().unwrap_or(0),
        });
    }
    out
}

/// The columns of the `sync_status` view, in the order the backends read them.
pub(crate) const VIEW_COLUMNS: &str = "object, last_commit_at, last_applied_at, current_as_of, \
     open_repairs, open_resyncs, backfill_running, last_reconcile_at, last_reconcile_result, \
     last_reconcile_detail, delayed_after_secs, updated_at, lag_seconds, status, status_reason";

/// Checks what a backend is asked to store: object names non-empty and unique, thresholds > 0.
pub(crate) fn check_states(states: &[SyncStatusState]) -> std::result::Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for s in states {
        if s.object.is_empty() {
            return Err("an object name is empty".into());
        }
        if !seen.insert(s.object.as_str()) {
            return Err(format!("object {} is listed twice", s.object));
        }
        if s.delayed_after_secs == 0 {
            return Err(format!("object {}: delayed_after_secs is 0", s.object));
        }
    }
    Ok(())
}

/// Reading and writing the freshness contract.
///
/// Contracts: [`SyncStatusStore::put_sync_status`] is one transaction — readers of the view see
/// the previous rows or the new ones, never a mix; it is idempotent. Reads never write.
#[async_trait]
pub trait SyncStatusStore: Send + Sync {
    /// What is open per object (repairs, re-syncs, backfills) and the last reconciliation,
    /// counted in the database in one read per figure.
    async fn open_work(&self) -> Result<BTreeMap<String, OpenWork>>;

    /// Makes `sync_status_state` hold exactly `states`: each row upserted by object, rows of
    /// objects not in `states` (no longer configured) deleted — in one transaction. Names must
    /// be non-empty and unique and thresholds > 0; otherwise nothing is written and the error
    /// names the object.
    async fn put_sync_status(&self, states: &[SyncStatusState]) -> Result<()>;

    /// Rows of the `sync_status` view ordered by object (only `object`'s when given), with lag
    /// and status computed by the database's clock now.
    async fn sync_status(&self, object: Option<&str>) -> Result<Vec<SyncStatus>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overall_status_is_the_worst() {
        use FreshnessStatus::*;
        assert_eq!(FreshnessStatus::overall([Current, Current]), Current);
        assert_eq!(FreshnessStatus::overall([Current, Delayed]), Delayed);
        assert_eq!(FreshnessStatus::overall([Partial, Delayed]), Partial);
        assert_eq!(FreshnessStatus::overall([]), Delayed);
        for s in FreshnessStatus::ALL {
            assert_eq!(FreshnessStatus::parse(s.as_str()), Some(s));
        }
        for r in ReconcileResult::ALL {
            assert_eq!(ReconcileResult::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn open_work_folds_by_object_and_matches_reconcile_repairs() {
        let w = fold_open_work(
            vec![("Case".into(), 3), ("Account".into(), 1)],
            vec![
                ("job/7".into(), 2),
                ("job/x".into(), 5),
                ("job/8".into(), 1),
            ],
            vec![("Case".into(), 1)],
            vec![
                ("Case".into(), "resync".into(), 1),
                ("Lead".into(), "backfill".into(), 1),
            ],
            vec![
                ReconcileRow {
                    id: 7,
                    object: "Case".into(),
                    status: "succeeded".into(),
                    finished_at_ms: Some(5),
                    report: Some("{}".into()),
                    error: None,
                },
                ReconcileRow {
                    id: 9,
                    object: "Contact".into(),
                    status: "failed".into(),
                    finished_at_ms: Some(6),
                    report: None,
                    error: Some("boom".into()),
                },
            ],
        );
        assert_eq!(w["Case"].repairs, 3);
        assert_eq!(w["Case"].resyncs, 2);
        assert_eq!(w["Case"].backfills, 0);
        let rc = w["Case"].last_reconcile.as_ref().unwrap();
        assert!(rc.succeeded);
        assert_eq!(rc.repairs_pending, 2);
        assert_eq!(w["Lead"].backfills, 1);
        assert_eq!(w["Account"].repairs, 1);
        let failed = w["Contact"].last_reconcile.as_ref().unwrap();
        assert!(!failed.succeeded);
        assert_eq!(failed.repairs_pending, 0);
        assert_eq!(failed.error.as_deref(), Some("boom"));
    }

    #[test]
    fn states_are_checked() {
        let s = |o: &str, secs| SyncStatusState {
            object: o.into(),
            last_commit_ms: None,
            last_applied_ms: None,
            current_as_of_ms: None,
            open_repairs: 0,
            open_resyncs: 0,
            backfill_running: false,
            last_reconcile_ms: None,
            last_reconcile_result: None,
            last_reconcile_detail: None,
            delayed_after_secs: secs,
            updated_ms: 0,
        };
        assert!(check_states(&[s("Case", 120), s("Account", 60)]).is_ok());
        assert!(check_states(&[s("Case", 120), s("Case", 60)])
            .unwrap_err()
            .contains("Case is listed twice"));
        assert!(check_states(&[s("", 120)]).is_err());
        assert!(check_states(&[s("Case", 0)])
            .unwrap_err()
            .contains("delayed_after_secs is 0"));
    }
}
