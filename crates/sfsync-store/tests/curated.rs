//! One behavioural suite for the warehouse side of the store (curated tables, history, audit,
//! bookkeeping, PII sealing, key rotation, the apply lock), run against SQLite (temp file) and
//! Postgres (`SFSYNC_TEST_POSTGRES_URL`, or a throwaway server started by the tests).

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use sfsync_core::{ChangeType, ErrorClass, EventKey, RecordVersion, ReplayId};
use sfsync_store::pii;
use sfsync_store::*;

const CONTACT: &str = "Contact";

/// Opens a store on the same underlying database each time, and reads it behind the store's back.
#[async_trait]
trait Backend: Send + Sync {
    async fn open(&self, keyring: Option<Arc<Keyring>>) -> Box<dyn Warehouse>;
    /// Runs statements directly on the database.
    async fn exec(&self, sql: &str) {
        self.try_exec(sql).await.unwrap()
    }
    async fn try_exec(&self, sql: &str) -> Result<(), String>;
    /// A single text column of every row of `sql`.
    async fn texts(&self, sql: &str) -> Vec<Option<String>>;
    /// A single blob/bytea column of every row of `sql`.
    async fn blobs(&self, sql: &str) -> Vec<Vec<u8>>;
    /// Column names of `table`, in table order.
    async fn columns(&self, table: &str) -> Vec<String>;
}

struct SqliteBackend {
    dir: tempfile::TempDir,
}

impl SqliteBackend {
    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("sfsync.db")
    }

    /// A connection on the warehouse file that also sees the change-log file (when the store
    /// has one; one upgraded from the single-file layout does not): its raw log and
    /// checkpoints, and the dead letters of both files, under their usual names.
    fn reading(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(self.path()).unwrap();
        let log = sfsync_store::sqlite::change_log_path(&self.path());
        if !log.exists() {
            return c;
        }
        c.execute_batch(&format!(
            "ATTACH '{}' AS changes;
             CREATE TEMP VIEW raw_changes AS SELECT * FROM changes.raw_changes;
             CREATE TEMP VIEW checkpoints AS SELECT * FROM changes.checkpoints;
             CREATE TEMP VIEW dead_letters AS
                 SELECT * FROM main.dead_letters UNION ALL SELECT * FROM changes.dead_letters;",
            log.display()
        ))
        .unwrap();
        c
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn open(&self, keyring: Option<Arc<Keyring>>) -> Box<dyn Warehouse> {
        let s = SqliteChangeLog::open(self.path())
            .await
            .expect("open SQLite store");
        s.set_keyring(keyring);
        Box::new(s)
    }
    async fn try_exec(&self, sql: &str) -> Result<(), String> {
        let c = rusqlite::Connection::open(self.path()).unwrap();
        c.execute_batch(sql).map_err(|e| e.to_string())
    }
    async fn texts(&self, sql: &str) -> Vec<Option<String>> {
        let c = self.reading();
        let mut st = c.prepare(sql).unwrap();
        let rows = st.query_map([], |r| r.get::<_, Option<String>>(0)).unwrap();
        rows.map(|r| r.unwrap()).collect()
    }
    async fn blobs(&self, sql: &str) -> Vec<Vec<u8>> {
        let c = self.reading();
        let mut st = c.prepare(sql).unwrap();
        let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap();
        rows.map(|r| r.unwrap()).collect()
    }
    async fn columns(&self, table: &str) -> Vec<String> {
        self.texts(&format!(
            "SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
        ))
        .await
        .into_iter()
        .map(Option::unwrap)
        .collect()
    }
}

fn sqlite_backend() -> SqliteBackend {
    SqliteBackend {
        dir: tempfile::tempdir().expect("temp dir"),
    }
}

struct PostgresBackend {
    config: tokio_postgres::Config,
    _server: Option<Arc<support::pg::PgServer>>,
}

impl PostgresBackend {
    async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = self.config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    async fn open(&self, keyring: Option<Arc<Keyring>>) -> Box<dyn Warehouse> {
        let s = PostgresChangeLog::connect_with(&self.config)
            .await
            .expect("connect to Postgres store");
        s.set_keyring(keyring);
        Box::new(s)
    }
    async fn try_exec(&self, sql: &str) -> Result<(), String> {
        self.client()
            .await
            .batch_execute(sql)
            .await
            .map_err(|e| format!("{e:?}"))
    }
    async fn texts(&self, sql: &str) -> Vec<Option<String>> {
        let rows = self.client().await.query(sql, &[]).await.unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }
    async fn blobs(&self, sql: &str) -> Vec<Vec<u8>> {
        let rows = self.client().await.query(sql, &[]).await.unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }
    async fn columns(&self, table: &str) -> Vec<String> {
        self.texts(&format!(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = '{table}'
             ORDER BY ordinal_position"
        ))
        .await
        .into_iter()
        .map(Option::unwrap)
        .collect()
    }
}

async fn postgres_backend() -> PostgresBackend {
    let (config, server) = support::pg::fresh_schema().await;
    PostgresBackend {
        config,
        _server: server,
    }
}

// ---- fixtures ----

fn key(id: &str, byte: u8) -> Arc<Keyring> {
    Arc::new(Keyring::new(id, [byte; 32]))
}

fn column(name: &str, ty: ColumnType, pii: bool) -> ColumnDef {
    ColumnDef {
        name: name.into(),
        field: name.to_uppercase(),
        ty,
        pii,
    }
}

fn contact_model() -> ObjectModel {
    ObjectModel {
        object: CONTACT.into(),
        table: "sf_contact".into(),
        columns: vec![
            column("id", ColumnType::Text, false),
            column("name", ColumnType::Text, false),
            column("email", ColumnType::Text, true),
            column("score", ColumnType::Integer, true),
            column("amount", ColumnType::Real, false),
            column("active", ColumnType::Boolean, false),
            column("birthdate", ColumnType::Date, true),
            column("last_seen", ColumnType::Timestamp, false),
            column("visits", ColumnType::Integer, false),
            column("since", ColumnType::Date, false),
        ],
        history: Some(HistorySpec {
            table: "sf_contact_history".into(),
            columns: vec!["name".into(), "email".into()],
        }),
    }
}

fn plain_model() -> ObjectModel {
    ObjectModel {
        object: "Account".into(),
        table: "sf_account".into(),
        columns: vec![
            column("id", ColumnType::Text, false),
            column("name", ColumnType::Text, false),
        ],
        history: None,
    }
}

fn meta(ts: i64) -> SyncMeta {
    SyncMeta {
        version: RecordVersion {
            commit_timestamp: ts,
            commit_number: 7,
            sequence_number: 2,
        },
        change_type: "UPDATE".into(),
        source: ChangeSource::Cdc,
        transaction_key: format!("tx-{ts}"),
        replay_id: Some(ReplayId::from_bytes(vec![0, 0xff, 3])),
        run_id: "run-1".into(),
        applied_at_ms: ts + 5,
        origin_client: Some("sfsync".into()),
    }
}

const T0: i64 = 1_795_253_400_000; // 2026-11-21T09:30:00.000Z

fn contact_values(i: usize) -> BTreeMap<String, Value> {
    let mut v = BTreeMap::new();
    v.insert("name".into(), Value::Text(format!("Ada {i}")));
    v.insert("email".into(), Value::Text(format!("ada{i}@example.com")));
    v.insert("score".into(), Value::Int(1_000_000 + i as i64));
    v.insert("amount".into(), Value::Real(12.5 + i as f64));
    v.insert("active".into(), Value::Bool(i.is_multiple_of(2)));
    v.insert("birthdate".into(), Value::Date(-3_650 + i as i32));
    v.insert("last_seen".into(), Value::Timestamp(T0 + 123 + i as i64));
    v.insert("visits".into(), Value::Int(-(i as i64)));
    v.insert("since".into(), Value::Date(20_000 + i as i32));
    v
}

fn row(id: &str, values: BTreeMap<String, Value>, ts: i64) -> CurrentRow {
    CurrentRow {
        id: id.into(),
        values,
        meta: meta(ts),
        deleted: false,
        base_version: RecordVersion {
            commit_timestamp: ts - 1,
            commit_number: 1,
            sequence_number: 0,
        },
        field_versions: Some("{\"email\":\"1:2:3\"}".into()),
        history_version: Some(1),
        partial: false,
    }
}

fn audit(id: &str, i: usize) -> AuditEntry {
    AuditEntry {
        object: CONTACT.into(),
        record_id: id.into(),
        change_type: "UPDATE".into(),
        event_key: format!("tx{i}/1/{id}"),
        commit_timestamp_ms: T0 + i as i64,
        commit_user: "005xx".into(),
        change_origin: "com/salesforce/api/rest/60.0".into(),
        source: ChangeSource::Cdc,
        fields: vec!["Name".into(), "Email".into()],
        outcome: "applied".into(),
        replay_id: Some(ReplayId::from_bytes(vec![i as u8])),
        run_id: "run-1".into(),
        applied_at_ms: T0 + 10,
    }
}

fn raw_change(key: &str, entity: &str, payload: &[u8]) -> RawChange {
    RawChange {
        event_key: EventKey::new(key, 1, "003000000000001AAA"),
        replay_id: ReplayId::from_bytes(vec![1, 2, 3]),
        schema_id: "schema-1".into(),
        entity: entity.into(),
        change_type: ChangeType::Update,
        version: RecordVersion {
            commit_timestamp: T0,
            commit_number: 1,
            sequence_number: 1,
        },
        payload: payload.to_vec().into(),
    }
}

fn dead_letter(channel: &str, payload: &[u8]) -> DeadLetter {
    DeadLetter {
        channel: channel.into(),
        replay_id: Some(ReplayId::from_bytes(vec![9, 9])),
        schema_id: "schema-x".into(),
        stage: "decode".into(),
        error: "decode failed: bad union index".into(),
        payload: payload.to_vec(),
        object: Some(CONTACT.into()),
    }
}

async fn ready(b: &dyn Backend, keyring: Option<Arc<Keyring>>) -> Box<dyn Warehouse> {
    let w = b.open(keyring).await;
    w.ensure_model(&contact_model()).await.unwrap();
    w
}

// ---- cases ----

async fn ensure_model_creates_adds_and_reports_retyped(b: &dyn Backend) {
    // PII without a keyring is refused up front.
    let w = b.open(None).await;
    let err = w.ensure_model(&contact_model()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::User);
    assert!(err.to_string().contains("no encryption keyring"), "{err}");
    assert!(err.to_string().contains("email"), "{err}");
    // A model without PII needs none.
    let change = w.ensure_model(&plain_model()).await.unwrap();
    assert!(change.created);
    // Another object cannot take its table.
    let mut thief = plain_model();
    thief.object = "Lead".into();
    let err = w.ensure_model(&thief).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("already belongs to object 'Account'"),
        "{err}"
    );

    let w = b.open(Some(key("k1", 1))).await;
    let change = w.ensure_model(&contact_model()).await.unwrap();
    assert!(change.created);
    assert!(change.added_columns.is_empty() && change.retyped_columns.is_empty());
    assert_eq!(
        w.ensure_model(&contact_model()).await.unwrap(),
        ModelChange::default()
    );

    let mut more = contact_model();
    more.columns.push(column("phone", ColumnType::Text, true));
    more.columns.push(column("rating", ColumnType::Real, false));
    more.history.as_mut().unwrap().columns.push("phone".into());
    let change = w.ensure_model(&more).await.unwrap();
    assert!(!change.created);
    assert_eq!(change.added_columns, ["phone", "rating"]);
    assert!(change.retyped_columns.is_empty());

    let mut retyped = more.clone();
    retyped.columns[8].ty = ColumnType::Text; // visits: Integer -> Text
    let change = w.ensure_model(&retyped).await.unwrap();
    assert_eq!(change.retyped_columns, ["visits"]);
    assert!(change.added_columns.is_empty());
    // Back to the model that matches the tables.
    assert_eq!(w.ensure_model(&more).await.unwrap(), ModelChange::default());

    // The new columns are usable, also after a reopen (models come back from the database).
    let mut values = contact_values(1);
    values.insert("phone".into(), Value::Text("+44 20 7946 0000".into()));
    values.insert("rating".into(), Value::Real(4.5));
    w.commit_curated(
        "apply",
        None,
        &CuratedBatch {
            rows: vec![(CONTACT.into(), row("003A", values.clone(), T0))],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    drop(w);
    let w = b.open(Some(key("k1", 1))).await;
    let got = w.read_current(CONTACT).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].values, values);

    // A value for a column the model does not have is refused, naming it.
    let mut bad = contact_values(2);
    bad.insert("nope".into(), Value::Int(1));
    let err = w
        .commit_curated(
            "apply",
            None,
            &CuratedBatch {
                rows: vec![(CONTACT.into(), row("003B", bad, T0))],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.chain().contains("'nope'"), "{}", err.chain());
    assert!(err.chain().contains("003B"), "{}", err.chain());
    // So is an unknown object.
    assert!(w.read_current("Nope").await.is_err());
}

async fn rows_round_trip_every_type_with_pii_sealed(b: &dyn Backend) {
    let w = ready(b, Some(key("k1", 1))).await;
    let mut rows: Vec<CurrentRow> = (0..5)
        .map(|i| row(&format!("003{i}"), contact_values(i), T0 + i as i64))
        .collect();
    // Absent and NULL values, a deleted snapshot row with no replay id or origin.
    rows[3].values.remove("email");
    rows[3].values.remove("birthdate");
    rows[3].values.insert("amount".into(), Value::Null);
    rows[3].deleted = true;
    rows[3].partial = true;
    rows[3].meta.source = ChangeSource::Snapshot;
    rows[3].meta.replay_id = None;
    rows[3].meta.origin_client = None;
    rows[3].field_versions = None;
    rows[3].history_version = None;
    rows[4].values.insert("amount".into(), Value::Int(3)); // an integer into a real column
    rows[4]
        .values
        .insert("last_seen".into(), Value::Timestamp(-1));
    let batch = CuratedBatch {
        rows: rows
            .iter()
            .map(|r| (CONTACT.to_string(), r.clone()))
            .collect(),
        ..Default::default()
    };
    w.commit_curated("apply", Some(3), &batch).await.unwrap();
    assert_eq!(w.applied_offset("apply").await.unwrap(), Some(3));

    // What reads back: NULLs are absent, integers in a real column are reals.
    let mut expected = rows.clone();
    expected[3].values.remove("amount");
    expected[4].values.insert("amount".into(), Value::Real(3.0));
    let got = w.read_current(CONTACT).await.unwrap();
    assert_eq!(got, expected);
    let ids = vec!["0034".to_string(), "0031".into(), "missing".into()];
    let loaded = w.load_current(CONTACT, &ids).await.unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded["0031"], expected[1]);
    assert_eq!(loaded["0034"], expected[4]);
    assert!(w.load_current(CONTACT, &[]).await.unwrap().is_empty());
    // Lists of other lengths (the SQLite backend pads them to a few statement shapes) and of
    // more ids than one statement takes.
    let mut many: Vec<String> = expected.iter().map(|r| r.id.clone()).collect();
    many.push("missing".into());
    let loaded = w.load_current(CONTACT, &many).await.unwrap();
    assert_eq!(loaded.len(), expected.len());
    for r in &expected {
        assert_eq!(loaded[&r.id], *r);
    }
    many.extend((0..1_200).map(|i| format!("absent-{i}")));
    many.push(expected[0].id.clone());
    let loaded = w.load_current(CONTACT, &many).await.unwrap();
    assert_eq!(loaded.len(), expected.len());

    // Upsert replaces the row.
    let mut changed = expected[1].clone();
    changed
        .values
        .insert("email".into(), Value::Text("new@example.com".into()));
    changed.meta = meta(T0 + 100);
    w.commit_curated(
        "apply",
        Some(4),
        &CuratedBatch {
            rows: vec![(CONTACT.into(), changed.clone())],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let loaded = w.load_current(CONTACT, &["0031".into()]).await.unwrap();
    assert_eq!(loaded["0031"], changed);

    // At rest: PII sealed, the rest readable.
    let emails = b
        .texts("SELECT \"email\" FROM \"sf_contact\" ORDER BY \"id\"")
        .await;
    assert_eq!(emails.len(), 5);
    for (i, e) in emails.iter().enumerate() {
        if i == 3 {
            assert_eq!(e, &None);
            continue;
        }
        let e = e.as_deref().unwrap();
        assert!(e.starts_with("enc:v1:k1:"), "{e}");
        assert!(!e.contains("example.com"), "{e}");
    }
    let scores = b.texts("SELECT \"score\" FROM \"sf_contact\"").await;
    assert!(scores
        .iter()
        .all(|s| s.as_deref().unwrap().starts_with("enc:v1:")));
    let names = b
        .texts("SELECT \"name\" FROM \"sf_contact\" ORDER BY \"id\"")
        .await;
    assert_eq!(names[0].as_deref(), Some("Ada 0"));
    let seen = b
        .texts(
            "SELECT CAST(\"_sf_base_version\" AS TEXT) FROM \"sf_contact\" WHERE \"id\" = '0030'",
        )
        .await;
    assert_eq!(seen[0].as_deref(), Some(&*format!("{}:1:0", T0 - 1)));

    // Without the keyring, PII cannot be read, and the error says why.
    drop(w);
    let w = b.open(None).await;
    let err = w.read_current(CONTACT).await.unwrap_err();
    assert!(err.to_string().contains("keyring"), "{err}");
    // With a wrong key, authentication fails and names the key id.
    drop(w);
    let w = b.open(Some(key("k2", 2))).await;
    let err = w.read_current(CONTACT).await.unwrap_err();
    assert!(err.to_string().contains("'k1'"), "{err}");
}

async fn history_open_close_touch_and_one_current(b: &dyn Backend) {
    let w = ready(b, Some(key("k1", 1))).await;
    let v1: BTreeMap<String, Value> = [
        ("name".to_string(), Value::Text("Ada".into())),
        ("email".to_string(), Value::Text("ada@example.com".into())),
    ]
    .into();
    let open = |version: i64, from: i64, values: BTreeMap<String, Value>| HistoryWrite::Open {
        object: CONTACT.into(),
        id: "003A".into(),
        version,
        valid_from_ms: from,
        values,
        meta: meta(from),
    };
    w.commit_curated(
        "apply",
        Some(1),
        &CuratedBatch {
            history: vec![open(1, T0, v1.clone())],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut v2 = v1.clone();
    v2.insert("email".into(), Value::Text("ada@lovelace.org".into()));
    w.commit_curated(
        "apply",
        Some(2),
        &CuratedBatch {
            history: vec![
                HistoryWrite::Close {
                    object: CONTACT.into(),
                    id: "003A".into(),
                    version: 1,
                    valid_to_ms: T0 + 1_000,
                    end_change_type: "UPDATE".into(),
                },
                open(2, T0 + 1_000, v2.clone()),
                HistoryWrite::Touch {
                    object: CONTACT.into(),
                    id: "003A".into(),
                    version: 2,
                    meta: meta(T0 + 2_000),
                },
            ],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let h = w.read_history(CONTACT).await.unwrap();
    assert_eq!(
        h,
        vec![
            HistoryRow {
                id: "003A".into(),
                version: 1,
                valid_from_ms: T0,
                valid_to_ms: Some(T0 + 1_000),
                is_current: false,
                change_type: "UPDATE".into(),
                end_change_type: Some("UPDATE".into()),
                transaction_key: format!("tx-{T0}"),
                values: v1,
            },
            HistoryRow {
                id: "003A".into(),
                version: 2,
                valid_from_ms: T0 + 1_000,
                valid_to_ms: None,
                is_current: true,
                change_type: "UPDATE".into(),
                end_change_type: None,
                transaction_key: format!("tx-{}", T0 + 1_000),
                values: v2,
            },
        ]
    );
    let touched = b
        .texts("SELECT CAST(\"_sf_commit_ms\" AS TEXT) FROM \"sf_contact_history\" WHERE \"_sf_version\" = 2")
        .await;
    assert_eq!(touched[0].as_deref(), Some(&*(T0 + 2_000).to_string()));
    let sealed = b
        .texts("SELECT \"email\" FROM \"sf_contact_history\"")
        .await;
    assert!(sealed
        .iter()
        .all(|s| s.as_deref().unwrap().starts_with("enc:v1:k1:")));

    // A second current version of one id is refused by the index; nothing of the batch stays.
    let err = w
        .commit_curated(
            "apply",
            Some(3),
            &CuratedBatch {
                rows: vec![(CONTACT.into(), row("003A", contact_values(1), T0))],
                history: vec![open(3, T0 + 3_000, BTreeMap::new())],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        err.chain().contains("history open of version 3"),
        "{}",
        err.chain()
    );
    assert!(err.chain().contains("003A"), "{}", err.chain());
    assert_eq!(w.read_history(CONTACT).await.unwrap().len(), 2);
    assert!(w.read_current(CONTACT).await.unwrap().is_empty());
    assert_eq!(w.applied_offset("apply").await.unwrap(), Some(2));
    // Directly in SQL too.
    let dup = if w.backend() == "sqlite" { "1" } else { "TRUE" };
    let direct = format!(
        "INSERT INTO \"sf_contact_history\" (\"id\", \"_sf_version\", \"valid_from\", \"is_current\",
             \"change_type\", \"transaction_key\", \"_sf_commit_ms\", \"_sf_run_id\", \"_sf_applied_at\",
             \"_sf_source\")
         VALUES ('003A', 9, '2026-11-21T09:30:00.000Z', {dup}, 'UPDATE', 't', 1, 'r',
             '2026-11-21T09:30:00.000Z', 'cdc')"
    );
    let err = b.try_exec(&direct).await.unwrap_err();
    assert!(err.to_lowercase().contains("unique"), "{err}");

    // Closing or touching a version that does not exist is an error.
    for step in [
        HistoryWrite::Close {
            object: CONTACT.into(),
            id: "003Z".into(),
            version: 1,
            valid_to_ms: T0,
            end_change_type: "DELETE".into(),
        },
        HistoryWrite::Touch {
            object: CONTACT.into(),
            id: "003A".into(),
            version: 7,
            meta: meta(T0),
        },
    ] {
        let err = w
            .commit_curated(
                "apply",
                None,
                &CuratedBatch {
                    history: vec![step],
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert!(
            err.chain().contains("no such history version"),
            "{}",
            err.chain()
        );
    }
}

async fn latest_history_per_record(b: &dyn Backend) {
    let w = ready(b, Some(key("k1", 1))).await;
    w.ensure_model(&plain_model()).await.unwrap();
    let values = |name: &str, email: &str| -> BTreeMap<String, Value> {
        [
            ("name".to_string(), Value::Text(name.into())),
            ("email".to_string(), Value::Text(email.into())),
        ]
        .into()
    };
    let open = |id: &str, version: i64, from: i64, v: BTreeMap<String, Value>| HistoryWrite::Open {
        object: CONTACT.into(),
        id: id.into(),
        version,
        valid_from_ms: from,
        values: v,
        meta: meta(from),
    };
    let close = |id: &str, version: i64, at: i64, how: &str| HistoryWrite::Close {
        object: CONTACT.into(),
        id: id.into(),
        version,
        valid_to_ms: at,
        end_change_type: how.into(),
    };
    w.commit_curated(
        "apply",
        None,
        &CuratedBatch {
            history: vec![
                open("003A", 1, T0, values("Ada", "ada@example.com")),
                close("003A", 1, T0 + 10, "UPDATE"),
                open("003A", 2, T0 + 10, values("Ada L", "ada@lovelace.org")),
                open("003B", 1, T0, values("Bea", "bea@example.com")),
                close("003B", 1, T0 + 20, "DELETE"),
            ],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let ids: Vec<String> = ["003A", "003B", "003C"].map(String::from).to_vec();
    let latest = w.latest_history(CONTACT, &ids).await.unwrap();
    assert_eq!(latest.len(), 2, "{latest:?}");
    let a = &latest["003A"];
    assert_eq!((a.version, a.is_current, a.valid_to_ms), (2, true, None));
    assert_eq!(a.values, values("Ada L", "ada@lovelace.org"), "PII opened");
    let b2 = &latest["003B"];
    assert_eq!(
        (b2.version, b2.is_current, b2.end_change_type.as_deref()),
        (1, false, Some("DELETE"))
    );
    assert!(w.latest_history(CONTACT, &[]).await.unwrap().is_empty());
    assert!(
        w.latest_history("Account", &ids).await.unwrap().is_empty(),
        "an object without history has none"
    );
    let err = w.latest_history("Nope", &ids).await.unwrap_err();
    assert!(err.chain().contains("Nope"), "{}", err.chain());
}

async fn audit_chain_verifies_and_reports_tampering(b: &dyn Backend) {
    let w = ready(b, Some(key("k1", 1))).await;
    let empty = w.verify_audit().await.unwrap();
    assert_eq!(
        (empty.entries, empty.first_break, empty.head),
        (0, None, None)
    );
    for round in 0..3 {
        let batch = CuratedBatch {
            audit: (0..2).map(|i| audit("003A", round * 2 + i)).collect(),
            ..Default::default()
        };
        w.commit_curated("apply", None, &batch).await.unwrap();
    }
    let ok = w.verify_audit().await.unwrap();
    assert_eq!(ok.entries, 6);
    assert_eq!(ok.first_break, None);
    let head = ok.head.clone().unwrap();
    assert_eq!(head.len(), 64);
    let prev = b
        .texts("SELECT prev_hash FROM audit_log ORDER BY seq")
        .await;
    assert_eq!(prev[0].as_deref(), Some(&*"0".repeat(64)));

    // The entry names the changed fields, and nothing else of it is stored.
    let entries = b.texts("SELECT entry FROM audit_log ORDER BY seq").await;
    for e in &entries {
        let e = e.as_deref().unwrap();
        let json: serde_json::Value = serde_json::from_str(e).unwrap();
        assert_eq!(json["fields"], serde_json::json!(["Name", "Email"]), "{e}");
        assert!(json.get("values").is_none(), "{e}");
    }

    // Tampering with one entry is reported at its seq.
    b.exec(
        r#"UPDATE audit_log SET entry = replace(entry, '"outcome":"applied"', '"outcome":"stale"')
           WHERE seq = 3"#,
    )
    .await;
    let broken = w.verify_audit().await.unwrap();
    assert_eq!(broken.entries, 6);
    assert_eq!(
        broken.first_break,
        Some((3, "hash mismatch at seq 3".into()))
    );
    // So is a denormalised column changed behind the hash.
    b.exec(
        r#"UPDATE audit_log SET entry = replace(entry, '"outcome":"stale"', '"outcome":"applied"')
           WHERE seq = 3"#,
    )
    .await;
    assert_eq!(w.verify_audit().await.unwrap().first_break, None);
    b.exec("UPDATE audit_log SET record_id = 'other' WHERE seq = 5")
        .await;
    let broken = w.verify_audit().await.unwrap();
    let (seq, reason) = broken.first_break.unwrap();
    assert_eq!(seq, 5);
    assert!(reason.contains("record_id"), "{reason}");
    // And a removed entry breaks the link of the next one.
    b.exec("UPDATE audit_log SET record_id = '003A' WHERE seq = 5; DELETE FROM audit_log WHERE seq = 2")
        .await;
    let broken = w.verify_audit().await.unwrap();
    assert_eq!(broken.entries, 5);
    let (seq, reason) = broken.first_break.unwrap();
    assert_eq!(seq, 3);
    assert!(reason.contains("link"), "{reason}");
}

/// The audit trail records who changed which fields, never a value: with a Contact's row and
/// history written in the same batch as its audit entry, no cell of any `audit_log` column
/// holds one of its values, in plaintext or sealed.
async fn audit_log_holds_no_values(b: &dyn Backend) {
    let w = ready(b, Some(key("k1", 1))).await;
    let values = contact_values(7);
    let email = "ada7@example.com";
    assert_eq!(values["email"], Value::Text(email.into()));
    let mut entry = audit("003A", 7);
    entry.fields = vec!["Name".into(), "Email".into(), "Score".into()];
    let batch = CuratedBatch {
        rows: vec![(CONTACT.into(), row("003A", values.clone(), T0))],
        history: vec![HistoryWrite::Open {
            object: CONTACT.into(),
            id: "003A".into(),
            version: 1,
            valid_from_ms: T0,
            values: values.clone(),
            meta: meta(T0),
        }],
        audit: vec![entry],
        ..Default::default()
    };
    w.commit_curated("apply", Some(1), &batch).await.unwrap();
    // The values are where they belong.
    assert_eq!(w.read_current(CONTACT).await.unwrap()[0].values, values);

    let columns = b.columns("audit_log").await;
    assert!(columns.iter().any(|c| c == "entry"), "{columns:?}");
    assert!(!columns.iter().any(|c| c == "sealed"), "{columns:?}");
    let mut cells = Vec::new();
    for c in &columns {
        let sql = format!("SELECT CAST(\"{c}\" AS TEXT) FROM audit_log ORDER BY seq");
        cells.extend(b.texts(&sql).await.into_iter().flatten());
    }
    let all = cells.join("\n");
    // The scan sees the entry: who, which record, which fields.
    for expected in ["003A", "005xx", r#"["Name","Email","Score"]"#] {
        assert!(all.contains(expected), "{expected} not in {all}");
    }
    for value in [email, "Ada 7", "enc:v1:"] {
        assert!(!all.contains(value), "audit_log holds '{value}': {all}");
    }
    assert_eq!(w.verify_audit().await.unwrap().first_break, None);
}

async fn commit_and_offset_are_atomic(b: &dyn Backend) {
    let w = ready(b, Some(key("k1", 1))).await;
    w.ensure_model(&plain_model()).await.unwrap();
    let good = CuratedBatch {
        rows: vec![(CONTACT.into(), row("003A", contact_values(0), T0))],
        audit: vec![audit("003A", 0)],
        repairs: vec![RepairRequest {
            object: CONTACT.into(),
            record_ids: vec!["003Q".into()],
            reason: "GAP_UPDATE".into(),
            event_key: "e".into(),
            commit_timestamp_ms: T0,
        }],
        ..Default::default()
    };
    w.commit_curated("apply", Some(5), &good).await.unwrap();

    // Fails at the history step, after rows, audit and a repair were written in the transaction.
    let failing = CuratedBatch {
        rows: vec![
            (CONTACT.into(), row("003B", contact_values(1), T0)),
            ("Account".into(), row("001A", BTreeMap::new(), T0)),
        ],
        audit: vec![audit("003B", 1)],
        repairs: good.repairs.clone(),
        resyncs: vec![ResyncRequest {
            object: CONTACT.into(),
            channel: "/data/ContactChangeEvent".into(),
            from_ms: T0,
            reason: "GAP_OVERFLOW".into(),
            event_key: None,
        }],
        dead_letters: vec![dead_letter("/data/ContactChangeEvent", b"x")],
        history: vec![HistoryWrite::Close {
            object: "Account".into(),
            id: "001A".into(),
            version: 1,
            valid_to_ms: T0,
            end_change_type: "DELETE".into(),
        }],
        ..Default::default()
    };
    let err = w
        .commit_curated("apply", Some(9), &failing)
        .await
        .unwrap_err();
    assert!(err.chain().contains("Account"), "{}", err.chain());
    assert!(err.chain().contains("001A"), "{}", err.chain());
    assert!(err.chain().contains("no history table"), "{}", err.chain());

    async fn unchanged(w: &dyn Warehouse) {
        {
            assert_eq!(w.applied_offset("apply").await.unwrap(), Some(5));
            let ids: Vec<String> = w
                .read_current(CONTACT)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect();
            assert_eq!(ids, ["003A"]);
            assert!(w.read_current("Account").await.unwrap().is_empty());
            assert_eq!(w.verify_audit().await.unwrap().entries, 1);
            assert_eq!(w.pending_repairs(10).await.unwrap().len(), 1);
            assert!(w.resync_requests().await.unwrap().is_empty());
            assert_eq!(w.dead_letter_count().await.unwrap(), 0);
        }
    }
    unchanged(&*w).await;

    // An empty record id, and an offset that would move back, fail the same way.
    let mut empty_id = failing.clone();
    empty_id.history.clear();
    empty_id
        .rows
        .push((CONTACT.into(), row("", contact_values(2), T0)));
    let err = w
        .commit_curated("apply", Some(9), &empty_id)
        .await
        .unwrap_err();
    assert!(
        err.chain().contains("record id is empty"),
        "{}",
        err.chain()
    );
    unchanged(&*w).await;
    let mut back = failing.clone();
    back.history.clear();
    let err = w.commit_curated("apply", Some(4), &back).await.unwrap_err();
    assert!(
        matches!(err, StoreError::OffsetRegression { .. }),
        "{err:?}"
    );
    unchanged(&*w).await;

    // One record twice in the rows of a batch is refused the same way on every backend.
    let mut twice = back.clone();
    twice.rows.push(twice.rows[0].clone());
    let err = w
        .commit_curated("apply", Some(9), &twice)
        .await
        .unwrap_err();
    assert!(err.chain().contains("appears twice"), "{}", err.chain());
    unchanged(&*w).await;

    // The same batch without the bad step goes in whole.
    w.commit_curated("apply", Some(9), &back).await.unwrap();
    assert_eq!(w.applied_offset("apply").await.unwrap(), Some(9));
    assert_eq!(w.read_current(CONTACT).await.unwrap().len(), 2);
    assert_eq!(w.dead_letter_count().await.unwrap(), 1);
    assert_eq!(w.verify_audit().await.unwrap().first_break, None);
    // An empty batch with an offset only moves the offset.
    w.commit_curated("apply", Some(10), &CuratedBatch::default())
        .await
        .unwrap();
    assert_eq!(w.applied_offset("apply").await.unwrap(), Some(10));
}

async fn repairs_and_resyncs(b: &dyn Backend) {
    let w = ready(b, Some(key("k1", 1))).await;
    let req = |ids: &[&str], reason: &str| RepairRequest {
        object: CONTACT.into(),
        record_ids: ids.iter().map(|s| s.to_string()).collect(),
        reason: reason.into(),
        event_key: format!("tx/1/{}", ids[0]),
        commit_timestamp_ms: T0,
    };
    w.commit_curated(
        "apply",
        None,
        &CuratedBatch {
            repairs: vec![
                req(&["003A", "003B"], "GAP_UPDATE"),
                req(&["003C"], "unknown_record"),
            ],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let pending = w.pending_repairs(10).await.unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].request, req(&["003A", "003B"], "GAP_UPDATE"));
    assert_eq!(pending[1].request, req(&["003C"], "unknown_record"));
    assert!(pending[0].id < pending[1].id);
    assert!(pending[0].created_at_ms > 0);
    assert_eq!(w.pending_repairs(1).await.unwrap().len(), 1);

    w.commit_curated(
        "apply",
        None,
        &CuratedBatch {
            repairs_done: vec![pending[0].id],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let left = w.pending_repairs(10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, pending[1].id);
    let err = w
        .commit_curated(
            "apply",
            None,
            &CuratedBatch {
                repairs_done: vec![pending[1].id, 999_999],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("999999"), "{err}");
    assert_eq!(w.pending_repairs(10).await.unwrap().len(), 1);

    let overflow = ResyncRequest {
        object: CONTACT.into(),
        channel: "/data/ContactChangeEvent".into(),
        from_ms: T0,
        reason: "GAP_OVERFLOW".into(),
        event_key: Some("tx/1/003A".into()),
    };
    let expired = ResyncRequest {
        object: String::new(),
        channel: "/data/ChangeEvents".into(),
        from_ms: T0 - 1,
        reason: "replay id expired".into(),
        event_key: None,
    };
    w.commit_curated(
        "apply",
        None,
        &CuratedBatch {
            resyncs: vec![overflow.clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    w.add_resync(&expired).await.unwrap();
    let all = w.resync_requests().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].request, overflow);
    assert_eq!(all[1].request, expired);
    assert!(all.iter().all(|r| r.status == "pending"));
}

async fn dead_letters_sealed_with_checkpoint(b: &dyn Backend) {
    // Without PII models and without a keyring, dead letters are kept as received.
    let w = b.open(None).await;
    w.ensure_model(&plain_model()).await.unwrap();
    let ch = "/data/ChangeEvents";
    let out = w
        .append_with_dead_letters(
            ch,
            &[raw_change("a", "Account", b"acct")],
            &[dead_letter(ch, b"plain bytes")],
            &ReplayId::from_bytes(vec![1]),
        )
        .await
        .unwrap();
    assert_eq!(out.appended, 1);
    assert_eq!(w.dead_letter_count().await.unwrap(), 1);
    assert_eq!(
        w.checkpoint(ch).await.unwrap(),
        Some(ReplayId::from_bytes(vec![1]))
    );
    assert_eq!(
        b.blobs("SELECT payload FROM dead_letters").await,
        vec![b"plain bytes".to_vec()]
    );

    // With a keyring they are sealed, whatever the object.
    drop(w);
    let k = key("k1", 1);
    let w = ready(b, Some(k.clone())).await;
    let mut letter = dead_letter(ch, b"ada@example.com in an avro payload");
    letter.object = None;
    letter.replay_id = Some(ReplayId::from_bytes(vec![9, 10]));
    w.append_with_dead_letters(ch, &[], &[letter], &ReplayId::from_bytes(vec![2]))
        .await
        .unwrap();
    assert_eq!(w.dead_letter_count().await.unwrap(), 2);
    assert_eq!(
        w.checkpoint(ch).await.unwrap(),
        Some(ReplayId::from_bytes(vec![2]))
    );
    let stored = b
        .blobs("SELECT payload FROM dead_letters ORDER BY id")
        .await;
    assert!(stored[1].starts_with(b"SFE1"));
    assert!(!String::from_utf8_lossy(&stored[1]).contains("ada@"));
    assert_eq!(
        k.open_bytes(&pii::dead_letter_aad(ch), &stored[1]).unwrap(),
        b"ada@example.com in an avro payload"
    );
    let replay = b
        .blobs("SELECT replay_id FROM dead_letters ORDER BY id")
        .await;
    assert_eq!(replay[1], vec![9, 10]);

    // A failing append writes no dead letter and no checkpoint.
    let mut bad = raw_change("b", "Account", b"x");
    bad.entity = String::new();
    assert!(w
        .append_with_dead_letters(
            ch,
            &[bad],
            &[dead_letter(ch, b"y")],
            &ReplayId::from_bytes(vec![3])
        )
        .await
        .is_err());
    assert_eq!(w.dead_letter_count().await.unwrap(), 2);
    assert_eq!(
        w.checkpoint(ch).await.unwrap(),
        Some(ReplayId::from_bytes(vec![2]))
    );

    // With a PII model registered and no keyring, a dead letter is refused rather than stored
    // in plaintext.
    drop(w);
    let w = b.open(None).await;
    let err = w
        .append_with_dead_letters(
            ch,
            &[],
            &[dead_letter(ch, b"z")],
            &ReplayId::from_bytes(vec![4]),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("keyring"), "{err}");
    assert_eq!(w.dead_letter_count().await.unwrap(), 2);

    // Listed without their payloads: size and whether sealed, replay id in hex; filtered by
    // id and object, in either order.
    let all = w.dead_letters(&DeadLetterFilter::default()).await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    let (first, second) = (&all[0], &all[1]);
    assert!(first.id < second.id);
    assert_eq!(
        (
            first.channel.as_str(),
            first.replay_id.as_deref(),
            first.stage.as_str(),
            first.error.as_str(),
            first.object.as_deref(),
            first.payload_bytes,
            first.payload_sealed,
        ),
        (
            ch,
            Some("0909"),
            "decode",
            "decode failed: bad union index",
            Some(CONTACT),
            11,
            false
        )
    );
    assert_eq!(
        (
            second.replay_id.as_deref(),
            second.object.as_deref(),
            second.payload_sealed
        ),
        (Some("090a"), None, true)
    );
    let newest = w
        .dead_letters(&DeadLetterFilter {
            newest_first: true,
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(newest, vec![second.clone()]);
    let by_id = w
        .dead_letters(&DeadLetterFilter {
            ids: vec![first.id, 999_999],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_id, vec![first.clone()]);
    let by_object = w
        .dead_letters(&DeadLetterFilter {
            object: Some(CONTACT.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_object, vec![first.clone()]);
}

/// A stored raw payload without PII: `SFL1`, the size (u32 LE), an LZ4 block.
fn unlz4(stored: &[u8]) -> Vec<u8> {
    let rest = stored
        .strip_prefix(b"SFL1")
        .unwrap_or_else(|| panic!("not a compressed payload: {stored:?}"));
    let size = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
    lz4_flex::block::decompress(&rest[4..], size).unwrap()
}

async fn raw_payloads_of_pii_entities_sealed(b: &dyn Backend) {
    let w = ready(b, Some(key("k1", 1))).await;
    let ch = "/data/ChangeEvents";
    let contact = raw_change("c1", CONTACT, b"ada@example.com avro bytes");
    let account = raw_change("a1", "Account", b"account avro bytes");
    w.append_batch(
        ch,
        &[contact.clone(), account.clone()],
        &ReplayId::from_bytes(vec![1]),
    )
    .await
    .unwrap();
    let stored = b
        .blobs("SELECT payload FROM raw_changes ORDER BY log_offset")
        .await;
    assert!(stored[0].starts_with(b"SFE1"));
    assert!(!String::from_utf8_lossy(&stored[0]).contains("ada@"));
    assert_eq!(unlz4(&stored[1]), b"account avro bytes");
    let got = w.read_from(0, 10).await.unwrap();
    assert_eq!(got[0].change, contact);
    assert_eq!(got[1].change, account);
    // Re-delivery is still a counted no-op.
    let out = w
        .append_batch(
            ch,
            std::slice::from_ref(&contact),
            &ReplayId::from_bytes(vec![2]),
        )
        .await
        .unwrap();
    assert_eq!((out.appended, out.duplicates), (0, 1));

    // Without the keyring, the sealed payload cannot be read (and is never handed out sealed);
    // a raw change of a PII entity cannot be appended.
    drop(w);
    let w = b.open(None).await;
    let err = w.read_from(0, 10).await.unwrap_err();
    assert!(err.to_string().contains("keyring"), "{err}");
    let err = w
        .append_batch(
            ch,
            &[raw_change("c2", CONTACT, b"x")],
            &ReplayId::from_bytes(vec![3]),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("keyring"), "{err}");
    assert_eq!(
        w.checkpoint(ch).await.unwrap(),
        Some(ReplayId::from_bytes(vec![2]))
    );
}

async fn rotate_keys_reseals_everything(b: &dyn Backend) {
    let old = key("old", 1);
    let w = ready(b, Some(old.clone())).await;
    let ch = "/data/ContactChangeEvent";
    // Something written before the model existed stays readable and gets sealed by rotation.
    w.append_batch(
        ch,
        &[
            raw_change("c1", CONTACT, b"contact one"),
            raw_change("a1", "Account", b"account one"),
        ],
        &ReplayId::from_bytes(vec![1]),
    )
    .await
    .unwrap();
    let rows: Vec<(String, CurrentRow)> = (0..3)
        .map(|i| {
            (
                CONTACT.to_string(),
                row(&format!("003{i}"), contact_values(i), T0),
            )
        })
        .collect();
    let batch = CuratedBatch {
        rows: rows.clone(),
        history: vec![HistoryWrite::Open {
            object: CONTACT.into(),
            id: "0030".into(),
            version: 1,
            valid_from_ms: T0,
            values: contact_values(0),
            meta: meta(T0),
        }],
        audit: vec![audit("0030", 0), audit("0031", 1)],
        dead_letters: vec![dead_letter(ch, b"dead one")],
        ..Default::default()
    };
    w.commit_curated("apply", Some(1), &batch).await.unwrap();
    let before_current = w.read_current(CONTACT).await.unwrap();
    let before_history = w.read_history(CONTACT).await.unwrap();
    let before_log = w.read_from(0, 10).await.unwrap();
    let head = w.verify_audit().await.unwrap().head;
    drop(w);

    let mut ring = Keyring::new("new", [2; 32]);
    ring.add_old_key("old", [1; 32]);
    let w = b.open(Some(Arc::new(ring))).await;
    let report = w.rotate_keys().await.unwrap();
    assert_eq!(report.new_key_id, "new");
    // 3 rows x 3 PII columns, 1 history email; the audit trail holds no values.
    assert_eq!(report.values_resealed, 9 + 1);
    // 1 Contact raw payload and 1 dead letter.
    assert_eq!(report.raw_payloads_resealed, 2);
    let again = w.rotate_keys().await.unwrap();
    assert_eq!((again.values_resealed, again.raw_payloads_resealed), (0, 0));
    drop(w);

    // Only the new key from now on.
    let new_only = key("new", 2);
    let w = b.open(Some(new_only.clone())).await;
    assert_eq!(w.read_current(CONTACT).await.unwrap(), before_current);
    assert_eq!(w.read_history(CONTACT).await.unwrap(), before_history);
    assert_eq!(w.read_from(0, 10).await.unwrap(), before_log);
    let v = w.verify_audit().await.unwrap();
    assert_eq!(v.first_break, None);
    assert_eq!(v.head, head);
    let emails = b.texts("SELECT \"email\" FROM \"sf_contact\"").await;
    assert!(emails
        .iter()
        .all(|e| e.as_deref().unwrap().starts_with("enc:v1:new:")));
    let dead = b.blobs("SELECT payload FROM dead_letters").await;
    assert_eq!(
        new_only
            .open_bytes(&pii::dead_letter_aad(ch), &dead[0])
            .unwrap(),
        b"dead one"
    );
    let raw = b
        .blobs("SELECT payload FROM raw_changes ORDER BY log_offset")
        .await;
    assert_eq!(pii::sealed_bytes_key_id(&raw[0]), Some("new"));
    assert_eq!(unlz4(&raw[1]), b"account one");

    // Rotation needs a keyring.
    drop(w);
    let w = b.open(None).await;
    assert!(w.rotate_keys().await.is_err());
}

async fn apply_lock_is_exclusive(b: &dyn Backend) {
    let first = b.open(None).await;
    let second = b.open(None).await;
    first.acquire_apply_lock().await.unwrap();
    first.acquire_apply_lock().await.unwrap(); // idempotent for the holder
    let err = second.acquire_apply_lock().await.unwrap_err();
    assert!(matches!(err, StoreError::ApplyLockHeld { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("another sfsync process is applying to"),
        "{err}"
    );
    // Released when the holder goes away.
    drop(first);
    let mut ok = false;
    for _ in 0..50 {
        if second.acquire_apply_lock().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "the lock is released when its holder is dropped");
}

async fn runs_and_schemas(b: &dyn Backend) {
    let w = b.open(None).await;
    w.start_run("r1", "run", "{}").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    w.start_run("r2", "repair", "{\"objects\":[\"Case\"]}")
        .await
        .unwrap();
    assert!(w.start_run("r1", "run", "{}").await.is_err());
    w.finish_run("r1", "completed", "{\"applied\":3}")
        .await
        .unwrap();
    assert!(w.finish_run("nope", "failed", "{}").await.is_err());
    let runs = w.runs(10).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].run_id, "r2");
    assert_eq!(runs[0].status, "running");
    assert_eq!(runs[0].ended_at_ms, None);
    assert_eq!(runs[1].run_id, "r1");
    assert_eq!(runs[1].kind, "run");
    assert_eq!(runs[1].status, "completed");
    assert_eq!(runs[1].detail, "{\"applied\":3}");
    assert!(runs[1].ended_at_ms.unwrap() >= runs[1].started_at_ms);
    assert_eq!(w.runs(1).await.unwrap().len(), 1);

    assert_eq!(w.schema("s1").await.unwrap(), None);
    w.put_schema("s1", "{\"type\":\"record\"}").await.unwrap();
    w.put_schema("s1", "{\"type\":\"record\"}").await.unwrap();
    assert_eq!(
        w.schema("s1").await.unwrap().as_deref(),
        Some("{\"type\":\"record\"}")
    );
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        // SQLite commits run in place on a multi-thread runtime (as in `sfsync run`) and on
        // the blocking pool on a current-thread one; both are covered.
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let b = super::sqlite_backend();
                    super::$case(&b).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let b = super::postgres_backend().await;
                    super::$case(&b).await;
                }
            )*
        }
    };
}

suite!(
    ensure_model_creates_adds_and_reports_retyped,
    rows_round_trip_every_type_with_pii_sealed,
    history_open_close_touch_and_one_current,
    latest_history_per_record,
    audit_chain_verifies_and_reports_tampering,
    audit_log_holds_no_values,
    commit_and_offset_are_atomic,
    repairs_and_resyncs,
    dead_letters_sealed_with_checkpoint,
    raw_payloads_of_pii_entities_sealed,
    rotate_keys_reseals_everything,
    apply_lock_is_exclusive,
    runs_and_schemas,
);

mod sqlite_current_thread {
    #[tokio::test(flavor = "current_thread")]
    async fn commit_and_offset_are_atomic() {
        super::commit_and_offset_are_atomic(&super::sqlite_backend()).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn rows_round_trip_every_type_with_pii_sealed() {
        super::rows_round_trip_every_type_with_pii_sealed(&super::sqlite_backend()).await;
    }
}

/// A SQLite database at schema 2 whose audit trail holds a sealed value upgrades to 3: the column
/// goes, the old entry still verifies and the chain continues after it.
#[tokio::test]
async fn sqlite_upgrade_drops_sealed_audit_values() {
    let b = sqlite_backend();
    {
        let c = rusqlite::Connection::open(b.path()).unwrap();
        c.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                 applied_at_ms INTEGER NOT NULL)",
        )
        .unwrap();
        for m in &sfsync_store::sqlite::MIGRATIONS[..2] {
            c.execute_batch(m.sql).unwrap();
            c.execute(
                "INSERT INTO schema_migrations VALUES (?1, ?2, 0)",
                rusqlite::params![m.version, m.name],
            )
            .unwrap();
        }
        let entry = r#"{"object":"Contact","record_id":"003A","change_type":"UPDATE","event_key":"tx0/1/003A","commit_timestamp_ms":1,"commit_user":"005xx","change_origin":"","source":"cdc","fields":["Email"],"values":{},"outcome":"applied","replay_id":null,"run_id":"r","applied_at_ms":2}"#;
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update([0u8; 32]);
        h.update(entry.as_bytes());
        let hash = hex::encode(h.finalize());
        c.execute(
            "INSERT INTO audit_log VALUES (1, 'Contact', '003A', 'UPDATE', 'tx0/1/003A', ?1,
                 '{\"email\":\"enc:v1:k1:AAAA\"}', ?2, ?3, 0)",
            rusqlite::params![entry, "0".repeat(64), hash],
        )
        .unwrap();
    }
    let w = ready(&b, Some(key("k1", 1))).await;
    assert_eq!(
        w.applied_migrations()
            .await
            .unwrap()
            .last()
            .unwrap()
            .version,
        sfsync_store::migrate::latest(sfsync_store::sqlite::MIGRATIONS)
    );
    assert!(!b.columns("audit_log").await.iter().any(|c| c == "sealed"));
    let batch = CuratedBatch {
        audit: vec![audit("003A", 1)],
        ..Default::default()
    };
    w.commit_curated("apply", None, &batch).await.unwrap();
    let v = w.verify_audit().await.unwrap();
    assert_eq!((v.entries, v.first_break), (2, None));
}

/// With the raw log in its own file, ingest's dead letters live in the warehouse file beside the
/// apply stage's, and one redelivered after a crash between storing it and the append (which
/// moves the checkpoint past it) is not stored twice.
#[tokio::test]
async fn sqlite_ingest_dead_letters_in_the_warehouse_file_once() {
    let b = sqlite_backend();
    let w = b.open(None).await;
    w.ensure_model(&plain_model()).await.unwrap();
    let ch = "/data/ContactChangeEvent";
    let letter = dead_letter(ch, b"undecodable");
    for _ in 0..2 {
        w.append_with_dead_letters(
            ch,
            &[],
            std::slice::from_ref(&letter),
            &ReplayId::from_bytes(vec![2]),
        )
        .await
        .unwrap();
    }
    let mut other = dead_letter(ch, b"another");
    other.replay_id = Some(ReplayId::from_bytes(vec![3]));
    w.append_with_dead_letters(ch, &[], &[other], &ReplayId::from_bytes(vec![3]))
        .await
        .unwrap();
    assert_eq!(w.dead_letter_count().await.unwrap(), 2);
    let c = rusqlite::Connection::open(b.path()).unwrap();
    let n: i64 = c
        .query_row("SELECT COUNT(*) FROM dead_letters", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2, "both in the warehouse file");
}
