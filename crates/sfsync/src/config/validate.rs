//! Semantic checks: pure (no I/O — paths are only joined, never opened) and exhaustive (every
//! problem is collected, not just the first). Produces a [`ValidConfig`] whose invariants the
//! rest of sfsync may rely on: at least one object, unique object names, a well-formed channel
//! per CDC object, exactly one credentials source, a PII key whenever PII fields exist, old PII
//! key ids unique and different from the current one, and every pipeline unit > 0.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::model::*;
use super::ConfigError;

/// A validated config.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    pub salesforce: ValidSalesforce,
    pub objects: Vec<ValidObject>,
    pub warehouse: ValidWarehouse,
    pub pii: Option<ValidPii>,
    pub pipeline: PipelineConfig,
    /// Writeback ownership and conflict rules (no objects: writeback refuses everything).
    pub writeback: sfsync_pipeline::writeback::WritebackPolicy,
    /// Team and SLA of each writeback object's flow, for the integration map (config order).
    pub writeback_flows: Vec<FlowMeta>,
    /// Delivery tuning of `[writeback]` (defaults without it).
    pub writeback_delivery: WritebackDelivery,
    /// The operator HTTP API; `None` when `[api] enabled = false`.
    pub api: Option<ValidApi>,
    /// Archive and retention (`[archive]`, defaults without it).
    pub archive: ValidArchive,
    /// `[[sinks]]`, in file order.
    pub sinks: Vec<ValidSink>,
    /// The freshness contract (`[freshness]`, defaults without it).
    pub freshness: FreshnessConfig,
    /// Where the raw change log lives (`[log]`) and the lease settings of run roles.
    pub log: ValidLog,
    /// The OData endpoint (`[odata]`); `None` when absent or disabled.
    pub odata: Option<ValidOdata>,
    /// Platform events in and out (`[platform_events]`; empty without it).
    pub platform_events: ValidPlatformEvents,
    /// `[[outbound_messages]]`, in file order.
    pub outbound_messages: Vec<ValidOutboundMessage>,
}

/// A validated `[platform_events]`: well-formed, unique channels and event names, figures
/// within bounds.
#[derive(Debug, Clone, Default)]
pub struct ValidPlatformEvents {
    /// `/event/<Name>__e` or `/event/<Name>__chn`, in file order.
    pub subscribe: Vec<String>,
    /// Events that may be published.
    pub publish: Vec<String>,
    pub publish_batch_max: usize,
    pub publish_max_attempts: u32,
    pub publish_retry_base_ms: u64,
    pub publish_retry_max_secs: u64,
    pub max_events_per_request: usize,
}

impl ValidPlatformEvents {
    /// Event names a sink may deliver: those of `/event/<Name>__e` subscriptions (and any
    /// `__e` name when a custom channel is subscribed, whose members are not known here).
    pub fn deliverable(&self, name: &str) -> bool {
        name.ends_with("__e")
            && self
                .subscribe
                .iter()
                .any(|c| c.strip_prefix("/event/") == Some(name) || c.ends_with("__chn"))
    }
}

/// A platform event API name: `<Name>__e`.
fn is_event_name(s: &str) -> bool {
    s.strip_suffix("__e")
        .is_some_and(|b| !b.is_empty() && is_api_name(b))
}

fn validate_platform_events(
    errs: &mut Errors,
    pe: Option<&PlatformEventsConfig>,
) -> ValidPlatformEvents {
    let Some(pe) = pe else {
        return ValidPlatformEvents::default();
    };
    let mut seen: Vec<&str> = Vec::new();
    for (i, c) in pe.subscribe.iter().enumerate() {
        let key = format!("platform_events.subscribe[{i}]");
        let ok = c.strip_prefix("/event/").is_some_and(|n| {
            is_event_name(n)
                || n.strip_suffix("__chn")
                    .is_some_and(|b| !b.is_empty() && is_api_name(b))
        });
        if !ok {
            errs.push(
                key,
                format!("\"{c}\" is not a platform-event channel: use \"/event/<Name>__e\" or a custom channel \"/event/<Name>__chn\""),
            );
        } else if seen.contains(&c.as_str()) {
            errs.push(key, format!("\"{c}\" is subscribed twice"));
        }
        seen.push(c);
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, n) in pe.publish.iter().enumerate() {
        let key = format!("platform_events.publish[{i}]");
        if !is_event_name(n) {
            errs.push(
                key,
                format!("\"{n}\" is not a platform event API name (<Name>__e)"),
            );
        } else if names.contains(&n.as_str()) {
            errs.push(key, format!("\"{n}\" is listed twice"));
        }
        names.push(n);
    }
    if pe.publish_batch_max == 0 || pe.publish_batch_max > 200 {
        errs.push(
            "platform_events.publish_batch_max",
            format!(
                "{} must be 1 to 200 (events per Publish call)",
                pe.publish_batch_max
            ),
        );
    }
    for (k, v) in [
        ("publish_max_attempts", u64::from(pe.publish_max_attempts)),
        ("publish_retry_base_ms", pe.publish_retry_base_ms),
        ("publish_retry_max_secs", pe.publish_retry_max_secs),
        ("max_events_per_request", pe.max_events_per_request),
    ] {
        if v == 0 {
            errs.push(format!("platform_events.{k}"), "must be greater than 0");
        }
    }
    if pe.max_events_per_request > 10_000 {
        errs.push(
            "platform_events.max_events_per_request",
            format!("{} is over the maximum of 10000", pe.max_events_per_request),
        );
    }
    ValidPlatformEvents {
        subscribe: pe.subscribe.clone(),
        publish: pe.publish.clone(),
        publish_batch_max: pe.publish_batch_max.clamp(1, 200) as usize,
        publish_max_attempts: pe.publish_max_attempts.max(1),
        publish_retry_base_ms: pe.publish_retry_base_ms.max(1),
        publish_retry_max_secs: pe.publish_retry_max_secs.max(1),
        max_events_per_request: pe.max_events_per_request.clamp(1, 10_000) as usize,
    }
}

/// A validated `[[outbound_messages]]` entry (the secret is read by secret resolution).
#[derive(Debug, Clone)]
pub struct ValidOutboundMessage {
    pub name: String,
    pub object: String,
    /// The org id in its 15-character form.
    pub organization_id: String,
    pub secret: SecretRef,
    /// `outbound_messages[i].secret.env`, … for errors.
    pub secret_key: String,
    /// Field API names as configured (`SystemModstamp` among them).
    pub fields: Vec<String>,
    pub team: Option<String>,
    pub sla_secs: Option<u64>,
}

/// Whether `s` can be an `[[outbound_messages]]` name (a URL path segment).
fn is_flow_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 80
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `[[outbound_messages]]`: unique names, synced objects, an org id, a secret reference, the
/// fields with `SystemModstamp`; the API must be on and the raw log in the warehouse; every
/// `mode = "outbound_message"` object needs a flow.
fn validate_outbound_messages(
    errs: &mut Errors,
    flows: &[OutboundMessageConfig],
    objects: &[ObjectConfig],
    api: Option<&ValidApi>,
    log: &ValidLog,
    base: &Path,
) -> Vec<ValidOutboundMessage> {
    let mut out: Vec<ValidOutboundMessage> = Vec::new();
    for (i, f) in flows.iter().enumerate() {
        let p = format!("outbound_messages[{i}]");
        if !is_flow_name(&f.name) {
            errs.push(
                format!("{p}.name"),
                format!(
                    "\"{}\" must be 1 to 80 letters, digits, '-' or '_' (it is a URL path segment)",
                    f.name
                ),
            );
        } else if let Some(j) = out.iter().position(|o| o.name == f.name) {
            errs.push(
                format!("{p}.name"),
                format!(
                    "\"{}\" is given twice (also outbound_messages[{j}])",
                    f.name
                ),
            );
        }
        if !objects.iter().any(|o| o.name == f.object) {
            errs.push(
                format!("{p}.object"),
                format!("'{}' is not a synced object ([[objects]])", f.object),
            );
        }
        let org = f.organization_id.trim();
        let org_ok = (org.len() == 15 || org.len() == 18)
            && org.starts_with("00D")
            && org.bytes().all(|b| b.is_ascii_alphanumeric());
        if !org_ok {
            errs.push(
                format!("{p}.organization_id"),
                format!(
                    "\"{}\" is not an org id (15 or 18 letters and digits starting with 00D)",
                    f.organization_id
                ),
            );
        }
        let key = format!("{p}.secret");
        let secret = check_secret(errs, &key, &f.secret, base);
        let field = secret.field();
        if f.fields.is_empty() {
            errs.push(
                format!("{p}.fields"),
                "lists no field: give the fields the Outbound Message sends, SystemModstamp among them",
            );
        } else if !f
            .fields
            .iter()
            .any(|x| x.eq_ignore_ascii_case("SystemModstamp"))
        {
            errs.push(
                format!("{p}.fields"),
                "must include SystemModstamp: it orders notifications against other changes of \
                 the record (add it to the Outbound Message in Salesforce too)",
            );
        }
        let mut seen: Vec<String> = Vec::new();
        for (j, name) in f.fields.iter().enumerate() {
            if !is_api_name(name) {
                errs.push(
                    format!("{p}.fields[{j}]"),
                    format!("\"{name}\" is not a field API name"),
                );
            } else if seen.contains(&name.to_ascii_lowercase()) {
                errs.push(
                    format!("{p}.fields[{j}]"),
                    format!("\"{name}\" is given twice"),
                );
            }
            seen.push(name.to_ascii_lowercase());
        }
        if f.sla_secs == Some(0) {
            errs.push(format!("{p}.sla_secs"), "must be greater than 0");
        }
        if api.is_none() {
            errs.push(
                p.clone(),
                "Outbound Messages are received by the API's listener, which is off ([api] enabled = false)",
            );
        }
        if log.kafka.is_some() {
            errs.push(
                p.clone(),
                "Outbound Messages need the warehouse's raw log (log.backend = \"store\"): their \
                 receipts dedupe in the same transaction as the append",
            );
        }
        out.push(ValidOutboundMessage {
            name: f.name.clone(),
            object: f.object.clone(),
            organization_id: org.get(..15).unwrap_or(org).to_string(),
            secret,
            secret_key: format!("{key}.{field}"),
            fields: f.fields.clone(),
            team: f.team.clone(),
            sla_secs: f.sla_secs,
        });
    }
    for (i, o) in objects.iter().enumerate() {
        if o.mode == SyncMode::OutboundMessage && !flows.iter().any(|f| f.object == o.name) {
            errs.push(
                format!("objects[{i}].mode"),
                format!(
                    "mode = \"outbound_message\" but no [[outbound_messages]] entry has object = \"{}\"",
                    o.name
                ),
            );
        }
    }
    out
}

/// A validated `[odata]`: entity sets naming synced objects (each once), a page size within
/// bounds, basic-auth user names unique.
#[derive(Debug, Clone)]
pub struct ValidOdata {
    pub entity_sets: Vec<String>,
    pub outbox: bool,
    pub page_size: usize,
    /// Ends with `/`.
    pub public_url: Option<String>,
    pub basic_auth: Vec<ValidBasicAuth>,
}

/// One `[[odata.basic_auth]]` principal (the password is read by secret resolution).
#[derive(Debug, Clone)]
pub struct ValidBasicAuth {
    pub username: String,
    pub password: SecretRef,
    /// `odata.basic_auth[i].password.env`, … for errors.
    pub password_key: String,
    pub pii: bool,
}

/// The largest OData page.
pub const MAX_ODATA_PAGE_SIZE: u64 = 5000;

fn validate_odata(
    errs: &mut Errors,
    odata: Option<&OdataConfig>,
    objects: &[ObjectConfig],
    api: Option<&ValidApi>,
    base: &Path,
) -> Option<ValidOdata> {
    let o = odata?;
    if !o.enabled {
        return None;
    }
    if api.is_none() {
        errs.push(
            "odata.enabled",
            "the OData endpoint is served by the API's listener, which is off ([api] enabled = false)",
        );
    }
    let mut sets: Vec<String> = Vec::new();
    for (i, name) in o.entity_sets.iter().enumerate() {
        let key = format!("odata.entity_sets[{i}]");
        match objects.iter().find(|ob| &ob.name == name) {
            None => errs.push(
                key,
                format!("'{name}' is not a synced object ([[objects]])"),
            ),
            Some(_) if sets.contains(name) => errs.push(key, format!("'{name}' is given twice")),
            Some(_) if name == "WritebackOutbox" => errs.push(
                key,
                "'WritebackOutbox' is the outbox's entity set (odata.outbox)",
            ),
            Some(_) => sets.push(name.clone()),
        }
    }
    if o.entity_sets.is_empty() && !o.outbox {
        errs.push(
            "odata.entity_sets",
            "names no object and odata.outbox is false: the endpoint would expose nothing",
        );
    }
    if o.page_size == 0 || o.page_size > MAX_ODATA_PAGE_SIZE {
        errs.push(
            "odata.page_size",
            format!("{} is not between 1 and {MAX_ODATA_PAGE_SIZE}", o.page_size),
        );
    }
    let public_url = match &o.public_url {
        None => None,
        Some(u) => match reqwest::Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.query().is_none() => {
                Some(if u.ends_with('/') {
                    u.clone()
                } else {
                    format!("{u}/")
                })
            }
            _ => {
                errs.push(
                    "odata.public_url",
                    format!("\"{u}\" is not an http(s) URL without a query (e.g. \"https://sfsync.example.com/odata/v4/\")"),
                );
                None
            }
        },
    };
    let mut basic_auth: Vec<ValidBasicAuth> = Vec::new();
    for (i, b) in o.basic_auth.iter().enumerate() {
        let p = format!("odata.basic_auth[{i}]");
        if b.username.is_empty()
            || b.username.contains(':')
            || b.username.chars().any(char::is_control)
        {
            errs.push(
                format!("{p}.username"),
                format!(
                    "\"{}\" must be non-empty, without ':' or control characters",
                    b.username
                ),
            );
        } else if basic_auth.iter().any(|x| x.username == b.username) {
            errs.push(
                format!("{p}.username"),
                format!("\"{}\" is given twice", b.username),
            );
        }
        let key = format!("{p}.password");
        let password = check_secret(errs, &key, &b.password, base);
        let field = password.field();
        basic_auth.push(ValidBasicAuth {
            username: b.username.clone(),
            password,
            password_key: format!("{key}.{field}"),
            pii: b.pii,
        });
    }
    Some(ValidOdata {
        entity_sets: sets,
        outbox: o.outbox,
        page_size: o.page_size.clamp(1, MAX_ODATA_PAGE_SIZE) as usize,
        public_url,
        basic_auth,
    })
}

/// `[log]`, validated.
#[derive(Debug, Clone)]
pub struct ValidLog {
    /// The Kafka raw log; `None`: the warehouse database's raw log.
    pub kafka: Option<sfsync_pipeline::kafka_log::KafkaLogConfig>,
    pub lease_ttl: std::time::Duration,
    /// This process's name in leases.
    pub node_name: String,
    /// The SASL password's reference (`[log] sasl_password`), read by secret resolution.
    pub sasl_password: Option<SecretRef>,
}

/// A `[[sinks]]` entry, validated.
#[derive(Debug, Clone)]
pub struct ValidSink {
    pub name: String,
    pub system: Option<String>,
    pub objects: Vec<String>,
    pub target: SinkTarget,
    pub batch_max: usize,
    pub pii: sfsync_store::PiiMode,
    pub dead_letter_after_secs: u64,
    pub retry_base_ms: u64,
    pub retry_max_secs: u64,
    pub start: sfsync_pipeline::sinks::StartFrom,
}

/// Where a sink delivers.
#[derive(Debug, Clone)]
pub enum SinkTarget {
    Webhook {
        url: String,
        secret: SecretRef,
        ca_file: Option<PathBuf>,
        timeout_secs: u64,
    },
    Kafka {
        brokers: String,
        topic: String,
        partitions: i32,
        replication_factor: i32,
    },
    /// "Record applied" notifications: each change becomes platform event `event`.
    PlatformEvent {
        event: String,
        /// Event field → value source (see `sfsync_pipeline::events::sink::FieldSource`).
        fields: Vec<(String, sfsync_pipeline::events::sink::FieldSource)>,
    },
}

impl SinkTarget {
    pub fn kind(&self) -> &'static str {
        match self {
            SinkTarget::Webhook { .. } => "webhook",
            SinkTarget::Kafka { .. } => "kafka",
            SinkTarget::PlatformEvent { .. } => "platform_event",
        }
    }

    /// Where it delivers, for `config check`, logs and the map (no secrets).
    pub fn describe(&self) -> String {
        match self {
            SinkTarget::Webhook { url, .. } => match reqwest::Url::parse(url) {
                Ok(mut u) => {
                    let _ = u.set_username("");
                    let _ = u.set_password(None);
                    u.set_query(None);
                    u.to_string()
                }
                Err(_) => url.clone(),
            },
            SinkTarget::Kafka { brokers, topic, .. } => format!("kafka://{brokers} topic {topic}"),
            SinkTarget::PlatformEvent { event, .. } => format!("/event/{event}"),
        }
    }
}

fn validate_sinks(
    errs: &mut Errors,
    sinks: &[SinkConfig],
    objects: &[ObjectConfig],
    events: &ValidPlatformEvents,
    base_dir: &Path,
) -> Vec<ValidSink> {
    let synced: Vec<&str> = objects.iter().map(|o| o.name.as_str()).collect();
    let mut out = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (i, s) in sinks.iter().enumerate() {
        let at = |k: &str| format!("sinks[{i}].{k}");
        let before = errs.0.len();
        if s.name.trim().is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            errs.push(
                at("name"),
                format!(
                    "'{}' must be non-empty letters, digits, '_', '-' or '.'",
                    s.name
                ),
            );
        } else if seen.contains(&s.name.as_str()) {
            errs.push(at("name"), format!("'{}' is used by another sink", s.name));
        }
        seen.push(&s.name);
        let objects = match &s.objects {
            None => synced.iter().map(|o| o.to_string()).collect(),
            Some(list) => {
                if list.is_empty() {
                    errs.push(
                        at("objects"),
                        "must name at least one object (or be left out for all)",
                    );
                }
                for (j, o) in list.iter().enumerate() {
                    if o.ends_with("__e") {
                        if !events.deliverable(o) {
                            errs.push(
                                format!("sinks[{i}].objects[{j}]"),
                                format!("'{o}' is not a subscribed platform event ([platform_events] subscribe = [\"/event/{o}\"])"),
                            );
                        } else if s.kind == "platform_event" {
                            errs.push(
                                format!("sinks[{i}].objects[{j}]"),
                                format!("'{o}': a platform_event sink publishes record changes, not received events"),
                            );
                        }
                    } else if !synced.contains(&o.as_str()) {
                        errs.push(
                            format!("sinks[{i}].objects[{j}]"),
                            format!("'{o}' is not a synced object ([[objects]])"),
                        );
                    }
                }
                list.clone()
            }
        };
        for (name, v) in [
            ("timeout_secs", s.timeout_secs),
            ("batch_max", s.batch_max as u64),
            ("dead_letter_after_secs", s.dead_letter_after_secs),
            ("retry_base_ms", s.retry_base_ms),
            ("retry_max_secs", s.retry_max_secs),
        ] {
            if v == 0 {
                errs.push(at(name), "must be greater than 0");
            }
        }
        if s.batch_max > 10_000 {
            errs.push(
                at("batch_max"),
                format!("{} is over the maximum of 10000", s.batch_max),
            );
        }
        let pii = sfsync_store::PiiMode::parse(&s.pii);
        if pii.is_none() {
            errs.push(
                at("pii"),
                format!("'{}': expected omit, sealed or plain", s.pii),
            );
        }
        let start = match s.start.as_str() {
            "earliest" => Some(sfsync_pipeline::sinks::StartFrom::Earliest),
            "latest" => Some(sfsync_pipeline::sinks::StartFrom::Latest),
            other => {
                errs.push(
                    at("start"),
                    format!("'{other}': expected earliest or latest"),
                );
                None
            }
        };
        let webhook_only = [
            ("url", s.url.is_some()),
            ("secret", s.secret.is_some()),
            ("ca_file", s.ca_file.is_some()),
        ];
        let kafka_only = [("brokers", s.brokers.is_some())];
        let event_only = [("event", s.event.is_some()), ("fields", s.fields.is_some())];
        if s.kind != "platform_event" {
            for (k, set) in event_only {
                if set {
                    errs.push(
                        at(k),
                        format!("is a platform_event setting; this sink is {}", s.kind),
                    );
                }
            }
        }
        let target = match s.kind.as_str() {
            "platform_event" => {
                for (k, set) in webhook_only.into_iter().chain(kafka_only) {
                    if set {
                        errs.push(at(k), "is not a platform_event setting");
                    }
                }
                let event = match &s.event {
                    None => {
                        errs.push(
                            at("event"),
                            "a platform_event sink needs event = \"<Name>__e\"",
                        );
                        None
                    }
                    Some(e) if !events.publish.contains(e) => {
                        errs.push(
                            at("event"),
                            format!("'{e}' is not in [platform_events] publish"),
                        );
                        None
                    }
                    Some(e) => Some(e.clone()),
                };
                let mut fields = Vec::new();
                match &s.fields {
                    None => errs.push(
                        at("fields"),
                        "a platform_event sink needs fields = { <Event_Field__c> = \"<source>\" }",
                    ),
                    Some(m) if m.is_empty() => {
                        errs.push(at("fields"), "must map at least one event field")
                    }
                    Some(m) => {
                        for (k, v) in m {
                            if !is_api_name(k) {
                                errs.push(
                                    format!("sinks[{i}].fields.{k}"),
                                    format!("'{k}' is not a field API name"),
                                );
                            }
                            match sfsync_pipeline::events::sink::FieldSource::parse(v) {
                                Some(src) => fields.push((k.clone(), src)),
                                None => errs.push(
                                    format!("sinks[{i}].fields.{k}"),
                                    format!("'{v}': expected id, object, change_type, commit_timestamp, applied_at, event_key, changed_fields or record.<Field>"),
                                ),
                            }
                        }
                    }
                }
                event.map(|event| SinkTarget::PlatformEvent { event, fields })
            }
            "webhook" => {
                for (k, set) in kafka_only {
                    if set {
                        errs.push(at(k), "is a kafka setting; this sink is a webhook");
                    }
                }
                let url = match &s.url {
                    None => {
                        errs.push(at("url"), "a webhook sink needs url");
                        None
                    }
                    Some(u) => match reqwest::Url::parse(u) {
                        Err(e) => {
                            errs.push(at("url"), format!("'{u}' is not a URL: {e}"));
                            None
                        }
                        Ok(parsed) => match parsed.scheme() {
                            "https" => Some(u.clone()),
                            "http"
                                if sfsync_pipeline::sinks::webhook::plain_http_allowed(&parsed) =>
                            {
                                Some(u.clone())
                            }
                            "http" => {
                                errs.push(
                                    at("url"),
                                    format!("'{u}': plain http is allowed to a loopback receiver only; use https"),
                                );
                                None
                            }
                            other => {
                                errs.push(
                                    at("url"),
                                    format!("'{u}': scheme '{other}' is not https"),
                                );
                                None
                            }
                        },
                    },
                };
                if s.secret.is_none() {
                    errs.push(at("secret"), "a webhook sink needs a signing secret: secret = { env = \"VAR\" } or { file = \"path\" }");
                }
                match (url, &s.secret) {
                    (Some(url), Some(secret)) => Some(SinkTarget::Webhook {
                        url,
                        secret: match secret {
                            SecretRef::File(p) => SecretRef::File(anchor(base_dir, p)),
                            other => other.clone(),
                        },
                        ca_file: s.ca_file.as_ref().map(|p| anchor(base_dir, p)),
                        timeout_secs: s.timeout_secs,
                    }),
                    _ => None,
                }
            }
            "kafka" => {
                for (k, set) in webhook_only {
                    if set {
                        errs.push(at(k), "is a webhook setting; this sink is kafka");
                    }
                }
                if !s.topic.contains("{object}") && objects.len() > 1 {
                    errs.push(
                        at("topic"),
                        format!(
                            "'{}' has no {{object}}: each object needs a topic of its own",
                            s.topic
                        ),
                    );
                }
                if s.partitions < 1 {
                    errs.push(at("partitions"), "must be at least 1");
                }
                if s.replication_factor < 1 {
                    errs.push(at("replication_factor"), "must be at least 1");
                }
                match &s.brokers {
                    None => {
                        errs.push(at("brokers"), "a kafka sink needs brokers = \"host:port\"");
                        None
                    }
                    Some(b) if !brokers_ok(b) => {
                        errs.push(
                            at("brokers"),
                            format!("'{b}': expected host:port[,host:port…]"),
                        );
                        None
                    }
                    Some(b) => Some(SinkTarget::Kafka {
                        brokers: b.clone(),
                        topic: s.topic.clone(),
                        partitions: s.partitions,
                        replication_factor: s.replication_factor,
                    }),
                }
            }
            other => {
                errs.push(
                    at("kind"),
                    format!("'{other}': expected webhook or kafka (or platform_event)"),
                );
                None
            }
        };
        if let (Some(target), Some(pii), Some(start), true) =
            (target, pii, start, errs.0.len() == before)
        {
            out.push(ValidSink {
                name: s.name.clone(),
                system: s.system.clone(),
                objects,
                target,
                batch_max: s.batch_max,
                pii,
                dead_letter_after_secs: s.dead_letter_after_secs,
                retry_base_ms: s.retry_base_ms,
                retry_max_secs: s.retry_max_secs,
                start,
            });
        }
    }
    out
}

/// `[archive]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidArchive {
    /// Where the archive lives (`None`: archiving is off).
    pub location: Option<ArchiveWhere>,
    pub every_secs: u64,
    pub hot_retention_days: u64,
    pub retention_days: u64,
    pub audit_retention_days: u64,
    pub retention_every_secs: u64,
}

/// An archive location (the store's own type; a local directory is anchored at the config
/// file's directory).
pub type ArchiveWhere = sfsync_store::archive::ArchiveLocation;

fn validate_archive(
    errs: &mut Errors,
    a: Option<&ArchiveConfig>,
    warehouse: Option<&ValidWarehouse>,
    base_dir: &Path,
) -> ValidArchive {
    let default = ArchiveConfig::default();
    let a = a.unwrap_or(&default);
    for (name, v) in [
        ("every_secs", a.every_secs),
        ("retention_days", a.retention_days),
        ("audit_retention_days", a.audit_retention_days),
        ("retention_every_secs", a.retention_every_secs),
    ] {
        if v == 0 {
            errs.push(format!("archive.{name}"), "must be greater than 0");
        }
    }
    if a.hot_retention_days > a.retention_days {
        errs.push(
            "archive.hot_retention_days",
            format!(
                "{} days is longer than archive.retention_days ({})",
                a.hot_retention_days, a.retention_days
            ),
        );
    }
    let location = match (&a.location, a.enabled) {
        (_, false) => None,
        (Some(l), true) => match ArchiveWhere::parse(l) {
            Ok(ArchiveWhere::Local(p)) => Some(ArchiveWhere::Local(anchor(base_dir, &p))),
            Ok(s3) => Some(s3),
            Err(reason) => {
                errs.push(
                    "archive.location",
                    format!("expected a local directory or s3://bucket/prefix: {reason}"),
                );
                None
            }
        },
        (None, true) => Some(ArchiveWhere::Local(match warehouse {
            Some(ValidWarehouse::Sqlite { path }) => path
                .parent()
                .map(|d| d.join("archive"))
                .unwrap_or_else(|| base_dir.join("archive")),
            _ => base_dir.join("archive"),
        })),
    };
    ValidArchive {
        location,
        every_secs: a.every_secs,
        hot_retention_days: a.hot_retention_days,
        retention_days: a.retention_days,
        audit_retention_days: a.audit_retention_days,
        retention_every_secs: a.retention_every_secs,
    }
}

/// `[freshness]`: both figures > 0, and updates more often than any object's threshold (else
/// a caught-up object would show `delayed` between two updates).
fn validate_freshness(
    errs: &mut Errors,
    f: Option<&FreshnessConfig>,
    objects: &[ObjectConfig],
) -> FreshnessConfig {
    let f = f.cloned().unwrap_or_default();
    for (name, v) in [
        ("update_every_secs", f.update_every_secs),
        ("delayed_after_secs", f.delayed_after_secs),
    ] {
        if v == 0 {
            errs.push(format!("freshness.{name}"), "must be greater than 0");
        }
    }
    if f.update_every_secs > 0 && f.update_every_secs >= f.delayed_after_secs {
        errs.push(
            "freshness.update_every_secs",
            format!(
                "{} s is not less than freshness.delayed_after_secs ({} s): a caught-up object \
                 would show delayed between two updates",
                f.update_every_secs, f.delayed_after_secs
            ),
        );
    }
    for (i, o) in objects.iter().enumerate() {
        if let Some(sla) = o.sla_secs.filter(|s| *s > 0) {
            if f.update_every_secs >= sla {
                errs.push(
                    format!("objects[{i}].sla_secs"),
                    format!(
                        "{sla} s is not more than freshness.update_every_secs ({} s): the \
                         object would show delayed in sync_status between two updates",
                        f.update_every_secs
                    ),
                );
            }
        }
    }
    f
}

/// Who answers for a flow and its target, for the integration map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowMeta {
    pub object: String,
    pub team: Option<String>,
    pub sla_secs: Option<u64>,
}

/// `[writeback]` delivery settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritebackDelivery {
    pub linger_ms: u64,
    pub max_batch: u64,
    pub bulk_threshold: u64,
    pub max_attempts: u32,
    pub lease_secs: u64,
    /// Object → parent reference field.
    pub parent_fields: std::collections::BTreeMap<String, String>,
}

impl Default for WritebackDelivery {
    fn default() -> Self {
        WritebackDelivery {
            linger_ms: 2_000,
            max_batch: 2_000,
            bulk_threshold: 2_000,
            max_attempts: 10,
            lease_secs: 120,
            parent_fields: Default::default(),
        }
    }
}

/// A validated `[api]`: a listen address that is loopback unless TLS is configured, unique
/// token names, known roles, and a `source_system` for every writer token.
#[derive(Debug, Clone)]
pub struct ValidApi {
    pub listen: std::net::SocketAddr,
    /// `false` when the `[api]` table is absent (the loopback default): a busy default port
    /// is then reported and the pipeline runs without the API.
    pub explicit: bool,
    /// (certificate chain, private key), both PEM files anchored at the config file.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub metrics_public: bool,
    pub max_body_bytes: u64,
    pub max_batch_writes: u64,
    pub tokens: Vec<ValidApiToken>,
    /// Read API and OData reads per caller per second (0: unlimited), and the burst.
    pub read_rate_per_sec: u64,
    pub read_burst: u64,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRole {
    /// Read everything (status, runs, quarantine, dead letters, writes, metrics).
    Viewer,
    /// What a viewer may, plus act: cancel runs, release and discard quarantined changes,
    /// submit writes.
    Operator,
    /// The writeback ingress only: submit writes and read them back.
    Writer,
}

impl ApiRole {
    pub const NAMES: &'static str = "viewer, operator or writer";

    pub fn parse(s: &str) -> Option<ApiRole> {
        match s {
            "viewer" => Some(ApiRole::Viewer),
            "operator" => Some(ApiRole::Operator),
            "writer" => Some(ApiRole::Writer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApiRole::Viewer => "viewer",
            ApiRole::Operator => "operator",
            ApiRole::Writer => "writer",
        }
    }
}

/// One validated `[[api.tokens]]` entry (the token itself is read by secret resolution).
#[derive(Debug, Clone)]
pub struct ValidApiToken {
    pub name: String,
    pub role: ApiRole,
    /// Where the token is: an environment variable, a file (anchored) or an AWS secret.
    pub source: SecretRef,
    /// The config key of the source, for errors: `api.tokens[0].token_env`,
    /// `api.tokens[0].token.aws_secret`.
    pub source_key: String,
    pub source_system: Option<String>,
    /// May read PII in clear (read API, OData).
    pub pii: bool,
}

#[derive(Debug, Clone)]
pub struct ValidSalesforce {
    /// Without a trailing slash; `None` only with a credentials file (which then supplies it).
    pub instance_url: Option<String>,
    pub api_version: String,
    pub credentials: CredentialsSource,
    /// Absolute or relative to the working directory (anchored at the config file).
    pub ca_file: Option<PathBuf>,
    pub client_id_header: String,
    pub pubsub_address: Option<String>,
    pub budget: sfsync_salesforce::BudgetConfig,
}

/// Exactly one source of Salesforce credentials.
#[derive(Debug, Clone)]
pub enum CredentialsSource {
    /// An emulator-style credentials JSON file (anchored at the config file).
    File(PathBuf),
    /// An explicit flow; secret file references are anchored at the config file.
    Auth(AuthConfig),
}

impl CredentialsSource {
    /// For summaries: `credentials_file (path)` or the flow name.
    pub fn describe(&self) -> String {
        match self {
            CredentialsSource::File(p) => format!("credentials_file {}", p.display()),
            CredentialsSource::Auth(a) => a.flow_name().to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ValidObject {
    pub name: String,
    /// `None` for `mode = "poll"`.
    pub channel: Option<String>,
    pub history: Option<HistoryFields>,
    pub pii_fields: Vec<String>,
    pub mode: SyncMode,
    pub quality: sfsync_pipeline::quality::QualitySpec,
    /// Formula fields synced as columns (checked against describe at start).
    pub formula_fields: sfsync_pipeline::model::FormulaFields,
    /// Integration map: the answerable team and the freshness target (seconds).
    pub team: Option<String>,
    pub sla_secs: Option<u64>,
}

#[derive(Debug, Clone)]
pub enum ValidWarehouse {
    Sqlite { path: PathBuf },
    Postgres { url: SecretRef, schema: String },
}

impl ValidWarehouse {
    pub fn describe(&self) -> String {
        match self {
            ValidWarehouse::Sqlite { path } => format!("sqlite {}", path.display()),
            ValidWarehouse::Postgres { schema, .. } => format!("postgres (schema {schema})"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ValidPii {
    pub key: PiiKeySource,
    /// Where `key` is given in the table, for errors: `key_file`, `key.aws_secret`,
    /// `wrapped_key_file`.
    pub key_field: String,
    pub key_id: String,
    /// Retired keys, in file order: ids unique and all different from `key_id`.
    pub old_keys: Vec<ValidOldKey>,
}

/// One `[[pii.old_keys]]` entry.
#[derive(Debug, Clone)]
pub struct ValidOldKey {
    pub key: PiiKeySource,
    /// As [`ValidPii::key_field`].
    pub key_field: String,
    pub key_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PiiKeySource {
    /// `key_file`, or `key = { file = … }` (anchored).
    File(PathBuf),
    /// `key_env`, or `key = { env = … }`.
    Env(String),
    /// `key = { aws_secret = … }`: the 64 hex digits in AWS Secrets Manager.
    Aws(AwsSecretRef),
    /// `kms_key_id` + `wrapped_key_file`: a data key wrapped by AWS KMS, unwrapped at start.
    Kms {
        kms_key_id: String,
        wrapped_key_file: PathBuf,
    },
}

impl PiiKeySource {
    /// For summaries (never the key): `env SFSYNC_PII_KEY`, `file …`, `AWS Secrets Manager
    /// secret '…'`, `KMS-wrapped data key … (KMS key …)`.
    pub fn describe(&self) -> String {
        match self {
            PiiKeySource::File(p) => format!("file {}", p.display()),
            PiiKeySource::Env(v) => format!("environment variable {v}"),
            PiiKeySource::Aws(a) => format!("AWS Secrets Manager secret {}", a.describe()),
            PiiKeySource::Kms {
                kms_key_id,
                wrapped_key_file,
            } => format!(
                "data key {} wrapped by KMS key {kms_key_id}",
                wrapped_key_file.display()
            ),
        }
    }
}

/// The default CDC channel of an object: `/data/AccountChangeEvent`,
/// `/data/Service_Request__ChangeEvent` for `Service_Request__c`.
pub use sfsync_pipeline::model::default_channel;

/// A Salesforce API name: a letter, then letters, digits and underscores.
fn is_api_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.contains(char::is_whitespace))
}

struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError::new(key, message));
    }
}

fn anchor(base: &Path, p: &Path) -> PathBuf {
    if p.is_relative() {
        base.join(p)
    } else {
        p.to_path_buf()
    }
}

fn check_secret(errs: &mut Errors, key: &str, s: &SecretRef, base: &Path) -> SecretRef {
    match s {
        SecretRef::Aws(a) => {
            check_aws_secret(errs, key, a);
            s.clone()
        }
        SecretRef::Env(v) => {
            if !is_env_name(v) {
                errs.push(
                    format!("{key}.env"),
                    format!("\"{v}\" is not a valid environment variable name"),
                );
            }
            s.clone()
        }
        SecretRef::File(p) => {
            if p.as_os_str().is_empty() {
                errs.push(format!("{key}.file"), "the path is empty");
            }
            SecretRef::File(anchor(base, p))
        }
    }
}

/// The most characters of a Secrets Manager secret name or ARN, or of a KMS key reference.
const MAX_AWS_ID_CHARS: usize = 2048;

/// An AWS id (secret name or ARN, KMS key id, ARN or alias): non-empty, no whitespace or
/// control characters, at most [`MAX_AWS_ID_CHARS`].
fn check_aws_id(errs: &mut Errors, key: &str, v: &str, what: &str) {
    if v.trim().is_empty() {
        errs.push(key, format!("the {what} is empty"));
    } else if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        errs.push(
            key,
            format!("\"{v}\" is not a {what}: it contains whitespace or control characters"),
        );
    } else if v.chars().count() > MAX_AWS_ID_CHARS {
        errs.push(
            key,
            format!("the {what} is longer than {MAX_AWS_ID_CHARS} characters"),
        );
    }
}

fn check_aws_secret(errs: &mut Errors, key: &str, a: &AwsSecretRef) {
    check_aws_id(
        errs,
        &format!("{key}.aws_secret"),
        &a.secret_id,
        "secret name or ARN",
    );
    if let Some(k) = &a.json_key {
        if k.is_empty() {
            errs.push(format!("{key}.json_key"), "must not be empty");
        }
    }
    if let Some(v) = &a.version_stage {
        if v.trim().is_empty() || v.chars().count() > 256 {
            errs.push(
                format!("{key}.version_stage"),
                "must be 1 to 256 characters (e.g. AWSCURRENT, AWSPREVIOUS)",
            );
        }
    }
}

fn non_empty(errs: &mut Errors, key: &str, v: &str) {
    if v.trim().is_empty() {
        errs.push(key, "must not be empty");
    }
}

fn check_url(errs: &mut Errors, key: &str, v: &str) {
    if !is_http_url(v) {
        errs.push(key, format!("\"{v}\" is not an http(s) URL"));
    }
}

impl SfsyncConfig {
    /// Checks the semantics. Pure: `base_dir` (the config file's directory) only anchors
    /// relative paths; nothing is read.
    pub fn validate(&self, base_dir: &Path) -> Result<ValidConfig, Vec<ConfigError>> {
        let mut errs = Errors(Vec::new());
        let salesforce = match &self.salesforce {
            None => {
                errs.push("salesforce", "missing table [salesforce]");
                None
            }
            Some(sf) => validate_salesforce(&mut errs, sf, base_dir),
        };
        let objects = validate_objects(&mut errs, &self.objects, self.pii.is_some());
        let warehouse = match &self.warehouse {
            None => {
                errs.push(
                    "warehouse",
                    "missing table [warehouse] (type = \"sqlite\" or \"postgres\")",
                );
                None
            }
            Some(WarehouseConfig::Sqlite(s)) => {
                if s.path.as_os_str().is_empty() {
                    errs.push("warehouse.path", "the path is empty");
                }
                Some(ValidWarehouse::Sqlite {
                    path: anchor(base_dir, &s.path),
                })
            }
            Some(WarehouseConfig::Postgres(p)) => {
                let url = check_secret(&mut errs, "warehouse.url", &p.url, base_dir);
                if !is_api_name(&p.schema) {
                    errs.push(
                        "warehouse.schema",
                        format!("\"{}\" is not a valid schema name", p.schema),
                    );
                }
                Some(ValidWarehouse::Postgres {
                    url,
                    schema: p.schema.clone(),
                })
            }
        };
        let pii = self.pii.as_ref().and_then(|pii| {
            check_key_id(&mut errs, "pii.key_id", &pii.key_id);
            let key = check_key_source(&mut errs, "pii", pii.into(), base_dir);
            let old_keys = validate_old_keys(&mut errs, pii, base_dir);
            key.map(|(key, key_field)| ValidPii {
                key,
                key_field,
                key_id: pii.key_id.clone(),
                old_keys,
            })
        });
        let p = &self.pipeline;
        for (name, v) in [
            ("batch_max_records", p.batch_max_records),
            ("batch_max_wait_ms", p.batch_max_wait_ms),
            ("fetch_records", p.fetch_records),
            ("queue_capacity_records", p.queue_capacity_records),
            ("gap_reread_batch_records", p.gap_reread_batch_records),
            ("poll_interval_secs", p.poll_interval_secs),
            ("poll_overlap_secs", p.poll_overlap_secs),
            ("poll_page_records", p.poll_page_records),
            ("cdc_fallback_after_secs", p.cdc_fallback_after_secs),
            ("shutdown_timeout_secs", p.shutdown_timeout_secs),
            (
                "max_stored_failures_per_rule",
                p.max_stored_failures_per_rule,
            ),
            ("backfill_page_records", p.backfill_page_records),
            ("formula_refresh_secs", p.formula_refresh_secs),
            ("job_slice_secs", p.job_slice_secs),
            (
                "reconcile_interval_secs",
                p.reconcile_interval_secs.unwrap_or(1),
            ),
        ] {
            if v == 0 {
                errs.push(format!("pipeline.{name}"), "must be greater than 0");
            }
        }
        if p.poll_bulk_threshold != 0 && p.poll_bulk_threshold < MIN_POLL_BULK_THRESHOLD {
            errs.push(
                "pipeline.poll_bulk_threshold",
                format!(
                    "{} is below {MIN_POLL_BULK_THRESHOLD}: use 0 (never read a poll backlog through Bulk API 2.0) or at least {MIN_POLL_BULK_THRESHOLD} rows (one REST page)",
                    p.poll_bulk_threshold
                ),
            );
        }
        if p.fetch_records > 100 {
            errs.push(
                "pipeline.fetch_records",
                format!(
                    "{} is over the Pub/Sub API maximum of 100 events per fetch",
                    p.fetch_records
                ),
            );
        }
        let writeback = validate_writeback(&mut errs, self.writeback.as_ref(), &self.objects);
        let writeback_flows = writeback_flows(&mut errs, self.writeback.as_ref());
        let writeback_delivery = validate_writeback_delivery(&mut errs, self.writeback.as_ref());
        let api = validate_api(&mut errs, self.api.as_ref(), base_dir);
        let archive = validate_archive(
            &mut errs,
            self.archive.as_ref(),
            warehouse.as_ref(),
            base_dir,
        );
        let platform_events = validate_platform_events(&mut errs, self.platform_events.as_ref());
        let sinks = validate_sinks(
            &mut errs,
            &self.sinks,
            &self.objects,
            &platform_events,
            base_dir,
        );
        let freshness = validate_freshness(&mut errs, self.freshness.as_ref(), &self.objects);
        let log = validate_log(&mut errs, self.log.as_ref(), warehouse.as_ref(), base_dir);
        let odata = validate_odata(
            &mut errs,
            self.odata.as_ref(),
            &self.objects,
            api.as_ref(),
            base_dir,
        );
        let outbound_messages = validate_outbound_messages(
            &mut errs,
            &self.outbound_messages,
            &self.objects,
            api.as_ref(),
            &log,
            base_dir,
        );
        match (salesforce, warehouse) {
            (Some(salesforce), Some(warehouse)) if errs.0.is_empty() => Ok(ValidConfig {
                odata,
                platform_events,
                outbound_messages,
                archive,
                sinks,
                freshness,
                log,
                writeback,
                writeback_flows,
                writeback_delivery,
                api,
                salesforce,
                objects,
                warehouse,
                pii,
                pipeline: p.clone(),
            }),
            _ => Err(errs.0),
        }
    }
}

/// `[log]`: `store` or `kafka`; Kafka needs brokers, a topic, positive figures and the
/// Postgres warehouse (apply workers on several machines commit curated rows and partition
/// offsets in one Postgres transaction).
fn validate_log(
    errs: &mut Errors,
    l: Option<&LogConfig>,
    warehouse: Option<&ValidWarehouse>,
    base_dir: &Path,
) -> ValidLog {
    let d = LogConfig::default();
    let l = l.unwrap_or(&d);
    if l.lease_ttl_secs < 2 {
        errs.push("log.lease_ttl_secs", "must be at least 2");
    }
    let node_name = match &l.node_name {
        Some(n) if n.trim().is_empty() || n.len() > 200 => {
            errs.push("log.node_name", "must be 1 to 200 characters");
            n.clone()
        }
        Some(n) => n.clone(),
        None => format!(
            "{}-{}",
            std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "sfsync".into()),
            std::process::id()
        ),
    };
    let base = ValidLog {
        sasl_password: None,
        kafka: None,
        lease_ttl: std::time::Duration::from_secs(l.lease_ttl_secs.max(2)),
        node_name,
    };
    match l.backend.as_str() {
        "store" => {
            if l.brokers.is_some() {
                errs.push(
                    "log.brokers",
                    "is a kafka setting; log.backend is \"store\"",
                );
            }
            base
        }
        "kafka" => {
            let before = errs.0.len();
            if matches!(warehouse, Some(ValidWarehouse::Sqlite { .. })) {
                errs.push(
                    "log.backend",
                    "\"kafka\" needs the Postgres warehouse (curated rows and partition offsets \
                     commit in one Postgres transaction); set [warehouse] kind = \"postgres\"",
                );
            }
            let topic_ok = !l.topic.is_empty()
                && l.topic.len() <= 249
                && l.topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !topic_ok {
                errs.push(
                    "log.topic",
                    format!("'{}': 1–249 of letters, digits, '.', '_', '-'", l.topic),
                );
            }
            if l.partitions < 1 {
                errs.push("log.partitions", "must be at least 1");
            }
            if l.replication_factor < 1 {
                errs.push("log.replication_factor", "must be at least 1");
            }
            if l.group.trim().is_empty() {
                errs.push("log.group", "must not be empty");
            }
            if l.delivery_timeout_secs < 1 {
                errs.push("log.delivery_timeout_secs", "must be at least 1");
            }
            let brokers = match &l.brokers {
                None => {
                    errs.push(
                        "log.brokers",
                        "log.backend = \"kafka\" needs brokers = \"host:port\"",
                    );
                    None
                }
                Some(b) if !brokers_ok(b) => {
                    errs.push(
                        "log.brokers",
                        format!("'{b}': expected host:port[,host:port…]"),
                    );
                    None
                }
                Some(b) => Some(b.clone()),
            };
            let security = kafka_security(errs, l);
            match brokers {
                Some(b) if errs.0.len() == before => ValidLog {
                    sasl_password: l
                        .sasl_password
                        .as_ref()
                        .map(|r| check_secret(errs, "log.sasl_password", r, base_dir)),
                    kafka: Some(sfsync_pipeline::kafka_log::KafkaLogConfig {
                        kafka: sfsync_kafka::KafkaConfig {
                            security_protocol: security.0,
                            sasl_mechanism: security.1,
                            sasl_username: l.sasl_username.clone(),
                            ca_file: l.ca_file.as_ref().map(|p| anchor(base_dir, p)),
                            ..sfsync_kafka::KafkaConfig::plaintext(b)
                        },
                        topic: l.topic.clone(),
                        partitions: l.partitions,
                        replication_factor: l.replication_factor,
                        group: l.group.clone(),
                        delivery_timeout: std::time::Duration::from_secs(l.delivery_timeout_secs),
                    }),
                    ..base
                },
                _ => base,
            }
        }
        other => {
            errs.push("log.backend", format!("'{other}': expected store or kafka"));
            base
        }
    }
}

/// `[log]`'s Kafka security settings: the protocol and SASL mechanism, with every
/// inconsistency reported (SASL fields without `sasl_ssl`, `sasl_ssl` without them).
fn kafka_security(
    errs: &mut Errors,
    l: &LogConfig,
) -> (
    sfsync_kafka::SecurityProtocol,
    Option<sfsync_kafka::SaslMechanism>,
) {
    use sfsync_kafka::{SaslMechanism, SecurityProtocol};
    let protocol = match l.security_protocol.as_str() {
        "plaintext" => SecurityProtocol::Plaintext,
        "ssl" => SecurityProtocol::Ssl,
        "sasl_ssl" => SecurityProtocol::SaslSsl,
        other => {
            errs.push(
                "log.security_protocol",
                format!("'{other}': expected plaintext, ssl or sasl_ssl"),
            );
            SecurityProtocol::Plaintext
        }
    };
    let mechanism = match l.sasl_mechanism.as_deref() {
        None => None,
        Some("scram_sha_512") => Some(SaslMechanism::ScramSha512),
        Some("scram_sha_256") => Some(SaslMechanism::ScramSha256),
        Some("plain") => Some(SaslMechanism::Plain),
        Some(other) => {
            errs.push(
                "log.sasl_mechanism",
                format!("'{other}': expected scram_sha_512, scram_sha_256 or plain"),
            );
            None
        }
    };
    let sasl = protocol == SecurityProtocol::SaslSsl;
    for (key, set) in [
        ("log.sasl_mechanism", l.sasl_mechanism.is_some()),
        ("log.sasl_username", l.sasl_username.is_some()),
        ("log.sasl_password", l.sasl_password.is_some()),
    ] {
        if sasl && !set {
            errs.push(key, "security_protocol = \"sasl_ssl\" needs it");
        } else if !sasl && set {
            errs.push(
                key,
                "is a SASL setting; set security_protocol = \"sasl_ssl\" to use it",
            );
        }
    }
    if let Some(p) = &l.ca_file {
        if protocol == SecurityProtocol::Plaintext {
            errs.push(
                "log.ca_file",
                "is a TLS setting; security_protocol is \"plaintext\"",
            );
        } else if p.as_os_str().is_empty() {
            errs.push("log.ca_file", "the path is empty");
        }
    }
    (protocol, mechanism)
}

/// Kafka bootstrap servers: `host:port[,host:port…]`.
fn brokers_ok(brokers: &str) -> bool {
    brokers.split(',').all(|h| {
        h.trim()
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
    })
}

/// The longest key id the keyring accepts (it is stored in every sealed value).
const MAX_KEY_ID_BYTES: usize = 255;

/// A PII key id: letters, digits, `_`, `.`, `-`, at most 255 bytes (a subset of what the
/// keyring accepts, so building it from a valid config cannot fail on an id).
fn check_key_id(errs: &mut Errors, key: &str, id: &str) {
    if let Some(problem) = key_id_problem(id) {
        errs.push(key, problem);
    }
}

/// What is wrong with a PII key id, if anything (the rule of `pii.key_id`).
pub fn key_id_problem(id: &str) -> Option<String> {
    let valid = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !valid {
        Some("must be non-empty letters, digits, `_`, `.` or `-`".into())
    } else if id.len() > MAX_KEY_ID_BYTES {
        Some(format!("must be at most {MAX_KEY_ID_BYTES} characters"))
    } else {
        None
    }
}

/// The key-source fields of `[pii]` and of each `[[pii.old_keys]]` entry.
struct KeyFields<'a> {
    key_file: &'a Option<PathBuf>,
    key_env: &'a Option<String>,
    key: &'a Option<SecretRef>,
    kms_key_id: &'a Option<String>,
    wrapped_key_file: &'a Option<PathBuf>,
}

impl<'a> From<&'a PiiConfig> for KeyFields<'a> {
    fn from(p: &'a PiiConfig) -> Self {
        KeyFields {
            key_file: &p.key_file,
            key_env: &p.key_env,
            key: &p.key,
            kms_key_id: &p.kms_key_id,
            wrapped_key_file: &p.wrapped_key_file,
        }
    }
}

impl<'a> From<&'a PiiOldKey> for KeyFields<'a> {
    fn from(p: &'a PiiOldKey) -> Self {
        KeyFields {
            key_file: &p.key_file,
            key_env: &p.key_env,
            key: &p.key,
            kms_key_id: &p.kms_key_id,
            wrapped_key_file: &p.wrapped_key_file,
        }
    }
}

/// Exactly one key source of the key table at `table` (`pii`, `pii.old_keys[1]`): `key_file`,
/// `key_env`, `key` (a secret reference) or `kms_key_id` + `wrapped_key_file` (both).
fn check_key_source(
    errs: &mut Errors,
    table: &str,
    f: KeyFields<'_>,
    base: &Path,
) -> Option<(PiiKeySource, String)> {
    let mut ok = true;
    match (f.kms_key_id, f.wrapped_key_file) {
        (Some(k), _) => check_aws_id(errs, &format!("{table}.kms_key_id"), k, "KMS key id"),
        (None, Some(_)) => {
            errs.push(
                format!("{table}.wrapped_key_file"),
                "needs kms_key_id: the KMS key that wraps it (id, ARN or alias/…)",
            );
            ok = false;
        }
        (None, None) => {}
    }
    if f.kms_key_id.is_some() && f.wrapped_key_file.is_none() {
        errs.push(
            format!("{table}.kms_key_id"),
            "needs wrapped_key_file: the data key wrapped by this KMS key (`sfsync keys \
             kms-generate` writes one)",
        );
        ok = false;
    }
    let given: Vec<&str> = [
        ("key_file", f.key_file.is_some()),
        ("key_env", f.key_env.is_some()),
        ("key", f.key.is_some()),
        ("wrapped_key_file", f.wrapped_key_file.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, set)| set.then_some(n))
    .collect();
    match given.as_slice() {
        [] if ok => {
            errs.push(
                table,
                "no key: set key_file, key_env, key (a secret reference) or kms_key_id + \
                 wrapped_key_file",
            );
            return None;
        }
        [] => return None,
        ["key_file", "key_env"] => {
            errs.push(
                format!("{table}.key_env"),
                "give either key_file or key_env, not both",
            );
            return None;
        }
        [_, second, ..] => {
            errs.push(
                format!("{table}.{second}"),
                format!(
                    "give only one key source (found {}): key_file, key_env, key or \
                     kms_key_id + wrapped_key_file",
                    given.join(", ")
                ),
            );
            return None;
        }
        [_] => {}
    }
    if let Some(p) = f.key_file {
        if p.as_os_str().is_empty() {
            errs.push(format!("{table}.key_file"), "the path is empty");
        }
        return Some((PiiKeySource::File(anchor(base, p)), "key_file".into()));
    }
    if let Some(v) = f.key_env {
        if !is_env_name(v) {
            errs.push(
                format!("{table}.key_env"),
                format!("\"{v}\" is not a valid environment variable name"),
            );
        }
        return Some((PiiKeySource::Env(v.clone()), "key_env".into()));
    }
    if let Some(r) = f.key {
        let r = check_secret(errs, &format!("{table}.key"), r, base);
        let field = format!("key.{}", r.field());
        return Some((
            match r {
                SecretRef::Env(v) => PiiKeySource::Env(v),
                SecretRef::File(p) => PiiKeySource::File(p),
                SecretRef::Aws(a) => PiiKeySource::Aws(*a),
            },
            field,
        ));
    }
    match (f.kms_key_id, f.wrapped_key_file) {
        (Some(k), Some(p)) if ok => {
            if p.as_os_str().is_empty() {
                errs.push(format!("{table}.wrapped_key_file"), "the path is empty");
            }
            Some((
                PiiKeySource::Kms {
                    kms_key_id: k.clone(),
                    wrapped_key_file: anchor(base, p),
                },
                "wrapped_key_file".into(),
            ))
        }
        _ => None,
    }
}

/// `[[pii.old_keys]]`: each entry like the current key, ids unique and none the current id.
fn validate_old_keys(errs: &mut Errors, pii: &PiiConfig, base: &Path) -> Vec<ValidOldKey> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, old) in pii.old_keys.iter().enumerate() {
        let table = format!("pii.old_keys[{i}]");
        let id_key = format!("{table}.key_id");
        check_key_id(errs, &id_key, &old.key_id);
        if old.key_id == pii.key_id {
            errs.push(
                &id_key,
                format!(
                    "\"{}\" is the current key (pii.key_id); old_keys lists only retired keys",
                    old.key_id
                ),
            );
        } else if let Some(first) = seen.insert(&old.key_id, i) {
            errs.push(
                &id_key,
                format!(
                    "key id \"{}\" is given twice (also pii.old_keys[{first}])",
                    old.key_id
                ),
            );
        }
        if let Some((key, key_field)) = check_key_source(errs, &table, old.into(), base) {
            out.push(ValidOldKey {
                key,
                key_field,
                key_id: old.key_id.clone(),
            });
        }
    }
    out
}

fn validate_salesforce(
    errs: &mut Errors,
    sf: &SalesforceConfig,
    base: &Path,
) -> Option<ValidSalesforce> {
    if let Err(budget_errs) = sf.budget.validate() {
        for (key, message) in budget_errs {
            errs.push(format!("salesforce.budget.{key}"), message);
        }
    }
    if let Some(u) = &sf.instance_url {
        check_url(errs, "salesforce.instance_url", u);
    }
    let v = &sf.api_version;
    let version_ok = v.split_once('.').is_some_and(|(major, minor)| {
        !major.is_empty() && major.chars().all(|c| c.is_ascii_digit()) && minor == "0"
    });
    if !version_ok {
        errs.push(
            "salesforce.api_version",
            format!("\"{v}\" is not an API version like \"66.0\""),
        );
    }
    let h = &sf.client_id_header;
    if h.is_empty()
        || !h
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        errs.push(
            "salesforce.client_id_header",
            format!("\"{h}\" must be non-empty letters, digits, `_`, `-` or `.`"),
        );
    }
    if let Some(a) = &sf.pubsub_address {
        let ok = a
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            errs.push(
                "salesforce.pubsub_address",
                format!("\"{a}\" is not host:port"),
            );
        }
    }
    let credentials = match (&sf.credentials_file, &sf.auth) {
        (None, None) => {
            errs.push(
                "salesforce",
                "no credentials source: set credentials_file or a [salesforce.auth] table",
            );
            None
        }
        (Some(_), Some(_)) => {
            errs.push(
                "salesforce.auth",
                "give either credentials_file or [salesforce.auth], not both",
            );
            None
        }
        (Some(f), None) => Some(CredentialsSource::File(anchor(base, f))),
        (None, Some(auth)) => {
            if sf.instance_url.is_none() {
                errs.push(
                    "salesforce.instance_url",
                    "required with [salesforce.auth] (only a credentials_file can supply it)",
                );
            }
            Some(CredentialsSource::Auth(validate_auth(errs, auth, base)))
        }
    };
    Some(ValidSalesforce {
        instance_url: sf
            .instance_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_string()),
        api_version: sf.api_version.clone(),
        credentials: credentials?,
        ca_file: sf.ca_file.as_ref().map(|p| anchor(base, p)),
        client_id_header: sf.client_id_header.clone(),
        pubsub_address: sf.pubsub_address.clone(),
        budget: sf.budget.clone(),
    })
}

fn validate_auth(errs: &mut Errors, auth: &AuthConfig, base: &Path) -> AuthConfig {
    const P: &str = "salesforce.auth";
    let key = |k: &str| format!("{P}.{k}");
    let login = |errs: &mut Errors, l: &Option<String>| {
        if let Some(u) = l {
            check_url(errs, &key("login_url"), u);
        }
    };
    match auth {
        AuthConfig::JwtBearer(a) => {
            login(errs, &a.login_url);
            non_empty(errs, &key("client_id"), &a.client_id);
            non_empty(errs, &key("username"), &a.username);
            AuthConfig::JwtBearer(JwtBearerAuth {
                private_key: check_secret(errs, &key("private_key"), &a.private_key, base),
                ..a.clone()
            })
        }
        AuthConfig::ClientCredentials(a) => {
            non_empty(errs, &key("client_id"), &a.client_id);
            AuthConfig::ClientCredentials(ClientCredentialsAuth {
                client_secret: check_secret(errs, &key("client_secret"), &a.client_secret, base),
                ..a.clone()
            })
        }
        AuthConfig::RefreshToken(a) => {
            login(errs, &a.login_url);
            non_empty(errs, &key("client_id"), &a.client_id);
            AuthConfig::RefreshToken(RefreshTokenAuth {
                client_secret: a
                    .client_secret
                    .as_ref()
                    .map(|s| check_secret(errs, &key("client_secret"), s, base)),
                refresh_token: check_secret(errs, &key("refresh_token"), &a.refresh_token, base),
                ..a.clone()
            })
        }
        AuthConfig::Password(a) => {
            login(errs, &a.login_url);
            non_empty(errs, &key("client_id"), &a.client_id);
            non_empty(errs, &key("username"), &a.username);
            AuthConfig::Password(PasswordAuth {
                client_secret: check_secret(errs, &key("client_secret"), &a.client_secret, base),
                password: check_secret(errs, &key("password"), &a.password, base),
                security_token: a
                    .security_token
                    .as_ref()
                    .map(|s| check_secret(errs, &key("security_token"), s, base)),
                ..a.clone()
            })
        }
    }
}

fn check_field_list(errs: &mut Errors, key: &str, fields: &[String]) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (j, f) in fields.iter().enumerate() {
        let k = format!("{key}[{j}]");
        if !is_api_name(f) {
            errs.push(&k, format!("\"{f}\" is not a valid field API name"));
        } else if let Some(first) = seen.insert(f.to_ascii_lowercase(), j) {
            errs.push(
                &k,
                format!("\"{f}\" is listed twice (also at {key}[{first}])"),
            );
        }
    }
}

/// The data-quality settings of one object (`p` is its key path, `objects[i]`).
fn validate_quality(
    errs: &mut Errors,
    p: &str,
    o: &super::model::ObjectConfig,
    objects: &[String],
) -> sfsync_pipeline::quality::QualitySpec {
    use sfsync_pipeline::quality::{CheckSpec, QualitySpec, ReferenceSpec, RuleSpec, Severity};
    check_field_list(errs, &format!("{p}.required"), &o.required);
    let mut rules = Vec::new();
    for (j, r) in o.rules.iter().enumerate() {
        let k = format!("{p}.rules[{j}]");
        if !is_api_name(&r.field) {
            errs.push(
                format!("{k}.field"),
                format!("\"{}\" is not a valid field API name", r.field),
            );
        }
        let severity = match r.severity.as_deref() {
            None | Some("error") => Severity::Error,
            Some("warn") => Severity::Warn,
            Some(other) => {
                errs.push(
                    format!("{k}.severity"),
                    format!("\"{other}\" is not a severity: use \"error\" (quarantine) or \"warn\" (apply and record)"),
                );
                Severity::Error
            }
        };
        let unused = |errs: &mut Errors, what: &str, used_by: &str| {
            errs.push(
                format!("{k}.{what}"),
                format!("only used with check = \"{used_by}\""),
            );
        };
        let check = match r.check.as_str() {
            "not_null" => Some(CheckSpec::NotNull),
            "unique" => Some(CheckSpec::Unique),
            "accepted_values" => {
                if r.values.is_empty() {
                    errs.push(format!("{k}.values"), "list the accepted values");
                }
                Some(CheckSpec::AcceptedValues(r.values.clone()))
            }
            "regex" => match &r.pattern {
                None => {
                    errs.push(
                        format!("{k}.pattern"),
                        "give the pattern the value must match",
                    );
                    None
                }
                Some(pat) => match regex::Regex::new(pat) {
                    Ok(_) => Some(CheckSpec::Regex(pat.clone())),
                    Err(e) => {
                        errs.push(format!("{k}.pattern"), format!("does not compile: {e}"));
                        None
                    }
                },
            },
            "range" => {
                if r.min.is_none() && r.max.is_none() {
                    errs.push(format!("{k}.min"), "give min, max or both");
                }
                if let (Some(a), Some(b)) = (r.min, r.max) {
                    if a > b {
                        errs.push(format!("{k}.max"), format!("{b} is below min {a}"));
                    }
                }
                Some(CheckSpec::Range {
                    min: r.min,
                    max: r.max,
                })
            }
            other => {
                errs.push(
                    format!("{k}.check"),
                    format!("\"{other}\" is not a check: use not_null, accepted_values, regex, range or unique"),
                );
                None
            }
        };
        if r.check != "accepted_values" && !r.values.is_empty() {
            unused(errs, "values", "accepted_values");
        }
        if r.check != "regex" && r.pattern.is_some() {
            unused(errs, "pattern", "regex");
        }
        if r.check != "range" && (r.min.is_some() || r.max.is_some()) {
            unused(errs, "min", "range");
        }
        if r.check == "unique"
            && o.pii_fields
                .iter()
                .any(|f| f.eq_ignore_ascii_case(&r.field))
        {
            errs.push(
                format!("{k}.check"),
                "a PII field is stored sealed and cannot be checked for uniqueness",
            );
        }
        if let Some(check) = check {
            rules.push(RuleSpec {
                field: r.field.clone(),
                check,
                severity,
            });
        }
    }
    let mut references = Vec::new();
    for (j, r) in o.references.iter().enumerate() {
        let k = format!("{p}.references[{j}]");
        if !is_api_name(&r.field) {
            errs.push(
                format!("{k}.field"),
                format!("\"{}\" is not a valid field API name", r.field),
            );
        }
        if !objects.iter().any(|n| n == &r.object) {
            errs.push(
                format!("{k}.object"),
                format!(
                    "\"{}\" is not a configured object: the parent must be synced to be checked",
                    r.object
                ),
            );
        }
        if r.alert_after_secs == 0 {
            errs.push(format!("{k}.alert_after_secs"), "must be greater than 0");
        }
        references.push(ReferenceSpec {
            field: r.field.clone(),
            parent: r.object.clone(),
            alert_after_secs: r.alert_after_secs,
        });
    }
    QualitySpec {
        required: o.required.clone(),
        rules,
        references,
        schema_checks: o.schema_checks,
    }
}

fn validate_objects(
    errs: &mut Errors,
    objects: &[ObjectConfig],
    has_pii: bool,
) -> Vec<ValidObject> {
    if objects.is_empty() {
        errs.push(
            "objects",
            "no objects configured: add at least one [[objects]] table",
        );
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    let names: Vec<String> = objects.iter().map(|o| o.name.clone()).collect();
    let names = names.as_slice();
    for (i, o) in objects.iter().enumerate() {
        let p = format!("objects[{i}]");
        if o.name.is_empty() {
            errs.push(format!("{p}.name"), "the object name is empty");
        } else if !is_api_name(&o.name) {
            errs.push(
                format!("{p}.name"),
                format!("\"{}\" is not a valid object API name", o.name),
            );
        } else if let Some(first) = seen.insert(o.name.to_ascii_lowercase(), i) {
            errs.push(
                format!("{p}.name"),
                format!(
                    "object \"{}\" is configured twice (also objects[{first}])",
                    o.name
                ),
            );
        }
        let channel = match (o.mode, &o.channel) {
            (SyncMode::Poll | SyncMode::OutboundMessage, Some(_)) => {
                errs.push(
                    format!("{p}.channel"),
                    "a channel is only used with mode = \"cdc\"",
                );
                None
            }
            (SyncMode::Poll | SyncMode::OutboundMessage, None) => None,
            (SyncMode::Cdc, None) => Some(default_channel(&o.name)),
            (SyncMode::Cdc, Some(c)) => {
                let own = default_channel(&o.name);
                let custom = c
                    .strip_prefix("/data/")
                    .and_then(|n| n.strip_suffix("__chn"))
                    .is_some_and(is_api_name);
                if *c != own && !custom {
                    errs.push(
                        format!("{p}.channel"),
                        format!(
                            "\"{c}\" is not a channel of {}: use \"{own}\" or a custom channel \"/data/<Name>__chn\"",
                            o.name
                        ),
                    );
                }
                Some(c.clone())
            }
        };
        if let Some(h) = &o.history {
            match &h.fields {
                HistoryFields::All => {}
                HistoryFields::List(f) if f.is_empty() => errs.push(
                    format!("{p}.history.fields"),
                    "empty: list the tracked fields, write \"all\", or remove `history`",
                ),
                HistoryFields::List(f) => check_field_list(errs, &format!("{p}.history.fields"), f),
            }
        }
        check_field_list(errs, &format!("{p}.pii_fields"), &o.pii_fields);
        for (j, f) in o.pii_fields.iter().enumerate() {
            if f.eq_ignore_ascii_case("Id") {
                errs.push(
                    format!("{p}.pii_fields[{j}]"),
                    "Id is the record key and cannot be encrypted",
                );
            }
        }
        if !o.pii_fields.is_empty() && !has_pii {
            errs.push(
                format!("{p}.pii_fields"),
                "PII fields need a key: add a [pii] table with key_file or key_env",
            );
        }
        check_flow_meta(errs, &p, &o.team, o.sla_secs);
        let quality = validate_quality(errs, &p, o, names);
        use sfsync_pipeline::model::FormulaFields;
        let formula_fields = match &o.formula_fields {
            None | Some(FormulaFieldsConfig::All(false)) => FormulaFields::None,
            Some(FormulaFieldsConfig::All(true)) => FormulaFields::All,
            Some(FormulaFieldsConfig::List(list)) => {
                if list.is_empty() {
                    errs.push(
                        format!("{p}.formula_fields"),
                        "empty: list the formula fields, write true for all, or remove it",
                    );
                }
                check_field_list(errs, &format!("{p}.formula_fields"), list);
                if let Some(h) = &o.history {
                    if let HistoryFields::List(tracked) = &h.fields {
                        for (j, f) in tracked.iter().enumerate() {
                            if list.iter().any(|x| x.eq_ignore_ascii_case(f)) {
                                errs.push(
                                    format!("{p}.history.fields[{j}]"),
                                    format!(
                                        "\"{f}\" is a formula field: formula fields change without \
                                         a change event and cannot be tracked in history"
                                    ),
                                );
                            }
                        }
                    }
                }
                FormulaFields::Fields(list.clone())
            }
        };
        if !matches!(formula_fields, FormulaFields::None) && o.mode == SyncMode::Poll {
            errs.push(
                format!("{p}.formula_fields"),
                "formula fields are refreshed for mode = \"cdc\" objects only",
            );
        }
        out.push(ValidObject {
            name: o.name.clone(),
            channel,
            history: o.history.as_ref().map(|h| h.fields.clone()),
            pii_fields: o.pii_fields.clone(),
            mode: o.mode,
            quality,
            formula_fields,
            team: o.team.clone(),
            sla_secs: o.sla_secs,
        });
    }
    out
}

/// The integration-map facts of `[[writeback.objects]]`: `sla_secs` > 0, `team` not blank.
fn writeback_flows(errs: &mut Errors, wb: Option<&WritebackConfig>) -> Vec<FlowMeta> {
    let Some(wb) = wb else { return Vec::new() };
    wb.objects
        .iter()
        .enumerate()
        .map(|(i, o)| {
            check_flow_meta(
                errs,
                &format!("writeback.objects[{i}]"),
                &o.team,
                o.sla_secs,
            );
            FlowMeta {
                object: o.name.clone(),
                team: o.team.clone(),
                sla_secs: o.sla_secs,
            }
        })
        .collect()
}

/// `team` (when given) is not blank and `sla_secs` (when given) is > 0.
fn check_flow_meta(errs: &mut Errors, p: &str, team: &Option<String>, sla_secs: Option<u64>) {
    if team.as_deref().is_some_and(|t| t.trim().is_empty()) {
        errs.push(format!("{p}.team"), "must not be blank (or leave it out)");
    }
    if sla_secs == Some(0) {
        errs.push(format!("{p}.sla_secs"), "must be at least 1 second");
    }
}

/// `[[writeback.objects]]`: each object synced (`[[objects]]`) and named once, owners non-empty,
/// field names unique per object, and `source_of_truth` only with an owner (not `shared`).
/// TODO: field names are not checked against describe yet (unknown fields fail at delivery).
fn validate_writeback(
    errs: &mut Errors,
    wb: Option<&WritebackConfig>,
    objects: &[ObjectConfig],
) -> sfsync_pipeline::writeback::WritebackPolicy {
    use sfsync_pipeline::writeback::{ConflictPolicy, FieldRule, ObjectPolicy, Owner};
    let mut policy = sfsync_pipeline::writeback::WritebackPolicy::default();
    let Some(wb) = wb else {
        return policy;
    };
    let rule = |errs: &mut Errors, key: String, owner: &str, p: ConflictPolicy| {
        if owner.trim().is_empty() {
            errs.push(
                format!("{key}.owner"),
                "must be salesforce, shared or a system name",
            );
        } else if !owner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            errs.push(
                format!("{key}.owner"),
                format!("\"{owner}\" is not a valid system name (letters, digits, `_`, `.`, `-`)"),
            );
        }
        if owner == "shared" && p == ConflictPolicy::SourceOfTruth {
            errs.push(
                format!("{key}.policy"),
                "source_of_truth needs an owner (salesforce or a system), not shared",
            );
        }
        FieldRule {
            owner: Owner::parse(owner),
            policy: p,
        }
    };
    for (i, o) in wb.objects.iter().enumerate() {
        let key = format!("writeback.objects[{i}]");
        if !objects.iter().any(|s| s.name == o.name) {
            errs.push(
                format!("{key}.name"),
                format!(
                    "\"{}\" is not a synced object (add it to [[objects]])",
                    o.name
                ),
            );
        }
        if policy.objects.contains_key(&o.name) {
            errs.push(
                format!("{key}.name"),
                format!("\"{}\" is listed twice", o.name),
            );
        }
        let default = rule(errs, key.clone(), &o.owner, o.policy);
        let mut fields = std::collections::BTreeMap::new();
        for (j, f) in o.fields.iter().enumerate() {
            let fkey = format!("{key}.fields[{j}]");
            if !is_api_name(&f.name) {
                errs.push(
                    format!("{fkey}.name"),
                    format!("\"{}\" is not a valid field API name", f.name),
                );
            }
            let r = rule(errs, fkey.clone(), &f.owner, f.policy.unwrap_or(o.policy));
            if fields
                .keys()
                .any(|k: &String| k.eq_ignore_ascii_case(&f.name))
            {
                errs.push(
                    format!("{fkey}.name"),
                    format!("\"{}\" is listed twice for {}", f.name, o.name),
                );
            }
            fields.insert(f.name.clone(), r);
        }
        policy
            .objects
            .insert(o.name.clone(), ObjectPolicy { default, fields });
    }
    policy
}

/// `[writeback]` delivery keys: every count and time > 0 (`max_batch` ≥ 1, `lease_secs` long
/// enough for one call), `parent_field` a field API name.
fn validate_writeback_delivery(
    errs: &mut Errors,
    wb: Option<&WritebackConfig>,
) -> WritebackDelivery {
    let Some(wb) = wb else {
        return WritebackDelivery::default();
    };
    for (key, v) in [
        ("writeback.linger_ms", wb.linger_ms),
        ("writeback.max_batch", wb.max_batch),
        ("writeback.bulk_threshold", wb.bulk_threshold),
        ("writeback.max_attempts", wb.max_attempts),
        ("writeback.lease_secs", wb.lease_secs),
    ] {
        if v == 0 {
            errs.push(key.to_string(), "must be greater than 0");
        }
    }
    if wb.max_attempts > 100 {
        errs.push(
            "writeback.max_attempts".to_string(),
            format!("{} is too many (at most 100)", wb.max_attempts),
        );
    }
    if wb.max_batch > 100_000 {
        errs.push(
            "writeback.max_batch".to_string(),
            format!(
                "{} is too large (at most 100000 writes per round)",
                wb.max_batch
            ),
        );
    }
    let mut parent_fields = std::collections::BTreeMap::new();
    for (i, o) in wb.objects.iter().enumerate() {
        if let Some(f) = &o.parent_field {
            if !is_api_name(f) {
                errs.push(
                    format!("writeback.objects[{i}].parent_field"),
                    format!("\"{f}\" is not a valid field API name"),
                );
            }
            parent_fields.insert(o.name.clone(), f.clone());
        }
    }
    WritebackDelivery {
        linger_ms: wb.linger_ms,
        max_batch: wb.max_batch,
        bulk_threshold: wb.bulk_threshold,
        max_attempts: wb.max_attempts.min(u64::from(u32::MAX)) as u32,
        lease_secs: wb.lease_secs,
        parent_fields,
    }
}

/// A deployment file's `[api]` (see [`super::deployment`]), validated exactly like a config's.
pub(crate) fn api_table(
    api: Option<&ApiConfig>,
    base: &Path,
) -> (Option<ValidApi>, Vec<ConfigError>) {
    let mut errs = Errors(Vec::new());
    let valid = validate_api(&mut errs, api, base);
    (valid, errs.0)
}

/// `[api]`: `listen` an `IP:port`; a listener that is not loopback-only needs both TLS files
/// (plain HTTP would carry bearer tokens in the clear); roles known; token names unique; exactly
/// one of `token_env` / `token_file`; writer tokens bound to a `source_system`.
fn validate_api(errs: &mut Errors, api: Option<&ApiConfig>, base: &Path) -> Option<ValidApi> {
    let explicit = api.is_some();
    let default = ApiConfig::default();
    let api = api.unwrap_or(&default);
    if !api.enabled {
        return None;
    }
    let listen = match api.listen.parse::<std::net::SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                "api.listen",
                format!(
                    "\"{}\" is not IP:port (e.g. \"127.0.0.1:8787\", \"0.0.0.0:8787\", \"[::1]:8787\")",
                    api.listen
                ),
            );
            None
        }
    };
    let tls = match (&api.tls_cert_file, &api.tls_key_file) {
        (Some(c), Some(k)) => {
            for (key, p) in [("api.tls_cert_file", c), ("api.tls_key_file", k)] {
                if p.as_os_str().is_empty() {
                    errs.push(key, "the path is empty");
                }
            }
            Some((anchor(base, c), anchor(base, k)))
        }
        (Some(_), None) => {
            errs.push("api.tls_key_file", "required with api.tls_cert_file");
            None
        }
        (None, Some(_)) => {
            errs.push("api.tls_cert_file", "required with api.tls_key_file");
            None
        }
        (None, None) => None,
    };
    if let Some(a) = listen {
        if !a.ip().is_loopback()
            && tls.is_none()
            && api.tls_cert_file.is_none()
            && api.tls_key_file.is_none()
        {
            errs.push(
                "api.listen",
                format!(
                    "\"{a}\" is not a loopback address: serving bearer tokens over plain HTTP is refused; set api.tls_cert_file and api.tls_key_file, or listen on 127.0.0.1"
                ),
            );
        }
    }
    if api.read_rate_per_sec > 0 && api.read_burst == 0 {
        errs.push(
            "api.read_burst",
            "must be greater than 0 when api.read_rate_per_sec is set",
        );
    }
    for (key, v) in [
        ("api.max_body_bytes", api.max_body_bytes),
        ("api.max_batch_writes", api.max_batch_writes),
    ] {
        if v == 0 {
            errs.push(key, "must be greater than 0");
        }
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut tokens = Vec::new();
    for (i, t) in api.tokens.iter().enumerate() {
        let p = format!("api.tokens[{i}]");
        if t.name.trim().is_empty()
            || !t
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-@".contains(c))
        {
            errs.push(
                format!("{p}.name"),
                format!(
                    "\"{}\" must be non-empty letters, digits, `_`, `.`, `-` or `@` (it is recorded as who acted)",
                    t.name
                ),
            );
        } else if let Some(first) = seen.insert(&t.name, i) {
            errs.push(
                format!("{p}.name"),
                format!(
                    "token name \"{}\" is given twice (also api.tokens[{first}])",
                    t.name
                ),
            );
        }
        let role = ApiRole::parse(&t.role);
        if role.is_none() {
            errs.push(
                format!("{p}.role"),
                format!("unknown role \"{}\", expected {}", t.role, ApiRole::NAMES),
            );
        }
        if let Some(s) = &t.source_system {
            if s.trim().is_empty()
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            {
                errs.push(
                    format!("{p}.source_system"),
                    format!("\"{s}\" is not a valid system name (letters, digits, `_`, `.`, `-`)"),
                );
            }
        } else if role == Some(ApiRole::Writer) {
            errs.push(
                format!("{p}.source_system"),
                "required for a writer token: it may only write as that system",
            );
        }
        let given: Vec<&str> = [
            ("token_env", t.token_env.is_some()),
            ("token_file", t.token_file.is_some()),
            ("token", t.token.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, set)| set.then_some(n))
        .collect();
        let source = match (given.as_slice(), &t.token_env, &t.token_file, &t.token) {
            (["token_env"], Some(v), _, _) => {
                if !is_env_name(v) {
                    errs.push(
                        format!("{p}.token_env"),
                        format!("\"{v}\" is not a valid environment variable name"),
                    );
                }
                Some((SecretRef::Env(v.clone()), format!("{p}.token_env")))
            }
            (["token_file"], _, Some(f), _) => {
                if f.as_os_str().is_empty() {
                    errs.push(format!("{p}.token_file"), "the path is empty");
                }
                Some((SecretRef::File(anchor(base, f)), format!("{p}.token_file")))
            }
            (["token"], _, _, Some(r)) => {
                let key = format!("{p}.token");
                let r = check_secret(errs, &key, r, base);
                let field = r.field();
                Some((r, format!("{key}.{field}")))
            }
            (["token_env", "token_file"], ..) => {
                errs.push(
                    format!("{p}.token_file"),
                    "give either token_env or token_file, not both",
                );
                None
            }
            ([], ..) => {
                errs.push(
                    &p,
                    "no token: set token_env, token_file or token (a secret reference)",
                );
                None
            }
            (g, ..) => {
                errs.push(
                    format!("{p}.{}", g[1]),
                    format!(
                        "give only one of token_env, token_file or token (found {})",
                        g.join(", ")
                    ),
                );
                None
            }
        };
        if let (Some(role), Some((source, source_key))) = (role, source) {
            tokens.push(ValidApiToken {
                name: t.name.clone(),
                role,
                source,
                source_key,
                source_system: t.source_system.clone(),
                pii: t.pii.unwrap_or(role == ApiRole::Operator),
            });
        }
    }
    Some(ValidApi {
        listen: listen?,
        explicit,
        tls,
        metrics_public: api.metrics_public,
        max_body_bytes: api.max_body_bytes,
        max_batch_writes: api.max_batch_writes,
        tokens,
        read_rate_per_sec: api.read_rate_per_sec,
        read_burst: api.read_burst,
    })
}
