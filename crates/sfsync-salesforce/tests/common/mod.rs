//! Shared harness of the client-against-emulator suites (`emulator_endpoints.rs`,
//! `emulator_bad_input.rs`): a real emulator on free ports over HTTPS, clients built from its
//! credentials file, and direct org access for seeding and checking what was committed.
#![allow(dead_code)]

use std::time::Duration;

use sfsync_org::{ApiKind, CallContext, DmlOp};
use sfsync_salesforce::bulk::PollPolicy;
use sfsync_salesforce::{
    AuthFlow, BulkConfig, ClientConfig, CredentialsFile, Record, RetryPolicy, SalesforceClient,
};

pub struct Emu {
    pub running: sfsync_emulator::RunningEmulator,
    _dir: tempfile::TempDir,
}

pub async fn emulator() -> Emu {
    let dir = tempfile::tempdir().unwrap();
    let running = sfsync_emulator::start(sfsync_emulator::EmulatorConfig::ephemeral(dir.path()))
        .await
        .expect("emulator starts");
    Emu { running, _dir: dir }
}

/// Fast retries so fault tests stay quick.
pub fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff_ms: 5,
        max_backoff_ms: 20,
        multiplier: 2.0,
        jitter: false,
    }
}

pub fn config(emu: &Emu) -> ClientConfig {
    let mut config =
        ClientConfig::new(&emu.running.base_url, Some(emu.running.ca_pem_path.clone()));
    config.call_options_client = Some("sfsync-it".into());
    config.retry = fast_retry(4);
    config
}

pub fn client_with(emu: &Emu, flow: AuthFlow, config: ClientConfig) -> SalesforceClient {
    let file = CredentialsFile::load(&emu.running.credentials_path).unwrap();
    SalesforceClient::new(config, file.credentials(flow).unwrap()).unwrap()
}

pub fn client(emu: &Emu, flow: AuthFlow) -> SalesforceClient {
    client_with(emu, flow, config(emu))
}

/// Bulk settings with fast polling.
pub fn bulk_config() -> BulkConfig {
    BulkConfig {
        poll: PollPolicy {
            initial_interval_ms: 10,
            max_interval_ms: 100,
            multiplier: 2.0,
            timeout_secs: 30,
        },
        ..BulkConfig::default()
    }
}

pub fn rec(v: serde_json::Value) -> Record {
    v.as_object().unwrap().clone()
}

/// Inserts records straight into the org (admin context, one transaction); returns the ids.
pub fn seed(emu: &Emu, object: &str, records: Vec<serde_json::Value>) -> Vec<String> {
    let ctx = CallContext {
        user_id: emu.running.state.auth.admin().user_id,
        api: ApiKind::Admin,
        api_version: "66.0".into(),
        client: None,
    };
    let ops = records
        .into_iter()
        .map(|r| DmlOp::Insert {
            object: object.to_string(),
            fields: r.as_object().unwrap().clone(),
        })
        .collect();
    emu.running
        .org()
        .execute(&ctx, ops, true)
        .into_iter()
        .map(|r| r.expect("seed insert").id().as_str().to_string())
        .collect()
}

/// Rows of a SOQL query run directly against the org (the truth, bypassing the API).
pub fn org_rows(emu: &Emu, soql: &str, all: bool) -> Vec<Vec<serde_json::Value>> {
    emu.running
        .org()
        .query(soql, all)
        .unwrap_or_else(|e| panic!("{soql}: {e}"))
        .rows
}

/// `SELECT COUNT() …` run directly against the org.
pub fn org_count(emu: &Emu, soql: &str, all: bool) -> usize {
    emu.running
        .org()
        .query(soql, all)
        .unwrap_or_else(|e| panic!("{soql}: {e}"))
        .total_size
}

/// API requests counted by the emulator so far.
pub fn server_used(emu: &Emu) -> u64 {
    emu.running.state.limits.api_usage().0
}

/// Polls `cond` every 5 ms for up to `secs` seconds.
pub async fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}
