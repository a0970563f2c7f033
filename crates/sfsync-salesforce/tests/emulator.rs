//! Round trips against the real sfsync emulator over HTTPS: every OAuth flow from its
//! credentials file, REST describe/DML/upsert/SOQL, sObject Collections, Composite, limits and
//! usage, Bulk 2.0 ingest (split into several jobs) with results, and Bulk query streaming.

use futures::StreamExt;
use sfsync_core::ErrorClass;
use sfsync_salesforce::bulk::csv::{BulkCsvWriter, BulkValue};
use sfsync_salesforce::bulk::{IngestJobRequest, JobKind, JobState, QueryJobRequest};
use sfsync_salesforce::{
    AuthFlow, BulkConfig, ClientConfig, CredentialsFile, QueryOptions, Record, SalesforceClient,
    SalesforceError,
};

struct Emu {
    running: sfsync_emulator::RunningEmulator,
    _dir: tempfile::TempDir,
}

async fn emulator() -> Emu {
    let dir = tempfile::tempdir().unwrap();
    let running = sfsync_emulator::start(sfsync_emulator::EmulatorConfig::ephemeral(dir.path()))
        .await
        .expect("emulator starts");
    Emu { running, _dir: dir }
}

fn client(emu: &Emu, flow: AuthFlow) -> SalesforceClient {
    let file = CredentialsFile::load(&emu.running.credentials_path).unwrap();
    let mut config =
        ClientConfig::new(&emu.running.base_url, Some(emu.running.ca_pem_path.clone()));
    config.call_options_client = Some("sfsync-it".into());
    SalesforceClient::new(config, file.credentials(flow).unwrap()).unwrap()
}

fn rec(v: serde_json::Value) -> Record {
    v.as_object().unwrap().clone()
}

#[tokio::test]
async fn every_oauth_flow_gets_a_token() {
    let emu = emulator().await;
    for flow in [
        AuthFlow::JwtBearer,
        AuthFlow::ClientCredentials,
        AuthFlow::RefreshToken,
        AuthFlow::Password,
    ] {
        let c = client(&emu, flow);
        let t = c
            .access_token()
            .await
            .unwrap_or_else(|e| panic!("{flow:?}: {}", e.report()));
        assert_eq!(
            t.org_id.as_deref(),
            Some(emu.running.credentials.org_id.as_str()),
            "{flow:?}: org id from the identity URL"
        );
        let versions = c.versions().await.unwrap();
        assert!(versions.iter().any(|v| v.version == "66.0"), "{versions:?}");
    }
    let preferred = CredentialsFile::load(&emu.running.credentials_path)
        .unwrap()
        .preferred()
        .unwrap();
    assert_eq!(preferred.flow_name(), "jwt_bearer");
}

#[tokio::test]
async fn rest_describe_dml_query_and_limits() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    let g = c.describe_global().await.unwrap();
    assert!(g.sobjects.iter().any(|o| o.name == "Account"));
    let d = c.describe_object("Account").await.unwrap();
    assert_eq!(d.key_prefix.as_deref(), Some("001"));
    assert!(d.field("Name").is_some());

    let created = c
        .create("Account", &serde_json::json!({"Name": "Acme"}))
        .await
        .unwrap();
    assert!(created.success);
    let id = created.id.clone().unwrap();
    c.update("Account", &id, &serde_json::json!({"Name": "Acme 2"}))
        .await
        .unwrap();
    let got = c.retrieve("Account", &id, Some(&["Name"])).await.unwrap();
    assert_eq!(got["Name"], "Acme 2");
    assert!(c.api_usage().unwrap().used > 0);

    let up = c
        .upsert(
            "Account",
            "External_Id__c",
            "EXT-1",
            &serde_json::json!({"Name": "Ext"}),
        )
        .await
        .unwrap();
    assert!(up.created);
    let up = c
        .upsert(
            "Account",
            "External_Id__c",
            "EXT-1",
            &serde_json::json!({"Name": "Ext 2"}),
        )
        .await
        .unwrap();
    assert!(!up.created);

    let rows = c
        .query_all_pages("SELECT Id, Name FROM Account", QueryOptions::default())
        .await
        .unwrap();
    assert!(rows.len() >= 2);

    c.delete("Account", &id).await.unwrap();
    let err = c.retrieve("Account", &id, None).await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    assert_eq!(err.class(), ErrorClass::User);
    let err = c
        .query_all_pages("SELECT Nope FROM Account", QueryOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, SalesforceError::Api(_)), "{err:?}");
    assert_eq!(err.class(), ErrorClass::User);

    let limits = c.limits().await.unwrap();
    assert!(limits.get("DailyApiRequests").is_some(), "{limits:?}");
}

#[tokio::test]
async fn collections_and_composite() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::ClientCredentials);
    let recs: Vec<Record> = (0..5)
        .map(|i| rec(serde_json::json!({"Name": format!("Coll {i}")})))
        .collect();
    let res = c.collection_create("Account", &recs, false).await.unwrap();
    assert_eq!(res.len(), 5);
    assert!(res.iter().all(|r| r.success), "{res:?}");
    let ids: Vec<String> = res.iter().map(|r| r.id.clone().unwrap()).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let got = c
        .collection_retrieve("Account", &id_refs, &["Name"])
        .await
        .unwrap();
    assert_eq!(got[0].as_ref().unwrap()["Name"], "Coll 0");
    let ups: Vec<Record> = (0..3)
        .map(|i| rec(serde_json::json!({"External_Id__c": format!("C-{i}"), "Name": "U"})))
        .collect();
    let res = c
        .collection_upsert("Account", "External_Id__c", &ups, true)
        .await
        .unwrap();
    assert!(res.iter().all(|r| r.created == Some(true)), "{res:?}");
    let too_many: Vec<Record> = (0..201)
        .map(|_| rec(serde_json::json!({"Name": "x"})))
        .collect();
    let err = c
        .collection_create("Account", &too_many, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("201 items"), "{err}");
    let del = c.collection_delete(&id_refs, false).await.unwrap();
    assert!(del.iter().all(|r| r.success), "{del:?}");

    let comp = sfsync_salesforce::composite::CompositeRequest {
        all_or_none: true,
        collate_subrequests: false,
        composite_request: vec![
            sfsync_salesforce::composite::CompositeSubrequest {
                method: "POST".into(),
                url: "/services/data/v66.0/sobjects/Account".into(),
                reference_id: "acct".into(),
                body: Some(serde_json::json!({"Name": "Parent"})),
                http_headers: None,
            },
            sfsync_salesforce::composite::CompositeSubrequest {
                method: "GET".into(),
                url: "/services/data/v66.0/sobjects/Account/@{acct.id}".into(),
                reference_id: "read".into(),
                body: None,
                http_headers: None,
            },
        ],
    };
    let resp = c.composite(&comp).await.unwrap();
    assert!(
        resp.composite_response.iter().all(|r| r.is_success()),
        "{resp:?}"
    );
    assert_eq!(resp.composite_response[1].body["Name"], "Parent");
}

#[tokio::test]
async fn bulk_ingest_split_into_jobs_then_bulk_query_streams() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    let mut w = BulkCsvWriter::new(b',', false);
    w.write_header(["Name", "External_Id__c", "Description"])
        .unwrap();
    for i in 0..500 {
        let name = format!("Bulk, \"{i}\"");
        let ext = format!("B-{i}");
        w.write_record([
            BulkValue::Text(&name),
            BulkValue::Text(&ext),
            if i % 2 == 0 {
                BulkValue::Text("line1\nline2")
            } else {
                BulkValue::Null
            },
        ])
        .unwrap();
    }
    let data = w.into_bytes();
    let bulk = c.bulk_with(BulkConfig {
        max_upload_bytes: data.len() / 3 + 100,
        poll: sfsync_salesforce::bulk::PollPolicy {
            initial_interval_ms: 20,
            max_interval_ms: 200,
            multiplier: 2.0,
            timeout_secs: 60,
        },
        ..BulkConfig::default()
    });
    let jobs = bulk
        .ingest(&IngestJobRequest::upsert("Account", "External_Id__c"), data)
        .await
        .unwrap_or_else(|e| panic!("{}", e.report()));
    assert!(jobs.len() >= 3, "{} jobs", jobs.len());
    let processed: u64 = jobs.iter().map(|j| j.number_records_processed).sum();
    assert_eq!(processed, 500);
    assert!(jobs
        .iter()
        .all(|j| j.state == JobState::JobComplete && j.number_records_failed == 0));
    let (header, rows) = bulk
        .successful_results(&jobs[0].id)
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(&header[..2], &["sf__Id", "sf__Created"]);
    assert!(!rows.is_empty());
    let (_, failed) = bulk
        .failed_results(&jobs[0].id)
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert!(failed.is_empty());
    assert!(bulk.list_jobs(JobKind::Ingest).await.unwrap().len() >= 3);

    let stream = bulk
        .query(
            &QueryJobRequest::new(
                "SELECT Id, Name, Description FROM Account WHERE External_Id__c != null",
            ),
            Some(120),
        )
        .await
        .unwrap_or_else(|e| panic!("{}", e.report()));
    let pages_before = stream.pages();
    assert_eq!(pages_before, 1);
    let mut records = stream.into_records();
    let mut n = 0;
    let mut multiline = 0;
    while let Some(r) = records.next().await {
        let r = r.unwrap();
        assert_eq!(r.len(), 3);
        assert!(r[1].starts_with("Bulk, \""), "{r:?}");
        if r[2] == "line1\nline2" {
            multiline += 1;
        }
        n += 1;
    }
    assert_eq!(n, 500);
    assert_eq!(multiline, 250);
}
