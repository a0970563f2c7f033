//! Polling a large backlog through Bulk API 2.0, end to end: `sfsync run` (a child process,
//! SQLite warehouse) polls Account (`mode = "poll"`, keyset pages of 300, `poll_bulk_threshold =
//! 2000`, Bulk result pages of 500) from the emulator over loopback TLS. Each backlog is ONE
//! transaction (or its first transaction is the large one): the Bulk decision is taken at the
//! first full query past the cursor, so it always sees the whole backlog it decides on.
//!
//! `large_poll_backlogs_are_read_through_bulk_and_converge`:
//! - a backlog made before the start — 2,500 inserts in ONE transaction (one SystemModstamp, so
//!   the tie is split between the first keyset page and the Bulk window), 1,000 more in small
//!   transactions, updates and deletes — is read through a Bulk `queryAll` job (the emulator's job
//!   list shows it, the stats file counts it) and the curated table equals the org: live rows
//!   column by column, deleted records flagged deleted;
//! - a backlog while running (an update of 2,400 records in one transaction, deletes, undeletes)
//!   takes a second job and converges again;
//! - a slow job (every API call delayed) is watched: its rows are committed while the stored
//!   cursor stays before the window (it moves only with the last batch); a SIGKILL there and a
//!   restart read the window again, and every raw-log entry is still a distinct (Id,
//!   SystemModstamp);
//! - with Bulk job creation refused by the org, a large backlog still lands through REST pages;
//! - a small backlog (below the threshold) creates no job.

mod support;

use support::accounts::{self, updates};
use support::{stop, wait_for, KillOnDrop};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value as J};
use sfsync_emulator::faults::{FaultConfig, FaultKind, FaultRule};
use sfsync_emulator::RunningEmulator;
use sfsync_org::DmlOp;
use sfsync_pipeline::poll::Cursor;
use sfsync_pipeline::ObjectMapping;
use sfsync_salesforce::bulk::JobKind;
use sfsync_salesforce::SalesforceClient;
use sfsync_store::{ChangeLog, SqliteChangeLog, Warehouse};

const CHANNEL: &str = "/poll/Account";

struct Env {
    emu: RunningEmulator,
    dir: tempfile::TempDir,
    db: PathBuf,
    client: SalesforceClient,
    config: PathBuf,
    mapping: ObjectMapping,
}

async fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (emu, client) = support::emulator(&dir).await;
    let d = client.describe_object("Account").await.unwrap();
    let mapping = ObjectMapping::build(&d, &sfsync_pipeline::ObjectSpec::new("Account")).unwrap();
    let db = dir.join("wh.db");
    let config = dir.join("sfsync.toml");
    let text = format!(
        r#"[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"

[[objects]]
name = "Account"
mode = "poll"

[warehouse]
type = "sqlite"
path = "{db}"

[pipeline]
batch_max_records = 1000
batch_max_wait_ms = 50
backfill_new_objects = false
backfill_page_records = 500
poll_interval_secs = 1
poll_overlap_secs = 2
poll_page_records = 300
poll_bulk_threshold = 2000
"#,
        creds = emu.credentials_path.display(),
        ca = emu.ca_pem_path.display(),
        db = db.display(),
    );
    std::fs::write(&config, text).unwrap();
    Env {
        emu,
        dir: tmp,
        db,
        client,
        config,
        mapping,
    }
}

fn stats_path(env: &Env) -> PathBuf {
    env.dir.path().join("stats.json")
}

fn run(env: &Env) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_sfsync"))
            .args(["run", "--progress-secs", "0", "--stats-file"])
            .arg(stats_path(env))
            .arg("--config")
            .arg(&env.config)
            .env(
                "SFSYNC_LOG",
                std::env::var("POLL_BULK_E2E_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning sfsync run"),
    )
}

/// A counter of the running process's stats file (0 before the first write).
fn counter(path: &Path, name: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<J>(&t).ok())
        .and_then(|s| s[name].as_u64())
        .unwrap_or(0)
}

fn exec(env: &Env, ops: Vec<DmlOp>) -> Vec<String> {
    accounts::exec(&env.emu, ops, None)
}

fn inserts(prefix: &str, n: usize) -> Vec<DmlOp> {
    accounts::inserts_with(
        prefix,
        n,
        |i| json!({ "AnnualRevenue": (i * 7) as f64 + 0.5, "NumberOfEmployees": i as i64 }),
    )
}

fn deletes(ids: &[String]) -> Vec<DmlOp> {
    ids.iter()
        .map(|id| DmlOp::Delete { id: id.clone() })
        .collect()
}

async fn open(env: &Env) -> Arc<SqliteChangeLog> {
    let s = SqliteChangeLog::open(&env.db).await.unwrap();
    s.ensure_model(&env.mapping.model).await.unwrap();
    Arc::new(s)
}

async fn cursor(store: &SqliteChangeLog) -> Option<Cursor> {
    store
        .checkpoint(CHANNEL)
        .await
        .unwrap()
        .map(|r| Cursor::from_replay_id(&r).expect("a poll cursor"))
}

/// The Bulk query jobs the org has seen: queryAll jobs on Account.
async fn bulk_jobs(env: &Env) -> usize {
    env.client
        .bulk()
        .list_jobs(JobKind::Query)
        .await
        .unwrap()
        .iter()
        .filter(|j| {
            j.object.as_deref() == Some("Account") && j.operation.as_deref() == Some("queryAll")
        })
        .count()
}

/// The org's newest SystemModstamp of Account (deleted rows too).
async fn newest_stamp(env: &Env) -> i64 {
    let page = env
        .client
        .query_page(
            "SELECT SystemModstamp FROM Account ORDER BY SystemModstamp DESC LIMIT 1",
            &sfsync_salesforce::rest::QueryOptions {
                include_deleted: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    sfsync_pipeline::convert::parse_datetime(page.records[0]["SystemModstamp"].as_str().unwrap())
        .unwrap()
}

async fn wait_equal(env: &Env, store: &SqliteChangeLog, deleted: &BTreeSet<String>, what: &str) {
    let within = Duration::from_secs(120);
    accounts::wait_equal(&env.client, &env.mapping, store, deleted, within, what).await;
}

/// Raw-log entries of the poll channel; panics if one (Id, SystemModstamp) is logged twice.
async fn logged(store: &SqliteChangeLog) -> usize {
    let keys: Vec<String> = store
        .read_from(0, 10_000_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.channel == CHANNEL)
        .map(|l| l.change.event_key.as_str().to_string())
        .collect();
    let distinct: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "a polled row was logged twice");
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_poll_backlogs_are_read_through_bulk_and_converge() {
    let env = env().await;
    let store = open(&env).await;
    let stats = stats_path(&env);
    let mut deleted: BTreeSet<String> = BTreeSet::new();

    // Phase 1: a backlog before the start — a 2,500-row tie, small transactions, updates,
    // deletes.
    let tie = exec(&env, inserts("Tie", 2_500));
    let mut small = Vec::new();
    for b in 0..10 {
        small.extend(exec(&env, inserts(&format!("Small {b}"), 100)));
    }
    exec(&env, updates(&tie[..200], json!({ "Name": "Renamed" })));
    exec(&env, deletes(&small[..50]));
    deleted.extend(small[..50].iter().cloned());
    assert_eq!(bulk_jobs(&env).await, 0);
    let child = run(&env);
    wait_equal(&env, &store, &deleted, "the backlog lands").await;
    assert_eq!(bulk_jobs(&env).await, 1, "one Bulk queryAll job read it");
    assert_eq!(counter(&stats, "poll_bulk_jobs"), 1);
    assert!(
        counter(&stats, "poll_bulk_rows") >= 3_000,
        "most rows came through Bulk: {}",
        counter(&stats, "poll_bulk_rows")
    );
    // Polling sees each record as of its newest stamp: one entry per record, once.
    assert_eq!(logged(&store).await, 3_500);
    let c = cursor(&store).await.unwrap();
    assert_eq!(c.modstamp_ms, newest_stamp(&env).await, "cursor at the tip");
    let row = store.read_current("Account").await.unwrap().remove(0);
    assert_eq!(row.meta.source, sfsync_store::ChangeSource::Poll);

    // Phase 2: a backlog while running — a 2,400-row update in one transaction, deletes and
    // undeletes.
    exec(
        &env,
        updates(&tie[100..2_500], json!({ "Name": "Bulk tie" })),
    );
    exec(&env, deletes(&tie[..30]));
    exec(
        &env,
        small[..10]
            .iter()
            .map(|id| DmlOp::Undelete { id: id.clone() })
            .collect(),
    );
    deleted.extend(tie[..30].iter().cloned());
    for id in &small[..10] {
        deleted.remove(id);
    }
    wait_equal(&env, &store, &deleted, "the running backlog lands").await;
    assert_eq!(bulk_jobs(&env).await, 2, "a second Bulk job");
    logged(&store).await;

    // Phase 3: a slow job, watched, then SIGKILL mid-job.
    env.emu.state.faults.set(FaultConfig {
        latency_ms: 400,
        ..Default::default()
    });
    let before = cursor(&store).await.unwrap();
    let logged_before = logged(&store).await;
    // One transaction: a round cannot see part of it, decide for REST, then read the rest.
    let mut ops = updates(&small[50..], json!({ "Name": "Slow" }));
    ops.extend(updates(&tie[30..2_500], json!({ "Name": "Slow tie" })));
    exec(&env, ops);
    let upper = newest_stamp(&env).await;
    let top = small[50..].iter().chain(&tie[30..]).max().unwrap().clone();
    // The window is that one transaction's millisecond: the job is done when the cursor
    // stands at its highest Id.
    let end = Cursor {
        modstamp_ms: upper,
        id: top,
    };
    // Rows of the job are committed (beyond the first keyset page) while the stored cursor
    // has not reached the window's end.
    wait_for(
        "Bulk rows committed with the cursor before the window's end",
        Duration::from_secs(60),
        || async {
            let n = logged(&store).await - logged_before;
            let c = cursor(&store).await.unwrap();
            if n >= 300 + 500 && c < end && bulk_jobs(&env).await == 3 {
                vec![]
            } else {
                vec![format!(
                    "{n} new entries, cursor {c:?} (before {before:?}, window end {end:?})"
                )]
            }
        },
    )
    .await;
    drop(child);
    env.emu.state.faults.set(FaultConfig::default());
    let child = run(&env);
    wait_equal(&env, &store, &deleted, "the killed window lands").await;
    assert_eq!(bulk_jobs(&env).await, 4, "the window is read again");
    assert_eq!(cursor(&store).await.unwrap(), end);
    logged(&store).await;

    // Phase 4: Bulk refused → the round goes on through REST pages.
    env.emu.state.faults.set(FaultConfig {
        rules: vec![FaultRule {
            path_contains: "/jobs/query".into(),
            method: Some("POST".into()),
            kind: FaultKind::QueryTimeout,
            rate: 1.0,
            max_count: None,
            fired: 0,
        }],
        ..Default::default()
    });
    exec(
        &env,
        updates(&tie[40..2_500], json!({ "Name": "Through REST" })),
    );
    wait_equal(
        &env,
        &store,
        &deleted,
        "REST reads the backlog Bulk refused",
    )
    .await;
    assert_eq!(bulk_jobs(&env).await, 4, "no job was created");
    env.emu.state.faults.set(FaultConfig::default());

    // Phase 5: a small backlog (two keyset pages, below the threshold): no job.
    exec(
        &env,
        updates(&tie[50..700], json!({ "Name": "Small backlog" })),
    );
    wait_equal(&env, &store, &deleted, "a small backlog lands").await;
    assert_eq!(bulk_jobs(&env).await, 4);
    logged(&store).await;
    stop(child);
}
