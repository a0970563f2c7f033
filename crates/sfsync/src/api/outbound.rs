//! The Outbound Message endpoint, `POST /soap/outbound/{flow}/{secret}`: receives the SOAP
//! notifications Salesforce sends for an `[[outbound_messages]]` flow and feeds them into the
//! raw change log.
//!
//! Guarantees: `<Ack>true</Ack>` is answered only after every notification of the message is
//! durable — logged (or, already logged by an earlier delivery, counted as a redelivery) in one
//! store transaction with its receipt — so Salesforce, which retries anything not acknowledged,
//! never drops a notification sfsync has not stored. A notification id is applied once however
//! often it arrives ([`sfsync_store::OutboundReceipts`]). Authentication: Salesforce cannot send
//! a bearer token, so the flow's shared secret is the last path segment of the endpoint URL
//! (compared in constant time; the same 401 for an unknown flow and a wrong secret), and the
//! message's OrganizationId must be the flow's org (403 otherwise). Refused requests write
//! nothing. A message that cannot be read (or notifications in it that cannot) is kept as a dead
//! letter with its cause and answered with a SOAP fault naming the place — the readable
//! notifications of it are logged all the same, and Salesforce's redelivery is then a
//! duplicate for them. The session id a message may carry is never stored or logged, nor is the
//! URL (it holds the secret).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sfsync_pipeline::outbound::{OutboundPayload, OUTBOUND_SCHEMA_ID};
use sfsync_salesforce::outbound::{self as om, FaultCode};
use sfsync_store::{DeadLetter, OutboundContent, OutboundItem, OutboundReceipt, ReceiptOutcome};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::ApiState;

/// Receipts are kept this long (Salesforce stops retrying a message after 24 hours).
pub const RECEIPT_RETENTION_MS: i64 = 7 * 86_400_000;
/// How often old receipts are pruned (on the next message after this long).
const PRUNE_EVERY_MS: i64 = 3_600_000;

/// One flow as the endpoint knows it.
pub struct OutboundFlow {
    pub name: String,
    pub object: String,
    /// 15-character form.
    pub organization_id: String,
    /// SHA-256 of the URL secret.
    secret_digest: [u8; 32],
    /// The configured fields (absent ones are null).
    pub fields: Vec<String>,
    /// `/outbound/<name>`.
    pub channel: String,
    pub stats: FlowStats,
}

/// Counters of one flow.
#[derive(Debug, Default)]
pub struct FlowStats {
    /// Messages answered `<Ack>true</Ack>`.
    pub acked: AtomicU64,
    /// Messages answered with a fault (unreadable, wrong org, store unavailable).
    pub faulted: AtomicU64,
    /// Notifications logged for the first time.
    pub logged: AtomicU64,
    /// Notifications received again after they were logged.
    pub duplicates: AtomicU64,
    /// Notifications (or whole messages) kept as dead letters.
    pub dead_lettered: AtomicU64,
    /// Requests refused: wrong OrganizationId.
    pub refused: AtomicU64,
    /// Notifications received in messages that reached the store (readable or not).
    pub notifications_received: AtomicU64,
    /// Notifications in messages answered `<Ack>true</Ack>` (Salesforce stops sending them).
    pub notifications_acked: AtomicU64,
}

/// The endpoint's flows and counters.
pub struct OutboundService {
    pub flows: HashMap<String, OutboundFlow>,
    /// Requests refused before a flow was known (unknown flow or wrong secret).
    pub unauthorised: AtomicU64,
    /// Largest message accepted.
    pub max_body_bytes: usize,
    /// Wakes the apply stage after an append.
    pub wake: Option<Arc<Notify>>,
    last_prune_ms: AtomicI64,
}

impl OutboundService {
    /// The service for `config`'s flows with their resolved secrets (a flow without a secret is
    /// left out: resolution reported it).
    pub fn from_config(
        config: &crate::config::ValidConfig,
        secrets: &HashMap<String, sfsync_salesforce::Secret>,
        max_body_bytes: usize,
    ) -> OutboundService {
        let flows = config
            .outbound_messages
            .iter()
            .filter_map(|f| {
                let secret = secrets.get(&f.name)?;
                Some((
                    f.name.clone(),
                    OutboundFlow {
                        name: f.name.clone(),
                        object: f.object.clone(),
                        organization_id: f.organization_id.clone(),
                        secret_digest: Sha256::digest(secret.expose().as_bytes()).into(),
                        fields: f.fields.clone(),
                        channel: sfsync_pipeline::outbound::channel(&f.name),
                        stats: FlowStats::default(),
                    },
                ))
            })
            .collect();
        OutboundService {
            flows,
            unauthorised: AtomicU64::new(0),
            max_body_bytes,
            wake: None,
            last_prune_ms: AtomicI64::new(0),
        }
    }

    /// The flow named `name` if `secret` is its secret (every flow's digest is compared, so the
    /// time taken does not tell which part was wrong).
    fn authorise(&self, name: &str, secret: &str) -> Option<&OutboundFlow> {
        let d: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found = None;
        for f in self.flows.values() {
            let mut diff = 0u8;
            for (x, y) in f.secret_digest.iter().zip(&d) {
                diff |= x ^ y;
            }
            if std::hint::black_box(diff) == 0 && f.name == name {
                found = Some(f);
            }
        }
        found
    }
}

fn soap(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, om::CONTENT_TYPE)], body).into_response()
}

fn fault(status: StatusCode, code: FaultCode, message: &str) -> Response {
    soap(status, om::fault_response(code, message))
}

/// `POST /soap/outbound/{flow}/{secret}`.
pub async fn receive(
    State(s): State<Arc<ApiState>>,
    Path((flow, secret)): Path<(String, String)>,
    body: Body,
) -> Response {
    let not_authorised = || {
        fault(
            StatusCode::UNAUTHORIZED,
            FaultCode::Client,
            "not authorised: unknown flow or wrong secret in the endpoint URL",
        )
    };
    let Some(service) = s.outbound.as_ref() else {
        tracing::warn!(flow = %flow, "Outbound Message refused: no [[outbound_messages]] flows.");
        return not_authorised();
    };
    let Some(f) = service.authorise(&flow, &secret) else {
        service.unauthorised.fetch_add(1, Relaxed);
        tracing::warn!(flow = %flow, "Outbound Message refused: unknown flow or wrong secret.");
        return not_authorised();
    };
    let body = match axum::body::to_bytes(body, service.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => {
            f.stats.faulted.fetch_add(1, Relaxed);
            tracing::warn!(flow = %f.name, error = %e, "Outbound Message body not read.");
            return fault(
                StatusCode::PAYLOAD_TOO_LARGE,
                FaultCode::Client,
                &format!(
                    "the message could not be read whole (larger than {} bytes?): {e}",
                    service.max_body_bytes
                ),
            );
        }
    };
    let message = match om::parse_notifications(&body) {
        Ok(m) => m,
        Err(e) => {
            let reason = format!("the message cannot be read: {e}");
            let digest = hex(&Sha256::digest(&body));
            let letter = DeadLetter {
                channel: f.channel.clone(),
                replay_id: Some(sfsync_core::ReplayId::from_bytes(
                    format!("sha256:{digest}").into_bytes(),
                )),
                schema_id: OUTBOUND_SCHEMA_ID.into(),
                stage: "outbound_message".into(),
                error: reason.clone(),
                payload: body.to_vec(),
                object: Some(f.object.clone()),
            };
            return store_and_answer(&s, service, f, Vec::new(), vec![letter], vec![reason]).await;
        }
    };
    if !om::same_salesforce_id(&message.organization_id, &f.organization_id) {
        f.stats.refused.fetch_add(1, Relaxed);
        f.stats.faulted.fetch_add(1, Relaxed);
        tracing::warn!(
            flow = %f.name,
            organization_id = %message.organization_id,
            "Outbound Message refused: not from the flow's org."
        );
        return fault(
            StatusCode::FORBIDDEN,
            FaultCode::Client,
            &format!(
                "OrganizationId {} is not the org of flow '{}'",
                message.organization_id, f.name
            ),
        );
    }
    let org = message.organization_id[..15].to_string();
    let mut items = Vec::new();
    let mut letters = Vec::new();
    let mut problems = Vec::new();
    let receipt = |id: &str, record: &str, object: &str| OutboundReceipt {
        organization_id: org.clone(),
        notification_id: id.to_string(),
        flow: f.name.clone(),
        action_id: message.action_id.clone(),
        object: object.to_string(),
        record_id: record.to_string(),
    };
    let letter = |replay: String, object: &str, error: String| DeadLetter {
        channel: f.channel.clone(),
        replay_id: Some(sfsync_core::ReplayId::from_bytes(replay.into_bytes())),
        schema_id: OUTBOUND_SCHEMA_ID.into(),
        stage: "outbound_message".into(),
        error,
        payload: body.to_vec(),
        object: Some(object.to_string()),
    };
    for n in &message.notifications {
        let payload = OutboundPayload {
            flow: f.name.clone(),
            organization_id: org.clone(),
            action_id: message.action_id.clone(),
            notification_id: n.id.clone(),
            object: n.object.clone(),
            record_id: n.record_id.clone(),
            fields: n.fields.clone(),
            absent: f
                .fields
                .iter()
                .filter(|c| !c.eq_ignore_ascii_case("Id") && n.field(c).is_none())
                .cloned()
                .collect(),
        };
        let converted = if !n.object.eq_ignore_ascii_case(&f.object) {
            Err(format!(
                "the sObject is a {}, but flow '{}' receives {}",
                n.object, f.name, f.object
            ))
        } else {
            // The configured object's spelling: the raw log's entity names the curated model.
            let payload = OutboundPayload {
                object: f.object.clone(),
                ..payload
            };
            payload.to_raw_change()
        };
        let r = receipt(&n.id, &n.record_id, &n.object);
        match converted {
            Ok(change) => items.push(OutboundItem {
                receipt: r,
                content: OutboundContent::Change(change),
            }),
            Err(why) => {
                let error = format!(
                    "Notification[{}] (Id {}, record {}): {why}",
                    n.index, n.id, n.record_id
                );
                problems.push(error.clone());
                items.push(OutboundItem {
                    receipt: r,
                    content: OutboundContent::Rejected(letter(n.id.clone(), &n.object, error)),
                });
            }
        }
    }
    for r in &message.rejected {
        let error = format!("Notification[{}]: {}", r.index, r.error);
        problems.push(error.clone());
        let object = r.object.clone().unwrap_or_else(|| f.object.clone());
        match &r.id {
            Some(id) => items.push(OutboundItem {
                receipt: receipt(id, r.record_id.as_deref().unwrap_or(""), &object),
                content: OutboundContent::Rejected(letter(id.clone(), &object, error)),
            }),
            // No id to key a receipt by: a message-level dead letter (once per message digest
            // and position).
            None => letters.push(letter(
                format!("sha256:{}#{}", hex(&Sha256::digest(&body)), r.index),
                &object,
                error,
            )),
        }
    }
    store_and_answer(&s, service, f, items, letters, problems).await
}

/// Stores the message's items and dead letters in one transaction, then answers: Ack when all
/// is logged, a fault naming the problems otherwise (or when the store failed: not acknowledged,
/// so Salesforce delivers again).
async fn store_and_answer(
    s: &ApiState,
    service: &OutboundService,
    f: &OutboundFlow,
    items: Vec<OutboundItem>,
    letters: Vec<DeadLetter>,
    problems: Vec<String>,
) -> Response {
    f.stats
        .notifications_received
        .fetch_add((items.len() + letters.len()) as u64, Relaxed);
    let stored = s.store.append_outbound(&f.channel, &items, &letters).await;
    let outcome = match stored {
        Ok(o) => o,
        Err(e) => {
            f.stats.faulted.fetch_add(1, Relaxed);
            let chain = sfsync_pipeline::error::chain(&e);
            tracing::error!(flow = %f.name, error = %chain, "Outbound Message not stored; not acknowledged (Salesforce retries).");
            return fault(
                StatusCode::INTERNAL_SERVER_ERROR,
                FaultCode::Server,
                &format!("the notifications could not be stored ({chain}); deliver again later"),
            );
        }
    };
    if outcome.appended > 0 {
        if let Some(w) = &service.wake {
            w.notify_one();
        }
    }
    let mut counts = [0u64; 4];
    for o in &outcome.items {
        let i = match o {
            ReceiptOutcome::Logged => 0,
            ReceiptOutcome::Duplicate => 1,
            ReceiptOutcome::DeadLettered => 2,
            ReceiptOutcome::StillRejected => 3,
        };
        counts[i] += 1;
    }
    f.stats.logged.fetch_add(counts[0], Relaxed);
    f.stats.duplicates.fetch_add(counts[1], Relaxed);
    f.stats
        .dead_lettered
        .fetch_add(counts[2] + letters.len() as u64, Relaxed);
    prune_now_and_then(s, service).await;
    if problems.is_empty() {
        f.stats.acked.fetch_add(1, Relaxed);
        f.stats
            .notifications_acked
            .fetch_add(outcome.items.len() as u64, Relaxed);
        tracing::debug!(
            flow = %f.name,
            logged = counts[0],
            duplicates = counts[1],
            "Outbound Message acknowledged."
        );
        return soap(StatusCode::OK, om::ack_response(true));
    }
    f.stats.faulted.fetch_add(1, Relaxed);
    let n = problems.len();
    tracing::warn!(flow = %f.name, problems = ?problems, "Outbound Message kept as dead letter(s); answered with a fault.");
    let mut text = format!(
        "{n} problem(s); kept as dead letters, the readable notifications are stored: {}",
        problems.join("; ")
    );
    if text.len() > 4_000 {
        let mut cut = 4_000;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    fault(StatusCode::INTERNAL_SERVER_ERROR, FaultCode::Client, &text)
}

/// Deletes receipts past their retention, at most once per [`PRUNE_EVERY_MS`].
async fn prune_now_and_then(s: &ApiState, service: &OutboundService) {
    let now = chrono::Utc::now().timestamp_millis();
    let last = service.last_prune_ms.load(Relaxed);
    if now - last < PRUNE_EVERY_MS
        || service
            .last_prune_ms
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_err()
    {
        return;
    }
    if let Err(e) = s
        .store
        .prune_outbound_receipts(now - RECEIPT_RETENTION_MS)
        .await
    {
        tracing::warn!(error = %sfsync_pipeline::error::chain(&e), "Pruning old Outbound Message receipts failed; tried again later.");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    flow: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/outbound-messages` (viewer): each flow's counters and the most recent receipts
/// (newest first; `?flow=`, `?limit=` up to 1000, default 100).
pub async fn list(
    State(s): State<Arc<ApiState>>,
    caller: super::auth::Caller,
    q: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<serde_json::Value>, super::error::ApiError> {
    use serde_json::json;
    caller.require_viewer()?;
    let axum::extract::Query(q) = q.map_err(super::error::ApiError::from)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let receipts = s
        .store
        .outbound_receipts(q.flow.as_deref(), limit)
        .await
        .map_err(|e| {
            super::error::ApiError::internal("reading the Outbound Message receipts", e)
        })?;
    let mut flows: Vec<serde_json::Value> = Vec::new();
    if let Some(service) = &s.outbound {
        let mut names: Vec<&String> = service.flows.keys().collect();
        names.sort();
        for name in names {
            let f = &service.flows[name];
            let st = &f.stats;
            flows.push(json!({
                "flow": f.name,
                "object": f.object,
                "organization_id": f.organization_id,
                "channel": f.channel,
                "fields": f.fields,
                "acked": st.acked.load(Relaxed),
                "faulted": st.faulted.load(Relaxed),
                "logged": st.logged.load(Relaxed),
                "duplicates": st.duplicates.load(Relaxed),
                "dead_lettered": st.dead_lettered.load(Relaxed),
                "refused": st.refused.load(Relaxed),
            }));
        }
    }
    let ts = |ms: i64| crate::writes_ops::ts(ms);
    let receipts: Vec<serde_json::Value> = receipts
        .into_iter()
        .map(|r| {
            json!({
                "notification_id": r.notification_id,
                "organization_id": r.organization_id,
                "flow": r.flow,
                "action_id": r.action_id,
                "object": r.object,
                "record_id": r.record_id,
                "status": r.status,
                "event_key": r.event_key,
                "error": r.error,
                "deliveries": r.deliveries,
                "first_received_at": ts(r.first_received_at_ms),
                "last_received_at": ts(r.last_received_at_ms),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "flows": flows,
        "unauthorised": s.outbound.as_ref().map_or(0, |o| o.unauthorised.load(Relaxed)),
        "receipts": receipts,
    })))
}
