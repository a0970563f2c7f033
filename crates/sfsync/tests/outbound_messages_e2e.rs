//! Outbound Messages end to end: the emulator's Outbound Message rules send SOAP notifications
//! to `sfsync run` (a child process, SQLite warehouse) over loopback, as Salesforce would.
//!
//! 1. `outbound_messages_land_exactly_once`: notifications queued while sfsync is down are
//!    retried until it is up; a fault-injecting hop in front of sfsync refuses deliveries and
//!    loses acknowledgements (sfsync stored the message, Salesforce never heard) so the emulator
//!    redelivers; sfsync is stopped and restarted mid-stream — at the end every notification is
//!    in the raw log exactly once, the curated rows equal the org column by column, and the
//!    emulator's queue is empty. The same notification POSTed twice is acknowledged twice and
//!    applied once. Hostile and malformed envelopes get a SOAP fault naming the problem, are kept
//!    as dead letters, lose nothing of the readable notifications, and the process keeps
//!    running. A wrong secret, an unknown flow and a foreign org are refused and write nothing.
//! 2. `an_older_notification_never_overwrites_a_newer_cdc_change`: an object fed by CDC and by
//!    an Outbound Message flow; a stale notification loses to the newer CDC change, a newer one
//!    wins, whatever the order of arrival.

mod support;

use support::api::{free_port, Api};
use support::{stop, wait_for, KillOnDrop};

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value as J};
use sfsync_emulator::outbound::{OutboundSettings, QueuedNotification, RuleSpec, Trigger};
use sfsync_emulator::RunningEmulator;
use sfsync_org::{ApiKind, CallContext, DmlOp};
use sfsync_pipeline::ObjectMapping;
use sfsync_salesforce::SalesforceClient;
use sfsync_store::{ChangeLog, OutboundReceipts, SqliteChangeLog, Warehouse};

const VIEWER: &str = "om-e2e-viewer-token-0001";
const SECRET: &str = "om-e2e-secret-abcdefghijklmnopqrstuvwxyz";
const FLOW: &str = "accounts";

struct Env {
    emu: RunningEmulator,
    _dir: tempfile::TempDir,
    db: PathBuf,
    client: SalesforceClient,
    config: PathBuf,
    port: u16,
    api: Api,
    mapping: ObjectMapping,
}

impl Env {
    fn endpoint(&self) -> String {
        format!(
            "http://127.0.0.1:{}/soap/outbound/{FLOW}/{SECRET}",
            self.port
        )
    }
}

/// An emulator and a config with Account synced (`mode`) and an `[[outbound_messages]]` flow
/// sending `fields` (every stored field of Account when `None`).
async fn env(mode: &str, fields: Option<Vec<String>>) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (emu, client) = support::emulator(&dir).await;
    let d = client.describe_object("Account").await.unwrap();
    let mapping = ObjectMapping::build(&d, &sfsync_pipeline::ObjectSpec::new("Account")).unwrap();
    let fields = fields.unwrap_or_else(|| all_fields(&mapping));
    let db = dir.join("wh.db");
    let config = dir.join("sfsync.toml");
    std::fs::write(dir.join("viewer.token"), VIEWER).unwrap();
    std::fs::write(dir.join("om.secret"), SECRET).unwrap();
    let port = free_port();
    let text = format!(
        r#"[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"

[[objects]]
name = "Account"
mode = "{mode}"

[warehouse]
type = "sqlite"
path = "{db}"

[pipeline]
batch_max_records = 500
batch_max_wait_ms = 50
backfill_new_objects = false

[api]
listen = "127.0.0.1:{port}"

[[api.tokens]]
name = "viewer"
role = "viewer"
token_file = "viewer.token"

[[outbound_messages]]
name = "{FLOW}"
object = "Account"
organization_id = "{org}"
secret = {{ file = "om.secret" }}
fields = {fields}
"#,
        creds = emu.credentials_path.display(),
        ca = emu.ca_pem_path.display(),
        db = db.display(),
        org = emu.credentials.org_id,
        fields = serde_json::to_string(&fields).unwrap(),
    );
    std::fs::write(&config, text).unwrap();
    Env {
        emu,
        _dir: tmp,
        db,
        client,
        config,
        port,
        api: Api {
            http: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{port}"),
        },
        mapping,
    }
}

/// Every stored field of the object but `Id`, and SystemModstamp: a full row per notification.
fn all_fields(m: &ObjectMapping) -> Vec<String> {
    let mut f: Vec<String> = m
        .soql_fields
        .iter()
        .filter(|f| *f != "Id")
        .cloned()
        .collect();
    f.push("SystemModstamp".into());
    f
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

async fn open(env: &Env) -> Arc<SqliteChangeLog> {
    let s = SqliteChangeLog::open(&env.db).await.unwrap();
    s.ensure_model(&env.mapping.model).await.unwrap();
    Arc::new(s)
}

fn ctx(env: &Env) -> CallContext {
    CallContext {
        user_id: env.emu.org().admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: None,
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

fn rule(env: &Env, endpoint: &str, fields: Vec<String>) {
    env.emu
        .state
        .outbound
        .set_rules(
            env.emu.org(),
            vec![RuleSpec {
                name: "account-sync".into(),
                object: "Account".into(),
                fields,
                endpoint_url: endpoint.into(),
                trigger: Trigger::CreateOrUpdate,
                changed_fields: Vec::new(),
                active: true,
            }],
        )
        .unwrap();
}

/// Raw-log entries of the flow's channel, by event key.
async fn logged(store: &SqliteChangeLog) -> Vec<String> {
    store
        .read_from(0, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.channel == format!("/outbound/{FLOW}"))
        .map(|l| l.change.event_key.as_str().to_string())
        .collect()
}

async fn wait_queue_empty(env: &Env, within: Duration) {
    wait_for(
        "the emulator's Outbound Message queue drains",
        within,
        || async {
            env.emu
                .state
                .outbound
                .queue()
                .iter()
                .map(|n| {
                    format!(
                        "{} ({}) attempts {} last error {:?}",
                        n.id, n.record_id, n.attempts, n.last_error
                    )
                })
                .collect()
        },
    )
    .await;
}

async fn wait_equal(env: &Env, store: &SqliteChangeLog, within: Duration) {
    wait_for("curated Account rows equal the org", within, || async {
        support::live_diff(&env.client, &env.mapping, store).await
    })
    .await;
}

/// A message as Salesforce sends it (the emulator's renderer) for the given notifications.
fn message(env: &Env, notifications: &[QueuedNotification]) -> String {
    env.emu
        .state
        .outbound
        .render("04k000000000009AAA", notifications)
}

/// A notification of `id` carrying the record's current values of `fields`.
fn notification(env: &Env, nid: &str, id: &str, fields: &[String]) -> QueuedNotification {
    let mut select = vec!["Id".to_string()];
    select.extend(fields.iter().cloned());
    let rec = env
        .emu
        .org()
        .retrieve("Account", id, Some(select.as_slice()), "66.0")
        .unwrap();
    let values = fields
        .iter()
        .filter_map(|f| {
            let v = rec.get(f)?;
            let text = match v {
                J::Null => return None,
                J::String(s) => s
                    .strip_suffix("+0000")
                    .map(|b| format!("{b}Z"))
                    .unwrap_or(s.clone()),
                other => other.to_string(),
            };
            Some((f.clone(), text))
        })
        .collect();
    QueuedNotification {
        id: nid.into(),
        rule: "manual".into(),
        action_id: "04k000000000009AAA".into(),
        object: "Account".into(),
        record_id: id.into(),
        fields: values,
        queued_at_ms: 0,
        attempts: 0,
        next_attempt_at_ms: 0,
        last_error: None,
        in_flight: false,
    }
}

async fn post(env: &Env, url: &str, body: String) -> (StatusCode, String) {
    let r = env
        .api
        .http
        .post(url)
        .header("content-type", "text/xml; charset=utf-8")
        .header("soapaction", "\"\"")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.text().await.unwrap())
}

/// A hop in front of sfsync that refuses the next `refuse` deliveries (503) and, for the next
/// `lose` deliveries, forwards them but answers 502 instead of sfsync's acknowledgement.
struct FaultyHop {
    refuse: AtomicU64,
    lose: AtomicU64,
    seen: AtomicU64,
    target: String,
    http: reqwest::Client,
}

fn take(a: &AtomicU64) -> bool {
    a.fetch_update(SeqCst, SeqCst, |v| v.checked_sub(1)).is_ok()
}

async fn hop_handler(
    axum::extract::State(h): axum::extract::State<Arc<FaultyHop>>,
    body: axum::body::Bytes,
) -> (StatusCode, String) {
    h.seen.fetch_add(1, SeqCst);
    if take(&h.refuse) {
        return (StatusCode::SERVICE_UNAVAILABLE, "busy".into());
    }
    let r = h
        .http
        .post(&h.target)
        .header("content-type", "text/xml; charset=utf-8")
        .body(body)
        .send()
        .await;
    let (status, text) = match r {
        Ok(r) => {
            let s = StatusCode::from_u16(r.status().as_u16()).unwrap();
            (s, r.text().await.unwrap_or_default())
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
    };
    if take(&h.lose) {
        return (StatusCode::BAD_GATEWAY, "the answer was lost".into());
    }
    (status, text)
}

async fn start_hop(target: String) -> (Arc<FaultyHop>, String) {
    let hop = Arc::new(FaultyHop {
        refuse: AtomicU64::new(0),
        lose: AtomicU64::new(0),
        seen: AtomicU64::new(0),
        target,
        http: reqwest::Client::new(),
    });
    let app = axum::Router::new()
        .route("/hop", axum::routing::post(hop_handler))
        .with_state(hop.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (hop, format!("http://{addr}/hop"))
}

fn fast_retries(env: &Env) {
    env.emu
        .state
        .outbound
        .set_settings(OutboundSettings {
            retry_initial_ms: 100,
            retry_max_ms: 800,
            retention_ms: 3_600_000,
            timeout_ms: 10_000,
            batch_max: 100,
            ca_file: None,
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbound_messages_land_exactly_once() {
    let env = env("outbound_message", None).await;
    let fields = all_fields(&env.mapping);
    fast_retries(&env);
    rule(&env, &env.endpoint(), fields.clone());

    // ---- sfsync is down: the notifications wait in Salesforce's queue, retried ----
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(insert(
            &env,
            json!({ "Name": format!("Acme {i}"), "Phone": format!("555-01{i:02}"), "AnnualRevenue": 1000.5 * i as f64 }),
        ));
    }
    wait_for(
        "deliveries fail while sfsync is down",
        Duration::from_secs(30),
        || async {
            let q = env.emu.state.outbound.queue();
            let failing = q
                .iter()
                .filter(|n| n.attempts >= 2 && n.last_error.is_some())
                .count();
            if q.len() == 30 && failing == 30 {
                Vec::new()
            } else {
                vec![format!(
                    "{} queued, {failing} failed twice: {:?}",
                    q.len(),
                    q.first()
                )]
            }
        },
    )
    .await;
    let child = run(&env);
    env.api.ready().await;
    let store = open(&env).await;
    wait_queue_empty(&env, Duration::from_secs(60)).await;
    wait_equal(&env, &store, Duration::from_secs(60)).await;
    assert_eq!(logged(&store).await.len(), 30);

    // ---- updates, some in one transaction (one message may carry several) ----
    for id in &ids[..10] {
        update(
            &env,
            id,
            json!({ "Phone": "555-9999", "Description": "edited <once> & again" }),
        );
    }
    let ops: Vec<DmlOp> = ids[10..20]
        .iter()
        .map(|id| DmlOp::Update {
            object: "Account".into(),
            id: id.clone(),
            fields: json!({ "Industry": "Banking" })
                .as_object()
                .unwrap()
                .clone(),
        })
        .collect();
    for r in env.emu.org().execute(&ctx(&env), ops, true) {
        r.unwrap();
    }
    wait_queue_empty(&env, Duration::from_secs(60)).await;
    wait_equal(&env, &store, Duration::from_secs(60)).await;

    // ---- a faulty hop: refused deliveries and lost acknowledgements ----
    let (hop, hop_url) = start_hop(env.endpoint()).await;
    hop.refuse.store(3, SeqCst);
    hop.lose.store(2, SeqCst);
    rule(&env, &hop_url, fields.clone());
    for (k, id) in ids[20..30].iter().enumerate() {
        update(&env, id, json!({ "NumberOfEmployees": 10 + k }));
    }
    wait_queue_empty(&env, Duration::from_secs(60)).await;
    assert_eq!(hop.refuse.load(SeqCst), 0);
    assert_eq!(hop.lose.load(SeqCst), 0);
    assert!(hop.seen.load(SeqCst) >= 6, "{}", hop.seen.load(SeqCst));
    wait_equal(&env, &store, Duration::from_secs(60)).await;

    // ---- sfsync stopped and restarted mid-stream ----
    stop(child);
    for id in &ids[..5] {
        update(&env, id, json!({ "Type": "Customer - Direct" }));
    }
    let extra = insert(&env, json!({ "Name": "Created while sfsync was down" }));
    wait_for(
        "deliveries fail while sfsync is stopped",
        Duration::from_secs(30),
        || async {
            let q = env.emu.state.outbound.queue();
            if q.len() == 6 && q.iter().all(|n| n.attempts >= 1) {
                Vec::new()
            } else {
                vec![format!("{} queued", q.len())]
            }
        },
    )
    .await;
    let child = run(&env);
    env.api.ready().await;
    wait_queue_empty(&env, Duration::from_secs(60)).await;
    wait_equal(&env, &store, Duration::from_secs(60)).await;
    assert!(store
        .read_current("Account")
        .await
        .unwrap()
        .iter()
        .any(|r| r.id == extra));

    // Every notification the emulator queued is in the raw log exactly once, however many
    // times it was delivered.
    let om = &env.emu.state.outbound.stats;
    let queued = om.queued.load(SeqCst);
    assert_eq!(queued, 30 + 10 + 10 + 10 + 6);
    assert_eq!(om.notifications_acked.load(SeqCst), queued);
    assert_eq!(om.notifications_expired.load(SeqCst), 0);
    let keys = logged(&store).await;
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), keys.len(), "an event key was logged twice");
    assert_eq!(keys.len() as u64, queued);
    let receipts = store.outbound_receipts(Some(FLOW), 10_000).await.unwrap();
    assert_eq!(receipts.len() as u64, queued);
    assert!(receipts.iter().all(|r| r.status == "logged"));
    let redelivered: i64 = receipts.iter().map(|r| r.deliveries - 1).sum();
    assert!(
        redelivered >= 1,
        "the lost acknowledgements caused redeliveries"
    );
    // Applied as Outbound Messages.
    let row = store
        .read_current("Account")
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == ids[0])
        .unwrap();
    assert_eq!(row.meta.change_type, "OUTBOUND_MESSAGE");
    assert_eq!(row.meta.source, sfsync_store::ChangeSource::OutboundMessage);

    // ---- the same notification twice: acknowledged twice, applied once ----
    update(
        &env,
        &ids[0],
        json!({ "Website": "https://twice.example.org" }),
    );
    wait_queue_empty(&env, Duration::from_secs(30)).await;
    let before = logged(&store).await.len();
    let n = notification(&env, "04l0000000DUP01AAA", &ids[0], &fields);
    let body = message(&env, std::slice::from_ref(&n));
    for _ in 0..2 {
        let (status, text) = post(&env, &env.endpoint(), body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(text.contains("<Ack>true</Ack>"), "{text}");
    }
    assert_eq!(logged(&store).await.len(), before + 1);
    let r = store
        .outbound_receipts(Some(FLOW), 10_000)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.notification_id == "04l0000000DUP01AAA")
        .unwrap();
    assert_eq!((r.deliveries, r.status.as_str()), (2, "logged"));

    // ---- hostile and malformed envelopes: a fault naming the problem, nothing lost ----
    let dead_before = store.dead_letter_count().await.unwrap();
    let (status, text) = post(&env, &env.endpoint(), "<not xml".into()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{text}");
    assert!(
        text.contains("<faultcode>soapenv:Client</faultcode>"),
        "{text}"
    );
    assert!(text.contains("the message cannot be read"), "{text}");
    let xxe = r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd"><!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>&e;&lol2;</soapenv:Body></soapenv:Envelope>"#;
    let (status, text) = post(&env, &env.endpoint(), xxe.into()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{text}");
    assert!(text.contains("DOCTYPE is not allowed"), "{text}");
    assert!(!text.contains("root:"), "{text}");
    // One readable notification and one without SystemModstamp in one message.
    update(
        &env,
        &ids[1],
        json!({ "Website": "https://mixed.example.org" }),
    );
    wait_queue_empty(&env, Duration::from_secs(30)).await;
    let log_before = logged(&store).await.len();
    let good = notification(&env, "04l0000000MIX01AAA", &ids[1], &fields);
    let mut bad = notification(&env, "04l0000000MIX02AAA", &ids[2], &fields);
    bad.fields.retain(|(f, _)| f != "SystemModstamp");
    let (status, text) = post(&env, &env.endpoint(), message(&env, &[good, bad.clone()])).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{text}");
    assert!(
        text.contains("Notification[2] (Id 04l0000000MIX02AAA"),
        "{text}"
    );
    assert!(text.contains("no SystemModstamp"), "{text}");
    assert_eq!(
        logged(&store).await.len(),
        log_before + 1,
        "the readable one is logged"
    );
    let dead = env.api.get("/api/v1/deadletters?kind=event", VIEWER).await;
    let dead = dead.to_string();
    assert!(
        dead.contains("/outbound/accounts") && dead.contains("no SystemModstamp"),
        "{dead}"
    );
    assert_eq!(store.dead_letter_count().await.unwrap(), dead_before + 3);
    // Redelivered as is: still a fault, the dead letter not stored again, nothing applied twice.
    let (status, _) = post(
        &env,
        &env.endpoint(),
        message(
            &env,
            &[
                notification(&env, "04l0000000MIX01AAA", &ids[1], &fields),
                bad,
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(store.dead_letter_count().await.unwrap(), dead_before + 3);
    assert_eq!(logged(&store).await.len(), log_before + 1);
    // Fixed at the source: the next delivery of it is logged.
    let fixed = notification(&env, "04l0000000MIX02AAA", &ids[2], &fields);
    let (status, text) = post(&env, &env.endpoint(), message(&env, &[fixed])).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(logged(&store).await.len(), log_before + 2);

    // ---- refused: wrong secret, unknown flow, foreign org — nothing written ----
    let log_before = logged(&store).await.len();
    let dead_before = store.dead_letter_count().await.unwrap();
    let fresh = message(
        &env,
        &[notification(&env, "04l0000000REF01AAA", &ids[3], &fields)],
    );
    let wrong = format!(
        "http://127.0.0.1:{}/soap/outbound/{FLOW}/not-the-secret-0123456789abc",
        env.port
    );
    let (status, text) = post(&env, &wrong, fresh.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    assert!(text.contains("not authorised"), "{text}");
    let unknown = format!("http://127.0.0.1:{}/soap/outbound/other/{SECRET}", env.port);
    let (status, _) = post(&env, &unknown, fresh.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let foreign = fresh.replace(
        &format!(
            "<OrganizationId>{}</OrganizationId>",
            env.emu.credentials.org_id
        ),
        "<OrganizationId>00D000000000999AAA</OrganizationId>",
    );
    assert_ne!(foreign, fresh);
    let (status, text) = post(&env, &env.endpoint(), foreign).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("is not the org of flow 'accounts'"), "{text}");
    assert_eq!(logged(&store).await.len(), log_before);
    assert_eq!(store.dead_letter_count().await.unwrap(), dead_before);

    // ---- still running, still applying, and it says what it saw ----
    update(&env, &ids[4], json!({ "Name": "Still running" }));
    wait_queue_empty(&env, Duration::from_secs(30)).await;
    wait_equal(&env, &store, Duration::from_secs(60)).await;
    let view = env.api.get("/api/v1/outbound-messages", VIEWER).await;
    let flow = &view["flows"][0];
    assert_eq!(flow["flow"], FLOW);
    assert!(flow["duplicates"].as_u64().unwrap() >= 1, "{view}");
    assert!(flow["dead_lettered"].as_u64().unwrap() >= 3, "{view}");
    assert_eq!(flow["refused"], 1, "{view}");
    assert_eq!(view["unauthorised"], 2, "{view}");
    let (status, metrics) = env
        .api
        .call_text("GET", "/metrics", Some(VIEWER), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains(
            "sfsync_outbound_notifications_total{flow=\"accounts\",outcome=\"duplicate\"}"
        ),
        "{metrics}"
    );
    // Notifications received and acknowledged: every acknowledged one was received, and so
    // was every one logged or found a duplicate.
    let value = |series: &str| {
        support::metric_value(&metrics, series).unwrap_or_else(|| panic!("no {series}: {metrics}"))
    };
    let received = value("sfsync_outbound_notifications_received_total{flow=\"accounts\"}");
    let acked = value("sfsync_outbound_notifications_acknowledged_total{flow=\"accounts\"}");
    let logged_n =
        value("sfsync_outbound_notifications_total{flow=\"accounts\",outcome=\"logged\"}");
    let duplicate_n =
        value("sfsync_outbound_notifications_total{flow=\"accounts\",outcome=\"duplicate\"}");
    assert!(acked >= 1.0, "{metrics}");
    assert!(
        received >= acked,
        "received {received} < acknowledged {acked}"
    );
    assert!(
        received >= logged_n + duplicate_n,
        "received {received} < logged {logged_n} + duplicates {duplicate_n}"
    );
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_notification_never_overwrites_a_newer_cdc_change() {
    let fields = vec!["Name".to_string(), "SystemModstamp".to_string()];
    let env = env("cdc", Some(fields.clone())).await;
    let child = run(&env);
    env.api.ready().await;
    let store = open(&env).await;
    let name_of = |id: String| {
        let store = store.clone();
        async move {
            store
                .read_current("Account")
                .await
                .unwrap()
                .into_iter()
                .find(|r| r.id == id)
                .and_then(|r| match r.values.get("name") {
                    Some(sfsync_store::Value::Text(t)) => Some(t.clone()),
                    _ => None,
                })
        }
    };
    let wait_name = |id: String, want: &'static str| {
        let name_of = &name_of;
        async move {
            wait_for(&format!("Name = {want}"), Duration::from_secs(60), || {
                let id = id.clone();
                async move {
                    match name_of(id).await {
                        Some(n) if n == want => Vec::new(),
                        other => vec![format!("Name is {other:?}")],
                    }
                }
            })
            .await
        }
    };
    let id = insert(&env, json!({ "Name": "v1" }));
    wait_name(id.clone(), "v1").await;
    // The state at v1, as a notification would carry it, delivered late.
    let stale = notification(&env, "04l0000000OLD01AAA", &id, &fields);
    tokio::time::sleep(Duration::from_millis(20)).await;
    update(&env, &id, json!({ "Name": "v2" }));
    wait_name(id.clone(), "v2").await;
    let before = logged(&store).await.len();
    let (status, text) = post(&env, &env.endpoint(), message(&env, &[stale])).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        logged(&store).await.len(),
        before + 1,
        "logged (and applied as stale)"
    );
    // Give the apply stage time to process it, then make sure v2 stands.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(name_of(id.clone()).await.as_deref(), Some("v2"));
    // A notification newer than the CDC change wins.
    let mut newer = notification(&env, "04l0000000NEW01AAA", &id, &fields);
    let later = chrono::Utc::now() + chrono::Duration::seconds(5);
    for (f, v) in newer.fields.iter_mut() {
        match f.as_str() {
            "Name" => *v = "v3 (outbound)".into(),
            "SystemModstamp" => {
                *v = later.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            }
            _ => {}
        }
    }
    let (status, text) = post(&env, &env.endpoint(), message(&env, &[newer])).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    wait_name(id.clone(), "v3 (outbound)").await;
    // And the next CDC change (committed after that SystemModstamp) wins over it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    update(&env, &id, json!({ "Name": "v4" }));
    wait_name(id.clone(), "v4").await;
    stop(child);
}
