//! Replay: re-application of changes to the curated model, from the raw change log where it
//! retains them and from Salesforce where it does not (`sfsync replay`).
//!
//! A replay selects records — those with a change committed in a time window, those with a
//! change on a channel from a given replay id on, or a list of record ids — and rebuilds each
//! one's current-state row as if its changes had never been applied: the row's versions are
//! reset ([`crate::plan::replay_baseline`]) and its retained changes, from the start of the
//! selection through the head of the applied log, are planned again in log order through the
//! normal planner (quality gates, audit entries marked `replayed`, the replay's run id). Each
//! record is rebuilt in ONE transaction together with the job's position, so streaming between
//! replay steps, a crash or a cancellation never leaves a record half-replayed, and the apply
//! offset is never touched: streaming afterwards stays exactly once. The SCD2 history already
//! holds the versions those changes opened and is never rewritten or added to by a replay.
//!
//! Records the log cannot rebuild are re-read from Salesforce through authoritative repair
//! requests (reason prefix [`REPAIR_REASON_PREFIX`]); a window the log does not reach back to is
//! re-read whole through a Bulk API 2.0 `queryAll`, applied authoritatively. The job's report
//! says which records came from where.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sfsync_core::ReplayId;

/// Reason prefix of the repair requests a replay writes: like reconciliation's, their re-reads
/// replace the rows whatever the rows' versions say.
pub const REPAIR_REASON_PREFIX: &str = "replay: ";

/// Whether a repair request's re-read replaces the row whatever its versions say (a replay's or
/// a reconciliation's), rather than only where it is newer.
pub fn is_authoritative(reason: &str) -> bool {
    reason.starts_with(REPAIR_REASON_PREFIX)
        || reason.starts_with(crate::reconcile::REPAIR_REASON_PREFIX)
}

/// Samples of record ids kept per kind in the report.
pub const SAMPLES: usize = 10;
/// Raw-log entries read per replay step while selecting (between streamed batches).
pub(crate) const INDEX_STEP_ENTRIES: usize = 5_000;
/// Records rebuilt per transaction at most, and changes per transaction (at least one record).
pub(crate) const CHUNK_RECORDS: usize = 200;
pub(crate) const CHUNK_CHANGES: usize = 5_000;
/// Changes of selected records a replay holds the log positions of in memory at most.
pub const MAX_INDEXED_CHANGES: usize = 20_000_000;

/// Which changes a replay re-applies: the job's `params` (JSON). The window of
/// [`ReplaySelection::Window`] (and the optional lower bound of [`ReplaySelection::Ids`]) is the
/// job's `since_ms` / `until_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReplaySelection {
    /// Records with a change committed at or after `since_ms` and before `until_ms` (no upper
    /// bound when absent).
    Window,
    /// Records with a change on `channel` in the log entry carrying `replay_id` or any later one.
    ReplayId {
        channel: String,
        replay_id: ReplayId,
    },
    /// These records (with `since_ms`: their changes committed since then).
    Ids { ids: Vec<String> },
}

impl ReplaySelection {
    /// The job `params` form.
    pub fn to_params(&self) -> String {
        serde_json::to_string(self).expect("a selection serialises")
    }

    /// Reads a job's `params`; the error says what is wrong.
    pub fn from_params(params: &str) -> Result<ReplaySelection, String> {
        let s: ReplaySelection = serde_json::from_str(params)
            .map_err(|e| format!("replay parameters '{params}' do not parse: {e}"))?;
        match &s {
            ReplaySelection::Ids { ids } if ids.is_empty() => {
                Err("replay parameters name no record ids".into())
            }
            ReplaySelection::ReplayId { channel, .. } if channel.is_empty() => {
                Err("replay parameters name no channel".into())
            }
            _ => Ok(s),
        }
    }

    /// For reasons and reports: `since 2026-11-21T09:30:00.000Z until …`, `replay id 0a1b on
    /// /data/AccountChangeEvent`, `3 record ids`.
    pub fn describe(&self, since_ms: Option<i64>, until_ms: Option<i64>) -> String {
        let window = match (since_ms, until_ms) {
            (Some(s), Some(u)) => format!("since {} until {}", ts(s), ts(u)),
            (Some(s), None) => format!("since {}", ts(s)),
            (None, Some(u)) => format!("until {}", ts(u)),
            (None, None) => String::new(),
        };
        match self {
            ReplaySelection::Window => window,
            ReplaySelection::ReplayId { channel, replay_id } => {
                format!("from replay id {replay_id} on {channel}")
            }
            ReplaySelection::Ids { ids } => {
                let what = if ids.len() == 1 {
                    format!("record {}", ids[0])
                } else {
                    format!("{} record ids", ids.len())
                };
                if window.is_empty() {
                    what
                } else {
                    format!("{what} {window}")
                }
            }
        }
    }
}

/// RFC 3339 in UTC with milliseconds.
pub fn ts(ms: i64) -> String {
    crate::jobs::soql_datetime(ms)
}

/// A replay's committed position and running totals: stored as the job's locator, committed
/// with the rows of each step, so a resumed replay continues after the last rebuilt record and
/// its report covers every session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayProgress {
    /// First raw-log offset of the selection (inclusive).
    pub start: u64,
    /// Last raw-log offset whose changes select records: the applied head when the job began.
    /// (Selected records' changes after it are replayed too, through the head of the moment.)
    pub end: u64,
    /// Records are rebuilt in id order; the last one committed.
    pub after: Option<String>,
    pub log_records: u64,
    pub log_changes: u64,
    pub salesforce_records: u64,
    pub held_records: u64,
    pub sample_salesforce: Vec<String>,
    pub sample_held: Vec<String>,
    /// GAP_OVERFLOW events in the selection (their records' changes are not in the log).
    pub overflows: u64,
    /// Log entries that do not decode (their records are re-read from Salesforce).
    pub undecodable: u64,
}

/// Marks a locator as a replay position (a Bulk locator never starts with `{`).
impl ReplayProgress {
    pub fn to_locator(&self) -> String {
        serde_json::to_string(self).expect("progress serialises")
    }

    pub fn from_locator(locator: &str) -> Option<ReplayProgress> {
        locator
            .starts_with('{')
            .then(|| serde_json::from_str(locator).ok())
            .flatten()
    }

    pub(crate) fn note_salesforce(&mut self, id: &str) {
        self.salesforce_records += 1;
        if self.sample_salesforce.len() < SAMPLES {
            self.sample_salesforce.push(id.to_string());
        }
    }

    pub(crate) fn note_held(&mut self, id: &str) {
        self.held_records += 1;
        if self.sample_held.len() < SAMPLES {
            self.sample_held.push(id.to_string());
        }
    }
}

/// A replay's outcome, in the job's report (JSON) and its run record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayReport {
    pub selection: String,
    /// `raw_log`, `salesforce`, `raw_log+salesforce`, or `none` (nothing selected).
    pub source: String,
    /// Raw-log offsets whose changes selected records (none when the log was not used).
    pub raw_log_from_offset: Option<u64>,
    pub raw_log_to_offset: Option<u64>,
    /// Records rebuilt from the raw log, and the changes re-applied to them.
    pub raw_log_records: u64,
    pub raw_log_changes: u64,
    /// Records re-read from Salesforce (repair requests, or rows of a Bulk re-read).
    pub salesforce_records: u64,
    /// Why Salesforce was asked for the whole window, when it was.
    pub salesforce_window_reason: Option<String>,
    pub sample_salesforce: Vec<String>,
    /// Records left as they are because changes of theirs wait in the quarantine (release or
    /// discard those first, then replay them).
    pub held_records: u64,
    pub sample_held: Vec<String>,
    pub notes: Vec<String>,
}

impl ReplayReport {
    /// The report of a replay that went through the raw log.
    pub fn from_progress(selection: String, p: &ReplayProgress) -> ReplayReport {
        let mut notes = Vec::new();
        if p.overflows > 0 {
            notes.push(format!(
                "{} GAP_OVERFLOW event(s) in the selection: changes they stand for are not in the \
                 raw log (their re-sync read them from Salesforce); replay the window with a time \
                 older than the raw log, or run `sfsync reconcile`, to re-read them",
                p.overflows
            ));
        }
        if p.undecodable > 0 {
            notes.push(format!(
                "{} raw-log entr{} did not decode; their records were re-read from Salesforce",
                p.undecodable,
                if p.undecodable == 1 { "y" } else { "ies" }
            ));
        }
        if p.start > p.end {
            notes.push("no applied change in the raw log matches the selection".into());
        }
        ReplayReport {
            selection,
            source: source(p.log_records, p.salesforce_records),
            raw_log_from_offset: Some(p.start),
            raw_log_to_offset: Some(p.end),
            raw_log_records: p.log_records,
            raw_log_changes: p.log_changes,
            salesforce_records: p.salesforce_records,
            salesforce_window_reason: None,
            sample_salesforce: p.sample_salesforce.clone(),
            held_records: p.held_records,
            sample_held: p.sample_held.clone(),
            notes,
        }
    }
}

fn source(log: u64, salesforce: u64) -> String {
    match (log > 0, salesforce > 0) {
        (true, true) => "raw_log+salesforce",
        (true, false) => "raw_log",
        (false, true) => "salesforce",
        (false, false) => "none",
    }
    .into()
}

/// Where one record of a replay stands while its changes are looked up.
#[derive(Debug, Clone, Default)]
pub(crate) struct Indexed {
    /// Raw-log offsets of its changes (ascending).
    pub offsets: Vec<u64>,
    pub selected: bool,
}

/// The selection of a running replay, built in memory by reading the object's raw log from the
/// selection's start (in steps), then kept up to date with what streaming applies meanwhile.
/// Rebuilt after a restart from the committed [`ReplayProgress`].
pub(crate) struct ReplayRun {
    pub selection: ReplaySelection,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub progress: ReplayProgress,
    /// Next raw-log offset to look at.
    pub next_offset: u64,
    /// Record id → its changes. While selecting, every record seen (a record may be selected
    /// by a later change than its first); afterwards the selected ones only.
    pub index: HashMap<String, Indexed>,
    /// Selected records in id order (after the selection is complete), from `position` on to do.
    pub order: Vec<String>,
    pub position: usize,
    pub selecting: bool,
    pub indexed_changes: usize,
    /// Consecutive failed steps.
    pub failures: u32,
    /// Ids of an `Ids` selection.
    wanted: HashSet<String>,
}

impl ReplayRun {
    pub fn new(
        selection: ReplaySelection,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        progress: ReplayProgress,
    ) -> ReplayRun {
        let wanted = match &selection {
            ReplaySelection::Ids { ids } => ids.iter().cloned().collect(),
            _ => HashSet::new(),
        };
        ReplayRun {
            next_offset: progress.start,
            selection,
            since_ms,
            until_ms,
            progress,
            index: HashMap::new(),
            order: Vec::new(),
            position: 0,
            selecting: true,
            indexed_changes: 0,
            failures: 0,
            wanted,
        }
    }

    /// Whether a change of `id` in the entry at `channel`, committed at `commit_ms`, selects
    /// the record.
    pub fn selects(&self, channel: &str, commit_ms: i64, id: &str) -> bool {
        match &self.selection {
            ReplaySelection::Window => {
                self.since_ms.is_none_or(|s| commit_ms >= s)
                    && self.until_ms.is_none_or(|u| commit_ms < u)
            }
            ReplaySelection::ReplayId { channel: c, .. } => c == channel,
            ReplaySelection::Ids { .. } => self.wanted.contains(id),
        }
    }

    /// Records the change of `ids` at `offset` (a log entry of the replayed object). While
    /// selecting, `selecting_entry` says whether the entry selects its records; afterwards
    /// only records already selected are followed. Returns `false` when the index would grow
    /// past [`MAX_INDEXED_CHANGES`].
    pub fn note(&mut self, offset: u64, ids: &[String], selects: bool) -> bool {
        for id in ids {
            if self.selecting {
                if let ReplaySelection::Ids { .. } = self.selection {
                    if !self.wanted.contains(id) {
                        continue;
                    }
                }
                let e = self.index.entry(id.clone()).or_default();
                if e.offsets.last() != Some(&offset) {
                    e.offsets.push(offset);
                    self.indexed_changes += 1;
                }
                e.selected |= selects;
            } else if let Some(e) = self.index.get_mut(id) {
                if e.offsets.last().is_none_or(|l| *l < offset) {
                    e.offsets.push(offset);
                    self.indexed_changes += 1;
                }
            }
        }
        self.indexed_changes <= MAX_INDEXED_CHANGES
    }

    /// Ends the selection: keeps the selected records (every requested id of an `Ids`
    /// selection, with or without changes), ordered by id, after the committed position.
    /// Returns the changes and records to do (for the progress bar).
    pub fn finish_selecting(&mut self) -> (i64, i64) {
        self.selecting = false;
        if let ReplaySelection::Ids { ids } = &self.selection {
            for id in ids {
                let e = self.index.entry(id.clone()).or_default();
                e.selected = true;
            }
        }
        self.index.retain(|_, e| e.selected);
        self.indexed_changes = self.index.values().map(|e| e.offsets.len()).sum();
        let after = self.progress.after.clone();
        let order: BTreeSet<String> = self
            .index
            .keys()
            .filter(|id| after.as_ref().is_none_or(|a| *id > a))
            .cloned()
            .collect();
        self.order = order.into_iter().collect();
        self.position = 0;
        let changes: usize = self
            .order
            .iter()
            .map(|id| self.index[id].offsets.len())
            .sum();
        (changes as i64, self.order.len() as i64)
    }

    /// The next records to rebuild in one transaction: up to [`CHUNK_RECORDS`] records and
    /// about [`CHUNK_CHANGES`] changes (always at least one record). Empty when done.
    pub fn next_chunk(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut changes = 0;
        for id in &self.order[self.position..] {
            let n = self.index.get(id).map_or(0, |e| e.offsets.len());
            if !out.is_empty() && (out.len() >= CHUNK_RECORDS || changes + n > CHUNK_CHANGES) {
                break;
            }
            changes += n;
            out.push(id.clone());
        }
        out
    }

    /// The records of a committed chunk are done: forget them.
    pub fn chunk_done(&mut self, chunk: &[String]) {
        for id in chunk {
            if let Some(e) = self.index.remove(id) {
                self.indexed_changes -= e.offsets.len();
            }
        }
        self.position += chunk.len();
        if let Some(last) = chunk.last() {
            self.progress.after = Some(last.clone());
        }
    }

    #[cfg(test)]
    pub fn done(&self) -> bool {
        !self.selecting && self.position >= self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn params_round_trip_and_bad_params_are_named() {
        for s in [
            ReplaySelection::Window,
            ReplaySelection::ReplayId {
                channel: "/data/AccountChangeEvent".into(),
                replay_id: ReplayId::from_bytes(vec![0, 0xff, 7]),
            },
            ReplaySelection::Ids {
                ids: ids(&["001A", "001B"]),
            },
        ] {
            assert_eq!(ReplaySelection::from_params(&s.to_params()).unwrap(), s);
        }
        assert_eq!(
            ReplaySelection::ReplayId {
                channel: "/data/X".into(),
                replay_id: ReplayId::from_bytes(vec![0x0a, 0xbc]),
            }
            .to_params(),
            r#"{"from":"replay_id","channel":"/data/X","replay_id":"0abc"}"#
        );
        for (bad, says) in [
            ("{}", "do not parse"),
            (r#"{"from":"nope"}"#, "do not parse"),
            (r#"{"from":"ids","ids":[]}"#, "no record ids"),
            (
                r#"{"from":"replay_id","channel":"","replay_id":"00"}"#,
                "no channel",
            ),
            (
                r#"{"from":"replay_id","channel":"/c","replay_id":"xyz"}"#,
                "do not parse",
            ),
            (r#"{"from":"ids","ids":["a"],"extra":1}"#, "do not parse"),
        ] {
            let err = ReplaySelection::from_params(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert_eq!(
            ReplaySelection::Window.describe(Some(0), Some(1000)),
            "since 1970-01-01T00:00:00.000Z until 1970-01-01T00:00:01.000Z"
        );
        assert_eq!(
            ReplaySelection::Ids {
                ids: ids(&["001A"])
            }
            .describe(None, None),
            "record 001A"
        );
    }

    #[test]
    fn progress_is_a_locator_a_bulk_locator_is_not() {
        let p = ReplayProgress {
            start: 5,
            end: 9,
            after: Some("001B".into()),
            log_records: 2,
            ..Default::default()
        };
        assert_eq!(ReplayProgress::from_locator(&p.to_locator()), Some(p));
        assert_eq!(ReplayProgress::from_locator("MTAwMDA"), None);
        assert_eq!(ReplayProgress::from_locator("null"), None);
        assert_eq!(ReplayProgress::from_locator("{broken"), None);
    }

    #[test]
    fn window_selects_records_and_follows_them_to_the_head() {
        let mut r = ReplayRun::new(
            ReplaySelection::Window,
            Some(100),
            Some(200),
            ReplayProgress {
                start: 1,
                end: 6,
                ..Default::default()
            },
        );
        // A before the window, in it, after it; B only after it; C in it.
        let log = [
            (1, 50, "A"),
            (2, 150, "A"),
            (3, 150, "C"),
            (4, 250, "A"),
            (5, 250, "B"),
        ];
        for (offset, ts, id) in log {
            let sel = r.selects("/data/X", ts, id);
            assert!(r.note(offset, &ids(&[id]), sel));
        }
        assert_eq!(r.finish_selecting(), (4, 2));
        assert_eq!(r.order, ids(&["A", "C"]));
        // Streaming applied more meanwhile: followed for selected records only.
        r.note(7, &ids(&["A", "B"]), false);
        assert_eq!(r.index["A"].offsets, vec![1, 2, 4, 7]);
        assert!(!r.index.contains_key("B"));
        assert_eq!(r.next_chunk(), ids(&["A", "C"]));
        r.chunk_done(&ids(&["A"]));
        assert_eq!(r.progress.after.as_deref(), Some("A"));
        assert_eq!(r.next_chunk(), ids(&["C"]));
        r.chunk_done(&ids(&["C"]));
        assert!(r.done());
    }

    #[test]
    fn ids_selection_keeps_every_id_and_resumes_after_the_committed_one() {
        let mut r = ReplayRun::new(
            ReplaySelection::Ids {
                ids: ids(&["B", "A", "Z"]),
            },
            None,
            None,
            ReplayProgress {
                start: 0,
                end: 10,
                after: Some("A".into()),
                ..Default::default()
            },
        );
        for (offset, id) in [(1, "A"), (2, "X"), (3, "B")] {
            let sel = r.selects("/c", 0, id);
            r.note(offset, &ids(&[id]), sel);
        }
        assert!(!r.index.contains_key("X"), "not asked for: never indexed");
        assert_eq!(r.finish_selecting(), (1, 2));
        assert_eq!(r.order, ids(&["B", "Z"]), "Z has no retained change");
        assert!(r.index["Z"].offsets.is_empty());
    }

    #[test]
    fn replay_id_selection_is_by_channel_and_chunks_are_bounded() {
        let mut r = ReplayRun::new(
            ReplaySelection::ReplayId {
                channel: "/data/A".into(),
                replay_id: ReplayId::from_bytes(vec![1]),
            },
            None,
            None,
            ReplayProgress::default(),
        );
        assert!(r.selects("/data/A", 0, "x"));
        assert!(!r.selects("/data/B", 0, "x"));
        for i in 0..(CHUNK_RECORDS + 5) {
            r.note(i as u64 + 1, &[format!("{i:05}")], true);
        }
        // One record with more changes than a chunk holds still makes a chunk of its own.
        for o in 0..(CHUNK_CHANGES + 1) {
            r.note(1_000 + o as u64, &ids(&["99999"]), true);
        }
        r.finish_selecting();
        let first = r.next_chunk();
        assert_eq!(first.len(), CHUNK_RECORDS);
        r.chunk_done(&first);
        let second = r.next_chunk();
        assert_eq!(
            second.len(),
            5,
            "the big record waits for a chunk of its own"
        );
        r.chunk_done(&second);
        assert_eq!(r.next_chunk(), ids(&["99999"]));
    }

    #[test]
    fn authoritative_reasons() {
        assert!(is_authoritative("replay: no retained change"));
        assert!(is_authoritative("reconcile: stale"));
        assert!(!is_authoritative("GAP_UPDATE"));
        assert!(!is_authoritative("update_for_unknown_record"));
    }
}
