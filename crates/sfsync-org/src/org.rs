//! The org's records and its DML. Every call to [`Org::execute`] is one transaction: one
//! transaction key, one commit timestamp (ms) and commit number, sequence numbers per change in
//! the order the changes were made, the commit user and the change origin. Several operations on
//! the same record in one transaction commit as one change with the first operation's change type
//! and the final values (as Salesforce CDC reports them). Listeners see committed transactions in
//! commit order, exactly once each.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use sfsync_core::SfId;

use crate::drift::{DriftAction, DriftEntry};
use crate::store::{self, CObject, FKind, Record, State, Store};
use crate::value::{self, Val};
use crate::{CsvQueryOptions, CsvQueryResult, Drift, FieldType, Fields, Schema, SfError};

/// Which API made a call; shows up in `changeOrigin` as `com/salesforce/api/<api>/<version>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    Rest,
    Soap,
    BulkApi,
    /// The emulator's admin API (seeding); change origin is empty, like internal changes.
    Admin,
}

impl ApiKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKind::Rest => "rest",
            ApiKind::Soap => "soap",
            ApiKind::BulkApi => "bulkapi",
            ApiKind::Admin => "",
        }
    }
}

/// Who is calling and how: the commit user and change origin of the transaction.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub user_id: SfId,
    pub api: ApiKind,
    /// e.g. "66.0".
    pub api_version: String,
    /// The `client=` value of `Sforce-Call-Options`, if the caller sent one.
    pub client: Option<String>,
}

impl CallContext {
    /// `com/salesforce/api/rest/66.0;client=sfsync`, or without `;client=` when no client id
    /// was sent; empty for admin changes.
    pub fn change_origin(&self) -> String {
        if self.api == ApiKind::Admin {
            return String::new();
        }
        match &self.client {
            Some(c) => format!(
                "com/salesforce/api/{}/{};client={}",
                self.api.as_str(),
                self.api_version,
                c
            ),
            None => format!(
                "com/salesforce/api/{}/{}",
                self.api.as_str(),
                self.api_version
            ),
        }
    }
}

/// One DML operation. Field maps use API names as keys and REST JSON values (`null` clears).
#[derive(Debug, Clone)]
pub enum DmlOp {
    Insert {
        object: String,
        fields: Fields,
    },
    Update {
        object: String,
        id: String,
        fields: Fields,
    },
    /// Upsert by external id field (or `Id`): no match → insert, one match → update,
    /// several → error with status 300 and `matched_ids`.
    Upsert {
        object: String,
        external_id_field: String,
        external_id: String,
        fields: Fields,
    },
    /// Soft delete into the recycle bin (IsDeleted = true; visible to queryAll).
    Delete {
        id: String,
    },
    /// Restore from the recycle bin.
    Undelete {
        id: String,
    },
    /// Permanent delete: gone from queries, queryAll and retrieve; no change event (as Salesforce).
    HardDelete {
        id: String,
    },
}

/// What a successful operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmlOutcome {
    Created(SfId),
    Updated(SfId),
    Deleted(SfId),
    Undeleted(SfId),
    HardDeleted(SfId),
}

impl DmlOutcome {
    pub fn id(&self) -> SfId {
        match self {
            DmlOutcome::Created(id)
            | DmlOutcome::Updated(id)
            | DmlOutcome::Deleted(id)
            | DmlOutcome::Undeleted(id)
            | DmlOutcome::HardDeleted(id) => *id,
        }
    }
}

/// The result of one operation: its outcome, or the errors that stopped it.
pub type DmlResult = Result<DmlOutcome, Vec<SfError>>;

/// CDC change type of one committed record change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChangeKind {
    Create,
    Update,
    Delete,
    Undelete,
}

/// One record's change inside a committed transaction.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecordChange {
    /// 1-based order of this change within its transaction.
    pub sequence_number: u32,
    pub object: String,
    pub record_id: SfId,
    pub change_type: ChangeKind,
    /// Fields whose value changed (UPDATE), including LastModifiedDate and LastModifiedById;
    /// never SystemModstamp, IsDeleted or formula fields. Empty for other change types.
    pub changed_fields: Vec<String>,
    /// Subset of `changed_fields` set to null.
    pub nulled_fields: Vec<String>,
    /// CREATE / UNDELETE: every non-formula field's value (null when empty), minus SystemModstamp
    /// and IsDeleted. UPDATE: the new values of `changed_fields`. DELETE: empty.
    pub values: Fields,
    /// UPDATE: the previous values of `changed_fields` (used to build text diffs). Else empty.
    pub old_values: Fields,
}

/// One committed transaction, in commit order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CommittedTransaction {
    /// UUID-like key shared by all changes of the transaction.
    pub transaction_key: String,
    /// Commit time, epoch milliseconds.
    pub commit_timestamp: i64,
    /// Strictly increasing commit number (SCN-like).
    pub commit_number: i64,
    pub commit_user: SfId,
    /// See [`CallContext::change_origin`].
    pub change_origin: String,
    pub changes: Vec<RecordChange>,
}

/// Called synchronously, in commit order, for every committed transaction that has changes.
pub type CommitListener = Arc<dyn Fn(&Arc<CommittedTransaction>) + Send + Sync>;

/// Org-wide settings.
#[derive(Debug, Clone)]
pub struct OrgConfig {
    /// The org id (`00D…`).
    pub org_id: SfId,
    /// Username of the admin user the credentials file names.
    pub admin_username: String,
}

/// The result of a SOQL query: rows in select-list order, ready to render as REST JSON records
/// or as Bulk CSV rows.
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    /// The queried object's API name (`AggregateResult` for `SELECT COUNT(field)`).
    pub object: String,
    /// Select-list paths in order, as written in the query but with canonical field-name case
    /// (e.g. `Id`, `Name`, `Account.Name`, `BillingAddress`). Empty for `SELECT COUNT()`.
    pub columns: Vec<String>,
    /// Row values in `columns` order. Compound fields are JSON objects; parent relationship
    /// paths are their leaf values (null when the parent is absent).
    pub rows: Vec<Vec<serde_json::Value>>,
    /// Each row's record id (for `attributes.url`).
    pub ids: Vec<SfId>,
    /// `COUNT()` result or number of rows.
    pub total_size: usize,
    /// True for `SELECT COUNT() …`.
    pub is_count: bool,
    /// Parent relationship paths the select list traverses (e.g. `Account`, `Account.Owner`),
    /// with the object type each one reaches. Used by [`QueryResult::record_json`] to nest parent
    /// fields with their own `attributes`.
    pub relations: Vec<QueryRelation>,
    /// Per row, the id of the parent record reached by each of `relations` (None = absent).
    /// Empty when `relations` is empty.
    pub parent_ids: Vec<Vec<Option<SfId>>>,
}

/// What a query returns, known before it runs (see [`Org::query_shape`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryShape {
    /// The queried object's API name (`AggregateResult` for `SELECT COUNT(field)`).
    pub object: String,
    /// Select-list paths in order (canonical field-name case); empty for `SELECT COUNT()`.
    pub columns: Vec<String>,
    /// True for `SELECT COUNT() …`.
    pub is_count: bool,
}

/// A parent relationship path of a query's select list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRelation {
    /// Canonical relationship path, e.g. `Account` or `Account.Owner`.
    pub path: String,
    /// The object type the path reaches, e.g. `User`.
    pub object: String,
}

impl QueryResult {
    #[allow(clippy::too_many_arguments)]
    fn put_nested(
        &self,
        m: &mut serde_json::Map<String, serde_json::Value>,
        parts: &[&str],
        prefix: &str,
        leaf: &str,
        v: &serde_json::Value,
        parents: Option<&Vec<Option<SfId>>>,
        api_version: &str,
    ) {
        use serde_json::{Map, Value};
        let Some((first, rest)) = parts.split_first() else {
            m.insert(leaf.to_string(), v.clone());
            return;
        };
        let path = if prefix.is_empty() {
            first.to_string()
        } else {
            format!("{prefix}.{first}")
        };
        let rel_idx = self.relations.iter().position(|r| r.path == path);
        let pid = rel_idx.and_then(|k| parents.and_then(|ps| ps.get(k)).copied().flatten());
        let entry = m
            .entry(first.to_string())
            .or_insert_with(|| match (pid, rel_idx) {
                (Some(id), Some(k)) => {
                    let mut inner = Map::new();
                    inner.insert(
                        "attributes".into(),
                        crate::store::attributes(&self.relations[k].object, &id, api_version),
                    );
                    Value::Object(inner)
                }
                _ => Value::Null,
            });
        if let Value::Object(inner) = entry {
            self.put_nested(inner, rest, &path, leaf, v, parents, api_version);
        }
    }

    /// REST JSON record for row `i`: `{"attributes": {"type", "url"}, <columns>…}` with parent
    /// relationship paths nested as objects with their own `attributes` (as Salesforce does).
    pub fn record_json(&self, i: usize, api_version: &str) -> serde_json::Value {
        use serde_json::{Map, Value};
        let mut rec = Map::new();
        match self.ids.get(i) {
            Some(id) => {
                rec.insert(
                    "attributes".into(),
                    crate::store::attributes(&self.object, id, api_version),
                );
            }
            None => {
                rec.insert(
                    "attributes".into(),
                    serde_json::json!({ "type": self.object }),
                );
            }
        }
        let Some(row) = self.rows.get(i) else {
            return Value::Object(rec);
        };
        let parents = self.parent_ids.get(i);
        for (col, v) in self.columns.iter().zip(row) {
            let mut parts: Vec<&str> = col.split('.').collect();
            let leaf = parts.pop().unwrap_or(col);
            if parts.is_empty() {
                rec.insert(leaf.to_string(), v.clone());
                continue;
            }
            self.put_nested(&mut rec, &parts, "", leaf, v, parents, api_version);
        }
        Value::Object(rec)
    }
}

/// The org: schema, records and the transaction log. Cheap to share (`Arc<Org>`); all methods
/// take `&self` and are safe to call from many threads. Reads (retrieve, query, snapshot) take a
/// shared lock and never block each other; writes are serialised by a commit lock, which also
/// orders journal appends and listener calls, so listeners see transactions in commit-number
/// order.
///
/// Deleting a parent (e.g. an Account with Contacts) is allowed and does not cascade: children
/// keep their reference, and relationship paths to a deleted parent read as null.
pub struct Org {
    pub(crate) state: RwLock<State>,
    pub(crate) side: Mutex<CommitSide>,
    config: OrgConfig,
    admin_user: SfId,
    integration_user: SfId,
}

/// What only writers touch: the journal and the listeners.
pub(crate) struct CommitSide {
    pub journal: Option<crate::persist::Journal>,
    pub listeners: Vec<CommitListener>,
}

/// Time the standard users were "created" (fixed so restarts reproduce them exactly).
const USERS_CREATED_MS: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z

fn err(status: u16, code: &str, msg: impl Into<String>) -> SfError {
    SfError::new(status, code, msg)
}

fn no_such_column(field: &str, object: &str) -> SfError {
    SfError::invalid_field(
        format!("No such column '{field}' on sobject of type {object}"),
        field,
    )
}

fn not_writable(field: &str) -> SfError {
    err(
        400,
        "INVALID_FIELD_FOR_INSERT_UPDATE",
        format!("Unable to create/update fields: {field}. Please check the security settings of this field and verify that it is read/write for your profile or permission set."),
    )
    .with_fields([field])
}

fn entity_is_deleted() -> SfError {
    err(404, "ENTITY_IS_DELETED", "entity is deleted")
}

fn malformed_id(id: &str) -> SfError {
    err(400, "MALFORMED_ID", format!("malformed id {id}"))
}

fn rolled_back() -> SfError {
    err(
        400,
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "Record rolled back because not all records were valid and the request was using AllOrNone header",
    )
}

/// One undo step: the previous content of a slot (or "pop" for a create).
struct Undo {
    obj: usize,
    slot: u32,
    prev: Option<Record>,
    created: bool,
}

/// One record's accumulated change within a transaction.
struct Pending {
    obj: usize,
    id: SfId,
    kind: ChangeKind,
    changed: Vec<usize>,
    old: Vec<(usize, Val)>,
}

#[derive(Default)]
struct TxBuilder {
    pending: Vec<Pending>,
    by_id: HashMap<SfId, usize>,
    hard_deleted: Vec<SfId>,
    created: Vec<(SfId, u32)>,
}

impl TxBuilder {
    fn touch(&mut self, obj: usize, id: SfId, kind: ChangeKind) -> &mut Pending {
        let n = self.pending.len();
        let i = *self.by_id.entry(id).or_insert(n);
        if i == n {
            self.pending.push(Pending {
                obj,
                id,
                kind,
                changed: Vec::new(),
                old: Vec::new(),
            });
        }
        &mut self.pending[i]
    }

    fn update(&mut self, obj: usize, id: SfId, changes: &[(usize, Val)]) {
        let p = self.touch(obj, id, ChangeKind::Update);
        if p.kind != ChangeKind::Update {
            return;
        }
        for (f, old) in changes {
            if !p.changed.contains(f) {
                p.changed.push(*f);
                p.old.push((*f, old.clone()));
            }
        }
    }
}

/// The values a CREATE / UNDELETE change carries.
pub(crate) fn create_values(c: &CObject, rec: &Record) -> Fields {
    let mut m = Fields::new();
    for &i in &c.change_fields {
        m.insert(c.fd(i).name.clone(), c.get(rec, i).to_json());
    }
    m
}

impl Org {
    /// An in-memory org with the given schema, the standard users (an admin named in `config`
    /// and an integration user) and no other records.
    ///
    /// Panics if the schema is inconsistent (a formula that does not parse, a reference to an
    /// unknown object); check user-supplied schemas with [`Schema::validate`] first.
    pub fn new(schema: Schema, config: OrgConfig) -> Org {
        let mut st = State::new(schema).unwrap_or_else(|e| panic!("invalid schema: {e}"));
        let (admin_user, integration_user) = create_standard_users(&mut st, &config);
        Org {
            state: RwLock::new(st),
            side: Mutex::new(CommitSide {
                journal: None,
                listeners: Vec::new(),
            }),
            config,
            admin_user,
            integration_user,
        }
    }

    /// An org persisted in `dir`: loads what an earlier run left (schema changes, records,
    /// recycle bin, id counters, commit number) and journals every commit so a restart (even
    /// after SIGKILL) recovers every acknowledged transaction.
    pub fn open(schema: Schema, config: OrgConfig, dir: &Path) -> anyhow::Result<Org> {
        let org = Org::new(schema, config);
        let journal = crate::persist::open(&org, dir)?;
        org.side.lock().journal = Some(journal);
        Ok(org)
    }

    /// Writes a snapshot of the whole org and truncates the journal (graceful shutdown). A no-op
    /// for in-memory orgs.
    pub fn checkpoint(&self) -> anyhow::Result<()> {
        let mut side = self.side.lock();
        let st = self.state.read();
        match side.journal.as_mut() {
            Some(j) => j.checkpoint(&st),
            None => Ok(()),
        }
    }

    pub fn org_id(&self) -> SfId {
        self.config.org_id
    }

    /// The admin user's id (commit user of calls authenticated as the admin).
    pub fn admin_user_id(&self) -> SfId {
        self.admin_user
    }

    /// The integration user's id.
    pub fn integration_user_id(&self) -> SfId {
        self.integration_user
    }

    /// The org's settings.
    pub fn config(&self) -> &OrgConfig {
        &self.config
    }

    /// The current schema (changes when fields are added).
    pub fn schema(&self) -> Arc<Schema> {
        self.state.read().schema.clone()
    }

    /// Adds a field to an object (admin endpoint; used to test schema changes).
    pub fn add_field(&self, object: &str, field: crate::FieldDef) -> Result<(), SfError> {
        let mut side = self.side.lock();
        let mut st = self.state.write();
        if st.compiled.object(object).is_none() {
            return Err(SfError::invalid_type(object));
        }
        st.add_field(object, field.clone())
            .map_err(|e| err(400, "INVALID_FIELD", e).with_fields([field.name.clone()]))?;
        let canonical = st
            .schema
            .object(object)
            .map(|o| o.name.clone())
            .unwrap_or_default();
        drop(st);
        if let Some(j) = side.journal.as_mut() {
            j.append(&crate::persist::Entry::AddField {
                object: canonical,
                field,
            })
            .map_err(|e| {
                err(
                    500,
                    "UNKNOWN_EXCEPTION",
                    format!("journal write failed: {e:#}"),
                )
            })?;
        }
        Ok(())
    }

    /// Registers a listener for committed transactions. Listeners run in commit order under the
    /// commit lock (after the state lock is released): they may read the org (retrieve, query)
    /// but must not write to it, or they would deadlock.
    pub fn add_commit_listener(&self, listener: CommitListener) {
        self.side.lock().listeners.push(listener);
    }

    /// Runs `ops` as ONE transaction. With `all_or_none`, any failure rolls everything back and
    /// the other operations report `ALL_OR_NONE_OPERATION_ROLLED_BACK`; otherwise the successful
    /// operations commit together and failures are reported per operation. Results are in input
    /// order.
    pub fn execute(&self, ctx: &CallContext, ops: Vec<DmlOp>, all_or_none: bool) -> Vec<DmlResult> {
        self.execute_at(ctx, ops, all_or_none, None)
    }

    /// [`Org::execute`] for a transaction that took its SystemModstamp at `stamped_ms` but
    /// commits only now — commit-order skew, as a long Salesforce transaction shows it to
    /// pollers: its rows appear behind rows already visible with a newer SystemModstamp. For
    /// tests of polling; the org's clock does not go back.
    pub fn execute_stamped(
        &self,
        ctx: &CallContext,
        ops: Vec<DmlOp>,
        all_or_none: bool,
        stamped_ms: i64,
    ) -> Vec<DmlResult> {
        self.execute_at(ctx, ops, all_or_none, Some(stamped_ms))
    }

    fn execute_at(
        &self,
        ctx: &CallContext,
        ops: Vec<DmlOp>,
        all_or_none: bool,
        stamped_ms: Option<i64>,
    ) -> Vec<DmlResult> {
        let mut side = self.side.lock();
        let mut st = self.state.write();
        let ts = stamped_ms.unwrap_or_else(|| value::now_ms().max(st.last_ts));
        let mut tx = TxBuilder::default();
        let mut undo: Vec<Undo> = Vec::new();
        let mut results: Vec<DmlResult> = Vec::with_capacity(ops.len());
        let mut failed = false;
        for op in ops {
            let mark = undo.len();
            match apply(&mut st, ctx, ts, op, &mut tx, &mut undo) {
                Ok(o) => results.push(Ok(o)),
                Err(e) => {
                    rollback(&mut st, &mut undo, mark);
                    failed = true;
                    results.push(Err(vec![e]));
                }
            }
        }
        if failed && all_or_none {
            rollback(&mut st, &mut undo, 0);
            for r in &mut results {
                if r.is_ok() {
                    *r = Err(vec![rolled_back()]);
                }
            }
            return results;
        }
        let committed = build_transaction(&mut st, ctx, ts, &tx);
        let deleted_flags: Vec<(SfId, bool)> = tx
            .pending
            .iter()
            .filter_map(|p| st.stores[p.obj].get(&p.id).map(|(_, r)| (p.id, r.deleted)))
            .collect();
        drop(st);
        if committed.is_none() && tx.hard_deleted.is_empty() {
            return results;
        }
        let committed = committed.map(Arc::new);
        if let Some(j) = side.journal.as_mut() {
            let entry = crate::persist::Entry::Tx {
                tx: committed.as_deref().cloned(),
                deleted: deleted_flags,
                hard_deleted: tx.hard_deleted.clone(),
                created: tx.created.clone(),
            };
            if let Err(e) = j.append(&entry) {
                tracing::error!(error = %format!("{e:#}"), "Journal append failed; the transaction is applied in memory only");
            }
        }
        if let Some(c) = &committed {
            for l in &side.listeners {
                l(c);
            }
        }
        drop(side);
        results
    }

    /// A record as REST returns it (`attributes` first, then fields in describe order, compound
    /// fields as objects, formula fields computed), optionally only `fields`.
    /// Deleted → 404 `ENTITY_IS_DELETED`; unknown → 404 `NOT_FOUND`.
    pub fn retrieve(
        &self,
        object: &str,
        id: &str,
        fields: Option<&[String]>,
        api_version: &str,
    ) -> Result<Fields, SfError> {
        let st = self.state.read();
        let (c, rec, sel) = live_record(&st, object, id, fields)?;
        Ok(c.record_json(rec, sel.as_deref(), api_version))
    }

    /// [`Org::retrieve`] rendered straight to REST JSON bytes (identical to serialising its
    /// result), for the hot single-record read path.
    pub fn retrieve_json(
        &self,
        object: &str,
        id: &str,
        fields: Option<&[String]>,
        api_version: &str,
    ) -> Result<Vec<u8>, SfError> {
        let st = self.state.read();
        let (c, rec, sel) = live_record(&st, object, id, fields)?;
        let mut out = Vec::with_capacity(4096);
        c.write_record_json(rec, sel.as_deref(), api_version, &mut out)
            .map_err(|e| {
                SfError::new(
                    500,
                    "UNKNOWN_EXCEPTION",
                    format!("rendering the record: {e}"),
                )
            })?;
        Ok(out)
    }

    /// Ids of live records whose external id field equals `value`.
    pub fn find_by_external_id(
        &self,
        object: &str,
        field: &str,
        value: &str,
    ) -> Result<Vec<SfId>, SfError> {
        let st = self.state.read();
        let c = st
            .compiled
            .object(object)
            .ok_or_else(|| SfError::invalid_type(object))?;
        find_external(&st, c, field, value)
    }

    /// Runs a SOQL query. `include_deleted` = queryAll (recycle-bin rows with IsDeleted = true).
    pub fn query(&self, soql: &str, include_deleted: bool) -> Result<QueryResult, SfError> {
        let q = crate::soql::parse(soql)?;
        let st = self.state.read();
        crate::soql::execute(&st, &q, soql, include_deleted)
    }

    /// Parses a query and resolves every name in it against the schema without reading any
    /// record: the errors [`Org::query`] would give for the text itself (MALFORMED_QUERY,
    /// INVALID_TYPE, INVALID_FIELD, …), and the result's shape.
    pub fn query_shape(&self, soql: &str) -> Result<QueryShape, SfError> {
        let q = crate::soql::parse(soql)?;
        let st = self.state.read();
        let plan = crate::soql::plan(&st, &q, soql)?;
        Ok(if plan.is_count_field() {
            QueryShape {
                object: "AggregateResult".into(),
                columns: vec!["expr0".into()],
                is_count: false,
            }
        } else {
            QueryShape {
                object: plan.object_name(&st),
                columns: plan.column_names(),
                is_count: plan.is_count(),
            }
        })
    }

    /// Runs a query and renders its rows straight into Bulk API 2.0 CSV chunks, never building
    /// JSON rows: byte-for-byte what rendering [`Org::query`]'s rows as Bulk CSV gives. Rows are
    /// selected and rendered (in parallel) under one read lock, so the result is a consistent
    /// snapshot.
    pub fn query_csv(
        &self,
        soql: &str,
        include_deleted: bool,
        opts: &CsvQueryOptions,
    ) -> Result<CsvQueryResult, SfError> {
        let q = crate::soql::parse(soql)?;
        let st = self.state.read();
        crate::bulk_csv::run(&st, &q, soql, include_deleted, opts)
    }

    /// The whole org as JSON lines, one record per line, ordered by object then id:
    /// `{"object": "Account", "id": "001…", "is_deleted": false, "fields": {…}}` with every
    /// stored field (formula fields computed). The truth convergence tests compare against.
    pub fn snapshot_jsonl(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let st = self.state.read();
        let mut order: Vec<&CObject> = st.compiled.objects.iter().collect();
        order.sort_by(|a, b| a.name().cmp(b.name()));
        use std::io::Write;
        let mut w = std::io::BufWriter::with_capacity(1 << 16, out);
        for c in order {
            let fields: Vec<usize> = (0..c.def.fields.len())
                .filter(|&i| !c.is_compound(i))
                .collect();
            for rec in st.stores[c.index].slots.iter().flatten() {
                let mut f = Fields::new();
                for &i in &fields {
                    f.insert(c.fd(i).name.clone(), c.get(rec, i).to_json());
                }
                let line = serde_json::json!({
                    "object": c.name(),
                    "id": rec.id,
                    "is_deleted": rec.deleted,
                    "fields": f,
                });
                serde_json::to_writer(&mut w, &line)?;
                w.write_all(b"\n")?;
            }
        }
        w.flush()
    }

    /// Removes every record except the standard users; keeps schema; resets nothing else.
    pub fn reset(&self) {
        let mut side = self.side.lock();
        let mut st = self.state.write();
        reset_state(&mut st, &[self.admin_user, self.integration_user]);
        drop(st);
        if let Some(j) = side.journal.as_mut() {
            if let Err(e) = j.append(&crate::persist::Entry::Reset) {
                tracing::error!(error = %format!("{e:#}"), "Journal append of a reset failed");
            }
        }
    }

    /// Inserts `count` realistic records of `object` (names, addresses, long text so change
    /// events reach 3–8 KB) in transactions of up to 200 records, deterministic for `seed`.
    /// Returns the created ids.
    pub fn seed(
        &self,
        ctx: &CallContext,
        object: &str,
        count: usize,
        seed: u64,
    ) -> Result<Vec<SfId>, SfError> {
        self.seed_with(ctx, object, count, seed, 100)
    }

    /// [`Org::seed`], with long text fields (Description…) filled on only `long_text_percent`
    /// (0–100) of the records, the others null: records of a few hundred bytes instead of
    /// several KB, as many real orgs hold.
    pub fn seed_with(
        &self,
        ctx: &CallContext,
        object: &str,
        count: usize,
        seed: u64,
        long_text_percent: u8,
    ) -> Result<Vec<SfId>, SfError> {
        let long_text_percent = long_text_percent.min(100);
        let obj = {
            let st = self.state.read();
            st.compiled
                .object(object)
                .ok_or_else(|| SfError::invalid_type(object))?
                .index
        };
        let mut ids = Vec::with_capacity(count);
        let mut done = 0usize;
        let mut journalled = false;
        while done < count {
            let n = (count - done).min(200);
            let mut side = self.side.lock();
            let mut st = self.state.write();
            let ts = value::now_ms().max(st.last_ts);
            let chunk = crate::seed::Chunk {
                object: st.compiled.objects[obj].name().to_string(),
                seed,
                start: done as u64,
                count: n,
                commit_timestamp: ts,
                commit_number: st.commit_number + 1,
                transaction_key: uuid::Uuid::new_v4().to_string(),
                user: ctx.user_id,
                origin: ctx.change_origin(),
                long_text_percent,
            };
            let created = crate::seed::apply_chunk(&mut st, &chunk)
                .map_err(|e| err(400, "INVALID_OPERATION", e))?;
            let committed = if side.listeners.is_empty() {
                None
            } else {
                let c = &st.compiled.objects[obj];
                let store = &st.stores[obj];
                let changes = created
                    .iter()
                    .enumerate()
                    .filter_map(|(k, id)| {
                        let (_, rec) = store.get(id)?;
                        Some(RecordChange {
                            sequence_number: k as u32 + 1,
                            object: c.name().to_string(),
                            record_id: *id,
                            change_type: ChangeKind::Create,
                            changed_fields: Vec::new(),
                            nulled_fields: Vec::new(),
                            values: create_values(c, rec),
                            old_values: Fields::new(),
                        })
                    })
                    .collect();
                Some(Arc::new(CommittedTransaction {
                    transaction_key: chunk.transaction_key.clone(),
                    commit_timestamp: ts,
                    commit_number: chunk.commit_number,
                    commit_user: ctx.user_id,
                    change_origin: chunk.origin.clone(),
                    changes,
                }))
            };
            drop(st);
            if let Some(j) = side.journal.as_mut() {
                j.append_nosync(&crate::persist::Entry::Seed(chunk))
                    .map_err(|e| {
                        err(
                            500,
                            "UNKNOWN_EXCEPTION",
                            format!("journal write failed: {e:#}"),
                        )
                    })?;
                journalled = true;
            }
            if let Some(c) = &committed {
                for l in &side.listeners {
                    l(c);
                }
            }
            drop(side);
            ids.extend(created);
            done += n;
        }
        if journalled {
            if let Some(j) = self.side.lock().journal.as_mut() {
                j.sync().map_err(|e| {
                    err(
                        500,
                        "UNKNOWN_EXCEPTION",
                        format!("journal sync failed: {e:#}"),
                    )
                })?;
            }
        }
        Ok(ids)
    }

    /// Changes records of `object` behind the listeners' back (see [`crate::drift`]): the records
    /// change as DML would change them, with a timestamp that never goes backwards, and the change
    /// is journalled, but no listener is called (no change event) and no commit number is used.
    /// All or nothing; returns the distinct ids changed, in request order.
    ///
    /// Errors (nothing changed): unknown object → 404 `NOT_FOUND`; no ids, or ids that are
    /// malformed or name no record of `object` → 400 `INVALID_INPUT` listing the first few;
    /// recycle-bin records for an update or delete → 400 `ENTITY_IS_DELETED`; a field or value a
    /// REST update would refuse → that update's error, its message prefixed with `fields: `.
    pub fn drift(
        &self,
        ctx: &CallContext,
        object: &str,
        ids: &[String],
        drift: &Drift,
    ) -> Result<Vec<SfId>, SfError> {
        let action = drift.action();
        let mut side = self.side.lock();
        let mut st = self.state.write();
        let compiled = st.compiled.clone();
        let c = compiled
            .object(object)
            .ok_or_else(|| SfError::invalid_type(object))?;
        if ids.is_empty() {
            return Err(err(
                400,
                "INVALID_INPUT",
                "ids: at least one id is required",
            ));
        }
        let store = &st.stores[c.index];
        let mut seen = HashSet::with_capacity(ids.len());
        let mut resolved = Vec::with_capacity(ids.len());
        let mut unknown: Vec<&str> = Vec::new();
        let mut binned: Vec<String> = Vec::new();
        for raw in ids {
            let found = SfId::parse(raw.trim())
                .ok()
                .filter(|id| id.key_prefix() == c.def.key_prefix)
                .and_then(|id| store.get(&id).map(|(_, r)| (id, r.deleted)));
            match found {
                None => unknown.push(raw),
                Some((id, deleted)) if seen.insert(id) => {
                    if deleted && action != DriftAction::Purge {
                        binned.push(id.to_string());
                    }
                    resolved.push(id);
                }
                Some(_) => {}
            }
        }
        if !unknown.is_empty() {
            return Err(err(
                400,
                "INVALID_INPUT",
                format!(
                    "ids: {} of {} ids name no {} record: {}",
                    unknown.len(),
                    ids.len(),
                    c.name(),
                    first_few(&unknown)
                ),
            ));
        }
        if !binned.is_empty() {
            return Err(err(
                400,
                "ENTITY_IS_DELETED",
                format!(
                    "ids: {} {} records are in the recycle bin ({} needs live records): {}",
                    binned.len(),
                    c.name(),
                    action.as_str(),
                    first_few(&binned)
                ),
            ));
        }
        let ts = value::now_ms().max(st.last_ts);
        let values = match drift {
            Drift::SilentUpdate(fields) => {
                silent_update_values(&mut st, ctx, ts, c, &resolved, fields).map_err(|mut e| {
                    e.message = format!("fields: {}", e.message);
                    e
                })?
            }
            Drift::SilentDelete | Drift::Purge => Fields::new(),
        };
        let entry = DriftEntry {
            action,
            object: c.name().to_string(),
            ids: resolved,
            values,
            timestamp: ts,
            user: ctx.user_id,
        };
        // Journal first: a failed write leaves the org unchanged, so the call stays all or nothing.
        if let Some(j) = side.journal.as_mut() {
            j.append(&crate::persist::Entry::Drift(entry.clone()))
                .map_err(|e| {
                    err(
                        500,
                        "UNKNOWN_EXCEPTION",
                        format!("journal write failed: {e:#}"),
                    )
                })?;
        }
        crate::drift::apply(&mut st, &entry).map_err(|e| err(500, "UNKNOWN_EXCEPTION", e))?;
        Ok(entry.ids)
    }

    /// Counts per object (live and deleted), commit number, transactions committed, and records
    /// changed by drift (`{"silent_updated", "silent_deleted", "purged"}`).
    pub fn stats(&self) -> serde_json::Value {
        let st = self.state.read();
        let mut objects = serde_json::Map::new();
        for c in &st.compiled.objects {
            let s = &st.stores[c.index];
            objects.insert(
                c.name().to_string(),
                serde_json::json!({ "live": s.live, "deleted": s.deleted }),
            );
        }
        serde_json::json!({
            "objects": objects,
            "commit_number": st.commit_number,
            "transactions": st.transactions,
            "drift": st.drift,
        })
    }
}

/// Creates the admin and integration users directly (no transaction), with fixed timestamps.
fn create_standard_users(st: &mut State, config: &OrgConfig) -> (SfId, SfId) {
    let Some(ui) = st.compiled.object("User").map(|c| c.index) else {
        let a = st.next_id("005");
        let b = st.next_id("005");
        return (a, b);
    };
    let admin = st.next_id("005");
    let integration = st.next_id("005");
    let org = config.org_id.as_str().to_ascii_lowercase();
    let admin_email = if config.admin_username.contains('@') {
        config.admin_username.clone()
    } else {
        format!("{}@example.com", config.admin_username)
    };
    let users = [
        (
            admin,
            config.admin_username.as_str(),
            "Admin",
            "Org",
            admin_email,
            "oadmin",
        ),
        (
            integration,
            "",
            "Integration",
            "Sfsync",
            format!("integration@{org}.example.com"),
            "integ",
        ),
    ];
    let c = &st.compiled.objects[ui];
    let mut recs = Vec::new();
    for (id, username, last, first, email, alias) in users {
        let username = if username.is_empty() {
            format!("integration@{org}.sfsync.local")
        } else {
            username.to_string()
        };
        let mut rec = Record {
            id,
            deleted: false,
            vals: vec![Val::Null; c.def.fields.len()].into_boxed_slice(),
        };
        let mut set = |name: &str, v: Val| {
            if let Some(i) = c.field(name) {
                rec.set(i, v);
            }
        };
        set("Username", Val::str(&username));
        set("LastName", Val::str(last));
        set("FirstName", Val::str(first));
        set("Email", Val::str(&email));
        set("Alias", Val::str(alias));
        set("IsActive", Val::Bool(true));
        set("TimeZoneSidKey", Val::str("America/Los_Angeles"));
        set("CreatedDate", Val::DateTime(USERS_CREATED_MS));
        set("CreatedById", Val::Id(admin));
        set("LastModifiedDate", Val::DateTime(USERS_CREATED_MS));
        set("LastModifiedById", Val::Id(admin));
        set("SystemModstamp", Val::DateTime(USERS_CREATED_MS));
        recs.push(rec);
    }
    for r in recs {
        st.stores[ui].push(r);
    }
    (admin, integration)
}

/// Drops every record except `keep` (the standard users), compacting the tables.
pub(crate) fn reset_state(st: &mut State, keep: &[SfId]) {
    for i in 0..st.stores.len() {
        let c = &st.compiled.objects[i];
        let old = std::mem::replace(&mut st.stores[i], Store::new(c));
        for rec in old.slots.into_iter().flatten() {
            if keep.contains(&rec.id) {
                st.stores[i].push(rec);
            }
        }
    }
}

fn rollback(st: &mut State, undo: &mut Vec<Undo>, mark: usize) {
    while undo.len() > mark {
        let Some(u) = undo.pop() else { break };
        let store = &mut st.stores[u.obj];
        if u.created {
            store.pop();
        } else {
            store.replace(u.slot, u.prev);
        }
    }
}

fn find_external(st: &State, c: &CObject, field: &str, value: &str) -> Result<Vec<SfId>, SfError> {
    let fi = c.field(field).ok_or_else(|| {
        SfError::new(
            404,
            "NOT_FOUND",
            format!("Provided external ID field does not exist or is not accessible: {field}"),
        )
    })?;
    let fd = c.fd(fi);
    if fd.name == "Id" {
        return Ok(match SfId::parse(value) {
            Ok(id) => match st.stores[c.index].get(&id) {
                Some((_, r)) if !r.deleted => vec![id],
                _ => Vec::new(),
            },
            Err(_) => Vec::new(),
        });
    }
    if !c.indexed.contains(&fi) {
        return Err(SfError::new(
            400,
            "INVALID_FIELD",
            format!(
                "Field {} is not an External ID or Id field for {}",
                fd.name,
                c.name()
            ),
        )
        .with_fields([fd.name.clone()]));
    }
    let v = value::coerce(fd, &serde_json::Value::String(value.to_string()))?;
    let Some(key) = store::index_key(&v) else {
        return Ok(Vec::new());
    };
    let store = &st.stores[c.index];
    Ok(store
        .lookup(fi, &key)
        .iter()
        .filter_map(|&s| store.slots[s as usize].as_ref().map(|r| r.id))
        .collect())
}

fn resolve_id(st: &State, id: &str) -> Result<(usize, u32, SfId), SfError> {
    let sid = SfId::parse(id).map_err(|_| malformed_id(id))?;
    let c = st.compiled.by_prefix(sid.key_prefix()).ok_or_else(|| {
        err(
            404,
            "NOT_FOUND",
            format!("The requested resource does not exist: {id}"),
        )
    })?;
    let (slot, _) = st.stores[c.index].get(&sid).ok_or_else(|| {
        err(
            404,
            "NOT_FOUND",
            format!("The requested resource does not exist: {id}"),
        )
    })?;
    Ok((c.index, slot, sid))
}

/// Validates a reference value: the id must name a live record of the target object.
fn check_reference(st: &State, fd: &crate::FieldDef, v: &Val) -> Result<(), SfError> {
    let Val::Id(id) = v else { return Ok(()) };
    let prefix_ok = fd.reference_to.iter().any(|t| {
        st.compiled
            .object(t)
            .is_some_and(|c| c.def.key_prefix == id.key_prefix())
    });
    if !prefix_ok {
        return Err(err(
            400,
            "FIELD_INTEGRITY_EXCEPTION",
            format!("{}: id value of incorrect type: {}", fd.label, id),
        )
        .with_fields([fd.name.clone()]));
    }
    let live = st
        .compiled
        .by_prefix(id.key_prefix())
        .and_then(|c| st.stores[c.index].get(id))
        .is_some_and(|(_, r)| !r.deleted);
    if !live {
        return Err(err(
            400,
            "INVALID_CROSS_REFERENCE_KEY",
            format!("invalid cross reference id: {id}"),
        )
        .with_fields([fd.name.clone()]));
    }
    Ok(())
}

fn check_unique(
    st: &State,
    c: &CObject,
    rec: &Record,
    only: Option<&[usize]>,
) -> Result<(), SfError> {
    for &f in &c.indexed {
        let fd = c.fd(f);
        if !fd.unique || only.is_some_and(|o| !o.contains(&f)) {
            continue;
        }
        let Some(key) = store::index_key(rec.val(f)) else {
            continue;
        };
        let store = &st.stores[c.index];
        for &s in store.lookup(f, &key) {
            if let Some(other) = &store.slots[s as usize] {
                if other.id != rec.id {
                    return Err(err(
                        400,
                        "DUPLICATE_VALUE",
                        format!(
                            "duplicate value found: {} duplicates value on record with id: {}",
                            fd.name, other.id
                        ),
                    )
                    .with_fields([fd.name.clone()]));
                }
            }
        }
    }
    Ok(())
}

/// At most five items joined by ", ", then "(and N more)".
fn first_few<S: AsRef<str>>(items: &[S]) -> String {
    let mut s = items
        .iter()
        .take(5)
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > 5 {
        s.push_str(&format!(" (and {} more)", items.len() - 5));
    }
    s
}

/// Validates a silent update exactly as a REST update of each record (field names, updateability,
/// value coercion, required fields, uniqueness, references) by running it and rolling it back,
/// then returns the coerced values in stored JSON form (the journal entry's `values`).
fn silent_update_values(
    st: &mut State,
    ctx: &CallContext,
    ts: i64,
    c: &CObject,
    ids: &[SfId],
    fields: &Fields,
) -> Result<Fields, SfError> {
    let mut tx = TxBuilder::default();
    let mut undo = Vec::new();
    let checked = ids
        .iter()
        .try_for_each(|&id| update(st, ctx, ts, c.index, id, fields, &mut tx, &mut undo).map(drop));
    rollback(st, &mut undo, 0);
    checked?;
    let given = coerce_fields(st, c, fields, false, ids.first().copied())?;
    Ok(given
        .into_iter()
        .map(|(i, v)| (c.fd(i).name.clone(), v.to_json()))
        .collect())
}

/// Resolves and coerces the body of an insert/update into (position, value) pairs.
fn coerce_fields(
    st: &State,
    c: &CObject,
    fields: &Fields,
    insert: bool,
    existing_id: Option<SfId>,
) -> Result<Vec<(usize, Val)>, SfError> {
    let mut out = Vec::with_capacity(fields.len());
    for (k, v) in fields {
        if k == "attributes" {
            continue;
        }
        let fi = c.field(k).ok_or_else(|| no_such_column(k, c.name()))?;
        let fd = c.fd(fi);
        if matches!(c.kinds[fi], FKind::Address(_)) {
            return Err(SfError::invalid_field(
                format!(
                    "No such column '{}' on sobject of type {}: compound fields are read-only; write their components",
                    fd.name,
                    c.name()
                ),
                &fd.name,
            ));
        }
        if matches!(c.kinds[fi], FKind::Id) {
            // Collections put the id in the body; accept it when it names this record.
            let same = match (v.as_str(), existing_id) {
                (Some(s), Some(id)) => SfId::parse(s).is_ok_and(|p| p == id),
                (None, _) => v.is_null() && insert,
                _ => false,
            };
            if same {
                continue;
            }
            return Err(not_writable(&fd.name));
        }
        if (insert && !fd.createable) || (!insert && !fd.updateable) {
            return Err(not_writable(&fd.name));
        }
        let val = value::coerce(fd, v)?;
        if fd.field_type == FieldType::Reference {
            check_reference(st, fd, &val)?;
        }
        out.push((fi, val));
    }
    Ok(out)
}

fn required_missing(c: &CObject, rec: &Record) -> Option<SfError> {
    let missing: Vec<String> = c
        .def
        .fields
        .iter()
        .enumerate()
        .filter(|(i, f)| {
            (f.required || (!f.nillable && f.createable))
                && matches!(c.kinds[*i], FKind::Stored)
                && f.field_type != FieldType::Boolean
                && rec.val(*i).is_null()
        })
        .map(|(_, f)| f.name.clone())
        .collect();
    if missing.is_empty() {
        None
    } else {
        Some(
            err(
                400,
                "REQUIRED_FIELD_MISSING",
                format!("Required fields are missing: [{}]", missing.join(", ")),
            )
            .with_fields(missing),
        )
    }
}

fn apply(
    st: &mut State,
    ctx: &CallContext,
    ts: i64,
    op: DmlOp,
    tx: &mut TxBuilder,
    undo: &mut Vec<Undo>,
) -> DmlResult1 {
    match op {
        DmlOp::Insert { object, fields } => insert(st, ctx, ts, &object, &fields, None, tx, undo),
        DmlOp::Update { object, id, fields } => {
            let c = st
                .compiled
                .object(&object)
                .ok_or_else(|| SfError::invalid_type(&object))?;
            let sid = SfId::parse(&id).map_err(|_| malformed_id(&id))?;
            if sid.key_prefix() != c.def.key_prefix {
                return Err(SfError::not_found());
            }
            update(st, ctx, ts, c.index, sid, &fields, tx, undo)
        }
        DmlOp::Upsert {
            object,
            external_id_field,
            external_id,
            fields,
        } => upsert(
            st,
            ctx,
            ts,
            &object,
            &external_id_field,
            &external_id,
            fields,
            tx,
            undo,
        ),
        DmlOp::Delete { id } => {
            let (obj, slot, sid) = resolve_id(st, &id)?;
            let store = &mut st.stores[obj];
            let rec = store.slots[slot as usize]
                .as_ref()
                .ok_or_else(SfError::not_found)?;
            if rec.deleted {
                return Err(entity_is_deleted());
            }
            let mut new = rec.clone();
            new.deleted = true;
            new.set(st.compiled.objects[obj].sysmod_f, Val::DateTime(ts));
            let prev = st.stores[obj].replace(slot, Some(new));
            undo.push(Undo {
                obj,
                slot,
                prev,
                created: false,
            });
            tx.touch(obj, sid, ChangeKind::Delete);
            Ok(DmlOutcome::Deleted(sid))
        }
        DmlOp::Undelete { id } => {
            let (obj, slot, sid) = resolve_id(st, &id)?;
            let c = &st.compiled.objects[obj];
            let rec = st.stores[obj].slots[slot as usize]
                .as_ref()
                .ok_or_else(SfError::not_found)?;
            if !rec.deleted {
                return Err(err(
                    400,
                    "UNDELETE_FAILED",
                    "Entity is not in the recycle bin",
                ));
            }
            let mut new = rec.clone();
            new.deleted = false;
            new.set(c.sysmod_f, Val::DateTime(ts));
            check_unique(st, c, &new, None)?;
            let prev = st.stores[obj].replace(slot, Some(new));
            undo.push(Undo {
                obj,
                slot,
                prev,
                created: false,
            });
            tx.touch(obj, sid, ChangeKind::Undelete);
            Ok(DmlOutcome::Undeleted(sid))
        }
        DmlOp::HardDelete { id } => {
            let (obj, slot, sid) = resolve_id(st, &id)?;
            let prev = st.stores[obj].replace(slot, None);
            undo.push(Undo {
                obj,
                slot,
                prev,
                created: false,
            });
            tx.hard_deleted.push(sid);
            Ok(DmlOutcome::HardDeleted(sid))
        }
    }
}

type DmlResult1 = Result<DmlOutcome, SfError>;

#[allow(clippy::too_many_arguments)]
fn insert(
    st: &mut State,
    ctx: &CallContext,
    ts: i64,
    object: &str,
    fields: &Fields,
    forced: Option<(usize, Val)>,
    tx: &mut TxBuilder,
    undo: &mut Vec<Undo>,
) -> DmlResult1 {
    let compiled = st.compiled.clone();
    let c = compiled
        .object(object)
        .ok_or_else(|| SfError::invalid_type(object))?;
    let given = coerce_fields(st, c, fields, true, None)?;
    let n = c.def.fields.len();
    let mut rec = Record {
        id: SfId::from_parts(&c.def.key_prefix, 0),
        deleted: false,
        vals: vec![Val::Null; n].into_boxed_slice(),
    };
    for (i, f) in c.def.fields.iter().enumerate() {
        if !matches!(c.kinds[i], FKind::Stored) || !f.createable {
            continue;
        }
        if let Some(d) = &f.default_value {
            if let Ok(v) = value::coerce(f, d) {
                rec.set(i, v);
            }
        } else if f.field_type == FieldType::Boolean {
            rec.set(i, Val::Bool(false));
        }
    }
    if let Some(o) = c.owner_f {
        rec.set(o, Val::Id(ctx.user_id));
    }
    for (i, v) in given {
        rec.set(i, v);
    }
    if let Some((i, v)) = forced {
        rec.set(i, v);
    }
    if let Some(e) = required_missing(c, &rec) {
        return Err(e);
    }
    check_unique(st, c, &rec, None)?;
    // Valid: allocate and write.
    let id = st.next_id(&c.def.key_prefix);
    rec.id = id;
    rec.set(c.created_date_f, Val::DateTime(ts));
    rec.set(c.created_by_f, Val::Id(ctx.user_id));
    rec.set(c.lmd_f, Val::DateTime(ts));
    rec.set(c.lmb_f, Val::Id(ctx.user_id));
    rec.set(c.sysmod_f, Val::DateTime(ts));
    if let Some(cn) = c.case_number_f {
        st.case_counter += 1;
        rec.set(cn, Val::str(&format!("{:08}", st.case_counter)));
    }
    let slot = st.stores[c.index].push(rec);
    undo.push(Undo {
        obj: c.index,
        slot,
        prev: None,
        created: true,
    });
    tx.touch(c.index, id, ChangeKind::Create);
    tx.created.push((id, slot));
    Ok(DmlOutcome::Created(id))
}

#[allow(clippy::too_many_arguments)]
fn update(
    st: &mut State,
    ctx: &CallContext,
    ts: i64,
    obj: usize,
    id: SfId,
    fields: &Fields,
    tx: &mut TxBuilder,
    undo: &mut Vec<Undo>,
) -> DmlResult1 {
    let compiled = st.compiled.clone();
    let c = &compiled.objects[obj];
    let (slot, rec) = st.stores[obj].get(&id).ok_or_else(SfError::not_found)?;
    if rec.deleted {
        return Err(entity_is_deleted());
    }
    let given = coerce_fields(st, c, fields, false, Some(id))?;
    let mut new = rec.clone();
    let mut changes: Vec<(usize, Val)> = Vec::new();
    for (i, v) in given {
        if new.val(i) != &v {
            changes.push((i, new.val(i).clone()));
            new.set(i, v);
        }
    }
    let nulled_required: Vec<String> = changes
        .iter()
        .filter(|(i, _)| {
            let f = c.fd(*i);
            (f.required || !f.nillable)
                && f.field_type != FieldType::Boolean
                && new.val(*i).is_null()
        })
        .map(|(i, _)| c.fd(*i).name.clone())
        .collect();
    if !nulled_required.is_empty() {
        return Err(err(
            400,
            "REQUIRED_FIELD_MISSING",
            format!(
                "Required fields are missing: [{}]",
                nulled_required.join(", ")
            ),
        )
        .with_fields(nulled_required));
    }
    let changed_pos: Vec<usize> = changes.iter().map(|(i, _)| *i).collect();
    check_unique(st, c, &new, Some(&changed_pos))?;
    // Every update sets LastModifiedDate (it is in the event's changedFields even when a
    // transaction in the same millisecond already set it to the same value).
    changes.push((c.lmd_f, new.val(c.lmd_f).clone()));
    new.set(c.lmd_f, Val::DateTime(ts));
    let by = Val::Id(ctx.user_id);
    if new.val(c.lmb_f) != &by {
        changes.push((c.lmb_f, new.val(c.lmb_f).clone()));
        new.set(c.lmb_f, by);
    }
    new.set(c.sysmod_f, Val::DateTime(ts));
    let prev = st.stores[obj].replace(slot, Some(new));
    undo.push(Undo {
        obj,
        slot,
        prev,
        created: false,
    });
    tx.update(obj, id, &changes);
    Ok(DmlOutcome::Updated(id))
}

#[allow(clippy::too_many_arguments)]
fn upsert(
    st: &mut State,
    ctx: &CallContext,
    ts: i64,
    object: &str,
    ext_field: &str,
    ext_value: &str,
    mut fields: Fields,
    tx: &mut TxBuilder,
    undo: &mut Vec<Undo>,
) -> DmlResult1 {
    let compiled = st.compiled.clone();
    let c = compiled
        .object(object)
        .ok_or_else(|| SfError::invalid_type(object))?;
    if ext_field.eq_ignore_ascii_case("Id") {
        fields.retain(|k, _| !k.eq_ignore_ascii_case("Id"));
        if ext_value.is_empty() {
            return insert(st, ctx, ts, object, &fields, None, tx, undo);
        }
        let sid = SfId::parse(ext_value).map_err(|_| malformed_id(ext_value))?;
        if sid.key_prefix() != c.def.key_prefix {
            return Err(SfError::not_found());
        }
        return update(st, ctx, ts, c.index, sid, &fields, tx, undo);
    }
    let matches = find_external(st, c, ext_field, ext_value)?;
    let fi = c.field(ext_field).unwrap_or(0);
    let canonical = c.fd(fi).name.clone();
    fields.retain(|k, _| !k.eq_ignore_ascii_case(&canonical));
    match matches.len() {
        0 => {
            let v = value::coerce(c.fd(fi), &serde_json::Value::String(ext_value.to_string()))?;
            insert(st, ctx, ts, object, &fields, Some((fi, v)), tx, undo)
        }
        1 => update(st, ctx, ts, c.index, matches[0], &fields, tx, undo),
        _ => {
            let mut e = err(
                300,
                "DUPLICATE_EXTERNAL_ID",
                "Multiple records found with the same external id",
            )
            .with_fields([canonical]);
            e.matched_ids = matches.iter().map(|id| id.to_string()).collect();
            Err(e)
        }
    }
}

/// Turns the builder into the committed transaction (None when nothing changed) and advances
/// the commit number / timestamp.
fn build_transaction(
    st: &mut State,
    ctx: &CallContext,
    ts: i64,
    tx: &TxBuilder,
) -> Option<CommittedTransaction> {
    let mut changes = Vec::new();
    for p in &tx.pending {
        let c = &st.compiled.objects[p.obj];
        let Some((_, rec)) = st.stores[p.obj].get(&p.id) else {
            continue; // hard-deleted later in the same transaction
        };
        let mut change = RecordChange {
            sequence_number: changes.len() as u32 + 1,
            object: c.name().to_string(),
            record_id: p.id,
            change_type: p.kind,
            changed_fields: Vec::new(),
            nulled_fields: Vec::new(),
            values: Fields::new(),
            old_values: Fields::new(),
        };
        match p.kind {
            ChangeKind::Create | ChangeKind::Undelete => change.values = create_values(c, rec),
            ChangeKind::Delete => {}
            ChangeKind::Update => {
                for (&f, (_, old)) in p.changed.iter().zip(&p.old) {
                    let name = c.fd(f).name.clone();
                    let v = rec.val(f);
                    if v.is_null() {
                        change.nulled_fields.push(name.clone());
                    }
                    change.changed_fields.push(name.clone());
                    change.values.insert(name.clone(), v.to_json());
                    change.old_values.insert(name, old.to_json());
                }
            }
        }
        changes.push(change);
    }
    if changes.is_empty() {
        return None;
    }
    st.commit_number += 1;
    st.last_ts = st.last_ts.max(ts);
    st.transactions += 1;
    Some(CommittedTransaction {
        transaction_key: uuid::Uuid::new_v4().to_string(),
        commit_timestamp: ts,
        commit_number: st.commit_number,
        commit_user: ctx.user_id,
        change_origin: ctx.change_origin(),
        changes,
    })
}

/// The object, the live record and the resolved field list (`None` = all) of a single-record
/// read: unknown object → `NOT_FOUND` (type), unknown field → `INVALID_FIELD`, unknown id →
/// `NOT_FOUND`, recycle-bin record → `ENTITY_IS_DELETED`.
#[allow(clippy::type_complexity)]
fn live_record<'s>(
    st: &'s State,
    object: &str,
    id: &str,
    fields: Option<&[String]>,
) -> Result<(&'s CObject, &'s Record, Option<Vec<usize>>), SfError> {
    let c = st
        .compiled
        .object(object)
        .ok_or_else(|| SfError::invalid_type(object))?;
    let sel: Option<Vec<usize>> = match fields {
        Some(fs) => Some(
            fs.iter()
                .map(|f| f.trim())
                .filter(|f| !f.is_empty())
                .map(|f| c.field(f).ok_or_else(|| no_such_column(f, c.name())))
                .collect::<Result<_, _>>()?,
        ),
        None => None,
    };
    let id = SfId::parse(id).map_err(|_| SfError::not_found())?;
    let (_, rec) = st.stores[c.index].get(&id).ok_or_else(SfError::not_found)?;
    if rec.deleted {
        return Err(entity_is_deleted());
    }
    Ok((c, rec, sel))
}
