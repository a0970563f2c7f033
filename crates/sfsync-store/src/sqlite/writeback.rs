//! The outbox and write ledger on SQLite (see [`crate::writeback`]). Every write method runs in
//! one `BEGIN IMMEDIATE` transaction, so claims from several connections or processes are
//! serialised and never hand out the same write twice.

use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use super::{SqliteChangeLog, BACKEND};
use crate::error::{Result, StoreError};
use crate::now_ms;
use crate::warehouse::Ctx;
use crate::writeback::*;

fn db(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::sqlite(op, e)
}

fn invalid(op: &'static str, reason: String) -> StoreError {
    StoreError::InvalidInput {
        backend: BACKEND,
        op,
        reason,
    }
}

const COLUMNS: &str = "id, source_system, idempotency_key, origin, outbox_id, object,
    external_id_field, external_id, record_id, fields, seen_version_ms, state, attempts,
    last_error, reason, claimed_by, echo_event_key, created_at_ms, updated_at_ms";

fn write_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(LedgerWrite, String, String)> {
    Ok((
        LedgerWrite {
            id: r.get(0)?,
            source_system: r.get(1)?,
            idempotency_key: r.get(2)?,
            origin: WriteOrigin::Api,
            outbox_id: r.get(4)?,
            object: r.get(5)?,
            external_id_field: r.get(6)?,
            external_id: r.get(7)?,
            record_id: r.get(8)?,
            fields: r.get(9)?,
            seen_version_ms: r.get(10)?,
            state: WriteState::Pending,
            attempts: r.get(12)?,
            last_error: r.get(13)?,
            reason: r.get(14)?,
            claimed_by: r.get(15)?,
            echo_event_key: r.get(16)?,
            created_at_ms: r.get(17)?,
            updated_at_ms: r.get(18)?,
        },
        r.get(3)?,
        r.get(11)?,
    ))
}

fn finish((mut w, origin, state): (LedgerWrite, String, String)) -> Result<LedgerWrite> {
    w.origin = WriteOrigin::parse(&origin).ok_or_else(|| {
        invalid(
            "read writes",
            format!("write {} has an unknown origin '{origin}'", w.id),
        )
    })?;
    w.state = WriteState::parse(&state).ok_or_else(|| {
        invalid(
            "read writes",
            format!("write {} has an unknown state '{state}'", w.id),
        )
    })?;
    Ok(w)
}

fn query(conn: &Connection, sql: &str, args: Vec<SqlValue>) -> Result<Vec<LedgerWrite>> {
    let mut stmt = conn.prepare_cached(sql).map_err(db("read writes"))?;
    let rows = stmt
        .query_map(params_from_iter(args), write_from_row)
        .map_err(db("read writes"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db("read writes"))?;
    rows.into_iter().map(finish).collect()
}

fn get(conn: &Connection, id: i64) -> Result<Option<LedgerWrite>> {
    let row = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM writes WHERE id = ?1"),
            [id],
            write_from_row,
        )
        .optional()
        .map_err(db("read write"))?;
    row.map(finish).transpose()
}

fn existing(conn: &Connection, source: &str, key: &str) -> Result<Option<i64>> {
    conn.prepare_cached("SELECT id FROM writes WHERE source_system = ?1 AND idempotency_key = ?2")
        .and_then(|mut s| s.query_row(params![source, key], |r| r.get(0)).optional())
        .map_err(db("find write by idempotency key"))
}

fn log_transition(
    conn: &Connection,
    id: i64,
    from: Option<WriteState>,
    to: WriteState,
    at: i64,
    detail: Option<&str>,
) -> Result<()> {
    log_action(conn, id, from, to, at, detail, None, None)
}

/// Records a transition, with the person who made it and why when one did.
#[allow(clippy::too_many_arguments)]
fn log_action(
    conn: &Connection,
    id: i64,
    from: Option<WriteState>,
    to: WriteState,
    at: i64,
    detail: Option<&str>,
    actor: Option<&str>,
    note: Option<&str>,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO write_transitions (write_id, seq, from_state, to_state, at_ms, detail,
             actor, note)
         VALUES (?1, (SELECT coalesce(max(seq), 0) + 1 FROM write_transitions WHERE write_id = ?1),
             ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            from.map(|f| f.as_str()),
            to.as_str(),
            at,
            detail,
            actor,
            note
        ])
    })
    .map_err(db("record write transition"))?;
    Ok(())
}

/// Stores a write in `state` (pending, or rejected with `reason`) and logs its first entry.
#[allow(clippy::too_many_arguments)]
fn insert(
    conn: &Connection,
    ctx: &Ctx,
    w: &NewWrite,
    origin: WriteOrigin,
    outbox_id: Option<i64>,
    now: i64,
) -> Result<i64> {
    let (xf, xv, rid) = match &w.target {
        WriteTarget::RecordId(id) => (None, None, Some(id.as_str())),
        WriteTarget::ExternalId { field, value } => {
            (Some(field.as_str()), Some(value.as_str()), None)
        }
    };
    let fields = ctx.seal_write_fields(
        &w.object,
        &serde_json::Value::Object(w.fields.clone()).to_string(),
    )?;
    conn.prepare_cached(
        "INSERT INTO writes (source_system, idempotency_key, origin, outbox_id, object,
             external_id_field, external_id, record_id, fields, seen_version_ms, state,
             created_at_ms, updated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending', ?11, ?11)",
    )
    .and_then(|mut s| {
        s.execute(params![
            w.source_system,
            w.idempotency_key,
            origin.as_str(),
            outbox_id,
            w.object,
            xf,
            xv,
            rid,
            fields,
            w.seen_version_ms,
            now
        ])
    })
    .map_err(db("store write"))?;
    let id = conn.last_insert_rowid();
    log_transition(conn, id, None, WriteState::Pending, now, None)?;
    Ok(id)
}

fn insert_rejected(
    conn: &Connection,
    ctx: &Ctx,
    row: &OutboxRow,
    reason: &str,
    now: i64,
) -> Result<i64> {
    let object = row.object.clone().unwrap_or_default();
    let fields = ctx.seal_write_fields(&object, row.fields.as_deref().unwrap_or_default())?;
    conn.prepare_cached(
        "INSERT INTO writes (source_system, idempotency_key, origin, outbox_id, object,
             external_id_field, external_id, record_id, fields, seen_version_ms, state, reason,
             created_at_ms, updated_at_ms)
         VALUES (?1, ?2, 'outbox', ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'rejected', ?10, ?11, ?11)",
    )
    .and_then(|mut s| {
        s.execute(params![
            row.source_system,
            row.idempotency_key,
            row.id,
            object,
            row.external_id_field,
            row.external_id,
            row.record_id,
            fields,
            row.seen_version_ms,
            reason,
            now
        ])
    })
    .map_err(db("store rejected write"))?;
    let id = conn.last_insert_rowid();
    log_transition(conn, id, None, WriteState::Rejected, now, Some(reason))?;
    Ok(id)
}

pub(super) fn submit(
    conn: &Connection,
    ctx: &Ctx,
    writes: &[NewWrite],
    now: i64,
) -> Result<Vec<SubmitOutcome>> {
    let mut out = Vec::with_capacity(writes.len());
    for w in writes {
        if let Err(reason) = validate_new_write(w) {
            out.push(SubmitOutcome::Rejected { reason });
            continue;
        }
        if let Some(id) = existing(conn, &w.source_system, &w.idempotency_key)? {
            out.push(SubmitOutcome::Duplicate { id });
            continue;
        }
        let id = insert(conn, ctx, w, WriteOrigin::Api, None, now)?;
        out.push(SubmitOutcome::Accepted { id });
    }
    Ok(out)
}

pub(super) fn ingest(conn: &Connection, ctx: &Ctx, limit: usize, now: i64) -> Result<OutboxIngest> {
    let rows: Vec<OutboxRow> = conn
        .prepare_cached(
            "SELECT id, source_system, idempotency_key, object, external_id_field, external_id,
                 record_id, fields, seen_version_ms
             FROM outbox WHERE ingested_at_ms IS NULL ORDER BY id LIMIT ?1",
        )
        .and_then(|mut s| {
            s.query_map([limit.max(1) as i64], |r| {
                Ok(OutboxRow {
                    id: r.get(0)?,
                    source_system: r.get(1)?,
                    idempotency_key: r.get(2)?,
                    object: r.get(3)?,
                    external_id_field: r.get(4)?,
                    external_id: r.get(5)?,
                    record_id: r.get(6)?,
                    fields: r.get(7)?,
                    seen_version_ms: r.get(8)?,
                })
            })?
            .collect()
        })
        .map_err(db("read outbox"))?;
    let mut report = OutboxIngest::default();
    for row in rows {
        let id = if let Some(id) = existing(conn, &row.source_system, &row.idempotency_key)? {
            report.duplicates += 1;
            id
        } else {
            match validate_outbox_row(&row) {
                Ok(w) => {
                    report.accepted += 1;
                    insert(conn, ctx, &w, WriteOrigin::Outbox, Some(row.id), now)?
                }
                Err(reason) => {
                    report.rejected += 1;
                    tracing::warn!(outbox_id = row.id, %reason, "Rejected an outbox row.");
                    insert_rejected(conn, ctx, &row, &reason, now)?
                }
            }
        };
        // With a keyring the ledger holds the fields sealed: no plaintext copy stays behind.
        let clear = ctx.keyring.is_some();
        conn.prepare_cached(
            "UPDATE outbox SET ingested_at_ms = ?2, write_id = ?3,
                 fields = CASE WHEN ?4 THEN NULL ELSE fields END
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![row.id, now, id, clear]))
        .map_err(db("mark outbox row ingested"))?;
    }
    Ok(report)
}

pub(super) fn claim(
    conn: &Connection,
    claimer: &str,
    limit: usize,
    now: i64,
) -> Result<Vec<LedgerWrite>> {
    if claimer.is_empty() {
        return Err(invalid("claim writes", "the claimer must be named".into()));
    }
    let ids: Vec<i64> = conn
        .prepare_cached(
            "SELECT id FROM writes WHERE state = 'pending'
             ORDER BY object, coalesce(record_id, external_id_field || '=' || external_id), id
             LIMIT ?1",
        )
        .and_then(|mut s| s.query_map([limit as i64], |r| r.get(0))?.collect())
        .map_err(db("claim writes"))?;
    mark_sent(conn, &ids, claimer, now)
}

/// The pending writes among the oldest `cap`, by group (see [`WriteLedger::pending_groups`]).
pub(super) fn pending_groups(
    conn: &Connection,
    cap: usize,
    due_at: i64,
) -> Result<Vec<PendingGroup>> {
    conn.prepare_cached(
        "SELECT object, ext, count(*), sum(created_at_ms <= ?2), min(created_at_ms) FROM (
             SELECT id, object, CASE WHEN record_id IS NULL THEN external_id_field END AS ext,
                 created_at_ms
             FROM writes WHERE state = 'pending' ORDER BY id LIMIT ?1)
         GROUP BY object, ext ORDER BY min(id)",
    )
    .and_then(|mut s| {
        s.query_map(params![cap as i64, due_at], |r| {
            Ok(PendingGroup {
                group: WriteGroup {
                    object: r.get(0)?,
                    external_id_field: r.get(1)?,
                },
                count: r.get::<_, i64>(2)? as usize,
                due: r.get::<_, i64>(3)? as usize,
                oldest_created_ms: r.get(4)?,
            })
        })?
        .collect()
    })
    .map_err(db("count pending writes"))
}

/// Claims up to `limit` pending writes of one group, oldest first, one per record.
pub(super) fn claim_group(
    conn: &Connection,
    claimer: &str,
    group: &WriteGroup,
    limit: usize,
    now: i64,
) -> Result<Vec<LedgerWrite>> {
    if claimer.is_empty() {
        return Err(invalid("claim writes", "the claimer must be named".into()));
    }
    // Scanned in acceptance order a bounded window past the limit; a record already taken
    // leaves its later writes pending.
    let window = (limit as i64).saturating_mul(4).max(64);
    let rows: Vec<(i64, String)> = conn
        .prepare_cached(
            "SELECT id, coalesce(record_id, external_id_field || '=' || external_id, '')
             FROM writes
             WHERE state = 'pending' AND object = ?1
               AND CASE WHEN record_id IS NULL THEN external_id_field END IS ?2
             ORDER BY id LIMIT ?3",
        )
        .and_then(|mut s| {
            s.query_map(
                params![group.object, group.external_id_field, window],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .collect()
        })
        .map_err(db("claim writes"))?;
    let ids = crate::writeback::one_per_record(rows, limit);
    mark_sent(conn, &ids, claimer, now)
}

/// Moves the writes to `sent` for `claimer` and returns them in the given order.
fn mark_sent(conn: &Connection, ids: &[i64], claimer: &str, now: i64) -> Result<Vec<LedgerWrite>> {
    for id in ids {
        conn.prepare_cached(
            "UPDATE writes SET state = 'sent', attempts = attempts + 1, claimed_by = ?2,
                 updated_at_ms = ?3 WHERE id = ?1 AND state = 'pending'",
        )
        .and_then(|mut s| s.execute(params![id, claimer, now]))
        .map_err(db("claim writes"))?;
        log_transition(
            conn,
            *id,
            Some(WriteState::Pending),
            WriteState::Sent,
            now,
            Some(claimer),
        )?;
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.extend(get(conn, *id)?);
    }
    Ok(out)
}

pub(super) fn record(
    conn: &Connection,
    ctx: &Ctx,
    outcomes: &[(i64, WriteOutcome)],
    now: i64,
) -> Result<()> {
    for (id, outcome) in outcomes {
        let found: Option<(String, String)> = conn
            .prepare_cached("SELECT state, object FROM writes WHERE id = ?1")
            .and_then(|mut s| s.query_row([id], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(db("record write outcome"))?;
        let Some((from, object)) = found else {
            return Err(invalid(
                "record write outcome",
                format!("write {id} does not exist"),
            ));
        };
        let from = WriteState::parse(&from).ok_or_else(|| {
            invalid(
                "record write outcome",
                format!("write {id} has an unknown state '{from}'"),
            )
        })?;
        if !outcome.allowed_from(from) {
            return Err(illegal(*id, from, outcome));
        }
        let to = outcome.target().as_str();
        let detail = ctx.outcome_text(&object, outcome)?;
        let detail = detail.as_str();
        let sql = match outcome {
            WriteOutcome::Applied { .. } => {
                "UPDATE writes SET state = ?2, record_id = ?3, updated_at_ms = ?4 WHERE id = ?1"
            }
            WriteOutcome::Retry { .. } | WriteOutcome::Failed { .. } => {
                "UPDATE writes SET state = ?2, last_error = ?3, updated_at_ms = ?4 WHERE id = ?1"
            }
            WriteOutcome::Conflict { .. } | WriteOutcome::Rejected { .. } => {
                "UPDATE writes SET state = ?2, reason = ?3, updated_at_ms = ?4 WHERE id = ?1"
            }
            WriteOutcome::Confirmed { .. } => {
                "UPDATE writes SET state = ?2, echo_event_key = ?3, updated_at_ms = ?4 WHERE id = ?1"
            }
            // The note is kept in the transition only.
            WriteOutcome::Requeue { .. } => {
                "UPDATE writes SET state = ?2, updated_at_ms = ?3 WHERE id = ?1"
            }
        };
        let done = if matches!(outcome, WriteOutcome::Requeue { .. }) {
            conn.prepare_cached(sql)
                .and_then(|mut s| s.execute(params![id, to, now]))
        } else {
            conn.prepare_cached(sql)
                .and_then(|mut s| s.execute(params![id, to, detail, now]))
        };
        done.map_err(db("record write outcome"))?;
        log_transition(conn, *id, Some(from), outcome.target(), now, Some(detail))?;
    }
    Ok(())
}

pub(super) fn illegal(id: i64, from: WriteState, outcome: &WriteOutcome) -> StoreError {
    StoreError::InvalidInput {
        backend: BACKEND,
        op: "record write outcome",
        reason: format!(
            "write {id} cannot go from {} to {} ({outcome:?}); nothing was recorded",
            from.as_str(),
            outcome.target().as_str()
        ),
    }
}

pub(super) fn transitions(conn: &Connection, id: i64) -> Result<Vec<WriteTransition>> {
    type Row = (
        Option<String>,
        String,
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = conn
        .prepare_cached(
            "SELECT from_state, to_state, at_ms, detail, actor, note FROM write_transitions
             WHERE write_id = ?1 ORDER BY seq",
        )
        .and_then(|mut s| {
            s.query_map([id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect()
        })
        .map_err(db("read write transitions"))?;
    let state = |s: &str| {
        WriteState::parse(s).ok_or_else(|| {
            invalid(
                "read write transitions",
                format!("write {id} has a transition to an unknown state '{s}'"),
            )
        })
    };
    rows.into_iter()
        .map(|(f, t, at_ms, detail, actor, note)| {
            Ok(WriteTransition {
                from: f.as_deref().map(state).transpose()?,
                to: state(&t)?,
                at_ms,
                detail,
                actor,
                note,
            })
        })
        .collect()
}

pub(super) fn list(conn: &Connection, filter: &WriteFilter) -> Result<Vec<LedgerWrite>> {
    let mut sql = format!("SELECT {COLUMNS} FROM writes WHERE 1 = 1");
    let mut args: Vec<SqlValue> = Vec::new();
    if !filter.states.is_empty() {
        let marks: Vec<String> = filter
            .states
            .iter()
            .map(|s| {
                args.push(SqlValue::Text(s.as_str().into()));
                format!("?{}", args.len())
            })
            .collect();
        sql.push_str(&format!(" AND state IN ({})", marks.join(", ")));
    }
    if let Some(o) = &filter.object {
        args.push(SqlValue::Text(o.clone()));
        sql.push_str(&format!(" AND object = ?{}", args.len()));
    }
    if let Some(s) = &filter.source_system {
        args.push(SqlValue::Text(s.clone()));
        sql.push_str(&format!(" AND source_system = ?{}", args.len()));
    }
    if !filter.record_ids.is_empty() {
        let marks: Vec<String> = filter
            .record_ids
            .iter()
            .map(|r| {
                args.push(SqlValue::Text(r.clone()));
                format!("?{}", args.len())
            })
            .collect();
        sql.push_str(&format!(" AND record_id IN ({})", marks.join(", ")));
    }
    sql.push_str(if filter.newest_first {
        " ORDER BY id DESC"
    } else {
        " ORDER BY id"
    });
    args.push(SqlValue::Integer(filter.limit.max(1) as i64));
    sql.push_str(&format!(" LIMIT ?{}", args.len()));
    query(conn, &sql, args)
}

pub(super) fn echo(
    conn: &Connection,
    object: &str,
    record_id: &str,
) -> Result<Option<LedgerWrite>> {
    let found = query(
        conn,
        &format!(
            "SELECT {COLUMNS} FROM writes WHERE object = ?1 AND record_id = ?2
                 AND state = 'applied' ORDER BY updated_at_ms, id LIMIT 1"
        ),
        vec![
            SqlValue::Text(object.into()),
            SqlValue::Text(record_id.into()),
        ],
    )?;
    Ok(found.into_iter().next())
}

pub(super) fn resolve(
    conn: &Connection,
    ctx: &Ctx,
    id: i64,
    resolution: &Resolution,
    actor: &str,
    note: &str,
    now: i64,
) -> Result<LedgerWrite> {
    const OP: &str = "resolve write conflict";
    let Some(w) = get(conn, id)? else {
        return Err(invalid(OP, format!("write {id} does not exist")));
    };
    let w = ctx.open_writes(vec![w])?.remove(0);
    let plan = plan_resolution(&w, resolution, actor, note).map_err(|r| invalid(OP, r))?;
    let fields = plan
        .fields
        .as_deref()
        .map(|f| ctx.seal_write_fields(&w.object, f))
        .transpose()?;
    conn.prepare_cached(
        "UPDATE writes SET state = ?2, fields = coalesce(?3, fields),
             seen_version_ms = coalesce(?4, seen_version_ms), reason = coalesce(?5, reason),
             updated_at_ms = ?6
         WHERE id = ?1 AND state = 'conflict'",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            plan.to.as_str(),
            fields,
            plan.seen_version_ms,
            plan.reason,
            now
        ])
    })
    .map_err(db(OP))?;
    log_action(
        conn,
        id,
        Some(WriteState::Conflict),
        plan.to,
        now,
        Some(&plan.detail),
        Some(actor),
        stored_note(note),
    )?;
    get(conn, id)?.ok_or_else(|| invalid(OP, format!("write {id} vanished")))
}

pub(super) fn act(
    conn: &Connection,
    ids: &[i64],
    action: WriteAction,
    actor: &str,
    note: &str,
    now: i64,
) -> Result<Vec<(i64, WriteActOutcome)>> {
    let op = match action {
        WriteAction::Redrive => "redrive writes",
        WriteAction::Discard => "discard writes",
    };
    if actor.trim().is_empty() {
        return Err(invalid(op, "the person acting must be named".into()));
    }
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        let from: Option<String> = conn
            .prepare_cached("SELECT state FROM writes WHERE id = ?1")
            .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
            .map_err(db(op))?;
        let Some(from) = from else {
            out.push((id, WriteActOutcome::NotFound));
            continue;
        };
        let from = WriteState::parse(&from)
            .ok_or_else(|| invalid(op, format!("write {id} has an unknown state '{from}'")))?;
        if !action.allowed_from(from) {
            out.push((id, WriteActOutcome::NotAllowed { state: from }));
            continue;
        }
        let to = action.target();
        let reason = (action == WriteAction::Discard).then(|| discard_reason(actor, note));
        conn.prepare_cached(
            "UPDATE writes SET state = ?2, reason = coalesce(?3, reason), updated_at_ms = ?4
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![id, to.as_str(), reason, now]))
        .map_err(db(op))?;
        log_action(
            conn,
            id,
            Some(from),
            to,
            now,
            Some(&action.detail(actor)),
            Some(actor),
            stored_note(note),
        )?;
        out.push((id, WriteActOutcome::Done { from, to }));
    }
    Ok(out)
}

pub(super) fn requeue_abandoned(
    conn: &Connection,
    claimed_before_ms: i64,
    note: &str,
    now: i64,
) -> Result<Vec<i64>> {
    let ids: Vec<i64> = conn
        .prepare_cached(
            "SELECT id FROM writes WHERE state = 'sent' AND updated_at_ms < ?1
             ORDER BY updated_at_ms, id",
        )
        .and_then(|mut s| s.query_map([claimed_before_ms], |r| r.get(0))?.collect())
        .map_err(db("requeue abandoned writes"))?;
    for id in &ids {
        conn.prepare_cached(
            "UPDATE writes SET state = 'pending', updated_at_ms = ?2 WHERE id = ?1 AND state = 'sent'",
        )
        .and_then(|mut s| s.execute(params![id, now]))
        .map_err(db("requeue abandoned writes"))?;
        log_transition(
            conn,
            *id,
            Some(WriteState::Sent),
            WriteState::Pending,
            now,
            Some(note),
        )?;
    }
    Ok(ids)
}

#[async_trait]
impl WriteLedger for SqliteChangeLog {
    async fn submit_writes(&self, writes: &[NewWrite]) -> Result<Vec<SubmitOutcome>> {
        let writes = writes.to_vec();
        let ctx = self.registry.ctx();
        self.transaction(move |tx| submit(tx.connection(), &ctx, &writes, now_ms()))
            .await
    }

    async fn ingest_outbox(&self, limit: usize) -> Result<OutboxIngest> {
        let ctx = self.registry.ctx();
        self.transaction(move |tx| ingest(tx.connection(), &ctx, limit, now_ms()))
            .await
    }

    async fn pending_groups(&self, cap: usize, due_at_ms: i64) -> Result<Vec<PendingGroup>> {
        self.blocking("count pending writes", move |conn| {
            pending_groups(conn, cap, due_at_ms)
        })
        .await
    }

    async fn claim_group(
        &self,
        claimer: &str,
        group: &WriteGroup,
        limit: usize,
    ) -> Result<Vec<LedgerWrite>> {
        let (claimer, group) = (claimer.to_string(), group.clone());
        let claimed = self
            .transaction(move |tx| claim_group(tx.connection(), &claimer, &group, limit, now_ms()))
            .await?;
        self.registry.ctx().open_writes(claimed)
    }

    async fn claim_writes(&self, claimer: &str, limit: usize) -> Result<Vec<LedgerWrite>> {
        let claimer = claimer.to_string();
        let claimed = self
            .transaction(move |tx| claim(tx.connection(), &claimer, limit, now_ms()))
            .await?;
        self.registry.ctx().open_writes(claimed)
    }

    async fn record_write_outcomes(&self, outcomes: &[(i64, WriteOutcome)]) -> Result<()> {
        let outcomes = outcomes.to_vec();
        let ctx = self.registry.ctx();
        self.transaction(move |tx| record(tx.connection(), &ctx, &outcomes, now_ms()))
            .await
    }

    async fn write(&self, id: i64) -> Result<Option<LedgerWrite>> {
        let w = self
            .blocking("read write", move |conn| get(conn, id))
            .await?;
        Ok(self
            .registry
            .ctx()
            .open_writes(w.into_iter().collect())?
            .pop())
    }

    async fn write_transitions(&self, id: i64) -> Result<Vec<WriteTransition>> {
        let (object, ts) = self
            .blocking("read write transitions", move |conn| {
                let object = get(conn, id)?.map(|w| w.object).unwrap_or_default();
                Ok((object, transitions(conn, id)?))
            })
            .await?;
        self.registry.ctx().open_transitions(&object, ts)
    }

    async fn writes(&self, filter: &WriteFilter) -> Result<Vec<LedgerWrite>> {
        let filter = filter.clone();
        let ws = self
            .blocking("read writes", move |conn| list(conn, &filter))
            .await?;
        self.registry.ctx().open_writes(ws)
    }

    async fn echo_write(&self, object: &str, record_id: &str) -> Result<Option<LedgerWrite>> {
        let (o, r) = (object.to_string(), record_id.to_string());
        let w = self
            .blocking("find echoed write", move |conn| echo(conn, &o, &r))
            .await?;
        Ok(self
            .registry
            .ctx()
            .open_writes(w.into_iter().collect())?
            .pop())
    }

    async fn echo_sources(
        &self,
        event_keys: &[String],
    ) -> Result<std::collections::HashMap<String, String>> {
        let keys = event_keys.to_vec();
        self.blocking_on(&self.reader, "find echo sources", move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT source_system FROM writes WHERE echo_event_key = ?1 LIMIT 1",
                )
                .map_err(|e| StoreError::sqlite("find echo sources", e))?;
            let mut out = std::collections::HashMap::new();
            for k in keys {
                let found: Option<String> = stmt
                    .query_row([&k], |r| r.get(0))
                    .optional()
                    .map_err(|e| StoreError::sqlite("find echo sources", e))?;
                if let Some(s) = found {
                    out.insert(k, s);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn resolve_conflict(
        &self,
        id: i64,
        resolution: &Resolution,
        actor: &str,
        note: &str,
    ) -> Result<LedgerWrite> {
        let ctx = self.registry.ctx();
        let (resolution, actor, note) = (resolution.clone(), actor.to_string(), note.to_string());
        let w = self
            .transaction(move |tx| {
                resolve(
                    tx.connection(),
                    &ctx,
                    id,
                    &resolution,
                    &actor,
                    &note,
                    now_ms(),
                )
            })
            .await?;
        Ok(self.registry.ctx().open_writes(vec![w])?.remove(0))
    }

    async fn redrive_writes(
        &self,
        ids: &[i64],
        actor: &str,
        note: &str,
    ) -> Result<Vec<(i64, WriteActOutcome)>> {
        let (ids, actor, note) = (ids.to_vec(), actor.to_string(), note.to_string());
        self.transaction(move |tx| {
            act(
                tx.connection(),
                &ids,
                WriteAction::Redrive,
                &actor,
                &note,
                now_ms(),
            )
        })
        .await
    }

    async fn discard_writes(
        &self,
        ids: &[i64],
        actor: &str,
        note: &str,
    ) -> Result<Vec<(i64, WriteActOutcome)>> {
        let (ids, actor, note) = (ids.to_vec(), actor.to_string(), note.to_string());
        self.transaction(move |tx| {
            act(
                tx.connection(),
                &ids,
                WriteAction::Discard,
                &actor,
                &note,
                now_ms(),
            )
        })
        .await
    }

    async fn requeue_abandoned(&self, claimed_before_ms: i64, note: &str) -> Result<Vec<i64>> {
        let note = note.to_string();
        self.transaction(move |tx| {
            requeue_abandoned(tx.connection(), claimed_before_ms, &note, now_ms())
        })
        .await
    }
}
