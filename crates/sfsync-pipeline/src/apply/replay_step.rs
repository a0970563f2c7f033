//! The applier's side of replays (see [`crate::replay`]): decides where a replay's changes come
//! from, selects its records from the raw log in steps, and rebuilds them a bounded chunk per
//! step — each chunk in one transaction with the job's position — between streamed batches.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use sfsync_core::RecordVersion;
use sfsync_store::{
    CuratedBatch, HistoryWrite, LogPoint, LoggedChange, QuarantineFilter, RepairRequest,
    SyncCounts, SyncJob, SyncJobPatch, SyncJobProgress, SyncJobStatus,
};

use super::{now_ms, rows_into, Applier, Rows, CURATED_CONSUMER};
use crate::error::{chain, PipelineError, Result};
use crate::jobs::{self, Active};
use crate::normalize::{self, Normalized, Op, RecordChange};
use crate::plan::{self, Planner};
use crate::replay::{
    self, ReplayProgress, ReplayReport, ReplayRun, ReplaySelection, INDEX_STEP_ENTRIES,
    MAX_INDEXED_CHANGES,
};

/// Consecutive failures of a replay step after which the replay is given up.
const MAX_STEP_FAILURES: u32 = 5;

/// A replayed raw-log entry, decoded for one object.
enum Replayed {
    Records(Vec<RecordChange>),
    /// A GAP_* event: the change itself is not in the log.
    Gap(Vec<String>),
    /// GAP_OVERFLOW: no record ids.
    Overflow,
    /// Does not decode (kept as a dead letter when it was first applied); the record ids when
    /// known.
    Undecodable(Vec<String>),
}

/// Where a replay's changes come from, decided when it starts.
enum Source {
    Log(ReplayProgress),
    /// The whole window from Salesforce, for this reason.
    Salesforce(String),
    /// Cannot be carried out (the error says why and what to do instead).
    Fail(String),
}

impl Applier {
    /// The apply offset everything up to which is committed.
    async fn applied_head(&mut self) -> Result<u64> {
        self.flush().await?;
        Ok(match self.offset {
            Some(o) => o,
            None => {
                let o = self
                    .store
                    .applied_offset(CURATED_CONSUMER)
                    .await?
                    .unwrap_or(0);
                self.offset = Some(o);
                o
            }
        })
    }

    /// Takes a replay job: records its run, decides (or, after a restart, reads back) where its
    /// changes come from, and starts it.
    pub(super) async fn start_replay(&mut self, mut job: SyncJob) -> Result<()> {
        let run_id = self.begin(&mut job).await?;
        let selection = match ReplaySelection::from_params(&job.params) {
            Ok(s) => s,
            Err(e) => return self.fail_replay(&job, &run_id, &e).await,
        };
        let described = selection.describe(job.since_ms, job.until_ms);
        tracing::info!(job = job.id, object = %job.object, selection = %described, "Replay started.");
        if job.bulk_job_id.is_some() {
            // A re-read of the window from Salesforce, started before a restart.
            return self.replay_window_from_salesforce(job, run_id, None).await;
        }
        let progress = match job
            .locator
            .as_deref()
            .and_then(ReplayProgress::from_locator)
        {
            Some(p) => p,
            None => match self.replay_source(&job, &selection).await? {
                Source::Log(p) => {
                    self.store
                        .patch_sync_job(
                            job.id,
                            &SyncJobPatch {
                                position: Some((Some(p.to_locator()), 0)),
                                ..Default::default()
                            },
                        )
                        .await?;
                    p
                }
                Source::Salesforce(why) => {
                    tracing::warn!(job = job.id, object = %job.object, why = %why, "Replay: the raw log does not reach back to the window; re-reading it from Salesforce.");
                    return self
                        .replay_window_from_salesforce(job, run_id, Some(why))
                        .await;
                }
                Source::Fail(error) => return self.fail_replay(&job, &run_id, &error).await,
            },
        };
        let run = ReplayRun::new(selection, job.since_ms, job.until_ms, progress);
        let (_, rx) = tokio::sync::mpsc::channel(1);
        self.jobs.active = Some(Active {
            job,
            run_id,
            rx,
            task: None,
            columns: None,
            counts: SyncCounts::default(),
            started: Instant::now(),
            replay: Some(Box::new(run)),
        });
        Ok(())
    }

    /// Where a new replay's changes come from: the raw log from which offset, or Salesforce.
    async fn replay_source(
        &mut self,
        job: &SyncJob,
        selection: &ReplaySelection,
    ) -> Result<Source> {
        let head = self.applied_head().await?;
        let object = job.object.clone();
        let since = |ms: i64| LogPoint::FirstCommittedSince {
            entity: object.clone(),
            commit_ms: ms,
        };
        // No applied change from the point on: an empty selection (start past the end).
        let nothing = head + 1;
        let start = match selection {
            ReplaySelection::Window => {
                let Some(since_ms) = job.since_ms else {
                    return Ok(Source::Fail(
                        "a replay by time needs a start time (--since)".into(),
                    ));
                };
                let channel = self
                    .specs
                    .get(&object)
                    .map(|s| s.channel.clone())
                    .unwrap_or_default();
                let oldest = self
                    .store
                    .locate(&LogPoint::Oldest {
                        channel: Some(channel.clone()),
                    })
                    .await?;
                match oldest {
                    None => {
                        return Ok(Source::Salesforce(format!(
                            "the raw log holds no change on {channel}"
                        )))
                    }
                    Some(o) if o.commit_timestamp > since_ms => {
                        return Ok(Source::Salesforce(format!(
                            "the oldest change the raw log retains on {channel} was committed \
                             at {}, after the window's start {}",
                            replay::ts(o.commit_timestamp),
                            replay::ts(since_ms)
                        )))
                    }
                    Some(_) => self
                        .store
                        .locate(&since(since_ms))
                        .await?
                        .map_or(nothing, |m| m.offset),
                }
            }
            ReplaySelection::ReplayId { channel, replay_id } => {
                let found = self
                    .store
                    .locate(&LogPoint::ReplayId {
                        channel: channel.clone(),
                        replay_id: replay_id.clone(),
                    })
                    .await?;
                match found {
                    Some(m) => m.offset,
                    None => {
                        let oldest = self
                            .store
                            .locate(&LogPoint::Oldest {
                                channel: Some(channel.clone()),
                            })
                            .await?;
                        let retained = match &oldest {
                            Some(o) => format!(
                                "the oldest change retained there has replay id {} and was \
                                 committed at {}",
                                o.replay_id,
                                replay::ts(o.commit_timestamp)
                            ),
                            None => "the raw log holds no change on it".into(),
                        };
                        let at = oldest.map_or_else(
                            || "<time>".to_string(),
                            |o| replay::ts(o.commit_timestamp),
                        );
                        return Ok(Source::Fail(format!(
                            "replay id {replay_id} is not in the raw log of {channel} ({retained}); \
                             a replay id older than the raw log (or not received yet) cannot be \
                             placed in time, so replay by time instead: `sfsync replay {object} \
                             --since {at}` — a time older than the raw log re-reads the window \
                             from Salesforce"
                        )));
                    }
                }
            }
            ReplaySelection::Ids { .. } => match job.since_ms {
                Some(s) => self
                    .store
                    .locate(&since(s))
                    .await?
                    .map_or(nothing, |m| m.offset),
                None => 0,
            },
        };
        Ok(Source::Log(ReplayProgress {
            start,
            end: head,
            ..Default::default()
        }))
    }

    /// Fails a replay that cannot be carried out, with its run.
    async fn fail_replay(&mut self, job: &SyncJob, run_id: &str, error: &str) -> Result<()> {
        tracing::error!(job = job.id, object = %job.object, error, "Replay failed.");
        self.stats.errors.fetch_add(1, Relaxed);
        self.store
            .patch_sync_job(
                job.id,
                &SyncJobPatch {
                    status: Some(SyncJobStatus::Failed),
                    error: Some(error.to_string()),
                    ..Default::default()
                },
            )
            .await?;
        self.store
            .finish_run(
                run_id,
                "failed",
                &jobs::run_detail(job, &SyncCounts::default(), 0.0),
            )
            .await?;
        Ok(())
    }

    /// A window the raw log does not reach back to: re-read from Salesforce (Bulk `queryAll`
    /// of the records modified since the window's start), applied authoritatively.
    async fn replay_window_from_salesforce(
        &mut self,
        job: SyncJob,
        run_id: String,
        why: Option<String>,
    ) -> Result<()> {
        let Some(bulk) = self.bulk.clone() else {
            return Err(PipelineError::config(
                &job.object,
                "a replay from Salesforce needs Bulk API access, which this process was started \
                 without",
            ));
        };
        let bulk = bulk.lane(sfsync_salesforce::Lane::Backfill);
        if let Some(why) = why {
            let selection = ReplaySelection::from_params(&job.params)
                .map(|s| s.describe(job.since_ms, job.until_ms))
                .unwrap_or_default();
            let mut notes = Vec::new();
            if job.until_ms.is_some() {
                notes.push(
                    "Salesforce keeps only each record's last modification time, so every \
                     record modified since the window's start is re-read (the window's end \
                     cannot narrow it)"
                        .to_string(),
                );
            }
            let report = ReplayReport {
                selection,
                source: "salesforce".into(),
                salesforce_window_reason: Some(why),
                notes,
                ..Default::default()
            };
            self.store
                .patch_sync_job(
                    job.id,
                    &SyncJobPatch {
                        report: Some(serde_json::to_string(&report).unwrap_or_default()),
                        ..Default::default()
                    },
                )
                .await?;
        }
        let mapping = &self.mappings[&job.object];
        let soql = jobs::snapshot_soql(mapping, job.since_ms, None);
        tracing::info!(job = job.id, object = %job.object, %soql, "Replay: re-reading the window from Salesforce.");
        let (rx, task) = jobs::spawn_fetch(
            bulk,
            self.store.clone(),
            job.clone(),
            soql,
            self.config.jobs.page_records,
            self.fetch_wake.clone(),
        );
        self.jobs.active = Some(Active::new(job, run_id, rx, Some(task)));
        Ok(())
    }

    /// One step of the running replay from the raw log: a slice of the selection, catching up
    /// with what streaming applied meanwhile, or one chunk of records rebuilt.
    pub(super) async fn replay_step(&mut self) -> Result<usize> {
        let Some(mut run) = self.jobs.active.as_mut().and_then(|a| a.replay.take()) else {
            return Ok(0);
        };
        let out = self.replay_work(&mut run).await;
        match out {
            Ok(n) => {
                run.failures = 0;
                if let Some(a) = self.jobs.active.as_mut() {
                    a.replay = Some(run);
                }
                Ok(n)
            }
            Err(e) if run.failures + 1 >= MAX_STEP_FAILURES => {
                // The same step keeps failing (a chunk the store refuses, say): give the job up
                // rather than hold streaming back. Its committed records stay rebuilt.
                let error = format!(
                    "gave up after {MAX_STEP_FAILURES} failed attempts at the same step: {}",
                    chain(&e)
                );
                self.stats.errors.fetch_add(1, Relaxed);
                if let Some(a) = self.jobs.active.take() {
                    tracing::error!(job = a.job.id, error = %error, "Replay failed.");
                    jobs::fail_job(&*self.store, &a, SyncJobStatus::Failed, &error).await?;
                }
                Ok(0)
            }
            Err(e) => {
                run.failures += 1;
                if let Some(a) = self.jobs.active.as_mut() {
                    a.replay = Some(run);
                }
                Err(e)
            }
        }
    }

    async fn replay_work(&mut self, run: &mut ReplayRun) -> Result<usize> {
        let Some(a) = self.jobs.active.as_ref() else {
            return Ok(0);
        };
        let (job_id, object) = (a.job.id, a.job.object.clone());
        if run.selecting {
            let end = run.progress.end;
            let entries = self
                .store
                .read_entity(&object, run.next_offset, end, INDEX_STEP_ENTRIES)
                .await?;
            let n = entries.len();
            for lc in &entries {
                let (ids, counts_overflow) = match self.decode_replayed(&object, lc).await? {
                    Replayed::Records(rs) => (rs.into_iter().map(|r| r.id).collect(), false),
                    Replayed::Gap(ids) | Replayed::Undecodable(ids) => (ids, false),
                    Replayed::Overflow => (Vec::new(), true),
                };
                let commit_ms = lc.change.version.commit_timestamp;
                if counts_overflow && run.selects(&lc.channel, commit_ms, "") {
                    run.progress.overflows += 1;
                }
                let mut ids: Vec<String> = ids;
                ids.dedup();
                let mut within = true;
                for id in &ids {
                    let sel = run.selects(&lc.channel, commit_ms, id);
                    within &= run.note(lc.offset, std::slice::from_ref(id), sel);
                }
                if !within {
                    let error = format!(
                        "the selection holds more than {MAX_INDEXED_CHANGES} changes of {object}, \
                         more than a replay keeps in memory: narrow it (a later --since, an \
                         --until, record ids), or re-read the object from Salesforce with \
                         `sfsync backfill {object} --since …`"
                    );
                    if let Some(a) = self.jobs.active.take() {
                        tracing::error!(job = job_id, error = %error, "Replay failed.");
                        jobs::fail_job(&*self.store, &a, SyncJobStatus::Failed, &error).await?;
                    }
                    return Ok(0);
                }
            }
            run.next_offset = match entries.last() {
                Some(last) if n >= INDEX_STEP_ENTRIES => last.offset + 1,
                _ => end.saturating_add(1).max(run.next_offset),
            };
            if run.next_offset > end {
                let (changes, records) = run.finish_selecting();
                tracing::info!(job = job_id, object = %object, records, changes, "Replay: records selected.");
                // The progress bar counts re-applied changes.
                let total = changes;
                if let Some(a) = self.jobs.active.as_mut() {
                    a.job.rows_total = Some(total);
                }
                self.store
                    .patch_sync_job(
                        job_id,
                        &SyncJobPatch {
                            rows_total: Some(total),
                            ..Default::default()
                        },
                    )
                    .await?;
            }
            return Ok(n.max(1));
        }
        // Follow what streaming applied since the selection (or the last step): each record is
        // rebuilt through the head of the applied log.
        let head = self.applied_head().await?;
        if run.next_offset <= head {
            let entries = self
                .store
                .read_entity(&object, run.next_offset, head, INDEX_STEP_ENTRIES)
                .await?;
            for lc in &entries {
                let ids = match self.decode_replayed(&object, lc).await? {
                    Replayed::Records(rs) => rs.into_iter().map(|r| r.id).collect(),
                    Replayed::Gap(ids) | Replayed::Undecodable(ids) => ids,
                    Replayed::Overflow => Vec::new(),
                };
                run.note(lc.offset, &ids, false);
            }
            run.next_offset = match entries.last() {
                Some(last) if entries.len() >= INDEX_STEP_ENTRIES => last.offset + 1,
                _ => head + 1,
            };
            if run.next_offset <= head {
                return Ok(entries.len().max(1));
            }
        }
        let chunk = run.next_chunk();
        if chunk.is_empty() {
            self.finish_replay(run).await?;
            return Ok(0);
        }
        self.replay_chunk(run, &chunk).await
    }

    /// Decodes a raw-log entry of `object` for a replay.
    async fn decode_replayed(&mut self, object: &str, lc: &LoggedChange) -> Result<Replayed> {
        let raw = &lc.change;
        let first_id = || {
            raw.event_key
                .as_str()
                .rsplit('/')
                .next()
                .filter(|s| !s.is_empty())
                .map(|s| vec![s.to_string()])
                .unwrap_or_default()
        };
        if crate::outbound::is_outbound(&raw.schema_id) {
            let Some(mapping) = self.mappings.get(object) else {
                return Ok(Replayed::Records(Vec::new()));
            };
            return Ok(match crate::outbound::normalize(mapping, raw) {
                Ok(Normalized::Records(rs)) => Replayed::Records(rs),
                _ => Replayed::Undecodable(first_id()),
            });
        }
        if crate::poll::is_polled(&raw.schema_id) {
            let Some(mapping) = self.mappings.get(object) else {
                return Ok(Replayed::Records(Vec::new()));
            };
            return Ok(match crate::poll::normalize(mapping, raw) {
                Ok(Normalized::Records(rs)) => Replayed::Records(rs),
                _ => Replayed::Undecodable(first_id()),
            });
        }
        let Some(schema) = self.schema(&raw.schema_id).await? else {
            return Ok(Replayed::Undecodable(first_id()));
        };
        let change = match schema.decode(&raw.payload, raw.replay_id.clone()) {
            Ok(c) => c,
            Err(_) => return Ok(Replayed::Undecodable(first_id())),
        };
        let Some(mapping) = self.mappings.get(object) else {
            return Ok(Replayed::Records(Vec::new()));
        };
        Ok(match normalize::from_cdc(mapping, &lc.channel, &change) {
            Ok(Normalized::Records(rs)) => Replayed::Records(rs),
            Ok(Normalized::Repair(r)) => Replayed::Gap(r.record_ids),
            Ok(Normalized::Resync(_)) => Replayed::Overflow,
            Err(_) => Replayed::Undecodable(change.header.record_ids.clone()),
        })
    }

    /// Rebuilds `chunk` (records in id order) in one transaction with the job's new position:
    /// each record's row reset and its retained changes planned again in log order, or a
    /// re-read from Salesforce requested where the log cannot rebuild it.
    async fn replay_chunk(&mut self, run: &mut ReplayRun, chunk: &[String]) -> Result<usize> {
        let Some(a) = self.jobs.active.as_ref() else {
            return Ok(0);
        };
        let (job_id, object, run_id) = (a.job.id, a.job.object.clone(), a.run_id.clone());
        let in_chunk: HashSet<&str> = chunk.iter().map(String::as_str).collect();
        let offsets: Vec<u64> = chunk
            .iter()
            .filter_map(|id| run.index.get(id))
            .flat_map(|e| e.offsets.iter().copied())
            .collect();
        let entries = self.store.read_offsets(&offsets).await?;
        let mut progress = run.progress.clone();
        // Each entry's changes of the chunk's records, in log order.
        let mut groups: Vec<(u64, Vec<(String, RecordChange)>)> = Vec::new();
        let mut first_op: HashMap<String, Op> = HashMap::new();
        let mut newest: HashMap<String, RecordVersion> = HashMap::new();
        let mut salesforce: BTreeMap<String, &'static str> = BTreeMap::new();
        for lc in &entries {
            match self.decode_replayed(&object, lc).await? {
                Replayed::Records(rs) => {
                    let rs: Vec<(String, RecordChange)> = rs
                        .into_iter()
                        .filter(|r| in_chunk.contains(r.id.as_str()))
                        .map(|r| (object.clone(), r))
                        .collect();
                    for (_, r) in &rs {
                        first_op.entry(r.id.clone()).or_insert(r.op);
                        let v = newest.entry(r.id.clone()).or_default();
                        *v = (*v).max(r.version);
                    }
                    groups.push((lc.offset, rs));
                }
                Replayed::Gap(ids) => {
                    for id in ids.into_iter().filter(|i| in_chunk.contains(i.as_str())) {
                        salesforce.entry(id).or_insert(
                            "its retained changes include a gap event (the change itself is not \
                             in the raw log)",
                        );
                    }
                }
                Replayed::Overflow => {}
                Replayed::Undecodable(ids) => {
                    progress.undecodable += 1;
                    for id in ids.into_iter().filter(|i| in_chunk.contains(i.as_str())) {
                        salesforce
                            .entry(id)
                            .or_insert("a retained change of it does not decode");
                    }
                }
            }
        }
        let mut loaded = self.store.load_current(&object, chunk).await?;
        let latest = self.store.latest_history(&object, chunk).await?;
        let held: HashSet<String> = self
            .store
            .quarantine_list(&QuarantineFilter::open_of(&object, chunk))
            .await?
            .into_iter()
            .map(|q| q.entry.record_id)
            .collect();
        // Records with changes waiting in the quarantine keep their rows, from anywhere.
        salesforce.retain(|id, _| !held.contains(id));
        let whole_records =
            matches!(run.selection, ReplaySelection::Ids { .. }) && run.since_ms.is_none();
        let mut from_log: Vec<String> = Vec::new();
        for id in chunk {
            if held.contains(id) {
                progress.note_held(id);
                continue;
            }
            if salesforce.contains_key(id) {
                continue;
            }
            let Some(op) = first_op.get(id) else {
                salesforce.insert(id.clone(), "no change of it is retained in the raw log");
                continue;
            };
            if whole_records && *op != Op::Full {
                salesforce.insert(
                    id.clone(),
                    "its oldest retained change is not a create or undelete: the raw log does \
                     not hold the whole record",
                );
                continue;
            }
            if loaded
                .get(id)
                .is_some_and(|row| row.meta.version > newest[id])
            {
                salesforce.insert(
                    id.clone(),
                    "its row holds a change newer than its retained changes (read from \
                     Salesforce)",
                );
                continue;
            }
            from_log.push(id.clone());
        }
        let mapping = self.mappings[&object].clone();
        let mapping = &mapping;
        let mut rows: Rows = HashMap::new();
        let mut was_deleted: HashMap<String, bool> = HashMap::new();
        for id in &from_log {
            let row = loaded.remove(id);
            was_deleted.insert(id.clone(), row.as_ref().is_some_and(|r| r.deleted));
            let had_row = row.is_some();
            if let Some(mut b) = plan::replay_baseline(mapping, id, row, latest.get(id)) {
                if !had_row {
                    // Rebuilt from its history: fields it does not track are unknown until a
                    // full change (or a re-read) brings them.
                    b.partial = true;
                }
                rows.insert((object.clone(), id.clone()), b);
            }
        }
        let log_ids: HashSet<&str> = from_log.iter().map(String::as_str).collect();
        for (_, rs) in groups.iter_mut() {
            rs.retain(|(_, r)| log_ids.contains(r.id.as_str()));
        }
        groups.retain(|(_, rs)| !rs.is_empty());
        let replayed: usize = groups.iter().map(|(_, rs)| rs.len()).sum();

        let now = now_ms();
        let gating = self.gating();
        if gating {
            let slices: Vec<&[(String, RecordChange)]> =
                groups.iter().map(|(_, rs)| rs.as_slice()).collect();
            self.prepare_gate(&slices, &rows, now, true).await?;
        }
        let planner = Planner {
            mappings: &self.mappings,
            run_id: &run_id,
            own_client: &self.config.own_client,
            now_ms: now,
            deliver: self.config.deliver,
        };
        let mut batch = CuratedBatch::default();
        let mut totals = plan::PlanStats::default();
        for (offset, rs) in &groups {
            let s = match self.gate.as_mut().filter(|_| gating) {
                Some(g) => {
                    g.log_offset = Some(*offset);
                    planner.plan_replayed(&mut rows, rs, &mut batch, Some(g))
                }
                None => planner.plan_replayed(&mut rows, rs, &mut batch, None),
            };
            totals.applied += s.applied;
            totals.late += s.late;
            totals.stale += s.stale;
            totals.quarantined += s.quarantined;
            totals.warned += s.warned;
        }
        if gating {
            if let Some(g) = self.gate.as_mut() {
                g.finish_batch(&mut batch);
            }
            self.note_arrivals(&rows);
        }
        // After the changes: records the log left incomplete are re-read; a record without
        // history that is live now opens its first version (a replay never adds a version to
        // an existing history).
        let history = mapping.model.history.clone();
        let mut deleted = 0i64;
        for id in &from_log {
            let Some(row) = rows.get_mut(&(object.clone(), id.clone())) else {
                continue;
            };
            if row.deleted && !was_deleted.get(id).copied().unwrap_or(false) {
                deleted += 1;
            }
            if row.partial {
                let asked = batch.repairs.iter().any(|r| r.record_ids.contains(id));
                if !asked {
                    salesforce.insert(
                        id.clone(),
                        "its retained changes do not hold every field of it",
                    );
                }
                continue;
            }
            if let Some(h) = &history {
                if !latest.contains_key(id) && !row.deleted && row.history_version.is_none() {
                    row.history_version = Some(1);
                    batch.history.push(HistoryWrite::Open {
                        object: object.clone(),
                        id: id.clone(),
                        version: 1,
                        valid_from_ms: row.meta.version.commit_timestamp,
                        values: h
                            .columns
                            .iter()
                            .filter(|c| *c != "id")
                            .map(|c| {
                                (
                                    c.clone(),
                                    row.values
                                        .get(c)
                                        .cloned()
                                        .unwrap_or(sfsync_store::Value::Null),
                                )
                            })
                            .collect(),
                        meta: row.meta.clone(),
                    });
                }
            }
        }
        // Re-reads from Salesforce, authoritative, grouped by reason.
        let mut by_reason: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for (id, why) in &salesforce {
            by_reason.entry(why).or_default().push(id.clone());
            progress.note_salesforce(id);
        }
        for (why, ids) in by_reason {
            for part in ids.chunks(self.config.gap_reread_batch_records.max(1)) {
                batch.repairs.push(RepairRequest {
                    object: object.clone(),
                    record_ids: part.to_vec(),
                    reason: format!("{}{why}", replay::REPAIR_REASON_PREFIX),
                    event_key: format!("job/{job_id}"),
                    commit_timestamp_ms: now,
                });
            }
        }
        progress.log_records += from_log
            .iter()
            .filter(|id| !salesforce.contains_key(*id))
            .count() as u64;
        progress.log_changes += replayed as u64;
        progress.after = chunk.last().cloned();
        let counts = SyncCounts {
            read: replayed as i64,
            applied: totals.applied as i64,
            skipped: (totals.stale + totals.late) as i64,
            held: totals.quarantined as i64,
            deleted,
            failed: 0,
            api_calls: 0,
        };
        rows_into(rows, &mut batch);
        batch.job_progress = Some(SyncJobProgress {
            job_id,
            position: Some((Some(progress.to_locator()), 0)),
            counts,
            ..Default::default()
        });
        let has_repairs = !batch.repairs.is_empty();
        let quarantined = batch.quarantine.len() as u64;
        self.store
            .commit_curated(CURATED_CONSUMER, None, &batch)
            .await?;
        run.chunk_done(chunk);
        run.progress = progress;
        self.stats.applied.fetch_add(totals.applied, Relaxed);
        self.stats
            .quarantined
            .fetch_add(totals.quarantined, Relaxed);
        self.stats.quarantine_open.fetch_add(quarantined, Relaxed);
        self.stats.dq_warnings.fetch_add(totals.warned, Relaxed);
        if has_repairs {
            self.repairs_pending = true;
        }
        if let Some(a) = self.jobs.active.as_mut() {
            a.counts.add(&counts);
        }
        Ok(chunk.len())
    }

    /// Every selected record is rebuilt (or put up for a re-read): the replay succeeded.
    async fn finish_replay(&mut self, run: &ReplayRun) -> Result<()> {
        let Some(a) = self.jobs.active.take() else {
            return Ok(());
        };
        let report = ReplayReport::from_progress(
            run.selection.describe(a.job.since_ms, a.job.until_ms),
            &run.progress,
        );
        self.complete_replay(a, report).await
    }

    /// Marks a replay succeeded with its report, and its run.
    pub(super) async fn complete_replay(&mut self, a: Active, report: ReplayReport) -> Result<()> {
        let text = serde_json::to_string(&report).unwrap_or_default();
        self.store
            .patch_sync_job(
                a.job.id,
                &SyncJobPatch {
                    status: Some(SyncJobStatus::Succeeded),
                    report: Some(text),
                    ..Default::default()
                },
            )
            .await?;
        let counts = self
            .store
            .sync_job(a.job.id)
            .await?
            .map(|j| j.counts)
            .unwrap_or(a.counts);
        let secs = a.started.elapsed().as_secs_f64();
        let detail = serde_json::json!({
            "job_id": a.job.id,
            "kind": "replay",
            "object": a.job.object,
            "reason": a.job.reason,
            "since_ms": a.job.since_ms,
            "until_ms": a.job.until_ms,
            "counts": counts,
            "seconds": secs,
            "report": report,
        });
        self.store
            .finish_run(&a.run_id, "succeeded", &detail.to_string())
            .await?;
        self.stats.jobs_done.fetch_add(1, Relaxed);
        tracing::info!(
            job = a.job.id,
            object = %a.job.object,
            source = %report.source,
            raw_log_records = report.raw_log_records,
            raw_log_changes = report.raw_log_changes,
            salesforce_records = report.salesforce_records,
            held_records = report.held_records,
            secs,
            "Replay succeeded."
        );
        if report.held_records > 0 {
            tracing::warn!(job = a.job.id, object = %a.job.object, held = report.held_records, sample = ?report.sample_held, "Replay left records with changes held in the quarantine as they are; release or discard those changes, then replay the records.");
        }
        Ok(())
    }
}

/// Resets the rows a window re-read from Salesforce replaces: a row changed after the snapshot
/// was read (a streamed change newer than it) keeps its state and is re-read afresh instead.
/// Returns the ids to re-read.
pub(super) fn authoritative_snapshot_rows(
    mapping: &crate::model::ObjectMapping,
    object: &str,
    changes: &mut Vec<(String, RecordChange)>,
    loaded: &mut Rows,
    latest: &HashMap<String, sfsync_store::HistoryRow>,
) -> Vec<String> {
    let mut newer = Vec::new();
    changes.retain(|(_, c)| {
        let key = (object.to_string(), c.id.clone());
        match loaded.get(&key) {
            Some(row) if row.meta.version.commit_timestamp > c.version.commit_timestamp => {
                newer.push(c.id.clone());
                false
            }
            _ => true,
        }
    });
    for (_, c) in changes.iter() {
        let key = (object.to_string(), c.id.clone());
        let row = loaded.remove(&key);
        if let Some(mut b) = plan::replay_baseline(mapping, &c.id, row, latest.get(&c.id)) {
            b.partial = false;
            loaded.insert(key, b);
        }
    }
    newer
}
