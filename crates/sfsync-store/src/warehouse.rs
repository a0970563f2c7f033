//! Backend-neutral parts of the [`crate::Warehouse`] implementations: the in-memory model
//! registry and keyring, the physical layout of curated and history tables (DDL for both
//! dialects), encoding of [`Value`]s to database cells and back (sealing PII), and the audit
//! hash chain.
//!
//! Audit chain: each entry's `hash` is the lower-case hex SHA-256 of the 32 bytes of the previous
//! entry's hash (32 zero bytes for the first entry, whose `prev_hash` is 64 zeros) followed by the
//! entry's canonical JSON text as stored in `audit_log.entry`. The canonical JSON is the whole
//! [`AuditEntry`]; it names the changed fields but carries no values (those live in the curated,
//! history and raw tables), so the audit trail holds no PII and key rotation never touches it.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use sfsync_core::{ErrorClass, RecordVersion, ReplayId};
use sha2::{Digest, Sha256};

use crate::curated::{
    AuditEntry, AuditVerification, ChangeSource, ColumnType, CuratedBatch, CurrentRow, HistoryRow,
    ObjectModel, SyncMeta, Value, META_PREFIX,
};
use crate::error::{Result, StoreError};
use crate::pii::{self, Keyring};

/// SQL dialect of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub(crate) fn backend(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    /// Placeholder for the 1-based parameter `n`.
    pub(crate) fn param(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    pub(crate) fn bool_lit(self, b: bool) -> &'static str {
        match (self, b) {
            (Dialect::Sqlite, true) => "1",
            (Dialect::Sqlite, false) => "0",
            (Dialect::Postgres, true) => "TRUE",
            (Dialect::Postgres, false) => "FALSE",
        }
    }
}

/// Physical kind of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    Int,
    Int4,
    Real,
    Bool,
    Date,
    Ts,
}

impl Kind {
    fn of(ty: ColumnType, pii: bool) -> Kind {
        if pii {
            return Kind::Text;
        }
        match ty {
            ColumnType::Text => Kind::Text,
            ColumnType::Integer => Kind::Int,
            ColumnType::Real => Kind::Real,
            ColumnType::Boolean => Kind::Bool,
            ColumnType::Date => Kind::Date,
            ColumnType::Timestamp => Kind::Ts,
        }
    }

    /// Type used in DDL.
    pub(crate) fn decl(self, d: Dialect) -> &'static str {
        match d {
            Dialect::Sqlite => match self {
                Kind::Text | Kind::Date | Kind::Ts => "TEXT",
                Kind::Int | Kind::Int4 | Kind::Bool => "INTEGER",
                Kind::Real => "REAL",
            },
            Dialect::Postgres => match self {
                Kind::Text => "text",
                Kind::Int => "bigint",
                Kind::Int4 => "integer",
                Kind::Real => "double precision",
                Kind::Bool => "boolean",
                Kind::Date => "date",
                Kind::Ts => "timestamptz",
            },
        }
    }

    /// Type as the catalog reports it (SQLite: declared type; Postgres: `format_type`).
    fn catalog(self, d: Dialect) -> &'static str {
        match (d, self) {
            (Dialect::Postgres, Kind::Ts) => "timestamp with time zone",
            _ => self.decl(d),
        }
    }
}

/// One physical column of a curated or history table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PhysCol {
    pub name: String,
    pub kind: Kind,
    pub not_null: bool,
}

fn col(name: &str, kind: Kind, not_null: bool) -> PhysCol {
    PhysCol {
        name: name.to_string(),
        kind,
        not_null,
    }
}

/// Meta columns of a current-state table, in table order after the data columns.
const CUR_META: &[(&str, Kind, bool)] = &[
    ("_sf_deleted", Kind::Bool, true),
    ("_sf_commit_ts", Kind::Ts, true),
    ("_sf_commit_ms", Kind::Int, true),
    ("_sf_commit_number", Kind::Int, true),
    ("_sf_sequence", Kind::Int4, true),
    ("_sf_change_type", Kind::Text, true),
    ("_sf_source", Kind::Text, true),
    ("_sf_transaction_key", Kind::Text, true),
    ("_sf_replay_id", Kind::Text, false),
    ("_sf_run_id", Kind::Text, true),
    ("_sf_applied_at", Kind::Ts, true),
    ("_sf_origin", Kind::Text, false),
    ("_sf_base_version", Kind::Text, true),
    ("_sf_field_versions", Kind::Text, false),
    ("_sf_history_version", Kind::Int, false),
    ("_sf_partial", Kind::Bool, true),
];

/// Leading columns of a history table, before the tracked columns.
const HIST_HEAD: &[(&str, Kind, bool)] = &[
    ("id", Kind::Text, true),
    ("_sf_version", Kind::Int, true),
    ("valid_from", Kind::Ts, true),
    ("valid_to", Kind::Ts, false),
    ("is_current", Kind::Bool, true),
    ("change_type", Kind::Text, true),
    ("end_change_type", Kind::Text, false),
    ("transaction_key", Kind::Text, true),
];

/// Trailing meta columns of a history table; also what a Touch refreshes.
const HIST_META: &[(&str, Kind, bool)] = &[
    ("_sf_commit_ms", Kind::Int, true),
    ("_sf_replay_id", Kind::Text, false),
    ("_sf_run_id", Kind::Text, true),
    ("_sf_applied_at", Kind::Ts, true),
    ("_sf_source", Kind::Text, true),
    ("_sf_origin", Kind::Text, false),
];

/// Double-quotes an identifier.
pub(crate) fn q(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A data column of the model as stored (the record id column excluded).
#[derive(Debug, Clone)]
pub(crate) struct DataCol {
    pub name: String,
    pub ty: ColumnType,
    pub pii: bool,
}

/// A registered model with its physical layout and SQL texts for one dialect.
#[derive(Debug)]
pub(crate) struct Registered {
    pub model: ObjectModel,
    /// Current table: `id`, data columns, meta columns.
    pub cur: Vec<PhysCol>,
    /// Data columns, `cur[1..1 + data.len()]`.
    pub data: Vec<DataCol>,
    /// Data column name → index in `data`.
    pub data_index: HashMap<String, usize>,
    /// History table: head, tracked columns, meta.
    pub hist: Option<Vec<PhysCol>>,
    /// Tracked columns (indexes into `data`), `hist[HIST_HEAD.len()..]`.
    pub tracked: Vec<usize>,
    pub has_pii: bool,
    pub sql: ModelSql,
}

/// SQL texts of one registered model (placeholders of the store's dialect).
#[derive(Debug, Default)]
pub(crate) struct ModelSql {
    /// `INSERT … VALUES (one row) ON CONFLICT ("id") DO UPDATE …` (SQLite; Postgres builds
    /// multi-row forms with [`Registered::upsert_sql`]).
    pub upsert: String,
    /// `SELECT <cur columns> FROM <table>` (no WHERE).
    pub select_current: String,
    pub hist_insert: String,
    /// Params: valid_to, end_change_type, id, version.
    pub hist_close: String,
    /// Params: HIST_META columns, id, version.
    pub hist_touch: String,
    /// `SELECT <hist columns> FROM <history table> ORDER BY id, _sf_version`.
    pub hist_select: String,
}

impl Registered {
    pub(crate) fn new(model: ObjectModel, d: Dialect) -> Registered {
        let data: Vec<DataCol> = model
            .columns
            .iter()
            .filter(|c| c.name != "id")
            .map(|c| DataCol {
                name: c.name.clone(),
                ty: c.ty,
                pii: c.pii,
            })
            .collect();
        let mut cur = vec![col("id", Kind::Text, true)];
        cur.extend(
            data.iter()
                .map(|c| col(&c.name, Kind::of(c.ty, c.pii), false)),
        );
        cur.extend(CUR_META.iter().map(|(n, k, nn)| col(n, *k, *nn)));
        let mut tracked = Vec::new();
        let hist = model.history.as_ref().map(|h| {
            let mut cols: Vec<PhysCol> =
                HIST_HEAD.iter().map(|(n, k, nn)| col(n, *k, *nn)).collect();
            for name in &h.columns {
                if let Some(i) = data.iter().position(|c| &c.name == name) {
                    if !tracked.contains(&i) {
                        tracked.push(i);
                        cols.push(col(name, Kind::of(data[i].ty, data[i].pii), false));
                    }
                }
            }
            cols.extend(HIST_META.iter().map(|(n, k, nn)| col(n, *k, *nn)));
            cols
        });
        let has_pii = data.iter().any(|c| c.pii);
        let data_index = data
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        let mut reg = Registered {
            model,
            cur,
            data,
            data_index,
            hist,
            tracked,
            has_pii,
            sql: ModelSql::default(),
        };
        reg.sql = reg.build_sql(d);
        reg
    }

    fn build_sql(&self, d: Dialect) -> ModelSql {
        let t = q(&self.model.table);
        let cur_list = column_list(&self.cur);
        let mut sql = ModelSql {
            upsert: self.upsert_sql(d, 1),
            select_current: format!("SELECT {cur_list} FROM {t}"),
            ..ModelSql::default()
        };
        if let (Some(h), Some(spec)) = (&self.hist, &self.model.history) {
            let ht = q(&spec.table);
            let params: Vec<String> = (1..=h.len()).map(|n| d.param(n)).collect();
            sql.hist_insert = format!(
                "INSERT INTO {ht} ({}) VALUES ({})",
                column_list(h),
                params.join(", ")
            );
            sql.hist_close = format!(
                "UPDATE {ht} SET \"valid_to\" = {}, \"is_current\" = {}, \"end_change_type\" = {} \
                 WHERE \"id\" = {} AND \"_sf_version\" = {}",
                d.param(1),
                d.bool_lit(false),
                d.param(2),
                d.param(3),
                d.param(4)
            );
            let sets: Vec<String> = HIST_META
                .iter()
                .enumerate()
                .map(|(i, (n, _, _))| format!("{} = {}", q(n), d.param(i + 1)))
                .collect();
            sql.hist_touch = format!(
                "UPDATE {ht} SET {} WHERE \"id\" = {} AND \"_sf_version\" = {}",
                sets.join(", "),
                d.param(HIST_META.len() + 1),
                d.param(HIST_META.len() + 2)
            );
            sql.hist_select = format!(
                "SELECT {} FROM {ht} ORDER BY \"id\", \"_sf_version\"",
                column_list(h)
            );
        }
        sql
    }

    /// The upsert of `rows` rows into the current table.
    pub(crate) fn upsert_sql(&self, d: Dialect, rows: usize) -> String {
        let n = self.cur.len();
        let mut values = String::new();
        for r in 0..rows {
            if r > 0 {
                values.push_str(", ");
            }
            values.push('(');
            for c in 0..n {
                if c > 0 {
                    values.push_str(", ");
                }
                values.push_str(&d.param(r * n + c + 1));
            }
            values.push(')');
        }
        let sets: Vec<String> = self.cur[1..]
            .iter()
            .map(|c| format!("{0} = excluded.{0}", q(&c.name)))
            .collect();
        format!(
            "INSERT INTO {} ({}) VALUES {values} ON CONFLICT (\"id\") DO UPDATE SET {}",
            q(&self.model.table),
            column_list(&self.cur),
            sets.join(", ")
        )
    }

    pub(crate) fn history_table(&self) -> Option<&str> {
        self.model.history.as_ref().map(|h| h.table.as_str())
    }

    pub(crate) fn pii_data(&self) -> impl Iterator<Item = (usize, &DataCol)> {
        self.data.iter().enumerate().filter(|(_, c)| c.pii)
    }

    /// Checks that `column` may be looked up by value ([`crate::Warehouse::ids_by_value`]): a
    /// column of the model, and not PII (a sealed value never equals its plaintext).
    pub(crate) fn check_lookup_column(&self, backend: &'static str, column: &str) -> Result<()> {
        let object = &self.model.object;
        let reason = match self.model.column(column) {
            None => format!("column '{column}' is not a column of the curated model of '{object}'"),
            Some(c) if c.pii => format!(
                "column '{column}' of '{object}' is PII: it is stored sealed and cannot be looked \
                 up by value"
            ),
            Some(_) => return Ok(()),
        };
        Err(StoreError::InvalidInput {
            backend,
            op: "look up values",
            reason,
        })
    }

    /// `SELECT <column as text>, "id"` of the live (not deleted) current rows whose `column`, as
    /// text, is one of the values: `n` parameters on SQLite, one text array (`$1`) on Postgres.
    pub(crate) fn ids_by_value_sql(&self, d: Dialect, column: &str, n: usize) -> String {
        let (t, c) = (q(&self.model.table), q(column));
        let live = format!("\"_sf_deleted\" = {}", d.bool_lit(false));
        match d {
            Dialect::Sqlite => {
                let params: Vec<String> = (1..=n).map(|i| d.param(i)).collect();
                format!(
                    "SELECT CAST({c} AS TEXT), \"id\" FROM {t} \
                     WHERE {live} AND CAST({c} AS TEXT) IN ({})",
                    params.join(", ")
                )
            }
            Dialect::Postgres => {
                format!("SELECT {c}::text, \"id\" FROM {t} WHERE {live} AND {c}::text = ANY($1)")
            }
        }
    }
}

pub(crate) fn column_list(cols: &[PhysCol]) -> String {
    cols.iter()
        .map(|c| q(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The store's own tables, which no model may use.
const RESERVED_TABLES: &[&str] = &[
    "schema_migrations",
    "raw_changes",
    "checkpoints",
    "apply_offsets",
    "schemas",
    "repair_requests",
    "resync_requests",
    "dead_letters",
    "audit_log",
    "runs",
    "curated_models",
];

/// Checks a model before it reaches DDL.
pub(crate) fn validate_model(backend: &'static str, m: &ObjectModel) -> Result<()> {
    let bad = |reason: String| StoreError::InvalidInput {
        backend,
        op: "ensure model",
        reason: format!("model of '{}': {reason}", m.object),
    };
    if m.object.is_empty() {
        return Err(bad("the object name is empty".into()));
    }
    let ident_ok = |s: &str| !s.is_empty() && !s.contains('\0') && s.len() <= 63;
    if !ident_ok(&m.table) {
        return Err(bad(format!(
            "table name '{}' must be 1 to 63 bytes without NUL",
            m.table
        )));
    }
    let tables = std::iter::once(&m.table).chain(m.history.as_ref().map(|h| &h.table));
    for t in tables {
        if RESERVED_TABLES.contains(&t.as_str()) {
            return Err(bad(format!(
                "table name '{t}' is one of sfsync's own tables"
            )));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for c in &m.columns {
        if !ident_ok(&c.name) {
            return Err(bad(format!(
                "column name '{}' must be 1 to 63 bytes without NUL",
                c.name
            )));
        }
        if c.name.starts_with(META_PREFIX) {
            return Err(bad(format!(
                "column '{}' uses the reserved prefix {META_PREFIX}",
                c.name
            )));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(bad(format!("column '{}' appears twice", c.name)));
        }
        if c.name == "id" && c.pii {
            return Err(bad("the record id column cannot be PII".into()));
        }
    }
    if let Some(h) = &m.history {
        if !ident_ok(&h.table) || h.table == m.table {
            return Err(bad(format!(
                "history table name '{}' must be 1 to 63 bytes and differ from the table",
                h.table
            )));
        }
        for name in &h.columns {
            if name == "id" {
                continue;
            }
            if m.column(name).is_none() {
                return Err(bad(format!(
                    "history column '{name}' is not a column of the model"
                )));
            }
            if HIST_HEAD.iter().any(|(n, _, _)| n == name) {
                return Err(bad(format!(
                    "history column '{name}' collides with a history bookkeeping column"
                )));
            }
        }
    }
    Ok(())
}

/// What to run to bring one table to its expected columns.
#[derive(Debug, Default)]
pub(crate) struct TablePlan {
    pub statements: Vec<String>,
    pub created: bool,
    pub added: Vec<String>,
    pub retyped: Vec<String>,
}

/// Plans `CREATE TABLE` (when `existing` is `None`) or `ADD COLUMN`s. `existing` maps column
/// names to the catalog's type text. Added columns are nullable.
pub(crate) fn plan_table(
    d: Dialect,
    table: &str,
    cols: &[PhysCol],
    primary_key: &[&str],
    existing: Option<&HashMap<String, String>>,
) -> TablePlan {
    let t = q(table);
    let mut plan = TablePlan::default();
    match existing {
        None => {
            let mut defs: Vec<String> = cols
                .iter()
                .map(|c| {
                    let mut s = format!("{} {}", q(&c.name), c.kind.decl(d));
                    if c.not_null {
                        s.push_str(" NOT NULL");
                    }
                    if c.name == "id" {
                        s.push_str(" CHECK (\"id\" <> '')");
                    }
                    s
                })
                .collect();
            let pk: Vec<String> = primary_key.iter().map(|c| q(c)).collect();
            defs.push(format!("PRIMARY KEY ({})", pk.join(", ")));
            plan.statements.push(format!(
                "CREATE TABLE {t} (\n    {}\n)",
                defs.join(",\n    ")
            ));
            plan.created = true;
        }
        Some(existing) => {
            for c in cols {
                match existing.get(&c.name) {
                    None => {
                        plan.statements.push(format!(
                            "ALTER TABLE {t} ADD COLUMN {} {}",
                            q(&c.name),
                            c.kind.decl(d)
                        ));
                        plan.added.push(c.name.clone());
                    }
                    Some(found) if !found.eq_ignore_ascii_case(c.kind.catalog(d)) => {
                        plan.retyped.push(c.name.clone());
                    }
                    Some(_) => {}
                }
            }
        }
    }
    plan
}

/// The partial unique index allowing one current version per id.
pub(crate) fn one_current_index(d: Dialect, history_table: &str) -> String {
    let cond = match d {
        Dialect::Sqlite => "\"is_current\" = 1",
        Dialect::Postgres => "\"is_current\"",
    };
    format!(
        "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} (\"id\") WHERE {cond}",
        q(&format!("{history_table}_one_current")),
        q(history_table)
    )
}

/// Models by object plus the keyring, shared by a store's calls.
#[derive(Debug)]
pub(crate) struct Registry {
    dialect: Dialect,
    keyring: RwLock<Option<Arc<Keyring>>>,
    models: RwLock<Arc<HashMap<String, Arc<Registered>>>>,
}

/// A consistent view of the registry for one call.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub backend: &'static str,
    pub keyring: Option<Arc<Keyring>>,
    pub models: Arc<HashMap<String, Arc<Registered>>>,
}

impl Registry {
    pub(crate) fn new(dialect: Dialect) -> Registry {
        Registry {
            dialect,
            keyring: RwLock::new(None),
            models: RwLock::new(Arc::new(HashMap::new())),
        }
    }

    pub(crate) fn set_keyring(&self, keyring: Option<Arc<Keyring>>) {
        *self.keyring.write() = keyring;
    }

    pub(crate) fn ctx(&self) -> Ctx {
        Ctx {
            backend: self.dialect.backend(),
            keyring: self.keyring.read().clone(),
            models: Arc::clone(&self.models.read()),
        }
    }

    pub(crate) fn register(&self, model: ObjectModel) -> Arc<Registered> {
        let reg = Arc::new(Registered::new(model, self.dialect));
        let mut guard = self.models.write();
        let mut map = HashMap::clone(&guard);
        map.insert(reg.model.object.clone(), Arc::clone(&reg));
        *guard = Arc::new(map);
        reg
    }

    /// Registers models loaded from `curated_models` (JSON); a row that does not parse is an
    /// error naming the object.
    pub(crate) fn load(&self, rows: Vec<(String, String)>) -> Result<()> {
        for (object, json) in rows {
            let model: ObjectModel =
                serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                    backend: self.dialect.backend(),
                    table: "curated_models",
                    offset: 0,
                    reason: format!("model of '{object}' does not parse: {e}"),
                })?;
            self.register(model);
        }
        Ok(())
    }
}

pub(crate) fn keyring_missing(backend: &'static str, op: &'static str, what: String) -> StoreError {
    StoreError::InvalidInput {
        backend,
        op,
        reason: format!(
            "{what} but no encryption keyring is set; configure a PII key (PII never rests in \
             plaintext)"
        ),
    }
}

impl Ctx {
    pub(crate) fn model(&self, object: &str) -> Option<&Arc<Registered>> {
        self.models.get(object)
    }

    pub(crate) fn require(&self, op: &'static str, object: &str) -> Result<&Arc<Registered>> {
        self.model(object).ok_or_else(|| StoreError::InvalidInput {
            backend: self.backend,
            op,
            reason: format!("object '{object}' has no curated model; call ensure_model first"),
        })
    }

    pub(crate) fn keyring_for(
        &self,
        op: &'static str,
        what: impl FnOnce() -> String,
    ) -> Result<&Keyring> {
        self.keyring
            .as_deref()
            .ok_or_else(|| keyring_missing(self.backend, op, what()))
    }

    /// Refuses a model whose tables another registered object already uses.
    pub(crate) fn check_tables(&self, m: &ObjectModel) -> Result<()> {
        let mine = |t: &str| t == m.table || m.history.as_ref().is_some_and(|h| h.table == t);
        for other in self.models.values().filter(|o| o.model.object != m.object) {
            let theirs = std::iter::once(&other.model.table)
                .chain(other.model.history.as_ref().map(|h| &h.table));
            for t in theirs {
                if mine(t) {
                    return Err(StoreError::InvalidInput {
                        backend: self.backend,
                        op: "ensure model",
                        reason: format!(
                            "model of '{}': table '{t}' already belongs to object '{}'",
                            m.object, other.model.object
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks what the database cannot check the same way on every backend: at most one row
    /// per (object, id) in a batch.
    pub(crate) fn check_batch(&self, batch: &CuratedBatch) -> Result<()> {
        let mut seen = std::collections::HashSet::with_capacity(batch.rows.len());
        for (object, row) in &batch.rows {
            if !seen.insert((object.as_str(), row.id.as_str())) {
                return Err(write_error(
                    self.backend,
                    object,
                    &row.id,
                    "upsert",
                    "the record appears twice in the batch's rows (one final state per record)"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    fn any_pii(&self) -> bool {
        self.models.values().any(|m| m.has_pii)
    }

    /// The payload of a raw change as stored: LZ4-compressed ([`compress_raw`]), then sealed
    /// when its entity has PII columns (encrypted bytes do not compress).
    pub(crate) fn encode_raw(&self, entity: &str, payload: &[u8]) -> Result<Vec<u8>> {
        let compressed = compress_raw(payload);
        match self.model(entity) {
            Some(m) if m.has_pii => {
                let k = self.keyring_for("append batch", || {
                    format!("raw changes of '{entity}' carry PII")
                })?;
                Ok(k.seal_bytes(&pii::raw_aad(entity), &compressed))
            }
            _ => Ok(compressed),
        }
    }

    /// [`Ctx::encode_raw`] of every change of a batch, off the async workers (both backends call
    /// it before they take their connection).
    pub(crate) fn encode_raw_batch(&self, changes: &[crate::RawChange]) -> Result<Vec<Vec<u8>>> {
        cpu_bound(|| {
            changes
                .iter()
                .map(|c| self.encode_raw(&c.entity, &c.payload))
                .collect()
        })
    }

    /// The payload of a raw change as read: opened when sealed, decompressed when compressed
    /// (payloads stored before compression came in are returned as they are).
    pub(crate) fn decode_raw(&self, entity: &str, offset: i64, stored: Vec<u8>) -> Result<Vec<u8>> {
        let plain = if pii::is_sealed_bytes(&stored) {
            let k = self.keyring_for("read log", || {
                format!("raw changes of '{entity}' are sealed")
            })?;
            k.open_bytes(&pii::raw_aad(entity), &stored)?
        } else {
            stored
        };
        decompress_raw(self.backend, offset, plain)
    }

    /// A dead-letter payload as stored: sealed whenever a keyring is set. Without one it is
    /// refused if any registered model has PII (it may carry PII of any object).
    pub(crate) fn seal_dead_letter<'a>(
        &self,
        channel: &str,
        payload: &'a [u8],
    ) -> Result<Cow<'a, [u8]>> {
        match &self.keyring {
            Some(k) => Ok(Cow::Owned(
                k.seal_bytes(&pii::dead_letter_aad(channel), payload),
            )),
            None if self.any_pii() => Err(keyring_missing(
                self.backend,
                "store dead letter",
                format!("dead letters of channel '{channel}' may carry PII"),
            )),
            None => Ok(Cow::Borrowed(payload)),
        }
    }
}

/// Marks an LZ4-compressed raw payload (`SFL1`, the uncompressed size as u32 LE, an LZ4 block).
/// Every payload written since compression came in starts with this or with the sealed-bytes
/// magic, so neither can be mistaken for Avro.
pub(crate) const RAW_LZ4_MAGIC: &[u8; 4] = b"SFL1";

/// Largest payload a stored block may declare (Pub/Sub events are at most 1 MB; a damaged or
/// hostile block must not make the reader allocate gigabytes).
const RAW_MAX_DECOMPRESSED: usize = 64 << 20;

/// LZ4 rather than zstd: measured on 3–8 KB CDC payloads, zstd level 1 took ~20 µs of CPU per
/// event (4× smaller), LZ4 a few µs (2.5× smaller) — the pipeline is CPU-bound on 2 cores, and
/// 2.5× already takes the raw log from two pages per event to under one.
pub(crate) fn compress_raw(payload: &[u8]) -> Vec<u8> {
    let block = lz4_flex::block::compress(payload);
    let mut out = Vec::with_capacity(8 + block.len());
    out.extend_from_slice(RAW_LZ4_MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&block);
    out
}

/// The payload `stored` holds: decompressed when it starts with [`RAW_LZ4_MAGIC`].
pub(crate) fn decompress_raw(
    backend: &'static str,
    offset: i64,
    stored: Vec<u8>,
) -> Result<Vec<u8>> {
    let Some(rest) = stored.strip_prefix(RAW_LZ4_MAGIC.as_slice()) else {
        return Ok(stored);
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        backend,
        table: "raw_changes",
        offset,
        reason: format!("the LZ4 payload {reason}"),
    };
    let (size, block) = match rest.split_first_chunk::<4>() {
        Some((size, block)) => (u32::from_le_bytes(*size) as usize, block),
        None => return Err(corrupt("is shorter than its header".into())),
    };
    if size > RAW_MAX_DECOMPRESSED {
        return Err(corrupt(format!(
            "declares {size} bytes, over the 64 MiB limit"
        )));
    }
    let out = lz4_flex::block::decompress(block, size)
        .map_err(|e| corrupt(format!("does not decompress: {e}")))?;
    if out.len() != size {
        return Err(corrupt(format!(
            "decompressed to {} bytes where its header says {size}",
            out.len()
        )));
    }
    Ok(out)
}

/// Runs CPU-bound work (compression, encryption of a whole batch) without stalling the async
/// workers: in place on a multi-threaded runtime, inline otherwise.
pub(crate) fn cpu_bound<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A value as bound to or read from the database.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Int4(i32),
    Real(f64),
    Text(Cow<'a, str>),
    /// Days since 1970-01-01.
    Date(i32),
    /// Epoch milliseconds, UTC.
    Ts(i64),
    Bytes(Cow<'a, [u8]>),
}

impl Cell<'_> {
    fn text_opt(s: Option<&str>) -> Cell<'_> {
        s.map_or(Cell::Null, |s| Cell::Text(Cow::Borrowed(s)))
    }
}

/// Days between 0001-01-01 (CE day 1) and 1970-01-01.
const UNIX_EPOCH_CE_DAYS: i32 = 719_163;

pub(crate) fn date_from_days(days: i32) -> Option<chrono::NaiveDate> {
    chrono::NaiveDate::from_num_days_from_ce_opt(days.checked_add(UNIX_EPOCH_CE_DAYS)?)
}

pub(crate) fn days_from_date(d: chrono::NaiveDate) -> i32 {
    use chrono::Datelike;
    d.num_days_from_ce() - UNIX_EPOCH_CE_DAYS
}

pub(crate) fn ts_from_ms(ms: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(ms)
}

/// `2026-11-21T09:30:00.000Z`.
pub(crate) fn format_ts(ms: i64) -> Option<String> {
    ts_from_ms(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

pub(crate) fn parse_ts(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// `2026-11-21`.
pub(crate) fn format_date(days: i32) -> Option<String> {
    use chrono::Datelike;
    let d = date_from_days(days)?;
    Some(if (0..=9999).contains(&d.year()) {
        format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
    } else {
        d.format("%Y-%m-%d").to_string()
    })
}

pub(crate) fn parse_date(s: &str) -> Option<i32> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .map(days_from_date)
}

/// `RecordVersion` as `ts:cn:seq`.
pub(crate) fn version_text(v: &RecordVersion) -> String {
    format!(
        "{}:{}:{}",
        v.commit_timestamp, v.commit_number, v.sequence_number
    )
}

pub(crate) fn parse_version(s: &str) -> Option<RecordVersion> {
    let mut it = s.split(':');
    let v = RecordVersion {
        commit_timestamp: it.next()?.parse().ok()?,
        commit_number: it.next()?.parse().ok()?,
        sequence_number: it.next()?.parse().ok()?,
    };
    it.next().is_none().then_some(v)
}

fn value_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Real(_) => "real",
        Value::Text(_) => "text",
        Value::Date(_) => "date",
        Value::Timestamp(_) => "timestamp",
    }
}

/// A plaintext (non-PII) value as a cell of a column of type `ty`.
fn plain_cell<'a>(ty: ColumnType, v: &'a Value) -> std::result::Result<Cell<'a>, String> {
    Ok(match (ty, v) {
        (_, Value::Null) => Cell::Null,
        (ColumnType::Text, Value::Text(s)) => Cell::Text(Cow::Borrowed(s)),
        (ColumnType::Integer, Value::Int(i)) => Cell::Int(*i),
        (ColumnType::Real, Value::Real(f)) => Cell::Real(*f),
        (ColumnType::Real, Value::Int(i)) => Cell::Real(*i as f64),
        (ColumnType::Boolean, Value::Bool(b)) => Cell::Bool(*b),
        (ColumnType::Date, Value::Date(d)) => {
            date_from_days(*d).ok_or_else(|| format!("date {d} is out of range"))?;
            Cell::Date(*d)
        }
        (ColumnType::Timestamp, Value::Timestamp(ms)) => {
            ts_from_ms(*ms).ok_or_else(|| format!("timestamp {ms} is out of range"))?;
            Cell::Ts(*ms)
        }
        (ty, v) => {
            return Err(format!(
                "a {} value does not fit a {ty:?} column",
                value_type_name(v)
            ))
        }
    })
}

/// A value as the cell of data column `c` (sealed when PII) with AAD `aad`.
fn value_cell<'a>(
    keyring: Option<&Keyring>,
    aad: impl FnOnce() -> String,
    c: &DataCol,
    v: &'a Value,
) -> std::result::Result<Cell<'a>, String> {
    if !c.pii {
        return plain_cell(c.ty, v);
    }
    if v.is_null() {
        return Ok(Cell::Null);
    }
    plain_cell(c.ty, v)?; // type check before sealing
    let k = keyring.ok_or_else(|| "the column is PII and no keyring is set".to_string())?;
    Ok(Cell::Text(Cow::Owned(seal_value(k, &aad(), v))))
}

pub(crate) fn seal_value(k: &Keyring, aad: &str, v: &Value) -> String {
    let json = serde_json::to_vec(v).expect("a Value serialises to JSON");
    k.seal(aad, &json)
}

pub(crate) fn open_value(k: &Keyring, aad: &str, sealed: &str) -> Result<Value> {
    let json = k.open(aad, sealed)?;
    serde_json::from_slice(&json).map_err(|e| StoreError::Pii {
        op: "open value",
        key_id: pii::sealed_key_id(sealed).unwrap_or("?").to_string(),
        reason: format!("the opened value of '{aad}' is not a Value: {e}"),
        class: ErrorClass::Internal,
    })
}

/// A cell read back from a column of type `ty` (plaintext) as a [`Value`].
fn plain_value(ty: ColumnType, cell: Cell<'_>) -> std::result::Result<Value, String> {
    Ok(match (ty, cell) {
        (_, Cell::Null) => Value::Null,
        (ColumnType::Text, Cell::Text(s)) => Value::Text(s.into_owned()),
        (ColumnType::Integer, Cell::Int(i)) => Value::Int(i),
        (ColumnType::Real, Cell::Real(f)) => Value::Real(f),
        (ColumnType::Real, Cell::Int(i)) => Value::Real(i as f64),
        (ColumnType::Boolean, Cell::Bool(b)) => Value::Bool(b),
        (ColumnType::Boolean, Cell::Int(i)) => Value::Bool(i != 0),
        (ColumnType::Date, Cell::Date(d)) => Value::Date(d),
        (ColumnType::Date, Cell::Text(s)) => {
            Value::Date(parse_date(&s).ok_or_else(|| format!("'{s}' is not a date"))?)
        }
        (ColumnType::Timestamp, Cell::Ts(ms)) => Value::Timestamp(ms),
        (ColumnType::Timestamp, Cell::Text(s)) => {
            Value::Timestamp(parse_ts(&s).ok_or_else(|| format!("'{s}' is not a timestamp"))?)
        }
        // Plaintext left in a column that became PII later (rotate_keys seals it).
        (ColumnType::Integer, Cell::Text(s)) => {
            Value::Int(s.parse().map_err(|_| format!("'{s}' is not an integer"))?)
        }
        (ColumnType::Real, Cell::Text(s)) => {
            Value::Real(s.parse().map_err(|_| format!("'{s}' is not a number"))?)
        }
        (ColumnType::Boolean, Cell::Text(s)) => Value::Bool(matches!(&*s, "1" | "true" | "t")),
        (ty, cell) => return Err(format!("{cell:?} is not a {ty:?} value")),
    })
}

/// A data column's cell read back as a [`Value`] (PII opened).
fn read_value(
    ctx: &Ctx,
    aad: impl FnOnce() -> String,
    c: &DataCol,
    cell: Cell<'_>,
) -> Result<std::result::Result<Value, String>> {
    if c.pii {
        if let Cell::Text(s) = &cell {
            if pii::is_sealed(s) {
                let aad = aad();
                let k =
                    ctx.keyring_for("read curated rows", || format!("column '{aad}' is sealed"))?;
                return Ok(Ok(open_value(k, &aad, s)?));
            }
        }
    }
    Ok(plain_value(c.ty, cell))
}

fn write_error(
    backend: &'static str,
    object: &str,
    record_id: &str,
    what: impl Into<String>,
    reason: String,
) -> StoreError {
    StoreError::CuratedWrite {
        backend,
        object: object.to_string(),
        record_id: record_id.to_string(),
        what: what.into(),
        class: ErrorClass::User,
        source: reason.into(),
    }
}

/// The cells of one current-table upsert, in `reg.cur` order.
pub(crate) fn encode_row<'a>(
    ctx: &Ctx,
    reg: &Registered,
    row: &'a CurrentRow,
) -> Result<Vec<Cell<'a>>> {
    let object = &reg.model.object;
    let fail =
        |what: String, reason: String| write_error(ctx.backend, object, &row.id, what, reason);
    if row.id.is_empty() {
        return Err(fail("upsert".into(), "the record id is empty".into()));
    }
    let mut cells: Vec<Cell<'a>> = Vec::with_capacity(reg.cur.len());
    cells.push(Cell::Text(Cow::Borrowed(&row.id)));
    cells.resize(1 + reg.data.len(), Cell::Null);
    for (name, v) in &row.values {
        if name == "id" {
            if *v != Value::Text(row.id.clone()) && !v.is_null() {
                return Err(fail(
                    "upsert".into(),
                    format!("values[\"id\"] = {v:?} differs from the row id"),
                ));
            }
            continue;
        }
        let Some(&i) = reg.data_index.get(name) else {
            return Err(fail(
                format!("upsert of column '{name}'"),
                format!(
                    "'{name}' is not a column of the model of table '{}' (call ensure_model with \
                     the new column first)",
                    reg.model.table
                ),
            ));
        };
        let c = &reg.data[i];
        cells[1 + i] = value_cell(
            ctx.keyring.as_deref(),
            || pii::column_aad(object, name),
            c,
            v,
        )
        .map_err(|reason| fail(format!("upsert of column '{name}'"), reason))?;
    }
    let m = &row.meta;
    cells.extend([
        Cell::Bool(row.deleted),
        Cell::Ts(m.version.commit_timestamp),
        Cell::Int(m.version.commit_timestamp),
        Cell::Int(m.version.commit_number),
        Cell::Int4(m.version.sequence_number),
        Cell::Text(Cow::Borrowed(&m.change_type)),
        Cell::Text(Cow::Borrowed(m.source.as_str())),
        Cell::Text(Cow::Borrowed(&m.transaction_key)),
        m.replay_id
            .as_ref()
            .map_or(Cell::Null, |r| Cell::Text(Cow::Owned(r.to_hex()))),
        Cell::Text(Cow::Borrowed(&m.run_id)),
        Cell::Ts(m.applied_at_ms),
        Cell::text_opt(m.origin_client.as_deref()),
        Cell::Text(Cow::Owned(version_text(&row.base_version))),
        Cell::text_opt(row.field_versions.as_deref()),
        row.history_version.map_or(Cell::Null, Cell::Int),
        Cell::Bool(row.partial),
    ]);
    for ms in [m.version.commit_timestamp, m.applied_at_ms] {
        if ts_from_ms(ms).is_none() {
            return Err(fail(
                "upsert of sync metadata".into(),
                format!("timestamp {ms} is out of range"),
            ));
        }
    }
    debug_assert_eq!(cells.len(), reg.cur.len());
    Ok(cells)
}

fn corrupt(backend: &'static str, table: &str, id: &str, reason: String) -> StoreError {
    StoreError::InvalidInput {
        backend,
        op: "read curated row",
        reason: format!("row '{id}' of table '{table}': {reason}"),
    }
}

fn take_text(cell: Cell<'_>) -> Option<String> {
    match cell {
        Cell::Text(s) => Some(s.into_owned()),
        _ => None,
    }
}

fn take_int(cell: &Cell<'_>) -> Option<i64> {
    match cell {
        Cell::Int(i) => Some(*i),
        Cell::Int4(i) => Some(i64::from(*i)),
        _ => None,
    }
}

fn take_bool(cell: &Cell<'_>) -> Option<bool> {
    match cell {
        Cell::Bool(b) => Some(*b),
        Cell::Int(i) => Some(*i != 0),
        _ => None,
    }
}

fn take_ts(cell: &Cell<'_>) -> Option<i64> {
    match cell {
        Cell::Ts(ms) => Some(*ms),
        Cell::Text(s) => parse_ts(s),
        _ => None,
    }
}

fn meta_from(
    backend: &'static str,
    table: &str,
    id: &str,
    cells: &mut std::vec::IntoIter<Cell<'static>>,
    names: &'static [(&'static str, Kind, bool)],
) -> Result<HashMap<&'static str, Cell<'static>>> {
    let mut out = HashMap::with_capacity(names.len());
    for (name, _, not_null) in names {
        let c = cells
            .next()
            .ok_or_else(|| corrupt(backend, table, id, "too few columns".into()))?;
        if *not_null && c == Cell::Null {
            return Err(corrupt(backend, table, id, format!("{name} is NULL")));
        }
        out.insert(*name, c);
    }
    Ok(out)
}

fn source_of(s: &str) -> Option<ChangeSource> {
    match s {
        "cdc" => Some(ChangeSource::Cdc),
        "snapshot" => Some(ChangeSource::Snapshot),
        "outbound_message" => Some(ChangeSource::OutboundMessage),
        "poll" => Some(ChangeSource::Poll),
        _ => None,
    }
}

/// A current row from its cells in `reg.cur` order (PII opened, NULL data columns absent).
pub(crate) fn decode_row(
    ctx: &Ctx,
    reg: &Registered,
    cells: Vec<Cell<'static>>,
) -> Result<CurrentRow> {
    let backend = ctx.backend;
    let table = &reg.model.table;
    let mut it = cells.into_iter();
    let id = it
        .next()
        .and_then(take_text)
        .ok_or_else(|| corrupt(backend, table, "?", "the id is not text".into()))?;
    let mut values = BTreeMap::new();
    for c in &reg.data {
        let cell = it
            .next()
            .ok_or_else(|| corrupt(backend, table, &id, "too few columns".into()))?;
        if cell == Cell::Null {
            continue;
        }
        let v = read_value(ctx, || pii::column_aad(&reg.model.object, &c.name), c, cell)?
            .map_err(|r| corrupt(backend, table, &id, format!("column '{}': {r}", c.name)))?;
        values.insert(c.name.clone(), v);
    }
    let mut m = meta_from(backend, table, &id, &mut it, CUR_META)?;
    let bad = |name: &str| {
        corrupt(
            backend,
            table,
            &id,
            format!("{name} has an unexpected value"),
        )
    };
    let mut text = |name: &'static str| -> Result<Option<String>> {
        match m.remove(name).unwrap_or(Cell::Null) {
            Cell::Null => Ok(None),
            c => take_text(c).map(Some).ok_or_else(|| bad(name)),
        }
    };
    let change_type = text("_sf_change_type")?.unwrap_or_default();
    let source_s = text("_sf_source")?.unwrap_or_default();
    let transaction_key = text("_sf_transaction_key")?.unwrap_or_default();
    let replay_hex = text("_sf_replay_id")?;
    let run_id = text("_sf_run_id")?.unwrap_or_default();
    let origin_client = text("_sf_origin")?;
    let base_s = text("_sf_base_version")?.unwrap_or_default();
    let field_versions = text("_sf_field_versions")?;
    let int = |name: &str| m.get(name).and_then(take_int);
    let version = RecordVersion {
        commit_timestamp: int("_sf_commit_ms").ok_or_else(|| bad("_sf_commit_ms"))?,
        commit_number: int("_sf_commit_number").ok_or_else(|| bad("_sf_commit_number"))?,
        sequence_number: int("_sf_sequence")
            .and_then(|v| i32::try_from(v).ok())
            .ok_or_else(|| bad("_sf_sequence"))?,
    };
    let history_version = int("_sf_history_version");
    let deleted = m
        .get("_sf_deleted")
        .and_then(take_bool)
        .ok_or_else(|| bad("_sf_deleted"))?;
    let partial = m
        .get("_sf_partial")
        .and_then(take_bool)
        .ok_or_else(|| bad("_sf_partial"))?;
    let applied_at_ms = m
        .get("_sf_applied_at")
        .and_then(take_ts)
        .ok_or_else(|| bad("_sf_applied_at"))?;
    let replay_id = replay_hex
        .map(|h| ReplayId::from_hex(&h).map_err(|_| bad("_sf_replay_id")))
        .transpose()?;
    Ok(CurrentRow {
        values,
        meta: SyncMeta {
            version,
            change_type,
            source: source_of(&source_s).ok_or_else(|| bad("_sf_source"))?,
            transaction_key,
            replay_id,
            run_id,
            applied_at_ms,
            origin_client,
        },
        deleted,
        base_version: parse_version(&base_s).ok_or_else(|| bad("_sf_base_version"))?,
        field_versions,
        history_version,
        partial,
        id,
    })
}

/// The cells of a history INSERT (Open), in `reg.hist` order.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_history_open<'a>(
    ctx: &Ctx,
    reg: &Registered,
    id: &'a str,
    version: i64,
    valid_from_ms: i64,
    values: &'a BTreeMap<String, Value>,
    meta: &'a SyncMeta,
) -> Result<Vec<Cell<'a>>> {
    let object = &reg.model.object;
    let fail = |what: String, reason: String| write_error(ctx.backend, object, id, what, reason);
    if id.is_empty() {
        return Err(fail("history open".into(), "the record id is empty".into()));
    }
    if ts_from_ms(valid_from_ms).is_none() || ts_from_ms(meta.applied_at_ms).is_none() {
        return Err(fail(
            format!("history open of version {version}"),
            "a timestamp is out of range".into(),
        ));
    }
    for name in values.keys() {
        if name != "id" && !reg.data_index.contains_key(name) {
            return Err(fail(
                format!("history open of version {version}"),
                format!("'{name}' is not a column of the model"),
            ));
        }
    }
    let mut cells = vec![
        Cell::Text(Cow::Borrowed(id)),
        Cell::Int(version),
        Cell::Ts(valid_from_ms),
        Cell::Null,
        Cell::Bool(true),
        Cell::Text(Cow::Borrowed(&meta.change_type)),
        Cell::Null,
        Cell::Text(Cow::Borrowed(&meta.transaction_key)),
    ];
    for &i in &reg.tracked {
        let c = &reg.data[i];
        let cell = match values.get(&c.name) {
            None => Cell::Null,
            Some(v) => value_cell(
                ctx.keyring.as_deref(),
                || pii::column_aad(object, &c.name),
                c,
                v,
            )
            .map_err(|r| fail(format!("history open of column '{}'", c.name), r))?,
        };
        cells.push(cell);
    }
    cells.extend(history_meta_cells(meta));
    Ok(cells)
}

/// The HIST_META cells of `meta`.
pub(crate) fn history_meta_cells(meta: &SyncMeta) -> Vec<Cell<'_>> {
    vec![
        Cell::Int(meta.version.commit_timestamp),
        meta.replay_id
            .as_ref()
            .map_or(Cell::Null, |r| Cell::Text(Cow::Owned(r.to_hex()))),
        Cell::Text(Cow::Borrowed(&meta.run_id)),
        Cell::Ts(meta.applied_at_ms),
        Cell::Text(Cow::Borrowed(meta.source.as_str())),
        Cell::text_opt(meta.origin_client.as_deref()),
    ]
}

/// A history row from its cells in `reg.hist` order.
pub(crate) fn decode_history(
    ctx: &Ctx,
    reg: &Registered,
    cells: Vec<Cell<'static>>,
) -> Result<HistoryRow> {
    let backend = ctx.backend;
    let table = reg.history_table().unwrap_or("?");
    let mut it = cells.into_iter();
    let mut head = meta_from(backend, table, "?", &mut it, HIST_HEAD)?;
    let id = head.remove("id").and_then(take_text).unwrap_or_default();
    let bad = |name: &str| {
        corrupt(
            backend,
            table,
            &id,
            format!("{name} has an unexpected value"),
        )
    };
    let mut values = BTreeMap::new();
    for &i in &reg.tracked {
        let c = &reg.data[i];
        let cell = it
            .next()
            .ok_or_else(|| corrupt(backend, table, &id, "too few columns".into()))?;
        if cell == Cell::Null {
            continue;
        }
        let v = read_value(ctx, || pii::column_aad(&reg.model.object, &c.name), c, cell)?
            .map_err(|r| corrupt(backend, table, &id, format!("column '{}': {r}", c.name)))?;
        values.insert(c.name.clone(), v);
    }
    let text =
        |head: &mut HashMap<&str, Cell<'static>>, name: &str| head.remove(name).and_then(take_text);
    Ok(HistoryRow {
        version: head
            .get("_sf_version")
            .and_then(take_int)
            .ok_or_else(|| bad("_sf_version"))?,
        valid_from_ms: head
            .get("valid_from")
            .and_then(take_ts)
            .ok_or_else(|| bad("valid_from"))?,
        valid_to_ms: head.get("valid_to").and_then(take_ts),
        is_current: head
            .get("is_current")
            .and_then(take_bool)
            .ok_or_else(|| bad("is_current"))?,
        change_type: text(&mut head, "change_type").unwrap_or_default(),
        end_change_type: text(&mut head, "end_change_type"),
        transaction_key: text(&mut head, "transaction_key").unwrap_or_default(),
        values,
        id,
    })
}

/// One audit entry as stored.
#[derive(Debug, Clone)]
pub(crate) struct AuditRow {
    pub entry: String,
    pub prev_hash: String,
    pub hash: String,
}

/// `prev_hash` of the first entry.
pub(crate) const GENESIS_HASH: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

pub(crate) fn chain_hash(prev_hash: &str, entry: &str) -> Option<String> {
    let mut prev = [0u8; 32];
    hex::decode_to_slice(prev_hash, &mut prev).ok()?;
    let mut h = Sha256::new();
    h.update(prev);
    h.update(entry.as_bytes());
    Some(hex::encode(h.finalize()))
}

/// Serialises and hashes one audit entry after `prev_hash`.
pub(crate) fn audit_row(ctx: &Ctx, prev_hash: &str, e: &AuditEntry) -> Result<AuditRow> {
    let entry = audit_entry_json(ctx, e)?;
    let hash = audit_hash(ctx, prev_hash, e, &entry)?;
    Ok(AuditRow {
        entry,
        prev_hash: prev_hash.to_string(),
        hash,
    })
}

/// The stored (hashed) form of one audit entry.
pub(crate) fn audit_entry_json(ctx: &Ctx, e: &AuditEntry) -> Result<String> {
    serde_json::to_string(e).map_err(|err| {
        write_error(
            ctx.backend,
            &e.object,
            &e.record_id,
            "audit entry",
            err.to_string(),
        )
    })
}

/// The chain hash of `entry` (serialised by [`audit_entry_json`]) after `prev_hash`.
pub(crate) fn audit_hash(
    ctx: &Ctx,
    prev_hash: &str,
    e: &AuditEntry,
    entry: &str,
) -> Result<String> {
    chain_hash(prev_hash, entry).ok_or_else(|| {
        write_error(
            ctx.backend,
            &e.object,
            &e.record_id,
            "audit entry",
            format!("previous hash '{prev_hash}' is not 64 hex digits"),
        )
    })
}

/// Re-seals one curated/history PII cell under the current key, sealing plaintext too. `None`
/// when it is NULL or already under the current key.
pub(crate) fn reseal_cell(
    k: &Keyring,
    object: &str,
    c: &DataCol,
    cell: Cell<'_>,
) -> Result<Option<String>> {
    let aad = pii::column_aad(object, &c.name);
    let value = match cell {
        Cell::Null => return Ok(None),
        Cell::Text(s) if pii::is_sealed(&s) => {
            if k.is_current(pii::sealed_key_id(&s)) {
                return Ok(None);
            }
            open_value(k, &aad, &s)?
        }
        other => plain_value(c.ty, other).map_err(|r| StoreError::InvalidInput {
            backend: "store",
            op: "rotate keys",
            reason: format!("plaintext in PII column '{aad}': {r}"),
        })?,
    };
    Ok(Some(seal_value(k, &aad, &value)))
}

/// Re-seals a binary payload under the current key (sealing plaintext too); `None` when it is
/// already under the current key.
pub(crate) fn reseal_bytes(k: &Keyring, aad: &str, payload: &[u8]) -> Result<Option<Vec<u8>>> {
    if pii::is_sealed_bytes(payload) {
        if k.is_current(pii::sealed_bytes_key_id(payload)) {
            return Ok(None);
        }
        let plain = k.open_bytes(aad, payload)?;
        return Ok(Some(k.seal_bytes(aad, &plain)));
    }
    Ok(Some(k.seal_bytes(aad, payload)))
}

/// One stored audit row as read for verification.
#[derive(Debug)]
pub(crate) struct StoredAudit {
    pub seq: i64,
    pub object: String,
    pub record_id: String,
    pub change_type: String,
    pub event_key: String,
    pub entry: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Walks the chain one row at a time, in seq order.
#[derive(Debug, Default)]
pub(crate) struct AuditVerifier {
    entries: u64,
    last: Option<String>,
    first_break: Option<(u64, String)>,
}

impl AuditVerifier {
    /// A verifier of a chain whose entries up to the anchor were pruned by retention: the
    /// first remaining entry must link to the anchor's hash.
    pub(crate) fn after_anchor(anchor: Option<&crate::retention::AuditAnchor>) -> AuditVerifier {
        AuditVerifier {
            last: anchor.map(|a| a.hash.clone()),
            ..Default::default()
        }
    }

    pub(crate) fn push(&mut self, r: StoredAudit) {
        self.entries += 1;
        let seq = r.seq.max(0) as u64;
        let expected_prev = self.last.as_deref().unwrap_or(GENESIS_HASH);
        let problem = if r.prev_hash != expected_prev {
            Some(format!(
                "broken link at seq {seq}: prev_hash does not match the hash of the previous entry"
            ))
        } else if chain_hash(&r.prev_hash, &r.entry).as_deref() != Some(r.hash.as_str()) {
            Some(format!("hash mismatch at seq {seq}"))
        } else {
            match serde_json::from_str::<AuditEntry>(&r.entry) {
                Err(e) => Some(format!("entry at seq {seq} does not parse: {e}")),
                Ok(e) => [
                    ("object", e.object == r.object),
                    ("record_id", e.record_id == r.record_id),
                    ("change_type", e.change_type == r.change_type),
                    ("event_key", e.event_key == r.event_key),
                ]
                .iter()
                .find(|(_, ok)| !ok)
                .map(|(col, _)| format!("column {col} at seq {seq} differs from the hashed entry")),
            }
        };
        if self.first_break.is_none() {
            self.first_break = problem.map(|p| (seq, p));
        }
        // Continue from the stored hash, so one tampered entry is reported once.
        self.last = Some(r.hash);
    }

    pub(crate) fn finish(self) -> AuditVerification {
        AuditVerification {
            entries: self.entries,
            first_break: self.first_break,
            head: self.last,
            operator_actions: 0,
            operator_head: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curated::{ColumnDef, HistorySpec};

    fn model() -> ObjectModel {
        ObjectModel {
            object: "Case".into(),
            table: "sf_case".into(),
            columns: vec![
                ColumnDef {
                    name: "id".into(),
                    field: "Id".into(),
                    ty: ColumnType::Text,
                    pii: false,
                },
                ColumnDef {
                    name: "subject".into(),
                    field: "Subject".into(),
                    ty: ColumnType::Text,
                    pii: false,
                },
                ColumnDef {
                    name: "amount".into(),
                    field: "Amount".into(),
                    ty: ColumnType::Real,
                    pii: false,
                },
                ColumnDef {
                    name: "email".into(),
                    field: "Email".into(),
                    ty: ColumnType::Text,
                    pii: true,
                },
            ],
            history: Some(HistorySpec {
                table: "sf_case_history".into(),
                columns: vec!["subject".into(), "email".into()],
            }),
        }
    }

    #[test]
    fn ddl_for_both_dialects() {
        let reg = Registered::new(model(), Dialect::Postgres);
        let plan = plan_table(Dialect::Postgres, "sf_case", &reg.cur, &["id"], None);
        let ddl = &plan.statements[0];
        assert!(
            ddl.starts_with(
                "CREATE TABLE \"sf_case\" (\n    \"id\" text NOT NULL CHECK (\"id\" <> '')"
            ),
            "{ddl}"
        );
        assert!(ddl.contains("\"amount\" double precision,"), "{ddl}");
        assert!(ddl.contains("\"email\" text,"), "{ddl}");
        assert!(
            ddl.contains("\"_sf_commit_ts\" timestamptz NOT NULL"),
            "{ddl}"
        );
        assert!(ddl.ends_with("PRIMARY KEY (\"id\")\n)"), "{ddl}");
        let h = reg.hist.as_ref().unwrap();
        let names: Vec<&str> = h.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            &names[..10],
            &[
                "id",
                "_sf_version",
                "valid_from",
                "valid_to",
                "is_current",
                "change_type",
                "end_change_type",
                "transaction_key",
                "subject",
                "email"
            ]
        );

        let reg = Registered::new(model(), Dialect::Sqlite);
        assert!(
            reg.sql.upsert.contains("VALUES (?1, ?2,"),
            "{}",
            reg.sql.upsert
        );
        assert!(reg
            .sql
            .upsert
            .contains("ON CONFLICT (\"id\") DO UPDATE SET \"subject\" = excluded.\"subject\""));
        assert_eq!(one_current_index(Dialect::Sqlite, "sf_case_history"),
            "CREATE UNIQUE INDEX IF NOT EXISTS \"sf_case_history_one_current\" ON \"sf_case_history\" (\"id\") WHERE \"is_current\" = 1");

        let mut existing: HashMap<String, String> = reg
            .cur
            .iter()
            .map(|c| (c.name.clone(), c.kind.decl(Dialect::Sqlite).to_string()))
            .collect();
        existing.remove("amount");
        existing.insert("subject".into(), "INTEGER".into());
        let plan = plan_table(
            Dialect::Sqlite,
            "sf_case",
            &reg.cur,
            &["id"],
            Some(&existing),
        );
        assert_eq!(plan.added, vec!["amount"]);
        assert_eq!(plan.retyped, vec!["subject"]);
        assert_eq!(
            plan.statements,
            vec!["ALTER TABLE \"sf_case\" ADD COLUMN \"amount\" REAL"]
        );
    }

    #[test]
    fn value_lookup_sql_and_columns() {
        let reg = Registered::new(model(), Dialect::Sqlite);
        assert_eq!(
            reg.ids_by_value_sql(Dialect::Sqlite, "subject", 2),
            "SELECT CAST(\"subject\" AS TEXT), \"id\" FROM \"sf_case\" \
             WHERE \"_sf_deleted\" = 0 AND CAST(\"subject\" AS TEXT) IN (?1, ?2)"
        );
        let reg = Registered::new(model(), Dialect::Postgres);
        assert_eq!(
            reg.ids_by_value_sql(Dialect::Postgres, "amount", 7),
            "SELECT \"amount\"::text, \"id\" FROM \"sf_case\" \
             WHERE \"_sf_deleted\" = FALSE AND \"amount\"::text = ANY($1)"
        );
        assert!(reg.check_lookup_column("postgres", "subject").is_ok());
        assert!(reg.check_lookup_column("postgres", "id").is_ok());
        for (column, says) in [("nope", "is not a column"), ("email", "is PII")] {
            let err = reg.check_lookup_column("postgres", column).unwrap_err();
            assert_eq!(err.class(), ErrorClass::User);
            let text = err.to_string();
            assert!(text.contains(&format!("'{column}'")), "{text}");
            assert!(text.contains("'Case'") && text.contains(says), "{text}");
        }
    }

    #[test]
    fn text_forms() {
        assert_eq!(
            format_ts(1_795_253_400_000).unwrap(),
            "2026-11-21T09:30:00.000Z"
        );
        assert_eq!(
            parse_ts("2026-11-21T09:30:00.000Z"),
            Some(1_795_253_400_000)
        );
        assert_eq!(format_ts(-1).unwrap(), "1969-12-31T23:59:59.999Z");
        let d = parse_date("2026-11-21").unwrap();
        assert_eq!(format_date(d).unwrap(), "2026-11-21");
        assert_eq!(parse_date("1970-01-01"), Some(0));
        let v = RecordVersion {
            commit_timestamp: 5,
            commit_number: -2,
            sequence_number: 3,
        };
        assert_eq!(parse_version(&version_text(&v)), Some(v));
        assert_eq!(q("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn model_validation() {
        let mut m = model();
        assert!(validate_model("sqlite", &m).is_ok());
        m.columns[1].name = "_sf_x".into();
        assert!(validate_model("sqlite", &m).is_err());
        let mut m = model();
        m.history.as_mut().unwrap().columns.push("nope".into());
        let err = validate_model("sqlite", &m).unwrap_err();
        assert!(err.to_string().contains("'nope'"), "{err}");
        let mut m = model();
        m.table = "audit_log".into();
        assert!(validate_model("sqlite", &m).is_err());

        let reg = Registry::new(Dialect::Sqlite);
        reg.register(model());
        let mut lead = model();
        lead.object = "Lead".into();
        lead.table = "sf_lead".into();
        assert!(
            reg.ctx().check_tables(&lead).is_err(),
            "history table shared"
        );
        lead.history = None;
        assert!(reg.ctx().check_tables(&lead).is_ok());
        assert!(
            reg.ctx().check_tables(&model()).is_ok(),
            "the same object again"
        );
    }

    #[test]
    fn audit_chain_detects_changes() {
        let reg = Registry::new(Dialect::Sqlite);
        reg.register(model());
        let ctx = reg.ctx();
        let e = AuditEntry {
            object: "Case".into(),
            record_id: "500".into(),
            change_type: "UPDATE".into(),
            event_key: "tx/1/500".into(),
            commit_timestamp_ms: 1,
            commit_user: "005".into(),
            change_origin: String::new(),
            source: ChangeSource::Cdc,
            fields: vec!["Email".into(), "Subject".into()],
            outcome: "applied".into(),
            replay_id: None,
            run_id: "r".into(),
            applied_at_ms: 2,
        };
        let a = audit_row(&ctx, GENESIS_HASH, &e).unwrap();
        // The entry names the fields and holds no values.
        assert!(
            a.entry.contains(r#""fields":["Email","Subject"]"#),
            "{}",
            a.entry
        );
        assert!(!a.entry.contains("values"), "{}", a.entry);
        assert_eq!(a.hash, chain_hash(GENESIS_HASH, &a.entry).unwrap());
        let b = audit_row(&ctx, &a.hash, &e).unwrap();
        let stored = |seq: i64, r: &AuditRow| StoredAudit {
            seq,
            object: "Case".into(),
            record_id: "500".into(),
            change_type: "UPDATE".into(),
            event_key: "tx/1/500".into(),
            entry: r.entry.clone(),
            prev_hash: r.prev_hash.clone(),
            hash: r.hash.clone(),
        };
        let mut v = AuditVerifier::default();
        v.push(stored(1, &a));
        v.push(stored(2, &b));
        let out = v.finish();
        assert_eq!(out.first_break, None);
        assert_eq!(out.head.as_deref(), Some(b.hash.as_str()));
        let mut v = AuditVerifier::default();
        let mut t = stored(1, &a);
        t.entry = t.entry.replace("Subject", "Status");
        v.push(t);
        v.push(stored(2, &b));
        assert_eq!(
            v.finish().first_break,
            Some((1, "hash mismatch at seq 1".into()))
        );
    }

    #[test]
    fn audit_entries_written_with_values_still_verify() {
        // The form entries had before the values were dropped; the chain continues after them.
        let old = r#"{"object":"Case","record_id":"500","change_type":"UPDATE","event_key":"tx/1/500","commit_timestamp_ms":1,"commit_user":"005","change_origin":"","source":"cdc","fields":["Subject"],"values":{"subject":{"t":"text","v":"Hi"}},"outcome":"applied","replay_id":null,"run_id":"r","applied_at_ms":2}"#;
        let old_hash = chain_hash(GENESIS_HASH, old).unwrap();
        let reg = Registry::new(Dialect::Sqlite);
        let e: AuditEntry = serde_json::from_str(old).unwrap();
        let new = audit_row(&reg.ctx(), &old_hash, &e).unwrap();
        assert!(!new.entry.contains("values"), "{}", new.entry);
        let stored = |seq: i64, entry: &str, prev_hash: &str, hash: &str| StoredAudit {
            seq,
            object: "Case".into(),
            record_id: "500".into(),
            change_type: "UPDATE".into(),
            event_key: "tx/1/500".into(),
            entry: entry.into(),
            prev_hash: prev_hash.into(),
            hash: hash.into(),
        };
        let mut v = AuditVerifier::default();
        v.push(stored(1, old, GENESIS_HASH, &old_hash));
        v.push(stored(2, &new.entry, &new.prev_hash, &new.hash));
        let out = v.finish();
        assert_eq!(out.first_break, None);
        assert_eq!(out.entries, 2);
    }
}
