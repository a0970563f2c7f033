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
use sfsync_pipeline::stats::{LATENCY_BUCKETS_MS, WRITEBACK_BUCKETS_MS};
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

/// Pub/Sub keeps change events this long (72 h): a replay id older than that cannot be resumed.
pub const REPLAY_RETENTION_SECS: f64 = 72.0 * 3600.0;

/// What the exposition reads besides the pipeline's counters and the store's queue sizes.
#[derive(Debug, Default)]
pub struct Extra {
    /// The budget governor's view (None: no Salesforce client in this process).
    pub budget: Option<sfsync_salesforce::BudgetStatus>,
    /// Per object: records the last successful reconciliation found different.
    pub drift: Vec<(String, u64)>,
    /// Per channel: the objects it carries.
    pub channels: Vec<(String, Vec<String>)>,
    /// The raw log's applied offset and the offset through which it is archived.
    pub archive: Option<(u64, u64)>,
    /// The delivery sinks of this process.
    pub sinks: Vec<SinkMetrics>,
    /// Per object: its `sync_status` (the warehouse view) and lag.
    pub sync_status: Vec<(String, sfsync_store::FreshnessStatus, Option<f64>)>,
    /// Platform events in and out (`None`: none configured).
    pub events: Option<EventMetrics>,
    /// Per Outbound Message flow: (name, acked, faulted, refused, logged, duplicates,
    /// dead-lettered, notifications received, notifications acknowledged); and requests
    /// refused before a flow was known.
    pub outbound: Vec<(String, [u64; 8])>,
    pub outbound_unauthorised: u64,
}

/// The Outbound Message families (declared without samples when no flow is configured).
fn outbound_metrics(o: &mut Out, extra: &Extra) {
    o.family(
        "sfsync_outbound_messages_total",
        "counter",
        "Outbound Messages received per flow, by answer: acked (<Ack>true</Ack>), faulted (SOAP fault: unreadable, or the store failed), refused (wrong OrganizationId).",
    );
    for (flow, c) in &extra.outbound {
        for (result, v) in [("acked", c[0]), ("faulted", c[1]), ("refused", c[2])] {
            o.sample(
                "sfsync_outbound_messages_total",
                &[("flow", flow), ("result", result)],
                v as f64,
            );
        }
    }
    o.family(
        "sfsync_outbound_notifications_total",
        "counter",
        "Outbound Message notifications per flow: logged (new), duplicate (a redelivery of a logged notification id), dead_letter (unreadable, kept with its cause).",
    );
    for (flow, c) in &extra.outbound {
        for (outcome, v) in [("logged", c[3]), ("duplicate", c[4]), ("dead_letter", c[5])] {
            o.sample(
                "sfsync_outbound_notifications_total",
                &[("flow", flow), ("outcome", outcome)],
                v as f64,
            );
        }
    }
    for (name, help, i) in [
        (
            "sfsync_outbound_notifications_received_total",
            "Outbound Message notifications received per flow in messages that reached the store (readable or not; redeliveries count again).",
            6,
        ),
        (
            "sfsync_outbound_notifications_acknowledged_total",
            "Outbound Message notifications per flow in messages answered <Ack>true</Ack> (durable in the raw log; Salesforce stops sending them).",
            7,
        ),
    ] {
        o.family(name, "counter", help);
        for (flow, c) in &extra.outbound {
            o.sample(name, &[("flow", flow)], c[i] as f64);
        }
    }
    o.one(
        "sfsync_outbound_unauthorised_total",
        "counter",
        "Requests to the Outbound Message endpoint refused for an unknown flow or a wrong secret.",
        extra.outbound_unauthorised as f64,
    );
}

/// Platform-event readings: this process's counters and the store's publish queue.
#[derive(Debug, Clone, Default)]
pub struct EventMetrics {
    /// Per subscribed channel: received (stored) and redelivered events.
    pub channels: Vec<(String, sfsync_pipeline::events::ChannelEvents)>,
    /// Per publishable event name (every configured one, 0 until published): published events.
    pub published: Vec<(String, u64)>,
    pub undecodable: u64,
    pub deferred: u64,
    pub retried: u64,
    pub dead: u64,
    /// Events waiting to be published, and dead ones (the store's counts).
    pub pending: u64,
    pub dead_open: u64,
}

fn event_metrics(o: &mut Out, e: &EventMetrics) {
    type Get = fn(&sfsync_pipeline::events::ChannelEvents) -> u64;
    let per_channel: [(&str, &str, Get); 2] = [
        (
            "sfsync_platform_events_received_total",
            "Platform events received and stored per subscribed channel (redeliveries not counted).",
            |c| c.received,
        ),
        (
            "sfsync_platform_events_duplicates_total",
            "Redelivered platform events already stored, per subscribed channel.",
            |c| c.duplicates,
        ),
    ];
    for (name, help, get) in per_channel {
        o.family(name, "counter", help);
        for (channel, c) in &e.channels {
            o.sample(name, &[("channel", channel)], get(c) as f64);
        }
    }
    o.family(
        "sfsync_platform_events_published_total",
        "counter",
        "Platform events published to Salesforce, per event (the channel /event/<event>).",
    );
    for (event, n) in &e.published {
        o.sample(
            "sfsync_platform_events_published_total",
            &[("event", event)],
            *n as f64,
        );
    }
    for (name, help, v) in [
        (
            "sfsync_platform_events_undecodable_total",
            "Received platform events that could not be decoded (dead letters).",
            e.undecodable,
        ),
        (
            "sfsync_platform_events_deferred_total",
            "Platform events put back for the hourly publish allocation.",
            e.deferred,
        ),
        (
            "sfsync_platform_events_retried_total",
            "Failed publishes to be tried again.",
            e.retried,
        ),
        (
            "sfsync_platform_events_dead_total",
            "Platform events that failed for good (publish dead letters).",
            e.dead,
        ),
    ] {
        o.one(name, "counter", help, v as f64);
    }
    o.one(
        "sfsync_platform_events_pending",
        "gauge",
        "Platform events waiting to be published.",
        e.pending as f64,
    );
    o.one(
        "sfsync_platform_events_dead",
        "gauge",
        "Publish dead letters waiting for an operator.",
        e.dead_open as f64,
    );
}

/// The flow-mode gauge and the polled channels' families (declared without samples when no
/// object is polled, so rules and dashboards find them).
fn flow_metrics(o: &mut Out, stats: &PipelineStats, now_ms: i64) {
    o.family(
        "sfsync_flow_mode",
        "gauge",
        "How the object's changes arrive: 0 = cdc (Change Data Capture stream), 1 = poll (mode = \"poll\"), 2 = degraded-poll (a CDC object polled while its stream is unusable).",
    );
    for (object, f) in stats.flow_modes() {
        o.sample(
            "sfsync_flow_mode",
            &[("channel", &f.channel), ("object", &object)],
            f64::from(f.mode.gauge()),
        );
    }
    let polled = stats.poll_channels();
    let object_of = |channel: &str| {
        channel
            .strip_prefix(sfsync_pipeline::poll::CHANNEL_PREFIX)
            .unwrap_or(channel)
            .to_string()
    };
    type Get = fn(&sfsync_pipeline::stats::PollStats) -> u64;
    let counters: [(&str, &str, Get); 5] = [
        ("sfsync_poll_rounds_total", "Poll rounds that read every row up to the tip, per polled channel.", |p| p.rounds),
        ("sfsync_poll_rows_read_total", "Rows read by polling (SOQL queryAll by SystemModstamp), new, re-read in the overlap or unreadable.", |p| p.rows),
        ("sfsync_poll_rows_appended_total", "Polled rows appended to the raw change log (new ones).", |p| p.appended),
        ("sfsync_poll_duplicates_dropped_total", "Polled rows dropped as already logged (overlap re-reads, restarts).", |p| p.duplicates),
        ("sfsync_poll_api_calls_total", "Salesforce API calls made by polling (queries and queryMore pages).", |p| p.api_calls),
    ];
    for (name, help, get) in counters {
        o.family(name, "counter", help);
        for (channel, p) in &polled {
            o.sample(
                name,
                &[("channel", channel), ("object", &object_of(channel))],
                get(p) as f64,
            );
        }
    }
    type Gauge = fn(&sfsync_pipeline::stats::PollStats, i64) -> Option<f64>;
    let gauges: [(&str, &str, Gauge); 4] = [
        (
            "sfsync_poll_cursor_lag_seconds",
            "Now minus the SystemModstamp of the polled channel's cursor (the newest row read). An idle object's cursor ages too: read it with sfsync_poll_last_round_timestamp_seconds.",
            |p, now| (p.cursor_ms > 0).then(|| (now - p.cursor_ms).max(0) as f64 / 1000.0),
        ),
        (
            "sfsync_poll_last_round_timestamp_seconds",
            "When the polled channel's last complete round finished (Unix seconds).",
            |p, _| (p.last_round_ms > 0).then(|| p.last_round_ms as f64 / 1000.0),
        ),
        (
            "sfsync_poll_interval_seconds",
            "The configured pause between poll rounds.",
            |p, _| (p.interval_ms > 0).then(|| p.interval_ms as f64 / 1000.0),
        ),
        (
            "sfsync_poll_lag_bound_seconds",
            "The cursor lag a healthy polled flow stays under: two intervals plus the overlap.",
            |p, _| p.lag_bound_ms().map(|ms| ms as f64 / 1000.0),
        ),
    ];
    for (name, help, get) in gauges {
        o.family(name, "gauge", help);
        for (channel, p) in &polled {
            if let Some(v) = get(p, now_ms) {
                o.sample(
                    name,
                    &[("channel", channel), ("object", &object_of(channel))],
                    v,
                );
            }
        }
    }
}

/// One delivery sink's readings.
#[derive(Debug, Clone, Default)]
pub struct SinkMetrics {
    pub name: String,
    pub kind: &'static str,
    pub delivered: u64,
    pub failures: u64,
    pub dead_lettered: u64,
    pub echoes_skipped: u64,
    pub redriven: u64,
    /// Epoch ms since which a lane has been failing (0: none).
    pub failing_since_ms: i64,
    /// Per object: changes not delivered yet, and the apply time of the oldest of them.
    pub lanes: Vec<(String, u64, Option<i64>)>,
}

/// The sinks' families (declared without samples when no sink is configured, so rules and
/// dashboards find them).
fn sink_metrics(o: &mut Out, sinks: &[SinkMetrics], now_ms: i64) {
    type Get = fn(&SinkMetrics) -> u64;
    let counters: [(&str, &str, Get); 5] = [
        ("sfsync_sink_delivered_total", "Changes the sink's consumer acknowledged.", |s| s.delivered),
        ("sfsync_sink_failures_total", "Failed sends to the sink (each retry counts).", |s| s.failures),
        ("sfsync_sink_dead_lettered_total", "Changes the sink put in its dead letters (rejected, undeliverable, or held behind one).", |s| s.dead_lettered),
        ("sfsync_sink_echoes_skipped_total", "Changes not sent back to the system that wrote them through writeback.", |s| s.echoes_skipped),
        ("sfsync_sink_redriven_total", "Dead letters delivered on a redrive.", |s| s.redriven),
    ];
    for (name, help, get) in counters {
        o.family(name, "counter", help);
        for s in sinks {
            o.sample(name, &[("sink", &s.name), ("kind", s.kind)], get(s) as f64);
        }
    }
    o.family(
        "sfsync_sink_failing_seconds",
        "gauge",
        "How long the sink has been failing to deliver (0: delivering).",
    );
    for s in sinks {
        let secs = if s.failing_since_ms > 0 {
            (now_ms - s.failing_since_ms).max(0) as f64 / 1000.0
        } else {
            0.0
        };
        o.sample("sfsync_sink_failing_seconds", &[("sink", &s.name)], secs);
    }
    o.family(
        "sfsync_sink_backlog_changes",
        "gauge",
        "Applied changes the sink has not delivered yet, per object (counted up to 1,000,000).",
    );
    for s in sinks {
        for (object, n, _) in &s.lanes {
            o.sample(
                "sfsync_sink_backlog_changes",
                &[("sink", &s.name), ("object", object)],
                *n as f64,
            );
        }
    }
    o.family(
        "sfsync_sink_lag_seconds",
        "gauge",
        "Age of the oldest applied change the sink has not delivered, per object (0: none).",
    );
    for s in sinks {
        for (object, _, oldest) in &s.lanes {
            let lag = oldest.map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0);
            o.sample(
                "sfsync_sink_lag_seconds",
                &[("sink", &s.name), ("object", object)],
                lag,
            );
        }
    }
}

/// A histogram family from bucket counts (ms bounds; the last count is the overflow bucket).
fn histogram(o: &mut Out, name: &str, help: &str, bounds_ms: &[u64], counts: &[u64], sum_ms: u64) {
    o.family(name, "histogram", help);
    let mut cum = 0u64;
    for (i, c) in counts.iter().enumerate() {
        cum += c;
        let le = match bounds_ms.get(i) {
            Some(ms) => format!("{}", *ms as f64 / 1000.0),
            None => "+Inf".to_string(),
        };
        o.sample(&format!("{name}_bucket"), &[("le", &le)], cum as f64);
    }
    o.sample(&format!("{name}_sum"), &[], sum_ms as f64 / 1000.0);
    o.sample(&format!("{name}_count"), &[], cum as f64);
}

/// The exposition of `stats` and the store's queue sizes.
pub fn render(
    stats: &PipelineStats,
    counts: &sfsync_store::OpsCounts,
    extra: &Extra,
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
    flow_metrics(&mut o, stats, now_ms);
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
    histogram(
        &mut o,
        "sfsync_apply_latency_seconds",
        "Salesforce commit to curated-table commit latency of applied changes.",
        &LATENCY_BUCKETS_MS,
        &stats.latency_counts(),
        stats.latency_sum_ms(),
    );
    // Writeback SLA histograms and outcomes.
    let wb = &stats.writeback;
    histogram(
        &mut o,
        "sfsync_writeback_applied_seconds",
        "Writeback latency from acceptance (ledger) to Salesforce accepting the write.",
        &WRITEBACK_BUCKETS_MS,
        &wb.accepted_to_applied.counts(),
        wb.accepted_to_applied.sum_ms(),
    );
    histogram(
        &mut o,
        "sfsync_writeback_confirmed_seconds",
        "Writeback latency from acceptance to its CDC echo being applied.",
        &WRITEBACK_BUCKETS_MS,
        &wb.accepted_to_confirmed.counts(),
        wb.accepted_to_confirmed.sum_ms(),
    );
    let wb_objects = wb.objects();
    for (name, help, pick) in [
        (
            "sfsync_writeback_applied_total",
            "Writes Salesforce accepted, per object.",
            (|v: &sfsync_pipeline::stats::ObjectWriteStats| v.applied)
                as fn(&sfsync_pipeline::stats::ObjectWriteStats) -> u64,
        ),
        (
            "sfsync_writeback_failed_total",
            "Writes that became dead letters, per object.",
            |v: &sfsync_pipeline::stats::ObjectWriteStats| v.failed,
        ),
    ] {
        o.family(name, "counter", help);
        for (object, v) in &wb_objects {
            o.sample(name, &[("object", object)], pick(v) as f64);
        }
    }
    o.one(
        "sfsync_writeback_api_calls_total",
        "counter",
        "Salesforce API calls made for writeback.",
        g(&wb.api_calls),
    );
    o.one(
        "sfsync_writeback_records_sent_total",
        "counter",
        "Records sent to Salesforce by writeback (a record sent twice counts twice).",
        g(&wb.records_sent),
    );
    // The API budget.
    if let Some(b) = &extra.budget {
        if let (Some(used), Some(max)) = (b.org_used, b.org_max) {
            o.one(
                "sfsync_api_requests_used",
                "gauge",
                "The org's DailyApiRequests used in the rolling 24 h (all integrations).",
                used as f64,
            );
            o.one(
                "sfsync_api_requests_limit",
                "gauge",
                "The org's DailyApiRequests allocation.",
                max as f64,
            );
        }
        if let Some(allow) = b.our_allowance {
            o.one(
                "sfsync_api_requests_allowance",
                "gauge",
                "The most sfsync's own calls may use in the rolling 24 h (share, cap, headroom).",
                allow as f64,
            );
        }
        o.one(
            "sfsync_api_requests_ours",
            "gauge",
            "sfsync's own calls in the rolling 24 h.",
            b.our_used as f64,
        );
        o.one(
            "sfsync_api_limit_refusals_total",
            "counter",
            "Calls Salesforce refused for the daily limit (REQUEST_LIMIT_EXCEEDED).",
            b.limit_refusals as f64,
        );
        for (name, help, pick) in [
            (
                "sfsync_api_lane_calls",
                "Calls per budget lane in the rolling 24 h.",
                (|l: &sfsync_salesforce::LaneStatus| l.calls_window as f64)
                    as fn(&sfsync_salesforce::LaneStatus) -> f64,
            ),
            (
                "sfsync_api_lane_deferred",
                "Calls waiting for a permit per budget lane.",
                |l: &sfsync_salesforce::LaneStatus| l.deferred as f64,
            ),
        ] {
            o.family(name, "gauge", help);
            for l in &b.lanes {
                let lane = serde_json::to_value(l.lane)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                o.sample(name, &[("lane", &lane)], pick(l));
            }
        }
    }
    // Replay headroom per channel: the retention window minus the age of the newest applied
    // change (the checkpoint resumes after it).
    o.family(
        "sfsync_replay_headroom_seconds",
        "gauge",
        "Seconds until the channel's checkpoint leaves Pub/Sub's 72 h retention window.",
    );
    for (channel, objs) in &extra.channels {
        let newest = objects
            .iter()
            .filter(|(o, _)| objs.contains(o))
            .map(|(_, v)| v.last_commit_ms)
            .max()
            .unwrap_or(0);
        if newest > 0 {
            let age = (now_ms - newest).max(0) as f64 / 1000.0;
            o.sample(
                "sfsync_replay_headroom_seconds",
                &[("channel", channel)],
                REPLAY_RETENTION_SECS - age,
            );
        }
    }
    o.family(
        "sfsync_reconcile_drift_records",
        "gauge",
        "Records the last successful reconciliation found missing, extra or stale, per object.",
    );
    for (object, n) in &extra.drift {
        o.sample(
            "sfsync_reconcile_drift_records",
            &[("object", object)],
            *n as f64,
        );
    }
    if let Some((applied, archived)) = extra.archive {
        o.one(
            "sfsync_archive_archived_through_offset",
            "gauge",
            "Every raw-log entry at or below this offset is in the Parquet archive (verified).",
            archived as f64,
        );
        o.one(
            "sfsync_archive_unarchived_entries",
            "gauge",
            "Applied raw-log entries not archived yet (they cannot be pruned from the hot log).",
            applied.saturating_sub(archived) as f64,
        );
    }
    sink_metrics(&mut o, &extra.sinks, now_ms);
    if let Some(e) = &extra.events {
        event_metrics(&mut o, e);
    }
    if let Some(p) = extra.budget.as_ref().map(|b| &b.publish) {
        // Declared even before /limits is read (rules and dashboards find them).
        o.family(
            "sfsync_publish_budget_room_events",
            "gauge",
            "Platform events the hourly publish budget allows right now.",
        );
        if let Some(room) = p.room {
            o.sample("sfsync_publish_budget_room_events", &[], room as f64);
        }
        o.one(
            "sfsync_publish_budget_used_events",
            "gauge",
            "Platform events sfsync published in the rolling hour.",
            p.our_used as f64,
        );
        o.family(
            "sfsync_publish_budget_allowance_events",
            "gauge",
            "The most platform events sfsync may publish in the rolling hour (share, cap and headroom of the org's hourly allocation applied).",
        );
        if let Some(allowance) = p.our_allowance {
            o.sample(
                "sfsync_publish_budget_allowance_events",
                &[],
                allowance as f64,
            );
        }
    }
    outbound_metrics(&mut o, extra);
    o.family(
        "sfsync_sync_status",
        "gauge",
        "1 for the status the warehouse's sync_status view gives the object (current, delayed, partial), 0 for the others.",
    );
    for (object, status, _) in &extra.sync_status {
        for s in sfsync_store::FreshnessStatus::ALL {
            o.sample(
                "sfsync_sync_status",
                &[("object", object), ("status", s.as_str())],
                if s == *status { 1.0 } else { 0.0 },
            );
        }
    }
    o.family(
        "sfsync_sync_status_lag_seconds",
        "gauge",
        "Now minus the object's current_as_of in the sync_status view (an idle object that is caught up stays low).",
    );
    for (object, _, lag) in &extra.sync_status {
        if let Some(lag) = lag {
            o.sample(
                "sfsync_sync_status_lag_seconds",
                &[("object", object)],
                *lag,
            );
        }
    }
    o.family(
        "sfsync_runs_finished_total",
        "counter",
        "Runs (sync jobs) finished, per kind and status, as recorded in the store.",
    );
    for (kind, status, n) in &counts.runs_finished {
        o.sample(
            "sfsync_runs_finished_total",
            &[("kind", kind), ("status", status)],
            *n as f64,
        );
    }
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
    let text = exposition(&s).await?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

/// The exposition of one service's state (what `GET /metrics` answers).
pub async fn exposition(s: &ApiState) -> Result<String, ApiError> {
    let counts = super::routes::ops_counts(s).await?;
    // The last successful reconciliation of each object (newest first: the first seen wins).
    let recent = s
        .store
        .sync_jobs(&sfsync_store::SyncJobFilter {
            kind: Some(sfsync_store::SyncJobKind::Reconcile),
            statuses: vec![sfsync_store::SyncJobStatus::Succeeded],
            newest_first: true,
            limit: 1000,
            ..Default::default()
        })
        .await
        .map_err(|e| ApiError::internal("reading the runs", e))?;
    let mut drift: Vec<(String, u64)> = Vec::new();
    for j in recent {
        if drift.iter().any(|(o, _)| *o == j.object) {
            continue;
        }
        let report: serde_json::Value = j
            .report
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok())
            .unwrap_or_default();
        let n = ["missing", "extra", "stale"]
            .iter()
            .map(|k| report[*k].as_u64().unwrap_or(0))
            .sum();
        drift.push((j.object, n));
    }
    drift.sort();
    let mut channels: Vec<(String, Vec<String>)> = Vec::new();
    for o in &s.objects {
        if let Some(c) = &o.channel {
            match channels.iter_mut().find(|(k, _)| k == c) {
                Some((_, v)) => v.push(o.name.clone()),
                None => channels.push((c.clone(), vec![o.name.clone()])),
            }
        }
    }
    let applied = s
        .store
        .applied_offset(sfsync_pipeline::CURATED_CONSUMER)
        .await
        .map_err(|e| ApiError::internal("reading the apply offset", e))?;
    let archived = s
        .store
        .archived_through()
        .await
        .map_err(|e| ApiError::internal("reading the archive mark", e))?;
    let sinks = sink_readings(s)
        .await
        .map_err(|e| ApiError::internal("reading the delivery positions", e))?;
    let sync_status = s
        .store
        .sync_status(None)
        .await
        .map_err(|e| ApiError::internal("reading the warehouse's sync_status view", e))?
        .into_iter()
        .map(|r| (r.state.object, r.status, r.lag_seconds))
        .collect();
    let events = match &s.events {
        None => None,
        Some(ev) => {
            use std::sync::atomic::Ordering::Relaxed;
            let c = s
                .store
                .outbound_counts()
                .await
                .map_err(|e| ApiError::internal("counting the platform events", e))?;
            let st = &ev.stats;
            let mut published = st.published_by_event();
            for name in &s.publishable {
                if !published.iter().any(|(n, _)| n == name) {
                    published.push((name.clone(), 0));
                }
            }
            published.sort();
            Some(EventMetrics {
                channels: st.channels(),
                published,
                undecodable: st.undecodable.load(Relaxed),
                deferred: st.deferred.load(Relaxed),
                retried: st.retried.load(Relaxed),
                dead: st.dead.load(Relaxed),
                pending: c.pending,
                dead_open: c.dead,
            })
        }
    };
    let extra = Extra {
        budget: s.budget.as_ref().map(|b| b()),
        drift,
        channels,
        archive: applied.map(|a| (a, archived)),
        sinks,
        sync_status,
        events,
        outbound: outbound_readings(s),
        outbound_unauthorised: s
            .outbound
            .as_ref()
            .map_or(0, |o| o.unauthorised.load(Ordering::Relaxed)),
    };
    Ok(render(
        &s.stats,
        &counts,
        &extra,
        s.started.elapsed().as_secs_f64(),
        chrono::Utc::now().timestamp_millis(),
    ))
}

/// Several expositions as one, each sample labelled `label="<value>"` (first among its labels)
/// by the part it comes from: families keep their first-seen order, each with one `# HELP` and
/// `# TYPE` and then the samples of every part in part order (the text format wants a family's
/// samples together).
pub fn merge_labelled(label: &str, parts: &[(&str, &str)]) -> String {
    struct Family {
        head: Vec<String>,
        samples: Vec<String>,
    }
    let mut order: Vec<String> = Vec::new();
    let mut families: std::collections::HashMap<String, Family> = std::collections::HashMap::new();
    for (value, text) in parts {
        let value = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
            {
                let name = rest.split(' ').next().unwrap_or_default().to_string();
                let f = families.entry(name.clone()).or_insert_with(|| {
                    order.push(name.clone());
                    Family {
                        head: Vec::new(),
                        samples: Vec::new(),
                    }
                });
                if f.head.len() < 2 && !f.head.iter().any(|h| h == line) {
                    f.head.push(line.to_string());
                }
                current = name;
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let labelled = match line.find(['{', ' ']) {
                Some(i) if line.as_bytes()[i] == b'{' => {
                    let inner_empty = line[i + 1..].starts_with('}');
                    format!(
                        "{}{{{label}=\"{value}\"{}{}",
                        &line[..i],
                        if inner_empty { "" } else { "," },
                        &line[i + 1..]
                    )
                }
                Some(i) => format!("{}{{{label}=\"{value}\"}}{}", &line[..i], &line[i..]),
                None => continue,
            };
            let key = if current.is_empty() {
                line.split(['{', ' '])
                    .next()
                    .unwrap_or_default()
                    .to_string()
            } else {
                current.clone()
            };
            families
                .entry(key.clone())
                .or_insert_with(|| {
                    order.push(key.clone());
                    Family {
                        head: Vec::new(),
                        samples: Vec::new(),
                    }
                })
                .samples
                .push(labelled);
        }
    }
    let mut out = String::new();
    for name in order {
        if let Some(f) = families.get(&name) {
            for h in &f.head {
                out.push_str(h);
                out.push('\n');
            }
            for l in &f.samples {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

/// Each Outbound Message flow's counters, by flow name.
fn outbound_readings(s: &ApiState) -> Vec<(String, [u64; 8])> {
    let Some(service) = &s.outbound else {
        return Vec::new();
    };
    let mut out: Vec<(String, [u64; 8])> = service
        .flows
        .values()
        .map(|f| {
            let st = &f.stats;
            let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            (
                f.name.clone(),
                [
                    n(&st.acked),
                    n(&st.faulted),
                    n(&st.refused),
                    n(&st.logged),
                    n(&st.duplicates),
                    n(&st.dead_lettered),
                    n(&st.notifications_received),
                    n(&st.notifications_acked),
                ],
            )
        })
        .collect();
    out.sort();
    out
}

/// The sinks' counters with each lane's backlog from the store.
pub async fn sink_readings(s: &ApiState) -> sfsync_store::Result<Vec<SinkMetrics>> {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(stats) = &s.sinks else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for k in &stats.sinks {
        let mut lanes = Vec::new();
        for p in s.store.delivery_positions(&k.name).await? {
            let b = s.store.delivery_backlog(&p.object, p.position).await?;
            lanes.push((p.object, b.entries, b.oldest_applied_at_ms));
        }
        out.push(SinkMetrics {
            name: k.name.clone(),
            kind: k.kind,
            delivered: k.delivered.load(Relaxed),
            failures: k.failures.load(Relaxed),
            dead_lettered: k.dead_lettered.load(Relaxed),
            echoes_skipped: k.echoes_skipped.load(Relaxed),
            redriven: k.redriven.load(Relaxed),
            failing_since_ms: k.failing_since_ms.load(Relaxed),
            lanes,
        });
    }
    Ok(out)
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
        stats.writeback.accepted_to_applied.observe(300);
        stats.writeback.count_failed("Case");
        let extra = Extra {
            drift: vec![("Account".into(), 7)],
            channels: vec![(
                "/data/AccountChangeEvent".into(),
                vec!["Account".to_string()],
            )],
            archive: Some((10, 4)),
            sync_status: vec![
                (
                    "Account".into(),
                    sfsync_store::FreshnessStatus::Partial,
                    Some(2.5),
                ),
                ("Case".into(), sfsync_store::FreshnessStatus::Delayed, None),
            ],
            ..Default::default()
        };
        let text = render(&stats, &counts, &extra, 1.5, 3_500);
        assert_well_formed(&text);
        for want in [
            "sfsync_sync_status{object=\"Account\",status=\"partial\"} 1\n",
            "sfsync_sync_status{object=\"Account\",status=\"current\"} 0\n",
            "sfsync_sync_status{object=\"Case\",status=\"delayed\"} 1\n",
            "sfsync_sync_status_lag_seconds{object=\"Account\"} 2.5\n",
        ] {
            assert!(text.contains(want), "missing {want} in {text}");
        }
        assert!(
            !text.contains("sfsync_sync_status_lag_seconds{object=\"Case\"}"),
            "{text}"
        );
        assert!(
            text.contains("sfsync_archive_unarchived_entries 6\n")
                && text.contains("sfsync_archive_archived_through_offset 4\n"),
            "{text}"
        );
        assert!(
            text.contains("sfsync_writeback_applied_seconds_bucket{le=\"0.5\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("sfsync_writeback_applied_seconds_sum 0.3\n"),
            "{text}"
        );
        assert!(
            text.contains("sfsync_writeback_failed_total{object=\"Case\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("sfsync_reconcile_drift_records{object=\"Account\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "sfsync_replay_headroom_seconds{channel=\"/data/AccountChangeEvent\"} 259197\n"
            ),
            "{text}"
        );
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

    /// Every `# TYPE` line is preceded by its `# HELP`, and every sample belongs to the family
    /// declared last (its name, or its name less a histogram suffix).
    fn assert_well_formed(text: &str) {
        let mut family = String::new();
        let mut helped = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped = rest.split(' ').next().unwrap().to_string();
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_string();
                assert_eq!(family, helped, "TYPE without HELP: {line}");
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(
                    name.starts_with(&family),
                    "{line} outside its family {family}"
                );
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
    }

    #[test]
    fn polled_channels_flow_modes_events_and_outbound_messages_render_with_labels() {
        use sfsync_pipeline::stats::FlowMode;
        let stats = PipelineStats::default();
        stats.start_flow("Case", "/data/CaseChangeEvent", FlowMode::Cdc);
        stats.start_flow("Lead", "/poll/Lead", FlowMode::Poll);
        stats.start_flow("Account", "/data/AccountChangeEvent", FlowMode::Cdc);
        stats.set_flow_mode("Account", FlowMode::DegradedPoll);
        stats.poll_configured("/poll/Lead", 60_000, 30_000);
        stats.add_poll_calls("/poll/Lead", 3);
        stats.add_poll_page("/poll/Lead", 10, 7, 3);
        stats.poll_cursor("/poll/Lead", 100_000);
        stats.poll_round_done("/poll/Lead", 250_000);
        let extra = Extra {
            events: Some(EventMetrics {
                channels: vec![(
                    "/event/Order_Shipped__e".into(),
                    sfsync_pipeline::events::ChannelEvents {
                        received: 4,
                        duplicates: 1,
                    },
                )],
                published: vec![("Record_Applied__e".into(), 9), ("Unused__e".into(), 0)],
                ..Default::default()
            }),
            outbound: vec![("legacy".into(), [2, 1, 0, 5, 2, 1, 8, 7])],
            ..Default::default()
        };
        let text = render(
            &stats,
            &sfsync_store::OpsCounts::default(),
            &extra,
            1.0,
            400_000,
        );
        assert_well_formed(&text);
        let lead = "{channel=\"/poll/Lead\",object=\"Lead\"}";
        for want in [
            "# TYPE sfsync_flow_mode gauge\n".to_string(),
            "sfsync_flow_mode{channel=\"/data/CaseChangeEvent\",object=\"Case\"} 0\n".into(),
            format!("sfsync_flow_mode{lead} 1\n"),
            "sfsync_flow_mode{channel=\"/data/AccountChangeEvent\",object=\"Account\"} 2\n".into(),
            "# TYPE sfsync_poll_rounds_total counter\n".into(),
            format!("sfsync_poll_rounds_total{lead} 1\n"),
            format!("sfsync_poll_rows_read_total{lead} 10\n"),
            format!("sfsync_poll_rows_appended_total{lead} 7\n"),
            format!("sfsync_poll_duplicates_dropped_total{lead} 3\n"),
            format!("sfsync_poll_api_calls_total{lead} 3\n"),
            "# TYPE sfsync_poll_cursor_lag_seconds gauge\n".into(),
            format!("sfsync_poll_cursor_lag_seconds{lead} 300\n"),
            format!("sfsync_poll_last_round_timestamp_seconds{lead} 250\n"),
            format!("sfsync_poll_interval_seconds{lead} 60\n"),
            format!("sfsync_poll_lag_bound_seconds{lead} 150\n"),
            "sfsync_platform_events_received_total{channel=\"/event/Order_Shipped__e\"} 4\n".into(),
            "sfsync_platform_events_duplicates_total{channel=\"/event/Order_Shipped__e\"} 1\n"
                .into(),
            "sfsync_platform_events_published_total{event=\"Record_Applied__e\"} 9\n".into(),
            "sfsync_platform_events_published_total{event=\"Unused__e\"} 0\n".into(),
            "sfsync_outbound_notifications_received_total{flow=\"legacy\"} 8\n".into(),
            "sfsync_outbound_notifications_acknowledged_total{flow=\"legacy\"} 7\n".into(),
            "sfsync_outbound_notifications_total{flow=\"legacy\",outcome=\"duplicate\"} 2\n".into(),
        ] {
            assert!(text.contains(&want), "missing {want} in {text}");
        }
        // Nothing polled: the families are declared without samples (rules find them).
        let none = render(
            &PipelineStats::default(),
            &sfsync_store::OpsCounts::default(),
            &Extra::default(),
            1.0,
            400_000,
        );
        assert_well_formed(&none);
        assert!(none.contains("# TYPE sfsync_poll_cursor_lag_seconds gauge\n"));
        assert!(!none.contains("sfsync_poll_cursor_lag_seconds{"), "{none}");
    }

    #[test]
    fn merged_expositions_label_every_sample_and_keep_families_together() {
        let a = "# HELP x_total X.\n# TYPE x_total counter\nx_total 1\n\
                 # HELP h_seconds H.\n# TYPE h_seconds histogram\n\
                 h_seconds_bucket{le=\"1\"} 2\nh_seconds_sum 3\nh_seconds_count 2\n";
        let b = "# HELP x_total X.\n# TYPE x_total counter\nx_total 5\n\
                 # HELP y Y.\n# TYPE y gauge\ny{kind=\"a\"} 7\n";
        let text = merge_labelled("org", &[("dhs", a), ("co\"urts", b)]);
        assert_eq!(
            text,
            "# HELP x_total X.\n# TYPE x_total counter\n\
             x_total{org=\"dhs\"} 1\nx_total{org=\"co\\\"urts\"} 5\n\
             # HELP h_seconds H.\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{org=\"dhs\",le=\"1\"} 2\nh_seconds_sum{org=\"dhs\"} 3\n\
             h_seconds_count{org=\"dhs\"} 2\n\
             # HELP y Y.\n# TYPE y gauge\ny{org=\"co\\\"urts\",kind=\"a\"} 7\n"
        );
        // Every sample line parses as name{labels} value with the label first.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains("{org=\""), "{line}");
        }
    }
}
