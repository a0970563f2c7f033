//! [`Leases`] on Postgres (migration 18): expiry judged by the database's clock, so processes on
//! several machines agree on it; fenced writes check the lease inside their own transaction.

use async_trait::async_trait;
use tokio_postgres::{Row, Transaction};

use super::warehouse::db;
use super::{PostgresChangeLog, BACKEND};
use crate::error::{Result, StoreError};
use crate::lease::{Fence, Lease, Leases, LogPosition};

/// The database's clock in epoch milliseconds.
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::BIGINT";

fn lease_of(r: &Row) -> Result<Lease> {
    let get = db("read lease");
    Ok(Lease {
        name: r.try_get(0).map_err(&get)?,
        holder: r.try_get(1).map_err(&get)?,
        epoch: r.try_get(2).map_err(&get)?,
        acquired_at_ms: r.try_get(3).map_err(&get)?,
        renewed_at_ms: r.try_get(4).map_err(&get)?,
        expires_at_ms: r.try_get(5).map_err(&get)?,
    })
}

const COLUMNS: &str = "name, holder, epoch, acquired_at_ms, renewed_at_ms, expires_at_ms";

/// Checks, inside `tx`, that `fence` still holds (row locked until the transaction ends, so a
/// take-over waits for this write to finish or is seen by it).
pub(crate) async fn check_fence(tx: &Transaction<'_>, fence: &Fence) -> Result<()> {
    let row = tx
        .query_opt(
            &format!(
                "SELECT holder, epoch, expires_at_ms > {NOW_MS}, {NOW_MS}
                 FROM leases WHERE name = $1 FOR UPDATE"
            ),
            &[&fence.lease],
        )
        .await
        .map_err(db("check lease"))?;
    let fenced = |now: String| StoreError::Fenced {
        backend: BACKEND,
        lease: fence.lease.clone(),
        holder: fence.holder.clone(),
        epoch: fence.epoch,
        now,
    };
    let Some(r) = row else {
        return Err(fenced("no such lease".into()));
    };
    let holder: String = r.try_get(0).map_err(db("check lease"))?;
    let epoch: i64 = r.try_get(1).map_err(db("check lease"))?;
    let live: bool = r.try_get(2).map_err(db("check lease"))?;
    if holder != fence.holder || epoch != fence.epoch {
        return Err(fenced(format!("held by '{holder}' at epoch {epoch}")));
    }
    if !live {
        return Err(fenced("expired".into()));
    }
    Ok(())
}

/// Moves each position by compare-and-set inside `tx` (see [`LogPosition`]).
pub(crate) async fn move_positions(tx: &Transaction<'_>, positions: &[LogPosition]) -> Result<()> {
    for p in positions {
        let found = tx
            .query_opt(
                "SELECT log_offset FROM apply_offsets WHERE consumer = $1 FOR UPDATE",
                &[&p.consumer],
            )
            .await
            .map_err(db("read log position"))?
            .map(|r| r.try_get::<_, i64>(0))
            .transpose()
            .map_err(db("read log position"))?
            .map(|v| v.max(0) as u64);
        if found != p.expected {
            return Err(StoreError::PositionMoved {
                backend: BACKEND,
                consumer: p.consumer.clone(),
                expected: p.expected,
                found,
            });
        }
        let offset = i64::try_from(p.offset).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO apply_offsets (consumer, log_offset, updated_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (consumer) DO UPDATE SET log_offset = excluded.log_offset,
                 updated_at_ms = excluded.updated_at_ms",
            &[&p.consumer, &offset, &crate::now_ms()],
        )
        .await
        .map_err(db("write log position"))?;
    }
    Ok(())
}

#[async_trait]
impl Leases for PostgresChangeLog {
    async fn acquire_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<Option<Lease>> {
        let mut client = self.client.lock().await;
        let tx = client.transaction().await.map_err(db("begin lease"))?;
        // Insert, take over an expired lease (next epoch), or renew our own (same epoch).
        let row = tx
            .query_opt(
                &format!(
                    "INSERT INTO leases AS l (name, holder, epoch, acquired_at_ms, renewed_at_ms,
                         expires_at_ms)
                     VALUES ($1, $2, 1, {NOW_MS}, {NOW_MS}, {NOW_MS} + $3)
                     ON CONFLICT (name) DO UPDATE SET
                         holder = excluded.holder,
                         epoch = CASE WHEN l.holder = excluded.holder AND l.expires_at_ms > {NOW_MS}
                                      THEN l.epoch ELSE l.epoch + 1 END,
                         acquired_at_ms = CASE WHEN l.holder = excluded.holder
                                                    AND l.expires_at_ms > {NOW_MS}
                                               THEN l.acquired_at_ms ELSE excluded.acquired_at_ms END,
                         renewed_at_ms = excluded.renewed_at_ms,
                         expires_at_ms = excluded.expires_at_ms
                     WHERE l.holder = excluded.holder OR l.expires_at_ms <= {NOW_MS}
                     RETURNING {COLUMNS}"
                ),
                &[&name, &holder, &ttl_ms],
            )
            .await
            .map_err(db("acquire lease"))?;
        tx.commit().await.map_err(db("commit lease"))?;
        row.as_ref().map(lease_of).transpose()
    }

    async fn renew_lease(&self, fence: &Fence, ttl_ms: i64) -> Result<Option<Lease>> {
        let client = self.client.lock().await;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE leases SET renewed_at_ms = {NOW_MS}, expires_at_ms = {NOW_MS} + $4
                     WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at_ms > {NOW_MS}
                     RETURNING {COLUMNS}"
                ),
                &[&fence.lease, &fence.holder, &fence.epoch, &ttl_ms],
            )
            .await
            .map_err(db("renew lease"))?;
        row.as_ref().map(lease_of).transpose()
    }

    async fn release_lease(&self, fence: &Fence) -> Result<()> {
        let client = self.client.lock().await;
        client
            .execute(
                &format!(
                    "UPDATE leases SET expires_at_ms = {NOW_MS}
                     WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at_ms > {NOW_MS}"
                ),
                &[&fence.lease, &fence.holder, &fence.epoch],
            )
            .await
            .map_err(db("release lease"))?;
        Ok(())
    }

    async fn leases(&self) -> Result<Vec<Lease>> {
        let client = self.reader.lock().await;
        let rows = client
            .query(&format!("SELECT {COLUMNS} FROM leases ORDER BY name"), &[])
            .await
            .map_err(db("read leases"))?;
        rows.iter().map(lease_of).collect()
    }

    async fn append_fenced(
        &self,
        channel: &str,
        changes: &[crate::RawChange],
        dead_letters: &[crate::DeadLetter],
        checkpoint: &sfsync_core::ReplayId,
        fence: &Fence,
    ) -> Result<crate::AppendOutcome> {
        self.append(channel, changes, dead_letters, checkpoint, Some(fence))
            .await
    }
}
