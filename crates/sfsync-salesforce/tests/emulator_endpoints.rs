//! The sfsync client against the running emulator, endpoint by endpoint: every OAuth flow with
//! token reuse and one re-authentication after forced expiry, versions, global and object
//! describe for every object, record CRUD with the recycle bin, upsert 201/200/300/404, SOQL
//! paging, relationships, COUNT() and date literals, sObject Collections, Composite and
//! Composite Batch, `/limits` with `Sforce-Limit-Info` tracking, and Bulk 2.0 ingest and query.
//! Every assertion is on concrete values, checked where it matters against the org itself.

mod common;

use std::collections::BTreeSet;

use common::*;
use futures::StreamExt;
use serde_json::json;
use sfsync_core::ErrorClass;
use sfsync_salesforce::bulk::csv::{BulkCsvWriter, BulkValue};
use sfsync_salesforce::bulk::{
    parse_failed_result_error, ColumnDelimiter, IngestJobRequest, IngestOperation, JobKind,
    JobState, LineEnding, QueryJobRequest, QueryResultsOptions,
};
use sfsync_salesforce::composite::{
    BatchRequest, BatchSubrequest, CompositeRequest, CompositeSubrequest,
};
use sfsync_salesforce::{AuthFlow, QueryOptions, Record, SalesforceError};

const V: &str = "/services/data/v66.0";

// ---------------------------------------------------------------------------------------------
// OAuth
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_oauth_flow_reuses_its_token_and_reauthenticates_once_after_expiry() {
    let emu = emulator().await;
    let org_id = emu.running.credentials.org_id.clone();
    for flow in [
        AuthFlow::JwtBearer,
        AuthFlow::ClientCredentials,
        AuthFlow::RefreshToken,
        AuthFlow::Password,
    ] {
        let c = client(&emu, flow);
        assert_eq!(c.tokens().mint_count(), 0, "{flow:?}: no network in new()");
        let t = c
            .access_token()
            .await
            .unwrap_or_else(|e| panic!("{flow:?}: {}", e.report()));
        assert_eq!(t.org_id.as_deref(), Some(org_id.as_str()), "{flow:?}");
        let user = t.user_id.clone().unwrap_or_default();
        assert!(
            user.starts_with("005") && user.len() == 18,
            "{flow:?}: {user}"
        );
        assert!(
            t.access_token.expose().starts_with(&org_id[..15]),
            "{flow:?}: Salesforce-style token '<org15>!…'"
        );
        assert_eq!(t.instance_url, emu.running.base_url, "{flow:?}: no path");
        if flow == AuthFlow::RefreshToken {
            assert!(
                t.refresh_token.is_none(),
                "the refresh-token flow does not hand out a new refresh token"
            );
        }
        // Reuse: three calls, one token.
        let first = t.access_token.expose().to_string();
        for _ in 0..3 {
            let g = c.describe_global().await.unwrap();
            assert!(g.sobjects.iter().any(|o| o.name == "Payment__c"));
        }
        assert_eq!(c.tokens().mint_count(), 1, "{flow:?}: token reused");
        assert_eq!(c.access_token().await.unwrap().access_token.expose(), first);

        // Forced expiry: one 401, one re-mint, success — and the 401 costs no API request.
        let expired = emu.running.state.auth.expire_all();
        assert!(expired >= 1, "{flow:?}");
        let used = server_used(&emu);
        let d = c
            .describe_object("Account")
            .await
            .unwrap_or_else(|e| panic!("{flow:?}: {}", e.report()));
        assert_eq!(d.name, "Account");
        assert_eq!(c.tokens().mint_count(), 2, "{flow:?}: exactly one re-mint");
        assert_ne!(
            c.access_token().await.unwrap().access_token.expose(),
            first,
            "{flow:?}: a new token"
        );
        assert_eq!(server_used(&emu), used + 1, "{flow:?}: the 401 was free");
    }
}

#[tokio::test]
async fn concurrent_callers_share_one_reauthentication() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::JwtBearer);
    c.describe_global().await.unwrap();
    assert_eq!(c.tokens().mint_count(), 1);
    emu.running.state.auth.expire_all();
    let calls = (0..8).map(|_| {
        let c = c.clone();
        async move { c.describe_object("Contact").await.map(|d| d.name) }
    });
    let names = futures::future::join_all(calls).await;
    for n in names {
        assert_eq!(n.unwrap(), "Contact");
    }
    assert_eq!(
        c.tokens().mint_count(),
        2,
        "single-flight re-authentication"
    );
}

// ---------------------------------------------------------------------------------------------
// Versions and describe
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn versions_and_global_describe() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    let versions = c.versions().await.unwrap();
    let names: Vec<&str> = versions.iter().map(|v| v.version.as_str()).collect();
    let expected: Vec<String> = (50..=66).map(|v| format!("{v}.0")).collect();
    assert_eq!(names, expected, "v50.0 … v66.0 in order");
    let v66 = versions.iter().find(|v| v.version == "66.0").unwrap();
    assert_eq!(v66.url, "/services/data/v66.0");

    let g = c.describe_global().await.unwrap();
    let by_name = |n: &str| {
        g.sobjects
            .iter()
            .find(|o| o.name == n)
            .unwrap_or_else(|| panic!("{n} missing from global describe"))
    };
    for (name, prefix, custom) in [
        ("Account", "001", false),
        ("Contact", "003", false),
        ("Lead", "00Q", false),
        ("Opportunity", "006", false),
        ("Case", "500", false),
        ("User", "005", false),
        ("Service_Request__c", "a00", true),
        ("Payment__c", "a01", true),
    ] {
        let o = by_name(name);
        assert_eq!(o.key_prefix.as_deref(), Some(prefix), "{name}");
        assert_eq!(o.custom, custom, "{name}");
        assert!(o.queryable, "{name}");
        assert_eq!(
            o.urls.get("describe").map(String::as_str),
            Some(format!("{V}/sobjects/{name}/describe").as_str()),
            "{name}"
        );
    }
    // Every object in global describe is describable.
    for o in &g.sobjects {
        let d = c
            .describe_object(&o.name)
            .await
            .unwrap_or_else(|e| panic!("{}: {}", o.name, e.report()));
        assert_eq!(d.name, o.name);
        assert_eq!(d.key_prefix, o.key_prefix);
        let id = d.field("Id").unwrap();
        assert_eq!(id.field_type, "id", "{}", o.name);
        assert_eq!(id.length, 18, "{}", o.name);
        for sys in ["CreatedDate", "LastModifiedDate", "SystemModstamp"] {
            let f = d.field(sys).unwrap_or_else(|| panic!("{}.{sys}", o.name));
            assert_eq!(f.field_type, "datetime", "{}.{sys}", o.name);
            assert!(!f.createable && !f.updateable, "{}.{sys}", o.name);
        }
        for sys in ["CreatedById", "LastModifiedById"] {
            let f = d.field(sys).unwrap();
            assert_eq!(f.reference_to, vec!["User"], "{}.{sys}", o.name);
        }
    }
}

fn picklist(d: &sfsync_salesforce::rest::ObjectDescribe, field: &str) -> Vec<String> {
    d.field(field)
        .unwrap_or_else(|| panic!("{}.{field}", d.name))
        .picklist_values
        .iter()
        .map(|p| p.value.clone())
        .collect()
}

#[tokio::test]
async fn describe_every_object_with_key_field_metadata() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::ClientCredentials);

    let d = c.describe_object("Account").await.unwrap();
    assert_eq!(d.key_prefix.as_deref(), Some("001"));
    assert!(d.createable && d.updateable && d.deletable && d.queryable);
    let name = d.field("Name").unwrap();
    assert_eq!(name.field_type, "string");
    assert!(!name.nillable, "Account.Name is required");
    let billing = d.field("BillingAddress").unwrap();
    assert_eq!(billing.field_type, "address");
    assert!(billing.is_compound());
    for part in ["BillingStreet", "BillingCity", "BillingPostalCode"] {
        assert_eq!(
            d.field(part).unwrap().compound_field_name.as_deref(),
            Some("BillingAddress"),
            "{part}"
        );
    }
    assert_eq!(d.field("BillingCity").unwrap().length, 40);
    assert_eq!(d.field("BillingLatitude").unwrap().field_type, "double");
    let owner = d.field("OwnerId").unwrap();
    assert_eq!(owner.field_type, "reference");
    assert_eq!(owner.reference_to, vec!["User"]);
    assert_eq!(owner.relationship_name.as_deref(), Some("Owner"));
    let parent = d.field("ParentId").unwrap();
    assert_eq!(parent.reference_to, vec!["Account"]);
    assert_eq!(parent.relationship_name.as_deref(), Some("Parent"));
    assert_eq!(
        picklist(&d, "Type"),
        vec![
            "Prospect",
            "Customer - Direct",
            "Customer - Channel",
            "Channel Partner / Reseller",
            "Installation Partner",
            "Technology Partner",
            "Other"
        ]
    );
    assert!(picklist(&d, "Industry").contains(&"Government".to_string()));
    let ext = d.field("External_Id__c").unwrap();
    assert!(ext.external_id && ext.custom && ext.id_lookup);
    assert_eq!(ext.field_type, "string");
    let rpe = d.field("Revenue_Per_Employee__c").unwrap();
    assert!(rpe.calculated);
    assert_eq!(rpe.field_type, "double");
    assert!(!rpe.createable && !rpe.updateable);
    assert!(
        rpe.calculated_formula
            .as_deref()
            .unwrap_or_default()
            .contains("AnnualRevenue / NumberOfEmployees"),
        "{:?}",
        rpe.calculated_formula
    );
    assert_eq!(d.field("AnnualRevenue").unwrap().field_type, "currency");
    assert_eq!(d.field("NumberOfEmployees").unwrap().field_type, "int");
    assert_eq!(d.field("Website").unwrap().field_type, "url");
    assert_eq!(d.field("Phone").unwrap().field_type, "phone");
    assert_eq!(d.field("Description").unwrap().field_type, "textarea");
    assert_eq!(d.field("IsDeleted").unwrap().field_type, "boolean");

    let d = c.describe_object("Contact").await.unwrap();
    assert_eq!(d.key_prefix.as_deref(), Some("003"));
    for part in ["FirstName", "LastName", "Salutation"] {
        assert_eq!(
            d.field(part).unwrap().compound_field_name.as_deref(),
            Some("Name"),
            "Contact.{part}"
        );
    }
    assert!(!d.field("LastName").unwrap().nillable);
    assert!(!d.field("Name").unwrap().createable);
    let acc = d.field("AccountId").unwrap();
    assert_eq!(acc.reference_to, vec!["Account"]);
    assert_eq!(acc.relationship_name.as_deref(), Some("Account"));
    assert_eq!(d.field("MailingAddress").unwrap().field_type, "address");
    assert_eq!(d.field("Birthdate").unwrap().field_type, "date");
    assert_eq!(d.field("Email").unwrap().field_type, "email");
    let full = d.field("Full_Name__c").unwrap();
    assert!(full.calculated);
    assert!(full
        .calculated_formula
        .as_deref()
        .unwrap_or_default()
        .contains("FirstName"));

    let d = c.describe_object("Lead").await.unwrap();
    assert_eq!(d.key_prefix.as_deref(), Some("00Q"));
    let status = d.field("Status").unwrap();
    assert!(status.restricted_picklist);
    assert_eq!(
        picklist(&d, "Status"),
        vec![
            "Open - Not Contacted",
            "Working - Contacted",
            "Closed - Converted",
            "Closed - Not Converted"
        ]
    );
    assert!(status.defaulted_on_create);
    let default: Vec<&str> = status
        .picklist_values
        .iter()
        .filter(|p| p.default_value)
        .map(|p| p.value.as_str())
        .collect();
    assert_eq!(default, vec!["Open - Not Contacted"]);
    assert_eq!(d.field("Address").unwrap().field_type, "address");
    assert_eq!(
        d.field("City").unwrap().compound_field_name.as_deref(),
        Some("Address")
    );
    assert!(!d.field("Company").unwrap().nillable);
    assert_eq!(
        picklist(&d, "Rating"),
        vec!["Hot", "Warm", "Cold"],
        "Lead.Rating"
    );

    let d = c.describe_object("Opportunity").await.unwrap();
    assert_eq!(d.key_prefix.as_deref(), Some("006"));
    assert!(d.field("StageName").unwrap().restricted_picklist);
    assert_eq!(picklist(&d, "StageName").len(), 8);
    assert_eq!(d.field("CloseDate").unwrap().field_type, "date");
    assert!(!d.field("CloseDate").unwrap().nillable);
    assert_eq!(d.field("Amount").unwrap().field_type, "currency");
    assert_eq!(d.field("Probability").unwrap().field_type, "percent");
    assert_eq!(d.field("IsPrivate").unwrap().field_type, "boolean");

    let d = c.describe_object("Case").await.unwrap();
    assert_eq!(d.key_prefix.as_deref(), Some("500"));
    let cn = d.field("CaseNumber").unwrap();
    assert!(!cn.createable && !cn.updateable);
    assert_eq!(d.field("ContactId").unwrap().reference_to, vec!["Contact"]);
    assert_eq!(d.field("ClosedDate").unwrap().field_type, "datetime");
    assert_eq!(
        picklist(&d, "Priority"),
        vec!["High", "Medium", "Low"],
        "Case.Priority"
    );

    let d = c.describe_object("User").await.unwrap();
    assert_eq!(d.key_prefix.as_deref(), Some("005"));
    let un = d.field("Username").unwrap();
    assert!(un.unique);
    assert!(!un.nillable);
    assert_eq!(d.field("IsActive").unwrap().field_type, "boolean");
    assert_eq!(d.field("Alias").unwrap().length, 8);

    let d = c.describe_object("Service_Request__c").await.unwrap();
    assert!(d.custom);
    assert_eq!(d.key_prefix.as_deref(), Some("a00"));
    assert_eq!(d.label, "Service Request");
    assert_eq!(d.label_plural, "Service Requests");
    let st = d.field("Status__c").unwrap();
    assert!(st.restricted_picklist && st.custom);
    assert_eq!(
        picklist(&d, "Status__c"),
        vec![
            "New",
            "Triaged",
            "In Progress",
            "On Hold",
            "Resolved",
            "Closed"
        ]
    );
    let sum = d.field("Summary__c").unwrap();
    assert!(sum.calculated);
    assert_eq!(
        sum.calculated_formula.as_deref(),
        Some(r#"Name & ": " & Status__c"#)
    );
    let ext = d.field("External_Id__c").unwrap();
    assert!(ext.external_id && ext.unique);
    let contact = d.field("Contact__c").unwrap();
    assert_eq!(contact.reference_to, vec!["Contact"]);
    assert_eq!(contact.relationship_name.as_deref(), Some("Contact__r"));
    let desc = d.field("Description__c").unwrap();
    assert_eq!((desc.field_type.as_str(), desc.length), ("textarea", 32000));
    assert_eq!(d.field("Due_Date__c").unwrap().field_type, "datetime");
    assert_eq!(d.field("Requested_Date__c").unwrap().field_type, "date");
    let amount = d.field("Amount__c").unwrap();
    assert_eq!(
        (amount.field_type.as_str(), amount.precision, amount.scale),
        ("currency", 18, 2)
    );

    let d = c.describe_object("Payment__c").await.unwrap();
    assert!(d.custom);
    assert_eq!(d.key_prefix.as_deref(), Some("a01"));
    let amount = d.field("Amount__c").unwrap();
    assert!(!amount.nillable, "Payment__c.Amount__c is required");
    let sr = d.field("Service_Request__c").unwrap();
    assert_eq!(sr.reference_to, vec!["Service_Request__c"]);
    assert_eq!(sr.relationship_name.as_deref(), Some("Service_Request__r"));
    let rn = d.field("Reference_Number__c").unwrap();
    assert!(rn.external_id && rn.unique);
    assert_eq!(rn.length, 40);
    assert_eq!(
        picklist(&d, "Status__c"),
        vec!["Pending", "Paid", "Failed", "Refunded"]
    );
}

#[tokio::test]
async fn formula_fields_are_computed_on_read() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    let acc = c
        .create(
            "Account",
            &json!({"Name": "Formula Co", "AnnualRevenue": 1000, "NumberOfEmployees": 4}),
        )
        .await
        .unwrap()
        .id
        .unwrap();
    let got = c
        .retrieve("Account", &acc, Some(&["Revenue_Per_Employee__c"]))
        .await
        .unwrap();
    assert_eq!(got["Revenue_Per_Employee__c"].as_f64(), Some(250.0));
    let ct = c
        .create(
            "Contact",
            &json!({"FirstName": "Ada", "LastName": "Lovelace"}),
        )
        .await
        .unwrap()
        .id
        .unwrap();
    let got = c
        .retrieve("Contact", &ct, Some(&["Full_Name__c", "Name"]))
        .await
        .unwrap();
    assert_eq!(got["Full_Name__c"], "Ada Lovelace");
    assert_eq!(got["Name"], "Ada Lovelace");
    let sr = c
        .create("Service_Request__c", &json!({"Name": "Pothole 12"}))
        .await
        .unwrap()
        .id
        .unwrap();
    assert!(sr.starts_with("a00"));
    let got = c
        .retrieve(
            "Service_Request__c",
            &sr,
            Some(&["Summary__c", "Status__c"]),
        )
        .await
        .unwrap();
    assert_eq!(got["Status__c"], "New", "picklist default applied");
    assert_eq!(got["Summary__c"], "Pothole 12: New");
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn record_crud_and_the_recycle_bin() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    let created = c
        .create(
            "Account",
            &json!({"Name": "Acme", "Phone": "555-0100", "BillingCity": "Springfield"}),
        )
        .await
        .unwrap();
    assert!(created.success);
    assert!(created.errors.is_empty());
    let id = created.id.clone().unwrap();
    assert!(id.starts_with("001") && id.len() == 18, "{id}");
    assert_eq!(
        created.sf_id().unwrap().as_str(),
        id,
        "checksum suffix valid"
    );

    // Without a field list: every field, system fields and the compound address.
    let all = c.retrieve("Account", &id, None).await.unwrap();
    assert_eq!(all["Id"], id.as_str());
    assert_eq!(all["Name"], "Acme");
    assert_eq!(all["Phone"], "555-0100");
    assert_eq!(all["attributes"]["type"], "Account");
    assert_eq!(
        all["attributes"]["url"],
        format!("{V}/sobjects/Account/{id}")
    );
    assert_eq!(all["IsDeleted"], false);
    assert!(all["Description"].is_null());
    assert_eq!(all["BillingAddress"]["city"], "Springfield");
    let created_date = all["CreatedDate"].as_str().unwrap().to_string();
    assert!(
        created_date.ends_with("+0000") && created_date.contains('T'),
        "{created_date}"
    );
    let user = emu.running.state.auth.admin().user_id.as_str().to_string();
    assert_eq!(all["CreatedById"], user.as_str());

    // With a field list: only those (and attributes / Id).
    let some = c
        .retrieve("Account", &id, Some(&["Name", "Phone"]))
        .await
        .unwrap();
    assert_eq!(some["Name"], "Acme");
    assert_eq!(some["Phone"], "555-0100");
    assert!(some.get("Description").is_none(), "{some:?}");
    assert!(some.get("BillingCity").is_none(), "{some:?}");

    c.update("Account", &id, &json!({"Name": "Acme Corp", "Phone": null}))
        .await
        .unwrap();
    let after = c.retrieve("Account", &id, None).await.unwrap();
    assert_eq!(after["Name"], "Acme Corp");
    assert!(after["Phone"].is_null());
    assert!(after["LastModifiedDate"].as_str().unwrap() >= created_date.as_str());
    assert_eq!(after["BillingCity"], "Springfield", "untouched");

    c.delete("Account", &id).await.unwrap();
    let err = c.retrieve("Account", &id, None).await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    assert_eq!(err.error_code(), Some("ENTITY_IS_DELETED"));
    assert_eq!(err.class(), ErrorClass::User);
    let err = c
        .update("Account", &id, &json!({"Name": "zombie"}))
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some("ENTITY_IS_DELETED"), "{err}");
    let err = c.delete("Account", &id).await.unwrap_err();
    assert_eq!(err.error_code(), Some("ENTITY_IS_DELETED"), "{err}");

    let soql = format!("SELECT Id, Name, IsDeleted FROM Account WHERE Id = '{id}'");
    let live = c
        .query_all_pages(&soql, QueryOptions::default())
        .await
        .unwrap();
    assert!(live.is_empty());
    let page = c
        .query_page(
            &soql,
            &QueryOptions {
                include_deleted: true,
                ..QueryOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.total_size, 1);
    assert!(page.done);
    assert_eq!(page.records[0]["IsDeleted"], true);
    assert_eq!(page.records[0]["Name"], "Acme Corp");
    let via_stream: Vec<Record> = c
        .query_all(&soql, QueryOptions::default())
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(via_stream.len(), 1);
    assert_eq!(via_stream[0]["IsDeleted"], true);
    // The org agrees: in the recycle bin.
    assert_eq!(
        org_rows(&emu, &soql, true),
        vec![vec![json!(id), json!("Acme Corp"), json!(true)]]
    );
}

#[tokio::test]
async fn upsert_created_updated_multiple_matches_and_not_external_id() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::JwtBearer);
    let up = c
        .upsert(
            "Account",
            "External_Id__c",
            "U-1",
            &json!({"Name": "Upsert One"}),
        )
        .await
        .unwrap();
    assert!(up.created, "201 Created");
    let id = up.id.clone().unwrap();
    assert!(id.starts_with("001"));
    let up2 = c
        .upsert(
            "Account",
            "External_Id__c",
            "U-1",
            &json!({"Name": "Upsert One v2"}),
        )
        .await
        .unwrap();
    assert!(!up2.created, "200 OK");
    assert_eq!(up2.id.as_deref(), Some(id.as_str()), "same record");
    assert_eq!(
        org_rows(
            &emu,
            "SELECT Id, Name FROM Account WHERE External_Id__c = 'U-1'",
            false
        ),
        vec![vec![json!(id), json!("Upsert One v2")]]
    );

    // 300: a non-unique external id (added to the schema) matching two records.
    let field: sfsync_org::FieldDef = serde_json::from_value(json!({
        "name": "Legacy_Key__c", "label": "Legacy Key", "type": "string",
        "length": 40, "external_id": true, "custom": true
    }))
    .unwrap();
    emu.running.org().add_field("Account", field).unwrap();
    let d = c.describe_object("Account").await.unwrap();
    let lk = d.field("Legacy_Key__c").unwrap();
    assert!(lk.external_id && !lk.unique);
    let mut twins = Vec::new();
    for name in ["Twin A", "Twin B"] {
        twins.push(
            c.create("Account", &json!({"Name": name, "Legacy_Key__c": "K1"}))
                .await
                .unwrap()
                .id
                .unwrap(),
        );
    }
    let err = c
        .upsert("Account", "Legacy_Key__c", "K1", &json!({"Phone": "2"}))
        .await
        .unwrap_err();
    match &err {
        SalesforceError::MultipleMatches { method, path, urls } => {
            assert_eq!(method, "PATCH");
            assert_eq!(path, &format!("{V}/sobjects/Account/Legacy_Key__c/K1"));
            assert_eq!(urls.len(), 2, "{urls:?}");
            for t in &twins {
                assert!(
                    urls.iter()
                        .any(|u| u == &format!("{V}/sobjects/Account/{t}")),
                    "{urls:?}"
                );
            }
        }
        other => panic!("expected MultipleMatches, got {other:?}"),
    }
    assert_eq!(err.status(), Some(300));
    assert_eq!(err.class(), ErrorClass::User);
    assert_eq!(
        org_count(&emu, "SELECT COUNT() FROM Account WHERE Phone = '2'", false),
        0,
        "neither twin touched"
    );

    // 404: a field that is not an external id.
    let err = c
        .upsert("Account", "Name", "Upsert One v2", &json!({"Phone": "3"}))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    assert_eq!(err.error_code(), Some("NOT_FOUND"));
    assert_eq!(err.class(), ErrorClass::User);
    assert!(err.to_string().contains("Name"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// SOQL
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn soql_paging_relationships_count_and_date_literals() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    let ids = seed(
        &emu,
        "Account",
        (0..1000)
            .map(|i| json!({"Name": format!("Page {i:04}"), "NumberOfEmployees": i}))
            .collect(),
    );
    assert_eq!(ids.len(), 1000);

    let opts = QueryOptions {
        batch_size: Some(200),
        include_deleted: false,
    };
    let soql = "SELECT Id, Name FROM Account ORDER BY Name";
    let mut page = c.query_page(soql, &opts).await.unwrap();
    let mut pages = 1;
    let mut seen: Vec<String> = Vec::new();
    assert_eq!(page.total_size, 1000);
    loop {
        assert_eq!(page.records.len(), 200, "page {pages}");
        seen.extend(
            page.records
                .iter()
                .map(|r| r["Name"].as_str().unwrap().to_string()),
        );
        if page.done {
            assert!(page.next_records_url.is_none());
            break;
        }
        let next = page.next_records_url.clone().unwrap();
        assert!(next.starts_with(&format!("{V}/query/")), "{next}");
        page = c.query_more(&next, &opts).await.unwrap();
        pages += 1;
    }
    assert_eq!(pages, 5);
    let expected: Vec<String> = (0..1000).map(|i| format!("Page {i:04}")).collect();
    assert_eq!(seen, expected, "ordered, no gaps, no duplicates");

    // The stream walks the same pages.
    let used = server_used(&emu);
    let streamed = c.query_all_pages(soql, opts.clone()).await.unwrap();
    assert_eq!(streamed.len(), 1000);
    assert_eq!(server_used(&emu) - used, 5, "one request per page");
    let unique: BTreeSet<&str> = streamed.iter().map(|r| r["Id"].as_str().unwrap()).collect();
    assert_eq!(unique.len(), 1000);

    // COUNT().
    let count = c
        .query_page("SELECT COUNT() FROM Account", &QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(count.total_size, 1000);
    assert!(count.records.is_empty());
    assert!(count.done);
    let count = c
        .query_page(
            "SELECT COUNT() FROM Account WHERE NumberOfEmployees >= 900",
            &QueryOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(count.total_size, 100);

    // Parent relationship fields.
    let acc = c
        .create("Account", &json!({"Name": "Parent Co"}))
        .await
        .unwrap()
        .id
        .unwrap();
    let with_parent = c
        .create("Contact", &json!({"LastName": "Child", "AccountId": acc}))
        .await
        .unwrap()
        .id
        .unwrap();
    let orphan = c
        .create("Contact", &json!({"LastName": "Orphan"}))
        .await
        .unwrap()
        .id
        .unwrap();
    let rows = c
        .query_all_pages(
            "SELECT Id, LastName, Account.Name, Owner.Username FROM Contact ORDER BY LastName",
            QueryOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["Id"], with_parent.as_str());
    assert_eq!(rows[0]["Account"]["Name"], "Parent Co");
    assert_eq!(rows[0]["Account"]["attributes"]["type"], "Account");
    assert_eq!(
        rows[0]["Owner"]["Username"],
        emu.running.credentials.username.as_str()
    );
    assert_eq!(rows[1]["Id"], orphan.as_str());
    assert!(rows[1]["Account"].is_null(), "{:?}", rows[1]);

    // Date and datetime literals in the forms clients send.
    c.create(
        "Opportunity",
        &json!({"Name": "Deal", "StageName": "Prospecting", "CloseDate": "2024-05-01"}),
    )
    .await
    .unwrap();
    c.create(
        "Case",
        &json!({"Subject": "Late", "ClosedDate": "2024-05-01T12:00:00.000+0000"}),
    )
    .await
    .unwrap();
    for (q, n) in [
        ("SELECT COUNT() FROM Opportunity WHERE CloseDate = 2024-05-01", 1),
        (
            "SELECT COUNT() FROM Opportunity WHERE CloseDate > 2024-04-30 AND CloseDate < 2024-05-02",
            1,
        ),
        ("SELECT COUNT() FROM Opportunity WHERE CloseDate < 2024-05-01", 0),
        ("SELECT COUNT() FROM Case WHERE ClosedDate = 2024-05-01T12:00:00Z", 1),
        (
            "SELECT COUNT() FROM Case WHERE ClosedDate = 2024-05-01T12:00:00.000+0000",
            1,
        ),
        (
            "SELECT COUNT() FROM Case WHERE ClosedDate = 2024-05-01T12:00:00+00:00",
            1,
        ),
        (
            "SELECT COUNT() FROM Case WHERE ClosedDate = 2024-05-01T14:00:00+02:00",
            1,
        ),
        ("SELECT COUNT() FROM Case WHERE ClosedDate > 2024-05-01T12:00:00Z", 0),
        (
            "SELECT COUNT() FROM Case WHERE ClosedDate >= 2024-05-01T12:00:00.000+0000",
            1,
        ),
        (
            "SELECT COUNT() FROM Account WHERE CreatedDate > 2000-01-01T00:00:00Z",
            1001,
        ),
        (
            "SELECT COUNT() FROM Account WHERE CreatedDate < 2000-01-01T00:00:00.000+0000",
            0,
        ),
        (
            "SELECT   COUNT()   FROM   Account   WHERE  CreatedDate  >  2000-01-01T00:00:00+00:00",
            1001,
        ),
    ] {
        let p = c
            .query_page(q, &QueryOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{q}: {}", e.report()));
        assert_eq!(p.total_size, n, "{q}");
    }
}

// ---------------------------------------------------------------------------------------------
// sObject Collections, Composite, Composite Batch
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn collections_create_update_upsert_retrieve_delete_with_record_errors() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::ClientCredentials);
    let res = c
        .collection_create(
            "Account",
            &[
                rec(json!({"Name": "Coll A"})),
                rec(json!({"Phone": "no name"})),
                rec(json!({"Name": "Coll B"})),
            ],
            false,
        )
        .await
        .unwrap();
    assert_eq!(res.len(), 3);
    assert!(res[0].success && res[2].success);
    assert!(!res[1].success);
    assert_eq!(res[1].errors[0].status_code, "REQUIRED_FIELD_MISSING");
    assert_eq!(res[1].errors[0].fields, vec!["Name"]);
    assert_eq!(res[1].errors[0].class(), ErrorClass::User);
    let a = res[0].id.clone().unwrap();
    let b = res[2].id.clone().unwrap();
    assert_eq!(org_count(&emu, "SELECT COUNT() FROM Account", false), 2);

    let res = c
        .collection_update(
            "Account",
            &[
                rec(json!({"Id": a, "Name": "Coll A2"})),
                rec(json!({"Id": b, "Bogus__c": 1})),
            ],
            false,
        )
        .await
        .unwrap();
    assert!(res[0].success, "{res:?}");
    assert_eq!(res[1].errors[0].status_code, "INVALID_FIELD");

    let missing = "001000000000999AAA";
    let got = c
        .collection_retrieve("Account", &[&a, missing, &b], &["Id", "Name"])
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].as_ref().unwrap()["Name"], "Coll A2");
    assert!(got[1].is_none(), "unknown id → null");
    assert_eq!(got[2].as_ref().unwrap()["Name"], "Coll B");

    let res = c
        .collection_upsert(
            "Account",
            "External_Id__c",
            &[
                rec(json!({"External_Id__c": "CU-1", "Name": "Up 1"})),
                rec(json!({"External_Id__c": "CU-2", "Name": "Up 2"})),
            ],
            true,
        )
        .await
        .unwrap();
    assert!(res.iter().all(|r| r.success && r.created == Some(true)));
    let res = c
        .collection_upsert(
            "Account",
            "External_Id__c",
            &[
                rec(json!({"External_Id__c": "CU-1", "Name": "Up 1 v2"})),
                rec(json!({"External_Id__c": "CU-3", "Name": "Up 3"})),
            ],
            false,
        )
        .await
        .unwrap();
    assert_eq!(res[0].created, Some(false));
    assert_eq!(res[1].created, Some(true));
    assert_eq!(
        org_rows(
            &emu,
            "SELECT Name FROM Account WHERE External_Id__c = 'CU-1'",
            false
        ),
        vec![vec![json!("Up 1 v2")]]
    );

    let res = c.collection_delete(&[&a, missing], false).await.unwrap();
    assert!(res[0].success);
    assert_eq!(res[0].id.as_deref(), Some(a.as_str()));
    assert!(!res[1].success);
    assert_eq!(res[1].id.as_deref(), Some(missing));
    assert!(!res[1].errors.is_empty());
    assert_eq!(
        org_count(
            &emu,
            &format!("SELECT COUNT() FROM Account WHERE Id = '{a}'"),
            true
        ),
        1,
        "in the recycle bin"
    );
    assert_eq!(
        org_count(
            &emu,
            &format!("SELECT COUNT() FROM Account WHERE Id = '{a}'"),
            false
        ),
        0
    );
}

#[tokio::test]
async fn collections_all_or_none_commits_nothing_on_one_failure() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    let before = org_count(&emu, "SELECT COUNT() FROM Account", true);
    let res = c
        .collection_create(
            "Account",
            &[
                rec(json!({"Name": "AON 1"})),
                rec(json!({"Name": "AON 2"})),
                rec(json!({"Name": "x".repeat(300)})),
            ],
            true,
        )
        .await
        .unwrap();
    assert_eq!(res.len(), 3);
    assert!(res.iter().all(|r| !r.success), "{res:?}");
    for r in &res[..2] {
        assert_eq!(r.errors[0].status_code, "ALL_OR_NONE_OPERATION_ROLLED_BACK");
        assert_eq!(r.errors[0].class(), ErrorClass::Retry);
        assert!(r.id.is_none());
    }
    assert_eq!(res[2].errors[0].status_code, "STRING_TOO_LONG");
    assert_eq!(res[2].errors[0].fields, vec!["Name"]);
    // Nothing committed, not even to the recycle bin.
    assert_eq!(org_count(&emu, "SELECT COUNT() FROM Account", true), before);
    let q = c
        .query_page(
            "SELECT COUNT() FROM Account WHERE Name LIKE 'AON%'",
            &QueryOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.total_size, 0);

    // Update with allOrNone: the good record's change is rolled back too.
    let ids: Vec<String> = c
        .collection_create(
            "Account",
            &[
                rec(json!({"Name": "Keep 1"})),
                rec(json!({"Name": "Keep 2"})),
            ],
            true,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id.unwrap())
        .collect();
    let res = c
        .collection_update(
            "Account",
            &[
                rec(json!({"Id": ids[0], "Name": "Changed"})),
                rec(json!({"Id": ids[1], "Name": null})),
            ],
            true,
        )
        .await
        .unwrap();
    assert_eq!(
        res[0].errors[0].status_code,
        "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    );
    assert!(!res[1].success);
    let names = c
        .query_all_pages(
            "SELECT Name FROM Account WHERE Name LIKE 'Keep%' ORDER BY Name",
            QueryOptions::default(),
        )
        .await
        .unwrap();
    let names: Vec<&str> = names.iter().map(|r| r["Name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["Keep 1", "Keep 2"]);
}

fn sub(
    method: &str,
    url: String,
    reference: &str,
    body: Option<serde_json::Value>,
) -> CompositeSubrequest {
    CompositeSubrequest {
        method: method.into(),
        url,
        reference_id: reference.into(),
        body,
        http_headers: None,
    }
}

#[tokio::test]
async fn composite_with_references_counts_as_one_call_and_batch_halts_on_error() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    c.limits().await.unwrap();
    let used = c.api_usage().unwrap().used;
    let req = CompositeRequest {
        all_or_none: false,
        collate_subrequests: false,
        composite_request: vec![
            sub(
                "POST",
                format!("{V}/sobjects/Account"),
                "acct",
                Some(json!({"Name": "Composite Co"})),
            ),
            sub(
                "POST",
                format!("{V}/sobjects/Contact"),
                "ct",
                Some(json!({"LastName": "Smith", "AccountId": "@{acct.id}"})),
            ),
            sub(
                "GET",
                format!("{V}/query?q=SELECT+Id,Account.Name+FROM+Contact+WHERE+Id+=+'@{{ct.id}}'"),
                "q",
                None,
            ),
            sub(
                "PATCH",
                format!("{V}/sobjects/Contact/@{{q.records[0].Id}}"),
                "rename",
                Some(json!({"LastName": "Jones"})),
            ),
        ],
    };
    let resp = c.composite(&req).await.unwrap();
    let codes: Vec<u16> = resp
        .composite_response
        .iter()
        .map(|r| r.http_status_code)
        .collect();
    assert_eq!(codes, vec![201, 201, 200, 204], "{resp:?}");
    let refs: Vec<&str> = resp
        .composite_response
        .iter()
        .map(|r| r.reference_id.as_str())
        .collect();
    assert_eq!(refs, vec!["acct", "ct", "q", "rename"]);
    let acct = resp.composite_response[0].body["id"].as_str().unwrap();
    let ct = resp.composite_response[1].body["id"].as_str().unwrap();
    assert_eq!(
        resp.composite_response[2].body["records"][0]["Account"]["Name"],
        "Composite Co"
    );
    assert_eq!(
        org_rows(
            &emu,
            &format!("SELECT LastName, AccountId FROM Contact WHERE Id = '{ct}'"),
            false
        ),
        vec![vec![json!("Jones"), json!(acct)]]
    );
    assert_eq!(
        c.api_usage().unwrap().used,
        used + 1,
        "a composite call is one API request"
    );

    // allOrNone without references: one transaction, rolled back as a whole.
    let req = CompositeRequest {
        all_or_none: true,
        collate_subrequests: false,
        composite_request: vec![
            sub(
                "POST",
                format!("{V}/sobjects/Account"),
                "ok",
                Some(json!({"Name": "Rolled Back"})),
            ),
            sub(
                "POST",
                format!("{V}/sobjects/Account"),
                "bad",
                Some(json!({"Phone": "1"})),
            ),
        ],
    };
    let resp = c.composite(&req).await.unwrap();
    assert!(resp.composite_response.iter().all(|r| !r.is_success()));
    assert_eq!(
        resp.composite_response[1].body[0]["errorCode"],
        "REQUIRED_FIELD_MISSING"
    );
    assert_eq!(
        org_count(
            &emu,
            "SELECT COUNT() FROM Account WHERE Name = 'Rolled Back'",
            true
        ),
        0
    );

    // Composite Batch with haltOnError.
    let batch = |halt| BatchRequest {
        halt_on_error: halt,
        batch_requests: vec![
            BatchSubrequest {
                method: "POST".into(),
                url: "v66.0/sobjects/Account".into(),
                rich_input: Some(json!({"Name": "Batch A"})),
                binary_part_name: None,
            },
            BatchSubrequest {
                method: "GET".into(),
                url: "v66.0/sobjects/Account/001000000000999AAA".into(),
                rich_input: None,
                binary_part_name: None,
            },
            BatchSubrequest {
                method: "GET".into(),
                url: "v66.0/limits".into(),
                rich_input: None,
                binary_part_name: None,
            },
        ],
    };
    let r = c.composite_batch(&batch(false)).await.unwrap();
    assert!(r.has_errors);
    let codes: Vec<u16> = r.results.iter().map(|x| x.status_code).collect();
    assert_eq!(codes, vec![201, 404, 200]);
    assert!(r.results[0].result["id"]
        .as_str()
        .unwrap()
        .starts_with("001"));
    assert_eq!(r.results[1].result[0]["errorCode"], "NOT_FOUND");
    assert!(r.results[2].result["DailyApiRequests"]["Max"].is_u64());

    let r = c.composite_batch(&batch(true)).await.unwrap();
    assert!(r.has_errors);
    let codes: Vec<u16> = r.results.iter().map(|x| x.status_code).collect();
    assert_eq!(codes, vec![201, 404, 412]);
    assert_eq!(
        r.results[2].result[0]["errorCode"],
        "BATCH_PROCESSING_HALTED"
    );
    assert_eq!(
        org_count(
            &emu,
            "SELECT COUNT() FROM Account WHERE Name = 'Batch A'",
            false
        ),
        2,
        "batch sub-requests commit independently"
    );

    let too_many = BatchRequest {
        halt_on_error: false,
        batch_requests: (0..26)
            .map(|_| BatchSubrequest {
                method: "GET".into(),
                url: "v66.0/limits".into(),
                rich_input: None,
                binary_part_name: None,
            })
            .collect(),
    };
    let used = server_used(&emu);
    let err = c.composite_batch(&too_many).await.unwrap_err();
    assert!(
        matches!(err, SalesforceError::InvalidRequest { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("26 items"), "{err}");
    assert_eq!(server_used(&emu), used, "refused before sending");
}

// ---------------------------------------------------------------------------------------------
// Limits and usage
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn limits_resource_and_limit_info_track_exactly_the_calls_made() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    let mut watch = c.watch_api_usage();
    assert!(
        c.api_usage().is_none(),
        "nothing seen before the first call"
    );
    let limits = c.limits().await.unwrap();
    let daily = limits.get("DailyApiRequests").unwrap();
    assert_eq!(daily.max, 300_000);
    let usage = c.api_usage().unwrap();
    assert_eq!(usage.max, 300_000);
    assert_eq!(usage.used as i64, daily.used(), "header and /limits agree");
    assert_eq!(usage.used, server_used(&emu));
    assert!(watch.has_changed().unwrap());
    watch.borrow_and_update();
    let q = limits.get("DailyBulkV2QueryJobs").unwrap();
    assert_eq!((q.max, q.remaining), (10_000, 10_000));
    assert_eq!(limits.get("DailyBulkApiBatches").unwrap().max, 15_000);

    let start = usage.used;
    let id = c
        .create("Account", &json!({"Name": "Usage"}))
        .await
        .unwrap()
        .id
        .unwrap();
    c.retrieve("Account", &id, Some(&["Name"])).await.unwrap();
    c.describe_object("Account").await.unwrap();
    c.query_page("SELECT Id FROM Account", &QueryOptions::default())
        .await
        .unwrap();
    c.update("Account", &id, &json!({"Phone": "1"}))
        .await
        .unwrap();
    assert_eq!(c.api_usage().unwrap().used, start + 5);
    assert!(watch.has_changed().unwrap());
    // A failed call is still an API request.
    c.retrieve("Account", "001000000000999AAA", None)
        .await
        .unwrap_err();
    assert_eq!(c.api_usage().unwrap().used, start + 6);
    let limits = c.limits().await.unwrap();
    let daily = limits.get("DailyApiRequests").unwrap();
    assert_eq!(daily.remaining, 300_000 - (start as i64 + 7));
    assert_eq!(c.api_usage().unwrap().remaining(), daily.remaining as u64);
    // Versions are not a data-API call: not counted.
    c.versions().await.unwrap();
    assert_eq!(server_used(&emu), start + 7);
}

// ---------------------------------------------------------------------------------------------
// Bulk API 2.0 ingest
// ---------------------------------------------------------------------------------------------

fn csv(delim: u8, crlf: bool, header: &[&str], rows: &[Vec<BulkValue<'_>>]) -> bytes::Bytes {
    let mut w = BulkCsvWriter::new(delim, crlf);
    w.write_header(header.iter().copied()).unwrap();
    for r in rows {
        w.write_record(r.iter().copied()).unwrap();
    }
    w.into_bytes()
}

#[tokio::test]
async fn bulk_ingest_every_operation_with_results_and_null_semantics() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    let bulk = c.bulk_with(bulk_config());
    use BulkValue::{Null, Text, Unchanged};

    // insert
    let data = csv(
        b',',
        false,
        &["Name", "External_Id__c", "Phone", "Description"],
        &[
            vec![
                Text("Bulk A"),
                Text("X-1"),
                Text("555-0001"),
                Text("keep me"),
            ],
            vec![Text("Bulk, B"), Text("X-2"), Text("555-0002"), Text("b")],
            vec![Text("Bulk \"C\""), Text("X-3"), Null, Text("line1\nline2")],
        ],
    );
    let jobs = bulk
        .ingest(
            &IngestJobRequest::new("Account", IngestOperation::Insert),
            data,
        )
        .await
        .unwrap_or_else(|e| panic!("{}", e.report()));
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.state, JobState::JobComplete);
    assert_eq!(job.operation.as_deref(), Some("insert"));
    assert_eq!(job.object.as_deref(), Some("Account"));
    assert_eq!(
        (job.number_records_processed, job.number_records_failed),
        (3, 0)
    );
    let (header, ok) = bulk
        .successful_results(&job.id)
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(
        header,
        vec![
            "sf__Id",
            "sf__Created",
            "Name",
            "External_Id__c",
            "Phone",
            "Description"
        ]
    );
    assert_eq!(ok.len(), 3);
    assert!(ok.iter().all(|r| r[1] == "true" && r[0].starts_with("001")));
    let names: Vec<&str> = ok.iter().map(|r| r[2].as_str()).collect();
    assert_eq!(names, vec!["Bulk A", "Bulk, B", "Bulk \"C\""]);
    assert_eq!(ok[2][5], "line1\nline2");
    let id_of = |ext: &str| -> String { ok.iter().find(|r| r[3] == ext).unwrap()[0].clone() };
    let (a, b, cc) = (id_of("X-1"), id_of("X-2"), id_of("X-3"));
    let (_, failed) = bulk
        .failed_results(&job.id)
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert!(failed.is_empty());

    // update: `#N/A` sets null, an empty cell leaves the value unchanged; a bad id fails.
    let data = csv(
        b',',
        false,
        &["Id", "Phone", "Description"],
        &[
            vec![Text(&a), Null, Unchanged],
            vec![Text(&b), Unchanged, Null],
            vec![Text("001000000000999AAA"), Text("1"), Unchanged],
        ],
    );
    let jobs = bulk
        .ingest(
            &IngestJobRequest::new("Account", IngestOperation::Update),
            data,
        )
        .await
        .unwrap();
    let job = &jobs[0];
    assert_eq!(
        (job.number_records_processed, job.number_records_failed),
        (3, 1)
    );
    assert_eq!(
        org_rows(
            &emu,
            &format!("SELECT Phone, Description FROM Account WHERE Id = '{a}'"),
            false
        ),
        vec![vec![json!(null), json!("keep me")]],
        "#N/A → null, empty → unchanged"
    );
    assert_eq!(
        org_rows(
            &emu,
            &format!("SELECT Phone, Description FROM Account WHERE Id = '{b}'"),
            false
        ),
        vec![vec![json!("555-0002"), json!(null)]]
    );
    let (header, failed) = bulk
        .failed_results(&job.id)
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(
        header,
        vec!["sf__Id", "sf__Error", "Id", "Phone", "Description"]
    );
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0][2], "001000000000999AAA");
    let e = parse_failed_result_error(&failed[0][1]);
    assert!(
        [
            "ENTITY_IS_DELETED",
            "INVALID_CROSS_REFERENCE_KEY",
            "NOT_FOUND",
            "MALFORMED_ID"
        ]
        .contains(&e.status_code.as_str()),
        "{e:?}"
    );
    assert!(!e.message.is_empty());
    let (_, ok) = bulk
        .successful_results(&job.id)
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(ok.len(), 2);
    assert!(ok.iter().all(|r| r[1] == "false"));

    // upsert: one update, one insert.
    let data = csv(
        b',',
        false,
        &["External_Id__c", "Name"],
        &[
            vec![Text("X-1"), Text("Bulk A v2")],
            vec![Text("X-4"), Text("Bulk D")],
        ],
    );
    let jobs = bulk
        .ingest(&IngestJobRequest::upsert("Account", "External_Id__c"), data)
        .await
        .unwrap();
    assert_eq!(
        jobs[0].external_id_field_name.as_deref(),
        Some("External_Id__c")
    );
    let (_, ok) = bulk
        .successful_results(&jobs[0].id)
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    let created: Vec<(&str, &str)> = ok.iter().map(|r| (r[2].as_str(), r[1].as_str())).collect();
    assert_eq!(created, vec![("X-1", "false"), ("X-4", "true")]);
    assert_eq!(ok[0][0], a);
    assert_eq!(
        org_rows(
            &emu,
            "SELECT Name FROM Account WHERE External_Id__c = 'X-1'",
            false
        ),
        vec![vec![json!("Bulk A v2")]]
    );

    // delete (soft) and hardDelete.
    let jobs = bulk
        .ingest(
            &IngestJobRequest::new("Account", IngestOperation::Delete),
            csv(b',', false, &["Id"], &[vec![Text(&b)]]),
        )
        .await
        .unwrap();
    assert_eq!(jobs[0].number_records_failed, 0);
    let jobs = bulk
        .ingest(
            &IngestJobRequest::new("Account", IngestOperation::HardDelete),
            csv(b',', false, &["Id"], &[vec![Text(&cc)]]),
        )
        .await
        .unwrap();
    assert_eq!(jobs[0].operation.as_deref(), Some("hardDelete"));
    assert_eq!(jobs[0].number_records_failed, 0);
    let bin = org_rows(
        &emu,
        "SELECT Id, IsDeleted FROM Account ORDER BY Name",
        true,
    );
    let ids: Vec<&str> = bin.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert!(ids.contains(&b.as_str()), "soft-deleted row in the bin");
    assert!(!ids.contains(&cc.as_str()), "hard-deleted row gone");
    assert_eq!(
        org_rows(
            &emu,
            &format!("SELECT IsDeleted FROM Account WHERE Id = '{b}'"),
            true
        ),
        vec![vec![json!(true)]]
    );
    assert_eq!(org_count(&emu, "SELECT COUNT() FROM Account", false), 2);

    // list and delete jobs.
    let listed = bulk.list_jobs(JobKind::Ingest).await.unwrap();
    assert_eq!(listed.len(), 5, "{listed:?}");
    let last = listed[0].id.clone();
    bulk.delete_ingest(&last).await.unwrap();
    let err = bulk.ingest_job(&last).await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    assert_eq!(bulk.list_jobs(JobKind::Ingest).await.unwrap().len(), 4);
}

#[tokio::test]
async fn bulk_ingest_crlf_pipe_and_tab_delimiters_round_trip() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    let bulk = c.bulk_with(bulk_config());
    for (delim, byte) in [(ColumnDelimiter::Pipe, b'|'), (ColumnDelimiter::Tab, b'\t')] {
        let d = (byte as char).to_string();
        let tricky = format!("has {d} delimiter, \"quotes\" and\r\na new line");
        let name = format!("Delim {delim:?}");
        let data = csv(
            byte,
            true,
            &["Name", "Description"],
            &[vec![BulkValue::Text(&name), BulkValue::Text(&tricky)]],
        );
        assert!(data.windows(2).any(|w| w == b"\r\n"));
        let req = IngestJobRequest {
            line_ending: LineEnding::CRLF,
            column_delimiter: delim,
            ..IngestJobRequest::new("Account", IngestOperation::Insert)
        };
        let jobs = bulk.ingest(&req, data).await.unwrap();
        let job = &jobs[0];
        assert_eq!(job.state, JobState::JobComplete, "{delim:?}");
        assert_eq!(job.number_records_failed, 0, "{delim:?}");
        assert_eq!(job.line_ending.as_deref(), Some("CRLF"));
        assert_eq!(job.delimiter_byte(), byte);
        assert_eq!(
            org_rows(
                &emu,
                &format!("SELECT Description FROM Account WHERE Name = '{name}'"),
                false
            ),
            vec![vec![json!(tricky)]],
            "{delim:?}: stored exactly"
        );
        // The results CSV uses the job's delimiter; the client must read it as such.
        let (header, ok) = bulk
            .successful_results(&job.id)
            .await
            .unwrap_or_else(|e| panic!("{delim:?}: {}", e.report()))
            .collect_all()
            .await
            .unwrap_or_else(|e| panic!("{delim:?}: {}", e.report()));
        assert_eq!(
            header,
            vec!["sf__Id", "sf__Created", "Name", "Description"],
            "{delim:?}"
        );
        assert_eq!(ok.len(), 1, "{delim:?}");
        assert_eq!(ok[0][3], tricky, "{delim:?}");
    }
}

#[tokio::test]
async fn bulk_ingest_abort_reports_unprocessed_records() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    let bulk = c.bulk_with(bulk_config());
    let job = bulk
        .create_ingest_job(&IngestJobRequest::new("Account", IngestOperation::Insert))
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Open);
    assert!(job.id.starts_with("750"));
    bulk.upload(
        &job,
        bytes::Bytes::from_static(b"Name,Phone\nOne,1\n\"Two, Inc\",2\n"),
    )
    .await
    .unwrap();
    let aborted = bulk.abort_ingest(&job.id).await.unwrap();
    assert_eq!(aborted.state, JobState::Aborted);
    let (header, rows) = bulk
        .unprocessed_records(&job.id)
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(header, vec!["Name", "Phone"]);
    assert_eq!(rows, vec![vec!["One", "1"], vec!["Two, Inc", "2"]]);
    let (_, ok) = bulk
        .successful_results(&job.id)
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert!(ok.is_empty());
    let err = bulk.wait_ingest(&job.id).await.unwrap_err();
    assert!(
        matches!(&err, SalesforceError::JobFailed { state, .. } if state == "Aborted"),
        "{err:?}"
    );
    let err = bulk.close(&job.id).await.unwrap_err();
    assert_eq!(err.error_code(), Some("InvalidJobState"), "{err}");
    assert_eq!(org_count(&emu, "SELECT COUNT() FROM Account", true), 0);
    bulk.delete_ingest(&job.id).await.unwrap();
    assert!(bulk.list_jobs(JobKind::Ingest).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Bulk API 2.0 query
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bulk_query_and_query_all_page_with_max_records_and_gzip() {
    let emu = emulator().await;
    let c = client(&emu, AuthFlow::Password);
    let bulk = c.bulk_with(bulk_config());
    let ids = seed(
        &emu,
        "Account",
        (0..35)
            .map(|i| json!({"Name": format!("Q {i:02}"), "Description": if i % 5 == 0 { json!("multi\nline, \"quoted\"") } else { json!(null) }}))
            .collect(),
    );
    for id in &ids[..5] {
        c.delete("Account", id).await.unwrap();
    }

    let stream = bulk
        .query(
            &QueryJobRequest::new("SELECT Id, Name, Description FROM Account ORDER BY Name"),
            Some(10),
        )
        .await
        .unwrap_or_else(|e| panic!("{}", e.report()));
    let job_id = stream.job_id().to_string();
    let (header, rows) = stream.collect_all().await.unwrap();
    assert_eq!(header, vec!["Id", "Name", "Description"]);
    assert_eq!(rows.len(), 30);
    let names: Vec<String> = rows.iter().map(|r| r[1].clone()).collect();
    let expected: Vec<String> = (5..35).map(|i| format!("Q {i:02}")).collect();
    assert_eq!(names, expected);
    assert_eq!(rows[5][2], "multi\nline, \"quoted\"", "Q 10");
    assert_eq!(rows[1][2], "", "null is an empty cell");

    // Page by page: 10 + 10 + 10 rows, the last locator is null.
    let mut s = bulk
        .query_results(
            &job_id,
            b',',
            QueryResultsOptions {
                max_records: Some(10),
                ..QueryResultsOptions::default()
            },
        )
        .await
        .unwrap();
    let mut n = 0;
    while let Some(b) = s.next_batch().await.unwrap() {
        n += b.len();
    }
    assert_eq!(n, 30);
    assert_eq!(s.pages(), 3);
    assert!(s.next_locator().is_none());
    let info = bulk.query_job(&job_id).await.unwrap();
    assert_eq!(info.state, JobState::JobComplete);
    assert_eq!(info.number_records_processed, 30);
    assert_eq!(info.operation.as_deref(), Some("query"));

    // queryAll: deleted rows too, with IsDeleted.
    let stream = bulk
        .query(
            &QueryJobRequest::query_all("SELECT Id, IsDeleted FROM Account ORDER BY Name"),
            Some(8),
        )
        .await
        .unwrap();
    let mut records = stream.into_records();
    let mut deleted = 0;
    let mut total = 0;
    while let Some(r) = records.next().await {
        let r = r.unwrap();
        total += 1;
        if r[1] == "true" {
            assert!(ids[..5].contains(&r[0]), "{r:?}");
            deleted += 1;
        } else {
            assert_eq!(r[1], "false");
        }
    }
    assert_eq!((total, deleted), (35, 5));

    // gzip on the wire: the client asks for it and decodes transparently (checked above);
    // here the raw page with Accept-Encoding: gzip decodes to the same bytes as the plain one.
    let token = c.access_token().await.unwrap();
    let pem = std::fs::read(&emu.running.ca_pem_path).unwrap();
    let raw = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .no_gzip()
        .build()
        .unwrap();
    let url = format!(
        "{}{V}/jobs/query/{job_id}/results?maxRecords=10",
        emu.running.base_url
    );
    let get = |gzip: bool| {
        let mut rb = raw.get(&url).bearer_auth(token.access_token.expose());
        if gzip {
            rb = rb.header("Accept-Encoding", "gzip");
        }
        rb.send()
    };
    let gz = get(true).await.unwrap();
    assert_eq!(gz.status(), 200);
    assert_eq!(
        gz.headers()
            .get("content-encoding")
            .unwrap()
            .to_str()
            .unwrap(),
        "gzip"
    );
    assert_eq!(gz.headers().get("sforce-numberofrecords").unwrap(), "10");
    let gz_body = gz.bytes().await.unwrap();
    let mut plain_from_gz = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&gz_body[..]),
        &mut plain_from_gz,
    )
    .unwrap();
    let plain = get(false).await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    assert_eq!(plain_from_gz, plain.bytes().await.unwrap().to_vec());

    // list, abort, delete query jobs.
    let listed = bulk.list_jobs(JobKind::Query).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed
        .iter()
        .all(|j| j.job_type.as_deref() == Some("V2Query")));
    bulk.delete_query(&job_id).await.unwrap();
    let err = bulk.query_job(&job_id).await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(bulk.list_jobs(JobKind::Query).await.unwrap().len(), 1);
}
