//! The Kafka sink: each change is a record on its object's topic.
//!
//! - Topic: the sink's template with `{object}` replaced (`sfsync.{object}` → `sfsync.Case`),
//!   created at start when missing (partitions and replication factor from the config).
//! - Key: the record Id, so every change of a record lands on one partition, in order.
//! - Value: the change as JSON (the same object a webhook receives in `changes`).
//! - Headers: `idempotency_key`, `sfsync_sink`, `change_type`, `object`.
//! - The producer is idempotent (`enable.idempotence`, `acks=all`): librdkafka's own retries
//!   never duplicate or reorder a partition's records. A batch that fails as a whole (the broker
//!   unreachable past the delivery timeout) is sent again by the lane, which may write records
//!   of it a second time; consumers deduplicate by the `idempotency_key` header.
//! - The sink's position lives in sfsync's store (`delivery_positions`), moved only after every
//!   record of a batch was acknowledged — not in consumer offsets.

use std::time::Duration;

use async_trait::async_trait;
use sfsync_kafka::{Admin, KafkaConfig, KafkaError, Producer, ProducerOptions, Record, TopicSpec};

use super::{OutMessage, SendError, Transport};

/// Settings of a Kafka sink.
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    pub sink: String,
    pub kafka: KafkaConfig,
    /// `{object}` is replaced by the object's API name.
    pub topic: String,
    pub partitions: u32,
    pub replication_factor: u16,
    /// How long one batch may take to be acknowledged before it counts as failed.
    pub delivery_timeout: Duration,
}

/// A Kafka sink's transport.
pub struct KafkaSink {
    config: KafkaSinkConfig,
    producer: Producer,
    admin: Admin,
}

impl KafkaSink {
    pub fn new(config: KafkaSinkConfig) -> Result<KafkaSink, String> {
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
        )
        .map_err(|e| e.to_string())?;
        let admin = Admin::new(&config.kafka)
            .map_err(|e| e.to_string())?
            .with_timeout(Duration::from_secs(15));
        Ok(KafkaSink {
            config,
            producer,
            admin,
        })
    }

    /// The topic of `object`.
    pub fn topic(&self, object: &str) -> String {
        topic_of(&self.config.topic, object)
    }
}

/// The topic `template` names for `object`.
pub fn topic_of(template: &str, object: &str) -> String {
    template.replace("{object}", object)
}

fn send_error(e: KafkaError) -> SendError {
    let reason = e.to_string();
    match &e {
        // A record the cluster will never take (too large, refused by policy) or a topic that
        // does not fit: sending it again as it is does not help.
        KafkaError::Config(_) | KafkaError::TopicTooSmall { .. } => SendError::Reject { reason },
        KafkaError::Delivery { .. } if is_permanent(&reason) => SendError::Reject { reason },
        _ => SendError::Retry {
            reason,
            after: None,
        },
    }
}

/// librdkafka errors that a resend cannot fix.
fn is_permanent(reason: &str) -> bool {
    [
        "MsgSizeTooLarge",
        "MSG_SIZE_TOO_LARGE",
        "InvalidMessage",
        "RecordListTooLarge",
    ]
    .iter()
    .any(|p| reason.contains(p))
}

#[async_trait]
impl Transport for KafkaSink {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn target(&self) -> String {
        format!(
            "kafka://{} topic {}",
            self.config.kafka.bootstrap_servers, self.config.topic
        )
    }

    async fn prepare(&self, objects: &[String]) -> Result<(), SendError> {
        let topics: Vec<TopicSpec> = objects
            .iter()
            .map(|o| {
                TopicSpec::new(
                    self.topic(o),
                    self.config.partitions,
                    self.config.replication_factor,
                )
            })
            .collect();
        self.admin
            .ensure_topics(&topics)
            .await
            .map(|_| ())
            .map_err(send_error)
    }

    async fn send(&self, object: &str, batch: &[OutMessage]) -> Result<(), SendError> {
        let topic = self.topic(object);
        let mut records = Vec::with_capacity(batch.len());
        for m in batch {
            let value = serde_json::to_vec(m).map_err(|e| SendError::Reject {
                reason: format!("encoding change {}: {e}", m.idempotency_key),
            })?;
            records.push(
                Record::new(topic.clone(), m.id.as_bytes().to_vec(), value)
                    .header("idempotency_key", m.idempotency_key.as_bytes().to_vec())
                    .header("sfsync_sink", self.config.sink.as_bytes().to_vec())
                    .header("change_type", m.change_type.as_bytes().to_vec())
                    .header("object", object.as_bytes().to_vec()),
            );
        }
        self.producer
            .send_batch(records)
            .await
            .map(|_| ())
            .map_err(send_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_template() {
        assert_eq!(topic_of("sfsync.{object}", "Case"), "sfsync.Case");
        assert_eq!(topic_of("cases", "Case"), "cases");
        assert_eq!(topic_of("{object}-{object}", "A"), "A-A");
    }

    #[test]
    fn size_refusals_are_permanent_the_rest_retried() {
        assert!(is_permanent(
            "Broker: Message size too large (MsgSizeTooLarge)"
        ));
        assert!(!is_permanent("Local: Message timed out"));
    }
}
