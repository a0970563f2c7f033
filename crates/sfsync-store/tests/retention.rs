//! [`Retention`] on SQLite and Postgres: what the archive and retention jobs ask of a store.
//! A raw-log prune deletes only entries that are archived **and** applied **and** old enough,
//! whatever bound it is asked for; archive rows carry the Avro payload (sealed for objects with
//! PII); an audit prune leaves a verifiable chain and never its newest entry.

mod support;

use sfsync_core::{ChangeType, EventKey, RecordVersion, ReplayId};
use sfsync_store::archive::ArchiveFile;
use sfsync_store::{
    AuditEntry, ColumnDef, ColumnType, CuratedBatch, Keyring, ObjectModel, RawChange, Warehouse,
};

use support::backends::{postgres_backend, sqlite_backend, Backend};

const DAY: i64 = 86_400_000;
const T0: i64 = 1_790_000_000_000;

fn change(n: usize, entity: &str, commit_ms: i64) -> RawChange {
    RawChange {
        event_key: EventKey::new(&format!("tx-{n}"), 1, &format!("001{n:015}")),
        replay_id: ReplayId::from_bytes(vec![0, 0, (n >> 8) as u8, n as u8]),
        schema_id: "schema-1".into(),
        entity: entity.into(),
        change_type: ChangeType::Update,
        version: RecordVersion {
            commit_timestamp: commit_ms,
            commit_number: n as i64,
            sequence_number: 1,
        },
        payload: format!("avro bytes of change {n} — ünïcode")
            .into_bytes()
            .into(),
    }
}

fn model(object: &str, pii: bool) -> ObjectModel {
    let col = |name: &str, pii: bool| ColumnDef {
        name: name.to_ascii_lowercase(),
        field: name.into(),
        ty: ColumnType::Text,
        pii,
    };
    ObjectModel {
        object: object.into(),
        table: format!("sf_{}", object.to_ascii_lowercase()),
        columns: vec![col("Id", false), col("Email", pii)],
        history: None,
    }
}

/// 10 Account changes 30 days old (offsets 1..=10), 5 Contact (PII) changes 30 days old
/// (11..=15), 5 Account changes of today (16..=20).
async fn seed(s: &dyn Warehouse, now: i64) {
    s.ensure_model(&model("Account", false)).await.unwrap();
    s.ensure_model(&model("Contact", true)).await.unwrap();
    let mut changes: Vec<RawChange> = (1..=10)
        .map(|n| change(n, "Account", now - 30 * DAY))
        .collect();
    changes.extend((11..=15).map(|n| change(n, "Contact", now - 30 * DAY)));
    changes.extend((16..=20).map(|n| change(n, "Account", now)));
    s.append_batch(
        "/data/ChangeEvents",
        &changes,
        &ReplayId::from_bytes(vec![20]),
    )
    .await
    .unwrap();
}

fn file(path: &str, min: i64, max: i64) -> ArchiveFile {
    ArchiveFile {
        path: path.into(),
        object: "Account".into(),
        day: "2026-10-23".into(),
        rows: (max - min + 1) as u64,
        bytes: 1000,
        payload_bytes: 2000,
        sha256: "ab".repeat(32),
        min_offset: min,
        max_offset: max,
        min_commit_ms: T0,
        max_commit_ms: T0,
        created_at_ms: T0 + max,
    }
}

async fn offsets(s: &dyn Warehouse) -> Vec<u64> {
    s.read_from(0, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|c| c.offset)
        .collect()
}

async fn raw_log_prunes_only_archived_applied_and_old_entries(b: &dyn Backend) {
    let s = b.open().await;
    let now = T0;
    seed(&*s, now).await;
    let before = now - 7 * DAY;
    // Nothing archived, nothing applied: nothing goes, whatever is asked.
    let p = s.prune_raw_log(u64::MAX, before, false).await.unwrap();
    assert_eq!((p.entries, p.bound), (0, 0), "{p:?}");
    // Archived through 12 but applied only through 8: the bound is 8.
    s.record_archived(&[file("object=Account/a.parquet", 1, 10)], 12)
        .await
        .unwrap();
    assert_eq!(s.archived_through().await.unwrap(), 12);
    s.set_applied_offset("curated", 8).await.unwrap();
    let dry = s.prune_raw_log(u64::MAX, before, true).await.unwrap();
    assert_eq!(
        (dry.entries, dry.through_offset, dry.bound),
        (8, Some(8), 8)
    );
    assert_eq!(offsets(&*s).await.len(), 20, "a dry run deletes nothing");
    // Every consumer counts: a second one that applied less holds the bound back.
    s.set_applied_offset("delivery", 5).await.unwrap();
    let p = s.prune_raw_log(u64::MAX, before, false).await.unwrap();
    assert_eq!((p.entries, p.through_offset, p.bound), (5, Some(5), 5));
    assert_eq!(offsets(&*s).await, (6..=20).collect::<Vec<u64>>());
    // All applied and archived through 20: today's entries stay (hot retention), the old go.
    s.set_applied_offset("curated", 20).await.unwrap();
    s.set_applied_offset("delivery", 20).await.unwrap();
    s.record_archived(&[file("object=Account/b.parquet", 11, 20)], 20)
        .await
        .unwrap();
    // The mark never moves back.
    s.record_archived(&[], 3).await.unwrap();
    assert_eq!(s.archived_through().await.unwrap(), 20);
    let p = s.prune_raw_log(u64::MAX, before, false).await.unwrap();
    assert_eq!((p.entries, p.through_offset), (10, Some(15)));
    assert_eq!(offsets(&*s).await, (16..=20).collect::<Vec<u64>>());
    // A prune with nothing left to delete is a no-op; new appends continue after the pruned
    // offsets.
    assert_eq!(
        s.prune_raw_log(u64::MAX, before, false)
            .await
            .unwrap()
            .entries,
        0
    );
    s.append_batch(
        "/data/ChangeEvents",
        &[change(21, "Account", now)],
        &ReplayId::from_bytes(vec![21]),
    )
    .await
    .unwrap();
    assert_eq!(offsets(&*s).await, (16..=21).collect::<Vec<u64>>());
    // The ledger lists the files, newest first; forgetting a partition drops its entries.
    let files = s.archive_files(10).await.unwrap();
    assert_eq!(
        files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        ["object=Account/b.parquet", "object=Account/a.parquet"]
    );
    assert_eq!(files[1], file("object=Account/a.parquet", 1, 10));
    assert_eq!(
        s.forget_archive_partition("Account", "2026-10-23")
            .await
            .unwrap(),
        2
    );
    assert!(s.archive_files(10).await.unwrap().is_empty());
}

async fn archive_rows_carry_avro_and_seal_pii(b: &dyn Backend) {
    let s = b.open().await;
    seed(&*s, T0).await;
    let rows = s.archive_rows(9, 12, 100).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.offset).collect::<Vec<_>>(),
        [9, 10, 11, 12]
    );
    let plain = &rows[0];
    assert_eq!(plain.entity, "Account");
    assert!(!plain.sealed);
    assert_eq!(plain.payload, change(9, "Account", 0).payload.to_vec());
    assert_eq!(
        plain.event_key,
        change(9, "Account", 0).event_key.to_string()
    );
    assert_eq!(plain.replay_id, vec![0, 0, 0, 9]);
    assert_eq!(plain.change_type, "UPDATE");
    assert_eq!(plain.commit_timestamp, T0 - 30 * DAY);
    assert!(plain.appended_at_ms > 0);
    let sealed = &rows[2];
    assert_eq!(sealed.entity, "Contact");
    assert!(
        sealed.sealed,
        "a PII object's payload is sealed in the archive"
    );
    let clear = change(11, "Contact", 0).payload.to_vec();
    assert!(
        !sealed
            .payload
            .windows(8)
            .any(|w| clear.windows(8).any(|c| c == w)),
        "no 8 bytes of the clear payload appear in the sealed one"
    );
    let k = Keyring::new("k1", [7; 32]);
    assert_eq!(
        k.open_bytes(&sfsync_store::pii::archive_aad("Contact"), &sealed.payload)
            .unwrap(),
        clear
    );
    assert_eq!(s.archive_rows(9, 12, 2).await.unwrap().len(), 2, "limit");
    assert!(s.archive_rows(21, 30, 10).await.unwrap().is_empty());
}

fn audit(n: i64) -> AuditEntry {
    serde_json::from_value(serde_json::json!({
        "object": "Account",
        "record_id": format!("001{n:015}"),
        "change_type": "UPDATE",
        "event_key": format!("tx-{n}/1/001{n:015}"),
        "commit_timestamp_ms": T0 + n,
        "commit_user": "005000000000001AAA",
        "change_origin": "",
        "source": "cdc",
        "fields": ["Email"],
        "outcome": "applied",
        "replay_id": null,
        "run_id": "run-test",
        "applied_at_ms": T0 + n,
    }))
    .expect("audit entry JSON")
}

async fn write_audit(s: &dyn Warehouse, ns: std::ops::RangeInclusive<i64>) {
    let batch = CuratedBatch {
        audit: ns.map(audit).collect(),
        ..Default::default()
    };
    s.commit_curated("curated", None, &batch).await.unwrap();
}

async fn audit_prunes_a_prefix_and_stays_verifiable(b: &dyn Backend) {
    let s = b.open().await;
    s.ensure_model(&model("Account", false)).await.unwrap();
    assert_eq!(
        s.prune_audit(i64::MAX, false).await.unwrap().entries,
        0,
        "empty trail"
    );
    write_audit(&*s, 1..=5).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let cutoff = sfsync_now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    write_audit(&*s, 6..=8).await;
    let head = s.verify_audit().await.unwrap().head;
    let dry = s.prune_audit(cutoff, true).await.unwrap();
    assert_eq!(dry.entries, 5, "{dry:?}");
    assert_eq!(
        s.verify_audit().await.unwrap().entries,
        8,
        "a dry run deletes nothing"
    );
    let p = s.prune_audit(cutoff, false).await.unwrap();
    assert_eq!(p.entries, 5);
    let v = s.verify_audit().await.unwrap();
    assert_eq!(
        (v.entries, v.first_break.clone(), v.head.clone()),
        (3, None, head)
    );
    let anchor = s.audit_anchor().await.unwrap().expect("an anchor");
    assert_eq!(
        (anchor.seq, anchor.pruned_entries),
        (p.through_seq.unwrap(), 5)
    );
    // Everything is older than a future cutoff, yet the newest entry stays: the next one
    // links to it.
    let p = s.prune_audit(i64::MAX, false).await.unwrap();
    assert_eq!(p.entries, 2);
    write_audit(&*s, 9..=9).await;
    let v = s.verify_audit().await.unwrap();
    assert_eq!((v.entries, v.first_break), (2, None));
    assert_eq!(s.audit_anchor().await.unwrap().unwrap().pruned_entries, 7);
    // A reopened store starts verification at the stored anchor.
    drop(s);
    let s = b.open().await;
    assert!(s.verify_audit().await.unwrap().first_break.is_none());
}

fn sfsync_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
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
    raw_log_prunes_only_archived_applied_and_old_entries,
    archive_rows_carry_avro_and_seal_pii,
    audit_prunes_a_prefix_and_stays_verifiable,
);

/// The SQLite audit chain after a prune: editing the first remaining entry's link breaks
/// verification at that entry.
#[tokio::test]
async fn sqlite_tampered_link_after_a_prune_is_found() {
    let b = sqlite_backend();
    let s = b.open().await;
    s.ensure_model(&model("Account", false)).await.unwrap();
    write_audit(&*s, 1..=4).await;
    s.prune_audit(i64::MAX, false).await.unwrap();
    let conn = rusqlite::Connection::open(b.dir.path().join("wh.db")).unwrap();
    let first: i64 = conn
        .query_row("SELECT min(seq) FROM audit_log", [], |r| r.get(0))
        .unwrap();
    conn.execute(
        "UPDATE audit_log SET prev_hash = ?1 WHERE seq = ?2",
        rusqlite::params!["00".repeat(32), first],
    )
    .unwrap();
    let v = s.verify_audit().await.unwrap();
    let (seq, why) = v.first_break.expect("the edited link is found");
    assert_eq!(seq, first as u64, "{why}");
}
