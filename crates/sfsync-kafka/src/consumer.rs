//! Consumer-group consumer and a read-everything helper.
//!
//! Guarantees: within a partition messages arrive in offset order. Offsets are committed only by
//! the caller ([`Consumer::commit`], [`Consumer::commit_message`]); a consumer that joins the
//! group afterwards resumes at the committed offsets, and reads partitions without a committed
//! offset from their beginning. Delivery to the caller is therefore at-least-once: whatever was
//! received after the last commit is received again after a restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

use crate::config::KafkaConfig;
use crate::error::{KafkaError, Result};

/// A received message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Headers in order; a header with a null value has an empty one here.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The producer's create time (or the broker's append time), milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl Message {
    fn from_borrowed(m: &BorrowedMessage<'_>) -> Message {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Message {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    /// The key as UTF-8 text (lossy), or "" without a key.
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(self.key.as_deref().unwrap_or_default()).into_owned()
    }
}

/// A consumer in a consumer group. Offsets are never committed automatically.
pub struct Consumer {
    inner: Arc<StreamConsumer>,
    group: String,
    brokers: String,
    timeout: Duration,
}

impl Consumer {
    /// Validates `config` and creates a consumer of group `group_id`. Partitions without a
    /// committed offset are read from their earliest message.
    pub fn new(config: &KafkaConfig, group_id: &str) -> Result<Consumer> {
        config.validate().map_err(KafkaError::Config)?;
        if group_id.trim().is_empty() {
            return Err(KafkaError::Config(vec![crate::ConfigProblem {
                key: "group_id".to_string(),
                message: "is empty".to_string(),
            }]));
        }
        let mut c = config.client_config();
        c.set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        let inner: StreamConsumer = c.create().map_err(|source| KafkaError::Client {
            role: "consumer",
            brokers: config.brokers(),
            source: Box::new(source),
        })?;
        Ok(Consumer {
            inner: Arc::new(inner),
            group: group_id.to_string(),
            brokers: config.brokers(),
            timeout: Duration::from_secs(30),
        })
    }

    /// The group this consumer belongs to.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Joins the group for `topics`; partitions are assigned (and rebalanced as members come
    /// and go) while [`Consumer::recv`] or [`Consumer::poll`] run.
    pub fn subscribe(&self, topics: &[&str]) -> Result<()> {
        self.inner
            .subscribe(topics)
            .map_err(|source| self.request(format!("subscribe to {topics:?}"), source))
    }

    /// The next message, waiting as long as it takes. Cancel-safe.
    pub async fn recv(&self) -> Result<Message> {
        match self.inner.recv().await {
            Ok(m) => Ok(Message::from_borrowed(&m)),
            Err(source) => Err(KafkaError::Consume {
                group: self.group.clone(),
                brokers: self.brokers.clone(),
                source: Box::new(source),
            }),
        }
    }

    /// The next message, or `None` when none arrives within `timeout`.
    pub async fn poll(&self, timeout: Duration) -> Result<Option<Message>> {
        match tokio::time::timeout(timeout, self.recv()).await {
            Ok(m) => m.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Commits, for each `(topic, partition)`, the offset of the next message to read
    /// (last processed offset + 1), synchronously.
    pub async fn commit(&self, next_offsets: &[(String, i32, i64)]) -> Result<()> {
        if next_offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, next) in next_offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))
                .map_err(|source| self.request("commit".to_string(), source))?;
        }
        let inner = self.inner.clone();
        let what = format!("commit of {next_offsets:?}");
        tokio::task::spawn_blocking(move || inner.commit(&tpl, CommitMode::Sync))
            .await
            .expect("librdkafka commit panicked")
            .map_err(|source| self.request(what, source))
    }

    /// Commits `message` as processed (its offset + 1 for its partition).
    pub async fn commit_message(&self, message: &Message) -> Result<()> {
        self.commit(&[(message.topic.clone(), message.partition, message.offset + 1)])
            .await
    }

    /// The group's committed next offsets for the partitions assigned to this consumer
    /// (`None` where nothing is committed).
    pub async fn committed(&self) -> Result<Vec<(String, i32, Option<i64>)>> {
        let inner = self.inner.clone();
        let timeout = self.timeout;
        let tpl = tokio::task::spawn_blocking(move || inner.committed(timeout))
            .await
            .expect("librdkafka committed panicked")
            .map_err(|source| self.request("committed offsets".to_string(), source))?;
        Ok(tpl
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.topic().to_string(), e.partition(), offset)
            })
            .collect())
    }

    /// Moves the fetch position of an assigned partition to `offset` (the next message read is
    /// the one at `offset`); messages already fetched for it are discarded. For a consumer whose
    /// real position is kept outside Kafka.
    pub async fn seek(&self, topic: &str, partition: i32, offset: i64) -> Result<()> {
        let inner = self.inner.clone();
        let t = topic.to_string();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            inner.seek(&t, partition, Offset::Offset(offset), timeout)
        })
        .await
        .expect("librdkafka seek panicked")
        .map_err(|source| self.request(format!("seek of {topic}/{partition} to {offset}"), source))
    }

    /// Leaves the group and joins it again for `topics`, so the coordinator computes a new
    /// assignment for every member (a partition left with a member that is gone is handed out
    /// again).
    pub fn rejoin(&self, topics: &[&str]) -> Result<()> {
        self.inner.unsubscribe();
        self.subscribe(topics)
    }

    /// Each partition of `topic` with its high watermark (the offset the next message will
    /// get), from the partition leaders.
    pub async fn high_watermarks(&self, topic: &str) -> Result<Vec<(i32, i64)>> {
        let inner = self.inner.clone();
        let name = topic.to_string();
        let step = self.timeout.min(Duration::from_secs(10));
        tokio::task::spawn_blocking(move || -> rdkafka::error::KafkaResult<Vec<(i32, i64)>> {
            let metadata = inner.fetch_metadata(Some(&name), step)?;
            let mut out = Vec::new();
            for t in metadata.topics().iter().filter(|t| t.name() == name) {
                for p in t.partitions() {
                    let (_, high) = inner.fetch_watermarks(&name, p.id(), step)?;
                    out.push((p.id(), high));
                }
            }
            Ok(out)
        })
        .await
        .expect("librdkafka watermark call panicked")
        .map_err(|source| self.request(format!("high watermarks of topic '{topic}'"), source))
    }

    /// The partitions currently assigned to this consumer.
    pub fn assignment(&self) -> Result<Vec<(String, i32)>> {
        let tpl = self
            .inner
            .assignment()
            .map_err(|source| self.request("assignment".to_string(), source))?;
        Ok(tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect())
    }

    /// Reads every message of `topic` that exists when the call starts, from the beginning of
    /// every partition, without joining a group or committing anything. Messages are in offset
    /// order within each partition (partitions interleave). Fails with [`KafkaError::Timeout`]
    /// naming the partitions not read to their end within `timeout`.
    pub async fn read_all(
        config: &KafkaConfig,
        topic: &str,
        timeout: Duration,
    ) -> Result<Vec<Message>> {
        let deadline = Instant::now() + timeout;
        // A group id is required by librdkafka's consumer; `assign` never joins it.
        let consumer = Consumer::new(config, &format!("sfsync-read-all-{}", uuid::Uuid::new_v4()))?;
        let inner = consumer.inner.clone();
        let name = topic.to_string();
        let ends = tokio::time::timeout_at(
            deadline,
            tokio::task::spawn_blocking(move || -> rdkafka::error::KafkaResult<_> {
                let step = Duration::from_secs(5);
                let metadata = inner.fetch_metadata(Some(&name), step)?;
                let mut ends = BTreeMap::new();
                for t in metadata.topics().iter().filter(|t| t.name() == name) {
                    if let Some(e) = t.error() {
                        return Err(rdkafka::error::KafkaError::MetadataFetch(e.into()));
                    }
                    for p in t.partitions() {
                        let (low, high) = inner.fetch_watermarks(&name, p.id(), step)?;
                        ends.insert(p.id(), (low, high));
                    }
                }
                Ok(ends)
            }),
        )
        .await
        .map_err(|_| KafkaError::Timeout {
            what: format!("reading the partitions and end offsets of topic '{topic}'"),
            brokers: consumer.brokers.clone(),
            after: timeout,
        })?
        .expect("librdkafka metadata call panicked")
        .map_err(|source| consumer.request(format!("end offsets of topic '{topic}'"), source))?;
        if ends.is_empty() {
            return Err(consumer.request(
                format!("metadata of topic '{topic}'"),
                rdkafka::error::KafkaError::MetadataFetch(
                    rdkafka::error::RDKafkaErrorCode::UnknownTopicOrPartition,
                ),
            ));
        }

        let mut tpl = TopicPartitionList::new();
        for p in ends.keys() {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)
                .map_err(|source| consumer.request("assign".to_string(), source))?;
        }
        consumer
            .inner
            .assign(&tpl)
            .map_err(|source| consumer.request(format!("assign topic '{topic}'"), source))?;

        // Partitions still to read, with the offset to reach.
        let mut open: BTreeMap<i32, i64> = ends
            .into_iter()
            .filter(|(_, (low, high))| high > low)
            .map(|(p, (_, high))| (p, high))
            .collect();
        let mut messages = Vec::new();
        while !open.is_empty() {
            let m = match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(m) => m?,
                Err(_) => {
                    return Err(KafkaError::Timeout {
                        what: format!(
                            "reading topic '{topic}' to its end (partition: end offset still \
                             to reach {open:?}; {} messages read)",
                            messages.len()
                        ),
                        brokers: consumer.brokers.clone(),
                        after: timeout,
                    })
                }
            };
            if let Some(end) = open.get(&m.partition) {
                if m.offset + 1 >= *end {
                    open.remove(&m.partition);
                }
                messages.push(m);
            }
        }
        Ok(messages)
    }

    fn request(&self, what: String, source: rdkafka::error::KafkaError) -> KafkaError {
        KafkaError::Request {
            what: format!("{what} (consumer group '{}')", self.group),
            brokers: self.brokers.clone(),
            source: Box::new(source),
        }
    }
}
