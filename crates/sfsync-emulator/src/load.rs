//! A traffic generator shaped like the design workload: users and other integrations changing
//! Cases, Accounts, Contacts, Opportunities and the public-sector custom objects inside the org —
//! steady load with enrolment-window bursts, long descriptions so change events reach 3–8 KB,
//! multi-record transactions (mass status updates), deletes and undeletes. It drives the org
//! directly (as Salesforce users would), never through sfsync's client, and is deterministic for a
//! seed. Every change it makes is an ordinary DML transaction, so CDC and queries see it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sfsync_core::SfId;
use sfsync_org::{ApiKind, CallContext, DmlOp, DmlOutcome, Fields, Org};

/// Shape of the generated load.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Steady record changes per second.
    pub changes_per_sec: f64,
    /// Every `burst_every`, for `burst_len`, the rate is multiplied by `burst_factor`
    /// (enrolment windows). `burst_factor` 1.0 disables bursts.
    pub burst_every: Duration,
    pub burst_len: Duration,
    pub burst_factor: f64,
    pub seed: u64,
    /// Records per object seeded before the load starts (parents for lookups, rows to update).
    pub initial_records: usize,
    /// Share of Contact creates (0.0–1.0) given a malformed `MailingPostalCode`
    /// ([`BAD_POSTAL_CODE_PREFIX`]…) that Salesforce accepts but a data-quality rule should
    /// not; the others get a valid five-digit code. For testing quarantines end to end.
    pub bad_record_rate: f64,
}

/// How a malformed postal code injected by [`LoadConfig::bad_record_rate`] starts.
pub const BAD_POSTAL_CODE_PREFIX: &str = "INVALID-";

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            changes_per_sec: 500.0,
            burst_every: Duration::from_secs(60),
            burst_len: Duration::from_secs(10),
            burst_factor: 4.0,
            seed: 1,
            initial_records: 200,
            bad_record_rate: 0.0,
        }
    }
}

/// Counters of a running generator.
#[derive(Debug, Default)]
pub struct LoadStats {
    pub transactions: AtomicU64,
    pub changes: AtomicU64,
    pub failed_ops: AtomicU64,
    /// Ids of the Contacts created with a malformed postal code ([`LoadConfig::bad_record_rate`]).
    pub bad_records: std::sync::Mutex<Vec<String>>,
}

/// A snapshot of [`LoadStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSnapshot {
    pub transactions: u64,
    pub changes: u64,
    pub failed_ops: u64,
}

/// A running generator; stop it with [`LoadGenerator::stop`].
pub struct LoadGenerator {
    stop: Arc<AtomicBool>,
    stats: Arc<LoadStats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoadGenerator {
    /// Seeds the initial records and starts generating on a dedicated thread.
    pub fn start(org: Arc<Org>, config: LoadConfig) -> Result<LoadGenerator, sfsync_org::SfError> {
        let stats = Arc::new(LoadStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut worker = Worker::new(org, config)?;
        let (s, st) = (stop.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("sfsync-load".into())
            .spawn(move || worker.run(&s, &st))
            .expect("spawning the load thread");
        Ok(LoadGenerator {
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// Ids of the records created with injected bad data so far.
    pub fn bad_record_ids(&self) -> Vec<String> {
        self.stats
            .bad_records
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    pub fn snapshot(&self) -> LoadSnapshot {
        LoadSnapshot {
            transactions: self.stats.transactions.load(Ordering::Relaxed),
            changes: self.stats.changes.load(Ordering::Relaxed),
            failed_ops: self.stats.failed_ops.load(Ordering::Relaxed),
        }
    }

    /// Stops the generator and waits for its last transaction to commit.
    pub fn stop(mut self) -> LoadSnapshot {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.snapshot()
    }
}

impl Drop for LoadGenerator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

const OBJECTS: [&str; 7] = [
    "Case",
    "Service_Request__c",
    "Contact",
    "Account",
    "Opportunity",
    "Payment__c",
    "Lead",
];

/// Ids with O(1) insert, remove and uniform random pick (the generator tracks every live and
/// deleted record; a linear `retain` per change made it cost more as a run went on).
#[derive(Default)]
struct IdSet {
    ids: Vec<SfId>,
    at: HashMap<SfId, usize>,
}

impl IdSet {
    fn from(ids: Vec<SfId>) -> IdSet {
        let mut set = IdSet::default();
        for id in ids {
            set.insert(id);
        }
        set
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn insert(&mut self, id: SfId) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.at.entry(id) {
            e.insert(self.ids.len());
            self.ids.push(id);
        }
    }

    fn remove(&mut self, id: &SfId) {
        if let Some(i) = self.at.remove(id) {
            self.ids.swap_remove(i);
            if let Some(moved) = self.ids.get(i) {
                self.at.insert(*moved, i);
            }
        }
    }

    fn pick(&self, rng: &mut StdRng) -> Option<SfId> {
        if self.ids.is_empty() {
            return None;
        }
        Some(self.ids[rng.random_range(0..self.ids.len())])
    }
}

/// Random text built once per generator: descriptions are slices of it at random word
/// boundaries, instead of thousands of random picks per change (the load generator shares the
/// machine with the pipeline it measures, so its own cost matters).
struct Corpus {
    text: String,
    /// Byte offset of every word; the last entry is the text's length plus one.
    starts: Vec<usize>,
}

impl Corpus {
    const WORDS: usize = 16_384;

    fn new(rng: &mut StdRng) -> Corpus {
        let mut text = String::with_capacity(Self::WORDS * 10);
        let mut starts = Vec::with_capacity(Self::WORDS + 1);
        for i in 0..Self::WORDS {
            if i > 0 {
                text.push(if i % 14 == 0 { '\n' } else { ' ' });
            }
            starts.push(text.len());
            text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        }
        starts.push(text.len() + 1);
        Corpus { text, starts }
    }
}

struct Worker {
    org: Arc<Org>,
    config: LoadConfig,
    rng: StdRng,
    live: HashMap<&'static str, IdSet>,
    deleted: IdSet,
    /// Random text that [`Worker::words`] slices (see [`Corpus`]).
    corpus: Corpus,
    picklists: HashMap<(String, String), Vec<String>>,
    users: Vec<CallContext>,
    serial: u64,
    /// The last `fields_for_create` injected bad data.
    last_bad: bool,
}

const WORDS: &[&str] = &[
    "resident",
    "application",
    "benefit",
    "eligibility",
    "review",
    "document",
    "appointment",
    "housing",
    "assistance",
    "request",
    "follow-up",
    "caseworker",
    "payment",
    "schedule",
    "verification",
    "income",
    "household",
    "renewal",
    "notice",
    "appeal",
    "service",
    "permit",
    "inspection",
    "approved",
    "pending",
    "escalated",
    "callback",
    "address",
    "updated",
    "county",
];

impl Worker {
    fn new(org: Arc<Org>, config: LoadConfig) -> Result<Worker, sfsync_org::SfError> {
        let schema = org.schema();
        let mut picklists = HashMap::new();
        for o in &schema.objects {
            for f in &o.fields {
                if !f.picklist_values.is_empty() {
                    picklists.insert((o.name.clone(), f.name.clone()), f.picklist_values.clone());
                }
            }
        }
        let admin = org.admin_user_id();
        let integration = org.integration_user_id();
        let users = vec![
            // Lightning UI edits.
            CallContext {
                user_id: admin,
                api: ApiKind::Soap,
                api_version: "66.0".into(),
                client: Some("SfdcInternalAPI/".into()),
            },
            // Another integration writing over REST.
            CallContext {
                user_id: integration,
                api: ApiKind::Rest,
                api_version: "62.0".into(),
                client: Some("case-portal".into()),
            },
            // Apex / flows: no client id.
            CallContext {
                user_id: admin,
                api: ApiKind::Rest,
                api_version: "66.0".into(),
                client: None,
            },
        ];
        let seed_ctx = CallContext {
            user_id: admin,
            api: ApiKind::Admin,
            api_version: "66.0".into(),
            client: None,
        };
        let mut live: HashMap<&'static str, IdSet> = HashMap::new();
        for (i, o) in OBJECTS.iter().enumerate() {
            if schema.object(o).is_none() {
                continue;
            }
            let ids = org.seed(
                &seed_ctx,
                o,
                config.initial_records,
                config.seed * 100 + i as u64,
            )?;
            live.insert(o, IdSet::from(ids));
        }
        let mut rng = StdRng::seed_from_u64(config.seed);
        let corpus = Corpus::new(&mut rng);
        Ok(Worker {
            rng,
            corpus,
            org,
            config,
            live,
            deleted: IdSet::default(),
            picklists,
            users,
            serial: 0,
            last_bad: false,
        })
    }

    fn rate_at(&self, elapsed: Duration) -> f64 {
        let c = &self.config;
        if c.burst_factor > 1.0 && !c.burst_every.is_zero() {
            let phase = elapsed.as_secs_f64() % c.burst_every.as_secs_f64();
            if phase < c.burst_len.as_secs_f64() {
                return c.changes_per_sec * c.burst_factor;
            }
        }
        c.changes_per_sec
    }

    fn run(&mut self, stop: &AtomicBool, stats: &LoadStats) {
        let start = Instant::now();
        let mut budget = 0.0f64;
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            budget += self.rate_at(now - start) * (now - last).as_secs_f64();
            last = now;
            // Cap the backlog at one second of load so a stall does not cause a stampede.
            budget = budget.min(self.rate_at(now - start).max(1.0));
            if budget < 1.0 {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            let (ctx, ops, bad) = self.next_transaction();
            let n = ops.len() as u64;
            let results = self.org.execute(&ctx, ops, false);
            let mut ok = 0u64;
            for (i, r) in results.into_iter().enumerate() {
                match r {
                    Ok(out) => {
                        ok += 1;
                        if let (DmlOutcome::Created(id), true) = (&out, bad.contains(&i)) {
                            if let Ok(mut v) = stats.bad_records.lock() {
                                v.push(id.to_string());
                            }
                        }
                        self.track(out);
                    }
                    Err(_) => {
                        stats.failed_ops.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            stats.transactions.fetch_add(1, Ordering::Relaxed);
            stats.changes.fetch_add(ok, Ordering::Relaxed);
            budget -= n as f64;
        }
    }

    fn track(&mut self, out: DmlOutcome) {
        let schema = self.org.schema();
        let object_of = |id: &SfId| {
            schema
                .object_by_prefix(id.key_prefix())
                .and_then(|o| OBJECTS.iter().copied().find(|x| *x == o.name))
        };
        match out {
            DmlOutcome::Created(id) | DmlOutcome::Undeleted(id) => {
                if let Some(o) = object_of(&id) {
                    self.live.entry(o).or_default().insert(id);
                }
                self.deleted.remove(&id);
            }
            DmlOutcome::Deleted(id) => {
                if let Some(o) = object_of(&id) {
                    if let Some(v) = self.live.get_mut(o) {
                        v.remove(&id);
                    }
                }
                self.deleted.insert(id);
            }
            DmlOutcome::Updated(_) | DmlOutcome::HardDeleted(_) => {}
        }
    }

    /// `min..=max` words of random text: a slice of the corpus at a random word.
    fn words(&mut self, min: usize, max: usize) -> String {
        let n = self.rng.random_range(min..=max);
        let first = self.rng.random_range(0..=self.corpus.starts.len() - 1 - n);
        self.corpus.text[self.corpus.starts[first]..self.corpus.starts[first + n] - 1].to_string()
    }

    fn pick(&mut self, object: &str, field: &str) -> Option<String> {
        let values = self
            .picklists
            .get(&(object.to_string(), field.to_string()))?;
        if values.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..values.len());
        Some(values[i].clone())
    }

    fn random_live(&mut self, object: &str) -> Option<SfId> {
        self.live.get(object)?.pick(&mut self.rng)
    }

    fn fields_for_create(&mut self, object: &str) -> Fields {
        self.serial += 1;
        self.last_bad = false;
        let serial = self.serial;
        let mut f = Fields::new();
        let desc = self.words(350, 900);
        match object {
            "Case" => {
                f.insert("Subject".into(), json!(self.words(4, 9)));
                f.insert("Description".into(), json!(desc));
                if let Some(s) = self.pick("Case", "Priority") {
                    f.insert("Priority".into(), json!(s));
                }
                if let Some(s) = self.pick("Case", "Origin") {
                    f.insert("Origin".into(), json!(s));
                }
                if let Some(a) = self.random_live("Account") {
                    f.insert("AccountId".into(), json!(a.to_string()));
                }
                if let Some(c) = self.random_live("Contact") {
                    f.insert("ContactId".into(), json!(c.to_string()));
                }
            }
            "Service_Request__c" => {
                f.insert("Name".into(), json!(format!("SR-{serial:08}")));
                f.insert("Description__c".into(), json!(desc));
                f.insert(
                    "External_Id__c".into(),
                    json!(format!("LOAD-SR-{}-{serial}", self.config.seed)),
                );
                if let Some(s) = self.pick("Service_Request__c", "Status__c") {
                    f.insert("Status__c".into(), json!(s));
                }
                if let Some(c) = self.random_live("Contact") {
                    f.insert("Contact__c".into(), json!(c.to_string()));
                }
                let amount = self.rng.random_range(10.0..5000.0f64);
                f.insert("Amount__c".into(), json!((amount * 100.0).round() / 100.0));
            }
            "Contact" => {
                f.insert(
                    "FirstName".into(),
                    json!(WORDS[self.rng.random_range(0..WORDS.len())]),
                );
                f.insert("LastName".into(), json!(format!("Resident{serial}")));
                f.insert(
                    "Email".into(),
                    json!(format!("resident{serial}@example.org")),
                );
                if self.config.bad_record_rate > 0.0 {
                    let bad = self
                        .rng
                        .random_bool(self.config.bad_record_rate.clamp(0.0, 1.0));
                    let code = if bad {
                        format!("{BAD_POSTAL_CODE_PREFIX}{serial}")
                    } else {
                        format!("{:05}", 10_000 + serial % 90_000)
                    };
                    f.insert("MailingPostalCode".into(), json!(code));
                    self.last_bad = bad;
                }
                f.insert("Description".into(), json!(desc));
                if let Some(a) = self.random_live("Account") {
                    f.insert("AccountId".into(), json!(a.to_string()));
                }
            }
            "Payment__c" => {
                f.insert("Name".into(), json!(format!("PAY-{serial:08}")));
                let amount = self.rng.random_range(10.0..2000.0f64);
                f.insert("Amount__c".into(), json!((amount * 100.0).round() / 100.0));
                f.insert(
                    "Reference_Number__c".into(),
                    json!(format!("PAY-{}-{serial}", self.config.seed)),
                );
                if let Some(s) = self.pick("Payment__c", "Status__c") {
                    f.insert("Status__c".into(), json!(s));
                }
                if let Some(sr) = self.random_live("Service_Request__c") {
                    f.insert("Service_Request__c".into(), json!(sr.to_string()));
                }
            }
            "Lead" => {
                f.insert("LastName".into(), json!(format!("Applicant{serial}")));
                f.insert("Company".into(), json!(format!("Household {serial}")));
                f.insert("Description".into(), json!(desc));
            }
            "Opportunity" => {
                f.insert("Name".into(), json!(format!("Grant {serial}")));
                f.insert("CloseDate".into(), json!("2027-06-30"));
                if let Some(s) = self.pick("Opportunity", "StageName") {
                    f.insert("StageName".into(), json!(s));
                }
                f.insert("Description".into(), json!(desc));
            }
            _ => {
                f.insert("Name".into(), json!(format!("Agency {serial}")));
                f.insert("Description".into(), json!(desc));
            }
        }
        f
    }

    fn fields_for_update(&mut self, object: &str) -> Fields {
        let mut f = Fields::new();
        let long = self.rng.random_bool(0.6);
        let (status_field, desc_field) = match object {
            "Case" => ("Status", "Description"),
            "Service_Request__c" => ("Status__c", "Description__c"),
            "Payment__c" => ("Status__c", ""),
            "Opportunity" => ("StageName", "Description"),
            "Lead" => ("Status", "Description"),
            _ => ("", "Description"),
        };
        if !status_field.is_empty() {
            if let Some(s) = self.pick(object, status_field) {
                f.insert(status_field.into(), json!(s));
            }
        }
        if long && !desc_field.is_empty() {
            let d = self.words(350, 900);
            f.insert(desc_field.into(), json!(d));
        }
        match object {
            "Account" => {
                f.insert(
                    "Phone".into(),
                    json!(format!(
                        "+1 555 {:07}",
                        self.rng.random_range(0..10_000_000)
                    )),
                );
            }
            "Contact" => {
                if self.rng.random_bool(0.3) {
                    // Explicit null: shows up in nulledFields.
                    f.insert("Phone".into(), Value::Null);
                } else {
                    f.insert(
                        "Phone".into(),
                        json!(format!(
                            "+1 555 {:07}",
                            self.rng.random_range(0..10_000_000)
                        )),
                    );
                }
            }
            _ => {}
        }
        if f.is_empty() {
            f.insert("Description".into(), json!(self.words(5, 20)));
        }
        f
    }

    /// A transaction: its context, its operations, and which of them carry injected bad data.
    fn next_transaction(&mut self) -> (CallContext, Vec<DmlOp>, Vec<usize>) {
        let ctx = self.users[self.rng.random_range(0..self.users.len())].clone();
        let roll: f64 = self.rng.random();
        let object = {
            let w: f64 = self.rng.random();
            match w {
                x if x < 0.35 => "Case",
                x if x < 0.60 => "Service_Request__c",
                x if x < 0.72 => "Contact",
                x if x < 0.80 => "Account",
                x if x < 0.88 => "Opportunity",
                x if x < 0.96 => "Payment__c",
                _ => "Lead",
            }
        };
        let mut ops = Vec::new();
        let mut bad = Vec::new();
        if roll < 0.28 {
            let n = self.rng.random_range(1..=3);
            for _ in 0..n {
                let fields = self.fields_for_create(object);
                if self.last_bad {
                    bad.push(ops.len());
                }
                ops.push(DmlOp::Insert {
                    object: object.to_string(),
                    fields,
                });
            }
        } else if roll < 0.90 {
            // One record, or a mass update: the same change on several records (merged event).
            let mass = self.rng.random_bool(0.1);
            let n = if mass {
                self.rng.random_range(2..=5)
            } else {
                1
            };
            let fields = self.fields_for_update(object);
            for _ in 0..n {
                if let Some(id) = self.random_live(object) {
                    ops.push(DmlOp::Update {
                        object: object.to_string(),
                        id: id.to_string(),
                        fields: fields.clone(),
                    });
                }
            }
        } else if roll < 0.96 {
            if let Some(id) = self.random_live(object) {
                // Keep a floor of live records to update.
                if self.live.get(object).map_or(0, IdSet::len) > 20 {
                    ops.push(DmlOp::Delete { id: id.to_string() });
                }
            }
        } else if let Some(id) = self.deleted.pick(&mut self.rng) {
            ops.push(DmlOp::Undelete { id: id.to_string() });
        }
        if ops.is_empty() {
            let fields = self.fields_for_create(object);
            if self.last_bad {
                bad.push(0);
            }
            ops.push(DmlOp::Insert {
                object: object.to_string(),
                fields,
            });
        }
        (ctx, ops, bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfsync_org::{OrgConfig, Schema};
    use std::sync::Mutex;

    fn org() -> Arc<Org> {
        Arc::new(Org::new(
            Schema::demo(),
            OrgConfig {
                org_id: SfId::from_parts("00D", 42),
                admin_username: "admin@example.org".into(),
            },
        ))
    }

    #[test]
    fn generates_committed_transactions_of_every_kind() {
        let org = org();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        org.add_commit_listener(Arc::new(move |t| s.lock().unwrap().push(t.clone())));
        let gen = LoadGenerator::start(
            org.clone(),
            LoadConfig {
                changes_per_sec: 5000.0,
                initial_records: 30,
                ..LoadConfig::default()
            },
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(800));
        let snap = gen.stop();
        assert!(snap.transactions > 50, "{snap:?}");
        assert_eq!(snap.failed_ops, 0, "the generator only makes valid changes");
        let txs = seen.lock().unwrap();
        let kinds: std::collections::HashSet<_> = txs
            .iter()
            .flat_map(|t| t.changes.iter().map(|c| format!("{:?}", c.change_type)))
            .collect();
        for k in ["Create", "Update", "Delete"] {
            assert!(kinds.contains(k), "missing {k} in {kinds:?}");
        }
        assert!(txs
            .iter()
            .any(|t| t.change_origin.contains("client=SfdcInternalAPI/")));
        // Long descriptions make creates heavy enough for 3–8 KB change events.
        let big = txs
            .iter()
            .flat_map(|t| t.changes.iter())
            .filter(|c| serde_json::to_string(&c.values).unwrap().len() > 2500)
            .count();
        assert!(big > 0);
    }
}
