//! Drift: changes behind the listeners' back — values and system fields as DML sets them, no
//! committed transaction, all or nothing, journalled and replayed on reopen.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};
use sfsync_core::SfId;
use sfsync_org::{DmlOp, Drift, Org, Schema};

/// Counts the transactions listeners are handed.
fn listen(org: &Org) -> Arc<AtomicUsize> {
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    org.add_commit_listener(Arc::new(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
    }));
    n
}

fn snapshot(org: &Org) -> String {
    let mut out = Vec::new();
    org.snapshot_jsonl(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn strs(ids: &[SfId]) -> Vec<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

fn row(org: &Org, id: &SfId) -> Vec<Value> {
    let r = org
        .query(
            &format!(
                "SELECT Name, Phone, LastModifiedDate, LastModifiedById, SystemModstamp, IsDeleted \
                 FROM Account WHERE Id = '{id}'"
            ),
            true,
        )
        .unwrap();
    r.rows.into_iter().next().unwrap_or_default()
}

fn two_accounts(org: &Org) -> (SfId, SfId) {
    let a = insert(org, "Account", json!({"Name": "A", "Phone": "1"})).unwrap();
    let b = insert(org, "Account", json!({"Name": "B", "Phone": "2"})).unwrap();
    (a, b)
}

#[test]
fn silent_update_sets_values_and_system_fields_without_a_transaction() {
    let org = org();
    let (a, b) = two_accounts(&org);
    let seen = listen(&org);
    let before = org.stats();
    let old = row(&org, &a);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let ids = org
        .drift(
            &ctx(&org),
            "account",
            &[a.to_string(), b.short().to_string(), a.to_string()],
            &Drift::SilentUpdate(fields(json!({"Name": "x", "Phone": null}))),
        )
        .unwrap();
    assert_eq!(ids, vec![a, b], "distinct ids in request order");
    assert_eq!(seen.load(Ordering::SeqCst), 0, "no listener call");
    for id in [a, b] {
        let r = row(&org, &id);
        assert_eq!(r[0], "x");
        assert_eq!(r[1], Value::Null);
        assert_eq!(r[2], r[4], "LastModifiedDate = SystemModstamp");
        assert_eq!(r[3], org.admin_user_id().as_str());
        assert!(r[4].as_str().unwrap() > old[4].as_str().unwrap(), "{r:?}");
    }
    let after = org.stats();
    assert_eq!(after["commit_number"], before["commit_number"]);
    assert_eq!(after["transactions"], before["transactions"]);
    assert_eq!(
        after["drift"],
        json!({"silent_updated": 2, "silent_deleted": 0, "purged": 0})
    );
    // The next DML's timestamp never goes back before the drift's.
    update(&org, "Account", &a, json!({"Name": "y"})).unwrap();
    assert!(row(&org, &a)[4].as_str().unwrap() >= row(&org, &b)[4].as_str().unwrap());
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[test]
fn silent_delete_and_purge() {
    let org = org();
    let (a, b) = two_accounts(&org);
    let c = insert(&org, "Account", json!({"Name": "C"})).unwrap();
    one(&org, DmlOp::Delete { id: c.to_string() }).unwrap();
    let seen = listen(&org);
    let old = row(&org, &a);
    std::thread::sleep(std::time::Duration::from_millis(5));
    org.drift(
        &ctx(&org),
        "Account",
        &[a.to_string()],
        &Drift::SilentDelete,
    )
    .unwrap();
    let r = row(&org, &a);
    assert_eq!(r[5], true);
    assert_eq!(r[2], old[2], "a delete leaves LastModifiedDate");
    assert!(r[4].as_str().unwrap() > old[4].as_str().unwrap());
    assert_eq!(
        org.retrieve("Account", a.as_str(), None, "66.0")
            .unwrap_err()
            .error_code,
        "ENTITY_IS_DELETED"
    );
    // Purge takes live and recycle-bin records alike.
    let ids = org
        .drift(
            &ctx(&org),
            "Account",
            &[b.to_string(), c.to_string()],
            &Drift::Purge,
        )
        .unwrap();
    assert_eq!(ids, vec![b, c]);
    for id in [b, c] {
        assert!(row(&org, &id).is_empty(), "queryAll still has {id}");
        let e = org
            .retrieve("Account", id.as_str(), None, "66.0")
            .unwrap_err();
        assert_eq!((e.status, e.error_code.as_str()), (404, "NOT_FOUND"));
    }
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    let stats = org.stats();
    assert_eq!(
        stats["objects"]["Account"],
        json!({"live": 0, "deleted": 1})
    );
    assert_eq!(
        stats["drift"],
        json!({"silent_updated": 0, "silent_deleted": 1, "purged": 2})
    );
}

/// A refused call: what it tests, ids, drift, status, error code, a part of the message.
type Case<'a> = (&'a str, Vec<String>, Drift, u16, &'a str, &'a str);

#[test]
fn bad_drift_calls_change_nothing() {
    let org = org();
    let (a, b) = two_accounts(&org);
    insert(
        &org,
        "Account",
        json!({"Name": "E", "External_Id__c": "E-1"}),
    )
    .unwrap();
    let d = insert(&org, "Account", json!({"Name": "D"})).unwrap();
    one(&org, DmlOp::Delete { id: d.to_string() }).unwrap();
    let contact = insert(&org, "Contact", json!({"LastName": "L"})).unwrap();
    let seen = listen(&org);
    let before = snapshot(&org);
    let stats = org.stats();
    let good = strs(&[a, b]);
    let update = |v: Value| Drift::SilentUpdate(fields(v));
    let cases: Vec<Case> = vec![
        (
            "unknown object",
            good.clone(),
            Drift::Purge,
            404,
            "NOT_FOUND",
            "Nope__c",
        ),
        ("no ids", vec![], Drift::Purge, 400, "INVALID_INPUT", "ids"),
        (
            "unknown id",
            vec![a.to_string(), "001Kx00000FFFFFAAA".into(), "junk".into()],
            Drift::Purge,
            400,
            "INVALID_INPUT",
            "ids: 2 of 3 ids name no Account record: 001Kx00000FFFFFAAA, junk",
        ),
        (
            "another object's id",
            vec![a.to_string(), contact.to_string()],
            Drift::SilentDelete,
            400,
            "INVALID_INPUT",
            contact.as_str(),
        ),
        (
            "recycle bin",
            vec![a.to_string(), d.to_string()],
            Drift::SilentDelete,
            400,
            "ENTITY_IS_DELETED",
            d.as_str(),
        ),
        (
            "recycle bin update",
            vec![d.to_string()],
            update(json!({"Name": "z"})),
            400,
            "ENTITY_IS_DELETED",
            "silent_update",
        ),
        (
            "unknown field",
            good.clone(),
            update(json!({"Name": "z", "Nope": 1})),
            400,
            "INVALID_FIELD",
            "fields: No such column 'Nope'",
        ),
        (
            "read-only field",
            good.clone(),
            update(json!({"CreatedDate": "2024-01-01T00:00:00Z"})),
            400,
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            "CreatedDate",
        ),
        (
            "bad type",
            good.clone(),
            update(json!({"Name": "z", "NumberOfEmployees": "many"})),
            400,
            "INVALID_TYPE_ON_FIELD_IN_RECORD",
            "many",
        ),
        (
            "required nulled",
            good.clone(),
            update(json!({"Name": null})),
            400,
            "REQUIRED_FIELD_MISSING",
            "Name",
        ),
        (
            "duplicate on the second record",
            good.clone(),
            update(json!({"External_Id__c": "X-1"})),
            400,
            "DUPLICATE_VALUE",
            "External_Id__c",
        ),
        (
            "duplicate of another record",
            good.clone(),
            update(json!({"External_Id__c": "e-1"})),
            400,
            "DUPLICATE_VALUE",
            "External_Id__c",
        ),
    ];
    for (what, ids, drift, status, code, needle) in cases {
        let object = if what == "unknown object" {
            "Nope__c"
        } else {
            "Account"
        };
        let e = org.drift(&ctx(&org), object, &ids, &drift).unwrap_err();
        assert_eq!(
            (e.status, e.error_code.as_str()),
            (status, code),
            "{what}: {e}"
        );
        assert!(e.message.contains(needle), "{what}: {e}");
        assert_eq!(snapshot(&org), before, "{what} changed the org");
    }
    assert_eq!(org.stats(), stats);
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    // Many unknown ids: the first five are named.
    let many: Vec<String> = (0..8).map(|i| format!("001Kx00000FFFF{i}AAA")).collect();
    let e = org
        .drift(&ctx(&org), "Account", &many, &Drift::Purge)
        .unwrap_err();
    assert!(e.message.ends_with("(and 3 more)"), "{e}");
}

#[test]
fn drift_is_journalled_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let open = || Org::open(Schema::demo(), config(), dir.path()).unwrap();
    let (before, stats) = {
        let org = open();
        let (a, b) = two_accounts(&org);
        let c = insert(&org, "Account", json!({"Name": "C"})).unwrap();
        let d = insert(&org, "Account", json!({"Name": "D", "Description": "d"})).unwrap();
        let ctx = ctx(&org);
        org.drift(
            &ctx,
            "Account",
            &strs(&[a, d]),
            &Drift::SilentUpdate(fields(json!({
                "Phone": null, "NumberOfEmployees": "12", "Industry": "banking",
                "AnnualRevenue": 1.5, "External_Id__c": null, "ParentId": c.as_str(),
            }))),
        )
        .unwrap();
        org.drift(&ctx, "Account", &strs(&[b]), &Drift::SilentDelete)
            .unwrap();
        org.drift(&ctx, "Account", &strs(&[c]), &Drift::Purge)
            .unwrap();
        // A failed call journals nothing.
        org.drift(&ctx, "Account", &strs(&[b]), &Drift::SilentDelete)
            .unwrap_err();
        // DML after drift replays on top of it.
        update(&org, "Account", &d, json!({"Name": "D2"})).unwrap();
        (snapshot(&org), org.stats())
    };
    let journal = std::fs::read_to_string(dir.path().join("org-journal.jsonl")).unwrap();
    assert_eq!(journal.matches(r#""type":"drift""#).count(), 3);
    // Reopen without a checkpoint: the journal alone rebuilds the org.
    let org = open();
    assert_eq!(snapshot(&org), before);
    assert_eq!(org.stats(), stats);
    assert_eq!(
        stats["drift"],
        json!({"silent_updated": 2, "silent_deleted": 1, "purged": 1})
    );
    // And through a snapshot.
    org.checkpoint().unwrap();
    drop(org);
    let org = open();
    assert_eq!(snapshot(&org), before);
    assert_eq!(org.stats(), stats);
}
