//! Several orgs in one deployment (issue 10, item 3), end to end: two emulated orgs over
//! loopback TLS plus one that cannot be reached, one `sfsync run --config deployment.toml`
//! process, a real Postgres warehouse with one schema per org.
//!
//! - Both reachable orgs stream into their own schema; the unreachable one is reported as
//!   failed with its error and retried, and holds nothing up.
//! - One org is throttled (its API allocation exhausted, and CDC gaps that need REST re-reads
//!   to repair): the other org keeps converging meanwhile; once the allocation is back, the
//!   throttled org converges too.
//! - The deployment API: every org's state, metrics labelled `org="…"`, each org's own API
//!   under `/orgs/<name>/`.

mod support;

#[path = "../../sfsync-store/tests/support/pg.rs"]
#[allow(dead_code)]
mod pg;

use support::api::{free_port, Api};
use support::{stop, wait_for, KillOnDrop};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Map, Value as J};
use sfsync_emulator::RunningEmulator;
use sfsync_org::{ApiKind, CallContext, DmlOp};
use sfsync_pipeline::{ObjectMapping, ObjectSpec};
use sfsync_salesforce::SalesforceClient;
use sfsync_store::Warehouse;

const PG_URL_VAR: &str = "SFSYNC_MULTI_ORG_E2E_PG_URL";
const TOKEN_VAR: &str = "SFSYNC_MULTI_ORG_E2E_TOKEN";
const TOKEN: &str = "deployment-viewer-token-0123456789";

struct Org {
    name: &'static str,
    emu: RunningEmulator,
    client: SalesforceClient,
    account: ObjectMapping,
    schema: String,
}

async fn org(dir: &Path, name: &'static str) -> Org {
    let (emu, client) = support::emulator(&dir.join(name)).await;
    let d = client.describe_object("Account").await.unwrap();
    let account = ObjectMapping::build(&d, &ObjectSpec::new("Account")).unwrap();
    Org {
        name,
        emu,
        client,
        account,
        schema: format!("multi_org_{name}_{}", std::process::id()),
    }
}

fn org_config(dir: &Path, name: &str, creds: &Path, ca: &Path, schema: &str) {
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!(
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
batch_max_records = 200
batch_max_wait_ms = 50
backfill_new_objects = false
"#,
            creds = creds.display(),
            ca = ca.display(),
        ),
    )
    .unwrap();
}

async fn store(url: &str, schema: &str) -> Box<dyn Warehouse> {
    let mut cfg: tokio_postgres::Config = url.parse().unwrap();
    cfg.options(format!("-c search_path={schema}"));
    Box::new(
        sfsync_store::PostgresChangeLog::connect_with(&cfg)
            .await
            .unwrap(),
    )
}

fn ctx(o: &Org) -> CallContext {
    CallContext {
        user_id: o.emu.org().admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: Some("someone-else".into()),
    }
}

/// `rounds` transactions of 3 inserts and an update of the first record; returns the ids.
async fn traffic(o: &Org, tag: &str, rounds: usize) -> Vec<String> {
    let mut first: Option<String> = None;
    let mut ids = Vec::new();
    for r in 0..rounds {
        let mut ops: Vec<DmlOp> = (0..3)
            .map(|i| DmlOp::Insert {
                object: "Account".into(),
                fields: Map::from_iter([("Name".to_string(), J::String(format!("{tag}-{r}-{i}")))]),
            })
            .collect();
        if let Some(id) = &first {
            ops.push(DmlOp::Update {
                object: "Account".into(),
                id: id.clone(),
                fields: Map::from_iter([(
                    "Description".to_string(),
                    J::String(format!("{tag} round {r}")),
                )]),
            });
        }
        for res in o.emu.org().execute(&ctx(o), ops, true) {
            let id = res.expect("the DML succeeds").id().to_string();
            if !ids.contains(&id) {
                ids.push(id.clone());
            }
            first.get_or_insert(id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ids
}

async fn converges(o: &Org, w: &dyn Warehouse, within: Duration) {
    wait_for(&format!("org {} converges", o.name), within, || async {
        support::live_diff(&o.client, &o.account, w).await
    })
    .await;
}

async fn org_states(api: &Api) -> Vec<(String, String, String)> {
    let (status, body) = api.call("GET", "/api/v1/orgs", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["orgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["name"].as_str().unwrap_or_default().to_string(),
                o["state"].as_str().unwrap_or_default().to_string(),
                o["last_error"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orgs_one_throttled_one_unreachable_the_others_are_unaffected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let north = org(dir, "north").await;
    let south = org(dir, "south").await;
    let server = tokio::task::spawn_blocking(pg::shared_server)
        .await
        .unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port);
    for o in [&north, &south] {
        org_config(
            dir,
            o.name,
            &o.emu.credentials_path,
            &o.emu.ca_pem_path,
            &o.schema,
        );
    }
    // The third org's Salesforce is not reachable (nothing listens on its instance URL).
    let dead_port = free_port();
    let creds = std::fs::read_to_string(&north.emu.credentials_path).unwrap();
    let mut creds: J = serde_json::from_str(&creds).unwrap();
    for k in ["instance_url", "login_url"] {
        creds[k] = J::String(format!("https://127.0.0.1:{dead_port}"));
    }
    creds["pubsub_address"] = J::String(format!("127.0.0.1:{dead_port}"));
    if let Some(key) = creds["jwt_private_key_file"].as_str() {
        let base = north.emu.credentials_path.parent().unwrap();
        creds["jwt_private_key_file"] = J::String(base.join(key).display().to_string());
    }
    std::fs::write(dir.join("east-creds.json"), creds.to_string()).unwrap();
    org_config(
        dir,
        "east",
        &dir.join("east-creds.json"),
        &north.emu.ca_pem_path,
        &format!("multi_org_east_{}", std::process::id()),
    );
    let port = free_port();
    let deployment = dir.join("deployment.toml");
    std::fs::write(
        &deployment,
        format!(
            r#"[[orgs]]
name = "north"
config = "north.toml"

[[orgs]]
name = "south"
config = "south.toml"

[[orgs]]
name = "east"
config = "east.toml"

[api]
listen = "127.0.0.1:{port}"

[[api.tokens]]
name = "ops"
role = "viewer"
token_env = "{TOKEN_VAR}"
"#
        ),
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_sfsync"))
        .env(PG_URL_VAR, &url)
        .env(TOKEN_VAR, TOKEN)
        .args(["config", "check", "--config"])
        .arg(&deployment)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        out.contains("deployment: 3 org(s)") && out.contains("[org south]"),
        "{out}"
    );

    let child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_sfsync"))
            .env("SFSYNC_LOG", "warn")
            .env(PG_URL_VAR, &url)
            .env(TOKEN_VAR, TOKEN)
            .args(["run", "--progress-secs", "0", "--config"])
            .arg(&deployment)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}"),
    };
    wait_for(
        "north and south run, east failed",
        Duration::from_secs(120),
        || async {
            // Not listening yet at first.
            match api
                .http
                .get(format!("{}/api/v1/orgs", api.base))
                .bearer_auth(TOKEN)
                .send()
                .await
            {
                Ok(r) if r.status() == StatusCode::OK => {}
                Ok(r) => return vec![format!("status {}", r.status())],
                Err(e) => return vec![e.to_string()],
            }
            let states = org_states(&api).await;
            let ok = states
                .iter()
                .any(|(n, s, _)| n == "north" && s == "running")
                && states
                    .iter()
                    .any(|(n, s, _)| n == "south" && s == "running")
                && states
                    .iter()
                    .any(|(n, s, e)| n == "east" && s == "failed" && !e.is_empty());
            if ok {
                vec![]
            } else {
                vec![format!("{states:?}")]
            }
        },
    )
    .await;
    let (_, _, east_error) = org_states(&api)
        .await
        .into_iter()
        .find(|(n, _, _)| n == "east")
        .unwrap();
    assert!(east_error.contains(&dead_port.to_string()), "{east_error}");

    let wn = store(&url, &north.schema).await;
    let ws = store(&url, &south.schema).await;
    let n1 = traffic(&north, "n1", 20).await;
    traffic(&south, "s1", 20).await;
    converges(&north, &*wn, Duration::from_secs(120)).await;
    converges(&south, &*ws, Duration::from_secs(120)).await;
    // Each org's rows are in its own schema only (the two orgs hand out the same record ids,
    // so the names tell them apart).
    let names = |rows: std::collections::HashMap<String, sfsync_store::CurrentRow>| -> Vec<String> {
        rows.into_values()
            .map(|r| format!("{:?}", r.values))
            .collect()
    };
    let north_names = names(wn.load_current("Account", &n1).await.unwrap());
    assert_eq!(north_names.len(), n1.len());
    assert!(
        north_names.iter().all(|n| n.contains("n1-")),
        "{north_names:?}"
    );
    let south_names = names(ws.load_current("Account", &n1).await.unwrap());
    assert!(
        south_names.iter().all(|n| !n.contains("n1-")),
        "{south_names:?}"
    );

    // South is throttled: its API allocation is used up, and its next changes arrive as gaps
    // whose repair needs REST re-reads it cannot get.
    south
        .emu
        .state
        .limits
        .set_config(sfsync_emulator::LimitsConfig {
            daily_api_requests: 1,
            ..Default::default()
        });
    south.emu.state.cdc.set_gap_next(6);
    let s2 = traffic(&south, "s2", 10).await;
    traffic(&north, "n2", 20).await;
    converges(&north, &*wn, Duration::from_secs(120)).await;
    // (South cannot be compared with its org over REST now: the referee would be throttled
    // too. Its gap records are simply not in the warehouse yet.)
    let have = ws.load_current("Account", &s2).await.unwrap();
    assert!(
        have.len() < s2.len(),
        "south has all {} records of its gaps while throttled: the throttle did not hold its \
         repairs",
        s2.len()
    );
    // Metrics: one exposition, every sample labelled with its org.
    let (status, text) = api.call_text("GET", "/metrics", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    for want in [
        "sfsync_org_up{org=\"north\"} 1",
        "sfsync_org_up{org=\"south\"} 1",
        "sfsync_org_up{org=\"east\"} 0",
        "sfsync_events_ingested_total{org=\"north\"}",
        "sfsync_events_ingested_total{org=\"south\"}",
    ] {
        assert!(text.contains(want), "missing {want} in:\n{text}");
    }
    let refused = text
        .lines()
        .find(|l| l.starts_with("sfsync_api_limit_refusals_total{org=\"south\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let deferred_or_refused = refused > 0.0
        || text.lines().any(|l| {
            l.starts_with("sfsync_api_lane_deferred")
                && l.contains("org=\"south\"")
                && !l.ends_with(" 0")
        });
    assert!(
        deferred_or_refused,
        "south's throttling is not visible:\n{text}"
    );
    // Each org's own API under /orgs/<name>/.
    let (status, body) = api
        .call("GET", "/orgs/north/api/v1/status", Some(TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .call("GET", "/orgs/east/api/v1/status", Some(TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // An org's root leads to its own dashboard, which calls the API under the same prefix.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = plain
        .get(format!("{}/orgs/north/", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()["location"], "/orgs/north/ui/");
    let r = plain
        .get(format!("{}/orgs/north/ui/", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (status, _) = api
        .call("GET", "/orgs/nowhere/api/v1/status", Some(TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.call("GET", "/api/v1/orgs", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The allocation is back: south repairs its gaps and converges.
    south.emu.state.limits.reset_usage();
    south
        .emu
        .state
        .limits
        .set_config(sfsync_emulator::LimitsConfig::default());
    converges(&south, &*ws, Duration::from_secs(180)).await;
    converges(&north, &*wn, Duration::from_secs(30)).await;
    stop(child);
}
