//! `sfsync replay` end to end, with `sfsync run` and the CLI as real child processes against the
//! emulator over loopback TLS (SQLite warehouse). Curated rows are damaged behind the pipeline's
//! back (SQL on the warehouse file) and replays must bring them back to the org's state:
//! 1. by time window, from the raw log — values, a regressed version, a deleted flag and a row
//!    deleted outright — without adding a history row;
//! 2. by record ids whose raw events are gone (deleted from the raw log, as pruning would):
//!    re-read from Salesforce; one with retained events from the log; an id that exists nowhere
//!    is not invented;
//! 3. from a replay id: exactly the records changed from that event on; an unknown replay id
//!    fails with the oldest retained one and a `--since` suggestion;
//! 4. a window older than the raw log: re-read from Salesforce (Bulk queryAll);
//! 5. while `sfsync run` streams (the replay followed with its progress bar) and afterwards:
//!    streaming stays exactly once (one history version per tracked change, none twice).
//!
//! A second test kills a replay mid-way; `sfsync run` resumes it without rebuilding a record
//! twice.

mod support;

use support::{stop, wait_for, KillOnDrop};

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value as J};
use sfsync_emulator::RunningEmulator;
use sfsync_org::{ApiKind, CallContext, DmlOp};
use sfsync_pipeline::replay::ReplayReport;
use sfsync_pipeline::{ObjectMapping, ObjectSpec};
use sfsync_salesforce::SalesforceClient;
use sfsync_store::{
    HistoryRow, SqliteChangeLog, SyncJob, SyncJobFilter, SyncJobKind, SyncJobStatus, Warehouse,
};

const CHANNEL: &str = "/data/AccountChangeEvent";

struct Env {
    emu: RunningEmulator,
    _dir: tempfile::TempDir,
    db: PathBuf,
    client: SalesforceClient,
    mapping: ObjectMapping,
    config: PathBuf,
}

async fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (emu, client) = support::emulator(&dir).await;
    let d = client.describe_object("Account").await.unwrap();
    let mut spec = ObjectSpec::new("Account");
    spec.history = sfsync_pipeline::HistoryFields::Fields(vec!["Name".into(), "Type".into()]);
    let mapping = ObjectMapping::build(&d, &spec).unwrap();
    let db = dir.join("wh.db");
    let config = dir.join("sfsync.toml");
    let text = format!(
        r#"[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"

[[objects]]
name = "Account"
history = {{ fields = ["Name", "Type"] }}

[warehouse]
type = "sqlite"
path = "{db}"

[pipeline]
batch_max_records = 200
batch_max_wait_ms = 50
backfill_new_objects = false
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
        mapping,
        config,
    }
}

fn spawn(env: &Env, args: &[&str]) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_sfsync"))
            .args(args)
            .arg("--config")
            .arg(&env.config)
            .env("USER", "test-operator")
            .env("SFSYNC_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning sfsync"),
    )
}

fn run(env: &Env) -> KillOnDrop {
    spawn(env, &["run", "--progress-secs", "0"])
}

fn cli(env: &Env, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sfsync"))
        .args(args)
        .arg("--config")
        .arg(&env.config)
        .env("USER", "test-operator")
        .env("SFSYNC_LOG", "warn")
        .output()
        .expect("running the sfsync CLI");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn open(env: &Env) -> Arc<dyn Warehouse> {
    let store: Arc<dyn Warehouse> = Arc::new(SqliteChangeLog::open(&env.db).await.unwrap());
    store.ensure_model(&env.mapping.model).await.unwrap();
    store
}

fn ctx(env: &Env) -> CallContext {
    CallContext {
        user_id: env.emu.org().admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: Some("someone-else".into()),
    }
}

/// One update, in a transaction of its own (so its change event carries this record only).
fn update(env: &Env, id: &str, fields: J) {
    let ops = vec![DmlOp::Update {
        object: "Account".into(),
        id: id.into(),
        fields: fields.as_object().unwrap().clone(),
    }];
    for r in env.emu.org().execute(&ctx(env), ops, true) {
        r.expect("update succeeds");
    }
}

fn insert(env: &Env, fields: J) -> String {
    let ops = vec![DmlOp::Insert {
        object: "Account".into(),
        fields: fields.as_object().unwrap().clone(),
    }];
    env.emu
        .org()
        .execute(&ctx(env), ops, true)
        .remove(0)
        .expect("insert succeeds")
        .id()
        .to_string()
}

/// SQL on the warehouse file, behind the pipeline's back.
fn damage(env: &Env, sql: &str, id: &str) {
    let conn = rusqlite::Connection::open(&env.db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let n = conn.execute(sql, [id]).unwrap();
    assert_eq!(n, 1, "{sql} for {id}");
}

/// Deletes a record's changes from the raw log, as retention pruning would.
fn prune(env: &Env, id: &str) -> usize {
    let conn = rusqlite::Connection::open(sfsync_store::sqlite::change_log_path(&env.db)).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute(
        "DELETE FROM raw_changes WHERE event_key LIKE '%/' || ?1",
        [id],
    )
    .unwrap()
}

fn text(env: &Env, sql: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(&env.db).unwrap();
    let log = sfsync_store::sqlite::change_log_path(&env.db);
    conn.execute_batch(&format!(
        "ATTACH '{}' AS changes; CREATE TEMP VIEW raw_changes AS SELECT * FROM changes.raw_changes;",
        log.display()
    ))
    .unwrap();
    let mut st = conn.prepare(sql).unwrap();
    let rows = st.query_map([], |r| r.get::<_, String>(0)).unwrap();
    rows.map(|r| r.unwrap()).collect()
}

/// The commit time of the oldest change the raw log retains (RFC 3339): a window starting there
/// is within the log (an older start is re-read from Salesforce). The log is read with a fresh
/// connection; it is retried for a while so a reader racing the last commit of the stopped
/// pipeline sees it, and a log that stays empty fails with what was read.
fn log_start(env: &Env) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let conn =
            rusqlite::Connection::open(sfsync_store::sqlite::change_log_path(&env.db)).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        let (n, min): (i64, Option<i64>) = conn
            .query_row(
                "SELECT count(*), min(commit_timestamp) FROM raw_changes",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        match min {
            Some(ms) => return sfsync_pipeline::replay::ts(ms),
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            None => panic!("the raw log holds {n} changes and no commit time after 30 s"),
        }
    }
}

/// Differences between the org's live Accounts and the warehouse's live rows.
async fn diff(env: &Env, store: &dyn Warehouse) -> Vec<String> {
    support::live_diff(&env.client, &env.mapping, store).await
}

/// SCD2 history well-formed: versions 1..n per record, one current at most (the last), windows
/// closed in order without overlap, and no change historised twice.
fn history_problems(history: &[HistoryRow]) -> Vec<String> {
    let mut by_id: BTreeMap<&str, Vec<&HistoryRow>> = BTreeMap::new();
    for h in history {
        by_id.entry(&h.id).or_default().push(h);
    }
    let mut problems = Vec::new();
    for (id, versions) in by_id {
        let mut seen = BTreeSet::new();
        for (i, h) in versions.iter().enumerate() {
            if h.version != i as i64 + 1 {
                problems.push(format!("{id}: version {} at position {}", h.version, i + 1));
            }
            if !seen.insert((h.valid_from_ms, h.transaction_key.clone())) {
                problems.push(format!(
                    "{id}: the change of {} at {} is historised twice",
                    h.transaction_key, h.valid_from_ms
                ));
            }
            if h.is_current && i + 1 != versions.len() {
                problems.push(format!(
                    "{id}: version {} is current but not the last",
                    h.version
                ));
            }
        }
        for w in versions.windows(2) {
            match w[0].valid_to_ms {
                Some(to) if to <= w[1].valid_from_ms && to >= w[0].valid_from_ms => {}
                other => problems.push(format!(
                    "{id}: version {} ends at {other:?}, version {} starts at {}",
                    w[0].version, w[1].version, w[1].valid_from_ms
                )),
            }
        }
    }
    problems
}

/// The history is exactly as it was (versions, windows, values).
fn same_history(now: &[HistoryRow], before: &[HistoryRow], what: &str) {
    if now != before {
        let added: Vec<&HistoryRow> = now.iter().filter(|h| !before.contains(h)).collect();
        let gone: Vec<&HistoryRow> = before.iter().filter(|h| !now.contains(h)).collect();
        panic!(
            "{what}: {} rows before, {} now\nnew or changed: {added:#?}\ngone: {gone:#?}\n{:?}",
            before.len(),
            now.len(),
            history_problems(now)
        );
    }
}

async fn replays(store: &dyn Warehouse) -> Vec<SyncJob> {
    store
        .sync_jobs(&SyncJobFilter {
            kind: Some(SyncJobKind::Replay),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// The newest replay job, succeeded, with its report.
async fn last_replay(store: &dyn Warehouse, out: &str) -> (SyncJob, ReplayReport) {
    let job = replays(store).await.pop().expect("a replay job");
    assert_eq!(job.status, SyncJobStatus::Succeeded, "{job:?}\n{out}");
    let report: ReplayReport =
        serde_json::from_str(job.report.as_deref().expect("a report")).expect("report parses");
    (job, report)
}

/// Waits until the warehouse equals the org, its history well-formed; `sfsync run` (`child`)
/// exiting on the way is named among the problems.
async fn converged(env: &Env, store: &dyn Warehouse, child: &mut KillOnDrop, what: &str) {
    let child = std::sync::Mutex::new(child);
    let child = &child;
    wait_for(what, Duration::from_secs(90), || async move {
        let mut p = Vec::new();
        if let Ok(Some(status)) = child.lock().unwrap().0.try_wait() {
            p.push(format!(
                "sfsync run exited with {status} (its stderr is above)"
            ));
        }
        p.extend(diff(env, store).await);
        p.extend(history_problems(
            &store.read_history("Account").await.unwrap(),
        ));
        p
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_damaged_rows_from_the_raw_log_or_salesforce() {
    let env = env().await;
    let ids: Vec<String> = env
        .emu
        .org()
        .seed(&ctx(&env), "Account", 40, 21)
        .unwrap()
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    for (i, id) in ids.iter().enumerate().take(12) {
        update(&env, id, json!({ "Name": format!("Renamed {i}") }));
    }
    update(&env, &ids[5], json!({ "Type": "Partner" }));
    update(&env, &ids[5], json!({ "BillingCity": "Ogdenville" }));
    let mut child = run(&env);
    let store = open(&env).await;
    converged(
        &env,
        &*store,
        &mut child,
        "the stream applies the org's history",
    )
    .await;
    stop(child);
    let history_before = store.read_history("Account").await.unwrap();
    // Every create and every Name/Type change is one version: no more, no less.
    assert_eq!(history_before.len(), 40 + 12 + 1, "{history_before:?}");

    // 1. Damage behind the pipeline's back, then replay the last hour from the raw log.
    damage(
        &env,
        "UPDATE sf_account SET name = 'damaged', type = 'damaged', billingcity = 'damaged' \
         WHERE id = ?1",
        &ids[0],
    );
    damage(
        &env,
        "UPDATE sf_account SET name = 'old', _sf_commit_ms = 0, _sf_commit_number = 0 \
         WHERE id = ?1",
        &ids[1],
    );
    damage(
        &env,
        "UPDATE sf_account SET _sf_deleted = 1 WHERE id = ?1",
        &ids[2],
    );
    damage(&env, "DELETE FROM sf_account WHERE id = ?1", &ids[3]);
    damage(
        &env,
        "UPDATE sf_account SET billingcity = NULL, type = 'x' WHERE id = ?1",
        &ids[5],
    );
    assert!(!diff(&env, &*store).await.is_empty(), "the damage shows");
    let since = log_start(&env);
    let (ok, out) = cli(&env, &["replay", "Account", "--since", &since]);
    assert!(ok, "sfsync replay --since: {out}");
    assert!(out.contains("replay #"), "{out}");
    assert!(
        diff(&env, &*store).await.is_empty(),
        "{:?}",
        diff(&env, &*store).await
    );
    same_history(
        &store.read_history("Account").await.unwrap(),
        &history_before,
        "a replay adds no history row",
    );
    let (job, report) = last_replay(&*store, &out).await;
    assert_eq!(report.source, "raw_log", "{report:?}");
    assert_eq!(report.raw_log_records, 40, "{report:?}");
    assert_eq!(report.raw_log_changes, 40 + 14, "{report:?}");
    assert_eq!(report.salesforce_records, 0, "{report:?}");
    assert_eq!(job.counts.read, 40 + 14, "{job:?}");
    assert_eq!(
        job.counts.api_calls, 0,
        "nothing asked of Salesforce: {job:?}"
    );
    let run_id = job.run_id.clone().expect("the replay is a run");
    let runs = store.runs(50).await.unwrap();
    let r = runs
        .iter()
        .find(|r| r.run_id == run_id)
        .expect("the replay's run");
    assert_eq!(
        (r.kind.as_str(), r.status.as_str()),
        ("replay", "succeeded")
    );
    assert!(r.detail.contains("\"raw_log_records\":40"), "{}", r.detail);
    let rows: BTreeMap<String, sfsync_store::CurrentRow> = store
        .read_current("Account")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    assert_eq!(
        rows[&ids[0]].meta.run_id, run_id,
        "rows carry the replay's run"
    );
    assert!(
        rows[&ids[1]].meta.version.commit_timestamp > 0,
        "version restored"
    );
    assert_eq!(
        rows[&ids[3]].history_version,
        Some(2),
        "rebuilt onto its history"
    );
    assert_eq!(rows[&ids[5]].history_version, Some(3));
    let replayed = text(
        &env,
        &format!(
            "SELECT CAST(count(*) AS TEXT) FROM audit_log WHERE entry LIKE '%\"outcome\":\"replayed\"%' \
             AND entry LIKE '%{run_id}%'"
        ),
    );
    assert_eq!(replayed, vec![(40 + 14).to_string()], "audited as replayed");
    assert_eq!(store.verify_audit().await.unwrap().first_break, None);
    let (ok, listed) = cli(&env, &["jobs", "list"]);
    assert!(
        ok && listed.contains("replay") && listed.contains("succeeded"),
        "{listed}"
    );
    let (ok, shown) = cli(&env, &["jobs", "show", &job.id.to_string()]);
    assert!(ok && shown.contains("raw_log_records"), "{shown}");

    // 2. Record ids: two whose raw events are gone (re-read from Salesforce), one from the log,
    // one that exists nowhere.
    for id in &ids[6..8] {
        assert!(prune(&env, id) >= 2, "{id}: create and update pruned");
        damage(
            &env,
            "UPDATE sf_account SET name = 'damaged', billingcity = 'damaged' WHERE id = ?1",
            id,
        );
    }
    damage(
        &env,
        "UPDATE sf_account SET name = 'damaged' WHERE id = ?1",
        &ids[8],
    );
    // A well-formed Account id that exists nowhere.
    let nowhere = "0010Kx000000999QAA";
    let list = format!("{},{},{},{nowhere}", ids[6], ids[7], ids[8]);
    let (ok, out) = cli(&env, &["replay", "Account", "--ids", &list]);
    assert!(ok, "sfsync replay --ids: {out}");
    let problems = diff(&env, &*store).await;
    assert!(problems.is_empty(), "{problems:?}\n{out}");
    let (job, report) = last_replay(&*store, &out).await;
    assert_eq!(report.source, "raw_log+salesforce", "{report:?}");
    assert_eq!(report.raw_log_records, 1, "{report:?}");
    assert_eq!(report.salesforce_records, 3, "{report:?}");
    let sf: BTreeSet<&str> = report
        .sample_salesforce
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(
        sf,
        BTreeSet::from([ids[6].as_str(), ids[7].as_str(), nowhere])
    );
    assert!(job.reason.contains("4 record ids"), "{job:?}");
    assert!(
        store
            .load_current("Account", &[nowhere.to_string()])
            .await
            .unwrap()
            .is_empty(),
        "an id that exists nowhere is not invented"
    );
    same_history(
        &store.read_history("Account").await.unwrap(),
        &history_before,
        "re-reads continue the history without a new version",
    );

    // 3. From a replay id: the update of ids[9] and everything after it on the channel.
    let hex = text(
        &env,
        &format!(
            "SELECT lower(hex(replay_id)) FROM raw_changes WHERE change_type = 'UPDATE' \
             AND event_key LIKE '%/{}'",
            ids[9]
        ),
    );
    assert_eq!(hex.len(), 1, "{hex:?}");
    for id in [&ids[1], &ids[9], &ids[10]] {
        damage(
            &env,
            "UPDATE sf_account SET name = 'damaged' WHERE id = ?1",
            id,
        );
    }
    let (ok, out) = cli(
        &env,
        &["replay", "--from-replay-id", &hex[0], "--channel", CHANNEL],
    );
    assert!(ok, "sfsync replay --from-replay-id: {out}");
    let (_, report) = last_replay(&*store, &out).await;
    // ids[9], ids[10], ids[11] (updated after it) and ids[5] (its later Type and city updates).
    assert_eq!(report.raw_log_records, 4, "{report:?}");
    let problems = diff(&env, &*store).await;
    assert_eq!(
        problems,
        vec![format!(
            "Account {} name: warehouse Text(\"damaged\"), org Text(\"Renamed 1\")",
            ids[1]
        )],
        "exactly the records changed from that replay id on are rebuilt"
    );
    let (ok, out) = cli(&env, &["replay", "Account", "--ids", &ids[1]]);
    assert!(ok, "{out}");
    assert!(diff(&env, &*store).await.is_empty());
    // A record with a change waiting in the quarantine keeps its row until that is resolved.
    damage(
        &env,
        "UPDATE sf_account SET name = 'damaged' WHERE id = ?1",
        &ids[13],
    );
    store
        .commit_curated(
            "replay-test",
            None,
            &sfsync_store::CuratedBatch {
                quarantine: vec![sfsync_store::QuarantineEntry {
                    object: "Account".into(),
                    record_id: ids[13].clone(),
                    rule: "Name.regex".into(),
                    reason: "held by the test".into(),
                    parent: None,
                    event_key: format!("test/1/{}", ids[13]),
                    log_offset: Some(1),
                    commit_timestamp_ms: 1,
                    change: None,
                    alert_after_ms: None,
                    run_id: "replay-test".into(),
                }],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (ok, out) = cli(&env, &["replay", "Account", "--ids", &ids[13]]);
    assert!(ok, "{out}");
    let (_, report) = last_replay(&*store, &out).await;
    assert_eq!(
        (
            report.held_records,
            report.sample_held.clone(),
            report.source.as_str()
        ),
        (1, vec![ids[13].clone()], "none"),
        "{report:?}"
    );
    assert_eq!(
        diff(&env, &*store).await.len(),
        1,
        "left as it is while held"
    );
    let held: Vec<i64> = store
        .quarantine_list(&sfsync_store::QuarantineFilter::open_of(
            "Account",
            std::slice::from_ref(&ids[13]),
        ))
        .await
        .unwrap()
        .iter()
        .map(|q| q.id)
        .collect();
    store
        .quarantine_act(&held, sfsync_store::QuarantineAction::Discard, "test", "")
        .await
        .unwrap();
    let (ok, out) = cli(&env, &["replay", "Account", "--ids", &ids[13]]);
    assert!(ok, "{out}");
    assert!(
        diff(&env, &*store).await.is_empty(),
        "{:?}",
        diff(&env, &*store).await
    );
    // A replay id the raw log does not hold: the job fails, naming the oldest retained one.
    let oldest = text(
        &env,
        "SELECT lower(hex(replay_id)) FROM raw_changes ORDER BY log_offset LIMIT 1",
    );
    let (ok, out) = cli(
        &env,
        &[
            "replay",
            "--from-replay-id",
            "00ff00ff",
            "--channel",
            CHANNEL,
        ],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("replay id 00ff00ff is not in the raw log"),
        "{out}"
    );
    assert!(
        out.contains(&oldest[0]),
        "names the oldest retained replay id: {out}"
    );
    assert!(out.contains("--since"), "{out}");
    let failed = replays(&*store).await.pop().unwrap();
    assert_eq!(failed.status, SyncJobStatus::Failed);
    let (ok, out) = cli(
        &env,
        &[
            "replay",
            "--from-replay-id",
            "00",
            "--channel",
            "/data/Nope",
        ],
    );
    assert!(!ok && out.contains("--channel '/data/Nope'"), "{out}");

    // 4. A window older than the raw log: re-read from Salesforce through Bulk.
    damage(
        &env,
        "UPDATE sf_account SET name = 'damaged' WHERE id = ?1",
        &ids[12],
    );
    damage(
        &env,
        "UPDATE sf_account SET type = 'damaged' WHERE id = ?1",
        &ids[5],
    );
    let (ok, out) = cli(&env, &["replay", "Account", "--since", "30d"]);
    assert!(ok, "sfsync replay --since 30d: {out}");
    assert!(
        diff(&env, &*store).await.is_empty(),
        "{:?}",
        diff(&env, &*store).await
    );
    let (job, report) = last_replay(&*store, &out).await;
    assert_eq!(report.source, "salesforce", "{report:?}");
    assert!(
        report
            .salesforce_window_reason
            .as_deref()
            .is_some_and(|w| w.contains("after the window's start")),
        "{report:?}"
    );
    assert_eq!(
        report.salesforce_records, 40,
        "every Account modified since: {report:?}"
    );
    assert!(job.counts.api_calls > 0, "{job:?}");
    same_history(
        &store.read_history("Account").await.unwrap(),
        &history_before,
        "a window re-read from Salesforce adds no history row",
    );

    // 5. While streaming: the replay is carried out by `sfsync run` (followed with its
    // progress bar), changes keep arriving, and streaming stays exactly once afterwards.
    let mut child = run(&env);
    damage(
        &env,
        "UPDATE sf_account SET name = 'damaged' WHERE id = ?1",
        &ids[20],
    );
    let writer = {
        let org = env.emu.org().clone();
        let c = ctx(&env);
        let targets: Vec<String> = ids[0..8].to_vec();
        std::thread::spawn(move || {
            for round in 0..3 {
                for (i, id) in targets.iter().enumerate() {
                    let ops = vec![DmlOp::Update {
                        object: "Account".into(),
                        id: id.clone(),
                        fields: Map::from_iter([(
                            "Name".to_string(),
                            J::String(format!("Round {round} {i}")),
                        )]),
                    }];
                    for r in org.execute(&c, ops, true) {
                        r.expect("update succeeds");
                    }
                    std::thread::sleep(Duration::from_millis(15));
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, out) = cli(&env, &["replay", "Account", "--since", &since]);
    assert!(ok, "sfsync replay while streaming: {out}");
    assert!(out.contains("`sfsync run` is running"), "{out}");
    writer.join().unwrap();
    let new_id = insert(&env, json!({ "Name": "Brand new", "Type": "Prospect" }));
    update(&env, &ids[6], json!({ "Type": "Customer" }));
    converged(
        &env,
        &*store,
        &mut child,
        "streaming continues after the replay",
    )
    .await;
    let history = store.read_history("Account").await.unwrap();
    // 24 Name changes, one create, one Type change since: each exactly once.
    assert_eq!(
        history.len(),
        history_before.len() + 24 + 1 + 1,
        "{history:?}"
    );
    assert_eq!(
        history.iter().filter(|h| h.id == ids[6]).count(),
        2 + 3 + 1,
        "a record re-read from Salesforce streams on"
    );
    assert!(history.iter().any(|h| h.id == new_id && h.is_current));
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replay_resumes_without_rebuilding_a_record_twice() {
    let env = env().await;
    env.emu
        .org()
        .seed(&ctx(&env), "Account", 4_000, 22)
        .unwrap();
    let child = run(&env);
    let store = open(&env).await;
    wait_for(
        "the stream applies the seed",
        Duration::from_secs(120),
        || {
            let store = &*store;
            async move {
                let n = store.read_current("Account").await.unwrap().len();
                if n == 4_000 {
                    Vec::new()
                } else {
                    vec![format!("{n} rows")]
                }
            }
        },
    )
    .await;
    stop(child);
    // Damage a sample spread over the id order.
    let all: Vec<String> = store
        .read_current("Account")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    for id in all.iter().step_by(97) {
        damage(
            &env,
            "UPDATE sf_account SET name = 'damaged' WHERE id = ?1",
            id,
        );
    }
    // The CLI carries the replay out itself; it is killed once some chunks are committed.
    let since = log_start(&env);
    let replay = spawn(&env, &["replay", "Account", "--since", &since]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let killed_at = loop {
        if let Some(j) = replays(&*store).await.pop() {
            if j.status == SyncJobStatus::Running && j.counts.read >= 400 {
                break j;
            }
            assert!(
                j.status.is_open(),
                "the replay ended before the kill: {j:?}"
            );
        }
        assert!(Instant::now() < deadline, "the replay never progressed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    drop(replay); // SIGKILL
    let stored = store.sync_job(killed_at.id).await.unwrap().unwrap();
    let position = stored
        .locator
        .as_deref()
        .and_then(sfsync_pipeline::replay::ReplayProgress::from_locator)
        .expect("a committed replay position");
    assert!(
        stored.counts.read < 4_000 && position.after.is_some(),
        "killed mid-replay at a committed position: {stored:?}"
    );
    assert_eq!(position.log_records as i64, stored.counts.read);
    // `sfsync run` takes the interrupted job and finishes it.
    let mut child = run(&env);
    wait_for(
        "the replay succeeds after the restart",
        Duration::from_secs(120),
        || {
            let store = &*store;
            async move {
                let j = store.sync_job(killed_at.id).await.unwrap().unwrap();
                if j.status == SyncJobStatus::Succeeded {
                    Vec::new()
                } else {
                    vec![format!("{j:?}")]
                }
            }
        },
    )
    .await;
    let done = store.sync_job(killed_at.id).await.unwrap().unwrap();
    assert_eq!(
        done.counts.read, 4_000,
        "every change re-applied exactly once across the kill: {done:?}"
    );
    let report: ReplayReport = serde_json::from_str(done.report.as_deref().unwrap()).unwrap();
    assert_eq!(report.raw_log_records, 4_000, "{report:?}");
    converged(
        &env,
        &*store,
        &mut child,
        "the warehouse equals the org after the resumed replay",
    )
    .await;
    assert_eq!(store.read_history("Account").await.unwrap().len(), 4_000);
    stop(child);
}
