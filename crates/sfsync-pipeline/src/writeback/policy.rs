//! Field ownership and conflict policy for writes to Salesforce.
//!
//! Pure: [`decide`] takes a write, the curated row of its record (if the warehouse has one) and
//! the policy, and returns per field whether it applies, is rejected (with the reason), is a
//! conflict (Salesforce's value against the writer's, for a person), or is held with the write's
//! conflicts. It never does I/O and gives the same answer for the same input.
//!
//! Rules:
//! - Ownership is enforced under every policy: a field owned by `salesforce` is never written,
//!   and a field owned by a named system is written only by that system. `shared` fields may be
//!   written by any system.
//! - A *conflict* is Salesforce having changed the field after the version the writer saw
//!   (`seen_version_ms`), decided from the curated row's per-field commit times
//!   ([`crate::plan::field_commit_ms`]). A write that saw no version conflicts with every field
//!   Salesforce has set. A changed field whose Salesforce value equals the written one is no
//!   conflict.
//! - `source_of_truth`: the owner's writes apply without a conflict check.
//! - `last_write_wins`: a conflict goes to whichever changed later (the write's time against
//!   the field's commit time); a tie keeps Salesforce's value.
//! - `merge`: non-conflicting fields apply now, conflicting ones are queued for a person.
//! - `manual`: if any field of the write conflicts, the whole write waits for a person.
//! - A deleted record is never written (a write must not resurrect a delete); an unknown record
//!   has no Salesforce changes to conflict with (an upsert by External Id creates it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sfsync_store::{CurrentRow, Value};

use crate::plan::field_commit_ms;

/// Who owns a field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    /// Only Salesforce users and automation change it; writeback never does.
    Salesforce,
    /// Only this system (`case_mgmt`) writes it back.
    System(String),
    /// Any system may write it; conflicts are settled by the policy.
    Shared,
}

impl Owner {
    /// Parses `salesforce`, `shared`, or a system name.
    pub fn parse(s: &str) -> Owner {
        match s {
            "salesforce" => Owner::Salesforce,
            "shared" => Owner::Shared,
            other => Owner::System(other.to_string()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Owner::Salesforce => "salesforce".into(),
            Owner::System(s) => format!("system '{s}'"),
            Owner::Shared => "shared".into(),
        }
    }
}

/// How a conflict is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    SourceOfTruth,
    LastWriteWins,
    Merge,
    Manual,
}

/// Ownership and policy of one field (or an object's default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRule {
    pub owner: Owner,
    pub policy: ConflictPolicy,
}

/// The writeback rules of one object: a default and per-field overrides (by field API name,
/// compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPolicy {
    pub default: FieldRule,
    pub fields: BTreeMap<String, FieldRule>,
}

impl ObjectPolicy {
    pub fn rule(&self, field: &str) -> &FieldRule {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(field))
            .map(|(_, r)| r)
            .unwrap_or(&self.default)
    }
}

/// Writeback rules of every configured object (by object API name).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WritebackPolicy {
    pub objects: BTreeMap<String, ObjectPolicy>,
}

/// The write being decided.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteRequest {
    pub source_system: String,
    pub object: String,
    /// Field API name → value (JSON `null` sets a null).
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// The record version the writer last saw (epoch ms); `None`: it saw none.
    pub seen_version_ms: Option<i64>,
    /// When the writer made the change (epoch ms; the write's acceptance time when it gave
    /// none) — compared under `last_write_wins`.
    pub changed_at_ms: i64,
    /// The values this writer's own earlier writes to the record set in Salesforce, per field
    /// (writes accepted before this one and applied): a Salesforce value equal to one of them
    /// is the writer's own change, never a conflict with its later write. All of them count, not
    /// only the newest: two earlier writes to one record (one by Id, one by External Id) may
    /// have reached Salesforce in either order.
    pub own_values: BTreeMap<String, Vec<serde_json::Value>>,
}

/// What happens to one field of a write.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldDecision {
    Apply,
    Reject {
        reason: String,
    },
    /// Salesforce changed it since the writer's version: a person picks a side or a value.
    Conflict {
        /// Salesforce's current value (`None`: null).
        salesforce: Option<Value>,
        writer: serde_json::Value,
        /// Commit time of Salesforce's change (epoch ms).
        salesforce_changed_ms: i64,
    },
    /// Not conflicting itself, but waits with the write's conflicts (`manual`).
    Hold,
}

/// Decides every field of `write` against the record's curated row (`None`: the warehouse does
/// not know the record). Pure.
pub fn decide(
    policy: &WritebackPolicy,
    write: &WriteRequest,
    row: Option<&CurrentRow>,
) -> BTreeMap<String, FieldDecision> {
    let reject_all = |reason: String| {
        write
            .fields
            .keys()
            .map(|f| {
                (
                    f.clone(),
                    FieldDecision::Reject {
                        reason: reason.clone(),
                    },
                )
            })
            .collect()
    };
    let Some(object) = policy.objects.get(&write.object) else {
        return reject_all(format!(
            "object {} is not configured for writeback ([[writeback.objects]])",
            write.object
        ));
    };
    if let Some(r) = row.filter(|r| r.deleted) {
        return reject_all(format!(
            "{} {} is deleted in Salesforce; a write would not resurrect it",
            write.object, r.id
        ));
    }
    let mut out = BTreeMap::new();
    let mut manual_conflict = false;
    for (field, value) in &write.fields {
        let rule = object.rule(field);
        let owned_by_writer = match &rule.owner {
            Owner::Salesforce => false,
            Owner::System(s) => *s == write.source_system,
            Owner::Shared => true,
        };
        if !owned_by_writer {
            out.insert(
                field.clone(),
                FieldDecision::Reject {
                    reason: format!(
                        "{}.{field} is owned by {}; {} may not write it",
                        write.object,
                        rule.owner.describe(),
                        write.source_system
                    ),
                },
            );
            continue;
        }
        let decision = match (rule.policy, row) {
            (ConflictPolicy::SourceOfTruth, _) | (_, None) => FieldDecision::Apply,
            (policy, Some(row)) => {
                let column = field.to_ascii_lowercase();
                let current = row.values.get(&column);
                let changed_ms = field_commit_ms(row, &column);
                let changed_since = match write.seen_version_ms {
                    Some(seen) => changed_ms > seen,
                    None => current.is_some(),
                };
                let own = write
                    .own_values
                    .get(field)
                    .is_some_and(|mine| mine.iter().any(|v| same_value(current, v)));
                if !changed_since || same_value(current, value) || own {
                    FieldDecision::Apply
                } else {
                    match policy {
                        ConflictPolicy::LastWriteWins if write.changed_at_ms > changed_ms => {
                            FieldDecision::Apply
                        }
                        ConflictPolicy::LastWriteWins => FieldDecision::Reject {
                            reason: format!(
                                "Salesforce changed {}.{field} at {changed_ms} ms, not before the \
                                 write ({} ms): last write wins keeps Salesforce's value",
                                write.object, write.changed_at_ms
                            ),
                        },
                        _ => {
                            if policy == ConflictPolicy::Manual {
                                manual_conflict = true;
                            }
                            FieldDecision::Conflict {
                                salesforce: current.cloned(),
                                writer: value.clone(),
                                salesforce_changed_ms: changed_ms,
                            }
                        }
                    }
                }
            }
        };
        out.insert(field.clone(), decision);
    }
    if manual_conflict {
        for (field, d) in out.iter_mut() {
            if *d == FieldDecision::Apply && object.rule(field).policy == ConflictPolicy::Manual {
                *d = FieldDecision::Hold;
            }
        }
    }
    out
}

/// Whether Salesforce's value equals the written JSON value (absent = null). Dates and
/// timestamps are compared only when both are null (a conflict is reported otherwise: safe).
fn same_value(current: Option<&Value>, written: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (current, written) {
        (None | Some(Value::Null), J::Null) => true,
        (Some(Value::Text(a)), J::String(b)) => a == b,
        (Some(Value::Bool(a)), J::Bool(b)) => a == b,
        (Some(Value::Int(a)), J::Number(b)) => b.as_i64() == Some(*a),
        (Some(Value::Real(a)), J::Number(b)) => b.as_f64() == Some(*a),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfsync_core::RecordVersion;
    use sfsync_store::{ChangeSource, SyncMeta};

    const T: i64 = 1_000_000;

    fn v(ms: i64) -> RecordVersion {
        RecordVersion {
            commit_timestamp: ms,
            commit_number: 1,
            sequence_number: 0,
        }
    }

    /// A Case row fully written at `T`, then `status` changed at `T + 500`.
    fn row(deleted: bool) -> CurrentRow {
        CurrentRow {
            id: "500000000000001AAA".into(),
            values: BTreeMap::from([
                ("status".to_string(), Value::Text("Escalated".into())),
                ("subject".to_string(), Value::Text("Printer".into())),
                ("priority".to_string(), Value::Text("High".into())),
            ]),
            meta: SyncMeta {
                version: v(T + 500),
                change_type: "UPDATE".into(),
                source: ChangeSource::Cdc,
                transaction_key: "tx".into(),
                replay_id: None,
                run_id: "r".into(),
                applied_at_ms: T + 600,
                origin_client: None,
            },
            deleted,
            base_version: v(T),
            field_versions: Some(r#"{"status":[1000500,1,0]}"#.into()),
            history_version: None,
            partial: false,
        }
    }

    fn rule(owner: &str, policy: ConflictPolicy) -> FieldRule {
        FieldRule {
            owner: Owner::parse(owner),
            policy,
        }
    }

    fn policy(default: FieldRule, fields: &[(&str, FieldRule)]) -> WritebackPolicy {
        WritebackPolicy {
            objects: BTreeMap::from([(
                "Case".to_string(),
                ObjectPolicy {
                    default,
                    fields: fields
                        .iter()
                        .map(|(f, r)| (f.to_string(), r.clone()))
                        .collect(),
                },
            )]),
        }
    }

    fn write(fields: serde_json::Value, seen: Option<i64>, at: i64) -> WriteRequest {
        WriteRequest {
            source_system: "case_mgmt".into(),
            object: "Case".into(),
            fields: fields.as_object().unwrap().clone(),
            seen_version_ms: seen,
            changed_at_ms: at,
            own_values: BTreeMap::new(),
        }
    }

    fn conflict(sf: &str, writer: &str) -> FieldDecision {
        FieldDecision::Conflict {
            salesforce: Some(Value::Text(sf.into())),
            writer: serde_json::json!(writer),
            salesforce_changed_ms: T + 500,
        }
    }

    fn is_reject(d: &FieldDecision, words: &str) -> bool {
        matches!(d, FieldDecision::Reject { reason } if reason.contains(words))
    }

    /// Status changed in Salesforce after the writer's version (T + 100); Subject did not.
    fn stale_write() -> WriteRequest {
        write(
            serde_json::json!({"Status": "Closed", "Subject": "Toner"}),
            Some(T + 100),
            T + 900,
        )
    }

    #[test]
    fn source_of_truth_applies_the_owners_write_without_a_conflict_check() {
        let p = policy(rule("case_mgmt", ConflictPolicy::SourceOfTruth), &[]);
        let d = decide(&p, &stale_write(), Some(&row(false)));
        assert_eq!(d["Status"], FieldDecision::Apply);
        assert_eq!(d["Subject"], FieldDecision::Apply);
    }

    #[test]
    fn source_of_truth_rejects_a_non_owner_with_the_reason() {
        let p = policy(rule("payments", ConflictPolicy::SourceOfTruth), &[]);
        let d = decide(&p, &stale_write(), Some(&row(false)));
        assert!(is_reject(
            &d["Status"],
            "Case.Status is owned by system 'payments'"
        ));
        assert!(is_reject(&d["Subject"], "case_mgmt may not write it"));
    }

    #[test]
    fn fields_owned_by_salesforce_or_another_system_are_rejected_under_any_policy() {
        let p = policy(
            rule("shared", ConflictPolicy::Merge),
            &[
                ("Status", rule("salesforce", ConflictPolicy::LastWriteWins)),
                ("subject", rule("payments", ConflictPolicy::Merge)),
            ],
        );
        let d = decide(&p, &stale_write(), Some(&row(false)));
        assert!(is_reject(&d["Status"], "owned by salesforce"));
        assert!(is_reject(&d["Subject"], "owned by system 'payments'"));
    }

    #[test]
    fn last_write_wins_by_change_time() {
        let p = policy(rule("shared", ConflictPolicy::LastWriteWins), &[]);
        let newer = decide(&p, &stale_write(), Some(&row(false)));
        assert_eq!(newer["Status"], FieldDecision::Apply);
        let mut older = stale_write();
        older.changed_at_ms = T + 400;
        let d = decide(&p, &older, Some(&row(false)));
        assert!(is_reject(
            &d["Status"],
            "last write wins keeps Salesforce's value"
        ));
        assert_eq!(d["Subject"], FieldDecision::Apply, "not changed since");
        older.changed_at_ms = T + 500;
        let tie = decide(&p, &older, Some(&row(false)));
        assert!(
            matches!(tie["Status"], FieldDecision::Reject { .. }),
            "a tie keeps Salesforce"
        );
    }

    #[test]
    fn the_writers_own_earlier_value_is_not_a_conflict() {
        // Salesforce's Status changed after the writer's version, to the value the writer's own
        // earlier write set (its echo): no conflict under any policy; another value still is.
        for policy in [
            ConflictPolicy::LastWriteWins,
            ConflictPolicy::Merge,
            ConflictPolicy::Manual,
        ] {
            let p = policy_of(policy);
            let mut w = stale_write();
            w.changed_at_ms = T + 400;
            w.own_values.insert(
                "Status".into(),
                vec![serde_json::json!("New"), serde_json::json!("Escalated")],
            );
            let d = decide(&p, &w, Some(&row(false)));
            assert_eq!(d["Status"], FieldDecision::Apply, "{policy:?}");
            w.own_values
                .insert("Status".into(), vec![serde_json::json!("Working")]);
            let d = decide(&p, &w, Some(&row(false)));
            assert_ne!(d["Status"], FieldDecision::Apply, "{policy:?}");
        }
    }

    fn policy_of(p: ConflictPolicy) -> WritebackPolicy {
        policy(rule("shared", p), &[])
    }

    #[test]
    fn merge_applies_the_rest_and_queues_the_conflict() {
        let p = policy(rule("shared", ConflictPolicy::Merge), &[]);
        let d = decide(&p, &stale_write(), Some(&row(false)));
        assert_eq!(d["Status"], conflict("Escalated", "Closed"));
        assert_eq!(d["Subject"], FieldDecision::Apply);
    }

    #[test]
    fn manual_holds_the_whole_write_on_any_conflict() {
        let p = policy(rule("shared", ConflictPolicy::Manual), &[]);
        let d = decide(&p, &stale_write(), Some(&row(false)));
        assert_eq!(d["Status"], conflict("Escalated", "Closed"));
        assert_eq!(d["Subject"], FieldDecision::Hold);
        let fresh = write(
            serde_json::json!({"Status": "Closed", "Subject": "Toner"}),
            Some(T + 500),
            T + 900,
        );
        let d = decide(&p, &fresh, Some(&row(false)));
        assert!(d.values().all(|d| *d == FieldDecision::Apply), "{d:?}");
    }

    #[test]
    fn the_same_value_is_no_conflict() {
        let p = policy(rule("shared", ConflictPolicy::Manual), &[]);
        let w = write(serde_json::json!({"Status": "Escalated"}), Some(T), T + 900);
        assert_eq!(
            decide(&p, &w, Some(&row(false)))["Status"],
            FieldDecision::Apply
        );
    }

    #[test]
    fn null_values() {
        let p = policy(rule("shared", ConflictPolicy::Merge), &[]);
        // Nulling a field Salesforce changed is a conflict with a null writer value.
        let w = write(serde_json::json!({"Status": null}), Some(T + 100), T + 900);
        let d = decide(&p, &w, Some(&row(false)));
        assert!(
            matches!(&d["Status"], FieldDecision::Conflict { writer, .. } if writer.is_null()),
            "{d:?}"
        );
        // A field that is null (absent) in Salesforce and written null: no conflict, even blind.
        let w = write(serde_json::json!({"Description": null}), None, T + 900);
        assert_eq!(
            decide(&p, &w, Some(&row(false)))["Description"],
            FieldDecision::Apply
        );
        // A field Salesforce never set, written with a value by a blind writer: nothing to
        // conflict with.
        let w = write(serde_json::json!({"Description": "x"}), None, T + 900);
        assert_eq!(
            decide(&p, &w, Some(&row(false)))["Description"],
            FieldDecision::Apply
        );
    }

    #[test]
    fn a_blind_write_conflicts_with_every_field_salesforce_set() {
        let p = policy(rule("shared", ConflictPolicy::Merge), &[]);
        let w = write(serde_json::json!({"Subject": "Toner"}), None, T + 900);
        assert!(matches!(
            decide(&p, &w, Some(&row(false)))["Subject"],
            FieldDecision::Conflict { salesforce_changed_ms, .. } if salesforce_changed_ms == T
        ));
    }

    #[test]
    fn unknown_records_have_nothing_to_conflict_with() {
        let p = policy(rule("shared", ConflictPolicy::Manual), &[]);
        let d = decide(&p, &stale_write(), None);
        assert!(d.values().all(|d| *d == FieldDecision::Apply), "{d:?}");
        // Ownership still holds.
        let p = policy(rule("salesforce", ConflictPolicy::Manual), &[]);
        let d = decide(&p, &stale_write(), None);
        assert!(is_reject(&d["Status"], "owned by salesforce"));
    }

    #[test]
    fn deleted_records_are_never_written() {
        let p = policy(rule("case_mgmt", ConflictPolicy::SourceOfTruth), &[]);
        let d = decide(&p, &stale_write(), Some(&row(true)));
        assert_eq!(d.len(), 2);
        assert!(d.values().all(|d| is_reject(d, "is deleted in Salesforce")));
    }

    #[test]
    fn unconfigured_objects_are_rejected() {
        let p = policy(rule("shared", ConflictPolicy::Merge), &[]);
        let mut w = stale_write();
        w.object = "Account".into();
        let d = decide(&p, &w, None);
        assert!(d
            .values()
            .all(|d| is_reject(d, "Account is not configured")));
    }

    #[test]
    fn field_rules_match_case_insensitively_and_fall_back_to_the_default() {
        let p = policy(
            rule("shared", ConflictPolicy::Merge),
            &[("STATUS", rule("case_mgmt", ConflictPolicy::SourceOfTruth))],
        );
        let d = decide(&p, &stale_write(), Some(&row(false)));
        assert_eq!(d["Status"], FieldDecision::Apply, "owner's source of truth");
        assert_eq!(
            d["Subject"],
            FieldDecision::Apply,
            "default merge, unchanged"
        );
    }
}
