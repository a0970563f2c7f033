//! "Record applied" notifications: a delivery sink whose consumer is the platform-event publish
//! queue. Each curated change of the sink's objects becomes one event to publish, its fields
//! mapped from the change ([`FieldSource`]), its idempotency key the change's event key — so a
//! change the lane sends again (after a crash between the enqueue and the position update) is
//! enqueued, and published, once. A batch is acknowledged once the store has it durably.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use async_trait::async_trait;
use sfsync_store::{NewOutboundEvent, Warehouse};
use tokio::sync::Notify;

use super::EventStats;
use crate::sinks::{OutMessage, SendError, Transport};

/// Where an event field's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldSource {
    /// The record id.
    RecordId,
    /// The object's API name.
    Object,
    /// `CREATE`, `UPDATE`, `DELETE`, `UNDELETE`, `SNAPSHOT`.
    ChangeType,
    /// The change's commit time (RFC 3339).
    CommitTimestamp,
    /// When sfsync applied it (RFC 3339).
    AppliedAt,
    /// The change's event key (its idempotency key).
    EventKey,
    /// The changed field names, comma-separated.
    ChangedFields,
    /// A field of the record after the change (PII as the sink's `pii` setting gives it).
    Field(String),
}

impl FieldSource {
    /// `id`, `object`, `change_type`, `commit_timestamp`, `applied_at`, `event_key`,
    /// `changed_fields` or `record.<Field>`.
    pub fn parse(s: &str) -> Option<FieldSource> {
        Some(match s {
            "id" => FieldSource::RecordId,
            "object" => FieldSource::Object,
            "change_type" => FieldSource::ChangeType,
            "commit_timestamp" => FieldSource::CommitTimestamp,
            "applied_at" => FieldSource::AppliedAt,
            "event_key" => FieldSource::EventKey,
            "changed_fields" => FieldSource::ChangedFields,
            other => {
                let f = other.strip_prefix("record.")?;
                if f.is_empty() {
                    return None;
                }
                FieldSource::Field(f.to_string())
            }
        })
    }

    fn value(&self, m: &OutMessage) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            FieldSource::RecordId => J::String(m.id.clone()),
            FieldSource::Object => J::String(m.object.clone()),
            FieldSource::ChangeType => J::String(m.change_type.clone()),
            FieldSource::CommitTimestamp => J::String(m.commit_timestamp.clone()),
            FieldSource::AppliedAt => J::String(m.applied_at.clone()),
            FieldSource::EventKey => J::String(m.idempotency_key.clone()),
            FieldSource::ChangedFields => J::String(m.changed_fields.join(",")),
            FieldSource::Field(f) => m
                .record
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(f))
                .map_or(J::Null, |(_, v)| v.clone()),
        }
    }
}

/// The sink's transport.
pub struct RecordAppliedSink {
    pub sink: String,
    /// The platform event published (`Record_Applied__e`).
    pub event: String,
    /// Event field → where its value comes from.
    pub fields: Vec<(String, FieldSource)>,
    pub store: Arc<dyn Warehouse>,
    pub stats: Arc<EventStats>,
    /// Wakes the publisher after an enqueue.
    pub publisher: Option<Arc<Notify>>,
}

impl RecordAppliedSink {
    /// The event to publish for `m`.
    pub fn event_for(&self, m: &OutMessage) -> NewOutboundEvent {
        NewOutboundEvent {
            name: self.event.clone(),
            idempotency_key: m.idempotency_key.clone(),
            source: format!("sink:{}", self.sink),
            fields: self
                .fields
                .iter()
                .map(|(k, s)| (k.clone(), s.value(m)))
                .collect(),
        }
    }
}

#[async_trait]
impl Transport for RecordAppliedSink {
    fn kind(&self) -> &'static str {
        "platform_event"
    }

    fn target(&self) -> String {
        format!("/event/{}", self.event)
    }

    async fn send(&self, _object: &str, batch: &[OutMessage]) -> Result<(), SendError> {
        let events: Vec<NewOutboundEvent> = batch.iter().map(|m| self.event_for(m)).collect();
        let done = self
            .store
            .enqueue_outbound(&events)
            .await
            .map_err(|e| SendError::Retry {
                reason: format!(
                    "enqueuing {} events: {}",
                    self.event,
                    crate::error::chain(&e)
                ),
                after: None,
            })?;
        let created = done.iter().filter(|e| e.created).count() as u64;
        self.stats.enqueued.fetch_add(created, Relaxed);
        if let Some(w) = &self.publisher {
            w.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_map() {
        assert_eq!(FieldSource::parse("id"), Some(FieldSource::RecordId));
        assert_eq!(
            FieldSource::parse("record.Name"),
            Some(FieldSource::Field("Name".into()))
        );
        assert_eq!(FieldSource::parse("record."), None);
        assert_eq!(FieldSource::parse("nope"), None);
        let mut record = serde_json::Map::new();
        record.insert("Name".into(), serde_json::json!("Acme"));
        let m = OutMessage {
            idempotency_key: "tx/1/001".into(),
            seq: 1,
            object: "Account".into(),
            id: "001".into(),
            change_type: "UPDATE".into(),
            commit_timestamp: "2024-01-01T00:00:00.000Z".into(),
            applied_at: "2024-01-01T00:00:01.000Z".into(),
            source: "cdc".into(),
            origin_system: None,
            changed_fields: vec!["Name".into(), "Phone".into()],
            deleted: false,
            record,
        };
        assert_eq!(FieldSource::Field("name".into()).value(&m), "Acme");
        assert_eq!(FieldSource::ChangedFields.value(&m), "Name,Phone");
        assert_eq!(
            FieldSource::Field("Missing".into()).value(&m),
            serde_json::Value::Null
        );
        assert_eq!(FieldSource::EventKey.value(&m), "tx/1/001");
    }
}
