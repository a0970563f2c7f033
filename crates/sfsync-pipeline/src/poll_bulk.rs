//! Polling a large backlog through Bulk API 2.0: when a poll round's first keyset query that
//! reads past the stored cursor comes back full (queries that only re-read the overlap do not
//! count) and `SELECT COUNT()` finds at least [`crate::poll::PollConfig::bulk_threshold`] rows
//! after the cursor, the rest of the backlog is read by ONE Bulk 2.0 `queryAll` job over a bounded
//! SystemModstamp window instead of many REST pages.
//!
//! Guarantees (the same as REST polling, see [`crate::poll`]):
//! - **No loss.** The window is `SystemModstamp >= lower AND SystemModstamp <= upper`: `lower`
//!   is the stamp of the last row the round already read (rows sharing it are read again, so a
//!   tie split across the keyset page and the job is complete), `upper` the newest SystemModstamp
//!   of the object when the window is planned. The job reads every row of the window however
//!   many share one stamp (no ordering, no keyset needed); the round then goes on by REST keyset
//!   after `upper`, and the next round starts `overlap` before it, as after any REST page.
//! - **No duplicates.** A Bulk row is logged exactly like a REST row: the same event key
//!   (`poll-<SystemModstamp ms>/0/<Id>`), version and JSON payload shape (CSV cells typed by the
//!   mapping: booleans, numbers, text, null for empty), so the raw log drops what REST (or an
//!   earlier job over the same window) already logged.
//! - **Checkpoint with the data.** Result rows are committed batch by batch, following the
//!   result pages by locator; every batch but the last keeps the stored cursor, and the last
//!   batch's transaction moves it to the window's upper bound. A crash or shutdown mid-job
//!   leaves the cursor before the window, so the next round reads the window again (through a
//!   new job; what was logged drops as duplicates).
//! - **Deletes.** `queryAll` returns recycle-bin rows with `IsDeleted = true`: they apply as
//!   deletes, as REST polled ones do.
//! - **Never worse than REST.** Planning queries, job creation, a failed job or unreadable
//!   results fall back to REST keyset paging for the rest of the round (logged and counted).
//!
//! Every call (the count, the upper-bound query, job creation, status polls, result pages) goes
//! through the polling client, so the same lane of the API budget governor as REST polling.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;

use serde_json::Value as J;
use sfsync_salesforce::bulk::csv::CsvRow;
use sfsync_salesforce::bulk::{JobState, QueryJobRequest, QueryResultsOptions};
use sfsync_salesforce::rest::QueryOptions;
use sfsync_store::{ColumnType, DeadLetter, RawChange};
use tokio::sync::watch;

use crate::error::{chain, PipelineError, Result};
use crate::model::ObjectMapping;
use crate::poll::{to_raw_change, Cursor, ObjectPoll, RoundOutcome, POLL_SCHEMA_ID};

/// A Bulk window of SystemModstamp (epoch ms, both ends included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkWindow {
    pub lower_ms: i64,
    pub upper_ms: i64,
}

/// What [`ObjectPoll::read_backlog_in_bulk`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkStep {
    /// Below the threshold (or Bulk unavailable): the round goes on by REST keyset.
    NotNeeded,
    /// The window is read and the cursor stored at its end: the round goes on by REST after it.
    Read(Cursor),
    /// Shutdown during the job: what was read is committed, the cursor is unchanged.
    Interrupted,
}

/// Whether a backlog of `remaining` rows (after a full keyset query past the cursor) is read
/// through Bulk:
/// `threshold` 0 never; otherwise at `remaining >= threshold`.
pub fn wants_bulk(threshold: u64, remaining: u64) -> bool {
    threshold > 0 && remaining >= threshold
}

/// Where the rows still to read are counted from: the cursor (the highest row read so far,
/// stored or just read), not the round's position in the overlap — rows the overlap re-reads
/// are mostly logged already, and counting them would start a job every round for as long as a
/// large batch stays inside the overlap.
pub fn count_from(after: &Cursor, cursor: Option<&Cursor>) -> Cursor {
    match cursor {
        Some(c) if c > after => c.clone(),
        _ => after.clone(),
    }
}

/// `SELECT COUNT()` of the rows after `from` in cursor order (sent through `queryAll`, so
/// deleted rows count too). Rows sharing `from`'s stamp up to its Id are not counted: a large
/// tie the cursor already stands at the end of is not a backlog.
pub fn count_soql(object: &str, from: &Cursor) -> String {
    let t = crate::jobs::soql_datetime(from.modstamp_ms);
    format!(
        "SELECT COUNT() FROM {object} WHERE (SystemModstamp > {t} OR (SystemModstamp = {t} AND Id > '{}'))",
        from.id.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

/// The newest SystemModstamp at or after `from_ms` (the window's upper bound).
pub fn upper_soql(object: &str, from_ms: i64) -> String {
    format!(
        "SELECT SystemModstamp FROM {object} WHERE SystemModstamp >= {} \
         ORDER BY SystemModstamp DESC LIMIT 1",
        crate::jobs::soql_datetime(from_ms)
    )
}

/// The window, from the round's position and the newest stamp found (`None`: nothing to read,
/// e.g. the rows moved or were purged since they were counted).
pub fn window(after: &Cursor, newest_ms: Option<i64>) -> Option<BulkWindow> {
    let upper_ms = newest_ms?;
    (upper_ms >= after.modstamp_ms).then_some(BulkWindow {
        lower_ms: after.modstamp_ms,
        upper_ms,
    })
}

/// The Bulk job's SOQL: the same fields as a REST keyset page (every mapped field,
/// SystemModstamp, IsDeleted), within the window. No ORDER BY: Bulk reads the window whole.
pub fn window_soql(mapping: &ObjectMapping, w: &BulkWindow) -> String {
    let mut soql = crate::jobs::snapshot_soql(mapping, None, None);
    soql.push_str(&format!(
        " WHERE SystemModstamp >= {} AND SystemModstamp <= {}",
        crate::jobs::soql_datetime(w.lower_ms),
        crate::jobs::soql_datetime(w.upper_ms)
    ));
    soql
}

/// The cursor stored with the window's last batch: at its upper bound, after the highest Id
/// read at that stamp (before every row of it when none was read there).
pub fn window_cursor(w: &BulkWindow, highest_id_at_upper: Option<&str>) -> Cursor {
    Cursor {
        modstamp_ms: w.upper_ms,
        id: highest_id_at_upper.unwrap_or_default().to_string(),
    }
}

/// How a result column becomes a JSON value of the polled row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell {
    Text,
    Bool,
    Int,
    Real,
}

/// A Bulk result header matched against the mapping: each column's JSON key (the mapping's
/// spelling of the field, as REST returns it) and type.
#[derive(Debug, Clone)]
pub struct CsvShape {
    columns: Vec<(String, Cell)>,
}

impl CsvShape {
    /// `Id` and `SystemModstamp` must be in the header.
    pub fn new(mapping: &ObjectMapping, header: &[String]) -> Result<CsvShape> {
        let has = |name: &str| header.iter().any(|h| h.eq_ignore_ascii_case(name));
        for need in ["Id", "SystemModstamp"] {
            if !has(need) {
                return Err(PipelineError::bad_change(
                    "poll bulk results",
                    mapping.object(),
                    "-",
                    format!("the result header has no {need} column (header: {header:?})"),
                ));
            }
        }
        let columns = header
            .iter()
            .map(|h| {
                for fixed in ["Id", "SystemModstamp"] {
                    if h.eq_ignore_ascii_case(fixed) {
                        return (fixed.to_string(), Cell::Text);
                    }
                }
                if h.eq_ignore_ascii_case("IsDeleted") {
                    return ("IsDeleted".to_string(), Cell::Bool);
                }
                match mapping
                    .model
                    .columns
                    .iter()
                    .find(|c| c.field.eq_ignore_ascii_case(h))
                {
                    Some(c) => (
                        c.field.clone(),
                        match c.ty {
                            ColumnType::Boolean => Cell::Bool,
                            ColumnType::Integer => Cell::Int,
                            ColumnType::Real => Cell::Real,
                            ColumnType::Text | ColumnType::Date | ColumnType::Timestamp => {
                                Cell::Text
                            }
                        },
                    ),
                    None => (h.clone(), Cell::Text),
                }
            })
            .collect();
        Ok(CsvShape { columns })
    }

    /// A result row as the JSON record REST would have returned: an empty cell is null,
    /// booleans and numbers typed by the mapping. A cell that does not parse as its type stays
    /// text, so applying the row reports it like any value that does not fit its column.
    pub fn row(&self, row: &CsvRow<'_>) -> serde_json::Map<String, J> {
        let mut out = serde_json::Map::with_capacity(self.columns.len());
        for (i, (key, cell)) in self.columns.iter().enumerate() {
            let text = row.get(i).unwrap_or("");
            let v = if text.is_empty() {
                J::Null
            } else {
                match cell {
                    Cell::Text => J::String(text.to_string()),
                    Cell::Bool => match text {
                        "true" | "TRUE" | "True" => J::Bool(true),
                        "false" | "FALSE" | "False" => J::Bool(false),
                        _ => J::String(text.to_string()),
                    },
                    Cell::Int => match text.parse::<i64>() {
                        Ok(n) => J::from(n),
                        Err(_) => real(text),
                    },
                    Cell::Real => real(text),
                }
            };
            out.insert(key.clone(), v);
        }
        out
    }
}

fn real(text: &str) -> J {
    text.parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(J::Number)
        .unwrap_or_else(|| J::String(text.to_string()))
}

impl ObjectPoll {
    /// Called after the round's first full keyset query past the stored cursor, whose last row is
    /// `after`: counts the rows still
    /// to read and, at [`crate::poll::PollConfig::bulk_threshold`] or more, reads them through
    /// one Bulk `queryAll` job (see the module doc). Errors of the Bulk path fall back to REST
    /// ([`BulkStep::NotNeeded`]); only store errors are returned.
    pub(crate) async fn read_backlog_in_bulk(
        &self,
        after: &Cursor,
        cursor: &mut Option<Cursor>,
        seen: &mut BTreeSet<(i64, String)>,
        fence: Option<&sfsync_store::Fence>,
        shutdown: &watch::Receiver<bool>,
        out: &mut RoundOutcome,
    ) -> Result<BulkStep> {
        if self.config.bulk_threshold == 0 {
            return Ok(BulkStep::NotNeeded);
        }
        match self
            .bulk_window(after, cursor, seen, fence, shutdown, out)
            .await
        {
            Ok(step) => Ok(step),
            Err(e @ PipelineError::Store(_)) => Err(e),
            Err(e) => {
                self.stats.errors.fetch_add(1, Relaxed);
                tracing::warn!(channel = %self.channel, error = %chain(&e), "Reading the poll backlog through Bulk API 2.0 failed; going on through REST pages.");
                Ok(BulkStep::NotNeeded)
            }
        }
    }

    async fn bulk_window(
        &self,
        after: &Cursor,
        cursor: &mut Option<Cursor>,
        seen: &mut BTreeSet<(i64, String)>,
        fence: Option<&sfsync_store::Fence>,
        shutdown: &watch::Receiver<bool>,
        out: &mut RoundOutcome,
    ) -> Result<BulkStep> {
        let object = self.mapping.object();
        let all = QueryOptions {
            include_deleted: true,
            ..Default::default()
        };
        let counted = self
            .client
            .query_page(
                &count_soql(object, &count_from(after, cursor.as_ref())),
                &all,
            )
            .await;
        out.calls += 1;
        let counted = counted?;
        if !wants_bulk(self.config.bulk_threshold, counted.total_size) {
            return Ok(BulkStep::NotNeeded);
        }
        let newest = self
            .client
            .query_page(&upper_soql(object, after.modstamp_ms), &all)
            .await;
        out.calls += 1;
        let newest = newest?;
        let newest_ms = match newest
            .records
            .first()
            .and_then(|r| r.get("SystemModstamp"))
            .and_then(J::as_str)
        {
            Some(s) => Some(crate::convert::parse_datetime(s).map_err(|e| {
                PipelineError::bad_change("poll bulk", object, "-", format!("SystemModstamp: {e}"))
            })?),
            None => None,
        };
        let Some(w) = window(after, newest_ms) else {
            return Ok(BulkStep::NotNeeded);
        };
        let soql = window_soql(&self.mapping, &w);
        let bulk = self.client.bulk();
        let job = bulk
            .create_query_job(&QueryJobRequest::query_all(soql.as_str()))
            .await;
        out.calls += 1;
        let job = job?;
        self.stats.poll_bulk_jobs.fetch_add(1, Relaxed);
        tracing::info!(channel = %self.channel, bulk_job = %job.id, rows = counted.total_size, lower_ms = w.lower_ms, upper_ms = w.upper_ms, "Reading a poll backlog through a Bulk API 2.0 queryAll job.");
        let mut calls = 0i64;
        let mut stop = shutdown.clone();
        let info = tokio::select! {
            r = crate::jobs::wait(&bulk, &job.id, &mut calls) => r,
            _ = async { drop(stop.wait_for(|s| *s).await) } => {
                // Best effort: the job's results would expire unread anyway.
                let _ = bulk.abort_query(&job.id).await;
                out.calls += calls as u64 + 1;
                return Ok(BulkStep::Interrupted);
            }
        };
        out.calls += calls as u64;
        let info = info?;
        if info.state != JobState::JobComplete {
            return Err(sfsync_salesforce::SalesforceError::JobFailed {
                job_id: info.id.clone(),
                state: info.state.as_str().to_string(),
                message: info
                    .error_message
                    .clone()
                    .unwrap_or_else(|| "no errorMessage given".into()),
            }
            .into());
        }
        let mut stream = bulk
            .query_results(
                &info.id,
                info.delimiter_byte(),
                QueryResultsOptions {
                    max_records: Some(self.config.bulk_page_records.max(1)),
                    locator: None,
                    api_version: info.api_version_string(),
                },
            )
            .await?;
        // The header is read ahead: a batch can be handed out before its page's end, when the
        // stream only knows the header if asked.
        let shape = match stream.read_header().await? {
            Some(h) => Some(CsvShape::new(&self.mapping, &h)?),
            None => None,
        };
        // The batch in hand is committed once the next one is known to exist: the last one
        // carries the window's cursor.
        let mut pending: Option<(Vec<RawChange>, Vec<DeadLetter>, usize)> = None;
        let mut top_id: Option<String> = None;
        // Every batch but the last keeps the cursor stored with the round's first page.
        let keep = cursor.clone().unwrap_or(Cursor {
            modstamp_ms: 0,
            id: String::new(),
        });
        loop {
            let batch = match stream.next_batch().await {
                Ok(b) => b,
                Err(e) => {
                    out.calls += stream.pages();
                    return Err(e.into());
                }
            };
            if batch.is_some() && *shutdown.borrow() {
                out.calls += stream.pages();
                return Ok(BulkStep::Interrupted);
            }
            let Some(batch) = batch else { break };
            if let Some((raws, dead, n)) = pending.take() {
                self.commit_bulk(raws, dead, n, &keep, false, &w, seen, fence, out)
                    .await?;
            }
            let Some(shape) = shape.as_ref() else {
                return Err(PipelineError::bad_change(
                    "poll bulk results",
                    object,
                    "-",
                    format!("Bulk job {} returned rows but no header row", info.id),
                ));
            };
            let mut raws = Vec::with_capacity(batch.len());
            let mut dead = Vec::new();
            for row in batch.iter() {
                let record = shape.row(&row);
                match to_raw_change(object, &record) {
                    Ok(raw) => {
                        let at = Cursor::from_replay_id(&raw.replay_id).expect("built from a row");
                        if at.modstamp_ms == w.upper_ms
                            && top_id.as_deref().is_none_or(|t| at.id.as_str() > t)
                        {
                            top_id = Some(at.id.clone());
                        }
                        raws.push(raw);
                    }
                    Err(e) => dead.push(DeadLetter {
                        channel: self.channel.clone(),
                        replay_id: None,
                        schema_id: POLL_SCHEMA_ID.to_string(),
                        stage: "poll".into(),
                        error: e,
                        payload: serde_json::to_vec(&record).unwrap_or_default(),
                        object: Some(object.to_string()),
                    }),
                }
            }
            pending = Some((raws, dead, batch.len()));
        }
        out.calls += stream.pages();
        let end = window_cursor(&w, top_id.as_deref());
        let end = match cursor.as_ref() {
            Some(c) if *c > end => c.clone(),
            _ => end,
        };
        let (raws, dead, n) = pending.unwrap_or_default();
        self.commit_bulk(raws, dead, n, &end, true, &w, seen, fence, out)
            .await?;
        *cursor = Some(end.clone());
        Ok(BulkStep::Read(end))
    }

    /// Appends one batch of the window's rows with `checkpoint` (the stored cursor, or the
    /// window's end with the `last` batch). Rows this process logged are skipped; rows the next
    /// round's overlap may read again are remembered.
    #[allow(clippy::too_many_arguments)]
    async fn commit_bulk(
        &self,
        raws: Vec<RawChange>,
        dead: Vec<DeadLetter>,
        rows: usize,
        checkpoint: &Cursor,
        last: bool,
        w: &BulkWindow,
        seen: &mut BTreeSet<(i64, String)>,
        fence: Option<&sfsync_store::Fence>,
        out: &mut RoundOutcome,
    ) -> Result<()> {
        out.rows += rows as u64;
        self.stats.poll_rows.fetch_add(rows as u64, Relaxed);
        self.stats.poll_bulk_rows.fetch_add(rows as u64, Relaxed);
        let remember_from = w.upper_ms - self.config.overlap.as_millis() as i64;
        let mut keys = Vec::new();
        let mut fresh = Vec::with_capacity(raws.len());
        for raw in raws {
            let at = Cursor::from_replay_id(&raw.replay_id).expect("built from a row");
            let key = (at.modstamp_ms, at.id);
            if seen.contains(&key) {
                out.duplicates += 1;
                continue;
            }
            if key.0 >= remember_from {
                keys.push(key);
            }
            fresh.push(raw);
        }
        if fresh.is_empty() && dead.is_empty() && !last {
            return Ok(());
        }
        let checkpoint = checkpoint.to_replay_id();
        let t = std::time::Instant::now();
        let appended = crate::lease::append(
            &*self.store,
            &self.channel,
            &fresh,
            &dead,
            &checkpoint,
            fence,
        )
        .await?;
        self.stats.time_stage(crate::stats::STAGE_INGEST_WRITE, t);
        seen.extend(keys);
        out.appended += appended.appended;
        out.duplicates += appended.duplicates;
        self.stats.ingested.fetch_add(appended.appended, Relaxed);
        self.stats
            .add_channel_ingested(&self.channel, appended.appended);
        self.stats
            .duplicates
            .fetch_add(appended.duplicates, Relaxed);
        self.stats
            .dead_letters
            .fetch_add(dead.len() as u64, Relaxed);
        if appended.appended > 0 || !dead.is_empty() {
            self.appended.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::Normalized;
    use sfsync_salesforce::bulk::csv::{CsvOptions, CsvParser, CsvRecordBatch};
    use sfsync_salesforce::rest::ObjectDescribe;

    fn mapping() -> ObjectMapping {
        let describe: ObjectDescribe = serde_json::from_value(serde_json::json!({
            "name": "Account",
            "fields": [
                {"name": "Id", "type": "id"},
                {"name": "Name", "type": "string"},
                {"name": "NumberOfEmployees", "type": "int"},
                {"name": "AnnualRevenue", "type": "currency"},
                {"name": "IsActive__c", "type": "boolean"},
                {"name": "LastActivityDate", "type": "date"},
                {"name": "SystemModstamp", "type": "datetime"},
                {"name": "IsDeleted", "type": "boolean"},
            ]
        }))
        .unwrap();
        ObjectMapping::build(&describe, &crate::model::ObjectSpec::new("Account")).unwrap()
    }

    fn parse(csv: &str) -> (Vec<String>, CsvRecordBatch) {
        let mut p = CsvParser::new(CsvOptions::default());
        p.feed(csv.as_bytes()).unwrap();
        p.finish().unwrap();
        let header = p.header().unwrap().to_vec();
        (header, p.take_batch().unwrap())
    }

    #[test]
    fn the_threshold_decides_and_zero_never_reads_in_bulk() {
        assert!(!wants_bulk(0, 0));
        assert!(!wants_bulk(0, u64::MAX));
        assert!(!wants_bulk(50_000, 49_999));
        assert!(wants_bulk(50_000, 50_000));
        assert!(wants_bulk(2_000, 1_000_000));
    }

    #[test]
    fn the_window_runs_from_the_rounds_position_to_the_newest_stamp() {
        let after = Cursor {
            modstamp_ms: 1_767_323_045_000,
            id: "001000000000009AAA".into(),
        };
        // Rows that share the position's stamp are read again: the window includes it.
        let w = window(&after, Some(1_767_323_050_123)).unwrap();
        assert_eq!(
            w,
            BulkWindow {
                lower_ms: 1_767_323_045_000,
                upper_ms: 1_767_323_050_123
            }
        );
        // A tie larger than the first page: a window of one millisecond.
        assert_eq!(
            window(&after, Some(after.modstamp_ms)),
            Some(BulkWindow {
                lower_ms: after.modstamp_ms,
                upper_ms: after.modstamp_ms
            })
        );
        assert_eq!(window(&after, None), None);
        assert_eq!(window(&after, Some(after.modstamp_ms - 1)), None);

        let m = mapping();
        let q = window_soql(&m, &w);
        assert!(
            q.ends_with(
                " FROM Account WHERE SystemModstamp >= 2026-01-02T03:04:05.000Z \
                 AND SystemModstamp <= 2026-01-02T03:04:10.123Z"
            ),
            "{q}"
        );
        assert!(q.contains("IsDeleted") && !q.contains("ORDER BY"), "{q}");
        assert_eq!(
            upper_soql("Account", w.lower_ms),
            "SELECT SystemModstamp FROM Account WHERE SystemModstamp >= \
             2026-01-02T03:04:05.000Z ORDER BY SystemModstamp DESC LIMIT 1"
        );
    }

    #[test]
    fn rows_are_counted_from_the_cursor_not_the_overlap() {
        let at = |ms: i64, id: &str| Cursor {
            modstamp_ms: ms,
            id: id.into(),
        };
        // First round ever: after the first page's last row.
        assert_eq!(count_from(&at(100, "b"), None), at(100, "b"));
        // The first page re-read the overlap (all behind the cursor): after the cursor.
        assert_eq!(count_from(&at(100, "b"), Some(&at(160, "a"))), at(160, "a"));
        // The first page went past the cursor: after its last row (ties by Id too).
        assert_eq!(count_from(&at(160, "b"), Some(&at(160, "a"))), at(160, "b"));
        // The rest of a tie the cursor stands in counts; the tie up to the cursor does not.
        assert_eq!(
            count_soql("Account", &at(1_767_323_045_000, "001000000000009AAA")),
            "SELECT COUNT() FROM Account WHERE (SystemModstamp > 2026-01-02T03:04:05.000Z OR \
             (SystemModstamp = 2026-01-02T03:04:05.000Z AND Id > '001000000000009AAA'))"
        );
    }

    #[test]
    fn the_window_cursor_sits_at_the_upper_bound() {
        let w = BulkWindow {
            lower_ms: 10,
            upper_ms: 20,
        };
        let c = window_cursor(&w, Some("001000000000005AAA"));
        assert_eq!((c.modstamp_ms, c.id.as_str()), (20, "001000000000005AAA"));
        // Nothing read at the upper stamp (the newest row changed again since): before every
        // row of it, so the round's REST pages after the window read that millisecond whole.
        let c = window_cursor(&w, None);
        assert_eq!((c.modstamp_ms, c.id.as_str()), (20, ""));
        assert!(c < window_cursor(&w, Some("001")));
    }

    #[test]
    fn a_bulk_row_logs_and_applies_exactly_like_the_rest_row() {
        let m = mapping();
        let (header, batch) = parse(
            "Id,Name,NumberOfEmployees,AnnualRevenue,IsActive__c,LastActivityDate,SystemModstamp,IsDeleted\n\
             001000000000001AAA,\"Acme, Inc.\",42,1250.5,true,2026-01-01,2026-01-02T03:04:05.000Z,false\n\
             001000000000002AAA,,,,,,2026-01-02T03:04:06.000Z,true\n",
        );
        let shape = CsvShape::new(&m, &header).unwrap();
        let rows: Vec<_> = batch.iter().map(|r| shape.row(&r)).collect();
        assert_eq!(rows[0]["NumberOfEmployees"], serde_json::json!(42));
        assert_eq!(rows[0]["AnnualRevenue"], serde_json::json!(1250.5));
        assert_eq!(rows[0]["IsActive__c"], serde_json::json!(true));
        assert_eq!(rows[1]["Name"], J::Null);
        assert_eq!(rows[1]["IsDeleted"], serde_json::json!(true));

        // The same records as REST `queryAll` returns them.
        let rest = [
            serde_json::json!({
                "attributes": {"type": "Account"},
                "Id": "001000000000001AAA", "Name": "Acme, Inc.", "NumberOfEmployees": 42,
                "AnnualRevenue": 1250.5, "IsActive__c": true, "LastActivityDate": "2026-01-01",
                "SystemModstamp": "2026-01-02T03:04:05.000+0000", "IsDeleted": false,
            }),
            serde_json::json!({
                "attributes": {"type": "Account"},
                "Id": "001000000000002AAA", "Name": null, "NumberOfEmployees": null,
                "AnnualRevenue": null, "IsActive__c": null, "LastActivityDate": null,
                "SystemModstamp": "2026-01-02T03:04:06.000+0000", "IsDeleted": true,
            }),
        ];
        for (bulk_row, rest_row) in rows.iter().zip(&rest) {
            let a = to_raw_change("Account", bulk_row).unwrap();
            let b = to_raw_change("Account", rest_row.as_object().unwrap()).unwrap();
            assert_eq!(a.event_key, b.event_key, "duplicates drop by event key");
            assert_eq!(a.version, b.version);
            assert_eq!(a.change_type, b.change_type);
            let (Normalized::Records(x), Normalized::Records(y)) = (
                crate::poll::normalize(&m, &a).unwrap(),
                crate::poll::normalize(&m, &b).unwrap(),
            ) else {
                panic!("not records")
            };
            assert_eq!(x[0].values, y[0].values);
            assert_eq!(x[0].deleted, y[0].deleted);
        }
    }

    #[test]
    fn a_header_without_id_or_stamp_is_refused_and_odd_cells_stay_text() {
        let m = mapping();
        let err = CsvShape::new(&m, &["Name".into(), "SystemModstamp".into()]).unwrap_err();
        assert!(err.to_string().contains("no Id column"), "{err}");
        let err = CsvShape::new(&m, &["Id".into()]).unwrap_err();
        assert!(
            err.to_string().contains("no SystemModstamp column"),
            "{err}"
        );
        // Header case differs from the mapping: keys take the mapping's spelling.
        let (header, batch) = parse(
            "ID,numberofemployees,isactive__c,SYSTEMMODSTAMP\n001000000000001AAA,many,maybe,2026-01-02T03:04:05.000Z\n",
        );
        let shape = CsvShape::new(&m, &header).unwrap();
        let row = shape.row(&batch.iter().next().unwrap());
        assert_eq!(row["Id"], serde_json::json!("001000000000001AAA"));
        assert_eq!(row["NumberOfEmployees"], serde_json::json!("many"));
        assert_eq!(row["IsActive__c"], serde_json::json!("maybe"));
        assert!(row.contains_key("SystemModstamp"));
    }
}
