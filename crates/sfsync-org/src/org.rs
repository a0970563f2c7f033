//! The org's records and its DML. Every call to [`Org::execute`] is one transaction: one
//! transaction key, one commit timestamp (ms) and commit number, sequence numbers per change in
//! the order the changes were made, the commit user and the change origin. Several operations on
//! the same record in one transaction commit as one change with the first operation's change type
//! and the final values (as Salesforce CDC reports them). Listeners see committed transactions in
//! commit order, exactly once each.

use std::path::Path;
use std::sync::Arc;

use sfsync_core::SfId;

use crate::{Fields, Schema, SfError};

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
            None => format!("com/salesforce/api/{}/{}", self.api.as_str(), self.api_version),
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
#[derive(Debug, Clone)]
pub struct QueryResult {
    /// The queried object's API name.
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
}

impl QueryResult {
    /// REST JSON record for row `i`: `{"attributes": {"type", "url"}, <columns>…}` with parent
    /// relationship paths nested as objects with their own `attributes` (as Salesforce does).
    pub fn record_json(&self, i: usize, api_version: &str) -> serde_json::Value {
        let _ = (i, api_version);
        todo!("sfsync-org: QueryResult::record_json")
    }
}

/// The org: schema, records and the transaction log. Cheap to share (`Arc<Org>`); all methods
/// take `&self` and are safe to call from many threads.
pub struct Org {
    _private: (),
}

impl Org {
    /// An in-memory org with the given schema, the standard users (an admin named in `config`
    /// and an integration user) and no other records.
    pub fn new(schema: Schema, config: OrgConfig) -> Org {
        let _ = (schema, config);
        todo!("sfsync-org: Org::new")
    }

    /// An org persisted in `dir`: loads what an earlier run left (schema changes, records,
    /// recycle bin, id counters, commit number) and journals every commit so a restart (even
    /// after SIGKILL) recovers every acknowledged transaction.
    pub fn open(schema: Schema, config: OrgConfig, dir: &Path) -> anyhow::Result<Org> {
        let _ = (schema, config, dir);
        todo!("sfsync-org: Org::open")
    }

    pub fn org_id(&self) -> SfId {
        todo!()
    }

    /// The admin user's id (commit user of calls authenticated as the admin).
    pub fn admin_user_id(&self) -> SfId {
        todo!()
    }

    /// The current schema (changes when fields are added).
    pub fn schema(&self) -> Arc<Schema> {
        todo!()
    }

    /// Adds a field to an object (admin endpoint; used to test schema changes).
    pub fn add_field(&self, object: &str, field: crate::FieldDef) -> Result<(), SfError> {
        let _ = (object, field);
        todo!()
    }

    /// Registers a listener for committed transactions.
    pub fn add_commit_listener(&self, listener: CommitListener) {
        let _ = listener;
        todo!()
    }

    /// Runs `ops` as ONE transaction. With `all_or_none`, any failure rolls everything back and
    /// the other operations report `ALL_OR_NONE_OPERATION_ROLLED_BACK`; otherwise the successful
    /// operations commit together and failures are reported per operation. Results are in input
    /// order.
    pub fn execute(&self, ctx: &CallContext, ops: Vec<DmlOp>, all_or_none: bool) -> Vec<DmlResult> {
        let _ = (ctx, ops, all_or_none);
        todo!()
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
        let _ = (object, id, fields, api_version);
        todo!()
    }

    /// Ids of live records whose external id field equals `value`.
    pub fn find_by_external_id(
        &self,
        object: &str,
        field: &str,
        value: &str,
    ) -> Result<Vec<SfId>, SfError> {
        let _ = (object, field, value);
        todo!()
    }

    /// Runs a SOQL query. `include_deleted` = queryAll (recycle-bin rows with IsDeleted = true).
    pub fn query(&self, soql: &str, include_deleted: bool) -> Result<QueryResult, SfError> {
        let _ = (soql, include_deleted);
        todo!()
    }

    /// The whole org as JSON lines, one record per line, ordered by object then id:
    /// `{"object": "Account", "id": "001…", "is_deleted": false, "fields": {…}}` with every
    /// stored field (formula fields computed). The truth convergence tests compare against.
    pub fn snapshot_jsonl(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let _ = out;
        todo!()
    }

    /// Removes every record except the standard users; keeps schema; resets nothing else.
    pub fn reset(&self) {
        todo!()
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
        let _ = (ctx, object, count, seed);
        todo!()
    }

    /// Counts per object (live and deleted), commit number, transactions committed.
    pub fn stats(&self) -> serde_json::Value {
        todo!()
    }
}
