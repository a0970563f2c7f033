//! Bulk API 2.0 jobs: ingest jobs (insert, update, upsert, delete, hardDelete from CSV) and
//! query jobs (query, queryAll to CSV). Jobs live in memory and follow Salesforce's state
//! machine (`Open` → `UploadComplete` → `InProgress` → `JobComplete` | `Failed` | `Aborted`);
//! processing runs asynchronously on blocking threads, in 10,000-record batches that each are
//! one org transaction and consume the org's Bulk allocations. Every uploaded row ends up in
//! exactly one of successfulResults, failedResults or unprocessedrecords. Query results are
//! evaluated once and rendered once, so re-fetching a page returns identical bytes. Jobs are
//! removed seven days after they reach a terminal state.

pub mod csv_reader;
pub mod csv_writer;
pub mod ingest;
pub mod query;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Map, Value};
use sfsync_core::SfId;
use sfsync_org::Org;

use crate::http::error::BulkError;
use crate::limits::Limits;

pub use ingest::{IngestJob, IngestOperation, IngestRequest};
pub use query::{QueryJob, QueryOperation, QueryRequest};

/// How long a job is kept after reaching a terminal state.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Bulk API 2.0 job states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Open,
    UploadComplete,
    InProgress,
    JobComplete,
    Failed,
    Aborted,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Open => "Open",
            JobState::UploadComplete => "UploadComplete",
            JobState::InProgress => "InProgress",
            JobState::JobComplete => "JobComplete",
            JobState::Failed => "Failed",
            JobState::Aborted => "Aborted",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "Open" => JobState::Open,
            "UploadComplete" => JobState::UploadComplete,
            "InProgress" => JobState::InProgress,
            "JobComplete" => JobState::JobComplete,
            "Failed" => JobState::Failed,
            "Aborted" => JobState::Aborted,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::JobComplete | JobState::Failed | JobState::Aborted
        )
    }

    /// States in which `DELETE` is accepted.
    pub fn is_deletable(self) -> bool {
        matches!(
            self,
            JobState::UploadComplete | JobState::JobComplete | JobState::Failed | JobState::Aborted
        )
    }

    /// Refuses a `DELETE` unless the job is in a deletable state (same rule for both job kinds).
    pub fn check_deletable(self, job_id: &SfId) -> Result<(), BulkError> {
        if self.is_deletable() {
            return Ok(());
        }
        Err(BulkError::new(
            400,
            "InvalidJobState",
            format!(
                "Job {job_id} is {}; only UploadComplete, JobComplete, Aborted or Failed jobs can be deleted",
                self.as_str()
            ),
        ))
    }
}

/// `columnDelimiter` of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnDelimiter {
    Comma,
    Backquote,
    Caret,
    Pipe,
    Semicolon,
    Tab,
}

impl ColumnDelimiter {
    pub fn parse(s: &str) -> Option<ColumnDelimiter> {
        Some(match s {
            "COMMA" => ColumnDelimiter::Comma,
            "BACKQUOTE" => ColumnDelimiter::Backquote,
            "CARET" => ColumnDelimiter::Caret,
            "PIPE" => ColumnDelimiter::Pipe,
            "SEMICOLON" => ColumnDelimiter::Semicolon,
            "TAB" => ColumnDelimiter::Tab,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ColumnDelimiter::Comma => "COMMA",
            ColumnDelimiter::Backquote => "BACKQUOTE",
            ColumnDelimiter::Caret => "CARET",
            ColumnDelimiter::Pipe => "PIPE",
            ColumnDelimiter::Semicolon => "SEMICOLON",
            ColumnDelimiter::Tab => "TAB",
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            ColumnDelimiter::Comma => b',',
            ColumnDelimiter::Backquote => b'`',
            ColumnDelimiter::Caret => b'^',
            ColumnDelimiter::Pipe => b'|',
            ColumnDelimiter::Semicolon => b';',
            ColumnDelimiter::Tab => b'\t',
        }
    }
}

/// `lineEnding` of a job (governs the CSV the emulator writes; input accepts both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    Lf,
    Crlf,
}

impl LineEnding {
    pub fn parse(s: &str) -> Option<LineEnding> {
        Some(match s {
            "LF" => LineEnding::Lf,
            "CRLF" => LineEnding::Crlf,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LineEnding::Lf => "LF",
            LineEnding::Crlf => "CRLF",
        }
    }

    pub fn bytes(self) -> &'static [u8] {
        match self {
            LineEnding::Lf => b"\n",
            LineEnding::Crlf => b"\r\n",
        }
    }
}

/// What every job has.
#[derive(Debug, Clone)]
pub struct JobMeta {
    pub id: SfId,
    pub created_by: SfId,
    pub created_ms: i64,
    /// e.g. "66.0".
    pub api_version: String,
    pub delimiter: ColumnDelimiter,
    pub line_ending: LineEnding,
    /// Creation order (for newest-first listings).
    pub seq: u64,
}

/// Tunables (tests shorten or lengthen them; defaults are Salesforce-like).
#[derive(Debug, Clone)]
pub struct BulkSettings {
    /// Wait before a job leaves `UploadComplete` (lets tests observe the pre-completion states).
    pub processing_delay: Duration,
    /// Largest accepted upload (Salesforce: 150 MB).
    pub max_upload_bytes: usize,
    /// Largest total of all uploads of one job (memory guard).
    pub max_job_bytes: usize,
    /// Rows per results page when the client gives no `maxRecords`.
    pub default_page_rows: usize,
    /// Records per ingest batch (= per org transaction).
    pub batch_records: usize,
    /// Compress query result chunks for gzip in the background as soon as the job is complete
    /// (first chunks first, overlapping the downloads), so gzip pages are served from cache.
    /// Costs ~8 % more memory and some CPU per job.
    pub precompress_gzip: bool,
}

impl Default for BulkSettings {
    fn default() -> Self {
        BulkSettings {
            processing_delay: Duration::ZERO,
            max_upload_bytes: 150 * 1024 * 1024,
            max_job_bytes: 1024 * 1024 * 1024,
            default_page_rows: 100_000,
            batch_records: 10_000,
            precompress_gzip: true,
        }
    }
}

/// A job of either kind.
#[derive(Clone)]
pub enum Job {
    Ingest(Arc<IngestJob>),
    Query(Arc<QueryJob>),
}

impl Job {
    fn meta(&self) -> &JobMeta {
        match self {
            Job::Ingest(j) => &j.meta,
            Job::Query(j) => &j.meta,
        }
    }

    /// When the job reached a terminal state (epoch ms), if it did.
    fn terminal_ms(&self) -> Option<i64> {
        match self {
            Job::Ingest(j) => j.terminal_ms(),
            Job::Query(j) => j.terminal_ms(),
        }
    }
}

/// All Bulk API 2.0 jobs of the org.
pub struct BulkJobs {
    pub org: Arc<Org>,
    pub limits: Arc<Limits>,
    jobs: Mutex<HashMap<SfId, Job>>,
    next_seq: AtomicU64,
    id_base: u64,
    settings: Mutex<BulkSettings>,
    last_sweep_ms: AtomicU64,
}

impl BulkJobs {
    pub fn new(org: Arc<Org>, limits: Arc<Limits>) -> BulkJobs {
        BulkJobs {
            org,
            limits,
            jobs: Mutex::new(HashMap::new()),
            next_seq: AtomicU64::new(1),
            // Job ids look like Salesforce's (`7505e00000AbCdE…`) and differ between runs.
            id_base: 0x1_0000_0000 + (rand::random::<u32>() as u64) * 1_000,
            settings: Mutex::new(BulkSettings::default()),
            last_sweep_ms: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> BulkSettings {
        self.settings.lock().clone()
    }

    pub fn set_settings(&self, settings: BulkSettings) {
        *self.settings.lock() = settings;
    }

    /// A fresh job identity.
    fn new_meta(
        &self,
        created_by: SfId,
        api_version: &str,
        delimiter: ColumnDelimiter,
        line_ending: LineEnding,
    ) -> JobMeta {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        JobMeta {
            id: SfId::from_parts("750", self.id_base + seq),
            created_by,
            created_ms: now_ms(),
            api_version: api_version.to_string(),
            delimiter,
            line_ending,
            seq,
        }
    }

    fn insert(&self, job: Job) {
        self.sweep();
        self.jobs.lock().insert(job.meta().id, job);
    }

    /// Looks a job up by its 15- or 18-character id.
    pub fn get(&self, id: &str) -> Option<Job> {
        self.sweep();
        let id = SfId::parse(id).ok()?;
        self.jobs.lock().get(&id).cloned()
    }

    pub fn ingest_job(&self, id: &str) -> Result<Arc<IngestJob>, BulkError> {
        match self.get(id) {
            Some(Job::Ingest(j)) => Ok(j),
            _ => Err(not_found()),
        }
    }

    pub fn query_job(&self, id: &str) -> Result<Arc<QueryJob>, BulkError> {
        match self.get(id) {
            Some(Job::Query(j)) => Ok(j),
            _ => Err(not_found()),
        }
    }

    /// Removes a job (after the caller checked its state).
    fn remove(&self, id: SfId) {
        self.jobs.lock().remove(&id);
    }

    /// All jobs, newest first.
    pub fn list(&self) -> Vec<Job> {
        self.sweep();
        let mut jobs: Vec<Job> = self.jobs.lock().values().cloned().collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.meta().seq));
        jobs
    }

    /// Drops jobs that reached a terminal state more than [`RETENTION`] ago (at most once a
    /// minute).
    fn sweep(&self) {
        let now = now_ms();
        let last = self.last_sweep_ms.load(Ordering::Relaxed) as i64;
        if now - last < 60_000 {
            return;
        }
        self.last_sweep_ms.store(now as u64, Ordering::Relaxed);
        self.sweep_older_than(now - RETENTION.as_millis() as i64);
    }

    /// Drops every job that reached a terminal state before `cutoff_ms`. Returns how many.
    pub fn sweep_older_than(&self, cutoff_ms: i64) -> usize {
        let jobs: Vec<Job> = self.jobs.lock().values().cloned().collect();
        let expired: Vec<SfId> = jobs
            .iter()
            .filter(|j| j.terminal_ms().is_some_and(|t| t < cutoff_ms))
            .map(|j| j.meta().id)
            .collect();
        let mut map = self.jobs.lock();
        for id in &expired {
            map.remove(id);
        }
        expired.len()
    }
}

/// 404 `NOT_FOUND` in the Bulk error shape.
pub fn not_found() -> BulkError {
    BulkError::new(404, "NOT_FOUND", "The requested resource does not exist")
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Salesforce's job timestamp format: `2022-01-02T21:33:43.000+0000`.
pub fn format_timestamp(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string(),
        None => "1970-01-01T00:00:00.000+0000".to_string(),
    }
}

/// The common leading keys of a job info object.
fn info_head(
    meta: &JobMeta,
    operation: &str,
    object: &str,
    modstamp_ms: i64,
    state: JobState,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), meta.id.as_str().into());
    m.insert("operation".into(), operation.into());
    m.insert("object".into(), object.into());
    m.insert("createdById".into(), meta.created_by.as_str().into());
    m.insert(
        "createdDate".into(),
        format_timestamp(meta.created_ms).into(),
    );
    m.insert(
        "systemModstamp".into(),
        format_timestamp(modstamp_ms).into(),
    );
    m.insert("state".into(), state.as_str().into());
    m
}

/// `apiVersion` as a JSON number (66.0).
fn api_version_number(v: &str) -> Value {
    v.parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Reads a string property of a create request, rejecting other JSON types.
fn string_prop(body: &Map<String, Value>, key: &str) -> Result<Option<String>, BulkError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(BulkError::new(
            400,
            "JSON_PARSER_ERROR",
            format!("Property '{key}' must be a string, got {other}"),
        )),
    }
}

/// Parses the common `contentType`, `columnDelimiter` and `lineEnding` properties.
fn csv_format(body: &Map<String, Value>) -> Result<(ColumnDelimiter, LineEnding), BulkError> {
    if let Some(ct) = string_prop(body, "contentType")? {
        if ct != "CSV" {
            return Err(BulkError::new(
                400,
                "ClientInputError",
                format!("Invalid contentType '{ct}'; Bulk API 2.0 supports only CSV"),
            ));
        }
    }
    let delimiter = match string_prop(body, "columnDelimiter")? {
        None => ColumnDelimiter::Comma,
        Some(s) => ColumnDelimiter::parse(&s).ok_or_else(|| {
            BulkError::new(
                400,
                "ClientInputError",
                format!("Invalid columnDelimiter '{s}'; expected one of BACKQUOTE, CARET, COMMA, PIPE, SEMICOLON, TAB"),
            )
        })?,
    };
    let line_ending = match string_prop(body, "lineEnding")? {
        None => LineEnding::Lf,
        Some(s) => LineEnding::parse(&s).ok_or_else(|| {
            BulkError::new(
                400,
                "ClientInputError",
                format!("Invalid lineEnding '{s}'; expected LF or CRLF"),
            )
        })?,
    };
    Ok((delimiter, line_ending))
}

/// Parses a JSON object request body.
pub fn parse_body(body: &[u8]) -> Result<Map<String, Value>, BulkError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(BulkError::new(
            400,
            "JSON_PARSER_ERROR",
            "The request body must be a JSON object",
        )),
        Err(e) => Err(BulkError::new(
            400,
            "JSON_PARSER_ERROR",
            format!("The request body is not valid JSON: {e}"),
        )),
    }
}

/// Rejects properties a create request does not know (Salesforce answers
/// `Unrecognized field`).
fn reject_unknown(body: &Map<String, Value>, known: &[&str]) -> Result<(), BulkError> {
    for k in body.keys() {
        if !known.contains(&k.as_str()) {
            return Err(BulkError::new(
                400,
                "JSON_PARSER_ERROR",
                format!(
                    "Unrecognized field \"{k}\"; known fields are {}",
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The target state of a `PATCH` body.
pub fn requested_state(body: &[u8]) -> Result<JobState, BulkError> {
    let m = parse_body(body)?;
    let s = string_prop(&m, "state")?.ok_or_else(|| {
        BulkError::new(
            400,
            "InvalidJobState",
            "The request body must contain a \"state\"",
        )
    })?;
    JobState::parse(&s).ok_or_else(|| {
        BulkError::new(
            400,
            "InvalidJobState",
            format!("Unknown job state '{s}'; expected UploadComplete or Aborted"),
        )
    })
}

/// The `{done, records, nextRecordsUrl}` listing.
pub fn list_json(records: Vec<Value>) -> Value {
    serde_json::json!({
        "done": true,
        "records": records,
        "nextRecordsUrl": null,
    })
}
