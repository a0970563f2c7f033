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
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Objects whose curated table is created by this start are backfilled.
    pub backfill_new_objects: bool,
    /// `maxRecords` per result page.
    pub page_records: u64,
    /// How often open jobs are looked for (also how soon a CLI request is picked up).
    pub poll: Duration,
    /// Scheduled reconciliation of every object (none when `None`).
    pub reconcile_every: Option<Duration>,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            backfill_new_objects: true,
            page_records: 100_000,
            poll: Duration::from_secs(1),
            reconcile_every: None,
        }
    }
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

/// Starts the fetch task of a backfill or re-sync.
pub(crate) fn spawn_fetch(
    bulk: Bulk,
    store: Arc<dyn Warehouse>,
    job: SyncJob,
    soql: String,
    page_records: u64,
) -> (mpsc::Receiver<Fetched>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4);
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
    tx: &mpsc::Sender<Fetched>,
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
                let req = if job.kind == SyncJobKind::Backfill && job.since_ms.is_none() {
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
        "counts": counts,
        "seconds": secs,
    })
    .to_string()
}

/// Marks a job failed (or cancelled) with its error, and its run.
pub(crate) async fn fail_job(
    store: &dyn Warehouse,
    active: &Active,
    status: SyncJobStatus,
    error: &str,
) -> Result<()> {
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
