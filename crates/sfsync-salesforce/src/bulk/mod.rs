//! Bulk API 2.0: ingest jobs (create, upload, close, abort, delete, poll, results) and query jobs
//! (create, poll, paged results).
//!
//! Guarantees: results are streamed — the body of a result page is parsed incrementally as bytes
//! arrive and handed out in [`csv::CsvRecordBatch`]es, so memory stays bounded whatever the result
//! size. Query result paging follows `Sforce-Locator` until the literal `null`, and each page's row
//! count is checked against `Sforce-NumberOfRecords` (a truncated page is an error, never a silent
//! loss). No upload exceeds [`BulkConfig::max_upload_bytes`]; larger data is split on record
//! boundaries into several jobs (Bulk 2.0 takes one upload per job). Polling backs off
//! exponentially and gives up after a bounded time with an error naming the job and its state.

pub mod csv;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use reqwest::header::{HeaderValue, ACCEPT};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Deserializer, Serialize};

use self::csv::{CsvOptions, CsvParser, CsvRecordBatch};
use crate::error::{Result, SalesforceError};
use crate::http::{ApiRequest, ApiResponse, Body, SalesforceClient};
use crate::rest::{encode_segment, null_default, RecordError};

/// Bulk operation of an ingest job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum IngestOperation {
    Insert,
    Update,
    Upsert,
    Delete,
    HardDelete,
}

/// Operation of a query job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum QueryOperation {
    #[default]
    Query,
    /// Includes deleted and archived records.
    QueryAll,
}

/// CSV line ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum LineEnding {
    #[default]
    LF,
    CRLF,
}

/// CSV column delimiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ColumnDelimiter {
    #[default]
    Comma,
    Backquote,
    Caret,
    Pipe,
    Semicolon,
    Tab,
}

impl ColumnDelimiter {
    /// The delimiter byte.
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

    fn from_name(s: &str) -> Option<Self> {
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
}

/// `POST /jobs/ingest` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestJobRequest {
    pub object: String,
    pub operation: IngestOperation,
    /// Required for upsert.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id_field_name: Option<String>,
    pub content_type: &'static str,
    pub line_ending: LineEnding,
    pub column_delimiter: ColumnDelimiter,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignment_rule_id: Option<String>,
}

impl IngestJobRequest {
    pub fn new(object: impl Into<String>, operation: IngestOperation) -> Self {
        IngestJobRequest {
            object: object.into(),
            operation,
            external_id_field_name: None,
            content_type: "CSV",
            line_ending: LineEnding::LF,
            column_delimiter: ColumnDelimiter::Comma,
            assignment_rule_id: None,
        }
    }

    /// An upsert job matching on `external_id_field`.
    pub fn upsert(object: impl Into<String>, external_id_field: impl Into<String>) -> Self {
        IngestJobRequest {
            external_id_field_name: Some(external_id_field.into()),
            ..IngestJobRequest::new(object, IngestOperation::Upsert)
        }
    }
}

/// `POST /jobs/query` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryJobRequest {
    pub operation: QueryOperation,
    pub query: String,
    pub content_type: &'static str,
    pub column_delimiter: ColumnDelimiter,
    pub line_ending: LineEnding,
}

impl QueryJobRequest {
    pub fn new(query: impl Into<String>) -> Self {
        QueryJobRequest {
            operation: QueryOperation::Query,
            query: query.into(),
            content_type: "CSV",
            column_delimiter: ColumnDelimiter::Comma,
            line_ending: LineEnding::LF,
        }
    }

    /// A `queryAll` job (deleted and archived rows included).
    pub fn query_all(query: impl Into<String>) -> Self {
        QueryJobRequest {
            operation: QueryOperation::QueryAll,
            ..QueryJobRequest::new(query)
        }
    }
}

/// State of a Bulk job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Open,
    UploadComplete,
    InProgress,
    JobComplete,
    Failed,
    Aborted,
    /// A state this client does not know.
    #[serde(other)]
    Unknown,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::JobComplete | JobState::Failed | JobState::Aborted
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Open => "Open",
            JobState::UploadComplete => "UploadComplete",
            JobState::InProgress => "InProgress",
            JobState::JobComplete => "JobComplete",
            JobState::Failed => "Failed",
            JobState::Aborted => "Aborted",
            JobState::Unknown => "Unknown",
        }
    }
}

fn f64_or_string<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        N(f64),
        S(String),
    }
    Ok(match Option::<V>::deserialize(d)? {
        Some(V::N(n)) => Some(n),
        Some(V::S(s)) => s.trim().parse().ok(),
        None => None,
    })
}

/// Job info as returned by create / get / state changes (documented keys; others kept in `extra`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobInfo {
    pub id: String,
    #[serde(default)]
    pub operation: Option<String>,
    #[serde(default)]
    pub object: Option<String>,
    #[serde(default)]
    pub created_by_id: Option<String>,
    #[serde(default)]
    pub created_date: Option<String>,
    #[serde(default)]
    pub system_modstamp: Option<String>,
    pub state: JobState,
    #[serde(default)]
    pub concurrency_mode: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    /// A number on the wire (`66.0`).
    #[serde(default, deserialize_with = "f64_or_string")]
    pub api_version: Option<f64>,
    #[serde(default)]
    pub line_ending: Option<String>,
    #[serde(default)]
    pub column_delimiter: Option<String>,
    #[serde(default)]
    pub job_type: Option<String>,
    #[serde(default)]
    pub content_url: Option<String>,
    #[serde(default)]
    pub external_id_field_name: Option<String>,
    #[serde(default)]
    pub assignment_rule_id: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub number_records_processed: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub number_records_failed: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub retries: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub total_processing_time: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub api_active_processing_time: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub apex_processing_time: u64,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub is_pk_chunking_supported: Option<bool>,
    /// Keys not modelled here.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl JobInfo {
    /// The job's API version as used in paths (`66.0`).
    pub fn api_version_string(&self) -> Option<String> {
        self.api_version.map(|v| format!("{v:.1}"))
    }

    /// The delimiter byte of this job's CSV (comma when unknown).
    pub fn delimiter_byte(&self) -> u8 {
        self.column_delimiter
            .as_deref()
            .and_then(ColumnDelimiter::from_name)
            .unwrap_or_default()
            .byte()
    }
}

/// `GET /jobs/ingest` or `/jobs/query` page.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobList {
    #[serde(default)]
    done: bool,
    #[serde(default, deserialize_with = "null_default")]
    records: Vec<JobInfo>,
    #[serde(default)]
    next_records_url: Option<String>,
}

/// How to wait for a job: exponential backoff between polls, bounded total time. During the
/// first [`EARLY_POLL_SECS`] the interval grows to at most [`EARLY_MAX_INTERVAL_MS`] (when
/// `max_interval_ms` is larger), so a job that finishes in a few seconds is noticed within a
/// second instead of up to half its run time late; after that it backs off to `max_interval_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollPolicy {
    pub initial_interval_ms: u64,
    pub max_interval_ms: u64,
    pub multiplier: f64,
    /// Give up (with [`SalesforceError::JobTimeout`]) after this long.
    pub timeout_secs: u64,
}

/// How long [`PollPolicy`]'s early interval cap lasts.
pub const EARLY_POLL_SECS: u64 = 30;
/// The longest interval between polls during the first [`EARLY_POLL_SECS`].
pub const EARLY_MAX_INTERVAL_MS: u64 = 1_000;

impl Default for PollPolicy {
    fn default() -> Self {
        PollPolicy {
            initial_interval_ms: 250,
            max_interval_ms: 10_000,
            multiplier: 1.5,
            timeout_secs: 3600,
        }
    }
}

/// Bulk settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkConfig {
    /// Largest single CSV upload (Salesforce: 150 MB after base64, 100 MB raw recommended).
    pub max_upload_bytes: usize,
    /// Rows per [`CsvRecordBatch`] handed out by result streams.
    pub batch_rows: usize,
    /// Largest accepted CSV record in results.
    pub max_record_bytes: usize,
    /// Timeout for downloading one result page.
    pub page_timeout_secs: u64,
    pub poll: PollPolicy,
}

impl Default for BulkConfig {
    fn default() -> Self {
        BulkConfig {
            max_upload_bytes: 100 * 1024 * 1024,
            batch_rows: 4096,
            max_record_bytes: 64 * 1024 * 1024,
            page_timeout_secs: 3600,
            poll: PollPolicy::default(),
        }
    }
}

/// Options for reading query results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResultsOptions {
    /// `maxRecords` per page.
    pub max_records: Option<u64>,
    /// Start at this locator (resume); `None` = first page.
    pub locator: Option<String>,
    /// API version to fetch with; must equal the job's (409 otherwise). `None` = client's.
    pub api_version: Option<String>,
}

/// Bulk API 2.0 access through a [`SalesforceClient`].
#[derive(Debug, Clone)]
pub struct Bulk {
    client: SalesforceClient,
    config: BulkConfig,
}

#[derive(Serialize)]
struct StateChange {
    state: &'static str,
}

impl SalesforceClient {
    /// Bulk API 2.0 with default settings.
    pub fn bulk(&self) -> Bulk {
        Bulk {
            client: self.clone(),
            config: BulkConfig::default(),
        }
    }

    /// Bulk API 2.0 with the given settings.
    pub fn bulk_with(&self, config: BulkConfig) -> Bulk {
        Bulk {
            client: self.clone(),
            config,
        }
    }
}

/// Which family of jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Ingest,
    Query,
}

impl JobKind {
    fn segment(self) -> &'static str {
        match self {
            JobKind::Ingest => "jobs/ingest",
            JobKind::Query => "jobs/query",
        }
    }
}

impl Bulk {
    /// The same Bulk access with its calls in `lane` of the API budget governor.
    pub fn lane(&self, lane: crate::Lane) -> Bulk {
        Bulk {
            client: self.client.lane(lane),
            config: self.config.clone(),
        }
    }

    pub fn config(&self) -> &BulkConfig {
        &self.config
    }

    fn job_path(&self, kind: JobKind, id: &str) -> String {
        self.client
            .data_path(&format!("{}/{}", kind.segment(), encode_segment(id)))
    }

    // ---------------------------------------------------------------- ingest

    /// `POST /jobs/ingest` → job in state `Open`.
    pub async fn create_ingest_job(&self, req: &IngestJobRequest) -> Result<JobInfo> {
        if req.operation == IngestOperation::Upsert && req.external_id_field_name.is_none() {
            return Err(SalesforceError::invalid(
                "POST /jobs/ingest",
                format!("an upsert job on {} needs externalIdFieldName", req.object),
            ));
        }
        let r = ApiRequest::new(Method::POST, self.client.data_path("jobs/ingest"))
            .body(Body::json(req)?);
        self.client.send_json(r).await
    }

    /// `PUT …/batches` with CSV data (expects 201). Fails before sending when the data exceeds
    /// [`BulkConfig::max_upload_bytes`]; split with [`csv::split_for_upload`] or use [`Bulk::ingest`].
    pub async fn upload(&self, job: &JobInfo, data: Bytes) -> Result<()> {
        let path = match job.content_url.as_deref().filter(|u| !u.is_empty()) {
            Some(u) if u.starts_with("http") => u.to_string(),
            Some(u) => format!("/{}", u.trim_start_matches('/')),
            None => format!("{}/batches", self.job_path(JobKind::Ingest, &job.id)),
        };
        if data.len() > self.config.max_upload_bytes {
            return Err(SalesforceError::invalid(
                format!("PUT {path} (job {})", job.id),
                format!(
                    "{} bytes exceed the upload limit of {} bytes; split the data into several jobs",
                    data.len(),
                    self.config.max_upload_bytes
                ),
            ));
        }
        let r = ApiRequest::new(Method::PUT, path.clone()).body(Body::Csv(data));
        let (status, _) = self.client.send(r).await?.bytes().await?;
        if status != StatusCode::CREATED {
            return Err(SalesforceError::decode(
                "PUT",
                &path,
                status.as_u16(),
                format!(
                    "job {}: upload answered {status}, expected 201 Created",
                    job.id
                ),
            ));
        }
        Ok(())
    }

    async fn set_state(&self, kind: JobKind, id: &str, state: &'static str) -> Result<JobInfo> {
        let r = ApiRequest::new(Method::PATCH, self.job_path(kind, id))
            .body(Body::json(&StateChange { state })?);
        self.client.send_json(r).await
    }

    /// `PATCH {"state":"UploadComplete"}`: starts processing.
    pub async fn close(&self, job_id: &str) -> Result<JobInfo> {
        self.set_state(JobKind::Ingest, job_id, "UploadComplete")
            .await
    }

    /// `PATCH {"state":"Aborted"}` on an ingest job.
    pub async fn abort_ingest(&self, job_id: &str) -> Result<JobInfo> {
        self.set_state(JobKind::Ingest, job_id, "Aborted").await
    }

    /// `DELETE /jobs/ingest/{id}` (job must be UploadComplete, JobComplete, Aborted or Failed).
    pub async fn delete_ingest(&self, job_id: &str) -> Result<()> {
        let r = ApiRequest::new(Method::DELETE, self.job_path(JobKind::Ingest, job_id));
        self.client.send_empty(r).await.map(|_| ())
    }

    /// `GET /jobs/ingest/{id}`.
    pub async fn ingest_job(&self, job_id: &str) -> Result<JobInfo> {
        self.job(JobKind::Ingest, job_id).await
    }

    /// `GET /jobs/{kind}/{id}`.
    pub async fn job(&self, kind: JobKind, job_id: &str) -> Result<JobInfo> {
        let r = ApiRequest::new(Method::GET, self.job_path(kind, job_id));
        self.client.send_json(r).await
    }

    /// Polls until the job is terminal. `JobComplete` → Ok (check `number_records_failed`);
    /// `Failed`/`Aborted` → [`SalesforceError::JobFailed`]; too long → [`SalesforceError::JobTimeout`].
    pub async fn wait(&self, kind: JobKind, job_id: &str, poll: &PollPolicy) -> Result<JobInfo> {
        let start = Instant::now();
        let mut interval = poll.initial_interval_ms.max(1) as f64;
        loop {
            let info = self.job(kind, job_id).await?;
            match info.state {
                JobState::JobComplete => return Ok(info),
                JobState::Failed | JobState::Aborted => {
                    return Err(SalesforceError::JobFailed {
                        job_id: job_id.to_string(),
                        state: info.state.as_str().to_string(),
                        message: info
                            .error_message
                            .clone()
                            .unwrap_or_else(|| "no errorMessage given".into()),
                    })
                }
                state => {
                    let waited = start.elapsed();
                    if waited >= Duration::from_secs(poll.timeout_secs) {
                        return Err(SalesforceError::JobTimeout {
                            job_id: job_id.to_string(),
                            state: state.as_str().to_string(),
                            waited_secs: waited.as_secs(),
                        });
                    }
                    let wait = Duration::from_millis(interval as u64)
                        .min(Duration::from_secs(poll.timeout_secs).saturating_sub(waited))
                        .max(Duration::from_millis(1));
                    tokio::time::sleep(wait).await;
                    let max = if start.elapsed() < Duration::from_secs(EARLY_POLL_SECS) {
                        poll.max_interval_ms.clamp(1, EARLY_MAX_INTERVAL_MS)
                    } else {
                        poll.max_interval_ms.max(1)
                    };
                    interval = (interval * poll.multiplier.max(1.0)).min(max as f64);
                }
            }
        }
    }

    /// Polls an ingest job with the configured policy.
    pub async fn wait_ingest(&self, job_id: &str) -> Result<JobInfo> {
        self.wait(JobKind::Ingest, job_id, &self.config.poll).await
    }

    /// `GET …/successfulResults/`: `sf__Id`, `sf__Created`, then the uploaded columns.
    pub async fn successful_results(&self, job_id: &str) -> Result<CsvResultStream> {
        self.ingest_results(job_id, "successfulResults/").await
    }

    /// `GET …/failedResults/`: `sf__Id`, `sf__Error`, then the uploaded columns.
    pub async fn failed_results(&self, job_id: &str) -> Result<CsvResultStream> {
        self.ingest_results(job_id, "failedResults/").await
    }

    /// `GET …/unprocessedrecords/`: the uploaded columns of rows never processed.
    pub async fn unprocessed_records(&self, job_id: &str) -> Result<CsvResultStream> {
        self.ingest_results(job_id, "unprocessedrecords/").await
    }

    /// Result CSVs use the job's column delimiter, so the job is read first (one GET) to parse
    /// them with the right one.
    async fn ingest_results(&self, job_id: &str, leaf: &str) -> Result<CsvResultStream> {
        let delimiter = self.ingest_job(job_id).await?.delimiter_byte();
        let path = format!("{}/{leaf}", self.job_path(JobKind::Ingest, job_id));
        let mut s = CsvResultStream::new(
            self.client.clone(),
            &self.config,
            job_id,
            path,
            false,
            delimiter,
            None,
        );
        s.open_page().await?;
        Ok(s)
    }

    /// Uploads CSV data (header + rows) as one or more jobs — one per part of at most
    /// `max_upload_bytes`, split on record boundaries with the header repeated — closes them and
    /// waits for all. Returns the final job infos in part order. Jobs that fail make the call fail
    /// after all parts were submitted; the error names the first failed job.
    pub async fn ingest(&self, req: &IngestJobRequest, data: Bytes) -> Result<Vec<JobInfo>> {
        let parts = csv::split_for_upload(
            &data,
            req.column_delimiter.byte(),
            self.config.max_upload_bytes,
        )
        .map_err(|source| SalesforceError::Csv {
            place: format!("ingest data for {}", req.object),
            source,
        })?;
        let mut ids = Vec::with_capacity(parts.len());
        for part in parts {
            let job = self.create_ingest_job(req).await?;
            if let Err(e) = self.upload(&job, part).await {
                let _ = self.abort_ingest(&job.id).await;
                return Err(e);
            }
            self.close(&job.id).await?;
            ids.push(job.id);
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            out.push(self.wait_ingest(id).await?);
        }
        Ok(out)
    }

    /// Every job of a kind (`GET /jobs/ingest` / `/jobs/query`, following `nextRecordsUrl`).
    pub async fn list_jobs(&self, kind: JobKind) -> Result<Vec<JobInfo>> {
        let mut out = Vec::new();
        let mut path = self.client.data_path(kind.segment());
        loop {
            let page: JobList = self
                .client
                .send_json(ApiRequest::new(Method::GET, path.clone()))
                .await?;
            out.extend(page.records);
            match page.next_records_url.filter(|u| !u.is_empty()) {
                Some(next) if !page.done => path = next,
                _ => return Ok(out),
            }
        }
    }

    // ----------------------------------------------------------------- query

    /// `POST /jobs/query` → job in state `UploadComplete`.
    pub async fn create_query_job(&self, req: &QueryJobRequest) -> Result<JobInfo> {
        let r = ApiRequest::new(Method::POST, self.client.data_path("jobs/query"))
            .body(Body::json(req)?);
        self.client.send_json(r).await
    }

    /// `GET /jobs/query/{id}`.
    /// The client the Bulk calls go through (its lane and options).
    pub fn client(&self) -> &SalesforceClient {
        &self.client
    }

    pub async fn query_job(&self, job_id: &str) -> Result<JobInfo> {
        self.job(JobKind::Query, job_id).await
    }

    /// Polls a query job with the configured policy.
    pub async fn wait_query(&self, job_id: &str) -> Result<JobInfo> {
        self.wait(JobKind::Query, job_id, &self.config.poll).await
    }

    /// `PATCH {"state":"Aborted"}` on a query job.
    pub async fn abort_query(&self, job_id: &str) -> Result<JobInfo> {
        self.set_state(JobKind::Query, job_id, "Aborted").await
    }

    /// `DELETE /jobs/query/{id}`.
    pub async fn delete_query(&self, job_id: &str) -> Result<()> {
        let r = ApiRequest::new(Method::DELETE, self.job_path(JobKind::Query, job_id));
        self.client.send_empty(r).await.map(|_| ())
    }

    /// Streams the results of a completed query job, page by page (`maxRecords`, `locator`).
    pub async fn query_results(
        &self,
        job_id: &str,
        delimiter: u8,
        opts: QueryResultsOptions,
    ) -> Result<CsvResultStream> {
        let path = match &opts.api_version {
            Some(v) => format!(
                "/services/data/v{}/jobs/query/{}/results",
                v.trim_start_matches('v'),
                encode_segment(job_id)
            ),
            None => format!("{}/results", self.job_path(JobKind::Query, job_id)),
        };
        let mut s = CsvResultStream::new(
            self.client.clone(),
            &self.config,
            job_id,
            path,
            true,
            delimiter,
            opts.max_records,
        );
        s.next_locator = opts.locator;
        s.open_page().await?;
        Ok(s)
    }

    /// Creates a query job, waits for it and opens its results.
    pub async fn query(
        &self,
        req: &QueryJobRequest,
        max_records: Option<u64>,
    ) -> Result<CsvResultStream> {
        let job = self.create_query_job(req).await?;
        let info = self.wait_query(&job.id).await?;
        self.query_results(
            &job.id,
            req.column_delimiter.byte(),
            QueryResultsOptions {
                max_records,
                locator: None,
                api_version: info.api_version_string(),
            },
        )
        .await
    }
}

/// Parses a `sf__Error` cell (`ERRORCODE:message:fields`, `--` for no field).
pub fn parse_failed_result_error(cell: &str) -> RecordError {
    let (code, rest) = cell.split_once(':').unwrap_or((cell, ""));
    let (message, fields) = match rest.rsplit_once(':') {
        Some((m, f)) => (m, f),
        None => (rest, "--"),
    };
    let fields = if fields.trim() == "--" || fields.trim().is_empty() {
        Vec::new()
    } else {
        fields.split(',').map(|f| f.trim().to_string()).collect()
    };
    RecordError {
        status_code: code.trim().to_string(),
        message: message.to_string(),
        fields,
    }
}

/// A streamed CSV result: one ingest result file, or all pages of a query job's results.
/// Rows come out in [`CsvRecordBatch`]es; memory holds one network chunk plus at most
/// `batch_rows` rows (and one partial record).
pub struct CsvResultStream {
    client: SalesforceClient,
    job_id: String,
    path: String,
    paging: bool,
    max_records: Option<u64>,
    page_timeout: Duration,
    batch_rows: usize,
    /// Locator of the next page to fetch; `None` = first page (or, after the first, no more).
    next_locator: Option<String>,
    /// Locator the current page was fetched with.
    page_locator: Option<String>,
    more_pages: bool,
    current: Option<ApiResponse>,
    declared: Option<u64>,
    page_rows_taken: u64,
    parser: CsvParser,
    header: Option<Vec<String>>,
    pages: u64,
    rows: u64,
}

impl std::fmt::Debug for CsvResultStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsvResultStream")
            .field("job_id", &self.job_id)
            .field("path", &self.path)
            .field("pages", &self.pages)
            .field("rows", &self.rows)
            .finish()
    }
}

impl CsvResultStream {
    fn new(
        client: SalesforceClient,
        config: &BulkConfig,
        job_id: &str,
        path: String,
        paging: bool,
        delimiter: u8,
        max_records: Option<u64>,
    ) -> Self {
        CsvResultStream {
            client,
            job_id: job_id.to_string(),
            path,
            paging,
            max_records,
            page_timeout: Duration::from_secs(config.page_timeout_secs.max(1)),
            batch_rows: config.batch_rows.max(1),
            next_locator: None,
            page_locator: None,
            more_pages: true,
            current: None,
            declared: None,
            page_rows_taken: 0,
            parser: CsvParser::new(CsvOptions {
                delimiter,
                max_record_bytes: config.max_record_bytes,
                ..CsvOptions::default()
            }),
            header: None,
            pages: 0,
            rows: 0,
        }
    }

    /// The column names (from the first page's header row).
    pub fn header(&self) -> Option<&[String]> {
        self.header.as_deref()
    }

    /// The job these results belong to.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// Locator the current page was fetched with (`None` for the first page). With a batch's
    /// [`CsvRecordBatch::first_row_number`] this is a resumable position (job id + locator + row).
    pub fn page_locator(&self) -> Option<&str> {
        self.page_locator.as_deref()
    }

    /// Locator of the next page, when one is known.
    pub fn next_locator(&self) -> Option<&str> {
        self.next_locator.as_deref()
    }

    /// Rows of the current page handed out so far.
    pub fn page_rows_taken(&self) -> u64 {
        self.page_rows_taken
    }

    /// Every row of the current page has been handed out (the next batch, if any, comes from
    /// the page at [`Self::next_locator`]). With [`Self::page_rows_taken`] this gives the
    /// position to resume from after a crash.
    pub fn page_done(&self) -> bool {
        self.current.is_none() && self.parser.completed_rows() == 0
    }

    /// Whether another page follows the current one.
    pub fn more_pages(&self) -> bool {
        self.more_pages && self.next_locator.is_some()
    }

    /// Pages opened so far.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Rows handed out so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// NUL bytes stripped from the results.
    pub fn nul_bytes_stripped(&self) -> u64 {
        self.parser.nul_bytes_stripped()
    }

    fn place(&self) -> String {
        format!(
            "GET {} (job {}, page {}, locator {})",
            self.path,
            self.job_id,
            self.pages,
            self.page_locator.as_deref().unwrap_or("first")
        )
    }

    fn csv_err(&self, source: csv::CsvError) -> SalesforceError {
        SalesforceError::Csv {
            place: self.place(),
            source,
        }
    }

    async fn open_page(&mut self) -> Result<()> {
        let mut req = ApiRequest::new(Method::GET, self.path.clone())
            .header(ACCEPT, HeaderValue::from_static("text/csv"))
            .timeout(self.page_timeout);
        if self.paging {
            if let Some(n) = self.max_records {
                req = req.query("maxRecords", n.to_string());
            }
            if let Some(l) = &self.next_locator {
                req = req.query("locator", l.clone());
            }
        }
        let resp = self.client.send(req).await?;
        self.page_locator = self.next_locator.take();
        self.pages += 1;
        self.page_rows_taken = 0;
        self.declared = resp
            .header_str("Sforce-NumberOfRecords")
            .and_then(|v| v.trim().parse().ok());
        if self.paging {
            match resp.header_str("Sforce-Locator").map(str::trim) {
                Some(l) if !l.is_empty() && l != "null" => {
                    self.next_locator = Some(l.to_string());
                    self.more_pages = true;
                }
                _ => self.more_pages = false,
            }
        } else {
            self.more_pages = false;
        }
        self.parser.reset();
        self.current = Some(resp);
        Ok(())
    }

    fn take(&mut self) -> Result<CsvRecordBatch> {
        let b = self.parser.take_batch().map_err(|e| self.csv_err(e))?;
        self.page_rows_taken += b.len() as u64;
        self.rows += b.len() as u64;
        Ok(b)
    }

    /// The next batch of rows, or `None` after the last page.
    pub async fn next_batch(&mut self) -> Result<Option<CsvRecordBatch>> {
        loop {
            if self.parser.completed_rows() >= self.batch_rows {
                return self.take().map(Some);
            }
            let Some(resp) = self.current.as_mut() else {
                if self.parser.completed_rows() > 0 {
                    return self.take().map(Some);
                }
                if self.more_pages && self.next_locator.is_some() {
                    self.open_page().await?;
                    continue;
                }
                return Ok(None);
            };
            match resp.chunk().await? {
                Some(chunk) => {
                    if let Err(e) = self.parser.feed(&chunk) {
                        self.current = None;
                        self.more_pages = false;
                        return Err(self.csv_err(e));
                    }
                }
                None => {
                    self.current = None;
                    self.parser.finish().map_err(|e| self.csv_err(e))?;
                    self.end_page()?;
                }
            }
        }
    }

    fn end_page(&mut self) -> Result<()> {
        let page_rows = self.page_rows_taken + self.parser.completed_rows() as u64;
        if let Some(declared) = self.declared {
            if declared != page_rows {
                self.more_pages = false;
                return Err(self.csv_err(csv::CsvError::RecordCount {
                    declared,
                    found: page_rows,
                }));
            }
        }
        if let Some(h) = self.parser.take_header() {
            match &self.header {
                None => self.header = Some(h),
                Some(first) if *first != h => {
                    self.more_pages = false;
                    return Err(self.csv_err(csv::CsvError::HeaderMismatch {
                        expected: first.clone(),
                        found: h,
                    }));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The header, reading ahead until the first page's header row is parsed. Returns None for an
    /// empty result (no header row at all).
    pub async fn read_header(&mut self) -> Result<Option<Vec<String>>> {
        while self.header.is_none() {
            if let Some(h) = self.parser.header() {
                self.header = Some(h.to_vec());
                break;
            }
            let Some(resp) = self.current.as_mut() else {
                break;
            };
            match resp.chunk().await? {
                Some(chunk) => self.parser.feed(&chunk).map_err(|e| self.csv_err(e))?,
                None => {
                    self.current = None;
                    self.parser.finish().map_err(|e| self.csv_err(e))?;
                    self.end_page()?;
                }
            }
        }
        Ok(self.header.clone())
    }

    /// All batches as a stream.
    pub fn into_batches(self) -> BoxStream<'static, Result<CsvRecordBatch>> {
        futures::stream::try_unfold(self, |mut s| async move {
            Ok(s.next_batch().await?.map(|b| (b, s)))
        })
        .boxed()
    }

    /// All rows as owned vectors (convenient; allocates per field).
    pub fn into_records(self) -> BoxStream<'static, Result<Vec<String>>> {
        self.into_batches()
            .map(|b| match b {
                Ok(b) => futures::stream::iter(b.to_vecs().into_iter().map(Ok).collect::<Vec<_>>()),
                Err(e) => futures::stream::iter(vec![Err(e)]),
            })
            .flatten()
            .boxed()
    }

    /// Reads every row into memory (small results and tests only).
    pub async fn collect_all(mut self) -> Result<(Vec<String>, Vec<Vec<String>>)> {
        let mut rows = Vec::new();
        while let Some(b) = self.next_batch().await? {
            rows.extend(b.to_vecs());
        }
        Ok((self.header.unwrap_or_default(), rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_info_documented_keys() {
        let json = r#"{"id":"7505g000000AbCdAAK","operation":"upsert","object":"Account","createdById":"0055g000003xyzAAA",
          "createdDate":"2022-01-02T21:33:43.000+0000","systemModstamp":"2022-01-02T21:33:45.000+0000","state":"JobComplete",
          "externalIdFieldName":"Ext__c","concurrencyMode":"Parallel","contentType":"CSV","apiVersion":66.0,
          "jobType":"V2Ingest","contentUrl":"services/data/v66.0/jobs/ingest/7505g000000AbCdAAK/batches",
          "lineEnding":"LF","columnDelimiter":"PIPE","numberRecordsProcessed":10,"numberRecordsFailed":2,"retries":0,
          "totalProcessingTime":120,"apiActiveProcessingTime":70,"apexProcessingTime":0,"errorMessage":null,"brandNewKey":1}"#;
        let j: JobInfo = serde_json::from_str(json).unwrap();
        assert_eq!(j.state, JobState::JobComplete);
        assert!(j.state.is_terminal());
        assert_eq!(j.api_version, Some(66.0));
        assert_eq!(j.api_version_string().as_deref(), Some("66.0"));
        assert_eq!(j.number_records_failed, 2);
        assert_eq!(j.delimiter_byte(), b'|');
        assert!(j.extra.contains_key("brandNewKey"));
        let q: JobInfo = serde_json::from_str(
            r#"{"id":"750x","state":"UploadComplete","apiVersion":"59.0","numberRecordsProcessed":null,"isPkChunkingSupported":true,"state2":1}"#,
        )
        .unwrap();
        assert_eq!(q.api_version, Some(59.0));
        assert!(!q.state.is_terminal());
        let u: JobInfo = serde_json::from_str(r#"{"id":"750y","state":"Shiny"}"#).unwrap();
        assert_eq!(u.state, JobState::Unknown);
    }

    #[test]
    fn request_bodies() {
        let v = serde_json::to_value(IngestJobRequest::upsert("Account", "Ext__c")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"object":"Account","operation":"upsert","externalIdFieldName":"Ext__c",
                "contentType":"CSV","lineEnding":"LF","columnDelimiter":"COMMA"})
        );
        let mut r = IngestJobRequest::new("Contact", IngestOperation::HardDelete);
        r.column_delimiter = ColumnDelimiter::Tab;
        r.line_ending = LineEnding::CRLF;
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["operation"], "hardDelete");
        assert_eq!(v["columnDelimiter"], "TAB");
        assert_eq!(v["lineEnding"], "CRLF");
        let v = serde_json::to_value(QueryJobRequest::query_all("SELECT Id FROM Account")).unwrap();
        assert_eq!(v["operation"], "queryAll");
    }

    #[test]
    fn failed_result_cells() {
        let e = parse_failed_result_error("ENTITY_IS_DELETED:entity is deleted:--");
        assert_eq!(e.status_code, "ENTITY_IS_DELETED");
        assert_eq!(e.message, "entity is deleted");
        assert!(e.fields.is_empty());
        let e = parse_failed_result_error(
            "REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name",
        );
        assert_eq!(e.message, "Required fields are missing: [Name]");
        assert_eq!(e.fields, vec!["Name"]);
        assert_eq!(e.class(), sfsync_core::ErrorClass::User);
        let e = parse_failed_result_error("weird");
        assert_eq!(e.status_code, "weird");
    }
}
