//! Delivery sinks: the curated change stream (the store's delivery outbox, written in the same
//! transaction as the curated rows) delivered to downstream systems — webhooks ([`webhook`]) and
//! Kafka topics ([`kafka`]).
//!
//! Guarantees and limits:
//! - **Independent positions.** Every sink keeps a durable position per object in the store
//!   (`delivery_positions`) and runs one task per object: a slow or failing consumer holds back
//!   only its own (sink, object) lane — never ingest, the apply stage, another sink or another
//!   object of the same sink.
//! - **At least once, with an idempotency key per change** (the change's event key). A change is
//!   sent again only when sfsync stops between a consumer's acknowledgement and the position
//!   update, or a retry follows a timeout the consumer had in fact processed; consumers
//!   deduplicate by the key.
//! - **Per-record order.** A lane sends its object's changes in apply order. When a change
//!   becomes a dead letter, the record's later changes are held behind it (also as dead letters)
//!   until an operator redrives or discards it, so a consumer never sees a record's changes out
//!   of order.
//! - **Retries** with exponential backoff and full jitter (a `Retry-After` is honoured) while the
//!   lane has been failing for less than `dead_letter_after`; after that, each batch that fails
//!   once more goes to the dead letters and the lane moves on. A batch the consumer rejects
//!   outright (a 4xx other than 408/429) is split in halves until the rejected changes are
//!   found; those become dead letters at once.
//! - **Echo suppression.** A change that is the CDC echo of a write system X made through
//!   sfsync's writeback (origin `client=<ours>`, matched to the write in the ledger) is not sent to
//!   a sink whose `system` is X. An echo not matched yet is waited for (bounded) before the lane
//!   goes past it.
//! - **PII** stays sealed in the outbox and in dead letters; each sink gets PII omitted, sealed or
//!   opened as configured.
//! - The outbox is pruned below the lowest position of the configured sinks.

pub mod kafka;
pub mod webhook;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use rand::Rng;
use serde::Serialize;
use sfsync_store::{
    DeliveryPosition, NewDeliveryDeadLetter, PiiMode, RedriveOutcome, StoredDelivery, Warehouse,
    WriteLedger,
};
use tokio::sync::watch;

/// How long an echo of our own write is waited for in the write ledger before the lane goes past
/// it (sending it: its origin is unknown). The apply stage confirms echoes right after their
/// commit, so this only bounds a write ledger that is behind.
pub const ECHO_WAIT_MS: i64 = crate::writeback::echo::UNMATCHED_KEEP_MS;

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Worth another try (network, timeout, 5xx, 408, 429, broker unavailable), optionally not
    /// before `after`.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// The consumer refused the batch (a 4xx, a record too large): sending it again as it is
    /// will not help.
    Reject { reason: String },
}

impl SendError {
    pub fn reason(&self) -> &str {
        match self {
            SendError::Retry { reason, .. } | SendError::Reject { reason } => reason,
        }
    }
}

/// One change as a sink sends it.
#[derive(Debug, Clone, Serialize)]
pub struct OutMessage {
    /// Stable across retries, redrives and sinks: the change's event key.
    pub idempotency_key: String,
    pub seq: i64,
    pub object: String,
    pub id: String,
    pub change_type: String,
    pub commit_timestamp: String,
    pub applied_at: String,
    pub source: String,
    /// The writing system when the change is the echo of a writeback (`None` otherwise, or when
    /// not known).
    pub origin_system: Option<String>,
    pub changed_fields: Vec<String>,
    pub deleted: bool,
    pub record: serde_json::Map<String, serde_json::Value>,
}

impl OutMessage {
    fn new(c: StoredDelivery, origin_system: Option<String>) -> OutMessage {
        OutMessage {
            idempotency_key: c.event_key,
            seq: c.seq,
            object: c.object,
            id: c.record_id,
            change_type: c.change_type,
            commit_timestamp: rfc3339(c.commit_timestamp_ms),
            applied_at: rfc3339(c.applied_at_ms),
            source: c.source,
            origin_system,
            changed_fields: c.fields,
            deleted: c.deleted,
            record: c.record,
        }
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A way to deliver batches of one object's changes.
#[async_trait]
pub trait Transport: Send + Sync {
    /// `webhook`, `kafka`.
    fn kind(&self) -> &'static str;
    /// Where it delivers (URL, topic template), for logs and the API; no secrets.
    fn target(&self) -> String;
    /// Prepares delivery of `objects` (e.g. creates Kafka topics). Failures are retried.
    async fn prepare(&self, _objects: &[String]) -> Result<(), SendError> {
        Ok(())
    }
    /// Delivers `batch` (changes of `object`, in order) as one unit: `Ok` only when the consumer
    /// has all of them.
    async fn send(&self, object: &str, batch: &[OutMessage]) -> Result<(), SendError>;
}

/// Where a new sink starts on an object it has no position for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The oldest change the outbox still holds.
    #[default]
    Earliest,
    /// Changes applied from now on.
    Latest,
}

/// One configured sink.
pub struct SinkSpec {
    pub name: String,
    /// The downstream system this sink feeds (a writeback `source_system` name): its own
    /// changes are not sent back to it.
    pub system: Option<String>,
    /// Objects it receives.
    pub objects: Vec<String>,
    pub batch_max: usize,
    pub pii: PiiMode,
    pub dead_letter_after: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub start: StartFrom,
    pub transport: Arc<dyn Transport>,
}

impl std::fmt::Debug for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkSpec")
            .field("name", &self.name)
            .field("kind", &self.transport.kind())
            .field("target", &self.transport.target())
            .field("objects", &self.objects)
            .finish_non_exhaustive()
    }
}

/// Counters of one sink (all objects).
#[derive(Debug, Default)]
pub struct SinkStats {
    pub name: String,
    pub kind: &'static str,
    pub target: String,
    /// Changes the consumer acknowledged.
    pub delivered: AtomicU64,
    /// Batches sent (including retries).
    pub batches: AtomicU64,
    /// Failed sends (each retry counts).
    pub failures: AtomicU64,
    /// Changes put in the dead letters (rejected, undeliverable, or held behind one).
    pub dead_lettered: AtomicU64,
    /// Echoes of the sink's own system's writes not sent back to it.
    pub echoes_skipped: AtomicU64,
    /// Dead letters delivered on a redrive.
    pub redriven: AtomicU64,
    /// Epoch ms of the last acknowledged batch (0: none yet).
    pub last_success_ms: AtomicI64,
    /// Epoch ms since which some lane has been failing (0: none failing).
    pub failing_since_ms: AtomicI64,
    pub last_error: Mutex<Option<String>>,
    /// Send latency (ms) of acknowledged batches.
    pub send_ms: crate::stats::Histogram,
}

/// Counters of every sink, for metrics and the API.
#[derive(Debug, Default)]
pub struct SinksStats {
    pub sinks: Vec<Arc<SinkStats>>,
}

/// The sinks of a process and their store.
pub struct SinksConfig {
    pub sinks: Vec<SinkSpec>,
    /// Our own `Sforce-Call-Options` client id (echo recognition).
    pub own_client: String,
    /// Writeback runs, so our own changes' echoes are matched to their writes (and waited
    /// for): each delivered change names the system that wrote it.
    pub echo_lookup: bool,
    /// How often the outbox is probed for new entries.
    pub poll: Duration,
    /// How often the outbox is pruned.
    pub prune_every: Duration,
}

/// Running sinks: stop with [`RunningSinks::stop`].
pub struct RunningSinks {
    pub stats: Arc<SinksStats>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningSinks {
    /// Signals every lane and waits (bounded) for them: a batch in flight finishes or is
    /// abandoned (it is sent again on the next start).
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        for mut t in self.tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
            }
        }
    }
}

/// Starts one task per (sink, object), the outbox probe and the pruner.
pub fn start(
    store: Arc<dyn Warehouse>,
    ledger: Arc<dyn WriteLedger>,
    config: SinksConfig,
) -> RunningSinks {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (head_tx, head_rx) = watch::channel(0i64);
    let mut tasks = Vec::new();
    let mut stats = SinksStats::default();
    let mut lanes_per_object: HashMap<String, Vec<String>> = HashMap::new();
    for spec in config.sinks {
        let s = Arc::new(SinkStats {
            name: spec.name.clone(),
            kind: spec.transport.kind(),
            target: spec.transport.target(),
            ..Default::default()
        });
        stats.sinks.push(s.clone());
        let spec = Arc::new(spec);
        for object in &spec.objects {
            lanes_per_object
                .entry(object.clone())
                .or_default()
                .push(spec.name.clone());
            let lane = Lane {
                spec: spec.clone(),
                object: object.clone(),
                store: store.clone(),
                ledger: ledger.clone(),
                own_client: config.own_client.clone(),
                echo_lookup: config.echo_lookup,
                stats: s.clone(),
                position: 0,
                held: HashSet::new(),
                failing_since: None,
                attempt: 0,
            };
            tasks.push(tokio::spawn(lane.run(head_rx.clone(), stop_rx.clone())));
        }
    }
    tasks.push(tokio::spawn(probe(
        store.clone(),
        head_tx,
        config.poll,
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(prune_loop(
        store,
        lanes_per_object,
        config.prune_every,
        stop_rx,
    )));
    RunningSinks {
        stats: Arc::new(stats),
        stop: stop_tx,
        tasks,
    }
}

/// Publishes the outbox's head, so idle lanes wake when something new is applied.
async fn probe(
    store: Arc<dyn Warehouse>,
    head: watch::Sender<i64>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match store.outbox_head().await {
            Ok(h) => {
                head.send_if_modified(|v| {
                    let changed = *v != h;
                    *v = h;
                    changed
                });
            }
            Err(e) => tracing::warn!(error = %e, "Reading the delivery outbox head failed."),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Prunes each object's outbox below the lowest position of the sinks that deliver it.
async fn prune_loop(
    store: Arc<dyn Warehouse>,
    sinks_of: HashMap<String, Vec<String>>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = prune_once(&*store, &sinks_of).await {
            tracing::warn!(error = %e, "Pruning the delivery outbox failed; trying again later.");
        }
    }
}

/// One pruning round (public for tests and `sfsync retention`).
pub async fn prune_once(
    store: &dyn Warehouse,
    sinks_of: &HashMap<String, Vec<String>>,
) -> sfsync_store::Result<u64> {
    let mut positions: HashMap<(String, String), i64> = HashMap::new();
    let names: HashSet<&String> = sinks_of.values().flatten().collect();
    for sink in names {
        for p in store.delivery_positions(sink).await? {
            positions.insert((p.sink, p.object), p.position);
        }
    }
    let mut pruned = 0;
    for (object, sinks) in sinks_of {
        let low = sinks
            .iter()
            .map(|s| {
                positions
                    .get(&(s.clone(), object.clone()))
                    .copied()
                    .unwrap_or(0)
            })
            .min()
            .unwrap_or(0);
        if low > 0 {
            pruned += store.prune_outbox(object, low).await?;
        }
    }
    Ok(pruned)
}

const HELD: &str = "held: an earlier change of this record is a dead letter";

/// A change read from the outbox and what the lane does with it.
struct Item {
    row: StoredDelivery,
    kind: Kind,
}

enum Kind {
    /// An echo of the sink's own system: not sent back.
    Skip,
    /// Its record has an open dead letter.
    Held,
    /// Index into the batch's messages.
    Send(usize),
}

/// What became of a sent change.
enum Fate {
    Delivered,
    Rejected(String),
    Held,
}

/// What one step of a lane did.
enum Step {
    /// Sent or settled something: go on at once.
    Worked,
    /// Nothing to do: wait for new changes.
    Idle,
    /// Wait this long (a retry's backoff, an echo not matched yet).
    Wait(Duration),
}

/// One (sink, object) delivery lane.
struct Lane {
    spec: Arc<SinkSpec>,
    object: String,
    store: Arc<dyn Warehouse>,
    ledger: Arc<dyn WriteLedger>,
    own_client: String,
    echo_lookup: bool,
    stats: Arc<SinkStats>,
    position: i64,
    /// Records with open dead letters: their later changes are held behind them.
    held: HashSet<String>,
    failing_since: Option<Instant>,
    attempt: u32,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Lane {
    async fn run(mut self, mut head: watch::Receiver<i64>, mut stop: watch::Receiver<bool>) {
        loop {
            match self.init().await {
                Ok(()) => break,
                Err(e) => {
                    self.note_error(format!("starting: {e}"));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
        tracing::info!(sink = %self.spec.name, object = %self.object, position = self.position, "Delivery lane started.");
        loop {
            if *stop.borrow() {
                return;
            }
            let step = self.step().await;
            let wait = match step {
                Ok(Step::Worked) => continue,
                Ok(Step::Idle) => None,
                Ok(Step::Wait(d)) => Some(d),
                Err(e) => {
                    self.note_error(e.to_string());
                    tracing::warn!(sink = %self.spec.name, object = %self.object, error = %e, "Delivery lane step failed; trying again shortly.");
                    Some(Duration::from_secs(1))
                }
            };
            match wait {
                None => {
                    tokio::select! {
                        _ = head.changed() => {}
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stop.changed() => return,
                    }
                }
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }

    fn note_error(&self, e: String) {
        *self.stats.last_error.lock() = Some(e);
    }

    /// Prepares the transport and loads the lane's position and held records; the error says
    /// which step failed.
    async fn init(&mut self) -> Result<(), String> {
        self.spec
            .transport
            .prepare(std::slice::from_ref(&self.object))
            .await
            .map_err(|e| format!("preparing the sink: {}", e.reason()))?;
        self.load_position()
            .await
            .map_err(|e| format!("reading the position: {e}"))
    }

    async fn load_position(&mut self) -> sfsync_store::Result<()> {
        let known: Option<DeliveryPosition> = self
            .store
            .delivery_positions(&self.spec.name)
            .await?
            .into_iter()
            .find(|p| p.object == self.object);
        self.position = match known {
            Some(p) => p.position,
            None => {
                let (max, min) = self.store.outbox_bounds(&self.object).await?;
                let start = match self.spec.start {
                    StartFrom::Earliest => min.map_or(max, |m| m - 1),
                    StartFrom::Latest => max,
                };
                self.store
                    .delivery_advance(&self.spec.name, &self.object, start, 0, &[])
                    .await?;
                start
            }
        };
        self.held = self
            .store
            .held_records(&self.spec.name, &self.object)
            .await?
            .into_iter()
            .collect();
        Ok(())
    }

    fn backoff(&self, after: Option<Duration>) -> Duration {
        let exp = self
            .spec
            .retry_base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.spec.retry_max);
        let jitter = rand::rng().random_range(0.0..=1.0);
        let d = exp.mul_f64(jitter).max(Duration::from_millis(50));
        match after {
            Some(a) => d.max(a.min(self.spec.retry_max)),
            None => d,
        }
    }

    /// Sends the changes `idx` of `msgs` (in order), splitting a rejected batch until the
    /// rejected changes are found. A change whose record had a change rejected before it is
    /// held, not sent. Every change it settles gets its fate; a retryable failure stops it
    /// (the changes after that point keep no fate).
    async fn send_split(
        &self,
        msgs: &[OutMessage],
        idx: Vec<usize>,
        fates: &mut HashMap<usize, Fate>,
        rejected_records: &mut HashSet<String>,
    ) -> Result<(), SendError> {
        let mut todo = Vec::with_capacity(idx.len());
        for i in idx {
            if rejected_records.contains(&msgs[i].id) {
                fates.insert(i, Fate::Held);
            } else {
                todo.push(i);
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let batch: Vec<OutMessage> = todo.iter().map(|i| msgs[*i].clone()).collect();
        self.stats.batches.fetch_add(1, Relaxed);
        let t = Instant::now();
        match self.spec.transport.send(&self.object, &batch).await {
            Ok(()) => {
                self.stats
                    .send_ms
                    .observe(t.elapsed().as_millis().try_into().unwrap_or(i64::MAX));
                for i in todo {
                    fates.insert(i, Fate::Delivered);
                }
                Ok(())
            }
            Err(SendError::Reject { reason }) if todo.len() == 1 => {
                self.stats.failures.fetch_add(1, Relaxed);
                rejected_records.insert(msgs[todo[0]].id.clone());
                fates.insert(todo[0], Fate::Rejected(reason));
                Ok(())
            }
            Err(SendError::Reject { .. }) => {
                self.stats.failures.fetch_add(1, Relaxed);
                let right = todo.split_off(todo.len() / 2);
                Box::pin(self.send_split(msgs, todo, fates, rejected_records)).await?;
                Box::pin(self.send_split(msgs, right, fates, rejected_records)).await
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Relaxed);
                Err(e)
            }
        }
    }

    async fn step(&mut self) -> sfsync_store::Result<Step> {
        if let Some(s) = self.redrive().await? {
            return Ok(s);
        }
        let rows = self
            .store
            .outbox_read(
                &self.object,
                self.position,
                self.spec.batch_max,
                PiiMode::Sealed,
            )
            .await?;
        if rows.is_empty() {
            return Ok(Step::Idle);
        }
        // Echoes: which system wrote each of our own changes.
        let own: Vec<String> = rows
            .iter()
            .filter(|r| r.origin_client.as_deref() == Some(self.own_client.as_str()))
            .map(|r| r.event_key.clone())
            .collect();
        let sources = if own.is_empty() || !self.echo_lookup {
            HashMap::new()
        } else {
            self.ledger.echo_sources(&own).await?
        };
        let now = now_ms();
        let mut items: Vec<Item> = Vec::with_capacity(rows.len());
        let mut msgs: Vec<OutMessage> = Vec::new();
        let mut wait_echo = false;
        for r in rows {
            let is_own = r.origin_client.as_deref() == Some(self.own_client.as_str());
            let origin = sources.get(&r.event_key).cloned();
            if is_own && origin.is_none() && self.echo_lookup {
                if now - r.applied_at_ms < ECHO_WAIT_MS {
                    // Not matched to its write yet: stop before it for now.
                    wait_echo = true;
                    break;
                }
                tracing::warn!(sink = %self.spec.name, object = %self.object, event = %r.event_key, "An echo of our own write matched no write in the ledger; delivering it (origin unknown).");
            }
            let kind = if self.spec.system.is_some() && self.spec.system == origin {
                Kind::Skip
            } else if self.held.contains(&r.record_id) {
                Kind::Held
            } else {
                let view = self.store.pii_view(&r, self.spec.pii)?;
                msgs.push(OutMessage::new(view, origin));
                Kind::Send(msgs.len() - 1)
            };
            items.push(Item { row: r, kind });
        }
        if items.is_empty() {
            return Ok(if wait_echo {
                Step::Wait(Duration::from_millis(200))
            } else {
                Step::Idle
            });
        }
        let mut fates = HashMap::new();
        let mut rejected_records = HashSet::new();
        let outcome = self
            .send_split(
                &msgs,
                (0..msgs.len()).collect(),
                &mut fates,
                &mut rejected_records,
            )
            .await;
        match outcome {
            Ok(()) => {
                self.attempt = 0;
                self.failing_since = None;
                self.stats.failing_since_ms.store(0, Relaxed);
                if !msgs.is_empty() {
                    self.stats.last_success_ms.store(now_ms(), Relaxed);
                }
                self.settle(&items, &fates, None).await?;
                Ok(if wait_echo {
                    Step::Wait(Duration::from_millis(200))
                } else {
                    Step::Worked
                })
            }
            Err(e) => {
                let since = *self.failing_since.get_or_insert_with(Instant::now);
                let failing_ms = i64::try_from(since.elapsed().as_millis()).unwrap_or(0);
                self.stats.failing_since_ms.store(now - failing_ms, Relaxed);
                self.note_error(e.reason().to_string());
                if since.elapsed() < self.spec.dead_letter_after {
                    // Keep what was settled before the failure; retry the rest after a pause.
                    self.attempt = self.attempt.saturating_add(1);
                    let after = match &e {
                        SendError::Retry { after, .. } => *after,
                        SendError::Reject { .. } => None,
                    };
                    let pause = self.backoff(after);
                    tracing::debug!(sink = %self.spec.name, object = %self.object, error = %e.reason(), pause_ms = pause.as_millis() as u64, "Delivery failed; retrying.");
                    self.settle(&items, &fates, None).await?;
                    return Ok(Step::Wait(pause));
                }
                let reason = format!(
                    "undeliverable for {}s (dead_letter_after {}s): {}",
                    since.elapsed().as_secs(),
                    self.spec.dead_letter_after.as_secs(),
                    e.reason()
                );
                tracing::warn!(sink = %self.spec.name, object = %self.object, error = %e.reason(), "Delivery has been failing longer than dead_letter_after: the rest of the batch goes to the dead letters.");
                let first_failed = now - failing_ms;
                self.settle(
                    &items,
                    &fates,
                    Some((reason, i64::from(self.attempt) + 1, first_failed)),
                )
                .await?;
                // Keep the clock running: the next failing batch goes the same way at once.
                Ok(Step::Worked)
            }
        }
    }

    /// Commits the settled prefix of `items` (all of them with `give_up`: the unsent ones go to
    /// the dead letters with its reason, attempts and first-failure time): delivered counts,
    /// dead letters (rejected, held, given up) and the new position, in one transaction.
    async fn settle(
        &mut self,
        items: &[Item],
        fates: &HashMap<usize, Fate>,
        give_up: Option<(String, i64, i64)>,
    ) -> sfsync_store::Result<()> {
        let now = now_ms();
        let mut dead = Vec::new();
        let mut delivered = 0u64;
        let mut skipped = 0u64;
        let mut to = None;
        for it in items {
            let dl = |reason: String, attempts: i64, first: i64| NewDeliveryDeadLetter {
                change: it.row.clone(),
                reason,
                attempts,
                first_failed_at_ms: first,
            };
            match &it.kind {
                Kind::Skip => skipped += 1,
                Kind::Held => dead.push(dl(HELD.into(), 0, now)),
                Kind::Send(i) => match (fates.get(i), &give_up) {
                    (Some(Fate::Delivered), _) => delivered += 1,
                    (Some(Fate::Rejected(r)), _) => {
                        dead.push(dl(format!("rejected by the consumer: {r}"), 1, now))
                    }
                    (Some(Fate::Held), _) => dead.push(dl(HELD.into(), 0, now)),
                    (None, Some((reason, attempts, first))) => {
                        dead.push(dl(reason.clone(), *attempts, *first))
                    }
                    (None, None) => break,
                },
            }
            to = Some(it.row.seq);
        }
        let Some(to) = to else {
            return Ok(());
        };
        self.store
            .delivery_advance(&self.spec.name, &self.object, to, delivered, &dead)
            .await?;
        self.stats.delivered.fetch_add(delivered, Relaxed);
        self.stats.echoes_skipped.fetch_add(skipped, Relaxed);
        self.stats
            .dead_lettered
            .fetch_add(dead.len() as u64, Relaxed);
        for d in &dead {
            self.held.insert(d.change.record_id.clone());
        }
        self.position = self.position.max(to);
        Ok(())
    }

    /// Delivers dead letters an operator asked to redrive (with the records' held changes, in
    /// order). `None` when there is nothing to redrive.
    async fn redrive(&mut self) -> sfsync_store::Result<Option<Step>> {
        let items = self
            .store
            .delivery_redrives(
                &self.spec.name,
                &self.object,
                self.spec.batch_max,
                PiiMode::Sealed,
            )
            .await?;
        if items.is_empty() {
            return Ok(None);
        }
        let mut outcomes = Vec::new();
        let mut failed_records: HashSet<String> = HashSet::new();
        let mut pause = None;
        for d in items {
            if failed_records.contains(&d.change.record_id) {
                continue;
            }
            let view = self.store.pii_view(&d.change, self.spec.pii)?;
            let msg = OutMessage::new(view, None);
            self.stats.batches.fetch_add(1, Relaxed);
            match self
                .spec
                .transport
                .send(&self.object, std::slice::from_ref(&msg))
                .await
            {
                Ok(()) => {
                    self.stats.redriven.fetch_add(1, Relaxed);
                    outcomes.push((d.id, RedriveOutcome::Delivered));
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Relaxed);
                    failed_records.insert(d.change.record_id.clone());
                    outcomes.push((
                        d.id,
                        RedriveOutcome::Failed {
                            reason: format!("redrive failed: {}", e.reason()),
                        },
                    ));
                    if let SendError::Retry { .. } = e {
                        pause = Some(self.backoff(None));
                    }
                }
            }
        }
        self.store.settle_delivery_redrives(&outcomes).await?;
        self.held = self
            .store
            .held_records(&self.spec.name, &self.object)
            .await?
            .into_iter()
            .collect();
        Ok(Some(pause.map_or(Step::Worked, Step::Wait)))
    }
}
