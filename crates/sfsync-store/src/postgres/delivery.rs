//! [`Delivery`] on Postgres: reads on the reader connection, bookkeeping on the main one.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::warehouse::db;
use super::{PostgresChangeLog, BACKEND};
use crate::delivery::*;
use crate::error::{Result, StoreError};
use crate::now_ms;

const OUTBOX_COLUMNS: &str = "seq, object, record_id, change_type, event_key, commit_timestamp_ms,
    applied_at_ms, source, origin_client, fields, deleted, record, run_id";

fn outbox_row(r: &Row) -> Result<OutboxRow> {
    let g = db("decode delivery outbox row");
    Ok(OutboxRow {
        seq: r.try_get(0).map_err(&g)?,
        object: r.try_get(1).map_err(&g)?,
        record_id: r.try_get(2).map_err(&g)?,
        change_type: r.try_get(3).map_err(&g)?,
        event_key: r.try_get(4).map_err(&g)?,
        commit_timestamp_ms: r.try_get(5).map_err(&g)?,
        applied_at_ms: r.try_get(6).map_err(&g)?,
        source: r.try_get(7).map_err(&g)?,
        origin_client: r.try_get(8).map_err(&g)?,
        fields: r.try_get(9).map_err(&g)?,
        deleted: r.try_get(10).map_err(&g)?,
        record: r.try_get(11).map_err(&g)?,
        run_id: r.try_get(12).map_err(&g)?,
    })
}

const DEAD_COLUMNS: &str = "id, sink, state, reason, attempts, first_failed_at_ms, created_at_ms,
    updated_at_ms, note, change";

fn lim(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PostgresChangeLog {
    fn decode_dead(&self, rows: &[Row], pii: PiiMode) -> Result<Vec<DeliveryDeadLetter>> {
        let ctx = self.registry.ctx();
        rows.iter()
            .map(|r| {
                let g = db("decode delivery dead letter");
                let id: i64 = r.try_get(0).map_err(&g)?;
                let state: String = r.try_get(2).map_err(&g)?;
                let change: String = r.try_get(9).map_err(&g)?;
                Ok(DeliveryDeadLetter {
                    id,
                    sink: r.try_get(1).map_err(&g)?,
                    state: DeliveryDeadState::parse(&state).ok_or_else(|| StoreError::Corrupt {
                        backend: BACKEND,
                        table: "delivery_dead_letters",
                        offset: id,
                        reason: format!("unknown state '{state}'"),
                    })?,
                    reason: r.try_get(3).map_err(&g)?,
                    attempts: r.try_get(4).map_err(&g)?,
                    first_failed_at_ms: r.try_get(5).map_err(&g)?,
                    created_at_ms: r.try_get(6).map_err(&g)?,
                    updated_at_ms: r.try_get(7).map_err(&g)?,
                    note: r.try_get(8).map_err(&g)?,
                    change: decode_dead_letter_change(&ctx, BACKEND, id, &change, pii)?,
                })
            })
            .collect()
    }

    async fn set_dead_state(
        &self,
        ids: &[i64],
        note: &str,
        from: &'static str,
        to: &'static str,
    ) -> Result<Vec<i64>> {
        let client = self.client.lock().await;
        let rows = client
            .query(
                &format!(
                    "UPDATE delivery_dead_letters SET state = $2, note = $3, updated_at_ms = $4
                     WHERE id = ANY($1) AND state IN ({from}) RETURNING id"
                ),
                &[&ids, &to, &note, &now_ms()],
            )
            .await
            .map_err(db("change delivery dead letters"))?;
        let mut out: Vec<i64> = rows
            .iter()
            .map(|r| r.try_get(0).map_err(db("change delivery dead letters")))
            .collect::<Result<_>>()?;
        out.sort_unstable();
        Ok(out)
    }
}

#[async_trait]
impl Delivery for PostgresChangeLog {
    async fn outbox_read(
        &self,
        object: &str,
        after: i64,
        limit: usize,
        pii: PiiMode,
    ) -> Result<Vec<StoredDelivery>> {
        let rows = {
            let client = self.reader.lock().await;
            let stmt = self
                .reader_prepared(
                    &*client,
                    &format!(
                        "SELECT {OUTBOX_COLUMNS} FROM delivery_outbox
                         WHERE object = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                    ),
                )
                .await?;
            client
                .query(&stmt, &[&object, &after, &lim(limit)])
                .await
                .map_err(db("read delivery outbox"))?
        };
        let ctx = self.registry.ctx();
        rows.iter()
            .map(|r| decode_outbox(&ctx, BACKEND, "delivery_outbox", outbox_row(r)?, pii))
            .collect()
    }

    async fn outbox_head(&self) -> Result<i64> {
        let client = self.reader.lock().await;
        let r = client
            .query_one("SELECT max(seq) FROM delivery_outbox", &[])
            .await
            .map_err(db("read delivery outbox head"))?;
        let max: Option<i64> = r.try_get(0).map_err(db("read delivery outbox head"))?;
        Ok(max.unwrap_or(0))
    }

    fn pii_view(&self, change: &StoredDelivery, pii: PiiMode) -> Result<StoredDelivery> {
        crate::delivery::pii_view(&self.registry.ctx(), change, pii)
    }

    async fn outbox_bounds(&self, object: &str) -> Result<(i64, Option<i64>)> {
        let client = self.reader.lock().await;
        let r = client
            .query_one(
                "SELECT max(seq), min(seq) FROM delivery_outbox WHERE object = $1",
                &[&object],
            )
            .await
            .map_err(db("read delivery outbox bounds"))?;
        let g = db("read delivery outbox bounds");
        let max: Option<i64> = r.try_get(0).map_err(&g)?;
        Ok((max.unwrap_or(0), r.try_get(1).map_err(&g)?))
    }

    async fn delivery_positions(&self, sink: &str) -> Result<Vec<DeliveryPosition>> {
        let client = self.reader.lock().await;
        let rows = client
            .query(
                "SELECT sink, object, position, delivered, updated_at_ms
                 FROM delivery_positions WHERE sink = $1 ORDER BY object",
                &[&sink],
            )
            .await
            .map_err(db("read delivery positions"))?;
        rows.iter()
            .map(|r| {
                let g = db("read delivery positions");
                Ok(DeliveryPosition {
                    sink: r.try_get(0).map_err(&g)?,
                    object: r.try_get(1).map_err(&g)?,
                    position: r.try_get(2).map_err(&g)?,
                    delivered: r.try_get(3).map_err(&g)?,
                    updated_at_ms: r.try_get(4).map_err(&g)?,
                })
            })
            .collect()
    }

    async fn delivery_advance(
        &self,
        sink: &str,
        object: &str,
        position: i64,
        delivered: u64,
        dead: &[NewDeliveryDeadLetter],
    ) -> Result<()> {
        let delivered = i64::try_from(delivered).unwrap_or(i64::MAX);
        let now = now_ms();
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin delivery advance"))?;
        tx.execute(
            "INSERT INTO delivery_positions (sink, object, position, delivered, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (sink, object) DO UPDATE SET
                 position = greatest(delivery_positions.position, excluded.position),
                 delivered = delivery_positions.delivered + excluded.delivered,
                 updated_at_ms = excluded.updated_at_ms",
            &[&sink, &object, &position, &delivered, &now],
        )
        .await
        .map_err(db("advance delivery position"))?;
        for d in dead {
            let change = dead_letter_change_json(&d.change);
            tx.execute(
                "INSERT INTO delivery_dead_letters (sink, object, record_id, seq, event_key,
                     change, reason, attempts, first_failed_at_ms, state, created_at_ms,
                     updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $10)
                 ON CONFLICT (sink, seq) DO NOTHING",
                &[
                    &sink,
                    &d.change.object,
                    &d.change.record_id,
                    &d.change.seq,
                    &d.change.event_key,
                    &change,
                    &d.reason,
                    &d.attempts,
                    &d.first_failed_at_ms,
                    &now,
                ],
            )
            .await
            .map_err(db("store delivery dead letter"))?;
        }
        tx.commit().await.map_err(db("commit delivery advance"))
    }

    async fn held_records(&self, sink: &str, object: &str) -> Result<Vec<String>> {
        let client = self.reader.lock().await;
        let rows = client
            .query(
                "SELECT DISTINCT record_id FROM delivery_dead_letters
                 WHERE sink = $1 AND object = $2 AND state IN ('pending','redrive')",
                &[&sink, &object],
            )
            .await
            .map_err(db("read held records"))?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(db("read held records")))
            .collect()
    }

    async fn delivery_redrives(
        &self,
        sink: &str,
        object: &str,
        limit: usize,
        pii: PiiMode,
    ) -> Result<Vec<DeliveryDeadLetter>> {
        let rows = {
            let client = self.reader.lock().await;
            client
                .query(
                    &format!(
                        "SELECT {DEAD_COLUMNS} FROM delivery_dead_letters d
                         WHERE sink = $1 AND object = $2 AND state IN ('pending','redrive')
                           AND EXISTS (SELECT 1 FROM delivery_dead_letters r
                               WHERE r.sink = d.sink AND r.object = d.object
                                 AND r.record_id = d.record_id AND r.state = 'redrive')
                         ORDER BY seq LIMIT $3"
                    ),
                    &[&sink, &object, &lim(limit)],
                )
                .await
                .map_err(db("read delivery redrives"))?
        };
        self.decode_dead(&rows, pii)
    }

    async fn settle_delivery_redrives(&self, outcomes: &[(i64, RedriveOutcome)]) -> Result<()> {
        let now = now_ms();
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin settle delivery redrives"))?;
        for (id, o) in outcomes {
            match o {
                RedriveOutcome::Delivered => {
                    tx.execute(
                        "UPDATE delivery_dead_letters SET state = 'delivered',
                             attempts = attempts + 1, updated_at_ms = $2
                         WHERE id = $1 AND state IN ('pending','redrive')",
                        &[id, &now],
                    )
                    .await
                }
                RedriveOutcome::Failed { reason } => {
                    tx.execute(
                        "UPDATE delivery_dead_letters SET state = 'pending', reason = $2,
                             attempts = attempts + 1, updated_at_ms = $3
                         WHERE id = $1 AND state IN ('pending','redrive')",
                        &[id, reason, &now],
                    )
                    .await
                }
            }
            .map_err(db("settle delivery redrive"))?;
        }
        tx.commit()
            .await
            .map_err(db("commit settle delivery redrives"))
    }

    async fn delivery_dead_letters(
        &self,
        filter: &DeliveryDeadFilter,
        pii: PiiMode,
    ) -> Result<Vec<DeliveryDeadLetter>> {
        let states: Vec<String> = filter
            .states
            .iter()
            .map(|s| s.as_str().to_string())
            .collect();
        let rows = {
            let client = self.reader.lock().await;
            client
                .query(
                    &format!(
                        "SELECT {DEAD_COLUMNS} FROM delivery_dead_letters
                         WHERE ($1::text IS NULL OR sink = $1)
                           AND ($2::text IS NULL OR object = $2)
                           AND (cardinality($3::text[]) = 0 OR state = ANY($3))
                           AND id > $4
                         ORDER BY id LIMIT $5"
                    ),
                    &[
                        &filter.sink,
                        &filter.object,
                        &states,
                        &filter.after.unwrap_or(0),
                        &lim(filter.limit.max(1)),
                    ],
                )
                .await
                .map_err(db("read delivery dead letters"))?
        };
        self.decode_dead(&rows, pii)
    }

    async fn request_delivery_redrive(&self, ids: &[i64], note: &str) -> Result<Vec<i64>> {
        self.set_dead_state(ids, note, "'pending'", "redrive").await
    }

    async fn discard_delivery_dead_letters(&self, ids: &[i64], note: &str) -> Result<Vec<i64>> {
        self.set_dead_state(ids, note, "'pending','redrive'", "discarded")
            .await
    }

    async fn prune_outbox(&self, object: &str, through: i64) -> Result<u64> {
        let client = self.client.lock().await;
        client
            .execute(
                "DELETE FROM delivery_outbox WHERE object = $1 AND seq <= $2",
                &[&object, &through],
            )
            .await
            .map_err(db("prune delivery outbox"))
    }

    async fn delivery_backlog(&self, object: &str, position: i64) -> Result<DeliveryBacklog> {
        let client = self.reader.lock().await;
        let g = db("read delivery backlog");
        let r = client
            .query_one(
                "SELECT count(*) FROM (SELECT 1 FROM delivery_outbox
                     WHERE object = $1 AND seq > $2 LIMIT $3) b",
                &[&object, &position, &(BACKLOG_COUNT_CAP as i64)],
            )
            .await
            .map_err(&g)?;
        let entries: i64 = r.try_get(0).map_err(&g)?;
        let oldest = client
            .query_opt(
                "SELECT applied_at_ms FROM delivery_outbox
                 WHERE object = $1 AND seq > $2 ORDER BY seq LIMIT 1",
                &[&object, &position],
            )
            .await
            .map_err(&g)?;
        Ok(DeliveryBacklog {
            entries: entries.max(0) as u64,
            oldest_applied_at_ms: match oldest {
                Some(r) => Some(r.try_get(0).map_err(&g)?),
                None => None,
            },
        })
    }
}
