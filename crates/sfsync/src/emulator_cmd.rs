//! `sfsync emulator`: starts the emulator and prints everything a tool needs to connect.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use sfsync_emulator::{EmulatorConfig, LimitsConfig};

#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// HTTPS listener for REST, SOAP, OAuth, Bulk API 2.0 and the admin API.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub http: SocketAddr,
    /// Pub/Sub API gRPC listener.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub grpc: SocketAddr,
    /// Keep the org, CA and credentials here; the org survives restarts. Without it the org
    /// lives in memory and the CA and credentials go to `.sfsync/emulator`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Serve plain HTTP instead of HTTPS (only allowed on loopback addresses).
    #[arg(long)]
    pub plain_http: bool,
    /// Custom objects schema file (TOML or JSON) added to the standard objects, instead of the
    /// demo's public-sector objects.
    #[arg(long)]
    pub schema: Option<PathBuf>,
    /// Session inactivity timeout in seconds (Salesforce's default is 2 hours).
    #[arg(long, default_value_t = 7200)]
    pub session_timeout_secs: u64,
    /// Rolling-24 h API request allocation.
    #[arg(long, default_value_t = LimitsConfig::default().daily_api_requests)]
    pub daily_api_requests: u64,
    /// Fault injection from a JSON file: `{"latency_ms": 50, "seed": 1, "rules": [{"path_contains":
    /// "/composite/", "method": "PATCH", "kind": "UNABLE_TO_LOCK_ROW", "rate": 0.1}]}`
    /// (kinds: SERVER_UNAVAILABLE, UNABLE_TO_LOCK_ROW, QUERY_TIMEOUT). Also `PUT /admin/faults`.
    #[arg(long)]
    pub faults: Option<PathBuf>,
    /// Objects that publish Change Data Capture events (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    pub cdc_objects: Option<Vec<String>>,
    /// How long change events stay replayable (Salesforce: 72 hours).
    #[arg(long, default_value_t = 72)]
    pub cdc_retention_hours: u64,
    /// Change events delivered to subscribers per rolling 24 h before
    /// `subscription.limit.exceeded` (default sized for the design workload of 35 M changes/day).
    #[arg(long)]
    pub cdc_daily_delivery_allocation: Option<u64>,
    /// Seed this many records per standard and custom object at start (0 = empty org).
    #[arg(long, default_value_t = 0)]
    pub seed: usize,
}

impl EmulatorArgs {
    pub fn to_config(&self) -> Result<EmulatorConfig> {
        let persist = self.data_dir.is_some();
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".sfsync/emulator"));
        let mut c = EmulatorConfig::new(dir);
        c.http_addr = self.http;
        c.grpc_addr = self.grpc;
        c.persist = persist;
        c.plain_http = self.plain_http;
        c.schema_file = self.schema.clone();
        c.session_timeout = Duration::from_secs(self.session_timeout_secs);
        c.limits.daily_api_requests = self.daily_api_requests;
        c.cdc.enabled_objects = self.cdc_objects.clone();
        c.cdc.retention = Duration::from_secs(self.cdc_retention_hours * 3600);
        if let Some(n) = self.cdc_daily_delivery_allocation {
            c.cdc.daily_delivery_allocation = n;
        }
        if let Some(path) = &self.faults {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the fault file {}", path.display()))?;
            c.faults = serde_json::from_str(&text).with_context(|| {
                format!("{} is not a valid fault configuration", path.display())
            })?;
        }
        Ok(c)
    }
}

pub async fn run(args: EmulatorArgs) -> Result<()> {
    let config = args.to_config()?;
    let running = sfsync_emulator::start(config.clone()).await?;
    if args.seed > 0 {
        let org = running.org().clone();
        let n = args.seed;
        let admin = running.state.auth.admin().user_id;
        let objects: Vec<String> = org
            .schema()
            .objects
            .iter()
            .filter(|o| o.name != "User")
            .map(|o| o.name.clone())
            .collect();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let ctx = sfsync_org::CallContext {
                user_id: admin,
                api: sfsync_org::ApiKind::Admin,
                api_version: "66.0".into(),
                client: None,
            };
            for (i, o) in objects.iter().enumerate() {
                org.seed(&ctx, o, n, 42 + i as u64)
                    .map_err(|e| anyhow::anyhow!("seeding {o}: {e}"))?;
            }
            Ok(())
        })
        .await
        .context("seeding task")??;
    }
    let c = &running.credentials;
    println!("sfsync emulator is running");
    println!("  REST / SOAP / OAuth / Bulk  {}", running.base_url);
    println!("  login URL                   {}", c.login_url);
    println!("  Pub/Sub gRPC address        {}", c.pubsub_address);
    println!(
        "  credentials                 {}",
        running.credentials_path.display()
    );
    println!(
        "  CA certificate              {}",
        running.ca_pem_path.display()
    );
    println!("  org id                      {}", c.org_id);
    println!("  username                    {}", c.username);
    println!(
        "  org state                   {}",
        if config.persist {
            format!("persisted in {}", config.data_dir.display())
        } else {
            "in memory (use --data-dir to persist)".to_string()
        }
    );
    println!();
    println!("Try it:");
    println!(
        "  TOKEN=$(curl -s --cacert {ca} {url}/services/oauth2/token -d grant_type=password \\\n      -d client_id=$(jq -r .client_id {cred}) -d client_secret=$(jq -r .client_secret {cred}) \\\n      -d username=$(jq -r .username {cred}) -d password=$(jq -r .password {cred}) | jq -r .access_token)",
        ca = running.ca_pem_path.display(),
        url = running.base_url,
        cred = running.credentials_path.display()
    );
    println!(
        "  curl -s --cacert {} -H \"Authorization: Bearer $TOKEN\" '{}/services/data/v66.0/query?q=SELECT+Id,Name+FROM+Account+LIMIT+5'",
        running.ca_pem_path.display(),
        running.base_url
    );
    println!("Stop with Ctrl-C.");
    shutdown_signal().await;
    println!("Shutting down.");
    running.shutdown().await
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
