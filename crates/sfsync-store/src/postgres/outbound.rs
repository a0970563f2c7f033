//! [`OutboundReceipts`] on Postgres: receipts, raw changes and dead letters in one transaction
//! on the appender connection, under the same `raw_changes` table lock as ingest appends (so
//! two processes receiving the same notification at once serialise, and the second finds the
//! first's receipt).

use async_trait::async_trait;

use super::{check_name, warehouse, PostgresChangeLog, BACKEND};
use crate::error::{Result, StoreError};
use crate::outbound::{
    OutboundContent, OutboundItem, OutboundOutcome, OutboundReceipts, ReceiptOutcome,
    StoredReceipt, RECEIPT_COLUMNS,
};
use crate::{now_ms, DeadLetter, LogOffset};

fn db(op: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::postgres(op, e)
}

fn receipt_of(r: &tokio_postgres::Row) -> Result<StoredReceipt> {
    let get = |e| StoreError::postgres("decode outbound receipt", e);
    Ok(StoredReceipt {
        organization_id: r.try_get(0).map_err(get)?,
        notification_id: r.try_get(1).map_err(get)?,
        flow: r.try_get(2).map_err(get)?,
        action_id: r.try_get(3).map_err(get)?,
        object: r.try_get(4).map_err(get)?,
        record_id: r.try_get(5).map_err(get)?,
        status: r.try_get(6).map_err(get)?,
        event_key: r.try_get(7).map_err(get)?,
        error: r.try_get(8).map_err(get)?,
        deliveries: r.try_get(9).map_err(get)?,
        first_received_at_ms: r.try_get(10).map_err(get)?,
        last_received_at_ms: r.try_get(11).map_err(get)?,
    })
}

#[async_trait]
impl OutboundReceipts for PostgresChangeLog {
    async fn append_outbound(
        &self,
        channel: &str,
        items: &[OutboundItem],
        dead_letters: &[DeadLetter],
    ) -> Result<OutboundOutcome> {
        check_name("append outbound messages", "channel", channel)?;
        let ctx = self.registry.ctx();
        let changes: Vec<crate::RawChange> = items
            .iter()
            .filter_map(|i| match &i.content {
                OutboundContent::Change(c) => Some(c.clone()),
                OutboundContent::Rejected(_) => None,
            })
            .collect();
        let mut payloads = ctx.encode_raw_batch(&changes)?.into_iter();
        let mut client = self.appender.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin outbound append"))?;
        tx.batch_execute("LOCK TABLE raw_changes IN SHARE ROW EXCLUSIVE MODE")
            .await
            .map_err(db("lock raw_changes"))?;
        // Message dead letters: once per (channel, replay id, stage).
        let mut letters = Vec::new();
        for d in dead_letters {
            let known = tx
                .query_opt(
                    "SELECT 1 FROM dead_letters
                     WHERE channel = $1 AND replay_id IS NOT DISTINCT FROM $2 AND stage = $3
                     LIMIT 1",
                    &[
                        &d.channel,
                        &d.replay_id.as_ref().map(|r| r.as_bytes()),
                        &d.stage,
                    ],
                )
                .await
                .map_err(db("look up dead letter"))?;
            if known.is_none() {
                letters.push(d.clone());
            }
        }
        let now = now_ms();
        let mut out = OutboundOutcome::default();
        for (index, item) in items.iter().enumerate() {
            let r = &item.receipt;
            let payload = match &item.content {
                OutboundContent::Change(_) => payloads.next(),
                OutboundContent::Rejected(_) => None,
            };
            let status: Option<String> = tx
                .query_opt(
                    "SELECT status FROM outbound_notifications
                     WHERE organization_id = $1 AND notification_id = $2",
                    &[&r.organization_id, &r.notification_id],
                )
                .await
                .map_err(db("read outbound receipt"))?
                .map(|row| row.try_get(0))
                .transpose()
                .map_err(db("read outbound receipt"))?;
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
            match (&item.content, outcome) {
                (OutboundContent::Rejected(d), ReceiptOutcome::DeadLettered) => {
                    letters.push(d.clone())
                }
                (OutboundContent::Change(c), ReceiptOutcome::Logged) => {
                    let payload = payload.unwrap_or_default();
                    let row = tx
                        .query_opt(
                            "INSERT INTO raw_changes (channel, event_key, replay_id, schema_id,
                                 entity, change_type, commit_timestamp, commit_number,
                                 sequence_number, payload, appended_at_ms)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                             ON CONFLICT (commit_timestamp, event_key) DO NOTHING
                             RETURNING log_offset",
                            &[
                                &channel,
                                &c.event_key.as_str(),
                                &c.replay_id.as_bytes(),
                                &c.schema_id,
                                &c.entity,
                                &c.change_type.as_str(),
                                &c.version.commit_timestamp,
                                &c.version.commit_number,
                                &c.version.sequence_number,
                                &&payload[..],
                                &now,
                            ],
                        )
                        .await
                        .map_err(|e| StoreError::RejectedChange {
                            backend: BACKEND,
                            channel: channel.to_string(),
                            index,
                            event_key: c.event_key.to_string(),
                            source: Box::new(e),
                        })?;
                    if let Some(row) = row {
                        let off: i64 = row.try_get(0).map_err(db("read log offset"))?;
                        out.appended += 1;
                        out.last_offset = Some(off.max(0) as LogOffset);
                    }
                }
                _ => {}
            }
            let keep_old = matches!(
                outcome,
                ReceiptOutcome::Duplicate | ReceiptOutcome::StillRejected
            );
            tx.execute(
                "INSERT INTO outbound_notifications AS o (organization_id, notification_id, flow,
                     action_id, object, record_id, status, event_key, error, deliveries,
                     first_received_at_ms, last_received_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, $10)
                 ON CONFLICT (organization_id, notification_id) DO UPDATE SET
                     deliveries = o.deliveries + 1,
                     last_received_at_ms = excluded.last_received_at_ms,
                     status = CASE WHEN $11 THEN o.status ELSE excluded.status END,
                     event_key = CASE WHEN $11 THEN o.event_key ELSE excluded.event_key END,
                     error = CASE WHEN $11 AND o.status = 'logged' THEN o.error
                                  ELSE excluded.error END,
                     record_id = CASE WHEN $11 THEN o.record_id ELSE excluded.record_id END",
                &[
                    &r.organization_id,
                    &r.notification_id,
                    &r.flow,
                    &r.action_id,
                    &r.object,
                    &r.record_id,
                    &new_status,
                    &event_key,
                    &error,
                    &now,
                    &keep_old,
                ],
            )
            .await
            .map_err(db("write outbound receipt"))?;
            out.items.push(outcome);
        }
        warehouse::insert_dead_letters(&tx, &ctx, &letters).await?;
        tx.commit().await.map_err(db("commit outbound append"))?;
        Ok(out)
    }

    async fn outbound_receipts(
        &self,
        flow: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredReceipt>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.reader.lock().await;
        let rows = client
            .query(
                &format!(
                    "SELECT {RECEIPT_COLUMNS} FROM outbound_notifications
                     WHERE $1::TEXT IS NULL OR flow = $1
                     ORDER BY last_received_at_ms DESC, notification_id LIMIT $2"
                ),
                &[&flow, &limit],
            )
            .await
            .map_err(db("read outbound receipts"))?;
        rows.iter().map(receipt_of).collect()
    }

    async fn prune_outbound_receipts(&self, before_ms: i64) -> Result<u64> {
        let client = self.client.lock().await;
        client
            .execute(
                "DELETE FROM outbound_notifications WHERE last_received_at_ms < $1",
                &[&before_ms],
            )
            .await
            .map_err(db("prune outbound receipts"))
    }
}
