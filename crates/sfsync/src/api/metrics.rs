//! `GET /metrics`: Prometheus text exposition format 0.0.4. Counters from the pipeline's live
//! [`PipelineStats`], gauges of the queues counted in the store (dead letters, quarantine,
//! writes by state, pending repairs and re-syncs), the consumer lag and the commit→curated
//! latency histogram. Names are `sfsync_*` with the unit in the name.
//!
//! Auth: a viewer or operator token, like the rest of the API (Prometheus sends one with
//! `authorization: { credentials_file: … }`), unless `[api] metrics_public = true`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;
use sfsync_pipeline::stats::LATENCY_BUCKETS_MS;
use sfsync_pipeline::PipelineStats;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// The exposition of `stats` and the store's queue sizes.
pub fn render(
    stats: &PipelineStats,
    counts: &sfsync_store::OpsCounts,
    uptime_secs: f64,
    now_ms: i64,
) -> String {
    let mut o = Out(String::new());
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64;
    o.family(
        "sfsync_build_info",
        "gauge",
        "The running sfsync version (always 1).",
    );
    o.sample(
        "sfsync_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    o.one(
        "sfsync_uptime_seconds",
        "gauge",
        "Seconds since the API started.",
        uptime_secs,
    );
    for (name, help, v) in [
        (
            "sfsync_events_ingested_total",
            "Change events appended to the raw change log.",
            g(&stats.ingested),
        ),
        (
            "sfsync_events_duplicate_total",
            "Re-delivered change events the raw log already held.",
            g(&stats.duplicates),
        ),
        (
            "sfsync_changes_applied_total",
            "Record changes applied to the curated tables.",
            g(&stats.applied),
        ),
        (
            "sfsync_changes_late_total",
            "Changes older than the row, applied to their fields only.",
            g(&stats.late),
        ),
        (
            "sfsync_changes_stale_total",
            "Changes not newer than the row (skipped).",
            g(&stats.stale),
        ),
        (
            "sfsync_own_writes_total",
            "Changes recognised as sfsync's own writes (echoes).",
            g(&stats.own_writes),
        ),
        (
            "sfsync_repairs_requested_total",
            "Record re-reads requested (gap events, unknown records).",
            g(&stats.repairs_requested),
        ),
        (
            "sfsync_repairs_done_total",
            "Record re-reads carried out.",
            g(&stats.repairs_done),
        ),
        (
            "sfsync_resyncs_requested_total",
            "Windowed re-syncs requested.",
            g(&stats.resyncs_requested),
        ),
        (
            "sfsync_snapshot_rows_total",
            "Rows read by backfills, re-syncs and formula refreshes.",
            g(&stats.snapshot_rows),
        ),
        (
            "sfsync_runs_succeeded_total",
            "Sync jobs (runs) finished successfully.",
            g(&stats.jobs_done),
        ),
        (
            "sfsync_reconcile_drift_records_total",
            "Records reconciliation found different from Salesforce.",
            g(&stats.drift_found),
        ),
        (
            "sfsync_dead_letters_added_total",
            "Events dead-lettered by this process.",
            g(&stats.dead_letters),
        ),
        (
            "sfsync_quarantined_total",
            "Changes held in the quarantine by this process.",
            g(&stats.quarantined),
        ),
        (
            "sfsync_quarantine_released_total",
            "Quarantined changes released and applied.",
            g(&stats.released),
        ),
        (
            "sfsync_errors_total",
            "Errors handled by the pipeline.",
            g(&stats.errors),
        ),
        (
            "sfsync_batches_applied_total",
            "Batches committed to the warehouse.",
            g(&stats.batches),
        ),
    ] {
        o.one(name, "counter", help, v);
    }
    let last_commit = stats.last_commit_ms.load(Ordering::Relaxed);
    if last_commit > 0 {
        o.one(
            "sfsync_last_applied_commit_timestamp_seconds",
            "gauge",
            "Salesforce commit time of the newest applied change (Unix seconds).",
            last_commit as f64 / 1000.0,
        );
        o.one(
            "sfsync_consumer_lag_seconds",
            "gauge",
            "Now minus the commit time of the newest applied change.",
            ((now_ms - last_commit).max(0)) as f64 / 1000.0,
        );
    }
    o.family(
        "sfsync_channel_events_ingested_total",
        "counter",
        "Change events appended to the raw change log, per channel.",
    );
    for (channel, n) in stats.channels() {
        o.sample(
            "sfsync_channel_events_ingested_total",
            &[("channel", &channel)],
            n as f64,
        );
    }
    let objects = stats.objects();
    o.family(
        "sfsync_object_changes_total",
        "counter",
        "Record changes committed to the curated tables, per object.",
    );
    for (object, v) in &objects {
        o.sample(
            "sfsync_object_changes_total",
            &[("object", object)],
            v.changes as f64,
        );
    }
    o.family(
        "sfsync_object_lag_seconds",
        "gauge",
        "Now minus the commit time of the object's newest applied change.",
    );
    for (object, v) in objects.iter().filter(|(_, v)| v.last_commit_ms > 0) {
        o.sample(
            "sfsync_object_lag_seconds",
            &[("object", object)],
            ((now_ms - v.last_commit_ms).max(0)) as f64 / 1000.0,
        );
    }
    o.one(
        "sfsync_dead_letters",
        "gauge",
        "Event dead letters stored.",
        counts.dead_letters as f64,
    );
    o.one(
        "sfsync_quarantine_open",
        "gauge",
        "Quarantined changes not yet released or discarded.",
        counts.quarantine_open as f64,
    );
    o.one(
        "sfsync_repairs_pending",
        "gauge",
        "Record re-reads waiting.",
        counts.pending_repairs as f64,
    );
    o.one(
        "sfsync_resyncs_pending",
        "gauge",
        "Windowed re-syncs waiting.",
        counts.pending_resyncs as f64,
    );
    o.family(
        "sfsync_writes",
        "gauge",
        "Writeback ledger entries by state.",
    );
    for (state, n) in &counts.writes_by_state {
        o.sample("sfsync_writes", &[("state", state.as_str())], *n as f64);
    }
    // The commit→curated latency histogram (cumulative buckets in seconds).
    let name = "sfsync_apply_latency_seconds";
    o.family(
        name,
        "histogram",
        "Salesforce commit to curated-table commit latency of applied changes.",
    );
    let counts_ms = stats.latency_counts();
    let mut cum = 0u64;
    for (i, c) in counts_ms.iter().enumerate() {
        cum += c;
        let le = match LATENCY_BUCKETS_MS.get(i) {
            Some(ms) => format!("{}", *ms as f64 / 1000.0),
            None => "+Inf".to_string(),
        };
        o.sample(&format!("{name}_bucket"), &[("le", &le)], cum as f64);
    }
    o.sample(
        &format!("{name}_sum"),
        &[],
        stats.latency_sum_ms() as f64 / 1000.0,
    );
    o.sample(&format!("{name}_count"), &[], cum as f64);
    o.0
}

pub async fn metrics(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !s.metrics_public {
        let mut parts = axum::http::Request::new(()).into_parts().0;
        parts.headers = headers;
        let caller =
            <Caller as axum::extract::FromRequestParts<Arc<ApiState>>>::from_request_parts(
                &mut parts, &s,
            )
            .await?;
        caller.require_viewer()?;
    }
    let counts = s
        .store
        .ops_counts()
        .await
        .map_err(|e| ApiError::internal("counting the queues", e))?;
    let text = render(
        &s.stats,
        &counts,
        s.started.elapsed().as_secs_f64(),
        chrono::Utc::now().timestamp_millis(),
    );
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lines_are_well_formed() {
        let stats = PipelineStats::default();
        stats.ingested.fetch_add(5, Ordering::Relaxed);
        stats.observe_latency(40);
        stats.observe_latency(4000);
        stats.last_commit_ms.store(1_000, Ordering::Relaxed);
        stats.add_channel_ingested("/data/AccountChangeEvent", 5);
        stats.add_object_changes("Account", 4, 500);
        let counts = sfsync_store::OpsCounts {
            writes_by_state: vec![(sfsync_store::WriteState::Pending, 3)],
            dead_letters: 2,
            ..Default::default()
        };
        let text = render(&stats, &counts, 1.5, 3_500);
        assert!(text.contains("sfsync_events_ingested_total 5\n"), "{text}");
        assert!(text.contains("sfsync_consumer_lag_seconds 2.5\n"), "{text}");
        assert!(text.contains(
            "sfsync_channel_events_ingested_total{channel=\"/data/AccountChangeEvent\"} 5\n"
        ));
        assert!(text.contains("sfsync_object_changes_total{object=\"Account\"} 4\n"));
        assert!(text.contains("sfsync_object_lag_seconds{object=\"Account\"} 3\n"));
        assert!(
            text.contains("sfsync_writes{state=\"pending\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("sfsync_apply_latency_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("sfsync_apply_latency_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("sfsync_apply_latency_seconds_count 2\n"));
        assert!(
            text.contains("sfsync_apply_latency_seconds_sum 4.04\n"),
            "{text}"
        );
    }
}
