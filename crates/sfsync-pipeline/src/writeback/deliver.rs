//! Delivery of writes to Salesforce: the loop that takes pending writes from the ledger, decides
//! them against the curated model ([`super::policy::decide`]), sends what applies and records
//! every write's outcome.
//!
//! Guarantees:
//! - Every claimed write ends in exactly one recorded outcome: `applied` (with the record id),
//!   `conflict` (with a [`ConflictDetail`]), `rejected` (with the reason) or `failed` (a dead
//!   letter with Salesforce's status code and message). A deliverer that dies between sending and
//!   recording leaves its writes `sent`; after the lease ([`DeliveryConfig::lease`]) any
//!   deliverer returns them to `pending` and sends them again — safe, because an upsert by
//!   External Id never creates a second record and an update by Id is idempotent.
//! - Never two writes to one record in one call: writes of the same record in one claim go out
//!   in successive waves, in ledger (acceptance) order, so the last accepted value wins.
//! - Every call takes the `writeback` lane of the API budget governor (it defers, never exceeds
//!   the budget) and carries `Sforce-Call-Options: client=<own client>` (set on the client), so
//!   the CDC echo is recognised by the apply stage, which confirms the write.
//! - Retryable failures (`UNABLE_TO_LOCK_ROW`, 5xx, transport errors) are sent again after an
//!   exponential backoff with jitter, in halved batches, up to [`DeliveryConfig::max_attempts`]
//!   times; then the write is a dead letter. A whole call refused for another reason (HTTP 400
//!   on the batch) is bisected until the bad record is isolated; the others go through.
//!
//! Policy outcomes (see [`super::policy`]): a write none of whose fields may be written is
//! `rejected` with the reasons; fields rejected beside applicable ones are dropped (logged and
//! counted in `fields_rejected`). Under `manual`, any conflict holds the whole write (`conflict`,
//! nothing sent). Under `merge`, the fields that do not conflict are sent; once Salesforce
//! accepted them the write moves to `conflict` holding ONLY the conflicting fields in its detail
//! (so no record id is recorded for it and its echo does not confirm it); a person resolving it
//! requeues the whole write, which is decided afresh like a new one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use sfsync_core::ErrorClass;
use sfsync_salesforce::bulk::IngestOperation;
use sfsync_salesforce::rest::SaveResult;
use sfsync_salesforce::{
    BulkCsvWriter, BulkValue, IngestJobRequest, Lane, Record, RetryPolicy, SalesforceClient,
    SalesforceError,
};
use sfsync_store::{
    ConflictDetail, CurrentRow, FieldConflict, LedgerWrite, Value, Warehouse, WriteLedger,
    WriteOutcome,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::policy::{decide, ConflictPolicy, FieldDecision, WriteRequest, WritebackPolicy};
use crate::stats::PipelineStats;

/// Most records per sObject Collections call.
pub const MAX_CALL_RECORDS: usize = 200;

/// Tuning of the deliverer (`[writeback]` keys).
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Names this deliverer's claims in the ledger (unique per process).
    pub claimer: String,
    /// How long a write may wait for others to fill a call (from its acceptance). Writes that
    /// one call can carry (same object, same target kind) go out at once when they fill whole
    /// calls of [`MAX_CALL_RECORDS`].
    pub linger: Duration,
    /// Most writes claimed and delivered per round.
    pub max_batch: usize,
    /// One object's batch larger than this goes through Bulk API 2.0 ingest.
    pub bulk_threshold: usize,
    /// Sends of a record on retryable errors before it becomes a dead letter.
    pub max_attempts: u32,
    /// A `sent` write claimed longer ago than this is taken as abandoned (its deliverer died)
    /// and returned to `pending`.
    pub lease: Duration,
    /// Per object: the parent reference field whose value orders a batch (fewer lock
    /// conflicts when children of one parent go together).
    pub parent_fields: BTreeMap<String, String>,
    /// First backoff after a retryable error; doubles up to `max_backoff`, with jitter.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How often the ledger is looked at when nothing is pending.
    pub poll: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            claimer: format!("deliverer-{}", uuid::Uuid::new_v4().simple()),
            linger: Duration::from_millis(2_000),
            max_batch: 2_000,
            bulk_threshold: 2_000,
            max_attempts: 10,
            lease: Duration::from_secs(120),
            parent_fields: BTreeMap::new(),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            poll: Duration::from_millis(50),
        }
    }
}

/// How a group of records is sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    /// Update by Salesforce Id.
    ById,
    /// Upsert on this External Id field.
    Upsert(String),
}

/// One record to send: the write it carries and the record body.
#[derive(Debug, Clone)]
struct Unit {
    /// Index into the round's writes.
    w: usize,
    record: Record,
    /// The Id or External Id value (matches Bulk results back).
    key: String,
    /// Sends so far.
    attempts: u32,
}

/// What became of one sent record.
#[derive(Debug, Clone)]
enum Sent {
    Applied(String),
    Failed(String),
}

/// A write decided and ready to send.
struct Planned {
    write: LedgerWrite,
    kind: Kind,
    key: String,
    record: Record,
    /// Ordering key of the batch (parent id, else the record key).
    order: String,
    /// `merge`: the conflicting fields, recorded once the rest is applied.
    merge_conflict: Option<ConflictDetail>,
}

/// The writeback delivery loop (see the module doc).
pub struct Deliverer {
    store: Arc<dyn Warehouse>,
    ledger: Arc<dyn WriteLedger>,
    client: SalesforceClient,
    policy: WritebackPolicy,
    config: DeliveryConfig,
    stats: Arc<PipelineStats>,
    echo: Option<Arc<super::EchoConfirmer>>,
}

impl Deliverer {
    /// `client` is put in the writeback lane; it should carry our `call_options_client`.
    pub fn new(
        store: Arc<dyn Warehouse>,
        ledger: Arc<dyn WriteLedger>,
        client: &SalesforceClient,
        policy: WritebackPolicy,
        config: DeliveryConfig,
        stats: Arc<PipelineStats>,
    ) -> Deliverer {
        Deliverer {
            store,
            ledger,
            client: client.lane(Lane::Writeback),
            policy,
            config,
            stats,
            echo: None,
        }
    }

    /// Shares the pipeline's echo confirmer: echoes that arrived before their write was
    /// recorded `applied` are matched right after it is.
    pub fn with_echo(mut self, echo: Option<Arc<super::EchoConfirmer>>) -> Deliverer {
        self.echo = echo;
        self
    }

    /// Runs until `shutdown` turns true. Store and Salesforce errors are logged, counted and
    /// retried; the loop never gives up. A round in flight when it stops is finished first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut next_lease_check = Instant::now();
        let mut next_echo_retry = Instant::now();
        let mut failures: u32 = 0;
        let full_call = MAX_CALL_RECORDS.min(self.config.max_batch).max(1);
        tracing::info!(claimer = %self.config.claimer, "Writeback delivery started.");
        loop {
            if *shutdown.borrow() {
                break;
            }
            // Writes stay `pending` while they linger: a group (object × Id or External Id
            // field, the writes one call can carry) is claimed only for whole calls, or for its
            // writes that have waited `linger` (topped up to a whole call from the younger
            // ones), and sent at once.
            let step = async {
                if Instant::now() >= next_lease_check {
                    self.requeue_abandoned().await?;
                    next_lease_check =
                        Instant::now() + (self.config.lease / 4).max(Duration::from_secs(1));
                }
                self.ledger.ingest_outbox(self.config.max_batch).await?;
                let linger = self.config.linger.as_millis() as i64;
                let now = now_ms();
                let groups = self
                    .ledger
                    .pending_groups(self.config.max_batch.saturating_mul(4), now - linger)
                    .await?;
                let mut room = self.config.max_batch;
                let mut round = Vec::new();
                let mut next_due: Option<i64> = None;
                for g in groups {
                    let take = claim_size(g.count, g.due, full_call).min(room);
                    if take == 0 {
                        let due = g.oldest_created_ms + linger;
                        next_due = Some(next_due.map_or(due, |d: i64| d.min(due)));
                        continue;
                    }
                    let got = self
                        .ledger
                        .claim_group(&self.config.claimer, &g.group, take)
                        .await?;
                    room -= got.len().min(room);
                    round.extend(got);
                    if room == 0 {
                        break;
                    }
                }
                if round.is_empty() {
                    let wait = next_due.map_or(self.config.poll, |d| {
                        Duration::from_millis((d - now).max(1) as u64).min(self.config.poll)
                    });
                    return Ok(Err(wait));
                }
                self.stats
                    .writeback
                    .claimed
                    .fetch_add(round.len() as u64, Relaxed);
                Ok::<_, crate::PipelineError>(Ok(round))
            }
            .await;
            let wait = match step {
                Ok(Ok(round)) => {
                    failures = 0;
                    if !round.is_empty() {
                        self.deliver(round).await;
                    }
                    continue;
                }
                Ok(Err(wait)) => {
                    failures = 0;
                    // Echoes that arrived before their write was recorded `applied` are matched
                    // again after each recording; this catches one whose retry ran while the
                    // recording was under way (nothing else may come to wake it).
                    if Instant::now() >= next_echo_retry {
                        next_echo_retry = Instant::now() + Duration::from_secs(1);
                        if let Some(c) = self.echo.as_ref().filter(|c| c.has_unmatched()) {
                            c.confirm(Vec::new()).await;
                        }
                    }
                    wait
                }
                Err(e) => {
                    failures += 1;
                    self.stats.errors.fetch_add(1, Relaxed);
                    let wait = self.backoff(failures);
                    tracing::warn!(error = %sfsync_salesforce::error::error_chain(&e), wait_ms = wait.as_millis() as u64, "Writeback delivery could not read the ledger; trying again.");
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
        tracing::info!(claimer = %self.config.claimer, "Writeback delivery stopped.");
    }

    /// Returns writes whose claim outlived the lease to `pending` (called at start and
    /// periodically by [`Deliverer::run`]).
    pub async fn requeue_abandoned(&self) -> crate::Result<u64> {
        let cut = now_ms() - self.config.lease.as_millis() as i64;
        let ids = self
            .ledger
            .requeue_abandoned(
                cut,
                &format!(
                    "claim older than the {} s lease: its deliverer stopped before recording an outcome; sending again",
                    self.config.lease.as_secs()
                ),
            )
            .await?;
        if !ids.is_empty() {
            tracing::warn!(
                writes = ids.len(),
                "Writes abandoned in `sent` by a stopped deliverer are pending again."
            );
            self.stats
                .writeback
                .requeued_abandoned
                .fetch_add(ids.len() as u64, Relaxed);
        }
        Ok(ids.len() as u64)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff_ms: self.config.initial_backoff.as_millis() as u64,
            max_backoff_ms: self.config.max_backoff.as_millis() as u64,
            multiplier: 2.0,
            jitter: true,
        }
        .backoff(attempt)
    }

    /// Delivers one round of claimed writes and records every outcome. Failures to record are
    /// retried; a write whose outcome could not be recorded at all stays `sent` and comes back
    /// after the lease.
    pub async fn deliver(&self, writes: Vec<LedgerWrite>) {
        let (planned, settled) = self.plan(writes).await;
        self.record(settled).await;
        // Waves: the n-th write of each record goes in wave n.
        let mut waves: Vec<Vec<Planned>> = Vec::new();
        let mut seen: HashMap<(String, Kind, String), usize> = HashMap::new();
        for p in planned {
            let k = (p.write.object.clone(), p.kind.clone(), p.key.clone());
            let n = seen.entry(k).or_insert(0);
            if waves.len() <= *n {
                waves.push(Vec::new());
            }
            waves[*n].push(p);
            *n += 1;
        }
        for wave in waves {
            let mut groups: BTreeMap<(String, Kind), Vec<Planned>> = BTreeMap::new();
            for p in wave {
                groups
                    .entry((p.write.object.clone(), p.kind.clone()))
                    .or_default()
                    .push(p);
            }
            for ((object, kind), mut group) in groups {
                group.sort_by(|a, b| a.order.cmp(&b.order).then(a.key.cmp(&b.key)));
                let units: Vec<Unit> = group
                    .iter()
                    .enumerate()
                    .map(|(i, p)| Unit {
                        w: i,
                        record: p.record.clone(),
                        key: p.key.clone(),
                        attempts: 0,
                    })
                    .collect();
                let results = if units.len() > self.config.bulk_threshold {
                    self.send_bulk(&object, &kind, units).await
                } else {
                    self.send_composite(&object, &kind, units).await
                };
                let mut outcomes = Vec::with_capacity(group.len());
                let now = now_ms();
                for (i, r) in results {
                    let p = &group[i];
                    let o = match r {
                        Sent::Applied(id) => match &p.merge_conflict {
                            Some(d) => {
                                self.stats.writeback.conflict.fetch_add(1, Relaxed);
                                WriteOutcome::Conflict {
                                    detail: d.to_json(),
                                }
                            }
                            None => {
                                self.stats.writeback.count_applied(&object);
                                self.stats
                                    .writeback
                                    .accepted_to_applied
                                    .observe(now - p.write.created_at_ms);
                                WriteOutcome::Applied { record_id: id }
                            }
                        },
                        Sent::Failed(error) => {
                            self.stats.writeback.count_failed(&object);
                            tracing::warn!(write = p.write.id, object = %object, key = %p.key, error = %error, "A write is a dead letter.");
                            WriteOutcome::Failed { error }
                        }
                    };
                    outcomes.push((p.write.id, o));
                }
                self.record(outcomes).await;
                if let Some(c) = self.echo.as_ref().filter(|c| c.has_unmatched()) {
                    c.confirm(Vec::new()).await;
                }
            }
        }
    }

    /// Records outcomes, retrying store errors a few times.
    async fn record(&self, outcomes: Vec<(i64, WriteOutcome)>) {
        if outcomes.is_empty() {
            return;
        }
        for attempt in 1..=5u32 {
            match self.ledger.record_write_outcomes(&outcomes).await {
                Ok(()) => return,
                Err(e) => {
                    self.stats.errors.fetch_add(1, Relaxed);
                    tracing::warn!(error = %sfsync_salesforce::error::error_chain(&e), attempt, writes = outcomes.len(), "Recording writeback outcomes failed.");
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
            }
        }
        tracing::error!(writes = outcomes.len(), "Writeback outcomes could not be recorded; the writes stay `sent` and are delivered again after the claim lease.");
    }

    /// Decides each write against its curated row: returns the writes to send, and the
    /// outcomes of those settled without sending (rejected, conflict).
    async fn plan(&self, writes: Vec<LedgerWrite>) -> (Vec<Planned>, Vec<(i64, WriteOutcome)>) {
        let rows = self.rows_of(&writes).await;
        let own = self.own_writes(&writes, &rows).await;
        let mut planned = Vec::new();
        let mut settled = Vec::new();
        for w in writes {
            let fields = match serde_json::from_str::<serde_json::Value>(&w.fields) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => {
                    self.stats.writeback.count_failed(&w.object);
                    settled.push((
                        w.id,
                        WriteOutcome::Failed {
                            error: "the stored fields are not a JSON object".into(),
                        },
                    ));
                    continue;
                }
            };
            let row = row_key(&w).and_then(|k| rows.get(&k));
            let mut own_values: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
            if let Some(earlier) = row
                .and_then(|r| own.get(&(w.object.clone(), w.source_system.clone(), r.id.clone())))
            {
                for (_, set) in earlier.iter().filter(|(id, _)| *id < w.id) {
                    for (f, v) in set {
                        own_values.entry(f.clone()).or_default().push(v.clone());
                    }
                }
            }
            let request = WriteRequest {
                source_system: w.source_system.clone(),
                object: w.object.clone(),
                fields: fields.clone(),
                seen_version_ms: w.seen_version_ms,
                changed_at_ms: w.created_at_ms,
                own_values,
            };
            let decisions = decide(&self.policy, &request, row);
            let manual = |f: &str| {
                self.policy
                    .objects
                    .get(&w.object)
                    .is_some_and(|o| o.rule(f).policy == ConflictPolicy::Manual)
            };
            let mut apply = serde_json::Map::new();
            let mut detail = ConflictDetail::default();
            let mut rejected = Vec::new();
            let mut hold_all = false;
            for (field, d) in &decisions {
                match d {
                    FieldDecision::Apply => {
                        apply.insert(field.clone(), fields[field].clone());
                    }
                    FieldDecision::Reject { reason } => rejected.push(reason.clone()),
                    FieldDecision::Conflict {
                        salesforce,
                        writer,
                        salesforce_changed_ms,
                    } => {
                        hold_all |= manual(field);
                        detail.fields.push(FieldConflict {
                            field: field.clone(),
                            salesforce: value_json(salesforce.as_ref()),
                            writer: writer.clone(),
                            salesforce_changed_ms: *salesforce_changed_ms,
                        });
                    }
                    FieldDecision::Hold => detail.held.push(field.clone()),
                }
            }
            if hold_all || !detail.held.is_empty() {
                // manual: the whole write waits; the fields that would apply are held with it.
                detail.held.extend(apply.keys().cloned());
                detail.held.sort();
                detail.held.dedup();
                self.stats.writeback.conflict.fetch_add(1, Relaxed);
                settled.push((
                    w.id,
                    WriteOutcome::Conflict {
                        detail: detail.to_json(),
                    },
                ));
                continue;
            }
            if apply.is_empty() {
                if detail.fields.is_empty() {
                    self.stats.writeback.rejected.fetch_add(1, Relaxed);
                    settled.push((
                        w.id,
                        WriteOutcome::Rejected {
                            reason: rejected.join("; "),
                        },
                    ));
                } else {
                    self.stats.writeback.conflict.fetch_add(1, Relaxed);
                    settled.push((
                        w.id,
                        WriteOutcome::Conflict {
                            detail: detail.to_json(),
                        },
                    ));
                }
                continue;
            }
            if !rejected.is_empty() {
                self.stats
                    .writeback
                    .fields_rejected
                    .fetch_add(rejected.len() as u64, Relaxed);
                tracing::warn!(write = w.id, object = %w.object, reasons = %rejected.join("; "), "Fields of a write were dropped by the writeback policy; the rest is sent.");
            }
            let (kind, key) = match (&w.record_id, &w.external_id_field, &w.external_id) {
                (Some(id), _, _) => {
                    apply.insert("Id".into(), serde_json::Value::String(id.clone()));
                    (Kind::ById, id.clone())
                }
                (None, Some(f), Some(v)) => {
                    apply.insert(f.clone(), serde_json::Value::String(v.clone()));
                    (Kind::Upsert(f.clone()), v.clone())
                }
                _ => {
                    self.stats.writeback.count_failed(&w.object);
                    settled.push((
                        w.id,
                        WriteOutcome::Failed {
                            error: "the write names neither a record id nor an External Id".into(),
                        },
                    ));
                    continue;
                }
            };
            let order = self
                .config
                .parent_fields
                .get(&w.object)
                .and_then(|pf| row.and_then(|r| r.values.get(&pf.to_ascii_lowercase())))
                .and_then(|v| match v {
                    Value::Text(s) => Some(s.clone()),
                    _ => None,
                })
                .or_else(|| row.map(|r| r.id.clone()))
                .unwrap_or_else(|| key.clone());
            planned.push(Planned {
                merge_conflict: (!detail.fields.is_empty()).then_some(detail),
                write: w,
                kind,
                key,
                record: apply,
                order,
            });
        }
        (planned, settled)
    }

    /// The applied writes (applied or confirmed) of each writer to the records of `writes`,
    /// newest first with the fields they set, by (object, source system, record id). A lookup
    /// that fails is logged and treated as none (the conflict check stays strict).
    async fn own_writes(
        &self,
        writes: &[LedgerWrite],
        rows: &HashMap<(String, String), CurrentRow>,
    ) -> HashMap<(String, String, String), Vec<(i64, serde_json::Map<String, serde_json::Value>)>>
    {
        let mut wanted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for w in writes {
            if let Some(r) = row_key(w).and_then(|k| rows.get(&k)) {
                wanted
                    .entry((w.object.clone(), w.source_system.clone()))
                    .or_default()
                    .insert(r.id.clone());
            }
        }
        let mut out: HashMap<_, Vec<_>> = HashMap::new();
        // In chunks: a statement's parameters are bounded (SQLite: 32,766).
        let chunks = wanted.into_iter().flat_map(|((object, source), ids)| {
            let ids: Vec<String> = ids.into_iter().collect();
            ids.chunks(500)
                .map(|c| (object.clone(), source.clone(), c.to_vec()))
                .collect::<Vec<_>>()
        });
        for (object, source, ids) in chunks {
            let filter = sfsync_store::WriteFilter {
                states: vec![
                    sfsync_store::WriteState::Applied,
                    sfsync_store::WriteState::Confirmed,
                ],
                object: Some(object.clone()),
                source_system: Some(source.clone()),
                limit: ids.len() * 8 + 64,
                record_ids: ids,
                newest_first: true,
            };
            match self.ledger.writes(&filter).await {
                Ok(found) => {
                    for e in found {
                        let (Some(rid), Ok(serde_json::Value::Object(set))) = (
                            e.record_id.clone(),
                            serde_json::from_str::<serde_json::Value>(&e.fields),
                        ) else {
                            continue;
                        };
                        out.entry((object.clone(), source.clone(), rid))
                            .or_default()
                            .push((e.id, set));
                    }
                }
                Err(e) => {
                    tracing::warn!(object = %object, source = %source, error = %sfsync_salesforce::error::error_chain(&e), "Could not read the writer's earlier writes; its own changes count as Salesforce's.");
                }
            }
        }
        out
    }

    /// The curated rows of the writes' records, keyed by [`row_key`]. A lookup that fails is
    /// logged and treated as "record unknown" (nothing to conflict with; Salesforce still
    /// enforces its own rules).
    async fn rows_of(&self, writes: &[LedgerWrite]) -> HashMap<(String, String), CurrentRow> {
        let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut by_ext: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for w in writes {
            match (&w.record_id, &w.external_id_field, &w.external_id) {
                (Some(id), _, _) => by_id.entry(w.object.clone()).or_default().push(id.clone()),
                (None, Some(f), Some(v)) => by_ext
                    .entry((w.object.clone(), f.clone()))
                    .or_default()
                    .push(v.clone()),
                _ => {}
            }
        }
        let mut ext_ids: HashMap<(String, String), String> = HashMap::new();
        for ((object, field), values) in by_ext {
            match self
                .store
                .ids_by_value(&object, &field.to_ascii_lowercase(), &values)
                .await
            {
                Ok(pairs) => {
                    for (value, id) in pairs {
                        by_id.entry(object.clone()).or_default().push(id.clone());
                        ext_ids.insert((object.clone(), format!("{field}={value}")), id);
                    }
                }
                Err(e) => {
                    tracing::warn!(object = %object, field = %field, error = %sfsync_salesforce::error::error_chain(&e), "Could not look up writes' records by External Id; deciding them as unknown records.");
                }
            }
        }
        let mut out = HashMap::new();
        for (object, mut ids) in by_id {
            ids.sort();
            ids.dedup();
            match self.store.load_current(&object, &ids).await {
                Ok(rows) => {
                    for (id, row) in rows {
                        out.insert((object.clone(), id), row);
                    }
                }
                Err(e) => {
                    tracing::warn!(object = %object, error = %sfsync_salesforce::error::error_chain(&e), "Could not read the curated rows of writes; deciding them as unknown records.");
                }
            }
        }
        for ((object, ext), id) in ext_ids {
            if let Some(r) = out.get(&(object.clone(), id)).cloned() {
                out.insert((object, ext), r);
            }
        }
        out
    }

    /// Sends `units` in Composite calls of ≤ 200 (allOrNone false) with retries and bisection
    /// (see the module doc). Returns each unit's result by its index.
    async fn send_composite(
        &self,
        object: &str,
        kind: &Kind,
        units: Vec<Unit>,
    ) -> Vec<(usize, Sent)> {
        let mut out = Vec::with_capacity(units.len());
        let mut queue: std::collections::VecDeque<Vec<Unit>> = units
            .chunks(MAX_CALL_RECORDS)
            .map(<[Unit]>::to_vec)
            .collect();
        while let Some(mut chunk) = queue.pop_front() {
            for u in &mut chunk {
                u.attempts += 1;
            }
            let records: Vec<Record> = chunk.iter().map(|u| u.record.clone()).collect();
            self.stats.writeback.api_calls.fetch_add(1, Relaxed);
            self.stats
                .writeback
                .records_sent
                .fetch_add(records.len() as u64, Relaxed);
            let result = match kind {
                Kind::ById => self.client.collection_update(object, &records, false).await,
                Kind::Upsert(f) => {
                    self.client
                        .collection_upsert(object, f, &records, false)
                        .await
                }
            };
            match result {
                Ok(results) => {
                    let mut again = Vec::new();
                    for (u, r) in chunk.into_iter().zip(results) {
                        match save_outcome(&u, r) {
                            Ok(s) => out.push((u.w, s)),
                            Err(retry_error) => again.push((u, retry_error)),
                        }
                    }
                    self.retry(again, &mut queue, &mut out).await;
                }
                Err(e) if is_retryable(&e) => {
                    let report = e.report();
                    let again = chunk.into_iter().map(|u| (u, report.clone())).collect();
                    self.retry(again, &mut queue, &mut out).await;
                }
                Err(e) if chunk.len() > 1 => {
                    // The whole call was refused: bisect to isolate the record at fault.
                    tracing::warn!(object = %object, records = chunk.len(), error = %e.report(), "Salesforce refused a whole writeback call; bisecting it.");
                    for u in &mut chunk {
                        u.attempts -= 1; // a bisection is not a retry
                    }
                    let right = chunk.split_off(chunk.len() / 2);
                    queue.push_front(right);
                    queue.push_front(chunk);
                }
                Err(e) => {
                    let u = chunk.pop().expect("one unit");
                    out.push((u.w, Sent::Failed(dead_letter_text(&e))));
                }
            }
        }
        out
    }

    /// Queues retryable units again after a backoff (halved batches), or gives them up as dead
    /// letters once they used their attempts.
    async fn retry(
        &self,
        again: Vec<(Unit, String)>,
        queue: &mut std::collections::VecDeque<Vec<Unit>>,
        out: &mut Vec<(usize, Sent)>,
    ) {
        if again.is_empty() {
            return;
        }
        let mut keep = Vec::new();
        let mut max_attempt = 0;
        for (u, error) in again {
            if u.attempts >= self.config.max_attempts {
                out.push((
                    u.w,
                    Sent::Failed(format!(
                        "gave up after {} attempts; last error: {error}",
                        u.attempts
                    )),
                ));
            } else {
                max_attempt = max_attempt.max(u.attempts);
                keep.push(u);
            }
        }
        if keep.is_empty() {
            return;
        }
        self.stats
            .writeback
            .retries
            .fetch_add(keep.len() as u64, Relaxed);
        let wait = self.backoff(max_attempt);
        tracing::info!(
            records = keep.len(),
            wait_ms = wait.as_millis() as u64,
            attempt = max_attempt,
            "Writeback records hit a transient error; sending them again in smaller batches."
        );
        tokio::time::sleep(wait).await;
        let half = keep.len().div_ceil(2).max(1);
        let mut parts: Vec<Vec<Unit>> = Vec::new();
        while !keep.is_empty() {
            let rest = keep.split_off(half.min(keep.len()));
            parts.push(std::mem::replace(&mut keep, rest));
        }
        for p in parts.into_iter().rev() {
            queue.push_front(p);
        }
    }

    /// Sends a large group as Bulk API 2.0 ingest jobs (update or upsert CSV, null as `#N/A`).
    /// Records the job reports as failed for a transient reason, and everything when the job
    /// itself fails, go through Composite calls (safe to resend, see the module doc).
    async fn send_bulk(&self, object: &str, kind: &Kind, units: Vec<Unit>) -> Vec<(usize, Sent)> {
        match self.try_bulk(object, kind, &units).await {
            Ok((mut out, leftovers)) => {
                if !leftovers.is_empty() {
                    let rest: Vec<Unit> = units
                        .into_iter()
                        .filter(|u| leftovers.contains(&u.w))
                        .collect();
                    out.extend(self.send_composite(object, kind, rest).await);
                }
                out
            }
            Err(e) => {
                tracing::warn!(object = %object, records = units.len(), error = %e.report(), "A writeback Bulk job failed; sending its records through Composite calls.");
                self.send_composite(object, kind, units).await
            }
        }
    }

    async fn try_bulk(
        &self,
        object: &str,
        kind: &Kind,
        units: &[Unit],
    ) -> Result<(Vec<(usize, Sent)>, Vec<usize>), SalesforceError> {
        let key_field = match kind {
            Kind::ById => "Id".to_string(),
            Kind::Upsert(f) => f.clone(),
        };
        let mut columns: Vec<String> = units
            .iter()
            .flat_map(|u| u.record.keys().cloned())
            .filter(|k| *k != key_field)
            .collect();
        columns.sort();
        columns.dedup();
        let mut w = BulkCsvWriter::new(b',', false);
        let csv_err = |source| SalesforceError::Csv {
            place: format!("writeback ingest data for {object}"),
            source,
        };
        w.write_header(
            std::iter::once(key_field.as_str()).chain(columns.iter().map(String::as_str)),
        )
        .map_err(csv_err)?;
        let texts: Vec<Vec<Option<String>>> = units
            .iter()
            .map(|u| {
                columns
                    .iter()
                    .map(|c| match u.record.get(c) {
                        None => None,
                        Some(serde_json::Value::Null) => Some(String::new()),
                        Some(serde_json::Value::String(s)) => Some(s.clone()),
                        Some(v) => Some(v.to_string()),
                    })
                    .collect()
            })
            .collect();
        for (u, row) in units.iter().zip(&texts) {
            let cells =
                std::iter::once(BulkValue::Text(&u.key)).chain(row.iter().map(|c| match c {
                    None => BulkValue::Unchanged,
                    Some(s) if s.is_empty() => BulkValue::Null,
                    Some(s) => BulkValue::Text(s),
                }));
            w.write_record(cells).map_err(csv_err)?;
        }
        let req = match kind {
            Kind::ById => IngestJobRequest::new(object, IngestOperation::Update),
            Kind::Upsert(f) => IngestJobRequest::upsert(object, f.clone()),
        };
        let bulk = self.client.bulk().lane(Lane::Writeback);
        self.stats
            .writeback
            .records_sent
            .fetch_add(units.len() as u64, Relaxed);
        let jobs = bulk.ingest(&req, w.into_bytes()).await?;
        // create, upload, close per job, then three result reads (each reads the job first).
        self.stats
            .writeback
            .api_calls
            .fetch_add(jobs.len() as u64 * 9, Relaxed);
        let by_key: HashMap<&str, usize> = units.iter().map(|u| (u.key.as_str(), u.w)).collect();
        let mut out = Vec::new();
        let mut leftovers = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for job in &jobs {
            let mut ok = bulk.successful_results(&job.id).await?;
            while let Some(batch) = ok.next_batch().await? {
                for row in batch.iter() {
                    let (Some(id), Some(key)) = (row.get(0), row.get(2)) else {
                        continue;
                    };
                    if let Some(&i) = by_key.get(key) {
                        seen.insert(i);
                        out.push((i, Sent::Applied(id.to_string())));
                    }
                }
            }
            let mut failed = bulk.failed_results(&job.id).await?;
            while let Some(batch) = failed.next_batch().await? {
                for row in batch.iter() {
                    let (Some(err), Some(key)) = (row.get(1), row.get(2)) else {
                        continue;
                    };
                    if let Some(&i) = by_key.get(key) {
                        seen.insert(i);
                        let e = sfsync_salesforce::bulk::parse_failed_result_error(err);
                        if e.class() == ErrorClass::Retry {
                            leftovers.push(i);
                        } else {
                            out.push((
                                i,
                                Sent::Failed(format!("{}: {}", e.status_code, e.message)),
                            ));
                        }
                    }
                }
            }
        }
        // Unprocessed or unreported rows are sent again.
        leftovers.extend(units.iter().map(|u| u.w).filter(|i| !seen.contains(i)));
        Ok((out, leftovers))
    }
}

/// A per-record result: `Ok` when settled, `Err(error)` when it should be sent again.
fn save_outcome(u: &Unit, r: SaveResult) -> Result<Sent, String> {
    if r.success {
        let id =
            r.id.clone()
                .or_else(|| {
                    u.record
                        .get("Id")
                        .and_then(|v| v.as_str().map(str::to_string))
                })
                .unwrap_or_default();
        return Ok(Sent::Applied(id));
    }
    let text = r
        .errors
        .iter()
        .map(|e| {
            if e.fields.is_empty() {
                format!("{}: {}", e.status_code, e.message)
            } else {
                format!(
                    "{}: {} (fields: {})",
                    e.status_code,
                    e.message,
                    e.fields.join(", ")
                )
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    let retry = !r.errors.is_empty() && r.errors.iter().all(|e| e.class() == ErrorClass::Retry);
    if retry {
        Err(text)
    } else {
        Ok(Sent::Failed(if text.is_empty() {
            "Salesforce reported a failure without an error".into()
        } else {
            text
        }))
    }
}

/// Whether a whole-call error should be sent again (lock, 5xx, transport, timeouts).
fn is_retryable(e: &SalesforceError) -> bool {
    e.class() == ErrorClass::Retry
        || e.status().is_some_and(|s| s >= 500)
        || e.error_code() == Some("UNABLE_TO_LOCK_ROW")
}

/// A dead letter's text: Salesforce's status code and message.
fn dead_letter_text(e: &SalesforceError) -> String {
    match e.api() {
        Some(a) => format!("{}: {} (HTTP {})", a.error_code, a.message, a.status),
        None => e.report(),
    }
}

/// How many of a group's `pending` writes to claim now: its whole calls, and when `due` of
/// them have waited long enough, those topped up to whole calls from the younger ones (a call
/// that must go anyway carries as many as it can).
fn claim_size(pending: usize, due: usize, full_call: usize) -> usize {
    let whole = pending / full_call * full_call;
    let for_due = due.div_ceil(full_call) * full_call;
    whole.max(for_due).min(pending)
}

/// The key of a write's curated row in [`Deliverer::rows_of`]'s map.
fn row_key(w: &LedgerWrite) -> Option<(String, String)> {
    match (&w.record_id, &w.external_id_field, &w.external_id) {
        (Some(id), _, _) => Some((w.object.clone(), id.clone())),
        (None, Some(f), Some(v)) => Some((w.object.clone(), format!("{f}={v}"))),
        _ => None,
    }
}

/// A curated value as JSON (dates `YYYY-MM-DD`, timestamps RFC 3339 UTC).
pub fn value_json(v: Option<&Value>) -> serde_json::Value {
    use serde_json::json;
    match v {
        None | Some(Value::Null) => serde_json::Value::Null,
        Some(Value::Bool(b)) => json!(b),
        Some(Value::Int(i)) => json!(i),
        Some(Value::Real(r)) => json!(r),
        Some(Value::Text(s)) => json!(s),
        Some(Value::Date(d)) => chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
            .and_then(|e| e.checked_add_signed(chrono::Duration::days(i64::from(*d))))
            .map(|d| json!(d.format("%Y-%m-%d").to_string()))
            .unwrap_or(serde_json::Value::Null),
        Some(Value::Timestamp(ms)) => chrono::DateTime::from_timestamp_millis(*ms)
            .map(|t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
            .unwrap_or(serde_json::Value::Null),
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(key: &str) -> Unit {
        Unit {
            w: 0,
            record: serde_json::Map::from_iter([("Id".to_string(), serde_json::json!(key))]),
            key: key.into(),
            attempts: 1,
        }
    }

    fn save(success: bool, code: &str) -> SaveResult {
        serde_json::from_value(serde_json::json!({
            "id": if success { serde_json::json!("500000000000001AAA") } else { serde_json::Value::Null },
            "success": success,
            "errors": if success { serde_json::json!([]) } else { serde_json::json!([{"statusCode": code, "message": "m", "fields": []}]) },
        }))
        .unwrap()
    }

    #[test]
    fn claims_fill_whole_calls_unless_writes_are_due() {
        assert_eq!(claim_size(0, 0, 200), 0);
        assert_eq!(claim_size(199, 0, 200), 0, "a partial call lingers");
        assert_eq!(
            claim_size(230, 0, 200),
            200,
            "whole calls go, the rest lingers"
        );
        assert_eq!(claim_size(650, 0, 200), 600);
        assert_eq!(
            claim_size(30, 1, 200),
            30,
            "a due write takes what is pending"
        );
        assert_eq!(claim_size(450, 10, 200), 400);
        assert_eq!(
            claim_size(350, 201, 200),
            350,
            "due writes spill into a second call"
        );
        assert_eq!(claim_size(450, 201, 200), 400);
        assert_eq!(claim_size(5, 5, 1), 5);
    }

    #[test]
    fn per_record_results_are_classified() {
        let u = unit("500000000000001AAA");
        assert!(
            matches!(save_outcome(&u, save(true, "")), Ok(Sent::Applied(id)) if id == "500000000000001AAA")
        );
        assert!(save_outcome(&u, save(false, "UNABLE_TO_LOCK_ROW")).is_err());
        assert!(matches!(
            save_outcome(&u, save(false, "INVALID_FIELD")),
            Ok(Sent::Failed(e)) if e == "INVALID_FIELD: m"
        ));
    }

    #[test]
    fn curated_values_render_as_json() {
        assert_eq!(value_json(None), serde_json::Value::Null);
        assert_eq!(
            value_json(Some(&Value::Date(1))),
            serde_json::json!("1970-01-02")
        );
        assert_eq!(
            value_json(Some(&Value::Timestamp(1_000))),
            serde_json::json!("1970-01-01T00:00:01.000Z")
        );
        assert_eq!(
            value_json(Some(&Value::Text("x".into()))),
            serde_json::json!("x")
        );
    }
}
