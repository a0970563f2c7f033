//! One behavioural suite for the writeback outbox and write ledger, run against SQLite (temp
//! file) and Postgres (`SFSYNC_TEST_POSTGRES_URL`, or a throwaway server started by the tests):
//! idempotent submission, durability across a reopen, the state machine (legal transitions work,
//! illegal ones error and change nothing), claims that never hand a write to two claimers, outbox
//! rows inserted with plain SQL ingested (valid → pending, invalid → rejected naming the column),
//! fields sealed at rest with a keyring (also what came through the outbox, whose copy is
//! cleared, and a conflict's detail), operator actions (conflicts resolved each way, dead
//! letters redriven or discarded, with who and why), and the upgrade from schema 8 keeping
//! existing data.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use sfsync_store::*;

#[async_trait]
trait Backend: Send + Sync {
    async fn open(&self) -> Box<dyn WriteLedger>;
    /// The store with a PII keyring.
    async fn open_sealed(&self, keyring: Arc<Keyring>) -> Box<dyn WriteLedger>;
    /// Runs plain SQL against the database (as another system would).
    async fn sql(&self, sql: &str);
    /// The first column of a query, as optional text.
    async fn texts(&self, sql: &str) -> Vec<Option<String>>;
}

struct SqliteBackend {
    dir: tempfile::TempDir,
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn open(&self) -> Box<dyn WriteLedger> {
        Box::new(
            SqliteChangeLog::open(self.dir.path().join("sfsync.db"))
                .await
                .expect("open SQLite store"),
        )
    }

    async fn open_sealed(&self, keyring: Arc<Keyring>) -> Box<dyn WriteLedger> {
        let s = SqliteChangeLog::open(self.dir.path().join("sfsync.db"))
            .await
            .expect("open SQLite store");
        s.set_keyring(Some(keyring));
        Box::new(s)
    }

    async fn sql(&self, sql: &str) {
        let c = rusqlite::Connection::open(self.dir.path().join("sfsync.db")).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        c.execute_batch(sql).unwrap();
    }

    async fn texts(&self, sql: &str) -> Vec<Option<String>> {
        let c = rusqlite::Connection::open(self.dir.path().join("sfsync.db")).unwrap();
        let mut st = c.prepare(sql).unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
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

#[async_trait]
impl Backend for PostgresBackend {
    async fn open(&self) -> Box<dyn WriteLedger> {
        Box::new(
            PostgresChangeLog::connect_with(&self.config)
                .await
                .expect("connect to Postgres store"),
        )
    }

    async fn open_sealed(&self, keyring: Arc<Keyring>) -> Box<dyn WriteLedger> {
        let s = PostgresChangeLog::connect_with(&self.config)
            .await
            .expect("connect to Postgres store");
        s.set_keyring(Some(keyring));
        Box::new(s)
    }

    async fn sql(&self, sql: &str) {
        let (client, conn) = self.config.connect(tokio_postgres::NoTls).await.unwrap();
        let task = tokio::spawn(conn);
        client.batch_execute(sql).await.unwrap();
        drop(client);
        let _ = task.await;
    }

    async fn texts(&self, sql: &str) -> Vec<Option<String>> {
        let (client, conn) = self.config.connect(tokio_postgres::NoTls).await.unwrap();
        let task = tokio::spawn(conn);
        let rows = client.query(sql, &[]).await.unwrap();
        drop(client);
        let _ = task.await;
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

const CASE_ID: &str = "500000000000001AAA";

fn write(key: &str, target: WriteTarget) -> NewWrite {
    let fields = serde_json::json!({"Status": "Closed", "Priority": null});
    NewWrite {
        source_system: "case_mgmt".into(),
        idempotency_key: key.into(),
        object: "Case".into(),
        target,
        fields: fields.as_object().unwrap().clone(),
        seen_version_ms: Some(1_795_253_400_000),
    }
}

fn by_id(key: &str) -> NewWrite {
    write(key, WriteTarget::RecordId(CASE_ID.into()))
}

fn by_ext(key: &str, value: &str) -> NewWrite {
    write(
        key,
        WriteTarget::ExternalId {
            field: "Case_Ref__c".into(),
            value: value.into(),
        },
    )
}

fn accepted(o: &SubmitOutcome) -> i64 {
    match o {
        SubmitOutcome::Accepted { id } => *id,
        other => panic!("expected accepted, got {other:?}"),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn state(w: &dyn WriteLedger, id: i64) -> WriteState {
    w.write(id).await.unwrap().expect("write exists").state
}

// ---- cases ----

/// The same (source, key) twice — in one call and in two — is one write; the same key from
/// another source is another write; invalid writes are rejected and not stored.
async fn submissions_are_idempotent(b: &dyn Backend) {
    let w = b.open().await;
    let out = w
        .submit_writes(&[by_id("k1"), by_id("k1"), by_ext("k2", "C-2")])
        .await
        .unwrap();
    let id1 = accepted(&out[0]);
    assert_eq!(out[1], SubmitOutcome::Duplicate { id: id1 });
    let id2 = accepted(&out[2]);
    assert_ne!(id1, id2);

    let again = w.submit_writes(&[by_ext("k1", "other")]).await.unwrap();
    assert_eq!(again, vec![SubmitOutcome::Duplicate { id: id1 }]);

    let mut other_source = by_id("k1");
    other_source.source_system = "payments".into();
    let mut bad_id = by_id("k3");
    bad_id.target = WriteTarget::RecordId("not-an-id".into());
    let mut no_key = by_id("");
    no_key.idempotency_key = " ".into();
    let out = w
        .submit_writes(&[other_source, bad_id, no_key])
        .await
        .unwrap();
    let id3 = accepted(&out[0]);
    assert_ne!(id3, id1);
    assert!(
        matches!(&out[1], SubmitOutcome::Rejected { reason } if reason.contains("record_id")),
        "{:?}",
        out[1]
    );
    assert!(
        matches!(&out[2], SubmitOutcome::Rejected { reason } if reason.contains("idempotency_key")),
        "{:?}",
        out[2]
    );

    let all = w
        .writes(&WriteFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|w| w.id).collect::<Vec<_>>(),
        vec![id1, id2, id3]
    );
    let first = &all[0];
    assert_eq!(
        (
            first.state,
            first.origin,
            first.object.as_str(),
            first.record_id.as_deref(),
            first.seen_version_ms,
            first.attempts,
        ),
        (
            WriteState::Pending,
            WriteOrigin::Api,
            "Case",
            Some(CASE_ID),
            Some(1_795_253_400_000),
            0
        )
    );
    let fields: serde_json::Value = serde_json::from_str(&first.fields).unwrap();
    assert_eq!(
        fields,
        serde_json::json!({"Status": "Closed", "Priority": null})
    );
    assert_eq!(
        (
            all[1].external_id_field.as_deref(),
            all[1].external_id.as_deref()
        ),
        (Some("Case_Ref__c"), Some("C-2"))
    );
}

/// Accepted writes and their states survive closing and reopening the store.
async fn writes_survive_a_reopen(b: &dyn Backend) {
    let w = b.open().await;
    let id = accepted(&w.submit_writes(&[by_id("durable")]).await.unwrap()[0]);
    let claimed = w.claim_writes("deliverer-1", 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    drop(w);
    let w = b.open().await;
    let got = w.write(id).await.unwrap().expect("still there");
    assert_eq!(
        (got.state, got.attempts, got.claimed_by.as_deref()),
        (WriteState::Sent, 1, Some("deliverer-1"))
    );
    assert_eq!(
        w.submit_writes(&[by_id("durable")]).await.unwrap(),
        vec![SubmitOutcome::Duplicate { id }],
        "the key is still known after the reopen"
    );
}

/// Submits one write and drives it to `path`'s states through claims and outcomes.
async fn drive(w: &dyn WriteLedger, key: &str, path: &[WriteOutcome]) -> i64 {
    let id = accepted(&w.submit_writes(&[by_id(key)]).await.unwrap()[0]);
    for o in path {
        if *o == claim_marker() {
            let got = w.claim_writes("c", 100).await.unwrap();
            assert!(got.iter().any(|g| g.id == id), "{key}: claimed");
        } else {
            w.record_write_outcomes(&[(id, o.clone())]).await.unwrap();
        }
        assert_eq!(state(w, id).await, target_of(o), "{key} after {o:?}");
    }
    id
}

/// Stands for "claim it" in a path.
fn claim_marker() -> WriteOutcome {
    WriteOutcome::Requeue {
        note: "<claim>".into(),
    }
}

fn target_of(o: &WriteOutcome) -> WriteState {
    if *o == claim_marker() {
        WriteState::Sent
    } else {
        o.target()
    }
}

fn applied() -> WriteOutcome {
    WriteOutcome::Applied {
        record_id: CASE_ID.into(),
    }
}

/// Every legal transition works and is recorded with its time; every illegal one is an error
/// that changes nothing (not even the other outcomes of the same call).
async fn the_state_machine_is_enforced(b: &dyn Backend) {
    let w = &*b.open().await;
    let claim = claim_marker;
    let retry = || WriteOutcome::Retry {
        error: "UNABLE_TO_LOCK_ROW".into(),
    };
    let failed = || WriteOutcome::Failed {
        error: "INVALID_FIELD: No such column 'Foo__c'".into(),
    };
    let conflict = || WriteOutcome::Conflict {
        detail: "Status changed in Salesforce".into(),
    };
    let rejected = || WriteOutcome::Rejected {
        reason: "Status is owned by salesforce".into(),
    };
    let confirmed = || WriteOutcome::Confirmed {
        event_key: "tx/1/500".into(),
    };
    let requeue = || WriteOutcome::Requeue {
        note: "resolved by ada".into(),
    };

    // Every legal edge, along paths.
    let happy = drive(w, "happy", &[claim(), applied(), confirmed()]).await;
    drive(w, "retry", &[claim(), retry(), claim(), applied()]).await;
    drive(
        w,
        "dead",
        &[claim(), failed(), requeue(), claim(), failed(), rejected()],
    )
    .await;
    drive(
        w,
        "conflict1",
        &[conflict(), requeue(), claim(), conflict(), rejected()],
    )
    .await;
    drive(w, "policy", &[rejected()]).await;
    drive(w, "policy-at-delivery", &[claim(), rejected()]).await;

    let t = w.write_transitions(happy).await.unwrap();
    let steps: Vec<_> = t.iter().map(|t| (t.from, t.to)).collect();
    assert_eq!(
        steps,
        vec![
            (None, WriteState::Pending),
            (Some(WriteState::Pending), WriteState::Sent),
            (Some(WriteState::Sent), WriteState::Applied),
            (Some(WriteState::Applied), WriteState::Confirmed),
        ]
    );
    assert!(t.windows(2).all(|p| p[0].at_ms <= p[1].at_ms));
    assert_eq!(t[2].detail.as_deref(), Some(CASE_ID));
    let h = w.write(happy).await.unwrap().unwrap();
    assert_eq!(
        (h.record_id.as_deref(), h.echo_event_key.as_deref()),
        (Some(CASE_ID), Some("tx/1/500"))
    );

    // Every illegal edge from each state errors and changes nothing.
    let all = [
        applied(),
        retry(),
        failed(),
        conflict(),
        rejected(),
        confirmed(),
        requeue(),
    ];
    // Claims take every pending write, so the pending one is made last.
    let at: Vec<(WriteState, i64)> = vec![
        (WriteState::Sent, drive(w, "s-sent", &[claim()]).await),
        (
            WriteState::Applied,
            drive(w, "s-applied", &[claim(), applied()]).await,
        ),
        (WriteState::Confirmed, happy),
        (
            WriteState::Conflict,
            drive(w, "s-conflict", &[conflict()]).await,
        ),
        (
            WriteState::Rejected,
            drive(w, "s-rejected", &[rejected()]).await,
        ),
        (
            WriteState::Failed,
            drive(w, "s-failed", &[claim(), failed()]).await,
        ),
        (WriteState::Pending, drive(w, "s-pending", &[]).await),
    ];
    let mut illegal = 0;
    for (from, id) in &at {
        for o in &all {
            if o.allowed_from(*from) {
                continue;
            }
            illegal += 1;
            let before = w.write(*id).await.unwrap().unwrap();
            let steps_before = w.write_transitions(*id).await.unwrap().len();
            // A legal outcome for another write in the same call is rolled back too.
            let witness = drive(w, &format!("witness-{id}-{illegal}"), &[]).await;
            let err = w
                .record_write_outcomes(&[(witness, rejected()), (*id, o.clone())])
                .await
                .expect_err("illegal transition must fail");
            let msg = format!("{err:?}");
            assert!(
                msg.contains(&format!("write {id}")) && msg.contains(from.as_str()),
                "{msg}"
            );
            assert_eq!(w.write(*id).await.unwrap().unwrap(), before);
            assert_eq!(w.write_transitions(*id).await.unwrap().len(), steps_before);
            assert_eq!(state(w, witness).await, WriteState::Pending);
            // Keep the witnesses out of later claims.
            w.record_write_outcomes(&[(witness, rejected())])
                .await
                .unwrap();
        }
    }
    assert!(illegal >= 30, "checked {illegal} illegal transitions");
    // The state machine itself: exactly the documented edges.
    let legal: BTreeSet<(&str, &str)> = WriteState::ALL
        .iter()
        .flat_map(|f| {
            WriteState::ALL
                .iter()
                .filter(|t| f.can_become(**t))
                .map(|t| (f.as_str(), t.as_str()))
        })
        .collect();
    assert_eq!(legal.len(), 13, "{legal:?}");

    let unknown = w
        .record_write_outcomes(&[(999_999, rejected())])
        .await
        .expect_err("unknown write");
    assert!(format!("{unknown:?}").contains("999999"), "{unknown:?}");
}

/// Claims come ordered by object then record, in batches of the asked size, and two claimers
/// (two store handles, as two processes) never get the same write.
async fn claims_never_overlap(b: &dyn Backend) {
    let w = b.open().await;
    assert_eq!(w.pending_groups(100, now_ms()).await.unwrap(), vec![]);
    let mut batch = Vec::new();
    for i in 0..60 {
        let mut x = by_ext(&format!("c{i}"), &format!("C-{:03}", 59 - i));
        if i % 3 == 0 {
            x.object = "Account".into();
        }
        batch.push(x);
    }
    let before = now_ms();
    w.submit_writes(&batch).await.unwrap();
    let pending = w.pending_groups(100, now_ms()).await.unwrap();
    let summary: Vec<_> = pending
        .iter()
        .map(|g| {
            (
                g.group.object.as_str(),
                g.group.external_id_field.as_deref(),
                g.count,
                g.due,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("Account", Some("Case_Ref__c"), 20, 20),
            ("Case", Some("Case_Ref__c"), 40, 40)
        ]
    );
    for g in &pending {
        assert!(g.oldest_created_ms >= before && g.oldest_created_ms <= now_ms());
    }
    let not_due = w.pending_groups(100, before - 1).await.unwrap();
    assert!(not_due.iter().all(|g| g.due == 0), "{not_due:?}");
    let capped: usize = w
        .pending_groups(25, now_ms())
        .await
        .unwrap()
        .iter()
        .map(|g| g.count)
        .sum();
    assert_eq!(capped, 25, "counted among the oldest `cap`");

    let first = w.claim_writes("one", 7).await.unwrap();
    assert_eq!(first.len(), 7);
    let left: usize = w
        .pending_groups(100, now_ms())
        .await
        .unwrap()
        .iter()
        .map(|g| g.count)
        .sum();
    assert_eq!(left, 53);
    assert!(first.iter().all(|x| x.object == "Account"));
    let keys: Vec<_> = first.iter().map(|x| x.external_id.clone()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "ordered by record within the object");

    let other = b.open().await;
    let (a, bb) = (Arc::new(w), Arc::new(other));
    let mut tasks = Vec::new();
    for (n, store) in [
        (0, a.clone()),
        (1, bb.clone()),
        (2, a.clone()),
        (3, bb.clone()),
    ] {
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let c = store
                    .claim_writes(&format!("claimer-{n}"), 5)
                    .await
                    .unwrap();
                if c.is_empty() {
                    break;
                }
                assert!(c.len() <= 5);
                got.extend(c.into_iter().map(|x| x.id));
            }
            got
        }));
    }
    let mut seen: Vec<i64> = first.iter().map(|x| x.id).collect();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    let unique: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "a write was claimed twice");
    assert_eq!(unique.len(), 60);
    let sent = a
        .writes(&WriteFilter {
            states: vec![WriteState::Sent],
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sent.len(), 60);
    assert!(sent.iter().all(|x| x.attempts == 1));
    assert_eq!(a.pending_groups(100, now_ms()).await.unwrap(), vec![]);
}

/// A group claim takes the oldest pending writes of one object and target kind, one per
/// record: a record's next write waits for the next claim, so its writes go out in order.
async fn group_claims_take_one_write_per_record(b: &dyn Backend) {
    let w = b.open().await;
    let other = |key: &str| {
        let mut x = by_id(key);
        x.target = WriteTarget::RecordId("500000000000002AAA".into());
        x
    };
    let ids: Vec<i64> = w
        .submit_writes(&[
            by_id("a1"),
            other("b1"),
            by_ext("x1", "C-1"),
            by_id("a2"),
            by_ext("x2", "C-1"),
            by_ext("y1", "C-2"),
            by_id("a3"),
        ])
        .await
        .unwrap()
        .iter()
        .map(accepted)
        .collect();
    let by_id_group = WriteGroup {
        object: "Case".into(),
        external_id_field: None,
    };
    let ext_group = WriteGroup {
        object: "Case".into(),
        external_id_field: Some("Case_Ref__c".into()),
    };
    let groups = w.pending_groups(100, now_ms()).await.unwrap();
    assert_eq!(
        groups
            .iter()
            .map(|g| (g.group.clone(), g.count))
            .collect::<Vec<_>>(),
        vec![(by_id_group.clone(), 4), (ext_group.clone(), 3)],
        "ordered by their oldest write"
    );
    let claim = |g: &WriteGroup, n: usize| {
        let (w, g) = (&w, g.clone());
        async move {
            w.claim_group("d", &g, n)
                .await
                .unwrap()
                .iter()
                .map(|x| x.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(claim(&by_id_group, 10).await, vec![ids[0], ids[1]]);
    assert_eq!(claim(&by_id_group, 10).await, vec![ids[3]]);
    assert_eq!(claim(&ext_group, 1).await, vec![ids[2]], "the limit holds");
    assert_eq!(claim(&ext_group, 10).await, vec![ids[4], ids[5]]);
    assert_eq!(claim(&by_id_group, 10).await, vec![ids[6]]);
    assert_eq!(claim(&by_id_group, 10).await, Vec::<i64>::new());
    let sent = w.write(ids[6]).await.unwrap().unwrap();
    assert_eq!((sent.state, sent.attempts), (WriteState::Sent, 1));
    let err = w
        .claim_group("", &by_id_group, 1)
        .await
        .expect_err("an unnamed claimer");
    assert!(format!("{err}").contains("claimer"), "{err}");
}

/// Rows other systems insert with plain SQL are ingested once: valid → pending, invalid →
/// rejected with a reason naming the column, a key already in the ledger → the existing write.
async fn outbox_rows_are_ingested(b: &dyn Backend) {
    let w = b.open().await;
    let dup = accepted(&w.submit_writes(&[by_id("api-1")]).await.unwrap()[0]);
    b.sql(
        r#"
INSERT INTO outbox (source_system, idempotency_key, object, record_id, fields, seen_version_ms)
    VALUES ('case_mgmt', 'ob-1', 'Case', '500000000000002AAA', '{"Status":"New"}', 5);
INSERT INTO outbox (source_system, idempotency_key, object, external_id_field, external_id, fields)
    VALUES ('case_mgmt', 'ob-2', 'Case', 'Case_Ref__c', 'C-9', '{"Subject":null}');
INSERT INTO outbox (source_system, idempotency_key, object, record_id, fields)
    VALUES ('case_mgmt', 'ob-3', 'Case', '500000000000003AAA', '{"Status":');
INSERT INTO outbox (source_system, idempotency_key, record_id, fields)
    VALUES ('case_mgmt', 'ob-4', '500000000000004AAA', '{"Status":"New"}');
INSERT INTO outbox (source_system, idempotency_key, object, fields)
    VALUES ('case_mgmt', 'ob-5', 'Case', '{"Status":"New"}');
INSERT INTO outbox (source_system, idempotency_key, object, external_id_field, fields)
    VALUES ('case_mgmt', 'ob-6', 'Case', 'Case_Ref__c', '{"Status":"New"}');
INSERT INTO outbox (source_system, idempotency_key, object, record_id, fields)
    VALUES ('case_mgmt', 'ob-7', 'Case', '500000000000007AAA', '[1,2]');
INSERT INTO outbox (source_system, idempotency_key, object, record_id, fields)
    VALUES ('case_mgmt', 'api-1', 'Case', '500000000000001AAA', '{"Status":"New"}');
"#,
    )
    .await;
    let first = w.ingest_outbox(5).await.unwrap();
    let rest = w.ingest_outbox(100).await.unwrap();
    assert_eq!(
        (
            first.accepted + rest.accepted,
            first.rejected + rest.rejected,
            first.duplicates + rest.duplicates
        ),
        (2, 5, 1)
    );
    assert_eq!(first.accepted + first.rejected + first.duplicates, 5);
    assert_eq!(w.ingest_outbox(100).await.unwrap(), OutboxIngest::default());

    let all = w
        .writes(&WriteFilter {
            source_system: Some("case_mgmt".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let find = |k: &str| all.iter().find(|x| x.idempotency_key == k).unwrap();
    assert_eq!(find("ob-1").state, WriteState::Pending);
    assert_eq!(find("ob-1").origin, WriteOrigin::Outbox);
    assert_eq!(find("ob-1").seen_version_ms, Some(5));
    assert_eq!(find("ob-2").state, WriteState::Pending);
    assert_eq!(find("api-1").id, dup);
    assert_eq!(find("api-1").origin, WriteOrigin::Api);
    for (k, column) in [
        ("ob-3", "column fields is not valid JSON"),
        ("ob-4", "column object"),
        ("ob-5", "record_id and external_id are both empty"),
        ("ob-6", "column external_id is empty"),
        ("ob-7", "column fields is not a JSON object"),
    ] {
        let x = find(k);
        assert_eq!(x.state, WriteState::Rejected, "{k}");
        let reason = x.reason.as_deref().unwrap_or_default();
        assert!(reason.contains(column), "{k}: {reason}");
        assert!(x.outbox_id.is_some());
    }
    // The bad row's content is kept.
    assert_eq!(find("ob-3").fields, r#"{"Status":"#);
    assert_eq!(all.len(), 8);
}

/// The write a CDC echo confirms is the oldest applied write of that record.
async fn echoes_find_their_write(b: &dyn Backend) {
    let w = b.open().await;
    let a = accepted(&w.submit_writes(&[by_ext("e1", "C-1")]).await.unwrap()[0]);
    let b2 = accepted(&w.submit_writes(&[by_ext("e2", "C-1")]).await.unwrap()[0]);
    assert_eq!(w.echo_write("Case", CASE_ID).await.unwrap(), None);
    w.claim_writes("d", 10).await.unwrap();
    w.record_write_outcomes(&[(a, applied()), (b2, applied())])
        .await
        .unwrap();
    assert_eq!(
        w.echo_write("Case", CASE_ID).await.unwrap().map(|x| x.id),
        Some(a)
    );
    assert_eq!(w.echo_write("Account", CASE_ID).await.unwrap(), None);
    w.record_write_outcomes(&[(
        a,
        WriteOutcome::Confirmed {
            event_key: "tx/1".into(),
        },
    )])
    .await
    .unwrap();
    assert_eq!(
        w.echo_write("Case", CASE_ID).await.unwrap().map(|x| x.id),
        Some(b2)
    );
}

async fn abandoned_claims_return_to_pending(b: &dyn Backend) {
    let w = b.open().await;
    let ids: Vec<i64> = w
        .submit_writes(&[
            by_ext("a1", "C-1"),
            by_ext("a2", "C-2"),
            by_ext("a3", "C-3"),
        ])
        .await
        .unwrap()
        .iter()
        .map(accepted)
        .collect();
    let claimed = w.claim_writes("crashed", 2).await.unwrap();
    assert_eq!(claimed.len(), 2);
    // One claimed write got its outcome before the crash; the other did not.
    w.record_write_outcomes(&[(ids[1], applied())])
        .await
        .unwrap();
    // A lease that has not run out yet (claimed after the cut-off): nothing moves.
    assert_eq!(
        w.requeue_abandoned(0, "lease").await.unwrap(),
        Vec::<i64>::new()
    );
    assert_eq!(state(&*w, ids[0]).await, WriteState::Sent);
    // Past the lease: only the abandoned `sent` write goes back in line.
    let back = w
        .requeue_abandoned(i64::MAX, "claim by crashed expired")
        .await
        .unwrap();
    assert_eq!(back, vec![ids[0]]);
    assert_eq!(state(&*w, ids[0]).await, WriteState::Pending);
    assert_eq!(state(&*w, ids[1]).await, WriteState::Applied);
    assert_eq!(state(&*w, ids[2]).await, WriteState::Pending);
    let last = w.write_transitions(ids[0]).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.from, last.to, last.detail.as_deref()),
        (
            Some(WriteState::Sent),
            WriteState::Pending,
            Some("claim by crashed expired")
        )
    );
    // Another deliverer claims it again (a second attempt).
    let again = w.claim_writes("next", 10).await.unwrap();
    let a = again.iter().find(|x| x.id == ids[0]).expect("reclaimed");
    assert_eq!((a.attempts, a.claimed_by.as_deref()), (2, Some("next")));
    assert_eq!(
        w.requeue_abandoned(0, "x").await.unwrap(),
        Vec::<i64>::new()
    );
}

async fn fields_are_sealed_at_rest(b: &dyn Backend) {
    let keyring = Arc::new(Keyring::from_hex("wb-1", &"7".repeat(64)).unwrap());
    let w = b.open_sealed(keyring.clone()).await;
    let mut nw = by_id("sealed-1");
    nw.fields = serde_json::json!({"Description": "Jane Roe, SSN 123-45-6789"})
        .as_object()
        .unwrap()
        .clone();
    let id = accepted(&w.submit_writes(&[nw]).await.unwrap()[0]);
    b.sql(
        r#"
INSERT INTO outbox (source_system, idempotency_key, object, record_id, fields)
    VALUES ('case_mgmt', 'sealed-2', 'Case', '500000000000002AAA', '{"Description":"John Doe, 555-0100"}');
INSERT INTO outbox (source_system, idempotency_key, object, record_id, fields)
    VALUES ('case_mgmt', 'sealed-3', 'Case', '500000000000003AAA', '{"Description":"broken');
"#,
    )
    .await;
    let report = w.ingest_outbox(10).await.unwrap();
    assert_eq!((report.accepted, report.rejected), (1, 1), "{report:?}");
    // At rest: no plaintext in the ledger, none left in the outbox.
    for stored in b.texts("SELECT fields FROM writes ORDER BY id").await {
        let stored = stored.unwrap_or_default();
        assert!(
            !stored.contains("Roe") && !stored.contains("Doe") && !stored.contains("broken"),
            "plaintext at rest: {stored}"
        );
    }
    assert_eq!(
        b.texts("SELECT fields FROM outbox ORDER BY id").await,
        vec![None, None],
        "ingested outbox rows keep no copy of the fields"
    );
    // Read back: opened.
    let got = w.write(id).await.unwrap().unwrap();
    assert!(got.fields.contains("Jane Roe"), "{got:?}");
    let all = w
        .writes(&WriteFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(all.iter().any(|x| x.fields.contains("John Doe")), "{all:?}");
    assert!(all.iter().any(|x| x.fields.contains("broken")), "{all:?}");
    let claimed = w.claim_writes("deliverer", 10).await.unwrap();
    assert!(
        !claimed.is_empty() && claimed.iter().all(|x| x.fields.contains("Description")),
        "{claimed:?}"
    );
    // Without the key the fields cannot be read, and the error says why.
    let plain = b.open().await;
    let err = plain.write(id).await.unwrap_err().to_string();
    assert!(err.contains("keyring"), "{err}");
}

// ---- operator actions: conflicts resolved, dead letters redriven or discarded ----

const SEEN: i64 = 1_795_253_400_000;

fn conflict_detail() -> ConflictDetail {
    ConflictDetail {
        fields: vec![
            FieldConflict {
                field: "Status".into(),
                salesforce: serde_json::json!("Escalated"),
                writer: serde_json::json!("Closed"),
                salesforce_changed_ms: SEEN + 60_000,
            },
            FieldConflict {
                field: "Priority".into(),
                salesforce: serde_json::json!("High"),
                writer: serde_json::Value::Null,
                salesforce_changed_ms: SEEN + 120_000,
            },
        ],
        held: vec![],
    }
}

/// Submits a write and moves it to `conflict` with a real [`ConflictDetail`].
async fn in_conflict(w: &dyn WriteLedger, key: &str) -> i64 {
    let conflict = WriteOutcome::Conflict {
        detail: conflict_detail().to_json(),
    };
    drive(w, key, &[claim_marker(), conflict]).await
}

async fn in_failed(w: &dyn WriteLedger, key: &str) -> i64 {
    let failed = WriteOutcome::Failed {
        error: "INVALID_FIELD: No such column 'Foo__c' on entity 'Case'".into(),
    };
    drive(w, key, &[claim_marker(), failed]).await
}

fn fields_of(w: &LedgerWrite) -> serde_json::Value {
    serde_json::from_str(&w.fields).unwrap()
}

/// Each resolution does what it says and records who and why; a wrong state, an unknown field
/// or an unreadable conflict is an error that writes nothing.
async fn conflicts_are_resolved_by_a_person(b: &dyn Backend) {
    let w = &*b.open().await;

    // Keep Salesforce's value: rejected, the reason names the person.
    let keep = in_conflict(w, "keep").await;
    let got = w
        .resolve_conflict(keep, &Resolution::KeepSalesforce, "ada", "customer called")
        .await
        .unwrap();
    assert_eq!(got.state, WriteState::Rejected);
    assert_eq!(
        got.reason.as_deref(),
        Some("conflict resolved: Salesforce's value was kept by ada: customer called")
    );
    assert_eq!(got.seen_version_ms, Some(SEEN), "seen version untouched");
    let last = w.write_transitions(keep).await.unwrap().pop().unwrap();
    assert_eq!(
        (
            last.from,
            last.to,
            last.actor.as_deref(),
            last.note.as_deref()
        ),
        (
            Some(WriteState::Conflict),
            WriteState::Rejected,
            Some("ada"),
            Some("customer called")
        )
    );

    // Take the writer's values: pending, seen version raised to the newest Salesforce change.
    let take = in_conflict(w, "take").await;
    let got = w
        .resolve_conflict(take, &Resolution::TakeWriter, "bob", "")
        .await
        .unwrap();
    assert_eq!(
        (got.state, got.seen_version_ms),
        (WriteState::Pending, Some(SEEN + 120_000))
    );
    assert_eq!(
        fields_of(&got),
        serde_json::json!({"Status": "Closed", "Priority": null})
    );
    let last = w.write_transitions(take).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.to, last.actor.as_deref(), last.note.as_deref()),
        (WriteState::Pending, Some("bob"), None),
        "an empty note is not stored"
    );
    // Delivered again: claimable like any pending write.
    let claimed = w.claim_writes("c", 100).await.unwrap();
    assert!(claimed.iter().any(|c| c.id == take), "{claimed:?}");

    // A value: only the named field changes (matched case-insensitively), seen version raised.
    let value = in_conflict(w, "value").await;
    let set = serde_json::json!({"status": "Escalated"})
        .as_object()
        .unwrap()
        .clone();
    let got = w
        .resolve_conflict(value, &Resolution::Value(set), "ada", "agreed with ops")
        .await
        .unwrap();
    assert_eq!(
        (got.state, got.seen_version_ms),
        (WriteState::Pending, Some(SEEN + 120_000))
    );
    assert_eq!(
        fields_of(&got),
        serde_json::json!({"Status": "Escalated", "Priority": null})
    );

    // Refused, and nothing written: an unknown field, a write not in conflict, an empty actor.
    let other = in_conflict(w, "unknown-field").await;
    let before = w.write(other).await.unwrap().unwrap();
    let before_log = w.write_transitions(other).await.unwrap();
    let set = serde_json::json!({"Status": "Closed", "Foo__c": 1})
        .as_object()
        .unwrap()
        .clone();
    let err = w
        .resolve_conflict(other, &Resolution::Value(set), "ada", "")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("field 'Foo__c' is not a field of write") && err.contains("Priority"),
        "{err}"
    );
    let err = w
        .resolve_conflict(other, &Resolution::TakeWriter, " ", "")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("must be named"), "{err}");
    assert_eq!(w.write(other).await.unwrap().unwrap(), before);
    assert_eq!(w.write_transitions(other).await.unwrap(), before_log);

    let log = w.write_transitions(take).await.unwrap();
    let err = w
        .resolve_conflict(take, &Resolution::KeepSalesforce, "ada", "")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("write {take} is sent, not in conflict")),
        "{err}"
    );
    assert_eq!(state(w, take).await, WriteState::Sent);
    assert_eq!(w.write_transitions(take).await.unwrap(), log);
    let err = w
        .resolve_conflict(999_999, &Resolution::TakeWriter, "ada", "")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("write 999999 does not exist"), "{err}");

    // A conflict recorded without a readable detail: no version to accept, so only keeping
    // Salesforce's value (or discarding) is possible.
    let opaque = drive(
        w,
        "opaque",
        &[
            claim_marker(),
            WriteOutcome::Conflict {
                detail: "Status changed in Salesforce".into(),
            },
        ],
    )
    .await;
    let err = w
        .resolve_conflict(opaque, &Resolution::TakeWriter, "ada", "")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no readable conflict detail"), "{err}");
    assert_eq!(state(w, opaque).await, WriteState::Conflict);
}

/// Redrive takes failed writes back to pending (attempts kept); discard rejects failed and
/// conflicted writes; other states and unknown ids are reported per id and left alone.
async fn dead_letters_are_redriven_or_discarded(b: &dyn Backend) {
    let w = &*b.open().await;
    let failed = in_failed(w, "failed").await;
    let failed_2 = in_failed(w, "failed-2").await;
    let conflicted = in_conflict(w, "conflicted").await;
    let pending = accepted(&w.submit_writes(&[by_id("pending")]).await.unwrap()[0]);

    let out = w
        .redrive_writes(
            &[failed, pending, 999_999, conflicted],
            "ada",
            "field added",
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            (
                failed,
                WriteActOutcome::Done {
                    from: WriteState::Failed,
                    to: WriteState::Pending
                }
            ),
            (
                pending,
                WriteActOutcome::NotAllowed {
                    state: WriteState::Pending
                }
            ),
            (999_999, WriteActOutcome::NotFound),
            (
                conflicted,
                WriteActOutcome::NotAllowed {
                    state: WriteState::Conflict
                }
            ),
        ]
    );
    let got = w.write(failed).await.unwrap().unwrap();
    assert_eq!(
        (got.state, got.attempts, got.last_error.as_deref()),
        (
            WriteState::Pending,
            1,
            Some("INVALID_FIELD: No such column 'Foo__c' on entity 'Case'")
        ),
        "attempts and the last error are kept"
    );
    let last = w.write_transitions(failed).await.unwrap().pop().unwrap();
    assert_eq!(
        (
            last.from,
            last.to,
            last.detail.as_deref(),
            last.actor.as_deref(),
            last.note.as_deref()
        ),
        (
            Some(WriteState::Failed),
            WriteState::Pending,
            Some("redriven by ada"),
            Some("ada"),
            Some("field added")
        )
    );
    assert_eq!(state(w, pending).await, WriteState::Pending);
    assert_eq!(
        w.write_transitions(pending).await.unwrap().len(),
        1,
        "nothing recorded for a refused id"
    );
    assert_eq!(state(w, conflicted).await, WriteState::Conflict);

    let out = w
        .discard_writes(&[failed_2, conflicted, failed], "bob", "")
        .await
        .unwrap();
    assert_eq!(
        out.iter().map(|(_, o)| o.clone()).collect::<Vec<_>>(),
        vec![
            WriteActOutcome::Done {
                from: WriteState::Failed,
                to: WriteState::Rejected
            },
            WriteActOutcome::Done {
                from: WriteState::Conflict,
                to: WriteState::Rejected
            },
            WriteActOutcome::NotAllowed {
                state: WriteState::Pending
            },
        ]
    );
    let got = w.write(failed_2).await.unwrap().unwrap();
    assert_eq!(
        (got.state, got.reason.as_deref()),
        (WriteState::Rejected, Some("discarded by bob"))
    );
    // Discarding twice: reported, nothing written.
    let log = w.write_transitions(failed_2).await.unwrap();
    let out = w.discard_writes(&[failed_2], "bob", "again").await.unwrap();
    assert_eq!(
        out,
        vec![(
            failed_2,
            WriteActOutcome::NotAllowed {
                state: WriteState::Rejected
            }
        )]
    );
    assert_eq!(w.write_transitions(failed_2).await.unwrap(), log);
    let err = w.redrive_writes(&[failed], "", "").await.unwrap_err();
    assert!(err.to_string().contains("must be named"), "{err}");
}

/// A value resolution re-seals the write's fields: the new value is never at rest in plaintext.
async fn resolved_fields_stay_sealed(b: &dyn Backend) {
    let keyring = Arc::new(Keyring::from_hex("wb-1", &"7".repeat(64)).unwrap());
    let w = &*b.open_sealed(keyring).await;
    let id = in_conflict(w, "sealed-conflict").await;
    // The conflict's detail quotes both sides' values: sealed at rest in the reason and the
    // transition, opened on read.
    for stored in b
        .texts("SELECT reason FROM writes UNION ALL SELECT detail FROM write_transitions")
        .await
        .into_iter()
        .flatten()
    {
        assert!(!stored.contains("Escalated"), "plaintext at rest: {stored}");
    }
    let got = w.write(id).await.unwrap().unwrap();
    assert_eq!(
        got.reason.as_deref().and_then(ConflictDetail::parse),
        Some(conflict_detail())
    );
    let logged = w.write_transitions(id).await.unwrap();
    assert_eq!(
        logged.last().unwrap().detail.as_deref(),
        Some(conflict_detail().to_json().as_str())
    );
    let set = serde_json::json!({"Status": "Call Jane Roe back"})
        .as_object()
        .unwrap()
        .clone();
    let got = w
        .resolve_conflict(id, &Resolution::Value(set), "ada", "")
        .await
        .unwrap();
    assert_eq!(fields_of(&got)["Status"], "Call Jane Roe back");
    let stored = b
        .texts(&format!("SELECT fields FROM writes WHERE id = {id}"))
        .await
        .pop()
        .flatten()
        .unwrap();
    assert!(
        stored.starts_with(sfsync_store::pii::TEXT_PREFIX) && !stored.contains("Roe"),
        "plaintext at rest: {stored}"
    );
    assert_eq!(
        fields_of(&w.write(id).await.unwrap().unwrap())["Status"],
        "Call Jane Roe back"
    );
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
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let b = super::postgres_backend().await;
                    super::$case(&b).await;
                }
            )*
        }
    };
}

suite!(
    submissions_are_idempotent,
    writes_survive_a_reopen,
    the_state_machine_is_enforced,
    claims_never_overlap,
    group_claims_take_one_write_per_record,
    outbox_rows_are_ingested,
    echoes_find_their_write,
    abandoned_claims_return_to_pending,
    fields_are_sealed_at_rest,
    conflicts_are_resolved_by_a_person,
    dead_letters_are_redriven_or_discarded,
    resolved_fields_stay_sealed,
);

// ---- upgrade from schema 8 ----

const V8_DATA: &str = "
INSERT INTO sync_jobs (kind, object, reason, status, params, requested_by, requested_at_ms,
    watermark_ms)
VALUES ('formula_refresh', 'Account', 'scheduled', 'succeeded', '{}', 'schedule', 1, 42);
INSERT INTO checkpoints (channel, replay_id, updated_at_ms) VALUES ('/data/CaseChangeEvent', X'00ff', 1);
";

async fn upgrade_keeps_data(b: &dyn Backend) {
    let w = b.open().await;
    let versions: Vec<i64> = w
        .applied_migrations()
        .await
        .unwrap()
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(
        versions,
        (1..=migrate::latest(sfsync_store::sqlite::MIGRATIONS)).collect::<Vec<_>>()
    );
    assert_eq!(
        w.checkpoint("/data/CaseChangeEvent")
            .await
            .unwrap()
            .map(|r| r.as_bytes().to_vec()),
        Some(vec![0x00, 0xff])
    );
    let id = accepted(&w.submit_writes(&[by_id("after-upgrade")]).await.unwrap()[0]);
    assert_eq!(state(&*w, id).await, WriteState::Pending);
}

#[tokio::test]
async fn sqlite_upgrade_from_v8_keeps_data() {
    let b = sqlite_backend();
    {
        let c = rusqlite::Connection::open(b.dir.path().join("sfsync.db")).unwrap();
        c.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                 applied_at_ms INTEGER NOT NULL)",
        )
        .unwrap();
        for m in &sfsync_store::sqlite::MIGRATIONS[..8] {
            assert!(m.version <= 8);
            c.execute_batch(m.sql).unwrap();
            c.execute(
                "INSERT INTO schema_migrations VALUES (?1, ?2, 0)",
                rusqlite::params![m.version, m.name],
            )
            .unwrap();
        }
        c.execute_batch(V8_DATA).unwrap();
        assert!(c.execute_batch("SELECT * FROM outbox").is_err());
    }
    upgrade_keeps_data(&b).await;
    let job = rusqlite::Connection::open(b.dir.path().join("sfsync.db"))
        .unwrap()
        .query_row("SELECT kind, watermark_ms FROM sync_jobs", [], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .unwrap();
    assert_eq!(job, ("formula_refresh".to_string(), 42));
}

#[tokio::test]
async fn postgres_upgrade_from_v8_keeps_data() {
    let b = postgres_backend().await;
    let (client, conn) = b.config.connect(tokio_postgres::NoTls).await.unwrap();
    let task = tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL,
                 applied_at_ms BIGINT NOT NULL)",
        )
        .await
        .unwrap();
    for m in &sfsync_store::postgres::MIGRATIONS[..8] {
        assert!(m.version <= 8);
        client.batch_execute(m.sql).await.unwrap();
        client
            .execute(
                "INSERT INTO schema_migrations VALUES ($1, $2, 0)",
                &[&m.version, &m.name],
            )
            .await
            .unwrap();
    }
    client
        .batch_execute(&V8_DATA.replace("X'00ff'", "'\\x00ff'::bytea"))
        .await
        .unwrap();
    assert!(client.batch_execute("SELECT * FROM outbox").await.is_err());
    upgrade_keeps_data(&b).await;
    let row = client
        .query_one("SELECT kind, watermark_ms FROM sync_jobs", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i64>(1)),
        ("formula_refresh".to_string(), 42)
    );
    drop(client);
    let _ = task.await;
}
