//! `sfsync bench sync`: backfill and reconciliation against the embedded emulator, into a SQLite
//! warehouse, through the same job runner `sfsync run` uses (the applier with Bulk API access).
//!
//! Measures: a backfill of N Accounts (records/s, API calls), a reconciliation of the N records
//! in sync (seconds, API calls), and one after 0.1 % of them were changed behind the stream's
//! back (seconds, API calls, drift found). By default every Account the emulator seeds carries a
//! 2–6 KB Description, so the backfill moves several KB per record; `--long-text-percent`
//! fills it on only that share of the records (0: a few hundred bytes per record). The report
//! gives the warehouse MB/s written too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use sfsync_emulator::EmulatorConfig;
use sfsync_pipeline::{Applier, ApplyConfig, ObjectSpec, PipelineStats};
use sfsync_salesforce::{AuthFlow, ClientConfig, CredentialsFile, SalesforceClient};
use sfsync_store::{NewSyncJob, SqliteChangeLog, SyncJob, SyncJobKind, SyncJobStatus, Warehouse};

pub struct SyncBenchOptions {
    pub records: usize,
    /// Run the emulator inside this process instead of as a child process (then the CPU figure
    /// covers both sides).
    pub in_process_emulator: bool,
    /// Share (0–100) of the Accounts with their long Description filled.
    pub long_text_percent: u8,
}

/// The org the bench reads: the emulator in this process, or `sfsync emulator` as a child
/// process (the default, so this process's CPU time is sfsync's alone).
enum Org {
    InProcess(Box<sfsync_emulator::RunningEmulator>),
    Child {
        child: Box<tokio::process::Child>,
        base_url: String,
        dir: std::path::PathBuf,
    },
}

impl Org {
    async fn start(dir: &std::path::Path, in_process: bool) -> Result<Org> {
        if in_process {
            let emu = sfsync_emulator::start(EmulatorConfig::ephemeral(dir.join("org")))
                .await
                .context("starting the emulator")?;
            return Ok(Org::InProcess(Box::new(emu)));
        }
        use tokio::io::AsyncBufReadExt;
        let exe = std::env::current_exe().context("locating the sfsync binary")?;
        let mut child = tokio::process::Command::new(exe)
            .args(["emulator", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            // Without --data-dir the CA and credentials go to `.sfsync/emulator` here.
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting `sfsync emulator`")?;
        let stdout = child.stdout.take().context("emulator stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut base_url = None;
        let wait = async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("REST / SOAP / OAuth / Bulk") {
                    base_url = line.split_whitespace().last().map(str::to_string);
                }
                if line.starts_with("Stop with Ctrl-C") {
                    return Ok::<_, anyhow::Error>(true);
                }
            }
            Ok(false)
        };
        let ready = tokio::time::timeout(Duration::from_secs(120), wait)
            .await
            .context("the emulator did not start within 2 minutes")??;
        anyhow::ensure!(ready, "the emulator exited before it was ready");
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Org::Child {
            child: Box::new(child),
            base_url: base_url.context("the emulator did not print its URL")?,
            dir: dir.join(".sfsync/emulator"),
        })
    }

    /// CPU seconds the emulator's own process has used (0 when it runs in this one).
    fn emulator_cpu_secs(&self) -> f64 {
        match self {
            Org::InProcess(_) => 0.0,
            Org::Child { child, .. } => child.id().map_or(0.0, |pid| cpu_secs(&pid.to_string())),
        }
    }

    fn base_url(&self) -> String {
        match self {
            Org::InProcess(e) => e.base_url.to_string(),
            Org::Child { base_url, .. } => base_url.clone(),
        }
    }

    fn credentials_path(&self) -> std::path::PathBuf {
        match self {
            Org::InProcess(e) => e.credentials_path.clone(),
            Org::Child { dir, .. } => dir.join("credentials.json"),
        }
    }

    fn ca_pem_path(&self) -> std::path::PathBuf {
        match self {
            Org::InProcess(e) => e.ca_pem_path.clone(),
            Org::Child { dir, .. } => dir.join("ca.pem"),
        }
    }

    /// Calls the emulator's admin API (`POST /admin/…`).
    async fn admin(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let creds: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.credentials_path())?)?;
        let token = creds["admin_token"]
            .as_str()
            .context("credentials.json has no admin_token")?;
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.ca_pem_path())?)?;
        let http = reqwest::Client::builder()
            .add_root_certificate(ca)
            .timeout(Duration::from_secs(1800))
            .build()?;
        let resp = http
            .post(format!("{}{path}", self.base_url()))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        anyhow::ensure!(status.is_success(), "POST {path}: {status}: {text}");
        Ok(serde_json::from_str(&text)?)
    }

    async fn shutdown(self) {
        match self {
            Org::InProcess(e) => {
                let _ = e.shutdown().await;
            }
            Org::Child { mut child, .. } => {
                let _ = child.kill().await;
            }
        }
    }
}

/// CPU seconds (user + system) process `pid` (`self`: this one) has used so far, from
/// `/proc/PID/stat` (0 where unavailable).
fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start at `) `: utime and stime,
    // fields 14 and 15 of the line, are then at indices 11 and 12.
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    ticks as f64 / 100.0
}

pub(crate) fn process_cpu_secs() -> f64 {
    cpu_secs("self")
}

async fn run_job(
    applier: &mut Applier,
    store: &dyn Warehouse,
    kind: SyncJobKind,
) -> Result<(SyncJob, f64)> {
    let id = store
        .add_sync_job(&NewSyncJob {
            kind,
            object: "Account".into(),
            reason: "bench".into(),
            since_ms: None,
            until_ms: None,
            params: "{}".into(),
            requested_by: "bench".into(),
            resync_id: None,
        })
        .await?;
    let t = Instant::now();
    loop {
        let n = applier.step().await?;
        if n == 0 {
            let j = store.sync_job(id).await?.context("job vanished")?;
            if !j.status.is_open() {
                // Reconciliation repairs are part of its cost.
                applier.catch_up().await?;
                let secs = t.elapsed().as_secs_f64();
                anyhow::ensure!(
                    j.status == SyncJobStatus::Succeeded,
                    "{} job failed: {:?}",
                    kind.as_str(),
                    j.error
                );
                return Ok((j, secs));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

pub async fn run(opts: SyncBenchOptions) -> Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let org = Org::start(dir.path(), opts.in_process_emulator).await?;
    let n = opts.records;
    println!(
        "Seeding {n} Accounts ({}% with a 2–6 KB Description) in the emulator ({})…",
        opts.long_text_percent,
        if opts.in_process_emulator {
            "in this process"
        } else {
            "a separate process"
        }
    );
    let t = Instant::now();
    org.admin(
        "/admin/seed",
        json!({"objects": {"Account": n}, "seed": 42,
               "long_text_percent": opts.long_text_percent}),
    )
    .await?;
    println!("  seeded in {:.1}s", t.elapsed().as_secs_f64());
    let creds = CredentialsFile::load(org.credentials_path())?;
    let client = SalesforceClient::new(
        ClientConfig::new(org.base_url(), Some(org.ca_pem_path())),
        creds.credentials(AuthFlow::JwtBearer)?,
    )?;
    let store: Arc<dyn Warehouse> =
        Arc::new(SqliteChangeLog::open(dir.path().join("wh.db")).await?);
    let specs = vec![ObjectSpec::new("Account")];
    let (mappings, _) = sfsync_pipeline::prepare_models(&*store, &client, &specs).await?;
    let bulk = client.bulk();
    let mut applier = Applier::new(
        store.clone(),
        Arc::new(client),
        mappings,
        ApplyConfig {
            batch_max_records: 1000,
            gap_reread_batch_records: 200,
            own_client: "sfsync".into(),
            run_id: "bench-sync".into(),
            max_stored_failures_per_rule: 10_000,
            jobs: Default::default(),
            maintenance: sfsync_pipeline::maintenance::MaintenanceConfig {
                archive_every: None,
                retention_every: None,
                ..Default::default()
            },
            deliver: false,
        },
        Arc::new(PipelineStats::default()),
    )
    .with_bulk(bulk);

    println!("Backfill of {n} Accounts…");
    let cpu0 = process_cpu_secs();
    let emu_cpu0 = org.emulator_cpu_secs();
    let (b, b_secs) = run_job(&mut applier, &*store, SyncJobKind::Backfill).await?;
    let b_cpu = process_cpu_secs() - cpu0;
    let emu_us_per_record =
        (org.emulator_cpu_secs() - emu_cpu0) * 1e6 / (b.counts.read.max(1) as f64);
    let db_bytes = std::fs::metadata(dir.path().join("wh.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    let b_mb = db_bytes as f64 / 1e6;
    let cpu_us_per_record = b_cpu * 1e6 / (b.counts.read.max(1) as f64);
    println!(
        "  {:.0} records/s ({:.1}s, {:.0} MB/s into the warehouse), {} API calls, warehouse {b_mb:.0} MB",
        b.counts.read as f64 / b_secs,
        b_secs,
        b_mb / b_secs,
        b.counts.api_calls,
    );
    println!(
        "  CPU {b_cpu:.1}s ({}): {cpu_us_per_record:.1} µs per record",
        if opts.in_process_emulator {
            "emulator and sfsync together"
        } else {
            "sfsync alone"
        }
    );
    if !opts.in_process_emulator {
        println!("  emulator CPU (its own process): {emu_us_per_record:.1} µs per record");
    }
    println!("Reconciliation, in sync…");
    let (r1, r1_secs) = run_job(&mut applier, &*store, SyncJobKind::Reconcile).await?;
    let rep1: serde_json::Value = serde_json::from_str(r1.report.as_deref().unwrap_or("{}"))?;
    println!(
        "  {r1_secs:.2}s, {} API calls, drift {}",
        r1.counts.api_calls,
        rep1["missing"].as_u64().unwrap_or(0)
            + rep1["extra"].as_u64().unwrap_or(0)
            + rep1["stale"].as_u64().unwrap_or(0)
    );
    // Every 1000th record (in id order) changes behind the stream's back.
    let mut drifted = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let keys = store.row_keys("Account", after.as_deref(), 50_000).await?;
        let Some(last) = keys.last() else { break };
        after = Some(last.id.clone());
        drifted.extend(keys.iter().step_by(1000).map(|k| k.id.clone()));
        if keys.len() < 50_000 {
            break;
        }
    }
    org.admin(
        "/admin/drift",
        json!({"action": "silent_update", "object": "Account", "ids": drifted,
               "fields": {"Phone": "(555) 000-0000"}}),
    )
    .await?;
    println!("Reconciliation, {} records drifted…", drifted.len());
    let (r2, r2_secs) = run_job(&mut applier, &*store, SyncJobKind::Reconcile).await?;
    let rep2: serde_json::Value = serde_json::from_str(r2.report.as_deref().unwrap_or("{}"))?;
    let found = rep2["stale"].as_u64().unwrap_or(0);
    println!(
        "  {r2_secs:.2}s (with the repairs), {} API calls for the comparison, {found} found stale",
        r2.counts.api_calls
    );
    anyhow::ensure!(
        found == drifted.len() as u64,
        "reconciliation found {found} of {} drifted records",
        drifted.len()
    );
    org.shutdown().await;
    Ok(json!({
        "suite": "sync",
        "records": n,
        "long_text_percent": opts.long_text_percent,
        "emulator": if opts.in_process_emulator { "in_process" } else { "child_process" },
        "backfill": {
            "seconds": b_secs,
            "records_per_sec": b.counts.read as f64 / b_secs,
            "api_calls": b.counts.api_calls,
            "applied": b.counts.applied,
            "warehouse_mb": b_mb,
            "warehouse_mb_per_sec": b_mb / b_secs,
            "cpu_secs": b_cpu,
            "cpu_us_per_record": cpu_us_per_record,
            "emulator_cpu_us_per_record": emu_us_per_record,
        },
        "reconcile_in_sync": {
            "seconds": r1_secs,
            "api_calls": r1.counts.api_calls,
            "report": rep1,
        },
        "reconcile_with_drift": {
            "drifted": drifted.len(),
            "seconds_including_repairs": r2_secs,
            "api_calls_comparison": r2.counts.api_calls,
            "report": rep2,
        },
    }))
}
