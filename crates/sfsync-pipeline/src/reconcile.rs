//! Reconciliation of the warehouse against Salesforce.
//!
//! Salesforce side: one Bulk API 2.0 query job of `Id, SystemModstamp` of the live records
//! (optionally within a SystemModstamp window) — a few dozen bytes per record, a handful of API
//! calls for millions of records (one create, the polls, one call per result page). Warehouse
//! side: the curated rows' keys (`id`, the commit time of the newest applied change, the deleted
//! flag), read in id order in buckets of [`BUCKET_ROWS`] and merged against the sorted Salesforce
//! keys. A record is
//! - **missing** when Salesforce has it live and the warehouse has no live row;
//! - **extra** when the warehouse has a live row Salesforce does not (deleted or purged there);
//! - **stale** when Salesforce's SystemModstamp is newer than the newest change the warehouse
//!   applied to it (a change the stream never delivered). A snapshot is versioned at the
//!   SystemModstamp it read and a streamed change at its commit time, which is never before the
//!   SystemModstamp it set, so an in-sync row is never reported stale.
//!
//! Repair re-reads exactly the differing records (SOQL `queryAll … WHERE Id IN`, in batches),
//! through the normal repair path: deleted records come back with IsDeleted, purged ones not at
//! all and are marked `PURGED`.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sfsync_salesforce::bulk::{Bulk, JobState, QueryJobRequest, QueryResultsOptions};
use sfsync_store::{SyncJob, Warehouse};

use crate::error::chain;

/// Reason prefix of the repair requests reconciliation writes: their re-reads replace the rows
/// whatever the rows' versions say.
pub const REPAIR_REASON_PREFIX: &str = "reconcile: ";

/// Warehouse rows compared per bucket (one read of the row keys).
pub const BUCKET_ROWS: usize = 50_000;
/// Samples kept per kind of difference in the report.
pub const SAMPLES: usize = 10;

/// The outcome of one reconciliation (stored as the job's JSON report; read back by the
/// freshness contract, so fields missing from an older report read as empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReconcileReport {
    pub object: String,
    pub since_ms: Option<i64>,
    /// Live records in Salesforce (within the window).
    pub salesforce_live: u64,
    /// Live rows in the warehouse that were compared.
    pub warehouse_live: u64,
    pub in_sync: u64,
    pub missing: u64,
    pub extra: u64,
    pub stale: u64,
    pub sample_missing: Vec<String>,
    pub sample_extra: Vec<String>,
    pub sample_stale: Vec<String>,
    /// Buckets (id ranges) compared, and those with any difference.
    pub buckets: u64,
    pub buckets_with_drift: Vec<BucketDrift>,
    pub api_calls: i64,
    pub seconds: f64,
    /// Records put up for a re-read.
    pub repairs_requested: u64,
}

/// Differences within one id range.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct BucketDrift {
    pub first_id: String,
    pub last_id: String,
    pub missing: u64,
    pub extra: u64,
    pub stale: u64,
}

impl ReconcileReport {
    pub fn drift(&self) -> u64 {
        self.missing + self.extra + self.stale
    }
}

/// What differs, with the ids to re-read.
#[derive(Debug, Clone, Default)]
pub struct ReconcileOutcome {
    pub report: ReconcileReport,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub stale: Vec<String>,
}

/// Reads Salesforce's keys of `job.object` and compares them with the warehouse.
pub async fn reconcile(
    bulk: &Bulk,
    store: Arc<dyn Warehouse>,
    job: &SyncJob,
    page_records: u64,
) -> std::result::Result<ReconcileOutcome, (String, bool)> {
    let started = Instant::now();
    let object = &job.object;
    let mut calls = 0i64;
    let mut soql = format!("SELECT Id, SystemModstamp FROM {object}");
    if let Some(s) = job.since_ms {
        soql.push_str(&format!(
            " WHERE SystemModstamp >= {}",
            crate::jobs::soql_datetime(s)
        ));
    }
    let sf = |what: &str, e: sfsync_salesforce::SalesforceError| crate::jobs::sf_error(what, &e);
    // Rows the warehouse applied after this moment may be newer than Salesforce's answer.
    let asked_at = crate::apply::now_ms();
    calls += 1;
    let created = bulk
        .create_query_job(&QueryJobRequest::new(soql.clone()))
        .await
        .map_err(|e| sf(&format!("creating the Bulk query job ({soql})"), e))?;
    let info = crate::jobs::wait(bulk, &created.id, &mut calls)
        .await
        .map_err(|e| sf(&format!("Bulk query job {}", created.id), e))?;
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
    calls += 1;
    let mut stream = bulk
        .query_results(
            &info.id,
            info.delimiter_byte(),
            QueryResultsOptions {
                max_records: Some(page_records.max(1)),
                locator: None,
                api_version: info.api_version_string(),
            },
        )
        .await
        .map_err(|e| sf("reading reconciliation keys", e))?;
    stream
        .read_header()
        .await
        .map_err(|e| sf("reading reconciliation keys", e))?;
    // Salesforce's keys, sorted by id (byte order, as the warehouse reads them).
    let mut keys: Vec<(Box<str>, i64)> = Vec::with_capacity(info.number_records_processed as usize);
    let mut cols: Option<(usize, usize)> = None;
    while let Some(batch) = stream
        .next_batch()
        .await
        .map_err(|e| sf("reading reconciliation keys", e))?
    {
        let (ci, cm) = match cols {
            Some(c) => c,
            None => {
                let h = stream.header().unwrap_or(&[]);
                let pos = |n: &str| h.iter().position(|x| x.eq_ignore_ascii_case(n));
                let c = pos("Id").zip(pos("SystemModstamp")).ok_or_else(|| {
                    (
                        format!("reconciliation results lack Id or SystemModstamp: {h:?}"),
                        true,
                    )
                })?;
                cols = Some(c);
                c
            }
        };
        for row in batch.iter() {
            let id = row.get(ci).unwrap_or("");
            let ms = crate::convert::parse_datetime(row.get(cm).unwrap_or("")).map_err(|e| {
                (
                    format!("reconciliation key of {object} {id}: SystemModstamp {e}"),
                    true,
                )
            })?;
            keys.push((id.into(), ms));
        }
    }
    calls += stream.pages().saturating_sub(1) as i64;
    keys.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = ReconcileOutcome::default();
    let r = &mut out.report;
    r.object = object.clone();
    r.since_ms = job.since_ms;
    r.salesforce_live = keys.len() as u64;
    // Merge, bucket by bucket of warehouse rows.
    let mut k = 0usize;
    let mut after: Option<String> = None;
    loop {
        let rows = store
            .row_keys(object, after.as_deref(), BUCKET_ROWS)
            .await
            .map_err(|e| (chain(&e), false))?;
        let last_bucket = rows.len() < BUCKET_ROWS;
        let upper: Option<&str> = if last_bucket {
            None
        } else {
            rows.last().map(|w| w.id.as_str())
        };
        let mut drift = BucketDrift {
            first_id: rows.first().map(|w| w.id.clone()).unwrap_or_default(),
            last_id: rows.last().map(|w| w.id.clone()).unwrap_or_default(),
            ..Default::default()
        };
        let mut w = rows.iter().peekable();
        loop {
            let s = keys
                .get(k)
                .filter(|(id, _)| upper.is_none_or(|u| id.as_bytes() <= u.as_bytes()));
            match (s, w.peek()) {
                (None, None) => break,
                (Some((id, ms)), Some(row)) if id.as_bytes() == row.id.as_bytes() => {
                    if row.deleted {
                        out.missing.push(id.to_string());
                        drift.missing += 1;
                    } else {
                        r.warehouse_live += 1;
                        if *ms > row.commit_ms {
                            out.stale.push(id.to_string());
                            drift.stale += 1;
                        } else {
                            r.in_sync += 1;
                        }
                    }
                    k += 1;
                    w.next();
                }
                (Some((id, _)), Some(row)) if id.as_bytes() < row.id.as_bytes() => {
                    out.missing.push(id.to_string());
                    drift.missing += 1;
                    k += 1;
                }
                (Some((id, _)), None) => {
                    out.missing.push(id.to_string());
                    drift.missing += 1;
                    k += 1;
                }
                (_, Some(row)) => {
                    // In the warehouse only. Within a window, a row last changed before it is
                    // not in Salesforce's answer and proves nothing.
                    // Nor does a row changed after the question was asked (created meanwhile).
                    let in_window =
                        job.since_ms.is_none_or(|s| row.commit_ms >= s) && row.commit_ms < asked_at;
                    if !row.deleted && in_window {
                        r.warehouse_live += 1;
                        out.extra.push(row.id.clone());
                        drift.extra += 1;
                    }
                    w.next();
                }
            }
        }
        r.buckets += 1;
        if drift.missing + drift.extra + drift.stale > 0 {
            if drift.first_id.is_empty() {
                drift.first_id = out.missing.first().cloned().unwrap_or_default();
                drift.last_id = out.missing.last().cloned().unwrap_or_default();
            }
            r.buckets_with_drift.push(drift);
        }
        if last_bucket {
            break;
        }
        after = rows.last().map(|w| w.id.clone());
    }
    r.missing = out.missing.len() as u64;
    r.extra = out.extra.len() as u64;
    r.stale = out.stale.len() as u64;
    r.sample_missing = out.missing.iter().take(SAMPLES).cloned().collect();
    r.sample_extra = out.extra.iter().take(SAMPLES).cloned().collect();
    r.sample_stale = out.stale.iter().take(SAMPLES).cloned().collect();
    r.api_calls = calls;
    r.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}
