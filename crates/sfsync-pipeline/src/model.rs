//! The curated model of an object, built from its describe and the object's config: which
//! columns the current-state table has (typed from describe), which are PII, which the SCD2
//! history tracks, which hold formula fields (configured objects only; kept fresh by formula
//! refresh jobs, never by the change stream), and how change-event field paths (including
//! compound components such as `BillingAddress.City`) map onto columns. Pure: no I/O.

use std::collections::HashMap;

use sfsync_salesforce::rest::{FieldDescribe, ObjectDescribe};
use sfsync_store::{ColumnDef, ColumnType, HistorySpec, ObjectModel};

use crate::error::{PipelineError, Result};

/// Which fields an object's SCD2 history tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryFields {
    None,
    All,
    Fields(Vec<String>),
}

/// Which formula fields of an object get columns (refreshed by formula refresh jobs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FormulaFields {
    /// None: formula fields are not synced (the default).
    #[default]
    None,
    /// Every formula field describe reports.
    All,
    /// These formula fields (API names).
    Fields(Vec<String>),
}

/// One synced object as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectSpec {
    /// API name (`Case`, `Service_Request__c`).
    pub name: String,
    /// CDC channel (`/data/CaseChangeEvent`).
    pub channel: String,
    pub history: HistoryFields,
    pub pii_fields: Vec<String>,
    /// Data-quality checks before merge.
    pub quality: crate::quality::QualitySpec,
    /// Formula fields synced as columns.
    pub formula_fields: FormulaFields,
}

impl ObjectSpec {
    /// A spec with the default channel, no history, no PII and no formula fields.
    pub fn new(name: &str) -> ObjectSpec {
        ObjectSpec {
            name: name.to_string(),
            channel: default_channel(name),
            history: HistoryFields::None,
            pii_fields: Vec::new(),
            quality: crate::quality::QualitySpec::default(),
            formula_fields: FormulaFields::None,
        }
    }
}

/// `/data/<Name>ChangeEvent`; custom objects drop the `c` of `__c`.
pub fn default_channel(object: &str) -> String {
    match object.strip_suffix("__c") {
        Some(base) => format!("/data/{base}__ChangeEvent"),
        None => format!("/data/{object}ChangeEvent"),
    }
}

/// Current-state table name of an object: `sf_` + lower-case API name.
pub fn table_name(object: &str) -> String {
    format!("sf_{}", object.to_ascii_lowercase())
}

/// Fields never stored as columns: the change stream does not carry them (sync metadata covers
/// them) or they are derived.
const EXCLUDED: [&str; 2] = ["SystemModstamp", "IsDeleted"];

/// The model plus the lookups the apply stage needs.
#[derive(Debug, Clone)]
pub struct ObjectMapping {
    pub model: ObjectModel,
    /// Field API name → column index.
    by_field: HashMap<String, usize>,
    /// Compound parent → (component name in the change event, column index).
    compounds: HashMap<String, Vec<(String, usize)>>,
    /// Field API names to select when re-reading records (in column order).
    pub soql_fields: Vec<String>,
    /// The data-quality checks of the object.
    pub gate: crate::quality::ObjectGate,
    /// Rules left out of `gate` because describe does not support them (a configuration error
    /// at start; reported after a schema change).
    pub gate_problems: Vec<String>,
    /// Column indexes of the synced formula fields, in column order (empty unless configured).
    /// The change stream never carries them: a CDC create or undelete leaves them as they are,
    /// and formula refresh jobs re-read them.
    pub formula_columns: Vec<usize>,
}

impl ObjectMapping {
    /// Builds the mapping of `spec` from `describe`. Errors name the object and the field: a
    /// configured history or PII field that describe does not know, or one that is not stored.
    pub fn build(describe: &ObjectDescribe, spec: &ObjectSpec) -> Result<ObjectMapping> {
        let object = &spec.name;
        let mut columns: Vec<ColumnDef> = Vec::new();
        let mut by_field = HashMap::new();
        let mut compounds: HashMap<String, Vec<(String, usize)>> = HashMap::new();
        let mut soql_fields = Vec::new();
        let pii = |f: &str| spec.pii_fields.iter().any(|p| p.eq_ignore_ascii_case(f));
        // Compound parents (Contact `Name`, `BillingAddress`) are carried as their components.
        let parents: std::collections::HashSet<&str> = describe
            .fields
            .iter()
            .filter_map(|f| f.compound_field_name.as_deref())
            .collect();
        let formula_field = |f: &FieldDescribe| is_formula(f) && !parents.contains(f.name.as_str());
        if let FormulaFields::Fields(list) = &spec.formula_fields {
            for name in list {
                match describe.field(name) {
                    Some(f) if formula_field(f) => {}
                    Some(_) => {
                        return Err(PipelineError::config(
                            object,
                            format!(
                                "formula field '{name}' is not a formula field of {object} \
                                 (describe: not calculated or no calculatedFormula)"
                            ),
                        ))
                    }
                    None => {
                        return Err(PipelineError::config(
                            object,
                            format!("formula field '{name}' is not a field of {object} (describe)"),
                        ))
                    }
                }
            }
        }
        let synced_formula = |f: &FieldDescribe| {
            formula_field(f)
                && match &spec.formula_fields {
                    FormulaFields::None => false,
                    FormulaFields::All => true,
                    FormulaFields::Fields(list) => {
                        list.iter().any(|n| n.eq_ignore_ascii_case(&f.name))
                    }
                }
        };
        let stored = |f: &FieldDescribe| is_stored(f) || synced_formula(f);
        for p in &spec.pii_fields {
            let known = describe.field(p).is_some_and(stored);
            if !known {
                return Err(PipelineError::config(
                    object,
                    format!("pii field '{p}' is not a stored field of {object} (describe)"),
                ));
            }
            if p.eq_ignore_ascii_case("Id") {
                return Err(PipelineError::config(object, "'Id' cannot be a PII field"));
            }
        }
        // Id first.
        let id = describe
            .field("Id")
            .ok_or_else(|| PipelineError::config(object, "describe has no Id field"))?;
        let mut push = |f: &FieldDescribe, columns: &mut Vec<ColumnDef>| {
            let idx = columns.len();
            columns.push(ColumnDef {
                name: f.name.to_ascii_lowercase(),
                field: f.name.clone(),
                ty: column_type(&f.field_type),
                pii: pii(&f.name),
            });
            by_field.insert(f.name.clone(), idx);
            soql_fields.push(f.name.clone());
            idx
        };
        push(id, &mut columns);
        let mut formula_columns = Vec::new();
        for f in &describe.fields {
            if f.name == "Id" || !stored(f) || parents.contains(f.name.as_str()) {
                continue;
            }
            let idx = push(f, &mut columns);
            if synced_formula(f) {
                formula_columns.push(idx);
            }
            if let Some(parent) = &f.compound_field_name {
                compounds
                    .entry(parent.clone())
                    .or_default()
                    .push((component_name(parent, &f.name), idx));
            }
        }
        // Data-quality checks run on changes before they are merged, and change events never
        // carry formula fields: a rule on one could never pass (or would check nothing).
        let q = &spec.quality;
        let checked = q
            .required
            .iter()
            .chain(q.rules.iter().map(|r| &r.field))
            .chain(q.references.iter().map(|r| &r.field));
        for f in checked {
            if formula_columns
                .iter()
                .any(|i| columns[*i].field.eq_ignore_ascii_case(f))
            {
                return Err(PipelineError::config(
                    object,
                    format!(
                        "'{f}' is a formula field: change events never carry it, so data-quality \
                         rules cannot check it"
                    ),
                ));
            }
        }
        // Formula columns change without a change event (a refresh updates them in place), so
        // SCD2 versions cannot follow them: never tracked.
        let history = match &spec.history {
            HistoryFields::None => None,
            HistoryFields::All => Some(
                columns
                    .iter()
                    .enumerate()
                    .skip(1)
                    .filter(|(i, _)| !formula_columns.contains(i))
                    .map(|(_, c)| c.name.clone())
                    .collect(),
            ),
            HistoryFields::Fields(list) => {
                let mut cols = Vec::new();
                for f in list {
                    let col = f.to_ascii_lowercase();
                    let formula = formula_columns.iter().any(|i| columns[*i].name == col);
                    if formula {
                        return Err(PipelineError::config(
                            object,
                            format!(
                                "history field '{f}' is a formula field: formula fields change \
                                 without a change event and cannot be tracked in history"
                            ),
                        ));
                    }
                    if !columns.iter().any(|c| c.name == col) {
                        return Err(PipelineError::config(
                            object,
                            format!(
                                "history field '{f}' is not a stored field of {object} (describe)"
                            ),
                        ));
                    }
                    cols.push(col);
                }
                Some(cols)
            }
        }
        .map(|columns| HistorySpec {
            table: format!("{}_history", table_name(object)),
            columns,
        });
        let mut mapping = ObjectMapping {
            model: ObjectModel {
                object: describe.name.clone(),
                table: table_name(object),
                columns,
                history,
            },
            by_field,
            compounds,
            soql_fields,
            gate: crate::quality::ObjectGate::default(),
            gate_problems: Vec::new(),
            formula_columns,
        };
        let (gate, problems) =
            crate::quality::ObjectGate::compile(&mapping, describe, &spec.quality);
        mapping.gate = gate;
        mapping.gate_problems = problems;
        Ok(mapping)
    }

    pub fn object(&self) -> &str {
        &self.model.object
    }

    /// Column index of a field API name.
    pub fn column_of_field(&self, field: &str) -> Option<usize> {
        self.by_field.get(field).copied()
    }

    /// Columns of a compound field's components, by component name.
    pub fn compound(&self, parent: &str) -> Option<&[(String, usize)]> {
        self.compounds.get(parent).map(|v| v.as_slice())
    }

    /// Field API names of the synced formula fields, in column order.
    pub fn formula_fields(&self) -> Vec<String> {
        self.formula_columns
            .iter()
            .map(|i| self.model.columns[*i].field.clone())
            .collect()
    }

    /// The column a change-event path maps to: `Phone`, or `BillingAddress.City` → `billingcity`.
    pub fn column_of_path(&self, path: &str) -> Option<usize> {
        if let Some(i) = self.column_of_field(path) {
            return Some(i);
        }
        let (parent, comp) = path.split_once('.')?;
        self.compound(parent)?
            .iter()
            .find(|(c, _)| c == comp)
            .map(|(_, i)| *i)
    }
}

/// A formula field: `calculated` with a `calculatedFormula` (person-name parents are calculated
/// without one).
fn is_formula(f: &FieldDescribe) -> bool {
    f.calculated
        && f.calculated_formula
            .as_deref()
            .is_some_and(|t| !t.trim().is_empty())
        && !f.is_compound()
        && !EXCLUDED.contains(&f.name.as_str())
}

/// A field that has a column whatever the config: not a compound parent, not a formula, not
/// excluded (configured formula fields have columns too; see [`ObjectMapping::build`]).
fn is_stored(f: &FieldDescribe) -> bool {
    if f.is_compound() || EXCLUDED.contains(&f.name.as_str()) {
        return false;
    }
    // Formula fields are `calculated`; so are person-name parents (`Name` on Contact), whose
    // components are stored instead. Neither is carried by the change stream.
    !f.calculated
}

/// The column type of a describe `type`.
pub fn column_type(describe_type: &str) -> ColumnType {
    match describe_type {
        "boolean" => ColumnType::Boolean,
        "int" | "long" => ColumnType::Integer,
        "double" | "currency" | "percent" => ColumnType::Real,
        "date" => ColumnType::Date,
        "datetime" => ColumnType::Timestamp,
        _ => ColumnType::Text,
    }
}

/// Name of a component inside its compound record as the change event carries it:
/// `BillingCity` in `BillingAddress` → `City`, `FirstName` in `Name` → `FirstName`,
/// `Loc__Latitude__s` in `Loc__c` → `Latitude`.
pub fn component_name(compound: &str, field: &str) -> String {
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

/// Creates or extends the curated tables of `mapping`, following fields whose type changed in
/// Salesforce: a column the warehouse holds with another type keeps its values and its type,
/// and the field's values go on in a new column `<column>__<type>` (`amount__c__text`), which
/// the mapping then uses. Returns what changed; `retyped_columns` names the original columns.
pub async fn ensure_model_following_retypes(
    store: &dyn sfsync_store::Warehouse,
    mapping: &mut ObjectMapping,
) -> Result<sfsync_store::ModelChange> {
    let mut change = store.ensure_model(&mapping.model).await?;
    let retyped = change.retyped_columns.clone();
    if retyped.is_empty() {
        return Ok(change);
    }
    for c in mapping.model.columns.iter_mut() {
        if retyped.contains(&c.name) {
            let new = format!("{}__{}", c.name, type_suffix(c.ty));
            if let Some(h) = mapping.model.history.as_mut() {
                for hc in h.columns.iter_mut().filter(|hc| **hc == c.name) {
                    *hc = new.clone();
                }
            }
            c.name = new;
        }
    }
    let again = store.ensure_model(&mapping.model).await?;
    if !again.retyped_columns.is_empty() {
        return Err(PipelineError::config(
            mapping.object(),
            format!(
                "columns {:?} exist with another type for their new type too; rename or drop them",
                again.retyped_columns
            ),
        ));
    }
    change.created |= again.created;
    for a in again.added_columns {
        if !change.added_columns.contains(&a) {
            change.added_columns.push(a);
        }
    }
    tracing::error!(
        object = %mapping.object(),
        retyped = ?retyped,
        "Fields changed type in Salesforce: their columns keep the old values and type; new values go to <column>__<type> columns."
    );
    Ok(change)
}

fn type_suffix(t: sfsync_store::ColumnType) -> &'static str {
    use sfsync_store::ColumnType as T;
    match t {
        T::Text => "text",
        T::Integer => "integer",
        T::Real => "real",
        T::Boolean => "boolean",
        T::Date => "date",
        T::Timestamp => "timestamp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, ty: &str) -> serde_json::Value {
        serde_json::json!({"name": name, "type": ty})
    }

    fn describe() -> ObjectDescribe {
        let mut street = field("BillingCity", "string");
        street["compoundFieldName"] = "BillingAddress".into();
        let mut formula = field("Score__c", "double");
        formula["calculated"] = true.into();
        formula["calculatedFormula"] = "AnnualRevenue / 1000".into();
        // Calculated without a formula (a person-name parent, say): never a formula column.
        let mut calculated = field("Derived__c", "string");
        calculated["calculated"] = true.into();
        serde_json::from_value(serde_json::json!({
            "name": "Account",
            "fields": [
                field("Id", "id"), field("Name", "string"), field("AnnualRevenue", "currency"),
                field("IsActive__c", "boolean"), field("LastModifiedDate", "datetime"),
                field("SystemModstamp", "datetime"), field("BillingAddress", "address"),
                street, formula, field("Phone", "phone"), field("Founded__c", "date"),
                calculated,
            ]
        }))
        .unwrap()
    }

    #[test]
    fn columns_are_typed_and_compounds_mapped() {
        let mut spec = ObjectSpec::new("Account");
        spec.history = HistoryFields::Fields(vec!["Name".into()]);
        spec.pii_fields = vec!["Phone".into()];
        let m = ObjectMapping::build(&describe(), &spec).unwrap();
        let names: Vec<_> = m.model.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "name",
                "annualrevenue",
                "isactive__c",
                "lastmodifieddate",
                "billingcity",
                "phone",
                "founded__c"
            ]
        );
        assert_eq!(m.model.columns[2].ty, ColumnType::Real);
        assert_eq!(m.model.columns[3].ty, ColumnType::Boolean);
        assert_eq!(m.model.columns[4].ty, ColumnType::Timestamp);
        assert_eq!(m.model.columns[7].ty, ColumnType::Date);
        assert!(m.model.columns[6].pii);
        assert_eq!(m.column_of_path("BillingAddress.City"), Some(5));
        assert_eq!(m.column_of_path("Phone"), Some(6));
        assert_eq!(m.column_of_path("Score__c"), None);
        assert_eq!(m.model.history.as_ref().unwrap().columns, ["name"]);
        assert_eq!(m.model.table, "sf_account");
    }

    #[test]
    fn unknown_config_fields_are_named() {
        let mut spec = ObjectSpec::new("Account");
        spec.pii_fields = vec!["Nope".into()];
        let e = ObjectMapping::build(&describe(), &spec)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Account") && e.contains("Nope"), "{e}");
        let mut spec = ObjectSpec::new("Account");
        spec.history = HistoryFields::Fields(vec!["Score__c".into()]);
        let e = ObjectMapping::build(&describe(), &spec)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Score__c"), "{e}");
    }

    /// Formula fields have columns only when the object is configured with them: all of them
    /// (`true`) or the listed ones; typed from describe, never tracked by history, possibly PII.
    #[test]
    fn formula_columns_only_for_configured_objects() {
        let plain = ObjectMapping::build(&describe(), &ObjectSpec::new("Account")).unwrap();
        assert!(plain.formula_columns.is_empty());
        assert!(plain.formula_fields().is_empty());
        assert_eq!(plain.column_of_field("Score__c"), None);
        assert!(!plain.soql_fields.iter().any(|f| f == "Score__c"));

        for setting in [
            FormulaFields::All,
            FormulaFields::Fields(vec!["score__C".into()]),
        ] {
            let mut spec = ObjectSpec::new("Account");
            spec.formula_fields = setting.clone();
            spec.history = HistoryFields::All;
            spec.pii_fields = vec!["Score__c".into()];
            let m = ObjectMapping::build(&describe(), &spec).unwrap();
            let col = m.column_of_field("Score__c").expect("a formula column");
            assert_eq!(m.formula_columns, [col], "{setting:?}");
            assert_eq!(m.formula_fields(), ["Score__c"]);
            let c = &m.model.columns[col];
            assert_eq!(
                (c.name.as_str(), c.ty, c.pii),
                ("score__c", ColumnType::Real, true)
            );
            assert!(m.soql_fields.iter().any(|f| f == "Score__c"));
            // Only formulas: calculated fields without one stay out.
            assert_eq!(m.column_of_field("Derived__c"), None);
            let h = &m.model.history.as_ref().unwrap().columns;
            assert!(h.contains(&"name".to_string()));
            assert!(!h.contains(&"score__c".to_string()), "{h:?}");
            // Every other column is where it was without formulas.
            let others: Vec<_> = m
                .model
                .columns
                .iter()
                .filter(|c| c.name != "score__c")
                .collect();
            assert_eq!(others, plain.model.columns.iter().collect::<Vec<_>>());
        }

        let err = |spec: &ObjectSpec| {
            ObjectMapping::build(&describe(), spec)
                .unwrap_err()
                .to_string()
        };
        let mut spec = ObjectSpec::new("Account");
        spec.formula_fields = FormulaFields::Fields(vec!["Name".into()]);
        let e = err(&spec);
        assert!(
            e.contains("'Name' is not a formula field of Account"),
            "{e}"
        );
        spec.formula_fields = FormulaFields::Fields(vec!["Derived__c".into()]);
        assert!(err(&spec).contains("not a formula field"));
        spec.formula_fields = FormulaFields::Fields(vec!["Nope__c".into()]);
        assert!(err(&spec).contains("'Nope__c' is not a field of Account"));
        spec.formula_fields = FormulaFields::All;
        spec.history = HistoryFields::Fields(vec!["Score__c".into()]);
        let e = err(&spec);
        assert!(e.contains("cannot be tracked in history"), "{e}");
        let mut spec = ObjectSpec::new("Account");
        spec.formula_fields = FormulaFields::All;
        spec.quality.required = vec!["Score__c".into()];
        let e = err(&spec);
        assert!(e.contains("data-quality rules cannot check it"), "{e}");
        // Without the setting a formula field is not stored at all, so not PII either.
        let mut spec = ObjectSpec::new("Account");
        spec.pii_fields = vec!["Score__c".into()];
        assert!(err(&spec).contains("not a stored field"));
    }

    /// Change events never carry formula fields: a CDC create or undelete (a full row) leaves
    /// the formula column as it is instead of nulling it, while a snapshot sets it.
    #[test]
    fn change_events_never_null_formula_columns() {
        use crate::normalize::{self, Op};
        use sfsync_core::{Change, ChangeHeader, ChangeType, FieldValue, ReplayId};
        let mut spec = ObjectSpec::new("Account");
        spec.formula_fields = FormulaFields::All;
        let m = ObjectMapping::build(&describe(), &spec).unwrap();
        let score = m.column_of_field("Score__c").unwrap();
        let event = |ct: ChangeType, ts: i64| Change {
            header: ChangeHeader {
                entity_name: "Account".into(),
                record_ids: vec!["001A".into()],
                change_type: Some(ct),
                transaction_key: format!("tx{ts}"),
                sequence_number: 1,
                commit_timestamp: ts,
                commit_number: ts,
                ..Default::default()
            },
            schema_id: "s1".into(),
            replay_id: ReplayId::from_bytes(vec![1]),
            fields: vec![("Name".into(), FieldValue::String("Acme".into()))],
        };
        let changes =
            |ct, ts| match normalize::from_cdc(&m, "/data/AccountChangeEvent", &event(ct, ts))
                .unwrap()
            {
                normalize::Normalized::Records(r) => r,
                other => panic!("{other:?}"),
            };
        let create = changes(ChangeType::Create, 10).remove(0);
        assert_eq!(create.op, Op::Full);
        assert!(create.values.iter().all(|(c, _)| *c != score), "{create:?}");
        let phone = m.column_of_field("Phone").unwrap();
        assert!(
            create.values.contains(&(phone, sfsync_store::Value::Null)),
            "other absent fields are null in a full row"
        );

        let mappings = HashMap::from([("Account".to_string(), m.clone())]);
        let planner = crate::plan::Planner {
            mappings: &mappings,
            run_id: "run-1",
            own_client: "sfsync",
            now_ms: 1,
            deliver: false,
        };
        let mut rows = HashMap::new();
        let mut batch = sfsync_store::CuratedBatch::default();
        let key = ("Account".to_string(), "001A".to_string());
        let apply = |rows: &mut HashMap<_, _>, batch: &mut _, ch| {
            planner.plan(rows, &[("Account".to_string(), ch)], batch);
        };
        apply(&mut rows, &mut batch, create);
        let row: &sfsync_store::CurrentRow = &rows[&key];
        assert_eq!(row.values.get("score__c"), None, "unknown until a refresh");
        // A snapshot (backfill, repair) carries the formula: set even when the snapshot is
        // older than the create (the backfill row arrived after the streamed create), and
        // never by a read older than the one that set it.
        let snapshot = |ts: i64, value: f64| {
            let mut snap = changes(ChangeType::Create, ts).remove(0);
            snap.source = sfsync_store::ChangeSource::Snapshot;
            snap.change_type = "SNAPSHOT";
            snap.version.commit_number = 0;
            snap.version.sequence_number = 0;
            snap.values.push((score, sfsync_store::Value::Real(value)));
            snap.values.sort_by_key(|(c, _)| *c);
            snap
        };
        let formula = |rows: &HashMap<_, sfsync_store::CurrentRow>| {
            rows[&key].values.get("score__c").cloned()
        };
        apply(&mut rows, &mut batch, snapshot(5, 7.5));
        assert_eq!(formula(&rows), Some(sfsync_store::Value::Real(7.5)));
        assert_eq!(
            rows[&key].meta.change_type, "CREATE",
            "the record's version stays"
        );
        apply(&mut rows, &mut batch, snapshot(20, 12.5));
        assert_eq!(formula(&rows), Some(sfsync_store::Value::Real(12.5)));
        apply(&mut rows, &mut batch, snapshot(15, 99.0));
        assert_eq!(
            formula(&rows),
            Some(sfsync_store::Value::Real(12.5)),
            "an older read never sets formula columns"
        );
        // Later CDC full rows keep it.
        for (ct, ts) in [(ChangeType::Delete, 30), (ChangeType::Undelete, 40)] {
            let ch = changes(ct, ts).remove(0);
            apply(&mut rows, &mut batch, ch);
        }
        let row = &rows[&key];
        assert!(!row.deleted);
        assert_eq!(
            row.values.get("name"),
            Some(&sfsync_store::Value::Text("Acme".into()))
        );
        assert_eq!(
            row.values.get("score__c"),
            Some(&sfsync_store::Value::Real(12.5)),
            "an undelete does not null the formula column"
        );
    }

    #[test]
    fn channels_and_components() {
        assert_eq!(default_channel("Case"), "/data/CaseChangeEvent");
        assert_eq!(default_channel("Payment__c"), "/data/Payment__ChangeEvent");
        assert_eq!(component_name("BillingAddress", "BillingCity"), "City");
        assert_eq!(component_name("Name", "FirstName"), "FirstName");
        assert_eq!(component_name("Loc__c", "Loc__Latitude__s"), "Latitude");
    }

    /// A field whose type changed in Salesforce: the old column keeps its type and values, new
    /// values go to `<column>__<type>`, and reopening follows the same way.
    #[tokio::test]
    async fn retyped_fields_continue_in_a_typed_column() {
        let dir = tempfile::tempdir().unwrap();
        let store = sfsync_store::SqliteChangeLog::open(dir.path().join("w.db"))
            .await
            .unwrap();
        let d = |ty: &str| -> ObjectDescribe {
            serde_json::from_value(serde_json::json!({
                "name": "Account",
                "fields": [field("Id", "id"), field("Name", "string"), field("Rating__c", ty)]
            }))
            .unwrap()
        };
        let mut spec = ObjectSpec::new("Account");
        spec.history = HistoryFields::All;
        let mut before = ObjectMapping::build(&d("double"), &spec).unwrap();
        let c = ensure_model_following_retypes(&store, &mut before)
            .await
            .unwrap();
        assert!(c.created && c.retyped_columns.is_empty());
        for _ in 0..2 {
            let mut after = ObjectMapping::build(&d("string"), &spec).unwrap();
            let c = ensure_model_following_retypes(&store, &mut after)
                .await
                .unwrap();
            assert_eq!(c.retyped_columns, vec!["rating__c"]);
            let col = after.column_of_field("Rating__c").unwrap();
            assert_eq!(after.model.columns[col].name, "rating__c__text");
            let h = after.model.history.as_ref().unwrap();
            assert!(h.columns.contains(&"rating__c__text".to_string()));
            assert!(!h.columns.contains(&"rating__c".to_string()));
        }
        let conn = rusqlite::Connection::open(dir.path().join("w.db")).unwrap();
        let types: Vec<(String, String)> = conn
            .prepare(
                "SELECT name, type FROM pragma_table_info('sf_account') WHERE name LIKE 'rating%'",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            types,
            vec![
                ("rating__c".to_string(), "REAL".to_string()),
                ("rating__c__text".to_string(), "TEXT".to_string())
            ]
        );
    }
}
