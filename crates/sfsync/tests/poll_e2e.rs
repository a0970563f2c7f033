//! Polling (`mode = "poll"`) end to end: `sfsync run` (a child process, SQLite warehouse) reads
//! Account from the emulator over loopback TLS through SOQL `queryAll` by SystemModstamp.
//!
//! `polling_loses_nothing_at_the_cursor_boundary`:
//! - 450 records committed in ONE transaction (one SystemModstamp millisecond) are read across
//!   several keyset pages (`poll_page_records = 300`, each read in queryMore pages of 200) and
//!   all land, once;
//! - late commits — a transaction stamped before the poller's cursor that becomes visible after
//!   the cursor passed it (commit-order skew) — land through the overlap window;
//! - deletes (queryAll `IsDeleted`) and undeletes land;
//! - a graceful restart with changes (ties again, a delete, a late commit behind the stored
//!   cursor) made while sfsync is down, and a SIGKILL in the middle of reading a large tie,
//!   resume from the checkpoint with no loss and no duplicate: every raw-log entry is a distinct
//!   (Id, SystemModstamp), no history version repeats its predecessor, and records untouched
//!   since the first phase keep exactly one history version;
//! - at the end the curated state equals the org (live rows column by column, deleted rows
//!   flagged), rows carry source `poll`, and `sync_status` reports the object current;
//! - `/metrics` reports the flow as polled (`sfsync_flow_mode` 1) with its rounds, rows read and
//!   appended, duplicates dropped (the overlap re-reads), API calls, cursor lag and last round
//!   moving, and `GET /api/v1/map` gives the polled flow's live state.

mod support;

use support::accounts::{self, inserts, updates};
use support::api::{free_port, Api};
use support::{metric_value, stop, wait_for, KillOnDrop};

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sfsync_emulator::RunningEmulator;
use sfsync_org::DmlOp;
use sfsync_pipeline::poll::Cursor;
use sfsync_pipeline::ObjectMapping;
use sfsync_salesforce::SalesforceClient;
use sfsync_store::{ChangeLog, SqliteChangeLog, SyncStatusStore, Warehouse};

const CHANNEL: &str = "/poll/Account";
const VIEWER: &str = "viewer-token-0123456789abcdef";
/// The labels of the polled flow's series.
const LABELS: &str = "{channel=\"/poll/Account\",object=\"Account\"}";

struct Env {
    emu: RunningEmulator,
    _dir: tempfile::TempDir,
    db: PathBuf,
    client: SalesforceClient,
    config: PathBuf,
    mapping: ObjectMapping,
    api: Api,
}

async fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (emu, client) = support::emulator(&dir).await;
    let d = client.describe_object("Account").await.unwrap();
    // As the config below: full history.
    let mut spec = sfsync_pipeline::ObjectSpec::new("Account");
    spec.history = sfsync_pipeline::HistoryFields::All;
    let mapping = ObjectMapping::build(&d, &spec).unwrap();
    let db = dir.join("wh.db");
    let config = dir.join("sfsync.toml");
    std::fs::write(dir.join("viewer.token"), VIEWER).unwrap();
    let port = free_port();
    let text = format!(
        r#"[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"

[[objects]]
name = "Account"
mode = "poll"
history = {{ fields = "all" }}

[warehouse]
type = "sqlite"
path = "{db}"

[pipeline]
batch_max_records = 500
batch_max_wait_ms = 50
backfill_new_objects = false
poll_interval_secs = 1
poll_overlap_secs = 30
poll_page_records = 300

[freshness]
update_every_secs = 1

[api]
listen = "127.0.0.1:{port}"

[[api.tokens]]
name = "viewer"
role = "viewer"
token_file = "viewer.token"
"#,
        creds = emu.credentials_path.display(),
        ca = emu.ca_pem_path.display(),
        db = db.display(),
    );
    std::fs::write(&config, text).unwrap();
    Env {
        emu,
        _dir: tmp,
        db,
        client,
        config,
        mapping,
        api: Api {
            http: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{port}"),
        },
    }
}

/// The polled flow's figures on `/metrics`: rounds, rows read, appended, duplicates dropped,
/// API calls, cursor lag, last round (Unix s), flow mode.
async fn poll_metrics(env: &Env) -> (String, [Option<f64>; 8]) {
    let (status, text) = env
        .api
        .call_text("GET", "/metrics", Some(VIEWER), None)
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{text}");
    let v = |name: &str| metric_value(&text, &format!("{name}{LABELS}"));
    let values = [
        v("sfsync_poll_rounds_total"),
        v("sfsync_poll_rows_read_total"),
        v("sfsync_poll_rows_appended_total"),
        v("sfsync_poll_duplicates_dropped_total"),
        v("sfsync_poll_api_calls_total"),
        v("sfsync_poll_cursor_lag_seconds"),
        v("sfsync_poll_last_round_timestamp_seconds"),
        v("sfsync_flow_mode"),
    ];
    (text, values)
}

fn run(env: &Env) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_sfsync"))
            .args(["run", "--progress-secs", "0", "--config"])
            .arg(&env.config)
            .env("SFSYNC_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning sfsync run"),
    )
}

fn exec(env: &Env, ops: Vec<DmlOp>, stamped_ms: Option<i64>) -> Vec<String> {
    accounts::exec(&env.emu, ops, stamped_ms)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The org's SystemModstamp of a record (queryAll, so deleted ones too).
async fn modstamp(env: &Env, id: &str) -> i64 {
    let rows = env
        .client
        .query_all_pages(
            &format!("SELECT Id, SystemModstamp FROM Account WHERE Id = '{id}'"),
            sfsync_salesforce::rest::QueryOptions {
                include_deleted: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    sfsync_pipeline::convert::parse_datetime(rows[0]["SystemModstamp"].as_str().unwrap()).unwrap()
}

async fn open(env: &Env) -> Arc<SqliteChangeLog> {
    let s = SqliteChangeLog::open(&env.db).await.unwrap();
    s.ensure_model(&env.mapping.model).await.unwrap();
    Arc::new(s)
}

/// The poller's stored cursor.
async fn cursor(store: &SqliteChangeLog) -> Option<Cursor> {
    store
        .checkpoint(CHANNEL)
        .await
        .unwrap()
        .map(|r| Cursor::from_replay_id(&r).expect("a poll cursor"))
}

async fn diff(env: &Env, store: &SqliteChangeLog, deleted: &BTreeSet<String>) -> Vec<String> {
    accounts::diff(&env.client, &env.mapping, store, deleted).await
}

async fn wait_equal(env: &Env, store: &SqliteChangeLog, deleted: &BTreeSet<String>, what: &str) {
    let within = Duration::from_secs(90);
    accounts::wait_equal(&env.client, &env.mapping, store, deleted, within, what).await;
}

/// Raw-log entries of the poll channel: (event key, SystemModstamp) — every one distinct.
async fn logged(store: &SqliteChangeLog) -> Vec<String> {
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
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_loses_nothing_at_the_cursor_boundary() {
    let env = env().await;
    let store = open(&env).await;
    let mut deleted: BTreeSet<String> = BTreeSet::new();

    // Phase 1: a tie larger than a keyset page (and than a queryMore page).
    let tie = exec(&env, inserts("Tie", 450), None);
    let tie_ms = modstamp(&env, &tie[0]).await;
    assert_eq!(
        modstamp(&env, &tie[449]).await,
        tie_ms,
        "one transaction, one stamp"
    );
    let child = run(&env);
    wait_equal(&env, &store, &deleted, "the 450 tied records land").await;
    assert_eq!(logged(&store).await.len(), 450);
    let c = cursor(&store).await.expect("a stored cursor");
    assert_eq!(c.modstamp_ms, tie_ms);
    assert_eq!(
        c.id,
        *tie.iter().max().unwrap(),
        "the cursor is at the tie's last Id"
    );
    let row = store.read_current("Account").await.unwrap().remove(0);
    assert_eq!(row.meta.source, sfsync_store::ChangeSource::Poll);

    // The flow on /metrics: polled (mode 1), the tie read and appended, calls counted (at
    // least the two keyset queries of 300 and 150 rows), the cursor at the tie.
    env.api.ready().await;
    let (text, first) = poll_metrics(&env).await;
    let [rounds, read, appended, _, calls, lag, last_round, mode] = first;
    assert_eq!(
        mode,
        Some(1.0),
        "flow mode of a mode = \"poll\" object:\n{text}"
    );
    assert!(rounds >= Some(1.0), "{text}");
    assert!(read >= Some(450.0), "{text}");
    assert!(appended >= Some(450.0), "{text}");
    assert!(calls >= Some(2.0), "{text}");
    let lag = lag.expect("a cursor lag");
    let tie_age = (now_ms() - tie_ms) as f64 / 1000.0;
    assert!(
        lag >= 0.0 && lag <= tie_age + 1.0,
        "cursor lag {lag} s, tie {tie_age} s ago"
    );
    assert!(last_round.unwrap() * 1000.0 >= tie_ms as f64, "{text}");
    for family in [
        "sfsync_flow_mode gauge",
        "sfsync_poll_rounds_total counter",
        "sfsync_poll_cursor_lag_seconds gauge",
        "sfsync_poll_lag_bound_seconds gauge",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}\n")),
            "{family}: {text}"
        );
    }
    // Interval 1 s, overlap 30 s: the bound is 2 × 1 + 30.
    assert_eq!(
        metric_value(&text, &format!("sfsync_poll_lag_bound_seconds{LABELS}")),
        Some(32.0)
    );
    // The map's polled flow: interval and overlap, and its live state.
    let map = env.api.get("/api/v1/map", VIEWER).await;
    let flow = support::flow(&map, "polling", None, "Account");
    assert_eq!(flow["frequency"], "every 1 s (overlap 30 s)", "{flow}");
    assert_eq!(flow["live"]["mode"], "poll", "{flow}");
    assert_eq!(flow["live"]["channel"], CHANNEL, "{flow}");
    assert!(
        flow["live"]["poll"]["rounds"].as_u64().unwrap() >= 1,
        "{flow}"
    );
    assert!(flow["live"]["poll"]["last_round_at"].is_string(), "{flow}");
    // Its health on /api/v1/flows comes from the object's freshness (sync_status, written
    // every few seconds), as a stream's does.
    wait_for(
        "the polled flow is healthy on /api/v1/flows",
        Duration::from_secs(20),
        || async {
            let flows = env.api.get("/api/v1/flows", VIEWER).await;
            let flow = support::flow(&flows, "polling", None, "Account");
            if flow["health"] == "green" && flow["lag_seconds"].is_number() {
                vec![]
            } else {
                vec![format!("{flow}")]
            }
        },
    )
    .await;

    // Phase 2: late commits inside the overlap window. A fresh update moves the cursor to
    // now; then transactions stamped 5 s before it become visible (behind the cursor).
    // (At least 6 s after the tie, so the late commit below is newer than it.)
    let wait = (tie_ms + 6_000 - now_ms()).max(1_200);
    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    let fresh = exec(&env, updates(&tie[..3], json!({ "Name": "Fresh" })), None);
    let fresh_ms = modstamp(&env, &fresh[0]).await;
    wait_for(
        "the cursor passes the fresh update",
        Duration::from_secs(30),
        || async {
            match cursor(&store).await {
                Some(c) if c.modstamp_ms >= fresh_ms => vec![],
                c => vec![format!("cursor {c:?}, fresh update at {fresh_ms}")],
            }
        },
    )
    .await;
    let late_ms = fresh_ms - 5_000;
    assert!(late_ms > tie_ms, "the late commit is newer than the tie");
    let late_new = exec(&env, inserts("Late", 3), Some(late_ms));
    exec(
        &env,
        updates(&tie[10..12], json!({ "Name": "Late update" })),
        Some(late_ms),
    );
    wait_equal(
        &env,
        &store,
        &deleted,
        "late commits land through the overlap",
    )
    .await;
    assert_eq!(modstamp(&env, &late_new[0]).await, late_ms);

    // Phase 3: deletes, then undeletes of some of them.
    let gone: Vec<String> = tie[20..25].to_vec();
    exec(
        &env,
        gone.iter()
            .map(|id| DmlOp::Delete { id: id.clone() })
            .collect(),
        None,
    );
    deleted.extend(gone.iter().cloned());
    wait_equal(&env, &store, &deleted, "deletes land").await;
    exec(
        &env,
        gone[..2]
            .iter()
            .map(|id| DmlOp::Undelete { id: id.clone() })
            .collect(),
        None,
    );
    for id in &gone[..2] {
        deleted.remove(id);
    }
    wait_equal(&env, &store, &deleted, "undeletes land").await;
    let before = accounts::history(&store).await;
    // The counters moved: more rounds, rows and calls; the overlap's re-reads (the fresh
    // update and late commits sit within 30 s of the cursor) were dropped as duplicates.
    let (text, now) = poll_metrics(&env).await;
    for (i, what) in ["rounds", "rows read", "rows appended", "", "API calls"]
        .iter()
        .enumerate()
    {
        if !what.is_empty() {
            assert!(
                now[i] > first[i],
                "{what} did not move: {first:?} → {now:?}\n{text}"
            );
        }
    }
    assert!(now[3] > Some(0.0), "no duplicates dropped: {text}");
    assert!(now[6] > first[6], "the last round did not move: {text}");
    assert_eq!(now[7], Some(1.0));

    // Queries refused for a while: the rounds fail, and their calls still count (Salesforce
    // counted them against the org's limits).
    let failing = |rate: f64| sfsync_emulator::faults::FaultConfig {
        rules: vec![sfsync_emulator::faults::FaultRule {
            path_contains: "/query".into(),
            method: None,
            kind: sfsync_emulator::faults::FaultKind::QueryTimeout,
            rate,
            max_count: None,
            fired: 0,
        }],
        ..Default::default()
    };
    env.emu.state.faults.set(failing(1.0));
    // A round that started before the rule may still finish: settle, then measure.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (_, during0) = poll_metrics(&env).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (text, during) = poll_metrics(&env).await;
    env.emu.state.faults.set(Default::default());
    assert_eq!(during[0], during0[0], "no round succeeds: {text}");
    assert!(
        during[4] > during0[4],
        "failed rounds' calls are counted: {during0:?} → {during:?}\n{text}"
    );
    stop(child);

    // Phase 4: changes while sfsync is down — ties again, a delete, and a late commit stamped
    // before the stored cursor — then a restart from the checkpoint.
    let stored = cursor(&store).await.unwrap();
    exec(
        &env,
        updates(&tie[100..200], json!({ "Name": "While down" })),
        None,
    );
    exec(
        &env,
        vec![DmlOp::Delete {
            id: tie[30].clone(),
        }],
        None,
    );
    deleted.insert(tie[30].clone());
    let down_late = exec(
        &env,
        inserts("Late while down", 2),
        Some(stored.modstamp_ms - 2_000),
    );
    let child = run(&env);
    wait_equal(
        &env,
        &store,
        &deleted,
        "changes made while down land after the restart",
    )
    .await;

    // Phase 5: SIGKILL while a large tie is being read, then a restart.
    let big: Vec<String> = tie[..300]
        .iter()
        .filter(|id| !deleted.contains(*id))
        .cloned()
        .collect();
    exec(&env, updates(&big, json!({ "Name": "Big tie" })), None);
    let more = exec(&env, inserts("More", 700), None);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    drop(child);
    let child = run(&env);
    wait_equal(&env, &store, &deleted, "everything lands after a SIGKILL").await;
    // One more round over the overlap changes nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(diff(&env, &store, &deleted).await.is_empty());

    let keys = logged(&store).await;
    assert!(keys.len() >= 450 + 3 + 3 + 2 + 5 + 2 + 100 + 1 + 2 + big.len() + 700);
    let after = accounts::history(&store).await;
    // Records untouched since phase 1 kept exactly their one version through every overlap
    // re-read, restart and SIGKILL.
    for id in &tie[300..] {
        assert_eq!(
            before.get(id),
            Some(&1),
            "{id}: one version before the restarts"
        );
        assert_eq!(
            after.get(id),
            Some(&1),
            "{id}: one version after the restarts"
        );
    }
    for id in late_new.iter().chain(&down_late).chain(&more) {
        assert_eq!(after.get(id), Some(&1), "{id}: one version");
    }
    for id in &tie[40..60] {
        // Created, then renamed to "Big tie" once.
        assert_eq!(after.get(id), Some(&2), "{id}: two versions");
    }

    // The flow's state: current (polled to the tip), read through `sync_status`.
    wait_for(
        "sync_status reports Account current",
        Duration::from_secs(20),
        || async {
            let rows = store.sync_status(None).await.unwrap();
            rows.iter()
                .filter(|r| {
                    r.state.object != "Account"
                        || r.status != sfsync_store::FreshnessStatus::Current
                })
                .map(|r| format!("{}: {:?} ({})", r.state.object, r.status, r.status_reason))
                .chain(rows.is_empty().then(|| "no rows".to_string()))
                .collect()
        },
    )
    .await;
    stop(child);
}
