//! `sfsync demo`: the embedded emulator, a traffic generator shaped like the design workload
//! changing records inside the org, and the same service `sfsync run` runs (pipeline, writeback
//! deliverer, operator API and dashboard) from a config the demo writes beside the org, with live
//! figures once a second. An outside system's writes arrive through the outbox table, with now
//! and then a conflict for a person and a dead letter, so every dashboard page has something to
//! show. `--duration SECS` makes it scriptable: it runs that long and exits 0.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use sfsync_emulator::load::{LoadConfig, LoadGenerator};
use sfsync_emulator::EmulatorConfig;
use sfsync_pipeline::PipelineStats;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Run this many seconds, then print the summary and exit (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Keep the org, CA and credentials here (persisted across runs).
    #[arg(long, default_value = ".sfsync/demo")]
    pub data_dir: PathBuf,
    /// Steady record changes per second made by the traffic generator (bursts are 4× this).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Share of Contact creates (0–1) the traffic generator gives a malformed postal code, which
    /// the demo's data-quality rule holds in the quarantine.
    #[arg(long, default_value_t = 0.01)]
    pub bad_rate: f64,
    /// HTTPS listener of the embedded emulator (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub http: std::net::SocketAddr,
    /// The operator API and dashboard (loopback; port 0 picks a free one, as does a busy port).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub api: std::net::SocketAddr,
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let mut config = EmulatorConfig::new(&args.data_dir);
    config.http_addr = args.http;
    config.grpc_addr = "127.0.0.1:0".parse().expect("static address");
    config.persist = true;
    let running = match sfsync_emulator::start(config.clone()).await {
        Ok(r) => r,
        Err(e) if args.http.port() != 0 => {
            eprintln!(
                "Port {} is busy ({e:#}); using a free port.",
                args.http.port()
            );
            config.http_addr = "127.0.0.1:0".parse().expect("static address");
            sfsync_emulator::start(config).await?
        }
        Err(e) => return Err(e),
    };
    println!("sfsync demo");
    println!("  emulator      {}", running.base_url);
    println!("  credentials   {}", running.credentials_path.display());
    println!("  CA            {}", running.ca_pem_path.display());
    println!(
        "  traffic       {:.0} changes/s steady, 4× bursts for 10 s every minute",
        args.rate
    );

    let org = running.org().clone();
    let rate = args.rate;
    if !(0.0..=1.0).contains(&args.bad_rate) {
        anyhow::bail!("--bad-rate {} must be between 0 and 1", args.bad_rate);
    }
    let bad_rate = args.bad_rate;
    let load = tokio::task::spawn_blocking(move || {
        LoadGenerator::start(
            org,
            LoadConfig {
                changes_per_sec: rate,
                bad_record_rate: bad_rate,
                ..LoadConfig::default()
            },
        )
    })
    .await
    .context("starting the traffic generator")?
    .map_err(|e| anyhow::anyhow!("seeding the demo org: {e}"))?;

    // The demo runs the same service as `sfsync run`, from a config it writes beside the org.
    let _ = std::fs::remove_file(args.data_dir.join("dashboard.url"));
    let api_addr = free_or_any(args.api);
    let (config_path, token) = write_demo_config(&args.data_dir, &running, api_addr)?;
    let (config, secrets) = crate::run_cmd::load(&config_path).await?;
    let service = crate::run_cmd::start_service(
        &config,
        &secrets,
        crate::run_cmd::StartAt::Earliest,
        &config_path,
        crate::run_cmd::Role::All,
        crate::run_cmd::ServiceApi::Own,
    )
    .await?;
    let warehouse = args.data_dir.join("warehouse.db");
    println!("  config        {}", config_path.display());
    println!("  warehouse     {} (SQLite)", warehouse.display());
    if let Some(addr) = service.api_addr {
        let link = args.data_dir.join("dashboard.url");
        write_private(
            &link,
            &format!("http://{addr}/ui/#token={}\n", token.trim()),
        )?;
        println!(
            "  dashboard     http://{addr}/ui/  (sign-in link with the operator token: {})",
            link.display()
        );
        println!("  API           http://{addr}/api/v1/  (OpenAPI: /api/v1/openapi.json, metrics: /metrics)");
    }
    // Writeback: a system called demo_writer owns Accounts with External_Id__c DEMO-WB-*; it
    // inserts rows into the outbox table (as any system could) and the deliverer sends them.
    let (wb_stop, wb_rx) = tokio::sync::watch::channel(false);
    let trickle = tokio::spawn(outbox_trickle(warehouse.clone(), wb_rx));
    println!(
        "  writeback     5 writes/s from demo_writer through the outbox table (Account DEMO-WB-*); \
         now and then a write whose Description Salesforce changed (a conflict for a person) or \
         with a field Account lacks (a dead letter)"
    );
    let pipeline = &service.running;

    let started = Instant::now();
    let stop_at = args.duration.map(|s| started + Duration::from_secs(s));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = load.snapshot();
    let mut last_applied = 0u64;
    let signal = crate::emulator_cmd::shutdown_signal();
    tokio::pin!(signal);
    let stats = pipeline.stats.clone();
    println!();
    println!(
        "{:>6} {:>10} {:>11} {:>10} {:>12} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "secs",
        "changes/s",
        "applied/s",
        "changes",
        "applied",
        "lag",
        "repairs",
        "dead",
        "held",
        "wb-appl",
        "wb-conf"
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut signal => break,
        }
        let now = load.snapshot();
        let applied = PipelineStats::get(&stats.applied);
        let last_commit = stats
            .last_commit_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let lag = if last_commit > 0 {
            format!(
                "{:.1}s",
                (chrono::Utc::now().timestamp_millis() - last_commit) as f64 / 1e3
            )
        } else {
            "-".into()
        };
        println!(
            "{:>6} {:>10} {:>11} {:>10} {:>12} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
            started.elapsed().as_secs(),
            now.changes - last.changes,
            applied - last_applied,
            now.changes,
            applied,
            lag,
            PipelineStats::get(&stats.repairs_done),
            PipelineStats::get(&stats.dead_letters),
            PipelineStats::get(&stats.quarantine_open),
            PipelineStats::get(&stats.writeback.applied),
            PipelineStats::get(&stats.writeback.confirmed),
        );
        last = now;
        last_applied = applied;
        if stop_at.is_some_and(|t| Instant::now() >= t) {
            break;
        }
    }
    let load_bad = load.bad_record_ids().len();
    let total = load.stop();
    // Let the pipeline catch up with the last changes (bounded), then stop it cleanly.
    let drain_until = Instant::now() + Duration::from_secs(30);
    let mut previous = u64::MAX;
    while Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let processed = PipelineStats::get(&stats.processed);
        if processed == previous && PipelineStats::get(&stats.ingested) <= processed {
            break;
        }
        previous = processed;
    }
    let _ = wb_stop.send(true);
    let _ = trickle.await;
    service.stop().await?;
    println!();
    println!(
        "Summary: {} record changes in {} transactions over {:.0} s ({} rejected by validation); \
         {} change events ingested, {} record changes applied, {} repairs, {} dead letters.",
        total.changes,
        total.transactions,
        started.elapsed().as_secs_f64(),
        total.failed_ops,
        PipelineStats::get(&stats.ingested),
        PipelineStats::get(&stats.applied),
        PipelineStats::get(&stats.repairs_done),
        PipelineStats::get(&stats.dead_letters),
    );
    println!(
        "Data quality: {} Contacts created with a malformed postal code (--bad-rate {}); \
         {} changes held in the quarantine ({} open), {} released.",
        load_bad,
        args.bad_rate,
        PipelineStats::get(&stats.quarantined),
        PipelineStats::get(&stats.quarantine_open),
        PipelineStats::get(&stats.released),
    );
    if let (Some(p50), Some(p99)) = (
        stats.latency_quantile_ms(0.5),
        stats.latency_quantile_ms(0.99),
    ) {
        println!("Commit → curated latency: p50 ≤ {p50} ms, p99 ≤ {p99} ms.");
    }
    let wb = &stats.writeback;
    println!(
        "Writeback: {} writes applied in {} API calls, {} confirmed by their CDC echo, {} failed; \
         accepted → applied p99 ≤ {} ms, accepted → confirmed p99 ≤ {} ms.",
        PipelineStats::get(&wb.applied),
        PipelineStats::get(&wb.api_calls),
        PipelineStats::get(&wb.confirmed),
        PipelineStats::get(&wb.failed),
        wb.accepted_to_applied
            .quantile_ms(0.99)
            .map_or("-".into(), |v| v.to_string()),
        wb.accepted_to_confirmed
            .quantile_ms(0.99)
            .map_or("-".into(), |v| v.to_string()),
    );
    println!();
    println!("Query the warehouse with the sqlite3 tool, for example:");
    let db = warehouse.display();
    println!("  sqlite3 {db} 'SELECT status, count(*) FROM sf_case WHERE NOT _sf_deleted GROUP BY status'");
    println!("  sqlite3 {db} 'SELECT id, status, valid_from, valid_to, is_current FROM sf_case_history ORDER BY id, _sf_version LIMIT 10'");
    println!("  sqlite3 {db} 'SELECT object, record_id, change_type, outcome FROM audit_log ORDER BY seq DESC LIMIT 10'");
    println!("  sqlite3 {db} \"SELECT id, object, record_id, rule, reason FROM quarantine WHERE status = 'held' LIMIT 10\"");
    println!(
        "  sqlite3 {db} 'SELECT object, rule, severity, failed, stored, over_cap FROM dq_counts'"
    );
    println!("  sqlite3 {db} 'SELECT id, state, external_id, record_id, echo_event_key FROM writes ORDER BY id DESC LIMIT 10'");
    println!("Tables: sf_<object> (current state), sf_<object>_history (SCD2), audit_log.");
    println!(
        "The raw change log (raw_changes) is in {}.",
        sfsync_store::sqlite::change_log_path(&warehouse).display()
    );
    println!(
        "Contact Email/Phone/Birthdate are PII: encrypted at rest (key in {}).",
        args.data_dir.join("pii.key").display()
    );
    println!(
        "The org is kept in {} (restart the demo to continue from it).",
        args.data_dir.display()
    );
    running.shutdown().await
}

/// Inserts 5 rows a second into the warehouse's outbox table, as an outside system would: an
/// upsert creating `DEMO-WB-<n>`, then Phone updates of earlier ones. Now and then (the first
/// within seconds, then about once a minute) a Description for an Account the traffic changed,
/// sent with an ancient seen version (a conflict a person decides), and a write naming a field
/// Account lacks (Salesforce refuses it: a dead letter).
async fn outbox_trickle(warehouse: PathBuf, mut stop: tokio::sync::watch::Receiver<bool>) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut n: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        n += 1;
        let key = format!("{run}-{n}");
        let path = warehouse.clone();
        let inserted = tokio::task::spawn_blocking(move || -> rusqlite::Result<usize> {
            let c = rusqlite::Connection::open(&path)?;
            c.busy_timeout(Duration::from_secs(5))?;
            // Both take the place of a Phone update (even n), never of a create.
            let conflict = n % 300 == 26;
            let bogus = n % 300 == 42;
            if conflict {
                let id: Option<String> = c
                    .query_row(
                        "SELECT id FROM sf_account WHERE NOT _sf_deleted
                         AND (external_id__c IS NULL OR external_id__c NOT LIKE 'DEMO-WB-%')
                         ORDER BY random() LIMIT 1",
                        [],
                        |r| r.get(0),
                    )
                    .ok();
                if let Some(id) = id {
                    return c.execute(
                        "INSERT INTO outbox (source_system, idempotency_key, object, record_id,
                             fields, seen_version_ms) VALUES ('demo_writer', ?1, 'Account', ?2, ?3, 1)",
                        rusqlite::params![
                            key,
                            id,
                            serde_json::json!({"Description": format!("Eligibility reviewed ({n})")})
                                .to_string()
                        ],
                    );
                }
            }
            let (ext, fields) = if bogus {
                (
                    format!("DEMO-WB-BAD-{n}"),
                    serde_json::json!({"Name": "Mapped wrongly", "Fax_Number__c": "555-0100"}),
                )
            } else if n % 2 == 1 {
                (
                    format!("DEMO-WB-{}", n / 2),
                    serde_json::json!({"Name": format!("Writeback demo {}", n / 2)}),
                )
            } else {
                (
                    format!("DEMO-WB-{}", n / 4),
                    serde_json::json!({"Phone": format!("555-{:04}", n % 10_000)}),
                )
            };
            c.execute(
                "INSERT INTO outbox (source_system, idempotency_key, object, external_id_field,
                     external_id, fields) VALUES ('demo_writer', ?1, 'Account', 'External_Id__c', ?2, ?3)",
                rusqlite::params![key, ext, fields.to_string()],
            )
        })
        .await;
        if let Ok(Err(e)) = inserted {
            tracing::warn!(error = %e, "The demo could not insert an outbox row.");
        }
    }
}

/// `addr` when it is free now, else a free port on its address.
fn free_or_any(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    match std::net::TcpListener::bind(addr) {
        Ok(l) => l.local_addr().unwrap_or(addr),
        Err(e) => {
            eprintln!("API port {} is busy ({e}); using a free port.", addr.port());
            std::net::TcpListener::bind(std::net::SocketAddr::new(addr.ip(), 0))
                .and_then(|l| l.local_addr())
                .unwrap_or(addr)
        }
    }
}

/// Writes `text` to `path` readable by the owner only.
fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(())
}

/// A secret generated once into `dir/name` (64 hex digits, mode 0600) and read back.
fn generated_secret(dir: &std::path::Path, name: &str) -> Result<String> {
    let path = dir.join(name);
    if !path.exists() {
        let key: [u8; 32] = rand::random();
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&path, &hex)?;
    }
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

/// The demo's config (`DIR/sfsync.toml`, rewritten at every start): the workload's standard and
/// custom objects with SCD2 history on their status-like fields, the Contact's personal data as
/// PII (key `DIR/pii.key`), a postal-code rule and a Case → Contact reference check, writeback of
/// Accounts owned by `demo_writer` (Description shared, conflicts decided by a person), and the
/// API with an operator token (`DIR/api-operator.token`) and a read-only viewer token
/// (`DIR/api-viewer.token`). Returns the path and the operator token.
fn write_demo_config(
    dir: &std::path::Path,
    org: &sfsync_emulator::RunningEmulator,
    api: std::net::SocketAddr,
) -> Result<(PathBuf, String)> {
    generated_secret(dir, "pii.key")?;
    let token = generated_secret(dir, "api-operator.token")?;
    generated_secret(dir, "api-viewer.token")?;
    let text = format!(
        r#"# Written by `sfsync demo` at every start (edits are overwritten): the demo org's flows.
[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"

[[objects]]
name = "Case"
history = {{ fields = ["Status", "Priority", "OwnerId"] }}
references = [{{ field = "ContactId", object = "Contact", alert_after_secs = 3600 }}]
team = "Case management integration"
sla_secs = 60

[[objects]]
name = "Account"
history = {{ fields = ["Name", "Type"] }}
team = "Customer data"

[[objects]]
name = "Contact"
history = {{ fields = ["AccountId", "Email"] }}
pii_fields = ["Email", "Phone", "Birthdate"]
required = ["LastName"]
team = "Customer data"

[[objects.rules]]
field = "MailingPostalCode"
check = "regex"
pattern = "^[0-9]{{5}}(-[0-9]{{4}})?$"

[[objects]]
name = "Opportunity"
history = {{ fields = ["StageName", "Amount"] }}

[[objects]]
name = "Service_Request__c"
history = {{ fields = ["Status__c"] }}
team = "Service delivery"

[[objects]]
name = "Payment__c"
history = {{ fields = ["Status__c", "Amount__c"] }}
team = "Payments"
sla_secs = 300

[warehouse]
type = "sqlite"
path = "warehouse.db"

[pii]
key_file = "pii.key"
key_id = "demo-1"

[pipeline]
# The org's whole retained history is replayed from the earliest event instead.
backfill_new_objects = false

[[writeback.objects]]
name = "Account"
owner = "demo_writer"
policy = "source_of_truth"
fields = [{{ name = "Description", owner = "shared", policy = "manual" }}]
team = "Demo writer (outbox)"
sla_secs = 300

[api]
listen = "{api}"

[[api.tokens]]
name = "demo-operator"
role = "operator"
token_file = "api-operator.token"

[[api.tokens]]
name = "demo-viewer"
role = "viewer"
token_file = "api-viewer.token"
"#,
        creds = org.credentials_path.display(),
        ca = org.ca_pem_path.display(),
    );
    let path = dir.join("sfsync.toml");
    write_private(&path, &text)?;
    Ok((path, token))
}
