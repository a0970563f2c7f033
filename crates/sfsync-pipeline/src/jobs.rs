//! Sync jobs carried out by the apply process: backfills and re-syncs through Bulk API 2.0 query
//! jobs, and reconciliations (see [`crate::reconcile`]).
//!
//! The apply process is the only writer, so a job runs inside it, in steps between streamed
//! batches: a fetch task creates the Bulk job, waits for it and reads its result pages ahead
//! (bounded), and each step applies one batch of rows through the same planner as streamed
//! changes — gated by the same data-quality rules, versioned by SystemModstamp so a snapshot row
//! never overwrites a newer streamed change (the hand-off has no hole: rows the snapshot missed
//! arrive through the stream, and streamed changes the snapshot already holds are applied again
//! as no-ops). The page position (Bulk job id, locator, rows of the page done) and the counts
//! commit with the rows, so a crash resumes at the committed row without re-reading finished
//! pages. Each job is a run in the `runs` table with its counts and reason.
//!
//! Formula refreshes (objects configured with formula fields; change events never carry them)
//! are scheduled jobs of the same shape: one Bulk query of `Id, SystemModstamp` and the formula
//! fields for the records modified at or after the previous refresh's watermark (less
//! [`FORMULA_OVERLAP_MS`] for commit skew), applied to the formula columns of existing rows only.
//! The watermark (highest SystemModstamp read) and the re-read point (records the stream has not
//! brought yet) commit with the rows, so the next refresh starts exactly where the last
//! committed one left off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sfsync_salesforce::bulk::csv::CsvRecordBatch;
use sfsync_salesforce::bulk::{Bulk, JobState, QueryJobRequest, QueryResultsOptions};
use sfsync_store::{
    NewSyncJob, SyncCounts, SyncJob, SyncJobKind, SyncJobPatch, SyncJobStatus, Warehouse,
};
use tokio::sync::mpsc;

use crate::error::{chain, Result};
use crate::model::ObjectMapping;

/// Locator recorded after the last page is done (Salesforce's own "no more pages" value).
pub const LAST_PAGE_DONE: &str = "null";

/// Settings of the job runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsConfig {
    /// Objects whose curated table is created by this start are backfilled.
    pub backfill_new_objects: bool,
    /// `maxRecords` per result page.
    pub page_records: u64,
    /// How often open jobs are looked for (also how soon a CLI request is picked up).
    pub poll: Duration,
    /// Scheduled reconciliation of every object (none when `None`).
    pub reconcile_every: Option<Duration>,
    /// How often the formula fields of objects configured with them are refreshed (none are
    /// scheduled when `None`; jobs already requested still run).
    pub formula_refresh_every: Option<Duration>,
    /// A backfill or re-sync whose window (SystemModstamp) spans more than this is carried out
    /// in slices of this span, each with its own Bulk query and state (none: in one piece).
    pub slice_span: Option<Duration>,
}

/// Most slices of one job (the span widens to fit).
pub const MAX_SLICES: usize = 1_000;

/// Default span of a slice: 30 days of SystemModstamp.
pub const DEFAULT_SLICE_SPAN: Duration = Duration::from_secs(30 * 24 * 3600);

/// Default interval of formula refreshes.
pub const DEFAULT_FORMULA_REFRESH: Duration = Duration::from_secs(300);

/// A formula refresh starts this long before the previous one's watermark: a transaction's
/// SystemModstamp is taken before it commits, so a record can become visible with a
/// SystemModstamp a little older than rows an earlier query already returned.
pub const FORMULA_OVERLAP_MS: i64 = 60_000;

/// A record a formula refresh reads but does not find in the warehouse, modified within this
/// long before the refresh applies it, is taken to be on its way through the stream: the next
/// refresh reads it again (by then its row exists). One missing for longer is drift, which
/// reconciliation finds and repairs (its re-read brings the formula fields too).
pub const FORMULA_MISSING_HORIZON_MS: i64 = 3_600_000;

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            backfill_new_objects: true,
            page_records: 100_000,
            poll: Duration::from_secs(1),
            reconcile_every: None,
            formula_refresh_every: Some(DEFAULT_FORMULA_REFRESH),
            slice_span: Some(DEFAULT_SLICE_SPAN),
        }
    }
}

/// The SOQL of a formula refresh: `Id`, `SystemModstamp` and the formula fields of the records
/// modified at or after `since_ms` (all records when `None`).
pub fn formula_soql(mapping: &ObjectMapping, since_ms: Option<i64>) -> String {
    let mut fields = vec!["Id".to_string(), "SystemModstamp".to_string()];
    fields.extend(mapping.formula_fields());
    let mut soql = format!("SELECT {} FROM {}", fields.join(", "), mapping.object());
    if let Some(s) = since_ms {
        soql.push_str(&format!(" WHERE SystemModstamp >= {}", soql_datetime(s)));
    }
    soql
}

/// The parameters a formula refresh is requested with (`params` of its job).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FormulaParams {
    /// The formula fields it reads.
    pub fields: Vec<String>,
    /// The point it continues from (the previous refresh's; `None`: a full read).
    pub watermark_from_ms: Option<i64>,
}

impl FormulaParams {
    /// The params of a stored job (empty ones if they do not parse).
    pub fn of(job: &SyncJob) -> FormulaParams {
        serde_json::from_str(&job.params).unwrap_or_default()
    }
}

/// Where the refresh after `job` (a succeeded formula refresh) continues from: the highest
/// SystemModstamp it or its predecessors read, but no later than a record it must read again.
/// `None` when it read nothing and had no predecessor.
pub fn formula_resume_point(job: &SyncJob) -> Option<i64> {
    let p = FormulaParams::of(job);
    let seen = match (job.watermark_ms, p.watermark_from_ms) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    match (seen, job.reread_from_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The next formula refresh of `mapping`'s object: incremental from the last succeeded
/// refresh's resume point when it read every formula field configured now; a full read
/// otherwise (the first refresh, or formula fields added to the config, whose columns are
/// empty on the rows already there).
pub async fn next_formula_refresh(
    store: &dyn Warehouse,
    mapping: &ObjectMapping,
    requested_by: &str,
) -> Result<NewSyncJob> {
    let fields = mapping.formula_fields();
    let last = store
        .sync_jobs(&sfsync_store::SyncJobFilter {
            statuses: vec![SyncJobStatus::Succeeded],
            kind: Some(SyncJobKind::FormulaRefresh),
            object: Some(mapping.object().to_string()),
            newest_first: true,
            limit: 1,
        })
        .await?;
    let from = last.first().and_then(|j| {
        let read = FormulaParams::of(j).fields;
        let covers = fields
            .iter()
            .all(|f| read.iter().any(|r| r.eq_ignore_ascii_case(f)));
        if covers {
            formula_resume_point(j)
        } else {
            None
        }
    });
    let reason = match (from, last.is_empty()) {
        (Some(_), _) => "scheduled".to_string(),
        (None, true) => "scheduled: first refresh (all records)".to_string(),
        (None, false) => "scheduled: formula fields changed (all records)".to_string(),
    };
    let params = FormulaParams {
        fields,
        watermark_from_ms: from,
    };
    Ok(NewSyncJob {
        kind: SyncJobKind::FormulaRefresh,
        object: mapping.object().to_string(),
        reason,
        since_ms: from.map(|w| w - FORMULA_OVERLAP_MS),
        until_ms: None,
        params: serde_json::to_string(&params).unwrap_or_else(|_| "{}".into()),
        requested_by: requested_by.to_string(),
        resync_id: None,
    })
}

/// The SOQL of a backfill or re-sync: every mapped field, SystemModstamp and IsDeleted,
/// within the job's SystemModstamp window.
pub fn snapshot_soql(
    mapping: &ObjectMapping,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
) -> String {
    let mut fields: Vec<&str> = mapping.soql_fields.iter().map(String::as_str).collect();
    for extra in ["SystemModstamp", "IsDeleted"] {
        if !fields.iter().any(|f| f.eq_ignore_ascii_case(extra)) {
            fields.push(extra);
        }
    }
    let mut soql = format!("SELECT {} FROM {}", fields.join(", "), mapping.object());
    let mut conds = Vec::new();
    if let Some(s) = since_ms {
        conds.push(format!("SystemModstamp >= {}", soql_datetime(s)));
    }
    if let Some(u) = until_ms {
        conds.push(format!("SystemModstamp < {}", soql_datetime(u)));
    }
    if !conds.is_empty() {
        soql.push_str(" WHERE ");
        soql.push_str(&conds.join(" AND "));
    }
    soql
}

/// A SOQL datetime literal (UTC, milliseconds).
pub fn soql_datetime(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// What the fetch task hands the apply stage.
pub(crate) enum Fetched {
    /// Rows the Bulk job returned in all.
    Total(i64),
    /// A batch of rows: apply `rows[skip..]`; afterwards the job stands at `position`.
    Rows {
        header: Arc<Vec<String>>,
        rows: CsvRecordBatch,
        skip: usize,
        position: (Option<String>, i64),
        api_calls: i64,
    },
    /// Every page is read.
    Done { api_calls: i64 },
    /// A reconciliation's comparison is complete.
    Reconciled(Box<crate::reconcile::ReconcileOutcome>),
    /// An archive or retention job is done: its report (JSON) and counts.
    Maintained { report: String, counts: SyncCounts },
    /// The fetch failed. `permanent`: retrying cannot help (the job fails with the error).
    Failed { error: String, permanent: bool },
}

/// One running job in the apply process.
pub(crate) struct Active {
    pub job: SyncJob,
    pub run_id: String,
    pub rx: mpsc::Receiver<Fetched>,
    /// The fetch (or comparison) task; none for a replay from the raw log, which the apply
    /// stage carries out itself.
    pub task: Option<tokio::task::JoinHandle<()>>,
    pub columns: Option<(Arc<Vec<String>>, crate::normalize::CsvColumns)>,
    /// Counts of this session (the stored ones include earlier sessions).
    pub counts: SyncCounts,
    pub started: Instant,
    /// A replay from the raw log: its selection and position.
    pub replay: Option<Box<crate::replay::ReplayRun>>,
}

impl Active {
    /// A job just started, its work done by `task` (reporting on `rx`).
    pub fn new(
        job: SyncJob,
        run_id: String,
        rx: mpsc::Receiver<Fetched>,
        task: Option<tokio::task::JoinHandle<()>>,
    ) -> Active {
        Active {
            job,
            run_id,
            rx,
            task,
            columns: None,
            counts: SyncCounts::default(),
            started: Instant::now(),
            replay: None,
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// The job runner's state inside the applier.
#[derive(Default)]
pub(crate) struct JobRunner {
    pub active: Option<Active>,
    pub last_poll: Option<Instant>,
    /// After a transient failure, the job is taken again from this time on.
    pub retry_at: Option<Instant>,
    pub failures: u32,
    pub last_reconcile: Option<Instant>,
    pub last_formula_refresh: Option<Instant>,
    /// When archive and retention jobs were last scheduled (the first ones one interval after
    /// the start).
    pub last_archive: Option<Instant>,
    pub last_retention: Option<Instant>,
}

impl JobRunner {
    pub fn poll_due(&self, every: Duration) -> bool {
        let now = Instant::now();
        if self.retry_at.is_some_and(|t| now < t) {
            return false;
        }
        self.last_poll
            .is_none_or(|t| now.duration_since(t) >= every)
    }

    /// Backoff after the `failures`-th consecutive transient failure: 1 s doubling to 60 s.
    pub fn backoff(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let secs = 1u64 << self.failures.min(6);
        self.retry_at = Some(Instant::now() + Duration::from_secs(secs.min(60)));
    }
}

/// A run id for a job.
pub(crate) fn job_run_id(job: &SyncJob) -> String {
    let short = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}-{}", job.kind.as_str(), job.id, &short[..8])
}

/// The fetch task's side of its channel: each message handed over also wakes the apply loop
/// (`wake`), which otherwise would find the next batch only after its idle wait.
pub(crate) struct FetchSender {
    tx: mpsc::Sender<Fetched>,
    wake: Option<Arc<tokio::sync::Notify>>,
}

impl FetchSender {
    async fn send(&self, msg: Fetched) -> std::result::Result<(), mpsc::error::SendError<Fetched>> {
        self.tx.send(msg).await?;
        if let Some(w) = &self.wake {
            w.notify_one();
        }
        Ok(())
    }
}

/// Starts the fetch task of a backfill or re-sync. `wake` is notified whenever it hands over a
/// message.
pub(crate) fn spawn_fetch(
    bulk: Bulk,
    store: Arc<dyn Warehouse>,
    job: SyncJob,
    soql: String,
    page_records: u64,
    wake: Option<Arc<tokio::sync::Notify>>,
) -> (mpsc::Receiver<Fetched>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4);
    let tx = FetchSender { tx, wake };
    let task = tokio::spawn(async move {
        let out = fetch(&bulk, &*store, &job, &soql, page_records, &tx).await;
        if let Err((error, permanent)) = out {
            let _ = tx.send(Fetched::Failed { error, permanent }).await;
        }
    });
    (rx, task)
}

type FetchError = (String, bool);

fn transient(e: impl std::fmt::Display) -> FetchError {
    (e.to_string(), false)
}

pub(crate) fn sf_error(what: &str, e: &sfsync_salesforce::SalesforceError) -> FetchError {
    // 4xx other than 429/401 (bad SOQL, unknown object or field) cannot be fixed by retrying.
    let permanent = matches!(e.status(), Some(s) if (400..500).contains(&s) && s != 429 && s != 401 && s != 404);
    (format!("{what}: {}", e.report()), permanent)
}

async fn fetch(
    bulk: &Bulk,
    store: &dyn Warehouse,
    job: &SyncJob,
    soql: &str,
    page_records: u64,
    tx: &FetchSender,
) -> std::result::Result<(), FetchError> {
    let mut calls = 0i64;
    let mut bulk_id = job.bulk_job_id.clone();
    let mut position = (job.locator.clone(), job.page_rows_done);
    if position.0.as_deref() == Some(LAST_PAGE_DONE) {
        let _ = tx.send(Fetched::Done { api_calls: 0 }).await;
        return Ok(());
    }
    let mut recreated = false;
    let info = loop {
        let id = match &bulk_id {
            Some(id) => id.clone(),
            None => {
                let full_load = job.kind == SyncJobKind::Backfill && job.since_ms.is_none();
                // A formula refresh reads live records only (deleted ones have no formulas
                // worth refreshing; their undelete changes SystemModstamp).
                let req = if full_load || job.kind == SyncJobKind::FormulaRefresh {
                    QueryJobRequest::new(soql)
                } else {
                    // A window: deletes in it matter (queryAll returns the recycle bin too).
                    QueryJobRequest::query_all(soql)
                };
                calls += 1;
                let created = bulk
                    .create_query_job(&req)
                    .await
                    .map_err(|e| sf_error(&format!("creating the Bulk query job ({soql})"), &e))?;
                let patch = SyncJobPatch {
                    bulk_job_id: Some(Some(created.id.clone())),
                    position: Some((None, 0)),
                    counts: SyncCounts {
                        api_calls: std::mem::take(&mut calls),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                store
                    .patch_sync_job(job.id, &patch)
                    .await
                    .map_err(|e| transient(chain(&e)))?;
                position = (None, 0);
                created.id
            }
        };
        match wait(bulk, &id, &mut calls).await {
            Ok(info) => break info,
            Err(e) if e.status() == Some(404) && !recreated => {
                // The Bulk job is gone (results are kept 7 days): a new one, from page one.
                tracing::warn!(job = job.id, bulk_job = %id, "Bulk job no longer exists; creating a new one.");
                recreated = true;
                bulk_id = None;
            }
            Err(e) => return Err(sf_error(&format!("Bulk query job {id}"), &e)),
        }
    };
    if info.state != JobState::JobComplete {
        return Err((
            format!(
                "Bulk query job {} ended {}: {}",
                info.id,
                info.state.as_str(),
                info.error_message.as_deref().unwrap_or("no message")
            ),
            true,
        ));
    }
    tracing::info!(
        job = job.id,
        bulk_job = %info.id,
        records = info.number_records_processed,
        processing_ms = info.total_processing_time,
        "Bulk query job complete; reading its results."
    );
    if tx
        .send(Fetched::Total(info.number_records_processed as i64))
        .await
        .is_err()
    {
        return Ok(());
    }
    let id = info.id.clone();
    calls += 1;
    let mut stream = bulk
        .query_results(
            &id,
            info.delimiter_byte(),
            QueryResultsOptions {
                max_records: Some(page_records.max(1)),
                locator: position.0.clone(),
                api_version: info.api_version_string(),
            },
        )
        .await
        .map_err(|e| sf_error(&format!("reading results of Bulk job {id}"), &e))?;
    let mut pages = stream.pages();
    let mut skip_rows = position.1.max(0) as u64;
    let mut header: Option<Arc<Vec<String>>> = stream
        .read_header()
        .await
        .map_err(|e| sf_error(&format!("reading results of Bulk job {id}"), &e))?
        .map(Arc::new);
    loop {
        let batch = stream
            .next_batch()
            .await
            .map_err(|e| sf_error(&format!("reading results of Bulk job {id}"), &e))?;
        calls += (stream.pages() - pages) as i64;
        pages = stream.pages();
        let Some(rows) = batch else {
            let _ = tx
                .send(Fetched::Done {
                    api_calls: std::mem::take(&mut calls),
                })
                .await;
            return Ok(());
        };
        if header.is_none() {
            header = stream.header().map(|h| Arc::new(h.to_vec()));
        }
        let Some(h) = header.clone() else {
            return Err(("results have rows but no header row".into(), true));
        };
        let taken = stream.page_rows_taken();
        let before = taken - rows.len() as u64;
        let skip = skip_rows.saturating_sub(before).min(rows.len() as u64) as usize;
        let position = if stream.page_done() {
            skip_rows = 0;
            match stream.next_locator().filter(|_| stream.more_pages()) {
                Some(next) => (Some(next.to_string()), 0),
                None => (Some(LAST_PAGE_DONE.to_string()), 0),
            }
        } else {
            (stream.page_locator().map(str::to_string), taken as i64)
        };
        let msg = Fetched::Rows {
            header: h,
            rows,
            skip,
            position,
            api_calls: std::mem::take(&mut calls),
        };
        if tx.send(msg).await.is_err() {
            return Ok(());
        }
    }
}

/// Polls a query job until it is terminal, counting the calls.
pub(crate) async fn wait(
    bulk: &Bulk,
    id: &str,
    calls: &mut i64,
) -> std::result::Result<sfsync_salesforce::bulk::JobInfo, sfsync_salesforce::SalesforceError> {
    let mut interval = Duration::from_millis(100);
    loop {
        *calls += 1;
        let info = bulk.query_job(id).await?;
        if info.state.is_terminal() {
            return Ok(info);
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 3 / 2).min(Duration::from_secs(5));
    }
}

/// Requests a backfill for each object whose table this start created.
pub async fn request_backfills(
    store: &dyn Warehouse,
    objects: &[String],
    reason: &str,
) -> Result<Vec<i64>> {
    let mut ids = Vec::new();
    for object in objects {
        let open = store
            .sync_jobs(&sfsync_store::SyncJobFilter {
                object: Some(object.clone()),
                kind: Some(SyncJobKind::Backfill),
                ..sfsync_store::SyncJobFilter::open()
            })
            .await?;
        if !open.is_empty() {
            continue;
        }
        ids.push(
            store
                .add_sync_job(&NewSyncJob {
                    kind: SyncJobKind::Backfill,
                    object: object.clone(),
                    reason: reason.to_string(),
                    since_ms: None,
                    until_ms: None,
                    params: "{}".into(),
                    requested_by: "sfsync run".into(),
                    resync_id: None,
                })
                .await?,
        );
    }
    Ok(ids)
}

/// The run detail of a job.
pub(crate) fn run_detail(job: &SyncJob, counts: &SyncCounts, secs: f64) -> String {
    serde_json::json!({
        "job_id": job.id,
        "kind": job.kind.as_str(),
        "object": job.object,
        "reason": job.reason,
        "since_ms": job.since_ms,
        "until_ms": job.until_ms,
        "rows_total": job.rows_total,
        "watermark_ms": job.watermark_ms,
        "reread_from_ms": job.reread_from_ms,
        "counts": counts,
        "seconds": secs,
        "slices": slices_summary(&job.slices),
    })
    .to_string()
}

/// A run record's view of a job's slices: how many in each state, and the one in progress.
fn slices_summary(slices: &[sfsync_store::SyncJobSlice]) -> serde_json::Value {
    if slices.is_empty() {
        return serde_json::Value::Null;
    }
    let mut by_status = serde_json::Map::new();
    for s in slices {
        let n = by_status
            .entry(s.status.as_str())
            .or_insert(serde_json::json!(0));
        *n = serde_json::json!(n.as_u64().unwrap_or(0) + 1);
    }
    serde_json::json!({
        "total": slices.len(),
        "by_status": by_status,
        "current": sfsync_store::current_slice(slices).map(|s| s.seq),
    })
}

/// Ends the slice of job `id` in progress (if any) as `status` with `error`, recording its
/// counts. A slice that cannot be recorded is logged: the job's own status is what counts.
pub(crate) async fn end_slice(
    store: &dyn Warehouse,
    id: i64,
    status: sfsync_store::SliceStatus,
    error: Option<&str>,
) {
    let stored = match store.sync_job(id).await {
        Ok(Some(j)) => j,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(job = id, error = %chain(&e), "Could not read the job to record its slice.");
            return;
        }
    };
    let Some(seq) = sfsync_store::current_slice(&stored.slices)
        .filter(|s| s.status == sfsync_store::SliceStatus::Running)
        .map(|s| s.seq)
    else {
        return;
    };
    let moved = sfsync_store::slice_moved(
        &stored.slices,
        seq,
        status,
        &stored.counts,
        error,
        crate::apply::now_ms(),
    );
    let result = match moved {
        Ok(slices) => store.set_sync_job_slices(id, &slices, false).await,
        Err(reason) => {
            tracing::warn!(job = id, slice = seq, %reason, "A slice's end was not recorded.");
            return;
        }
    };
    if let Err(e) = result {
        tracing::warn!(job = id, slice = seq, error = %chain(&e), "A slice's end was not recorded.");
    }
}

/// The SystemModstamp (epoch ms) of the object's oldest record (deleted ones too with
/// `include_deleted`), `None` when it has none: the lower end of a full load's slices.
pub(crate) async fn earliest_modstamp(
    bulk: &Bulk,
    object: &str,
    include_deleted: bool,
) -> std::result::Result<Option<i64>, String> {
    let soql = format!("SELECT SystemModstamp FROM {object} ORDER BY SystemModstamp ASC LIMIT 1");
    let page = bulk
        .client()
        .query_page(
            &soql,
            &sfsync_salesforce::QueryOptions {
                include_deleted,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("{soql}: {}", e.report()))?;
    let Some(r) = page.records.first() else {
        return Ok(None);
    };
    let text = r
        .get("SystemModstamp")
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("{soql}: the record has no SystemModstamp"))?;
    crate::convert::parse_datetime(text)
        .map(Some)
        .map_err(|e| format!("{soql}: SystemModstamp '{text}': {e}"))
}

/// Marks a job failed (or cancelled) with its error, and its run; the slice in progress ends
/// the same way.
pub(crate) async fn fail_job(
    store: &dyn Warehouse,
    active: &Active,
    status: SyncJobStatus,
    error: &str,
) -> Result<()> {
    if !active.job.slices.is_empty() {
        let to = if status == SyncJobStatus::Cancelled {
            sfsync_store::SliceStatus::Cancelled
        } else {
            sfsync_store::SliceStatus::Failed
        };
        end_slice(store, active.job.id, to, Some(error)).await;
    }
    store
        .patch_sync_job(
            active.job.id,
            &SyncJobPatch {
                status: Some(status),
                error: Some(error.to_string()),
                ..Default::default()
            },
        )
        .await?;
    store
        .finish_run(
            &active.run_id,
            status.as_str(),
            &run_detail(
                &active.job,
                &active.counts,
                active.started.elapsed().as_secs_f64(),
            ),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FormulaFields, ObjectSpec};
    use sfsync_store::{CuratedBatch, SyncJobProgress};

    fn mapping(fields: FormulaFields) -> ObjectMapping {
        let f = |n: &str, t: &str| serde_json::json!({"name": n, "type": t});
        let mut a = f("Revenue_Per_Employee__c", "double");
        a["calculated"] = true.into();
        a["calculatedFormula"] = "AnnualRevenue / NumberOfEmployees".into();
        let mut b = f("Tier__c", "string");
        b["calculated"] = true.into();
        b["calculatedFormula"] = "IF(AnnualRevenue > 1000000, \"A\", \"B\")".into();
        let d = serde_json::from_value(serde_json::json!({
            "name": "Account",
            "fields": [f("Id", "id"), f("Name", "string"), f("AnnualRevenue", "currency"),
                       f("SystemModstamp", "datetime"), a, b]
        }))
        .unwrap();
        let mut spec = ObjectSpec::new("Account");
        spec.formula_fields = fields;
        ObjectMapping::build(&d, &spec).unwrap()
    }

    #[test]
    fn formula_soql_reads_id_modstamp_and_the_formulas() {
        let m = mapping(FormulaFields::All);
        assert_eq!(
            formula_soql(&m, None),
            "SELECT Id, SystemModstamp, Revenue_Per_Employee__c, Tier__c FROM Account"
        );
        let m = mapping(FormulaFields::Fields(vec!["Tier__c".into()]));
        assert_eq!(
            formula_soql(&m, Some(1_795_253_400_000)),
            "SELECT Id, SystemModstamp, Tier__c FROM Account \
             WHERE SystemModstamp >= 2026-11-21T09:30:00.000Z"
        );
    }

    fn job_with(
        params: &FormulaParams,
        watermark: Option<i64>,
        reread: Option<i64>,
    ) -> sfsync_store::SyncJob {
        sfsync_store::SyncJob {
            id: 1,
            kind: SyncJobKind::FormulaRefresh,
            object: "Account".into(),
            reason: String::new(),
            status: SyncJobStatus::Succeeded,
            since_ms: None,
            until_ms: None,
            params: serde_json::to_string(params).unwrap(),
            requested_by: String::new(),
            resync_id: None,
            run_id: None,
            bulk_job_id: None,
            locator: None,
            page_rows_done: 0,
            rows_total: None,
            counts: SyncCounts::default(),
            requested_at_ms: 0,
            started_at_ms: None,
            finished_at_ms: None,
            error: None,
            report: None,
            watermark_ms: watermark,
            reread_from_ms: reread,
            attempts: 1,
            previous_attempts: Vec::new(),
            slices: Vec::new(),
        }
    }

    #[test]
    fn resume_point_is_the_highest_read_but_not_past_a_record_to_read_again() {
        let from = |w: Option<i64>| FormulaParams {
            fields: vec!["Tier__c".into()],
            watermark_from_ms: w,
        };
        let cases = [
            // (continued from, watermark, re-read point) → resume point
            ((None, None, None), None),
            ((None, Some(50), None), Some(50)),
            ((Some(70), None, None), Some(70)),
            ((Some(70), Some(50), None), Some(70)),
            ((Some(40), Some(50), None), Some(50)),
            ((Some(40), Some(50), Some(45)), Some(45)),
            ((Some(40), Some(50), Some(60)), Some(50)),
            ((None, None, Some(30)), Some(30)),
        ];
        for ((f, w, r), want) in cases {
            assert_eq!(
                formula_resume_point(&job_with(&from(f), w, r)),
                want,
                "{f:?} {w:?} {r:?}"
            );
        }
    }

    /// The first refresh reads everything; the next continues from the last succeeded one's
    /// resume point less the overlap; failed refreshes do not count; adding a formula field
    /// to the config makes the next one read everything again.
    #[tokio::test]
    async fn next_refresh_continues_from_the_last_succeeded_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = sfsync_store::SqliteChangeLog::open(dir.path().join("w.db"))
            .await
            .unwrap();
        let tier = mapping(FormulaFields::Fields(vec!["Tier__c".into()]));
        store.ensure_model(&tier.model).await.unwrap();

        let first = next_formula_refresh(&store, &tier, "schedule")
            .await
            .unwrap();
        assert_eq!(first.kind, SyncJobKind::FormulaRefresh);
        assert_eq!(first.since_ms, None);
        assert!(first.reason.contains("first refresh"), "{}", first.reason);
        let params: FormulaParams = serde_json::from_str(&first.params).unwrap();
        assert_eq!(params.fields, ["Tier__c"]);
        assert_eq!(params.watermark_from_ms, None);

        let run = |watermark: i64, status: SyncJobStatus| {
            let store = &store;
            let job = first.clone();
            async move {
                let id = store.add_sync_job(&job).await.unwrap();
                store
                    .commit_curated(
                        "apply",
                        None,
                        &CuratedBatch {
                            job_progress: Some(SyncJobProgress {
                                job_id: id,
                                watermark_ms: Some(watermark),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                store
                    .patch_sync_job(
                        id,
                        &SyncJobPatch {
                            status: Some(status),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
            }
        };
        run(1_000_000, SyncJobStatus::Succeeded).await;
        run(9_000_000, SyncJobStatus::Failed).await;
        let next = next_formula_refresh(&store, &tier, "schedule")
            .await
            .unwrap();
        assert_eq!(next.since_ms, Some(1_000_000 - FORMULA_OVERLAP_MS));
        assert_eq!(next.reason, "scheduled");
        let params: FormulaParams = serde_json::from_str(&next.params).unwrap();
        assert_eq!(params.watermark_from_ms, Some(1_000_000));

        let all = mapping(FormulaFields::All);
        let wider = next_formula_refresh(&store, &all, "schedule")
            .await
            .unwrap();
        assert_eq!(wider.since_ms, None);
        assert!(
            wider.reason.contains("formula fields changed"),
            "{}",
            wider.reason
        );
    }
}
