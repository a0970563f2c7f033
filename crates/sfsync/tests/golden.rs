//! The golden scenario of the exactly-once pipeline: a scripted org history — creates, partial
//! updates, nulling, compound fields, long-text diffs, deletes, undeletes, merged events, gap
//! events and sfsync's own writes — run through `sfsync run` (a real child process) against the
//! emulator over TLS on loopback, first straight through, then with the process SIGKILLed at many
//! points and restarted. Both must end with current-state tables equal to the org (read back over
//! SOQL) and identical SCD2 history, on SQLite and on Postgres.

#[path = "../../sfsync-store/tests/support/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value as J};
use sfsync_emulator::{EmulatorConfig, RunningEmulator};
use sfsync_org::{ApiKind, CallContext, DmlOp};
use sfsync_pipeline::{normalize, HistoryFields, ObjectMapping, ObjectSpec};
use sfsync_salesforce::{AuthFlow, ClientConfig, CredentialsFile, SalesforceClient};
use sfsync_store::{HistoryRow, Keyring, PostgresChangeLog, SqliteChangeLog, Warehouse};

const PII_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn specs() -> Vec<ObjectSpec> {
    let mut account = ObjectSpec::new("Account");
    account.history = HistoryFields::Fields(vec!["Name".into(), "BillingCity".into()]);
    let mut contact = ObjectSpec::new("Contact");
    contact.history = HistoryFields::Fields(vec!["AccountId".into(), "Email".into()]);
    contact.pii_fields = vec!["Email".into(), "Phone".into(), "Birthdate".into()];
    let mut case = ObjectSpec::new("Case");
    case.history = HistoryFields::All;
    vec![account, contact, case]
}

fn ctx(emu: &RunningEmulator, client: &str) -> CallContext {
    CallContext {
        user_id: emu.org().admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: Some(client.into()),
    }
}

fn obj(v: J) -> Map<String, J> {
    v.as_object().unwrap().clone()
}

fn exec(emu: &RunningEmulator, client: &str, ops: Vec<DmlOp>) -> Vec<String> {
    emu.org()
        .execute(&ctx(emu, client), ops, true)
        .into_iter()
        .map(|r| r.expect("scripted DML succeeds").id().to_string())
        .collect()
}

fn update(object: &str, id: &str, fields: J) -> DmlOp {
    DmlOp::Update {
        object: object.into(),
        id: id.into(),
        fields: obj(fields),
    }
}

/// The scripted org history. Deterministic in content (ids come from the org).
fn script(emu: &RunningEmulator) {
    let long = |n: usize, tag: &str| format!("{tag} ").repeat(n);
    let accounts = exec(
        emu,
        "loader",
        (0..80)
            .map(|i| DmlOp::Insert {
                object: "Account".into(),
                fields: obj(json!({
                    "Name": format!("Agency {i}"), "Phone": format!("555-01{i:02}"),
                    "BillingCity": "Springfield", "BillingState": "IL",
                    "AnnualRevenue": 1000.5 * i as f64, "NumberOfEmployees": i,
                    "Description": long(300, &format!("agency{i}")),
                })),
            })
            .collect(),
    );
    let contacts = exec(
        emu,
        "loader",
        (0..100)
            .map(|i| DmlOp::Insert {
                object: "Contact".into(),
                fields: obj(json!({
                    "FirstName": format!("Pat{i}"), "LastName": format!("Citizen{i}"),
                    "Email": format!("pat{i}@example.gov"), "Phone": "555-0000",
                    "Birthdate": "1980-02-29", "MailingCity": "Shelbyville",
                    "AccountId": accounts[i % accounts.len()],
                })),
            })
            .collect(),
    );
    let cases = exec(
        emu,
        "loader",
        (0..50)
            .map(|i| DmlOp::Insert {
                object: "Case".into(),
                fields: obj(json!({
                    "Subject": format!("Benefit claim {i}"), "Status": "New",
                    "Priority": "Medium", "Origin": "Web",
                    "AccountId": accounts[i % accounts.len()],
                    "ContactId": contacts[i % contacts.len()],
                })),
            })
            .collect(),
    );
    // Many small transactions: partial updates (tracked and untracked), compound components,
    // nulling, long-text edits (sent as diffs), own writes.
    for round in 0..6 {
        for (i, a) in accounts.iter().enumerate() {
            let f = match (round + i) % 5 {
                0 => json!({"Name": format!("Agency {i} r{round}")}),
                1 => json!({"Phone": null}),
                2 => {
                    json!({"BillingCity": format!("Capital City {round}"), "BillingPostalCode": "62701"})
                }
                3 => {
                    json!({"Description": format!("{} edit {round}", long(300, &format!("agency{i}")))})
                }
                _ => json!({"NumberOfEmployees": round * 10 + i, "AnnualRevenue": null}),
            };
            let client = if i % 7 == 0 { "sfsync" } else { "loader" };
            exec(emu, client, vec![update("Account", a, f)]);
        }
        for (i, c) in contacts
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == round % 3 && (6..99).contains(i))
        {
            let f = match round % 3 {
                0 => json!({"Email": format!("pat{i}.r{round}@example.gov")}),
                1 => json!({"Email": null, "MailingCity": "Ogdenville"}),
                _ => {
                    json!({"AccountId": accounts[(i + round) % accounts.len()], "Phone": "555-9999"})
                }
            };
            exec(emu, "loader", vec![update("Contact", c, f)]);
        }
        // A mass update in one transaction: identical changes merge into one event.
        let status = ["Working", "Escalated", "Closed"][round % 3];
        exec(
            emu,
            "loader",
            cases
                .iter()
                .take(20)
                .map(|c| update("Case", c, json!({"Status": status})))
                .collect(),
        );
        if round == 2 {
            // Gap events: the next changes are announced as GAP_UPDATE / GAP_DELETE.
            emu.state.cdc.set_gap_next(4);
            for c in cases.iter().skip(30).take(3) {
                exec(
                    emu,
                    "loader",
                    vec![update("Case", c, json!({"Priority": "High"}))],
                );
            }
            exec(
                emu,
                "loader",
                vec![DmlOp::Delete {
                    id: contacts[99].clone(),
                }],
            );
        }
        if round == 3 {
            for c in contacts.iter().take(6) {
                exec(emu, "loader", vec![DmlOp::Delete { id: c.clone() }]);
            }
            for c in contacts.iter().take(3) {
                exec(emu, "loader", vec![DmlOp::Undelete { id: c.clone() }]);
            }
            exec(
                emu,
                "loader",
                vec![DmlOp::Delete {
                    id: cases[49].clone(),
                }],
            );
        }
    }
}

struct Env {
    emu: RunningEmulator,
    _dir: tempfile::TempDir,
    dir: PathBuf,
    client: SalesforceClient,
    mappings: Vec<ObjectMapping>,
}

async fn env() -> Env {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let emu = sfsync_emulator::start(EmulatorConfig::ephemeral(dir.join("org")))
        .await
        .expect("emulator starts");
    let creds = CredentialsFile::load(&emu.credentials_path).unwrap();
    let client = SalesforceClient::new(
        ClientConfig::new(emu.base_url.clone(), Some(emu.ca_pem_path.clone())),
        creds.credentials(AuthFlow::JwtBearer).unwrap(),
    )
    .unwrap();
    let mut mappings = Vec::new();
    for spec in specs() {
        let d = client.describe_object(&spec.name).await.unwrap();
        mappings.push(ObjectMapping::build(&d, &spec).unwrap());
    }
    std::fs::write(dir.join("pii.key"), PII_KEY_HEX).unwrap();
    let e = Env {
        emu,
        _dir: tmp,
        dir,
        client,
        mappings,
    };
    script(&e.emu);
    e
}

#[derive(Clone)]
enum Db {
    Sqlite(PathBuf),
    Postgres { url: String, schema: String },
}

fn write_config(env: &Env, db: &Db, name: &str) -> PathBuf {
    let warehouse = match db {
        Db::Sqlite(p) => format!("type = \"sqlite\"\npath = \"{}\"\n", p.display()),
        Db::Postgres { schema, .. } => {
            format!("type = \"postgres\"\nurl = {{ env = \"SFSYNC_GOLDEN_PG_URL\" }}\nschema = \"{schema}\"\n")
        }
    };
    let text = format!(
        r#"[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"
client_id_header = "sfsync"

[[objects]]
name = "Account"
history = {{ fields = ["Name", "BillingCity"] }}

[[objects]]
name = "Contact"
history = {{ fields = ["AccountId", "Email"] }}
pii_fields = ["Email", "Phone", "Birthdate"]

[[objects]]
name = "Case"
history = {{ fields = "all" }}

[warehouse]
{warehouse}
[pii]
key_file = "{key}"
key_id = "golden-1"

[pipeline]
batch_max_records = 20
batch_max_wait_ms = 50
# The stream alone (backfill hand-off is tested in sync_jobs_e2e).
backfill_new_objects = false
"#,
        creds = env.emu.credentials_path.display(),
        ca = env.emu.ca_pem_path.display(),
        key = env.dir.join("pii.key").display(),
    );
    let path = env.dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The pipeline process, killed if the test fails before it stops it (no orphan outlives a
/// failed run).
struct KillOnDrop(Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn spawn(config: &Path, db: &Db) -> KillOnDrop {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sfsync"));
    cmd.args(["run", "--config"])
        .arg(config)
        .args(["--progress-secs", "0"])
        .env(
            "SFSYNC_LOG",
            std::env::var("SFSYNC_GOLDEN_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Db::Postgres { url, .. } = db {
        cmd.env("SFSYNC_GOLDEN_PG_URL", url);
    }
    KillOnDrop(cmd.spawn().expect("spawning sfsync run"))
}

async fn open(env: &Env, db: &Db) -> Arc<dyn Warehouse> {
    let keyring = Some(Arc::new(
        Keyring::from_hex("golden-1", PII_KEY_HEX).unwrap(),
    ));
    let store: Arc<dyn Warehouse> = match db {
        Db::Sqlite(p) => {
            let s = SqliteChangeLog::open(p).await.unwrap();
            s.set_keyring(keyring);
            Arc::new(s)
        }
        Db::Postgres { url, schema } => {
            let mut cfg: tokio_postgres::Config = url.parse().unwrap();
            cfg.options(format!("-c search_path={schema}"));
            let s = PostgresChangeLog::connect_with(&cfg).await.unwrap();
            s.set_keyring(keyring);
            Arc::new(s)
        }
    };
    for m in &env.mappings {
        store.ensure_model(&m.model).await.unwrap();
    }
    store
}

/// Differences between the org (SOQL) and the curated tables; empty when they agree.
async fn diff_against_org(env: &Env, store: &dyn Warehouse) -> Vec<String> {
    let mut problems = Vec::new();
    for m in &env.mappings {
        let mut fields = m.soql_fields.clone();
        fields.push("SystemModstamp".into());
        fields.push("IsDeleted".into());
        let soql = format!("SELECT {} FROM {}", fields.join(", "), m.object());
        let records = env
            .client
            .query_all_pages(&soql, Default::default())
            .await
            .unwrap();
        let mut expected = BTreeMap::new();
        for r in &records {
            let c = normalize::from_record(m, r).unwrap();
            expected.insert(c.id.clone(), c);
        }
        let rows = store.read_current(m.object()).await.unwrap();
        let mut live = 0;
        for row in &rows {
            if row.deleted {
                if expected.contains_key(&row.id) {
                    problems.push(format!(
                        "{} {} is deleted in the warehouse but live in the org",
                        m.object(),
                        row.id
                    ));
                }
                continue;
            }
            live += 1;
            let Some(exp) = expected.get(&row.id) else {
                problems.push(format!(
                    "{} {} is live in the warehouse but not in the org",
                    m.object(),
                    row.id
                ));
                continue;
            };
            if row.partial {
                problems.push(format!("{} {} is still partial", m.object(), row.id));
            }
            for (c, v) in &exp.values {
                let col = &m.model.columns[*c].name;
                let got = row
                    .values
                    .get(col)
                    .cloned()
                    .unwrap_or(sfsync_store::Value::Null);
                if &got != v {
                    problems.push(format!(
                        "{} {} {col}: warehouse {got:?}, org {v:?}",
                        m.object(),
                        row.id
                    ));
                }
            }
        }
        if live != expected.len() {
            problems.push(format!(
                "{}: {live} live rows, org has {}",
                m.object(),
                expected.len()
            ));
        }
    }
    problems
}

async fn histories(env: &Env, store: &dyn Warehouse) -> BTreeMap<String, Vec<HistoryRow>> {
    let mut out = BTreeMap::new();
    for m in &env.mappings {
        out.insert(
            m.object().to_string(),
            store.read_history(m.object()).await.unwrap(),
        );
    }
    out
}

/// Waits until the warehouse equals the org with nothing pending.
async fn wait_converged(env: &Env, db: &Db, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let store = open(env, db).await;
        let problems = diff_against_org(env, &*store).await;
        let pending = store.pending_repairs(10).await.unwrap().len();
        if problems.is_empty() && pending == 0 {
            return problems;
        }
        if Instant::now() > deadline {
            let mut p = problems;
            p.truncate(20);
            p.push(format!("{pending} repairs pending"));
            return p;
        }
        drop(store);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn sigterm(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(
                status.success(),
                "sfsync run exited with {status} after SIGTERM"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("sfsync run did not stop within 30 s of SIGTERM");
}

async fn applied_offset(env: &Env, db: &Db) -> u64 {
    let store = open(env, db).await;
    store
        .applied_offset(sfsync_pipeline::CURATED_CONSUMER)
        .await
        .unwrap()
        .unwrap_or(0)
}

async fn create_schema(db: &Db) {
    if let Db::Postgres { url, schema } = db {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))
            .await
            .unwrap();
        drop(client);
        let _ = task.await;
    }
}

async fn golden(db_straight: Db, db_killed: Db) {
    let env = env().await;
    create_schema(&db_straight).await;
    create_schema(&db_killed).await;

    // Straight through.
    let cfg = write_config(&env, &db_straight, "straight");
    let mut child = spawn(&cfg, &db_straight);
    let problems = wait_converged(&env, &db_straight, Duration::from_secs(180)).await;
    if !problems.is_empty() {
        let _ = child.kill();
        panic!(
            "straight run differs from the org:\n{}",
            problems.join("\n")
        );
    }
    sigterm(&mut child);
    let straight = open(&env, &db_straight).await;
    let history_straight = histories(&env, &*straight).await;
    let final_offset = straight
        .applied_offset(sfsync_pipeline::CURATED_CONSUMER)
        .await
        .unwrap()
        .unwrap();
    let audit = straight.verify_audit().await.unwrap();
    assert_eq!(audit.first_break, None, "audit chain of the straight run");
    assert!(audit.entries > 0);
    drop(straight);

    // Killed at many points, restarted each time.
    let cfg = write_config(&env, &db_killed, "killed");
    // Each run is SIGKILLed as soon as the apply offset has moved (or after a delay), so the
    // kills land at many different points of the stream.
    let delays_ms = [450u64, 600, 350, 750, 500, 900, 400, 650, 1000, 1500];
    let mut mid_stream_kills = 0;
    let mut last_at = 0;
    for d in delays_ms {
        let mut child = spawn(&cfg, &db_killed);
        let t = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(15)).await;
            let at = applied_offset(&env, &db_killed).await;
            if at > last_at || t.elapsed() > Duration::from_millis(d) {
                break;
            }
        }
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let at = applied_offset(&env, &db_killed).await;
        if at > 0 && at < final_offset {
            mid_stream_kills += 1;
        }
        last_at = at;
    }
    let mut child = spawn(&cfg, &db_killed);
    let problems = wait_converged(&env, &db_killed, Duration::from_secs(180)).await;
    if !problems.is_empty() {
        let _ = child.kill();
        panic!("killed run differs from the org:\n{}", problems.join("\n"));
    }
    sigterm(&mut child);
    assert!(
        mid_stream_kills >= 2,
        "only {mid_stream_kills} kills landed mid-stream; the scenario no longer exercises crashes"
    );
    let killed = open(&env, &db_killed).await;
    let history_killed = histories(&env, &*killed).await;
    for (object, rows) in &history_straight {
        let other = &history_killed[object];
        assert_eq!(
            rows.len(),
            other.len(),
            "{object}: history versions differ in number"
        );
        for (a, b) in rows.iter().zip(other) {
            assert_eq!(a, b, "{object}: history differs");
        }
        // SCD2 invariants: one current version per record, no overlapping windows.
        let mut by_id: BTreeMap<&str, Vec<&HistoryRow>> = BTreeMap::new();
        for r in rows {
            by_id.entry(&r.id).or_default().push(r);
        }
        for (id, versions) in by_id {
            assert!(
                versions.iter().filter(|v| v.is_current).count() <= 1,
                "{object} {id}: several current versions"
            );
            for w in versions.windows(2) {
                let end = w[0].valid_to_ms.expect("a superseded version is closed");
                assert!(
                    end <= w[1].valid_from_ms,
                    "{object} {id}: overlapping versions"
                );
            }
        }
    }
    assert!(
        history_straight["Account"].len() > 40,
        "Account history has versions beyond the creates"
    );
    let audit = killed.verify_audit().await.unwrap();
    assert_eq!(audit.first_break, None, "audit chain of the killed run");
    // Gap repairs, own writes and deletes went through.
    let repairs = killed.pending_repairs(10).await.unwrap();
    assert!(repairs.is_empty());
    env.emu.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_sqlite_straight_and_killed_agree_with_the_org() {
    let tmp = tempfile::tempdir().unwrap();
    golden(
        Db::Sqlite(tmp.path().join("straight.db")),
        Db::Sqlite(tmp.path().join("killed.db")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_postgres_straight_and_killed_agree_with_the_org() {
    let server = pg::shared_server();
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port);
    golden(
        Db::Postgres {
            url: url.clone(),
            schema: "golden_straight".into(),
        },
        Db::Postgres {
            url,
            schema: "golden_killed".into(),
        },
    )
    .await;
}

/// Dead letters of `stage` as (schema_id, error, payload length), oldest first.
async fn dead_letters(db: &Db, stage: &str) -> Vec<(String, String, usize)> {
    match db {
        Db::Sqlite(p) => {
            let c = rusqlite::Connection::open(p).unwrap();
            let mut st = c
                .prepare(
                    "SELECT schema_id, error, length(payload) FROM dead_letters
                     WHERE stage = ?1 ORDER BY id",
                )
                .unwrap();
            st.query_map([stage], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as usize))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
        }
        Db::Postgres { url, schema } => {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let task = tokio::spawn(conn);
            let rows = client
                .query(
                    &format!(
                        "SELECT schema_id, error, length(payload) FROM {schema}.dead_letters
                         WHERE stage = $1 ORDER BY id"
                    ),
                    &[&stage],
                )
                .await
                .unwrap();
            drop(client);
            let _ = task.await;
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get::<_, i32>(2) as usize))
                .collect()
        }
    }
}

/// Bad payloads and schema drift while `sfsync run` streams: undecodable events (garbage bytes,
/// an empty payload, an unknown writer schema) become dead letters with their cause and the
/// payload kept, the stream goes on past them; a field added to Case in Salesforce (a new
/// schema id) becomes a new curated column whose values arrive — and the warehouse still equals
/// the org, with nothing lost.
async fn bad_payloads_and_drift(db: Db) {
    let mut env = env().await;
    create_schema(&db).await;
    let cfg = write_config(&env, &db, "faults");
    let mut child = spawn(&cfg, &db);
    let problems = wait_converged(&env, &db, Duration::from_secs(180)).await;
    assert!(problems.is_empty(), "baseline: {}", problems.join("\n"));

    let schema = env.emu.org().schema();
    let bus = &env.emu.state.cdc;
    let cases: Vec<String> = env
        .client
        .query_all_pages(
            "SELECT Id FROM Case ORDER BY Id LIMIT 5",
            Default::default(),
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r["Id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(cases.len(), 5);
    // Good, bad, good, bad, bad, good.
    exec(
        &env.emu,
        "caseworker",
        vec![update(
            "Case",
            &cases[0],
            json!({"Subject": "before the garbage"}),
        )],
    );
    assert!(bus
        .inject_change_event(&schema, "Case", None, vec![0xde, 0xad, 0xbe, 0xef].into())
        .is_some());
    exec(
        &env.emu,
        "caseworker",
        vec![update(
            "Case",
            &cases[1],
            json!({"Subject": "between bad events"}),
        )],
    );
    assert!(bus
        .inject_change_event(&schema, "Case", None, Vec::new().into())
        .is_some());
    assert!(bus
        .inject_change_event(
            &schema,
            "Account",
            Some("NoSuchSchemaIdAnywhere0"),
            vec![1, 2, 3].into()
        )
        .is_some());
    exec(
        &env.emu,
        "caseworker",
        vec![update(
            "Case",
            &cases[2],
            json!({"Subject": "after the bad events"}),
        )],
    );

    // Schema drift: a new field on Case, then changes that set it.
    let field: sfsync_org::FieldDef = serde_json::from_value(json!({
        "name": "Priority_Score__c", "label": "Priority Score", "type": "double",
        "precision": 18, "scale": 2
    }))
    .unwrap();
    env.emu.org().add_field("Case", field).unwrap();
    exec(
        &env.emu,
        "caseworker",
        vec![
            update("Case", &cases[3], json!({"Priority_Score__c": 7.5})),
            update(
                "Case",
                &cases[4],
                json!({"Priority_Score__c": 2.25, "Subject": "drifted"}),
            ),
        ],
    );
    // The expected model now has the new column.
    for m in env.mappings.iter_mut() {
        if m.object() == "Case" {
            let spec = specs().into_iter().find(|s| s.name == "Case").unwrap();
            let d = env.client.describe_object("Case").await.unwrap();
            *m = ObjectMapping::build(&d, &spec).unwrap();
        }
    }
    let problems = wait_converged(&env, &db, Duration::from_secs(120)).await;
    if !problems.is_empty() {
        let _ = child.kill();
        panic!("after bad events and drift: {}", problems.join("\n"));
    }
    sigterm(&mut child);

    let store = open(&env, &db).await;
    let rows = store.read_current("Case").await.unwrap();
    let score = |id: &str| {
        rows.iter()
            .find(|r| r.id == id)
            .and_then(|r| r.values.get("priority_score__c").cloned())
    };
    assert_eq!(score(&cases[3]), Some(sfsync_store::Value::Real(7.5)));
    assert_eq!(score(&cases[4]), Some(sfsync_store::Value::Real(2.25)));
    let dead = dead_letters(&db, "decode").await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    for (schema_id, error, payload_len) in &dead {
        assert!(!error.is_empty(), "a dead letter names its cause");
        assert!(*payload_len > 0, "the payload is kept ({schema_id})");
    }
    assert!(dead.iter().any(|(s, _, _)| s == "NoSuchSchemaIdAnywhere0"));
    env.emu.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bad_payloads_become_dead_letters_and_schema_drift_adds_columns() {
    let tmp = tempfile::tempdir().unwrap();
    bad_payloads_and_drift(Db::Sqlite(tmp.path().join("faults.db"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bad_payloads_become_dead_letters_and_schema_drift_adds_columns() {
    let server = pg::shared_server();
    bad_payloads_and_drift(Db::Postgres {
        url: format!("postgres://postgres@127.0.0.1:{}/postgres", server.port),
        schema: "golden_faults".into(),
    })
    .await;
}
