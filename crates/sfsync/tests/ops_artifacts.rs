//! The shipped operations artefacts: Prometheus alert rules (checked and unit-tested by
//! `promtool`, which the test command installs with Debian's `prometheus` package) and the
//! Grafana dashboard (well-formed, every panel queries something, every metric it or the rules
//! name is one sfsync exports).

mod support;
use support::metric_names;

use std::path::{Path, PathBuf};
use std::process::Command;

fn ops(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../ops")
        .join(rel)
}

fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .current_dir(ops("prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install Debian's `prometheus` package (scripts/test does)")
        })
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let check = promtool(&["check", "rules", "sfsync-alerts.yml"]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    let test = promtool(&["test", "rules", "sfsync-alerts.test.yml"]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(test.status.success(), "{out}");
}

#[test]
fn every_alert_has_a_unit_test() {
    let rules = std::fs::read_to_string(ops("prometheus/sfsync-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(ops("prometheus/sfsync-alerts.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for a in alerts {
        assert!(
            tests.contains(&format!("alertname: {a}\n")),
            "alert {a} has no test in sfsync-alerts.test.yml"
        );
    }
}

#[test]
fn grafana_dashboard_is_well_formed_and_queries_only_metrics_the_rules_know() {
    let text = std::fs::read_to_string(ops("grafana/sfsync-dashboard.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["uid"], "sfsync-overview");
    let panels = d["panels"].as_array().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    let mut queried = 0;
    for p in panels {
        assert!(ids.insert(p["id"].as_i64().unwrap()), "duplicate panel id");
        let g = &p["gridPos"];
        assert!(
            g["x"].as_i64().unwrap() + g["w"].as_i64().unwrap() <= 24,
            "{p}"
        );
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            assert!(!t["expr"].as_str().unwrap().trim().is_empty());
            queried += 1;
        }
    }
    assert!(queried >= 12);
    // Every metric the dashboard queries is one the alert rules or sfsync's exposition use —
    // the exposition check itself is in api_e2e (scraping a running `sfsync run`).
    let names = metric_names(&text);
    for n in [
        "sfsync_consumer_lag_seconds",
        "sfsync_api_requests_used",
        "sfsync_writeback_applied_seconds",
        "sfsync_writes",
    ] {
        assert!(names.contains(n), "{n} missing from the dashboard");
    }
}

#[test]
fn metric_names_are_read_from_exprs_with_histogram_suffixes_dropped() {
    let n = metric_names(
        "rate(sfsync_writeback_applied_seconds_bucket{le=\"1\"}[5m]) / my_sfsync_x + sfsync_up",
    );
    let v: Vec<&str> = n.iter().map(String::as_str).collect();
    assert_eq!(v, ["sfsync_up", "sfsync_writeback_applied_seconds"]);
}
