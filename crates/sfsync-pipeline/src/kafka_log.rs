//! Kafka as the raw change log (issue 10): the ingest role writes each change to one topic
//! partitioned by record id, and apply workers consume it as a consumer group.
//!
//! Guarantees:
//! - **Per-record order.** A change event naming several records is written once per record,
//!   keyed by that record's id (event key `transactionKey/sequence/recordId`), so every change of
//!   a record lands on one partition in commit order; a worker applies only the record its
//!   message names. A change naming no record (a `GAP_OVERFLOW`) is keyed by its object.
//! - **Nothing lost between ingest and Kafka.** The subscription's replay id is committed to the
//!   store only after Kafka acknowledged every record of the batch (idempotent producer,
//!   `acks=all`). A crash in between re-reads the batch from the stored replay id and writes it
//!   again; the duplicates are no-ops at apply (equal record versions, see below).
//! - **Exactly once into the warehouse.** A worker's curated writes and its partitions' applied
//!   offsets (`kafka:<topic>:<partition>` in `apply_offsets`) commit in ONE store transaction,
//!   by compare-and-set ([`sfsync_store::LogPosition`]): a worker killed at any moment resumes
//!   from the stored offsets, and a worker that lost a partition in a rebalance cannot commit
//!   it again. Kafka's own committed offsets are advisory: written after the store commit, they
//!   only save re-reading; a message at or below the stored offset is skipped, and a fetch
//!   position past it is moved back (`seek`).
//! - **PII rests sealed.** Payloads are compressed and, for objects with PII, sealed exactly as
//!   the store seals its own raw log ([`Warehouse::encode_raw_payloads`]).
//!
//! Message layout: key = record id; value = the stored payload; headers `sfsync-event-key`,
//! `sfsync-channel`, `sfsync-replay-id` (bytes, verbatim), `sfsync-schema-id`, `sfsync-entity`,
//! `sfsync-change-type`, `sfsync-commit-ts`, `sfsync-commit-number`, `sfsync-seq`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sfsync_core::{ChangeType, EventKey, RecordVersion, ReplayId};
use sfsync_kafka::{Admin, Consumer, KafkaConfig, Message, Producer, ProducerOptions, Record};
use sfsync_store::{LogPosition, LoggedChange, RawChange, Warehouse};

use crate::error::{PipelineError, Result};

/// Where the raw change log lives in Kafka.
#[derive(Debug, Clone)]
pub struct KafkaLogConfig {
    pub kafka: KafkaConfig,
    /// The raw-log topic (one per deployment or org).
    pub topic: String,
    /// Partitions created with the topic (the most apply workers that can share the work).
    pub partitions: u32,
    pub replication_factor: u16,
    /// The apply workers' consumer group.
    pub group: String,
    /// How long one produced batch may take to be acknowledged.
    pub delivery_timeout: Duration,
}

/// The consumer name of a partition's applied offset in `apply_offsets`.
pub fn position_consumer(topic: &str, partition: i32) -> String {
    format!("kafka:{topic}:{partition}")
}

const H_EVENT_KEY: &str = "sfsync-event-key";
const H_CHANNEL: &str = "sfsync-channel";
const H_REPLAY_ID: &str = "sfsync-replay-id";
const H_SCHEMA_ID: &str = "sfsync-schema-id";
const H_ENTITY: &str = "sfsync-entity";
const H_CHANGE_TYPE: &str = "sfsync-change-type";
const H_COMMIT_TS: &str = "sfsync-commit-ts";
const H_COMMIT_NUMBER: &str = "sfsync-commit-number";
const H_SEQ: &str = "sfsync-seq";

/// The record id an event key names (its last `/` part), if any.
pub fn record_of(key: &EventKey) -> Option<&str> {
    key.as_str()
        .rsplit_once('/')
        .map(|(_, id)| id)
        .filter(|id| !id.is_empty())
}

/// One raw change per record of `change` (see the module doc), with its payload bytes.
pub fn per_record(change: &sfsync_core::Change, payload: &Bytes) -> Vec<RawChange> {
    let Some(first) = RawChange::from_change(change, payload.clone()) else {
        return Vec::new();
    };
    let keys = change.event_keys();
    if keys.len() <= 1 {
        return vec![first];
    }
    keys.into_iter()
        .map(|k| RawChange {
            event_key: k,
            ..first.clone()
        })
        .collect()
}

/// The ingest side: writes raw changes to the topic.
pub struct KafkaLogWriter {
    config: KafkaLogConfig,
    producer: Producer,
}

/// Creates the raw-log topic when it is missing (both roles do: a consumer that subscribes to a
/// topic that does not exist yet would only see it at its next metadata refresh, minutes later).
async fn ensure_topic(config: &KafkaLogConfig) -> Result<()> {
    let admin = Admin::new(&config.kafka)?.with_timeout(Duration::from_secs(30));
    admin
        .ensure_topics(&[sfsync_kafka::TopicSpec::new(
            config.topic.clone(),
            config.partitions,
            config.replication_factor,
        )])
        .await?;
    Ok(())
}

impl KafkaLogWriter {
    /// Creates the producer and the topic when it is missing.
    pub async fn connect(config: KafkaLogConfig) -> Result<KafkaLogWriter> {
        ensure_topic(&config).await?;
        let producer = Producer::new(
            &config.kafka,
            ProducerOptions {
                delivery_timeout_ms: config
                    .delivery_timeout
                    .as_millis()
                    .try_into()
                    .unwrap_or(u64::MAX),
                ..Default::default()
            },
        )?;
        Ok(KafkaLogWriter { config, producer })
    }

    /// Writes `changes` of `channel` and waits until Kafka acknowledged every one. Payloads are
    /// encoded (compressed, PII sealed) by `store`. Returns the number written.
    pub async fn write(
        &self,
        store: &dyn Warehouse,
        channel: &str,
        changes: &[RawChange],
    ) -> Result<u64> {
        if changes.is_empty() {
            return Ok(0);
        }
        let payloads = store.encode_raw_payloads(changes)?;
        let records: Vec<Record> = changes
            .iter()
            .zip(payloads)
            .map(|(c, payload)| {
                let key = record_of(&c.event_key).unwrap_or(&c.entity).to_string();
                Record::new(self.config.topic.clone(), key, payload)
                    .header(H_EVENT_KEY, c.event_key.as_str())
                    .header(H_CHANNEL, channel)
                    .header(H_REPLAY_ID, c.replay_id.as_bytes().to_vec())
                    .header(H_SCHEMA_ID, c.schema_id.as_str())
                    .header(H_ENTITY, c.entity.as_str())
                    .header(H_CHANGE_TYPE, c.change_type.as_str())
                    .header(H_COMMIT_TS, c.version.commit_timestamp.to_string())
                    .header(H_COMMIT_NUMBER, c.version.commit_number.to_string())
                    .header(H_SEQ, c.version.sequence_number.to_string())
            })
            .collect();
        let n = records.len() as u64;
        self.producer.send_batch(records).await?;
        Ok(n)
    }
}

/// A message read back as a raw change, or why it cannot be.
pub fn decode_message(
    store: &dyn Warehouse,
    m: &Message,
) -> std::result::Result<(String, RawChange), String> {
    let header = |name: &str| -> std::result::Result<&[u8], String> {
        m.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
            .ok_or_else(|| format!("header {name} is missing"))
    };
    let text = |name: &str| -> std::result::Result<String, String> {
        String::from_utf8(header(name)?.to_vec()).map_err(|_| format!("header {name} is not UTF-8"))
    };
    let number = |name: &str| -> std::result::Result<i64, String> {
        text(name)?
            .parse::<i64>()
            .map_err(|e| format!("header {name}: {e}"))
    };
    let entity = text(H_ENTITY)?;
    let event_key = sfsync_store::event_key_from_text(&text(H_EVENT_KEY)?)
        .ok_or_else(|| format!("header {H_EVENT_KEY} is not an event key"))?;
    let change_type = text(H_CHANGE_TYPE)?;
    let change_type = ChangeType::parse(&change_type)
        .ok_or_else(|| format!("header {H_CHANGE_TYPE}: unknown change type '{change_type}'"))?;
    let stored = m.payload.clone().unwrap_or_default();
    let payload = store
        .decode_raw_payload(&entity, stored)
        .map_err(|e| format!("payload: {}", e.chain()))?;
    Ok((
        text(H_CHANNEL)?,
        RawChange {
            event_key,
            replay_id: ReplayId::from_bytes(header(H_REPLAY_ID)?.to_vec()),
            schema_id: text(H_SCHEMA_ID)?,
            entity,
            change_type,
            version: RecordVersion {
                commit_timestamp: number(H_COMMIT_TS)?,
                commit_number: number(H_COMMIT_NUMBER)?,
                sequence_number: i32::try_from(number(H_SEQ)?)
                    .map_err(|_| format!("header {H_SEQ} is out of range"))?,
            },
            payload: Bytes::from(payload),
        },
    ))
}

/// A message that cannot be read as a raw change: kept as a dead letter with its position.
#[derive(Debug, Clone)]
pub struct BadMessage {
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    pub payload: Vec<u8>,
}

/// What one [`KafkaLogReader::next_batch`] hands the apply stage.
#[derive(Debug, Default)]
pub struct KafkaBatch {
    pub changes: Vec<LoggedChange>,
    /// The message of each change (same order).
    messages: Vec<Message>,
    /// Messages that do not read as raw changes.
    bad: Vec<(Message, String)>,
}

impl KafkaBatch {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.bad.is_empty()
    }
}

/// What the apply stage commits for the part of a batch it applied.
#[derive(Debug, Default)]
pub struct Settled {
    /// Compare-and-set moves of each partition's applied offset.
    pub positions: Vec<LogPosition>,
    /// Unreadable messages below those positions: dead letters of this commit.
    pub bad: Vec<BadMessage>,
    /// Kafka's advisory offsets to commit once the store committed: (topic, partition, next).
    pub advisory: Vec<(String, i32, i64)>,
}

/// The apply side: a consumer-group member whose real positions live in the store.
pub struct KafkaLogReader {
    config: KafkaLogConfig,
    consumer: Arc<Consumer>,
    /// Per partition: the last offset covered by a batch handed to the apply stage (committed or
    /// in flight); looked up in the store the first time the partition is seen.
    planned: BTreeMap<i32, Option<u64>>,
    /// Messages consumed but not applied yet (a batch cut short by a repair).
    buffer: VecDeque<Message>,
    /// Synthetic in-process offsets for [`LoggedChange::offset`] (log lines only).
    seq: u64,
    /// The partitions assigned at the last batch (sorted): a change drops what was planned or
    /// buffered for the partitions that moved.
    assigned: Vec<i32>,
    /// The stall watchdog ([`KafkaLogReader::watchdog`]): per partition, the stored offset last
    /// seen and since when it has not moved while changes waited.
    watch: BTreeMap<i32, (Option<u64>, Instant)>,
    last_watch: Option<Instant>,
    last_rejoin: Option<Instant>,
}

/// How often the watchdog looks, and how long a partition may have changes waiting with no
/// worker applying any (three group session timeouts) before a worker rejoins the group.
const WATCH_EVERY: Duration = Duration::from_secs(5);
const STALL_AFTER: Duration = Duration::from_secs(30);
const REJOIN_EVERY: Duration = Duration::from_secs(60);

impl KafkaLogReader {
    /// Creates the topic when it is missing, joins the group and subscribes to the topic.
    pub async fn connect(config: KafkaLogConfig) -> Result<KafkaLogReader> {
        ensure_topic(&config).await?;
        // A worker that dies (SIGKILL, lost machine) holds its partitions until the group's
        // session timeout ends: keep it short so the others take them over within seconds.
        let mut kafka = config.kafka.clone();
        for (k, v) in [
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "2000"),
        ] {
            kafka
                .extra
                .entry(k.to_string())
                .or_insert_with(|| v.to_string());
        }
        let consumer = Consumer::new(&kafka, &config.group)?;
        consumer.subscribe(&[config.topic.as_str()])?;
        Ok(KafkaLogReader {
            config,
            consumer: Arc::new(consumer),
            planned: BTreeMap::new(),
            buffer: VecDeque::new(),
            seq: 0,
            assigned: Vec::new(),
            watch: BTreeMap::new(),
            last_watch: None,
            last_rejoin: None,
        })
    }

    pub fn topic(&self) -> &str {
        &self.config.topic
    }

    /// The consumer (for the advisory commit after a store commit).
    pub fn consumer(&self) -> Arc<Consumer> {
        self.consumer.clone()
    }

    /// The partitions assigned to this worker now.
    pub fn assignment(&self) -> Vec<i32> {
        self.consumer
            .assignment()
            .map(|a| a.into_iter().map(|(_, p)| p).collect())
            .unwrap_or_default()
    }

    /// The stall watchdog, at most every 5 s. A partition of another worker whose changes wait
    /// while its stored apply offset has not moved for 30 s is orphaned: its owner is wedged,
    /// or the group coordinator dropped a dead member without telling the others to rebalance
    /// (tansu 0.6 does this: the survivors keep their old assignment and the dead member's
    /// partitions are nobody's). This worker then leaves and rejoins the group (at most once a
    /// minute), which makes the coordinator assign every partition again. Nothing is lost
    /// either way; this bounds how long a partition can stand still.
    pub async fn watchdog(&mut self, store: &dyn Warehouse) -> Result<()> {
        let now = Instant::now();
        if self
            .last_watch
            .is_some_and(|t| now.duration_since(t) < WATCH_EVERY)
        {
            return Ok(());
        }
        self.last_watch = Some(now);
        let ends = self.consumer.high_watermarks(&self.config.topic).await?;
        let mine = self.assignment();
        let mut stalled = Vec::new();
        for (p, high) in ends {
            let stored = store
                .applied_offset(&position_consumer(&self.config.topic, p))
                .await?;
            let next = stored.map_or(0, |s| s as i64 + 1);
            let e = self.watch.entry(p).or_insert((stored, now));
            if e.0 != stored || high <= next {
                *e = (stored, now);
                continue;
            }
            if !mine.contains(&p) && now.duration_since(e.1) >= STALL_AFTER {
                stalled.push((p, next, high));
            }
        }
        if stalled.is_empty()
            || self
                .last_rejoin
                .is_some_and(|t| now.duration_since(t) < REJOIN_EVERY)
        {
            return Ok(());
        }
        tracing::warn!(topic = %self.config.topic, stalled = ?stalled, stall_secs = STALL_AFTER.as_secs(), "Kafka partitions of other workers have changes waiting and none was applied for a while (partition, next offset, end); rejoining the consumer group so they are assigned again.");
        self.consumer.rejoin(&[self.config.topic.as_str()])?;
        self.last_rejoin = Some(now);
        for e in self.watch.values_mut() {
            e.1 = now;
        }
        Ok(())
    }

    /// Notices a rebalance: for every partition that came or went, the planned offset is
    /// forgotten (looked up in the store again: another worker may have moved it meanwhile)
    /// and buffered messages of partitions no longer assigned are dropped (their new owner
    /// reads them).
    fn note_assignment(&mut self) {
        let mut now = self.assignment();
        now.sort_unstable();
        if now == self.assigned {
            return;
        }
        let moved: Vec<i32> = now
            .iter()
            .filter(|p| !self.assigned.contains(p))
            .chain(self.assigned.iter().filter(|p| !now.contains(p)))
            .copied()
            .collect();
        tracing::info!(topic = %self.config.topic, partitions = ?now, before = ?self.assigned, "Kafka partitions assigned to this worker changed.");
        for p in &moved {
            self.planned.remove(p);
        }
        self.buffer.retain(|m| now.contains(&m.partition));
        self.assigned = now;
    }

    async fn planned_of(&mut self, store: &dyn Warehouse, partition: i32) -> Result<Option<u64>> {
        if let Some(a) = self.planned.get(&partition) {
            return Ok(*a);
        }
        let a = store
            .applied_offset(&position_consumer(&self.config.topic, partition))
            .await?;
        self.planned.insert(partition, a);
        Ok(a)
    }

    /// Up to `max` messages not applied yet: first what an earlier batch gave back, then new
    /// ones (waiting up to `wait` for the first). Messages at or below a partition's planned
    /// offset are skipped; a partition whose fetch position ran past it is moved back.
    pub async fn next_batch(
        &mut self,
        store: &dyn Warehouse,
        max: usize,
        wait: Duration,
    ) -> Result<KafkaBatch> {
        self.note_assignment();
        let mut raw: Vec<Message> = Vec::new();
        while raw.len() < max {
            match self.buffer.pop_front() {
                Some(m) => raw.push(m),
                None => break,
            }
        }
        if raw.is_empty() {
            if let Some(m) = self.consumer.poll(wait).await? {
                raw.push(m);
            }
        }
        while !raw.is_empty() && raw.len() < max {
            match self.consumer.poll(Duration::from_millis(1)).await? {
                Some(m) => raw.push(m),
                None => break,
            }
        }
        let mut out = KafkaBatch::default();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut rewound: Vec<i32> = Vec::new();
        for m in raw {
            if rewound.contains(&m.partition) {
                continue;
            }
            let planned = self.planned_of(store, m.partition).await?;
            let expected = *next
                .entry(m.partition)
                .or_insert_with(|| planned.map_or(m.offset, |a| a as i64 + 1));
            if m.offset < expected {
                continue; // applied already (redelivered after a restart or a rebalance)
            }
            if m.offset > expected {
                tracing::warn!(topic = %self.config.topic, partition = m.partition, at = m.offset, expected, "Kafka fetch position past the stored apply offset; seeking back.");
                self.consumer
                    .seek(&self.config.topic, m.partition, expected)
                    .await?;
                rewound.push(m.partition);
                continue;
            }
            next.insert(m.partition, m.offset + 1);
            match decode_message(store, &m) {
                Ok((channel, change)) => {
                    self.seq += 1;
                    out.changes.push(LoggedChange {
                        offset: self.seq,
                        channel,
                        change,
                    });
                    out.messages.push(m);
                }
                Err(reason) => out.bad.push((m, reason)),
            }
        }
        if !rewound.is_empty() {
            // Keep only what precedes the rewound partitions' gap (nothing of theirs is kept:
            // their messages come again from the sought position).
            let keep: Vec<bool> = out
                .messages
                .iter()
                .map(|m| !rewound.contains(&m.partition))
                .collect();
            let mut k = keep.iter();
            out.changes.retain(|_| *k.next().unwrap_or(&true));
            out.messages.retain(|m| !rewound.contains(&m.partition));
            out.bad.retain(|(m, _)| !rewound.contains(&m.partition));
        }
        Ok(out)
    }

    /// Settles a batch of which the first `applied` changes were planned for commit: the rest
    /// is given back (read first by the next batch). Returns the compare-and-set positions that
    /// cover the applied part, and the unreadable messages they pass over (dead letters of the
    /// same commit). Call once per batch, before its commit.
    pub fn settle(&mut self, batch: KafkaBatch, applied: usize) -> Settled {
        let whole = applied >= batch.messages.len();
        let mut covered: BTreeMap<i32, i64> = BTreeMap::new();
        let mut back: Vec<Message> = Vec::new();
        for (i, m) in batch.messages.into_iter().enumerate() {
            if i < applied {
                let e = covered.entry(m.partition).or_insert(m.offset);
                *e = (*e).max(m.offset);
            } else {
                back.push(m);
            }
        }
        let mut out = Settled::default();
        for (m, reason) in batch.bad {
            let below = covered.get(&m.partition).is_some_and(|c| m.offset < *c);
            if whole || below {
                let e = covered.entry(m.partition).or_insert(m.offset);
                *e = (*e).max(m.offset);
                out.bad.push(BadMessage {
                    partition: m.partition,
                    offset: m.offset,
                    reason,
                    payload: m.payload.clone().unwrap_or_default(),
                });
            } else {
                back.push(m);
            }
        }
        back.sort_by_key(|m| (m.partition, m.offset));
        for m in back.into_iter().rev() {
            self.buffer.push_front(m);
        }
        for (p, o) in covered {
            let offset = o.max(0) as u64;
            out.positions.push(LogPosition {
                consumer: position_consumer(&self.config.topic, p),
                expected: self.planned.get(&p).copied().flatten(),
                offset,
            });
            out.advisory.push((self.config.topic.clone(), p, o + 1));
            self.planned.insert(p, Some(offset));
        }
        out
    }

    /// Forgets every planned position and buffered message and moves each assigned partition
    /// back to its stored offset: after a failed commit (another worker moved a partition, or
    /// the store failed) nothing planned since is trusted.
    pub async fn reset(&mut self, store: &dyn Warehouse) -> Result<()> {
        self.buffer.clear();
        self.planned.clear();
        for p in self.assignment() {
            let a = self.planned_of(store, p).await?;
            let from = a.map_or(0, |a| a as i64 + 1);
            if let Err(e) = self.consumer.seek(&self.config.topic, p, from).await {
                tracing::warn!(partition = p, error = %e, "Seeking back after a failed commit failed; the partition is re-read from Kafka's committed offset.");
            }
        }
        Ok(())
    }
}

impl From<sfsync_kafka::KafkaError> for PipelineError {
    fn from(e: sfsync_kafka::KafkaError) -> Self {
        PipelineError::Kafka(e.to_string())
    }
}
