//! Delivery sinks end to end: `sfsync run` as a child process against the emulator over
//! loopback TLS (SQLite warehouse), webhook receivers served by the test on loopback, each
//! verifying the HMAC signature of every request.
//!
//! 1. A receiver that fails its first requests (500) and one that blocks (a consumer that does
//!    not answer): the first gets every change exactly once by idempotency key, in order per
//!    record, with PII opened as configured, while the second is still blocked (a slow sink
//!    never holds back another); once unblocked, the second gets every change too — except the
//!    echo of the write its own system made through writeback — with PII omitted.
//! 2. A receiver that rejects one record (422): that change becomes a dead letter and the
//!    record's later change is held behind it, every other change is delivered; redriven
//!    through the API, both arrive in order. A receiver that is down past
//!    `dead_letter_after_secs`: its changes become dead letters and the sink moves on; when it
//!    is back, new changes flow and a redrive through the CLI delivers the old ones.
//! 3. A Kafka sink on a real Kafka-protocol broker (tansu, on loopback) that is killed and
//!    restarted mid-stream: every change reaches its object's topic, keyed by record Id, each
//!    record's changes in order on one partition; duplicates (a batch resent after the outage)
//!    carry the same idempotency key.

mod support;

use support::api::{free_port, Api};
use support::{stop, wait_for, KillOnDrop};

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use serde_json::{json, Value as J};
use sfsync_emulator::RunningEmulator;
use sfsync_org::{ApiKind, CallContext, DmlOp};
use sfsync_store::{NewWrite, SqliteChangeLog, WriteLedger, WriteTarget};

const OPS: &str = "sinks-e2e-operator-token-01";
const SECRET: &str = "sinks-e2e-signing-secret-0123456789";

/// A webhook receiver: records every change of every request it accepts.
struct Receiver {
    /// Changes accepted, in arrival order.
    got: Mutex<Vec<J>>,
    requests: AtomicU64,
    bad_signatures: AtomicU64,
    /// Answer 500 to this many more requests.
    fail_next: AtomicU64,
    /// Answer 503 while set.
    down: AtomicBool,
    /// Answer 422 to a batch holding a record whose Name starts with this.
    reject_prefix: Mutex<Option<String>>,
    /// Requests wait while this is false.
    open: tokio::sync::watch::Sender<bool>,
}

impl Receiver {
    fn new() -> Arc<Receiver> {
        Arc::new(Receiver {
            got: Mutex::new(Vec::new()),
            requests: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            fail_next: AtomicU64::new(0),
            down: AtomicBool::new(false),
            reject_prefix: Mutex::new(None),
            open: tokio::sync::watch::channel(true).0,
        })
    }

    fn changes(&self) -> Vec<J> {
        self.got.lock().clone()
    }

    fn keys(&self) -> Vec<String> {
        self.changes()
            .iter()
            .map(|c| c["idempotency_key"].as_str().unwrap().to_string())
            .collect()
    }
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    r.requests.fetch_add(1, SeqCst);
    let sig = headers
        .get("x-sfsync-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let now = chrono::Utc::now().timestamp();
    if !sfsync_pipeline::sinks::webhook::verify_signature(SECRET.as_bytes(), sig, &body, now, 300) {
        r.bad_signatures.fetch_add(1, SeqCst);
        return (StatusCode::UNAUTHORIZED, "bad signature".into());
    }
    let mut open = r.open.subscribe();
    while !*open.borrow_and_update() {
        if open.changed().await.is_err() {
            break;
        }
    }
    if r.fail_next
        .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (StatusCode::INTERNAL_SERVER_ERROR, "try later".into());
    }
    if r.down.load(SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down".into());
    }
    let batch: J = serde_json::from_slice(&body).expect("a JSON batch");
    let changes = batch["changes"].as_array().cloned().unwrap_or_default();
    if let Some(p) = r.reject_prefix.lock().clone() {
        if changes.iter().any(|c| {
            c["record"]["Name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&p))
        }) {
            return (StatusCode::UNPROCESSABLE_ENTITY, "record refused".into());
        }
    }
    let object = batch["object"].as_str().unwrap_or_default();
    assert!(
        changes.iter().all(|c| c["object"] == object),
        "one object per batch"
    );
    r.got.lock().extend(changes);
    (StatusCode::OK, "{}".into())
}

/// Serves `r` on a loopback port; returns its URL.
async fn serve(r: Arc<Receiver>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(r);
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}/hook")
}

struct Env {
    emu: RunningEmulator,
    _dir: tempfile::TempDir,
    db: PathBuf,
    config: PathBuf,
    api: Api,
}

/// An emulator and a config with `sinks` (TOML of `[[sinks]]` tables).
async fn env(sinks: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let (emu, _client) = support::emulator(dir.path()).await;
    let db = dir.path().join("wh.db");
    let config = dir.path().join("sfsync.toml");
    std::fs::write(dir.path().join("ops.token"), OPS).unwrap();
    std::fs::write(dir.path().join("hook.secret"), SECRET).unwrap();
    std::fs::write(dir.path().join("pii.key"), "11".repeat(32)).unwrap();
    let port = free_port();
    let text = format!(
        r#"[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"

[[objects]]
name = "Account"
pii_fields = ["Phone"]

[warehouse]
type = "sqlite"
path = "{db}"

[pii]
key_file = "pii.key"
key_id = "k1"

[pipeline]
batch_max_records = 200
batch_max_wait_ms = 50
backfill_new_objects = false

[api]
listen = "127.0.0.1:{port}"

[[api.tokens]]
name = "ops"
role = "operator"
token_file = "ops.token"

[[writeback.objects]]
name = "Account"
owner = "shared"
policy = "last_write_wins"

{sinks}"#,
        creds = emu.credentials_path.display(),
        ca = emu.ca_pem_path.display(),
        db = db.display(),
    );
    std::fs::write(&config, text).unwrap();
    Env {
        emu,
        db,
        config,
        _dir: dir,
        api: Api {
            http: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{port}"),
        },
    }
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

fn sink(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[sinks]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = {{ file = \"hook.secret\" }}\nbatch_max = 25\nretry_base_ms = 50\nretry_max_secs = 1\n{extra}\n"
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

fn dml(env: &Env, ops: Vec<DmlOp>) -> Vec<String> {
    env.emu
        .org()
        .execute(&ctx(env), ops, true)
        .into_iter()
        .map(|r| r.expect("DML succeeds").id().to_string())
        .collect()
}

fn insert(name: &str, phone: &str) -> DmlOp {
    DmlOp::Insert {
        object: "Account".into(),
        fields: json!({ "Name": name, "Phone": phone })
            .as_object()
            .unwrap()
            .clone(),
    }
}

fn update(id: &str, name: &str) -> DmlOp {
    DmlOp::Update {
        object: "Account".into(),
        id: id.into(),
        fields: json!({ "Name": name }).as_object().unwrap().clone(),
    }
}

/// Changes per record id, in arrival order.
fn by_record(changes: &[J]) -> BTreeMap<String, Vec<J>> {
    let mut out: BTreeMap<String, Vec<J>> = BTreeMap::new();
    for c in changes {
        out.entry(c["id"].as_str().unwrap().to_string())
            .or_default()
            .push(c.clone());
    }
    out
}

fn duplicates(keys: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    keys.iter()
        .filter(|k| !seen.insert(k.as_str()))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_once_in_order_to_each_sink_whatever_the_other_does() {
    let a = Receiver::new();
    let b = Receiver::new();
    a.fail_next.store(4, SeqCst);
    b.open.send_replace(false);
    let (url_a, url_b) = (serve(a.clone()).await, serve(b.clone()).await);
    let env = env(&format!(
        "{}{}",
        sink("audit-feed", &url_a, "pii = \"plain\""),
        sink(
            "cases",
            &url_b,
            "system = \"case_mgmt\"\ntimeout_secs = 120"
        ),
    ))
    .await;
    let child = run(&env);
    env.api.ready().await;

    let ids = dml(
        &env,
        (0..60)
            .map(|i| insert(&format!("Acct-{i}"), &format!("555-01{i:02}")))
            .collect(),
    );
    dml(
        &env,
        ids.iter().map(|id| update(id, "renamed once")).collect(),
    );
    dml(
        &env,
        ids.iter()
            .enumerate()
            .map(|(i, id)| update(id, &format!("final-{i}")))
            .collect(),
    );
    dml(
        &env,
        ids[55..]
            .iter()
            .map(|id| DmlOp::Delete { id: id.clone() })
            .collect(),
    );
    // The case-management system writes through sfsync: the echo of its write must not go
    // back to it.
    let ledger = SqliteChangeLog::open(&env.db).await.unwrap();
    ledger.set_keyring(Some(Arc::new(sfsync_store::Keyring::new("k1", [0x11; 32]))));
    ledger
        .submit_writes(&[NewWrite {
            source_system: "case_mgmt".into(),
            idempotency_key: "cm-1".into(),
            object: "Account".into(),
            target: WriteTarget::RecordId(ids[0].clone()),
            fields: json!({ "Name": "From cases" }).as_object().unwrap().clone(),
            seen_version_ms: None,
        }])
        .await
        .unwrap();
    // 60 creates, 120 updates, 5 deletes and the echo.
    let expected = 186;
    wait_for(
        "the first sink receives every change",
        Duration::from_secs(120),
        || async {
            let n = a.changes().len();
            let echo = a
                .changes()
                .iter()
                .any(|c| c["origin_system"] == "case_mgmt");
            if n >= expected && echo {
                vec![]
            } else {
                vec![format!("{n} of {expected} changes, echo received: {echo}")]
            }
        },
    )
    .await;
    // The blocked consumer has not acknowledged anything, yet the other sink is complete.
    assert!(
        b.changes().is_empty(),
        "the blocked receiver recorded changes"
    );
    assert!(
        b.requests.load(SeqCst) >= 1,
        "the blocked receiver was never called"
    );

    let got_a = a.changes();
    let keys_a = a.keys();
    assert_eq!(
        duplicates(&keys_a),
        Vec::<String>::new(),
        "duplicates in the first sink"
    );
    assert_eq!(got_a.len(), expected, "changes of the first sink");
    assert_eq!(a.bad_signatures.load(SeqCst), 0);
    // Retried through its failures.
    assert!(a.requests.load(SeqCst) > 4);
    let per_record = by_record(&got_a);
    assert_eq!(per_record.len(), 60);
    for (i, id) in ids.iter().enumerate() {
        let cs = &per_record[id];
        let seqs: Vec<i64> = cs.iter().map(|c| c["seq"].as_i64().unwrap()).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{id}: out of order {seqs:?}"
        );
        let types: Vec<&str> = cs
            .iter()
            .map(|c| c["change_type"].as_str().unwrap())
            .collect();
        assert_eq!(&types[..3], ["CREATE", "UPDATE", "UPDATE"], "{id}");
        assert_eq!(
            cs[0]["record"]["Phone"],
            json!(format!("555-01{i:02}")),
            "PII opened"
        );
        if i >= 55 {
            assert_eq!(types.last(), Some(&"DELETE"), "{id}");
            assert_eq!(cs.last().unwrap()["deleted"], json!(true));
        } else if i > 0 {
            assert_eq!(
                cs.last().unwrap()["record"]["Name"],
                json!(format!("final-{i}"))
            );
        }
    }
    let echo: Vec<&J> = got_a
        .iter()
        .filter(|c| c["origin_system"] == "case_mgmt")
        .collect();
    assert_eq!(echo.len(), 1, "one echo");
    assert_eq!(echo[0]["record"]["Name"], json!("From cases"));

    // The blocked consumer opens: it catches up on everything but its own system's change.
    b.open.send_replace(true);
    wait_for(
        "the second sink catches up",
        Duration::from_secs(120),
        || async {
            let n = b.changes().len();
            if n >= expected - 1 {
                vec![]
            } else {
                vec![format!("{n} of {} changes", expected - 1)]
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let keys_b = b.keys();
    assert_eq!(
        duplicates(&keys_b),
        Vec::<String>::new(),
        "duplicates in the second sink"
    );
    let mut want: Vec<&str> = keys_a
        .iter()
        .map(String::as_str)
        .filter(|k| *k != echo[0]["idempotency_key"].as_str().unwrap())
        .collect();
    let mut have: Vec<&str> = keys_b.iter().map(String::as_str).collect();
    want.sort_unstable();
    have.sort_unstable();
    assert_eq!(have, want, "the second sink: every change but the echo");
    assert!(
        b.changes()
            .iter()
            .all(|c| c["record"].get("Phone").is_none()),
        "PII omitted"
    );
    assert_eq!(b.bad_signatures.load(SeqCst), 0);

    // The sinks on the integration map, with their live figures.
    wait_for(
        "delivery flows are green",
        Duration::from_secs(30),
        || async {
            let flows = env.api.get("/api/v1/flows", OPS).await;
            let mut p = Vec::new();
            for sink_name in ["audit-feed", "cases"] {
                let f = flows["flows"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|f| f["direction"] == "delivery" && f["sink"] == sink_name)
                    .cloned();
                match f {
                    None => p.push(format!("no delivery flow for {sink_name}")),
                    Some(f) if f["health"] != "green" => p.push(format!("{f}")),
                    Some(_) => {}
                }
            }
            p
        },
    )
    .await;

    // The sinks in the metrics.
    let (_, metrics) = env.api.call_text("GET", "/metrics", Some(OPS), None).await;
    assert!(
        metrics.contains(&format!(
            "sfsync_sink_delivered_total{{sink=\"audit-feed\",kind=\"webhook\"}} {expected}\n"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("sfsync_sink_echoes_skipped_total{sink=\"cases\",kind=\"webhook\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sfsync_sink_backlog_changes{sink=\"cases\",object=\"Account\"} 0\n"),
        "{metrics}"
    );
    stop(child);
}

/// Open delivery dead letters of `sink` through the API.
async fn dead_letters(env: &Env, sink: &str) -> Vec<J> {
    env.api
        .get("/api/v1/deadletters?kind=delivery&limit=500", OPS)
        .await["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["sink"] == sink)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_and_undeliverable_changes_become_dead_letters_and_redrive_in_order() {
    let strict = Receiver::new();
    let down = Receiver::new();
    *strict.reject_prefix.lock() = Some("POISON".into());
    down.down.store(true, SeqCst);
    let (url_s, url_d) = (serve(strict.clone()).await, serve(down.clone()).await);
    let env = env(&format!(
        "{}{}",
        sink("strict", &url_s, ""),
        sink("down", &url_d, "dead_letter_after_secs = 2"),
    ))
    .await;
    let child = run(&env);
    env.api.ready().await;

    let mut ops: Vec<DmlOp> = (0..19)
        .map(|i| insert(&format!("Acct-{i}"), "555-0000"))
        .collect();
    ops.push(insert("POISON-1", "555-0000"));
    let ids = dml(&env, ops);
    let poison = ids[19].clone();
    dml(
        &env,
        vec![update(&poison, "POISON-1b"), update(&ids[2], "Acct-2b")],
    );

    // The strict sink: 19 creates and Acct-2's update delivered; the poisoned create rejected
    // and its update held behind it.
    wait_for(
        "the strict sink settles",
        Duration::from_secs(90),
        || async {
            let n = strict.changes().len();
            let d = dead_letters(&env, "strict").await.len();
            if n >= 20 && d >= 2 {
                vec![]
            } else {
                vec![format!("{n} delivered, {d} dead letters")]
            }
        },
    )
    .await;
    let dl = dead_letters(&env, "strict").await;
    assert_eq!(dl.len(), 2, "{dl:?}");
    assert!(dl.iter().all(|d| d["record_id"] == json!(poison)));
    assert!(dl[0]["reason"].as_str().unwrap().contains("422"), "{dl:?}");
    assert!(
        dl[1]["reason"].as_str().unwrap().starts_with("held"),
        "{dl:?}"
    );
    assert_eq!(strict.changes().len(), 20);
    assert!(strict.changes().iter().all(|c| c["id"] != json!(poison)));

    // The down sink: past dead_letter_after, every change becomes a dead letter.
    wait_for(
        "the down sink gives up",
        Duration::from_secs(90),
        || async {
            let d = dead_letters(&env, "down").await.len();
            if d >= 22 {
                vec![]
            } else {
                vec![format!("{d} of 22 dead letters")]
            }
        },
    )
    .await;
    let down_dl = dead_letters(&env, "down").await;
    assert!(
        down_dl[0]["reason"]
            .as_str()
            .unwrap()
            .contains("undeliverable"),
        "{down_dl:?}"
    );

    // The strict receiver accepts the record now: a redrive of the first dead letter delivers
    // both of its changes, in order.
    *strict.reject_prefix.lock() = None;
    let id = dl[0]["id"].as_i64().unwrap();
    let (status, body) = env
        .api
        .call(
            "POST",
            &format!("/api/v1/deadletters/delivery/{id}/redrive"),
            Some(OPS),
            Some(&json!({ "note": "receiver fixed" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for("the redrive delivers", Duration::from_secs(60), || async {
        let n = strict
            .changes()
            .iter()
            .filter(|c| c["id"] == json!(poison))
            .count();
        if n == 2 {
            vec![]
        } else {
            vec![format!("{n} of 2 changes of the record")]
        }
    })
    .await;
    let got: Vec<J> = strict
        .changes()
        .into_iter()
        .filter(|c| c["id"] == json!(poison))
        .collect();
    assert_eq!(got[0]["change_type"], "CREATE");
    assert_eq!(got[1]["record"]["Name"], "POISON-1b");
    wait_for(
        "no open strict dead letters",
        Duration::from_secs(30),
        || async {
            let d = dead_letters(&env, "strict").await;
            d.iter().map(|d| format!("open: {d}")).collect()
        },
    )
    .await;
    // A second redrive of a delivered one is refused.
    let (status, _) = env
        .api
        .call(
            "POST",
            &format!("/api/v1/deadletters/delivery/{id}/redrive"),
            Some(OPS),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // The down receiver comes back: new changes flow at once; its dead letters wait for a
    // redrive (here through the CLI).
    down.down.store(false, SeqCst);
    let late = dml(&env, vec![insert("Late-1", "555-0001")]);
    wait_for(
        "the recovered sink delivers new changes",
        Duration::from_secs(60),
        || async {
            if down.changes().iter().any(|c| c["id"] == json!(late[0])) {
                vec![]
            } else {
                vec!["Late-1 not delivered".into()]
            }
        },
    )
    .await;
    let first = down_dl[0]["id"].as_i64().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sfsync"))
        .args([
            "deadletters",
            "redrive",
            &format!("delivery:{first}"),
            "--config",
        ])
        .arg(&env.config)
        .args(["--note", "receiver back"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = down_dl[0]["record_id"].as_str().unwrap().to_string();
    wait_for(
        "the CLI redrive delivers",
        Duration::from_secs(60),
        || async {
            if down.changes().iter().any(|c| c["id"] == json!(rec)) {
                vec![]
            } else {
                vec![format!("{rec} not delivered")]
            }
        },
    )
    .await;
    let listed = Command::new(env!("CARGO_BIN_EXE_sfsync"))
        .args(["deadletters", "list", "--kind", "deliveries", "--config"])
        .arg(&env.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("changes a delivery sink could not deliver"),
        "{text}"
    );
    assert!(!text.contains(&format!("delivery:{first} ")), "{text}");
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_survives_a_broker_restart_without_loss_or_reordering() {
    let broker_dir = tempfile::tempdir().unwrap();
    let mut broker = sfsync_kafka::test_support::Broker::start(broker_dir.path());
    let env = env(&format!(
        "[[sinks]]\nname = \"stream\"\nkind = \"kafka\"\nbrokers = \"{}\"\ntopic = \"sfsync.{{object}}\"\npartitions = 3\nbatch_max = 25\nretry_base_ms = 100\nretry_max_secs = 2\npii = \"omit\"\n",
        broker.bootstrap()
    ))
    .await;
    let child = run(&env);
    env.api.ready().await;
    let kafka = broker.config();
    let read = |kafka: sfsync_kafka::KafkaConfig| async move {
        sfsync_kafka::Consumer::read_all(&kafka, "sfsync.Account", Duration::from_secs(20))
            .await
            .unwrap_or_default()
    };
    let keys_of = |msgs: &[sfsync_kafka::Message]| -> Vec<String> {
        msgs.iter()
            .map(|m| {
                let h = m
                    .headers
                    .iter()
                    .find(|(k, _)| k == "idempotency_key")
                    .expect("an idempotency_key header");
                String::from_utf8(h.1.clone()).unwrap()
            })
            .collect()
    };

    let first = dml(
        &env,
        (0..40)
            .map(|i| insert(&format!("K-{i}"), "555-0000"))
            .collect(),
    );
    wait_for(
        "the first changes reach the topic",
        Duration::from_secs(90),
        || {
            let kafka = kafka.clone();
            async move {
                let n = read(kafka).await.len();
                if n >= 40 {
                    vec![]
                } else {
                    vec![format!("{n} of 40 records")]
                }
            }
        },
    )
    .await;

    // The broker crashes; changes keep coming; it comes back.
    broker.stop();
    dml(
        &env,
        first.iter().map(|id| update(id, "while down")).collect(),
    );
    let second = dml(
        &env,
        (40..60)
            .map(|i| insert(&format!("K-{i}"), "555-0000"))
            .collect(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart();
    dml(&env, second.iter().map(|id| update(id, "after")).collect());
    let expected = 40 + 40 + 20 + 20;
    wait_for(
        "every change reaches the topic",
        Duration::from_secs(180),
        || {
            let kafka = kafka.clone();
            async move {
                let msgs = read(kafka).await;
                let unique: HashSet<String> = keys_of(&msgs).into_iter().collect();
                if unique.len() >= expected {
                    vec![]
                } else {
                    vec![format!("{} of {expected} changes", unique.len())]
                }
            }
        },
    )
    .await;
    let msgs = read(kafka.clone()).await;
    let keys = keys_of(&msgs);
    let unique: HashSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), expected, "every change once by key");
    let dups = keys.len() - unique.len();
    eprintln!(
        "kafka sink: {} records, {dups} duplicates after the restart",
        keys.len()
    );
    // Per record: one partition, changes in apply order (seq), duplicates only repeat.
    let mut per_id: BTreeMap<String, Vec<(i32, i64, i64)>> = BTreeMap::new();
    for m in &msgs {
        let v: J = serde_json::from_slice(m.payload.as_deref().unwrap()).unwrap();
        assert_eq!(m.key_str(), v["id"].as_str().unwrap(), "keyed by record Id");
        assert!(v["record"].get("Phone").is_none(), "PII omitted");
        per_id.entry(m.key_str()).or_default().push((
            m.partition,
            m.offset,
            v["seq"].as_i64().unwrap(),
        ));
    }
    assert_eq!(per_id.len(), 60);
    for (id, mut recs) in per_id {
        let parts: HashSet<i32> = recs.iter().map(|r| r.0).collect();
        assert_eq!(parts.len(), 1, "{id} on one partition");
        recs.sort_by_key(|r| r.1);
        let seqs: Vec<i64> = recs.iter().map(|r| r.2).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] <= w[1]),
            "{id}: changes out of order on its partition: {seqs:?}"
        );
    }
    let (_, metrics) = env.api.call_text("GET", "/metrics", Some(OPS), None).await;
    assert!(
        metrics.contains("sfsync_sink_backlog_changes{sink=\"stream\",object=\"Account\"} 0\n"),
        "{metrics}"
    );
    stop(child);
    drop(broker);
}
