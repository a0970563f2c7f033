//! The sfsync client against the running emulator with bad input and hostile conditions:
//! malformed JSON, hostile CSV rows, bad SOQL, unknown fields and objects, validation errors,
//! bad / expired tokens, the daily API allocation, the concurrent long-running limit, injected
//! transient faults (with and without retries) and the Bulk query-job allocation. Each test checks
//! the exact error code, HTTP status and error class, and what the org committed (or not).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use reqwest::Method;
use serde_json::json;
use sfsync_core::ErrorClass;
use sfsync_emulator::faults::{FaultConfig, FaultKind, FaultRule};
use sfsync_emulator::LimitsConfig;
use sfsync_salesforce::bulk::{
    parse_failed_result_error, IngestJobRequest, IngestOperation, JobKind, JobState,
    QueryJobRequest,
};
use sfsync_salesforce::http::{ApiRequest, Body};
use sfsync_salesforce::{
    AuthFlow, Credentials, CsvError, QueryOptions, SalesforceClient, SalesforceError, Secret,
};

const V: &str = "/services/data/v66.0";

fn api(err: &SalesforceError) -> &sfsync_salesforce::ApiError {
    err.api()
        .unwrap_or_else(|| panic!("expected an API error, got {err:?}"))
}

// ---------------------------------------------------------------------------------------------
// Malformed JSON
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_json_bodies_are_json_parser_errors() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    let cases: [(Method, &str, &[u8]); 6] = [
        (Method::POST, "sobjects/Account", b"{\"Name\": "),
        (Method::POST, "sobjects/Account", b"[1,2]"),
        (Method::POST, "composite/sobjects", b"{"),
        (Method::POST, "composite", b"{\"compositeRequest\": [}"),
        (Method::POST, "composite/batch", b"not json"),
        (Method::POST, "jobs/ingest", b"{\"object\": \"Account\",}"),
    ];
    for (method, rest, body) in cases {
        let used = server_used(&emu);
        let req = ApiRequest::new(method.clone(), c.data_path(rest))
            .body(Body::Json(Bytes::from_static(body)));
        let err = match c.send(req).await {
            Ok(r) => panic!("{rest}: accepted with HTTP {}", r.status()),
            Err(e) => e,
        };
        let e = api(&err);
        assert_eq!(e.status, 400, "{rest}: {err}");
        assert_eq!(e.error_code, "JSON_PARSER_ERROR", "{rest}: {err}");
        assert_eq!(err.class(), ErrorClass::User, "{rest}");
        assert!(!e.message.is_empty(), "{rest}");
        assert_eq!(e.method, "POST");
        assert_eq!(e.path, c.data_path(rest), "the error names the place");
        assert_eq!(
            server_used(&emu),
            used + 1,
            "{rest}: sent once, not retried"
        );
    }
    // serde's position is in the message.
    let req = ApiRequest::new(Method::POST, c.data_path("sobjects/Account"))
        .body(Body::Json(Bytes::from_static(b"{\"Name\": ")));
    let err = c.send(req).await.err().unwrap();
    assert!(api(&err).message.contains("line 1"), "{err}");
    // A PATCH with a broken body changes nothing.
    let id = c
        .create("Account", &json!({"Name": "Intact"}))
        .await
        .unwrap()
        .id
        .unwrap();
    let req = ApiRequest::new(
        Method::PATCH,
        c.data_path(&format!("sobjects/Account/{id}")),
    )
    .body(Body::Json(Bytes::from_static(b"{\"Name\": \"Changed\"")));
    let err = c.send(req).await.err().unwrap();
    assert_eq!(api(&err).error_code, "JSON_PARSER_ERROR");
    assert_eq!(
        org_rows(&emu, "SELECT Name FROM Account", false),
        vec![vec![json!("Intact")]],
        "only the one good create committed"
    );
}

// ---------------------------------------------------------------------------------------------
// Validation, unknown fields and objects
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn validation_and_unknown_names_get_salesforce_error_codes() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::ClientCredentials);
    let acc = c
        .create("Account", &json!({"Name": "Valid"}))
        .await
        .unwrap()
        .id
        .unwrap();
    let cases: Vec<(&str, serde_json::Value, u16, &str, Vec<&str>)> = vec![
        (
            "Account",
            json!({"Phone": "1"}),
            400,
            "REQUIRED_FIELD_MISSING",
            vec!["Name"],
        ),
        (
            "Account",
            json!({"Name": "x", "Bogus__c": 1}),
            400,
            "INVALID_FIELD",
            vec![],
        ),
        (
            "Account",
            json!({"Name": "x".repeat(256)}),
            400,
            "STRING_TOO_LONG",
            vec!["Name"],
        ),
        (
            "Account",
            json!({"Name": "x", "NumberOfEmployees": "many"}),
            400,
            "INVALID_TYPE_ON_FIELD_IN_RECORD",
            vec!["NumberOfEmployees"],
        ),
        (
            "Opportunity",
            json!({"Name": "x", "StageName": "Nope", "CloseDate": "2024-01-01"}),
            400,
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            vec!["StageName"],
        ),
        (
            "Contact",
            json!({"LastName": "x", "AccountId": "001000000000999AAA"}),
            400,
            "INVALID_CROSS_REFERENCE_KEY",
            vec!["AccountId"],
        ),
        ("Nope__c", json!({"Name": "x"}), 404, "NOT_FOUND", vec![]),
    ];
    for (object, body, status, code, fields) in cases {
        let err = c.create(object, &body).await.unwrap_err();
        let e = api(&err);
        assert_eq!(e.status, status, "{object} {body}: {err}");
        assert_eq!(e.error_code, code, "{object} {body}: {err}");
        if !fields.is_empty() {
            assert_eq!(e.fields, fields, "{object} {body}: {err}");
        }
        assert_eq!(err.class(), ErrorClass::User, "{code}");
    }
    // Unique external id.
    c.create(
        "Service_Request__c",
        &json!({"Name": "SR", "External_Id__c": "DUP"}),
    )
    .await
    .unwrap();
    let err = c
        .create(
            "Service_Request__c",
            &json!({"Name": "SR 2", "External_Id__c": "DUP"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some("DUPLICATE_VALUE"), "{err}");
    assert_eq!(err.class(), ErrorClass::User);
    assert_eq!(
        org_count(&emu, "SELECT COUNT() FROM Service_Request__c", true),
        1
    );
    assert_eq!(org_count(&emu, "SELECT COUNT() FROM Account", true), 1);

    // Unknown object / field on read paths.
    let err = c.describe_object("Nope__c").await.unwrap_err();
    assert_eq!(
        (err.status(), err.error_code()),
        (Some(404), Some("NOT_FOUND"))
    );
    let err = c
        .retrieve("Account", &acc, Some(&["Name", "Bogus__c"]))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert_eq!(err.error_code(), Some("INVALID_FIELD"), "{err}");
    let err = c.retrieve("Account", "not-an-id", None).await.unwrap_err();
    assert_eq!(
        (err.status(), err.error_code()),
        (Some(404), Some("NOT_FOUND"))
    );
    let err = c
        .upsert("Account", "No_Such__c", "x", &json!({"Name": "x"}))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Bad SOQL
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_soql_is_malformed_query_with_position_and_never_retried() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    c.limits().await.unwrap();
    for soql in [
        "SELECT Id FROM Account WHERE",
        "SELECT Id,, Name FROM Account",
        "SELECT Id FROM Account LIMIT -1",
        "SELEKT Id FROM Account",
        "SELECT Id FROM Account WHERE Name = 'unterminated",
    ] {
        let used = server_used(&emu);
        let err = c
            .query_page(soql, &QueryOptions::default())
            .await
            .unwrap_err();
        let e = api(&err);
        assert_eq!(e.status, 400, "{soql}: {err}");
        assert_eq!(e.error_code, "MALFORMED_QUERY", "{soql}: {err}");
        assert_eq!(err.class(), ErrorClass::User);
        assert!(
            e.message.contains("ERROR at Row:1:Column:"),
            "{soql}: position missing: {}",
            e.message
        );
        assert!(
            !e.path.contains("SELECT"),
            "the SOQL is not echoed into the path"
        );
        assert_eq!(server_used(&emu), used + 1, "{soql}: not retried");
    }
    let err = c
        .query_page("SELECT Id,, Name FROM Account", &QueryOptions::default())
        .await
        .unwrap_err();
    assert!(
        api(&err).message.contains("Row:1:Column:11"),
        "the second comma is column 11: {}",
        api(&err).message
    );

    let err = c
        .query_all_pages(
            "SELECT NoSuchField__c FROM Account",
            QueryOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some("INVALID_FIELD"), "{err}");
    assert!(api(&err).message.contains("NoSuchField__c"), "{err}");
    let err = c
        .query_page("SELECT Id FROM NoSuchObject__c", &QueryOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some("INVALID_TYPE"), "{err}");
    assert!(api(&err).message.contains("NoSuchObject__c"), "{err}");
    assert_eq!(err.class(), ErrorClass::User);

    // A bad locator.
    let err = c
        .query_more(&format!("{V}/query/01gNOPE-2000"), &QueryOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::User, "{err}");
    assert!(matches!(err.status(), Some(400 | 404)), "{err}");

    // Bulk query refuses bad SOQL at job creation; no job is left behind.
    let bulk = c.bulk_with(bulk_config());
    let err = bulk
        .create_query_job(&QueryJobRequest::new("SELECT Id FROM Account WHERE"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert_eq!(err.error_code(), Some("MALFORMED_QUERY"), "{err}");
    assert_eq!(err.class(), ErrorClass::User);
    let err = bulk
        .create_query_job(&QueryJobRequest::new("SELECT NoSuchField__c FROM Account"))
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some("INVALID_FIELD"), "{err}");
    assert!(bulk.list_jobs(JobKind::Query).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Hostile CSV
// ---------------------------------------------------------------------------------------------

/// Creates a job, uploads `data` as is (no client-side check), closes and waits.
async fn raw_ingest(
    bulk: &sfsync_salesforce::Bulk,
    req: &IngestJobRequest,
    data: &str,
) -> (
    String,
    sfsync_salesforce::Result<sfsync_salesforce::JobInfo>,
) {
    let job = bulk.create_ingest_job(req).await.unwrap();
    bulk.upload(&job, Bytes::from(data.as_bytes().to_vec()))
        .await
        .unwrap();
    let closed = bulk.close(&job.id).await.unwrap();
    assert_eq!(closed.state, JobState::UploadComplete);
    let r = bulk.wait_ingest(&job.id).await;
    (job.id, r)
}

#[tokio::test]
async fn hostile_csv_rows_fail_by_row_and_do_not_stop_the_job() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    let bulk = c.bulk_with(bulk_config());
    let giant = "x".repeat(40_000);
    let data = format!(
        "Name,NumberOfEmployees,Description\n\
         Good One,5,ok\n\
         Bad Number,abc,x\n\
         ,3,no name\n\
         Too,Many,Cells,Here\n\
         Nul\u{0}Byte,1,x\n\
         Giant,1,{giant}\n\
         Good Two,7,fine\n"
    );
    let (id, info) = raw_ingest(
        &bulk,
        &IngestJobRequest::new("Account", IngestOperation::Insert),
        &data,
    )
    .await;
    let info = info.unwrap_or_else(|e| panic!("{}", e.report()));
    assert_eq!(info.state, JobState::JobComplete);
    assert_eq!(
        (info.number_records_processed, info.number_records_failed),
        (7, 5)
    );
    let (_, ok) = bulk
        .successful_results(&id)
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    let ok: Vec<&str> = ok.iter().map(|r| r[2].as_str()).collect();
    assert_eq!(ok, vec!["Good One", "Good Two"]);
    let (header, failed) = bulk
        .failed_results(&id)
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
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
    assert_eq!(failed.len(), 5, "{failed:?}");
    let find = |pred: &dyn Fn(&Vec<String>) -> bool| -> String {
        failed
            .iter()
            .find(|r| pred(r))
            .unwrap_or_else(|| panic!("no such failed row in {failed:?}"))[1]
            .clone()
    };
    let e = parse_failed_result_error(&find(&|r| r[2] == "Bad Number"));
    assert_eq!(e.status_code, "INVALID_TYPE_ON_FIELD_IN_RECORD");
    assert_eq!(e.fields, vec!["NumberOfEmployees"]);
    assert!(e.message.contains("row 2"), "{e:?}");
    let e = parse_failed_result_error(&find(&|r| r[3] == "3"));
    assert_eq!(e.status_code, "REQUIRED_FIELD_MISSING");
    assert_eq!(e.fields, vec!["Name"]);
    let e = find(&|r| r[2] == "Too");
    assert!(
        e.contains("has 4 values but the header has 3 columns"),
        "{e}"
    );
    let e = find(&|r| r[2].starts_with("Nul"));
    assert!(e.contains("NUL"), "{e}");
    let e = parse_failed_result_error(&find(&|r| r[2] == "Giant"));
    assert_eq!(e.status_code, "STRING_TOO_LONG");
    assert_eq!(e.fields, vec!["Description"]);
    assert!(e.message.contains("max length=32000"), "{e:?}");
    assert!(e.message.contains("row 6 (line 7)"), "names the row: {e:?}");
    assert_eq!(
        org_rows(&emu, "SELECT Name FROM Account ORDER BY Name", false),
        vec![vec![json!("Good One")], vec![json!("Good Two")]]
    );

    // Unterminated quote: the row and the rest fail, naming the line.
    let (id, info) = raw_ingest(
        &bulk,
        &IngestJobRequest::new("Contact", IngestOperation::Insert),
        "LastName,Description\nFine,ok\nBroken,\"never closed\nNext,row\n",
    )
    .await;
    let info = info.unwrap();
    assert_eq!(
        (info.number_records_processed, info.number_records_failed),
        (2, 1)
    );
    let (_, failed) = bulk
        .failed_results(&id)
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0][2], "Broken");
    assert!(failed[0][1].contains("never closed"), "{}", failed[0][1]);
    assert!(failed[0][1].contains("line 3"), "{}", failed[0][1]);
    assert_eq!(
        org_rows(&emu, "SELECT LastName FROM Contact", false),
        vec![vec![json!("Fine")]]
    );
}

#[tokio::test]
async fn unknown_column_fails_the_job_with_its_message() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    let bulk = c.bulk_with(bulk_config());
    let (id, info) = raw_ingest(
        &bulk,
        &IngestJobRequest::new("Account", IngestOperation::Insert),
        "Name,Foo\nA,1\nB,2\n",
    )
    .await;
    let err = info.unwrap_err();
    match &err {
        SalesforceError::JobFailed {
            job_id,
            state,
            message,
        } => {
            assert_eq!(job_id, &id);
            assert_eq!(state, "Failed");
            assert!(
                message.starts_with("InvalidBatch : Field name not found : Foo"),
                "{message}"
            );
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }
    assert_eq!(err.class(), ErrorClass::User);
    let job = bulk.ingest_job(&id).await.unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.number_records_processed, 0);
    let (header, rows) = bulk
        .unprocessed_records(&id)
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(header, vec!["Name", "Foo"]);
    assert_eq!(rows, vec![vec!["A", "1"], vec!["B", "2"]]);
    assert_eq!(org_count(&emu, "SELECT COUNT() FROM Account", true), 0);

    // Update without an Id column fails the job too.
    let (_, info) = raw_ingest(
        &bulk,
        &IngestJobRequest::new("Account", IngestOperation::Update),
        "Name\nX\n",
    )
    .await;
    let err = info.unwrap_err();
    assert!(
        matches!(&err, SalesforceError::JobFailed { message, .. } if message.contains("Id")),
        "{err:?}"
    );

    // Job creation problems are refused up front with the Bulk error shape.
    let err = bulk
        .create_ingest_job(&IngestJobRequest::new("Nope__c", IngestOperation::Insert))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert_eq!(err.class(), ErrorClass::User);
    let err = bulk
        .create_ingest_job(&IngestJobRequest::upsert("Account", "Name"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert_eq!(err.class(), ErrorClass::User);
}

#[tokio::test]
async fn client_side_csv_check_refuses_hostile_data_before_any_job() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    let bulk = c.bulk_with(bulk_config());
    let req = IngestJobRequest::new("Account", IngestOperation::Insert);
    let cases: [(&str, &str); 3] = [
        (
            "Name,Description\nFine,ok\nBroken,\"never closed\n",
            "not closed",
        ),
        ("Name,Description\nNul\0Byte,x\n", "NUL"),
        ("Name,Description\n\"Spaced\" ,x\n", "after a closing quote"),
    ];
    c.limits().await.unwrap();
    let used = server_used(&emu);
    for (data, needle) in cases {
        let err = bulk
            .ingest(&req, Bytes::from(data.as_bytes().to_vec()))
            .await
            .unwrap_err();
        match &err {
            SalesforceError::Csv { place, source } => {
                assert!(place.contains("Account"), "{place}");
                let msg = source.to_string();
                assert!(msg.contains(needle), "{data:?}: {msg}");
                assert!(msg.starts_with("row "), "names the row: {msg}");
                assert!(
                    !matches!(source, CsvError::MissingHeader),
                    "{data:?}: {source:?}"
                );
            }
            other => panic!("{data:?}: expected a CSV error, got {other:?}"),
        }
    }
    assert_eq!(server_used(&emu), used, "nothing was sent");
    assert!(bulk.list_jobs(JobKind::Ingest).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Bad and expired tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_token_is_invalid_session_without_a_retry_loop() {
    let emu = emulator().await;
    let bad = SalesforceClient::new(
        config(&emu),
        Credentials::AccessToken {
            instance_url: emu.running.base_url.clone(),
            access_token: Secret::new("00Dxx0000000001!AQgarbage"),
        },
    )
    .unwrap();
    let refused_before = emu.running.state.limits.refused();
    let started = std::time::Instant::now();
    let err = bad.describe_global().await.unwrap_err();
    let e = api(&err);
    assert_eq!(e.status, 401);
    assert_eq!(e.error_code, "INVALID_SESSION_ID");
    assert_eq!(e.message, "Session expired or invalid");
    assert_eq!(err.class(), ErrorClass::RefreshAuth);
    assert_eq!(
        bad.tokens().mint_count(),
        0,
        "a fixed token is never re-minted"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(server_used(&emu), 0, "unauthenticated calls are free");
    assert_eq!(emu.running.state.limits.refused(), refused_before);
    // Every kind of call fails the same way.
    let err = bad
        .create("Account", &json!({"Name": "x"}))
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some("INVALID_SESSION_ID"));
    let err = bad.bulk().list_jobs(JobKind::Ingest).await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    assert_eq!(err.class(), ErrorClass::RefreshAuth);
    assert_eq!(org_count(&emu, "SELECT COUNT() FROM Account", true), 0);

    // Bad credentials at the token endpoint.
    let file = sfsync_salesforce::CredentialsFile::load(&emu.running.credentials_path).unwrap();
    let mut creds = file.credentials(AuthFlow::Password).unwrap();
    if let Credentials::Password { password, .. } = &mut creds {
        *password = Secret::new("wrong");
    }
    let c = SalesforceClient::new(config(&emu), creds).unwrap();
    let err = c.describe_global().await.unwrap_err();
    match &err {
        SalesforceError::Auth {
            status,
            error,
            flow,
            ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(error, "invalid_grant");
            assert_eq!(*flow, "password");
        }
        other => panic!("expected an Auth error, got {other:?}"),
    }
    assert_eq!(err.class(), ErrorClass::User);
    let mut creds = file.credentials(AuthFlow::ClientCredentials).unwrap();
    if let Credentials::ClientCredentials { client_secret, .. } = &mut creds {
        *client_secret = Secret::new("wrong");
    }
    let c = SalesforceClient::new(config(&emu), creds).unwrap();
    let err = c.describe_global().await.unwrap_err();
    assert_eq!(err.error_code(), Some("invalid_client"), "{err}");
    assert_eq!(err.class(), ErrorClass::User);
    let mut creds = file.credentials(AuthFlow::RefreshToken).unwrap();
    if let Credentials::RefreshToken { refresh_token, .. } = &mut creds {
        *refresh_token = Secret::new("5Aep861bogus");
    }
    let c = SalesforceClient::new(config(&emu), creds).unwrap();
    let err = c.describe_global().await.unwrap_err();
    assert_eq!(err.error_code(), Some("invalid_grant"), "{err}");
}

#[tokio::test]
async fn expired_session_is_renewed_once_and_a_renewal_that_fails_is_reported() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    c.describe_global().await.unwrap();
    let old = c.access_token().await.unwrap();
    assert_eq!(c.tokens().mint_count(), 1);
    let auth = &emu.running.state.auth;

    // Timeout 0: the session is dead after the next millisecond; so is any new one.
    auth.set_timeout(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let fixed = SalesforceClient::new(
        config(&emu),
        Credentials::AccessToken {
            instance_url: emu.running.base_url.clone(),
            access_token: old.access_token.clone(),
        },
    )
    .unwrap();
    let err = fixed.describe_global().await.unwrap_err();
    assert_eq!(err.error_code(), Some("INVALID_SESSION_ID"));
    assert_eq!(err.class(), ErrorClass::RefreshAuth);

    // Restored: the old token stays dead; the client re-mints exactly once and succeeds.
    auth.set_timeout(Duration::from_secs(2 * 3600));
    let err = fixed.describe_global().await.unwrap_err();
    assert_eq!(
        err.error_code(),
        Some("INVALID_SESSION_ID"),
        "expired stays expired"
    );
    let used = server_used(&emu);
    let d = c.describe_object("Lead").await.unwrap();
    assert_eq!(d.name, "Lead");
    assert_eq!(c.tokens().mint_count(), 2);
    assert_ne!(
        c.access_token().await.unwrap().access_token.expose(),
        old.access_token.expose()
    );
    assert_eq!(server_used(&emu), used + 1);
    // The new session keeps working.
    c.describe_object("Case").await.unwrap();
    assert_eq!(c.tokens().mint_count(), 2);

    // A session that dies again right after renewal: one re-auth, then the 401 is reported.
    auth.expire_all();
    auth.set_timeout(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let slow = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // The renewed token is only valid within its first millisecond; on a fast machine
            // the retry may land in it. Keep going until the 401 surfaces.
            match c.describe_object("Case").await {
                Ok(_) => {
                    auth.expire_all();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the 401 surfaces");
    assert_eq!(slow.error_code(), Some("INVALID_SESSION_ID"), "{slow}");
    assert_eq!(slow.class(), ErrorClass::RefreshAuth);
    auth.set_timeout(Duration::from_secs(2 * 3600));
}

// ---------------------------------------------------------------------------------------------
// Allocations
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn daily_allocation_exhausted_by_others_defers_and_never_relogs_in() {
    let emu = emulator().await;
    let mut cfg = config(&emu);
    cfg.budget.probe_initial_ms = 20;
    cfg.budget.probe_max_ms = 100;
    let c = client_with(&emu, AuthFlow::JwtBearer, cfg);
    c.describe_global().await.unwrap();
    let mints = c.tokens().mint_count();
    assert_eq!(mints, 1);
    let limits = &emu.running.state.limits;
    let (used, _) = limits.api_usage();
    // Another integration burned the whole allocation behind our back.
    limits.set_config(LimitsConfig {
        daily_api_requests: used,
        ..LimitsConfig::default()
    });
    let refused = limits.refused();
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.describe_object("Account").await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!call.is_finished(), "deferred, not failed");
    assert!(
        limits.refused() > refused,
        "Salesforce refused it at least once"
    );
    let st = c.budget_status();
    assert!(st.exhausted, "{st:?}");
    assert_eq!(c.tokens().mint_count(), mints, "no re-login on 403");
    let e = sfsync_salesforce::error::parse_error_body(
        "GET",
        "/x",
        403,
        br#"[{"errorCode":"REQUEST_LIMIT_EXCEEDED","message":"TotalRequests Limit exceeded."}]"#,
    );
    assert_eq!(e.class, ErrorClass::Defer);

    // A new window: the deferred call goes out and succeeds with the same token.
    limits.reset_usage();
    limits.set_config(LimitsConfig::default());
    let d = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("resumes once the budget frees up")
        .unwrap()
        .unwrap();
    assert_eq!(d.name, "Account");
    assert!(!c.budget_status().exhausted);
    assert_eq!(c.tokens().mint_count(), mints);
}

#[tokio::test]
async fn concurrent_long_running_limit_refuses_while_a_request_is_in_flight() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    let bulk = c.bulk_with(bulk_config());
    let job = bulk
        .create_ingest_job(&IngestJobRequest::new("Account", IngestOperation::Insert))
        .await
        .unwrap();
    let limits = &emu.running.state.limits;
    limits.set_config(LimitsConfig {
        concurrent_long_running: 1,
        long_running_threshold: Duration::ZERO,
        ..LimitsConfig::default()
    });
    emu.running.state.faults.set(FaultConfig {
        latency_ms: 20,
        ..FaultConfig::default()
    });

    // An upload whose body trickles in keeps one request in flight.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let token = c.access_token().await.unwrap();
    let url = format!("{}{V}/jobs/ingest/{}/batches", emu.running.base_url, job.id);
    let used = server_used(&emu);
    let upload = tokio::spawn(
        c.http()
            .put(url)
            .bearer_auth(token.access_token.expose())
            .header("Content-Type", "text/csv")
            .body(body)
            .send(),
    );
    tx.send(Ok(Bytes::from_static(b"Name\nSlow One\n")))
        .await
        .unwrap();
    assert!(
        wait_until(10, || server_used(&emu) == used + 1).await,
        "the upload is counted and in flight"
    );
    let mints = c.tokens().mint_count();
    let refused = limits.refused();
    // Refused with ConcurrentPerOrgLongTxn: retried with backoff until the upload finishes.
    let describe = tokio::spawn({
        let c = c.clone();
        async move { c.describe_object("Account").await }
    });
    assert!(
        wait_until(10, || limits.refused() > refused).await,
        "the concurrent limit refuses it"
    );
    assert!(!describe.is_finished(), "deferred, not failed");
    assert_eq!(c.tokens().mint_count(), mints);

    // The upload finishes; the limit frees up and the deferred call goes through.
    tx.send(Ok(Bytes::from_static(b"Slow Two\n")))
        .await
        .unwrap();
    drop(tx);
    let resp = upload.await.unwrap().unwrap();
    assert_eq!(resp.status(), 201);
    let d = describe.await.unwrap().unwrap();
    assert_eq!(d.name, "Account");
    let closed = bulk.close(&job.id).await.unwrap();
    assert_eq!(closed.state, JobState::UploadComplete);
    let done = bulk.wait_ingest(&job.id).await.unwrap();
    assert_eq!(done.number_records_processed, 2);
    assert_eq!(
        org_rows(&emu, "SELECT Name FROM Account ORDER BY Name", false),
        vec![vec![json!("Slow One")], vec![json!("Slow Two")]]
    );
}

#[tokio::test]
async fn bulk_query_job_allocation_exhausted_is_limit_exceeded() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    let bulk = c.bulk_with(bulk_config());
    seed(&emu, "Account", vec![json!({"Name": "One"})]);
    let limits = &emu.running.state.limits;
    limits.reset_usage();
    limits.set_config(LimitsConfig {
        daily_bulk_query_jobs: 2,
        ..LimitsConfig::default()
    });
    for _ in 0..2 {
        let (_, rows) = bulk
            .query(&QueryJobRequest::new("SELECT Name FROM Account"), None)
            .await
            .unwrap()
            .collect_all()
            .await
            .unwrap();
        assert_eq!(rows, vec![vec!["One"]]);
    }
    let l = c.limits().await.unwrap();
    let q = l.get("DailyBulkV2QueryJobs").unwrap();
    assert_eq!((q.max, q.remaining), (2, 0));
    let mints = c.tokens().mint_count();
    let err = bulk
        .query(&QueryJobRequest::new("SELECT Name FROM Account"), None)
        .await
        .unwrap_err();
    let e = api(&err);
    assert_eq!(e.status, 400);
    assert_eq!(e.error_code, "LIMIT_EXCEEDED");
    assert!(e.message.contains("query jobs"), "{err}");
    assert_eq!(err.class(), ErrorClass::Defer);
    assert_eq!(c.tokens().mint_count(), mints);
    assert_eq!(bulk.list_jobs(JobKind::Query).await.unwrap().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Injected faults
// ---------------------------------------------------------------------------------------------

fn rule(path: &str, method: &str, kind: FaultKind, max: u64) -> FaultRule {
    FaultRule {
        path_contains: path.into(),
        method: Some(method.into()),
        kind,
        rate: 1.0,
        max_count: Some(max),
        fired: 0,
    }
}

#[tokio::test]
async fn injected_transient_faults_are_retry_class_and_idempotent_calls_recover() {
    let emu = emulator().await;
    let faults = &emu.running.state.faults;

    // Without retries: the fault surfaces with its class.
    let mut cfg = config(&emu);
    cfg.retry = sfsync_salesforce::RetryPolicy::none();
    let once = client_with(&emu, AuthFlow::Password, cfg);
    once.describe_global().await.unwrap();
    faults.set(FaultConfig {
        rules: vec![rule(
            "/sobjects/Account/describe",
            "GET",
            FaultKind::ServerUnavailable,
            1,
        )],
        ..FaultConfig::default()
    });
    let err = once.describe_object("Account").await.unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.error_code(), Some("SERVER_UNAVAILABLE"));
    assert_eq!(err.class(), ErrorClass::Retry);
    assert_eq!(faults.get().rules[0].fired, 1);
    once.describe_object("Account").await.unwrap();

    // With a retry policy: an idempotent GET succeeds once max_count is exhausted.
    let c = client(&emu, AuthFlow::Password);
    c.describe_global().await.unwrap();
    for (kind, code, status) in [
        (FaultKind::ServerUnavailable, "SERVER_UNAVAILABLE", 503),
        (FaultKind::UnableToLockRow, "UNABLE_TO_LOCK_ROW", 400),
        (FaultKind::QueryTimeout, "QUERY_TIMEOUT", 400),
    ] {
        faults.set(FaultConfig {
            rules: vec![rule("/sobjects/Contact/describe", "GET", kind, 3)],
            ..FaultConfig::default()
        });
        let used = server_used(&emu);
        let d = c
            .describe_object("Contact")
            .await
            .unwrap_or_else(|e| panic!("{code}: {}", e.report()));
        assert_eq!(d.name, "Contact");
        assert_eq!(faults.get().rules[0].fired, 3, "{code}");
        assert_eq!(
            server_used(&emu),
            used + 4,
            "{code}: 3 failures + 1 success"
        );
        // One more fault than attempts: the last error surfaces.
        faults.set(FaultConfig {
            rules: vec![rule("/sobjects/Contact/describe", "GET", kind, 4)],
            ..FaultConfig::default()
        });
        let err = c.describe_object("Contact").await.unwrap_err();
        assert_eq!(err.status(), Some(status), "{code}");
        assert_eq!(err.error_code(), Some(code));
        assert_eq!(err.class(), ErrorClass::Retry);
        assert_eq!(faults.get().rules[0].fired, 4, "{code}: 4 attempts");
    }

    // A non-idempotent POST is not retried automatically, and nothing was committed.
    faults.set(FaultConfig {
        rules: vec![rule(
            "/sobjects/Account",
            "POST",
            FaultKind::UnableToLockRow,
            5,
        )],
        ..FaultConfig::default()
    });
    let err = c
        .create("Account", &json!({"Name": "Locked"}))
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some("UNABLE_TO_LOCK_ROW"));
    assert_eq!(err.class(), ErrorClass::Retry);
    assert_eq!(faults.get().rules[0].fired, 1, "sent once");
    assert_eq!(org_count(&emu, "SELECT COUNT() FROM Account", true), 0);

    // Query paging survives a transient fault on a later page.
    faults.set(FaultConfig::default());
    seed(
        &emu,
        "Account",
        (0..450).map(|i| json!({"Name": format!("F{i}")})).collect(),
    );
    faults.set(FaultConfig {
        rules: vec![rule(
            &format!("{V}/query/"),
            "GET",
            FaultKind::ServerUnavailable,
            2,
        )],
        ..FaultConfig::default()
    });
    let rows = c
        .query_all_pages(
            "SELECT Id FROM Account",
            QueryOptions {
                batch_size: Some(200),
                include_deleted: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 450);
    assert_eq!(faults.get().rules[0].fired, 2);
    assert_eq!(c.tokens().mint_count(), 1, "faults never cause a re-login");
}
