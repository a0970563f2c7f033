//! sObject Collections, Composite Batch and Composite over HTTPS against a real emulator:
//! per-record results in input order, allOrNone rollback, references, haltOnError, the limits
//! on record and sub-request counts, and one API request per composite call.

mod rest_common;

use reqwest::Method;
use rest_common::{Emu, V};
use serde_json::{json, Value};

fn account(name: Option<&str>) -> Value {
    match name {
        Some(n) => json!({"attributes": {"type": "Account"}, "Name": n}),
        None => json!({"attributes": {"type": "Account"}, "Phone": "1"}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_create_update_retrieve_delete() {
    let emu = Emu::start().await;
    let url = format!("{V}/composite/sobjects");
    let r = emu
        .post(&url, json!({"allOrNone": false, "records": [account(Some("A")), account(None), account(Some("B"))]}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let res = r.body.as_array().unwrap();
    assert_eq!(res.len(), 3);
    assert_eq!(res[0]["success"], true);
    assert_eq!(res[1]["success"], false);
    assert_eq!(res[1]["errors"][0]["statusCode"], "REQUIRED_FIELD_MISSING");
    assert_eq!(res[1]["errors"][0]["fields"], json!(["Name"]));
    assert_eq!(res[2]["success"], true);
    let a = res[0]["id"].as_str().unwrap().to_string();
    let b = res[2]["id"].as_str().unwrap().to_string();
    assert_eq!(emu.count("SELECT COUNT() FROM Account").await, 2);

    // Record-level problems found before running.
    let r = emu
        .post(&url, json!({"records": [{"Name": "no type"}, {"attributes": {"type": "Account"}, "Id": a, "Name": "x"}]}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body[0]["errors"][0]["statusCode"], "INVALID_TYPE");
    assert_eq!(
        r.body[1]["errors"][0]["statusCode"],
        "INVALID_FIELD_FOR_INSERT_UPDATE"
    );

    let r = emu
        .patch(
            &url,
            json!({"records": [
                {"attributes": {"type": "Account"}, "id": a, "Name": "A2"},
                {"attributes": {"type": "Account"}, "Name": "no id"},
                {"attributes": {"type": "Account"}, "id": b, "Bogus__c": 1}
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body[0]["success"], true);
    assert_eq!(r.body[1]["errors"][0]["statusCode"], "MISSING_ARGUMENT");
    assert_eq!(r.body[2]["errors"][0]["statusCode"], "INVALID_FIELD");

    let missing = "001000000000999AAA";
    let r = emu
        .get(&format!(
            "{url}/Account?ids={a},{missing},{b}&fields=Id,Name"
        ))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body[0]["Name"], "A2");
    assert_eq!(r.body[0]["attributes"]["type"], "Account");
    assert!(r.body[1].is_null());
    assert_eq!(r.body[2]["Name"], "B");
    let r = emu
        .post(
            &format!("{url}/Account"),
            json!({"ids": [b], "fields": ["Name"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body[0]["Name"], "B");
    let r = emu.get(&format!("{url}/Nope__c?ids={a}")).await;
    assert_eq!(r.status, 404);

    let r = emu
        .delete(&format!("{url}?ids={a},{missing}&allOrNone=false"))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body[0]["success"], true);
    assert_eq!(r.body[0]["id"], a.as_str());
    assert_eq!(r.body[1]["success"], false);
    assert_eq!(r.body[1]["id"], missing);
    assert_eq!(emu.count("SELECT COUNT() FROM Account").await, 1);

    // Limits and malformed bodies.
    let many: Vec<Value> = (0..201).map(|i| account(Some(&format!("n{i}")))).collect();
    let r = emu.post(&url, json!({"records": many})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "EXCEEDED_ID_LIMIT");
    let token = emu.token.clone();
    let r = emu
        .raw(Method::POST, &url, Some(&token), &[], Some(b"{".to_vec()))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "JSON_PARSER_ERROR");
    let r = emu
        .post(&url, json!({"allOrNone": "yes", "records": []}))
        .await;
    assert_eq!(r.error_code(), "JSON_PARSER_ERROR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_all_or_none_rolls_back_everything() {
    let emu = Emu::start().await;
    let url = format!("{V}/composite/sobjects");
    let r = emu
        .post(&url, json!({"allOrNone": true, "records": [account(Some("A")), account(None), account(Some("C"))]}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    for i in [0, 2] {
        assert_eq!(r.body[i]["success"], false);
        assert_eq!(
            r.body[i]["errors"][0]["statusCode"],
            "ALL_OR_NONE_OPERATION_ROLLED_BACK"
        );
    }
    assert_eq!(
        r.body[1]["errors"][0]["statusCode"],
        "REQUIRED_FIELD_MISSING"
    );
    assert_eq!(emu.count("SELECT COUNT() FROM Account").await, 0);

    // A record rejected before running also stops the others.
    let r = emu
        .post(
            &url,
            json!({"allOrNone": true, "records": [account(Some("A")), {"Name": "untyped"}]}),
        )
        .await;
    assert_eq!(
        r.body[0]["errors"][0]["statusCode"],
        "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    );
    assert_eq!(emu.count("SELECT COUNT() FROM Account").await, 0);

    let r = emu
        .post(
            &url,
            json!({"allOrNone": true, "records": [account(Some("A")), account(Some("B"))]}),
        )
        .await;
    assert!(r
        .body
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["success"] == true));
    assert_eq!(emu.count("SELECT COUNT() FROM Account").await, 2);

    // 200 wide records (about 3 MB, above axum's default body limit) in one call.
    let long = "x".repeat(15_000);
    let records: Vec<Value> = (0..200)
        .map(|i| json!({"attributes": {"type": "Account"}, "Name": format!("Wide {i}"), "Description": long}))
        .collect();
    let r = emu
        .post(&url, json!({"allOrNone": true, "records": records}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body.as_array().unwrap().len(), 200);
    assert_eq!(emu.count("SELECT COUNT() FROM Account").await, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_upsert_reports_created() {
    let emu = Emu::start().await;
    let url = format!("{V}/composite/sobjects/Account/External_Id__c");
    let body = json!({"allOrNone": false, "records": [
        {"attributes": {"type": "Account"}, "External_Id__c": "E1", "Name": "One"},
        {"attributes": {"type": "Account"}, "External_Id__c": "E2", "Name": "Two"},
        {"attributes": {"type": "Account"}, "Name": "no key"}
    ]});
    let r = emu.patch(&url, body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body[0]["created"], true);
    assert_eq!(r.body[1]["created"], true);
    assert_eq!(r.body[2]["success"], false);
    let r = emu
        .patch(&url, json!({"records": [{"attributes": {"type": "Account"}, "External_Id__c": "E1", "Name": "One v2"}]}))
        .await;
    assert_eq!(r.body[0]["created"], false);
    assert_eq!(r.body[0]["success"], true);
    let r = emu
        .get(&format!("{V}/sobjects/Account/External_Id__c/E1"))
        .await;
    assert_eq!(r.body["Name"], "One v2");
    let r = emu
        .patch(
            &format!("{V}/composite/sobjects/Account/Name"),
            json!({"records": []}),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_runs_subrequests_and_halts_on_error() {
    let emu = Emu::start().await;
    let url = format!("{V}/composite/batch");
    let requests = json!([
        {"method": "POST", "url": "v66.0/sobjects/Account", "richInput": {"Name": "Batch A"}},
        {"method": "GET", "url": "v66.0/sobjects/Nope__c/describe"},
        {"method": "GET", "url": "/services/data/v66.0/limits"}
    ]);
    let r = emu
        .post(
            &url,
            json!({"haltOnError": false, "batchRequests": requests}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["hasErrors"], true);
    let results = r.body["results"].as_array().unwrap();
    assert_eq!(results[0]["statusCode"], 201);
    assert!(results[0]["result"]["id"]
        .as_str()
        .unwrap()
        .starts_with("001"));
    assert_eq!(results[1]["statusCode"], 404);
    assert_eq!(results[1]["result"][0]["errorCode"], "NOT_FOUND");
    assert_eq!(results[2]["statusCode"], 200);
    assert!(results[2]["result"]["DailyApiRequests"].is_object());

    let r = emu
        .post(
            &url,
            json!({"haltOnError": true, "batchRequests": requests}),
        )
        .await;
    let results = r.body["results"].as_array().unwrap();
    assert_eq!(results[1]["statusCode"], 404);
    assert_eq!(results[2]["statusCode"], 412);
    assert_eq!(
        results[2]["result"][0]["errorCode"],
        "BATCH_PROCESSING_HALTED"
    );

    let ok = json!([{"method": "GET", "url": "v66.0/limits"}]);
    let r = emu.post(&url, json!({"batchRequests": ok})).await;
    assert_eq!(r.body["hasErrors"], false);

    let many: Vec<Value> = (0..26)
        .map(|_| json!({"method": "GET", "url": "v66.0/limits"}))
        .collect();
    let r = emu.post(&url, json!({"batchRequests": many})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "LIMIT_EXCEEDED");
    let r = emu
        .post(&url, json!({"batchRequests": [{"url": "v66.0/limits"}]}))
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.message().contains("batchRequests[0].method"),
        "{}",
        r.message()
    );
    let nested = json!([{"method": "POST", "url": "v66.0/composite/batch", "richInput": {"batchRequests": []}}]);
    let r = emu.post(&url, json!({"batchRequests": nested})).await;
    assert_eq!(r.body["results"][0]["statusCode"], 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_references_and_one_api_call() {
    let emu = Emu::start().await;
    let url = format!("{V}/composite");
    let before = emu.get(&format!("{V}/limits")).await.api_used();
    let body = json!({"allOrNone": false, "compositeRequest": [
        {"method": "POST", "url": format!("{V}/sobjects/Account"), "referenceId": "NewAccount",
         "body": {"Name": "Composite Co"}},
        {"method": "POST", "url": format!("{V}/sobjects/Contact"), "referenceId": "NewContact",
         "body": {"LastName": "Smith", "AccountId": "@{NewAccount.id}"}},
        {"method": "GET", "url": format!("{V}/sobjects/Account/@{{NewAccount.id}}?fields=Name"),
         "referenceId": "ReadBack"},
        {"method": "GET", "url": format!("{V}/query?q=SELECT+Id+FROM+Contact+WHERE+AccountId+=+'@{{NewAccount.id}}'"),
         "referenceId": "Q"},
        {"method": "PATCH", "url": format!("{V}/sobjects/Contact/@{{Q.records[0].Id}}"),
         "referenceId": "Rename", "body": {"LastName": "Jones"}}
    ]});
    let r = emu.post(&url, body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let res = r.body["compositeResponse"].as_array().unwrap();
    assert_eq!(res.len(), 5);
    assert_eq!(res[0]["httpStatusCode"], 201);
    assert_eq!(res[0]["referenceId"], "NewAccount");
    let account_id = res[0]["body"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        res[0]["httpHeaders"]["Location"],
        format!("{V}/sobjects/Account/{account_id}")
    );
    assert_eq!(res[1]["httpStatusCode"], 201, "{:?}", res[1]);
    assert_eq!(res[2]["httpStatusCode"], 200);
    assert_eq!(res[2]["body"]["Name"], "Composite Co");
    assert_eq!(res[3]["body"]["totalSize"], 1);
    assert_eq!(res[4]["httpStatusCode"], 204);
    assert!(res[4]["body"].is_null());
    let r = emu.query("SELECT LastName FROM Contact").await;
    assert_eq!(r.body["records"][0]["LastName"], "Jones");

    // The composite call (5 sub-requests) counted once; the query above once more.
    let after = r.api_used();
    assert_eq!(after, before + 2, "before {before}, after {after}");

    // A reference to a failed sub-request fails that one too.
    let body = json!({"compositeRequest": [
        {"method": "POST", "url": format!("{V}/sobjects/Account"), "referenceId": "Bad", "body": {"Phone": "1"}},
        {"method": "GET", "url": format!("{V}/sobjects/Account/@{{Bad.id}}"), "referenceId": "Dep"},
        {"method": "GET", "url": format!("{V}/limits"), "referenceId": "Independent"}
    ]});
    let r = emu.post(&url, body).await;
    let res = r.body["compositeResponse"].as_array().unwrap();
    assert_eq!(res[0]["httpStatusCode"], 400);
    assert_eq!(res[0]["body"][0]["errorCode"], "REQUIRED_FIELD_MISSING");
    assert_eq!(res[1]["httpStatusCode"], 400);
    assert_eq!(res[1]["body"][0]["errorCode"], "PROCESSING_HALTED");
    assert_eq!(res[2]["httpStatusCode"], 200);

    // Structural errors.
    let dup = json!({"compositeRequest": [
        {"method": "GET", "url": format!("{V}/limits"), "referenceId": "X"},
        {"method": "GET", "url": format!("{V}/limits"), "referenceId": "X"}
    ]});
    let r = emu.post(&url, dup).await;
    assert_eq!(r.status, 400);
    let many: Vec<Value> = (0..26)
        .map(|i| json!({"method": "GET", "url": format!("{V}/limits"), "referenceId": format!("r{i}")}))
        .collect();
    let r = emu.post(&url, json!({"compositeRequest": many})).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["compositeResponse"][0]["body"][0]["errorCode"],
        "LIMIT_EXCEEDED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_all_or_none_is_one_transaction() {
    let emu = Emu::start().await;
    let url = format!("{V}/composite");
    let keep = emu.create_account("Existing").await;
    let body = json!({"allOrNone": true, "compositeRequest": [
        {"method": "POST", "url": format!("{V}/sobjects/Account"), "referenceId": "A", "body": {"Name": "New"}},
        {"method": "PATCH", "url": format!("{V}/sobjects/Account/{keep}"), "referenceId": "U", "body": {"Name": "Renamed"}},
        {"method": "POST", "url": format!("{V}/sobjects/Account"), "referenceId": "Bad", "body": {"Phone": "1"}}
    ]});
    let r = emu.post(&url, body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let res = r.body["compositeResponse"].as_array().unwrap();
    assert_eq!(res[0]["httpStatusCode"], 400);
    assert_eq!(res[0]["body"][0]["errorCode"], "PROCESSING_HALTED");
    assert_eq!(res[1]["body"][0]["errorCode"], "PROCESSING_HALTED");
    assert_eq!(res[2]["body"][0]["errorCode"], "REQUIRED_FIELD_MISSING");
    assert_eq!(
        emu.count("SELECT COUNT() FROM Account").await,
        1,
        "nothing committed"
    );
    let r = emu.get(&format!("{V}/sobjects/Account/{keep}")).await;
    assert_eq!(r.body["Name"], "Existing", "the update was rolled back");

    // Sub-request errors found before running (malformed body) also stop everything.
    let body = json!({"allOrNone": true, "compositeRequest": [
        {"method": "POST", "url": format!("{V}/sobjects/Account"), "referenceId": "A", "body": {"Name": "New"}},
        {"method": "POST", "url": format!("{V}/sobjects/Nope__c"), "referenceId": "B", "body": {"Name": "x"}}
    ]});
    let r = emu.post(&url, body).await;
    let res = r.body["compositeResponse"].as_array().unwrap();
    assert_eq!(res[0]["body"][0]["errorCode"], "PROCESSING_HALTED");
    assert_eq!(res[1]["httpStatusCode"], 404);
    assert_eq!(emu.count("SELECT COUNT() FROM Account").await, 1);

    let body = json!({"allOrNone": true, "compositeRequest": [
        {"method": "POST", "url": format!("{V}/sobjects/Account"), "referenceId": "A", "body": {"Name": "New"}},
        {"method": "PATCH", "url": format!("{V}/sobjects/Account/External_Id__c/K9"), "referenceId": "Up", "body": {"Name": "Upserted"}},
        {"method": "DELETE", "url": format!("{V}/sobjects/Account/{keep}"), "referenceId": "D"}
    ]});
    let r = emu.post(&url, body).await;
    let res = r.body["compositeResponse"].as_array().unwrap();
    assert_eq!(res[0]["httpStatusCode"], 201);
    assert!(res[0]["httpHeaders"]["Location"].is_string());
    assert_eq!(res[1]["httpStatusCode"], 201);
    assert_eq!(res[1]["body"]["created"], true);
    assert_eq!(res[2]["httpStatusCode"], 204);
    assert_eq!(emu.count("SELECT COUNT() FROM Account").await, 2);
}
