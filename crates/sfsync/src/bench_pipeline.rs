//! `sfsync bench pipeline`: end-to-end figures of the exactly-once pipeline — emulator commit →
//! Pub/Sub → raw change log → curated row — on SQLite (and Postgres with `--postgres-url`).
//!
//! The emulator runs in this process; the pipeline runs as a real `sfsync run` child process with
//! a config file a user would write (six objects, Case history, Contact PII sealed), so its CPU
//! and peak RSS are its own (from `/proc/<pid>`), and its counters come from `--stats-file`.
//! Both share the machine's cores. Phases per backend:
//! 1. backlog: N Cases (3–8 KB change events) committed before the pipeline starts; the time to
//!    apply them all (start-up included) is the sustained end-to-end rate, with the pipeline's
//!    CPU µs per event and a wall-time breakdown per stage;
//! 2. offered load at 2,000 and 20,000 changes/s for a fixed time: commit→curated latency
//!    p50/p99 (histogram buckets: an upper bound, not an exact figure) and CPU per event.
//!
//! Tests never assert on these; the floors are printed beside the figures.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use sfsync_emulator::load::{LoadConfig, LoadGenerator};
use sfsync_emulator::EmulatorConfig;
use sfsync_org::{ApiKind, CallContext};
use sfsync_pipeline::stats::{diff_counts, quantile, LATENCY_BUCKETS_MS};

pub const SUSTAINED_FLOOR_PER_SEC: f64 = 20_000.0;
pub const P99_FLOOR_MS: u64 = 1_000;
pub const RSS_FLOOR_MB: f64 = 300.0;

#[derive(Debug, Clone)]
pub struct PipelineBenchOptions {
    pub backlog: usize,
    pub load_secs: u64,
    pub postgres_url: Option<String>,
}

/// CPU seconds (user + system) of process `pid` so far, from `/proc/<pid>/stat`.
pub(crate) fn proc_cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { sysconf(2) } as f64; // _SC_CLK_TCK
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

extern "C" {
    fn sysconf(name: i32) -> i64;
}

/// Bytes process `pid` has passed to write(2)-family calls so far (`wchar` of `/proc/<pid>/io`).
fn proc_write_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("wchar:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Jiffies all cores spent busy and idle (iowait counts as idle), from the first line of
/// `/proc/stat`.
pub(crate) fn machine_busy_idle() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    let total: u64 = f.iter().take(8).sum();
    (total.saturating_sub(idle), idle)
}

/// Peak resident set (MB) of process `pid`.
pub(crate) fn proc_peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The pipeline process (`sfsync run`) and the stats file it rewrites.
pub(crate) struct Child {
    pub(crate) process: tokio::process::Child,
    stats_file: PathBuf,
}

impl Child {
    pub(crate) fn pid(&self) -> u32 {
        self.process.id().unwrap_or(0)
    }

    pub(crate) fn stats(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(&self.stats_file).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub(crate) fn counter(&self, name: &str) -> u64 {
        self.stats().and_then(|s| s[name].as_u64()).unwrap_or(0)
    }

    pub(crate) fn latency_counts(&self) -> Vec<u64> {
        self.stats()
            .and_then(|s| {
                s["latency_counts"]
                    .as_array()
                    .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(0)).collect())
            })
            .unwrap_or_else(|| vec![0; LATENCY_BUCKETS_MS.len() + 1])
    }

    async fn wait_applied(&mut self, target: u64, limit: Duration) -> Result<bool> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Some(status) = self.process.try_wait()? {
                anyhow::bail!("the pipeline process exited early: {status}");
            }
            if self.counter("applied") >= target {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(false)
    }

    /// Waits until everything the pipeline ingested is applied and nothing new arrived for a
    /// second (the load generator also touches objects and fields the pipeline does not
    /// count, so its change count is not a target).
    async fn wait_drained(&mut self, limit: Duration) -> Result<bool> {
        let until = Instant::now() + limit;
        let mut last = (u64::MAX, Instant::now());
        while Instant::now() < until {
            if let Some(status) = self.process.try_wait()? {
                anyhow::bail!("the pipeline process exited early: {status}");
            }
            let ingested = self.counter("ingested");
            let processed = self.counter("processed");
            if ingested != last.0 {
                last = (ingested, Instant::now());
            } else if processed >= ingested && last.1.elapsed() >= Duration::from_secs(1) {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(false)
    }

    pub(crate) async fn stop(mut self) -> Result<()> {
        let pid = self.pid() as i32;
        // SAFETY: kill with a pid we spawned.
        unsafe { kill(pid, 15) };
        match tokio::time::timeout(Duration::from_secs(60), self.process.wait()).await {
            Ok(status) => {
                let status = status?;
                anyhow::ensure!(status.success(), "sfsync run stopped with {status}");
            }
            Err(_) => {
                let _ = self.process.kill().await;
                anyhow::bail!("sfsync run did not stop within 60 s of SIGTERM");
            }
        }
        Ok(())
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// The config a user of this workload would write: the six demo objects, Case history on the
/// owner, Contact PII sealed.
pub(crate) fn write_config(
    dir: &Path,
    running: &sfsync_emulator::RunningEmulator,
    backend: &str,
    schema: &str,
) -> Result<PathBuf> {
    let key = dir.join("pii.key");
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&key, hex)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    let warehouse = match backend {
        "sqlite" => format!(
            "type = \"sqlite\"\npath = \"{}\"\n",
            dir.join("warehouse.db").display()
        ),
        _ => format!(
            "type = \"postgres\"\nurl = {{ env = \"SFSYNC_BENCH_POSTGRES_URL\" }}\nschema = \"{schema}\"\n"
        ),
    };
    let text = format!(
        r#"[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"
client_id_header = "sfsync"

[[objects]]
name = "Case"
history = {{ fields = ["OwnerId", "Status"] }}

[[objects]]
name = "Service_Request__c"

[[objects]]
name = "Contact"
pii_fields = ["Email", "Phone", "Birthdate"]

[[objects]]
name = "Account"

[[objects]]
name = "Opportunity"

[[objects]]
name = "Payment__c"

[warehouse]
{warehouse}
[pii]
key_file = "{key}"
key_id = "bench-1"

[pipeline]
batch_max_records = 1000
batch_max_wait_ms = 20
# The stream alone (backfills are benchmarked on their own).
backfill_new_objects = false
"#,
        creds = running.credentials_path.display(),
        ca = running.ca_pem_path.display(),
        key = key.display(),
    );
    let path = dir.join(format!("{backend}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

pub(crate) fn spawn_pipeline(
    config: &Path,
    stats_file: &Path,
    postgres_url: Option<&str>,
) -> Result<Child> {
    spawn_role(config, stats_file, postgres_url, "all")
}

/// `sfsync run --role <role>` of `config`, counters in `stats_file`.
pub(crate) fn spawn_role(
    config: &Path,
    stats_file: &Path,
    postgres_url: Option<&str>,
    role: &str,
) -> Result<Child> {
    let exe = std::env::current_exe().context("locating the sfsync binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("run")
        .args(["--role", role])
        .arg("--config")
        .arg(config)
        .args([
            "--progress-secs",
            "0",
            "--start",
            "earliest",
            "--stats-file",
        ])
        .arg(stats_file)
        .env(
            "SFSYNC_LOG",
            std::env::var("SFSYNC_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(url) = postgres_url {
        cmd.env("SFSYNC_BENCH_POSTGRES_URL", url);
    }
    let process = cmd.spawn().context("spawning sfsync run")?;
    Ok(Child {
        process,
        stats_file: stats_file.to_path_buf(),
    })
}

async fn one_backend(name: &str, opts: &PipelineBenchOptions) -> Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let ec = EmulatorConfig::ephemeral(dir.path().join("org"));
    let running = sfsync_emulator::start(ec).await?;
    let org = running.org().clone();
    let ctx = CallContext {
        user_id: org.admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: Some("bench".into()),
    };
    println!("[{name}] committing a backlog of {} Cases…", opts.backlog);
    let backlog = opts.backlog;
    let o2 = org.clone();
    tokio::task::spawn_blocking(move || o2.seed(&ctx, "Case", backlog, 7))
        .await?
        .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;

    let schema = format!("bench_{}", std::process::id());
    if name == "postgres" {
        let url = opts.postgres_url.as_deref().context("postgres url")?;
        // A fresh schema each run.
        let pg = crate::run_cmd::connect_postgres(url, &schema).await?;
        drop(pg);
    }
    let config = write_config(dir.path(), &running, name, &schema)?;
    let stats_file = dir.path().join("stats.json");
    let mut child = spawn_pipeline(&config, &stats_file, opts.postgres_url.as_deref())?;
    let pid = child.pid();
    let cpu0 = proc_cpu_secs(pid);
    let emu_cpu0 = proc_cpu_secs(std::process::id());
    let machine0 = machine_busy_idle();
    let written0 = proc_write_bytes(pid);
    let t0 = Instant::now();
    let done = child
        .wait_applied(backlog as u64, Duration::from_secs(900))
        .await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = proc_cpu_secs(pid) - cpu0;
    let emu_cpu = proc_cpu_secs(std::process::id()) - emu_cpu0;
    let machine1 = machine_busy_idle();
    let machine_busy = {
        let busy = machine1.0.saturating_sub(machine0.0) as f64;
        let idle = machine1.1.saturating_sub(machine0.1) as f64;
        100.0 * busy / (busy + idle).max(1.0)
    };
    let written_per_event =
        proc_write_bytes(pid).saturating_sub(written0) as f64 / backlog.max(1) as f64;
    let applied = child.counter("applied");
    let sustained = applied as f64 / secs;
    let us_per_event = cpu * 1e6 / applied.max(1) as f64;
    let emu_us_per_event = emu_cpu * 1e6 / applied.max(1) as f64;
    println!(
        "[{name}] backlog: {applied} events applied in {secs:.2} s = {sustained:.0} events/s end to end; pipeline CPU {us_per_event:.1} µs/event, {written_per_event:.0} bytes written/event{}",
        if done { "" } else { " — TIMED OUT" }
    );
    println!(
        "[{name}]   emulator (this process) CPU {emu_us_per_event:.1} µs/event; machine busy {machine_busy:.0} % of all cores"
    );
    let stages: serde_json::Map<String, serde_json::Value> = child
        .stats()
        .and_then(|s| s["stage_ns"].as_object().cloned())
        .unwrap_or_default()
        .into_iter()
        .map(|(n, ns)| {
            let us = ns.as_f64().unwrap_or(0.0) / 1e3 / applied.max(1) as f64;
            println!("[{name}]   {n:<14} {us:>8.1} µs/event (wall, cumulative)");
            (n, json!(us))
        })
        .collect();

    let mut loads = Vec::new();
    for rate in [2_000.0, 20_000.0] {
        let before = child.latency_counts();
        let applied0 = child.counter("applied");
        let cpu_before = proc_cpu_secs(pid);
        let emu_before = proc_cpu_secs(std::process::id());
        let machine_before = machine_busy_idle();
        let o = org.clone();
        let load = tokio::task::spawn_blocking(move || {
            LoadGenerator::start(
                o,
                LoadConfig {
                    changes_per_sec: rate,
                    burst_factor: 1.0,
                    initial_records: 0,
                    ..LoadConfig::default()
                },
            )
        })
        .await?
        .map_err(|e| anyhow::anyhow!("load: {e}"))?;
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(opts.load_secs)).await;
        let made = load.stop();
        let offered_secs = t.elapsed().as_secs_f64();
        // What the pipeline applied while the load was offered (the rate it kept up with),
        // before the tail drains.
        let applied_in_window = child.counter("applied").saturating_sub(applied0);
        let emu_window = proc_cpu_secs(std::process::id()) - emu_before;
        let machine_after = machine_busy_idle();
        let busy_window = {
            let busy = machine_after.0.saturating_sub(machine_before.0) as f64;
            let idle = machine_after.1.saturating_sub(machine_before.1) as f64;
            100.0 * busy / (busy + idle).max(1.0)
        };
        let t_drain = Instant::now();
        // Let the tail drain (bounded) so its latencies are counted.
        let drained = child.wait_drained(Duration::from_secs(120)).await?;
        let drain_secs = t_drain.elapsed().as_secs_f64();
        let applied_n = child.counter("applied") - applied0;
        let cpu_load = proc_cpu_secs(pid) - cpu_before;
        let counts = diff_counts(&child.latency_counts(), &before);
        let p50 = quantile(&counts, 0.5);
        let p99 = quantile(&counts, 0.99);
        let achieved = made.changes as f64 / offered_secs;
        let kept_up = applied_in_window as f64 / offered_secs;
        let us = cpu_load * 1e6 / applied_n.max(1) as f64;
        println!(
            "[{name}] offered {rate:.0}/s: emulator committed {achieved:.0} changes/s; latency p50 ≤ {} ms, p99 ≤ {} ms; pipeline CPU {us:.1} µs/event{}",
            p50.map(|v| v.to_string()).unwrap_or("-".into()),
            p99.map(|v| v.to_string()).unwrap_or("-".into()),
            if drained { "" } else { " — DID NOT DRAIN" }
        );
        // Applied counts the configured objects' record changes only, so it can sit a little
        // below what the emulator committed even when the pipeline keeps up.
        let emu_us = emu_window * 1e6 / (made.changes as f64).max(1.0);
        println!(
            "[{name}]   applied {kept_up:.0} changes/s while offered, then {drain_secs:.1} s to drain the rest; emulator + load generator (this process) CPU {emu_us:.1} µs/change; machine busy {busy_window:.0} % of all cores while offered"
        );
        loads.push(json!({
            "offered_per_sec": rate,
            "committed_per_sec": achieved,
            "changes": made.changes,
            "drained": drained,
            "latency_p50_ms_upper": p50,
            "latency_p99_ms_upper": p99,
            "latency_bucket_upper_ms": LATENCY_BUCKETS_MS,
            "latency_bucket_counts": counts,
            "pipeline_cpu_us_per_event": us,
            "applied_per_sec_while_offered": kept_up,
            "drain_secs": drain_secs,
            "emulator_cpu_us_per_change": emu_us,
            "machine_busy_percent_while_offered": busy_window,
        }));
    }
    let rss = proc_peak_rss_mb(pid);
    println!("[{name}] pipeline peak RSS {rss:.1} MB");
    child.stop().await?;
    running.shutdown().await?;
    Ok(json!({
        "backend": name,
        "backlog_events": applied,
        "backlog_completed": done,
        "sustained_events_per_sec": sustained,
        "pipeline_cpu_us_per_event": us_per_event,
        "pipeline_bytes_written_per_event": written_per_event,
        "emulator_cpu_us_per_event": emu_us_per_event,
        "machine_busy_percent": machine_busy,
        "stage_wall_us_per_event": stages,
        "offered_load": loads,
        "pipeline_peak_rss_mb": rss,
    }))
}

pub async fn run(opts: PipelineBenchOptions) -> Result<serde_json::Value> {
    let mut backends = vec![one_backend("sqlite", &opts).await?];
    if opts.postgres_url.is_some() {
        backends.push(one_backend("postgres", &opts).await?);
    }
    println!();
    println!(
        "{:<10} {:>16} {:>12} {:>14} {:>14} {:>10}",
        "backend", "events/s", "µs CPU/ev", "p99@2k (ms)", "p99@20k (ms)", "RSS (MB)"
    );
    for b in &backends {
        let p99 = |i: usize| {
            b["offered_load"][i]["latency_p99_ms_upper"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or("-".into())
        };
        println!(
            "{:<10} {:>16.0} {:>12.1} {:>14} {:>14} {:>10.1}",
            b["backend"].as_str().unwrap_or("?"),
            b["sustained_events_per_sec"].as_f64().unwrap_or(0.0),
            b["pipeline_cpu_us_per_event"].as_f64().unwrap_or(0.0),
            p99(0),
            p99(1),
            b["pipeline_peak_rss_mb"].as_f64().unwrap_or(0.0),
        );
    }
    println!(
        "floors: ≥ {SUSTAINED_FLOOR_PER_SEC} events/s on SQLite; p99 ≤ {P99_FLOOR_MS} ms at 2,000/s; pipeline RSS ≤ {RSS_FLOOR_MB} MB"
    );
    Ok(json!({
        "suite": "pipeline",
        "backends": backends,
        "floors": {
            "sustained_events_per_sec_sqlite": SUSTAINED_FLOOR_PER_SEC,
            "p99_ms_at_2000": P99_FLOOR_MS,
            "rss_mb": RSS_FLOOR_MB,
        }
    }))
}
