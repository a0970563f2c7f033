//! The apply planner: given a batch of per-record changes in log order and the current rows of
//! the records they touch, computes everything the warehouse must write — final rows, SCD2
//! steps, audit entries, repair requests — as one [`CuratedBatch`]. Pure and deterministic.
//!
//! Ordering guarantee: each field (and the record's deleted flag) holds the value of the
//! highest-version change that set it, whatever order changes arrive in (per-field versions,
//! last-writer-wins by (commitTimestamp, commitNumber, sequenceNumber)). A change older than the
//! record's newest applied change is "late": it can only set fields no newer change has set, and
//! it does not touch history. In-order changes write history: a change to a tracked column
//! closes the current version at the change's commit time and opens the next; other changes
//! refresh the current version in place; a delete closes it; an undelete opens a new one.

use std::collections::{BTreeMap, HashMap, HashSet};

use sfsync_core::RecordVersion;
use sfsync_store::{
    AuditEntry, CuratedBatch, CurrentRow, HistoryWrite, RepairRequest, SyncMeta, Value,
};

use crate::model::ObjectMapping;
use crate::normalize::{Op, RecordChange};
use crate::quality::{Failure, HeldChange, Lookups, Severity, StoredFailures, RECORD_HELD};
use sfsync_store::{DqCount, DqFailure, OutboxChange, QuarantineEntry, QuarantineUpdate};

/// Counts of one planned batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanStats {
    /// Record changes applied in order.
    pub applied: u64,
    /// Older than the record's newest change, some fields still applied.
    pub late: u64,
    /// Older than everything they touch: nothing applied.
    pub stale: u64,
    /// Changes made by sfsync itself (origin client = ours).
    pub own_writes: u64,
    pub repairs: u64,
    /// Held in the quarantine (new holds and releases that still fail).
    pub quarantined: u64,
    /// Quarantined changes released (applied).
    pub released: u64,
    /// Warn-severity failures (the change was applied).
    pub warned: u64,
}

/// Per-field versions: fields set after the row's last full write. Key `_live` is the deleted
/// flag.
#[derive(Debug, Default, Clone)]
struct FieldVersions(BTreeMap<String, RecordVersion>);

const LIVE: &str = "_live";
/// Marks a closed SCD2 history (see `apply_one`).
const HCLOSED: &str = "_hclosed";
/// Version of the formula columns: the SystemModstamp of the read (snapshot or formula refresh)
/// that last set them. Change events never carry formula fields, so the record's version says
/// nothing about them; a read older than this one never sets them.
const FORMULA: &str = "_formula";

/// The version of `row`'s formula columns (see [`FORMULA`]); `None` when no read set them.
pub(crate) fn formula_version(row: &CurrentRow) -> Option<RecordVersion> {
    FieldVersions::parse(row.field_versions.as_deref())
        .0
        .get(FORMULA)
        .copied()
}

/// Commit time (epoch ms) of the change that last set `column` of `row`: its per-field version
/// when a partial update set it after the row's last full write, else the full write's version.
/// Writeback decides conflicts with it ("has Salesforce changed the field since the writer saw
/// it?"); after a snapshot every field counts as set at the snapshot's time (conservative).
pub fn field_commit_ms(row: &CurrentRow, column: &str) -> i64 {
    FieldVersions::parse(row.field_versions.as_deref())
        .0
        .get(column)
        .unwrap_or(&row.base_version)
        .commit_timestamp
}

/// Records that a read at `v` set `row`'s formula columns.
pub(crate) fn set_formula_version(row: &mut CurrentRow, v: RecordVersion) {
    let mut fv = FieldVersions::parse(row.field_versions.as_deref());
    fv.0.insert(FORMULA.into(), v);
    row.field_versions = fv.render();
}

impl FieldVersions {
    fn parse(text: Option<&str>) -> FieldVersions {
        let Some(t) = text else {
            return FieldVersions::default();
        };
        let raw: BTreeMap<String, (i64, i64, i32)> = serde_json::from_str(t).unwrap_or_default();
        FieldVersions(
            raw.into_iter()
                .map(|(k, (a, b, c))| {
                    (
                        k,
                        RecordVersion {
                            commit_timestamp: a,
                            commit_number: b,
                            sequence_number: c,
                        },
                    )
                })
                .collect(),
        )
    }

    fn render(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let raw: BTreeMap<&str, (i64, i64, i32)> = self
            .0
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    (v.commit_timestamp, v.commit_number, v.sequence_number),
                )
            })
            .collect();
        serde_json::to_string(&raw).ok()
    }

    fn get(&self, key: &str, base: RecordVersion) -> RecordVersion {
        self.0.get(key).copied().unwrap_or(base)
    }
}

/// Plans one batch.
pub struct Planner<'a> {
    pub mappings: &'a HashMap<String, ObjectMapping>,
    pub run_id: &'a str,
    /// Our own `Sforce-Call-Options` client id.
    pub own_client: &'a str,
    pub now_ms: i64,
    /// Hand applied changes to the delivery outbox ([`CuratedBatch::deliveries`]): a sink is
    /// configured.
    pub deliver: bool,
}

impl Planner<'_> {
    /// Plans `changes` (object, change) in order against `rows` (the current rows of the touched
    /// records, keyed by (object, id); updated in place to the state after the batch). The
    /// caller writes the final `rows` into the batch once all its changes are planned.
    pub fn plan(
        &self,
        rows: &mut HashMap<(String, String), CurrentRow>,
        changes: &[(String, RecordChange)],
        batch: &mut CuratedBatch,
    ) -> PlanStats {
        self.plan_gated(rows, changes, batch, None)
    }

    /// [`Self::plan`] with the data-quality gates: a change that fails an error-severity check
    /// (or whose record has a held change) is held in the quarantine instead of merged.
    pub fn plan_gated(
        &self,
        rows: &mut HashMap<(String, String), CurrentRow>,
        changes: &[(String, RecordChange)],
        batch: &mut CuratedBatch,
        gate: Option<&mut GateRun>,
    ) -> PlanStats {
        self.plan_inner(rows, changes, batch, gate, false)
    }

    /// [`Self::plan_gated`] for a replay: changes already applied once are applied again to
    /// rows whose versions were reset ([`replay_baseline`]). Current state follows them as it
    /// did the first time; the SCD2 history is left as it is (its versions exist already, so a
    /// replay never adds one twice) and the audit trail records them as `replayed`.
    pub fn plan_replayed(
        &self,
        rows: &mut HashMap<(String, String), CurrentRow>,
        changes: &[(String, RecordChange)],
        batch: &mut CuratedBatch,
        gate: Option<&mut GateRun>,
    ) -> PlanStats {
        self.plan_inner(rows, changes, batch, gate, true)
    }

    fn plan_inner(
        &self,
        rows: &mut HashMap<(String, String), CurrentRow>,
        changes: &[(String, RecordChange)],
        batch: &mut CuratedBatch,
        mut gate: Option<&mut GateRun>,
        replay: bool,
    ) -> PlanStats {
        let mut stats = PlanStats::default();
        for (object, ch) in changes {
            let Some(m) = self.mappings.get(object) else {
                continue;
            };
            let key = (object.clone(), ch.id.clone());
            if ch.origin_client.as_deref() == Some(self.own_client) {
                stats.own_writes += 1;
            }
            let held = match gate.as_deref_mut() {
                Some(g) => g.screen(m, rows, &key, ch, batch, &mut stats),
                None => false,
            };
            let outcome = if held {
                "quarantined"
            } else {
                let o = self.apply_one(m, rows, &key, ch, batch, &mut stats, replay);
                if let Some(g) = gate.as_deref_mut() {
                    g.applied(m, ch);
                }
                match o {
                    "applied" if replay => "replayed",
                    o => o,
                }
            };
            if self.deliver && matches!(outcome, "applied" | "late" | "replayed") {
                if let Some(row) = rows.get(&key).filter(|r| !r.partial) {
                    batch.deliveries.push(OutboxChange {
                        object: object.clone(),
                        record_id: ch.id.clone(),
                        change_type: ch.change_type.to_string(),
                        event_key: ch.event_key.clone(),
                        commit_timestamp_ms: ch.version.commit_timestamp,
                        applied_at_ms: self.now_ms,
                        source: ch.source,
                        origin_client: ch.origin_client.clone(),
                        fields: ch.fields.clone(),
                        deleted: row.deleted,
                        values: row.values.clone(),
                        run_id: self.run_id.to_string(),
                    });
                }
            }
            batch.audit.push(AuditEntry {
                object: object.clone(),
                record_id: ch.id.clone(),
                change_type: ch.change_type.to_string(),
                event_key: ch.event_key.clone(),
                commit_timestamp_ms: ch.version.commit_timestamp,
                commit_user: ch.commit_user.clone(),
                change_origin: ch.change_origin.clone(),
                source: ch.source,
                fields: ch.fields.clone(),
                outcome: outcome.to_string(),
                replay_id: ch.replay_id.clone(),
                run_id: self.run_id.to_string(),
                applied_at_ms: self.now_ms,
            });
        }
        stats
    }

    fn meta(&self, ch: &RecordChange) -> SyncMeta {
        SyncMeta {
            version: ch.version,
            change_type: ch.change_type.to_string(),
            source: ch.source,
            transaction_key: ch.transaction_key.clone(),
            replay_id: ch.replay_id.clone(),
            run_id: self.run_id.to_string(),
            applied_at_ms: self.now_ms,
            origin_client: ch.origin_client.clone(),
        }
    }

    /// `replay`: leave the history (table and bookkeeping) as it is.
    #[allow(clippy::too_many_arguments)]
    fn apply_one(
        &self,
        m: &ObjectMapping,
        rows: &mut HashMap<(String, String), CurrentRow>,
        key: &(String, String),
        ch: &RecordChange,
        batch: &mut CuratedBatch,
        stats: &mut PlanStats,
        replay: bool,
    ) -> &'static str {
        let cols = &m.model.columns;
        let object = &key.0;
        let Some(row) = rows.get_mut(key) else {
            // First sight of the record.
            let mut row = CurrentRow {
                id: ch.id.clone(),
                values: BTreeMap::new(),
                meta: self.meta(ch),
                deleted: false,
                base_version: RecordVersion::default(),
                field_versions: None,
                history_version: None,
                partial: false,
            };
            row.values.insert("id".into(), Value::Text(ch.id.clone()));
            let mut fv = FieldVersions::default();
            let mut outcome = "applied";
            match ch.op {
                Op::Full => {
                    for (c, v) in &ch.values {
                        row.values.insert(cols[*c].name.clone(), v.clone());
                        if m.formula_columns.contains(c) {
                            fv.0.insert(FORMULA.into(), ch.version);
                        }
                    }
                    row.base_version = ch.version;
                    row.deleted = ch.deleted;
                }
                Op::Patch => {
                    for (c, v) in &ch.values {
                        row.values.insert(cols[*c].name.clone(), v.clone());
                        fv.0.insert(cols[*c].name.clone(), ch.version);
                    }
                    row.partial = true;
                    batch.repairs.push(RepairRequest {
                        object: object.clone(),
                        record_ids: vec![ch.id.clone()],
                        reason: "update_for_unknown_record".into(),
                        event_key: ch.event_key.clone(),
                        commit_timestamp_ms: ch.version.commit_timestamp,
                    });
                    stats.repairs += 1;
                    outcome = "repair_requested";
                }
                Op::Delete => {
                    row.deleted = true;
                    fv.0.insert(LIVE.into(), ch.version);
                }
            }
            row.field_versions = fv.render();
            if let Some(h) = m.model.history.as_ref().filter(|_| !replay) {
                if ch.op == Op::Full && !row.deleted {
                    row.history_version = Some(1);
                    batch.history.push(HistoryWrite::Open {
                        object: object.clone(),
                        id: ch.id.clone(),
                        version: 1,
                        valid_from_ms: ch.version.commit_timestamp,
                        values: tracked(&row.values, &h.columns),
                        meta: row.meta.clone(),
                    });
                }
            }
            stats.applied += 1;
            rows.insert(key.clone(), row);
            return outcome;
        };

        let v = ch.version;
        let in_order = v > row.meta.version;
        if in_order && covered_by_poll(m, row, ch) {
            stats.stale += 1;
            return "covered";
        }
        // A full re-read of a record known only from partial updates completes it even when the
        // snapshot is not newer than those updates.
        let completes_partial = row.partial && ch.op == Op::Full;
        let mut fv = FieldVersions::parse(row.field_versions.as_deref());
        let base = row.base_version;
        let before_deleted = row.deleted;
        let before_partial = row.partial;
        let before_tracked = m
            .model
            .history
            .as_ref()
            .filter(|_| !replay)
            .map(|h| tracked(&row.values, &h.columns));
        let mut any = false;
        let mut outcome = "applied";
        match ch.op {
            Op::Full => {
                // Formula columns (only a read carries them) follow their own version: a read
                // sets them unless an even newer read already did, whatever the record's
                // version (a create applied before its backfill row still gets them).
                let formula_newer = fv.0.get(FORMULA).is_none_or(|f| *f <= v);
                let mut formula_set = false;
                for (c, val) in &ch.values {
                    let name = &cols[*c].name;
                    if m.formula_columns.contains(c) {
                        if formula_newer {
                            formula_set = true;
                            let before = row.values.insert(name.clone(), val.clone());
                            let same = match &before {
                                None | Some(Value::Null) => val.is_null(),
                                Some(b) => b == val,
                            };
                            any |= !same;
                        }
                        continue;
                    }
                    if fv.get(name, base) < v {
                        // A read that shows what is already there changes nothing (its version
                        // still wins the field): e.g. a poll re-reading a change the stream
                        // delivered, across a CDC → polling switch.
                        let before = row.values.insert(name.clone(), val.clone());
                        any |= match &before {
                            None | Some(Value::Null) => !val.is_null(),
                            Some(b) => b != val,
                        };
                        fv.0.insert(name.clone(), v);
                    }
                }
                if formula_set && fv.0.get(FORMULA) != Some(&v) {
                    fv.0.insert(FORMULA.into(), v);
                    any = true;
                }
                if fv.get(LIVE, base) < v {
                    any |= row.deleted != ch.deleted;
                    row.deleted = ch.deleted;
                    fv.0.insert(LIVE.into(), v);
                }
                if in_order {
                    // Every field is now at `v`: compact.
                    row.base_version = v;
                    let closed = fv.0.remove(HCLOSED);
                    let formula = fv.0.remove(FORMULA);
                    fv.0.clear();
                    if let Some(c) = closed {
                        fv.0.insert(HCLOSED.into(), c);
                    }
                    if let Some(f) = formula {
                        fv.0.insert(FORMULA.into(), f);
                    }
                }
                row.partial = false;
            }
            Op::Patch => {
                for (c, val) in &ch.values {
                    let name = &cols[*c].name;
                    if fv.get(name, base) < v {
                        row.values.insert(name.clone(), val.clone());
                        fv.0.insert(name.clone(), v);
                        any = true;
                    }
                }
                for (c, patch) in &ch.diffs {
                    let name = &cols[*c].name;
                    if fv.get(name, base) >= v {
                        continue;
                    }
                    let prev = match row.values.get(name) {
                        Some(Value::Text(s)) => Some(s.as_str()),
                        Some(Value::Null) => Some(""),
                        _ => None,
                    };
                    let applied = prev.and_then(|p| {
                        sfsync_salesforce::pubsub::diff::apply(p, patch)
                            .value()
                            .map(str::to_string)
                    });
                    match applied {
                        Some(new) => {
                            row.values.insert(name.clone(), Value::Text(new));
                            fv.0.insert(name.clone(), v);
                            any = true;
                        }
                        None => {
                            batch.repairs.push(RepairRequest {
                                object: object.clone(),
                                record_ids: vec![ch.id.clone()],
                                reason: format!("diff_not_applicable:{}", cols[*c].field),
                                event_key: ch.event_key.clone(),
                                commit_timestamp_ms: v.commit_timestamp,
                            });
                            stats.repairs += 1;
                            outcome = "repair_requested";
                        }
                    }
                }
            }
            Op::Delete => {
                if fv.get(LIVE, base) < v {
                    row.deleted = true;
                    fv.0.insert(LIVE.into(), v);
                    any = true;
                }
            }
        }
        let applied_now = in_order || completes_partial;
        if !applied_now && !any {
            row.field_versions = fv.render();
            stats.stale += 1;
            return "stale";
        }
        if in_order {
            row.meta = self.meta(ch);
        }
        // SCD2. `_hclosed` in the field-version map marks a history whose last version is closed
        // (the record is deleted).
        if let (Some(h), Some(before)) = (&m.model.history, before_tracked) {
            let was_open = row.history_version.is_some() && !fv.0.contains_key(HCLOSED);
            let after = tracked(&row.values, &h.columns);
            let n = row.history_version.unwrap_or(0);
            // Late changes are placed at the newest applied time so windows never overlap.
            let ts = if applied_now {
                v.commit_timestamp
            } else {
                row.meta.version.commit_timestamp
            };
            let meta = row.meta.clone();
            if row.deleted {
                if was_open {
                    batch.history.push(HistoryWrite::Close {
                        object: object.clone(),
                        id: ch.id.clone(),
                        version: n,
                        valid_to_ms: ts,
                        end_change_type: ch.change_type.to_string(),
                    });
                    fv.0.insert(HCLOSED.into(), v);
                }
            } else if row.partial {
                // Tracked values unknown until the repair re-reads the record.
            } else if !was_open {
                batch.history.push(HistoryWrite::Open {
                    object: object.clone(),
                    id: ch.id.clone(),
                    version: n + 1,
                    valid_from_ms: ts,
                    values: after,
                    meta,
                });
                row.history_version = Some(n + 1);
                fv.0.remove(HCLOSED);
            } else if applied_now && after != before && !before_deleted && !before_partial {
                batch.history.push(HistoryWrite::Close {
                    object: object.clone(),
                    id: ch.id.clone(),
                    version: n,
                    valid_to_ms: ts,
                    end_change_type: ch.change_type.to_string(),
                });
                batch.history.push(HistoryWrite::Open {
                    object: object.clone(),
                    id: ch.id.clone(),
                    version: n + 1,
                    valid_from_ms: ts,
                    values: after,
                    meta,
                });
                row.history_version = Some(n + 1);
            } else if applied_now {
                batch.history.push(HistoryWrite::Touch {
                    object: object.clone(),
                    id: ch.id.clone(),
                    version: n,
                    meta,
                });
            }
        }
        row.field_versions = fv.render();
        if applied_now {
            stats.applied += 1;
            outcome
        } else {
            stats.late += 1;
            "late"
        }
    }
}

/// Whether `ch`, a stream change newer than `row`'s version, is one the record's last poll
/// already showed: the row was last written by a polled read stamped at the change's own commit
/// time, and the change would alter nothing (same deleted state, every value it carries
/// already there). A polled row is versioned `(SystemModstamp, 0, 0)`, below every stream
/// change of that millisecond, so without this the stream's copy of a change the poll already
/// applied — both read across a CDC ↔ polling switch — would be applied and delivered twice.
/// Nothing is written for it; the audit trail records it as `covered`.
fn covered_by_poll(m: &ObjectMapping, row: &CurrentRow, ch: &RecordChange) -> bool {
    if row.meta.source != sfsync_store::ChangeSource::Poll
        || ch.source == sfsync_store::ChangeSource::Poll
        || row.meta.version.commit_timestamp != ch.version.commit_timestamp
        || row.partial
        || !ch.diffs.is_empty()
    {
        return false;
    }
    let deleted_after = match ch.op {
        Op::Delete => true,
        Op::Full => ch.deleted,
        Op::Patch => row.deleted,
    };
    if deleted_after != row.deleted {
        return false;
    }
    let cols = &m.model.columns;
    ch.values
        .iter()
        .all(|(c, v)| match row.values.get(&cols[*c].name) {
            None | Some(Value::Null) => v.is_null(),
            Some(b) => b == v,
        })
}

/// The row a replay or an authoritative re-read (reconciliation, replay from Salesforce) plans
/// against: the record's versions reset, so the changes (or the snapshot) apply as if they had
/// never been applied, with the history bookkeeping taken from the history table itself (`latest`:
/// its newest version) rather than from the row — the version number, whether it is closed (the
/// record deleted), and the tracked values — so a row damaged behind sfsync's back neither hides
/// a history version nor fakes one. Without history the row keeps its values and deleted flag.
/// A record with history but no row (deleted behind sfsync's back) gets a row rebuilt from its
/// history: the tracked values only, no versions. `None` when there is neither.
pub fn replay_baseline(
    m: &ObjectMapping,
    id: &str,
    row: Option<CurrentRow>,
    latest: Option<&sfsync_store::HistoryRow>,
) -> Option<CurrentRow> {
    let mut row = match (row, latest) {
        (None, None) => return None,
        (Some(r), _) => r,
        (None, Some(_)) => CurrentRow {
            id: id.to_string(),
            values: BTreeMap::new(),
            meta: SyncMeta {
                version: RecordVersion::default(),
                change_type: String::new(),
                source: sfsync_store::ChangeSource::Snapshot,
                transaction_key: String::new(),
                replay_id: None,
                run_id: String::new(),
                applied_at_ms: 0,
                origin_client: None,
            },
            deleted: false,
            base_version: RecordVersion::default(),
            field_versions: None,
            history_version: None,
            partial: false,
        },
    };
    row.meta.version = RecordVersion::default();
    row.base_version = RecordVersion::default();
    let mut fv = FieldVersions::default();
    match (&m.model.history, latest) {
        (Some(h), Some(latest)) => {
            row.history_version = Some(latest.version);
            row.deleted = !latest.is_current;
            if !latest.is_current {
                fv.0.insert(HCLOSED.into(), RecordVersion::default());
            }
            for c in h.columns.iter().filter(|c| *c != "id") {
                match latest.values.get(c) {
                    Some(v) if !v.is_null() => {
                        row.values.insert(c.clone(), v.clone());
                    }
                    _ => {
                        row.values.remove(c);
                    }
                }
            }
        }
        (Some(_), None) => row.history_version = None,
        (None, _) => {}
    }
    row.field_versions = fv.render();
    Some(row)
}

/// The data-quality state the planner checks changes against: kept by the apply stage across
/// batches (stored-failure counts for the caps, held records), refreshed per batch (known
/// parents, taken unique values, the raw-log offset being planned).
#[derive(Debug, Default)]
pub struct GateRun {
    /// Parents known to exist (live) in the warehouse or the batch being committed.
    pub parents: HashSet<(String, String)>,
    /// Unique values held by live records: (object, column, value) → record id.
    pub taken: HashMap<(String, usize, String), String>,
    /// Records with an open quarantined change: their later changes are held behind it.
    pub held: HashSet<(String, String)>,
    /// Raw-log offset of the changes being planned (none for snapshots and releases).
    pub log_offset: Option<u64>,
    /// Planning the release of this quarantine entry; `true`: without checks.
    pub release: Option<(i64, bool)>,
    /// Failures stored so far per (object, rule), for the cap.
    pub stored: StoredFailures,
    /// Stored failures per rule at most (beyond: counted; a held change keeps only its
    /// raw-log offset).
    pub cap: u64,
    pub run_id: String,
    pub now_ms: i64,
    counts: BTreeMap<(String, String), DqCount>,
}

struct PlanLookups<'a> {
    gate: &'a GateRun,
    rows: &'a HashMap<(String, String), CurrentRow>,
}

impl Lookups for PlanLookups<'_> {
    fn parent_exists(&self, object: &str, id: &str) -> bool {
        match self.rows.get(&(object.to_string(), id.to_string())) {
            Some(r) => !r.deleted,
            None => self
                .gate
                .parents
                .contains(&(object.to_string(), id.to_string())),
        }
    }

    fn value_taken(&self, object: &str, column: usize, value: &str, id: &str) -> bool {
        self.gate
            .taken
            .get(&(object.to_string(), column, value.to_string()))
            .is_some_and(|holder| holder != id)
    }
}

impl GateRun {
    pub fn new(cap: u64, run_id: &str, stored: StoredFailures) -> GateRun {
        GateRun {
            cap,
            run_id: run_id.to_string(),
            stored,
            ..Default::default()
        }
    }

    /// Clears what belongs to one batch.
    pub fn begin_batch(&mut self, now_ms: i64) {
        self.parents.clear();
        self.taken.clear();
        self.log_offset = None;
        self.release = None;
        self.now_ms = now_ms;
    }

    /// Moves the batch's failure counts into it.
    pub fn finish_batch(&mut self, batch: &mut CuratedBatch) {
        batch
            .dq_counts
            .extend(std::mem::take(&mut self.counts).into_values());
    }

    /// Counts a failure of `rule`; returns whether it may be stored in full (under the cap).
    fn count(&mut self, object: &str, rule: &str, severity: Severity) -> bool {
        let key = (object.to_string(), rule.to_string());
        let stored = self.stored.0.entry(key.clone()).or_insert(0);
        let under = *stored < self.cap;
        if under {
            *stored += 1;
        }
        let c = self.counts.entry(key).or_insert_with(|| DqCount {
            run_id: self.run_id.clone(),
            object: object.to_string(),
            rule: rule.to_string(),
            severity: severity.as_str().to_string(),
            failed: 0,
            stored: 0,
            over_cap: 0,
        });
        c.failed += 1;
        if under {
            c.stored += 1;
        } else {
            c.over_cap += 1;
        }
        under
    }

    /// Checks `ch`; returns `true` when it is held (a quarantine entry or a still-held update
    /// is in `batch`), `false` when it is to be applied (warn failures recorded).
    fn screen(
        &mut self,
        m: &ObjectMapping,
        rows: &HashMap<(String, String), CurrentRow>,
        key: &(String, String),
        ch: &RecordChange,
        batch: &mut CuratedBatch,
        stats: &mut PlanStats,
    ) -> bool {
        let object = &key.0;
        if let Some((id, true)) = self.release {
            batch
                .quarantine_updates
                .push(QuarantineUpdate::Released { id });
            self.held.remove(key);
            stats.released += 1;
            return false;
        }
        let failures: Vec<Failure> = if self.held.contains(key) {
            vec![Failure {
                rule: RECORD_HELD.into(),
                field: "Id".into(),
                severity: Severity::Error,
                message: format!(
                    "an earlier change of {object} {} is held in the quarantine",
                    ch.id
                ),
                value: None,
                parent: None,
            }]
        } else {
            let lookups = PlanLookups { gate: self, rows };
            m.gate.check(m, ch, &lookups)
        };
        let (errors, warns): (Vec<&Failure>, Vec<&Failure>) =
            failures.iter().partition(|f| f.severity == Severity::Error);
        for w in &warns {
            stats.warned += 1;
            if self.count(object, &w.rule, Severity::Warn) {
                batch.dq_failures.push(DqFailure {
                    run_id: self.run_id.clone(),
                    object: object.clone(),
                    record_id: ch.id.clone(),
                    rule: w.rule.clone(),
                    severity: "warn".into(),
                    field: w.field.clone(),
                    value: w.value.clone(),
                    message: w.message.clone(),
                    event_key: ch.event_key.clone(),
                });
            }
        }
        let Some(first) = errors.first() else {
            if let Some((id, false)) = self.release {
                batch
                    .quarantine_updates
                    .push(QuarantineUpdate::Released { id });
                stats.released += 1;
            }
            return false;
        };
        let mut full = self.count(object, &first.rule, Severity::Error);
        for e in &errors[1..] {
            self.count(object, &e.rule, Severity::Error);
        }
        let reason = errors
            .iter()
            .map(|e| e.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let parent = errors.iter().find_map(|e| e.parent.clone());
        self.held.insert(key.clone());
        stats.quarantined += 1;
        if let Some((id, _)) = self.release {
            batch.quarantine_updates.push(QuarantineUpdate::StillHeld {
                id,
                rule: first.rule.clone(),
                reason,
                parent: parent.map(|(o, i, _)| (o, i)),
            });
            return true;
        }
        if self.log_offset.is_none() {
            // No other copy of the change: kept whatever the cap.
            full = true;
        }
        let change = full.then(|| {
            serde_json::to_vec(&HeldChange::from_change(m, ch)).expect("held changes serialise")
        });
        batch.quarantine.push(QuarantineEntry {
            object: object.clone(),
            record_id: ch.id.clone(),
            rule: first.rule.clone(),
            reason,
            parent: parent.as_ref().map(|(o, i, _)| (o.clone(), i.clone())),
            event_key: ch.event_key.clone(),
            log_offset: self.log_offset,
            commit_timestamp_ms: ch.version.commit_timestamp,
            change,
            alert_after_ms: parent.map(|(_, _, after)| self.now_ms.saturating_add(after)),
            run_id: self.run_id.clone(),
        });
        true
    }

    /// After `ch` was applied: the unique values it set are now taken by its record.
    fn applied(&mut self, m: &ObjectMapping, ch: &RecordChange) {
        for (column, value) in m.gate.unique_values(ch) {
            self.taken
                .insert((m.object().to_string(), column, value), ch.id.clone());
        }
    }
}

fn tracked(values: &BTreeMap<String, Value>, columns: &[String]) -> BTreeMap<String, Value> {
    columns
        .iter()
        .map(|c| (c.clone(), values.get(c).cloned().unwrap_or(Value::Null)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HistoryFields, ObjectSpec};
    use proptest::prelude::*;
    use sfsync_store::ChangeSource;

    fn mapping() -> ObjectMapping {
        let f = |n: &str, t: &str| serde_json::json!({"name": n, "type": t});
        let d = serde_json::from_value(serde_json::json!({
            "name": "Case",
            "fields": [f("Id", "id"), f("Status", "picklist"), f("Priority", "picklist"),
                       f("Subject", "string"), f("Hours__c", "double")]
        }))
        .unwrap();
        let mut spec = ObjectSpec::new("Case");
        spec.history = HistoryFields::Fields(vec!["Status".into()]);
        ObjectMapping::build(&d, &spec).unwrap()
    }

    fn change(id: &str, op: Op, ts: i64, values: Vec<(usize, Value)>) -> RecordChange {
        RecordChange {
            id: id.into(),
            op,
            change_type: match op {
                Op::Full => "CREATE",
                Op::Patch => "UPDATE",
                Op::Delete => "DELETE",
            },
            version: RecordVersion {
                commit_timestamp: ts,
                commit_number: ts,
                sequence_number: 1,
            },
            values,
            diffs: vec![],
            deleted: false,
            fields: vec![],
            event_key: format!("tx{ts}/1/{id}"),
            transaction_key: format!("tx{ts}"),
            replay_id: None,
            commit_user: String::new(),
            change_origin: String::new(),
            origin_client: None,
            source: ChangeSource::Cdc,
        }
    }

    /// A plausible history per record: create, then updates / delete / undelete.
    fn history_strategy() -> impl Strategy<Value = Vec<(String, RecordChange)>> {
        let step = (0u8..6, 0usize..4, 0u8..5);
        proptest::collection::vec(proptest::collection::vec(step, 1..12), 1..4).prop_map(
            |records| {
                let mut out = Vec::new();
                let mut ts = 1_000;
                for (r, steps) in records.iter().enumerate() {
                    let id = format!("500{r}");
                    let full = |ts: i64, k: u8| {
                        let vals = (1..5)
                            .map(|c| (c, Value::Text(format!("v{k}-{c}"))))
                            .collect();
                        change(&id, Op::Full, ts, vals)
                    };
                    ts += 1;
                    out.push(full(ts, 0));
                    let mut deleted = false;
                    for (kind, col, val) in steps {
                        ts += 1;
                        let ch = match (kind, deleted) {
                            (0, false) => {
                                deleted = true;
                                change(&id, Op::Delete, ts, vec![])
                            }
                            (_, true) => {
                                deleted = false;
                                let mut c = full(ts, *val);
                                c.change_type = "UNDELETE";
                                c
                            }
                            (1, false) => change(&id, Op::Patch, ts, vec![(col + 1, Value::Null)]),
                            _ => change(
                                &id,
                                Op::Patch,
                                ts,
                                vec![(col + 1, Value::Text(format!("u{val}")))],
                            ),
                        };
                        out.push(ch);
                    }
                }
                // Interleave records by commit order (as one channel delivers them).
                out.sort_by_key(|c: &RecordChange| c.version);
                out.into_iter().map(|c| ("Case".to_string(), c)).collect()
            },
        )
    }

    fn run(
        changes: &[(String, RecordChange)],
        batches: &[usize],
    ) -> (HashMap<(String, String), CurrentRow>, Vec<HistoryWrite>) {
        let m = mapping();
        let mut mappings = HashMap::new();
        mappings.insert("Case".to_string(), m);
        let planner = Planner {
            mappings: &mappings,
            run_id: "r",
            own_client: "sfsync",
            now_ms: 0,
            deliver: false,
        };
        let mut rows = HashMap::new();
        let mut history = Vec::new();
        let mut rest = changes;
        let mut i = 0;
        while !rest.is_empty() {
            let n = batches.get(i).copied().unwrap_or(3).clamp(1, rest.len());
            let mut batch = CuratedBatch::default();
            planner.plan(&mut rows, &rest[..n], &mut batch);
            history.extend(batch.history);
            rest = &rest[n..];
            i += 1;
        }
        (rows, history)
    }

    fn state(rows: &HashMap<(String, String), CurrentRow>) -> Vec<(String, bool, Vec<Value>)> {
        let mut out: Vec<_> = rows
            .values()
            .map(|r| {
                let vals = ["status", "priority", "subject", "hours__c"]
                    .iter()
                    .map(|c| r.values.get(*c).cloned().unwrap_or(Value::Null))
                    .collect();
                (r.id.clone(), r.deleted, vals)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Replays history writes into a table and checks the SCD2 invariants.
    fn check_scd2(history: &[HistoryWrite]) {
        let mut table: BTreeMap<(String, i64), (i64, Option<i64>, bool)> = BTreeMap::new();
        for h in history {
            match h {
                HistoryWrite::Open {
                    id,
                    version,
                    valid_from_ms,
                    ..
                } => {
                    assert!(table
                        .insert((id.clone(), *version), (*valid_from_ms, None, true))
                        .is_none());
                }
                HistoryWrite::Close {
                    id,
                    version,
                    valid_to_ms,
                    ..
                } => {
                    let v = table
                        .get_mut(&(id.clone(), *version))
                        .expect("closing an existing version");
                    assert!(v.2, "closing a version that is not current");
                    *v = (v.0, Some(*valid_to_ms), false);
                }
                HistoryWrite::Touch { id, version, .. } => {
                    assert!(
                        table[&(id.clone(), *version)].2,
                        "touching a closed version"
                    );
                }
            }
        }
        type Window = (i64, Option<i64>, bool);
        let mut by_id: BTreeMap<&str, Vec<Window>> = BTreeMap::new();
        for ((id, _), v) in &table {
            by_id.entry(id).or_default().push(*v);
        }
        for (id, versions) in by_id {
            assert!(
                versions.iter().filter(|v| v.2).count() <= 1,
                "{id}: several current versions"
            );
            for w in versions.windows(2) {
                assert!(
                    w[0].1.expect("superseded version closed") <= w[1].0,
                    "{id}: overlap"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn any_redelivery_and_order_converges(
            changes in history_strategy(),
            seed in any::<u64>(),
            batches in proptest::collection::vec(1usize..6, 0..20),
        ) {
            let (expected, history) = run(&changes, &[changes.len()]);
            check_scd2(&history);
            // Redeliver: duplicates of random changes, then shuffle everything.
            let mut rng = seed;
            let mut next = || { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; rng };
            let mut delivered = changes.clone();
            for _ in 0..changes.len() / 2 + 1 {
                let i = (next() as usize) % changes.len();
                delivered.push(changes[i].clone());
            }
            // In-order delivery with duplicates: identical state and identical history.
            let mut in_order = delivered.clone();
            in_order.sort_by_key(|(_, c)| c.version);
            let (rows, hist) = run(&in_order, &batches);
            prop_assert_eq!(state(&rows), state(&expected));
            prop_assert_eq!(hist.len(), history.len());
            check_scd2(&hist);
            // Any order: the same current state.
            for i in (1..delivered.len()).rev() {
                let j = (next() as usize) % (i + 1);
                delivered.swap(i, j);
            }
            let (rows, hist) = run(&delivered, &batches);
            prop_assert_eq!(state(&rows), state(&expected));
            check_scd2(&hist);
        }
    }

    #[test]
    fn partial_update_touches_only_its_fields_and_history_follows_tracked_fields() {
        let changes = vec![
            (
                "Case".to_string(),
                change(
                    "5001",
                    Op::Full,
                    10,
                    (1..5).map(|c| (c, Value::Text(format!("a{c}")))).collect(),
                ),
            ),
            (
                "Case".to_string(),
                change(
                    "5001",
                    Op::Patch,
                    11,
                    vec![(3, Value::Text("new subject".into()))],
                ),
            ),
            (
                "Case".to_string(),
                change(
                    "5001",
                    Op::Patch,
                    12,
                    vec![(1, Value::Text("Closed".into())), (2, Value::Null)],
                ),
            ),
            ("Case".to_string(), change("5001", Op::Delete, 13, vec![])),
        ];
        let (rows, history) = run(&changes, &[10]);
        let row = &rows[&("Case".to_string(), "5001".to_string())];
        assert_eq!(row.values["status"], Value::Text("Closed".into()));
        assert_eq!(row.values["priority"], Value::Null);
        assert_eq!(row.values["subject"], Value::Text("new subject".into()));
        assert_eq!(row.values["hours__c"], Value::Text("a4".into()));
        assert!(row.deleted);
        // Open v1, touch (untracked subject), close v1 + open v2 (status), close v2 (delete).
        let kinds: Vec<&str> = history
            .iter()
            .map(|h| match h {
                HistoryWrite::Open { .. } => "open",
                HistoryWrite::Close { .. } => "close",
                HistoryWrite::Touch { .. } => "touch",
            })
            .collect();
        assert_eq!(kinds, ["open", "touch", "close", "open", "close"]);
    }

    /// Across a CDC ↔ polling switch the same change can arrive twice: as a polled row
    /// (version `(T, 0, 0)`) and as the stream's event (commit time T). Whichever comes first,
    /// it is applied, written to history and delivered once; a different change of the same
    /// millisecond is still applied.
    #[test]
    fn a_change_both_polled_and_streamed_is_applied_and_delivered_once() {
        let m = mapping();
        let mut mappings = HashMap::new();
        mappings.insert("Case".to_string(), m);
        let planner = Planner {
            mappings: &mappings,
            run_id: "r",
            own_client: "sfsync",
            now_ms: 0,
            deliver: true,
        };
        let t = |s: &str| Value::Text(s.into());
        let polled = |ts: i64, status: &str| {
            let mut c = change("5001", Op::Full, ts, vec![(1, t(status)), (3, t("s"))]);
            c.version = RecordVersion {
                commit_timestamp: ts,
                commit_number: 0,
                sequence_number: 0,
            };
            c.change_type = "POLL";
            c.source = ChangeSource::Poll;
            c.event_key = format!("poll-{ts}/0/5001");
            c
        };
        let create = change("5001", Op::Full, 10, vec![(1, t("New")), (3, t("s"))]);
        let update = change("5001", Op::Patch, 20, vec![(1, t("Working"))]);
        let run_all = |changes: Vec<RecordChange>| {
            let mut rows = HashMap::new();
            let mut batch = CuratedBatch::default();
            let changes: Vec<_> = changes
                .into_iter()
                .map(|c| ("Case".to_string(), c))
                .collect();
            let stats = planner.plan(&mut rows, &changes, &mut batch);
            let outcomes: Vec<String> = batch.audit.iter().map(|a| a.outcome.clone()).collect();
            let row = rows[&("Case".to_string(), "5001".to_string())].clone();
            (row, batch, stats, outcomes)
        };
        // Stream first (before the fallback), then the poll re-reads the overlap.
        let (row, batch, _, outcomes) =
            run_all(vec![create.clone(), update.clone(), polled(20, "Working")]);
        assert_eq!(outcomes, ["applied", "applied", "stale"]);
        assert_eq!(row.values["status"], t("Working"));
        assert_eq!(batch.deliveries.len(), 2);
        // Poll first (during the fallback), then the stream's copies (after the switch back).
        let (row, batch, stats, outcomes) =
            run_all(vec![polled(20, "Working"), create.clone(), update.clone()]);
        assert_eq!(outcomes, ["applied", "stale", "covered"]);
        assert_eq!(row.values["status"], t("Working"));
        assert_eq!(batch.deliveries.len(), 1);
        assert_eq!(stats.stale, 2);
        let opens = batch
            .history
            .iter()
            .filter(|h| matches!(h, HistoryWrite::Open { .. }))
            .count();
        assert_eq!(opens, 1, "{:?}", batch.history);
        // A second change in the same millisecond the poll did not see is applied.
        let other = change("5001", Op::Patch, 20, vec![(1, t("Escalated"))]);
        let (row, batch, _, outcomes) = run_all(vec![polled(20, "Working"), other]);
        assert_eq!(outcomes, ["applied", "applied"]);
        assert_eq!(row.values["status"], t("Escalated"));
        assert_eq!(batch.deliveries.len(), 2);
        // A later change is applied normally.
        let later = change("5001", Op::Patch, 21, vec![(1, t("Working"))]);
        let (_, _, _, outcomes) = run_all(vec![polled(20, "Working"), later]);
        assert_eq!(outcomes, ["applied", "applied"]);
    }

    fn history_row(
        id: &str,
        version: i64,
        current: bool,
        status: &str,
    ) -> sfsync_store::HistoryRow {
        sfsync_store::HistoryRow {
            id: id.into(),
            version,
            valid_from_ms: 0,
            valid_to_ms: (!current).then_some(1),
            is_current: current,
            change_type: "UPDATE".into(),
            end_change_type: (!current).then(|| "DELETE".into()),
            transaction_key: "t".into(),
            values: [("status".to_string(), Value::Text(status.into()))].into(),
        }
    }

    #[test]
    fn a_replay_rebuilds_a_damaged_row_and_leaves_history_alone() {
        let c = |op, ts, vals| ("Case".to_string(), change("5001", op, ts, vals));
        let t = |s: &str| Value::Text(s.into());
        let changes = vec![
            c(
                Op::Full,
                10,
                (1..5).map(|i| (i, t(&format!("a{i}")))).collect(),
            ),
            c(Op::Patch, 11, vec![(3, t("subject 2"))]),
            c(Op::Patch, 12, vec![(1, t("Closed"))]),
        ];
        let (rows, history) = run(&changes, &[1]);
        let key = ("Case".to_string(), "5001".to_string());
        let good = rows[&key].clone();
        assert_eq!(history.len(), 4, "open, touch, close, open: {history:?}");
        // Damaged behind sfsync's back: values and versions.
        let mut damaged = good.clone();
        damaged.values.insert("subject".into(), t("garbage"));
        damaged.values.insert("status".into(), t("garbage"));
        damaged.meta.version.commit_timestamp = 99;
        let latest = history_row("5001", 2, true, "Closed");
        let m = mapping();
        let base = replay_baseline(&m, "5001", Some(damaged), Some(&latest)).unwrap();
        assert_eq!(base.meta.version, RecordVersion::default());
        assert_eq!(
            base.values["status"],
            t("Closed"),
            "tracked values from history"
        );
        assert_eq!(base.history_version, Some(2));
        let mut mappings = HashMap::new();
        mappings.insert("Case".to_string(), m);
        let planner = Planner {
            mappings: &mappings,
            run_id: "replay-1",
            own_client: "sfsync",
            now_ms: 0,
            deliver: false,
        };
        let mut rows = HashMap::from([(key.clone(), base)]);
        let mut batch = CuratedBatch::default();
        let s = planner.plan_replayed(&mut rows, &changes, &mut batch, None);
        assert_eq!(s.applied, 3);
        let rebuilt = &rows[&key];
        assert_eq!(rebuilt.values, good.values);
        assert_eq!(rebuilt.meta.version, good.meta.version);
        assert_eq!(
            rebuilt.history_version,
            Some(2),
            "bookkeeping as the history says"
        );
        assert!(batch.history.is_empty(), "no history version twice");
        assert!(batch
            .audit
            .iter()
            .all(|a| a.outcome == "replayed" && a.run_id == "replay-1"));
        // Replaying the same changes again is a no-op on the state.
        let mut again = CuratedBatch::default();
        let base = replay_baseline(
            &mappings["Case"],
            "5001",
            Some(rebuilt.clone()),
            Some(&latest),
        );
        let mut rows2 = HashMap::from([(key.clone(), base.unwrap())]);
        planner.plan_replayed(&mut rows2, &changes, &mut again, None);
        assert_eq!(rows2[&key].values, good.values);
    }

    #[test]
    fn baseline_follows_the_history_table() {
        let m = mapping();
        assert_eq!(replay_baseline(&m, "5009", None, None), None);
        // No row, history closed by a delete: rebuilt from history, deleted, history closed.
        let closed = history_row("5009", 3, false, "Closed");
        let b = replay_baseline(&m, "5009", None, Some(&closed)).unwrap();
        assert!(b.deleted);
        assert_eq!(b.history_version, Some(3));
        assert!(b.field_versions.as_deref().unwrap().contains(HCLOSED));
        assert_eq!(b.values.get("status"), Some(&Value::Text("Closed".into())));
        assert!(!b.values.contains_key("id"));
        // A row whose deleted flag was damaged: the open history says live.
        let mut row = b.clone();
        row.deleted = true;
        row.field_versions = None;
        let open = history_row("5009", 4, true, "New");
        let b = replay_baseline(&m, "5009", Some(row), Some(&open)).unwrap();
        assert!(!b.deleted);
        assert_eq!(b.field_versions, None);
        // An object without history keeps the row's flag and values.
        let mut spec = ObjectSpec::new("Case");
        spec.history = HistoryFields::None;
        let d = serde_json::from_value(serde_json::json!({
            "name": "Case", "fields": [{"name": "Id", "type": "id"}, {"name": "Status", "type": "picklist"}]
        }))
        .unwrap();
        let plain = ObjectMapping::build(&d, &spec).unwrap();
        let mut row = b.clone();
        row.deleted = true;
        let b = replay_baseline(&plain, "5009", Some(row), None).unwrap();
        assert!(b.deleted);
        assert_eq!(
            b.history_version,
            Some(4),
            "no history model: left as it is"
        );
    }

    #[test]
    fn update_for_an_unknown_record_requests_a_repair() {
        let changes = vec![(
            "Case".to_string(),
            change("5009", Op::Patch, 10, vec![(1, Value::Text("x".into()))]),
        )];
        let m = mapping();
        let mut mappings = HashMap::new();
        mappings.insert("Case".to_string(), m);
        let planner = Planner {
            mappings: &mappings,
            run_id: "r",
            own_client: "sfsync",
            now_ms: 0,
            deliver: false,
        };
        let mut rows = HashMap::new();
        let mut batch = CuratedBatch::default();
        planner.plan(&mut rows, &changes, &mut batch);
        assert_eq!(batch.repairs.len(), 1);
        assert!(rows[&("Case".to_string(), "5009".to_string())].partial);
        assert_eq!(batch.audit[0].outcome, "repair_requested");
    }
}
