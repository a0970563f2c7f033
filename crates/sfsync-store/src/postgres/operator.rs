//! The operator action chain and dead-letter listing on Postgres (see [`crate::operator`]). An
//! append takes an exclusive lock on `operator_actions` for its transaction, reads the head and
//! inserts after it, so concurrent appends (several processes) are serialised.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::warehouse::db;
use super::PostgresChangeLog;
use crate::error::{Result, StoreError};
use crate::operator::*;

const COLUMNS: &str = "seq, actor, action, target, at_ms, entry, prev_hash, hash";

fn row(r: &Row) -> Result<StoredActionRow> {
    let get = db("read operator actions");
    Ok(StoredActionRow {
        seq: r.try_get(0).map_err(&get)?,
        actor: r.try_get(1).map_err(&get)?,
        action: r.try_get(2).map_err(&get)?,
        target: r.try_get(3).map_err(&get)?,
        at_ms: r.try_get(4).map_err(&get)?,
        entry: r.try_get(5).map_err(&get)?,
        prev_hash: r.try_get(6).map_err(&get)?,
        hash: r.try_get(7).map_err(&get)?,
    })
}

/// Walks the operator chain page by page (for `verify_audit`).
pub(super) async fn verify(
    client: &tokio_postgres::Client,
    v: &mut crate::AuditVerification,
) -> Result<()> {
    const PAGE: i64 = 500;
    let mut verifier = ActionVerifier::default();
    let mut after = i64::MIN;
    loop {
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM operator_actions WHERE seq > $1 ORDER BY seq LIMIT $2"
                ),
                &[&after, &PAGE],
            )
            .await
            .map_err(db("read operator actions"))?;
        for r in &rows {
            let r = row(r)?;
            after = r.seq;
            verifier.push(r);
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    verifier.fold_into(v);
    Ok(())
}

#[async_trait]
impl OperatorLog for PostgresChangeLog {
    async fn record_operator_action(
        &self,
        action: &OperatorAction,
    ) -> Result<StoredOperatorAction> {
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(db("begin record operator action"))?;
        tx.batch_execute("LOCK TABLE operator_actions IN EXCLUSIVE MODE")
            .await
            .map_err(db("lock the operator chain"))?;
        let head = tx
            .query_opt(
                "SELECT seq, hash FROM operator_actions ORDER BY seq DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(db("read the operator chain head"))?
            .map(|r| -> Result<(i64, String)> {
                let get = db("read the operator chain head");
                Ok((r.try_get(0).map_err(&get)?, r.try_get(1).map_err(&get)?))
            })
            .transpose()?;
        let seq = head.as_ref().map_or(1, |(s, _)| s + 1);
        let (entry, prev_hash, hash) = chain_row(head.as_ref().map(|(_, h)| h.as_str()), action);
        tx.execute(
            "INSERT INTO operator_actions (seq, actor, action, target, at_ms, entry, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &seq,
                &action.actor,
                &action.action,
                &action.target,
                &action.at_ms,
                &entry,
                &prev_hash,
                &hash,
            ],
        )
        .await
        .map_err(db("record operator action"))?;
        tx.commit()
            .await
            .map_err(db("commit record operator action"))?;
        Ok(StoredOperatorAction {
            seq,
            action: action.clone(),
            prev_hash,
            hash,
        })
    }

    async fn operator_actions(&self, limit: usize) -> Result<Vec<StoredOperatorAction>> {
        let client = self.client.lock().await;
        let rows = client
            .query(
                &format!("SELECT {COLUMNS} FROM operator_actions ORDER BY seq DESC LIMIT $1"),
                &[&(limit as i64)],
            )
            .await
            .map_err(db("read operator actions"))?;
        let mut out = Vec::new();
        for r in &rows {
            let r = row(r)?;
            let seq = r.seq;
            out.push(r.decode().ok_or_else(|| StoreError::InvalidInput {
                backend: super::BACKEND,
                op: "read operator actions",
                reason: format!("operator_actions seq {seq}: the stored entry does not parse"),
            })?);
        }
        Ok(out)
    }

    async fn ops_counts(&self) -> Result<OpsCounts> {
        let client = self.client.lock().await;
        let rows = client
            .query(OPS_COUNTS_SQL, &[])
            .await
            .map_err(db("count queues"))?;
        let mut out = Vec::new();
        for r in &rows {
            let get = db("count queues");
            out.push((
                r.try_get(0).map_err(&get)?,
                r.try_get(1).map_err(&get)?,
                r.try_get(2).map_err(&get)?,
            ));
        }
        Ok(fold_counts(out))
    }
}
