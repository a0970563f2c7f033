//! [`RowStore`] on Postgres: queries run on the reader connection with prepared statements
//! (values are bound parameters), so they never wait for an apply commit.

use std::sync::Arc;

use async_trait::async_trait;

use super::warehouse::{db, params, read_cells};
use super::PostgresChangeLog;
use crate::curated::ObjectModel;
use crate::error::Result;
use crate::query::*;
use crate::warehouse::{self as wh, Cell, Dialect};

const BACKEND: &str = "postgres";

#[async_trait]
impl RowStore for PostgresChangeLog {
    fn curated_model(&self, object: &str) -> Option<ObjectModel> {
        self.registry.ctx().model(object).map(|r| r.model.clone())
    }

    async fn query_rows(&self, query: &RowQuery) -> Result<Vec<QueryRow>> {
        let ctx = self.registry.ctx();
        let mut b = SqlBuilder::new(Dialect::Postgres);
        let (sql, reg) = match &query.table {
            QueryTable::Outbox => (
                b.select(&TableSpec::outbox(), &outbox_select(), query)?,
                None,
            ),
            QueryTable::Curated(object) => {
                let reg = Arc::clone(ctx.require("query rows", object)?);
                let select = format!("SELECT {}", wh::column_list(&reg.cur));
                (
                    b.select(&TableSpec::curated(&reg.model), &select, query)?,
                    Some(reg),
                )
            }
        };
        let client = self.reader.lock().await;
        let stmt = self.reader_prepared(&*client, &sql).await?;
        let rows = client
            .query(&stmt, &params(&b.params))
            .await
            .map_err(db("query rows"))?;
        drop(client);
        let cells = rows.iter().map(read_cells).collect::<Result<Vec<_>>>()?;
        match reg {
            None => cells.into_iter().map(|c| outbox_row(BACKEND, c)).collect(),
            Some(reg) => wh::cpu_bound(|| curated_rows(&ctx, &reg, cells, query.open_pii)),
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
        let mut b = SqlBuilder::new(Dialect::Postgres);
        let sql = b.count(&spec, filter, include_deleted)?;
        let client = self.reader.lock().await;
        let stmt = self.reader_prepared(&*client, &sql).await?;
        let row = client
            .query_one(&stmt, &params(&b.params))
            .await
            .map_err(db("count rows"))?;
        Ok(match read_cells(&row)?.first() {
            Some(Cell::Int(n)) => (*n).max(0) as u64,
            _ => 0,
        })
    }
}
