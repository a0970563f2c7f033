//! Prints seed and query throughput figures for a large org.
//!
//! `cargo run --release -p sfsync-org --example org_bench -- [accounts]` (default 1,000,000).

use std::time::Instant;

use sfsync_core::SfId;
use sfsync_org::{ApiKind, CallContext, Org, OrgConfig, Schema};

fn rss_mb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb / 1024)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let org = Org::new(
        Schema::demo(),
        OrgConfig {
            org_id: SfId::from_parts("00D", 1),
            admin_username: "admin@bench.test".into(),
        },
    );
    let ctx = CallContext {
        user_id: org.admin_user_id(),
        api: ApiKind::Admin,
        api_version: "66.0".into(),
        client: None,
    };
    let t = Instant::now();
    org.seed(&ctx, "Account", n, 1).expect("seed");
    let secs = t.elapsed().as_secs_f64();
    println!(
        "seed {n} Accounts: {secs:.2} s ({:.0} records/s), RSS {} MB",
        n as f64 / secs,
        rss_mb().unwrap_or(0)
    );
    for q in [
        "SELECT Id, Name, BillingCity, Phone, AnnualRevenue, SystemModstamp FROM Account",
        "SELECT Id, Name, Industry FROM Account WHERE Industry = 'Banking' OR Name LIKE 'acme%'",
        "SELECT Id, Name, SystemModstamp FROM Account WHERE SystemModstamp >= 2020-01-01T00:00:00Z ORDER BY SystemModstamp ASC LIMIT 10000",
        "SELECT COUNT() FROM Account WHERE AnnualRevenue > 100000",
    ] {
        let t = Instant::now();
        let r = org.query(q, false).expect("query");
        let secs = t.elapsed().as_secs_f64();
        // Render as Bulk CSV to measure the export path end to end.
        let t2 = Instant::now();
        let mut out = String::new();
        for row in &r.rows {
            for (k, v) in row.iter().enumerate() {
                if k > 0 {
                    out.push(',');
                }
                sfsync_org::value::write_csv_value(v, &mut out);
            }
            out.push('\n');
        }
        let csv_secs = t2.elapsed().as_secs_f64();
        println!(
            "{q}\n  -> {} rows (totalSize {}) in {secs:.3} s ({:.0} rows/s); CSV {:.3} s, {} MB",
            r.rows.len(),
            r.total_size,
            n as f64 / secs,
            csv_secs,
            out.len() >> 20
        );
    }
}
