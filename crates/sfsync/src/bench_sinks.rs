//! `sfsync bench sinks`: webhook delivery rate from the delivery outbox to a local receiver.
//!
//! Fills a SQLite warehouse's delivery outbox with N curated Case changes (about 40 fields,
//! ~1.5 KB of JSON each, one PII field sealed as in production), then runs the real sink engine
//! with one webhook sink per batch size against a receiver served in this process on loopback
//! (plain HTTP/1.1; it checks the HMAC-SHA256 signature of every request, parses the JSON and
//! counts the changes, as a minimal real consumer would). Each run starts a new sink at the
//! start of the outbox and ends when the sink's position reaches its end.
//!
//! Figures, not assertions: changes/s, requests/s, MB/s of request bodies, CPU µs per change
//! (sfsync and the receiver together: they share this process) and the acknowledged batch
//! latency.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use sfsync_pipeline::sinks::{self, webhook, SinkSpec, SinksConfig, StartFrom};
use sfsync_store::{
    ChangeSource, ColumnDef, ColumnType, CuratedBatch, Delivery, Keyring, ObjectModel,
    OutboxChange, PiiMode, SqliteChangeLog, Value, Warehouse,
};

/// Options of the sinks benchmark.
#[derive(Debug, Clone)]
pub struct SinksBenchOptions {
    /// Changes in the outbox, delivered once per batch size.
    pub events: usize,
}

const SECRET: &[u8] = b"bench-signing-secret-0123456789abcdef";
const BATCH_SIZES: [usize; 3] = [50, 200, 1000];

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    changes: AtomicU64,
    bytes: AtomicU64,
    bad: AtomicU64,
}

async fn receive(
    axum::extract::State(c): axum::extract::State<Arc<Counts>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    c.requests.fetch_add(1, Relaxed);
    c.bytes.fetch_add(body.len() as u64, Relaxed);
    let sig = headers
        .get("x-sfsync-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !webhook::verify_signature(SECRET, sig, &body, chrono::Utc::now().timestamp(), 300) {
        c.bad.fetch_add(1, Relaxed);
        return axum::http::StatusCode::UNAUTHORIZED;
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => {
            let n = v["changes"].as_array().map_or(0, Vec::len);
            c.changes.fetch_add(n as u64, Relaxed);
            axum::http::StatusCode::OK
        }
        Err(_) => axum::http::StatusCode::BAD_REQUEST,
    }
}

fn model() -> ObjectModel {
    let mut columns = vec![ColumnDef {
        name: "id".into(),
        field: "Id".into(),
        ty: ColumnType::Text,
        pii: false,
    }];
    for i in 0..36 {
        columns.push(ColumnDef {
            name: format!("field_{i}__c"),
            field: format!("Field_{i}__c"),
            ty: ColumnType::Text,
            pii: false,
        });
    }
    columns.push(ColumnDef {
        name: "suppliedemail".into(),
        field: "SuppliedEmail".into(),
        ty: ColumnType::Text,
        pii: true,
    });
    columns.push(ColumnDef {
        name: "createddate".into(),
        field: "CreatedDate".into(),
        ty: ColumnType::Timestamp,
        pii: false,
    });
    columns.push(ColumnDef {
        name: "amount__c".into(),
        field: "Amount__c".into(),
        ty: ColumnType::Real,
        pii: false,
    });
    ObjectModel {
        object: "Case".into(),
        table: "sf_case".into(),
        columns,
        history: None,
    }
}

fn change(n: usize) -> OutboxChange {
    let id = format!("500{n:015}");
    let mut values = BTreeMap::new();
    values.insert("id".into(), Value::Text(id.clone()));
    for i in 0..36 {
        values.insert(
            format!("field_{i}__c"),
            Value::Text(format!("value {i} of case {n}, status pending review")),
        );
    }
    values.insert(
        "suppliedemail".into(),
        Value::Text(format!("person{n}@example.org")),
    );
    values.insert(
        "createddate".into(),
        Value::Timestamp(1_790_000_000_000 + n as i64),
    );
    values.insert("amount__c".into(), Value::Real(n as f64 * 1.25));
    OutboxChange {
        object: "Case".into(),
        record_id: id.clone(),
        change_type: "UPDATE".into(),
        event_key: format!("{id}:{n}"),
        commit_timestamp_ms: 1_790_000_000_000 + n as i64,
        applied_at_ms: 1_790_000_000_500 + n as i64,
        source: ChangeSource::Cdc,
        origin_client: None,
        fields: vec!["Field_1__c".into(), "Field_2__c".into()],
        deleted: false,
        values,
        run_id: "bench".into(),
    }
}

pub async fn run(opts: SinksBenchOptions) -> anyhow::Result<serde_json::Value> {
    let events = opts.events.max(1);
    let dir = tempfile::tempdir().context("creating the bench directory")?;
    let store = SqliteChangeLog::open(dir.path().join("wh.db"))
        .await
        .context("opening the warehouse")?;
    store.set_keyring(Some(Arc::new(Keyring::new("bench", [9; 32]))));
    store.ensure_model(&model()).await?;
    println!("Filling the delivery outbox with {events} Case changes…");
    let fill = Instant::now();
    for start in (0..events).step_by(1000) {
        let batch = CuratedBatch {
            deliveries: (start..(start + 1000).min(events)).map(change).collect(),
            ..Default::default()
        };
        store.commit_curated("bench", None, &batch).await?;
    }
    let fill_secs = fill.elapsed().as_secs_f64();
    let store: Arc<SqliteChangeLog> = Arc::new(store);
    let (end, _) = store.outbox_bounds("Case").await?;

    let counts = Arc::new(Counts::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(counts.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let mut runs = Vec::new();
    println!();
    println!(
        "{:>6}  {:>10}  {:>9}  {:>8}  {:>9}  {:>10}",
        "batch", "changes/s", "req/s", "MB/s", "cpu µs/ch", "ack ms avg"
    );
    for batch_max in BATCH_SIZES {
        let before = (
            counts.requests.load(Relaxed),
            counts.changes.load(Relaxed),
            counts.bytes.load(Relaxed),
        );
        let name = format!("bench-{batch_max}");
        let spec = SinkSpec {
            name: name.clone(),
            system: None,
            objects: vec!["Case".into()],
            batch_max,
            pii: PiiMode::Omit,
            dead_letter_after: Duration::from_secs(3600),
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            start: StartFrom::Earliest,
            transport: Arc::new(
                webhook::Webhook::new(webhook::WebhookConfig {
                    sink: name.clone(),
                    url: url.clone(),
                    secret: SECRET.to_vec(),
                    timeout: Duration::from_secs(30),
                    ca_pem: None,
                    headers: Vec::new(),
                })
                .map_err(|e| anyhow::anyhow!(e))?,
            ),
        };
        let cpu0 = crate::bench_sync::process_cpu_secs();
        let t = Instant::now();
        let running = sinks::start(
            store.clone(),
            store.clone(),
            SinksConfig {
                sinks: vec![spec],
                own_client: "sfsync".into(),
                echo_lookup: false,
                poll: Duration::from_millis(20),
                // Never prune: every run reads the whole outbox.
                prune_every: Duration::from_secs(86_400),
            },
        );
        loop {
            let pos = store
                .delivery_positions(&name)
                .await?
                .first()
                .map_or(0, |p| p.position);
            if pos >= end {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        let cpu = crate::bench_sync::process_cpu_secs() - cpu0;
        let stats = running.stats.sinks[0].clone();
        running.stop(Duration::from_secs(5)).await;
        let requests = counts.requests.load(Relaxed) - before.0;
        let changes = counts.changes.load(Relaxed) - before.1;
        let bytes = counts.bytes.load(Relaxed) - before.2;
        anyhow::ensure!(
            changes == events as u64,
            "the receiver got {changes} changes of {events}"
        );
        anyhow::ensure!(
            counts.bad.load(Relaxed) == 0,
            "requests with a bad signature"
        );
        let (sum_ms, acked) = (
            stats.send_ms.sum_ms(),
            stats.send_ms.counts().iter().sum::<u64>(),
        );
        let row = json!({
            "batch_max": batch_max,
            "changes": changes,
            "requests": requests,
            "secs": secs,
            "changes_per_sec": changes as f64 / secs,
            "requests_per_sec": requests as f64 / secs,
            "body_mb_per_sec": bytes as f64 / 1e6 / secs,
            "body_bytes_per_change": bytes as f64 / changes as f64,
            "cpu_us_per_change": cpu * 1e6 / changes as f64,
            "ack_ms_avg": if acked > 0 { sum_ms as f64 / acked as f64 } else { 0.0 },
        });
        println!(
            "{:>6}  {:>10.0}  {:>9.0}  {:>8.1}  {:>9.1}  {:>10.1}",
            batch_max,
            row["changes_per_sec"].as_f64().unwrap_or(0.0),
            row["requests_per_sec"].as_f64().unwrap_or(0.0),
            row["body_mb_per_sec"].as_f64().unwrap_or(0.0),
            row["cpu_us_per_change"].as_f64().unwrap_or(0.0),
            row["ack_ms_avg"].as_f64().unwrap_or(0.0),
        );
        runs.push(row);
    }
    server.abort();
    println!();
    println!(
        "{events} changes per run (~{:.0} bytes of JSON each), SQLite outbox, one lane, receiver in \
         this process on loopback (HMAC checked, JSON parsed); outbox fill {fill_secs:.1} s not counted.",
        runs.first()
            .and_then(|r| r["body_bytes_per_change"].as_f64())
            .unwrap_or(0.0)
    );
    Ok(json!({
        "suite": "sinks",
        "transport": "webhook (HTTP/1.1 on loopback, HMAC-SHA256 signed)",
        "store": "SQLite delivery outbox",
        "receiver": "in process: verifies the signature, parses the JSON, counts",
        "events": events,
        "fill_secs": fill_secs,
        "runs": runs,
    }))
}
