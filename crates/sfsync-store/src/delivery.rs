//! The delivery outbox: the curated change stream as downstream sinks (webhooks, Kafka) read it,
//! with each sink's durable position per object and its dead letters.
//!
//! Guarantees:
//! - An outbox entry is written by the apply stage in the SAME transaction as the curated rows
//!   it describes ([`CuratedBatch::deliveries`]), so a sink sees exactly the changes that
//!   reached the warehouse, once each, in apply order (`seq` increases in commit order).
//! - Each sink keeps its own position per object (`delivery_positions`): a slow or failing
//!   sink (or object) never holds back ingest, the apply stage or another sink.
//! - A position and the dead letters that let it move past undeliverable changes commit in one
//!   transaction ([`Delivery::delivery_advance`]); positions never move backwards.
//! - PII fields stay sealed in the outbox and in dead letters (AAD
//!   [`crate::pii::column_aad`] of the field's column, as in the curated table); a reader asks
//!   for them omitted, sealed, or opened ([`PiiMode`]).
//! - Entries are pruned only below the lowest position of the sinks the caller names
//!   ([`Delivery::prune_outbox`]); dead letters keep their own copy of the change.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::curated::{ChangeSource, Value};
use crate::error::{Result, StoreError};
use crate::pii;
use crate::warehouse::{self as wh, Ctx};
use sfsync_core::ErrorClass;

/// One curated change handed to the outbox by the apply stage: the record's state after the
/// change (data columns, PII in the clear in memory) and what changed.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxChange {
    pub object: String,
    pub record_id: String,
    /// `CREATE`, `UPDATE`, `DELETE`, `UNDELETE`, or `SNAPSHOT` for a re-read.
    pub change_type: String,
    /// The change's dedupe key (CDC event key, or record id + SystemModstamp for a snapshot):
    /// the idempotency key consumers see.
    pub event_key: String,
    pub commit_timestamp_ms: i64,
    pub applied_at_ms: i64,
    pub source: ChangeSource,
    /// `client=` of the change origin (`sfsync` for our own writes' echoes).
    pub origin_client: Option<String>,
    /// Field API names the change set or nulled (all fields for a full write).
    pub fields: Vec<String>,
    pub deleted: bool,
    /// Column name → value after the change (the `id` column included).
    pub values: BTreeMap<String, Value>,
    pub run_id: String,
}

/// How a reader wants PII fields of delivered records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PiiMode {
    /// Left out of the record (the default: a consumer sees no PII unless configured).
    #[default]
    Omit,
    /// The sealed text as stored (the consumer holds the key).
    Sealed,
    /// Opened (the consumer is authorised for PII).
    Plain,
}

impl PiiMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PiiMode::Omit => "omit",
            PiiMode::Sealed => "sealed",
            PiiMode::Plain => "plain",
        }
    }

    pub fn parse(s: &str) -> Option<PiiMode> {
        Some(match s {
            "omit" => PiiMode::Omit,
            "sealed" => PiiMode::Sealed,
            "plain" => PiiMode::Plain,
            _ => return None,
        })
    }
}

/// An outbox entry as read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredDelivery {
    pub seq: i64,
    pub object: String,
    pub record_id: String,
    pub change_type: String,
    pub event_key: String,
    pub commit_timestamp_ms: i64,
    pub applied_at_ms: i64,
    pub source: String,
    pub origin_client: Option<String>,
    pub fields: Vec<String>,
    pub deleted: bool,
    /// Field API name → JSON value (dates `YYYY-MM-DD`, timestamps RFC 3339 UTC), PII as the
    /// reader asked.
    pub record: serde_json::Map<String, serde_json::Value>,
    pub run_id: String,
}

/// A sink's position on one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryPosition {
    pub sink: String,
    pub object: String,
    /// Every outbox entry of the object with `seq <= position` is delivered, skipped (an echo
    /// to its origin) or dead-lettered for this sink.
    pub position: i64,
    /// Changes delivered so far (counter).
    pub delivered: i64,
    pub updated_at_ms: i64,
}

/// A change a sink could not deliver, to be kept as a dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeliveryDeadLetter {
    /// The change as read (PII sealed: read with [`PiiMode::Sealed`]).
    pub change: StoredDelivery,
    pub reason: String,
    pub attempts: i64,
    pub first_failed_at_ms: i64,
}

/// State of a delivery dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryDeadState {
    /// Waiting for an operator; later changes of its record are held behind it.
    Pending,
    /// An operator asked for another delivery; the sink retries it (and the record's other
    /// held changes, in order) next.
    Redrive,
    /// Delivered on a redrive.
    Delivered,
    /// Given up by an operator.
    Discarded,
}

impl DeliveryDeadState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryDeadState::Pending => "pending",
            DeliveryDeadState::Redrive => "redrive",
            DeliveryDeadState::Delivered => "delivered",
            DeliveryDeadState::Discarded => "discarded",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryDeadState> {
        Some(match s {
            "pending" => DeliveryDeadState::Pending,
            "redrive" => DeliveryDeadState::Redrive,
            "delivered" => DeliveryDeadState::Delivered,
            "discarded" => DeliveryDeadState::Discarded,
            _ => return None,
        })
    }

    /// Still holds its record's later changes.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            DeliveryDeadState::Pending | DeliveryDeadState::Redrive
        )
    }
}

/// A stored delivery dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryDeadLetter {
    pub id: i64,
    pub sink: String,
    pub state: DeliveryDeadState,
    pub reason: String,
    pub attempts: i64,
    pub first_failed_at_ms: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub note: Option<String>,
    /// The change, PII as the reader asked.
    pub change: StoredDelivery,
}

/// Which delivery dead letters to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryDeadFilter {
    pub sink: Option<String>,
    pub object: Option<String>,
    /// Only these states (all when empty).
    pub states: Vec<DeliveryDeadState>,
    /// Ids above this one.
    pub after: Option<i64>,
    pub limit: usize,
}

/// The result of a redriven dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedriveOutcome {
    Delivered,
    /// Failed again: back to pending with the new reason.
    Failed {
        reason: String,
    },
}

/// How far behind a sink is on one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeliveryBacklog {
    /// Entries after the position (counted up to [`BACKLOG_COUNT_CAP`]).
    pub entries: u64,
    /// `applied_at_ms` of the oldest entry after the position.
    pub oldest_applied_at_ms: Option<i64>,
}

/// Backlog counts stop here (a count over millions of index entries is not free).
pub const BACKLOG_COUNT_CAP: u64 = 1_000_000;

/// What a store offers the delivery sinks. Implemented by both backends.
#[async_trait]
pub trait Delivery: Send + Sync {
    /// Entries of `object` with `seq > after`, oldest first, at most `limit`.
    async fn outbox_read(
        &self,
        object: &str,
        after: i64,
        limit: usize,
        pii: PiiMode,
    ) -> Result<Vec<StoredDelivery>>;

    /// The highest `seq` of the whole outbox (0 when empty): a cheap probe for new entries.
    async fn outbox_head(&self) -> Result<i64>;

    /// `change` (read with [`PiiMode::Sealed`]) with its PII as `pii` asks.
    fn pii_view(&self, change: &StoredDelivery, pii: PiiMode) -> Result<StoredDelivery>;

    /// The highest `seq` of `object` (0 when none), and the lowest still stored (`None` when
    /// none).
    async fn outbox_bounds(&self, object: &str) -> Result<(i64, Option<i64>)>;

    /// Every stored position of `sink`.
    async fn delivery_positions(&self, sink: &str) -> Result<Vec<DeliveryPosition>>;

    /// Moves `sink`'s position on `object` to `position` (never backwards), counts `delivered`
    /// more changes and stores `dead` as pending dead letters — in one transaction.
    async fn delivery_advance(
        &self,
        sink: &str,
        object: &str,
        position: i64,
        delivered: u64,
        dead: &[NewDeliveryDeadLetter],
    ) -> Result<()>;

    /// Record ids of `sink`'s open (pending or redrive) dead letters on `object`: their later
    /// changes are held behind them.
    async fn held_records(&self, sink: &str, object: &str) -> Result<Vec<String>>;

    /// Open dead letters of `sink` on `object` whose record has one in state `redrive`, in
    /// `seq` order (a record's held changes go again in their order), at most `limit`.
    async fn delivery_redrives(
        &self,
        sink: &str,
        object: &str,
        limit: usize,
        pii: PiiMode,
    ) -> Result<Vec<DeliveryDeadLetter>>;

    /// Records what redriven dead letters did: delivered, or back to pending with the new
    /// reason (one more attempt).
    async fn settle_delivery_redrives(&self, outcomes: &[(i64, RedriveOutcome)]) -> Result<()>;

    async fn delivery_dead_letters(
        &self,
        filter: &DeliveryDeadFilter,
        pii: PiiMode,
    ) -> Result<Vec<DeliveryDeadLetter>>;

    /// Asks for another delivery of the pending dead letters `ids`; returns the ids that were
    /// pending (others are left as they are).
    async fn request_delivery_redrive(&self, ids: &[i64], note: &str) -> Result<Vec<i64>>;

    /// Gives up the open dead letters `ids`; returns the ids that were open.
    async fn discard_delivery_dead_letters(&self, ids: &[i64], note: &str) -> Result<Vec<i64>>;

    /// Deletes `object`'s entries with `seq <= through`; returns how many went.
    async fn prune_outbox(&self, object: &str, through: i64) -> Result<u64>;

    /// The backlog of a sink at `position` on `object`.
    async fn delivery_backlog(&self, object: &str, position: i64) -> Result<DeliveryBacklog>;
}

/// The outbox columns of a change (the record as JSON text, PII sealed).
pub(crate) struct EncodedOutbox<'a> {
    pub change: &'a OutboxChange,
    pub fields: String,
    pub record: String,
}

/// Encodes a batch's deliveries: the record keyed by field API name, PII fields sealed.
pub(crate) fn encode_outbox<'a>(
    ctx: &Ctx,
    changes: &'a [OutboxChange],
) -> Result<Vec<EncodedOutbox<'a>>> {
    let mut out = Vec::with_capacity(changes.len());
    for c in changes {
        let reg = ctx.require("write delivery outbox", &c.object)?;
        let mut record = serde_json::Map::new();
        for col in &reg.model.columns {
            let Some(v) = c.values.get(&col.name) else {
                continue;
            };
            let json = if col.pii && !v.is_null() {
                let k = ctx.keyring_for("write delivery outbox", || {
                    format!("PII field {}.{}", c.object, col.field)
                })?;
                serde_json::Value::String(wh::seal_value(
                    k,
                    &pii::column_aad(&c.object, &col.name),
                    v,
                ))
            } else {
                value_json(v)
            };
            record.insert(col.field.clone(), json);
        }
        out.push(EncodedOutbox {
            change: c,
            fields: serde_json::to_string(&c.fields).expect("strings serialise"),
            record: serde_json::Value::Object(record).to_string(),
        });
    }
    Ok(out)
}

/// A value as consumers read it.
pub fn value_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Real(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Text(s) => J::String(s.clone()),
        Value::Date(d) => wh::format_date(*d).map_or(J::Null, J::String),
        Value::Timestamp(ms) => wh::format_ts(*ms).map_or(J::Null, J::String),
    }
}

/// The stored columns of an outbox entry (or a dead letter's copy), before PII handling.
pub(crate) struct OutboxRow {
    pub seq: i64,
    pub object: String,
    pub record_id: String,
    pub change_type: String,
    pub event_key: String,
    pub commit_timestamp_ms: i64,
    pub applied_at_ms: i64,
    pub source: String,
    pub origin_client: Option<String>,
    pub fields: String,
    pub deleted: bool,
    pub record: String,
    pub run_id: String,
}

fn corrupt(backend: &'static str, table: &'static str, seq: i64, reason: String) -> StoreError {
    StoreError::Corrupt {
        backend,
        table,
        offset: seq,
        reason,
    }
}

/// Decodes a stored entry, with PII as `pii` asks.
pub(crate) fn decode_outbox(
    ctx: &Ctx,
    backend: &'static str,
    table: &'static str,
    row: OutboxRow,
    pii: PiiMode,
) -> Result<StoredDelivery> {
    let fields: Vec<String> = serde_json::from_str(&row.fields).map_err(|e| {
        corrupt(
            backend,
            table,
            row.seq,
            format!("fields is not a list: {e}"),
        )
    })?;
    let mut record = match serde_json::from_str::<serde_json::Value>(&row.record) {
        Ok(serde_json::Value::Object(m)) => m,
        Ok(_) => {
            return Err(corrupt(
                backend,
                table,
                row.seq,
                "record is not a JSON object".into(),
            ))
        }
        Err(e) => {
            return Err(corrupt(
                backend,
                table,
                row.seq,
                format!("record is not JSON: {e}"),
            ))
        }
    };
    apply_pii(ctx, &row.object, &mut record, pii)?;
    Ok(StoredDelivery {
        seq: row.seq,
        object: row.object,
        record_id: row.record_id,
        change_type: row.change_type,
        event_key: row.event_key,
        commit_timestamp_ms: row.commit_timestamp_ms,
        applied_at_ms: row.applied_at_ms,
        source: row.source,
        origin_client: row.origin_client,
        fields,
        deleted: row.deleted,
        record,
        run_id: row.run_id,
    })
}

/// Turns a record read with PII sealed into what `pii` asks for.
pub(crate) fn apply_pii(
    ctx: &Ctx,
    object: &str,
    record: &mut serde_json::Map<String, serde_json::Value>,
    pii: PiiMode,
) -> Result<()> {
    if pii != PiiMode::Sealed {
        if let Some(reg) = ctx.model(object) {
            for col in reg.model.columns.iter().filter(|c| c.pii) {
                let Some(v) = record.get_mut(&col.field) else {
                    continue;
                };
                match pii {
                    PiiMode::Omit => {
                        record.remove(&col.field);
                    }
                    PiiMode::Plain => {
                        let serde_json::Value::String(sealed) = &*v else {
                            continue;
                        };
                        if !pii::is_sealed(sealed) {
                            continue;
                        }
                        let k = ctx.keyring_for("read delivery outbox", || {
                            format!("PII field {}.{}", object, col.field)
                        })?;
                        let opened =
                            wh::open_value(k, &pii::column_aad(object, &col.name), sealed)?;
                        *v = value_json(&opened);
                    }
                    PiiMode::Sealed => {}
                }
            }
        } else if object.ends_with("__e") {
            // A platform event (migration 20): its fields are stored as received, nothing is
            // sealed.
        } else if pii == PiiMode::Omit {
            // Model unknown: whatever is sealed is PII.
            record.retain(|_, v| !matches!(v, serde_json::Value::String(s) if pii::is_sealed(s)));
        } else {
            return Err(StoreError::Pii {
                op: "read delivery outbox",
                key_id: "?".into(),
                reason: format!(
                    "object '{}' has no registered model, so its PII fields are unknown",
                    object
                ),
                class: ErrorClass::Internal,
            });
        }
    }
    Ok(())
}

/// [`Delivery::pii_view`] for both backends.
pub(crate) fn pii_view(ctx: &Ctx, change: &StoredDelivery, pii: PiiMode) -> Result<StoredDelivery> {
    let mut c = change.clone();
    apply_pii(ctx, &change.object, &mut c.record, pii)?;
    Ok(c)
}

/// A dead letter's stored copy of its change (PII sealed as in the outbox).
pub(crate) fn dead_letter_change_json(c: &StoredDelivery) -> String {
    serde_json::to_string(c).expect("a stored delivery serialises")
}

/// Reads a dead letter's stored change back, with PII as `pii` asks.
pub(crate) fn decode_dead_letter_change(
    ctx: &Ctx,
    backend: &'static str,
    id: i64,
    text: &str,
    pii: PiiMode,
) -> Result<StoredDelivery> {
    let mut c: StoredDelivery = serde_json::from_str(text).map_err(|e| {
        corrupt(
            backend,
            "delivery_dead_letters",
            id,
            format!("change is not a stored delivery: {e}"),
        )
    })?;
    apply_pii(ctx, &c.object, &mut c.record, pii)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_render_as_consumers_expect() {
        assert_eq!(value_json(&Value::Date(0)), serde_json::json!("1970-01-01"));
        assert_eq!(
            value_json(&Value::Timestamp(1_000)),
            serde_json::json!("1970-01-01T00:00:01.000Z")
        );
        assert_eq!(value_json(&Value::Real(f64::NAN)), serde_json::Value::Null);
        assert_eq!(value_json(&Value::Int(-3)), serde_json::json!(-3));
    }

    #[test]
    fn pii_modes_round_trip_their_names() {
        for m in [PiiMode::Omit, PiiMode::Sealed, PiiMode::Plain] {
            assert_eq!(PiiMode::parse(m.as_str()), Some(m));
        }
        assert_eq!(PiiMode::parse("clear"), None);
        for s in [
            DeliveryDeadState::Pending,
            DeliveryDeadState::Redrive,
            DeliveryDeadState::Delivered,
            DeliveryDeadState::Discarded,
        ] {
            assert_eq!(DeliveryDeadState::parse(s.as_str()), Some(s));
        }
    }
}
