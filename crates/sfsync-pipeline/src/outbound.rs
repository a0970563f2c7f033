//! Outbound Messages as raw changes: a notification Salesforce pushed (see
//! `sfsync_salesforce::outbound`) becomes one raw-log entry the normal apply path merges into
//! the curated tables.
//!
//! What an Outbound Message becomes (and why):
//! - **Channel** `/outbound/<flow>`: not a Pub/Sub topic (nothing subscribes to it); the raw log
//!   and freshness name the flow by it.
//! - **Event key** `om-<notification id>/0/<record id>` (transaction key `om-<notification id>`,
//!   sequence 0): the notification id is the same on every redelivery, so the key dedupes the
//!   raw log like a CDC event's. Receipts by notification id dedupe before it
//!   (`sfsync_store::OutboundReceipts`).
//! - **Replay id**: the notification id's bytes (opaque, as every replay id).
//! - **Record version** `(SystemModstamp, 0, 0)` — like a snapshot read: older than any CDC change
//!   committed in the same millisecond, so an Outbound Message never overwrites a CDC change of the
//!   record that is as new or newer, whatever order they arrive in. A notification without
//!   `SystemModstamp` cannot be ordered and is refused (add the field to the Outbound Message).
//! - **Change type**: logged as `UPDATE` (the raw log holds CDC change types), applied as
//!   `OUTBOUND_MESSAGE` with source `outbound_message`. It sets the fields the message carries;
//!   the flow's configured fields that the message leaves out are set to null (Salesforce leaves
//!   empty fields out of the message). When those fields cover every stored column of the object,
//!   the change is a full row (a record seen first through an Outbound Message needs no re-read);
//!   otherwise a partial update, and a record never seen before is re-read from Salesforce (as an
//!   UPDATE for an unknown record is). Outbound Messages fire on create and update only: deletes
//!   reach the warehouse through CDC or reconciliation.
//!
//! Everything here is pure.

use serde::{Deserialize, Serialize};
use sfsync_core::{ChangeType, EventKey, RecordVersion, ReplayId};
use sfsync_store::{ChangeSource, RawChange, Value};

use crate::convert;
use crate::error::{PipelineError, Result};
use crate::model::ObjectMapping;
use crate::normalize::{Normalized, Op, RecordChange};

/// The `schema_id` of raw changes made from Outbound Messages (their payload is the JSON of an
/// [`OutboundPayload`], not Avro).
pub const OUTBOUND_SCHEMA_ID: &str = "sfsync:outbound-message:v1";

/// Channels of push sources start with this.
pub const CHANNEL_PREFIX: &str = "/outbound/";

/// The change type Outbound Message changes are applied (and audited) as.
pub const CHANGE_TYPE: &str = "OUTBOUND_MESSAGE";

/// The raw-log channel of an `[[outbound_messages]]` flow.
pub fn channel(flow: &str) -> String {
    format!("{CHANNEL_PREFIX}{flow}")
}

/// Whether `channel` is fed by pushed messages (not a Pub/Sub subscription).
pub fn is_push_channel(channel: &str) -> bool {
    channel.starts_with(CHANNEL_PREFIX)
}

/// Whether a raw change was made from an Outbound Message.
pub fn is_outbound(schema_id: &str) -> bool {
    schema_id == OUTBOUND_SCHEMA_ID
}

/// A notification as the raw log keeps it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundPayload {
    pub flow: String,
    /// 15-character form.
    pub organization_id: String,
    pub action_id: String,
    pub notification_id: String,
    pub object: String,
    pub record_id: String,
    /// The sObject's fields as received, in message order: (API name, text; `None` for nil).
    pub fields: Vec<(String, Option<String>)>,
    /// The flow's configured fields the message left out (applied as null).
    #[serde(default)]
    pub absent: Vec<String>,
}

impl OutboundPayload {
    /// The text of `field` (case-insensitive).
    pub fn field(&self, field: &str) -> Option<Option<&str>> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(field))
            .map(|(_, v)| v.as_deref())
    }

    /// The record version: `(SystemModstamp, 0, 0)`.
    pub fn version(&self) -> std::result::Result<RecordVersion, String> {
        let text = match self.field("SystemModstamp") {
            Some(Some(t)) if !t.trim().is_empty() => t.trim(),
            _ => {
                return Err(
                    "the notification has no SystemModstamp, so it cannot be ordered \
                            against other changes of the record: add SystemModstamp to the \
                            Outbound Message's fields"
                        .into(),
                )
            }
        };
        let ms = convert::parse_datetime(text).map_err(|e| format!("SystemModstamp: {e}"))?;
        Ok(RecordVersion {
            commit_timestamp: ms,
            commit_number: 0,
            sequence_number: 0,
        })
    }

    /// `om-<notification id>`.
    pub fn transaction_key(&self) -> String {
        format!("om-{}", self.notification_id)
    }

    pub fn event_key(&self) -> EventKey {
        EventKey::new(&self.transaction_key(), 0, &self.record_id)
    }

    /// The raw-log entry; an error (naming the problem) when the notification cannot be
    /// ordered.
    pub fn to_raw_change(&self) -> std::result::Result<RawChange, String> {
        let version = self.version()?;
        let payload = serde_json::to_vec(self).map_err(|e| format!("encoding: {e}"))?;
        Ok(RawChange {
            event_key: self.event_key(),
            replay_id: ReplayId::from_bytes(self.notification_id.as_bytes().to_vec()),
            schema_id: OUTBOUND_SCHEMA_ID.to_string(),
            entity: self.object.clone(),
            change_type: ChangeType::Update,
            version,
            payload: payload.into(),
        })
    }
}

/// Normalises a raw change made from an Outbound Message (see the module doc). Values that do
/// not fit their column are errors naming the object, record and field.
pub fn normalize(mapping: &ObjectMapping, raw: &RawChange) -> Result<Normalized> {
    let object = mapping.object();
    let p: OutboundPayload = serde_json::from_slice(&raw.payload).map_err(|e| {
        PipelineError::bad_change(
            "outbound message",
            object,
            "?",
            format!("stored notification does not parse: {e}"),
        )
    })?;
    let bad = |reason: String| {
        PipelineError::bad_change("outbound message", object, &p.record_id, reason)
    };
    let version = p.version().map_err(bad)?;
    let cols = &mapping.model.columns;
    let mut values: Vec<(usize, Value)> = Vec::new();
    let mut fields = Vec::new();
    let given = p
        .fields
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_deref()))
        .chain(p.absent.iter().map(|n| (n.as_str(), None)));
    for (name, text) in given {
        let Some(c) = mapping.column_of_field(name).or_else(|| {
            cols.iter()
                .position(|col| col.field.eq_ignore_ascii_case(name))
        }) else {
            continue;
        };
        if c == 0 || values.iter().any(|(x, _)| *x == c) {
            continue;
        }
        let v = match text {
            None => Value::Null,
            Some(t) => convert::from_csv(cols[c].ty, t)
                .map_err(|e| bad(format!("field {}: {e}", cols[c].field)))?,
        };
        fields.push(cols[c].field.clone());
        values.push((c, v));
    }
    let full = (1..cols.len())
        .filter(|c| !mapping.formula_columns.contains(c))
        .all(|c| values.iter().any(|(x, _)| *x == c));
    let op = if full { Op::Full } else { Op::Patch };
    if full {
        values.sort_by_key(|(c, _)| *c);
        fields = values
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(c, _)| cols[*c].field.clone())
            .collect();
    }
    let transaction_key = p.transaction_key();
    Ok(Normalized::Records(vec![RecordChange {
        id: p.record_id.clone(),
        op,
        change_type: CHANGE_TYPE,
        version,
        values,
        diffs: Vec::new(),
        deleted: false,
        fields,
        event_key: p.event_key().as_str().to_string(),
        transaction_key,
        replay_id: Some(raw.replay_id.clone()),
        commit_user: String::new(),
        change_origin: String::new(),
        origin_client: None,
        source: ChangeSource::OutboundMessage,
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfsync_salesforce::rest::ObjectDescribe;

    fn mapping() -> ObjectMapping {
        let describe: ObjectDescribe = serde_json::from_value(serde_json::json!({
            "name": "Account",
            "fields": [
                {"name": "Id", "type": "id"},
                {"name": "Name", "type": "string"},
                {"name": "AnnualRevenue", "type": "currency"},
                {"name": "SystemModstamp", "type": "datetime"},
            ]
        }))
        .unwrap();
        ObjectMapping::build(&describe, &crate::model::ObjectSpec::new("Account")).unwrap()
    }

    fn payload(fields: Vec<(&str, Option<&str>)>, absent: Vec<&str>) -> OutboundPayload {
        OutboundPayload {
            flow: "accounts".into(),
            organization_id: "00D000000000062".into(),
            action_id: "04k000000000004AAA".into(),
            notification_id: "04l000000000001AAA".into(),
            object: "Account".into(),
            record_id: "001000000000001AAA".into(),
            fields: fields
                .into_iter()
                .map(|(n, v)| (n.to_string(), v.map(str::to_string)))
                .collect(),
            absent: absent.into_iter().map(str::to_string).collect(),
        }
    }

    #[test]
    fn a_notification_becomes_an_ordered_keyed_change() {
        let p = payload(
            vec![
                ("Name", Some("Acme")),
                ("SystemModstamp", Some("2026-01-02T03:04:05.000Z")),
            ],
            vec![],
        );
        let raw = p.to_raw_change().unwrap();
        assert_eq!(
            raw.event_key.as_str(),
            "om-04l000000000001AAA/0/001000000000001AAA"
        );
        assert_eq!(raw.replay_id.as_bytes(), b"04l000000000001AAA");
        assert_eq!(raw.version.commit_timestamp, 1_767_323_045_000);
        assert_eq!(
            (raw.version.commit_number, raw.version.sequence_number),
            (0, 0)
        );
        assert_eq!(raw.change_type, ChangeType::Update);
        let Normalized::Records(rs) = normalize(&mapping(), &raw).unwrap() else {
            panic!("not records");
        };
        let r = &rs[0];
        assert_eq!(
            r.op,
            Op::Patch,
            "AnnualRevenue is not carried: a partial update"
        );
        assert_eq!(r.change_type, CHANGE_TYPE);
        assert_eq!(r.source, ChangeSource::OutboundMessage);
        assert_eq!(r.fields, vec!["Name".to_string()]);
    }

    #[test]
    fn all_columns_make_a_full_row_and_absent_fields_are_null() {
        let p = payload(
            vec![
                ("Name", Some("Acme")),
                ("SystemModstamp", Some("2026-01-02T03:04:05.000Z")),
            ],
            vec!["AnnualRevenue"],
        );
        let Normalized::Records(rs) = normalize(&mapping(), &p.to_raw_change().unwrap()).unwrap()
        else {
            panic!("not records");
        };
        assert_eq!(rs[0].op, Op::Full);
        assert!(
            rs[0].values.contains(&(2, Value::Null)),
            "{:?}",
            rs[0].values
        );
    }

    #[test]
    fn unordered_or_ill_typed_notifications_are_refused() {
        let p = payload(vec![("Name", Some("Acme"))], vec![]);
        let e = p.to_raw_change().unwrap_err();
        assert!(e.contains("no SystemModstamp"), "{e}");
        let p = payload(vec![("SystemModstamp", Some("yesterday"))], vec![]);
        assert!(p.to_raw_change().unwrap_err().contains("SystemModstamp"));
        let p = payload(
            vec![
                ("AnnualRevenue", Some("lots")),
                ("SystemModstamp", Some("2026-01-02T03:04:05.000Z")),
            ],
            vec![],
        );
        let e = normalize(&mapping(), &p.to_raw_change().unwrap()).unwrap_err();
        assert!(e.to_string().contains("AnnualRevenue"), "{e}");
    }

    #[test]
    fn push_channels_are_told_apart() {
        assert!(is_push_channel(&channel("accounts")));
        assert!(!is_push_channel("/data/AccountChangeEvent"));
    }
}
