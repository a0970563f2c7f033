//! The writeback outbox and write ledger: updates other systems want made in Salesforce, kept
//! durably from the moment they are accepted until their CDC echo confirms them.
//!
//! Guarantees: [`WriteLedger::submit_writes`] commits before it returns, and is idempotent per
//! (source system, idempotency key): a repeated submission returns the write already stored,
//! never a second one. Rows other systems INSERT into the `outbox` table directly are taken into
//! the ledger by [`WriteLedger::ingest_outbox`] exactly once each; a row that fails validation
//! becomes a `rejected` write whose reason names the column, so nothing inserted is ever lost.
//! Every state change goes through [`WriteState::can_become`]: an illegal transition is an error
//! and nothing of its call is written. Each transition is recorded with its time in
//! `write_transitions`. A claimed batch of pending writes is handed to exactly one claimer.
//!
//! PII: whenever the store has a keyring, a write's fields are stored sealed (AES-256-GCM, AAD
//! `write.<object>`), and so is a conflict's detail (it quotes both sides' values, in `reason`
//! and the transition), also a rejected outbox row's fields, and an ingested outbox row's `fields` column
//! is cleared (the ledger holds them); writes to an object with PII columns are refused without
//! a keyring. Reads return them opened.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::ChangeLog;

/// Where a write stands. See [`WriteState::can_become`] for the legal transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteState {
    /// Accepted, waiting for delivery (or back after a retryable error, or a resolved conflict).
    Pending,
    /// Claimed by a deliverer and (possibly) sent to Salesforce.
    Sent,
    /// Salesforce accepted it; the record id is known.
    Applied,
    /// Its CDC echo arrived: the change is visible in the curated model.
    Confirmed,
    /// Salesforce changed a field since the version the writer saw; a person decides.
    Conflict,
    /// Refused by policy or validation (final), with the reason.
    Rejected,
    /// Dead letter: Salesforce refused it permanently, with its error.
    Failed,
}

impl WriteState {
    pub const ALL: [WriteState; 7] = [
        WriteState::Pending,
        WriteState::Sent,
        WriteState::Applied,
        WriteState::Confirmed,
        WriteState::Conflict,
        WriteState::Rejected,
        WriteState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WriteState::Pending => "pending",
            WriteState::Sent => "sent",
            WriteState::Applied => "applied",
            WriteState::Confirmed => "confirmed",
            WriteState::Conflict => "conflict",
            WriteState::Rejected => "rejected",
            WriteState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<WriteState> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The legal transitions (pure):
    ///
    /// - pending → sent (claimed), conflict, rejected (policy)
    /// - sent → applied, failed (dead letter), conflict, rejected (the deliverer decides the
    ///   policy when it has claimed the write), pending (retryable error: back in line)
    /// - applied → confirmed (the echo)
    /// - conflict → pending (a person chose to apply), rejected (a person discarded it)
    /// - failed → pending (redrive), rejected (discard)
    ///
    /// `confirmed` and `rejected` are final.
    pub fn can_become(self, next: WriteState) -> bool {
        use WriteState::*;
        matches!(
            (self, next),
            (Pending, Sent | Conflict | Rejected)
                | (Sent, Applied | Failed | Conflict | Rejected | Pending)
                | (Applied, Confirmed)
                | (Conflict, Pending | Rejected)
                | (Failed, Pending | Rejected)
        )
    }
}

/// Which record a write targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteTarget {
    /// An existing record by its Salesforce Id.
    RecordId(String),
    /// Upsert by an External Id field (`Case_Ref__c` = `C-1`).
    ExternalId { field: String, value: String },
}

/// A write as submitted through the store API.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWrite {
    /// The writing system (`case_mgmt`).
    pub source_system: String,
    /// Unique per source system; a repeat returns the stored write.
    pub idempotency_key: String,
    /// Object API name (`Case`).
    pub object: String,
    pub target: WriteTarget,
    /// Field API name → new value (JSON `null` sets a null).
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// The version of the record the writer last saw (its SystemModstamp or our `_sf_commit_ms`,
    /// epoch ms); `None` when the writer saw none (a create, or a blind write).
    pub seen_version_ms: Option<i64>,
}

/// What became of one submitted write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Stored as a new pending write.
    Accepted { id: i64 },
    /// The (source system, idempotency key) was already stored: this is that write.
    Duplicate { id: i64 },
    /// Invalid; nothing stored.
    Rejected { reason: String },
}

/// How a write entered the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteOrigin {
    Api,
    Outbox,
}

impl WriteOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteOrigin::Api => "api",
            WriteOrigin::Outbox => "outbox",
        }
    }

    pub fn parse(s: &str) -> Option<WriteOrigin> {
        [WriteOrigin::Api, WriteOrigin::Outbox]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

/// A write in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerWrite {
    pub id: i64,
    pub source_system: String,
    pub idempotency_key: String,
    pub origin: WriteOrigin,
    /// The outbox row it came from.
    pub outbox_id: Option<i64>,
    /// Empty when an outbox row lacked it (then the write is rejected).
    pub object: String,
    pub external_id_field: Option<String>,
    pub external_id: Option<String>,
    /// Given by the writer, or learnt when Salesforce applied it.
    pub record_id: Option<String>,
    /// The fields as JSON text, as given (for a rejected outbox row, whatever it held).
    pub fields: String,
    pub seen_version_ms: Option<i64>,
    pub state: WriteState,
    /// Deliveries started (claims).
    pub attempts: i64,
    pub last_error: Option<String>,
    /// Why it was rejected or is in conflict.
    pub reason: Option<String>,
    /// The claimer that holds (or last held) it.
    pub claimed_by: Option<String>,
    /// Event key of the CDC echo that confirmed it.
    pub echo_event_key: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// One recorded state change of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteTransition {
    /// `None` for the first entry (the write was stored).
    pub from: Option<WriteState>,
    pub to: WriteState,
    pub at_ms: i64,
    /// Error, reason, record id or note of the change.
    pub detail: Option<String>,
    /// Who made the change when a person did (a conflict resolved, a redrive, a discard).
    pub actor: Option<String>,
    /// Why, in the person's words (empty notes are not stored).
    pub note: Option<String>,
}

/// An outcome to record for a write (moves it to a new state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// sent → applied: Salesforce accepted it as this record.
    Applied { record_id: String },
    /// sent → pending: a retryable error (lock, 5xx); it goes back in line.
    Retry { error: String },
    /// sent → failed: a dead letter with Salesforce's error.
    Failed { error: String },
    /// pending|sent → conflict, with what conflicts.
    Conflict { detail: String },
    /// pending|sent|conflict|failed → rejected, with the reason.
    Rejected { reason: String },
    /// applied → confirmed by the CDC echo with this event key.
    Confirmed { event_key: String },
    /// conflict|failed → pending (a person resolved it, or a redrive), with a note.
    Requeue { note: String },
}

impl WriteOutcome {
    pub fn target(&self) -> WriteState {
        match self {
            WriteOutcome::Applied { .. } => WriteState::Applied,
            WriteOutcome::Retry { .. } | WriteOutcome::Requeue { .. } => WriteState::Pending,
            WriteOutcome::Failed { .. } => WriteState::Failed,
            WriteOutcome::Conflict { .. } => WriteState::Conflict,
            WriteOutcome::Rejected { .. } => WriteState::Rejected,
            WriteOutcome::Confirmed { .. } => WriteState::Confirmed,
        }
    }

    /// The text recorded with the transition.
    pub fn detail(&self) -> &str {
        match self {
            WriteOutcome::Applied { record_id } => record_id,
            WriteOutcome::Retry { error } | WriteOutcome::Failed { error } => error,
            WriteOutcome::Conflict { detail } => detail,
            WriteOutcome::Rejected { reason } => reason,
            WriteOutcome::Confirmed { event_key } => event_key,
            WriteOutcome::Requeue { note } => note,
        }
    }

    /// The state it may be recorded from (legal only if [`WriteState::can_become`]).
    pub fn allowed_from(&self, from: WriteState) -> bool {
        from.can_become(self.target())
            && !(matches!(self, WriteOutcome::Retry { .. }) && from != WriteState::Sent)
            && !(matches!(self, WriteOutcome::Requeue { .. }) && from == WriteState::Sent)
    }
}

/// What a write in `conflict` conflicts with, stored as JSON in its `reason` (and the transition
/// detail) so a person, the CLI and the API can show both sides and resolve it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ConflictDetail {
    /// The fields Salesforce changed after the version the writer saw.
    pub fields: Vec<FieldConflict>,
    /// Fields of the write that do not conflict themselves but wait with it (`manual`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<String>,
}

/// One conflicting field: Salesforce's current value against the writer's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldConflict {
    /// Field API name.
    pub field: String,
    /// Salesforce's current value as JSON (`null`: null).
    pub salesforce: serde_json::Value,
    /// The value the writer asked for.
    pub writer: serde_json::Value,
    /// Commit time of Salesforce's change (epoch ms).
    pub salesforce_changed_ms: i64,
}

impl ConflictDetail {
    /// The JSON text stored with the write.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a conflict detail serialises")
    }

    /// Parses a stored detail; `None` when the text is not one (older or hand-written reasons).
    pub fn parse(text: &str) -> Option<ConflictDetail> {
        serde_json::from_str(text).ok()
    }
}

/// How a person resolves a write in `conflict` (see [`WriteLedger::resolve_conflict`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// Salesforce's values stand: the write is rejected (final).
    KeepSalesforce,
    /// The writer's values win: the write goes back to pending with its seen version raised to
    /// the newest Salesforce change of its conflict, so delivery's conflict check passes unless
    /// Salesforce changes a field again after that (which is then a new conflict).
    TakeWriter,
    /// The person's values: these fields of the write are replaced (only fields the write
    /// carries may be named), the seen version raised as for `TakeWriter`, and the write goes
    /// back to pending.
    Value(serde_json::Map<String, serde_json::Value>),
}

impl Resolution {
    pub fn as_str(&self) -> &'static str {
        match self {
            Resolution::KeepSalesforce => "keep_salesforce",
            Resolution::TakeWriter => "take_writer",
            Resolution::Value(_) => "value",
        }
    }
}

/// What resolving a conflict changes (pure; see [`plan_resolution`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ResolutionPlan {
    /// `rejected` or `pending`.
    pub to: WriteState,
    /// The write's new fields as JSON text (plaintext: the store seals them), when they change.
    pub fields: Option<String>,
    /// The new seen version, when it is raised.
    pub seen_version_ms: Option<i64>,
    /// The new `reason` (for `rejected`), when it changes.
    pub reason: Option<String>,
    /// What the transition records.
    pub detail: String,
}

/// Plans a conflict's resolution (pure): checks the write is in `conflict`, that named fields
/// are fields of the write, and that the seen version can be raised (the stored reason is a
/// [`ConflictDetail`]). Each error says why; nothing is to be written then.
pub fn plan_resolution(
    w: &LedgerWrite,
    resolution: &Resolution,
    actor: &str,
    note: &str,
) -> std::result::Result<ResolutionPlan, String> {
    if actor.trim().is_empty() {
        return Err("the person resolving it must be named".into());
    }
    if w.state != WriteState::Conflict {
        return Err(format!(
            "write {} is {}, not in conflict: only a write in conflict can be resolved",
            w.id,
            w.state.as_str()
        ));
    }
    if let Resolution::KeepSalesforce = resolution {
        return Ok(ResolutionPlan {
            to: WriteState::Rejected,
            fields: None,
            seen_version_ms: None,
            reason: Some(match stored_note(note) {
                Some(n) => {
                    format!("conflict resolved: Salesforce's value was kept by {actor}: {n}")
                }
                None => format!("conflict resolved: Salesforce's value was kept by {actor}"),
            }),
            detail: format!("conflict resolved by {actor}: Salesforce's value kept"),
        });
    }
    let conflict = w
        .reason
        .as_deref()
        .and_then(ConflictDetail::parse)
        .filter(|c| !c.fields.is_empty())
        .ok_or_else(|| {
            format!(
                "write {} has no readable conflict detail, so the Salesforce version to accept                  is unknown: keep Salesforce's value or discard it",
                w.id
            )
        })?;
    let newest = conflict
        .fields
        .iter()
        .map(|f| f.salesforce_changed_ms)
        .max()
        .unwrap_or_default();
    let seen = w.seen_version_ms.map_or(newest, |s| s.max(newest));
    match resolution {
        Resolution::KeepSalesforce => unreachable!("handled above"),
        Resolution::TakeWriter => Ok(ResolutionPlan {
            to: WriteState::Pending,
            fields: None,
            seen_version_ms: Some(seen),
            reason: None,
            detail: format!(
                "conflict resolved by {actor}: the writer's values taken (seen version raised                  to {seen})"
            ),
        }),
        Resolution::Value(values) => {
            if values.is_empty() {
                return Err("a value resolution must set at least one field".into());
            }
            let mut fields = match serde_json::from_str::<serde_json::Value>(&w.fields) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => {
                    return Err(format!(
                        "write {} has fields that are not a JSON object: it cannot be edited",
                        w.id
                    ))
                }
            };
            let mut named = Vec::with_capacity(values.len());
            for (field, value) in values {
                // Salesforce field names are case-insensitive: `status` names `Status`.
                let Some(key) = fields
                    .keys()
                    .find(|k| k.eq_ignore_ascii_case(field))
                    .cloned()
                else {
                    return Err(format!(
                        "field '{field}' is not a field of write {} (its fields: {})",
                        w.id,
                        fields.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                };
                fields.insert(key.clone(), value.clone());
                named.push(key);
            }
            Ok(ResolutionPlan {
                to: WriteState::Pending,
                fields: Some(serde_json::Value::Object(fields).to_string()),
                seen_version_ms: Some(seen),
                reason: None,
                detail: format!(
                    "conflict resolved by {actor}: values set for {} (seen version raised to                      {seen})",
                    named.join(", ")
                ),
            })
        }
    }
}

/// An operator's action on dead-letter or conflicted writes (see [`WriteLedger::redrive_writes`]
/// and [`WriteLedger::discard_writes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteAction {
    /// failed → pending: delivered again (attempts kept).
    Redrive,
    /// failed|conflict → rejected: never delivered (kept, with who decided and why).
    Discard,
}

impl WriteAction {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteAction::Redrive => "redrive",
            WriteAction::Discard => "discard",
        }
    }

    /// The state it moves a write to.
    pub fn target(self) -> WriteState {
        match self {
            WriteAction::Redrive => WriteState::Pending,
            WriteAction::Discard => WriteState::Rejected,
        }
    }

    /// The states it may be taken from.
    pub fn allowed_from(self, from: WriteState) -> bool {
        match self {
            WriteAction::Redrive => from == WriteState::Failed,
            WriteAction::Discard => matches!(from, WriteState::Failed | WriteState::Conflict),
        }
    }

    /// What the transition records.
    pub fn detail(self, actor: &str) -> String {
        match self {
            WriteAction::Redrive => format!("redriven by {actor}"),
            WriteAction::Discard => format!("discarded by {actor}"),
        }
    }
}

/// What an action did to one write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum WriteActOutcome {
    /// Moved from `from` to the action's state.
    Done {
        from: WriteState,
        to: WriteState,
    },
    NotFound,
    /// Its state does not allow the action; nothing was written for it.
    NotAllowed {
        state: WriteState,
    },
}

/// Which writes to list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteFilter {
    /// Any of these states (empty: all).
    pub states: Vec<WriteState>,
    pub object: Option<String>,
    pub source_system: Option<String>,
    /// Writes to any of these Salesforce record ids (empty: any).
    pub record_ids: Vec<String>,
    /// Newest first when set; oldest first otherwise.
    pub newest_first: bool,
    pub limit: usize,
}

/// Writes that go to Salesforce in the same calls: one object, updated by Salesforce Id
/// (`external_id_field` None; writes naming neither an Id nor an External Id are here too, and
/// fail at delivery) or upserted on one External Id field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriteGroup {
    pub object: String,
    pub external_id_field: Option<String>,
}

/// What [`WriteLedger::pending_groups`] saw of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingGroup {
    pub group: WriteGroup,
    /// Pending writes of the group (among the oldest `cap` pending writes).
    pub count: usize,
    /// Of those, the ones accepted at or before the due time asked about.
    pub due: usize,
    /// When the oldest of them was accepted (ms since the epoch).
    pub oldest_created_ms: i64,
}

/// What one [`WriteLedger::ingest_outbox`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxIngest {
    /// Rows that became pending writes.
    pub accepted: u64,
    /// Rows whose (source system, idempotency key) was already in the ledger.
    pub duplicates: u64,
    /// Rows that failed validation: stored as rejected writes with the reason.
    pub rejected: u64,
}

/// An outbox row as other systems wrote it (all columns but the key ones may be NULL).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutboxRow {
    pub id: i64,
    pub source_system: String,
    pub idempotency_key: String,
    pub object: Option<String>,
    pub external_id_field: Option<String>,
    pub external_id: Option<String>,
    pub record_id: Option<String>,
    pub fields: Option<String>,
    pub seen_version_ms: Option<i64>,
}

/// Checks a write as submitted (pure); the reason names the field at fault.
pub fn validate_new_write(w: &NewWrite) -> std::result::Result<(), String> {
    if w.source_system.trim().is_empty() {
        return Err("source_system must not be empty".into());
    }
    if w.idempotency_key.trim().is_empty() {
        return Err("idempotency_key must not be empty".into());
    }
    if w.object.trim().is_empty() {
        return Err("object must not be empty".into());
    }
    match &w.target {
        WriteTarget::RecordId(id) if !is_salesforce_id(id) => {
            return Err(format!(
                "record_id '{id}' is not a Salesforce Id (15 or 18 letters and digits)"
            ))
        }
        WriteTarget::ExternalId { field, .. } if field.trim().is_empty() => {
            return Err("external_id_field must not be empty".into())
        }
        WriteTarget::ExternalId { value, .. } if value.is_empty() => {
            return Err("external_id must not be empty".into())
        }
        _ => {}
    }
    if w.fields.is_empty() {
        return Err("fields must name at least one field".into());
    }
    if let Some(k) = w.fields.keys().find(|k| k.trim().is_empty()) {
        return Err(format!("fields has an empty field name ('{k}')"));
    }
    if let Some(v) = w.seen_version_ms.filter(|v| *v < 0) {
        return Err(format!("seen_version_ms must not be negative (got {v})"));
    }
    Ok(())
}

fn is_salesforce_id(s: &str) -> bool {
    (s.len() == 15 || s.len() == 18) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Turns an outbox row into a write (pure); the reason names the column at fault.
pub fn validate_outbox_row(row: &OutboxRow) -> std::result::Result<NewWrite, String> {
    let nonempty = |v: &Option<String>| v.as_deref().filter(|s| !s.trim().is_empty()).is_some();
    let object = row
        .object
        .clone()
        .filter(|s| !s.trim().is_empty())
        .ok_or("column object is empty")?;
    let target = match (
        nonempty(&row.record_id),
        nonempty(&row.external_id_field),
        nonempty(&row.external_id),
    ) {
        (true, false, false) => WriteTarget::RecordId(row.record_id.clone().unwrap_or_default()),
        (false, true, true) => WriteTarget::ExternalId {
            field: row.external_id_field.clone().unwrap_or_default(),
            value: row.external_id.clone().unwrap_or_default(),
        },
        (true, _, _) => {
            return Err(
                "columns record_id and external_id_field/external_id are both set: give one".into(),
            )
        }
        (false, true, false) => return Err("column external_id is empty".into()),
        (false, false, true) => return Err("column external_id_field is empty".into()),
        (false, false, false) => {
            return Err("columns record_id and external_id are both empty: give one".into())
        }
    };
    let text = row
        .fields
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .ok_or("column fields is empty")?;
    let fields = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(m)) => m,
        Ok(_) => return Err("column fields is not a JSON object".into()),
        Err(e) => return Err(format!("column fields is not valid JSON: {e}")),
    };
    let w = NewWrite {
        source_system: row.source_system.clone(),
        idempotency_key: row.idempotency_key.clone(),
        object,
        target,
        fields,
        seen_version_ms: row.seen_version_ms,
    };
    validate_new_write(&w).map_err(|reason| format!("column {reason}"))?;
    Ok(w)
}

/// The outbox and write ledger of a store.
///
/// Contracts: every method is one transaction (atomic, durable when it returns); submissions
/// and outbox ingestion are idempotent per (source system, idempotency key); a write is handed
/// to at most one claimer per claim; illegal transitions are errors that write nothing.
/// The first write of each record, in the given (acceptance) order, up to `limit`.
pub(crate) fn one_per_record(rows: Vec<(i64, String)>, limit: usize) -> Vec<i64> {
    let mut seen = std::collections::HashSet::new();
    rows.into_iter()
        .filter(|(_, key)| seen.insert(key.clone()))
        .map(|(id, _)| id)
        .take(limit)
        .collect()
}

#[async_trait]
pub trait WriteLedger: ChangeLog {
    /// Stores each valid write as pending, or returns the existing write for a known
    /// (source system, idempotency key). Outcomes are in input order.
    async fn submit_writes(&self, writes: &[NewWrite]) -> Result<Vec<SubmitOutcome>>;

    /// Takes up to `limit` outbox rows not yet ingested (oldest first) into the ledger.
    async fn ingest_outbox(&self, limit: usize) -> Result<OutboxIngest>;

    /// The pending writes by [`WriteGroup`], among the oldest `cap` pending writes: how many,
    /// how many were accepted at or before `due_at_ms`, and when the oldest was. The deliverer
    /// claims a group only when it fills whole calls or has writes that waited long enough, so
    /// a write reads `pending` until it is really on its way. Ordered by the first accepted write.
    async fn pending_groups(&self, cap: usize, due_at_ms: i64) -> Result<Vec<PendingGroup>>;

    /// Moves up to `limit` pending writes of `group` to `sent` for `claimer` (attempts + 1),
    /// oldest first and at most one per record: a record's later writes wait for a later claim,
    /// so they reach Salesforce after the earlier ones. Returned in acceptance order. No write
    /// is returned to two claims.
    async fn claim_group(
        &self,
        claimer: &str,
        group: &WriteGroup,
        limit: usize,
    ) -> Result<Vec<LedgerWrite>>;

    /// Moves up to `limit` pending writes to `sent` for `claimer` (attempts + 1) and returns
    /// them ordered by object, then record (Id or External Id), then id. No write is returned to
    /// two claims.
    async fn claim_writes(&self, claimer: &str, limit: usize) -> Result<Vec<LedgerWrite>>;

    /// Records outcomes, all or nothing: when any is illegal from its write's current state (or
    /// names an unknown write), the error names it and nothing is written.
    async fn record_write_outcomes(&self, outcomes: &[(i64, WriteOutcome)]) -> Result<()>;

    /// One write.
    async fn write(&self, id: i64) -> Result<Option<LedgerWrite>>;

    /// A write's recorded transitions, oldest first.
    async fn write_transitions(&self, id: i64) -> Result<Vec<WriteTransition>>;

    /// Writes matching `filter`.
    async fn writes(&self, filter: &WriteFilter) -> Result<Vec<LedgerWrite>>;

    /// The write a CDC echo of our own change to `object`/`record_id` confirms: the OLDEST
    /// `applied` write of that record (echoes arrive in commit order, which is the order our
    /// writes of one record were applied). The caller has checked the change origin is ours.
    async fn echo_write(&self, object: &str, record_id: &str) -> Result<Option<LedgerWrite>>;

    /// For each of `event_keys` that confirmed a write (its `echo_event_key`), the system that
    /// wrote it: delivery sinks use it not to send a system's own change back to it.
    async fn echo_sources(
        &self,
        event_keys: &[String],
    ) -> Result<std::collections::HashMap<String, String>>;

    /// Returns writes left in `sent` by a deliverer that stopped between sending and recording
    /// (a crash): every `sent` write claimed before `claimed_before_ms` (epoch ms; its claim time
    /// is its last update) goes back to `pending`, the transition recorded with `note`. Returns
    /// their ids, oldest first. Re-sending them is safe: an upsert by External Id never creates a
    /// second record and an update by Id is idempotent.
    async fn requeue_abandoned(&self, claimed_before_ms: i64, note: &str) -> Result<Vec<i64>>;

    /// A person's decision on a write in `conflict` (see [`Resolution`]), in one transaction:
    /// the state, fields (sealed again when the store has a keyring) and seen version change
    /// together, and the transition records `actor` and `note`. A write not in conflict, a field
    /// the write does not carry, or a conflict without a readable detail is an error that names
    /// the reason and writes nothing. Returns the write as it now is.
    async fn resolve_conflict(
        &self,
        id: i64,
        resolution: &Resolution,
        actor: &str,
        note: &str,
    ) -> Result<LedgerWrite>;

    /// Redrives dead letters (failed → pending; attempts and the last error are kept) in one
    /// transaction, recording `actor` and `note` in each transition. Reported per id, in input
    /// order: an unknown id or a write in another state is reported and left as it is.
    async fn redrive_writes(
        &self,
        ids: &[i64],
        actor: &str,
        note: &str,
    ) -> Result<Vec<(i64, WriteActOutcome)>>;

    /// Discards failed or conflicted writes (→ rejected, final; the reason names `actor`), as
    /// [`WriteLedger::redrive_writes`] does.
    async fn discard_writes(
        &self,
        ids: &[i64],
        actor: &str,
        note: &str,
    ) -> Result<Vec<(i64, WriteActOutcome)>>;
}

/// The `reason` a discarded write keeps.
pub fn discard_reason(actor: &str, note: &str) -> String {
    match stored_note(note) {
        Some(n) => format!("discarded by {actor}: {n}"),
        None => format!("discarded by {actor}"),
    }
}

/// A note as stored: `None` when empty.
pub fn stored_note(note: &str) -> Option<&str> {
    Some(note.trim()).filter(|n| !n.is_empty())
}

/// AAD of a write's sealed fields.
pub(crate) fn write_aad(object: &str) -> String {
    format!("write.{object}")
}

impl crate::warehouse::Ctx {
    /// A write's fields (JSON text) as stored: sealed whenever a keyring is set; writes to an
    /// object with PII columns need one.
    pub(crate) fn seal_write_fields(&self, object: &str, json: &str) -> Result<String> {
        match &self.keyring {
            Some(k) => Ok(k.seal(&write_aad(object), json.as_bytes())),
            None if self.model(object).is_some_and(|m| m.has_pii) => {
                Err(crate::warehouse::keyring_missing(
                    self.backend,
                    "store write",
                    format!("writes to '{object}' may carry PII"),
                ))
            }
            None => Ok(json.to_string()),
        }
    }

    /// A stored write's fields as JSON text: opened when sealed.
    pub(crate) fn open_write_fields(&self, object: &str, stored: String) -> Result<String> {
        if !crate::pii::is_sealed(&stored) {
            return Ok(stored);
        }
        let k = self.keyring_for("read writes", || {
            format!("the fields of writes to '{object}' are sealed")
        })?;
        let plain = k.open(&write_aad(object), &stored)?;
        String::from_utf8(plain).map_err(|_| crate::error::StoreError::InvalidInput {
            backend: self.backend,
            op: "read writes",
            reason: format!("the sealed fields of a write to '{object}' are not UTF-8"),
        })
    }

    /// Opens the fields (and a sealed conflict detail in `reason`) of writes read from the
    /// store.
    pub(crate) fn open_writes(&self, mut writes: Vec<LedgerWrite>) -> Result<Vec<LedgerWrite>> {
        for w in &mut writes {
            w.fields = self.open_write_fields(&w.object, std::mem::take(&mut w.fields))?;
            if let Some(r) = w.reason.take() {
                w.reason = Some(self.open_write_fields(&w.object, r)?);
            }
        }
        Ok(writes)
    }

    /// The text a transition or `reason` stores for `outcome` of a write to `object`: a
    /// conflict's detail quotes field values (both sides), so it is sealed like the fields.
    pub(crate) fn outcome_text(&self, object: &str, outcome: &WriteOutcome) -> Result<String> {
        match outcome {
            WriteOutcome::Conflict { detail } => self.seal_write_fields(object, detail),
            other => Ok(other.detail().to_string()),
        }
    }

    /// Opens the sealed details of a write's transitions.
    pub(crate) fn open_transitions(
        &self,
        object: &str,
        mut ts: Vec<WriteTransition>,
    ) -> Result<Vec<WriteTransition>> {
        for t in &mut ts {
            if let Some(d) = t.detail.take() {
                t.detail = Some(self.open_write_fields(object, d)?);
            }
        }
        Ok(ts)
    }
}
