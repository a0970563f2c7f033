//! `sfsync bench pubsub`: Change Data Capture decoding and subscribing figures.
//!
//! Measures (1) the Avro decode rate of sfsync's decoder on one thread for ~1 KB and ~5 KB
//! change events written by the emulator's encoder (CREATE: every field materialised; UPDATE:
//! bitmaps decoded and only the changed fields materialised), and (2) the end-to-end subscribe
//! rate from an in-process emulator over TLS gRPC with flow control: events pre-committed, then
//! read from EARLIEST, decoded and acknowledged batch by batch. Figures, not assertions: the
//! floors are reported as pass/fail.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use sfsync_core::{FieldValue, ReplayId};
use sfsync_emulator::cdc::schema::TopField;
use sfsync_emulator::cdc::{self as emu, bitmap as emu_bitmap};
use sfsync_salesforce::pubsub::{ChangeSchema, ReplayStart, Subscriber, SubscriberConfig};
use sfsync_salesforce::{AuthFlow, ClientConfig, CredentialsFile, SalesforceClient, TokenSource};

/// Floors from the issue.
pub const DECODE_FLOOR_PER_SEC: f64 = 200_000.0;
pub const SUBSCRIBE_FLOOR_PER_SEC: f64 = 50_000.0;

/// Options of the Pub/Sub benchmark.
#[derive(Debug, Clone)]
pub struct PubsubBenchOptions {
    /// Decode iterations per event shape (~1 KB events; ~5 KB events use a fifth).
    pub decode_iterations: usize,
    /// Change events pre-committed and then subscribed to.
    pub events: usize,
    /// Records per pre-commit transaction.
    pub per_transaction: usize,
    /// `num_requested` per FetchRequest (≤ 100).
    pub batch_size: u32,
}

impl Default for PubsubBenchOptions {
    fn default() -> Self {
        PubsubBenchOptions {
            decode_iterations: 300_000,
            events: 200_000,
            per_transaction: 200,
            batch_size: 100,
        }
    }
}

/// An Account CREATE event whose payload is about `target` bytes (every field filled, the
/// Description padded).
fn account_event(
    schema: &emu::CdcSchema,
    target: usize,
    ct: emu::ChangeType,
) -> anyhow::Result<(emu::ChangeEvent, Vec<u8>)> {
    let body: Vec<&TopField> = schema
        .fields
        .iter()
        .filter(|f| !matches!(f, TopField::Header))
        .collect();
    let scalar = |kind: emu::schema::AvroKind, i: usize| match kind {
        emu::schema::AvroKind::String => emu::FieldValue::String(format!("value {i}")),
        emu::schema::AvroKind::Boolean => emu::FieldValue::Boolean(i.is_multiple_of(2)),
        emu::schema::AvroKind::Int | emu::schema::AvroKind::Date => {
            emu::FieldValue::Int(19_000 + i as i32)
        }
        emu::schema::AvroKind::Long | emu::schema::AvroKind::DateTime => {
            emu::FieldValue::Long(1_700_000_000_000 + i as i64)
        }
        emu::schema::AvroKind::Double => emu::FieldValue::Double(i as f64 * 1.5),
    };
    let desc = body
        .iter()
        .position(|f| f.name() == "Description")
        .context("Account has a Description")?;
    let mut values: Vec<emu::FieldValue> = body
        .iter()
        .enumerate()
        .map(|(i, f)| match f {
            TopField::Scalar { kind, .. } | TopField::Required { kind, .. } => scalar(*kind, i),
            TopField::Compound { components, .. } => emu::FieldValue::Record(
                components
                    .iter()
                    .enumerate()
                    .map(|(k, c)| scalar(c.kind, k))
                    .collect(),
            ),
            TopField::Header => emu::FieldValue::Null,
        })
        .collect();
    let mut header = emu::ChangeEventHeader {
        entity_name: "Account".into(),
        record_ids: vec!["001000000000001AAA".into()],
        change_type: ct,
        change_origin: "com/salesforce/api/rest/66.0;client=bench".into(),
        transaction_key: "0000654a-b07c-5852-d65f-47dc5ecd631d".into(),
        sequence_number: 1,
        commit_timestamp: 1_700_000_000_000,
        commit_number: 1_100_583_868_458,
        commit_user: "005000000000001AAA".into(),
        nulled_fields: vec![],
        diff_fields: vec![],
        changed_fields: vec![],
    };
    if ct == emu::ChangeType::Update {
        // Pub/Sub UPDATE: unchanged fields null; five fields and one address component changed.
        let mut bits = emu_bitmap::FieldBits::default();
        let mut changed = 0;
        for (i, f) in body.iter().enumerate() {
            match f {
                TopField::Scalar { .. } if changed < 5 || i == desc => {
                    bits.top.push(i + 1);
                    changed += 1;
                }
                TopField::Compound { components, .. } if bits.nested.is_empty() => {
                    bits.nested.insert(i + 1, vec![1]);
                    let parts = (0..components.len())
                        .map(|k| {
                            if k == 1 {
                                emu::FieldValue::String("Paris".into())
                            } else {
                                emu::FieldValue::Null
                            }
                        })
                        .collect();
                    values[i] = emu::FieldValue::Record(parts);
                }
                TopField::Required { .. } => {}
                _ => values[i] = emu::FieldValue::Null,
            }
        }
        header.changed_fields = emu_bitmap::encode(&bits);
        header.nulled_fields = emu_bitmap::encode(&emu_bitmap::FieldBits {
            top: vec![body.len()],
            ..Default::default()
        });
        values[body.len() - 1] = emu::FieldValue::Null;
    }
    values[desc] = emu::FieldValue::String(String::new());
    let event = emu::ChangeEvent {
        header: header.clone(),
        values: values.clone(),
    };
    let base = emu::encode_event(schema, &event)?.len();
    let pad = target.saturating_sub(base + 2);
    values[desc] = emu::FieldValue::String("x".repeat(pad));
    let event = emu::ChangeEvent { header, values };
    let payload = emu::encode_event(schema, &event)?;
    Ok((event, payload))
}

fn decode_figure(
    name: &str,
    schema: &ChangeSchema,
    payload: &[u8],
    iterations: usize,
) -> anyhow::Result<serde_json::Value> {
    let replay = ReplayId::from_bytes(vec![0, 0, 0, 0, 0, 0, 0, 1]);
    // Warm-up and a correctness check.
    let c = schema.decode(payload, replay.clone())?;
    let fields = c.fields.len();
    if c.fields.iter().all(|(_, v)| matches!(v, FieldValue::Null)) {
        bail!("{name}: the benchmark event decoded to no values");
    }
    for _ in 0..iterations / 10 {
        black_box(schema.decode(black_box(payload), replay.clone())?);
    }
    let cpu_start = thread_cpu_ns();
    let start = Instant::now();
    for _ in 0..iterations {
        black_box(schema.decode(black_box(payload), replay.clone())?);
    }
    let wall = start.elapsed().as_secs_f64();
    // Per core = per second of CPU time of this thread (the machine may be shared); wall-clock
    // figures are reported next to it.
    let cpu = match (cpu_start, thread_cpu_ns()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
        _ => wall,
    };
    let per_sec = iterations as f64 / cpu;
    Ok(json!({
        "event": name,
        "payload_bytes": payload.len(),
        "fields_materialised": fields,
        "iterations": iterations,
        "ns_per_event": cpu * 1e9 / iterations as f64,
        "events_per_sec_per_core": per_sec,
        "wall_secs": wall,
        "cpu_secs": cpu,
        "wall_events_per_sec": iterations as f64 / wall,
        "mb_per_sec": per_sec * payload.len() as f64 / 1e6,
    }))
}

/// CPU time of the calling thread in nanoseconds (Linux `/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

async fn subscribe_figure(opts: &PubsubBenchOptions) -> anyhow::Result<serde_json::Value> {
    let dir = std::env::temp_dir().join(format!("sfsync-bench-pubsub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let running = sfsync_emulator::start(sfsync_emulator::EmulatorConfig::ephemeral(&dir))
        .await
        .context("starting the emulator")?;
    let org = running.org().clone();
    let ctx = sfsync_org::CallContext {
        user_id: org.admin_user_id(),
        api: sfsync_org::ApiKind::Rest,
        api_version: "66.0".into(),
        client: Some("bench".into()),
    };
    let events = opts.events;
    let per_tx = opts.per_transaction.max(1);
    let commit_start = Instant::now();
    let committed = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        let mut n = 0;
        while n < events {
            let k = per_tx.min(events - n);
            let ops = (n..n + k)
                .map(|i| sfsync_org::DmlOp::Insert {
                    object: "Account".into(),
                    fields: json!({
                        "Name": format!("Bench account {i}"),
                        "Phone": format!("+1 555 {i:07}"),
                        "BillingCity": "Lyon",
                        "BillingStreet": format!("{i} rue de la République"),
                        "NumberOfEmployees": i as i64 % 5000,
                        "Industry": "Energy",
                        "Description": "A benchmark account created in bulk to measure the Pub/Sub subscribe rate.",
                    })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                })
                .collect();
            for r in org.execute(&ctx, ops, true) {
                if let Err(e) = r {
                    bail!("pre-commit insert failed: {e:?}");
                }
            }
            n += k;
        }
        Ok(n)
    })
    .await??;
    let commit_secs = commit_start.elapsed().as_secs_f64();

    let file = CredentialsFile::load(&running.credentials_path)?;
    let creds = file.credentials(AuthFlow::Password)?;
    let rest = SalesforceClient::new(
        ClientConfig::new(&running.base_url, Some(running.ca_pem_path.clone())),
        creds.clone(),
    )?;
    let tokens = Arc::new(TokenSource::new(rest.http().clone(), creds));
    let mut config = SubscriberConfig::new(
        running.credentials.pubsub_address.clone(),
        Some(running.ca_pem_path.clone()),
    );
    config.batch_size = opts.batch_size;
    config.top_up_at = opts.batch_size / 2;
    config.channel_batches = 16;
    let sub = Subscriber::connect(config, tokens).await?;
    let start = Instant::now();
    let mut stream = sub
        .subscribe("/data/AccountChangeEvent", ReplayStart::Earliest)
        .await?;
    let (mut changes, mut records, mut bytes_fields, mut batches, mut undecoded) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    while records < committed {
        let batch = tokio::time::timeout(Duration::from_secs(60), stream.next_batch())
            .await
            .context("no batch within 60 s")?
            .context("the stream ended")??;
        batches += 1;
        undecoded += batch.undecoded.len();
        for c in &batch.changes {
            changes += 1;
            records += c.header.record_ids.len();
            bytes_fields += c.fields.len();
        }
        if let Some(cp) = &batch.checkpoint {
            stream.ack(cp);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    drop(stream);
    running.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({
        "transport": "TLS gRPC (loopback), emulator in-process on the same cores",
        "events_committed": committed,
        "commit_secs": commit_secs,
        "change_events_received": changes,
        "records_covered": records,
        "fields_decoded": bytes_fields,
        "batches": batches,
        "undecoded": undecoded,
        "batch_size": opts.batch_size,
        "secs": secs,
        "events_per_sec": changes as f64 / secs,
        "records_per_sec": records as f64 / secs,
    }))
}

/// Runs the Pub/Sub benchmark, prints a table and returns the JSON report.
pub async fn run(opts: PubsubBenchOptions) -> anyhow::Result<serde_json::Value> {
    let org = sfsync_org::Schema::demo();
    let schema = emu::schema_for(org.object("Account").context("demo Account")?);
    let ours = ChangeSchema::parse(&schema.id, &schema.json)?;
    let mut decode = Vec::new();
    for (name, target, ct, iters) in [
        (
            "CREATE ~1 KB",
            1024,
            emu::ChangeType::Create,
            opts.decode_iterations,
        ),
        (
            "UPDATE ~1 KB",
            1024,
            emu::ChangeType::Update,
            opts.decode_iterations,
        ),
        (
            "CREATE ~5 KB",
            5 * 1024,
            emu::ChangeType::Create,
            opts.decode_iterations / 5,
        ),
        (
            "UPDATE ~5 KB",
            5 * 1024,
            emu::ChangeType::Update,
            opts.decode_iterations / 5,
        ),
    ] {
        let (_, payload) = account_event(&schema, target, ct)?;
        decode.push(decode_figure(name, &ours, &payload, iters.max(1))?);
    }
    let subscribe = subscribe_figure(&opts).await?;

    println!();
    println!("Pub/Sub decode (one thread, sfsync decoder, emulator-encoded Account events;");
    println!("per core = per second of this thread's CPU time; wall-clock rate alongside)");
    println!(
        "{:<14} {:>8} {:>8} {:>12} {:>16} {:>10} {:>14}",
        "event", "bytes", "fields", "ns/event", "events/s/core", "MB/s", "wall events/s"
    );
    for d in &decode {
        println!(
            "{:<14} {:>8} {:>8} {:>12.0} {:>16.0} {:>10.1} {:>14.0}",
            d["event"].as_str().unwrap_or(""),
            d["payload_bytes"],
            d["fields_materialised"],
            d["ns_per_event"].as_f64().unwrap_or(0.0),
            d["events_per_sec_per_core"].as_f64().unwrap_or(0.0),
            d["mb_per_sec"].as_f64().unwrap_or(0.0),
            d["wall_events_per_sec"].as_f64().unwrap_or(0.0),
        );
    }
    println!();
    println!("Pub/Sub subscribe, end to end (EARLIEST, flow control, decode + ack per batch)");
    println!(
        "{} events in {:.2} s = {:.0} events/s ({} batches, batch size {}, {} undecoded)",
        subscribe["change_events_received"],
        subscribe["secs"].as_f64().unwrap_or(0.0),
        subscribe["events_per_sec"].as_f64().unwrap_or(0.0),
        subscribe["batches"],
        subscribe["batch_size"],
        subscribe["undecoded"],
    );
    let decode_1kb = decode[0]["events_per_sec_per_core"].as_f64().unwrap_or(0.0);
    let sub_rate = subscribe["events_per_sec"].as_f64().unwrap_or(0.0);
    let decode_pass = decode_1kb >= DECODE_FLOOR_PER_SEC;
    let subscribe_pass = sub_rate >= SUBSCRIBE_FLOOR_PER_SEC;
    println!();
    println!(
        "floors: decode 1 KB ≥ {DECODE_FLOOR_PER_SEC:.0}/s/core: {}; subscribe ≥ {SUBSCRIBE_FLOOR_PER_SEC:.0}/s: {}",
        if decode_pass { "PASS" } else { "FAIL" },
        if subscribe_pass { "PASS" } else { "FAIL" }
    );
    Ok(json!({
        "suite": "pubsub",
        "decode": decode,
        "subscribe": subscribe,
        "floors": {
            "decode_1kb_events_per_sec_per_core": {"floor": DECODE_FLOOR_PER_SEC, "measured": decode_1kb, "pass": decode_pass},
            "subscribe_events_per_sec": {"floor": SUBSCRIBE_FLOOR_PER_SEC, "measured": sub_rate, "pass": subscribe_pass},
        },
    }))
}
