//! Writeback end to end: `sfsync run` as a child process (pipeline + deliverer) against the
//! emulator over loopback TLS, a SQLite warehouse; writes submitted through the store API and
//! the outbox table as other systems would.
//!
//! 1. Duplicate submissions (API and outbox, same idempotency key) → one write, one record in
//!    Salesforce; every applied write is confirmed by its CDC echo (event key recorded) and the
//!    curated row shows the value.
//! 2. A crash between sending and recording (a claim sent to Salesforce, never recorded) → after
//!    the lease the write is delivered again and Salesforce holds exactly one record for its
//!    External Id.
//! 3. Each conflict policy: source_of_truth rejects a non-owner; merge applies the
//!    non-conflicting field and queues the other; manual holds the whole write; last_write_wins
//!    both ways.
//! 4. UNABLE_TO_LOCK_ROW and 503 injected → every write applied, none twice.
//! 5. A budget far smaller than the demand → zero REQUEST_LIMIT_EXCEEDED responses from the
//!    emulator and all writes applied once the window resets.
//! 6. Through the operator API: conflicts listed with both sides and resolved by a person,
//!    the failed write listed as a dead letter, redriven and discarded, every action in the
//!    operator audit chain; the writeback flow's health and counts; the budget governor's view.

#[path = "../../sfsync-store/tests/support/pg.rs"]
#[allow(dead_code)]
mod pg;

mod support;

use support::api::{free_port, Api};
use support::{stop, wait_for, KillOnDrop};

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value as J};
use sfsync_emulator::RunningEmulator;
use sfsync_org::{ApiKind, CallContext, DmlOp};
use sfsync_salesforce::SalesforceClient;
use sfsync_store::{
    ConflictDetail, LedgerWrite, NewWrite, OperatorLog, PostgresChangeLog, SqliteChangeLog,
    SubmitOutcome, Warehouse, WriteLedger, WriteState, WriteTarget,
};

/// The warehouse and ledger as the test reads them.
trait Store: Warehouse + WriteLedger + OperatorLog {}
impl<T: Warehouse + WriteLedger + OperatorLog> Store for T {}

/// A Postgres warehouse: a schema of its own on the shared throwaway server (the child reads
/// the URL from `SFSYNC_E2E_PG_URL`).
struct Pg {
    url: String,
    schema: String,
    _server: Arc<pg::PgServer>,
}

impl Pg {
    fn new(schema: &str) -> Pg {
        let server = pg::shared_server();
        Pg {
            url: format!("postgres://postgres@127.0.0.1:{}/postgres", server.port),
            schema: schema.into(),
            _server: server,
        }
    }

    fn config(&self) -> tokio_postgres::Config {
        let mut cfg: tokio_postgres::Config = self.url.parse().unwrap();
        cfg.options(format!("-c search_path={}", self.schema));
        cfg
    }
}

struct Env {
    pg: Option<Pg>,
    emu: RunningEmulator,
    _dir: tempfile::TempDir,
    db: PathBuf,
    client: SalesforceClient,
    config: PathBuf,
    stats: PathBuf,
    /// The operator API of `sfsync run`.
    api: Api,
}

/// The operator token of the API.
const OPS: &str = "wb-e2e-operator-token-0001";

const WRITEBACK: &str = r#"
[[writeback.objects]]
name = "Account"
owner = "shared"
policy = "merge"
parent_field = "ParentId"
fields = [
  { name = "Name", owner = "case_mgmt", policy = "source_of_truth" },
  { name = "Type", owner = "shared", policy = "last_write_wins" },
  { name = "Description", owner = "shared", policy = "manual" },
]
"#;

/// An emulator and a config for `sfsync run` with `[writeback]` (`extra` goes under
/// `[writeback]`, `budget` under `[salesforce.budget]`).
async fn env(extra: &str, budget: &str) -> Env {
    env_on(None, extra, budget).await
}

async fn env_on(pg: Option<Pg>, extra: &str, budget: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (emu, client) = support::emulator(&dir).await;
    let db = dir.join("wh.db");
    let config = dir.join("sfsync.toml");
    std::fs::write(dir.join("ops.token"), OPS).unwrap();
    let port = free_port();
    let text = format!(
        r#"[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"

[salesforce.budget]
{budget}

[[objects]]
name = "Account"

{warehouse}
[pipeline]
batch_max_records = 500
batch_max_wait_ms = 50
backfill_new_objects = false

[api]
listen = "127.0.0.1:{port}"

[[api.tokens]]
name = "ops"
role = "operator"
token_file = "ops.token"

[writeback]
{extra}
{WRITEBACK}"#,
        creds = emu.credentials_path.display(),
        ca = emu.ca_pem_path.display(),
        warehouse = match &pg {
            None => format!("[warehouse]\ntype = \"sqlite\"\npath = \"{}\"\n", db.display()),
            Some(p) => format!(
                "[warehouse]\ntype = \"postgres\"\nurl = {{ env = \"SFSYNC_E2E_PG_URL\" }}\nschema = \"{}\"\n",
                p.schema
            ),
        },
    );
    std::fs::write(&config, text).unwrap();
    if let Some(p) = &pg {
        let mut admin: tokio_postgres::Config = p.url.parse().unwrap();
        admin.options("");
        let (client, conn) = admin.connect(tokio_postgres::NoTls).await.unwrap();
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}",
                p.schema
            ))
            .await
            .unwrap();
        drop(client);
        let _ = task.await;
    }
    Env {
        pg,
        emu,
        stats: dir.join("stats.json"),
        _dir: tmp,
        db,
        client,
        config,
        api: Api {
            http: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{port}"),
        },
    }
}

fn run(env: &Env) -> KillOnDrop {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sfsync"));
    if let Some(p) = &env.pg {
        cmd.env("SFSYNC_E2E_PG_URL", &p.url);
    }
    KillOnDrop(
        cmd.args(["run", "--progress-secs", "0", "--stats-file"])
            .arg(&env.stats)
            .arg("--config")
            .arg(&env.config)
            .env("SFSYNC_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning sfsync run"),
    )
}

/// The warehouse as the test sees it (with the Account model registered, to read rows).
async fn open(env: &Env) -> Arc<dyn Store> {
    let store: Arc<dyn Store> = match &env.pg {
        None => Arc::new(SqliteChangeLog::open(&env.db).await.unwrap()),
        Some(p) => Arc::new(PostgresChangeLog::connect_with(&p.config()).await.unwrap()),
    };
    let d = env.client.describe_object("Account").await.unwrap();
    let mapping =
        sfsync_pipeline::ObjectMapping::build(&d, &sfsync_pipeline::ObjectSpec::new("Account"))
            .unwrap();
    store.ensure_model(&mapping.model).await.unwrap();
    store
}

fn ctx(env: &Env) -> CallContext {
    CallContext {
        user_id: env.emu.org().admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: Some("someone-else".into()),
    }
}

/// A Salesforce user's change (not ours).
fn sf_update(env: &Env, id: &str, fields: J) {
    let ops = vec![DmlOp::Update {
        object: "Account".into(),
        id: id.into(),
        fields: fields.as_object().unwrap().clone(),
    }];
    for r in env.emu.org().execute(&ctx(env), ops, true) {
        r.expect("update succeeds");
    }
}

fn sf_insert(env: &Env, fields: J) -> String {
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

/// A field of a record as Salesforce holds it.
fn sf_field(env: &Env, id: &str, field: &str) -> J {
    env.emu
        .org()
        .retrieve("Account", id, None, "66.0")
        .unwrap()
        .get(field)
        .cloned()
        .unwrap_or(J::Null)
}

fn ext_ids(env: &Env, value: &str) -> Vec<String> {
    env.emu
        .org()
        .find_by_external_id("Account", "External_Id__c", value)
        .unwrap()
        .iter()
        .map(|i| i.to_string())
        .collect()
}

fn write(system: &str, key: &str, target: WriteTarget, fields: J, seen: Option<i64>) -> NewWrite {
    NewWrite {
        source_system: system.into(),
        idempotency_key: key.into(),
        object: "Account".into(),
        target,
        fields: fields.as_object().unwrap().clone(),
        seen_version_ms: seen,
    }
}

fn by_ext(v: &str) -> WriteTarget {
    WriteTarget::ExternalId {
        field: "External_Id__c".into(),
        value: v.into(),
    }
}

fn by_id(id: &str) -> WriteTarget {
    WriteTarget::RecordId(id.into())
}

fn id_of(o: &SubmitOutcome) -> i64 {
    match o {
        SubmitOutcome::Accepted { id } | SubmitOutcome::Duplicate { id } => *id,
        SubmitOutcome::Rejected { reason } => panic!("rejected: {reason}"),
    }
}

async fn submit(l: &dyn Store, w: NewWrite) -> i64 {
    id_of(&l.submit_writes(&[w]).await.unwrap()[0])
}

async fn get(l: &dyn Store, id: i64) -> LedgerWrite {
    l.write(id).await.unwrap().expect("write exists")
}

/// Waits until every write in `ids` is in `state`.
async fn wait_states(l: &dyn Store, ids: &[i64], state: WriteState, within: Duration) {
    wait_for(&format!("writes {state:?}"), within, || async {
        let mut p = Vec::new();
        for id in ids {
            let w = get(l, *id).await;
            if w.state != state {
                p.push(format!(
                    "write {id} is {:?} (reason {:?}, error {:?})",
                    w.state, w.reason, w.last_error
                ));
            }
        }
        p
    })
    .await;
}

/// Waits until the curated row of `id` has `column` = `value` (as text); returns the row's
/// commit time (ms).
async fn wait_curated(store: &dyn Store, id: &str, column: &str, value: &str) -> i64 {
    let at = std::sync::atomic::AtomicI64::new(0);
    wait_for(
        &format!("curated {id}.{column} = {value}"),
        Duration::from_secs(30),
        || async {
            let rows = store.load_current("Account", &[id.to_string()]).await;
            match rows.ok().and_then(|mut r| r.remove(id)) {
                Some(r) => match r.values.get(column) {
                    Some(sfsync_store::Value::Text(t)) if t == value => {
                        at.store(
                            r.meta.version.commit_timestamp,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        vec![]
                    }
                    other => vec![format!("{column} is {other:?}")],
                },
                None => vec!["no row yet".into()],
            }
        },
    )
    .await;
    at.into_inner()
}

/// Applied writes go on to `confirmed` with the event key of their echo.
async fn assert_confirmed(l: &dyn Store, ids: &[i64]) {
    wait_states(l, ids, WriteState::Confirmed, Duration::from_secs(30)).await;
    for id in ids {
        let w = get(l, *id).await;
        let key = w.echo_event_key.expect("an echo event key");
        assert!(!key.is_empty(), "write {id}");
        let applied = l
            .write_transitions(*id)
            .await
            .unwrap()
            .iter()
            .filter(|t| t.to == WriteState::Applied)
            .count();
        assert_eq!(applied, 1, "write {id} was applied once");
    }
}

fn stats(env: &Env) -> J {
    serde_json::from_str(&std::fs::read_to_string(&env.stats).unwrap_or_default())
        .unwrap_or(J::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_land_once_are_confirmed_and_follow_the_policies() {
    let env = env("linger_ms = 200\nlease_secs = 1", "").await;
    let ledger = open(&env).await;
    // A record Salesforce users own, created before the run.
    let acct = sf_insert(
        &env,
        json!({"Name": "Acme", "Phone": "111", "AccountNumber": "A-1", "Description": "d0"}),
    );

    // Crash between sending and recording: claimed and sent by a deliverer that then died.
    let crash = submit(
        &*ledger,
        write(
            "case_mgmt",
            "crash-1",
            by_ext("X-CRASH"),
            json!({"Name": "Crashed"}),
            None,
        ),
    )
    .await;
    let claimed = ledger.claim_writes("crashed-deliverer", 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|w| w.id).collect::<Vec<_>>(),
        vec![crash]
    );
    let mut rec = serde_json::Map::new();
    rec.insert("External_Id__c".into(), json!("X-CRASH"));
    rec.insert("Name".into(), json!("Crashed"));
    let sent = env
        .client
        .collection_upsert("Account", "External_Id__c", &[rec], false)
        .await
        .unwrap();
    assert!(sent[0].success);
    assert_eq!(ext_ids(&env, "X-CRASH").len(), 1);

    let child = run(&env);
    // The pipeline knows the record before the policies are exercised.
    let created_ms = wait_curated(&*ledger, &acct, "accountnumber", "A-1").await;

    // Duplicates: the same key three times through the API, once more through the outbox.
    let dup = write(
        "case_mgmt",
        "dup-1",
        by_ext("X-DUP"),
        json!({"Name": "Dup Co", "Phone": "555"}),
        None,
    );
    let outcomes = ledger
        .submit_writes(&[dup.clone(), dup.clone(), dup])
        .await
        .unwrap();
    let dup_id = id_of(&outcomes[0]);
    assert!(matches!(outcomes[1], SubmitOutcome::Duplicate { id } if id == dup_id));
    {
        let c = rusqlite::Connection::open(&env.db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute(
            "INSERT INTO outbox (source_system, idempotency_key, object, external_id_field, external_id, fields)
             VALUES ('case_mgmt', 'dup-1', 'Account', 'External_Id__c', 'X-DUP', '{\"Name\":\"Dup Co\",\"Phone\":\"555\"}'),
                    ('case_mgmt', 'outbox-1', 'Account', 'External_Id__c', 'X-OUT', '{\"Name\":\"Outbox Co\"}')",
            [],
        )
        .unwrap();
    }
    // source_of_truth: the owner writes Name; another system may not.
    let owner = submit(
        &*ledger,
        write(
            "case_mgmt",
            "name-1",
            by_id(&acct),
            json!({"Name": "Acme Renamed"}),
            Some(created_ms),
        ),
    )
    .await;
    let intruder = submit(
        &*ledger,
        write(
            "payments",
            "name-2",
            by_id(&acct),
            json!({"Name": "Hijacked"}),
            Some(created_ms),
        ),
    )
    .await;

    // A field Salesforce does not know: a dead letter with Salesforce's error; the rest of
    // its batch is applied.
    let bad = submit(
        &*ledger,
        write(
            "case_mgmt",
            "bad-1",
            by_ext("X-BAD"),
            json!({"Name": "Bad", "Bogus__c": "x"}),
            None,
        ),
    )
    .await;
    wait_states(
        &*ledger,
        &[bad],
        WriteState::Failed,
        Duration::from_secs(30),
    )
    .await;
    let error = get(&*ledger, bad).await.last_error.unwrap();
    assert!(
        error.contains("INVALID_FIELD") && error.contains("Bogus__c"),
        "{error}"
    );
    assert!(ext_ids(&env, "X-BAD").is_empty());

    wait_states(
        &*ledger,
        &[intruder],
        WriteState::Rejected,
        Duration::from_secs(30),
    )
    .await;
    let reason = get(&*ledger, intruder).await.reason.unwrap();
    assert!(reason.contains("owned by system 'case_mgmt'"), "{reason}");
    assert_confirmed(&*ledger, &[crash, dup_id, owner]).await;
    wait_curated(&*ledger, &acct, "name", "Acme Renamed").await;
    assert_eq!(sf_field(&env, &acct, "Name"), json!("Acme Renamed"));
    // Exactly one record per External Id, whatever was sent twice.
    assert_eq!(
        ext_ids(&env, "X-CRASH").len(),
        1,
        "no duplicate create after the crash"
    );
    assert_eq!(
        ext_ids(&env, "X-DUP").len(),
        1,
        "duplicate submissions are one write"
    );
    wait_for("the outbox row lands", Duration::from_secs(30), || async {
        if ext_ids(&env, "X-OUT").len() == 1 {
            vec![]
        } else {
            vec!["X-OUT missing".into()]
        }
    })
    .await;
    let crash_w = get(&*ledger, crash).await;
    assert_eq!(crash_w.attempts, 2, "sent again after the lease");
    assert!(ledger
        .write_transitions(crash)
        .await
        .unwrap()
        .iter()
        .any(|t| t.to == WriteState::Pending
            && t.detail.as_deref().is_some_and(|d| d.contains("lease"))));
    let dup_row = ext_ids(&env, "X-DUP").remove(0);
    wait_curated(&*ledger, &dup_row, "phone", "555").await;
    assert_eq!(
        get(&*ledger, dup_id).await.record_id.as_deref(),
        Some(dup_row.as_str())
    );

    // A Salesforce user changes Phone and Description after the writer's version.
    sf_update(&env, &acct, json!({"Phone": "222", "Description": "d1"}));
    wait_curated(&*ledger, &acct, "phone", "222").await;
    // merge: AccountNumber applies, Phone waits for a person with both sides.
    let merge = submit(
        &*ledger,
        write(
            "crm",
            "merge-1",
            by_id(&acct),
            json!({"Phone": "999", "AccountNumber": "A-2"}),
            Some(created_ms),
        ),
    )
    .await;
    wait_states(
        &*ledger,
        &[merge],
        WriteState::Conflict,
        Duration::from_secs(30),
    )
    .await;
    let detail = ConflictDetail::parse(&get(&*ledger, merge).await.reason.unwrap())
        .expect("a conflict detail");
    assert_eq!(detail.fields.len(), 1, "{detail:?}");
    assert_eq!(detail.fields[0].field, "Phone");
    assert_eq!(detail.fields[0].salesforce, json!("222"));
    assert_eq!(detail.fields[0].writer, json!("999"));
    assert!(detail.held.is_empty());
    wait_curated(&*ledger, &acct, "accountnumber", "A-2").await;
    assert_eq!(
        sf_field(&env, &acct, "Phone"),
        json!("222"),
        "the conflicting field is not written"
    );
    // manual: Description conflicts, so the whole write (with Website) is held; nothing sent.
    let manual = submit(
        &*ledger,
        write(
            "crm",
            "manual-1",
            by_id(&acct),
            json!({"Description": "mine", "Website": "w.example"}),
            Some(created_ms),
        ),
    )
    .await;
    wait_states(
        &*ledger,
        &[manual],
        WriteState::Conflict,
        Duration::from_secs(30),
    )
    .await;
    let detail = ConflictDetail::parse(&get(&*ledger, manual).await.reason.unwrap()).unwrap();
    assert_eq!(detail.fields[0].field, "Description");
    assert_eq!(detail.held, vec!["Website".to_string()]);
    assert_eq!(
        sf_field(&env, &acct, "Website"),
        J::Null,
        "a held write sends nothing"
    );

    api_acts_on_conflicts_and_dead_letters(&env, &*ledger, merge, manual, bad).await;

    // Metrics reach the stats file.
    wait_for("writeback stats", Duration::from_secs(10), || async {
        let s = stats(&env);
        let wb = &s["writeback"];
        let mut p = Vec::new();
        if wb["confirmed"].as_u64().unwrap_or(0) < 3 {
            p.push(format!("confirmed {}", wb["confirmed"]));
        }
        if wb["rejected"].as_u64().unwrap_or(0) < 1 {
            p.push(format!("rejected {}", wb["rejected"]));
        }
        if wb["conflict"].as_u64().unwrap_or(0) < 2 {
            p.push(format!("conflict {}", wb["conflict"]));
        }
        if wb["requeued_abandoned"].as_u64().unwrap_or(0) < 1 {
            p.push("requeued".into());
        }
        if wb["api_calls"].as_u64().unwrap_or(0) == 0 {
            p.push("api calls".into());
        }
        if wb["accepted_to_applied_p99_ms"].is_null() {
            p.push("applied latency".into());
        }
        if wb["accepted_to_confirmed_p50_ms"].is_null() {
            p.push("confirmed latency".into());
        }
        p
    })
    .await;
    stop(child);
}

/// The operator API on the writes the main test left: two conflicts (merge, manual) and a
/// failed write.
async fn api_acts_on_conflicts_and_dead_letters(
    env: &Env,
    ledger: &dyn Store,
    merge: i64,
    manual: i64,
    bad: i64,
) {
    let api = &env.api;
    api.ready().await;
    // Conflicts: both listed, the merge one shows both sides of Phone.
    let list = api.get("/api/v1/conflicts?object=Account", OPS).await;
    let ids: Vec<i64> = list["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![merge, manual], "{list}");
    let one = api.get(&format!("/api/v1/conflicts/{merge}"), OPS).await;
    assert_eq!(one["conflict"][0]["field"], "Phone", "{one}");
    assert_eq!(one["conflict"][0]["salesforce"], "222", "{one}");
    assert_eq!(one["conflict"][0]["writer"], "999", "{one}");
    // Bad resolutions are refused with the reason; nothing changes.
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/v1/conflicts/{merge}/resolve"),
            Some(OPS),
            Some(&json!({"action": "set"})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("values:"),
        "{body}"
    );
    // A person keeps Salesforce's value of the manual conflict: the write is rejected.
    let r = api
        .post(
            &format!("/api/v1/conflicts/{manual}/resolve"),
            OPS,
            &json!({"action": "keep_salesforce", "note": "Salesforce is right"}),
        )
        .await;
    assert_eq!(r["resolved"]["state"], "rejected", "{r}");
    assert_eq!(r["resolved"]["by"], "api:ops", "{r}");
    assert_eq!(get(ledger, manual).await.state, WriteState::Rejected);
    // Resolving it again: 409.
    let (status, _) = api
        .call(
            "POST",
            &format!("/api/v1/conflicts/{manual}/resolve"),
            Some(OPS),
            Some(&json!({"action": "take_writer"})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT);
    // The merge conflict: the person sets Phone; the write goes back to pending and lands.
    let r = api
        .post(
            &format!("/api/v1/conflicts/{merge}/resolve"),
            OPS,
            &json!({"action": "set", "values": {"Phone": "333"}}),
        )
        .await;
    assert_eq!(r["resolved"]["resolution"], "value", "{r}");
    wait_states(
        ledger,
        &[merge],
        WriteState::Confirmed,
        Duration::from_secs(30),
    )
    .await;
    let acct = get(ledger, merge).await.record_id.unwrap();
    assert_eq!(sf_field(env, &acct, "Phone"), json!("333"));

    // Dead letters: the failed write is listed with Salesforce's error.
    let dl = api.get("/api/v1/deadletters?kind=write", OPS).await;
    let item = dl["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == bad)
        .unwrap_or_else(|| panic!("write {bad} is not listed: {dl}"))
        .clone();
    assert_eq!(item["kind"], "write");
    assert!(
        item["error"].as_str().unwrap().contains("INVALID_FIELD"),
        "{item}"
    );
    // Redriven: pending again, sent again, failed again (the field is still unknown).
    let attempts = get(ledger, bad).await.attempts;
    let r = api
        .post(
            &format!("/api/v1/deadletters/write/{bad}/redrive"),
            OPS,
            &json!({}),
        )
        .await;
    assert_eq!(r["done"], true, "{r}");
    wait_for(
        "the redriven write fails again",
        Duration::from_secs(30),
        || async {
            let w = get(ledger, bad).await;
            if w.state == WriteState::Failed && w.attempts > attempts {
                vec![]
            } else {
                vec![format!(
                    "{} after {} attempts",
                    w.state.as_str(),
                    w.attempts
                )]
            }
        },
    )
    .await;
    // Discarded: rejected, no longer a dead letter; a second discard is 409.
    api.post(
        &format!("/api/v1/deadletters/write/{bad}/discard"),
        OPS,
        &json!({"note": "the writer fixes its mapping"}),
    )
    .await;
    assert_eq!(get(ledger, bad).await.state, WriteState::Rejected);
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/v1/deadletters/write/{bad}/discard"),
            Some(OPS),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT, "{body}");
    let (status, _) = api
        .call(
            "POST",
            "/api/v1/deadletters/bogus/1/redrive",
            Some(OPS),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);

    // The writeback flow: counts by state from the ledger, health from them.
    let flows = api.get("/api/v1/flows", OPS).await;
    // One outbound flow per writing system (case_mgmt and crm own fields; shared fields admit
    // any system): together they hold every write, each in its own system's flow.
    let outs: Vec<&J> = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["direction"] == "outbound" && f["object"] == "Account")
        .collect();
    let sum = |state: &str| -> u64 {
        outs.iter()
            .map(|f| f["counts"][state].as_u64().unwrap())
            .sum()
    };
    assert_eq!((sum("failed"), sum("conflict")), (0, 0), "{flows}");
    assert!(sum("rejected") >= 3, "{flows}");
    let total = ledger
        .writes(&sfsync_store::WriteFilter {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .len() as u64;
    let states = [
        "pending",
        "sent",
        "applied",
        "confirmed",
        "conflict",
        "rejected",
        "failed",
    ];
    assert_eq!(states.iter().map(|s| sum(s)).sum::<u64>(), total, "{flows}");
    let case_mgmt = outs
        .iter()
        .find(|f| f["source"] == "system_case_mgmt")
        .unwrap_or_else(|| panic!("no case_mgmt flow: {flows}"));
    assert!(
        case_mgmt["counts"]["confirmed"].as_u64().unwrap() >= 1,
        "{case_mgmt}"
    );
    for f in &outs {
        assert!(
            ["green", "amber"].contains(&f["health"].as_str().unwrap()),
            "{f}"
        );
    }
    let inbound = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["direction"] == "inbound" && f["pattern"] == "CDC stream")
        .unwrap()
        .clone();
    assert!(
        inbound["counts"]["changes_committed"].as_u64().unwrap() > 0,
        "{inbound}"
    );
    assert!(inbound["last_applied_commit_time"].is_string(), "{inbound}");
    // The budget governor counted the writeback calls.
    let budget = api.get("/api/v1/budget", OPS).await;
    let wb_lane = budget["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lane"] == "writeback")
        .unwrap_or_else(|| panic!("no writeback lane: {budget}"))
        .clone();
    assert!(wb_lane["calls_window"].as_u64().unwrap() > 0, "{budget}");
    assert!(budget["forecast"]["text"].is_string(), "{budget}");
    // Every action is in the operator audit chain, by the token's name.
    let actions: Vec<String> = ledger
        .operator_actions(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.action.actor == "ops")
        .map(|a| a.action.action)
        .collect();
    for want in [
        "conflict.resolve",
        "deadletter.redrive",
        "deadletter.discard",
    ] {
        assert!(
            actions.iter().any(|a| a == want),
            "{want} not audited: {actions:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn last_write_wins_both_ways() {
    // A long linger: a write is decided when it is delivered, after the Salesforce change
    // made just after it was accepted has reached the curated model.
    let env = env("linger_ms = 4000", "").await;
    let ledger = open(&env).await;
    let a = sf_insert(&env, json!({"Name": "A", "Type": "Prospect"}));
    let b = sf_insert(&env, json!({"Name": "B", "Type": "Prospect"}));
    let child = run(&env);
    let seen = wait_curated(&*ledger, &a, "name", "A").await;
    wait_curated(&*ledger, &b, "name", "B").await;
    // Salesforce changed A's Type before the write: the write is later and wins.
    sf_update(&env, &a, json!({"Type": "Other"}));
    wait_curated(&*ledger, &a, "type", "Other").await;
    let newer = submit(
        &*ledger,
        write(
            "crm",
            "lww-1",
            by_id(&a),
            json!({"Type": "Customer - Direct"}),
            Some(seen),
        ),
    )
    .await;
    // Salesforce changes B's Type after the write was accepted: Salesforce's value stays.
    let older = submit(
        &*ledger,
        write(
            "crm",
            "lww-2",
            by_id(&b),
            json!({"Type": "Customer - Direct"}),
            Some(seen),
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    sf_update(&env, &b, json!({"Type": "Other"}));
    wait_curated(&*ledger, &b, "type", "Other").await;
    assert_confirmed(&*ledger, &[newer]).await;
    assert_eq!(sf_field(&env, &a, "Type"), json!("Customer - Direct"));
    wait_states(
        &*ledger,
        &[older],
        WriteState::Rejected,
        Duration::from_secs(30),
    )
    .await;
    let reason = get(&*ledger, older).await.reason.unwrap();
    assert!(
        reason.contains("last write wins keeps Salesforce's value"),
        "{reason}"
    );
    assert_eq!(sf_field(&env, &b, "Type"), json!("Other"));
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_errors_and_503s_are_retried_until_applied_once() {
    let env = env("linger_ms = 100\nmax_batch = 40", "").await;
    env.emu.state.faults.set(
        serde_json::from_value(json!({
            "seed": 11,
            "rules": [
                {"path_contains": "/composite/sobjects", "method": "PATCH", "kind": "UNABLE_TO_LOCK_ROW", "rate": 0.5, "max_count": 4},
                {"path_contains": "/composite/sobjects", "method": "PATCH", "kind": "SERVER_UNAVAILABLE", "rate": 0.5, "max_count": 4},
            ]
        }))
        .unwrap(),
    );
    let ledger = open(&env).await;
    let child = run(&env);
    let mut ids = Vec::new();
    for i in 0..120 {
        ids.push(
            submit(
                &*ledger,
                write(
                    "case_mgmt",
                    &format!("f-{i}"),
                    by_ext(&format!("F-{i}")),
                    json!({"Name": format!("Faulty {i}")}),
                    None,
                ),
            )
            .await,
        );
    }
    assert_confirmed(&*ledger, &ids).await;
    let fired: u64 = env
        .emu
        .state
        .faults
        .get()
        .rules
        .iter()
        .map(|r| r.fired)
        .sum();
    assert!(fired >= 2, "faults were injected ({fired})");
    for i in 0..120 {
        let found = ext_ids(&env, &format!("F-{i}"));
        assert_eq!(found.len(), 1, "F-{i}");
        assert_eq!(
            sf_field(&env, &found[0], "Name"),
            json!(format!("Faulty {i}"))
        );
    }
    wait_for("retries counted", Duration::from_secs(5), || async {
        if stats(&env)["writeback"]["retries"].as_u64().unwrap_or(0) > 0 {
            vec![]
        } else {
            vec!["no retries counted".into()]
        }
    })
    .await;
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_far_below_the_demand_completes_without_limit_refusals() {
    // 40 requests per 2 s window, sfsync may use half; writes trickle in small batches.
    let env = env(
        "linger_ms = 50\nmax_batch = 4",
        "share = 0.5\nwindow_secs = 2\nprobe_initial_ms = 50\nprobe_max_ms = 400",
    )
    .await;
    env.emu
        .state
        .limits
        .set_config(sfsync_emulator::config::LimitsConfig {
            daily_api_requests: 40,
            api_window: Duration::from_millis(2_000),
            ..sfsync_emulator::config::LimitsConfig::default()
        });
    let ledger = open(&env).await;
    let child = run(&env);
    let mut ids = Vec::new();
    for i in 0..160 {
        ids.push(
            submit(
                &*ledger,
                write(
                    "case_mgmt",
                    &format!("b-{i}"),
                    by_ext(&format!("B-{i}")),
                    json!({"Name": format!("Budget {i}")}),
                    None,
                ),
            )
            .await,
        );
    }
    wait_states(
        &*ledger,
        &ids,
        WriteState::Confirmed,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        env.emu.state.limits.refused(),
        0,
        "zero REQUEST_LIMIT_EXCEEDED responses"
    );
    // At most 4 writes per call: the demand (≥ 40 calls) exceeded one window's budget (20).
    wait_for(
        "writeback calls counted",
        Duration::from_secs(10),
        || async {
            let calls = stats(&env)["writeback"]["api_calls"].as_u64().unwrap_or(0);
            if calls >= 40 {
                vec![]
            } else {
                vec![format!("{calls} calls in the stats file")]
            }
        },
    )
    .await;
    for i in (0..160).step_by(7) {
        assert_eq!(ext_ids(&env, &format!("B-{i}")).len(), 1);
    }
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_batches_go_through_bulk_ingest_with_nulls() {
    let env = env("linger_ms = 300\nbulk_threshold = 10", "").await;
    let ledger = open(&env).await;
    let child = run(&env);
    let batch = |round: &str, fields: &dyn Fn(usize) -> J, seen: Option<i64>| -> Vec<NewWrite> {
        (0..30)
            .map(|i| {
                write(
                    "case_mgmt",
                    &format!("{round}-{i}"),
                    by_ext(&format!("K-{i}")),
                    fields(i),
                    seen,
                )
            })
            .collect()
    };
    let created: Vec<i64> = ledger
        .submit_writes(&batch(
            "c",
            &|i| json!({"Name": format!("Bulk {i}"), "Phone": "123"}),
            None,
        ))
        .await
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_confirmed(&*ledger, &created).await;
    // Nulls: `#N/A` in the CSV clears the field; an absent column leaves it as it is. The
    // writer has seen the created records (no conflict under merge).
    let seen = Some(chrono::Utc::now().timestamp_millis());
    let nulled: Vec<i64> = ledger
        .submit_writes(&batch("n", &|_| json!({"Phone": null}), seen))
        .await
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    wait_states(
        &*ledger,
        &nulled,
        WriteState::Confirmed,
        Duration::from_secs(30),
    )
    .await;
    for i in 0..30 {
        let ids = ext_ids(&env, &format!("K-{i}"));
        assert_eq!(ids.len(), 1, "K-{i}");
        assert_eq!(sf_field(&env, &ids[0], "Phone"), J::Null, "K-{i}");
        assert_eq!(sf_field(&env, &ids[0], "Name"), json!(format!("Bulk {i}")));
    }
    let jobs = env
        .client
        .bulk()
        .list_jobs(sfsync_salesforce::bulk::JobKind::Ingest)
        .await
        .unwrap();
    assert!(
        jobs.len() >= 2,
        "the batches went through Bulk ingest jobs ({})",
        jobs.len()
    );
    stop(child);
}

/// The crash and duplicate scenarios, with echo confirmation, on a Postgres warehouse.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_crash_recovery_duplicates_and_echoes() {
    let env = env_on(
        Some(Pg::new("wb_e2e")),
        "linger_ms = 200\nlease_secs = 1",
        "",
    )
    .await;
    let ledger = open(&env).await;
    let crash = submit(
        &*ledger,
        write(
            "case_mgmt",
            "pg-crash",
            by_ext("PG-CRASH"),
            json!({"Name": "Crashed on Postgres"}),
            None,
        ),
    )
    .await;
    assert_eq!(ledger.claim_writes("crashed", 10).await.unwrap().len(), 1);
    let mut rec = serde_json::Map::new();
    rec.insert("External_Id__c".into(), json!("PG-CRASH"));
    rec.insert("Name".into(), json!("Crashed on Postgres"));
    env.client
        .collection_upsert("Account", "External_Id__c", &[rec], false)
        .await
        .unwrap();
    let child = run(&env);
    let dup = write(
        "case_mgmt",
        "pg-dup",
        by_ext("PG-DUP"),
        json!({"Name": "Dup on Postgres"}),
        None,
    );
    let out = ledger.submit_writes(&[dup.clone(), dup]).await.unwrap();
    let dup_id = id_of(&out[0]);
    assert!(matches!(out[1], SubmitOutcome::Duplicate { id } if id == dup_id));
    assert_confirmed(&*ledger, &[crash, dup_id]).await;
    assert_eq!(ext_ids(&env, "PG-CRASH").len(), 1, "no duplicate create");
    assert_eq!(ext_ids(&env, "PG-DUP").len(), 1);
    let row = ext_ids(&env, "PG-DUP").remove(0);
    wait_curated(&*ledger, &row, "name", "Dup on Postgres").await;
    assert_eq!(get(&*ledger, crash).await.attempts, 2);
    stop(child);
}
