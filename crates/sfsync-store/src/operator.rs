//! What operators do and see through the API: their actions, kept in a hash-chained
//! `operator_actions` table beside the record-level audit trail, and the event dead letters.
//!
//! Guarantees: [`OperatorLog::record_operator_action`] commits before it returns, and each
//! entry is linked to the previous one by SHA-256 over (previous hash, canonical JSON of the
//! entry), exactly like `audit_log`; entries are appended in one serialised order (SQLite
//! `BEGIN IMMEDIATE`, Postgres an exclusive table lock), so two processes never fork the chain.
//! [`crate::Warehouse::verify_audit`] walks this chain too: editing, reordering or deleting an
//! entry breaks it. Entries name who (the token name), what, the target and when, and carry no
//! record values (a write batch is described by its source system, counts and idempotency keys).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::curated::AuditVerification;
use crate::error::Result;
use crate::warehouse::{chain_hash, GENESIS_HASH};
use crate::ChangeLog;

/// One operator action as recorded (and hashed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorAction {
    /// Who: the API token's name (`ops-team`), or `cli:<user>`.
    pub actor: String,
    /// The role the actor acted in (`operator`, `writer`).
    pub role: String,
    /// What: `run.cancel`, `quarantine.release`, `quarantine.force_release`,
    /// `quarantine.discard`, `writes.submit`.
    pub action: String,
    /// The target: `run 12`, `quarantine 7,8`, `source_system case_mgmt`.
    pub target: String,
    /// Parameters and outcome, JSON (a note, the ids acted on, counts).
    pub detail: serde_json::Value,
    /// When (epoch ms).
    pub at_ms: i64,
}

/// An action as stored, with its position and chain hash.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredOperatorAction {
    pub seq: i64,
    pub action: OperatorAction,
    pub prev_hash: String,
    pub hash: String,
}

/// Operator actions and queue sizes of a store.
///
/// Contracts: `record_operator_action` is one transaction, durable when it returns, appended at
/// the chain head; reads never change anything.
#[async_trait]
pub trait OperatorLog: ChangeLog {
    /// Appends `action` to the operator chain and returns it as stored.
    async fn record_operator_action(&self, action: &OperatorAction)
        -> Result<StoredOperatorAction>;

    /// The newest `limit` actions, newest first.
    async fn operator_actions(&self, limit: usize) -> Result<Vec<StoredOperatorAction>>;

    /// Sizes of the queues operators watch, counted in the database (one consistent read per
    /// figure; no rows are loaded).
    async fn ops_counts(&self) -> Result<OpsCounts>;
}

/// Queue sizes for status and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpsCounts {
    /// Writes in the ledger per state (every state, zero included), in [`crate::WriteState::ALL`]
    /// order.
    pub writes_by_state: Vec<(crate::WriteState, u64)>,
    /// Writes per (object, source system) and state (only what occurs), sorted.
    pub writes_by_object: Vec<(String, String, crate::WriteState, u64)>,
    /// Per (object, source system): when its oldest write still on its way (pending or sent)
    /// was accepted (ms).
    pub oldest_open_write_ms: Vec<(String, String, i64)>,
    /// Finished runs (sync jobs) recorded, per (kind, status), sorted.
    pub runs_finished: Vec<(String, String, u64)>,
    pub pending_repairs: u64,
    pub pending_resyncs: u64,
    pub dead_letters: u64,
    /// Open quarantined changes (held, release or force requested).
    pub quarantine_open: u64,
}

/// The SQL of [`OperatorLog::ops_counts`] (the same on both backends): (figure, key, count).
pub(crate) const OPS_COUNTS_SQL: &str = "
    SELECT 'writes', object || '|' || source_system || '|' || state, COUNT(*) FROM writes
        GROUP BY object, source_system, state
    UNION ALL SELECT 'oldest_open', object || '|' || source_system, MIN(created_at_ms) FROM writes
        WHERE state IN ('pending', 'sent') GROUP BY object, source_system
    UNION ALL SELECT 'runs', kind || '|' || status, COUNT(*) FROM sync_jobs
        WHERE status IN ('succeeded', 'failed', 'cancelled') GROUP BY kind, status
    UNION ALL SELECT 'repairs', '', COUNT(*) FROM repair_requests WHERE status = 'pending'
    UNION ALL SELECT 'resyncs', '', COUNT(*) FROM resync_requests WHERE status = 'pending'
    UNION ALL SELECT 'dead_letters', '', COUNT(*) FROM dead_letters
    UNION ALL SELECT 'quarantine', '', COUNT(*) FROM quarantine
        WHERE status IN ('held', 'release_requested', 'force_requested')";

/// Folds the rows of [`OPS_COUNTS_SQL`].
pub(crate) fn fold_counts(rows: impl IntoIterator<Item = (String, String, i64)>) -> OpsCounts {
    let mut c = OpsCounts {
        writes_by_state: crate::WriteState::ALL.iter().map(|s| (*s, 0)).collect(),
        ..Default::default()
    };
    for (figure, key, n) in rows {
        let n = n.max(0) as u64;
        match figure.as_str() {
            "writes" => {
                // Object and state never hold '|'; a source system might.
                let Some((object, rest)) = key.split_once('|') else {
                    continue;
                };
                let Some((source, state)) = rest.rsplit_once('|') else {
                    continue;
                };
                let Some(state) = crate::WriteState::ALL
                    .iter()
                    .find(|s| s.as_str() == state)
                    .copied()
                else {
                    continue;
                };
                if let Some(e) = c.writes_by_state.iter_mut().find(|(s, _)| *s == state) {
                    e.1 += n;
                }
                c.writes_by_object
                    .push((object.to_string(), source.to_string(), state, n));
            }
            "oldest_open" => {
                if let Some((object, source)) = key.split_once('|') {
                    c.oldest_open_write_ms
                        .push((object.to_string(), source.to_string(), n as i64));
                }
            }
            "runs" => {
                if let Some((kind, status)) = key.split_once('|') {
                    c.runs_finished
                        .push((kind.to_string(), status.to_string(), n));
                }
            }
            "repairs" => c.pending_repairs = n,
            "resyncs" => c.pending_resyncs = n,
            "dead_letters" => c.dead_letters = n,
            "quarantine" => c.quarantine_open = n,
            _ => {}
        }
    }
    c.writes_by_object
        .sort_by(|a, b| (&a.0, &a.1, a.2.as_str()).cmp(&(&b.0, &b.1, b.2.as_str())));
    c.oldest_open_write_ms.sort();
    c.runs_finished.sort();
    c
}

/// Everything the API needs of a store: the warehouse, the write ledger and the operator log.
pub trait Store: crate::Warehouse + crate::WriteLedger + OperatorLog + crate::RowStore {}

impl<T: crate::Warehouse + crate::WriteLedger + OperatorLog + crate::RowStore> Store for T {}

/// The canonical (hashed) JSON of an action.
pub(crate) fn action_json(a: &OperatorAction) -> String {
    serde_json::to_string(a).expect("an operator action serialises")
}

/// The stored row of `a` appended after `prev_hash` (`None`: the chain is empty).
pub(crate) fn chain_row(prev_hash: Option<&str>, a: &OperatorAction) -> (String, String, String) {
    let prev = prev_hash.unwrap_or(GENESIS_HASH).to_string();
    let entry = action_json(a);
    let hash = chain_hash(&prev, &entry).unwrap_or_default();
    (entry, prev, hash)
}

/// One stored row as read for verification.
#[derive(Debug)]
pub(crate) struct StoredActionRow {
    pub seq: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub at_ms: i64,
    pub entry: String,
    pub prev_hash: String,
    pub hash: String,
}

impl StoredActionRow {
    pub(crate) fn decode(self) -> Option<StoredOperatorAction> {
        Some(StoredOperatorAction {
            seq: self.seq,
            action: serde_json::from_str(&self.entry).ok()?,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}

/// Walks the operator chain in seq order, then folds its result into the audit verification:
/// the counts add up and the first break of either chain is reported (operator entries named
/// `operator_actions seq N`).
#[derive(Debug, Default)]
pub(crate) struct ActionVerifier {
    entries: u64,
    last: Option<String>,
    first_break: Option<(u64, String)>,
}

impl ActionVerifier {
    pub(crate) fn push(&mut self, r: StoredActionRow) {
        self.entries += 1;
        let seq = r.seq.max(0) as u64;
        let expected_prev = self.last.as_deref().unwrap_or(GENESIS_HASH);
        let problem = if r.prev_hash != expected_prev {
            Some(format!(
                "operator_actions: broken link at seq {seq}: prev_hash does not match the hash of the previous entry"
            ))
        } else if chain_hash(&r.prev_hash, &r.entry).as_deref() != Some(r.hash.as_str()) {
            Some(format!("operator_actions: hash mismatch at seq {seq}"))
        } else {
            match serde_json::from_str::<OperatorAction>(&r.entry) {
                Err(e) => Some(format!(
                    "operator_actions: entry at seq {seq} does not parse: {e}"
                )),
                Ok(a) => [
                    ("actor", a.actor == r.actor),
                    ("action", a.action == r.action),
                    ("target", a.target == r.target),
                    ("at_ms", a.at_ms == r.at_ms),
                ]
                .iter()
                .find(|(_, ok)| !ok)
                .map(|(col, _)| {
                    format!(
                        "operator_actions: column {col} at seq {seq} differs from the hashed entry"
                    )
                }),
            }
        };
        if self.first_break.is_none() {
            self.first_break = problem.map(|p| (seq, p));
        }
        self.last = Some(r.hash);
    }

    /// Adds this chain's result to the record audit chain's.
    pub(crate) fn fold_into(self, v: &mut AuditVerification) {
        v.operator_actions = self.entries;
        v.operator_head = self.last;
        if v.first_break.is_none() {
            v.first_break = self.first_break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(n: i64) -> OperatorAction {
        OperatorAction {
            actor: "ops".into(),
            role: "operator".into(),
            action: "run.cancel".into(),
            target: format!("run {n}"),
            detail: serde_json::json!({ "note": "x" }),
            at_ms: 1000 + n,
        }
    }

    fn rows(n: i64) -> Vec<StoredActionRow> {
        let mut prev: Option<String> = None;
        let mut out = Vec::new();
        for i in 1..=n {
            let a = action(i);
            let (entry, prev_hash, hash) = chain_row(prev.as_deref(), &a);
            prev = Some(hash.clone());
            out.push(StoredActionRow {
                seq: i,
                actor: a.actor,
                action: a.action,
                target: a.target,
                at_ms: a.at_ms,
                entry,
                prev_hash,
                hash,
            });
        }
        out
    }

    fn verify(rows: Vec<StoredActionRow>) -> AuditVerification {
        let mut v = ActionVerifier::default();
        for r in rows {
            v.push(r);
        }
        let mut out = AuditVerification {
            entries: 0,
            first_break: None,
            head: None,
            operator_actions: 0,
            operator_head: None,
        };
        v.fold_into(&mut out);
        out
    }

    #[test]
    fn an_intact_chain_verifies_and_each_kind_of_tampering_is_found() {
        let v = verify(rows(3));
        assert_eq!((v.operator_actions, v.first_break), (3, None));
        let mut r = rows(3);
        r[1].entry = r[1].entry.replace("run 2", "run 9");
        assert_eq!(
            verify(r).first_break,
            Some((2, "operator_actions: hash mismatch at seq 2".into()))
        );
        let mut r = rows(3);
        r.remove(1);
        assert!(verify(r)
            .first_break
            .unwrap()
            .1
            .contains("broken link at seq 3"));
        let mut r = rows(3);
        r[0].target = "run 5".into();
        assert_eq!(
            verify(r).first_break.unwrap().1,
            "operator_actions: column target at seq 1 differs from the hashed entry"
        );
    }
}
