//! [`Warehouse`] on SQLite: every write runs in one `BEGIN IMMEDIATE` transaction on the store's
//! single connection, with cached prepared statements per table and operation.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, ToSql, TransactionBehavior};
use sfsync_core::ReplayId;

use super::{set_applied_offset_in, SqliteChangeLog, BACKEND};
use crate::curated::*;
use crate::error::{sqlite_class, Result, StoreError};
use crate::pii;
use crate::quality::*;
use crate::warehouse::{self as wh, Cell, Ctx, Registered};
use crate::{now_ms, AppendOutcome, LogOffset, RawChange};

/// Ids per `IN (…)` list.
const IN_CHUNK: usize = 500;
/// The length an `IN (…)` list of `n` ids is padded to: the next power of two, at most
/// [`IN_CHUNK`] (ten statement shapes per query instead of one per list length).
pub(super) fn in_list_len(n: usize) -> usize {
    n.max(1).next_power_of_two().min(IN_CHUNK)
}

/// Rows per transaction when re-sealing.
const ROTATE_CHUNK: i64 = 500;

impl ToSql for Cell<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let out_of_range = |what: String| {
            rusqlite::Error::ToSqlConversionFailure(format!("{what} is out of range").into())
        };
        Ok(match self {
            Cell::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Cell::Bool(b) => ToSqlOutput::from(i64::from(*b)),
            Cell::Int(i) => ToSqlOutput::from(*i),
            Cell::Int4(i) => ToSqlOutput::from(i64::from(*i)),
            Cell::Real(f) => ToSqlOutput::from(*f),
            Cell::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Cell::Date(d) => ToSqlOutput::from(
                wh::format_date(*d).ok_or_else(|| out_of_range(format!("date {d}")))?,
            ),
            Cell::Ts(ms) => ToSqlOutput::from(
                wh::format_ts(*ms).ok_or_else(|| out_of_range(format!("timestamp {ms}")))?,
            ),
            Cell::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

pub(super) fn read_cell(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Cell<'static>> {
    Ok(match row.get_ref(idx)? {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(i) => Cell::Int(i),
        ValueRef::Real(f) => Cell::Real(f),
        // Valid UTF-8 (every text sfsync writes) is copied after the fast check; the lossy
        // conversion's chunk walk was ~2 % of pipeline CPU in row loads.
        ValueRef::Text(t) => Cell::Text(Cow::Owned(match std::str::from_utf8(t) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(t).into_owned(),
        })),
        ValueRef::Blob(b) => Cell::Bytes(Cow::Owned(b.to_vec())),
    })
}

fn db(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::sqlite(op, e)
}

/// A failed write naming the object and record. Nothing is allocated unless the write fails
/// (it is built for every bound cell of every row: measured ~2 % of pipeline CPU when it copied
/// its strings up front); `what` says what was written, formatted only on failure.
pub(super) fn write_failed<'a, W: Into<String>>(
    object: &'a str,
    record_id: &'a str,
    what: impl FnOnce() -> W + 'a,
) -> impl FnOnce(rusqlite::Error) -> StoreError + 'a {
    move |e| StoreError::CuratedWrite {
        backend: BACKEND,
        object: object.to_string(),
        record_id: record_id.to_string(),
        what: what().into(),
        class: sqlite_class(&e),
        source: Box::new(e),
    }
}

fn invalid(op: &'static str, reason: String) -> StoreError {
    StoreError::InvalidInput {
        backend: BACKEND,
        op,
        reason,
    }
}

/// Executes a cached statement with `cells` bound in order; returns the changed row count.
fn exec_cells(conn: &Connection, sql: &str, cells: &[Cell<'_>]) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare_cached(sql)?;
    for (i, c) in cells.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, c)?;
    }
    stmt.raw_execute()
}

/// Models persisted in `curated_models`, as (object, JSON).
pub(super) fn load_models(conn: &Connection) -> Result<Vec<(String, String)>> {
    let mut stmt = conn
        .prepare("SELECT object, model FROM curated_models ORDER BY object")
        .map_err(db("read curated models"))?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(db("read curated models"))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db("read curated models"))
}

/// Column name → declared type of `table`, or `None` when the table does not exist.
fn table_columns(conn: &Connection, table: &str) -> Result<Option<HashMap<String, String>>> {
    let mut stmt = conn
        .prepare("SELECT name, type FROM pragma_table_info(?1)")
        .map_err(db("read table columns"))?;
    let cols: HashMap<String, String> = stmt
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(db("read table columns"))?
        .collect::<rusqlite::Result<_>>()
        .map_err(db("read table columns"))?;
    Ok((!cols.is_empty()).then_some(cols))
}

/// Inserts dead letters. With `once`, a letter whose (channel, replay id, stage) is already
/// stored is skipped: ingest writes its dead letters before the append that moves the
/// checkpoint past them, and a redelivery after a crash in between must not double them.
pub(super) fn insert_dead_letters(
    conn: &Connection,
    ctx: &Ctx,
    letters: &[DeadLetter],
    once: bool,
) -> Result<()> {
    if letters.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let sql = if once {
        "INSERT INTO dead_letters (channel, replay_id, schema_id, stage, error, object,
             payload, created_at_ms)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8
         WHERE NOT EXISTS (SELECT 1 FROM dead_letters
             WHERE channel = ?1 AND replay_id IS ?2 AND stage = ?4)"
    } else {
        "INSERT INTO dead_letters (channel, replay_id, schema_id, stage, error, object,
             payload, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    };
    let mut stmt = conn
        .prepare_cached(sql)
        .map_err(db("prepare dead letter insert"))?;
    for d in letters {
        let payload = ctx.seal_dead_letter(&d.channel, &d.payload)?;
        stmt.execute(params![
            d.channel,
            d.replay_id.as_ref().map(|r| r.as_bytes()),
            d.schema_id,
            d.stage,
            d.error,
            d.object,
            &payload[..],
            now,
        ])
        .map_err(write_failed(
            d.object.as_deref().unwrap_or("(unknown object)"),
            "-",
            || format!("dead letter of channel '{}'", d.channel),
        ))?;
    }
    Ok(())
}

fn ensure_model_blocking(
    conn: &mut Connection,
    model: &ObjectModel,
    reg: &Registered,
) -> Result<ModelChange> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("begin ensure model"))?;
    let mut change = ModelChange::default();
    let d = wh::Dialect::Sqlite;
    let existing = table_columns(&tx, &model.table)?;
    let plan = wh::plan_table(d, &model.table, &reg.cur, &["id"], existing.as_ref());
    let mut statements = plan.statements;
    change.created = plan.created;
    change.added_columns = plan.added;
    change.retyped_columns = plan.retyped;
    if let (Some(h), Some(cols)) = (&model.history, &reg.hist) {
        let existing = table_columns(&tx, &h.table)?;
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
        tx.execute_batch(sql)
            .map_err(|e| StoreError::InvalidInput {
                backend: BACKEND,
                op: "ensure model",
                reason: format!("'{sql}' failed for '{}': {e}", model.object),
            })?;
    }
    let json = serde_json::to_string(model).expect("models serialise");
    tx.execute(
        "INSERT INTO curated_models (object, model, updated_at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (object) DO UPDATE SET model = excluded.model,
             updated_at_ms = excluded.updated_at_ms",
        params![model.object, json, now_ms()],
    )
    .map_err(db("store curated model"))?;
    tx.commit().map_err(db("commit ensure model"))?;
    Ok(change)
}

/// The CPU-bound part of a curated commit — row cells (PII sealed) and audit entries serialised
/// — done before the write lock is taken, so the lock is held for SQLite work only.
pub(super) struct PreparedCommit<'a> {
    rows: Vec<(&'a str, &'a CurrentRow, &'a Arc<Registered>, Vec<Cell<'a>>)>,
    audit: Vec<String>,
    /// Cells of each `HistoryWrite::Open` of the batch, in batch order (none for the others).
    history_open: Vec<Option<Vec<Cell<'a>>>>,
    deliveries: Vec<crate::delivery::EncodedOutbox<'a>>,
}

pub(super) fn prepare_commit<'a>(
    ctx: &'a Ctx,
    batch: &'a CuratedBatch,
) -> Result<PreparedCommit<'a>> {
    let mut rows = Vec::with_capacity(batch.rows.len());
    for (object, row) in &batch.rows {
        let reg = ctx
            .require("commit curated", object)
            .map_err(|e| wh_error(object, &row.id, "upsert", e))?;
        rows.push((object.as_str(), row, reg, wh::encode_row(ctx, reg, row)?));
    }
    let audit = batch
        .audit
        .iter()
        .map(|e| wh::audit_entry_json(ctx, e))
        .collect::<Result<Vec<_>>>()?;
    let mut history_open = Vec::with_capacity(batch.history.len());
    for step in &batch.history {
        history_open.push(match step {
            HistoryWrite::Open {
                object,
                id,
                version,
                valid_from_ms,
                values,
                meta,
            } => {
                let reg = history_reg(ctx, object, id, || {
                    format!("history open of version {version}")
                })?;
                Some(wh::encode_history_open(
                    ctx,
                    reg,
                    id,
                    *version,
                    *valid_from_ms,
                    values,
                    meta,
                )?)
            }
            _ => None,
        });
    }
    let deliveries = crate::delivery::encode_outbox(ctx, &batch.deliveries)?;
    Ok(PreparedCommit {
        rows,
        audit,
        history_open,
        deliveries,
    })
}

fn commit_blocking(
    conn: &Connection,
    ctx: &Ctx,
    consumer: &str,
    offset: Option<LogOffset>,
    batch: &CuratedBatch,
    prepared: &PreparedCommit<'_>,
) -> Result<()> {
    let now = now_ms();
    // One statement per run of rows of the same object (looking it up by its SQL text for
    // every row would hash kilobytes of text per row).
    let mut current: Option<(&str, rusqlite::CachedStatement<'_>)> = None;
    for (object, row, reg, cells) in &prepared.rows {
        let object = *object;
        let failed = |e| {
            write_failed(object, &row.id, || {
                format!("upsert into table '{}'", reg.model.table)
            })(e)
        };
        if current.as_ref().is_none_or(|(o, _)| *o != object) {
            current = Some((
                object,
                conn.prepare_cached(&reg.sql.upsert).map_err(failed)?,
            ));
        }
        let (_, stmt) = current.as_mut().expect("set above");
        for (i, c) in cells.iter().enumerate() {
            stmt.raw_bind_parameter(i + 1, c).map_err(failed)?;
        }
        stmt.raw_execute().map_err(failed)?;
    }
    drop(current);
    for (step, open) in batch.history.iter().zip(&prepared.history_open) {
        history_step(conn, ctx, step, open.as_deref())?;
    }
    if !batch.audit.is_empty() {
        let last: Option<(i64, String)> = conn
            .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(db("read audit head"))?;
        let (mut seq, mut prev) = last.unwrap_or((0, wh::GENESIS_HASH.to_string()));
        let mut stmt = conn
            .prepare_cached(
                "INSERT INTO audit_log (seq, object, record_id, change_type, event_key, entry,
                     prev_hash, hash, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(db("prepare audit insert"))?;
        for (e, entry) in batch.audit.iter().zip(&prepared.audit) {
            seq += 1;
            let hash = wh::audit_hash(ctx, &prev, e, entry)?;
            stmt.execute(params![
                seq,
                e.object,
                e.record_id,
                e.change_type,
                e.event_key,
                entry,
                prev,
                hash,
                now
            ])
            .map_err(write_failed(&e.object, &e.record_id, || "audit entry"))?;
            prev = hash;
        }
    }
    if !prepared.deliveries.is_empty() {
        super::delivery::insert_outbox(conn, &prepared.deliveries)?;
    }
    if !batch.repairs.is_empty() {
        let mut stmt = conn
            .prepare_cached(
                "INSERT INTO repair_requests (object, record_ids, reason, event_key,
                     commit_timestamp_ms, status, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6)",
            )
            .map_err(db("prepare repair insert"))?;
        for r in &batch.repairs {
            let ids = serde_json::to_string(&r.record_ids).expect("strings serialise");
            stmt.execute(params![
                r.object,
                ids,
                r.reason,
                r.event_key,
                r.commit_timestamp_ms,
                now
            ])
            .map_err(write_failed(
                &r.object,
                r.record_ids.first().map_or("-", String::as_str),
                || "repair request",
            ))?;
        }
    }
    for id in &batch.repairs_done {
        let n = conn
            .prepare_cached(
                "UPDATE repair_requests SET status = 'done', done_at_ms = ?2 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, now]))
            .map_err(db("complete repair request"))?;
        if n == 0 {
            return Err(invalid(
                "commit curated",
                format!("repair request {id} does not exist; nothing of the batch was written"),
            ));
        }
    }
    for r in &batch.resyncs {
        insert_resync(conn, r, now)?;
    }
    insert_dead_letters(conn, ctx, &batch.dead_letters, false)?;
    super::quality::commit_quality(conn, ctx, batch, now)?;
    if let Some(p) = &batch.job_progress {
        super::jobs::progress(conn, p)?;
    }
    if let Some(offset) = offset {
        set_applied_offset_in(conn, consumer, offset)?;
    }
    super::lease::move_positions(conn, &batch.log_positions)?;
    Ok(())
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

fn history_reg<'c>(
    ctx: &'c Ctx,
    object: &str,
    id: &str,
    what: impl Fn() -> String,
) -> Result<&'c Arc<Registered>> {
    let reg = ctx
        .require("commit curated", object)
        .map_err(|e| wh_error(object, id, &what(), e))?;
    if reg.hist.is_none() {
        return Err(wh_error(
            object,
            id,
            &what(),
            invalid(
                "commit curated",
                format!("object '{object}' has no history table in its model"),
            ),
        ));
    }
    Ok(reg)
}

/// One SCD2 step; `open` carries the cells [`prepare_commit`] encoded for an `Open`.
fn history_step(
    conn: &Connection,
    ctx: &Ctx,
    step: &HistoryWrite,
    open: Option<&[Cell<'_>]>,
) -> Result<()> {
    match step {
        HistoryWrite::Close {
            object,
            id,
            version,
            valid_to_ms,
            end_change_type,
        } => {
            let what = || format!("history close of version {version}");
            let reg = history_reg(ctx, object, id, what)?;
            let cells = [
                Cell::Ts(*valid_to_ms),
                Cell::Text(Cow::Borrowed(end_change_type)),
                Cell::Text(Cow::Borrowed(id)),
                Cell::Int(*version),
            ];
            let n = exec_cells(conn, &reg.sql.hist_close, &cells)
                .map_err(write_failed(object, id, what))?;
            if n != 1 {
                return Err(wh_error(
                    object,
                    id,
                    &what(),
                    invalid("commit curated", "no such history version".into()),
                ));
            }
        }
        HistoryWrite::Open {
            object,
            id,
            version,
            ..
        } => {
            let what = || format!("history open of version {version}");
            let reg = history_reg(ctx, object, id, what)?;
            let cells = open.ok_or_else(|| {
                wh_error(
                    object,
                    id,
                    &what(),
                    invalid("commit curated", "history cells were not prepared".into()),
                )
            })?;
            exec_cells(conn, &reg.sql.hist_insert, cells)
                .map_err(write_failed(object, id, what))?;
        }
        HistoryWrite::Touch {
            object,
            id,
            version,
            meta,
        } => {
            let what = || format!("history touch of version {version}");
            let reg = history_reg(ctx, object, id, what)?;
            let mut cells = wh::history_meta_cells(meta);
            cells.push(Cell::Text(Cow::Borrowed(id)));
            cells.push(Cell::Int(*version));
            let n = exec_cells(conn, &reg.sql.hist_touch, &cells)
                .map_err(write_failed(object, id, what))?;
            if n != 1 {
                return Err(wh_error(
                    object,
                    id,
                    &what(),
                    invalid("commit curated", "no such history version".into()),
                ));
            }
        }
    }
    Ok(())
}

fn insert_resync(conn: &Connection, r: &ResyncRequest, now: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO resync_requests (object, channel, from_ms, reason, event_key, status,
             created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            r.object,
            r.channel,
            r.from_ms,
            r.reason,
            r.event_key,
            now
        ])
    })
    .map_err(db("insert re-sync request"))?;
    Ok(())
}

fn read_rows(
    conn: &Connection,
    sql: &str,
    ids: &[String],
    ncols: usize,
) -> Result<Vec<Vec<Cell<'static>>>> {
    let mut stmt = conn.prepare_cached(sql).map_err(db("prepare read"))?;
    for (i, id) in ids.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, id)
            .map_err(db("bind read"))?;
    }
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(db("read rows"))? {
        let cells = (0..ncols)
            .map(|i| read_cell(r, i))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db("read rows"))?;
        out.push(cells);
    }
    Ok(out)
}

/// Counts of a key rotation.
#[derive(Default)]
struct Resealed {
    values: u64,
    payloads: u64,
}

/// Which tables of a file [`rotate_blocking`] re-seals (dead letters always).
#[derive(Clone, Copy)]
struct RotateParts {
    /// Curated current and history tables, and the held changes of the quarantine.
    curated: bool,
    raw_log: bool,
}

fn rotate_blocking(
    conn: &mut Connection,
    ctx: &Ctx,
    k: &pii::Keyring,
    parts: RotateParts,
) -> Result<Resealed> {
    let mut out = Resealed::default();
    for reg in ctx.models.values().filter(|r| r.has_pii) {
        let object = &reg.model.object;
        if !parts.curated {
            rotate_raw_payloads(conn, k, object, &mut out)?;
            continue;
        }
        // Current table, then history, keyset-paginated, one transaction per chunk.
        let pii_cols: Vec<&wh::DataCol> = reg.pii_data().map(|(_, c)| c).collect();
        let list = pii_cols
            .iter()
            .map(|c| wh::q(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let t = wh::q(&reg.model.table);
        let select = format!(
            "SELECT \"id\", {list} FROM {t} WHERE \"id\" > ?1 ORDER BY \"id\" LIMIT {ROTATE_CHUNK}"
        );
        let mut after = String::new();
        loop {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db("begin rotate"))?;
            let rows = read_rows(
                &tx,
                &select,
                std::slice::from_ref(&after),
                1 + pii_cols.len(),
            )?;
            for r in &rows {
                let Cell::Text(id) = &r[0] else { continue };
                for (c, cell) in pii_cols.iter().zip(&r[1..]) {
                    if let Some(v) = wh::reseal_cell(k, object, c, cell.clone())? {
                        tx.execute(
                            &format!("UPDATE {t} SET {} = ?1 WHERE \"id\" = ?2", wh::q(&c.name)),
                            params![v, id],
                        )
                        .map_err(db("re-seal value"))?;
                        out.values += 1;
                    }
                }
            }
            tx.commit().map_err(db("commit rotate"))?;
            match rows.last().map(|r| &r[0]) {
                Some(Cell::Text(id)) if rows.len() as i64 == ROTATE_CHUNK => after = id.to_string(),
                _ => break,
            }
        }
        if let (Some(h), Some(_)) = (&reg.model.history, &reg.hist) {
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
                     WHERE (\"id\", \"_sf_version\") > (?1, ?2)
                     ORDER BY \"id\", \"_sf_version\" LIMIT {ROTATE_CHUNK}"
                );
                let (mut after_id, mut after_v) = (String::new(), i64::MIN);
                loop {
                    let tx = conn
                        .transaction_with_behavior(TransactionBehavior::Immediate)
                        .map_err(db("begin rotate"))?;
                    let mut rows = Vec::new();
                    {
                        let mut stmt = tx.prepare(&select).map_err(db("read history"))?;
                        let mut q = stmt
                            .query(params![after_id, after_v])
                            .map_err(db("read history"))?;
                        while let Some(r) = q.next().map_err(db("read history"))? {
                            let mut cells = Vec::new();
                            for i in 0..2 + tracked.len() {
                                cells.push(read_cell(r, i).map_err(db("read history"))?);
                            }
                            rows.push(cells);
                        }
                    }
                    for r in &rows {
                        let (Cell::Text(id), Cell::Int(v)) = (&r[0], &r[1]) else {
                            continue;
                        };
                        for (c, cell) in tracked.iter().zip(&r[2..]) {
                            if let Some(s) = wh::reseal_cell(k, object, c, cell.clone())? {
                                tx.execute(
                                    &format!(
                                        "UPDATE {ht} SET {} = ?1 WHERE \"id\" = ?2 AND \"_sf_version\" = ?3",
                                        wh::q(&c.name)
                                    ),
                                    params![s, id, v],
                                )
                                .map_err(db("re-seal history value"))?;
                                out.values += 1;
                            }
                        }
                    }
                    tx.commit().map_err(db("commit rotate"))?;
                    match rows.last().map(|r| (&r[0], &r[1])) {
                        Some((Cell::Text(id), Cell::Int(v)))
                            if rows.len() as i64 == ROTATE_CHUNK =>
                        {
                            after_id = id.to_string();
                            after_v = *v;
                        }
                        _ => break,
                    }
                }
            }
        }
        // Held changes live in the warehouse file, with the curated tables.
        rotate_held_changes(conn, k, object, &mut out)?;
        if parts.raw_log {
            rotate_raw_payloads(conn, k, object, &mut out)?;
        }
    }
    // Dead letters.
    let mut after = 0i64;
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("begin rotate"))?;
        let rows: Vec<(i64, String, Vec<u8>)> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT id, channel, payload FROM dead_letters WHERE id > ?1 ORDER BY id LIMIT ?2",
                )
                .map_err(db("read dead letters"))?;
            let rows = stmt
                .query_map(params![after, ROTATE_CHUNK], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(db("read dead letters"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(db("read dead letters"))?
        };
        for (id, channel, payload) in &rows {
            if let Some(p) = wh::reseal_bytes(k, &pii::dead_letter_aad(channel), payload)? {
                tx.execute(
                    "UPDATE dead_letters SET payload = ?1 WHERE id = ?2",
                    params![p, id],
                )
                .map_err(db("re-seal dead letter"))?;
                out.payloads += 1;
            }
        }
        tx.commit().map_err(db("commit rotate"))?;
        match rows.last() {
            Some((id, _, _)) if rows.len() as i64 == ROTATE_CHUNK => after = *id,
            _ => break,
        }
    }
    Ok(out)
}

/// Re-seals the raw payloads of `object` in the change log, one transaction per chunk.
fn rotate_raw_payloads(
    conn: &mut Connection,
    k: &pii::Keyring,
    object: &str,
    out: &mut Resealed,
) -> Result<()> {
    reseal_blobs(conn, k, object, SealedBlobs::RAW_PAYLOADS, out)
}

/// Re-seals the held changes of `object` in the quarantine (sealed like raw payloads).
fn rotate_held_changes(
    conn: &mut Connection,
    k: &pii::Keyring,
    object: &str,
    out: &mut Resealed,
) -> Result<()> {
    reseal_blobs(conn, k, object, SealedBlobs::HELD_CHANGES, out)
}

/// A column of blobs sealed with [`pii::raw_aad`] of their object.
struct SealedBlobs {
    table: &'static str,
    key: &'static str,
    object: &'static str,
    blob: &'static str,
    what: &'static str,
}

impl SealedBlobs {
    const RAW_PAYLOADS: SealedBlobs = SealedBlobs {
        table: "raw_changes",
        key: "log_offset",
        object: "entity",
        blob: "payload",
        what: "re-seal raw payload",
    };
    const HELD_CHANGES: SealedBlobs = SealedBlobs {
        table: "quarantine",
        key: "id",
        object: "object",
        blob: "change",
        what: "re-seal held change",
    };
}

/// Re-seals the blobs of `object` in `t` under the keyring's current key, keyset-paginated,
/// one transaction per chunk.
fn reseal_blobs(
    conn: &mut Connection,
    k: &pii::Keyring,
    object: &str,
    t: SealedBlobs,
    out: &mut Resealed,
) -> Result<()> {
    let SealedBlobs {
        table,
        key,
        object: object_col,
        blob,
        what,
    } = t;
    let select = format!(
        "SELECT {key}, {blob} FROM {table}
         WHERE {object_col} = ?1 AND {key} > ?2 AND {blob} IS NOT NULL ORDER BY {key} LIMIT ?3"
    );
    let update = format!("UPDATE {table} SET {blob} = ?1 WHERE {key} = ?2");
    let aad = pii::raw_aad(object);
    let mut after = 0i64;
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("begin rotate"))?;
        let rows: Vec<(i64, Vec<u8>)> = {
            let mut stmt = tx
                .prepare_cached(&select)
                .map_err(db("read sealed blobs"))?;
            let rows = stmt
                .query_map(params![object, after, ROTATE_CHUNK], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .map_err(db("read sealed blobs"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(db("read sealed blobs"))?
        };
        for (id, bytes) in &rows {
            if let Some(b) = wh::reseal_bytes(k, &aad, bytes)? {
                tx.execute(&update, params![b, id]).map_err(db(what))?;
                out.payloads += 1;
            }
        }
        tx.commit().map_err(db("commit rotate"))?;
        match rows.last() {
            Some((id, _)) if rows.len() as i64 == ROTATE_CHUNK => after = *id,
            _ => break,
        }
    }
    Ok(())
}

#[async_trait]
impl Warehouse for SqliteChangeLog {
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
        let reg = Registered::new(model.clone(), wh::Dialect::Sqlite);
        let m = model.clone();
        let change = self
            .blocking("ensure model", move |conn| {
                ensure_model_blocking(conn, &m, &reg)
            })
            .await?;
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
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids = ids.to_vec();
        // On the reader: the apply stage's own commits are complete before it loads again.
        self.blocking_on(&self.reader, "load current rows", move |conn| {
            let mut out = HashMap::with_capacity(ids.len());
            let mut padded: Vec<String> = Vec::new();
            for chunk in ids.chunks(IN_CHUNK) {
                // The list is padded (repeating its last id) to one of a few lengths, so the
                // reader prepares a handful of statements per object instead of one per batch
                // size (measured: preparing them was ~1 % of pipeline CPU under live load).
                let n = in_list_len(chunk.len());
                let chunk = if n == chunk.len() {
                    chunk
                } else {
                    padded.clear();
                    padded.extend_from_slice(chunk);
                    padded.resize(n, chunk[chunk.len() - 1].clone());
                    &padded[..]
                };
                let params: Vec<String> = (1..=n).map(|n| format!("?{n}")).collect();
                let sql = format!(
                    "{} WHERE \"id\" IN ({})",
                    reg.sql.select_current,
                    params.join(", ")
                );
                for cells in read_rows(conn, &sql, chunk, reg.cur.len())? {
                    let row = wh::decode_row(&ctx, &reg, cells)?;
                    out.insert(row.id.clone(), row);
                }
            }
            Ok(out)
        })
        .await
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
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let column = column.to_string();
        // On the reader, like load_current.
        self.blocking_on(&self.reader, "look up values", move |conn| {
            let mut out = Vec::new();
            for chunk in values.chunks(IN_CHUNK) {
                let sql = reg.ids_by_value_sql(wh::Dialect::Sqlite, &column, chunk.len());
                for cells in read_rows(conn, &sql, chunk, 2)? {
                    if let [Cell::Text(v), Cell::Text(id)] = &cells[..] {
                        out.push((v.to_string(), id.to_string()));
                    }
                }
            }
            out.sort_unstable();
            Ok(out)
        })
        .await
    }

    async fn read_current(&self, object: &str) -> Result<Vec<CurrentRow>> {
        let ctx = self.registry.ctx();
        let reg = Arc::clone(ctx.require("read current rows", object)?);
        self.blocking("read current rows", move |conn| {
            let sql = format!("{} ORDER BY \"id\"", reg.sql.select_current);
            read_rows(conn, &sql, &[], reg.cur.len())?
                .into_iter()
                .map(|cells| wh::decode_row(&ctx, &reg, cells))
                .collect()
        })
        .await
    }

    async fn read_history(&self, object: &str) -> Result<Vec<HistoryRow>> {
        let ctx = self.registry.ctx();
        let reg = Arc::clone(ctx.require("read history", object)?);
        let Some(ncols) = reg.hist.as_ref().map(Vec::len) else {
            return Ok(Vec::new());
        };
        self.blocking("read history", move |conn| {
            read_rows(conn, &reg.sql.hist_select, &[], ncols)?
                .into_iter()
                .map(|cells| wh::decode_history(&ctx, &reg, cells))
                .collect()
        })
        .await
    }

    async fn latest_history(
        &self,
        object: &str,
        ids: &[String],
    ) -> Result<HashMap<String, HistoryRow>> {
        let ctx = self.registry.ctx();
        let reg = Arc::clone(ctx.require("read history", object)?);
        let (Some(hist), Some(table)) = (reg.hist.as_ref(), reg.history_table()) else {
            return Ok(HashMap::new());
        };
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let (ncols, select) = (
            hist.len(),
            format!("SELECT {} FROM {}", wh::column_list(hist), wh::q(table)),
        );
        let ids = ids.to_vec();
        self.blocking_on(&self.reader, "read history", move |conn| {
            let mut out = HashMap::new();
            for chunk in ids.chunks(IN_CHUNK) {
                let params: Vec<String> = (1..=chunk.len()).map(|n| format!("?{n}")).collect();
                let sql = format!(
                    "{select} WHERE \"id\" IN ({}) ORDER BY \"id\", \"_sf_version\"",
                    params.join(", ")
                );
                for cells in read_rows(conn, &sql, chunk, ncols)? {
                    let h = wh::decode_history(&ctx, &reg, cells)?;
                    out.insert(h.id.clone(), h);
                }
            }
            Ok(out)
        })
        .await
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
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            // Run in place (other tasks move to other workers): no copy of the batch.
            return tokio::task::block_in_place(|| {
                let prepared = prepare_commit(&ctx, batch)?;
                let mut conn = self.conn.lock();
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(db("begin transaction"))?;
                commit_blocking(&tx, &ctx, consumer, offset, batch, &prepared)?;
                tx.commit().map_err(db("commit transaction"))
            });
        }
        let consumer = consumer.to_string();
        let batch = batch.clone();
        self.transaction(move |tx| {
            let prepared = prepare_commit(&ctx, &batch)?;
            commit_blocking(tx.connection(), &ctx, &consumer, offset, &batch, &prepared)
        })
        .await
    }

    async fn append_with_dead_letters(
        &self,
        channel: &str,
        changes: &[RawChange],
        dead_letters: &[DeadLetter],
        checkpoint: &ReplayId,
    ) -> Result<AppendOutcome> {
        self.append(channel, changes, dead_letters, checkpoint)
            .await
    }

    async fn pending_repairs(&self, limit: usize) -> Result<Vec<StoredRepair>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.blocking("read repair requests", move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, object, record_ids, reason, event_key, commit_timestamp_ms,
                         created_at_ms
                     FROM repair_requests WHERE status = 'pending' ORDER BY id LIMIT ?1",
                )
                .map_err(db("read repair requests"))?;
            let rows = stmt
                .query_map([limit], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, i64>(6)?,
                    ))
                })
                .map_err(db("read repair requests"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db("read repair requests"))?;
            rows.into_iter()
                .map(|(id, object, ids, reason, event_key, ts, created)| {
                    let record_ids =
                        serde_json::from_str(&ids).map_err(|e| StoreError::Corrupt {
                            backend: BACKEND,
                            table: "repair_requests",
                            offset: id,
                            reason: format!("record_ids is not a JSON list: {e}"),
                        })?;
                    Ok(StoredRepair {
                        id,
                        request: RepairRequest {
                            object,
                            record_ids,
                            reason,
                            event_key,
                            commit_timestamp_ms: ts,
                        },
                        created_at_ms: created,
                    })
                })
                .collect()
        })
        .await
    }

    async fn resync_requests(&self) -> Result<Vec<StoredResync>> {
        self.blocking("read re-sync requests", |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, object, channel, from_ms, reason, event_key, status, created_at_ms
                     FROM resync_requests ORDER BY id",
                )
                .map_err(db("read re-sync requests"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(StoredResync {
                        id: r.get(0)?,
                        request: ResyncRequest {
                            object: r.get(1)?,
                            channel: r.get(2)?,
                            from_ms: r.get(3)?,
                            reason: r.get(4)?,
                            event_key: r.get(5)?,
                        },
                        status: r.get(6)?,
                        created_at_ms: r.get(7)?,
                    })
                })
                .map_err(db("read re-sync requests"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db("read re-sync requests"))
        })
        .await
    }

    async fn add_resync(&self, request: &ResyncRequest) -> Result<()> {
        let r = request.clone();
        self.transaction(move |tx| insert_resync(tx.connection(), &r, now_ms()))
            .await
    }

    async fn add_sync_job(&self, job: &crate::jobs::NewSyncJob) -> Result<i64> {
        let job = job.clone();
        self.transaction(move |tx| super::jobs::insert(tx.connection(), &job, now_ms()))
            .await
    }

    async fn sync_jobs(
        &self,
        filter: &crate::jobs::SyncJobFilter,
    ) -> Result<Vec<crate::jobs::SyncJob>> {
        let filter = filter.clone();
        self.blocking("read sync jobs", move |conn| {
            super::jobs::list(conn, &filter)
        })
        .await
    }

    async fn sync_job(&self, id: i64) -> Result<Option<crate::jobs::SyncJob>> {
        self.blocking("read sync job", move |conn| super::jobs::get(conn, id))
            .await
    }

    async fn patch_sync_job(&self, id: i64, patch: &crate::jobs::SyncJobPatch) -> Result<()> {
        let patch = patch.clone();
        self.transaction(move |tx| super::jobs::patch(tx.connection(), id, &patch, now_ms()))
            .await
    }

    async fn retry_sync_job(&self, id: i64, by: &str) -> Result<crate::jobs::SyncJob> {
        let by = by.to_string();
        self.transaction(move |tx| super::jobs::retry(tx.connection(), id, &by, now_ms()))
            .await
    }

    async fn set_sync_job_slices(
        &self,
        id: i64,
        slices: &[crate::jobs::SyncJobSlice],
        reset_position: bool,
    ) -> Result<()> {
        let slices = slices.to_vec();
        self.transaction(move |tx| {
            super::jobs::set_slices(tx.connection(), id, &slices, reset_position)
        })
        .await
    }

    async fn schedule_resyncs(&self, requested_by: &str) -> Result<Vec<i64>> {
        let by = requested_by.to_string();
        self.transaction(move |tx| super::jobs::schedule_resyncs(tx.connection(), &by, now_ms()))
            .await
    }

    async fn row_keys(
        &self,
        object: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::jobs::RowKey>> {
        let ctx = self.registry.ctx();
        let table = ctx.require("read row keys", object)?.model.table.clone();
        let after = after.map(str::to_string);
        self.blocking_on(&self.reader, "read row keys", move |conn| {
            super::jobs::row_keys(conn, &table, after.as_deref(), limit)
        })
        .await
    }

    async fn dead_letter_count(&self) -> Result<u64> {
        self.blocking("count dead letters", |conn| {
            conn.query_row("SELECT COUNT(*) FROM dead_letters", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n.max(0) as u64)
            .map_err(db("count dead letters"))
        })
        .await
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<StoredDeadLetter>> {
        let filter = filter.clone();
        self.blocking("read dead letters", move |conn| {
            let mut sql = String::from(
                "SELECT id, channel, replay_id, schema_id, stage, error, object, payload,
                     created_at_ms FROM dead_letters WHERE 1 = 1",
            );
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            if !filter.ids.is_empty() {
                let marks: Vec<String> = filter
                    .ids
                    .iter()
                    .map(|id| {
                        args.push((*id).into());
                        format!("?{}", args.len())
                    })
                    .collect();
                sql.push_str(&format!(" AND id IN ({})", marks.join(", ")));
            }
            if let Some(o) = &filter.object {
                args.push(o.clone().into());
                sql.push_str(&format!(" AND object = ?{}", args.len()));
            }
            if let Some(after) = filter.after {
                args.push(after.into());
                sql.push_str(&format!(" AND id > ?{}", args.len()));
            }
            sql.push_str(if filter.newest_first {
                " ORDER BY id DESC"
            } else {
                " ORDER BY id"
            });
            if filter.limit > 0 {
                args.push((filter.limit as i64).into());
                sql.push_str(&format!(" LIMIT ?{}", args.len()));
            }
            let mut stmt = conn.prepare(&sql).map_err(db("read dead letters"))?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args), |r| {
                    let payload: Vec<u8> = r.get(7)?;
                    Ok(StoredDeadLetter::from_parts(
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        &payload,
                        r.get(8)?,
                    ))
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(db("read dead letters"))?;
            Ok(rows)
        })
        .await
    }

    async fn put_schema(&self, schema_id: &str, json: &str) -> Result<()> {
        let (id, json) = (schema_id.to_string(), json.to_string());
        self.blocking("store schema", move |conn| {
            conn.execute(
                "INSERT INTO schemas (schema_id, json, stored_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (schema_id) DO NOTHING",
                params![id, json, now_ms()],
            )
            .map_err(db("store schema"))?;
            Ok(())
        })
        .await
    }

    async fn schema(&self, schema_id: &str) -> Result<Option<String>> {
        let id = schema_id.to_string();
        self.blocking("read schema", move |conn| {
            conn.query_row("SELECT json FROM schemas WHERE schema_id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db("read schema"))
        })
        .await
    }

    async fn verify_audit(&self) -> Result<AuditVerification> {
        self.blocking("verify audit", |conn| {
            let anchor = super::retention::anchor_in(conn)?;
            let mut stmt = conn
                .prepare(
                    "SELECT seq, object, record_id, change_type, event_key, entry, prev_hash, hash
                     FROM audit_log WHERE seq > ?1 ORDER BY seq",
                )
                .map_err(db("read audit"))?;
            let mut rows = stmt
                .query([anchor.as_ref().map_or(i64::MIN, |a| a.seq)])
                .map_err(db("read audit"))?;
            let mut v = wh::AuditVerifier::after_anchor(anchor.as_ref());
            while let Some(r) = rows.next().map_err(db("read audit"))? {
                let get = db("read audit");
                v.push(wh::StoredAudit {
                    seq: r.get(0).map_err(&get)?,
                    object: r.get(1).map_err(&get)?,
                    record_id: r.get(2).map_err(&get)?,
                    change_type: r.get(3).map_err(&get)?,
                    event_key: r.get(4).map_err(&get)?,
                    entry: r.get(5).map_err(&get)?,
                    prev_hash: r.get(6).map_err(&get)?,
                    hash: r.get(7).map_err(&get)?,
                });
            }
            drop(rows);
            drop(stmt);
            let mut out = v.finish();
            super::operator::verify(conn, &mut out)?;
            Ok(out)
        })
        .await
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
        let new_key_id = k.current_key_id().to_string();
        let split = self.split();
        let parts = RotateParts {
            curated: true,
            raw_log: !split,
        };
        let (c, kk) = (ctx.clone(), Arc::clone(&k));
        let mut n = self
            .blocking("rotate keys", move |conn| {
                rotate_blocking(conn, &c, &kk, parts)
            })
            .await?;
        if split {
            let parts = RotateParts {
                curated: false,
                raw_log: true,
            };
            let more = self
                .blocking_on(&self.log, "rotate keys", move |conn| {
                    rotate_blocking(conn, &ctx, &k, parts)
                })
                .await?;
            n.values += more.values;
            n.payloads += more.payloads;
        }
        tracing::info!(
            key_id = %new_key_id,
            values = n.values,
            payloads = n.payloads,
            "Re-sealed PII under the current key."
        );
        Ok(RotationReport {
            values_resealed: n.values,
            raw_payloads_resealed: n.payloads,
            new_key_id,
        })
    }

    async fn start_run(&self, run_id: &str, kind: &str, detail: &str) -> Result<()> {
        let (id, kind, detail) = (run_id.to_string(), kind.to_string(), detail.to_string());
        self.blocking("start run", move |conn| {
            conn.execute(
                "INSERT INTO runs (run_id, kind, status, started_at_ms, detail)
                 VALUES (?1, ?2, 'running', ?3, ?4)",
                params![id, kind, now_ms(), detail],
            )
            .map_err(db("start run"))?;
            Ok(())
        })
        .await
    }

    async fn finish_run(&self, run_id: &str, status: &str, detail: &str) -> Result<()> {
        let (id, status, detail) = (run_id.to_string(), status.to_string(), detail.to_string());
        self.blocking("finish run", move |conn| {
            let n = conn
                .execute(
                    "UPDATE runs SET status = ?2, ended_at_ms = ?3, detail = ?4 WHERE run_id = ?1",
                    params![id, status, now_ms(), detail],
                )
                .map_err(db("finish run"))?;
            if n == 0 {
                return Err(invalid(
                    "finish run",
                    format!("run '{id}' was never started"),
                ));
            }
            Ok(())
        })
        .await
    }

    async fn runs(&self, limit: usize) -> Result<Vec<RunRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.blocking("read runs", move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT run_id, kind, status, started_at_ms, ended_at_ms, detail FROM runs
                     ORDER BY started_at_ms DESC, rowid DESC LIMIT ?1",
                )
                .map_err(db("read runs"))?;
            let rows = stmt
                .query_map([limit], |r| {
                    Ok(RunRecord {
                        run_id: r.get(0)?,
                        kind: r.get(1)?,
                        status: r.get(2)?,
                        started_at_ms: r.get(3)?,
                        ended_at_ms: r.get(4)?,
                        detail: r.get(5)?,
                    })
                })
                .map_err(db("read runs"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db("read runs"))
        })
        .await
    }

    async fn quarantine_list(&self, filter: &QuarantineFilter) -> Result<Vec<QuarantineRecord>> {
        let ctx = self.registry.ctx();
        let f = filter.clone();
        self.blocking_on(&self.reader, "read quarantine", move |conn| {
            super::quality::list(conn, &ctx, &f)
        })
        .await
    }

    async fn quarantine_open_count(&self) -> Result<u64> {
        self.blocking_on(&self.reader, "count quarantine", |conn| {
            super::quality::open_count(conn)
        })
        .await
    }

    async fn quarantine_act(
        &self,
        ids: &[i64],
        action: QuarantineAction,
        by: &str,
        note: &str,
    ) -> Result<Vec<(i64, QuarantineActOutcome)>> {
        let (ids, by, note) = (ids.to_vec(), by.to_string(), note.to_string());
        self.blocking("quarantine action", move |conn| {
            super::quality::act(conn, &ids, action, &by, &note, now_ms())
        })
        .await
    }

    async fn quarantine_mark_alerted(&self, ids: &[i64]) -> Result<()> {
        let ids = ids.to_vec();
        self.transaction(move |tx| super::quality::mark_alerted(tx.connection(), &ids, now_ms()))
            .await
    }

    async fn dq_counts(&self, run_id: Option<&str>) -> Result<Vec<DqCount>> {
        let run_id = run_id.map(str::to_string);
        self.blocking_on(&self.reader, "read failure counts", move |conn| {
            super::quality::counts(conn, run_id.as_deref())
        })
        .await
    }

    async fn dq_samples(&self, run_id: Option<&str>, limit: usize) -> Result<Vec<DqFailure>> {
        let run_id = run_id.map(str::to_string);
        self.blocking_on(&self.reader, "read failure samples", move |conn| {
            super::quality::samples(conn, run_id.as_deref(), limit)
        })
        .await
    }

    async fn acquire_apply_lock(&self) -> Result<()> {
        let mut guard = self.apply_lock.lock();
        if guard.is_some() {
            return Ok(());
        }
        let mut path = self.path.clone().into_os_string();
        path.push(".apply-lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::Database {
                backend: BACKEND,
                op: "open apply lock file",
                class: sfsync_core::ErrorClass::Retry,
                source: Box::new(e),
            })?;
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a file descriptor we own; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                return Err(StoreError::ApplyLockHeld {
                    backend: BACKEND,
                    database: self.path.display().to_string(),
                });
            }
            return Err(StoreError::Database {
                backend: BACKEND,
                op: "take apply lock",
                class: sfsync_core::ErrorClass::Retry,
                source: Box::new(err),
            });
        }
        *guard = Some(file);
        Ok(())
    }
}
