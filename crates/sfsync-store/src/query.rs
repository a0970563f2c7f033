//! Filtered, ordered, paged reads of curated current-state tables and of the writeback outbox,
//! for the read-only surfaces that serve other systems (the OData endpoint, the operational read
//! API).
//!
//! Guarantees: a [`RowFilter`] is compiled to SQL in which every value is a bound parameter —
//! no value is ever spliced into SQL text — and every column is checked against the table's
//! known columns before it reaches SQL (an unknown or sealed column is an error naming it). Rows
//! come in a total order (the requested keys, then the record id), and a keyset cursor
//! ([`RowQuery::after`]) resumes strictly after the last row seen, so paging neither skips nor
//! repeats a row when rows are inserted concurrently. At most [`RowQuery::limit`] rows are
//! read, so memory stays bounded whatever the table's size. PII columns are opened only when
//! [`RowQuery::open_pii`] is set; otherwise they read back as absent and are never decrypted.
//!
//! NULL ordering is the same on both backends: NULL sorts before every value (ascending
//! `NULLS FIRST`, descending `NULLS LAST`). Comparisons follow OData's two-valued logic: a
//! comparison with a NULL operand is false (so `not` of it is true), except `eq`/`ne`, where
//! NULL equals NULL only.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::curated::{ColumnType, ObjectModel, SyncMeta, Value};
use crate::error::{Result, StoreError};
use crate::warehouse::{q, Cell, Dialect};

/// What a query reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryTable {
    /// The current-state table of a curated object (`Account`).
    Curated(String),
    /// The writeback outbox other systems insert into (migration 9).
    Outbox,
}

impl QueryTable {
    pub fn describe(&self) -> String {
        match self {
            QueryTable::Curated(o) => format!("curated object '{o}'"),
            QueryTable::Outbox => "the writeback outbox".into(),
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
        }
    }

    /// The operator with its operands swapped (`5 lt X` is `X gt 5`).
    fn flipped(self) -> CmpOp {
        match self {
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            o => o,
        }
    }
}

/// A string function used as a predicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrFn {
    StartsWith,
    Contains,
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A column of the table (curated: lower-case column name, `id`, or a sync-metadata column
    /// of [`SYNC_COLUMNS`]; outbox: a column of [`OUTBOX_COLUMNS`]).
    Column(String),
    /// A literal, bound as a parameter; it must fit the column it is compared with.
    Value(Value),
}

/// A boolean expression over a table's columns.
#[derive(Debug, Clone, PartialEq)]
pub enum RowFilter {
    And(Box<RowFilter>, Box<RowFilter>),
    Or(Box<RowFilter>, Box<RowFilter>),
    Not(Box<RowFilter>),
    Cmp {
        left: Operand,
        op: CmpOp,
        right: Operand,
    },
    /// `startswith(column, value)` / `contains(column, value)`, case-sensitive.
    Str {
        func: StrFn,
        column: String,
        value: String,
    },
}

impl RowFilter {
    /// `column = value` (or `IS NULL` for [`Value::Null`]).
    pub fn eq(column: &str, value: Value) -> RowFilter {
        RowFilter::Cmp {
            left: Operand::Column(column.to_string()),
            op: CmpOp::Eq,
            right: Operand::Value(value),
        }
    }

    pub fn and(self, other: RowFilter) -> RowFilter {
        RowFilter::And(Box::new(self), Box::new(other))
    }
}

/// One sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderKey {
    pub column: String,
    pub desc: bool,
}

/// A read of one table: filter, order, keyset cursor, skip and limit.
#[derive(Debug, Clone, PartialEq)]
pub struct RowQuery {
    pub table: QueryTable,
    pub filter: Option<RowFilter>,
    /// Sort keys; the key column (`id`) is appended ascending unless it is already a key, so
    /// the order is total.
    pub order: Vec<OrderKey>,
    /// Resume strictly after the row with these values of the effective sort keys (see
    /// [`RowQuery::effective_order`]), in key order.
    pub after: Option<Vec<Value>>,
    pub skip: u64,
    /// At most this many rows.
    pub limit: usize,
    /// Curated rows flagged deleted are left out unless set.
    pub include_deleted: bool,
    /// Open (decrypt) PII columns; otherwise they read back absent.
    pub open_pii: bool,
}

impl RowQuery {
    /// The first `limit` rows of `table` by key.
    pub fn new(table: QueryTable, limit: usize) -> RowQuery {
        RowQuery {
            table,
            filter: None,
            order: Vec::new(),
            after: None,
            skip: 0,
            limit,
            include_deleted: false,
            open_pii: false,
        }
    }

    /// The sort keys as the store applies them: the requested keys up to and including the key
    /// column, else followed by the key column ascending.
    pub fn effective_order(&self) -> Vec<OrderKey> {
        let mut out = Vec::new();
        for k in &self.order {
            out.push(k.clone());
            if k.column == KEY_COLUMN {
                return out;
            }
        }
        out.push(OrderKey {
            column: KEY_COLUMN.into(),
            desc: false,
        });
        out
    }
}

/// The key column of every queryable table.
pub const KEY_COLUMN: &str = "id";

/// A row read by [`RowStore::query_rows`].
#[derive(Debug, Clone, PartialEq)]
pub struct QueryRow {
    /// The key: the record id (text) of a curated row, the outbox row id (integer).
    pub key: Value,
    /// Column → value; NULL (and an unopened PII column) is absent.
    pub values: BTreeMap<String, Value>,
    /// The sync metadata of a curated row.
    pub meta: Option<SyncMeta>,
    pub deleted: bool,
}

impl QueryRow {
    /// The values of `order`'s columns in this row (what [`RowQuery::after`] takes to resume
    /// after it).
    pub fn key_values(&self, order: &[OrderKey]) -> Vec<Value> {
        order
            .iter()
            .map(|k| {
                if k.column == KEY_COLUMN {
                    self.key.clone()
                } else {
                    self.values.get(&k.column).cloned().unwrap_or(Value::Null)
                }
            })
            .collect()
    }
}

/// Sync-metadata columns of a curated table a query may filter and sort on.
pub const SYNC_COLUMNS: &[(&str, ColumnType)] = &[
    ("_sf_deleted", ColumnType::Boolean),
    ("_sf_commit_ms", ColumnType::Integer),
    ("_sf_applied_at", ColumnType::Timestamp),
];

/// The outbox's columns, in table order.
pub const OUTBOX_COLUMNS: &[(&str, ColumnType)] = &[
    ("id", ColumnType::Integer),
    ("source_system", ColumnType::Text),
    ("idempotency_key", ColumnType::Text),
    ("object", ColumnType::Text),
    ("external_id_field", ColumnType::Text),
    ("external_id", ColumnType::Text),
    ("record_id", ColumnType::Text),
    ("fields", ColumnType::Text),
    ("seen_version_ms", ColumnType::Integer),
    ("created_at_ms", ColumnType::Integer),
    ("ingested_at_ms", ColumnType::Integer),
    ("write_id", ColumnType::Integer),
];

/// Filtered, ordered, paged reads (see the module documentation).
///
/// Contracts: read only; each call reads one consistent snapshot of one table; errors name the
/// table and the column or value at fault.
#[async_trait]
pub trait RowStore: Send + Sync {
    /// The registered curated model of `object`, if it has one.
    fn curated_model(&self, object: &str) -> Option<ObjectModel>;

    /// Rows of `query.table` matching the query, in its order.
    async fn query_rows(&self, query: &RowQuery) -> Result<Vec<QueryRow>>;

    /// How many rows of `table` match `filter` (deleted curated rows only with
    /// `include_deleted`).
    async fn count_rows(
        &self,
        table: &QueryTable,
        filter: Option<&RowFilter>,
        include_deleted: bool,
    ) -> Result<u64>;
}

/// A column as a query sees it.
#[derive(Debug, Clone)]
pub(crate) struct SpecCol {
    pub name: String,
    pub ty: ColumnType,
    /// Stored sealed: cannot be compared or sorted in SQL.
    pub sealed: bool,
}

/// The queryable shape of one table.
#[derive(Debug, Clone)]
pub(crate) struct TableSpec {
    pub table: String,
    pub what: String,
    pub columns: Vec<SpecCol>,
    /// The boolean deleted-flag column, if the table has one.
    pub deleted: Option<&'static str>,
}

impl TableSpec {
    pub(crate) fn curated(model: &ObjectModel) -> TableSpec {
        let mut columns = vec![SpecCol {
            name: KEY_COLUMN.into(),
            ty: ColumnType::Text,
            sealed: false,
        }];
        columns.extend(
            model
                .columns
                .iter()
                .filter(|c| c.name != KEY_COLUMN)
                .map(|c| SpecCol {
                    name: c.name.clone(),
                    ty: c.ty,
                    sealed: c.pii,
                }),
        );
        columns.extend(SYNC_COLUMNS.iter().map(|(n, ty)| SpecCol {
            name: n.to_string(),
            ty: *ty,
            sealed: false,
        }));
        TableSpec {
            table: model.table.clone(),
            what: format!("curated object '{}'", model.object),
            columns,
            deleted: Some("_sf_deleted"),
        }
    }

    pub(crate) fn outbox() -> TableSpec {
        TableSpec {
            table: "outbox".into(),
            what: "the writeback outbox".into(),
            columns: OUTBOX_COLUMNS
                .iter()
                .map(|(n, ty)| SpecCol {
                    name: n.to_string(),
                    ty: *ty,
                    sealed: false,
                })
                .collect(),
            deleted: None,
        }
    }

    fn column(&self, backend: &'static str, name: &str, use_: &str) -> Result<&SpecCol> {
        match self.columns.iter().find(|c| c.name == name) {
            None => Err(invalid(
                backend,
                format!("'{name}' is not a column of {}", self.what),
            )),
            Some(c) if c.sealed => Err(invalid(
                backend,
                format!(
                    "column '{name}' of {} is PII, stored encrypted: it cannot be used in {use_}",
                    self.what
                ),
            )),
            Some(c) => Ok(c),
        }
    }
}

fn invalid(backend: &'static str, reason: String) -> StoreError {
    StoreError::InvalidInput {
        backend,
        op: "query rows",
        reason,
    }
}

/// A literal as the cell compared with a column of type `ty`.
fn literal_cell(
    backend: &'static str,
    column: &str,
    ty: ColumnType,
    v: &Value,
) -> Result<Cell<'static>> {
    use std::borrow::Cow;
    Ok(match (ty, v) {
        (ColumnType::Text, Value::Text(s)) => Cell::Text(Cow::Owned(s.clone())),
        (ColumnType::Integer, Value::Int(i)) => Cell::Int(*i),
        (ColumnType::Real, Value::Real(f)) => Cell::Real(*f),
        (ColumnType::Real, Value::Int(i)) => Cell::Real(*i as f64),
        (ColumnType::Integer, Value::Real(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
            Cell::Int(*f as i64)
        }
        (ColumnType::Boolean, Value::Bool(b)) => Cell::Bool(*b),
        (ColumnType::Date, Value::Date(d)) => Cell::Date(*d),
        (ColumnType::Timestamp, Value::Timestamp(ms)) => Cell::Ts(*ms),
        (ColumnType::Timestamp, Value::Date(d)) => Cell::Ts(i64::from(*d) * 86_400_000),
        (ty, v) => {
            return Err(invalid(
                backend,
                format!("column '{column}' is {ty:?}; the value {v:?} does not fit it"),
            ))
        }
    })
}

/// Builds SQL text with numbered parameters.
pub(crate) struct SqlBuilder {
    d: Dialect,
    backend: &'static str,
    pub params: Vec<Cell<'static>>,
}

impl SqlBuilder {
    pub(crate) fn new(d: Dialect) -> SqlBuilder {
        SqlBuilder {
            d,
            backend: d.backend(),
            params: Vec::new(),
        }
    }

    fn bind(&mut self, c: Cell<'static>) -> String {
        self.params.push(c);
        self.d.param(self.params.len())
    }

    fn falsy(&self) -> &'static str {
        self.d.bool_lit(false)
    }

    fn filter(&mut self, spec: &TableSpec, f: &RowFilter) -> Result<String> {
        Ok(match f {
            RowFilter::And(a, b) => {
                format!("({} AND {})", self.filter(spec, a)?, self.filter(spec, b)?)
            }
            RowFilter::Or(a, b) => {
                format!("({} OR {})", self.filter(spec, a)?, self.filter(spec, b)?)
            }
            RowFilter::Not(a) => format!("(NOT {})", self.filter(spec, a)?),
            RowFilter::Str {
                func,
                column,
                value,
            } => {
                let c = spec.column(self.backend, column, "$filter")?;
                if c.ty != ColumnType::Text {
                    return Err(invalid(
                        self.backend,
                        format!(
                            "column '{column}' is {:?}, not text: string functions need text",
                            c.ty
                        ),
                    ));
                }
                let col = q(&c.name);
                let p = self.bind(Cell::Text(value.clone().into()));
                let f = self.falsy();
                match (self.d, func) {
                    (Dialect::Sqlite, StrFn::Contains) => {
                        format!("COALESCE(instr({col}, {p}) > 0, {f})")
                    }
                    (Dialect::Sqlite, StrFn::StartsWith) => {
                        format!("COALESCE(substr({col}, 1, length({p})) = {p}, {f})")
                    }
                    (Dialect::Postgres, StrFn::Contains) => {
                        format!("COALESCE(strpos({col}, {p}::text) > 0, {f})")
                    }
                    (Dialect::Postgres, StrFn::StartsWith) => {
                        format!("COALESCE(left({col}, char_length({p}::text)) = {p}::text, {f})")
                    }
                }
            }
            RowFilter::Cmp { left, op, right } => self.cmp(spec, left, *op, right)?,
        })
    }

    fn cmp(
        &mut self,
        spec: &TableSpec,
        left: &Operand,
        op: CmpOp,
        right: &Operand,
    ) -> Result<String> {
        let f = self.falsy();
        match (left, right) {
            (Operand::Value(_), Operand::Column(_)) => self.cmp(spec, right, op.flipped(), left),
            (Operand::Value(a), Operand::Value(b)) => Err(invalid(
                self.backend,
                format!("a comparison needs a column on one side (got {a:?} and {b:?})"),
            )),
            (Operand::Column(a), Operand::Column(b)) => {
                let ca = spec.column(self.backend, a, "$filter")?;
                let cb = spec.column(self.backend, b, "$filter")?;
                let compatible = ca.ty == cb.ty
                    || matches!(
                        (ca.ty, cb.ty),
                        (ColumnType::Integer, ColumnType::Real)
                            | (ColumnType::Real, ColumnType::Integer)
                    );
                if !compatible {
                    return Err(invalid(
                        self.backend,
                        format!(
                            "columns '{a}' ({:?}) and '{b}' ({:?}) cannot be compared",
                            ca.ty, cb.ty
                        ),
                    ));
                }
                let (x, y) = (q(&ca.name), q(&cb.name));
                let same = format!("(({x} IS NULL AND {y} IS NULL) OR COALESCE({x} = {y}, {f}))");
                Ok(match op {
                    CmpOp::Eq => same,
                    CmpOp::Ne => format!("(NOT {same})"),
                    o => format!("COALESCE({x} {} {y}, {f})", o.sql()),
                })
            }
            (Operand::Column(a), Operand::Value(v)) => {
                let c = spec.column(self.backend, a, "$filter")?;
                let col = q(&c.name);
                if v.is_null() {
                    return match op {
                        CmpOp::Eq => Ok(format!("({col} IS NULL)")),
                        CmpOp::Ne => Ok(format!("({col} IS NOT NULL)")),
                        // Ordering against null is false.
                        _ => Ok(format!("({})", f)),
                    };
                }
                let cell = literal_cell(self.backend, a, c.ty, v)?;
                let p = self.bind(cell);
                Ok(match op {
                    CmpOp::Ne => format!("({col} IS NULL OR {col} <> {p})"),
                    o => format!("COALESCE({col} {} {p}, {f})", o.sql()),
                })
            }
        }
    }

    /// `ORDER BY` and the keyset condition of `order` resuming after `after`.
    fn order(
        &mut self,
        spec: &TableSpec,
        order: &[OrderKey],
        after: Option<&[Value]>,
    ) -> Result<(String, Option<String>)> {
        let mut cols = Vec::with_capacity(order.len());
        for k in order {
            cols.push(spec.column(self.backend, &k.column, "$orderby")?.clone());
        }
        let by: Vec<String> = order
            .iter()
            .zip(&cols)
            .map(|(k, c)| {
                if k.desc {
                    format!("{} DESC NULLS LAST", q(&c.name))
                } else {
                    format!("{} ASC NULLS FIRST", q(&c.name))
                }
            })
            .collect();
        let Some(after) = after else {
            return Ok((by.join(", "), None));
        };
        if after.len() != order.len() {
            return Err(invalid(
                self.backend,
                format!(
                    "the cursor holds {} values for {} sort keys",
                    after.len(),
                    order.len()
                ),
            ));
        }
        // OR over i of (keys before i equal AND key i strictly after), NULL smallest.
        let f = self.falsy();
        let mut alts = Vec::new();
        for i in 0..order.len() {
            let mut conj = Vec::new();
            for (c, v) in cols.iter().zip(after).take(i) {
                let col = q(&c.name);
                if v.is_null() {
                    conj.push(format!("{col} IS NULL"));
                } else {
                    let p = self.bind(literal_cell(self.backend, &c.name, c.ty, v)?);
                    conj.push(format!("{col} = {p}"));
                }
            }
            let col = q(&cols[i].name);
            let step = match (order[i].desc, after[i].is_null()) {
                (false, true) => format!("{col} IS NOT NULL"),
                (true, true) => f.to_string(),
                (false, false) => {
                    let p = self.bind(literal_cell(
                        self.backend,
                        &cols[i].name,
                        cols[i].ty,
                        &after[i],
                    )?);
                    format!("{col} > {p}")
                }
                (true, false) => {
                    let p = self.bind(literal_cell(
                        self.backend,
                        &cols[i].name,
                        cols[i].ty,
                        &after[i],
                    )?);
                    format!("({col} < {p} OR {col} IS NULL)")
                }
            };
            conj.push(step);
            alts.push(format!("({})", conj.join(" AND ")));
        }
        Ok((by.join(", "), Some(format!("({})", alts.join(" OR ")))))
    }

    fn conditions(
        &mut self,
        spec: &TableSpec,
        filter: Option<&RowFilter>,
        include_deleted: bool,
    ) -> Result<Vec<String>> {
        let mut conds = Vec::new();
        if let (Some(col), false) = (spec.deleted, include_deleted) {
            conds.push(format!("{} = {}", q(col), self.d.bool_lit(false)));
        }
        if let Some(f) = filter {
            conds.push(self.filter(spec, f)?);
        }
        Ok(conds)
    }

    /// `SELECT <select_list> FROM … WHERE … ORDER BY … LIMIT … OFFSET …`.
    pub(crate) fn select(
        &mut self,
        spec: &TableSpec,
        select_list: &str,
        query: &RowQuery,
    ) -> Result<String> {
        let order = query.effective_order();
        let mut conds = self.conditions(spec, query.filter.as_ref(), query.include_deleted)?;
        let (by, keyset) = self.order(spec, &order, query.after.as_deref())?;
        conds.extend(keyset);
        let limit = self.bind(Cell::Int(query.limit.min(i64::MAX as usize) as i64));
        let offset = self.bind(Cell::Int(query.skip.min(i64::MAX as u64) as i64));
        Ok(format!(
            "{select_list} FROM {}{} ORDER BY {by} LIMIT {limit} OFFSET {offset}",
            q(&spec.table),
            where_clause(&conds)
        ))
    }

    /// `SELECT COUNT(*) FROM … WHERE …`.
    pub(crate) fn count(
        &mut self,
        spec: &TableSpec,
        filter: Option<&RowFilter>,
        include_deleted: bool,
    ) -> Result<String> {
        let conds = self.conditions(spec, filter, include_deleted)?;
        Ok(format!(
            "SELECT COUNT(*) FROM {}{}",
            q(&spec.table),
            where_clause(&conds)
        ))
    }
}

fn where_clause(conds: &[String]) -> String {
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

/// `SELECT <outbox columns>`.
pub(crate) fn outbox_select() -> String {
    let cols: Vec<String> = OUTBOX_COLUMNS.iter().map(|(n, _)| q(n)).collect();
    format!("SELECT {}", cols.join(", "))
}

/// An outbox row from its cells in [`OUTBOX_COLUMNS`] order.
pub(crate) fn outbox_row(backend: &'static str, cells: Vec<Cell<'static>>) -> Result<QueryRow> {
    let mut values = BTreeMap::new();
    let mut key = Value::Null;
    for ((name, ty), cell) in OUTBOX_COLUMNS.iter().zip(cells) {
        let v = match (ty, cell) {
            (_, Cell::Null) => continue,
            (ColumnType::Integer, Cell::Int(i)) => Value::Int(i),
            (ColumnType::Integer, Cell::Int4(i)) => Value::Int(i64::from(i)),
            (ColumnType::Text, Cell::Text(s)) => Value::Text(s.into_owned()),
            (_, c) => {
                return Err(StoreError::InvalidInput {
                    backend,
                    op: "read outbox row",
                    reason: format!("column {name} holds {c:?}"),
                })
            }
        };
        if *name == KEY_COLUMN {
            key = v.clone();
        }
        values.insert(name.to_string(), v);
    }
    Ok(QueryRow {
        key,
        values,
        meta: None,
        deleted: false,
    })
}

/// Curated rows from their cells: PII cells are blanked (never opened) unless `open`.
pub(crate) fn curated_rows(
    ctx: &crate::warehouse::Ctx,
    reg: &crate::warehouse::Registered,
    rows: Vec<Vec<Cell<'static>>>,
    open: bool,
) -> Result<Vec<QueryRow>> {
    rows.into_iter()
        .map(|mut cells| {
            if !open {
                for (i, _) in reg.pii_data() {
                    if let Some(c) = cells.get_mut(1 + i) {
                        *c = Cell::Null;
                    }
                }
            }
            let row = crate::warehouse::decode_row(ctx, reg, cells)?;
            Ok(QueryRow {
                key: Value::Text(row.id),
                values: row.values,
                meta: Some(row.meta),
                deleted: row.deleted,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curated::ColumnDef;

    fn spec() -> TableSpec {
        let col = |name: &str, ty, pii| ColumnDef {
            name: name.into(),
            field: name.into(),
            ty,
            pii,
        };
        TableSpec::curated(&ObjectModel {
            object: "Account".into(),
            table: "sf_account".into(),
            columns: vec![
                col("id", ColumnType::Text, false),
                col("name", ColumnType::Text, false),
                col("phone", ColumnType::Text, true),
                col("annualrevenue", ColumnType::Real, false),
            ],
            history: None,
        })
    }

    #[test]
    fn values_are_parameters_never_sql_text() {
        let mut b = SqlBuilder::new(Dialect::Sqlite);
        let f =
            RowFilter::eq("name", Value::Text("x'; DROP TABLE t; --".into())).and(RowFilter::Str {
                func: StrFn::Contains,
                column: "name".into(),
                value: "%_".into(),
            });
        let mut q = RowQuery::new(QueryTable::Curated("Account".into()), 10);
        q.filter = Some(f);
        let sql = b.select(&spec(), "SELECT *", &q).unwrap();
        assert!(!sql.contains("DROP"), "{sql}");
        assert!(!sql.contains("%_"), "{sql}");
        assert_eq!(b.params.len(), 4, "two literals, limit, offset: {sql}");
        assert_eq!(
            sql,
            r#"SELECT * FROM "sf_account" WHERE "_sf_deleted" = 0 AND (COALESCE("name" = ?1, 0) AND COALESCE(instr("name", ?2) > 0, 0)) ORDER BY "id" ASC NULLS FIRST LIMIT ?3 OFFSET ?4"#
        );
    }

    #[test]
    fn keyset_after_mixed_directions_and_nulls() {
        let mut b = SqlBuilder::new(Dialect::Postgres);
        let mut q = RowQuery::new(QueryTable::Curated("Account".into()), 5);
        q.order = vec![OrderKey {
            column: "annualrevenue".into(),
            desc: true,
        }];
        q.after = Some(vec![Value::Null, Value::Text("001".into())]);
        let sql = b.select(&spec(), "SELECT *", &q).unwrap();
        assert_eq!(
            sql,
            r#"SELECT * FROM "sf_account" WHERE "_sf_deleted" = FALSE AND ((FALSE) OR ("annualrevenue" IS NULL AND "id" > $1)) ORDER BY "annualrevenue" DESC NULLS LAST, "id" ASC NULLS FIRST LIMIT $2 OFFSET $3"#
        );
        q.after = Some(vec![Value::Int(10), Value::Text("001".into())]);
        let mut b = SqlBuilder::new(Dialect::Postgres);
        let sql = b.select(&spec(), "SELECT *", &q).unwrap();
        assert!(sql.contains(r#"(("annualrevenue" < $1 OR "annualrevenue" IS NULL)) OR ("annualrevenue" = $2 AND "id" > $3)"#), "{sql}");
        assert_eq!(
            b.params[0],
            Cell::Real(10.0),
            "an integer literal binds as the real column's type"
        );
    }

    #[test]
    fn pii_unknown_and_mistyped_columns_are_refused() {
        let mut b = SqlBuilder::new(Dialect::Sqlite);
        let err = |f: RowFilter, b: &mut SqlBuilder| {
            b.count(&spec(), Some(&f), false).unwrap_err().to_string()
        };
        assert!(err(RowFilter::eq("phone", Value::Text("1".into())), &mut b).contains("PII"));
        assert!(
            err(RowFilter::eq("nope", Value::Int(1)), &mut b).contains("'nope' is not a column")
        );
        assert!(err(RowFilter::eq("name", Value::Int(1)), &mut b).contains("does not fit"));
        let ok = b
            .count(&spec(), Some(&RowFilter::eq("name", Value::Null)), true)
            .unwrap();
        assert_eq!(
            ok,
            r#"SELECT COUNT(*) FROM "sf_account" WHERE ("name" IS NULL)"#
        );
    }
}
