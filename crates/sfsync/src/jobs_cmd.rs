//! `sfsync backfill`, `sfsync reconcile` and `sfsync jobs`: the operator's side of sync jobs.
//!
//! A backfill or reconciliation is recorded as a job in the warehouse. When `sfsync run` is
//! running it carries the job out between streamed batches (it holds the single-applier lock);
//! otherwise this command takes the lock and carries it out itself, through the same apply path.
//! Either way the command shows a progress bar until the job ends (unless `--no-wait`), and the
//! job is resumable: a crash or Ctrl-C leaves it `running` at its last committed page position,
//! and the next `sfsync run` or `sfsync backfill` continues it without re-reading finished pages.
//! Exit codes: 0 every job succeeded, 1 a job failed, 2 the config or warehouse cannot be used.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use sfsync_pipeline::{Applier, PipelineStats};
use sfsync_store::{
    NewSyncJob, SyncJob, SyncJobFilter, SyncJobKind, SyncJobPatch, SyncJobStatus, Warehouse,
};

use crate::admin_cmd::{failed, operator, usage, Failure};

#[derive(Debug, Args)]
pub struct BackfillArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Object API names (configured objects).
    #[arg(required = true)]
    pub objects: Vec<String>,
    /// Only records modified at or after this time: RFC 3339 (`2026-11-01T00:00:00Z`) or an age
    /// (`72h`, `30m`, `7d`). A window also loads deletes (queryAll).
    #[arg(long)]
    pub since: Option<String>,
    /// Record the job and return (the running `sfsync run` carries it out).
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Object API names; every configured object when none is given.
    pub objects: Vec<String>,
    /// Compare only records modified at or after this time (RFC 3339 or an age like `24h`).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(subcommand)]
    pub command: JobsCommand,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Sync jobs, newest first.
    List {
        #[arg(long)]
        config: PathBuf,
        /// `open` (pending or running), `all` (the default), or one status.
        #[arg(long, default_value = "all")]
        status: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One job in full, with its report.
    Show {
        #[arg(long)]
        config: PathBuf,
        id: i64,
    },
    /// Cancel pending or running jobs (a running one stops at its next step).
    Cancel {
        #[arg(long)]
        config: PathBuf,
        #[arg(required = true)]
        ids: Vec<i64>,
    },
}

/// `--since`: RFC 3339, or an age (`90s`, `30m`, `72h`, `7d`) before now.
pub fn parse_since(s: &str, now_ms: i64) -> anyhow::Result<i64> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| anyhow!("--since '{s}': not RFC 3339 and not an age like 72h"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(anyhow!("--since '{s}': the unit must be s, m, h or d")),
    };
    Ok(now_ms - n * secs * 1000)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The configured object a name means (case-insensitive), by its configured spelling.
fn configured(config: &crate::config::validate::ValidConfig, name: &str) -> anyhow::Result<String> {
    config
        .objects
        .iter()
        .find(|o| o.name.eq_ignore_ascii_case(name))
        .map(|o| o.name.clone())
        .ok_or_else(|| {
            anyhow!(
                "object '{name}' is not in the config (configured: {})",
                config
                    .objects
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

pub async fn backfill(args: BackfillArgs) -> Result<i32, Failure> {
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, now_ms()))
        .transpose()
        .map_err(usage)?;
    request_and_follow(
        &args.config,
        SyncJobKind::Backfill,
        &args.objects,
        since,
        args.no_wait,
    )
    .await
}

pub async fn reconcile(args: ReconcileArgs) -> Result<i32, Failure> {
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, now_ms()))
        .transpose()
        .map_err(usage)?;
    request_and_follow(
        &args.config,
        SyncJobKind::Reconcile,
        &args.objects,
        since,
        args.no_wait,
    )
    .await
}

async fn request_and_follow(
    config_path: &std::path::Path,
    kind: SyncJobKind,
    objects: &[String],
    since: Option<i64>,
    no_wait: bool,
) -> Result<i32, Failure> {
    let (config, secrets) = crate::run_cmd::load(config_path).map_err(usage)?;
    let mut names = Vec::new();
    for o in objects {
        names.push(configured(&config, o).map_err(usage)?);
    }
    if names.is_empty() {
        names = crate::run_cmd::object_specs(&config)
            .into_iter()
            .map(|s| s.name)
            .collect();
    }
    let store = crate::run_cmd::open_store(&config, &secrets)
        .await
        .map_err(usage)?;
    let mut ids = Vec::new();
    for object in &names {
        let id = store
            .add_sync_job(&NewSyncJob {
                kind,
                object: object.clone(),
                reason: "requested by operator".into(),
                since_ms: since,
                until_ms: None,
                params: "{}".into(),
                requested_by: format!("operator:{}", operator()),
                resync_id: None,
            })
            .await
            .context("recording the job")
            .map_err(failed)?;
        eprintln!("{} #{id} of {object} requested.", kind.as_str());
        ids.push(id);
    }
    if no_wait {
        return Ok(0);
    }
    // Whoever holds the single-applier lock carries the jobs out: `sfsync run`, or this process.
    let mut applier = match store.acquire_apply_lock().await {
        Ok(()) => {
            eprintln!("No `sfsync run` is running: carrying the job out here.");
            let client = crate::run_cmd::rest_client(&config, &secrets).map_err(usage)?;
            let mut pc =
                crate::run_cmd::pipeline_config(&config, crate::run_cmd::StartAt::Earliest);
            // This process exits when the operator's jobs end: it schedules no formula
            // refreshes of its own (`sfsync run` does).
            pc.apply.jobs.formula_refresh_every = None;
            let (mappings, _) = sfsync_pipeline::prepare_models(&*store, &client, &pc.objects)
                .await
                .context("building the curated models")
                .map_err(failed)?;
            let bulk = client.bulk();
            Some(
                Applier::new(
                    store.clone(),
                    Arc::new(client),
                    mappings,
                    pc.apply,
                    Arc::new(PipelineStats::default()),
                )
                .with_bulk(bulk),
            )
        }
        Err(_) => {
            eprintln!("`sfsync run` is running: it carries the job out; following its progress.");
            None
        }
    };
    let mut bar = Bar::new();
    let mut last_show = Instant::now() - Duration::from_secs(10);
    loop {
        if let Some(a) = applier.as_mut() {
            match a.step().await {
                Ok(0) => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(_) => {}
                Err(e) => {
                    eprintln!();
                    return Err(failed(anyhow!(
                        "applying: {} (the job resumes from its last committed position)",
                        sfsync_pipeline::error::chain(&e)
                    )));
                }
            }
        } else {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if last_show.elapsed() < Duration::from_millis(250) {
            continue;
        }
        last_show = Instant::now();
        let mut jobs = Vec::new();
        for id in &ids {
            if let Some(j) = store.sync_job(*id).await.map_err(|e| failed(e.into()))? {
                jobs.push(j);
            }
        }
        bar.show(&jobs);
        if jobs.iter().all(|j| !j.status.is_open()) {
            if let Some(a) = applier.as_mut() {
                // Repairs a reconciliation asked for are carried out before returning.
                let _ = a.catch_up().await;
            }
            bar.done();
            let mut code = 0;
            for j in &jobs {
                print_outcome(j);
                if j.status != SyncJobStatus::Succeeded {
                    code = 1;
                }
            }
            return Ok(code);
        }
    }
}

/// The progress bar on stderr: redrawn in place on a terminal, a line every 5 s otherwise.
struct Bar {
    tty: bool,
    started: Instant,
    last_line: Instant,
}

impl Bar {
    fn new() -> Bar {
        Bar {
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    fn show(&mut self, jobs: &[SyncJob]) {
        let read: i64 = jobs.iter().map(|j| j.counts.read).sum();
        let total: Option<i64> = jobs.iter().map(|j| j.rows_total).sum();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let pct = total.filter(|t| *t > 0).map(|t| read as f64 / t as f64);
        let width = 30;
        let filled = pct.map_or(0, |p| ((p.min(1.0)) * width as f64) as usize);
        let bar: String = "#".repeat(filled) + &"-".repeat(width - filled);
        let state: Vec<String> = jobs
            .iter()
            .map(|j| format!("#{} {} {}", j.id, j.object, j.status.as_str()))
            .collect();
        let line = format!(
            "[{bar}] {:>5} {read}/{} rows  {:.0} rows/s  api calls {}  {}",
            pct.map_or("?".into(), |p| format!("{:.0}%", p * 100.0)),
            total.map_or("?".into(), |t| t.to_string()),
            read as f64 / secs,
            jobs.iter().map(|j| j.counts.api_calls).sum::<i64>(),
            state.join(", ")
        );
        if self.tty {
            eprint!("\r{line}\x1b[K");
            let _ = std::io::stderr().flush();
        } else if self.last_line.elapsed() >= Duration::from_secs(5) {
            self.last_line = Instant::now();
            eprintln!("{line}");
        }
    }

    fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

fn print_outcome(j: &SyncJob) {
    let c = &j.counts;
    let secs = match (j.started_at_ms, j.finished_at_ms) {
        (Some(a), Some(b)) => (b - a) as f64 / 1000.0,
        _ => 0.0,
    };
    println!(
        "{} #{} {} {}: read {} applied {} skipped {} held {} deleted {} failed {} api calls {} in {:.1}s{}",
        j.kind.as_str(),
        j.id,
        j.object,
        j.status.as_str(),
        c.read,
        c.applied,
        c.skipped,
        c.held,
        c.deleted,
        c.failed,
        c.api_calls,
        secs,
        j.error.as_deref().map(|e| format!(" — {e}")).unwrap_or_default()
    );
    if let Some(r) = &j.report {
        println!("  report: {r}");
    }
}

fn status_filter(s: &str) -> anyhow::Result<Vec<SyncJobStatus>> {
    match s {
        "all" => Ok(Vec::new()),
        "open" => Ok(vec![SyncJobStatus::Pending, SyncJobStatus::Running]),
        other => SyncJobStatus::parse(other).map(|s| vec![s]).ok_or_else(|| {
            anyhow!("--status '{other}': use open, all, pending, running, succeeded, failed or cancelled")
        }),
    }
}

pub async fn jobs(args: JobsArgs) -> Result<i32, Failure> {
    match args.command {
        JobsCommand::List {
            config,
            status,
            limit,
        } => {
            let statuses = status_filter(&status).map_err(usage)?;
            let opened = crate::admin_cmd::open(&config, false).await?;
            let jobs = opened
                .store
                .sync_jobs(&SyncJobFilter {
                    statuses,
                    newest_first: true,
                    limit,
                    ..Default::default()
                })
                .await
                .map_err(|e| failed(e.into()))?;
            println!(
                "{:>6} {:<15} {:<20} {:<10} {:>10} {:>10} {:>9}  reason",
                "id", "kind", "object", "status", "read", "applied", "api calls"
            );
            for j in jobs {
                println!(
                    "{:>6} {:<15} {:<20} {:<10} {:>10} {:>10} {:>9}  {}",
                    j.id,
                    j.kind.as_str(),
                    j.object,
                    j.status.as_str(),
                    j.counts.read,
                    j.counts.applied,
                    j.counts.api_calls,
                    j.reason
                );
            }
            Ok(0)
        }
        JobsCommand::Show { config, id } => {
            let opened = crate::admin_cmd::open(&config, false).await?;
            let Some(j) = opened
                .store
                .sync_job(id)
                .await
                .map_err(|e| failed(e.into()))?
            else {
                return Err(failed(anyhow!("sync job {id} does not exist")));
            };
            println!("{j:#?}");
            Ok(0)
        }
        JobsCommand::Cancel { config, ids } => {
            let opened = crate::admin_cmd::open(&config, false).await?;
            let mut code = 0;
            for id in ids {
                match opened
                    .store
                    .sync_job(id)
                    .await
                    .map_err(|e| failed(e.into()))?
                {
                    Some(j) if j.status.is_open() => {
                        cancel(&*opened.store, id).await?;
                        println!("sync job {id} cancelled");
                    }
                    Some(j) => {
                        eprintln!("sync job {id} is {} already", j.status.as_str());
                        code = 1;
                    }
                    None => {
                        eprintln!("sync job {id} does not exist");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
    }
}

async fn cancel(store: &dyn Warehouse, id: i64) -> Result<(), Failure> {
    store
        .patch_sync_job(
            id,
            &SyncJobPatch {
                status: Some(SyncJobStatus::Cancelled),
                error: Some(format!("cancelled by operator:{}", operator())),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| failed(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_rfc3339_or_an_age() {
        let now = 1_000_000_000;
        assert_eq!(parse_since("90s", now).unwrap(), now - 90_000);
        assert_eq!(parse_since("2h", now).unwrap(), now - 7_200_000);
        assert_eq!(parse_since("1970-01-01T00:00:01Z", now).unwrap(), 1000);
        assert!(parse_since("2x", now)
            .unwrap_err()
            .to_string()
            .contains("unit"));
        assert!(parse_since("yesterday", now).is_err());
    }
}
