//! The OData 4.0 endpoint and the operational read API end to end: `sfsync run` as a child
//! process against the emulator over loopback, with 20 Accounts created in the org.
//! 1. python-odata (tests/compat/odata_client.py, a third-party OData v4 client) reads
//!    `$metadata`, pages through more than one page by `@odata.nextLink`, runs each filter
//!    operator, `$orderby`, `$select`, `$count`, sees PII as `null` through a principal without
//!    PII and in clear through one with it, and gets a 400 for a malformed `$filter`;
//! 2. the read API: no token / a wrong token → 401, a writer → 403, unknown object or record →
//!    404, a record by Id and by External Id with its sync metadata and freshness, lists with
//!    filters and cursor paging, PII hidden for a viewer and shown for an operator, and 429
//!    with `Retry-After` past a caller's rate.

mod support;

use support::api::{free_port, Api};
use support::moto::python_env;
use support::{wait_for, KillOnDrop};

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{json, Map, Value as J};
use sfsync_emulator::RunningEmulator;
use sfsync_org::{ApiKind, CallContext, DmlOp};

const OPS: &str = "ops-token-0123456789abcdef";
const VIEWER: &str = "viewer-token-0123456789abcdef";
const HAMMER: &str = "hammer-token-0123456789abcdef";
const WRITER: &str = "writer-token-0123456789abcdef";
const CONNECT_PW: &str = "connect-password-0123";
const BI_PW: &str = "bi-password-0123456789";
const PREFIX: &str = "OD-";
const N: usize = 20;

struct Env {
    emu: RunningEmulator,
    _tmp: tempfile::TempDir,
    db: PathBuf,
    config: PathBuf,
    port: u16,
}

async fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (emu, _client) = support::emulator(&dir).await;
    for (file, secret) in [
        ("ops.token", OPS),
        ("viewer.token", VIEWER),
        ("hammer.token", HAMMER),
        ("writer.token", WRITER),
        ("connect.pw", CONNECT_PW),
        ("bi.pw", BI_PW),
    ] {
        std::fs::write(dir.join(file), secret).unwrap();
    }
    std::fs::write(dir.join("pii.key"), "ab".repeat(32)).unwrap();
    let db = dir.join("wh.db");
    let config = dir.join("sfsync.toml");
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
batch_max_records = 100
batch_max_wait_ms = 50
backfill_page_records = 100

[api]
listen = "127.0.0.1:{port}"
read_rate_per_sec = 2
read_burst = 400

[[api.tokens]]
name = "ops"
role = "operator"
token_file = "ops.token"

[[api.tokens]]
name = "dashboard"
role = "viewer"
token_file = "viewer.token"

[[api.tokens]]
name = "hammer"
role = "viewer"
token_file = "hammer.token"

[[api.tokens]]
name = "case-mgmt"
role = "writer"
source_system = "case_mgmt"
token_file = "writer.token"

[odata]
entity_sets = ["Account"]
outbox = true
page_size = 7

[[odata.basic_auth]]
username = "sfconnect"
password = {{ file = "connect.pw" }}

[[odata.basic_auth]]
username = "bi"
password = {{ file = "bi.pw" }}
pii = true
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

fn spawn(env: &Env) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_sfsync"))
            .env("SFSYNC_LOG", "warn")
            .args(["run", "--config"])
            .arg(&env.config)
            .args(["--progress-secs", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning sfsync run"),
    )
}

/// The Accounts this test creates: (name, employees, industry, revenue, description, phone).
struct Acc {
    name: String,
    employees: Option<i64>,
    industry: &'static str,
    revenue: f64,
    needle: bool,
    phone: String,
    ext: String,
}

fn accounts() -> Vec<Acc> {
    (0..N)
        .map(|i| Acc {
            name: format!("{PREFIX}{i:02}"),
            employees: (i % 5 != 0).then_some(i as i64 * 10),
            industry: if i % 2 == 0 { "Banking" } else { "Energy" },
            revenue: i as f64 * 500.5,
            needle: i % 3 == 0,
            phone: format!("555-01{i:02}"),
            ext: format!("EXT-{i:02}"),
        })
        .collect()
}

fn create_accounts(env: &Env) -> Vec<String> {
    let ctx = CallContext {
        user_id: env.emu.org().admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: Some("someone-else".into()),
    };
    let ops: Vec<DmlOp> = accounts()
        .iter()
        .map(|a| {
            let mut f = Map::new();
            f.insert("Name".into(), json!(a.name));
            if let Some(e) = a.employees {
                f.insert("NumberOfEmployees".into(), json!(e));
            }
            f.insert("Industry".into(), json!(a.industry));
            f.insert("AnnualRevenue".into(), json!(a.revenue));
            f.insert(
                "Description".into(),
                json!(if a.needle { "has a needle" } else { "plain" }),
            );
            f.insert("Phone".into(), json!(a.phone));
            f.insert("External_Id__c".into(), json!(a.ext));
            DmlOp::Insert {
                object: "Account".into(),
                fields: f,
            }
        })
        .collect();
    env.emu
        .org()
        .execute(&ctx, ops, true)
        .into_iter()
        .map(|r| r.expect("the account is created").id().to_string())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn names_where(f: impl Fn(&Acc) -> bool) -> Vec<String> {
    sorted(
        accounts()
            .into_iter()
            .filter(|a| f(a))
            .map(|a| a.name)
            .collect(),
    )
}

fn strings(v: &J) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| {
            x.as_str()
                .unwrap_or_else(|| panic!("not a string: {x}"))
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odata_endpoint_and_read_api() {
    let env = env().await;
    let ids = create_accounts(&env);
    let child = spawn(&env);
    let api = Api {
        http: Client::new(),
        base: format!("http://127.0.0.1:{}", env.port),
    };
    api.ready().await;
    // Wait until the 20 Accounts are served (OData /$count, as the operator).
    let count_path = format!("/odata/v4/Account/$count?$filter=startswith(Name,%27{PREFIX}%27)");
    wait_for(
        "the accounts are in the warehouse",
        Duration::from_secs(90),
        || {
            let (api, path) = (&api, &count_path);
            async move {
                let (status, text) = api.call_text("GET", path, Some(OPS), None).await;
                match (status, text.trim().parse::<usize>()) {
                    (StatusCode::OK, Ok(n)) if n == N => Vec::new(),
                    (StatusCode::OK, Ok(n)) => vec![format!("{n} of {N} accounts")],
                    _ => vec![format!("{status}: {text}")],
                }
            }
        },
    )
    .await;

    // An outbox row as an outside system inserts it (PII may rest there until ingested).
    {
        let conn = rusqlite::Connection::open(&env.db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.execute(
            "INSERT INTO outbox (source_system, idempotency_key, object, record_id, fields) \
             VALUES ('erp', 'k-1', 'Account', ?1, '{\"Phone\":\"555-9999\"}')",
            [&ids[0]],
        )
        .unwrap();
    }

    // ---- 1. the third-party OData client ----
    let url = format!("http://127.0.0.1:{}/odata/v4/", env.port);
    let out = Command::new(python_env::python())
        .arg(python_env::workspace_root().join("tests/compat/odata_client.py"))
        .args([&url, "sfconnect", CONNECT_PW, "bi", BI_PW, PREFIX])
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "odata_client.py failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let r: J = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "odata_client.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(
        strings(&r["entity_sets"]),
        ["Account", "WritebackOutbox"],
        "{r}"
    );
    let props = strings(&r["account_properties"]);
    for p in [
        "Id",
        "Name",
        "Phone",
        "NumberOfEmployees",
        "AnnualRevenue",
        "External_Id__c",
    ] {
        assert!(
            props.contains(&p.to_string()),
            "{p} missing from $metadata: {props:?}"
        );
    }
    let all = names_where(|_| true);
    assert_eq!(strings(&r["paged_names"]), all, "paging by nextLink: {r}");
    assert_eq!(r["first_page_len"], 7, "{r}");
    assert!(
        r["first_page_next_link"]
            .as_str()
            .is_some_and(|l| l.contains("%24skiptoken=")),
        "{r}"
    );
    let e = |a: &Acc| a.employees;
    let expect = [
        ("eq", names_where(|a| a.name == format!("{PREFIX}03"))),
        ("ne", names_where(|a| a.industry != "Banking")),
        ("gt", names_where(|a| e(a).is_some_and(|x| x > 100))),
        ("ge", names_where(|a| e(a).is_some_and(|x| x >= 100))),
        ("lt", names_where(|a| e(a).is_some_and(|x| x < 40))),
        ("le", names_where(|a| e(a).is_some_and(|x| x <= 40))),
        ("null", names_where(|a| e(a).is_none())),
        ("contains", names_where(|a| a.needle)),
        ("not_contains", names_where(|a| !a.needle)),
        (
            "and",
            names_where(|a| e(a).is_some_and(|x| x > 20) && a.industry == "Energy"),
        ),
        (
            "or",
            names_where(|a| a.name == format!("{PREFIX}01") || a.name == format!("{PREFIX}02")),
        ),
        ("revenue_ge", names_where(|a| a.revenue >= 5000.0)),
    ];
    for (k, want) in expect {
        assert!(
            !want.is_empty() || k == "eq",
            "{k}: the data exercises nothing"
        );
        assert_eq!(
            strings(&r["filters"][k]),
            want,
            "$filter {k} ({}): {}",
            r["filter_text"][k],
            r["filters"][k]
        );
    }
    let mut ordered: Vec<Acc> = accounts();
    ordered.sort_by(|a, b| b.employees.cmp(&a.employees).then(a.name.cmp(&b.name)));
    // Descending puts nulls last.
    let want: Vec<String> = ordered
        .iter()
        .filter(|a| a.employees.is_some())
        .chain(ordered.iter().filter(|a| a.employees.is_none()))
        .map(|a| a.name.clone())
        .collect();
    assert_eq!(
        strings(&r["ordered"]),
        want,
        "$orderby NumberOfEmployees desc, Name"
    );
    let selected = r["selected"].as_array().unwrap();
    assert_eq!(selected.len(), 3, "{r}");
    for row in selected {
        let keys: Vec<&String> = row
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !k.starts_with('@'))
            .collect();
        assert_eq!(keys, ["Name", "NumberOfEmployees"], "$select: {row}");
    }
    assert_eq!(r["count"], N, "{r}");
    assert_eq!(r["inline_count"], N, "{r}");
    assert!(
        r["phones_hidden"]
            .as_array()
            .unwrap()
            .iter()
            .all(J::is_null),
        "{r}"
    );
    let shown: Vec<String> = accounts().into_iter().map(|a| a.phone).collect();
    assert_eq!(
        strings(&r["phones_shown"]),
        shown,
        "PII for the authorised principal"
    );
    assert_eq!(r["outbox_fields_hidden"], json!([null]), "{r}");
    assert_eq!(
        r["outbox_fields_shown"],
        json!(["{\"Phone\":\"555-9999\"}"]),
        "{r}"
    );
    assert!(
        r["pii_filter_error"]
            .as_str()
            .is_some_and(|m| m.contains("PII")),
        "{r}"
    );
    assert!(r["malformed_error"].is_string(), "{r}");
    assert_eq!(r["malformed_status"], 400, "{r}");
    let msg = r["malformed_body"]["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("$filter: position 9") && msg.contains("not closed"),
        "the error names the position: {msg}"
    );

    // Bearer auth on OData too, and refusals.
    let (status, text) = api
        .call_text("GET", "/odata/v4/Account/$count", Some(VIEWER), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.trim().parse::<u64>().unwrap() >= N as u64);
    let (status, _) = api
        .call_text("GET", "/odata/v4/$metadata", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api
        .call_text("GET", "/odata/v4/$metadata", Some(WRITER), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = api
        .call(
            "GET",
            &format!("/odata/v4/Account('{}')", ids[3]),
            Some(VIEWER),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["Name"], format!("{PREFIX}03"));
    assert!(body["@odata.context"]
        .as_str()
        .unwrap()
        .ends_with("$metadata#Account/$entity"));

    // ---- 2. the read API ----
    let (status, body) = api.call("GET", "/api/v1/records/Account", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = api
        .call(
            "GET",
            "/api/v1/records/Account",
            Some("wrong-token-0123456789"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = api
        .call("GET", "/api/v1/records/Account", Some(WRITER), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = api
        .call(
            "GET",
            "/api/v1/records/Lead/00Q000000000001AAA",
            Some(VIEWER),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = api
        .call(
            "GET",
            "/api/v1/records/Account/001000000000000AAA",
            Some(VIEWER),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let rec = api
        .get(&format!("/api/v1/records/Account/{}", ids[4]), VIEWER)
        .await;
    assert_eq!(rec["id"], ids[4].as_str());
    assert_eq!(rec["fields"]["Name"], format!("{PREFIX}04"));
    assert_eq!(
        rec["fields"]["Phone"],
        J::Null,
        "PII hidden from a viewer: {rec}"
    );
    let sync = &rec["sync"];
    assert_eq!(sync["deleted"], false, "{rec}");
    let commit =
        chrono::DateTime::parse_from_rfc3339(sync["commit_timestamp"].as_str().unwrap()).unwrap();
    let applied =
        chrono::DateTime::parse_from_rfc3339(sync["applied_at"].as_str().unwrap()).unwrap();
    assert!(
        applied >= commit - chrono::Duration::seconds(5),
        "applied after commit: {sync}"
    );
    assert!(
        sync["version"]
            .as_str()
            .is_some_and(|v| v.split(':').count() == 3),
        "{sync}"
    );
    assert!(
        sync["change_type"].is_string() && sync["source"].is_string(),
        "{sync}"
    );
    let fresh = &rec["freshness"];
    wait_for("the freshness row", Duration::from_secs(30), || {
        let api = &api;
        let id = ids[4].clone();
        async move {
            let rec = api.get(&format!("/api/v1/records/Account/{id}"), OPS).await;
            let f = &rec["freshness"];
            let mut p = Vec::new();
            if !["current", "delayed", "partial"].contains(&f["status"].as_str().unwrap_or("")) {
                p.push(format!("status: {f}"));
            }
            if f["current_as_of"].is_null()
                || !f["lag_seconds"]
                    .as_f64()
                    .is_some_and(|l| (0.0..600.0).contains(&l))
            {
                p.push(format!("not sane yet: {f}"));
            }
            p
        }
    })
    .await;
    assert!(fresh.is_object(), "{rec}");
    let rec = api
        .get(&format!("/api/v1/records/Account/{}", ids[4]), OPS)
        .await;
    assert_eq!(
        rec["fields"]["Phone"], "555-0104",
        "PII shown to an operator: {rec}"
    );

    let by = api
        .get("/api/v1/records/Account/by/External_Id__c/EXT-07", VIEWER)
        .await;
    assert_eq!(by["id"], ids[7].as_str(), "{by}");
    let (status, body) = api
        .call(
            "GET",
            "/api/v1/records/Account/by/External_Id__c/NOPE",
            Some(VIEWER),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = api
        .call(
            "GET",
            "/api/v1/records/Account/by/Phone/555-0101",
            Some(VIEWER),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "PII lookup by a viewer: {body}"
    );

    // A filtered list, paged by cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/api/v1/records/Account?Industry=Energy&limit=4".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = api.get(&path, VIEWER).await;
        pages += 1;
        for r in page["records"].as_array().unwrap() {
            seen.push(r["fields"]["Name"].as_str().unwrap().to_string());
            assert!(r["sync"]["commit_timestamp"].is_string(), "{r}");
        }
        assert!(page["freshness"]["status"].is_string(), "{page}");
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert!(pages > 1, "more than one page");
    let energy: Vec<String> = seen.into_iter().filter(|n| n.starts_with(PREFIX)).collect();
    assert_eq!(sorted(energy), names_where(|a| a.industry == "Energy"));
    let (status, body) = api
        .call("GET", "/api/v1/records/Account?Bogus=1", Some(VIEWER), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Rate limit: the hammer token runs past its burst; others are unaffected.
    let mut limited = None;
    for _ in 0..1000 {
        let resp = api
            .http
            .get(format!("{}/api/v1/records/Account?limit=1", api.base))
            .bearer_auth(HAMMER)
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(resp);
            break;
        }
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let limited = limited.expect("the hammer token is never limited");
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After: {retry}");
    let body: J = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let (status, _) = api
        .call("GET", "/api/v1/records/Account?limit=1", Some(VIEWER), None)
        .await;
    assert_eq!(status, StatusCode::OK, "another caller is not limited");

    support::stop(child);
}
