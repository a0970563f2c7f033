use super::*;

use std::sync::atomic::{AtomicU64, Ordering};

fn config() -> BudgetConfig {
    BudgetConfig {
        window_secs: 60,
        probe_initial_ms: 100,
        probe_max_ms: 1_000,
        ..BudgetConfig::default()
    }
}

/// Takes a permit right now if the governor allows it (no waiting, no probes: a probe counts
/// as a call, so the helper pretends one is already running).
fn try_now(gov: &Governor, lane: Lane) -> Option<Permit> {
    let (id, refreshing) = {
        let mut s = gov.state.lock();
        let refreshing = std::mem::replace(&mut s.refreshing, true);
        let l = &mut s.lanes[lane.idx()];
        let id = l.next_ticket;
        l.next_ticket += 1;
        l.waiting.insert(id);
        (id, refreshing)
    };
    let _ticket = Ticket { gov, lane, id };
    let d = gov.decide(lane, id, Instant::now());
    gov.state.lock().refreshing = refreshing;
    match d {
        Decision::Go(p) => Some(p),
        _ => None,
    }
}

/// How many calls `lane` gets, one after the other, before the budget stops it.
fn drain(gov: &Governor, lane: Lane) -> u64 {
    let mut n = 0;
    while let Some(p) = try_now(gov, lane) {
        drop(p);
        n += 1;
        assert!(n < 100_000);
    }
    n
}

#[test]
fn lower_lanes_stop_at_the_floors_reserved_for_higher_lanes() {
    let gov = Governor::new(config());
    // Allocation 1000, share 0.5 → our allowance 500; floors: backfill keeps 25 % (125),
    // reconcile 20 % (100), default 15 % (75), gap repair 10 % (50), writeback 0.
    gov.observe(0, 1000, 0);
    assert_eq!(drain(&gov, Lane::Backfill), 375);
    assert_eq!(drain(&gov, Lane::Reconcile), 25);
    assert_eq!(drain(&gov, Lane::Default), 25);
    assert_eq!(drain(&gov, Lane::GapRepair), 25);
    assert_eq!(
        drain(&gov, Lane::Backfill),
        0,
        "a lower lane cannot take a higher floor"
    );
    assert_eq!(drain(&gov, Lane::Writeback), 50);
    let st = gov.status();
    assert_eq!(st.our_used, 500);
    assert_eq!(st.our_allowance, Some(500));
    assert!(st.lanes.iter().all(|l| l.budget_blocked));
    assert_eq!(st.lanes[Lane::Backfill.idx()].calls_window, 375);
    assert_eq!(st.lanes[Lane::Writeback.idx()].calls_last_hour, 50);
}

#[test]
fn the_org_total_keeps_headroom_for_other_integrations() {
    let gov = Governor::new(BudgetConfig {
        share: 1.0,
        headroom: 0.2,
        ..config()
    });
    // Other integrations already used 700 of 1000: the ceiling is 800, so 100 calls are left.
    gov.observe(700, 1000, 0);
    assert_eq!(drain(&gov, Lane::Writeback), 100);
    // Usage reported later shows the org lower (old calls aged out): room again.
    gov.observe(500, 1000, 0);
    assert_eq!(drain(&gov, Lane::Writeback), 300);
    assert_eq!(gov.status().org_ceiling, Some(800));
}

#[test]
fn in_flight_calls_count_until_a_response_reports_them() {
    let gov = Governor::new(BudgetConfig {
        share: 1.0,
        headroom: 0.0,
        ..config()
    });
    gov.observe(0, 10, 0);
    // Ceiling is max − 1 (one call stays free for probes); hold every permit.
    let held: Vec<_> = std::iter::from_fn(|| try_now(&gov, Lane::Writeback))
        .take(20)
        .collect();
    assert_eq!(held.len(), 9);
    // A response that reports only itself (others still unreported) does not free anything.
    gov.observe(1, 10, 1);
    assert!(try_now(&gov, Lane::Writeback).is_none());
}

#[test]
fn exhaustion_reported_by_salesforce_stops_every_lane_until_room_is_seen() {
    let gov = Governor::new(config());
    gov.observe(0, 1000, 0);
    gov.mark_exhausted();
    assert!(try_now(&gov, Lane::Writeback).is_none());
    let st = gov.status();
    assert!(st.exhausted);
    assert_eq!(st.limit_refusals, 1);
    gov.observe(1000, 1000, 0);
    assert!(
        try_now(&gov, Lane::Writeback).is_none(),
        "still at the limit"
    );
    gov.observe(10, 1000, 0);
    assert!(try_now(&gov, Lane::Writeback).is_some());
    assert!(!gov.status().exhausted);
}

#[test]
fn config_validation_names_the_key() {
    let bad = BudgetConfig {
        share: 0.0,
        headroom: 1.0,
        backfill: LaneConfig {
            reserve: 0.5,
            max_in_flight: 0,
        },
        writeback: LaneConfig {
            reserve: 0.6,
            max_in_flight: 1,
        },
        ..BudgetConfig::default()
    };
    let errs = bad.validate().unwrap_err();
    let keys: Vec<_> = errs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["share", "headroom", "backfill.max_in_flight", "reserve"]
    );
    assert!(BudgetConfig::default().validate().is_ok());
}

#[tokio::test(start_paused = true)]
async fn concurrency_cap_is_fifo_and_a_dropped_waiter_leaves_the_queue() {
    let gov = Governor::new(BudgetConfig {
        backfill: LaneConfig {
            reserve: 0.0,
            max_in_flight: 2,
        },
        ..config()
    });
    gov.observe(0, 100_000, 0);
    let a = try_now(&gov, Lane::Backfill).unwrap();
    let _b = try_now(&gov, Lane::Backfill).unwrap();
    assert!(try_now(&gov, Lane::Backfill).is_none(), "cap of 2 reached");
    // Another lane is not held back by backfill's cap.
    assert!(try_now(&gov, Lane::Writeback).is_some());

    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..3 {
        let gov = gov.clone();
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let p = gov.acquire(Lane::Backfill, |_g| async {}).await;
            order.lock().push(i);
            p
        }));
        // Let each task queue before the next.
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(gov.status().lanes[Lane::Backfill.idx()].deferred, 3);
    // The first waiter gives up: the next in line takes its place.
    tasks.remove(0).abort();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(gov.status().lanes[Lane::Backfill.idx()].deferred, 2);
    drop(a);
    let p1 = tasks.remove(0).await.unwrap();
    assert_eq!(*order.lock(), vec![1]);
    drop(p1);
    let _p2 = tasks.remove(0).await.unwrap();
    assert_eq!(*order.lock(), vec![1, 2]);
}

#[tokio::test(start_paused = true)]
async fn blocked_lane_is_deferred_and_proceeds_when_probes_see_the_window_refill() {
    let gov = Governor::new(config());
    gov.observe(0, 1000, 0);
    assert_eq!(drain(&gov, Lane::Backfill), 375);
    let st = gov.status();
    let resume = st.backfill_resume_secs.expect("our own calls age out");
    assert!(resume > 59.0 && resume <= 61.0, "{resume}");

    // The org reports the calls until they leave the 60 s window.
    let reported = Arc::new(AtomicU64::new(375));
    let probes = Arc::new(AtomicU64::new(0));
    let waiter = {
        let gov = gov.clone();
        let reported = reported.clone();
        let probes = probes.clone();
        tokio::spawn(async move {
            let g2 = gov.clone();
            gov.acquire(Lane::Backfill, move |guard| {
                probes.fetch_add(1, Ordering::SeqCst);
                g2.observe(reported.load(Ordering::SeqCst), 1000, 0);
                drop(guard);
                async {}
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!waiter.is_finished(), "deferred, not failed");
    // Writeback still goes ahead while backfill waits.
    assert!(
        try_now(&gov, Lane::Writeback).is_some(),
        "{:#?}",
        gov.status()
    );
    assert!(try_now(&gov, Lane::Writeback).is_some());
    let st = gov.status();
    assert_eq!(st.lanes[Lane::Backfill.idx()].deferred, 1);
    let p = probes.load(Ordering::SeqCst);
    assert!((3..=40).contains(&p), "probes back off: {p}");

    reported.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(32)).await;
    let permit = waiter.await.unwrap();
    drop(permit);
    assert_eq!(gov.status().backfill_resume_secs, Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn unknown_usage_lets_one_call_out_then_reads_limits() {
    let gov = Governor::new(config());
    let first = try_now(&gov, Lane::Default).expect("bootstrap call");
    assert!(
        try_now(&gov, Lane::Default).is_none(),
        "one at a time while blind"
    );
    drop(first);
    // No usage came back with it: the next caller reads /limits first.
    let g2 = gov.clone();
    let probed = Arc::new(AtomicU64::new(0));
    let p2 = probed.clone();
    let _p = gov
        .acquire(Lane::Writeback, move |guard| {
            p2.fetch_add(1, Ordering::SeqCst);
            g2.observe(5, 100, 0);
            drop(guard);
            async {}
        })
        .await;
    assert_eq!(probed.load(Ordering::SeqCst), 1);
    assert_eq!(gov.status().org_max, Some(100));
}
