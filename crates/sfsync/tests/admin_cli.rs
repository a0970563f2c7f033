//! The operator commands `sfsync audit verify`, `sfsync keys rotate` and `sfsync read` as an
//! operator runs them: the real binary against a real SQLite warehouse file. The warehouse
//! content is written through the store's own API (`ensure_model` / `commit_curated`, sealed with
//! a keyring), as the pipeline's apply stage writes it; the checks read stdout, stderr, the exit
//! status and the database file behind the store's back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use sfsync_core::RecordVersion;
use sfsync_store::{
    AuditEntry, ChangeSource, ColumnDef, ColumnType, CuratedBatch, CurrentRow, HistorySpec,
    HistoryWrite, Keyring, ObjectModel, SqliteChangeLog, SyncMeta, Value, Warehouse,
};

const KEY_A: [u8; 32] = [0xa1; 32];
const KEY_B: [u8; 32] = [0xb2; 32];
const ADA: &str = "ada.lovelace@example.gov";
const GRACE: &str = "grace.hopper@example.gov";
const T0: i64 = 1_795_253_400_000; // 2026-11-21T09:30:00.000Z

// ---- the warehouse, written as the apply stage writes it ----

fn column(name: &str, ty: ColumnType, pii: bool) -> ColumnDef {
    ColumnDef {
        name: name.to_ascii_lowercase(),
        field: name.into(),
        ty,
        pii,
    }
}

/// Contact as the pipeline models it for `pii_fields = ["Email"]` (or none).
fn contact_model(email_pii: bool, history: bool) -> ObjectModel {
    ObjectModel {
        object: "Contact".into(),
        table: "sf_contact".into(),
        columns: vec![
            column("Id", ColumnType::Text, false),
            column("LastName", ColumnType::Text, false),
            column("Email", ColumnType::Text, email_pii),
            column("Birthdate", ColumnType::Date, false),
        ],
        history: history.then(|| HistorySpec {
            table: "sf_contact_history".into(),
            columns: vec!["lastname".into(), "email".into()],
        }),
    }
}

fn account_model() -> ObjectModel {
    ObjectModel {
        object: "Account".into(),
        table: "sf_account".into(),
        columns: vec![
            column("Id", ColumnType::Text, false),
            column("Name", ColumnType::Text, false),
        ],
        history: None,
    }
}

fn meta(ts: i64) -> SyncMeta {
    SyncMeta {
        version: RecordVersion {
            commit_timestamp: ts,
            commit_number: 1,
            sequence_number: 1,
        },
        change_type: "CREATE".into(),
        source: ChangeSource::Cdc,
        transaction_key: format!("tx-{ts}"),
        replay_id: None,
        run_id: "run-test".into(),
        applied_at_ms: ts + 5,
        origin_client: None,
    }
}

fn contact_values(last: &str, email: &str) -> BTreeMap<String, Value> {
    BTreeMap::from([
        ("lastname".to_string(), Value::Text(last.into())),
        ("email".to_string(), Value::Text(email.into())),
        ("birthdate".to_string(), Value::Date(-47_000)),
    ])
}

fn current(id: &str, values: BTreeMap<String, Value>, ts: i64, history: bool) -> CurrentRow {
    CurrentRow {
        id: id.into(),
        values,
        meta: meta(ts),
        deleted: false,
        base_version: meta(ts).version,
        field_versions: None,
        history_version: history.then_some(1),
        partial: false,
    }
}

/// An audit entry built from its JSON form, as an operator reading `audit_log.entry` sees it
/// (the entry names the changed fields; the PII under test lives in the rows).
fn audit(object: &str, id: &str, n: i64) -> AuditEntry {
    serde_json::from_value(serde_json::json!({
        "object": object,
        "record_id": id,
        "change_type": "CREATE",
        "event_key": format!("tx-{n}/1/{id}"),
        "commit_timestamp_ms": T0 + n,
        "commit_user": "005000000000001AAA",
        "change_origin": "com/salesforce/api/rest/66.0",
        "source": "cdc",
        "fields": ["LastName", "Email"],
        "outcome": "applied",
        "replay_id": null,
        "run_id": "run-test",
        "applied_at_ms": T0 + n + 5,
    }))
    .expect("audit entry JSON")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

async fn open_store(db: &Path, keyring: Option<Keyring>) -> SqliteChangeLog {
    let s = SqliteChangeLog::open(db).await.expect("open SQLite store");
    s.set_keyring(keyring.map(Arc::new));
    s
}

/// Two Contacts (Email sealed under `key-a`, with history) and one Account, three audit entries.
fn write_sealed_warehouse(db: &Path) {
    block_on(async {
        let s = open_store(db, Some(Keyring::new("key-a", KEY_A))).await;
        s.ensure_model(&contact_model(true, true)).await.unwrap();
        s.ensure_model(&account_model()).await.unwrap();
        let contacts = [("003A", "Lovelace", ADA), ("003B", "Hopper", GRACE)];
        let mut batch = CuratedBatch::default();
        for (id, last, email) in contacts {
            batch.rows.push((
                "Contact".into(),
                current(id, contact_values(last, email), T0, true),
            ));
            batch.history.push(HistoryWrite::Open {
                object: "Contact".into(),
                id: id.into(),
                version: 1,
                valid_from_ms: T0,
                values: BTreeMap::from([
                    ("lastname".to_string(), Value::Text(last.into())),
                    ("email".to_string(), Value::Text(email.into())),
                ]),
                meta: meta(T0),
            });
        }
        let name = BTreeMap::from([("name".to_string(), Value::Text("Analytical Engines".into()))]);
        batch
            .rows
            .push(("Account".into(), current("001A", name, T0, false)));
        batch.audit = vec![
            audit("Contact", "003A", 1),
            audit("Contact", "003B", 2),
            audit("Account", "001A", 3),
        ];
        s.commit_curated("apply", None, &batch).await.unwrap();
    });
}

// ---- config and the binary ----

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("client-secret"),
            "not-used-by-these-commands",
        )
        .unwrap();
        for (name, key) in [("key-a.hex", KEY_A), ("key-b.hex", KEY_B)] {
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::write(dir.path().join(name), hex).unwrap();
        }
        Site { dir }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("warehouse.db")
    }

    /// A config for the warehouse with the PII key `key_id` (`key-a` or `key-b`) or none.
    fn config(&self, key_id: Option<&str>) -> PathBuf {
        self.config_with_old_keys(key_id, &[])
    }

    /// [`Site::config`] with `old` as `[[pii.old_keys]]` entries (each `key_file = "<id>.hex"`).
    fn config_with_old_keys(&self, key_id: Option<&str>, old: &[&str]) -> PathBuf {
        let (objects, pii) = match key_id {
            Some(id) => (
                "[[objects]]\nname = \"Contact\"\nhistory = { fields = [\"LastName\", \"Email\"] }\n\
                 pii_fields = [\"Email\"]\n\n[[objects]]\nname = \"Account\"\n",
                format!("[pii]\nkey_file = \"{id}.hex\"\nkey_id = \"{id}\"\n")
                    + &old
                        .iter()
                        .map(|o| {
                            format!("\n[[pii.old_keys]]\nkey_id = \"{o}\"\nkey_file = \"{o}.hex\"\n")
                        })
                        .collect::<String>(),
            ),
            None => ("[[objects]]\nname = \"Account\"\n", String::new()),
        };
        let text = format!(
            "[salesforce]\ninstance_url = \"https://example.my.salesforce.com\"\n\n\
             [salesforce.auth]\ntype = \"client_credentials\"\nclient_id = \"test-client\"\n\
             client_secret = {{ file = \"client-secret\" }}\n\n{objects}\n\
             [warehouse]\ntype = \"sqlite\"\npath = \"warehouse.db\"\n\n{pii}"
        );
        let mut name = key_id.unwrap_or("no-pii").to_string();
        for o in old {
            name.push_str(&format!("+old-{o}"));
        }
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Every file of the warehouse (database, WAL, shared memory) that contains `needle`.
    fn files_containing(&self, needle: &str) -> Vec<PathBuf> {
        let mut hits = Vec::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let is_db = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("warehouse.db"));
            if !is_db {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                hits.push(path);
            }
        }
        hits
    }

    /// One text column of every row of `sql`, read behind the store's back.
    fn texts(&self, sql: &str) -> Vec<String> {
        let c = rusqlite::Connection::open(self.db()).unwrap();
        let mut st = c.prepare(sql).unwrap();
        let rows = st.query_map([], |r| r.get::<_, String>(0)).unwrap();
        rows.map(|r| r.unwrap()).collect()
    }
}

fn sfsync(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sfsync"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("SFSYNC_LOG", "warn")
        .env("USER", "test-operator")
        .output()
        .expect("run sfsync")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

fn jsonl(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

// ---- audit verify ----

#[test]
fn audit_verify_passes_a_fresh_chain_and_names_the_tampered_seq() {
    let site = Site::new();
    write_sealed_warehouse(&site.db());
    let cfg = site.config(Some("key-a"));

    let ok = sfsync(&["audit", "verify"], &cfg);
    assert_eq!(ok.status.code(), Some(0), "{}", show(&ok));
    assert!(stdout(&ok).contains("entries checked: 3"), "{}", show(&ok));
    assert!(stdout(&ok).contains("result: intact"), "{}", show(&ok));

    let c = rusqlite::Connection::open(site.db()).unwrap();
    let changed = c
        .execute(
            "UPDATE audit_log SET entry = replace(entry, '\"outcome\":\"applied\"', \
             '\"outcome\":\"stale\"') WHERE seq = 2",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let entry: String = c
        .query_row("SELECT entry FROM audit_log WHERE seq = 2", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(entry.contains("\"outcome\":\"stale\""), "{entry}");
    drop(c);

    let broken = sfsync(&["audit", "verify"], &cfg);
    assert_eq!(broken.status.code(), Some(1), "{}", show(&broken));
    let out = stdout(&broken);
    assert!(out.contains("entries checked: 3"), "{}", show(&broken));
    assert!(
        out.contains("BROKEN at seq 2: hash mismatch at seq 2"),
        "{}",
        show(&broken)
    );
}

// ---- read ----

#[test]
fn read_masks_pii_unless_decrypt_and_says_who_decrypted() {
    let site = Site::new();
    write_sealed_warehouse(&site.db());
    let cfg = site.config(Some("key-a"));

    // Without --decrypt: current rows, history, table format — never the plaintext.
    for args in [
        &["read", "Contact"][..],
        &["read", "Contact", "--history"],
        &["read", "Contact", "--format", "table"],
        &["read", "contact", "--id", "003A", "--format", "table"],
    ] {
        let o = sfsync(args, &cfg);
        assert_eq!(o.status.code(), Some(0), "{args:?}\n{}", show(&o));
        let all = format!("{}{}", stdout(&o), stderr(&o));
        for secret in [ADA, GRACE, "lovelace@", "hopper@"] {
            assert!(
                !all.contains(secret),
                "{args:?} shows {secret}\n{}",
                show(&o)
            );
        }
        assert!(all.contains("<encrypted>"), "{args:?}\n{}", show(&o));
        assert!(all.contains("Lovelace"), "{args:?}\n{}", show(&o));
        assert!(!all.contains("PII decrypted"), "{args:?}\n{}", show(&o));
    }
    let masked = jsonl(&sfsync(&["read", "Contact"], &cfg));
    assert_eq!(masked.len(), 2);
    assert_eq!(masked[0]["id"], "003A");
    assert_eq!(masked[0]["email"], "<encrypted>");
    assert_eq!(masked[0]["lastname"], "Lovelace");
    assert_eq!(masked[0]["birthdate"], "1841-04-27");
    assert_eq!(masked[0]["_sf_commit_ts"], "2026-11-21T09:30:00.000Z");

    // With --decrypt: the plaintext, and one stderr line naming the operator, object and count.
    let o = sfsync(&["read", "Contact", "--decrypt"], &cfg);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let rows = jsonl(&o);
    assert_eq!(rows[0]["email"], ADA);
    assert_eq!(rows[1]["email"], GRACE);
    let err = stderr(&o);
    let notice: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("PII decrypted"))
        .collect();
    assert_eq!(notice.len(), 1, "{}", show(&o));
    for want in ["test-operator", "Contact", "2 PII values", "2 current rows"] {
        assert!(notice[0].contains(want), "missing {want:?}: {}", notice[0]);
    }

    // One record's history, decrypted.
    let o = sfsync(
        &["read", "Contact", "--history", "--id", "003B", "--decrypt"],
        &cfg,
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let rows = jsonl(&o);
    assert_eq!(rows.len(), 1, "{}", show(&o));
    assert_eq!(rows[0]["email"], GRACE);
    assert_eq!(rows[0]["is_current"], true);
    assert!(!stdout(&o).contains(ADA));
    assert!(
        stderr(&o).contains("1 PII values of Contact (1 history rows)"),
        "{}",
        show(&o)
    );

    // An object without PII reads in full.
    let o = sfsync(&["read", "Account"], &cfg);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(jsonl(&o)[0]["name"], "Analytical Engines");
}

// ---- keys rotate ----

#[test]
fn rotation_to_a_new_key_leaves_only_the_new_key_needed() {
    let site = Site::new();
    write_sealed_warehouse(&site.db());
    let cfg_b = site.config(Some("key-b"));

    // The config names only the current key, so the CLI cannot open values under key-a: it
    // stops, says why, and (everything here being under key-a) changes nothing.
    let o = sfsync(&["keys", "rotate"], &cfg_b);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    for want in [
        "'key-a'",
        "add it as a [[pii.old_keys]] entry",
        "running it again is safe",
    ] {
        assert!(stderr(&o).contains(want), "missing {want:?}\n{}", show(&o));
    }
    assert!(site
        .texts("SELECT email FROM sf_contact")
        .iter()
        .all(|e| e.starts_with("enc:v1:key-a:")));

    // Rotation with key-a as an old key, through the store (the config route is
    // `rotation_with_the_old_key_in_the_config_reseals_everything_under_the_new_key`).
    block_on(async {
        let mut ring = Keyring::new("key-b", KEY_B);
        ring.add_old_key("key-a", KEY_A);
        let s = open_store(&site.db(), Some(ring)).await;
        let r = s.rotate_keys().await.unwrap();
        // 2 current emails + 2 history emails.
        assert_eq!(r.values_resealed, 4);
    });

    // From now on key-b alone opens everything.
    let o = sfsync(&["read", "Contact", "--decrypt"], &cfg_b);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let rows = jsonl(&o);
    assert_eq!(
        (&rows[0]["email"], &rows[1]["email"]),
        (&ADA.into(), &GRACE.into())
    );
    let o = sfsync(&["read", "Contact", "--history", "--decrypt"], &cfg_b);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stdout(&o).contains(GRACE), "{}", show(&o));
    // key-a alone no longer does.
    let o = sfsync(
        &["read", "Contact", "--decrypt"],
        &site.config(Some("key-a")),
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(stderr(&o).contains("'key-b'"), "{}", show(&o));

    // The CLI rotation under key-b now succeeds and has nothing left to do.
    let o = sfsync(&["keys", "rotate"], &cfg_b);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stdout(&o).contains("re-sealed under key 'key-b': 0 PII values, 0 raw payloads"),
        "{}",
        show(&o)
    );
    let o = sfsync(&["audit", "verify"], &cfg_b);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    for table in ["sf_contact", "sf_contact_history"] {
        let emails = site.texts(&format!("SELECT email FROM {table}"));
        assert_eq!(emails.len(), 2);
        assert!(
            emails.iter().all(|e| e.starts_with("enc:v1:key-b:")),
            "{table}: {emails:?}"
        );
    }
    for secret in [ADA, GRACE, "lovelace@", "hopper@"] {
        assert_eq!(
            site.files_containing(secret),
            Vec::<PathBuf>::new(),
            "{secret}"
        );
    }
    assert!(
        !site.files_containing("Lovelace").is_empty(),
        "the scan reads the data"
    );
}

/// The operator's procedure from `sfsync.example.toml`: data sealed under key A; the config
/// switches to key B with A in `[[pii.old_keys]]`; `keys rotate`; A removed from the config.
#[test]
fn rotation_with_the_old_key_in_the_config_reseals_everything_under_the_new_key() {
    let site = Site::new();
    write_sealed_warehouse(&site.db());
    let cfg_b = site.config(Some("key-b"));
    let cfg_b_with_a = site.config_with_old_keys(Some("key-b"), &["key-a"]);
    let key_hex = |k: [u8; 32]| k.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let no_key_material = |o: &Output| {
        let all = format!("{}{}", stdout(o), stderr(o));
        for k in [KEY_A, KEY_B] {
            assert!(
                !all.contains(&key_hex(k)),
                "key material printed\n{}",
                show(o)
            );
        }
    };

    // Before rotation, key B alone cannot open what key A sealed: the error names key-a and
    // says where it goes.
    let o = sfsync(&["read", "Contact", "--decrypt"], &cfg_b);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    for want in ["'key-a'", "unknown key id", "[[pii.old_keys]]"] {
        assert!(stderr(&o).contains(want), "missing {want:?}\n{}", show(&o));
    }
    assert!(!stdout(&o).contains(ADA), "{}", show(&o));

    // `config check` says an old key is configured (its id, not the key).
    let o = sfsync(&["config", "check"], &cfg_b_with_a);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stdout(&o).contains("pii key:    key-b (+1 old key for reading: key-a)"),
        "{}",
        show(&o)
    );
    no_key_material(&o);

    // With key-a as an old key, values sealed under it open before any rotation…
    let o = sfsync(&["read", "Contact", "--decrypt"], &cfg_b_with_a);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let rows = jsonl(&o);
    assert_eq!(
        (&rows[0]["email"], &rows[1]["email"]),
        (&ADA.into(), &GRACE.into())
    );
    let o = sfsync(&["audit", "verify"], &cfg_b_with_a);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    // …and `keys rotate` re-seals every one under key-b: 2 current + 2 history emails.
    let o = sfsync(&["keys", "rotate"], &cfg_b_with_a);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stdout(&o).contains("re-sealed under key 'key-b': 4 PII values"),
        "{}",
        show(&o)
    );
    assert!(
        stdout(&o).contains("nothing is sealed under the old keys any more (key-a)"),
        "{}",
        show(&o)
    );
    no_key_material(&o);
    for table in ["sf_contact", "sf_contact_history"] {
        let emails = site.texts(&format!("SELECT email FROM {table}"));
        assert_eq!(emails.len(), 2, "{table}");
        assert!(
            emails.iter().all(|e| e.starts_with("enc:v1:key-b:")),
            "{table}: {emails:?}"
        );
    }

    // Key A removed from the config: key B alone now opens everything.
    let o = sfsync(&["read", "Contact", "--decrypt"], &cfg_b);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let rows = jsonl(&o);
    assert_eq!(
        (&rows[0]["email"], &rows[1]["email"]),
        (&ADA.into(), &GRACE.into())
    );
    let o = sfsync(&["read", "Contact", "--history", "--decrypt"], &cfg_b);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let emails: Vec<_> = jsonl(&o).iter().map(|r| r["email"].clone()).collect();
    assert_eq!(emails, [ADA, GRACE], "{}", show(&o));
    let o = sfsync(&["audit", "verify"], &cfg_b);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    // A second rotation finds nothing left to do.
    let o = sfsync(&["keys", "rotate"], &cfg_b);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stdout(&o).contains("re-sealed under key 'key-b': 0 PII values"),
        "{}",
        show(&o)
    );
}

#[test]
fn keys_rotate_seals_a_field_declared_pii_after_it_was_stored() {
    let site = Site::new();
    // First synced with no PII fields (no key), then Email declared PII: the next run's model
    // marks the column, and rows stored before stay plaintext until rotation.
    block_on(async {
        let s = open_store(&site.db(), None).await;
        s.ensure_model(&contact_model(false, false)).await.unwrap();
        let batch = CuratedBatch {
            rows: vec![
                (
                    "Contact".into(),
                    current("003A", contact_values("Lovelace", ADA), T0, false),
                ),
                (
                    "Contact".into(),
                    current("003B", contact_values("Hopper", GRACE), T0, false),
                ),
            ],
            ..Default::default()
        };
        s.commit_curated("apply", None, &batch).await.unwrap();
        drop(s);
        let s = open_store(&site.db(), Some(Keyring::new("key-b", KEY_B))).await;
        s.ensure_model(&contact_model(true, false)).await.unwrap();
    });
    let cfg = site.config(Some("key-b"));
    assert_eq!(site.texts("SELECT email FROM sf_contact"), [ADA, GRACE]);

    let o = sfsync(&["keys", "rotate"], &cfg);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stdout(&o).contains("re-sealed under key 'key-b': 2 PII values"),
        "{}",
        show(&o)
    );
    assert!(site
        .texts("SELECT email FROM sf_contact")
        .iter()
        .all(|e| e.starts_with("enc:v1:key-b:")));

    let o = sfsync(&["read", "Contact"], &cfg);
    assert!(
        !stdout(&o).contains(ADA) && stdout(&o).contains("<encrypted>"),
        "{}",
        show(&o)
    );
    let o = sfsync(&["read", "Contact", "--decrypt"], &cfg);
    assert_eq!(jsonl(&o)[0]["email"], ADA, "{}", show(&o));
}

// ---- unusable input ----

#[test]
fn unusable_config_warehouse_or_object_exits_2_naming_it() {
    let site = Site::new();
    let cfg = site.config(Some("key-a"));

    // No config file.
    let missing = site.dir.path().join("nowhere.toml");
    for args in [
        &["audit", "verify"][..],
        &["keys", "rotate"],
        &["read", "Contact"],
    ] {
        let o = sfsync(args, &missing);
        assert_eq!(o.status.code(), Some(2), "{args:?}\n{}", show(&o));
        assert!(
            stderr(&o).contains("nowhere.toml"),
            "{args:?}\n{}",
            show(&o)
        );
        assert!(
            stderr(&o).contains("cannot read the config file"),
            "{}",
            show(&o)
        );
    }

    // A config whose SQLite warehouse does not exist: named, and not created.
    let o = sfsync(&["audit", "verify"], &cfg);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        stderr(&o).contains("warehouse.db does not exist"),
        "{}",
        show(&o)
    );
    assert!(!site.db().exists());

    write_sealed_warehouse(&site.db());
    // An object the config does not sync.
    let o = sfsync(&["read", "Lead"], &cfg);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        stderr(&o).contains("object 'Lead' is not configured"),
        "{}",
        show(&o)
    );
    assert!(
        stderr(&o).contains("configured objects: Contact, Account"),
        "{}",
        show(&o)
    );
    assert!(stdout(&o).is_empty());

    // No [pii] key: no rotation, no decryption.
    let no_pii = site.config(None);
    let o = sfsync(&["keys", "rotate"], &no_pii);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(stderr(&o).contains("no [pii] table"), "{}", show(&o));
    let o = sfsync(&["read", "Account", "--decrypt"], &no_pii);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        stderr(&o).contains("--decrypt needs the [pii] key"),
        "{}",
        show(&o)
    );
}

/// Several processes creating one new warehouse at the same moment (an operator's command
/// beside a starting `sfsync run`) all succeed, on one layout: the raw change log in its own
/// file. (Fixed bugs: switching a new file to WAL answered "database is locked" without
/// waiting, and an opener could pick the single-file layout while another was still creating
/// the change-log file.) Repeated: the race is narrow.
#[test]
fn processes_creating_one_warehouse_at_once_all_succeed_on_one_layout() {
    for round in 0..80 {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("client-secret"), "s3cret").unwrap();
        let config = dir.path().join("sfsync.toml");
        std::fs::write(
            &config,
            "[salesforce]\ninstance_url = \"https://example.my.salesforce.com\"\n\n\
             [salesforce.auth]\ntype = \"client_credentials\"\nclient_id = \"test-client\"\n\
             client_secret = { file = \"client-secret\" }\n\n[[objects]]\nname = \"Account\"\n\n\
             [warehouse]\ntype = \"sqlite\"\npath = \"warehouse.db\"\n",
        )
        .unwrap();
        let children: Vec<_> = (0..6)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_sfsync"))
                    .args(["backfill", "Account", "--no-wait", "--config"])
                    .arg(&config)
                    .env("SFSYNC_LOG", "warn")
                    .env("USER", "test-operator")
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("run sfsync")
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "round {round}: {}", show(&out));
        }
        let db = dir.path().join("warehouse.db");
        let log = sfsync_store::sqlite::change_log_path(&db);
        assert!(log.exists(), "round {round}: the change-log file exists");
        let conn = rusqlite::Connection::open(&db).unwrap();
        let jobs: i64 = conn
            .query_row("SELECT count(*) FROM sync_jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(jobs, 6, "round {round}: every request recorded once");
    }
}
