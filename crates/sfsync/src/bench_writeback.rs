//! `sfsync bench writeback`: writes from another system delivered to Salesforce, sustained.
//!
//! The emulator runs in this process with N seeded Cases; the pipeline is a real `sfsync run`
//! child process with a config a user would write (Case streamed and backfilled, writeback of
//! Case fields by the system `bench_cms` under `last_write_wins`). Once the backfill is done,
//! this process submits writes at a fixed rate for a fixed time, in batches of 50 every 100 ms
//! as an integration would, through the write ledger's submission path (durable before it
//! returns, like the HTTP ingress): ~90 % updates of existing Cases by Id (Status, Priority,
//! Subject), ~10 % upserts by `External_Id__c` (half of existing Cases, half new ones).
//!
//! Measured from the ledger after it drains (exact, per write): accepted→applied and
//! accepted→confirmed (the CDC echo applied) p50/p99/max; from the emulator: API calls during
//! the run, records per call, calls per 1,000 records, `REQUEST_LIMIT_EXCEEDED` responses; and
//! the pipeline's CPU per write. Tests never assert on these; the floors are printed beside them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sfsync_emulator::EmulatorConfig;
use sfsync_org::{ApiKind, CallContext};
use sfsync_store::{
    NewWrite, SqliteChangeLog, SubmitOutcome, SyncJobFilter, SyncJobKind, SyncJobStatus, Warehouse,
    WriteFilter, WriteLedger, WriteState, WriteTarget,
};

use crate::bench_pipeline::{proc_cpu_secs, spawn_pipeline};

pub const P99_APPLIED_FLOOR_MS: i64 = 10_000;
pub const RECORDS_PER_CALL_FLOOR: f64 = 150.0;

#[derive(Debug, Clone)]
pub struct WritebackBenchOptions {
    /// Cases seeded (and backfilled) before the writes start.
    pub cases: usize,
    /// Writes submitted per second.
    pub rate: u64,
    /// Seconds of sustained submission.
    pub secs: u64,
}

const SOURCE: &str = "bench_cms";

fn write_config(dir: &Path, running: &sfsync_emulator::RunningEmulator) -> Result<PathBuf> {
    let text = format!(
        r#"[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"
client_id_header = "sfsync"

[[objects]]
name = "Case"

[warehouse]
type = "sqlite"
path = "{db}"

[pipeline]
backfill_new_objects = true

[[writeback.objects]]
name = "Case"
owner = "{SOURCE}"
policy = "last_write_wins"
"#,
        creds = running.credentials_path.display(),
        ca = running.ca_pem_path.display(),
        db = dir.join("warehouse.db").display(),
    );
    let path = dir.join("writeback.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A record the bench writes to.
struct Target {
    id: String,
    external_id: Option<String>,
}

fn next_write(rng: &mut StdRng, targets: &[Target], seq: u64, now_ms: i64) -> NewWrite {
    const STATUSES: [&str; 4] = ["New", "Working", "Escalated", "Closed"];
    const PRIORITIES: [&str; 3] = ["High", "Medium", "Low"];
    let mut fields = serde_json::Map::new();
    fields.insert(
        "Status".into(),
        json!(STATUSES[rng.random_range(0..STATUSES.len())]),
    );
    if rng.random_bool(0.5) {
        fields.insert(
            "Priority".into(),
            json!(PRIORITIES[rng.random_range(0..PRIORITIES.len())]),
        );
    }
    if rng.random_bool(0.3) {
        fields.insert("Subject".into(), json!(format!("Updated by CMS #{seq}")));
    }
    let roll = rng.random_range(0..100);
    let t = &targets[rng.random_range(0..targets.len())];
    let target = match (roll, &t.external_id) {
        (0..5, _) => WriteTarget::ExternalId {
            field: "External_Id__c".into(),
            value: format!("CMS-NEW-{seq}"),
        },
        (5..10, Some(x)) => WriteTarget::ExternalId {
            field: "External_Id__c".into(),
            value: x.clone(),
        },
        _ => WriteTarget::RecordId(t.id.clone()),
    };
    NewWrite {
        source_system: SOURCE.into(),
        idempotency_key: format!("bench-{seq}"),
        object: "Case".into(),
        target,
        fields,
        // The writer saw the record as of now: Salesforce changes after it would conflict.
        seen_version_ms: Some(now_ms),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Exact quantile of sorted values.
fn exact_quantile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

/// Latency from acceptance to the first transition into `state`, per write that reached it.
async fn latencies(store: &SqliteChangeLog, ids: &[i64], state: WriteState) -> Result<Vec<i64>> {
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        let ts = store.write_transitions(id).await?;
        let Some(first) = ts.first() else { continue };
        if let Some(t) = ts.iter().find(|t| t.to == state) {
            out.push(t.at_ms - first.at_ms);
        }
    }
    out.sort_unstable();
    Ok(out)
}

pub async fn run(opts: WritebackBenchOptions) -> Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let running = sfsync_emulator::start(EmulatorConfig::ephemeral(dir.path().join("org")))
        .await
        .context("starting the emulator")?;
    let org = running.org().clone();
    let ctx = CallContext {
        user_id: org.admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: Some("seed".into()),
    };
    println!("seeding {} Cases…", opts.cases);
    let (o, n) = (org.clone(), opts.cases);
    tokio::task::spawn_blocking(move || o.seed(&ctx, "Case", n, 11))
        .await?
        .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;
    let rows = org
        .query("SELECT Id, External_Id__c FROM Case", false)
        .map_err(|e| anyhow::anyhow!("listing Cases: {e}"))?;
    let targets: Vec<Target> = rows
        .rows
        .iter()
        .zip(&rows.ids)
        .map(|(r, id)| Target {
            id: id.to_string(),
            external_id: r.get(1).and_then(|v| v.as_str()).map(str::to_string),
        })
        .collect();
    anyhow::ensure!(!targets.is_empty(), "no Cases to write to");

    let config = write_config(dir.path(), &running)?;
    let stats_file = dir.path().join("stats.json");
    let mut child = spawn_pipeline(&config, &stats_file, None)?;
    // The warehouse is created by `sfsync run`; wait for it, then for the Case backfill.
    let db = dir.path().join("warehouse.db");
    let t_ready = Instant::now();
    while !db.exists() {
        anyhow::ensure!(
            t_ready.elapsed() < Duration::from_secs(60),
            "sfsync run did not create its warehouse"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let store = SqliteChangeLog::open(&db)
        .await
        .context("opening the warehouse")?;
    loop {
        if let Some(status) = child.process.try_wait()? {
            anyhow::bail!("sfsync run exited early: {status}");
        }
        let done = store
            .sync_jobs(&SyncJobFilter {
                statuses: vec![SyncJobStatus::Succeeded],
                kind: Some(SyncJobKind::Backfill),
                object: Some("Case".into()),
                limit: 1,
                ..Default::default()
            })
            .await?;
        if !done.is_empty() {
            break;
        }
        anyhow::ensure!(
            t_ready.elapsed() < Duration::from_secs(600),
            "the Case backfill did not finish within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "backfill done in {:.1} s; submitting {} writes/s for {} s…",
        t_ready.elapsed().as_secs_f64(),
        opts.rate,
        opts.secs
    );

    let (api_used0, _) = running.state.limits.api_usage();
    let refused0 = running.state.limits.refused();
    let pid = child.pid();
    let cpu0 = proc_cpu_secs(pid);
    let mut rng = StdRng::seed_from_u64(5);
    let per_tick = (opts.rate / 10).max(1);
    let ticks = opts.secs * 10;
    let mut ids = Vec::with_capacity((per_tick * ticks) as usize);
    let mut submit_ms = Vec::with_capacity(ticks as usize);
    let t0 = Instant::now();
    let mut seq = 0u64;
    for tick in 0..ticks {
        let due = t0 + Duration::from_millis(tick * 100);
        tokio::time::sleep_until(due.into()).await;
        let now = now_ms();
        let batch: Vec<NewWrite> = (0..per_tick)
            .map(|_| {
                seq += 1;
                next_write(&mut rng, &targets, seq, now)
            })
            .collect();
        let s = Instant::now();
        for o in store.submit_writes(&batch).await? {
            match o {
                SubmitOutcome::Accepted { id } => ids.push(id),
                other => anyhow::bail!("a bench write was not accepted: {other:?}"),
            }
        }
        submit_ms.push(s.elapsed().as_millis() as i64);
        if tick % 100 == 99 {
            let pending = store
                .writes(&WriteFilter {
                    states: vec![WriteState::Pending, WriteState::Sent],
                    limit: 1_000_000,
                    ..Default::default()
                })
                .await?
                .len();
            println!(
                "  {:>4} s: {} submitted, {pending} waiting for delivery",
                t0.elapsed().as_secs(),
                ids.len()
            );
        }
    }
    let offered_secs = t0.elapsed().as_secs_f64();
    // Drain: every write applied (or final) and its echo confirmed, bounded.
    let drain_until = Instant::now() + Duration::from_secs(300);
    let mut drained = false;
    while Instant::now() < drain_until {
        let open = store
            .writes(&WriteFilter {
                states: vec![WriteState::Pending, WriteState::Sent, WriteState::Applied],
                limit: 1,
                ..Default::default()
            })
            .await?;
        if open.is_empty() {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu = proc_cpu_secs(pid) - cpu0;
    let (api_used1, api_max) = running.state.limits.api_usage();
    let refused = running.state.limits.refused() - refused0;
    let calls = api_used1.saturating_sub(api_used0);

    let mut by_state: HashMap<&'static str, u64> = HashMap::new();
    for w in store
        .writes(&WriteFilter {
            limit: 10_000_000,
            ..Default::default()
        })
        .await?
    {
        *by_state.entry(w.state.as_str()).or_default() += 1;
    }
    let applied_lat = latencies(&store, &ids, WriteState::Applied).await?;
    let confirmed_lat = latencies(&store, &ids, WriteState::Confirmed).await?;
    let applied_n = applied_lat.len() as u64;
    let per_call = applied_n as f64 / calls.max(1) as f64;
    let calls_per_1000 = calls as f64 * 1000.0 / applied_n.max(1) as f64;
    let us_per_write = cpu * 1e6 / ids.len().max(1) as f64;
    submit_ms.sort_unstable();
    let q = |v: &[i64], p: f64| exact_quantile(v, p).unwrap_or(-1);
    println!();
    println!(
        "{} writes submitted in {offered_secs:.0} s ({:.0}/s){}; by state: {by_state:?}",
        ids.len(),
        ids.len() as f64 / offered_secs,
        if drained { "" } else { " — DID NOT DRAIN" }
    );
    println!(
        "accepted→applied   p50 {} ms, p99 {} ms, max {} ms ({} writes)",
        q(&applied_lat, 0.5),
        q(&applied_lat, 0.99),
        applied_lat.last().copied().unwrap_or(-1),
        applied_lat.len()
    );
    println!(
        "accepted→confirmed p50 {} ms, p99 {} ms, max {} ms ({} writes)",
        q(&confirmed_lat, 0.5),
        q(&confirmed_lat, 0.99),
        confirmed_lat.last().copied().unwrap_or(-1),
        confirmed_lat.len()
    );
    println!(
        "API calls {calls} (of {api_max}/24 h): {per_call:.1} records per call, {calls_per_1000:.2} calls per 1,000 records; REQUEST_LIMIT_EXCEEDED responses {refused}"
    );
    println!(
        "sfsync CPU {us_per_write:.1} µs per write; submission p99 {} ms per batch of {per_tick}",
        q(&submit_ms, 0.99)
    );
    println!(
        "floors: p99 accepted→applied ≤ {P99_APPLIED_FLOOR_MS} ms; ≥ {RECORDS_PER_CALL_FLOOR} records per API call; zero over-limit responses"
    );
    child.stop().await?;
    running.shutdown().await?;
    Ok(json!({
        "suite": "writeback",
        "cases": opts.cases,
        "offered_per_sec": opts.rate,
        "secs": opts.secs,
        "submitted": ids.len(),
        "drained": drained,
        "by_state": by_state,
        "accepted_to_applied_ms": {
            "p50": exact_quantile(&applied_lat, 0.5),
            "p99": exact_quantile(&applied_lat, 0.99),
            "max": applied_lat.last(),
            "count": applied_lat.len(),
        },
        "accepted_to_confirmed_ms": {
            "p50": exact_quantile(&confirmed_lat, 0.5),
            "p99": exact_quantile(&confirmed_lat, 0.99),
            "max": confirmed_lat.last(),
            "count": confirmed_lat.len(),
        },
        "api_calls": calls,
        "records_per_call": per_call,
        "calls_per_1000_records": calls_per_1000,
        "over_limit_responses": refused,
        "sfsync_cpu_us_per_write": us_per_write,
        "submission_p99_ms": exact_quantile(&submit_ms, 0.99),
        "floors": {
            "p99_accepted_to_applied_ms": P99_APPLIED_FLOOR_MS,
            "records_per_call": RECORDS_PER_CALL_FLOOR,
            "over_limit_responses": 0,
        }
    }))
}
