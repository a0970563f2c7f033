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
use sfsync_salesforce::{
    AuthFlow, ClientConfig, CredentialsFile, QueryJobRequest, SalesforceClient,
};

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
    let load = tokio::task::spawn_blocking(move || {
        LoadGenerator::start(
            org,
            LoadConfig {
                changes_per_sec: rate,
                ..LoadConfig::default()
            },
        )
    })
    .await
    .context("starting the traffic generator")?
    .map_err(|e| anyhow::anyhow!("seeding the demo org: {e}"))?;

    let creds = CredentialsFile::load(&running.credentials_path)?;
    let client = SalesforceClient::new(
        ClientConfig::new(running.base_url.clone(), Some(running.ca_pem_path.clone())),
        creds.credentials(AuthFlow::JwtBearer)?,
    )?;

    let started = Instant::now();
    let stop_at = args.duration.map(|s| started + Duration::from_secs(s));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = load.snapshot();
    let mut last_cases = None;
    let signal = crate::emulator_cmd::shutdown_signal();
    tokio::pin!(signal);
    println!();
    println!(
        "{:>6} {:>10} {:>12} {:>10} {:>12} {:>14}",
        "secs", "changes/s", "changes", "txns", "Cases (SOQL)", "API used/max"
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut signal => break,
        }
        let now = load.snapshot();
        let secs = started.elapsed().as_secs();
        if secs > 0 && secs.is_multiple_of(5) {
            // The sfsync client reading the org over HTTPS, as the pipeline will.
            match client
                .query_page("SELECT COUNT() FROM Case", &Default::default())
                .await
            {
                Ok(page) => last_cases = Some(page.total_size),
                Err(e) => eprintln!("SOQL through the client failed: {e}"),
            }
        }
        let usage = client
            .api_usage()
            .map(|u| format!("{}/{}", u.used, u.max))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:>6} {:>10} {:>12} {:>10} {:>12} {:>14}",
            secs,
            now.changes - last.changes,
            now.changes,
            now.transactions,
            last_cases
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            usage
        );
        last = now;
        if stop_at.is_some_and(|t| Instant::now() >= t) {
            break;
        }
    }
    let total = load.stop();
    println!();
    println!("Exporting Cases through Bulk API 2.0 with the sfsync client…");
    let t = Instant::now();
    let mut stream = client
        .bulk()
        .query(
            &QueryJobRequest::new(
                "SELECT Id, CaseNumber, Status, Priority, LastModifiedDate FROM Case",
            ),
            None,
        )
        .await?;
    let mut rows = 0usize;
    while let Some(batch) = stream.next_batch().await? {
        rows += batch.len();
    }
    println!(
        "  {rows} Cases exported in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "Summary: {} record changes in {} transactions over {:.0} s ({} rejected by validation).",
        total.changes,
        total.transactions,
        started.elapsed().as_secs_f64(),
        total.failed_ops
    );
    println!(
        "The org is kept in {} (restart the demo to continue from it).",
        args.data_dir.display()
    );
    println!(
        "Connect any Salesforce tool: instance URL {}, CA {}, credentials {}.",
        running.base_url,
        running.ca_pem_path.display(),
        running.credentials_path.display()
    );
    println!("The warehouse pipeline (sfsync run) lands with the exactly-once pipeline issue.");
    running.shutdown().await
}
