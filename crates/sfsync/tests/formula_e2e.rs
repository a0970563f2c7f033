//! Formula fields end to end, with `sfsync run` as a real child process against the emulator
//! over loopback (SQLite warehouse). Account is configured with its formula field
//! (`Revenue_Per_Employee__c = AnnualRevenue / NumberOfEmployees`) and a 1 s refresh interval;
//! Contact (which has the formula `Full_Name__c`) is not:
//! 1. the backfill fills the formula column, the first (full) refresh finds nothing to change,
//!    and Contact has no formula column at all;
//! 2. AnnualRevenue / NumberOfEmployees updated through the emulator's REST API (and a record
//!    created) reach the warehouse through CDC, and after a refresh the warehouse's
//!    `Revenue_Per_Employee__c` equals what the emulator's REST API returns — in place: the
//!    row keeps its CDC version, no SCD2 version opens, an unchanged record is not rewritten,
//!    each refreshed record is written once, with an audit entry; each refresh costs a few API
//!    calls; `sfsync jobs list` shows the jobs and the stats file counts the refreshed rows;
//! 3. after a restart the refreshes continue from the committed watermark (incremental), and a
//!    change made while the pipeline was down is refreshed.

mod support;

use support::{stop, wait_for, KillOnDrop};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value as J};
use sfsync_emulator::RunningEmulator;
use sfsync_org::{ApiKind, CallContext};
use sfsync_pipeline::model::FormulaFields;
use sfsync_pipeline::{ObjectMapping, ObjectSpec};
use sfsync_salesforce::SalesforceClient;
use sfsync_store::{
    CurrentRow, SqliteChangeLog, SyncJob, SyncJobFilter, SyncJobKind, SyncJobStatus, Value,
    Warehouse,
};

const FORMULA: &str = "revenue_per_employee__c";

struct Env {
    emu: RunningEmulator,
    dir: tempfile::TempDir,
    db: PathBuf,
    client: SalesforceClient,
    account: ObjectMapping,
    config: PathBuf,
}

async fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (emu, client) = support::emulator(&dir).await;
    let d = client.describe_object("Account").await.unwrap();
    let mut spec = ObjectSpec::new("Account");
    spec.history = sfsync_pipeline::HistoryFields::Fields(vec!["Name".into()]);
    spec.formula_fields = FormulaFields::Fields(vec!["Revenue_Per_Employee__c".into()]);
    let account = ObjectMapping::build(&d, &spec).unwrap();
    let db = dir.join("wh.db");
    let config = dir.join("sfsync.toml");
    let text = format!(
        r#"[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"

[[objects]]
name = "Account"
history = {{ fields = ["Name"] }}
formula_fields = ["Revenue_Per_Employee__c"]

[[objects]]
name = "Contact"

[warehouse]
type = "sqlite"
path = "{db}"

[pipeline]
batch_max_records = 200
batch_max_wait_ms = 50
formula_refresh_secs = 1
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
        account,
        config,
    }
}

fn stats_path(env: &Env) -> PathBuf {
    env.dir.path().join("stats.json")
}

fn spawn(env: &Env) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_sfsync"))
            .args(["run", "--config"])
            .arg(&env.config)
            .args(["--progress-secs", "0", "--stats-file"])
            .arg(stats_path(env))
            .env("SFSYNC_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning sfsync run"),
    )
}

fn cli(env: &Env, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sfsync"))
        .args(args)
        .arg("--config")
        .arg(&env.config)
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

fn ctx(env: &Env) -> CallContext {
    CallContext {
        user_id: env.emu.org().admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: Some("someone-else".into()),
    }
}

async fn jobs(store: &dyn Warehouse, kind: SyncJobKind, object: &str) -> Vec<SyncJob> {
    store
        .sync_jobs(&SyncJobFilter {
            kind: Some(kind),
            object: Some(object.into()),
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// `Revenue_Per_Employee__c` of the org's live Accounts as its REST API returns them.
async fn org_formulas(env: &Env) -> BTreeMap<String, Option<f64>> {
    env.client
        .query_all_pages(
            "SELECT Id, Revenue_Per_Employee__c FROM Account",
            Default::default(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r["Id"].as_str().unwrap().to_string(),
                r["Revenue_Per_Employee__c"].as_f64(),
            )
        })
        .collect()
}

fn formula_of(row: &CurrentRow) -> Option<f64> {
    match row.values.get(FORMULA) {
        None => None,
        Some(Value::Real(x)) => Some(*x),
        Some(other) => panic!("{} {FORMULA} holds {other:?}", row.id),
    }
}

async fn rows(store: &dyn Warehouse) -> BTreeMap<String, CurrentRow> {
    store
        .read_current("Account")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect()
}

/// Differences between the org's formula values and the warehouse's live rows.
async fn formula_diff(env: &Env, store: &dyn Warehouse) -> Vec<String> {
    let org = org_formulas(env).await;
    let wh = rows(store).await;
    let mut problems = Vec::new();
    for (id, want) in &org {
        match wh.get(id) {
            None => problems.push(format!("Account {id} is not in the warehouse")),
            Some(r) if formula_of(r) != *want => problems.push(format!(
                "Account {id}: warehouse {:?}, org {want:?}",
                formula_of(r)
            )),
            Some(_) => {}
        }
    }
    problems
}

fn columns(env: &Env, table: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(&env.db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut stmt = conn
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
        .unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Record ids of the audit entries of `change_type`.
fn audited(env: &Env, change_type: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(&env.db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut stmt = conn
        .prepare("SELECT record_id FROM audit_log WHERE change_type = ?1 ORDER BY seq")
        .unwrap();
    stmt.query_map([change_type], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn stat(env: &Env, name: &str) -> u64 {
    std::fs::read_to_string(stats_path(env))
        .ok()
        .and_then(|t| serde_json::from_str::<J>(&t).ok())
        .and_then(|j| j[name].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formula_fields_are_refreshed_in_place_after_changes() {
    let env = env().await;
    let ids: Vec<String> = env
        .emu
        .org()
        .seed(&ctx(&env), "Account", 150, 21)
        .unwrap()
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    env.emu.org().seed(&ctx(&env), "Contact", 20, 22).unwrap();

    // 1. Backfill and the first refresh.
    let child = spawn(&env);
    let store: Arc<dyn Warehouse> = Arc::new(SqliteChangeLog::open(&env.db).await.unwrap());
    wait_for(
        "both objects are backfilled and a formula refresh succeeded",
        Duration::from_secs(120),
        || {
            let store = &*store;
            async move {
                let mut p = Vec::new();
                for object in ["Account", "Contact"] {
                    let b = jobs(store, SyncJobKind::Backfill, object).await;
                    if !b.iter().any(|j| j.status == SyncJobStatus::Succeeded) {
                        p.push(format!("{object} not backfilled yet: {b:?}"));
                    }
                }
                let r = jobs(store, SyncJobKind::FormulaRefresh, "Account").await;
                if !r.iter().any(|j| j.status == SyncJobStatus::Succeeded) {
                    p.push(format!("no succeeded formula refresh yet: {r:?}"));
                }
                p
            }
        },
    )
    .await;
    store.ensure_model(&env.account.model).await.unwrap();
    assert!(columns(&env, "sf_account").contains(&FORMULA.to_string()));
    let contact_columns = columns(&env, "sf_contact");
    assert!(
        contact_columns.contains(&"lastname".to_string())
            && !contact_columns.contains(&"full_name__c".to_string()),
        "Contact is not configured with formula fields: {contact_columns:?}"
    );
    assert!(
        jobs(&*store, SyncJobKind::FormulaRefresh, "Contact")
            .await
            .is_empty(),
        "no refresh for an object without formula fields"
    );
    wait_for(
        "the backfill filled the formula column and the stream applied the seeded creates",
        Duration::from_secs(60),
        || {
            let (env, store) = (&env, &*store);
            async move {
                let mut p = formula_diff(env, store).await;
                for r in rows(store).await.values() {
                    if r.meta.change_type != "CREATE" {
                        p.push(format!("{}: the stream's create not applied yet", r.id));
                    }
                }
                p
            }
        },
    )
    .await;
    let first = jobs(&*store, SyncJobKind::FormulaRefresh, "Account").await;
    assert_eq!(
        first[0].since_ms, None,
        "the first refresh reads every record"
    );
    assert!(first[0].reason.contains("first refresh"), "{:?}", first[0]);
    let done_before: Vec<&SyncJob> = first
        .iter()
        .filter(|j| j.status == SyncJobStatus::Succeeded)
        .collect();
    assert!(
        done_before.iter().all(|j| j.counts.applied == 0),
        "the backfill already holds every formula value: nothing to rewrite: {done_before:?}"
    );
    assert_eq!(done_before[0].counts.read, 150, "{:?}", done_before[0]);
    assert!(audited(&env, "FORMULA_REFRESH").is_empty());

    // 2. Changes through the REST API; the stream carries the fields, refreshes the formula.
    let before = rows(&*store).await;
    // `c` gets no employees: one whose formula is not null yet.
    let c = ids[4..]
        .iter()
        .find(|id| formula_of(&before[*id]).is_some())
        .expect("a seeded Account with a formula value");
    let (a, b) = (&ids[0], &ids[1]);
    let updated_before = before[a].meta.version;
    env.client
        .update(
            "Account",
            a,
            &json!({"AnnualRevenue": 1_000_000, "NumberOfEmployees": 8}),
        )
        .await
        .unwrap();
    env.client
        .update("Account", c, &json!({"NumberOfEmployees": 0}))
        .await
        .unwrap();
    let d = env
        .client
        .create(
            "Account",
            &json!({"Name": "Formula Test Ltd", "AnnualRevenue": 500_000, "NumberOfEmployees": 3}),
        )
        .await
        .unwrap()
        .id
        .expect("the new record's id");
    let org = org_formulas(&env).await;
    assert_eq!(org[a], Some(125_000.0));
    assert_eq!(org[c], None, "no employees: the formula is null");
    assert_eq!(org[&d], Some(166_666.67));
    assert_ne!(
        formula_of(&before[a]),
        org[a],
        "the change moves the formula (else this test proves nothing)"
    );
    assert!(formula_of(&before[c]).is_some());
    wait_for(
        "the changes are applied and the formulas refreshed",
        Duration::from_secs(60),
        || {
            let (env, store) = (&env, &*store);
            let (a, d) = (a.clone(), d.clone());
            async move {
                let mut p = formula_diff(env, store).await;
                let wh = rows(store).await;
                if wh[&a].values.get("annualrevenue") != Some(&Value::Real(1_000_000.0)) {
                    p.push(format!("the CDC update of {a} is not applied yet"));
                }
                if !wh.contains_key(&d) {
                    p.push(format!("the CDC create of {d} is not applied yet"));
                }
                p
            }
        },
    )
    .await;
    let after = rows(&*store).await;
    let ra = &after[a];
    assert_eq!(formula_of(ra), Some(125_000.0));
    assert_eq!(
        (ra.meta.change_type.as_str(), ra.meta.source.as_str()),
        ("UPDATE", "cdc"),
        "the row keeps the version of its last Salesforce change: {ra:?}"
    );
    assert!(ra.meta.version > updated_before);
    assert_eq!(formula_of(&after[c]), None);
    assert_eq!(after[b], before[b], "an unchanged record is not rewritten");
    let history = store.read_history("Account").await.unwrap();
    let versions_of_a = history.iter().filter(|h| &h.id == a).count();
    assert_eq!(versions_of_a, 1, "no SCD2 version for a formula refresh");
    let mut refreshed = audited(&env, "FORMULA_REFRESH");
    refreshed.sort();
    let mut want = vec![a.clone(), c.clone(), d.clone()];
    want.sort();
    assert_eq!(refreshed, want, "one audit entry per refreshed record");
    let v = store.verify_audit().await.unwrap();
    assert_eq!(v.first_break, None);

    let all = jobs(&*store, SyncJobKind::FormulaRefresh, "Account").await;
    let done: Vec<&SyncJob> = all
        .iter()
        .filter(|j| j.status == SyncJobStatus::Succeeded)
        .collect();
    assert_eq!(
        done.iter().map(|j| j.counts.applied).sum::<i64>(),
        3,
        "each changed record refreshed once, re-reads in the overlap skipped: {done:?}"
    );
    for j in &done {
        assert!(
            (3..=8).contains(&j.counts.api_calls),
            "a refresh is one Bulk job: create, poll, one result page: {j:?}"
        );
        assert!(j.watermark_ms.is_some() || j.counts.read == 0, "{j:?}");
    }
    for j in done.iter().skip(1) {
        assert!(j.since_ms.is_some(), "incremental after the first: {j:?}");
        assert_eq!(j.reason, "scheduled");
    }
    let runs = store.runs(10_000).await.unwrap();
    assert!(
        runs.iter()
            .any(|r| r.kind == "formula_refresh" && r.status == "succeeded"),
        "each refresh is a run"
    );
    let (ok, out) = cli(&env, &["jobs", "list", "--limit", "500"]);
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("formula_refresh") && l.contains("Account")),
        "{out}"
    );
    wait_for(
        "the stats file counts the refreshed rows",
        Duration::from_secs(10),
        || {
            let env = &env;
            async move {
                let n = stat(env, "formula_rows_refreshed");
                if n == 3 {
                    Vec::new()
                } else {
                    vec![format!("formula_rows_refreshed = {n}")]
                }
            }
        },
    )
    .await;
    stop(child);

    // 3. A restart continues from the committed watermark.
    let last = jobs(&*store, SyncJobKind::FormulaRefresh, "Account")
        .await
        .into_iter()
        .filter(|j| j.status == SyncJobStatus::Succeeded)
        .max_by_key(|j| j.id)
        .unwrap();
    let resume = sfsync_pipeline::jobs::formula_resume_point(&last).unwrap();
    let e = &ids[3];
    env.client
        .update(
            "Account",
            e,
            &json!({"AnnualRevenue": 90_000, "NumberOfEmployees": 9}),
        )
        .await
        .unwrap();
    let child = spawn(&env);
    wait_for(
        "the change made while stopped is refreshed",
        Duration::from_secs(60),
        || {
            let (env, store) = (&env, &*store);
            let e = e.clone();
            async move {
                let mut p = formula_diff(env, store).await;
                if formula_of(&rows(store).await[&e]) != Some(10_000.0) {
                    p.push(format!("{e} not refreshed yet"));
                }
                p
            }
        },
    )
    .await;
    let resumed: Vec<SyncJob> = jobs(&*store, SyncJobKind::FormulaRefresh, "Account")
        .await
        .into_iter()
        .filter(|j| j.id > last.id)
        .collect();
    assert_eq!(
        resumed[0].since_ms,
        Some(resume - sfsync_pipeline::jobs::FORMULA_OVERLAP_MS),
        "the first refresh after the restart starts at the committed watermark: {:?}",
        resumed[0]
    );
    // (Every record here changed within the last overlap, so each read still returns them
    // all: the since times are what show the refreshes are incremental.)
    assert!(
        resumed
            .iter()
            .all(|j| j.since_ms.is_some() && j.status != SyncJobStatus::Failed),
        "incremental, not full re-reads: {resumed:?}"
    );
    stop(child);
}
