//! The REST surface over HTTPS against a real emulator: discovery, limits, describe, record
//! CRUD, upsert, SOQL paging, replication helpers, and every error path a client meets.

mod rest_common;

use reqwest::Method;
use rest_common::{encode, Emu, V};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_limits_and_the_limit_header() {
    let emu = Emu::start().await;
    // The version list needs no session.
    let r = emu
        .raw(Method::GET, "/services/data", None, &[], None)
        .await;
    assert_eq!(r.status, 200);
    let versions = r.body.as_array().unwrap();
    assert_eq!(versions.len(), 17);
    assert_eq!(versions[0]["version"], "50.0");
    let last = versions.last().unwrap();
    assert_eq!(last["url"], "/services/data/v66.0");
    assert_eq!(last["label"], "Spring '26");
    // Trailing slash accepted.
    let r = emu
        .raw(Method::GET, "/services/data/", None, &[], None)
        .await;
    assert_eq!(r.status, 200);

    let r = emu.get(V).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["sobjects"], "/services/data/v66.0/sobjects");
    assert_eq!(r.body["query"], "/services/data/v66.0/query");
    assert!(r.body["composite"].is_string());
    let before = r.api_used();

    let r = emu.get(&format!("{V}/limits/")).await;
    assert_eq!(r.status, 200);
    assert!(r.body["DailyApiRequests"]["Max"].as_u64().unwrap() > 0);
    assert!(r.body["DailyApiRequests"]["Remaining"].is_u64());
    assert_eq!(r.api_used(), before + 1, "every call is counted");

    let r = emu.get("/services/data/v49.0/limits").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "NOT_FOUND");
    let r = emu.get("/services/data/v66.0/no-such-resource").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_global_basic_and_object() {
    let emu = Emu::start().await;
    let r = emu.get(&format!("{V}/sobjects")).await;
    assert_eq!(r.status, 200);
    let names: Vec<&str> = r.body["sobjects"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    assert!(
        names.contains(&"Account") && names.contains(&"Contact"),
        "{names:?}"
    );

    let r = emu.get(&format!("{V}/sobjects/account")).await;
    assert_eq!(r.status, 200, "object names are case-insensitive");
    assert_eq!(r.body["objectDescribe"]["name"], "Account");

    let r = emu.get(&format!("{V}/sobjects/Account/describe/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["name"], "Account");
    assert_eq!(r.body["keyPrefix"], "001");
    let fields = r.body["fields"].as_array().unwrap();
    assert!(fields
        .iter()
        .any(|f| f["name"] == "External_Id__c" && f["externalId"] == true));

    for path in ["No_Such__c", "No_Such__c/describe"] {
        let r = emu.get(&format!("{V}/sobjects/{path}")).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.error_code(), "NOT_FOUND");
        assert!(r.body[0]["fields"].is_array());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_crud_and_the_recycle_bin() {
    let emu = Emu::start().await;
    let r = emu
        .post(
            &format!("{V}/sobjects/Account"),
            json!({"Name": "Acme", "Phone": "555-0100"}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["success"], true);
    assert_eq!(r.body["errors"], json!([]));
    let id = r.body["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("001") && id.len() == 18, "{id}");

    let r = emu.get(&format!("{V}/sobjects/Account/{id}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["attributes"]["type"], "Account");
    assert_eq!(
        r.body["attributes"]["url"],
        format!("{V}/sobjects/Account/{id}")
    );
    assert_eq!(r.body["Name"], "Acme");
    assert_eq!(r.body["Id"], id.as_str());

    let r = emu
        .get(&format!("{V}/sobjects/Account/{id}?fields=Name,Phone"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["Phone"], "555-0100");
    assert!(
        r.body.get("Description").is_none(),
        "only the asked fields: {:?}",
        r.body
    );

    let r = emu
        .patch(
            &format!("{V}/sobjects/Account/{id}"),
            json!({"Name": "Acme Corp"}),
        )
        .await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_null());
    let r = emu.get(&format!("{V}/sobjects/Account/{id}")).await;
    assert_eq!(r.body["Name"], "Acme Corp");

    // A Contact id under /Account is not found; so is a value that is not an id.
    let r = emu
        .get(&format!("{V}/sobjects/Account/003000000000001AAA"))
        .await;
    assert_eq!(r.status, 404);
    let r = emu.get(&format!("{V}/sobjects/Account/not-an-id")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "NOT_FOUND");

    let r = emu.delete(&format!("{V}/sobjects/Account/{id}")).await;
    assert_eq!(r.status, 204);
    let r = emu.get(&format!("{V}/sobjects/Account/{id}")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "ENTITY_IS_DELETED");
    let r = emu
        .patch(&format!("{V}/sobjects/Account/{id}"), json!({"Name": "x"}))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "ENTITY_IS_DELETED");

    let soql = format!("SELECT Id, IsDeleted FROM Account WHERE Id = '{id}'");
    let r = emu.query(&soql).await;
    assert_eq!(r.body["totalSize"], 0);
    let r = emu.query_all(&soql).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["totalSize"], 1);
    assert_eq!(r.body["records"][0]["IsDeleted"], true);
    assert_eq!(r.body["records"][0]["attributes"]["type"], "Account");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_salesforce_errors() {
    let emu = Emu::start().await;
    let token = emu.token.clone();
    let path = format!("{V}/sobjects/Account");
    let r = emu
        .raw(
            Method::POST,
            &path,
            Some(&token),
            &[],
            Some(b"{\"Name\": ".to_vec()),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "JSON_PARSER_ERROR");
    assert!(
        r.message().contains("line 1"),
        "serde's position: {}",
        r.message()
    );
    let r = emu
        .raw(
            Method::POST,
            &path,
            Some(&token),
            &[],
            Some(b"[1,2]".to_vec()),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "JSON_PARSER_ERROR");

    let r = emu
        .post(&format!("{V}/sobjects/Nope__c"), json!({"Name": "x"}))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "NOT_FOUND");

    let r = emu.post(&path, json!({"Name": "x", "Bogus__c": 1})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "INVALID_FIELD");

    let r = emu.post(&path, json!({"Phone": "1"})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "REQUIRED_FIELD_MISSING");
    assert_eq!(r.body[0]["fields"], json!(["Name"]));

    let r = emu.query("SELECT Id FROM Account WHERE").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "MALFORMED_QUERY");
    assert!(!r.message().is_empty());
    let r = emu.query("SELECT NoSuchField__c FROM Account").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "INVALID_FIELD");
    let r = emu.query("SELECT Id FROM NoSuchObject__c").await;
    assert_eq!(r.status, 400);
    let r = emu.get(&format!("{V}/query")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "MALFORMED_QUERY");

    let r = emu
        .call(
            Method::PUT,
            &format!("{V}/sobjects/Account"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.error_code(), "METHOD_NOT_ALLOWED");

    // Trailing slashes everywhere.
    let r = emu.get(&format!("{V}/sobjects/Account/describe/")).await;
    assert_eq!(r.status, 200);
    let r = emu
        .get(&format!(
            "{V}/query/?q={}",
            encode("SELECT Id FROM Account")
        ))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_expired_tokens_are_invalid_session() {
    let emu = Emu::start().await;
    let path = format!("{V}/sobjects/Account/describe");
    for token in [None, Some("00Dxx!bogus")] {
        let r = emu.raw(Method::GET, &path, token, &[], None).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.error_code(), "INVALID_SESSION_ID");
        assert_eq!(r.message(), "Session expired or invalid");
    }
    let r = emu.get(&path).await;
    assert_eq!(r.status, 200);
    let r = emu.admin(Method::POST, "/admin/expire-tokens", None).await;
    assert_eq!(r.status, 200);
    assert!(r.body["expired"].as_u64().unwrap() >= 1);
    let r = emu.get(&path).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "INVALID_SESSION_ID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_by_external_id() {
    let emu = Emu::start().await;
    let url = format!("{V}/sobjects/Account/External_Id__c/EXT-1");
    let r = emu.patch(&url, json!({"Name": "Ext One"})).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["created"], true);
    assert_eq!(r.body["success"], true);
    let id = r.body["id"].as_str().unwrap().to_string();

    let r = emu.patch(&url, json!({"Name": "Ext One v2"})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["created"], false);
    assert_eq!(r.body["id"], id.as_str());

    let r = emu.get(&url).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["Name"], "Ext One v2");
    assert_eq!(r.body["External_Id__c"], "EXT-1");

    // updateOnly never inserts.
    let r = emu
        .patch(
            &format!("{V}/sobjects/Account/External_Id__c/EXT-404?updateOnly=true"),
            json!({"Name": "n"}),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "NOT_FOUND");
    let r = emu
        .patch(
            &format!("{url}?updateOnly=true"),
            json!({"Name": "Ext One v3"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["created"], false);

    // Not an external id field / no such field.
    for field in ["Name", "No_Such__c"] {
        let r = emu
            .patch(
                &format!("{V}/sobjects/Account/{field}/x"),
                json!({"Phone": "1"}),
            )
            .await;
        assert_eq!(r.status, 404, "{field}");
        assert_eq!(r.error_code(), "NOT_FOUND");
        assert!(r.message().contains(field));
    }
    let r = emu
        .get(&format!("{V}/sobjects/Account/External_Id__c/nothing"))
        .await;
    assert_eq!(r.status, 404);

    // A non-unique external id matching two records answers 300 with both URLs.
    let field = json!({"name": "Legacy_Key__c", "label": "Legacy Key", "type": "string",
                       "length": 40, "external_id": true, "custom": true});
    let r = emu
        .admin(Method::POST, "/admin/objects/Account/fields", Some(field))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    for name in ["Twin A", "Twin B"] {
        let r = emu
            .post(
                &format!("{V}/sobjects/Account"),
                json!({"Name": name, "Legacy_Key__c": "K1"}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let r = emu
        .patch(
            &format!("{V}/sobjects/Account/Legacy_Key__c/K1"),
            json!({"Phone": "2"}),
        )
        .await;
    assert_eq!(r.status, 300, "{:?}", r.body);
    let urls = r.body.as_array().unwrap();
    assert_eq!(urls.len(), 2);
    assert!(urls[0]
        .as_str()
        .unwrap()
        .starts_with(&format!("{V}/sobjects/Account/001")));
    let r = emu
        .get(&format!("{V}/sobjects/Account/Legacy_Key__c/K1"))
        .await;
    assert_eq!(r.status, 300);

    // Delete by external id.
    let r = emu.delete(&url).await;
    assert_eq!(r.status, 204);
    let r = emu.get(&format!("{V}/sobjects/Account/{id}")).await;
    assert_eq!(r.error_code(), "ENTITY_IS_DELETED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_paging_with_batch_size_and_locators() {
    let emu = Emu::start().await;
    let r = emu
        .admin(
            Method::POST,
            "/admin/seed",
            Some(json!({"objects": {"Account": 450}, "seed": 7})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["created"]["Account"], 450);
    let total = emu.count("SELECT COUNT() FROM Account").await;
    assert_eq!(total, 450);
    let r = emu.query("SELECT COUNT() FROM Account").await;
    assert_eq!(r.body["done"], true);
    assert_eq!(r.body["records"], json!([]));

    let token = emu.token.clone();
    let first = format!(
        "{V}/query?q={}",
        encode("SELECT Id, Name FROM Account ORDER BY Id")
    );
    let opts = [("Sforce-Query-Options", "batchSize=200")];
    let mut r = emu
        .raw(Method::GET, &first, Some(&token), &opts, None)
        .await;
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["totalSize"], 450);
        pages += 1;
        for rec in r.body["records"].as_array().unwrap() {
            ids.push(rec["Id"].as_str().unwrap().to_string());
        }
        if r.body["done"] == true {
            assert!(r.body.get("nextRecordsUrl").is_none());
            break;
        }
        let next = r.body["nextRecordsUrl"].as_str().unwrap().to_string();
        assert!(next.starts_with(&format!("{V}/query/01g")), "{next}");
        r = emu.get(&next).await;
    }
    assert_eq!(pages, 3);
    assert_eq!(ids.len(), 450);
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 450, "no row twice");

    // A batch size below 200 is raised to 200; default page is 2000.
    let opts = [("Sforce-Query-Options", "batchSize=10")];
    let r = emu
        .raw(Method::GET, &first, Some(&token), &opts, None)
        .await;
    assert_eq!(r.body["records"].as_array().unwrap().len(), 200);
    let r = emu.get(&first).await;
    assert_eq!(r.body["records"].as_array().unwrap().len(), 450);
    assert_eq!(r.body["done"], true);

    // queryAll pages through its own resource.
    let all = format!("{V}/queryAll?q={}", encode("SELECT Id FROM Account"));
    let r = emu
        .raw(
            Method::GET,
            &all,
            Some(&token),
            &[("Sforce-Query-Options", "batchSize=300")],
            None,
        )
        .await;
    let next = r.body["nextRecordsUrl"].as_str().unwrap().to_string();
    assert!(next.starts_with(&format!("{V}/queryAll/")));
    let r = emu.get(&next).await;
    assert_eq!(r.body["records"].as_array().unwrap().len(), 150);
    assert_eq!(r.body["done"], true);

    for bad in ["01gXXXXXXXXXXXXXXX-200", "garbage", "01g-abc"] {
        let r = emu.get(&format!("{V}/query/{bad}")).await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.error_code(), "INVALID_QUERY_LOCATOR");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_exhaustion_and_injected_faults() {
    let emu = Emu::start().await;
    let r = emu.get(&format!("{V}/limits")).await;
    let used = r.api_used();
    let r = emu
        .admin(
            Method::PUT,
            "/admin/limits",
            Some(json!({"daily_api_requests": used + 2})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(emu.get(&format!("{V}/limits")).await.status, 200);
    assert_eq!(emu.get(&format!("{V}/limits")).await.status, 200);
    let r = emu.get(&format!("{V}/limits")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "REQUEST_LIMIT_EXCEEDED");
    assert_eq!(r.message(), "TotalRequests Limit exceeded.");
    let r = emu.admin(Method::GET, "/admin/stats", None).await;
    assert!(r.body["refused_requests"].as_u64().unwrap() >= 1);
    let r = emu
        .admin(
            Method::PUT,
            "/admin/limits",
            Some(json!({"daily_api_requests": 1_000_000})),
        )
        .await;
    assert_eq!(r.body["daily_api_requests"], 1_000_000);

    let faults = json!({"rules": [{"path_contains": "/query", "kind": "SERVER_UNAVAILABLE",
                                  "rate": 1.0, "max_count": 1}]});
    let r = emu.admin(Method::PUT, "/admin/faults", Some(faults)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = emu.query("SELECT Id FROM Account").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "SERVER_UNAVAILABLE");
    let r = emu.query("SELECT Id FROM Account").await;
    assert_eq!(r.status, 200, "max_count reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updated_and_deleted_replication_helpers() {
    let emu = Emu::start().await;
    let start = chrono::Utc::now() - chrono::Duration::minutes(5);
    let kept = emu.create_account("Kept").await;
    let gone = emu.create_account("Gone").await;
    assert_eq!(
        emu.delete(&format!("{V}/sobjects/Account/{gone}"))
            .await
            .status,
        204
    );
    let end = chrono::Utc::now() + chrono::Duration::minutes(5);
    let window = format!(
        "start={}&end={}",
        encode(&start.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()),
        encode(&end.format("%Y-%m-%dT%H:%M:%S+00:00").to_string())
    );
    let r = emu
        .get(&format!("{V}/sobjects/Account/updated?{window}"))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let ids: Vec<&str> = r.body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(ids.contains(&kept.as_str()));
    assert!(r.body["latestDateCovered"].is_string());

    let r = emu
        .get(&format!("{V}/sobjects/Account/deleted?{window}"))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let deleted = r.body["deletedRecords"].as_array().unwrap();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["id"], gone.as_str());
    assert!(deleted[0]["deletedDate"].is_string());

    let r = emu
        .get(&format!("{V}/sobjects/Account/updated?start=yesterday"))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "INVALID_REPLICATION_DATE");
}
