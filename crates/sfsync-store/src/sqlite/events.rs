//! [`PlatformEvents`] on SQLite (migration 20): every table in the warehouse file, beside the
//! delivery outbox and the leases, so a received batch, its outbox entries, its dead letters
//! and its checkpoint commit in one transaction (and a fence is checked in it too).

use async_trait::async_trait;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};
use sfsync_core::ReplayId;

use super::{SqliteChangeLog, BACKEND};
use crate::curated::DeadLetter;
use crate::error::{Result, StoreError};
use crate::events::*;
use crate::lease::Fence;
use crate::now_ms;

fn db(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::sqlite(op, e)
}

fn lim(n: usize) -> i64 {
    if n == 0 {
        i64::MAX
    } else {
        i64::try_from(n).unwrap_or(i64::MAX)
    }
}

const OUT_COLUMNS: &str = "id, name, idempotency_key, event_uuid, source, fields, state, attempts,
    next_attempt_at_ms, replay_id, last_error, created_at_ms, updated_at_ms, published_at_ms, note";

struct OutRow {
    id: i64,
    name: String,
    key: String,
    uuid: String,
    source: String,
    fields: String,
    state: String,
    attempts: i64,
    next: i64,
    replay: Option<Vec<u8>>,
    error: Option<String>,
    created: i64,
    updated: i64,
    published: Option<i64>,
    note: Option<String>,
}

fn out_row(r: &Row<'_>) -> rusqlite::Result<OutRow> {
    Ok(OutRow {
        id: r.get(0)?,
        name: r.get(1)?,
        key: r.get(2)?,
        uuid: r.get(3)?,
        source: r.get(4)?,
        fields: r.get(5)?,
        state: r.get(6)?,
        attempts: r.get(7)?,
        next: r.get(8)?,
        replay: r.get(9)?,
        error: r.get(10)?,
        created: r.get(11)?,
        updated: r.get(12)?,
        published: r.get(13)?,
        note: r.get(14)?,
    })
}

fn decode_out(r: OutRow) -> Result<OutboundEvent> {
    let state = OutboundState::parse(&r.state).ok_or_else(|| StoreError::Corrupt {
        backend: BACKEND,
        table: "platform_events_out",
        offset: r.id,
        reason: format!("unknown state '{}'", r.state),
    })?;
    Ok(OutboundEvent {
        id: r.id,
        fields: fields_of(BACKEND, "platform_events_out", r.id, &r.fields)?,
        name: r.name,
        idempotency_key: r.key,
        event_uuid: r.uuid,
        source: r.source,
        state,
        attempts: r.attempts,
        next_attempt_at_ms: r.next,
        replay_id: r.replay.map(hex::encode),
        last_error: r.error,
        created_at_ms: r.created,
        updated_at_ms: r.updated,
        published_at_ms: r.published,
        note: r.note,
    })
}

fn query_out(
    conn: &Connection,
    sql: &str,
    args: Vec<rusqlite::types::Value>,
) -> Result<Vec<OutboundEvent>> {
    let op = "read platform events to publish";
    let mut stmt = conn.prepare_cached(sql).map_err(db(op))?;
    let rows = stmt
        .query_map(params_from_iter(args), out_row)
        .map_err(db(op))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db(op))?;
    rows.into_iter().map(decode_out).collect()
}

/// Checks, inside the transaction, that `fence` still holds (same rule as Postgres, with the
/// local clock).
fn check_fence(conn: &Connection, fence: &Fence) -> Result<()> {
    let row: Option<(String, i64, i64)> = conn
        .query_row(
            "SELECT holder, epoch, expires_at_ms FROM leases WHERE name = ?1",
            [&fence.lease],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(db("check lease"))?;
    let now = now_ms();
    let fenced = |why: String| StoreError::Fenced {
        backend: BACKEND,
        lease: fence.lease.clone(),
        holder: fence.holder.clone(),
        epoch: fence.epoch,
        now: why,
    };
    match row {
        None => Err(fenced("no such lease".into())),
        Some((h, e, _)) if h != fence.holder || e != fence.epoch => {
            Err(fenced(format!("held by '{h}' at epoch {e}")))
        }
        Some((_, _, exp)) if exp <= now => Err(fenced("expired".into())),
        Some(_) => Ok(()),
    }
}

fn set_state(
    conn: &Connection,
    ids: &[i64],
    from: &str,
    to: &str,
    reset_attempts: bool,
    note: &str,
) -> Result<Vec<i64>> {
    let op = "change platform events to publish";
    let now = now_ms();
    let mut out = Vec::new();
    for id in ids {
        let n = conn
            .execute(
                &format!(
                    "UPDATE platform_events_out SET state = ?2, note = ?3, updated_at_ms = ?4,
                         attempts = CASE WHEN ?5 THEN 0 ELSE attempts END,
                         next_attempt_at_ms = CASE WHEN ?5 THEN ?4 ELSE next_attempt_at_ms END,
                         claimed_by = NULL, claimed_until_ms = NULL
                     WHERE id = ?1 AND state IN ({from})
                         AND (claimed_until_ms IS NULL OR claimed_until_ms <= ?4
                              OR state <> 'pending')"
                ),
                params![id, to, note, now, reset_attempts],
            )
            .map_err(db(op))?;
        if n == 1 {
            out.push(*id);
        }
    }
    Ok(out)
}

#[async_trait]
impl PlatformEvents for SqliteChangeLog {
    async fn event_checkpoint(&self, channel: &str) -> Result<Option<ReplayId>> {
        let channel = channel.to_string();
        self.blocking_on(&self.reader, "read event checkpoint", move |conn| {
            conn.query_row(
                "SELECT replay_id FROM platform_event_checkpoints WHERE channel = ?1",
                [&channel],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()
            .map(|o| o.map(ReplayId::from_bytes))
            .map_err(db("read event checkpoint"))
        })
        .await
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
        let channel = channel.to_string();
        let events = events.to_vec();
        let dead = dead.to_vec();
        let checkpoint = checkpoint.clone();
        let fence = fence.cloned();
        self.transaction(move |tx| {
            let conn = tx.connection();
            if let Some(f) = &fence {
                check_fence(conn, f)?;
            }
            let now = now_ms();
            let mut out = EventAppend::default();
            {
                let mut ins = conn
                    .prepare_cached(
                        "INSERT INTO platform_events_in (channel, replay_id, name, event_uuid,
                             schema_id, created_ms, fields, payload, received_at_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                         ON CONFLICT (channel, replay_id) DO NOTHING",
                    )
                    .map_err(db("prepare platform event insert"))?;
                let mut outbox = conn
                    .prepare_cached(
                        "INSERT INTO delivery_outbox (object, record_id, change_type, event_key,
                             commit_timestamp_ms, applied_at_ms, source, origin_client, fields,
                             deleted, record, run_id)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8, 0, ?9, '')",
                    )
                    .map_err(db("prepare platform event outbox insert"))?;
                for e in &events {
                    let n = ins
                        .execute(params![
                            channel,
                            e.replay_id.as_bytes(),
                            e.name,
                            e.event_uuid,
                            e.schema_id,
                            e.created_ms,
                            fields_text(&e.fields),
                            e.payload,
                            now,
                        ])
                        .map_err(db("store platform event"))?;
                    if n == 0 {
                        out.duplicates += 1;
                        continue;
                    }
                    out.appended += 1;
                    if deliver {
                        outbox
                            .execute(params![
                                e.name,
                                e.event_uuid,
                                EVENT_CHANGE_TYPE,
                                event_key(&channel, &e.replay_id),
                                e.created_ms,
                                now,
                                EVENT_SOURCE,
                                event_fields_json(e),
                                event_record_json(e),
                            ])
                            .map_err(db("store platform event outbox entry"))?;
                    }
                }
            }
            super::warehouse::insert_dead_letters(conn, &ctx, &dead, true)?;
            conn.execute(
                "INSERT INTO platform_event_checkpoints (channel, replay_id, updated_at_ms)
                 VALUES (?1, ?2, ?3)
                 ON CONFLICT (channel) DO UPDATE SET replay_id = excluded.replay_id,
                     updated_at_ms = excluded.updated_at_ms",
                params![channel, checkpoint.as_bytes(), now],
            )
            .map_err(db("write event checkpoint"))?;
            Ok(out)
        })
        .await
    }

    async fn inbound_events(
        &self,
        channel: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredInboundEvent>> {
        let channel = channel.map(str::to_string);
        let limit = lim(limit);
        self.blocking_on(&self.reader, "read platform events", move |conn| {
            let op = "read platform events";
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, channel, replay_id, name, event_uuid, schema_id, created_ms, fields,
                         received_at_ms
                     FROM platform_events_in
                     WHERE id > ?1 AND (?2 IS NULL OR channel = ?2) ORDER BY id LIMIT ?3",
                )
                .map_err(db(op))?;
            let rows = stmt
                .query_map(params![after, channel, limit], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, String>(7)?,
                        r.get::<_, i64>(8)?,
                    ))
                })
                .map_err(db(op))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db(op))?;
            rows.into_iter()
                .map(
                    |(id, channel, replay, name, uuid, schema, created, fields, at)| {
                        Ok(StoredInboundEvent {
                            id,
                            channel,
                            replay_id: hex::encode(replay),
                            name,
                            event_uuid: uuid,
                            schema_id: schema,
                            created_ms: created,
                            fields: fields_of(BACKEND, "platform_events_in", id, &fields)?,
                            received_at_ms: at,
                        })
                    },
                )
                .collect()
        })
        .await
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
        let events = events.to_vec();
        self.transaction(move |tx| {
            let conn = tx.connection();
            let now = now_ms();
            let mut out = Vec::with_capacity(events.len());
            for e in &events {
                let created = conn
                    .execute(
                        "INSERT INTO platform_events_out (name, idempotency_key, event_uuid, source,
                             fields, state, attempts, next_attempt_at_ms, created_at_ms,
                             updated_at_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?6, ?6)
                         ON CONFLICT (name, idempotency_key) DO NOTHING",
                        params![
                            e.name,
                            e.idempotency_key,
                            outbound_event_uuid(&e.name, &e.idempotency_key),
                            e.source,
                            fields_text(&e.fields),
                            now,
                        ],
                    )
                    .map_err(db("enqueue platform event"))?
                    == 1;
                let mut found = query_out(
                    conn,
                    &format!(
                        "SELECT {OUT_COLUMNS} FROM platform_events_out
                         WHERE name = ?1 AND idempotency_key = ?2"
                    ),
                    vec![e.name.clone().into(), e.idempotency_key.clone().into()],
                )?;
                let event = found.pop().ok_or_else(|| StoreError::Corrupt {
                    backend: BACKEND,
                    table: "platform_events_out",
                    offset: 0,
                    reason: format!("event {} key {} vanished", e.name, e.idempotency_key),
                })?;
                out.push(Enqueued { event, created });
            }
            Ok(out)
        })
        .await
    }

    async fn claim_outbound(
        &self,
        claimer: &str,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<OutboundEvent>> {
        let claimer = claimer.to_string();
        let limit = lim(limit);
        self.transaction(move |tx| {
            let conn = tx.connection();
            let now = now_ms();
            let ids: Vec<i64> = {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT id FROM platform_events_out
                         WHERE state = 'pending' AND next_attempt_at_ms <= ?1
                             AND (claimed_until_ms IS NULL OR claimed_until_ms <= ?1
                                  OR claimed_by = ?2)
                         ORDER BY id LIMIT ?3",
                    )
                    .map_err(db("claim platform events"))?;
                let rows = stmt
                    .query_map(params![now, claimer, limit], |r| r.get(0))
                    .map_err(db("claim platform events"))?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(db("claim platform events"))?;
                rows
            };
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                conn.execute(
                    "UPDATE platform_events_out SET claimed_by = ?2, claimed_until_ms = ?3
                     WHERE id = ?1",
                    params![id, claimer, now + lease_ms],
                )
                .map_err(db("claim platform events"))?;
                out.extend(query_out(
                    conn,
                    &format!("SELECT {OUT_COLUMNS} FROM platform_events_out WHERE id = ?1"),
                    vec![id.into()],
                )?);
            }
            Ok(out)
        })
        .await
    }

    async fn settle_outbound(
        &self,
        claimer: &str,
        outcomes: &[(i64, PublishOutcome)],
    ) -> Result<()> {
        let claimer = claimer.to_string();
        let outcomes = outcomes.to_vec();
        self.transaction(move |tx| {
            let conn = tx.connection();
            let now = now_ms();
            let op = "settle platform events";
            for (id, o) in &outcomes {
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
                conn.execute(
                    "UPDATE platform_events_out SET state = ?3,
                         replay_id = coalesce(?4, replay_id),
                         last_error = coalesce(?5, last_error),
                         next_attempt_at_ms = coalesce(?6, next_attempt_at_ms),
                         attempts = attempts + ?7,
                         published_at_ms = coalesce(?8, published_at_ms),
                         claimed_by = NULL, claimed_until_ms = NULL, updated_at_ms = ?9
                     WHERE id = ?1 AND claimed_by = ?2 AND state = 'pending'",
                    params![id, claimer, state, replay, error, next, attempt, published, now],
                )
                .map_err(db(op))?;
            }
            Ok(())
        })
        .await
    }

    async fn outbound_events(&self, filter: &OutboundFilter) -> Result<Vec<OutboundEvent>> {
        let f = filter.clone();
        self.blocking_on(
            &self.reader,
            "read platform events to publish",
            move |conn| {
                let mut sql =
                    format!("SELECT {OUT_COLUMNS} FROM platform_events_out WHERE id > ?1");
                let mut args: Vec<rusqlite::types::Value> = vec![f.after.unwrap_or(0).into()];
                if let Some(n) = &f.name {
                    args.push(n.clone().into());
                    sql.push_str(&format!(" AND name = ?{}", args.len()));
                }
                if !f.states.is_empty() {
                    let mut marks = Vec::new();
                    for s in &f.states {
                        args.push(s.as_str().to_string().into());
                        marks.push(format!("?{}", args.len()));
                    }
                    sql.push_str(&format!(" AND state IN ({})", marks.join(", ")));
                }
                args.push(lim(f.limit).into());
                sql.push_str(&format!(" ORDER BY id LIMIT ?{}", args.len()));
                query_out(conn, &sql, args)
            },
        )
        .await
    }

    async fn outbound_event(&self, id: i64) -> Result<Option<OutboundEvent>> {
        self.blocking_on(
            &self.reader,
            "read platform event to publish",
            move |conn| {
                Ok(query_out(
                    conn,
                    &format!("SELECT {OUT_COLUMNS} FROM platform_events_out WHERE id = ?1"),
                    vec![id.into()],
                )?
                .pop())
            },
        )
        .await
    }

    async fn outbound_counts(&self) -> Result<OutboundCounts> {
        self.blocking_on(&self.reader, "count platform events to publish", |conn| {
            let op = "count platform events to publish";
            let mut stmt = conn
                .prepare_cached("SELECT state, count(*) FROM platform_events_out GROUP BY state")
                .map_err(db(op))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(db(op))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db(op))?;
            let mut c = OutboundCounts::default();
            for (s, n) in rows {
                let n = u64::try_from(n).unwrap_or(0);
                match s.as_str() {
                    "pending" => c.pending = n,
                    "published" => c.published = n,
                    "dead" => c.dead = n,
                    _ => c.discarded = n,
                }
            }
            Ok(c)
        })
        .await
    }

    async fn redrive_outbound(&self, ids: &[i64], note: &str) -> Result<Vec<i64>> {
        let (ids, note) = (ids.to_vec(), note.to_string());
        self.transaction(move |tx| {
            set_state(tx.connection(), &ids, "'dead'", "pending", true, &note)
        })
        .await
    }

    async fn discard_outbound(&self, ids: &[i64], note: &str) -> Result<Vec<i64>> {
        let (ids, note) = (ids.to_vec(), note.to_string());
        self.transaction(move |tx| {
            set_state(
                tx.connection(),
                &ids,
                "'dead', 'pending'",
                "discarded",
                false,
                &note,
            )
        })
        .await
    }
}
