//! Bulk API 2.0 query jobs against the real emulator over HTTPS: lifecycle, paging with
//! locators to the literal `null`, stable pages, gzip, queryAll, refused queries, limits and the
//! API-version rule.

mod bulk_support;

use std::io::Read;
use std::time::Duration;

use bulk_support::{parse_csv, Env};
use serde_json::{json, Value};
use sfsync_emulator::bulk::BulkSettings;
use sfsync_emulator::LimitsConfig;

fn id_of(info: &Value) -> String {
    info["id"].as_str().expect("job id").to_string()
}

fn seed_accounts(env: &Env, n: usize) -> Vec<String> {
    let records = (0..n)
        .map(|i| {
            let mut r = json!({"Name": format!("Account {i:03}"), "NumberOfEmployees": i});
            if i % 5 == 0 {
                r["Description"] = json!(format!("line one\nline \"two\", with comma {i}"));
            }
            r
        })
        .collect();
    env.seed("Account", records)
}

async fn create_query(env: &Env, body: Value) -> Value {
    let r = env.post_json("/jobs/query", body).await;
    assert_eq!(r.status, 200, "create: {}", r.text());
    r.json()
}

#[tokio::test]
async fn results_page_with_locators_until_null() {
    let env = Env::start().await;
    seed_accounts(&env, 25);
    env.running.state.bulk.set_settings(BulkSettings {
        processing_delay: Duration::from_millis(300),
        ..BulkSettings::default()
    });
    let info = create_query(
        &env,
        json!({"operation": "query", "query": "SELECT Name, Id, NumberOfEmployees, Description, CreatedDate FROM Account ORDER BY Name"}),
    )
    .await;
    let id = id_of(&info);
    assert!(id.starts_with("750"));
    assert_eq!(info["state"], "UploadComplete");
    assert_eq!(info["object"], "Account");
    assert_eq!(info["operation"], "query");
    assert_eq!(info["jobType"], "V2Query");
    assert_eq!(info["apiVersion"], json!(66.0));
    assert_eq!(info["contentType"], "CSV");

    // Not complete yet → 412.
    let r = env.get(&format!("/jobs/query/{id}/results")).await;
    assert_eq!(r.status, 412);
    assert_eq!(r.error_code(), "JOB_NOT_COMPLETE");
    assert!(r.error_message().contains(&id));

    let done = env.wait_done("query", &id).await;
    assert_eq!(done["state"], "JobComplete");
    assert_eq!(done["numberRecordsProcessed"], 25);

    let mut locator: Option<String> = None;
    let mut all_rows = Vec::new();
    let mut pages = Vec::new();
    loop {
        let path = match &locator {
            None => format!("/jobs/query/{id}/results?maxRecords=10"),
            Some(l) => format!("/jobs/query/{id}/results?maxRecords=10&locator={l}"),
        };
        let r = env.get(&path).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type").as_deref(), Some("text/csv"));
        let n: usize = r
            .header("sforce-numberofrecords")
            .expect("count header")
            .parse()
            .unwrap();
        let next = r.header("sforce-locator").expect("locator header");
        let (header, rows) = parse_csv(&r.body, b',');
        assert_eq!(
            header,
            vec![
                "Name",
                "Id",
                "NumberOfEmployees",
                "Description",
                "CreatedDate"
            ]
        );
        assert_eq!(rows.len(), n);
        pages.push((path, r.body.clone()));
        all_rows.extend(rows);
        if next == "null" {
            break;
        }
        assert_ne!(next, "");
        locator = Some(next);
    }
    assert_eq!(pages.len(), 3);
    assert_eq!(all_rows.len(), 25);
    assert_eq!(all_rows[0][0], "Account 000");
    assert_eq!(all_rows[24][0], "Account 024");
    assert_eq!(all_rows[0][3], "line one\nline \"two\", with comma 0");
    assert_eq!(all_rows[1][3], "", "nulls are empty cells");
    let created = &all_rows[0][4];
    assert_eq!(created.len(), 24, "{created}");
    assert!(
        created.ends_with(".000Z") || created.ends_with('Z'),
        "{created}"
    );
    // Every value is quoted, as Salesforce writes it.
    let first = String::from_utf8(pages[0].1.clone()).unwrap();
    assert!(
        first.starts_with("\"Name\",\"Id\",\"NumberOfEmployees\""),
        "{first}"
    );

    // Pages are stable.
    for (path, body) in &pages {
        let again = env.get(path).await;
        assert_eq!(&again.body, body, "{path}");
    }
    // Default page: everything left.
    let r = env.get(&format!("/jobs/query/{id}/results")).await;
    assert_eq!(r.header("sforce-numberofrecords").as_deref(), Some("25"));
    assert_eq!(r.header("sforce-locator").as_deref(), Some("null"));

    // Bad inputs.
    let r = env
        .get(&format!("/jobs/query/{id}/results?maxRecords=0"))
        .await;
    assert_eq!(r.status, 400);
    let r = env
        .get(&format!("/jobs/query/{id}/results?locator=garbage!"))
        .await;
    assert_eq!(r.status, 400);

    // Results must be read with the job's API version.
    let r = env
        .send(env.client.get(format!(
            "{}/services/data/v65.0/jobs/query/{id}/results",
            env.running.base_url
        )))
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
}

#[tokio::test]
async fn gzip_pages_decode_to_the_same_csv() {
    let env = Env::start().await;
    seed_accounts(&env, 40);
    let info = create_query(
        &env,
        json!({"operation": "query", "query": "SELECT Id, Name, Description FROM Account ORDER BY Name", "columnDelimiter": "PIPE", "lineEnding": "CRLF"}),
    )
    .await;
    let id = id_of(&info);
    env.wait_done("query", &id).await;
    let path = format!("/jobs/query/{id}/results?maxRecords=15");
    let plain = env.get(&path).await;
    assert!(plain.header("content-encoding").is_none());
    let text = plain.text();
    assert!(
        text.contains("\r\n") && text.starts_with("\"Id\"|\"Name\"|"),
        "{text}"
    );
    let gz = env
        .send(
            env.client
                .get(env.url(&path))
                .header("Accept-Encoding", "gzip"),
        )
        .await;
    assert_eq!(gz.status, 200);
    assert_eq!(gz.header("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(gz.header("sforce-numberofrecords").as_deref(), Some("15"));
    assert_eq!(gz.header("sforce-locator"), plain.header("sforce-locator"));
    // One gzip member that decodes to exactly the plain page.
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&gz.body[..])
        .read_to_end(&mut decoded)
        .expect("valid gzip");
    assert_eq!(decoded, plain.body);
    // A client with transparent decompression sees the same CSV.
    let auto = env
        .gzip_client()
        .get(env.url(&path))
        .bearer_auth(&env.token)
        .send()
        .await
        .unwrap();
    assert_eq!(auto.bytes().await.unwrap().to_vec(), plain.body);
    // q=0 refuses gzip.
    let r = env
        .send(
            env.client
                .get(env.url(&path))
                .header("Accept-Encoding", "gzip;q=0"),
        )
        .await;
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.body, plain.body);
}

#[tokio::test]
async fn query_all_includes_deleted_rows_and_parents_are_allowed() {
    let env = Env::start().await;
    let ids = seed_accounts(&env, 3);
    env.seed(
        "Contact",
        vec![json!({"LastName": "Kid", "AccountId": ids[1]})],
    );
    let ctx = sfsync_org::CallContext {
        user_id: env.running.state.auth.admin().user_id,
        api: sfsync_org::ApiKind::Admin,
        api_version: "66.0".into(),
        client: None,
    };
    let r = env.running.org().execute(
        &ctx,
        vec![sfsync_org::DmlOp::Delete { id: ids[0].clone() }],
        true,
    );
    assert!(r[0].is_ok());

    for (op, want) in [("query", 2usize), ("queryAll", 3)] {
        let info = create_query(
            &env,
            json!({"operation": op, "query": "SELECT Id, Name, IsDeleted FROM Account ORDER BY Name"}),
        )
        .await;
        assert_eq!(info["operation"], op);
        let id = id_of(&info);
        let done = env.wait_done("query", &id).await;
        assert_eq!(done["numberRecordsProcessed"], want);
        let r = env.get(&format!("/jobs/query/{id}/results")).await;
        let (_, rows) = parse_csv(&r.body, b',');
        assert_eq!(rows.len(), want, "{op}");
        if op == "queryAll" {
            assert_eq!(rows[0][0], ids[0]);
            assert_eq!(rows[0][2], "true");
            assert_eq!(rows[1][2], "false");
        }
    }
    let info = create_query(
        &env,
        json!({"operation": "query", "query": "SELECT Id, Account.Name, LastName FROM Contact"}),
    )
    .await;
    let id = id_of(&info);
    env.wait_done("query", &id).await;
    let r = env.get(&format!("/jobs/query/{id}/results")).await;
    let (header, rows) = parse_csv(&r.body, b',');
    assert_eq!(header, vec!["Id", "Account.Name", "LastName"]);
    assert_eq!(rows[0][1], "Account 001");
}

#[tokio::test]
async fn unsupported_queries_are_refused_up_front() {
    let env = Env::start().await;
    let cases = [
        (
            "SELECT Id, BillingAddress FROM Account",
            "FUNCTIONALITY_NOT_ENABLED",
            "Selecting compound data not supported in Bulk Query",
        ),
        (
            "SELECT COUNT() FROM Account",
            "FUNCTIONALITY_NOT_ENABLED",
            "COUNT()",
        ),
        (
            "SELECT Id FROM Account LIMIT 5 OFFSET 10",
            "FUNCTIONALITY_NOT_ENABLED",
            "OFFSET",
        ),
        (
            "SELECT Id, (SELECT Id FROM Contacts) FROM Account",
            "FUNCTIONALITY_NOT_ENABLED",
            "subqueries",
        ),
        ("SELEKT Id FROM Account", "MALFORMED_QUERY", ""),
        (
            "SELECT NoSuchField__c FROM Account",
            "INVALID_FIELD",
            "NoSuchField__c",
        ),
    ];
    for (soql, code, message) in cases {
        let r = env
            .post_json("/jobs/query", json!({"operation": "query", "query": soql}))
            .await;
        assert_eq!(r.status, 400, "{soql}: {}", r.text());
        assert_eq!(r.error_code(), code, "{soql}: {}", r.text());
        assert!(
            r.error_message().contains(message),
            "{soql}: {}",
            r.error_message()
        );
    }
    let r = env
        .post_json(
            "/jobs/query",
            json!({"operation": "update", "query": "SELECT Id FROM Account"}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = env
        .post_json("/jobs/query", json!({"operation": "query"}))
        .await;
    assert_eq!(r.status, 400);
    // Nothing was created.
    let list = env.get("/jobs/query").await.json();
    assert_eq!(list["records"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn query_job_allocation_is_enforced() {
    let env = Env::start().await;
    env.running.state.limits.set_config(LimitsConfig {
        daily_bulk_query_jobs: 1,
        ..LimitsConfig::default()
    });
    let body = json!({"operation": "query", "query": "SELECT Id FROM Account"});
    assert_eq!(env.post_json("/jobs/query", body.clone()).await.status, 200);
    let r = env.post_json("/jobs/query", body).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "LIMIT_EXCEEDED");
}

#[tokio::test]
async fn abort_delete_and_list_query_jobs() {
    let env = Env::start().await;
    seed_accounts(&env, 2);
    env.running.state.bulk.set_settings(BulkSettings {
        processing_delay: Duration::from_millis(300),
        ..BulkSettings::default()
    });
    let a = id_of(
        &create_query(
            &env,
            json!({"operation": "query", "query": "SELECT Id FROM Account"}),
        )
        .await,
    );
    let b = id_of(
        &create_query(
            &env,
            json!({"operation": "query", "query": "SELECT Name FROM Account"}),
        )
        .await,
    );
    let list = env.get("/jobs/query").await.json();
    let ids: Vec<&str> = list["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![b.as_str(), a.as_str()]);
    assert_eq!(list["done"], true);

    let r = env
        .patch_json(&format!("/jobs/query/{a}"), json!({"state": "Aborted"}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "Aborted");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.get(&format!("/jobs/query/{a}")).await.json()["state"],
        "Aborted"
    );
    let r = env.get(&format!("/jobs/query/{a}/results")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "InvalidJobState");

    let done = env.wait_done("query", &b).await;
    assert_eq!(done["state"], "JobComplete");
    let r = env
        .patch_json(&format!("/jobs/query/{b}"), json!({"state": "Aborted"}))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(env.delete(&format!("/jobs/query/{b}")).await.status, 204);
    assert_eq!(env.get(&format!("/jobs/query/{b}")).await.status, 404);
    assert_eq!(
        env.get(&format!("/jobs/query/{b}/results")).await.status,
        404
    );
    // An ingest id is not a query job.
    let ingest = env
        .post_json(
            "/jobs/ingest",
            json!({"object": "Account", "operation": "insert"}),
        )
        .await
        .json();
    assert_eq!(
        env.get(&format!("/jobs/query/{}", id_of(&ingest)))
            .await
            .status,
        404
    );
}
