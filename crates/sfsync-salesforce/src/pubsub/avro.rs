//! Avro binary decoding of Pub/Sub event payloads, driven only by the writer schema JSON that
//! `GetSchema` returns.
//!
//! Guarantees: [`Schema::parse`] compiles records, nested and named-reference records, unions,
//! enums, arrays, maps, fixed and every primitive into a decode plan (logical types are decoded as
//! their underlying type: `date` is an `int` of days, `timestamp-millis` a `long` of ms). The
//! decoder never panics on any payload: every failure is a [`DecodeError`] naming the schema id,
//! the field path and the byte offset (truncation, bad union or enum index, invalid UTF-8, bad
//! varint, nesting too deep, trailing bytes). Skipped fields are bounds-checked but their strings
//! are not UTF-8 validated. [`ChangeSchema`] turns a payload into a typed [`Change`] holding only
//! the fields meaningful for its change type (see [`Change`]'s contract), decoding only those.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value as Json;
use sfsync_core::{Change, ChangeHeader, ChangeType, FieldValue, ReplayId};

use super::bitmap::{self, BitmapError, FieldRef, FieldTree};

/// Deepest nesting of records/arrays/maps/unions the decoder follows (recursive schemas).
pub const MAX_DEPTH: usize = 64;
/// Most items one zero-width array/map block may announce.
const MAX_ZERO_WIDTH_ITEMS: u64 = 1 << 16;

/// A schema JSON that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schema {schema_id}: at {path}: {reason}")]
pub struct SchemaError {
    pub schema_id: String,
    /// Where in the schema (`fields[3].type`, record name…).
    pub path: String,
    pub reason: String,
}

/// Why a payload could not be decoded. Every variant names the schema id and the place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("schema {schema_id}: payload truncated at byte {offset} while reading {path}")]
    Truncated {
        schema_id: String,
        path: String,
        offset: usize,
    },
    #[error("schema {schema_id}: union index {index} at byte {offset} for {path}, which has {branches} branches")]
    BadUnionIndex {
        schema_id: String,
        path: String,
        offset: usize,
        index: i64,
        branches: usize,
    },
    #[error("schema {schema_id}: enum index {index} at byte {offset} for {path}, which has {symbols} symbols")]
    BadEnumIndex {
        schema_id: String,
        path: String,
        offset: usize,
        index: i64,
        symbols: usize,
    },
    #[error("schema {schema_id}: invalid UTF-8 in the string at byte {offset} for {path}")]
    InvalidUtf8 {
        schema_id: String,
        path: String,
        offset: usize,
    },
    #[error("schema {schema_id}: malformed data at byte {offset} for {path}: {reason}")]
    Malformed {
        schema_id: String,
        path: String,
        offset: usize,
        reason: &'static str,
    },
    #[error(
        "schema {schema_id}: {trailing} trailing bytes after the record ended at byte {offset}"
    )]
    TrailingBytes {
        schema_id: String,
        offset: usize,
        trailing: usize,
    },
    #[error("unknown schema id {schema_id}: the schema is not in the cache and GetSchema did not return it")]
    UnknownSchemaId { schema_id: String },
    #[error("schema {schema_id}: header field {field}: {source}")]
    Bitmap {
        schema_id: String,
        field: &'static str,
        #[source]
        source: BitmapError,
    },
    #[error("schema {schema_id}: not a change event: {reason}")]
    NotAChangeEvent { schema_id: String, reason: String },
}

impl DecodeError {
    /// The schema id the failure belongs to.
    pub fn schema_id(&self) -> &str {
        match self {
            DecodeError::Truncated { schema_id, .. }
            | DecodeError::BadUnionIndex { schema_id, .. }
            | DecodeError::BadEnumIndex { schema_id, .. }
            | DecodeError::InvalidUtf8 { schema_id, .. }
            | DecodeError::Malformed { schema_id, .. }
            | DecodeError::TrailingBytes { schema_id, .. }
            | DecodeError::UnknownSchemaId { schema_id }
            | DecodeError::Bitmap { schema_id, .. }
            | DecodeError::NotAChangeEvent { schema_id, .. } => schema_id,
        }
    }
}

/// One compiled type.
#[derive(Debug, Clone)]
pub enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed(usize),
    /// Index into [`Schema::enums`].
    Enum(usize),
    Array(Box<Node>),
    Map(Box<Node>),
    /// Index into [`Schema::records`].
    Record(usize),
    Union(Box<[Node]>),
}

/// A compiled record.
#[derive(Debug, Clone)]
pub struct RecordDef {
    /// Full name (`com.sforce.eventbus.AccountChangeEvent`).
    pub full_name: String,
    pub fields: Vec<FieldDef>,
    min_size: usize,
}

impl RecordDef {
    /// The simple name (after the last dot).
    pub fn name(&self) -> &str {
        self.full_name.rsplit('.').next().unwrap_or(&self.full_name)
    }
}

#[derive(Debug, Clone)]
pub struct FieldDef {
    pub name: String,
    pub node: Node,
}

#[derive(Debug, Clone)]
pub struct EnumDef {
    pub full_name: String,
    pub symbols: Vec<String>,
}

/// A compiled writer schema: a decode plan.
#[derive(Debug, Clone)]
pub struct Schema {
    pub schema_id: String,
    pub root: Node,
    pub records: Vec<RecordDef>,
    pub enums: Vec<EnumDef>,
}

#[derive(Clone, Copy)]
enum Named {
    Record(usize),
    Enum(usize),
    Fixed(usize),
}

struct Compiler {
    schema_id: String,
    records: Vec<RecordDef>,
    enums: Vec<EnumDef>,
    names: HashMap<String, Named>,
}

fn full_name(name: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if !name.contains('.') && !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

impl Compiler {
    fn err(&self, path: &str, reason: impl Into<String>) -> SchemaError {
        SchemaError {
            schema_id: self.schema_id.clone(),
            path: if path.is_empty() {
                "(root)".into()
            } else {
                path.to_string()
            },
            reason: reason.into(),
        }
    }

    fn primitive(name: &str) -> Option<Node> {
        Some(match name {
            "null" => Node::Null,
            "boolean" => Node::Boolean,
            "int" => Node::Int,
            "long" => Node::Long,
            "float" => Node::Float,
            "double" => Node::Double,
            "bytes" => Node::Bytes,
            "string" => Node::String,
            _ => return None,
        })
    }

    fn lookup(&self, name: &str, ns: Option<&str>) -> Option<Node> {
        let found = self
            .names
            .get(&full_name(name, ns))
            .or_else(|| self.names.get(name))?;
        Some(match *found {
            Named::Record(i) => Node::Record(i),
            Named::Enum(i) => Node::Enum(i),
            Named::Fixed(n) => Node::Fixed(n),
        })
    }

    fn compile(&mut self, v: &Json, ns: Option<&str>, path: &str) -> Result<Node, SchemaError> {
        match v {
            Json::String(s) => Self::primitive(s)
                .or_else(|| self.lookup(s, ns))
                .ok_or_else(|| self.err(path, format!("unknown type name `{s}`"))),
            Json::Array(branches) => {
                if branches.is_empty() {
                    return Err(self.err(path, "a union needs at least one branch"));
                }
                let nodes = branches
                    .iter()
                    .enumerate()
                    .map(|(i, b)| self.compile(b, ns, &format!("{path}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Node::Union(nodes.into_boxed_slice()))
            }
            Json::Object(obj) => {
                let ty = obj
                    .get("type")
                    .ok_or_else(|| self.err(path, "object without `type`"))?;
                let ty_name = match ty {
                    Json::String(s) => s.as_str(),
                    other => return self.compile(other, ns, &format!("{path}.type")),
                };
                let own_ns = obj.get("namespace").and_then(Json::as_str).or(ns);
                let name = || -> Result<(String, Option<String>), SchemaError> {
                    let n = obj
                        .get("name")
                        .and_then(Json::as_str)
                        .ok_or_else(|| self.err(path, format!("a {ty_name} needs a `name`")))?;
                    let full = full_name(n, own_ns);
                    let inner_ns = full.rsplit_once('.').map(|(a, _)| a.to_string());
                    Ok((full, inner_ns))
                };
                match ty_name {
                    "record" | "error" => {
                        let (full, inner_ns) = name()?;
                        let idx = self.records.len();
                        self.records.push(RecordDef {
                            full_name: full.clone(),
                            fields: Vec::new(),
                            min_size: 0,
                        });
                        self.names.insert(full.clone(), Named::Record(idx));
                        let fields =
                            obj.get("fields").and_then(Json::as_array).ok_or_else(|| {
                                self.err(path, format!("record {full} needs `fields`"))
                            })?;
                        let mut out = Vec::with_capacity(fields.len());
                        for (i, f) in fields.iter().enumerate() {
                            let fpath = format!("{full}.fields[{i}]");
                            let fname = f
                                .get("name")
                                .and_then(Json::as_str)
                                .ok_or_else(|| self.err(&fpath, "field without `name`"))?;
                            let fty = f
                                .get("type")
                                .ok_or_else(|| self.err(&fpath, "field without `type`"))?;
                            let node =
                                self.compile(fty, inner_ns.as_deref(), &format!("{full}.{fname}"))?;
                            out.push(FieldDef {
                                name: fname.to_string(),
                                node,
                            });
                        }
                        self.records[idx].fields = out;
                        Ok(Node::Record(idx))
                    }
                    "enum" => {
                        let (full, _) = name()?;
                        let symbols = obj
                            .get("symbols")
                            .and_then(Json::as_array)
                            .ok_or_else(|| self.err(path, format!("enum {full} needs `symbols`")))?
                            .iter()
                            .map(|s| {
                                s.as_str()
                                    .map(str::to_string)
                                    .ok_or_else(|| self.err(path, "enum symbol is not a string"))
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        let idx = self.enums.len();
                        self.enums.push(EnumDef {
                            full_name: full.clone(),
                            symbols,
                        });
                        self.names.insert(full, Named::Enum(idx));
                        Ok(Node::Enum(idx))
                    }
                    "fixed" => {
                        let (full, _) = name()?;
                        let size =
                            obj.get("size").and_then(Json::as_u64).ok_or_else(|| {
                                self.err(path, format!("fixed {full} needs `size`"))
                            })? as usize;
                        self.names.insert(full, Named::Fixed(size));
                        Ok(Node::Fixed(size))
                    }
                    "array" => {
                        let items = obj
                            .get("items")
                            .ok_or_else(|| self.err(path, "array without `items`"))?;
                        Ok(Node::Array(Box::new(self.compile(
                            items,
                            own_ns,
                            &format!("{path}.items"),
                        )?)))
                    }
                    "map" => {
                        let values = obj
                            .get("values")
                            .ok_or_else(|| self.err(path, "map without `values`"))?;
                        Ok(Node::Map(Box::new(self.compile(
                            values,
                            own_ns,
                            &format!("{path}.values"),
                        )?)))
                    }
                    other => Self::primitive(other)
                        .or_else(|| self.lookup(other, ns))
                        .ok_or_else(|| self.err(path, format!("unknown type `{other}`"))),
                }
            }
            _ => Err(self.err(path, "a type must be a string, an array or an object")),
        }
    }
}

fn min_size(node: &Node, records: &[RecordDef], visiting: &mut Vec<bool>) -> usize {
    match node {
        Node::Null => 0,
        Node::Float => 4,
        Node::Double => 8,
        Node::Fixed(n) => *n,
        Node::Record(i) => {
            if visiting[*i] {
                return 0;
            }
            visiting[*i] = true;
            let s = records[*i]
                .fields
                .iter()
                .map(|f| min_size(&f.node, records, visiting))
                .fold(0usize, usize::saturating_add);
            visiting[*i] = false;
            s
        }
        _ => 1,
    }
}

impl Schema {
    /// Compiles a writer schema JSON.
    pub fn parse(schema_id: &str, json: &str) -> Result<Schema, SchemaError> {
        let v: Json = serde_json::from_str(json).map_err(|e| SchemaError {
            schema_id: schema_id.to_string(),
            path: "(root)".into(),
            reason: format!("not JSON: {e}"),
        })?;
        let mut c = Compiler {
            schema_id: schema_id.to_string(),
            records: Vec::new(),
            enums: Vec::new(),
            names: HashMap::new(),
        };
        let root = c.compile(&v, None, "")?;
        let mut records = c.records;
        let mut visiting = vec![false; records.len()];
        let sizes: Vec<usize> = (0..records.len())
            .map(|i| min_size(&Node::Record(i), &records, &mut visiting))
            .collect();
        for (r, s) in records.iter_mut().zip(sizes) {
            r.min_size = s;
        }
        Ok(Schema {
            schema_id: schema_id.to_string(),
            root,
            records,
            enums: c.enums,
        })
    }

    /// Decodes one whole payload (all bytes must be consumed) into a generic value.
    pub fn decode_value(&self, payload: &[u8]) -> Result<FieldValue, DecodeError> {
        let mut r = Reader::new(payload);
        let v = self
            .read(&mut r, &self.root, 0)
            .map_err(|e| e.into_error(&self.schema_id))?;
        r.finish(&self.schema_id)?;
        Ok(v)
    }

    fn node_min_size(&self, node: &Node) -> usize {
        match node {
            Node::Null => 0,
            Node::Float => 4,
            Node::Double => 8,
            Node::Fixed(n) => *n,
            Node::Record(i) => self.records[*i].min_size,
            _ => 1,
        }
    }

    /// How many items a block announces, bounded by what the remaining bytes can hold.
    fn block_count(&self, r: &mut Reader<'_>, item_width: usize) -> Result<u64, Box<RawError>> {
        let at = r.pos;
        let n = r.long()?;
        let count = if n < 0 {
            // A negative count is followed by the block's byte size.
            r.long()?;
            n.unsigned_abs()
        } else {
            n as u64
        };
        let limit = r
            .remaining()
            .checked_div(item_width)
            .map_or(MAX_ZERO_WIDTH_ITEMS, |n| n as u64);
        if count > limit {
            return Err(RawError::at(
                if item_width == 0 {
                    RawKind::Malformed("block item count too large")
                } else {
                    RawKind::Truncated
                },
                at,
            ));
        }
        Ok(count)
    }

    fn read(
        &self,
        r: &mut Reader<'_>,
        node: &Node,
        depth: usize,
    ) -> Result<FieldValue, Box<RawError>> {
        Ok(match node {
            Node::Null => FieldValue::Null,
            Node::Boolean => FieldValue::Bool(r.boolean()?),
            Node::Int => FieldValue::Int(r.int()?),
            Node::Long => FieldValue::Long(r.long()?),
            Node::Float => FieldValue::Float(f32::from_le_bytes(r.fixed::<4>()?)),
            Node::Double => FieldValue::Double(f64::from_le_bytes(r.fixed::<8>()?)),
            Node::Bytes => FieldValue::Bytes(r.bytes()?.to_vec()),
            Node::String => FieldValue::String(r.str()?.to_string()),
            Node::Fixed(n) => FieldValue::Bytes(r.take(*n)?.to_vec()),
            Node::Enum(i) => {
                let at = r.pos;
                let idx = r.long()?;
                let symbols = &self.enums[*i].symbols;
                match usize::try_from(idx).ok().and_then(|k| symbols.get(k)) {
                    Some(s) => FieldValue::Enum(s.clone()),
                    None => {
                        return Err(RawError::at(
                            RawKind::BadEnum {
                                index: idx,
                                symbols: symbols.len(),
                            },
                            at,
                        ))
                    }
                }
            }
            Node::Union(branches) => {
                let branch = Self::branch(r, branches)?;
                self.read_nested(r, branch, depth)?
            }
            Node::Record(i) => {
                if depth >= MAX_DEPTH {
                    return Err(RawError::at(RawKind::Malformed("nesting too deep"), r.pos));
                }
                let rec = &self.records[*i];
                let mut out = Vec::with_capacity(rec.fields.len());
                for f in &rec.fields {
                    let v = self
                        .read(r, &f.node, depth + 1)
                        .map_err(|e| e.within(&f.name))?;
                    out.push((f.name.clone(), v));
                }
                FieldValue::Record(out)
            }
            Node::Array(items) => {
                if depth >= MAX_DEPTH {
                    return Err(RawError::at(RawKind::Malformed("nesting too deep"), r.pos));
                }
                let width = self.node_min_size(items);
                let mut out = Vec::new();
                loop {
                    let n = self.block_count(r, width)?;
                    if n == 0 {
                        break;
                    }
                    out.reserve(n.min(1024) as usize);
                    for k in 0..n {
                        let v = self
                            .read(r, items, depth + 1)
                            .map_err(|e| e.within_index(out.len().max(k as usize)))?;
                        out.push(v);
                    }
                }
                FieldValue::Array(out)
            }
            Node::Map(values) => {
                if depth >= MAX_DEPTH {
                    return Err(RawError::at(RawKind::Malformed("nesting too deep"), r.pos));
                }
                let width = 1 + self.node_min_size(values);
                let mut out = Vec::new();
                loop {
                    let n = self.block_count(r, width)?;
                    if n == 0 {
                        break;
                    }
                    for _ in 0..n {
                        let k = r.str()?.to_string();
                        let v = self.read(r, values, depth + 1).map_err(|e| e.within(&k))?;
                        out.push((k, v));
                    }
                }
                FieldValue::Map(out)
            }
        })
    }

    fn read_nested(
        &self,
        r: &mut Reader<'_>,
        node: &Node,
        depth: usize,
    ) -> Result<FieldValue, Box<RawError>> {
        if depth >= MAX_DEPTH {
            return Err(RawError::at(RawKind::Malformed("nesting too deep"), r.pos));
        }
        self.read(r, node, depth + 1)
    }

    /// Walks one value exactly as [`Schema::read`] does — same checks, same errors (UTF-8 of
    /// strings, enum and union indexes, block counts, nesting) — without materialising it.
    fn check(&self, r: &mut Reader<'_>, node: &Node, depth: usize) -> Result<(), Box<RawError>> {
        match node {
            Node::Null => {}
            Node::Boolean => {
                r.boolean()?;
            }
            Node::Int => {
                r.int()?;
            }
            Node::Long => {
                r.long()?;
            }
            Node::Float => {
                r.fixed::<4>()?;
            }
            Node::Double => {
                r.fixed::<8>()?;
            }
            Node::Bytes => {
                r.bytes()?;
            }
            Node::String => {
                r.str()?;
            }
            Node::Fixed(n) => {
                r.take(*n)?;
            }
            Node::Enum(i) => {
                let at = r.pos;
                let idx = r.long()?;
                let n = self.enums[*i].symbols.len();
                if usize::try_from(idx).map_or(true, |k| k >= n) {
                    return Err(RawError::at(
                        RawKind::BadEnum {
                            index: idx,
                            symbols: n,
                        },
                        at,
                    ));
                }
            }
            Node::Union(branches) => {
                let branch = Self::branch(r, branches)?;
                if depth >= MAX_DEPTH {
                    return Err(RawError::at(RawKind::Malformed("nesting too deep"), r.pos));
                }
                self.check(r, branch, depth + 1)?;
            }
            Node::Record(i) => {
                if depth >= MAX_DEPTH {
                    return Err(RawError::at(RawKind::Malformed("nesting too deep"), r.pos));
                }
                for f in &self.records[*i].fields {
                    self.check(r, &f.node, depth + 1)
                        .map_err(|e| e.within(&f.name))?;
                }
            }
            Node::Array(items) => {
                if depth >= MAX_DEPTH {
                    return Err(RawError::at(RawKind::Malformed("nesting too deep"), r.pos));
                }
                let width = self.node_min_size(items);
                let mut seen = 0usize;
                loop {
                    let n = self.block_count(r, width)?;
                    if n == 0 {
                        break;
                    }
                    for k in 0..n {
                        self.check(r, items, depth + 1)
                            .map_err(|e| e.within_index(seen.max(k as usize)))?;
                        seen += 1;
                    }
                }
            }
            Node::Map(values) => {
                if depth >= MAX_DEPTH {
                    return Err(RawError::at(RawKind::Malformed("nesting too deep"), r.pos));
                }
                let width = 1 + self.node_min_size(values);
                loop {
                    let n = self.block_count(r, width)?;
                    if n == 0 {
                        break;
                    }
                    for _ in 0..n {
                        let k = r.str()?;
                        self.check(r, values, depth + 1).map_err(|e| e.within(k))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn branch<'n>(r: &mut Reader<'_>, branches: &'n [Node]) -> Result<&'n Node, Box<RawError>> {
        let at = r.pos;
        let idx = r.long()?;
        usize::try_from(idx)
            .ok()
            .and_then(|k| branches.get(k))
            .ok_or_else(|| {
                RawError::at(
                    RawKind::BadUnion {
                        index: idx,
                        branches: branches.len(),
                    },
                    at,
                )
            })
    }

    /// Advances past one value without materialising it.
    fn skip(&self, r: &mut Reader<'_>, node: &Node, depth: usize) -> Result<(), Box<RawError>> {
        match node {
            Node::Null => {}
            Node::Boolean => {
                r.boolean()?;
            }
            Node::Int | Node::Long => {
                r.long()?;
            }
            Node::Float => {
                r.take(4)?;
            }
            Node::Double => {
                r.take(8)?;
            }
            Node::Bytes | Node::String => {
                r.bytes()?;
            }
            Node::Fixed(n) => {
                r.take(*n)?;
            }
            Node::Enum(i) => {
                let at = r.pos;
                let idx = r.long()?;
                let n = self.enums[*i].symbols.len();
                if usize::try_from(idx).map_or(true, |k| k >= n) {
                    return Err(RawError::at(
                        RawKind::BadEnum {
                            index: idx,
                            symbols: n,
                        },
                        at,
                    ));
                }
            }
            Node::Union(branches) => {
                let b = Self::branch(r, branches)?;
                if depth >= MAX_DEPTH {
                    return Err(RawError::at(RawKind::Malformed("nesting too deep"), r.pos));
                }
                self.skip(r, b, depth + 1)?;
            }
            Node::Record(i) => {
                if depth >= MAX_DEPTH {
                    return Err(RawError::at(RawKind::Malformed("nesting too deep"), r.pos));
                }
                for f in &self.records[*i].fields {
                    self.skip(r, &f.node, depth + 1)
                        .map_err(|e| e.within(&f.name))?;
                }
            }
            Node::Array(items) => {
                if depth >= MAX_DEPTH {
                    return Err(RawError::at(RawKind::Malformed("nesting too deep"), r.pos));
                }
                let width = self.node_min_size(items);
                loop {
                    let at = r.pos;
                    let n = r.long()?;
                    if n == 0 {
                        break;
                    }
                    if n < 0 {
                        // The block's byte size lets us jump over it.
                        let size = r.long()?;
                        let size = usize::try_from(size).map_err(|_| {
                            RawError::at(RawKind::Malformed("negative block size"), at)
                        })?;
                        r.take(size)?;
                        continue;
                    }
                    r.pos = at;
                    let n = self.block_count(r, width)?;
                    for k in 0..n {
                        self.skip(r, items, depth + 1)
                            .map_err(|e| e.within_index(k as usize))?;
                    }
                }
            }
            Node::Map(values) => {
                if depth >= MAX_DEPTH {
                    return Err(RawError::at(RawKind::Malformed("nesting too deep"), r.pos));
                }
                let width = 1 + self.node_min_size(values);
                loop {
                    let at = r.pos;
                    let n = r.long()?;
                    if n == 0 {
                        break;
                    }
                    if n < 0 {
                        let size = r.long()?;
                        let size = usize::try_from(size).map_err(|_| {
                            RawError::at(RawKind::Malformed("negative block size"), at)
                        })?;
                        r.take(size)?;
                        continue;
                    }
                    r.pos = at;
                    let n = self.block_count(r, width)?;
                    for _ in 0..n {
                        r.bytes()?;
                        self.skip(r, values, depth + 1)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Internal error while decoding; the path is collected innermost-first on the way out.
#[derive(Debug)]
struct RawError {
    kind: RawKind,
    offset: usize,
    path: Vec<String>,
}

#[derive(Debug)]
enum RawKind {
    Truncated,
    BadUnion { index: i64, branches: usize },
    BadEnum { index: i64, symbols: usize },
    Utf8,
    Malformed(&'static str),
}

impl RawError {
    #[cold]
    fn at(kind: RawKind, offset: usize) -> Box<RawError> {
        Box::new(RawError {
            kind,
            offset,
            path: Vec::new(),
        })
    }
}

trait Within {
    fn within(self, name: &str) -> Self;
    fn within_index(self, i: usize) -> Self;
}

impl Within for Box<RawError> {
    #[cold]
    fn within(mut self, name: &str) -> Self {
        self.path.push(name.to_string());
        self
    }

    #[cold]
    fn within_index(mut self, i: usize) -> Self {
        self.path.push(format!("[{i}]"));
        self
    }
}

impl RawError {
    fn path_string(&self) -> String {
        let mut s = String::new();
        for p in self.path.iter().rev() {
            if !s.is_empty() && !p.starts_with('[') {
                s.push('.');
            }
            s.push_str(p);
        }
        if s.is_empty() {
            s.push_str("(record)");
        }
        s
    }

    fn into_error(self, schema_id: &str) -> DecodeError {
        let schema_id = schema_id.to_string();
        let path = self.path_string();
        let offset = self.offset;
        match self.kind {
            RawKind::Truncated => DecodeError::Truncated {
                schema_id,
                path,
                offset,
            },
            RawKind::BadUnion { index, branches } => DecodeError::BadUnionIndex {
                schema_id,
                path,
                offset,
                index,
                branches,
            },
            RawKind::BadEnum { index, symbols } => DecodeError::BadEnumIndex {
                schema_id,
                path,
                offset,
                index,
                symbols,
            },
            RawKind::Utf8 => DecodeError::InvalidUtf8 {
                schema_id,
                path,
                offset,
            },
            RawKind::Malformed(reason) => DecodeError::Malformed {
                schema_id,
                path,
                offset,
                reason,
            },
        }
    }
}

/// A cursor over a payload. Every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    #[inline]
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn finish(&self, schema_id: &str) -> Result<(), DecodeError> {
        if self.pos != self.buf.len() {
            return Err(DecodeError::TrailingBytes {
                schema_id: schema_id.to_string(),
                offset: self.pos,
                trailing: self.buf.len() - self.pos,
            });
        }
        Ok(())
    }

    /// A zig-zag varint of at most 10 bytes.
    #[inline]
    fn long(&mut self) -> Result<i64, Box<RawError>> {
        let start = self.pos;
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(RawError::at(RawKind::Truncated, self.pos));
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(RawError::at(
                    RawKind::Malformed("varint overflows 64 bits"),
                    start,
                ));
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
            shift += 7;
        }
    }

    #[inline]
    fn int(&mut self) -> Result<i32, Box<RawError>> {
        let at = self.pos;
        let v = self.long()?;
        i32::try_from(v)
            .map_err(|_| RawError::at(RawKind::Malformed("int out of 32-bit range"), at))
    }

    #[inline]
    fn boolean(&mut self) -> Result<bool, Box<RawError>> {
        match self.buf.get(self.pos) {
            Some(0) => {
                self.pos += 1;
                Ok(false)
            }
            Some(1) => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) => Err(RawError::at(
                RawKind::Malformed("boolean byte is not 0 or 1"),
                self.pos,
            )),
            None => Err(RawError::at(RawKind::Truncated, self.pos)),
        }
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], Box<RawError>> {
        if n > self.remaining() {
            return Err(RawError::at(RawKind::Truncated, self.pos));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[inline]
    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], Box<RawError>> {
        let s = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    #[inline]
    fn bytes(&mut self) -> Result<&'a [u8], Box<RawError>> {
        let at = self.pos;
        let n = self.long()?;
        let n = usize::try_from(n)
            .map_err(|_| RawError::at(RawKind::Malformed("negative length"), at))?;
        self.take(n)
    }

    #[inline]
    fn str(&mut self) -> Result<&'a str, Box<RawError>> {
        let at = self.pos;
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|_| RawError::at(RawKind::Utf8, at))
    }
}

/// Which header field a header-record position carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderSlot {
    EntityName,
    RecordIds,
    ChangeType,
    ChangeOrigin,
    TransactionKey,
    SequenceNumber,
    CommitTimestamp,
    CommitNumber,
    CommitUser,
    NulledFields,
    DiffFields,
    ChangedFields,
    Other,
}

impl HeaderSlot {
    fn of(name: &str) -> HeaderSlot {
        match name {
            "entityName" => HeaderSlot::EntityName,
            "recordIds" => HeaderSlot::RecordIds,
            "changeType" => HeaderSlot::ChangeType,
            "changeOrigin" => HeaderSlot::ChangeOrigin,
            "transactionKey" => HeaderSlot::TransactionKey,
            "sequenceNumber" => HeaderSlot::SequenceNumber,
            "commitTimestamp" => HeaderSlot::CommitTimestamp,
            "commitNumber" => HeaderSlot::CommitNumber,
            "commitUser" => HeaderSlot::CommitUser,
            "nulledFields" => HeaderSlot::NulledFields,
            "diffFields" => HeaderSlot::DiffFields,
            "changedFields" => HeaderSlot::ChangedFields,
            _ => HeaderSlot::Other,
        }
    }
}

/// A compiled change-event schema: the decode plan plus the field tree the bitmaps index.
#[derive(Debug, Clone)]
pub struct ChangeSchema {
    pub schema: Schema,
    /// The writer schema JSON, as received.
    pub json: Arc<str>,
    root: usize,
    header_pos: usize,
    header_record: usize,
    header_slots: Vec<HeaderSlot>,
    tree: FieldTree,
}

/// The raw (still bitmap-encoded) header lists.
#[derive(Default)]
struct RawHeader {
    header: ChangeHeader,
    changed: Vec<String>,
    nulled: Vec<String>,
    diff: Vec<String>,
    /// The parsed change type, or the unknown symbol.
    change_type: Option<Result<ChangeType, String>>,
}

impl ChangeSchema {
    /// Compiles a change-event writer schema: a record whose field named `ChangeEventHeader`
    /// (normally position 0) is a `ChangeEventHeader` record.
    pub fn parse(schema_id: &str, json: &str) -> Result<ChangeSchema, SchemaError> {
        let schema = Schema::parse(schema_id, json)?;
        let bad = |reason: &str| SchemaError {
            schema_id: schema_id.to_string(),
            path: "(root)".into(),
            reason: reason.to_string(),
        };
        let Node::Record(root) = schema.root else {
            return Err(bad("a change event schema must be a record"));
        };
        let fields = &schema.records[root].fields;
        let header_pos = fields
            .iter()
            .position(|f| f.name == "ChangeEventHeader")
            .or_else(|| {
                fields.iter().position(|f| {
                    matches!(f.node, Node::Record(i) if schema.records[i].name() == "ChangeEventHeader")
                })
            })
            .ok_or_else(|| bad("no ChangeEventHeader field"))?;
        let Node::Record(header_record) = fields[header_pos].node else {
            return Err(bad("the ChangeEventHeader field is not a record"));
        };
        let header_slots = schema.records[header_record]
            .fields
            .iter()
            .map(|f| HeaderSlot::of(&f.name))
            .collect();
        let tree = FieldTree::new(
            fields
                .iter()
                .map(|f| {
                    let nested = record_branch(&f.node).map(|i| {
                        schema.records[i]
                            .fields
                            .iter()
                            .map(|c| c.name.clone())
                            .collect::<Vec<_>>()
                    });
                    (f.name.clone(), nested)
                })
                .collect(),
        );
        Ok(ChangeSchema {
            schema,
            json: Arc::from(json),
            root,
            header_pos,
            header_record,
            header_slots,
            tree,
        })
    }

    pub fn schema_id(&self) -> &str {
        &self.schema.schema_id
    }

    /// The top-level field names and compound components the bitmaps index.
    pub fn field_tree(&self) -> &FieldTree {
        &self.tree
    }

    /// A header string: read in place when the writer type is `string`.
    fn header_string(&self, r: &mut Reader<'_>, node: &Node) -> Result<String, Box<RawError>> {
        match node {
            Node::String => Ok(r.str()?.to_owned()),
            _ => Ok(take_string(self.schema.read(r, node, 1)?)),
        }
    }

    /// A header `array<string>`: read in place when the writer type is exactly that.
    fn header_strings(
        &self,
        r: &mut Reader<'_>,
        node: &Node,
    ) -> Result<Vec<String>, Box<RawError>> {
        match node {
            Node::Array(items) if matches!(**items, Node::String) => {
                let mut out = Vec::new();
                loop {
                    let n = self.schema.block_count(r, 1)?;
                    if n == 0 {
                        return Ok(out);
                    }
                    out.reserve(n as usize);
                    for k in 0..n {
                        out.push(r.str().map_err(|e| e.within_index(k as usize))?.to_owned());
                    }
                }
            }
            _ => Ok(take_strings(self.schema.read(r, node, 1)?)),
        }
    }

    fn header_long(&self, r: &mut Reader<'_>, node: &Node) -> Result<i64, Box<RawError>> {
        match node {
            Node::Int | Node::Long => r.long(),
            _ => Ok(take_i64(&self.schema.read(r, node, 1)?)),
        }
    }

    fn read_header(&self, r: &mut Reader<'_>) -> Result<RawHeader, Box<RawError>> {
        let mut h = RawHeader::default();
        let rec = &self.schema.records[self.header_record];
        for (f, slot) in rec.fields.iter().zip(&self.header_slots) {
            let node = &f.node;
            let hd = &mut h.header;
            let res = match slot {
                HeaderSlot::Other => self.schema.skip(r, node, 1),
                HeaderSlot::EntityName => self.header_string(r, node).map(|v| hd.entity_name = v),
                HeaderSlot::RecordIds => self.header_strings(r, node).map(|v| hd.record_ids = v),
                HeaderSlot::ChangeType => match node {
                    Node::Enum(i) => {
                        let at = r.pos;
                        r.long().and_then(|idx| {
                            let symbols = &self.schema.enums[*i].symbols;
                            let s = usize::try_from(idx)
                                .ok()
                                .and_then(|k| symbols.get(k))
                                .ok_or_else(|| {
                                    RawError::at(
                                        RawKind::BadEnum {
                                            index: idx,
                                            symbols: symbols.len(),
                                        },
                                        at,
                                    )
                                })?;
                            h.change_type = Some(ChangeType::parse(s).ok_or_else(|| s.clone()));
                            Ok(())
                        })
                    }
                    _ => self.header_string(r, node).map(|s| {
                        h.change_type = Some(ChangeType::parse(&s).ok_or(s));
                    }),
                },
                HeaderSlot::ChangeOrigin => {
                    self.header_string(r, node).map(|v| hd.change_origin = v)
                }
                HeaderSlot::TransactionKey => {
                    self.header_string(r, node).map(|v| hd.transaction_key = v)
                }
                HeaderSlot::SequenceNumber => self
                    .header_long(r, node)
                    .map(|v| hd.sequence_number = v as i32),
                HeaderSlot::CommitTimestamp => {
                    self.header_long(r, node).map(|v| hd.commit_timestamp = v)
                }
                HeaderSlot::CommitNumber => self.header_long(r, node).map(|v| hd.commit_number = v),
                HeaderSlot::CommitUser => self.header_string(r, node).map(|v| hd.commit_user = v),
                HeaderSlot::NulledFields => self.header_strings(r, node).map(|v| h.nulled = v),
                HeaderSlot::DiffFields => self.header_strings(r, node).map(|v| h.diff = v),
                HeaderSlot::ChangedFields => self.header_strings(r, node).map(|v| h.changed = v),
            };
            res.map_err(|e| e.within(&f.name))?;
        }
        Ok(h)
    }

    /// Decodes one payload into a [`Change`].
    pub fn decode(&self, payload: &[u8], replay_id: ReplayId) -> Result<Change, DecodeError> {
        self.decode_as(payload, replay_id, true)
    }

    /// [`Self::decode`] without the field values: the same checks and errors (a payload one
    /// rejects, the other rejects too), the same header, and [`Change::fields`] left empty. For
    /// consumers that keep the payload and decode its values later (the raw change log): the
    /// values of a 3–8 KB event are most of its decoding cost.
    pub fn decode_header(
        &self,
        payload: &[u8],
        replay_id: ReplayId,
    ) -> Result<Change, DecodeError> {
        self.decode_as(payload, replay_id, false)
    }

    fn decode_as(
        &self,
        payload: &[u8],
        replay_id: ReplayId,
        with_values: bool,
    ) -> Result<Change, DecodeError> {
        let sid = self.schema_id();
        let mut r = Reader::new(payload);
        let fields = &self.schema.records[self.root].fields;
        // Fields before the header (unusual) are remembered by offset and revisited.
        let mut early = Vec::new();
        for f in &fields[..self.header_pos] {
            early.push(r.pos);
            self.schema
                .skip(&mut r, &f.node, 1)
                .map_err(|e| e.within(&f.name).into_error(sid))?;
        }
        let raw = self
            .read_header(&mut r)
            .map_err(|e| e.within(&fields[self.header_pos].name).into_error(sid))?;
        let RawHeader {
            mut header,
            changed,
            nulled,
            diff,
            change_type,
        } = raw;
        header.change_type = match change_type {
            Some(Ok(t)) => Some(t),
            Some(Err(s)) => {
                return Err(DecodeError::NotAChangeEvent {
                    schema_id: sid.to_string(),
                    reason: format!("unknown changeType `{s}`"),
                })
            }
            None => None,
        };
        let bm = |list: &[String], field: &'static str| {
            bitmap::decode(list, &self.tree).map_err(|source| DecodeError::Bitmap {
                schema_id: sid.to_string(),
                field,
                source,
            })
        };
        let changed_refs = bm(&changed, "changedFields")?;
        let nulled_refs = bm(&nulled, "nulledFields")?;
        let diff_refs = bm(&diff, "diffFields")?;
        header.changed_fields = self.tree.names(&changed_refs);
        header.nulled_fields = self.tree.names(&nulled_refs);
        header.diff_fields = self.tree.names(&diff_refs);

        let mode = match header.change_type {
            Some(ChangeType::Update) => Mode::Partial,
            Some(ChangeType::Create) | Some(ChangeType::Undelete) | None => Mode::All,
            Some(_) => Mode::None,
        };
        let n = fields.len();
        let mut want = vec![false; n];
        match mode {
            Mode::All => want.iter_mut().for_each(|w| *w = true),
            Mode::Partial => {
                for fr in changed_refs.iter().chain(&nulled_refs) {
                    if let Some(w) = want.get_mut(fr.top as usize) {
                        *w = true;
                    }
                }
            }
            Mode::None => {}
        }
        want[self.header_pos] = false;
        let mut values: Vec<Option<FieldValue>> = vec![None; n];
        for (i, f) in fields.iter().enumerate().skip(self.header_pos + 1) {
            let res = if !want[i] {
                self.schema.skip(&mut r, &f.node, 1)
            } else if with_values {
                self.schema
                    .read(&mut r, &f.node, 1)
                    .map(|v| values[i] = Some(v))
            } else {
                self.schema.check(&mut r, &f.node, 1)
            };
            res.map_err(|e| e.within(&f.name).into_error(sid))?;
        }
        r.finish(sid)?;
        for (i, &at) in early.iter().enumerate() {
            if want[i] {
                let mut r2 = Reader {
                    buf: payload,
                    pos: at,
                };
                let res = if with_values {
                    self.schema
                        .read(&mut r2, &fields[i].node, 1)
                        .map(|v| values[i] = Some(v))
                } else {
                    self.schema.check(&mut r2, &fields[i].node, 1)
                };
                res.map_err(|e| e.within(&fields[i].name).into_error(sid))?;
            }
        }
        if !with_values {
            return Ok(Change {
                header,
                schema_id: sid.to_string(),
                replay_id,
                fields: Vec::new(),
            });
        }

        let is_diff = |fr: &FieldRef| diff_refs.contains(fr);
        let mut out: Vec<(String, FieldValue)> = Vec::new();
        match mode {
            Mode::None => {}
            Mode::All => {
                for (i, v) in values.into_iter().enumerate() {
                    if let Some(v) = v {
                        let fr = FieldRef {
                            top: i as u32,
                            sub: None,
                        };
                        let v = if is_diff(&fr) { as_diff(v) } else { v };
                        out.push((fields[i].name.clone(), v));
                    }
                }
            }
            Mode::Partial => {
                let top_listed = |top: u32| {
                    changed_refs
                        .iter()
                        .chain(&nulled_refs)
                        .any(|f| f.top == top && f.sub.is_none())
                };
                let mut seen: Vec<FieldRef> = Vec::new();
                for (fr, nulled) in changed_refs
                    .iter()
                    .map(|f| (f, false))
                    .chain(nulled_refs.iter().map(|f| (f, true)))
                {
                    if seen.contains(fr) || fr.top as usize == self.header_pos {
                        continue;
                    }
                    seen.push(*fr);
                    if fr.sub.is_some() && top_listed(fr.top) {
                        continue;
                    }
                    let is_nulled = nulled || nulled_refs.contains(fr);
                    let value = if is_nulled {
                        FieldValue::Null
                    } else {
                        // A listed top-level field is used once (duplicates were skipped and
                        // its components are not listed separately), so it can be moved out.
                        let parent = values.get_mut(fr.top as usize);
                        let v = match (parent, fr.sub) {
                            (Some(slot), None) => slot.take().unwrap_or(FieldValue::Null),
                            (Some(Some(FieldValue::Record(items))), Some(sub)) => items
                                .get(sub as usize)
                                .map(|(_, v)| v.clone())
                                .unwrap_or(FieldValue::Null),
                            _ => FieldValue::Null,
                        };
                        if is_diff(fr) {
                            as_diff(v)
                        } else {
                            v
                        }
                    };
                    out.push((self.tree.name(fr), value));
                }
            }
        }
        Ok(Change {
            header,
            schema_id: sid.to_string(),
            replay_id,
            fields: out,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    All,
    Partial,
    None,
}

/// The record index of a field's type, directly or as the record branch of a union
/// (`[null, R]`, `[string, R]`, `[null, string, R]`).
fn record_branch(node: &Node) -> Option<usize> {
    match node {
        Node::Record(i) => Some(*i),
        Node::Union(bs) => bs.iter().find_map(|b| match b {
            Node::Record(i) => Some(*i),
            _ => None,
        }),
        _ => None,
    }
}

fn take_string(v: FieldValue) -> String {
    match v {
        FieldValue::String(s) | FieldValue::Enum(s) => s,
        _ => String::new(),
    }
}

fn take_strings(v: FieldValue) -> Vec<String> {
    match v {
        FieldValue::Array(items) => items.into_iter().map(take_string).collect(),
        _ => Vec::new(),
    }
}

fn take_i64(v: &FieldValue) -> i64 {
    match v {
        FieldValue::Int(i) => i64::from(*i),
        FieldValue::Long(l) => *l,
        _ => 0,
    }
}

/// A diffed string becomes [`FieldValue::Diff`]; the SHA-256 comes from its `+++` line.
fn as_diff(v: FieldValue) -> FieldValue {
    match v {
        FieldValue::String(patch) => {
            let sha256 = super::diff::announced_sha256(&patch)
                .unwrap_or_default()
                .to_string();
            FieldValue::Diff { patch, sha256 }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_decode_and_overflow_is_an_error() {
        let mut r = Reader::new(&[0x00, 0x01, 0x02, 0x7f, 0x80, 0x01]);
        assert_eq!(r.long().unwrap(), 0);
        assert_eq!(r.long().unwrap(), -1);
        assert_eq!(r.long().unwrap(), 1);
        assert_eq!(r.long().unwrap(), -64);
        assert_eq!(r.long().unwrap(), 64);
        let mut r = Reader::new(&[0xff; 11]);
        assert!(r.long().is_err());
        let mut r = Reader::new(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(r.long().unwrap(), i64::MAX);
    }

    #[test]
    fn named_references_and_namespaces_resolve() {
        let json = r#"{"type":"record","name":"E","namespace":"a.b","fields":[
            {"name":"x","type":["null",{"type":"record","name":"Address","fields":[{"name":"City","type":["null","string"]}]}]},
            {"name":"y","type":["null","Address"]},
            {"name":"z","type":["null","a.b.Address"]}]}"#;
        let s = Schema::parse("s1", json).unwrap();
        assert_eq!(s.records.len(), 2);
        // x = null, y = Address{City=null}, z = Address{City="P"}
        let v = s.decode_value(&[0, 2, 0, 2, 2, 2, b'P']).unwrap();
        assert_eq!(
            v,
            FieldValue::Record(vec![
                ("x".into(), FieldValue::Null),
                (
                    "y".into(),
                    FieldValue::Record(vec![("City".into(), FieldValue::Null)])
                ),
                (
                    "z".into(),
                    FieldValue::Record(vec![("City".into(), FieldValue::String("P".into()))])
                ),
            ])
        );
    }

    #[test]
    fn errors_name_path_and_offset() {
        let json =
            r#"{"type":"record","name":"E","fields":[{"name":"a","type":["null","string"]}]}"#;
        let s = Schema::parse("s1", json).unwrap();
        assert!(matches!(
            s.decode_value(&[4]),
            Err(DecodeError::BadUnionIndex { ref path, offset: 0, index: 2, .. }) if path == "a"
        ));
        assert!(matches!(
            s.decode_value(&[2, 4, b'x']),
            Err(DecodeError::Truncated { ref path, offset: 2, .. }) if path == "a"
        ));
        assert!(matches!(
            s.decode_value(&[2, 2, 0xff]),
            Err(DecodeError::InvalidUtf8 { ref path, .. }) if path == "a"
        ));
        assert!(matches!(
            s.decode_value(&[0, 0]),
            Err(DecodeError::TrailingBytes {
                offset: 1,
                trailing: 1,
                ..
            })
        ));
    }

    #[test]
    fn recursive_schema_is_bounded() {
        let json = r#"{"type":"record","name":"N","fields":[{"name":"next","type":["null","N"]}]}"#;
        let s = Schema::parse("r", json).unwrap();
        let payload = vec![2u8; 500];
        assert!(matches!(
            s.decode_value(&payload),
            Err(DecodeError::Malformed {
                reason: "nesting too deep",
                ..
            })
        ));
    }

    #[test]
    fn huge_array_counts_are_rejected_without_allocation() {
        let json = r#"{"type":"array","items":"null"}"#;
        let s = Schema::parse("a", json).unwrap();
        // count = 2^40 of nulls.
        let mut p = vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
        p.push(0);
        assert!(s.decode_value(&p).is_err());
        let json = r#"{"type":"array","items":"long"}"#;
        let s = Schema::parse("a", json).unwrap();
        assert!(matches!(
            s.decode_value(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x40]),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
