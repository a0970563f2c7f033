//! The stream ingest stage: one Pub/Sub subscription per channel, each fetched batch appended to
//! the raw change log together with the channel's checkpoint (replay id) in ONE transaction, and
//! only then acknowledged to the subscriber. A crash between fetch and commit redelivers from the
//! stored replay id; the raw log drops the duplicates by event key. Undecodable events are kept
//! as dead letters in the same transaction, so the checkpoint never moves past an event that was
//! not stored. An expired or unknown replay id is reported, recorded as a re-sync request for the
//! channel's objects, and the stream resumes from the oldest retained event — never silently at
//! the tip.
//!
//! **Automatic degradation to polling** ([`Fallback`]). When the stream has been down for
//! [`Fallback::after`] (the Pub/Sub service unavailable, the network gone) or the org's event
//! delivery allocation is exhausted (at once), the channel's objects are polled by SystemModstamp
//! ([`crate::poll`]) while the stream keeps being retried:
//! - **CDC → poll, no gap.** Each object's poll cursor starts at the commit time of the newest
//!   change the stream is known to have delivered (the event at the channel's checkpoint, else
//!   the object's last applied commit), and every round re-reads the overlap window before it.
//!   Rows the stream already delivered are older than or equal to what was applied and change
//!   nothing (record versions).
//! - **Poll → CDC, no gap.** The stream is re-subscribed at the tip (`LATEST`: replaying the
//!   outage would spend the delivery allocation again). Once it has answered (a first batch or
//!   keepalive, so the tip it started from is fixed), each poller runs one more round that starts
//!   after that moment and stops: everything committed before the tip is in that round,
//!   everything after it comes through the stream.
//! - **No duplicate.** A change both read by a poll and delivered by the stream is applied
//!   once: the stream's event of a record a poll read at the same commit time, with nothing
//!   different, is recorded as `covered` (see [`crate::plan`]), and a polled row never
//!   overwrites a change as new as itself.
//! - **Crash-safe.** The fallback is persisted (checkpoint `/fallback/<channel>`) until the final
//!   rounds are done: a restart in the middle polls again and switches back the same way.
//! - **Visible.** The objects' flow mode is `degraded-poll` while it lasts
//!   ([`PipelineStats::flow_modes`]), and each fallback is a run (`poll-fallback`) with its reason
//!   and counts.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use sfsync_core::{ErrorClass, ReplayId};
use sfsync_salesforce::pubsub::{PubSubError, ReplayStart, Subscriber};
use sfsync_salesforce::SalesforceClient;
use sfsync_store::{DeadLetter, Fence, RawChange, ResyncRequest, Warehouse};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::error::chain;
use crate::model::ObjectMapping;
use crate::poll::{Cursor, ObjectPoll, PollConfig};
use crate::stats::{FlowMode, PipelineStats};

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
    /// Poll the channel's objects while the stream is down (`None`: wait for it).
    pub fallback: Option<Fallback>,
}

/// How far before the last known commit a re-sync after a rejected replay id starts.
const RESYNC_MARGIN_MS: i64 = 60_000;

/// Automatic degradation of a CDC channel to polling (see the module docs).
#[derive(Clone)]
pub struct Fallback {
    /// The REST client polls read with (in the lane polling is charged to).
    pub client: SalesforceClient,
    pub poll: PollConfig,
    /// The channel's objects.
    pub mappings: Vec<ObjectMapping>,
    /// The stream down (failing to subscribe or to stream) this long → its objects are polled.
    /// An exhausted delivery allocation falls back at once.
    pub after: Duration,
    /// The pipeline's run id: each fallback is a run named after it.
    pub run_id: String,
    /// Woken after every append (the apply stage).
    pub appended: Arc<Notify>,
}

/// Checkpoints holding whether a channel's fallback is on start with this.
pub const FALLBACK_PREFIX: &str = "/fallback/";

/// The checkpoint name of `channel`'s fallback state.
pub fn fallback_channel(channel: &str) -> String {
    format!("{FALLBACK_PREFIX}{channel}")
}

const MARKER_ON: &str = "fallback:v1:on:";
const MARKER_OFF: &str = "fallback:v1:off";

/// The stored fallback state: on since `since_ms`, or off.
fn marker(since_ms: Option<i64>) -> ReplayId {
    ReplayId::from_bytes(match since_ms {
        Some(ms) => format!("{MARKER_ON}{ms}").into_bytes(),
        None => MARKER_OFF.as_bytes().to_vec(),
    })
}

/// `Some(since_ms)` when a stored fallback state is on.
fn marker_since(r: &ReplayId) -> Option<i64> {
    std::str::from_utf8(r.as_bytes())
        .ok()?
        .strip_prefix(MARKER_ON)?
        .parse()
        .ok()
}

/// Sets a checkpoint, fenced by the lease when there is one.
async fn set_checkpoint(
    store: &dyn Warehouse,
    channel: &str,
    value: &ReplayId,
    fence: Option<&Fence>,
) -> crate::Result<()> {
    crate::lease::append(store, channel, &[], &[], value, fence).await?;
    Ok(())
}

/// A channel's fallback in progress.
struct Degraded {
    run_id: String,
    /// Tells the pollers to run their final round.
    finish: watch::Sender<bool>,
    pollers: Vec<JoinHandle<()>>,
    /// Once the final rounds are asked for: waits for them, then records the fallback over.
    completion: Option<JoinHandle<()>>,
}

/// The channel's stream and fallback, across re-subscribes.
#[derive(Default)]
struct Flow {
    /// Since when the stream has been failing (`None`: it is delivering).
    down_since: Option<std::time::Instant>,
    degraded: Option<Degraded>,
    /// The stored fallback state was read (once per start).
    resumed: bool,
    fallbacks: u64,
}

impl ChannelIngest {
    /// Runs until `shutdown` turns true (finishing the batch in hand) or a non-retryable error.
    /// The stream's state is kept in the stats ([`PipelineStats::stream_up`] once subscribed,
    /// down from any failure or re-subscribe until subscribed again, and down when it stops), for
    /// the freshness contract ([`crate::freshness`]).
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let stats = self.stats.clone();
        let channel = self.channel.clone();
        let mut flow = Flow::default();
        self.stream(shutdown, &mut flow).await;
        stats.stream_down(&channel, crate::apply::now_ms());
        // Pollers stop with the same signal (committing the page in hand); the fallback stays
        // recorded as on, so the next start goes on polling until the stream is back.
        if let Some(d) = flow.degraded.take() {
            for p in d.pollers {
                let _ = p.await;
            }
            if let Some(c) = d.completion {
                let _ = c.await;
            }
        }
    }

    async fn stream(&self, mut shutdown: watch::Receiver<bool>, flow: &mut Flow) {
        let mut schemas: HashSet<String> = HashSet::new();
        let mut failures = 0u32;
        let mut force_earliest = false;
        let mut first = true;
        'outer: loop {
            if *shutdown.borrow() {
                return;
            }
            self.reap(flow);
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
            if !flow.resumed && self.fallback.is_some() {
                match self
                    .store
                    .checkpoint(&fallback_channel(&self.channel))
                    .await
                {
                    Ok(stored) => {
                        flow.resumed = true;
                        if let Some(since) = stored.as_ref().and_then(marker_since) {
                            tracing::warn!(channel = %self.channel, since_ms = since, "The channel was being polled when sfsync stopped: polling again until the stream is back.");
                            if let Err(e) = self
                                .degrade(
                                    flow,
                                    fence.as_ref(),
                                    "resumed after a restart",
                                    Some(since),
                                    &shutdown,
                                )
                                .await
                            {
                                self.fail(&mut failures, "resuming the poll fallback", &chain(&e))
                                    .await;
                                continue;
                            }
                        }
                    }
                    Err(e) => {
                        self.fail(&mut failures, "reading the fallback state", &chain(&e))
                            .await;
                        continue;
                    }
                }
            }
            let start = if flow.degraded.is_some() {
                // The pollers cover everything up to the final round: start at the tip.
                ReplayStart::Latest
            } else if force_earliest {
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
                    self.down(flow, &e, fence.as_ref(), &shutdown).await;
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
                // A stream failing in the background (reconnecting) for the fallback's delay
                // makes the channel polled.
                // It is down from its first failed attempt (for the freshness contract).
                let health = sub.health();
                let failing = async {
                    let fallback_after = match (&self.fallback, flow.degraded.is_some()) {
                        (Some(fb), false) => Some(fb.after),
                        _ => None,
                    };
                    loop {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        if let Some((since, error)) = health.failing_since() {
                            let since_ms =
                                crate::apply::now_ms() - since.elapsed().as_millis() as i64;
                            self.stats.stream_down(&self.channel, since_ms);
                            if fallback_after.is_some_and(|after| since.elapsed() >= after) {
                                break (since, error);
                            }
                        }
                    }
                };
                let next = tokio::select! {
                    n = sub.next_batch() => n,
                    (since, error) = failing => {
                        self.stats.stream_down(&self.channel, crate::apply::now_ms());
                        let reason = format!("stream down for {} s: {error}", since.elapsed().as_secs());
                        if let Err(e) = self.degrade(flow, fence.as_ref(), &reason, None, &shutdown).await {
                            tracing::error!(channel = %self.channel, error = %chain(&e), "Could not start polling the channel's objects; retrying.");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        // Re-subscribe at the tip (see the module docs).
                        continue 'outer;
                    }
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
                        self.down(flow, &e, fence.as_ref(), &shutdown).await;
                        self.fail(&mut failures, "streaming", &chain(&e)).await;
                        if e.class() == ErrorClass::User {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                        continue 'outer;
                    }
                };
                failures = 0;
                flow.down_since = None;
                self.stats.stream_up(&self.channel, crate::apply::now_ms());
                self.reap(flow);
                if let Some(d) = flow.degraded.as_mut().filter(|d| d.completion.is_none()) {
                    // The stream answered: its start is fixed. One more poll round each, then
                    // the stream alone carries the channel.
                    tracing::info!(channel = %self.channel, "Stream back: final poll rounds, then CDC again.");
                    let _ = d.finish.send(true);
                    d.completion = Some(tokio::spawn(self.completion(
                        std::mem::take(&mut d.pollers),
                        d.run_id.clone(),
                        shutdown.clone(),
                    )));
                }
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

    /// Forgets a fallback whose final rounds are done.
    fn reap(&self, flow: &mut Flow) {
        if flow
            .degraded
            .as_ref()
            .and_then(|d| d.completion.as_ref())
            .is_some_and(|c| c.is_finished())
        {
            flow.degraded = None;
        }
    }

    /// The stream failed with `error`: starts the fallback when it is due.
    async fn down(
        &self,
        flow: &mut Flow,
        error: &PubSubError,
        fence: Option<&Fence>,
        shutdown: &watch::Receiver<bool>,
    ) {
        let since = *flow.down_since.get_or_insert_with(std::time::Instant::now);
        let Some(fb) = &self.fallback else {
            return;
        };
        self.reap(flow);
        if flow.degraded.is_some() {
            return;
        }
        let exhausted = matches!(error, PubSubError::AllocationExceeded { .. });
        if !exhausted && since.elapsed() < fb.after {
            return;
        }
        let reason = if exhausted {
            format!("event delivery allocation exhausted: {error}")
        } else {
            format!("stream down for {} s: {error}", since.elapsed().as_secs())
        };
        if let Err(e) = self.degrade(flow, fence, &reason, None, shutdown).await {
            tracing::error!(channel = %self.channel, error = %chain(&e), "Could not start polling the channel's objects; retrying at the next failure.");
        }
    }

    /// Starts polling the channel's objects. `resumed`: the fallback was on when sfsync stopped
    /// (the pollers go on from their stored cursors); otherwise each cursor is set to where the
    /// stream left off, then the fallback is recorded as on.
    async fn degrade(
        &self,
        flow: &mut Flow,
        fence: Option<&Fence>,
        reason: &str,
        resumed: Option<i64>,
        shutdown: &watch::Receiver<bool>,
    ) -> crate::Result<()> {
        let Some(fb) = &self.fallback else {
            return Ok(());
        };
        let now = crate::apply::now_ms();
        let mut starts = Vec::new();
        if resumed.is_none() {
            for m in &fb.mappings {
                let from = self.stream_position(m.object()).await?;
                set_checkpoint(
                    &*self.store,
                    &crate::poll::channel(m.object()),
                    &Cursor {
                        modstamp_ms: from,
                        id: String::new(),
                    }
                    .to_replay_id(),
                    fence,
                )
                .await?;
                starts.push((m.object().to_string(), from));
            }
            set_checkpoint(
                &*self.store,
                &fallback_channel(&self.channel),
                &marker(Some(now)),
                fence,
            )
            .await?;
        }
        flow.fallbacks += 1;
        let run_id = format!("{}-fallback-{}", fb.run_id, flow.fallbacks);
        let detail = serde_json::json!({
            "channel": self.channel,
            "objects": self.objects,
            "reason": reason,
            "since_ms": resumed.unwrap_or(now),
            "cursors_ms": starts.iter().map(|(o, ms)| (o.clone(), *ms)).collect::<std::collections::BTreeMap<_, _>>(),
        });
        self.store
            .start_run(&run_id, "poll-fallback", &detail.to_string())
            .await?;
        let (finish, finish_rx) = watch::channel(false);
        let pollers = fb
            .mappings
            .iter()
            .map(|m| {
                self.stats.set_flow_mode(m.object(), FlowMode::DegradedPoll);
                let task = ObjectPoll {
                    mapping: m.clone(),
                    channel: crate::poll::channel(m.object()),
                    store: self.store.clone(),
                    client: fb.client.clone(),
                    stats: self.stats.clone(),
                    appended: fb.appended.clone(),
                    config: fb.poll.clone(),
                    lease: self.lease.clone(),
                    finish: Some(finish_rx.clone()),
                };
                tokio::spawn(task.run(shutdown.clone()))
            })
            .collect();
        self.stats.poll_fallbacks.fetch_add(1, Relaxed);
        tracing::warn!(channel = %self.channel, objects = ?self.objects, reason, run_id, "CDC stream unavailable: polling its objects until it is back.");
        flow.degraded = Some(Degraded {
            run_id,
            finish,
            pollers,
            completion: None,
        });
        Ok(())
    }

    /// Where the poll of `object` starts when the stream stops: the commit time of the event at
    /// the channel's checkpoint, else the object's last applied commit (both only make the
    /// poll re-read more than needed, never less); where the stream would have started when
    /// neither is known (the tip: now; the oldest event: the beginning).
    async fn stream_position(&self, object: &str) -> crate::Result<i64> {
        if let Some(id) = self.store.checkpoint(&self.channel).await? {
            let point = sfsync_store::LogPoint::ReplayId {
                channel: self.channel.clone(),
                replay_id: id,
            };
            if let Some(mark) = self.store.locate(&point).await? {
                return Ok(mark.commit_timestamp);
            }
            let applied = self.stats.objects();
            if let Some(o) = applied
                .iter()
                .find(|(o, _)| o == object)
                .filter(|(_, s)| s.last_commit_ms > 0)
            {
                return Ok(o.1.last_commit_ms);
            }
            let status = self.store.sync_status(Some(object)).await?;
            if let Some(ms) = status.first().and_then(|s| s.state.last_commit_ms) {
                return Ok(ms);
            }
            tracing::warn!(channel = %self.channel, object, "No known stream position: the poll re-reads the whole object.");
            return Ok(0);
        }
        Ok(match self.initial {
            ReplayStart::Latest => crate::apply::now_ms(),
            _ => 0,
        })
    }

    /// Waits for the final poll rounds, then records the fallback as over.
    fn completion(
        &self,
        pollers: Vec<JoinHandle<()>>,
        run_id: String,
        shutdown: watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let store = self.store.clone();
        let stats = self.stats.clone();
        let channel = self.channel.clone();
        let objects = self.objects.clone();
        let lease = self.lease.clone();
        async move {
            for p in pollers {
                let _ = p.await;
            }
            if *shutdown.borrow() {
                // Stopped before the final rounds were done: the next start polls again.
                return;
            }
            loop {
                let fence = lease.as_ref().and_then(|l| l.borrow().clone());
                if lease.is_some() && fence.is_none() {
                    // The lease holder now owns the fallback state.
                    return;
                }
                match set_checkpoint(
                    &*store,
                    &fallback_channel(&channel),
                    &marker(None),
                    fence.as_ref(),
                )
                .await
                {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(channel = %channel, error = %chain(&e), "Recording the end of the poll fallback failed; retrying.");
                        if *shutdown.borrow() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            for o in &objects {
                stats.set_flow_mode(o, FlowMode::Cdc);
            }
            let detail = serde_json::json!({ "channel": channel, "objects": objects });
            if let Err(e) = store
                .finish_run(&run_id, "succeeded", &detail.to_string())
                .await
            {
                tracing::warn!(run_id, error = %chain(&e), "Recording the end of the fallback run failed.");
            }
            tracing::info!(channel = %channel, run_id, "Poll fallback over: the stream carries the channel again.");
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
            return crate::lease::append(store, &self.channel, &raws, dead, checkpoint, fence)
                .await;
        };
        let per_record: Vec<RawChange> = batch
            .changes
            .iter()
            .zip(&batch.payloads)
            .flat_map(|(c, p)| crate::kafka_log::per_record(c, p))
            .collect();
        let written = kafka.write(store, &self.channel, &per_record).await?;
        crate::lease::append(store, &self.channel, &[], dead, checkpoint, fence).await?;
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
