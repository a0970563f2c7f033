//! [`Warehouse`] on Postgres. Current rows go in multi-row `INSERT … ON CONFLICT` statements
//! (up to [`ROW_CHUNK`] rows each, within the 65,535-parameter limit); history steps, audit
//! entries and bookkeeping rows are sent pipelined (all requests written before the first
//! response is awaited) and execute in order on the server. Statements are prepared once per
//! connection and SQL text.

use std::borrow::Cow;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use futures::future::try_join_all;
use sfsync_core::ReplayId;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, GenericClient, Row, Statement, Transaction};

use super::{jobs, quality, set_applied_offset_in, PostgresChangeLog, BACKEND, MIGRATION_LOCK_KEY};
use crate::curated::*;
use crate::error::{postgres_class, Result, StoreError};
use crate::pii;
use crate::quality::*;
use crate::warehouse::{self as wh, Cell, Ctx, Dialect, Registered};
use crate::{now_ms, AppendOutcome, LogOffset, RawChange};

/// Most rows in one upsert statement.
const ROW_CHUNK: usize = 500;
/// Bind parameters one statement may carry.
const MAX_PARAMS: usize = 65_535;
/// Ids per `= ANY($1)` lookup.
const ID_CHUNK: usize = 5_000;
/// Rows per transaction when re-sealing, and per page when verifying.
const PAGE: i64 = 500;
/// Prepared statements kept per connection before the cache is cleared.
const STATEMENT_CACHE: usize = 512;

type BoxError = Box<dyn StdError + Sync + Send>;

fn put<T: ToSql>(v: T, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
    if !T::accepts(ty) {
        return Err(format!(
            "a {} value cannot be written to a Postgres {ty} column",
            std::any::type_name::<T>()
        )
        .into());
    }
    v.to_sql(ty, out)
}

impl ToSql for Cell<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        match self {
            Cell::Null => Ok(IsNull::Yes),
            Cell::Bool(b) => put(*b, ty, out),
            Cell::Int(i) if *ty == Type::INT4 => put(i32::try_from(*i)?, ty, out),
            Cell::Int(i) => put(*i, ty, out),
            Cell::Int4(i) if *ty == Type::INT8 => put(i64::from(*i), ty, out),
            Cell::Int4(i) => put(*i, ty, out),
            Cell::Real(f) => put(*f, ty, out),
            Cell::Text(s) => put(&**s, ty, out),
            Cell::Date(d) => put(
                wh::date_from_days(*d).ok_or_else(|| format!("date {d} is out of range"))?,
                ty,
                out,
            ),
            Cell::Ts(ms) => put(
                wh::ts_from_ms(*ms).ok_or_else(|| format!("timestamp {ms} is out of range"))?,
                ty,
                out,
            ),
            Cell::Bytes(b) => put(&**b, ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A column of a result row as a cell, by the column's actual type.
fn read_cell(row: &Row, idx: usize) -> std::result::Result<Cell<'static>, tokio_postgres::Error> {
    let ty = row.columns()[idx].type_().clone();
    Ok(match ty {
        Type::BOOL => row
            .try_get::<_, Option<bool>>(idx)?
            .map_or(Cell::Null, Cell::Bool),
        Type::INT8 => row
            .try_get::<_, Option<i64>>(idx)?
            .map_or(Cell::Null, Cell::Int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(idx)?
            .map_or(Cell::Null, Cell::Int4),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(idx)?
            .map_or(Cell::Null, |v| Cell::Int(i64::from(v))),
        Type::FLOAT8 => row
            .try_get::<_, Option<f64>>(idx)?
            .map_or(Cell::Null, Cell::Real),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(idx)?
            .map_or(Cell::Null, |v| Cell::Real(f64::from(v))),
        Type::DATE => row
            .try_get::<_, Option<NaiveDate>>(idx)?
            .map_or(Cell::Null, |d| Cell::Date(wh::days_from_date(d))),
        Type::TIMESTAMPTZ => row
            .try_get::<_, Option<DateTime<Utc>>>(idx)?
            .map_or(Cell::Null, |t| Cell::Ts(t.timestamp_millis())),
        Type::TIMESTAMP => row
            .try_get::<_, Option<NaiveDateTime>>(idx)?
            .map_or(Cell::Null, |t| Cell::Ts(t.and_utc().timestamp_millis())),
        Type::BYTEA => row
            .try_get::<_, Option<Vec<u8>>>(idx)?
            .map_or(Cell::Null, |b| Cell::Bytes(Cow::Owned(b))),
        _ => row
            .try_get::<_, Option<String>>(idx)?
            .map_or(Cell::Null, |s| Cell::Text(Cow::Owned(s))),
    })
}

pub(super) fn read_cells(row: &Row) -> Result<Vec<Cell<'static>>> {
    (0..row.len())
        .map(|i| read_cell(row, i))
        .collect::<std::result::Result<_, _>>()
        .map_err(db("decode row"))
}

pub(super) fn db(op: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::postgres(op, e)
}

pub(super) fn write_failed(
    object: &str,
    record_id: &str,
    what: impl Into<String>,
    e: tokio_postgres::Error,
) -> StoreError {
    StoreError::CuratedWrite {
        backend: BACKEND,
        object: object.to_string(),
        record_id: record_id.to_string(),
        what: what.into(),
        class: postgres_class(&e),
        source: Box::new(e),
    }
}

fn wh_error(object: &str, id: &str, what: &str, e: StoreError) -> StoreError {
    StoreError::CuratedWrite {
        backend: BACKEND,
        object: object.to_string(),
        record_id: id.to_string(),
        what: what.to_string(),
        class: e.class(),
        source: Box::new(e),
    }
}

pub(super) fn invalid(op: &'static str, reason: String) -> StoreError {
    StoreError::InvalidInput {
        backend: BACKEND,
        op,
        reason,
    }
}

pub(super) fn params<'a>(cells: &'a [Cell<'_>]) -> Vec<&'a (dyn ToSql + Sync)> {
    cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect()
}

/// Models persisted in `curated_models`, as (object, JSON).
pub(super) async fn load_models(client: &Client) -> Result<Vec<(String, String)>> {
    let rows = client
        .query(
            "SELECT object, model FROM curated_models ORDER BY object",
            &[],
        )
        .await
        .map_err(db("read curated models"))?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<std::result::Result<_, tokio_postgres::Error>>()
        .map_err(db("read curated models"))
}

/// Column name → `format_type` of `table` (resolved through `search_path`), or `None` when the
/// table does not exist.
async fn table_columns(
    tx: &Transaction<'_>,
    table: &str,
) -> Result<Option<HashMap<String, String>>> {
    let rows = tx
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&wh::q(table)],
        )
        .await
        .map_err(db("read table columns"))?;
    let cols: HashMap<String, String> = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<std::result::Result<_, tokio_postgres::Error>>()
        .map_err(db("read table columns"))?;
    Ok((!cols.is_empty()).then_some(cols))
}

pub(super) async fn insert_dead_letters(
    tx: &Transaction<'_>,
    ctx: &Ctx,
    letters: &[DeadLetter],
) -> Result<()> {
    if letters.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare(
            "INSERT INTO dead_letters (channel, replay_id, schema_id, stage, error, object,
                 payload, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await
        .map_err(db("prepare dead letter insert"))?;
    let now = now_ms();
    let sealed = letters
        .iter()
        .map(|d| ctx.seal_dead_letter(&d.channel, &d.payload))
        .collect::<Result<Vec<_>>>()?;
    let futs = letters.iter().zip(&sealed).map(|(d, payload)| {
        let stmt = &stmt;
        async move {
            tx.execute(
                stmt,
                &[
                    &d.channel,
                    &d.replay_id.as_ref().map(|r| r.as_bytes()),
                    &d.schema_id,
                    &d.stage,
                    &d.error,
                    &d.object,
                    &&payload[..],
                    &now,
                ],
            )
            .await
            .map_err(|e| {
                write_failed(
                    d.object.as_deref().unwrap_or("(unknown object)"),
                    "-",
                    format!("dead letter of channel '{}'", d.channel),
                    e,
                )
            })
        }
    });
    try_join_all(futs).await?;
    Ok(())
}

/// One pipelined write of a batch: its statement, cells, and what to name on failure.
struct Step<'a> {
    stmt: Statement,
    cells: Vec<Cell<'a>>,
    object: &'a str,
    id: &'a str,
    what: String,
    /// The statement must change exactly one row.
    must_hit: bool,
}

/// Runs `steps` pipelined, in order; the first failure is returned, naming its step.
async fn run_steps(tx: &Transaction<'_>, steps: &[Step<'_>]) -> Result<()> {
    let futs = steps.iter().map(|s| async move {
        let p = params(&s.cells);
        let n = tx
            .execute(&s.stmt, &p)
            .await
            .map_err(|e| write_failed(s.object, s.id, s.what.clone(), e))?;
        if s.must_hit && n != 1 {
            return Err(wh_error(
                s.object,
                s.id,
                &s.what,
                invalid("commit curated", "no such history version".into()),
            ));
        }
        Ok(())
    });
    try_join_all(futs).await?;
    Ok(())
}

/// A statement of `client` by SQL text, prepared once and kept in `cache` (one cache per
/// connection: a statement belongs to the connection that prepared it).
pub(super) async fn prepare_cached(
    cache: &parking_lot::Mutex<HashMap<String, Statement>>,
    client: &impl GenericClient,
    sql: &str,
) -> Result<Statement> {
    if let Some(s) = cache.lock().get(sql) {
        return Ok(s.clone());
    }
    let stmt = client
        .prepare(sql)
        .await
        .map_err(|e| StoreError::postgres("prepare statement", e))?;
    let mut cache = cache.lock();
    if cache.len() >= STATEMENT_CACHE {
        cache.clear();
    }
    cache.insert(sql.to_string(), stmt.clone());
    Ok(stmt)
}

impl PostgresChangeLog {
    /// A prepared statement for `sql`, from this connection's cache.
    pub(super) async fn prepared(
        &self,
        client: &impl GenericClient,
        sql: &str,
    ) -> Result<Statement> {
        prepare_cached(&self.statements, client, sql).await
    }

    /// [`Self::prepared`] for the reader connection.
    pub(super) async fn reader_prepared(
        &self,
        client: &impl GenericClient,
        sql: &str,
    ) -> Result<Statement> {
        prepare_cached(&self.reader_statements, client, sql).await
    }

    async fn upsert_rows(
        &self,
        tx: &Transaction<'_>,
        ctx: &Ctx,
        rows: &[(String, RowWrite)],
    ) -> Result<()> {
        // Group by object (at most one row per key, so the order across objects is free).
        let mut groups: Vec<(&str, Vec<&RowWrite>)> = Vec::new();
        for (object, row) in rows {
            match groups.iter_mut().find(|(o, _)| *o == object.as_str()) {
                Some((_, v)) => v.push(row),
                None => groups.push((object, vec![row])),
            }
        }
        for (object, rows) in groups {
            let reg = match ctx.require("commit curated", object) {
                Ok(r) => r,
                Err(e) => return Err(wh_error(object, &rows[0].id, "upsert", e)),
            };
            let encoded = rows
                .iter()
                .map(|r| wh::encode_row(ctx, reg, r))
                .collect::<Result<Vec<_>>>()?;
            let per = ROW_CHUNK.min(MAX_PARAMS / reg.cur.len()).max(1);
            for (chunk, chunk_rows) in encoded.chunks(per).zip(rows.chunks(per)) {
                let sql = reg.upsert_sql(Dialect::Postgres, chunk.len());
                let stmt = self.prepared(tx, &sql).await?;
                let p: Vec<&(dyn ToSql + Sync)> = chunk.iter().flat_map(|c| params(c)).collect();
                tx.batch_execute("SAVEPOINT sfsync_upsert")
                    .await
                    .map_err(db("savepoint"))?;
                match tx.execute(&stmt, &p).await {
                    Ok(_) => {}
                    Err(e) => {
                        tx.batch_execute("ROLLBACK TO SAVEPOINT sfsync_upsert")
                            .await
                            .map_err(db("rollback to savepoint"))?;
                        return Err(self
                            .find_bad_row(tx, reg, chunk, chunk_rows)
                            .await
                            .unwrap_or_else(|| {
                                write_failed(
                                    object,
                                    &chunk_rows[0].id,
                                    format!(
                                        "upsert of {} rows into table '{}' (from this record on)",
                                        chunk.len(),
                                        reg.model.table
                                    ),
                                    e,
                                )
                            }));
                    }
                }
            }
        }
        Ok(())
    }

    /// After a multi-row upsert failed: the first row that fails on its own, as an error.
    async fn find_bad_row(
        &self,
        tx: &Transaction<'_>,
        reg: &Registered,
        chunk: &[Vec<Cell<'_>>],
        rows: &[&RowWrite],
    ) -> Option<StoreError> {
        let stmt = self.prepared(tx, &reg.sql.upsert).await.ok()?;
        for (cells, row) in chunk.iter().zip(rows) {
            tx.batch_execute("SAVEPOINT sfsync_probe").await.ok()?;
            let res = tx.execute(&stmt, &params(cells)).await;
            tx.batch_execute("ROLLBACK TO SAVEPOINT sfsync_probe")
                .await
                .ok()?;
            if let Err(e) = res {
                return Some(write_failed(
                    &reg.model.object,
                    &row.id,
                    format!("upsert into table '{}'", reg.model.table),
                    e,
                ));
            }
        }
        None
    }

    async fn history_steps<'a>(
        &self,
        tx: &Transaction<'_>,
        ctx: &'a Ctx,
        history: &'a [HistoryWrite],
    ) -> Result<Vec<Step<'a>>> {
        let mut steps = Vec::with_capacity(history.len());
        for step in history {
            let (object, id, version, kind) = match step {
                HistoryWrite::Close {
                    object,
                    id,
                    version,
                    ..
                } => (object, id, version, "close"),
                HistoryWrite::Open {
                    object,
                    id,
                    version,
                    ..
                } => (object, id, version, "open"),
                HistoryWrite::Touch {
                    object,
                    id,
                    version,
                    ..
                } => (object, id, version, "touch"),
            };
            let what = format!("history {kind} of version {version}");
            let reg = ctx
                .require("commit curated", object)
                .map_err(|e| wh_error(object, id, &what, e))?;
            if reg.hist.is_none() {
                return Err(wh_error(
                    object,
                    id,
                    &what,
                    invalid(
                        "commit curated",
                        format!("object '{object}' has no history table in its model"),
                    ),
                ));
            }
            let (sql, cells, must_hit) = match step {
                HistoryWrite::Close {
                    valid_to_ms,
                    end_change_type,
                    ..
                } => (
                    &reg.sql.hist_close,
                    vec![
                        Cell::Ts(*valid_to_ms),
                        Cell::Text(Cow::Borrowed(end_change_type.as_str())),
                        Cell::Text(Cow::Borrowed(id.as_str())),
                        Cell::Int(*version),
                    ],
                    true,
                ),
                HistoryWrite::Open {
                    valid_from_ms,
                    values,
                    meta,
                    ..
                } => (
                    &reg.sql.hist_insert,
                    wh::encode_history_open(ctx, reg, id, *version, *valid_from_ms, values, meta)?,
                    false,
                ),
                HistoryWrite::Touch { meta, .. } => {
                    let mut cells = wh::history_meta_cells(meta);
                    cells.push(Cell::Text(Cow::Borrowed(id.as_str())));
                    cells.push(Cell::Int(*version));
                    (&reg.sql.hist_touch, cells, true)
                }
            };
            if ts_out_of_range(&cells) {
                return Err(wh_error(
                    object,
                    id,
                    &what,
                    invalid("commit curated", "a timestamp is out of range".into()),
                ));
            }
            steps.push(Step {
                stmt: self.prepared(tx, sql).await?,
                cells,
                object,
                id,
                what,
                must_hit,
            });
        }
        Ok(steps)
    }

    async fn commit_in(
        &self,
        tx: &Transaction<'_>,
        ctx: &Ctx,
        consumer: &str,
        offset: Option<LogOffset>,
        batch: &CuratedBatch,
    ) -> Result<()> {
        let now = now_ms();
        self.upsert_rows(tx, ctx, &batch.rows).await?;
        let history = self.history_steps(tx, ctx, &batch.history).await?;
        run_steps(tx, &history).await?;

        if !batch.audit.is_empty() {
            tx.batch_execute("LOCK TABLE audit_log IN EXCLUSIVE MODE")
                .await
                .map_err(db("lock audit_log"))?;
            let head = tx
                .query_opt(
                    "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                    &[],
                )
                .await
                .map_err(db("read audit head"))?;
            let (mut seq, mut prev) = match head {
                Some(r) => (
                    r.try_get::<_, i64>(0).map_err(db("read audit head"))?,
                    r.try_get::<_, String>(1).map_err(db("read audit head"))?,
                ),
                None => (0, wh::GENESIS_HASH.to_string()),
            };
            let stmt = self
                .prepared(
                    tx,
                    "INSERT INTO audit_log (seq, object, record_id, change_type, event_key, entry,
                         prev_hash, hash, created_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .await?;
            let mut steps = Vec::with_capacity(batch.audit.len());
            for e in &batch.audit {
                seq += 1;
                let row = wh::audit_row(ctx, &prev, e)?;
                prev = row.hash.clone();
                steps.push(Step {
                    stmt: stmt.clone(),
                    cells: vec![
                        Cell::Int(seq),
                        Cell::Text(Cow::Borrowed(&e.object)),
                        Cell::Text(Cow::Borrowed(&e.record_id)),
                        Cell::Text(Cow::Borrowed(&e.change_type)),
                        Cell::Text(Cow::Borrowed(&e.event_key)),
                        Cell::Text(Cow::Owned(row.entry)),
                        Cell::Text(Cow::Owned(row.prev_hash)),
                        Cell::Text(Cow::Owned(row.hash)),
                        Cell::Int(now),
                    ],
                    object: &e.object,
                    id: &e.record_id,
                    what: "audit entry".into(),
                    must_hit: false,
                });
            }
            run_steps(tx, &steps).await?;
        }

        let deliveries = crate::delivery::encode_outbox(ctx, &batch.deliveries)?;
        if !deliveries.is_empty() {
            let stmt = self
                .prepared(
                    tx,
                    "INSERT INTO delivery_outbox (object, record_id, change_type, event_key,
                         commit_timestamp_ms, applied_at_ms, source, origin_client, fields,
                         deleted, record, run_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                )
                .await?;
            let steps: Vec<Step<'_>> = deliveries
                .iter()
                .map(|e| {
                    let c = e.change;
                    Step {
                        stmt: stmt.clone(),
                        cells: vec![
                            Cell::Text(Cow::Borrowed(&c.object)),
                            Cell::Text(Cow::Borrowed(&c.record_id)),
                            Cell::Text(Cow::Borrowed(&c.change_type)),
                            Cell::Text(Cow::Borrowed(&c.event_key)),
                            Cell::Int(c.commit_timestamp_ms),
                            Cell::Int(c.applied_at_ms),
                            Cell::Text(Cow::Borrowed(c.source.as_str())),
                            c.origin_client
                                .as_deref()
                                .map_or(Cell::Null, |o| Cell::Text(Cow::Borrowed(o))),
                            Cell::Text(Cow::Borrowed(&e.fields)),
                            Cell::Bool(c.deleted),
                            Cell::Text(Cow::Borrowed(&e.record)),
                            Cell::Text(Cow::Borrowed(&c.run_id)),
                        ],
                        object: &c.object,
                        id: &c.record_id,
                        what: format!("delivery outbox entry of event {}", c.event_key),
                        must_hit: false,
                    }
                })
                .collect();
            run_steps(tx, &steps).await?;
        }

        let mut steps = Vec::new();
        if !batch.repairs.is_empty() {
            let stmt = self
                .prepared(
                    tx,
                    "INSERT INTO repair_requests (object, record_ids, reason, event_key,
                         commit_timestamp_ms, status, created_at_ms)
                     VALUES ($1, $2, $3, $4, $5, 'pending', $6)",
                )
                .await?;
            for r in &batch.repairs {
                let ids = serde_json::to_string(&r.record_ids).expect("strings serialise");
                steps.push(Step {
                    stmt: stmt.clone(),
                    cells: vec![
                        Cell::Text(Cow::Borrowed(&r.object)),
                        Cell::Text(Cow::Owned(ids)),
                        Cell::Text(Cow::Borrowed(&r.reason)),
                        Cell::Text(Cow::Borrowed(&r.event_key)),
                        Cell::Int(r.commit_timestamp_ms),
                        Cell::Int(now),
                    ],
                    object: &r.object,
                    id: r.record_ids.first().map_or("-", String::as_str),
                    what: "repair request".into(),
                    must_hit: false,
                });
            }
        }
        if !batch.resyncs.is_empty() {
            let stmt = self.prepared(tx, INSERT_RESYNC).await?;
            for r in &batch.resyncs {
                steps.push(Step {
                    stmt: stmt.clone(),
                    cells: resync_cells(r, now),
                    object: &r.object,
                    id: "-",
                    what: format!("re-sync request for channel '{}'", r.channel),
                    must_hit: false,
                });
            }
        }
        run_steps(tx, &steps).await?;
        if !batch.repairs_done.is_empty() {
            let done = tx
                .query(
                    "UPDATE repair_requests SET status = 'done', done_at_ms = $2
                     WHERE id = ANY($1) RETURNING id",
                    &[&batch.repairs_done, &now],
                )
                .await
                .map_err(db("complete repair requests"))?;
            let done: Vec<i64> = done.iter().filter_map(|r| r.try_get(0).ok()).collect();
            if let Some(missing) = batch.repairs_done.iter().find(|id| !done.contains(id)) {
                return Err(invalid(
                    "commit curated",
                    format!(
                        "repair request {missing} does not exist; nothing of the batch was written"
                    ),
                ));
            }
        }
        insert_dead_letters(tx, ctx, &batch.dead_letters).await?;
        quality::commit_quality(tx, &self.statements, ctx, batch, now).await?;
        if let Some(p) = &batch.job_progress {
            jobs::progress(tx, &self.statements, p).await?;
        }
        if let Some(offset) = offset {
            set_applied_offset_in(tx, consumer, offset).await?;
        }
        super::lease::move_positions(tx, &batch.log_positions).await?;
        Ok(())
    }

    async fn ensure_model_in(
        &self,
        tx: &Transaction<'_>,
        model: &ObjectModel,
        reg: &Registered,
    ) -> Result<ModelChange> {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await
            .map_err(db("take model lock"))?;
        let d = Dialect::Postgres;
        let mut change = ModelChange::default();
        let existing = table_columns(tx, &model.table).await?;
        let plan = wh::plan_table(d, &model.table, &reg.cur, &["id"], existing.as_ref());
        let mut statements = plan.statements;
        change.created = plan.created;
        change.added_columns = plan.added;
        change.retyped_columns = plan.retyped;
        if let (Some(h), Some(cols)) = (&model.history, &reg.hist) {
            let existing = table_columns(tx, &h.table).await?;
            let plan = wh::plan_table(d, &h.table, cols, &["id", "_sf_version"], existing.as_ref());
            change.created |= plan.created;
            statements.extend(plan.statements);
            statements.push(wh::one_current_index(d, &h.table));
            for c in plan.added {
                if !change.added_columns.contains(&c) {
                    change.added_columns.push(c);
                }
            }
            for c in plan.retyped {
                if !change.retyped_columns.contains(&c) {
                    change.retyped_columns.push(c);
                }
            }
        }
        for sql in &statements {
            tx.batch_execute(sql)
                .await
                .map_err(|e| StoreError::InvalidInput {
                    backend: BACKEND,
                    op: "ensure model",
                    reason: format!("'{sql}' failed for '{}': {e}", model.object),
                })?;
        }
        let json = serde_json::to_string(model).expect("models serialise");
        tx.execute(
            "INSERT INTO curated_models (object, model, updated_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (object) DO UPDATE SET model = excluded.model,
                 updated_at_ms = excluded.updated_at_ms",
            &[&model.object, &json, &now_ms()],
        )
        .await
        .map_err(db("store curated model"))?;
        Ok(change)
    }
}

fn ts_out_of_range(cells: &[Cell<'_>]) -> bool {
    cells
        .iter()
        .any(|c| matches!(c, Cell::Ts(ms) if wh::ts_from_ms(*ms).is_none()))
}

const INSERT_RESYNC: &str =
    "INSERT INTO resync_requests (object, channel, from_ms, reason, event_key, status,
         created_at_ms)
     VALUES ($1, $2, $3, $4, $5, 'pending', $6)";

fn resync_cells(r: &ResyncRequest, now: i64) -> Vec<Cell<'_>> {
    vec![
        Cell::Text(Cow::Borrowed(&r.object)),
        Cell::Text(Cow::Borrowed(&r.channel)),
        Cell::Int(r.from_ms),
        Cell::Text(Cow::Borrowed(&r.reason)),
        r.event_key
            .as_deref()
            .map_or(Cell::Null, |s| Cell::Text(Cow::Borrowed(s))),
        Cell::Int(now),
    ]
}

/// Counts of a key rotation.
#[derive(Default)]
struct Resealed {
    values: u64,
    payloads: u64,
}

impl PostgresChangeLog {
    async fn rotate(&self, ctx: &Ctx, k: &pii::Keyring) -> Result<Resealed> {
        let mut out = Resealed::default();
        let mut client = self.client.lock().await;
        for reg in ctx.models.values().filter(|r| r.has_pii) {
            let object = &reg.model.object;
            let pii_cols: Vec<&wh::DataCol> = reg.pii_data().map(|(_, c)| c).collect();
            let list = pii_cols
                .iter()
                .map(|c| wh::q(&c.name))
                .collect::<Vec<_>>()
                .join(", ");
            let t = wh::q(&reg.model.table);
            let select = format!(
                "SELECT \"id\", {list} FROM {t} WHERE \"id\" > $1 ORDER BY \"id\" LIMIT {PAGE}"
            );
            let mut after = String::new();
            loop {
                let tx = client.transaction().await.map_err(db("begin rotate"))?;
                let rows = tx
                    .query(&select, &[&after])
                    .await
                    .map_err(db("read rows"))?;
                for r in &rows {
                    let cells = read_cells(r)?;
                    let Cell::Text(id) = &cells[0] else { continue };
                    for (c, cell) in pii_cols.iter().zip(&cells[1..]) {
                        if let Some(v) = wh::reseal_cell(k, object, c, cell.clone())? {
                            tx.execute(
                                &format!(
                                    "UPDATE {t} SET {} = $1 WHERE \"id\" = $2",
                                    wh::q(&c.name)
                                ),
                                &[&v, &id.as_ref()],
                            )
                            .await
                            .map_err(db("re-seal value"))?;
                            out.values += 1;
                        }
                    }
                }
                tx.commit().await.map_err(db("commit rotate"))?;
                match rows.last() {
                    Some(r) if rows.len() as i64 == PAGE => {
                        after = r.try_get(0).map_err(db("read rows"))?
                    }
                    _ => break,
                }
            }
            if let Some(h) = &reg.model.history {
                let tracked: Vec<&wh::DataCol> = reg
                    .tracked
                    .iter()
                    .map(|&i| &reg.data[i])
                    .filter(|c| c.pii)
                    .collect();
                if !tracked.is_empty() {
                    let ht = wh::q(&h.table);
                    let list = tracked
                        .iter()
                        .map(|c| wh::q(&c.name))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let select = format!(
                        "SELECT \"id\", \"_sf_version\", {list} FROM {ht}
                         WHERE (\"id\", \"_sf_version\") > ($1, $2)
                         ORDER BY \"id\", \"_sf_version\" LIMIT {PAGE}"
                    );
                    let (mut after_id, mut after_v) = (String::new(), i64::MIN);
                    loop {
                        let tx = client.transaction().await.map_err(db("begin rotate"))?;
                        let rows = tx
                            .query(&select, &[&after_id, &after_v])
                            .await
                            .map_err(db("read history"))?;
                        for r in &rows {
                            let cells = read_cells(r)?;
                            let (Cell::Text(id), Cell::Int(v)) = (&cells[0], &cells[1]) else {
                                continue;
                            };
                            for (c, cell) in tracked.iter().zip(&cells[2..]) {
                                if let Some(s) = wh::reseal_cell(k, object, c, cell.clone())? {
                                    tx.execute(
                                        &format!(
                                            "UPDATE {ht} SET {} = $1 WHERE \"id\" = $2 AND \"_sf_version\" = $3",
                                            wh::q(&c.name)
                                        ),
                                        &[&s, &id.as_ref(), v],
                                    )
                                    .await
                                    .map_err(db("re-seal history value"))?;
                                    out.values += 1;
                                }
                            }
                        }
                        tx.commit().await.map_err(db("commit rotate"))?;
                        match rows.last() {
                            Some(r) if rows.len() as i64 == PAGE => {
                                after_id = r.try_get(0).map_err(db("read history"))?;
                                after_v = r.try_get(1).map_err(db("read history"))?;
                            }
                            _ => break,
                        }
                    }
                }
            }
            let aad = pii::raw_aad(object);
            let mut after = 0i64;
            loop {
                let tx = client.transaction().await.map_err(db("begin rotate"))?;
                let rows = tx
                    .query(
                        "SELECT log_offset, payload FROM raw_changes
                         WHERE entity = $1 AND log_offset > $2 ORDER BY log_offset LIMIT $3",
                        &[object, &after, &PAGE],
                    )
                    .await
                    .map_err(db("read raw payloads"))?;
                for r in &rows {
                    let off: i64 = r.try_get(0).map_err(db("read raw payloads"))?;
                    let payload: Vec<u8> = r.try_get(1).map_err(db("read raw payloads"))?;
                    if let Some(p) = wh::reseal_bytes(k, &aad, &payload)? {
                        tx.execute(
                            "UPDATE raw_changes SET payload = $1 WHERE log_offset = $2",
                            &[&p, &off],
                        )
                        .await
                        .map_err(db("re-seal raw payload"))?;
                        out.payloads += 1;
                    }
                    after = off;
                }
                tx.commit().await.map_err(db("commit rotate"))?;
                if (rows.len() as i64) < PAGE {
                    break;
                }
            }
            // Held changes of the quarantine, sealed like raw payloads.
            let mut after = 0i64;
            loop {
                let tx = client.transaction().await.map_err(db("begin rotate"))?;
                let rows = tx
                    .query(
                        "SELECT id, change FROM quarantine
                         WHERE object = $1 AND id > $2 AND change IS NOT NULL
                         ORDER BY id LIMIT $3",
                        &[object, &after, &PAGE],
                    )
                    .await
                    .map_err(db("read held changes"))?;
                for r in &rows {
                    let id: i64 = r.try_get(0).map_err(db("read held changes"))?;
                    let change: Vec<u8> = r.try_get(1).map_err(db("read held changes"))?;
                    if let Some(c) = wh::reseal_bytes(k, &aad, &change)? {
                        tx.execute(
                            "UPDATE quarantine SET change = $1 WHERE id = $2",
                            &[&c, &id],
                        )
                        .await
                        .map_err(db("re-seal held change"))?;
                        out.payloads += 1;
                    }
                    after = id;
                }
                tx.commit().await.map_err(db("commit rotate"))?;
                if (rows.len() as i64) < PAGE {
                    break;
                }
            }
        }
        let mut after = 0i64;
        loop {
            let tx = client.transaction().await.map_err(db("begin rotate"))?;
            let rows = tx
                .query(
                    "SELECT id, channel, payload FROM dead_letters WHERE id > $1 ORDER BY id LIMIT $2",
                    &[&after, &PAGE],
                )
                .await
                .map_err(db("read dead letters"))?;
            for r in &rows {
                let id: i64 = r.try_get(0).map_err(db("read dead letters"))?;
                let channel: String = r.try_get(1).map_err(db("read dead letters"))?;
                let payload: Vec<u8> = r.try_get(2).map_err(db("read dead letters"))?;
                if let Some(p) = wh::reseal_bytes(k, &pii::dead_letter_aad(&channel), &payload)? {
                    tx.execute(
                        "UPDATE dead_letters SET payload = $1 WHERE id = $2",
                        &[&p, &id],
                    )
                    .await
                    .map_err(db("re-seal dead letter"))?;
                    out.payloads += 1;
                }
                after = id;
            }
            tx.commit().await.map_err(db("commit rotate"))?;
            if (rows.len() as i64) < PAGE {
                break;
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Warehouse for PostgresChangeLog {
    fn encode_raw_payloads(&self, changes: &[crate::RawChange]) -> Result<Vec<Vec<u8>>> {
        self.registry.ctx().encode_raw_batch(changes)
    }

    fn decode_raw_payload(&self, entity: &str, stored: Vec<u8>) -> Result<Vec<u8>> {
        self.registry.ctx().decode_raw(entity, 0, stored)
    }

    async fn ensure_model(&self, model: &ObjectModel) -> Result<ModelChange> {
        wh::validate_model(BACKEND, model)?;
        let ctx = self.registry.ctx();
        ctx.check_tables(model)?;
        if model.columns.iter().any(|c| c.pii) && ctx.keyring.is_none() {
            let cols: Vec<&str> = model.pii_columns().collect();
            return Err(wh::keyring_missing(
                BACKEND,
                "ensure model",
                format!(
                    "object '{}' has PII columns ({})",
                    model.object,
                    cols.join(", ")
                ),
            ));
        }
        let reg = Registered::new(model.clone(), Dialect::Postgres);
        let change = {
            let mut client = self.client.lock().await;
            let tx = client
                .transaction()
                .await
                .map_err(db("begin ensure model"))?;
            let change = self.ensure_model_in(&tx, model, &reg).await?;
            tx.commit().await.map_err(db("commit ensure model"))?;
            change
        };
        self.registry.register(model.clone());
        if change.created || !change.added_columns.is_empty() || !change.retyped_columns.is_empty()
        {
            tracing::info!(
                object = %model.object,
                table = %model.table,
                created = change.created,
                added = ?change.added_columns,
                retyped = ?change.retyped_columns,
                "Curated model changed."
            );
        }
        Ok(change)
    }

    async fn load_current(
        &self,
        object: &str,
        ids: &[String],
    ) -> Result<HashMap<String, CurrentRow>> {
        let ctx = self.registry.ctx();
        let reg = Arc::clone(ctx.require("load current rows", object)?);
        let mut out = HashMap::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(out);
        }
        let client = self.reader.lock().await;
        let sql = format!("{} WHERE \"id\" = ANY($1)", reg.sql.select_current);
        let stmt = self.reader_prepared(&*client, &sql).await?;
        for chunk in ids.chunks(ID_CHUNK) {
            let rows = client
                .query(&stmt, &[&chunk])
                .await
                .map_err(db("load current rows"))?;
            for r in &rows {
                let row = wh::decode_row(&ctx, &reg, read_cells(r)?)?;
                out.insert(row.id.clone(), row);
            }
        }
        Ok(out)
    }

    async fn ids_by_value(
        &self,
        object: &str,
        column: &str,
        values: &[String],
    ) -> Result<Vec<(String, String)>> {
        let ctx = self.registry.ctx();
        let reg = Arc::clone(ctx.require("look up values", object)?);
        reg.check_lookup_column(BACKEND, column)?;
        let mut values = values.to_vec();
        values.sort_unstable();
        values.dedup();
        let mut out = Vec::new();
        if values.is_empty() {
            return Ok(out);
        }
        let client = self.reader.lock().await;
        let sql = reg.ids_by_value_sql(Dialect::Postgres, column, values.len());
        let stmt = self.reader_prepared(&*client, &sql).await?;
        for chunk in values.chunks(ID_CHUNK) {
            let rows = client
                .query(&stmt, &[&chunk])
                .await
                .map_err(db("look up values"))?;
            for r in &rows {
                let get = db("look up values");
                out.push((r.try_get(0).map_err(&get)?, r.try_get(1).map_err(&get)?));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    async fn read_current(&self, object: &str) -> Result<Vec<CurrentRow>> {
        let ctx = self.registry.ctx();
        let reg = Arc::clone(ctx.require("read current rows", object)?);
        let client = self.client.lock().await;
        let rows = client
            .query(&format!("{} ORDER BY \"id\"", reg.sql.select_current), &[])
            .await
            .map_err(db("read current rows"))?;
        rows.iter()
            .map(|r| wh::decode_row(&ctx, &reg, read_cells(r)?))
            .collect()
    }

    async fn read_history(&self, object: &str) -> Result<Vec<HistoryRow>> {
        let ctx = self.registry.ctx();
        let reg = Arc::clone(ctx.require("read history", object)?);
        if reg.hist.is_none() {
            return Ok(Vec::new());
        }
        let client = self.client.lock().await;
        let rows = client
            .query(&reg.sql.hist_select, &[])
            .await
            .map_err(db("read history"))?;
        rows.iter()
            .map(|r| wh::decode_history(&ctx, &reg, read_cells(r)?))
            .collect()
    }

    async fn latest_history(
        &self,
        object: &str,
        ids: &[String],
    ) -> Result<HashMap<String, HistoryRow>> {
        let ctx = self.registry.ctx();
        let reg = Arc::clone(ctx.require("read history", object)?);
        let mut out = HashMap::new();
        let (Some(hist), Some(table)) = (reg.hist.as_ref(), reg.history_table()) else {
            return Ok(out);
        };
        if ids.is_empty() {
            return Ok(out);
        }
        let sql = format!(
            "SELECT {} FROM {} WHERE \"id\" = ANY($1) ORDER BY \"id\", \"_sf_version\"",
            wh::column_list(hist),
            wh::q(table)
        );
        let client = self.reader.lock().await;
        let stmt = self.reader_prepared(&*client, &sql).await?;
        for chunk in ids.chunks(ID_CHUNK) {
            let rows = client
                .query(&stmt, &[&chunk])
                .await
                .map_err(db("read history"))?;
            for r in &rows {
                let h = wh::decode_history(&ctx, &reg, read_cells(r)?)?;
                out.insert(h.id.clone(), h);
            }
        }
        Ok(out)
    }

    async fn commit_curated(
        &self,
        consumer: &str,
        offset: Option<LogOffset>,
        batch: &CuratedBatch,
    ) -> Result<()> {
        if batch.is_empty() && offset.is_none() {
            return Ok(());
        }
        let ctx = self.registry.ctx();
        ctx.check_batch(batch)?;
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin commit curated"))?;
        self.commit_in(&tx, &ctx, consumer, offset, batch).await?;
        tx.commit().await.map_err(db("commit curated"))
    }

    async fn append_with_dead_letters(
        &self,
        channel: &str,
        changes: &[RawChange],
        dead_letters: &[DeadLetter],
        checkpoint: &ReplayId,
    ) -> Result<AppendOutcome> {
        self.append(channel, changes, dead_letters, checkpoint, None)
            .await
    }

    async fn pending_repairs(&self, limit: usize) -> Result<Vec<StoredRepair>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client.lock().await;
        let rows = client
            .query(
                "SELECT id, object, record_ids, reason, event_key, commit_timestamp_ms,
                     created_at_ms
                 FROM repair_requests WHERE status = 'pending' ORDER BY id LIMIT $1",
                &[&limit],
            )
            .await
            .map_err(db("read repair requests"))?;
        rows.iter()
            .map(|r| {
                let get = db("read repair requests");
                let id: i64 = r.try_get(0).map_err(&get)?;
                let ids: String = r.try_get(2).map_err(&get)?;
                let record_ids = serde_json::from_str(&ids).map_err(|e| StoreError::Corrupt {
                    backend: BACKEND,
                    table: "repair_requests",
                    offset: id,
                    reason: format!("record_ids is not a JSON list: {e}"),
                })?;
                Ok(StoredRepair {
                    id,
                    request: RepairRequest {
                        object: r.try_get(1).map_err(&get)?,
                        record_ids,
                        reason: r.try_get(3).map_err(&get)?,
                        event_key: r.try_get(4).map_err(&get)?,
                        commit_timestamp_ms: r.try_get(5).map_err(&get)?,
                    },
                    created_at_ms: r.try_get(6).map_err(&get)?,
                })
            })
            .collect()
    }

    async fn resync_requests(&self) -> Result<Vec<StoredResync>> {
        let client = self.client.lock().await;
        let rows = client
            .query(
                "SELECT id, object, channel, from_ms, reason, event_key, status, created_at_ms
                 FROM resync_requests ORDER BY id",
                &[],
            )
            .await
            .map_err(db("read re-sync requests"))?;
        rows.iter()
            .map(|r| {
                Ok(StoredResync {
                    id: r.try_get(0)?,
                    request: ResyncRequest {
                        object: r.try_get(1)?,
                        channel: r.try_get(2)?,
                        from_ms: r.try_get(3)?,
                        reason: r.try_get(4)?,
                        event_key: r.try_get(5)?,
                    },
                    status: r.try_get(6)?,
                    created_at_ms: r.try_get(7)?,
                })
            })
            .collect::<std::result::Result<_, tokio_postgres::Error>>()
            .map_err(db("read re-sync requests"))
    }

    async fn add_resync(&self, request: &ResyncRequest) -> Result<()> {
        let client = self.client.lock().await;
        client
            .execute(INSERT_RESYNC, &params(&resync_cells(request, now_ms())))
            .await
            .map_err(db("insert re-sync request"))?;
        Ok(())
    }

    async fn dead_letter_count(&self) -> Result<u64> {
        let client = self.client.lock().await;
        let n: i64 = client
            .query_one("SELECT COUNT(*) FROM dead_letters", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(db("count dead letters"))?;
        Ok(n.max(0) as u64)
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<StoredDeadLetter>> {
        let limit = (filter.limit > 0).then_some(filter.limit as i64);
        let sql = format!(
            "SELECT id, channel, replay_id, schema_id, stage, error, object, payload,
                 created_at_ms FROM dead_letters
             WHERE (cardinality($1::BIGINT[]) = 0 OR id = ANY($1))
               AND ($2::TEXT IS NULL OR object = $2)
               AND ($4::BIGINT IS NULL OR id > $4)
             ORDER BY id {} LIMIT $3",
            if filter.newest_first { "DESC" } else { "ASC" }
        );
        let client = self.reader.lock().await;
        let rows = client
            .query(&sql, &[&filter.ids, &filter.object, &limit, &filter.after])
            .await
            .map_err(db("read dead letters"))?;
        rows.iter()
            .map(|r| {
                let payload: Vec<u8> = r.try_get(7)?;
                Ok(StoredDeadLetter::from_parts(
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                    r.try_get(6)?,
                    &payload,
                    r.try_get(8)?,
                ))
            })
            .collect::<std::result::Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(db("read dead letters"))
    }

    async fn put_schema(&self, schema_id: &str, json: &str) -> Result<()> {
        let client = self.client.lock().await;
        client
            .execute(
                "INSERT INTO schemas (schema_id, json, stored_at_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (schema_id) DO NOTHING",
                &[&schema_id, &json, &now_ms()],
            )
            .await
            .map_err(db("store schema"))?;
        Ok(())
    }

    async fn schema(&self, schema_id: &str) -> Result<Option<String>> {
        let client = self.client.lock().await;
        client
            .query_opt(
                "SELECT json FROM schemas WHERE schema_id = $1",
                &[&schema_id],
            )
            .await
            .map_err(db("read schema"))?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(db("read schema"))
    }

    async fn verify_audit(&self) -> Result<AuditVerification> {
        let client = self.client.lock().await;
        let anchor = super::retention::anchor_in(&*client).await?;
        let mut v = wh::AuditVerifier::after_anchor(anchor.as_ref());
        let mut after = anchor.as_ref().map_or(i64::MIN, |a| a.seq);
        loop {
            let rows = client
                .query(
                    "SELECT seq, object, record_id, change_type, event_key, entry, prev_hash, hash
                     FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&after, &PAGE],
                )
                .await
                .map_err(db("read audit"))?;
            for r in &rows {
                let get = db("read audit");
                let seq: i64 = r.try_get(0).map_err(&get)?;
                v.push(wh::StoredAudit {
                    seq,
                    object: r.try_get(1).map_err(&get)?,
                    record_id: r.try_get(2).map_err(&get)?,
                    change_type: r.try_get(3).map_err(&get)?,
                    event_key: r.try_get(4).map_err(&get)?,
                    entry: r.try_get(5).map_err(&get)?,
                    prev_hash: r.try_get(6).map_err(&get)?,
                    hash: r.try_get(7).map_err(&get)?,
                });
                after = seq;
            }
            if (rows.len() as i64) < PAGE {
                break;
            }
        }
        let mut out = v.finish();
        super::operator::verify(&client, &mut out).await?;
        Ok(out)
    }

    async fn rotate_keys(&self) -> Result<RotationReport> {
        let ctx = self.registry.ctx();
        let Some(k) = ctx.keyring.clone() else {
            return Err(wh::keyring_missing(
                BACKEND,
                "rotate keys",
                "key rotation was asked for".into(),
            ));
        };
        let n = self.rotate(&ctx, &k).await?;
        tracing::info!(
            key_id = %k.current_key_id(),
            values = n.values,
            payloads = n.payloads,
            "Re-sealed PII under the current key."
        );
        Ok(RotationReport {
            values_resealed: n.values,
            raw_payloads_resealed: n.payloads,
            new_key_id: k.current_key_id().to_string(),
        })
    }

    async fn start_run(&self, run_id: &str, kind: &str, detail: &str) -> Result<()> {
        let client = self.client.lock().await;
        client
            .execute(
                "INSERT INTO runs (run_id, kind, status, started_at_ms, detail)
                 VALUES ($1, $2, 'running', $3, $4)",
                &[&run_id, &kind, &now_ms(), &detail],
            )
            .await
            .map_err(db("start run"))?;
        Ok(())
    }

    async fn finish_run(&self, run_id: &str, status: &str, detail: &str) -> Result<()> {
        let client = self.client.lock().await;
        let n = client
            .execute(
                "UPDATE runs SET status = $2, ended_at_ms = $3, detail = $4 WHERE run_id = $1",
                &[&run_id, &status, &now_ms(), &detail],
            )
            .await
            .map_err(db("finish run"))?;
        if n == 0 {
            return Err(invalid(
                "finish run",
                format!("run '{run_id}' was never started"),
            ));
        }
        Ok(())
    }

    async fn runs(&self, limit: usize) -> Result<Vec<RunRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client.lock().await;
        let rows = client
            .query(
                "SELECT run_id, kind, status, started_at_ms, ended_at_ms, detail FROM runs
                 ORDER BY started_at_ms DESC, run_id DESC LIMIT $1",
                &[&limit],
            )
            .await
            .map_err(db("read runs"))?;
        rows.iter()
            .map(|r| {
                Ok(RunRecord {
                    run_id: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    status: r.try_get(2)?,
                    started_at_ms: r.try_get(3)?,
                    ended_at_ms: r.try_get(4)?,
                    detail: r.try_get(5)?,
                })
            })
            .collect::<std::result::Result<_, tokio_postgres::Error>>()
            .map_err(db("read runs"))
    }

    async fn quarantine_list(&self, filter: &QuarantineFilter) -> Result<Vec<QuarantineRecord>> {
        let ctx = self.registry.ctx();
        let client = self.reader.lock().await;
        quality::list(&*client, &self.reader_statements, &ctx, filter).await
    }

    async fn quarantine_open_count(&self) -> Result<u64> {
        let client = self.reader.lock().await;
        quality::open_count(&*client, &self.reader_statements).await
    }

    async fn quarantine_act(
        &self,
        ids: &[i64],
        action: QuarantineAction,
        by: &str,
        note: &str,
    ) -> Result<Vec<(i64, QuarantineActOutcome)>> {
        let mut client = self.client.lock().await;
        quality::act(
            &mut client,
            &self.statements,
            ids,
            action,
            by,
            note,
            now_ms(),
        )
        .await
    }

    async fn quarantine_mark_alerted(&self, ids: &[i64]) -> Result<()> {
        let client = self.client.lock().await;
        quality::mark_alerted(&*client, ids, now_ms()).await
    }

    async fn dq_counts(&self, run_id: Option<&str>) -> Result<Vec<DqCount>> {
        let client = self.reader.lock().await;
        quality::counts(&*client, &self.reader_statements, run_id).await
    }

    async fn dq_samples(&self, run_id: Option<&str>, limit: usize) -> Result<Vec<DqFailure>> {
        let client = self.reader.lock().await;
        quality::samples(&*client, &self.reader_statements, run_id, limit).await
    }

    async fn add_sync_job(&self, job: &crate::jobs::NewSyncJob) -> Result<i64> {
        let client = self.client.lock().await;
        jobs::insert(&*client, &self.statements, job, now_ms()).await
    }

    async fn sync_jobs(
        &self,
        filter: &crate::jobs::SyncJobFilter,
    ) -> Result<Vec<crate::jobs::SyncJob>> {
        let client = self.reader.lock().await;
        jobs::list(&*client, &self.reader_statements, filter).await
    }

    async fn sync_job(&self, id: i64) -> Result<Option<crate::jobs::SyncJob>> {
        let client = self.reader.lock().await;
        jobs::get(&*client, &self.reader_statements, id).await
    }

    async fn patch_sync_job(&self, id: i64, patch: &crate::jobs::SyncJobPatch) -> Result<()> {
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin update sync job"))?;
        jobs::patch(&tx, &self.statements, id, patch, now_ms()).await?;
        tx.commit().await.map_err(db("commit update sync job"))
    }

    async fn retry_sync_job(&self, id: i64, by: &str) -> Result<crate::jobs::SyncJob> {
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin retry sync job"))?;
        let job = jobs::retry(&tx, &self.statements, id, by, now_ms()).await?;
        tx.commit().await.map_err(db("commit retry sync job"))?;
        Ok(job)
    }

    async fn set_sync_job_slices(
        &self,
        id: i64,
        slices: &[crate::jobs::SyncJobSlice],
        reset_position: bool,
    ) -> Result<()> {
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin update sync job slices"))?;
        jobs::set_slices(&tx, &self.statements, id, slices, reset_position).await?;
        tx.commit()
            .await
            .map_err(db("commit update sync job slices"))
    }

    async fn schedule_resyncs(&self, requested_by: &str) -> Result<Vec<i64>> {
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin schedule re-syncs"))?;
        let ids = jobs::schedule_resyncs(&tx, &self.statements, requested_by, now_ms()).await?;
        tx.commit().await.map_err(db("commit schedule re-syncs"))?;
        Ok(ids)
    }

    async fn row_keys(
        &self,
        object: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::jobs::RowKey>> {
        let ctx = self.registry.ctx();
        let table = &ctx.require("read row keys", object)?.model.table;
        let client = self.reader.lock().await;
        jobs::row_keys(&*client, &self.reader_statements, table, after, limit).await
    }

    async fn acquire_apply_lock(&self) -> Result<()> {
        let client = self.client.lock().await;
        if self.apply_locked.load(Ordering::SeqCst) {
            return Ok(());
        }
        // One lock per database and schema, so stores in other schemas are independent.
        let row = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended('sfsync.apply.' || current_schema(), 0)),
                     current_database() || ' (schema ' || current_schema() || ')'",
                &[],
            )
            .await
            .map_err(db("take apply lock"))?;
        let got: bool = row.try_get(0).map_err(db("take apply lock"))?;
        if !got {
            return Err(StoreError::ApplyLockHeld {
                backend: BACKEND,
                database: row.try_get(1).map_err(db("take apply lock"))?,
            });
        }
        self.apply_locked.store(true, Ordering::SeqCst);
        Ok(())
    }
}
