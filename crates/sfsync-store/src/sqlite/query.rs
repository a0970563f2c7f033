//! [`RowStore`] on SQLite: queries run on the read-only warehouse connection, so they never
//! wait for an apply commit and never block one.

use std::sync::Arc;

use async_trait::async_trait;

use super::warehouse::read_cell;
use super::{SqliteChangeLog, BACKEND};
use crate::curated::ObjectModel;
use crate::error::{Result, StoreError};
use crate::query::*;
use crate::warehouse::{self as wh, Cell, Dialect};

fn db(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::sqlite(op, e)
}

fn run(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[Cell<'static>],
    ncols: usize,
) -> Result<Vec<Vec<Cell<'static>>>> {
    let op = "query rows";
    let mut stmt = conn.prepare_cached(sql).map_err(db(op))?;
    for (i, p) in params.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, p).map_err(db(op))?;
    }
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(db(op))? {
        out.push(
            (0..ncols)
                .map(|i| read_cell(r, i))
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db(op))?,
        );
    }
    Ok(out)
}

#[async_trait]
impl RowStore for SqliteChangeLog {
    fn curated_model(&self, object: &str) -> Option<ObjectModel> {
        self.registry.ctx().model(object).map(|r| r.model.clone())
    }

    async fn query_rows(&self, query: &RowQuery) -> Result<Vec<QueryRow>> {
        let ctx = self.registry.ctx();
        let mut b = SqlBuilder::new(Dialect::Sqlite);
        match &query.table {
            QueryTable::Outbox => {
                let sql = b.select(&TableSpec::outbox(), &outbox_select(), query)?;
                let params = b.params;
                self.blocking_on(&self.reader, "query rows", move |conn| {
                    run(conn, &sql, &params, OUTBOX_COLUMNS.len())?
                        .into_iter()
                        .map(|cells| outbox_row(BACKEND, cells))
                        .collect()
                })
                .await
            }
            QueryTable::Curated(object) => {
                let reg = Arc::clone(ctx.require("query rows", object)?);
                let select = format!("SELECT {}", wh::column_list(&reg.cur));
                let sql = b.select(&TableSpec::curated(&reg.model), &select, query)?;
                let params = b.params;
                let open = query.open_pii;
                let rows = self
                    .blocking_on(&self.reader, "query rows", move |conn| {
                        run(conn, &sql, &params, reg.cur.len()).map(|rows| (rows, reg))
                    })
                    .await?;
                let (rows, reg) = rows;
                wh::cpu_bound(|| curated_rows(&ctx, &reg, rows, open))
            }
        }
    }

    async fn count_rows(
        &self,
        table: &QueryTable,
        filter: Option<&RowFilter>,
        include_deleted: bool,
    ) -> Result<u64> {
        let ctx = self.registry.ctx();
        let spec = match table {
            QueryTable::Outbox => TableSpec::outbox(),
            QueryTable::Curated(o) => TableSpec::curated(&ctx.require("count rows", o)?.model),
        };
        let mut b = SqlBuilder::new(Dialect::Sqlite);
        let sql = b.count(&spec, filter, include_deleted)?;
        let params = b.params;
        self.blocking_on(&self.reader, "count rows", move |conn| {
            let rows = run(conn, &sql, &params, 1)?;
            Ok(match rows.first().and_then(|r| r.first()) {
                Some(Cell::Int(n)) => (*n).max(0) as u64,
                _ => 0,
            })
        })
        .await
    }
}
