//! The operator HTTP API end to end: `sfsync run` as a real child process against the emulator
//! over loopback, called with `reqwest` as an operator, a dashboard and a writing system would:
//! 1. authentication and roles: no token and a wrong token → 401, a viewer acting → 403, a
//!    writer reading operator views → 403, an operator acting → 200;
//! 2. operator actions (cancelling a run, discarding a quarantined change, write batches) are in
//!    the hash-chained audit trail and `sfsync audit verify` passes;
//! 3. the writeback ingress: a batch is durable when answered (read back from the store after
//!    SIGKILL), the same batch again answers duplicates with the same ids, invalid writes are
//!    rejected naming the field, a writer cannot write as another system, bodies over the limit
//!    get 413;
//! 4. the OpenAPI document lists exactly the served endpoints; `/metrics` is Prometheus text
//!    with the expected names;
//! 5. a non-loopback listener without TLS stops `sfsync run` with an error naming the key, and
//!    with TLS it serves HTTPS.

mod support;

use support::api::{free_port, Api};
use support::{wait_for, KillOnDrop};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{json, Map, Value as J};
use sfsync_emulator::RunningEmulator;
use sfsync_org::{ApiKind, CallContext, DmlOp};
use sfsync_store::{SqliteChangeLog, Store, WriteState};

const OPS: &str = "ops-token-0123456789abcdef";
const VIEWER: &str = "viewer-token-0123456789abcdef";
const WRITER: &str = "writer-token-0123456789abcdef";

struct Env {
    emu: RunningEmulator,
    _tmp: tempfile::TempDir,
    db: PathBuf,
    config: PathBuf,
    port: u16,
}

/// The emulator and a config with Account (backfilled when new), Contact (a postal-code rule),
/// Account writable, three tokens and `api` (the `[api]` keys above the tokens).
async fn env(api: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (emu, _client) = support::emulator(&dir).await;
    for (file, token) in [
        ("ops.token", OPS),
        ("viewer.token", VIEWER),
        ("writer.token", WRITER),
    ] {
        std::fs::write(dir.join(file), token).unwrap();
    }
    let db = dir.join("wh.db");
    let config = dir.join("sfsync.toml");
    let port = free_port();
    let api = api.replace("{port}", &port.to_string());
    let text = format!(
        r#"[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"

[[objects]]
name = "Account"

[[objects]]
name = "Contact"
rules = [{{ field = "MailingPostalCode", check = "regex", pattern = "^[0-9]{{5}}$" }}]

[warehouse]
type = "sqlite"
path = "{db}"

[pipeline]
batch_max_records = 100
batch_max_wait_ms = 50
backfill_page_records = 100

# Writes linger for an hour: this test reads them back as `pending` (delivery has its own
# tests in writeback_e2e).
[writeback]
linger_ms = 3600000

[[writeback.objects]]
name = "Account"
owner = "shared"
policy = "merge"

[api]
{api}
max_body_bytes = 65536
max_batch_writes = 50

[[api.tokens]]
name = "ops"
role = "operator"
token_file = "ops.token"

[[api.tokens]]
name = "dashboard"
role = "viewer"
token_file = "viewer.token"

[[api.tokens]]
name = "case-mgmt"
role = "writer"
source_system = "case_mgmt"
token_file = "writer.token"
"#,
        creds = emu.credentials_path.display(),
        ca = emu.ca_pem_path.display(),
        db = db.display(),
    );
    std::fs::write(&config, text).unwrap();
    Env {
        emu,
        _tmp: tmp,
        db,
        config,
        port,
    }
}

fn sfsync() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sfsync"));
    cmd.env("SFSYNC_LOG", "warn");
    cmd
}

fn spawn(env: &Env) -> KillOnDrop {
    KillOnDrop(
        sfsync()
            .args(["run", "--config"])
            .arg(&env.config)
            .args(["--progress-secs", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning sfsync run"),
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

fn insert_contact(env: &Env, last_name: &str, postal_code: &str) -> String {
    let mut fields = Map::new();
    fields.insert("LastName".into(), J::String(last_name.into()));
    fields.insert("MailingPostalCode".into(), J::String(postal_code.into()));
    env.emu.org().execute(
        &ctx(env),
        vec![DmlOp::Insert {
            object: "Contact".into(),
            fields,
        }],
        true,
    )[0]
    .as_ref()
    .expect("the contact is created")
    .id()
    .to_string()
}

fn assert_error(status: StatusCode, body: &J, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// The routes the OpenAPI document must describe, and the API serve.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/runs"),
    ("GET", "/api/v1/runs/{id}"),
    ("POST", "/api/v1/runs/{id}/cancel"),
    ("GET", "/api/v1/quarantine"),
    ("GET", "/api/v1/quarantine/{id}"),
    ("POST", "/api/v1/quarantine/{id}/release"),
    ("POST", "/api/v1/quarantine/{id}/discard"),
    ("GET", "/api/v1/flows"),
    ("GET", "/api/v1/sync-status"),
    ("GET", "/api/v1/budget"),
    ("GET", "/api/v1/map"),
    ("GET", "/api/v1/deadletters"),
    ("POST", "/api/v1/deadletters/{kind}/{id}/redrive"),
    ("POST", "/api/v1/deadletters/{kind}/{id}/discard"),
    ("GET", "/api/v1/conflicts"),
    ("GET", "/api/v1/conflicts/{id}"),
    ("POST", "/api/v1/conflicts/{id}/resolve"),
    ("POST", "/api/v1/writes"),
    ("GET", "/api/v1/writes"),
    ("GET", "/api/v1/writes/{id}"),
    ("POST", "/api/v1/events/{name}"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/records/{object}"),
    ("GET", "/api/v1/records/{object}/{id}"),
    ("GET", "/api/v1/records/{object}/by/{field}/{value}"),
    ("GET", "/odata/v4/"),
    ("GET", "/odata/v4/$metadata"),
    ("GET", "/odata/v4/{resource}"),
    ("GET", "/odata/v4/{resource}/$count"),
    ("POST", "/soap/outbound/{flow}/{secret}"),
    ("GET", "/api/v1/outbound-messages"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/ui/"),
    ("GET", "/ui/{file}"),
];

fn batch(source_system: &str, writes: J) -> J {
    json!({ "source_system": source_system, "writes": writes })
}

fn good_writes() -> J {
    json!([
        { "object": "Account", "record_id": "001000000000001AAA", "fields": { "Name": "Acme" },
          "seen_version_ms": 1_795_253_400_000i64, "idempotency_key": "k-1" },
        { "object": "Account", "external_id_field": "Ext_Ref__c", "external_id": "A-2",
          "fields": { "Name": "Beta", "Phone": null }, "idempotency_key": "k-2" },
        { "object": "Account", "record_id": "001000000000003", "fields": { "Name": "Gamma" },
          "idempotency_key": "k-3" }
    ])
}

/// Checks one Prometheus text-format line (0.0.4).
fn check_metric_line(line: &str, names: &mut BTreeSet<String>) {
    let comment = regex::Regex::new(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$").unwrap();
    let sample = regex::Regex::new(
        r#"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*\})? (-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?|\+Inf|-Inf|NaN)$"#,
    )
    .unwrap();
    if line.starts_with('#') {
        assert!(comment.is_match(line), "bad comment line: {line:?}");
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let kind = rest.rsplit(' ').next().unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
        }
        return;
    }
    let caps = sample
        .captures(line)
        .unwrap_or_else(|| panic!("bad sample line: {line:?}"));
    let name = caps[1].to_string();
    assert!(name.starts_with("sfsync_"), "{line}");
    names.insert(name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_auth_actions_audit_ingress_openapi_and_metrics() {
    let env = env("listen = \"127.0.0.1:{port}\"").await;
    // Bulk queries fail with 503 (retried with backoff), so the Account backfill stays running
    // until an operator cancels it.
    env.emu
        .state
        .faults
        .set(sfsync_emulator::faults::FaultConfig {
            rules: vec![sfsync_emulator::faults::FaultRule {
                path_contains: "/jobs/query".into(),
                method: None,
                kind: sfsync_emulator::faults::FaultKind::ServerUnavailable,
                rate: 1.0,
                max_count: None,
                fired: 0,
            }],
            ..Default::default()
        });
    let mut child = spawn(&env);
    let api = Api {
        http: Client::new(),
        base: format!("http://127.0.0.1:{}", env.port),
    };

    // ---- OpenAPI: exactly the served routes, each one routed ----
    let doc = api.ready().await;
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);
    for (method, path) in ROUTES {
        let concrete = path
            .replace("{id}", "1")
            .replace("{kind}", "write")
            .replace("{file}", "app.js");
        let (status, _) = api.call_text(method, &concrete, None, None).await;
        // The OpenAPI document and the dashboard's files (no data in them) are public.
        let want = if *path == "/api/v1/openapi.json" || *path == "/" || path.starts_with("/ui/") {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(status, want, "{method} {concrete}");
    }
    let (status, body) = api.call("GET", "/api/v1/nope", Some(VIEWER), None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // ---- authentication ----
    let (status, body) = api.call("GET", "/api/v1/status", None, None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = api
        .call(
            "GET",
            "/api/v1/status",
            Some("not-a-configured-token-123"),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    // A prefix of a real token is not that token.
    let (status, _) = api
        .call("GET", "/api/v1/status", Some(&OPS[..OPS.len() - 1]), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let basic = api
        .http
        .get(format!("{}/api/v1/status", api.base))
        .header("authorization", format!("Basic {OPS}"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    let status = api.get("/api/v1/status", VIEWER).await;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["caller"]["role"], "viewer");
    assert_eq!(
        api.get("/api/v1/status", OPS).await["caller"]["role"],
        "operator"
    );
    assert_eq!(status["writes"]["pending"], 0);
    let names: Vec<&str> = status["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Account", "Contact"]);
    // A writer token is for the ingress only.
    let (status, body) = api.call("GET", "/api/v1/status", Some(WRITER), None).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");

    // ---- runs: the stalled backfill, cancelled by an operator ----
    let found = AtomicI64::new(0);
    wait_for("a backfill is running", Duration::from_secs(60), || {
        let api = &api;
        let found = &found;
        async move {
            let runs = api
                .get("/api/v1/runs?state=open&kind=backfill", VIEWER)
                .await;
            match runs["runs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["state"] == "running")
            {
                Some(r) => {
                    found.store(r["id"].as_i64().unwrap(), Ordering::Relaxed);
                    vec![]
                }
                None => vec![format!("open backfills: {runs}")],
            }
        }
    })
    .await;
    let run_id = found.load(Ordering::Relaxed);
    let cancel = format!("/api/v1/runs/{run_id}/cancel");
    let (status, body) = api
        .call("POST", &cancel, Some(VIEWER), Some(&json!({})))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(
        api.get(&format!("/api/v1/runs/{run_id}"), VIEWER).await["state"],
        "running",
        "a refused cancel changes nothing"
    );
    let (status, body) = api
        .call(
            "POST",
            &cancel,
            Some(OPS),
            Some(&json!({ "note": "org maintenance window" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "cancelled");
    assert!(body["error"].as_str().unwrap().contains("ops"), "{body}");
    let (status, body) = api.call("POST", &cancel, Some(OPS), None).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = api
        .call("GET", "/api/v1/runs?state=bogus", Some(VIEWER), None)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let (status, body) = api
        .call("GET", "/api/v1/runs/999999", Some(VIEWER), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // ---- quarantine: a bad Contact held, discarded by an operator ----
    let bad = insert_contact(&env, "Bad Postcode", "ABC");
    let good = insert_contact(&env, "Good Postcode", "12345");
    let found = AtomicI64::new(0);
    wait_for(
        "the bad Contact is quarantined",
        Duration::from_secs(60),
        || {
            let (api, bad, found) = (&api, &bad, &found);
            async move {
                let q = api.get("/api/v1/quarantine?object=Contact", VIEWER).await;
                match q["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["record_id"] == **bad)
                {
                    Some(e) => {
                        found.store(e["id"].as_i64().unwrap(), Ordering::Relaxed);
                        vec![]
                    }
                    None => vec![format!("quarantine: {q}")],
                }
            }
        },
    )
    .await;
    let held = found.load(Ordering::Relaxed);
    let shown = api.get(&format!("/api/v1/quarantine/{held}"), VIEWER).await;
    assert_eq!(shown["status"], "held");
    assert!(shown["change"].is_object(), "{shown}");
    let discard = format!("/api/v1/quarantine/{held}/discard");
    let (status, body) = api.call("POST", &discard, Some(VIEWER), None).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = api
        .call(
            "POST",
            &discard,
            Some(OPS),
            Some(&json!({ "note": "test data" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "discarded");
    assert_eq!(body["by"], "api:ops");
    let (status, body) = api.call("POST", &discard, Some(OPS), None).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = api
        .call("POST", "/api/v1/quarantine/999999/release", Some(OPS), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        api.get("/api/v1/deadletters", VIEWER).await["dead_letters"],
        json!([])
    );
    let (status, body) = api
        .call("GET", "/api/v1/deadletters?kind=nope", Some(VIEWER), None)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");

    // ---- flows, map, budget (the dashboard's views) ----
    let map = api.get("/api/v1/map", VIEWER).await;
    let flows = api.get("/api/v1/flows", VIEWER).await;
    let map_ids: Vec<&J> = map["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["id"])
        .collect();
    let flow_ids: Vec<&J> = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["id"])
        .collect();
    assert_eq!(map_ids, flow_ids, "one flow per map flow, same order");
    assert!(
        map["mermaid"].as_str().unwrap().starts_with("flowchart"),
        "{map}"
    );
    assert!(map["dot"].as_str().unwrap().starts_with("digraph"), "{map}");
    let contact = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["object"] == "Contact" && f["pattern"] == "CDC stream")
        .unwrap_or_else(|| panic!("no Contact flow: {flows}"));
    assert!(
        contact["counts"]["changes_committed"].as_u64().unwrap() >= 2,
        "{contact}"
    );
    assert!(
        ["green", "amber", "red"].contains(&contact["health"].as_str().unwrap()),
        "{contact}"
    );
    assert_eq!(contact["throughput"]["interval_seconds"], 10, "{contact}");
    let outbound = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["direction"] == "outbound")
        .unwrap_or_else(|| panic!("no writeback flow: {flows}"));
    assert_eq!(outbound["object"], "Account");
    assert_eq!(outbound["health"], "green", "{outbound}");
    let budget = api.get("/api/v1/budget", VIEWER).await;
    assert!(budget["lanes"].as_array().unwrap().len() == 5, "{budget}");
    assert!(budget["our_used"].as_u64().unwrap() > 0, "{budget}");
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/conflicts/1/resolve",
            Some(VIEWER),
            Some(&json!({"action": "keep_salesforce"})),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/conflicts/999999/resolve",
            Some(OPS),
            Some(&json!({"action": "keep_salesforce"})),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        api.get("/api/v1/conflicts", VIEWER).await["conflicts"],
        json!([])
    );

    // ---- writes ----
    let (status, first) = api
        .call(
            "POST",
            "/api/v1/writes",
            Some(WRITER),
            Some(&batch("case_mgmt", good_writes())),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(
        (&first["accepted"], &first["duplicates"], &first["rejected"]),
        (&json!(3), &json!(0), &json!(0))
    );
    let ids: Vec<i64> = first["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "accepted", "{r}");
            r["id"].as_i64().unwrap()
        })
        .collect();
    // The same batch again (a client retry after a lost response): the same writes.
    let (status, again) = api
        .call(
            "POST",
            "/api/v1/writes",
            Some(OPS),
            Some(&batch("case_mgmt", good_writes())),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let again_ids: Vec<i64> = again["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "duplicate", "{r}");
            r["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(again_ids, ids);
    // Invalid writes are rejected one by one, naming the field; the valid one is stored.
    let mixed = json!([
        { "object": "Account", "record_id": "001000000000004AAA", "fields": { "Name": "Delta" }, "idempotency_key": "k-4" },
        { "object": "Account", "record_id": "123", "fields": { "Name": "x" }, "idempotency_key": "k-5" },
        { "object": "Account", "record_id": "001000000000006AAA", "idempotency_key": "k-6" },
        { "object": "Contact", "record_id": "003000000000007AAA", "fields": { "LastName": "x" }, "idempotency_key": "k-7" },
        { "object": "Account", "record_id": "001000000000008AAA", "fields": { "Name": "x" }, "idempotency_key": "k-8", "seen_version_ms": "yesterday" },
        { "object": "Account", "record_id": "001000000000009AAA", "fields": { "Name": "x" }, "idempotency_key": "k-9", "colour": "red" }
    ]);
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/writes",
            Some(WRITER),
            Some(&batch("case_mgmt", mixed)),
        )
        .await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], "accepted");
    let reasons: Vec<&str> = results[1..]
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "rejected", "{r}");
            r["reason"].as_str().unwrap()
        })
        .collect();
    assert!(
        reasons[0].starts_with("writes[1].record_id:"),
        "{reasons:?}"
    );
    assert!(reasons[1].starts_with("writes[2].fields:"), "{reasons:?}");
    assert!(
        reasons[2].starts_with("writes[3].object:") && reasons[2].contains("writeback"),
        "{reasons:?}"
    );
    assert!(
        reasons[3].starts_with("writes[4].seen_version_ms:"),
        "{reasons:?}"
    );
    assert!(reasons[4].starts_with("writes[5].colour:"), "{reasons:?}");
    let accepted_late = results[0]["id"].as_i64().unwrap();
    // A writer may only write as its own system; a viewer not at all.
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/writes",
            Some(WRITER),
            Some(&batch("payments", good_writes())),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/writes",
            Some(VIEWER),
            Some(&batch("case_mgmt", good_writes())),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    // Too big: the body (over max_body_bytes), and the batch (over max_batch_writes).
    let huge = json!({ "source_system": "case_mgmt", "writes": [
        { "object": "Account", "record_id": "001000000000001AAA", "fields": { "Description": "x".repeat(70_000) }, "idempotency_key": "big" }
    ] });
    let (status, body) = api
        .call("POST", "/api/v1/writes", Some(WRITER), Some(&huge))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    let many: Vec<J> = (0..51)
        .map(|i| json!({ "object": "Account", "record_id": "001000000000001AAA", "fields": { "Name": "n" }, "idempotency_key": format!("many-{i}") }))
        .collect();
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/writes",
            Some(WRITER),
            Some(&batch("case_mgmt", J::Array(many))),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    let (status, body) = api
        .call_text("POST", "/api/v1/writes", Some(WRITER), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Reading writes back.
    let w = api.get(&format!("/api/v1/writes/{}", ids[0]), WRITER).await;
    assert_eq!(w["state"], "pending");
    assert_eq!(w["idempotency_key"], "k-1");
    assert_eq!(w["fields"], json!({ "Name": "Acme" }));
    assert_eq!(w["transitions"].as_array().unwrap().len(), 1);
    let pending = api
        .get("/api/v1/writes?state=pending&object=Account", VIEWER)
        .await;
    assert_eq!(pending["writes"].as_array().unwrap().len(), 4);
    let (status, body) = api
        .call("GET", "/api/v1/writes?state=lost", Some(VIEWER), None)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");

    // ---- metrics ----
    wait_for(
        "the good Contact is applied",
        Duration::from_secs(60),
        || {
            let api = &api;
            async move {
                let s = api.get("/api/v1/status", VIEWER).await;
                if s["pipeline"]["lag_seconds"].is_number() {
                    vec![]
                } else {
                    vec![format!("status: {s}")]
                }
            }
        },
    )
    .await;
    let _ = good;
    let (status, _) = api.call_text("GET", "/metrics", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api.call_text("GET", "/metrics", Some(WRITER), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let resp = api
        .http
        .get(format!("{}/metrics", api.base))
        .bearer_auth(VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        check_metric_line(line, &mut names);
    }
    for want in [
        "sfsync_build_info",
        "sfsync_uptime_seconds",
        "sfsync_events_ingested_total",
        "sfsync_changes_applied_total",
        "sfsync_errors_total",
        "sfsync_consumer_lag_seconds",
        "sfsync_last_applied_commit_timestamp_seconds",
        "sfsync_dead_letters",
        "sfsync_quarantine_open",
        "sfsync_repairs_pending",
        "sfsync_resyncs_pending",
        "sfsync_writes",
        "sfsync_apply_latency_seconds_bucket",
        "sfsync_apply_latency_seconds_sum",
        "sfsync_apply_latency_seconds_count",
        "sfsync_channel_events_ingested_total",
        "sfsync_object_changes_total",
        "sfsync_object_lag_seconds",
    ] {
        assert!(names.contains(want), "missing {want} in\n{text}");
    }
    assert!(
        text.contains("\nsfsync_writes{state=\"pending\"} 4\n"),
        "{text}"
    );
    // Every metric the shipped alert rules and Grafana dashboard query is exported.
    let exported = support::metric_names(&text);
    let ops = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops");
    for file in [
        "prometheus/sfsync-alerts.yml",
        "grafana/sfsync-dashboard.json",
    ] {
        let used = support::metric_names(&std::fs::read_to_string(ops.join(file)).unwrap());
        let missing: Vec<&String> = used.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} queries {missing:?}, not exported:\n{text}"
        );
    }
    assert!(text.contains("\nsfsync_quarantine_open 0\n"), "{text}");
    assert!(
        text.contains("\nsfsync_object_changes_total{object=\"Contact\"} "),
        "{text}"
    );
    assert!(
        text.contains("\nsfsync_object_lag_seconds{object=\"Contact\"} "),
        "{text}"
    );
    assert!(
        text.contains(
            "\nsfsync_channel_events_ingested_total{channel=\"/data/ContactChangeEvent\"} "
        ),
        "{text}"
    );
    let status = api.get("/api/v1/status", VIEWER).await;
    let contact = &status["objects"][1];
    assert_eq!(contact["name"], "Contact");
    assert!(contact["lag_seconds"].is_number(), "{status}");
    assert!(
        contact["changes_committed"].as_u64().unwrap() >= 2,
        "{status}"
    );
    assert!(
        contact["channel_events_ingested"].as_u64().unwrap() >= 2,
        "{status}"
    );

    // ---- durable: SIGKILL, then read the store ----
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteChangeLog::open(&env.db).await.unwrap());
    for (id, key) in ids.iter().zip(["k-1", "k-2", "k-3"]) {
        let w = store
            .write(*id)
            .await
            .unwrap()
            .expect("the write is stored");
        // Stored under its key; the running deliverer may already have claimed it.
        assert_eq!(w.idempotency_key.as_str(), key);
        assert!(
            matches!(
                w.state,
                WriteState::Pending | WriteState::Sent | WriteState::Applied | WriteState::Failed
            ),
            "{:?}",
            w.state
        );
        assert_eq!(w.source_system, "case_mgmt");
    }
    assert!(store.write(accepted_late).await.unwrap().is_some());
    // The operator actions, newest first, each with who, what and the target.
    let actions = store.operator_actions(100).await.unwrap();
    let summary: Vec<(String, String, String)> = actions
        .iter()
        .rev()
        .map(|a| {
            (
                a.action.actor.clone(),
                a.action.action.clone(),
                a.action.target.clone(),
            )
        })
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        summary,
        [
            s("ops", "run.cancel", &format!("run {run_id}")),
            s("ops", "quarantine.discard", &format!("quarantine {held}")),
            s("case-mgmt", "writes.submit", "source_system case_mgmt"),
            s("ops", "writes.submit", "source_system case_mgmt"),
            s("case-mgmt", "writes.submit", "source_system case_mgmt"),
        ],
        "refused requests (403, 409, 413) record nothing"
    );
    assert_eq!(actions[4].action.detail["note"], "org maintenance window");
    assert_eq!(
        actions[2].action.detail["idempotency_keys"],
        json!(["k-1", "k-2", "k-3"])
    );
    let v = store.verify_audit().await.unwrap();
    assert_eq!((v.operator_actions, v.first_break), (5, None));
    let out = sfsync()
        .args(["audit", "verify", "--config"])
        .arg(&env.config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("operator actions checked: 5"), "{stdout}");
    assert!(stdout.contains("result: intact"), "{stdout}");
}

#[test]
fn a_non_loopback_listener_without_tls_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sfsync.toml");
    std::fs::write(
        &config,
        format!(
            "[salesforce]\ncredentials_file = \"creds.json\"\n\n[[objects]]\nname = \"Account\"\n\n[warehouse]\ntype = \"sqlite\"\npath = \"wh.db\"\n\n[api]\nlisten = \"0.0.0.0:{}\"\n",
            free_port()
        ),
    )
    .unwrap();
    let out = sfsync()
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("api.listen") && stderr.contains("is not a loopback address"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("wh.db").exists(),
        "nothing started before the refusal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_listener_with_tls_serves_https() {
    // The emulator's server certificate (for localhost and 127.0.0.1, signed by its CA).
    let env = env("listen = \"0.0.0.0:{port}\"\ntls_cert_file = \"org/server.pem\"\ntls_key_file = \"org/server-key.pem\"").await;
    let org: &Path = env.emu.ca_pem_path.parent().unwrap();
    assert!(org.join("server.pem").is_file() && org.join("server-key.pem").is_file());
    let _child = spawn(&env);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&env.emu.ca_pem_path).unwrap()).unwrap();
    let api = Api {
        http: Client::builder().tls_certs_only([ca]).build().unwrap(),
        base: format!("https://127.0.0.1:{}", env.port),
    };
    api.ready().await;
    let status = api.get("/api/v1/status", VIEWER).await;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    let (status, _) = api.call_text("GET", "/api/v1/status", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Plain HTTP on the TLS port gets no answer.
    let plain = Client::new()
        .get(format!("http://127.0.0.1:{}/api/v1/openapi.json", env.port))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(
        plain.map(|r| r.status() != StatusCode::OK).unwrap_or(true),
        "plain HTTP must not be served on a TLS listener"
    );
}
