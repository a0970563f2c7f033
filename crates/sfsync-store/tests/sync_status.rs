//! The freshness contract in the store ([`SyncStatusStore`]) on SQLite and Postgres: rows of
//! `sync_status_state` read back through the `sync_status` view, with lag and status computed by
//! the database's clock (an object turns `delayed` with nobody writing), `partial` while work is
//! open, the counts of open work the running process derives its rows from, the gate queries
//! the README shows, and an upgrade of a schema-15 database.

mod support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sfsync_store::*;

const T0: i64 = 1_790_000_000_000;

#[async_trait]
trait Backend: Send + Sync {
    async fn open(&self) -> Box<dyn Warehouse>;
    /// The README's gate query, run by a plain client of the database: true when both Account
    /// and Case are current.
    async fn gate(&self) -> bool;
}

struct SqliteBackend {
    dir: tempfile::TempDir,
}

impl SqliteBackend {
    fn file(&self) -> std::path::PathBuf {
        self.dir.path().join("sfsync.db")
    }
}

/// The gate query of the README (both dialects).
const GATE_SQL: &str = "SELECT count(*) = 2 AS ready FROM sync_status \
     WHERE object IN ('Account', 'Case') AND status = 'current'";

#[async_trait]
impl Backend for SqliteBackend {
    async fn open(&self) -> Box<dyn Warehouse> {
        Box::new(
            SqliteChangeLog::open(self.file())
                .await
                .expect("open SQLite store"),
        )
    }

    async fn gate(&self) -> bool {
        let c = rusqlite::Connection::open(self.file()).unwrap();
        c.query_row(GATE_SQL, [], |r| r.get::<_, bool>(0)).unwrap()
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
    async fn open(&self) -> Box<dyn Warehouse> {
        Box::new(
            PostgresChangeLog::connect_with(&self.config)
                .await
                .expect("connect to Postgres store"),
        )
    }

    async fn gate(&self) -> bool {
        let (client, conn) = self.config.connect(tokio_postgres::NoTls).await.unwrap();
        let task = tokio::spawn(conn);
        let ready: bool = client.query_one(GATE_SQL, &[]).await.unwrap().get(0);
        drop(client);
        let _ = task.await;
        ready
    }
}

async fn postgres_backend() -> PostgresBackend {
    let (config, server) = support::pg::fresh_schema().await;
    PostgresBackend {
        config,
        _server: server,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A row of an object caught up just now, nothing open, with a threshold of an hour (so it is
/// current however slowly the test runs).
fn state(object: &str) -> SyncStatusState {
    let now = now_ms();
    SyncStatusState {
        object: object.into(),
        last_commit_ms: Some(T0 + 123),
        last_applied_ms: Some(T0 + 456),
        current_as_of_ms: Some(now),
        open_repairs: 0,
        open_resyncs: 0,
        backfill_running: false,
        last_reconcile_ms: Some(T0 + 789),
        last_reconcile_result: Some(ReconcileResult::InSync),
        last_reconcile_detail: Some("0 missing, 0 extra, 0 stale".into()),
        delayed_after_secs: 3600,
        updated_ms: now,
    }
}

async fn one(w: &dyn Warehouse, object: &str) -> SyncStatus {
    let mut rows = w.sync_status(Some(object)).await.unwrap();
    assert_eq!(rows.len(), 1, "one row of {object}: {rows:?}");
    rows.remove(0)
}

/// What is written reads back through the view, field by field (times to the millisecond),
/// and a freshly caught-up object is current.
async fn rows_read_back_through_the_view(b: &dyn Backend) {
    let w = b.open().await;
    assert!(w.sync_status(None).await.unwrap().is_empty());
    let case = state("Case");
    let account = SyncStatusState {
        last_commit_ms: None,
        last_applied_ms: None,
        last_reconcile_ms: None,
        last_reconcile_result: None,
        last_reconcile_detail: None,
        ..state("Account")
    };
    w.put_sync_status(&[case.clone(), account.clone()])
        .await
        .unwrap();
    let rows = w.sync_status(None).await.unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r.state.object.as_str())
            .collect::<Vec<_>>(),
        ["Account", "Case"]
    );
    for (got, want) in rows.iter().zip([&account, &case]) {
        assert_eq!(&got.state, want);
        assert_eq!(got.status, FreshnessStatus::Current, "{got:?}");
        let lag = got.lag_seconds.expect("a lag");
        assert!((0.0..3600.0).contains(&lag), "{got:?}");
        assert!(got.status_reason.starts_with("caught up as of "), "{got:?}");
        assert!(
            got.status_reason.ends_with("(delayed after 3600 s)"),
            "{got:?}"
        );
    }
    assert!(b.gate().await, "both objects current: the gate opens");
    // Another store on the same database reads the same.
    drop(w);
    let w = b.open().await;
    assert_eq!(one(&*w, "Case").await.state, case);
    assert!(w.sync_status(Some("Lead")).await.unwrap().is_empty());
}

/// Nobody writes, yet the row turns delayed once the database's clock passes the threshold:
/// a stopped sfsync is reported without a process to report it. An object never caught up
/// is delayed too.
async fn delayed_by_the_database_clock(b: &dyn Backend) {
    let w = b.open().await;
    let mut case = state("Case");
    case.delayed_after_secs = 1;
    let mut account = state("Account");
    account.current_as_of_ms = None;
    w.put_sync_status(&[case, account]).await.unwrap();
    let a = one(&*w, "Account").await;
    assert_eq!(a.status, FreshnessStatus::Delayed, "{a:?}");
    assert_eq!(a.lag_seconds, None);
    assert_eq!(a.status_reason, "not yet caught up with the stream");
    let mut last = None;
    for _ in 0..100 {
        let c = one(&*w, "Case").await;
        if c.status == FreshnessStatus::Delayed {
            last = Some(c);
            break;
        }
        assert_eq!(c.status, FreshnessStatus::Current, "{c:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = last.expect("Case turned delayed within 10 s with a 1 s threshold");
    assert!(c.lag_seconds.unwrap() > 1.0, "{c:?}");
    assert!(
        c.status_reason.starts_with("not current for ")
            && c.status_reason.ends_with(" s (delayed after 1 s)"),
        "{c:?}"
    );
    assert!(!b.gate().await, "a delayed object closes the gate");
    // An old current_as_of: delayed at once, the lag in seconds.
    let mut old = state("Case");
    old.current_as_of_ms = Some(now_ms() - 600_000);
    old.delayed_after_secs = 120;
    w.put_sync_status(&[old]).await.unwrap();
    let c = one(&*w, "Case").await;
    assert_eq!(c.status, FreshnessStatus::Delayed);
    assert!(c.lag_seconds.unwrap() >= 600.0, "{c:?}");
    assert!(c.status_reason.contains("(delayed after 120 s)"), "{c:?}");
    // Caught up again: current.
    w.put_sync_status(&[state("Case")]).await.unwrap();
    assert_eq!(one(&*w, "Case").await.status, FreshnessStatus::Current);
}

/// Open repairs, re-syncs, a backfill or unrepaired drift make an object partial — before
/// delayed, with every reason named — and it is current again once they are done.
async fn partial_while_work_is_open(b: &dyn Backend) {
    let w = b.open().await;
    let check = |s: SyncStatusState, reason: &'static str| {
        let w = &w;
        async move {
            w.put_sync_status(std::slice::from_ref(&s)).await.unwrap();
            let r = one(&**w, &s.object).await;
            assert_eq!(r.status, FreshnessStatus::Partial, "{r:?}");
            assert_eq!(r.status_reason, reason, "{r:?}");
        }
    };
    check(
        SyncStatusState {
            open_repairs: 2,
            ..state("Case")
        },
        "2 open repair(s)",
    )
    .await;
    check(
        SyncStatusState {
            open_resyncs: 1,
            ..state("Case")
        },
        "1 open re-sync(s)",
    )
    .await;
    check(
        SyncStatusState {
            backfill_running: true,
            ..state("Case")
        },
        "a backfill is pending or running",
    )
    .await;
    check(
        SyncStatusState {
            last_reconcile_result: Some(ReconcileResult::Drift),
            last_reconcile_detail: Some("3 missing, 0 extra, 1 stale".into()),
            ..state("Case")
        },
        "the last reconciliation found drift not repaired yet (3 missing, 0 extra, 1 stale)",
    )
    .await;
    let mut both = SyncStatusState {
        open_repairs: 1,
        backfill_running: true,
        ..state("Case")
    };
    both.current_as_of_ms = Some(now_ms() - 600_000);
    both.delayed_after_secs = 60;
    w.put_sync_status(&[both]).await.unwrap();
    let r = one(&*w, "Case").await;
    assert_eq!(r.status, FreshnessStatus::Partial);
    assert!(
        r.status_reason
            .starts_with("1 open repair(s); a backfill is pending or running; not current for "),
        "{r:?}"
    );
    // Repaired drift and a failed reconciliation leave the object current.
    for (result, detail) in [
        (ReconcileResult::Repaired, "2 missing, 0 extra, 0 stale"),
        (ReconcileResult::Failed, "Bulk query job failed"),
    ] {
        let s = SyncStatusState {
            last_reconcile_result: Some(result),
            last_reconcile_detail: Some(detail.into()),
            ..state("Case")
        };
        w.put_sync_status(std::slice::from_ref(&s)).await.unwrap();
        let r = one(&*w, "Case").await;
        assert_eq!(r.status, FreshnessStatus::Current, "{r:?}");
        assert_eq!(r.state, s);
    }
}

/// A write replaces the whole set (objects no longer configured go); bad input writes nothing
/// and names the object.
async fn writes_replace_the_set_and_refuse_bad_input(b: &dyn Backend) {
    let w = b.open().await;
    w.put_sync_status(&[state("Case"), state("Account"), state("Lead")])
        .await
        .unwrap();
    w.put_sync_status(&[state("Case"), state("Account")])
        .await
        .unwrap();
    let objects = |rows: Vec<SyncStatus>| -> Vec<String> {
        rows.into_iter().map(|r| r.state.object).collect()
    };
    assert_eq!(
        objects(w.sync_status(None).await.unwrap()),
        ["Account", "Case"]
    );
    assert!(b.gate().await);
    for (bad, names) in [
        (vec![state("Case"), state("Case")], "Case is listed twice"),
        (
            vec![SyncStatusState {
                delayed_after_secs: 0,
                ..state("Lead")
            }],
            "object Lead: delayed_after_secs is 0",
        ),
    ] {
        let e = w.put_sync_status(&bad).await.unwrap_err();
        assert!(e.to_string().contains(names), "{e}");
        assert_eq!(e.class(), sfsync_core::ErrorClass::User);
    }
    assert_eq!(
        objects(w.sync_status(None).await.unwrap()),
        ["Account", "Case"]
    );
    w.put_sync_status(&[]).await.unwrap();
    assert!(w.sync_status(None).await.unwrap().is_empty());
    assert!(!b.gate().await, "no rows: the gate stays closed");
}

fn job(kind: SyncJobKind, object: &str) -> NewSyncJob {
    NewSyncJob {
        kind,
        object: object.into(),
        reason: "test".into(),
        since_ms: None,
        until_ms: None,
        params: "{}".into(),
        requested_by: "operator:ada".into(),
        resync_id: None,
    }
}

fn repair(object: &str, event_key: &str) -> RepairRequest {
    RepairRequest {
        object: object.into(),
        record_ids: vec!["001000000000001AAA".into()],
        reason: "GAP_UPDATE".into(),
        event_key: event_key.into(),
        commit_timestamp_ms: T0,
    }
}

async fn finish(w: &dyn Warehouse, id: i64, status: SyncJobStatus, report: Option<&str>) {
    w.patch_sync_job(
        id,
        &SyncJobPatch {
            status: Some(SyncJobStatus::Running),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    w.patch_sync_job(
        id,
        &SyncJobPatch {
            status: Some(status),
            report: report.map(str::to_string),
            error: (status == SyncJobStatus::Failed).then(|| "Bulk query job failed".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

/// The open work the running process turns into rows: pending repairs (and those of a
/// reconciliation), re-sync requests and jobs (a failed one stays open until a later re-sync or
/// backfill succeeds), backfills, and the newest finished reconciliation.
async fn open_work_is_counted_per_object(b: &dyn Backend) {
    let w = b.open().await;
    assert!(w.open_work().await.unwrap().is_empty());
    // Case: two gap repairs, then one of them done.
    w.commit_curated(
        "apply",
        None,
        &CuratedBatch {
            repairs: vec![repair("Case", "tx/1/500A"), repair("Case", "tx/2/500B")],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let first = w.pending_repairs(10).await.unwrap()[0].id;
    w.commit_curated(
        "apply",
        None,
        &CuratedBatch {
            repairs_done: vec![first],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Account: a re-sync request (pending), a backfill running.
    w.add_resync(&ResyncRequest {
        object: "Account".into(),
        channel: "/data/AccountChangeEvent".into(),
        from_ms: T0,
        reason: "GAP_OVERFLOW".into(),
        event_key: None,
    })
    .await
    .unwrap();
    let backfill = w
        .add_sync_job(&job(SyncJobKind::Backfill, "Account"))
        .await
        .unwrap();
    // Lead: a failed re-sync — open until a later backfill succeeds.
    let resync = w
        .add_sync_job(&job(SyncJobKind::Resync, "Lead"))
        .await
        .unwrap();
    finish(&*w, resync, SyncJobStatus::Failed, None).await;
    // Contact: a reconciliation with drift whose re-read is pending; an older failed one.
    let old = w
        .add_sync_job(&job(SyncJobKind::Reconcile, "Contact"))
        .await
        .unwrap();
    finish(&*w, old, SyncJobStatus::Failed, None).await;
    let rec = w
        .add_sync_job(&job(SyncJobKind::Reconcile, "Contact"))
        .await
        .unwrap();
    let report = r#"{"missing":1,"extra":0,"stale":2}"#;
    finish(&*w, rec, SyncJobStatus::Succeeded, Some(report)).await;
    w.commit_curated(
        "apply",
        None,
        &CuratedBatch {
            repairs: vec![repair("Contact", &format!("job/{rec}"))],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let work = w.open_work().await.unwrap();
    assert_eq!(
        work.keys().collect::<Vec<_>>(),
        ["Account", "Case", "Contact", "Lead"]
    );
    assert_eq!(
        (
            work["Case"].repairs,
            work["Case"].resyncs,
            work["Case"].backfills
        ),
        (1, 0, 0)
    );
    assert_eq!((work["Account"].resyncs, work["Account"].backfills), (1, 1));
    assert_eq!(work["Lead"].resyncs, 1);
    let c = &work["Contact"];
    assert_eq!(c.repairs, 1);
    let last = c.last_reconcile.as_ref().unwrap();
    assert_eq!(
        (last.job_id, last.succeeded, last.repairs_pending),
        (rec, true, 1)
    );
    assert_eq!(last.report.as_deref(), Some(report));
    assert!(last.finished_at_ms.is_some());
    // The re-sync request becomes a job: still one open; the backfill finishes; Lead's
    // failed re-sync is followed by a successful backfill; Contact's re-read is done.
    let scheduled = w.schedule_resyncs("sfsync run").await.unwrap();
    assert_eq!(scheduled.len(), 1);
    assert_eq!(w.open_work().await.unwrap()["Account"].resyncs, 1);
    finish(&*w, scheduled[0], SyncJobStatus::Succeeded, None).await;
    finish(&*w, backfill, SyncJobStatus::Succeeded, None).await;
    let lead = w
        .add_sync_job(&job(SyncJobKind::Backfill, "Lead"))
        .await
        .unwrap();
    finish(&*w, lead, SyncJobStatus::Succeeded, None).await;
    let pending: Vec<i64> = w
        .pending_repairs(10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    w.commit_curated(
        "apply",
        None,
        &CuratedBatch {
            repairs_done: pending,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let work = w.open_work().await.unwrap();
    assert_eq!(work.keys().collect::<Vec<_>>(), ["Contact"], "{work:?}");
    let c = &work["Contact"];
    assert_eq!((c.repairs, c.resyncs, c.backfills), (0, 0, 0));
    assert_eq!(c.last_reconcile.as_ref().unwrap().repairs_pending, 0);
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
    rows_read_back_through_the_view,
    delayed_by_the_database_clock,
    partial_while_work_is_open,
    writes_replace_the_set_and_refuse_bad_input,
    open_work_is_counted_per_object,
);

/// A schema-15 database (with a pending repair) upgrades through 16 to the latest: the state table and view are
/// there, empty; open work counts what it held.
async fn upgraded_from_v15(b: &dyn Backend) {
    let w = b.open().await;
    let versions: Vec<i64> = w
        .applied_migrations()
        .await
        .unwrap()
        .iter()
        .map(|m| m.version)
        .collect();
    assert!(versions.contains(&16), "{versions:?}");
    assert_eq!(
        versions.last().copied(),
        Some(sfsync_store::migrate::latest(
            sfsync_store::sqlite::MIGRATIONS
        ))
    );
    assert!(w.sync_status(None).await.unwrap().is_empty());
    assert_eq!(w.open_work().await.unwrap()["Case"].repairs, 1);
    w.put_sync_status(&[state("Case"), state("Account")])
        .await
        .unwrap();
    assert!(b.gate().await);
}

const V15_REPAIR: &str = "INSERT INTO repair_requests (object, record_ids, reason, event_key,
    commit_timestamp_ms, status, created_at_ms)
    VALUES ('Case', '[\"500000000000001AAA\"]', 'GAP_UPDATE', 'tx/1/500A', 1, 'pending', 1)";

#[tokio::test]
async fn sqlite_upgrade_from_v15() {
    let b = sqlite_backend();
    {
        let c = rusqlite::Connection::open(b.file()).unwrap();
        c.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                 applied_at_ms INTEGER NOT NULL)",
        )
        .unwrap();
        for m in sfsync_store::sqlite::MIGRATIONS
            .iter()
            .filter(|m| m.version <= 15)
        {
            c.execute_batch(m.sql).unwrap();
            c.execute(
                "INSERT INTO schema_migrations VALUES (?1, ?2, 0)",
                rusqlite::params![m.version, m.name],
            )
            .unwrap();
        }
        c.execute_batch(V15_REPAIR).unwrap();
    }
    upgraded_from_v15(&b).await;
}

#[tokio::test]
async fn postgres_upgrade_from_v15() {
    let b = postgres_backend().await;
    {
        let (client, conn) = b.config.connect(tokio_postgres::NoTls).await.unwrap();
        let task = tokio::spawn(conn);
        client
            .batch_execute(
                "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL,
                     applied_at_ms BIGINT NOT NULL)",
            )
            .await
            .unwrap();
        for m in sfsync_store::postgres::MIGRATIONS
            .iter()
            .filter(|m| m.version <= 15)
        {
            client.batch_execute(m.sql).await.unwrap();
            client
                .execute(
                    "INSERT INTO schema_migrations VALUES ($1, $2, 0)",
                    &[&m.version, &m.name],
                )
                .await
                .unwrap();
        }
        client.batch_execute(V15_REPAIR).await.unwrap();
        drop(client);
        let _ = task.await;
    }
    upgraded_from_v15(&b).await;
}
