//! Leases with fencing and compare-and-set log positions ([`Leases`], [`LogPosition`]) on SQLite
//! and Postgres: one holder at a time, take-over only after expiry with a new epoch, a lost
//! lease cannot be renewed, a fenced write by a deposed holder writes nothing (Postgres), and a
//! curated batch whose position another worker moved writes nothing.

mod support;

use sfsync_core::ReplayId;
use sfsync_store::*;
use support::backends::{postgres_backend, sqlite_backend, Backend};

async fn one_holder_at_a_time(b: &dyn Backend) {
    let w = b.open().await;
    let a = w
        .acquire_lease("ingest:/data/AccountChangeEvent", "node-a", 60_000)
        .await
        .unwrap()
        .expect("a free lease is taken");
    assert_eq!((a.holder.as_str(), a.epoch), ("node-a", 1));
    assert!(a.expires_at_ms > a.acquired_at_ms);
    // Another holder is refused while it runs; the holder itself renews at the same epoch.
    assert!(w
        .acquire_lease("ingest:/data/AccountChangeEvent", "node-b", 60_000)
        .await
        .unwrap()
        .is_none());
    let again = w
        .acquire_lease("ingest:/data/AccountChangeEvent", "node-a", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.epoch, 1);
    let renewed = w.renew_lease(&a.fence(), 60_000).await.unwrap().unwrap();
    assert_eq!(renewed.epoch, 1);
    // Other names are independent.
    assert!(w
        .acquire_lease("ingest:/data/CaseChangeEvent", "node-b", 60_000)
        .await
        .unwrap()
        .is_some());
    let all = w.leases().await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
}

async fn take_over_after_expiry_fences_the_old_holder(b: &dyn Backend) {
    let w = b.open().await;
    let old = w.acquire_lease("L", "old", 200).await.unwrap().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let new = w
        .acquire_lease("L", "new", 60_000)
        .await
        .unwrap()
        .expect("an expired lease is taken over");
    assert_eq!(new.epoch, old.epoch + 1);
    // The deposed holder cannot renew, and releasing leaves the new holder's lease alone.
    assert!(w.renew_lease(&old.fence(), 60_000).await.unwrap().is_none());
    w.release_lease(&old.fence()).await.unwrap();
    assert!(w.renew_lease(&new.fence(), 60_000).await.unwrap().is_some());
    // Even the same holder name coming back after expiry gets a new epoch.
    let x = w.acquire_lease("M", "a", 200).await.unwrap().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let y = w.acquire_lease("M", "a", 60_000).await.unwrap().unwrap();
    assert_eq!(y.epoch, x.epoch + 1);
    // A released lease is free at once.
    w.release_lease(&new.fence()).await.unwrap();
    let z = w
        .acquire_lease("L", "third", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(z.epoch, new.epoch + 1);
}

async fn positions_move_by_compare_and_set(b: &dyn Backend) {
    let w = b.open().await;
    let c = "kafka:sfsync.raw:0";
    let batch = |expected: Option<u64>, offset: u64| CuratedBatch {
        log_positions: vec![LogPosition {
            consumer: c.into(),
            expected,
            offset,
        }],
        ..Default::default()
    };
    w.commit_curated(CURATED_CONSUMER_FOR_TEST, None, &batch(None, 9))
        .await
        .unwrap();
    assert_eq!(w.applied_offset(c).await.unwrap(), Some(9));
    w.commit_curated(CURATED_CONSUMER_FOR_TEST, None, &batch(Some(9), 20))
        .await
        .unwrap();
    // A worker that read 9 before another moved it to 20 cannot commit.
    let e = w
        .commit_curated(CURATED_CONSUMER_FOR_TEST, None, &batch(Some(9), 15))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::PositionMoved {
                found: Some(20),
                expected: Some(9),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains(c), "{e}");
    // Nothing of the refused batch was written: its other position did not move either.
    let two = CuratedBatch {
        log_positions: vec![
            LogPosition {
                consumer: "kafka:sfsync.raw:1".into(),
                expected: None,
                offset: 4,
            },
            LogPosition {
                consumer: c.into(),
                expected: Some(3),
                offset: 30,
            },
        ],
        ..Default::default()
    };
    assert!(w
        .commit_curated(CURATED_CONSUMER_FOR_TEST, None, &two)
        .await
        .is_err());
    assert_eq!(w.applied_offset("kafka:sfsync.raw:1").await.unwrap(), None);
    assert_eq!(w.applied_offset(c).await.unwrap(), Some(20));
}

const CURATED_CONSUMER_FOR_TEST: &str = "curated";

async fn fenced_append_writes_only_under_a_live_lease(b: &dyn Backend, postgres: bool) {
    let w = b.open().await;
    let channel = "/data/AccountChangeEvent";
    let lease = w.acquire_lease("ingest", "a", 200).await.unwrap().unwrap();
    let r1 = ReplayId::from_bytes(vec![0, 1]);
    let done = w
        .append_fenced(channel, &[], &[], &r1, &lease.fence())
        .await;
    if !postgres {
        // SQLite refuses fenced writes (the raw log may be another file) and names why.
        let e = done.unwrap_err();
        assert!(e.to_string().contains("Postgres"), "{e}");
        return;
    }
    done.unwrap();
    assert_eq!(w.checkpoint(channel).await.unwrap(), Some(r1.clone()));
    // Paused past its lease, then taken over: the old holder's write is refused, nothing moves.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let e = w
        .append_fenced(
            channel,
            &[],
            &[],
            &ReplayId::from_bytes(vec![0, 2]),
            &lease.fence(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
    assert!(e.to_string().contains("expired"), "{e}");
    let new = w
        .acquire_lease("ingest", "b", 60_000)
        .await
        .unwrap()
        .unwrap();
    let e = w
        .append_fenced(
            channel,
            &[],
            &[],
            &ReplayId::from_bytes(vec![0, 3]),
            &lease.fence(),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("held by 'b'"), "{e}");
    assert_eq!(w.checkpoint(channel).await.unwrap(), Some(r1));
    let r4 = ReplayId::from_bytes(vec![0, 4]);
    w.append_fenced(channel, &[], &[], &r4, &new.fence())
        .await
        .unwrap();
    assert_eq!(w.checkpoint(channel).await.unwrap(), Some(r4));
}

mod sqlite {
    #[tokio::test]
    async fn one_holder_at_a_time() {
        super::one_holder_at_a_time(&super::sqlite_backend()).await;
    }
    #[tokio::test]
    async fn take_over_after_expiry_fences_the_old_holder() {
        super::take_over_after_expiry_fences_the_old_holder(&super::sqlite_backend()).await;
    }
    #[tokio::test]
    async fn positions_move_by_compare_and_set() {
        super::positions_move_by_compare_and_set(&super::sqlite_backend()).await;
    }
    #[tokio::test]
    async fn fenced_append_is_refused() {
        super::fenced_append_writes_only_under_a_live_lease(&super::sqlite_backend(), false).await;
    }
}

mod postgres {
    #[tokio::test]
    async fn one_holder_at_a_time() {
        super::one_holder_at_a_time(&super::postgres_backend().await).await;
    }
    #[tokio::test]
    async fn take_over_after_expiry_fences_the_old_holder() {
        super::take_over_after_expiry_fences_the_old_holder(&super::postgres_backend().await).await;
    }
    #[tokio::test]
    async fn positions_move_by_compare_and_set() {
        super::positions_move_by_compare_and_set(&super::postgres_backend().await).await;
    }
    #[tokio::test]
    async fn fenced_append_writes_only_under_a_live_lease() {
        super::fenced_append_writes_only_under_a_live_lease(&super::postgres_backend().await, true)
            .await;
    }
}
