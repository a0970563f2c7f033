//! `sfsync bench kafka`: the scale-out pipeline (issue 10) end to end — emulator commit →
//! Pub/Sub → `--role ingest` → Kafka topic → `--role apply` workers (a consumer group) →
//! Postgres curated rows — with 1 and 2 apply workers, each a real `sfsync run` child process.
//!
//! Needs a Kafka-protocol broker (`--brokers`) and a Postgres server (`--postgres-url`);
//! `scripts/bench-kafka` starts throwaway ones on loopback and runs this. Per worker count:
//! 1. backlog: N Cases (3–8 KB change events) committed before the processes start; the time
//!    until every one is applied is the end-to-end rate; CPU per event of the ingest process,
//!    the apply workers, the broker and Postgres (all processes named `tansu` / `postgres`);
//! 2. offered load at the design point (2,000 changes/s = 120,000 a minute): commit→curated
//!    latency p50/p99 (histogram upper bounds) and the consumer lag (changes ingested into the
//!    topic and not yet applied), sampled every 100 ms.
//!
//! The capacity model in the README is derived from these per-event costs. Tests never assert
//! on them.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use sfsync_emulator::load::{LoadConfig, LoadGenerator};
use sfsync_emulator::EmulatorConfig;
use sfsync_org::{ApiKind, CallContext};
use sfsync_pipeline::stats::{diff_counts, quantile, LATENCY_BUCKETS_MS};

use crate::bench_pipeline::{machine_busy_idle, proc_cpu_secs, spawn_role, write_config, Child};

#[derive(Debug, Clone)]
pub struct KafkaBenchOptions {
    pub brokers: String,
    pub postgres_url: String,
    pub backlog: usize,
    pub load_secs: u64,
    pub workers: Vec<usize>,
    pub partitions: u32,
    /// Offered load of phase 2, changes per second.
    pub rate: f64,
}

/// CPU seconds of every process whose command name is `name` (the broker, Postgres backends).
fn cpu_of_named(name: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == name)
                .unwrap_or(false)
        })
        .map(proc_cpu_secs)
        .sum()
}

struct Cpu {
    ingest: f64,
    apply: f64,
    broker: f64,
    postgres: f64,
    emulator: f64,
    machine: (u64, u64),
}

fn cpu_now(ingest: &Child, applies: &[Child]) -> Cpu {
    Cpu {
        ingest: proc_cpu_secs(ingest.pid()),
        apply: applies.iter().map(|a| proc_cpu_secs(a.pid())).sum(),
        broker: cpu_of_named("tansu"),
        postgres: cpu_of_named("postgres"),
        emulator: proc_cpu_secs(std::process::id()),
        machine: machine_busy_idle(),
    }
}

fn per_event(a: &Cpu, b: &Cpu, events: u64) -> serde_json::Value {
    let n = events.max(1) as f64;
    let us = |x: f64, y: f64| (y - x) * 1e6 / n;
    let busy = b.machine.0.saturating_sub(a.machine.0) as f64;
    let idle = b.machine.1.saturating_sub(a.machine.1) as f64;
    json!({
        "ingest_cpu_us_per_event": us(a.ingest, b.ingest),
        "apply_cpu_us_per_event": us(a.apply, b.apply),
        "broker_cpu_us_per_event": us(a.broker, b.broker),
        "postgres_cpu_us_per_event": us(a.postgres, b.postgres),
        "emulator_cpu_us_per_event": us(a.emulator, b.emulator),
        "machine_busy_percent": 100.0 * busy / (busy + idle).max(1.0),
    })
}

fn sum(children: &[Child], counter: &str) -> u64 {
    children.iter().map(|c| c.counter(counter)).sum()
}

fn latency(children: &[Child]) -> Vec<u64> {
    let mut total = vec![0u64; LATENCY_BUCKETS_MS.len() + 1];
    for c in children {
        for (t, v) in total.iter_mut().zip(c.latency_counts()) {
            *t += v;
        }
    }
    total
}

async fn one(workers: usize, opts: &KafkaBenchOptions) -> Result<serde_json::Value> {
    let name = format!(
        "{workers} apply worker{}",
        if workers == 1 { "" } else { "s" }
    );
    let dir = tempfile::tempdir()?;
    let running = sfsync_emulator::start(EmulatorConfig::ephemeral(dir.path().join("org"))).await?;
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
    let tag = format!("{}_{workers}", std::process::id());
    let schema = format!("bench_kafka_{tag}");
    drop(crate::run_cmd::connect_postgres(&opts.postgres_url, &schema).await?);
    let config = write_config(dir.path(), &running, "postgres", &schema)?;
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str(&format!(
        "\n[log]\nbackend = \"kafka\"\nbrokers = \"{}\"\ntopic = \"sfsync.bench.{tag}\"\n\
         partitions = {}\ngroup = \"bench-{tag}\"\n",
        opts.brokers, opts.partitions
    ));
    std::fs::write(&config, text)?;
    let url = Some(opts.postgres_url.as_str());
    let ingest = spawn_role(&config, &dir.path().join("ingest.json"), url, "ingest")?;
    let mut applies = Vec::new();
    for i in 0..workers {
        applies.push(spawn_role(
            &config,
            &dir.path().join(format!("apply-{i}.json")),
            url,
            "apply",
        )?);
    }
    let c0 = cpu_now(&ingest, &applies);
    let t0 = Instant::now();
    let mut ingested_at: Option<f64> = None;
    let limit = Instant::now() + Duration::from_secs(900);
    let mut done = false;
    while Instant::now() < limit {
        if ingested_at.is_none() && ingest.counter("ingested") >= backlog as u64 {
            ingested_at = Some(t0.elapsed().as_secs_f64());
        }
        if sum(&applies, "applied") >= backlog as u64 {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let c1 = cpu_now(&ingest, &applies);
    let applied = sum(&applies, "applied");
    let rate = applied as f64 / secs;
    let costs = per_event(&c0, &c1, applied);
    let per_worker: Vec<u64> = applies.iter().map(|a| a.counter("applied")).collect();
    println!(
        "[{name}] backlog: {applied} events applied in {secs:.2} s = {rate:.0} events/s end to end{} (per worker {per_worker:?}); ingest into Kafka done after {}",
        if done { "" } else { " — TIMED OUT" },
        ingested_at.map(|s| format!("{s:.2} s ({:.0} events/s)", backlog as f64 / s)).unwrap_or("-".into())
    );
    println!(
        "[{name}]   CPU µs/event: ingest {:.1}, apply (all workers) {:.1}, broker {:.1}, Postgres {:.1}, emulator {:.1}; machine busy {:.0} %",
        costs["ingest_cpu_us_per_event"].as_f64().unwrap_or(0.0),
        costs["apply_cpu_us_per_event"].as_f64().unwrap_or(0.0),
        costs["broker_cpu_us_per_event"].as_f64().unwrap_or(0.0),
        costs["postgres_cpu_us_per_event"].as_f64().unwrap_or(0.0),
        costs["emulator_cpu_us_per_event"].as_f64().unwrap_or(0.0),
        costs["machine_busy_percent"].as_f64().unwrap_or(0.0),
    );

    // Phase 2: the design point's rate.
    let before = latency(&applies);
    let applied0 = sum(&applies, "applied");
    let ingested0 = ingest.counter("ingested");
    let l0 = cpu_now(&ingest, &applies);
    let o = org.clone();
    let r = opts.rate;
    let load = tokio::task::spawn_blocking(move || {
        LoadGenerator::start(
            o,
            LoadConfig {
                changes_per_sec: r,
                burst_factor: 1.0,
                initial_records: 0,
                ..LoadConfig::default()
            },
        )
    })
    .await?
    .map_err(|e| anyhow::anyhow!("load: {e}"))?;
    let t = Instant::now();
    let mut max_lag = 0u64;
    let mut lag_samples = Vec::new();
    while t.elapsed() < Duration::from_secs(opts.load_secs) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let lag = ingest
            .counter("ingested")
            .saturating_sub(ingested0)
            .saturating_sub(sum(&applies, "processed").saturating_sub(applied0));
        max_lag = max_lag.max(lag);
        lag_samples.push(lag);
    }
    let made = load.stop();
    let offered_secs = t.elapsed().as_secs_f64();
    // The tail drains (bounded) so its latencies count.
    let drain_until = Instant::now() + Duration::from_secs(120);
    let mut drained = false;
    let mut last = (u64::MAX, Instant::now());
    while Instant::now() < drain_until {
        let ing = ingest.counter("ingested");
        let processed = sum(&applies, "processed");
        if ing != last.0 {
            last = (ing, Instant::now());
        } else if processed >= ing && last.1.elapsed() >= Duration::from_secs(1) {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let l1 = cpu_now(&ingest, &applies);
    let applied_n = sum(&applies, "applied") - applied0;
    let counts = diff_counts(&latency(&applies), &before);
    let p50 = quantile(&counts, 0.5);
    let p99 = quantile(&counts, 0.99);
    lag_samples.sort_unstable();
    let lag_p50 = lag_samples.get(lag_samples.len() / 2).copied().unwrap_or(0);
    let load_costs = per_event(&l0, &l1, applied_n);
    println!(
        "[{name}] offered {:.0}/s: emulator committed {:.0} changes/s; latency p50 ≤ {} ms, p99 ≤ {} ms; consumer lag median {lag_p50}, max {max_lag} changes{}",
        opts.rate,
        made.changes as f64 / offered_secs,
        p50.map(|v| v.to_string()).unwrap_or("-".into()),
        p99.map(|v| v.to_string()).unwrap_or("-".into()),
        if drained { "" } else { " — DID NOT DRAIN" }
    );
    for a in applies {
        a.stop().await?;
    }
    ingest.stop().await?;
    running.shutdown().await?;
    Ok(json!({
        "apply_workers": workers,
        "backlog_events": applied,
        "backlog_completed": done,
        "end_to_end_events_per_sec": rate,
        "ingest_done_secs": ingested_at,
        "applied_per_worker": per_worker,
        "backlog_costs": costs,
        "offered_load": {
            "offered_per_sec": opts.rate,
            "committed_per_sec": made.changes as f64 / offered_secs,
            "drained": drained,
            "latency_p50_ms_upper": p50,
            "latency_p99_ms_upper": p99,
            "latency_bucket_upper_ms": LATENCY_BUCKETS_MS,
            "latency_bucket_counts": counts,
            "consumer_lag_median_changes": lag_p50,
            "consumer_lag_max_changes": max_lag,
            "costs": load_costs,
        },
    }))
}

pub async fn run(opts: KafkaBenchOptions) -> Result<serde_json::Value> {
    anyhow::ensure!(!opts.workers.is_empty(), "--workers names no worker count");
    let mut runs = Vec::new();
    for w in &opts.workers {
        runs.push(
            one(*w, &opts)
                .await
                .with_context(|| format!("the run with {w} apply worker(s)"))?,
        );
    }
    println!();
    println!(
        "{:<8} {:>12} {:>12} {:>12} {:>12} {:>12} {:>10} {:>12}",
        "workers", "events/s", "ingest µs", "apply µs", "broker µs", "pg µs", "p99 (ms)", "max lag"
    );
    for r in &runs {
        let c = &r["backlog_costs"];
        println!(
            "{:<8} {:>12.0} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>10} {:>12}",
            r["apply_workers"],
            r["end_to_end_events_per_sec"].as_f64().unwrap_or(0.0),
            c["ingest_cpu_us_per_event"].as_f64().unwrap_or(0.0),
            c["apply_cpu_us_per_event"].as_f64().unwrap_or(0.0),
            c["broker_cpu_us_per_event"].as_f64().unwrap_or(0.0),
            c["postgres_cpu_us_per_event"].as_f64().unwrap_or(0.0),
            r["offered_load"]["latency_p99_ms_upper"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or("-".into()),
            r["offered_load"]["consumer_lag_max_changes"],
        );
    }
    println!(
        "(µs = CPU per event on this machine; every process shares its {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    Ok(json!({
        "suite": "kafka",
        "partitions": opts.partitions,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "runs": runs,
    }))
}
