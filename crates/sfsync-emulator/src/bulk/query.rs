//! Bulk API 2.0 query jobs. The SOQL is checked for what Bulk queries refuse (compound fields,
//! aggregates, OFFSET, nested subqueries) and resolved against the schema when the job is
//! created (`Org::query_shape`), so a bad query is answered with a 400 right away. The job then
//! reads one consistent snapshot straight into CSV chunks (`Org::query_csv`, 10,000 rows per
//! chunk, optionally gzip-compressed in the same pass); every page is cut from those chunks
//! without copying, so the same locator always yields the same bytes and serving a page never
//! re-queries. Locators are opaque (base64 of the next row number); the last page's locator is
//! the literal string `null`.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use sfsync_core::SfId;
use sfsync_org::{CsvQueryOptions, FieldDef, FieldType, QueryShape, Schema, SfError};

use super::csv_writer::{results_from_chunks, GzTrailer, RenderedResults, CHUNK_ROWS, GZIP_HEADER};
use super::{
    api_version_number, csv_format, info_head, now_ms, reject_unknown, string_prop, BulkJobs, Job,
    JobMeta, JobState,
};
use crate::http::error::BulkError;

/// Query `operation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryOperation {
    Query,
    QueryAll,
}

impl QueryOperation {
    pub fn as_str(self) -> &'static str {
        match self {
            QueryOperation::Query => "query",
            QueryOperation::QueryAll => "queryAll",
        }
    }
}

/// A validated `POST /jobs/query` body.
#[derive(Debug, Clone)]
pub struct QueryRequest {
    pub operation: QueryOperation,
    pub query: String,
    pub delimiter: super::ColumnDelimiter,
    pub line_ending: super::LineEnding,
}

impl QueryRequest {
    pub fn parse(body: &Map<String, Value>) -> Result<QueryRequest, BulkError> {
        reject_unknown(
            body,
            &[
                "operation",
                "query",
                "contentType",
                "columnDelimiter",
                "lineEnding",
            ],
        )?;
        let (delimiter, line_ending) = csv_format(body)?;
        let operation =
            match string_prop(body, "operation")?.as_deref() {
                Some("query") => QueryOperation::Query,
                Some("queryAll") => QueryOperation::QueryAll,
                Some(other) => {
                    return Err(BulkError::new(
                        400,
                        "ClientInputError",
                        format!(
                        "Invalid operation '{other}'; a query job's operation is query or queryAll"
                    ),
                    ))
                }
                None => return Err(BulkError::new(
                    400,
                    "ClientInputError",
                    "The job must name an operation (property \"operation\": query or queryAll)",
                )),
            };
        let query = string_prop(body, "query")?
            .filter(|q| !q.trim().is_empty())
            .ok_or_else(|| {
                BulkError::new(
                    400,
                    "ClientInputError",
                    "The job must contain a SOQL query (property \"query\")",
                )
            })?;
        Ok(QueryRequest {
            operation,
            query,
            delimiter,
            line_ending,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// What Bulk queries refuse

#[derive(Debug, PartialEq)]
enum Tok {
    /// Identifier or path (`Account.Name`), upper-cased copy alongside the original.
    Word(String, String),
    Punct(char),
    Literal,
}

/// Tokens with their parenthesis depth (string literals collapsed).
fn tokenize(soql: &str) -> Vec<(Tok, usize)> {
    let b = soql.as_bytes();
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push((Tok::Literal, depth));
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
            let w = &soql[s..i];
            out.push((Tok::Word(w.to_string(), w.to_ascii_uppercase()), depth));
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else {
            if c == b')' {
                depth = depth.saturating_sub(1);
            }
            out.push((Tok::Punct(c as char), depth));
            if c == b'(' {
                depth += 1;
            }
            i += 1;
        }
    }
    out
}

fn not_supported(message: impl Into<String>) -> BulkError {
    BulkError::new(400, "FUNCTIONALITY_NOT_ENABLED", message)
}

fn compound_error() -> BulkError {
    not_supported("Selecting compound data not supported in Bulk Query")
}

/// The field a select-list path names (`Name`, `Account.Owner.Email`, `Contact.Name` with the
/// object's own name as qualifier), if it resolves.
fn resolve_path<'a>(schema: &'a Schema, object: &str, path: &str) -> Option<&'a FieldDef> {
    let mut obj = schema.object(object)?;
    let mut parts: Vec<&str> = path.split('.').collect();
    if parts.len() > 1 && parts[0].eq_ignore_ascii_case(&obj.name) {
        parts.remove(0);
    }
    let (last, rels) = parts.split_last()?;
    for rel in rels {
        let f = obj.fields.iter().find(|f| {
            f.relationship_name
                .as_deref()
                .is_some_and(|r| r.eq_ignore_ascii_case(rel))
        })?;
        obj = f.reference_to.iter().find_map(|t| schema.object(t))?;
    }
    obj.field(last)
}

fn is_compound(f: &FieldDef) -> bool {
    matches!(f.field_type, FieldType::Address | FieldType::Location)
}

/// Refuses what Bulk API 2.0 queries do not support, before running the query. Anything this
/// cannot judge is left to the SOQL engine.
pub fn check_bulk_restrictions(soql: &str, schema: &Schema) -> Result<(), BulkError> {
    let toks = tokenize(soql);
    let word = |k: usize, w: &str| matches!(toks.get(k), Some((Tok::Word(_, u), 0)) if u == w);
    let Some(select) = (0..toks.len()).find(|&k| word(k, "SELECT")) else {
        return Ok(());
    };
    let from = (select + 1..toks.len()).find(|&k| word(k, "FROM"));
    let list_end = from.unwrap_or(toks.len());
    const AGGREGATES: [&str; 6] = ["COUNT", "COUNT_DISTINCT", "SUM", "AVG", "MIN", "MAX"];
    for k in select + 1..list_end {
        match &toks[k] {
            (Tok::Word(_, u), 0)
                if AGGREGATES.contains(&u.as_str())
                    && matches!(toks.get(k + 1), Some((Tok::Punct('('), 0))) =>
            {
                return Err(not_supported(format!(
                    "Aggregate functions such as {u}() are not supported in Bulk API 2.0 queries; query the rows and aggregate them yourself"
                )));
            }
            (Tok::Word(_, u), d) if *d > 0 && u == "SELECT" => {
                return Err(not_supported(
                    "Nested subqueries (parent-to-child relationships) are not supported in Bulk API 2.0 queries",
                ));
            }
            _ => {}
        }
    }
    let Some(from) = from else {
        return Ok(());
    };
    for k in from + 1..toks.len() {
        if word(k, "OFFSET") {
            return Err(not_supported(
                "OFFSET is not supported in Bulk API 2.0 queries",
            ));
        }
        if word(k, "GROUP") && word(k + 1, "BY") {
            return Err(not_supported(
                "GROUP BY (aggregate queries) is not supported in Bulk API 2.0 queries",
            ));
        }
    }
    let Some((Tok::Word(object, _), 0)) = toks.get(from + 1) else {
        return Ok(());
    };
    // Select items that are a single path.
    let mut item: Vec<&Tok> = Vec::new();
    let check = |item: &[&Tok]| -> Result<(), BulkError> {
        if let [Tok::Word(path, _)] = item {
            if resolve_path(schema, object, path).is_some_and(is_compound) {
                return Err(compound_error());
            }
        }
        Ok(())
    };
    for (t, d) in &toks[select + 1..from] {
        if *d == 0 && *t == Tok::Punct(',') {
            check(&item)?;
            item.clear();
        } else {
            item.push(t);
        }
    }
    check(&item)
}

/// Refuses results that cannot be written as Bulk CSV (checked on the resolved query).
fn check_result(result: &QueryShape, schema: &Schema) -> Result<(), BulkError> {
    if result.is_count {
        return Err(not_supported(
            "Aggregate functions such as COUNT() are not supported in Bulk API 2.0 queries; query the rows and count them yourself",
        ));
    }
    for c in &result.columns {
        if resolve_path(schema, &result.object, c).is_some_and(is_compound) {
            return Err(compound_error());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Jobs

struct QueryInner {
    state: JobState,
    modstamp_ms: i64,
    terminal_ms: Option<i64>,
    error_message: Option<String>,
    processed: u64,
    total_ms: i64,
    deleted: bool,
    results: Option<Arc<RenderedResults>>,
}

/// One query job.
pub struct QueryJob {
    pub meta: JobMeta,
    pub operation: QueryOperation,
    pub query: String,
    pub object: String,
    inner: Mutex<QueryInner>,
}

/// One page of results.
pub struct Page {
    pub results: Arc<RenderedResults>,
    pub start: usize,
    pub end: usize,
    /// The `Sforce-Locator` value: the next page's locator or `null`.
    pub next_locator: String,
}

impl Page {
    pub fn rows(&self) -> usize {
        self.end - self.start
    }

    /// The page's bytes as zero-copy pieces (header first).
    pub fn pieces(&self) -> Vec<Bytes> {
        self.results
            .page_pieces(self.start, self.end)
            .iter()
            .map(|p| p.bytes())
            .collect()
    }

    /// The page as one gzip member when every piece is already compressed (no blocking work),
    /// with its total length.
    pub fn gzip_cached(&self) -> Option<(Vec<Bytes>, usize)> {
        let mut out = vec![Bytes::from_static(&GZIP_HEADER)];
        let mut trailer = GzTrailer::default();
        for piece in self.results.page_pieces(self.start, self.end) {
            let gz = piece.cached_gz()?;
            trailer.add(&gz);
            out.push(gz.deflated);
        }
        out.push(trailer.finish());
        let len = out.iter().map(Bytes::len).sum();
        Some((out, len))
    }

    /// Produces the page as one gzip member, piece by piece (whole chunks are compressed once
    /// and cached). Blocking; `send` returns false when the receiver is gone.
    pub fn write_gzip(&self, mut send: impl FnMut(Bytes) -> bool) {
        if !send(Bytes::from_static(&GZIP_HEADER)) {
            return;
        }
        let mut trailer = GzTrailer::default();
        for piece in self.results.page_pieces(self.start, self.end) {
            let gz = piece.gz();
            trailer.add(&gz);
            if !send(gz.deflated.clone()) {
                return;
            }
        }
        send(trailer.finish());
    }
}

/// Encodes a row offset as an opaque locator (like Salesforce's `MTAwMDA`).
pub fn encode_locator(row: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(row.to_string())
}

fn decode_locator(s: &str) -> Option<usize> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()?;
    std::str::from_utf8(&raw).ok()?.parse().ok()
}

impl QueryJob {
    pub(super) fn terminal_ms(&self) -> Option<i64> {
        self.inner.lock().terminal_ms
    }

    pub fn state(&self) -> JobState {
        self.inner.lock().state
    }

    /// The job info JSON (`GET /jobs/query/{id}`).
    pub fn info(&self) -> Value {
        let g = self.inner.lock();
        let meta = &self.meta;
        let mut m = info_head(
            meta,
            self.operation.as_str(),
            &self.object,
            g.modstamp_ms,
            g.state,
        );
        m.insert("concurrencyMode".into(), "Parallel".into());
        m.insert("contentType".into(), "CSV".into());
        m.insert("apiVersion".into(), api_version_number(&meta.api_version));
        m.insert("jobType".into(), "V2Query".into());
        m.insert("lineEnding".into(), meta.line_ending.as_str().into());
        m.insert("columnDelimiter".into(), meta.delimiter.as_str().into());
        m.insert("numberRecordsProcessed".into(), g.processed.into());
        m.insert("retries".into(), 0.into());
        m.insert("totalProcessingTime".into(), g.total_ms.into());
        m.insert("isPkChunkingSupported".into(), true.into());
        if let Some(e) = &g.error_message {
            m.insert("errorMessage".into(), e.clone().into());
        }
        Value::Object(m)
    }

    fn set_state(g: &mut QueryInner, state: JobState) {
        let now = now_ms();
        g.state = state;
        g.modstamp_ms = now;
        if state.is_terminal() && g.terminal_ms.is_none() {
            g.terminal_ms = Some(now);
        }
    }

    /// A page of results starting at `locator` (none = the first row) with at most
    /// `max_records` rows (default `default_rows`), requested with API version `api_version`.
    pub fn page(
        &self,
        api_version: &str,
        locator: Option<&str>,
        max_records: Option<&str>,
        default_rows: usize,
    ) -> Result<Page, BulkError> {
        let id = self.meta.id;
        if api_version != self.meta.api_version {
            return Err(BulkError::new(
                409,
                "InvalidJob",
                format!(
                    "Job {id} was created with API version {v}; request its results with /services/data/v{v}/jobs/query/{id}/results (this request used v{api_version})",
                    v = self.meta.api_version
                ),
            ));
        }
        let g = self.inner.lock();
        let results = match (g.state, &g.results) {
            (JobState::JobComplete, Some(r)) => r.clone(),
            (JobState::UploadComplete | JobState::InProgress, _) => {
                return Err(BulkError::new(
                    412,
                    "JOB_NOT_COMPLETE",
                    format!(
                        "Job {id} is {}; its results can be retrieved once it is JobComplete",
                        g.state.as_str()
                    ),
                ))
            }
            (state, _) => {
                return Err(BulkError::new(
                    400,
                    "InvalidJobState",
                    format!("Job {id} is {}; it has no results", state.as_str()),
                ))
            }
        };
        drop(g);
        let total = results.total_rows;
        let start = match locator.filter(|l| !l.is_empty()) {
            None => 0,
            Some(l) => decode_locator(l).filter(|&r| r <= total).ok_or_else(|| {
                BulkError::new(
                    400,
                    "ClientInputError",
                    format!("Invalid locator '{l}' for job {id}; use the Sforce-Locator header of the previous page"),
                )
            })?,
        };
        let rows = match max_records.filter(|m| !m.is_empty()) {
            None => default_rows.max(1),
            Some(m) => match m.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(BulkError::new(
                        400,
                        "ClientInputError",
                        format!(
                            "Invalid maxRecords '{m}' for job {id}; it must be a positive integer"
                        ),
                    ))
                }
            },
        };
        let end = start.saturating_add(rows).min(total);
        let next_locator = if end < total {
            encode_locator(end)
        } else {
            "null".to_string()
        };
        Ok(Page {
            results,
            start,
            end,
            next_locator,
        })
    }
}

impl BulkJobs {
    /// Creates a query job: counts it against the daily allocation, refuses what Bulk queries do
    /// not support, resolves the query (400 on a bad query) and starts reading it into CSV.
    /// `gzip_hint` (the creating request accepted gzip) lets rendering pre-compress the chunks
    /// when [`super::BulkSettings::precompress_gzip`] is on.
    pub async fn create_query(
        &self,
        created_by: SfId,
        api_version: &str,
        req: QueryRequest,
        gzip_hint: bool,
    ) -> Result<Arc<QueryJob>, BulkError> {
        self.limits
            .take_query_job()
            .map_err(|e| BulkError::new(400, &e.error_code, e.message))?;
        let schema = self.org.schema();
        check_bulk_restrictions(&req.query, &schema)?;
        // Parse and resolve every name now (a bad query is a 400 right away); the rows are read
        // and rendered by the job.
        let result = self.org.query_shape(&req.query).map_err(query_error)?;
        check_result(&result, &schema)?;
        let meta = self.new_meta(created_by, api_version, req.delimiter, req.line_ending);
        let now = meta.created_ms;
        let job = Arc::new(QueryJob {
            meta,
            operation: req.operation,
            query: req.query,
            object: result.object.clone(),
            inner: Mutex::new(QueryInner {
                state: JobState::UploadComplete,
                modstamp_ms: now,
                terminal_ms: None,
                error_message: None,
                processed: 0,
                total_ms: 0,
                deleted: false,
                results: None,
            }),
        });
        self.insert(Job::Query(job.clone()));
        self.spawn_render(job.clone(), gzip_hint);
        Ok(job)
    }

    /// Evaluates the query straight into CSV chunks (`Org::query_csv`, one read-locked snapshot
    /// taken as soon as the job exists) and publishes the results after the processing delay.
    fn spawn_render(&self, job: Arc<QueryJob>, gzip_hint: bool) {
        let settings = self.settings();
        let delay = settings.processing_delay;
        let precompress = settings.precompress_gzip && gzip_hint;
        let org = self.org.clone();
        let soql = job.query.clone();
        let include_deleted = job.operation == QueryOperation::QueryAll;
        let delimiter = job.meta.delimiter;
        let line_ending = job.meta.line_ending;
        let started = Instant::now();
        let rendering = tokio::task::spawn_blocking(move || {
            let threads = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            let opts = CsvQueryOptions {
                delimiter: delimiter.byte(),
                crlf: line_ending == super::LineEnding::Crlf,
                chunk_rows: CHUNK_ROWS,
                threads,
            };
            let csv = org.query_csv(&soql, include_deleted, &opts)?;
            let total = csv.total_rows;
            let chunks = csv
                .chunks
                .into_iter()
                .map(|c| (c.bytes, c.offsets))
                .collect();
            // Gzip pieces are computed after JobComplete (below), while pages are downloaded.
            Ok::<_, SfError>(results_from_chunks(
                csv.header, chunks, total, threads, false,
            ))
        });
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            {
                let mut g = job.inner.lock();
                if g.deleted || g.state != JobState::UploadComplete {
                    return;
                }
                QueryJob::set_state(&mut g, JobState::InProgress);
            }
            let rendered = rendering.await;
            let mut g = job.inner.lock();
            g.total_ms = started.elapsed().as_millis() as i64;
            if g.deleted || g.state != JobState::InProgress {
                return;
            }
            match rendered {
                Ok(Ok(r)) => {
                    g.processed = r.total_rows as u64;
                    let r = Arc::new(r);
                    g.results = Some(r.clone());
                    QueryJob::set_state(&mut g, JobState::JobComplete);
                    drop(g);
                    if precompress {
                        // Compress in the background, first chunks first, so the job completes
                        // as soon as the CSV exists and compression overlaps the downloads (a
                        // page asking for a chunk being compressed waits for it, never redoes it).
                        let threads = std::thread::available_parallelism()
                            .map(|n| n.get())
                            .unwrap_or(1);
                        tokio::task::spawn_blocking(move || r.precompress(threads));
                    }
                }
                Ok(Err(e)) => {
                    g.error_message = Some(format!("{} : {}", e.error_code, e.message));
                    QueryJob::set_state(&mut g, JobState::Failed);
                }
                Err(e) => {
                    g.error_message = Some(format!(
                        "InternalError : rendering the results of job {} stopped unexpectedly: {e}",
                        job.meta.id
                    ));
                    QueryJob::set_state(&mut g, JobState::Failed);
                }
            }
        });
    }

    /// `PATCH {"state": "Aborted"}` on a query job.
    pub fn patch_query(&self, job: &QueryJob, target: JobState) -> Result<(), BulkError> {
        let mut g = job.inner.lock();
        match (g.state, target) {
            (JobState::UploadComplete | JobState::InProgress, JobState::Aborted) => {
                QueryJob::set_state(&mut g, JobState::Aborted);
                Ok(())
            }
            (from, _) => Err(BulkError::new(
                400,
                "InvalidJobState",
                format!(
                    "Job {} is {}; it cannot be changed to {} (a query job can only be Aborted while UploadComplete or InProgress)",
                    job.meta.id,
                    from.as_str(),
                    target.as_str()
                ),
            )),
        }
    }

    /// `DELETE` a query job and its results.
    pub fn delete_query(&self, job: &QueryJob) -> Result<(), BulkError> {
        let mut g = job.inner.lock();
        g.state.check_deletable(&job.meta.id)?;
        g.deleted = true;
        g.results = None;
        drop(g);
        self.remove(job.meta.id);
        Ok(())
    }
}

/// A SOQL error as a Bulk error (always 400, Salesforce's code and message).
fn query_error(e: SfError) -> BulkError {
    BulkError::new(400, &e.error_code, e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locators_round_trip_and_look_like_salesforce() {
        assert_eq!(encode_locator(10000), "MTAwMDA");
        assert_eq!(decode_locator("MTAwMDA"), Some(10000));
        assert_eq!(decode_locator("MTAwMDA="), Some(10000));
        assert_eq!(decode_locator("null"), None);
        assert_eq!(decode_locator("!!"), None);
    }

    #[test]
    fn restrictions_are_found_outside_literals() {
        let schema = Schema::default();
        assert!(
            check_bulk_restrictions("SELECT Id FROM Account LIMIT 10 OFFSET 5", &schema).is_err()
        );
        assert!(check_bulk_restrictions("SELECT COUNT() FROM Account", &schema).is_err());
        assert!(check_bulk_restrictions(
            "SELECT Name, count(Id) FROM Account GROUP BY Name",
            &schema
        )
        .is_err());
        assert!(check_bulk_restrictions(
            "SELECT Id, (SELECT Id FROM Contacts) FROM Account",
            &schema
        )
        .is_err());
        assert!(
            check_bulk_restrictions("SELECT Id FROM Account WHERE Name = 'OFFSET 5'", &schema)
                .is_ok()
        );
        assert!(check_bulk_restrictions(
            "SELECT Id FROM Contact WHERE AccountId IN (SELECT Id FROM Account)",
            &schema
        )
        .is_ok());
    }
}
