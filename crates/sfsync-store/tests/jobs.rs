//! One behavioural suite for sync jobs in the store (requests and their filters, patches and the
//! job lifecycle, re-sync requests turned into jobs, progress committed with its curated batch,
//! row keys for reconciliation), run against SQLite (temp file) and Postgres
//! (`SFSYNC_TEST_POSTGRES_URL`, or a throwaway server started by the tests). Row keys are also
//! read from a Postgres database whose default collation is not byte order, and compared across
//! the two backends.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use sfsync_core::{ErrorClass, RecordVersion, ReplayId};
use sfsync_store::*;

const ACCOUNT: &str = "Account";
const CONTACT: &str = "Contact";

/// Opens a store on the same underlying database each time.
#[async_trait]
trait Backend: Send + Sync {
    async fn open(&self) -> Box<dyn Warehouse>;
}

struct SqliteBackend {
    dir: tempfile::TempDir,
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn open(&self) -> Box<dyn Warehouse> {
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
    async fn open(&self) -> Box<dyn Warehouse> {
        Box::new(
            PostgresChangeLog::connect_with(&self.config)
                .await
                .expect("connect to Postgres store"),
        )
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

fn column(name: &str, ty: ColumnType) -> ColumnDef {
    ColumnDef {
        name: name.into(),
        field: name.to_uppercase(),
        ty,
        pii: false,
    }
}

fn account_model() -> ObjectModel {
    ObjectModel {
        object: ACCOUNT.into(),
        table: "sf_account".into(),
        columns: vec![
            column("id", ColumnType::Text),
            column("name", ColumnType::Text),
        ],
        history: None,
    }
}

fn row(id: &str, ts: i64, deleted: bool) -> (String, CurrentRow) {
    let version = RecordVersion {
        commit_timestamp: ts,
        commit_number: 1,
        sequence_number: 0,
    };
    (
        ACCOUNT.to_string(),
        CurrentRow {
            id: id.into(),
            values: BTreeMap::from([("name".to_string(), Value::Text(format!("Name of {id}")))]),
            meta: SyncMeta {
                version,
                change_type: if deleted { "DELETE" } else { "UPDATE" }.into(),
                source: ChangeSource::Snapshot,
                transaction_key: format!("tx-{ts}"),
                replay_id: Some(ReplayId::from_bytes(vec![1])),
                run_id: "run-1".into(),
                applied_at_ms: ts + 5,
                origin_client: None,
            },
            deleted,
            base_version: version,
            field_versions: None,
            history_version: None,
            partial: false,
        },
    )
}

fn job(kind: SyncJobKind, object: &str) -> NewSyncJob {
    NewSyncJob {
        kind,
        object: object.into(),
        reason: format!("{} of {object} requested by operator", kind.as_str()),
        since_ms: None,
        until_ms: None,
        params: "{}".into(),
        requested_by: "operator:ada".into(),
        resync_id: None,
    }
}

fn resync(object: &str, from_ms: i64) -> ResyncRequest {
    ResyncRequest {
        object: object.into(),
        channel: "/data/ChangeEvents".into(),
        from_ms,
        reason: format!("GAP_OVERFLOW on {object:?}"),
        event_key: Some(format!("tx-gap/1/{object}")),
    }
}

fn counts(read: i64, applied: i64, skipped: i64, api_calls: i64) -> SyncCounts {
    SyncCounts {
        read,
        applied,
        skipped,
        api_calls,
        ..Default::default()
    }
}

async fn get(w: &dyn Warehouse, id: i64) -> SyncJob {
    w.sync_job(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("sync job {id} exists"))
}

async fn ids(w: &dyn Warehouse, filter: SyncJobFilter) -> Vec<i64> {
    w.sync_jobs(&filter)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect()
}

/// Status of each re-sync request by object.
async fn resync_statuses(w: &dyn Warehouse) -> Vec<(String, String)> {
    w.resync_requests()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.request.object, r.status))
        .collect()
}

/// Mixed-case ids whose byte order (SQLite's) differs from a linguistic collation's.
const IDS: [&str; 7] = [
    "001b00000000002",
    "001A00000000001",
    "001a00000000001",
    "001B00000000003",
    "001Z00000000009",
    "0010000000000zz",
    "001a00000000000",
];

/// Writes a row for every id of [`IDS`] (every third deleted), each with its own commit time.
async fn write_keyed_rows(w: &dyn Warehouse) -> Vec<RowKey> {
    w.ensure_model(&account_model()).await.unwrap();
    let mut want: Vec<RowKey> = IDS
        .iter()
        .enumerate()
        .map(|(i, id)| RowKey {
            id: id.to_string(),
            commit_ms: T0 + i as i64 * 1_000,
            deleted: i % 3 == 0,
        })
        .collect();
    w.commit_curated(
        "apply",
        None,
        &CuratedBatch {
            rows: want
                .iter()
                .map(|k| row(&k.id, k.commit_ms, k.deleted))
                .collect(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // `String` orders by bytes, as SQLite compares text.
    want.sort_by(|a, b| a.id.cmp(&b.id));
    want
}

/// Every row key of Account, read `page` at a time.
async fn all_keys(w: &dyn Warehouse, page: usize) -> Vec<RowKey> {
    let mut out: Vec<RowKey> = Vec::new();
    loop {
        let after = out.last().map(|k| k.id.clone());
        let got = w.row_keys(ACCOUNT, after.as_deref(), page).await.unwrap();
        assert!(got.len() <= page, "at most a page");
        let last = got.len() < page;
        out.extend(got);
        if last {
            return out;
        }
    }
}

// ---- cases ----

async fn requests_round_trip_with_filters(b: &dyn Backend) {
    let w = b.open().await;
    assert_eq!(w.sync_job(1).await.unwrap(), None);
    assert!(w
        .sync_jobs(&SyncJobFilter::open())
        .await
        .unwrap()
        .is_empty());

    let mut full = job(SyncJobKind::Backfill, ACCOUNT);
    full.since_ms = Some(T0);
    full.until_ms = Some(T0 + 86_400_000);
    full.params = r#"{"fields":["Name"],"query_all":false}"#.into();
    full.requested_by = "sfsync run".into();
    full.resync_id = Some(42);
    let before = now_ms();
    let a = w.add_sync_job(&full).await.unwrap();
    let after = now_ms();
    let c = w
        .add_sync_job(&job(SyncJobKind::Reconcile, CONTACT))
        .await
        .unwrap();
    let d = w
        .add_sync_job(&job(SyncJobKind::Backfill, CONTACT))
        .await
        .unwrap();
    let e = w
        .add_sync_job(&job(SyncJobKind::Replay, ACCOUNT))
        .await
        .unwrap();
    assert!(a < c && c < d && d < e, "ids grow: {a} {c} {d} {e}");

    let got = get(&*w, a).await;
    assert!(
        (before..=after).contains(&got.requested_at_ms),
        "requested at {} not in {before}..={after}",
        got.requested_at_ms
    );
    assert_eq!(
        got,
        SyncJob {
            id: a,
            kind: SyncJobKind::Backfill,
            object: ACCOUNT.into(),
            reason: full.reason.clone(),
            status: SyncJobStatus::Pending,
            since_ms: Some(T0),
            until_ms: Some(T0 + 86_400_000),
            params: full.params.clone(),
            requested_by: "sfsync run".into(),
            resync_id: Some(42),
            run_id: None,
            bulk_job_id: None,
            locator: None,
            page_rows_done: 0,
            rows_total: None,
            counts: SyncCounts::default(),
            requested_at_ms: got.requested_at_ms,
            started_at_ms: None,
            finished_at_ms: None,
            error: None,
            report: None,
            watermark_ms: None,
            reread_from_ms: None,
            attempts: 1,
            previous_attempts: Vec::new(),
            slices: Vec::new(),
        },
        "every field round-trips"
    );
    let listed = w.sync_jobs(&SyncJobFilter::open()).await.unwrap();
    assert_eq!(listed.len(), 4);
    assert_eq!(listed[0], got, "listing and lookup agree");

    // Each filter on its own and together.
    let filter = |f: fn(&mut SyncJobFilter)| {
        let mut base = SyncJobFilter {
            limit: 100,
            ..Default::default()
        };
        f(&mut base);
        base
    };
    assert_eq!(ids(&*w, filter(|_| {})).await, [a, c, d, e], "oldest first");
    assert_eq!(
        ids(&*w, filter(|f| f.newest_first = true)).await,
        [e, d, c, a]
    );
    assert_eq!(
        ids(&*w, filter(|f| f.kind = Some(SyncJobKind::Backfill))).await,
        [a, d]
    );
    assert_eq!(
        ids(&*w, filter(|f| f.object = Some(CONTACT.into()))).await,
        [c, d]
    );
    assert_eq!(
        ids(
            &*w,
            filter(|f| {
                f.object = Some(CONTACT.into());
                f.kind = Some(SyncJobKind::Backfill);
            })
        )
        .await,
        [d]
    );
    assert!(ids(&*w, filter(|f| f.object = Some("Lead".into())))
        .await
        .is_empty());
    assert_eq!(ids(&*w, filter(|f| f.limit = 2)).await, [a, c]);
    assert_eq!(
        ids(
            &*w,
            filter(|f| {
                f.newest_first = true;
                f.limit = 3;
            })
        )
        .await,
        [e, d, c]
    );

    // Statuses: one running, one failed, one cancelled.
    let set = |s: SyncJobStatus| SyncJobPatch {
        status: Some(s),
        ..Default::default()
    };
    w.patch_sync_job(c, &set(SyncJobStatus::Running))
        .await
        .unwrap();
    w.patch_sync_job(d, &set(SyncJobStatus::Failed))
        .await
        .unwrap();
    w.patch_sync_job(e, &set(SyncJobStatus::Cancelled))
        .await
        .unwrap();
    assert_eq!(ids(&*w, SyncJobFilter::open()).await, [a, c]);
    assert_eq!(
        ids(
            &*w,
            filter(|f| f.statuses = vec![SyncJobStatus::Failed, SyncJobStatus::Cancelled])
        )
        .await,
        [d, e]
    );
    assert!(
        ids(&*w, filter(|f| f.statuses = vec![SyncJobStatus::Succeeded]))
            .await
            .is_empty()
    );
    assert_eq!(
        ids(
            &*w,
            filter(|f| {
                f.statuses = vec![SyncJobStatus::Pending, SyncJobStatus::Failed];
                f.kind = Some(SyncJobKind::Backfill);
                f.newest_first = true;
            })
        )
        .await,
        [d, a]
    );

    // A job needs an object; the refusal writes nothing.
    let err = w
        .add_sync_job(&job(SyncJobKind::Resync, ""))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::User);
    assert!(err.to_string().contains("needs an object"), "{err}");
    assert_eq!(ids(&*w, filter(|_| {})).await.len(), 4);

    // Reopened: all still there.
    drop(w);
    let w = b.open().await;
    assert_eq!(get(&*w, a).await, got);
    assert_eq!(ids(&*w, filter(|_| {})).await, [a, c, d, e]);
}

async fn patches_follow_the_lifecycle(b: &dyn Backend) {
    let w = b.open().await;
    let id = w
        .add_sync_job(&job(SyncJobKind::Backfill, ACCOUNT))
        .await
        .unwrap();

    // Running: the start time is set once.
    let before = now_ms();
    w.patch_sync_job(
        id,
        &SyncJobPatch {
            status: Some(SyncJobStatus::Running),
            run_id: Some("run-7".into()),
            counts: counts(0, 0, 0, 2),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let j = get(&*w, id).await;
    let started = j.started_at_ms.expect("started");
    assert!((before..=now_ms()).contains(&started));
    assert_eq!(j.status, SyncJobStatus::Running);
    assert_eq!(j.finished_at_ms, None);
    assert_eq!(j.run_id.as_deref(), Some("run-7"));
    assert_eq!(j.counts, counts(0, 0, 0, 2));

    std::thread::sleep(std::time::Duration::from_millis(5));
    w.patch_sync_job(
        id,
        &SyncJobPatch {
            status: Some(SyncJobStatus::Running),
            bulk_job_id: Some(Some("7504x000001".into())),
            position: Some((Some("MTAwMDA".into()), 120)),
            rows_total: Some(5_000),
            counts: counts(0, 0, 0, 3),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let j = get(&*w, id).await;
    assert_eq!(j.started_at_ms, Some(started), "the start time is kept");
    assert_eq!(j.bulk_job_id.as_deref(), Some("7504x000001"));
    assert_eq!(
        (j.locator.as_deref(), j.page_rows_done),
        (Some("MTAwMDA"), 120)
    );
    assert_eq!(j.rows_total, Some(5_000));
    assert_eq!(j.counts, counts(0, 0, 0, 5), "counts add up");
    assert_eq!(j.run_id.as_deref(), Some("run-7"), "absent fields are kept");

    // The Bulk job is gone: cleared, and the position back to page one.
    w.patch_sync_job(
        id,
        &SyncJobPatch {
            bulk_job_id: Some(None),
            position: Some((None, 0)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let j = get(&*w, id).await;
    assert_eq!(
        (j.bulk_job_id, j.locator, j.page_rows_done),
        (None, None, 0)
    );
    assert_eq!(j.status, SyncJobStatus::Running, "no status: unchanged");
    assert_eq!(j.rows_total, Some(5_000));
    assert_eq!(j.started_at_ms, Some(started));

    // Failed: finished, with its error; taken up again: open, not finished, same start.
    w.patch_sync_job(
        id,
        &SyncJobPatch {
            status: Some(SyncJobStatus::Failed),
            error: Some("INVALID_FIELD: No such column 'Foo__c'".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let j = get(&*w, id).await;
    assert_eq!(j.status, SyncJobStatus::Failed);
    let finished = j.finished_at_ms.expect("finished");
    assert!(finished >= started);
    assert_eq!(
        j.error.as_deref(),
        Some("INVALID_FIELD: No such column 'Foo__c'")
    );
    w.patch_sync_job(
        id,
        &SyncJobPatch {
            status: Some(SyncJobStatus::Running),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let j = get(&*w, id).await;
    assert_eq!(j.finished_at_ms, None, "open again");
    assert_eq!(j.started_at_ms, Some(started));
    w.patch_sync_job(
        id,
        &SyncJobPatch {
            status: Some(SyncJobStatus::Succeeded),
            report: Some(r#"{"missing":0}"#.into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let j = get(&*w, id).await;
    assert_eq!(j.status, SyncJobStatus::Succeeded);
    assert!(j.finished_at_ms.is_some());
    assert_eq!(j.report.as_deref(), Some(r#"{"missing":0}"#));

    // An unknown job: refused, naming it.
    let err = w
        .patch_sync_job(
            id + 100,
            &SyncJobPatch {
                status: Some(SyncJobStatus::Cancelled),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::User);
    assert!(
        err.to_string()
            .contains(&format!("sync job {} does not exist", id + 100)),
        "{err}"
    );
}

async fn resync_requests_become_jobs_once(b: &dyn Backend) {
    let w = b.open().await;
    assert!(w.schedule_resyncs("sfsync run").await.unwrap().is_empty());
    w.add_resync(&resync(ACCOUNT, T0)).await.unwrap();
    // A channel-wide request (expired replay id) has no object: not a job of its own.
    w.add_resync(&resync("", T0)).await.unwrap();
    w.add_resync(&resync(CONTACT, 0)).await.unwrap();
    let requests = w.resync_requests().await.unwrap();

    let scheduled = w.schedule_resyncs("sfsync run").await.unwrap();
    assert_eq!(scheduled.len(), 2);
    assert!(scheduled[0] < scheduled[1], "in request order");
    assert!(
        w.schedule_resyncs("sfsync run").await.unwrap().is_empty(),
        "once"
    );
    assert_eq!(
        resync_statuses(&*w).await,
        [
            (ACCOUNT.into(), "scheduled".into()),
            (String::new(), "pending".into()),
            (CONTACT.into(), "scheduled".into()),
        ]
    );
    let account = get(&*w, scheduled[0]).await;
    assert_eq!(
        (
            account.kind,
            account.object.as_str(),
            account.status,
            account.since_ms,
            account.until_ms,
            account.params.as_str(),
            account.requested_by.as_str(),
            account.resync_id,
        ),
        (
            SyncJobKind::Resync,
            ACCOUNT,
            SyncJobStatus::Pending,
            Some(T0),
            None,
            "{}",
            "sfsync run",
            Some(requests[0].id),
        )
    );
    assert_eq!(account.reason, requests[0].request.reason);
    let contact = get(&*w, scheduled[1]).await;
    assert_eq!(contact.since_ms, None, "from_ms 0: everything");
    assert_eq!(contact.resync_id, Some(requests[2].id));

    // Success completes the request it carries out; failure leaves it scheduled.
    let set = |s: SyncJobStatus| SyncJobPatch {
        status: Some(s),
        ..Default::default()
    };
    w.patch_sync_job(account.id, &set(SyncJobStatus::Running))
        .await
        .unwrap();
    assert_eq!(resync_statuses(&*w).await[0].1, "scheduled");
    w.patch_sync_job(account.id, &set(SyncJobStatus::Succeeded))
        .await
        .unwrap();
    w.patch_sync_job(contact.id, &set(SyncJobStatus::Failed))
        .await
        .unwrap();
    assert_eq!(
        resync_statuses(&*w).await,
        [
            (ACCOUNT.into(), "done".into()),
            (String::new(), "pending".into()),
            (CONTACT.into(), "scheduled".into()),
        ]
    );

    // A new request after that: one new job, the others untouched.
    w.add_resync(&resync(ACCOUNT, T0 + 60_000)).await.unwrap();
    let again = w.schedule_resyncs("schedule").await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(again[0] > scheduled[1]);
    let j = get(&*w, again[0]).await;
    assert_eq!(
        (j.since_ms, j.requested_by.as_str()),
        (Some(T0 + 60_000), "schedule")
    );
    assert_eq!(
        ids(
            &*w,
            SyncJobFilter {
                kind: Some(SyncJobKind::Resync),
                limit: 10,
                ..Default::default()
            }
        )
        .await,
        [scheduled[0], scheduled[1], again[0]]
    );
}

async fn progress_commits_with_its_batch(b: &dyn Backend) {
    let w = b.open().await;
    w.ensure_model(&account_model()).await.unwrap();
    let id = w
        .add_sync_job(&job(SyncJobKind::Backfill, ACCOUNT))
        .await
        .unwrap();
    w.patch_sync_job(
        id,
        &SyncJobPatch {
            status: Some(SyncJobStatus::Running),
            bulk_job_id: Some(Some("7504x000001".into())),
            counts: counts(0, 0, 0, 1),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    w.commit_curated(
        "apply",
        Some(1),
        &CuratedBatch {
            rows: vec![row("001A00000000001", T0, false)],
            job_progress: Some(SyncJobProgress {
                job_id: id,
                position: Some((Some("MjAw".into()), 200)),
                counts: counts(200, 150, 50, 1),
                watermark_ms: None,
                reread_from_ms: None,
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let j = get(&*w, id).await;
    assert_eq!(
        (j.locator.as_deref(), j.page_rows_done),
        (Some("MjAw"), 200)
    );
    assert_eq!(j.counts, counts(200, 150, 50, 2));

    // No position: the stored one stays, the counts add up.
    let deleted = SyncCounts {
        read: 10,
        deleted: 3,
        held: 1,
        failed: 2,
        ..Default::default()
    };
    w.commit_curated(
        "apply",
        Some(2),
        &CuratedBatch {
            job_progress: Some(SyncJobProgress {
                job_id: id,
                position: None,
                counts: deleted,
                watermark_ms: None,
                reread_from_ms: None,
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let j = get(&*w, id).await;
    assert_eq!(
        (j.locator.as_deref(), j.page_rows_done),
        (Some("MjAw"), 200)
    );
    assert_eq!(
        j.counts,
        SyncCounts {
            read: 210,
            applied: 150,
            skipped: 50,
            held: 1,
            deleted: 3,
            failed: 2,
            api_calls: 2,
        }
    );
    assert_eq!(w.applied_offset("apply").await.unwrap(), Some(2));

    // Progress of a job that does not exist fails the whole batch.
    let before = get(&*w, id).await;
    let err = w
        .commit_curated(
            "apply",
            Some(3),
            &CuratedBatch {
                rows: vec![row("001B00000000003", T0 + 1, false)],
                repairs: vec![RepairRequest {
                    object: ACCOUNT.into(),
                    record_ids: vec!["001B00000000003".into()],
                    reason: "diff_mismatch".into(),
                    event_key: "tx-9/1/001B00000000003".into(),
                    commit_timestamp_ms: T0 + 1,
                }],
                job_progress: Some(SyncJobProgress {
                    job_id: id + 100,
                    position: Some((None, 0)),
                    counts: counts(1, 1, 0, 0),
                    watermark_ms: None,
                    reread_from_ms: None,
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("sync job {} does not exist", id + 100)),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::User);
    let current: Vec<String> = w
        .read_current(ACCOUNT)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        current,
        ["001A00000000001"],
        "the batch's row was not written"
    );
    assert!(
        w.pending_repairs(10).await.unwrap().is_empty(),
        "nor its repair request"
    );
    assert_eq!(w.applied_offset("apply").await.unwrap(), Some(2));
    assert_eq!(get(&*w, id).await, before, "nor any progress");

    // The same batch with the right job goes through whole.
    w.commit_curated(
        "apply",
        Some(3),
        &CuratedBatch {
            rows: vec![row("001B00000000003", T0 + 1, false)],
            job_progress: Some(SyncJobProgress {
                job_id: id,
                position: Some((None, 0)),
                counts: counts(1, 1, 0, 0),
                watermark_ms: None,
                reread_from_ms: None,
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let j = get(&*w, id).await;
    assert_eq!((j.locator, j.page_rows_done), (None, 0));
    assert_eq!(j.counts.read, 211);
    assert_eq!(w.read_current(ACCOUNT).await.unwrap().len(), 2);
    assert_eq!(w.applied_offset("apply").await.unwrap(), Some(3));
}

async fn row_keys_in_byte_order(b: &dyn Backend) {
    let w = b.open().await;
    let want = write_keyed_rows(&*w).await;
    let order: Vec<&str> = want.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(
        order,
        [
            "0010000000000zz",
            "001A00000000001",
            "001B00000000003",
            "001Z00000000009",
            "001a00000000000",
            "001a00000000001",
            "001b00000000002",
        ],
        "byte order: digits, then upper case, then lower case"
    );

    assert_eq!(w.row_keys(ACCOUNT, None, 100).await.unwrap(), want);
    for page in [1, 2, 3, 7] {
        assert_eq!(all_keys(&*w, page).await, want, "pages of {page}");
    }
    // The cursor is exclusive, and need not be a stored id.
    assert_eq!(
        w.row_keys(ACCOUNT, Some("001B00000000003"), 2)
            .await
            .unwrap(),
        want[3..5]
    );
    assert_eq!(
        w.row_keys(ACCOUNT, Some("001C"), 100).await.unwrap(),
        want[3..]
    );
    assert_eq!(
        w.row_keys(ACCOUNT, Some("001a"), 1).await.unwrap(),
        want[4..5]
    );
    assert!(w
        .row_keys(ACCOUNT, Some("001b00000000002"), 100)
        .await
        .unwrap()
        .is_empty());
    assert!(w.row_keys(ACCOUNT, None, 0).await.unwrap().is_empty());
    assert!(
        want.iter().any(|k| k.deleted) && want.iter().any(|k| !k.deleted),
        "both kinds are read back"
    );

    let err = w.row_keys(CONTACT, None, 10).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::User);
    assert!(err.to_string().contains("'Contact'"), "{err}");
}

/// A formula refresh is a job kind of its own (migration 8 lets the database store it), and its
/// watermark and re-read point commit with the batch whose rows they cover: the watermark raised
/// to the highest value given and never lowered (a later page may hold older rows), the re-read
/// point lowered to the lowest and never raised, neither touched by batches without one, and
/// both rolled back with a batch that fails.
async fn formula_refresh_jobs_keep_their_watermark(b: &dyn Backend) {
    let w = b.open().await;
    w.ensure_model(&account_model()).await.unwrap();
    let mut new = job(SyncJobKind::FormulaRefresh, ACCOUNT);
    new.since_ms = Some(T0 - 60_000);
    new.params = r#"{"fields":["Revenue_Per_Employee__c"],"watermark_from_ms":1}"#.into();
    new.requested_by = "schedule".into();
    let id = w.add_sync_job(&new).await.unwrap();
    let other = w
        .add_sync_job(&job(SyncJobKind::Backfill, ACCOUNT))
        .await
        .unwrap();
    let j = get(&*w, id).await;
    assert_eq!(j.kind, SyncJobKind::FormulaRefresh);
    assert_eq!(j.kind.as_str(), "formula_refresh");
    assert_eq!(
        SyncJobKind::parse("formula_refresh"),
        Some(SyncJobKind::FormulaRefresh)
    );
    assert_eq!((j.since_ms, j.watermark_ms), (Some(T0 - 60_000), None));
    assert_eq!(j.params, new.params);
    assert_eq!(
        ids(
            &*w,
            SyncJobFilter {
                kind: Some(SyncJobKind::FormulaRefresh),
                limit: 10,
                ..Default::default()
            }
        )
        .await,
        [id],
        "the kind filters"
    );

    let progress = |offset: u64,
                    watermark: Option<i64>,
                    reread: Option<i64>,
                    rows: Vec<(String, CurrentRow)>| {
        let n = rows.len() as i64;
        (
            offset,
            CuratedBatch {
                rows,
                job_progress: Some(SyncJobProgress {
                    job_id: id,
                    position: Some((Some(format!("page-{offset}")), 0)),
                    counts: counts(n, n, 0, 1),
                    watermark_ms: watermark,
                    reread_from_ms: reread,
                }),
                ..Default::default()
            },
        )
    };
    // (watermark given, re-read point given) → (stored watermark, stored re-read point).
    for (offset, watermark, reread, want) in [
        (1, Some(T0 + 5_000), None, (Some(T0 + 5_000), None)),
        // An older page: the watermark stays; a first re-read point is taken.
        (
            2,
            Some(T0 + 1_000),
            Some(T0 + 3_000),
            (Some(T0 + 5_000), Some(T0 + 3_000)),
        ),
        // A later re-read point does not move it; neither does a batch without either.
        (
            3,
            None,
            Some(T0 + 4_000),
            (Some(T0 + 5_000), Some(T0 + 3_000)),
        ),
        (4, None, None, (Some(T0 + 5_000), Some(T0 + 3_000))),
        // An earlier one does.
        (
            5,
            None,
            Some(T0 + 2_000),
            (Some(T0 + 5_000), Some(T0 + 2_000)),
        ),
    ] {
        let rows = vec![row(&format!("001A0000000000{offset}"), T0, false)];
        let (offset, batch) = progress(offset, watermark, reread, rows);
        w.commit_curated("apply", Some(offset), &batch)
            .await
            .unwrap();
        let j = get(&*w, id).await;
        assert_eq!(
            (j.watermark_ms, j.reread_from_ms),
            want,
            "after batch {offset}"
        );
    }
    let (offset, batch) = progress(6, Some(T0 + 9_000), None, vec![]);
    w.commit_curated("apply", Some(offset), &batch)
        .await
        .unwrap();
    let j = get(&*w, id).await;
    assert_eq!(j.watermark_ms, Some(T0 + 9_000));
    assert_eq!(j.reread_from_ms, Some(T0 + 2_000));
    assert_eq!(j.counts, counts(5, 5, 0, 6));
    assert_eq!(j.locator.as_deref(), Some("page-6"));
    assert_eq!(
        get(&*w, other).await.watermark_ms,
        None,
        "other jobs are untouched"
    );

    // A batch that fails (its job does not exist for the watermark) leaves nothing behind.
    let before = get(&*w, id).await;
    let err = w
        .commit_curated(
            "apply",
            Some(5),
            &CuratedBatch {
                rows: vec![row("001A00000000003", T0, false)],
                job_progress: Some(SyncJobProgress {
                    job_id: id + 100,
                    position: None,
                    counts: SyncCounts::default(),
                    watermark_ms: Some(T0 + 20_000),
                    reread_from_ms: Some(T0),
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("sync job {} does not exist", id + 100)),
        "{err}"
    );
    assert_eq!(get(&*w, id).await, before);
    assert_eq!(w.read_current(ACCOUNT).await.unwrap().len(), 5);

    // Succeeded: the watermark is still there for the next refresh to start from, and a
    // store opened again reads the same.
    w.patch_sync_job(
        id,
        &SyncJobPatch {
            status: Some(SyncJobStatus::Succeeded),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    drop(w);
    let w = b.open().await;
    let last = w
        .sync_jobs(&SyncJobFilter {
            statuses: vec![SyncJobStatus::Succeeded],
            kind: Some(SyncJobKind::FormulaRefresh),
            object: Some(ACCOUNT.into()),
            newest_first: true,
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].watermark_ms, Some(T0 + 9_000));
    assert_eq!(last[0].reread_from_ms, Some(T0 + 2_000));
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

/// A failed or cancelled job is retried as a new attempt: pending again, from the beginning,
/// with the earlier attempt kept; any other status (and an unknown id) is refused and nothing
/// changes.
async fn retries_start_a_new_attempt(b: &dyn Backend) {
    let w = b.open().await;
    let id = w
        .add_sync_job(&job(SyncJobKind::Backfill, ACCOUNT))
        .await
        .unwrap();
    let fresh = get(&*w, id).await;
    assert_eq!((fresh.attempts, fresh.previous_attempts.len()), (1, 0));

    // Pending, running, succeeded: refused, nothing written.
    let refuse = |status: &'static str| {
        move |e: StoreError| {
            let e = e.to_string();
            assert!(
                e.contains(&format!(
                    "sync job {id} is {status}: only a failed or cancelled job"
                )),
                "{e}"
            );
        }
    };
    w.retry_sync_job(id, "ada")
        .await
        .map(|_| panic!("retried a pending job"))
        .unwrap_or_else(refuse("pending"));
    w.patch_sync_job(
        id,
        &SyncJobPatch {
            status: Some(SyncJobStatus::Running),
            run_id: Some("backfill-1-a".into()),
            bulk_job_id: Some(Some("750x1".into())),
            position: Some((Some("MTAw".into()), 40)),
            rows_total: Some(500),
            counts: counts(140, 100, 40, 6),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let running = get(&*w, id).await;
    w.retry_sync_job(id, "ada")
        .await
        .map(|_| panic!("retried a running job"))
        .unwrap_or_else(refuse("running"));
    assert_eq!(get(&*w, id).await, running, "nothing changed");

    w.patch_sync_job(
        id,
        &SyncJobPatch {
            status: Some(SyncJobStatus::Failed),
            error: Some("Bulk query job 750x1: INVALID_FIELD".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let failed = get(&*w, id).await;
    let err = w.retry_sync_job(id, " ").await.unwrap_err().to_string();
    assert!(err.contains("must be named"), "{err}");
    assert_eq!(get(&*w, id).await, failed, "nothing changed");

    // Retried: pending from the beginning, the failed attempt kept.
    let before = now_ms();
    let retried = w.retry_sync_job(id, "operator:ada").await.unwrap();
    assert_eq!(retried, get(&*w, id).await, "returns the job as stored");
    assert_eq!(
        (
            retried.status,
            retried.attempts,
            retried.run_id.as_deref(),
            retried.bulk_job_id.as_deref(),
            retried.locator.as_deref(),
            retried.page_rows_done,
            retried.rows_total,
            retried.counts,
            retried.started_at_ms,
            retried.finished_at_ms,
            retried.error.as_deref(),
        ),
        (
            SyncJobStatus::Pending,
            2,
            None,
            None,
            None,
            0,
            None,
            SyncCounts::default(),
            None,
            None,
            None
        )
    );
    assert_eq!(
        (
            retried.kind,
            retried.object.as_str(),
            retried.reason.as_str()
        ),
        (failed.kind, failed.object.as_str(), failed.reason.as_str()),
        "the request itself is kept"
    );
    let prev = &retried.previous_attempts;
    assert_eq!(prev.len(), 1);
    assert_eq!(
        (
            prev[0].attempt,
            prev[0].status,
            prev[0].error.as_deref(),
            prev[0].run_id.as_deref(),
            prev[0].counts,
            prev[0].started_at_ms,
            prev[0].finished_at_ms,
            prev[0].retried_by.as_str(),
        ),
        (
            1,
            SyncJobStatus::Failed,
            Some("Bulk query job 750x1: INVALID_FIELD"),
            Some("backfill-1-a"),
            counts(140, 100, 40, 6),
            failed.started_at_ms,
            failed.finished_at_ms,
            "operator:ada"
        )
    );
    assert!((before..=now_ms()).contains(&prev[0].retried_at_ms));
    assert_eq!(
        ids(&*w, SyncJobFilter::open()).await,
        vec![id],
        "open again, for the apply process to take"
    );

    // Cancelled, then retried again: a third attempt; a succeeded job cannot be retried.
    w.patch_sync_job(
        id,
        &SyncJobPatch {
            status: Some(SyncJobStatus::Cancelled),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let third = w.retry_sync_job(id, "operator:bob").await.unwrap();
    assert_eq!(third.attempts, 3);
    assert_eq!(
        third
            .previous_attempts
            .iter()
            .map(|a| (a.attempt, a.status))
            .collect::<Vec<_>>(),
        vec![(1, SyncJobStatus::Failed), (2, SyncJobStatus::Cancelled)]
    );
    w.patch_sync_job(
        id,
        &SyncJobPatch {
            status: Some(SyncJobStatus::Succeeded),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let done = get(&*w, id).await;
    w.retry_sync_job(id, "ada")
        .await
        .map(|_| panic!("retried a succeeded job"))
        .unwrap_or_else(refuse("succeeded"));
    assert_eq!(get(&*w, id).await, done, "nothing changed");
    let err = w.retry_sync_job(999_999, "ada").await.unwrap_err();
    assert!(
        err.to_string().contains("sync job 999999 does not exist"),
        "{err}"
    );
}

/// A job's slices round-trip; each update is checked against the stored ones (an illegal
/// move is refused naming the slice, nothing written); finishing a slice can clear the query
/// position in the same commit; a retry keeps the succeeded slices and reopens the others.
async fn slices_are_stored_checked_and_kept_by_retries(b: &dyn Backend) {
    let w = b.open().await;
    let id = w
        .add_sync_job(&job(SyncJobKind::Backfill, ACCOUNT))
        .await
        .unwrap();
    let plan = plan_slices(None, None, Some(T0), T0 + 3_500, 1_000, 100);
    assert_eq!(plan.len(), 4);
    w.set_sync_job_slices(id, &plan, false).await.unwrap();
    assert_eq!(get(&*w, id).await.slices, plan);
    let counts = SyncCounts::default();
    let running = slice_moved(&plan, 1, SliceStatus::Running, &counts, None, T0).unwrap();
    w.set_sync_job_slices(id, &running, false).await.unwrap();
    w.patch_sync_job(
        id,
        &SyncJobPatch {
            status: Some(SyncJobStatus::Running),
            bulk_job_id: Some(Some("750x".into())),
            position: Some((Some("LOC".into()), 12)),
            counts: SyncCounts {
                read: 40,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let stored = get(&*w, id).await;
    let done = slice_moved(
        &stored.slices,
        1,
        SliceStatus::Succeeded,
        &stored.counts,
        None,
        T0 + 1,
    )
    .and_then(|s| slice_moved(&s, 2, SliceStatus::Running, &stored.counts, None, T0 + 1))
    .unwrap();
    w.set_sync_job_slices(id, &done, true).await.unwrap();
    let after = get(&*w, id).await;
    assert_eq!(after.slices, done);
    assert_eq!(after.slices[0].counts.read, 40);
    assert_eq!(
        (after.bulk_job_id, after.locator, after.page_rows_done),
        (None, None, 0),
        "the next slice starts its own query"
    );
    // Illegal: a succeeded slice back to pending; another plan.
    let err = w.set_sync_job_slices(id, &plan, false).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("slice 1 is succeeded and cannot become pending"),
        "{err}"
    );
    let err = w
        .set_sync_job_slices(id, &plan[..2], false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("has 4 slices"), "{err}");
    assert_eq!(get(&*w, id).await.slices, done, "nothing written");

    let failed = slice_moved(
        &done,
        2,
        SliceStatus::Failed,
        &after.counts,
        Some("QUERY_TIMEOUT"),
        T0 + 2,
    )
    .unwrap();
    w.set_sync_job_slices(id, &failed, false).await.unwrap();
    w.patch_sync_job(
        id,
        &SyncJobPatch {
            status: Some(SyncJobStatus::Failed),
            error: Some("slice 2: QUERY_TIMEOUT".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let again = w.retry_sync_job(id, "operator:ada").await.unwrap();
    let states: Vec<_> = again.slices.iter().map(|s| s.status).collect();
    assert_eq!(
        states,
        vec![
            SliceStatus::Succeeded,
            SliceStatus::Pending,
            SliceStatus::Pending,
            SliceStatus::Pending
        ]
    );
    assert_eq!(
        again.slices[0], done[0],
        "the finished slice is kept as it was"
    );
    assert_eq!(get(&*w, id).await, again);
}

suite!(
    slices_are_stored_checked_and_kept_by_retries,
    retries_start_a_new_attempt,
    requests_round_trip_with_filters,
    patches_follow_the_lifecycle,
    resync_requests_become_jobs_once,
    progress_commits_with_its_batch,
    row_keys_in_byte_order,
    formula_refresh_jobs_keep_their_watermark,
);

/// The two backends page through the same rows identically.
#[tokio::test]
async fn row_keys_equal_on_both_backends() {
    let (s, p) = (sqlite_backend(), postgres_backend().await);
    let (s, p) = (s.open().await, p.open().await);
    assert_eq!(write_keyed_rows(&*s).await, write_keyed_rows(&*p).await);
    for page in [1, 2, 4] {
        assert_eq!(all_keys(&*s, page).await, all_keys(&*p, page).await);
    }
}

/// Row keys keep byte order in a Postgres database whose default collation sorts case-blind
/// (ICU `en-US`: `001a` < `001A` < `001b`), where the primary-key order alone would not.
#[tokio::test]
async fn postgres_row_keys_ignore_the_database_collation() {
    let (mut config, server) = support::pg::fresh_schema().await;
    let admin = {
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    };
    let db = format!(
        "sfsync_test_icu_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {db} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'
                 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
        ))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "this test needs a Postgres server (15 or newer, built with ICU) that lets the \
                 test user create a database with an ICU collation: {e:?}"
            )
        });
    config.dbname(&db).options("");
    let b = PostgresBackend {
        config: config.clone(),
        _server: server,
    };
    {
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let linguistic: bool = client
            .query_one("SELECT 'a' < 'B'", &[])
            .await
            .unwrap()
            .get(0);
        assert!(linguistic, "the database's default collation is not bytes");
    }
    let w = b.open().await;
    let want = write_keyed_rows(&*w).await;
    for page in [1, 3, 100] {
        assert_eq!(all_keys(&*w, page).await, want, "pages of {page}");
    }
    assert_eq!(
        w.row_keys(ACCOUNT, Some("001Z00000000009"), 1)
            .await
            .unwrap(),
        want[4..5],
        "after the last upper-case id comes the first lower-case one"
    );
    drop(w);
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}

/// The jobs a schema-7 database holds survive migration 8 on both backends: every field, the
/// id sequence (new jobs get higher ids, never a reused one), and the new kind and watermark
/// work afterwards.
async fn upgrade_to_v8_keeps_jobs(b: &dyn Backend, at_v7: &[i64]) {
    let w = b.open().await;
    assert!(
        w.applied_migrations()
            .await
            .unwrap()
            .iter()
            .any(|m| m.version == 8),
        "migration 8 applied"
    );
    let jobs = w
        .sync_jobs(&SyncJobFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), at_v7);
    let j = &jobs[0];
    assert_eq!(
        (
            j.kind,
            j.object.as_str(),
            j.status,
            j.since_ms,
            j.locator.as_deref(),
            j.page_rows_done,
            j.counts,
            j.watermark_ms,
            j.reread_from_ms
        ),
        (
            SyncJobKind::Backfill,
            ACCOUNT,
            SyncJobStatus::Running,
            Some(T0),
            Some("MjAw"),
            200,
            counts(200, 150, 50, 3),
            None,
            None
        )
    );
    let id = w
        .add_sync_job(&job(SyncJobKind::FormulaRefresh, ACCOUNT))
        .await
        .unwrap();
    assert!(
        id > *at_v7.iter().max().unwrap() + 1,
        "ids continue past the old high-water mark (the newest job was removed): {id}"
    );
    w.ensure_model(&account_model()).await.unwrap();
    w.commit_curated(
        "apply",
        None,
        &CuratedBatch {
            job_progress: Some(SyncJobProgress {
                job_id: id,
                watermark_ms: Some(T0),
                reread_from_ms: Some(T0 - 1),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let j = get(&*w, id).await;
    assert_eq!((j.watermark_ms, j.reread_from_ms), (Some(T0), Some(T0 - 1)));
    // Migration 15 (rebuilt on SQLite) admits the archive and retention kinds, ids go on.
    for kind in [SyncJobKind::Archive, SyncJobKind::Retention] {
        let next = w
            .add_sync_job(&job(kind, sfsync_store::ALL_OBJECTS))
            .await
            .unwrap();
        assert!(next > id, "{next} after {id}");
        assert_eq!(get(&*w, next).await.kind, kind);
    }
}

const V7_JOBS: &str = "
INSERT INTO sync_jobs (kind, object, reason, status, since_ms, params, requested_by, locator,
    page_rows_done, rows_read, rows_applied, rows_skipped, api_calls, requested_at_ms)
VALUES ('backfill', 'Account', 'new object in the config', 'running', 1795253400000, '{}',
    'sfsync run', 'MjAw', 200, 200, 150, 50, 3, 1);
INSERT INTO sync_jobs (kind, object, reason, status, params, requested_by, requested_at_ms)
VALUES ('reconcile', 'Contact', 'scheduled', 'succeeded', '{}', 'schedule', 2);
INSERT INTO sync_jobs (kind, object, reason, status, params, requested_by, requested_at_ms)
VALUES ('replay', 'Contact', 'gone', 'pending', '{}', 'operator:ada', 3);
DELETE FROM sync_jobs WHERE kind = 'replay';
";

#[tokio::test]
async fn sqlite_upgrade_to_v8_keeps_jobs() {
    let b = sqlite_backend();
    {
        let c = rusqlite::Connection::open(b.dir.path().join("sfsync.db")).unwrap();
        c.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                 applied_at_ms INTEGER NOT NULL)",
        )
        .unwrap();
        for m in &sfsync_store::sqlite::MIGRATIONS[..7] {
            assert!(m.version <= 7);
            c.execute_batch(m.sql).unwrap();
            c.execute(
                "INSERT INTO schema_migrations VALUES (?1, ?2, 0)",
                rusqlite::params![m.version, m.name],
            )
            .unwrap();
        }
        c.execute_batch(V7_JOBS).unwrap();
        let refused = c.execute(
            "INSERT INTO sync_jobs (kind, object, reason, status, params, requested_by,
                 requested_at_ms) VALUES ('formula_refresh', 'Account', '', 'pending', '{}', '', 0)",
            [],
        );
        assert!(refused.is_err(), "schema 7 does not know the kind");
    }
    upgrade_to_v8_keeps_jobs(&b, &[1, 2]).await;
}

#[tokio::test]
async fn postgres_upgrade_to_v8_keeps_jobs() {
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
        for m in &sfsync_store::postgres::MIGRATIONS[..7] {
            assert!(m.version <= 7);
            client.batch_execute(m.sql).await.unwrap();
            client
                .execute(
                    "INSERT INTO schema_migrations VALUES ($1, $2, 0)",
                    &[&m.version, &m.name],
                )
                .await
                .unwrap();
        }
        client.batch_execute(V7_JOBS).await.unwrap();
        let refused = client
            .batch_execute(
                "INSERT INTO sync_jobs (kind, object, reason, status, params, requested_by,
                     requested_at_ms) VALUES ('formula_refresh', 'Account', '', 'pending', '{}',
                     '', 0)",
            )
            .await;
        assert!(refused.is_err(), "schema 7 does not know the kind");
        drop(client);
        let _ = task.await;
    }
    upgrade_to_v8_keeps_jobs(&b, &[1, 2]).await;
}
