//! The platform-event publish budget: sfsync's share of the org's hourly publish allocation
//! (`HourlyPublishedPlatformEvents` in `/limits`), kept by the [`Governor`](super::Governor)
//! beside the API request budget.
//!
//! Guarantees: events are published only with an allowance from [`PublishBudget::decide`]; the
//! org's usage (as last read from `/limits`, plus what was granted since) is kept at or below
//! `max × (1 − headroom)` and sfsync's own events within the configured share (and absolute cap)
//! over the rolling hour. When the budget is tight the publisher is told to wait — publishing is
//! deferred, never failed, for budget reasons; room is observed by re-reading `/limits` on a
//! doubling backoff, never assumed. A `LIMIT_EXCEEDED` answer from Salesforce (another publisher
//! used the allocation) stops grants until a read shows room again. Pure bookkeeping (no I/O):
//! [`SalesforceClient::publish_allowance`](crate::SalesforceClient::publish_allowance) drives it.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

/// `[salesforce.budget.publish]`: how much of the org's hourly platform-event publish
/// allocation sfsync may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishBudgetConfig {
    /// Fraction of `HourlyPublishedPlatformEvents.Max` sfsync's own events may use per rolling
    /// hour. Default 0.5.
    pub share: f64,
    /// Absolute cap on sfsync's own events per rolling hour (in addition to `share`).
    pub max_hourly_events: Option<u64>,
    /// Fraction of the allocation left to the org's other publishers (Apex, Flows, other
    /// integrations): sfsync publishes nothing while the org's usage is at or above
    /// `max × (1 − headroom)`. Default 0.1.
    pub headroom: f64,
    /// Re-read `/limits` while blocked, first after this long, doubling per fruitless read.
    pub probe_initial_ms: u64,
    /// Upper bound of that interval.
    pub probe_max_ms: u64,
    /// While publishing, re-read `/limits` when the last reading is older than this (other
    /// publishers use the same allocation).
    pub refresh_secs: u64,
    /// Length of Salesforce's rolling window (1 h). Change only for an emulator with a shorter
    /// window.
    pub window_secs: u64,
}

impl Default for PublishBudgetConfig {
    fn default() -> Self {
        PublishBudgetConfig {
            share: 0.5,
            max_hourly_events: None,
            headroom: 0.1,
            probe_initial_ms: 5_000,
            probe_max_ms: 300_000,
            refresh_secs: 300,
            window_secs: 3600,
        }
    }
}

impl PublishBudgetConfig {
    /// Checks ranges; each error names the key (relative to `[salesforce.budget.publish]`).
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
        if self.max_hourly_events == Some(0) {
            errs.push(("max_hourly_events".into(), "must be at least 1".into()));
        }
        if self.probe_initial_ms == 0 || self.probe_max_ms < self.probe_initial_ms {
            errs.push((
                "probe_initial_ms".into(),
                "must be at least 1 and not above probe_max_ms".into(),
            ));
        }
        if self.refresh_secs == 0 {
            errs.push(("refresh_secs".into(), "must be at least 1".into()));
        }
        if self.window_secs == 0 {
            errs.push(("window_secs".into(), "must be at least 1".into()));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

/// What the publisher should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishDecision {
    /// Publish up to this many events now (already counted; settle what was not published).
    Go(u64),
    /// Read `/limits` and report it with [`PublishBudget::observe`] (or
    /// [`PublishBudget::observe_failed`]).
    Probe,
    /// Wait for a change (an observation) or until the instant.
    Wait(Option<Instant>),
}

#[derive(Debug)]
struct State {
    config: PublishBudgetConfig,
    /// Org usage and allocation from the last `/limits` reading.
    observed: Option<(u64, u64)>,
    observed_at: Option<Instant>,
    /// Events granted since the last reading.
    unobserved: u64,
    /// Our granted events over the window, in 1/60-window buckets.
    log: VecDeque<(Instant, u64)>,
    exhausted: bool,
    probing: bool,
    next_probe_at: Option<Instant>,
    backoff: Duration,
    /// `/limits` has no `HourlyPublishedPlatformEvents` (or cannot be read): only the
    /// absolute cap and Salesforce's own refusals apply.
    blind: bool,
    refusals: u64,
    granted_total: u64,
}

impl State {
    fn window(&self) -> Duration {
        Duration::from_secs(self.config.window_secs.max(1))
    }

    fn expire(&mut self, now: Instant) {
        let w = self.window();
        while self
            .log
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= w)
        {
            self.log.pop_front();
        }
    }

    fn ours(&self) -> u64 {
        self.log.iter().map(|(_, n)| n).sum()
    }

    /// (our allowance, org ceiling) for an allocation of `max`.
    fn caps(&self, max: u64) -> (u64, u64) {
        let c = &self.config;
        let mut ours = (max as f64 * c.share).floor() as u64;
        if let Some(m) = c.max_hourly_events {
            ours = ours.min(m);
        }
        let org = (max as f64 * (1.0 - c.headroom)).floor() as u64;
        (ours.min(org), org)
    }

    /// Events that may be published now (`None`: unknown).
    fn room(&mut self, now: Instant) -> Option<u64> {
        self.expire(now);
        if self.blind {
            return Some(match self.config.max_hourly_events {
                Some(m) => m.saturating_sub(self.ours()),
                None => u64::MAX,
            });
        }
        let (used, max) = self.observed?;
        let (ours, org) = self.caps(max);
        let org_left = org.saturating_sub(used + self.unobserved);
        let ours_left = ours.saturating_sub(self.ours());
        Some(org_left.min(ours_left))
    }

    fn add(&mut self, now: Instant, n: u64) {
        let bucket = (self.window() / 60).max(Duration::from_millis(1));
        match self.log.back_mut() {
            Some((at, c)) if now.duration_since(*at) < bucket => *c += n,
            _ => self.log.push_back((now, n)),
        }
        self.unobserved += n;
        self.granted_total += n;
    }

    fn arm_probe(&mut self, now: Instant) -> Option<Instant> {
        if self.next_probe_at.is_none_or(|t| t <= now) {
            let b = self.backoff;
            self.next_probe_at = Some(now + b);
            let max = Duration::from_millis(self.config.probe_max_ms.max(1));
            self.backoff = (b * 2).min(max);
        }
        self.next_probe_at
    }
}

/// The publish budget, shared by every clone of the client.
#[derive(Debug)]
pub struct PublishBudget {
    state: Mutex<State>,
    notify: Notify,
}

/// The publish budget as the governor sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishStatus {
    /// The org's usage in the rolling hour, as last read (plus grants since).
    pub org_used: Option<u64>,
    pub org_max: Option<u64>,
    /// The most our own events may use per hour (share, cap and headroom applied).
    pub our_allowance: Option<u64>,
    pub org_ceiling: Option<u64>,
    /// Our events in the rolling hour.
    pub our_used: u64,
    /// Events that may be published right now (`None`: unknown until `/limits` is read).
    pub room: Option<u64>,
    pub exhausted: bool,
    /// `LIMIT_EXCEEDED` answers from Salesforce.
    pub limit_refusals: u64,
    /// Events granted since start.
    pub granted_total: u64,
    pub observed_age_secs: Option<f64>,
}

impl PublishBudget {
    pub fn new(config: PublishBudgetConfig) -> PublishBudget {
        let backoff = Duration::from_millis(config.probe_initial_ms.max(1));
        PublishBudget {
            state: Mutex::new(State {
                config,
                observed: None,
                observed_at: None,
                unobserved: 0,
                log: VecDeque::new(),
                exhausted: false,
                probing: false,
                next_probe_at: None,
                backoff,
                blind: false,
                refusals: 0,
                granted_total: 0,
            }),
            notify: Notify::new(),
        }
    }

    pub fn config(&self) -> PublishBudgetConfig {
        self.state.lock().config.clone()
    }

    /// A future that completes at the next observation or settlement (enable it before
    /// [`Self::decide`] to miss none).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Asks for up to `want` events. [`PublishDecision::Go`] counts them at once.
    pub fn decide(&self, want: u64, now: Instant) -> PublishDecision {
        let mut s = self.state.lock();
        if want == 0 {
            return PublishDecision::Go(0);
        }
        if s.probing {
            return PublishDecision::Wait(None);
        }
        let stale = !s.blind
            && s.observed_at.is_none_or(|t| {
                now.duration_since(t) >= Duration::from_secs(s.config.refresh_secs.max(1))
            });
        if (s.observed.is_none() && !s.blind) || (stale && !s.exhausted) {
            s.probing = true;
            return PublishDecision::Probe;
        }
        let room = if s.exhausted { Some(0) } else { s.room(now) };
        match room {
            Some(r) if r > 0 => {
                let n = want.min(r);
                s.add(now, n);
                PublishDecision::Go(n)
            }
            _ => {
                // Tight: read /limits again when due (doubling backoff).
                let due = s.next_probe_at.is_none_or(|t| now >= t);
                if due && s.next_probe_at.is_some() {
                    s.next_probe_at = None;
                    s.probing = true;
                    return PublishDecision::Probe;
                }
                PublishDecision::Wait(s.arm_probe(now))
            }
        }
    }

    /// Records `/limits`' `HourlyPublishedPlatformEvents` (`used` = Max − Remaining).
    pub fn observe(&self, used: u64, max: u64) {
        let mut s = self.state.lock();
        let now = Instant::now();
        s.observed = Some((used, max));
        s.observed_at = Some(now);
        s.unobserved = 0;
        s.probing = false;
        s.blind = false;
        let (_, org) = s.caps(max);
        if used < org {
            s.exhausted = false;
        }
        if s.room(now).is_some_and(|r| r > 0) {
            s.backoff = Duration::from_millis(s.config.probe_initial_ms.max(1));
            s.next_probe_at = None;
        } else {
            s.arm_probe(now);
        }
        drop(s);
        self.notify.notify_waiters();
    }

    /// A `/limits` read failed or had no `HourlyPublishedPlatformEvents`: publish under the
    /// absolute cap only (Salesforce's own `LIMIT_EXCEEDED` still stops it).
    pub fn observe_failed(&self) {
        let mut s = self.state.lock();
        let now = Instant::now();
        s.probing = false;
        if s.observed.is_none() {
            s.blind = true;
        }
        s.observed_at = Some(now);
        s.arm_probe(now);
        drop(s);
        self.notify.notify_waiters();
    }

    /// A probe asked for by [`Self::decide`] was dropped before it read anything.
    pub fn abandon_probe(&self) {
        self.state.lock().probing = false;
        self.notify.notify_waiters();
    }

    /// `granted` events were counted by a [`PublishDecision::Go`] but only `published` went
    /// out: the rest go back.
    pub fn settle(&self, granted: u64, published: u64) {
        let back = granted.saturating_sub(published);
        if back == 0 {
            return;
        }
        let mut s = self.state.lock();
        s.unobserved = s.unobserved.saturating_sub(back);
        s.granted_total = s.granted_total.saturating_sub(back);
        let mut left = back;
        while left > 0 {
            let Some((_, c)) = s.log.back_mut() else {
                break;
            };
            let take = left.min(*c);
            *c -= take;
            left -= take;
            if *c == 0 {
                s.log.pop_back();
            }
        }
        drop(s);
        self.notify.notify_waiters();
    }

    /// Salesforce refused events with `LIMIT_EXCEEDED`: no grants until a `/limits` read
    /// shows room.
    pub fn mark_exhausted(&self) {
        let mut s = self.state.lock();
        s.exhausted = true;
        s.refusals += 1;
        let now = Instant::now();
        s.arm_probe(now);
        drop(s);
        self.notify.notify_waiters();
    }

    pub fn status(&self) -> PublishStatus {
        let now = Instant::now();
        let mut s = self.state.lock();
        let room = if s.exhausted { Some(0) } else { s.room(now) };
        let caps = s.observed.map(|(_, max)| s.caps(max));
        PublishStatus {
            org_used: s.observed.map(|(u, _)| u + s.unobserved),
            org_max: s.observed.map(|(_, m)| m),
            our_allowance: caps.map(|c| c.0),
            org_ceiling: caps.map(|c| c.1),
            our_used: s.ours(),
            room: room.filter(|r| *r != u64::MAX),
            exhausted: s.exhausted,
            limit_refusals: s.refusals,
            granted_total: s.granted_total,
            observed_age_secs: s.observed_at.map(|t| now.duration_since(t).as_secs_f64()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(share: f64, headroom: f64) -> PublishBudget {
        PublishBudget::new(PublishBudgetConfig {
            share,
            headroom,
            probe_initial_ms: 100,
            probe_max_ms: 400,
            ..Default::default()
        })
    }

    #[test]
    fn probes_first_then_grants_within_share_and_headroom() {
        let b = budget(0.5, 0.1);
        let now = Instant::now();
        assert_eq!(b.decide(10, now), PublishDecision::Probe);
        // A second caller waits for the probe in flight.
        assert_eq!(b.decide(10, now), PublishDecision::Wait(None));
        b.observe(0, 100);
        // Ours: 50; org ceiling: 90.
        assert_eq!(b.decide(30, now), PublishDecision::Go(30));
        assert_eq!(b.decide(30, now), PublishDecision::Go(20));
        assert!(matches!(b.decide(1, now), PublishDecision::Wait(Some(_))));
        let st = b.status();
        assert_eq!(
            (st.our_used, st.room, st.our_allowance),
            (50, Some(0), Some(50))
        );
        // Unpublished events go back.
        b.settle(20, 15);
        assert_eq!(b.decide(10, now), PublishDecision::Go(5));
    }

    #[test]
    fn the_org_ceiling_counts_other_publishers() {
        let b = budget(1.0, 0.0);
        let now = Instant::now();
        assert_eq!(b.decide(5, now), PublishDecision::Probe);
        b.observe(8, 10);
        assert_eq!(b.decide(5, now), PublishDecision::Go(2));
        assert!(matches!(b.decide(1, now), PublishDecision::Wait(Some(_))));
    }

    #[test]
    fn tight_budget_waits_then_probes_on_backoff_and_refusals_block_until_room() {
        let b = budget(1.0, 0.0);
        let t0 = Instant::now();
        assert_eq!(b.decide(1, t0), PublishDecision::Probe);
        b.observe(10, 10);
        let PublishDecision::Wait(Some(at)) = b.decide(1, t0) else {
            panic!("expected a timed wait");
        };
        assert!(at > t0);
        assert_eq!(b.decide(1, at), PublishDecision::Probe);
        b.observe(0, 10);
        assert_eq!(b.decide(3, at), PublishDecision::Go(3));
        b.mark_exhausted();
        assert!(matches!(b.decide(1, at), PublishDecision::Wait(Some(_))));
        assert!(b.status().exhausted);
        let later = at + Duration::from_secs(1);
        assert_eq!(b.decide(1, later), PublishDecision::Probe);
        b.observe(3, 10);
        assert_eq!(b.decide(1, later), PublishDecision::Go(1));
        assert_eq!(b.status().limit_refusals, 1);
    }

    #[test]
    fn blind_budget_applies_the_absolute_cap() {
        let b = PublishBudget::new(PublishBudgetConfig {
            max_hourly_events: Some(4),
            ..Default::default()
        });
        let now = Instant::now();
        assert_eq!(b.decide(3, now), PublishDecision::Probe);
        b.observe_failed();
        assert_eq!(b.decide(3, now), PublishDecision::Go(3));
        assert_eq!(b.decide(3, now), PublishDecision::Go(1));
        assert!(matches!(b.decide(3, now), PublishDecision::Wait(_)));
    }

    #[test]
    fn config_ranges_are_named() {
        let bad = PublishBudgetConfig {
            share: 0.0,
            headroom: 1.0,
            max_hourly_events: Some(0),
            refresh_secs: 0,
            ..Default::default()
        };
        let keys: Vec<String> = bad
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(
            keys,
            ["share", "headroom", "max_hourly_events", "refresh_secs"]
        );
        assert!(PublishBudgetConfig::default().validate().is_ok());
    }
}
