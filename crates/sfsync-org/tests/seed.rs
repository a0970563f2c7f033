//! Seeding: deterministic, realistic, transactional.

mod common;

use std::sync::Arc;

use common::*;
use parking_lot::Mutex;

#[test]
fn seed_is_deterministic_and_realistic() {
    let snap = |org: &sfsync_org::Org| {
        let mut out = Vec::new();
        org.snapshot_jsonl(&mut out).unwrap();
        // Timestamps differ between runs; compare everything else.
        let mut v: Vec<serde_json::Value> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        for r in &mut v {
            let f = r["fields"].as_object_mut().unwrap();
            for k in [
                "CreatedDate",
                "LastModifiedDate",
                "SystemModstamp",
                "CloseDate",
                "Requested_Date__c",
                "Due_Date__c",
                "Paid_Date__c",
                "ClosedDate",
            ] {
                f.remove(k);
            }
        }
        v
    };
    let run = || {
        let org = org();
        let c = ctx(&org);
        for (o, n) in [
            ("Account", 300),
            ("Contact", 300),
            ("Lead", 50),
            ("Opportunity", 50),
            ("Case", 50),
            ("User", 5),
            ("Service_Request__c", 50),
            ("Payment__c", 50),
        ] {
            let ids = org.seed(&c, o, n, 42).unwrap();
            assert_eq!(ids.len(), n, "{o}");
        }
        org
    };
    let a = run();
    let b = run();
    assert_eq!(snap(&a), snap(&b));
    let r = a
        .query("SELECT COUNT() FROM Contact WHERE AccountId != null", false)
        .unwrap();
    assert!(r.total_size > 200, "{}", r.total_size);
    let r = a
        .query(
            "SELECT Name, BillingCity, Phone, Description FROM Account LIMIT 5",
            false,
        )
        .unwrap();
    for row in &r.rows {
        assert!(row[0].as_str().unwrap().contains(' '));
        if let Some(d) = row[3].as_str() {
            assert!((1900..6200).contains(&d.len()));
        }
    }
    assert_eq!(a.stats()["objects"]["Account"]["live"], 300);
    assert!(a.stats()["transactions"].as_u64().unwrap() >= 2);
}

#[test]
fn seed_emits_transactions_of_at_most_200() {
    let org = org();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    org.add_commit_listener(Arc::new(move |tx| s.lock().push(tx.clone())));
    org.seed(&ctx(&org), "Account", 450, 1).unwrap();
    let txs = seen.lock();
    let sizes: Vec<usize> = txs.iter().map(|t| t.changes.len()).collect();
    assert_eq!(sizes, vec![200, 200, 50]);
    let sizes: Vec<usize> = txs[0]
        .changes
        .iter()
        .map(|c| serde_json::to_vec(&c.values).unwrap().len())
        .collect();
    let big = sizes.iter().filter(|s| (2500..9000).contains(*s)).count();
    assert!(big > 150, "{sizes:?}");
    assert!(txs
        .windows(2)
        .all(|w| w[1].commit_number == w[0].commit_number + 1));
    // Seeded records are queryable and unique-indexed.
    let ext = org
        .query("SELECT External_Id__c FROM Account LIMIT 1", false)
        .unwrap()
        .rows[0][0]
        .clone();
    let found = org
        .find_by_external_id("Account", "External_Id__c", ext.as_str().unwrap())
        .unwrap();
    assert_eq!(found.len(), 1);
}

#[test]
fn long_text_fills_the_requested_share_of_records() {
    let org = org();
    let c = ctx(&org);
    let count = |org: &sfsync_org::Org| {
        org.query(
            "SELECT COUNT() FROM Account WHERE Description != null",
            false,
        )
        .unwrap()
        .total_size
    };
    org.seed_with(&c, "Account", 400, 42, 0).unwrap();
    assert_eq!(count(&org), 0);
    // Everything else is still filled.
    let r = org
        .query("SELECT COUNT() FROM Account WHERE Phone != null", false)
        .unwrap();
    assert!(r.total_size > 300, "{}", r.total_size);
    org.seed_with(&c, "Account", 400, 43, 25).unwrap();
    let some = count(&org);
    assert!(
        (60..140).contains(&some),
        "{some} of 400 with a Description at 25 %"
    );
    org.seed(&c, "Account", 400, 44).unwrap();
    // The default fills every record (optional fields are sometimes empty: 12 %).
    let all = count(&org) - some;
    assert!(all > 300, "{all} of 400 with a Description by default");
}
