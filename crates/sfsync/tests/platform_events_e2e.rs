//! Platform events both ways, end to end: `sfsync run` as a child process against the emulator
//! over loopback TLS (SQLite warehouse), a webhook receiver served by the test on loopback.
//!
//! 1. In: platform events defined in the emulator and published inside the org (REST, as Apex or
//!    a Flow would) on `/event/<Name>__e` and on a custom channel `/event/<Name>__chn` reach a
//!    webhook sink exactly once, fields decoded, across a restart (resumed from the stored
//!    replay id), and are stored with their checkpoint.
//! 2. Out: `POST /api/v1/events/{name}` stores events durably and the publisher puts each in the
//!    org's bus exactly once even when the POST is retried (per-event keys and the
//!    `Idempotency-Key` header), with the stored id as `ProducerEvent.id`; an event that cannot be
//!    encoded is a publish dead letter with the reason, listed and discarded through the API;
//!    "record applied" notifications (a `platform_event` sink) publish one event per curated
//!    change.
//! 3. The hourly publish allocation exhausted (partly by another publisher of the org): sfsync
//!    publishes only what is left, never gets a `LIMIT_EXCEEDED` refusal from the org (it never
//!    goes over), keeps the rest pending (deferred, not lost, not dead) and publishes them once
//!    the allocation frees up.

mod support;

use support::api::{free_port, Api};
use support::{stop, wait_for, KillOnDrop};

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use serde_json::{json, Value as J};
use sfsync_emulator::cdc::schema::PlatformField;
use sfsync_emulator::cdc::Topic;
use sfsync_emulator::RunningEmulator;
use sfsync_salesforce::pubsub::EventSchema;
use sfsync_salesforce::SalesforceClient;
use sfsync_store::{PlatformEvents, SqliteChangeLog};

const OPS: &str = "pe-e2e-operator-token-000001";
const SECRET: &str = "pe-e2e-signing-secret-0123456789";

/// A webhook receiver: records every change of every request with a valid signature.
#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<J>>,
    bad_signatures: AtomicU64,
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    let sig = headers
        .get("x-sfsync-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let now = chrono::Utc::now().timestamp();
    if !sfsync_pipeline::sinks::webhook::verify_signature(SECRET.as_bytes(), sig, &body, now, 300) {
        r.bad_signatures.fetch_add(1, SeqCst);
        return (StatusCode::UNAUTHORIZED, "bad signature".into());
    }
    let batch: J = serde_json::from_slice(&body).expect("a JSON batch");
    r.got
        .lock()
        .extend(batch["changes"].as_array().cloned().unwrap_or_default());
    (StatusCode::OK, "{}".into())
}

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
    client: SalesforceClient,
    _dir: tempfile::TempDir,
    db: PathBuf,
    config: PathBuf,
    api: Api,
}

fn text_field(name: &str) -> PlatformField {
    PlatformField {
        name: name.into(),
        field_type: "string".into(),
    }
}

/// An emulator and a config with `extra` TOML appended (`[platform_events]`, `[[sinks]]`, …).
async fn env(extra: &str, budget: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let (emu, client) = support::emulator(dir.path()).await;
    let db = dir.path().join("wh.db");
    let config = dir.path().join("sfsync.toml");
    std::fs::write(dir.path().join("ops.token"), OPS).unwrap();
    std::fs::write(dir.path().join("hook.secret"), SECRET).unwrap();
    let port = free_port();
    let text = format!(
        r#"[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"

[salesforce.budget.publish]
{budget}

[[objects]]
name = "Account"

[warehouse]
type = "sqlite"
path = "{db}"

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

{extra}"#,
        creds = emu.credentials_path.display(),
        ca = emu.ca_pem_path.display(),
        db = db.display(),
    );
    std::fs::write(&config, text).unwrap();
    Env {
        emu,
        client,
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

/// Publishes one event inside the org through REST (`POST /sobjects/<Name>__e`).
async fn publish_in_org(client: &SalesforceClient, event: &str, fields: J) {
    let r = client.create(event, &fields).await.unwrap();
    assert!(r.success, "{r:?}");
}

/// The org bus's events of `name`: (ProducerEvent id, decoded fields), in replay order.
fn bus_events(emu: &RunningEmulator, name: &str) -> Vec<(String, serde_json::Map<String, J>)> {
    let bus = &emu.state.cdc;
    let (events, _) = bus.fetch(&Topic::Platform(name.into()), 0, 100_000, usize::MAX);
    events
        .iter()
        .map(|e| {
            let json = bus.schema_json(&e.schema_id).expect("schema registered");
            let schema = EventSchema::parse(&e.schema_id, &json).unwrap();
            (
                e.event_id.clone(),
                schema.decode_fields(&e.payload).expect("payload decodes"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_in_the_org_reach_a_webhook_exactly_once_across_a_restart() {
    let receiver = Arc::new(Receiver::default());
    let hook = serve(receiver.clone()).await;
    let sinks = format!(
        r#"[platform_events]
subscribe = ["/event/Order_Shipped__e", "/event/Returns__chn"]

[[sinks]]
name = "events-hook"
url = "{hook}"
secret = {{ file = "hook.secret" }}
objects = ["Order_Shipped__e", "Order_Returned__e", "Order_Lost__e"]
retry_base_ms = 50
"#
    );
    let e = env(&sinks, "").await;
    let bus = &e.emu.state.cdc;
    bus.define_platform_event(
        "Order_Shipped__e",
        vec![
            text_field("Order__c"),
            PlatformField {
                name: "Amount__c".into(),
                field_type: "double".into(),
            },
            PlatformField {
                name: "Shipped_At__c".into(),
                field_type: "datetime".into(),
            },
        ],
    )
    .unwrap();
    bus.define_platform_event("Order_Returned__e", vec![text_field("Order__c")])
        .unwrap();
    bus.define_platform_event("Order_Lost__e", vec![text_field("Order__c")])
        .unwrap();
    bus.define_platform_event("Unrelated__e", vec![text_field("Order__c")])
        .unwrap();
    bus.define_channel(sfsync_emulator::cdc::bus::ChannelDef {
        name: "Returns__chn".into(),
        platform: true,
        members: vec!["Order_Returned__e".into(), "Order_Lost__e".into()],
    })
    .unwrap();

    // Published before sfsync ever ran: a new channel starts at the oldest retained event.
    for i in 1..=3 {
        publish_in_org(
            &e.client,
            "Order_Shipped__e",
            json!({"Order__c": format!("S-{i}"), "Amount__c": 10.5 * i as f64, "Shipped_At__c": "2024-05-01T10:00:00Z"}),
        )
        .await;
    }
    let child = run(&e);
    e.api.ready().await;
    publish_in_org(&e.client, "Order_Shipped__e", json!({"Order__c": "S-4"})).await;
    publish_in_org(&e.client, "Order_Returned__e", json!({"Order__c": "R-1"})).await;
    publish_in_org(&e.client, "Order_Lost__e", json!({"Order__c": "L-1"})).await;
    publish_in_org(&e.client, "Unrelated__e", json!({"Order__c": "X-1"})).await;
    wait_for(
        "6 events at the webhook",
        Duration::from_secs(60),
        || async {
            let n = receiver.got.lock().len();
            if n >= 6 {
                vec![]
            } else {
                vec![format!("{n} received")]
            }
        },
    )
    .await;
    stop(child);

    // While sfsync is down; then it resumes from its stored replay ids.
    publish_in_org(&e.client, "Order_Shipped__e", json!({"Order__c": "S-5"})).await;
    publish_in_org(&e.client, "Order_Lost__e", json!({"Order__c": "L-2"})).await;
    let child = run(&e);
    wait_for(
        "8 events at the webhook",
        Duration::from_secs(60),
        || async {
            let n = receiver.got.lock().len();
            if n >= 8 {
                vec![]
            } else {
                vec![format!("{n} received")]
            }
        },
    )
    .await;
    // Nothing more arrives (no duplicate, nothing of the unrelated event).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // This process received one new event per channel (S-5, L-2), resuming after the stored
    // replay ids.
    e.api.ready().await;
    let (status, metrics) = e.api.call_text("GET", "/metrics", Some(OPS), None).await;
    assert_eq!(status, StatusCode::OK, "{metrics}");
    for channel in ["/event/Order_Shipped__e", "/event/Returns__chn"] {
        assert_eq!(
            support::metric_value(
                &metrics,
                &format!("sfsync_platform_events_received_total{{channel=\"{channel}\"}}")
            ),
            Some(1.0),
            "{channel}: {metrics}"
        );
    }
    // The inbound platform-event flow's health and counts on /api/v1/flows.
    let flows = e.api.get("/api/v1/flows", OPS).await;
    let shipped = support::flow(
        &flows,
        "platform event",
        Some("inbound"),
        "Order_Shipped__e",
    );
    assert_eq!(shipped["health"], "green", "{shipped}");
    assert_eq!(shipped["counts"]["received"], 1, "{shipped}");
    stop(child);

    let got = receiver.got.lock().clone();
    assert_eq!(receiver.bad_signatures.load(SeqCst), 0);
    assert_eq!(got.len(), 8, "exactly once: {got:#?}");
    let keys: std::collections::BTreeSet<&str> = got
        .iter()
        .map(|c| c["idempotency_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 8, "unique idempotency keys");
    let orders: Vec<(String, String)> = got
        .iter()
        .map(|c| {
            (
                c["object"].as_str().unwrap().to_string(),
                c["record"]["Order__c"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let shipped: Vec<&str> = orders
        .iter()
        .filter(|(o, _)| o == "Order_Shipped__e")
        .map(|(_, n)| n.as_str())
        .collect();
    assert_eq!(shipped, ["S-1", "S-2", "S-3", "S-4", "S-5"], "in order");
    let mut others: Vec<&str> = orders
        .iter()
        .filter(|(o, _)| o != "Order_Shipped__e")
        .map(|(_, n)| n.as_str())
        .collect();
    others.sort();
    assert_eq!(others, ["L-1", "L-2", "R-1"]);
    let first = got
        .iter()
        .find(|c| c["record"]["Order__c"] == "S-2")
        .unwrap();
    assert_eq!(first["change_type"], "EVENT");
    assert_eq!(first["record"]["Amount__c"], 21.0);
    assert_eq!(first["record"]["Shipped_At__c"], "2024-05-01T10:00:00.000Z");
    assert!(first["record"]["CreatedDate"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(first["id"].as_str().unwrap().len(), 36, "the event's uuid");
    assert!(first["idempotency_key"]
        .as_str()
        .unwrap()
        .starts_with("/event/Order_Shipped__e/"));

    // Stored with their checkpoints: one row per event, the checkpoint at the last one.
    let store = SqliteChangeLog::open(&e.db).await.unwrap();
    let stored = store.inbound_events(None, 0, 0).await.unwrap();
    assert_eq!(stored.len(), 8);
    let last_shipped = stored
        .iter()
        .filter(|s| s.channel == "/event/Order_Shipped__e")
        .map(|s| s.replay_id.clone())
        .max()
        .unwrap();
    let cp = store
        .event_checkpoint("/event/Order_Shipped__e")
        .await
        .unwrap()
        .unwrap();
    assert!(
        cp.to_hex() >= last_shipped,
        "{} < {last_shipped}",
        cp.to_hex()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_posted_to_the_api_land_in_the_org_once_even_when_retried() {
    let extra = r#"[platform_events]
publish = ["Sync_Ack__e", "Record_Applied__e", "Never_Defined__e"]
publish_retry_base_ms = 100
publish_max_attempts = 3

[[sinks]]
name = "applied"
kind = "platform_event"
event = "Record_Applied__e"
objects = ["Account"]
fields = { Record_Id__c = "id", Change_Type__c = "change_type", Name__c = "record.Name" }
retry_base_ms = 50
"#;
    let e = env(extra, "").await;
    let bus = &e.emu.state.cdc;
    bus.define_platform_event(
        "Sync_Ack__e",
        vec![
            text_field("Order__c"),
            PlatformField {
                name: "Amount__c".into(),
                field_type: "double".into(),
            },
        ],
    )
    .unwrap();
    bus.define_platform_event(
        "Record_Applied__e",
        vec![
            text_field("Record_Id__c"),
            text_field("Change_Type__c"),
            text_field("Name__c"),
        ],
    )
    .unwrap();
    let child = run(&e);
    e.api.ready().await;
    let api = &e.api;
    let path = "/api/v1/events/Sync_Ack__e";

    let batch = json!({"events": [
        {"idempotency_key": "ack-1", "fields": {"Order__c": "O-1", "Amount__c": 1.5}},
        {"idempotency_key": "ack-2", "fields": {"Order__c": "O-2"}},
        {"idempotency_key": "ack-3", "fields": {"Order__c": "O-3"}},
    ]});
    let (status, body) = api.call("POST", path, Some(OPS), Some(&batch)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["duplicates"].as_u64()),
        (Some(3), Some(0))
    );
    let uuids: Vec<String> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event_uuid"].as_str().unwrap().to_string())
        .collect();
    // The client retries (its connection dropped before the answer): nothing new.
    let (status, again) = api.call("POST", path, Some(OPS), Some(&batch)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(
        (again["accepted"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(3))
    );
    assert!(again["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == "duplicate"));
    // Keys from the Idempotency-Key header, retried too.
    for round in 0..2 {
        let resp = api
            .http
            .post(format!("{}{path}", api.base))
            .bearer_auth(OPS)
            .header("Idempotency-Key", "batch-7")
            .json(&json!({"events": [{"fields": {"Order__c": "H-1"}}, {"fields": {"Order__c": "H-2"}}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let b: J = resp.json().await.unwrap();
        assert_eq!(
            b["accepted"].as_u64(),
            Some(if round == 0 { 2 } else { 0 }),
            "{b}"
        );
        assert_eq!(b["results"][1]["idempotency_key"], "batch-7:1");
    }
    // Refused before anything is stored.
    let (status, body) = api
        .call("POST", "/api/v1/events/Nope__e", Some(OPS), Some(&batch))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = api
        .call(
            "POST",
            path,
            Some(OPS),
            Some(&json!({"events": [{"fields": {"Order__c": "no key"}}]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("events[0].idempotency_key"));
    // Well-formed for the API, but not for the event's schema: a publish dead letter.
    let (status, body) = api
        .call(
            "POST",
            path,
            Some(OPS),
            Some(&json!({"events": [{"idempotency_key": "bad-1", "fields": {"Nope__c": "x"}}]})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // An event the org does not define: Salesforce's refusal, retried, then a dead letter.
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/events/Never_Defined__e",
            Some(OPS),
            Some(&json!({"events": [{"idempotency_key": "nd-1", "fields": {}}]})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    wait_for(
        "5 Sync_Ack__e events in the org",
        Duration::from_secs(60),
        || async {
            let n = bus_events(&e.emu, "Sync_Ack__e").len();
            if n >= 5 {
                vec![]
            } else {
                vec![format!("{n} in the bus")]
            }
        },
    )
    .await;
    let all_dead = wait_dead(api, 2).await;
    assert_eq!(all_dead.len(), 2, "{all_dead:?}");
    let dead: Vec<J> = all_dead
        .iter()
        .filter(|d| d["event"] == "Sync_Ack__e")
        .cloned()
        .collect();
    assert_eq!(dead[0]["idempotency_key"], "bad-1");
    assert_eq!(dead[0]["attempts"], 1, "not retried: no attempt can fix it");
    let nd = all_dead
        .iter()
        .find(|d| d["event"] == "Never_Defined__e")
        .unwrap();
    assert_eq!(nd["attempts"], 3, "publish_max_attempts: {nd}");
    let err = nd["error"].as_str().unwrap();
    assert!(
        err.contains("/event/Never_Defined__e") && err.contains("not found"),
        "Salesforce's error kept: {err}"
    );
    assert!(
        dead[0]["error"].as_str().unwrap().contains("Nope__c"),
        "{}",
        dead[0]
    );

    // "Record applied": an Account created in the org becomes one Record_Applied__e.
    let id = e
        .client
        .create("Account", &json!({"Name": "Applied Co"}))
        .await
        .unwrap()
        .id
        .unwrap();
    wait_for(
        "a Record_Applied__e event",
        Duration::from_secs(60),
        || async {
            let ev = bus_events(&e.emu, "Record_Applied__e");
            if ev.iter().any(|(_, f)| f["Record_Id__c"] == id.as_str()) {
                vec![]
            } else {
                vec![format!("{} Record_Applied__e events", ev.len())]
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Exactly once each, with the stored id as ProducerEvent.id.
    let acks = bus_events(&e.emu, "Sync_Ack__e");
    assert_eq!(acks.len(), 5, "{acks:?}");
    let orders: Vec<&str> = acks
        .iter()
        .map(|(_, f)| f["Order__c"].as_str().unwrap())
        .collect();
    assert_eq!(orders, ["O-1", "O-2", "O-3", "H-1", "H-2"]);
    assert_eq!(acks[0].1["Amount__c"], 1.5);
    for (i, u) in uuids.iter().enumerate() {
        assert_eq!(&acks[i].0, u, "ProducerEvent.id of ack-{}", i + 1);
    }
    let applied = bus_events(&e.emu, "Record_Applied__e");
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert_eq!(applied[0].1["Change_Type__c"], "CREATE");
    assert_eq!(applied[0].1["Name__c"], "Applied Co");
    let listed = api
        .get("/api/v1/events?event=Sync_Ack__e&state=published", OPS)
        .await;
    let listed = listed["events"].as_array().unwrap();
    assert_eq!(listed.len(), 5);
    assert!(listed
        .iter()
        .all(|e| e["replay_id"].as_str().unwrap().len() == 16));

    // The dead letter is discarded through the API (audited).
    let id = dead[0]["id"].as_i64().unwrap();
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/v1/deadletters/publish/{id}/discard"),
            Some(OPS),
            Some(&json!({"note": "a bad field"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let left = api.get("/api/v1/deadletters?kind=publish", OPS).await;
    let left = left["dead_letters"].as_array().unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["event"], "Never_Defined__e");
    // Published per event on /metrics (every publishable event listed, 0 when none was).
    let (status, metrics) = api.call_text("GET", "/metrics", Some(OPS), None).await;
    assert_eq!(status, StatusCode::OK, "{metrics}");
    for (event, n) in [
        ("Sync_Ack__e", 5.0),
        ("Record_Applied__e", 1.0),
        ("Never_Defined__e", 0.0),
    ] {
        assert_eq!(
            support::metric_value(
                &metrics,
                &format!("sfsync_platform_events_published_total{{event=\"{event}\"}}")
            ),
            Some(n),
            "{event}: {metrics}"
        );
    }
    assert!(
        support::metric_value(&metrics, "sfsync_publish_budget_used_events") >= Some(6.0),
        "{metrics}"
    );
    stop(child);
}

async fn wait_dead(api: &Api, n: usize) -> Vec<J> {
    let mut out = Vec::new();
    for _ in 0..240 {
        let d = api.get("/api/v1/deadletters?kind=publish", OPS).await;
        out = d["dead_letters"].as_array().unwrap().clone();
        if out.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_hourly_allocation_defers_publishing_without_loss_or_overrun() {
    let extra = r#"[platform_events]
publish = ["Sync_Ack__e"]
publish_batch_max = 4
"#;
    // A 5-second window stands for Salesforce's hour on sfsync's side (its own count of what it
    // published); the org's side rolls over when the test resets the emulator's usage.
    let budget = "share = 1.0\nheadroom = 0.0\nprobe_initial_ms = 200\nprobe_max_ms = 400\nrefresh_secs = 1\nwindow_secs = 5";
    let e = env(extra, budget).await;
    let state = &e.emu.state;
    state
        .cdc
        .define_platform_event("Sync_Ack__e", vec![text_field("Order__c")])
        .unwrap();
    let mut limits = state.limits.config();
    limits.hourly_published_platform_events = 5;
    state.limits.set_config(limits);
    // Another publisher of the org uses 2 of the 5.
    for i in 0..2 {
        publish_in_org(
            &e.client,
            "Sync_Ack__e",
            json!({"Order__c": format!("other-{i}")}),
        )
        .await;
    }
    let child = run(&e);
    e.api.ready().await;
    let events: Vec<J> = (0..8)
        .map(|i| json!({"idempotency_key": format!("k{i}"), "fields": {"Order__c": format!("O-{i}")}}))
        .collect();
    let (status, body) = e
        .api
        .call(
            "POST",
            "/api/v1/events/Sync_Ack__e",
            Some(OPS),
            Some(&json!({ "events": events })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let ours = |emu: &RunningEmulator| {
        bus_events(emu, "Sync_Ack__e")
            .into_iter()
            .filter(|(_, f)| f["Order__c"].as_str().unwrap().starts_with("O-"))
            .count()
    };
    wait_for("3 of ours published", Duration::from_secs(60), || async {
        let n = ours(&e.emu);
        if n >= 3 {
            vec![]
        } else {
            vec![format!("{n} published")]
        }
    })
    .await;
    // The allocation is used up: the rest wait (several probes of /limits pass meanwhile).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ours(&e.emu), 3);
    let (used, max, refused) = state.limits.publish_usage();
    assert_eq!((used, max), (5, 5));
    assert_eq!(refused, 0, "sfsync never published over the allocation");
    let listed = e.api.get("/api/v1/events?event=Sync_Ack__e", OPS).await;
    let counts = &listed["counts"];
    assert_eq!(
        (
            counts["published"].as_u64(),
            counts["pending"].as_u64(),
            counts["dead"].as_u64()
        ),
        (Some(3), Some(5), Some(0)),
        "{listed}"
    );
    let flows = e.api.get("/api/v1/flows", OPS).await;
    let ack = support::flow(&flows, "platform event", Some("outbound"), "Sync_Ack__e");
    assert_eq!(ack["counts"]["published"], 3, "{ack}");
    assert_eq!(ack["counts"]["pending_all_events"], 5, "{ack}");
    assert_eq!(ack["health"], "green", "{ack}");
    let budget = e.api.get("/api/v1/budget", OPS).await;
    assert_eq!(budget["publish"]["room"], 0, "{budget}");

    // The hour rolls over: the rest is published, still without a refusal.
    state.limits.reset_usage();
    wait_for(
        "all 8 of ours published",
        Duration::from_secs(60),
        || async {
            let n = ours(&e.emu);
            if n >= 8 {
                vec![]
            } else {
                vec![format!("{n} published")]
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(ours(&e.emu), 8, "each once");
    let (_, _, refused) = state.limits.publish_usage();
    assert_eq!(refused, 0);
    let orders: std::collections::BTreeSet<String> = bus_events(&e.emu, "Sync_Ack__e")
        .into_iter()
        .filter_map(|(_, f)| f["Order__c"].as_str().map(str::to_string))
        .filter(|o| o.starts_with("O-"))
        .collect();
    assert_eq!(orders.len(), 8);
    stop(child);
}
