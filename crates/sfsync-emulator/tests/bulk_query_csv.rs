//! `Org::query_csv` (the direct store → CSV path query jobs use) gives exactly the bytes of
//! rendering `Org::query`'s JSON rows with the Bulk CSV writer, for awkward data: nulls, quotes,
//! commas, line breaks, unicode, numbers, dates, formulas, compound names, parent relationship
//! paths (present, absent, deleted parent), recycle-bin rows (queryAll), hard deletes, WHERE,
//! ORDER BY, LIMIT, every delimiter and line ending, several chunks and threads.

use serde_json::{json, Value};
use sfsync_core::SfId;
use sfsync_emulator::bulk::csv_writer::render_results;
use sfsync_emulator::bulk::{ColumnDelimiter, LineEnding};
use sfsync_org::{
    ApiKind, CallContext, CsvQueryOptions, DmlOp, DmlOutcome, Org, OrgConfig, Schema,
};

fn ctx(org: &Org) -> CallContext {
    CallContext {
        user_id: org.admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: Some("test".into()),
    }
}

fn run(org: &Org, op: DmlOp) -> Option<SfId> {
    match org.execute(&ctx(org), vec![op], true).remove(0) {
        Ok(DmlOutcome::Created(id)) => Some(id),
        Ok(_) => None,
        Err(e) => panic!("{e:?}"),
    }
}

fn insert(org: &Org, object: &str, v: Value) -> SfId {
    let Value::Object(fields) = v else {
        panic!("not an object")
    };
    run(
        org,
        DmlOp::Insert {
            object: object.into(),
            fields,
        },
    )
    .expect("created")
}

fn fixture() -> Org {
    let org = Org::new(
        Schema::demo(),
        OrgConfig {
            org_id: SfId::from_parts("00D", 42),
            admin_username: "admin@sfsync.test".into(),
        },
    );
    org.seed(&ctx(&org), "Account", 120, 7).unwrap();
    let names = [
        "Plain",
        "Quote \"inside\"",
        "Comma, here",
        "Line\nbreak",
        "CR\r\nLF",
        "Tab\there",
        "Pipe|semi;caret^tick`",
        "Ünïcödé — 日本語 🚀",
        "\"\"",
        "2024-04-26T16:36:32.000+0000",
    ];
    let mut accounts = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut f = json!({"Name": name, "NumberOfEmployees": i as i64 * 1000 - 3});
        if i % 2 == 0 {
            f["AnnualRevenue"] = json!(1234.5 + i as f64 * 1e9);
            f["BillingCity"] = json!(format!("City \"{i}\", x"));
            f["Description"] = json!("multi\nline, \"quoted\" description");
        }
        if i % 3 == 0 {
            f["Industry"] = json!("Banking");
            f["Website"] = json!("https://example.com/a,b");
        }
        if i == 4 {
            f["AnnualRevenue"] = json!(0.1);
            f["NumberOfEmployees"] = json!(0);
        }
        accounts.push(insert(&org, "Account", f));
    }
    for (i, a) in accounts.iter().enumerate() {
        let mut f = json!({"LastName": format!("Last \"{i}\""), "Email": format!("c{i}@example.com"), "Birthdate": "1985-03-0".to_string() + &((i % 9) + 1).to_string()});
        if i % 2 == 1 {
            f["FirstName"] = json!("Fïrst, Name");
        }
        if i % 4 != 3 {
            f["AccountId"] = json!(a.as_str());
        }
        insert(&org, "Contact", f);
    }
    // Recycle bin, a deleted parent, a hard delete.
    run(
        &org,
        DmlOp::Delete {
            id: accounts[1].to_string(),
        },
    );
    run(
        &org,
        DmlOp::Delete {
            id: accounts[6].to_string(),
        },
    );
    run(
        &org,
        DmlOp::HardDelete {
            id: accounts[7].to_string(),
        },
    );
    org
}

const QUERIES: &[&str] = &[
    "SELECT Id, Name, Type, Industry, Phone, Website, AnnualRevenue, NumberOfEmployees, BillingStreet, BillingCity, BillingState, BillingPostalCode, BillingCountry, External_Id__c, CreatedDate, LastModifiedDate, SystemModstamp FROM Account",
    "SELECT Name, Id, IsDeleted, Description, Revenue_Per_Employee__c, OwnerId, Owner.Name, Parent.Name FROM Account ORDER BY Name DESC NULLS LAST",
    "SELECT Id, Name, FirstName, Full_Name__c, Birthdate, Account.Name, Account.Industry, Account.Owner.Name, AccountId FROM Contact ORDER BY Account.Name, LastName",
    "SELECT Name, AnnualRevenue FROM Account WHERE AnnualRevenue != null ORDER BY AnnualRevenue LIMIT 7",
    "SELECT Id, Name FROM Account WHERE Name LIKE '%e%' LIMIT 25",
    "SELECT Id, Name FROM Account ORDER BY Id LIMIT 3",
    "SELECT Id FROM Account WHERE Name = 'no such'",
    "SELECT FIELDS(STANDARD) FROM Contact",
    "SELECT COUNT(Id) FROM Account",
];

fn via_query_rows(org: &Org, soql: &str, all: bool, d: ColumnDelimiter, le: LineEnding) -> Vec<u8> {
    let r = org
        .query(soql, all)
        .unwrap_or_else(|e| panic!("{soql}: {e}"));
    // The renderer's gzip pre-compression does not change the bytes.
    let rendered = render_results(&r.columns, &r.rows, d, le, 2, false);
    let mut out = rendered.header.to_vec();
    for c in &rendered.chunks {
        out.extend_from_slice(&c.bytes);
    }
    assert_eq!(rendered.total_rows, r.rows.len());
    out
}

#[test]
fn query_csv_matches_rendering_query_rows() {
    let org = fixture();
    let formats = [
        (ColumnDelimiter::Comma, LineEnding::Lf),
        (ColumnDelimiter::Tab, LineEnding::Crlf),
        (ColumnDelimiter::Pipe, LineEnding::Lf),
        (ColumnDelimiter::Semicolon, LineEnding::Crlf),
        (ColumnDelimiter::Caret, LineEnding::Lf),
        (ColumnDelimiter::Backquote, LineEnding::Lf),
    ];
    for soql in QUERIES {
        for all in [false, true] {
            for (k, (d, le)) in formats.iter().enumerate() {
                let expected = via_query_rows(&org, soql, all, *d, *le);
                for (chunk_rows, threads) in [(10_000, 1), (7, 3), (1, 2), (13, 0)] {
                    if k > 1 && chunk_rows != 7 {
                        continue;
                    }
                    let opts = CsvQueryOptions {
                        delimiter: d.byte(),
                        crlf: *le == LineEnding::Crlf,
                        chunk_rows,
                        threads,
                    };
                    let got = org.query_csv(soql, all, &opts).unwrap();
                    let total: usize = got.chunk_row_counts().iter().sum();
                    assert_eq!(total, got.total_rows, "{soql}");
                    for (i, c) in got.chunks.iter().enumerate() {
                        assert_eq!(c.offsets[0], 0);
                        assert_eq!(*c.offsets.last().unwrap() as usize, c.bytes.len());
                        if i + 1 < got.chunks.len() {
                            assert_eq!(c.rows(), chunk_rows, "{soql}");
                        }
                    }
                    let bytes = got.to_bytes();
                    assert!(
                        bytes == expected,
                        "{soql} (queryAll {all}, {d:?}, {le:?}, {chunk_rows} rows/chunk, {threads} threads):\n--- query_csv\n{}\n--- query rows\n{}",
                        String::from_utf8_lossy(&bytes),
                        String::from_utf8_lossy(&expected)
                    );
                }
            }
        }
    }
    // The shape check agrees with the query.
    let shape = org.query_shape(QUERIES[2]).unwrap();
    let r = org.query(QUERIES[2], false).unwrap();
    assert_eq!(shape.columns, r.columns);
    assert_eq!(shape.object, "Contact");
    assert!(
        org.query_shape("SELECT COUNT() FROM Account")
            .unwrap()
            .is_count
    );
    assert_eq!(
        org.query_shape("SELECT Nope FROM Account")
            .unwrap_err()
            .error_code,
        "INVALID_FIELD"
    );
    assert_eq!(
        org.query_shape("SELECT Id FROM Nope")
            .unwrap_err()
            .error_code,
        "INVALID_TYPE"
    );
}

#[test]
fn query_all_returns_recycle_bin_rows() {
    let org = fixture();
    let opts = CsvQueryOptions::default();
    let live = org
        .query_csv("SELECT Id, IsDeleted FROM Account", false, &opts)
        .unwrap();
    let all = org
        .query_csv("SELECT Id, IsDeleted FROM Account", true, &opts)
        .unwrap();
    assert_eq!(all.total_rows, live.total_rows + 2);
    let text = String::from_utf8(all.to_bytes()).unwrap();
    assert_eq!(text.matches(",\"true\"\n").count(), 2);
}
