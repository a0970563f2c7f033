//! The applier's side of sync jobs (see [`crate::jobs`]): takes open jobs, applies fetched
//! snapshot rows one batch per step (formula refreshes: formula columns of existing rows only),
//! and finishes each job with its run record.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use sfsync_store::{
    CuratedBatch, DeadLetter, SyncCounts, SyncJob, SyncJobFilter, SyncJobKind, SyncJobPatch,
    SyncJobProgress, SyncJobStatus,
};
use tokio::sync::mpsc::error::TryRecvError;

use super::{now_ms, rows_into, Applier, CURATED_CONSUMER};
use crate::error::{chain, PipelineError, Result};
use crate::jobs::{self, Active, Fetched};
use crate::normalize::{self, CsvColumns};
use crate::plan::Planner;

impl Applier {
    /// One step of sync-job work: takes an open job when none is running (at most once per
    /// poll interval), or applies the next fetched batch of the running one. Returns the rows
    /// applied (0 when there was nothing to do yet).
    pub(crate) async fn jobs_step(&mut self) -> Result<usize> {
        if self.jobs.active.is_none() {
            if !self.jobs.poll_due(self.config.jobs.poll) {
                return Ok(0);
            }
            self.jobs.last_poll = Some(Instant::now());
            self.store.schedule_resyncs("sfsync run").await?;
            self.maybe_schedule_reconcile().await?;
            self.maybe_schedule_formula_refresh().await?;
            self.maybe_schedule_maintenance().await?;
            let open = self.store.sync_jobs(&SyncJobFilter::open()).await?;
            let Some(job) = open
                .into_iter()
                .find(|j| j.kind.is_maintenance() || self.mappings.contains_key(&j.object))
            else {
                for j in self.store.sync_jobs(&SyncJobFilter::open()).await? {
                    // A job for an object this process does not sync can never run here.
                    self.store
                        .patch_sync_job(
                            j.id,
                            &SyncJobPatch {
                                status: Some(SyncJobStatus::Failed),
                                error: Some(format!(
                                    "object {} is not configured for sync",
                                    j.object
                                )),
                                ..Default::default()
                            },
                        )
                        .await?;
                }
                return Ok(0);
            };
            self.start_job(job).await?;
        }
        if self.jobs.poll_due(self.config.jobs.poll) {
            // An operator may have cancelled the running job.
            self.jobs.last_poll = Some(Instant::now());
            if let Some(id) = self.jobs.active.as_ref().map(|a| a.job.id) {
                let status = self.store.sync_job(id).await?.map(|j| j.status);
                if status != Some(SyncJobStatus::Running) {
                    self.flush().await?;
                    jobs::end_slice(
                        &*self.store,
                        id,
                        sfsync_store::SliceStatus::Cancelled,
                        Some("the job was cancelled"),
                    )
                    .await;
                    if let Some(a) = self.jobs.active.take() {
                        let detail =
                            jobs::run_detail(&a.job, &a.counts, a.started.elapsed().as_secs_f64());
                        self.store
                            .finish_run(&a.run_id, "cancelled", &detail)
                            .await?;
                        tracing::warn!(job = id, "Sync job cancelled.");
                    }
                    return Ok(0);
                }
            }
        }
        let Some(active) = self.jobs.active.as_mut() else {
            return Ok(0);
        };
        if active.replay.is_some() {
            return self.replay_step().await;
        }
        let msg = match active.rx.try_recv() {
            Ok(m) => m,
            Err(TryRecvError::Empty) => return Ok(0),
            Err(TryRecvError::Disconnected) => Fetched::Failed {
                error: "the fetch task ended unexpectedly".into(),
                permanent: false,
            },
        };
        match msg {
            Fetched::Total(n) => {
                active.job.rows_total = Some(n);
                let id = active.job.id;
                self.store
                    .patch_sync_job(
                        id,
                        &SyncJobPatch {
                            rows_total: Some(n),
                            ..Default::default()
                        },
                    )
                    .await?;
                Ok(0)
            }
            Fetched::Rows {
                header,
                rows,
                skip,
                position,
                api_calls,
            } => {
                if active.job.kind == SyncJobKind::FormulaRefresh {
                    self.apply_formula_rows(header, rows, skip, position, api_calls)
                        .await
                } else {
                    self.apply_snapshot_rows(header, rows, skip, position, api_calls)
                        .await
                }
            }
            Fetched::Reconciled(outcome) => {
                self.finish_reconcile(*outcome).await?;
                Ok(0)
            }
            Fetched::Maintained { report, counts } => {
                self.finish_maintenance(report, counts).await?;
                Ok(0)
            }
            Fetched::Done { api_calls } => {
                // The job (or its slice) succeeds only with all of its rows in.
                self.flush().await?;
                self.end_of_results(api_calls).await?;
                Ok(0)
            }
            Fetched::Failed { error, permanent } => {
                let job_id = active.job.id;
                self.flush().await?;
                self.stats.errors.fetch_add(1, Relaxed);
                if permanent {
                    tracing::error!(job = job_id, error = %error, "Sync job failed.");
                    if let Some(a) = self.jobs.active.take() {
                        jobs::fail_job(&*self.store, &a, SyncJobStatus::Failed, &error).await?;
                    }
                    self.jobs.failures = 0;
                } else {
                    tracing::warn!(job = job_id, error = %error, "Sync job interrupted; it resumes from its last committed position.");
                    self.jobs.active = None;
                    self.jobs.backoff();
                }
                Ok(0)
            }
        }
    }

    /// Takes `job`: records its run and starts its work.
    async fn start_job(&mut self, mut job: SyncJob) -> Result<()> {
        if job.kind == SyncJobKind::Reconcile {
            return self.run_reconcile(job).await;
        }
        if job.kind == SyncJobKind::Replay {
            return self.start_replay(job).await;
        }
        if job.kind.is_maintenance() {
            return self.start_maintenance(job).await;
        }
        let Some(bulk) = self.bulk.clone() else {
            return Err(PipelineError::config(
                &job.object,
                "sync jobs need Bulk API access, which this process was started without",
            ));
        };
        // Backfills, re-syncs and formula refreshes take the lowest lane of the API budget.
        let bulk = bulk.lane(sfsync_salesforce::Lane::Backfill);
        if matches!(job.kind, SyncJobKind::Backfill | SyncJobKind::Resync) {
            self.plan_job_slices(&mut job, &bulk).await?;
        }
        let mapping = &self.mappings[&job.object];
        let soql = if job.kind == SyncJobKind::FormulaRefresh {
            let wanted = mapping.formula_fields();
            let requested = jobs::FormulaParams::of(&job).fields;
            let same = wanted.len() == requested.len()
                && wanted
                    .iter()
                    .all(|f| requested.iter().any(|r| r.eq_ignore_ascii_case(f)));
            if !same {
                // The config changed since it was requested: the next scheduled refresh is
                // planned for the formula fields configured now.
                let error = format!(
                    "the formula fields of {} are now {wanted:?}, not the {requested:?} this \
                     refresh was requested for; the next scheduled refresh reads them",
                    job.object
                );
                tracing::warn!(job = job.id, object = %job.object, %error, "Formula refresh cancelled.");
                self.store
                    .patch_sync_job(
                        job.id,
                        &SyncJobPatch {
                            status: Some(SyncJobStatus::Cancelled),
                            error: Some(error),
                            ..Default::default()
                        },
                    )
                    .await?;
                return Ok(());
            }
            jobs::formula_soql(mapping, job.since_ms)
        } else {
            let (since, until) = slice_window(&job);
            jobs::snapshot_soql(mapping, since, until)
        };
        let run_id = self.begin(&mut job).await?;
        if let Some(seq) = sfsync_store::current_slice(&job.slices).map(|s| s.seq) {
            // Running already when a crash interrupted it: it resumes where it stands.
            let slices = sfsync_store::slice_moved(
                &job.slices,
                seq,
                sfsync_store::SliceStatus::Running,
                &job.counts,
                None,
                now_ms(),
            )
            .map_err(|reason| PipelineError::config(&job.object, &reason))?;
            self.store
                .set_sync_job_slices(job.id, &slices, false)
                .await?;
            job.slices = slices;
        }
        tracing::info!(job = job.id, kind = job.kind.as_str(), object = %job.object, reason = %job.reason, slice = ?sfsync_store::current_slice(&job.slices).map(|s| s.seq), slices = job.slices.len(), %soql, "Sync job started.");
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

    /// The running job's columns for result `header` (built by `build` once per header): `None`
    /// when the header does not fit the object, in which case the job has failed with the reason.
    async fn job_columns(
        &mut self,
        header: &std::sync::Arc<Vec<String>>,
        build: fn(&crate::model::ObjectMapping, &[String]) -> Result<CsvColumns>,
    ) -> Result<Option<CsvColumns>> {
        let Some(active) = self.jobs.active.as_mut() else {
            return Ok(None);
        };
        if let Some((h, c)) = &active.columns {
            if h == header {
                return Ok(Some(c.clone()));
            }
        }
        match build(&self.mappings[&active.job.object], header) {
            Ok(c) => {
                active.columns = Some((header.clone(), c.clone()));
                Ok(Some(c))
            }
            Err(e) => {
                let error = chain(&e);
                tracing::error!(job = active.job.id, kind = active.job.kind.as_str(), error = %error, "Sync job failed: its results do not fit the object.");
                if let Some(a) = self.jobs.active.take() {
                    jobs::fail_job(&*self.store, &a, SyncJobStatus::Failed, &error).await?;
                }
                Ok(None)
            }
        }
    }

    /// Applies one fetched batch of snapshot rows with the job's new position, in one
    /// transaction.
    async fn apply_snapshot_rows(
        &mut self,
        header: std::sync::Arc<Vec<String>>,
        rows: sfsync_salesforce::bulk::csv::CsvRecordBatch,
        skip: usize,
        position: (Option<String>, i64),
        api_calls: i64,
    ) -> Result<usize> {
        let Some(active) = self.jobs.active.as_mut() else {
            return Ok(0);
        };
        let object = active.job.object.clone();
        let job_id = active.job.id;
        let run_id = active.run_id.clone();
        let kind = active.job.kind;
        let authoritative = kind == SyncJobKind::Replay;
        let Some(cols) = self.job_columns(&header, CsvColumns::new).await? else {
            return Ok(0);
        };
        let mapping = &self.mappings[&object];
        let mut counts = SyncCounts {
            api_calls,
            ..Default::default()
        };
        let mut batch = CuratedBatch::default();
        let mut changes = Vec::with_capacity(rows.len().saturating_sub(skip));
        for row in rows.iter().skip(skip) {
            counts.read += 1;
            match normalize::from_csv(mapping, &cols, &row) {
                Ok(c) => changes.push((object.clone(), c)),
                Err(e) => {
                    // Kept whole with its cause; the record itself is re-read by a repair.
                    counts.failed += 1;
                    let id = cols.id(&row).to_string();
                    batch.dead_letters.push(DeadLetter {
                        channel: format!("bulk:{}", kind.as_str()),
                        replay_id: None,
                        schema_id: String::new(),
                        stage: "snapshot".into(),
                        error: chain(&e),
                        payload: row.iter().collect::<Vec<_>>().join("\u{1f}").into_bytes(),
                        object: Some(object.clone()),
                    });
                    if !id.is_empty() {
                        batch.repairs.push(sfsync_store::RepairRequest {
                            object: object.clone(),
                            record_ids: vec![id],
                            reason: "unconvertible_snapshot_row".into(),
                            event_key: format!("job/{job_id}"),
                            commit_timestamp_ms: now_ms(),
                        });
                    }
                }
            }
        }
        // The newest state of a record the in-flight batch writes is in that batch.
        let mut loaded = HashMap::new();
        let mut ids: Vec<String> = Vec::with_capacity(changes.len());
        for (_, c) in &changes {
            let key = (object.clone(), c.id.clone());
            match self.in_flight.as_ref().and_then(|f| f.row(&key)) {
                Some(row) => {
                    loaded.insert(key, row.clone());
                }
                None => ids.push(c.id.clone()),
            }
        }
        ids.sort();
        ids.dedup();
        self.load_rows(&object, &ids, &mut loaded).await?;
        // What a write changes: the sync metadata, or the field versions (a late snapshot that
        // only fills fields no newer change set, such as formula columns after a create).
        let before: HashMap<(String, String), (sfsync_store::SyncMeta, Option<String>)> = loaded
            .iter()
            .map(|(k, r)| (k.clone(), (r.meta.clone(), r.field_versions.clone())))
            .collect();
        if authoritative {
            // A replay's window re-read from Salesforce replaces the rows whatever their
            // versions say; a row a streamed change moved past the snapshot is re-read afresh.
            let latest = self.store.latest_history(&object, &ids).await?;
            let newer = super::replay_step::authoritative_snapshot_rows(
                mapping,
                &object,
                &mut changes,
                &mut loaded,
                &latest,
            );
            for part in newer.chunks(self.config.gap_reread_batch_records.max(1)) {
                batch.repairs.push(sfsync_store::RepairRequest {
                    object: object.clone(),
                    record_ids: part.to_vec(),
                    reason: format!(
                        "{}changed after the window was read from Salesforce",
                        crate::replay::REPAIR_REASON_PREFIX
                    ),
                    event_key: format!("job/{job_id}"),
                    commit_timestamp_ms: now_ms(),
                });
            }
        }
        let now = now_ms();
        let gating = self.gating();
        if gating {
            self.prepare_gate(&[&changes], &loaded, now, true).await?;
        }
        let planner = Planner {
            mappings: &self.mappings,
            run_id: &run_id,
            own_client: &self.config.own_client,
            now_ms: now,
            deliver: self.config.deliver,
        };
        let totals = match self.gate.as_mut().filter(|_| gating) {
            Some(g) => {
                g.log_offset = None;
                let s = planner.plan_gated(&mut loaded, &changes, &mut batch, Some(g));
                g.finish_batch(&mut batch);
                s
            }
            None => planner.plan(&mut loaded, &changes, &mut batch),
        };
        if gating {
            self.note_arrivals(&loaded);
        }
        counts.held = totals.quarantined as i64;
        counts.skipped = (totals.stale + totals.late) as i64;
        counts.applied = totals.applied as i64;
        // Rows the snapshot did not change are not rewritten.
        loaded.retain(|k, r| {
            before
                .get(k)
                .is_none_or(|(meta, fv)| *meta != r.meta || *fv != r.field_versions)
        });
        counts.deleted = loaded.values().filter(|r| r.deleted).count() as i64;
        let applied = loaded.len();
        rows_into(loaded, &mut batch);
        batch.job_progress = Some(SyncJobProgress {
            job_id,
            position: Some(position),
            counts,
            watermark_ms: None,
            reread_from_ms: None,
        });
        let has_repairs = !batch.repairs.is_empty();
        // Commits beside the conversion and planning of the next batch; batches commit in
        // order, and a failed commit sends the job back to its last committed position.
        self.flush().await?;
        self.in_flight = Some(super::InFlight::start(
            self.store.clone(),
            self.stats.clone(),
            None,
            std::sync::Arc::new(batch),
            None,
            None,
            None,
        ));
        if has_repairs {
            // Repairs read their requests back from the store.
            self.flush().await?;
        }
        self.stats.applied.fetch_add(totals.applied, Relaxed);
        self.stats
            .quarantined
            .fetch_add(totals.quarantined, Relaxed);
        self.stats.dq_warnings.fetch_add(totals.warned, Relaxed);
        self.stats
            .snapshot_rows
            .fetch_add(counts.read as u64, Relaxed);
        if has_repairs {
            self.repairs_pending = true;
        }
        if let Some(a) = self.jobs.active.as_mut() {
            a.counts.add(&counts);
        }
        self.jobs.failures = 0;
        Ok(applied.max(1))
    }

    /// Applies one fetched batch of a formula refresh, in one transaction with the job's new
    /// position, watermark and re-read point: the formula columns of existing rows whose values
    /// changed, in place. A row keeps its version and SCD2 history (no Salesforce change is
    /// applied); `_sf_applied_at` and `_sf_run_id` name the refresh, and the audit trail gets a
    /// `FORMULA_REFRESH` entry naming the fields that changed. Rows whose formula values are
    /// unchanged are not rewritten; a row older than the read that last set the row's formula
    /// columns is skipped (formula columns carry the version of that read); a
    /// record not in the warehouse is not created (the stream or a repair brings it; if recent,
    /// the next refresh reads it again — see [`jobs::FORMULA_MISSING_HORIZON_MS`]).
    async fn apply_formula_rows(
        &mut self,
        header: std::sync::Arc<Vec<String>>,
        rows: sfsync_salesforce::bulk::csv::CsvRecordBatch,
        skip: usize,
        position: (Option<String>, i64),
        api_calls: i64,
    ) -> Result<usize> {
        self.flush().await?;
        let Some(active) = self.jobs.active.as_mut() else {
            return Ok(0);
        };
        let object = active.job.object.clone();
        let job_id = active.job.id;
        let run_id = active.run_id.clone();
        let Some(cols) = self.job_columns(&header, CsvColumns::formulas).await? else {
            return Ok(0);
        };
        let mapping = &self.mappings[&object];
        let mut counts = SyncCounts {
            api_calls,
            ..Default::default()
        };
        let mut batch = CuratedBatch::default();
        let mut read = Vec::with_capacity(rows.len().saturating_sub(skip));
        for row in rows.iter().skip(skip) {
            counts.read += 1;
            match normalize::from_csv(mapping, &cols, &row) {
                Ok(c) => read.push(c),
                Err(e) => {
                    // Kept with its cause; the record's formulas come with its next change.
                    counts.failed += 1;
                    batch.dead_letters.push(DeadLetter {
                        channel: "bulk:formula_refresh".into(),
                        replay_id: None,
                        schema_id: String::new(),
                        stage: "formula_refresh".into(),
                        error: chain(&e),
                        payload: row.iter().collect::<Vec<_>>().join("\u{1f}").into_bytes(),
                        object: Some(object.clone()),
                    });
                }
            }
        }
        let mut ids: Vec<String> = read.iter().map(|c| c.id.clone()).collect();
        ids.sort();
        ids.dedup();
        let mut loaded = HashMap::new();
        self.load_rows(&object, &ids, &mut loaded).await?;
        let now = now_ms();
        let mut watermark: Option<i64> = None;
        let mut reread_from: Option<i64> = None;
        let mut changed: super::Rows = HashMap::new();
        for c in read {
            let modstamp = c.version.commit_timestamp;
            watermark = Some(watermark.map_or(modstamp, |w| w.max(modstamp)));
            let key = (object.clone(), c.id.clone());
            let Some(row) = changed.get_mut(&key).or_else(|| loaded.get_mut(&key)) else {
                counts.skipped += 1;
                if modstamp >= now - jobs::FORMULA_MISSING_HORIZON_MS {
                    reread_from = Some(reread_from.map_or(modstamp, |r| r.min(modstamp)));
                }
                continue;
            };
            if crate::plan::formula_version(row).is_some_and(|f| f > c.version) {
                // An even newer read (a snapshot, or a refresh resumed from a Bulk job that
                // ran earlier) already set the formula columns.
                counts.skipped += 1;
                continue;
            }
            let mut fields = Vec::new();
            for (col, v) in &c.values {
                let def = &mapping.model.columns[*col];
                let before = row.values.get(&def.name);
                let same = match v {
                    sfsync_store::Value::Null => before.is_none(),
                    v => before == Some(v),
                };
                if !same {
                    fields.push(def.field.clone());
                    if v.is_null() {
                        row.values.remove(&def.name);
                    } else {
                        row.values.insert(def.name.clone(), v.clone());
                    }
                }
            }
            if fields.is_empty() {
                counts.skipped += 1;
                continue;
            }
            counts.applied += 1;
            crate::plan::set_formula_version(row, c.version);
            row.meta.run_id = run_id.clone();
            row.meta.applied_at_ms = now;
            batch.audit.push(sfsync_store::AuditEntry {
                object: object.clone(),
                record_id: c.id.clone(),
                change_type: "FORMULA_REFRESH".into(),
                event_key: format!("formula/{job_id}/{}/{modstamp}", c.id),
                commit_timestamp_ms: modstamp,
                commit_user: String::new(),
                change_origin: String::new(),
                source: sfsync_store::ChangeSource::Snapshot,
                fields,
                outcome: "applied".into(),
                replay_id: None,
                run_id: run_id.clone(),
                applied_at_ms: now,
            });
            // (A record already moved by an earlier row of the batch is no longer in `loaded`.)
            if let Some(r) = loaded.remove(&key) {
                changed.insert(key, r);
            }
        }
        let refreshed = changed.len();
        rows_into(changed, &mut batch);
        batch.job_progress = Some(SyncJobProgress {
            job_id,
            position: Some(position),
            counts,
            watermark_ms: watermark,
            reread_from_ms: reread_from,
        });
        self.store
            .commit_curated(CURATED_CONSUMER, None, &batch)
            .await?;
        self.stats
            .formula_rows_refreshed
            .fetch_add(counts.applied as u64, Relaxed);
        self.stats
            .snapshot_rows
            .fetch_add(counts.read as u64, Relaxed);
        if let Some(a) = self.jobs.active.as_mut() {
            a.counts.add(&counts);
        }
        self.jobs.failures = 0;
        Ok(refreshed.max(1))
    }

    /// Requests a formula refresh of each object configured with formula fields when one is
    /// due (one interval after the last request) and none is open.
    async fn maybe_schedule_formula_refresh(&mut self) -> Result<()> {
        let Some(every) = self.config.jobs.formula_refresh_every else {
            return Ok(());
        };
        if self
            .jobs
            .last_formula_refresh
            .is_some_and(|t| t.elapsed() < every)
        {
            return Ok(());
        }
        self.jobs.last_formula_refresh = Some(Instant::now());
        let mut objects: Vec<&String> = self
            .mappings
            .iter()
            .filter(|(_, m)| !m.formula_columns.is_empty())
            .map(|(o, _)| o)
            .collect();
        objects.sort();
        for object in objects {
            let open = self
                .store
                .sync_jobs(&SyncJobFilter {
                    object: Some(object.clone()),
                    kind: Some(SyncJobKind::FormulaRefresh),
                    ..SyncJobFilter::open()
                })
                .await?;
            if !open.is_empty() {
                continue;
            }
            let job = jobs::next_formula_refresh(&*self.store, &self.mappings[object], "schedule")
                .await?;
            let id = self.store.add_sync_job(&job).await?;
            tracing::debug!(job = id, object = %object, since_ms = ?job.since_ms, "Formula refresh requested.");
        }
        Ok(())
    }

    /// Records the job's run and starts it: the status, the run id.
    pub(super) async fn begin(&mut self, job: &mut SyncJob) -> Result<String> {
        let run_id = match &job.run_id {
            Some(r) => r.clone(),
            None => {
                let r = jobs::job_run_id(job);
                self.store
                    .start_run(
                        &r,
                        job.kind.as_str(),
                        &jobs::run_detail(job, &SyncCounts::default(), 0.0),
                    )
                    .await?;
                job.run_id = Some(r.clone());
                r
            }
        };
        self.store
            .patch_sync_job(
                job.id,
                &SyncJobPatch {
                    status: Some(SyncJobStatus::Running),
                    run_id: Some(run_id.clone()),
                    ..Default::default()
                },
            )
            .await?;
        Ok(run_id)
    }

    /// Starts a reconciliation: its comparison runs in a task of its own (reading Salesforce and
    /// the warehouse's committed rows) while streaming goes on; the repairs it asks for are
    /// written when it reports.
    async fn run_reconcile(&mut self, mut job: SyncJob) -> Result<()> {
        let Some(bulk) = self.bulk.clone() else {
            return Ok(());
        };
        let bulk = bulk.lane(sfsync_salesforce::Lane::Reconcile);
        let run_id = self.begin(&mut job).await?;
        tracing::info!(job = job.id, object = %job.object, reason = %job.reason, "Reconciliation started.");
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let store = self.store.clone();
        let j = job.clone();
        let pages = self.config.jobs.page_records.max(500_000);
        let task = tokio::spawn(async move {
            let msg = match crate::reconcile::reconcile(&bulk, store, &j, pages).await {
                Ok(o) => Fetched::Reconciled(Box::new(o)),
                Err((error, permanent)) => Fetched::Failed { error, permanent },
            };
            let _ = tx.send(msg).await;
        });
        self.jobs.active = Some(Active::new(job, run_id, rx, Some(task)));
        Ok(())
    }

    /// Writes a reconciliation's repairs (re-reads of exactly the differing records) with its
    /// counts in one transaction, then its report.
    async fn finish_reconcile(&mut self, mut o: crate::reconcile::ReconcileOutcome) -> Result<()> {
        let Some(a) = self.jobs.active.take() else {
            return Ok(());
        };
        let object = a.job.object.clone();
        let mut batch = CuratedBatch::default();
        let chunk = self.config.gap_reread_batch_records.max(1);
        let now = now_ms();
        for (reason, ids) in [
            ("reconcile: missing", &o.missing),
            ("reconcile: extra", &o.extra),
            ("reconcile: stale", &o.stale),
        ] {
            for part in ids.chunks(chunk) {
                batch.repairs.push(sfsync_store::RepairRequest {
                    object: object.clone(),
                    record_ids: part.to_vec(),
                    reason: reason.into(),
                    event_key: format!("job/{}", a.job.id),
                    commit_timestamp_ms: now,
                });
            }
        }
        o.report.repairs_requested = (o.missing.len() + o.extra.len() + o.stale.len()) as u64;
        let counts = SyncCounts {
            read: o.report.salesforce_live as i64,
            api_calls: o.report.api_calls,
            ..Default::default()
        };
        batch.job_progress = Some(SyncJobProgress {
            job_id: a.job.id,
            position: None,
            counts,
            watermark_ms: None,
            reread_from_ms: None,
        });
        self.flush().await?;
        self.store
            .commit_curated(CURATED_CONSUMER, None, &batch)
            .await?;
        if !batch.repairs.is_empty() {
            self.repairs_pending = true;
        }
        let report = serde_json::to_string(&o.report).unwrap_or_default();
        self.store
            .patch_sync_job(
                a.job.id,
                &SyncJobPatch {
                    status: Some(SyncJobStatus::Succeeded),
                    report: Some(report.clone()),
                    ..Default::default()
                },
            )
            .await?;
        let r = &o.report;
        self.stats.drift_found.fetch_add(r.drift(), Relaxed);
        self.stats.jobs_done.fetch_add(1, Relaxed);
        let detail = serde_json::json!({
            "job_id": a.job.id,
            "kind": "reconcile",
            "object": object,
            "reason": a.job.reason,
            "report": r,
        });
        self.store
            .finish_run(&a.run_id, "succeeded", &detail.to_string())
            .await?;
        let level_warn = r.drift() > 0;
        if level_warn {
            tracing::warn!(job = a.job.id, object = %object, missing = r.missing, extra = r.extra, stale = r.stale, sample_missing = ?r.sample_missing, sample_extra = ?r.sample_extra, sample_stale = ?r.sample_stale, "Reconciliation found drift; the differing records are re-read.");
        } else {
            tracing::info!(job = a.job.id, object = %object, records = r.salesforce_live, secs = r.seconds, api_calls = r.api_calls, "Reconciliation: in sync.");
        }
        Ok(())
    }

    /// Starts an archive or retention job in a task of its own (see [`crate::maintenance`]);
    /// streaming goes on meanwhile.
    async fn start_maintenance(&mut self, mut job: SyncJob) -> Result<()> {
        let run_id = self.begin(&mut job).await?;
        tracing::info!(job = job.id, kind = job.kind.as_str(), reason = %job.reason, "Maintenance job started.");
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let store = self.store.clone();
        let cfg = self.config.maintenance.clone();
        let kind = job.kind;
        let task = tokio::spawn(async move {
            let now = now_ms();
            let out = match kind {
                SyncJobKind::Archive => crate::maintenance::run_archive(&*store, &cfg, now, |_| {})
                    .await
                    .map(|r| {
                        let counts = SyncCounts {
                            read: r.rows as i64,
                            deleted: r.pruned.entries as i64,
                            ..Default::default()
                        };
                        (serde_json::to_string(&r).unwrap_or_default(), counts)
                    }),
                _ => crate::maintenance::run_retention(&*store, &cfg, now, false)
                    .await
                    .map(|r| {
                        let counts = SyncCounts {
                            read: r.partitions.iter().map(|p| p.rows as i64).sum(),
                            deleted: (r.audit.entries + r.raw_log.entries) as i64,
                            ..Default::default()
                        };
                        (serde_json::to_string(&r).unwrap_or_default(), counts)
                    }),
            };
            let msg = match out {
                Ok((report, counts)) => Fetched::Maintained { report, counts },
                Err(e) => Fetched::Failed {
                    permanent: matches!(
                        e.class(),
                        sfsync_core::ErrorClass::User | sfsync_core::ErrorClass::Internal
                    ),
                    error: chain(&e),
                },
            };
            let _ = tx.send(msg).await;
        });
        self.jobs.active = Some(Active::new(job, run_id, rx, Some(task)));
        Ok(())
    }

    /// Records an archive or retention job's report and counts; the job succeeds.
    async fn finish_maintenance(&mut self, report: String, counts: SyncCounts) -> Result<()> {
        let Some(mut a) = self.jobs.active.take() else {
            return Ok(());
        };
        self.store
            .patch_sync_job(
                a.job.id,
                &SyncJobPatch {
                    status: Some(SyncJobStatus::Succeeded),
                    report: Some(report.clone()),
                    counts,
                    ..Default::default()
                },
            )
            .await?;
        a.counts = counts;
        self.stats.jobs_done.fetch_add(1, Relaxed);
        let detail = serde_json::json!({
            "job_id": a.job.id,
            "kind": a.job.kind.as_str(),
            "object": a.job.object,
            "reason": a.job.reason,
            "counts": counts,
            "seconds": a.started.elapsed().as_secs_f64(),
            "report": serde_json::from_str::<serde_json::Value>(&report).unwrap_or_default(),
        });
        self.store
            .finish_run(&a.run_id, "succeeded", &detail.to_string())
            .await?;
        tracing::info!(job = a.job.id, kind = a.job.kind.as_str(), %report, "Maintenance job done.");
        Ok(())
    }

    /// Requests an archive job (when an archive is configured) and a retention job when each
    /// is due; the first ones one interval after the start. One open job of a kind at most.
    async fn maybe_schedule_maintenance(&mut self) -> Result<()> {
        let cfg = self.config.maintenance.clone();
        let plan = [
            (
                SyncJobKind::Archive,
                cfg.archive.is_some().then_some(cfg.archive_every).flatten(),
            ),
            (SyncJobKind::Retention, cfg.retention_every),
        ];
        for (kind, every) in plan {
            let Some(every) = every else {
                continue;
            };
            let last = match kind {
                SyncJobKind::Archive => &mut self.jobs.last_archive,
                _ => &mut self.jobs.last_retention,
            };
            match last {
                None => {
                    *last = Some(Instant::now());
                    continue;
                }
                Some(t) if t.elapsed() < every => continue,
                Some(t) => *t = Instant::now(),
            }
            request_maintenance(&*self.store, kind, "scheduled", "schedule").await?;
        }
        Ok(())
    }

    /// With a reconciliation schedule, requests one per synced object when it is due.
    async fn maybe_schedule_reconcile(&mut self) -> Result<()> {
        let Some(every) = self.config.jobs.reconcile_every else {
            return Ok(());
        };
        let due = self
            .jobs
            .last_reconcile
            .is_none_or(|t| t.elapsed() >= every);
        if !due {
            return Ok(());
        }
        self.jobs.last_reconcile = Some(Instant::now());
        let mut objects: Vec<String> = self.mappings.keys().cloned().collect();
        objects.sort();
        for object in objects {
            let open = self
                .store
                .sync_jobs(&SyncJobFilter {
                    object: Some(object.clone()),
                    kind: Some(SyncJobKind::Reconcile),
                    ..SyncJobFilter::open()
                })
                .await?;
            if open.is_empty() {
                self.store
                    .add_sync_job(&sfsync_store::NewSyncJob {
                        kind: SyncJobKind::Reconcile,
                        object,
                        reason: "scheduled".into(),
                        since_ms: None,
                        until_ms: None,
                        params: "{}".into(),
                        requested_by: "schedule".into(),
                        resync_id: None,
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// Plans the slices of a backfill or re-sync that has none and has not begun reading
    /// (see [`sfsync_store::plan_slices`]); a window that fits one slice stays in one piece.
    /// A full load's lower end is the oldest record's SystemModstamp (one query); when that
    /// cannot be read the job runs in one piece.
    async fn plan_job_slices(
        &mut self,
        job: &mut SyncJob,
        bulk: &sfsync_salesforce::bulk::Bulk,
    ) -> Result<()> {
        let Some(span) = self.config.jobs.slice_span else {
            return Ok(());
        };
        if !job.slices.is_empty() || job.bulk_job_id.is_some() || job.locator.is_some() {
            return Ok(());
        }
        let mut calls = 0;
        let earliest = if job.since_ms.is_none() {
            calls += 1;
            // A full backfill reads live records; a re-sync (always windowed) deleted ones too.
            let include_deleted = job.kind != SyncJobKind::Backfill;
            match jobs::earliest_modstamp(bulk, &job.object, include_deleted).await {
                Ok(e) => e,
                Err(error) => {
                    tracing::warn!(job = job.id, object = %job.object, %error, "Could not read the oldest SystemModstamp; the job runs in one piece.");
                    None
                }
            }
        } else {
            None
        };
        let slices = sfsync_store::plan_slices(
            job.since_ms,
            job.until_ms,
            earliest,
            now_ms(),
            span.as_millis() as i64,
            jobs::MAX_SLICES,
        );
        if calls > 0 {
            self.add_api_calls(job.id, calls).await?;
            job.counts.api_calls += calls;
        }
        if slices.is_empty() {
            return Ok(());
        }
        self.store
            .set_sync_job_slices(job.id, &slices, false)
            .await?;
        tracing::info!(job = job.id, object = %job.object, slices = slices.len(), "Sync job planned in slices.");
        job.slices = slices;
        Ok(())
    }

    /// Adds API calls made outside a batch to job `id`'s counts.
    async fn add_api_calls(&self, id: i64, api_calls: i64) -> Result<()> {
        let patch = SyncJobPatch {
            counts: SyncCounts {
                api_calls,
                ..Default::default()
            },
            ..Default::default()
        };
        Ok(self.store.patch_sync_job(id, &patch).await?)
    }

    /// Every page of the running query is applied: the slice in progress succeeded and the next
    /// one starts its own query, or (no slices, or the last) the job succeeded.
    async fn end_of_results(&mut self, api_calls: i64) -> Result<()> {
        let Some(a) = self.jobs.active.as_ref() else {
            return Ok(());
        };
        let Some(seq) = sfsync_store::current_slice(&a.job.slices).map(|s| s.seq) else {
            return self.finish_job(api_calls).await;
        };
        let id = a.job.id;
        // This step's calls count in the slice.
        self.add_api_calls(id, api_calls).await?;
        let stored = self
            .store
            .sync_job(id)
            .await?
            .ok_or_else(|| PipelineError::config(&a.job.object, "the running job is gone"))?;
        let now = now_ms();
        let moved = sfsync_store::slice_moved(
            &stored.slices,
            seq,
            sfsync_store::SliceStatus::Succeeded,
            &stored.counts,
            None,
            now,
        )
        .and_then(
            |slices| match sfsync_store::current_slice(&slices).map(|s| s.seq) {
                Some(next) => sfsync_store::slice_moved(
                    &slices,
                    next,
                    sfsync_store::SliceStatus::Running,
                    &stored.counts,
                    None,
                    now,
                ),
                None => Ok(slices),
            },
        )
        .map_err(|reason| PipelineError::config(&stored.object, &reason))?;
        // The slice's end, the next one's start and the cleared query position: one commit.
        self.store.set_sync_job_slices(id, &moved, true).await?;
        let Some(next) = sfsync_store::current_slice(&moved).cloned() else {
            if let Some(a) = self.jobs.active.as_mut() {
                a.counts.api_calls += api_calls;
                a.job.slices = moved;
            }
            return self.finish_job(0).await;
        };
        tracing::info!(job = id, object = %stored.object, slice = seq, next = next.seq, slices = moved.len(), "Slice done; the next one starts.");
        let Some(bulk) = self.bulk.clone() else {
            return Ok(());
        };
        let bulk = bulk.lane(sfsync_salesforce::Lane::Backfill);
        let Some(a) = self.jobs.active.as_mut() else {
            return Ok(());
        };
        a.counts.api_calls += api_calls;
        a.job.slices = moved;
        a.job.bulk_job_id = None;
        a.job.locator = None;
        a.job.page_rows_done = 0;
        a.job.rows_total = None;
        let (since, until) = slice_window(&a.job);
        let soql = jobs::snapshot_soql(&self.mappings[&stored.object], since, until);
        let (rx, task) = jobs::spawn_fetch(
            bulk,
            self.store.clone(),
            a.job.clone(),
            soql,
            self.config.jobs.page_records,
            self.fetch_wake.clone(),
        );
        if let Some(old) = a.task.replace(task) {
            old.abort();
        }
        a.rx = rx;
        Ok(())
    }

    /// Every page is applied: the job succeeded.
    async fn finish_job(&mut self, api_calls: i64) -> Result<()> {
        let Some(mut a) = self.jobs.active.take() else {
            return Ok(());
        };
        a.counts.api_calls += api_calls;
        self.store
            .patch_sync_job(
                a.job.id,
                &SyncJobPatch {
                    status: Some(SyncJobStatus::Succeeded),
                    position: Some((Some(jobs::LAST_PAGE_DONE.into()), 0)),
                    counts: SyncCounts {
                        api_calls,
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await?;
        let job = self
            .store
            .sync_job(a.job.id)
            .await?
            .unwrap_or_else(|| a.job.clone());
        let stored = job.counts;
        if a.job.kind == SyncJobKind::Replay {
            // A replay's window re-read from Salesforce.
            let mut report: crate::replay::ReplayReport = job
                .report
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or_default();
            report.source = "salesforce".into();
            report.salesforce_records = stored.read.max(0) as u64;
            return self.complete_replay(a, report).await;
        }
        let secs = a.started.elapsed().as_secs_f64();
        self.store
            .finish_run(
                &a.run_id,
                "succeeded",
                &jobs::run_detail(&job, &stored, secs),
            )
            .await?;
        self.stats.jobs_done.fetch_add(1, Relaxed);
        tracing::info!(
            job = a.job.id,
            kind = a.job.kind.as_str(),
            object = %a.job.object,
            read = stored.read,
            applied = stored.applied,
            skipped = stored.skipped,
            held = stored.held,
            api_calls = stored.api_calls,
            secs,
            "Sync job succeeded."
        );
        Ok(())
    }
}

/// The SystemModstamp window the job reads now: its slice in progress, or its own.
fn slice_window(job: &SyncJob) -> (Option<i64>, Option<i64>) {
    sfsync_store::current_slice(&job.slices)
        .map(|s| (s.since_ms, s.until_ms))
        .unwrap_or((job.since_ms, job.until_ms))
}

/// Requests an archive or retention job unless one is open already; returns its id (the open
/// one's when there is one).
pub async fn request_maintenance(
    store: &dyn sfsync_store::Warehouse,
    kind: SyncJobKind,
    reason: &str,
    requested_by: &str,
) -> Result<i64> {
    let open = store
        .sync_jobs(&SyncJobFilter {
            kind: Some(kind),
            ..SyncJobFilter::open()
        })
        .await?;
    if let Some(j) = open.first() {
        return Ok(j.id);
    }
    Ok(store
        .add_sync_job(&sfsync_store::NewSyncJob {
            kind,
            object: sfsync_store::ALL_OBJECTS.into(),
            reason: reason.into(),
            since_ms: None,
            until_ms: None,
            params: "{}".into(),
            requested_by: requested_by.into(),
            resync_id: None,
        })
        .await?)
}
