//! Sync jobs on SQLite (see [`crate::jobs`]).

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use super::BACKEND;
use crate::error::{Result, StoreError};
use crate::jobs::*;

fn db(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::sqlite(op, e)
}

const COLUMNS: &str = "id, kind, object, reason, status, since_ms, until_ms, params,
    requested_by, resync_id, run_id, bulk_job_id, locator, page_rows_done, rows_total, rows_read,
    rows_applied, rows_skipped, rows_held, rows_deleted, rows_failed, api_calls, requested_at_ms,
    started_at_ms, finished_at_ms, error, report, watermark_ms, reread_from_ms, attempts,
    previous_attempts, slices";

fn bad_stored(id: i64, what: &str, value: &str) -> StoreError {
    StoreError::InvalidInput {
        backend: BACKEND,
        op: "read sync jobs",
        reason: format!("sync job {id} has an unknown {what} '{value}'"),
    }
}

type JobRow = (SyncJob, String, String, Option<String>, Option<String>);

fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    let kind: String = r.get(1)?;
    let status: String = r.get(4)?;
    Ok((
        SyncJob {
            id: r.get(0)?,
            kind: SyncJobKind::Backfill,
            object: r.get(2)?,
            reason: r.get(3)?,
            status: SyncJobStatus::Pending,
            since_ms: r.get(5)?,
            until_ms: r.get(6)?,
            params: r.get(7)?,
            requested_by: r.get(8)?,
            resync_id: r.get(9)?,
            run_id: r.get(10)?,
            bulk_job_id: r.get(11)?,
            locator: r.get(12)?,
            page_rows_done: r.get(13)?,
            rows_total: r.get(14)?,
            counts: SyncCounts {
                read: r.get(15)?,
                applied: r.get(16)?,
                skipped: r.get(17)?,
                held: r.get(18)?,
                deleted: r.get(19)?,
                failed: r.get(20)?,
                api_calls: r.get(21)?,
            },
            requested_at_ms: r.get(22)?,
            started_at_ms: r.get(23)?,
            finished_at_ms: r.get(24)?,
            error: r.get(25)?,
            report: r.get(26)?,
            watermark_ms: r.get(27)?,
            reread_from_ms: r.get(28)?,
            attempts: r.get(29)?,
            previous_attempts: Vec::new(),
            slices: Vec::new(),
        },
        kind,
        status,
        r.get(30)?,
        r.get(31)?,
    ))
}

fn finish_job((mut job, kind, status, previous, slices): JobRow) -> Result<SyncJob> {
    let bad = |reason| StoreError::InvalidInput {
        backend: BACKEND,
        op: "read sync jobs",
        reason,
    };
    job.previous_attempts = parse_attempts(job.id, previous.as_deref()).map_err(bad)?;
    job.slices = parse_slices(job.id, slices.as_deref()).map_err(bad)?;
    job.kind = SyncJobKind::parse(&kind).ok_or_else(|| bad_stored(job.id, "kind", &kind))?;
    job.status =
        SyncJobStatus::parse(&status).ok_or_else(|| bad_stored(job.id, "status", &status))?;
    Ok(job)
}

pub(super) fn insert(conn: &Connection, job: &NewSyncJob, now: i64) -> Result<i64> {
    if job.object.is_empty() {
        return Err(StoreError::InvalidInput {
            backend: BACKEND,
            op: "request sync job",
            reason: format!("a {} job needs an object", job.kind.as_str()),
        });
    }
    conn.prepare_cached(
        "INSERT INTO sync_jobs (kind, object, reason, status, since_ms, until_ms, params,
             requested_by, resync_id, requested_at_ms)
         VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut s| {
        s.execute(params![
            job.kind.as_str(),
            job.object,
            job.reason,
            job.since_ms,
            job.until_ms,
            job.params,
            job.requested_by,
            job.resync_id,
            now
        ])
    })
    .map_err(db("request sync job"))?;
    Ok(conn.last_insert_rowid())
}

pub(super) fn list(conn: &Connection, filter: &SyncJobFilter) -> Result<Vec<SyncJob>> {
    let mut sql = format!("SELECT {COLUMNS} FROM sync_jobs WHERE 1 = 1");
    let mut args: Vec<SqlValue> = Vec::new();
    if !filter.statuses.is_empty() {
        let marks: Vec<String> = filter
            .statuses
            .iter()
            .map(|s| {
                args.push(SqlValue::Text(s.as_str().into()));
                format!("?{}", args.len())
            })
            .collect();
        sql.push_str(&format!(" AND status IN ({})", marks.join(", ")));
    }
    if let Some(k) = filter.kind {
        args.push(SqlValue::Text(k.as_str().into()));
        sql.push_str(&format!(" AND kind = ?{}", args.len()));
    }
    if let Some(o) = &filter.object {
        args.push(SqlValue::Text(o.clone()));
        sql.push_str(&format!(" AND object = ?{}", args.len()));
    }
    sql.push_str(if filter.newest_first {
        " ORDER BY id DESC"
    } else {
        " ORDER BY id"
    });
    args.push(SqlValue::Integer(filter.limit.max(1) as i64));
    sql.push_str(&format!(" LIMIT ?{}", args.len()));
    let mut stmt = conn.prepare(&sql).map_err(db("read sync jobs"))?;
    let rows = stmt
        .query_map(params_from_iter(args), job_from_row)
        .map_err(db("read sync jobs"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db("read sync jobs"))?;
    rows.into_iter().map(finish_job).collect()
}

pub(super) fn get(conn: &Connection, id: i64) -> Result<Option<SyncJob>> {
    let row = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM sync_jobs WHERE id = ?1"),
            [id],
            job_from_row,
        )
        .optional()
        .map_err(db("read sync job"))?;
    row.map(finish_job).transpose()
}

fn add_counts(conn: &Connection, id: i64, c: &SyncCounts) -> Result<()> {
    if c.is_zero() {
        return Ok(());
    }
    conn.prepare_cached(
        "UPDATE sync_jobs SET rows_read = rows_read + ?2, rows_applied = rows_applied + ?3,
             rows_skipped = rows_skipped + ?4, rows_held = rows_held + ?5,
             rows_deleted = rows_deleted + ?6, rows_failed = rows_failed + ?7,
             api_calls = api_calls + ?8
         WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            c.read,
            c.applied,
            c.skipped,
            c.held,
            c.deleted,
            c.failed,
            c.api_calls
        ])
    })
    .map_err(db("count sync job progress"))?;
    Ok(())
}

fn missing(id: i64, op: &'static str) -> StoreError {
    StoreError::InvalidInput {
        backend: BACKEND,
        op,
        reason: format!("sync job {id} does not exist"),
    }
}

/// Progress committed inside a curated batch's transaction.
pub(super) fn progress(conn: &Connection, p: &SyncJobProgress) -> Result<()> {
    if let Some((locator, done)) = &p.position {
        let n = conn
            .prepare_cached("UPDATE sync_jobs SET locator = ?2, page_rows_done = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![p.job_id, locator, done]))
            .map_err(db("record sync job position"))?;
        if n == 0 {
            return Err(missing(p.job_id, "record sync job position"));
        }
    }
    if p.watermark_ms.is_some() || p.reread_from_ms.is_some() {
        // Two-argument max()/min() are NULL when either is: coalesce keeps the other.
        let n = conn
            .prepare_cached(
                "UPDATE sync_jobs SET
                     watermark_ms = coalesce(max(watermark_ms, ?2), watermark_ms, ?2),
                     reread_from_ms = coalesce(min(reread_from_ms, ?3), reread_from_ms, ?3)
                 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![p.job_id, p.watermark_ms, p.reread_from_ms]))
            .map_err(db("record sync job watermark"))?;
        if n == 0 {
            return Err(missing(p.job_id, "record sync job watermark"));
        }
    }
    if !p.counts.is_zero() {
        let n = conn
            .prepare_cached("SELECT COUNT(*) FROM sync_jobs WHERE id = ?1")
            .and_then(|mut s| s.query_row([p.job_id], |r| r.get::<_, i64>(0)))
            .map_err(db("record sync job progress"))?;
        if n == 0 {
            return Err(missing(p.job_id, "record sync job progress"));
        }
    }
    add_counts(conn, p.job_id, &p.counts)
}

pub(super) fn patch(conn: &Connection, id: i64, p: &SyncJobPatch, now: i64) -> Result<()> {
    let Some(before) = get(conn, id)? else {
        return Err(missing(id, "update sync job"));
    };
    if let Some(status) = p.status {
        let started = (status == SyncJobStatus::Running && before.started_at_ms.is_none())
            .then_some(now)
            .or(before.started_at_ms);
        let finished = (!status.is_open()).then_some(now);
        conn.execute(
            "UPDATE sync_jobs SET status = ?2, started_at_ms = ?3, finished_at_ms = ?4 WHERE id = ?1",
            params![id, status.as_str(), started, finished],
        )
        .map_err(db("update sync job"))?;
        if status == SyncJobStatus::Succeeded {
            if let Some(r) = before.resync_id {
                conn.execute(
                    "UPDATE resync_requests SET status = 'done' WHERE id = ?1",
                    [r],
                )
                .map_err(db("complete re-sync request"))?;
            }
        }
    }
    if let Some(run) = &p.run_id {
        conn.execute(
            "UPDATE sync_jobs SET run_id = ?2 WHERE id = ?1",
            params![id, run],
        )
        .map_err(db("update sync job"))?;
    }
    if let Some(bulk) = &p.bulk_job_id {
        conn.execute(
            "UPDATE sync_jobs SET bulk_job_id = ?2 WHERE id = ?1",
            params![id, bulk],
        )
        .map_err(db("update sync job"))?;
    }
    if let Some((locator, done)) = &p.position {
        conn.execute(
            "UPDATE sync_jobs SET locator = ?2, page_rows_done = ?3 WHERE id = ?1",
            params![id, locator, done],
        )
        .map_err(db("update sync job"))?;
    }
    if let Some(t) = p.rows_total {
        conn.execute(
            "UPDATE sync_jobs SET rows_total = ?2 WHERE id = ?1",
            params![id, t],
        )
        .map_err(db("update sync job"))?;
    }
    if let Some(e) = &p.error {
        conn.execute(
            "UPDATE sync_jobs SET error = ?2 WHERE id = ?1",
            params![id, e],
        )
        .map_err(db("update sync job"))?;
    }
    if let Some(r) = &p.report {
        conn.execute(
            "UPDATE sync_jobs SET report = ?2 WHERE id = ?1",
            params![id, r],
        )
        .map_err(db("update sync job"))?;
    }
    add_counts(conn, id, &p.counts)
}

/// Starts a failed or cancelled job again as a new attempt (see [`retried`]).
pub(super) fn retry(conn: &Connection, id: i64, by: &str, now: i64) -> Result<SyncJob> {
    let Some(job) = get(conn, id)? else {
        return Err(missing(id, "retry sync job"));
    };
    let next = retried(&job, by, now).map_err(|reason| StoreError::InvalidInput {
        backend: BACKEND,
        op: "retry sync job",
        reason,
    })?;
    let n = conn
        .execute(
            "UPDATE sync_jobs SET status = 'pending', attempts = ?2, previous_attempts = ?3,
                 run_id = NULL, bulk_job_id = NULL, locator = NULL, page_rows_done = 0,
                 rows_total = NULL, rows_read = 0, rows_applied = 0, rows_skipped = 0,
                 rows_held = 0, rows_deleted = 0, rows_failed = 0, api_calls = 0,
                 started_at_ms = NULL, finished_at_ms = NULL, error = NULL, report = NULL,
                 slices = ?5
             WHERE id = ?1 AND status = ?4",
            params![
                id,
                next.attempts,
                attempts_json(&next.previous_attempts),
                job.status.as_str(),
                slices_json(&next.slices)
            ],
        )
        .map_err(db("retry sync job"))?;
    if n != 1 {
        return Err(missing(id, "retry sync job"));
    }
    get(conn, id)?.ok_or_else(|| missing(id, "retry sync job"))
}

/// Replaces a job's slices (checked against the stored ones, see [`check_slices`]); with
/// `reset_position`, the Bulk job and page position are cleared too (the next slice starts its
/// own query), in the same statement.
pub(super) fn set_slices(
    conn: &Connection,
    id: i64,
    slices: &[SyncJobSlice],
    reset_position: bool,
) -> Result<()> {
    let Some(job) = get(conn, id)? else {
        return Err(missing(id, "update sync job slices"));
    };
    check_slices(id, &job.slices, slices).map_err(|reason| StoreError::InvalidInput {
        backend: BACKEND,
        op: "update sync job slices",
        reason,
    })?;
    conn.execute(
        "UPDATE sync_jobs SET slices = ?2,
             bulk_job_id = CASE WHEN ?3 THEN NULL ELSE bulk_job_id END,
             locator = CASE WHEN ?3 THEN NULL ELSE locator END,
             page_rows_done = CASE WHEN ?3 THEN 0 ELSE page_rows_done END,
             rows_total = CASE WHEN ?3 THEN NULL ELSE rows_total END
         WHERE id = ?1",
        params![id, slices_json(slices), reset_position],
    )
    .map_err(db("update sync job slices"))?;
    Ok(())
}

/// Turns every pending re-sync request into a re-sync job (once: the request is marked
/// `scheduled`). Returns the new jobs' ids.
pub(super) fn schedule_resyncs(
    conn: &Connection,
    requested_by: &str,
    now: i64,
) -> Result<Vec<i64>> {
    let pending: Vec<(i64, String, i64, String)> = conn
        .prepare_cached(
            "SELECT id, object, from_ms, reason FROM resync_requests
             WHERE status = 'pending' AND object <> '' ORDER BY id",
        )
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect()
        })
        .map_err(db("read re-sync requests"))?;
    let mut ids = Vec::new();
    for (rid, object, from_ms, reason) in pending {
        let id = insert(
            conn,
            &NewSyncJob {
                kind: SyncJobKind::Resync,
                object,
                reason,
                since_ms: Some(from_ms).filter(|ms| *ms > 0),
                until_ms: None,
                params: "{}".into(),
                requested_by: requested_by.into(),
                resync_id: Some(rid),
            },
            now,
        )?;
        conn.execute(
            "UPDATE resync_requests SET status = 'scheduled' WHERE id = ?1",
            [rid],
        )
        .map_err(db("schedule re-sync request"))?;
        ids.push(id);
    }
    Ok(ids)
}

/// Keys of the curated rows of `table` ordered by id, after `after` (exclusive): (id, version
/// commit time, deleted).
pub(super) fn row_keys(
    conn: &Connection,
    table: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<crate::RowKey>> {
    let sql = format!(
        "SELECT \"id\", \"_sf_commit_ms\", \"_sf_deleted\" FROM \"{table}\"
         WHERE \"id\" > ?1 ORDER BY \"id\" LIMIT ?2"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(db("read row keys"))?;
    let rows = stmt
        .query_map(params![after.unwrap_or(""), limit as i64], |r| {
            Ok(crate::RowKey {
                id: r.get(0)?,
                commit_ms: r.get(1)?,
                deleted: r.get::<_, i64>(2)? != 0,
            })
        })
        .map_err(db("read row keys"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db("read row keys"))?;
    Ok(rows)
}
