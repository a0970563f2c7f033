//! Outbound Messages as Salesforce sends them: rules ("Send Outbound Message" actions of
//! workflow rules and flows) evaluated on every committed transaction; each matching record
//! change queues a notification holding the rule's fields as of that commit (null fields are
//! left out, as Salesforce does); a background sender POSTs them to the rule's endpoint as SOAP
//! 1.1 `notifications` messages of up to 100 notifications (one rule per message) and keeps
//! every notification queued until a response acknowledges it — HTTP 2xx with
//! `<Ack>true</Ack>` — retrying with exponential backoff after a non-2xx answer, a SOAP fault,
//! `Ack` false, a timeout or a refused connection, until the retention (24 hours, as
//! Salesforce; shorter for tests) runs out and it is dropped (counted as expired).
//!
//! Guarantees: at-least-once per notification while it is retained (a message may be delivered
//! again although the listener stored it, e.g. when the answer is lost), a stable notification
//! id across redeliveries, one message in flight at a time. The queue lives in memory: an
//! emulator restart loses it (Salesforce's survives). Rules and settings change through
//! [`OutboundMessages::set_rules`] / [`OutboundMessages::set_settings`] or the admin API
//! (`/admin/outbound-messages/…`), and apply to commits after the change.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use quick_xml::events::Event;
use quick_xml::NsReader;
use serde::{Deserialize, Serialize};
use sfsync_core::SfId;
use sfsync_org::{ChangeKind, CommittedTransaction, FieldType, Org};
use tokio::sync::{watch, Notify};

/// The namespace of `notifications` / `notificationsResponse`.
pub const OUTBOUND_NS: &str = "http://soap.sforce.com/2005/09/outbound";
const SOAP_ENV_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// Salesforce puts at most this many notifications in one message.
pub const MAX_BATCH: usize = 100;

/// When a rule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// When a record is created.
    Create,
    /// When a record is created, and every time it is edited.
    #[default]
    CreateOrUpdate,
}

/// A rule as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique name.
    pub name: String,
    /// The object the rule is on (`Account`).
    pub object: String,
    /// Fields sent (besides `Id`, always sent).
    pub fields: Vec<String>,
    /// Where messages are POSTed (`http://` or `https://`).
    pub endpoint_url: String,
    #[serde(default)]
    pub trigger: Trigger,
    /// Criteria: an update fires only when one of these fields changed (empty: every update).
    #[serde(default)]
    pub changed_fields: Vec<String>,
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

/// Delivery settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundSettings {
    /// First retry after this long; doubling per attempt up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// A notification not acknowledged this long after it was queued is dropped.
    pub retention_ms: u64,
    /// A request not answered within this long failed.
    pub timeout_ms: u64,
    /// Notifications per message at most (1 to 100).
    pub batch_max: usize,
    /// A PEM CA bundle trusted for `https://` endpoints besides the system roots.
    pub ca_file: Option<String>,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        OutboundSettings {
            retry_initial_ms: 15_000,
            retry_max_ms: 3_600_000,
            retention_ms: 24 * 3_600_000,
            timeout_ms: 60_000,
            batch_max: MAX_BATCH,
            ca_file: None,
        }
    }
}

/// A notification waiting for acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueuedNotification {
    /// `04l…`: the same on every delivery attempt.
    pub id: String,
    pub rule: String,
    pub action_id: String,
    pub object: String,
    pub record_id: String,
    /// (API name, value as the message carries it), `Id` excluded; null fields left out.
    pub fields: Vec<(String, String)>,
    pub queued_at_ms: i64,
    /// Delivery attempts so far.
    pub attempts: u32,
    pub next_attempt_at_ms: i64,
    pub last_error: Option<String>,
    /// Part of the message being sent right now.
    pub in_flight: bool,
}

/// Counters.
#[derive(Debug, Default)]
pub struct OutboundStats {
    /// Notifications queued.
    pub queued: AtomicU64,
    /// Messages POSTed (every attempt).
    pub messages_sent: AtomicU64,
    /// Messages acknowledged.
    pub messages_acked: AtomicU64,
    /// Attempts that were not acknowledged.
    pub messages_failed: AtomicU64,
    /// Notifications acknowledged (removed from the queue).
    pub notifications_acked: AtomicU64,
    /// Notifications dropped after the retention.
    pub notifications_expired: AtomicU64,
}

struct Rule {
    spec: RuleSpec,
    /// `04k…`.
    action_id: String,
}

/// The rules, the queue and the sender's state of one emulator.
pub struct OutboundMessages {
    rules: RwLock<Vec<Rule>>,
    settings: RwLock<OutboundSettings>,
    queue: Mutex<VecDeque<QueuedNotification>>,
    pub stats: OutboundStats,
    notify: Notify,
    next_id: AtomicU64,
    org_id: String,
    base_url: String,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl OutboundMessages {
    pub fn new(org_id: &str, base_url: &str) -> Arc<OutboundMessages> {
        Arc::new(OutboundMessages {
            rules: RwLock::new(Vec::new()),
            settings: RwLock::new(OutboundSettings::default()),
            queue: Mutex::new(VecDeque::new()),
            stats: OutboundStats::default(),
            notify: Notify::new(),
            // Ids stay unique across restarts of a persisted org.
            next_id: AtomicU64::new(
                (rand::random::<u32>() as u64) << 16 | (now_ms() as u64 & 0xffff),
            ),
            org_id: org_id.to_string(),
            base_url: base_url.to_string(),
        })
    }

    /// Replaces every rule. Errors name the rule and the problem (an unknown object or field,
    /// a compound field, a bad URL, a duplicate name); nothing changes then.
    pub fn set_rules(&self, org: &Org, specs: Vec<RuleSpec>) -> Result<(), String> {
        let schema = org.schema();
        let mut rules: Vec<Rule> = Vec::new();
        for (i, s) in specs.into_iter().enumerate() {
            let at = format!("rules[{i}] ({})", s.name);
            if s.name.trim().is_empty() {
                return Err(format!("{at}: name is empty"));
            }
            if rules.iter().any(|r| r.spec.name == s.name) {
                return Err(format!("{at}: name given twice"));
            }
            let Some(obj) = schema.object(&s.object) else {
                return Err(format!("{at}: no object '{}'", s.object));
            };
            for f in s.fields.iter().chain(&s.changed_fields) {
                match obj.field(f) {
                    None => return Err(format!("{at}: {} has no field '{f}'", obj.name)),
                    Some(d) if matches!(d.field_type, FieldType::Address | FieldType::Location) => {
                        return Err(format!(
                            "{at}: '{f}' is a compound field; select its components"
                        ))
                    }
                    Some(_) => {}
                }
            }
            let url =
                url::Url::parse(&s.endpoint_url).map_err(|e| format!("{at}: endpoint_url: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!("{at}: endpoint_url must be http(s)"));
            }
            let n = self.next_id.fetch_add(1, Relaxed);
            rules.push(Rule {
                spec: RuleSpec {
                    object: obj.name.clone(),
                    ..s
                },
                action_id: SfId::from_parts("04k", n).as_str().to_string(),
            });
        }
        *self.rules.write() = rules;
        Ok(())
    }

    /// The rules with their action ids.
    pub fn rules(&self) -> Vec<(RuleSpec, String)> {
        self.rules
            .read()
            .iter()
            .map(|r| (r.spec.clone(), r.action_id.clone()))
            .collect()
    }

    pub fn settings(&self) -> OutboundSettings {
        self.settings.read().clone()
    }

    pub fn set_settings(&self, s: OutboundSettings) -> Result<(), String> {
        if s.batch_max == 0 || s.batch_max > MAX_BATCH {
            return Err(format!("batch_max must be 1 to {MAX_BATCH}"));
        }
        if s.retry_initial_ms == 0 || s.timeout_ms == 0 {
            return Err("retry_initial_ms and timeout_ms must be greater than 0".into());
        }
        *self.settings.write() = s;
        self.notify.notify_one();
        Ok(())
    }

    /// The delivery queue, oldest first.
    pub fn queue(&self) -> Vec<QueuedNotification> {
        self.queue.lock().iter().cloned().collect()
    }

    /// Makes every queued notification due now (tests: skip the backoff).
    pub fn retry_now(&self) {
        let now = now_ms();
        for n in self.queue.lock().iter_mut() {
            n.next_attempt_at_ms = now;
        }
        self.notify.notify_one();
    }

    /// Drops the whole queue; returns how many notifications went.
    pub fn clear_queue(&self) -> usize {
        let mut q = self.queue.lock();
        let n = q.len();
        q.clear();
        n
    }

    /// Registers the rules' evaluation as a commit listener of `org` (weak references only).
    pub fn attach(self: &Arc<Self>, org: &Arc<Org>) {
        let me = Arc::downgrade(self);
        let weak_org: Weak<Org> = Arc::downgrade(org);
        org.add_commit_listener(Arc::new(move |tx: &Arc<CommittedTransaction>| {
            if let (Some(me), Some(org)) = (me.upgrade(), weak_org.upgrade()) {
                me.on_commit(&org, tx);
            }
        }));
    }

    /// Queues a notification per (matching rule, record change). Called under the org's commit
    /// lock (no other commit runs), so the values read are exactly those of this commit.
    fn on_commit(&self, org: &Org, tx: &CommittedTransaction) {
        let rules = self.rules.read();
        if rules.is_empty() {
            return;
        }
        let schema = org.schema();
        let mut queued = Vec::new();
        for change in &tx.changes {
            for rule in rules.iter().filter(|r| r.spec.active) {
                if !rule.spec.object.eq_ignore_ascii_case(&change.object) {
                    continue;
                }
                let fires = match (change.change_type, rule.spec.trigger) {
                    (ChangeKind::Create, _) => true,
                    (ChangeKind::Update, Trigger::CreateOrUpdate) => {
                        rule.spec.changed_fields.is_empty()
                            || rule.spec.changed_fields.iter().any(|f| {
                                change
                                    .changed_fields
                                    .iter()
                                    .any(|c| c.eq_ignore_ascii_case(f))
                            })
                    }
                    _ => false,
                };
                if !fires {
                    continue;
                }
                let mut select: Vec<String> = vec!["Id".into()];
                select.extend(
                    rule.spec
                        .fields
                        .iter()
                        .filter(|f| !f.eq_ignore_ascii_case("Id"))
                        .cloned(),
                );
                let record = match org.retrieve(
                    &rule.spec.object,
                    change.record_id.as_str(),
                    Some(select.as_slice()),
                    "66.0",
                ) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(rule = %rule.spec.name, record = %change.record_id, error = ?e, "Outbound Message: record not readable; no notification.");
                        continue;
                    }
                };
                let obj = schema.object(&rule.spec.object);
                let mut fields = Vec::new();
                for f in &select[1..] {
                    let Some((name, v)) = record.iter().find(|(k, _)| k.eq_ignore_ascii_case(f))
                    else {
                        continue;
                    };
                    let ty = obj.and_then(|o| o.field(name)).map(|d| d.field_type);
                    if let Some(text) = soap_text(v, ty) {
                        fields.push((name.clone(), text));
                    }
                }
                let n = self.next_id.fetch_add(1, Relaxed);
                let now = now_ms();
                queued.push(QueuedNotification {
                    id: SfId::from_parts("04l", n).as_str().to_string(),
                    rule: rule.spec.name.clone(),
                    action_id: rule.action_id.clone(),
                    object: rule.spec.object.clone(),
                    record_id: change.record_id.as_str().to_string(),
                    fields,
                    queued_at_ms: now,
                    attempts: 0,
                    next_attempt_at_ms: now,
                    last_error: None,
                    in_flight: false,
                });
            }
        }
        if queued.is_empty() {
            return;
        }
        self.stats.queued.fetch_add(queued.len() as u64, Relaxed);
        self.queue.lock().extend(queued);
        self.notify.notify_one();
    }

    /// The SOAP message of `batch` (one rule's notifications).
    pub fn render(&self, action_id: &str, batch: &[QueuedNotification]) -> String {
        let org15 = &self.org_id[..15.min(self.org_id.len())];
        let mut out = String::with_capacity(1024 + batch.len() * 512);
        out.push_str(&format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<soapenv:Envelope xmlns:soapenv=\"{SOAP_ENV_NS}\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n <soapenv:Body>\n  <notifications xmlns=\"{OUTBOUND_NS}\">\n   <OrganizationId>{}</OrganizationId>\n   <ActionId>{}</ActionId>\n   <SessionId xsi:nil=\"true\"/>\n   <EnterpriseUrl>{}/services/Soap/c/66.0/{}</EnterpriseUrl>\n   <PartnerUrl>{}/services/Soap/u/66.0/{}</PartnerUrl>\n",
            esc(&self.org_id),
            esc(action_id),
            esc(&self.base_url),
            esc(org15),
            esc(&self.base_url),
            esc(org15),
        ));
        for n in batch {
            out.push_str(&format!(
                "   <Notification>\n    <Id>{}</Id>\n    <sObject xsi:type=\"sf:{}\" xmlns:sf=\"urn:sobject.enterprise.soap.sforce.com\">\n     <sf:Id>{}</sf:Id>\n",
                esc(&n.id),
                esc(&n.object),
                esc(&n.record_id)
            ));
            for (name, value) in &n.fields {
                out.push_str(&format!("     <sf:{name}>{}</sf:{name}>\n", esc(value)));
            }
            out.push_str("    </sObject>\n   </Notification>\n");
        }
        out.push_str("  </notifications>\n </soapenv:Body>\n</soapenv:Envelope>\n");
        out
    }

    /// Takes the next due message: up to `batch_max` due notifications of the rule of the
    /// oldest due one, marked in flight. Drops expired notifications first.
    fn take_due(&self, now: i64) -> Option<(String, String, Vec<QueuedNotification>)> {
        let settings = self.settings();
        let mut q = self.queue.lock();
        let before = q.len();
        let retention = settings.retention_ms as i64;
        q.retain(|n| n.in_flight || now - n.queued_at_ms < retention);
        let expired = before - q.len();
        if expired > 0 {
            self.stats
                .notifications_expired
                .fetch_add(expired as u64, Relaxed);
            tracing::warn!(expired, "Outbound Messages dropped after the retention.");
        }
        let first = q
            .iter()
            .find(|n| !n.in_flight && n.next_attempt_at_ms <= now)?;
        let rule = first.rule.clone();
        let action = first.action_id.clone();
        let rules = self.rules.read();
        let url = rules
            .iter()
            .find(|r| r.spec.name == rule)
            .map(|r| r.spec.endpoint_url.clone());
        drop(rules);
        let Some(url) = url else {
            // The rule is gone: its queued notifications go with it.
            q.retain(|n| n.rule != rule);
            return None;
        };
        let mut batch = Vec::new();
        for n in q.iter_mut() {
            if batch.len() >= settings.batch_max {
                break;
            }
            if n.rule == rule && !n.in_flight && n.next_attempt_at_ms <= now {
                n.in_flight = true;
                n.attempts += 1;
                batch.push(n.clone());
            }
        }
        Some((url, action, batch))
    }

    /// Records the outcome of a message: acknowledged notifications leave the queue, the
    /// others wait for their next attempt.
    fn settle(&self, batch: &[QueuedNotification], outcome: Result<(), String>) {
        let settings = self.settings();
        let now = now_ms();
        let mut q = self.queue.lock();
        match outcome {
            Ok(()) => {
                q.retain(|n| !batch.iter().any(|b| b.id == n.id));
                self.stats.messages_acked.fetch_add(1, Relaxed);
                self.stats
                    .notifications_acked
                    .fetch_add(batch.len() as u64, Relaxed);
            }
            Err(e) => {
                self.stats.messages_failed.fetch_add(1, Relaxed);
                for n in q.iter_mut().filter(|n| batch.iter().any(|b| b.id == n.id)) {
                    n.in_flight = false;
                    let exp = n.attempts.saturating_sub(1).min(30);
                    let delay = settings
                        .retry_initial_ms
                        .saturating_mul(1u64 << exp)
                        .min(settings.retry_max_ms.max(settings.retry_initial_ms));
                    n.next_attempt_at_ms = now + delay as i64;
                    n.last_error = Some(e.clone());
                }
            }
        }
    }

    /// The next moment a queued notification is due (`None`: nothing waits).
    fn next_due(&self) -> Option<i64> {
        self.queue
            .lock()
            .iter()
            .filter(|n| !n.in_flight)
            .map(|n| n.next_attempt_at_ms)
            .min()
    }

    /// The sender: delivers due messages one at a time until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut client: Option<(OutboundSettings, reqwest::Client)> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let now = now_ms();
            if let Some((url, action, batch)) = self.take_due(now) {
                let settings = self.settings();
                if !matches!(&client, Some((s, _)) if *s == settings) {
                    match build_client(&settings) {
                        Ok(c) => client = Some((settings.clone(), c)),
                        Err(e) => {
                            self.settle(&batch, Err(e));
                            continue;
                        }
                    }
                }
                let Some((_, http)) = client.clone() else {
                    continue;
                };
                let body = self.render(&action, &batch);
                self.stats.messages_sent.fetch_add(1, Relaxed);
                let outcome = tokio::select! {
                    r = deliver(&http, &url, body) => r,
                    _ = shutdown.changed() => Err("the emulator stopped".into()),
                };
                if let Err(e) = &outcome {
                    tracing::debug!(url = %url, notifications = batch.len(), error = %e, "Outbound Message not acknowledged; retrying later.");
                }
                self.settle(&batch, outcome);
                continue;
            }
            let wait = match self.next_due() {
                Some(at) => Duration::from_millis((at - now).clamp(1, 1_000) as u64),
                None => Duration::from_secs(1),
            };
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

fn build_client(s: &OutboundSettings) -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .user_agent("Salesforce Outbound Messaging (sfsync emulator)")
        .timeout(Duration::from_millis(s.timeout_ms))
        .connect_timeout(Duration::from_millis(s.timeout_ms.min(10_000)));
    if let Some(path) = &s.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("ca_file {path}: {e}"))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("ca_file {path}: {e}"))?;
        b = b.tls_certs_merge(certs);
    }
    b.build().map_err(|e| format!("HTTP client: {e}"))
}

/// POSTs one message; `Ok` only for HTTP 2xx with `<Ack>true</Ack>`.
async fn deliver(http: &reqwest::Client, url: &str, body: String) -> Result<(), String> {
    let resp = http
        .post(url)
        .header("content-type", "text/xml; charset=utf-8")
        .header("soapaction", "\"\"")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("HTTP {status}: reading the answer failed: {e}"))?;
    let answer = read_answer(text.as_bytes());
    match (status.is_success(), answer) {
        (true, Answer::Ack(true)) => Ok(()),
        (_, Answer::Fault(f)) => Err(format!("HTTP {}: SOAP fault: {f}", status.as_u16())),
        (true, Answer::Ack(false)) => Err(format!("HTTP {}: Ack false", status.as_u16())),
        (true, Answer::Other(why)) => Err(format!(
            "HTTP {}: not an acknowledgement ({why})",
            status.as_u16()
        )),
        (false, _) => Err(format!("HTTP {}", status.as_u16())),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// What a listener answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `notificationsResponse/Ack`.
    Ack(bool),
    /// A SOAP fault's faultstring.
    Fault(String),
    /// Anything else, with why.
    Other(String),
}

/// Reads a listener's answer.
pub fn read_answer(body: &[u8]) -> Answer {
    let mut reader = NsReader::from_reader(body);
    reader.config_mut().trim_text(false);
    let mut in_ack = false;
    let mut in_faultstring = false;
    let mut fault = false;
    let mut saw_response = false;
    let mut text = String::new();
    loop {
        match reader.read_resolved_event() {
            Ok((ns, Event::Start(e))) => {
                let ns_is = |want: &str| matches!(&ns, quick_xml::name::ResolveResult::Bound(n) if n.as_ref() == want.as_bytes());
                let local = e.local_name();
                match local.as_ref() {
                    b"notificationsResponse" if ns_is(OUTBOUND_NS) => saw_response = true,
                    b"Ack" if saw_response => {
                        in_ack = true;
                        text.clear();
                    }
                    b"Fault" if ns_is(SOAP_ENV_NS) => fault = true,
                    b"faultstring" if fault => {
                        in_faultstring = true;
                        text.clear();
                    }
                    _ => {}
                }
            }
            Ok((_, Event::Text(t))) => {
                if in_ack || in_faultstring {
                    text.push_str(&t.decode().unwrap_or_default());
                }
            }
            Ok((_, Event::GeneralRef(r))) => {
                if in_faultstring {
                    let s = match r.decode().unwrap_or_default().as_ref() {
                        "amp" => "&".to_string(),
                        "lt" => "<".to_string(),
                        "gt" => ">".to_string(),
                        "quot" => "\"".to_string(),
                        "apos" => "'".to_string(),
                        other => r
                            .resolve_char_ref()
                            .ok()
                            .flatten()
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| format!("&{other};")),
                    };
                    text.push_str(&s);
                }
            }
            Ok((_, Event::End(e))) => {
                let local = e.local_name();
                match local.as_ref() {
                    b"Ack" if in_ack => return Answer::Ack(text.trim() == "true"),
                    b"faultstring" if in_faultstring => return Answer::Fault(text.trim().into()),
                    _ => {}
                }
            }
            Ok((_, Event::Eof)) => {
                return if fault {
                    Answer::Fault(String::new())
                } else {
                    Answer::Other("no notificationsResponse/Ack".into())
                };
            }
            Ok(_) => {}
            Err(e) => return Answer::Other(format!("not XML: {e}")),
        }
    }
}

/// A REST JSON value as a SOAP message carries it (`None`: null, left out).
fn soap_text(v: &serde_json::Value, ty: Option<FieldType>) -> Option<String> {
    use serde_json::Value as J;
    match v {
        J::Null => None,
        J::Bool(b) => Some(b.to_string()),
        J::Number(n) => Some(n.to_string()),
        J::String(s) if ty == Some(FieldType::Datetime) => {
            // REST writes `…+0000`; SOAP `xsd:dateTime` in UTC ends in `Z`.
            Some(match s.strip_suffix("+0000") {
                Some(base) => format!("{base}Z"),
                None => s.clone(),
            })
        }
        J::String(s) => Some(s.clone()),
        // Compound values are refused by `set_rules`.
        other => Some(other.to_string()),
    }
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read() {
        let ack = r#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#;
        assert_eq!(read_answer(ack.as_bytes()), Answer::Ack(true));
        assert_eq!(
            read_answer(ack.replace(">true<", ">false<").as_bytes()),
            Answer::Ack(false)
        );
        let fault = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>bad &amp; worse</faultstring></s:Fault></s:Body></s:Envelope>"#;
        assert_eq!(
            read_answer(fault.as_bytes()),
            Answer::Fault("bad & worse".into())
        );
        assert!(matches!(read_answer(b"OK"), Answer::Other(_)));
        // An Ack outside a notificationsResponse is not an acknowledgement.
        assert!(matches!(
            read_answer(b"<x><Ack>true</Ack></x>"),
            Answer::Other(_)
        ));
    }

    #[test]
    fn values_take_their_soap_form() {
        use serde_json::json;
        assert_eq!(
            soap_text(
                &json!("2026-01-02T03:04:05.000+0000"),
                Some(FieldType::Datetime)
            )
            .as_deref(),
            Some("2026-01-02T03:04:05.000Z")
        );
        assert_eq!(soap_text(&json!(12.5), None).as_deref(), Some("12.5"));
        assert_eq!(soap_text(&json!(true), None).as_deref(), Some("true"));
        assert_eq!(soap_text(&json!(null), None), None);
    }
}
