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

use super::avro_writer;
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

/// Raw Avro binary of a change event written with `schema` (the schema's compiled
/// [`EncodePlan`](super::avro_writer::EncodePlan); byte-identical to the reference writer).
pub fn encode_event(schema: &CdcSchema, event: &ChangeEvent) -> Result<Vec<u8>, EncodeError> {
    let mut buf = Vec::with_capacity(
        avro_writer::header_size_hint(&event.header) + avro_writer::body_size_hint(&event.values),
    );
    encode_event_into(schema, event, &mut buf)?;
    Ok(buf)
}

/// [`encode_event`] appending to `buf` (reuse one buffer across events). On error `buf` is left
/// as it was.
pub fn encode_event_into(
    schema: &CdcSchema,
    event: &ChangeEvent,
    buf: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = buf.len();
    if matches!(schema.fields.first(), Some(TopField::Header)) {
        avro_writer::write_header(buf, &event.header);
    }
    let r = avro_writer::write_body(buf, &schema.plan, schema, &event.values);
    if r.is_err() {
        buf.truncate(start);
    }
    r
}

/// Raw Avro binary of a platform event (`values` in the schema's field order).
pub fn encode_platform_event(
    schema: &CdcSchema,
    values: &[FieldValue],
) -> Result<Vec<u8>, EncodeError> {
    let mut buf = Vec::with_capacity(avro_writer::body_size_hint(values));
    avro_writer::write_body(&mut buf, &schema.plan, schema, values)?;
    Ok(buf)
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

/// The `apache-avro` reference encoder (the previous implementation): builds a generic value
/// tree and writes it with the library's validating writer. Tests compare the fast writer's
/// bytes with it; the benchmark reports its rate for comparison.
#[doc(hidden)]
pub mod reference {
    use super::super::schema::AvroKind;
    use super::*;

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

    fn scalar(
        schema: &str,
        field: &str,
        kind: AvroKind,
        v: &FieldValue,
    ) -> Result<Avro, EncodeError> {
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
                TopField::Required { name, kind } => {
                    match scalar(&schema.entity, name, *kind, v)? {
                        Avro::Union(1, inner) => *inner,
                        _ => {
                            return Err(EncodeError::Mismatch {
                                schema: schema.entity.clone(),
                                field: name.clone(),
                                expected: "a non-null value",
                                got: v.clone(),
                            })
                        }
                    }
                }
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

    /// Raw Avro binary of a change event, written by `apache-avro`.
    pub fn encode_event(schema: &CdcSchema, event: &ChangeEvent) -> Result<Vec<u8>, EncodeError> {
        let mut rec = vec![("ChangeEventHeader".to_string(), header_value(&event.header))];
        rec.extend(body_values(schema, &event.values)?);
        write_datum(schema, Avro::Record(rec))
    }

    /// Raw Avro binary of a platform event, written by `apache-avro`.
    pub fn encode_platform_event(
        schema: &CdcSchema,
        values: &[FieldValue],
    ) -> Result<Vec<u8>, EncodeError> {
        let rec = body_values(schema, values)?;
        write_datum(schema, Avro::Record(rec))
    }
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

/// The fast writer against the `apache-avro` reference: random object definitions (every org
/// field type, nullable scalars, Address/Name/custom compounds, formula fields), random headers
/// and values — same bytes, both decoded by `from_avro_datum`, same errors for values that do
/// not fit.
#[cfg(test)]
mod reference_tests {
    use super::*;
    use crate::cdc::schema::{platform_event_schema, schema_for, PlatformField};
    use proptest::prelude::*;
    use sfsync_org::{FieldDef, FieldType, ObjectDef};

    /// Deterministic generator for the parts proptest does not shrink.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        fn chance(&mut self, pct: u64) -> bool {
            self.below(100) < pct
        }
        fn string(&mut self) -> String {
            const PIECES: [&str; 8] = ["a", "Zz", "é", "日本", "🦀", " ", "\"\\", "0x1F"];
            let n = match self.below(10) {
                0 => 0,
                1 => 60 + self.below(300) as usize, // multi-byte length varints
                _ => self.below(8) as usize,
            };
            (0..n)
                .map(|_| PIECES[self.below(8) as usize])
                .collect::<String>()
        }
        fn int(&mut self) -> i32 {
            match self.below(4) {
                0 => [0, -1, 1, i32::MIN, i32::MAX, 63, -64, 64][self.below(8) as usize],
                1 => self.below(200) as i32 - 100,
                _ => self.next() as i32,
            }
        }
        fn long(&mut self) -> i64 {
            match self.below(4) {
                0 => [0, -1, 1, i64::MIN, i64::MAX, 8191, -8192][self.below(7) as usize],
                1 => self.int() as i64,
                _ => self.next() as i64,
            }
        }
        fn double(&mut self) -> f64 {
            match self.below(4) {
                0 => [0.0, -0.0, 1.5, f64::MAX, f64::MIN_POSITIVE, f64::INFINITY]
                    [self.below(6) as usize],
                1 => self.int() as f64 / 7.0,
                _ => f64::from_bits(self.next() & !(0x7ff << 52)) * 1e10,
            }
        }
    }

    const SCALAR_TYPES: [FieldType; 16] = [
        FieldType::Id,
        FieldType::String,
        FieldType::Textarea,
        FieldType::Picklist,
        FieldType::Multipicklist,
        FieldType::Reference,
        FieldType::Boolean,
        FieldType::Int,
        FieldType::Double,
        FieldType::Currency,
        FieldType::Percent,
        FieldType::Date,
        FieldType::Datetime,
        FieldType::Email,
        FieldType::Phone,
        FieldType::Url,
    ];

    /// An object: `spec` items 0..16 are scalar types, 16 an Address, 17 the person Name,
    /// 18 a custom compound with random component types, 19 a formula field.
    fn object(spec: &[u8], rng: &mut Rng) -> ObjectDef {
        let mut fields = Vec::new();
        let (mut addresses, mut has_name) = (0, false);
        for (i, s) in spec.iter().enumerate() {
            match *s as usize {
                t @ 0..=15 => fields.push(FieldDef::new(&format!("F{i}__c"), "F", SCALAR_TYPES[t])),
                16 => {
                    let p = ["Billing", "Shipping", "Mailing", "Other"][addresses % 4];
                    addresses += 1;
                    if addresses > 4 {
                        continue;
                    }
                    let c = format!("{p}Address");
                    fields.push(FieldDef::new(&c, "A", FieldType::Address));
                    for (n, t) in [
                        ("Street", FieldType::Textarea),
                        ("City", FieldType::String),
                        ("State", FieldType::String),
                        ("PostalCode", FieldType::String),
                        ("Country", FieldType::String),
                        ("Latitude", FieldType::Double),
                        ("Longitude", FieldType::Double),
                        ("GeocodeAccuracy", FieldType::Picklist),
                    ] {
                        fields.push(FieldDef::new(&format!("{p}{n}"), n, t).component_of(&c));
                    }
                }
                17 if !has_name => {
                    has_name = true;
                    fields.push(FieldDef::new("Name", "Name", FieldType::String));
                    for n in ["LastName", "FirstName", "Salutation"] {
                        fields.push(FieldDef::new(n, n, FieldType::String).component_of("Name"));
                    }
                }
                18 => {
                    let c = format!("C{i}__c");
                    fields.push(FieldDef::new(&c, "C", FieldType::String));
                    for k in 0..=rng.below(4) {
                        let t = SCALAR_TYPES[rng.below(16) as usize];
                        fields.push(
                            FieldDef::new(&format!("C{i}__P{k}__s"), "P", t).component_of(&c),
                        );
                    }
                }
                _ => fields
                    .push(FieldDef::new(&format!("X{i}__c"), "X", FieldType::String).formula("1")),
            }
        }
        ObjectDef::new("Prop__c", "Prop", "Props", "a0P", fields)
    }

    fn value(kind: AvroKind, rng: &mut Rng) -> FieldValue {
        if rng.chance(20) {
            return FieldValue::Null;
        }
        match kind {
            AvroKind::String => FieldValue::String(rng.string()),
            AvroKind::Boolean => FieldValue::Boolean(rng.chance(50)),
            AvroKind::Int | AvroKind::Date => FieldValue::Int(rng.int()),
            AvroKind::Long | AvroKind::DateTime => match rng.below(3) {
                0 => FieldValue::Int(rng.int()),
                _ => FieldValue::Long(rng.long()),
            },
            AvroKind::Double => match rng.below(4) {
                0 => FieldValue::Int(rng.int()),
                1 => FieldValue::Long(rng.long()),
                _ => FieldValue::Double(rng.double()),
            },
        }
    }

    /// Any value at all (mostly of the wrong type).
    fn wild(rng: &mut Rng, depth: u32) -> FieldValue {
        match rng.below(if depth > 0 { 7 } else { 6 }) {
            0 => FieldValue::Null,
            1 => FieldValue::String(rng.string()),
            2 => FieldValue::Boolean(rng.chance(50)),
            3 => FieldValue::Int(rng.int()),
            4 => FieldValue::Long(rng.long()),
            5 => FieldValue::Double(rng.double()),
            _ => FieldValue::Record((0..rng.below(10)).map(|_| wild(rng, depth - 1)).collect()),
        }
    }

    fn values(schema: &CdcSchema, rng: &mut Rng) -> Vec<FieldValue> {
        let mut out: Vec<FieldValue> = schema
            .fields
            .iter()
            .filter_map(|f| match f {
                TopField::Header => None,
                TopField::Scalar { kind, .. } | TopField::Required { kind, .. } => {
                    Some(value(*kind, rng))
                }
                TopField::Compound { components, .. } => Some(if rng.chance(25) {
                    FieldValue::Null
                } else {
                    let n = components.len() - rng.below(2).min(components.len() as u64) as usize;
                    FieldValue::Record(components[..n].iter().map(|c| value(c.kind, rng)).collect())
                }),
            })
            .collect();
        if rng.chance(20) {
            let keep = rng.below(out.len() as u64 + 1) as usize;
            out.truncate(keep);
        }
        out
    }

    fn header(rng: &mut Rng) -> ChangeEventHeader {
        let strs = |rng: &mut Rng| (0..rng.below(4)).map(|_| rng.string()).collect();
        ChangeEventHeader {
            entity_name: rng.string(),
            record_ids: strs(rng),
            change_type: [
                ChangeType::Create,
                ChangeType::Update,
                ChangeType::Delete,
                ChangeType::Undelete,
                ChangeType::GapCreate,
                ChangeType::GapUpdate,
                ChangeType::GapDelete,
                ChangeType::GapUndelete,
                ChangeType::GapOverflow,
            ][rng.below(9) as usize],
            change_origin: rng.string(),
            transaction_key: rng.string(),
            sequence_number: rng.int(),
            commit_timestamp: rng.long(),
            commit_number: rng.long(),
            commit_user: rng.string(),
            nulled_fields: strs(rng),
            diff_fields: strs(rng),
            changed_fields: strs(rng),
        }
    }

    fn check_decodes(schema: &CdcSchema, bytes: &[u8]) -> Result<(), TestCaseError> {
        // `from_avro_datum` (deprecated in 0.22 in favour of this reader) with the parsed
        // schema, then with the served JSON.
        let mut r = bytes;
        let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema.avro)
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let v = reader.read_value(&mut r);
        prop_assert!(v.is_ok(), "from_avro_datum: {:?}", v.err());
        prop_assert!(r.is_empty(), "{} trailing bytes", r.len());
        decode_datum(&schema.json, bytes).map_err(TestCaseError::fail)?;
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn change_events_match_the_reference(
            spec in proptest::collection::vec(0u8..20, 0..24),
            seed in 1u64..,
        ) {
            let mut rng = Rng(seed);
            let schema = schema_for(&object(&spec, &mut rng));
            for _ in 0..4 {
                let ev = ChangeEvent { header: header(&mut rng), values: values(&schema, &mut rng) };
                let fast = encode_event(&schema, &ev).expect("fast writer");
                let slow = reference::encode_event(&schema, &ev).expect("reference writer");
                prop_assert_eq!(&fast, &slow);
                check_decodes(&schema, &fast)?;
                // Appending to a used buffer gives the same bytes after the prefix.
                let mut buf = vec![7u8; 3];
                encode_event_into(&schema, &ev, &mut buf).expect("fast writer");
                prop_assert_eq!(&buf[3..], &fast[..]);
            }
        }

        #[test]
        fn values_that_do_not_fit_give_the_same_error(
            spec in proptest::collection::vec(0u8..20, 0..16),
            seed in 1u64..,
        ) {
            let mut rng = Rng(seed);
            let schema = schema_for(&object(&spec, &mut rng));
            let body = schema.fields.len() - 1;
            for _ in 0..8 {
                let mut vals = values(&schema, &mut rng);
                let n = rng.below(3);
                for _ in 0..n {
                    if rng.chance(10) || vals.is_empty() {
                        vals.push(wild(&mut rng, 2));
                    } else {
                        let i = rng.below(vals.len() as u64) as usize;
                        vals[i] = wild(&mut rng, 2);
                    }
                }
                let ev = ChangeEvent { header: header(&mut rng), values: vals };
                let fast = encode_event(&schema, &ev);
                let slow = reference::encode_event(&schema, &ev);
                match (&fast, &slow) {
                    (Ok(a), Ok(b)) => {
                        prop_assert_eq!(a, b);
                        check_decodes(&schema, a)?;
                    }
                    (Err(a), Err(b)) => prop_assert_eq!(a, b),
                    _ => prop_assert!(false, "fast {:?} vs reference {:?} (body {})", fast, slow, body),
                }
                let mut buf = vec![1u8, 2];
                let r = encode_event_into(&schema, &ev, &mut buf);
                prop_assert_eq!(r.is_err(), fast.is_err());
                if r.is_err() {
                    prop_assert_eq!(&buf, &vec![1u8, 2], "buffer restored on error");
                }
            }
        }

        #[test]
        fn platform_events_match_the_reference(
            kinds in proptest::collection::vec(0usize..7, 0..10),
            seed in 1u64..,
        ) {
            let mut rng = Rng(seed);
            const K: [&str; 7] = ["string", "boolean", "int", "long", "double", "date", "datetime"];
            let fields: Vec<PlatformField> = kinds
                .iter()
                .enumerate()
                .map(|(i, k)| PlatformField { name: format!("F{i}__c"), field_type: K[*k].into() })
                .collect();
            let schema = platform_event_schema("Prop__e", &fields).expect("schema");
            for _ in 0..8 {
                let mut vals = values(&schema, &mut rng);
                if rng.chance(30) && !vals.is_empty() {
                    let i = rng.below(vals.len() as u64) as usize;
                    vals[i] = wild(&mut rng, 1);
                }
                let fast = encode_platform_event(&schema, &vals);
                let slow = reference::encode_platform_event(&schema, &vals);
                match (&fast, &slow) {
                    (Ok(a), Ok(b)) => {
                        prop_assert_eq!(a, b);
                        check_decodes(&schema, a)?;
                    }
                    (Err(a), Err(b)) => prop_assert_eq!(a, b),
                    _ => prop_assert!(false, "fast {:?} vs reference {:?}", fast, slow),
                }
            }
        }

        #[test]
        fn body_from_fields_matches_values_from_fields(
            spec in proptest::collection::vec(0u8..20, 0..24),
            seed in 1u64..,
        ) {
            let mut rng = Rng(seed);
            let schema = schema_for(&object(&spec, &mut rng));
            let names: Vec<String> = schema
                .fields
                .iter()
                .flat_map(|f| match f {
                    TopField::Compound { components, .. } => {
                        components.iter().map(|c| c.field.clone()).collect()
                    }
                    other => vec![other.name().to_string()],
                })
                .collect();
            for round in 0..4 {
                let mut map = serde_json::Map::new();
                // The org's describe order, other orders, and fields not in events.
                let mut order = names.clone();
                if round % 2 == 1 {
                    for i in (1..order.len()).rev() {
                        order.swap(i, rng.below(i as u64 + 1) as usize);
                    }
                }
                for extra in ["Id", "IsDeleted", "SystemModstamp", "Zz__c"] {
                    if rng.chance(30) {
                        let at = rng.below(order.len() as u64 + 1) as usize;
                        order.insert(at, extra.to_string());
                    }
                }
                for n in &order {
                    let v = match rng.below(12) {
                        0 => continue,
                        1 => Json::Null,
                        2 => Json::from(rng.string()),
                        3 => Json::from(rng.chance(50)),
                        4 => Json::from(rng.int()),
                        5 => Json::from(rng.long()),
                        6 => Json::from(rng.double()),
                        7 => Json::from("2024-04-26"),
                        8 => Json::from("2024-04-26T16:36:32.000+0000"),
                        9 => Json::from(format!("19{:02}-01-0{}", rng.below(100), rng.below(10))),
                        10 => serde_json::json!([1, "x"]),
                        _ => Json::from(rng.below(1 << 40) as f64 + 0.5),
                    };
                    map.insert(n.clone(), v);
                }
                let ev = ChangeEvent { header: header(&mut rng), values: values_from_fields(&schema, &map) };
                let expected = encode_event(&schema, &ev).expect("encodes");
                let mut buf = Vec::new();
                avro_writer::write_header(&mut buf, &ev.header);
                prop_assert!(avro_writer::write_body_from_fields(&mut buf, &schema.plan, &schema.fields, &map));
                prop_assert_eq!(buf, expected);
            }
        }
    }
}
