//! SCRATCH (to be deleted): seed 1M Accounts, time Org::query_csv narrow / wide.
use std::time::Instant;

use sfsync_core::SfId;
use sfsync_org::{ApiKind, CallContext, CsvQueryOptions, Org, OrgConfig, Schema};

fn rss_mb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
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
    println!("RSS before seed: {} MB", rss_mb());
    let t = Instant::now();
    org.seed(&ctx, "Account", n, 7).unwrap();
    let s = t.elapsed().as_secs_f64();
    println!(
        "seed {n} Accounts: {s:.2} s ({:.0} rec/s), RSS {} MB",
        n as f64 / s,
        rss_mb()
    );
    let narrow = "SELECT Id, Name, Type, BillingCity, BillingState, Phone, Industry, AnnualRevenue, NumberOfEmployees, OwnerId, SystemModstamp, IsDeleted FROM Account";
    let wide = "SELECT Id, Name, Type, BillingCity, BillingState, Phone, Industry, AnnualRevenue, NumberOfEmployees, OwnerId, SystemModstamp, IsDeleted, Description FROM Account";
    let threads_all = std::thread::available_parallelism().unwrap().get();
    if let Ok(which) = std::env::var("ONLY") {
        let q = if which == "wide" { wide } else { narrow };
        let opts = CsvQueryOptions { threads: 1, ..CsvQueryOptions::default() };
        for _ in 0..5 {
            let t = Instant::now();
            let r = org.query_csv(q, false, &opts).unwrap();
            println!("{which}: {} rows in {:.3} s", r.total_rows, t.elapsed().as_secs_f64());
        }
        return;
    }
    for (label, q) in [
        ("Id only", "SELECT Id FROM Account"),
        ("narrow", narrow),
        ("wide+Description", wide),
    ] {
        for threads in [1, threads_all] {
            let mut best = f64::MAX;
            let mut bytes = 0;
            let mut rows = 0;
            for _ in 0..3 {
                let opts = CsvQueryOptions {
                    threads,
                    ..CsvQueryOptions::default()
                };
                let t = Instant::now();
                let r = org.query_csv(q, false, &opts).unwrap();
                let secs = t.elapsed().as_secs_f64();
                best = best.min(secs);
                bytes = r.header.len() + r.chunks.iter().map(|c| c.bytes.len()).sum::<usize>();
                rows = r.total_rows;
                if threads == threads_all {
                    println!("    (RSS while holding result: {} MB)", rss_mb());
                }
            }
            println!(
                "query_csv {label:<17} threads={threads}: {rows} rows, {:.1} MB in {best:.3} s = {:.0} rows/s, {:.0} MB/s",
                bytes as f64 / 1e6,
                rows as f64 / best,
                bytes as f64 / best / 1e6
            );
        }
    }
    println!("RSS end: {} MB", rss_mb());
}
