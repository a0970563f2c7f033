//! Bulk API 2.0 ingest jobs. Uploaded CSV is kept verbatim until `UploadComplete`; processing
//! then reads it strictly (see `csv_reader`), converts each row into one DML operation and runs
//! the rows in batches of 10,000, each batch one org transaction (`all_or_none = false`) with the
//! call context captured when the job was created, so CDC sees the Bulk API change origin and
//! the caller's `client=`. Every uploaded row lands in exactly one of successfulResults,
//! failedResults (with `CODE:message:fields` naming the row and column) or unprocessedrecords
//! (job aborted, failed or out of allocation). Header problems fail the whole job with
//! Salesforce's `InvalidBatch : …` message; row problems never stop the job.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use sfsync_core::SfId;
use sfsync_org::{CallContext, DmlOp, DmlOutcome, FieldDef, ObjectDef, Org, Schema, SfError};

use super::csv_reader::{CsvReader, Record};
use super::csv_writer::{push_minimal, push_quoted};
use super::{
    api_version_number, csv_format, info_head, now_ms, reject_unknown, string_prop, BulkJobs,
    BulkSettings, ColumnDelimiter, Job, JobMeta, JobState, LineEnding,
};
use crate::http::error::BulkError;
use crate::limits::Limits;

/// Most columns a header may have (Salesforce: 5,000 fields per record).
pub const MAX_COLUMNS: usize = 5_000;
/// Longest header row, in characters.
pub const MAX_HEADER_CHARS: usize = 32_000;
/// Longest field value, in characters (Bulk API field limit).
pub const MAX_FIELD_CHARS: usize = 131_072;
/// Longest record, in characters.
pub const MAX_RECORD_CHARS: usize = 400_000;

/// Ingest `operation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOperation {
    Insert,
    Update,
    Upsert,
    Delete,
    HardDelete,
}

impl IngestOperation {
    pub fn parse(s: &str) -> Option<IngestOperation> {
        Some(match s {
            "insert" => IngestOperation::Insert,
            "update" => IngestOperation::Update,
            "upsert" => IngestOperation::Upsert,
            "delete" => IngestOperation::Delete,
            "hardDelete" => IngestOperation::HardDelete,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IngestOperation::Insert => "insert",
            IngestOperation::Update => "update",
            IngestOperation::Upsert => "upsert",
            IngestOperation::Delete => "delete",
            IngestOperation::HardDelete => "hardDelete",
        }
    }

    fn is_delete(self) -> bool {
        matches!(self, IngestOperation::Delete | IngestOperation::HardDelete)
    }
}

/// A validated `POST /jobs/ingest` body.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    /// Canonical object name.
    pub object: String,
    pub operation: IngestOperation,
    /// Canonical external id field name (upsert only).
    pub external_id_field: Option<String>,
    pub assignment_rule_id: Option<String>,
    pub delimiter: ColumnDelimiter,
    pub line_ending: LineEnding,
}

fn invalid_job(message: impl Into<String>) -> BulkError {
    BulkError::new(400, "InvalidJob", message)
}

impl IngestRequest {
    /// Validates a create-job body against the org's schema.
    pub fn parse(body: &Map<String, Value>, schema: &Schema) -> Result<IngestRequest, BulkError> {
        reject_unknown(
            body,
            &[
                "object",
                "operation",
                "externalIdFieldName",
                "contentType",
                "lineEnding",
                "columnDelimiter",
                "assignmentRuleId",
                "concurrencyMode",
            ],
        )?;
        let (delimiter, line_ending) = csv_format(body)?;
        let object_name = string_prop(body, "object")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid_job("The job must name an object (property \"object\")"))?;
        let operation_name = string_prop(body, "operation")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                invalid_job("The job must name an operation (property \"operation\")")
            })?;
        let operation = IngestOperation::parse(&operation_name).ok_or_else(|| {
            BulkError::new(
                400,
                "ClientInputError",
                format!("Invalid operation '{operation_name}'; expected one of insert, update, upsert, delete, hardDelete"),
            )
        })?;
        let object = schema
            .object(&object_name)
            .ok_or_else(|| invalid_job(format!("Unable to find object: {object_name}")))?;
        let external_id_field = if operation == IngestOperation::Upsert {
            let name = string_prop(body, "externalIdFieldName")?
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| {
                    invalid_job(format!(
                        "External ID was blank for {}. An External ID must be specified for upsert.",
                        object.name
                    ))
                })?;
            let field = object.field(&name).ok_or_else(|| {
                invalid_job(format!(
                    "Field {name} does not exist on {}; externalIdFieldName must name Id or an External ID field",
                    object.name
                ))
            })?;
            if !(field.external_id || field.name == "Id") {
                return Err(invalid_job(format!(
                    "Field {}.{} is not an External ID field; upsert needs Id or a field marked External ID",
                    object.name, field.name
                )));
            }
            Some(field.name.clone())
        } else {
            None
        };
        let assignment_rule_id = string_prop(body, "assignmentRuleId")?;
        if let Some(m) = string_prop(body, "concurrencyMode")? {
            if m != "Parallel" {
                return Err(BulkError::new(
                    400,
                    "ClientInputError",
                    format!(
                        "Invalid concurrencyMode '{m}'; Bulk API 2.0 jobs run in Parallel mode"
                    ),
                ));
            }
        }
        Ok(IngestRequest {
            object: object.name.clone(),
            operation,
            external_id_field,
            assignment_rule_id,
            delimiter,
            line_ending,
        })
    }
}

/// The original text of a row, for echoing in result files.
#[derive(Debug, Clone)]
enum Orig {
    /// Bytes `start..end` of upload `part`, exactly as sent.
    Raw { part: u32, start: u32, end: u32 },
    /// Re-encoded cells (rows that could not be echoed verbatim).
    Cells(Box<[String]>),
}

#[derive(Debug, Clone)]
enum RowResult {
    Success { id: SfId, created: bool },
    Failed { id: String, error: String },
    Unprocessed,
}

#[derive(Debug, Clone)]
struct RowOutcome {
    orig: Orig,
    result: RowResult,
}

struct IngestInner {
    state: JobState,
    modstamp_ms: i64,
    terminal_ms: Option<i64>,
    uploads: Vec<Bytes>,
    upload_bytes: usize,
    processed: u64,
    failed: u64,
    error_message: Option<String>,
    total_ms: i64,
    api_ms: i64,
    deleted: bool,
    /// The original header cells (set once the header was read).
    header: Option<Vec<String>>,
    outcomes: Vec<RowOutcome>,
    /// True when the rows were never parsed (aborted while open, or failed on the header):
    /// unprocessedrecords is then the uploads themselves.
    raw_unprocessed: bool,
}

/// One ingest job.
pub struct IngestJob {
    pub meta: JobMeta,
    pub object: String,
    pub operation: IngestOperation,
    pub external_id_field: Option<String>,
    pub assignment_rule_id: Option<String>,
    ctx: CallContext,
    inner: Mutex<IngestInner>,
}

impl IngestJob {
    pub fn state(&self) -> JobState {
        self.inner.lock().state
    }

    pub(super) fn terminal_ms(&self) -> Option<i64> {
        self.inner.lock().terminal_ms
    }

    /// The job info JSON (`GET /jobs/ingest/{id}`).
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
        if let Some(f) = &self.external_id_field {
            m.insert("externalIdFieldName".into(), f.clone().into());
        }
        if let Some(a) = &self.assignment_rule_id {
            m.insert("assignmentRuleId".into(), a.clone().into());
        }
        m.insert("concurrencyMode".into(), "Parallel".into());
        m.insert("contentType".into(), "CSV".into());
        m.insert("apiVersion".into(), api_version_number(&meta.api_version));
        m.insert("jobType".into(), "V2Ingest".into());
        m.insert(
            "contentUrl".into(),
            format!(
                "services/data/v{}/jobs/ingest/{}/batches",
                meta.api_version,
                meta.id.as_str()
            )
            .into(),
        );
        m.insert("lineEnding".into(), meta.line_ending.as_str().into());
        m.insert("columnDelimiter".into(), meta.delimiter.as_str().into());
        m.insert("numberRecordsProcessed".into(), g.processed.into());
        m.insert("numberRecordsFailed".into(), g.failed.into());
        m.insert("retries".into(), 0.into());
        m.insert("totalProcessingTime".into(), g.total_ms.into());
        m.insert("apiActiveProcessingTime".into(), g.api_ms.into());
        m.insert("apexProcessingTime".into(), 0.into());
        if let Some(e) = &g.error_message {
            m.insert("errorMessage".into(), e.clone().into());
        }
        Value::Object(m)
    }

    fn set_state(g: &mut IngestInner, state: JobState) {
        let now = now_ms();
        g.state = state;
        g.modstamp_ms = now;
        if state.is_terminal() && g.terminal_ms.is_none() {
            g.terminal_ms = Some(now);
        }
    }

    fn should_stop(&self) -> bool {
        let g = self.inner.lock();
        g.deleted || g.state == JobState::Aborted
    }

    /// Marks the job Failed (unless it was aborted meanwhile).
    fn fail(&self, message: String) {
        let mut g = self.inner.lock();
        if g.state == JobState::Aborted {
            return;
        }
        tracing::info!(job = %self.meta.id, error = %message, "Bulk ingest job failed");
        g.error_message = Some(message);
        Self::set_state(&mut g, JobState::Failed);
    }

    fn push_outcomes(&self, rows: Vec<RowOutcome>, processed: u64, failed: u64, api_ms: i64) {
        let mut g = self.inner.lock();
        g.outcomes.extend(rows);
        g.processed += processed;
        g.failed += failed;
        g.api_ms += api_ms;
        g.modstamp_ms = now_ms();
    }
}

impl BulkJobs {
    /// Creates an ingest job in state `Open`.
    pub fn create_ingest(&self, ctx: CallContext, req: IngestRequest) -> Arc<IngestJob> {
        let meta = self.new_meta(
            ctx.user_id,
            &ctx.api_version,
            req.delimiter,
            req.line_ending,
        );
        let now = meta.created_ms;
        let job = Arc::new(IngestJob {
            meta,
            object: req.object,
            operation: req.operation,
            external_id_field: req.external_id_field,
            assignment_rule_id: req.assignment_rule_id,
            ctx,
            inner: Mutex::new(IngestInner {
                state: JobState::Open,
                modstamp_ms: now,
                terminal_ms: None,
                uploads: Vec::new(),
                upload_bytes: 0,
                processed: 0,
                failed: 0,
                error_message: None,
                total_ms: 0,
                api_ms: 0,
                deleted: false,
                header: None,
                outcomes: Vec::new(),
                raw_unprocessed: false,
            }),
        });
        self.insert(Job::Ingest(job.clone()));
        job
    }

    /// Appends one upload of CSV data to an open job.
    pub fn upload(&self, job: &IngestJob, data: Bytes) -> Result<(), BulkError> {
        let settings = self.settings();
        let mut g = job.inner.lock();
        if g.state != JobState::Open {
            return Err(BulkError::new(
                409,
                "InvalidJobState",
                format!(
                    "Job {} is {}; data can only be uploaded while a job is Open",
                    job.meta.id,
                    g.state.as_str()
                ),
            ));
        }
        if g.upload_bytes + data.len() > settings.max_job_bytes {
            return Err(BulkError::new(
                413,
                "ClientInputError",
                format!(
                    "Job {} would hold {} bytes of data; the emulator keeps at most {} bytes per job — split the data into several jobs",
                    job.meta.id,
                    g.upload_bytes + data.len(),
                    settings.max_job_bytes
                ),
            ));
        }
        g.upload_bytes += data.len();
        g.uploads.push(data);
        g.modstamp_ms = now_ms();
        Ok(())
    }

    /// `PATCH` to `UploadComplete` (starts processing) or `Aborted`.
    pub fn patch_ingest(&self, job: &Arc<IngestJob>, target: JobState) -> Result<(), BulkError> {
        let mut g = job.inner.lock();
        let from = g.state;
        match (from, target) {
            (JobState::Open, JobState::UploadComplete) => {
                IngestJob::set_state(&mut g, JobState::UploadComplete);
                drop(g);
                self.spawn_ingest(job.clone());
                Ok(())
            }
            (JobState::Open | JobState::UploadComplete | JobState::InProgress, JobState::Aborted) => {
                if from != JobState::InProgress {
                    g.raw_unprocessed = true;
                }
                IngestJob::set_state(&mut g, JobState::Aborted);
                Ok(())
            }
            _ => Err(BulkError::new(
                400,
                "InvalidJobState",
                format!(
                    "Job {} is {}; it cannot be changed to {} (allowed: Open → UploadComplete; Open, UploadComplete or InProgress → Aborted)",
                    job.meta.id,
                    from.as_str(),
                    target.as_str()
                ),
            )),
        }
    }

    /// `DELETE` an ingest job.
    pub fn delete_ingest(&self, job: &IngestJob) -> Result<(), BulkError> {
        let mut g = job.inner.lock();
        g.state.check_deletable(&job.meta.id)?;
        g.deleted = true;
        g.uploads.clear();
        g.outcomes.clear();
        drop(g);
        self.remove(job.meta.id);
        Ok(())
    }

    fn spawn_ingest(&self, job: Arc<IngestJob>) {
        let org = self.org.clone();
        let limits = self.limits.clone();
        let settings = self.settings();
        tokio::spawn(async move {
            if !settings.processing_delay.is_zero() {
                tokio::time::sleep(settings.processing_delay).await;
            }
            {
                let mut g = job.inner.lock();
                if g.deleted || g.state != JobState::UploadComplete {
                    return;
                }
                IngestJob::set_state(&mut g, JobState::InProgress);
            }
            let started = Instant::now();
            let worker = job.clone();
            let result = tokio::task::spawn_blocking(move || {
                process(&worker, &org, &limits, &settings);
            })
            .await;
            let mut g = job.inner.lock();
            g.total_ms = started.elapsed().as_millis() as i64;
            if let Err(e) = result {
                drop(g);
                job.fail(format!(
                    "InternalError : processing of job {} stopped unexpectedly: {e}",
                    job.meta.id
                ));
                return;
            }
            if g.state == JobState::InProgress {
                IngestJob::set_state(&mut g, JobState::JobComplete);
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Processing

/// What a header column means.
#[derive(Debug, Clone)]
enum Role {
    /// A field of the object.
    Field(FieldDef),
    /// The `Id` column.
    Id,
    /// A relationship column `Rel.Field`: sets `reference_field` to the parent found by
    /// `target_object.target_field`.
    Relationship {
        reference_field: String,
        target_object: String,
        target_field: String,
    },
    /// A column the operation does not use (non-Id columns of a delete).
    Ignored,
}

struct Plan {
    columns: Vec<String>,
    roles: Vec<Role>,
    /// Column of the record id (update, delete, upsert on Id).
    id_column: Option<usize>,
    /// Column of the external id (upsert on a custom field).
    ext_column: Option<usize>,
}

fn not_found_column(job: &IngestJob, name: &str, k: usize) -> String {
    format!(
        "InvalidBatch : Field name not found : {name} (job {}, header column {}, object {})",
        job.meta.id,
        k + 1,
        job.object
    )
}

fn relationship_role(schema: &Schema, object: &ObjectDef, name: &str) -> Option<Role> {
    let (rel, target_field) = name.split_once('.')?;
    if target_field.contains('.') {
        return None;
    }
    let reference = object.fields.iter().find(|f| {
        f.relationship_name
            .as_deref()
            .is_some_and(|r| r.eq_ignore_ascii_case(rel))
    })?;
    let (target_object, field) = reference.reference_to.iter().find_map(|t| {
        let o = schema.object(t)?;
        let f = o.field(target_field)?;
        Some((o.name.clone(), f.name.clone()))
    })?;
    Some(Role::Relationship {
        reference_field: reference.name.clone(),
        target_object,
        target_field: field,
    })
}

fn build_plan(job: &IngestJob, schema: &Schema, names: &[String]) -> Result<Plan, String> {
    let object = schema.object(&job.object).ok_or_else(|| {
        format!(
            "InvalidJob : Unable to find object: {} (job {})",
            job.object, job.meta.id
        )
    })?;
    let mut roles = Vec::with_capacity(names.len());
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut id_column = None;
    let mut ext_column = None;
    for (k, name) in names.iter().enumerate() {
        if name.is_empty() {
            return Err(format!(
                "InvalidBatch : Field name not found :  (job {}, header column {} is empty)",
                job.meta.id,
                k + 1
            ));
        }
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(format!(
                "InvalidBatch : Duplicate field name : {name} (job {}, header column {})",
                job.meta.id,
                k + 1
            ));
        }
        let role = if name.eq_ignore_ascii_case("Id") {
            id_column = Some(k);
            Role::Id
        } else if job.operation.is_delete() {
            Role::Ignored
        } else if name.contains('.') {
            relationship_role(schema, object, name).ok_or_else(|| not_found_column(job, name, k))?
        } else {
            let f = object
                .field(name)
                .ok_or_else(|| not_found_column(job, name, k))?;
            if job.external_id_field.as_deref() == Some(f.name.as_str()) {
                ext_column = Some(k);
            }
            Role::Field(f.clone())
        };
        roles.push(role);
    }
    let need = |what: &str| {
        format!(
            "InvalidBatch : Field name not found : {what} (job {}: the {} operation needs a {what} column in the header)",
            job.meta.id,
            job.operation.as_str()
        )
    };
    match job.operation {
        IngestOperation::Update | IngestOperation::Delete | IngestOperation::HardDelete => {
            if id_column.is_none() {
                return Err(need("Id"));
            }
        }
        IngestOperation::Upsert => {
            let ext = job.external_id_field.as_deref().unwrap_or("Id");
            if ext == "Id" {
                if id_column.is_none() {
                    return Err(need("Id"));
                }
            } else if ext_column.is_none() {
                return Err(need(ext));
            }
        }
        IngestOperation::Insert => {}
    }
    Ok(Plan {
        columns: names.to_vec(),
        roles,
        id_column,
        ext_column,
    })
}

/// A row that failed before reaching the org: (the id to echo in `sf__Id`, the error cell).
type RowError = (String, String);

/// A row made ready for its batch.
struct Prepared {
    orig: Orig,
    op: Result<DmlOp, RowError>,
}

fn row_error(code: &str, message: String, fields: &str) -> String {
    format!("{code}:{message}:{fields}")
}

fn cells_orig(cells: &[std::borrow::Cow<'_, [u8]>], width: usize) -> Orig {
    let mut v: Vec<String> = cells
        .iter()
        .take(width)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    v.resize(width, String::new());
    Orig::Cells(v.into_boxed_slice())
}

fn raw_orig(part: usize, rec: &Record<'_>) -> Orig {
    Orig::Raw {
        part: part as u32,
        start: rec.range.start as u32,
        end: rec.range.end as u32,
    }
}

/// Turns one CSV record into a DML operation or a row error.
fn prepare(
    job: &IngestJob,
    org: &Org,
    plan: &Plan,
    part: usize,
    row_no: u64,
    rec: &Record<'_>,
) -> Prepared {
    let width = plan.columns.len();
    let at = |col: Option<usize>| match col {
        Some(k) => format!(
            "row {row_no} (line {}), column {} ({})",
            rec.line,
            k + 1,
            plan.columns[k]
        ),
        None => format!("row {row_no} (line {})", rec.line),
    };
    let fail = |orig: Orig, code: &str, message: String, fields: &str| Prepared {
        orig,
        op: Err((String::new(), row_error(code, message, fields))),
    };
    if let Some(err) = &rec.error {
        return fail(
            cells_orig(&rec.cells, width),
            "InvalidBatch",
            format!("Job {}, {}: {}", job.meta.id, at(None), err.describe()),
            "--",
        );
    }
    if rec.cell_count != width {
        return fail(
            cells_orig(&rec.cells, width),
            "InvalidBatch",
            format!(
                "Job {}, {}: the row has {} values but the header has {} columns",
                job.meta.id,
                at(None),
                rec.cell_count,
                width
            ),
            "--",
        );
    }
    let orig = raw_orig(part, rec);
    if rec.range.len() > MAX_RECORD_CHARS {
        let chars = String::from_utf8_lossy(&rec.cells.concat()).chars().count();
        if chars > MAX_RECORD_CHARS {
            return fail(
                orig,
                "InvalidBatch",
                format!(
                    "Job {}, {}: the record has {chars} characters; a record can have at most {MAX_RECORD_CHARS}",
                    job.meta.id,
                    at(None)
                ),
                "--",
            );
        }
    }
    let mut texts: Vec<&str> = Vec::with_capacity(width);
    for (k, c) in rec.cells.iter().enumerate() {
        let Ok(s) = std::str::from_utf8(c) else {
            return fail(
                orig,
                "InvalidBatch",
                format!(
                    "Job {}, {}: the value is not valid UTF-8",
                    job.meta.id,
                    at(Some(k))
                ),
                &plan.columns[k],
            );
        };
        if s.as_bytes().contains(&0) {
            return fail(
                orig,
                "InvalidBatch",
                format!(
                    "Job {}, {}: the value contains a NUL character (\\0), which Salesforce cannot store",
                    job.meta.id,
                    at(Some(k))
                ),
                &plan.columns[k],
            );
        }
        if s.len() > MAX_FIELD_CHARS {
            let n = s.chars().count();
            if n > MAX_FIELD_CHARS {
                return fail(
                    orig,
                    "STRING_TOO_LONG",
                    format!(
                        "Job {}, {}: data value too large: {n} characters (Bulk API limit {MAX_FIELD_CHARS} per field)",
                        job.meta.id,
                        at(Some(k))
                    ),
                    &plan.columns[k],
                );
            }
        }
        texts.push(s);
    }
    let id_value = plan.id_column.map(|k| texts[k]).unwrap_or("");
    let id_value = if id_value == "#N/A" { "" } else { id_value };
    let echo_id = id_value.to_string();
    let fail_id = |message: String| Prepared {
        orig: orig.clone(),
        op: Err((echo_id.clone(), message)),
    };
    if job.operation.is_delete() {
        if id_value.is_empty() {
            return fail_id(row_error(
                "MISSING_ARGUMENT",
                format!("Id not specified in a delete call ({})", at(plan.id_column)),
                "Id",
            ));
        }
        let op = if job.operation == IngestOperation::Delete {
            DmlOp::Delete {
                id: id_value.to_string(),
            }
        } else {
            DmlOp::HardDelete {
                id: id_value.to_string(),
            }
        };
        return Prepared { orig, op: Ok(op) };
    }
    let mut fields = Map::new();
    for (k, role) in plan.roles.iter().enumerate() {
        let text = texts[k];
        if text.is_empty() {
            continue;
        }
        match role {
            Role::Id | Role::Ignored => {}
            Role::Field(f) => {
                if Some(k) == plan.ext_column {
                    continue;
                }
                if text == "#N/A" {
                    fields.insert(f.name.clone(), Value::Null);
                    continue;
                }
                match sfsync_org::value::parse_text_value(f, text) {
                    Ok(v) => {
                        fields.insert(f.name.clone(), v);
                    }
                    Err(e) => return fail_id(with_location(e, &at(Some(k)))),
                }
            }
            Role::Relationship {
                reference_field,
                target_object,
                target_field,
            } => {
                if text == "#N/A" {
                    fields.insert(reference_field.clone(), Value::Null);
                    continue;
                }
                if target_field == "Id" {
                    fields.insert(reference_field.clone(), Value::String(text.to_string()));
                    continue;
                }
                match org.find_by_external_id(target_object, target_field, text) {
                    Ok(ids) if ids.len() == 1 => {
                        fields.insert(reference_field.clone(), Value::String(ids[0].as_str().to_string()));
                    }
                    Ok(ids) if ids.is_empty() => {
                        return fail_id(row_error(
                            "INVALID_FIELD",
                            format!(
                                "Foreign key external ID: {text} not found for field {target_field} in entity {target_object} ({})",
                                at(Some(k))
                            ),
                            &plan.columns[k],
                        ))
                    }
                    Ok(ids) => {
                        return fail_id(row_error(
                            "INVALID_FIELD",
                            format!(
                                "Foreign key external ID: {text} matched {} records for field {target_field} in entity {target_object} ({})",
                                ids.len(),
                                at(Some(k))
                            ),
                            &plan.columns[k],
                        ))
                    }
                    Err(e) => return fail_id(with_location(e, &at(Some(k)))),
                }
            }
        }
    }
    let object = job.object.clone();
    let op = match job.operation {
        IngestOperation::Insert => {
            if !id_value.is_empty() {
                return fail_id(row_error(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    format!(
                        "Unable to create/update fields: Id; an insert cannot set Id ({})",
                        at(plan.id_column)
                    ),
                    "Id",
                ));
            }
            DmlOp::Insert { object, fields }
        }
        IngestOperation::Update => {
            if id_value.is_empty() {
                return fail_id(row_error(
                    "MISSING_ARGUMENT",
                    format!(
                        "Id not specified in an update call ({})",
                        at(plan.id_column)
                    ),
                    "Id",
                ));
            }
            DmlOp::Update {
                object,
                id: id_value.to_string(),
                fields,
            }
        }
        IngestOperation::Upsert => {
            let ext = job
                .external_id_field
                .clone()
                .unwrap_or_else(|| "Id".to_string());
            if ext == "Id" {
                if id_value.is_empty() {
                    DmlOp::Insert { object, fields }
                } else {
                    DmlOp::Upsert {
                        object,
                        external_id_field: ext,
                        external_id: id_value.to_string(),
                        fields,
                    }
                }
            } else {
                let value = plan.ext_column.map(|k| texts[k]).unwrap_or("");
                if value.is_empty() || value == "#N/A" {
                    return fail_id(row_error(
                        "MISSING_ARGUMENT",
                        format!("{ext} not specified ({})", at(plan.ext_column)),
                        &ext,
                    ));
                }
                DmlOp::Upsert {
                    object,
                    external_id_field: ext,
                    external_id: value.to_string(),
                    fields,
                }
            }
        }
        IngestOperation::Delete | IngestOperation::HardDelete => unreachable!("handled above"),
    };
    Prepared { orig, op: Ok(op) }
}

fn with_location(e: SfError, at: &str) -> String {
    let fields = if e.fields.is_empty() {
        "--".to_string()
    } else {
        e.fields.join(",")
    };
    format!("{}:{} ({at}):{fields}", e.error_code, e.message)
}

/// Why processing stopped early.
enum Stop {
    Aborted,
    Failed,
}

struct Processor<'a> {
    job: &'a IngestJob,
    org: &'a Org,
    limits: &'a Limits,
    stop: Option<Stop>,
}

impl Processor<'_> {
    /// Runs one batch: checks for abort, takes the allocations, executes one transaction.
    fn run_batch(&mut self, batch: Vec<Prepared>) {
        if batch.is_empty() {
            return;
        }
        if self.stop.is_none() && self.job.should_stop() {
            self.stop = Some(Stop::Aborted);
        }
        if self.stop.is_none() {
            let n = batch.len() as u64;
            let taken = self
                .limits
                .take_bulk_batches(1)
                .and_then(|_| self.limits.take_ingest_records(n));
            if let Err(e) = taken {
                self.job.fail(format!(
                    "{} : {} (job {}; {} records were not processed)",
                    e.error_code, e.message, self.job.meta.id, n
                ));
                self.stop = Some(Stop::Failed);
            }
        }
        if self.stop.is_some() {
            let rows = batch
                .into_iter()
                .map(|p| RowOutcome {
                    orig: p.orig,
                    result: RowResult::Unprocessed,
                })
                .collect();
            self.job.push_outcomes(rows, 0, 0, 0);
            return;
        }
        let mut ops = Vec::with_capacity(batch.len());
        let mut slots = Vec::with_capacity(batch.len());
        // (original row, Ok(id to echo on failure) | Err(row error found before the DML))
        let mut pending: Vec<(Orig, Result<String, RowError>)> = Vec::with_capacity(batch.len());
        for p in batch {
            match p.op {
                Ok(op) => {
                    let echo = match &op {
                        DmlOp::Update { id, .. }
                        | DmlOp::Delete { id }
                        | DmlOp::HardDelete { id } => id.clone(),
                        DmlOp::Upsert {
                            external_id_field,
                            external_id,
                            ..
                        } if external_id_field == "Id" => external_id.clone(),
                        _ => String::new(),
                    };
                    slots.push(pending.len());
                    ops.push(op);
                    pending.push((p.orig, Ok(echo)));
                }
                Err(e) => pending.push((p.orig, Err(e))),
            }
        }
        let started = Instant::now();
        let results = if ops.is_empty() {
            Vec::new()
        } else {
            self.org.execute(&self.job.ctx, ops, false)
        };
        let api_ms = started.elapsed().as_millis() as i64;
        let mut dml: Vec<Option<sfsync_org::DmlResult>> =
            (0..pending.len()).map(|_| None).collect();
        for (slot, r) in slots.into_iter().zip(results) {
            dml[slot] = Some(r);
        }
        let mut failed = 0u64;
        let processed = pending.len() as u64;
        let mut rows = Vec::with_capacity(pending.len());
        for ((orig, prepared), r) in pending.into_iter().zip(dml) {
            let result = match (prepared, r) {
                (Err((id, error)), _) => RowResult::Failed { id, error },
                (Ok(_), Some(Ok(outcome))) => RowResult::Success {
                    id: outcome.id(),
                    created: matches!(outcome, DmlOutcome::Created(_)),
                },
                (Ok(echo), Some(Err(errors))) => RowResult::Failed {
                    id: echo,
                    error: if errors.is_empty() {
                        "UNKNOWN_EXCEPTION:the org reported a failure without an error:--"
                            .to_string()
                    } else {
                        errors
                            .iter()
                            .map(SfError::to_bulk_cell)
                            .collect::<Vec<_>>()
                            .join("; ")
                    },
                },
                (Ok(echo), None) => RowResult::Failed {
                    id: echo,
                    error: "UNKNOWN_EXCEPTION:the org returned no result for this row:--"
                        .to_string(),
                },
            };
            if matches!(result, RowResult::Failed { .. }) {
                failed += 1;
            }
            rows.push(RowOutcome { orig, result });
        }
        self.job.push_outcomes(rows, processed, failed, api_ms);
    }
}

/// Splits an upload into its header record and the reader positioned after it.
fn header_of<'a>(data: &'a [u8], delimiter: u8) -> (Option<Record<'a>>, CsvReader<'a>) {
    let mut r = CsvReader::new(data, delimiter, MAX_COLUMNS + 1);
    let h = r.next_record();
    (h, r)
}

fn header_names(
    job: &IngestJob,
    part: usize,
    header: Option<&Record<'_>>,
) -> Result<Vec<String>, String> {
    let id = job.meta.id;
    let Some(h) = header else {
        return Err(format!(
            "InvalidBatch : Upload {} of job {id} is empty; the first line must be a header row of field names",
            part + 1
        ));
    };
    if let Some(e) = &h.error {
        return Err(format!(
            "InvalidBatch : Cannot read the header row of upload {} of job {id}: {}",
            part + 1,
            e.describe()
        ));
    }
    if h.cell_count > MAX_COLUMNS {
        return Err(format!(
            "InvalidBatch : The header row of upload {} of job {id} has {} columns; a record can have at most {MAX_COLUMNS} fields",
            part + 1,
            h.cell_count
        ));
    }
    if h.range.len() > MAX_HEADER_CHARS {
        return Err(format!(
            "InvalidBatch : The header row of upload {} of job {id} is {} bytes long; the limit is {MAX_HEADER_CHARS} characters",
            part + 1,
            h.range.len()
        ));
    }
    h.cells
        .iter()
        .enumerate()
        .map(|(k, c)| {
            String::from_utf8(c.to_vec()).map_err(|_| {
                format!(
                    "InvalidBatch : Header column {} of upload {} of job {id} is not valid UTF-8",
                    k + 1,
                    part + 1
                )
            })
        })
        .collect()
}

/// Processes a job from `InProgress` to its end (runs on a blocking thread).
fn process(job: &IngestJob, org: &Org, limits: &Limits, settings: &BulkSettings) {
    let uploads = job.inner.lock().uploads.clone();
    let id = job.meta.id;
    let delimiter = job.meta.delimiter.byte();
    let fail_raw = |message: String| {
        job.inner.lock().raw_unprocessed = true;
        job.fail(message);
    };
    if uploads.is_empty() {
        fail_raw(format!(
            "InvalidBatch : No data was uploaded to job {id} before it was marked UploadComplete"
        ));
        return;
    }
    let mut readers = Vec::with_capacity(uploads.len());
    let mut names: Option<Vec<String>> = None;
    for (part, data) in uploads.iter().enumerate() {
        let (h, reader) = header_of(data, delimiter);
        let these = match header_names(job, part, h.as_ref()) {
            Ok(n) => n,
            Err(message) => return fail_raw(message),
        };
        match &names {
            None => {
                job.inner.lock().header = Some(these.clone());
                names = Some(these);
            }
            Some(first) => {
                let same = first.len() == these.len()
                    && first
                        .iter()
                        .zip(&these)
                        .all(|(a, b)| a.eq_ignore_ascii_case(b));
                if !same {
                    return fail_raw(format!(
                        "InvalidBatch : Upload {} of job {id} has the header [{}] but upload 1 has [{}]; every upload of a job must have the same header row",
                        part + 1,
                        these.join(","),
                        first.join(",")
                    ));
                }
            }
        }
        readers.push(reader);
    }
    let names = names.unwrap_or_default();
    let schema = org.schema();
    let plan = match build_plan(job, &schema, &names) {
        Ok(p) => p,
        Err(message) => return fail_raw(message),
    };
    let width = plan.columns.len();
    let mut processor = Processor {
        job,
        org,
        limits,
        stop: None,
    };
    let batch_records = settings.batch_records.max(1);
    let mut batch = Vec::with_capacity(batch_records.min(10_000));
    let mut row_no = 0u64;
    for (part, mut reader) in readers.into_iter().enumerate() {
        // Keep at most one cell more than the header so wrong counts are seen but bounded.
        reader.set_max_cells(width + 1);
        while let Some(rec) = reader.next_record() {
            row_no += 1;
            let prepared = if processor.stop.is_some() {
                Prepared {
                    orig: if rec.error.is_some() || rec.cell_count != width {
                        cells_orig(&rec.cells, width)
                    } else {
                        raw_orig(part, &rec)
                    },
                    op: Err((String::new(), String::new())),
                }
            } else {
                prepare(job, org, &plan, part, row_no, &rec)
            };
            batch.push(prepared);
            if batch.len() >= batch_records {
                processor.run_batch(std::mem::take(&mut batch));
            }
        }
    }
    processor.run_batch(batch);
}

// ---------------------------------------------------------------------------------------------
// Result files

/// Which result file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultKind {
    Successful,
    Failed,
    Unprocessed,
}

impl IngestJob {
    /// Renders a result file as CSV in the job's delimiter and line ending.
    pub fn results_csv(&self, kind: ResultKind) -> Result<Vec<u8>, BulkError> {
        let g = self.inner.lock();
        if kind != ResultKind::Unprocessed
            && matches!(g.state, JobState::Open | JobState::UploadComplete)
        {
            return Err(BulkError::new(
                400,
                "InvalidJobState",
                format!(
                    "Job {} is {}; its results are available once processing has started",
                    self.meta.id,
                    g.state.as_str()
                ),
            ));
        }
        let d = self.meta.delimiter.byte();
        let le = self.meta.line_ending.bytes();
        let header = g
            .header
            .clone()
            .or_else(|| original_header(&g.uploads, d))
            .unwrap_or_default();
        let width = header.len();
        let mut out = Vec::new();
        let write_header = |out: &mut Vec<u8>, prefix: &[&str]| {
            let mut first = true;
            for p in prefix {
                if !first {
                    out.push(d);
                }
                first = false;
                push_quoted(out, p.as_bytes());
            }
            for h in &header {
                if !first {
                    out.push(d);
                }
                first = false;
                push_minimal(out, h.as_bytes(), d);
            }
            out.extend_from_slice(le);
        };
        let write_orig = |out: &mut Vec<u8>, orig: &Orig| match orig {
            Orig::Raw { part, start, end } => {
                if let Some(data) = g.uploads.get(*part as usize) {
                    out.extend_from_slice(
                        data.get(*start as usize..*end as usize).unwrap_or_default(),
                    );
                }
            }
            Orig::Cells(cells) => {
                for (k, c) in cells.iter().enumerate().take(width) {
                    if k > 0 {
                        out.push(d);
                    }
                    push_minimal(out, c.as_bytes(), d);
                }
            }
        };
        match kind {
            ResultKind::Successful => {
                write_header(&mut out, &["sf__Id", "sf__Created"]);
                for o in &g.outcomes {
                    if let RowResult::Success { id, created } = &o.result {
                        push_quoted(&mut out, id.as_str().as_bytes());
                        out.push(d);
                        push_quoted(&mut out, if *created { b"true" } else { b"false" });
                        if width > 0 {
                            out.push(d);
                        }
                        write_orig(&mut out, &o.orig);
                        out.extend_from_slice(le);
                    }
                }
            }
            ResultKind::Failed => {
                write_header(&mut out, &["sf__Id", "sf__Error"]);
                for o in &g.outcomes {
                    if let RowResult::Failed { id, error } = &o.result {
                        push_quoted(&mut out, id.as_bytes());
                        out.push(d);
                        push_quoted(&mut out, error.as_bytes());
                        if width > 0 {
                            out.push(d);
                        }
                        write_orig(&mut out, &o.orig);
                        out.extend_from_slice(le);
                    }
                }
            }
            ResultKind::Unprocessed => {
                if g.raw_unprocessed || matches!(g.state, JobState::Open | JobState::UploadComplete)
                {
                    if width > 0 {
                        write_header(&mut out, &[]);
                    }
                    for data in &g.uploads {
                        let (h, reader) = header_of(data, d);
                        let readable = h.is_some_and(|h| h.error.is_none());
                        let rest = if readable {
                            &data[reader.position()..]
                        } else {
                            &data[..]
                        };
                        out.extend_from_slice(rest);
                        if !rest.is_empty() && !rest.ends_with(b"\n") {
                            out.extend_from_slice(le);
                        }
                    }
                } else {
                    write_header(&mut out, &[]);
                    for o in &g.outcomes {
                        if let RowResult::Unprocessed = o.result {
                            write_orig(&mut out, &o.orig);
                            out.extend_from_slice(le);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The header cells of the first upload, if it can be read.
fn original_header(uploads: &[Bytes], delimiter: u8) -> Option<Vec<String>> {
    let data = uploads.first()?;
    let (h, _) = header_of(data, delimiter);
    let h = h?;
    if h.error.is_some() {
        return None;
    }
    Some(
        h.cells
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect(),
    )
}
