//! Quarantine and data-quality tables on Postgres (see [`crate::quality`]). Same semantics as
//! the SQLite backend: entries and status updates commit with their batch, an update of an entry
//! that is no longer open fails the whole batch, counts are added to the stored ones.

use std::collections::HashMap;

use futures::future::try_join_all;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row, Statement, Transaction};

use super::warehouse::{db, invalid, prepare_cached, write_failed};
use super::BACKEND;
use crate::error::{Result, StoreError};
use crate::quality::*;
use crate::warehouse::Ctx;
use crate::CuratedBatch;

/// Prepared statements of one connection by SQL text.
type Cache = parking_lot::Mutex<HashMap<String, Statement>>;

type Param = Box<dyn ToSql + Sync + Send>;

const OPEN: &str = "('held','release_requested','force_requested')";

fn refs(args: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect()
}

fn unknown_status(id: i64, status: &str) -> StoreError {
    StoreError::Corrupt {
        backend: BACKEND,
        table: "quarantine",
        offset: id,
        reason: format!("unknown status '{status}'"),
    }
}

/// Writes the quarantine entries, status updates and data-quality counts of a batch (inside
/// its transaction). Statements are pipelined and execute in batch order.
pub(super) async fn commit_quality(
    tx: &Transaction<'_>,
    cache: &Cache,
    ctx: &Ctx,
    batch: &CuratedBatch,
    now: i64,
) -> Result<()> {
    if !batch.quarantine.is_empty() {
        let stmt = prepare_cached(
            cache,
            tx,
            "INSERT INTO quarantine (object, record_id, rule, reason, parent_object,
                 parent_id, event_key, log_offset, commit_timestamp_ms, change, status,
                 run_id, first_seen_ms, last_seen_ms, attempts, alert_after_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'held', $11, $12, $12, 1, $13)",
        )
        .await?;
        let changes = batch
            .quarantine
            .iter()
            .map(|q| {
                q.change
                    .as_ref()
                    .map(|c| ctx.encode_raw(&q.object, c))
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        let futs = batch.quarantine.iter().zip(&changes).map(|(q, change)| {
            let stmt = &stmt;
            async move {
                let log_offset = q.log_offset.map(|o| i64::try_from(o).unwrap_or(i64::MAX));
                tx.execute(
                    stmt,
                    &[
                        &q.object,
                        &q.record_id,
                        &q.rule,
                        &q.reason,
                        &q.parent.as_ref().map(|p| p.0.as_str()),
                        &q.parent.as_ref().map(|p| p.1.as_str()),
                        &q.event_key,
                        &log_offset,
                        &q.commit_timestamp_ms,
                        &change.as_deref(),
                        &q.run_id,
                        &now,
                        &q.alert_after_ms,
                    ],
                )
                .await
                .map_err(|e| {
                    write_failed(
                        &q.object,
                        &q.record_id,
                        format!("quarantine entry ({})", q.rule),
                        e,
                    )
                })
            }
        });
        try_join_all(futs).await?;
    }
    if !batch.quarantine_updates.is_empty() {
        let released = prepare_cached(
            cache,
            tx,
            &format!(
                "UPDATE quarantine SET status = 'released', resolved_at_ms = $2,
                     last_seen_ms = $2, attempts = attempts + 1,
                     resolved_by = COALESCE(resolved_by, 'sfsync')
                 WHERE id = $1 AND status IN {OPEN}"
            ),
        )
        .await?;
        let still_held = prepare_cached(
            cache,
            tx,
            &format!(
                "UPDATE quarantine SET status = 'held', rule = $2, reason = $3,
                     parent_object = $4, parent_id = $5, last_seen_ms = $6,
                     attempts = attempts + 1
                 WHERE id = $1 AND status IN {OPEN}"
            ),
        )
        .await?;
        let futs = batch.quarantine_updates.iter().map(|u| {
            let (released, still_held) = (&released, &still_held);
            async move {
                let (id, n) = match u {
                    QuarantineUpdate::Released { id } => {
                        (id, tx.execute(released, &[id, &now]).await)
                    }
                    QuarantineUpdate::StillHeld {
                        id,
                        rule,
                        reason,
                        parent,
                    } => (
                        id,
                        tx.execute(
                            still_held,
                            &[
                                id,
                                rule,
                                reason,
                                &parent.as_ref().map(|p| p.0.as_str()),
                                &parent.as_ref().map(|p| p.1.as_str()),
                                &now,
                            ],
                        )
                        .await,
                    ),
                };
                if n.map_err(db("update quarantine entry"))? == 0 {
                    return Err(invalid(
                        "commit curated",
                        format!(
                            "quarantine entry {id} is not open (released or discarded \
                             meanwhile); nothing of the batch was written"
                        ),
                    ));
                }
                Ok(())
            }
        });
        try_join_all(futs).await?;
    }
    if !batch.dq_failures.is_empty() {
        let stmt = prepare_cached(
            cache,
            tx,
            "INSERT INTO dq_failures (run_id, object, record_id, rule, severity, field, value,
                 message, event_key, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .await?;
        let futs = batch.dq_failures.iter().map(|f| {
            let stmt = &stmt;
            async move {
                tx.execute(
                    stmt,
                    &[
                        &f.run_id,
                        &f.object,
                        &f.record_id,
                        &f.rule,
                        &f.severity,
                        &f.field,
                        &f.value,
                        &f.message,
                        &f.event_key,
                        &now,
                    ],
                )
                .await
                .map_err(db("store failure sample"))
            }
        });
        try_join_all(futs).await?;
    }
    if !batch.dq_counts.is_empty() {
        // One statement per count (not one multi-row upsert), so a key twice in a batch adds up.
        let stmt = prepare_cached(
            cache,
            tx,
            "INSERT INTO dq_counts (run_id, object, rule, severity, failed, stored, over_cap,
                 last_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (run_id, object, rule) DO UPDATE SET
                 failed = dq_counts.failed + excluded.failed,
                 stored = dq_counts.stored + excluded.stored,
                 over_cap = dq_counts.over_cap + excluded.over_cap,
                 last_at_ms = excluded.last_at_ms",
        )
        .await?;
        let futs = batch.dq_counts.iter().map(|c| {
            let stmt = &stmt;
            async move {
                let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                tx.execute(
                    stmt,
                    &[
                        &c.run_id,
                        &c.object,
                        &c.rule,
                        &c.severity,
                        &n(c.failed),
                        &n(c.stored),
                        &n(c.over_cap),
                        &now,
                    ],
                )
                .await
                .map_err(db("store failure count"))
            }
        });
        try_join_all(futs).await?;
    }
    Ok(())
}

const COLUMNS: &str = "id, object, record_id, rule, reason, parent_object, parent_id, event_key,
    log_offset, commit_timestamp_ms, change, status, run_id, first_seen_ms, last_seen_ms,
    attempts, alert_after_ms, alerted_at_ms, resolved_at_ms, resolved_by, note";

/// The query of `f` and its parameters.
fn list_query(f: &QuarantineFilter) -> (String, Vec<Param>) {
    let mut conds: Vec<String> = Vec::new();
    let mut args: Vec<Param> = Vec::new();
    let mut cond = |sql: &str, arg: Param| {
        args.push(arg);
        conds.push(sql.replace('?', &format!("${}", args.len())));
    };
    if !f.ids.is_empty() {
        cond("id = ANY(?)", Box::new(f.ids.clone()));
    }
    if let Some(o) = &f.object {
        cond("object = ?", Box::new(o.clone()));
        if !f.record_ids.is_empty() {
            cond("record_id = ANY(?)", Box::new(f.record_ids.clone()));
        }
    }
    if let Some((po, ids)) = &f.parent {
        cond("parent_object = ?", Box::new(po.clone()));
        cond("parent_id = ANY(?)", Box::new(ids.clone()));
    }
    if !f.statuses.is_empty() {
        let statuses: Vec<&'static str> = f.statuses.iter().map(|s| s.as_str()).collect();
        cond("status = ANY(?)", Box::new(statuses));
    }
    if let Some(t) = f.alert_due_before_ms {
        cond("alert_after_ms < ? AND alerted_at_ms IS NULL", Box::new(t));
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
    (sql, args)
}

fn decode_record(ctx: &Ctx, r: &Row) -> Result<QuarantineRecord> {
    let get = db("read quarantine");
    let id: i64 = r.try_get(0).map_err(&get)?;
    let object: String = r.try_get(1).map_err(&get)?;
    let status: String = r.try_get(11).map_err(&get)?;
    let status = QuarantineStatus::parse(&status).ok_or_else(|| unknown_status(id, &status))?;
    let change = match r.try_get::<_, Option<Vec<u8>>>(10).map_err(&get)? {
        Some(c) => Some(ctx.decode_raw(&object, id, c)?),
        None => None,
    };
    let parent = match (
        r.try_get::<_, Option<String>>(5).map_err(&get)?,
        r.try_get::<_, Option<String>>(6).map_err(&get)?,
    ) {
        (Some(o), Some(i)) => Some((o, i)),
        _ => None,
    };
    Ok(QuarantineRecord {
        id,
        entry: QuarantineEntry {
            object,
            record_id: r.try_get(2).map_err(&get)?,
            rule: r.try_get(3).map_err(&get)?,
            reason: r.try_get(4).map_err(&get)?,
            parent,
            event_key: r.try_get(7).map_err(&get)?,
            log_offset: r
                .try_get::<_, Option<i64>>(8)
                .map_err(&get)?
                .map(|o| o.max(0) as u64),
            commit_timestamp_ms: r.try_get(9).map_err(&get)?,
            change,
            alert_after_ms: r.try_get(16).map_err(&get)?,
            run_id: r.try_get(12).map_err(&get)?,
        },
        status,
        first_seen_ms: r.try_get(13).map_err(&get)?,
        last_seen_ms: r.try_get(14).map_err(&get)?,
        attempts: r.try_get(15).map_err(&get)?,
        alerted_at_ms: r.try_get(17).map_err(&get)?,
        resolved_at_ms: r.try_get(18).map_err(&get)?,
        resolved_by: r.try_get(19).map_err(&get)?,
        note: r.try_get(20).map_err(&get)?,
    })
}

pub(super) async fn list(
    client: &impl GenericClient,
    cache: &Cache,
    ctx: &Ctx,
    f: &QuarantineFilter,
) -> Result<Vec<QuarantineRecord>> {
    let (sql, args) = list_query(f);
    let stmt = prepare_cached(cache, client, &sql).await?;
    let rows = client
        .query(&stmt, &refs(&args))
        .await
        .map_err(db("read quarantine"))?;
    rows.iter().map(|r| decode_record(ctx, r)).collect()
}

pub(super) async fn open_count(client: &impl GenericClient, cache: &Cache) -> Result<u64> {
    let stmt = prepare_cached(
        cache,
        client,
        &format!("SELECT COUNT(*) FROM quarantine WHERE status IN {OPEN}"),
    )
    .await?;
    let n: i64 = client
        .query_one(&stmt, &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(db("count quarantine"))?;
    Ok(n.max(0) as u64)
}

/// One write of an operator action, in the order they are decided.
enum ActWrite<'a> {
    Set {
        id: i64,
        status: QuarantineStatus,
        resolved_at_ms: Option<i64>,
    },
    /// A discarded change's record: the changes held only behind it go up for a re-check.
    Recheck { object: &'a str, record_id: &'a str },
}

pub(super) async fn act(
    client: &mut Client,
    cache: &Cache,
    ids: &[i64],
    action: QuarantineAction,
    by: &str,
    note: &str,
    now: i64,
) -> Result<Vec<(i64, QuarantineActOutcome)>> {
    let tx = client
        .transaction()
        .await
        .map_err(db("begin quarantine action"))?;
    // Locked until the commit: a batch releasing one of them waits, then finds it not open.
    let rows = tx
        .query(
            "SELECT id, status, object, record_id FROM quarantine WHERE id = ANY($1)
             ORDER BY id FOR UPDATE",
            &[&ids],
        )
        .await
        .map_err(db("read quarantine entry"))?;
    let mut found: HashMap<i64, (QuarantineStatus, String, String)> =
        HashMap::with_capacity(rows.len());
    for r in &rows {
        let get = db("read quarantine entry");
        let id: i64 = r.try_get(0).map_err(&get)?;
        let status: String = r.try_get(1).map_err(&get)?;
        let status = QuarantineStatus::parse(&status).ok_or_else(|| unknown_status(id, &status))?;
        found.insert(
            id,
            (
                status,
                r.try_get(2).map_err(&get)?,
                r.try_get(3).map_err(&get)?,
            ),
        );
    }
    let new = match action {
        QuarantineAction::Release => QuarantineStatus::ReleaseRequested,
        QuarantineAction::ForceRelease => QuarantineStatus::ForceRequested,
        QuarantineAction::Discard => QuarantineStatus::Discarded,
    };
    let resolved_at_ms = (new == QuarantineStatus::Discarded).then_some(now);
    let mut out = Vec::with_capacity(ids.len());
    let mut decided = Vec::new();
    for &id in ids {
        let Some((status, _, _)) = found.get_mut(&id) else {
            out.push((id, QuarantineActOutcome::NotFound));
            continue;
        };
        if !status.is_open() {
            out.push((id, QuarantineActOutcome::AlreadyResolved(*status)));
            continue;
        }
        // An id given twice sees its first decision.
        *status = new;
        decided.push(id);
        out.push((id, QuarantineActOutcome::Done(new)));
    }
    let mut writes = Vec::with_capacity(decided.len() * 2);
    for id in decided {
        writes.push(ActWrite::Set {
            id,
            status: new,
            resolved_at_ms,
        });
        if new == QuarantineStatus::Discarded {
            let (_, object, record_id) = &found[&id];
            writes.push(ActWrite::Recheck { object, record_id });
        }
    }
    if !writes.is_empty() {
        let set = prepare_cached(
            cache,
            &tx,
            "UPDATE quarantine SET status = $2, resolved_at_ms = $3, resolved_by = $4,
                 note = $5, last_seen_ms = $6
             WHERE id = $1",
        )
        .await?;
        let recheck = prepare_cached(
            cache,
            &tx,
            "UPDATE quarantine SET status = 'release_requested', last_seen_ms = $3
             WHERE object = $1 AND record_id = $2 AND status = 'held' AND rule = 'record.held'",
        )
        .await?;
        // Pipelined, one statement per future: they execute in this order.
        let futs = writes.iter().map(|w| {
            let (tx, set, recheck) = (&tx, &set, &recheck);
            async move {
                match w {
                    ActWrite::Set {
                        id,
                        status,
                        resolved_at_ms,
                    } => {
                        tx.execute(
                            set,
                            &[id, &status.as_str(), resolved_at_ms, &by, &note, &now],
                        )
                        .await
                    }
                    ActWrite::Recheck { object, record_id } => {
                        tx.execute(recheck, &[object, record_id, &now]).await
                    }
                }
                .map_err(db("update quarantine entry"))
            }
        });
        try_join_all(futs).await?;
    }
    tx.commit().await.map_err(db("commit quarantine action"))?;
    Ok(out)
}

pub(super) async fn mark_alerted(client: &impl GenericClient, ids: &[i64], now: i64) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    client
        .execute(
            "UPDATE quarantine SET alerted_at_ms = $2 WHERE id = ANY($1)",
            &[&ids, &now],
        )
        .await
        .map_err(db("mark quarantine alert"))?;
    Ok(())
}

pub(super) async fn counts(
    client: &impl GenericClient,
    cache: &Cache,
    run_id: Option<&str>,
) -> Result<Vec<DqCount>> {
    // Byte order (`COLLATE "C"`), as on SQLite, whatever the database's collation.
    let rows = match run_id {
        Some(run) => {
            let stmt = prepare_cached(
                cache,
                client,
                r#"SELECT run_id, object, rule, severity, failed, stored, over_cap FROM dq_counts
                   WHERE run_id = $1 ORDER BY object COLLATE "C", rule COLLATE "C""#,
            )
            .await?;
            client.query(&stmt, &[&run]).await
        }
        None => {
            let stmt = prepare_cached(
                cache,
                client,
                r#"SELECT '*'::TEXT, object, rule, MAX(severity), SUM(failed)::BIGINT,
                       SUM(stored)::BIGINT, SUM(over_cap)::BIGINT
                   FROM dq_counts GROUP BY object, rule
                   ORDER BY object COLLATE "C", rule COLLATE "C""#,
            )
            .await?;
            client.query(&stmt, &[]).await
        }
    }
    .map_err(db("read failure counts"))?;
    rows.iter()
        .map(|r| {
            Ok(DqCount {
                run_id: r.try_get(0)?,
                object: r.try_get(1)?,
                rule: r.try_get(2)?,
                severity: r.try_get(3)?,
                failed: r.try_get::<_, i64>(4)?.max(0) as u64,
                stored: r.try_get::<_, i64>(5)?.max(0) as u64,
                over_cap: r.try_get::<_, i64>(6)?.max(0) as u64,
            })
        })
        .collect::<std::result::Result<_, tokio_postgres::Error>>()
        .map_err(db("read failure counts"))
}

pub(super) async fn samples(
    client: &impl GenericClient,
    cache: &Cache,
    run_id: Option<&str>,
    limit: usize,
) -> Result<Vec<DqFailure>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let stmt = prepare_cached(
        cache,
        client,
        "SELECT run_id, object, record_id, rule, severity, field, value, message, event_key
         FROM dq_failures WHERE $1::TEXT IS NULL OR run_id = $1
         ORDER BY id DESC LIMIT $2",
    )
    .await?;
    let rows = client
        .query(&stmt, &[&run_id, &limit])
        .await
        .map_err(db("read failure samples"))?;
    rows.iter()
        .map(|r| {
            Ok(DqFailure {
                run_id: r.try_get(0)?,
                object: r.try_get(1)?,
                record_id: r.try_get(2)?,
                rule: r.try_get(3)?,
                severity: r.try_get(4)?,
                field: r.try_get(5)?,
                value: r.try_get(6)?,
                message: r.try_get(7)?,
                event_key: r.try_get(8)?,
            })
        })
        .collect::<std::result::Result<_, tokio_postgres::Error>>()
        .map_err(db("read failure samples"))
}
