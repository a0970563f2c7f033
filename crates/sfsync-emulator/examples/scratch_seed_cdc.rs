//! SCRATCH (to be deleted): POST /admin/seed of N Accounts with no subscriber; CDC bus growth.
use std::time::Instant;

use serde_json::{json, Value};

fn rss_mb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let running =
        sfsync_emulator::start(sfsync_emulator::EmulatorConfig::ephemeral(dir.path())).await?;
    let pem = std::fs::read(&running.ca_pem_path)?;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .timeout(std::time::Duration::from_secs(3600))
        .build()?;
    let admin = running.credentials.admin_token.clone();
    let cdc = || async {
        let v: Value = client
            .get(format!("{}/admin/cdc", running.base_url))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (v["latest_replay_id"].clone(), v["events"].clone())
    };
    println!("before: cdc {:?}, RSS {} MB", cdc().await, rss_mb());
    let t = Instant::now();
    let r: Value = client
        .post(format!("{}/admin/seed", running.base_url))
        .bearer_auth(&admin)
        .json(&json!({"objects": {"Account": n}, "seed": 7}))
        .send()
        .await?
        .json()
        .await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "POST /admin/seed {n} Accounts: {r} in {secs:.2} s ({:.0} rec/s)",
        n as f64 / secs
    );
    println!("after: cdc {:?}, RSS {} MB", cdc().await, rss_mb());
    running.shutdown().await?;
    Ok(())
}
