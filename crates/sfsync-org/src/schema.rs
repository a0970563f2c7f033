//! Object and field metadata: the standard objects (Account, Contact, Lead, Opportunity, Case,
//! User), custom objects from a schema file, and the demo's public-sector objects. Describe JSON
//! is generated from these definitions (see `describe`), so what the org validates and what it
//! describes never disagree.

use serde::{Deserialize, Serialize};

/// Salesforce field types (describe `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Id,
    String,
    Textarea,
    Picklist,
    Multipicklist,
    Reference,
    Boolean,
    Int,
    Double,
    Currency,
    Percent,
    Date,
    Datetime,
    Email,
    Phone,
    Url,
    /// Compound address (BillingAddress); its components are separate fields with
    /// `compound_field_name` set.
    Address,
    /// Compound geolocation.
    Location,
}

impl FieldType {
    /// The describe `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Id => "id",
            FieldType::String => "string",
            FieldType::Textarea => "textarea",
            FieldType::Picklist => "picklist",
            FieldType::Multipicklist => "multipicklist",
            FieldType::Reference => "reference",
            FieldType::Boolean => "boolean",
            FieldType::Int => "int",
            FieldType::Double => "double",
            FieldType::Currency => "currency",
            FieldType::Percent => "percent",
            FieldType::Date => "date",
            FieldType::Datetime => "datetime",
            FieldType::Email => "email",
            FieldType::Phone => "phone",
            FieldType::Url => "url",
            FieldType::Address => "address",
            FieldType::Location => "location",
        }
    }
}

/// A formula (calculated) field's definition: a small expression language evaluated on read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Formula {
    /// The formula text as describe shows it in `calculatedFormula`.
    pub text: String,
}

/// One field of an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldDef {
    pub name: String,
    pub label: String,
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Max length for text types (0 for non-text).
    #[serde(default)]
    pub length: u32,
    #[serde(default)]
    pub precision: u32,
    #[serde(default)]
    pub scale: u32,
    #[serde(default = "yes")]
    pub nillable: bool,
    #[serde(default = "yes")]
    pub createable: bool,
    #[serde(default = "yes")]
    pub updateable: bool,
    #[serde(default)]
    pub unique: bool,
    #[serde(default)]
    pub external_id: bool,
    /// Required on create even though describe says nillable=false (e.g. Name, LastName).
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub reference_to: Vec<String>,
    #[serde(default)]
    pub relationship_name: Option<String>,
    #[serde(default)]
    pub picklist_values: Vec<String>,
    #[serde(default)]
    pub restricted_picklist: bool,
    #[serde(default)]
    pub formula: Option<Formula>,
    /// For components of compound fields (BillingCity → BillingAddress, FirstName → Name).
    #[serde(default)]
    pub compound_field_name: Option<String>,
    #[serde(default)]
    pub custom: bool,
    /// Default value applied on create when the field is not given.
    #[serde(default)]
    pub default_value: Option<serde_json::Value>,
}

fn yes() -> bool {
    true
}

/// One object (sObject type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectDef {
    pub name: String,
    pub label: String,
    pub label_plural: String,
    pub key_prefix: String,
    #[serde(default)]
    pub custom: bool,
    pub fields: Vec<FieldDef>,
}

impl ObjectDef {
    /// Case-insensitive field lookup, as Salesforce resolves field names.
    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

/// All objects of the org.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    pub objects: Vec<ObjectDef>,
}

impl Schema {
    /// Case-insensitive object lookup.
    pub fn object(&self, name: &str) -> Option<&ObjectDef> {
        self.objects.iter().find(|o| o.name.eq_ignore_ascii_case(name))
    }

    /// The object whose ids start with `prefix`.
    pub fn object_by_prefix(&self, prefix: &str) -> Option<&ObjectDef> {
        self.objects.iter().find(|o| o.key_prefix == prefix)
    }
}
