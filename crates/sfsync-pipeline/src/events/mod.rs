//! Platform events in both directions.
//!
//! - **In** ([`ingest`]): one subscription per configured platform-event or custom channel,
//!   through the same Pub/Sub subscriber as CDC. Each fetched batch is stored with the channel's
//!   replay id in ONE transaction (and, when sinks run, put in the delivery outbox in that same
//!   transaction), and only then acknowledged; the sinks deliver the events like curated changes
//!   (object = the event's API name, idempotency key = channel + replay id). A crash redelivers
//!   from the stored replay id and the store drops what it already has: no loss, no duplicate.
//! - **Out** ([`publish`]): events to publish wait durably in the store, each under an
//!   idempotency key that also makes its `ProducerEvent.id`, so a retried request is stored once
//!   and published once. The publisher takes them only within the hourly publish allocation the
//!   budget governor grants (waiting, never failing, when it is tight), publishes with Pub/Sub
//!   `Publish`, and records every event's result: published with its replay id, deferred when
//!   Salesforce answered `LIMIT_EXCEEDED`, retried with backoff, or dead with Salesforce's error
//!   after the configured attempts. The one window for a second publication is a crash between
//!   Salesforce's answer and the store's record of it; the event is then sent again with the
//!   same id.
//! - **Record applied** ([`sink`]): a delivery sink whose "consumer" is the publish queue, so a
//!   curated change becomes a platform event with the change's event key as idempotency key.

pub mod ingest;
pub mod publish;
pub mod sink;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

/// Counters of the platform-event stages (metrics, status, tests).
#[derive(Debug, Default)]
pub struct EventStats {
    /// Events received and stored.
    pub received: AtomicU64,
    /// Redelivered events already stored.
    pub duplicates: AtomicU64,
    /// Received events that could not be decoded (dead letters).
    pub undecodable: AtomicU64,
    /// Events enqueued for publishing (new ones; an idempotent repeat is not counted).
    pub enqueued: AtomicU64,
    pub published: AtomicU64,
    /// Events put back for the hourly allocation (Salesforce's `LIMIT_EXCEEDED`, or granted
    /// fewer than claimed).
    pub deferred: AtomicU64,
    /// Failed publishes to be tried again.
    pub retried: AtomicU64,
    /// Events that failed for good (publish dead letters).
    pub dead: AtomicU64,
    /// `Publish` calls made.
    pub publish_calls: AtomicU64,
    /// Per subscribed channel: events received and stored, and redeliveries.
    per_channel: parking_lot::Mutex<BTreeMap<String, ChannelEvents>>,
    /// Per event name: events published.
    per_event: parking_lot::Mutex<BTreeMap<String, u64>>,
}

/// One subscribed channel's counts since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelEvents {
    pub received: u64,
    pub duplicates: u64,
}

impl EventStats {
    /// Counts events of `channel` stored (`received`) and redelivered (`duplicates`); with
    /// zeros it makes the channel known (reported from its subscription on).
    pub fn count_received(&self, channel: &str, received: u64, duplicates: u64) {
        let mut m = self.per_channel.lock();
        let e = m.entry(channel.to_string()).or_default();
        e.received += received;
        e.duplicates += duplicates;
    }

    /// Counts `n` events of `name` published.
    pub fn count_published(&self, name: &str, n: u64) {
        *self.per_event.lock().entry(name.to_string()).or_default() += n;
    }

    /// Per channel counts, by channel.
    pub fn channels(&self) -> Vec<(String, ChannelEvents)> {
        self.per_channel
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Events published per event name, by name.
    pub fn published_by_event(&self) -> Vec<(String, u64)> {
        self.per_event
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}
