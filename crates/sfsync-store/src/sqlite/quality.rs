//! Quarantine and data-quality tables on SQLite (see [`crate::quality`]).

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, TransactionBehavior};

use super::BACKEND;
use crate::error::{Result, StoreError};
use crate::quality::*;
use crate::warehouse::Ctx;
use crate::CuratedBatch;

fn db(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::sqlite(op, e)
}

/// Writes the quarantine entries, status updates and data-quality counts of a batch (inside
/// its transaction).
pub(super) fn commit_quality(
    conn: &Connection,
    ctx: &Ctx,
    batch: &CuratedBatch,
    now: i64,
) -> Result<()> {
    if !batch.quarantine.is_empty() {
        let mut stmt = conn
            .prepare_cached(
                "INSERT INTO quarantine (object, record_id, rule, reason, parent_object,
                     parent_id, event_key, log_offset, commit_timestamp_ms, change, status,
                     run_id, first_seen_ms, last_seen_ms, attempts, alert_after_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'held', ?11, ?12, ?12, 1, ?13)",
            )
            .map_err(db("prepare quarantine insert"))?;
        for q in &batch.quarantine {
            let change = match &q.change {
                Some(c) => Some(ctx.encode_raw(&q.object, c)?),
                None => None,
            };
            stmt.execute(params![
                q.object,
                q.record_id,
                q.rule,
                q.reason,
                q.parent.as_ref().map(|p| &p.0),
                q.parent.as_ref().map(|p| &p.1),
                q.event_key,
                q.log_offset.map(|o| o as i64),
                q.commit_timestamp_ms,
                change,
                q.run_id,
                now,
                q.alert_after_ms,
            ])
            .map_err(|e| StoreError::CuratedWrite {
                backend: BACKEND,
                object: q.object.clone(),
                record_id: q.record_id.clone(),
                what: format!("quarantine entry ({})", q.rule),
                class: crate::error::sqlite_class(&e),
                source: Box::new(e),
            })?;
        }
    }
    for u in &batch.quarantine_updates {
        let n = match u {
            QuarantineUpdate::Released { id } => conn
                .prepare_cached(
                    "UPDATE quarantine SET status = 'released', resolved_at_ms = ?2,
                         last_seen_ms = ?2, attempts = attempts + 1,
                         resolved_by = COALESCE(resolved_by, 'sfsync')
                     WHERE id = ?1 AND status IN ('held','release_requested','force_requested')",
                )
                .and_then(|mut s| s.execute(params![id, now])),
            QuarantineUpdate::StillHeld {
                id,
                rule,
                reason,
                parent,
            } => conn
                .prepare_cached(
                    "UPDATE quarantine SET status = 'held', rule = ?2, reason = ?3,
                         parent_object = ?4, parent_id = ?5, last_seen_ms = ?6,
                         attempts = attempts + 1
                     WHERE id = ?1 AND status IN ('held','release_requested','force_requested')",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        id,
                        rule,
                        reason,
                        parent.as_ref().map(|p| &p.0),
                        parent.as_ref().map(|p| &p.1),
                        now
                    ])
                }),
        }
        .map_err(db("update quarantine entry"))?;
        if n == 0 {
            let id = match u {
                QuarantineUpdate::Released { id } | QuarantineUpdate::StillHeld { id, .. } => id,
            };
            return Err(StoreError::InvalidInput {
                backend: BACKEND,
                op: "commit curated",
                reason: format!(
                    "quarantine entry {id} is not open (released or discarded meanwhile); \
                     nothing of the batch was written"
                ),
            });
        }
    }
    if !batch.dq_failures.is_empty() {
        let mut stmt = conn
            .prepare_cached(
                "INSERT INTO dq_failures (run_id, object, record_id, rule, severity, field, value,
                     message, event_key, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .map_err(db("prepare failure sample insert"))?;
        for f in &batch.dq_failures {
            stmt.execute(params![
                f.run_id,
                f.object,
                f.record_id,
                f.rule,
                f.severity,
                f.field,
                f.value,
                f.message,
                f.event_key,
                now
            ])
            .map_err(db("store failure sample"))?;
        }
    }
    if !batch.dq_counts.is_empty() {
        let mut stmt = conn
            .prepare_cached(
                "INSERT INTO dq_counts (run_id, object, rule, severity, failed, stored, over_cap,
                     last_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (run_id, object, rule) DO UPDATE SET
                     failed = failed + excluded.failed, stored = stored + excluded.stored,
                     over_cap = over_cap + excluded.over_cap, last_at_ms = excluded.last_at_ms",
            )
            .map_err(db("prepare failure count"))?;
        for c in &batch.dq_counts {
            stmt.execute(params![
                c.run_id,
                c.object,
                c.rule,
                c.severity,
                c.failed as i64,
                c.stored as i64,
                c.over_cap as i64,
                now
            ])
            .map_err(db("store failure count"))?;
        }
    }
    Ok(())
}

const COLUMNS: &str = "id, object, record_id, rule, reason, parent_object, parent_id, event_key,
    log_offset, commit_timestamp_ms, change, status, run_id, first_seen_ms, last_seen_ms,
    attempts, alert_after_ms, alerted_at_ms, resolved_at_ms, resolved_by, note";

pub(super) fn list(
    conn: &Connection,
    ctx: &Ctx,
    f: &QuarantineFilter,
) -> Result<Vec<QuarantineRecord>> {
    let mut conds: Vec<String> = Vec::new();
    let mut args: Vec<SqlValue> = Vec::new();
    let mut in_list = |conds: &mut Vec<String>, col: &str, vals: Vec<SqlValue>| {
        let marks: Vec<String> = vals.iter().map(|_| "?".to_string()).collect();
        conds.push(format!("{col} IN ({})", marks.join(", ")));
        args.extend(vals);
    };
    if !f.ids.is_empty() {
        in_list(
            &mut conds,
            "id",
            f.ids.iter().map(|i| SqlValue::Integer(*i)).collect(),
        );
    }
    if let Some(o) = &f.object {
        in_list(&mut conds, "object", vec![SqlValue::Text(o.clone())]);
        if !f.record_ids.is_empty() {
            in_list(
                &mut conds,
                "record_id",
                f.record_ids
                    .iter()
                    .map(|i| SqlValue::Text(i.clone()))
                    .collect(),
            );
        }
    }
    if let Some((po, ids)) = &f.parent {
        in_list(
            &mut conds,
            "parent_object",
            vec![SqlValue::Text(po.clone())],
        );
        in_list(
            &mut conds,
            "parent_id",
            ids.iter().map(|i| SqlValue::Text(i.clone())).collect(),
        );
    }
    if !f.statuses.is_empty() {
        in_list(
            &mut conds,
            "status",
            f.statuses
                .iter()
                .map(|s| SqlValue::Text(s.as_str().to_string()))
                .collect(),
        );
    }
    if let Some(t) = f.alert_due_before_ms {
        conds.push("alert_after_ms < ? AND alerted_at_ms IS NULL".into());
        args.push(SqlValue::Integer(t));
    }
    let mut sql = format!("SELECT {COLUMNS} FROM quarantine");
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    sql.push_str(" ORDER BY id");
    if f.limit > 0 {
        sql.push_str(&format!(" LIMIT {}", f.limit));
    }
    let mut stmt = conn.prepare(&sql).map_err(db("read quarantine"))?;
    let rows = stmt
        .query_map(params_from_iter(args.iter()), |r| {
            Ok((
                r.get::<_, i64>(0)?,
                [
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ],
                (
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ),
                r.get::<_, String>(7)?,
                r.get::<_, Option<i64>>(8)?,
                r.get::<_, i64>(9)?,
                r.get::<_, Option<Vec<u8>>>(10)?,
                r.get::<_, String>(11)?,
                r.get::<_, String>(12)?,
                [
                    r.get::<_, i64>(13)?,
                    r.get::<_, i64>(14)?,
                    r.get::<_, i64>(15)?,
                ],
                [
                    r.get::<_, Option<i64>>(16)?,
                    r.get::<_, Option<i64>>(17)?,
                    r.get::<_, Option<i64>>(18)?,
                ],
                (
                    r.get::<_, Option<String>>(19)?,
                    r.get::<_, Option<String>>(20)?,
                ),
            ))
        })
        .map_err(db("read quarantine"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db("read quarantine"))?;
    rows.into_iter()
        .map(
            |(
                id,
                [object, record_id, rule, reason],
                parent,
                event_key,
                log_offset,
                ts,
                change,
                status,
                run_id,
                [first, last, attempts],
                [alert_after, alerted, resolved],
                (by, note),
            )| {
                let corrupt = |reason: String| StoreError::Corrupt {
                    backend: BACKEND,
                    table: "quarantine",
                    offset: id,
                    reason,
                };
                let status = QuarantineStatus::parse(&status)
                    .ok_or_else(|| corrupt(format!("unknown status '{status}'")))?;
                let change = match change {
                    Some(c) => Some(ctx.decode_raw(&object, id, c)?),
                    None => None,
                };
                Ok(QuarantineRecord {
                    id,
                    entry: QuarantineEntry {
                        object,
                        record_id,
                        rule,
                        reason,
                        parent: match parent {
                            (Some(o), Some(i)) => Some((o, i)),
                            _ => None,
                        },
                        event_key,
                        log_offset: log_offset.map(|o| o.max(0) as u64),
                        commit_timestamp_ms: ts,
                        change,
                        alert_after_ms: alert_after,
                        run_id,
                    },
                    status,
                    first_seen_ms: first,
                    last_seen_ms: last,
                    attempts,
                    alerted_at_ms: alerted,
                    resolved_at_ms: resolved,
                    resolved_by: by,
                    note,
                })
            },
        )
        .collect()
}

pub(super) fn open_count(conn: &Connection) -> Result<u64> {
    conn.query_row(
        "SELECT COUNT(*) FROM quarantine
         WHERE status IN ('held','release_requested','force_requested')",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u64)
    .map_err(db("count quarantine"))
}

pub(super) fn act(
    conn: &mut Connection,
    ids: &[i64],
    action: QuarantineAction,
    by: &str,
    note: &str,
    now: i64,
) -> Result<Vec<(i64, QuarantineActOutcome)>> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("begin quarantine action"))?;
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        let found: Option<(String, String, String)> = tx
            .query_row(
                "SELECT status, object, record_id FROM quarantine WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(db("read quarantine entry"))?;
        let Some((status, object, record_id)) = found else {
            out.push((id, QuarantineActOutcome::NotFound));
            continue;
        };
        let status = QuarantineStatus::parse(&status).ok_or_else(|| StoreError::Corrupt {
            backend: BACKEND,
            table: "quarantine",
            offset: id,
            reason: format!("unknown status '{status}'"),
        })?;
        if !status.is_open() {
            out.push((id, QuarantineActOutcome::AlreadyResolved(status)));
            continue;
        }
        let new = match action {
            QuarantineAction::Release => QuarantineStatus::ReleaseRequested,
            QuarantineAction::ForceRelease => QuarantineStatus::ForceRequested,
            QuarantineAction::Discard => QuarantineStatus::Discarded,
        };
        let resolved = (new == QuarantineStatus::Discarded).then_some(now);
        tx.execute(
            "UPDATE quarantine SET status = ?2, resolved_at_ms = ?3, resolved_by = ?4,
                 note = ?5, last_seen_ms = ?6
             WHERE id = ?1",
            params![id, new.as_str(), resolved, by, note, now],
        )
        .map_err(db("update quarantine entry"))?;
        if new == QuarantineStatus::Discarded {
            // Changes of the record held only because this one was: re-check them.
            tx.execute(
                "UPDATE quarantine SET status = 'release_requested', last_seen_ms = ?3
                 WHERE object = ?1 AND record_id = ?2 AND status = 'held' AND rule = 'record.held'",
                params![object, record_id, now],
            )
            .map_err(db("update quarantine entry"))?;
        }
        out.push((id, QuarantineActOutcome::Done(new)));
    }
    tx.commit().map_err(db("commit quarantine action"))?;
    Ok(out)
}

pub(super) fn mark_alerted(conn: &Connection, ids: &[i64], now: i64) -> Result<()> {
    let mut stmt = conn
        .prepare_cached("UPDATE quarantine SET alerted_at_ms = ?2 WHERE id = ?1")
        .map_err(db("mark quarantine alert"))?;
    for id in ids {
        stmt.execute(params![id, now])
            .map_err(db("mark quarantine alert"))?;
    }
    Ok(())
}

pub(super) fn counts(conn: &Connection, run_id: Option<&str>) -> Result<Vec<DqCount>> {
    let sql = match run_id {
        Some(_) => {
            "SELECT run_id, object, rule, severity, failed, stored, over_cap FROM dq_counts
             WHERE run_id = ?1 ORDER BY object, rule"
        }
        None => {
            "SELECT '*', object, rule, MAX(severity), SUM(failed), SUM(stored), SUM(over_cap)
             FROM dq_counts WHERE ?1 IS NULL GROUP BY object, rule ORDER BY object, rule"
        }
    };
    let mut stmt = conn
        .prepare_cached(sql)
        .map_err(db("read failure counts"))?;
    let rows = stmt
        .query_map([run_id], |r| {
            Ok(DqCount {
                run_id: r.get(0)?,
                object: r.get(1)?,
                rule: r.get(2)?,
                severity: r.get(3)?,
                failed: r.get::<_, i64>(4)?.max(0) as u64,
                stored: r.get::<_, i64>(5)?.max(0) as u64,
                over_cap: r.get::<_, i64>(6)?.max(0) as u64,
            })
        })
        .map_err(db("read failure counts"))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db("read failure counts"))
}

pub(super) fn samples(
    conn: &Connection,
    run_id: Option<&str>,
    limit: usize,
) -> Result<Vec<DqFailure>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn
        .prepare_cached(
            "SELECT run_id, object, record_id, rule, severity, field, value, message, event_key
             FROM dq_failures WHERE ?1 IS NULL OR run_id = ?1 ORDER BY id DESC LIMIT ?2",
        )
        .map_err(db("read failure samples"))?;
    let rows = stmt
        .query_map(params![run_id, limit], |r| {
            Ok(DqFailure {
                run_id: r.get(0)?,
                object: r.get(1)?,
                record_id: r.get(2)?,
                rule: r.get(3)?,
                severity: r.get(4)?,
                field: r.get(5)?,
                value: r.get(6)?,
                message: r.get(7)?,
                event_key: r.get(8)?,
            })
        })
        .map_err(db("read failure samples"))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db("read failure samples"))
}
