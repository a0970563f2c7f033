//! Persistence: journal + snapshot round trips, torn journal lines.

mod common;

use std::io::Write;

use common::*;
use serde_json::json;
use sfsync_org::{DmlOp, FieldDef, FieldType, Org, Schema};

fn snapshot(org: &Org) -> String {
    let mut out = Vec::new();
    org.snapshot_jsonl(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[track_caller]
fn same(a: &str, b: &str) {
    if a != b {
        let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
        for (i, (x, y)) in la.iter().zip(&lb).enumerate() {
            assert_eq!(x, y, "first difference at line {i}");
        }
        assert_eq!(la.len(), lb.len(), "line counts differ");
    }
}

fn open(dir: &std::path::Path) -> Org {
    Org::open(Schema::demo(), config(), dir).unwrap()
}

fn history(org: &Org) {
    let a = insert(
        org,
        "Account",
        json!({"Name": "A", "Description": "d".repeat(300)}),
    )
    .unwrap();
    let b = insert(org, "Account", json!({"Name": "B", "ParentId": a.as_str()})).unwrap();
    update(
        org,
        "Account",
        &a,
        json!({"Phone": "1", "BillingCity": "Oslo"}),
    )
    .unwrap();
    one(org, DmlOp::Delete { id: b.to_string() }).unwrap();
    let c = insert(org, "Case", json!({"Subject": "s"})).unwrap();
    one(org, DmlOp::HardDelete { id: c.to_string() }).unwrap();
    org.add_field(
        "Account",
        FieldDef::new("Tier__c", "Tier", FieldType::String),
    )
    .unwrap();
    update(org, "Account", &a, json!({"Tier__c": "Gold"})).unwrap();
    // Create + hard delete in one transaction leaves a gap in the table.
    let r = org.execute(
        &ctx(org),
        vec![DmlOp::Insert {
            object: "Contact".into(),
            fields: fields(json!({"LastName": "gone"})),
        }],
        false,
    );
    let gone = r[0].clone().unwrap().id();
    org.execute(
        &ctx(org),
        vec![
            DmlOp::Insert {
                object: "Contact".into(),
                fields: fields(json!({"LastName": "tmp"})),
            },
            DmlOp::HardDelete {
                id: gone.to_string(),
            },
        ],
        false,
    );
    org.seed(&ctx(org), "Contact", 250, 7).unwrap();
    org.seed(&ctx(org), "Service_Request__c", 30, 7).unwrap();
    // Long text on a share of the records only: the journal carries the share.
    org.seed_with(&ctx(org), "Account", 40, 8, 25).unwrap();
}

#[test]
fn reopen_reproduces_the_org_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (before, stats) = {
        let org = open(dir.path());
        history(&org);
        (snapshot(&org), org.stats())
    };
    let org = open(dir.path());
    same(&snapshot(&org), &before);
    assert_eq!(org.stats(), stats);
    // Ids keep increasing after a restart.
    let next = insert(&org, "Account", json!({"Name": "C"})).unwrap();
    let max = org
        .query("SELECT Id FROM Account ORDER BY Id DESC LIMIT 1", true)
        .unwrap()
        .ids[0];
    assert_eq!(next, max);
    // Checkpoint, reopen again: same state, empty journal.
    org.checkpoint().unwrap();
    let after = snapshot(&org);
    drop(org);
    let org = open(dir.path());
    same(&snapshot(&org), &after);
    assert_eq!(
        std::fs::metadata(dir.path().join("org-journal.jsonl"))
            .unwrap()
            .len(),
        0
    );
    // More writes after the snapshot replay on top of it; seeds pick the same parents.
    org.seed(&ctx(&org), "Contact", 20, 9).unwrap();
    let after2 = snapshot(&org);
    drop(org);
    same(&snapshot(&open(dir.path())), &after2);
}

#[test]
fn reset_is_journalled_and_a_torn_line_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let org = open(dir.path());
        insert(&org, "Account", json!({"Name": "A"})).unwrap();
        org.reset();
        insert(&org, "Account", json!({"Name": "B"})).unwrap();
        snapshot(&org)
    };
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("org-journal.jsonl"))
        .unwrap();
    f.write_all(br#"{"seq":99,"type":"tx","tx":{"transac"#)
        .unwrap();
    drop(f);
    let org = open(dir.path());
    same(&snapshot(&org), &before);
    assert_eq!(
        org.query("SELECT Name FROM Account", false).unwrap().rows,
        vec![vec![json!("B")]]
    );
    // The torn tail was cut, so new entries append cleanly.
    insert(&org, "Account", json!({"Name": "C"})).unwrap();
    let now = snapshot(&org);
    drop(org);
    same(&snapshot(&open(dir.path())), &now);
}

#[test]
fn a_corrupt_middle_line_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let org = open(dir.path());
        insert(&org, "Account", json!({"Name": "A"})).unwrap();
    }
    let p = dir.path().join("org-journal.jsonl");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, format!("garbage\n{text}")).unwrap();
    let e = Org::open(Schema::demo(), config(), dir.path())
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("line 1"), "{e:#}");
}
