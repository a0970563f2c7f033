//! One behavioural suite for the data-quality state of the store (quarantine entries and their
//! status changes, operator actions, late-parent alerts, failure counts and samples, sealing of
//! held changes), run against SQLite (temp file) and Postgres (`SFSYNC_TEST_POSTGRES_URL`, or a
//! throwaway server started by the tests).

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use sfsync_core::{ErrorClass, RecordVersion, ReplayId};
use sfsync_store::*;

const ACCOUNT: &str = "Account";
const CONTACT: &str = "Contact";
const PRODUCT: &str = "Product2";

/// Opens a store on the same underlying database each time, and reads it behind the store's back.
#[async_trait]
trait Backend: Send + Sync {
    async fn open(&self, keyring: Option<Arc<Keyring>>) -> Box<dyn Warehouse>;
    /// A single blob/bytea column of every row of `sql`.
    async fn blobs(&self, sql: &str) -> Vec<Vec<u8>>;
}

struct SqliteBackend {
    dir: tempfile::TempDir,
}

impl SqliteBackend {
    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("sfsync.db")
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
    async fn blobs(&self, sql: &str) -> Vec<Vec<u8>> {
        let c = rusqlite::Connection::open(self.path()).unwrap();
        let mut st = c.prepare(sql).unwrap();
        let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap();
        rows.map(|r| r.unwrap()).collect()
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

#[async_trait]
impl Backend for PostgresBackend {
    async fn open(&self, keyring: Option<Arc<Keyring>>) -> Box<dyn Warehouse> {
        let s = PostgresChangeLog::connect_with(&self.config)
            .await
            .expect("connect to Postgres store");
        s.set_keyring(keyring);
        Box::new(s)
    }
    async fn blobs(&self, sql: &str) -> Vec<Vec<u8>> {
        let (client, conn) = self.config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let rows = client.query(sql, &[]).await.unwrap();
        rows.iter().map(|r| r.get(0)).collect()
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

const T0: i64 = 1_795_253_400_000; // 2026-11-21T09:30:00.000Z

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

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

fn plain_model() -> ObjectModel {
    ObjectModel {
        object: ACCOUNT.into(),
        table: "sf_account".into(),
        columns: vec![
            column("id", ColumnType::Text, false),
            column("name", ColumnType::Text, false),
        ],
        history: None,
    }
}

fn pii_model() -> ObjectModel {
    ObjectModel {
        object: CONTACT.into(),
        table: "sf_contact".into(),
        columns: vec![
            column("id", ColumnType::Text, false),
            column("name", ColumnType::Text, false),
            column("email", ColumnType::Text, true),
        ],
        history: None,
    }
}

/// An object with a `unique`-style code, a number and a PII column.
fn coded_model() -> ObjectModel {
    ObjectModel {
        object: PRODUCT.into(),
        table: "sf_product2".into(),
        columns: vec![
            column("id", ColumnType::Text, false),
            column("code__c", ColumnType::Text, false),
            column("number__c", ColumnType::Integer, false),
            column("email", ColumnType::Text, true),
        ],
        history: None,
    }
}

/// A row of [`coded_model`]; `code: None` leaves the column unset.
fn coded(id: &str, code: Option<&str>, number: i64, deleted: bool) -> (String, CurrentRow) {
    let mut r = row(id, "unused", T0);
    r.values = BTreeMap::from([
        ("number__c".to_string(), Value::Int(number)),
        (
            "email".to_string(),
            Value::Text(format!("{id}@example.com")),
        ),
    ]);
    if let Some(code) = code {
        r.values
            .insert("code__c".to_string(), Value::Text(code.into()));
    }
    r.deleted = deleted;
    (PRODUCT.to_string(), r)
}

fn row(id: &str, name: &str, ts: i64) -> CurrentRow {
    let version = RecordVersion {
        commit_timestamp: ts,
        commit_number: 1,
        sequence_number: 0,
    };
    CurrentRow {
        id: id.into(),
        values: BTreeMap::from([("name".to_string(), Value::Text(name.into()))]),
        meta: SyncMeta {
            version,
            change_type: "UPDATE".into(),
            source: ChangeSource::Cdc,
            transaction_key: format!("tx-{ts}"),
            replay_id: Some(ReplayId::from_bytes(vec![1])),
            run_id: "run-1".into(),
            applied_at_ms: ts + 5,
            origin_client: None,
        },
        deleted: false,
        base_version: version,
        field_versions: None,
        history_version: None,
        partial: false,
    }
}

/// A held change of `object` `record_id`, with its change body (or only its raw-log offset).
fn entry(object: &str, record_id: &str, rule: &str, change: Option<&[u8]>) -> QuarantineEntry {
    QuarantineEntry {
        object: object.into(),
        record_id: record_id.into(),
        rule: rule.into(),
        reason: format!("{rule} failed"),
        parent: None,
        event_key: format!("tx-{record_id}/1/{record_id}"),
        log_offset: Some(record_id.len() as u64 + 40),
        commit_timestamp_ms: T0,
        change: change.map(<[u8]>::to_vec),
        alert_after_ms: None,
        run_id: "run-1".into(),
    }
}

fn failure(run_id: &str, record_id: &str, value: Option<&str>) -> DqFailure {
    DqFailure {
        run_id: run_id.into(),
        object: ACCOUNT.into(),
        record_id: record_id.into(),
        rule: "Name.length".into(),
        severity: "warn".into(),
        field: "Name".into(),
        value: value.map(str::to_string),
        message: "Name is longer than 80 characters".into(),
        event_key: format!("tx-{record_id}/1/{record_id}"),
    }
}

fn count(run_id: &str, rule: &str, severity: &str, n: [u64; 3]) -> DqCount {
    DqCount {
        run_id: run_id.into(),
        object: ACCOUNT.into(),
        rule: rule.into(),
        severity: severity.into(),
        failed: n[0],
        stored: n[1],
        over_cap: n[2],
    }
}

async fn ready(b: &dyn Backend) -> Box<dyn Warehouse> {
    let w = b.open(None).await;
    w.ensure_model(&plain_model()).await.unwrap();
    w
}

/// Commits `entries` as a batch of their own and returns their ids, in order.
async fn hold(w: &dyn Warehouse, entries: Vec<QuarantineEntry>) -> Vec<i64> {
    let before = w
        .quarantine_list(&QuarantineFilter::default())
        .await
        .unwrap()
        .last()
        .map_or(0, |r| r.id);
    let n = entries.len();
    w.commit_curated(
        "apply",
        None,
        &CuratedBatch {
            quarantine: entries,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let ids: Vec<i64> = w
        .quarantine_list(&QuarantineFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .filter(|&id| id > before)
        .collect();
    assert_eq!(ids.len(), n);
    ids
}

async fn one(w: &dyn Warehouse, id: i64) -> QuarantineRecord {
    let mut got = w
        .quarantine_list(&QuarantineFilter {
            ids: vec![id],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "quarantine entry {id}");
    got.remove(0)
}

async fn ids_of(w: &dyn Warehouse, filter: QuarantineFilter) -> Vec<i64> {
    w.quarantine_list(&filter)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect()
}

// ---- cases ----

async fn entries_counts_and_samples_round_trip(b: &dyn Backend) {
    let w = ready(b).await;
    let with_change = entry(
        ACCOUNT,
        "001A",
        "Name.regex",
        Some(b"planned change \x00\xff bytes"),
    );
    let mut compact = entry(ACCOUNT, "001B", "ParentId.reference", None);
    compact.parent = Some((ACCOUNT.into(), "001P".into()));
    compact.alert_after_ms = Some(T0 + 60_000);
    compact.log_offset = Some(u64::from(u32::MAX) + 7);
    compact.run_id = "run-2".into();
    let f1 = failure("run-1", "001C", Some("A very long name"));
    let before = now_ms();
    w.commit_curated(
        "apply",
        Some(3),
        &CuratedBatch {
            rows: vec![(ACCOUNT.into(), row("001C", "A very long name", T0))],
            quarantine: vec![with_change.clone(), compact.clone()],
            dq_failures: vec![f1.clone()],
            dq_counts: vec![
                count("run-1", "Name.regex", "error", [3, 2, 1]),
                count("run-1", "Name.length", "warn", [1, 1, 0]),
            ],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let after = now_ms();
    assert_eq!(w.applied_offset("apply").await.unwrap(), Some(3));

    let all = w
        .quarantine_list(&QuarantineFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].id < all[1].id, "oldest first");
    let (a, b_id) = (all[0].id, all[1].id);
    for (got, want) in all.iter().zip([&with_change, &compact]) {
        assert_eq!(
            &got.entry, want,
            "every field, the change bytes round-tripped"
        );
        assert_eq!(got.status, QuarantineStatus::Held);
        assert_eq!(got.attempts, 1);
        assert!((before..=after).contains(&got.first_seen_ms));
        assert_eq!(got.last_seen_ms, got.first_seen_ms);
        assert_eq!(
            (&got.alerted_at_ms, &got.resolved_at_ms),
            (&None, &None),
            "nothing raised or resolved yet"
        );
        assert_eq!((&got.resolved_by, &got.note), (&None, &None));
    }
    assert_eq!(w.quarantine_open_count().await.unwrap(), 2);

    // Each filter on its own, and together.
    let held = |statuses: Vec<QuarantineStatus>| QuarantineFilter {
        statuses,
        ..Default::default()
    };
    assert_eq!(
        ids_of(&*w, held(vec![QuarantineStatus::Held])).await,
        [a, b_id]
    );
    assert_eq!(ids_of(&*w, held(open_statuses())).await, [a, b_id]);
    assert!(ids_of(&*w, held(vec![QuarantineStatus::Released]))
        .await
        .is_empty());
    let of_object = |object: &str, ids: &[&str]| QuarantineFilter {
        object: Some(object.into()),
        record_ids: ids.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    assert_eq!(ids_of(&*w, of_object(ACCOUNT, &[])).await, [a, b_id]);
    assert_eq!(ids_of(&*w, of_object(ACCOUNT, &["001B"])).await, [b_id]);
    assert_eq!(
        ids_of(&*w, of_object(ACCOUNT, &["001A", "001B", "001X"])).await,
        [a, b_id]
    );
    assert!(ids_of(&*w, of_object(CONTACT, &[])).await.is_empty());
    assert_eq!(
        ids_of(
            &*w,
            QuarantineFilter::open_of(ACCOUNT, &["001A".to_string()])
        )
        .await,
        [a]
    );
    let waiting_for = |ids: &[&str]| QuarantineFilter {
        parent: Some((ACCOUNT.into(), ids.iter().map(|s| s.to_string()).collect())),
        ..Default::default()
    };
    assert_eq!(ids_of(&*w, waiting_for(&["001P", "001Q"])).await, [b_id]);
    assert!(ids_of(&*w, waiting_for(&["001Q"])).await.is_empty());
    assert_eq!(
        ids_of(
            &*w,
            QuarantineFilter {
                ids: vec![b_id, a],
                limit: 1,
                ..Default::default()
            }
        )
        .await,
        [a]
    );
    assert!(ids_of(
        &*w,
        QuarantineFilter {
            ids: vec![b_id + 100],
            ..Default::default()
        }
    )
    .await
    .is_empty());
    assert_eq!(
        ids_of(
            &*w,
            QuarantineFilter {
                ids: vec![a, b_id],
                object: Some(ACCOUNT.into()),
                record_ids: vec!["001A".into()],
                statuses: vec![QuarantineStatus::Held],
                ..Default::default()
            }
        )
        .await,
        [a]
    );

    // Counts add up per (run, object, rule); samples come newest first.
    let f2 = failure("run-2", "001D", None);
    w.commit_curated(
        "apply",
        Some(4),
        &CuratedBatch {
            dq_failures: vec![f2.clone()],
            dq_counts: vec![
                count("run-1", "Name.regex", "error", [1, 1, 0]),
                count("run-2", "Name.regex", "error", [2, 0, 2]),
            ],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        w.dq_counts(Some("run-1")).await.unwrap(),
        [
            count("run-1", "Name.length", "warn", [1, 1, 0]),
            count("run-1", "Name.regex", "error", [4, 3, 1]),
        ]
    );
    assert_eq!(
        w.dq_counts(Some("run-2")).await.unwrap(),
        [count("run-2", "Name.regex", "error", [2, 0, 2])]
    );
    assert_eq!(
        w.dq_counts(None).await.unwrap(),
        [
            count("*", "Name.length", "warn", [1, 1, 0]),
            count("*", "Name.regex", "error", [6, 3, 3]),
        ]
    );
    assert!(w.dq_counts(Some("run-9")).await.unwrap().is_empty());
    assert_eq!(
        w.dq_samples(None, 10).await.unwrap(),
        [f2.clone(), f1.clone()]
    );
    assert_eq!(w.dq_samples(None, 1).await.unwrap(), [f2]);
    assert_eq!(w.dq_samples(Some("run-1"), 10).await.unwrap(), [f1]);
    assert!(w.dq_samples(Some("run-9"), 10).await.unwrap().is_empty());
}

async fn releases_and_rechecks_commit_with_their_batch(b: &dyn Backend) {
    let w = ready(b).await;
    let ids = hold(
        &*w,
        vec![
            entry(ACCOUNT, "001A", "Name.regex", Some(b"a")),
            entry(ACCOUNT, "001B", "ParentId.reference", Some(b"b")),
        ],
    )
    .await;
    let (a, b_id) = (ids[0], ids[1]);
    let held_a = one(&*w, a).await;

    w.commit_curated(
        "apply",
        Some(10),
        &CuratedBatch {
            rows: vec![(ACCOUNT.into(), row("001A", "Released Co", T0 + 1))],
            quarantine_updates: vec![
                QuarantineUpdate::Released { id: a },
                QuarantineUpdate::StillHeld {
                    id: b_id,
                    rule: "ParentId.late".into(),
                    reason: "parent 001Q not arrived".into(),
                    parent: Some((ACCOUNT.into(), "001Q".into())),
                },
            ],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let got = one(&*w, a).await;
    assert_eq!(got.status, QuarantineStatus::Released);
    assert_eq!(got.attempts, 2);
    let resolved = got.resolved_at_ms.expect("resolved_at set on release");
    assert!(resolved >= held_a.first_seen_ms);
    assert_eq!(got.last_seen_ms, resolved);
    assert_eq!(got.first_seen_ms, held_a.first_seen_ms);
    assert_eq!(got.resolved_by.as_deref(), Some("sfsync"));
    assert_eq!(got.entry, held_a.entry, "the change itself is kept");
    let current = w.read_current(ACCOUNT).await.unwrap();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].id, "001A");

    let got = one(&*w, b_id).await;
    assert_eq!(got.status, QuarantineStatus::Held);
    assert_eq!(got.attempts, 2);
    assert_eq!(got.entry.rule, "ParentId.late");
    assert_eq!(got.entry.reason, "parent 001Q not arrived");
    assert_eq!(got.entry.parent, Some((ACCOUNT.into(), "001Q".into())));
    assert_eq!(got.resolved_at_ms, None);
    assert!(got.last_seen_ms >= got.first_seen_ms);
    assert_eq!(w.quarantine_open_count().await.unwrap(), 1);

    // Updating an entry that is no longer open fails the whole batch: no row, no new entry, no
    // sample, no count, no offset, and the other update of the batch is undone too.
    for update in [
        QuarantineUpdate::Released { id: a },
        QuarantineUpdate::StillHeld {
            id: a,
            rule: "x".into(),
            reason: "x".into(),
            parent: None,
        },
        QuarantineUpdate::Released { id: b_id + 1000 },
    ] {
        let err = w
            .commit_curated(
                "apply",
                Some(11),
                &CuratedBatch {
                    rows: vec![(ACCOUNT.into(), row("001Z", "Never", T0 + 2))],
                    quarantine: vec![entry(ACCOUNT, "001Y", "Name.regex", Some(b"y"))],
                    quarantine_updates: vec![
                        QuarantineUpdate::StillHeld {
                            id: b_id,
                            rule: "Other.rule".into(),
                            reason: "other".into(),
                            parent: None,
                        },
                        update.clone(),
                    ],
                    dq_failures: vec![failure("run-1", "001Z", None)],
                    dq_counts: vec![count("run-1", "Name.regex", "error", [1, 1, 0])],
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::User, "{update:?}: {err}");
        assert!(err.to_string().contains("is not open"), "{err}");
        let current = w.read_current(ACCOUNT).await.unwrap();
        assert!(current.iter().all(|r| r.id != "001Z"), "{update:?}");
        assert_eq!(
            ids_of(&*w, QuarantineFilter::default()).await,
            [a, b_id],
            "{update:?}"
        );
        let got = one(&*w, b_id).await;
        assert_eq!(
            (got.entry.rule.as_str(), got.attempts),
            ("ParentId.late", 2)
        );
        assert_eq!(one(&*w, a).await.attempts, 2);
        assert!(w.dq_samples(None, 10).await.unwrap().is_empty());
        assert!(w.dq_counts(None).await.unwrap().is_empty());
        assert_eq!(w.applied_offset("apply").await.unwrap(), Some(10));
    }
}

async fn operator_actions(b: &dyn Backend) {
    let w = ready(b).await;
    let ids = hold(
        &*w,
        vec![
            entry(ACCOUNT, "001A", "Name.regex", Some(b"a1")),
            entry(ACCOUNT, "001A", "record.held", Some(b"a2")),
            entry(ACCOUNT, "001A", "Other.rule", Some(b"a3")),
            entry(ACCOUNT, "001B", "record.held", Some(b"b1")),
            entry(ACCOUNT, "001C", "Name.regex", Some(b"c1")),
            entry(ACCOUNT, "001D", "Name.regex", Some(b"d1")),
        ],
    )
    .await;
    let [a1, a2, a3, b1, c1, d1] = ids[..] else {
        unreachable!()
    };

    let before = now_ms();
    assert_eq!(
        w.quarantine_act(
            &[c1],
            QuarantineAction::Release,
            "ops@example.com",
            "looks fine"
        )
        .await
        .unwrap(),
        [(
            c1,
            QuarantineActOutcome::Done(QuarantineStatus::ReleaseRequested)
        )]
    );
    let got = one(&*w, c1).await;
    assert_eq!(got.status, QuarantineStatus::ReleaseRequested);
    assert_eq!(got.resolved_by.as_deref(), Some("ops@example.com"));
    assert_eq!(got.note.as_deref(), Some("looks fine"));
    assert_eq!(got.resolved_at_ms, None, "a request, not a resolution");
    assert!(got.last_seen_ms >= before);

    let missing = d1 + 1000;
    assert_eq!(
        w.quarantine_act(
            &[d1, missing],
            QuarantineAction::ForceRelease,
            "ops",
            "urgent"
        )
        .await
        .unwrap(),
        [
            (
                d1,
                QuarantineActOutcome::Done(QuarantineStatus::ForceRequested)
            ),
            (missing, QuarantineActOutcome::NotFound),
        ]
    );
    let got = one(&*w, d1).await;
    assert_eq!(got.status, QuarantineStatus::ForceRequested);
    assert_eq!(
        (got.resolved_by.as_deref(), got.note.as_deref()),
        (Some("ops"), Some("urgent"))
    );

    // A discard resolves the entry and puts the record's changes held only behind it (rule
    // `record.held`, still held) up for a re-check; other records and other rules stay held.
    let before = now_ms();
    assert_eq!(
        w.quarantine_act(&[a1], QuarantineAction::Discard, "lead", "bad data")
            .await
            .unwrap(),
        [(a1, QuarantineActOutcome::Done(QuarantineStatus::Discarded))]
    );
    let got = one(&*w, a1).await;
    assert_eq!(got.status, QuarantineStatus::Discarded);
    assert!(got.resolved_at_ms.expect("resolved_at set on discard") >= before);
    assert_eq!(
        (got.resolved_by.as_deref(), got.note.as_deref()),
        (Some("lead"), Some("bad data"))
    );
    assert_eq!(
        one(&*w, a2).await.status,
        QuarantineStatus::ReleaseRequested
    );
    assert_eq!(one(&*w, a2).await.resolved_by, None);
    assert_eq!(one(&*w, a3).await.status, QuarantineStatus::Held);
    assert_eq!(one(&*w, b1).await.status, QuarantineStatus::Held);

    // Resolved entries are reported, not changed; open ones in the same call still are.
    assert_eq!(
        w.quarantine_act(&[a1, c1], QuarantineAction::Release, "ops", "again")
            .await
            .unwrap(),
        [
            (
                a1,
                QuarantineActOutcome::AlreadyResolved(QuarantineStatus::Discarded)
            ),
            (
                c1,
                QuarantineActOutcome::Done(QuarantineStatus::ReleaseRequested)
            ),
        ]
    );
    assert_eq!(one(&*w, a1).await.note.as_deref(), Some("bad data"));
    assert_eq!(one(&*w, c1).await.note.as_deref(), Some("again"));

    // Released by the apply stage: the operator who asked stays on record.
    w.commit_curated(
        "apply",
        None,
        &CuratedBatch {
            rows: vec![(ACCOUNT.into(), row("001C", "C", T0))],
            quarantine_updates: vec![QuarantineUpdate::Released { id: c1 }],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(one(&*w, c1).await.resolved_by.as_deref(), Some("ops"));
    assert_eq!(
        w.quarantine_act(&[c1, a3], QuarantineAction::Discard, "ops", "drop")
            .await
            .unwrap(),
        [
            (
                c1,
                QuarantineActOutcome::AlreadyResolved(QuarantineStatus::Released)
            ),
            (a3, QuarantineActOutcome::Done(QuarantineStatus::Discarded)),
        ]
    );
    assert_eq!(one(&*w, c1).await.status, QuarantineStatus::Released);
    // Open: a2 (release requested), b1 (held), d1 (force requested).
    assert_eq!(w.quarantine_open_count().await.unwrap(), 3);
    assert_eq!(
        ids_of(
            &*w,
            QuarantineFilter {
                statuses: open_statuses(),
                ..Default::default()
            }
        )
        .await,
        [a2, b1, d1]
    );
    assert!(w
        .quarantine_act(&[], QuarantineAction::Discard, "ops", "")
        .await
        .unwrap()
        .is_empty());
}

async fn late_parent_alerts(b: &dyn Backend) {
    let w = ready(b).await;
    let late = |record: &str, after: Option<i64>| {
        let mut e = entry(ACCOUNT, record, "ParentId.reference", Some(b"late"));
        e.parent = Some((ACCOUNT.into(), "001P".into()));
        e.alert_after_ms = after;
        e
    };
    let ids = hold(
        &*w,
        vec![
            late("001A", Some(T0 + 1_000)),
            late("001B", Some(T0 + 5_000)),
            late("001C", None),
        ],
    )
    .await;
    let due = |before: i64| QuarantineFilter {
        alert_due_before_ms: Some(before),
        ..Default::default()
    };
    assert!(
        ids_of(&*w, due(T0 + 1_000)).await.is_empty(),
        "strictly before"
    );
    assert_eq!(ids_of(&*w, due(T0 + 2_000)).await, [ids[0]]);
    assert_eq!(ids_of(&*w, due(T0 + 10_000)).await, [ids[0], ids[1]]);

    let before = now_ms();
    w.quarantine_mark_alerted(&[ids[0]]).await.unwrap();
    w.quarantine_mark_alerted(&[]).await.unwrap();
    assert_eq!(ids_of(&*w, due(T0 + 10_000)).await, [ids[1]]);
    let got = one(&*w, ids[0]).await;
    assert!(got.alerted_at_ms.expect("alerted_at set") >= before);
    assert_eq!(
        got.status,
        QuarantineStatus::Held,
        "an alert changes nothing else"
    );
    assert_eq!(one(&*w, ids[1]).await.alerted_at_ms, None);

    w.quarantine_mark_alerted(&[ids[1], ids[2]]).await.unwrap();
    assert!(ids_of(&*w, due(i64::MAX)).await.is_empty());
    assert!(one(&*w, ids[2]).await.alerted_at_ms.is_some());
}

async fn held_changes_of_pii_objects_sealed(b: &dyn Backend) {
    let k = key("k1", 7);
    let w = b.open(Some(k.clone())).await;
    w.ensure_model(&plain_model()).await.unwrap();
    w.ensure_model(&pii_model()).await.unwrap();
    let contact = entry(
        CONTACT,
        "003A",
        "Email.regex",
        Some(b"ada@example.com planned change"),
    );
    let account = entry(
        ACCOUNT,
        "001A",
        "Name.regex",
        Some(b"account planned change"),
    );
    let compact = entry(CONTACT, "003B", "Email.regex", None);
    hold(&*w, vec![contact.clone(), account.clone(), compact.clone()]).await;

    let stored = b
        .blobs("SELECT change FROM quarantine WHERE change IS NOT NULL ORDER BY id")
        .await;
    assert_eq!(stored.len(), 2, "the compact entry has no change");
    assert!(stored[0].starts_with(b"SFE1"), "sealed: {:?}", stored[0]);
    assert!(!String::from_utf8_lossy(&stored[0]).contains("ada@"));
    assert!(stored[1].starts_with(b"SFL1"), "compressed, not sealed");
    let got: Vec<QuarantineEntry> = w
        .quarantine_list(&QuarantineFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.entry)
        .collect();
    assert_eq!(got, [contact.clone(), account.clone(), compact.clone()]);

    // Without the keyring, a sealed change cannot be read nor a new one of a PII object held;
    // the rest still can.
    drop(w);
    let w = b.open(None).await;
    let err = w
        .quarantine_list(&QuarantineFilter::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("keyring"), "{err}");
    let got = w
        .quarantine_list(&QuarantineFilter {
            object: Some(ACCOUNT.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].entry, account);
    let err = w
        .commit_curated(
            "apply",
            None,
            &CuratedBatch {
                quarantine: vec![entry(CONTACT, "003C", "Email.regex", Some(b"x"))],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("keyring"), "{err}");
    assert_eq!(w.quarantine_open_count().await.unwrap(), 3);

    // With the keyring back, the sealed change opens again.
    drop(w);
    let w = b.open(Some(k)).await;
    let got = w
        .quarantine_list(&QuarantineFilter::open_of(CONTACT, &["003A".to_string()]))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].entry, contact);
}

async fn ids_by_value_finds_live_rows(b: &dyn Backend) {
    let w = b.open(Some(key("k1", 7))).await;
    w.ensure_model(&coded_model()).await.unwrap();
    w.commit_curated(
        "apply",
        Some(1),
        &CuratedBatch {
            rows: vec![
                coded("P1", Some("A-1"), 42, false),
                coded("P2", Some("A-1"), 7, false),
                coded("P3", Some("B-2"), 8, false),
                coded("P4", Some("C-3"), 9, true),
                coded("P5", None, 10, false),
                coded("P6", Some("X-5999"), 11, false),
            ],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let look = |column: &'static str, values: Vec<String>| {
        let w = &w;
        async move { w.ids_by_value(PRODUCT, column, &values).await }
    };
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let pairs = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };

    // Every live holder of a value, ordered; a deleted row, a missing value and a repeated one
    // add nothing.
    assert_eq!(
        look("code__c", strings(&["B-2", "A-1", "C-3", "missing", "A-1"]))
            .await
            .unwrap(),
        pairs(&[("A-1", "P1"), ("A-1", "P2"), ("B-2", "P3")])
    );
    assert!(look("code__c", Vec::new()).await.unwrap().is_empty());
    // Compared as text on a non-text column, and on the record id itself.
    assert_eq!(
        look("number__c", strings(&["42", "7", "9", "x"]))
            .await
            .unwrap(),
        pairs(&[("42", "P1"), ("7", "P2")])
    );
    assert_eq!(
        look("id", strings(&["P4", "P5"])).await.unwrap(),
        pairs(&[("P5", "P5")]),
        "P4 is deleted"
    );
    // Many values: more than one chunk on either backend.
    let mut many: Vec<String> = (0..6_000).map(|i| format!("X-{i}")).collect();
    many.push("A-1".into());
    assert_eq!(
        look("code__c", many).await.unwrap(),
        pairs(&[("A-1", "P1"), ("A-1", "P2"), ("X-5999", "P6")])
    );

    // A row deleted later drops out.
    w.commit_curated(
        "apply",
        Some(2),
        &CuratedBatch {
            rows: vec![coded("P3", Some("B-2"), 8, true)],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(look("code__c", strings(&["B-2"])).await.unwrap().is_empty());

    // An unknown or PII column, or an object without a model, is the caller's error.
    for (column, says) in [("nope__c", "is not a column"), ("email", "is PII")] {
        let err = look(column, strings(&["x"])).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::User, "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("'{column}'")), "{text}");
        assert!(text.contains(&format!("'{PRODUCT}'")), "{text}");
        assert!(text.contains(says), "{text}");
    }
    let err = w
        .ids_by_value("Nope", "code__c", &strings(&["A-1"]))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::User, "{err}");
    assert!(err.to_string().contains("'Nope'"), "{err}");
}

async fn key_rotation_reseals_held_changes(b: &dyn Backend) {
    let w = b.open(Some(key("k1", 7))).await;
    w.ensure_model(&plain_model()).await.unwrap();
    w.ensure_model(&pii_model()).await.unwrap();
    let contact = entry(
        CONTACT,
        "003A",
        "Email.regex",
        Some(b"ada@example.com planned change"),
    );
    let account = entry(
        ACCOUNT,
        "001A",
        "Name.regex",
        Some(b"account planned change"),
    );
    let compact = entry(CONTACT, "003B", "Email.regex", None);
    hold(&*w, vec![contact.clone(), account.clone(), compact.clone()]).await;
    let changes = "SELECT change FROM quarantine WHERE change IS NOT NULL ORDER BY id";
    let before = b.blobs(changes).await;
    assert_eq!(pii::sealed_bytes_key_id(&before[0]), Some("k1"));
    drop(w);

    let mut ring = Keyring::new("k2", [8; 32]);
    ring.add_old_key("k1", [7; 32]);
    let w = b.open(Some(Arc::new(ring))).await;
    let report = w.rotate_keys().await.unwrap();
    assert_eq!(report.new_key_id, "k2");
    // The Contact change; the Account one has no PII, the compact entry no change.
    assert_eq!(
        (report.values_resealed, report.raw_payloads_resealed),
        (0, 1)
    );
    let again = w.rotate_keys().await.unwrap();
    assert_eq!((again.values_resealed, again.raw_payloads_resealed), (0, 0));
    drop(w);

    // Only the new key from now on.
    let w = b.open(Some(key("k2", 8))).await;
    let got: Vec<QuarantineEntry> = w
        .quarantine_list(&QuarantineFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.entry)
        .collect();
    assert_eq!(got, [contact, account, compact]);
    let after = b.blobs(changes).await;
    assert_eq!(pii::sealed_bytes_key_id(&after[0]), Some("k2"));
    assert_eq!(after[1], before[1], "the Account change is left as it was");
    drop(w);
    let w = b.open(Some(key("k1", 7))).await;
    assert!(w
        .quarantine_list(&QuarantineFilter::open_of(CONTACT, &["003A".to_string()]))
        .await
        .is_err());
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
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
    entries_counts_and_samples_round_trip,
    releases_and_rechecks_commit_with_their_batch,
    operator_actions,
    late_parent_alerts,
    held_changes_of_pii_objects_sealed,
    ids_by_value_finds_live_rows,
    key_rotation_reseals_held_changes,
);
