//! Emulator configuration: listeners, data directory, token lifetime, limits and CDC settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::cdc::CdcConfig;

/// How the emulator is started.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// HTTP(S) listener (REST, SOAP, OAuth, Bulk, admin). Port 0 picks a free port.
    pub http_addr: SocketAddr,
    /// Pub/Sub gRPC listener.
    pub grpc_addr: SocketAddr,
    /// Where the CA, certificates, credentials and (with `persist`) the org state live.
    pub data_dir: PathBuf,
    /// Persist org state in `data_dir` across restarts (otherwise the org is in memory).
    pub persist: bool,
    /// Serve plain HTTP instead of HTTPS (refused unless every listener is loopback).
    pub plain_http: bool,
    /// Sessions expire after this much inactivity (Salesforce default: 2 hours).
    pub session_timeout: Duration,
    /// Custom-object schema file (TOML/JSON) added to the standard objects; `None` = the demo's
    /// public-sector objects.
    pub schema_file: Option<PathBuf>,
    pub limits: LimitsConfig,
    /// Fault injection from the start (the admin API can change it later).
    pub faults: crate::faults::FaultConfig,
    /// Change Data Capture and Pub/Sub settings.
    pub cdc: CdcConfig,
}

impl EmulatorConfig {
    /// Loopback defaults with the given data directory: HTTPS on 127.0.0.1:8443, gRPC on 7443.
    pub fn new(data_dir: impl Into<PathBuf>) -> EmulatorConfig {
        EmulatorConfig {
            http_addr: "127.0.0.1:8443".parse().expect("static address"),
            grpc_addr: "127.0.0.1:7443".parse().expect("static address"),
            data_dir: data_dir.into(),
            persist: false,
            plain_http: false,
            session_timeout: Duration::from_secs(2 * 3600),
            schema_file: None,
            limits: LimitsConfig::default(),
            faults: crate::faults::FaultConfig::default(),
            cdc: CdcConfig::default(),
        }
    }

    /// Same, but on free ports (for tests).
    pub fn ephemeral(data_dir: impl Into<PathBuf>) -> EmulatorConfig {
        let mut c = EmulatorConfig::new(data_dir);
        c.http_addr = "127.0.0.1:0".parse().expect("static address");
        c.grpc_addr = "127.0.0.1:0".parse().expect("static address");
        c
    }
}

/// Org allocations. Defaults are a realistic Enterprise Edition org with 200 Salesforce licences.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Rolling-24 h API request allocation (Enterprise: 100,000 + 1,000 per licence).
    pub daily_api_requests: u64,
    /// Concurrent long-running (≥ 20 s) requests.
    pub concurrent_long_running: u64,
    /// Bulk batches per rolling 24 h (shared by Bulk API and Bulk API 2.0).
    pub daily_bulk_batches: u64,
    /// Bulk API 2.0 query jobs per rolling 24 h.
    pub daily_bulk_query_jobs: u64,
    /// Bulk ingest records per rolling 24 h.
    pub daily_bulk_ingest_records: u64,
    /// A request counts as long-running after this long.
    pub long_running_threshold: Duration,
    /// Length of the rolling window of the API request allocation (24 h; shorter in tests so
    /// usage ages out and the allocation refills).
    pub api_window: Duration,
    /// Platform events that may be published per rolling hour (`HourlyPublishedPlatformEvents`;
    /// Salesforce: 250,000 for Enterprise/Unlimited high-volume events). A publish beyond it
    /// fails per event with `LIMIT_EXCEEDED`.
    pub hourly_published_platform_events: u64,
    /// Length of the rolling window of the publish allocation (1 h; shorter in tests).
    pub publish_window: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            daily_api_requests: 300_000,
            concurrent_long_running: 25,
            daily_bulk_batches: 15_000,
            daily_bulk_query_jobs: 10_000,
            daily_bulk_ingest_records: 150_000_000,
            long_running_threshold: Duration::from_secs(20),
            api_window: Duration::from_secs(24 * 3600),
            hourly_published_platform_events: 250_000,
            publish_window: Duration::from_secs(3600),
        }
    }
}
