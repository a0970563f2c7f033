//! The outbox and write ledger on Postgres (see [`crate::writeback`]). Same semantics as the
//! SQLite backend. Several processes may submit, ingest and claim at once: a repeated
//! idempotency key is resolved by the unique constraint (`ON CONFLICT DO NOTHING`, then the
//! stored write is returned), and claims and ingestion lock the rows they take
//! (`FOR UPDATE SKIP LOCKED`), so no write or outbox row is handed out twice.

use crate::warehouse::Ctx;
use async_trait::async_trait;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

use super::warehouse::{db, invalid};
use super::PostgresChangeLog;
use crate::error::{Result, StoreError};
use crate::now_ms;
use crate::writeback::*;

const COLUMNS: &str = "id, source_system, idempotency_key, origin, outbox_id, object,
    external_id_field, external_id, record_id, fields, seen_version_ms, state, attempts,
    last_error, reason, claimed_by, echo_event_key, created_at_ms, updated_at_ms";

fn decode(r: &Row) -> Result<LedgerWrite> {
    let get = db("read writes");
    let id: i64 = r.try_get(0).map_err(&get)?;
    let origin: String = r.try_get(3).map_err(&get)?;
    let state: String = r.try_get(11).map_err(&get)?;
    Ok(LedgerWrite {
        id,
        source_system: r.try_get(1).map_err(&get)?,
        idempotency_key: r.try_get(2).map_err(&get)?,
        origin: WriteOrigin::parse(&origin).ok_or_else(|| {
            invalid(
                "read writes",
                format!("write {id} has an unknown origin '{origin}'"),
            )
        })?,
        outbox_id: r.try_get(4).map_err(&get)?,
        object: r.try_get(5).map_err(&get)?,
        external_id_field: r.try_get(6).map_err(&get)?,
        external_id: r.try_get(7).map_err(&get)?,
        record_id: r.try_get(8).map_err(&get)?,
        fields: r.try_get(9).map_err(&get)?,
        seen_version_ms: r.try_get(10).map_err(&get)?,
        state: WriteState::parse(&state).ok_or_else(|| {
            invalid(
                "read writes",
                format!("write {id} has an unknown state '{state}'"),
            )
        })?,
        attempts: r.try_get(12).map_err(&get)?,
        last_error: r.try_get(13).map_err(&get)?,
        reason: r.try_get(14).map_err(&get)?,
        claimed_by: r.try_get(15).map_err(&get)?,
        echo_event_key: r.try_get(16).map_err(&get)?,
        created_at_ms: r.try_get(17).map_err(&get)?,
        updated_at_ms: r.try_get(18).map_err(&get)?,
    })
}

async fn get(c: &impl GenericClient, id: i64) -> Result<Option<LedgerWrite>> {
    let row = c
        .query_opt(
            &format!("SELECT {COLUMNS} FROM writes WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(db("read write"))?;
    row.as_ref().map(decode).transpose()
}

async fn existing(c: &impl GenericClient, source: &str, key: &str) -> Result<Option<i64>> {
    let row = c
        .query_opt(
            "SELECT id FROM writes WHERE source_system = $1 AND idempotency_key = $2",
            &[&source, &key],
        )
        .await
        .map_err(db("find write by idempotency key"))?;
    Ok(row.map(|r| r.get(0)))
}

async fn log_transition(
    c: &impl GenericClient,
    id: i64,
    from: Option<WriteState>,
    to: WriteState,
    at: i64,
    detail: Option<&str>,
) -> Result<()> {
    log_action(c, id, from, to, at, detail, None, None).await
}

/// Records a transition, with the person who made it and why when one did.
#[allow(clippy::too_many_arguments)]
async fn log_action(
    c: &impl GenericClient,
    id: i64,
    from: Option<WriteState>,
    to: WriteState,
    at: i64,
    detail: Option<&str>,
    actor: Option<&str>,
    note: Option<&str>,
) -> Result<()> {
    c.execute(
        "INSERT INTO write_transitions (write_id, seq, from_state, to_state, at_ms, detail,
             actor, note)
         VALUES ($1, (SELECT coalesce(max(seq), 0) + 1 FROM write_transitions WHERE write_id = $1),
             $2, $3, $4, $5, $6, $7)",
        &[
            &id,
            &from.map(|f| f.as_str()),
            &to.as_str(),
            &at,
            &detail,
            &actor,
            &note,
        ],
    )
    .await
    .map_err(db("record write transition"))?;
    Ok(())
}

/// Stores a pending write unless its key is known; `Err(existing id)` when it is.
async fn insert(
    c: &impl GenericClient,
    ctx: &Ctx,
    w: &NewWrite,
    origin: WriteOrigin,
    outbox_id: Option<i64>,
    now: i64,
) -> Result<std::result::Result<i64, i64>> {
    let (xf, xv, rid) = match &w.target {
        WriteTarget::RecordId(id) => (None, None, Some(id.as_str())),
        WriteTarget::ExternalId { field, value } => {
            (Some(field.as_str()), Some(value.as_str()), None)
        }
    };
    let fields = ctx.seal_write_fields(
        &w.object,
        &serde_json::Value::Object(w.fields.clone()).to_string(),
    )?;
    let row = c
        .query_opt(
            "INSERT INTO writes (source_system, idempotency_key, origin, outbox_id, object,
                 external_id_field, external_id, record_id, fields, seen_version_ms, state,
                 created_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', $11, $11)
             ON CONFLICT (source_system, idempotency_key) DO NOTHING
             RETURNING id",
            &[
                &w.source_system,
                &w.idempotency_key,
                &origin.as_str(),
                &outbox_id,
                &w.object,
                &xf,
                &xv,
                &rid,
                &fields,
                &w.seen_version_ms,
                &now,
            ],
        )
        .await
        .map_err(db("store write"))?;
    match row {
        Some(r) => {
            let id: i64 = r.get(0);
            log_transition(c, id, None, WriteState::Pending, now, None).await?;
            Ok(Ok(id))
        }
        None => existing(c, &w.source_system, &w.idempotency_key)
            .await?
            .map(Err)
            .ok_or_else(|| {
                invalid(
                    "store write",
                    format!(
                        "write ({}, {}) conflicted but is not stored",
                        w.source_system, w.idempotency_key
                    ),
                )
            }),
    }
}

async fn insert_rejected(
    c: &impl GenericClient,
    ctx: &Ctx,
    row: &OutboxRow,
    reason: &str,
    now: i64,
) -> Result<i64> {
    let object = row.object.clone().unwrap_or_default();
    let fields = ctx.seal_write_fields(&object, row.fields.as_deref().unwrap_or_default())?;
    let r = c
        .query_one(
            "INSERT INTO writes (source_system, idempotency_key, origin, outbox_id, object,
                 external_id_field, external_id, record_id, fields, seen_version_ms, state,
                 reason, created_at_ms, updated_at_ms)
             VALUES ($1, $2, 'outbox', $3, $4, $5, $6, $7, $8, $9, 'rejected', $10, $11, $11)
             RETURNING id",
            &[
                &row.source_system,
                &row.idempotency_key,
                &row.id,
                &object,
                &row.external_id_field,
                &row.external_id,
                &row.record_id,
                &fields,
                &row.seen_version_ms,
                &reason,
                &now,
            ],
        )
        .await
        .map_err(db("store rejected write"))?;
    let id: i64 = r.get(0);
    log_transition(c, id, None, WriteState::Rejected, now, Some(reason)).await?;
    Ok(id)
}

impl PostgresChangeLog {
    /// Claims for `claimer`, in one transaction, the writes `pick` keeps of those `select`
    /// returns (pending ones as `(id, record key)`, locked with `SKIP LOCKED` so two claimers
    /// never share one), in the order `pick` gives.
    async fn claim_selected(
        &self,
        claimer: &str,
        select: &str,
        args: &[&(dyn ToSql + Sync)],
        pick: impl FnOnce(Vec<(i64, String)>) -> Vec<i64>,
    ) -> Result<Vec<LedgerWrite>> {
        if claimer.is_empty() {
            return Err(invalid("claim writes", "the claimer must be named".into()));
        }
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin claim writes"))?;
        let rows: Vec<(i64, String)> = tx
            .query(select, args)
            .await
            .map_err(db("claim writes"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let out = mark_sent(&tx, &pick(rows), claimer).await?;
        tx.commit().await.map_err(db("commit claim writes"))?;
        self.registry.ctx().open_writes(out)
    }
}

/// Moves the writes to `sent` for `claimer` and returns them in the given order.
async fn mark_sent(c: &impl GenericClient, ids: &[i64], claimer: &str) -> Result<Vec<LedgerWrite>> {
    let now = now_ms();
    c.execute(
        "UPDATE writes SET state = 'sent', attempts = attempts + 1, claimed_by = $2,
             updated_at_ms = $3 WHERE id = ANY($1)",
        &[&ids, &claimer, &now],
    )
    .await
    .map_err(db("claim writes"))?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        log_transition(
            c,
            *id,
            Some(WriteState::Pending),
            WriteState::Sent,
            now,
            Some(claimer),
        )
        .await?;
        out.extend(get(c, *id).await?);
    }
    Ok(out)
}

fn illegal(id: i64, from: WriteState, outcome: &WriteOutcome) -> StoreError {
    invalid(
        "record write outcome",
        format!(
            "write {id} cannot go from {} to {} ({outcome:?}); nothing was recorded",
            from.as_str(),
            outcome.target().as_str()
        ),
    )
}

async fn query(
    c: &impl GenericClient,
    sql: &str,
    args: &[&(dyn ToSql + Sync)],
) -> Result<Vec<LedgerWrite>> {
    c.query(sql, args)
        .await
        .map_err(db("read writes"))?
        .iter()
        .map(decode)
        .collect()
}

/// The state of write `id`, locked for the transaction; `None` when there is none.
async fn lock_state(
    c: &impl GenericClient,
    op: &'static str,
    id: i64,
) -> Result<Option<WriteState>> {
    let Some(row) = c
        .query_opt("SELECT state FROM writes WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .map_err(db(op))?
    else {
        return Ok(None);
    };
    let state: String = row.get(0);
    WriteState::parse(&state)
        .map(Some)
        .ok_or_else(|| invalid(op, format!("write {id} has an unknown state '{state}'")))
}

async fn act(
    c: &impl GenericClient,
    ids: &[i64],
    action: WriteAction,
    actor: &str,
    note: &str,
    now: i64,
) -> Result<Vec<(i64, WriteActOutcome)>> {
    let op = match action {
        WriteAction::Redrive => "redrive writes",
        WriteAction::Discard => "discard writes",
    };
    if actor.trim().is_empty() {
        return Err(invalid(op, "the person acting must be named".into()));
    }
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        let Some(from) = lock_state(c, op, id).await? else {
            out.push((id, WriteActOutcome::NotFound));
            continue;
        };
        if !action.allowed_from(from) {
            out.push((id, WriteActOutcome::NotAllowed { state: from }));
            continue;
        }
        let to = action.target();
        let reason = (action == WriteAction::Discard).then(|| discard_reason(actor, note));
        c.execute(
            "UPDATE writes SET state = $2, reason = coalesce($3, reason), updated_at_ms = $4
             WHERE id = $1",
            &[&id, &to.as_str(), &reason, &now],
        )
        .await
        .map_err(db(op))?;
        log_action(
            c,
            id,
            Some(from),
            to,
            now,
            Some(&action.detail(actor)),
            Some(actor),
            stored_note(note),
        )
        .await?;
        out.push((id, WriteActOutcome::Done { from, to }));
    }
    Ok(out)
}

#[async_trait]
impl WriteLedger for PostgresChangeLog {
    async fn submit_writes(&self, writes: &[NewWrite]) -> Result<Vec<SubmitOutcome>> {
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin submit writes"))?;
        let now = now_ms();
        let ctx = self.registry.ctx();
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            if let Err(reason) = validate_new_write(w) {
                out.push(SubmitOutcome::Rejected { reason });
                continue;
            }
            out.push(
                match insert(&tx, &ctx, w, WriteOrigin::Api, None, now).await? {
                    Ok(id) => SubmitOutcome::Accepted { id },
                    Err(id) => SubmitOutcome::Duplicate { id },
                },
            );
        }
        tx.commit().await.map_err(db("commit submit writes"))?;
        Ok(out)
    }

    async fn ingest_outbox(&self, limit: usize) -> Result<OutboxIngest> {
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin ingest outbox"))?;
        let now = now_ms();
        let ctx = self.registry.ctx();
        // With a keyring the ledger holds the fields sealed: no plaintext copy stays behind.
        let clear = ctx.keyring.is_some();
        let rows = tx
            .query(
                "SELECT id, source_system, idempotency_key, object, external_id_field,
                     external_id, record_id, fields, seen_version_ms
                 FROM outbox WHERE ingested_at_ms IS NULL ORDER BY id LIMIT $1
                 FOR UPDATE SKIP LOCKED",
                &[&(limit.max(1) as i64)],
            )
            .await
            .map_err(db("read outbox"))?;
        let mut report = OutboxIngest::default();
        for r in rows {
            let row = OutboxRow {
                id: r.get(0),
                source_system: r.get(1),
                idempotency_key: r.get(2),
                object: r.get(3),
                external_id_field: r.get(4),
                external_id: r.get(5),
                record_id: r.get(6),
                fields: r.get(7),
                seen_version_ms: r.get(8),
            };
            let id = if let Some(id) =
                existing(&tx, &row.source_system, &row.idempotency_key).await?
            {
                report.duplicates += 1;
                id
            } else {
                match validate_outbox_row(&row) {
                    Ok(w) => {
                        match insert(&tx, &ctx, &w, WriteOrigin::Outbox, Some(row.id), now).await? {
                            Ok(id) => {
                                report.accepted += 1;
                                id
                            }
                            Err(id) => {
                                report.duplicates += 1;
                                id
                            }
                        }
                    }
                    Err(reason) => {
                        report.rejected += 1;
                        tracing::warn!(outbox_id = row.id, %reason, "Rejected an outbox row.");
                        insert_rejected(&tx, &ctx, &row, &reason, now).await?
                    }
                }
            };
            tx.execute(
                "UPDATE outbox SET ingested_at_ms = $2, write_id = $3,
                     fields = CASE WHEN $4 THEN NULL ELSE fields END
                 WHERE id = $1",
                &[&row.id, &now, &id, &clear],
            )
            .await
            .map_err(db("mark outbox row ingested"))?;
        }
        tx.commit().await.map_err(db("commit ingest outbox"))?;
        Ok(report)
    }

    async fn pending_groups(&self, cap: usize, due_at_ms: i64) -> Result<Vec<PendingGroup>> {
        let client = self.reader.lock().await;
        let rows = client
            .query(
                "SELECT object, ext, count(*), count(*) FILTER (WHERE created_at_ms <= $2),
                     min(created_at_ms)
                 FROM (SELECT id, object,
                           CASE WHEN record_id IS NULL THEN external_id_field END AS ext,
                           created_at_ms
                       FROM writes WHERE state = 'pending' ORDER BY id LIMIT $1) p
                 GROUP BY object, ext ORDER BY min(id)",
                &[&(cap as i64), &due_at_ms],
            )
            .await
            .map_err(db("count pending writes"))?;
        Ok(rows
            .iter()
            .map(|r| PendingGroup {
                group: WriteGroup {
                    object: r.get(0),
                    external_id_field: r.get(1),
                },
                count: r.get::<_, i64>(2) as usize,
                due: r.get::<_, i64>(3) as usize,
                oldest_created_ms: r.get(4),
            })
            .collect())
    }

    async fn claim_group(
        &self,
        claimer: &str,
        group: &WriteGroup,
        limit: usize,
    ) -> Result<Vec<LedgerWrite>> {
        // Scanned in acceptance order a bounded window past the limit; a record already taken
        // leaves its later writes pending.
        let window = (limit as i64).saturating_mul(4).max(64);
        self.claim_selected(
            claimer,
            "SELECT id, coalesce(record_id, external_id_field || '=' || external_id, '')
             FROM writes
             WHERE state = 'pending' AND object = $1
               AND (CASE WHEN record_id IS NULL THEN external_id_field END)
                   IS NOT DISTINCT FROM $2
             ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
            &[&group.object, &group.external_id_field, &window],
            |rows| crate::writeback::one_per_record(rows, limit),
        )
        .await
    }

    async fn claim_writes(&self, claimer: &str, limit: usize) -> Result<Vec<LedgerWrite>> {
        self.claim_selected(
            claimer,
            "SELECT id, '' FROM writes WHERE state = 'pending'
             ORDER BY object COLLATE \"C\",
                 coalesce(record_id, external_id_field || '=' || external_id) COLLATE \"C\",
                 id
             LIMIT $1 FOR UPDATE SKIP LOCKED",
            &[&(limit as i64)],
            |rows| rows.into_iter().map(|(id, _)| id).collect(),
        )
        .await
    }

    async fn record_write_outcomes(&self, outcomes: &[(i64, WriteOutcome)]) -> Result<()> {
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin record write outcomes"))?;
        let now = now_ms();
        let ctx = self.registry.ctx();
        for (id, outcome) in outcomes {
            let Some(row) = tx
                .query_opt(
                    "SELECT state, object FROM writes WHERE id = $1 FOR UPDATE",
                    &[id],
                )
                .await
                .map_err(db("record write outcome"))?
            else {
                return Err(invalid(
                    "record write outcome",
                    format!("write {id} does not exist"),
                ));
            };
            let from: String = row.get(0);
            let object: String = row.get(1);
            let from = WriteState::parse(&from).ok_or_else(|| {
                invalid(
                    "record write outcome",
                    format!("write {id} has an unknown state '{from}'"),
                )
            })?;
            if !outcome.allowed_from(from) {
                return Err(illegal(*id, from, outcome));
            }
            let to = outcome.target().as_str();
            let detail = ctx.outcome_text(&object, outcome)?;
            let detail = detail.as_str();
            let column = match outcome {
                WriteOutcome::Applied { .. } => Some("record_id"),
                WriteOutcome::Retry { .. } | WriteOutcome::Failed { .. } => Some("last_error"),
                WriteOutcome::Conflict { .. } | WriteOutcome::Rejected { .. } => Some("reason"),
                WriteOutcome::Confirmed { .. } => Some("echo_event_key"),
                // The note is kept in the transition only.
                WriteOutcome::Requeue { .. } => None,
            };
            let done = match column {
                Some(col) => {
                    tx.execute(
                        &format!(
                            "UPDATE writes SET state = $2, {col} = $3, updated_at_ms = $4
                             WHERE id = $1"
                        ),
                        &[id, &to, &detail, &now],
                    )
                    .await
                }
                None => {
                    tx.execute(
                        "UPDATE writes SET state = $2, updated_at_ms = $3 WHERE id = $1",
                        &[id, &to, &now],
                    )
                    .await
                }
            };
            done.map_err(db("record write outcome"))?;
            log_transition(&tx, *id, Some(from), outcome.target(), now, Some(detail)).await?;
        }
        tx.commit()
            .await
            .map_err(db("commit record write outcomes"))
    }

    async fn write(&self, id: i64) -> Result<Option<LedgerWrite>> {
        let client = self.reader.lock().await;
        let w = get(&*client, id).await?;
        Ok(self
            .registry
            .ctx()
            .open_writes(w.into_iter().collect())?
            .pop())
    }

    async fn write_transitions(&self, id: i64) -> Result<Vec<WriteTransition>> {
        let client = self.reader.lock().await;
        let object = get(&*client, id)
            .await?
            .map(|w| w.object)
            .unwrap_or_default();
        let rows = client
            .query(
                "SELECT from_state, to_state, at_ms, detail, actor, note FROM write_transitions
                 WHERE write_id = $1 ORDER BY seq",
                &[&id],
            )
            .await
            .map_err(db("read write transitions"))?;
        let state = |s: &str| {
            WriteState::parse(s).ok_or_else(|| {
                invalid(
                    "read write transitions",
                    format!("write {id} has a transition to an unknown state '{s}'"),
                )
            })
        };
        rows.iter()
            .map(|r| {
                let from: Option<String> = r.get(0);
                let to: String = r.get(1);
                Ok(WriteTransition {
                    from: from.as_deref().map(state).transpose()?,
                    to: state(&to)?,
                    at_ms: r.get(2),
                    detail: r.get(3),
                    actor: r.get(4),
                    note: r.get(5),
                })
            })
            .collect::<Result<Vec<_>>>()
            .and_then(|ts| self.registry.ctx().open_transitions(&object, ts))
    }

    async fn writes(&self, filter: &WriteFilter) -> Result<Vec<LedgerWrite>> {
        let states: Vec<&str> = filter.states.iter().map(|s| s.as_str()).collect();
        let any_state = states.is_empty();
        let limit = filter.limit.max(1) as i64;
        let sql = format!(
            "SELECT {COLUMNS} FROM writes
             WHERE ($1 OR state = ANY($2))
               AND ($3::TEXT IS NULL OR object = $3)
               AND ($4::TEXT IS NULL OR source_system = $4)
               AND (cardinality($6::TEXT[]) = 0 OR record_id = ANY($6))
             ORDER BY id {} LIMIT $5",
            if filter.newest_first { "DESC" } else { "ASC" }
        );
        let client = self.reader.lock().await;
        query(
            &*client,
            &sql,
            &[
                &any_state,
                &states,
                &filter.object,
                &filter.source_system,
                &limit,
                &filter.record_ids,
            ],
        )
        .await
        .and_then(|ws| self.registry.ctx().open_writes(ws))
    }

    async fn echo_write(&self, object: &str, record_id: &str) -> Result<Option<LedgerWrite>> {
        let client = self.reader.lock().await;
        let found = query(
            &*client,
            &format!(
                "SELECT {COLUMNS} FROM writes WHERE object = $1 AND record_id = $2
                     AND state = 'applied' ORDER BY updated_at_ms, id LIMIT 1"
            ),
            &[&object, &record_id],
        )
        .await?;
        Ok(self.registry.ctx().open_writes(found)?.into_iter().next())
    }

    async fn echo_sources(
        &self,
        event_keys: &[String],
    ) -> Result<std::collections::HashMap<String, String>> {
        let client = self.reader.lock().await;
        let rows = client
            .query(
                "SELECT echo_event_key, source_system FROM writes
                 WHERE echo_event_key = ANY($1)",
                &[&event_keys],
            )
            .await
            .map_err(|e| StoreError::postgres("find echo sources", e))?;
        rows.iter()
            .map(|r| {
                let g = |e| StoreError::postgres("find echo sources", e);
                Ok((r.try_get(0).map_err(g)?, r.try_get(1).map_err(g)?))
            })
            .collect()
    }

    async fn resolve_conflict(
        &self,
        id: i64,
        resolution: &Resolution,
        actor: &str,
        note: &str,
    ) -> Result<LedgerWrite> {
        const OP: &str = "resolve write conflict";
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin resolve write conflict"))?;
        let now = now_ms();
        let ctx = self.registry.ctx();
        if lock_state(&tx, OP, id).await?.is_none() {
            return Err(invalid(OP, format!("write {id} does not exist")));
        }
        let w = get(&tx, id)
            .await?
            .ok_or_else(|| invalid(OP, format!("write {id} does not exist")))?;
        let w = ctx.open_writes(vec![w])?.remove(0);
        let plan = plan_resolution(&w, resolution, actor, note).map_err(|r| invalid(OP, r))?;
        let fields = plan
            .fields
            .as_deref()
            .map(|f| ctx.seal_write_fields(&w.object, f))
            .transpose()?;
        tx.execute(
            "UPDATE writes SET state = $2, fields = coalesce($3, fields),
                 seen_version_ms = coalesce($4, seen_version_ms), reason = coalesce($5, reason),
                 updated_at_ms = $6
             WHERE id = $1",
            &[
                &id,
                &plan.to.as_str(),
                &fields,
                &plan.seen_version_ms,
                &plan.reason,
                &now,
            ],
        )
        .await
        .map_err(db(OP))?;
        log_action(
            &tx,
            id,
            Some(WriteState::Conflict),
            plan.to,
            now,
            Some(&plan.detail),
            Some(actor),
            stored_note(note),
        )
        .await?;
        let w = get(&tx, id)
            .await?
            .ok_or_else(|| invalid(OP, format!("write {id} vanished")))?;
        tx.commit()
            .await
            .map_err(db("commit resolve write conflict"))?;
        Ok(ctx.open_writes(vec![w])?.remove(0))
    }

    async fn redrive_writes(
        &self,
        ids: &[i64],
        actor: &str,
        note: &str,
    ) -> Result<Vec<(i64, WriteActOutcome)>> {
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin redrive writes"))?;
        let out = act(&tx, ids, WriteAction::Redrive, actor, note, now_ms()).await?;
        tx.commit().await.map_err(db("commit redrive writes"))?;
        Ok(out)
    }

    async fn discard_writes(
        &self,
        ids: &[i64],
        actor: &str,
        note: &str,
    ) -> Result<Vec<(i64, WriteActOutcome)>> {
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin discard writes"))?;
        let out = act(&tx, ids, WriteAction::Discard, actor, note, now_ms()).await?;
        tx.commit().await.map_err(db("commit discard writes"))?;
        Ok(out)
    }

    async fn requeue_abandoned(&self, claimed_before_ms: i64, note: &str) -> Result<Vec<i64>> {
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin requeue abandoned writes"))?;
        let now = now_ms();
        let ids: Vec<i64> = tx
            .query(
                "SELECT id FROM writes WHERE state = 'sent' AND updated_at_ms < $1
                 ORDER BY updated_at_ms, id FOR UPDATE SKIP LOCKED",
                &[&claimed_before_ms],
            )
            .await
            .map_err(db("requeue abandoned writes"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.execute(
            "UPDATE writes SET state = 'pending', updated_at_ms = $2 WHERE id = ANY($1)",
            &[&ids, &now],
        )
        .await
        .map_err(db("requeue abandoned writes"))?;
        for id in &ids {
            log_transition(
                &tx,
                *id,
                Some(WriteState::Sent),
                WriteState::Pending,
                now,
                Some(note),
            )
            .await?;
        }
        tx.commit()
            .await
            .map_err(db("commit requeue abandoned writes"))?;
        Ok(ids)
    }
}
