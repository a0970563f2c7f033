//! Data-quality state: the quarantine (changes held before merge, with their reason and the
//! original change) and data-quality failure counts and samples per run, object and rule.
//!
//! A held change is written in the same transaction as the batch that held it, and its release
//! (or a change of its status) in the same transaction as the curated rows the release wrote:
//! nothing is applied twice or lost between the two. Stored failures per rule are capped by the
//! apply stage; what goes over the cap is counted in [`DqCount::over_cap`], and a held change
//! over the cap keeps only its raw-log offset (the raw log holds the change itself).

use serde::{Deserialize, Serialize};

/// Where a quarantined change stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineStatus {
    /// Waiting: a rule failed, or its parent record has not arrived.
    Held,
    /// An operator asked for a release: re-checked and applied if it passes.
    ReleaseRequested,
    /// An operator asked for a release without checks.
    ForceRequested,
    /// Applied through the normal apply path.
    Released,
    /// An operator decided it is never applied (kept for the record).
    Discarded,
}

impl QuarantineStatus {
    pub const ALL: [QuarantineStatus; 5] = [
        QuarantineStatus::Held,
        QuarantineStatus::ReleaseRequested,
        QuarantineStatus::ForceRequested,
        QuarantineStatus::Released,
        QuarantineStatus::Discarded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineStatus::Held => "held",
            QuarantineStatus::ReleaseRequested => "release_requested",
            QuarantineStatus::ForceRequested => "force_requested",
            QuarantineStatus::Released => "released",
            QuarantineStatus::Discarded => "discarded",
        }
    }

    pub fn parse(s: &str) -> Option<QuarantineStatus> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Not applied and not discarded: the record's later changes wait behind it.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            QuarantineStatus::Held
                | QuarantineStatus::ReleaseRequested
                | QuarantineStatus::ForceRequested
        )
    }
}

/// A change the apply stage holds instead of merging (written with its batch).
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineEntry {
    pub object: String,
    pub record_id: String,
    /// The rule that held it (`Email.regex`, `AccountId.reference`, `record.held`).
    pub rule: String,
    /// Why, in words (values of PII fields are never quoted).
    pub reason: String,
    /// The parent record it waits for (referential integrity), as (object, id).
    pub parent: Option<(String, String)>,
    pub event_key: String,
    /// The raw-log entry it came from (none for a re-read snapshot).
    pub log_offset: Option<u64>,
    pub commit_timestamp_ms: i64,
    /// The change as the apply stage planned it (serialised by the pipeline); `None` over the
    /// per-rule cap, when the raw log at `log_offset` holds it. Compressed, and sealed when the
    /// object has PII fields.
    pub change: Option<Vec<u8>>,
    /// When a late-parent hold raises its alert.
    pub alert_after_ms: Option<i64>,
    pub run_id: String,
}

/// A quarantined change as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineRecord {
    pub id: i64,
    pub entry: QuarantineEntry,
    pub status: QuarantineStatus,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Times it was checked (held, re-checked on a release or a parent's arrival).
    pub attempts: i64,
    pub alerted_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    pub resolved_by: Option<String>,
    pub note: Option<String>,
}

/// A change of status written with a batch: a release applied (its rows are in the same
/// batch), or a re-check that still fails.
#[derive(Debug, Clone, PartialEq)]
pub enum QuarantineUpdate {
    Released {
        id: i64,
    },
    StillHeld {
        id: i64,
        rule: String,
        reason: String,
        parent: Option<(String, String)>,
    },
}

/// Which quarantined changes to read; every given condition must hold.
#[derive(Debug, Clone, Default)]
pub struct QuarantineFilter {
    pub ids: Vec<i64>,
    pub object: Option<String>,
    /// With `object`: only these records.
    pub record_ids: Vec<String>,
    /// Waiting for one of these parents: (parent object, ids).
    pub parent: Option<(String, Vec<String>)>,
    /// Any of these statuses (empty: any status).
    pub statuses: Vec<QuarantineStatus>,
    /// Alert due: `alert_after_ms` before this and no alert raised yet.
    pub alert_due_before_ms: Option<i64>,
    /// At most this many, oldest first (0: no limit).
    pub limit: usize,
}

impl QuarantineFilter {
    /// The open changes (held, release requested or force requested) of `ids` of `object`.
    pub fn open_of(object: &str, ids: &[String]) -> QuarantineFilter {
        QuarantineFilter {
            object: Some(object.to_string()),
            record_ids: ids.to_vec(),
            statuses: open_statuses(),
            ..Default::default()
        }
    }
}

pub fn open_statuses() -> Vec<QuarantineStatus> {
    QuarantineStatus::ALL
        .into_iter()
        .filter(|s| s.is_open())
        .collect()
}

/// An operator's decision on a quarantined change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineAction {
    /// Re-check and apply if it passes (the running pipeline carries it out).
    Release,
    /// Apply without checks (the running pipeline carries it out).
    ForceRelease,
    /// Never apply; the record's changes held behind it are re-checked.
    Discard,
}

/// What [`crate::Warehouse::quarantine_act`] did to one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuarantineActOutcome {
    Done(QuarantineStatus),
    NotFound,
    /// Already released or discarded.
    AlreadyResolved(QuarantineStatus),
}

/// One failed check kept as a sample (warn-severity failures; held changes are their own
/// record in the quarantine).
#[derive(Debug, Clone, PartialEq)]
pub struct DqFailure {
    pub run_id: String,
    pub object: String,
    pub record_id: String,
    pub rule: String,
    pub severity: String,
    pub field: String,
    /// The failing value as text; `None` for PII fields (never stored in plaintext).
    pub value: Option<String>,
    pub message: String,
    pub event_key: String,
}

/// Failure counts of one rule of one object in one run (added to what is stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DqCount {
    pub run_id: String,
    pub object: String,
    pub rule: String,
    pub severity: String,
    /// Checks that failed.
    pub failed: u64,
    /// Failures stored in full (samples, held changes with their change).
    pub stored: u64,
    /// Failures over the rule's cap: counted only (a held one keeps its raw-log offset).
    pub over_cap: u64,
}
