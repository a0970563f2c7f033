//! Describe metadata JSON generated from the schema: global describe (`/sobjects`) and object
//! describe (`/sobjects/X/describe`), with the keys real clients read. Everything is derived from
//! the same [`Schema`] the org validates against, so describe and behaviour never disagree:
//! `createable`/`updateable`/`nillable` match what DML accepts, `childRelationships` are computed
//! from the reference fields of every object.

use serde_json::{json, Map, Value};

use crate::value::max_length;
use crate::{FieldDef, FieldType, ObjectDef, Schema};

fn urls(o: &ObjectDef, v: &str) -> Value {
    let base = format!("/services/data/v{v}/sobjects/{}", o.name);
    json!({
        "compactLayouts": format!("{base}/describe/compactLayouts"),
        "rowTemplate": format!("{base}/{{ID}}"),
        "approvalLayouts": format!("{base}/describe/approvalLayouts"),
        "defaultValues": format!("{base}/defaultValues?recordTypeId&fields"),
        "listviews": format!("{base}/listviews"),
        "describe": format!("{base}/describe"),
        "quickActions": format!("{base}/quickActions"),
        "layouts": format!("{base}/describe/layouts"),
        "sobject": base,
    })
}

fn is_user(o: &ObjectDef) -> bool {
    o.name == "User"
}

/// The object-level flags shared by global and object describe.
fn object_flags(o: &ObjectDef, v: &str) -> Map<String, Value> {
    let user = is_user(o);
    let mut m = Map::new();
    m.insert("activateable".into(), json!(false));
    m.insert("associateEntityType".into(), Value::Null);
    m.insert("associateParentEntity".into(), Value::Null);
    m.insert("createable".into(), json!(true));
    m.insert("custom".into(), json!(o.custom));
    m.insert("customSetting".into(), json!(false));
    m.insert("deepCloneable".into(), json!(false));
    m.insert("deletable".into(), json!(!user));
    m.insert("deprecatedAndHidden".into(), json!(false));
    m.insert("feedEnabled".into(), json!(!o.custom));
    m.insert("hasSubtypes".into(), json!(false));
    m.insert("isInterface".into(), json!(false));
    m.insert("isSubtype".into(), json!(false));
    m.insert("keyPrefix".into(), json!(o.key_prefix));
    m.insert("label".into(), json!(o.label));
    m.insert("labelPlural".into(), json!(o.label_plural));
    m.insert("layoutable".into(), json!(true));
    m.insert(
        "mergeable".into(),
        json!(matches!(o.name.as_str(), "Account" | "Contact" | "Lead")),
    );
    m.insert("mruEnabled".into(), json!(true));
    m.insert("name".into(), json!(o.name));
    m.insert("queryable".into(), json!(true));
    m.insert("replicateable".into(), json!(true));
    m.insert("retrieveable".into(), json!(true));
    m.insert("searchable".into(), json!(true));
    m.insert("triggerable".into(), json!(true));
    m.insert("undeletable".into(), json!(!user));
    m.insert("updateable".into(), json!(true));
    m.insert("urls".into(), urls(o, v));
    m
}

/// `GET /services/data/vNN.N/sobjects/` body.
pub fn global(schema: &Schema, api_version: &str) -> serde_json::Value {
    let sobjects: Vec<Value> = schema
        .objects
        .iter()
        .map(|o| {
            let mut m = object_flags(o, api_version);
            if let Some(Value::Object(u)) = m.get_mut("urls") {
                u.retain(|k, _| matches!(k.as_str(), "sobject" | "describe" | "rowTemplate"));
            }
            Value::Object(m)
        })
        .collect();
    json!({
        "encoding": "UTF-8",
        "maxBatchSize": 200,
        "sobjects": sobjects,
    })
}

fn soap_type(f: &FieldDef) -> &'static str {
    match f.field_type {
        FieldType::Id | FieldType::Reference => "tns:ID",
        FieldType::Boolean => "xsd:boolean",
        FieldType::Int => "xsd:int",
        FieldType::Double | FieldType::Currency | FieldType::Percent => "xsd:double",
        FieldType::Date => "xsd:date",
        FieldType::Datetime => "xsd:dateTime",
        FieldType::Address => "urn:address",
        FieldType::Location => "urn:location",
        _ => "xsd:string",
    }
}

fn is_text(t: FieldType) -> bool {
    matches!(
        t,
        FieldType::Id
            | FieldType::String
            | FieldType::Textarea
            | FieldType::Picklist
            | FieldType::Multipicklist
            | FieldType::Reference
            | FieldType::Email
            | FieldType::Phone
            | FieldType::Url
    )
}

/// One entry of `fields[]` in object describe.
pub fn field(o: &ObjectDef, f: &FieldDef) -> Value {
    let t = f.field_type;
    let compound = o.is_compound(&f.name);
    let calculated = f.formula.is_some();
    let text = is_text(t);
    let length = if text { max_length(f) } else { 0 };
    let long_text = t == FieldType::Textarea && length > 255;
    let numeric = matches!(
        t,
        FieldType::Double | FieldType::Currency | FieldType::Percent
    );
    let system = crate::schema::SYSTEM_FIELDS.contains(&f.name.as_str());
    let name_field = f.name == "Name";
    let defaulted_on_create = system
        || f.name == "OwnerId"
        || f.name == "CaseNumber"
        || t == FieldType::Boolean
        || f.default_value.is_some();
    let default_picklist = f.default_value.as_ref().and_then(Value::as_str);
    let picklist: Vec<Value> = f
        .picklist_values
        .iter()
        .map(|p| {
            json!({
                "active": true,
                "defaultValue": default_picklist == Some(p.as_str()),
                "label": p,
                "validFor": null,
                "value": p,
            })
        })
        .collect();
    let filterable = !compound && !long_text;
    let sortable = filterable && t != FieldType::Multipicklist;
    let groupable = sortable
        && !matches!(
            t,
            FieldType::Double | FieldType::Currency | FieldType::Percent | FieldType::Datetime
        )
        && !(t == FieldType::Textarea);
    let reference_to: Vec<&String> = f.reference_to.iter().collect();
    let id_lookup = f.name == "Id"
        || f.external_id
        || (f.unique && text)
        || (is_user(o) && f.name == "Username");
    let nillable = if t == FieldType::Boolean || f.name == "Id" {
        false
    } else if calculated || compound {
        true
    } else {
        f.nillable && !f.required
    };
    let mut m = Map::new();
    m.insert(
        "aggregatable".into(),
        json!(filterable && t != FieldType::Textarea),
    );
    m.insert("aiPredictionField".into(), json!(false));
    m.insert("autoNumber".into(), json!(f.name == "CaseNumber"));
    m.insert(
        "byteLength".into(),
        json!(if text { length * 3 } else { 0 }),
    );
    m.insert("calculated".into(), json!(calculated));
    m.insert(
        "calculatedFormula".into(),
        f.formula
            .as_ref()
            .map(|x| json!(x.text))
            .unwrap_or(Value::Null),
    );
    m.insert("cascadeDelete".into(), json!(false));
    m.insert("caseSensitive".into(), json!(false));
    m.insert("compoundFieldName".into(), json!(f.compound_field_name));
    m.insert("controllerName".into(), Value::Null);
    m.insert(
        "createable".into(),
        json!(f.createable && !compound && !calculated),
    );
    m.insert("custom".into(), json!(f.custom));
    m.insert(
        "defaultValue".into(),
        match (&f.default_value, t) {
            (Some(v), FieldType::Boolean) => v.clone(),
            (None, FieldType::Boolean) => json!(false),
            _ => Value::Null,
        },
    );
    m.insert("defaultValueFormula".into(), Value::Null);
    m.insert("defaultedOnCreate".into(), json!(defaulted_on_create));
    m.insert("dependentPicklist".into(), json!(false));
    m.insert("deprecatedAndHidden".into(), json!(false));
    m.insert(
        "digits".into(),
        json!(if t == FieldType::Int {
            f.precision.max(9)
        } else {
            0
        }),
    );
    m.insert("displayLocationInDecimal".into(), json!(false));
    m.insert("encrypted".into(), json!(false));
    m.insert("externalId".into(), json!(f.external_id));
    m.insert(
        "extraTypeInfo".into(),
        match t {
            FieldType::Textarea => json!("plaintextarea"),
            _ => Value::Null,
        },
    );
    m.insert("filterable".into(), json!(filterable));
    m.insert("filteredLookupInfo".into(), Value::Null);
    m.insert("formulaTreatNullNumberAsZero".into(), json!(false));
    m.insert("groupable".into(), json!(groupable));
    m.insert("highScaleNumber".into(), json!(false));
    m.insert("htmlFormatted".into(), json!(false));
    m.insert("idLookup".into(), json!(id_lookup));
    m.insert("inlineHelpText".into(), Value::Null);
    m.insert("label".into(), json!(f.label));
    m.insert("length".into(), json!(length));
    m.insert("mask".into(), Value::Null);
    m.insert("maskType".into(), Value::Null);
    m.insert("name".into(), json!(f.name));
    m.insert("nameField".into(), json!(name_field));
    m.insert("namePointing".into(), json!(false));
    m.insert("nillable".into(), json!(nillable));
    m.insert(
        "permissionable".into(),
        json!(nillable && !system && !calculated),
    );
    m.insert("picklistValues".into(), Value::Array(picklist));
    m.insert("polymorphicForeignKey".into(), json!(false));
    m.insert(
        "precision".into(),
        json!(if numeric { f.precision } else { 0 }),
    );
    m.insert("queryByDistance".into(), json!(false));
    m.insert("referenceTargetField".into(), Value::Null);
    m.insert("referenceTo".into(), json!(reference_to));
    m.insert("relationshipName".into(), json!(f.relationship_name));
    m.insert("relationshipOrder".into(), Value::Null);
    m.insert("restrictedDelete".into(), json!(false));
    m.insert("restrictedPicklist".into(), json!(f.restricted_picklist));
    m.insert("scale".into(), json!(if numeric { f.scale } else { 0 }));
    m.insert(
        "searchPrefilterable".into(),
        json!(t == FieldType::Reference),
    );
    m.insert("soapType".into(), json!(soap_type(f)));
    m.insert("sortable".into(), json!(sortable));
    m.insert("type".into(), json!(t.as_str()));
    m.insert("unique".into(), json!(f.unique));
    m.insert(
        "updateable".into(),
        json!(f.updateable && !compound && !calculated),
    );
    m.insert("writeRequiresMasterRead".into(), json!(false));
    Value::Object(m)
}

/// `GET /services/data/vNN.N/sobjects/X/describe` body.
pub fn object(object: &ObjectDef, schema: &Schema, api_version: &str) -> serde_json::Value {
    let mut m = object_flags(object, api_version);
    let mut children = Vec::new();
    for o in &schema.objects {
        for f in &o.fields {
            if f.field_type == FieldType::Reference
                && f.reference_to
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(&object.name))
            {
                let rel = if o.custom || f.custom {
                    format!("{}s__r", o.name.trim_end_matches("__c"))
                } else if o.name == object.name {
                    format!("Child{}", o.label_plural.replace(' ', ""))
                } else {
                    o.label_plural.replace(' ', "")
                };
                let system =
                    crate::schema::SYSTEM_FIELDS.contains(&f.name.as_str()) || f.name == "OwnerId";
                children.push(json!({
                    "cascadeDelete": false,
                    "childSObject": o.name,
                    "deprecatedAndHidden": false,
                    "field": f.name,
                    "junctionIdListNames": [],
                    "junctionReferenceTo": [],
                    "relationshipName": if system { Value::Null } else { json!(rel) },
                    "restrictedDelete": false,
                }));
            }
        }
    }
    m.insert("actionOverrides".into(), json!([]));
    m.insert("childRelationships".into(), Value::Array(children));
    m.insert("compactLayoutable".into(), json!(true));
    m.insert("defaultImplementation".into(), Value::Null);
    m.insert("extendedBy".into(), Value::Null);
    m.insert("extendsInterfaces".into(), Value::Null);
    m.insert(
        "fields".into(),
        Value::Array(object.fields.iter().map(|f| field(object, f)).collect()),
    );
    m.insert("implementedBy".into(), Value::Null);
    m.insert("implementsInterfaces".into(), Value::Null);
    m.insert("listviewable".into(), Value::Null);
    m.insert("lookupLayoutable".into(), Value::Null);
    m.insert("namedLayoutInfos".into(), json!([]));
    m.insert("networkScopeFieldName".into(), Value::Null);
    m.insert(
        "recordTypeInfos".into(),
        json!([{
            "active": true,
            "available": true,
            "defaultRecordTypeMapping": true,
            "developerName": "Master",
            "master": true,
            "name": "Master",
            "recordTypeId": "012000000000000AAA",
            "urls": { "layout": format!("/services/data/v{api_version}/sobjects/{}/describe/layouts/012000000000000AAA", object.name) },
        }]),
    );
    m.insert("searchLayoutable".into(), json!(true));
    m.insert("sobjectDescribeOption".into(), json!("FULL"));
    m.insert(
        "supportedScopes".into(),
        json!([
            {"label": "All accounts", "name": "everything"},
            {"label": "My accounts", "name": "mine"},
            {"label": "My team's accounts", "name": "team"},
        ]),
    );
    Value::Object(m)
}

/// `GET /services/data/vNN.N/sobjects/X` (basic info) body: `{objectDescribe, recentItems}`.
pub fn basic(object: &ObjectDef, api_version: &str) -> serde_json::Value {
    let mut m = object_flags(object, api_version);
    if let Some(Value::Object(u)) = m.get_mut("urls") {
        u.retain(|k, _| matches!(k.as_str(), "sobject" | "describe" | "rowTemplate"));
    }
    json!({
        "objectDescribe": Value::Object(m),
        "recentItems": [],
    })
}
