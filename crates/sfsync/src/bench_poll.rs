//! `sfsync bench poll`: one workload of Account and Case changes synced three ways — CDC over
//! Pub/Sub, polling through REST `queryAll` pages, polling with the backlog read through a Bulk
//! API 2.0 job — each by a real `sfsync run` child process into a fresh SQLite warehouse, from a
//! fresh emulator (in this process) holding the same workload.
//!
//! The workload is committed before the child starts (a backlog, `--changes` in all): 30 % each
//! Account and Case creates in transactions of 250 (so 250 rows share each SystemModstamp), then
//! 20 % each updates of them in transactions of 500. Every change writes a unique marker into
//! `Description`, so convergence is exact: every record's curated `description` is its final
//! marker. Figures per way:
//! - changes/s to convergence (from the spawn, start-up included);
//! - API calls per 10,000 changes: the org's `DailyApiRequests` used by the child (REST and Bulk
//!   requests alike; describe and the other start-up calls included), and for CDC the Pub/Sub
//!   events delivered (`DailyDeliveredPlatformEvents`, their own allocation);
//! - Bulk query jobs created;
//! - CPU µs per change of the child (user + system, `/proc/<pid>/stat`).
//!
//! Polling sees each record once as of its latest change, CDC every change: both converge to the
//! same tables. Tests never assert on these figures.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use sfsync_emulator::EmulatorConfig;
use sfsync_org::{ApiKind, CallContext, DmlOp};

use crate::bench_pipeline::{proc_cpu_secs, proc_peak_rss_mb, spawn_role};

#[derive(Debug, Clone)]
pub struct PollBenchOptions {
    /// Changes committed in all (at least 1,000).
    pub changes: usize,
    /// `poll_bulk_threshold` of the Bulk way.
    pub bulk_threshold: u64,
}

/// One way of syncing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Cdc,
    PollRest,
    PollBulk,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Cdc => "cdc",
            Way::PollRest => "poll_rest",
            Way::PollBulk => "poll_bulk",
        }
    }
}

/// Per object: record id → its final `Description` marker.
type Expected = HashMap<&'static str, HashMap<String, String>>;

const OBJECTS: [&str; 2] = ["Account", "Case"];
const CREATE_TX: usize = 250;
const UPDATE_TX: usize = 500;

/// Commits the workload; returns the expected final markers and the number of changes made.
fn commit_workload(org: &sfsync_org::Org, changes: usize) -> Result<(Expected, usize)> {
    let ctx = CallContext {
        user_id: org.admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: Some("bench".into()),
    };
    let creates = changes * 3 / 10;
    let updates = changes / 5;
    let mut expected: Expected = HashMap::new();
    let mut made = 0usize;
    let mut seq = 0u64;
    let mut marker = || {
        seq += 1;
        format!("m{seq}")
    };
    for object in OBJECTS {
        let ids = expected.entry(object).or_default();
        let mut created = Vec::with_capacity(creates);
        for chunk in (0..creates).collect::<Vec<_>>().chunks(CREATE_TX) {
            let mut markers = Vec::with_capacity(chunk.len());
            let ops: Vec<DmlOp> = chunk
                .iter()
                .map(|i| {
                    let m = marker();
                    let name = format!("{object} {i}");
                    let fields = if object == "Case" {
                        json!({ "Subject": name, "Description": m, "Status": "New" })
                    } else {
                        json!({ "Name": name, "Description": m })
                    };
                    markers.push(m);
                    DmlOp::Insert {
                        object: object.into(),
                        fields: fields.as_object().expect("object").clone(),
                    }
                })
                .collect();
            for (r, m) in org.execute(&ctx, ops, true).into_iter().zip(markers) {
                let id = r
                    .map_err(|e| anyhow::anyhow!("creating {object}: {e:?}"))?
                    .id()
                    .to_string();
                ids.insert(id.clone(), m);
                created.push(id);
                made += 1;
            }
        }
        // Updates: a stride through the created records (some updated twice when updates >
        // creates), in large transactions.
        let targets: Vec<String> = (0..updates)
            .map(|k| created[(k * 7) % created.len()].clone())
            .collect();
        for chunk in targets.chunks(UPDATE_TX) {
            let mut sets = Vec::with_capacity(chunk.len());
            let ops: Vec<DmlOp> = chunk
                .iter()
                .map(|id| {
                    let m = marker();
                    sets.push((id.clone(), m.clone()));
                    DmlOp::Update {
                        object: object.into(),
                        id: id.clone(),
                        fields: json!({ "Description": m })
                            .as_object()
                            .expect("object")
                            .clone(),
                    }
                })
                .collect();
            for r in org.execute(&ctx, ops, true) {
                r.map_err(|e| anyhow::anyhow!("updating {object}: {e:?}"))?;
                made += 1;
            }
            for (id, m) in sets {
                ids.insert(id, m);
            }
        }
    }
    Ok((expected, made))
}

/// Records whose curated `description` is not yet their final marker (all of them while the
/// tables do not exist).
fn lagging(db: &Path, expected: &Expected) -> usize {
    let total: usize = expected.values().map(HashMap::len).sum();
    let Ok(conn) = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) else {
        return total;
    };
    let mut good = 0usize;
    for (object, want) in expected {
        let table = sfsync_pipeline::model::table_name(object);
        let Ok(mut stmt) = conn.prepare(&format!(
            "SELECT \"id\", \"description\" FROM \"{table}\" WHERE NOT \"_sf_deleted\""
        )) else {
            return total;
        };
        let Ok(rows) = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
        }) else {
            return total;
        };
        for (id, d) in rows.flatten() {
            if d.is_some() && want.get(&id) == d.as_ref() {
                good += 1;
            }
        }
    }
    total - good
}

fn write_config(
    dir: &Path,
    running: &sfsync_emulator::RunningEmulator,
    way: Way,
    opts: &PollBenchOptions,
) -> Result<std::path::PathBuf> {
    let (mode, threshold) = match way {
        Way::Cdc => ("cdc", 0),
        Way::PollRest => ("poll", 0),
        Way::PollBulk => ("poll", opts.bulk_threshold),
    };
    let text = format!(
        r#"[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"
client_id_header = "sfsync"

[[objects]]
name = "Account"
mode = "{mode}"

[[objects]]
name = "Case"
mode = "{mode}"

[warehouse]
type = "sqlite"
path = "{db}"

[pipeline]
batch_max_records = 1000
batch_max_wait_ms = 20
# The sync way alone (no backfill of the new tables).
backfill_new_objects = false
poll_interval_secs = 1
poll_page_records = 2000
poll_bulk_threshold = {threshold}
"#,
        creds = running.credentials_path.display(),
        ca = running.ca_pem_path.display(),
        db = dir.join("warehouse.db").display(),
    );
    let path = dir.join("sfsync.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `Max - Remaining` of a `/limits` entry.
fn used(limits: &serde_json::Value, name: &str) -> u64 {
    let max = limits[name]["Max"].as_u64().unwrap_or(0);
    max.saturating_sub(limits[name]["Remaining"].as_u64().unwrap_or(max))
}

fn limits_now(running: &sfsync_emulator::RunningEmulator) -> serde_json::Value {
    let s = &running.state;
    s.limits.limits_json(&s.cdc.limits_extra())
}

async fn one_way(way: Way, opts: &PollBenchOptions) -> Result<serde_json::Value> {
    let name = way.name();
    let dir = tempfile::tempdir()?;
    let running = sfsync_emulator::start(EmulatorConfig::ephemeral(dir.path().join("org"))).await?;
    let org = running.org().clone();
    let n = opts.changes;
    let (expected, changes) =
        tokio::task::spawn_blocking(move || commit_workload(&org, n)).await??;
    let records: usize = expected.values().map(HashMap::len).sum();
    println!("[{name}] committed {changes} changes to {records} Accounts and Cases; syncing…");
    let config = write_config(dir.path(), &running, way, opts)?;
    let db = dir.path().join("warehouse.db");
    let stats_file = dir.path().join("stats.json");
    let l0 = limits_now(&running);
    let mut child = spawn_role(&config, &stats_file, None, "all")?;
    let pid = child.pid();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(900);
    let mut cpu = proc_cpu_secs(pid);
    let converged = loop {
        if let Some(status) = child.process.try_wait()? {
            anyhow::bail!("[{name}] sfsync run exited early: {status}");
        }
        cpu = proc_cpu_secs(pid).max(cpu);
        if lagging(&db, &expected) == 0 {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let secs = t0.elapsed().as_secs_f64();
    let cpu = proc_cpu_secs(pid).max(cpu);
    let l1 = limits_now(&running);
    let rss = proc_peak_rss_mb(pid);
    let bulk_rows = child.counter("poll_bulk_rows");
    let poll_rows = child.counter("poll_rows");
    child.stop().await?;
    running.shutdown().await?;
    let api = used(&l1, "DailyApiRequests") - used(&l0, "DailyApiRequests");
    let delivered =
        used(&l1, "DailyDeliveredPlatformEvents") - used(&l0, "DailyDeliveredPlatformEvents");
    let jobs = used(&l1, "DailyBulkV2QueryJobs") - used(&l0, "DailyBulkV2QueryJobs");
    let per10k = |v: u64| v as f64 * 10_000.0 / changes.max(1) as f64;
    let rate = changes as f64 / secs;
    let us = cpu * 1e6 / changes.max(1) as f64;
    println!(
        "[{name}] converged in {secs:.2} s = {rate:.0} changes/s{}; {api} API requests ({:.1} per 10k changes), {delivered} Pub/Sub events delivered, {jobs} Bulk jobs; CPU {us:.1} µs/change; polled rows {poll_rows} ({bulk_rows} through Bulk); peak RSS {rss:.0} MB",
        if converged { "" } else { " — TIMED OUT" },
        per10k(api),
    );
    Ok(json!({
        "way": name,
        "changes": changes,
        "records": records,
        "converged": converged,
        "seconds_to_convergence": secs,
        "changes_per_sec": rate,
        "api_requests": api,
        "api_requests_per_10k_changes": per10k(api),
        "pubsub_events_delivered": delivered,
        "pubsub_events_delivered_per_10k_changes": per10k(delivered),
        "bulk_query_jobs": jobs,
        "polled_rows": poll_rows,
        "polled_rows_through_bulk": bulk_rows,
        "cpu_us_per_change": us,
        "peak_rss_mb": rss,
    }))
}

pub async fn run(opts: PollBenchOptions) -> Result<serde_json::Value> {
    anyhow::ensure!(opts.changes >= 1_000, "--changes must be at least 1000");
    let mut ways = Vec::new();
    for way in [Way::Cdc, Way::PollRest, Way::PollBulk] {
        ways.push(
            one_way(way, &opts)
                .await
                .with_context(|| format!("the {} run", way.name()))?,
        );
    }
    println!();
    println!(
        "{:<10} {:>12} {:>14} {:>16} {:>16} {:>10} {:>12}",
        "way", "changes/s", "seconds", "API req/10k ch", "Pub/Sub ev/10k", "Bulk jobs", "µs CPU/ch"
    );
    for w in &ways {
        println!(
            "{:<10} {:>12.0} {:>14.2} {:>16.1} {:>16.0} {:>10} {:>12.1}",
            w["way"].as_str().unwrap_or("?"),
            w["changes_per_sec"].as_f64().unwrap_or(0.0),
            w["seconds_to_convergence"].as_f64().unwrap_or(0.0),
            w["api_requests_per_10k_changes"].as_f64().unwrap_or(0.0),
            w["pubsub_events_delivered_per_10k_changes"]
                .as_f64()
                .unwrap_or(0.0),
            w["bulk_query_jobs"].as_u64().unwrap_or(0),
            w["cpu_us_per_change"].as_f64().unwrap_or(0.0),
        );
    }
    println!(
        "API requests include the child's start-up calls (describe, limits); Pub/Sub events count against the delivery allocation, not API requests."
    );
    Ok(json!({
        "suite": "poll",
        "changes": opts.changes,
        "poll_bulk_threshold": opts.bulk_threshold,
        "workload": {
            "creates_share": 0.6,
            "updates_share": 0.4,
            "create_transaction_rows": CREATE_TX,
            "update_transaction_rows": UPDATE_TX,
            "objects": OBJECTS,
        },
        "ways": ways,
    }))
}
