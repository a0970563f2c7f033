//! The archive and retention jobs end to end: `sfsync run` (a real child process) streams an
//! org from the emulator over loopback TLS into a SQLite warehouse; `sfsync archive` asks it to
//! compact the applied raw log into the Parquet archive. Checked:
//! 1. the archive holds exactly the raw log's entries, partitioned by object and day, each
//!    file verified against its manifest entry; a PII object's payloads are sealed there;
//! 2. with `hot_retention_days = 0` the hot log is pruned once archived and applied, and
//!    streaming goes on exactly once afterwards (new entries are logged, applied, archived);
//! 3. `sfsync retention --dry-run` lists and deletes nothing; the jobs are runs in
//!    `sfsync runs list`;
//! 4. `sfsync archive` with `archive.enabled = false` exits 2 naming the key;
//! 5. an S3 archive on a local AWS-compatible server (`moto` in server mode, from PyPI through
//!    tests/compat/requirements.txt), region, endpoint and credentials from the standard AWS
//!    environment variables.

mod support;

use support::moto::Moto;
use support::{stop, wait_for, KillOnDrop};

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value as J};
use sfsync_emulator::RunningEmulator;
use sfsync_org::{ApiKind, CallContext, DmlOp};
use sfsync_pipeline::{ObjectMapping, ObjectSpec};
use sfsync_salesforce::SalesforceClient;
use sfsync_store::archive::{Archive, ArchiveLocation, ArchiveRow};
use sfsync_store::{ChangeLog, Keyring, Retention, SqliteChangeLog, Warehouse};

const KEY: [u8; 32] = [0x5a; 32];

struct Env {
    emu: RunningEmulator,
    dir: tempfile::TempDir,
    db: PathBuf,
    client: SalesforceClient,
    account: ObjectMapping,
    config: PathBuf,
    /// Environment of the sfsync processes (the AWS variables of an S3 archive).
    vars: Vec<(String, String)>,
}

async fn env(archive: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (emu, client) = support::emulator(&dir).await;
    let d = client.describe_object("Account").await.unwrap();
    let account = ObjectMapping::build(&d, &ObjectSpec::new("Account")).unwrap();
    let hex: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(dir.join("pii.hex"), hex).unwrap();
    let db = dir.join("wh.db");
    let config = dir.join("sfsync.toml");
    let text = format!(
        r#"[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"

[[objects]]
name = "Account"

[[objects]]
name = "Contact"
pii_fields = ["Email"]

[warehouse]
type = "sqlite"
path = "{db}"

[pii]
key_file = "pii.hex"
key_id = "k1"

[pipeline]
batch_max_records = 200
batch_max_wait_ms = 50
backfill_new_objects = false

[archive]
{archive}
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
        vars: Vec::new(),
    }
}

fn ctx(env: &Env) -> CallContext {
    CallContext {
        user_id: env.emu.org().admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: None,
    }
}

fn update(env: &Env, object: &str, id: &str, fields: J) {
    let ops = vec![DmlOp::Update {
        object: object.into(),
        id: id.into(),
        fields: fields.as_object().unwrap().clone(),
    }];
    for r in env.emu.org().execute(&ctx(env), ops, true) {
        r.expect("update succeeds");
    }
}

fn cli(env: &Env, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sfsync"))
        .args(args)
        .arg("--config")
        .arg(&env.config)
        .env("USER", "test-operator")
        .env("SFSYNC_LOG", "warn")
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("running the sfsync CLI");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run(env: &Env) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_sfsync"))
            .args(["run", "--progress-secs", "0", "--config"])
            .arg(&env.config)
            .env("SFSYNC_LOG", "warn")
            .envs(env.vars.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning sfsync run"),
    )
}

async fn open(env: &Env) -> Arc<SqliteChangeLog> {
    let s = SqliteChangeLog::open(&env.db).await.unwrap();
    s.set_keyring(Some(Arc::new(Keyring::new("k1", KEY))));
    s.ensure_model(&env.account.model).await.unwrap();
    Arc::new(s)
}

/// Waits until the warehouse's Accounts equal the org's and every logged change is applied.
async fn converged(env: &Env, store: &SqliteChangeLog, child: &mut KillOnDrop, what: &str) {
    let child = std::sync::Mutex::new(child);
    let child = &child;
    wait_for(what, Duration::from_secs(90), || async move {
        let mut p = Vec::new();
        if let Ok(Some(status)) = child.lock().unwrap().0.try_wait() {
            p.push(format!("sfsync run exited with {status}"));
        }
        p.extend(support::live_diff(&env.client, &env.account, store).await);
        p
    })
    .await;
}

/// Every archived row, in offset order (each file verified against its manifest entry).
async fn archived(root: &std::path::Path) -> (Vec<String>, Vec<ArchiveRow>) {
    let archive = Archive::open(&ArchiveLocation::Local(root.to_path_buf())).unwrap();
    let mut names = Vec::new();
    let mut rows = Vec::new();
    for p in archive.partitions().await.unwrap() {
        names.push(format!("{}/{}", p.object, p.day));
        for f in &p.files {
            archive.verify_file(f).await.unwrap();
            let got = archive.read_file(&f.path).await.unwrap();
            assert_eq!(got.len() as u64, f.rows, "{f:?}");
            rows.extend(got);
        }
    }
    rows.sort_by_key(|r| r.offset);
    (names, rows)
}

/// Waits until the raw log holds `n` entries, all applied.
async fn all_applied(store: &Arc<SqliteChangeLog>, n: usize) {
    wait_for(
        "every logged change applied",
        Duration::from_secs(60),
        || {
            let store = store.clone();
            async move {
                let log = store.archive_rows(1, u64::MAX, 10_000).await.unwrap();
                let applied = store.applied_offset("curated").await.unwrap().unwrap_or(0);
                let last = log.last().map_or(0, |r| r.offset as u64);
                if log.len() == n && applied >= last {
                    vec![]
                } else {
                    vec![format!("{} logged, applied through {applied}", log.len())]
                }
            }
        },
    )
    .await;
}

fn hot_log_len(env: &Env) -> i64 {
    let conn = rusqlite::Connection::open(sfsync_store::sqlite::change_log_path(&env.db)).unwrap();
    conn.query_row("SELECT count(*) FROM raw_changes", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_compacts_the_applied_raw_log_and_prunes_it_while_streaming_goes_on() {
    let env = env("location = \"arch\"\nhot_retention_days = 0\n").await;
    let org = env.emu.org().clone();
    let accounts: Vec<String> = org
        .seed(&ctx(&env), "Account", 30, 5)
        .unwrap()
        .into_iter()
        .map(|i| i.to_string())
        .collect();
    let contacts: Vec<String> = org
        .seed(&ctx(&env), "Contact", 10, 6)
        .unwrap()
        .into_iter()
        .map(|i| i.to_string())
        .collect();
    for (i, id) in accounts.iter().enumerate().take(5) {
        update(
            &env,
            "Account",
            id,
            json!({ "Name": format!("Renamed {i}") }),
        );
    }
    update(
        &env,
        "Contact",
        &contacts[0],
        json!({ "Email": "ada@example.gov" }),
    );
    let mut child = run(&env);
    let store = open(&env).await;
    converged(&env, &store, &mut child, "the stream applies the org").await;
    // Every logged change applied (Contacts included) before the log is read for comparison:
    // 30 + 10 creates, 5 + 1 updates.
    all_applied(&store, 46).await;
    let log = store.archive_rows(1, u64::MAX, 10_000).await.unwrap();

    // 1. `sfsync archive` while `sfsync run` runs: it carries the job out.
    let (code, out, err) = cli(&env, &["archive"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("`sfsync run` is running"), "{err}");
    assert!(
        out.contains("archive #") && out.contains("succeeded"),
        "{out}"
    );
    let root = env.dir.path().join("arch");
    let (partitions, rows) = archived(&root).await;
    let today = sfsync_store::archive::utc_day(log[0].commit_timestamp);
    assert_eq!(
        partitions,
        [format!("Account/{today}"), format!("Contact/{today}")]
    );
    assert_eq!(
        rows.iter()
            .map(|r| (r.offset, r.entity.as_str()))
            .collect::<Vec<_>>(),
        log.iter()
            .map(|r| (r.offset, r.entity.as_str()))
            .collect::<Vec<_>>(),
    );
    for (a, l) in rows.iter().zip(&log) {
        let (mut a, mut l) = (a.clone(), l.clone());
        // Sealing is randomised: compare the opened payloads of PII objects.
        if a.sealed {
            let k = Keyring::new("k1", KEY);
            let aad = sfsync_store::pii::archive_aad(&a.entity);
            a.payload = k.open_bytes(&aad, &a.payload).unwrap();
            l.payload = k.open_bytes(&aad, &l.payload).unwrap();
        }
        assert_eq!(a, l);
    }
    assert!(rows
        .iter()
        .filter(|r| r.entity == "Contact")
        .all(|r| r.sealed));
    assert!(rows
        .iter()
        .filter(|r| r.entity == "Account")
        .all(|r| !r.sealed));
    let email = b"ada@example.gov";
    for entry in walk(&root) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(email.len()).any(|w| w == email),
            "{} holds a PII value in the clear",
            entry.display()
        );
    }

    // 2. Archived and applied, committed before now: pruned from the hot log.
    assert_eq!(
        hot_log_len(&env),
        0,
        "the hot log is pruned after archiving"
    );
    assert_eq!(
        store.archived_through().await.unwrap(),
        log.last().unwrap().offset as u64
    );
    update(
        &env,
        "Account",
        &accounts[7],
        json!({ "Name": "After the prune" }),
    );
    converged(
        &env,
        &store,
        &mut child,
        "streaming goes on after the prune",
    )
    .await;
    let (code, out, err) = cli(&env, &["archive"]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, rows) = archived(&root).await;
    assert_eq!(rows.len(), log.len() + 1, "the new change is archived once");
    assert_eq!(rows.last().unwrap().entity, "Account");

    // 3. A dry run lists and deletes nothing; the jobs are runs.
    let (code, out, err) = cli(&env, &["retention", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Dry run: nothing is deleted"), "{out}");
    assert!(
        out.contains("archive partitions: none past retention"),
        "{out}"
    );
    assert!(out.contains("audit trail: 0 entries would go"), "{out}");
    let (code, out, err) = cli(&env, &["retention", "--dry-run", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let r: J = serde_json::from_str(&out).unwrap();
    assert_eq!(r["dry_run"], json!(true));
    assert_eq!(archived(&root).await.1.len(), log.len() + 1);
    let (code, out, err) = cli(&env, &["runs", "list", "--kind", "archive"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.matches("archive").count() >= 2,
        "both archive jobs are runs: {out}"
    );
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_off_is_refused_naming_the_key() {
    let env = env("enabled = false\n").await;
    let (code, out, err) = cli(&env, &["archive"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("archive.enabled = false"), "{err}");
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_on_s3_of_a_local_aws_compatible_server() {
    let moto = tokio::task::spawn_blocking(Moto::start).await.unwrap();
    let (status, body) = moto.http("PUT", "/raw-history");
    assert_eq!(status, 200, "creating the bucket: {body}");
    let mut env = env("location = \"s3://raw-history/org-a\"\nhot_retention_days = 0\n").await;
    env.vars = moto.vars();
    let accounts: Vec<String> = env
        .emu
        .org()
        .seed(&ctx(&env), "Account", 20, 9)
        .unwrap()
        .into_iter()
        .map(|i| i.to_string())
        .collect();
    update(&env, "Account", &accounts[0], json!({ "Name": "On S3" }));
    let mut child = run(&env);
    let store = open(&env).await;
    converged(&env, &store, &mut child, "the stream applies the org").await;
    all_applied(&store, 21).await;
    let (code, out, err) = cli(&env, &["archive"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("succeeded") && out.contains("s3://raw-history/org-a"),
        "{out}"
    );
    let keys = moto.keys("raw-history", "org-a/");
    let day =
        sfsync_store::archive::utc_day(store.archive_files(10).await.unwrap()[0].min_commit_ms);
    let part = format!("org-a/object=Account/date={day}/");
    assert!(
        keys.iter()
            .any(|k| k.starts_with(&part) && k.ends_with(".parquet")),
        "{keys:?}"
    );
    assert!(keys.contains(&format!("{part}_manifest.json")), "{keys:?}");
    assert_eq!(
        hot_log_len(&env),
        0,
        "pruned once archived on S3 and verified"
    );
    let (code, out, err) = cli(&env, &["retention", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("archive partitions: none past retention"),
        "{out}"
    );
    stop(child);
}
