//! Object and field metadata: the standard objects (Account, Contact, Lead, Opportunity, Case,
//! User), custom objects from a schema file, and the demo's public-sector objects. Describe JSON
//! is generated from these definitions (see `describe`), so what the org validates and what it
//! describes never disagree.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
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
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
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
        self.objects
            .iter()
            .find(|o| o.name.eq_ignore_ascii_case(name))
    }

    /// The object whose ids start with `prefix`.
    pub fn object_by_prefix(&self, prefix: &str) -> Option<&ObjectDef> {
        self.objects.iter().find(|o| o.key_prefix == prefix)
    }
}

// ---------------------------------------------------------------------------------------------
// Builders

impl FieldDef {
    /// A nillable, createable, updateable field with the type's usual describe length/precision.
    pub fn new(name: &str, label: &str, field_type: FieldType) -> FieldDef {
        let (length, precision, scale) = match field_type {
            FieldType::String | FieldType::Textarea | FieldType::Url | FieldType::Picklist => {
                (255, 0, 0)
            }
            FieldType::Multipicklist => (4099, 0, 0),
            FieldType::Email => (80, 0, 0),
            FieldType::Phone => (40, 0, 0),
            FieldType::Id | FieldType::Reference => (18, 0, 0),
            FieldType::Currency => (0, 18, 2),
            FieldType::Double => (0, 18, 2),
            FieldType::Percent => (0, 3, 0),
            FieldType::Int => (0, 9, 0),
            _ => (0, 0, 0),
        };
        FieldDef {
            name: name.to_string(),
            label: label.to_string(),
            field_type,
            length,
            precision,
            scale,
            nillable: true,
            createable: true,
            updateable: true,
            unique: false,
            external_id: false,
            required: false,
            reference_to: Vec::new(),
            relationship_name: None,
            picklist_values: Vec::new(),
            restricted_picklist: false,
            formula: None,
            compound_field_name: None,
            custom: name.ends_with("__c"),
            default_value: None,
        }
    }

    /// Required on create (describe `nillable: false`).
    pub fn required(mut self) -> FieldDef {
        self.required = true;
        self.nillable = false;
        self
    }

    pub fn length(mut self, n: u32) -> FieldDef {
        self.length = n;
        self
    }

    pub fn number(mut self, precision: u32, scale: u32) -> FieldDef {
        self.precision = precision;
        self.scale = scale;
        self
    }

    /// A lookup to `to` with relationship name `rel` (e.g. `Account`, `Contact__r`).
    pub fn reference(mut self, to: &str, rel: &str) -> FieldDef {
        self.reference_to = vec![to.to_string()];
        self.relationship_name = Some(rel.to_string());
        self
    }

    pub fn picklist(mut self, values: &[&str]) -> FieldDef {
        self.picklist_values = values.iter().map(|v| v.to_string()).collect();
        self
    }

    pub fn restricted(mut self) -> FieldDef {
        self.restricted_picklist = true;
        self
    }

    pub fn default_value(mut self, v: serde_json::Value) -> FieldDef {
        self.default_value = Some(v);
        self
    }

    /// An external id; `unique` adds the uniqueness constraint.
    pub fn external_id(mut self, unique: bool) -> FieldDef {
        self.external_id = true;
        self.unique = unique;
        self
    }

    pub fn unique(mut self) -> FieldDef {
        self.unique = true;
        self
    }

    /// Not createable and not updateable (system and auto fields).
    pub fn read_only(mut self) -> FieldDef {
        self.createable = false;
        self.updateable = false;
        self
    }

    /// A component of compound field `name`.
    pub fn component_of(mut self, name: &str) -> FieldDef {
        self.compound_field_name = Some(name.to_string());
        self
    }

    /// A formula (calculated) field.
    pub fn formula(mut self, text: &str) -> FieldDef {
        self.formula = Some(Formula {
            text: text.to_string(),
        });
        self.createable = false;
        self.updateable = false;
        self
    }

    /// Whether describe reports this field as `calculated` (formula or compound).
    pub fn is_formula(&self) -> bool {
        self.formula.is_some()
    }
}

impl ObjectDef {
    /// An object with the given fields followed by the system fields every object has.
    pub fn new(
        name: &str,
        label: &str,
        label_plural: &str,
        key_prefix: &str,
        fields: Vec<FieldDef>,
    ) -> ObjectDef {
        let mut all = vec![
            FieldDef::new("Id", &format!("{label} ID"), FieldType::Id).read_only(),
            FieldDef::new("IsDeleted", "Deleted", FieldType::Boolean).read_only(),
        ];
        all.extend(fields);
        all.extend(system_fields());
        let mut o = ObjectDef {
            name: name.to_string(),
            label: label.to_string(),
            label_plural: label_plural.to_string(),
            key_prefix: key_prefix.to_string(),
            custom: name.ends_with("__c"),
            fields: all,
        };
        o.fields[0].nillable = false;
        o.fields[1].nillable = false;
        o
    }

    /// Index of a field (case-insensitive).
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields
            .iter()
            .position(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// Components of compound field `name`, in field order.
    pub fn components(&self, name: &str) -> Vec<&FieldDef> {
        self.fields
            .iter()
            .filter(|f| f.compound_field_name.as_deref() == Some(name))
            .collect()
    }

    /// Whether `name` is a compound field (has components).
    pub fn is_compound(&self, name: &str) -> bool {
        self.fields
            .iter()
            .any(|f| f.compound_field_name.as_deref() == Some(name))
    }
}

/// The audit fields every object has, in describe order.
fn system_fields() -> Vec<FieldDef> {
    vec![
        FieldDef::new("CreatedDate", "Created Date", FieldType::Datetime).read_only(),
        FieldDef::new("CreatedById", "Created By ID", FieldType::Reference)
            .reference("User", "CreatedBy")
            .read_only(),
        FieldDef::new(
            "LastModifiedDate",
            "Last Modified Date",
            FieldType::Datetime,
        )
        .read_only(),
        FieldDef::new(
            "LastModifiedById",
            "Last Modified By ID",
            FieldType::Reference,
        )
        .reference("User", "LastModifiedBy")
        .read_only(),
        FieldDef::new("SystemModstamp", "System Modstamp", FieldType::Datetime).read_only(),
    ]
    .into_iter()
    .map(|mut f| {
        f.nillable = false;
        f
    })
    .collect()
}

/// System fields: maintained by the org, never writable.
pub const SYSTEM_FIELDS: [&str; 7] = [
    "Id",
    "IsDeleted",
    "CreatedDate",
    "CreatedById",
    "LastModifiedDate",
    "LastModifiedById",
    "SystemModstamp",
];

fn address(prefix: &str, label: &str) -> Vec<FieldDef> {
    let compound = format!("{prefix}Address");
    let c = |suffix: &str, lab: &str, t: FieldType| {
        FieldDef::new(&format!("{prefix}{suffix}"), &format!("{label} {lab}"), t)
            .component_of(&compound)
    };
    vec![
        c("Street", "Street", FieldType::Textarea),
        c("City", "City", FieldType::String).length(40),
        c("State", "State/Province", FieldType::String).length(80),
        c("PostalCode", "Zip/Postal Code", FieldType::String).length(20),
        c("Country", "Country", FieldType::String).length(80),
        c("Latitude", "Latitude", FieldType::Double).number(18, 15),
        c("Longitude", "Longitude", FieldType::Double).number(18, 15),
        c("GeocodeAccuracy", "Geocode Accuracy", FieldType::Picklist)
            .picklist(&[
                "Address",
                "NearAddress",
                "Block",
                "Street",
                "ExtendedZip",
                "Zip",
                "Neighborhood",
                "City",
                "County",
                "State",
                "Unknown",
            ])
            .restricted(),
        FieldDef::new(&compound, &format!("{label} Address"), FieldType::Address).read_only(),
    ]
}

fn person_name(last_required: bool) -> Vec<FieldDef> {
    let mut last = FieldDef::new("LastName", "Last Name", FieldType::String)
        .length(80)
        .component_of("Name");
    if last_required {
        last = last.required();
    }
    vec![
        last,
        FieldDef::new("FirstName", "First Name", FieldType::String)
            .length(40)
            .component_of("Name"),
        FieldDef::new("Salutation", "Salutation", FieldType::Picklist)
            .picklist(&["Mr.", "Ms.", "Mrs.", "Dr.", "Prof.", "Mx."])
            .component_of("Name"),
        {
            let mut n = FieldDef::new("Name", "Full Name", FieldType::String)
                .length(121)
                .read_only();
            n.nillable = false;
            n
        },
    ]
}

const INDUSTRIES: &[&str] = &[
    "Agriculture",
    "Apparel",
    "Banking",
    "Biotechnology",
    "Chemicals",
    "Communications",
    "Construction",
    "Consulting",
    "Education",
    "Electronics",
    "Energy",
    "Engineering",
    "Entertainment",
    "Environmental",
    "Finance",
    "Food & Beverage",
    "Government",
    "Healthcare",
    "Hospitality",
    "Insurance",
    "Machinery",
    "Manufacturing",
    "Media",
    "Not For Profit",
    "Recreation",
    "Retail",
    "Shipping",
    "Technology",
    "Telecommunications",
    "Transportation",
    "Utilities",
    "Other",
];

/// Industry picklist values (shared with the seeder).
pub fn industries() -> &'static [&'static str] {
    INDUSTRIES
}

fn owner() -> FieldDef {
    let mut f =
        FieldDef::new("OwnerId", "Owner ID", FieldType::Reference).reference("User", "Owner");
    f.nillable = false;
    f
}

fn ext_id() -> FieldDef {
    FieldDef::new("External_Id__c", "External Id", FieldType::String)
        .length(80)
        .external_id(true)
}

fn account() -> ObjectDef {
    let mut fields = vec![
        FieldDef::new("Name", "Account Name", FieldType::String).required(),
        FieldDef::new("Type", "Account Type", FieldType::Picklist).picklist(&[
            "Prospect",
            "Customer - Direct",
            "Customer - Channel",
            "Channel Partner / Reseller",
            "Installation Partner",
            "Technology Partner",
            "Other",
        ]),
        FieldDef::new("ParentId", "Parent Account ID", FieldType::Reference)
            .reference("Account", "Parent"),
    ];
    fields.extend(address("Billing", "Billing"));
    fields.extend(address("Shipping", "Shipping"));
    fields.extend([
        FieldDef::new("Phone", "Account Phone", FieldType::Phone),
        FieldDef::new("Fax", "Account Fax", FieldType::Phone),
        FieldDef::new("AccountNumber", "Account Number", FieldType::String).length(40),
        FieldDef::new("Website", "Website", FieldType::Url),
        FieldDef::new("Industry", "Industry", FieldType::Picklist).picklist(INDUSTRIES),
        FieldDef::new("AnnualRevenue", "Annual Revenue", FieldType::Currency),
        FieldDef::new("NumberOfEmployees", "Employees", FieldType::Int).number(8, 0),
        FieldDef::new("Description", "Account Description", FieldType::Textarea).length(32000),
        owner(),
        ext_id(),
        FieldDef::new(
            "Revenue_Per_Employee__c",
            "Revenue Per Employee",
            FieldType::Double,
        )
        .number(18, 2)
        .formula(
            "IF(OR(ISBLANK(NumberOfEmployees), NumberOfEmployees = 0), NULL, AnnualRevenue / NumberOfEmployees)",
        ),
    ]);
    ObjectDef::new("Account", "Account", "Accounts", "001", fields)
}

fn contact() -> ObjectDef {
    let mut fields = person_name(true);
    fields.extend([
        FieldDef::new("AccountId", "Account ID", FieldType::Reference)
            .reference("Account", "Account"),
        FieldDef::new("Title", "Title", FieldType::String).length(128),
        FieldDef::new("Email", "Email", FieldType::Email),
        FieldDef::new("Phone", "Business Phone", FieldType::Phone),
        FieldDef::new("MobilePhone", "Mobile Phone", FieldType::Phone),
    ]);
    fields.extend(address("Mailing", "Mailing"));
    fields.extend([
        FieldDef::new("Birthdate", "Birthdate", FieldType::Date),
        FieldDef::new("LeadSource", "Lead Source", FieldType::Picklist).picklist(&[
            "Web",
            "Phone Inquiry",
            "Partner Referral",
            "Purchased List",
            "Other",
        ]),
        FieldDef::new("Description", "Contact Description", FieldType::Textarea).length(32000),
        owner(),
        ext_id(),
        FieldDef::new("Full_Name__c", "Full Name (formula)", FieldType::String)
            .length(255)
            .formula("IF(ISBLANK(FirstName), LastName, FirstName & \" \" & LastName)"),
    ]);
    ObjectDef::new("Contact", "Contact", "Contacts", "003", fields)
}

fn lead() -> ObjectDef {
    let mut fields = person_name(true);
    fields.extend([
        FieldDef::new("Company", "Company", FieldType::String).required(),
        FieldDef::new("Title", "Title", FieldType::String).length(128),
        FieldDef::new("Email", "Email", FieldType::Email),
        FieldDef::new("Phone", "Phone", FieldType::Phone),
        {
            let mut f = FieldDef::new("Status", "Lead Status", FieldType::Picklist)
                .picklist(&[
                    "Open - Not Contacted",
                    "Working - Contacted",
                    "Closed - Converted",
                    "Closed - Not Converted",
                ])
                .restricted()
                .required()
                .default_value(serde_json::json!("Open - Not Contacted"));
            f.required = true;
            f
        },
        FieldDef::new("LeadSource", "Lead Source", FieldType::Picklist).picklist(&[
            "Web",
            "Phone Inquiry",
            "Partner Referral",
            "Purchased List",
            "Other",
        ]),
        FieldDef::new("Industry", "Industry", FieldType::Picklist).picklist(INDUSTRIES),
        FieldDef::new("Rating", "Rating", FieldType::Picklist).picklist(&["Hot", "Warm", "Cold"]),
        FieldDef::new("AnnualRevenue", "Annual Revenue", FieldType::Currency),
        FieldDef::new("NumberOfEmployees", "Employees", FieldType::Int).number(8, 0),
    ]);
    fields.extend(address("", "Lead"));
    // The Lead address compound is plain `Address` with components Street, City, ….
    fields.extend([
        FieldDef::new("Description", "Description", FieldType::Textarea).length(32000),
        owner(),
        ext_id(),
    ]);
    ObjectDef::new("Lead", "Lead", "Leads", "00Q", fields)
}

fn opportunity() -> ObjectDef {
    let fields = vec![
        FieldDef::new("Name", "Name", FieldType::String)
            .length(120)
            .required(),
        FieldDef::new("AccountId", "Account ID", FieldType::Reference)
            .reference("Account", "Account"),
        FieldDef::new("StageName", "Stage", FieldType::Picklist)
            .picklist(&[
                "Prospecting",
                "Qualification",
                "Needs Analysis",
                "Value Proposition",
                "Proposal/Price Quote",
                "Negotiation/Review",
                "Closed Won",
                "Closed Lost",
            ])
            .restricted()
            .required(),
        FieldDef::new("CloseDate", "Close Date", FieldType::Date).required(),
        FieldDef::new("Amount", "Amount", FieldType::Currency),
        FieldDef::new("Probability", "Probability (%)", FieldType::Percent),
        FieldDef::new("Type", "Opportunity Type", FieldType::Picklist).picklist(&[
            "Existing Customer - Upgrade",
            "Existing Customer - Replacement",
            "Existing Customer - Downgrade",
            "New Customer",
        ]),
        FieldDef::new("LeadSource", "Lead Source", FieldType::Picklist).picklist(&[
            "Web",
            "Phone Inquiry",
            "Partner Referral",
            "Purchased List",
            "Other",
        ]),
        FieldDef::new("NextStep", "Next Step", FieldType::String),
        FieldDef::new("IsPrivate", "Private", FieldType::Boolean),
        FieldDef::new("Description", "Description", FieldType::Textarea).length(32000),
        owner(),
        ext_id(),
    ];
    ObjectDef::new("Opportunity", "Opportunity", "Opportunities", "006", fields)
}

fn case() -> ObjectDef {
    let mut case_number = FieldDef::new("CaseNumber", "Case Number", FieldType::String)
        .length(30)
        .read_only();
    case_number.nillable = false;
    let fields = vec![
        case_number,
        FieldDef::new("Subject", "Subject", FieldType::String),
        FieldDef::new("Status", "Status", FieldType::Picklist)
            .picklist(&["New", "Working", "Escalated", "Closed"])
            .default_value(serde_json::json!("New")),
        FieldDef::new("Priority", "Priority", FieldType::Picklist)
            .picklist(&["High", "Medium", "Low"])
            .default_value(serde_json::json!("Medium")),
        FieldDef::new("Origin", "Case Origin", FieldType::Picklist)
            .picklist(&["Phone", "Email", "Web"]),
        FieldDef::new("Type", "Case Type", FieldType::Picklist).picklist(&[
            "Mechanical",
            "Electrical",
            "Electronic",
            "Structural",
            "Other",
        ]),
        FieldDef::new("Reason", "Case Reason", FieldType::Picklist).picklist(&[
            "Installation",
            "Equipment Complexity",
            "Performance",
            "Breakdown",
            "Equipment Design",
            "Feedback",
            "Other",
        ]),
        FieldDef::new("Description", "Description", FieldType::Textarea).length(32000),
        FieldDef::new("AccountId", "Account ID", FieldType::Reference)
            .reference("Account", "Account"),
        FieldDef::new("ContactId", "Contact ID", FieldType::Reference)
            .reference("Contact", "Contact"),
        FieldDef::new("IsEscalated", "Escalated", FieldType::Boolean),
        FieldDef::new("ClosedDate", "Closed Date", FieldType::Datetime),
        owner(),
        ext_id(),
    ];
    ObjectDef::new("Case", "Case", "Cases", "500", fields)
}

fn user() -> ObjectDef {
    let mut fields = vec![FieldDef::new("Username", "Username", FieldType::String)
        .length(80)
        .required()
        .unique()];
    fields.extend(person_name(true));
    fields.extend([
        FieldDef::new("Email", "Email", FieldType::Email).required(),
        FieldDef::new("Alias", "Alias", FieldType::String)
            .length(8)
            .required(),
        FieldDef::new("CommunityNickname", "Nickname", FieldType::String).length(40),
        FieldDef::new("IsActive", "Active", FieldType::Boolean)
            .default_value(serde_json::json!(true)),
        FieldDef::new("Title", "Title", FieldType::String).length(80),
        FieldDef::new("Department", "Department", FieldType::String).length(80),
        FieldDef::new("Phone", "Phone", FieldType::Phone),
        FieldDef::new("TimeZoneSidKey", "Time Zone", FieldType::Picklist)
            .picklist(&[
                "America/Los_Angeles",
                "America/New_York",
                "Europe/London",
                "Europe/Berlin",
                "GMT",
            ])
            .default_value(serde_json::json!("America/Los_Angeles")),
    ]);
    ObjectDef::new("User", "User", "Users", "005", fields)
}

/// The demo's public-sector custom objects, as a schema file (also the format's reference
/// example).
pub const PUBLIC_SECTOR_TOML: &str = include_str!("../schema/public_sector.toml");

/// What a schema file contains.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    #[serde(default)]
    objects: Vec<FileObject>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileObject {
    name: String,
    label: String,
    label_plural: String,
    key_prefix: String,
    fields: Vec<toml::Value>,
}

/// Schema file format (TOML, or JSON with the same structure when the file ends in `.json`).
///
/// ```toml
/// [[objects]]
/// name = "Service_Request__c"      # custom objects must end in __c
/// label = "Service Request"
/// label_plural = "Service Requests"
/// key_prefix = "a00"               # 3 base-62 characters, not used by another object
///
/// [[objects.fields]]
/// name = "Status__c"               # custom fields end in __c; `Name` is the only standard one
/// label = "Status"
/// type = "picklist"                # a describe type: string, textarea, picklist, multipicklist,
///                                  # reference, boolean, int, double, currency, percent, date,
///                                  # datetime, email, phone, url
/// picklist_values = ["New", "Closed"]
/// restricted_picklist = true
/// required = true                  # optional keys: length, precision, scale, required,
///                                  # nillable, createable, updateable, unique, external_id,
///                                  # reference_to = ["Contact"], relationship_name,
///                                  # default_value, formula = { text = "A & B" }
/// ```
///
/// Id, IsDeleted, OwnerId and the audit fields are added automatically; a `Name` field
/// (string, 80) is added when the file declares none. Text types get their usual default length
/// when `length` is omitted. Errors name the file, the object and the field.
impl Schema {
    /// Account, Contact, Lead, Opportunity, Case and User with their usual fields.
    pub fn standard() -> Schema {
        Schema {
            objects: vec![account(), contact(), lead(), opportunity(), case(), user()],
        }
    }

    /// The standard objects plus the public-sector custom objects `Service_Request__c` (a00) and
    /// `Payment__c` (a01), loaded from the bundled schema file `schema/public_sector.toml`.
    pub fn demo() -> Schema {
        let mut s = Schema::standard();
        s.extend_from_str(PUBLIC_SECTOR_TOML, "schema/public_sector.toml", false)
            .expect("the bundled public-sector schema is valid");
        s
    }

    /// The standard objects plus the custom objects of the schema file at `path` (TOML, or JSON
    /// when the name ends in `.json`).
    pub fn load_file(path: &Path) -> anyhow::Result<Schema> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("Cannot read schema file {}", path.display()))?;
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let mut s = Schema::standard();
        s.extend_from_str(&text, &path.display().to_string(), json)?;
        Ok(s)
    }

    /// Adds the custom objects of a schema file's text; `origin` names the file in errors.
    pub fn extend_from_str(&mut self, text: &str, origin: &str, json: bool) -> anyhow::Result<()> {
        let file: SchemaFile = if json {
            serde_json::from_str(text)
                .map_err(|e| anyhow!("schema file {origin}: invalid JSON: {e}"))?
        } else {
            toml::from_str(text).map_err(|e| anyhow!("schema file {origin}: invalid TOML: {e}"))?
        };
        let mut added = Vec::new();
        for fo in file.objects {
            let obj = build_file_object(fo, origin)?;
            if self.object(&obj.name).is_some()
                || added
                    .iter()
                    .any(|o: &ObjectDef| o.name.eq_ignore_ascii_case(&obj.name))
            {
                bail!("schema file {origin}: object '{}': defined twice", obj.name);
            }
            if self.object_by_prefix(&obj.key_prefix).is_some()
                || added
                    .iter()
                    .any(|o: &ObjectDef| o.key_prefix == obj.key_prefix)
            {
                bail!(
                    "schema file {origin}: object '{}': key prefix '{}' is already used",
                    obj.name,
                    obj.key_prefix
                );
            }
            added.push(obj);
        }
        let mut next = self.clone();
        next.objects.extend(added);
        next.validate()
            .map_err(|e| anyhow!("schema file {origin}: {e}"))?;
        *self = next;
        Ok(())
    }

    /// Checks cross-object consistency: reference targets exist, formulas parse, names unique.
    pub fn validate(&self) -> anyhow::Result<()> {
        for o in &self.objects {
            for (i, f) in o.fields.iter().enumerate() {
                if o.fields[..i]
                    .iter()
                    .any(|g| g.name.eq_ignore_ascii_case(&f.name))
                {
                    bail!("object '{}' field '{}': defined twice", o.name, f.name);
                }
                if f.field_type == FieldType::Reference {
                    if f.reference_to.is_empty() {
                        bail!(
                            "object '{}' field '{}': reference field without reference_to",
                            o.name,
                            f.name
                        );
                    }
                    for t in &f.reference_to {
                        if self.object(t).is_none() {
                            bail!(
                                "object '{}' field '{}': reference_to names unknown object '{t}'",
                                o.name,
                                f.name
                            );
                        }
                    }
                }
                if let Some(formula) = &f.formula {
                    crate::formula::parse(&formula.text, o).map_err(|e| {
                        anyhow!("object '{}' field '{}': formula: {e}", o.name, f.name)
                    })?;
                }
            }
        }
        Ok(())
    }
}

fn build_file_object(fo: FileObject, origin: &str) -> anyhow::Result<ObjectDef> {
    let name = fo.name.clone();
    let ctx = |msg: String| anyhow!("schema file {origin}: object '{name}': {msg}");
    if !name.ends_with("__c") || name.len() <= 3 {
        return Err(ctx("custom object names must end in '__c'".into()));
    }
    if !name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || name[..name.len() - 3].contains("__")
    {
        return Err(ctx(
            "name must start with a letter and use letters, digits and single underscores".into(),
        ));
    }
    if fo.key_prefix.len() != 3 || !fo.key_prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ctx(format!(
            "key_prefix '{}' must be 3 base-62 characters (e.g. 'a00')",
            fo.key_prefix
        )));
    }
    let mut fields = Vec::new();
    for raw in fo.fields {
        let fname = raw
            .get("name")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string();
        let mut f: FieldDef = raw
            .try_into()
            .map_err(|e: toml::de::Error| ctx(format!("field '{fname}': {}", e.message())))?;
        let fctx = |msg: &str| ctx(format!("field '{}': {msg}", f.name));
        if SYSTEM_FIELDS
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&f.name))
            || f.name.eq_ignore_ascii_case("OwnerId")
        {
            return Err(fctx("is a system field and is added automatically"));
        }
        if f.name != "Name" && !f.name.ends_with("__c") {
            return Err(fctx("custom field names must end in '__c'"));
        }
        match f.field_type {
            FieldType::Id | FieldType::Address | FieldType::Location => {
                return Err(fctx(&format!(
                    "type '{}' cannot be declared in a schema file",
                    f.field_type.as_str()
                )))
            }
            FieldType::Picklist | FieldType::Multipicklist if f.picklist_values.is_empty() => {
                return Err(fctx("picklist without picklist_values"))
            }
            FieldType::Reference if f.reference_to.len() != 1 => {
                return Err(fctx(
                    "reference fields need exactly one reference_to object",
                ))
            }
            _ => {}
        }
        let defaults = FieldDef::new(&f.name, &f.label, f.field_type);
        if f.length == 0 {
            f.length = defaults.length;
        }
        if f.precision == 0 && f.scale == 0 {
            f.precision = defaults.precision;
            f.scale = defaults.scale;
        }
        if f.required {
            f.nillable = false;
        }
        if f.formula.is_some() {
            f.createable = false;
            f.updateable = false;
        }
        if f.field_type == FieldType::Reference && f.relationship_name.is_none() {
            f.relationship_name = Some(format!("{}__r", f.name.trim_end_matches("__c")));
        }
        f.custom = f.name.ends_with("__c");
        fields.push(f);
    }
    if !fields.iter().any(|f| f.name == "Name") {
        fields.insert(
            0,
            FieldDef::new("Name", &format!("{} Name", fo.label), FieldType::String).length(80),
        );
    }
    fields.push(owner());
    Ok(ObjectDef::new(
        &name,
        &fo.label,
        &fo.label_plural,
        &fo.key_prefix,
        fields,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_objects_have_system_fields() {
        let s = Schema::standard();
        for o in &s.objects {
            for f in SYSTEM_FIELDS {
                let fd = o.field(f).unwrap_or_else(|| panic!("{} lacks {f}", o.name));
                assert!(!fd.createable && !fd.updateable, "{}.{f}", o.name);
            }
        }
        s.validate().unwrap();
        assert_eq!(s.object_by_prefix("00Q").unwrap().name, "Lead");
        let acc = s.object("account").unwrap();
        assert_eq!(acc.components("BillingAddress").len(), 8);
        assert!(acc.field("External_Id__c").unwrap().external_id);
    }

    #[test]
    fn demo_loads_the_bundled_file() {
        let s = Schema::demo();
        let sr = s.object("Service_Request__c").unwrap();
        assert_eq!(sr.key_prefix, "a00");
        assert!(sr.custom);
        assert!(sr.field("Status__c").unwrap().restricted_picklist);
        assert_eq!(
            sr.field("Contact__c").unwrap().relationship_name.as_deref(),
            Some("Contact__r")
        );
        assert_eq!(s.object("Payment__c").unwrap().key_prefix, "a01");
    }

    #[test]
    fn file_errors_name_the_place() {
        let mut s = Schema::standard();
        let e = s
            .extend_from_str(
                "[[objects]]\nname='Foo'\nlabel='F'\nlabel_plural='Fs'\nkey_prefix='a05'\nfields=[]\n",
                "x.toml",
                false,
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x.toml") && e.contains("'Foo'") && e.contains("__c"),
            "{e}"
        );
        let e = s
            .extend_from_str(
                "[[objects]]\nname='Foo__c'\nlabel='F'\nlabel_plural='Fs'\nkey_prefix='a05'\n[[objects.fields]]\nname='Bar__c'\nlabel='B'\ntype='reference'\nreference_to=['Nope']\n",
                "y.toml",
                false,
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("y.toml") && e.contains("Bar__c") && e.contains("Nope"),
            "{e}"
        );
        let e = s
            .extend_from_str(
                r#"{"objects":[{"name":"Foo__c","label":"F","label_plural":"Fs","key_prefix":"001","fields":[]}]}"#,
                "z.json",
                true,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("z.json") && e.contains("key prefix"), "{e}");
    }
}
