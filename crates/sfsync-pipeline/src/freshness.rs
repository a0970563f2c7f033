//! The writer of the freshness contract: every [`FreshnessConfig::update_every`] the running
//! process derives each configured object's [`SyncStatusState`] from what it already knows and
//! writes the set in one transaction ([`SyncStatusStore::put_sync_status`]); the warehouse's
//! `sync_status` view turns it into lag and `current` / `delayed` / `partial` with the
//! database's clock.
//!
//! Guarantee: `current_as_of` never claims more than is known. It is the time of the check only
//! while the object's channel is subscribed and no change of the object waits in the raw log past
//! the apply offset; otherwise the commit time of the oldest waiting change, or the moment the
//! stream went down, whichever is earlier. Before this process has subscribed it stays where the
//! last run left it. So an idle object is `current`, a backlog or a broken stream shows as
//! `delayed`, and a dead process as `delayed` once the threshold passes. It costs nothing per
//! event: each tick is one read of the apply offset, one indexed lookup per object and a few
//! counts of open work.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sfsync_store::{LogPoint, OpenWork, ReconcileResult, SyncStatusState, Warehouse};
use tokio::sync::watch;

use crate::error::chain;
use crate::stats::{ObjectStats, PipelineStats, StreamState};

/// How often and against what threshold the contract is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreshnessConfig {
    /// Between two updates of `sync_status_state`.
    pub update_every: Duration,
    /// An object is `delayed` once its `current_as_of` is older than this (seconds).
    pub delayed_after_secs: u64,
    /// Per-object thresholds that replace [`FreshnessConfig::delayed_after_secs`].
    pub delayed_after_by_object: BTreeMap<String, u64>,
}

impl Default for FreshnessConfig {
    fn default() -> Self {
        FreshnessConfig {
            update_every: Duration::from_secs(5),
            delayed_after_secs: 120,
            delayed_after_by_object: BTreeMap::new(),
        }
    }
}

impl FreshnessConfig {
    /// The threshold of `object` (at least 1 s).
    pub fn delayed_after(&self, object: &str) -> u64 {
        self.delayed_after_by_object
            .get(object)
            .copied()
            .unwrap_or(self.delayed_after_secs)
            .max(1)
    }
}

/// What the process knows about one object at one check.
#[derive(Debug, Clone)]
pub struct ObjectFacts<'a> {
    pub object: &'a str,
    /// When the check started (before the apply offset was read).
    pub check_ms: i64,
    /// Its channel's stream (`None`: not subscribed yet by this process).
    pub stream: Option<StreamState>,
    /// Commit time of the object's oldest raw-log change past the apply offset.
    pub oldest_waiting_commit_ms: Option<i64>,
    /// What the apply stage committed of it in this process.
    pub applied: ObjectStats,
    pub work: Option<&'a OpenWork>,
    /// The row written last (by this process or the one before).
    pub previous: Option<&'a SyncStatusState>,
    pub delayed_after_secs: u64,
}

/// The row of one object (pure; see the module docs for `current_as_of`).
pub fn object_state(f: &ObjectFacts<'_>) -> SyncStatusState {
    let previous_current = f.previous.and_then(|p| p.current_as_of_ms);
    let horizon = match f.stream {
        Some(StreamState::Up { .. }) => Some(f.check_ms),
        Some(StreamState::Down { since_ms }) => Some(since_ms),
        Some(StreamState::Polled { through_ms }) => Some(through_ms),
        None => previous_current,
    };
    let current_as_of = match (horizon, f.oldest_waiting_commit_ms) {
        (Some(h), Some(w)) => Some(h.min(w)),
        (h, None) => h,
        (None, Some(_)) => None,
    }
    .map(|c| c.min(f.check_ms));
    let positive = |ms: i64| (ms > 0).then_some(ms);
    let last_commit_ms = positive(f.applied.last_commit_ms)
        .into_iter()
        .chain(f.previous.and_then(|p| p.last_commit_ms))
        .max();
    let last_applied_ms =
        positive(f.applied.last_applied_ms).or_else(|| f.previous.and_then(|p| p.last_applied_ms));
    let empty = OpenWork::default();
    let work = f.work.unwrap_or(&empty);
    let (last_reconcile_ms, last_reconcile_result, last_reconcile_detail) =
        match &work.last_reconcile {
            None => (None, None, None),
            Some(r) if !r.succeeded => (
                r.finished_at_ms,
                Some(ReconcileResult::Failed),
                Some(
                    r.error
                        .clone()
                        .unwrap_or_else(|| "no error recorded".to_string()),
                ),
            ),
            Some(r) => {
                let report = r
                    .report
                    .as_deref()
                    .map(serde_json::from_str::<crate::reconcile::ReconcileReport>);
                match report {
                    Some(Ok(rep)) => {
                        let detail = format!(
                            "{} missing, {} extra, {} stale",
                            rep.missing, rep.extra, rep.stale
                        );
                        let result = if rep.drift() == 0 {
                            ReconcileResult::InSync
                        } else if r.repairs_pending > 0 {
                            ReconcileResult::Drift
                        } else {
                            ReconcileResult::Repaired
                        };
                        (r.finished_at_ms, Some(result), Some(detail))
                    }
                    Some(Err(e)) => (
                        r.finished_at_ms,
                        None,
                        Some(format!("the report of job {} is unreadable: {e}", r.job_id)),
                    ),
                    None => (
                        r.finished_at_ms,
                        None,
                        Some(format!("job {} left no report", r.job_id)),
                    ),
                }
            }
        };
    SyncStatusState {
        object: f.object.to_string(),
        last_commit_ms,
        last_applied_ms,
        current_as_of_ms: current_as_of,
        open_repairs: work.repairs,
        open_resyncs: work.resyncs,
        backfill_running: work.backfills > 0,
        last_reconcile_ms,
        last_reconcile_result,
        last_reconcile_detail,
        delayed_after_secs: f.delayed_after_secs.max(1),
        updated_ms: f.check_ms,
    }
}

/// Keeps `sync_status_state` up to date for the configured objects.
pub struct FreshnessWriter {
    pub store: Arc<dyn Warehouse>,
    pub stats: Arc<PipelineStats>,
    /// (object, its channel), in config order.
    pub objects: Vec<(String, String)>,
    pub config: FreshnessConfig,
    /// The rows written last, by object.
    previous: BTreeMap<String, SyncStatusState>,
}

impl FreshnessWriter {
    /// The state of the flow feeding `object`: its channel's stream, or — while that stream is
    /// down and the object is polled in its place (CDC → polling fallback) — the poll's, once a
    /// round that started after the stream went down has completed.
    fn stream_state(&self, object: &str, channel: &str) -> Option<StreamState> {
        let stream = self.stats.stream_state(channel);
        if let Some(StreamState::Down { since_ms }) = stream {
            if let Some(StreamState::Polled { through_ms }) =
                self.stats.stream_state(&crate::poll::channel(object))
            {
                if through_ms >= since_ms {
                    return Some(StreamState::Polled { through_ms });
                }
            }
        }
        stream
    }

    pub fn new(
        store: Arc<dyn Warehouse>,
        stats: Arc<PipelineStats>,
        objects: Vec<(String, String)>,
        config: FreshnessConfig,
    ) -> FreshnessWriter {
        FreshnessWriter {
            store,
            stats,
            objects,
            config,
            previous: BTreeMap::new(),
        }
    }

    /// Reads the rows the last run left (their `current_as_of` and newest commit carry over
    /// until this process knows better).
    pub async fn load_previous(&mut self) -> sfsync_store::Result<()> {
        self.previous = self
            .store
            .sync_status(None)
            .await?
            .into_iter()
            .map(|r| (r.state.object.clone(), r.state))
            .collect();
        Ok(())
    }

    /// One update: derives every object's row and writes them in one transaction.
    pub async fn update(&mut self) -> sfsync_store::Result<Vec<SyncStatusState>> {
        let check_ms = crate::apply::now_ms();
        let applied = self
            .store
            .applied_offset(crate::CURATED_CONSUMER)
            .await?
            .unwrap_or(0);
        let work = self.store.open_work().await?;
        let stats: BTreeMap<String, ObjectStats> = self.stats.objects().into_iter().collect();
        let mut states = Vec::with_capacity(self.objects.len());
        for (object, channel) in &self.objects {
            let waiting = self
                .store
                .locate(&LogPoint::FirstAfter {
                    entity: object.clone(),
                    after: applied,
                })
                .await?
                .map(|m| m.commit_timestamp);
            states.push(object_state(&ObjectFacts {
                object,
                check_ms,
                stream: self.stream_state(object, channel),
                oldest_waiting_commit_ms: waiting,
                applied: stats.get(object).copied().unwrap_or_default(),
                work: work.get(object),
                previous: self.previous.get(object),
                delayed_after_secs: self.config.delayed_after(object),
            }));
        }
        self.store.put_sync_status(&states).await?;
        self.previous = states
            .iter()
            .map(|s| (s.object.clone(), s.clone()))
            .collect();
        Ok(states)
    }

    /// Updates every [`FreshnessConfig::update_every`] until `stop` turns true, then once more
    /// (the final state of a graceful stop). A failed update is logged and counted; the next
    /// tick tries again.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        if let Err(e) = self.load_previous().await {
            self.failed("reading the last sync status", &e);
        }
        let mut tick =
            tokio::time::interval(self.config.update_every.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => *stop.borrow(),
                _ = stop.changed() => true,
            };
            if let Err(e) = self.update().await {
                self.failed("updating the sync status", &e);
            }
            if stopping {
                return;
            }
        }
    }

    fn failed(&self, what: &str, e: &sfsync_store::StoreError) {
        self.stats
            .errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(error = %chain(e), "Freshness: {what} failed; trying again at the next update.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfsync_store::LastReconcile;

    const NOW: i64 = 1_790_000_000_000;

    fn facts<'a>() -> ObjectFacts<'a> {
        ObjectFacts {
            object: "Case",
            check_ms: NOW,
            stream: Some(StreamState::Up {
                since_ms: NOW - 60_000,
            }),
            oldest_waiting_commit_ms: None,
            applied: ObjectStats::default(),
            work: None,
            previous: None,
            delayed_after_secs: 120,
        }
    }

    #[test]
    fn an_idle_object_with_its_stream_up_is_current_as_of_the_check() {
        let s = object_state(&facts());
        assert_eq!(s.current_as_of_ms, Some(NOW));
        assert_eq!(
            (s.open_repairs, s.open_resyncs, s.backfill_running),
            (0, 0, false)
        );
        assert_eq!(s.last_commit_ms, None);
        assert_eq!(s.updated_ms, NOW);
        assert_eq!(s.delayed_after_secs, 120);
    }

    #[test]
    fn a_waiting_change_holds_current_as_of_at_its_commit_time() {
        let f = ObjectFacts {
            oldest_waiting_commit_ms: Some(NOW - 90_000),
            ..facts()
        };
        assert_eq!(object_state(&f).current_as_of_ms, Some(NOW - 90_000));
        // A commit time ahead of our clock never puts current_as_of in the future.
        let f = ObjectFacts {
            oldest_waiting_commit_ms: Some(NOW + 5_000),
            ..facts()
        };
        assert_eq!(object_state(&f).current_as_of_ms, Some(NOW));
    }

    #[test]
    fn a_stream_that_is_down_holds_current_as_of_where_it_went_down() {
        let f = ObjectFacts {
            stream: Some(StreamState::Down {
                since_ms: NOW - 30_000,
            }),
            ..facts()
        };
        assert_eq!(object_state(&f).current_as_of_ms, Some(NOW - 30_000));
        let f = ObjectFacts {
            stream: Some(StreamState::Down {
                since_ms: NOW - 30_000,
            }),
            oldest_waiting_commit_ms: Some(NOW - 50_000),
            ..facts()
        };
        assert_eq!(object_state(&f).current_as_of_ms, Some(NOW - 50_000));
    }

    #[test]
    fn before_subscribing_the_last_runs_row_carries_over() {
        let previous = SyncStatusState {
            current_as_of_ms: Some(NOW - 600_000),
            last_commit_ms: Some(NOW - 700_000),
            last_applied_ms: Some(NOW - 650_000),
            ..object_state(&facts())
        };
        let f = ObjectFacts {
            stream: None,
            previous: Some(&previous),
            ..facts()
        };
        let s = object_state(&f);
        assert_eq!(s.current_as_of_ms, Some(NOW - 600_000));
        assert_eq!(s.last_commit_ms, Some(NOW - 700_000));
        assert_eq!(s.last_applied_ms, Some(NOW - 650_000));
        // Never caught up in any run, and a backlog: unknown.
        let f = ObjectFacts {
            stream: None,
            oldest_waiting_commit_ms: Some(NOW - 1_000),
            ..facts()
        };
        assert_eq!(object_state(&f).current_as_of_ms, None);
        // What this process applied wins over the previous row.
        let f = ObjectFacts {
            previous: Some(&previous),
            applied: ObjectStats {
                changes: 3,
                last_commit_ms: NOW - 2_000,
                last_applied_ms: NOW - 1_000,
            },
            ..facts()
        };
        let s = object_state(&f);
        assert_eq!(
            (s.last_commit_ms, s.last_applied_ms),
            (Some(NOW - 2_000), Some(NOW - 1_000))
        );
    }

    fn reconciled(report: Option<&str>, succeeded: bool, repairs_pending: u64) -> OpenWork {
        OpenWork {
            repairs: repairs_pending,
            last_reconcile: Some(LastReconcile {
                job_id: 4,
                succeeded,
                finished_at_ms: Some(NOW - 5_000),
                report: report.map(str::to_string),
                error: (!succeeded).then(|| "Bulk query job 750 ended Failed".into()),
                repairs_pending,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn open_work_and_the_last_reconciliation_are_carried_into_the_row() {
        let work = OpenWork {
            repairs: 2,
            resyncs: 1,
            backfills: 1,
            last_reconcile: None,
        };
        let s = object_state(&ObjectFacts {
            work: Some(&work),
            ..facts()
        });
        assert_eq!(
            (s.open_repairs, s.open_resyncs, s.backfill_running),
            (2, 1, true)
        );
        let report = r#"{"object":"Case","missing":2,"extra":0,"stale":1}"#;
        for (work, result, detail) in [
            (
                reconciled(Some(r#"{"missing":0,"extra":0,"stale":0}"#), true, 0),
                Some(ReconcileResult::InSync),
                "0 missing, 0 extra, 0 stale",
            ),
            (
                reconciled(Some(report), true, 3),
                Some(ReconcileResult::Drift),
                "2 missing, 0 extra, 1 stale",
            ),
            (
                reconciled(Some(report), true, 0),
                Some(ReconcileResult::Repaired),
                "2 missing, 0 extra, 1 stale",
            ),
            (
                reconciled(None, false, 0),
                Some(ReconcileResult::Failed),
                "Bulk query job 750 ended Failed",
            ),
            (
                reconciled(Some("not json"), true, 0),
                None,
                "the report of job 4 is unreadable: expected ident at line 1 column 2",
            ),
        ] {
            let s = object_state(&ObjectFacts {
                work: Some(&work),
                ..facts()
            });
            assert_eq!(s.last_reconcile_result, result);
            assert_eq!(s.last_reconcile_detail.as_deref(), Some(detail));
            assert_eq!(s.last_reconcile_ms, Some(NOW - 5_000));
        }
    }

    #[test]
    fn thresholds_per_object_replace_the_default() {
        let c = FreshnessConfig {
            delayed_after_by_object: [("Case".to_string(), 60)].into(),
            ..Default::default()
        };
        assert_eq!(c.delayed_after("Case"), 60);
        assert_eq!(c.delayed_after("Account"), 120);
    }
}
