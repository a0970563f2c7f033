//! [`OutboundReceipts`] on SQLite: receipts live in the change-log file beside `raw_changes`, so
//! a receipt and its raw change commit in one transaction. Dead letters go to the warehouse
//! file first (as ingest's do), each stored once per (channel, replay id, stage): a crash
//! between the two commits leaves a dead letter whose redelivery finds it and does not store it
//! twice.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{log_high_water, warehouse, SqliteChangeLog, BACKEND};
use crate::error::{Result, StoreError};
use crate::outbound::{
    OutboundContent, OutboundItem, OutboundOutcome, OutboundReceipts, ReceiptOutcome,
    StoredReceipt, RECEIPT_COLUMNS,
};
use crate::{now_ms, DeadLetter, LogOffset, LoggedChange};

fn err(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::sqlite(op, e)
}

#[async_trait]
impl OutboundReceipts for SqliteChangeLog {
    async fn append_outbound(
        &self,
        channel: &str,
        items: &[OutboundItem],
        dead_letters: &[DeadLetter],
    ) -> Result<OutboundOutcome> {
        super::check_name("append outbound messages", "channel", channel)?;
        let ctx = self.registry.ctx();
        // Dead letters first, each once (see the module doc).
        let mut letters: Vec<DeadLetter> = dead_letters.to_vec();
        letters.extend(items.iter().filter_map(|i| match &i.content {
            OutboundContent::Rejected(d) => Some(d.clone()),
            OutboundContent::Change(_) => None,
        }));
        if !letters.is_empty() {
            let c = ctx.clone();
            self.blocking("store outbound dead letters", move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(err("begin dead letters"))?;
                warehouse::insert_dead_letters(&tx, &c, &letters, true)?;
                tx.commit().map_err(err("commit dead letters"))
            })
            .await?;
        }
        let changes: Vec<crate::RawChange> = items
            .iter()
            .filter_map(|i| match &i.content {
                OutboundContent::Change(c) => Some(c.clone()),
                OutboundContent::Rejected(_) => None,
            })
            .collect();
        let mut payloads = ctx.encode_raw_batch(&changes)?.into_iter();
        let items: Vec<(OutboundItem, Option<Vec<u8>>)> = items
            .iter()
            .map(|i| {
                let p = match &i.content {
                    OutboundContent::Change(_) => payloads.next(),
                    OutboundContent::Rejected(_) => None,
                };
                (i.clone(), p)
            })
            .collect();
        let channel = channel.to_string();
        let tail = std::sync::Arc::clone(&self.tail);
        self.blocking_on(&self.log, "append outbound messages", move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err("begin outbound append"))?;
            let before = log_high_water(&tx)?;
            let now = now_ms();
            let mut out = OutboundOutcome::default();
            let mut appended = Vec::new();
            for (index, (item, payload)) in items.into_iter().enumerate() {
                let r = &item.receipt;
                let status: Option<String> = tx
                    .query_row(
                        "SELECT status FROM outbound_notifications
                         WHERE organization_id = ?1 AND notification_id = ?2",
                        params![r.organization_id, r.notification_id],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(err("read outbound receipt"))?;
                let outcome = match (&item.content, status.as_deref()) {
                    (_, Some("logged")) => ReceiptOutcome::Duplicate,
                    (OutboundContent::Rejected(_), Some(_)) => ReceiptOutcome::StillRejected,
                    (OutboundContent::Rejected(_), None) => ReceiptOutcome::DeadLettered,
                    (OutboundContent::Change(_), _) => ReceiptOutcome::Logged,
                };
                let (new_status, event_key, error) = match &item.content {
                    OutboundContent::Change(c) => {
                        ("logged", Some(c.event_key.as_str().to_string()), None)
                    }
                    OutboundContent::Rejected(d) => ("dead_letter", None, Some(d.error.clone())),
                };
                if outcome == ReceiptOutcome::Logged {
                    let (OutboundContent::Change(c), Some(payload)) = (&item.content, &payload)
                    else {
                        unreachable!("a change has its payload");
                    };
                    let n = tx
                        .prepare_cached(
                            "INSERT INTO raw_changes (channel, event_key, replay_id, schema_id,
                                 entity, change_type, commit_timestamp, commit_number,
                                 sequence_number, payload, appended_at_ms)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                             ON CONFLICT (commit_timestamp, event_key) DO NOTHING",
                        )
                        .and_then(|mut s| {
                            s.execute(params![
                                channel,
                                c.event_key.as_str(),
                                c.replay_id.as_bytes(),
                                c.schema_id,
                                c.entity,
                                c.change_type.as_str(),
                                c.version.commit_timestamp,
                                c.version.commit_number,
                                c.version.sequence_number,
                                &payload[..],
                                now,
                            ])
                        })
                        .map_err(|e| StoreError::RejectedChange {
                            backend: BACKEND,
                            channel: channel.clone(),
                            index,
                            event_key: c.event_key.to_string(),
                            source: Box::new(e),
                        })?;
                    if n == 1 {
                        let offset = tx.last_insert_rowid() as LogOffset;
                        out.appended += 1;
                        out.last_offset = Some(offset);
                        appended.push(LoggedChange {
                            offset,
                            channel: channel.clone(),
                            change: c.clone(),
                        });
                    }
                }
                let keep_old = matches!(
                    outcome,
                    ReceiptOutcome::Duplicate | ReceiptOutcome::StillRejected
                );
                tx.execute(
                    "INSERT INTO outbound_notifications (organization_id, notification_id, flow,
                         action_id, object, record_id, status, event_key, error, deliveries,
                         first_received_at_ms, last_received_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1, ?10, ?10)
                     ON CONFLICT (organization_id, notification_id) DO UPDATE SET
                         deliveries = deliveries + 1,
                         last_received_at_ms = excluded.last_received_at_ms,
                         status = CASE WHEN ?11 THEN status ELSE excluded.status END,
                         event_key = CASE WHEN ?11 THEN event_key ELSE excluded.event_key END,
                         error = CASE WHEN ?11 AND status = 'logged' THEN error
                                      ELSE excluded.error END,
                         record_id = CASE WHEN ?11 THEN record_id ELSE excluded.record_id END",
                    params![
                        r.organization_id,
                        r.notification_id,
                        r.flow,
                        r.action_id,
                        r.object,
                        r.record_id,
                        new_status,
                        event_key,
                        error,
                        now,
                        keep_old,
                    ],
                )
                .map_err(err("write outbound receipt"))?;
                out.items.push(outcome);
            }
            let after = log_high_water(&tx)?;
            tx.commit().map_err(err("commit outbound append"))?;
            // Still under the connection lock: published in commit order (see `tail`).
            tail.publish(before, after, appended);
            Ok(out)
        })
        .await
    }

    async fn outbound_receipts(
        &self,
        flow: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredReceipt>> {
        let flow = flow.map(str::to_string);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.blocking_on(&self.log_reader, "read outbound receipts", move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {RECEIPT_COLUMNS} FROM outbound_notifications
                     WHERE ?1 IS NULL OR flow = ?1
                     ORDER BY last_received_at_ms DESC, notification_id LIMIT ?2"
                ))
                .map_err(err("read outbound receipts"))?;
            let rows = stmt
                .query_map(params![flow, limit], |r| {
                    Ok(StoredReceipt {
                        organization_id: r.get(0)?,
                        notification_id: r.get(1)?,
                        flow: r.get(2)?,
                        action_id: r.get(3)?,
                        object: r.get(4)?,
                        record_id: r.get(5)?,
                        status: r.get(6)?,
                        event_key: r.get(7)?,
                        error: r.get(8)?,
                        deliveries: r.get(9)?,
                        first_received_at_ms: r.get(10)?,
                        last_received_at_ms: r.get(11)?,
                    })
                })
                .map_err(err("read outbound receipts"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(err("read outbound receipts"));
            rows
        })
        .await
    }

    async fn prune_outbound_receipts(&self, before_ms: i64) -> Result<u64> {
        self.blocking_on(&self.log, "prune outbound receipts", move |conn| {
            conn.execute(
                "DELETE FROM outbound_notifications WHERE last_received_at_ms < ?1",
                [before_ms],
            )
            .map(|n| n as u64)
            .map_err(err("prune outbound receipts"))
        })
        .await
    }
}
