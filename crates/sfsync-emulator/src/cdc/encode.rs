//! Avro binary encoding of one event (raw datum: no container header, no fingerprint prefix),
//! written with the `apache-avro` reference implementation so that sfsync's own decoder is
//! checked against an independent encoder.
//!
//! Guarantee: [`encode_event`] either returns bytes that `apache_avro::from_avro_datum` decodes
//! with `schema.json` back to exactly the given header and values, or an error naming the field
//! whose value does not fit the schema. Nothing here panics on bad values.

use apache_avro::types::Value as Avro;
use serde_json::Value as Json;
use sfsync_org::value::{parse_date, parse_datetime};

use super::schema::{AvroKind, CdcSchema, TopField, CHANGE_TYPES};

/// `ChangeType` enum symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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
    pub fn symbol(self) -> &'static str {
        CHANGE_TYPES[self.index()]
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The gap type replacing this change type (`UPDATE` → `GAP_UPDATE`).
    pub fn gap(self) -> ChangeType {
        match self {
            ChangeType::Create | ChangeType::GapCreate => ChangeType::GapCreate,
            ChangeType::Update | ChangeType::GapUpdate => ChangeType::GapUpdate,
            ChangeType::Delete | ChangeType::GapDelete => ChangeType::GapDelete,
            ChangeType::Undelete | ChangeType::GapUndelete => ChangeType::GapUndelete,
            ChangeType::GapOverflow => ChangeType::GapOverflow,
        }
    }
}

/// The `ChangeEventHeader` record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChangeEventHeader {
    pub entity_name: String,
    pub record_ids: Vec<String>,
    pub change_type: ChangeType,
    pub change_origin: String,
    pub transaction_key: String,
    pub sequence_number: i32,
    pub commit_timestamp: i64,
    pub commit_number: i64,
    pub commit_user: String,
    /// Bitmap strings (see `cdc::bitmap`).
    pub nulled_fields: Vec<String>,
    pub diff_fields: Vec<String>,
    pub changed_fields: Vec<String>,
}

/// One field value of an event body.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum FieldValue {
    Null,
    String(String),
    Boolean(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    /// A compound field: one value per component, in the nested record's order.
    Record(Vec<FieldValue>),
}

/// A change event: header plus one value per top-level position 1.. of its schema
/// (`values[i]` is position `i + 1`; missing trailing values are null).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChangeEvent {
    pub header: ChangeEventHeader,
    pub values: Vec<FieldValue>,
}

/// A value that does not fit the schema.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("{schema}: field {field} expects {expected}, got {got:?}")]
    Mismatch {
        schema: String,
        field: String,
        expected: &'static str,
        got: FieldValue,
    },
    #[error("{schema}: event has {got} values but the schema has {max} body fields")]
    TooManyValues {
        schema: String,
        got: usize,
        max: usize,
    },
    #[error("{schema}: Avro writer refused the record: {reason}")]
    Avro { schema: String, reason: String },
}

fn strings(v: &[String]) -> Avro {
    Avro::Array(v.iter().map(|s| Avro::String(s.clone())).collect())
}

fn header_value(h: &ChangeEventHeader) -> Avro {
    Avro::Record(vec![
        ("entityName".into(), Avro::String(h.entity_name.clone())),
        ("recordIds".into(), strings(&h.record_ids)),
        (
            "changeType".into(),
            Avro::Enum(h.change_type.index() as u32, h.change_type.symbol().into()),
        ),
        ("changeOrigin".into(), Avro::String(h.change_origin.clone())),
        (
            "transactionKey".into(),
            Avro::String(h.transaction_key.clone()),
        ),
        ("sequenceNumber".into(), Avro::Int(h.sequence_number)),
        ("commitTimestamp".into(), Avro::Long(h.commit_timestamp)),
        ("commitNumber".into(), Avro::Long(h.commit_number)),
        ("commitUser".into(), Avro::String(h.commit_user.clone())),
        ("nulledFields".into(), strings(&h.nulled_fields)),
        ("diffFields".into(), strings(&h.diff_fields)),
        ("changedFields".into(), strings(&h.changed_fields)),
    ])
}

fn scalar(schema: &str, field: &str, kind: AvroKind, v: &FieldValue) -> Result<Avro, EncodeError> {
    let inner = match (kind, v) {
        (_, FieldValue::Null) => return Ok(Avro::Union(0, Box::new(Avro::Null))),
        (AvroKind::String, FieldValue::String(s)) => Avro::String(s.clone()),
        (AvroKind::Boolean, FieldValue::Boolean(b)) => Avro::Boolean(*b),
        (AvroKind::Int | AvroKind::Date, FieldValue::Int(i)) => Avro::Int(*i),
        (AvroKind::Long | AvroKind::DateTime, FieldValue::Long(l)) => Avro::Long(*l),
        (AvroKind::Long | AvroKind::DateTime, FieldValue::Int(i)) => Avro::Long(*i as i64),
        (AvroKind::Double, FieldValue::Double(d)) => Avro::Double(*d),
        (AvroKind::Double, FieldValue::Int(i)) => Avro::Double(*i as f64),
        (AvroKind::Double, FieldValue::Long(l)) => Avro::Double(*l as f64),
        _ => {
            return Err(EncodeError::Mismatch {
                schema: schema.to_string(),
                field: field.to_string(),
                expected: match kind {
                    AvroKind::String => "string",
                    AvroKind::Boolean => "boolean",
                    AvroKind::Int | AvroKind::Date => "int",
                    AvroKind::Long | AvroKind::DateTime => "long",
                    AvroKind::Double => "double",
                },
                got: v.clone(),
            })
        }
    };
    Ok(Avro::Union(1, Box::new(inner)))
}

/// The Avro value of a body (everything after the header, or the whole record for platform
/// events, whose layout has no header).
fn body_values(
    schema: &CdcSchema,
    values: &[FieldValue],
) -> Result<Vec<(String, Avro)>, EncodeError> {
    let body: Vec<&TopField> = schema
        .fields
        .iter()
        .filter(|f| !matches!(f, TopField::Header))
        .collect();
    if values.len() > body.len() {
        return Err(EncodeError::TooManyValues {
            schema: schema.entity.clone(),
            got: values.len(),
            max: body.len(),
        });
    }
    let mut out = Vec::with_capacity(body.len() + 1);
    for (i, f) in body.iter().enumerate() {
        let v = values.get(i).unwrap_or(&FieldValue::Null);
        let av = match f {
            TopField::Header => continue,
            TopField::Scalar { name, kind } => scalar(&schema.entity, name, *kind, v)?,
            TopField::Required { name, kind } => match scalar(&schema.entity, name, *kind, v)? {
                Avro::Union(1, inner) => *inner,
                _ => {
                    return Err(EncodeError::Mismatch {
                        schema: schema.entity.clone(),
                        field: name.clone(),
                        expected: "a non-null value",
                        got: v.clone(),
                    })
                }
            },
            TopField::Compound {
                name, components, ..
            } => match v {
                FieldValue::Null => Avro::Union(0, Box::new(Avro::Null)),
                FieldValue::Record(parts) if parts.len() <= components.len() => {
                    let mut rec = Vec::with_capacity(components.len());
                    for (k, c) in components.iter().enumerate() {
                        let pv = parts.get(k).unwrap_or(&FieldValue::Null);
                        let field = format!("{name}.{}", c.name);
                        rec.push((c.name.clone(), scalar(&schema.entity, &field, c.kind, pv)?));
                    }
                    Avro::Union(1, Box::new(Avro::Record(rec)))
                }
                other => {
                    return Err(EncodeError::Mismatch {
                        schema: schema.entity.clone(),
                        field: name.clone(),
                        expected: "record with at most one value per component",
                        got: other.clone(),
                    })
                }
            },
        };
        out.push((f.name().to_string(), av));
    }
    Ok(out)
}

/// `to_avro_datum` of the reference implementation (validates the value against the schema).
fn write_datum(schema: &CdcSchema, value: Avro) -> Result<Vec<u8>, EncodeError> {
    apache_avro::writer::datum::GenericDatumWriter::builder(&schema.avro)
        .build()
        .and_then(|w| w.write_value_to_vec(value))
        .map_err(|e| EncodeError::Avro {
            schema: schema.entity.clone(),
            reason: e.to_string(),
        })
}

/// Decodes a raw Avro datum with a writer schema JSON (reference implementation; tests and
/// tools use it to check payloads).
pub fn decode_datum(schema_json: &str, payload: &[u8]) -> Result<Avro, String> {
    let schema = apache_avro::Schema::parse_str(schema_json).map_err(|e| format!("schema: {e}"))?;
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .map_err(|e| format!("schema: {e}"))?;
    let mut r = payload;
    let v = reader
        .read_value(&mut r)
        .map_err(|e| format!("payload: {e}"))?;
    if !r.is_empty() {
        return Err(format!(
            "payload: {} trailing bytes after the record",
            r.len()
        ));
    }
    Ok(v)
}

/// Raw Avro binary of a change event written with `schema`.
pub fn encode_event(schema: &CdcSchema, event: &ChangeEvent) -> Result<Vec<u8>, EncodeError> {
    let mut rec = vec![("ChangeEventHeader".to_string(), header_value(&event.header))];
    rec.extend(body_values(schema, &event.values)?);
    write_datum(schema, Avro::Record(rec))
}

/// Raw Avro binary of a platform event (`values` in the schema's field order).
pub fn encode_platform_event(
    schema: &CdcSchema,
    values: &[FieldValue],
) -> Result<Vec<u8>, EncodeError> {
    let rec = body_values(schema, values)?;
    write_datum(schema, Avro::Record(rec))
}

/// Converts an org field value (REST JSON form) to the Avro kind of its schema field. Values
/// that cannot be converted become null (the org validated them on write, so this only happens
/// for a type change mid-flight).
pub fn json_to_value(kind: AvroKind, v: &Json) -> FieldValue {
    match (kind, v) {
        (_, Json::Null) => FieldValue::Null,
        (AvroKind::String, Json::String(s)) => FieldValue::String(s.clone()),
        (AvroKind::String, other) => FieldValue::String(other.to_string()),
        (AvroKind::Boolean, Json::Bool(b)) => FieldValue::Boolean(*b),
        (AvroKind::Int, Json::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .and_then(|i| i32::try_from(i).ok())
            .map(FieldValue::Int)
            .unwrap_or(FieldValue::Null),
        (AvroKind::Long, Json::Number(n)) => {
            n.as_i64().map(FieldValue::Long).unwrap_or(FieldValue::Null)
        }
        (AvroKind::Double, Json::Number(n)) => n
            .as_f64()
            .map(FieldValue::Double)
            .unwrap_or(FieldValue::Null),
        (AvroKind::Date, Json::String(s)) => parse_date(s)
            .map(FieldValue::Int)
            .unwrap_or(FieldValue::Null),
        (AvroKind::DateTime, Json::String(s)) => parse_datetime(s)
            .map(FieldValue::Long)
            .unwrap_or(FieldValue::Null),
        _ => FieldValue::Null,
    }
}

/// Body values (positions 1..) of a record given as org field name → REST JSON value; fields
/// absent from `fields` are null. Compound components are gathered into their nested record
/// (null when every component is absent or null).
pub fn values_from_fields(
    schema: &CdcSchema,
    fields: &serde_json::Map<String, Json>,
) -> Vec<FieldValue> {
    let mut out = Vec::with_capacity(schema.fields.len());
    for f in &schema.fields {
        match f {
            TopField::Header => {}
            TopField::Scalar { name, kind } | TopField::Required { name, kind } => out.push(
                fields
                    .get(name)
                    .map(|v| json_to_value(*kind, v))
                    .unwrap_or(FieldValue::Null),
            ),
            TopField::Compound { components, .. } => {
                let parts: Vec<FieldValue> = components
                    .iter()
                    .map(|c| {
                        fields
                            .get(&c.field)
                            .map(|v| json_to_value(c.kind, v))
                            .unwrap_or(FieldValue::Null)
                    })
                    .collect();
                if parts.iter().all(|p| *p == FieldValue::Null) {
                    out.push(FieldValue::Null);
                } else {
                    out.push(FieldValue::Record(parts));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::schema::schema_for;
    use sfsync_org::Schema;

    fn header() -> ChangeEventHeader {
        ChangeEventHeader {
            entity_name: "Account".into(),
            record_ids: vec!["001000000000001AAA".into()],
            change_type: ChangeType::Update,
            change_origin: "com/salesforce/api/rest/66.0;client=x".into(),
            transaction_key: "k".into(),
            sequence_number: 1,
            commit_timestamp: 1_700_000_000_000,
            commit_number: 42,
            commit_user: "005000000000001AAA".into(),
            nulled_fields: vec![],
            diff_fields: vec![],
            changed_fields: vec!["0x400000C0".into(), "4-0x0A".into()],
        }
    }

    #[test]
    fn round_trips_through_the_reference_decoder() {
        let schema = Schema::standard();
        let s = schema_for(schema.object("Account").unwrap());
        let mut fields = serde_json::Map::new();
        fields.insert("Name".into(), Json::from("Acme"));
        fields.insert("BillingCity".into(), Json::from("Paris"));
        fields.insert("NumberOfEmployees".into(), Json::from(12));
        fields.insert("AnnualRevenue".into(), Json::from(1.5));
        fields.insert(
            "CreatedDate".into(),
            Json::from("2024-04-26T16:36:32.000+0000"),
        );
        let values = values_from_fields(&s, &fields);
        let ev = ChangeEvent {
            header: header(),
            values,
        };
        let bytes = encode_event(&s, &ev).unwrap();
        let v = decode_datum(&s.json, &bytes).unwrap();
        let Avro::Record(fs) = v else {
            panic!("not a record")
        };
        assert_eq!(
            fs[1],
            (
                "Name".into(),
                Avro::Union(1, Box::new(Avro::String("Acme".into())))
            )
        );
        let Avro::Union(1, addr) = &fs[4].1 else {
            panic!("address null")
        };
        let Avro::Record(addr) = addr.as_ref() else {
            panic!()
        };
        assert_eq!(
            addr[1].1,
            Avro::Union(1, Box::new(Avro::String("Paris".into())))
        );
        assert_eq!(addr[0].1, Avro::Union(0, Box::new(Avro::Null)));
        let created = fs.iter().find(|(n, _)| n == "CreatedDate").unwrap();
        assert_eq!(
            created.1,
            Avro::Union(1, Box::new(Avro::Long(1_714_149_392_000)))
        );
    }

    #[test]
    fn mismatched_value_is_an_error() {
        let schema = Schema::standard();
        let s = schema_for(schema.object("Account").unwrap());
        let ev = ChangeEvent {
            header: header(),
            values: vec![FieldValue::Boolean(true)],
        };
        let e = encode_event(&s, &ev).unwrap_err();
        assert!(e.to_string().contains("field Name expects string"), "{e}");
        let ev = ChangeEvent {
            header: header(),
            values: vec![FieldValue::Null; 500],
        };
        assert!(matches!(
            encode_event(&s, &ev),
            Err(EncodeError::TooManyValues { .. })
        ));
    }
}
