//! The stream ingest stage: one Pub/Sub subscription per channel, each fetched batch appended to
//! the raw change log together with the channel's checkpoint (replay id) in ONE transaction, and
//! only then acknowledged to the subscriber. A crash between fetch and commit redelivers from the
//! stored replay id; the raw log drops the duplicates by event key. Undecodable events are kept
//! as dead letters in the same transaction, so the checkpoint never moves past an event that was
//! not stored. An expired or unknown replay id is reported, recorded as a re-sync request for the
//! channel's objects, and the stream resumes from the oldest retained event — never silently at
//! the tip.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use sfsync_core::ErrorClass;
use sfsync_salesforce::pubsub::{PubSubError, ReplayStart, Subscriber};
use sfsync_store::{DeadLetter, RawChange, ResyncRequest, Warehouse};
use tokio::sync::{watch, Notify};

use crate::error::chain;
use crate::stats::PipelineStats;

/// Up to this many events of batches already received are appended in one transaction.
const MERGE_MAX_EVENTS: usize = 1_000;

/// One channel's ingest task.
pub struct ChannelIngest {
    pub channel: String,
    /// Objects carried by the channel (for re-sync requests).
    pub objects: Vec<String>,
    pub store: Arc<dyn Warehouse>,
    pub subscriber: Subscriber,
    pub stats: Arc<PipelineStats>,
    /// Woken after every append.
    pub appended: Arc<Notify>,
    /// Holds fetching while the apply stage is far behind (see [`crate::gate`]).
    pub gate: Arc<crate::gate::LagGate>,
    /// Where to start when the channel has no checkpoint yet.
    pub initial: ReplayStart,
    /// The raw log is a Kafka topic: changes go there, only the checkpoint (and dead letters)
    /// to the store, after Kafka acknowledged them (see [`crate::kafka_log`]).
    pub kafka: Option<Arc<crate::kafka_log::KafkaLogWriter>>,
    /// The channel's lease (exactly one subscriber across the deployment): the stream runs only
    /// while it is held, and every store write is fenced by it.
    pub lease: Option<watch::Receiver<Option<sfsync_store::Fence>>>,
}

/// How far before the last known commit a re-sync after a rejected replay id starts.
const RESYNC_MARGIN_MS: i64 = 60_000;

impl ChannelIngest {
    /// Runs until `shutdown` turns true (finishing the batch in hand) or a non-retryable error.
    /// The stream's state is kept in the stats ([`PipelineStats::stream_up`] once subscribed,
    /// down from any failure or re-subscribe until subscribed again, and down when it stops), for
    /// the freshness contract ([`crate::freshness`]).
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let stats = self.stats.clone();
        let channel = self.channel.clone();
        self.stream(shutdown).await;
        stats.stream_down(&channel, crate::apply::now_ms());
    }

    async fn stream(self, mut shutdown: watch::Receiver<bool>) {
        let mut schemas: HashSet<String> = HashSet::new();
        let mut failures = 0u32;
        let mut force_earliest = false;
        let mut first = true;
        'outer: loop {
            if *shutdown.borrow() {
                return;
            }
            if !first {
                // Re-subscribing: nothing streams until the new subscription is up.
                self.stats
                    .stream_down(&self.channel, crate::apply::now_ms());
            }
            first = false;
            // With a lease, nothing is read before it is held (another process may be the
            // channel's subscriber).
            let mut lease = self.lease.clone();
            let fence = match lease.as_mut() {
                None => None,
                Some(rx) => {
                    let got = tokio::select! {
                        f = rx.wait_for(|f| f.is_some()) => f.map(|f| f.clone()).ok().flatten(),
                        _ = shutdown.changed() => return,
                    };
                    match got {
                        Some(f) => Some(f),
                        None => return,
                    }
                }
            };
            let start = if force_earliest {
                force_earliest = false;
                ReplayStart::Earliest
            } else {
                match self.store.checkpoint(&self.channel).await {
                    Ok(Some(id)) => ReplayStart::After(id),
                    Ok(None) => self.initial.clone(),
                    Err(e) => {
                        self.fail(&mut failures, "reading the checkpoint", &chain(&e))
                            .await;
                        continue;
                    }
                }
            };
            // Headers only: the raw log keeps each payload and the apply stage decodes its
            // values (measured: decoding them here too was ~8 % of pipeline CPU).
            let mut sub = match self
                .subscriber
                .subscribe_headers(&self.channel, start.clone())
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    self.fail(&mut failures, "subscribing", &chain(&e)).await;
                    continue;
                }
            };
            tracing::info!(channel = %self.channel, start = ?start, "Subscribed.");
            self.stats.stream_up(&self.channel, crate::apply::now_ms());
            loop {
                if self.kafka.is_none() {
                    tokio::select! {
                        _ = self.gate.wait(&self.stats) => {}
                        _ = shutdown.changed() => return,
                    }
                }
                let lost = async {
                    match lease.as_mut() {
                        Some(rx) => {
                            let _ = rx.wait_for(|f| f.as_ref() != fence.as_ref()).await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                let next = tokio::select! {
                    n = sub.next_batch() => n,
                    _ = shutdown.changed() => return,
                    _ = lost => {
                        tracing::warn!(channel = %self.channel, "Ingest lease lost: unsubscribing until it is held again.");
                        continue 'outer;
                    }
                };
                let mut batch = match next {
                    None => continue 'outer,
                    Some(Ok(b)) => b,
                    Some(Err(PubSubError::ReplayIdInvalid {
                        replay_id,
                        code,
                        message,
                    })) => {
                        self.stats.errors.fetch_add(1, Relaxed);
                        tracing::error!(
                            channel = %self.channel,
                            replay_id = ?replay_id,
                            code, message,
                            "Stored replay id rejected (expired or unknown): recording a re-sync and resuming from the oldest retained event."
                        );
                        let from_ms = self.resync_from(replay_id.as_ref()).await;
                        for object in &self.objects {
                            let req = ResyncRequest {
                                object: object.clone(),
                                channel: self.channel.clone(),
                                from_ms,
                                reason: format!("replay id rejected: {code}"),
                                event_key: None,
                            };
                            if let Err(e) = self.store.add_resync(&req).await {
                                tracing::error!(error = %chain(&e), "Recording the re-sync failed; retrying.");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                continue 'outer;
                            }
                            self.stats.resyncs_requested.fetch_add(1, Relaxed);
                        }
                        force_earliest = true;
                        continue 'outer;
                    }
                    Some(Err(e)) => {
                        self.fail(&mut failures, "streaming", &chain(&e)).await;
                        if e.class() == ErrorClass::User {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                        continue 'outer;
                    }
                };
                failures = 0;
                // Batches already waiting go into the same transaction (fewer, larger commits
                // while the log is busy; no added wait when it is not).
                while batch.len() < MERGE_MAX_EVENTS {
                    match sub.try_next_batch() {
                        Some(more) => batch.merge(more),
                        None => break,
                    }
                }
                let Some(checkpoint) = batch.checkpoint.clone() else {
                    continue;
                };
                if batch.is_empty() && sub.acked().as_ref() == Some(&checkpoint) {
                    continue;
                }
                // Writer schemas first, so the apply stage can always decode what is logged.
                for c in &batch.changes {
                    if schemas.insert(c.schema_id.clone()) {
                        let stored = async {
                            let s = self
                                .subscriber
                                .schema(&c.schema_id)
                                .await
                                .map_err(|e| chain(&e))?;
                            self.store
                                .put_schema(&c.schema_id, &s.json)
                                .await
                                .map_err(|e| chain(&e))
                        };
                        if let Err(e) = stored.await {
                            schemas.remove(&c.schema_id);
                            self.fail(&mut failures, "storing a writer schema", &e)
                                .await;
                            continue 'outer;
                        }
                    }
                }
                let raws: Vec<RawChange> = batch
                    .changes
                    .iter()
                    .zip(&batch.payloads)
                    .filter_map(|(c, p)| RawChange::from_change(c, p.clone()))
                    .collect();
                let dead: Vec<DeadLetter> = batch
                    .undecoded
                    .iter()
                    .map(|u| DeadLetter {
                        channel: self.channel.clone(),
                        replay_id: Some(u.replay_id.clone()),
                        schema_id: u.schema_id.clone(),
                        stage: "decode".into(),
                        error: chain(&u.error),
                        payload: u.payload.to_vec(),
                        object: None,
                    })
                    .collect();
                if lease
                    .as_ref()
                    .is_some_and(|rx| rx.borrow().as_ref() != fence.as_ref())
                {
                    // Lost while fetching: write nothing (the store would refuse the checkpoint,
                    // but an external log would already have taken the changes).
                    tracing::warn!(channel = %self.channel, "Ingest lease lost: the fetched batch is left to the new holder.");
                    continue 'outer;
                }
                let t = std::time::Instant::now();
                let appended = self
                    .append(&batch, raws, &dead, &checkpoint, fence.as_ref())
                    .await;
                self.stats.time_stage(crate::stats::STAGE_INGEST_WRITE, t);
                match appended {
                    Ok(out) => {
                        sub.ack(&checkpoint);
                        self.stats.ingested.fetch_add(out.appended, Relaxed);
                        self.stats.add_channel_ingested(&self.channel, out.appended);
                        self.stats.duplicates.fetch_add(out.duplicates, Relaxed);
                        self.stats
                            .dead_letters
                            .fetch_add(dead.len() as u64, Relaxed);
                        self.appended.notify_one();
                    }
                    Err(e) => {
                        // Not acknowledged: the stream restarts from the stored checkpoint.
                        self.fail(&mut failures, "appending to the raw log", &chain(&e))
                            .await;
                        continue 'outer;
                    }
                }
            }
        }
    }

    /// Stores one fetched batch with the channel's checkpoint: into the store's raw log, or into
    /// Kafka first and then the checkpoint; fenced by the lease when there is one.
    async fn append(
        &self,
        batch: &sfsync_salesforce::pubsub::Batch,
        raws: Vec<RawChange>,
        dead: &[DeadLetter],
        checkpoint: &sfsync_core::ReplayId,
        fence: Option<&sfsync_store::Fence>,
    ) -> crate::Result<sfsync_store::AppendOutcome> {
        let store = &*self.store;
        let Some(kafka) = &self.kafka else {
            return Ok(match fence {
                Some(f) => {
                    store
                        .append_fenced(&self.channel, &raws, dead, checkpoint, f)
                        .await?
                }
                None => {
                    store
                        .append_with_dead_letters(&self.channel, &raws, dead, checkpoint)
                        .await?
                }
            });
        };
        let per_record: Vec<RawChange> = batch
            .changes
            .iter()
            .zip(&batch.payloads)
            .flat_map(|(c, p)| crate::kafka_log::per_record(c, p))
            .collect();
        let written = kafka.write(store, &self.channel, &per_record).await?;
        match fence {
            Some(f) => {
                store
                    .append_fenced(&self.channel, &[], dead, checkpoint, f)
                    .await?
            }
            None => {
                store
                    .append_with_dead_letters(&self.channel, &[], dead, checkpoint)
                    .await?
            }
        };
        Ok(sfsync_store::AppendOutcome {
            appended: written,
            duplicates: 0,
            last_offset: None,
        })
    }

    /// Start of the re-sync window after the stored replay id was rejected: the commit time of
    /// the newest change known to be in — the logged event carrying that replay id (right after
    /// a restart nothing has been applied yet in this process), or the newest change applied
    /// since — less [`RESYNC_MARGIN_MS`] for commit-order skew (a record's SystemModstamp can
    /// precede its change's commit timestamp). 0 (a whole re-load) only when neither is known.
    async fn resync_from(&self, rejected: Option<&sfsync_core::ReplayId>) -> i64 {
        let mut from_ms = self.stats.last_commit_ms.load(Relaxed);
        if let Some(replay_id) = rejected {
            let point = sfsync_store::LogPoint::ReplayId {
                channel: self.channel.clone(),
                replay_id: replay_id.clone(),
            };
            match self.store.locate(&point).await {
                Ok(Some(mark)) => from_ms = from_ms.max(mark.commit_timestamp),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(channel = %self.channel, error = %chain(&e), "Could not find the rejected replay id in the raw log; the re-sync starts from the last applied change.");
                }
            }
        }
        if from_ms > 0 {
            (from_ms - RESYNC_MARGIN_MS).max(1)
        } else {
            0
        }
    }

    async fn fail(&self, failures: &mut u32, what: &str, error: &str) {
        *failures += 1;
        self.stats.errors.fetch_add(1, Relaxed);
        self.stats
            .stream_down(&self.channel, crate::apply::now_ms());
        let delay = Duration::from_millis((200u64 << (*failures).min(7)).min(30_000));
        tracing::warn!(channel = %self.channel, attempt = *failures, error, "Ingest failed while {what}; retrying in {delay:?}.");
        tokio::time::sleep(delay).await;
    }
}
