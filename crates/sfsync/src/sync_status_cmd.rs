//! `sfsync sync-status --config FILE [--object NAME] [--json]`: the freshness contract as the
//! warehouse's `sync_status` view reports it (the same rows `GET /api/v1/sync-status` returns),
//! for people and for downstream jobs that gate on it. It reads the warehouse only, so it
//! answers while `sfsync run` is stopped — and then reports `delayed` once the threshold passed.
//!
//! Exit codes (gate a job on 0): 0 every object is current; 3 an object is delayed (none is
//! partial); 4 an object is partial; 1 the warehouse could not be read; 2 the config or the
//! warehouse cannot be used, or `--object` names an object the config does not sync.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::Args;
use serde_json::{json, Value as J};
use sfsync_store::{FreshnessStatus, SyncStatus};

use crate::admin_cmd::{block_on, failed, finish, open, usage, Failure};

/// Exit code: an object is delayed.
pub const EXIT_DELAYED: i32 = 3;
/// Exit code: an object is partial.
pub const EXIT_PARTIAL: i32 = 4;

#[derive(Debug, Args)]
pub struct SyncStatusArgs {
    /// The sfsync TOML config.
    #[arg(long)]
    pub config: PathBuf,
    /// Only this object (API name, as configured in `[[objects]]`).
    #[arg(long)]
    pub object: Option<String>,
    /// Print the JSON of `GET /api/v1/sync-status` instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn ts(ms: Option<i64>) -> J {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| J::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(J::Null)
}

/// One row of the view as JSON: the view's column names.
pub fn row_json(r: &SyncStatus) -> J {
    let s = &r.state;
    json!({
        "object": s.object,
        "status": r.status.as_str(),
        "status_reason": r.status_reason,
        "lag_seconds": r.lag_seconds,
        "current_as_of": ts(s.current_as_of_ms),
        "last_commit_at": ts(s.last_commit_ms),
        "last_applied_at": ts(s.last_applied_ms),
        "open_repairs": s.open_repairs,
        "open_resyncs": s.open_resyncs,
        "backfill_running": s.backfill_running,
        "last_reconcile_at": ts(s.last_reconcile_ms),
        "last_reconcile_result": s.last_reconcile_result.map(|x| x.as_str()),
        "last_reconcile_detail": s.last_reconcile_detail,
        "delayed_after_secs": s.delayed_after_secs,
        "updated_at": ts(Some(s.updated_ms)),
    })
}

/// What no row means: `sfsync run` has not written one for the object yet.
pub const NO_ROW_REASON: &str = "no sync status recorded yet (sfsync run writes it)";

/// The report of the API and the CLI: the overall status (the worst of the objects'), counts
/// per status, and one entry per row; each object in `expected` without a row is listed as
/// `delayed` with [`NO_ROW_REASON`].
pub fn report(rows: &[SyncStatus], expected: &[String]) -> (FreshnessStatus, J) {
    let mut objects: Vec<J> = rows.iter().map(row_json).collect();
    let mut statuses: Vec<FreshnessStatus> = rows.iter().map(|r| r.status).collect();
    for o in expected {
        if !rows.iter().any(|r| &r.state.object == o) {
            objects.push(json!({
                "object": o,
                "status": FreshnessStatus::Delayed.as_str(),
                "status_reason": NO_ROW_REASON,
            }));
            statuses.push(FreshnessStatus::Delayed);
        }
    }
    let overall = FreshnessStatus::overall(statuses.iter().copied());
    let counts: serde_json::Map<String, J> = FreshnessStatus::ALL
        .iter()
        .map(|s| {
            (
                s.as_str().to_string(),
                json!(statuses.iter().filter(|x| *x == s).count()),
            )
        })
        .collect();
    (
        overall,
        json!({ "status": overall.as_str(), "counts": counts, "objects": objects }),
    )
}

/// The exit code of an overall status.
pub fn exit_code(s: FreshnessStatus) -> i32 {
    match s {
        FreshnessStatus::Current => 0,
        FreshnessStatus::Delayed => EXIT_DELAYED,
        FreshnessStatus::Partial => EXIT_PARTIAL,
    }
}

/// `sfsync sync-status …`; returns the exit code.
pub fn run(args: SyncStatusArgs) -> i32 {
    finish("sync-status", block_on(sync_status(args)))
}

async fn sync_status(args: SyncStatusArgs) -> Result<i32, Failure> {
    let o = open(&args.config, false).await?;
    // The objects `sfsync run` syncs (and writes a row for): those with a CDC channel.
    let synced: Vec<String> = o
        .config
        .objects
        .iter()
        .filter(|x| x.channel.is_some())
        .map(|x| x.name.clone())
        .collect();
    let expected: Vec<String> = match &args.object {
        None => synced,
        Some(name) if synced.contains(name) => vec![name.clone()],
        Some(name) => {
            return Err(usage(anyhow!(
                "--object {name}: {} does not sync it (synced: {})",
                args.config.display(),
                synced.join(", ")
            )))
        }
    };
    let rows = o
        .store
        .sync_status(args.object.as_deref())
        .await
        .context("reading the warehouse's sync_status view")
        .map_err(failed)?;
    let (overall, body) = report(&rows, &expected);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    } else {
        print_table(&body);
        println!("overall: {}", overall.as_str());
    }
    Ok(exit_code(overall))
}

fn print_table(body: &J) {
    let text = |v: &J| match v {
        J::Null => "-".to_string(),
        J::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!(
        "{:<24}  {:<8}  {:>9}  {:<24}  {:>7}  {:>8}  {:<8}  {:<10}  reason",
        "object", "status", "lag", "current as of", "repairs", "re-syncs", "backfill", "reconcile"
    );
    for r in body["objects"].as_array().into_iter().flatten() {
        let lag = r["lag_seconds"]
            .as_f64()
            .map(|l| format!("{l:.1} s"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<24}  {:<8}  {:>9}  {:<24}  {:>7}  {:>8}  {:<8}  {:<10}  {}",
            text(&r["object"]),
            text(&r["status"]),
            lag,
            text(&r["current_as_of"]),
            text(&r["open_repairs"]),
            text(&r["open_resyncs"]),
            match r["backfill_running"].as_bool() {
                Some(true) => "running",
                Some(false) => "no",
                None => "-",
            },
            text(&r["last_reconcile_result"]),
            text(&r["status_reason"]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfsync_store::SyncStatusState;

    fn row(object: &str, status: FreshnessStatus) -> SyncStatus {
        SyncStatus {
            state: SyncStatusState {
                object: object.into(),
                last_commit_ms: Some(1_790_000_000_000),
                last_applied_ms: None,
                current_as_of_ms: Some(1_790_000_000_500),
                open_repairs: 1,
                open_resyncs: 0,
                backfill_running: false,
                last_reconcile_ms: None,
                last_reconcile_result: Some(sfsync_store::ReconcileResult::Repaired),
                last_reconcile_detail: Some("1 missing, 0 extra, 0 stale".into()),
                delayed_after_secs: 120,
                updated_ms: 1_790_000_000_600,
            },
            lag_seconds: Some(2.5),
            status,
            status_reason: "1 open repair(s)".into(),
        }
    }

    #[test]
    fn the_report_is_the_worst_status_and_lists_objects_without_a_row() {
        let rows = [
            row("Account", FreshnessStatus::Current),
            row("Case", FreshnessStatus::Partial),
        ];
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (overall, body) = report(&rows, &names(&["Account", "Case"]));
        assert_eq!(overall, FreshnessStatus::Partial);
        assert_eq!(exit_code(overall), EXIT_PARTIAL);
        assert_eq!(body["status"], "partial");
        assert_eq!(body["counts"]["partial"], 1);
        let case = &body["objects"][1];
        assert_eq!(case["object"], "Case");
        assert_eq!(case["current_as_of"], "2026-09-21T14:13:20.500Z");
        assert_eq!(case["last_commit_at"], "2026-09-21T14:13:20.000Z");
        assert_eq!(case["last_applied_at"], J::Null);
        assert_eq!(case["last_reconcile_result"], "repaired");
        assert_eq!(case["lag_seconds"], 2.5);
        let (overall, body) = report(&rows[..1], &names(&["Account", "Lead"]));
        assert_eq!(overall, FreshnessStatus::Delayed);
        assert_eq!(exit_code(overall), EXIT_DELAYED);
        assert_eq!(body["objects"][1]["object"], "Lead");
        assert_eq!(body["objects"][1]["status_reason"], NO_ROW_REASON);
        assert_eq!(body["counts"]["delayed"], 1);
        let (overall, _) = report(&rows[..1], &names(&["Account"]));
        assert_eq!(exit_code(overall), 0);
        // Nothing to speak for: not current.
        assert_eq!(report(&[], &[]).0, FreshnessStatus::Delayed);
    }
}
