//! Platform events over Pub/Sub: their writer schemas, decoding a payload into JSON fields and
//! encoding JSON fields into a payload for `Publish`.
//!
//! Guarantees: decoding uses the event's own writer schema (as for change events) and never
//! panics; a `DateTime` field (a `long` of epoch ms whose schema `doc` ends in `:DateTime`, such
//! as `CreatedDate`) reads as RFC 3339 UTC text and a `Date` field (`int` of days) as
//! `YYYY-MM-DD`, everything else as its plain JSON value. Encoding is strict and total: every
//! field of the record is written (absent nullable fields as null), an unknown field, a missing
//! required field or a value of the wrong type is an [`EncodeError`] naming the field, and the
//! bytes decode back with the same schema (round trip, see the tests).

use std::collections::HashSet;

use serde_json::{Map, Value as Json};
use sfsync_core::FieldValue;

use super::avro::{DecodeError, Node, Schema, SchemaError};

/// A compiled platform-event writer schema (a record), with the fields that hold times.
#[derive(Debug, Clone)]
pub struct EventSchema {
    pub schema: Schema,
    /// The writer schema JSON, as received.
    pub json: std::sync::Arc<str>,
    /// The record's simple name: the event's API name (`Order_Shipped__e`).
    pub name: String,
    root: usize,
    datetime: HashSet<String>,
    date: HashSet<String>,
}

/// Why JSON fields could not be encoded as an event of a schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event}: field {field}: {reason}")]
pub struct EncodeError {
    pub event: String,
    /// The field path (`Amount__c`, `Items__c[2]`); `(record)` for the record itself.
    pub field: String,
    pub reason: String,
}

impl EventSchema {
    /// Compiles a platform-event writer schema: its root must be a record.
    pub fn parse(schema_id: &str, json: &str) -> Result<EventSchema, SchemaError> {
        let schema = Schema::parse(schema_id, json)?;
        let Node::Record(root) = schema.root else {
            return Err(SchemaError {
                schema_id: schema_id.to_string(),
                path: "(root)".into(),
                reason: "a platform event schema must be a record".into(),
            });
        };
        let v: Json = serde_json::from_str(json).unwrap_or(Json::Null);
        let mut datetime = HashSet::new();
        let mut date = HashSet::new();
        for f in v["fields"].as_array().into_iter().flatten() {
            let (Some(name), Some(doc)) = (f["name"].as_str(), f["doc"].as_str()) else {
                continue;
            };
            // `CreatedDate:DateTime`, `Data:DateTime:<fieldId>`, `Data:Date`.
            let tags: Vec<&str> = doc.split(':').collect();
            if tags.contains(&"DateTime") {
                datetime.insert(name.to_string());
            } else if tags.contains(&"Date") {
                date.insert(name.to_string());
            }
        }
        let name = schema.records[root].name().to_string();
        Ok(EventSchema {
            schema,
            json: std::sync::Arc::from(json),
            name,
            root,
            datetime,
            date,
        })
    }

    pub fn schema_id(&self) -> &str {
        &self.schema.schema_id
    }

    /// The record's field names, in schema order.
    pub fn field_names(&self) -> Vec<&str> {
        self.schema.records[self.root]
            .fields
            .iter()
            .map(|f| f.name.as_str())
            .collect()
    }

    /// Whether the field exists and is nullable (a union with a `null` branch).
    pub fn is_nullable(&self, field: &str) -> Option<bool> {
        self.schema.records[self.root]
            .fields
            .iter()
            .find(|f| f.name == field)
            .map(|f| matches!(&f.node, Node::Union(b) if b.iter().any(|n| matches!(n, Node::Null))))
    }

    /// Decodes a payload into the event's fields (see the module docs for times).
    pub fn decode_fields(&self, payload: &[u8]) -> Result<Map<String, Json>, DecodeError> {
        match self.schema.decode_value(payload)? {
            FieldValue::Record(fields) => Ok(fields
                .into_iter()
                .map(|(name, v)| {
                    let j = match v {
                        FieldValue::Long(ms) if self.datetime.contains(&name) => {
                            rfc3339(ms).map_or(Json::Null, Json::String)
                        }
                        FieldValue::Int(days) if self.date.contains(&name) => {
                            date_text(days).map_or(Json::Null, Json::String)
                        }
                        other => value_json(other),
                    };
                    (name, j)
                })
                .collect()),
            other => Err(DecodeError::NotAChangeEvent {
                schema_id: self.schema.schema_id.clone(),
                reason: format!("the payload is not a record: {other:?}"),
            }),
        }
    }

    /// Encodes `fields` (field name → JSON) as one raw Avro record of this schema. Absent
    /// nullable fields are null; a `DateTime` field takes epoch ms or RFC 3339 text, a `Date`
    /// field days or `YYYY-MM-DD`.
    pub fn encode_fields(&self, fields: &Map<String, Json>) -> Result<Vec<u8>, EncodeError> {
        let err = |field: &str, reason: String| EncodeError {
            event: self.name.clone(),
            field: field.to_string(),
            reason,
        };
        let rec = &self.schema.records[self.root];
        if let Some(k) = fields
            .keys()
            .find(|k| !rec.fields.iter().any(|f| &f.name == *k))
        {
            return Err(err(
                k,
                format!(
                    "not a field of {} (fields: {})",
                    self.name,
                    self.field_names().join(", ")
                ),
            ));
        }
        let mut out = Vec::with_capacity(64);
        for f in &rec.fields {
            let v = fields.get(&f.name).unwrap_or(&Json::Null);
            let v = self.time_value(&f.name, v).map_err(|r| err(&f.name, r))?;
            write(&self.schema, &f.node, &v, &mut out, 0).map_err(|r| err(&f.name, r))?;
        }
        Ok(out)
    }

    /// Turns RFC 3339 / `YYYY-MM-DD` text of a time field into its number.
    fn time_value(&self, field: &str, v: &Json) -> Result<Json, String> {
        let Json::String(s) = v else {
            return Ok(v.clone());
        };
        if self.datetime.contains(field) {
            let t = chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|e| format!("'{s}' is not an RFC 3339 date-time: {e}"))?;
            return Ok(Json::from(t.timestamp_millis()));
        }
        if self.date.contains(field) {
            let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map_err(|e| format!("'{s}' is not a YYYY-MM-DD date: {e}"))?;
            let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
            return Ok(Json::from((d - epoch).num_days()));
        }
        Ok(v.clone())
    }
}

fn rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn date_text(days: i32) -> Option<String> {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    epoch
        .checked_add_signed(chrono::Duration::days(i64::from(days)))
        .map(|d| d.format("%Y-%m-%d").to_string())
}

/// A decoded value as JSON (bytes as lossy UTF-8 text, enum symbols as text).
pub fn value_json(v: FieldValue) -> Json {
    match v {
        FieldValue::Null => Json::Null,
        FieldValue::Bool(b) => Json::Bool(b),
        FieldValue::Int(i) => Json::from(i),
        FieldValue::Long(i) => Json::from(i),
        FieldValue::Float(f) => {
            serde_json::Number::from_f64(f64::from(f)).map_or(Json::Null, Json::Number)
        }
        FieldValue::Double(f) => serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number),
        FieldValue::String(s) | FieldValue::Enum(s) => Json::String(s),
        FieldValue::Bytes(b) => Json::String(String::from_utf8_lossy(&b).into_owned()),
        FieldValue::Array(items) => Json::Array(items.into_iter().map(value_json).collect()),
        FieldValue::Map(entries) | FieldValue::Record(entries) => Json::Object(
            entries
                .into_iter()
                .map(|(k, v)| (k, value_json(v)))
                .collect(),
        ),
        FieldValue::Diff { patch, sha256 } => {
            serde_json::json!({"patch": patch, "sha256": sha256})
        }
    }
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn zigzag(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    zigzag(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// Writes `v` as `node`; the error is the reason (the caller names the field).
fn write(
    schema: &Schema,
    node: &Node,
    v: &Json,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), String> {
    if depth > super::avro::MAX_DEPTH {
        return Err("nested too deep".into());
    }
    let wrong = |want: &str| Err(format!("expected {want}, got {}", kind(v)));
    match node {
        Node::Null => match v {
            Json::Null => Ok(()),
            _ => wrong("null"),
        },
        Node::Boolean => match v {
            Json::Bool(b) => {
                out.push(u8::from(*b));
                Ok(())
            }
            _ => wrong("a boolean"),
        },
        Node::Int => match v.as_i64().and_then(|i| i32::try_from(i).ok()) {
            Some(i) => {
                zigzag(out, i64::from(i));
                Ok(())
            }
            None => wrong("a 32-bit integer"),
        },
        Node::Long => match v.as_i64() {
            Some(i) => {
                zigzag(out, i);
                Ok(())
            }
            None => wrong("a 64-bit integer"),
        },
        Node::Float => match v.as_f64() {
            Some(f) => {
                out.extend_from_slice(&(f as f32).to_le_bytes());
                Ok(())
            }
            None => wrong("a number"),
        },
        Node::Double => match v.as_f64() {
            Some(f) => {
                out.extend_from_slice(&f.to_le_bytes());
                Ok(())
            }
            None => wrong("a number"),
        },
        Node::Bytes | Node::String => match v {
            Json::String(s) => {
                bytes(out, s.as_bytes());
                Ok(())
            }
            _ => wrong("a string"),
        },
        Node::Fixed(n) => match v {
            Json::String(s) if s.len() == *n => {
                out.extend_from_slice(s.as_bytes());
                Ok(())
            }
            _ => wrong(&format!("a string of {n} bytes")),
        },
        Node::Enum(i) => {
            let e = &schema.enums[*i];
            match v
                .as_str()
                .and_then(|s| e.symbols.iter().position(|x| x == s))
            {
                Some(p) => {
                    zigzag(out, p as i64);
                    Ok(())
                }
                None => Err(format!(
                    "expected one of {} ({}), got {v}",
                    e.symbols.join(", "),
                    e.full_name
                )),
            }
        }
        Node::Array(items) => match v {
            Json::Array(a) => {
                if !a.is_empty() {
                    zigzag(out, a.len() as i64);
                    for (i, item) in a.iter().enumerate() {
                        write(schema, items, item, out, depth + 1)
                            .map_err(|r| format!("[{i}]: {r}"))?;
                    }
                }
                out.push(0);
                Ok(())
            }
            _ => wrong("an array"),
        },
        Node::Map(values) => match v {
            Json::Object(m) => {
                if !m.is_empty() {
                    zigzag(out, m.len() as i64);
                    for (k, item) in m {
                        bytes(out, k.as_bytes());
                        write(schema, values, item, out, depth + 1)
                            .map_err(|r| format!("[{k:?}]: {r}"))?;
                    }
                }
                out.push(0);
                Ok(())
            }
            _ => wrong("an object"),
        },
        Node::Record(i) => match v {
            Json::Object(m) => {
                let rec = &schema.records[*i];
                if let Some(k) = m.keys().find(|k| !rec.fields.iter().any(|f| &f.name == *k)) {
                    return Err(format!("{k}: not a field of {}", rec.full_name));
                }
                for f in &rec.fields {
                    let fv = m.get(&f.name).unwrap_or(&Json::Null);
                    write(schema, &f.node, fv, out, depth + 1)
                        .map_err(|r| format!("{}: {r}", f.name))?;
                }
                Ok(())
            }
            _ => wrong("an object"),
        },
        Node::Union(branches) => {
            if v.is_null() {
                return match branches.iter().position(|b| matches!(b, Node::Null)) {
                    Some(p) => {
                        zigzag(out, p as i64);
                        Ok(())
                    }
                    None => Err("required: a value is needed (not null)".into()),
                };
            }
            let mut reasons = Vec::new();
            for (p, b) in branches.iter().enumerate() {
                if matches!(b, Node::Null) {
                    continue;
                }
                let mut buf = Vec::new();
                zigzag(&mut buf, p as i64);
                match write(schema, b, v, &mut buf, depth + 1) {
                    Ok(()) => {
                        out.extend_from_slice(&buf);
                        return Ok(());
                    }
                    Err(r) => reasons.push(r),
                }
            }
            Err(reasons.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SCHEMA: &str = r#"{"type":"record","name":"Order_Shipped__e","namespace":"com.sforce.eventbus","fields":[
        {"name":"CreatedDate","type":"long","doc":"CreatedDate:DateTime"},
        {"name":"CreatedById","type":"string","doc":"CreatedBy:EntityId"},
        {"name":"Order__c","type":["null","string"],"doc":"Data:Text","default":null},
        {"name":"Amount__c","type":["null","double"],"doc":"Data:Double","default":null},
        {"name":"Count__c","type":["null","long"],"doc":"Data:Number","default":null},
        {"name":"Ship_Date__c","type":["null","int"],"doc":"Data:Date","default":null},
        {"name":"Shipped_At__c","type":["null","long"],"doc":"Data:DateTime","default":null},
        {"name":"Rush__c","type":["null","boolean"],"doc":"Data:Boolean","default":null}]}"#;

    fn schema() -> EventSchema {
        EventSchema::parse("sid", SCHEMA).unwrap()
    }

    #[test]
    fn fields_round_trip_with_times_as_text() {
        let s = schema();
        assert_eq!(s.name, "Order_Shipped__e");
        assert_eq!(s.is_nullable("Order__c"), Some(true));
        assert_eq!(s.is_nullable("CreatedById"), Some(false));
        let input = json!({
            "CreatedDate": "2024-05-01T10:00:00.250Z",
            "CreatedById": "005000000000001AAA",
            "Order__c": "O-1",
            "Amount__c": 12.5,
            "Count__c": 3,
            "Ship_Date__c": "2024-05-02",
            "Shipped_At__c": 1714557600000i64,
            "Rush__c": true
        });
        let bytes = s.encode_fields(input.as_object().unwrap()).unwrap();
        let back = s.decode_fields(&bytes).unwrap();
        assert_eq!(back["CreatedDate"], json!("2024-05-01T10:00:00.250Z"));
        assert_eq!(back["Ship_Date__c"], json!("2024-05-02"));
        assert_eq!(back["Shipped_At__c"], json!("2024-05-01T10:00:00.000Z"));
        assert_eq!(back["Amount__c"], json!(12.5));
        assert_eq!(back["Count__c"], json!(3));
        assert_eq!(back["Rush__c"], json!(true));
        assert_eq!(back["Order__c"], json!("O-1"));
        // Absent nullable fields are null.
        let min = json!({"CreatedDate": 0, "CreatedById": "005"});
        let back = s
            .decode_fields(&s.encode_fields(min.as_object().unwrap()).unwrap())
            .unwrap();
        assert_eq!(back["Order__c"], Json::Null);
    }

    #[test]
    fn bad_fields_are_named() {
        let s = schema();
        let e = |v: Json| s.encode_fields(v.as_object().unwrap()).unwrap_err();
        let base = || json!({"CreatedDate": 0, "CreatedById": "005"});
        let mut v = base();
        v["Nope__c"] = json!(1);
        let err = e(v);
        assert_eq!(err.field, "Nope__c");
        assert!(err.reason.contains("not a field"), "{err}");
        let mut v = base();
        v["Amount__c"] = json!("many");
        assert_eq!(e(v).field, "Amount__c");
        let mut v = base();
        v["Count__c"] = json!(1.5);
        assert_eq!(e(v).field, "Count__c");
        let err = e(json!({"CreatedDate": 0}));
        assert_eq!(err.field, "CreatedById");
        assert!(err.reason.contains("expected a string"), "{err}");
        let mut v = base();
        v["Shipped_At__c"] = json!("yesterday");
        assert!(e(v).reason.contains("RFC 3339"));
    }

    #[test]
    fn zigzag_matches_the_avro_spec() {
        for (n, want) in [
            (0i64, vec![0u8]),
            (-1, vec![1]),
            (1, vec![2]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 1]),
        ] {
            let mut out = Vec::new();
            zigzag(&mut out, n);
            assert_eq!(out, want, "{n}");
        }
    }
}
