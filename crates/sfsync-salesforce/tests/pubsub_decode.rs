//! Avro decoding of Pub/Sub payloads against independent encoders: random schemas and values
//! written by `apache-avro`, random change events written by the emulator's public encoder
//! (`sfsync_emulator::cdc::encode_event`), the fact sheet's golden vectors, and bad payloads.

use std::collections::HashMap;

use apache_avro::types::Value as Avro;
use proptest::prelude::*;
use serde_json::{json, Value as Json};
use sfsync_core::{ChangeType, FieldValue, ReplayId};
use sfsync_emulator::cdc::schema::{AvroKind, TopField};
use sfsync_emulator::cdc::{self as emu, bitmap as emu_bitmap};
use sfsync_salesforce::pubsub::avro::{ChangeSchema, DecodeError, Schema};

// ---------------------------------------------------------------- random schemas (apache-avro)

/// The reference encoder: a raw datum (no container header).
fn encode_datum(schema: &apache_avro::Schema, value: Avro) -> Result<Vec<u8>, apache_avro::Error> {
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .and_then(|w| w.write_value_to_vec(value))
}

#[derive(Debug, Clone)]
enum Ty {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    Str,
    Enum(usize),
    Fixed(usize),
    Array(Box<Ty>),
    Map(Box<Ty>),
    Record(Vec<Ty>),
    /// `["null", T]`, `["string", T]` or `["null", "string", T]` when T is not a string.
    Union(u8, Box<Ty>),
}

fn ty_strategy() -> impl Strategy<Value = Ty> {
    let leaf = prop_oneof![
        Just(Ty::Null),
        Just(Ty::Boolean),
        Just(Ty::Int),
        Just(Ty::Long),
        Just(Ty::Float),
        Just(Ty::Double),
        Just(Ty::Bytes),
        Just(Ty::Str),
        (1usize..6).prop_map(Ty::Enum),
        (0usize..5).prop_map(Ty::Fixed),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            inner.clone().prop_map(|t| Ty::Array(Box::new(t))),
            inner.clone().prop_map(|t| Ty::Map(Box::new(t))),
            proptest::collection::vec(inner.clone(), 1..6).prop_map(Ty::Record),
            (0u8..3, inner).prop_map(|(k, t)| match t {
                // A union may not contain a union or two unnamed types of one kind.
                Ty::Union(..) | Ty::Null | Ty::Str => Ty::Union(0, Box::new(Ty::Int)),
                t => Ty::Union(k, Box::new(t)),
            }),
        ]
    })
}

struct Names(usize);

impl Names {
    fn next(&mut self, prefix: &str) -> String {
        self.0 += 1;
        format!("{prefix}{}", self.0)
    }
}

fn schema_json(t: &Ty, names: &mut Names) -> Json {
    match t {
        Ty::Null => json!("null"),
        Ty::Boolean => json!("boolean"),
        Ty::Int => json!("int"),
        Ty::Long => json!("long"),
        Ty::Float => json!("float"),
        Ty::Double => json!("double"),
        Ty::Bytes => json!("bytes"),
        Ty::Str => json!("string"),
        Ty::Enum(n) => json!({"type": "enum", "name": names.next("E"),
            "symbols": (0..*n).map(|i| format!("S{i}")).collect::<Vec<_>>()}),
        Ty::Fixed(n) => json!({"type": "fixed", "name": names.next("F"), "size": n}),
        Ty::Array(i) => json!({"type": "array", "items": schema_json(i, names)}),
        Ty::Map(v) => json!({"type": "map", "values": schema_json(v, names)}),
        Ty::Record(fields) => {
            let name = names.next("R");
            let fields: Vec<Json> = fields
                .iter()
                .enumerate()
                .map(|(i, f)| json!({"name": format!("f{i}"), "type": schema_json(f, names)}))
                .collect();
            json!({"type": "record", "name": name, "namespace": "t.ns", "fields": fields})
        }
        Ty::Union(k, t) => {
            let inner = schema_json(t, names);
            match k {
                0 => json!(["null", inner]),
                1 => json!(["string", inner]),
                _ => json!(["null", "string", inner]),
            }
        }
    }
}

/// Tiny deterministic generator for values (proptest supplies the seed).
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

    fn string(&mut self) -> String {
        const ALPHABET: [&str; 8] = ["a", "Z", "0", " ", "é", "日本", "🙂", "\n"];
        (0..self.below(12))
            .map(|_| ALPHABET[self.below(8) as usize])
            .collect()
    }

    fn int(&mut self) -> i32 {
        match self.below(4) {
            0 => 0,
            1 => i32::MIN,
            2 => i32::MAX,
            _ => self.next() as i32,
        }
    }

    fn long(&mut self) -> i64 {
        match self.below(4) {
            0 => -1,
            1 => i64::MIN,
            2 => i64::MAX,
            _ => self.next() as i64,
        }
    }
}

/// A random value of `t` as (apache-avro value, expected decoded value).
fn value(t: &Ty, rng: &mut Rng, depth: usize) -> (Avro, FieldValue) {
    match t {
        Ty::Null => (Avro::Null, FieldValue::Null),
        Ty::Boolean => {
            let b = rng.below(2) == 1;
            (Avro::Boolean(b), FieldValue::Bool(b))
        }
        Ty::Int => {
            let i = rng.int();
            (Avro::Int(i), FieldValue::Int(i))
        }
        Ty::Long => {
            let l = rng.long();
            (Avro::Long(l), FieldValue::Long(l))
        }
        Ty::Float => {
            let f = (rng.int() as f32) / 7.0;
            (Avro::Float(f), FieldValue::Float(f))
        }
        Ty::Double => {
            let d = (rng.long() as f64) / 3.0;
            (Avro::Double(d), FieldValue::Double(d))
        }
        Ty::Bytes => {
            let b: Vec<u8> = (0..rng.below(9)).map(|_| rng.next() as u8).collect();
            (Avro::Bytes(b.clone()), FieldValue::Bytes(b))
        }
        Ty::Str => {
            let s = rng.string();
            (Avro::String(s.clone()), FieldValue::String(s))
        }
        Ty::Enum(n) => {
            let k = rng.below(*n as u64) as u32;
            (
                Avro::Enum(k, format!("S{k}")),
                FieldValue::Enum(format!("S{k}")),
            )
        }
        Ty::Fixed(n) => {
            let b: Vec<u8> = (0..*n).map(|_| rng.next() as u8).collect();
            (Avro::Fixed(*n, b.clone()), FieldValue::Bytes(b))
        }
        Ty::Array(i) => {
            let n = if depth > 3 { 0 } else { rng.below(4) };
            let (a, e): (Vec<_>, Vec<_>) = (0..n).map(|_| value(i, rng, depth + 1)).unzip();
            (Avro::Array(a), FieldValue::Array(e))
        }
        Ty::Map(v) => {
            let n = if depth > 3 { 0 } else { rng.below(4) };
            let mut a = HashMap::new();
            let mut e = Vec::new();
            for k in 0..n {
                let key = format!("k{k}{}", rng.string());
                let (av, ev) = value(v, rng, depth + 1);
                a.insert(key.clone(), av);
                e.push((key, ev));
            }
            (Avro::Map(a), FieldValue::Map(e))
        }
        Ty::Record(fields) => {
            let (a, e): (Vec<_>, Vec<_>) = fields
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let (av, ev) = value(f, rng, depth + 1);
                    ((format!("f{i}"), av), (format!("f{i}"), ev))
                })
                .unzip();
            (Avro::Record(a), FieldValue::Record(e))
        }
        Ty::Union(k, t) => {
            let branches: &[u32] = match k {
                0 | 1 => &[0, 1],
                _ => &[0, 1, 2],
            };
            let b = branches[rng.below(branches.len() as u64) as usize];
            let last = branches.len() as u32 - 1;
            if b == last {
                let (av, ev) = value(t, rng, depth + 1);
                (Avro::Union(b, Box::new(av)), ev)
            } else if *k == 1 || (*k == 2 && b == 1) {
                let s = rng.string();
                (
                    Avro::Union(b, Box::new(Avro::String(s.clone()))),
                    FieldValue::String(s),
                )
            } else {
                (Avro::Union(b, Box::new(Avro::Null)), FieldValue::Null)
            }
        }
    }
}

/// Maps have no order in apache-avro's value; compare them sorted.
fn normalise(v: FieldValue) -> FieldValue {
    match v {
        FieldValue::Map(mut e) => {
            e.sort_by(|a, b| a.0.cmp(&b.0));
            FieldValue::Map(e.into_iter().map(|(k, v)| (k, normalise(v))).collect())
        }
        FieldValue::Array(a) => FieldValue::Array(a.into_iter().map(normalise).collect()),
        FieldValue::Record(r) => {
            FieldValue::Record(r.into_iter().map(|(k, v)| (k, normalise(v))).collect())
        }
        other => other,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_schemas_and_values_round_trip_through_apache_avro(
        fields in proptest::collection::vec(ty_strategy(), 1..8),
        seed in 1u64..u64::MAX,
    ) {
        let root = Ty::Record(fields);
        let json = schema_json(&root, &mut Names(0)).to_string();
        let avro_schema = apache_avro::Schema::parse_str(&json).expect("generated schema is valid");
        let mut rng = Rng(seed);
        let (av, expected) = value(&root, &mut rng, 0);
        let payload = encode_datum(&avro_schema, av).expect("apache-avro encodes");
        let ours = Schema::parse("rand", &json).expect("our compiler accepts it");
        let decoded = ours.decode_value(&payload).expect("decodes");
        prop_assert_eq!(normalise(decoded), normalise(expected));
        // Every strict prefix fails with a typed error (never a panic, never a wrong value).
        for cut in 0..payload.len() {
            prop_assert!(ours.decode_value(&payload[..cut]).is_err());
        }
        // One extra byte is a trailing-bytes error.
        let mut longer = payload.clone();
        longer.push(0);
        let trailing = matches!(ours.decode_value(&longer), Err(DecodeError::TrailingBytes { .. }));
        prop_assert!(trailing);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        fields in proptest::collection::vec(ty_strategy(), 1..6),
        junk in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let json = schema_json(&Ty::Record(fields), &mut Names(0)).to_string();
        let ours = Schema::parse("rand", &json).unwrap();
        let _ = ours.decode_value(&junk);
    }
}

// ------------------------------------------------- change events through the emulator encoder

fn demo_schema(object: &str) -> emu::CdcSchema {
    let org = sfsync_org::Schema::demo();
    emu::schema_for(org.object(object).expect("demo object"))
}

fn kind_value(kind: AvroKind, rng: &mut Rng) -> (emu::FieldValue, FieldValue) {
    match kind {
        AvroKind::String => {
            let s = format!("v{}", rng.string());
            (emu::FieldValue::String(s.clone()), FieldValue::String(s))
        }
        AvroKind::Boolean => {
            let b = rng.below(2) == 0;
            (emu::FieldValue::Boolean(b), FieldValue::Bool(b))
        }
        AvroKind::Int | AvroKind::Date => {
            let i = rng.int();
            (emu::FieldValue::Int(i), FieldValue::Int(i))
        }
        AvroKind::Long | AvroKind::DateTime => {
            let l = rng.long();
            (emu::FieldValue::Long(l), FieldValue::Long(l))
        }
        AvroKind::Double => {
            let d = rng.int() as f64 / 4.0;
            (emu::FieldValue::Double(d), FieldValue::Double(d))
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Unchanged,
    Changed,
    Nulled,
}

/// A random event, the `Change` fields expected back, and the changed and nulled paths.
type RandomEvent = (
    emu::ChangeEvent,
    Vec<(String, FieldValue)>,
    Vec<String>,
    Vec<String>,
);

/// One random event: the emulator event and the `Change` fields we expect back.
fn random_event(schema: &emu::CdcSchema, ct: emu::ChangeType, rng: &mut Rng) -> RandomEvent {
    let mut values = Vec::new();
    let mut all = Vec::new();
    let mut changed_top = Vec::new();
    let mut nulled_top = Vec::new();
    let mut changed_nested: Vec<(usize, usize)> = Vec::new();
    let mut nulled_nested: Vec<(usize, usize)> = Vec::new();
    let mut field_values: HashMap<String, FieldValue> = HashMap::new();
    let state = |rng: &mut Rng| match rng.below(3) {
        0 => State::Unchanged,
        1 => State::Changed,
        _ => State::Nulled,
    };
    for (pos, f) in schema.fields.iter().enumerate() {
        match f {
            TopField::Header => {}
            TopField::Scalar { name, kind } | TopField::Required { name, kind } => {
                let required = matches!(f, TopField::Required { .. });
                let (ev, cv) = kind_value(*kind, rng);
                let st = if ct == emu::ChangeType::Update {
                    state(rng)
                } else if rng.below(3) == 0 {
                    State::Nulled
                } else {
                    State::Changed
                };
                let st = if required && st == State::Nulled {
                    State::Changed
                } else {
                    st
                };
                let (ev, cv) = if st == State::Changed || required {
                    (ev, cv)
                } else {
                    (emu::FieldValue::Null, FieldValue::Null)
                };
                match st {
                    State::Changed => changed_top.push(pos),
                    State::Nulled => nulled_top.push(pos),
                    State::Unchanged => {}
                }
                field_values.insert(name.clone(), cv.clone());
                all.push((name.clone(), cv));
                values.push(ev);
            }
            TopField::Compound {
                name, components, ..
            } => {
                let mut parts = Vec::new();
                let mut cparts = Vec::new();
                let whole = rng.below(4) == 0;
                for (k, c) in components.iter().enumerate() {
                    let (ev, cv) = kind_value(c.kind, rng);
                    let st = if ct == emu::ChangeType::Update && !whole {
                        state(rng)
                    } else {
                        State::Changed
                    };
                    let (ev, cv) = if st == State::Changed {
                        (ev, cv)
                    } else {
                        (emu::FieldValue::Null, FieldValue::Null)
                    };
                    if ct == emu::ChangeType::Update && !whole {
                        match st {
                            State::Changed => changed_nested.push((pos, k)),
                            State::Nulled => nulled_nested.push((pos, k)),
                            State::Unchanged => {}
                        }
                        field_values.insert(format!("{name}.{}", c.name), cv.clone());
                    }
                    parts.push(ev);
                    cparts.push((c.name.clone(), cv));
                }
                if ct == emu::ChangeType::Update && whole {
                    changed_top.push(pos);
                }
                let rec = FieldValue::Record(cparts);
                field_values.insert(name.clone(), rec.clone());
                all.push((name.clone(), rec));
                values.push(emu::FieldValue::Record(parts));
            }
        }
    }
    let bits = |top: &[usize], nested: &[(usize, usize)]| {
        let mut b = emu_bitmap::FieldBits {
            top: top.to_vec(),
            ..Default::default()
        };
        for &(p, k) in nested {
            b.nested.entry(p).or_default().push(k);
        }
        emu_bitmap::encode(&b)
    };
    let path = |pos: usize, sub: Option<usize>| {
        let f = &schema.fields[pos];
        match (f, sub) {
            (
                TopField::Compound {
                    name, components, ..
                },
                Some(k),
            ) => format!("{name}.{}", components[k].name),
            _ => f.name().to_string(),
        }
    };
    let mut changed_paths: Vec<String> = changed_top.iter().map(|&p| path(p, None)).collect();
    changed_paths.extend(changed_nested.iter().map(|&(p, k)| path(p, Some(k))));
    let mut nulled_paths: Vec<String> = nulled_top.iter().map(|&p| path(p, None)).collect();
    nulled_paths.extend(nulled_nested.iter().map(|&(p, k)| path(p, Some(k))));
    let is_update = ct == emu::ChangeType::Update;
    let header = emu::ChangeEventHeader {
        entity_name: schema.entity.clone(),
        record_ids: vec!["001000000000001AAA".into(), "001000000000002AAA".into()],
        change_type: ct,
        change_origin: "com/salesforce/api/rest/66.0;client=prop".into(),
        transaction_key: format!("tx-{}", rng.next()),
        sequence_number: rng.below(1000) as i32 + 1,
        commit_timestamp: 1_700_000_000_000 + rng.below(1 << 30) as i64,
        commit_number: rng.next() as i64 & i64::MAX,
        commit_user: "005000000000001AAA".into(),
        nulled_fields: if is_update {
            bits(&nulled_top, &nulled_nested)
        } else {
            vec![]
        },
        diff_fields: vec![],
        changed_fields: if is_update {
            bits(&changed_top, &changed_nested)
        } else {
            vec![]
        },
    };
    let expected = match ct {
        emu::ChangeType::Create | emu::ChangeType::Undelete => all,
        emu::ChangeType::Update => {
            let mut out: Vec<(String, FieldValue)> = Vec::new();
            for p in &changed_paths {
                out.push((p.clone(), field_values[p].clone()));
            }
            for p in &nulled_paths {
                out.push((p.clone(), FieldValue::Null));
            }
            out
        }
        _ => vec![],
    };
    let (changed_paths, nulled_paths) = if is_update {
        (changed_paths, nulled_paths)
    } else {
        (vec![], vec![])
    };
    (
        emu::ChangeEvent { header, values },
        expected,
        changed_paths,
        nulled_paths,
    )
}

const CHANGE_TYPES: [emu::ChangeType; 6] = [
    emu::ChangeType::Create,
    emu::ChangeType::Update,
    emu::ChangeType::Delete,
    emu::ChangeType::Undelete,
    emu::ChangeType::GapUpdate,
    emu::ChangeType::GapOverflow,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn emulator_encoded_changes_decode_to_the_original(
        object in prop_oneof![Just("Account"), Just("Contact"), Just("Case"), Just("Opportunity")],
        ct in 0usize..CHANGE_TYPES.len(),
        seed in 1u64..u64::MAX,
    ) {
        let schema = demo_schema(object);
        let ct = CHANGE_TYPES[ct];
        let mut rng = Rng(seed);
        let (event, expected, changed, nulled) = random_event(&schema, ct, &mut rng);
        let payload = emu::encode_event(&schema, &event).expect("emulator encodes");
        let ours = ChangeSchema::parse(&schema.id, &schema.json).expect("compiles");
        let replay = ReplayId::from_bytes(vec![0, 0, 0, 0, 0, 0, 1, 2]);
        let change = ours.decode(&payload, replay.clone()).expect("decodes");
        let h = &change.header;
        prop_assert_eq!(&h.entity_name, &event.header.entity_name);
        prop_assert_eq!(&h.record_ids, &event.header.record_ids);
        prop_assert_eq!(h.change_type.map(|t| t.as_str()), Some(ct.symbol()));
        prop_assert_eq!(&h.change_origin, &event.header.change_origin);
        prop_assert_eq!(&h.transaction_key, &event.header.transaction_key);
        prop_assert_eq!(h.sequence_number, event.header.sequence_number);
        prop_assert_eq!(h.commit_timestamp, event.header.commit_timestamp);
        prop_assert_eq!(h.commit_number, event.header.commit_number);
        prop_assert_eq!(&h.commit_user, &event.header.commit_user);
        prop_assert_eq!(&h.changed_fields, &changed);
        prop_assert_eq!(&h.nulled_fields, &nulled);
        prop_assert_eq!(&change.schema_id, &schema.id);
        prop_assert_eq!(&change.replay_id, &replay);
        prop_assert_eq!(&change.fields, &expected);
        prop_assert_eq!(change.event_keys().len(), 2);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// `decode_header` accepts and rejects exactly what `decode` does (with the same error),
    /// and yields the same change without its values — on valid events and on damaged ones
    /// (bytes flipped, cut short, extended).
    #[test]
    fn header_decode_agrees_with_the_full_decode(
        object in prop_oneof![Just("Account"), Just("Contact"), Just("Case"), Just("Opportunity")],
        ct in 0usize..CHANGE_TYPES.len(),
        seed in 1u64..u64::MAX,
        damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        tail in proptest::collection::vec(any::<u8>(), 0..3),
    ) {
        let schema = demo_schema(object);
        let mut rng = Rng(seed);
        let (event, ..) = random_event(&schema, CHANGE_TYPES[ct], &mut rng);
        let mut payload = emu::encode_event(&schema, &event).expect("emulator encodes");
        for (at, byte) in &damage {
            let i = at.index(payload.len());
            payload[i] ^= *byte;
        }
        if let Some(at) = cut {
            payload.truncate(at.index(payload.len() + 1));
        }
        payload.extend_from_slice(&tail);
        let ours = ChangeSchema::parse(&schema.id, &schema.json).expect("compiles");
        let replay = ReplayId::from_bytes(vec![0, 0, 0, 0, 0, 0, 3, 4]);
        let full = ours.decode(&payload, replay.clone());
        let header = ours.decode_header(&payload, replay);
        match (full, header) {
            (Ok(mut f), Ok(h)) => {
                prop_assert!(h.fields.is_empty());
                f.fields.clear();
                prop_assert_eq!(f, h);
            }
            (Err(f), Err(h)) => prop_assert_eq!(f.to_string(), h.to_string()),
            (f, h) => prop_assert!(false, "full decode {:?}, header decode {:?}", f.is_ok(), h.is_ok()),
        }
    }
}

// ------------------------------------------------------------------------------ golden vectors

/// The fact sheet's worked-example layout: 0 header, 4 BillingAddress, 6 Phone, 7 Fax,
/// 30 LastModifiedDate, other positions plain strings.
fn worked_schema_json() -> String {
    let org = sfsync_org::Schema::demo();
    let account = emu::schema_for(org.object("Account").unwrap());
    let header: Json = serde_json::from_str::<Json>(&account.json).unwrap()["fields"][0].clone();
    let mut fields = vec![header];
    for pos in 1..31 {
        let f = match pos {
            4 => {
                json!({"name": "BillingAddress", "type": ["null", {"type": "record", "name": "Address", "fields": [
                {"name": "Street", "type": ["null", "string"]}, {"name": "City", "type": ["null", "string"]},
                {"name": "State", "type": ["null", "string"]}, {"name": "PostalCode", "type": ["null", "string"]},
                {"name": "Country", "type": ["null", "string"]}, {"name": "Latitude", "type": ["null", "double"]},
                {"name": "Longitude", "type": ["null", "double"]}, {"name": "GeocodeAccuracy", "type": ["null", "string"]}]}],
                "default": null})
            }
            5 => json!({"name": "ShippingAddress", "type": ["null", "Address"], "default": null}),
            6 => json!({"name": "Phone", "type": ["null", "string"], "default": null}),
            7 => json!({"name": "Fax", "type": ["null", "string"], "default": null}),
            30 => json!({"name": "LastModifiedDate", "type": ["null", "long"], "default": null}),
            p => json!({"name": format!("F{p}"), "type": ["null", "string"], "default": null}),
        };
        fields.push(f);
    }
    json!({"type": "record", "name": "AccountChangeEvent", "namespace": "com.sforce.eventbus", "fields": fields}).to_string()
}

#[test]
fn worked_example_decodes_to_paths_and_values() {
    let json = worked_schema_json();
    let avro = apache_avro::Schema::parse_str(&json).unwrap();
    let some = |v: Avro| Avro::Union(1, Box::new(v));
    let none = || Avro::Union(0, Box::new(Avro::Null));
    let strs = |v: &[&str]| Avro::Array(v.iter().map(|s| Avro::String(s.to_string())).collect());
    let header = Avro::Record(vec![
        ("entityName".into(), Avro::String("Account".into())),
        ("recordIds".into(), strs(&["001000000000001AAA"])),
        ("changeType".into(), Avro::Enum(1, "UPDATE".into())),
        ("changeOrigin".into(), Avro::String(String::new())),
        (
            "transactionKey".into(),
            Avro::String("0000654a-b07c-5852-d65f-47dc5ecd631d".into()),
        ),
        ("sequenceNumber".into(), Avro::Int(1)),
        ("commitTimestamp".into(), Avro::Long(1_700_000_000_000)),
        ("commitNumber".into(), Avro::Long(1_100_583_868_458)),
        (
            "commitUser".into(),
            Avro::String("005000000000001AAA".into()),
        ),
        ("nulledFields".into(), strs(&[])),
        ("diffFields".into(), strs(&[])),
        ("changedFields".into(), strs(&["0x400000C0", "4-0x0A"])),
    ]);
    let mut rec = vec![("ChangeEventHeader".to_string(), header)];
    for pos in 1..31 {
        let (name, v) = match pos {
            4 => (
                "BillingAddress".to_string(),
                some(Avro::Record(vec![
                    ("Street".into(), none()),
                    ("City".into(), some(Avro::String("Paris".into()))),
                    ("State".into(), none()),
                    ("PostalCode".into(), some(Avro::String("75001".into()))),
                    ("Country".into(), none()),
                    ("Latitude".into(), none()),
                    ("Longitude".into(), none()),
                    ("GeocodeAccuracy".into(), none()),
                ])),
            ),
            5 => ("ShippingAddress".to_string(), none()),
            6 => ("Phone".to_string(), some(Avro::String("+33 1".into()))),
            7 => ("Fax".to_string(), some(Avro::String("+33 2".into()))),
            30 => (
                "LastModifiedDate".to_string(),
                some(Avro::Long(1_700_000_000_000)),
            ),
            p => (format!("F{p}"), none()),
        };
        rec.push((name, v));
    }
    let payload = encode_datum(&avro, Avro::Record(rec)).unwrap();
    let schema = ChangeSchema::parse("worked", &json).unwrap();
    let c = schema
        .decode(&payload, ReplayId::from_bytes(vec![1]))
        .unwrap();
    assert_eq!(c.header.change_type, Some(ChangeType::Update));
    assert_eq!(
        c.header.changed_fields,
        [
            "Phone",
            "Fax",
            "LastModifiedDate",
            "BillingAddress.City",
            "BillingAddress.PostalCode"
        ]
    );
    let s = |v: &str| FieldValue::String(v.into());
    assert_eq!(
        c.fields,
        vec![
            ("Phone".to_string(), s("+33 1")),
            ("Fax".to_string(), s("+33 2")),
            (
                "LastModifiedDate".to_string(),
                FieldValue::Long(1_700_000_000_000)
            ),
            ("BillingAddress.City".to_string(), s("Paris")),
            ("BillingAddress.PostalCode".to_string(), s("75001")),
        ]
    );
    assert_eq!(c.field("BillingAddress.City"), Some(&s("Paris")));
    assert_eq!(
        c.event_keys()[0].as_str(),
        "0000654a-b07c-5852-d65f-47dc5ecd631d/1/001000000000001AAA"
    );

    // Bad payloads: every truncation, a bad union index, a malformed bitmap.
    for cut in 0..payload.len() {
        assert!(
            schema.decode(&payload[..cut], ReplayId::default()).is_err(),
            "cut at {cut}"
        );
    }
    let mut bad = payload.clone();
    let last = bad.len() - 7; // LastModifiedDate's union index (long 1.7e12 takes 6 bytes)
    bad[last] = 8;
    match schema.decode(&bad, ReplayId::default()) {
        Err(DecodeError::BadUnionIndex { path, index: 4, .. }) => {
            assert_eq!(path, "LastModifiedDate")
        }
        other => panic!("expected a bad union index, got {other:?}"),
    }
}

#[test]
fn malformed_bitmap_is_a_typed_error() {
    let schema = demo_schema("Account");
    let scalar = schema
        .fields
        .iter()
        .position(|f| matches!(f, TopField::Scalar { .. }))
        .unwrap();
    let mut rng = Rng(7);
    let (mut event, ..) = random_event(&schema, emu::ChangeType::Update, &mut rng);
    let past_the_end = format!("0x1{}", "0".repeat(80));
    for bad in [
        vec!["0xZZ".to_string()],
        vec![past_the_end],
        vec![format!("{scalar}-0x01")],
        vec!["Nope".to_string()],
    ] {
        event.header.changed_fields = bad.clone();
        let payload = emu::encode_event(&schema, &event).unwrap();
        let ours = ChangeSchema::parse(&schema.id, &schema.json).unwrap();
        match ours.decode(&payload, ReplayId::default()) {
            Err(DecodeError::Bitmap {
                field: "changedFields",
                ..
            }) => {}
            other => panic!("{bad:?}: expected a bitmap error, got {other:?}"),
        }
    }
}

#[test]
fn diff_fields_carry_the_patch_and_its_hash() {
    let schema = demo_schema("Case");
    let pos = schema
        .fields
        .iter()
        .position(|f| f.name() == "Description")
        .expect("Case has a Description");
    let old: String = (0..60)
        .map(|i| format!("line {i} of the case description\n"))
        .collect();
    let new = old.replace("line 30 of", "line thirty of");
    let patch = emu::diff::text_diff(&old, &new).expect("a diff is worth it");
    let mut values = vec![emu::FieldValue::Null; schema.fields.len() - 1];
    values[pos - 1] = emu::FieldValue::String(patch.clone());
    let bits = emu_bitmap::encode(&emu_bitmap::FieldBits {
        top: vec![pos],
        ..Default::default()
    });
    let header = emu::ChangeEventHeader {
        entity_name: "Case".into(),
        record_ids: vec!["500000000000001AAA".into()],
        change_type: emu::ChangeType::Update,
        change_origin: String::new(),
        transaction_key: "t".into(),
        sequence_number: 1,
        commit_timestamp: 1,
        commit_number: 1,
        commit_user: "005000000000001AAA".into(),
        nulled_fields: vec![],
        diff_fields: bits.clone(),
        changed_fields: bits,
    };
    let payload = emu::encode_event(&schema, &emu::ChangeEvent { header, values }).unwrap();
    let ours = ChangeSchema::parse(&schema.id, &schema.json).unwrap();
    let c = ours.decode(&payload, ReplayId::default()).unwrap();
    assert_eq!(c.header.diff_fields, ["Description"]);
    let Some(FieldValue::Diff { patch: p, sha256 }) = c.field("Description") else {
        panic!("expected a diff, got {:?}", c.fields);
    };
    assert_eq!(p, &patch);
    assert_eq!(sha256, &sfsync_salesforce::pubsub::diff::sha256_hex(&new));
    assert_eq!(
        sfsync_salesforce::pubsub::diff::apply(&old, p),
        sfsync_salesforce::pubsub::DiffOutcome::Applied(new.clone())
    );
    let stale = old.replace("line 31 of", "line 31 (stale) of");
    assert!(matches!(
        sfsync_salesforce::pubsub::diff::apply(&stale, p),
        sfsync_salesforce::pubsub::DiffOutcome::NeedsReread { .. }
    ));
}
