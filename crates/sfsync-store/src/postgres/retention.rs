//! [`Retention`] on Postgres: the same rules and chunking as the SQLite backend, in one
//! database (each chunk one transaction).

use async_trait::async_trait;
use sfsync_core::RecordVersion;
use tokio_postgres::GenericClient;

use super::warehouse::db;
use super::{to_i64, PostgresChangeLog};
use crate::archive::{ArchiveFile, ArchiveRow};
use crate::error::Result;
use crate::retention::{AuditAnchor, AuditPrune, LogPrune, Retention, PRUNE_CHUNK};
use crate::sqlite::StoredLogRow;
use crate::{now_ms, LogOffset};

async fn archived_through_in(c: &impl GenericClient) -> Result<i64> {
    let row = c
        .query_opt(
            "SELECT archived_through FROM archive_marks WHERE id = 1",
            &[],
        )
        .await
        .map_err(db("read archive mark"))?;
    Ok(match row {
        Some(r) => r.try_get(0).map_err(db("read archive mark"))?,
        None => 0,
    })
}

async fn prune_bound(c: &impl GenericClient, through: i64) -> Result<i64> {
    let archived = archived_through_in(c).await?;
    let r = c
        .query_one("SELECT count(*), min(log_offset) FROM apply_offsets", &[])
        .await
        .map_err(db("read apply offsets"))?;
    let consumers: i64 = r.try_get(0).map_err(db("read apply offsets"))?;
    let applied: Option<i64> = r.try_get(1).map_err(db("read apply offsets"))?;
    let applied = if consumers == 0 {
        0
    } else {
        applied.unwrap_or(0)
    };
    Ok(through.min(archived).min(applied).max(0))
}

async fn audit_cut(c: &impl GenericClient, before_ms: i64) -> Result<Option<(i64, AuditPrune)>> {
    let op = "read audit";
    let max_seq: Option<i64> = c
        .query_one("SELECT max(seq) FROM audit_log", &[])
        .await
        .map_err(db(op))?
        .try_get(0)
        .map_err(db(op))?;
    let Some(max_seq) = max_seq else {
        return Ok(None);
    };
    let first_kept: Option<i64> = c
        .query_one(
            "SELECT min(seq) FROM audit_log WHERE created_at_ms >= $1",
            &[&before_ms],
        )
        .await
        .map_err(db(op))?
        .try_get(0)
        .map_err(db(op))?;
    let cut = first_kept.unwrap_or(max_seq).min(max_seq);
    let r = c
        .query_one(
            "SELECT count(*), min(created_at_ms), max(created_at_ms), max(seq)
             FROM audit_log WHERE seq < $1",
            &[&cut],
        )
        .await
        .map_err(db(op))?;
    let n: i64 = r.try_get(0).map_err(db(op))?;
    Ok(Some((
        cut,
        AuditPrune {
            entries: n.max(0) as u64,
            oldest_ms: r.try_get(1).map_err(db(op))?,
            newest_ms: r.try_get(2).map_err(db(op))?,
            through_seq: r.try_get(3).map_err(db(op))?,
        },
    )))
}

pub(super) async fn anchor_in(c: &impl GenericClient) -> Result<Option<AuditAnchor>> {
    let op = "read audit anchor";
    let row = c
        .query_opt(
            "SELECT seq, hash, pruned_entries, pruned_at_ms FROM audit_anchor WHERE id = 1",
            &[],
        )
        .await
        .map_err(db(op))?;
    row.map(|r| {
        Ok(AuditAnchor {
            seq: r.try_get(0).map_err(db(op))?,
            hash: r.try_get(1).map_err(db(op))?,
            pruned_entries: r.try_get(2).map_err(db(op))?,
            pruned_at_ms: r.try_get(3).map_err(db(op))?,
        })
    })
    .transpose()
}

const FILE_COLUMNS: &str = "path, object, day, rows, bytes, payload_bytes, sha256, min_offset, \
    max_offset, min_commit_ms, max_commit_ms, created_at_ms";

#[async_trait]
impl Retention for PostgresChangeLog {
    async fn archive_rows(
        &self,
        from: LogOffset,
        through: LogOffset,
        limit: usize,
    ) -> Result<Vec<ArchiveRow>> {
        let op = "archive rows";
        let ctx = self.registry.ctx();
        let (from, through) = (to_i64(from), to_i64(through));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.reader.lock().await;
        let rows = client
            .query(
                "SELECT log_offset, channel, event_key, replay_id, schema_id, entity,
                     change_type, commit_timestamp, commit_number, sequence_number, payload,
                     appended_at_ms
                 FROM raw_changes WHERE log_offset >= $1 AND log_offset <= $2
                 ORDER BY log_offset LIMIT $3",
                &[&from, &through, &limit],
            )
            .await
            .map_err(db(op))?;
        drop(client);
        let get = db("decode log row");
        let mut stored = Vec::with_capacity(rows.len());
        for r in rows {
            stored.push((
                StoredLogRow {
                    offset: r.try_get(0).map_err(&get)?,
                    channel: r.try_get(1).map_err(&get)?,
                    event_key: r.try_get(2).map_err(&get)?,
                    replay_id: r.try_get(3).map_err(&get)?,
                    schema_id: r.try_get(4).map_err(&get)?,
                    entity: r.try_get(5).map_err(&get)?,
                    change_type: r.try_get(6).map_err(&get)?,
                    version: RecordVersion {
                        commit_timestamp: r.try_get(7).map_err(&get)?,
                        commit_number: r.try_get(8).map_err(&get)?,
                        sequence_number: r.try_get(9).map_err(&get)?,
                    },
                    payload: r.try_get(10).map_err(&get)?,
                },
                r.try_get::<_, i64>(11).map_err(&get)?,
            ));
        }
        crate::warehouse::cpu_bound(|| {
            stored
                .into_iter()
                .map(|(r, appended)| r.into_archive_row(&ctx, appended))
                .collect()
        })
    }

    async fn archived_through(&self) -> Result<LogOffset> {
        let client = self.client.lock().await;
        Ok(archived_through_in(&*client).await?.max(0) as LogOffset)
    }

    async fn record_archived(&self, files: &[ArchiveFile], through: LogOffset) -> Result<()> {
        let op = "record archived files";
        let through = to_i64(through);
        let mut client = self.client.lock().await;
        let tx = client.transaction().await.map_err(db(op))?;
        for f in files {
            let (rows, bytes, payload) = (f.rows as i64, f.bytes as i64, f.payload_bytes as i64);
            tx.execute(
                &format!(
                    "INSERT INTO archive_files ({FILE_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                     ON CONFLICT (path) DO UPDATE SET object = excluded.object,
                         day = excluded.day, rows = excluded.rows, bytes = excluded.bytes,
                         payload_bytes = excluded.payload_bytes, sha256 = excluded.sha256,
                         min_offset = excluded.min_offset, max_offset = excluded.max_offset,
                         min_commit_ms = excluded.min_commit_ms,
                         max_commit_ms = excluded.max_commit_ms,
                         created_at_ms = excluded.created_at_ms"
                ),
                &[
                    &f.path,
                    &f.object,
                    &f.day,
                    &rows,
                    &bytes,
                    &payload,
                    &f.sha256,
                    &f.min_offset,
                    &f.max_offset,
                    &f.min_commit_ms,
                    &f.max_commit_ms,
                    &f.created_at_ms,
                ],
            )
            .await
            .map_err(db(op))?;
        }
        tx.execute(
            "INSERT INTO archive_marks (id, archived_through, updated_at_ms) VALUES (1, $1, $2)
             ON CONFLICT (id) DO UPDATE SET
                 archived_through = greatest(archive_marks.archived_through,
                     excluded.archived_through),
                 updated_at_ms = excluded.updated_at_ms",
            &[&through, &now_ms()],
        )
        .await
        .map_err(db(op))?;
        tx.commit().await.map_err(db(op))
    }

    async fn archive_files(&self, limit: usize) -> Result<Vec<ArchiveFile>> {
        let op = "read archive files";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client.lock().await;
        let rows = client
            .query(
                &format!(
                    "SELECT {FILE_COLUMNS} FROM archive_files
                     ORDER BY created_at_ms DESC, path DESC LIMIT $1"
                ),
                &[&limit],
            )
            .await
            .map_err(db(op))?;
        rows.iter()
            .map(|r| {
                let get = db(op);
                Ok(ArchiveFile {
                    path: r.try_get(0).map_err(&get)?,
                    object: r.try_get(1).map_err(&get)?,
                    day: r.try_get(2).map_err(&get)?,
                    rows: r.try_get::<_, i64>(3).map_err(&get)?.max(0) as u64,
                    bytes: r.try_get::<_, i64>(4).map_err(&get)?.max(0) as u64,
                    payload_bytes: r.try_get::<_, i64>(5).map_err(&get)?.max(0) as u64,
                    sha256: r.try_get(6).map_err(&get)?,
                    min_offset: r.try_get(7).map_err(&get)?,
                    max_offset: r.try_get(8).map_err(&get)?,
                    min_commit_ms: r.try_get(9).map_err(&get)?,
                    max_commit_ms: r.try_get(10).map_err(&get)?,
                    created_at_ms: r.try_get(11).map_err(&get)?,
                })
            })
            .collect()
    }

    async fn forget_archive_partition(&self, object: &str, day: &str) -> Result<u64> {
        let client = self.client.lock().await;
        client
            .execute(
                "DELETE FROM archive_files WHERE object = $1 AND day = $2",
                &[&object, &day],
            )
            .await
            .map_err(db("forget archive partition"))
    }

    async fn prune_raw_log(
        &self,
        through: LogOffset,
        before_ms: i64,
        dry_run: bool,
    ) -> Result<LogPrune> {
        let through = to_i64(through);
        let mut client = self.client.lock().await;
        let bound = prune_bound(&*client, through).await?;
        if dry_run {
            let op = "count prunable log entries";
            let r = client
                .query_one(
                    "SELECT count(*), max(log_offset) FROM raw_changes
                     WHERE log_offset <= $1 AND commit_timestamp < $2",
                    &[&bound, &before_ms],
                )
                .await
                .map_err(db(op))?;
            let n: i64 = r.try_get(0).map_err(db(op))?;
            return Ok(LogPrune {
                entries: n.max(0) as u64,
                through_offset: r.try_get(1).map_err(db(op))?,
                bound,
            });
        }
        let mut out = LogPrune {
            bound,
            ..Default::default()
        };
        let op = "prune raw log";
        loop {
            let tx = client.transaction().await.map_err(db(op))?;
            let last: Option<i64> = tx
                .query_one(
                    "SELECT max(log_offset) FROM (SELECT log_offset FROM raw_changes
                     WHERE log_offset <= $1 AND commit_timestamp < $2
                     ORDER BY log_offset LIMIT $3) c",
                    &[&bound, &before_ms, &PRUNE_CHUNK],
                )
                .await
                .map_err(db(op))?
                .try_get(0)
                .map_err(db(op))?;
            let Some(last) = last else {
                break;
            };
            let n = tx
                .execute(
                    "DELETE FROM raw_changes WHERE log_offset <= $1 AND commit_timestamp < $2",
                    &[&last, &before_ms],
                )
                .await
                .map_err(db(op))?;
            tx.commit().await.map_err(db(op))?;
            if n == 0 {
                break;
            }
            out.entries += n;
            out.through_offset = Some(last).max(out.through_offset);
        }
        Ok(out)
    }

    async fn prune_audit(&self, before_ms: i64, dry_run: bool) -> Result<AuditPrune> {
        let mut client = self.client.lock().await;
        if dry_run {
            return Ok(audit_cut(&*client, before_ms)
                .await?
                .map(|(_, p)| p)
                .unwrap_or_default());
        }
        let op = "prune audit";
        let mut total = AuditPrune::default();
        loop {
            let tx = client.transaction().await.map_err(db(op))?;
            // The table lock serialises this with appends, which read the chain head.
            tx.batch_execute("LOCK TABLE audit_log IN EXCLUSIVE MODE")
                .await
                .map_err(db(op))?;
            let Some((cut, whole)) = audit_cut(&tx, before_ms).await? else {
                break;
            };
            if whole.entries == 0 {
                break;
            }
            let r = tx
                .query_one(
                    "SELECT max(seq), count(*), min(created_at_ms), max(created_at_ms)
                     FROM (SELECT seq, created_at_ms FROM audit_log WHERE seq < $1
                           ORDER BY seq LIMIT $2) c",
                    &[&cut, &PRUNE_CHUNK],
                )
                .await
                .map_err(db(op))?;
            let last: i64 = r.try_get(0).map_err(db(op))?;
            let n: i64 = r.try_get(1).map_err(db(op))?;
            let oldest: i64 = r.try_get(2).map_err(db(op))?;
            let newest: i64 = r.try_get(3).map_err(db(op))?;
            let hash: String = tx
                .query_one("SELECT hash FROM audit_log WHERE seq = $1", &[&last])
                .await
                .map_err(db(op))?
                .try_get(0)
                .map_err(db(op))?;
            tx.execute("DELETE FROM audit_log WHERE seq <= $1", &[&last])
                .await
                .map_err(db(op))?;
            tx.execute(
                "INSERT INTO audit_anchor (id, seq, hash, pruned_entries, pruned_at_ms)
                 VALUES (1, $1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
                     pruned_entries = audit_anchor.pruned_entries + excluded.pruned_entries,
                     pruned_at_ms = excluded.pruned_at_ms",
                &[&last, &hash, &n, &now_ms()],
            )
            .await
            .map_err(db(op))?;
            tx.commit().await.map_err(db(op))?;
            total.entries += n.max(0) as u64;
            total.oldest_ms = Some(total.oldest_ms.map_or(oldest, |o| o.min(oldest)));
            total.newest_ms = Some(total.newest_ms.map_or(newest, |o| o.max(newest)));
            total.through_seq = Some(last);
        }
        Ok(total)
    }

    async fn audit_anchor(&self) -> Result<Option<AuditAnchor>> {
        let client = self.client.lock().await;
        anchor_in(&*client).await
    }
}
