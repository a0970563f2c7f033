//! Kafka errors. Each names what was being done, against which brokers, and for which topic (and
//! record key, for a failed delivery); librdkafka's own error is the source or, for per-record
//! and per-topic results, its error code in the message. Each carries an [`ErrorClass`]:
//! `User` for configuration librdkafka or this crate refuses, `Retry` for everything a broker or
//! the network caused.

use std::time::Duration;

use rdkafka::error::RDKafkaErrorCode;
use sfsync_core::ErrorClass;

use crate::config::ConfigProblem;

pub type Result<T, E = KafkaError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The configuration was refused before anything connected.
    #[error("Kafka config: {}", join(.0))]
    Config(Vec<ConfigProblem>),
    /// librdkafka refused to create a client (bad property value, missing TLS support...).
    #[error("could not create the Kafka {role} for {brokers}")]
    Client {
        role: &'static str,
        brokers: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// A request to the cluster failed as a whole (metadata, create topics, subscribe, commit...).
    #[error("Kafka {what} on {brokers} failed")]
    Request {
        what: String,
        brokers: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// The cluster refused to create one topic (other than "it already exists").
    #[error("could not create Kafka topic '{topic}' on {brokers}: {code}")]
    CreateTopic {
        topic: String,
        brokers: String,
        code: RDKafkaErrorCode,
    },
    /// A topic exists with fewer partitions than asked for, so keys would not spread as planned.
    #[error(
        "Kafka topic '{topic}' on {brokers} exists with {found} partitions, fewer than the {wanted} \
         configured; add partitions or lower the setting"
    )]
    TopicTooSmall {
        topic: String,
        brokers: String,
        found: usize,
        wanted: usize,
    },
    /// At least one record of a batch was not acknowledged. `delivered` records of the batch were;
    /// retrying the whole batch writes those again (see [`Producer`](crate::Producer)).
    #[error(
        "Kafka delivery to topic '{topic}' (key '{key}') via {brokers} failed: {code}; \
         {failed} of {total} records of the batch failed, {delivered} were delivered"
    )]
    Delivery {
        topic: String,
        key: String,
        brokers: String,
        code: RDKafkaErrorCode,
        failed: usize,
        delivered: usize,
        total: usize,
    },
    /// The producer hit an error librdkafka cannot recover from (for example the broker lost
    /// the idempotent producer's sequence state). The [`Producer`](crate::Producer) replaces its
    /// client before the next batch.
    #[error(
        "Kafka delivery to topic '{topic}' (key '{key}') via {brokers} failed: the producer hit \
         a fatal error {code:?}: {reason}"
    )]
    FatalProducer {
        topic: String,
        key: String,
        brokers: String,
        code: RDKafkaErrorCode,
        reason: String,
    },
    /// An operation did not finish in time.
    #[error("Kafka {what} on {brokers} did not finish within {after:?}")]
    Timeout {
        what: String,
        brokers: String,
        after: Duration,
    },
    /// Receiving a message failed.
    #[error("Kafka consumer of group '{group}' on {brokers} could not receive")]
    Consume {
        group: String,
        brokers: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
}

impl KafkaError {
    /// How to react: `User` for refused configuration, `Retry` for broker and network trouble.
    pub fn class(&self) -> ErrorClass {
        match self {
            KafkaError::Config(_)
            | KafkaError::Client { .. }
            | KafkaError::TopicTooSmall { .. } => ErrorClass::User,
            KafkaError::CreateTopic { code, .. } => match code {
                RDKafkaErrorCode::InvalidPartitions
                | RDKafkaErrorCode::InvalidReplicationFactor
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::InvalidConfig
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed => ErrorClass::User,
                _ => ErrorClass::Retry,
            },
            KafkaError::Delivery { code, .. } => match code {
                RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::UnknownTopic => ErrorClass::User,
                _ => ErrorClass::Retry,
            },
            KafkaError::Request { .. }
            | KafkaError::FatalProducer { .. }
            | KafkaError::Timeout { .. }
            | KafkaError::Consume { .. } => ErrorClass::Retry,
        }
    }
}

fn join(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A record key for a message: UTF-8 as is (record Ids are), anything else as hex, at most 80
/// characters.
pub(crate) fn show_key(key: &[u8]) -> String {
    let s = match std::str::from_utf8(key) {
        Ok(s) => s.to_string(),
        Err(_) => format!("0x{}", hex::encode(key)),
    };
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_error_names_topic_key_and_code() {
        let e = KafkaError::Delivery {
            topic: "sfsync.Account".into(),
            key: show_key(b"001000000000001AAA"),
            brokers: "127.0.0.1:9092".into(),
            code: RDKafkaErrorCode::MessageTimedOut,
            failed: 3,
            delivered: 7,
            total: 10,
        };
        assert_eq!(
            e.to_string(),
            "Kafka delivery to topic 'sfsync.Account' (key '001000000000001AAA') via \
             127.0.0.1:9092 failed: MessageTimedOut (Local: Message timed out); 3 of 10 records \
             of the batch failed, 7 were delivered"
        );
        assert_eq!(e.class(), ErrorClass::Retry);
    }

    #[test]
    fn keys_are_shown_readably() {
        assert_eq!(show_key(&[0xff, 0x00]), "0xff00");
        assert_eq!(show_key("x".repeat(100).as_bytes()).chars().count(), 81);
    }
}
