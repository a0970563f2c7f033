//! Per-caller rate limit of the read surfaces (the operational read API and OData): a token
//! bucket per caller name, refilled continuously at `rate` reads per second up to `burst`.
//!
//! Guarantees: a caller over its rate is refused before any store read, with the seconds until
//! its next read would be allowed (answered as 429 with `Retry-After`); callers never share a
//! bucket, so one busy client cannot starve another; the limiter holds one small entry per
//! caller name (configured tokens and principals only — unauthenticated requests never reach
//! it), so it stays bounded.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;

/// Token buckets by caller.
#[derive(Debug)]
pub struct ReadLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl ReadLimiter {
    /// `rate` reads per second (0: unlimited), bursts of `burst`.
    pub fn new(rate: u64, burst: u64) -> ReadLimiter {
        ReadLimiter {
            rate: rate as f64,
            burst: burst.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one read for `caller` at `now`; `Err(seconds)` until the next read is allowed.
    pub fn take_at(&self, caller: &str, now: Instant) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock();
        let (tokens, at) = buckets
            .entry(caller.to_string())
            .or_insert((self.burst, now));
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }

    pub fn take(&self, caller: &str) -> Result<(), u64> {
        self.take_at(caller, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills_per_caller() {
        let l = ReadLimiter::new(2, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.take_at("a", t0), Ok(()));
        }
        assert_eq!(l.take_at("a", t0), Err(1));
        assert_eq!(l.take_at("b", t0), Ok(()), "callers have their own buckets");
        assert_eq!(l.take_at("a", t0 + Duration::from_millis(500)), Ok(()));
        assert!(l.take_at("a", t0 + Duration::from_millis(500)).is_err());
        let unlimited = ReadLimiter::new(0, 0);
        for _ in 0..1000 {
            assert_eq!(unlimited.take_at("a", t0), Ok(()));
        }
    }
}
