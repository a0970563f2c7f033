//! `sfsync bench salesforce`: the HTTP side measured end to end through the sfsync client against
//! the emulator running as a separate process (so the client's memory is measured alone):
//! REST single-record GETs per second over TLS with keep-alive, Bulk API 2.0 query export of
//! N Accounts (records/s, peak RSS, and peak RSS for a 10× smaller export to show memory does not
//! grow with the result size), and Bulk ingest of upserts by external id. Prints a table and
//! returns the JSON report.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use serde_json::{json, Value};
use sfsync_salesforce::{
    AuthFlow, BulkCsvWriter, BulkValue, ClientConfig, CredentialsFile, IngestJobRequest,
    QueryJobRequest, QueryOptions, SalesforceClient,
};

/// Benchmark sizes.
#[derive(Debug, Clone)]
pub struct SalesforceBenchOptions {
    /// Accounts seeded and exported by the Bulk query.
    pub accounts: usize,
    /// Duration of the REST GET phase.
    pub rest_secs: u64,
    /// Concurrent REST callers.
    pub concurrency: usize,
    /// Records upserted by Bulk ingest.
    pub upserts: usize,
}

impl Default for SalesforceBenchOptions {
    fn default() -> Self {
        SalesforceBenchOptions {
            accounts: 1_000_000,
            rest_secs: 10,
            concurrency: 32,
            upserts: 100_000,
        }
    }
}

/// The emulator child process; killed on drop.
struct EmulatorProcess {
    child: tokio::process::Child,
    dir: PathBuf,
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_emulator() -> Result<(EmulatorProcess, CredentialsFile, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("sfsync-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let exe = std::env::current_exe().context("locating the sfsync binary")?;
    // An in-memory org (no --data-dir persistence): CA and credentials go to the cwd's
    // .sfsync/emulator, so run the child inside the temporary directory.
    let child = tokio::process::Command::new(exe)
        .current_dir(&dir)
        .args([
            "emulator",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--daily-api-requests",
            "1000000000",
        ])
        .env("SFSYNC_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the emulator process")?;
    let proc = EmulatorProcess {
        child,
        dir: dir.clone(),
    };
    let cred_path = dir.join(".sfsync/emulator/credentials.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cred_path.exists() {
        if Instant::now() > deadline {
            bail!(
                "the emulator did not write {} within 60 s",
                cred_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The file is written atomically (rename) after the listener is bound.
    let creds = CredentialsFile::load(&cred_path)?;
    let ca = dir.join(".sfsync/emulator/ca.pem");
    Ok((proc, creds, ca))
}

fn client_for(creds: &CredentialsFile, ca: &Path) -> Result<SalesforceClient> {
    let instance = creds
        .instance_url
        .clone()
        .context("credentials have no instance_url")?;
    let config = ClientConfig::new(instance, Some(ca.to_path_buf()));
    Ok(SalesforceClient::new(
        config,
        creds.credentials(AuthFlow::Password)?,
    )?)
}

/// Peak resident set size of this process (VmHWM), in bytes.
fn peak_rss() -> u64 {
    proc_status_kb("VmHWM:") * 1024
}

fn current_rss() -> u64 {
    proc_status_kb("VmRSS:") * 1024
}

fn proc_status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resets the peak RSS counter (Linux `clear_refs` value 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn admin_post(creds: &CredentialsFile, ca: &Path, path: &str, body: Value) -> Result<Value> {
    let pem = std::fs::read(ca)?;
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem)?])
        .build()?;
    let base = creds.instance_url.clone().unwrap_or_default();
    let token = creds
        .admin_token
        .as_ref()
        .map(|s| s.expose().to_string())
        .unwrap_or_default();
    let r = http
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(1800))
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("admin {path} answered {status}: {v}");
    }
    Ok(v)
}

const EXPORT_SOQL: &str = "SELECT Id, Name, Type, Industry, Phone, Website, AnnualRevenue, \
    NumberOfEmployees, BillingStreet, BillingCity, BillingState, BillingPostalCode, \
    BillingCountry, External_Id__c, CreatedDate, LastModifiedDate, SystemModstamp FROM Account";

/// Exports with a Bulk query job; returns (rows, bytes of cell text, seconds, peak RSS).
async fn export(client: &SalesforceClient, limit: Option<usize>) -> Result<(u64, u64, f64, u64)> {
    let soql = match limit {
        Some(n) => format!("{EXPORT_SOQL} LIMIT {n}"),
        None => EXPORT_SOQL.to_string(),
    };
    reset_peak_rss();
    let start = Instant::now();
    let mut stream = client
        .bulk()
        .query(&QueryJobRequest::new(soql), Some(100_000))
        .await?;
    let mut rows = 0u64;
    let mut bytes = 0u64;
    while let Some(batch) = stream.next_batch().await? {
        rows += batch.len() as u64;
        bytes += batch.text_bytes() as u64;
    }
    Ok((rows, bytes, start.elapsed().as_secs_f64(), peak_rss()))
}

async fn rest_gets(client: &SalesforceClient, secs: u64, concurrency: usize) -> Result<(u64, f64)> {
    let ids: Vec<String> = client
        .query_all_pages("SELECT Id FROM Account LIMIT 2000", QueryOptions::default())
        .await?
        .into_iter()
        .filter_map(|r| r.get("Id").and_then(|v| v.as_str()).map(str::to_string))
        .collect();
    if ids.is_empty() {
        bail!("no Accounts to read");
    }
    let ids = Arc::new(ids);
    // Warm up the connection pool and the token.
    client
        .retrieve("Account", &ids[0], Some(&["Id", "Name"]))
        .await?;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let client = client.clone();
        let ids = ids.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < stop {
                let id = &ids[i % ids.len()];
                client.retrieve("Account", id, None).await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += concurrency;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((done.load(Ordering::Relaxed), start.elapsed().as_secs_f64()))
}

async fn ingest_upserts(client: &SalesforceClient, n: usize, pass: u32) -> Result<(u64, u64, f64)> {
    let mut w = BulkCsvWriter::new(b',', false);
    w.write_header(["External_Id__c", "Name", "Phone", "Industry"])?;
    for i in 0..n {
        let ext = format!("BENCH-{i:08}");
        let name = format!("Bench Account {i} pass {pass}");
        let phone = format!("+1 555 {:07}", (i * 7 + pass as usize) % 10_000_000);
        let industry = ["Government", "Education", "Healthcare", "Nonprofit"][i % 4];
        w.write_record([
            BulkValue::Text(&ext),
            BulkValue::Text(&name),
            BulkValue::Text(&phone),
            BulkValue::Text(industry),
        ])?;
    }
    let data: Bytes = w.into_bytes();
    let start = Instant::now();
    let jobs = client
        .bulk()
        .ingest(&IngestJobRequest::upsert("Account", "External_Id__c"), data)
        .await?;
    let secs = start.elapsed().as_secs_f64();
    let processed = jobs.iter().map(|j| j.number_records_processed).sum::<u64>();
    let failed = jobs.iter().map(|j| j.number_records_failed).sum::<u64>();
    Ok((processed, failed, secs))
}

fn mb(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Runs the suite; prints the table; returns the JSON report.
pub async fn run(opts: SalesforceBenchOptions) -> Result<Value> {
    let (_emu, creds, ca) = start_emulator().await?;
    let client = client_for(&creds, &ca)?;
    let rss_idle = current_rss();

    eprintln!("Seeding {} Accounts in the emulator…", opts.accounts);
    let t = Instant::now();
    admin_post(
        &creds,
        &ca,
        "/admin/seed",
        json!({"objects": {"Account": opts.accounts}, "seed": 7}),
    )
    .await?;
    let seed_secs = t.elapsed().as_secs_f64();

    eprintln!(
        "REST GETs for {} s with {} concurrent callers…",
        opts.rest_secs, opts.concurrency
    );
    let (gets, get_secs) = rest_gets(&client, opts.rest_secs, opts.concurrency).await?;
    let gets_per_sec = gets as f64 / get_secs;

    let small = (opts.accounts / 10).max(1);
    eprintln!("Bulk query export of {small} Accounts (memory baseline)…");
    let (small_rows, _, small_secs, small_peak) = export(&client, Some(small)).await?;
    eprintln!("Bulk query export of {} Accounts…", opts.accounts);
    let (rows, bytes, secs, peak) = export(&client, None).await?;
    let export_rate = rows as f64 / secs;
    if rows as usize != opts.accounts {
        bail!(
            "the export returned {rows} rows, expected {}",
            opts.accounts
        );
    }

    eprintln!("Bulk ingest: {} upserts (inserting)…", opts.upserts);
    let (ins_n, ins_failed, ins_secs) = ingest_upserts(&client, opts.upserts, 1).await?;
    eprintln!("Bulk ingest: {} upserts (updating)…", opts.upserts);
    let (upd_n, upd_failed, upd_secs) = ingest_upserts(&client, opts.upserts, 2).await?;
    let usage = client.api_usage();

    let report = json!({
        "suite": "salesforce",
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)},
        "seed": {"accounts": opts.accounts, "seconds": seed_secs},
        "rest_get": {
            "requests": gets, "seconds": get_secs, "requests_per_sec": gets_per_sec,
            "concurrency": opts.concurrency, "tls": true, "keep_alive": true,
            "floor_requests_per_sec": 10_000, "meets_floor": gets_per_sec >= 10_000.0,
        },
        "bulk_export": {
            "records": rows, "seconds": secs, "records_per_sec": export_rate,
            "cell_text_mb": mb(bytes), "mb_per_sec": mb(bytes) / secs,
            "client_peak_rss_mb": mb(peak),
            "client_idle_rss_mb": mb(rss_idle),
            "small_export": {"records": small_rows, "seconds": small_secs, "client_peak_rss_mb": mb(small_peak)},
            "peak_rss_ratio_large_to_small": peak as f64 / small_peak.max(1) as f64,
            "floor_records_per_sec": 300_000, "meets_floor": export_rate >= 300_000.0,
        },
        "bulk_ingest_upsert": {
            "insert_pass": {"records": ins_n, "failed": ins_failed, "seconds": ins_secs, "records_per_sec": ins_n as f64 / ins_secs},
            "update_pass": {"records": upd_n, "failed": upd_failed, "seconds": upd_secs, "records_per_sec": upd_n as f64 / upd_secs},
        },
        "api_usage_after": usage.map(|u| json!({"used": u.used, "max": u.max})),
    });

    println!();
    println!(
        "sfsync bench salesforce — emulator in a separate process, client over TLS on loopback"
    );
    println!("{:<44} {:>16} {:>12}", "figure", "value", "floor");
    println!(
        "{:<44} {:>16.0} {:>12}",
        "REST GET requests/s (keep-alive, TLS)", gets_per_sec, "≥ 10,000"
    );
    println!(
        "{:<44} {:>16.0} {:>12}",
        "Bulk query export records/s", export_rate, "≥ 300,000"
    );
    println!(
        "{:<44} {:>16.1} {:>12}",
        "  export MB/s (cell text)",
        mb(bytes) / secs,
        ""
    );
    println!(
        "{:<44} {:>16.1} {:>12}",
        format!("  client peak RSS MB, {rows} rows"),
        mb(peak),
        ""
    );
    println!(
        "{:<44} {:>16.1} {:>12}",
        format!("  client peak RSS MB, {small_rows} rows"),
        mb(small_peak),
        ""
    );
    println!(
        "{:<44} {:>16.0} {:>12}",
        "Bulk ingest upserts/s (insert pass)",
        ins_n as f64 / ins_secs,
        ""
    );
    println!(
        "{:<44} {:>16.0} {:>12}",
        "Bulk ingest upserts/s (update pass)",
        upd_n as f64 / upd_secs,
        ""
    );
    println!("{:<44} {:>16.1} {:>12}", "seed Accounts (s)", seed_secs, "");
    Ok(report)
}
