//! One behavioural suite for the raw change log, run against SQLite (temp file) and Postgres
//! (`SFSYNC_TEST_POSTGRES_URL`, or a throwaway server started by the tests).

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use sfsync_core::{ChangeType, ErrorClass, EventKey, RecordVersion, ReplayId};
use sfsync_store::{
    ChangeLog, LogMark, LogPoint, PostgresChangeLog, RawChange, SqliteChangeLog, StoreError,
};

/// Opens a store on the same underlying database each time.
#[async_trait]
trait Backend: Send + Sync {
    async fn open(&self) -> Box<dyn ChangeLog>;
}

struct SqliteBackend {
    dir: tempfile::TempDir,
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn open(&self) -> Box<dyn ChangeLog> {
        Box::new(
            SqliteChangeLog::open(self.dir.path().join("sfsync.db"))
                .await
                .expect("open SQLite store"),
        )
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
    async fn open(&self) -> Box<dyn ChangeLog> {
        Box::new(
            PostgresChangeLog::connect_with(&self.config)
                .await
                .expect("connect to Postgres store"),
        )
    }
}

/// A fresh schema on the test server, so tests run in parallel without seeing each other.
async fn postgres_backend() -> PostgresBackend {
    let (config, server) = support::pg::fresh_schema().await;
    PostgresBackend {
        config,
        _server: server,
    }
}

fn change(key: &str, entity: &str, replay: &[u8], payload: &[u8]) -> RawChange {
    RawChange {
        event_key: EventKey::new(key, 1, "001000000000001AAA"),
        replay_id: ReplayId::from_bytes(replay.to_vec()),
        schema_id: "schema-1".into(),
        entity: entity.into(),
        change_type: ChangeType::Update,
        version: RecordVersion {
            commit_timestamp: 1_700_000_000_000,
            commit_number: 42,
            sequence_number: 1,
        },
        payload: payload.to_vec().into(),
    }
}

fn batch(prefix: &str, n: usize) -> Vec<RawChange> {
    (0..n)
        .map(|i| {
            change(
                &format!("{prefix}-{i}"),
                "Account",
                &[0, 0, 1, i as u8],
                format!("payload {prefix} {i}").as_bytes(),
            )
        })
        .collect()
}

async fn all(log: &dyn ChangeLog) -> Vec<sfsync_store::LoggedChange> {
    log.read_from(0, usize::MAX).await.expect("read log")
}

async fn append_and_checkpoint_commit_together(b: &dyn Backend) {
    let log = b.open().await;
    assert_eq!(
        log.checkpoint("/data/AccountChangeEvent").await.unwrap(),
        None
    );
    let changes = batch("tx-a", 3);
    let cp = ReplayId::from_bytes(vec![0, 0, 1, 2]);
    let out = log
        .append_batch("/data/AccountChangeEvent", &changes, &cp)
        .await
        .unwrap();
    assert_eq!((out.appended, out.duplicates), (3, 0));
    assert_eq!(
        log.checkpoint("/data/AccountChangeEvent").await.unwrap(),
        Some(cp)
    );
    let got = all(&*log).await;
    assert_eq!(got.len(), 3);
    assert_eq!(out.last_offset, Some(got[2].offset));
    for (g, c) in got.iter().zip(&changes) {
        assert_eq!(&g.change, c);
        assert_eq!(g.channel, "/data/AccountChangeEvent");
    }
    // An empty batch only moves the checkpoint.
    let cp2 = ReplayId::from_bytes(vec![9]);
    let out = log
        .append_batch("/data/AccountChangeEvent", &[], &cp2)
        .await
        .unwrap();
    assert_eq!(
        (out.appended, out.duplicates, out.last_offset),
        (0, 0, None)
    );
    assert_eq!(
        log.checkpoint("/data/AccountChangeEvent").await.unwrap(),
        Some(cp2)
    );
}

async fn failed_batch_writes_nothing(b: &dyn Backend) {
    let log = b.open().await;
    let ch = "/data/ChangeEvents";
    let first = ReplayId::from_bytes(vec![1]);
    log.append_batch(ch, &batch("good", 2), &first)
        .await
        .unwrap();

    // The third item violates a constraint (empty entity) after two items were inserted.
    let mut bad = batch("bad", 4);
    bad[2].entity = String::new();
    let err = log
        .append_batch(ch, &bad, &ReplayId::from_bytes(vec![2]))
        .await
        .expect_err("a batch with a bad item must fail");
    match &err {
        StoreError::RejectedChange {
            index,
            event_key,
            channel,
            ..
        } => {
            assert_eq!(*index, 2);
            assert_eq!(event_key, bad[2].event_key.as_str());
            assert_eq!(channel, ch);
        }
        other => panic!("expected RejectedChange, got {other:?}"),
    }
    assert_eq!(err.class(), ErrorClass::User);
    assert!(err.chain().contains("change #2"), "{}", err.chain());

    let got = all(&*log).await;
    assert_eq!(got.len(), 2, "nothing of the failed batch is logged");
    assert!(got
        .iter()
        .all(|g| g.change.event_key.as_str().starts_with("good")));
    assert_eq!(
        log.checkpoint(ch).await.unwrap(),
        Some(first),
        "checkpoint unchanged"
    );

    // A channel whose first batch fails has no checkpoint at all.
    let err = log
        .append_batch("/data/Other", &bad, &ReplayId::from_bytes(vec![3]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::RejectedChange { .. }));
    assert_eq!(log.checkpoint("/data/Other").await.unwrap(), None);

    // The store stays usable, and the repaired batch goes in whole.
    bad[2].entity = "Account".into();
    let out = log
        .append_batch(ch, &bad, &ReplayId::from_bytes(vec![2]))
        .await
        .unwrap();
    assert_eq!(out.appended, 4);
    assert_eq!(all(&*log).await.len(), 6);

    // An empty channel name is refused up front.
    let err = log
        .append_batch("", &batch("x", 1), &ReplayId::default())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::User);
}

async fn reappend_is_idempotent(b: &dyn Backend) {
    let log = b.open().await;
    let ch = "/data/CaseChangeEvent";
    let changes = batch("tx", 3);
    log.append_batch(ch, &changes, &ReplayId::from_bytes(vec![1]))
        .await
        .unwrap();
    let before = all(&*log).await;

    let out = log
        .append_batch(ch, &changes, &ReplayId::from_bytes(vec![2]))
        .await
        .unwrap();
    assert_eq!(
        (out.appended, out.duplicates, out.last_offset),
        (0, 3, None)
    );
    assert_eq!(all(&*log).await, before, "re-delivery changes nothing");
    assert_eq!(
        log.checkpoint(ch).await.unwrap(),
        Some(ReplayId::from_bytes(vec![2]))
    );

    // Duplicates inside one batch, mixed with new changes, are counted too.
    let mut mixed = batch("tx", 1);
    mixed.extend(batch("new", 2));
    mixed.push(batch("new", 1).remove(0));
    let out = log
        .append_batch(ch, &mixed, &ReplayId::from_bytes(vec![3]))
        .await
        .unwrap();
    assert_eq!((out.appended, out.duplicates), (2, 2));
    assert_eq!(all(&*log).await.len(), 5);
}

async fn log_order_and_offsets(b: &dyn Backend) {
    let log = b.open().await;
    let mut expected = Vec::new();
    for round in 0..4 {
        for ch in ["/data/A", "/data/B"] {
            let changes = batch(&format!("{ch}-{round}"), 5);
            log.append_batch(ch, &changes, &ReplayId::from_bytes(vec![round]))
                .await
                .unwrap();
            expected.extend(changes.into_iter().map(|c| (ch.to_string(), c)));
        }
    }
    let got = all(&*log).await;
    assert_eq!(got.len(), 40);
    for w in got.windows(2) {
        assert!(w[0].offset < w[1].offset, "offsets increase");
    }
    assert!(got[0].offset >= 1);
    let pairs: Vec<_> = got
        .iter()
        .map(|g| (g.channel.clone(), g.change.clone()))
        .collect();
    assert_eq!(pairs, expected, "log order is append order");

    let tail = log.read_from(got[17].offset, usize::MAX).await.unwrap();
    assert_eq!(tail, got[17..]);
    let page = log.read_from(got[3].offset + 1, 5).await.unwrap();
    assert_eq!(page, got[4..9]);
    assert!(log
        .read_from(got[39].offset + 1, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(log.read_from(0, 0).await.unwrap().is_empty());

    // From the database itself (a fresh handle has no in-memory tail): pages of changing sizes
    // through one cached statement stop at their limit and go on where the last one ended.
    let fresh = b.open().await;
    let mut from = 0;
    let mut paged = Vec::new();
    for limit in [1, 7, 3, 3, 12, 40] {
        let page = fresh.read_from(from, limit).await.unwrap();
        assert!(page.len() <= limit);
        if let Some(last) = page.last() {
            from = last.offset + 1;
        }
        paged.extend(page);
    }
    assert_eq!(paged, got);
    let some = fresh
        .read_entity("Account", got[2].offset, got[30].offset, 4)
        .await
        .unwrap();
    assert_eq!(some, got[2..6]);
    let bounded = fresh
        .read_entity("Account", got[35].offset, got[37].offset, 10)
        .await
        .unwrap();
    assert_eq!(bounded, got[35..38]);
}

async fn replay_id_bytes_round_trip(b: &dyn Backend) {
    let log = b.open().await;
    let weird: Vec<Vec<u8>> = vec![
        vec![0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28],
        vec![0x00; 8],
        (0u8..=255).collect(),
        vec![],
    ];
    for (i, bytes) in weird.iter().enumerate() {
        let ch = format!("/data/C{i}");
        let mut c = change(
            &format!("k{i}"),
            "Contact",
            bytes,
            &[0xff, 0x00, 0xfe, b'x'],
        );
        c.payload = bytes.clone().into();
        log.append_batch(&ch, &[c], &ReplayId::from_bytes(bytes.clone()))
            .await
            .unwrap();
        assert_eq!(
            log.checkpoint(&ch).await.unwrap().map(ReplayId::into_bytes),
            Some(bytes.clone())
        );
    }
    let got = all(&*log).await;
    for (g, bytes) in got.iter().zip(&weird) {
        assert_eq!(g.change.replay_id.as_bytes(), &bytes[..]);
        assert_eq!(&g.change.payload[..], &bytes[..]);
    }
}

async fn reopen_keeps_data(b: &dyn Backend) {
    let ch = "/data/OpportunityChangeEvent";
    let cp = ReplayId::from_bytes(vec![0xde, 0xad, 0xbe, 0xef]);
    let written = {
        let log = b.open().await;
        log.append_batch(ch, &batch("persist", 4), &cp)
            .await
            .unwrap();
        log.set_applied_offset("apply", 2).await.unwrap();
        all(&*log).await
    };
    let log = b.open().await;
    assert_eq!(all(&*log).await, written);
    assert_eq!(log.checkpoint(ch).await.unwrap(), Some(cp));
    assert_eq!(log.applied_offset("apply").await.unwrap(), Some(2));
    // Offsets keep increasing after a reopen.
    let out = log
        .append_batch(ch, &batch("after", 1), &ReplayId::from_bytes(vec![1]))
        .await
        .unwrap();
    assert!(out.last_offset.unwrap() > written.last().unwrap().offset);
}

async fn migrations_idempotent(b: &dyn Backend) {
    let first = b.open().await.applied_migrations().await.unwrap();
    let versions: Vec<i64> = first.iter().map(|m| m.version).collect();
    assert_eq!(
        versions,
        (1..=sfsync_store::migrate::latest(sfsync_store::sqlite::MIGRATIONS)).collect::<Vec<_>>()
    );
    assert_eq!(*versions.last().unwrap(), 20);
    // Opening again, and twice at once, applies nothing new.
    let (x, y) = tokio::join!(b.open(), b.open());
    assert_eq!(x.applied_migrations().await.unwrap(), first);
    assert_eq!(y.applied_migrations().await.unwrap(), first);
    assert_eq!(b.open().await.applied_migrations().await.unwrap(), first);
}

async fn applied_offsets_only_move_forward(b: &dyn Backend) {
    let log = b.open().await;
    assert_eq!(log.applied_offset("curate").await.unwrap(), None);
    log.set_applied_offset("curate", 5).await.unwrap();
    log.set_applied_offset("curate", 5).await.unwrap();
    let err = log.set_applied_offset("curate", 3).await.unwrap_err();
    assert!(matches!(
        err,
        StoreError::OffsetRegression {
            current: 5,
            requested: 3,
            ..
        }
    ));
    assert_eq!(err.class(), ErrorClass::Internal);
    assert_eq!(log.applied_offset("curate").await.unwrap(), Some(5));
    log.set_applied_offset("archive", 1).await.unwrap();
    log.set_applied_offset("curate", 9).await.unwrap();
    assert_eq!(log.applied_offset("curate").await.unwrap(), Some(9));
    assert_eq!(log.applied_offset("archive").await.unwrap(), Some(1));
}

/// A replay's reads: one object's window, exact offsets, and entries found by time, replay id
/// and age, an object's first entry past an offset — without the other objects' entries and
/// without parsing replay ids.
async fn locate_and_targeted_reads(b: &dyn Backend) {
    let log = b.open().await;
    assert_eq!(
        log.locate(&LogPoint::Oldest { channel: None })
            .await
            .unwrap(),
        None,
        "an empty log has no oldest entry"
    );
    // Commit times 1000, 2000, … alternating Account / Contact on two channels; the replay ids
    // are arbitrary bytes (the third is a prefix of the fifth: compared whole, never parsed).
    let replay_ids: Vec<Vec<u8>> = vec![
        vec![9, 0],
        vec![0xff],
        vec![1, 2],
        vec![0],
        vec![1, 2, 0],
        vec![7],
    ];
    let mut changes = Vec::new();
    for (i, rid) in replay_ids.iter().enumerate() {
        let (channel, entity) = if i % 2 == 0 {
            ("/data/AccountChangeEvent", "Account")
        } else {
            ("/data/ContactChangeEvent", "Contact")
        };
        let mut c = change(&format!("loc-{i}"), entity, rid, format!("p{i}").as_bytes());
        c.version.commit_timestamp = 1_000 * (i as i64 + 1);
        log.append_batch(channel, &[c.clone()], &ReplayId::from_bytes(rid.clone()))
            .await
            .unwrap();
        changes.push((channel, c));
    }
    let got = all(&*log).await;
    let offsets: Vec<u64> = got.iter().map(|g| g.offset).collect();

    // One object's entries within an offset range, in log order, limited.
    let accounts = log.read_entity("Account", 0, u64::MAX, 100).await.unwrap();
    assert_eq!(
        accounts.iter().map(|a| a.offset).collect::<Vec<_>>(),
        vec![offsets[0], offsets[2], offsets[4]]
    );
    assert!(accounts.iter().all(|a| a.change.entity == "Account"));
    assert_eq!(accounts[1].change, changes[2].1);
    let window = log
        .read_entity("Account", offsets[1], offsets[4], 100)
        .await
        .unwrap();
    assert_eq!(
        window.iter().map(|a| a.offset).collect::<Vec<_>>(),
        vec![offsets[2], offsets[4]],
        "both bounds inclusive"
    );
    let limited = log.read_entity("Contact", 0, u64::MAX, 2).await.unwrap();
    assert_eq!(
        limited.iter().map(|a| a.offset).collect::<Vec<_>>(),
        vec![offsets[1], offsets[3]]
    );
    assert!(log
        .read_entity("Case", 0, u64::MAX, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(log
        .read_entity("Account", offsets[4], offsets[2], 10)
        .await
        .unwrap()
        .is_empty());

    // Exact offsets: unordered and repeated in, log order out, missing ones skipped.
    let picked = log
        .read_offsets(&[offsets[5], offsets[1], offsets[5], offsets[5] + 100])
        .await
        .unwrap();
    assert_eq!(picked, vec![got[1].clone(), got[5].clone()]);
    assert!(log.read_offsets(&[]).await.unwrap().is_empty());

    let mark = |i: usize| LogMark {
        offset: offsets[i],
        channel: changes[i].0.to_string(),
        replay_id: ReplayId::from_bytes(replay_ids[i].clone()),
        commit_timestamp: 1_000 * (i as i64 + 1),
    };
    assert_eq!(
        log.locate(&LogPoint::Oldest { channel: None })
            .await
            .unwrap(),
        Some(mark(0))
    );
    assert_eq!(
        log.locate(&LogPoint::Oldest {
            channel: Some("/data/ContactChangeEvent".into())
        })
        .await
        .unwrap(),
        Some(mark(1))
    );
    assert_eq!(
        log.locate(&LogPoint::Oldest {
            channel: Some("/data/Nope".into())
        })
        .await
        .unwrap(),
        None
    );
    for (commit_ms, expected) in [
        (0, Some(0)),
        (1_000, Some(0)),
        (1_001, Some(2)),
        (5_000, Some(4)),
        (5_001, None),
    ] {
        assert_eq!(
            log.locate(&LogPoint::FirstCommittedSince {
                entity: "Account".into(),
                commit_ms
            })
            .await
            .unwrap(),
            expected.map(mark),
            "first Account change committed at or after {commit_ms}"
        );
    }
    // The oldest entry of an object past an apply offset (what freshness waits for).
    for (entity, after, expected) in [
        ("Account", 0, Some(0)),
        ("Account", offsets[0], Some(2)),
        ("Account", offsets[1], Some(2)),
        ("Account", offsets[4], None),
        ("Contact", offsets[2], Some(3)),
        ("Contact", offsets[5], None),
        ("Case", 0, None),
    ] {
        assert_eq!(
            log.locate(&LogPoint::FirstAfter {
                entity: entity.into(),
                after
            })
            .await
            .unwrap(),
            expected.map(mark),
            "first {entity} entry after offset {after}"
        );
    }
    for i in 0..replay_ids.len() {
        assert_eq!(
            log.locate(&LogPoint::ReplayId {
                channel: changes[i].0.to_string(),
                replay_id: ReplayId::from_bytes(replay_ids[i].clone()),
            })
            .await
            .unwrap(),
            Some(mark(i))
        );
    }
    for (channel, bytes) in [
        ("/data/AccountChangeEvent", vec![1u8]),
        ("/data/AccountChangeEvent", vec![0xff]),
        ("/data/ContactChangeEvent", vec![1, 2]),
    ] {
        assert_eq!(
            log.locate(&LogPoint::ReplayId {
                channel: channel.into(),
                replay_id: ReplayId::from_bytes(bytes.clone()),
            })
            .await
            .unwrap(),
            None,
            "{bytes:?} is not on {channel}"
        );
    }
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
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
    append_and_checkpoint_commit_together,
    failed_batch_writes_nothing,
    reappend_is_idempotent,
    log_order_and_offsets,
    replay_id_bytes_round_trip,
    reopen_keeps_data,
    migrations_idempotent,
    applied_offsets_only_move_forward,
    locate_and_targeted_reads,
);

// ---- backend-specific: transaction handles for curated writers, newer schemas ----

#[tokio::test]
async fn sqlite_offset_commits_with_caller_writes() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteChangeLog::open(dir.path().join("s.db"))
        .await
        .unwrap();
    log.with_transaction(|tx| {
        tx.connection()
            .execute_batch("CREATE TABLE curated (id TEXT PRIMARY KEY)")
            .map_err(|e| StoreError::InvalidInput {
                backend: "sqlite",
                op: "test",
                reason: e.to_string(),
            })
    })
    .await
    .unwrap();
    // A failing curated write rolls the offset back with it.
    let err = log
        .with_transaction(|tx| {
            tx.set_applied_offset("curate", 7)?;
            tx.connection()
                .execute("INSERT INTO nope VALUES (1)", [])
                .map_err(|e| StoreError::InvalidInput {
                    backend: "sqlite",
                    op: "curated write",
                    reason: e.to_string(),
                })?;
            Ok(())
        })
        .await;
    assert!(err.is_err());
    assert_eq!(log.applied_offset("curate").await.unwrap(), None);
    log.with_transaction(|tx| {
        tx.connection()
            .execute("INSERT INTO curated VALUES ('001')", [])
            .map_err(|e| StoreError::InvalidInput {
                backend: "sqlite",
                op: "curated write",
                reason: e.to_string(),
            })?;
        tx.set_applied_offset("curate", 7)
    })
    .await
    .unwrap();
    assert_eq!(log.applied_offset("curate").await.unwrap(), Some(7));
}

#[tokio::test]
async fn sqlite_refuses_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    drop(SqliteChangeLog::open(&path).await.unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (999, 'future', 0)",
        [],
    )
    .unwrap();
    drop(conn);
    let err = SqliteChangeLog::open(&path).await.unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 999, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn postgres_offset_commits_with_caller_writes() {
    let b = postgres_backend().await;
    let log = PostgresChangeLog::connect_with(&b.config).await.unwrap();
    {
        let mut client = log.client().await;
        client
            .batch_execute("CREATE TABLE curated (id TEXT PRIMARY KEY)")
            .await
            .unwrap();
        let tx = client.transaction().await.unwrap();
        sfsync_store::postgres::set_applied_offset_in(&tx, "curate", 7)
            .await
            .unwrap();
        assert!(tx
            .batch_execute("INSERT INTO nope VALUES (1)")
            .await
            .is_err());
        drop(tx); // rolled back
        let tx = client.transaction().await.unwrap();
        tx.batch_execute("INSERT INTO curated VALUES ('001')")
            .await
            .unwrap();
        sfsync_store::postgres::set_applied_offset_in(&tx, "curate", 8)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(log.applied_offset("curate").await.unwrap(), Some(8));
}

#[tokio::test]
async fn postgres_refuses_newer_schema() {
    let b = postgres_backend().await;
    let log = PostgresChangeLog::connect_with(&b.config).await.unwrap();
    log.client()
        .await
        .batch_execute(
            "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (999, 'future', 0)",
        )
        .await
        .unwrap();
    drop(log);
    let err = PostgresChangeLog::connect_with(&b.config)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 999, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn sqlite_uses_wal_and_normal_sync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let _log = SqliteChangeLog::open(&path).await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert!(dir.path().join("s.db-wal").exists());
}

#[tokio::test]
async fn sqlite_payloads_stored_compressed_legacy_readable_corruption_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let log = SqliteChangeLog::open(&path).await.unwrap();
    let text = "Benefit claim description with repeated words ".repeat(100);
    let c = change("k1", "Case", b"r1", text.as_bytes());
    log.append_batch(
        "/data/CaseChangeEvent",
        &[c],
        &ReplayId::from_bytes(vec![1]),
    )
    .await
    .unwrap();
    let conn = rusqlite::Connection::open(log.change_log_file()).unwrap();
    let stored: Vec<u8> = conn
        .query_row("SELECT payload FROM raw_changes", [], |r| r.get(0))
        .unwrap();
    assert!(stored.starts_with(b"SFL1"), "{:?}", &stored[..8]);
    assert!(
        stored.len() * 4 < text.len(),
        "{} of {}",
        stored.len(),
        text.len()
    );
    // A payload written before compression came in reads back as it is.
    conn.execute(
        "INSERT INTO raw_changes (channel, event_key, replay_id, schema_id, entity, change_type,
             commit_timestamp, commit_number, sequence_number, payload, appended_at_ms)
         VALUES ('/data/CaseChangeEvent', 'tx/2/legacy', x'02', 's', 'Case', 'UPDATE', 1, 1, 0,
             x'0a0b0c', 0)",
        [],
    )
    .unwrap();
    let got = all(&log).await;
    assert_eq!(&got[0].change.payload[..], text.as_bytes());
    assert_eq!(&got[1].change.payload[..], &[0x0a, 0x0b, 0x0c]);
    // A damaged frame is an error naming the table and offset, never a panic or a silent skip.
    // (A fresh store: the one that appended still holds its own changes in memory.)
    drop(log);
    let log = SqliteChangeLog::open(&path).await.unwrap();
    conn.execute(
        "UPDATE raw_changes SET payload = x'53464c31ffffff00deadbeef' WHERE log_offset = 1",
        [],
    )
    .unwrap();
    let err = log.read_from(0, 10).await.unwrap_err().to_string();
    assert!(err.contains("raw_changes") && err.contains("LZ4"), "{err}");
    conn.execute(
        "UPDATE raw_changes SET payload = x'53464c3110000000deadbeef' WHERE log_offset = 1",
        [],
    )
    .unwrap();
    let err = log.read_from(0, 10).await.unwrap_err().to_string();
    assert!(err.contains("does not decompress"), "{err}");
}

/// Committed pages reach the database file without any commit paying for the checkpoint: the
/// writer's own auto-checkpoint is set far above what this writes (64 MiB), so only the
/// background checkpointer can have copied them.
#[tokio::test]
async fn sqlite_background_checkpointer_moves_wal_into_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let log = SqliteChangeLog::open(&path).await.unwrap();
    let path = log.change_log_file().to_path_buf();
    let before = std::fs::metadata(&path).unwrap().len();
    // Incompressible payloads, ~4 MB in all.
    let mut seed = 7u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as u8
            })
            .collect()
    };
    for b in 0..10 {
        let changes: Vec<RawChange> = (0..100)
            .map(|i| change(&format!("k{b}-{i}"), "Case", b"r", &noise(4096)))
            .collect();
        log.append_batch(
            "/data/CaseChangeEvent",
            &changes,
            &ReplayId::from_bytes(vec![b]),
        )
        .await
        .unwrap();
    }
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = std::fs::metadata(&path).unwrap().len();
        if now > before + 3_000_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "database file still {now} bytes (was {before}): nothing checkpointed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A SQLite database at schema 3 (unique index on the event key alone) upgrades to 4: every row
/// keeps its offset, channel and payload, new appends continue past the old AUTOINCREMENT
/// high-water mark (even when the newest rows were removed), and redeliveries are still dropped.
#[tokio::test]
async fn sqlite_upgrade_to_v4_keeps_the_log_and_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                 applied_at_ms INTEGER NOT NULL)",
        )
        .unwrap();
        for m in &sfsync_store::sqlite::MIGRATIONS[..3] {
            c.execute_batch(m.sql).unwrap();
            c.execute(
                "INSERT INTO schema_migrations VALUES (?1, ?2, 0)",
                rusqlite::params![m.version, m.name],
            )
            .unwrap();
        }
        for i in 1..=5i64 {
            c.execute(
                "INSERT INTO raw_changes (channel, event_key, replay_id, schema_id, entity,
                     change_type, commit_timestamp, commit_number, sequence_number, payload,
                     appended_at_ms)
                 VALUES ('/data/ChangeEvents', ?1, x'01', 'schema-1', 'Account', 'UPDATE',
                     1700000000000, 42, 1, ?2, 0)",
                rusqlite::params![
                    EventKey::new(&format!("old-{i}"), 1, "001000000000001AAA").as_str(),
                    format!("legacy {i}").into_bytes()
                ],
            )
            .unwrap();
        }
        // The two newest rows are gone (retention, say): offsets 4 and 5 must never be reused.
        c.execute("DELETE FROM raw_changes WHERE log_offset > 3", [])
            .unwrap();
    }
    let log = SqliteChangeLog::open(&path).await.unwrap();
    assert_eq!(
        log.applied_migrations()
            .await
            .unwrap()
            .last()
            .unwrap()
            .version,
        sfsync_store::migrate::latest(sfsync_store::sqlite::MIGRATIONS)
    );
    let before = all(&log).await;
    assert_eq!(
        before.iter().map(|c| c.offset).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(&before[2].change.payload[..], b"legacy 3");
    assert_eq!(before[0].channel, "/data/ChangeEvents");
    // A redelivered legacy change is a duplicate; a new one lands after the old high-water mark.
    let again = change("old-2", "Account", &[1], b"legacy 2");
    let fresh = change("new-1", "Account", &[2], b"new");
    let out = log
        .append_batch(
            "/data/ChangeEvents",
            &[again, fresh],
            &ReplayId::from_bytes(vec![2]),
        )
        .await
        .unwrap();
    assert_eq!((out.appended, out.duplicates), (1, 1));
    // Past the old high-water mark (a duplicate may leave a hole: offsets only increase).
    assert!(out.last_offset.unwrap() > 5, "{:?}", out.last_offset);
    let after = all(&log).await;
    assert_eq!(after.len(), 4);
    assert_eq!(&after[3].change.payload[..], b"new");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'raw_changes'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        indexes.contains(&"raw_changes_event".to_string()),
        "{indexes:?}"
    );
    assert!(
        indexes.contains(&"raw_changes_entity".to_string()),
        "{indexes:?}"
    );
}

/// The store that appended serves the tail from memory and the rest from the database: a change
/// another connection inserted in between is still read, in offset order, and a payload
/// damaged on disk after this process appended it is not what it hands out.
#[tokio::test]
async fn sqlite_tail_in_memory_never_hides_other_writers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let log = SqliteChangeLog::open(&path).await.unwrap();
    let ch = "/data/ChangeEvents";
    log.append_batch(ch, &batch("a", 3), &ReplayId::from_bytes(vec![1]))
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(log.change_log_file()).unwrap();
    conn.execute(
        "INSERT INTO raw_changes (channel, event_key, replay_id, schema_id, entity, change_type,
             commit_timestamp, commit_number, sequence_number, payload, appended_at_ms)
         VALUES ('/data/ChangeEvents', 'other/1/001', x'09', 's', 'Account', 'UPDATE', 5, 1, 0,
             x'0a0b', 0)",
        [],
    )
    .unwrap();
    log.append_batch(ch, &batch("b", 2), &ReplayId::from_bytes(vec![2]))
        .await
        .unwrap();
    let got = all(&log).await;
    let offsets: Vec<u64> = got.iter().map(|c| c.offset).collect();
    assert_eq!(offsets, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(&got[3].change.payload[..], &[0x0a, 0x0b]);
    assert_eq!(&got[5].change.payload[..], b"payload b 1");
    // Paging across the memory/database boundary.
    let page = log.read_from(3, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|c| c.offset).collect::<Vec<_>>(),
        vec![3, 4]
    );
    let page = log.read_from(5, 10).await.unwrap();
    assert_eq!(
        page.iter().map(|c| c.offset).collect::<Vec<_>>(),
        vec![5, 6]
    );
    // A fresh store reads everything from the database and agrees.
    let reopened = SqliteChangeLog::open(&path).await.unwrap();
    assert_eq!(all(&reopened).await, got);
}

/// A new SQLite store keeps its raw log in a file of its own, and after a power loss that
/// rolled the log back further than the warehouse (its last commits gone, the apply offset
/// still past them), new appends land after the apply offset: no change can hide under an
/// offset that was applied before.
#[tokio::test]
async fn sqlite_change_log_file_rolled_back_never_reuses_applied_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let log = SqliteChangeLog::open(&path).await.unwrap();
    let log_file = sfsync_store::sqlite::change_log_path(&path);
    assert_eq!(log.change_log_file(), log_file.as_path());
    assert_eq!(log_file.file_name().unwrap(), "w.changes.db");
    let ch = "/data/ChangeEvents";
    log.append_batch(ch, &batch("a", 5), &ReplayId::from_bytes(vec![5]))
        .await
        .unwrap();
    log.set_applied_offset("curated", 5).await.unwrap();
    // The raw log lives in the log file only; the apply offset in the warehouse only.
    let w = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = w
        .query_row("SELECT COUNT(*) FROM raw_changes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    drop(log);
    // The log file as a power loss could leave it: offsets 4 and 5 and the last checkpoint gone.
    let l = rusqlite::Connection::open(&log_file).unwrap();
    l.execute_batch(
        "DELETE FROM raw_changes WHERE log_offset > 3;
         UPDATE sqlite_sequence SET seq = 3 WHERE name = 'raw_changes';
         UPDATE checkpoints SET replay_id = x'03';",
    )
    .unwrap();
    let n: i64 = l
        .query_row("SELECT COUNT(*) FROM apply_offsets", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    drop(l);
    let log = SqliteChangeLog::open(&path).await.unwrap();
    assert_eq!(log.applied_offset("curated").await.unwrap(), Some(5));
    assert_eq!(
        log.checkpoint(ch).await.unwrap(),
        Some(ReplayId::from_bytes(vec![3]))
    );
    // Redelivered from the older checkpoint: the lost changes come back after offset 5.
    let redelivered = &batch("a", 5)[3..];
    let out = log
        .append_batch(ch, redelivered, &ReplayId::from_bytes(vec![5]))
        .await
        .unwrap();
    assert_eq!(out.appended, 2);
    let unapplied = log.read_from(6, 10).await.unwrap();
    assert_eq!(
        unapplied.iter().map(|c| c.offset).collect::<Vec<_>>(),
        vec![6, 7]
    );
    assert_eq!(unapplied[0].change, redelivered[0]);
    // An intact pair is left alone.
    drop(log);
    let log = SqliteChangeLog::open(&path).await.unwrap();
    let out = log
        .append_batch(ch, &batch("b", 1), &ReplayId::from_bytes(vec![6]))
        .await
        .unwrap();
    assert_eq!(out.last_offset, Some(8));
}

/// `separate_change_log: false` keeps a new store in one file, and reopening with the default
/// options keeps that layout (the log is never split away from its data).
#[tokio::test]
async fn sqlite_single_file_layout_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.db");
    let options = sfsync_store::sqlite::SqliteOptions {
        separate_change_log: false,
        ..Default::default()
    };
    let log = SqliteChangeLog::open_with(&path, options).await.unwrap();
    assert_eq!(log.change_log_file(), path.as_path());
    let ch = "/data/ChangeEvents";
    log.append_batch(ch, &batch("a", 2), &ReplayId::from_bytes(vec![2]))
        .await
        .unwrap();
    drop(log);
    let log = SqliteChangeLog::open(&path).await.unwrap();
    assert_eq!(log.change_log_file(), path.as_path());
    assert!(!sfsync_store::sqlite::change_log_path(&path).exists());
    assert_eq!(all(&log).await.len(), 2);
    let w = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = w
        .query_row("SELECT COUNT(*) FROM raw_changes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
}

/// Processes that open one new warehouse at the same moment (`sfsync run` and a CLI command)
/// agree on its layout: every opener logs to the change-log file, so a change one appends is
/// seen by all. (Fixed bug: an opener finding the warehouse migrated but its change log not yet
/// created chose the single-file layout and logged into the warehouse file.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_openers_of_a_new_store_agree_on_its_layout() {
    let ch = "/data/ChangeEvents";
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wh.db");
        let opens = (0..4).map(|_| {
            let path = path.clone();
            tokio::spawn(async move { SqliteChangeLog::open(&path).await.unwrap() })
        });
        let stores: Vec<SqliteChangeLog> = futures::future::join_all(opens)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let log_file = sfsync_store::sqlite::change_log_path(&path);
        for s in &stores {
            assert_eq!(s.change_log_file(), log_file.as_path(), "round {round}");
        }
        stores[0]
            .append_batch(ch, &batch("a", 3), &ReplayId::from_bytes(vec![3]))
            .await
            .unwrap();
        for s in &stores {
            assert_eq!(all(s).await.len(), 3, "round {round}");
        }
    }
}
