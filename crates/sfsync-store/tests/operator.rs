//! The operator action chain on SQLite and Postgres: appends from concurrent tasks form one
//! unbroken chain that `verify_audit` checks (with the record audit chain), survives a reopen,
//! and tampering with an entry (hashed JSON or a plain column) or deleting one is found; dead
//! letters list without payloads.

mod support;

use std::sync::Arc;

use sfsync_store::*;

enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(
        Box<tokio_postgres::Config>,
        #[allow(dead_code)] Option<Arc<support::pg::PgServer>>,
    ),
}

impl Db {
    async fn open(&self) -> Arc<dyn Store> {
        match self {
            Db::Sqlite(dir) => Arc::new(
                SqliteChangeLog::open(dir.path().join("sfsync.db"))
                    .await
                    .unwrap(),
            ),
            Db::Postgres(cfg, _) => Arc::new(PostgresChangeLog::connect_with(cfg).await.unwrap()),
        }
    }

    async fn sql(&self, sql: &str) {
        match self {
            Db::Sqlite(dir) => {
                let c = rusqlite::Connection::open(dir.path().join("sfsync.db")).unwrap();
                c.execute_batch(sql).unwrap();
            }
            Db::Postgres(cfg, _) => {
                let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
                let task = tokio::spawn(conn);
                client.batch_execute(sql).await.unwrap();
                drop(client);
                let _ = task.await;
            }
        }
    }
}

fn action(i: usize) -> OperatorAction {
    OperatorAction {
        actor: format!("token-{}", i % 3),
        role: "operator".into(),
        action: "quarantine.release".into(),
        target: format!("quarantine {i}"),
        detail: serde_json::json!({ "note": "checked with the data owner", "ids": [i] }),
        at_ms: 1_795_000_000_000 + i as i64,
    }
}

async fn chain_is_appended_verified_and_tamper_evident(db: Db) {
    let store = db.open().await;
    let empty = store.verify_audit().await.unwrap();
    assert_eq!((empty.operator_actions, empty.first_break), (0, None));
    // Concurrent appends (as concurrent API requests make them) still form one chain.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.record_operator_action(&action(i)).await.unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().seq);
    }
    seqs.sort();
    assert_eq!(seqs, (1..=20).collect::<Vec<i64>>());
    let v = store.verify_audit().await.unwrap();
    assert_eq!((v.operator_actions, &v.first_break), (20, &None));
    assert!(v.operator_head.is_some());

    // Durable: a new handle reads them back, newest first.
    drop(store);
    let store = db.open().await;
    let recent = store.operator_actions(5).await.unwrap();
    assert_eq!(recent.len(), 5);
    assert_eq!(recent[0].seq, 20);
    assert_eq!(recent[0].prev_hash, recent[1].hash);
    assert_eq!(store.verify_audit().await.unwrap().first_break, None);

    // A plain column changed behind sfsync's back.
    let all = store.operator_actions(100).await.unwrap();
    let fourth = all
        .iter()
        .find(|a| a.seq == 4)
        .unwrap()
        .action
        .actor
        .clone();
    db.sql("UPDATE operator_actions SET actor = 'someone-else' WHERE seq = 4")
        .await;
    let (seq, reason) = store.verify_audit().await.unwrap().first_break.unwrap();
    assert_eq!(seq, 4);
    assert_eq!(
        reason,
        "operator_actions: column actor at seq 4 differs from the hashed entry"
    );
    db.sql(&format!(
        "UPDATE operator_actions SET actor = '{fourth}' WHERE seq = 4"
    ))
    .await;
    assert_eq!(store.verify_audit().await.unwrap().first_break, None);
    // An entry deleted.
    db.sql("DELETE FROM operator_actions WHERE seq = 7").await;
    let (seq, reason) = store.verify_audit().await.unwrap().first_break.unwrap();
    assert_eq!(seq, 8);
    assert!(
        reason.contains("operator_actions: broken link at seq 8"),
        "{reason}"
    );
}

async fn dead_letters_list_without_payloads(db: Db) {
    let store = db.open().await;
    store
        .append_with_dead_letters(
            "/data/CaseChangeEvent",
            &[],
            &[DeadLetter {
                channel: "/data/CaseChangeEvent".into(),
                replay_id: Some(sfsync_core::ReplayId::from_bytes(vec![0xab, 0x01])),
                schema_id: "s1".into(),
                stage: "decode".into(),
                error: "bad avro: truncated".into(),
                payload: vec![1, 2, 3, 4],
                object: Some("Case".into()),
            }],
            &sfsync_core::ReplayId::from_bytes(vec![0xab, 0x01]),
        )
        .await
        .unwrap();
    let page = |after| DeadLetterFilter {
        after,
        limit: 10,
        ..Default::default()
    };
    let dl = store.dead_letters(&page(Some(0))).await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].replay_id.as_deref(), Some("ab01"));
    assert_eq!((dl[0].stage.as_str(), dl[0].payload_bytes), ("decode", 4));
    assert!(store
        .dead_letters(&page(Some(dl[0].id)))
        .await
        .unwrap()
        .is_empty());
    store
        .submit_writes(&[NewWrite {
            source_system: "case_mgmt".into(),
            idempotency_key: "k1".into(),
            object: "Case".into(),
            target: WriteTarget::RecordId("500000000000001AAA".into()),
            fields: serde_json::json!({"Status": "Closed"})
                .as_object()
                .unwrap()
                .clone(),
            seen_version_ms: None,
        }])
        .await
        .unwrap();
    let c = store.ops_counts().await.unwrap();
    assert_eq!(c.dead_letters, 1);
    assert_eq!(
        (c.pending_repairs, c.pending_resyncs, c.quarantine_open),
        (0, 0, 0)
    );
    assert_eq!(c.writes_by_state.len(), WriteState::ALL.len());
    assert_eq!(c.writes_by_state[0], (WriteState::Pending, 1));
    assert!(c.writes_by_state[1..].iter().all(|(_, n)| *n == 0));
    assert_eq!(
        c.writes_by_object,
        vec![(
            "Case".to_string(),
            "case_mgmt".to_string(),
            WriteState::Pending,
            1
        )]
    );
    assert_eq!(c.oldest_open_write_ms.len(), 1);
    let (object, system, at) = &c.oldest_open_write_ms[0];
    assert_eq!((object.as_str(), system.as_str()), ("Case", "case_mgmt"));
    assert!(*at > 1_700_000_000_000, "{at}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_operator_chain() {
    chain_is_appended_verified_and_tamper_evident(Db::Sqlite(tempfile::tempdir().unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_operator_chain() {
    let (cfg, server) = support::pg::fresh_schema().await;
    chain_is_appended_verified_and_tamper_evident(Db::Postgres(Box::new(cfg), server)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dead_letters() {
    dead_letters_list_without_payloads(Db::Sqlite(tempfile::tempdir().unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dead_letters() {
    let (cfg, server) = support::pg::fresh_schema().await;
    dead_letters_list_without_payloads(Db::Postgres(Box::new(cfg), server)).await;
}
