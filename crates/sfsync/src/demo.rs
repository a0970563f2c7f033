//! `sfsync demo`: the embedded emulator, a traffic generator shaped like the design workload
//! changing records inside the org, and the sfsync client reading the org over HTTPS (SOQL counts
//! every few seconds and a Bulk API 2.0 export at the end), with live figures once a second.
//! `--duration SECS` makes it scriptable: it runs that long and exits 0.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use sfsync_emulator::load::{LoadConfig, LoadGenerator};
use sfsync_emulator::EmulatorConfig;
use sfsync_pipeline::{ApplyConfig, HistoryFields, ObjectSpec, PipelineConfig, PipelineStats};
use sfsync_salesforce::pubsub::{ReplayStart, Subscriber, SubscriberConfig};
use sfsync_salesforce::{AuthFlow, ClientConfig, CredentialsFile, SalesforceClient, TokenSource};
use sfsync_store::{Keyring, SqliteChangeLog, Warehouse, WriteLedger};
use std::sync::Arc;

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

    let creds = CredentialsFile::load(&running.credentials_path)?;
    let mut cc = ClientConfig::new(running.base_url.clone(), Some(running.ca_pem_path.clone()));
    cc.call_options_client = Some("sfsync".into());
    let credentials = creds.credentials(AuthFlow::JwtBearer)?;
    let client = SalesforceClient::new(cc, credentials.clone())?;

    // The pipeline: Pub/Sub CDC → raw change log → curated tables in a local SQLite warehouse.
    let warehouse = args.data_dir.join("warehouse.db");
    let store = SqliteChangeLog::open(&warehouse)
        .await
        .with_context(|| format!("opening {}", warehouse.display()))?;
    store.set_keyring(Some(Arc::new(demo_keyring(&args.data_dir)?)));
    let store = Arc::new(store);
    let ledger: Arc<dyn WriteLedger> = store.clone();
    let store: Arc<dyn Warehouse> = store;
    let tokens = Arc::new(TokenSource::new(client.http().clone(), credentials));
    let subscriber = Subscriber::connect(
        SubscriberConfig::new(
            running.credentials.pubsub_address.clone(),
            Some(running.ca_pem_path.clone()),
        ),
        tokens,
    )
    .await
    .context("connecting to the emulator's Pub/Sub API")?;
    let pipeline = sfsync_pipeline::start(
        store.clone(),
        Arc::new(client.lane(sfsync_salesforce::Lane::GapRepair)),
        subscriber,
        PipelineConfig {
            objects: demo_objects(),
            apply: ApplyConfig {
                batch_max_records: 1000,
                gap_reread_batch_records: 200,
                own_client: "sfsync".into(),
                run_id: crate::run_cmd::new_run_id(),
                max_stored_failures_per_rule:
                    sfsync_pipeline::apply::DEFAULT_MAX_STORED_FAILURES_PER_RULE,
                jobs: Default::default(),
            },
            initial: ReplayStart::Earliest,
            idle_wait: Duration::from_millis(200),
            bulk: Some(client.bulk()),
            echo_ledger: Some(sfsync_pipeline::writeback::EchoLedger(ledger.clone())),
        },
    )
    .await
    .context("starting the pipeline")?;
    println!("  warehouse     {} (SQLite)", warehouse.display());
    // Writeback: a system called demo_writer owns Accounts with External_Id__c DEMO-WB-*; it
    // inserts rows into the outbox table (as any system could) and the deliverer sends them.
    let (wb_stop, wb_rx) = tokio::sync::watch::channel(false);
    let deliverer = tokio::spawn(
        sfsync_pipeline::writeback::Deliverer::new(
            store.clone(),
            ledger.clone(),
            &client,
            demo_writeback_policy(),
            sfsync_pipeline::writeback::DeliveryConfig {
                claimer: format!("demo-pid{}", std::process::id()),
                ..Default::default()
            },
            pipeline.stats.clone(),
        )
        .with_echo(pipeline.echo.clone())
        .run(wb_rx.clone()),
    );
    let trickle = tokio::spawn(outbox_trickle(warehouse.clone(), wb_rx));
    println!(
        "  writeback     5 writes/s from demo_writer through the outbox table (Account DEMO-WB-*)"
    );

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
    let _ = deliverer.await;
    pipeline.shutdown(Duration::from_secs(30)).await?;
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

/// The demo's synced objects: the workload's standard and custom objects with SCD2 history on
/// their status-like fields and the Contact's personal data as PII.
fn demo_objects() -> Vec<ObjectSpec> {
    let with = |name: &str, history: &[&str], pii: &[&str]| {
        let mut s = ObjectSpec::new(name);
        s.history = HistoryFields::Fields(history.iter().map(|f| f.to_string()).collect());
        s.pii_fields = pii.iter().map(|f| f.to_string()).collect();
        s
    };
    use sfsync_pipeline::quality::{CheckSpec, ReferenceSpec, RuleSpec, Severity};
    let mut case = with("Case", &["Status", "Priority", "OwnerId"], &[]);
    // A Case waits for its Contact (one held by a rule, say) before it is merged.
    case.quality.references.push(ReferenceSpec {
        field: "ContactId".into(),
        parent: "Contact".into(),
        alert_after_secs: 3600,
    });
    let mut contact = with(
        "Contact",
        &["AccountId", "Email"],
        &["Email", "Phone", "Birthdate"],
    );
    contact.quality.required.push("LastName".into());
    contact.quality.rules.push(RuleSpec {
        field: "MailingPostalCode".into(),
        check: CheckSpec::Regex("^[0-9]{5}(-[0-9]{4})?$".into()),
        severity: Severity::Error,
    });
    vec![
        case,
        with("Account", &["Name", "Type"], &[]),
        contact,
        with("Opportunity", &["StageName", "Amount"], &[]),
        with("Service_Request__c", &["Status__c"], &[]),
        with("Payment__c", &["Status__c", "Amount__c"], &[]),
    ]
}

/// The demo's writeback rules: Accounts' fields are owned by `demo_writer`, whose writes are
/// the source of truth.
fn demo_writeback_policy() -> sfsync_pipeline::writeback::WritebackPolicy {
    use sfsync_pipeline::writeback::{ConflictPolicy, FieldRule, ObjectPolicy, Owner};
    sfsync_pipeline::writeback::WritebackPolicy {
        objects: [(
            "Account".to_string(),
            ObjectPolicy {
                default: FieldRule {
                    owner: Owner::System("demo_writer".into()),
                    policy: ConflictPolicy::SourceOfTruth,
                },
                fields: Default::default(),
            },
        )]
        .into(),
    }
}

/// Inserts 5 rows a second into the warehouse's outbox table, as an outside system would: an
/// upsert creating `DEMO-WB-<n>`, then Phone updates of earlier ones.
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
        let (ext, fields) = if n % 2 == 1 {
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
        let key = format!("{run}-{n}");
        let path = warehouse.clone();
        let inserted = tokio::task::spawn_blocking(move || -> rusqlite::Result<usize> {
            let c = rusqlite::Connection::open(&path)?;
            c.busy_timeout(Duration::from_secs(5))?;
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

/// The demo's PII key: generated once into `DIR/pii.key` (mode 0600).
fn demo_keyring(dir: &std::path::Path) -> Result<Keyring> {
    let path = dir.join("pii.key");
    if !path.exists() {
        let key: [u8; 32] = rand::random();
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&path, hex).with_context(|| format!("writing {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    let hex =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Keyring::from_hex("demo-1", hex.trim()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
