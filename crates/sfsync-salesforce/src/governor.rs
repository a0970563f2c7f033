//! The API budget governor: the single gate every counted Salesforce call passes through.
//!
//! Guarantees: a call starts only with a [`Permit`] from its [`Lane`]; the org's total usage (as
//! reported by `Sforce-Limit-Info` and `/limits`, plus calls still in flight) is kept at or below
//! `max × (1 − headroom)` and sfsync's own calls within the configured share of the allocation.
//! When the budget is tight, lower lanes wait while higher lanes proceed; each lane keeps a
//! reserved floor of the allowance that lower lanes cannot take. Work is never failed for budget
//! reasons: callers wait (FIFO within a lane, cancellable by dropping the future) until usage
//! reported by Salesforce goes down as old calls leave the rolling 24 h window. Refill is never
//! assumed: it is observed by re-reading `/limits` on a backoff while blocked.
//!
//! The governor is pure bookkeeping (no I/O); [`SalesforceClient`](crate::SalesforceClient) drives
//! it and performs the `/limits` probes it asks for. It also keeps the hourly platform-event
//! publish allocation ([`publish`]), which Pub/Sub `Publish` draws on instead of API requests.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Who a call is for, highest priority first. `Default` is for anything not tagged (describe,
/// metadata, `/limits` read by a person): it is rare and usually unblocks other work, so it ranks
/// after gap repair and before reconciliation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    Writeback,
    GapRepair,
    Default,
    Reconcile,
    Backfill,
}

impl Lane {
    /// All lanes, highest priority first.
    pub const ALL: [Lane; 5] = [
        Lane::Writeback,
        Lane::GapRepair,
        Lane::Default,
        Lane::Reconcile,
        Lane::Backfill,
    ];

    fn idx(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Writeback => "writeback",
            Lane::GapRepair => "gap_repair",
            Lane::Default => "default",
            Lane::Reconcile => "reconcile",
            Lane::Backfill => "backfill",
        }
    }
}

/// Per-lane settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneConfig {
    /// Fraction of the allowance kept for this lane and the lanes above it: lanes below may not
    /// bring the remaining budget under the sum of the reserves of the lanes above them.
    pub reserve: f64,
    /// Maximum requests of this lane in flight at once (0 is treated as 1).
    pub max_in_flight: u32,
}

/// `[salesforce.budget]`: how much of the org's daily API allocation sfsync may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Fraction of the org's daily allocation (`DailyApiRequests.Max`) sfsync's own calls may use
    /// over the rolling window. Default 0.5.
    pub share: f64,
    /// Absolute cap on sfsync's own calls per rolling window (in addition to `share`).
    pub max_daily_requests: Option<u64>,
    /// Fraction of the allocation left free for the org's other integrations: sfsync never sends a
    /// call while the org's total usage is at or above `max × (1 − headroom)`. Default 0.1.
    pub headroom: f64,
    /// Re-read `/limits` while blocked, first after this long, doubling per fruitless probe.
    pub probe_initial_ms: u64,
    /// Upper bound of the probe interval.
    pub probe_max_ms: u64,
    /// Length of Salesforce's rolling window (24 h). Change only for an emulator with a shorter
    /// window.
    pub window_secs: u64,
    pub writeback: LaneConfig,
    pub gap_repair: LaneConfig,
    pub default: LaneConfig,
    pub reconcile: LaneConfig,
    pub backfill: LaneConfig,
    /// `[salesforce.budget.publish]`: the share of the hourly platform-event publish allocation.
    pub publish: publish::PublishBudgetConfig,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            share: 0.5,
            max_daily_requests: None,
            headroom: 0.1,
            probe_initial_ms: 5_000,
            probe_max_ms: 300_000,
            window_secs: 24 * 3600,
            writeback: LaneConfig {
                reserve: 0.10,
                max_in_flight: 16,
            },
            gap_repair: LaneConfig {
                reserve: 0.05,
                max_in_flight: 8,
            },
            default: LaneConfig {
                reserve: 0.05,
                max_in_flight: 8,
            },
            reconcile: LaneConfig {
                reserve: 0.05,
                max_in_flight: 4,
            },
            backfill: LaneConfig {
                reserve: 0.0,
                max_in_flight: 8,
            },
            publish: publish::PublishBudgetConfig::default(),
        }
    }
}

impl BudgetConfig {
    pub fn lane(&self, lane: Lane) -> &LaneConfig {
        match lane {
            Lane::Writeback => &self.writeback,
            Lane::GapRepair => &self.gap_repair,
            Lane::Default => &self.default,
            Lane::Reconcile => &self.reconcile,
            Lane::Backfill => &self.backfill,
        }
    }

    /// Checks ranges; each error names the key (relative to `[salesforce.budget]`).
    pub fn validate(&self) -> Result<(), Vec<(String, String)>> {
        let mut errs = Vec::new();
        if !(self.share > 0.0 && self.share <= 1.0) {
            errs.push((
                "share".into(),
                format!("must be in (0, 1], got {}", self.share),
            ));
        }
        if !(0.0..1.0).contains(&self.headroom) {
            errs.push((
                "headroom".into(),
                format!("must be in [0, 1), got {}", self.headroom),
            ));
        }
        if self.max_daily_requests == Some(0) {
            errs.push(("max_daily_requests".into(), "must be at least 1".into()));
        }
        if self.probe_initial_ms == 0 || self.probe_max_ms < self.probe_initial_ms {
            errs.push((
                "probe_initial_ms".into(),
                "must be at least 1 and not above probe_max_ms".into(),
            ));
        }
        if self.window_secs == 0 {
            errs.push(("window_secs".into(), "must be at least 1".into()));
        }
        let mut total = 0.0;
        for lane in Lane::ALL {
            let c = self.lane(lane);
            if !(0.0..1.0).contains(&c.reserve) {
                errs.push((
                    format!("{}.reserve", lane.as_str()),
                    format!("must be in [0, 1), got {}", c.reserve),
                ));
            }
            total += c.reserve;
            if c.max_in_flight == 0 {
                errs.push((
                    format!("{}.max_in_flight", lane.as_str()),
                    "must be at least 1".into(),
                ));
            }
        }
        if total >= 1.0 {
            errs.push((
                "reserve".into(),
                format!("the lanes' reserves add up to {total}, must be below 1"),
            ));
        }
        if let Err(p) = self.publish.validate() {
            errs.extend(p.into_iter().map(|(k, m)| (format!("publish.{k}"), m)));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

/// Calls per lane over time, in 1/1440-window buckets (one minute for 24 h).
#[derive(Debug)]
struct CallLog {
    bucket: Duration,
    window: Duration,
    buckets: VecDeque<(Instant, [u64; 5])>,
}

impl CallLog {
    fn new(window: Duration) -> CallLog {
        CallLog {
            bucket: (window / 1440).max(Duration::from_millis(1)),
            window,
            buckets: VecDeque::new(),
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.buckets.front() {
            if now.duration_since(*at) >= self.window {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    fn add(&mut self, now: Instant, lane: Lane) {
        match self.buckets.back_mut() {
            Some((at, counts)) if now.duration_since(*at) < self.bucket => counts[lane.idx()] += 1,
            _ => {
                let mut counts = [0; 5];
                counts[lane.idx()] = 1;
                self.buckets.push_back((now, counts));
            }
        }
    }

    /// Calls per lane younger than `age`.
    fn since(&self, now: Instant, age: Duration) -> [u64; 5] {
        let mut out = [0; 5];
        for (at, c) in self.buckets.iter().rev() {
            if now.duration_since(*at) >= age {
                break;
            }
            for i in 0..5 {
                out[i] += c[i];
            }
        }
        out
    }

    fn total(&self) -> u64 {
        self.buckets
            .iter()
            .map(|(_, c)| c.iter().sum::<u64>())
            .sum()
    }

    /// How long until at least `n` of our logged calls have left the window.
    fn time_until_aged(&self, now: Instant, n: u64) -> Option<Duration> {
        if n == 0 {
            return Some(Duration::ZERO);
        }
        let mut gone = 0;
        for (at, c) in &self.buckets {
            gone += c.iter().sum::<u64>();
            if gone >= n {
                return Some((*at + self.window + self.bucket).saturating_duration_since(now));
            }
        }
        None
    }
}

#[derive(Debug)]
struct LaneState {
    in_flight: u32,
    next_ticket: u64,
    waiting: BTreeSet<u64>,
}

#[derive(Debug)]
struct State {
    config: BudgetConfig,
    /// Org usage and allocation from the last observation.
    observed: Option<(u64, u64)>,
    observed_at: Option<Instant>,
    /// Calls granted since the last observation that it may not include.
    unobserved: u64,
    lanes: [LaneState; 5],
    log: CallLog,
    /// Salesforce refused a call for the daily limit; cleared by an observation with room.
    exhausted: bool,
    refreshing: bool,
    next_probe_at: Option<Instant>,
    probe_backoff: Duration,
    limit_refusals: u64,
    /// A call completed before any usage was observed.
    bootstrapped: bool,
    /// No usage can be observed (probe failed); only concurrency caps apply.
    blind: bool,
}

impl State {
    fn in_flight_total(&self) -> u64 {
        self.lanes.iter().map(|l| u64::from(l.in_flight)).sum()
    }

    /// The allowance for our own calls and the ceiling for the org total, from the observed max.
    fn caps(&self, max: u64) -> (u64, u64) {
        let c = &self.config;
        let mut ours = (max as f64 * c.share).floor() as u64;
        if let Some(m) = c.max_daily_requests {
            ours = ours.min(m);
        }
        // At least one call stays free for the governor's own /limits probes.
        let org = ((max as f64 * (1.0 - c.headroom)).floor() as u64).min(max.saturating_sub(1));
        (ours.min(org), org)
    }

    /// Requests a lane must leave untouched: the reserves of the lanes above it.
    fn floor(&self, lane: Lane, allowance: u64) -> u64 {
        let frac: f64 = Lane::ALL
            .iter()
            .filter(|l| **l < lane)
            .map(|l| self.config.lane(*l).reserve)
            .sum();
        (allowance as f64 * frac).round() as u64
    }

    /// Calls the budget still allows, before floors (min of our share and the org ceiling).
    fn remaining(&mut self, now: Instant) -> Option<u64> {
        let (used, max) = self.observed?;
        self.log.expire(now);
        let (ours, org) = self.caps(max);
        let org_left = org.saturating_sub(used + self.unobserved);
        let ours_left = ours.saturating_sub(self.log.total());
        Some(org_left.min(ours_left))
    }

    fn budget_allows(&mut self, lane: Lane, now: Instant) -> Option<bool> {
        if self.exhausted {
            return Some(false);
        }
        let remaining = self.remaining(now)?;
        let (used, max) = self.observed?;
        let _ = used;
        let (ours, _) = self.caps(max);
        Some(remaining > self.floor(lane, ours))
    }
}

/// What the client should do next for a waiting call.
#[derive(Debug)]
pub(crate) enum Decision {
    Go(Permit),
    /// Read `/limits` (with a probe permit) and report it via [`Governor::observe`].
    Refresh(ProbeGuard),
    /// Wait for a state change or until the instant.
    Wait(Option<Instant>),
}

/// Sfsync's share of the org's API budget, shared by every clone of the client.
#[derive(Debug, Clone)]
pub struct Governor {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    publish: Arc<publish::PublishBudget>,
}

/// Permission to send one request in a lane; releases its slot when dropped.
#[derive(Debug)]
pub struct Permit {
    gov: Governor,
    lane: Lane,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.gov.state.lock();
        s.lanes[self.lane.idx()].in_flight -= 1;
        if s.observed.is_none() {
            s.bootstrapped = true;
        }
        drop(s);
        self.gov.notify.notify_waiters();
    }
}

/// Marks a `/limits` probe in progress; dropping it without an observation re-arms the backoff.
#[derive(Debug)]
pub(crate) struct ProbeGuard {
    gov: Governor,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        let mut s = self.gov.state.lock();
        s.refreshing = false;
        drop(s);
        self.gov.notify.notify_waiters();
    }
}

/// A place in a lane's queue; leaving (drop) frees it for the next in line.
struct Ticket<'a> {
    gov: &'a Governor,
    lane: Lane,
    id: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.gov.state.lock().lanes[self.lane.idx()]
            .waiting
            .remove(&self.id);
        self.gov.notify.notify_waiters();
    }
}

/// One lane in [`BudgetStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaneStatus {
    pub lane: Lane,
    pub in_flight: u32,
    /// Calls waiting for a permit right now.
    pub deferred: u64,
    pub calls_last_hour: u64,
    /// Calls in the rolling window (24 h) seen by this process.
    pub calls_window: u64,
    /// Whether the budget (not the concurrency cap) holds this lane back.
    pub budget_blocked: bool,
}

/// The budget as the governor sees it, with a forecast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetStatus {
    /// The org's total usage in the rolling window, as last reported (plus unreported in-flight).
    pub org_used: Option<u64>,
    pub org_max: Option<u64>,
    /// The most our own calls may use in the window (share, absolute cap and headroom applied).
    pub our_allowance: Option<u64>,
    /// The ceiling for the org's total, `max × (1 − headroom)`.
    pub org_ceiling: Option<u64>,
    pub our_used: u64,
    pub observed_age_secs: Option<f64>,
    /// Our calls per minute over the last ten minutes.
    pub burn_per_min: f64,
    /// Salesforce refused a call for the daily limit since the last observation with room.
    pub exhausted: bool,
    pub limit_refusals: u64,
    pub lanes: Vec<LaneStatus>,
    /// Estimated seconds until the lowest lane (backfill) may run again: 0 when it may run now;
    /// None when it depends on other integrations' usage (our own ageing calls do not suffice) or
    /// nothing was observed yet.
    pub backfill_resume_secs: Option<f64>,
    /// The hourly platform-event publish budget.
    pub publish: publish::PublishStatus,
}

impl Governor {
    pub fn new(config: BudgetConfig) -> Governor {
        let window = Duration::from_secs(config.window_secs.max(1));
        let probe = Duration::from_millis(config.probe_initial_ms.max(1));
        let publish = Arc::new(publish::PublishBudget::new(config.publish.clone()));
        let lane = || LaneState {
            in_flight: 0,
            next_ticket: 0,
            waiting: BTreeSet::new(),
        };
        Governor {
            state: Arc::new(Mutex::new(State {
                config,
                observed: None,
                observed_at: None,
                unobserved: 0,
                lanes: [lane(), lane(), lane(), lane(), lane()],
                log: CallLog::new(window),
                exhausted: false,
                refreshing: false,
                next_probe_at: None,
                probe_backoff: probe,
                limit_refusals: 0,
                bootstrapped: false,
                blind: false,
            })),
            notify: Arc::new(Notify::new()),
            publish,
        }
    }

    /// The hourly platform-event publish budget.
    pub fn publish_budget(&self) -> &publish::PublishBudget {
        &self.publish
    }

    pub fn config(&self) -> BudgetConfig {
        self.state.lock().config.clone()
    }

    /// Waits for a permit in `lane`, performing `/limits` probes through `probe` when the
    /// governor asks for one. Cancellation-safe: dropping the future leaves the queue.
    pub(crate) async fn acquire<F, Fut>(&self, lane: Lane, mut probe: F) -> Permit
    where
        F: FnMut(ProbeGuard) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let ticket = {
            let mut s = self.state.lock();
            let l = &mut s.lanes[lane.idx()];
            let id = l.next_ticket;
            l.next_ticket += 1;
            l.waiting.insert(id);
            Ticket {
                gov: self,
                lane,
                id,
            }
        };
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.decide(lane, ticket.id, Instant::now()) {
                Decision::Go(p) => {
                    drop(ticket);
                    return p;
                }
                Decision::Refresh(guard) => probe(guard).await,
                Decision::Wait(Some(at)) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                Decision::Wait(None) => notified.await,
            }
        }
    }

    fn decide(&self, lane: Lane, ticket: u64, now: Instant) -> Decision {
        let mut s = self.state.lock();
        let l = &s.lanes[lane.idx()];
        let first = l.waiting.first() == Some(&ticket);
        let cap = s.config.lane(lane).max_in_flight.max(1);
        if !first || l.in_flight >= cap {
            return Decision::Wait(None);
        }
        if s.observed.is_none() && !s.blind {
            // Nothing known yet: one call at a time until a response reports the usage; if a call
            // came back without it, read /limits.
            if !s.bootstrapped {
                if s.in_flight_total() > 0 {
                    return Decision::Wait(None);
                }
            } else if s.refreshing {
                return Decision::Wait(None);
            } else {
                s.refreshing = true;
                s.log.add(now, Lane::Default);
                return Decision::Refresh(ProbeGuard { gov: self.clone() });
            }
        } else if !s.blind && s.budget_allows(lane, now) == Some(false) {
            // Blocked: re-read /limits when due (single flight, doubling backoff).
            let due = s.next_probe_at.is_none_or(|t| now >= t);
            if !s.refreshing && due {
                s.refreshing = true;
                let backoff = s.probe_backoff;
                s.next_probe_at = Some(now + backoff);
                let max = Duration::from_millis(s.config.probe_max_ms.max(1));
                s.probe_backoff = (backoff * 2).min(max);
                s.unobserved += 1;
                s.log.add(now, Lane::Default);
                return Decision::Refresh(ProbeGuard { gov: self.clone() });
            }
            return Decision::Wait(if s.refreshing { None } else { s.next_probe_at });
        }
        let l = &mut s.lanes[lane.idx()];
        l.in_flight += 1;
        s.unobserved += 1;
        s.log.add(now, lane);
        Decision::Go(Permit {
            gov: self.clone(),
            lane,
        })
    }

    /// A `/limits` probe failed for a reason other than the limit (e.g. the resource is not
    /// offered): without any usage report, calls proceed under the concurrency caps only.
    pub(crate) fn set_blind(&self) {
        let mut s = self.state.lock();
        if s.observed.is_none() {
            tracing::warn!("No API usage reported by Salesforce; the budget governor applies concurrency caps only until a response reports usage.");
            s.blind = true;
        }
        drop(s);
        self.notify.notify_waiters();
    }

    /// Records the org's usage from a response header or `/limits`, taken while `holding`
    /// permits of ours were in flight (the response's own call included).
    pub fn observe(&self, used: u64, max: u64, holding: u64) {
        let mut s = self.state.lock();
        let now = Instant::now();
        let others = s.in_flight_total().saturating_sub(holding);
        s.observed = Some((used, max));
        s.blind = false;
        s.observed_at = Some(now);
        s.unobserved = others;
        let (ours, org) = s.caps(max);
        let _ = ours;
        if used < org {
            s.exhausted = false;
        }
        if s.budget_allows(Lane::Backfill, now) == Some(true) {
            s.probe_backoff = Duration::from_millis(s.config.probe_initial_ms.max(1));
            s.next_probe_at = None;
        }
        drop(s);
        self.notify.notify_waiters();
    }

    /// Salesforce answered `REQUEST_LIMIT_EXCEEDED` (TotalRequests): stop everything until a probe
    /// shows room again.
    pub fn mark_exhausted(&self) {
        let mut s = self.state.lock();
        s.exhausted = true;
        s.limit_refusals += 1;
        let now = Instant::now();
        if s.next_probe_at.is_none_or(|t| t < now) {
            let b = s.probe_backoff;
            s.next_probe_at = Some(now + b);
        }
        drop(s);
        self.notify.notify_waiters();
    }

    /// Current usage, per-lane counts and the forecast.
    pub fn status(&self) -> BudgetStatus {
        let now = Instant::now();
        let mut s = self.state.lock();
        s.log.expire(now);
        let hour = s.log.since(now, Duration::from_secs(3600));
        let window = s.log.since(now, s.log.window);
        let ten = s.log.since(now, Duration::from_secs(600));
        let burn = ten.iter().sum::<u64>() as f64 / 10.0;
        let mut lanes = Vec::new();
        for lane in Lane::ALL {
            let blocked = s.budget_allows(lane, now) == Some(false);
            let l = &s.lanes[lane.idx()];
            lanes.push(LaneStatus {
                lane,
                in_flight: l.in_flight,
                deferred: l.waiting.len() as u64,
                calls_last_hour: hour[lane.idx()],
                calls_window: window[lane.idx()],
                budget_blocked: blocked,
            });
        }
        let caps = s.observed.map(|(_, max)| s.caps(max));
        let forecast = match (s.observed, caps) {
            (Some((used, _)), Some((ours, org))) => {
                let floor = s.floor(Lane::Backfill, ours);
                if s.budget_allows(Lane::Backfill, now) == Some(true) {
                    Some(0.0)
                } else {
                    // Calls that must leave the window: for our share and for the org ceiling,
                    // assuming other integrations stay flat.
                    let need_ours = (s.log.total() + floor + 1).saturating_sub(ours);
                    let need_org = (used + s.unobserved + floor + 1).saturating_sub(org);
                    s.log
                        .time_until_aged(now, need_ours.max(need_org))
                        .map(|d| d.as_secs_f64())
                }
            }
            _ => None,
        };
        BudgetStatus {
            org_used: s.observed.map(|(u, _)| u + s.unobserved),
            org_max: s.observed.map(|(_, m)| m),
            our_allowance: caps.map(|c| c.0),
            org_ceiling: caps.map(|c| c.1),
            our_used: s.log.total(),
            observed_age_secs: s.observed_at.map(|t| now.duration_since(t).as_secs_f64()),
            burn_per_min: burn,
            exhausted: s.exhausted,
            limit_refusals: s.limit_refusals,
            lanes,
            backfill_resume_secs: forecast,
            publish: self.publish.status(),
        }
    }
}

pub mod publish;

#[cfg(test)]
mod tests;
