//! [`Delivery`] on SQLite: the outbox and the sinks' bookkeeping live in the warehouse file.
//! Reads go through the read-only connection (WAL: they never wait for the writer).

use async_trait::async_trait;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, TransactionBehavior};

use super::{SqliteChangeLog, BACKEND};
use crate::delivery::*;
use crate::error::{Result, StoreError};
use crate::now_ms;

fn db(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::sqlite(op, e)
}

fn lim(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Inserts a batch's outbox entries (inside the curated commit's transaction).
pub(super) fn insert_outbox(conn: &Connection, entries: &[EncodedOutbox<'_>]) -> Result<()> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO delivery_outbox (object, record_id, change_type, event_key,
                 commit_timestamp_ms, applied_at_ms, source, origin_client, fields, deleted,
                 record, run_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )
        .map_err(db("prepare delivery outbox insert"))?;
    for e in entries {
        let c = e.change;
        stmt.execute(params![
            c.object,
            c.record_id,
            c.change_type,
            c.event_key,
            c.commit_timestamp_ms,
            c.applied_at_ms,
            c.source.as_str(),
            c.origin_client,
            e.fields,
            c.deleted,
            e.record,
            c.run_id,
        ])
        .map_err(super::warehouse::write_failed(
            &c.object,
            &c.record_id,
            || format!("delivery outbox entry of event {}", c.event_key),
        ))?;
    }
    Ok(())
}

const OUTBOX_COLUMNS: &str = "seq, object, record_id, change_type, event_key, commit_timestamp_ms,
    applied_at_ms, source, origin_client, fields, deleted, record, run_id";

fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        seq: r.get(0)?,
        object: r.get(1)?,
        record_id: r.get(2)?,
        change_type: r.get(3)?,
        event_key: r.get(4)?,
        commit_timestamp_ms: r.get(5)?,
        applied_at_ms: r.get(6)?,
        source: r.get(7)?,
        origin_client: r.get(8)?,
        fields: r.get(9)?,
        deleted: r.get(10)?,
        record: r.get(11)?,
        run_id: r.get(12)?,
    })
}

const DEAD_COLUMNS: &str = "id, sink, state, reason, attempts, first_failed_at_ms, created_at_ms,
    updated_at_ms, note, change";

struct DeadRow {
    id: i64,
    sink: String,
    state: String,
    reason: String,
    attempts: i64,
    first_failed_at_ms: i64,
    created_at_ms: i64,
    updated_at_ms: i64,
    note: Option<String>,
    change: String,
}

fn dead_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadRow> {
    Ok(DeadRow {
        id: r.get(0)?,
        sink: r.get(1)?,
        state: r.get(2)?,
        reason: r.get(3)?,
        attempts: r.get(4)?,
        first_failed_at_ms: r.get(5)?,
        created_at_ms: r.get(6)?,
        updated_at_ms: r.get(7)?,
        note: r.get(8)?,
        change: r.get(9)?,
    })
}

impl SqliteChangeLog {
    fn decode_dead(&self, rows: Vec<DeadRow>, pii: PiiMode) -> Result<Vec<DeliveryDeadLetter>> {
        let ctx = self.registry.ctx();
        rows.into_iter()
            .map(|d| {
                let state =
                    DeliveryDeadState::parse(&d.state).ok_or_else(|| StoreError::Corrupt {
                        backend: BACKEND,
                        table: "delivery_dead_letters",
                        offset: d.id,
                        reason: format!("unknown state '{}'", d.state),
                    })?;
                Ok(DeliveryDeadLetter {
                    id: d.id,
                    sink: d.sink,
                    state,
                    reason: d.reason,
                    attempts: d.attempts,
                    first_failed_at_ms: d.first_failed_at_ms,
                    created_at_ms: d.created_at_ms,
                    updated_at_ms: d.updated_at_ms,
                    note: d.note,
                    change: decode_dead_letter_change(&ctx, BACKEND, d.id, &d.change, pii)?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl Delivery for SqliteChangeLog {
    async fn outbox_read(
        &self,
        object: &str,
        after: i64,
        limit: usize,
        pii: PiiMode,
    ) -> Result<Vec<StoredDelivery>> {
        let object_owned = object.to_string();
        let rows = self
            .blocking_on(&self.reader, "read delivery outbox", move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {OUTBOX_COLUMNS} FROM delivery_outbox
                         WHERE object = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
                    ))
                    .map_err(db("read delivery outbox"))?;
                let rows = stmt
                    .query_map(params![object_owned, after, lim(limit)], outbox_row)
                    .map_err(db("read delivery outbox"))?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(db("read delivery outbox"))?;
                Ok(rows)
            })
            .await?;
        let ctx = self.registry.ctx();
        rows.into_iter()
            .map(|r| decode_outbox(&ctx, BACKEND, "delivery_outbox", r, pii))
            .collect()
    }

    async fn outbox_head(&self) -> Result<i64> {
        self.blocking_on(&self.reader, "read delivery outbox head", |conn| {
            let max: Option<i64> = conn
                .query_row("SELECT max(seq) FROM delivery_outbox", [], |r| r.get(0))
                .map_err(db("read delivery outbox head"))?;
            Ok(max.unwrap_or(0))
        })
        .await
    }

    fn pii_view(&self, change: &StoredDelivery, pii: PiiMode) -> Result<StoredDelivery> {
        crate::delivery::pii_view(&self.registry.ctx(), change, pii)
    }

    async fn outbox_bounds(&self, object: &str) -> Result<(i64, Option<i64>)> {
        let object = object.to_string();
        self.blocking_on(&self.reader, "read delivery outbox bounds", move |conn| {
            let (max, min): (Option<i64>, Option<i64>) = conn
                .query_row(
                    "SELECT max(seq), min(seq) FROM delivery_outbox WHERE object = ?1",
                    [&object],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(db("read delivery outbox bounds"))?;
            Ok((max.unwrap_or(0), min))
        })
        .await
    }

    async fn delivery_positions(&self, sink: &str) -> Result<Vec<DeliveryPosition>> {
        let sink = sink.to_string();
        self.blocking_on(&self.reader, "read delivery positions", move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT sink, object, position, delivered, updated_at_ms
                     FROM delivery_positions WHERE sink = ?1 ORDER BY object",
                )
                .map_err(db("read delivery positions"))?;
            let rows = stmt
                .query_map([&sink], |r| {
                    Ok(DeliveryPosition {
                        sink: r.get(0)?,
                        object: r.get(1)?,
                        position: r.get(2)?,
                        delivered: r.get(3)?,
                        updated_at_ms: r.get(4)?,
                    })
                })
                .map_err(db("read delivery positions"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db("read delivery positions"))?;
            Ok(rows)
        })
        .await
    }

    async fn delivery_advance(
        &self,
        sink: &str,
        object: &str,
        position: i64,
        delivered: u64,
        dead: &[NewDeliveryDeadLetter],
    ) -> Result<()> {
        let (sink, object) = (sink.to_string(), object.to_string());
        let dead: Vec<(NewDeliveryDeadLetter, String)> = dead
            .iter()
            .map(|d| (d.clone(), dead_letter_change_json(&d.change)))
            .collect();
        let delivered = i64::try_from(delivered).unwrap_or(i64::MAX);
        self.blocking("advance delivery position", move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db("begin delivery advance"))?;
            let now = now_ms();
            tx.execute(
                "INSERT INTO delivery_positions (sink, object, position, delivered, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (sink, object) DO UPDATE SET
                     position = max(position, excluded.position),
                     delivered = delivered + excluded.delivered,
                     updated_at_ms = excluded.updated_at_ms",
                params![sink, object, position, delivered, now],
            )
            .map_err(db("advance delivery position"))?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO delivery_dead_letters (sink, object, record_id, seq,
                             event_key, change, reason, attempts, first_failed_at_ms, state,
                             created_at_ms, updated_at_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', ?10, ?10)
                         ON CONFLICT (sink, seq) DO NOTHING",
                    )
                    .map_err(db("store delivery dead letter"))?;
                for (d, change) in &dead {
                    stmt.execute(params![
                        sink,
                        d.change.object,
                        d.change.record_id,
                        d.change.seq,
                        d.change.event_key,
                        change,
                        d.reason,
                        d.attempts,
                        d.first_failed_at_ms,
                        now
                    ])
                    .map_err(db("store delivery dead letter"))?;
                }
            }
            tx.commit().map_err(db("commit delivery advance"))
        })
        .await
    }

    async fn held_records(&self, sink: &str, object: &str) -> Result<Vec<String>> {
        let (sink, object) = (sink.to_string(), object.to_string());
        self.blocking_on(&self.reader, "read held records", move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT DISTINCT record_id FROM delivery_dead_letters
                     WHERE sink = ?1 AND object = ?2 AND state IN ('pending','redrive')",
                )
                .map_err(db("read held records"))?;
            let rows = stmt
                .query_map(params![sink, object], |r| r.get(0))
                .map_err(db("read held records"))?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(db("read held records"))?;
            Ok(rows)
        })
        .await
    }

    async fn delivery_redrives(
        &self,
        sink: &str,
        object: &str,
        limit: usize,
        pii: PiiMode,
    ) -> Result<Vec<DeliveryDeadLetter>> {
        let (sink, object) = (sink.to_string(), object.to_string());
        let rows = self
            .blocking_on(&self.reader, "read delivery redrives", move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {DEAD_COLUMNS} FROM delivery_dead_letters d
                         WHERE sink = ?1 AND object = ?2 AND state IN ('pending','redrive')
                           AND EXISTS (SELECT 1 FROM delivery_dead_letters r
                               WHERE r.sink = d.sink AND r.object = d.object
                                 AND r.record_id = d.record_id AND r.state = 'redrive')
                         ORDER BY seq LIMIT ?3"
                    ))
                    .map_err(db("read delivery redrives"))?;
                let rows = stmt
                    .query_map(params![sink, object, lim(limit)], dead_row)
                    .map_err(db("read delivery redrives"))?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(db("read delivery redrives"))?;
                Ok(rows)
            })
            .await?;
        self.decode_dead(rows, pii)
    }

    async fn settle_delivery_redrives(&self, outcomes: &[(i64, RedriveOutcome)]) -> Result<()> {
        let outcomes = outcomes.to_vec();
        self.blocking("settle delivery redrives", move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db("begin settle delivery redrives"))?;
            let now = now_ms();
            for (id, o) in &outcomes {
                match o {
                    RedriveOutcome::Delivered => tx.execute(
                        "UPDATE delivery_dead_letters SET state = 'delivered',
                             attempts = attempts + 1, updated_at_ms = ?2
                         WHERE id = ?1 AND state IN ('pending','redrive')",
                        params![id, now],
                    ),
                    RedriveOutcome::Failed { reason } => tx.execute(
                        "UPDATE delivery_dead_letters SET state = 'pending', reason = ?2,
                             attempts = attempts + 1, updated_at_ms = ?3
                         WHERE id = ?1 AND state IN ('pending','redrive')",
                        params![id, reason, now],
                    ),
                }
                .map_err(db("settle delivery redrive"))?;
            }
            tx.commit().map_err(db("commit settle delivery redrives"))
        })
        .await
    }

    async fn delivery_dead_letters(
        &self,
        filter: &DeliveryDeadFilter,
        pii: PiiMode,
    ) -> Result<Vec<DeliveryDeadLetter>> {
        let f = filter.clone();
        let rows = self
            .blocking_on(&self.reader, "read delivery dead letters", move |conn| {
                let mut sql = format!("SELECT {DEAD_COLUMNS} FROM delivery_dead_letters WHERE 1=1");
                let mut args: Vec<rusqlite::types::Value> = Vec::new();
                if let Some(s) = &f.sink {
                    args.push(s.clone().into());
                    sql.push_str(&format!(" AND sink = ?{}", args.len()));
                }
                if let Some(o) = &f.object {
                    args.push(o.clone().into());
                    sql.push_str(&format!(" AND object = ?{}", args.len()));
                }
                if !f.states.is_empty() {
                    let list: Vec<String> = f
                        .states
                        .iter()
                        .map(|s| format!("'{}'", s.as_str()))
                        .collect();
                    sql.push_str(&format!(" AND state IN ({})", list.join(",")));
                }
                if let Some(a) = f.after {
                    args.push(a.into());
                    sql.push_str(&format!(" AND id > ?{}", args.len()));
                }
                args.push(lim(f.limit.max(1)).into());
                sql.push_str(&format!(" ORDER BY id LIMIT ?{}", args.len()));
                let mut stmt = conn
                    .prepare(&sql)
                    .map_err(db("read delivery dead letters"))?;
                let rows = stmt
                    .query_map(params_from_iter(args), dead_row)
                    .map_err(db("read delivery dead letters"))?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(db("read delivery dead letters"))?;
                Ok(rows)
            })
            .await?;
        self.decode_dead(rows, pii)
    }

    async fn request_delivery_redrive(&self, ids: &[i64], note: &str) -> Result<Vec<i64>> {
        self.set_dead_state(ids, note, "'pending'", "redrive").await
    }

    async fn discard_delivery_dead_letters(&self, ids: &[i64], note: &str) -> Result<Vec<i64>> {
        self.set_dead_state(ids, note, "'pending','redrive'", "discarded")
            .await
    }

    async fn prune_outbox(&self, object: &str, through: i64) -> Result<u64> {
        let object = object.to_string();
        self.blocking("prune delivery outbox", move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM delivery_outbox WHERE object = ?1 AND seq <= ?2",
                    params![object, through],
                )
                .map_err(db("prune delivery outbox"))?;
            Ok(n as u64)
        })
        .await
    }

    async fn delivery_backlog(&self, object: &str, position: i64) -> Result<DeliveryBacklog> {
        let object = object.to_string();
        self.blocking_on(&self.reader, "read delivery backlog", move |conn| {
            let entries: i64 = conn
                .query_row(
                    "SELECT count(*) FROM (SELECT 1 FROM delivery_outbox
                         WHERE object = ?1 AND seq > ?2 LIMIT ?3)",
                    params![object, position, BACKLOG_COUNT_CAP as i64],
                    |r| r.get(0),
                )
                .map_err(db("read delivery backlog"))?;
            let oldest: Option<i64> = conn
                .query_row(
                    "SELECT applied_at_ms FROM delivery_outbox
                     WHERE object = ?1 AND seq > ?2 ORDER BY seq LIMIT 1",
                    params![object, position],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db("read delivery backlog"))?;
            Ok(DeliveryBacklog {
                entries: entries.max(0) as u64,
                oldest_applied_at_ms: oldest,
            })
        })
        .await
    }
}

impl SqliteChangeLog {
    async fn set_dead_state(
        &self,
        ids: &[i64],
        note: &str,
        from: &'static str,
        to: &'static str,
    ) -> Result<Vec<i64>> {
        let (ids, note) = (ids.to_vec(), note.to_string());
        self.blocking("change delivery dead letters", move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db("begin change delivery dead letters"))?;
            let now = now_ms();
            let mut changed = Vec::new();
            for id in ids {
                let n = tx
                    .execute(
                        &format!(
                            "UPDATE delivery_dead_letters SET state = ?2, note = ?3,
                                 updated_at_ms = ?4
                             WHERE id = ?1 AND state IN ({from})"
                        ),
                        params![id, to, note, now],
                    )
                    .map_err(db("change delivery dead letter"))?;
                if n > 0 {
                    changed.push(id);
                }
            }
            tx.commit()
                .map_err(db("commit change delivery dead letters"))?;
            Ok(changed)
        })
        .await
    }
}
