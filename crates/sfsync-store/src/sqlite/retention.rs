//! [`Retention`] on SQLite. The archive ledger, apply offsets and the audit trail live in the
//! warehouse file; raw-log entries in the change-log file (or the warehouse file in the
//! single-file layout), so a raw-log prune reads its bound on the warehouse connection and then
//! deletes on the log's, in chunks of [`PRUNE_CHUNK`].

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sfsync_core::RecordVersion;

use super::{now_ms, to_i64, SqliteChangeLog, StoredLogRow};
use crate::archive::{ArchiveFile, ArchiveRow};
use crate::error::{Result, StoreError};
use crate::retention::{AuditAnchor, AuditPrune, LogPrune, Retention, PRUNE_CHUNK};
use crate::warehouse as wh;
use crate::LogOffset;

fn db(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::sqlite(op, e)
}

fn archived_through_in(conn: &Connection) -> Result<i64> {
    Ok(conn
        .query_row(
            "SELECT archived_through FROM archive_marks WHERE id = 1",
            [],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .map_err(db("read archive mark"))?
        .unwrap_or(0))
}

/// The raw-log bound of a prune (module docs of [`crate::retention`]).
fn prune_bound(conn: &Connection, through: i64) -> Result<i64> {
    let archived = archived_through_in(conn)?;
    let (consumers, applied): (i64, Option<i64>) = conn
        .query_row(
            "SELECT count(*), min(log_offset) FROM apply_offsets",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(db("read apply offsets"))?;
    let applied = if consumers == 0 {
        0
    } else {
        applied.unwrap_or(0)
    };
    Ok(through.min(archived).min(applied).max(0))
}

/// The audit prefix that may go: entries before the first one created at or after `before_ms`,
/// never the newest. Returns (cut seq: delete `seq < cut`, entries, oldest, newest, last seq).
fn audit_cut(conn: &Connection, before_ms: i64) -> Result<Option<(i64, AuditPrune)>> {
    let max_seq: Option<i64> = conn
        .query_row("SELECT max(seq) FROM audit_log", [], |r| r.get(0))
        .map_err(db("read audit"))?;
    let Some(max_seq) = max_seq else {
        return Ok(None);
    };
    let first_kept: Option<i64> = conn
        .query_row(
            "SELECT min(seq) FROM audit_log WHERE created_at_ms >= ?1",
            [before_ms],
            |r| r.get(0),
        )
        .map_err(db("read audit"))?;
    let cut = first_kept.unwrap_or(max_seq).min(max_seq);
    let (n, oldest, newest, last): (i64, Option<i64>, Option<i64>, Option<i64>) = conn
        .query_row(
            "SELECT count(*), min(created_at_ms), max(created_at_ms), max(seq)
             FROM audit_log WHERE seq < ?1",
            [cut],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .map_err(db("read audit"))?;
    Ok(Some((
        cut,
        AuditPrune {
            entries: n.max(0) as u64,
            oldest_ms: oldest,
            newest_ms: newest,
            through_seq: last,
        },
    )))
}

pub(super) fn anchor_in(conn: &Connection) -> Result<Option<AuditAnchor>> {
    conn.query_row(
        "SELECT seq, hash, pruned_entries, pruned_at_ms FROM audit_anchor WHERE id = 1",
        [],
        |r| {
            Ok(AuditAnchor {
                seq: r.get(0)?,
                hash: r.get(1)?,
                pruned_entries: r.get(2)?,
                pruned_at_ms: r.get(3)?,
            })
        },
    )
    .optional()
    .map_err(db("read audit anchor"))
}

const FILE_COLUMNS: &str = "path, object, day, rows, bytes, payload_bytes, sha256, min_offset, \
    max_offset, min_commit_ms, max_commit_ms, created_at_ms";

#[async_trait]
impl Retention for SqliteChangeLog {
    async fn archive_rows(
        &self,
        from: LogOffset,
        through: LogOffset,
        limit: usize,
    ) -> Result<Vec<ArchiveRow>> {
        let ctx = self.registry.ctx();
        let (from, through) = (to_i64(from), to_i64(through));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .blocking_on(&self.log_reader, "archive rows", move |conn| {
                let op = "archive rows";
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT log_offset, channel, event_key, replay_id, schema_id, entity,
                             change_type, commit_timestamp, commit_number, sequence_number,
                             payload, appended_at_ms
                         FROM raw_changes WHERE log_offset >= ?1 AND log_offset <= ?2
                         ORDER BY log_offset LIMIT ?3",
                    )
                    .map_err(db(op))?;
                let mut rows = stmt.query(params![from, through, limit]).map_err(db(op))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next().map_err(db(op))? {
                    let get = db("decode log row");
                    out.push((
                        StoredLogRow {
                            offset: r.get(0).map_err(&get)?,
                            channel: r.get(1).map_err(&get)?,
                            event_key: r.get(2).map_err(&get)?,
                            replay_id: r.get(3).map_err(&get)?,
                            schema_id: r.get(4).map_err(&get)?,
                            entity: r.get(5).map_err(&get)?,
                            change_type: r.get(6).map_err(&get)?,
                            version: RecordVersion {
                                commit_timestamp: r.get(7).map_err(&get)?,
                                commit_number: r.get(8).map_err(&get)?,
                                sequence_number: r.get(9).map_err(&get)?,
                            },
                            payload: r.get(10).map_err(&get)?,
                        },
                        r.get::<_, i64>(11).map_err(&get)?,
                    ));
                }
                Ok(out)
            })
            .await?;
        wh::cpu_bound(|| {
            rows.into_iter()
                .map(|(r, appended)| r.into_archive_row(&ctx, appended))
                .collect()
        })
    }

    async fn archived_through(&self) -> Result<LogOffset> {
        let v = self
            .blocking("read archive mark", |conn| archived_through_in(conn))
            .await?;
        Ok(v.max(0) as LogOffset)
    }

    async fn record_archived(&self, files: &[ArchiveFile], through: LogOffset) -> Result<()> {
        let files = files.to_vec();
        let through = to_i64(through);
        self.blocking("record archived files", move |conn| {
            let op = "record archived files";
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db(op))?;
            for f in &files {
                tx.execute(
                    &format!(
                        "INSERT OR REPLACE INTO archive_files ({FILE_COLUMNS})
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
                    ),
                    params![
                        f.path,
                        f.object,
                        f.day,
                        f.rows as i64,
                        f.bytes as i64,
                        f.payload_bytes as i64,
                        f.sha256,
                        f.min_offset,
                        f.max_offset,
                        f.min_commit_ms,
                        f.max_commit_ms,
                        f.created_at_ms
                    ],
                )
                .map_err(db(op))?;
            }
            tx.execute(
                "INSERT INTO archive_marks (id, archived_through, updated_at_ms) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET
                     archived_through = max(archived_through, excluded.archived_through),
                     updated_at_ms = excluded.updated_at_ms",
                params![through, now_ms()],
            )
            .map_err(db(op))?;
            tx.commit().map_err(db(op))
        })
        .await
    }

    async fn archive_files(&self, limit: usize) -> Result<Vec<ArchiveFile>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.blocking("read archive files", move |conn| {
            let op = "read archive files";
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {FILE_COLUMNS} FROM archive_files
                     ORDER BY created_at_ms DESC, path DESC LIMIT ?1"
                ))
                .map_err(db(op))?;
            let rows = stmt
                .query_map([limit], |r| {
                    Ok(ArchiveFile {
                        path: r.get(0)?,
                        object: r.get(1)?,
                        day: r.get(2)?,
                        rows: r.get::<_, i64>(3)?.max(0) as u64,
                        bytes: r.get::<_, i64>(4)?.max(0) as u64,
                        payload_bytes: r.get::<_, i64>(5)?.max(0) as u64,
                        sha256: r.get(6)?,
                        min_offset: r.get(7)?,
                        max_offset: r.get(8)?,
                        min_commit_ms: r.get(9)?,
                        max_commit_ms: r.get(10)?,
                        created_at_ms: r.get(11)?,
                    })
                })
                .map_err(db(op))?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db(op))
        })
        .await
    }

    async fn forget_archive_partition(&self, object: &str, day: &str) -> Result<u64> {
        let (object, day) = (object.to_string(), day.to_string());
        self.blocking("forget archive partition", move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM archive_files WHERE object = ?1 AND day = ?2",
                    params![object, day],
                )
                .map_err(db("forget archive partition"))?;
            Ok(n as u64)
        })
        .await
    }

    async fn prune_raw_log(
        &self,
        through: LogOffset,
        before_ms: i64,
        dry_run: bool,
    ) -> Result<LogPrune> {
        let through = to_i64(through);
        let bound = self
            .blocking("read prune bound", move |conn| prune_bound(conn, through))
            .await?;
        let count = move |conn: &mut Connection| -> Result<(i64, Option<i64>)> {
            conn.query_row(
                "SELECT count(*), max(log_offset) FROM raw_changes
                 WHERE log_offset <= ?1 AND commit_timestamp < ?2",
                params![bound, before_ms],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db("count prunable log entries"))
        };
        if dry_run {
            let (n, last) = self
                .blocking_on(&self.log, "count prunable log entries", count)
                .await?;
            return Ok(LogPrune {
                entries: n.max(0) as u64,
                through_offset: last,
                bound,
            });
        }
        let mut out = LogPrune {
            bound,
            ..Default::default()
        };
        loop {
            let (n, last) = self
                .blocking_on(&self.log, "prune raw log", move |conn| {
                    let op = "prune raw log";
                    let tx = conn
                        .transaction_with_behavior(TransactionBehavior::Immediate)
                        .map_err(db(op))?;
                    let last: Option<i64> = tx
                        .query_row(
                            "SELECT max(log_offset) FROM (SELECT log_offset FROM raw_changes
                             WHERE log_offset <= ?1 AND commit_timestamp < ?2
                             ORDER BY log_offset LIMIT ?3)",
                            params![bound, before_ms, PRUNE_CHUNK],
                            |r| r.get(0),
                        )
                        .map_err(db(op))?;
                    let Some(last) = last else {
                        return Ok((0, None));
                    };
                    let n = tx
                        .execute(
                            "DELETE FROM raw_changes WHERE log_offset <= ?1
                             AND commit_timestamp < ?2",
                            params![last, before_ms],
                        )
                        .map_err(db(op))?;
                    tx.commit().map_err(db(op))?;
                    Ok((n as u64, Some(last)))
                })
                .await?;
            if n == 0 {
                break;
            }
            out.entries += n;
            out.through_offset = last.max(out.through_offset);
        }
        if out.entries > 0 {
            self.tail.clear();
        }
        Ok(out)
    }

    async fn prune_audit(&self, before_ms: i64, dry_run: bool) -> Result<AuditPrune> {
        if dry_run {
            return self
                .blocking("count prunable audit entries", move |conn| {
                    Ok(audit_cut(conn, before_ms)?
                        .map(|(_, p)| p)
                        .unwrap_or_default())
                })
                .await;
        }
        let mut total = AuditPrune::default();
        loop {
            let step = self
                .blocking("prune audit", move |conn| {
                    let op = "prune audit";
                    let tx = conn
                        .transaction_with_behavior(TransactionBehavior::Immediate)
                        .map_err(db(op))?;
                    let Some((cut, whole)) = audit_cut(&tx, before_ms)? else {
                        return Ok(None);
                    };
                    if whole.entries == 0 {
                        return Ok(None);
                    }
                    // One chunk: the oldest PRUNE_CHUNK entries of the prefix.
                    let (last, n, oldest, newest): (i64, i64, i64, i64) = tx
                        .query_row(
                            "SELECT max(seq), count(*), min(created_at_ms), max(created_at_ms)
                             FROM (SELECT seq, created_at_ms FROM audit_log WHERE seq < ?1
                                   ORDER BY seq LIMIT ?2)",
                            params![cut, PRUNE_CHUNK],
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                        )
                        .map_err(db(op))?;
                    let hash: String = tx
                        .query_row("SELECT hash FROM audit_log WHERE seq = ?1", [last], |r| {
                            r.get(0)
                        })
                        .map_err(db(op))?;
                    tx.execute("DELETE FROM audit_log WHERE seq <= ?1", [last])
                        .map_err(db(op))?;
                    tx.execute(
                        "INSERT INTO audit_anchor (id, seq, hash, pruned_entries, pruned_at_ms)
                         VALUES (1, ?1, ?2, ?3, ?4)
                         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq,
                             hash = excluded.hash,
                             pruned_entries = pruned_entries + excluded.pruned_entries,
                             pruned_at_ms = excluded.pruned_at_ms",
                        params![last, hash, n, now_ms()],
                    )
                    .map_err(db(op))?;
                    tx.commit().map_err(db(op))?;
                    Ok(Some((last, n, oldest, newest)))
                })
                .await?;
            let Some((last, n, oldest, newest)) = step else {
                break;
            };
            total.entries += n.max(0) as u64;
            total.oldest_ms = Some(total.oldest_ms.map_or(oldest, |o| o.min(oldest)));
            total.newest_ms = Some(total.newest_ms.map_or(newest, |o| o.max(newest)));
            total.through_seq = Some(last);
        }
        Ok(total)
    }

    async fn audit_anchor(&self) -> Result<Option<AuditAnchor>> {
        self.blocking("read audit anchor", |conn| anchor_in(conn))
            .await
    }
}
