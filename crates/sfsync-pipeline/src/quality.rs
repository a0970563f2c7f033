//! Data-quality gates, checked on each change before it is merged: schema checks from describe
//! (text length, restricted picklist values), required fields, rules per field (`not_null`,
//! `accepted_values`, `regex`, `range`, `unique`) with severity `error` (the change is held in
//! the quarantine) or `warn` (applied, the failure recorded), and referential integrity for
//! configured lookups (a child whose parent has not arrived waits in the quarantine and is
//! released when the parent arrives; an alert is raised after a configured time).
//!
//! A change answers for the fields it sets (a create for all of them, an update for those it
//! changes or nulls). A delete is never held. A record with a held change holds its later changes too
//! (rule [`RECORD_HELD`]), so a release applies them in their order.

use std::collections::{HashMap, HashSet};

use regex::Regex;
use sfsync_salesforce::rest::ObjectDescribe;
use sfsync_store::Value;

use crate::error::{PipelineError, Result};
use crate::model::ObjectMapping;
use crate::normalize::{Op, RecordChange};

/// The rule of a change held because an earlier change of its record is held.
pub const RECORD_HELD: &str = "record.held";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The change is held in the quarantine.
    Error,
    /// The change is applied and the failure recorded.
    Warn,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warn => "warn",
        }
    }
}

/// A check on one field, as configured.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckSpec {
    NotNull,
    AcceptedValues(Vec<String>),
    /// Must match (unanchored; write `^…$` to anchor).
    Regex(String),
    Range {
        min: Option<f64>,
        max: Option<f64>,
    },
    /// No other live record of the object has the same value.
    Unique,
}

impl CheckSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            CheckSpec::NotNull => "not_null",
            CheckSpec::AcceptedValues(_) => "accepted_values",
            CheckSpec::Regex(_) => "regex",
            CheckSpec::Range { .. } => "range",
            CheckSpec::Unique => "unique",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub field: String,
    pub check: CheckSpec,
    pub severity: Severity,
}

/// A lookup whose parent must exist before the child is merged.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceSpec {
    pub field: String,
    pub parent: String,
    /// After this long in the quarantine a waiting child raises an alert (it keeps waiting).
    pub alert_after_secs: u64,
}

/// The data-quality configuration of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct QualitySpec {
    /// Fields that must not be null (severity error).
    pub required: Vec<String>,
    pub rules: Vec<RuleSpec>,
    pub references: Vec<ReferenceSpec>,
    /// Text length and restricted picklist values from describe (severity error).
    pub schema_checks: bool,
}

impl Default for QualitySpec {
    fn default() -> Self {
        QualitySpec {
            required: Vec::new(),
            rules: Vec::new(),
            references: Vec::new(),
            schema_checks: true,
        }
    }
}

#[derive(Debug, Clone)]
enum Check {
    NotNull,
    Accepted(HashSet<String>),
    Regex(Regex),
    Range { min: Option<f64>, max: Option<f64> },
    Unique,
    MaxLength(usize),
    Picklist(HashSet<String>),
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// `Email.regex`, `LastName.required`, `Subject.length`.
    pub name: String,
    pub field: String,
    pub column: usize,
    pub pii: bool,
    check: Check,
    pub severity: Severity,
}

impl Rule {
    pub fn is_unique(&self) -> bool {
        matches!(self.check, Check::Unique)
    }
}

#[derive(Debug, Clone)]
pub struct Reference {
    /// `AccountId.reference`.
    pub name: String,
    pub field: String,
    pub column: usize,
    pub parent: String,
    pub alert_after_ms: i64,
}

/// The compiled checks of one object.
#[derive(Debug, Clone, Default)]
pub struct ObjectGate {
    pub rules: Vec<Rule>,
    pub references: Vec<Reference>,
}

/// One failed check.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub rule: String,
    pub field: String,
    pub severity: Severity,
    pub message: String,
    /// The value as text; `None` for PII fields and nulls.
    pub value: Option<String>,
    /// For a missing parent: (object, id) and the alert delay.
    pub parent: Option<(String, String, i64)>,
}

/// What the checks need to know beyond the change and its row.
pub trait Lookups {
    /// The parent record exists (live) in the warehouse, in the batch being committed or
    /// earlier in this batch.
    fn parent_exists(&self, object: &str, id: &str) -> bool;
    /// Another live record of `object` than `id` has `value` in `column`.
    fn value_taken(&self, object: &str, column: usize, value: &str, id: &str) -> bool;
}

impl ObjectGate {
    /// Compiles `spec` against the object's columns. Problems (a field describe does not know,
    /// a bad pattern, a range without bounds) are returned, one message per rule, and that
    /// rule is left out: at start they are configuration errors; after a schema change the
    /// remaining rules keep running and the problems are reported.
    pub fn compile(
        mapping: &ObjectMapping,
        describe: &ObjectDescribe,
        spec: &QualitySpec,
    ) -> (ObjectGate, Vec<String>) {
        let object = mapping.object().to_string();
        let mut gate = ObjectGate::default();
        let mut problems = Vec::new();
        let cols = &mapping.model.columns;
        let column = |field: &str, what: &str, problems: &mut Vec<String>| {
            let c = mapping.column_of_field(field);
            if c.is_none() {
                problems.push(format!(
                    "{what} names field '{field}', which is not a stored field of {object} (describe)"
                ));
            }
            c
        };
        if spec.schema_checks {
            for (i, c) in cols.iter().enumerate().skip(1) {
                let Some(f) = describe.field(&c.field) else {
                    continue;
                };
                let text_like = matches!(
                    f.field_type.as_str(),
                    "string" | "textarea" | "email" | "phone" | "url" | "picklist"
                );
                if text_like && f.length > 0 {
                    gate.rules.push(Rule {
                        name: format!("{}.length", c.field),
                        field: c.field.clone(),
                        column: i,
                        pii: c.pii,
                        check: Check::MaxLength(f.length as usize),
                        severity: Severity::Error,
                    });
                }
                if f.field_type == "picklist" && f.restricted_picklist {
                    let values: HashSet<String> = f
                        .picklist_values
                        .iter()
                        .filter(|p| p.active)
                        .map(|p| p.value.clone())
                        .collect();
                    if !values.is_empty() {
                        gate.rules.push(Rule {
                            name: format!("{}.picklist", c.field),
                            field: c.field.clone(),
                            column: i,
                            pii: c.pii,
                            check: Check::Picklist(values),
                            severity: Severity::Error,
                        });
                    }
                }
            }
        }
        for f in &spec.required {
            if let Some(i) = column(f, "required", &mut problems) {
                gate.rules.push(Rule {
                    name: format!("{}.required", cols[i].field),
                    field: cols[i].field.clone(),
                    column: i,
                    pii: cols[i].pii,
                    check: Check::NotNull,
                    severity: Severity::Error,
                });
            }
        }
        for r in &spec.rules {
            let what = format!("rule {} on {}", r.check.kind(), r.field);
            let Some(i) = column(&r.field, &what, &mut problems) else {
                continue;
            };
            let check = match &r.check {
                CheckSpec::NotNull => Check::NotNull,
                CheckSpec::AcceptedValues(v) => Check::Accepted(v.iter().cloned().collect()),
                CheckSpec::Regex(p) => match Regex::new(p) {
                    Ok(re) => Check::Regex(re),
                    Err(e) => {
                        problems.push(format!("{what}: pattern does not compile: {e}"));
                        continue;
                    }
                },
                CheckSpec::Range { min, max } => {
                    if min.is_none() && max.is_none() {
                        problems.push(format!("{what}: give min, max or both"));
                        continue;
                    }
                    Check::Range {
                        min: *min,
                        max: *max,
                    }
                }
                CheckSpec::Unique => {
                    if cols[i].pii {
                        problems.push(format!(
                            "{what}: a PII field is stored sealed and cannot be checked for uniqueness"
                        ));
                        continue;
                    }
                    if !matches!(
                        cols[i].ty,
                        sfsync_store::ColumnType::Text | sfsync_store::ColumnType::Integer
                    ) {
                        problems.push(format!(
                            "{what}: uniqueness is checked on text and integer fields only"
                        ));
                        continue;
                    }
                    Check::Unique
                }
            };
            gate.rules.push(Rule {
                name: format!("{}.{}", cols[i].field, r.check.kind()),
                field: cols[i].field.clone(),
                column: i,
                pii: cols[i].pii,
                check,
                severity: r.severity,
            });
        }
        for r in &spec.references {
            if let Some(i) = column(&r.field, &format!("reference {}", r.field), &mut problems) {
                gate.references.push(Reference {
                    name: format!("{}.reference", cols[i].field),
                    field: cols[i].field.clone(),
                    column: i,
                    parent: r.parent.clone(),
                    alert_after_ms: (r.alert_after_secs as i64).saturating_mul(1000),
                });
            }
        }
        (gate, problems)
    }

    /// [`Self::compile`] for start-up: any problem is a configuration error naming the rule.
    pub fn compile_strict(
        mapping: &ObjectMapping,
        describe: &ObjectDescribe,
        spec: &QualitySpec,
    ) -> Result<ObjectGate> {
        let (gate, problems) = Self::compile(mapping, describe, spec);
        if problems.is_empty() {
            Ok(gate)
        } else {
            Err(PipelineError::config(mapping.object(), problems.join("; ")))
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.references.is_empty()
    }

    /// Failed checks of `ch` (none for a delete). A change answers for the fields it sets: a
    /// create or snapshot for every field (absent ones are null), an update for the fields it
    /// changes or nulls — a value it leaves alone was checked when it was set.
    pub fn check(
        &self,
        mapping: &ObjectMapping,
        ch: &RecordChange,
        lookups: &dyn Lookups,
    ) -> Vec<Failure> {
        if ch.op == Op::Delete || self.is_empty() {
            return Vec::new();
        }
        // The change's values by column, found once (a create carries every column).
        let mut by_column: Vec<Option<&Value>> = vec![None; mapping.model.columns.len()];
        for (c, v) in &ch.values {
            if let Some(slot) = by_column.get_mut(*c) {
                *slot = Some(v);
            }
        }
        let value = |column: usize| -> Option<&Value> {
            if let Some(v) = by_column.get(column).copied().flatten() {
                return Some(v);
            }
            if ch.diffs.iter().any(|(c, _)| *c == column) {
                // A diff against the stored text: not known until applied; not checked.
                return None;
            }
            (ch.op == Op::Full).then_some(&Value::Null)
        };
        let mut out = Vec::new();
        for r in &self.rules {
            let Some(v) = value(r.column) else { continue };
            if v.is_null() && !matches!(r.check, Check::NotNull) {
                continue;
            }
            let text = text_of(v);
            let fail = |message: String| Failure {
                rule: r.name.clone(),
                field: r.field.clone(),
                severity: r.severity,
                message,
                value: if r.pii { None } else { as_text(v) },
                parent: None,
            };
            let shown = || {
                if r.pii {
                    "(PII value)".to_string()
                } else {
                    format!("'{}'", text.as_deref().unwrap_or_default())
                }
            };
            match &r.check {
                Check::NotNull => {
                    if v.is_null() {
                        out.push(fail(format!("{} is null", r.field)));
                    }
                }
                Check::Accepted(set) | Check::Picklist(set) => {
                    if !text.as_deref().is_some_and(|t| set.contains(t)) {
                        let what = match r.check {
                            Check::Picklist(_) => "an active value of the restricted picklist",
                            _ => "an accepted value",
                        };
                        out.push(fail(format!("{} {} is not {what}", r.field, shown())));
                    }
                }
                Check::Regex(re) => {
                    if !text.as_deref().is_some_and(|t| re.is_match(t)) {
                        out.push(fail(format!(
                            "{} {} does not match /{}/",
                            r.field,
                            shown(),
                            re.as_str()
                        )));
                    }
                }
                Check::Range { min, max } => match as_f64(v) {
                    Some(n) => {
                        if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                            out.push(fail(format!(
                                "{} {} is outside [{}, {}]",
                                r.field,
                                shown(),
                                min.map_or("-inf".into(), |m| m.to_string()),
                                max.map_or("inf".into(), |m| m.to_string())
                            )));
                        }
                    }
                    None => out.push(fail(format!("{} {} is not a number", r.field, shown()))),
                },
                Check::MaxLength(n) => {
                    // Bytes bound characters from above: count only when it could be over.
                    let t = text.as_deref().unwrap_or_default();
                    if t.len() > *n {
                        let len = t.chars().count();
                        if len > *n {
                            out.push(fail(format!(
                                "{} is {len} characters, longer than the {n} describe allows",
                                r.field
                            )));
                        }
                    }
                }
                Check::Unique => {
                    if let Some(t) = text.as_deref() {
                        if lookups.value_taken(mapping.object(), r.column, t, &ch.id) {
                            out.push(fail(format!(
                                "{} {} is already used by another {}",
                                r.field,
                                shown(),
                                mapping.object()
                            )));
                        }
                    }
                }
            }
        }
        for r in &self.references {
            let Some(Value::Text(parent_id)) = value(r.column) else {
                continue;
            };
            if !lookups.parent_exists(&r.parent, parent_id) {
                out.push(Failure {
                    rule: r.name.clone(),
                    field: r.field.clone(),
                    severity: Severity::Error,
                    message: format!(
                        "{} {} {parent_id} has not arrived: waiting for it",
                        r.field, r.parent
                    ),
                    value: Some(parent_id.clone()),
                    parent: Some((r.parent.clone(), parent_id.clone(), r.alert_after_ms)),
                });
            }
        }
        out
    }

    /// The parent ids `ch` would reference, as (parent object, id).
    pub fn referenced(&self, ch: &RecordChange) -> Vec<(String, String)> {
        self.references
            .iter()
            .filter_map(|r| match ch.values.iter().find(|(c, _)| *c == r.column) {
                Some((_, Value::Text(id))) => Some((r.parent.clone(), id.clone())),
                _ => None,
            })
            .collect()
    }

    /// The values `ch` would set in unique columns, as (column, value).
    pub fn unique_values(&self, ch: &RecordChange) -> Vec<(usize, String)> {
        self.rules
            .iter()
            .filter(|r| r.is_unique())
            .filter_map(|r| {
                ch.values
                    .iter()
                    .find(|(c, _)| *c == r.column)
                    .and_then(|(_, v)| as_text(v))
                    .map(|t| (r.column, t))
            })
            .collect()
    }
}

/// Text of a value for checks, borrowed when it is text (`None` for null).
fn text_of(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::Text(s) => Some(std::borrow::Cow::Borrowed(s.as_str())),
        other => as_text(other).map(std::borrow::Cow::Owned),
    }
}

/// Text of a value for checks (`None` for null).
pub fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::Int(i) => Some(i.to_string()),
        Value::Real(f) => Some(f.to_string()),
        Value::Text(s) => Some(s.clone()),
        Value::Date(d) => Some(d.to_string()),
        Value::Timestamp(t) => Some(t.to_string()),
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Real(f) => Some(*f),
        Value::Text(s) => s.trim().parse().ok(),
        Value::Date(d) => Some(f64::from(*d)),
        Value::Timestamp(t) => Some(*t as f64),
        _ => None,
    }
}

/// Per (object, rule): failures stored so far (for the cap) — loaded at start, counted on.
#[derive(Debug, Default, Clone)]
pub struct StoredFailures(pub HashMap<(String, String), u64>);

/// A held change as stored in the quarantine: a [`RecordChange`] with field API names instead
/// of column indexes (columns can be added between holding and releasing).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeldChange {
    pub id: String,
    /// `full`, `patch` or `delete`.
    pub op: String,
    pub change_type: String,
    pub version: sfsync_core::RecordVersion,
    pub values: Vec<(String, Value)>,
    pub diffs: Vec<(String, String)>,
    pub deleted: bool,
    pub fields: Vec<String>,
    pub event_key: String,
    pub transaction_key: String,
    pub replay_id: Option<sfsync_core::ReplayId>,
    pub commit_user: String,
    pub change_origin: String,
    pub origin_client: Option<String>,
    pub source: sfsync_store::ChangeSource,
}

impl HeldChange {
    pub fn from_change(mapping: &ObjectMapping, ch: &RecordChange) -> HeldChange {
        let cols = &mapping.model.columns;
        HeldChange {
            id: ch.id.clone(),
            op: match ch.op {
                Op::Full => "full",
                Op::Patch => "patch",
                Op::Delete => "delete",
            }
            .into(),
            change_type: ch.change_type.to_string(),
            version: ch.version,
            values: ch
                .values
                .iter()
                .map(|(c, v)| (cols[*c].field.clone(), v.clone()))
                .collect(),
            diffs: ch
                .diffs
                .iter()
                .map(|(c, d)| (cols[*c].field.clone(), d.clone()))
                .collect(),
            deleted: ch.deleted,
            fields: ch.fields.clone(),
            event_key: ch.event_key.clone(),
            transaction_key: ch.transaction_key.clone(),
            replay_id: ch.replay_id.clone(),
            commit_user: ch.commit_user.clone(),
            change_origin: ch.change_origin.clone(),
            origin_client: ch.origin_client.clone(),
            source: ch.source,
        }
    }

    /// The change on `mapping`'s columns; a field that is no longer stored is dropped (and
    /// named in the returned list).
    pub fn into_change(self, mapping: &ObjectMapping) -> Result<(RecordChange, Vec<String>)> {
        let object = mapping.object().to_string();
        let bad = |what: String| PipelineError::bad_change("release", &object, &self.id, what);
        let op = match self.op.as_str() {
            "full" => Op::Full,
            "patch" => Op::Patch,
            "delete" => Op::Delete,
            other => return Err(bad(format!("unknown operation '{other}'"))),
        };
        let change_type = match self.change_type.as_str() {
            "CREATE" => "CREATE",
            "UPDATE" => "UPDATE",
            "DELETE" => "DELETE",
            "UNDELETE" => "UNDELETE",
            "SNAPSHOT" => "SNAPSHOT",
            "PURGED" => "PURGED",
            crate::outbound::CHANGE_TYPE => crate::outbound::CHANGE_TYPE,
            other => return Err(bad(format!("unknown change type '{other}'"))),
        };
        let mut dropped = Vec::new();
        let mut values = Vec::with_capacity(self.values.len());
        for (f, v) in self.values {
            match mapping.column_of_field(&f) {
                Some(c) => values.push((c, v)),
                None => dropped.push(f),
            }
        }
        let mut diffs = Vec::new();
        for (f, d) in self.diffs {
            match mapping.column_of_field(&f) {
                Some(c) => diffs.push((c, d)),
                None => dropped.push(f),
            }
        }
        Ok((
            RecordChange {
                id: self.id,
                op,
                change_type,
                version: self.version,
                values,
                diffs,
                deleted: self.deleted,
                fields: self.fields,
                event_key: self.event_key,
                transaction_key: self.transaction_key,
                replay_id: self.replay_id,
                commit_user: self.commit_user,
                change_origin: self.change_origin,
                origin_client: self.origin_client,
                source: self.source,
            },
            dropped,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ObjectSpec;
    use crate::plan::{GateRun, Planner};
    use sfsync_core::RecordVersion;
    use sfsync_store::{ChangeSource, CuratedBatch, QuarantineUpdate};

    const NAME: usize = 1;
    const EMAIL: usize = 2;
    const STATUS: usize = 3;
    const SCORE: usize = 4;
    const ACCOUNT: usize = 5;
    const CODE: usize = 6;

    fn describe(object: &str) -> ObjectDescribe {
        let f =
            |n: &str, t: &str, len: i64| serde_json::json!({"name": n, "type": t, "length": len});
        let mut status = f("Status__c", "picklist", 40);
        status["restrictedPicklist"] = true.into();
        status["picklistValues"] = serde_json::json!([
            {"active": true, "value": "Open"}, {"active": true, "value": "Closed"},
            {"active": false, "value": "Legacy"}]);
        serde_json::from_value(serde_json::json!({
            "name": object,
            "fields": [f("Id", "id", 18), f("LastName", "string", 10), f("Email", "email", 80),
                       status, f("Score__c", "double", 0), f("AccountId", "reference", 18),
                       f("Code__c", "string", 20)]
        }))
        .unwrap()
    }

    fn mapping(quality: QualitySpec) -> ObjectMapping {
        let mut spec = ObjectSpec::new("Contact");
        spec.pii_fields = vec!["Email".into()];
        spec.quality = quality;
        let m = ObjectMapping::build(&describe("Contact"), &spec).unwrap();
        assert_eq!(m.column_of_field("Code__c"), Some(CODE));
        assert_eq!(m.column_of_field("Email"), Some(EMAIL));
        m
    }

    fn rule(field: &str, check: CheckSpec, severity: Severity) -> RuleSpec {
        RuleSpec {
            field: field.into(),
            check,
            severity,
        }
    }

    fn change(id: &str, op: Op, ts: i64, values: Vec<(usize, Value)>) -> RecordChange {
        RecordChange {
            id: id.into(),
            op,
            change_type: if op == Op::Full { "CREATE" } else { "UPDATE" },
            version: RecordVersion {
                commit_timestamp: ts,
                commit_number: ts,
                sequence_number: 1,
            },
            values,
            diffs: vec![],
            deleted: false,
            fields: vec![],
            event_key: format!("tx{ts}/1/{id}"),
            transaction_key: format!("tx{ts}"),
            replay_id: None,
            commit_user: String::new(),
            change_origin: String::new(),
            origin_client: None,
            source: ChangeSource::Cdc,
        }
    }

    fn good(id: &str, ts: i64) -> RecordChange {
        let t = |s: &str| Value::Text(s.into());
        change(
            id,
            Op::Full,
            ts,
            vec![
                (NAME, t("Lovelace")),
                (EMAIL, t("ada@example.org")),
                (STATUS, t("Open")),
                (SCORE, Value::Real(5.0)),
                (CODE, t("A-1")),
            ],
        )
    }

    fn with(mut ch: RecordChange, col: usize, v: Value) -> RecordChange {
        ch.values.retain(|(c, _)| *c != col);
        ch.values.push((col, v));
        ch
    }

    struct Out {
        batch: CuratedBatch,
        rows: HashMap<(String, String), sfsync_store::CurrentRow>,
        gate: GateRun,
    }

    fn run(m: ObjectMapping, changes: Vec<RecordChange>, gate: GateRun) -> Out {
        let mut mappings = HashMap::new();
        mappings.insert("Contact".to_string(), m);
        let planner = Planner {
            mappings: &mappings,
            run_id: "run-1",
            own_client: "sfsync",
            now_ms: 1_000,
            deliver: false,
        };
        let mut gate = gate;
        gate.begin_batch(1_000);
        gate.log_offset = Some(7);
        let mut rows = HashMap::new();
        let mut batch = CuratedBatch::default();
        let list: Vec<(String, RecordChange)> =
            changes.into_iter().map(|c| ("Contact".into(), c)).collect();
        planner.plan_gated(&mut rows, &list, &mut batch, Some(&mut gate));
        gate.finish_batch(&mut batch);
        Out { batch, rows, gate }
    }

    fn gate() -> GateRun {
        GateRun::new(100, "run-1", StoredFailures::default())
    }

    fn held_rules(o: &Out) -> Vec<&str> {
        o.batch.quarantine.iter().map(|q| q.rule.as_str()).collect()
    }

    /// Every rule kind holds a failing change and lets a passing one through.
    #[test]
    fn each_rule_kind_holds_failures_and_passes_good_data() {
        let t = |s: &str| Value::Text(s.into());
        let cases: Vec<(QualitySpec, RecordChange, &str)> = vec![
            (
                QualitySpec {
                    required: vec!["LastName".into()],
                    ..Default::default()
                },
                with(good("003A", 1), NAME, Value::Null),
                "LastName.required",
            ),
            (
                QualitySpec {
                    rules: vec![rule("Code__c", CheckSpec::NotNull, Severity::Error)],
                    ..Default::default()
                },
                with(good("003A", 1), CODE, Value::Null),
                "Code__c.not_null",
            ),
            (
                QualitySpec {
                    rules: vec![rule(
                        "Code__c",
                        CheckSpec::AcceptedValues(vec!["A-1".into(), "B-2".into()]),
                        Severity::Error,
                    )],
                    ..Default::default()
                },
                with(good("003A", 1), CODE, t("Z-9")),
                "Code__c.accepted_values",
            ),
            (
                QualitySpec {
                    rules: vec![rule(
                        "Email",
                        CheckSpec::Regex("^[^@ ]+@[^@ ]+$".into()),
                        Severity::Error,
                    )],
                    ..Default::default()
                },
                with(good("003A", 1), EMAIL, t("not an address")),
                "Email.regex",
            ),
            (
                QualitySpec {
                    rules: vec![rule(
                        "Score__c",
                        CheckSpec::Range {
                            min: Some(0.0),
                            max: Some(10.0),
                        },
                        Severity::Error,
                    )],
                    ..Default::default()
                },
                with(good("003A", 1), SCORE, Value::Real(10.5)),
                "Score__c.range",
            ),
            (
                QualitySpec::default(),
                with(good("003A", 1), NAME, t("Longer than ten")),
                "LastName.length",
            ),
            (
                QualitySpec::default(),
                with(good("003A", 1), STATUS, t("Legacy")),
                "Status__c.picklist",
            ),
        ];
        for (spec, bad, rule_name) in cases {
            let o = run(mapping(spec.clone()), vec![good("003G", 1)], gate());
            assert!(
                o.batch.quarantine.is_empty(),
                "{rule_name}: good data passes"
            );
            assert!(o.rows.contains_key(&("Contact".into(), "003G".into())));
            let o = run(mapping(spec), vec![bad], gate());
            assert_eq!(held_rules(&o), vec![rule_name]);
            assert!(
                !o.rows.contains_key(&("Contact".into(), "003A".into())),
                "{rule_name}: a held change is not merged"
            );
            let q = &o.batch.quarantine[0];
            assert_eq!(q.log_offset, Some(7));
            assert!(q.change.is_some());
            let counts = &o.batch.dq_counts;
            assert_eq!(counts.len(), 1);
            assert_eq!((counts[0].failed, counts[0].stored), (1, 1));
            assert_eq!(o.batch.audit[0].outcome, "quarantined");
        }
    }

    /// The PII field's value is never quoted in a reason or stored in a sample.
    #[test]
    fn pii_values_are_never_quoted() {
        let spec = QualitySpec {
            rules: vec![rule("Email", CheckSpec::Regex("@".into()), Severity::Warn)],
            ..Default::default()
        };
        let o = run(
            mapping(spec),
            vec![with(
                good("003A", 1),
                EMAIL,
                Value::Text("secret-value".into()),
            )],
            gate(),
        );
        assert!(o.batch.quarantine.is_empty(), "warn applies");
        assert!(o.rows.contains_key(&("Contact".into(), "003A".into())));
        let s = &o.batch.dq_failures[0];
        assert_eq!(s.value, None);
        assert!(!s.message.contains("secret-value"), "{}", s.message);
        assert_eq!(s.severity, "warn");
    }

    /// `unique`: a value another record holds (in the warehouse or earlier in the batch) fails.
    #[test]
    fn unique_fails_on_a_taken_value() {
        let spec = QualitySpec {
            rules: vec![rule("Code__c", CheckSpec::Unique, Severity::Error)],
            ..Default::default()
        };
        let mut g = gate();
        g.begin_batch(0);
        let o = run(
            mapping(spec.clone()),
            vec![good("003A", 1), good("003B", 2), good("003A", 3)],
            g,
        );
        // 003B takes A-1 after 003A did; 003A's own later change keeps it.
        assert_eq!(held_rules(&o), vec!["Code__c.unique"]);
        assert_eq!(o.batch.quarantine[0].record_id, "003B");
        // Taken in the warehouse (as the apply stage loads it before planning).
        let mut mappings = HashMap::new();
        mappings.insert("Contact".to_string(), mapping(spec));
        let planner = Planner {
            mappings: &mappings,
            run_id: "r",
            own_client: "sfsync",
            now_ms: 0,
            deliver: false,
        };
        let mut g = gate();
        g.begin_batch(0);
        g.taken
            .insert(("Contact".into(), CODE, "A-1".into()), "003Z".into());
        let mut batch = CuratedBatch::default();
        planner.plan_gated(
            &mut HashMap::new(),
            &[("Contact".into(), good("003C", 1))],
            &mut batch,
            Some(&mut g),
        );
        assert_eq!(batch.quarantine.len(), 1);
    }

    /// A child waits for its parent; a parent earlier in the batch (or known to the store)
    /// lets it through; its later changes wait behind it.
    #[test]
    fn late_parent_holds_child_and_its_later_changes() {
        let spec = QualitySpec {
            references: vec![ReferenceSpec {
                field: "AccountId".into(),
                parent: "Account".into(),
                alert_after_secs: 60,
            }],
            ..Default::default()
        };
        let child = with(good("003A", 1), ACCOUNT, Value::Text("001P".into()));
        let later = change(
            "003A",
            Op::Patch,
            2,
            vec![(NAME, Value::Text("Byron".into()))],
        );
        let o = run(mapping(spec.clone()), vec![child.clone(), later], gate());
        assert_eq!(held_rules(&o), vec!["AccountId.reference", RECORD_HELD]);
        let q = &o.batch.quarantine[0];
        assert_eq!(q.parent, Some(("Account".into(), "001P".into())));
        assert_eq!(q.alert_after_ms, Some(1_000 + 60_000));
        assert!(o.rows.is_empty(), "nothing of the record is merged");
        // The parent is known: the child goes through.
        let mut g = gate();
        g.begin_batch(0);
        let mut mappings = HashMap::new();
        mappings.insert("Contact".to_string(), mapping(spec));
        let planner = Planner {
            mappings: &mappings,
            run_id: "r",
            own_client: "sfsync",
            now_ms: 0,
            deliver: false,
        };
        g.parents.insert(("Account".into(), "001P".into()));
        let mut batch = CuratedBatch::default();
        planner.plan_gated(
            &mut HashMap::new(),
            &[("Contact".into(), child)],
            &mut batch,
            Some(&mut g),
        );
        assert!(batch.quarantine.is_empty());
        assert_eq!(batch.audit[0].outcome, "applied");
    }

    /// Releasing: a change that now passes is released with its rows; one that still fails
    /// stays held with the new reason; a forced one is applied without checks.
    #[test]
    fn release_applies_or_keeps_holding() {
        let spec = QualitySpec {
            required: vec!["LastName".into()],
            ..Default::default()
        };
        let mut mappings = HashMap::new();
        mappings.insert("Contact".to_string(), mapping(spec));
        let planner = Planner {
            mappings: &mappings,
            run_id: "r",
            own_client: "sfsync",
            now_ms: 0,
            deliver: false,
        };
        let mut g = gate();
        g.begin_batch(0);
        let mut rows = HashMap::new();
        let mut batch = CuratedBatch::default();
        g.release = Some((41, false));
        planner.plan_gated(
            &mut rows,
            &[("Contact".into(), good("003A", 1))],
            &mut batch,
            Some(&mut g),
        );
        let bad = with(good("003B", 1), NAME, Value::Null);
        g.release = Some((42, false));
        planner.plan_gated(
            &mut rows,
            &[("Contact".into(), bad.clone())],
            &mut batch,
            Some(&mut g),
        );
        g.release = Some((43, true));
        planner.plan_gated(
            &mut rows,
            &[("Contact".into(), bad)],
            &mut batch,
            Some(&mut g),
        );
        assert_eq!(batch.quarantine, vec![], "no new entries for releases");
        assert_eq!(batch.quarantine_updates.len(), 3);
        assert_eq!(
            batch.quarantine_updates[0],
            QuarantineUpdate::Released { id: 41 }
        );
        assert!(matches!(&batch.quarantine_updates[1],
            QuarantineUpdate::StillHeld { id: 42, rule, .. } if rule == "LastName.required"));
        assert_eq!(
            batch.quarantine_updates[2],
            QuarantineUpdate::Released { id: 43 }
        );
        assert!(rows.contains_key(&("Contact".into(), "003A".into())));
        assert!(
            rows.contains_key(&("Contact".into(), "003B".into())),
            "forced"
        );
    }

    /// Over the cap a failure is counted, a warn sample is not stored, and a held change keeps
    /// only its raw-log offset.
    #[test]
    fn cap_counts_over_the_limit_and_stores_compact_entries() {
        let spec = QualitySpec {
            required: vec!["LastName".into()],
            rules: vec![rule("Code__c", CheckSpec::NotNull, Severity::Warn)],
            ..Default::default()
        };
        let changes: Vec<RecordChange> = (0..5)
            .map(|i| {
                let c = with(good(&format!("003{i}"), i), NAME, Value::Null);
                with(c, CODE, Value::Null)
            })
            .collect();
        let o = run(
            mapping(spec),
            changes,
            GateRun::new(2, "run-1", StoredFailures::default()),
        );
        assert_eq!(o.batch.quarantine.len(), 5, "every failing change is held");
        let bodies = o
            .batch
            .quarantine
            .iter()
            .filter(|q| q.change.is_some())
            .count();
        assert_eq!(bodies, 2);
        assert!(o.batch.quarantine.iter().all(|q| q.log_offset == Some(7)));
        assert_eq!(o.batch.dq_failures.len(), 2);
        let by_rule: HashMap<&str, (u64, u64, u64)> = o
            .batch
            .dq_counts
            .iter()
            .map(|c| (c.rule.as_str(), (c.failed, c.stored, c.over_cap)))
            .collect();
        assert_eq!(by_rule["LastName.required"], (5, 2, 3));
        assert_eq!(by_rule["Code__c.not_null"], (5, 2, 3));
        assert_eq!(
            o.gate.stored.0[&("Contact".to_string(), "LastName.required".to_string())],
            2
        );
    }

    /// A held change survives its trip through the store's JSON form.
    #[test]
    fn held_change_round_trips() {
        let m = mapping(QualitySpec::default());
        let mut ch = good("003A", 9);
        ch.diffs = vec![(CODE, "@@ -1 +1 @@".into())];
        let json = serde_json::to_vec(&HeldChange::from_change(&m, &ch)).unwrap();
        let back: HeldChange = serde_json::from_slice(&json).unwrap();
        let (got, dropped) = back.into_change(&m).unwrap();
        assert!(dropped.is_empty());
        assert_eq!(got, ch);
    }

    /// Rules on unknown fields, bad patterns and empty ranges are reported by rule.
    #[test]
    fn bad_rules_are_reported() {
        let spec = QualitySpec {
            required: vec!["Nope__c".into()],
            rules: vec![
                rule("Code__c", CheckSpec::Regex("(".into()), Severity::Error),
                rule(
                    "Score__c",
                    CheckSpec::Range {
                        min: None,
                        max: None,
                    },
                    Severity::Warn,
                ),
                rule("Email", CheckSpec::Unique, Severity::Error),
            ],
            ..Default::default()
        };
        let mut s = ObjectSpec::new("Contact");
        s.pii_fields = vec!["Email".into()];
        s.quality = spec;
        let m = ObjectMapping::build(&describe("Contact"), &s).unwrap();
        assert_eq!(m.gate_problems.len(), 4, "{:?}", m.gate_problems);
        assert!(m.gate_problems[0].contains("Nope__c"));
    }
}
