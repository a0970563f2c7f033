//! The idempotent producer.
//!
//! Guarantees: every record of a [`Producer::send_batch`] call is acknowledged by all in-sync
//! replicas before the call returns `Ok`; records with the same key go to the same partition in
//! the order given, and librdkafka's internal retries (after a timeout, a lost connection, a
//! broker restart) neither reorder nor duplicate them — the broker drops a resent record by its
//! producer id and sequence number (`enable.idempotence=true`, `acks=all`).
//!
//! When a batch fails, `send_batch` replaces its librdkafka client with a new one (a new
//! producer id) and destroys the old one, which purges whatever of the batch it still queued or
//! was retrying: nothing of a failed batch is sent after `send_batch` returned.
//!
//! Duplicates are still possible, and only here:
//! 1. `send_batch` returned an error and the caller sends the batch again: the records that were
//!    delivered before the failure ([`KafkaError::Delivery`]'s `delivered`), and records that
//!    reached the broker without their acknowledgement reaching us before the delivery timeout
//!    (for example while the broker was restarting), are written a second time. Order per key is
//!    kept: the batch is resent from its start after the first attempt has ended, so a reader
//!    sees each key's records in order, possibly followed by the same records again from an
//!    earlier point of that batch (`a1 a2 a1 a2 a3`).
//! 2. The process restarts and resends what it had not recorded as delivered: a new producer id
//!    has no sequence history at the broker.
//! 3. A broker that loses its idempotence state (producer ids and sequence numbers) cannot
//!    recognise librdkafka's own resends. tansu keeps that state in its storage, so a broker
//!    restart within the delivery timeout causes no duplicates (tested).
//!
//! Consumers must therefore treat a record's identity (for the delivery sink: the change's
//! idempotency key) as the deduplication key. Transactions, which would close case 1, are not
//! used: the test broker (tansu 0.6) does not support them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use tokio::time::Instant;

use crate::config::{KafkaConfig, ProducerOptions};
use crate::error::{show_key, KafkaError, Result};

/// One record to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    /// Chooses the partition (murmur2 hash, as Java clients do); all records with one key stay
    /// in order.
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    pub fn new(
        topic: impl Into<String>,
        key: impl Into<Vec<u8>>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        Record {
            topic: topic.into(),
            key: key.into(),
            payload: payload.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Where a record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryReport {
    pub partition: i32,
    /// -1 when the broker did not report it (a resend the broker recognised as a duplicate is
    /// acknowledged without an offset).
    pub offset: i64,
}

/// An idempotent Kafka producer (see the module documentation for what it guarantees).
/// `send_batch` calls may run concurrently; records of one call keep their order per key, records
/// of concurrent calls interleave.
pub struct Producer {
    config: KafkaConfig,
    options: ProducerOptions,
    current: Mutex<Arc<FutureProducer>>,
}

/// Extra time past the delivery timeout before `send_batch` stops waiting for librdkafka's own
/// timeout report (which should always come first).
const REPORT_GRACE: Duration = Duration::from_secs(5);

impl Producer {
    /// Validates `config` and `options` and creates the client. Nothing connects until the first
    /// record is sent.
    pub fn new(config: &KafkaConfig, options: ProducerOptions) -> Result<Producer> {
        let mut problems = config.validate().err().unwrap_or_default();
        problems.extend(options.validate().err().unwrap_or_default());
        if !problems.is_empty() {
            return Err(KafkaError::Config(problems));
        }
        let client = create(config, &options)?;
        Ok(Producer {
            config: config.clone(),
            options,
            current: Mutex::new(Arc::new(client)),
        })
    }

    /// The delivery timeout this producer was created with.
    pub fn delivery_timeout(&self) -> Duration {
        self.options.delivery_timeout()
    }

    /// Sends every record and waits for each one's acknowledgement. Returns the partition and
    /// offset of each record, in the order given.
    ///
    /// Returns within about the delivery timeout (plus a few seconds' grace): librdkafka fails a
    /// record that was not acknowledged in time, and a record that fails makes the whole call an
    /// error naming the first failed record's topic and key, librdkafka's error code, and how
    /// many records were and were not delivered. A full local queue (`QueueFull`) is not an
    /// error: the call waits for earlier records' acknowledgements to make room.
    ///
    /// On error the client is replaced (see the module documentation) and the caller should
    /// resend the whole batch (the module documentation lists the duplicates that may cause).
    /// Cancel-safety: dropping the future stops the waiting, not the sending — records already
    /// handed to librdkafka may still be written.
    pub async fn send_batch(&self, records: Vec<Record>) -> Result<Vec<DeliveryReport>> {
        let producer = self.client()?;
        let result = self.send_with(&producer, &records).await;
        if result.is_err() {
            self.retire(producer);
        }
        result
    }

    async fn send_with(
        &self,
        producer: &FutureProducer,
        records: &[Record],
    ) -> Result<Vec<DeliveryReport>> {
        let timeout = self.options.delivery_timeout();
        let deadline = Instant::now() + timeout + REPORT_GRACE;
        let total = records.len();
        let mut outcome: Vec<Option<std::result::Result<DeliveryReport, RDKafkaErrorCode>>> =
            vec![None; total];
        let mut pending: VecDeque<(usize, DeliveryFuture)> = VecDeque::new();
        // A record librdkafka refuses to queue (too large, say) stops the queueing, so that no
        // later record of its key is written without it; the rest of the batch counts as failed.
        let mut refused = None;

        'queue: for (i, r) in records.iter().enumerate() {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (name, value) in &r.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value),
                });
            }
            let mut record = FutureRecord::to(&r.topic)
                .key(&r.key[..])
                .payload(&r.payload[..])
                .headers(headers);
            loop {
                match producer.send_result(record) {
                    Ok(future) => {
                        pending.push_back((i, future));
                        break;
                    }
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                        back,
                    )) => {
                        record = back;
                        // Room is made by acknowledgements: wait for the oldest one.
                        if let Some((j, future)) = pending.pop_front() {
                            outcome[j] = Some(
                                await_report(future, deadline)
                                    .await
                                    .ok_or_else(|| self.stalled(records, j, total, timeout))?,
                            );
                        } else {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        if Instant::now() >= deadline {
                            return Err(KafkaError::Timeout {
                                what: format!(
                                    "queueing record {} of {total} for topic '{}' (local queue \
                                     full)",
                                    i + 1,
                                    r.topic
                                ),
                                brokers: self.config.brokers(),
                                after: timeout,
                            });
                        }
                    }
                    Err((e, _)) => {
                        refused = Some(code_of(&e));
                        break 'queue;
                    }
                }
            }
        }
        while let Some((j, future)) = pending.pop_front() {
            outcome[j] = Some(
                await_report(future, deadline)
                    .await
                    .ok_or_else(|| self.stalled(records, j, total, timeout))?,
            );
        }

        let mut reports = Vec::with_capacity(total);
        let mut first_failure = None;
        let mut failed = 0;
        for (i, o) in outcome.into_iter().enumerate() {
            match o
                .unwrap_or_else(|| Err(refused.expect("only records after a refusal are unsent")))
            {
                Ok(report) => reports.push(report),
                Err(code) => {
                    failed += 1;
                    first_failure.get_or_insert((i, code));
                }
            }
        }
        let Some((i, code)) = first_failure else {
            return Ok(reports);
        };
        let r = &records[i];
        if let Some((fatal_code, reason)) = producer.client().fatal_error() {
            tracing::warn!(
                brokers = %self.config.brokers(),
                code = ?fatal_code,
                %reason,
                "Kafka producer failed fatally; a new producer will send the next batch."
            );
            return Err(KafkaError::FatalProducer {
                topic: r.topic.clone(),
                key: show_key(&r.key),
                brokers: self.config.brokers(),
                code: fatal_code,
                reason,
            });
        }
        Err(KafkaError::Delivery {
            topic: r.topic.clone(),
            key: show_key(&r.key),
            brokers: self.config.brokers(),
            code,
            failed,
            delivered: total - failed,
            total,
        })
    }

    /// Waits until every record handed to librdkafka has been acknowledged or has failed, at
    /// most `timeout`. `send_batch` already waits for its own records; this is for shutdown.
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let producer = self.current.lock().clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .expect("librdkafka flush panicked")
            .map_err(|source| KafkaError::Request {
                what: "flush".to_string(),
                brokers: self.config.brokers(),
                source: Box::new(source),
            })
    }

    /// Replaces the client a batch failed on with a new one (a new producer id), unless a
    /// concurrent batch did so already. The old client is destroyed once its last batch is done,
    /// purging whatever it still queues or retries, so nothing of a failed batch is sent after
    /// `send_batch` returned. This also keeps the producer clear of librdkafka's epoch bump
    /// after timed-out records (KIP-360), which tansu 0.6 cannot serve.
    fn retire(&self, failed: Arc<FutureProducer>) {
        let fresh = match create(&self.config, &self.options) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                tracing::warn!(error = %e, "Could not create a new Kafka producer; keeping the old one.");
                return;
            }
        };
        let old = {
            let mut current = self.current.lock();
            Arc::ptr_eq(&current, &failed).then(|| std::mem::replace(&mut *current, fresh))
        };
        drop(failed);
        // Destroying a librdkafka client blocks (purge, flush of up to 500 ms, thread joins).
        if let Some(old) = old {
            tokio::task::spawn_blocking(move || drop(old));
        }
    }

    /// The current client, replaced first when it has hit a fatal error.
    fn client(&self) -> Result<Arc<FutureProducer>> {
        let mut current = self.current.lock();
        if let Some((code, reason)) = current.client().fatal_error() {
            tracing::warn!(
                brokers = %self.config.brokers(),
                ?code,
                %reason,
                "Replacing the Kafka producer after its fatal error."
            );
            *current = Arc::new(create(&self.config, &self.options)?);
        }
        Ok(current.clone())
    }

    fn stalled(&self, records: &[Record], j: usize, total: usize, timeout: Duration) -> KafkaError {
        KafkaError::Timeout {
            what: format!(
                "delivery report for record {} of {total} (topic '{}', key '{}')",
                j + 1,
                records[j].topic,
                show_key(&records[j].key)
            ),
            brokers: self.config.brokers(),
            after: timeout + REPORT_GRACE,
        }
    }
}

fn create(config: &KafkaConfig, options: &ProducerOptions) -> Result<FutureProducer> {
    let mut c = config.client_config();
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            options.delivery_timeout_ms.to_string(),
        )
        .set("linger.ms", options.linger_ms.to_string())
        .set("compression.codec", options.compression.librdkafka())
        // The partitioner of the Java client, so that other producers of the same keys
        // (Kafka Connect, Streams) pick the same partitions.
        .set("partitioner", "murmur2_random");
    c.create().map_err(|source| KafkaError::Client {
        role: "producer",
        brokers: config.brokers(),
        source: Box::new(source),
    })
}

/// The report of one record; `None` when none came by `deadline`.
async fn await_report(
    future: DeliveryFuture,
    deadline: Instant,
) -> Option<std::result::Result<DeliveryReport, RDKafkaErrorCode>> {
    match tokio::time::timeout_at(deadline, future).await {
        Err(_) => None,
        Ok(Err(_canceled)) => Some(Err(RDKafkaErrorCode::PurgeQueue)),
        Ok(Ok(Ok(d))) => Some(Ok(DeliveryReport {
            partition: d.partition,
            offset: d.offset,
        })),
        Ok(Ok(Err((e, _message)))) => Some(Err(code_of(&e))),
    }
}

fn code_of(e: &rdkafka::error::KafkaError) -> RDKafkaErrorCode {
    e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail)
}
