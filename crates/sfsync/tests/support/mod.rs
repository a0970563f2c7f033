//! Helpers shared by the end-to-end tests that drive `sfsync` as a child process.

#![allow(dead_code)]

pub mod accounts;
pub mod api;
pub mod moto;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test never leaves an
/// orphan `sfsync run` behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// SIGTERM, then waits for the clean stop (exit status 0).
pub fn stop(mut child: KillOnDrop) {
    let pid = child.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "sfsync run stopped with {status}");
}

/// Polls `check` (the problems still seen; empty = true) until it holds, or panics after
/// `within` with the first 20 problems.
pub async fn wait_for<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let deadline = Instant::now() + within;
    loop {
        let problems = check().await;
        if problems.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let mut p = problems;
            p.truncate(20);
            panic!("{what}: still not true after {within:?}:\n{}", p.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Starts the emulator with its org under `dir` (CA and credentials there too) and a client
/// of it (JWT bearer, trusting the emulator's CA).
pub async fn emulator(
    dir: &std::path::Path,
) -> (
    sfsync_emulator::RunningEmulator,
    sfsync_salesforce::SalesforceClient,
) {
    use sfsync_salesforce::{AuthFlow, ClientConfig, CredentialsFile, SalesforceClient};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let emu = sfsync_emulator::start(sfsync_emulator::EmulatorConfig::ephemeral(dir.join("org")))
        .await
        .expect("emulator starts");
    let creds = CredentialsFile::load(&emu.credentials_path).unwrap();
    let client = SalesforceClient::new(
        ClientConfig::new(emu.base_url.clone(), Some(emu.ca_pem_path.clone())),
        creds.credentials(AuthFlow::JwtBearer).unwrap(),
    )
    .unwrap();
    (emu, client)
}

/// Differences between the org's live records of `m`'s object (read over SOQL) and the
/// warehouse's live rows, column by column.
pub async fn live_diff(
    client: &sfsync_salesforce::SalesforceClient,
    m: &sfsync_pipeline::ObjectMapping,
    store: &dyn sfsync_store::Warehouse,
) -> Vec<String> {
    use std::collections::BTreeMap;
    let object = m.object();
    let mut fields = m.soql_fields.clone();
    fields.push("SystemModstamp".into());
    let soql = format!("SELECT {} FROM {object}", fields.join(", "));
    let records = client
        .query_all_pages(&soql, Default::default())
        .await
        .unwrap();
    let mut expected = BTreeMap::new();
    for r in &records {
        let c = sfsync_pipeline::normalize::from_record(m, r).unwrap();
        expected.insert(c.id.clone(), c);
    }
    let rows: BTreeMap<String, sfsync_store::CurrentRow> = store
        .read_current(object)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| !r.deleted)
        .map(|r| (r.id.clone(), r))
        .collect();
    let mut problems = Vec::new();
    for id in rows.keys() {
        if !expected.contains_key(id) {
            problems.push(format!("{object} {id} is live in the warehouse only"));
        }
    }
    for (id, exp) in &expected {
        let Some(row) = rows.get(id) else {
            problems.push(format!("{object} {id} is missing from the warehouse"));
            continue;
        };
        for (c, v) in &exp.values {
            let col = &m.model.columns[*c].name;
            let got = row
                .values
                .get(col)
                .cloned()
                .unwrap_or(sfsync_store::Value::Null);
            if &got != v {
                problems.push(format!("{object} {id} {col}: warehouse {got:?}, org {v:?}"));
            }
        }
    }
    problems
}

/// `sfsync_…` metric names in a text (histogram series reduced to the histogram's name).
pub fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("sfsync_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if boundary {
            let name = &text[start..end];
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(name.to_string());
        }
        i = end;
    }
    out
}

/// The value of the sample `series` (name with its labels exactly as exposed, e.g.
/// `sfsync_flow_mode{channel="/poll/Account",object="Account"}`) in a Prometheus text
/// exposition; `None` when absent.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The flow of `/api/v1/flows` or `/api/v1/map` (`answer`) with this pattern, object and (when
/// given) direction; panics with the answer when there is none.
#[allow(dead_code)]
pub fn flow(
    answer: &serde_json::Value,
    pattern: &str,
    direction: Option<&str>,
    object: &str,
) -> serde_json::Value {
    answer["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| {
            f["pattern"] == pattern
                && f["object"] == object
                && direction.is_none_or(|d| f["direction"] == d)
        })
        .cloned()
        .unwrap_or_else(|| panic!("no {pattern} flow of {object}: {answer}"))
}
