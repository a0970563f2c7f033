//! [`SyncStatusStore`] on SQLite: `sync_status_state` and the `sync_status` view live in the
//! warehouse file (migration 16). Writes go through the warehouse writer; reads of the view use
//! the read-only warehouse connection, so they never wait for an apply commit.

use std::collections::BTreeMap;

use async_trait::async_trait;
use rusqlite::{params, Connection};

use super::{SqliteChangeLog, BACKEND};
use crate::error::{Result, StoreError};
use crate::sync_status::*;
use crate::warehouse as wh;

fn db(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::sqlite(op, e)
}

fn pairs(conn: &Connection, sql: &str, op: &'static str) -> Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare_cached(sql).map_err(db(op))?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(db(op))?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db(op))
}

fn ts(ms: Option<i64>) -> Option<String> {
    ms.and_then(wh::format_ts)
}

/// A stored timestamp back to epoch ms; text that is not one is a corrupt row naming the column.
fn ms(object: &str, column: &str, text: Option<String>) -> Result<Option<i64>> {
    match text {
        None => Ok(None),
        Some(t) => wh::parse_ts(&t)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt {
                backend: BACKEND,
                table: "sync_status_state",
                offset: 0,
                reason: format!("object {object}: {column} '{t}' is not an RFC 3339 time"),
            }),
    }
}

#[async_trait]
impl SyncStatusStore for SqliteChangeLog {
    async fn open_work(&self) -> Result<BTreeMap<String, OpenWork>> {
        self.blocking_on(&self.reader, "read open work", |conn| {
            let op = "read open work";
            let repairs = pairs(conn, OPEN_REPAIRS_SQL, op)?;
            let job_repairs = pairs(conn, JOB_REPAIRS_SQL, op)?;
            let requests = pairs(conn, OPEN_RESYNC_REQUESTS_SQL, op)?;
            let jobs = conn
                .prepare_cached(OPEN_JOBS_SQL)
                .and_then(|mut s| {
                    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(db(op))?;
            let reconciles = conn
                .prepare_cached(LAST_RECONCILE_SQL)
                .and_then(|mut s| {
                    s.query_map([], |r| {
                        Ok(ReconcileRow {
                            id: r.get(0)?,
                            object: r.get(1)?,
                            status: r.get(2)?,
                            finished_at_ms: r.get(3)?,
                            report: r.get(4)?,
                            error: r.get(5)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(db(op))?;
            Ok(fold_open_work(
                repairs,
                job_repairs,
                requests,
                jobs,
                reconciles,
            ))
        })
        .await
    }

    async fn put_sync_status(&self, states: &[SyncStatusState]) -> Result<()> {
        let op = "write sync status";
        check_states(states).map_err(|reason| StoreError::InvalidInput {
            backend: BACKEND,
            op,
            reason,
        })?;
        let states = states.to_vec();
        self.transaction(move |tx| {
            let conn = tx.connection();
            let mut upsert = conn
                .prepare_cached(
                    "INSERT INTO sync_status_state (object, last_commit_at, last_applied_at,
                         current_as_of, open_repairs, open_resyncs, backfill_running,
                         last_reconcile_at, last_reconcile_result, last_reconcile_detail,
                         delayed_after_secs, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                     ON CONFLICT (object) DO UPDATE SET
                         last_commit_at = excluded.last_commit_at,
                         last_applied_at = excluded.last_applied_at,
                         current_as_of = excluded.current_as_of,
                         open_repairs = excluded.open_repairs,
                         open_resyncs = excluded.open_resyncs,
                         backfill_running = excluded.backfill_running,
                         last_reconcile_at = excluded.last_reconcile_at,
                         last_reconcile_result = excluded.last_reconcile_result,
                         last_reconcile_detail = excluded.last_reconcile_detail,
                         delayed_after_secs = excluded.delayed_after_secs,
                         updated_at = excluded.updated_at",
                )
                .map_err(db(op))?;
            for s in &states {
                upsert
                    .execute(params![
                        s.object,
                        ts(s.last_commit_ms),
                        ts(s.last_applied_ms),
                        ts(s.current_as_of_ms),
                        i64::try_from(s.open_repairs).unwrap_or(i64::MAX),
                        i64::try_from(s.open_resyncs).unwrap_or(i64::MAX),
                        s.backfill_running,
                        ts(s.last_reconcile_ms),
                        s.last_reconcile_result.map(ReconcileResult::as_str),
                        s.last_reconcile_detail,
                        i64::try_from(s.delayed_after_secs).unwrap_or(i64::MAX),
                        ts(Some(s.updated_ms)),
                    ])
                    .map_err(db(op))?;
            }
            let marks: Vec<String> = (1..=states.len()).map(|i| format!("?{i}")).collect();
            let sql = if marks.is_empty() {
                "DELETE FROM sync_status_state".to_string()
            } else {
                format!(
                    "DELETE FROM sync_status_state WHERE object NOT IN ({})",
                    marks.join(", ")
                )
            };
            conn.execute(
                &sql,
                rusqlite::params_from_iter(states.iter().map(|s| s.object.as_str())),
            )
            .map_err(db(op))?;
            Ok(())
        })
        .await
    }

    async fn sync_status(&self, object: Option<&str>) -> Result<Vec<SyncStatus>> {
        let object = object.map(str::to_string);
        self.blocking_on(&self.reader, "read sync status", move |conn| {
            let op = "read sync status";
            let sql = format!(
                "SELECT {VIEW_COLUMNS} FROM sync_status WHERE ?1 IS NULL OR object = ?1 \
                 ORDER BY object"
            );
            type Raw = (
                String,
                Option<String>,
                Option<String>,
                Option<String>,
                i64,
                i64,
                bool,
                Option<String>,
                Option<String>,
                Option<String>,
                i64,
                String,
                Option<f64>,
                String,
                String,
            );
            let rows: Vec<Raw> = conn
                .prepare_cached(&sql)
                .and_then(|mut s| {
                    s.query_map([&object], |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                            r.get(7)?,
                            r.get(8)?,
                            r.get(9)?,
                            r.get(10)?,
                            r.get(11)?,
                            r.get(12)?,
                            r.get(13)?,
                            r.get(14)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(db(op))?;
            rows.into_iter()
                .map(|r| {
                    let o = r.0.clone();
                    let corrupt = |reason: String| StoreError::Corrupt {
                        backend: BACKEND,
                        table: "sync_status",
                        offset: 0,
                        reason: format!("object {o}: {reason}"),
                    };
                    let result = match r.8.as_deref() {
                        None => None,
                        Some(t) => Some(ReconcileResult::parse(t).ok_or_else(|| {
                            corrupt(format!("last_reconcile_result '{t}' is not a result"))
                        })?),
                    };
                    let status = FreshnessStatus::parse(&r.13)
                        .ok_or_else(|| corrupt(format!("status '{}' is not a status", r.13)))?;
                    Ok(SyncStatus {
                        state: SyncStatusState {
                            last_commit_ms: ms(&o, "last_commit_at", r.1)?,
                            last_applied_ms: ms(&o, "last_applied_at", r.2)?,
                            current_as_of_ms: ms(&o, "current_as_of", r.3)?,
                            open_repairs: r.4.max(0) as u64,
                            open_resyncs: r.5.max(0) as u64,
                            backfill_running: r.6,
                            last_reconcile_ms: ms(&o, "last_reconcile_at", r.7)?,
                            last_reconcile_result: result,
                            last_reconcile_detail: r.9,
                            delayed_after_secs: r.10.max(0) as u64,
                            updated_ms: ms(&o, "updated_at", Some(r.11))?.unwrap_or(0),
                            object: r.0,
                        },
                        lag_seconds: r.12,
                        status,
                        status_reason: r.14,
                    })
                })
                .collect()
        })
        .await
    }
}
