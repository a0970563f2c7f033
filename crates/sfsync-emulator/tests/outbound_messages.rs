//! Outbound Message rules through the admin API against a real emulator, with a listener in
//! the test that answers as scripted: which changes fire which rule, messages of at most 100
//! notifications, stable notification ids across retries, retries after a non-2xx answer, a
//! SOAP fault, `Ack` false and a timeout, the queue as the admin API shows it, and expiry after
//! the retention.

mod rest_common;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reqwest::Method;
use rest_common::{Emu, V};
use serde_json::{json, Value};

/// How the listener answers the next message.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Ack(bool),
    Fault,
    Status(u16),
    /// Answers after this long (past the emulator's timeout).
    Hang(u64),
}

#[derive(Default)]
struct Listener {
    script: Mutex<VecDeque<Reply>>,
    /// Answer when the script is empty (default Ack true).
    fallback: Mutex<Option<Reply>>,
    /// Each received message: (notification ids, body).
    received: Mutex<Vec<(Vec<String>, String)>>,
}

const ACK: &str = r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>ACK</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#;
const FAULT: &str = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>soapenv:Server</faultcode><faultstring>store unavailable</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;

fn ids_of(body: &str) -> Vec<String> {
    body.split("<Notification>")
        .skip(1)
        .filter_map(|n| {
            let start = n.find("<Id>")? + 4;
            let end = n[start..].find("</Id>")? + start;
            Some(n[start..end].to_string())
        })
        .collect()
}

async fn answer(
    axum::extract::State(l): axum::extract::State<Arc<Listener>>,
    headers: axum::http::HeaderMap,
    body: String,
) -> (axum::http::StatusCode, String) {
    assert_eq!(
        headers["content-type"].to_str().unwrap(),
        "text/xml; charset=utf-8"
    );
    assert!(headers.contains_key("soapaction"));
    l.received.lock().push((ids_of(&body), body));
    let reply = l
        .script
        .lock()
        .pop_front()
        .or(*l.fallback.lock())
        .unwrap_or(Reply::Ack(true));
    let status = |s: u16| axum::http::StatusCode::from_u16(s).unwrap();
    match reply {
        Reply::Ack(a) => (status(200), ACK.replace("ACK", &a.to_string())),
        Reply::Fault => (status(500), FAULT.into()),
        Reply::Status(s) => (status(s), "nope".into()),
        Reply::Hang(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (status(200), ACK.replace("ACK", "true"))
        }
    }
}

async fn listen() -> (Arc<Listener>, String) {
    let l = Arc::new(Listener::default());
    let app = axum::Router::new()
        .route("/om", axum::routing::post(answer))
        .with_state(l.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (l, format!("http://{addr}/om"))
}

async fn queue(emu: &Emu) -> Vec<Value> {
    let r = emu
        .admin(Method::GET, "/admin/outbound-messages/queue", None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["queue"].as_array().unwrap().clone()
}

async fn wait_until<F: Fn() -> bool>(what: &str, f: F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_queue_empty(emu: &Emu) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let q = queue(emu).await;
        if q.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "the queue never drained: {q:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn settings(retention_ms: u64) -> Value {
    json!({
        "retry_initial_ms": 50, "retry_max_ms": 200, "retention_ms": retention_ms,
        "timeout_ms": 300, "batch_max": 100
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_fire_batch_retry_and_expire() {
    let emu = Emu::start().await;
    let (l, url) = listen().await;
    let r = emu
        .admin(
            Method::PUT,
            "/admin/outbound-messages/settings",
            Some(settings(3_600_000)),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Bad rules are refused naming the problem, and change nothing.
    for (rules, want) in [
        (
            json!([{ "name": "a", "object": "Account", "fields": ["Nope__c"], "endpoint_url": url }]),
            "Account has no field 'Nope__c'",
        ),
        (
            json!([{ "name": "a", "object": "Account", "fields": ["BillingAddress"], "endpoint_url": url }]),
            "'BillingAddress' is a compound field",
        ),
        (
            json!([{ "name": "a", "object": "Nope", "fields": [], "endpoint_url": url }]),
            "no object 'Nope'",
        ),
        (
            json!([{ "name": "a", "object": "Account", "fields": [], "endpoint_url": "ftp://x" }]),
            "endpoint_url must be http(s)",
        ),
    ] {
        let r = emu
            .admin(
                Method::PUT,
                "/admin/outbound-messages/rules",
                Some(json!({ "rules": rules })),
            )
            .await;
        assert_eq!(r.status, 400, "{:?}", r.body);
        assert!(r.message().contains(want), "{:?}", r.body);
    }

    // Two rules: every change, and only creates or Phone changes.
    let r = emu
        .admin(
            Method::PUT,
            "/admin/outbound-messages/rules",
            Some(json!({ "rules": [
                { "name": "all", "object": "Account", "fields": ["Name", "Phone", "SystemModstamp"],
                  "endpoint_url": url },
                { "name": "phone", "object": "account", "fields": ["Phone", "SystemModstamp"],
                  "endpoint_url": url, "trigger": "create_or_update", "changed_fields": ["Phone"] },
            ] })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let rules = r.body["rules"].as_array().unwrap();
    assert_eq!(rules[1]["object"], "Account");
    assert!(rules[0]["action_id"].as_str().unwrap().starts_with("04k"));

    let created = emu
        .post(
            &format!("{V}/sobjects/Account"),
            json!({ "Name": "Acme & <Sons>", "Phone": "555-0100" }),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    wait_queue_empty(&emu).await;
    {
        let got = l.received.lock();
        let ids: Vec<String> = got.iter().flat_map(|(i, _)| i.clone()).collect();
        assert_eq!(ids.len(), 2, "one notification per rule: {got:?}");
        let body = &got.iter().find(|(_, b)| b.contains("<sf:Name>")).unwrap().1;
        assert!(
            body.contains("<sf:Name>Acme &amp; &lt;Sons&gt;</sf:Name>"),
            "{body}"
        );
        assert!(body.contains(&format!("<sf:Id>{id}</sf:Id>")), "{body}");
        assert!(body.contains("xsi:type=\"sf:Account\""), "{body}");
        assert!(body.contains("<SessionId xsi:nil=\"true\"/>"), "{body}");
        // SOAP dateTime in UTC.
        let sm = body.split("<sf:SystemModstamp>").nth(1).unwrap();
        assert!(sm.split('<').next().unwrap().ends_with('Z'), "{body}");
    }
    // A Name change fires only "all"; a Phone change fires both.
    let r = emu
        .patch(
            &format!("{V}/sobjects/Account/{id}"),
            json!({ "Name": "Renamed" }),
        )
        .await;
    assert_eq!(r.status, 204);
    wait_until("the Name change is delivered", || {
        l.received
            .lock()
            .iter()
            .map(|(i, _)| i.len())
            .sum::<usize>()
            == 3
    })
    .await;
    let r = emu
        .patch(
            &format!("{V}/sobjects/Account/{id}"),
            json!({ "Phone": null }),
        )
        .await;
    assert_eq!(r.status, 204);
    wait_until("the Phone change is delivered by both rules", || {
        l.received
            .lock()
            .iter()
            .map(|(i, _)| i.len())
            .sum::<usize>()
            == 5
    })
    .await;
    // A null field is left out of the message.
    let last = l.received.lock().last().unwrap().1.clone();
    assert!(!last.contains("<sf:Phone>"), "{last}");

    // Batching: 150 records in one transaction → messages of at most 100 per rule.
    let r = emu
        .admin(
            Method::PUT,
            "/admin/outbound-messages/rules",
            Some(json!({ "rules": [
                { "name": "all", "object": "Account", "fields": ["Name", "SystemModstamp"],
                  "endpoint_url": url, "trigger": "create" },
            ] })),
        )
        .await;
    assert_eq!(r.status, 200);
    l.received.lock().clear();
    let r = emu
        .admin(
            Method::POST,
            "/admin/seed",
            Some(json!({ "objects": { "Account": 150 }, "seed": 7 })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    wait_queue_empty(&emu).await;
    {
        let got = l.received.lock();
        let sizes: Vec<usize> = got.iter().map(|(i, _)| i.len()).collect();
        assert!(sizes.iter().all(|n| *n <= 100), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 150, "{sizes:?}");
        assert!(sizes.contains(&100), "{sizes:?}");
    }

    // Not acknowledged: 503, a SOAP fault, Ack false, a timeout — each retried with the same
    // notification id until acknowledged.
    l.received.lock().clear();
    l.script.lock().extend([
        Reply::Status(503),
        Reply::Fault,
        Reply::Ack(false),
        Reply::Hang(1_000),
    ]);
    let r = emu
        .post(
            &format!("{V}/sobjects/Account"),
            json!({ "Name": "Retried" }),
        )
        .await;
    assert_eq!(r.status, 201);
    let mut errors: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let q = queue(&emu).await;
        if let Some(e) = q.first().and_then(|n| n["last_error"].as_str()) {
            if errors.last().map(String::as_str) != Some(e) {
                errors.push(e.to_string());
            }
        }
        if q.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never acknowledged: {q:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = l.received.lock().clone();
    assert!(got.len() >= 5, "{got:?}");
    let first = &got[0].0;
    assert_eq!(first.len(), 1);
    assert!(
        got.iter().all(|(i, _)| i == first),
        "the id is stable: {got:?}"
    );
    let all = errors.join(" | ");
    for want in ["HTTP 503", "SOAP fault: store unavailable", "Ack false"] {
        assert!(all.contains(want), "missing {want} in {all}");
    }
    let r = emu
        .admin(Method::GET, "/admin/outbound-messages", None)
        .await;
    let stats = &r.body["stats"];
    assert!(stats["messages_failed"].as_u64().unwrap() >= 4, "{stats}");
    assert_eq!(stats["notifications_expired"], 0, "{stats}");

    // Never acknowledged within the retention: dropped and counted.
    let r = emu
        .admin(
            Method::PUT,
            "/admin/outbound-messages/settings",
            Some(settings(400)),
        )
        .await;
    assert_eq!(r.status, 200);
    *l.fallback.lock() = Some(Reply::Status(500));
    let r = emu
        .post(
            &format!("{V}/sobjects/Account"),
            json!({ "Name": "Expires" }),
        )
        .await;
    assert_eq!(r.status, 201);
    let q = queue(&emu).await;
    assert!(q.len() <= 1, "{q:?}");
    wait_queue_empty(&emu).await;
    let r = emu
        .admin(Method::GET, "/admin/outbound-messages", None)
        .await;
    assert_eq!(r.body["stats"]["notifications_expired"], 1, "{:?}", r.body);
    let expired: BTreeMap<String, usize> = l
        .received
        .lock()
        .iter()
        .flat_map(|(i, _)| i.clone())
        .fold(BTreeMap::new(), |mut m, i| {
            *m.entry(i).or_default() += 1;
            m
        });
    assert!(!expired.is_empty());

    // The admin token is required.
    let r = emu
        .raw(
            Method::GET,
            "/admin/outbound-messages/queue",
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 401);
}
