//! The sfsync engine: stream ingest into the raw change log, and the apply stage from the raw
//! log into curated current-state tables with SCD2 history and an audit trail.
//!
//! Guarantees (architecture invariants 1–5, 9): each fetched batch and its replay id commit
//! together; curated writes and the apply offset commit together; re-delivery is a no-op (event
//! keys) and older changes never overwrite newer ones (record and field versions); partial
//! updates touch only their fields; gap events trigger re-reads, overflow events recorded
//! re-syncs; bad events become dead letters with their cause while everything else flows.

pub mod apply;
pub mod convert;
pub mod error;
pub mod events;
pub mod freshness;
pub mod gate;
pub mod ingest;
pub mod jobs;
pub mod kafka_log;
pub mod lease;
pub mod maintenance;
pub mod model;
pub mod normalize;
pub mod outbound;
pub mod plan;
pub mod poll;
pub mod poll_bulk;
pub mod quality;
pub mod reconcile;
pub mod replay;
pub mod sinks;
pub mod stats;
pub mod writeback;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sfsync_salesforce::pubsub::{ReplayStart, Subscriber};
use sfsync_store::Warehouse;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

pub use apply::{Applier, ApplyConfig, RecordReader, CURATED_CONSUMER};
pub use error::{PipelineError, Result};
pub use model::{HistoryFields, ObjectMapping, ObjectSpec};
pub use stats::PipelineStats;

/// What to run.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub objects: Vec<ObjectSpec>,
    pub apply: ApplyConfig,
    /// Where a channel without a checkpoint starts.
    pub initial: ReplayStart,
    /// Longest the apply stage sleeps when idle before polling the raw log again.
    pub idle_wait: Duration,
    /// Bulk API 2.0 access for sync jobs (backfills, re-syncs, reconciliations); without it
    /// none is carried out.
    pub bulk: Option<sfsync_salesforce::bulk::Bulk>,
    /// The write ledger, when writeback is on: echoes of our own writes confirm them
    /// ([`writeback::EchoConfirmer`]).
    pub echo_ledger: Option<writeback::EchoLedger>,
    /// Keep the warehouse's `sync_status` up to date ([`freshness`]); `None`: not written.
    pub freshness: Option<freshness::FreshnessConfig>,
    /// What this process runs (`sfsync run --role`): the ingest subscribers, the apply stage,
    /// or both.
    pub roles: Roles,
    /// The raw change log is a Kafka topic ([`kafka_log`]); `None`: the store's raw log.
    pub kafka_log: Option<kafka_log::KafkaLogConfig>,
    /// Each channel's subscriber holds a lease `ingest:<channel>` ([`lease`]) so that exactly
    /// one process across the deployment ingests it: (holder name, time to live).
    pub ingest_lease: Option<(String, Duration)>,
    /// Platform-event and custom channels to subscribe to ([`events::ingest`]).
    pub event_channels: Vec<String>,
    /// Received platform events enter the delivery outbox (sinks run).
    pub deliver_events: bool,
    /// The REST client `mode = "poll"` objects are read with (in the lane polling is charged
    /// to); without it a polled object is an error at start.
    pub poll_client: Option<sfsync_salesforce::SalesforceClient>,
    /// How polled objects (channel [`poll::channel`]) are read.
    pub poll: poll::PollConfig,
    /// CDC objects fall back to polling after their stream has been down this long, or at once
    /// when the delivery allocation is exhausted ([`ingest::Fallback`]); `None`: never. Needs
    /// [`Self::poll_client`] and the store's raw log.
    pub cdc_fallback: Option<Duration>,
}

/// The pipeline stages a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub ingest: bool,
    pub apply: bool,
}

impl Default for Roles {
    fn default() -> Self {
        Roles {
            ingest: true,
            apply: true,
        }
    }
}

/// A running pipeline.
pub struct RunningPipeline {
    pub stats: Arc<PipelineStats>,
    pub run_id: String,
    pub mappings: Vec<ObjectMapping>,
    shutdown: watch::Sender<bool>,
    ingest: Vec<JoinHandle<()>>,
    applier: JoinHandle<Result<()>>,
    /// The freshness writer and its stop signal (stopped after the apply stage drained).
    freshness: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    store: Arc<dyn Warehouse>,
    /// Confirms writes from their echoes (with [`PipelineConfig::echo_ledger`]); share it with
    /// the [`writeback::Deliverer`] so echoes that overtake the ledger update are matched.
    pub echo: Option<Arc<writeback::EchoConfirmer>>,
    /// The ingest leases kept by this process (released at shutdown).
    leases: Vec<lease::LeaseKeeper>,
    /// Counters of platform events in and out.
    pub events: Arc<events::EventStats>,
    /// Wakes the apply stage: notify it after appending to the raw log from outside the
    /// pipeline (pushed Outbound Messages), so it does not wait for its idle poll.
    pub appended: Arc<Notify>,
}

/// Describes each object, builds its mapping (config + describe) and creates or extends its
/// tables. Returns the mappings and the objects whose tables this call created.
pub async fn prepare_models(
    store: &dyn Warehouse,
    reader: &dyn RecordReader,
    specs: &[ObjectSpec],
) -> Result<(Vec<(ObjectSpec, ObjectMapping)>, Vec<String>)> {
    let mut mappings = Vec::new();
    let mut created = Vec::new();
    for spec in specs {
        let describe = reader.describe(&spec.name).await?;
        let mut mapping = ObjectMapping::build(&describe, spec)?;
        if !mapping.gate_problems.is_empty() {
            return Err(PipelineError::config(
                &spec.name,
                format!("data-quality rules: {}", mapping.gate_problems.join("; ")),
            ));
        }
        let change = model::ensure_model_following_retypes(store, &mut mapping).await?;
        if change.created {
            created.push(spec.name.clone());
        }
        if !change.added_columns.is_empty() {
            tracing::info!(object = %spec.name, added = ?change.added_columns, "Curated columns added.");
        }
        mappings.push((spec.clone(), mapping));
    }
    Ok((mappings, created))
}

/// Records each object's flow mode as configured (CDC stream or polling; Outbound-Message-only
/// objects have no ingest task of their own) and each polled channel's interval and overlap.
fn record_flows(stats: &PipelineStats, config: &PipelineConfig) {
    for spec in &config.objects {
        if poll::is_poll_channel(&spec.channel) {
            stats.start_flow(&spec.name, &spec.channel, stats::FlowMode::Poll);
            stats.poll_configured(
                &spec.channel,
                config.poll.interval.as_millis() as u64,
                config.poll.overlap.as_millis() as u64,
            );
        } else if !outbound::is_push_channel(&spec.channel) {
            stats.start_flow(&spec.name, &spec.channel, stats::FlowMode::Cdc);
        }
    }
}

/// Builds the curated models (describe + config), creates or extends their tables, and starts
/// the ingest tasks and the apply stage.
pub async fn start(
    store: Arc<dyn Warehouse>,
    reader: Arc<dyn RecordReader>,
    subscriber: Subscriber,
    config: PipelineConfig,
) -> Result<RunningPipeline> {
    let roles = config.roles;
    if roles.apply && config.kafka_log.is_none() {
        // One applier per warehouse reading the store's raw log; Kafka workers share the
        // partitions instead (their offsets move by compare-and-set).
        store.acquire_apply_lock().await?;
    }
    let (mappings, created) = prepare_models(&*store, &*reader, &config.objects).await?;
    if roles.apply
        && config.apply.jobs.backfill_new_objects
        && config.bulk.is_some()
        && !created.is_empty()
    {
        let ids = jobs::request_backfills(&*store, &created, "new object in the config").await?;
        tracing::info!(objects = ?created, jobs = ?ids, "New objects: backfills requested.");
    }
    let run_id = config.apply.run_id.clone();
    let detail = serde_json::json!({
        "objects": config.objects.iter().map(|o| o.name.clone()).collect::<Vec<_>>(),
    });
    store
        .start_run(&run_id, "stream", &detail.to_string())
        .await?;
    let stats = Arc::new(PipelineStats::default());
    if roles.ingest {
        record_flows(&stats, &config);
    }
    let (tx, rx) = watch::channel(false);
    let appended = Arc::new(Notify::new());
    // Apply reads what ingest appended from the store's memory while it stays within ~2 batches.
    let gate = Arc::new(gate::LagGate::new(
        2 * config.apply.batch_max_records as u64,
        Duration::from_secs(2),
    ));

    let mut channels: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let polled: Vec<ObjectMapping> = mappings
        .iter()
        .filter(|(s, _)| poll::is_poll_channel(&s.channel))
        .map(|(_, m)| m.clone())
        .collect();
    if !polled.is_empty() {
        if config.kafka_log.is_some() {
            return Err(PipelineError::config(
                polled[0].object(),
                "mode = \"poll\" objects cannot be synced with a Kafka raw log yet",
            ));
        }
        if config.poll_client.is_none() {
            return Err(PipelineError::config(
                polled[0].object(),
                "mode = \"poll\" needs a REST client for its SOQL reads",
            ));
        }
    }
    // Push channels (Outbound Messages) are fed by the API's endpoint and polled channels by
    // their pollers, not a subscription.
    for spec in config
        .objects
        .iter()
        .filter(|s| !outbound::is_push_channel(&s.channel) && !poll::is_poll_channel(&s.channel))
    {
        channels
            .entry(spec.channel.clone())
            .or_default()
            .push(spec.name.clone());
    }
    let kafka_writer = match (&config.kafka_log, roles.ingest) {
        (Some(k), true) => Some(Arc::new(
            kafka_log::KafkaLogWriter::connect(k.clone()).await?,
        )),
        _ => None,
    };
    let mut leases = Vec::new();
    if !roles.ingest {
        channels.clear();
    }
    let lease_for = |channel: &str, leases: &mut Vec<lease::LeaseKeeper>| {
        config.ingest_lease.as_ref().map(|(holder, ttl)| {
            let k = lease::LeaseKeeper::spawn(
                store.clone(),
                format!("ingest:{channel}"),
                holder.clone(),
                *ttl,
                rx.clone(),
            );
            let w = k.watch();
            leases.push(k);
            w
        })
    };
    let event_stats = Arc::new(events::EventStats::default());
    let event_channels = if roles.ingest {
        config.event_channels.clone()
    } else {
        Vec::new()
    };
    let mut ingest: Vec<JoinHandle<()>> = event_channels
        .into_iter()
        .map(|channel| {
            let lease = lease_for(&channel, &mut leases);
            let task = events::ingest::EventIngest {
                channel,
                store: store.clone(),
                subscriber: subscriber.clone(),
                stats: stats.clone(),
                events: event_stats.clone(),
                initial: config.initial.clone(),
                deliver: config.deliver_events,
                lease,
            };
            tokio::spawn(task.run(rx.clone()))
        })
        .collect();
    let mut pollers = Vec::new();
    if roles.ingest {
        if let Some(client) = &config.poll_client {
            for mapping in polled {
                let channel = poll::channel(mapping.object());
                let lease = lease_for(&channel, &mut leases);
                let task = poll::ObjectPoll {
                    mapping,
                    channel,
                    store: store.clone(),
                    client: client.clone(),
                    stats: stats.clone(),
                    appended: appended.clone(),
                    config: config.poll.clone(),
                    lease,
                    finish: None,
                };
                pollers.push(tokio::spawn(task.run(rx.clone())));
            }
        }
    }
    let fallback_client = match (&config.cdc_fallback, &config.poll_client, &config.kafka_log) {
        (Some(after), Some(client), None) => Some((*after, client.clone())),
        (Some(_), _, Some(_)) => {
            tracing::warn!(
                "The CDC → polling fallback is off: it needs the store's raw log, not Kafka."
            );
            None
        }
        _ => None,
    };
    let cdc: Vec<JoinHandle<()>> = channels
        .into_iter()
        .map(|(channel, objects)| {
            let lease = lease_for(&channel, &mut leases);
            let fallback = fallback_client
                .as_ref()
                .map(|(after, client)| ingest::Fallback {
                    client: client.clone(),
                    poll: config.poll.clone(),
                    mappings: mappings
                        .iter()
                        .filter(|(s, _)| s.channel == channel)
                        .map(|(_, m)| m.clone())
                        .collect(),
                    after: *after,
                    run_id: run_id.clone(),
                    appended: appended.clone(),
                });
            let task = ingest::ChannelIngest {
                channel,
                objects,
                store: store.clone(),
                subscriber: subscriber.clone(),
                stats: stats.clone(),
                appended: appended.clone(),
                gate: gate.clone(),
                initial: config.initial.clone(),
                kafka: kafka_writer.clone(),
                lease,
                fallback,
            };
            tokio::spawn(task.run(rx.clone()))
        })
        .collect();
    ingest.extend(cdc);
    ingest.extend(pollers);
    let freshness = config.freshness.clone().map(|fc| {
        let objects = config
            .objects
            .iter()
            .map(|o| (o.name.clone(), o.channel.clone()))
            .collect();
        let writer = freshness::FreshnessWriter::new(store.clone(), stats.clone(), objects, fc);
        let (stop, stop_rx) = watch::channel(false);
        (stop, tokio::spawn(writer.run(stop_rx)))
    });
    let models = mappings.iter().map(|(_, m)| m.clone()).collect();
    let mut applier = Applier::new(
        store.clone(),
        reader,
        mappings,
        config.apply.clone(),
        stats.clone(),
    );
    if let Some(bulk) = config.bulk.clone() {
        // Fetched Bulk batches wake the apply loop like appended changes do.
        applier = applier.with_bulk(bulk).with_wake(appended.clone());
    }
    let echo = config
        .echo_ledger
        .clone()
        .map(|l| Arc::new(writeback::EchoConfirmer::new(l.0, stats.clone())));
    if let Some(c) = &echo {
        applier = applier.with_echo(c.clone());
    }
    if let (Some(k), true) = (&config.kafka_log, roles.apply) {
        applier = applier.with_kafka(kafka_log::KafkaLogReader::connect(k.clone()).await?);
    }
    let idle = config.idle_wait;
    let wake = appended.clone();
    let mut arx = rx.clone();
    let applier = tokio::spawn(async move {
        if !roles.apply {
            let _ = arx.wait_for(|stop| *stop).await;
            return Ok(());
        }
        loop {
            match applier.step().await {
                Ok(0) => {
                    if *arx.borrow() {
                        return Ok(());
                    }
                    tokio::select! {
                        _ = appended.notified() => {}
                        _ = tokio::time::sleep(idle) => {}
                        _ = arx.changed() => {}
                    }
                }
                Ok(_) => gate.progressed(),
                Err(e) => {
                    applier
                        .stats()
                        .errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(error = %error::chain(&e), "Apply step failed; retrying.");
                    if *arx.borrow() {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(RunningPipeline {
        stats,
        run_id,
        mappings: models,
        shutdown: tx,
        ingest,
        applier,
        freshness,
        store,
        echo,
        leases,
        events: event_stats,
        appended: wake,
    })
}

impl RunningPipeline {
    /// Graceful stop: ingest stops taking batches (what is in hand commits), the apply stage
    /// drains the raw log within `timeout`, and the run is recorded as finished. Whatever is
    /// not applied by then is applied by the next start — nothing is lost either way.
    pub async fn shutdown(self, timeout: Duration) -> Result<()> {
        let _ = self.shutdown.send(true);
        for t in self.ingest {
            let _ = t.await;
        }
        for l in self.leases {
            l.join().await;
        }
        let drained = tokio::time::timeout(timeout, self.applier).await;
        if let Some((stop, task)) = self.freshness {
            // One last update: the state the stop leaves behind.
            let _ = stop.send(true);
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                tracing::warn!("The freshness writer did not finish its last update in time.");
            }
        }
        let status = match &drained {
            Ok(Ok(Ok(()))) => "succeeded",
            _ => "interrupted",
        };
        let s = &self.stats;
        let detail = serde_json::json!({
            "ingested": PipelineStats::get(&s.ingested),
            "applied": PipelineStats::get(&s.applied),
            "repairs": PipelineStats::get(&s.repairs_done),
            "dead_letters": PipelineStats::get(&s.dead_letters),
            "quarantined": PipelineStats::get(&s.quarantined),
            "released": PipelineStats::get(&s.released),
            "dq_warnings": PipelineStats::get(&s.dq_warnings),
            "quarantine_alerts": PipelineStats::get(&s.quarantine_alerts),
        });
        self.store
            .finish_run(&self.run_id, status, &detail.to_string())
            .await?;
        Ok(())
    }
}
