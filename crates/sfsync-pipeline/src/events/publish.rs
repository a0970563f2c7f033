//! The platform-event publisher: claims pending events from the store, takes an allowance from
//! the hourly publish budget (waiting while it is tight), encodes them with the topic's current
//! schema and sends them with Pub/Sub `Publish`, then records each event's result in one
//! transaction. See the [module docs](super) for the guarantees.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use sfsync_core::ReplayId;
use sfsync_salesforce::pubsub::{
    EventSchema, ProducerEvent, PubSubError, PublishResult, Subscriber,
};
use sfsync_salesforce::SalesforceClient;
use sfsync_store::{OutboundEvent, PublishOutcome, Warehouse};
use tokio::sync::{watch, Notify};

use super::EventStats;
use crate::error::chain;

/// How the publisher works.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// This process in claims (`run-…-pid…`).
    pub claimer: String,
    /// Events per `Publish` call (Salesforce recommends ≤ 200).
    pub batch_max: usize,
    /// Failed attempts after which an event is dead (its last error kept).
    pub max_attempts: u32,
    /// First retry pause (doubling per attempt, up to `retry_max`).
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long claimed events stay with this publisher.
    pub lease: Duration,
    /// How often the store is looked at when nothing woke the publisher.
    pub poll: Duration,
    /// `CreatedById` of published events when the token names no user.
    pub default_user_id: String,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            claimer: format!("publisher-pid{}", std::process::id()),
            batch_max: 200,
            max_attempts: 8,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            lease: Duration::from_secs(120),
            poll: Duration::from_millis(500),
            default_user_id: "005000000000000AAA".into(),
        }
    }
}

/// The publisher task. Wake it with [`Publisher::waker`] after enqueuing.
pub struct Publisher {
    store: Arc<dyn Warehouse>,
    client: SalesforceClient,
    subscriber: Subscriber,
    config: PublisherConfig,
    stats: Arc<EventStats>,
    wake: Arc<Notify>,
    /// Current schema per event name (dropped when a publish names a schema problem).
    schemas: HashMap<String, Arc<EventSchema>>,
}

/// Whether a `PublishResult` error is the hourly allocation.
fn is_limit(msg: &str) -> bool {
    msg.contains("LIMIT_EXCEEDED")
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Publisher {
    pub fn new(
        store: Arc<dyn Warehouse>,
        client: SalesforceClient,
        subscriber: Subscriber,
        config: PublisherConfig,
        stats: Arc<EventStats>,
    ) -> Publisher {
        Publisher {
            store,
            client,
            subscriber,
            config,
            stats,
            wake: Arc::new(Notify::new()),
            schemas: HashMap::new(),
        }
    }

    /// Notify it to look at the store at once (after an enqueue).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    fn retry_at(&self, attempts: i64) -> i64 {
        let exp = self
            .config
            .retry_base
            .saturating_mul(1u32 << attempts.clamp(0, 16) as u32)
            .min(self.config.retry_max);
        now_ms() + i64::try_from(exp.as_millis()).unwrap_or(i64::MAX / 2)
    }

    /// A failed attempt: retried, or dead once `max_attempts` are used.
    fn failed(&self, e: &OutboundEvent, error: String) -> PublishOutcome {
        if e.attempts + 1 >= i64::from(self.config.max_attempts) {
            PublishOutcome::Dead {
                error: format!("{error} (after {} attempts)", e.attempts + 1),
            }
        } else {
            PublishOutcome::Retry {
                error,
                next_attempt_at_ms: self.retry_at(e.attempts),
            }
        }
    }

    /// Runs until `stop` turns true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                return;
            }
            let wake = self.wake.clone();
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let pause = match self.step(&mut stop).await {
                Ok(true) => {
                    failures = 0;
                    continue;
                }
                Ok(false) => {
                    failures = 0;
                    self.config.poll
                }
                Err(e) => {
                    failures += 1;
                    let d = Duration::from_millis((200u64 << failures.min(7)).min(30_000));
                    tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "Platform-event publisher step failed.");
                    d
                }
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// One round: `Ok(true)` when it published or settled something.
    async fn step(&mut self, stop: &mut watch::Receiver<bool>) -> Result<bool, String> {
        let lease_ms = i64::try_from(self.config.lease.as_millis()).unwrap_or(60_000);
        let claimed = self
            .store
            .claim_outbound(&self.config.claimer, self.config.batch_max, lease_ms)
            .await
            .map_err(|e| format!("claiming events to publish: {}", chain(&e)))?;
        if claimed.is_empty() {
            return Ok(false);
        }
        // The allowance: wait while the budget is tight, but not past half the claims' lease
        // (then hand them back and claim again).
        let want = claimed.len() as u64;
        let granted = tokio::select! {
            g = tokio::time::timeout(self.config.lease / 2, self.client.publish_allowance(want)) => g.ok(),
            _ = stop.changed() => None,
        };
        let granted = granted.unwrap_or(0).min(want) as usize;
        let mut outcomes: Vec<(i64, PublishOutcome)> = Vec::with_capacity(claimed.len());
        let (go, wait) = claimed.split_at(granted);
        for e in wait {
            outcomes.push((
                e.id,
                PublishOutcome::Deferred {
                    next_attempt_at_ms: now_ms(),
                },
            ));
        }
        if !wait.is_empty() {
            self.stats.deferred.fetch_add(wait.len() as u64, Relaxed);
            tracing::info!(
                deferred = wait.len(),
                granted,
                "Publishing deferred: the hourly platform-event allocation is tight."
            );
        }
        let mut published = 0u64;
        // Consecutive runs of one event name go in one Publish call, in claim order.
        let mut i = 0;
        while i < go.len() {
            let name = &go[i].name;
            let j = go[i..]
                .iter()
                .position(|e| &e.name != name)
                .map_or(go.len(), |p| i + p);
            let (out, n) = self.publish_group(&go[i..j]).await;
            published += n;
            outcomes.extend(out);
            i = j;
        }
        self.client
            .governor()
            .publish_budget()
            .settle(granted as u64, published);
        self.store
            .settle_outbound(&self.config.claimer, &outcomes)
            .await
            .map_err(|e| format!("recording publish results: {}", chain(&e)))?;
        Ok(true)
    }

    async fn schema(&mut self, name: &str, topic: &str) -> Result<Arc<EventSchema>, PubSubError> {
        if let Some(s) = self.schemas.get(name) {
            return Ok(s.clone());
        }
        let (_, s) = self.subscriber.publish_schema(topic).await?;
        self.schemas.insert(name.to_string(), s.clone());
        Ok(s)
    }

    /// Publishes events of one name; returns their outcomes and how many were published.
    async fn publish_group(
        &mut self,
        group: &[OutboundEvent],
    ) -> (Vec<(i64, PublishOutcome)>, u64) {
        let name = group[0].name.clone();
        let topic = format!("/event/{name}");
        let mut out = Vec::with_capacity(group.len());
        let schema = match self.schema(&name, &topic).await {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("{topic}: {}", chain(&e));
                let not_publishable = matches!(e, PubSubError::NotPublishable { .. });
                for ev in group {
                    let o = if not_publishable {
                        PublishOutcome::Dead { error: msg.clone() }
                    } else {
                        self.failed(ev, msg.clone())
                    };
                    out.push((ev.id, o));
                }
                self.count(&out);
                return (out, 0);
            }
        };
        let user = self.user_id().await;
        let mut sent: Vec<&OutboundEvent> = Vec::new();
        let mut producer = Vec::new();
        for ev in group {
            let mut fields = ev.fields.clone();
            if schema.is_nullable("CreatedDate") == Some(false)
                && !fields.contains_key("CreatedDate")
            {
                fields.insert("CreatedDate".into(), serde_json::json!(now_ms()));
            }
            if schema.is_nullable("CreatedById") == Some(false)
                && !fields.contains_key("CreatedById")
            {
                fields.insert("CreatedById".into(), serde_json::json!(user));
            }
            match schema.encode_fields(&fields) {
                Ok(payload) => {
                    producer.push(ProducerEvent {
                        id: ev.event_uuid.clone(),
                        schema_id: schema.schema_id().to_string(),
                        payload,
                        headers: Vec::new(),
                    });
                    sent.push(ev);
                }
                // The event itself is wrong: no attempt will fix it.
                Err(e) => out.push((
                    ev.id,
                    PublishOutcome::Dead {
                        error: e.to_string(),
                    },
                )),
            }
        }
        if producer.is_empty() {
            self.count(&out);
            return (out, 0);
        }
        self.stats.publish_calls.fetch_add(1, Relaxed);
        let resp = self.subscriber.publish(&topic, producer).await;
        let mut published = 0;
        match resp {
            Err(e) => {
                let msg = format!("Publish to {topic}: {}", chain(&e));
                tracing::warn!(error = %msg, events = sent.len(), "Publishing platform events failed; retrying later.");
                for ev in sent {
                    out.push((ev.id, self.failed(ev, msg.clone())));
                }
            }
            Ok(resp) => {
                let by_key: HashMap<&str, &PublishResult> = resp
                    .results
                    .iter()
                    .map(|r| (r.correlation_key.as_str(), r))
                    .collect();
                let mut limited = false;
                for (idx, ev) in sent.iter().enumerate() {
                    let r = by_key
                        .get(ev.event_uuid.as_str())
                        .copied()
                        .or_else(|| resp.results.get(idx));
                    let o = match r {
                        None => {
                            self.failed(ev, format!("Publish to {topic}: no result for the event"))
                        }
                        Some(r) => match &r.error {
                            None if !r.replay_id.is_empty() => {
                                published += 1;
                                PublishOutcome::Published {
                                    replay_id: ReplayId::from_bytes(r.replay_id.clone()),
                                }
                            }
                            None => self.failed(
                                ev,
                                format!("Publish to {topic}: a result without replay id or error"),
                            ),
                            Some(err) if is_limit(&err.msg) => {
                                limited = true;
                                PublishOutcome::Deferred {
                                    next_attempt_at_ms: now_ms(),
                                }
                            }
                            Some(err) => {
                                if err.msg.to_ascii_lowercase().contains("schema") {
                                    self.schemas.remove(&name);
                                }
                                self.failed(
                                    ev,
                                    format!(
                                        "Salesforce refused the event (code {}): {}",
                                        err.code, err.msg
                                    ),
                                )
                            }
                        },
                    };
                    out.push((ev.id, o));
                }
                if limited {
                    tracing::warn!(topic = %topic, "Salesforce refused events for the hourly publish allocation (LIMIT_EXCEEDED); deferring them until /limits shows room.");
                    self.client.governor().publish_budget().mark_exhausted();
                }
            }
        }
        self.count(&out);
        self.stats.count_published(&name, published);
        (out, published)
    }

    fn count(&self, outcomes: &[(i64, PublishOutcome)]) {
        for (_, o) in outcomes {
            let c = match o {
                PublishOutcome::Published { .. } => &self.stats.published,
                PublishOutcome::Deferred { .. } => &self.stats.deferred,
                PublishOutcome::Retry { .. } => &self.stats.retried,
                PublishOutcome::Dead { .. } => &self.stats.dead,
            };
            c.fetch_add(1, Relaxed);
        }
    }

    async fn user_id(&self) -> String {
        match self.client.access_token().await {
            Ok(t) => t
                .user_id
                .clone()
                .unwrap_or_else(|| self.config.default_user_id.clone()),
            Err(_) => self.config.default_user_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_errors_are_recognised() {
        assert!(is_limit(
            "LIMIT_EXCEEDED: The number of published platform event messages exceeded the hourly publishing limit (5)."
        ));
        assert!(!is_limit("Schema id \"x\" is not the current schema"));
    }
}
