//! Hand-written Avro binary writer for event schemas.
//!
//! Each [`CdcSchema`](super::schema::CdcSchema) is compiled once (when the schema is built) into
//! an [`EncodePlan`]: one [`Op`] per body field (null-union or required, primitive kind, nested
//! component kinds for compound fields). Encoding walks the plan and writes zig-zag varints,
//! length-prefixed strings and little-endian doubles straight into a byte buffer — no generic
//! value tree, no schema resolution per call.
//!
//! Guarantee: for every value that fits the schema, the bytes are identical to what the
//! `apache-avro` reference writer produces for the same record (checked by property tests in
//! `encode.rs`); a value that does not fit is reported as an error and the buffer is left as it
//! was before the call.

use serde_json::{Map, Value as Json};

use sfsync_org::value::{parse_date, parse_datetime};

use super::encode::{json_to_value, ChangeEventHeader, ChangeType, EncodeError, FieldValue};
use super::schema::{AvroKind, TopField};

/// Avro primitive written for a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prim {
    String,
    Boolean,
    Int,
    Long,
    Double,
}

impl Prim {
    pub fn of(kind: AvroKind) -> Prim {
        match kind {
            AvroKind::String => Prim::String,
            AvroKind::Boolean => Prim::Boolean,
            AvroKind::Int | AvroKind::Date => Prim::Int,
            AvroKind::Long | AvroKind::DateTime => Prim::Long,
            AvroKind::Double => Prim::Double,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Prim::String => "string",
            Prim::Boolean => "boolean",
            Prim::Int => "int",
            Prim::Long => "long",
            Prim::Double => "double",
        }
    }
}

/// How one body field is written.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `["null", T]`: branch 0 for null, branch 1 then the value.
    Nullable { prim: Prim, kind: AvroKind },
    /// `T` (platform events' `CreatedDate`/`CreatedById`).
    Required { prim: Prim, kind: AvroKind },
    /// `["null", record]` whose fields are all `["null", T]`.
    Compound {
        prims: Vec<Prim>,
        kinds: Vec<AvroKind>,
    },
}

/// The compiled writer of one schema's body (every top-level field except the header).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EncodePlan {
    /// One op per body field, in order.
    pub ops: Vec<Op>,
    /// `schema.fields` index of each op (for error messages).
    pub positions: Vec<usize>,
    /// Org field carried by each scalar and compound component, in layout order (compounds
    /// flattened): the slots [`write_body_from_fields`] fills.
    pub slot_fields: Vec<String>,
    /// `slot_fields` name → slot.
    pub slot_index: std::collections::HashMap<String, usize>,
    /// Whether the layout has required (non-union) fields (platform events).
    pub has_required: bool,
}

impl EncodePlan {
    /// Compiles a top-level layout.
    pub fn compile(fields: &[TopField]) -> EncodePlan {
        let mut plan = EncodePlan::default();
        for (i, f) in fields.iter().enumerate() {
            let op = match f {
                TopField::Header => continue,
                TopField::Scalar { kind, name } => {
                    plan.slot_fields.push(name.clone());
                    Op::Nullable {
                        prim: Prim::of(*kind),
                        kind: *kind,
                    }
                }
                TopField::Required { kind, name } => {
                    plan.has_required = true;
                    plan.slot_fields.push(name.clone());
                    Op::Required {
                        prim: Prim::of(*kind),
                        kind: *kind,
                    }
                }
                TopField::Compound { components, .. } => {
                    plan.slot_fields
                        .extend(components.iter().map(|c| c.field.clone()));
                    Op::Compound {
                        prims: components.iter().map(|c| Prim::of(c.kind)).collect(),
                        kinds: components.iter().map(|c| c.kind).collect(),
                    }
                }
            };
            plan.ops.push(op);
            plan.positions.push(i);
        }
        for (k, f) in plan.slot_fields.iter().enumerate() {
            plan.slot_index.entry(f.clone()).or_insert(k);
        }
        plan
    }
}

// ------------------------------------------------------------------------------ primitives

/// Zig-zag varint `long` (also used for `int`, which has the same encoding).
#[inline]
pub fn write_long(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

#[inline]
pub fn write_str(buf: &mut Vec<u8>, s: &str) {
    write_long(buf, s.len() as i64);
    buf.extend_from_slice(s.as_bytes());
}

#[inline]
fn write_double(buf: &mut Vec<u8>, d: f64) {
    buf.extend_from_slice(&d.to_le_bytes());
}

/// An `array<string>`: one block with the count, the items, then the 0 terminator (an empty
/// array is just the terminator), as the reference writer does.
#[inline]
pub fn write_str_array<S: AsRef<str>>(buf: &mut Vec<u8>, items: &[S]) {
    if !items.is_empty() {
        write_long(buf, items.len() as i64);
        for s in items {
            write_str(buf, s.as_ref());
        }
    }
    buf.push(0);
}

/// A `ChangeEventHeader` made of borrowed parts (the bus writes headers without building a
/// [`ChangeEventHeader`]).
pub struct HeaderView<'a, R: AsRef<str>> {
    pub entity_name: &'a str,
    pub record_ids: &'a [R],
    pub change_type: ChangeType,
    pub change_origin: &'a str,
    pub transaction_key: &'a str,
    pub sequence_number: i32,
    pub commit_timestamp: i64,
    pub commit_number: i64,
    pub commit_user: &'a str,
    pub nulled_fields: &'a [String],
    pub diff_fields: &'a [String],
    pub changed_fields: &'a [String],
}

/// The `ChangeEventHeader` record.
pub fn write_header(buf: &mut Vec<u8>, h: &ChangeEventHeader) {
    write_header_view(
        buf,
        &HeaderView {
            entity_name: &h.entity_name,
            record_ids: &h.record_ids,
            change_type: h.change_type,
            change_origin: &h.change_origin,
            transaction_key: &h.transaction_key,
            sequence_number: h.sequence_number,
            commit_timestamp: h.commit_timestamp,
            commit_number: h.commit_number,
            commit_user: &h.commit_user,
            nulled_fields: &h.nulled_fields,
            diff_fields: &h.diff_fields,
            changed_fields: &h.changed_fields,
        },
    );
}

/// The `ChangeEventHeader` record from borrowed parts.
pub fn write_header_view<R: AsRef<str>>(buf: &mut Vec<u8>, h: &HeaderView<'_, R>) {
    write_str(buf, h.entity_name);
    write_str_array(buf, h.record_ids);
    write_long(buf, h.change_type.index() as i64);
    write_str(buf, h.change_origin);
    write_str(buf, h.transaction_key);
    write_long(buf, h.sequence_number as i64);
    write_long(buf, h.commit_timestamp);
    write_long(buf, h.commit_number);
    write_str(buf, h.commit_user);
    write_str_array(buf, h.nulled_fields);
    write_str_array(buf, h.diff_fields);
    write_str_array(buf, h.changed_fields);
}

/// Upper bound guess of a header's encoded size (for buffer capacity).
pub fn header_size_hint(h: &ChangeEventHeader) -> usize {
    let arr = |v: &[String]| v.iter().map(|s| s.len() + 2).sum::<usize>() + 2;
    h.entity_name.len()
        + h.change_origin.len()
        + h.transaction_key.len()
        + h.commit_user.len()
        + arr(&h.record_ids)
        + arr(&h.nulled_fields)
        + arr(&h.diff_fields)
        + arr(&h.changed_fields)
        + 48
}

/// Upper bound guess of a body's encoded size.
pub fn body_size_hint(values: &[FieldValue]) -> usize {
    fn one(v: &FieldValue) -> usize {
        match v {
            FieldValue::String(s) => s.len() + 6,
            FieldValue::Record(parts) => 1 + parts.iter().map(one).sum::<usize>(),
            _ => 10,
        }
    }
    values.iter().map(one).sum::<usize>() + 16
}

// ------------------------------------------------------------------------------ body writer

/// Writes a primitive value (no union branch). `Err(())` when it does not fit.
#[inline]
fn write_prim(buf: &mut Vec<u8>, prim: Prim, v: &FieldValue) -> Result<(), ()> {
    match (prim, v) {
        (Prim::String, FieldValue::String(s)) => write_str(buf, s),
        (Prim::Boolean, FieldValue::Boolean(b)) => buf.push(*b as u8),
        (Prim::Int, FieldValue::Int(i)) => write_long(buf, *i as i64),
        (Prim::Long, FieldValue::Long(l)) => write_long(buf, *l),
        (Prim::Long, FieldValue::Int(i)) => write_long(buf, *i as i64),
        (Prim::Double, FieldValue::Double(d)) => write_double(buf, *d),
        (Prim::Double, FieldValue::Int(i)) => write_double(buf, *i as f64),
        (Prim::Double, FieldValue::Long(l)) => write_double(buf, *l as f64),
        _ => return Err(()),
    }
    Ok(())
}

/// A `["null", T]` union value.
#[inline]
fn write_nullable(buf: &mut Vec<u8>, prim: Prim, v: &FieldValue) -> Result<(), ()> {
    if let FieldValue::Null = v {
        buf.push(0);
        return Ok(());
    }
    buf.push(2); // zig-zag 1: the value branch
    write_prim(buf, prim, v)
}

/// Names of the schema's fields, for errors.
pub trait FieldNames {
    fn entity(&self) -> &str;
    fn top(&self, position: usize) -> &TopField;
}

fn mismatch(
    names: &dyn FieldNames,
    field: String,
    expected: &'static str,
    got: &FieldValue,
) -> EncodeError {
    EncodeError::Mismatch {
        schema: names.entity().to_string(),
        field,
        expected,
        got: got.clone(),
    }
}

fn component_field(names: &dyn FieldNames, pos: usize, k: usize) -> String {
    match names.top(pos) {
        TopField::Compound {
            name, components, ..
        } => format!("{name}.{}", components[k].name),
        other => other.name().to_string(),
    }
}

/// Writes the body values (`values[i]` = op `i`; missing trailing values are null). On error
/// the buffer is truncated back to its length at the call.
pub fn write_body(
    buf: &mut Vec<u8>,
    plan: &EncodePlan,
    names: &dyn FieldNames,
    values: &[FieldValue],
) -> Result<(), EncodeError> {
    if values.len() > plan.ops.len() {
        return Err(EncodeError::TooManyValues {
            schema: names.entity().to_string(),
            got: values.len(),
            max: plan.ops.len(),
        });
    }
    let start = buf.len();
    let r = write_body_inner(buf, plan, names, values);
    if r.is_err() {
        buf.truncate(start);
    }
    r
}

fn write_body_inner(
    buf: &mut Vec<u8>,
    plan: &EncodePlan,
    names: &dyn FieldNames,
    values: &[FieldValue],
) -> Result<(), EncodeError> {
    for (i, op) in plan.ops.iter().enumerate() {
        let Some(v) = values.get(i) else {
            // Missing trailing values are null.
            for (j, op) in plan.ops.iter().enumerate().skip(i) {
                if let Op::Required { .. } = op {
                    let pos = plan.positions[j];
                    return Err(mismatch(
                        names,
                        names.top(pos).name().to_string(),
                        "a non-null value",
                        &FieldValue::Null,
                    ));
                }
                buf.push(0);
            }
            return Ok(());
        };
        match op {
            Op::Nullable { prim, .. } => {
                if write_nullable(buf, *prim, v).is_err() {
                    let pos = plan.positions[i];
                    return Err(mismatch(
                        names,
                        names.top(pos).name().to_string(),
                        prim.name(),
                        v,
                    ));
                }
            }
            Op::Required { prim, .. } => {
                let pos = plan.positions[i];
                if let FieldValue::Null = v {
                    return Err(mismatch(
                        names,
                        names.top(pos).name().to_string(),
                        "a non-null value",
                        v,
                    ));
                }
                if write_prim(buf, *prim, v).is_err() {
                    return Err(mismatch(
                        names,
                        names.top(pos).name().to_string(),
                        prim.name(),
                        v,
                    ));
                }
            }
            Op::Compound { prims, .. } => match v {
                FieldValue::Null => buf.push(0),
                FieldValue::Record(parts) if parts.len() <= prims.len() => {
                    buf.push(2);
                    for (k, prim) in prims.iter().enumerate() {
                        let pv = parts.get(k).unwrap_or(&FieldValue::Null);
                        if write_nullable(buf, *prim, pv).is_err() {
                            let pos = plan.positions[i];
                            return Err(mismatch(
                                names,
                                component_field(names, pos, k),
                                prim.name(),
                                pv,
                            ));
                        }
                    }
                }
                other => {
                    let pos = plan.positions[i];
                    return Err(mismatch(
                        names,
                        names.top(pos).name().to_string(),
                        "record with at most one value per component",
                        other,
                    ));
                }
            },
        }
    }
    Ok(())
}

// ------------------------------------------------------- body straight from org field values

/// Writes one `["null", T]` value converted from REST JSON exactly as [`json_to_value`] would,
/// without building a [`FieldValue`] (no string copies). Returns whether it was non-null.
#[inline]
fn write_json_nullable(buf: &mut Vec<u8>, kind: AvroKind, v: Option<&Json>) -> bool {
    let Some(v) = v else {
        buf.push(0);
        return false;
    };
    match (kind, v) {
        (_, Json::Null) => {
            buf.push(0);
            false
        }
        (AvroKind::String, Json::String(s)) => {
            buf.push(2);
            write_str(buf, s);
            true
        }
        (AvroKind::Boolean, Json::Bool(b)) => {
            buf.push(2);
            buf.push(*b as u8);
            true
        }
        (AvroKind::Date | AvroKind::DateTime, Json::String(s)) => {
            let parsed = match kind {
                AvroKind::Date => parse_date(s).map(i64::from),
                _ => parse_datetime(s),
            };
            match parsed {
                Some(n) => {
                    buf.push(2);
                    write_long(buf, n);
                    true
                }
                None => {
                    buf.push(0);
                    false
                }
            }
        }
        _ => {
            // Rare conversions (numbers, non-string values of string fields): the generic path.
            let fv = json_to_value(kind, v);
            match fv {
                FieldValue::Null => {
                    buf.push(0);
                    false
                }
                ref other => {
                    buf.push(2);
                    // json_to_value always returns a value of the kind's primitive.
                    let _ = write_prim(buf, Prim::of(kind), other);
                    true
                }
            }
        }
    }
}

/// Spare capacity [`write_body_from_fields`] leaves so that a change-event header can later be
/// inserted in front of the body without reallocating.
pub const HEADER_ROOM: usize = 256;

/// The body of a record given as org field name → REST JSON value, byte-identical to
/// encoding `values_from_fields(schema, fields)` (compound fields whose components are all
/// absent or null are null). Change-event layouts only: returns false (buffer unchanged) for a
/// layout with required fields, true when written. Reserves [`HEADER_ROOM`] extra bytes.
///
/// The map is walked once; the org builds it in describe order, which is the layout's slot
/// order, so each entry is usually matched by comparing with the next expected slot only (a
/// hash lookup otherwise).
#[must_use]
pub fn write_body_from_fields(
    buf: &mut Vec<u8>,
    plan: &EncodePlan,
    fields: &[TopField],
    values: &Map<String, Json>,
) -> bool {
    if plan.has_required {
        return false;
    }
    let n = plan.slot_fields.len();
    let mut found: Vec<Option<&Json>> = vec![None; n];
    let mut cursor = 0;
    let mut text = 0;
    if plan.slot_index.len() != n {
        // A field in two slots (not produced by `schema_for`): plain lookups.
        for (slot, name) in found.iter_mut().zip(&plan.slot_fields) {
            *slot = values.get(name);
        }
    }
    for (k, v) in values.iter().filter(|_| plan.slot_index.len() == n) {
        let slot = if cursor < n && plan.slot_fields[cursor] == *k {
            Some(cursor)
        } else {
            plan.slot_index.get(k.as_str()).copied()
        };
        if let Some(s) = slot {
            found[s] = Some(v);
            cursor = s + 1;
            if let Json::String(t) = v {
                text += t.len();
            }
        }
    }
    buf.reserve(HEADER_ROOM + text + 3 * n + 16);
    let mut slots = found.into_iter();
    for f in fields {
        match f {
            TopField::Header => {}
            TopField::Scalar { kind, .. } | TopField::Required { kind, .. } => {
                write_json_nullable(buf, *kind, slots.next().flatten());
            }
            TopField::Compound { components, .. } => {
                let at = buf.len();
                buf.push(2);
                let mut any = false;
                for c in components {
                    any |= write_json_nullable(buf, c.kind, slots.next().flatten());
                }
                if !any {
                    buf.truncate(at);
                    buf.push(0);
                }
            }
        }
    }
    true
}
