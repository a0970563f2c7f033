//! `sfsync bench archive`: the Parquet archive of the raw change log.
//!
//! Generates N raw-log rows whose payloads are CDC-like Avro records of 3–8 KB (a change event
//! header and ~100 nullable fields: record ids and user ids from pools, picklists, names, phones,
//! e-mails, numbers, dates and long text built from a vocabulary with a seeded RNG, so they
//! compress like real records: neither random nor constant bytes), for two objects over four
//! UTC days, and archives them with `Archive::write_file` into a local temporary directory, one
//! file per object and day (at most 25,000 rows each). Each write includes its read-back
//! verification. Figures, not assertions: events/s, MB/s of payload, compression ratio, archive
//! bytes per event and the projected archive storage for a day of 35 million changes.

use std::time::Instant;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sfsync_store::archive::{utc_day, Archive, ArchiveLocation, ArchiveRow};

/// Changes per day the projection is for.
pub const PROJECTED_CHANGES_PER_DAY: f64 = 35e6;
/// Rows per archive file at most (bounds the bench's memory for large N).
const FILE_MAX_ROWS: usize = 25_000;
/// 2024-03-10T00:00:00Z.
const START_MS: i64 = 1_710_028_800_000;
const DAYS: i64 = 4;
const DAY_MS: i64 = 86_400_000;

/// Options of the archive benchmark.
#[derive(Debug, Clone)]
pub struct ArchiveBenchOptions {
    /// Raw-log rows generated and archived.
    pub events: usize,
}

const WORDS: &[&str] = &[
    "account",
    "customer",
    "renewal",
    "contract",
    "pricing",
    "discount",
    "quarter",
    "pipeline",
    "meeting",
    "follow",
    "up",
    "with",
    "the",
    "team",
    "about",
    "new",
    "order",
    "shipment",
    "delayed",
    "warehouse",
    "invoice",
    "payment",
    "overdue",
    "support",
    "ticket",
    "escalated",
    "to",
    "tier",
    "two",
    "engineer",
    "reported",
    "issue",
    "login",
    "password",
    "reset",
    "failed",
    "after",
    "upgrade",
    "version",
    "release",
    "notes",
    "mention",
    "known",
    "bug",
    "in",
    "export",
    "report",
    "dashboard",
    "shows",
    "wrong",
    "totals",
    "for",
    "region",
    "north",
    "south",
    "east",
    "west",
    "europe",
    "asia",
    "pacific",
    "americas",
    "partner",
    "reseller",
    "channel",
    "deal",
    "closed",
    "won",
    "lost",
    "competitor",
    "budget",
    "approved",
    "pending",
    "legal",
    "review",
    "signature",
    "onboarding",
    "training",
    "session",
    "scheduled",
    "next",
    "week",
    "monday",
    "friday",
    "call",
    "back",
    "requested",
    "quote",
    "sent",
    "revised",
    "terms",
    "net",
    "thirty",
    "sixty",
    "days",
    "annual",
    "subscription",
    "license",
    "seats",
    "added",
    "removed",
    "users",
    "admin",
    "permission",
    "profile",
    "role",
    "hierarchy",
    "manager",
    "director",
    "vice",
    "president",
    "sales",
    "marketing",
    "campaign",
    "email",
    "webinar",
    "attended",
    "lead",
    "qualified",
    "converted",
    "opportunity",
    "stage",
    "prospecting",
    "negotiation",
    "proposal",
    "value",
    "high",
    "medium",
    "low",
    "priority",
    "urgent",
    "please",
    "confirm",
    "receipt",
    "thanks",
    "regards",
    "and",
    "of",
    "on",
    "a",
    "is",
    "was",
    "has",
    "been",
    "will",
    "be",
    "customer's",
    "site",
    "visit",
    "installation",
    "hardware",
    "replacement",
    "warranty",
    "expired",
    "extended",
    "service",
    "level",
    "agreement",
    "response",
    "time",
    "hours",
    "business",
    "critical",
    "outage",
    "resolved",
    "root",
    "cause",
    "analysis",
    "attached",
];
const FIRST_NAMES: &[&str] = &[
    "Anna",
    "Ben",
    "Chloé",
    "David",
    "Elena",
    "François",
    "Grace",
    "Hiro",
    "Ingrid",
    "José",
    "Kavya",
    "Liam",
    "Mei",
    "Noah",
    "Olivia",
    "Pavel",
    "Quinn",
    "Rosa",
    "Sven",
    "Tomás",
];
const LAST_NAMES: &[&str] = &[
    "Müller",
    "Smith",
    "García",
    "Rossi",
    "Nakamura",
    "Dubois",
    "Kowalski",
    "Johnson",
    "Silva",
    "Andersson",
    "Novak",
    "Brown",
    "Tanaka",
    "Martin",
    "O'Brien",
    "Schmidt",
    "Lee",
    "Patel",
];
const CITIES: &[&str] = &[
    "San Francisco",
    "New York",
    "London",
    "Paris",
    "München",
    "Tokyo",
    "São Paulo",
    "Sydney",
    "Toronto",
    "Zürich",
    "Madrid",
    "Dublin",
    "Singapore",
    "Chicago",
    "Austin",
    "Berlin",
];
const PICKLISTS: &[&[&str]] = &[
    &["New", "Working", "Escalated", "Closed", "On Hold"],
    &["High", "Medium", "Low"],
    &["Phone", "Email", "Web", "Chat", "Partner Portal"],
    &[
        "Prospect",
        "Customer - Direct",
        "Customer - Channel",
        "Partner",
        "Other",
    ],
    &[
        "Banking",
        "Technology",
        "Retail",
        "Healthcare",
        "Manufacturing",
        "Energy",
        "Media",
    ],
    &["Hot", "Warm", "Cold"],
];

/// The kind of one generated field.
#[derive(Clone, Copy)]
enum Kind {
    RefId(u8),
    Picklist(usize),
    ShortText,
    Name,
    Phone,
    Email,
    City,
    Money,
    Int,
    Bool,
    Date,
    DateTime,
    LongText,
}

/// A CDC-like schema for one object: a fixed list of field kinds.
struct ObjectShape {
    entity: &'static str,
    key_prefix: &'static str,
    fields: Vec<Kind>,
    records: Vec<String>,
}

fn salesforce_id(rng: &mut StdRng, prefix: &str) -> String {
    const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut id = String::with_capacity(18);
    id.push_str(prefix);
    id.push_str("5g0");
    for _ in 0..12 {
        id.push(B62[rng.random_range(0..B62.len())] as char);
    }
    id
}

impl ObjectShape {
    fn new(rng: &mut StdRng, entity: &'static str, key_prefix: &'static str) -> ObjectShape {
        let fields = (0..110)
            .map(|i| match rng.random_range(0..100) {
                _ if i % 37 == 5 => Kind::LongText,
                0..=11 => Kind::RefId(rng.random_range(0..3)),
                12..=25 => Kind::Picklist(rng.random_range(0..PICKLISTS.len())),
                26..=37 => Kind::ShortText,
                38..=42 => Kind::Name,
                43..=47 => Kind::Phone,
                48..=52 => Kind::Email,
                53..=57 => Kind::City,
                58..=67 => Kind::Money,
                68..=75 => Kind::Int,
                76..=85 => Kind::Bool,
                86..=91 => Kind::Date,
                _ => Kind::DateTime,
            })
            .collect();
        let records = (0..20_000)
            .map(|_| salesforce_id(rng, key_prefix))
            .collect();
        ObjectShape {
            entity,
            key_prefix,
            fields,
            records,
        }
    }
}

/// Avro binary encoding of the few types a change event uses.
struct Avro(Vec<u8>);

impl Avro {
    fn long(&mut self, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            self.0.push((z as u8) | 0x80);
            z >>= 7;
        }
        self.0.push(z as u8);
    }
    fn string(&mut self, s: &str) {
        self.long(s.len() as i64);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn strings(&mut self, items: &[String]) {
        if !items.is_empty() {
            self.long(items.len() as i64);
            for s in items {
                self.string(s);
            }
        }
        self.long(0);
    }
    /// A nullable field: union branch 0 is null, 1 the value.
    fn null(&mut self) {
        self.long(0);
    }
    fn some(&mut self) {
        self.long(1);
    }
}

fn words(rng: &mut StdRng, n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    s
}

fn pick<'a>(rng: &mut StdRng, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

/// One CDC-like Avro payload of about `target` bytes.
fn payload(
    rng: &mut StdRng,
    shape: &ObjectShape,
    users: &[String],
    record: &str,
    change_type: usize,
    commit_ms: i64,
    target: usize,
) -> Vec<u8> {
    let mut a = Avro(Vec::with_capacity(target + 512));
    // ChangeEventHeader.
    a.string(shape.entity);
    a.strings(&[record.to_string()]);
    a.long(change_type as i64);
    a.string("com/salesforce/api/soap/62.0;client=SfdcInternalAPI/");
    a.string(&format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        rng.random::<u32>(),
        rng.random::<u16>(),
        rng.random::<u16>(),
        rng.random::<u16>(),
        rng.random::<u64>() & 0xffff_ffff_ffff
    ));
    a.long(1);
    a.long(commit_ms);
    a.long(1_100_583_868_458 + rng.random_range(0..1_000_000_000));
    a.string(&users[rng.random_range(0..users.len())]);
    a.strings(&[]);
    a.strings(&[]);
    let changed = format!("0x{:x}", rng.random::<u64>() & 0x3f_ffff);
    a.strings(&[changed]);
    // Body: fields in schema order, some null, long text to reach the target size.
    let long_texts = shape
        .fields
        .iter()
        .filter(|k| matches!(k, Kind::LongText))
        .count()
        .max(1);
    for kind in &shape.fields {
        if !matches!(kind, Kind::LongText) && rng.random_bool(0.2) {
            a.null();
            continue;
        }
        a.some();
        match *kind {
            Kind::RefId(i) => {
                let prefix = ["005", "001", shape.key_prefix][usize::from(i)];
                if prefix == "005" {
                    a.string(&users[rng.random_range(0..users.len())]);
                } else {
                    let r = &shape.records[rng.random_range(0..shape.records.len())];
                    a.string(r);
                }
            }
            Kind::Picklist(p) => a.string(pick(rng, PICKLISTS[p])),
            Kind::ShortText => {
                let n = rng.random_range(2..6);
                a.string(&words(rng, n));
            }
            Kind::Name => a.string(&format!(
                "{} {}",
                pick(rng, FIRST_NAMES),
                pick(rng, LAST_NAMES)
            )),
            Kind::Phone => a.string(&format!(
                "+1 ({}) {}-{:04}",
                rng.random_range(200..999),
                rng.random_range(200..999),
                rng.random_range(0..10_000)
            )),
            Kind::Email => a.string(&format!(
                "{}.{}@example-{}.com",
                pick(rng, FIRST_NAMES).to_lowercase(),
                pick(rng, LAST_NAMES).to_lowercase(),
                rng.random_range(0..500)
            )),
            Kind::City => a.string(pick(rng, CITIES)),
            Kind::Money => a
                .0
                .extend_from_slice(&(rng.random_range(0..5_000_000) as f64 / 100.0).to_le_bytes()),
            Kind::Int => a.long(rng.random_range(0..10_000)),
            Kind::Bool => a.0.push(u8::from(rng.random_bool(0.5))),
            Kind::Date => a.long(19_000 + rng.random_range(0..1_000)),
            Kind::DateTime => a.long(commit_ms - rng.random_range(0..90 * DAY_MS)),
            Kind::LongText => {
                // Spread what is left of the target over the long-text fields (~6 bytes/word).
                let left = target.saturating_sub(a.0.len() + 64);
                let n = (left / long_texts / 6).max(3);
                a.string(&words(rng, n));
            }
        }
    }
    a.0
}

/// The generated rows, offset-ascending, commit timestamps spread over [`DAYS`] days.
fn generate(events: usize) -> Vec<ArchiveRow> {
    let mut rng = StdRng::seed_from_u64(0x5f5_c0de);
    let users: Vec<String> = (0..200).map(|_| salesforce_id(&mut rng, "005")).collect();
    let shapes = [
        ObjectShape::new(&mut rng, "Account", "001"),
        ObjectShape::new(&mut rng, "Case", "500"),
    ];
    let step = (DAYS * DAY_MS) / events.max(1) as i64;
    (0..events)
        .map(|i| {
            let shape = &shapes[usize::from(rng.random_bool(0.45))];
            let commit_ms = START_MS + i as i64 * step;
            let record = shape.records[rng.random_range(0..shape.records.len())].clone();
            let change_type = if rng.random_bool(0.2) { 0 } else { 1 };
            let target = rng.random_range(3 * 1024..=8 * 1024);
            let body = payload(
                &mut rng,
                shape,
                &users,
                &record,
                change_type,
                commit_ms,
                target,
            );
            let offset = i as i64 + 1;
            ArchiveRow {
                offset,
                channel: format!("/data/{}ChangeEvent", shape.entity),
                event_key: format!("{}:{record}:{commit_ms}:{offset}", shape.entity),
                replay_id: (offset as u64 + 40_000_000).to_be_bytes().to_vec(),
                schema_id: format!("{}-schema-Xw3bQ9", shape.entity),
                entity: shape.entity.to_string(),
                change_type: ["CREATE", "UPDATE"][change_type].to_string(),
                commit_timestamp: commit_ms,
                commit_number: 1_100_583_868_458 + offset,
                sequence_number: 1,
                sealed: false,
                payload: body,
                appended_at_ms: commit_ms + 120,
            }
        })
        .collect()
}

/// Runs the archive benchmark, prints the figures and returns the JSON report.
pub async fn run(opts: ArchiveBenchOptions) -> anyhow::Result<serde_json::Value> {
    let events = opts.events.max(1);
    println!("Generating {events} CDC-like rows (3-8 KB Avro payloads)…");
    let gen_start = Instant::now();
    let rows = tokio::task::spawn_blocking(move || generate(events)).await?;
    let gen_secs = gen_start.elapsed().as_secs_f64();

    // Partition by (object, day), keeping offset order; then files of ≤ FILE_MAX_ROWS rows.
    let mut partitions: std::collections::BTreeMap<(String, String), Vec<ArchiveRow>> =
        std::collections::BTreeMap::new();
    for row in rows {
        partitions
            .entry((row.entity.clone(), utc_day(row.commit_timestamp)))
            .or_default()
            .push(row);
    }
    let payload_bytes: u64 = partitions
        .values()
        .flatten()
        .map(|r| r.payload.len() as u64)
        .sum();

    let dir = tempfile::tempdir().context("creating the archive directory")?;
    let archive = Archive::open(&ArchiveLocation::Local(dir.path().join("archive")))
        .map_err(|e| anyhow::anyhow!(e.chain()))?;
    println!(
        "Archiving into {} ({} partitions)…",
        archive.describe(),
        partitions.len()
    );
    let start = Instant::now();
    let (mut files, mut file_bytes) = (0u64, 0u64);
    for chunk in partitions.values().flat_map(|p| p.chunks(FILE_MAX_ROWS)) {
        let file = archive
            .write_file(chunk)
            .await
            .map_err(|e| anyhow::anyhow!(e.chain()))?;
        files += 1;
        file_bytes += file.bytes;
    }
    let secs = start.elapsed().as_secs_f64();
    let listed: usize = archive
        .partitions()
        .await
        .map_err(|e| anyhow::anyhow!(e.chain()))?
        .iter()
        .map(|p| p.files.len())
        .sum();
    anyhow::ensure!(
        listed as u64 == files,
        "the manifests list {listed} files, {files} were written"
    );

    let events_per_sec = events as f64 / secs;
    let payload_mb_per_sec = payload_bytes as f64 / 1e6 / secs;
    let ratio = payload_bytes as f64 / file_bytes as f64;
    let bytes_per_event = file_bytes as f64 / events as f64;
    let projected_gb = PROJECTED_CHANGES_PER_DAY * bytes_per_event / 1e9;
    println!();
    println!("Parquet archive (zstd level 3, local directory with fsync, every file read back");
    println!("and compared row by row before its manifest entry is written)");
    println!(
        "{events} events, {files} files, {:.1} MB payload → {:.1} MB archived in {secs:.2} s \
         (generation {gen_secs:.1} s, not counted)",
        payload_bytes as f64 / 1e6,
        file_bytes as f64 / 1e6
    );
    println!("events/s:            {events_per_sec:.0}");
    println!("payload MB/s:        {payload_mb_per_sec:.1}");
    println!("compression ratio:   {ratio:.2} (payload bytes / file bytes)");
    println!("bytes per event:     {bytes_per_event:.0}");
    println!(
        "projected storage:   {projected_gb:.1} GB per day of {:.0} M changes",
        PROJECTED_CHANGES_PER_DAY / 1e6
    );
    Ok(json!({
        "suite": "archive",
        "store": "local directory (tempdir), fsync on",
        "compression": "zstd level 3",
        "verification": "each file read back; size, sha256 and every row compared",
        "events": events,
        "objects": 2,
        "days": DAYS,
        "files": files,
        "payload_bytes": payload_bytes,
        "archive_bytes": file_bytes,
        "generation_secs": gen_secs,
        "secs": secs,
        "events_per_sec": events_per_sec,
        "payload_mb_per_sec": payload_mb_per_sec,
        "compression_ratio": ratio,
        "archive_bytes_per_event": bytes_per_event,
        "projected_changes_per_day": PROJECTED_CHANGES_PER_DAY,
        "projected_archive_gb_per_day": projected_gb,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_payloads_are_3_to_8_kb_and_varied() {
        let rows = generate(200);
        for r in &rows {
            assert!(
                (2_900..=9_000).contains(&r.payload.len()),
                "{} bytes",
                r.payload.len()
            );
        }
        assert!(rows.windows(2).all(|w| w[0].offset < w[1].offset));
        assert!(rows.iter().any(|r| r.entity == "Case"));
        assert!(rows.iter().any(|r| r.entity == "Account"));
        assert_ne!(rows[0].payload, rows[1].payload);
    }
}
