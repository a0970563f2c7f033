//! Backfill, re-sync and reconciliation end to end, with `sfsync run` and the operator CLI as
//! real child processes against the emulator over loopback, on a SQLite and on a Postgres
//! warehouse:
//! 1. a new object is backfilled automatically while streaming runs; the pipeline is SIGKILLed
//!    mid-backfill and the restarted one resumes at the committed page position (no row read
//!    twice) and converges with the org;
//! 2. drift injected into the org behind the stream's back (silent updates, silent deletes,
//!    purges) and into the warehouse (deleted rows, a regressed row) is found exactly by
//!    `sfsync reconcile` and repaired;
//! 3. a GAP_OVERFLOW becomes a windowed re-sync that converges;
//! 4. a pipeline down longer than the (shortened) replay retention recovers by itself: its
//!    stored replay id is rejected, the objects are re-synced (from the last logged change, not
//!    from zero), and the warehouse converges; a repair Salesforce refuses is dead-lettered
//!    instead of blocking the repair queue.

#[path = "../../sfsync-store/tests/support/pg.rs"]
#[allow(dead_code)]
mod pg;

mod support;

use support::{stop, wait_for, KillOnDrop};

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value as J};
use sfsync_emulator::RunningEmulator;
use sfsync_org::{ApiKind, CallContext, Drift};
use sfsync_pipeline::{ObjectMapping, ObjectSpec};
use sfsync_salesforce::SalesforceClient;
use sfsync_store::{
    PostgresChangeLog, SqliteChangeLog, SyncJob, SyncJobFilter, SyncJobKind, SyncJobStatus,
    Warehouse,
};

/// The warehouse a scenario runs on.
enum Db {
    Sqlite,
    /// A schema of its own on the shared throwaway server (the child process reads the URL
    /// from `SFSYNC_E2E_PG_URL`).
    Postgres {
        url: String,
        schema: String,
        _server: Arc<pg::PgServer>,
    },
}

impl Db {
    fn postgres(schema: &str) -> Db {
        let server = pg::shared_server();
        Db::Postgres {
            url: format!("postgres://postgres@127.0.0.1:{}/postgres", server.port),
            schema: schema.into(),
            _server: server,
        }
    }

    fn pg_client_config(&self) -> Option<tokio_postgres::Config> {
        let Db::Postgres { url, schema, .. } = self else {
            return None;
        };
        let mut cfg: tokio_postgres::Config = url.parse().unwrap();
        cfg.options(format!("-c search_path={schema}"));
        Some(cfg)
    }
}

struct Env {
    emu: RunningEmulator,
    _dir: tempfile::TempDir,
    /// The SQLite file (also with Postgres: unused there).
    db: PathBuf,
    backend: Db,
    client: SalesforceClient,
    mapping: ObjectMapping,
    config: PathBuf,
}

async fn env(backend: Db) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (emu, client) = support::emulator(&dir).await;
    let d = client.describe_object("Account").await.unwrap();
    let mapping = ObjectMapping::build(&d, &ObjectSpec::new("Account")).unwrap();
    let db = dir.join("wh.db");
    let config = dir.join("sfsync.toml");
    let text = format!(
        r#"[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"

[[objects]]
name = "Account"
history = {{ fields = ["Name", "Type"] }}

{warehouse}
[pipeline]
batch_max_records = 200
batch_max_wait_ms = 50
backfill_page_records = 300
"#,
        creds = emu.credentials_path.display(),
        ca = emu.ca_pem_path.display(),
        warehouse = match &backend {
            Db::Sqlite => format!("[warehouse]\ntype = \"sqlite\"\npath = \"{}\"\n", db.display()),
            Db::Postgres { schema, .. } => format!(
                "[warehouse]\ntype = \"postgres\"\nurl = {{ env = \"SFSYNC_E2E_PG_URL\" }}\nschema = \"{schema}\"\n"
            ),
        },
    );
    std::fs::write(&config, text).unwrap();
    if let Some(cfg) = backend.pg_client_config() {
        let Db::Postgres { schema, .. } = &backend else {
            unreachable!()
        };
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))
            .await
            .unwrap();
        drop(client);
        let _ = task.await;
    }
    Env {
        emu,
        _dir: tmp,
        db,
        backend,
        client,
        mapping,
        config,
    }
}

/// A command of the sfsync binary with the test's environment (and the Postgres URL).
fn sfsync(env: &Env) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sfsync"));
    cmd.env("SFSYNC_LOG", "warn");
    if let Db::Postgres { url, .. } = &env.backend {
        cmd.env("SFSYNC_E2E_PG_URL", url);
    }
    cmd
}

fn spawn(env: &Env) -> KillOnDrop {
    KillOnDrop(
        sfsync(env)
            .args(["run", "--config"])
            .arg(&env.config)
            .args(["--progress-secs", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning sfsync run"),
    )
}

fn cli(env: &Env, args: &[&str]) -> (bool, String) {
    let out = sfsync(env)
        .args(args)
        .arg("--config")
        .arg(&env.config)
        .env("USER", "test-operator")
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
    let store: Arc<dyn Warehouse> = match env.backend.pg_client_config() {
        None => Arc::new(SqliteChangeLog::open(&env.db).await.unwrap()),
        Some(cfg) => Arc::new(PostgresChangeLog::connect_with(&cfg).await.unwrap()),
    };
    store.ensure_model(&env.mapping.model).await.unwrap();
    store
}

/// Runs statements on the warehouse behind the pipeline's back; `{true}` stands for the
/// backend's true literal.
async fn sql(env: &Env, statements: &[String]) {
    match env.backend.pg_client_config() {
        None => {
            let conn = rusqlite::Connection::open(&env.db).unwrap();
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            for st in statements {
                conn.execute(&st.replace("{true}", "1"), []).unwrap();
            }
        }
        Some(cfg) => {
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
            let task = tokio::spawn(conn);
            for st in statements {
                client
                    .execute(&st.replace("{true}", "TRUE"), &[])
                    .await
                    .unwrap();
            }
            drop(client);
            let _ = task.await;
        }
    }
}

/// Two text columns of a query on the warehouse.
async fn text_pairs(env: &Env, query: &str) -> Vec<(String, String)> {
    match env.backend.pg_client_config() {
        None => {
            let c = rusqlite::Connection::open(&env.db).unwrap();
            let mut st = c.prepare(query).unwrap();
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        }
        Some(cfg) => {
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
            let task = tokio::spawn(conn);
            let rows = client.query(query, &[]).await.unwrap();
            drop(client);
            let _ = task.await;
            rows.iter().map(|r| (r.get(0), r.get(1))).collect()
        }
    }
}

fn ctx(env: &Env) -> CallContext {
    CallContext {
        user_id: env.emu.org().admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: Some("someone-else".into()),
    }
}

/// Differences between the org's live Accounts and the warehouse's live rows.
async fn diff(env: &Env, store: &dyn Warehouse) -> Vec<String> {
    support::live_diff(&env.client, &env.mapping, store).await
}

async fn jobs(store: &dyn Warehouse, kind: SyncJobKind) -> Vec<SyncJob> {
    store
        .sync_jobs(&SyncJobFilter {
            kind: Some(kind),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
}

fn seed(env: &Env, n: usize, seed: u64) -> Vec<String> {
    env.emu
        .org()
        .seed(&ctx(env), "Account", n, seed)
        .unwrap()
        .into_iter()
        .map(|id| id.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backfill_resync_and_reconcile_converge_with_the_org() {
    scenario(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backfill_resync_and_reconcile_converge_with_the_org() {
    scenario(Db::postgres("sync_jobs_e2e")).await;
}

async fn scenario(backend: Db) {
    let env = env(backend).await;
    let ids = seed(&env, 2_000, 11);

    // 1. A new object: backfilled automatically while streaming; killed mid-backfill. Every
    // request is slowed so the kill lands between pages.
    env.emu
        .state
        .faults
        .set(sfsync_emulator::faults::FaultConfig {
            latency_ms: 150,
            ..Default::default()
        });
    let child = spawn(&env);
    let store = open(&env).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let killed_at = loop {
        let b = jobs(&*store, SyncJobKind::Backfill).await;
        if let Some(j) = b.first() {
            assert_eq!(j.reason, "new object in the config");
            if j.status == SyncJobStatus::Running && j.counts.read >= 300 {
                break j.clone();
            }
            assert!(
                j.status.is_open(),
                "the backfill ended before the kill: {j:?}"
            );
        }
        assert!(Instant::now() < deadline, "the backfill never progressed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(child); // SIGKILL
    let stored = store.sync_job(killed_at.id).await.unwrap().unwrap();
    assert!(
        stored.counts.read < 2_000 && stored.locator.is_some(),
        "killed mid-backfill at a committed page position: {stored:?}"
    );
    env.emu.state.faults.set(Default::default());
    let child = spawn(&env);
    wait_for(
        "the backfill succeeds after the restart",
        Duration::from_secs(120),
        || {
            let store = &store;
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
    assert_eq!(done.rows_total, Some(2_000), "{done:?}");
    assert_eq!(
        done.counts.read, 2_000,
        "every row read exactly once across the crash (no finished page re-read): {done:?}"
    );
    assert!(done.run_id.is_some());
    let runs = store.runs(50).await.unwrap();
    assert!(
        runs.iter().any(|r| r.kind == "backfill"
            && r.status == "succeeded"
            && r.detail.contains("\"read\":2000")),
        "the backfill is a run with its counts: {runs:?}"
    );
    wait_for(
        "the warehouse equals the org after the backfill",
        Duration::from_secs(60),
        || {
            let (env, store) = (&env, &*store);
            async move { diff(env, store).await }
        },
    )
    .await;

    // 2. Drift behind the pipeline's back, in the org and in the warehouse.
    let org = env.emu.org().clone();
    let c = ctx(&env);
    let mut fields = Map::new();
    fields.insert("Name".into(), J::String("Changed without an event".into()));
    let updated: Vec<String> = ids[10..13].to_vec();
    org.drift(&c, "Account", &updated, &Drift::SilentUpdate(fields))
        .unwrap();
    let silently_deleted = vec![ids[20].clone()];
    org.drift(&c, "Account", &silently_deleted, &Drift::SilentDelete)
        .unwrap();
    let purged: Vec<String> = ids[30..32].to_vec();
    org.drift(&c, "Account", &purged, &Drift::Purge).unwrap();
    let lost_rows: Vec<String> = ids[40..42].to_vec();
    let regressed = ids[50].clone();
    // Rows flagged deleted by someone else, one deleted outright (its history stays: the
    // repair continues it), and one regressed.
    let deleted_outright = ids[45].clone();
    let mut statements: Vec<String> = lost_rows
        .iter()
        .map(|id| format!("UPDATE sf_account SET _sf_deleted = {{true}} WHERE id = '{id}'"))
        .collect();
    statements.push(format!(
        "DELETE FROM sf_account WHERE id = '{deleted_outright}'"
    ));
    statements.push(format!(
        "UPDATE sf_account SET _sf_commit_ms = 0, name = 'stale copy' WHERE id = '{regressed}'"
    ));
    sql(&env, &statements).await;
    let (ok, out) = cli(&env, &["reconcile", "Account"]);
    assert!(ok, "sfsync reconcile: {out}");
    let rec = jobs(&*store, SyncJobKind::Reconcile).await;
    let rec = rec.first().expect("a reconcile job");
    assert_eq!(rec.status, SyncJobStatus::Succeeded, "{rec:?}");
    let report: J = serde_json::from_str(rec.report.as_deref().unwrap()).unwrap();
    let set = |k: &str| -> BTreeSet<String> {
        serde_json::from_value::<Vec<String>>(report[k].clone())
            .unwrap()
            .into_iter()
            .collect()
    };
    assert_eq!(report["missing"], 3, "{report}");
    let mut missing: BTreeSet<String> = lost_rows.iter().cloned().collect();
    missing.insert(deleted_outright.clone());
    assert_eq!(set("sample_missing"), missing);
    assert_eq!(report["extra"], 3, "{report}");
    let mut extra: BTreeSet<String> = purged.iter().cloned().collect();
    extra.extend(silently_deleted.iter().cloned());
    assert_eq!(set("sample_extra"), extra);
    assert_eq!(report["stale"], 4, "{report}");
    let mut stale: BTreeSet<String> = updated.iter().cloned().collect();
    stale.insert(regressed.clone());
    assert_eq!(set("sample_stale"), stale);
    assert!(report["api_calls"].as_i64().unwrap() <= 10, "{report}");
    wait_for(
        "reconciliation repaired every difference",
        Duration::from_secs(60),
        || {
            let (env, store) = (&env, &*store);
            async move { diff(env, store).await }
        },
    )
    .await;
    let rows: BTreeMap<String, sfsync_store::CurrentRow> = store
        .read_current("Account")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    for id in &purged {
        let r = &rows[id];
        assert!(r.deleted && r.meta.change_type == "PURGED", "{id}: {r:?}");
    }
    assert!(rows[&silently_deleted[0]].deleted);
    // In sync now: a second reconciliation finds nothing.
    let (ok, out) = cli(&env, &["reconcile", "Account"]);
    assert!(ok, "{out}");
    let again = jobs(&*store, SyncJobKind::Reconcile).await;
    assert_eq!(again.len(), 2);
    let report: J = serde_json::from_str(again[1].report.as_deref().unwrap()).unwrap();
    assert_eq!(
        (
            report["missing"].as_u64(),
            report["extra"].as_u64(),
            report["stale"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{report}"
    );

    // 3. GAP_OVERFLOW: a 200-record transaction over a threshold of 50 changes.
    let mut cdc = env.emu.state.cdc.config();
    cdc.overflow_threshold = 50;
    env.emu.state.cdc.set_config(cdc);
    seed(&env, 200, 12);
    wait_for(
        "the overflow's re-sync converges",
        Duration::from_secs(90),
        || {
            let (env, store) = (&env, &*store);
            async move {
                let mut p = diff(env, store).await;
                let r = jobs(store, SyncJobKind::Resync).await;
                if !r.iter().any(|j| {
                    j.status == SyncJobStatus::Succeeded && j.reason.contains("GAP_OVERFLOW")
                }) {
                    p.push(format!("no succeeded GAP_OVERFLOW re-sync yet: {r:?}"));
                }
                p
            }
        },
    )
    .await;
    let mut cdc = env.emu.state.cdc.config();
    cdc.overflow_threshold = 100_000;
    env.emu.state.cdc.set_config(cdc);

    // 4. Down longer than the retention window.
    stop(child);
    let mut cdc = env.emu.state.cdc.config();
    cdc.retention = Duration::from_millis(1500);
    env.emu.state.cdc.set_config(cdc);
    seed(&env, 30, 13);
    tokio::time::sleep(Duration::from_secs(3)).await;
    seed(&env, 5, 14);
    // A repair request Salesforce refuses (a malformed id beside a valid one): split, the valid
    // record re-read, the malformed id dead-lettered with its cause; the queue is not blocked.
    store
        .commit_curated(
            "curated",
            None,
            &sfsync_store::CuratedBatch {
                repairs: vec![sfsync_store::RepairRequest {
                    object: "Account".into(),
                    record_ids: vec!["001NOTANID".into(), ids[7].clone()],
                    reason: "test_refused".into(),
                    event_key: "test/refused".into(),
                    commit_timestamp_ms: 1,
                }],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let resyncs_before = jobs(&*store, SyncJobKind::Resync).await.len();
    let child = spawn(&env);
    wait_for(
        "recovery after the retention window converges",
        Duration::from_secs(90),
        || {
            let (env, store) = (&env, &*store);
            async move {
                let mut p = diff(env, store).await;
                let r = jobs(store, SyncJobKind::Resync).await;
                let done = r.iter().any(|j| {
                    j.status == SyncJobStatus::Succeeded && j.reason.contains("replay id rejected")
                });
                if r.len() <= resyncs_before || !done {
                    p.push(format!("no succeeded replay-id re-sync yet: {r:?}"));
                }
                p
            }
        },
    )
    .await;
    // Right after the restart nothing had been applied yet in the new process: the window still
    // starts at the last change the warehouse holds (the logged event of the rejected replay
    // id), not at the beginning of time.
    let window: Vec<Option<i64>> = jobs(&*store, SyncJobKind::Resync)
        .await
        .into_iter()
        .filter(|j| j.reason.contains("replay id rejected"))
        .map(|j| j.since_ms)
        .collect();
    assert!(
        !window.is_empty() && window.iter().all(|s| s.is_some_and(|ms| ms > 0)),
        "re-syncs after a rejected replay id must be windowed: {window:?}"
    );
    let pending = store.pending_repairs(10).await.unwrap();
    assert!(pending.is_empty(), "repairs left pending: {pending:?}");
    let dead = text_pairs(
        &env,
        "SELECT channel, error FROM dead_letters WHERE stage = 'repair'",
    )
    .await;
    assert_eq!(dead.len(), 1, "one dead-lettered repair: {dead:?}");
    assert!(
        dead[0].0 == "repair:test_refused" && dead[0].1.contains("001NOTANID"),
        "the dead letter names the request and the refused id: {dead:?}"
    );
    stop(child);
}

/// The newest job of `kind`, read again until `done` holds for it (bounded).
async fn job_until(
    store: &dyn Warehouse,
    kind: SyncJobKind,
    what: &str,
    done: impl Fn(&SyncJob) -> bool,
) -> SyncJob {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let j = jobs(store, kind).await.into_iter().max_by_key(|j| j.id);
        if let Some(j) = j.filter(|j| done(j)) {
            return j;
        }
        assert!(Instant::now() < deadline, "{what}: never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn slice_states(j: &SyncJob) -> Vec<(u32, &'static str, i64)> {
    j.slices
        .iter()
        .map(|s| (s.seq, s.status.as_str(), s.attempts))
        .collect()
}

/// A backfill spanning more SystemModstamp than `job_slice_secs` runs in slices, oldest first,
/// each its own Bulk query with its own state: a SIGKILL mid-job resumes in the slice it was
/// in, a slice Salesforce refuses fails the job with the slice's error, and a retry carries
/// out only the slices that did not succeed. Every record arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_backfills_run_in_slices_that_a_crash_or_a_retry_never_read_again() {
    let env = env(Db::Sqlite).await;
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str("job_slice_secs = 1\n");
    std::fs::write(&env.config, text).unwrap();
    // Three generations of records, their SystemModstamps over more than three seconds.
    for g in 0..3 {
        if g > 0 {
            tokio::time::sleep(Duration::from_millis(1_300)).await;
        }
        seed(&env, 300, 30 + g);
    }
    let slow = || sfsync_emulator::faults::FaultConfig {
        latency_ms: 250,
        ..Default::default()
    };
    env.emu.state.faults.set(slow());

    // 1. The new object's backfill, SIGKILLed once its first slice is done.
    let child = spawn(&env);
    let store = open(&env).await;
    let before = job_until(&*store, SyncJobKind::Backfill, "slice 1 done", |j| {
        j.slices.len() >= 3
            && j.slices[0].status == sfsync_store::SliceStatus::Succeeded
            && j.status == SyncJobStatus::Running
    })
    .await;
    drop(child); // SIGKILL
    let n = before.slices.len();
    assert!(
        n <= 6,
        "slices of about a second: {:?}",
        slice_states(&before)
    );
    for w in before.slices.windows(2) {
        assert_eq!(w[0].until_ms, w[1].since_ms, "contiguous windows");
    }
    assert_eq!(
        before.slices[0].since_ms, None,
        "a full load starts unbounded"
    );
    assert_eq!(before.slices[n - 1].until_ms, None, "and ends open");
    env.emu.state.faults.set(Default::default());
    let child = spawn(&env);
    let done = job_until(
        &*store,
        SyncJobKind::Backfill,
        "the backfill succeeds",
        |j| j.id == before.id && !j.status.is_open(),
    )
    .await;
    assert_eq!(done.status, SyncJobStatus::Succeeded, "{done:?}");
    assert!(
        done.slices
            .iter()
            .all(|s| s.status == sfsync_store::SliceStatus::Succeeded && s.attempts == 1),
        "{:?}",
        slice_states(&done)
    );
    assert_eq!(
        done.slices[0], before.slices[0],
        "the finished slice was not read again"
    );
    let read: i64 = done.slices.iter().map(|s| s.counts.read).sum();
    assert_eq!(read, 900, "every record read once: {:?}", done.slices);
    assert!(diff(&env, &*store).await.is_empty());
    let history = store.read_history("Account").await.unwrap().len();
    let (ok, out) = cli(&env, &["jobs", "show", &done.id.to_string()]);
    assert!(ok && out.contains(&format!("slices ({n}):")), "{out}");

    // 2. An on-demand backfill whose second slice Salesforce refuses: the job fails with the
    // slice's error; the retry reads only the slices that did not succeed.
    env.emu.state.faults.set(slow());
    let (ok, out) = cli(&env, &["backfill", "Account", "--no-wait"]);
    assert!(ok, "{out}");
    let first_done = job_until(&*store, SyncJobKind::Backfill, "slice 1 of #2", |j| {
        j.id > done.id
            && j.slices
                .first()
                .is_some_and(|s| s.status == sfsync_store::SliceStatus::Succeeded)
    })
    .await;
    let mut refuse = slow();
    refuse.rules.push(sfsync_emulator::faults::FaultRule {
        path_contains: "/jobs/query".into(),
        method: Some("POST".into()),
        kind: sfsync_emulator::faults::FaultKind::QueryTimeout,
        rate: 1.0,
        max_count: None,
        fired: 0,
    });
    env.emu.state.faults.set(refuse);
    let failed = job_until(&*store, SyncJobKind::Backfill, "the job fails", |j| {
        j.id == first_done.id && !j.status.is_open()
    })
    .await;
    assert_eq!(failed.status, SyncJobStatus::Failed, "{failed:?}");
    let bad = failed
        .slices
        .iter()
        .find(|s| s.status == sfsync_store::SliceStatus::Failed)
        .unwrap_or_else(|| panic!("a failed slice: {:?}", slice_states(&failed)));
    assert!(
        bad.seq >= 2 && bad.error.as_deref().unwrap_or("").contains("QUERY_TIMEOUT"),
        "{bad:?}"
    );
    let bad_seq = bad.seq;
    env.emu.state.faults.set(Default::default());
    let (ok, out) = cli(&env, &["jobs", "retry", &failed.id.to_string()]);
    assert!(ok, "{out}");
    let retried = job_until(&*store, SyncJobKind::Backfill, "the retry succeeds", |j| {
        j.id == failed.id && j.attempts == 2 && !j.status.is_open()
    })
    .await;
    assert_eq!(retried.status, SyncJobStatus::Succeeded, "{retried:?}");
    for (old, new) in failed.slices.iter().zip(&retried.slices) {
        assert_eq!(new.status, sfsync_store::SliceStatus::Succeeded);
        if old.status == sfsync_store::SliceStatus::Succeeded {
            assert_eq!(old, new, "a finished slice is not read again");
        } else if old.seq == bad_seq {
            assert_eq!(new.attempts, 2, "{:?}", slice_states(&retried));
        } else {
            assert_eq!(new.attempts, 1, "{:?}", slice_states(&retried));
        }
    }
    assert!(diff(&env, &*store).await.is_empty());
    assert_eq!(
        store.read_history("Account").await.unwrap().len(),
        history,
        "snapshot rows that are not newer change nothing"
    );
    stop(child);
}
