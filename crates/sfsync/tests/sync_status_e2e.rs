//! The freshness contract end to end: `sfsync run` (a real child process) streams an org from
//! the emulator into a SQLite or a Postgres warehouse and keeps `sync_status` up to date. Read
//! as a downstream job would — the warehouse's `sync_status` view with a plain database client
//! — and through `GET /api/v1/sync-status`, `/metrics` and `sfsync sync-status`:
//! 1. after streaming, Account is `current`, and so is Contact, which never had a change (an
//!    idle object is current, not lagging);
//! 2. a gap event whose re-read fails (the emulator answers the repair's query with 503) makes
//!    Account `partial` with its open repair named, while Contact stays current; the CLI exits 4;
//! 3. once the re-read succeeds the record is repaired and Account is `current` again;
//! 4. with sfsync stopped, nobody writes the table, and Contact (a 5 s threshold) turns
//!    `delayed` by the database's clock; the CLI exits 3.

mod support;

#[path = "../../sfsync-store/tests/support/pg.rs"]
#[allow(dead_code)]
mod pg;

use support::api::{free_port, Api};
use support::{stop, wait_for, KillOnDrop};

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Map, Value as J};
use sfsync_emulator::faults::{FaultConfig, FaultKind, FaultRule};
use sfsync_emulator::RunningEmulator;
use sfsync_org::{ApiKind, CallContext, DmlOp};
use sfsync_pipeline::{ObjectMapping, ObjectSpec};
use sfsync_salesforce::SalesforceClient;

const VIEWER: &str = "viewer-token-0123456789abcdef";
const WITHIN: Duration = Duration::from_secs(90);

/// The warehouse under test.
enum Db {
    Sqlite(PathBuf),
    Postgres { url: String, schema: String },
}

struct Env {
    emu: RunningEmulator,
    _tmp: tempfile::TempDir,
    client: SalesforceClient,
    account: ObjectMapping,
    db: Db,
    config: PathBuf,
    port: u16,
}

/// The env var the Postgres config reads its URL from.
const PG_URL_VAR: &str = "SFSYNC_FRESHNESS_E2E_PG_URL";

async fn env(db: impl FnOnce(&std::path::Path) -> Db) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (emu, client) = support::emulator(&dir).await;
    let d = client.describe_object("Account").await.unwrap();
    let account = ObjectMapping::build(&d, &ObjectSpec::new("Account")).unwrap();
    std::fs::write(dir.join("viewer.token"), VIEWER).unwrap();
    let db = db(&dir);
    let warehouse = match &db {
        Db::Sqlite(p) => format!("type = \"sqlite\"\npath = \"{}\"", p.display()),
        Db::Postgres { schema, .. } => {
            format!(
                "type = \"postgres\"\nurl = {{ env = \"{PG_URL_VAR}\" }}\nschema = \"{schema}\""
            )
        }
    };
    let port = free_port();
    let config = dir.join("sfsync.toml");
    let text = format!(
        r#"[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"

[[objects]]
name = "Account"

# Never changed in this test: an idle object, current while sfsync is caught up.
[[objects]]
name = "Contact"
sla_secs = 5

[warehouse]
{warehouse}

[pipeline]
batch_max_records = 100
batch_max_wait_ms = 50
backfill_new_objects = false

[freshness]
update_every_secs = 1
delayed_after_secs = 120

[api]
listen = "127.0.0.1:{port}"

[[api.tokens]]
name = "dashboard"
role = "viewer"
token_file = "viewer.token"
"#,
        creds = emu.credentials_path.display(),
        ca = emu.ca_pem_path.display(),
    );
    std::fs::write(&config, text).unwrap();
    Env {
        emu,
        _tmp: tmp,
        client,
        account,
        db,
        config,
        port,
    }
}

fn sfsync(env: &Env) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sfsync"));
    cmd.env("SFSYNC_LOG", "warn");
    if let Db::Postgres { url, .. } = &env.db {
        cmd.env(PG_URL_VAR, url);
    }
    cmd
}

fn spawn(env: &Env) -> KillOnDrop {
    KillOnDrop(
        sfsync(env)
            .args(["run", "--progress-secs", "0", "--config"])
            .arg(&env.config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning sfsync run"),
    )
}

/// `sfsync sync-status --json`: (exit code, the JSON).
fn cli(env: &Env) -> (i32, J) {
    let out = sfsync(env)
        .args(["sync-status", "--json", "--config"])
        .arg(&env.config)
        .output()
        .expect("running sfsync sync-status");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "sfsync sync-status printed no JSON ({e}): {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

fn ctx(env: &Env) -> CallContext {
    CallContext {
        user_id: env.emu.org().admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: Some("someone-else".into()),
    }
}

fn dml(env: &Env, op: DmlOp) -> String {
    env.emu.org().execute(&ctx(env), vec![op], true)[0]
        .as_ref()
        .expect("the DML succeeds")
        .id()
        .to_string()
}

fn fields(pairs: &[(&str, &str)]) -> Map<String, J> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), J::String(v.to_string())))
        .collect()
}

/// A row of the view as a downstream job reads it: (object, status, status_reason,
/// open_repairs).
type ViewRow = (String, String, String, i64);

const VIEW_SQL: &str =
    "SELECT object, status, status_reason, open_repairs FROM sync_status ORDER BY object";

/// The `sync_status` view through a plain client of the warehouse.
async fn view(db: &Db) -> Vec<ViewRow> {
    match db {
        Db::Sqlite(p) => {
            let c = rusqlite::Connection::open(p).unwrap();
            let mut stmt = c.prepare(VIEW_SQL).unwrap();
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap();
            rows.collect::<rusqlite::Result<Vec<_>>>().unwrap()
        }
        Db::Postgres { url, schema } => {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let task = tokio::spawn(conn);
            client
                .batch_execute(&format!("SET search_path = \"{schema}\""))
                .await
                .unwrap();
            // The view may not exist before sfsync's first migration.
            let rows = match client.query(VIEW_SQL, &[]).await {
                Ok(rows) => rows
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                    .collect(),
                Err(_) => Vec::new(),
            };
            drop(client);
            let _ = task.await;
            rows
        }
    }
}

/// Problems with the view's status of `object` (empty: it is `status`, and `reason` is in its
/// reason).
fn expect(rows: &[ViewRow], object: &str, status: &str, reason: &str) -> Vec<String> {
    match rows.iter().find(|r| r.0 == object) {
        None => vec![format!("no sync_status row of {object}: {rows:?}")],
        Some(r) if r.1 == status && r.2.contains(reason) => Vec::new(),
        Some(r) => vec![format!(
            "{object} is {} ({}), waiting for {status} ({reason})",
            r.1, r.2
        )],
    }
}

/// Problems with the API's answer for `object`.
fn expect_api(body: &J, object: &str, status: &str) -> Vec<String> {
    let objects = body["objects"].as_array().cloned().unwrap_or_default();
    match objects.iter().find(|o| o["object"] == object) {
        Some(o) if o["status"] == status => Vec::new(),
        other => vec![format!(
            "the API has {object} as {other:?}, waiting for {status}"
        )],
    }
}

/// Every Account row equals the org's (the repair applied the change the gap left out).
async fn accounts_match(env: &Env) -> Vec<String> {
    let store: Box<dyn sfsync_store::Warehouse> = match &env.db {
        Db::Sqlite(p) => Box::new(sfsync_store::SqliteChangeLog::open(p).await.unwrap()),
        Db::Postgres { url, schema } => {
            let mut cfg: tokio_postgres::Config = url.parse().unwrap();
            cfg.options(format!("-c search_path={schema}"));
            Box::new(
                sfsync_store::PostgresChangeLog::connect_with(&cfg)
                    .await
                    .unwrap(),
            )
        }
    };
    store.ensure_model(&env.account.model).await.unwrap();
    support::live_diff(&env.client, &env.account, &*store).await
}

async fn scenario(env: Env) {
    let child = std::sync::Mutex::new(spawn(&env));
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{}", env.port),
    };
    api.ready().await;

    // 1. Streamed: Account current; Contact, never changed, current as well.
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(dml(
            &env,
            DmlOp::Insert {
                object: "Account".into(),
                fields: fields(&[("Name", &format!("Fresh {i}"))]),
            },
        ));
    }
    wait_for("Accounts streamed and both objects current", WITHIN, || {
        let (env, api, child) = (&env, &api, &child);
        async move {
            let mut p = Vec::new();
            if let Ok(Some(status)) = child.lock().unwrap().0.try_wait() {
                p.push(format!("sfsync run exited with {status}"));
            }
            p.extend(accounts_match(env).await);
            let rows = view(&env.db).await;
            p.extend(expect(&rows, "Account", "current", "caught up as of "));
            p.extend(expect(&rows, "Contact", "current", "(delayed after 5 s)"));
            let body = api.get("/api/v1/sync-status", VIEWER).await;
            p.extend(expect_api(&body, "Account", "current"));
            p.extend(expect_api(&body, "Contact", "current"));
            if p.is_empty() && body["status"] != "current" {
                p.push(format!("overall is not current: {body}"));
            }
            // The row written after the Accounts were applied has their newest commit.
            if p.is_empty() && !body["objects"][0]["last_commit_at"].is_string() {
                p.push(format!("no last_commit_at of Account yet: {body}"));
            }
            p
        }
    })
    .await;
    let body = api.get("/api/v1/sync-status?object=Account", VIEWER).await;
    let account = &body["objects"][0];
    assert_eq!(body["objects"].as_array().unwrap().len(), 1, "{body}");
    assert!(account["last_commit_at"].is_string(), "{body}");
    assert!(account["last_applied_at"].is_string(), "{body}");
    assert!(account["current_as_of"].is_string(), "{body}");
    assert!(account["lag_seconds"].as_f64().unwrap() < 120.0, "{body}");
    assert_eq!(account["delayed_after_secs"], 120, "{body}");
    let (status, err) = api
        .call("GET", "/api/v1/sync-status?object=Lead", Some(VIEWER), None)
        .await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("object Lead is not synced"),
        "{err}"
    );
    let (code, _) = cli(&env);
    assert_eq!(code, 0, "sfsync sync-status with everything current");

    // 2. A gap whose re-read fails: Account partial with its open repair; Contact current.
    env.emu.state.faults.set(FaultConfig {
        rules: vec![FaultRule {
            path_contains: "/query".into(),
            method: None,
            kind: FaultKind::ServerUnavailable,
            rate: 1.0,
            max_count: None,
            fired: 0,
        }],
        ..Default::default()
    });
    env.emu.state.cdc.set_gap_next(1);
    dml(
        &env,
        DmlOp::Update {
            object: "Account".into(),
            id: ids[2].clone(),
            fields: fields(&[("Name", "Fresh 2, repaired")]),
        },
    );
    wait_for("Account partial while its gap is open", WITHIN, || {
        let (env, api) = (&env, &api);
        async move {
            let rows = view(&env.db).await;
            let mut p = expect(&rows, "Account", "partial", "open repair(s)");
            p.extend(expect(&rows, "Contact", "current", ""));
            let body = api.get("/api/v1/sync-status", VIEWER).await;
            p.extend(expect_api(&body, "Account", "partial"));
            if p.is_empty() && body["status"] != "partial" {
                p.push(format!("overall is not partial: {body}"));
            }
            p
        }
    })
    .await;
    let rows = view(&env.db).await;
    let account = rows.iter().find(|r| r.0 == "Account").unwrap();
    assert!(account.3 >= 1, "{account:?}");
    let (code, json) = cli(&env);
    assert_eq!(code, 4, "sfsync sync-status with an object partial: {json}");
    assert_eq!(json["status"], "partial", "{json}");
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .bearer_auth(VIEWER)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("\nsfsync_sync_status{object=\"Account\",status=\"partial\"} 1\n"),
        "{metrics}"
    );

    // 3. The re-read succeeds: the record is repaired and Account is current again.
    env.emu.state.faults.set(FaultConfig::default());
    wait_for("Account repaired and current again", WITHIN, || {
        let (env, api) = (&env, &api);
        async move {
            let mut p = accounts_match(env).await;
            let rows = view(&env.db).await;
            p.extend(expect(&rows, "Account", "current", "caught up as of "));
            let body = api.get("/api/v1/sync-status", VIEWER).await;
            p.extend(expect_api(&body, "Account", "current"));
            p
        }
    })
    .await;

    // 4. sfsync stopped: nobody writes sync_status, and Contact turns delayed by the clock.
    stop(child.into_inner().unwrap());
    wait_for("Contact delayed with sfsync stopped", WITHIN, || async {
        expect(
            &view(&env.db).await,
            "Contact",
            "delayed",
            "s (delayed after 5 s)",
        )
    })
    .await;
    let (code, json) = cli(&env);
    assert_eq!(code, 3, "sfsync sync-status with an object delayed: {json}");
    assert_eq!(json["status"], "delayed", "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_status_on_sqlite_current_partial_current_delayed() {
    let e = env(|dir| Db::Sqlite(dir.join("wh.db"))).await;
    scenario(e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_status_on_postgres_current_partial_current_delayed() {
    let server = tokio::task::spawn_blocking(pg::shared_server)
        .await
        .unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port);
    let schema = format!("freshness_e2e_{}", std::process::id());
    let e = env(|_| Db::Postgres { url, schema }).await;
    scenario(e).await;
    drop(server);
}
