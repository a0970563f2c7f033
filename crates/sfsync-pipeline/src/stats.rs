//! Live counters of a running pipeline, shared with the CLI (progress lines), the benchmark and
//! tests. Lock-free; a commit→curated latency histogram with log-spaced buckets.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Upper bounds (ms) of the latency buckets; the last bucket is open-ended.
pub const LATENCY_BUCKETS_MS: [u64; 16] = [
    5, 10, 25, 50, 100, 200, 300, 500, 750, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 120_000,
];

#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Events appended to the raw log.
    pub ingested: AtomicU64,
    /// Re-delivered events the raw log already held.
    pub duplicates: AtomicU64,
    /// Raw-log entries the apply stage has processed.
    pub processed: AtomicU64,
    /// Record changes applied in order.
    pub applied: AtomicU64,
    pub late: AtomicU64,
    pub stale: AtomicU64,
    pub own_writes: AtomicU64,
    pub repairs_requested: AtomicU64,
    pub repairs_done: AtomicU64,
    pub resyncs_requested: AtomicU64,
    /// Rows read by backfills, re-syncs and formula refreshes.
    pub snapshot_rows: AtomicU64,
    /// Rows whose formula columns a formula refresh updated.
    pub formula_rows_refreshed: AtomicU64,
    /// Sync jobs finished successfully.
    pub jobs_done: AtomicU64,
    /// Records found different from Salesforce by reconciliation (missing, extra or stale).
    pub drift_found: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Changes held in the quarantine (data-quality error or a missing parent).
    pub quarantined: AtomicU64,
    /// Quarantined changes released and applied.
    pub released: AtomicU64,
    /// Warn-severity data-quality failures (applied).
    pub dq_warnings: AtomicU64,
    /// Late-parent holds past their alert time.
    pub quarantine_alerts: AtomicU64,
    /// Open quarantined changes (gauge).
    pub quarantine_open: AtomicU64,
    pub errors: AtomicU64,
    pub batches: AtomicU64,
    /// Poll rounds of `mode = "poll"` objects that completed (every row up to the tip read).
    pub poll_rounds: AtomicU64,
    /// CDC channels that fell back to polling (automatic degradation).
    pub poll_fallbacks: AtomicU64,
    /// Rows polled (SOQL `queryAll` by SystemModstamp), new or already seen.
    pub poll_rows: AtomicU64,
    /// Bulk API 2.0 jobs created to read large poll backlogs.
    pub poll_bulk_jobs: AtomicU64,
    /// Rows of [`Self::poll_rows`] read through those jobs.
    pub poll_bulk_rows: AtomicU64,
    /// Commit timestamp (ms) of the newest applied change.
    pub last_commit_ms: AtomicI64,
    /// When (ms) the newest batch was applied.
    pub last_applied_at_ms: AtomicI64,
    latency: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    latency_sum_ms: AtomicU64,
    /// Cumulative wall time (ns) per stage: where a batch's time goes (benchmark breakdown).
    pub stage_ns: [AtomicU64; STAGES.len()],
    /// Writeback delivery and its echoes.
    pub writeback: WritebackStats,
    /// Per-channel and per-object figures (status and metrics).
    per_channel: parking_lot::Mutex<std::collections::BTreeMap<String, u64>>,
    per_object: parking_lot::Mutex<std::collections::BTreeMap<String, ObjectStats>>,
    /// Whether each channel's stream is up (set on subscribe, failure and stop; never per event).
    streams: parking_lot::Mutex<std::collections::BTreeMap<String, StreamState>>,
    /// Per polled channel (`/poll/<Object>`): rounds, rows, calls, cursor.
    per_poll: parking_lot::Mutex<std::collections::BTreeMap<String, PollStats>>,
    /// Per object: how its changes arrive right now (CDC, polling, or polling instead of CDC).
    flows: parking_lot::Mutex<std::collections::BTreeMap<String, FlowState>>,
}

/// How an object's changes arrive right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowMode {
    /// A Change Data Capture stream (the object's configured channel).
    Cdc,
    /// Polled by SystemModstamp because the config says so (`mode = "poll"`).
    Poll,
    /// A CDC object polled because its stream is unusable (automatic degradation).
    DegradedPoll,
}

impl FlowMode {
    /// The value of the `sfsync_flow_mode` gauge: 0 = cdc, 1 = poll, 2 = degraded-poll.
    pub fn gauge(self) -> u8 {
        match self {
            FlowMode::Cdc => 0,
            FlowMode::Poll => 1,
            FlowMode::DegradedPoll => 2,
        }
    }

    /// `cdc`, `poll`, `degraded-poll`.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowMode::Cdc => "cdc",
            FlowMode::Poll => "poll",
            FlowMode::DegradedPoll => "degraded-poll",
        }
    }
}

/// One object's flow mode and the channel it is reported under.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FlowState {
    /// The object's configured channel (`/data/CaseChangeEvent`, `/poll/Case`): a degraded CDC
    /// object keeps its CDC channel here.
    pub channel: String,
    pub mode: FlowMode,
    /// When (ms) the mode was last changed (0: set at start-up and never changed).
    pub since_ms: i64,
}

/// One polled channel's figures since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PollStats {
    /// Rounds that read every row up to the tip.
    pub rounds: u64,
    /// Rows read (new, re-read in the overlap, or unreadable).
    pub rows: u64,
    /// Rows appended to the raw log (new ones).
    pub appended: u64,
    /// Rows dropped as already logged (seen by this process, or already in the raw log).
    pub duplicates: u64,
    /// Salesforce API calls made (queries and queryMore pages).
    pub api_calls: u64,
    /// SystemModstamp (ms) of the cursor: the newest row read (0: no cursor yet).
    pub cursor_ms: i64,
    /// When (ms) the last complete round finished (0: none yet).
    pub last_round_ms: i64,
    /// The configured interval and overlap (ms; 0 when not recorded).
    pub interval_ms: u64,
    pub overlap_ms: u64,
}

impl PollStats {
    /// The cursor lag a healthy polled flow stays under, ms: two intervals (one of waiting, one
    /// for a round's own reading) plus the overlap (a row whose SystemModstamp was taken up to
    /// the overlap before it committed becomes visible that late). `None` without an interval.
    pub fn lag_bound_ms(&self) -> Option<u64> {
        (self.interval_ms > 0).then(|| 2 * self.interval_ms + self.overlap_ms)
    }
}

/// Where a channel's Pub/Sub stream stands, as its ingest task last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Subscribed and streaming since `since_ms` (every change the stream delivered since is in
    /// the raw log or on its way there).
    Up { since_ms: i64 },
    /// Not streaming since `since_ms` (a failure, a re-subscribe, or a stop): nothing committed
    /// in Salesforce after that moment is known to have arrived.
    Down { since_ms: i64 },
    /// A polled channel (`mode = "poll"`): the last complete round started at `through_ms`, so
    /// every change visible in Salesforce by then is in the raw log.
    Polled { through_ms: i64 },
}

/// What the apply stage did for one object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectStats {
    /// Record changes of the object the apply stage committed (applied, late, stale or held).
    pub changes: u64,
    /// Commit timestamp (ms) of the object's newest committed change (0: none yet).
    pub last_commit_ms: i64,
    /// When (ms) a batch with changes of the object was last committed (0: none yet).
    pub last_applied_ms: i64,
}

/// Upper bounds (ms) of the writeback latency buckets (accepted→applied, accepted→confirmed);
/// the last bucket is open-ended.
pub const WRITEBACK_BUCKETS_MS: [u64; 10] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
];

/// A fixed-bucket latency histogram (lock-free).
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; WRITEBACK_BUCKETS_MS.len() + 1],
    sum_ms: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, ms: i64) {
        let ms = ms.max(0) as u64;
        let i = WRITEBACK_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(WRITEBACK_BUCKETS_MS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// The sum of the observed values (ms).
    pub fn sum_ms(&self) -> u64 {
        self.sum_ms.load(Ordering::Relaxed)
    }

    /// Bucket counts in [`WRITEBACK_BUCKETS_MS`] order, then the overflow bucket.
    pub fn counts(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Quantile `q` (0..1) as the upper bound of its bucket in ms (`u64::MAX`: beyond the last).
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        quantile_of(&WRITEBACK_BUCKETS_MS, &self.counts(), q)
    }
}

/// Counters of writeback: the deliverer counts writes it settles and the calls it makes; the
/// apply stage counts confirmations (CDC echoes of our writes).
#[derive(Debug, Default)]
pub struct WritebackStats {
    /// Writes taken from the ledger for delivery (claims, including re-deliveries).
    pub claimed: AtomicU64,
    pub applied: AtomicU64,
    pub confirmed: AtomicU64,
    /// Dead letters (Salesforce refused permanently, or retries ran out).
    pub failed: AtomicU64,
    /// Refused by the ownership/conflict policy (whole write).
    pub rejected: AtomicU64,
    /// Moved to the conflict queue.
    pub conflict: AtomicU64,
    /// Fields dropped from an otherwise applied write by the policy.
    pub fields_rejected: AtomicU64,
    /// Retryable failures (lock, 5xx, transport) that sent records again.
    pub retries: AtomicU64,
    /// Writes returned to pending after their claim's lease ran out.
    pub requeued_abandoned: AtomicU64,
    /// Salesforce API calls made for writeback (Composite calls; Bulk jobs count each request).
    pub api_calls: AtomicU64,
    /// Records sent (a record sent twice counts twice).
    pub records_sent: AtomicU64,
    /// Accepted (stored in the ledger) → applied (Salesforce accepted it).
    pub accepted_to_applied: Histogram,
    /// Accepted → confirmed (its CDC echo was applied).
    pub accepted_to_confirmed: Histogram,
    /// Per object: writes applied and dead-lettered.
    per_object: parking_lot::Mutex<std::collections::BTreeMap<String, ObjectWriteStats>>,
}

/// One object's writeback outcomes since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectWriteStats {
    pub applied: u64,
    pub failed: u64,
}

impl WritebackStats {
    /// Counts a write of `object` Salesforce accepted.
    pub fn count_applied(&self, object: &str) {
        self.applied.fetch_add(1, Ordering::Relaxed);
        self.per_object
            .lock()
            .entry(object.to_string())
            .or_default()
            .applied += 1;
    }

    /// Counts a write of `object` that became a dead letter.
    pub fn count_failed(&self, object: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.per_object
            .lock()
            .entry(object.to_string())
            .or_default()
            .failed += 1;
    }

    /// Per-object outcomes, by object.
    pub fn objects(&self) -> Vec<(String, ObjectWriteStats)> {
        self.per_object
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub fn snapshot(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let calls = g(&self.api_calls);
        serde_json::json!({
            "claimed": g(&self.claimed),
            "applied": g(&self.applied),
            "confirmed": g(&self.confirmed),
            "failed": g(&self.failed),
            "rejected": g(&self.rejected),
            "conflict": g(&self.conflict),
            "fields_rejected": g(&self.fields_rejected),
            "retries": g(&self.retries),
            "requeued_abandoned": g(&self.requeued_abandoned),
            "api_calls": calls,
            "records_sent": g(&self.records_sent),
            "records_per_call": if calls == 0 { 0.0 } else { g(&self.records_sent) as f64 / calls as f64 },
            "latency_bucket_upper_ms": WRITEBACK_BUCKETS_MS,
            "accepted_to_applied_counts": self.accepted_to_applied.counts(),
            "accepted_to_confirmed_counts": self.accepted_to_confirmed.counts(),
            "accepted_to_applied_p50_ms": self.accepted_to_applied.quantile_ms(0.5),
            "accepted_to_applied_p99_ms": self.accepted_to_applied.quantile_ms(0.99),
            "accepted_to_confirmed_p50_ms": self.accepted_to_confirmed.quantile_ms(0.5),
            "accepted_to_confirmed_p99_ms": self.accepted_to_confirmed.quantile_ms(0.99),
        })
    }
}

/// Stages timed in [`PipelineStats::stage_ns`], in index order.
pub const STAGES: [&str; 6] = [
    "ingest_write",
    "apply_read",
    "apply_decode",
    "apply_load",
    "apply_plan",
    "apply_commit",
];
pub const STAGE_INGEST_WRITE: usize = 0;
pub const STAGE_APPLY_READ: usize = 1;
pub const STAGE_APPLY_DECODE: usize = 2;
pub const STAGE_APPLY_LOAD: usize = 3;
pub const STAGE_APPLY_PLAN: usize = 4;
pub const STAGE_APPLY_COMMIT: usize = 5;

impl PipelineStats {
    /// Records one change's commit→curated latency.
    pub fn observe_latency(&self, ms: i64) {
        let ms = ms.max(0) as u64;
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Bucket counts (cumulative order as [`LATENCY_BUCKETS_MS`], then the overflow bucket).
    pub fn latency_counts(&self) -> Vec<u64> {
        self.latency
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Sum of the observed latencies, ms (a histogram's `_sum`).
    pub fn latency_sum_ms(&self) -> u64 {
        self.latency_sum_ms.load(Ordering::Relaxed)
    }

    /// The latency quantile `q` (0..1) as the upper bound of its bucket, in ms.
    pub fn latency_quantile_ms(&self, q: f64) -> Option<u64> {
        quantile(&self.latency_counts(), q)
    }

    /// Adds the time since `since` to stage `i`.
    pub fn time_stage(&self, i: usize, since: std::time::Instant) {
        self.stage_ns[i].fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Counts `n` events appended to the raw log from `channel`.
    pub fn add_channel_ingested(&self, channel: &str, n: u64) {
        if n > 0 {
            *self
                .per_channel
                .lock()
                .entry(channel.to_string())
                .or_default() += n;
        }
    }

    /// Counts `changes` committed changes of `object`, the newest committed at `max_commit_ms`.
    pub fn add_object_changes(&self, object: &str, changes: u64, max_commit_ms: i64) {
        self.add_object_batch(object, changes, max_commit_ms, 0);
    }

    /// [`PipelineStats::add_object_changes`] of a batch committed at `applied_at_ms`.
    pub fn add_object_batch(
        &self,
        object: &str,
        changes: u64,
        max_commit_ms: i64,
        applied_at_ms: i64,
    ) {
        let mut m = self.per_object.lock();
        let e = m.entry(object.to_string()).or_default();
        e.changes += changes;
        e.last_commit_ms = e.last_commit_ms.max(max_commit_ms);
        e.last_applied_ms = e.last_applied_ms.max(applied_at_ms);
    }

    /// Records that `channel`'s stream is up from `at_ms` (kept if it already was).
    pub fn stream_up(&self, channel: &str, at_ms: i64) {
        let mut m = self.streams.lock();
        if !matches!(m.get(channel), Some(StreamState::Up { .. })) {
            m.insert(channel.to_string(), StreamState::Up { since_ms: at_ms });
        }
    }

    /// Records that `channel`'s stream is down from `at_ms` (the first moment is kept).
    pub fn stream_down(&self, channel: &str, at_ms: i64) {
        let mut m = self.streams.lock();
        if !matches!(m.get(channel), Some(StreamState::Down { .. })) {
            m.insert(channel.to_string(), StreamState::Down { since_ms: at_ms });
        }
    }

    /// Records that a poll round of `channel` that started at `through_ms` read everything up
    /// to the tip.
    pub fn polled(&self, channel: &str, through_ms: i64) {
        self.streams
            .lock()
            .insert(channel.to_string(), StreamState::Polled { through_ms });
    }

    /// Records the interval and overlap of polled `channel` (start-up; the lag bound reads them).
    pub fn poll_configured(&self, channel: &str, interval_ms: u64, overlap_ms: u64) {
        let mut m = self.per_poll.lock();
        let e = m.entry(channel.to_string()).or_default();
        e.interval_ms = interval_ms;
        e.overlap_ms = overlap_ms;
    }

    /// Counts `n` Salesforce API calls of polled `channel`.
    pub fn add_poll_calls(&self, channel: &str, n: u64) {
        self.per_poll
            .lock()
            .entry(channel.to_string())
            .or_default()
            .api_calls += n;
    }

    /// Counts one page of polled `channel`: rows read, appended and dropped as duplicates.
    pub fn add_poll_page(&self, channel: &str, rows: u64, appended: u64, duplicates: u64) {
        let mut m = self.per_poll.lock();
        let e = m.entry(channel.to_string()).or_default();
        e.rows += rows;
        e.appended += appended;
        e.duplicates += duplicates;
    }

    /// Records the cursor of polled `channel` (the stored one at a round's start, the new one
    /// after a committed page); it never moves back.
    pub fn poll_cursor(&self, channel: &str, modstamp_ms: i64) {
        let mut m = self.per_poll.lock();
        let e = m.entry(channel.to_string()).or_default();
        e.cursor_ms = e.cursor_ms.max(modstamp_ms);
    }

    /// Counts a complete round of polled `channel` that finished at `at_ms`.
    pub fn poll_round_done(&self, channel: &str, at_ms: i64) {
        let mut m = self.per_poll.lock();
        let e = m.entry(channel.to_string()).or_default();
        e.rounds += 1;
        e.last_round_ms = e.last_round_ms.max(at_ms);
    }

    /// Per polled channel figures, by channel.
    pub fn poll_channels(&self) -> Vec<(String, PollStats)> {
        self.per_poll
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// One polled channel's figures (`None`: not polled by this process).
    pub fn poll_channel(&self, channel: &str) -> Option<PollStats> {
        self.per_poll.lock().get(channel).copied()
    }

    /// Records `object`'s flow at start-up: its configured channel and mode.
    pub fn start_flow(&self, object: &str, channel: &str, mode: FlowMode) {
        self.flows.lock().insert(
            object.to_string(),
            FlowState {
                channel: channel.to_string(),
                mode,
                since_ms: 0,
            },
        );
    }

    /// Sets `object`'s flow mode (CDC → degraded-poll and back); the channel recorded at
    /// start-up is kept (an object not recorded yet is reported under its poll channel).
    pub fn set_flow_mode(&self, object: &str, mode: FlowMode) {
        let now = chrono::Utc::now().timestamp_millis();
        let mut m = self.flows.lock();
        let e = m.entry(object.to_string()).or_insert_with(|| FlowState {
            channel: crate::poll::channel(object),
            mode,
            since_ms: now,
        });
        if e.mode != mode {
            e.mode = mode;
            e.since_ms = now;
        }
    }

    /// `object`'s flow (`None`: not recorded).
    pub fn flow_mode(&self, object: &str) -> Option<FlowState> {
        self.flows.lock().get(object).cloned()
    }

    /// Every recorded flow, by object.
    pub fn flow_modes(&self) -> Vec<(String, FlowState)> {
        self.flows
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The state of `channel`'s stream (`None`: not subscribed yet by this process).
    pub fn stream_state(&self, channel: &str) -> Option<StreamState> {
        self.streams.lock().get(channel).copied()
    }

    /// Events ingested per channel, by channel.
    pub fn channels(&self) -> Vec<(String, u64)> {
        self.per_channel
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Per-object apply figures, by object.
    pub fn objects(&self) -> Vec<(String, ObjectStats)> {
        self.per_object
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Cumulative ns per stage, named.
    pub fn stage_times(&self) -> Vec<(&'static str, u64)> {
        STAGES
            .iter()
            .zip(&self.stage_ns)
            .map(|(n, c)| (*n, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Every counter as JSON (the `--stats-file` of `sfsync run`, read by the benchmark).
    pub fn snapshot(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "ingested": g(&self.ingested),
            "duplicates": g(&self.duplicates),
            "poll_rounds": g(&self.poll_rounds),
            "poll_rows": g(&self.poll_rows),
            "poll_bulk_jobs": g(&self.poll_bulk_jobs),
            "poll_bulk_rows": g(&self.poll_bulk_rows),
            "processed": g(&self.processed),
            "applied": g(&self.applied),
            "late": g(&self.late),
            "stale": g(&self.stale),
            "own_writes": g(&self.own_writes),
            "repairs_requested": g(&self.repairs_requested),
            "repairs_done": g(&self.repairs_done),
            "resyncs_requested": g(&self.resyncs_requested),
            "snapshot_rows": g(&self.snapshot_rows),
            "formula_rows_refreshed": g(&self.formula_rows_refreshed),
            "jobs_done": g(&self.jobs_done),
            "drift_found": g(&self.drift_found),
            "dead_letters": g(&self.dead_letters),
            "quarantined": g(&self.quarantined),
            "released": g(&self.released),
            "dq_warnings": g(&self.dq_warnings),
            "quarantine_alerts": g(&self.quarantine_alerts),
            "quarantine_open": g(&self.quarantine_open),
            "errors": g(&self.errors),
            "batches": g(&self.batches),
            "last_commit_ms": self.last_commit_ms.load(Ordering::Relaxed),
            "last_applied_at_ms": self.last_applied_at_ms.load(Ordering::Relaxed),
            "latency_bucket_upper_ms": LATENCY_BUCKETS_MS,
            "latency_counts": self.latency_counts(),
            "stage_ns": self.stage_times().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "writeback": self.writeback.snapshot(),
            "poll_channels": self.poll_channels().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "flow_modes": self.flow_modes().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        })
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Quantile from bucket counts (upper bound of the bucket; the overflow bucket reports
/// `u64::MAX`).
pub fn quantile(counts: &[u64], q: f64) -> Option<u64> {
    quantile_of(&LATENCY_BUCKETS_MS, counts, q)
}

/// Quantile from bucket counts against the given upper bounds.
fn quantile_of(bounds: &[u64], counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(bounds.get(i).copied().unwrap_or(u64::MAX));
        }
    }
    None
}

/// Difference of two bucket-count snapshots (for a measurement window).
pub fn diff_counts(after: &[u64], before: &[u64]) -> Vec<u64> {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_buckets() {
        let s = PipelineStats::default();
        for ms in [1, 2, 3, 7, 400, 900] {
            s.observe_latency(ms);
        }
        assert_eq!(s.latency_quantile_ms(0.5), Some(5));
        assert_eq!(s.latency_quantile_ms(0.99), Some(1_000));
        assert_eq!(quantile(&[0; 17], 0.5), None);
    }

    #[test]
    fn writeback_histograms() {
        let h = Histogram::default();
        assert_eq!(h.quantile_ms(0.99), None);
        for ms in [50, 90, 300, 300, 7_000] {
            h.observe(ms);
        }
        assert_eq!(h.quantile_ms(0.5), Some(500));
        assert_eq!(h.quantile_ms(0.99), Some(10_000));
        h.observe(1_000_000);
        assert_eq!(h.quantile_ms(1.0), Some(u64::MAX));
        assert_eq!(h.counts().len(), WRITEBACK_BUCKETS_MS.len() + 1);
    }

    #[test]
    fn poll_figures_add_up_per_channel_and_the_cursor_never_moves_back() {
        let s = PipelineStats::default();
        assert_eq!(s.poll_channel("/poll/Lead"), None);
        s.poll_configured("/poll/Lead", 60_000, 30_000);
        s.add_poll_calls("/poll/Lead", 2);
        s.add_poll_page("/poll/Lead", 5, 4, 1);
        s.add_poll_page("/poll/Lead", 3, 0, 3);
        s.poll_cursor("/poll/Lead", 2_000);
        s.poll_cursor("/poll/Lead", 1_000);
        s.poll_round_done("/poll/Lead", 5_000);
        s.poll_round_done("/poll/Lead", 9_000);
        s.add_poll_calls("/poll/Account", 1);
        let lead = s.poll_channel("/poll/Lead").unwrap();
        assert_eq!(
            lead,
            PollStats {
                rounds: 2,
                rows: 8,
                appended: 4,
                duplicates: 4,
                api_calls: 2,
                cursor_ms: 2_000,
                last_round_ms: 9_000,
                interval_ms: 60_000,
                overlap_ms: 30_000,
            }
        );
        assert_eq!(lead.lag_bound_ms(), Some(150_000));
        assert_eq!(
            s.poll_channel("/poll/Account").unwrap().lag_bound_ms(),
            None
        );
        let names: Vec<String> = s.poll_channels().into_iter().map(|(c, _)| c).collect();
        assert_eq!(names, ["/poll/Account", "/poll/Lead"]);
        let snap = s.snapshot();
        assert_eq!(snap["poll_channels"]["/poll/Lead"]["rounds"], 2);
        assert_eq!(snap["poll_channels"]["/poll/Lead"]["cursor_ms"], 2_000);
    }

    #[test]
    fn flow_modes_keep_the_configured_channel_and_when_they_changed() {
        let s = PipelineStats::default();
        s.start_flow("Case", "/data/CaseChangeEvent", FlowMode::Cdc);
        s.start_flow("Lead", "/poll/Lead", FlowMode::Poll);
        assert_eq!(s.flow_mode("Case").unwrap().since_ms, 0);
        s.set_flow_mode("Case", FlowMode::DegradedPoll);
        let case = s.flow_mode("Case").unwrap();
        assert_eq!(
            (case.channel.as_str(), case.mode),
            ("/data/CaseChangeEvent", FlowMode::DegradedPoll)
        );
        assert!(case.since_ms > 0);
        // Setting the same mode again keeps the moment it changed.
        s.set_flow_mode("Case", FlowMode::DegradedPoll);
        assert_eq!(s.flow_mode("Case").unwrap().since_ms, case.since_ms);
        // An object not recorded at start-up is reported under its poll channel.
        s.set_flow_mode("Task", FlowMode::DegradedPoll);
        assert_eq!(s.flow_mode("Task").unwrap().channel, "/poll/Task");
        let gauges: Vec<(String, u8)> = s
            .flow_modes()
            .into_iter()
            .map(|(o, f)| (o, f.mode.gauge()))
            .collect();
        assert_eq!(
            gauges,
            [
                ("Case".to_string(), 2),
                ("Lead".to_string(), 1),
                ("Task".to_string(), 2)
            ]
        );
        let snap = s.snapshot();
        assert_eq!(snap["flow_modes"]["Lead"]["mode"], "poll");
        assert_eq!(snap["flow_modes"]["Case"]["mode"], "degraded-poll");
    }

    #[test]
    fn stream_states_keep_their_first_moment() {
        let s = PipelineStats::default();
        assert_eq!(s.stream_state("/data/CaseChangeEvent"), None);
        s.stream_up("/data/CaseChangeEvent", 10);
        s.stream_up("/data/CaseChangeEvent", 20);
        assert_eq!(
            s.stream_state("/data/CaseChangeEvent"),
            Some(StreamState::Up { since_ms: 10 })
        );
        s.stream_down("/data/CaseChangeEvent", 30);
        s.stream_down("/data/CaseChangeEvent", 40);
        assert_eq!(
            s.stream_state("/data/CaseChangeEvent"),
            Some(StreamState::Down { since_ms: 30 })
        );
        s.stream_up("/data/CaseChangeEvent", 50);
        assert_eq!(
            s.stream_state("/data/CaseChangeEvent"),
            Some(StreamState::Up { since_ms: 50 })
        );
        s.add_object_batch("Case", 2, 7, 100);
        s.add_object_changes("Case", 1, 5);
        let (_, case) = s.objects().pop().unwrap();
        assert_eq!(
            case,
            ObjectStats {
                changes: 3,
                last_commit_ms: 7,
                last_applied_ms: 100
            }
        );
    }
}
