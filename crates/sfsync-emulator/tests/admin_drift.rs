//! `POST /admin/drift` against a real emulator: records change (seen through REST and SOQL) while
//! the CDC bus publishes nothing, bad requests change nothing, and a restarted emulator replays
//! the drift from its journal (and from its snapshot).

mod rest_common;

use reqwest::Method;
use rest_common::{Emu, V};
use serde_json::{json, Value};
use sfsync_org::{Org, OrgConfig, Schema};

/// The CDC bus's `(latest_replay_id, events)`.
async fn cdc(emu: &Emu) -> (u64, u64) {
    let r = emu.admin(Method::GET, "/admin/cdc", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    (
        r.body["latest_replay_id"].as_u64().unwrap(),
        r.body["events"].as_u64().unwrap(),
    )
}

async fn drift(emu: &Emu, body: Value) -> rest_common::Resp {
    emu.admin(Method::POST, "/admin/drift", Some(body)).await
}

/// The record through `queryAll` (None when it is gone from the recycle bin too).
async fn row_all(emu: &Emu, id: &str) -> Option<Value> {
    let r = emu
        .query_all(&format!(
            "SELECT Id, Name, Phone, SystemModstamp, LastModifiedDate, IsDeleted FROM Account WHERE Id = '{id}'"
        ))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["records"].as_array().unwrap().first().cloned()
}

/// The record through `query` (live records only).
async fn row(emu: &Emu, id: &str) -> Option<Value> {
    let r = emu
        .query(&format!(
            "SELECT Id, Name, Phone, SystemModstamp FROM Account WHERE Id = '{id}'"
        ))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["records"].as_array().unwrap().first().cloned()
}

fn modstamp(row: &Value) -> String {
    row["SystemModstamp"].as_str().unwrap().to_string()
}

async fn drift_stats(emu: &Emu) -> Value {
    emu.admin(Method::GET, "/admin/stats", None).await.body["org"]["drift"].clone()
}

/// Lets the clock move past the last commit's millisecond, so "bumped" means "later".
async fn tick() {
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_update_changes_records_without_a_change_event() {
    let emu = Emu::start().await;
    let a = emu.create_account("A").await;
    let b = emu.create_account("B").await;
    let r = emu
        .patch(
            &format!("{V}/sobjects/Account/{b}"),
            json!({"Phone": "555"}),
        )
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let before = cdc(&emu).await;
    assert!(before.0 >= 3, "the creates and the update were published");
    let old = row(&emu, &b).await.unwrap();
    tick().await;

    let r = drift(
        &emu,
        json!({"action": "silent_update", "object": "account", "ids": [a, b, a],
               "fields": {"Name": "x", "Phone": null}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body, json!({"affected": 2, "ids": [a, b]}));
    for id in [&a, &b] {
        let now = row(&emu, id).await.unwrap();
        assert_eq!(now["Name"], "x");
        assert_eq!(now["Phone"], Value::Null);
        assert!(modstamp(&now) > modstamp(&old), "{now} vs {old}");
        let all = row_all(&emu, id).await.unwrap();
        assert_eq!(all["LastModifiedDate"], all["SystemModstamp"]);
        let rec = emu.get(&format!("{V}/sobjects/Account/{id}")).await;
        assert_eq!(rec.body["Name"], "x");
    }
    assert_eq!(cdc(&emu).await, before, "no change event");
    assert_eq!(
        drift_stats(&emu).await,
        json!({"silent_updated": 2, "silent_deleted": 0, "purged": 0})
    );

    // The bus does see ordinary DML, and its timestamps never go back before the drift's.
    let r = emu
        .patch(&format!("{V}/sobjects/Account/{a}"), json!({"Name": "y"}))
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(cdc(&emu).await.0, before.0 + 1);
    let a_now = row(&emu, &a).await.unwrap();
    assert!(modstamp(&a_now) >= modstamp(&row(&emu, &b).await.unwrap()));
    emu.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_delete_and_purge_publish_nothing() {
    let emu = Emu::start().await;
    let a = emu.create_account("A").await;
    let b = emu.create_account("B").await;
    let c = emu.create_account("C").await;
    assert_eq!(
        emu.delete(&format!("{V}/sobjects/Account/{c}"))
            .await
            .status,
        204
    );
    let before = cdc(&emu).await;
    let old = row(&emu, &a).await.unwrap();
    tick().await;

    let r = drift(
        &emu,
        json!({"action": "silent_delete", "object": "Account", "ids": [a]}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body, json!({"affected": 1, "ids": [a]}));
    assert_eq!(row(&emu, &a).await, None, "gone from query");
    let binned = row_all(&emu, &a).await.expect("queryAll still has it");
    assert_eq!(binned["IsDeleted"], true);
    assert!(modstamp(&binned) > modstamp(&old));
    let r = emu.get(&format!("{V}/sobjects/Account/{a}")).await;
    assert_eq!((r.status, r.error_code()), (404, "ENTITY_IS_DELETED"));

    // Purge: a live record and one already in the recycle bin.
    let r = drift(
        &emu,
        json!({"action": "purge", "object": "Account", "ids": [b, c]}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body, json!({"affected": 2, "ids": [b, c]}));
    for id in [&b, &c] {
        assert_eq!(row_all(&emu, id).await, None, "queryAll still has {id}");
        let r = emu.get(&format!("{V}/sobjects/Account/{id}")).await;
        assert_eq!((r.status, r.error_code()), (404, "NOT_FOUND"));
    }
    assert_eq!(emu.count("SELECT COUNT() FROM Account").await, 0);
    assert_eq!(cdc(&emu).await, before, "no change event");
    assert_eq!(
        drift_stats(&emu).await,
        json!({"silent_updated": 0, "silent_deleted": 1, "purged": 2})
    );
    emu.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_drift_requests_change_nothing() {
    let emu = Emu::start().await;
    let a = emu.create_account("A").await;
    let b = emu.create_account("B").await;
    let d = emu.create_account("D").await;
    assert_eq!(
        emu.delete(&format!("{V}/sobjects/Account/{d}"))
            .await
            .status,
        204
    );
    let snapshot = || async { emu.admin(Method::GET, "/admin/snapshot", None).await.body };
    let before = snapshot().await;
    let bus = cdc(&emu).await;
    let unknown = "001Kx00000ZZZZZAAA";
    let upd = |fields: Value| json!({"action": "silent_update", "object": "Account", "ids": [a, b], "fields": fields});
    let cases = [
        (
            upd(json!({"Name": "z", "Nope": 1})),
            400,
            "INVALID_FIELD",
            "Nope",
        ),
        (
            upd(json!({"SystemModstamp": "2024-01-01T00:00:00Z"})),
            400,
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            "SystemModstamp",
        ),
        (
            upd(json!({"NumberOfEmployees": "many"})),
            400,
            "INVALID_TYPE_ON_FIELD_IN_RECORD",
            "NumberOfEmployees",
        ),
        (
            upd(json!({"Name": null})),
            400,
            "REQUIRED_FIELD_MISSING",
            "Name",
        ),
        (upd(json!(["Name"])), 400, "INVALID_INPUT", "fields"),
        (
            json!({"action": "silent_update", "object": "Account", "ids": [a]}),
            400,
            "INVALID_INPUT",
            "fields",
        ),
        (
            json!({"action": "purge", "object": "Account", "ids": [a], "fields": {"Name": "z"}}),
            400,
            "INVALID_INPUT",
            "fields",
        ),
        (
            json!({"action": "purge", "object": "Account", "ids": [a, unknown, b]}),
            400,
            "INVALID_INPUT",
            unknown,
        ),
        (
            json!({"action": "purge", "object": "Account", "ids": []}),
            400,
            "INVALID_INPUT",
            "ids",
        ),
        (
            json!({"action": "purge", "object": "Account", "ids": a}),
            400,
            "INVALID_INPUT",
            "ids",
        ),
        (
            json!({"action": "purge", "object": "Account", "ids": [a, 7]}),
            400,
            "INVALID_INPUT",
            "ids[1]",
        ),
        (
            json!({"action": "silent_delete", "object": "Account", "ids": [a, d]}),
            400,
            "ENTITY_IS_DELETED",
            d.as_str(),
        ),
        (
            json!({"action": "explode", "object": "Account", "ids": [a]}),
            400,
            "INVALID_INPUT",
            "explode",
        ),
        (
            json!({"object": "Account", "ids": [a]}),
            400,
            "INVALID_INPUT",
            "action",
        ),
        (
            json!({"action": "purge", "object": "Account", "ids": [a], "dry_run": true}),
            400,
            "INVALID_INPUT",
            "dry_run",
        ),
        (
            json!({"action": "purge", "object": "Nope__c", "ids": [a]}),
            404,
            "NOT_FOUND",
            "Nope__c",
        ),
    ];
    for (body, status, code, needle) in cases {
        let r = drift(&emu, body.clone()).await;
        assert_eq!(
            (r.status, r.error_code()),
            (status, code),
            "{body}: {:?}",
            r.body
        );
        assert!(r.body.to_string().contains(needle), "{body}: {:?}", r.body);
    }
    let token = emu.admin_token();
    let r = emu
        .raw(
            Method::POST,
            "/admin/drift",
            Some(&token),
            &[],
            Some(b"{oops".to_vec()),
        )
        .await;
    assert_eq!((r.status, r.error_code()), (400, "JSON_PARSER_ERROR"));
    let r = emu
        .raw(
            Method::POST,
            "/admin/drift",
            Some(&emu.token),
            &[],
            Some(
                serde_json::to_vec(&json!({"action": "purge", "object": "Account", "ids": [a]}))
                    .unwrap(),
            ),
        )
        .await;
    assert_eq!(r.status, 401, "a user session is not the admin token");

    assert_eq!(snapshot().await, before, "a refused call changed the org");
    assert_eq!(cdc(&emu).await, bus);
    assert_eq!(
        drift_stats(&emu).await,
        json!({"silent_updated": 0, "silent_deleted": 0, "purged": 0})
    );
    emu.running.shutdown().await.unwrap();
}

/// What a restart must reproduce: the three records through queryAll, the drift counters and
/// the CDC bus position.
async fn observed(emu: &Emu, ids: &[&str]) -> (Vec<Option<Value>>, Value, u64) {
    let mut rows = Vec::new();
    for id in ids {
        rows.push(row_all(emu, id).await);
    }
    (rows, drift_stats(emu).await, cdc(emu).await.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emu::start_persistent(dir.path()).await;
    let a = emu.create_account("A").await;
    let b = emu.create_account("B").await;
    let c = emu.create_account("C").await;
    tick().await;
    for body in [
        json!({"action": "silent_update", "object": "Account", "ids": [a], "fields": {"Name": "x", "Phone": "1"}}),
        json!({"action": "silent_delete", "object": "Account", "ids": [b]}),
        json!({"action": "purge", "object": "Account", "ids": [c]}),
    ] {
        let r = drift(&emu, body).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let ids = [a.as_str(), b.as_str(), c.as_str()];
    let expected = observed(&emu, &ids).await;
    assert_eq!(expected.0[0].as_ref().unwrap()["Name"], "x");
    assert_eq!(expected.0[1].as_ref().unwrap()["IsDeleted"], true);
    assert_eq!(expected.0[2], None);
    assert_eq!(
        expected.1,
        json!({"silent_updated": 1, "silent_deleted": 1, "purged": 1})
    );
    // The journal the emulator wrote rebuilds exactly its org.
    let mut live = Vec::new();
    emu.running.org().snapshot_jsonl(&mut live).unwrap();
    let creds = emu.running.credentials.clone();
    let config = OrgConfig {
        org_id: sfsync_core::SfId::parse(&creds.org_id).unwrap(),
        admin_username: creds.username.clone(),
    };
    let replayed = Org::open(Schema::demo(), config, &dir.path().join("org")).unwrap();
    let mut again = Vec::new();
    replayed.snapshot_jsonl(&mut again).unwrap();
    drop(replayed);
    assert!(live == again, "journal replay differs from the live org");

    // A crash (no final snapshot): the restart replays the journal.
    emu.running.kill().await;
    let emu = Emu::start_persistent(dir.path()).await;
    assert_eq!(observed(&emu, &ids).await, expected);
    let r = emu.get(&format!("{V}/sobjects/Account/{c}")).await;
    assert_eq!((r.status, r.error_code()), (404, "NOT_FOUND"));
    // A clean shutdown (snapshot, empty journal): the same again.
    emu.running.shutdown().await.unwrap();
    let emu = Emu::start_persistent(dir.path()).await;
    assert_eq!(observed(&emu, &ids).await, expected);
    emu.running.shutdown().await.unwrap();
}
