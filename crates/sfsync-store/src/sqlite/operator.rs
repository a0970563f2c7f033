//! The operator action chain and dead-letter listing on SQLite (see [`crate::operator`]). An
//! append reads the chain head and inserts after it in one `BEGIN IMMEDIATE` transaction, so
//! appends from several connections or processes are serialised.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::SqliteChangeLog;
use crate::error::{Result, StoreError};
use crate::operator::*;

fn db(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::sqlite(op, e)
}

const COLUMNS: &str = "seq, actor, action, target, at_ms, entry, prev_hash, hash";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredActionRow> {
    Ok(StoredActionRow {
        seq: r.get(0)?,
        actor: r.get(1)?,
        action: r.get(2)?,
        target: r.get(3)?,
        at_ms: r.get(4)?,
        entry: r.get(5)?,
        prev_hash: r.get(6)?,
        hash: r.get(7)?,
    })
}

fn undecodable(seq: i64) -> StoreError {
    StoreError::InvalidInput {
        backend: super::BACKEND,
        op: "read operator actions",
        reason: format!("operator_actions seq {seq}: the stored entry does not parse"),
    }
}

/// Walks the operator chain (for `verify_audit`).
pub(super) fn verify(conn: &Connection, v: &mut crate::AuditVerification) -> Result<()> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {COLUMNS} FROM operator_actions ORDER BY seq"
        ))
        .map_err(db("read operator actions"))?;
    let mut rows = stmt.query([]).map_err(db("read operator actions"))?;
    let mut verifier = ActionVerifier::default();
    while let Some(r) = rows.next().map_err(db("read operator actions"))? {
        verifier.push(row(r).map_err(db("read operator actions"))?);
    }
    verifier.fold_into(v);
    Ok(())
}

#[async_trait]
impl OperatorLog for SqliteChangeLog {
    async fn record_operator_action(
        &self,
        action: &OperatorAction,
    ) -> Result<StoredOperatorAction> {
        let action = action.clone();
        self.transaction(move |tx| {
            let conn = tx.connection();
            let head: Option<(i64, String)> = conn
                .query_row(
                    "SELECT seq, hash FROM operator_actions ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db("read the operator chain head"))?;
            let seq = head.as_ref().map_or(1, |(s, _)| s + 1);
            let (entry, prev_hash, hash) = chain_row(head.as_ref().map(|(_, h)| h.as_str()), &action);
            conn.execute(
                "INSERT INTO operator_actions (seq, actor, action, target, at_ms, entry, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    seq,
                    action.actor,
                    action.action,
                    action.target,
                    action.at_ms,
                    entry,
                    prev_hash,
                    hash
                ],
            )
            .map_err(db("record operator action"))?;
            Ok(StoredOperatorAction {
                seq,
                action,
                prev_hash,
                hash,
            })
        })
        .await
    }

    async fn operator_actions(&self, limit: usize) -> Result<Vec<StoredOperatorAction>> {
        self.blocking("read operator actions", move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM operator_actions ORDER BY seq DESC LIMIT ?1"
                ))
                .map_err(db("read operator actions"))?;
            let rows = stmt
                .query_map([limit as i64], row)
                .map_err(db("read operator actions"))?;
            let mut out = Vec::new();
            for r in rows {
                let r = r.map_err(db("read operator actions"))?;
                let seq = r.seq;
                out.push(r.decode().ok_or_else(|| undecodable(seq))?);
            }
            Ok(out)
        })
        .await
    }

    async fn ops_counts(&self) -> Result<OpsCounts> {
        self.blocking("count queues", |conn| {
            let mut stmt = conn.prepare(OPS_COUNTS_SQL).map_err(db("count queues"))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(db("count queues"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db("count queues"))?;
            Ok(fold_counts(rows))
        })
        .await
    }
}
