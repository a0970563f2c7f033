//! Bulk API 2.0 ingest jobs against the real emulator over HTTPS: every operation, CSV formats,
//! row errors and their result cells, job failures, aborts, limits and the change origin.

mod bulk_support;

use std::sync::Arc;
use std::time::Duration;

use bulk_support::{parse_csv, Env};
use parking_lot::Mutex;
use serde_json::{json, Value};
use sfsync_emulator::bulk::BulkSettings;
use sfsync_emulator::LimitsConfig;

fn id_of(info: &Value) -> String {
    info["id"].as_str().expect("job id").to_string()
}

#[tokio::test]
async fn job_info_has_salesforce_keys_and_lifecycle() {
    let env = Env::start().await;
    let info = env
        .create_ingest(json!({"object": "Account", "operation": "insert", "lineEnding": "LF"}))
        .await;
    let id = id_of(&info);
    assert!(id.starts_with("750") && id.len() == 18, "{id}");
    assert_eq!(info["state"], "Open");
    assert_eq!(info["object"], "Account");
    assert_eq!(info["operation"], "insert");
    assert_eq!(info["apiVersion"], json!(66.0));
    assert!(info["apiVersion"].is_f64());
    assert_eq!(info["concurrencyMode"], "Parallel");
    assert_eq!(info["contentType"], "CSV");
    assert_eq!(info["jobType"], "V2Ingest");
    assert_eq!(info["columnDelimiter"], "COMMA");
    assert_eq!(info["lineEnding"], "LF");
    assert_eq!(
        info["contentUrl"],
        format!("services/data/v66.0/jobs/ingest/{id}/batches")
    );
    assert_eq!(
        info["createdById"],
        env.running.state.auth.admin().user_id.as_str()
    );
    let created = info["createdDate"].as_str().unwrap();
    assert_eq!(created.len(), 28, "{created}");
    assert!(
        created.ends_with("+0000") && &created[19..20] == ".",
        "{created}"
    );
    for key in [
        "systemModstamp",
        "numberRecordsProcessed",
        "numberRecordsFailed",
        "retries",
        "totalProcessingTime",
        "apiActiveProcessingTime",
        "apexProcessingTime",
    ] {
        assert!(info.get(key).is_some(), "missing {key}");
    }

    // Two uploads append; the upload answers 201 with an empty body.
    let r = env
        .put_csv(&format!("/jobs/ingest/{id}/batches"), "Name\nFirst\n")
        .await;
    assert_eq!(r.status, 201);
    assert!(r.body.is_empty());
    let r = env
        .put_csv(&format!("/jobs/ingest/{id}/batches"), "Name\nSecond\n")
        .await;
    assert_eq!(r.status, 201);

    // Open jobs cannot be deleted.
    let r = env.delete(&format!("/jobs/ingest/{id}")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "InvalidJobState");

    let r = env
        .patch_json(
            &format!("/jobs/ingest/{id}"),
            json!({"state": "UploadComplete"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(matches!(
        r.json()["state"].as_str(),
        Some("UploadComplete" | "InProgress" | "JobComplete")
    ));
    // No more uploads once complete.
    let r = env
        .put_csv(&format!("/jobs/ingest/{id}/batches"), "Name\nLate\n")
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.error_code(), "InvalidJobState");
    assert!(r.error_message().contains(&id));

    let done = env.wait_done("ingest", &id).await;
    assert_eq!(done["state"], "JobComplete");
    assert_eq!(done["numberRecordsProcessed"], 2);
    assert_eq!(done["numberRecordsFailed"], 0);
    let (header, rows) = env.results(&id, "successfulResults", b',').await;
    assert_eq!(header, vec!["sf__Id", "sf__Created", "Name"]);
    assert_eq!(rows.len(), 2);
    assert!(rows
        .iter()
        .all(|r| r[0].starts_with("001") && r[1] == "true"));
    let names: Vec<&str> = rows.iter().map(|r| r[2].as_str()).collect();
    assert_eq!(names, vec!["First", "Second"]);

    // Listing, newest first.
    let second = env
        .create_ingest(json!({"object": "Contact", "operation": "insert"}))
        .await;
    let list = env.get("/jobs/ingest").await.json();
    assert_eq!(list["done"], true);
    assert!(list["nextRecordsUrl"].is_null());
    let ids: Vec<&str> = list["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id_of(&second).as_str(), id.as_str()]);

    // Delete a finished job: 204, then it is gone.
    let r = env.delete(&format!("/jobs/ingest/{id}")).await;
    assert_eq!(r.status, 204);
    let r = env.get(&format!("/jobs/ingest/{id}")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "NOT_FOUND");
}

#[tokio::test]
async fn create_validation_errors_use_the_bulk_shape() {
    let env = Env::start().await;
    let cases = [
        (
            json!({"object": "NoSuchThing__c", "operation": "insert"}),
            "InvalidJob",
            "Unable to find object: NoSuchThing__c",
        ),
        (
            json!({"object": "Account", "operation": "upsert"}),
            "InvalidJob",
            "External ID was blank for Account",
        ),
        (
            json!({"object": "Account", "operation": "upsert", "externalIdFieldName": "Name"}),
            "InvalidJob",
            "not an External ID field",
        ),
        (
            json!({"object": "Account", "operation": "merge"}),
            "ClientInputError",
            "Invalid operation 'merge'",
        ),
        (
            json!({"object": "Account", "operation": "insert", "columnDelimiter": "COLON"}),
            "ClientInputError",
            "Invalid columnDelimiter 'COLON'",
        ),
        (
            json!({"object": "Account", "operation": "insert", "lineEnding": "CR"}),
            "ClientInputError",
            "Invalid lineEnding 'CR'",
        ),
        (
            json!({"object": "Account", "operation": "insert", "contentType": "JSON"}),
            "ClientInputError",
            "Invalid contentType",
        ),
        (
            json!({"operation": "insert"}),
            "InvalidJob",
            "must name an object",
        ),
    ];
    for (body, code, message) in cases {
        let r = env.post_json("/jobs/ingest", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.error_code(), code, "{body}");
        assert!(
            r.error_message().contains(message),
            "{body}: {}",
            r.error_message()
        );
    }
    let r = env
        .send(env.client.post(env.url("/jobs/ingest")).body("{not json"))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "JSON_PARSER_ERROR");
    // Unauthenticated calls are refused.
    let r = env
        .client
        .get(env.url("/jobs/ingest"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Unknown jobs.
    let r = env.get("/jobs/ingest/750000000000001AAA").await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn insert_update_upsert_delete_and_hard_delete() {
    let env = Env::start().await;
    // insert
    let csv = "Name,External_Id__c,NumberOfEmployees,Phone\nAlpha,A-1,10,555-0100\nBeta,B-1,20,555-0200\n";
    let info = env
        .ingest(json!({"object": "Account", "operation": "insert"}), csv)
        .await;
    assert_eq!(info["state"], "JobComplete", "{info}");
    assert_eq!(info["numberRecordsProcessed"], 2);
    let (_, rows) = env.results(&id_of(&info), "successfulResults", b',').await;
    let alpha = rows.iter().find(|r| r[2] == "Alpha").unwrap()[0].clone();
    let beta = rows.iter().find(|r| r[2] == "Beta").unwrap()[0].clone();

    // update: `#N/A` sets null, an empty cell leaves the field unchanged.
    let csv = format!("Id,NumberOfEmployees,Phone\n{alpha},#N/A,\n{beta},,555-9999\n");
    let info = env
        .ingest(json!({"object": "Account", "operation": "update"}), &csv)
        .await;
    assert_eq!(info["numberRecordsFailed"], 0, "{info}");
    let (header, rows) = env.results(&id_of(&info), "successfulResults", b',').await;
    assert_eq!(
        header,
        vec!["sf__Id", "sf__Created", "Id", "NumberOfEmployees", "Phone"]
    );
    assert!(rows.iter().all(|r| r[1] == "false"));
    let got = env.org_query(
        "SELECT Name, NumberOfEmployees, Phone FROM Account ORDER BY Name",
        false,
    );
    assert_eq!(got[0], vec![json!("Alpha"), Value::Null, json!("555-0100")]);
    assert_eq!(got[1], vec![json!("Beta"), json!(20), json!("555-9999")]);

    // upsert on the external id: one update, one insert.
    let csv = "External_Id__c,Name\nA-1,Alpha Renamed\nC-1,Gamma\n";
    let info = env
        .ingest(
            json!({"object": "Account", "operation": "upsert", "externalIdFieldName": "External_Id__c"}),
            csv,
        )
        .await;
    assert_eq!(info["externalIdFieldName"], "External_Id__c");
    assert_eq!(info["numberRecordsFailed"], 0, "{info}");
    let (_, rows) = env.results(&id_of(&info), "successfulResults", b',').await;
    let created: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r[2].as_str(), r[1].as_str()))
        .collect();
    assert_eq!(created, vec![("A-1", "false"), ("C-1", "true")]);
    assert_eq!(rows[0][0], alpha);
    let names = env.org_query("SELECT Name FROM Account ORDER BY Name", false);
    assert_eq!(
        names,
        vec![
            vec![json!("Alpha Renamed")],
            vec![json!("Beta")],
            vec![json!("Gamma")]
        ]
    );

    // delete (recycle bin) and hardDelete (gone even for queryAll).
    let info = env
        .ingest(
            json!({"object": "Account", "operation": "delete"}),
            &format!("Id\n{alpha}\n"),
        )
        .await;
    assert_eq!(info["numberRecordsFailed"], 0, "{info}");
    let deleted = env.org_query(
        "SELECT Id, IsDeleted FROM Account WHERE IsDeleted = true",
        true,
    );
    assert_eq!(deleted, vec![vec![json!(alpha), json!(true)]]);
    let info = env
        .ingest(
            json!({"object": "Account", "operation": "hardDelete"}),
            &format!("Id\n{beta}\n"),
        )
        .await;
    assert_eq!(info["numberRecordsFailed"], 0, "{info}");
    let all = env.org_query("SELECT Id FROM Account", true);
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(!all.iter().any(|r| r[0] == json!(beta)));

    // Deleting something already gone is a failed row with the org's error cell.
    let info = env
        .ingest(
            json!({"object": "Account", "operation": "hardDelete"}),
            &format!("Id\n{beta}\n"),
        )
        .await;
    assert_eq!(info["numberRecordsFailed"], 1);
    let (header, rows) = env.results(&id_of(&info), "failedResults", b',').await;
    assert_eq!(header, vec!["sf__Id", "sf__Error", "Id"]);
    assert_eq!(rows[0][0], beta);
    let cell = &rows[0][1];
    assert!(cell.split(':').count() >= 3, "{cell}");
}

#[tokio::test]
async fn delimiters_line_endings_and_quoting() {
    let env = Env::start().await;
    for (name, d) in [
        ("PIPE", b'|'),
        ("TAB", b'\t'),
        ("SEMICOLON", b';'),
        ("CARET", b'^'),
        ("BACKQUOTE", b'`'),
        ("COMMA", b','),
    ] {
        let ds = (d as char).to_string();
        let tricky = format!("has {ds} delimiter, \"quotes\" and\r\na new line");
        let quoted = format!("\"{}\"", tricky.replace('"', "\"\""));
        let csv = format!(
            "Name{ds}Description\r\nAcme {name}{ds}{quoted}\r\n\"Plain {name}\"{ds}\"=HYPERLINK(\"\"x\"\")\"\r\n"
        );
        let info = env
            .ingest(
                json!({"object": "Account", "operation": "insert", "columnDelimiter": name, "lineEnding": "CRLF"}),
                &csv,
            )
            .await;
        assert_eq!(info["state"], "JobComplete", "{name}: {info}");
        assert_eq!(info["numberRecordsFailed"], 0, "{name}: {info}");
        assert_eq!(info["columnDelimiter"], name);
        let r = env
            .get(&format!("/jobs/ingest/{}/successfulResults", id_of(&info)))
            .await;
        let text = r.text();
        assert!(text.contains("\r\n"), "{name}: CRLF results expected");
        let (header, rows) = parse_csv(&r.body, d);
        assert_eq!(header, vec!["sf__Id", "sf__Created", "Name", "Description"]);
        assert_eq!(rows[0][3], tricky, "{name}");
        let stored = env.org_query(
            &format!("SELECT Description FROM Account WHERE Name = 'Acme {name}'"),
            false,
        );
        assert_eq!(stored, vec![vec![json!(tricky)]], "{name}");
        let formula_like = env.org_query(
            &format!("SELECT Description FROM Account WHERE Name = 'Plain {name}'"),
            false,
        );
        assert_eq!(formula_like, vec![vec![json!("=HYPERLINK(\"x\")")]]);
    }
}

#[tokio::test]
async fn row_errors_go_to_failed_results_and_do_not_stop_the_job() {
    let env = Env::start().await;
    let giant = "x".repeat(140_000);
    let csv = format!(
        "Name,NumberOfEmployees,Description\n\
         Good One,5,ok\n\
         Bad Number,abc,x\n\
         ,3,no name\n\
         Too,Many,Cells,Here\n\
         Nul\u{0}Byte,1,x\n\
         Giant,1,{giant}\n\
         \"Spaced\" ,1,x\n\
         Bare\"Quote,1,x\n\
         Good Two,7,fine\n"
    );
    let info = env
        .ingest(json!({"object": "Account", "operation": "insert"}), &csv)
        .await;
    assert_eq!(info["state"], "JobComplete", "{info}");
    assert_eq!(info["numberRecordsProcessed"], 9);
    assert_eq!(info["numberRecordsFailed"], 7);
    let id = id_of(&info);
    let (_, ok) = env.results(&id, "successfulResults", b',').await;
    let ok: Vec<&str> = ok.iter().map(|r| r[2].as_str()).collect();
    assert_eq!(ok, vec!["Good One", "Good Two"]);
    let (header, failed) = env.results(&id, "failedResults", b',').await;
    assert_eq!(
        header,
        vec![
            "sf__Id",
            "sf__Error",
            "Name",
            "NumberOfEmployees",
            "Description"
        ]
    );
    assert_eq!(failed.len(), 7);
    let err = |prefix: &str| -> String {
        failed
            .iter()
            .find(|r| r[2].starts_with(prefix))
            .unwrap_or_else(|| panic!("no failed row for {prefix}: {failed:?}"))[1]
            .clone()
    };
    let e = err("Bad Number");
    assert!(e.starts_with("INVALID_TYPE_ON_FIELD_IN_RECORD:"), "{e}");
    assert!(e.ends_with(":NumberOfEmployees"), "{e}");
    assert!(e.contains("row 2"), "{e}");
    let e = failed.iter().find(|r| r[3] == "3").unwrap()[1].clone();
    assert!(e.starts_with("REQUIRED_FIELD_MISSING:"), "{e}");
    let e = err("Too");
    assert!(
        e.contains("has 4 values but the header has 3 columns"),
        "{e}"
    );
    assert!(e.contains(&id), "{e}");
    let e = err("Nul");
    assert!(e.contains("NUL"), "{e}");
    let e = err("Giant");
    assert!(e.starts_with("STRING_TOO_LONG:"), "{e}");
    assert!(e.contains("140000"), "{e}");
    let e = err("Spaced");
    assert!(e.contains("after the closing quote"), "{e}");
    let e = failed
        .iter()
        .find(|r| r[1].contains("double quote inside"))
        .unwrap()[1]
        .clone();
    assert!(e.contains("row 8"), "{e}");
}

#[tokio::test]
async fn unterminated_quote_fails_the_rest_clearly() {
    let env = Env::start().await;
    let csv = "Name,Description\nFine,ok\nBroken,\"never closed\nNext,row\n";
    let info = env
        .ingest(json!({"object": "Account", "operation": "insert"}), csv)
        .await;
    assert_eq!(info["state"], "JobComplete", "{info}");
    assert_eq!(info["numberRecordsProcessed"], 2);
    assert_eq!(info["numberRecordsFailed"], 1);
    let (_, failed) = env.results(&id_of(&info), "failedResults", b',').await;
    assert_eq!(failed[0][2], "Broken");
    assert!(failed[0][1].contains("never closed"), "{}", failed[0][1]);
    assert!(failed[0][1].contains("line 3"), "{}", failed[0][1]);
    assert_eq!(env.org_query("SELECT Name FROM Account", false).len(), 1);
}

#[tokio::test]
async fn header_problems_fail_the_job() {
    let env = Env::start().await;
    let info = env
        .ingest(
            json!({"object": "Account", "operation": "insert"}),
            "Name,Foo\nA,1\nB,2\n",
        )
        .await;
    assert_eq!(info["state"], "Failed");
    let msg = info["errorMessage"].as_str().unwrap();
    assert!(
        msg.starts_with("InvalidBatch : Field name not found : Foo"),
        "{msg}"
    );
    assert!(msg.contains(&id_of(&info)), "{msg}");
    assert_eq!(info["numberRecordsProcessed"], 0);
    let (header, rows) = env.results(&id_of(&info), "unprocessedrecords", b',').await;
    assert_eq!(header, vec!["Name", "Foo"]);
    assert_eq!(rows, vec![vec!["A", "1"], vec!["B", "2"]]);

    // 5,001 columns.
    let header: Vec<String> = (0..5001).map(|i| format!("F{i}")).collect();
    let info = env
        .ingest(
            json!({"object": "Account", "operation": "insert"}),
            &format!("{}\n", header.join(",")),
        )
        .await;
    assert_eq!(info["state"], "Failed");
    assert!(
        info["errorMessage"]
            .as_str()
            .unwrap()
            .contains("5001 columns"),
        "{info}"
    );

    // Update without an Id column.
    let info = env
        .ingest(
            json!({"object": "Account", "operation": "update"}),
            "Name\nX\n",
        )
        .await;
    assert_eq!(info["state"], "Failed");
    assert!(
        info["errorMessage"].as_str().unwrap().contains("Id"),
        "{info}"
    );

    // Only BOM and nothing else.
    let info = env
        .ingest(
            json!({"object": "Account", "operation": "insert"}),
            "\u{FEFF}",
        )
        .await;
    assert_eq!(info["state"], "Failed");
    assert!(
        info["errorMessage"].as_str().unwrap().contains("empty"),
        "{info}"
    );
}

#[tokio::test]
async fn aborted_jobs_report_unprocessed_records() {
    let env = Env::start().await;
    let info = env
        .create_ingest(json!({"object": "Account", "operation": "insert", "lineEnding": "CRLF"}))
        .await;
    let id = id_of(&info);
    let r = env
        .put_csv(
            &format!("/jobs/ingest/{id}/batches"),
            "\u{FEFF}Name,Phone\r\nOne,1\r\n\"Two, Inc\",2\r\n",
        )
        .await;
    assert_eq!(r.status, 201);
    let r = env
        .patch_json(&format!("/jobs/ingest/{id}"), json!({"state": "Aborted"}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "Aborted");
    let (header, rows) = env.results(&id, "unprocessedrecords", b',').await;
    assert_eq!(header, vec!["Name", "Phone"]);
    assert_eq!(rows, vec![vec!["One", "1"], vec!["Two, Inc", "2"]]);
    let (_, ok) = env.results(&id, "successfulResults", b',').await;
    assert!(ok.is_empty());
    // Terminal: cannot be completed or uploaded to.
    let r = env
        .patch_json(
            &format!("/jobs/ingest/{id}"),
            json!({"state": "UploadComplete"}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "InvalidJobState");
    let r = env
        .put_csv(&format!("/jobs/ingest/{id}/batches"), "Name\nx\n")
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(env.org_query("SELECT Id FROM Account", true).len(), 0);
    assert_eq!(env.delete(&format!("/jobs/ingest/{id}")).await.status, 204);
}

#[tokio::test]
async fn batches_and_limits_are_enforced() {
    let env = Env::start().await;
    env.running.state.bulk.set_settings(BulkSettings {
        batch_records: 2,
        ..BulkSettings::default()
    });
    env.running.state.limits.set_config(LimitsConfig {
        daily_bulk_batches: 2,
        ..LimitsConfig::default()
    });
    let csv = "Name\nR1\nR2\nR3\nR4\nR5\n";
    let info = env
        .ingest(json!({"object": "Account", "operation": "insert"}), csv)
        .await;
    assert_eq!(info["state"], "Failed", "{info}");
    let msg = info["errorMessage"].as_str().unwrap();
    assert!(
        msg.contains("Exceeded max number of batches allowed in 24 hour period"),
        "{msg}"
    );
    assert_eq!(info["numberRecordsProcessed"], 4);
    let id = id_of(&info);
    let (_, ok) = env.results(&id, "successfulResults", b',').await;
    assert_eq!(ok.len(), 4);
    let (_, rest) = env.results(&id, "unprocessedrecords", b',').await;
    assert_eq!(rest, vec![vec!["R5"]]);
    // Each batch was its own transaction: 4 rows committed.
    assert_eq!(env.org_query("SELECT Id FROM Account", false).len(), 4);

    // Ingest record allocation.
    env.running.state.limits.reset_usage();
    env.running.state.limits.set_config(LimitsConfig {
        daily_bulk_ingest_records: 3,
        ..LimitsConfig::default()
    });
    let info = env
        .ingest(json!({"object": "Account", "operation": "insert"}), csv)
        .await;
    assert_eq!(info["state"], "Failed");
    assert!(info["errorMessage"]
        .as_str()
        .unwrap()
        .contains("Exceeded max number of records"));
    assert_eq!(info["numberRecordsProcessed"], 2);
}

#[tokio::test]
async fn upload_size_is_capped() {
    let env = Env::start().await;
    env.running.state.bulk.set_settings(BulkSettings {
        max_upload_bytes: 64,
        ..BulkSettings::default()
    });
    let info = env
        .create_ingest(json!({"object": "Account", "operation": "insert"}))
        .await;
    let id = id_of(&info);
    let big = format!("Name\n{}\n", "y".repeat(100));
    let r = env
        .put_csv(&format!("/jobs/ingest/{id}/batches"), big)
        .await;
    assert_eq!(r.status, 413);
    assert!(r.error_message().contains(&id), "{}", r.error_message());
    assert!(r.error_message().contains("150 MB"));
    // Still open and usable.
    let r = env
        .put_csv(&format!("/jobs/ingest/{id}/batches"), "Name\nok\n")
        .await;
    assert_eq!(r.status, 201);
}

#[tokio::test]
async fn change_origin_names_bulk_api_and_client() {
    let env = Env::start().await;
    let origins = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = origins.clone();
    env.running.org().add_commit_listener(Arc::new(move |tx| {
        sink.lock().push(tx.change_origin.clone())
    }));
    let r = env
        .send(
            env.client
                .post(env.url("/jobs/ingest"))
                .header(
                    "Sforce-Call-Options",
                    "client=sfsync-test; defaultNamespace=x",
                )
                .json(&json!({"object": "Account", "operation": "insert"})),
        )
        .await;
    let id = id_of(&r.json());
    env.put_csv(&format!("/jobs/ingest/{id}/batches"), "Name\nOrigin Test\n")
        .await;
    env.patch_json(
        &format!("/jobs/ingest/{id}"),
        json!({"state": "UploadComplete"}),
    )
    .await;
    let info = env.wait_done("ingest", &id).await;
    assert_eq!(info["state"], "JobComplete");
    let origins = origins.lock().clone();
    assert_eq!(origins.len(), 1, "{origins:?}");
    assert!(origins[0].contains("bulkapi"), "{}", origins[0]);
    assert!(origins[0].contains("client=sfsync-test"), "{}", origins[0]);
    assert_eq!(
        origins[0],
        "com/salesforce/api/bulkapi/66.0;client=sfsync-test"
    );
}

#[tokio::test]
async fn relationship_columns_resolve_parents_by_external_id() {
    let env = Env::start().await;
    env.seed(
        "Account",
        vec![json!({"Name": "Parent Co", "External_Id__c": "P-1"})],
    );
    let parent = env.org_query("SELECT Id FROM Account", false)[0][0].clone();
    let csv = "LastName,Account.External_Id__c,Birthdate\nSmith,P-1,1940-06-07Z\nJones,NOPE,\nDoe,#N/A,2001-02-03\n";
    let info = env
        .ingest(json!({"object": "Contact", "operation": "insert"}), csv)
        .await;
    assert_eq!(info["state"], "JobComplete", "{info}");
    let id = id_of(&info);
    let (_, failed) = env.results(&id, "failedResults", b',').await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0][1].contains("Foreign key external ID: NOPE not found"),
        "{:?}",
        failed[0]
    );
    let rows = env.org_query(
        "SELECT LastName, AccountId FROM Contact ORDER BY LastName",
        false,
    );
    assert_eq!(rows[0], vec![json!("Doe"), Value::Null]);
    assert_eq!(rows[1], vec![json!("Smith"), parent]);
}

#[tokio::test]
async fn processing_is_asynchronous() {
    let env = Env::start().await;
    env.running.state.bulk.set_settings(BulkSettings {
        processing_delay: Duration::from_millis(400),
        ..BulkSettings::default()
    });
    let info = env
        .create_ingest(json!({"object": "Account", "operation": "insert"}))
        .await;
    let id = id_of(&info);
    env.put_csv(&format!("/jobs/ingest/{id}/batches"), "Name\nLater\n")
        .await;
    let r = env
        .patch_json(
            &format!("/jobs/ingest/{id}"),
            json!({"state": "UploadComplete"}),
        )
        .await;
    assert_eq!(r.json()["state"], "UploadComplete");
    let r = env
        .get(&format!("/jobs/ingest/{id}/successfulResults"))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "InvalidJobState");
    // Aborting before processing starts leaves everything unprocessed.
    let r = env
        .patch_json(&format!("/jobs/ingest/{id}"), json!({"state": "Aborted"}))
        .await;
    assert_eq!(r.json()["state"], "Aborted");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let info = env.get(&format!("/jobs/ingest/{id}")).await.json();
    assert_eq!(info["state"], "Aborted");
    assert_eq!(env.org_query("SELECT Id FROM Account", false).len(), 0);
    let (_, rows) = env.results(&id, "unprocessedrecords", b',').await;
    assert_eq!(rows, vec![vec!["Later"]]);
}
