//! Echo confirmation: a change applied to the curated model whose origin client
//! (`changeOrigin` `client=`) is our own is the CDC echo of a write we delivered; it moves that
//! write from `applied` to `confirmed`, recording the change's event key.
//!
//! Guarantees and limits:
//! - Confirmation is recorded right after the batch holding the echo is committed (in the commit
//!   task), not in the same transaction: the write ledger is a separate part of the store. A
//!   crash between the two leaves the write `applied` (its effect is in Salesforce and in the
//!   curated model; only the confirmation is missing).
//! - An echo can be applied before the deliverer has recorded `applied` (the call returned, the
//!   event travelled faster than the ledger update): such echoes are kept and matched again
//!   whenever the deliverer records outcomes or another echo arrives, for
//!   [`UNMATCHED_KEEP_MS`].
//! - Changes not from us cost nothing here: the apply stage only collects echoes when the batch
//!   counted own writes.
//! - Echo suppression: the confirmed write keeps its `source_system` and the echo's event key
//!   (`echo_event_key`), so a delivery sink can look up, for any curated change, which system
//!   originated it and not send it back there.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use parking_lot::Mutex;
use sfsync_store::{WriteLedger, WriteOutcome};

use crate::stats::PipelineStats;

/// How long an echo without an `applied` write is kept for matching.
pub const UNMATCHED_KEEP_MS: i64 = 120_000;

/// The write ledger handed to the pipeline for echo confirmation.
#[derive(Clone)]
pub struct EchoLedger(pub Arc<dyn WriteLedger>);

impl std::fmt::Debug for EchoLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EchoLedger")
    }
}

/// One echo of our own change: object, record id, event key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo {
    pub object: String,
    pub record_id: String,
    pub event_key: String,
}

/// Matches echoes to their writes (shared by the apply stage and the deliverer).
pub struct EchoConfirmer {
    ledger: Arc<dyn WriteLedger>,
    stats: Arc<PipelineStats>,
    /// Echoes not matched yet, with the time (ms) until which they are kept.
    unmatched: Mutex<Vec<(Echo, i64)>>,
}

impl EchoConfirmer {
    pub fn new(ledger: Arc<dyn WriteLedger>, stats: Arc<PipelineStats>) -> EchoConfirmer {
        EchoConfirmer {
            ledger,
            stats,
            unmatched: Mutex::new(Vec::new()),
        }
    }

    /// Confirms the writes `echoes` are the echoes of (in order), and retries earlier unmatched
    /// echoes. Errors are logged and counted; the echoes are kept for another try.
    pub async fn confirm(&self, echoes: Vec<Echo>) {
        let now = now_ms();
        let mut todo: Vec<(Echo, i64)> = std::mem::take(&mut *self.unmatched.lock());
        todo.extend(echoes.into_iter().map(|e| (e, now + UNMATCHED_KEEP_MS)));
        let mut keep = Vec::new();
        for (echo, until) in todo {
            match self.confirm_one(&echo).await {
                Ok(true) => {}
                Ok(false) if until > now => keep.push((echo, until)),
                Ok(false) => {
                    tracing::debug!(object = %echo.object, record = %echo.record_id, event = %echo.event_key, "An echo of our own change matched no applied write.");
                }
                Err(e) => {
                    self.stats.errors.fetch_add(1, Relaxed);
                    tracing::warn!(error = %sfsync_salesforce::error::error_chain(&e), event = %echo.event_key, "Confirming a write from its echo failed; trying again later.");
                    keep.push((echo, until));
                }
            }
        }
        if !keep.is_empty() {
            self.unmatched.lock().extend(keep);
        }
    }

    /// Whether echoes wait for their write.
    pub fn has_unmatched(&self) -> bool {
        !self.unmatched.lock().is_empty()
    }

    async fn confirm_one(&self, echo: &Echo) -> sfsync_store::Result<bool> {
        let Some(w) = self
            .ledger
            .echo_write(&echo.object, &echo.record_id)
            .await?
        else {
            return Ok(false);
        };
        self.ledger
            .record_write_outcomes(&[(
                w.id,
                WriteOutcome::Confirmed {
                    event_key: echo.event_key.clone(),
                },
            )])
            .await?;
        let wb = &self.stats.writeback;
        wb.confirmed.fetch_add(1, Relaxed);
        wb.accepted_to_confirmed.observe(now_ms() - w.created_at_ms);
        Ok(true)
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
