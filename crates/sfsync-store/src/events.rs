//! Platform events in both directions (migration 20).
//!
//! Inbound: events received on a platform-event or custom channel are kept in
//! `platform_events_in` together with the channel's replay-id checkpoint
//! (`platform_event_checkpoints`) in ONE transaction, and — when delivery is on — handed to the
//! delivery outbox in the same transaction (object = the event's API name), so the sinks deliver
//! them exactly like curated changes. A redelivered event (same channel and replay id) is a
//! counted no-op and reaches the outbox once.
//!
//! Outbound: events to publish wait in `platform_events_out`, unique per (event name,
//! idempotency key): enqueuing the same key again returns the stored event instead of a new one,
//! so a retried request never publishes twice. A publisher claims pending events with a lease
//! (claims of a crashed publisher expire), and settles each claimed event as published (with its
//! replay id), retried later, deferred (the hourly allocation; no attempt counted) or dead (the
//! error kept). Dead events are the publish dead letters: an operator redrives or discards them.
//!
//! Event fields are stored as JSON text as received or submitted; platform events carry no
//! fields declared PII.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sfsync_core::ReplayId;

use crate::curated::DeadLetter;
use crate::error::Result;
use crate::lease::Fence;

/// `change_type` of a platform event in the delivery outbox.
pub const EVENT_CHANGE_TYPE: &str = "EVENT";
/// `source` of a platform event in the delivery outbox.
pub const EVENT_SOURCE: &str = "platform_event";

/// A received platform event as it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundEvent {
    /// Verbatim.
    pub replay_id: ReplayId,
    /// The event's API name (`Order_Shipped__e`): the object name sinks know it by.
    pub name: String,
    /// `ProducerEvent.id`.
    pub event_uuid: String,
    pub schema_id: String,
    /// `CreatedDate` (epoch ms), or the receipt time when it has none.
    pub created_ms: i64,
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// The Avro payload as received.
    pub payload: Vec<u8>,
}

/// A stored received event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredInboundEvent {
    pub id: i64,
    pub channel: String,
    /// Hex.
    pub replay_id: String,
    pub name: String,
    pub event_uuid: String,
    pub schema_id: String,
    pub created_ms: i64,
    pub fields: serde_json::Map<String, serde_json::Value>,
    pub received_at_ms: i64,
}

/// What one [`PlatformEvents::append_events`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventAppend {
    pub appended: u64,
    /// Events of the channel with this replay id already stored: skipped.
    pub duplicates: u64,
}

/// An event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOutboundEvent {
    /// `Order_Shipped__e` (published to `/event/<name>`).
    pub name: String,
    /// Unique per event name: a second enqueue with it returns the first.
    pub idempotency_key: String,
    /// Who asked (`api:<token name>`, `sink:<sink name>`).
    pub source: String,
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// State of an event to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboundState {
    /// Waiting (or claimed) for publishing.
    Pending,
    Published,
    /// Failed for good (a publish dead letter).
    Dead,
    /// Given up by an operator.
    Discarded,
}

impl OutboundState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundState::Pending => "pending",
            OutboundState::Published => "published",
            OutboundState::Dead => "dead",
            OutboundState::Discarded => "discarded",
        }
    }

    pub fn parse(s: &str) -> Option<OutboundState> {
        Some(match s {
            "pending" => OutboundState::Pending,
            "published" => OutboundState::Published,
            "dead" => OutboundState::Dead,
            "discarded" => OutboundState::Discarded,
            _ => return None,
        })
    }
}

/// A stored event to publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundEvent {
    pub id: i64,
    pub name: String,
    pub idempotency_key: String,
    /// The `ProducerEvent.id` it is published with (derived from name and key, so every attempt
    /// and every process uses the same).
    pub event_uuid: String,
    pub source: String,
    pub fields: serde_json::Map<String, serde_json::Value>,
    pub state: OutboundState,
    /// Publish attempts that failed (deferrals for the allocation are not counted).
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
    /// Hex replay id once published.
    pub replay_id: Option<String>,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub published_at_ms: Option<i64>,
    pub note: Option<String>,
}

/// The result of [`PlatformEvents::enqueue_outbound`] for one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enqueued {
    pub event: OutboundEvent,
    /// `false`: the key was known; `event` is the stored one (its fields may differ).
    pub created: bool,
}

/// What became of a claimed event.
#[derive(Debug, Clone, PartialEq)]
pub enum PublishOutcome {
    Published {
        replay_id: ReplayId,
    },
    /// Failed; try again at `next_attempt_at_ms` (one more attempt counted).
    Retry {
        error: String,
        next_attempt_at_ms: i64,
    },
    /// Not published for the allocation: back to pending, no attempt counted.
    Deferred {
        next_attempt_at_ms: i64,
    },
    /// Failed for good.
    Dead {
        error: String,
    },
}

/// Which events to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundFilter {
    pub name: Option<String>,
    /// Any state when empty.
    pub states: Vec<OutboundState>,
    /// Ids above this (paging, oldest first).
    pub after: Option<i64>,
    pub limit: usize,
}

/// Counts of events to publish by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OutboundCounts {
    pub pending: u64,
    pub published: u64,
    pub dead: u64,
    pub discarded: u64,
}

/// The `ProducerEvent.id` of an outbound event: a UUID (version 8 layout) from SHA-256 of the
/// event name and idempotency key, the same in every process and on every attempt.
pub fn outbound_event_uuid(name: &str, idempotency_key: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(name.as_bytes());
    h.update([0u8]);
    h.update(idempotency_key.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Platform events in and out. Implemented by both backends; every method is one transaction.
#[async_trait]
pub trait PlatformEvents: Send + Sync {
    /// The last committed checkpoint of event channel `channel`.
    async fn event_checkpoint(&self, channel: &str) -> Result<Option<ReplayId>>;

    /// Stores `events` received on `channel` (skipping those already stored), `dead` (events
    /// that could not be decoded) and the checkpoint, in one transaction; with `deliver`, each
    /// newly stored event also enters the delivery outbox. With `fence`, the transaction first
    /// checks that the lease still holds.
    async fn append_events(
        &self,
        channel: &str,
        events: &[InboundEvent],
        dead: &[DeadLetter],
        checkpoint: &ReplayId,
        deliver: bool,
        fence: Option<&Fence>,
    ) -> Result<EventAppend>;

    /// Received events with `id > after`, oldest first (of one channel when given).
    async fn inbound_events(
        &self,
        channel: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredInboundEvent>>;

    /// Enqueues events to publish (pending at once), idempotent per (name, key); results in
    /// input order.
    async fn enqueue_outbound(&self, events: &[NewOutboundEvent]) -> Result<Vec<Enqueued>>;

    /// Claims up to `limit` pending events due now (oldest first) for `lease_ms`; events
    /// claimed by another claimer whose lease has not run out are skipped.
    async fn claim_outbound(
        &self,
        claimer: &str,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<OutboundEvent>>;

    /// Settles events claimed by `claimer` (others are left alone).
    async fn settle_outbound(
        &self,
        claimer: &str,
        outcomes: &[(i64, PublishOutcome)],
    ) -> Result<()>;

    async fn outbound_events(&self, filter: &OutboundFilter) -> Result<Vec<OutboundEvent>>;

    async fn outbound_event(&self, id: i64) -> Result<Option<OutboundEvent>>;

    async fn outbound_counts(&self) -> Result<OutboundCounts>;

    /// Dead events back to pending (attempts reset); returns the ids that were dead.
    async fn redrive_outbound(&self, ids: &[i64], note: &str) -> Result<Vec<i64>>;

    /// Dead or pending (unclaimed) events given up; returns the ids that changed.
    async fn discard_outbound(&self, ids: &[i64], note: &str) -> Result<Vec<i64>>;
}

/// An outbox `record` of a received event: its fields.
pub(crate) fn event_record_json(e: &InboundEvent) -> String {
    serde_json::Value::Object(e.fields.clone()).to_string()
}

/// The outbox `fields` list of a received event: its non-null field names.
pub(crate) fn event_fields_json(e: &InboundEvent) -> String {
    let names: Vec<&String> = e
        .fields
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, _)| k)
        .collect();
    serde_json::to_string(&names).expect("strings serialise")
}

/// The outbox event key of a received event: channel and hex replay id (stable across
/// redeliveries, distinct across channels).
pub(crate) fn event_key(channel: &str, replay_id: &ReplayId) -> String {
    format!("{channel}/{}", replay_id.to_hex())
}

pub(crate) fn fields_text(m: &serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::Value::Object(m.clone()).to_string()
}

pub(crate) fn fields_of(
    backend: &'static str,
    table: &'static str,
    id: i64,
    text: &str,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(crate::StoreError::Corrupt {
            backend,
            table,
            offset: id,
            reason: "fields is not a JSON object".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_uuid_is_stable_and_keyed() {
        let a = outbound_event_uuid("A__e", "k1");
        assert_eq!(a, outbound_event_uuid("A__e", "k1"));
        assert_ne!(a, outbound_event_uuid("A__e", "k2"));
        assert_ne!(a, outbound_event_uuid("B__e", "k1"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
    }

    #[test]
    fn states_round_trip() {
        for s in [
            OutboundState::Pending,
            OutboundState::Published,
            OutboundState::Dead,
            OutboundState::Discarded,
        ] {
            assert_eq!(OutboundState::parse(s.as_str()), Some(s));
        }
        assert_eq!(OutboundState::parse("x"), None);
    }
}
