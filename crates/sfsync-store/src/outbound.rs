//! Outbound Message receipts (migration 19): one row per Salesforce notification id, written in
//! the same transaction as the raw change the notification becomes.
//!
//! Guarantees: a notification is logged at most once — [`OutboundReceipts::append_outbound`]
//! looks its receipt up inside the append's transaction, so a redelivery (Salesforce retries
//! anything not acknowledged, and may deliver twice) is counted and skipped, whatever the raw
//! log's retention or how its event key would dedupe. A notification that could not be read is
//! stored as a dead letter once (its receipt says `dead_letter`); if a redelivery of it can be
//! read (the sender or sfsync's configuration was fixed), it is logged then and its receipt
//! becomes `logged` — a dead-lettered notification is never final. Whole messages that could not
//! be read are dead letters stored once per (channel, message digest).

use async_trait::async_trait;
use serde::Serialize;

use crate::{DeadLetter, LogOffset, RawChange, Result};

/// Who sent a notification and what it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundReceipt {
    /// The org's id in its 15-character form (ids are unique per org).
    pub organization_id: String,
    /// The notification id (`04l…`), the same on every redelivery.
    pub notification_id: String,
    /// The `[[outbound_messages]]` flow that received it.
    pub flow: String,
    /// The Outbound Message definition (`04k…`).
    pub action_id: String,
    pub object: String,
    /// The record id (empty when the notification did not carry a readable one).
    pub record_id: String,
}

/// What a notification becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundContent {
    /// A raw change for the apply stage.
    Change(RawChange),
    /// A notification that could not be read, kept with its cause.
    Rejected(DeadLetter),
}

/// One notification of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundItem {
    pub receipt: OutboundReceipt,
    pub content: OutboundContent,
}

/// What became of one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptOutcome {
    /// Logged now (first delivery, or a delivery after earlier ones were dead-lettered).
    Logged,
    /// Logged by an earlier delivery: skipped.
    Duplicate,
    /// Stored as a dead letter now.
    DeadLettered,
    /// Dead-lettered by an earlier delivery and still unreadable: not stored again.
    StillRejected,
}

/// What one [`OutboundReceipts::append_outbound`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundOutcome {
    /// Per item, in order.
    pub items: Vec<ReceiptOutcome>,
    /// Raw changes newly written.
    pub appended: u64,
    /// Offset of the last one.
    pub last_offset: Option<LogOffset>,
}

/// A receipt as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredReceipt {
    pub organization_id: String,
    pub notification_id: String,
    pub flow: String,
    pub action_id: String,
    pub object: String,
    pub record_id: String,
    /// `logged` or `dead_letter`.
    pub status: String,
    /// The raw-log event key (`logged`).
    pub event_key: Option<String>,
    /// Why it could not be read (`dead_letter`).
    pub error: Option<String>,
    /// Deliveries received (1 + redeliveries).
    pub deliveries: i64,
    pub first_received_at_ms: i64,
    pub last_received_at_ms: i64,
}

/// Outbound Message receipts (SQLite and Postgres).
#[async_trait]
pub trait OutboundReceipts: Send + Sync {
    /// In ONE transaction: for each item, its receipt is looked up — a notification already
    /// logged is counted as a redelivery and skipped; otherwise its change is appended to the
    /// raw log under `channel` (or its dead letter stored, once) and its receipt written. Whole
    /// message dead letters (`dead_letters`) are stored once per (channel, replay id, stage).
    /// When this returns `Ok`, everything is durable; on `Err` nothing of the items is.
    async fn append_outbound(
        &self,
        channel: &str,
        items: &[OutboundItem],
        dead_letters: &[DeadLetter],
    ) -> Result<OutboundOutcome>;

    /// Receipts, most recently received first (of one flow, or all).
    async fn outbound_receipts(
        &self,
        flow: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredReceipt>>;

    /// Deletes receipts last received before `before_ms` (Salesforce stops retrying after 24
    /// hours, so a receipt older than that dedupes nothing). Returns how many went.
    async fn prune_outbound_receipts(&self, before_ms: i64) -> Result<u64>;
}

/// The receipts table's columns, in the order both backends select them.
pub(crate) const RECEIPT_COLUMNS: &str = "organization_id, notification_id, flow, action_id, \
     object, record_id, status, event_key, error, deliveries, first_received_at_ms, \
     last_received_at_ms";
