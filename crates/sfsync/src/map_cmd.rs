//! The integration map: every flow sfsync runs, drawn from its config — source, target,
//! direction, frequency, trigger, transformation, SLA and the team answerable for it.
//! `sfsync map --config FILE [--format mermaid|dot|json]`; the dashboard draws the same map.
//!
//! Pure: [`IntegrationMap::from_config`] reads only the validated config (no secrets, no I/O),
//! so the map is exactly what the config says will run.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::config::model::SyncMode;
use crate::config::validate::{ValidConfig, ValidWarehouse};

/// Default target of a writeback flow (accepted → applied in Salesforce), seconds.
pub const DEFAULT_WRITEBACK_SLA_SECS: u64 = 300;

#[derive(Debug, Args)]
pub struct MapArgs {
    /// The sfsync TOML config.
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long, value_enum, default_value_t = MapFormat::Mermaid)]
    pub format: MapFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MapFormat {
    /// A Mermaid `flowchart LR` (renders in GitHub, GitLab, Confluence, the dashboard).
    Mermaid,
    /// Graphviz DOT (`dot -Tsvg`).
    Dot,
    /// The flows as JSON.
    Json,
}

/// A system on the map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// Stable identifier (letters, digits, `_`), usable in Mermaid and DOT.
    pub id: String,
    pub label: String,
    /// `salesforce`, `sfsync`, `warehouse`, `system`.
    pub kind: &'static str,
    /// The `source_system` a `system` node stands for (`None`: the "any system" node of shared
    /// fields, and the other kinds).
    pub system: Option<String>,
}

/// One flow: data moving from `source` to `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// What moves (`Case`).
    pub object: String,
    pub source: String,
    pub target: String,
    /// `inbound` (into the warehouse), `outbound` (into Salesforce), `archive` (the raw change
    /// history into the Parquet archive), `delivery` (curated changes to a downstream sink),
    /// `virtual` (OData queries served from the warehouse) or `read` (the read API).
    pub direction: &'static str,
    /// `CDC stream`, `polling`, `outbound message`, `platform event`, `reconciliation`,
    /// `formula refresh`, `writeback`, `archive`, a sink kind (`webhook`, `kafka`,
    /// `platform_event`), `OData`, `read API`.
    pub pattern: &'static str,
    pub frequency: String,
    pub trigger: String,
    pub transformation: String,
    pub sla_secs: u64,
    /// `None` when the config names no team: the map shows `unowned` so it is seen.
    pub team: Option<String>,
    /// The delivery sink of a `delivery` flow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntegrationMap {
    pub nodes: Vec<Node>,
    pub flows: Vec<Flow>,
}

const SALESFORCE: &str = "salesforce";
/// The archive's node, and the `object` of its flow: every object's raw changes (the archive
/// job's object, [`sfsync_store::ALL_OBJECTS`]).
const ARCHIVE: &str = "archive";
pub const ARCHIVED_OBJECTS: &str = sfsync_store::ALL_OBJECTS;
/// The writer of `shared` fields: whichever system sends the write.
const ANY_SYSTEM: &str = "any system";
const WAREHOUSE: &str = "warehouse";
/// A delivery flow's freshness target: curated changes reach consumers within a minute.
const DEFAULT_DELIVERY_SLA_SECS: u64 = 60;
/// A read out of the warehouse (OData, read API) answers within seconds.
const READ_SLA_SECS: u64 = 5;

/// A node id from a free-form name: ASCII letters and digits kept, the rest `_`.
fn node_id(prefix: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{prefix}_{clean}")
}

fn list(items: &[String]) -> String {
    items.join(", ")
}

/// The hourly publish budget in words: sfsync's share of `HourlyPublishedPlatformEvents`, its
/// cap, and the headroom left to the org's other publishers.
fn publish_budget(b: &sfsync_salesforce::governor::publish::PublishBudgetConfig) -> String {
    format!(
        "{}% of the org's HourlyPublishedPlatformEvents{}, {}% left to other publishers",
        (b.share * 100.0).round(),
        b.max_hourly_events
            .map(|m| format!(" (at most {m} an hour)"))
            .unwrap_or_default(),
        (b.headroom * 100.0).round()
    )
}

/// The trigger of an Outbound-Message-only object: its flows' endpoints and fields.
fn outbound_trigger(config: &ValidConfig, object: &str) -> String {
    let flows: Vec<String> = config
        .outbound_messages
        .iter()
        .filter(|f| f.object == object)
        .map(|f| {
            format!(
                "Outbound Message → POST /soap/outbound/{}/… (fields {}; deduplicated by \
                 notification id, ordered by SystemModstamp)",
                f.name,
                list(&f.fields)
            )
        })
        .collect();
    flows.join("; ")
}

impl IntegrationMap {
    pub fn from_config(config: &ValidConfig) -> IntegrationMap {
        let warehouse_label = match &config.warehouse {
            ValidWarehouse::Sqlite { path } => format!(
                "Warehouse (SQLite {})",
                path.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
            ValidWarehouse::Postgres { schema, .. } => {
                format!("Warehouse (Postgres schema {schema})")
            }
        };
        let mut nodes = vec![
            Node {
                id: SALESFORCE.into(),
                label: "Salesforce org".into(),
                kind: "salesforce",
                system: None,
            },
            Node {
                id: WAREHOUSE.into(),
                label: warehouse_label,
                kind: "warehouse",
                system: None,
            },
        ];
        let mut flows = Vec::new();
        let p = &config.pipeline;
        for o in &config.objects {
            let mut steps = vec![format!(
                "typed columns from describe into table sf_{}",
                o.name.to_ascii_lowercase()
            )];
            match &o.history {
                Some(crate::config::model::HistoryFields::All) => {
                    steps.push("SCD2 history of every field".into())
                }
                Some(crate::config::model::HistoryFields::List(f)) => {
                    steps.push(format!("SCD2 history of {}", list(f)))
                }
                None => {}
            }
            if !o.pii_fields.is_empty() {
                steps.push(format!("encrypted at rest: {}", list(&o.pii_fields)));
            }
            let rules = o.quality.required.len() + o.quality.rules.len();
            if rules > 0 || !o.quality.references.is_empty() {
                steps.push(format!(
                    "{rules} quality rule(s), {} reference check(s); failures quarantined",
                    o.quality.references.len()
                ));
            }
            let (pattern, frequency, trigger) = match o.mode {
                SyncMode::Cdc => (
                    "CDC stream",
                    "continuous".to_string(),
                    format!(
                        "change event on {}",
                        o.channel.as_deref().unwrap_or("(no channel)")
                    ),
                ),
                SyncMode::Poll => (
                    "polling",
                    format!(
                        "every {} s (overlap {} s)",
                        p.poll_interval_secs, p.poll_overlap_secs
                    ),
                    format!(
                        "SOQL queryAll of {} by SystemModstamp newer than the cursor less the \
                         {} s overlap, {} rows a query (channel {})",
                        o.name,
                        p.poll_overlap_secs,
                        p.poll_page_records,
                        sfsync_pipeline::poll::channel(&o.name)
                    ),
                ),
                SyncMode::OutboundMessage => (
                    "outbound message",
                    "on push (Salesforce retries until acknowledged, up to 24 h)".to_string(),
                    outbound_trigger(config, &o.name),
                ),
            };
            // An Outbound-Message-only object takes its flow's target and team unless it has
            // its own.
            let om = config
                .outbound_messages
                .iter()
                .find(|f| f.object == o.name)
                .filter(|_| o.mode == SyncMode::OutboundMessage);
            let sla = o
                .sla_secs
                .or(om.and_then(|f| f.sla_secs))
                .unwrap_or(config.freshness.delayed_after_secs);
            flows.push(Flow {
                object: o.name.clone(),
                source: SALESFORCE.into(),
                target: WAREHOUSE.into(),
                direction: "inbound",
                pattern,
                frequency,
                trigger,
                transformation: steps.join("; "),
                sla_secs: sla,
                team: o.team.clone().or(om.and_then(|f| f.team.clone())),
                sink: None,
            });
            if let Some(every) = p.reconcile_interval_secs {
                flows.push(Flow {
                    object: o.name.clone(),
                    source: SALESFORCE.into(),
                    target: WAREHOUSE.into(),
                    direction: "inbound",
                    pattern: "reconciliation",
                    frequency: format!("every {every} s"),
                    trigger: "schedule".into(),
                    transformation: "compare Id + SystemModstamp in buckets; re-read what differs"
                        .into(),
                    sla_secs: every,
                    team: o.team.clone(),
                    sink: None,
                });
            }
            if !matches!(
                o.formula_fields,
                sfsync_pipeline::model::FormulaFields::None
            ) {
                flows.push(Flow {
                    object: o.name.clone(),
                    source: SALESFORCE.into(),
                    target: WAREHOUSE.into(),
                    direction: "inbound",
                    pattern: "formula refresh",
                    frequency: format!("every {} s", p.formula_refresh_secs),
                    trigger: "schedule".into(),
                    transformation: "formula columns updated in place (no history version)".into(),
                    sla_secs: p.formula_refresh_secs,
                    team: o.team.clone(),
                    sink: None,
                });
            }
        }
        // Outbound Messages beside a CDC stream: a flow of their own.
        for f in &config.outbound_messages {
            let streamed = config
                .objects
                .iter()
                .any(|o| o.name == f.object && o.mode != SyncMode::OutboundMessage);
            if !streamed {
                continue;
            }
            flows.push(Flow {
                object: f.object.clone(),
                source: SALESFORCE.into(),
                target: WAREHOUSE.into(),
                direction: "inbound",
                pattern: "outbound message",
                frequency: "on push (Salesforce retries until acknowledged, up to 24 h)".into(),
                trigger: format!("Outbound Message → POST /soap/outbound/{}/…", f.name),
                transformation: format!(
                    "fields {}; acknowledged once in the raw log; deduplicated by notification \
                     id; ordered by SystemModstamp (never over a newer CDC change)",
                    list(&f.fields)
                ),
                sla_secs: f.sla_secs.unwrap_or(config.freshness.delayed_after_secs),
                team: f.team.clone(),
                sink: None,
            });
        }
        // Platform events in: each subscribed channel into the store, delivered by the sinks
        // that name its events.
        let pe = &config.platform_events;
        for channel in &pe.subscribe {
            let name = channel.strip_prefix("/event/").unwrap_or(channel);
            let custom = name.ends_with("__chn");
            let sinks: Vec<String> = config
                .sinks
                .iter()
                .filter(|k| {
                    k.objects
                        .iter()
                        .any(|o| o == name || (custom && o.ends_with("__e")))
                })
                .map(|k| k.name.clone())
                .collect();
            flows.push(Flow {
                object: name.to_string(),
                source: SALESFORCE.into(),
                target: WAREHOUSE.into(),
                direction: "inbound",
                pattern: "platform event",
                frequency: "continuous".into(),
                trigger: format!("subscription to {channel} (Pub/Sub, from the stored replay id)"),
                transformation: format!(
                    "each event stored once with its replay id (redeliveries dropped); {}",
                    if sinks.is_empty() {
                        "no sink delivers it".to_string()
                    } else {
                        format!("delivered by sink(s) {}", list(&sinks))
                    }
                ),
                sla_secs: config.freshness.delayed_after_secs,
                team: None,
                sink: None,
            });
        }
        // Platform events out: sfsync publishes each from its durable queue in the store,
        // within its share of the org's hourly publish allocation.
        let budget = &config.salesforce.budget.publish;
        for event in &pe.publish {
            let mut triggers = Vec::new();
            if config.api.is_some() {
                triggers.push(format!("POST /api/v1/events/{event} (writer token)"));
            }
            let sinks: Vec<String> = config
                .sinks
                .iter()
                .filter(|k| matches!(&k.target, crate::config::validate::SinkTarget::PlatformEvent { event: e, .. } if e == event))
                .map(|k| k.name.clone())
                .collect();
            if !sinks.is_empty() {
                triggers.push(format!("platform_event sink(s) {}", list(&sinks)));
            }
            if triggers.is_empty() {
                triggers.push("nothing enqueues it (no API, no platform_event sink)".into());
            }
            flows.push(Flow {
                object: event.clone(),
                source: WAREHOUSE.into(),
                target: SALESFORCE.into(),
                direction: "outbound",
                pattern: "platform event",
                frequency: "on demand, within the hourly publish budget".into(),
                trigger: triggers.join("; "),
                transformation: format!(
                    "queued durably under an idempotency key (the event's id); Pub/Sub Publish \
                     of {} events a call, dead after {} attempts; hourly publish budget: {}",
                    pe.publish_batch_max,
                    pe.publish_max_attempts,
                    publish_budget(budget)
                ),
                sla_secs: DEFAULT_DELIVERY_SLA_SECS,
                team: None,
                sink: None,
            });
        }
        if let Some(location) = &config.archive.location {
            let a = &config.archive;
            nodes.push(Node {
                id: ARCHIVE.into(),
                label: format!("Parquet archive ({})", location),
                kind: "archive",
                system: None,
            });
            flows.push(Flow {
                object: ARCHIVED_OBJECTS.into(),
                source: SALESFORCE.into(),
                target: ARCHIVE.into(),
                direction: "archive",
                pattern: "archive",
                frequency: format!("every {} s", a.every_secs),
                trigger: "schedule (sfsync archive on demand)".into(),
                transformation: format!(
                    "the applied raw change log as Parquet (zstd) by object and day, each file \
                     verified; PII sealed; hot log pruned after {} d; partitions kept {} d",
                    a.hot_retention_days, a.retention_days
                ),
                sla_secs: a.every_secs.saturating_mul(2),
                team: None,
                sink: None,
            });
        }
        for (name, policy) in &config.writeback.objects {
            use sfsync_pipeline::writeback::Owner;
            let meta = config.writeback_flows.iter().find(|m| &m.object == name);
            // The systems that may write: named owners; `shared` fields admit any system.
            let mut systems: Vec<String> = Vec::new();
            let mut shared = false;
            for rule in std::iter::once(&policy.default).chain(policy.fields.values()) {
                match &rule.owner {
                    Owner::System(s) if !systems.contains(s) => systems.push(s.clone()),
                    Owner::Shared => shared = true,
                    _ => {}
                }
            }
            if shared {
                systems.push(ANY_SYSTEM.into());
            }
            let policies: Vec<String> = {
                let mut v: Vec<String> = std::iter::once(&policy.default)
                    .chain(policy.fields.values())
                    .map(|r| {
                        serde_json::to_value(r.policy)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default()
                    })
                    .collect();
                v.sort();
                v.dedup();
                v
            };
            for system in systems {
                let id = node_id("system", &system);
                if !nodes.iter().any(|n| n.id == id) {
                    nodes.push(Node {
                        id: id.clone(),
                        label: system.clone(),
                        kind: "system",
                        system: (system != ANY_SYSTEM).then(|| system.clone()),
                    });
                }
                flows.push(Flow {
                    object: name.clone(),
                    source: id,
                    target: SALESFORCE.into(),
                    direction: "outbound",
                    pattern: "writeback",
                    frequency: "continuous".into(),
                    trigger: "POST /api/v1/writes or an outbox row".into(),
                    transformation: format!(
                        "owned fields only; conflicts: {}; upsert by External Id or update by Id",
                        policies.join(", ")
                    ),
                    sla_secs: meta
                        .and_then(|m| m.sla_secs)
                        .unwrap_or(DEFAULT_WRITEBACK_SLA_SECS),
                    team: meta.and_then(|m| m.team.clone()),
                    sink: None,
                });
            }
        }
        for sink in &config.sinks {
            // A sink feeding a writeback system points at that system's node; a platform_event
            // sink publishes into Salesforce.
            let (id, label) = match &sink.system {
                Some(sys) => (node_id("system", sys), sys.clone()),
                None if matches!(
                    sink.target,
                    crate::config::validate::SinkTarget::PlatformEvent { .. }
                ) =>
                {
                    (SALESFORCE.to_string(), String::new())
                }
                None => (
                    node_id("sink", &sink.name),
                    format!("{} ({})", sink.name, sink.target.kind()),
                ),
            };
            if !nodes.iter().any(|n| n.id == id) {
                nodes.push(Node {
                    id: id.clone(),
                    label,
                    kind: "system",
                    system: sink.system.clone(),
                });
            }
            for object in &sink.objects {
                flows.push(Flow {
                    object: object.clone(),
                    source: WAREHOUSE.into(),
                    target: id.clone(),
                    direction: "delivery",
                    pattern: sink.target.kind(),
                    frequency: "continuous".into(),
                    trigger: format!("each applied change (sink {})", sink.name),
                    transformation: format!(
                        "the curated change as JSON to {}; PII {}{}",
                        sink.target.describe(),
                        sink.pii.as_str(),
                        sink.system
                            .as_ref()
                            .map(|s| format!("; not the changes {s} wrote"))
                            .unwrap_or_default()
                    ),
                    sla_secs: DEFAULT_DELIVERY_SLA_SECS,
                    team: None,
                    sink: Some(sink.name.clone()),
                });
            }
        }
        // Reads served out of the warehouse: OData virtualization (Salesforce Connect reads
        // the data where it lives) and the operational read API.
        if let (Some(o), Some(_)) = (&config.odata, &config.api) {
            nodes.push(Node {
                id: "odata".into(),
                label: "OData clients (Salesforce Connect)".into(),
                kind: "system",
                system: None,
            });
            let mut sets: Vec<String> = o.entity_sets.clone();
            if o.outbox {
                sets.push(crate::api::odata::OUTBOX_SET.into());
            }
            for set in sets {
                flows.push(Flow {
                    object: set.clone(),
                    source: WAREHOUSE.into(),
                    target: "odata".into(),
                    direction: "virtual",
                    pattern: "OData",
                    frequency: "on demand".into(),
                    trigger: "each OData query (/odata/v4/)".into(),
                    transformation: format!(
                        "entity set {set}: $filter/$orderby as parameterised SQL, {} rows a page \
                         (keyset @odata.nextLink); PII null unless the caller is authorised",
                        o.page_size
                    ),
                    sla_secs: READ_SLA_SECS,
                    team: None,
                    sink: None,
                });
            }
        }
        if let Some(api) = &config.api {
            if api
                .tokens
                .iter()
                .any(|t| t.role != crate::config::validate::ApiRole::Writer)
            {
                nodes.push(Node {
                    id: "read_api".into(),
                    label: "Read API clients (/api/v1/records)".into(),
                    kind: "system",
                    system: None,
                });
                flows.push(Flow {
                    object: sfsync_store::ALL_OBJECTS.into(),
                    source: WAREHOUSE.into(),
                    target: "read_api".into(),
                    direction: "read",
                    pattern: "read API",
                    frequency: "on demand".into(),
                    trigger: "GET /api/v1/records/… (viewer token)".into(),
                    transformation: format!(
                        "records by Id, External Id or field filters with sync metadata and \
                         freshness; {} reads/s per token",
                        api.read_rate_per_sec
                    ),
                    sla_secs: READ_SLA_SECS,
                    team: None,
                    sink: None,
                });
            }
        }
        IntegrationMap { nodes, flows }
    }

    fn edge_label(f: &Flow) -> String {
        format!(
            "{} · {} · {} · SLA {} · {}",
            f.object,
            f.pattern,
            f.frequency,
            human_secs(f.sla_secs),
            f.team.as_deref().unwrap_or("unowned")
        )
    }

    /// A Mermaid `flowchart LR`.
    pub fn mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for n in &self.nodes {
            let label = mermaid_text(&n.label);
            let shape = match n.kind {
                "warehouse" | "archive" => format!("{}[(\"{label}\")]", n.id),
                "salesforce" => format!("{}{{{{\"{label}\"}}}}", n.id),
                _ => format!("{}[\"{label}\"]", n.id),
            };
            out.push_str(&format!("  {shape}\n"));
        }
        for f in &self.flows {
            out.push_str(&format!(
                "  {} -->|\"{}\"| {}\n",
                f.source,
                mermaid_text(&Self::edge_label(f)),
                f.target
            ));
        }
        out
    }

    /// Graphviz DOT.
    pub fn dot(&self) -> String {
        let mut out = String::from(
            "digraph sfsync {\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n  edge [fontname=\"Helvetica\", fontsize=10];\n",
        );
        for n in &self.nodes {
            let shape = match n.kind {
                "warehouse" => "cylinder",
                "salesforce" => "hexagon",
                _ => "box",
            };
            out.push_str(&format!(
                "  {} [label=\"{}\", shape={shape}];\n",
                n.id,
                dot_text(&n.label)
            ));
        }
        for f in &self.flows {
            out.push_str(&format!(
                "  {} -> {} [label=\"{}\", tooltip=\"{}\"];\n",
                f.source,
                f.target,
                dot_text(&Self::edge_label(f)),
                dot_text(&format!("trigger: {}; {}", f.trigger, f.transformation))
            ));
        }
        out.push_str("}\n");
        out
    }
}

/// `120 s` → `2 min`, `90 s` → `90 s`, `7200 s` → `2 h`.
pub fn human_secs(s: u64) -> String {
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{} h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

/// Text safe inside a Mermaid quoted label (`"` and `|` would end it; `#` starts an entity).
fn mermaid_text(s: &str) -> String {
    s.replace('#', "#35;")
        .replace('"', "#quot;")
        .replace('|', "#124;")
}

/// Text safe inside a DOT double-quoted string.
fn dot_text(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `sfsync map`: prints the map; exit 0, or 2 with the config errors.
pub fn map(args: MapArgs) -> i32 {
    let loaded = match crate::config::load(&args.config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let map = IntegrationMap::from_config(&loaded.config);
    match args.format {
        MapFormat::Mermaid => print!("{}", map.mermaid()),
        MapFormat::Dot => print!("{}", map.dot()),
        MapFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&map).expect("the map serialises")
        ),
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> ValidConfig {
        let text = format!(
            r#"[salesforce]
instance_url = "https://example.my.salesforce.com"
[salesforce.auth]
type = "client_credentials"
client_id = "abc"
client_secret = {{ env = "SECRET" }}

[[objects]]
name = "Case"
history = {{ fields = ["Status"] }}
team = "Case team"
sla_secs = 60

[[objects]]
name = "Contact"
pii_fields = ["Email"]
required = ["LastName"]

[warehouse]
type = "sqlite"
path = "wh.db"

[pii]
key_env = "KEY"
key_id = "k1"
{extra}"#
        );
        crate::config::load_str(&text, "t.toml", std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"))
            .config
    }

    #[test]
    fn every_object_and_writeback_system_is_a_flow_with_its_facts() {
        let c = config(
            r#"
[[writeback.objects]]
name = "Case"
owner = "case_mgmt"
policy = "merge"
team = "CMS team"
sla_secs = 120
fields = [{ name = "Priority", owner = "shared", policy = "last_write_wins" }]
"#,
        );
        let m = IntegrationMap::from_config(&c);
        let case = m
            .flows
            .iter()
            .find(|f| f.object == "Case" && f.direction == "inbound")
            .unwrap();
        assert_eq!(case.pattern, "CDC stream");
        assert_eq!(case.sla_secs, 60);
        assert_eq!(case.team.as_deref(), Some("Case team"));
        assert!(case.trigger.contains("/data/CaseChangeEvent"));
        assert!(case.transformation.contains("SCD2 history of Status"));
        let contact = m.flows.iter().find(|f| f.object == "Contact").unwrap();
        // The default target of an inbound flow is the freshness threshold.
        assert_eq!(contact.sla_secs, 120);
        assert_eq!(contact.team, None);
        assert!(contact.transformation.contains("encrypted at rest: Email"));
        assert!(contact.transformation.contains("1 quality rule"));
        let out: Vec<&Flow> = m
            .flows
            .iter()
            .filter(|f| f.direction == "outbound")
            .collect();
        let sources: Vec<&str> = out.iter().map(|f| f.source.as_str()).collect();
        assert_eq!(sources, ["system_case_mgmt", "system_any_system"]);
        assert!(out
            .iter()
            .all(|f| f.target == SALESFORCE && f.sla_secs == 120));
        assert!(out[0].transformation.contains("last_write_wins, merge"));
        assert_eq!(out[0].team.as_deref(), Some("CMS team"));
        // The archive (on by default) is a scheduled flow of every object's raw changes.
        let archive = m.flows.iter().find(|f| f.pattern == "archive").unwrap();
        assert_eq!(
            (
                archive.source.as_str(),
                archive.target.as_str(),
                archive.object.as_str()
            ),
            (SALESFORCE, ARCHIVE, "*")
        );
        assert_eq!(
            (archive.frequency.as_str(), archive.sla_secs),
            ("every 3600 s", 7200)
        );
        assert!(m
            .nodes
            .iter()
            .any(|n| n.id == ARCHIVE && n.label.contains("archive")));
        let off = IntegrationMap::from_config(&config("[archive]\nenabled = false\n"));
        assert!(off.flows.iter().all(|f| f.pattern != "archive"));
    }

    #[test]
    fn mermaid_and_dot_draw_every_node_and_flow_with_escaped_labels() {
        let c = config(
            r#"
[[writeback.objects]]
name = "Case"
owner = "payments"
policy = "manual"
team = "Pay \"ments\" | x # 1"
"#,
        );
        let m = IntegrationMap::from_config(&c);
        let mer = m.mermaid();
        assert!(mer.starts_with("flowchart LR\n"));
        assert_eq!(mer.matches("-->|").count(), m.flows.len());
        assert!(mer.contains("salesforce{{\"Salesforce org\"}}"));
        assert!(mer.contains("warehouse[(\"Warehouse (SQLite wh.db)\")]"));
        // The quote, pipe and hash of the team are entities, never raw inside a label.
        assert!(
            mer.contains("Pay #quot;ments#quot; #124; x #35; 1"),
            "{mer}"
        );
        for line in mer.lines().filter(|l| l.contains("-->|")) {
            assert_eq!(line.matches('|').count(), 2, "{line}");
            assert_eq!(line.matches('"').count(), 2, "{line}");
        }
        let dot = m.dot();
        assert!(dot.starts_with("digraph sfsync {"));
        assert!(dot.trim_end().ends_with('}'));
        assert_eq!(dot.matches(" -> ").count(), m.flows.len());
        assert!(
            dot.contains("SLA 5 min · Pay \\\"ments\\\" | x # 1\""),
            "{dot}"
        );
        assert!(dot.contains("SLA 2 min · unowned"), "{dot}");
    }

    /// One edge of `m` by direction, pattern and object.
    fn edge<'a>(m: &'a IntegrationMap, direction: &str, pattern: &str, object: &str) -> &'a Flow {
        m.flows
            .iter()
            .find(|f| f.direction == direction && f.pattern == pattern && f.object == object)
            .unwrap_or_else(|| panic!("no {direction} {pattern} flow of {object} in {m:#?}"))
    }

    #[test]
    fn every_sync_pattern_is_an_edge_of_its_own_kind() {
        let c = config(
            r#"
[[objects]]
name = "Lead"
mode = "poll"
team = "Sales ops"

[[objects]]
name = "Legacy__c"
mode = "outbound_message"

[pipeline]
poll_interval_secs = 30
poll_overlap_secs = 45

[salesforce.budget.publish]
share = 0.25
max_hourly_events = 5000

[platform_events]
subscribe = ["/event/Order_Shipped__e", "/event/Orders__chn"]
publish = ["Record_Applied__e", "Unused__e"]
publish_batch_max = 100

[[sinks]]
name = "shipping"
url = "https://hooks.example.org/shipping"
secret = { env = "HOOK" }
objects = ["Order_Shipped__e"]

[[sinks]]
name = "case-applied"
kind = "platform_event"
event = "Record_Applied__e"
objects = ["Case"]
fields = { Record_Id__c = "id" }

[[outbound_messages]]
name = "legacy"
object = "Legacy__c"
organization_id = "00D000000000062EAA"
secret = { env = "OM" }
fields = ["Name", "SystemModstamp"]

[api]
[[api.tokens]]
name = "v"
role = "viewer"
token_env = "T"

[odata]
entity_sets = ["Case"]
"#,
        );
        let m = IntegrationMap::from_config(&c);
        // CDC stream.
        let case = edge(&m, "inbound", "CDC stream", "Case");
        assert_eq!(
            (case.source.as_str(), case.target.as_str()),
            (SALESFORCE, WAREHOUSE)
        );
        // Polling: interval, overlap, page size and channel.
        let lead = edge(&m, "inbound", "polling", "Lead");
        assert_eq!(lead.frequency, "every 30 s (overlap 45 s)");
        assert!(
            lead.trigger.contains("less the 45 s overlap"),
            "{}",
            lead.trigger
        );
        assert!(
            lead.trigger.contains("channel /poll/Lead"),
            "{}",
            lead.trigger
        );
        assert_eq!(lead.team.as_deref(), Some("Sales ops"));
        // Outbound Messages: Salesforce → the SOAP endpoint → the warehouse.
        let om = edge(&m, "inbound", "outbound message", "Legacy__c");
        assert_eq!(
            (om.source.as_str(), om.target.as_str()),
            (SALESFORCE, WAREHOUSE)
        );
        assert!(
            om.trigger.contains("POST /soap/outbound/legacy/"),
            "{}",
            om.trigger
        );
        // Platform events subscribed: one edge per channel, naming the sinks that deliver it.
        let shipped = edge(&m, "inbound", "platform event", "Order_Shipped__e");
        assert_eq!(
            (shipped.source.as_str(), shipped.target.as_str()),
            (SALESFORCE, WAREHOUSE)
        );
        assert!(shipped.trigger.contains("/event/Order_Shipped__e"));
        assert!(
            shipped
                .transformation
                .contains("delivered by sink(s) shipping"),
            "{}",
            shipped.transformation
        );
        let chn = edge(&m, "inbound", "platform event", "Orders__chn");
        assert!(
            chn.transformation.contains("sink(s) shipping"),
            "{}",
            chn.transformation
        );
        // …and the sink's delivery of the received events.
        let delivered = edge(&m, "delivery", "webhook", "Order_Shipped__e");
        assert_eq!(delivered.sink.as_deref(), Some("shipping"));
        // Platform events published: sfsync's queue → Salesforce, with the hourly budget.
        let published = edge(&m, "outbound", "platform event", "Record_Applied__e");
        assert_eq!(
            (published.source.as_str(), published.target.as_str()),
            (WAREHOUSE, SALESFORCE)
        );
        assert!(
            published
                .trigger
                .contains("POST /api/v1/events/Record_Applied__e")
                && published
                    .trigger
                    .contains("platform_event sink(s) case-applied"),
            "{}",
            published.trigger
        );
        assert!(
            published.transformation.contains(
                "hourly publish budget: 25% of the org's HourlyPublishedPlatformEvents (at most \
                 5000 an hour), 10% left to other publishers"
            ) && published.transformation.contains("100 events a call"),
            "{}",
            published.transformation
        );
        let unused = edge(&m, "outbound", "platform event", "Unused__e");
        assert!(!unused.trigger.contains("sink"), "{}", unused.trigger);
        // A platform_event sink publishes into Salesforce (no node of its own).
        let applied = edge(&m, "delivery", "platform_event", "Case");
        assert_eq!(
            (applied.source.as_str(), applied.target.as_str()),
            (WAREHOUSE, SALESFORCE)
        );
        assert!(!m.nodes.iter().any(|n| n.id == "sink_case_applied"));
        // OData (Salesforce Connect) and the read API.
        let odata = edge(&m, "virtual", "OData", "Case");
        assert_eq!(odata.target, "odata");
        let read = edge(&m, "read", "read API", "*");
        assert_eq!(read.target, "read_api");
        // Every edge's ends are nodes of the map, and Mermaid and DOT draw every edge.
        for f in &m.flows {
            for end in [&f.source, &f.target] {
                assert!(m.nodes.iter().any(|n| &n.id == end), "{end} of {f:?}");
            }
        }
        assert_eq!(m.mermaid().matches("-->|").count(), m.flows.len());
        assert_eq!(m.dot().matches(" -> ").count(), m.flows.len());
        // Without [platform_events] there is no platform-event edge.
        let plain = IntegrationMap::from_config(&config(""));
        assert!(plain.flows.iter().all(|f| f.pattern != "platform event"));
    }

    #[test]
    fn seconds_read_as_people_say_them() {
        assert_eq!(human_secs(120), "2 min");
        assert_eq!(human_secs(90), "90 s");
        assert_eq!(human_secs(7200), "2 h");
    }

    #[test]
    fn blank_team_and_zero_sla_are_config_errors_naming_the_key() {
        let text = r#"[salesforce]
instance_url = "https://example.my.salesforce.com"
[salesforce.auth]
type = "client_credentials"
client_id = "abc"
client_secret = { env = "SECRET" }
[[objects]]
name = "Case"
team = " "
sla_secs = 0
[warehouse]
type = "sqlite"
path = "wh.db"
"#;
        let e = crate::config::load_str(text, "t.toml", std::path::Path::new("."))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("objects[0].team"), "{e}");
        assert!(e.contains("objects[0].sla_secs"), "{e}");
    }
}
