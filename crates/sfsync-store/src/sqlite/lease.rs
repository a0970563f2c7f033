//! [`Leases`] on SQLite (migration 18), in the warehouse file with the local clock. SQLite is the
//! single-machine store: leases work for processes sharing the file, but a fenced append is
//! refused — the raw log may live in a separate file, so the fence could not be checked in the
//! append's own transaction. Run roles across processes on Postgres.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{SqliteChangeLog, BACKEND};
use crate::error::{Result, StoreError};
use crate::lease::{Fence, Lease, Leases, LogPosition};

const COLUMNS: &str = "name, holder, epoch, acquired_at_ms, renewed_at_ms, expires_at_ms";

fn lease_of(r: &Row<'_>) -> rusqlite::Result<Lease> {
    Ok(Lease {
        name: r.get(0)?,
        holder: r.get(1)?,
        epoch: r.get(2)?,
        acquired_at_ms: r.get(3)?,
        renewed_at_ms: r.get(4)?,
        expires_at_ms: r.get(5)?,
    })
}

fn err(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::sqlite(op, e)
}

/// Moves each position by compare-and-set on `conn` (inside the caller's transaction).
pub(crate) fn move_positions(conn: &Connection, positions: &[LogPosition]) -> Result<()> {
    for p in positions {
        let found: Option<i64> = conn
            .prepare_cached("SELECT log_offset FROM apply_offsets WHERE consumer = ?1")
            .and_then(|mut s| s.query_row([&p.consumer], |r| r.get(0)).optional())
            .map_err(err("read log position"))?;
        let found = found.map(|v| v.max(0) as u64);
        if found != p.expected {
            return Err(StoreError::PositionMoved {
                backend: BACKEND,
                consumer: p.consumer.clone(),
                expected: p.expected,
                found,
            });
        }
        conn.execute(
            "INSERT INTO apply_offsets (consumer, log_offset, updated_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (consumer) DO UPDATE SET log_offset = excluded.log_offset,
                 updated_at_ms = excluded.updated_at_ms",
            params![
                p.consumer,
                i64::try_from(p.offset).unwrap_or(i64::MAX),
                crate::now_ms()
            ],
        )
        .map_err(err("write log position"))?;
    }
    Ok(())
}

#[async_trait]
impl Leases for SqliteChangeLog {
    async fn acquire_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<Option<Lease>> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.blocking("acquire lease", move |conn| {
            let now = crate::now_ms();
            conn.query_row(
                &format!(
                    "INSERT INTO leases AS l ({COLUMNS}) VALUES (?1, ?2, 1, ?3, ?3, ?3 + ?4)
                     ON CONFLICT (name) DO UPDATE SET
                         holder = excluded.holder,
                         epoch = CASE WHEN l.holder = excluded.holder AND l.expires_at_ms > ?3
                                      THEN l.epoch ELSE l.epoch + 1 END,
                         acquired_at_ms = CASE WHEN l.holder = excluded.holder
                                                    AND l.expires_at_ms > ?3
                                               THEN l.acquired_at_ms ELSE ?3 END,
                         renewed_at_ms = ?3,
                         expires_at_ms = ?3 + ?4
                     WHERE l.holder = excluded.holder OR l.expires_at_ms <= ?3
                     RETURNING {COLUMNS}"
                ),
                params![name, holder, now, ttl_ms],
                lease_of,
            )
            .optional()
            .map_err(err("acquire lease"))
        })
        .await
    }

    async fn renew_lease(&self, fence: &Fence, ttl_ms: i64) -> Result<Option<Lease>> {
        let f = fence.clone();
        self.blocking("renew lease", move |conn| {
            let now = crate::now_ms();
            conn.query_row(
                &format!(
                    "UPDATE leases SET renewed_at_ms = ?4, expires_at_ms = ?4 + ?5
                     WHERE name = ?1 AND holder = ?2 AND epoch = ?3 AND expires_at_ms > ?4
                     RETURNING {COLUMNS}"
                ),
                params![f.lease, f.holder, f.epoch, now, ttl_ms],
                lease_of,
            )
            .optional()
            .map_err(err("renew lease"))
        })
        .await
    }

    async fn release_lease(&self, fence: &Fence) -> Result<()> {
        let f = fence.clone();
        self.blocking("release lease", move |conn| {
            let now = crate::now_ms();
            conn.execute(
                "UPDATE leases SET expires_at_ms = ?4
                 WHERE name = ?1 AND holder = ?2 AND epoch = ?3 AND expires_at_ms > ?4",
                params![f.lease, f.holder, f.epoch, now],
            )
            .map_err(err("release lease"))?;
            Ok(())
        })
        .await
    }

    async fn leases(&self) -> Result<Vec<Lease>> {
        self.blocking("read leases", move |conn| {
            let mut stmt = conn
                .prepare(&format!("SELECT {COLUMNS} FROM leases ORDER BY name"))
                .map_err(err("read leases"))?;
            let rows = stmt
                .query_map([], lease_of)
                .map_err(err("read leases"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(err("read leases"));
            rows
        })
        .await
    }

    async fn append_fenced(
        &self,
        channel: &str,
        _changes: &[crate::RawChange],
        _dead_letters: &[crate::DeadLetter],
        _checkpoint: &sfsync_core::ReplayId,
        fence: &Fence,
    ) -> Result<crate::AppendOutcome> {
        Err(StoreError::InvalidInput {
            backend: BACKEND,
            op: "fenced append",
            reason: format!(
                "channel '{channel}' under lease '{}': writes fenced by a lease need the Postgres \
                 store (run roles across processes on Postgres)",
                fence.lease
            ),
        })
    }
}
