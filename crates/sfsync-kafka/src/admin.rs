//! Topic administration. [`Admin::ensure_topics`] is idempotent: it creates the topics that are
//! missing and accepts the ones that exist (with at least the wanted partitions), so it can run
//! at every start of a sink.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::{ConfigProblem, KafkaConfig};
use crate::error::{KafkaError, Result};

/// A topic as it should exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    /// At least 1. Keys are spread over partitions by hash, so per-key order holds within one.
    pub partitions: u32,
    /// At least 1 (3 on a production cluster; 1 on the single test broker).
    pub replication_factor: u16,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: u32, replication_factor: u16) -> Self {
        TopicSpec {
            name: name.into(),
            partitions,
            replication_factor,
        }
    }
}

/// A Kafka admin client (topics and cluster metadata).
pub struct Admin {
    client: Arc<AdminClient<DefaultClientContext>>,
    brokers: String,
    timeout: Duration,
}

impl Admin {
    /// Validates `config` and creates the client. Nothing connects until the first request.
    /// Requests wait at most 30 s (see [`Admin::with_timeout`]).
    pub fn new(config: &KafkaConfig) -> Result<Admin> {
        config.validate().map_err(KafkaError::Config)?;
        let client = config
            .client_config()
            .create()
            .map_err(|source| KafkaError::Client {
                role: "admin client",
                brokers: config.brokers(),
                source: Box::new(source),
            })?;
        Ok(Admin {
            client: Arc::new(client),
            brokers: config.brokers(),
            timeout: Duration::from_secs(30),
        })
    }

    /// How long each request may take before it fails with [`KafkaError::Timeout`] or a
    /// librdkafka timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Admin {
        self.timeout = timeout;
        self
    }

    /// Creates every topic of `topics` that does not exist yet and returns the names of those it
    /// created. A topic that exists is accepted when it has at least the wanted partitions
    /// (its replication factor is not checked); one with fewer is a
    /// [`KafkaError::TopicTooSmall`], since keys would not spread as configured.
    pub async fn ensure_topics(&self, topics: &[TopicSpec]) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        for (i, t) in topics.iter().enumerate() {
            if t.name.is_empty()
                || t.name.len() > 249
                || !t
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                problems.push(ConfigProblem {
                    key: format!("topics[{i}].name"),
                    message: format!(
                        "'{}' is not a Kafka topic name (1 to 249 of ASCII letters, digits, \
                         '.', '_', '-')",
                        t.name
                    ),
                });
            }
            if t.partitions == 0 || t.partitions > i32::MAX as u32 {
                problems.push(ConfigProblem {
                    key: format!("topics[{i}].partitions"),
                    message: format!("{} is out of range (at least 1)", t.partitions),
                });
            }
            if t.replication_factor == 0 {
                problems.push(ConfigProblem {
                    key: format!("topics[{i}].replication_factor"),
                    message: "0 is out of range (at least 1)".to_string(),
                });
            }
        }
        if !problems.is_empty() {
            return Err(KafkaError::Config(problems));
        }
        if topics.is_empty() {
            return Ok(Vec::new());
        }

        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| {
                NewTopic::new(
                    &t.name,
                    t.partitions as i32,
                    TopicReplication::Fixed(i32::from(t.replication_factor)),
                )
            })
            .collect();
        let opts = AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout));
        let results = tokio::time::timeout(
            self.timeout + Duration::from_secs(5),
            self.client.create_topics(&new, &opts),
        )
        .await
        .map_err(|_| self.timeout_error("create topics"))?
        .map_err(|source| KafkaError::Request {
            what: "create topics".to_string(),
            brokers: self.brokers.clone(),
            source: Box::new(source),
        })?;

        let mut created = Vec::new();
        let mut existing = Vec::new();
        for result in results {
            match result {
                Ok(name) => created.push(name),
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => existing.push(name),
                Err((topic, code)) => {
                    return Err(KafkaError::CreateTopic {
                        topic,
                        brokers: self.brokers.clone(),
                        code,
                    })
                }
            }
        }
        for name in existing {
            let wanted = topics
                .iter()
                .find(|t| t.name == name)
                .map_or(0, |t| t.partitions as usize);
            let found = self.partitions(&name).await?;
            if found < wanted {
                return Err(KafkaError::TopicTooSmall {
                    topic: name,
                    brokers: self.brokers.clone(),
                    found,
                    wanted,
                });
            }
        }
        Ok(created)
    }

    /// The number of partitions of `topic`; an error when the cluster does not know it.
    pub async fn partitions(&self, topic: &str) -> Result<usize> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let name = topic.to_string();
        let metadata = self
            .blocking(format!("metadata of topic '{topic}'"), move || {
                client.inner().fetch_metadata(Some(&name), timeout)
            })
            .await?;
        let t = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| self.unknown_topic(topic, RDKafkaErrorCode::UnknownTopicOrPartition))?;
        if let Some(e) = t.error() {
            return Err(self.unknown_topic(topic, e.into()));
        }
        Ok(t.partitions().len())
    }

    /// Health check: asks the cluster for its brokers; returns their `host:port` list.
    pub async fn brokers(&self) -> Result<Vec<String>> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let metadata = self
            .blocking("cluster metadata".to_string(), move || {
                client.inner().fetch_metadata(None, timeout)
            })
            .await?;
        Ok(metadata
            .brokers()
            .iter()
            .map(|b| format!("{}:{}", b.host(), b.port()))
            .collect())
    }

    fn unknown_topic(&self, topic: &str, code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::Request {
            what: format!("metadata of topic '{topic}'"),
            brokers: self.brokers.clone(),
            source: Box::new(rdkafka::error::KafkaError::MetadataFetch(code)),
        }
    }

    fn timeout_error(&self, what: &str) -> KafkaError {
        KafkaError::Timeout {
            what: what.to_string(),
            brokers: self.brokers.clone(),
            after: self.timeout,
        }
    }

    /// Runs a blocking librdkafka call off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        what: String,
        f: impl FnOnce() -> rdkafka::error::KafkaResult<T> + Send + 'static,
    ) -> Result<T> {
        tokio::task::spawn_blocking(f)
            .await
            .expect("librdkafka call panicked")
            .map_err(|source| KafkaError::Request {
                what,
                brokers: self.brokers.clone(),
                source: Box::new(source),
            })
    }
}
