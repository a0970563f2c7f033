//! Turns a decoded change event (or a re-read record) into per-record changes on curated
//! columns. Pure. A merged event (several record ids) becomes one change per record; gap and
//! overflow events become repair and re-sync requests; values that do not fit their column are
//! errors naming the object, record and field.

use sfsync_core::{Change, ChangeType, EventKey, RecordVersion, ReplayId};
use sfsync_store::{ChangeSource, RepairRequest, ResyncRequest, Value};

use crate::convert;
use crate::error::{PipelineError, Result};
use crate::model::ObjectMapping;

/// What a change does to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Every column is given (CREATE, UNDELETE, a snapshot).
    Full,
    /// Only the given columns change (UPDATE).
    Patch,
    Delete,
}

/// One change to one record, on curated columns.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordChange {
    pub id: String,
    pub op: Op,
    /// `CREATE`, `UPDATE`, `DELETE`, `UNDELETE` or `SNAPSHOT`.
    pub change_type: &'static str,
    pub version: RecordVersion,
    /// (column index, value); for `Full`, every column but `id` (absent columns are null), except
    /// formula columns in a change event's (it never carries them; they are left as they are).
    pub values: Vec<(usize, Value)>,
    /// (column index, unified diff) for long text sent as a diff.
    pub diffs: Vec<(usize, String)>,
    /// For a snapshot: the record is deleted in Salesforce (queryAll `IsDeleted`).
    pub deleted: bool,
    /// Field API names set or nulled (audit).
    pub fields: Vec<String>,
    pub event_key: String,
    pub transaction_key: String,
    pub replay_id: Option<ReplayId>,
    pub commit_user: String,
    pub change_origin: String,
    pub origin_client: Option<String>,
    pub source: ChangeSource,
}

/// A change event, normalised.
#[derive(Debug, Clone, PartialEq)]
pub enum Normalized {
    Records(Vec<RecordChange>),
    /// GAP_CREATE / GAP_UPDATE / GAP_DELETE / GAP_UNDELETE: re-read these records.
    Repair(RepairRequest),
    /// GAP_OVERFLOW: re-sync the object from the event's commit time.
    Resync(ResyncRequest),
}

/// Normalises a decoded CDC event of `mapping`'s object received on `channel`.
pub fn from_cdc(mapping: &ObjectMapping, channel: &str, change: &Change) -> Result<Normalized> {
    let h = &change.header;
    let object = mapping.object();
    let Some(ct) = h.change_type else {
        return Err(PipelineError::bad_change(
            "normalize",
            object,
            &h.record_ids.join(","),
            "the change event header has no changeType",
        ));
    };
    let first_key = change
        .event_keys()
        .into_iter()
        .next()
        .map(|k| k.as_str().to_string());
    if ct == ChangeType::GapOverflow {
        return Ok(Normalized::Resync(ResyncRequest {
            object: object.to_string(),
            channel: channel.to_string(),
            from_ms: h.commit_timestamp,
            reason: ct.as_str().to_string(),
            event_key: first_key,
        }));
    }
    if ct.is_gap() {
        return Ok(Normalized::Repair(RepairRequest {
            object: object.to_string(),
            record_ids: h.record_ids.clone(),
            reason: ct.as_str().to_string(),
            event_key: first_key.unwrap_or_default(),
            commit_timestamp_ms: h.commit_timestamp,
        }));
    }
    let (op, label) = match ct {
        ChangeType::Create => (Op::Full, "CREATE"),
        ChangeType::Undelete => (Op::Full, "UNDELETE"),
        ChangeType::Update => (Op::Patch, "UPDATE"),
        ChangeType::Delete => (Op::Delete, "DELETE"),
        _ => unreachable!("gap types handled above"),
    };
    let record_hint = h.record_ids.first().map(String::as_str).unwrap_or("");
    let mut values: Vec<(usize, Value)> = Vec::new();
    let mut diffs = Vec::new();
    let mut fields = Vec::new();
    if op != Op::Delete {
        for (path, v) in &change.fields {
            set_path(mapping, path, v, record_hint, &mut values, &mut diffs)?;
            if op == Op::Patch {
                fields.push(path.clone());
            }
        }
        if op == Op::Full {
            fields = values
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(c, _)| mapping.model.columns[*c].field.clone())
                .collect();
            fill_absent(mapping, &mut values);
        }
    }
    let origin_client = h.origin_client().map(str::to_string);
    let n = h.record_ids.len();
    let mut records = Vec::with_capacity(n);
    for (i, id) in h.record_ids.iter().enumerate() {
        // The last (usually the only) record takes the values; the others get copies.
        let (values, diffs, fields) = if i + 1 == n {
            (
                std::mem::take(&mut values),
                std::mem::take(&mut diffs),
                std::mem::take(&mut fields),
            )
        } else {
            (values.clone(), diffs.clone(), fields.clone())
        };
        records.push(RecordChange {
            id: id.clone(),
            op,
            change_type: label,
            version: h.version(),
            values,
            diffs,
            deleted: false,
            fields,
            event_key: EventKey::new(&h.transaction_key, h.sequence_number, id)
                .as_str()
                .to_string(),
            transaction_key: h.transaction_key.clone(),
            replay_id: Some(change.replay_id.clone()),
            commit_user: h.commit_user.clone(),
            change_origin: h.change_origin.clone(),
            origin_client: origin_client.clone(),
            source: ChangeSource::Cdc,
        });
    }
    Ok(Normalized::Records(records))
}

/// Sets the column(s) of one change-event path.
fn set_path(
    mapping: &ObjectMapping,
    path: &str,
    v: &sfsync_core::FieldValue,
    record: &str,
    values: &mut Vec<(usize, Value)>,
    diffs: &mut Vec<(usize, String)>,
) -> Result<()> {
    use sfsync_core::FieldValue;
    let object = mapping.object();
    let bad = |field: &str, reason: String| {
        PipelineError::bad_change(
            "normalize",
            object,
            record,
            format!("field {field}: {reason}"),
        )
    };
    if let Some(c) = mapping.column_of_path(path) {
        match v {
            FieldValue::Diff { patch, .. } => diffs.push((c, patch.clone())),
            _ => {
                let ty = mapping.model.columns[c].ty;
                values.push((c, convert::from_avro(ty, v).map_err(|e| bad(path, e))?));
            }
        }
        return Ok(());
    }
    if let Some(components) = mapping.compound(path) {
        for (name, c) in components {
            let cv = match v {
                FieldValue::Null => &FieldValue::Null,
                FieldValue::Record(_) => v.get(name).unwrap_or(&FieldValue::Null),
                other => {
                    return Err(bad(
                        path,
                        format!("compound field carries a {other:?} instead of a record"),
                    ))
                }
            };
            let ty = mapping.model.columns[*c].ty;
            values.push((*c, convert::from_avro(ty, cv).map_err(|e| bad(path, e))?));
        }
        return Ok(());
    }
    // A field the curated model does not have (formula, or added after the model was built and
    // not yet described): not stored. The schema-drift path adds it when the schema id changes.
    tracing::trace!(
        object,
        field = path,
        "Change-event field without a curated column."
    );
    Ok(())
}

/// For a full row from a change event: every column not given is null — except formula
/// columns, which change events never carry: they keep their values (a formula refresh or a
/// snapshot sets them).
fn fill_absent(mapping: &ObjectMapping, values: &mut Vec<(usize, Value)>) {
    let mut given = vec![false; mapping.model.columns.len()];
    for (c, _) in values.iter() {
        given[*c] = true;
    }
    for c in &mapping.formula_columns {
        given[*c] = true;
    }
    for (c, g) in given.iter().enumerate().skip(1) {
        if !g {
            values.push((c, Value::Null));
        }
    }
    values.sort_by_key(|(c, _)| *c);
    values.dedup_by_key(|(c, _)| *c);
}

/// Normalises a record re-read through SOQL/REST (`queryAll`, with `SystemModstamp` and
/// `IsDeleted`) as a full snapshot. Its version is (SystemModstamp, 0, 0): older than any
/// stream change committed in the same millisecond, so a stream change is never overwritten by
/// a snapshot that might predate it; re-applying a change the snapshot already reflects is
/// harmless.
pub fn from_record(
    mapping: &ObjectMapping,
    record: &serde_json::Map<String, serde_json::Value>,
) -> Result<RecordChange> {
    let object = mapping.object();
    let id = record
        .get("Id")
        .and_then(|v| v.as_str())
        .ok_or_else(|| PipelineError::bad_change("snapshot", object, "?", "record has no Id"))?
        .to_string();
    let modstamp = record
        .get("SystemModstamp")
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            PipelineError::bad_change("snapshot", object, &id, "record has no SystemModstamp")
        })
        .and_then(|s| {
            convert::parse_datetime(s)
                .map_err(|e| PipelineError::bad_change("snapshot", object, &id, e))
        })?;
    let deleted = record
        .get("IsDeleted")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let mut values = Vec::with_capacity(mapping.model.columns.len());
    for (c, col) in mapping.model.columns.iter().enumerate().skip(1) {
        let v = record.get(&col.field).unwrap_or(&serde_json::Value::Null);
        let v = convert::from_json(col.ty, v).map_err(|e| {
            PipelineError::bad_change("snapshot", object, &id, format!("field {}: {e}", col.field))
        })?;
        values.push((c, v));
    }
    let fields = values
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(c, _)| mapping.model.columns[*c].field.clone())
        .collect();
    Ok(RecordChange {
        event_key: format!("snapshot/{id}/{modstamp}"),
        id,
        op: Op::Full,
        change_type: "SNAPSHOT",
        version: RecordVersion {
            commit_timestamp: modstamp,
            commit_number: 0,
            sequence_number: 0,
        },
        values,
        diffs: Vec::new(),
        deleted,
        fields,
        transaction_key: String::new(),
        replay_id: None,
        commit_user: String::new(),
        change_origin: String::new(),
        origin_client: None,
        source: ChangeSource::Snapshot,
    })
}

/// Where each column of a mapping is in a Bulk query result (from its header row).
#[derive(Debug, Clone)]
pub struct CsvColumns {
    id: usize,
    modstamp: usize,
    deleted: Option<usize>,
    /// (column index in the model, position in the row).
    columns: Vec<(usize, usize)>,
}

impl CsvColumns {
    /// Matches a result header against the mapping: `Id` and `SystemModstamp` must be there;
    /// model columns missing from the header are reported by name.
    pub fn new(mapping: &ObjectMapping, header: &[String]) -> Result<CsvColumns> {
        let object = mapping.object();
        let pos = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
        let need = |name: &str| {
            pos(name).ok_or_else(|| {
                PipelineError::bad_change(
                    "bulk results",
                    object,
                    "-",
                    format!("the result header has no {name} column (header: {header:?})"),
                )
            })
        };
        let id = need("Id")?;
        let modstamp = need("SystemModstamp")?;
        let mut columns = Vec::with_capacity(mapping.model.columns.len());
        let mut missing = Vec::new();
        for (c, col) in mapping.model.columns.iter().enumerate().skip(1) {
            match pos(&col.field) {
                Some(p) => columns.push((c, p)),
                None => missing.push(col.field.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(PipelineError::bad_change(
                "bulk results",
                object,
                "-",
                format!("the result header lacks fields of the model: {missing:?}"),
            ));
        }
        Ok(CsvColumns {
            id,
            modstamp,
            deleted: pos("IsDeleted"),
            columns,
        })
    }

    /// Matches the result header of a formula refresh (`Id`, `SystemModstamp` and the mapping's
    /// formula fields) against the mapping: [`from_csv`] then gives the formula columns only.
    pub fn formulas(mapping: &ObjectMapping, header: &[String]) -> Result<CsvColumns> {
        let object = mapping.object();
        let pos = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
        let bad = |what: String| {
            PipelineError::bad_change(
                "bulk results",
                object,
                "-",
                format!("{what} (header: {header:?})"),
            )
        };
        let id = pos("Id").ok_or_else(|| bad("the result header has no Id column".into()))?;
        let modstamp = pos("SystemModstamp")
            .ok_or_else(|| bad("the result header has no SystemModstamp column".into()))?;
        let mut columns = Vec::with_capacity(mapping.formula_columns.len());
        let mut missing = Vec::new();
        for &c in &mapping.formula_columns {
            let field = &mapping.model.columns[c].field;
            match pos(field) {
                Some(p) => columns.push((c, p)),
                None => missing.push(field.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(bad(format!(
                "the result header lacks formula fields of the model: {missing:?}"
            )));
        }
        Ok(CsvColumns {
            id,
            modstamp,
            deleted: None,
            columns,
        })
    }

    /// The record id of a row (for errors before the row is converted).
    pub fn id<'a>(&self, row: &sfsync_salesforce::bulk::csv::CsvRow<'a>) -> &'a str {
        row.get(self.id).unwrap_or("")
    }
}

/// A Bulk query result row as a full snapshot of the record, versioned at its SystemModstamp
/// (so it never overwrites a streamed change that is newer, and a streamed change committed in
/// the same millisecond wins over it).
pub fn from_csv(
    mapping: &ObjectMapping,
    cols: &CsvColumns,
    row: &sfsync_salesforce::bulk::csv::CsvRow<'_>,
) -> Result<RecordChange> {
    let object = mapping.object();
    let id = row.get(cols.id).unwrap_or("");
    if id.is_empty() {
        return Err(PipelineError::bad_change(
            "snapshot",
            object,
            "?",
            "row has no Id",
        ));
    }
    let modstamp = convert::parse_datetime(row.get(cols.modstamp).unwrap_or("")).map_err(|e| {
        PipelineError::bad_change("snapshot", object, id, format!("SystemModstamp: {e}"))
    })?;
    let deleted = match cols.deleted.and_then(|p| row.get(p)) {
        None | Some("") | Some("false") | Some("FALSE") => false,
        Some("true") | Some("TRUE") => true,
        Some(other) => {
            return Err(PipelineError::bad_change(
                "snapshot",
                object,
                id,
                format!("IsDeleted: '{other}' is not a boolean"),
            ))
        }
    };
    let mut values = Vec::with_capacity(cols.columns.len());
    let mut fields = Vec::new();
    for &(c, p) in &cols.columns {
        let col = &mapping.model.columns[c];
        let v = convert::from_csv(col.ty, row.get(p).unwrap_or("")).map_err(|e| {
            PipelineError::bad_change("snapshot", object, id, format!("field {}: {e}", col.field))
        })?;
        if !v.is_null() {
            fields.push(col.field.clone());
        }
        values.push((c, v));
    }
    Ok(RecordChange {
        event_key: format!("snapshot/{id}/{modstamp}"),
        id: id.to_string(),
        op: Op::Full,
        change_type: "SNAPSHOT",
        version: RecordVersion {
            commit_timestamp: modstamp,
            commit_number: 0,
            sequence_number: 0,
        },
        values,
        diffs: Vec::new(),
        deleted,
        fields,
        transaction_key: String::new(),
        replay_id: None,
        commit_user: String::new(),
        change_origin: String::new(),
        origin_client: None,
        source: ChangeSource::Snapshot,
    })
}

/// A record that a re-read did not return at all (purged from Salesforce, or never visible):
/// applied as a delete at the time of the request that asked for it, marked `PURGED` in
/// `_sf_change_type` (and the audit trail) so it can be told from a delete the stream reported.
pub fn purged(id: &str, at_ms: i64) -> RecordChange {
    RecordChange {
        id: id.to_string(),
        op: Op::Delete,
        change_type: "PURGED",
        version: RecordVersion {
            commit_timestamp: at_ms,
            commit_number: 0,
            sequence_number: 0,
        },
        values: Vec::new(),
        diffs: Vec::new(),
        deleted: true,
        fields: Vec::new(),
        event_key: format!("purged/{id}/{at_ms}"),
        transaction_key: String::new(),
        replay_id: None,
        commit_user: String::new(),
        change_origin: String::new(),
        origin_client: None,
        source: ChangeSource::Snapshot,
    }
}
