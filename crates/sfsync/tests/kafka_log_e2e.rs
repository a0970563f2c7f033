//! Kafka as the raw change log, with run roles (issue 10), end to end: the emulator over
//! loopback TLS, a real Kafka-protocol broker (tansu) and a real Postgres warehouse, `sfsync run`
//! processes as children.
//!
//! 1. One `--role ingest` and two `--role apply` workers sharing the topic's partitions as a
//!    consumer group; one worker is killed with SIGKILL mid-stream and restarted. The curated
//!    state equals the org's records, and no change made two history rows.
//! 2. Lease take-over with a stalled old leader: the ingest process holding the channel's lease
//!    is paused (SIGSTOP) past the lease; a second ingest process takes the lease over (epoch
//!    2) and streams; the old one, resumed, writes nothing more — every change made after it
//!    resumed is in the topic exactly once — and the warehouse converges to the org.

mod support;

#[path = "../../sfsync-store/tests/support/pg.rs"]
#[allow(dead_code)]
mod pg;

use support::{stop, wait_for, KillOnDrop};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Map, Value as J};
use sfsync_emulator::RunningEmulator;
use sfsync_org::{ApiKind, CallContext, DmlOp};
use sfsync_pipeline::{ObjectMapping, ObjectSpec};
use sfsync_salesforce::SalesforceClient;
use sfsync_store::Warehouse;

const PG_URL_VAR: &str = "SFSYNC_KAFKA_LOG_E2E_PG_URL";

struct Env {
    emu: RunningEmulator,
    _tmp: tempfile::TempDir,
    client: SalesforceClient,
    account: ObjectMapping,
    url: String,
    schema: String,
    config: PathBuf,
    topic: String,
    broker: sfsync_kafka::test_support::Broker,
    _pg: std::sync::Arc<pg::PgServer>,
}

async fn env(name: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (emu, client) = support::emulator(&dir).await;
    let d = client.describe_object("Account").await.unwrap();
    let account = ObjectMapping::build(&d, &ObjectSpec::new("Account")).unwrap();
    let server = tokio::task::spawn_blocking(pg::shared_server)
        .await
        .unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port);
    let schema = format!("kafka_log_{name}_{}", std::process::id());
    // The schema exists before any process or the test connects to it.
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    c.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
        .await
        .unwrap();
    drop(c);
    let _ = conn.await;
    let broker = sfsync_kafka::test_support::Broker::start(&dir.join("broker"));
    let topic = format!("sfsync.raw.{name}");
    let config = dir.join("sfsync.toml");
    let text = format!(
        r#"[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"

[[objects]]
name = "Account"

[warehouse]
type = "postgres"
url = {{ env = "{PG_URL_VAR}" }}
schema = "{schema}"

[pipeline]
batch_max_records = 50
batch_max_wait_ms = 50
backfill_new_objects = false

[log]
backend = "kafka"
brokers = "{brokers}"
topic = "{topic}"
partitions = 4
group = "apply-{name}"
lease_ttl_secs = 3

[api]
enabled = false
"#,
        creds = emu.credentials_path.display(),
        ca = emu.ca_pem_path.display(),
        brokers = broker.bootstrap(),
    );
    std::fs::write(&config, text).unwrap();
    Env {
        emu,
        _tmp: tmp,
        client,
        account,
        url,
        schema,
        config,
        topic,
        broker,
        _pg: server,
    }
}

fn spawn(env: &Env, role: &str, node: &str) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_sfsync"))
            .env("SFSYNC_LOG", "warn,sfsync_pipeline::kafka_log=info")
            .env(PG_URL_VAR, &env.url)
            .env("HOSTNAME", node)
            .args(["run", "--progress-secs", "0", "--role", role, "--config"])
            .arg(&env.config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning sfsync run"),
    )
}

async fn store(env: &Env) -> Box<dyn Warehouse> {
    let mut cfg: tokio_postgres::Config = env.url.parse().unwrap();
    cfg.options(format!("-c search_path={}", env.schema));
    let s = sfsync_store::PostgresChangeLog::connect_with(&cfg)
        .await
        .unwrap();
    Box::new(s)
}

fn ctx(env: &Env) -> CallContext {
    CallContext {
        user_id: env.emu.org().admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: Some("someone-else".into()),
    }
}

fn fields(pairs: &[(&str, String)]) -> Map<String, J> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), J::String(v.clone())))
        .collect()
}

/// `n` rounds of changes: inserts of new Accounts and updates of earlier ones, several records
/// per transaction (multi-record change events), a short pause between rounds.
async fn traffic(env: &Env, tag: &str, rounds: usize, ids: &mut Vec<String>) {
    for r in 0..rounds {
        let mut ops = Vec::new();
        for i in 0..4 {
            ops.push(DmlOp::Insert {
                object: "Account".into(),
                fields: fields(&[("Name", format!("{tag}-{r}-{i}"))]),
            });
        }
        for id in ids.iter().rev().take(3) {
            ops.push(DmlOp::Update {
                object: "Account".into(),
                id: id.clone(),
                fields: fields(&[("Description", format!("{tag} round {r}"))]),
            });
        }
        for res in env.emu.org().execute(&ctx(env), ops, true) {
            let id = res.expect("the DML succeeds").id().to_string();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

/// The warehouse equals the org (live records, every column), within `within`. On failure the
/// panic names, per partition, the stored apply offset and the topic's last offset, and which
/// partition each missing record's messages are on.
async fn converges(env: &Env, within: Duration) {
    let w = store(env).await;
    let deadline = std::time::Instant::now() + within;
    loop {
        let problems = support::live_diff(&env.client, &env.account, &*w).await;
        if problems.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            let msgs = sfsync_kafka::Consumer::read_all(
                &env.broker.config(),
                &env.topic,
                Duration::from_secs(60),
            )
            .await
            .unwrap_or_default();
            let mut last: BTreeMap<i32, i64> = BTreeMap::new();
            for m in &msgs {
                let e = last.entry(m.partition).or_insert(m.offset);
                *e = (*e).max(m.offset);
            }
            let mut diag = Vec::new();
            for (p, o) in &last {
                let stored = w
                    .applied_offset(&format!("kafka:{}:{p}", env.topic))
                    .await
                    .unwrap();
                diag.push(format!(
                    "partition {p}: last offset {o}, stored apply offset {stored:?}"
                ));
            }
            for pr in problems.iter().take(5) {
                let on: Vec<String> = msgs
                    .iter()
                    .filter(|m| pr.contains(&m.key_str()) && !m.key_str().is_empty())
                    .map(|m| format!("{}@{}", m.partition, m.offset))
                    .collect();
                diag.push(format!("{pr}; its messages: {on:?}"));
            }
            panic!(
                "the warehouse does not equal the org after {within:?}:\n{}\n{}",
                problems
                    .iter()
                    .take(20)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n"),
                diag.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// History rows that exist twice for one (record, version).
async fn duplicate_history(env: &Env) -> Vec<String> {
    let w = store(env).await;
    let mut seen: BTreeMap<(String, i64), usize> = BTreeMap::new();
    for h in w.read_history("Account").await.unwrap() {
        *seen.entry((h.id.clone(), h.version)).or_default() += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|((id, v), n)| format!("{id} version {v}: {n} history rows"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apply_workers_one_killed_mid_stream_converge_without_duplicates() {
    let env = env("workers").await;
    let mut ingest = spawn(&env, "ingest", "ingest-1");
    let mut a = spawn(&env, "apply", "apply-a");
    let b = spawn(&env, "apply", "apply-b");
    let mut ids = Vec::new();
    traffic(&env, "one", 30, &mut ids).await;
    // Worker A dies mid-stream (no chance to finish a commit), then comes back.
    a.0.kill().unwrap();
    let _ = a.0.wait();
    traffic(&env, "two", 30, &mut ids).await;
    a = spawn(&env, "apply", "apply-a");
    traffic(&env, "three", 20, &mut ids).await;
    // The killed worker's partitions move on once the group notices it is gone (its session
    // timeout), then the survivor or the restarted worker applies them.
    converges(&env, Duration::from_secs(240)).await;
    assert_eq!(duplicate_history(&env).await, Vec::<String>::new());
    // Every partition's offset is kept by the warehouse, with the curated rows.
    let w = store(&env).await;
    for p in 0..4 {
        let c = format!("kafka:{}:{p}", env.topic);
        assert!(
            w.applied_offset(&c).await.unwrap().is_some(),
            "no applied offset stored for {c}"
        );
    }
    // The raw log is the topic, not the warehouse: payloads were not logged there.
    assert!(w.read_from(1, 1).await.unwrap().is_empty());
    for p in [a, b] {
        stop(p);
    }
    let _ = &mut ingest;
    stop(ingest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_takeover_with_a_stalled_leader_never_double_ingests() {
    let env = env("lease").await;
    let old = spawn(&env, "ingest", "ingest-old");
    let apply = spawn(&env, "apply", "apply-1");
    let w = store(&env).await;
    wait_for(
        "the old ingest holds the lease",
        Duration::from_secs(60),
        || async {
            match w.leases().await {
                Ok(l)
                    if l.iter()
                        .any(|l| l.holder.starts_with("ingest-old-") && l.epoch == 1) =>
                {
                    vec![]
                }
                other => vec![format!("leases: {other:?}")],
            }
        },
    )
    .await;
    let mut ids = Vec::new();
    traffic(&env, "before", 10, &mut ids).await;
    // The leader stalls (a GC pause, a frozen VM) past its lease.
    let pid = old.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let new = spawn(&env, "ingest", "ingest-new");
    wait_for(
        "the new ingest took the lease over",
        Duration::from_secs(60),
        || async {
            match w.leases().await {
                Ok(l)
                    if l.iter()
                        .any(|l| l.holder.starts_with("ingest-new-") && l.epoch == 2) =>
                {
                    vec![]
                }
                other => vec![format!("leases: {other:?}")],
            }
        },
    )
    .await;
    traffic(&env, "during", 10, &mut ids).await;
    converges(&env, Duration::from_secs(90)).await;
    // The old leader wakes up believing it leads.
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut after = Vec::new();
    traffic(&env, "after", 10, &mut after).await;
    converges(&env, Duration::from_secs(90)).await;
    assert_eq!(duplicate_history(&env).await, Vec::<String>::new());
    // Every change made after the old leader resumed is in the topic exactly once: only the
    // new leader ingests.
    let msgs =
        sfsync_kafka::Consumer::read_all(&env.broker.config(), &env.topic, Duration::from_secs(60))
            .await
            .unwrap();
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for m in &msgs {
        let key = m
            .headers
            .iter()
            .find(|(k, _)| k == "sfsync-event-key")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        if after.iter().any(|id| key.ends_with(id.as_str())) {
            *per_key.entry(key).or_default() += 1;
        }
    }
    assert!(
        !per_key.is_empty(),
        "no message of the last changes in the topic"
    );
    let twice: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "ingested twice after the take-over: {twice:?}"
    );
    let leases = w.leases().await.unwrap();
    assert!(
        leases
            .iter()
            .any(|l| l.holder.starts_with("ingest-new-") && l.epoch == 2),
        "{leases:?}"
    );
    for p in [new, apply, old] {
        stop(p);
    }
}
