//! One platform-event channel's ingest task: subscribe (from the stored replay id), store each
//! batch with its checkpoint in one transaction, acknowledge, repeat. An undecodable event
//! becomes a dead letter in that same transaction (the checkpoint never passes an event that
//! was not stored). A rejected replay id (older than the retention window) cannot be repaired
//! — platform events cannot be read again from Salesforce — so it is recorded as a dead letter
//! naming the lost window and the stream resumes from the oldest retained event, never
//! silently at the tip.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use sfsync_core::ErrorClass;
use sfsync_salesforce::pubsub::{Batch, PubSubError, ReplayStart, Subscriber};
use sfsync_store::{DeadLetter, Fence, InboundEvent, Warehouse};
use tokio::sync::watch;

use super::EventStats;
use crate::error::chain;
use crate::stats::PipelineStats;

/// Up to this many events of batches already received are stored in one transaction.
const MERGE_MAX_EVENTS: usize = 1_000;

/// One event channel's ingest task.
pub struct EventIngest {
    /// `/event/<Name>__e` or `/event/<Name>__chn`.
    pub channel: String,
    pub store: Arc<dyn Warehouse>,
    pub subscriber: Subscriber,
    pub stats: Arc<PipelineStats>,
    pub events: Arc<EventStats>,
    /// Where to start when the channel has no checkpoint yet.
    pub initial: ReplayStart,
    /// Put received events in the delivery outbox (sinks run).
    pub deliver: bool,
    /// The channel's lease: the stream runs only while it is held; every write is fenced.
    pub lease: Option<watch::Receiver<Option<Fence>>>,
}

/// The stored form of a decoded batch: events and dead letters.
pub fn stored_events(channel: &str, batch: &Batch) -> (Vec<InboundEvent>, Vec<DeadLetter>) {
    let now = chrono::Utc::now().timestamp_millis();
    let events = batch
        .events
        .iter()
        .map(|e| InboundEvent {
            replay_id: e.replay_id.clone(),
            name: e.name.clone(),
            event_uuid: e.event_id.clone(),
            schema_id: e.schema_id.clone(),
            created_ms: e
                .fields
                .get("CreatedDate")
                .and_then(|v| v.as_str())
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map_or(now, |t| t.timestamp_millis()),
            fields: e.fields.clone(),
            payload: e.payload.to_vec(),
        })
        .collect();
    let dead = batch
        .undecoded
        .iter()
        .map(|u| DeadLetter {
            channel: channel.to_string(),
            replay_id: Some(u.replay_id.clone()),
            schema_id: u.schema_id.clone(),
            stage: "decode".into(),
            error: chain(&u.error),
            payload: u.payload.to_vec(),
            object: None,
        })
        .collect();
    (events, dead)
}

impl EventIngest {
    /// Runs until `shutdown` turns true (the batch in hand is stored first).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut failures = 0u32;
        let mut force_earliest = false;
        self.events.count_received(&self.channel, 0, 0);
        'outer: loop {
            if *shutdown.borrow() {
                break;
            }
            let mut lease = self.lease.clone();
            let fence = match lease.as_mut() {
                None => None,
                Some(rx) => {
                    let got = tokio::select! {
                        f = rx.wait_for(|f| f.is_some()) => f.map(|f| f.clone()).ok().flatten(),
                        _ = shutdown.changed() => break,
                    };
                    match got {
                        Some(f) => Some(f),
                        None => break,
                    }
                }
            };
            let start = if std::mem::take(&mut force_earliest) {
                ReplayStart::Earliest
            } else {
                match self.store.event_checkpoint(&self.channel).await {
                    Ok(Some(id)) => ReplayStart::After(id),
                    Ok(None) => self.initial.clone(),
                    Err(e) => {
                        self.fail(&mut failures, "reading the checkpoint", &chain(&e))
                            .await;
                        continue;
                    }
                }
            };
            let mut sub = match self
                .subscriber
                .subscribe_events(&self.channel, start.clone())
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    self.fail(&mut failures, "subscribing", &chain(&e)).await;
                    if e.class() == ErrorClass::User {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    continue;
                }
            };
            tracing::info!(channel = %self.channel, start = ?start, "Subscribed to platform events.");
            self.stats.stream_up(&self.channel, crate::apply::now_ms());
            loop {
                let lost = async {
                    match lease.as_mut() {
                        Some(rx) => {
                            let _ = rx.wait_for(|f| f.as_ref() != fence.as_ref()).await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                let next = tokio::select! {
                    n = sub.next_batch() => n,
                    _ = shutdown.changed() => break 'outer,
                    _ = lost => {
                        tracing::warn!(channel = %self.channel, "Ingest lease lost: unsubscribing until it is held again.");
                        continue 'outer;
                    }
                };
                let mut batch = match next {
                    None => continue 'outer,
                    Some(Ok(b)) => b,
                    Some(Err(PubSubError::ReplayIdInvalid {
                        replay_id,
                        code,
                        message,
                    })) => {
                        self.stats.errors.fetch_add(1, Relaxed);
                        let hex = replay_id
                            .as_ref()
                            .map(|r| r.to_hex())
                            .unwrap_or_else(|| "(none)".into());
                        tracing::error!(channel = %self.channel, replay_id = %hex, code, message, "Stored replay id rejected (outside the retention window): platform events after it and before the oldest retained one cannot be read again. Recording a dead letter and resuming from the oldest retained event.");
                        let dead = DeadLetter {
                            channel: self.channel.clone(),
                            replay_id: replay_id.clone(),
                            schema_id: String::new(),
                            stage: "gap".into(),
                            error: format!("replay id {hex} rejected ({code}: {message}): platform events published after it and no longer retained were not received"),
                            payload: Vec::new(),
                            object: None,
                        };
                        if let Some(stored) = replay_id {
                            if let Err(e) = self
                                .store
                                .append_events(
                                    &self.channel,
                                    &[],
                                    &[dead],
                                    &stored,
                                    self.deliver,
                                    fence.as_ref(),
                                )
                                .await
                            {
                                self.fail(&mut failures, "recording the lost window", &chain(&e))
                                    .await;
                                continue 'outer;
                            }
                        }
                        force_earliest = true;
                        continue 'outer;
                    }
                    Some(Err(e)) => {
                        self.fail(&mut failures, "streaming", &chain(&e)).await;
                        if e.class() == ErrorClass::User {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                        continue 'outer;
                    }
                };
                failures = 0;
                while batch.len() < MERGE_MAX_EVENTS {
                    match sub.try_next_batch() {
                        Some(more) => batch.merge(more),
                        None => break,
                    }
                }
                let Some(checkpoint) = batch.checkpoint.clone() else {
                    continue;
                };
                if batch.is_empty() && sub.acked().as_ref() == Some(&checkpoint) {
                    continue;
                }
                if lease
                    .as_ref()
                    .is_some_and(|rx| rx.borrow().as_ref() != fence.as_ref())
                {
                    tracing::warn!(channel = %self.channel, "Ingest lease lost: the fetched batch is left to the new holder.");
                    continue 'outer;
                }
                let (events, dead) = stored_events(&self.channel, &batch);
                match self
                    .store
                    .append_events(
                        &self.channel,
                        &events,
                        &dead,
                        &checkpoint,
                        self.deliver,
                        fence.as_ref(),
                    )
                    .await
                {
                    Ok(out) => {
                        sub.ack(&checkpoint);
                        self.events.received.fetch_add(out.appended, Relaxed);
                        self.events.duplicates.fetch_add(out.duplicates, Relaxed);
                        self.events
                            .count_received(&self.channel, out.appended, out.duplicates);
                        self.events
                            .undecodable
                            .fetch_add(dead.len() as u64, Relaxed);
                        self.stats
                            .dead_letters
                            .fetch_add(dead.len() as u64, Relaxed);
                        self.stats.add_channel_ingested(&self.channel, out.appended);
                        if out.appended > 0 {
                            tracing::debug!(channel = %self.channel, events = out.appended, "Platform events stored.");
                        }
                    }
                    Err(e) => {
                        // Not acknowledged: the stream restarts from the stored checkpoint.
                        self.fail(&mut failures, "storing platform events", &chain(&e))
                            .await;
                        continue 'outer;
                    }
                }
            }
        }
        self.stats
            .stream_down(&self.channel, crate::apply::now_ms());
    }

    async fn fail(&self, failures: &mut u32, what: &str, error: &str) {
        *failures += 1;
        self.stats.errors.fetch_add(1, Relaxed);
        self.stats
            .stream_down(&self.channel, crate::apply::now_ms());
        let delay = Duration::from_millis((200u64 << (*failures).min(7)).min(30_000));
        tracing::warn!(channel = %self.channel, attempt = *failures, error, "Platform-event ingest failed while {what}; retrying in {delay:?}.");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfsync_core::ReplayId;
    use sfsync_salesforce::pubsub::PlatformEvent;

    #[test]
    fn stored_events_take_created_date_and_keep_fields() {
        let mut fields = serde_json::Map::new();
        fields.insert(
            "CreatedDate".into(),
            serde_json::json!("2024-05-01T10:00:00.000Z"),
        );
        fields.insert("Order__c".into(), serde_json::json!("O-1"));
        let batch = Batch {
            changes: vec![],
            events: vec![PlatformEvent {
                replay_id: ReplayId::from_bytes(vec![0, 0, 0, 0, 0, 0, 0, 7]),
                event_id: "u1".into(),
                schema_id: "s".into(),
                name: "Order_Shipped__e".into(),
                fields,
                payload: bytes::Bytes::from_static(&[1, 2]),
            }],
            payloads: vec![],
            undecoded: vec![],
            latest_replay_id: None,
            checkpoint: None,
            epoch: 0,
            rpc_id: String::new(),
            started_from: ReplayStart::Latest,
        };
        let (events, dead) = stored_events("/event/Order_Shipped__e", &batch);
        assert!(dead.is_empty());
        assert_eq!(events[0].created_ms, 1_714_557_600_000);
        assert_eq!(events[0].event_uuid, "u1");
        assert_eq!(events[0].fields["Order__c"], "O-1");
        assert_eq!(events[0].payload, vec![1, 2]);
    }
}
