//! Org allocations and their enforcement: rolling-24 h API requests, concurrent long-running
//! requests, Bulk batches, Bulk query jobs and ingest records. Exceeding one answers 403
//! `REQUEST_LIMIT_EXCEEDED` with Salesforce's message; usage is reported by `/limits` and the
//! `Sforce-Limit-Info` header. The hourly platform-event publish allocation
//! (`HourlyPublishedPlatformEvents`) is taken per event by every publish path (Pub/Sub
//! `Publish`, REST); an event beyond it is refused with `LIMIT_EXCEEDED` and not published.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};
use sfsync_org::SfError;

use crate::config::LimitsConfig;

const WINDOW: Duration = Duration::from_secs(24 * 3600);

/// A count over a rolling window (24 h unless configured), kept in 1/1440-window buckets (one
/// minute for 24 h).
#[derive(Debug)]
struct Rolling {
    buckets: VecDeque<(Instant, u64)>,
    total: u64,
    window: Duration,
}

impl Default for Rolling {
    fn default() -> Self {
        Rolling::with_window(WINDOW)
    }
}

impl Rolling {
    fn with_window(window: Duration) -> Rolling {
        Rolling {
            buckets: VecDeque::new(),
            total: 0,
            window: window.max(Duration::from_millis(1)),
        }
    }

    fn bucket(&self) -> Duration {
        (self.window / 1440).max(Duration::from_millis(1))
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, n)) = self.buckets.front() {
            if now.duration_since(at) >= self.window {
                self.total -= n;
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    fn used(&mut self, now: Instant) -> u64 {
        self.expire(now);
        self.total
    }

    fn add(&mut self, now: Instant, n: u64) {
        let bucket = self.bucket();
        match self.buckets.back_mut() {
            Some((at, count)) if now.duration_since(*at) < bucket => *count += n,
            _ => self.buckets.push_back((now, n)),
        }
        self.total += n;
    }
}

struct Inner {
    config: LimitsConfig,
    api: Rolling,
    bulk_batches: Rolling,
    query_jobs: Rolling,
    ingest_records: Rolling,
    published: Rolling,
    /// Events refused for the hourly publish allocation.
    publish_refused: u64,
    in_flight: HashMap<u64, Instant>,
    next_request: u64,
    refused: u64,
}

/// The org's allocations and current usage.
pub struct Limits {
    inner: Mutex<Inner>,
}

/// Marks a request in flight until dropped (for the concurrent long-running limit).
pub struct InFlight<'a> {
    limits: &'a Limits,
    id: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.limits.inner.lock().in_flight.remove(&self.id);
    }
}

fn exceeded(message: &str) -> SfError {
    SfError::new(403, "REQUEST_LIMIT_EXCEEDED", message)
}

impl Limits {
    pub fn new(config: LimitsConfig) -> Limits {
        let window = config.api_window;
        let publish_window = config.publish_window;
        Limits {
            inner: Mutex::new(Inner {
                config,
                api: Rolling::with_window(window),
                published: Rolling::with_window(publish_window),
                publish_refused: 0,
                bulk_batches: Rolling::default(),
                query_jobs: Rolling::default(),
                ingest_records: Rolling::default(),
                in_flight: HashMap::new(),
                next_request: 0,
                refused: 0,
            }),
        }
    }

    /// Counts one API request, or refuses it when the rolling-24 h allocation is used up or too
    /// many long-running requests are in flight. The guard marks the request in flight.
    pub fn begin_api_request(&self) -> Result<InFlight<'_>, SfError> {
        let now = Instant::now();
        let mut g = self.inner.lock();
        let max = g.config.daily_api_requests;
        if g.api.used(now) >= max {
            g.refused += 1;
            return Err(exceeded("TotalRequests Limit exceeded."));
        }
        let threshold = g.config.long_running_threshold;
        let long = g
            .in_flight
            .values()
            .filter(|&&start| now.duration_since(start) >= threshold)
            .count() as u64;
        if long >= g.config.concurrent_long_running {
            g.refused += 1;
            return Err(exceeded("ConcurrentPerOrgLongTxn Limit exceeded."));
        }
        g.api.add(now, 1);
        let id = g.next_request;
        g.next_request += 1;
        g.in_flight.insert(id, now);
        Ok(InFlight { limits: self, id })
    }

    /// `(used, max)` of the daily API request allocation.
    pub fn api_usage(&self) -> (u64, u64) {
        let mut g = self.inner.lock();
        let max = g.config.daily_api_requests;
        (g.api.used(Instant::now()), max)
    }

    /// The `Sforce-Limit-Info` header value.
    pub fn limit_info_header(&self) -> String {
        let (used, max) = self.api_usage();
        format!("api-usage={used}/{max}")
    }

    /// Counts `n` Bulk batches (ingest jobs consume one per 10,000 records).
    pub fn take_bulk_batches(&self, n: u64) -> Result<(), SfError> {
        let now = Instant::now();
        let mut g = self.inner.lock();
        let max = g.config.daily_bulk_batches;
        if g.bulk_batches.used(now) + n > max {
            g.refused += 1;
            return Err(SfError::new(
                400,
                "ExceededQuota",
                "Exceeded max number of batches allowed in 24 hour period",
            ));
        }
        g.bulk_batches.add(now, n);
        Ok(())
    }

    /// Counts `n` ingested records.
    pub fn take_ingest_records(&self, n: u64) -> Result<(), SfError> {
        let now = Instant::now();
        let mut g = self.inner.lock();
        let max = g.config.daily_bulk_ingest_records;
        if g.ingest_records.used(now) + n > max {
            g.refused += 1;
            return Err(SfError::new(
                400,
                "ExceededQuota",
                "Exceeded max number of records allowed in 24 hour period",
            ));
        }
        g.ingest_records.add(now, n);
        Ok(())
    }

    /// Counts one Bulk API 2.0 query job.
    pub fn take_query_job(&self) -> Result<(), SfError> {
        let now = Instant::now();
        let mut g = self.inner.lock();
        let max = g.config.daily_bulk_query_jobs;
        if g.query_jobs.used(now) >= max {
            g.refused += 1;
            return Err(SfError::new(
                400,
                "LIMIT_EXCEEDED",
                "Max bulk v2 query jobs reached for this 24 hour period",
            ));
        }
        g.query_jobs.add(now, 1);
        Ok(())
    }

    /// Takes one event from the hourly publish allocation, or refuses it with Salesforce's
    /// `LIMIT_EXCEEDED` status code (the event is then not published).
    pub fn take_published_event(&self) -> Result<(), SfError> {
        let now = Instant::now();
        let mut g = self.inner.lock();
        let max = g.config.hourly_published_platform_events;
        if g.published.used(now) >= max {
            g.refused += 1;
            g.publish_refused += 1;
            return Err(SfError::new(
                400,
                "LIMIT_EXCEEDED",
                format!(
                    "The number of published platform event messages exceeded the hourly publishing limit ({max})."
                ),
            ));
        }
        g.published.add(now, 1);
        Ok(())
    }

    /// `(used, max, refused)` of the hourly publish allocation.
    pub fn publish_usage(&self) -> (u64, u64, u64) {
        let mut g = self.inner.lock();
        let max = g.config.hourly_published_platform_events;
        (g.published.used(Instant::now()), max, g.publish_refused)
    }

    /// Replaces the allocations (admin API); usage so far is kept.
    pub fn set_config(&self, config: LimitsConfig) {
        let mut g = self.inner.lock();
        if config.api_window != g.api.window {
            // A new window length starts a fresh count.
            g.api = Rolling::with_window(config.api_window);
        }
        if config.publish_window != g.published.window {
            g.published = Rolling::with_window(config.publish_window);
        }
        g.config = config;
    }

    pub fn config(&self) -> LimitsConfig {
        self.inner.lock().config.clone()
    }

    /// Forgets all usage (admin reset; a new 24 h window).
    pub fn reset_usage(&self) {
        let mut g = self.inner.lock();
        g.api = Rolling::with_window(g.config.api_window);
        g.bulk_batches = Rolling::default();
        g.query_jobs = Rolling::default();
        g.ingest_records = Rolling::default();
        g.published = Rolling::with_window(g.config.publish_window);
        g.publish_refused = 0;
        g.refused = 0;
    }

    /// How many requests were refused for limits since start (admin stats).
    pub fn refused(&self) -> u64 {
        self.inner.lock().refused
    }

    /// The `GET /limits` body. `extra` adds or replaces entries (e.g. event delivery usage).
    pub fn limits_json(&self, extra: &[(&str, u64, u64)]) -> Value {
        let now = Instant::now();
        let mut g = self.inner.lock();
        let c = g.config.clone();
        let api_used = g.api.used(now);
        let batches = g.bulk_batches.used(now);
        let qjobs = g.query_jobs.used(now);
        let published = g.published.used(now);
        let mut out = json!({
            "ConcurrentAsyncGetReportInstances": {"Max": 200, "Remaining": 200},
            "ConcurrentSyncReportRuns": {"Max": 20, "Remaining": 20},
            "DailyApiRequests": {"Max": c.daily_api_requests, "Remaining": c.daily_api_requests.saturating_sub(api_used)},
            "DailyAsyncApexExecutions": {"Max": 250000, "Remaining": 250000},
            "DailyBulkApiBatches": {"Max": c.daily_bulk_batches, "Remaining": c.daily_bulk_batches.saturating_sub(batches)},
            "DailyBulkV2QueryFileStorageMB": {"Max": 976562, "Remaining": 976562},
            "DailyBulkV2QueryJobs": {"Max": c.daily_bulk_query_jobs, "Remaining": c.daily_bulk_query_jobs.saturating_sub(qjobs)},
            "DailyDurableGenericStreamingApiEvents": {"Max": 1000000, "Remaining": 1000000},
            "DailyDurableStreamingApiEvents": {"Max": 1000000, "Remaining": 1000000},
            "DailyGenericStreamingApiEvents": {"Max": 10000, "Remaining": 10000},
            "DailyStreamingApiEvents": {"Max": 1000000, "Remaining": 1000000},
            "DataStorageMB": {"Max": 1073741, "Remaining": 1073741},
            "DurableStreamingApiConcurrentClients": {"Max": 2000, "Remaining": 2000},
            "FileStorageMB": {"Max": 1073741, "Remaining": 1073741},
            "HourlyPublishedPlatformEvents": {"Max": c.hourly_published_platform_events, "Remaining": c.hourly_published_platform_events.saturating_sub(published)},
            "MassEmail": {"Max": 5000, "Remaining": 5000},
            "SingleEmail": {"Max": 5000, "Remaining": 5000},
            "StreamingApiConcurrentClients": {"Max": 2000, "Remaining": 2000},
        });
        let map = out.as_object_mut().expect("object literal");
        for (name, max, remaining) in extra {
            map.insert(
                (*name).to_string(),
                json!({"Max": max, "Remaining": remaining}),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_allocation_is_enforced_with_salesforce_error() {
        let limits = Limits::new(LimitsConfig {
            daily_api_requests: 2,
            ..LimitsConfig::default()
        });
        drop(limits.begin_api_request().unwrap());
        drop(limits.begin_api_request().unwrap());
        let err = limits.begin_api_request().err().unwrap();
        assert_eq!(err.status, 403);
        assert_eq!(err.error_code, "REQUEST_LIMIT_EXCEEDED");
        assert_eq!(err.message, "TotalRequests Limit exceeded.");
        assert_eq!(limits.limit_info_header(), "api-usage=2/2");
        assert_eq!(limits.refused(), 1);
        limits.reset_usage();
        assert!(limits.begin_api_request().is_ok());
    }

    #[test]
    fn long_running_requests_are_capped() {
        let limits = Limits::new(LimitsConfig {
            concurrent_long_running: 1,
            long_running_threshold: Duration::from_millis(0),
            ..LimitsConfig::default()
        });
        let first = limits.begin_api_request().unwrap();
        let err = limits.begin_api_request().err().unwrap();
        assert_eq!(err.message, "ConcurrentPerOrgLongTxn Limit exceeded.");
        drop(first);
        assert!(limits.begin_api_request().is_ok());
    }

    #[test]
    fn limits_json_reports_remaining() {
        let limits = Limits::new(LimitsConfig::default());
        drop(limits.begin_api_request().unwrap());
        let v = limits.limits_json(&[("DailyDeliveredPlatformEvents", 50000, 49000)]);
        assert_eq!(v["DailyApiRequests"]["Remaining"], 299_999);
        assert_eq!(v["DailyDeliveredPlatformEvents"]["Remaining"], 49000);
        assert_eq!(v["HourlyPublishedPlatformEvents"]["Max"], 250_000);
    }

    #[test]
    fn hourly_publish_allocation_is_enforced_per_event() {
        let limits = Limits::new(LimitsConfig {
            hourly_published_platform_events: 2,
            ..LimitsConfig::default()
        });
        limits.take_published_event().unwrap();
        limits.take_published_event().unwrap();
        let err = limits.take_published_event().unwrap_err();
        assert_eq!(err.error_code, "LIMIT_EXCEEDED");
        assert!(
            err.message.contains("hourly publishing limit"),
            "{}",
            err.message
        );
        assert_eq!(limits.publish_usage(), (2, 2, 1));
        let v = limits.limits_json(&[]);
        assert_eq!(v["HourlyPublishedPlatformEvents"]["Max"], 2);
        assert_eq!(v["HourlyPublishedPlatformEvents"]["Remaining"], 0);
        limits.reset_usage();
        assert!(limits.take_published_event().is_ok());
        assert_eq!(limits.publish_usage(), (1, 2, 0));
    }
}
