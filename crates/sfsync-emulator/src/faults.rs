//! Fault injection: added latency and error rates per endpoint (503 `SERVER_UNAVAILABLE`,
//! `UNABLE_TO_LOCK_ROW`, `QUERY_TIMEOUT`), set from config or the admin API. Forced token expiry
//! lives in `auth`. Draws are random but reproducible for a given seed.

use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sfsync_org::SfError;

/// What an injected fault answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FaultKind {
    /// 503 `SERVER_UNAVAILABLE`.
    ServerUnavailable,
    /// 400 `UNABLE_TO_LOCK_ROW` (a DML lock timeout).
    UnableToLockRow,
    /// 400 `QUERY_TIMEOUT`.
    QueryTimeout,
}

impl FaultKind {
    pub fn error(self) -> SfError {
        match self {
            FaultKind::ServerUnavailable => SfError::new(
                503,
                "SERVER_UNAVAILABLE",
                "Server is unavailable: the service is too busy to handle your request. Please try again later.",
            ),
            FaultKind::UnableToLockRow => SfError::new(
                400,
                "UNABLE_TO_LOCK_ROW",
                "unable to obtain exclusive access to this record or 1 records",
            ),
            FaultKind::QueryTimeout => SfError::new(
                400,
                "QUERY_TIMEOUT",
                "Your query request was running for too long.",
            ),
        }
    }
}

/// One fault rule: requests whose path contains `path_contains` (and whose method matches, if
/// given) fail with `kind` with probability `rate`, at most `max_count` times if set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    pub path_contains: String,
    #[serde(default)]
    pub method: Option<String>,
    pub kind: FaultKind,
    pub rate: f64,
    #[serde(default)]
    pub max_count: Option<u64>,
    #[serde(default)]
    pub fired: u64,
}

/// The whole fault configuration (admin `PUT /admin/faults` body).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Added to every API request.
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default)]
    pub rules: Vec<FaultRule>,
    /// Seed for the random draws.
    #[serde(default)]
    pub seed: u64,
}

impl FaultConfig {
    /// Checks rates and paths; names the rule and the reason.
    pub fn validate(&self) -> Result<(), String> {
        for (i, r) in self.rules.iter().enumerate() {
            if !(0.0..=1.0).contains(&r.rate) || r.rate.is_nan() {
                return Err(format!(
                    "rules[{i}].rate is {}; it must be between 0 and 1",
                    r.rate
                ));
            }
            if r.path_contains.is_empty() {
                return Err(format!("rules[{i}].path_contains is empty"));
            }
        }
        Ok(())
    }
}

pub struct Faults {
    inner: Mutex<(FaultConfig, StdRng)>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults::new(FaultConfig::default())
    }
}

impl Faults {
    pub fn new(config: FaultConfig) -> Faults {
        let rng = StdRng::seed_from_u64(config.seed);
        Faults {
            inner: Mutex::new((config, rng)),
        }
    }

    pub fn set(&self, config: FaultConfig) {
        let rng = StdRng::seed_from_u64(config.seed);
        *self.inner.lock() = (config, rng);
    }

    pub fn get(&self) -> FaultConfig {
        self.inner.lock().0.clone()
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.inner.lock().0.latency_ms)
    }

    /// Draws the faults for one request: `Some(error)` when a rule fires.
    pub fn draw(&self, method: &str, path: &str) -> Option<SfError> {
        let mut g = self.inner.lock();
        let (config, rng) = &mut *g;
        for rule in config.rules.iter_mut() {
            if !path.contains(rule.path_contains.as_str()) {
                continue;
            }
            if let Some(m) = &rule.method {
                if !m.eq_ignore_ascii_case(method) {
                    continue;
                }
            }
            if let Some(max) = rule.max_count {
                if rule.fired >= max {
                    continue;
                }
            }
            if rng.random::<f64>() < rule.rate {
                rule.fired += 1;
                return Some(rule.kind.error());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_fire_by_path_method_and_count() {
        let faults = Faults::new(FaultConfig {
            latency_ms: 0,
            seed: 7,
            rules: vec![FaultRule {
                path_contains: "/composite/".into(),
                method: Some("PATCH".into()),
                kind: FaultKind::UnableToLockRow,
                rate: 1.0,
                max_count: Some(2),
                fired: 0,
            }],
        });
        assert!(faults
            .draw("GET", "/services/data/v66.0/composite/sobjects")
            .is_none());
        assert!(faults
            .draw("PATCH", "/services/data/v66.0/sobjects/Account/x")
            .is_none());
        let e = faults
            .draw("PATCH", "/services/data/v66.0/composite/sobjects")
            .unwrap();
        assert_eq!(e.error_code, "UNABLE_TO_LOCK_ROW");
        assert!(faults
            .draw("PATCH", "/services/data/v66.0/composite/sobjects")
            .is_some());
        assert!(faults
            .draw("PATCH", "/services/data/v66.0/composite/sobjects")
            .is_none());
    }

    #[test]
    fn bad_rates_are_rejected_with_the_rule_named() {
        let c = FaultConfig {
            rules: vec![FaultRule {
                path_contains: "/query".into(),
                method: None,
                kind: FaultKind::QueryTimeout,
                rate: 1.5,
                max_count: None,
                fired: 0,
            }],
            ..FaultConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("rules[0].rate"));
    }
}
