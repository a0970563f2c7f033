//! Change Data Capture domain types: the decoded [`Change`] with its [`ChangeHeader`], opaque
//! [`ReplayId`]s, the deterministic [`EventKey`] and the ordered [`RecordVersion`].
//!
//! Guarantees: replay ids are kept as the exact bytes the server sent and are never interpreted
//! as numbers; an event key is a pure function of (transactionKey, sequenceNumber, record id), so
//! a re-delivered change maps to the same key; record versions order by (commitTimestamp,
//! commitNumber, sequenceNumber), so an older change can always be recognised as older. A
//! [`Change`] carries only the meaningful field values of its change type (partial updates are
//! partial). Everything here is pure and serde-serialisable.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An opaque Pub/Sub replay id: the exact bytes the server sent, stored verbatim.
///
/// Contract: sfsync never parses it as a number, never re-encodes it and compares it only for
/// equality. `Debug`/`Display` and the serde form show lower-case hex of the bytes.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct ReplayId(Vec<u8>);

impl ReplayId {
    /// Wraps the bytes as received.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> ReplayId {
        ReplayId(bytes.into())
    }

    /// The bytes exactly as received.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Lower-case hex of the bytes (the persisted text form).
    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }

    /// Parses the form written by [`ReplayId::to_hex`] (either case, even length).
    pub fn from_hex(s: &str) -> Result<ReplayId, ReplayIdHexError> {
        hex_decode(s)
            .map(ReplayId)
            .ok_or_else(|| ReplayIdHexError(s.to_string()))
    }
}

/// A string that is not the hex form of a replay id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a replay id in hex (an even number of hex digits)")]
pub struct ReplayIdHexError(pub String);

impl fmt::Debug for ReplayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplayId({})", self.to_hex())
    }
}

impl fmt::Display for ReplayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for ReplayId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ReplayId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ReplayId::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    b.chunks(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

/// The `changeType` of a change event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChangeType {
    Create,
    Update,
    Delete,
    Undelete,
    GapCreate,
    GapUpdate,
    GapDelete,
    GapUndelete,
    GapOverflow,
}

impl ChangeType {
    pub const ALL: [ChangeType; 9] = [
        ChangeType::Create,
        ChangeType::Update,
        ChangeType::Delete,
        ChangeType::Undelete,
        ChangeType::GapCreate,
        ChangeType::GapUpdate,
        ChangeType::GapDelete,
        ChangeType::GapUndelete,
        ChangeType::GapOverflow,
    ];

    /// The Avro enum symbol (`CREATE`, `GAP_OVERFLOW`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Create => "CREATE",
            ChangeType::Update => "UPDATE",
            ChangeType::Delete => "DELETE",
            ChangeType::Undelete => "UNDELETE",
            ChangeType::GapCreate => "GAP_CREATE",
            ChangeType::GapUpdate => "GAP_UPDATE",
            ChangeType::GapDelete => "GAP_DELETE",
            ChangeType::GapUndelete => "GAP_UNDELETE",
            ChangeType::GapOverflow => "GAP_OVERFLOW",
        }
    }

    /// Parses an Avro enum symbol (exact, case-sensitive).
    pub fn parse(symbol: &str) -> Option<ChangeType> {
        ChangeType::ALL.into_iter().find(|t| t.as_str() == symbol)
    }

    /// Gap and overflow events carry no field values: the records must be re-read.
    pub fn is_gap(self) -> bool {
        matches!(
            self,
            ChangeType::GapCreate
                | ChangeType::GapUpdate
                | ChangeType::GapDelete
                | ChangeType::GapUndelete
                | ChangeType::GapOverflow
        )
    }
}

impl fmt::Display for ChangeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `ChangeEventHeader` of a change event, with the Pub/Sub bitmaps decoded.
///
/// `changed_fields`, `nulled_fields` and `diff_fields` hold field *paths*: a top-level field name
/// (`Phone`) or `Parent.Component` for a component of a compound field (`BillingAddress.City`).
/// Top-level paths come first in field-position order, then nested paths in the order of the
/// bitmap entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ChangeHeader {
    pub entity_name: String,
    /// Usually one id; several for a merged event; a `<prefix>*` wildcard in rare cases; empty for
    /// `GAP_OVERFLOW`.
    pub record_ids: Vec<String>,
    pub change_type: Option<ChangeType>,
    pub change_origin: String,
    pub transaction_key: String,
    pub sequence_number: i32,
    /// Commit time, epoch milliseconds.
    pub commit_timestamp: i64,
    pub commit_number: i64,
    pub commit_user: String,
    pub changed_fields: Vec<String>,
    pub nulled_fields: Vec<String>,
    pub diff_fields: Vec<String>,
}

impl ChangeHeader {
    /// The change type; `None` only when the header lacked it (never for a decoded event).
    pub fn change_type(&self) -> Option<ChangeType> {
        self.change_type
    }

    /// The record version of this change.
    pub fn version(&self) -> RecordVersion {
        RecordVersion {
            commit_timestamp: self.commit_timestamp,
            commit_number: self.commit_number,
            sequence_number: self.sequence_number,
        }
    }

    /// The `client=` part of `changeOrigin` (the `Sforce-Call-Options` client id), if any.
    pub fn origin_client(&self) -> Option<&str> {
        let idx = self.change_origin.find("client=")?;
        let rest = &self.change_origin[idx + "client=".len()..];
        let end = rest.find([';', ',']).unwrap_or(rest.len());
        let client = rest[..end].trim();
        (!client.is_empty()).then_some(client)
    }
}

/// A decoded Avro value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum FieldValue {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    String(String),
    Bytes(Vec<u8>),
    /// An enum symbol.
    Enum(String),
    Array(Vec<FieldValue>),
    /// Map entries in wire order.
    Map(Vec<(String, FieldValue)>),
    /// A nested record (compound field such as an Address or a Name), fields in schema order.
    Record(Vec<(String, FieldValue)>),
    /// A long-text field sent as a unified diff (flagged in `diffFields`): `patch` is the diff
    /// text, `sha256` the hex SHA-256 of the full new value announced in its `+++` line.
    Diff {
        patch: String,
        sha256: String,
    },
}

impl FieldValue {
    pub fn is_null(&self) -> bool {
        matches!(self, FieldValue::Null)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::String(s) | FieldValue::Enum(s) => Some(s),
            _ => None,
        }
    }

    /// A field of a nested record.
    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        match self {
            FieldValue::Record(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// One decoded change event.
///
/// `fields` contract by change type:
/// - `CREATE`, `UNDELETE`: every non-header field of the schema, in schema order (null when empty).
/// - `UPDATE`: exactly the paths of `changed_fields` ∪ `nulled_fields` (a nulled path has
///   [`FieldValue::Null`]), in header order; a nested path `Parent.Component` is omitted when its
///   parent is itself listed (the parent carries the whole record). Diffed paths carry
///   [`FieldValue::Diff`].
/// - `DELETE` and every `GAP_*` type: empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub header: ChangeHeader,
    /// The writer schema id the payload was encoded with.
    pub schema_id: String,
    pub replay_id: ReplayId,
    pub fields: Vec<(String, FieldValue)>,
}

impl Change {
    /// The value of a field path (`Phone`, `BillingAddress.City`). For a nested path whose
    /// parent is present as a record, the component is looked up inside it.
    pub fn field(&self, path: &str) -> Option<&FieldValue> {
        if let Some((_, v)) = self.fields.iter().find(|(p, _)| p == path) {
            return Some(v);
        }
        let (parent, child) = path.split_once('.')?;
        self.fields
            .iter()
            .find(|(p, _)| p == parent)
            .and_then(|(_, v)| v.get(child))
    }

    pub fn change_type(&self) -> Option<ChangeType> {
        self.header.change_type
    }

    pub fn version(&self) -> RecordVersion {
        self.header.version()
    }

    /// One key per record id (one key with an empty record id when there is none, as for
    /// `GAP_OVERFLOW`).
    pub fn event_keys(&self) -> Vec<EventKey> {
        if self.header.record_ids.is_empty() {
            return vec![EventKey::new(
                &self.header.transaction_key,
                self.header.sequence_number,
                "",
            )];
        }
        self.header
            .record_ids
            .iter()
            .map(|id| {
                EventKey::new(
                    &self.header.transaction_key,
                    self.header.sequence_number,
                    id,
                )
            })
            .collect()
    }
}

/// The version of a record change. Ordered by commit timestamp, then commit number (SCN), then
/// sequence number within the transaction: a greater version is a later change.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub struct RecordVersion {
    pub commit_timestamp: i64,
    pub commit_number: i64,
    pub sequence_number: i32,
}

/// The deterministic identity of one change to one record:
/// `<transactionKey>/<sequenceNumber>/<recordId>`. Re-delivery yields the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventKey(String);

impl EventKey {
    pub fn new(transaction_key: &str, sequence_number: i32, record_id: &str) -> EventKey {
        EventKey(format!("{transaction_key}/{sequence_number}/{record_id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_id_is_opaque_hex() {
        let r = ReplayId::from_bytes(vec![0, 0, 0, 0, 0, 0, 0x12, 0xab]);
        assert_eq!(format!("{r:?}"), "ReplayId(00000000000012ab)");
        assert_eq!(ReplayId::from_hex(&r.to_hex()).unwrap(), r);
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"00000000000012ab\"");
        assert!(ReplayId::from_hex("abc").is_err());
        assert!(ReplayId::from_hex("zz").is_err());
    }

    #[test]
    fn change_type_symbols_round_trip() {
        for t in ChangeType::ALL {
            assert_eq!(ChangeType::parse(t.as_str()), Some(t));
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", t.as_str())
            );
        }
        assert!(ChangeType::GapOverflow.is_gap());
        assert!(!ChangeType::Update.is_gap());
        assert_eq!(ChangeType::parse("SNAPSHOT"), None);
    }

    #[test]
    fn versions_order_and_keys_are_deterministic() {
        let a = RecordVersion {
            commit_timestamp: 1,
            commit_number: 5,
            sequence_number: 2,
        };
        let b = RecordVersion {
            sequence_number: 3,
            ..a
        };
        assert!(a < b);
        assert_eq!(EventKey::new("tx", 2, "001").as_str(), "tx/2/001");
    }

    #[test]
    fn origin_client_is_extracted() {
        let h = ChangeHeader {
            change_origin: "com/salesforce/api/rest/60.0;client=sfsync".into(),
            ..Default::default()
        };
        assert_eq!(h.origin_client(), Some("sfsync"));
        let h = ChangeHeader {
            change_origin: "com/salesforce/api/rest/60.0".into(),
            ..Default::default()
        };
        assert_eq!(h.origin_client(), None);
    }
}
