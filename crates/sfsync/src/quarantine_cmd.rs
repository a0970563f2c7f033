//! `sfsync quarantine list|show|release|discard` and `sfsync quality report`: the operator's
//! view of changes the data-quality gates hold, and of failure counts per run and rule.
//!
//! Guarantees: `release` and `discard` record who decided and why with the entry. A release is
//! a request the running `sfsync run` carries out within about a second through the normal apply
//! path (checked again unless `--force`; ordering and idempotence hold), or on its next start.
//! A discard is final; the record's changes held behind the discarded one are re-checked.
//! `show` prints PII values as `<encrypted>`. Exit codes as the other operator commands: 0 done,
//! 1 some ids could not be acted on, 2 the config or warehouse cannot be used.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{json, Value as J};
use sfsync_store::{
    QuarantineActOutcome, QuarantineAction, QuarantineFilter, QuarantineRecord, QuarantineStatus,
};

use crate::admin_cmd::{block_on, failed, finish, open, operator, usage, Failure, MASK};

#[derive(Debug, Args)]
pub struct QuarantineArgs {
    #[command(subcommand)]
    pub command: QuarantineCommand,
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List quarantined changes, oldest first.
    List(ListArgs),
    /// Show one quarantined change in full (PII masked).
    Show(ShowArgs),
    /// Release changes: checked again and applied through the normal apply path.
    Release(ActArgs),
    /// Discard changes: never applied (kept, with who decided and why).
    Discard(ActArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Only this object.
    #[arg(long)]
    pub object: Option<String>,
    /// `open` (held or release requested; the default), `all`, or one status: held,
    /// release_requested, force_requested, released, discarded.
    #[arg(long, default_value = "open")]
    pub status: String,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[arg(long)]
    pub config: PathBuf,
    pub id: i64,
}

#[derive(Debug, Args)]
pub struct ActArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Quarantine ids.
    #[arg(required = true)]
    pub ids: Vec<i64>,
    /// Release without checking again (an operator override, recorded).
    #[arg(long)]
    pub force: bool,
    /// Why (recorded with the entry).
    #[arg(long, default_value = "")]
    pub note: String,
}

#[derive(Debug, Args)]
pub struct QualityArgs {
    #[command(subcommand)]
    pub command: QualityCommand,
}

#[derive(Debug, Subcommand)]
pub enum QualityCommand {
    /// Failure counts per object and rule (one run or all) with samples of warn failures.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// A run id (see the `runs` table); all runs when absent.
    #[arg(long)]
    pub run: Option<String>,
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
}

pub fn quarantine(args: QuarantineArgs) -> i32 {
    match args.command {
        QuarantineCommand::List(a) => finish("quarantine list", block_on(list(a))),
        QuarantineCommand::Show(a) => finish("quarantine show", block_on(show(a))),
        QuarantineCommand::Release(a) => {
            let action = if a.force {
                QuarantineAction::ForceRelease
            } else {
                QuarantineAction::Release
            };
            finish("quarantine release", block_on(act(a, action)))
        }
        QuarantineCommand::Discard(a) => {
            if a.force {
                return finish(
                    "quarantine discard",
                    Err(usage(anyhow::anyhow!("--force only applies to release"))),
                );
            }
            finish(
                "quarantine discard",
                block_on(act(a, QuarantineAction::Discard)),
            )
        }
    }
}

pub fn quality(args: QualityArgs) -> i32 {
    match args.command {
        QualityCommand::Report(a) => finish("quality report", block_on(report(a))),
    }
}

fn statuses(s: &str) -> Result<Vec<QuarantineStatus>, Failure> {
    match s {
        "open" => Ok(sfsync_store::open_statuses()),
        "all" => Ok(Vec::new()),
        one => QuarantineStatus::parse(one).map(|s| vec![s]).ok_or_else(|| {
            usage(anyhow::anyhow!(
                "--status {one}: use open, all, held, release_requested, force_requested, released or discarded"
            ))
        }),
    }
}

fn ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// One quarantined change as JSON (`list --json`, the API).
pub(crate) fn summary(q: &QuarantineRecord) -> J {
    json!({
        "id": q.id,
        "status": q.status.as_str(),
        "object": q.entry.object,
        "record_id": q.entry.record_id,
        "rule": q.entry.rule,
        "reason": q.entry.reason,
        "parent": q.entry.parent.as_ref().map(|(o, i)| format!("{o} {i}")),
        "event_key": q.entry.event_key,
        "log_offset": q.entry.log_offset,
        "commit_time": ts(q.entry.commit_timestamp_ms),
        "first_seen": ts(q.first_seen_ms),
        "last_seen": ts(q.last_seen_ms),
        "attempts": q.attempts,
        "alert_after": q.entry.alert_after_ms.map(ts),
        "alerted_at": q.alerted_at_ms.map(ts),
        "resolved_at": q.resolved_at_ms.map(ts),
        "resolved_by": q.resolved_by,
        "note": q.note,
        "run_id": q.entry.run_id,
    })
}

/// One quarantined change in full: [`summary`] plus the held change, the values of `pii`
/// fields masked (`show`, the API).
pub(crate) fn detail(q: &QuarantineRecord, pii: &[String]) -> J {
    let mut out = summary(q);
    out["change"] = match &q.entry.change {
        Some(body) => match serde_json::from_slice::<sfsync_pipeline::quality::HeldChange>(body) {
            Ok(mut h) => {
                for (f, v) in h.values.iter_mut() {
                    if pii.iter().any(|p| p.eq_ignore_ascii_case(f)) && !v.is_null() {
                        *v = sfsync_store::Value::Text(MASK.into());
                    }
                }
                serde_json::to_value(&h).unwrap_or(J::Null)
            }
            Err(e) => J::String(format!("(stored change does not parse: {e})")),
        },
        None => J::String(format!(
            "(over the rule's cap: the change is kept in the raw log at offset {})",
            q.entry.log_offset.unwrap_or_default()
        )),
    };
    out
}

async fn list(a: ListArgs) -> Result<i32, Failure> {
    let o = open(&a.config, true).await?;
    let filter = QuarantineFilter {
        object: a.object.clone(),
        statuses: statuses(&a.status)?,
        limit: a.limit,
        ..Default::default()
    };
    let rows = o
        .store
        .quarantine_list(&filter)
        .await
        .context("reading the quarantine")
        .map_err(failed)?;
    if a.json {
        for q in &rows {
            println!("{}", summary(q));
        }
        return Ok(0);
    }
    println!(
        "{:>8}  {:<18}  {:<14}  {:<18}  {:<24}  {:>3}  {:<20}  reason",
        "id", "status", "object", "record", "rule", "try", "first seen"
    );
    for q in &rows {
        println!(
            "{:>8}  {:<18}  {:<14}  {:<18}  {:<24}  {:>3}  {:<20}  {}",
            q.id,
            q.status.as_str(),
            q.entry.object,
            q.entry.record_id,
            q.entry.rule,
            q.attempts,
            ts(q.first_seen_ms),
            q.entry.reason
        );
    }
    println!(
        "{} shown; {} open in all",
        rows.len(),
        o.store
            .quarantine_open_count()
            .await
            .context("counting the quarantine")
            .map_err(failed)?
    );
    Ok(0)
}

async fn show(a: ShowArgs) -> Result<i32, Failure> {
    let o = open(&a.config, true).await?;
    let rows = o
        .store
        .quarantine_list(&QuarantineFilter {
            ids: vec![a.id],
            ..Default::default()
        })
        .await
        .context("reading the quarantine")
        .map_err(failed)?;
    let Some(q) = rows.into_iter().next() else {
        return Err(failed(anyhow::anyhow!(
            "no quarantined change has id {}",
            a.id
        )));
    };
    let pii: Vec<String> = o
        .config
        .objects
        .iter()
        .find(|x| x.name == q.entry.object)
        .map(|x| x.pii_fields.clone())
        .unwrap_or_default();
    let out = detail(&q, &pii);
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(0)
}

async fn act(a: ActArgs, action: QuarantineAction) -> Result<i32, Failure> {
    let o = open(&a.config, true).await?;
    let who = operator();
    let done = o
        .store
        .quarantine_act(&a.ids, action, &who, &a.note)
        .await
        .context("recording the decision")
        .map_err(failed)?;
    let mut code = 0;
    for (id, outcome) in done {
        match outcome {
            QuarantineActOutcome::Done(s) => println!("{id}: {} (by {who})", s.as_str()),
            QuarantineActOutcome::NotFound => {
                code = 1;
                println!("{id}: no such quarantined change");
            }
            QuarantineActOutcome::AlreadyResolved(s) => {
                code = 1;
                println!("{id}: already {}", s.as_str());
            }
        }
    }
    if action != QuarantineAction::Discard {
        println!(
            "The running `sfsync run` applies released changes within about a second (or on its next start); `sfsync quarantine list --status all` shows the outcome."
        );
    }
    Ok(code)
}

async fn report(a: ReportArgs) -> Result<i32, Failure> {
    let o = open(&a.config, false).await?;
    let counts = o
        .store
        .dq_counts(a.run.as_deref())
        .await
        .context("reading failure counts")
        .map_err(failed)?;
    println!(
        "data quality of {} ({})",
        o.config.warehouse.describe(),
        a.run.as_deref().unwrap_or("all runs")
    );
    println!(
        "{:<14}  {:<28}  {:<5}  {:>10}  {:>10}  {:>10}",
        "object", "rule", "sev", "failed", "stored", "over cap"
    );
    for c in &counts {
        println!(
            "{:<14}  {:<28}  {:<5}  {:>10}  {:>10}  {:>10}",
            c.object, c.rule, c.severity, c.failed, c.stored, c.over_cap
        );
    }
    let open_n = o
        .store
        .quarantine_open_count()
        .await
        .context("counting the quarantine")
        .map_err(failed)?;
    println!("quarantine: {open_n} open");
    let samples = o
        .store
        .dq_samples(a.run.as_deref(), a.samples)
        .await
        .context("reading failure samples")
        .map_err(failed)?;
    if !samples.is_empty() {
        println!("latest warn samples:");
        for s in samples {
            println!("  {} {} {}: {}", s.object, s.record_id, s.rule, s.message);
        }
    }
    Ok(0)
}
