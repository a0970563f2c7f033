//! Kafka client for sfsync, on librdkafka (the `rdkafka` crate, librdkafka built from its bundled
//! source with plain `make`: no cmake, no system Kafka, zlib or OpenSSL packages needed).
//!
//! Guarantees: the [`Producer`] is idempotent — a [`Producer::send_batch`] that returns `Ok` has
//! every record acknowledged by all in-sync replicas, in order per key, without duplicates from
//! librdkafka's own retries; it returns within its delivery timeout, and the duplicates a caller's
//! resend can cause are listed in [`producer`]'s documentation. The [`Consumer`] commits only what
//! its caller commits, so consumption is at-least-once. [`Admin::ensure_topics`] is idempotent.
//!
//! Features: `tls` (default) links a vendored OpenSSL for `security_protocol = "ssl"` /
//! `"sasl_ssl"` (Amazon MSK); `test-support` adds `test_support::Broker`, a tansu broker on
//! loopback for integration tests.

pub mod admin;
pub mod config;
pub mod consumer;
pub mod error;
pub mod producer;
#[cfg(feature = "test-support")]
pub mod test_support;

pub use admin::{Admin, TopicSpec};
pub use config::{
    Compression, ConfigProblem, KafkaConfig, ProducerOptions, SaslMechanism, SecurityProtocol,
    TLS_BUILT_IN,
};
pub use consumer::{Consumer, Message};
pub use error::{KafkaError, Result};
pub use producer::{DeliveryReport, Producer, Record};
/// librdkafka's error codes, as found in [`KafkaError`]'s variants.
pub use rdkafka::error::RDKafkaErrorCode;

/// The bundled librdkafka's version string, e.g. "2.12.1".
pub fn librdkafka_version() -> String {
    rdkafka::util::get_rdkafka_version().1
}
