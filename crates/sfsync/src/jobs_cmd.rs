//! `sfsync backfill`, `sfsync reconcile` and `sfsync runs` (alias `sfsync jobs`): the operator's
//! side of sync jobs.
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
use sfsync_core::ReplayId;
use sfsync_pipeline::replay::ReplaySelection;
use sfsync_pipeline::{Applier, PipelineStats};
use sfsync_store::{
    NewSyncJob, SyncJob, SyncJobFilter, SyncJobKind, SyncJobPatch, SyncJobStatus, Warehouse,
};

use crate::admin_cmd::{failed, operator, usage, Failure};

#[derive(Debug, Args)]
pub struct ArchiveArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Request the job and return (a running `sfsync run` carries it out).
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Args)]
pub struct RetentionArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// List what would be deleted (archive partitions, audit entries, hot-log entries) and
    /// delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Request the job and return (a running `sfsync run` carries it out).
    #[arg(long)]
    pub no_wait: bool,
}

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
pub struct ReplayArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Object API names; every configured object when none is given (with --from-replay-id,
    /// those on --channel). --ids needs exactly one.
    pub objects: Vec<String>,
    /// Replay the changes on --channel from the event with this replay id (hex, as sfsync
    /// prints replay ids) on, that event included.
    #[arg(long, value_name = "HEX")]
    pub from_replay_id: Option<String>,
    /// The channel of --from-replay-id (`/data/AccountChangeEvent`).
    #[arg(long)]
    pub channel: Option<String>,
    /// Replay records with a change committed at or after this time: RFC 3339
    /// (`2026-11-01T00:00:00Z`) or an age (`72h`, `30m`, `7d`). Older than the raw log: the
    /// window is re-read from Salesforce.
    #[arg(long)]
    pub since: Option<String>,
    /// With --since: only records with a change committed before this time (RFC 3339 or an
    /// age). Their later changes are replayed too, so nothing regresses.
    #[arg(long)]
    pub until: Option<String>,
    /// Replay these records (Salesforce ids, comma-separated; the flag may repeat): their
    /// retained changes (with --since: those since then), or a re-read from Salesforce.
    #[arg(long, value_delimiter = ',')]
    pub ids: Vec<String>,
    /// Record the job and return (the running `sfsync run` carries it out).
    #[arg(long)]
    pub no_wait: bool,
}

/// What `sfsync replay` was asked to replay: the job's selection and window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    pub selection: ReplaySelection,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// Checks the selection flags of `sfsync replay`; each error names the flag.
pub fn replay_request(args: &ReplayArgs, now_ms: i64) -> anyhow::Result<ReplayRequest> {
    let by_id = args.from_replay_id.is_some() || args.channel.is_some();
    let by_ids = !args.ids.is_empty();
    let by_time = args.since.is_some() || args.until.is_some();
    let choose = "choose what to replay: --since T [--until T], --from-replay-id HEX --channel \
                  CHANNEL, or --ids ID[,ID…]";
    if !by_id && !by_ids && !by_time {
        return Err(anyhow!("{choose}"));
    }
    if by_id && (by_ids || by_time) {
        return Err(anyhow!(
            "--from-replay-id cannot be combined with --since, --until or --ids ({choose})"
        ));
    }
    let time = |flag: &str, s: &str| {
        parse_since(s, now_ms).map_err(|e| anyhow!("{}", e.to_string().replace("--since", flag)))
    };
    if by_id {
        let (Some(hex), Some(channel)) = (&args.from_replay_id, &args.channel) else {
            return Err(if args.channel.is_some() {
                anyhow!(
                    "--channel is only for --from-replay-id (the channel its replay id belongs to)"
                )
            } else {
                anyhow!(
                    "--from-replay-id needs --channel: the channel the replay id belongs to, e.g. \
                     /data/AccountChangeEvent"
                )
            });
        };
        let replay_id = ReplayId::from_hex(hex.trim())
            .ok()
            .filter(|r| !r.as_bytes().is_empty())
            .ok_or_else(|| {
                anyhow!(
                    "--from-replay-id '{hex}': not a replay id in hex (an even number of hex \
                     digits, as sfsync prints replay ids)"
                )
            })?;
        let channel = channel.trim();
        if !channel.starts_with('/') || channel.len() < 2 {
            return Err(anyhow!(
                "--channel '{channel}': a channel name starts with / (/data/AccountChangeEvent, \
                 /data/ChangeEvents, /data/Custom__chn)"
            ));
        }
        return Ok(ReplayRequest {
            selection: ReplaySelection::ReplayId {
                channel: channel.to_string(),
                replay_id,
            },
            since_ms: None,
            until_ms: None,
        });
    }
    let since_ms = args
        .since
        .as_deref()
        .map(|s| time("--since", s))
        .transpose()?;
    if let Some(u) = &args.until {
        if by_ids {
            return Err(anyhow!(
                "--until narrows a --since window and does not apply to --ids"
            ));
        }
        let Some(s) = since_ms else {
            return Err(anyhow!("--until needs --since (the window's start)"));
        };
        let u_ms = time("--until", u)?;
        if u_ms <= s {
            return Err(anyhow!(
                "--until '{u}' is not after --since '{}'",
                args.since.as_deref().unwrap_or_default()
            ));
        }
    }
    if since_ms.is_some_and(|s| s > now_ms) {
        return Err(anyhow!(
            "--since '{}' is in the future",
            args.since.as_deref().unwrap_or_default()
        ));
    }
    let until_ms = args
        .until
        .as_deref()
        .map(|u| time("--until", u))
        .transpose()?;
    if !by_ids {
        return Ok(ReplayRequest {
            selection: ReplaySelection::Window,
            since_ms,
            until_ms,
        });
    }
    let mut ids: Vec<String> = Vec::new();
    for raw in &args.ids {
        let id = raw.trim();
        if id.is_empty() {
            continue;
        }
        let ok =
            (id.len() == 15 || id.len() == 18) && id.chars().all(|c| c.is_ascii_alphanumeric());
        if !ok {
            return Err(anyhow!(
                "--ids: '{id}' is not a Salesforce record id (15 or 18 letters and digits)"
            ));
        }
        if !ids.iter().any(|i| i == id) {
            ids.push(id.to_string());
        }
    }
    if ids.is_empty() {
        return Err(anyhow!("--ids names no record id"));
    }
    Ok(ReplayRequest {
        selection: ReplaySelection::Ids { ids },
        since_ms,
        until_ms: None,
    })
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
        /// Only jobs of this kind (backfill, resync, reconcile, replay, formula_refresh,
        /// archive, retention).
        #[arg(long)]
        kind: Option<String>,
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
    /// Start failed or cancelled jobs again as a new attempt, from the beginning (the earlier
    /// attempt is kept in `show`); the running `sfsync run` carries them out.
    Retry {
        #[arg(long)]
        config: PathBuf,
        #[arg(required = true)]
        ids: Vec<i64>,
        /// Who retries (recorded); default $USER.
        #[arg(long)]
        by: Option<String>,
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
    let (config, secrets) = crate::run_cmd::load(&args.config).await.map_err(usage)?;
    let names = objects_or_all(&config, &args.objects).map_err(usage)?;
    request_and_follow(
        &config,
        &secrets,
        SyncJobKind::Backfill,
        &names,
        JobWindow {
            since_ms: since,
            ..JobWindow::default()
        },
        args.no_wait,
    )
    .await
}

/// `sfsync archive`: compacts the applied raw log into the Parquet archive now (a job, as the
/// schedule runs it), then prunes the hot log past its retention.
pub async fn archive(args: ArchiveArgs) -> Result<i32, Failure> {
    let (config, secrets) = crate::run_cmd::load(&args.config).await.map_err(usage)?;
    if config.archive.location.is_none() {
        return Err(usage(anyhow!(
            "{}: archive.enabled = false: there is no archive to write to",
            args.config.display()
        )));
    }
    request_and_follow(
        &config,
        &secrets,
        SyncJobKind::Archive,
        &[sfsync_store::ALL_OBJECTS.to_string()],
        JobWindow::default(),
        args.no_wait,
    )
    .await
}

/// `sfsync retention`: deletes what is past its retention (a job), or with `--dry-run` lists
/// it without deleting anything.
pub async fn retention(args: RetentionArgs) -> Result<i32, Failure> {
    let (config, secrets) = crate::run_cmd::load(&args.config).await.map_err(usage)?;
    if !args.dry_run {
        return request_and_follow(
            &config,
            &secrets,
            SyncJobKind::Retention,
            &[sfsync_store::ALL_OBJECTS.to_string()],
            JobWindow::default(),
            args.no_wait,
        )
        .await;
    }
    let store = crate::run_cmd::open_store(&config, &secrets)
        .await
        .map_err(usage)?;
    let archive = crate::run_cmd::open_archive(&config).map_err(usage)?;
    let cfg = crate::run_cmd::maintenance_config(&config, archive);
    let r = sfsync_pipeline::maintenance::run_retention(&*store, &cfg, now_ms(), true)
        .await
        .context("computing what retention would delete")
        .map_err(failed)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        return Ok(0);
    }
    let day = |ms: Option<i64>| ms.map(sfsync_store::archive::utc_day).unwrap_or_default();
    println!(
        "Dry run: nothing is deleted. The archive keeps {} and later.",
        r.archive_keeps_from
    );
    if r.partitions.is_empty() {
        println!("archive partitions: none past retention");
    }
    for p in &r.partitions {
        println!(
            "archive partition {}/{}: {} files, {} rows, {} bytes would go",
            p.object, p.day, p.files, p.rows, p.bytes
        );
    }
    println!(
        "audit trail: {} entries would go{}",
        r.audit.entries,
        match (r.audit.entries, r.audit.through_seq) {
            (0, _) | (_, None) => String::new(),
            (_, Some(seq)) => format!(
                " (created {} to {}, through seq {seq})",
                day(r.audit.oldest_ms),
                day(r.audit.newest_ms)
            ),
        }
    );
    println!(
        "hot raw log: {} entries would go (archived, applied and past the hot retention;          bound offset {})",
        r.raw_log.entries, r.raw_log.bound
    );
    Ok(0)
}

pub async fn reconcile(args: ReconcileArgs) -> Result<i32, Failure> {
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, now_ms()))
        .transpose()
        .map_err(usage)?;
    let (config, secrets) = crate::run_cmd::load(&args.config).await.map_err(usage)?;
    let names = objects_or_all(&config, &args.objects).map_err(usage)?;
    request_and_follow(
        &config,
        &secrets,
        SyncJobKind::Reconcile,
        &names,
        JobWindow {
            since_ms: since,
            ..JobWindow::default()
        },
        args.no_wait,
    )
    .await
}

pub async fn replay(args: ReplayArgs) -> Result<i32, Failure> {
    let request = replay_request(&args, now_ms()).map_err(usage)?;
    let (config, secrets) = crate::run_cmd::load(&args.config).await.map_err(usage)?;
    let specs = crate::run_cmd::object_specs(&config);
    let names = match &request.selection {
        ReplaySelection::Ids { .. } => {
            let [one] = &args.objects[..] else {
                return Err(usage(anyhow!(
                    "--ids: name the object of the records, exactly one (`sfsync replay Account \
                     --ids 001…`)"
                )));
            };
            vec![configured(&config, one).map_err(usage)?]
        }
        ReplaySelection::ReplayId { channel, .. } if args.objects.is_empty() => {
            let on: Vec<String> = specs
                .iter()
                .filter(|s| &s.channel == channel)
                .map(|s| s.name.clone())
                .collect();
            if on.is_empty() {
                let mut channels: Vec<&str> = specs.iter().map(|s| s.channel.as_str()).collect();
                channels.sort_unstable();
                channels.dedup();
                return Err(usage(anyhow!(
                    "--channel '{channel}': no configured object is on this channel (configured \
                     channels: {})",
                    channels.join(", ")
                )));
            }
            on
        }
        ReplaySelection::ReplayId { channel, .. } => {
            let names = objects_or_all(&config, &args.objects).map_err(usage)?;
            for n in &names {
                if let Some(s) = specs.iter().find(|s| &s.name == n) {
                    if &s.channel != channel {
                        return Err(usage(anyhow!(
                            "--channel '{channel}': object {n} is on channel {}",
                            s.channel
                        )));
                    }
                }
            }
            names
        }
        ReplaySelection::Window => objects_or_all(&config, &args.objects).map_err(usage)?,
    };
    let described = request
        .selection
        .describe(request.since_ms, request.until_ms);
    request_and_follow(
        &config,
        &secrets,
        SyncJobKind::Replay,
        &names,
        JobWindow {
            since_ms: request.since_ms,
            until_ms: request.until_ms,
            params: Some(request.selection.to_params()),
            reason: Some(format!("requested by operator: replay {described}")),
        },
        args.no_wait,
    )
    .await
}

/// The configured objects named (by their configured spelling), or every synced one.
fn objects_or_all(
    config: &crate::config::validate::ValidConfig,
    objects: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for o in objects {
        let n = configured(config, o)?;
        if !names.contains(&n) {
            names.push(n);
        }
    }
    if names.is_empty() {
        names = crate::run_cmd::object_specs(config)
            .into_iter()
            .map(|s| s.name)
            .collect();
    }
    Ok(names)
}

/// What a requested job covers besides its kind and object.
#[derive(Debug, Default)]
struct JobWindow {
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    /// Kind-specific parameters (JSON); `{}` when none.
    params: Option<String>,
    /// `requested by operator` when none.
    reason: Option<String>,
}

async fn request_and_follow(
    config: &crate::config::validate::ValidConfig,
    secrets: &crate::config::secrets::ResolvedSecrets,
    kind: SyncJobKind,
    names: &[String],
    window: JobWindow,
    no_wait: bool,
) -> Result<i32, Failure> {
    let store = crate::run_cmd::open_store(config, secrets)
        .await
        .map_err(usage)?;
    let mut ids = Vec::new();
    for object in names {
        let id = store
            .add_sync_job(&NewSyncJob {
                kind,
                object: object.clone(),
                reason: window
                    .reason
                    .clone()
                    .unwrap_or_else(|| "requested by operator".into()),
                since_ms: window.since_ms,
                until_ms: window.until_ms,
                params: window.params.clone().unwrap_or_else(|| "{}".into()),
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
            let client = crate::run_cmd::rest_client(config, secrets).map_err(usage)?;
            let mut pc = crate::run_cmd::pipeline_config(config, crate::run_cmd::StartAt::Earliest);
            // This process exits when the operator's jobs end: it schedules no formula
            // refreshes of its own (`sfsync run` does).
            pc.apply.jobs.formula_refresh_every = None;
            pc.apply.maintenance.archive_every = None;
            pc.apply.maintenance.retention_every = None;
            pc.apply.maintenance.archive = crate::run_cmd::open_archive(config).map_err(usage)?;
            let (mappings, _) = sfsync_pipeline::prepare_models(&*store, &client, &pc.objects)
                .await
                .context("building the curated models")
                .map_err(failed)?;
            let bulk = client.bulk();
            Some(
                Applier::new(
                    store.clone(),
                    Arc::new(client.lane(sfsync_salesforce::Lane::GapRepair)),
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
            .map(|j| match sfsync_store::current_slice(&j.slices) {
                Some(s) => format!(
                    "#{} {} {} slice {}/{}",
                    j.id,
                    j.object,
                    j.status.as_str(),
                    s.seq,
                    j.slices.len()
                ),
                None => format!("#{} {} {}", j.id, j.object, j.status.as_str()),
            })
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

/// A sliced job's slices, one line each.
fn print_slices(j: &SyncJob) {
    if j.slices.is_empty() {
        return;
    }
    let at = |ms: Option<i64>| ms.map_or("-".to_string(), sfsync_pipeline::jobs::soql_datetime);
    println!("slices ({}):", j.slices.len());
    println!(
        "{:>5} {:<24} {:<24} {:<10} {:>3} {:>10} {:>10} {:>9}  error",
        "slice", "since", "until", "status", "try", "read", "applied", "api calls"
    );
    for s in &j.slices {
        println!(
            "{:>5} {:<24} {:<24} {:<10} {:>3} {:>10} {:>10} {:>9}  {}",
            s.seq,
            at(s.since_ms),
            at(s.until_ms),
            s.status.as_str(),
            s.attempts,
            s.counts.read,
            s.counts.applied,
            s.counts.api_calls,
            s.error.as_deref().unwrap_or("")
        );
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
            kind,
            limit,
        } => {
            let statuses = status_filter(&status).map_err(usage)?;
            let kind = match kind.as_deref() {
                None => None,
                Some(k) => Some(SyncJobKind::parse(k).ok_or_else(|| {
                    let kinds: Vec<&str> = SyncJobKind::ALL.iter().map(|k| k.as_str()).collect();
                    usage(anyhow!("--kind {k}: use one of {}", kinds.join(", ")))
                })?),
            };
            let opened = crate::admin_cmd::open(&config, false).await?;
            let jobs = opened
                .store
                .sync_jobs(&SyncJobFilter {
                    statuses,
                    kind,
                    newest_first: true,
                    limit,
                    ..Default::default()
                })
                .await
                .map_err(|e| failed(e.into()))?;
            println!(
                "{:>6} {:<15} {:<20} {:<10} {:>3} {:>10} {:>10} {:>9}  reason",
                "id", "kind", "object", "status", "try", "read", "applied", "api calls"
            );
            for j in jobs {
                println!(
                    "{:>6} {:<15} {:<20} {:<10} {:>3} {:>10} {:>10} {:>9}  {}",
                    j.id,
                    j.kind.as_str(),
                    j.object,
                    j.status.as_str(),
                    j.attempts,
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
            print_slices(&j);
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
        JobsCommand::Retry { config, ids, by } => {
            let by = match by {
                Some(b) if b.trim().is_empty() => {
                    return Err(usage(anyhow!("--by must not be empty")))
                }
                Some(b) => b.trim().to_string(),
                None => operator(),
            };
            let opened = crate::admin_cmd::open(&config, false).await?;
            let mut code = 0;
            for id in ids {
                match opened
                    .store
                    .retry_sync_job(id, &format!("operator:{by}"))
                    .await
                {
                    Ok(j) => println!(
                        "sync job {id}: retried as attempt {} (by {by}); the running `sfsync run` \
                         carries it out",
                        j.attempts
                    ),
                    Err(sfsync_store::StoreError::InvalidInput { reason, .. }) => {
                        eprintln!("{reason}");
                        code = 1;
                    }
                    Err(e) => return Err(failed(e.into())),
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

    fn args(flags: &[&str]) -> ReplayArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            replay: ReplayArgs,
        }
        let mut argv = vec!["sfsync-replay", "--config", "sfsync.toml"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv).expect("flags parse").replay
    }

    fn request(flags: &[&str]) -> anyhow::Result<ReplayRequest> {
        replay_request(&args(flags), NOW)
    }

    const NOW: i64 = 1_795_253_400_000; // 2026-11-21T09:30:00.000Z

    #[test]
    fn replay_selection_by_time() {
        let r = request(&["Account", "--since", "2h"]).unwrap();
        assert_eq!(
            r,
            ReplayRequest {
                selection: ReplaySelection::Window,
                since_ms: Some(NOW - 7_200_000),
                until_ms: None,
            }
        );
        let r = request(&[
            "--since",
            "2026-11-21T08:00:00Z",
            "--until",
            "2026-11-21T09:00:00Z",
        ])
        .unwrap();
        assert_eq!(
            (r.since_ms, r.until_ms),
            (Some(NOW - 5_400_000), Some(NOW - 1_800_000))
        );
        let r = request(&["--since", "3h", "--until", "1h"]).unwrap();
        assert_eq!(r.until_ms, Some(NOW - 3_600_000));
    }

    #[test]
    fn replay_selection_by_replay_id_and_by_ids() {
        let r = request(&[
            "--from-replay-id",
            "00FF0a",
            "--channel",
            "/data/AccountChangeEvent",
        ])
        .unwrap();
        assert_eq!(
            r.selection,
            ReplaySelection::ReplayId {
                channel: "/data/AccountChangeEvent".into(),
                replay_id: ReplayId::from_bytes(vec![0, 0xff, 0x0a]),
            }
        );
        assert_eq!((r.since_ms, r.until_ms), (None, None));
        let r = request(&[
            "Account",
            "--ids",
            "001000000000001AAA, 001000000000002",
            "--ids",
            "001000000000001AAA",
        ])
        .unwrap();
        assert_eq!(
            r.selection,
            ReplaySelection::Ids {
                ids: vec!["001000000000001AAA".into(), "001000000000002".into()]
            },
            "split on commas, trimmed, repeated flags merged, duplicates dropped"
        );
        let r = request(&["Account", "--ids", "001000000000001AAA", "--since", "1d"]).unwrap();
        assert_eq!(r.since_ms, Some(NOW - 86_400_000));
    }

    #[test]
    fn replay_selection_errors_name_the_flag() {
        for (flags, says) in [
            (&[][..], "choose what to replay"),
            (
                &["--from-replay-id", "00"][..],
                "--from-replay-id needs --channel",
            ),
            (
                &["--channel", "/data/X"][..],
                "--channel is only for --from-replay-id",
            ),
            (
                &["--from-replay-id", "0g", "--channel", "/data/X"][..],
                "--from-replay-id '0g'",
            ),
            (
                &["--from-replay-id", "abc", "--channel", "/data/X"][..],
                "--from-replay-id 'abc'",
            ),
            (
                &["--from-replay-id", "", "--channel", "/data/X"][..],
                "--from-replay-id ''",
            ),
            (
                &["--from-replay-id", "00", "--channel", "AccountChangeEvent"][..],
                "--channel 'AccountChangeEvent'",
            ),
            (
                &[
                    "--from-replay-id",
                    "00",
                    "--channel",
                    "/data/X",
                    "--since",
                    "1h",
                ][..],
                "cannot be combined",
            ),
            (&["--since", "yesterday"][..], "--since 'yesterday'"),
            (&["--since", "2h", "--until", "soon"][..], "--until 'soon'"),
            (&["--until", "1h"][..], "--until needs --since"),
            (
                &["--since", "1h", "--until", "2h"][..],
                "--until '2h' is not after --since '1h'",
            ),
            (&["--since", "2030-01-01T00:00:00Z"][..], "in the future"),
            (
                &["--ids", "001X"][..],
                "--ids: '001X' is not a Salesforce record id",
            ),
            (
                &["--ids", "001000000000001AA!"][..],
                "is not a Salesforce record id",
            ),
            (&["--ids", " , "][..], "--ids names no record id"),
            (
                &[
                    "--ids",
                    "001000000000001AAA",
                    "--since",
                    "1h",
                    "--until",
                    "1m",
                ][..],
                "--until narrows a --since window",
            ),
        ] {
            let err = request(flags).unwrap_err().to_string();
            assert!(err.contains(says), "{flags:?}: {err}");
        }
    }

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
