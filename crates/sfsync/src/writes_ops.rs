//! Operator operations on writeback's conflict queue and dead letters, shared by the CLI
//! (`sfsync conflicts …`, `sfsync deadletters …`) and the HTTP API: list, show, resolve,
//! redrive, discard. Each returns a serialisable result; printing is the caller's business.
//!
//! Guarantees: every action goes through the store's write ledger (one transaction, illegal
//! transitions refused and nothing written) and records who acted and why in the write's
//! transitions. Values of configured PII fields are masked (`<encrypted>`) in everything
//! returned unless the caller asks for them in the clear (and then says so to its user); a
//! conflict's raw JSON, which quotes values, is never returned as text — only as the masked
//! per-field table. Event dead letters (CDC events that failed to decode or apply) are listed
//! and shown; they have no redrive of their own (see [`event_redrive_hint`]).

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value as J;
use sfsync_store::{
    ConflictDetail, DeadLetterFilter, LedgerWrite, Resolution, StoreError, StoredDeadLetter,
    Warehouse, WriteActOutcome, WriteFilter, WriteState, WriteTransition,
};

use crate::admin_cmd::MASK;
use crate::config::validate::ValidConfig;

/// Why an operation could not be carried out; the API maps these to 404, 409 and 500.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// No such write or dead letter.
    #[error("{0}")]
    NotFound(String),
    /// The request is not possible in the write's state or names what the write lacks.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type OpsResult<T> = std::result::Result<T, OpsError>;

/// Which values are PII: the configured `pii_fields` of each object.
#[derive(Debug, Clone, Default)]
pub struct Pii {
    /// Object name (lower case) → PII field names (lower case).
    fields: HashMap<String, Vec<String>>,
    /// Return PII values in the clear.
    pub decrypt: bool,
}

impl Pii {
    pub fn from_config(config: &ValidConfig, decrypt: bool) -> Pii {
        Pii {
            fields: config
                .objects
                .iter()
                .map(|o| {
                    (
                        o.name.to_ascii_lowercase(),
                        o.pii_fields
                            .iter()
                            .map(|f| f.to_ascii_lowercase())
                            .collect(),
                    )
                })
                .collect(),
            decrypt,
        }
    }

    pub fn is_pii(&self, object: &str, field: &str) -> bool {
        self.fields
            .get(&object.to_ascii_lowercase())
            .is_some_and(|fs| fs.iter().any(|f| f.eq_ignore_ascii_case(field)))
    }

    /// The value as returned: masked when it is PII (a null stays null) and not decrypting.
    fn show(&self, object: &str, field: &str, v: &J) -> (J, bool) {
        if self.is_pii(object, field) && !v.is_null() {
            if self.decrypt {
                (v.clone(), true)
            } else {
                (J::String(MASK.into()), false)
            }
        } else {
            (v.clone(), false)
        }
    }
}

/// One write as listed.
#[derive(Debug, Clone, Serialize)]
pub struct WriteSummary {
    pub id: i64,
    pub state: WriteState,
    pub source_system: String,
    pub object: String,
    /// `Id 500…` or `Case_Ref__c=C-1`.
    pub target: String,
    pub attempts: i64,
    /// Salesforce's error of a dead letter.
    pub last_error: Option<String>,
    /// Why it is rejected; for a conflict, the conflicting fields in words (values are in
    /// `show`).
    pub reason: Option<String>,
    /// The conflicting fields (a write in conflict).
    pub conflict_fields: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// One conflicting field, both sides.
#[derive(Debug, Clone, Serialize)]
pub struct ConflictSide {
    pub field: String,
    pub salesforce: J,
    pub writer: J,
    /// When Salesforce changed it (RFC 3339).
    pub salesforce_changed_at: String,
    pub salesforce_changed_ms: i64,
}

/// A recorded state change.
#[derive(Debug, Clone, Serialize)]
pub struct TransitionView {
    pub from: Option<WriteState>,
    pub to: WriteState,
    pub at: String,
    pub detail: Option<String>,
    pub actor: Option<String>,
    pub note: Option<String>,
}

/// One write in full.
#[derive(Debug, Clone, Serialize)]
pub struct WriteView {
    #[serde(flatten)]
    pub summary: WriteSummary,
    pub idempotency_key: String,
    pub origin: String,
    pub record_id: Option<String>,
    /// The fields the writer asked for (PII masked unless decrypting).
    pub fields: J,
    pub seen_version_ms: Option<i64>,
    pub seen_version: Option<String>,
    /// Both sides per field (a write in conflict with a readable detail).
    pub conflict: Vec<ConflictSide>,
    /// Fields that wait with the conflict without conflicting themselves.
    pub held: Vec<String>,
    pub transitions: Vec<TransitionView>,
    /// PII values returned in the clear (for the caller's decrypt notice).
    pub pii_values_shown: u64,
}

/// A resolution carried out.
#[derive(Debug, Clone, Serialize)]
pub struct ResolveResult {
    pub id: i64,
    pub resolution: &'static str,
    pub state: WriteState,
    pub seen_version_ms: Option<i64>,
    pub by: String,
}

/// What an action did to one id, with a sentence for people.
#[derive(Debug, Clone, Serialize)]
pub struct ActResult {
    pub id: String,
    pub done: bool,
    #[serde(flatten)]
    pub outcome: ActOutcome,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum ActOutcome {
    Write(WriteActOutcome),
    /// An event dead letter: no redrive or discard of its own.
    EventNotActionable,
    EventNotFound,
    /// A delivery dead letter: `true` when it changed (redrive requested, or discarded).
    Delivery(bool),
    /// A platform event that could not be published: `true` when it changed (pending again,
    /// or discarded).
    Publish(bool),
}

/// A dead letter's id: a write (`12`, `write:12`) or an event dead letter (`event:5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterRef {
    Write(i64),
    Event(i64),
    /// A change a delivery sink could not deliver.
    Delivery(i64),
    /// A platform event that could not be published.
    Publish(i64),
}

impl std::str::FromStr for DeadLetterRef {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        let (kind, num) = match s.split_once(':') {
            Some((k, n)) => (k, n),
            None => ("write", s),
        };
        let id: i64 = num.parse().map_err(|_| {
            format!("'{s}': a dead letter id is a number (a write), write:N, event:N, delivery:N or publish:N")
        })?;
        match kind {
            "write" | "w" => Ok(DeadLetterRef::Write(id)),
            "event" | "e" => Ok(DeadLetterRef::Event(id)),
            "delivery" | "d" => Ok(DeadLetterRef::Delivery(id)),
            "publish" | "p" => Ok(DeadLetterRef::Publish(id)),
            other => Err(format!(
                "'{s}': unknown kind '{other}' (use write:N, event:N, delivery:N or publish:N)"
            )),
        }
    }
}

impl std::fmt::Display for DeadLetterRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeadLetterRef::Write(id) => write!(f, "write:{id}"),
            DeadLetterRef::Event(id) => write!(f, "event:{id}"),
            DeadLetterRef::Delivery(id) => write!(f, "delivery:{id}"),
            DeadLetterRef::Publish(id) => write!(f, "publish:{id}"),
        }
    }
}

/// The same hint for one dead letter, with its replay id, channel and object filled in.
pub fn event_redrive_hint(d: &StoredDeadLetter) -> String {
    if sfsync_pipeline::outbound::is_push_channel(&d.channel) {
        return format!(
            "no redrive of Outbound Message dead letters: Salesforce delivers the message again \
             until it is acknowledged (up to 24 h), and a delivery that can be read is logged \
             then; fix the cause (the Outbound Message's fields, or the flow's config), or \
             `sfsync reconcile {}` repairs the records from Salesforce",
            d.object.as_deref().unwrap_or("OBJECT")
        );
    }
    let mut out = String::from("no redrive of event dead letters");
    if let Some(r) = &d.replay_id {
        out.push_str(&format!(
            "; if the event is in the raw change log (apply-stage failures): `sfsync replay \
             --from-replay-id {r} --channel {}` re-applies it and the channel's later changes",
            d.channel
        ));
    }
    out.push_str(&format!(
        "; otherwise `sfsync reconcile {}` repairs the records from Salesforce",
        d.object.as_deref().unwrap_or("OBJECT")
    ));
    out
}

/// Which writes to list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub object: Option<String>,
    pub source_system: Option<String>,
    pub limit: usize,
}

pub fn ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

fn target(w: &LedgerWrite) -> String {
    match (&w.record_id, &w.external_id_field, &w.external_id) {
        (_, Some(f), Some(v)) => format!("{f}={v}"),
        (Some(id), _, _) => format!("Id {id}"),
        _ => "-".into(),
    }
}

fn summary(w: &LedgerWrite) -> WriteSummary {
    let conflict = (w.state == WriteState::Conflict)
        .then(|| w.reason.as_deref().and_then(ConflictDetail::parse))
        .flatten();
    let conflict_fields: Vec<String> = conflict
        .as_ref()
        .map(|c| c.fields.iter().map(|f| f.field.clone()).collect())
        .unwrap_or_default();
    // A conflict detail quotes values: never returned as text.
    let reason = match &conflict {
        Some(_) => Some(format!(
            "Salesforce changed {} since the version the writer saw",
            conflict_fields.join(", ")
        )),
        None => w.reason.clone(),
    };
    WriteSummary {
        id: w.id,
        state: w.state,
        source_system: w.source_system.clone(),
        object: w.object.clone(),
        target: target(w),
        attempts: w.attempts,
        last_error: w.last_error.clone(),
        reason,
        conflict_fields,
        created_at: ts(w.created_at_ms),
        updated_at: ts(w.updated_at_ms),
    }
}

async fn list_in(
    store: &dyn Warehouse,
    state: WriteState,
    f: &ListFilter,
) -> OpsResult<Vec<WriteSummary>> {
    let writes = store
        .writes(&WriteFilter {
            states: vec![state],
            object: f.object.clone(),
            source_system: f.source_system.clone(),
            newest_first: false,
            limit: f.limit,
            ..Default::default()
        })
        .await?;
    Ok(writes.iter().map(summary).collect())
}

/// Writes waiting in the conflict queue, oldest first.
pub async fn list_conflicts(store: &dyn Warehouse, f: &ListFilter) -> OpsResult<Vec<WriteSummary>> {
    list_in(store, WriteState::Conflict, f).await
}

/// Dead-letter writes (Salesforce refused them permanently), oldest first.
pub async fn list_failed_writes(
    store: &dyn Warehouse,
    f: &ListFilter,
) -> OpsResult<Vec<WriteSummary>> {
    list_in(store, WriteState::Failed, f).await
}

/// Event dead letters, oldest first.
pub async fn list_event_dead_letters(
    store: &dyn Warehouse,
    object: Option<&str>,
    limit: usize,
) -> OpsResult<Vec<StoredDeadLetter>> {
    Ok(store
        .dead_letters(&DeadLetterFilter {
            object: object.map(str::to_string),
            limit,
            ..Default::default()
        })
        .await?)
}

/// One event dead letter.
pub async fn show_event_dead_letter(store: &dyn Warehouse, id: i64) -> OpsResult<StoredDeadLetter> {
    store
        .dead_letters(&DeadLetterFilter {
            ids: vec![id],
            ..Default::default()
        })
        .await?
        .pop()
        .ok_or_else(|| OpsError::NotFound(format!("no event dead letter has id {id}")))
}

fn transition(t: WriteTransition) -> TransitionView {
    // A conflict's detail quotes values: shown as the fields it names (the values, masked as
    // configured, are in the conflict table).
    let detail = t.detail.map(|d| match ConflictDetail::parse(&d) {
        Some(c) if !c.fields.is_empty() => format!(
            "conflict on {}",
            c.fields
                .iter()
                .map(|f| f.field.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => d,
    });
    TransitionView {
        from: t.from,
        to: t.to,
        at: ts(t.at_ms),
        detail,
        actor: t.actor,
        note: t.note,
    }
}

/// One write in full: fields and both sides of its conflict (PII masked unless `pii.decrypt`),
/// and its transitions.
pub async fn show_write(store: &dyn Warehouse, id: i64, pii: &Pii) -> OpsResult<WriteView> {
    let w = store
        .write(id)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no write has id {id}")))?;
    let mut shown = 0u64;
    let mut show = |field: &str, v: &J| {
        let (v, clear) = pii.show(&w.object, field, v);
        shown += u64::from(clear);
        v
    };
    let fields = match serde_json::from_str::<J>(&w.fields) {
        Ok(J::Object(m)) => J::Object(m.iter().map(|(k, v)| (k.clone(), show(k, v))).collect()),
        // A rejected outbox row keeps whatever it held: shown only when decrypting or when the
        // object has no PII fields.
        _ if pii.decrypt || !pii.fields.contains_key(&w.object.to_ascii_lowercase()) => {
            J::String(w.fields.clone())
        }
        _ => J::String(MASK.into()),
    };
    let detail = (w.state == WriteState::Conflict)
        .then(|| w.reason.as_deref().and_then(ConflictDetail::parse))
        .flatten()
        .unwrap_or_default();
    let conflict = detail
        .fields
        .iter()
        .map(|f| ConflictSide {
            field: f.field.clone(),
            salesforce: show(&f.field, &f.salesforce),
            writer: show(&f.field, &f.writer),
            salesforce_changed_at: ts(f.salesforce_changed_ms),
            salesforce_changed_ms: f.salesforce_changed_ms,
        })
        .collect();
    let transitions = store
        .write_transitions(id)
        .await?
        .into_iter()
        .map(transition)
        .collect();
    Ok(WriteView {
        summary: summary(&w),
        idempotency_key: w.idempotency_key.clone(),
        origin: w.origin.as_str().into(),
        record_id: w.record_id.clone(),
        fields,
        seen_version_ms: w.seen_version_ms,
        seen_version: w.seen_version_ms.map(ts),
        conflict,
        held: detail.held,
        transitions,
        pii_values_shown: shown,
    })
}

/// A person's decision on a write in conflict (see [`Resolution`]).
pub async fn resolve(
    store: &dyn Warehouse,
    id: i64,
    resolution: &Resolution,
    by: &str,
    note: &str,
) -> OpsResult<ResolveResult> {
    if store.write(id).await?.is_none() {
        return Err(OpsError::NotFound(format!("no write has id {id}")));
    }
    let w = store
        .resolve_conflict(id, resolution, by, note)
        .await
        .map_err(|e| match e {
            StoreError::InvalidInput { reason, .. } => OpsError::Refused(reason),
            e => OpsError::Store(e),
        })?;
    Ok(ResolveResult {
        id,
        resolution: resolution.as_str(),
        state: w.state,
        seen_version_ms: w.seen_version_ms,
        by: by.to_string(),
    })
}

/// Redrive (`redrive = true`) or discard dead letters; reported per id in input order. Event
/// dead letters are reported as not actionable, with the hint.
pub async fn act(
    store: &dyn Warehouse,
    ids: &[DeadLetterRef],
    redrive: bool,
    by: &str,
    note: &str,
) -> OpsResult<Vec<ActResult>> {
    let write_ids: Vec<i64> = ids
        .iter()
        .filter_map(|r| match r {
            DeadLetterRef::Write(id) => Some(*id),
            DeadLetterRef::Event(_) | DeadLetterRef::Delivery(_) | DeadLetterRef::Publish(_) => {
                None
            }
        })
        .collect();
    let done = if write_ids.is_empty() {
        Vec::new()
    } else if redrive {
        store.redrive_writes(&write_ids, by, note).await?
    } else {
        store.discard_writes(&write_ids, by, note).await?
    };
    let mut done = done.into_iter();
    let verb = if redrive { "redriven" } else { "discarded" };
    let mut out = Vec::with_capacity(ids.len());
    for r in ids {
        out.push(match r {
            DeadLetterRef::Write(id) => {
                let (_, outcome) = done.next().ok_or_else(|| {
                    OpsError::Refused(format!("the store reported no outcome for write {id}"))
                })?;
                let (ok, message) = match &outcome {
                    WriteActOutcome::Done { to, .. } => {
                        (true, format!("{verb} by {by} (now {})", to.as_str()))
                    }
                    WriteActOutcome::NotFound => (false, "no such write".to_string()),
                    WriteActOutcome::NotAllowed { state } => (
                        false,
                        match (redrive, state) {
                            (false, WriteState::Rejected) => "already discarded (rejected)".into(),
                            (true, WriteState::Pending | WriteState::Sent) => format!(
                                "is {} already: only a failed write can be redriven",
                                state.as_str()
                            ),
                            (true, _) => format!(
                                "is {}: only a failed write can be redriven",
                                state.as_str()
                            ),
                            (false, _) => format!(
                                "is {}: only a failed or conflicted write can be discarded",
                                state.as_str()
                            ),
                        },
                    ),
                };
                ActResult {
                    id: r.to_string(),
                    done: ok,
                    outcome: ActOutcome::Write(outcome),
                    message,
                }
            }
            DeadLetterRef::Event(id) => {
                let found = store
                    .dead_letters(&DeadLetterFilter {
                        ids: vec![*id],
                        ..Default::default()
                    })
                    .await?
                    .pop();
                match found {
                    Some(d) => ActResult {
                        id: r.to_string(),
                        done: false,
                        outcome: ActOutcome::EventNotActionable,
                        message: if redrive {
                            event_redrive_hint(&d)
                        } else {
                            "event dead letters are kept as a record and cannot be discarded".into()
                        },
                    },
                    None => ActResult {
                        id: r.to_string(),
                        done: false,
                        outcome: ActOutcome::EventNotFound,
                        message: "no such event dead letter".into(),
                    },
                }
            }
            DeadLetterRef::Delivery(id) => {
                let stored_note = format!("{verb} by {by}: {note}");
                let changed = if redrive {
                    store.request_delivery_redrive(&[*id], &stored_note).await?
                } else {
                    store
                        .discard_delivery_dead_letters(&[*id], &stored_note)
                        .await?
                };
                let done = changed.contains(id);
                let message = if done {
                    if redrive {
                        format!("redrive requested by {by}: the sink delivers it (and its record's held changes, in order) next")
                    } else {
                        format!("discarded by {by}")
                    }
                } else {
                    match delivery_dead_letter(store, *id, sfsync_store::PiiMode::Omit).await? {
                        None => "no such delivery dead letter".into(),
                        Some(d) => format!(
                            "is {}: only a pending one can be redriven, an open one discarded",
                            d.state.as_str()
                        ),
                    }
                };
                ActResult {
                    id: r.to_string(),
                    done,
                    outcome: ActOutcome::Delivery(done),
                    message,
                }
            }
            DeadLetterRef::Publish(id) => {
                let stored_note = format!("{verb} by {by}: {note}");
                let changed = if redrive {
                    store.redrive_outbound(&[*id], &stored_note).await?
                } else {
                    store.discard_outbound(&[*id], &stored_note).await?
                };
                let done = changed.contains(id);
                let message = if done {
                    if redrive {
                        format!("redriven by {by}: pending again, the running publisher sends it")
                    } else {
                        format!("discarded by {by}")
                    }
                } else {
                    match store.outbound_event(*id).await? {
                        None => "no such platform event to publish".into(),
                        Some(e) => format!(
                            "is {}: only a dead one can be redriven, a dead or unclaimed pending one discarded",
                            e.state.as_str()
                        ),
                    }
                };
                ActResult {
                    id: r.to_string(),
                    done,
                    outcome: ActOutcome::Publish(done),
                    message,
                }
            }
        });
    }
    Ok(out)
}

/// A delivery dead letter as the CLI and the API show it (the change's PII omitted).
pub fn delivery_dead_letter_json(d: &sfsync_store::DeliveryDeadLetter) -> serde_json::Value {
    serde_json::json!({
        "id": d.id,
        "ref": format!("delivery:{}", d.id),
        "kind": "delivery",
        "sink": d.sink,
        "state": d.state.as_str(),
        "object": d.change.object,
        "record_id": d.change.record_id,
        "seq": d.change.seq,
        "event_key": d.change.event_key,
        "change_type": d.change.change_type,
        "reason": d.reason,
        "attempts": d.attempts,
        "first_failed_at": ts(d.first_failed_at_ms),
        "created_at": ts(d.created_at_ms),
        "updated_at": ts(d.updated_at_ms),
        "note": d.note,
    })
}

/// The delivery dead letter `id` (any state), PII as `pii` asks.
pub async fn delivery_dead_letter(
    store: &dyn Warehouse,
    id: i64,
    pii: sfsync_store::PiiMode,
) -> OpsResult<Option<sfsync_store::DeliveryDeadLetter>> {
    Ok(store
        .delivery_dead_letters(
            &sfsync_store::DeliveryDeadFilter {
                after: Some(id - 1),
                limit: 1,
                ..Default::default()
            },
            pii,
        )
        .await?
        .into_iter()
        .find(|d| d.id == id))
}

/// Open (pending or redrive-requested) delivery dead letters, oldest first.
pub async fn list_delivery_dead_letters(
    store: &dyn Warehouse,
    object: Option<&str>,
    sink: Option<&str>,
    after: Option<i64>,
    limit: usize,
) -> OpsResult<Vec<sfsync_store::DeliveryDeadLetter>> {
    Ok(store
        .delivery_dead_letters(
            &sfsync_store::DeliveryDeadFilter {
                sink: sink.map(str::to_string),
                object: object.map(str::to_string),
                states: vec![
                    sfsync_store::DeliveryDeadState::Pending,
                    sfsync_store::DeliveryDeadState::Redrive,
                ],
                after,
                limit,
            },
            sfsync_store::PiiMode::Omit,
        )
        .await?)
}

/// Platform events that could not be published (the publish dead letters), oldest first.
pub async fn list_publish_dead_letters(
    store: &dyn Warehouse,
    name: Option<&str>,
    after: Option<i64>,
    limit: usize,
) -> OpsResult<Vec<sfsync_store::OutboundEvent>> {
    Ok(store
        .outbound_events(&sfsync_store::OutboundFilter {
            name: name.map(str::to_string),
            states: vec![sfsync_store::OutboundState::Dead],
            after,
            limit,
        })
        .await?)
}

/// A platform event to publish as the CLI and the API show it (fields included: platform
/// events carry no PII fields).
pub fn publish_dead_letter_json(e: &sfsync_store::OutboundEvent) -> serde_json::Value {
    serde_json::json!({
        "id": e.id,
        "ref": format!("publish:{}", e.id),
        "kind": "publish",
        "event": e.name,
        "object": e.name,
        "idempotency_key": e.idempotency_key,
        "event_uuid": e.event_uuid,
        "source": e.source,
        "state": e.state.as_str(),
        "attempts": e.attempts,
        "error": e.last_error,
        "fields": e.fields,
        "created_at": ts(e.created_at_ms),
        "updated_at": ts(e.updated_at_ms),
        "note": e.note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_ids_parse_with_or_without_kind() {
        assert_eq!("delivery:7".parse(), Ok(DeadLetterRef::Delivery(7)));
        assert_eq!("d:7".parse(), Ok(DeadLetterRef::Delivery(7)));
        assert_eq!("12".parse(), Ok(DeadLetterRef::Write(12)));
        assert_eq!("write:12".parse(), Ok(DeadLetterRef::Write(12)));
        assert_eq!("event:5".parse(), Ok(DeadLetterRef::Event(5)));
        assert_eq!(DeadLetterRef::Event(5).to_string(), "event:5");
        let err = "x:1".parse::<DeadLetterRef>().unwrap_err();
        assert!(err.contains("unknown kind 'x'"), "{err}");
        let err = "abc".parse::<DeadLetterRef>().unwrap_err();
        assert!(err.contains("is a number"), "{err}");
    }

    #[test]
    fn pii_values_are_masked_unless_decrypting() {
        let mut pii = Pii::default();
        pii.fields.insert("contact".into(), vec!["email".into()]);
        let v = J::from("ada@example.com");
        assert_eq!(pii.show("Contact", "Email", &v), (J::from(MASK), false));
        assert_eq!(pii.show("Contact", "Email", &J::Null), (J::Null, false));
        assert_eq!(pii.show("Contact", "Phone", &v), (v.clone(), false));
        pii.decrypt = true;
        assert_eq!(pii.show("Contact", "Email", &v), (v.clone(), true));
    }
}
