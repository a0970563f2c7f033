//! Avro schemas of change events and platform events, generated from the org's object
//! definitions (the same metadata describe serves).
//!
//! Guarantee: a schema is a pure function of the object definition — the same fields in the same
//! describe order always give the same JSON and the same 22-character schema id (base64url of the
//! first 16 bytes of SHA-256 of that JSON), and any added field gives a new id. Layout follows
//! Salesforce: field 0 is `ChangeEventHeader`; then one nullable union (`["null", T]`, default
//! null) per record field in describe order, without `Id`, `IsDeleted`, `SystemModstamp` and
//! formula fields; compound fields (Address, person Name, geolocation) are nested records at the
//! position of their first component.
//!
//! Avro types: text/id/reference/picklist → `string`; boolean → `boolean`; int → `int`;
//! double/currency/percent → `double`; **datetime → `long` epoch milliseconds** (doc
//! `Data:DateTime`); **date → `int` days since 1970-01-01** (doc `Data:Date`).

use apache_avro::Schema as AvroSchema;
use base64::Engine;
use serde_json::{json, Value};
use sfsync_org::{FieldDef, FieldType, ObjectDef};
use sha2::{Digest, Sha256};

use super::avro_writer::{EncodePlan, FieldNames};

/// The change types of the `ChangeType` enum, in symbol order.
pub const CHANGE_TYPES: [&str; 9] = [
    "CREATE",
    "UPDATE",
    "DELETE",
    "UNDELETE",
    "GAP_CREATE",
    "GAP_UPDATE",
    "GAP_DELETE",
    "GAP_UNDELETE",
    "GAP_OVERFLOW",
];

/// The Avro namespace of every event schema.
pub const NAMESPACE: &str = "com.sforce.eventbus";

/// The primitive Avro type of one (nullable) field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AvroKind {
    String,
    Boolean,
    Int,
    Long,
    Double,
    /// `int`: days since 1970-01-01.
    Date,
    /// `long`: epoch milliseconds.
    DateTime,
}

impl AvroKind {
    fn avro(self) -> &'static str {
        match self {
            AvroKind::String => "string",
            AvroKind::Boolean => "boolean",
            AvroKind::Int | AvroKind::Date => "int",
            AvroKind::Long | AvroKind::DateTime => "long",
            AvroKind::Double => "double",
        }
    }

    /// The Avro kind of an org field type.
    pub fn of(t: FieldType) -> AvroKind {
        match t {
            FieldType::Boolean => AvroKind::Boolean,
            FieldType::Int => AvroKind::Int,
            FieldType::Double | FieldType::Currency | FieldType::Percent => AvroKind::Double,
            FieldType::Date => AvroKind::Date,
            FieldType::Datetime => AvroKind::DateTime,
            _ => AvroKind::String,
        }
    }

    /// Parses the type name used by the platform-event admin API.
    pub fn parse(s: &str) -> Option<AvroKind> {
        Some(match s.to_ascii_lowercase().as_str() {
            "string" | "text" | "textarea" | "id" | "reference" | "picklist" | "email"
            | "phone" | "url" => AvroKind::String,
            "boolean" | "checkbox" => AvroKind::Boolean,
            "int" => AvroKind::Int,
            "long" => AvroKind::Long,
            "double" | "number" | "currency" | "percent" => AvroKind::Double,
            "date" => AvroKind::Date,
            "datetime" => AvroKind::DateTime,
            _ => return None,
        })
    }
}

/// One component of a compound field.
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    /// Name inside the nested record (`City`).
    pub name: String,
    /// The org field it carries (`BillingCity`).
    pub field: String,
    pub kind: AvroKind,
}

/// One top-level field of an event schema (position = index in [`CdcSchema::fields`]).
#[derive(Debug, Clone, PartialEq)]
pub enum TopField {
    /// Position 0.
    Header,
    Scalar {
        /// Avro field name = org field name.
        name: String,
        kind: AvroKind,
    },
    /// A non-nullable field (platform events' `CreatedDate` and `CreatedById`).
    Required { name: String, kind: AvroKind },
    Compound {
        /// `BillingAddress`, `Name`.
        name: String,
        /// Avro record name (`Address`, `Name`, …).
        record: String,
        components: Vec<Component>,
    },
}

impl TopField {
    pub fn name(&self) -> &str {
        match self {
            TopField::Header => "ChangeEventHeader",
            TopField::Scalar { name, .. }
            | TopField::Required { name, .. }
            | TopField::Compound { name, .. } => name,
        }
    }
}

/// A generated event schema.
#[derive(Debug, Clone)]
pub struct CdcSchema {
    /// 22-char base64url fingerprint of `json`.
    pub id: String,
    /// The exact JSON served by GetSchema and used to write payloads.
    pub json: String,
    pub avro: AvroSchema,
    /// Object (`Account`) or platform event (`Record_Applied__e`) name.
    pub entity: String,
    /// Top-level layout; for change events index 0 is the header.
    pub fields: Vec<TopField>,
    /// The compiled Avro writer of the body (built once from `fields`).
    pub plan: EncodePlan,
}

impl FieldNames for CdcSchema {
    fn entity(&self) -> &str {
        &self.entity
    }

    fn top(&self, position: usize) -> &TopField {
        &self.fields[position]
    }
}

impl CdcSchema {
    /// Top-level position of a field or compound (exact name).
    pub fn position(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name() == name)
    }

    /// Where an org field lands: `(top position, Some(component index))` for compound
    /// components, `(top position, None)` for plain fields; `None` when not in events.
    pub fn locate(&self, field: &str) -> Option<(usize, Option<usize>)> {
        for (i, f) in self.fields.iter().enumerate() {
            match f {
                TopField::Scalar { name, .. } if name == field => return Some((i, None)),
                TopField::Compound { components, .. } => {
                    if let Some(c) = components.iter().position(|c| c.field == field) {
                        return Some((i, Some(c)));
                    }
                }
                _ => {}
            }
        }
        None
    }
}

/// Fingerprint of a schema JSON: base64url (no padding) of the first 16 bytes of SHA-256.
pub fn schema_id(json: &str) -> String {
    let d = Sha256::digest(json.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&d[..16])
}

/// The Avro record name of an object's change event: `AccountChangeEvent`,
/// `Employee__ChangeEvent` for `Employee__c`.
pub fn event_name(object: &str) -> String {
    match object.strip_suffix("__c") {
        Some(base) => format!("{base}__ChangeEvent"),
        None => format!("{object}ChangeEvent"),
    }
}

/// The per-object channel: `/data/AccountChangeEvent`, `/data/Employee__ChangeEvent`.
pub fn channel_name(object: &str) -> String {
    format!("/data/{}", event_name(object))
}

fn header_json() -> Value {
    let arr = || json!({"type": "array", "items": "string"});
    json!({
        "type": "record",
        "name": "ChangeEventHeader",
        "namespace": NAMESPACE,
        "fields": [
            {"name": "entityName", "type": "string"},
            {"name": "recordIds", "type": arr()},
            {"name": "changeType", "type": {"type": "enum", "name": "ChangeType", "namespace": NAMESPACE, "symbols": CHANGE_TYPES}},
            {"name": "changeOrigin", "type": "string"},
            {"name": "transactionKey", "type": "string"},
            {"name": "sequenceNumber", "type": "int"},
            {"name": "commitTimestamp", "type": "long"},
            {"name": "commitNumber", "type": "long"},
            {"name": "commitUser", "type": "string"},
            {"name": "nulledFields", "type": arr()},
            {"name": "diffFields", "type": arr()},
            {"name": "changedFields", "type": arr()},
        ]
    })
}

fn is_excluded(f: &FieldDef) -> bool {
    f.is_formula() || matches!(f.name.as_str(), "Id" | "IsDeleted" | "SystemModstamp")
}

/// `doc` annotation in the style of Salesforce schemas.
fn field_doc(f: &FieldDef) -> String {
    let tag = match f.field_type {
        FieldType::Datetime => "DateTime",
        FieldType::Date => "Date",
        FieldType::Boolean => "Boolean",
        FieldType::Int => "Int",
        FieldType::Double => "Double",
        FieldType::Currency => "Currency",
        FieldType::Percent => "Percent",
        FieldType::Reference | FieldType::Id => "EntityId",
        FieldType::Picklist => "DynamicEnum",
        FieldType::Multipicklist => "MultiEnum",
        FieldType::Textarea => "Text",
        _ => "Text",
    };
    match f.name.as_str() {
        "CreatedDate" | "LastModifiedDate" => format!("{}:DateTime", f.name),
        "CreatedById" => "CreatedBy:EntityId".to_string(),
        "LastModifiedById" => "LastModifiedBy:EntityId".to_string(),
        "OwnerId" => "Owner:EntityId".to_string(),
        _ => format!("Data:{tag}"),
    }
}

/// Name of a component inside its compound record: `BillingCity` in `BillingAddress` → `City`,
/// `FirstName` in `Name` → `FirstName`, `Loc__Latitude__s` in `Loc__c` → `Latitude`.
fn component_name(compound: &str, field: &str) -> String {
    let prefix = compound
        .strip_suffix("Address")
        .or_else(|| compound.strip_suffix("__c").map(|_| ""))
        .unwrap_or("");
    let mut n = field.strip_prefix(prefix).unwrap_or(field);
    if let Some(base) = compound.strip_suffix("__c") {
        n = n
            .strip_prefix(&format!("{base}__"))
            .unwrap_or(n)
            .trim_end_matches("__s");
    }
    n.to_string()
}

/// Salesforce's component order for person names.
const NAME_ORDER: [&str; 5] = [
    "Salutation",
    "FirstName",
    "MiddleName",
    "LastName",
    "Suffix",
];

/// The top-level layout of an object's change event.
pub fn layout(object: &ObjectDef) -> Vec<TopField> {
    let mut out = vec![TopField::Header];
    let mut seen_compounds: Vec<String> = Vec::new();
    for f in &object.fields {
        if is_excluded(f) {
            continue;
        }
        let compound = match &f.compound_field_name {
            Some(c) if object.is_compound(c) => Some(c.clone()),
            _ if object.is_compound(&f.name) => Some(f.name.clone()),
            _ => None,
        };
        let Some(compound) = compound else {
            out.push(TopField::Scalar {
                name: f.name.clone(),
                kind: AvroKind::of(f.field_type),
            });
            continue;
        };
        if seen_compounds.contains(&compound) {
            continue;
        }
        seen_compounds.push(compound.clone());
        let ctype = object.field(&compound).map(|c| c.field_type);
        let mut components: Vec<Component> = object
            .components(&compound)
            .into_iter()
            .filter(|c| !c.is_formula())
            .map(|c| Component {
                name: component_name(&compound, &c.name),
                field: c.name.clone(),
                kind: AvroKind::of(c.field_type),
            })
            .collect();
        let record = match ctype {
            Some(FieldType::Address) => "Address".to_string(),
            Some(FieldType::Location) => "Location".to_string(),
            _ if compound == "Name" => {
                components.sort_by_key(|c| {
                    NAME_ORDER
                        .iter()
                        .position(|n| *n == c.name)
                        .unwrap_or(NAME_ORDER.len())
                });
                "Name".to_string()
            }
            _ => compound.trim_end_matches("__c").to_string(),
        };
        out.push(TopField::Compound {
            name: compound,
            record,
            components,
        });
    }
    out
}

fn nullable(kind: AvroKind) -> Value {
    json!(["null", kind.avro()])
}

/// The change-event schema of an object.
pub fn schema_for(object: &ObjectDef) -> CdcSchema {
    let fields = layout(object);
    let mut defined_records: Vec<String> = Vec::new();
    let mut jf = vec![
        json!({"name": "ChangeEventHeader", "type": header_json(), "doc": "Data:ChangeEventHeader"}),
    ];
    for f in &fields[1..] {
        match f {
            TopField::Header | TopField::Required { .. } => {}
            TopField::Scalar { name, kind } => {
                let doc = object.field(name).map(field_doc).unwrap_or_default();
                jf.push(
                    json!({"name": name, "type": nullable(*kind), "doc": doc, "default": null}),
                );
            }
            TopField::Compound {
                name,
                record,
                components,
            } => {
                let ty = if defined_records.contains(record) {
                    json!(["null", format!("{NAMESPACE}.{record}")])
                } else {
                    defined_records.push(record.clone());
                    let sub: Vec<Value> = components
                        .iter()
                        .map(|c| {
                            let doc = object.field(&c.field).map(field_doc).unwrap_or_default();
                            json!({"name": c.name, "type": nullable(c.kind), "doc": doc, "default": null})
                        })
                        .collect();
                    json!(["null", {"type": "record", "name": record, "namespace": NAMESPACE, "fields": sub}])
                };
                let doc = match record.as_str() {
                    "Address" => "Data:Address",
                    "Name" => "Data:PersonName",
                    _ => "Data:Compound",
                };
                jf.push(json!({"name": name, "type": ty, "doc": doc, "default": null}));
            }
        }
    }
    let v = json!({
        "type": "record",
        "name": event_name(&object.name),
        "namespace": NAMESPACE,
        "fields": jf,
    });
    finish(v, object.name.clone(), fields)
}

fn finish(v: Value, entity: String, fields: Vec<TopField>) -> CdcSchema {
    let json = serde_json::to_string(&v).expect("a JSON value serialises");
    let avro = AvroSchema::parse_str(&json)
        .unwrap_or_else(|e| panic!("generated schema for {entity} is not valid Avro: {e}"));
    CdcSchema {
        id: schema_id(&json),
        json,
        avro,
        entity,
        plan: EncodePlan::compile(&fields),
        fields,
    }
}

/// A platform-event field definition (admin API).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformField {
    pub name: String,
    #[serde(rename = "type")]
    pub field_type: String,
}

/// The schema of platform event `name` (`Record_Applied__e`): `CreatedDate` (long ms),
/// `CreatedById` (string), then the declared fields as nullable unions. Errors name the field.
pub fn platform_event_schema(name: &str, fields: &[PlatformField]) -> Result<CdcSchema, String> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && n.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
    };
    if !name.ends_with("__e") || !valid_name(name) {
        return Err(format!(
            "platform event name {name:?} must be an API name ending in __e"
        ));
    }
    let mut layout = vec![
        TopField::Required {
            name: "CreatedDate".into(),
            kind: AvroKind::DateTime,
        },
        TopField::Required {
            name: "CreatedById".into(),
            kind: AvroKind::String,
        },
    ];
    let mut jf = vec![
        json!({"name": "CreatedDate", "type": "long", "doc": "CreatedDate:DateTime"}),
        json!({"name": "CreatedById", "type": "string", "doc": "CreatedBy:EntityId"}),
    ];
    for f in fields {
        if !valid_name(&f.name) || layout.iter().any(|l| l.name() == f.name) {
            return Err(format!(
                "field {:?} of {name} is not a valid, unique API name",
                f.name
            ));
        }
        let kind = AvroKind::parse(&f.field_type).ok_or_else(|| {
            format!(
                "field {} of {name} has unknown type {:?} (string, boolean, int, long, double, date, datetime)",
                f.name, f.field_type
            )
        })?;
        let tag = match kind {
            AvroKind::String => "Text",
            AvroKind::Boolean => "Boolean",
            AvroKind::Int | AvroKind::Long => "Number",
            AvroKind::Double => "Double",
            AvroKind::Date => "Date",
            AvroKind::DateTime => "DateTime",
        };
        jf.push(json!({"name": f.name, "type": nullable(kind), "doc": format!("Data:{tag}"), "default": null}));
        layout.push(TopField::Scalar {
            name: f.name.clone(),
            kind,
        });
    }
    let v = json!({"type": "record", "name": name, "namespace": NAMESPACE, "fields": jf});
    Ok(finish(v, name.to_string(), layout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfsync_org::Schema;

    fn names(s: &CdcSchema) -> Vec<String> {
        s.fields.iter().map(|f| f.name().to_string()).collect()
    }

    #[test]
    fn account_layout_matches_the_fact_sheet_positions() {
        let schema = Schema::standard();
        let s = schema_for(schema.object("Account").unwrap());
        let n = names(&s);
        assert_eq!(
            &n[..8],
            &[
                "ChangeEventHeader",
                "Name",
                "Type",
                "ParentId",
                "BillingAddress",
                "ShippingAddress",
                "Phone",
                "Fax"
            ]
        );
        assert!(!n.iter().any(|f| f == "Id"
            || f == "IsDeleted"
            || f == "SystemModstamp"
            || f == "Revenue_Per_Employee__c"
            || f == "BillingCity"));
        assert_eq!(s.locate("BillingCity"), Some((4, Some(1))));
        assert_eq!(s.locate("BillingPostalCode"), Some((4, Some(3))));
        assert_eq!(s.id.len(), 22);
        assert!(s.json.starts_with(r#"{"type":"record","name":"AccountChangeEvent","namespace":"com.sforce.eventbus","fields":[{"name":"ChangeEventHeader","type":{"type":"record","name":"ChangeEventHeader""#));
        // The second address reuses the named record.
        assert!(s.json.contains(
            r#"{"name":"ShippingAddress","type":["null","com.sforce.eventbus.Address"]"#
        ));
        // Snapshot of the address record.
        assert!(s.json.contains(r#"{"name":"BillingAddress","type":["null",{"type":"record","name":"Address","namespace":"com.sforce.eventbus","fields":[{"name":"Street","type":["null","string"],"doc":"Data:Text","default":null},{"name":"City","type":["null","string"],"doc":"Data:Text","default":null},{"name":"State","type":["null","string"],"doc":"Data:Text","default":null},{"name":"PostalCode","type":["null","string"],"doc":"Data:Text","default":null},{"name":"Country","type":["null","string"],"doc":"Data:Text","default":null},{"name":"Latitude","type":["null","double"],"doc":"Data:Double","default":null},{"name":"Longitude","type":["null","double"],"doc":"Data:Double","default":null},{"name":"GeocodeAccuracy","type":["null","string"],"doc":"Data:DynamicEnum","default":null}]}],"doc":"Data:Address","default":null}"#), "{}", s.json);
        assert!(s.json.contains(r#"{"name":"CreatedDate","type":["null","long"],"doc":"CreatedDate:DateTime","default":null}"#));
        assert!(s.json.contains(r#"{"name":"CreatedById","type":["null","string"],"doc":"CreatedBy:EntityId","default":null}"#));
    }

    #[test]
    fn contact_name_is_a_nested_record_in_salesforce_order() {
        let schema = Schema::standard();
        let s = schema_for(schema.object("Contact").unwrap());
        match &s.fields[1] {
            TopField::Compound {
                name,
                record,
                components,
            } => {
                assert_eq!((name.as_str(), record.as_str()), ("Name", "Name"));
                let c: Vec<_> = components.iter().map(|c| c.name.as_str()).collect();
                assert_eq!(c, ["Salutation", "FirstName", "LastName"]);
            }
            other => panic!("position 1 is {other:?}"),
        }
        assert!(s
            .json
            .contains(r#""name":"Birthdate","type":["null","int"],"doc":"Data:Date""#));
        assert!(!s.json.contains("Full_Name__c"));
    }

    #[test]
    fn custom_object_names_and_ids_change_with_fields() {
        let schema = Schema::demo();
        let mut obj = schema.object("Service_Request__c").unwrap().clone();
        let a = schema_for(&obj);
        assert!(a.json.contains(r#""name":"Service_Request__ChangeEvent""#));
        assert_eq!(
            channel_name(&obj.name),
            "/data/Service_Request__ChangeEvent"
        );
        assert_eq!(schema_for(&obj).id, a.id, "deterministic");
        obj.fields
            .push(FieldDef::new("Extra__c", "Extra", FieldType::String));
        assert_ne!(schema_for(&obj).id, a.id);
    }

    #[test]
    fn every_demo_object_gives_valid_avro() {
        for o in &Schema::demo().objects {
            let s = schema_for(o);
            assert_eq!(s.id, schema_id(&s.json));
        }
    }

    #[test]
    fn platform_event_schema_validates_names() {
        let f = |n: &str, t: &str| PlatformField {
            name: n.into(),
            field_type: t.into(),
        };
        let s = platform_event_schema("Record_Applied__e", &[f("Record_Id__c", "string")]).unwrap();
        assert!(s.json.contains("Record_Id__c"));
        assert!(platform_event_schema("Bad", &[]).is_err());
        assert!(platform_event_schema("X__e", &[f("A__c", "blob")]).is_err());
    }
}
