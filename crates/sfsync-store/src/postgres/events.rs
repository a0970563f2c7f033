//! [`PlatformEvents`] on Postgres (migration 20): writes on the main connection, one
//! transaction each (a fence is checked inside it, as for fenced appends); lists on the reader.

use async_trait::async_trait;
use sfsync_core::ReplayId;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::warehouse::db;
use super::{PostgresChangeLog, BACKEND};
use crate::curated::DeadLetter;
use crate::error::{Result, StoreError};
use crate::events::*;
use crate::lease::Fence;
use crate::now_ms;

fn lim(n: usize) -> i64 {
    if n == 0 {
        i64::MAX
    } else {
        i64::try_from(n).unwrap_or(i64::MAX)
    }
}

const OUT_COLUMNS: &str = "id, name, idempotency_key, event_uuid, source, fields, state, attempts,
    next_attempt_at_ms, replay_id, last_error, created_at_ms, updated_at_ms, published_at_ms, note";

fn decode_out(r: &Row) -> Result<OutboundEvent> {
    let g = db("decode platform event to publish");
    let id: i64 = r.try_get(0).map_err(&g)?;
    let state: String = r.try_get(6).map_err(&g)?;
    let fields: String = r.try_get(5).map_err(&g)?;
    let replay: Option<Vec<u8>> = r.try_get(9).map_err(&g)?;
    Ok(OutboundEvent {
        id,
        name: r.try_get(1).map_err(&g)?,
        idempotency_key: r.try_get(2).map_err(&g)?,
        event_uuid: r.try_get(3).map_err(&g)?,
        source: r.try_get(4).map_err(&g)?,
        fields: fields_of(BACKEND, "platform_events_out", id, &fields)?,
        state: OutboundState::parse(&state).ok_or_else(|| StoreError::Corrupt {
            backend: BACKEND,
            table: "platform_events_out",
            offset: id,
            reason: format!("unknown state '{state}'"),
        })?,
        attempts: r.try_get(7).map_err(&g)?,
        next_attempt_at_ms: r.try_get(8).map_err(&g)?,
        replay_id: replay.map(hex::encode),
        last_error: r.try_get(10).map_err(&g)?,
        created_at_ms: r.try_get(11).map_err(&g)?,
        updated_at_ms: r.try_get(12).map_err(&g)?,
        published_at_ms: r.try_get(13).map_err(&g)?,
        note: r.try_get(14).map_err(&g)?,
    })
}

impl PostgresChangeLog {
    async fn set_out_state(
        &self,
        ids: &[i64],
        from: &'static str,
        to: &'static str,
        reset_attempts: bool,
        note: &str,
    ) -> Result<Vec<i64>> {
        let client = self.client.lock().await;
        let now = now_ms();
        let rows = client
            .query(
                &format!(
                    "UPDATE platform_events_out SET state = $2, note = $3, updated_at_ms = $4,
                         attempts = CASE WHEN $5 THEN 0 ELSE attempts END,
                         next_attempt_at_ms = CASE WHEN $5 THEN $4 ELSE next_attempt_at_ms END,
                         claimed_by = NULL, claimed_until_ms = NULL
                     WHERE id = ANY($1) AND state IN ({from})
                         AND (claimed_until_ms IS NULL OR claimed_until_ms <= $4
                              OR state <> 'pending')
                     RETURNING id"
                ),
                &[&ids, &to, &note, &now, &reset_attempts],
            )
            .await
            .map_err(db("change platform events to publish"))?;
        let mut out: Vec<i64> = rows
            .iter()
            .map(|r| {
                r.try_get(0)
                    .map_err(db("change platform events to publish"))
            })
            .collect::<Result<_>>()?;
        out.sort_unstable();
        Ok(out)
    }
}

#[async_trait]
impl PlatformEvents for PostgresChangeLog {
    async fn event_checkpoint(&self, channel: &str) -> Result<Option<ReplayId>> {
        let client = self.reader.lock().await;
        let row = client
            .query_opt(
                "SELECT replay_id FROM platform_event_checkpoints WHERE channel = $1",
                &[&channel],
            )
            .await
            .map_err(db("read event checkpoint"))?;
        row.map(|r| {
            r.try_get::<_, Vec<u8>>(0)
                .map(ReplayId::from_bytes)
                .map_err(db("read event checkpoint"))
        })
        .transpose()
    }

    async fn append_events(
        &self,
        channel: &str,
        events: &[InboundEvent],
        dead: &[DeadLetter],
        checkpoint: &ReplayId,
        deliver: bool,
        fence: Option<&Fence>,
    ) -> Result<EventAppend> {
        if channel.is_empty() {
            return Err(StoreError::InvalidInput {
                backend: BACKEND,
                op: "append platform events",
                reason: "the channel name is empty".into(),
            });
        }
        let ctx = self.registry.ctx();
        let now = now_ms();
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin platform event append"))?;
        if let Some(f) = fence {
            super::lease::check_fence(&tx, f).await?;
        }
        let mut out = EventAppend::default();
        for e in events {
            let fields = fields_text(&e.fields);
            let n = tx
                .execute(
                    "INSERT INTO platform_events_in (channel, replay_id, name, event_uuid,
                         schema_id, created_ms, fields, payload, received_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (channel, replay_id) DO NOTHING",
                    &[
                        &channel,
                        &e.replay_id.as_bytes(),
                        &e.name,
                        &e.event_uuid,
                        &e.schema_id,
                        &e.created_ms,
                        &fields,
                        &e.payload,
                        &now,
                    ],
                )
                .await
                .map_err(db("store platform event"))?;
            if n == 0 {
                out.duplicates += 1;
                continue;
            }
            out.appended += 1;
            if deliver {
                let key = event_key(channel, &e.replay_id);
                let names = event_fields_json(e);
                let record = event_record_json(e);
                tx.execute(
                    "INSERT INTO delivery_outbox (object, record_id, change_type, event_key,
                         commit_timestamp_ms, applied_at_ms, source, origin_client, fields,
                         deleted, record, run_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8, FALSE, $9, '')",
                    &[
                        &e.name,
                        &e.event_uuid,
                        &EVENT_CHANGE_TYPE,
                        &key,
                        &e.created_ms,
                        &now,
                        &EVENT_SOURCE,
                        &names,
                        &record,
                    ],
                )
                .await
                .map_err(db("store platform event outbox entry"))?;
            }
        }
        // As the raw log's append: a dead letter already stored for this replay id is not
        // stored again.
        let mut fresh = Vec::new();
        for d in dead {
            let seen = tx
                .query_opt(
                    "SELECT 1 FROM dead_letters WHERE channel = $1 AND replay_id = $2 AND stage = $3",
                    &[&d.channel, &d.replay_id.as_ref().map(|r| r.as_bytes()), &d.stage],
                )
                .await
                .map_err(db("read dead letters"))?;
            if seen.is_none() {
                fresh.push(d.clone());
            }
        }
        super::warehouse::insert_dead_letters(&tx, &ctx, &fresh).await?;
        tx.execute(
            "INSERT INTO platform_event_checkpoints (channel, replay_id, updated_at_ms)
             VALUES ($1, $2, $3)
             ON CONFLICT (channel) DO UPDATE SET replay_id = excluded.replay_id,
                 updated_at_ms = excluded.updated_at_ms",
            &[&channel, &checkpoint.as_bytes(), &now],
        )
        .await
        .map_err(db("write event checkpoint"))?;
        tx.commit()
            .await
            .map_err(db("commit platform event append"))?;
        Ok(out)
    }

    async fn inbound_events(
        &self,
        channel: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredInboundEvent>> {
        let client = self.reader.lock().await;
        let rows = client
            .query(
                "SELECT id, channel, replay_id, name, event_uuid, schema_id, created_ms, fields,
                     received_at_ms
                 FROM platform_events_in
                 WHERE id > $1 AND ($2::TEXT IS NULL OR channel = $2) ORDER BY id LIMIT $3",
                &[&after, &channel, &lim(limit)],
            )
            .await
            .map_err(db("read platform events"))?;
        rows.iter()
            .map(|r| {
                let g = db("decode platform event");
                let id: i64 = r.try_get(0).map_err(&g)?;
                let replay: Vec<u8> = r.try_get(2).map_err(&g)?;
                let fields: String = r.try_get(7).map_err(&g)?;
                Ok(StoredInboundEvent {
                    id,
                    channel: r.try_get(1).map_err(&g)?,
                    replay_id: hex::encode(replay),
                    name: r.try_get(3).map_err(&g)?,
                    event_uuid: r.try_get(4).map_err(&g)?,
                    schema_id: r.try_get(5).map_err(&g)?,
                    created_ms: r.try_get(6).map_err(&g)?,
                    fields: fields_of(BACKEND, "platform_events_in", id, &fields)?,
                    received_at_ms: r.try_get(8).map_err(&g)?,
                })
            })
            .collect()
    }

    async fn enqueue_outbound(&self, events: &[NewOutboundEvent]) -> Result<Vec<Enqueued>> {
        for (i, e) in events.iter().enumerate() {
            if e.name.is_empty() || e.idempotency_key.is_empty() {
                return Err(StoreError::InvalidInput {
                    backend: BACKEND,
                    op: "enqueue platform events",
                    reason: format!(
                        "event {i}: the event name and the idempotency key must not be empty"
                    ),
                });
            }
        }
        let now = now_ms();
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin platform event enqueue"))?;
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let uuid = outbound_event_uuid(&e.name, &e.idempotency_key);
            let fields = fields_text(&e.fields);
            let created = tx
                .execute(
                    "INSERT INTO platform_events_out (name, idempotency_key, event_uuid, source,
                         fields, state, attempts, next_attempt_at_ms, created_at_ms,
                         updated_at_ms)
                     VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6, $6)
                     ON CONFLICT (name, idempotency_key) DO NOTHING",
                    &[&e.name, &e.idempotency_key, &uuid, &e.source, &fields, &now],
                )
                .await
                .map_err(db("enqueue platform event"))?
                == 1;
            let row = tx
                .query_one(
                    &format!(
                        "SELECT {OUT_COLUMNS} FROM platform_events_out
                         WHERE name = $1 AND idempotency_key = $2"
                    ),
                    &[&e.name, &e.idempotency_key],
                )
                .await
                .map_err(db("read enqueued platform event"))?;
            out.push(Enqueued {
                event: decode_out(&row)?,
                created,
            });
        }
        tx.commit()
            .await
            .map_err(db("commit platform event enqueue"))?;
        Ok(out)
    }

    async fn claim_outbound(
        &self,
        claimer: &str,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<OutboundEvent>> {
        let now = now_ms();
        let until = now + lease_ms;
        let client = self.client.lock().await;
        let rows = client
            .query(
                &format!(
                    "UPDATE platform_events_out SET claimed_by = $2, claimed_until_ms = $3
                     WHERE id IN (
                         SELECT id FROM platform_events_out
                         WHERE state = 'pending' AND next_attempt_at_ms <= $1
                             AND (claimed_until_ms IS NULL OR claimed_until_ms <= $1
                                  OR claimed_by = $2)
                         ORDER BY id LIMIT $4
                         FOR UPDATE SKIP LOCKED)
                     RETURNING {OUT_COLUMNS}"
                ),
                &[&now, &claimer, &until, &lim(limit)],
            )
            .await
            .map_err(db("claim platform events"))?;
        let mut out: Vec<OutboundEvent> = rows.iter().map(decode_out).collect::<Result<_>>()?;
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    async fn settle_outbound(
        &self,
        claimer: &str,
        outcomes: &[(i64, PublishOutcome)],
    ) -> Result<()> {
        let now = now_ms();
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin platform event settle"))?;
        for (id, o) in outcomes {
            let (state, replay, error, next, attempt, published): (
                &str,
                Option<Vec<u8>>,
                Option<&str>,
                Option<i64>,
                i64,
                Option<i64>,
            ) = match o {
                PublishOutcome::Published { replay_id } => (
                    "published",
                    Some(replay_id.as_bytes().to_vec()),
                    None,
                    None,
                    0,
                    Some(now),
                ),
                PublishOutcome::Retry {
                    error,
                    next_attempt_at_ms,
                } => (
                    "pending",
                    None,
                    Some(error.as_str()),
                    Some(*next_attempt_at_ms),
                    1,
                    None,
                ),
                PublishOutcome::Deferred { next_attempt_at_ms } => {
                    ("pending", None, None, Some(*next_attempt_at_ms), 0, None)
                }
                PublishOutcome::Dead { error } => {
                    ("dead", None, Some(error.as_str()), None, 1, None)
                }
            };
            let params: [&(dyn ToSql + Sync); 9] = [
                id, &claimer, &state, &replay, &error, &next, &attempt, &published, &now,
            ];
            tx.execute(
                "UPDATE platform_events_out SET state = $3,
                     replay_id = coalesce($4, replay_id),
                     last_error = coalesce($5, last_error),
                     next_attempt_at_ms = coalesce($6, next_attempt_at_ms),
                     attempts = attempts + $7,
                     published_at_ms = coalesce($8, published_at_ms),
                     claimed_by = NULL, claimed_until_ms = NULL, updated_at_ms = $9
                 WHERE id = $1 AND claimed_by = $2 AND state = 'pending'",
                &params,
            )
            .await
            .map_err(db("settle platform events"))?;
        }
        tx.commit()
            .await
            .map_err(db("commit platform event settle"))
    }

    async fn outbound_events(&self, filter: &OutboundFilter) -> Result<Vec<OutboundEvent>> {
        let states: Vec<String> = filter
            .states
            .iter()
            .map(|s| s.as_str().to_string())
            .collect();
        let all = states.is_empty();
        let client = self.reader.lock().await;
        let rows = client
            .query(
                &format!(
                    "SELECT {OUT_COLUMNS} FROM platform_events_out
                     WHERE id > $1 AND ($2::TEXT IS NULL OR name = $2)
                         AND ($3 OR state = ANY($4))
                     ORDER BY id LIMIT $5"
                ),
                &[
                    &filter.after.unwrap_or(0),
                    &filter.name,
                    &all,
                    &states,
                    &lim(filter.limit),
                ],
            )
            .await
            .map_err(db("read platform events to publish"))?;
        rows.iter().map(decode_out).collect()
    }

    async fn outbound_event(&self, id: i64) -> Result<Option<OutboundEvent>> {
        let client = self.reader.lock().await;
        let row = client
            .query_opt(
                &format!("SELECT {OUT_COLUMNS} FROM platform_events_out WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(db("read platform event to publish"))?;
        row.as_ref().map(decode_out).transpose()
    }

    async fn outbound_counts(&self) -> Result<OutboundCounts> {
        let client = self.reader.lock().await;
        let rows = client
            .query(
                "SELECT state, count(*) FROM platform_events_out GROUP BY state",
                &[],
            )
            .await
            .map_err(db("count platform events to publish"))?;
        let mut c = OutboundCounts::default();
        for r in rows {
            let g = db("count platform events to publish");
            let s: String = r.try_get(0).map_err(&g)?;
            let n: i64 = r.try_get(1).map_err(&g)?;
            let n = u64::try_from(n).unwrap_or(0);
            match s.as_str() {
                "pending" => c.pending = n,
                "published" => c.published = n,
                "dead" => c.dead = n,
                _ => c.discarded = n,
            }
        }
        Ok(c)
    }

    async fn redrive_outbound(&self, ids: &[i64], note: &str) -> Result<Vec<i64>> {
        self.set_out_state(ids, "'dead'", "pending", true, note)
            .await
    }

    async fn discard_outbound(&self, ids: &[i64], note: &str) -> Result<Vec<i64>> {
        self.set_out_state(ids, "'dead', 'pending'", "discarded", false, note)
            .await
    }
}
