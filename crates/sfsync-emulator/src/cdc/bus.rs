//! The CDC event bus: turns committed transactions into change events, keeps the replayable
//! event log, hands events to subscribers and meters delivery.
//!
//! Guarantees:
//! - One org-wide replay-id sequence (8-byte big-endian on the wire), strictly increasing in
//!   commit order; a channel sees a subsequence, so its ids increase too.
//! - Per transaction: several DMLs on one record are one change (the org already merges them);
//!   identical changes (same object, change type, changed fields and new values) on several
//!   records are ONE event with several `recordIds` and the first one's sequence number; an
//!   event larger than `max_event_bytes` (or hit by gap fault injection) is replaced by a
//!   header-only `GAP_*` event; changes past the overflow threshold become one `GAP_OVERFLOW`
//!   per entity. Nothing is dropped silently.
//! - Events older than the retention window are dropped from the front of the log; replay ids
//!   before them are then rejected (see [`CdcBus::check_replay`]).
//! - Platform events share the log (and so the replay-id sequence and retention); custom
//!   channels (`/event/<Name>__chn`, `/data/<Name>__chn`) are views of the log that carry the
//!   events of their members.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use anyhow::{Context, Result};
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde_json::Value as Json;
use sfsync_org::{ChangeKind, CommittedTransaction, Org, RecordChange, Schema};
use tokio::sync::watch;

use super::avro_writer;
use super::bitmap::{self, FieldBits};
use super::diff::text_diff;
use super::encode::{
    encode_event, json_to_value, values_from_fields, ChangeEvent, ChangeEventHeader, ChangeType,
    EncodeError, FieldValue,
};
use super::log::{self, LogFile};
use super::schema::{self, AvroKind, CdcSchema, PlatformField, TopField};
use super::CdcConfig;

/// Change event or platform event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Change,
    Platform,
}

/// One event of the log, encoded once.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub replay_id: u64,
    /// Commit (or publish) time, epoch ms; retention counts from it.
    pub time_ms: i64,
    pub kind: EventKind,
    /// Object name (change events) or platform event name.
    pub entity: Arc<str>,
    pub schema_id: Arc<str>,
    /// `ProducerEvent.id` (a UUID).
    pub event_id: String,
    /// Raw Avro datum.
    pub payload: Bytes,
}

/// Most log entries one `fetch` scans (it holds the log lock meanwhile).
pub const SCAN_LIMIT: usize = 50_000;

/// What a Subscribe call listens to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `/data/ChangeEvents`.
    AllChanges,
    /// `/data/<Object>ChangeEvent` (object API name).
    Object(String),
    /// `/event/<Name>__e`.
    Platform(String),
    /// A custom channel (`/event/<Name>__chn` of platform events, `/data/<Name>__chn` of change
    /// events): the events of its members (platform event or object names).
    Channel {
        name: String,
        kind: EventKind,
        members: Vec<String>,
    },
}

impl Topic {
    pub fn matches(&self, e: &StoredEvent) -> bool {
        match self {
            Topic::AllChanges => e.kind == EventKind::Change,
            Topic::Object(o) => e.kind == EventKind::Change && *e.entity == **o,
            Topic::Platform(p) => e.kind == EventKind::Platform && *e.entity == **p,
            Topic::Channel { kind, members, .. } => {
                e.kind == *kind && members.iter().any(|m| **m == *e.entity)
            }
        }
    }

    /// The canonical topic name.
    pub fn name(&self) -> String {
        match self {
            Topic::AllChanges => "/data/ChangeEvents".to_string(),
            Topic::Object(o) => schema::channel_name(o),
            Topic::Platform(p) => format!("/event/{p}"),
            Topic::Channel {
                name,
                kind: EventKind::Platform,
                ..
            } => format!("/event/{name}"),
            Topic::Channel { name, .. } => format!("/data/{name}"),
        }
    }
}

#[derive(Default)]
struct Log {
    events: VecDeque<Arc<StoredEvent>>,
    /// Replay id of the last appended event (0 = none yet).
    last_id: u64,
    /// Replay id of the last event dropped by retention (0 = none).
    expired_upto: u64,
    file: Option<LogFile>,
}

#[derive(Default)]
struct SchemaCache {
    /// The org schema the cache was built from (pointer identity).
    org_schema: Option<Arc<Schema>>,
    by_object: HashMap<String, Arc<CdcSchema>>,
}

#[derive(Default)]
struct GapFaults {
    rate: f64,
    next: u64,
}

/// Rolling 24 h delivery counter in one-minute buckets.
#[derive(Default)]
struct Delivered {
    buckets: VecDeque<(i64, u64)>,
}

impl Delivered {
    fn used(&mut self, now_ms: i64) -> u64 {
        let minute = now_ms / 60_000;
        while self
            .buckets
            .front()
            .is_some_and(|(m, _)| *m <= minute - 24 * 60)
        {
            self.buckets.pop_front();
        }
        self.buckets.iter().map(|(_, n)| n).sum()
    }

    fn add(&mut self, now_ms: i64, n: u64) {
        let minute = now_ms / 60_000;
        match self.buckets.back_mut() {
            Some((m, c)) if *m == minute => *c += n,
            _ => self.buckets.push_back((minute, n)),
        }
    }
}

/// Counters shown by the admin API.
#[derive(Debug, Default)]
pub struct BusStats {
    pub events: AtomicU64,
    pub gaps: AtomicU64,
    pub overflows: AtomicU64,
    pub merged_records: AtomicU64,
    pub delivered: AtomicU64,
}

/// A platform event's declared fields and generated schema.
type PlatformDef = (Vec<PlatformField>, Arc<CdcSchema>);

/// A custom channel's definition (persisted as `channels.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChannelDef {
    /// `Orders__chn`.
    pub name: String,
    /// `true`: a platform-event channel (`/event/…`); `false`: a change-event channel
    /// (`/data/…`).
    pub platform: bool,
    /// Platform event names or object API names.
    pub members: Vec<String>,
}

/// The org's event bus. Create with [`CdcBus::new`], connect with [`CdcBus::attach`].
pub struct CdcBus {
    config: RwLock<CdcConfig>,
    log: Mutex<Log>,
    /// Every schema ever used: id → exact JSON.
    registry: RwLock<HashMap<String, Arc<str>>>,
    cache: Mutex<SchemaCache>,
    platform: RwLock<HashMap<String, PlatformDef>>,
    channels: RwLock<HashMap<String, ChannelDef>>,
    faults: Mutex<GapFaults>,
    delivered: Mutex<Delivered>,
    notify: watch::Sender<u64>,
    dir: Option<PathBuf>,
    pub stats: BusStats,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Why a replay id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("replay id must be 8 bytes (big-endian), got {0} bytes")]
    BadLength(usize),
    #[error("replay id {id} is outside the retention window (oldest replayable id is {oldest})")]
    Expired { id: u64, oldest: u64 },
    #[error("replay id {id} is in the future (latest is {latest})")]
    Future { id: u64, latest: u64 },
}

impl CdcBus {
    /// A bus with `config`; with `dir`, the event log, schemas and platform events persist there.
    pub fn new(config: CdcConfig, dir: Option<&Path>) -> Result<Arc<CdcBus>> {
        let mut log = Log::default();
        let mut registry = HashMap::new();
        let mut platform = HashMap::new();
        let mut channels = HashMap::new();
        if let Some(d) = dir {
            let (file, events) = LogFile::open(d)?;
            let cutoff = now_ms() - config.retention.as_millis() as i64;
            for e in events {
                log.last_id = log.last_id.max(e.replay_id);
                if e.time_ms < cutoff {
                    log.expired_upto = e.replay_id;
                } else {
                    log.events.push_back(Arc::new(e));
                }
            }
            log.file = Some(file);
            for (id, json) in log::load_schemas(d)? {
                registry.insert(id, json);
            }
            let pe = d.join("platform_events.json");
            if pe.exists() {
                let text = std::fs::read_to_string(&pe)
                    .with_context(|| format!("reading {}", pe.display()))?;
                let defs: Vec<(String, Vec<PlatformField>)> = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", pe.display()))?;
                for (name, fields) in defs {
                    let s = schema::platform_event_schema(&name, &fields)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", pe.display()))?;
                    registry.insert(s.id.clone(), s.json.clone().into());
                    platform.insert(name, (fields, Arc::new(s)));
                }
            }
            let ch = d.join("channels.json");
            if ch.exists() {
                let text = std::fs::read_to_string(&ch)
                    .with_context(|| format!("reading {}", ch.display()))?;
                let defs: Vec<ChannelDef> = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", ch.display()))?;
                for c in defs {
                    channels.insert(c.name.clone(), c);
                }
            }
        }
        let (notify, _) = watch::channel(log.last_id);
        Ok(Arc::new(CdcBus {
            config: RwLock::new(config),
            log: Mutex::new(log),
            registry: RwLock::new(registry),
            cache: Mutex::new(SchemaCache::default()),
            platform: RwLock::new(platform),
            channels: RwLock::new(channels),
            faults: Mutex::new(GapFaults::default()),
            delivered: Mutex::new(Delivered::default()),
            notify,
            dir: dir.map(Path::to_path_buf),
            stats: BusStats::default(),
        }))
    }

    /// Registers the bus as a commit listener of `org` (holds only a weak reference to it).
    pub fn attach(self: &Arc<Self>, org: &Arc<Org>) {
        let bus = Arc::downgrade(self);
        let weak_org: Weak<Org> = Arc::downgrade(org);
        org.add_commit_listener(Arc::new(move |tx: &Arc<CommittedTransaction>| {
            if let (Some(bus), Some(org)) = (bus.upgrade(), weak_org.upgrade()) {
                bus.on_commit(&org.schema(), tx);
            }
        }));
    }

    pub fn config(&self) -> CdcConfig {
        self.config.read().clone()
    }

    /// Replaces the settings and wakes every open subscription, so a change (the service
    /// going down, a smaller allocation) reaches them at once.
    pub fn set_config(&self, c: CdcConfig) {
        *self.config.write() = c;
        self.notify.send_modify(|_| {});
    }

    /// Changes which objects have CDC enabled (`None` = all).
    pub fn set_enabled_objects(&self, objects: Option<Vec<String>>) {
        self.config.write().enabled_objects = objects;
    }

    pub fn is_enabled(&self, object: &str) -> bool {
        match &self.config.read().enabled_objects {
            None => true,
            Some(list) => list.iter().any(|o| o.eq_ignore_ascii_case(object)),
        }
    }

    /// Gap fault injection: each change event becomes a gap with probability `rate`.
    pub fn set_gap_rate(&self, rate: f64) {
        self.faults.lock().rate = rate.clamp(0.0, 1.0);
    }

    /// Gap fault injection: the next `n` change events become gaps.
    pub fn set_gap_next(&self, n: u64) {
        self.faults.lock().next = n;
    }

    pub fn gap_faults(&self) -> (f64, u64) {
        let f = self.faults.lock();
        (f.rate, f.next)
    }

    /// A receiver that changes whenever events are appended (value: last replay id).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// The latest replay id (0 before the first event).
    pub fn latest_id(&self) -> u64 {
        self.log.lock().last_id
    }

    /// Replay id just before the oldest retained event (EARLIEST starts after it).
    pub fn earliest_cursor(&self) -> u64 {
        let mut log = self.log.lock();
        self.prune(&mut log);
        match log.events.front() {
            Some(e) => e.replay_id - 1,
            None => log.last_id,
        }
    }

    fn prune(&self, log: &mut Log) {
        let cutoff = now_ms() - self.config.read().retention.as_millis() as i64;
        while log.events.front().is_some_and(|e| e.time_ms < cutoff) {
            if let Some(e) = log.events.pop_front() {
                log.expired_upto = e.replay_id;
            }
        }
    }

    /// Checks a CUSTOM replay id: 8 bytes, not before the retention window, not in the future.
    pub fn check_replay(&self, raw: &[u8]) -> Result<u64, ReplayError> {
        let id = super::parse_replay(raw).ok_or(ReplayError::BadLength(raw.len()))?;
        let mut log = self.log.lock();
        self.prune(&mut log);
        if id > log.last_id {
            return Err(ReplayError::Future {
                id,
                latest: log.last_id,
            });
        }
        if log.expired_upto > 0 && id <= log.expired_upto {
            return Err(ReplayError::Expired {
                id,
                oldest: log.expired_upto + 1,
            });
        }
        Ok(id)
    }

    /// Up to `max` events of `topic` after replay id `after`, stopping early past `max_bytes`
    /// of payload. Returns the events and the replay id scanned up to (the next cursor).
    pub fn fetch(
        &self,
        topic: &Topic,
        after: u64,
        max: usize,
        max_bytes: usize,
    ) -> (Vec<Arc<StoredEvent>>, u64) {
        let log = self.log.lock();
        let mut out = Vec::new();
        let mut cursor = after.max(log.expired_upto);
        let Some(first) = log.events.front().map(|e| e.replay_id) else {
            return (out, cursor.max(log.last_id));
        };
        let start = (after + 1).saturating_sub(first) as usize;
        let mut bytes = 0usize;
        // Bound the scan so a quiet channel on a busy bus never holds the lock for long.
        for e in log.events.iter().skip(start).take(SCAN_LIMIT) {
            if out.len() >= max || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
            cursor = e.replay_id;
            if topic.matches(e) {
                bytes += e.payload.len();
                out.push(e.clone());
            }
        }
        (out, cursor)
    }

    /// Takes up to `n` deliveries from the rolling 24 h allocation; returns how many were
    /// granted (0 = exhausted).
    pub fn take_deliveries(&self, n: u64) -> u64 {
        let max = self.config.read().daily_delivery_allocation;
        let now = now_ms();
        let mut d = self.delivered.lock();
        let granted = n.min(max.saturating_sub(d.used(now)));
        if granted > 0 {
            d.add(now, granted);
            self.stats.delivered.fetch_add(granted, Ordering::Relaxed);
        }
        granted
    }

    /// (allocation, remaining) of the rolling 24 h delivery allocation.
    pub fn delivery_usage(&self) -> (u64, u64) {
        let max = self.config.read().daily_delivery_allocation;
        let used = self.delivered.lock().used(now_ms());
        (max, max.saturating_sub(used))
    }

    /// Forgets delivery usage (admin).
    pub fn reset_deliveries(&self) {
        *self.delivered.lock() = Delivered::default();
    }

    /// Entries for `Limits::limits_json(extra)`: `DailyDeliveredPlatformEvents`.
    pub fn limits_extra(&self) -> Vec<(&'static str, u64, u64)> {
        let (max, remaining) = self.delivery_usage();
        vec![("DailyDeliveredPlatformEvents", max, remaining)]
    }

    /// The exact JSON of a schema id ever used by this bus.
    pub fn schema_json(&self, id: &str) -> Option<Arc<str>> {
        self.registry.read().get(id).cloned()
    }

    fn register(&self, s: &CdcSchema) {
        let mut r = self.registry.write();
        if !r.contains_key(&s.id) {
            r.insert(s.id.clone(), s.json.clone().into());
            if let Some(d) = &self.dir {
                if let Err(e) = log::save_schema(d, &s.id, &s.json) {
                    tracing::error!(error = %format!("{e:#}"), "Saving a CDC schema failed");
                }
            }
        }
    }

    /// The current change-event schema of `object` under org schema `org_schema`.
    pub fn object_schema(&self, org_schema: &Arc<Schema>, object: &str) -> Option<Arc<CdcSchema>> {
        let mut cache = self.cache.lock();
        if !cache
            .org_schema
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, org_schema))
        {
            cache.org_schema = Some(org_schema.clone());
            // Keep schemas of unchanged objects (same id) and rebuild lazily.
            cache.by_object.clear();
        }
        if let Some(s) = cache.by_object.get(object) {
            return Some(s.clone());
        }
        let def = org_schema.objects.iter().find(|o| o.name == object)?;
        let s = Arc::new(schema::schema_for(def));
        self.register(&s);
        cache.by_object.insert(object.to_string(), s.clone());
        Some(s)
    }

    /// Defines (or redefines) a platform event; returns its schema.
    pub fn define_platform_event(
        &self,
        name: &str,
        fields: Vec<PlatformField>,
    ) -> Result<Arc<CdcSchema>, String> {
        let s = Arc::new(schema::platform_event_schema(name, &fields)?);
        self.register(&s);
        let mut p = self.platform.write();
        p.insert(name.to_string(), (fields, s.clone()));
        if let Some(d) = &self.dir {
            let defs: Vec<(&String, &Vec<PlatformField>)> =
                p.iter().map(|(k, (f, _))| (k, f)).collect();
            let path = d.join("platform_events.json");
            let text = serde_json::to_string_pretty(&defs).map_err(|e| e.to_string())?;
            std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        Ok(s)
    }

    pub fn platform_schema(&self, name: &str) -> Option<Arc<CdcSchema>> {
        self.platform.read().get(name).map(|(_, s)| s.clone())
    }

    pub fn platform_events(&self) -> Vec<String> {
        let mut v: Vec<String> = self.platform.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// Defines (or redefines) a custom channel. Members of a platform-event channel must be
    /// defined platform events; the caller checks the objects of a change-event channel.
    pub fn define_channel(&self, def: ChannelDef) -> Result<Topic, String> {
        let valid = def.name.ends_with("__chn")
            && def
                .name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
            && def
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "channel name {:?} must be an API name ending in __chn",
                def.name
            ));
        }
        if def.members.is_empty() {
            return Err(format!("channel {} needs at least one member", def.name));
        }
        if def.platform {
            let p = self.platform.read();
            if let Some(m) = def.members.iter().find(|m| !p.contains_key(*m)) {
                return Err(format!(
                    "member {m:?} of {} is not a defined platform event",
                    def.name
                ));
            }
        }
        let mut ch = self.channels.write();
        ch.insert(def.name.clone(), def.clone());
        if let Some(d) = &self.dir {
            let mut all: Vec<&ChannelDef> = ch.values().collect();
            all.sort_by(|a, b| a.name.cmp(&b.name));
            let path = d.join("channels.json");
            let text = serde_json::to_string_pretty(&all).map_err(|e| e.to_string())?;
            std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        Ok(Self::channel_topic(&def))
    }

    fn channel_topic(def: &ChannelDef) -> Topic {
        Topic::Channel {
            name: def.name.clone(),
            kind: if def.platform {
                EventKind::Platform
            } else {
                EventKind::Change
            },
            members: def.members.clone(),
        }
    }

    /// The custom channel `name` (`Orders__chn`) of the given kind.
    pub fn channel(&self, name: &str, platform: bool) -> Option<Topic> {
        self.channels
            .read()
            .get(name)
            .filter(|c| c.platform == platform)
            .map(Self::channel_topic)
    }

    /// Every custom channel, by name.
    pub fn channels(&self) -> Vec<ChannelDef> {
        let mut v: Vec<ChannelDef> = self.channels.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Encodes and appends a platform event given as field name → REST JSON value (as Apex,
    /// Flow or the REST API publish one inside the org). `CreatedDate` is now and
    /// `CreatedById` is `user_id`; an unknown field or a value of the wrong type is an error
    /// naming it. The caller takes the publish allocation. Returns (event uuid, replay id).
    pub fn publish_fields(
        &self,
        name: &str,
        fields: &serde_json::Map<String, Json>,
        user_id: &str,
    ) -> Result<(String, u64), String> {
        let schema = self
            .platform_schema(name)
            .ok_or_else(|| format!("{name} is not a defined platform event"))?;
        let mut values = Vec::with_capacity(schema.fields.len());
        for k in fields.keys() {
            if !schema.fields.iter().any(|f| f.name() == k) {
                return Err(format!("No such column '{k}' on sobject of type {name}"));
            }
            if k == "CreatedDate" || k == "CreatedById" {
                return Err(format!("Unable to create/update fields: {k}. Please check the security settings of this field."));
            }
        }
        for f in &schema.fields {
            match f {
                TopField::Required { name: n, .. } if n == "CreatedDate" => {
                    values.push(FieldValue::Long(now_ms()))
                }
                TopField::Required { name: n, .. } if n == "CreatedById" => {
                    values.push(FieldValue::String(user_id.to_string()))
                }
                TopField::Scalar { name: n, kind } | TopField::Required { name: n, kind } => {
                    let v = fields.get(n).unwrap_or(&Json::Null);
                    let value = json_to_value(*kind, v);
                    if value == FieldValue::Null && !v.is_null() {
                        return Err(format!(
                            "Cannot deserialize value {v} of field {n} ({kind:?})"
                        ));
                    }
                    values.push(value);
                }
                _ => values.push(FieldValue::Null),
            }
        }
        let payload = super::encode::encode_platform_event(&schema, &values)
            .map_err(|e| format!("encoding {name}: {e}"))?;
        let id = event_uuid();
        let replay = self.publish(name, &schema.id, id.clone(), Bytes::from(payload));
        Ok((id, replay))
    }

    /// Appends a published platform event (payload already validated); returns its replay id.
    pub fn publish(&self, name: &str, schema_id: &str, event_id: String, payload: Bytes) -> u64 {
        let ids = self.append(vec![StoredEvent {
            replay_id: 0,
            time_ms: now_ms(),
            kind: EventKind::Platform,
            entity: name.into(),
            schema_id: schema_id.into(),
            event_id,
            payload,
        }]);
        ids[0]
    }

    /// Fault injection: appends a change event of `entity` with arbitrary payload bytes under
    /// the object's current CDC schema id (or `schema_id` when given), as a broken producer
    /// would. Returns its replay id, or `None` when the object has no CDC schema.
    pub fn inject_change_event(
        &self,
        org_schema: &Arc<Schema>,
        entity: &str,
        schema_id: Option<&str>,
        payload: Bytes,
    ) -> Option<u64> {
        let schema_id = match schema_id {
            Some(id) => id.to_string(),
            None => self.object_schema(org_schema, entity)?.id.clone(),
        };
        let ids = self.append(vec![StoredEvent {
            replay_id: 0,
            time_ms: now_ms(),
            kind: EventKind::Change,
            entity: entity.into(),
            schema_id: schema_id.into(),
            event_id: event_uuid(),
            payload,
        }]);
        ids.first().copied()
    }

    /// Assigns replay ids, appends (and persists) `events`, wakes subscribers.
    fn append(&self, events: Vec<StoredEvent>) -> Vec<u64> {
        if events.is_empty() {
            return Vec::new();
        }
        let mut log = self.log.lock();
        let mut ids = Vec::with_capacity(events.len());
        for mut e in events {
            log.last_id += 1;
            e.replay_id = log.last_id;
            ids.push(e.replay_id);
            if let Some(f) = log.file.as_mut() {
                if let Err(err) = f.append(&e) {
                    tracing::error!(error = %format!("{err:#}"), "CDC event log append failed; the event is kept in memory only");
                }
            }
            log.events.push_back(Arc::new(e));
        }
        if let Some(f) = log.file.as_mut() {
            if let Err(err) = f.flush() {
                tracing::error!(error = %format!("{err:#}"), "CDC event log flush failed");
            }
        }
        self.prune(&mut log);
        let last = log.last_id;
        drop(log);
        self.stats
            .events
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        self.notify.send_replace(last);
        ids
    }

    /// Publishes the change events of one committed transaction (called in commit order).
    pub fn on_commit(&self, org_schema: &Arc<Schema>, tx: &CommittedTransaction) -> Vec<u64> {
        let events = self.build(org_schema, tx);
        let stored = events
            .into_iter()
            .map(|(entity, schema_id, payload)| StoredEvent {
                replay_id: 0,
                time_ms: tx.commit_timestamp,
                kind: EventKind::Change,
                entity,
                schema_id,
                event_id: event_uuid(),
                payload: Bytes::from(payload),
            })
            .collect();
        self.append(stored)
    }

    fn header(
        tx: &CommittedTransaction,
        entity: &str,
        change_type: ChangeType,
        seq: u32,
    ) -> ChangeEventHeader {
        ChangeEventHeader {
            entity_name: entity.to_string(),
            record_ids: Vec::new(),
            change_type,
            change_origin: tx.change_origin.clone(),
            transaction_key: tx.transaction_key.clone(),
            sequence_number: seq as i32,
            commit_timestamp: tx.commit_timestamp,
            commit_number: tx.commit_number,
            commit_user: tx.commit_user.as_str().to_string(),
            nulled_fields: Vec::new(),
            diff_fields: Vec::new(),
            changed_fields: Vec::new(),
        }
    }

    /// The encoded events of a transaction: (entity, schema id, payload), in sequence order.
    pub fn build_events(
        &self,
        org_schema: &Arc<Schema>,
        tx: &CommittedTransaction,
    ) -> Vec<(String, String, Vec<u8>)> {
        self.build(org_schema, tx)
            .into_iter()
            .map(|(e, id, p)| (e.to_string(), id.to_string(), p))
            .collect()
    }

    /// [`CdcBus::build_events`] with entity and schema id shared per schema.
    ///
    /// Each change's body (every field after the header) is encoded once, straight from the
    /// org's field values; identical changes are found by comparing (object, change type,
    /// bitmaps, body bytes), and the header — which carries the merged record ids — is written
    /// in front of the body at the end.
    fn build(
        &self,
        org_schema: &Arc<Schema>,
        tx: &CommittedTransaction,
    ) -> Vec<(Arc<str>, Arc<str>, Vec<u8>)> {
        let (threshold, max_bytes) = {
            let c = self.config.read();
            (c.overflow_threshold, c.max_event_bytes)
        };
        // Schemas used by this transaction: (object, schema, entity, schema id).
        let mut schemas: Vec<SchemaUse> = Vec::new();
        let mut drafts: Vec<Draft> = Vec::new();
        // Merge hash → first draft with it (later ones chained through `Draft::next`).
        let mut merge: HashMap<u64, usize> = HashMap::new();
        let mut overflow: Vec<(String, u32)> = Vec::new();
        let mut count: u64 = 0;
        let mut overflowing = false;
        let mut last: Option<usize> = None;
        for change in &tx.changes {
            let s = match last.filter(|&i| schemas[i].object == change.object) {
                Some(i) => i,
                None => match schemas.iter().position(|u| u.object == change.object) {
                    Some(i) => i,
                    None => {
                        let schema = if self.is_enabled(&change.object) {
                            self.object_schema(org_schema, &change.object)
                        } else {
                            None
                        };
                        schemas.push(SchemaUse {
                            object: change.object.clone(),
                            ids: schema
                                .as_ref()
                                .map(|s| (Arc::from(s.entity.as_str()), Arc::from(s.id.as_str()))),
                            schema,
                        });
                        schemas.len() - 1
                    }
                },
            };
            last = Some(s);
            let Some(schema) = schemas[s].schema.as_ref() else {
                continue;
            };
            let cost = match change.change_type {
                ChangeKind::Update => change.changed_fields.len().max(1) as u64,
                _ => 1,
            };
            if overflowing || count + cost > threshold {
                overflowing = true;
                if !overflow.iter().any(|(o, _)| *o == change.object) {
                    overflow.push((change.object.clone(), change.sequence_number));
                }
                continue;
            }
            count += cost;
            let d = draft_event(schema, s, change);
            let key = d.merge_hash();
            let mut at = merge.get(&key).copied();
            let mut tail = None;
            while let Some(i) = at {
                if drafts[i].same_change(&d) {
                    break;
                }
                tail = Some(i);
                at = drafts[i].next;
            }
            match at {
                Some(i) => {
                    drafts[i].record_ids.push(change.record_id.as_str());
                    self.stats.merged_records.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    match tail {
                        Some(t) => drafts[t].next = Some(drafts.len()),
                        None => {
                            merge.insert(key, drafts.len());
                        }
                    }
                    drafts.push(d);
                }
            }
        }
        let mut out = Vec::with_capacity(drafts.len() + overflow.len());
        let mut header = Vec::with_capacity(512);
        for mut d in drafts {
            let u = &schemas[d.schema];
            let (Some(schema), Some((entity, id))) = (u.schema.as_ref(), u.ids.as_ref()) else {
                continue;
            };
            let forced_gap = {
                let mut f = self.faults.lock();
                if f.next > 0 {
                    f.next -= 1;
                    true
                } else {
                    f.rate > 0.0 && rand::random::<f64>() < f.rate
                }
            };
            let body = std::mem::replace(&mut d.body, Ok(Vec::new()));
            let encoded = match (body, forced_gap) {
                (_, true) => None,
                (Ok(mut body), false) => {
                    header.clear();
                    d.write_header(&mut header, tx, d.change_type, false);
                    if header.len() + body.len() <= max_bytes {
                        // The body was written with room for the header in front.
                        body.splice(0..0, header.iter().copied());
                        Some(body)
                    } else {
                        tracing::info!(entity = %schema.entity, bytes = header.len() + body.len(), max_bytes, "Change event exceeds the maximum size; sending a gap event");
                        None
                    }
                }
                (Err(e), false) => {
                    tracing::error!(error = %e, "Encoding a change event failed; sending a gap event");
                    None
                }
            };
            let payload = match encoded {
                Some(b) => b,
                None => {
                    self.stats.gaps.fetch_add(1, Ordering::Relaxed);
                    let mut buf =
                        Vec::with_capacity(d.header_size_hint(tx) + schema.plan.ops.len());
                    d.write_header(&mut buf, tx, d.change_type.gap(), true);
                    if let Err(e) = avro_writer::write_body(&mut buf, &schema.plan, &**schema, &[])
                    {
                        tracing::error!(error = %e, "Encoding a gap event failed; event lost");
                        continue;
                    }
                    buf
                }
            };
            out.push((entity.clone(), id.clone(), payload));
        }
        for (object, seq) in overflow {
            let Some(schema) = self.object_schema(org_schema, &object) else {
                continue;
            };
            self.stats.overflows.fetch_add(1, Ordering::Relaxed);
            let h = Self::header(tx, &object, ChangeType::GapOverflow, seq);
            match encode_event(
                &schema,
                &ChangeEvent {
                    header: h,
                    values: Vec::new(),
                },
            ) {
                Ok(b) => out.push((Arc::from(object.as_str()), Arc::from(schema.id.as_str()), b)),
                Err(e) => tracing::error!(error = %e, "Encoding a GAP_OVERFLOW event failed"),
            }
        }
        out
    }
}

/// A random (version 4) UUID for `ProducerEvent.id`, from the thread-local generator (no
/// system call per event).
fn event_uuid() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// A schema used by a transaction being built.
struct SchemaUse {
    object: String,
    /// `None` when CDC is disabled for the object or it has no definition.
    schema: Option<Arc<CdcSchema>>,
    /// Entity and schema id, shared by all events of the schema.
    ids: Option<(Arc<str>, Arc<str>)>,
}

/// One change event before merging and header encoding.
struct Draft<'t> {
    /// Index into the transaction's [`SchemaUse`]s.
    schema: usize,
    entity: &'t str,
    change_type: ChangeType,
    sequence_number: u32,
    record_ids: Vec<&'t str>,
    nulled_fields: Vec<String>,
    diff_fields: Vec<String>,
    changed_fields: Vec<String>,
    /// Encoded body (every top-level field after the header), with spare capacity for the
    /// header.
    body: Result<Vec<u8>, EncodeError>,
    /// Next draft with the same merge hash.
    next: Option<usize>,
}

impl Draft<'_> {
    fn merge_hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.schema.hash(&mut h);
        self.change_type.hash(&mut h);
        self.changed_fields.hash(&mut h);
        self.nulled_fields.hash(&mut h);
        self.diff_fields.hash(&mut h);
        match &self.body {
            // The body can be kilobytes: a cheap multiplicative hash (collisions are resolved
            // by `same_change`).
            Ok(b) => bytes_hash(b).hash(&mut h),
            // Never merged (see `same_change`).
            Err(_) => self.sequence_number.hash(&mut h),
        }
        h.finish()
    }

    /// Identical changes: same object, change type, bitmaps and (successfully encoded) values.
    fn same_change(&self, o: &Draft) -> bool {
        self.schema == o.schema
            && self.change_type == o.change_type
            && self.changed_fields == o.changed_fields
            && self.nulled_fields == o.nulled_fields
            && self.diff_fields == o.diff_fields
            && matches!((&self.body, &o.body), (Ok(a), Ok(b)) if a == b)
    }

    fn header_size_hint(&self, tx: &CommittedTransaction) -> usize {
        let arr = |v: &[String]| v.iter().map(|s| s.len() + 2).sum::<usize>() + 2;
        self.entity.len()
            + self.record_ids.iter().map(|r| r.len() + 2).sum::<usize>()
            + tx.change_origin.len()
            + tx.transaction_key.len()
            + tx.commit_user.as_str().len()
            + arr(&self.nulled_fields)
            + arr(&self.diff_fields)
            + arr(&self.changed_fields)
            + 48
    }

    /// Writes the `ChangeEventHeader` (`gap`: without bitmaps).
    fn write_header(
        &self,
        buf: &mut Vec<u8>,
        tx: &CommittedTransaction,
        change_type: ChangeType,
        gap: bool,
    ) {
        let none: &[String] = &[];
        let (pick_nulled, pick_diff, pick_changed) = if gap {
            (none, none, none)
        } else {
            (
                &self.nulled_fields[..],
                &self.diff_fields[..],
                &self.changed_fields[..],
            )
        };
        avro_writer::write_header_view(
            buf,
            &avro_writer::HeaderView {
                entity_name: self.entity,
                record_ids: &self.record_ids,
                change_type,
                change_origin: &tx.change_origin,
                transaction_key: &tx.transaction_key,
                sequence_number: self.sequence_number as i32,
                commit_timestamp: tx.commit_timestamp,
                commit_number: tx.commit_number,
                commit_user: tx.commit_user.as_str(),
                nulled_fields: pick_nulled,
                diff_fields: pick_diff,
                changed_fields: pick_changed,
            },
        );
    }
}

/// The change event of one record change (before merging), with its body encoded.
fn draft_event<'t>(schema: &CdcSchema, schema_index: usize, change: &'t RecordChange) -> Draft<'t> {
    let change_type = match change.change_type {
        ChangeKind::Create => ChangeType::Create,
        ChangeKind::Update => ChangeType::Update,
        ChangeKind::Delete => ChangeType::Delete,
        ChangeKind::Undelete => ChangeType::Undelete,
    };
    let mut d = Draft {
        schema: schema_index,
        entity: &change.object,
        change_type,
        sequence_number: change.sequence_number,
        record_ids: vec![change.record_id.as_str()],
        nulled_fields: Vec::new(),
        diff_fields: Vec::new(),
        changed_fields: Vec::new(),
        body: Ok(Vec::new()),
        next: None,
    };
    d.body = match change.change_type {
        ChangeKind::Create | ChangeKind::Undelete => {
            let mut buf = Vec::new();
            if avro_writer::write_body_from_fields(
                &mut buf,
                &schema.plan,
                &schema.fields,
                &change.values,
            ) {
                Ok(buf)
            } else {
                // Not a change-event layout: the generic path reports what does not fit.
                encode_body(schema, &values_from_fields(schema, &change.values))
            }
        }
        ChangeKind::Delete => encode_body(schema, &[]),
        ChangeKind::Update => {
            let mut values = vec![FieldValue::Null; schema.fields.len() - 1];
            let (mut changed, mut nulled, mut diffed) = (
                FieldBits::default(),
                FieldBits::default(),
                FieldBits::default(),
            );
            for name in &change.changed_fields {
                let Some((pos, comp)) = schema.locate(name) else {
                    continue; // not in events (formula, SystemModstamp, …)
                };
                let is_null = change.nulled_fields.contains(name);
                let new = change.values.get(name).unwrap_or(&Json::Null);
                match comp {
                    None => {
                        changed.top.push(pos);
                        if is_null {
                            nulled.top.push(pos);
                        }
                        let TopField::Scalar { kind, .. } = &schema.fields[pos] else {
                            continue;
                        };
                        let mut v = json_to_value(*kind, new);
                        if let (AvroKind::String, Json::String(n), Some(Json::String(o))) =
                            (kind, new, change.old_values.get(name))
                        {
                            if let Some(d) = text_diff(o, n) {
                                diffed.top.push(pos);
                                v = FieldValue::String(d);
                            }
                        }
                        values[pos - 1] = v;
                    }
                    Some(c) => {
                        changed.nested.entry(pos).or_default().push(c);
                        if is_null {
                            nulled.nested.entry(pos).or_default().push(c);
                        }
                        let TopField::Compound { components, .. } = &schema.fields[pos] else {
                            continue;
                        };
                        if !matches!(values[pos - 1], FieldValue::Record(_)) {
                            values[pos - 1] =
                                FieldValue::Record(vec![FieldValue::Null; components.len()]);
                        }
                        if let FieldValue::Record(parts) = &mut values[pos - 1] {
                            parts[c] = json_to_value(components[c].kind, new);
                        }
                    }
                }
            }
            for b in [&mut changed, &mut nulled, &mut diffed] {
                b.top.sort_unstable();
                for v in b.nested.values_mut() {
                    v.sort_unstable();
                }
            }
            d.changed_fields = bitmap::encode(&changed);
            d.nulled_fields = bitmap::encode(&nulled);
            d.diff_fields = bitmap::encode(&diffed);
            encode_body(schema, &values)
        }
    };
    d
}

/// FxHash-style hash of a byte string, 8 bytes per step.
fn bytes_hash(b: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    for &x in chunks.remainder() {
        h = (h.rotate_left(5) ^ x as u64).wrapping_mul(K);
    }
    h
}

/// The encoded body of `values` (see [`avro_writer::write_body`]), with room for a header.
fn encode_body(schema: &CdcSchema, values: &[FieldValue]) -> Result<Vec<u8>, EncodeError> {
    let mut buf =
        Vec::with_capacity(avro_writer::HEADER_ROOM + avro_writer::body_size_hint(values));
    avro_writer::write_body(&mut buf, &schema.plan, schema, values)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::encode::decode_datum;
    use apache_avro::types::Value as Avro;
    use sfsync_core::SfId;
    use std::time::Duration;

    fn id(prefix: &str, n: u64) -> SfId {
        SfId::from_parts(prefix, n)
    }

    fn tx(changes: Vec<RecordChange>) -> CommittedTransaction {
        CommittedTransaction {
            transaction_key: "0000654a-b07c-5852-d65f-47dc5ecd631d".into(),
            commit_timestamp: now_ms(),
            commit_number: 7,
            commit_user: id("005", 1),
            change_origin: "com/salesforce/api/rest/66.0;client=x".into(),
            changes,
        }
    }

    fn update(seq: u32, rec: u64, fields: &[(&str, Json)]) -> RecordChange {
        let mut values = serde_json::Map::new();
        let mut old = serde_json::Map::new();
        for (k, v) in fields {
            values.insert(k.to_string(), v.clone());
            old.insert(k.to_string(), Json::from("old"));
        }
        RecordChange {
            sequence_number: seq,
            object: "Account".into(),
            record_id: id("001", rec),
            change_type: ChangeKind::Update,
            changed_fields: fields.iter().map(|(k, _)| k.to_string()).collect(),
            nulled_fields: fields
                .iter()
                .filter(|(_, v)| v.is_null())
                .map(|(k, _)| k.to_string())
                .collect(),
            values,
            old_values: old,
        }
    }

    fn simple(seq: u32, object: &str, prefix: &str, rec: u64, kind: ChangeKind) -> RecordChange {
        RecordChange {
            sequence_number: seq,
            object: object.into(),
            record_id: id(prefix, rec),
            change_type: kind,
            changed_fields: vec![],
            nulled_fields: vec![],
            values: Default::default(),
            old_values: Default::default(),
        }
    }

    fn header(bus: &CdcBus, payload: &[u8], schema_id: &str) -> Vec<(String, Avro)> {
        let json = bus.schema_json(schema_id).expect("registered");
        let Avro::Record(f) = decode_datum(&json, payload).unwrap() else {
            panic!()
        };
        let Avro::Record(h) = f[0].1.clone() else {
            panic!()
        };
        h
    }

    fn strs(v: &Avro) -> Vec<String> {
        match v {
            Avro::Array(a) => a
                .iter()
                .map(|x| match x {
                    Avro::String(s) => s.clone(),
                    _ => panic!(),
                })
                .collect(),
            _ => panic!("{v:?}"),
        }
    }

    fn bus(config: CdcConfig) -> (Arc<CdcBus>, Arc<Schema>) {
        (
            CdcBus::new(config, None).unwrap(),
            Arc::new(Schema::standard()),
        )
    }

    #[test]
    fn update_bitmaps_follow_the_worked_example() {
        let (bus, schema) = bus(CdcConfig::default());
        let t = tx(vec![update(
            1,
            1,
            &[
                ("Phone", Json::from("1")),
                ("Fax", Json::Null),
                ("BillingCity", Json::from("Paris")),
                ("BillingPostalCode", Json::from("75001")),
            ],
        )]);
        let ev = bus.build_events(&schema, &t);
        assert_eq!(ev.len(), 1);
        let h = header(&bus, &ev[0].2, &ev[0].1);
        assert_eq!(strs(&h[11].1), ["0xC0", "4-0x0A"]);
        assert_eq!(strs(&h[9].1), ["0x80"]);
        assert_eq!(h[2].1, Avro::Enum(1, "UPDATE".into()));
        assert_eq!(h[5].1, Avro::Int(1));
    }

    #[test]
    fn identical_changes_merge_into_one_event() {
        let (bus, schema) = bus(CdcConfig::default());
        let t = tx(vec![
            update(1, 1, &[("Phone", Json::from("1"))]),
            update(2, 2, &[("Phone", Json::from("2"))]),
            update(3, 3, &[("Phone", Json::from("1"))]),
            simple(4, "Account", "001", 4, ChangeKind::Delete),
            simple(5, "Account", "001", 5, ChangeKind::Delete),
        ]);
        let ev = bus.build_events(&schema, &t);
        assert_eq!(ev.len(), 3);
        let h = header(&bus, &ev[0].2, &ev[0].1);
        assert_eq!(
            strs(&h[1].1),
            [id("001", 1).as_str(), id("001", 3).as_str()]
        );
        assert_eq!(h[5].1, Avro::Int(1));
        let h = header(&bus, &ev[2].2, &ev[2].1);
        assert_eq!(strs(&h[1].1).len(), 2);
        assert_eq!(h[5].1, Avro::Int(4));
        assert_eq!(h[2].1, Avro::Enum(2, "DELETE".into()));
    }

    #[test]
    fn oversized_event_becomes_a_gap() {
        let (bus, schema) = bus(CdcConfig {
            max_event_bytes: 2000,
            ..CdcConfig::default()
        });
        let t = tx(vec![update(
            1,
            1,
            &[("Description", Json::from("x".repeat(5000)))],
        )]);
        let ev = bus.build_events(&schema, &t);
        let h = header(&bus, &ev[0].2, &ev[0].1);
        assert_eq!(h[2].1, Avro::Enum(5, "GAP_UPDATE".into()));
        assert_eq!(strs(&h[1].1), [id("001", 1).as_str()]);
        assert!(strs(&h[11].1).is_empty());
        assert!(ev[0].2.len() < 2000);
    }

    #[test]
    fn gap_fault_injection() {
        let (bus, schema) = bus(CdcConfig::default());
        bus.set_gap_next(1);
        let t = tx(vec![
            simple(1, "Account", "001", 1, ChangeKind::Delete),
            simple(2, "Contact", "003", 2, ChangeKind::Delete),
        ]);
        let ev = bus.build_events(&schema, &t);
        assert_eq!(
            header(&bus, &ev[0].2, &ev[0].1)[2].1,
            Avro::Enum(6, "GAP_DELETE".into())
        );
        assert_eq!(
            header(&bus, &ev[1].2, &ev[1].1)[2].1,
            Avro::Enum(2, "DELETE".into())
        );
    }

    #[test]
    fn overflow_counts_updates_per_changed_field() {
        let (bus, schema) = bus(CdcConfig {
            overflow_threshold: 5,
            ..CdcConfig::default()
        });
        let t = tx(vec![
            simple(1, "Contact", "003", 1, ChangeKind::Delete), // 1
            update(
                2,
                2,
                &[("Phone", Json::from("a")), ("Fax", Json::from("b"))],
            ), // 3
            update(
                3,
                3,
                &[("Phone", Json::from("c")), ("Fax", Json::from("d"))],
            ), // 5
            update(4, 4, &[("Phone", Json::from("e"))]),        // 6 > 5: overflow
            simple(5, "Contact", "003", 5, ChangeKind::Delete), // overflow
            simple(6, "Account", "001", 6, ChangeKind::Delete), // overflow (same entity)
        ]);
        let ev = bus.build_events(&schema, &t);
        assert_eq!(ev.len(), 5, "3 normal events + 2 GAP_OVERFLOW");
        let h = header(&bus, &ev[3].2, &ev[3].1);
        assert_eq!(h[2].1, Avro::Enum(8, "GAP_OVERFLOW".into()));
        assert_eq!(h[0].1, Avro::String("Account".into()));
        assert!(strs(&h[1].1).is_empty());
        let h = header(&bus, &ev[4].2, &ev[4].1);
        assert_eq!(h[0].1, Avro::String("Contact".into()));
    }

    #[test]
    fn disabled_objects_publish_nothing() {
        let (bus, schema) = bus(CdcConfig {
            enabled_objects: Some(vec!["Contact".into()]),
            ..CdcConfig::default()
        });
        let t = tx(vec![simple(1, "Account", "001", 1, ChangeKind::Delete)]);
        assert!(bus.build_events(&schema, &t).is_empty());
    }

    #[test]
    fn retention_expires_events_and_replay_ids() {
        let (bus, schema) = bus(CdcConfig {
            retention: Duration::from_millis(200),
            ..CdcConfig::default()
        });
        let ids = bus.on_commit(
            &schema,
            &tx(vec![simple(1, "Account", "001", 1, ChangeKind::Delete)]),
        );
        assert_eq!(ids, vec![1]);
        assert_eq!(bus.check_replay(&1u64.to_be_bytes()), Ok(1));
        assert!(matches!(
            bus.check_replay(&2u64.to_be_bytes()),
            Err(ReplayError::Future { .. })
        ));
        assert!(matches!(
            bus.check_replay(b"12907414"),
            Err(ReplayError::Future { .. })
        ));
        assert!(matches!(
            bus.check_replay(&[1, 2, 3]),
            Err(ReplayError::BadLength(3))
        ));
        std::thread::sleep(Duration::from_millis(300));
        assert!(matches!(
            bus.check_replay(&1u64.to_be_bytes()),
            Err(ReplayError::Expired { .. })
        ));
        let (events, cursor) = bus.fetch(&Topic::AllChanges, 0, 100, usize::MAX);
        assert!(events.is_empty());
        assert_eq!(cursor, 1);
    }

    #[test]
    fn fetch_filters_by_channel_and_allocation_is_metered() {
        let (bus, schema) = bus(CdcConfig {
            daily_delivery_allocation: 3,
            ..CdcConfig::default()
        });
        bus.on_commit(
            &schema,
            &tx(vec![
                simple(1, "Account", "001", 1, ChangeKind::Delete),
                simple(2, "Contact", "003", 2, ChangeKind::Delete),
            ]),
        );
        let (ev, cursor) = bus.fetch(&Topic::Object("Contact".into()), 0, 10, usize::MAX);
        assert_eq!((ev.len(), ev[0].replay_id, cursor), (1, 2, 2));
        let (ev, _) = bus.fetch(&Topic::AllChanges, 0, 10, usize::MAX);
        assert_eq!(ev.len(), 2);
        assert_eq!(bus.take_deliveries(2), 2);
        assert_eq!(bus.take_deliveries(2), 1);
        assert_eq!(bus.take_deliveries(1), 0);
        assert_eq!(
            bus.limits_extra(),
            vec![("DailyDeliveredPlatformEvents", 3, 0)]
        );
    }

    #[test]
    fn persisted_log_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::standard());
        let b = CdcBus::new(CdcConfig::default(), Some(dir.path())).unwrap();
        b.on_commit(
            &schema,
            &tx(vec![simple(1, "Account", "001", 1, ChangeKind::Delete)]),
        );
        let (ev, _) = b.fetch(&Topic::AllChanges, 0, 10, usize::MAX);
        let sid = ev[0].schema_id.clone();
        drop(b);
        let b = CdcBus::new(CdcConfig::default(), Some(dir.path())).unwrap();
        assert_eq!(b.latest_id(), 1);
        let (ev2, _) = b.fetch(&Topic::AllChanges, 0, 10, usize::MAX);
        assert_eq!(ev2[0].payload, ev[0].payload);
        assert!(b.schema_json(&sid).is_some());
        let ids = b.on_commit(
            &schema,
            &tx(vec![simple(1, "Account", "001", 2, ChangeKind::Delete)]),
        );
        assert_eq!(ids, vec![2]);
    }
}
