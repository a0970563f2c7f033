//! SOQL evaluation semantics against a small org.

mod common;

use common::*;
use serde_json::json;
use sfsync_core::SfId;
use sfsync_org::Org;

fn fixture() -> (Org, Vec<SfId>) {
    let org = org();
    let a1 = insert(&org, "Account", json!({"Name": "Acme Corp", "Industry": "Banking", "AnnualRevenue": 500, "BillingCity": "Paris"})).unwrap();
    let a2 = insert(&org, "Account", json!({"Name": "acme labs", "Industry": null, "AnnualRevenue": 100, "ParentId": a1.as_str()})).unwrap();
    let a3 = insert(
        &org,
        "Account",
        json!({"Name": "Globex", "Industry": "Energy", "AnnualRevenue": 300}),
    )
    .unwrap();
    let c1 = insert(&org, "Contact", json!({"FirstName": "Ada", "LastName": "Lovelace", "AccountId": a2.as_str(), "Birthdate": "1990-05-01"})).unwrap();
    let c2 = insert(
        &org,
        "Contact",
        json!({"LastName": "O'Brien", "Birthdate": "1980-01-15"}),
    )
    .unwrap();
    (org, vec![a1, a2, a3, c1, c2])
}

fn ids(org: &Org, q: &str) -> Vec<SfId> {
    org.query(q, false)
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .ids
}

#[test]
fn filters() {
    let (org, v) = fixture();
    let (a1, a2, a3) = (v[0], v[1], v[2]);
    assert_eq!(
        ids(&org, "SELECT Id FROM Account WHERE Name = 'ACME CORP'"),
        vec![a1]
    );
    assert_eq!(
        ids(&org, "select id from account where name like 'acme%'"),
        vec![a1, a2]
    );
    assert_eq!(
        ids(&org, "SELECT Id FROM Account WHERE Name LIKE '%_lob%'"),
        vec![a3]
    );
    assert_eq!(
        ids(&org, "SELECT Id FROM Account WHERE Industry = null"),
        vec![a2]
    );
    assert_eq!(
        ids(&org, "SELECT Id FROM Account WHERE Industry != null"),
        vec![a1, a3]
    );
    assert_eq!(
        ids(&org, "SELECT Id FROM Account WHERE Industry != 'Banking'"),
        vec![a2, a3]
    );
    assert_eq!(
        ids(
            &org,
            "SELECT Id FROM Account WHERE Industry IN ('banking', 'Energy')"
        ),
        vec![a1, a3]
    );
    assert_eq!(
        ids(
            &org,
            "SELECT Id FROM Account WHERE Industry NOT IN ('Banking')"
        ),
        vec![a2, a3]
    );
    assert_eq!(
        ids(
            &org,
            "SELECT Id FROM Account WHERE AnnualRevenue >= 300 AND NOT (Name = 'Globex')"
        ),
        vec![a1]
    );
    assert_eq!(
        ids(
            &org,
            "SELECT Id FROM Account WHERE AnnualRevenue < 200 OR Industry = 'Energy'"
        ),
        vec![a2, a3]
    );
    assert_eq!(
        ids(
            &org,
            &format!("SELECT Id FROM Account WHERE Id = '{}'", a2.short())
        ),
        vec![a2]
    );
    assert_eq!(
        ids(
            &org,
            &format!("SELECT Id FROM Account WHERE ParentId = '{a1}'")
        ),
        vec![a2]
    );
    assert_eq!(
        ids(
            &org,
            &format!(
                "SELECT Id FROM Account WHERE Id IN ('{}', '{}')",
                a1,
                a3.short()
            )
        ),
        vec![a1, a3]
    );
    assert_eq!(
        ids(
            &org,
            "SELECT Id FROM Account WHERE Parent.Name = 'Acme Corp'"
        ),
        vec![a2]
    );
    assert_eq!(
        ids(&org, "SELECT Id FROM Contact WHERE LastName = 'O\\'Brien'"),
        vec![v[4]]
    );
    assert_eq!(
        ids(&org, "SELECT Id FROM Contact WHERE Birthdate > 1985-01-01"),
        vec![v[3]]
    );
    assert_eq!(
        ids(
            &org,
            "SELECT Id FROM Contact WHERE Account.Parent.Name LIKE 'acme%'"
        ),
        vec![v[3]]
    );
    assert_eq!(
        ids(&org, "SELECT Id FROM Account WHERE CreatedDate = TODAY").len(),
        3
    );
    assert_eq!(
        ids(
            &org,
            "SELECT Id FROM Account WHERE CreatedDate = LAST_N_DAYS:2"
        )
        .len(),
        3
    );
    assert_eq!(
        ids(&org, "SELECT Id FROM Account WHERE CreatedDate < YESTERDAY").len(),
        0
    );
    for lit in [
        "2000-01-01T00:00:00Z",
        "2000-01-01T00:00:00.000+0000",
        "2000-01-01T00:00:00+00:00",
        "1999-12-31T19:00:00-05:00",
    ] {
        assert_eq!(
            ids(
                &org,
                &format!("SELECT Id FROM Account WHERE SystemModstamp > {lit}")
            )
            .len(),
            3,
            "{lit}"
        );
        assert_eq!(
            ids(
                &org,
                &format!("SELECT Id FROM Account WHERE CreatedDate < {lit}")
            )
            .len(),
            0,
            "{lit}"
        );
    }
}

#[test]
fn ordering_limit_offset_count() {
    let (org, v) = fixture();
    let (a1, a2, a3) = (v[0], v[1], v[2]);
    assert_eq!(
        ids(&org, "SELECT Id FROM Account ORDER BY Name"),
        vec![a1, a2, a3]
    );
    assert_eq!(
        ids(&org, "SELECT Id FROM Account ORDER BY AnnualRevenue DESC"),
        vec![a1, a3, a2]
    );
    assert_eq!(
        ids(&org, "SELECT Id FROM Account ORDER BY Industry"),
        vec![a2, a1, a3]
    );
    assert_eq!(
        ids(&org, "SELECT Id FROM Account ORDER BY Industry NULLS LAST"),
        vec![a1, a3, a2]
    );
    assert_eq!(
        ids(&org, "SELECT Id FROM Account ORDER BY Industry DESC"),
        vec![a3, a1, a2]
    );
    assert_eq!(
        ids(
            &org,
            "SELECT Id FROM Account ORDER BY Industry DESC NULLS FIRST"
        ),
        vec![a2, a3, a1]
    );
    assert_eq!(
        ids(
            &org,
            "SELECT Id FROM Account ORDER BY Name LIMIT 2 OFFSET 1"
        ),
        vec![a2, a3]
    );
    assert_eq!(
        ids(&org, "SELECT Id FROM Account ORDER BY Id DESC LIMIT 1"),
        vec![a3]
    );
    assert_eq!(ids(&org, "SELECT Id FROM Account LIMIT 1"), vec![a1]);
    let r = org.query("SELECT Id FROM Account LIMIT 2", false).unwrap();
    assert_eq!(r.total_size, 2);
    let c = org
        .query("SELECT COUNT() FROM Account WHERE Name LIKE 'acme%'", false)
        .unwrap();
    assert!(c.is_count);
    assert_eq!(c.total_size, 2);
    assert!(c.columns.is_empty());
    let c = org
        .query("SELECT COUNT(Industry) FROM Account", false)
        .unwrap();
    assert_eq!(c.rows, vec![vec![json!(2)]]);
}

#[test]
fn columns_and_record_json() {
    let (org, v) = fixture();
    let r = org
        .query("SELECT id, NAME, account.name, Account.Parent.Name, MailingAddress, Name FROM Contact ORDER BY LastName", false)
        .unwrap();
    assert_eq!(
        r.columns,
        vec![
            "Id",
            "Name",
            "Account.Name",
            "Account.Parent.Name",
            "MailingAddress",
            "Name"
        ]
    );
    assert_eq!(r.rows[0][1], "Ada Lovelace");
    assert_eq!(r.rows[0][2], "acme labs");
    assert_eq!(r.rows[0][3], "Acme Corp");
    assert_eq!(r.rows[1][2], json!(null));
    let rec = r.record_json(0, "66.0");
    assert_eq!(rec["attributes"]["type"], "Contact");
    assert_eq!(
        rec["attributes"]["url"],
        format!("/services/data/v66.0/sobjects/Contact/{}", v[3])
    );
    assert_eq!(rec["Account"]["attributes"]["type"], "Account");
    assert_eq!(
        rec["Account"]["attributes"]["url"],
        format!("/services/data/v66.0/sobjects/Account/{}", v[1])
    );
    assert_eq!(rec["Account"]["Name"], "acme labs");
    assert_eq!(rec["Account"]["Parent"]["Name"], "Acme Corp");
    assert_eq!(
        rec["Account"]["Parent"]["attributes"]["url"],
        format!("/services/data/v66.0/sobjects/Account/{}", v[0])
    );
    let rec = r.record_json(1, "66.0");
    assert_eq!(rec["Account"], json!(null));
    let r = org
        .query(
            "SELECT BillingAddress, Revenue_Per_Employee__c FROM Account WHERE Name = 'Acme Corp'",
            false,
        )
        .unwrap();
    assert_eq!(r.rows[0][0]["city"], "Paris");
    let r = org
        .query("SELECT FIELDS(ALL) FROM Account LIMIT 1", false)
        .unwrap();
    assert!(r.columns.contains(&"BillingAddress".to_string()));
}

#[test]
fn errors_name_fields_and_objects() {
    let (org, _) = fixture();
    let e = org.query("SELECT Foo FROM Account", false).unwrap_err();
    assert_eq!(e.error_code, "INVALID_FIELD");
    assert!(
        e.message
            .contains("No such column 'Foo' on entity 'Account'"),
        "{}",
        e.message
    );
    assert!(e.message.contains("line 1 column 8"), "{}", e.message);
    let e = org.query("SELECT Id FROM Foo", false).unwrap_err();
    assert_eq!(e.error_code, "INVALID_TYPE");
    assert!(e.message.contains("sObject type 'Foo' is not supported."));
    let e = org
        .query("SELECT Bogus.Name FROM Contact", false)
        .unwrap_err();
    assert_eq!(e.error_code, "INVALID_FIELD");
    assert!(e.message.contains("Didn't understand relationship 'Bogus'"));
    let e = org
        .query("SELECT Id FROM Account WHERE AnnualRevenue = 'x'", false)
        .unwrap_err();
    assert_eq!(e.error_code, "INVALID_QUERY_FILTER_OPERATOR");
    let e = org
        .query("SELECT Id FROM Account WHERE Id = 'nope'", false)
        .unwrap_err();
    assert!(e.message.contains("invalid ID field: nope"));
    let e = org
        .query(
            "SELECT Id FROM Account WHERE CreatedDate > 2024-01-01",
            false,
        )
        .unwrap_err();
    assert_eq!(e.error_code, "INVALID_QUERY_FILTER_OPERATOR");
    let e = org
        .query("SELECT Id FROM Account WHERE BillingAddress = null", false)
        .unwrap_err();
    assert_eq!(e.error_code, "INVALID_FIELD");
    let e = org.query("SELECT Id FORM Account", false).unwrap_err();
    assert_eq!(e.error_code, "MALFORMED_QUERY");
}

#[test]
fn deleted_rows_only_with_query_all() {
    let (org, v) = fixture();
    one(
        &org,
        sfsync_org::DmlOp::Delete {
            id: v[0].to_string(),
        },
    )
    .unwrap();
    assert_eq!(ids(&org, "SELECT Id FROM Account"), vec![v[1], v[2]]);
    let all = org
        .query("SELECT Id FROM Account WHERE IsDeleted = true", true)
        .unwrap();
    assert_eq!(all.ids, vec![v[0]]);
    // A child's relationship to a deleted parent reads as null.
    let r = org
        .query(
            "SELECT Parent.Name FROM Account WHERE Name = 'acme labs'",
            false,
        )
        .unwrap();
    assert_eq!(r.rows[0][0], json!(null));
}
