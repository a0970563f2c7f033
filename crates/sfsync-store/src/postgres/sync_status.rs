//! [`SyncStatusStore`] on Postgres: `sync_status_state` and the `sync_status` view (migration
//! 16) in the connection's schema. Writes go through the main connection in one transaction;
//! reads use the reader connection.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::warehouse::db;
use super::PostgresChangeLog;
use crate::error::{Result, StoreError};
use crate::sync_status::*;

const BACKEND: &str = "postgres";

fn ts(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.and_then(crate::warehouse::ts_from_ms)
}

fn ms(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(|t| t.timestamp_millis())
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl SyncStatusStore for PostgresChangeLog {
    async fn open_work(&self) -> Result<BTreeMap<String, OpenWork>> {
        let op = "read open work";
        let client = self.reader.lock().await;
        let pairs = |rows: Vec<tokio_postgres::Row>| -> Result<Vec<(String, i64)>> {
            rows.iter()
                .map(|r| Ok((r.try_get(0).map_err(db(op))?, r.try_get(1).map_err(db(op))?)))
                .collect()
        };
        let repairs = pairs(client.query(OPEN_REPAIRS_SQL, &[]).await.map_err(db(op))?)?;
        let job_repairs = pairs(client.query(JOB_REPAIRS_SQL, &[]).await.map_err(db(op))?)?;
        let requests = pairs(
            client
                .query(OPEN_RESYNC_REQUESTS_SQL, &[])
                .await
                .map_err(db(op))?,
        )?;
        let jobs = client
            .query(OPEN_JOBS_SQL, &[])
            .await
            .map_err(db(op))?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get(0).map_err(db(op))?,
                    r.try_get(1).map_err(db(op))?,
                    r.try_get(2).map_err(db(op))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let reconciles = client
            .query(LAST_RECONCILE_SQL, &[])
            .await
            .map_err(db(op))?
            .iter()
            .map(|r| {
                Ok(ReconcileRow {
                    id: r.try_get(0).map_err(db(op))?,
                    object: r.try_get(1).map_err(db(op))?,
                    status: r.try_get(2).map_err(db(op))?,
                    finished_at_ms: r.try_get(3).map_err(db(op))?,
                    report: r.try_get(4).map_err(db(op))?,
                    error: r.try_get(5).map_err(db(op))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        drop(client);
        Ok(fold_open_work(
            repairs,
            job_repairs,
            requests,
            jobs,
            reconciles,
        ))
    }

    async fn put_sync_status(&self, states: &[SyncStatusState]) -> Result<()> {
        let op = "write sync status";
        check_states(states).map_err(|reason| StoreError::InvalidInput {
            backend: BACKEND,
            op,
            reason,
        })?;
        let mut client = self.client.lock().await;
        let tx = client.transaction().await.map_err(db(op))?;
        let upsert = tx
            .prepare(
                "INSERT INTO sync_status_state (object, last_commit_at, last_applied_at,
                     current_as_of, open_repairs, open_resyncs, backfill_running,
                     last_reconcile_at, last_reconcile_result, last_reconcile_detail,
                     delayed_after_secs, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
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
            .await
            .map_err(db(op))?;
        for s in states {
            tx.execute(
                &upsert,
                &[
                    &s.object,
                    &ts(s.last_commit_ms),
                    &ts(s.last_applied_ms),
                    &ts(s.current_as_of_ms),
                    &count(s.open_repairs),
                    &count(s.open_resyncs),
                    &s.backfill_running,
                    &ts(s.last_reconcile_ms),
                    &s.last_reconcile_result.map(ReconcileResult::as_str),
                    &s.last_reconcile_detail,
                    &count(s.delayed_after_secs),
                    &ts(Some(s.updated_ms)),
                ],
            )
            .await
            .map_err(db(op))?;
        }
        let objects: Vec<&str> = states.iter().map(|s| s.object.as_str()).collect();
        tx.execute(
            "DELETE FROM sync_status_state WHERE NOT (object = ANY($1))",
            &[&objects],
        )
        .await
        .map_err(db(op))?;
        tx.commit().await.map_err(db(op))?;
        Ok(())
    }

    async fn sync_status(&self, object: Option<&str>) -> Result<Vec<SyncStatus>> {
        let op = "read sync status";
        let client = self.reader.lock().await;
        let rows = client
            .query(
                &format!(
                    "SELECT {VIEW_COLUMNS} FROM sync_status \
                     WHERE $1::text IS NULL OR object = $1 ORDER BY object"
                ),
                &[&object],
            )
            .await
            .map_err(db(op))?;
        drop(client);
        let get = db("decode sync status");
        rows.iter()
            .map(|r| {
                let object: String = r.try_get(0).map_err(&get)?;
                let corrupt = |reason: String| StoreError::Corrupt {
                    backend: BACKEND,
                    table: "sync_status",
                    offset: 0,
                    reason: format!("object {object}: {reason}"),
                };
                let result: Option<String> = r.try_get(8).map_err(&get)?;
                let result = match result.as_deref() {
                    None => None,
                    Some(t) => Some(ReconcileResult::parse(t).ok_or_else(|| {
                        corrupt(format!("last_reconcile_result '{t}' is not a result"))
                    })?),
                };
                let status: String = r.try_get(13).map_err(&get)?;
                let status = FreshnessStatus::parse(&status)
                    .ok_or_else(|| corrupt(format!("status '{status}' is not a status")))?;
                Ok(SyncStatus {
                    state: SyncStatusState {
                        last_commit_ms: ms(r.try_get(1).map_err(&get)?),
                        last_applied_ms: ms(r.try_get(2).map_err(&get)?),
                        current_as_of_ms: ms(r.try_get(3).map_err(&get)?),
                        open_repairs: r.try_get::<_, i64>(4).map_err(&get)?.max(0) as u64,
                        open_resyncs: r.try_get::<_, i64>(5).map_err(&get)?.max(0) as u64,
                        backfill_running: r.try_get(6).map_err(&get)?,
                        last_reconcile_ms: ms(r.try_get(7).map_err(&get)?),
                        last_reconcile_result: result,
                        last_reconcile_detail: r.try_get(9).map_err(&get)?,
                        delayed_after_secs: r.try_get::<_, i64>(10).map_err(&get)?.max(0) as u64,
                        updated_ms: ms(r.try_get(11).map_err(&get)?).unwrap_or(0),
                        object: object.clone(),
                    },
                    lag_seconds: r.try_get(12).map_err(&get)?,
                    status,
                    status_reason: r.try_get(14).map_err(&get)?,
                })
            })
            .collect()
    }
}
