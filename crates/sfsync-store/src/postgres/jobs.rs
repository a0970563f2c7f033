//! Sync jobs on Postgres (see [`crate::jobs`]). Same semantics as the SQLite backend: a job's
//! progress commits inside its curated batch's transaction, a status change sets the start time
//! once and the finish time when the job is no longer open, a success marks the re-sync request
//! it carries out done in the same transaction, and each pending re-sync request becomes exactly
//! one job. Row keys are read in byte order of the id (`COLLATE "C"`), as on SQLite.

use std::collections::HashMap;

use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row, Statement};

use super::warehouse::{db, invalid, prepare_cached};
use crate::error::{Result, StoreError};
use crate::jobs::*;

/// Prepared statements of one connection by SQL text.
type Cache = parking_lot::Mutex<HashMap<String, Statement>>;

type Param = Box<dyn ToSql + Sync + Send>;

fn refs(args: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect()
}

const COLUMNS: &str = "id, kind, object, reason, status, since_ms, until_ms, params,
    requested_by, resync_id, run_id, bulk_job_id, locator, page_rows_done, rows_total, rows_read,
    rows_applied, rows_skipped, rows_held, rows_deleted, rows_failed, api_calls, requested_at_ms,
    started_at_ms, finished_at_ms, error, report, watermark_ms, reread_from_ms, attempts,
    previous_attempts, slices";

/// Adds the counts given as parameters `$first` … `$first + 6` to the stored ones.
fn add_counts_sql(first: usize) -> String {
    [
        "rows_read",
        "rows_applied",
        "rows_skipped",
        "rows_held",
        "rows_deleted",
        "rows_failed",
        "api_calls",
    ]
    .iter()
    .enumerate()
    .map(|(i, c)| format!("{c} = {c} + ${}::BIGINT", first + i))
    .collect::<Vec<_>>()
    .join(", ")
}

fn count_params(c: &SyncCounts) -> [&(dyn ToSql + Sync); 7] {
    [
        &c.read,
        &c.applied,
        &c.skipped,
        &c.held,
        &c.deleted,
        &c.failed,
        &c.api_calls,
    ]
}

fn bad_stored(id: i64, what: &str, value: &str) -> StoreError {
    invalid(
        "read sync jobs",
        format!("sync job {id} has an unknown {what} '{value}'"),
    )
}

fn missing(id: i64, op: &'static str) -> StoreError {
    invalid(op, format!("sync job {id} does not exist"))
}

fn decode(r: &Row) -> Result<SyncJob> {
    let get = db("read sync jobs");
    let id: i64 = r.try_get(0).map_err(&get)?;
    let kind: String = r.try_get(1).map_err(&get)?;
    let status: String = r.try_get(4).map_err(&get)?;
    Ok(SyncJob {
        id,
        kind: SyncJobKind::parse(&kind).ok_or_else(|| bad_stored(id, "kind", &kind))?,
        object: r.try_get(2).map_err(&get)?,
        reason: r.try_get(3).map_err(&get)?,
        status: SyncJobStatus::parse(&status).ok_or_else(|| bad_stored(id, "status", &status))?,
        since_ms: r.try_get(5).map_err(&get)?,
        until_ms: r.try_get(6).map_err(&get)?,
        params: r.try_get(7).map_err(&get)?,
        requested_by: r.try_get(8).map_err(&get)?,
        resync_id: r.try_get(9).map_err(&get)?,
        run_id: r.try_get(10).map_err(&get)?,
        bulk_job_id: r.try_get(11).map_err(&get)?,
        locator: r.try_get(12).map_err(&get)?,
        page_rows_done: r.try_get(13).map_err(&get)?,
        rows_total: r.try_get(14).map_err(&get)?,
        counts: SyncCounts {
            read: r.try_get(15).map_err(&get)?,
            applied: r.try_get(16).map_err(&get)?,
            skipped: r.try_get(17).map_err(&get)?,
            held: r.try_get(18).map_err(&get)?,
            deleted: r.try_get(19).map_err(&get)?,
            failed: r.try_get(20).map_err(&get)?,
            api_calls: r.try_get(21).map_err(&get)?,
        },
        requested_at_ms: r.try_get(22).map_err(&get)?,
        started_at_ms: r.try_get(23).map_err(&get)?,
        finished_at_ms: r.try_get(24).map_err(&get)?,
        error: r.try_get(25).map_err(&get)?,
        report: r.try_get(26).map_err(&get)?,
        watermark_ms: r.try_get(27).map_err(&get)?,
        reread_from_ms: r.try_get(28).map_err(&get)?,
        attempts: r.try_get(29).map_err(&get)?,
        previous_attempts: parse_attempts(
            id,
            r.try_get::<_, Option<String>>(30).map_err(&get)?.as_deref(),
        )
        .map_err(|reason| invalid("read sync jobs", reason))?,
        slices: parse_slices(
            id,
            r.try_get::<_, Option<String>>(31).map_err(&get)?.as_deref(),
        )
        .map_err(|reason| invalid("read sync jobs", reason))?,
    })
}

pub(super) async fn insert(
    client: &impl GenericClient,
    cache: &Cache,
    job: &NewSyncJob,
    now: i64,
) -> Result<i64> {
    if job.object.is_empty() {
        return Err(invalid(
            "request sync job",
            format!("a {} job needs an object", job.kind.as_str()),
        ));
    }
    let stmt = prepare_cached(
        cache,
        client,
        "INSERT INTO sync_jobs (kind, object, reason, status, since_ms, until_ms, params,
             requested_by, resync_id, requested_at_ms)
         VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9)
         RETURNING id",
    )
    .await?;
    client
        .query_one(
            &stmt,
            &[
                &job.kind.as_str(),
                &job.object,
                &job.reason,
                &job.since_ms,
                &job.until_ms,
                &job.params,
                &job.requested_by,
                &job.resync_id,
                &now,
            ],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(db("request sync job"))
}

/// The query of `f` and its parameters.
fn list_query(f: &SyncJobFilter) -> (String, Vec<Param>) {
    let mut conds: Vec<String> = Vec::new();
    let mut args: Vec<Param> = Vec::new();
    let mut cond = |sql: &str, arg: Param| {
        args.push(arg);
        conds.push(sql.replace('?', &format!("${}", args.len())));
    };
    if !f.statuses.is_empty() {
        let statuses: Vec<&'static str> = f.statuses.iter().map(|s| s.as_str()).collect();
        cond("status = ANY(?)", Box::new(statuses));
    }
    if let Some(k) = f.kind {
        cond("kind = ?", Box::new(k.as_str()));
    }
    if let Some(o) = &f.object {
        cond("object = ?", Box::new(o.clone()));
    }
    let mut sql = format!("SELECT {COLUMNS} FROM sync_jobs");
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    sql.push_str(if f.newest_first {
        " ORDER BY id DESC"
    } else {
        " ORDER BY id"
    });
    args.push(Box::new(i64::try_from(f.limit.max(1)).unwrap_or(i64::MAX)));
    sql.push_str(&format!(" LIMIT ${}", args.len()));
    (sql, args)
}

pub(super) async fn list(
    client: &impl GenericClient,
    cache: &Cache,
    f: &SyncJobFilter,
) -> Result<Vec<SyncJob>> {
    let (sql, args) = list_query(f);
    let stmt = prepare_cached(cache, client, &sql).await?;
    let rows = client
        .query(&stmt, &refs(&args))
        .await
        .map_err(db("read sync jobs"))?;
    rows.iter().map(decode).collect()
}

pub(super) async fn get(
    client: &impl GenericClient,
    cache: &Cache,
    id: i64,
) -> Result<Option<SyncJob>> {
    let stmt = prepare_cached(
        cache,
        client,
        &format!("SELECT {COLUMNS} FROM sync_jobs WHERE id = $1"),
    )
    .await?;
    client
        .query_opt(&stmt, &[&id])
        .await
        .map_err(db("read sync job"))?
        .as_ref()
        .map(decode)
        .transpose()
}

/// Starts a failed or cancelled job again as a new attempt (see [`retried`]); the row is locked
/// for the transaction.
pub(super) async fn retry(
    client: &impl GenericClient,
    cache: &Cache,
    id: i64,
    by: &str,
    now: i64,
) -> Result<SyncJob> {
    client
        .query_opt("SELECT 1 FROM sync_jobs WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .map_err(db("retry sync job"))?
        .ok_or_else(|| missing(id, "retry sync job"))?;
    let job = get(client, cache, id)
        .await?
        .ok_or_else(|| missing(id, "retry sync job"))?;
    let next = retried(&job, by, now).map_err(|reason| invalid("retry sync job", reason))?;
    client
        .execute(
            "UPDATE sync_jobs SET status = 'pending', attempts = $2, previous_attempts = $3,
                 run_id = NULL, bulk_job_id = NULL, locator = NULL, page_rows_done = 0,
                 rows_total = NULL, rows_read = 0, rows_applied = 0, rows_skipped = 0,
                 rows_held = 0, rows_deleted = 0, rows_failed = 0, api_calls = 0,
                 started_at_ms = NULL, finished_at_ms = NULL, error = NULL, report = NULL,
                 slices = $4
             WHERE id = $1",
            &[
                &id,
                &next.attempts,
                &attempts_json(&next.previous_attempts),
                &slices_json(&next.slices),
            ],
        )
        .await
        .map_err(db("retry sync job"))?;
    get(client, cache, id)
        .await?
        .ok_or_else(|| missing(id, "retry sync job"))
}

/// Replaces a job's slices (checked against the stored ones, see [`check_slices`]); with
/// `reset_position`, the Bulk job and page position are cleared too, in the same statement.
pub(super) async fn set_slices(
    client: &impl GenericClient,
    cache: &Cache,
    id: i64,
    slices: &[SyncJobSlice],
    reset_position: bool,
) -> Result<()> {
    client
        .query_opt("SELECT 1 FROM sync_jobs WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .map_err(db("update sync job slices"))?
        .ok_or_else(|| missing(id, "update sync job slices"))?;
    let job = get(client, cache, id)
        .await?
        .ok_or_else(|| missing(id, "update sync job slices"))?;
    check_slices(id, &job.slices, slices)
        .map_err(|reason| invalid("update sync job slices", reason))?;
    client
        .execute(
            "UPDATE sync_jobs SET slices = $2,
                 bulk_job_id = CASE WHEN $3 THEN NULL ELSE bulk_job_id END,
                 locator = CASE WHEN $3 THEN NULL ELSE locator END,
                 page_rows_done = CASE WHEN $3 THEN 0 ELSE page_rows_done END,
                 rows_total = CASE WHEN $3 THEN NULL ELSE rows_total END
             WHERE id = $1",
            &[&id, &slices_json(slices), &reset_position],
        )
        .await
        .map_err(db("update sync job slices"))?;
    Ok(())
}

/// Progress committed inside a curated batch's transaction: the position (when given; the job
/// must exist then), the watermark (raised, never lowered), the re-read point (lowered, never
/// raised) and the counts, in one statement.
pub(super) async fn progress(
    client: &impl GenericClient,
    cache: &Cache,
    p: &SyncJobProgress,
) -> Result<()> {
    if p.position.is_none()
        && p.counts.is_zero()
        && p.watermark_ms.is_none()
        && p.reread_from_ms.is_none()
    {
        return Ok(());
    }
    // GREATEST and LEAST ignore NULLs: a NULL stored value becomes the given one, a NULL given
    // keeps the stored one.
    let stmt = prepare_cached(
        cache,
        client,
        &format!(
            "UPDATE sync_jobs SET
                 locator = CASE WHEN $2::BOOLEAN THEN $3::TEXT ELSE locator END,
                 page_rows_done = CASE WHEN $2::BOOLEAN THEN $4::BIGINT ELSE page_rows_done END,
                 watermark_ms = GREATEST(watermark_ms, $5::BIGINT),
                 reread_from_ms = LEAST(reread_from_ms, $6::BIGINT),
                 {}
             WHERE id = $1",
            add_counts_sql(7)
        ),
    )
    .await?;
    let (locator, done) = match &p.position {
        Some((locator, done)) => (locator.as_deref(), *done),
        None => (None, 0),
    };
    let set = p.position.is_some();
    let mut args: Vec<&(dyn ToSql + Sync)> = vec![
        &p.job_id,
        &set,
        &locator,
        &done,
        &p.watermark_ms,
        &p.reread_from_ms,
    ];
    args.extend(count_params(&p.counts));
    let n = client
        .execute(&stmt, &args)
        .await
        .map_err(db("record sync job position"))?;
    if n == 0 {
        return Err(missing(p.job_id, "record sync job position"));
    }
    Ok(())
}

/// Applies `p` in one statement (the row lock it takes orders concurrent patches; the start
/// time is kept once set), then completes the linked re-sync request on success. Run it inside
/// a transaction.
pub(super) async fn patch(
    client: &impl GenericClient,
    cache: &Cache,
    id: i64,
    p: &SyncJobPatch,
    now: i64,
) -> Result<()> {
    let stmt = prepare_cached(
        cache,
        client,
        &format!(
            "UPDATE sync_jobs SET
                 status = COALESCE($2::TEXT, status),
                 started_at_ms = COALESCE(started_at_ms, $3::BIGINT),
                 finished_at_ms = CASE WHEN $2::TEXT IS NULL THEN finished_at_ms
                     ELSE $4::BIGINT END,
                 run_id = COALESCE($5::TEXT, run_id),
                 bulk_job_id = CASE WHEN $6::BOOLEAN THEN $7::TEXT ELSE bulk_job_id END,
                 locator = CASE WHEN $8::BOOLEAN THEN $9::TEXT ELSE locator END,
                 page_rows_done = CASE WHEN $8::BOOLEAN THEN $10::BIGINT ELSE page_rows_done END,
                 rows_total = COALESCE($11::BIGINT, rows_total),
                 error = COALESCE($12::TEXT, error),
                 report = COALESCE($13::TEXT, report),
                 {}
             WHERE id = $1
             RETURNING resync_id",
            add_counts_sql(14)
        ),
    )
    .await?;
    let status = p.status.map(SyncJobStatus::as_str);
    let started = (p.status == Some(SyncJobStatus::Running)).then_some(now);
    let finished = p.status.filter(|s| !s.is_open()).map(|_| now);
    let set_bulk = p.bulk_job_id.is_some();
    let bulk = p.bulk_job_id.clone().flatten();
    let set_position = p.position.is_some();
    let (locator, done) = match &p.position {
        Some((locator, done)) => (locator.as_deref(), *done),
        None => (None, 0),
    };
    let mut args: Vec<&(dyn ToSql + Sync)> = vec![
        &id,
        &status,
        &started,
        &finished,
        &p.run_id,
        &set_bulk,
        &bulk,
        &set_position,
        &locator,
        &done,
        &p.rows_total,
        &p.error,
        &p.report,
    ];
    args.extend(count_params(&p.counts));
    let row = client
        .query_opt(&stmt, &args)
        .await
        .map_err(db("update sync job"))?
        .ok_or_else(|| missing(id, "update sync job"))?;
    let resync_id: Option<i64> = row.try_get(0).map_err(db("update sync job"))?;
    if let (Some(SyncJobStatus::Succeeded), Some(r)) = (p.status, resync_id) {
        let stmt = prepare_cached(
            cache,
            client,
            "UPDATE resync_requests SET status = 'done' WHERE id = $1",
        )
        .await?;
        client
            .execute(&stmt, &[&r])
            .await
            .map_err(db("complete re-sync request"))?;
    }
    Ok(())
}

/// Turns every pending re-sync request into a re-sync job, once: the requests are marked
/// `scheduled` by the statement that picks them, so a concurrent call waits on their row locks
/// and then skips them. Run it inside a transaction. Returns the new jobs' ids.
pub(super) async fn schedule_resyncs(
    client: &impl GenericClient,
    cache: &Cache,
    requested_by: &str,
    now: i64,
) -> Result<Vec<i64>> {
    let stmt = prepare_cached(
        cache,
        client,
        "UPDATE resync_requests SET status = 'scheduled'
         WHERE status = 'pending' AND object <> ''
         RETURNING id, object, from_ms, reason",
    )
    .await?;
    let rows = client
        .query(&stmt, &[])
        .await
        .map_err(db("schedule re-sync request"))?;
    let mut picked = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
        .collect::<std::result::Result<Vec<(i64, String, i64, String)>, tokio_postgres::Error>>()
        .map_err(db("read re-sync requests"))?;
    // Jobs in request order (RETURNING has none).
    picked.sort_unstable_by_key(|p| p.0);
    let mut ids = Vec::with_capacity(picked.len());
    for (rid, object, from_ms, reason) in picked {
        let job = NewSyncJob {
            kind: SyncJobKind::Resync,
            object,
            reason,
            since_ms: Some(from_ms).filter(|ms| *ms > 0),
            until_ms: None,
            params: "{}".into(),
            requested_by: requested_by.into(),
            resync_id: Some(rid),
        };
        ids.push(insert(client, cache, &job, now).await?);
    }
    Ok(ids)
}

/// Keys of the curated rows of `table` in byte order of the id (as SQLite compares text), after
/// `after` (exclusive).
pub(super) async fn row_keys(
    client: &impl GenericClient,
    cache: &Cache,
    table: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<RowKey>> {
    let stmt = prepare_cached(
        cache,
        client,
        &format!(
            "SELECT \"id\", \"_sf_commit_ms\", \"_sf_deleted\" FROM {}
             WHERE \"id\" COLLATE \"C\" > $1 ORDER BY \"id\" COLLATE \"C\" LIMIT $2",
            crate::warehouse::q(table)
        ),
    )
    .await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(&stmt, &[&after.unwrap_or(""), &limit])
        .await
        .map_err(db("read row keys"))?;
    rows.iter()
        .map(|r| {
            Ok(RowKey {
                id: r.try_get(0)?,
                commit_ms: r.try_get(1)?,
                deleted: r.try_get(2)?,
            })
        })
        .collect::<std::result::Result<_, tokio_postgres::Error>>()
        .map_err(db("read row keys"))
}
