//! The apply stage: reads the raw change log from its committed offset, decodes, normalises and
//! plans each batch, and commits curated rows + history + audit + the new apply offset in ONE
//! transaction. Exactly once: the offset moves only with the writes it covers, so a crash at any
//! point resumes right after the last committed batch; re-delivered events never reach it (the
//! raw log dedupes by event key) and per-record versions make any re-application a no-op.
//!
//! A batch is cut right after any change that needs a repair (a GAP_* event, an UPDATE for a
//! record never seen, a diff that cannot be applied): the repair re-reads those records from
//! Salesforce and applies them as snapshots before the next change is applied, so the outcome
//! does not depend on where batches or crashes fall. Repairs that fail stay pending and are
//! retried; a GAP_OVERFLOW becomes a recorded re-sync request.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sfsync_salesforce::pubsub::ChangeSchema;
use sfsync_store::{CuratedBatch, DeadLetter, LogOffset, LoggedChange, StoredRepair, Warehouse};

mod job_step;
mod replay_step;

use crate::error::{chain, PipelineError, Result};
use crate::model::ObjectMapping;
use crate::normalize::{self, Normalized, RecordChange};
use crate::plan::Planner;
use crate::stats::{
    PipelineStats, STAGE_APPLY_COMMIT, STAGE_APPLY_DECODE, STAGE_APPLY_LOAD, STAGE_APPLY_PLAN,
    STAGE_APPLY_READ,
};

/// Payload bytes of one apply batch at most (besides `batch_max_records`): a batch's decoded
/// changes, loaded rows and planned writes take several times its payload in memory, and two
/// batches are in hand at once (one planned while the other commits). The rest of the log is
/// read by the next step.
const BATCH_MAX_PAYLOAD_BYTES: usize = 3 << 20;

/// Keeps the longest prefix of `logged` within `max_bytes` of payload (at least one change).
fn truncate_to_bytes(logged: &mut Vec<LoggedChange>, max_bytes: usize) {
    let mut total = 0usize;
    let keep = logged
        .iter()
        .position(|lc| {
            total += lc.change.payload.len();
            total > max_bytes
        })
        .unwrap_or(logged.len())
        .max(1);
    logged.truncate(keep);
}

/// Name of the curated consumer's apply offset.
pub const CURATED_CONSUMER: &str = "curated";

/// Re-reads records from Salesforce (gap repair). Implemented over SOQL `queryAll` for the real
/// client; the contract: return every requested record that exists or is in the recycle bin,
/// with `Id`, `SystemModstamp`, `IsDeleted` and `fields`.
#[async_trait]
pub trait RecordReader: Send + Sync {
    async fn read(
        &self,
        object: &str,
        fields: &[String],
        ids: &[String],
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>>;

    /// Describes an object again (schema drift).
    async fn describe(&self, object: &str) -> Result<sfsync_salesforce::rest::ObjectDescribe>;
}

#[async_trait]
impl RecordReader for sfsync_salesforce::SalesforceClient {
    async fn read(
        &self,
        object: &str,
        fields: &[String],
        ids: &[String],
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
        let mut select: Vec<&str> = fields.iter().map(String::as_str).collect();
        for extra in ["SystemModstamp", "IsDeleted"] {
            if !select.contains(&extra) {
                select.push(extra);
            }
        }
        let quoted: Vec<String> = ids
            .iter()
            .filter(|id| id.chars().all(|c| c.is_ascii_alphanumeric()))
            .map(|id| format!("'{id}'"))
            .collect();
        if quoted.is_empty() {
            return Ok(Vec::new());
        }
        let soql = format!(
            "SELECT {} FROM {object} WHERE Id IN ({})",
            select.join(", "),
            quoted.join(", ")
        );
        Ok(self
            .query_all_pages(
                &soql,
                sfsync_salesforce::QueryOptions {
                    include_deleted: true,
                    ..Default::default()
                },
            )
            .await?)
    }

    async fn describe(&self, object: &str) -> Result<sfsync_salesforce::rest::ObjectDescribe> {
        Ok(self.describe_object(object).await?)
    }
}

/// Tuning of the apply stage.
#[derive(Debug, Clone)]
pub struct ApplyConfig {
    pub batch_max_records: usize,
    pub gap_reread_batch_records: usize,
    pub own_client: String,
    pub run_id: String,
    /// Data-quality failures stored in full per object and rule (beyond: counted only).
    pub max_stored_failures_per_rule: u64,
    /// Backfills, re-syncs and reconciliations.
    pub jobs: crate::jobs::JobsConfig,
    /// The archive and retention jobs.
    pub maintenance: crate::maintenance::MaintenanceConfig,
    /// Applied changes go to the delivery outbox (a delivery sink is configured).
    pub deliver: bool,
}

/// Stored failures per rule when not configured.
pub const DEFAULT_MAX_STORED_FAILURES_PER_RULE: u64 = 10_000;
/// How often release requests are looked for, and late-parent alerts raised.
const RELEASE_POLL: std::time::Duration = std::time::Duration::from_secs(1);
const ALERT_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// The apply stage.
pub struct Applier {
    store: Arc<dyn Warehouse>,
    reader: Arc<dyn RecordReader>,
    mappings: HashMap<String, ObjectMapping>,
    specs: HashMap<String, crate::model::ObjectSpec>,
    schemas: HashMap<String, Arc<ChangeSchema>>,
    /// Schema ids seen per object (a new one triggers a describe and new columns).
    seen_schemas: HashSet<(String, String)>,
    config: ApplyConfig,
    stats: Arc<PipelineStats>,
    offset: Option<LogOffset>,
    /// Repairs may be pending (true at start, after a batch that requested some, and while a
    /// re-read keeps failing); saves a query per batch otherwise.
    repairs_pending: bool,
    /// The batch being committed while the next one is read, decoded and planned.
    in_flight: Option<InFlight>,
    /// Data-quality state (caps, held records); `None` until first needed.
    gate: Option<crate::plan::GateRun>,
    /// Records of parent objects applied since the last release check: (object, ids).
    arrived: Vec<(String, Vec<String>)>,
    last_release_poll: Option<Instant>,
    last_alert_poll: Option<Instant>,
    /// Bulk API 2.0 access for sync jobs (none: jobs are not taken).
    bulk: Option<sfsync_salesforce::bulk::Bulk>,
    jobs: crate::jobs::JobRunner,
    /// Repair requests whose re-read failed: attempts so far and when to try again. Others go
    /// ahead meanwhile; a request that cannot succeed ends as a dead letter.
    repair_retries: HashMap<i64, (u32, Instant)>,
    /// Confirms writeback writes from their CDC echoes (none: writeback is off).
    echo: Option<Arc<crate::writeback::EchoConfirmer>>,
    /// Notified when a sync job's fetch task hands over a batch (see [`Applier::with_wake`]).
    fetch_wake: Option<Arc<tokio::sync::Notify>>,
    /// The raw log is a Kafka topic this worker consumes as a group member (none: the store's
    /// raw log).
    kafka: Option<crate::kafka_log::KafkaLogReader>,
}

/// Re-read attempts of a repair request failing with transient errors before it is given up
/// (dead-lettered with its last error); with the backoff below, about an hour of trying.
const REPAIR_MAX_ATTEMPTS: u32 = 16;
/// Longest wait between two attempts of one repair request.
const REPAIR_MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What a committed batch adds to the counters.
struct Committed {
    processed: u64,
    totals: crate::plan::PlanStats,
    repairs: u64,
    resyncs: u64,
    dead_letters: u64,
    commit_times: Vec<i64>,
    /// (object, changes, newest commit ms) of the batch.
    objects: HashMap<String, (u64, i64)>,
    quarantine_open_delta: i64,
}

impl Committed {
    /// Counts the batch, right after its commit (commit → curated latency ends here).
    fn record(self, st: &PipelineStats) {
        use std::sync::atomic::Ordering::Relaxed;
        let now_after = now_ms();
        st.processed.fetch_add(self.processed, Relaxed);
        st.applied.fetch_add(self.totals.applied, Relaxed);
        st.late.fetch_add(self.totals.late, Relaxed);
        st.stale.fetch_add(self.totals.stale, Relaxed);
        st.own_writes.fetch_add(self.totals.own_writes, Relaxed);
        st.repairs_requested.fetch_add(self.repairs, Relaxed);
        st.resyncs_requested.fetch_add(self.resyncs, Relaxed);
        st.dead_letters.fetch_add(self.dead_letters, Relaxed);
        st.quarantined.fetch_add(self.totals.quarantined, Relaxed);
        st.released.fetch_add(self.totals.released, Relaxed);
        st.dq_warnings.fetch_add(self.totals.warned, Relaxed);
        if self.quarantine_open_delta >= 0 {
            st.quarantine_open
                .fetch_add(self.quarantine_open_delta as u64, Relaxed);
        } else {
            let d = self.quarantine_open_delta.unsigned_abs();
            let _ = st
                .quarantine_open
                .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(d)));
        }
        st.batches.fetch_add(1, Relaxed);
        for ts in &self.commit_times {
            st.observe_latency(now_after - ts);
        }
        if let Some(max) = self.commit_times.iter().max() {
            st.last_commit_ms.fetch_max(*max, Relaxed);
        }
        for (object, (changes, max)) in &self.objects {
            st.add_object_batch(object, *changes, *max, now_after);
        }
        st.last_applied_at_ms.store(now_after, Relaxed);
    }
}

/// Kafka offsets to commit after a batch's store commit: (consumer, [(topic, partition, next)]).
type Advisory = (Arc<sfsync_kafka::Consumer>, Vec<(String, i32, i64)>);

/// A batch whose commit runs beside the planning of the next one.
struct InFlight {
    task: tokio::task::JoinHandle<Result<()>>,
    batch: Arc<CuratedBatch>,
    /// (object, id) → index in `batch.rows`.
    index: HashMap<(String, String), usize>,
}

impl InFlight {
    /// `offset`: the raw-log position the batch completes (`None` for a sync job's snapshot
    /// rows, whose position is the job's, in `batch.job_progress`). `done`: the streamed
    /// batch's counts, recorded once it is in.
    fn start(
        store: Arc<dyn Warehouse>,
        stats: Arc<PipelineStats>,
        offset: Option<LogOffset>,
        batch: Arc<CuratedBatch>,
        done: Option<Committed>,
        echoes: Option<(
            Arc<crate::writeback::EchoConfirmer>,
            Vec<crate::writeback::Echo>,
        )>,
        advisory: Option<Advisory>,
    ) -> InFlight {
        let index = batch
            .rows
            .iter()
            .enumerate()
            .map(|(i, (object, row))| ((object.clone(), row.id.clone()), i))
            .collect();
        let b = batch.clone();
        let task = tokio::spawn(async move {
            let t = Instant::now();
            store.commit_curated(CURATED_CONSUMER, offset, &b).await?;
            stats.time_stage(STAGE_APPLY_COMMIT, t);
            if let Some((consumer, next)) = advisory {
                // Advisory only: the store holds the real positions.
                if let Err(e) = consumer.commit(&next).await {
                    tracing::debug!(error = %e, "Kafka offset commit failed (advisory; the store has the positions).");
                }
            }
            if let Some(done) = done {
                done.record(&stats);
            }
            // Right after the commit (the ledger is not part of the curated transaction).
            if let Some((confirmer, echoes)) = echoes {
                confirmer.confirm(echoes).await;
            }
            Ok(())
        });
        InFlight { task, batch, index }
    }

    fn row(&self, key: &(String, String)) -> Option<&sfsync_store::CurrentRow> {
        self.index.get(key).map(|i| &self.batch.rows[*i].1)
    }
}

/// The echoes of our own writes in a planned batch (audit entries whose origin client is ours
/// and whose change reached the curated model), in batch order.
fn own_echoes(batch: &CuratedBatch, own_client: &str) -> Vec<crate::writeback::Echo> {
    batch
        .audit
        .iter()
        .filter(|a| a.outcome != "quarantined")
        .filter(|a| origin_client(&a.change_origin) == Some(own_client))
        .map(|a| crate::writeback::Echo {
            object: a.object.clone(),
            record_id: a.record_id.clone(),
            event_key: a.event_key.clone(),
        })
        .collect()
}

/// The `client=` part of a `changeOrigin` (as [`sfsync_core::ChangeHeader::origin_client`]).
fn origin_client(change_origin: &str) -> Option<&str> {
    let idx = change_origin.find("client=")?;
    let rest = &change_origin[idx + "client=".len()..];
    let end = rest.find([';', ',']).unwrap_or(rest.len());
    Some(rest[..end].trim()).filter(|c| !c.is_empty())
}

impl Applier {
    pub fn new(
        store: Arc<dyn Warehouse>,
        reader: Arc<dyn RecordReader>,
        mappings: Vec<(crate::model::ObjectSpec, ObjectMapping)>,
        config: ApplyConfig,
        stats: Arc<PipelineStats>,
    ) -> Applier {
        let mut by_obj = HashMap::new();
        let mut specs = HashMap::new();
        for (spec, m) in mappings {
            specs.insert(m.object().to_string(), spec);
            by_obj.insert(m.object().to_string(), m);
        }
        Applier {
            store,
            reader,
            mappings: by_obj,
            specs,
            schemas: HashMap::new(),
            seen_schemas: HashSet::new(),
            config,
            stats,
            offset: None,
            repairs_pending: true,
            in_flight: None,
            gate: None,
            arrived: Vec::new(),
            last_release_poll: None,
            last_alert_poll: None,
            bulk: None,
            jobs: Default::default(),
            repair_retries: HashMap::new(),
            echo: None,
            fetch_wake: None,
            kafka: None,
        }
    }

    /// Reads the raw change log from Kafka as a consumer-group member instead of the store
    /// ([`crate::kafka_log`]); each batch's partition offsets commit with its curated rows by
    /// compare-and-set.
    pub fn with_kafka(mut self, reader: crate::kafka_log::KafkaLogReader) -> Applier {
        // Runs on its own (it ends with the reader's consumer).
        drop(reader.start_watchdog(self.store.clone()));
        self.kafka = Some(reader);
        self
    }

    /// Confirms writeback writes from their CDC echoes: each applied change whose origin client
    /// is [`ApplyConfig::own_client`] confirms the oldest `applied` write of its record.
    pub fn with_echo(mut self, confirmer: Arc<crate::writeback::EchoConfirmer>) -> Applier {
        self.echo = Some(confirmer);
        self
    }

    /// Notifies `wake` whenever a sync job's fetch task has a batch ready, so a loop that waits
    /// on it between idle steps takes the batch at once instead of after its idle wait.
    pub fn with_wake(mut self, wake: Arc<tokio::sync::Notify>) -> Applier {
        self.fetch_wake = Some(wake);
        self
    }

    /// Gives the applier Bulk API access: it then carries out sync jobs (backfills, re-syncs,
    /// reconciliations) between streamed batches.
    pub fn with_bulk(mut self, bulk: sfsync_salesforce::bulk::Bulk) -> Applier {
        self.bulk = Some(bulk);
        self
    }

    /// The store this applier writes.
    pub fn store(&self) -> &Arc<dyn Warehouse> {
        &self.store
    }

    pub fn stats(&self) -> &Arc<PipelineStats> {
        &self.stats
    }

    pub fn mappings(&self) -> &HashMap<String, ObjectMapping> {
        &self.mappings
    }

    /// Applies everything the raw log holds beyond the committed offset (pending repairs
    /// first). Returns the number of raw-log entries processed.
    pub async fn catch_up(&mut self) -> Result<u64> {
        let mut total = 0;
        loop {
            let n = self.step().await?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    }

    /// One step: pending repairs, then one batch from the raw log. Returns the number of raw-log
    /// entries processed (0 when there was nothing to do).
    pub async fn step(&mut self) -> Result<usize> {
        // Requests waiting for their next attempt do not cost a query per step.
        let now = Instant::now();
        let due = self.repair_retries.is_empty()
            || self.repair_retries.values().any(|(_, at)| *at <= now);
        if self.repairs_pending && due {
            self.flush().await?;
            self.run_repairs().await?;
        }
        self.quality_step().await?;
        let job_rows = if self.bulk.is_some() {
            self.jobs_step().await?
        } else {
            0
        };
        if self.kafka.is_some() {
            return self.kafka_step(job_rows).await;
        }
        let from = match self.offset {
            Some(o) => o + 1,
            None => {
                let o = self.store.applied_offset(CURATED_CONSUMER).await?;
                self.offset = Some(o.unwrap_or(0));
                o.unwrap_or(0) + 1
            }
        };
        let t = Instant::now();
        let max = self.config.batch_max_records.max(1);
        let mut logged = self.store.read_from(from, max).await?;
        if !logged.is_empty() && logged.len() < max / 2 && self.in_flight.is_some() {
            // A small batch while the previous one commits: the apply stage is keeping up, so
            // wait for that commit and take what arrived meanwhile — fewer, larger transactions
            // leave the write lock to ingest more of the time.
            self.flush().await?;
            let next = logged[logged.len() - 1].offset + 1;
            let more = self.store.read_from(next, max - logged.len()).await?;
            logged.extend(more);
        }
        truncate_to_bytes(&mut logged, BATCH_MAX_PAYLOAD_BYTES);
        self.stats.time_stage(STAGE_APPLY_READ, t);
        if logged.is_empty() {
            // Idle: whatever is in flight is committed before the caller is told so. After a
            // sync-job batch the caller is not told so: that batch commits beside the planning
            // of the next one (waiting here serialised the two and halved backfill speed).
            if job_rows == 0 {
                self.flush().await?;
            }
            return Ok(job_rows);
        }
        let n = self.apply_logged(&logged, None).await?;
        Ok(n)
    }

    /// [`Applier::step`]'s read and apply when the raw log is in Kafka.
    async fn kafka_step(&mut self, job_rows: usize) -> Result<usize> {
        let t = Instant::now();
        let max = self.config.batch_max_records.max(1);
        let Some(reader) = self.kafka.as_mut() else {
            return Ok(job_rows);
        };
        let batch = match reader
            .next_batch(&*self.store, max, Duration::from_millis(100))
            .await
        {
            Ok(b) => b,
            Err(e) => {
                // Messages taken from Kafka in this call are gone from its queue: read the
                // assigned partitions again from the stored offsets.
                let _ = reader.reset(&*self.store).await;
                return Err(e);
            }
        };
        self.stats.time_stage(STAGE_APPLY_READ, t);
        if batch.is_empty() {
            if job_rows == 0 {
                self.flush().await?;
            }
            return Ok(job_rows);
        }
        if batch.changes.is_empty() {
            // Only unreadable messages: dead letters, and the partitions move past them.
            let settled = reader.settle(batch, 0);
            let advisory = Some((reader.consumer(), settled.advisory.clone()));
            let mut curated = CuratedBatch::default();
            let n = settled.bad.len();
            curated.dead_letters = kafka_dead_letters(reader.topic(), settled.bad);
            curated.log_positions = settled.positions;
            self.stats
                .dead_letters
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            self.flush().await?;
            self.in_flight = Some(InFlight::start(
                self.store.clone(),
                self.stats.clone(),
                None,
                Arc::new(curated),
                None,
                None,
                advisory,
            ));
            return Ok(n);
        }
        let logged = batch.changes.clone();
        let applied = self.apply_logged(&logged, Some(batch)).await;
        if applied.is_err() {
            // Whatever this batch took from Kafka and did not commit is read again from the
            // stored offsets (a partition's last messages would otherwise wait for a later one
            // to reveal the gap).
            if let Some(reader) = self.kafka.as_mut() {
                if let Err(e) = reader.reset(&*self.store).await {
                    tracing::warn!(error = %chain(&e), "Resetting the Kafka positions failed; retried with the next step.");
                }
            }
        }
        applied
    }

    /// Loads the current rows of `ids` of `object` into `rows`.
    async fn load_rows(&self, object: &str, ids: &[String], rows: &mut Rows) -> Result<()> {
        for (id, row) in self.store.load_current(object, ids).await? {
            rows.insert((object.to_string(), id), row);
        }
        Ok(())
    }

    async fn schema(&mut self, schema_id: &str) -> Result<Option<Arc<ChangeSchema>>> {
        if let Some(s) = self.schemas.get(schema_id) {
            return Ok(Some(s.clone()));
        }
        let Some(json) = self.store.schema(schema_id).await? else {
            return Ok(None);
        };
        match ChangeSchema::parse(schema_id, &json) {
            Ok(s) => {
                let s = Arc::new(s);
                self.schemas.insert(schema_id.to_string(), s.clone());
                Ok(Some(s))
            }
            Err(e) => {
                tracing::warn!(schema_id, error = %e, "Stored writer schema does not parse.");
                Ok(None)
            }
        }
    }

    /// A new schema id for an object: describe it again and add any new columns.
    async fn on_schema(&mut self, object: &str, schema_id: &str) -> Result<()> {
        let key = (object.to_string(), schema_id.to_string());
        if self.seen_schemas.contains(&key) {
            return Ok(());
        }
        let first = !self.seen_schemas.iter().any(|(o, _)| o == object);
        self.seen_schemas.insert(key);
        if first {
            // The model was built from a describe at start; the first schema id is its baseline.
            return Ok(());
        }
        let Some(spec) = self.specs.get(object).cloned() else {
            return Ok(());
        };
        let describe = self.reader.describe(object).await?;
        let mut mapping = match ObjectMapping::build(&describe, &spec) {
            Ok(m) => m,
            Err(e) => {
                // A configured history or PII field is gone, say: the model stays as it was
                // (columns are never dropped) and the pipeline keeps applying with it.
                self.stats
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(object, schema_id, error = %chain(&e), "Schema changed in a way the configured model cannot follow; applying with the previous model. Fix the config and restart.");
                return Ok(());
            }
        };
        if !mapping.gate_problems.is_empty() {
            // Reported, not fatal: the other rules keep running.
            self.stats
                .errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(
                object,
                schema_id,
                problems = ?mapping.gate_problems,
                "Schema changed: data-quality rules on fields that are gone or changed are suspended."
            );
        }
        let change =
            crate::model::ensure_model_following_retypes(&*self.store, &mut mapping).await?;
        if !change.added_columns.is_empty() || !change.retyped_columns.is_empty() {
            tracing::info!(
                object,
                schema_id,
                added = ?change.added_columns,
                retyped = ?change.retyped_columns,
                "Schema changed: curated model updated."
            );
        }
        self.mappings.insert(object.to_string(), mapping);
        Ok(())
    }

    async fn apply_logged(
        &mut self,
        logged: &[LoggedChange],
        kafka: Option<crate::kafka_log::KafkaBatch>,
    ) -> Result<usize> {
        let mut batch = CuratedBatch::default();
        let mut planned: Vec<(usize, Vec<(String, RecordChange)>)> = Vec::new();
        let mut cut: Option<usize> = None;
        let t = Instant::now();
        // Decode and normalise; stop after the first entry that needs a repair.
        for (i, lc) in logged.iter().enumerate() {
            let raw = &lc.change;
            let object = raw.entity.clone();
            let dead = |stage: &str, error: String| {
                tracing::warn!(channel = %lc.channel, offset = lc.offset, stage, error = %error, "Change kept as a dead letter.");
                DeadLetter {
                    channel: lc.channel.clone(),
                    replay_id: Some(raw.replay_id.clone()),
                    schema_id: raw.schema_id.clone(),
                    stage: stage.to_string(),
                    error,
                    payload: raw.payload.to_vec(),
                    object: Some(object.clone()),
                }
            };
            if !self.mappings.contains_key(&object) {
                tracing::debug!(
                    object,
                    "Change for an object that is not configured; skipped."
                );
                continue;
            }
            let (mut normalized, record_ids, commit_ms) =
                if crate::outbound::is_outbound(&raw.schema_id) {
                    // A pushed Outbound Message: JSON, no writer schema.
                    let id = raw.event_key.as_str().rsplit('/').next().unwrap_or("");
                    (
                        crate::outbound::normalize(&self.mappings[&object], raw),
                        vec![id.to_string()],
                        raw.version.commit_timestamp,
                    )
                } else if crate::poll::is_polled(&raw.schema_id) {
                    // A polled row: JSON, no writer schema.
                    let id = raw.event_key.as_str().rsplit('/').next().unwrap_or("");
                    (
                        crate::poll::normalize(&self.mappings[&object], raw),
                        vec![id.to_string()],
                        raw.version.commit_timestamp,
                    )
                } else {
                    let Some(schema) = self.schema(&raw.schema_id).await? else {
                        batch.dead_letters.push(dead(
                            "decode",
                            format!("writer schema {} is not in the store", raw.schema_id),
                        ));
                        continue;
                    };
                    let change = match schema.decode(&raw.payload, raw.replay_id.clone()) {
                        Ok(c) => c,
                        Err(e) => {
                            batch.dead_letters.push(dead("decode", chain(&e)));
                            continue;
                        }
                    };
                    self.on_schema(&object, &raw.schema_id).await?;
                    let mapping = &self.mappings[&object];
                    (
                        normalize::from_cdc(mapping, &lc.channel, &change),
                        change.header.record_ids.clone(),
                        change.header.commit_timestamp,
                    )
                };
            if self.kafka.is_some() {
                // A Kafka message carries one record of its change (see `kafka_log`).
                if let Some(id) = crate::kafka_log::record_of(&raw.event_key) {
                    match &mut normalized {
                        Ok(Normalized::Records(rs)) => rs.retain(|r| r.id == id),
                        Ok(Normalized::Repair(r)) if r.record_ids.iter().any(|x| x == id) => {
                            r.record_ids.retain(|x| x == id)
                        }
                        _ => {}
                    }
                }
            }
            match normalized {
                Ok(Normalized::Records(rs)) => {
                    planned.push((i, rs.into_iter().map(|r| (object.clone(), r)).collect()));
                }
                Ok(Normalized::Repair(r)) => {
                    batch.repairs.push(r);
                    planned.push((i, Vec::new()));
                    cut = Some(i);
                    break;
                }
                Ok(Normalized::Resync(r)) => {
                    tracing::warn!(
                        object,
                        from_ms = r.from_ms,
                        "GAP_OVERFLOW: re-sync of the object recorded."
                    );
                    batch.resyncs.push(r);
                }
                Err(e) => {
                    // The record cannot be applied from this event: keep the event, re-read the
                    // records.
                    batch.dead_letters.push(dead("apply", chain(&e)));
                    batch.repairs.push(sfsync_store::RepairRequest {
                        object: object.clone(),
                        record_ids,
                        reason: "undecodable_change".into(),
                        event_key: raw.event_key.as_str().to_string(),
                        commit_timestamp_ms: commit_ms,
                    });
                    planned.push((i, Vec::new()));
                    cut = Some(i);
                    break;
                }
            }
        }
        self.stats.time_stage(STAGE_APPLY_DECODE, t);
        // Load the touched rows: the newest state of a record the in-flight batch writes is in
        // that batch (not yet in the database); every other record is unchanged by it, so the
        // database has its newest state.
        let t = Instant::now();
        let mut ids: HashMap<&str, Vec<String>> = HashMap::new();
        let mut rows = HashMap::new();
        for (_, rs) in &planned {
            for (o, r) in rs {
                if let Some(f) = &self.in_flight {
                    let key = (o.clone(), r.id.clone());
                    if rows.contains_key(&key) {
                        continue;
                    }
                    if let Some(row) = f.row(&key) {
                        rows.insert(key, row.clone());
                        continue;
                    }
                }
                ids.entry(o.as_str()).or_default().push(r.id.clone());
            }
        }
        for (object, mut list) in ids {
            list.sort();
            list.dedup();
            self.load_rows(object, &list, &mut rows).await?;
        }
        let now = now_ms();
        let gating = self.gating();
        if gating {
            let groups: Vec<&[(String, RecordChange)]> =
                planned.iter().map(|(_, rs)| rs.as_slice()).collect();
            self.prepare_gate(&groups, &rows, now, true).await?;
        }
        self.stats.time_stage(STAGE_APPLY_LOAD, t);
        let t = Instant::now();
        let planner = Planner {
            mappings: &self.mappings,
            run_id: &self.config.run_id,
            own_client: &self.config.own_client,
            now_ms: now,
            deliver: self.config.deliver,
        };
        let mut last_index = cut.unwrap_or(logged.len() - 1);
        let mut commit_times = Vec::new();
        let mut objects: HashMap<String, (u64, i64)> = HashMap::new();
        let mut totals = crate::plan::PlanStats::default();
        for (i, rs) in &planned {
            let repairs_before = batch.repairs.len();
            let s = match self.gate.as_mut().filter(|_| gating) {
                Some(g) => {
                    // Kafka offsets are not store offsets: a held change keeps its body.
                    g.log_offset = Some(logged[*i].offset).filter(|_| self.kafka.is_none());
                    planner.plan_gated(&mut rows, rs, &mut batch, Some(g))
                }
                None => planner.plan(&mut rows, rs, &mut batch),
            };
            totals.applied += s.applied;
            totals.late += s.late;
            totals.stale += s.stale;
            totals.own_writes += s.own_writes;
            totals.quarantined += s.quarantined;
            totals.released += s.released;
            totals.warned += s.warned;
            commit_times.extend(rs.iter().map(|(_, r)| r.version.commit_timestamp));
            for (object, r) in rs {
                let e = objects.entry(object.clone()).or_default();
                e.0 += 1;
                e.1 = e.1.max(r.version.commit_timestamp);
            }
            if batch.repairs.len() > repairs_before && cut.is_none_or(|c| *i < c) {
                last_index = *i;
                break;
            }
        }
        if gating {
            if let Some(g) = self.gate.as_mut() {
                g.finish_batch(&mut batch);
            }
            self.note_arrivals(&rows);
        }
        // Every row in the map is written (unchanged ones are rewritten as they are).
        rows_into(rows, &mut batch);
        let offset = logged[last_index].offset;
        let mut advisory = None;
        let commit_offset = match (kafka, self.kafka.as_mut()) {
            (Some(kb), Some(reader)) => {
                let settled = reader.settle(kb, last_index + 1);
                advisory = Some((reader.consumer(), settled.advisory));
                batch
                    .dead_letters
                    .extend(kafka_dead_letters(reader.topic(), settled.bad));
                batch.log_positions = settled.positions;
                None
            }
            _ => Some(offset),
        };
        let done = Committed {
            processed: last_index as u64 + 1,
            totals,
            repairs: batch.repairs.len() as u64,
            resyncs: batch.resyncs.len() as u64,
            dead_letters: batch.dead_letters.len() as u64,
            commit_times,
            objects,
            quarantine_open_delta: batch.quarantine.len() as i64,
        };
        self.stats.time_stage(STAGE_APPLY_PLAN, t);
        // The previous batch must be in before this one goes: batches commit in log order.
        self.flush().await?;
        let echoes = self
            .echo
            .as_ref()
            .filter(|c| done.totals.own_writes > 0 || c.has_unmatched())
            .map(|c| (c.clone(), own_echoes(&batch, &self.config.own_client)));
        let batch = Arc::new(batch);
        let needs_repair = done.repairs > 0;
        self.in_flight = Some(InFlight::start(
            self.store.clone(),
            self.stats.clone(),
            commit_offset,
            batch,
            Some(done),
            echoes,
            advisory,
        ));
        self.offset = Some(offset);
        if needs_repair {
            // Repairs read their requests back from the store: commit first.
            self.flush().await?;
            self.repairs_pending = true;
            self.run_repairs().await?;
        }
        Ok(last_index + 1)
    }

    /// Waits for the in-flight batch to commit and counts it. On failure the read position
    /// goes back to the stored apply offset, so nothing planned after the failed batch is
    /// committed and the next step re-reads from there.
    async fn flush(&mut self) -> Result<()> {
        let Some(f) = self.in_flight.take() else {
            return Ok(());
        };
        let outcome = match f.task.await {
            Ok(r) => r,
            Err(e) => Err(PipelineError::CommitTask(e.to_string())),
        };
        if let Err(e) = outcome {
            self.offset = None;
            if let Some(reader) = self.kafka.as_mut() {
                if let Err(r) = reader.reset(&*self.store).await {
                    tracing::warn!(error = %chain(&r), "Resetting the Kafka positions failed; retried with the next step.");
                }
            }
            if f.batch.job_progress.is_some() {
                // The running job resumes from its last committed position.
                self.jobs.active = None;
                self.jobs.backoff();
            }
            return Err(e);
        }
        Ok(())
    }

    /// Whether this batch goes through the data-quality gates: some object has checks, or
    /// changes are held (their records' later changes must wait behind them).
    fn gating(&self) -> bool {
        self.mappings.values().any(|m| !m.gate.is_empty())
            || self
                .stats
                .quarantine_open
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
            || self
                .in_flight
                .as_ref()
                .is_some_and(|f| !f.batch.quarantine.is_empty())
    }

    /// Loads the stored-failure counts (for the caps) and the open quarantine size once.
    async fn ensure_gate(&mut self) -> Result<()> {
        if self.gate.is_some() {
            return Ok(());
        }
        let mut stored = crate::quality::StoredFailures::default();
        for c in self.store.dq_counts(None).await? {
            stored.0.insert((c.object, c.rule), c.stored);
        }
        let open = self.store.quarantine_open_count().await?;
        self.stats
            .quarantine_open
            .store(open, std::sync::atomic::Ordering::Relaxed);
        self.gate = Some(crate::plan::GateRun::new(
            self.config.max_stored_failures_per_rule,
            &self.config.run_id,
            stored,
        ));
        Ok(())
    }

    /// What the checks of this batch need from the store: which referenced parents exist and
    /// which of its records have held changes.
    /// `groups`: the changes about to be planned. `load_held`: look up which of their records
    /// have open quarantined changes (a release plans those records itself and skips it).
    async fn prepare_gate(
        &mut self,
        groups: &[&[(String, RecordChange)]],
        rows: &Rows,
        now: i64,
        load_held: bool,
    ) -> Result<()> {
        self.ensure_gate().await?;
        let mut wanted: HashMap<String, HashSet<String>> = HashMap::new();
        let mut known = HashSet::new();
        let mut touched: HashMap<String, HashSet<String>> = HashMap::new();
        for rs in groups {
            for (object, ch) in rs.iter() {
                touched
                    .entry(object.clone())
                    .or_default()
                    .insert(ch.id.clone());
                let Some(m) = self.mappings.get(object) else {
                    continue;
                };
                for key in m.gate.referenced(ch) {
                    if rows.contains_key(&key) {
                        continue; // seen as the batch is planned
                    }
                    match self.in_flight.as_ref().and_then(|f| f.row(&key)) {
                        Some(r) if !r.deleted => {
                            known.insert(key);
                        }
                        Some(_) => {}
                        None => {
                            wanted.entry(key.0).or_default().insert(key.1);
                        }
                    }
                }
            }
        }
        for (object, ids) in wanted {
            if !self.mappings.contains_key(&object) {
                continue; // not synced: never known (configuration requires it to be)
            }
            let ids: Vec<String> = ids.into_iter().collect();
            // Live ids only, without reading (or opening) the rows.
            for (_, id) in self.store.ids_by_value(&object, "id", &ids).await? {
                known.insert((object.clone(), id));
            }
        }
        // Values of `unique` rules: who holds them in the warehouse (the batch being committed
        // is checked as planned, through the rows it carries).
        let mut wanted_values: HashMap<(String, usize), HashSet<String>> = HashMap::new();
        for rs in groups {
            for (object, ch) in rs.iter() {
                if let Some(m) = self.mappings.get(object) {
                    for (column, value) in m.gate.unique_values(ch) {
                        wanted_values
                            .entry((object.clone(), column))
                            .or_default()
                            .insert(value);
                    }
                }
            }
        }
        let mut taken = HashMap::new();
        for ((object, column), values) in wanted_values {
            let name = self.mappings[&object].model.columns[column].name.clone();
            let values: Vec<String> = values.into_iter().collect();
            for (value, id) in self.store.ids_by_value(&object, &name, &values).await? {
                taken.insert((object.clone(), column, value), id);
            }
        }
        if let Some(f) = &self.in_flight {
            for (object, row) in &f.batch.rows {
                let Some(m) = self.mappings.get(object) else {
                    continue;
                };
                for r in m.gate.rules.iter().filter(|r| r.is_unique()) {
                    match row.values.get(&m.model.columns[r.column].name) {
                        Some(v) if !row.deleted => {
                            if let Some(t) = crate::quality::as_text(v) {
                                taken.insert((object.clone(), r.column, t), row.id.clone());
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        let mut held = HashSet::new();
        if let Some(f) = &self.in_flight {
            for q in &f.batch.quarantine {
                held.insert((q.object.clone(), q.record_id.clone()));
            }
        }
        if load_held
            && self
                .stats
                .quarantine_open
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        {
            for (object, ids) in touched {
                let ids: Vec<String> = ids.into_iter().collect();
                let filter = sfsync_store::QuarantineFilter::open_of(&object, &ids);
                for q in self.store.quarantine_list(&filter).await? {
                    held.insert((q.entry.object, q.entry.record_id));
                }
            }
        }
        let g = self.gate.as_mut().expect("ensured above");
        g.begin_batch(now);
        g.parents = known;
        g.held = held;
        g.taken = taken;
        Ok(())
    }

    /// Remembers the live records of parent objects this batch writes, so changes waiting for
    /// them are released once it is committed.
    fn note_arrivals(&mut self, rows: &Rows) {
        let parents: HashSet<&str> = self
            .mappings
            .values()
            .flat_map(|m| m.gate.references.iter().map(|r| r.parent.as_str()))
            .collect();
        if parents.is_empty() {
            return;
        }
        let mut by: HashMap<String, Vec<String>> = HashMap::new();
        for ((object, id), row) in rows {
            if !row.deleted && parents.contains(object.as_str()) {
                by.entry(object.clone()).or_default().push(id.clone());
            }
        }
        self.arrived.extend(by);
    }

    /// Releases what can be released (parents arrived, operators' requests) and raises the
    /// alerts of late-parent holds that waited too long.
    async fn quality_step(&mut self) -> Result<()> {
        use sfsync_store::{QuarantineFilter, QuarantineStatus};
        use std::sync::atomic::Ordering::Relaxed;
        if self
            .in_flight
            .as_ref()
            .is_some_and(|f| !f.batch.quarantine.is_empty())
        {
            // Its holds must be in the store before they can be released.
            self.flush().await?;
        }
        if self.gate.is_none() {
            if self.arrived.is_empty() && self.last_release_poll.is_some() {
                return Ok(());
            }
            self.ensure_gate().await?;
        }
        let due =
            |last: Option<Instant>, every: Duration| last.is_none_or(|t| t.elapsed() >= every);
        let requests_due = due(self.last_release_poll, RELEASE_POLL);
        if requests_due {
            self.last_release_poll = Some(Instant::now());
            // Operators act from another process: refresh the open count too.
            let open = self.store.quarantine_open_count().await?;
            self.stats.quarantine_open.store(open, Relaxed);
        }
        if self.stats.quarantine_open.load(Relaxed) == 0 {
            self.arrived.clear();
            return Ok(());
        }
        let mut candidates = Vec::new();
        for (object, ids) in std::mem::take(&mut self.arrived) {
            candidates.extend(
                self.store
                    .quarantine_list(&QuarantineFilter {
                        parent: Some((object, ids)),
                        statuses: vec![QuarantineStatus::Held],
                        ..Default::default()
                    })
                    .await?,
            );
        }
        if requests_due {
            candidates.extend(
                self.store
                    .quarantine_list(&QuarantineFilter {
                        statuses: vec![
                            QuarantineStatus::ReleaseRequested,
                            QuarantineStatus::ForceRequested,
                        ],
                        limit: 500,
                        ..Default::default()
                    })
                    .await?,
            );
        }
        if due(self.last_alert_poll, ALERT_POLL) {
            self.last_alert_poll = Some(Instant::now());
            let overdue = self
                .store
                .quarantine_list(&QuarantineFilter {
                    statuses: vec![QuarantineStatus::Held],
                    alert_due_before_ms: Some(now_ms()),
                    limit: 1000,
                    ..Default::default()
                })
                .await?;
            if !overdue.is_empty() {
                let examples: Vec<String> = overdue
                    .iter()
                    .take(5)
                    .map(|q| {
                        let parent = q
                            .entry
                            .parent
                            .as_ref()
                            .map_or_else(String::new, |(o, i)| format!(" for {o} {i}"));
                        format!("#{} {} {}{parent}", q.id, q.entry.object, q.entry.record_id)
                    })
                    .collect();
                tracing::error!(
                    count = overdue.len(),
                    examples = %examples.join(", "),
                    "Changes have waited for their parent record longer than configured; they stay held (`sfsync quarantine list` shows them; release or discard them there)."
                );
                let ids: Vec<i64> = overdue.iter().map(|q| q.id).collect();
                self.store.quarantine_mark_alerted(&ids).await?;
                self.stats
                    .quarantine_alerts
                    .fetch_add(ids.len() as u64, Relaxed);
            }
        }
        if candidates.is_empty() {
            return Ok(());
        }
        self.release(candidates).await
    }

    /// Re-applies quarantined changes through the normal path: every open change of their
    /// records, oldest first, checked again (a forced release skips the checks); each is
    /// released with its rows in one transaction, or stays held with the new reason.
    async fn release(&mut self, candidates: Vec<sfsync_store::QuarantineRecord>) -> Result<()> {
        use sfsync_store::{QuarantineFilter, QuarantineStatus};
        self.flush().await?;
        let mut records: HashMap<String, HashSet<String>> = HashMap::new();
        for c in &candidates {
            records
                .entry(c.entry.object.clone())
                .or_default()
                .insert(c.entry.record_id.clone());
        }
        let mut entries = Vec::new();
        for (object, ids) in &records {
            let ids: Vec<String> = ids.iter().cloned().collect();
            entries.extend(
                self.store
                    .quarantine_list(&QuarantineFilter::open_of(object, &ids))
                    .await?,
            );
        }
        entries.sort_by_key(|e| e.id);
        let mut changes = Vec::new();
        for e in &entries {
            match self.held_change(e).await {
                Ok(ch) => changes.push((
                    e.id,
                    e.status == QuarantineStatus::ForceRequested,
                    e.entry.object.clone(),
                    ch,
                )),
                Err(err) => {
                    self.stats
                        .errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(quarantine_id = e.id, error = %chain(&err), "A quarantined change cannot be read back; it stays held.");
                }
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let mut rows = HashMap::new();
        for (object, ids) in &records {
            let ids: Vec<String> = ids.iter().cloned().collect();
            self.load_rows(object, &ids, &mut rows).await?;
        }
        let (releases, group): (Vec<(i64, bool)>, Vec<ObjectChange>) = changes
            .into_iter()
            .map(|(id, force, object, ch)| ((id, force), (object, ch)))
            .unzip();
        let now = now_ms();
        self.prepare_gate(&[&group], &rows, now, false).await?;
        let mut batch = CuratedBatch::default();
        let planner = Planner {
            mappings: &self.mappings,
            run_id: &self.config.run_id,
            own_client: &self.config.own_client,
            now_ms: now,
            deliver: self.config.deliver,
        };
        let g = self.gate.as_mut().expect("prepared above");
        let mut totals = crate::plan::PlanStats::default();
        for ((id, force), change) in releases.iter().zip(&group) {
            g.release = Some((*id, *force));
            let s =
                planner.plan_gated(&mut rows, std::slice::from_ref(change), &mut batch, Some(g));
            totals.applied += s.applied;
            totals.quarantined += s.quarantined;
            totals.released += s.released;
            totals.warned += s.warned;
        }
        g.release = None;
        g.finish_batch(&mut batch);
        self.note_arrivals(&rows);
        rows_into(rows, &mut batch);
        self.store
            .commit_curated(CURATED_CONSUMER, None, &batch)
            .await?;
        if !batch.repairs.is_empty() {
            // A released update of a record the warehouse does not have asks for a re-read.
            self.repairs_pending = true;
        }
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.applied.fetch_add(totals.applied, Relaxed);
        self.stats.released.fetch_add(totals.released, Relaxed);
        self.stats.dq_warnings.fetch_add(totals.warned, Relaxed);
        let open = self.store.quarantine_open_count().await?;
        self.stats.quarantine_open.store(open, Relaxed);
        tracing::info!(
            released = totals.released,
            still_held = totals.quarantined,
            "Quarantined changes re-checked."
        );
        Ok(())
    }

    /// The change of a quarantine entry: from its stored body, or re-read from the raw log.
    async fn held_change(&mut self, e: &sfsync_store::QuarantineRecord) -> Result<RecordChange> {
        let object = &e.entry.object;
        let bad =
            |what: String| PipelineError::bad_change("release", object, &e.entry.record_id, what);
        let Some(m) = self.mappings.get(object) else {
            return Err(bad(format!("object {object} is no longer configured")));
        };
        if let Some(body) = &e.entry.change {
            let held: crate::quality::HeldChange = serde_json::from_slice(body)
                .map_err(|err| bad(format!("stored change does not parse: {err}")))?;
            let (ch, dropped) = held.into_change(m)?;
            if !dropped.is_empty() {
                tracing::warn!(quarantine_id = e.id, dropped = ?dropped, "Fields of a quarantined change are no longer stored; released without them.");
            }
            return Ok(ch);
        }
        let Some(offset) = e.entry.log_offset else {
            return Err(bad(
                "neither the change nor its raw-log offset is stored".into()
            ));
        };
        let logged = self.store.read_from(offset, 1).await?;
        let Some(lc) = logged.into_iter().next().filter(|l| l.offset == offset) else {
            return Err(bad(format!(
                "raw-log entry {offset} is no longer in the log"
            )));
        };
        if crate::outbound::is_outbound(&lc.change.schema_id)
            || crate::poll::is_polled(&lc.change.schema_id)
        {
            let m = &self.mappings[object];
            let normalized = if crate::poll::is_polled(&lc.change.schema_id) {
                crate::poll::normalize(m, &lc.change)?
            } else {
                crate::outbound::normalize(m, &lc.change)?
            };
            return match normalized {
                Normalized::Records(rs) => rs
                    .into_iter()
                    .find(|r| r.id == e.entry.record_id)
                    .ok_or_else(|| {
                        bad(format!(
                            "raw-log entry {offset} does not change this record"
                        ))
                    }),
                _ => Err(bad(format!(
                    "raw-log entry {offset} is not a record change"
                ))),
            };
        }
        let schema = self.schema(&lc.change.schema_id).await?.ok_or_else(|| {
            bad(format!(
                "writer schema {} is not in the store",
                lc.change.schema_id
            ))
        })?;
        let change = schema
            .decode(&lc.change.payload, lc.change.replay_id.clone())
            .map_err(|err| {
                bad(format!(
                    "raw-log entry {offset} does not decode: {}",
                    chain(&err)
                ))
            })?;
        let m = &self.mappings[object];
        match normalize::from_cdc(m, &lc.channel, &change)? {
            Normalized::Records(rs) => rs
                .into_iter()
                .find(|r| r.id == e.entry.record_id)
                .ok_or_else(|| {
                    bad(format!(
                        "raw-log entry {offset} does not change this record"
                    ))
                }),
            _ => Err(bad(format!(
                "raw-log entry {offset} is not a record change"
            ))),
        }
    }

    /// Carries out pending repairs: re-reads the records and applies them as snapshots, marking
    /// each request done in the same transaction. A request whose re-read fails waits with
    /// backoff while the others go ahead; one Salesforce refuses (a malformed id, an unknown
    /// field: retrying cannot help) is split into one request per record when it holds several,
    /// so only the records at fault are given up; a given-up request is marked done together with
    /// a dead letter (stage `repair`) holding the request and its error — nothing is dropped
    /// silently, and nothing blocks the queue forever.
    pub async fn run_repairs(&mut self) -> Result<()> {
        loop {
            let now = Instant::now();
            let waiting = self.repair_retries.len();
            let pending = self.store.pending_repairs(16 + waiting).await?;
            if pending.is_empty() {
                self.repairs_pending = false;
                self.repair_retries.clear();
                return Ok(());
            }
            let mut attempted = 0;
            for req in pending {
                if self
                    .repair_retries
                    .get(&req.id)
                    .is_some_and(|(_, at)| *at > now)
                {
                    continue;
                }
                attempted += 1;
                match self.repair(&req).await {
                    Ok(()) => {
                        self.repair_retries.remove(&req.id);
                    }
                    Err(e) => self.repair_failed(&req, &e).await?,
                }
            }
            if attempted == 0 {
                // Everything left is waiting for its next attempt.
                return Ok(());
            }
        }
    }

    /// Handles a failed re-read of `req`: split, retry later or give up.
    async fn repair_failed(&mut self, req: &StoredRepair, e: &PipelineError) -> Result<()> {
        self.stats
            .errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let r = &req.request;
        let error = chain(e);
        let permanent = e.class() == sfsync_core::ErrorClass::User;
        if permanent && r.record_ids.len() > 1 {
            tracing::warn!(object = %r.object, ids = r.record_ids.len(), error = %error, "Salesforce refused a repair re-read; retrying its records one by one to find the one at fault.");
            let batch = CuratedBatch {
                repairs_done: vec![req.id],
                repairs: r
                    .record_ids
                    .iter()
                    .map(|id| sfsync_store::RepairRequest {
                        record_ids: vec![id.clone()],
                        ..r.clone()
                    })
                    .collect(),
                ..Default::default()
            };
            self.flush().await?;
            self.store
                .commit_curated(CURATED_CONSUMER, None, &batch)
                .await?;
            self.repair_retries.remove(&req.id);
            return Ok(());
        }
        let attempts = self.repair_retries.get(&req.id).map_or(0, |(n, _)| *n) + 1;
        if !permanent && attempts < REPAIR_MAX_ATTEMPTS {
            let wait = Duration::from_millis(500)
                .saturating_mul(1 << attempts.min(12))
                .min(REPAIR_MAX_BACKOFF);
            tracing::warn!(object = %r.object, ids = ?r.record_ids, attempt = attempts, retry_in_secs = wait.as_secs_f64(), error = %error, "Repair re-read failed; retrying later.");
            self.repair_retries
                .insert(req.id, (attempts, Instant::now() + wait));
            return Ok(());
        }
        let why = if permanent {
            "refused by Salesforce".to_string()
        } else {
            format!("still failing after {attempts} attempts")
        };
        tracing::error!(object = %r.object, ids = ?r.record_ids, error = %error, "Repair re-read {why}; the request is dead-lettered (stage repair) with its error.");
        let batch = CuratedBatch {
            repairs_done: vec![req.id],
            dead_letters: vec![DeadLetter {
                channel: format!("repair:{}", r.reason),
                replay_id: None,
                schema_id: String::new(),
                stage: "repair".into(),
                error: format!("repair re-read {why}: {error}"),
                payload: serde_json::to_vec(r).unwrap_or_default(),
                object: Some(r.object.clone()),
            }],
            ..Default::default()
        };
        self.flush().await?;
        self.store
            .commit_curated(CURATED_CONSUMER, None, &batch)
            .await?;
        self.stats
            .dead_letters
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.repair_retries.remove(&req.id);
        Ok(())
    }

    async fn repair(&mut self, req: &StoredRepair) -> Result<()> {
        self.flush().await?;
        let r = &req.request;
        let mut batch = CuratedBatch {
            repairs_done: vec![req.id],
            ..Default::default()
        };
        let Some(mapping) = self.mappings.get(&r.object) else {
            self.store
                .commit_curated(CURATED_CONSUMER, None, &batch)
                .await?;
            return Ok(());
        };
        let mut ids: Vec<String> = r
            .record_ids
            .iter()
            .filter(|id| !id.is_empty() && !id.ends_with('*'))
            .cloned()
            .collect();
        ids.sort();
        ids.dedup();
        let mut changes = Vec::new();
        for chunk in ids.chunks(self.config.gap_reread_batch_records.max(1)) {
            let records = self
                .reader
                .read(&r.object, &mapping.soql_fields, chunk)
                .await?;
            let mut found = HashSet::new();
            for rec in &records {
                match normalize::from_record(mapping, rec) {
                    Ok(c) => {
                        found.insert(c.id.clone());
                        changes.push((r.object.clone(), c));
                    }
                    Err(e) => {
                        return Err(e);
                    }
                }
            }
            for id in chunk {
                if !found.contains(id.as_str()) {
                    changes.push((
                        r.object.clone(),
                        normalize::purged(id, r.commit_timestamp_ms),
                    ));
                }
            }
        }
        let mut rows = HashMap::new();
        self.load_rows(&r.object, &ids, &mut rows).await?;
        let authoritative = crate::replay::is_authoritative(&r.reason);
        if authoritative {
            // Reconciliation found these rows different from Salesforce even where their
            // versions say otherwise (a row changed behind sfsync's back), or a replay could
            // not rebuild them from the raw log: the re-read is authoritative. Its history is
            // continued from the history table itself. Streamed changes newer than it still
            // apply after it.
            let latest = self.store.latest_history(&r.object, &ids).await?;
            for id in &ids {
                let key = (r.object.clone(), id.clone());
                let row = rows.remove(&key);
                if let Some(mut b) = crate::plan::replay_baseline(mapping, id, row, latest.get(id))
                {
                    b.partial = false;
                    rows.insert(key, b);
                }
            }
        }
        if r.reason.starts_with(crate::replay::REPAIR_REASON_PREFIX) {
            // A record a replay asked for that Salesforce does not return and the warehouse
            // never had (an id of another object, a typo) is not invented as a purged row.
            changes.retain(|(o, c)| {
                c.change_type != "PURGED" || rows.contains_key(&(o.clone(), c.id.clone()))
            });
        }
        let now = now_ms();
        // Snapshots pass the same data-quality gates as streamed changes.
        let gating = self.gating();
        if gating {
            self.prepare_gate(&[&changes], &rows, now, true).await?;
        }
        let planner = Planner {
            mappings: &self.mappings,
            run_id: &self.config.run_id,
            own_client: &self.config.own_client,
            now_ms: now,
            deliver: self.config.deliver,
        };
        let totals = match self.gate.as_mut().filter(|_| gating) {
            Some(g) => {
                let s = planner.plan_gated(&mut rows, &changes, &mut batch, Some(g));
                g.finish_batch(&mut batch);
                s
            }
            None => planner.plan(&mut rows, &changes, &mut batch),
        };
        if gating {
            self.note_arrivals(&rows);
        }
        {
            use std::sync::atomic::Ordering::Relaxed;
            self.stats
                .quarantined
                .fetch_add(totals.quarantined, Relaxed);
            self.stats.dq_warnings.fetch_add(totals.warned, Relaxed);
            self.stats
                .quarantine_open
                .fetch_add(batch.quarantine.len() as u64, Relaxed);
        }
        // A repair never asks for another repair of the same records.
        batch.repairs.clear();
        rows_into(rows, &mut batch);
        self.store
            .commit_curated(CURATED_CONSUMER, None, &batch)
            .await?;
        self.stats
            .repairs_done
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

pub(crate) type Rows = HashMap<(String, String), sfsync_store::CurrentRow>;

/// A record change with its object.
type ObjectChange = (String, RecordChange);

/// Moves every row of the map into the batch, in key order (one write per record).
/// Unreadable Kafka messages as dead letters (stage `decode`, their position in the error).
fn kafka_dead_letters(topic: &str, bad: Vec<crate::kafka_log::BadMessage>) -> Vec<DeadLetter> {
    bad.into_iter()
        .map(|b| {
            tracing::warn!(topic, partition = b.partition, offset = b.offset, reason = %b.reason, "Kafka message kept as a dead letter.");
            DeadLetter {
                channel: format!("kafka:{topic}:{}", b.partition),
                replay_id: None,
                schema_id: String::new(),
                stage: "decode".into(),
                error: format!("{topic}/{}@{}: {}", b.partition, b.offset, b.reason),
                payload: b.payload,
                object: None,
            }
        })
        .collect()
}

fn rows_into(rows: Rows, batch: &mut CuratedBatch) {
    let mut rows: Vec<_> = rows.into_iter().collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    batch
        .rows
        .extend(rows.into_iter().map(|((object, _), row)| (object, row)));
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl From<PipelineError> for std::io::Error {
    fn from(e: PipelineError) -> Self {
        std::io::Error::other(chain(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfsync_core::{ChangeType, EventKey, RecordVersion, ReplayId};
    use sfsync_store::RawChange;

    fn logged(offset: u64, bytes: usize) -> LoggedChange {
        LoggedChange {
            offset,
            channel: "/data/CaseChangeEvent".into(),
            change: RawChange {
                event_key: EventKey::new("tx", offset as i32, "500000000000001AAA"),
                replay_id: ReplayId::from_bytes(vec![offset as u8]),
                schema_id: "s".into(),
                entity: "Case".into(),
                change_type: ChangeType::Update,
                version: RecordVersion::default(),
                payload: vec![0u8; bytes].into(),
            },
        }
    }

    #[test]
    fn batches_are_cut_by_payload_bytes_but_never_empty() {
        let mut v: Vec<_> = (1..=10).map(|o| logged(o, 1000)).collect();
        truncate_to_bytes(&mut v, 3500);
        assert_eq!(
            v.iter().map(|l| l.offset).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let mut v: Vec<_> = (1..=3).map(|o| logged(o, 10_000)).collect();
        truncate_to_bytes(&mut v, 3500);
        assert_eq!(v.len(), 1, "one oversized change still makes a batch");
        let mut v: Vec<_> = (1..=3).map(|o| logged(o, 10)).collect();
        truncate_to_bytes(&mut v, 3500);
        assert_eq!(v.len(), 3);
        let mut v: Vec<LoggedChange> = Vec::new();
        truncate_to_bytes(&mut v, 3500);
        assert!(v.is_empty());
    }
}
