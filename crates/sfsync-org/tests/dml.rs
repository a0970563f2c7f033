//! DML: validation errors, system fields, transactions and their metadata, recycle bin, upsert.

mod common;

use std::sync::Arc;

use common::*;
use parking_lot::Mutex;
use serde_json::json;
use sfsync_org::{ChangeKind, CommittedTransaction, DmlOp, DmlOutcome};

fn listen(org: &sfsync_org::Org) -> Arc<Mutex<Vec<Arc<CommittedTransaction>>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    org.add_commit_listener(Arc::new(move |tx| s.lock().push(tx.clone())));
    seen
}

#[test]
fn insert_sets_system_fields_and_retrieve_formats_them() {
    let org = org();
    let id = insert(
        &org,
        "Account",
        json!({"Name": "Acme", "BillingCity": "Paris", "AnnualRevenue": "1000", "NumberOfEmployees": 8}),
    )
    .unwrap();
    assert_eq!(id.key_prefix(), "001");
    let r = org.retrieve("account", id.as_str(), None, "66.0").unwrap();
    let keys: Vec<&String> = r.keys().collect();
    assert_eq!(keys[0], "attributes");
    assert_eq!(
        r["attributes"]["url"],
        format!("/services/data/v66.0/sobjects/Account/{id}")
    );
    assert_eq!(r["Id"], id.as_str());
    assert_eq!(r["IsDeleted"], false);
    assert_eq!(r["OwnerId"], org.admin_user_id().as_str());
    assert_eq!(r["CreatedById"], org.admin_user_id().as_str());
    let created = r["CreatedDate"].as_str().unwrap();
    assert!(
        created.ends_with(".000+0000") || created.len() == 28,
        "{created}"
    );
    assert_eq!(r["CreatedDate"], r["SystemModstamp"]);
    assert_eq!(r["BillingAddress"]["city"], "Paris");
    assert_eq!(r["BillingAddress"]["street"], json!(null));
    assert_eq!(r["ShippingAddress"], json!(null));
    assert_eq!(r["Revenue_Per_Employee__c"], json!(125.0));
    let only = org
        .retrieve(
            "Account",
            id.short(),
            Some(&["name".into(), "Id".into()]),
            "66.0",
        )
        .unwrap();
    assert_eq!(only.len(), 3);
    assert_eq!(only["Name"], "Acme");
}

#[test]
fn validation_error_codes() {
    let org = org();
    let code = |r: Result<_, sfsync_org::SfError>| r.unwrap_err().error_code;
    let e = insert(&org, "Account", json!({"Phone": "1"})).unwrap_err();
    assert_eq!(e.error_code, "REQUIRED_FIELD_MISSING");
    assert_eq!(e.message, "Required fields are missing: [Name]");
    assert_eq!(e.fields, vec!["Name"]);
    let e = insert(&org, "Account", json!({"Name": "x".repeat(256)})).unwrap_err();
    assert_eq!(e.error_code, "STRING_TOO_LONG");
    assert!(e.message.contains("data value too large") && e.message.contains("(max length=255)"));
    let e = insert(&org, "Account", json!({"Name": "A", "Foo": 1})).unwrap_err();
    assert_eq!(e.error_code, "INVALID_FIELD");
    assert_eq!(e.message, "No such column 'Foo' on sobject of type Account");
    assert_eq!(
        code(insert(
            &org,
            "Account",
            json!({"Name": "A", "CreatedDate": "2024-01-01T00:00:00Z"})
        )),
        "INVALID_FIELD_FOR_INSERT_UPDATE"
    );
    assert_eq!(
        code(insert(
            &org,
            "Account",
            json!({"Name": "A", "BillingAddress": {"city": "x"}})
        )),
        "INVALID_FIELD"
    );
    assert_eq!(
        code(insert(
            &org,
            "Account",
            json!({"Name": "A", "Revenue_Per_Employee__c": 1})
        )),
        "INVALID_FIELD_FOR_INSERT_UPDATE"
    );
    assert_eq!(
        code(insert(
            &org,
            "Account",
            json!({"Name": "A", "NumberOfEmployees": "many"})
        )),
        "INVALID_TYPE_ON_FIELD_IN_RECORD"
    );
    assert_eq!(
        code(insert(
            &org,
            "Service_Request__c",
            json!({"Name": "A", "Status__c": "Bogus"})
        )),
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    );
    assert_eq!(
        code(insert(
            &org,
            "Contact",
            json!({"LastName": "A", "AccountId": "001000000000000"})
        )),
        "INVALID_CROSS_REFERENCE_KEY"
    );
    let contact = insert(&org, "Contact", json!({"LastName": "A"})).unwrap();
    assert_eq!(
        code(insert(
            &org,
            "Contact",
            json!({"LastName": "B", "AccountId": contact.as_str()})
        )),
        "FIELD_INTEGRITY_EXCEPTION"
    );
    assert_eq!(
        code(insert(
            &org,
            "Contact",
            json!({"LastName": "B", "Name": "x"})
        )),
        "INVALID_FIELD_FOR_INSERT_UPDATE"
    );
    assert_eq!(
        code(insert(&org, "Case", json!({"CaseNumber": "1"}))),
        "INVALID_FIELD_FOR_INSERT_UPDATE"
    );
    assert_eq!(code(insert(&org, "Nope__c", json!({}))), "NOT_FOUND");
    let a = insert(
        &org,
        "Account",
        json!({"Name": "A", "External_Id__c": "X-1"}),
    )
    .unwrap();
    let e = insert(
        &org,
        "Account",
        json!({"Name": "B", "External_Id__c": "x-1"}),
    )
    .unwrap_err();
    assert_eq!(e.error_code, "DUPLICATE_VALUE");
    assert_eq!(
        e.message,
        format!("duplicate value found: External_Id__c duplicates value on record with id: {a}")
    );
    let e = update(&org, "Account", &a, json!({"Name": null})).unwrap_err();
    assert_eq!(e.error_code, "REQUIRED_FIELD_MISSING");
    // Values are coerced: booleans from strings, datetimes normalised, dates with a Z.
    let sr = insert(
        &org,
        "Service_Request__c",
        json!({"Name": "SR", "Due_Date__c": "2024-04-26T11:36:32-05:00", "Requested_Date__c": "2024-04-01Z", "Amount__c": "12.345"}),
    )
    .unwrap();
    let r = org
        .retrieve("Service_Request__c", sr.as_str(), None, "66.0")
        .unwrap();
    assert_eq!(r["Due_Date__c"], "2024-04-26T16:36:32.000+0000");
    assert_eq!(r["Requested_Date__c"], "2024-04-01");
    assert_eq!(r["Amount__c"], json!(12.35));
    assert_eq!(r["Status__c"], "New");
    assert_eq!(r["Summary__c"], "SR: New");
    let case = insert(&org, "Case", json!({"Subject": "Broken"})).unwrap();
    let r = org.retrieve("Case", case.as_str(), None, "66.0").unwrap();
    assert_eq!(r["CaseNumber"], "00001001");
    assert_eq!(r["Status"], "New");
}

#[test]
fn transactions_have_monotonic_metadata_and_merge_changes() {
    let org = org();
    let seen = listen(&org);
    let a = insert(&org, "Account", json!({"Name": "A", "Phone": "1"})).unwrap();
    update(&org, "Account", &a, json!({"Phone": "2"})).unwrap();
    update(&org, "Account", &a, json!({"Phone": "2"})).unwrap(); // no real change
    let ctx = ctx(&org);
    let r = org.execute(
        &ctx,
        vec![
            DmlOp::Insert {
                object: "Account".into(),
                fields: fields(json!({"Name": "B"})),
            },
            DmlOp::Update {
                object: "Account".into(),
                id: a.to_string(),
                fields: fields(json!({"Fax": "9"})),
            },
            DmlOp::Update {
                object: "Account".into(),
                id: a.to_string(),
                fields: fields(json!({"Phone": null})),
            },
        ],
        false,
    );
    let b = r[0].clone().unwrap().id();
    org.execute(
        &ctx,
        vec![DmlOp::Insert {
            object: "Account".into(),
            fields: fields(json!({"Name": "C"})),
        }],
        false,
    );
    let txs = seen.lock().clone();
    assert_eq!(txs.len(), 5);
    for w in txs.windows(2) {
        assert!(w[1].commit_number > w[0].commit_number);
        // Transactions in the same millisecond share a commitTimestamp (as in Salesforce);
        // commitNumber orders them.
        assert!(w[1].commit_timestamp >= w[0].commit_timestamp);
        assert_ne!(w[1].transaction_key, w[0].transaction_key);
    }
    assert_eq!(txs[0].changes[0].change_type, ChangeKind::Create);
    assert_eq!(
        txs[0].change_origin,
        "com/salesforce/api/rest/66.0;client=sfsync"
    );
    assert!(txs[0].changes[0].values.contains_key("Name"));
    assert!(!txs[0].changes[0].values.contains_key("SystemModstamp"));
    assert!(!txs[0].changes[0].values.contains_key("IsDeleted"));
    assert!(!txs[0].changes[0]
        .values
        .contains_key("Revenue_Per_Employee__c"));
    assert!(!txs[0].changes[0].values.contains_key("BillingAddress"));
    assert_eq!(
        txs[1].changes[0].changed_fields,
        vec!["Phone", "LastModifiedDate"]
    );
    assert_eq!(txs[1].changes[0].old_values["Phone"], "1");
    assert_eq!(txs[2].changes[0].changed_fields, vec!["LastModifiedDate"]);
    let t = &txs[3];
    assert_eq!(t.changes.len(), 2);
    assert_eq!(t.changes[0].record_id, b);
    assert_eq!(t.changes[0].sequence_number, 1);
    assert_eq!(t.changes[1].sequence_number, 2);
    let u = &t.changes[1];
    assert_eq!(u.change_type, ChangeKind::Update);
    assert_eq!(u.changed_fields, vec!["Fax", "LastModifiedDate", "Phone"]);
    assert_eq!(u.nulled_fields, vec!["Phone"]);
    assert_eq!(u.old_values["Phone"], "2");
    assert_eq!(u.values["Fax"], "9");
    // CREATE then UPDATE in one transaction: one CREATE with final values.
    let r = org.execute(
        &ctx,
        vec![
            DmlOp::Upsert {
                object: "Account".into(),
                external_id_field: "External_Id__c".into(),
                external_id: "E1".into(),
                fields: fields(json!({"Name": "first"})),
            },
            DmlOp::Upsert {
                object: "Account".into(),
                external_id_field: "External_Id__c".into(),
                external_id: "E1".into(),
                fields: fields(json!({"Name": "second"})),
            },
        ],
        false,
    );
    assert!(matches!(r[0], Ok(DmlOutcome::Created(_))));
    assert!(matches!(r[1], Ok(DmlOutcome::Updated(_))));
    let last = seen.lock().last().unwrap().clone();
    assert_eq!(last.changes.len(), 1);
    assert_eq!(last.changes[0].change_type, ChangeKind::Create);
    assert_eq!(last.changes[0].values["Name"], "second");
}

#[test]
fn all_or_none_rolls_back() {
    let org = org();
    let seen = listen(&org);
    let ctx = ctx(&org);
    let r = org.execute(
        &ctx,
        vec![
            DmlOp::Insert {
                object: "Account".into(),
                fields: fields(json!({"Name": "ok"})),
            },
            DmlOp::Insert {
                object: "Account".into(),
                fields: fields(json!({})),
            },
        ],
        true,
    );
    let e0 = r[0].clone().unwrap_err();
    assert_eq!(e0[0].error_code, "ALL_OR_NONE_OPERATION_ROLLED_BACK");
    assert_eq!(
        e0[0].message,
        "Record rolled back because not all records were valid and the request was using AllOrNone header"
    );
    assert_eq!(
        r[1].clone().unwrap_err()[0].error_code,
        "REQUIRED_FIELD_MISSING"
    );
    assert!(seen.lock().is_empty());
    assert_eq!(
        org.query("SELECT COUNT() FROM Account", true)
            .unwrap()
            .total_size,
        0
    );
    // Without all_or_none the good one commits.
    let r = org.execute(
        &ctx,
        vec![
            DmlOp::Insert {
                object: "Account".into(),
                fields: fields(json!({"Name": "ok"})),
            },
            DmlOp::Insert {
                object: "Account".into(),
                fields: fields(json!({})),
            },
        ],
        false,
    );
    assert!(r[0].is_ok() && r[1].is_err());
    assert_eq!(seen.lock().len(), 1);
    assert_eq!(
        org.query("SELECT COUNT() FROM Account", false)
            .unwrap()
            .total_size,
        1
    );
}

#[test]
fn recycle_bin_undelete_and_hard_delete() {
    let org = org();
    let seen = listen(&org);
    let a = insert(&org, "Account", json!({"Name": "A", "External_Id__c": "K"})).unwrap();
    assert_eq!(
        one(&org, DmlOp::Delete { id: a.to_string() }).unwrap(),
        DmlOutcome::Deleted(a)
    );
    let e = org
        .retrieve("Account", a.as_str(), None, "66.0")
        .unwrap_err();
    assert_eq!(
        (e.status, e.error_code.as_str(), e.message.as_str()),
        (404, "ENTITY_IS_DELETED", "entity is deleted")
    );
    assert_eq!(
        update(&org, "Account", &a, json!({"Phone": "1"}))
            .unwrap_err()
            .error_code,
        "ENTITY_IS_DELETED"
    );
    assert_eq!(
        one(&org, DmlOp::Delete { id: a.to_string() })
            .unwrap_err()
            .error_code,
        "ENTITY_IS_DELETED"
    );
    assert_eq!(
        org.query("SELECT Id FROM Account", false)
            .unwrap()
            .total_size,
        0
    );
    let all = org
        .query(
            "SELECT Id, IsDeleted FROM Account WHERE IsDeleted = true",
            true,
        )
        .unwrap();
    assert_eq!(all.rows, vec![vec![json!(a.as_str()), json!(true)]]);
    // External id is free while in the recycle bin; undelete then conflicts.
    let b = insert(&org, "Account", json!({"Name": "B", "External_Id__c": "K"})).unwrap();
    assert_eq!(
        one(&org, DmlOp::Undelete { id: a.to_string() })
            .unwrap_err()
            .error_code,
        "DUPLICATE_VALUE"
    );
    one(&org, DmlOp::HardDelete { id: b.to_string() }).unwrap();
    assert_eq!(
        one(&org, DmlOp::Undelete { id: a.to_string() }).unwrap(),
        DmlOutcome::Undeleted(a)
    );
    let e = one(&org, DmlOp::Undelete { id: a.to_string() }).unwrap_err();
    assert_eq!(
        (e.error_code.as_str(), e.message.as_str()),
        ("UNDELETE_FAILED", "Entity is not in the recycle bin")
    );
    one(&org, DmlOp::Delete { id: a.to_string() }).unwrap();
    one(&org, DmlOp::HardDelete { id: a.to_string() }).unwrap();
    assert_eq!(
        org.retrieve("Account", a.as_str(), None, "66.0")
            .unwrap_err()
            .error_code,
        "NOT_FOUND"
    );
    assert_eq!(
        org.query("SELECT COUNT() FROM Account", true)
            .unwrap()
            .total_size,
        0
    );
    let kinds: Vec<ChangeKind> = seen
        .lock()
        .iter()
        .map(|t| t.changes[0].change_type)
        .collect();
    assert_eq!(
        kinds,
        vec![
            ChangeKind::Create,
            ChangeKind::Delete,
            ChangeKind::Create,
            ChangeKind::Undelete,
            ChangeKind::Delete
        ]
    );
    assert_eq!(
        org.stats()["objects"]["Account"],
        json!({"live": 0, "deleted": 0})
    );
}

#[test]
fn upsert_paths() {
    let org = org();
    let up = |v: &str, body: serde_json::Value| {
        one(
            &org,
            DmlOp::Upsert {
                object: "Account".into(),
                external_id_field: "external_id__c".into(),
                external_id: v.into(),
                fields: fields(body),
            },
        )
    };
    let id = match up("E-1", json!({"Name": "A", "External_Id__c": "ignored"})).unwrap() {
        DmlOutcome::Created(id) => id,
        o => panic!("{o:?}"),
    };
    let r = org.retrieve("Account", id.as_str(), None, "66.0").unwrap();
    assert_eq!(r["External_Id__c"], "E-1");
    assert_eq!(
        up("e-1", json!({"Name": "B", "External_Id__c": "other"})).unwrap(),
        DmlOutcome::Updated(id)
    );
    let r = org.retrieve("Account", id.as_str(), None, "66.0").unwrap();
    assert_eq!(
        (r["Name"].as_str(), r["External_Id__c"].as_str()),
        (Some("B"), Some("E-1"))
    );
    assert_eq!(
        org.find_by_external_id("Account", "External_Id__c", "E-1")
            .unwrap(),
        vec![id]
    );
    // Upsert by Id.
    let by_id = one(
        &org,
        DmlOp::Upsert {
            object: "Account".into(),
            external_id_field: "Id".into(),
            external_id: id.to_string(),
            fields: fields(json!({"Phone": "5"})),
        },
    );
    assert_eq!(by_id.unwrap(), DmlOutcome::Updated(id));
    let e = one(
        &org,
        DmlOp::Upsert {
            object: "Account".into(),
            external_id_field: "Nope__c".into(),
            external_id: "x".into(),
            fields: fields(json!({})),
        },
    )
    .unwrap_err();
    assert_eq!((e.status, e.error_code.as_str()), (404, "NOT_FOUND"));
    // Several matches on a non-unique external id → 300.
    org.add_field(
        "Account",
        sfsync_org::FieldDef::new("Legacy_Key__c", "Legacy Key", sfsync_org::FieldType::String)
            .external_id(false),
    )
    .unwrap();
    let a = insert(&org, "Account", json!({"Name": "x", "Legacy_Key__c": "L"})).unwrap();
    let b = insert(&org, "Account", json!({"Name": "y", "Legacy_Key__c": "l"})).unwrap();
    let e = one(
        &org,
        DmlOp::Upsert {
            object: "Account".into(),
            external_id_field: "Legacy_Key__c".into(),
            external_id: "L".into(),
            fields: fields(json!({})),
        },
    )
    .unwrap_err();
    assert_eq!(
        (e.status, e.error_code.as_str()),
        (300, "DUPLICATE_EXTERNAL_ID")
    );
    assert_eq!(
        e.message,
        "Multiple records found with the same external id"
    );
    assert_eq!(e.matched_ids, vec![a.to_string(), b.to_string()]);
}

#[test]
fn reset_keeps_users() {
    let org = org();
    insert(&org, "Account", json!({"Name": "A"})).unwrap();
    org.reset();
    assert_eq!(
        org.query("SELECT COUNT() FROM Account", true)
            .unwrap()
            .total_size,
        0
    );
    let users = org
        .query("SELECT Id, Username FROM User ORDER BY Username", false)
        .unwrap();
    assert_eq!(users.total_size, 2);
    assert!(users.ids.contains(&org.admin_user_id()));
}
