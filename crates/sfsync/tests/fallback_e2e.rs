//! Automatic degradation from CDC to polling and back, end to end: `sfsync run` (a child
//! process, SQLite warehouse) streams Account over Pub/Sub from the emulator; the emulator's
//! Pub/Sub service goes down, later the org's delivery allocation runs out, and sfsync must poll
//! meanwhile and go back to the stream after — with changes committed all through both switches.
//!
//! `cdc_falls_back_to_polling_and_back_without_loss_or_duplicates`:
//! - **outage**: Pub/Sub unavailable (`UNAVAILABLE service.unavailable`); changes made right
//!   before, during the first seconds (stream retrying, not yet degraded) and while polled —
//!   including a tie of 120 records in one transaction and a late commit stamped inside the
//!   overlap — all land while the service is still down (so through polling);
//! - **switch back**: changes made just before the service returns and every 150 ms while it
//!   comes back land; the fallback ends (its run `succeeded`) and later changes arrive through
//!   the stream again, with no new polled rows;
//! - **allocation exhausted**: the org's 24 h delivery allocation runs out; the channel is
//!   polled at once; sfsync is SIGKILLed while polled and restarts still polling (the fallback
//!   state is persisted); the allocation comes back and the stream takes over again;
//! - throughout: the curated table equals the org column by column, every change is applied and
//!   audited as applied at most once per record and commit time (`covered` / `stale` for the
//!   copies), history versions never repeat their predecessor, and the audit chain verifies.

mod support;

use support::accounts::{self, inserts, updates};
use support::api::{free_port, Api};
use support::{metric_value, stop, wait_for, KillOnDrop};

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value as J};
use sfsync_emulator::RunningEmulator;
use sfsync_org::{CallContext, DmlOp};
use sfsync_pipeline::ObjectMapping;
use sfsync_salesforce::SalesforceClient;
use sfsync_store::{ChangeLog, SqliteChangeLog, SyncStatusStore, Warehouse};

const CHANNEL: &str = "/data/AccountChangeEvent";
const POLL_CHANNEL: &str = "/poll/Account";
const VIEWER: &str = "viewer-token-0123456789abcdef";

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
    // Keepalives every second (Salesforce: within 270 s): a stream back in a quiet moment
    // answers soon, which fixes the tip it started from and ends the fallback.
    let mut c = emu.state.cdc.config();
    c.keepalive_interval = Duration::from_secs(1);
    emu.state.cdc.set_config(c);
    let d = client.describe_object("Account").await.unwrap();
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
history = {{ fields = "all" }}

[warehouse]
type = "sqlite"
path = "{db}"

[pipeline]
batch_max_records = 500
batch_max_wait_ms = 50
backfill_new_objects = false
poll_interval_secs = 1
poll_overlap_secs = 10
poll_page_records = 100
cdc_fallback = true
cdc_fallback_after_secs = 2

[freshness]
update_every_secs = 1
delayed_after_secs = 4

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

/// The `sfsync_flow_mode` gauge of Account (0 cdc, 2 polled in the stream's place).
async fn flow_mode(env: &Env) -> Option<f64> {
    let (status, text) = env
        .api
        .call_text("GET", "/metrics", Some(VIEWER), None)
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{text}");
    metric_value(
        &text,
        &format!("sfsync_flow_mode{{channel=\"{CHANNEL}\",object=\"Account\"}}"),
    )
}

async fn wait_mode(env: &Env, mode: f64, what: &str) {
    env.api.ready().await;
    wait_for(what, Duration::from_secs(30), || async {
        match flow_mode(env).await {
            Some(m) if m == mode => vec![],
            m => vec![format!("sfsync_flow_mode {m:?}")],
        }
    })
    .await;
}

fn run(env: &Env) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_sfsync"))
            .args(["run", "--progress-secs", "0", "--config"])
            .arg(&env.config)
            .env(
                "SFSYNC_LOG",
                std::env::var("FB_LOG").unwrap_or("info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning sfsync run"),
    )
}

fn ctx(env: &Env) -> CallContext {
    accounts::ctx(&env.emu)
}

fn exec(env: &Env, ops: Vec<DmlOp>, stamped_ms: Option<i64>) -> Vec<String> {
    accounts::exec(&env.emu, ops, stamped_ms)
}

/// Commits a change every 5 ms for `span` on another thread (alternately a new record and an
/// update of one of `ids`); the new records' ids.
fn burst(env: &Env, ids: &[String], span: Duration) -> std::thread::JoinHandle<Vec<String>> {
    let org = env.emu.org().clone();
    let ctx = ctx(env);
    let ids = ids.to_vec();
    std::thread::spawn(move || {
        let end = std::time::Instant::now() + span;
        let mut created = Vec::new();
        let mut i = 0usize;
        while std::time::Instant::now() < end {
            let ops = if i.is_multiple_of(2) {
                inserts(&format!("Burst {i}"), 1)
            } else {
                let k = (i / 2) % ids.len();
                updates(&ids[k..k + 1], json!({ "Name": format!("Burst {i}") }))
            };
            for r in org.execute(&ctx, ops, true) {
                let id = r.expect("DML succeeds").id().to_string();
                if i.is_multiple_of(2) {
                    created.push(id);
                }
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        created
    })
}

fn set_pubsub(env: &Env, available: bool) {
    let mut c = env.emu.state.cdc.config();
    c.service_available = available;
    env.emu.state.cdc.set_config(c);
}

fn set_allocation(env: &Env, max: u64) {
    let mut c = env.emu.state.cdc.config();
    c.daily_delivery_allocation = max;
    env.emu.state.cdc.set_config(c);
}

async fn open(env: &Env) -> Arc<SqliteChangeLog> {
    let s = SqliteChangeLog::open(&env.db).await.unwrap();
    s.ensure_model(&env.mapping.model).await.unwrap();
    Arc::new(s)
}

async fn wait_equal(env: &Env, store: &SqliteChangeLog, deleted: &BTreeSet<String>, what: &str) {
    let within = Duration::from_secs(90);
    accounts::wait_equal(&env.client, &env.mapping, store, deleted, within, what).await;
}

/// The fallback state sfsync keeps for the channel: `Some(true)` while polled.
async fn fallback_on(store: &SqliteChangeLog) -> Option<bool> {
    store
        .checkpoint(&format!("/fallback/{CHANNEL}"))
        .await
        .unwrap()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).starts_with("fallback:v1:on:"))
}

async fn wait_fallback(store: &SqliteChangeLog, on: bool, what: &str) {
    wait_for(what, Duration::from_secs(60), || async {
        match fallback_on(store).await {
            Some(v) if v == on => vec![],
            v => vec![format!("fallback state {v:?}")],
        }
    })
    .await;
}

/// Raw-log entries per channel.
async fn logged(store: &SqliteChangeLog) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for l in store.read_from(0, 10_000_000).await.unwrap() {
        *out.entry(l.channel.clone()).or_default() += 1;
    }
    out
}

/// The audit trail: (record id, commit time) → outcomes. No change may be applied twice.
fn audit(env: &Env) -> BTreeMap<(String, i64), Vec<String>> {
    let conn = rusqlite::Connection::open(&env.db).unwrap();
    let mut stmt = conn
        .prepare("SELECT record_id, entry FROM audit_log ORDER BY seq")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap();
    let mut out: BTreeMap<(String, i64), Vec<String>> = BTreeMap::new();
    for row in rows {
        let (id, entry) = row.unwrap();
        let e: J = serde_json::from_str(&entry).unwrap();
        let ts = e["commit_timestamp_ms"]
            .as_i64()
            .expect("commit time in the entry");
        let outcome = e["outcome"].as_str().unwrap().to_string();
        out.entry((id, ts)).or_default().push(outcome);
    }
    out
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_falls_back_to_polling_and_back_without_loss_or_duplicates() {
    let env = env().await;
    let store = open(&env).await;
    let mut deleted: BTreeSet<String> = BTreeSet::new();

    // Streaming normally.
    let base = exec(&env, inserts("Base", 300), None);
    let child = run(&env);
    wait_equal(&env, &store, &deleted, "the base records stream in").await;
    wait_mode(&env, 0.0, "the flow is CDC").await;
    assert_eq!(fallback_on(&store).await, None, "never fell back yet");

    // 1. Pub/Sub goes down. Changes right away (the stream is retrying, not degraded yet).
    set_pubsub(&env, false);
    exec(
        &env,
        updates(&base[..40], json!({ "Name": "During outage" })),
        None,
    );
    let early = exec(&env, inserts("Early outage", 10), None);
    wait_fallback(&store, true, "the channel falls back to polling").await;
    wait_mode(&env, 2.0, "the flow shows degraded-poll").await;
    // While polled: a tie larger than a keyset page, deletes, and a late commit inside the
    // overlap.
    exec(
        &env,
        updates(&base[40..160], json!({ "Industry": "Energy" })),
        None,
    );
    let gone: Vec<String> = base[200..205].to_vec();
    exec(
        &env,
        gone.iter()
            .map(|id| DmlOp::Delete { id: id.clone() })
            .collect(),
        None,
    );
    deleted.extend(gone.iter().cloned());
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let late = exec(&env, inserts("Late", 3), Some(now_ms() - 4_000));
    wait_equal(
        &env,
        &store,
        &deleted,
        "changes land by polling while Pub/Sub is down",
    )
    .await;
    assert!(
        !env.emu.state.cdc.config().service_available,
        "converged while the stream was still down"
    );
    assert_eq!(fallback_on(&store).await, Some(true));
    // Polled in the stream's place, the object is still reported current (its stream has
    // been down longer than `delayed_after_secs` by now).
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_for(
        "sync_status reports Account current while polled",
        Duration::from_secs(20),
        || async {
            let rows = store.sync_status(Some("Account")).await.unwrap();
            rows.iter()
                .filter(|r| r.status != sfsync_store::FreshnessStatus::Current)
                .map(|r| format!("{:?} ({})", r.status, r.status_reason))
                .chain(rows.is_empty().then(|| "no rows".to_string()))
                .collect()
        },
    )
    .await;
    let polled = logged(&store).await.get(POLL_CHANNEL).copied().unwrap_or(0);
    assert!(
        polled >= 120 + 10 + 5 + 3,
        "the changes came through polling: {polled}"
    );

    // 2. Pub/Sub comes back, with changes all through the switch.
    exec(
        &env,
        updates(&base[160..170], json!({ "Name": "Before recovery" })),
        None,
    );
    // A change every few milliseconds while the stream comes back, so some land between the
    // stream's new start and the final poll round (read by both: applied once).
    let changes = burst(&env, &base[170..200], Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(500)).await;
    set_pubsub(&env, true);
    let during = changes.join().unwrap();
    wait_fallback(&store, false, "the stream carries the channel again").await;
    wait_mode(&env, 0.0, "the flow is CDC again").await;
    wait_equal(
        &env,
        &store,
        &deleted,
        "changes made across the switch back land",
    )
    .await;

    // After the switch: the stream alone, no new polled rows.
    let before = logged(&store).await;
    let after_switch = exec(&env, inserts("After switch", 20), None);
    exec(
        &env,
        updates(&base[250..260], json!({ "Name": "Streamed" })),
        None,
    );
    wait_equal(&env, &store, &deleted, "changes after the switch stream in").await;
    let now = logged(&store).await;
    assert_eq!(
        now.get(POLL_CHANNEL),
        before.get(POLL_CHANNEL),
        "nothing polled after the switch back"
    );
    // 20 creates, and one event for the 10 same-valued updates (merged by the emulator).
    assert!(now[CHANNEL] >= before[CHANNEL] + 21, "{before:?} → {now:?}");
    let rows: BTreeMap<String, sfsync_store::CurrentRow> = store
        .read_current("Account")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    for id in after_switch.iter().chain(&base[250..260]) {
        assert_eq!(
            rows[id].meta.source,
            sfsync_store::ChangeSource::Cdc,
            "{id}"
        );
    }

    // 3. The delivery allocation runs out: polled at once. SIGKILL while polled.
    let (_, remaining) = env.emu.state.cdc.delivery_usage();
    let (max, _) = env.emu.state.cdc.delivery_usage();
    set_allocation(&env, max - remaining);
    exec(
        &env,
        updates(&base[260..280], json!({ "Name": "Over allocation" })),
        None,
    );
    wait_fallback(
        &store,
        true,
        "an exhausted allocation falls back to polling",
    )
    .await;
    exec(&env, inserts("Polled again", 15), None);
    wait_equal(
        &env,
        &store,
        &deleted,
        "changes land by polling over the allocation",
    )
    .await;
    drop(child);
    exec(
        &env,
        updates(&base[280..290], json!({ "Name": "While killed" })),
        None,
    );
    let child = run(&env);
    exec(&env, inserts("After restart", 5), None);
    wait_equal(&env, &store, &deleted, "the restart goes on polling").await;
    assert_eq!(
        fallback_on(&store).await,
        Some(true),
        "still polled after the restart"
    );
    wait_mode(&env, 2.0, "the restarted process shows degraded-poll").await;
    let changes = burst(&env, &base[290..300], Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(500)).await;
    set_allocation(&env, 50_000_000);
    let closing = changes.join().unwrap();
    wait_fallback(&store, false, "the stream is back after the allocation").await;
    wait_mode(&env, 0.0, "the flow is CDC at the end").await;
    wait_equal(&env, &store, &deleted, "everything converges").await;
    stop(child);

    // No change applied twice; every copy recorded as covered or stale.
    let trail = audit(&env);
    let mut twice = Vec::new();
    let mut covered = 0;
    for ((id, ts), outcomes) in &trail {
        let applied = outcomes
            .iter()
            .filter(|o| matches!(o.as_str(), "applied" | "late"))
            .count();
        covered += outcomes.iter().filter(|o| *o == "covered").count();
        if applied > 1 {
            twice.push(format!("{id} at {ts}: {outcomes:?}"));
        }
    }
    assert!(
        twice.is_empty(),
        "changes applied twice:\n{}",
        twice.join("\n")
    );
    for id in early.iter().chain(&late).chain(&during).chain(&closing) {
        assert!(trail.keys().any(|(i, _)| i == id), "{id}: no audit entry");
    }
    eprintln!(
        "audit: {} changes, {covered} stream copies covered by a poll",
        trail.len()
    );
    accounts::history(&store).await;
    let verified = store.verify_audit().await.unwrap();
    assert!(verified.first_break.is_none(), "{verified:?}");
    let runs = store.runs(100).await.unwrap();
    let fallbacks: Vec<_> = runs.iter().filter(|r| r.kind == "poll-fallback").collect();
    assert!(fallbacks.len() >= 2, "{runs:?}");
    assert!(
        fallbacks.iter().any(|r| r.status == "succeeded"),
        "{fallbacks:?}"
    );
}
