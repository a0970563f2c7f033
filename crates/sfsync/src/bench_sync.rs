//! `sfsync bench sync`: backfill and reconciliation against the embedded emulator, into a SQLite
//! warehouse, through the same job runner `sfsync run` uses (the applier with Bulk API access).
//!
//! Measures: a backfill of N Accounts (records/s, API calls), a reconciliation of the N records
//! in sync (seconds, API calls), and one after 0.1 % of them were changed behind the stream's
//! back (seconds, API calls, drift found). Every Account the emulator seeds carries a 2–6 KB
//! Description, so the backfill moves several KB per record; the report gives MB/s too.

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
    let emu = sfsync_emulator::start(EmulatorConfig::ephemeral(dir.path().join("org")))
        .await
        .context("starting the emulator")?;
    let org = emu.org().clone();
    let n = opts.records;
    println!("Seeding {n} Accounts in the emulator…");
    let t = Instant::now();
    let ctx = sfsync_org::CallContext {
        user_id: org.admin_user_id(),
        api: sfsync_org::ApiKind::Rest,
        api_version: "66.0".into(),
        client: None,
    };
    let ids = {
        let org = org.clone();
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || org.seed(&ctx, "Account", n, 42)).await??
    };
    println!("  seeded in {:.1}s", t.elapsed().as_secs_f64());
    let creds = CredentialsFile::load(&emu.credentials_path)?;
    let client = SalesforceClient::new(
        ClientConfig::new(emu.base_url.clone(), Some(emu.ca_pem_path.clone())),
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
        },
        Arc::new(PipelineStats::default()),
    )
    .with_bulk(bulk);

    println!("Backfill of {n} Accounts…");
    let (b, b_secs) = run_job(&mut applier, &*store, SyncJobKind::Backfill).await?;
    let db_bytes = std::fs::metadata(dir.path().join("wh.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "  {:.0} records/s ({:.1}s), {} API calls, warehouse {:.0} MB",
        b.counts.read as f64 / b_secs,
        b_secs,
        b.counts.api_calls,
        db_bytes as f64 / 1e6
    );
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
    let drifted: Vec<String> = ids.iter().step_by(1000).map(|id| id.to_string()).collect();
    let mut fields = serde_json::Map::new();
    fields.insert("Phone".into(), json!("(555) 000-0000"));
    org.drift(
        &ctx,
        "Account",
        &drifted,
        &sfsync_org::Drift::SilentUpdate(fields),
    )?;
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
    let _ = emu.shutdown().await;
    Ok(json!({
        "suite": "sync",
        "records": n,
        "backfill": {
            "seconds": b_secs,
            "records_per_sec": b.counts.read as f64 / b_secs,
            "api_calls": b.counts.api_calls,
            "applied": b.counts.applied,
            "warehouse_mb": db_bytes as f64 / 1e6,
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
