//! `sfsync bench pipeline`: end-to-end figures of the exactly-once pipeline — emulator commit →
//! Pub/Sub → raw change log → curated row — on SQLite (and Postgres with `--postgres-url`).
//!
//! Phases per backend, all in this process beside the embedded emulator (2 cores shared):
//! 1. backlog: N Cases (3–8 KB change events) committed before the pipeline starts; the time to
//!    apply them all is the sustained end-to-end rate, with process CPU µs per event;
//! 2. offered load at 2,000 and 20,000 changes/s for a fixed time: achieved applied rate and the
//!    commit→curated latency p50/p99 (histogram buckets; a bound, not an exact figure).
//!
//! Peak RSS is the whole process (pipeline + emulator): an upper bound for the pipeline's own.
//! Tests never assert on these; the floors are printed beside the figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use sfsync_emulator::load::{LoadConfig, LoadGenerator};
use sfsync_emulator::EmulatorConfig;
use sfsync_org::{ApiKind, CallContext};
use sfsync_pipeline::stats::{diff_counts, quantile};
use sfsync_pipeline::{ApplyConfig, HistoryFields, ObjectSpec, PipelineConfig, PipelineStats};
use sfsync_salesforce::pubsub::{ReplayStart, Subscriber, SubscriberConfig};
use sfsync_salesforce::{AuthFlow, ClientConfig, CredentialsFile, SalesforceClient, TokenSource};
use sfsync_store::{SqliteChangeLog, Warehouse};

pub const SUSTAINED_FLOOR_PER_SEC: f64 = 20_000.0;
pub const P99_FLOOR_MS: u64 = 1_000;
pub const RSS_FLOOR_MB: f64 = 300.0;

#[derive(Debug, Clone)]
pub struct PipelineBenchOptions {
    pub backlog: usize,
    pub load_secs: u64,
    pub postgres_url: Option<String>,
}

fn cpu_secs() -> f64 {
    let mut ru: libc_rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { getrusage(0, &mut ru) };
    let t = |tv: Timeval| tv.sec as f64 + tv.usec as f64 / 1e6;
    t(ru.utime) + t(ru.stime)
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Timeval {
    sec: i64,
    usec: i64,
}

#[repr(C)]
struct libc_rusage {
    utime: Timeval,
    stime: Timeval,
    rest: [i64; 14],
}

extern "C" {
    fn getrusage(who: i32, usage: *mut libc_rusage) -> i32;
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn wait_applied(stats: &PipelineStats, target: u64, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if PipelineStats::get(&stats.applied) >= target {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn one_backend(name: &str, opts: &PipelineBenchOptions) -> Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let ec = EmulatorConfig::ephemeral(dir.path().join("org"));
    let running = sfsync_emulator::start(ec).await?;
    let org = running.org().clone();
    let ctx = CallContext {
        user_id: org.admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: Some("bench".into()),
    };
    println!("[{name}] committing a backlog of {} Cases…", opts.backlog);
    let backlog = opts.backlog;
    let o2 = org.clone();
    tokio::task::spawn_blocking(move || o2.seed(&ctx, "Case", backlog, 7))
        .await?
        .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;

    let store: Arc<dyn Warehouse> = match name {
        "sqlite" => Arc::new(SqliteChangeLog::open(dir.path().join("warehouse.db")).await?),
        _ => {
            let url = opts.postgres_url.as_deref().context("postgres url")?;
            let schema = format!("bench_{}", std::process::id());
            Arc::new(crate::run_cmd::connect_postgres(url, &schema).await?)
        }
    };
    let creds = CredentialsFile::load(&running.credentials_path)?;
    let credentials = creds.credentials(AuthFlow::JwtBearer)?;
    let client = SalesforceClient::new(
        ClientConfig::new(running.base_url.clone(), Some(running.ca_pem_path.clone())),
        credentials.clone(),
    )?;
    let tokens = Arc::new(TokenSource::new(client.http().clone(), credentials));
    let mut sc = SubscriberConfig::new(
        running.credentials.pubsub_address.clone(),
        Some(running.ca_pem_path.clone()),
    );
    sc.channel_batches = 16;
    let subscriber = Subscriber::connect(sc, tokens).await?;
    let objects = [
        "Case",
        "Service_Request__c",
        "Contact",
        "Account",
        "Opportunity",
        "Payment__c",
    ]
    .iter()
    .map(|o| {
        let mut s = ObjectSpec::new(o);
        s.history = HistoryFields::Fields(vec!["OwnerId".into()]);
        s
    })
    .collect();
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    let pipeline = sfsync_pipeline::start(
        store,
        Arc::new(client),
        subscriber,
        PipelineConfig {
            objects,
            apply: ApplyConfig {
                batch_max_records: 2000,
                gap_reread_batch_records: 200,
                own_client: "sfsync".into(),
                run_id: crate::run_cmd::new_run_id(),
            },
            initial: ReplayStart::Earliest,
            idle_wait: Duration::from_millis(50),
        },
    )
    .await?;
    let stats = pipeline.stats.clone();
    let done = wait_applied(&stats, backlog as u64, Duration::from_secs(600)).await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    let applied = PipelineStats::get(&stats.applied);
    let sustained = applied as f64 / secs;
    let us_per_event = cpu * 1e6 / applied.max(1) as f64;
    println!(
        "[{name}] backlog: {applied} events applied in {secs:.2} s = {sustained:.0} events/s end to end ({us_per_event:.1} µs CPU/event, whole process){}",
        if done { "" } else { " — TIMED OUT" }
    );

    let mut loads = Vec::new();
    for rate in [2_000.0, 20_000.0] {
        let before = stats.latency_counts();
        let applied0 = PipelineStats::get(&stats.applied);
        let o = org.clone();
        let load = tokio::task::spawn_blocking(move || {
            LoadGenerator::start(
                o,
                LoadConfig {
                    changes_per_sec: rate,
                    burst_factor: 1.0,
                    initial_records: 0,
                    ..LoadConfig::default()
                },
            )
        })
        .await?
        .map_err(|e| anyhow::anyhow!("load: {e}"))?;
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(opts.load_secs)).await;
        let made = load.stop();
        let offered_secs = t.elapsed().as_secs_f64();
        // Let the tail drain (bounded) so its latencies are counted.
        let target = applied0 + made.changes;
        wait_applied(&stats, target, Duration::from_secs(60)).await;
        let counts = diff_counts(&stats.latency_counts(), &before);
        let p50 = quantile(&counts, 0.5);
        let p99 = quantile(&counts, 0.99);
        let achieved = made.changes as f64 / offered_secs;
        println!(
            "[{name}] offered {rate:.0}/s: emulator committed {achieved:.0} changes/s, latency p50 ≤ {} ms, p99 ≤ {} ms",
            p50.map(|v| v.to_string()).unwrap_or("-".into()),
            p99.map(|v| v.to_string()).unwrap_or("-".into())
        );
        loads.push(json!({
            "offered_per_sec": rate,
            "committed_per_sec": achieved,
            "changes": made.changes,
            "latency_p50_ms_upper": p50,
            "latency_p99_ms_upper": p99,
            "latency_bucket_counts": counts,
        }));
    }
    pipeline.shutdown(Duration::from_secs(30)).await?;
    running.shutdown().await?;
    Ok(json!({
        "backend": name,
        "backlog_events": applied,
        "sustained_events_per_sec": sustained,
        "cpu_us_per_event_whole_process": us_per_event,
        "offered_load": loads,
    }))
}

pub async fn run(opts: PipelineBenchOptions) -> Result<serde_json::Value> {
    let mut backends = vec![one_backend("sqlite", &opts).await?];
    if opts.postgres_url.is_some() {
        backends.push(one_backend("postgres", &opts).await?);
    }
    let rss = peak_rss_mb();
    println!();
    println!(
        "{:<10} {:>16} {:>12} {:>14} {:>14}",
        "backend", "events/s", "µs CPU/ev", "p99@2k (ms)", "p99@20k (ms)"
    );
    for b in &backends {
        let p99 = |i: usize| {
            b["offered_load"][i]["latency_p99_ms_upper"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or("-".into())
        };
        println!(
            "{:<10} {:>16.0} {:>12.1} {:>14} {:>14}",
            b["backend"].as_str().unwrap_or("?"),
            b["sustained_events_per_sec"].as_f64().unwrap_or(0.0),
            b["cpu_us_per_event_whole_process"].as_f64().unwrap_or(0.0),
            p99(0),
            p99(1)
        );
    }
    println!(
        "peak RSS (pipeline + emulator): {rss:.1} MB (floor for the pipeline: ≤ {RSS_FLOOR_MB} MB)"
    );
    println!("floors: ≥ {SUSTAINED_FLOOR_PER_SEC} events/s on SQLite; p99 ≤ {P99_FLOOR_MS} ms at 2,000/s");
    Ok(json!({
        "suite": "pipeline",
        "backends": backends,
        "peak_rss_mb_whole_process": rss,
        "floors": {
            "sustained_events_per_sec_sqlite": SUSTAINED_FLOOR_PER_SEC,
            "p99_ms_at_2000": P99_FLOOR_MS,
            "rss_mb": RSS_FLOOR_MB,
        }
    }))
}
