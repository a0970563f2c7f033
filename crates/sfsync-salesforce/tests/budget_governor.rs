//! The API budget governor against the real emulator over loopback TLS: a demand far larger than
//! a small allocation completes without a single `REQUEST_LIMIT_EXCEEDED`, and a high lane
//! proceeds while a low lane is deferred.

mod common;

use std::time::Duration;

use common::*;
use sfsync_emulator::config::LimitsConfig;
use sfsync_salesforce::{AuthFlow, Lane, SalesforceClient};

const WINDOW_MS: u64 = 2_000;

/// An emulator whose allocation is `daily` requests per `WINDOW_MS` rolling window, and a client
/// whose governor knows that window.
async fn setup(daily: u64) -> (Emu, SalesforceClient) {
    let emu = emulator().await;
    emu.running.state.limits.set_config(LimitsConfig {
        daily_api_requests: daily,
        api_window: Duration::from_millis(WINDOW_MS),
        ..LimitsConfig::default()
    });
    let mut cfg = config(&emu);
    cfg.budget.window_secs = 2;
    cfg.budget.probe_initial_ms = 50;
    cfg.budget.probe_max_ms = 400;
    let c = client_with(&emu, AuthFlow::Password, cfg);
    (emu, c)
}

#[tokio::test]
async fn demand_far_above_the_budget_completes_with_zero_limit_refusals() {
    let (emu, c) = setup(200).await;
    // Our allowance is 100 per 2 s window; ask for 260 calls from three lanes at once.
    let mut tasks = Vec::new();
    for i in 0..260 {
        let lane = [Lane::Backfill, Lane::Reconcile, Lane::Writeback][i % 3];
        let c = c.lane(lane);
        tasks.push(tokio::spawn(async move { c.limits().await }));
    }
    for t in tasks {
        let l = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("all work completes once the window refills")
            .unwrap()
            .unwrap();
        assert!(l.get("DailyApiRequests").is_some());
    }
    assert_eq!(
        emu.running.state.limits.refused(),
        0,
        "zero REQUEST_LIMIT_EXCEEDED responses"
    );
    let st = c.budget_status();
    assert_eq!(st.limit_refusals, 0);
    assert!(st.lanes.iter().all(|l| l.deferred == 0 && l.in_flight == 0));
    // The governor never let the org's total past its ceiling.
    let (used, max) = emu.running.state.limits.api_usage();
    assert!(used <= max, "{used}/{max}");
}

#[tokio::test]
async fn a_high_lane_proceeds_while_a_low_lane_is_deferred() {
    let (emu, c) = setup(200).await;
    let backfill = c.lane(Lane::Backfill);
    // Spend backfill's share: allowance 100, backfill keeps 25 % free for higher lanes.
    let mut n = 0;
    while !c.budget_status().lanes[4].budget_blocked {
        backfill.limits().await.unwrap();
        n += 1;
        assert!(n < 200, "backfill never blocked");
    }
    let deferred = tokio::spawn({
        let b = backfill.clone();
        async move { b.limits().await }
    });
    assert!(
        wait_until(5, || c.budget_status().lanes[4].deferred == 1).await,
        "the backfill call waits"
    );
    // Writeback goes ahead at once.
    let st = tokio::time::timeout(Duration::from_millis(WINDOW_MS / 2), async {
        c.lane(Lane::Writeback).limits().await
    })
    .await
    .expect("writeback is not held back by backfill's budget")
    .unwrap();
    assert!(st.get("DailyApiRequests").is_some());
    let status = c.budget_status();
    assert!(!status.lanes[0].budget_blocked, "{status:?}");
    assert!(status.backfill_resume_secs.is_some_and(|s| s > 0.0));
    // The window refills: the deferred call completes, nothing was refused.
    tokio::time::timeout(Duration::from_secs(30), deferred)
        .await
        .expect("backfill resumes once the window refills")
        .unwrap()
        .unwrap();
    assert_eq!(emu.running.state.limits.refused(), 0);
    let json = serde_json::to_value(c.budget_status()).unwrap();
    assert!(json["lanes"][4]["calls_window"].as_u64().is_some());
}
