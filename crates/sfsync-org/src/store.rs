//! The org's in-memory state: the compiled schema (field positions, compound and formula fields,
//! relationships), one compact record table per object (`Box<[Val]>` indexed by field position,
//! in id order) with an id index and case-insensitive unique/external-id indexes over live
//! records. Every mutation goes through [`Store::replace`], which keeps the indexes and counts
//! consistent, so rollbacks are just replacements in reverse.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use sfsync_core::SfId;

use crate::formula;
use crate::schema::SYSTEM_FIELDS;
use crate::value::{Val, NULL};
use crate::{FieldDef, FieldType, ObjectDef, Schema};

/// How a field's value is obtained.
#[derive(Debug, Clone)]
pub(crate) enum FKind {
    Stored,
    Id,
    IsDeleted,
    Formula(formula::Expr),
    /// Compound address: (component position, JSON key) in alphabetical key order.
    Address(Vec<(usize, String)>),
    /// Compound person name: components joined by spaces (FirstName LastName).
    Name(Vec<usize>),
}

/// One object's compiled metadata.
#[derive(Debug)]
pub(crate) struct CObject {
    pub def: ObjectDef,
    pub index: usize,
    pub lower: HashMap<String, usize>,
    pub kinds: Vec<FKind>,
    pub id_f: usize,
    pub created_date_f: usize,
    pub created_by_f: usize,
    pub lmd_f: usize,
    pub lmb_f: usize,
    pub sysmod_f: usize,
    pub owner_f: Option<usize>,
    pub case_number_f: Option<usize>,
    /// Lower-case relationship name → (reference field position, target object index).
    pub rels: HashMap<String, (usize, usize)>,
    /// Fields with a lookup index (unique or external id).
    pub indexed: Vec<usize>,
    /// Fields a CREATE/UNDELETE change carries: not formula, not compound, not SystemModstamp
    /// or IsDeleted.
    pub change_fields: Vec<usize>,
}

impl CObject {
    pub fn name(&self) -> &str {
        &self.def.name
    }

    pub fn field(&self, name: &str) -> Option<usize> {
        if let Some(i) = self.lower.get(name) {
            return Some(*i);
        }
        self.lower.get(&name.to_ascii_lowercase()).copied()
    }

    pub fn fd(&self, i: usize) -> &FieldDef {
        &self.def.fields[i]
    }

    pub fn is_compound(&self, i: usize) -> bool {
        matches!(self.kinds[i], FKind::Address(_) | FKind::Name(_))
    }

    /// A field's value on a record (formula and compound name computed; address compounds are
    /// only available as JSON, see [`CObject::field_json`]).
    pub fn get<'a>(&self, rec: &'a Record, i: usize) -> Cow<'a, Val> {
        match &self.kinds[i] {
            FKind::Stored => Cow::Borrowed(rec.vals.get(i).unwrap_or(&NULL)),
            FKind::Id => Cow::Owned(Val::Id(rec.id)),
            FKind::IsDeleted => Cow::Owned(Val::Bool(rec.deleted)),
            FKind::Formula(e) => {
                let v = formula::eval(e, &rec.vals);
                Cow::Owned(shape_formula(self.fd(i), v))
            }
            FKind::Name(parts) => {
                let mut s = String::new();
                for p in parts {
                    if let Some(t) = rec.vals.get(*p).and_then(Val::as_text) {
                        if !s.is_empty() {
                            s.push(' ');
                        }
                        s.push_str(t);
                    }
                }
                Cow::Owned(if s.is_empty() {
                    Val::Null
                } else {
                    Val::str(&s)
                })
            }
            FKind::Address(_) => Cow::Owned(Val::Null),
        }
    }

    /// A field's REST JSON value (address compounds as objects, null when every component is).
    pub fn field_json(&self, rec: &Record, i: usize) -> Value {
        match &self.kinds[i] {
            FKind::Address(parts) => {
                let mut m = Map::new();
                let mut any = false;
                for (p, key) in parts {
                    let v = rec.vals.get(*p).unwrap_or(&NULL);
                    any |= !v.is_null();
                    m.insert(key.clone(), v.to_json());
                }
                if any {
                    Value::Object(m)
                } else {
                    Value::Null
                }
            }
            _ => self.get(rec, i).to_json(),
        }
    }

    /// The REST record: `attributes` then the given fields (default: all, in describe order).
    pub fn record_json(
        &self,
        rec: &Record,
        fields: Option<&[usize]>,
        api_version: &str,
    ) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(
            "attributes".into(),
            attributes(self.name(), &rec.id, api_version),
        );
        match fields {
            Some(fs) => {
                for &i in fs {
                    m.insert(self.fd(i).name.clone(), self.field_json(rec, i));
                }
            }
            None => {
                for i in 0..self.def.fields.len() {
                    m.insert(self.fd(i).name.clone(), self.field_json(rec, i));
                }
            }
        }
        m
    }
}

impl CObject {
    /// Writes the REST record JSON (same bytes as serialising [`CObject::record_json`]) straight
    /// from the store, without building a map or copying strings.
    pub fn write_record_json(
        &self,
        rec: &Record,
        fields: Option<&[usize]>,
        api_version: &str,
        out: &mut Vec<u8>,
    ) -> serde_json::Result<()> {
        serde_json::to_writer(
            out,
            &RecordJson {
                c: self,
                rec,
                fields,
                api_version,
            },
        )
    }
}

struct RecordJson<'a> {
    c: &'a CObject,
    rec: &'a Record,
    fields: Option<&'a [usize]>,
    api_version: &'a str,
}

/// A stored value serialised exactly as `Val::to_json` would render it, borrowing strings.
struct ValJson<'a>(&'a Val);

impl serde::Serialize for ValJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Val::Str(t) => s.serialize_str(t),
            Val::Id(id) => s.serialize_str(id.as_str()),
            other => other.to_json().serialize(s),
        }
    }
}

impl serde::Serialize for RecordJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let c = self.c;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry(
            "attributes",
            &attributes(c.name(), &self.rec.id, self.api_version),
        )?;
        let one = |i: usize, m: &mut S::SerializeMap| -> Result<(), S::Error> {
            let name = c.fd(i).name.as_str();
            match &c.kinds[i] {
                FKind::Address(_) => m.serialize_entry(name, &c.field_json(self.rec, i)),
                _ => m.serialize_entry(name, &ValJson(&c.get(self.rec, i))),
            }
        };
        match self.fields {
            Some(fs) => {
                for &i in fs {
                    one(i, &mut m)?;
                }
            }
            None => {
                for i in 0..c.def.fields.len() {
                    one(i, &mut m)?;
                }
            }
        }
        m.end()
    }
}

/// `{"type": X, "url": "/services/data/vNN.N/sobjects/X/<id>"}`.
pub(crate) fn attributes(object: &str, id: &SfId, api_version: &str) -> Value {
    json!({
        "type": object,
        "url": format!("/services/data/v{api_version}/sobjects/{object}/{id}"),
    })
}

fn shape_formula(fd: &FieldDef, v: Val) -> Val {
    match (fd.field_type, v) {
        (_, Val::Null) => Val::Null,
        (FieldType::Double | FieldType::Currency | FieldType::Percent, v) => match v.as_f64() {
            Some(f) => {
                let m = 10f64.powi(fd.scale.min(15) as i32);
                Val::Num((f * m).round() / m)
            }
            None => Val::Null,
        },
        (FieldType::Int, v) => v
            .as_f64()
            .map(|f| Val::Int(f.round() as i64))
            .unwrap_or(Val::Null),
        (FieldType::Boolean, Val::Bool(b)) => Val::Bool(b),
        (FieldType::Boolean, _) => Val::Bool(false),
        (FieldType::String | FieldType::Textarea, Val::Str(s)) => {
            if s.is_empty() {
                Val::Null
            } else {
                Val::Str(s)
            }
        }
        (FieldType::String | FieldType::Textarea, v) => match v.to_json() {
            Value::String(s) => Val::str(&s),
            other => Val::str(&other.to_string()),
        },
        (_, v) => v,
    }
}

/// The compiled schema.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub objects: Vec<CObject>,
    pub by_lower: HashMap<String, usize>,
    pub by_prefix: HashMap<String, usize>,
}

impl Compiled {
    pub fn object(&self, name: &str) -> Option<&CObject> {
        self.by_lower
            .get(&name.to_ascii_lowercase())
            .map(|&i| &self.objects[i])
    }

    pub fn by_prefix(&self, prefix: &str) -> Option<&CObject> {
        self.by_prefix.get(prefix).map(|&i| &self.objects[i])
    }
}

/// Adds the system fields an object lacks (a hand-built `Schema` may omit them).
pub(crate) fn normalize(mut schema: Schema) -> Schema {
    let template = ObjectDef::new("X", "X", "X", "xxx", Vec::new());
    for o in &mut schema.objects {
        for (k, name) in SYSTEM_FIELDS.iter().enumerate() {
            if o.field(name).is_none() {
                let f = template
                    .field(name)
                    .cloned()
                    .expect("template has system fields");
                if k < 2 {
                    o.fields.insert(k, f);
                } else {
                    o.fields.push(f);
                }
            }
        }
    }
    schema
}

/// Compiles a (normalised) schema. Fails on formulas that do not parse or references to unknown
/// objects.
pub(crate) fn compile(schema: &Schema) -> Result<Compiled, String> {
    let mut by_lower = HashMap::new();
    let mut by_prefix = HashMap::new();
    for (i, o) in schema.objects.iter().enumerate() {
        by_lower.insert(o.name.to_ascii_lowercase(), i);
        by_prefix.insert(o.key_prefix.clone(), i);
    }
    let mut objects = Vec::new();
    for (index, o) in schema.objects.iter().enumerate() {
        let mut lower = HashMap::new();
        for (i, f) in o.fields.iter().enumerate() {
            lower.insert(f.name.to_ascii_lowercase(), i);
        }
        let pos = |n: &str| -> Result<usize, String> {
            lower
                .get(&n.to_ascii_lowercase())
                .copied()
                .ok_or_else(|| format!("object '{}' lacks system field {n}", o.name))
        };
        let mut kinds = Vec::with_capacity(o.fields.len());
        for f in &o.fields {
            let comps: Vec<usize> = o
                .fields
                .iter()
                .enumerate()
                .filter(|(_, c)| c.compound_field_name.as_deref() == Some(f.name.as_str()))
                .map(|(i, _)| i)
                .collect();
            let kind =
                if f.name == "Id" {
                    FKind::Id
                } else if f.name == "IsDeleted" {
                    FKind::IsDeleted
                } else if let Some(fm) = &f.formula {
                    FKind::Formula(formula::parse(&fm.text, o).map_err(|e| {
                        format!("object '{}' field '{}': formula: {e}", o.name, f.name)
                    })?)
                } else if !comps.is_empty() && f.field_type == FieldType::Address {
                    let prefix = f.name.strip_suffix("Address").unwrap_or(&f.name);
                    let mut parts: Vec<(usize, String)> = comps
                        .iter()
                        .map(|&c| {
                            let n = &o.fields[c].name;
                            let suffix = n.strip_prefix(prefix).unwrap_or(n);
                            let mut key = String::new();
                            for (k, ch) in suffix.chars().enumerate() {
                                key.push(if k == 0 { ch.to_ascii_lowercase() } else { ch });
                            }
                            (c, key)
                        })
                        .collect();
                    parts.sort_by(|a, b| a.1.cmp(&b.1));
                    FKind::Address(parts)
                } else if !comps.is_empty() {
                    let order = ["FirstName", "MiddleName", "LastName", "Suffix"];
                    let mut parts = Vec::new();
                    for n in order {
                        if let Some(&c) = comps.iter().find(|&&c| o.fields[c].name == n) {
                            parts.push(c);
                        }
                    }
                    FKind::Name(parts)
                } else {
                    FKind::Stored
                };
            kinds.push(kind);
        }
        let mut rels = HashMap::new();
        for (i, f) in o.fields.iter().enumerate() {
            if f.field_type == FieldType::Reference {
                if let (Some(rel), Some(target)) = (&f.relationship_name, f.reference_to.first()) {
                    let t = by_lower
                        .get(&target.to_ascii_lowercase())
                        .copied()
                        .ok_or_else(|| {
                            format!(
                                "object '{}' field '{}': unknown object '{target}'",
                                o.name, f.name
                            )
                        })?;
                    rels.insert(rel.to_ascii_lowercase(), (i, t));
                }
            }
        }
        let indexed = o
            .fields
            .iter()
            .enumerate()
            .filter(|(_, f)| (f.unique || f.external_id) && f.formula.is_none())
            .map(|(i, _)| i)
            .collect();
        let change_fields = o
            .fields
            .iter()
            .enumerate()
            .filter(|(i, f)| {
                matches!(kinds[*i], FKind::Stored | FKind::Id) && f.name != "SystemModstamp"
            })
            .map(|(i, _)| i)
            .collect();
        objects.push(CObject {
            index,
            id_f: pos("Id")?,
            created_date_f: pos("CreatedDate")?,
            created_by_f: pos("CreatedById")?,
            lmd_f: pos("LastModifiedDate")?,
            lmb_f: pos("LastModifiedById")?,
            sysmod_f: pos("SystemModstamp")?,
            owner_f: lower.get("ownerid").copied(),
            case_number_f: if o.name == "Case" {
                lower.get("casenumber").copied()
            } else {
                None
            },
            def: o.clone(),
            lower,
            kinds,
            rels,
            indexed,
            change_fields,
        });
    }
    Ok(Compiled {
        objects,
        by_lower,
        by_prefix,
    })
}

/// One record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    pub id: SfId,
    pub deleted: bool,
    pub vals: Box<[Val]>,
}

impl Record {
    pub fn val(&self, i: usize) -> &Val {
        self.vals.get(i).unwrap_or(&NULL)
    }

    pub fn set(&mut self, i: usize, v: Val) {
        if i >= self.vals.len() {
            let mut vs = std::mem::take(&mut self.vals).into_vec();
            vs.resize(i + 1, Val::Null);
            self.vals = vs.into_boxed_slice();
        }
        self.vals[i] = v;
    }
}

/// The lookup key of a value in a unique / external id index (case-insensitive).
pub(crate) fn index_key(v: &Val) -> Option<String> {
    match v {
        Val::Null => None,
        Val::Str(s) => Some(s.to_lowercase()),
        Val::Id(id) => Some(id.as_str().to_ascii_lowercase()),
        Val::Int(i) => Some(i.to_string()),
        Val::Num(f) => Some(f.to_string()),
        other => match other.to_json() {
            Value::String(s) => Some(s),
            j => Some(j.to_string()),
        },
    }
}

/// One object's records.
#[derive(Debug, Default)]
pub(crate) struct Store {
    /// Records in id order; `None` = hard-deleted.
    pub slots: Vec<Option<Record>>,
    pub by_id: HashMap<SfId, u32>,
    /// (field position, key → live record slots).
    pub uniq: Vec<(usize, HashMap<String, Vec<u32>>)>,
    pub live: usize,
    pub deleted: usize,
}

impl Store {
    pub fn new(obj: &CObject) -> Store {
        Store {
            uniq: obj.indexed.iter().map(|&f| (f, HashMap::new())).collect(),
            ..Store::default()
        }
    }

    pub fn get(&self, id: &SfId) -> Option<(u32, &Record)> {
        let slot = *self.by_id.get(id)?;
        self.slots[slot as usize].as_ref().map(|r| (slot, r))
    }

    /// Live slots whose indexed field `field` equals `key` (case-insensitive).
    pub fn lookup(&self, field: usize, key: &str) -> &[u32] {
        self.uniq
            .iter()
            .find(|(f, _)| *f == field)
            .and_then(|(_, m)| m.get(key))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn unindex(&mut self, slot: u32, rec: &Record) {
        if rec.deleted {
            self.deleted -= 1;
            return;
        }
        self.live -= 1;
        for (f, m) in &mut self.uniq {
            if let Some(k) = index_key(rec.val(*f)) {
                if let Some(v) = m.get_mut(&k) {
                    v.retain(|s| *s != slot);
                    if v.is_empty() {
                        m.remove(&k);
                    }
                }
            }
        }
    }

    fn index(&mut self, slot: u32, rec: &Record) {
        if rec.deleted {
            self.deleted += 1;
            return;
        }
        self.live += 1;
        for (f, m) in &mut self.uniq {
            if let Some(k) = index_key(rec.val(*f)) {
                m.entry(k).or_default().push(slot);
            }
        }
    }

    /// Appends a new record (ids must increase); returns its slot.
    pub fn push(&mut self, rec: Record) -> u32 {
        let slot = self.slots.len() as u32;
        self.index(slot, &rec);
        self.by_id.insert(rec.id, slot);
        self.slots.push(Some(rec));
        slot
    }

    /// Replaces the record in `slot`, keeping indexes and counts consistent; returns the old one.
    pub fn replace(&mut self, slot: u32, new: Option<Record>) -> Option<Record> {
        let old = self.slots[slot as usize].take();
        if let Some(o) = &old {
            self.unindex(slot, o);
            if new.is_none() {
                self.by_id.remove(&o.id);
            }
        }
        if let Some(n) = &new {
            self.index(slot, n);
            self.by_id.insert(n.id, slot);
        }
        self.slots[slot as usize] = new;
        old
    }

    /// Removes the last slot (rollback of a create).
    pub fn pop(&mut self) {
        let slot = self.slots.len() as u32 - 1;
        self.replace(slot, None);
        self.slots.pop();
    }

    /// Adds an index for a newly added unique / external id field.
    pub fn add_index(&mut self, field: usize) {
        let mut m: HashMap<String, Vec<u32>> = HashMap::new();
        for (slot, r) in self.slots.iter().enumerate() {
            if let Some(r) = r {
                if !r.deleted {
                    if let Some(k) = index_key(r.val(field)) {
                        m.entry(k).or_default().push(slot as u32);
                    }
                }
            }
        }
        self.uniq.push((field, m));
    }
}

/// Everything behind the org's lock.
pub(crate) struct State {
    pub schema: Arc<Schema>,
    pub compiled: Arc<Compiled>,
    pub stores: Vec<Store>,
    /// Next id number per key prefix.
    pub counters: HashMap<String, u64>,
    pub case_counter: u64,
    pub commit_number: i64,
    pub last_ts: i64,
    pub transactions: u64,
    /// Fields added at run time (replayed on top of the base schema after a restart).
    pub added_fields: Vec<(String, FieldDef)>,
    /// Records changed behind the CDC stream's back (see [`crate::drift`]).
    pub drift: crate::drift::DriftCounts,
}

/// Ids are `<prefix>` + a pod character pair folded into the number + a counter, so they look
/// like `0010Kx000000001`.
pub(crate) const ID_BASE: u64 = 20 * 62u64.pow(10) + 59 * 62u64.pow(9);

impl State {
    pub fn new(schema: Schema) -> Result<State, String> {
        let schema = normalize(schema);
        let compiled = compile(&schema)?;
        let stores = compiled.objects.iter().map(Store::new).collect();
        Ok(State {
            schema: Arc::new(schema),
            compiled: Arc::new(compiled),
            stores,
            counters: HashMap::new(),
            case_counter: 1000,
            commit_number: 1_100_583_868_000,
            last_ts: 0,
            transactions: 0,
            added_fields: Vec::new(),
            drift: Default::default(),
        })
    }

    /// Allocates the next id for `prefix`.
    pub fn next_id(&mut self, prefix: &str) -> SfId {
        let n = self.counters.entry(prefix.to_string()).or_insert(0);
        *n += 1;
        SfId::from_parts(prefix, ID_BASE + *n)
    }

    /// Records that `id` exists (replay), so later allocations never reuse it.
    pub fn note_id(&mut self, id: &SfId) {
        let n = decode_base62(&id.as_str()[3..15]).saturating_sub(ID_BASE);
        let c = self
            .counters
            .entry(id.key_prefix().to_string())
            .or_insert(0);
        if n > *c && n < u64::MAX / 2 {
            *c = n;
        }
    }

    /// Adds a field to an object (schema, compiled metadata and indexes).
    pub fn add_field(&mut self, object: &str, field: FieldDef) -> Result<(), String> {
        let mut schema = (*self.schema).clone();
        let o = schema
            .objects
            .iter_mut()
            .find(|o| o.name.eq_ignore_ascii_case(object))
            .ok_or_else(|| format!("sObject type '{object}' is not supported."))?;
        let object_name = o.name.clone();
        if o.field(&field.name).is_some() {
            return Err(format!(
                "field '{}' already exists on {}",
                field.name, o.name
            ));
        }
        if field.name.is_empty()
            || !field
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!("invalid field name '{}'", field.name));
        }
        o.fields.push(field.clone());
        schema.validate().map_err(|e| e.to_string())?;
        let compiled = compile(&schema)?;
        let oi = compiled.by_lower[&object_name.to_ascii_lowercase()];
        let new_pos = compiled.objects[oi].def.fields.len() - 1;
        if compiled.objects[oi].indexed.contains(&new_pos) {
            self.stores[oi].add_index(new_pos);
        }
        self.schema = Arc::new(schema);
        self.compiled = Arc::new(compiled);
        self.added_fields.push((object_name, field));
        Ok(())
    }
}

pub(crate) fn decode_base62(s: &str) -> u64 {
    let mut n: u64 = 0;
    for c in s.bytes() {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'A'..=b'Z' => c - b'A' + 10,
            b'a'..=b'z' => c - b'a' + 36,
            _ => 0,
        } as u64;
        n = n.wrapping_mul(62).wrapping_add(d);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_the_counter() {
        let mut st = State::new(Schema::standard()).unwrap();
        let a = st.next_id("001");
        let b = st.next_id("001");
        assert!(a < b);
        assert_eq!(a.key_prefix(), "001");
        assert_eq!(SfId::parse(a.short()).unwrap(), a);
        let mut st2 = State::new(Schema::standard()).unwrap();
        st2.note_id(&b);
        assert!(st2.next_id("001") > b);
    }

    #[test]
    fn compiled_compounds() {
        let st = State::new(Schema::standard()).unwrap();
        let acc = st.compiled.object("account").unwrap();
        let ba = acc.field("BillingAddress").unwrap();
        match &acc.kinds[ba] {
            FKind::Address(p) => {
                let keys: Vec<&str> = p.iter().map(|(_, k)| k.as_str()).collect();
                assert_eq!(
                    keys,
                    [
                        "city",
                        "country",
                        "geocodeAccuracy",
                        "latitude",
                        "longitude",
                        "postalCode",
                        "state",
                        "street"
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        let c = st.compiled.object("Contact").unwrap();
        assert!(matches!(c.kinds[c.field("Name").unwrap()], FKind::Name(_)));
        assert_eq!(c.rels["account"].1, acc.index);
    }
}
