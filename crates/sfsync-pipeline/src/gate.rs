//! Back-pressure from the apply stage to ingest: a channel stops fetching while the raw log
//! holds more than `max_lag` changes this run appended but has not applied yet, so the apply
//! stage reads them back from the store's in-memory tail (no query, no decompression, no
//! decryption) and memory stays bounded. It never stalls ingest behind a stuck apply stage: when
//! apply makes no progress for `stall_after`, ingest goes on (the raw log is the buffer that
//! keeps changes past Salesforce's retention window).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::Notify;

use crate::stats::PipelineStats;

#[derive(Debug)]
pub struct LagGate {
    max_lag: u64,
    stall_after: Duration,
    progressed: Notify,
}

impl LagGate {
    pub fn new(max_lag: u64, stall_after: Duration) -> LagGate {
        LagGate {
            max_lag: max_lag.max(1),
            stall_after,
            progressed: Notify::new(),
        }
    }

    /// Called by the apply stage after each step that processed something.
    pub fn progressed(&self) {
        self.progressed.notify_waiters();
    }

    /// Changes appended this run and not yet processed by the apply stage.
    pub fn lag(stats: &PipelineStats) -> u64 {
        stats
            .ingested
            .load(Relaxed)
            .saturating_sub(stats.processed.load(Relaxed))
    }

    /// Waits while the lag is above the limit and apply keeps making progress. Returns whether
    /// it waited at all.
    pub async fn wait(&self, stats: &PipelineStats) -> bool {
        let mut waited = false;
        loop {
            let notified = self.progressed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if Self::lag(stats) <= self.max_lag {
                return waited;
            }
            waited = true;
            if tokio::time::timeout(self.stall_after, notified)
                .await
                .is_err()
            {
                // Apply made no progress: keep ingesting.
                return waited;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn waits_for_apply_and_never_for_a_stalled_one() {
        let stats = Arc::new(PipelineStats::default());
        let gate = Arc::new(LagGate::new(10, Duration::from_millis(200)));
        assert!(!gate.wait(&stats).await);
        stats.ingested.store(50, Relaxed);
        // Apply catches up while ingest waits.
        let (s2, g2) = (stats.clone(), gate.clone());
        let apply = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                s2.processed.fetch_add(10, Relaxed);
                g2.progressed();
            }
        });
        assert!(gate.wait(&stats).await);
        assert!(LagGate::lag(&stats) <= 10);
        apply.await.unwrap();
        // A stalled apply stage: ingest goes on after the stall timeout.
        stats.ingested.store(1_000, Relaxed);
        let t = std::time::Instant::now();
        assert!(gate.wait(&stats).await);
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert!(LagGate::lag(&stats) > 10);
    }
}
