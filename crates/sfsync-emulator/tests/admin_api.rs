//! The admin API over HTTPS against a real emulator: token protection, seed, stats, snapshot,
//! reset, faults, limits, session timeout, forced token expiry and schema changes.

mod rest_common;

use reqwest::Method;
use rest_common::{Emu, V};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_admin_token() {
    let emu = Emu::start().await;
    let user_token = emu.token.clone();
    for token in [None, Some("wrong"), Some(user_token.as_str())] {
        let r = emu.raw(Method::GET, "/admin/stats", token, &[], None).await;
        assert_eq!(r.status, 401, "{token:?}");
        assert_eq!(r.error_code(), "INVALID_SESSION_ID");
    }
    let r = emu.admin(Method::GET, "/admin/stats", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.body["sessions"].as_u64().unwrap() >= 1);
    assert!(r.body["api_requests"]["max"].as_u64().unwrap() > 0);
    assert!(r.body["org"].is_object());
    let r = emu.admin(Method::DELETE, "/admin/stats", None).await;
    assert_eq!(r.status, 405);

    // Admin calls are not API calls.
    let used = emu.get(&format!("{V}/limits")).await.api_used();
    for _ in 0..3 {
        emu.admin(Method::GET, "/admin/limits", None).await;
    }
    assert_eq!(emu.get(&format!("{V}/limits")).await.api_used(), used + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_snapshot_and_reset() {
    let emu = Emu::start().await;
    let r = emu
        .admin(
            Method::POST,
            "/admin/seed",
            Some(json!({"objects": {"Account": 30, "Contact": 12}, "seed": 42})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["created"], json!({"Account": 30, "Contact": 12}));
    assert_eq!(emu.count("SELECT COUNT() FROM Account").await, 30);
    assert_eq!(emu.count("SELECT COUNT() FROM Contact").await, 12);
    // Lean records: no long Description.
    let r = emu
        .admin(
            Method::POST,
            "/admin/seed",
            Some(json!({"objects": {"Lead": 20}, "seed": 1, "long_text_percent": 0})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        emu.count("SELECT COUNT() FROM Lead WHERE Description != null")
            .await,
        0
    );
    assert_eq!(emu.count("SELECT COUNT() FROM Lead").await, 20);

    let r = emu.admin(Method::GET, "/admin/snapshot", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/x-ndjson");
    let text = r
        .body
        .as_str()
        .expect("NDJSON is not one JSON value")
        .to_string();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(
        lines.iter().filter(|l| l["object"] == "Account").count(),
        30
    );
    assert_eq!(
        lines.iter().filter(|l| l["object"] == "Contact").count(),
        12
    );

    for bad in [
        json!({"objects": {"Nope__c": 1}}),
        json!({"objects": {"Account": -1}}),
        json!({"objects": {"Account": 1}, "extra": true}),
        json!({"objects": {"Account": 1}, "long_text_percent": 101}),
    ] {
        let r = emu
            .admin(Method::POST, "/admin/seed", Some(bad.clone()))
            .await;
        assert!(r.status == 400 || r.status == 404, "{bad}: {:?}", r.body);
        assert!(r.body[0]["errorCode"].is_string());
    }

    let r = emu.admin(Method::POST, "/admin/reset", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(emu.count("SELECT COUNT() FROM Account").await, 0);
    assert_eq!(emu.count("SELECT COUNT() FROM Contact").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_and_limits_are_validated() {
    let emu = Emu::start().await;
    let r = emu.admin(Method::GET, "/admin/faults", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["rules"], json!([]));
    let bad = json!({"rules": [{"path_contains": "/query", "kind": "QUERY_TIMEOUT", "rate": 1.5}]});
    let r = emu.admin(Method::PUT, "/admin/faults", Some(bad)).await;
    assert_eq!(r.status, 400);
    assert!(r.body[0]["message"]
        .as_str()
        .unwrap()
        .contains("rules[0].rate"));
    let token = emu.admin_token();
    let r = emu
        .raw(
            Method::PUT,
            "/admin/faults",
            Some(&token),
            &[],
            Some(b"{oops".to_vec()),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "JSON_PARSER_ERROR");
    let r = emu
        .admin(Method::PUT, "/admin/faults", Some(json!({"latency": 5})))
        .await;
    assert_eq!(r.status, 400, "unknown keys are refused");
    let good = json!({"latency_ms": 1, "seed": 3,
                      "rules": [{"path_contains": "/sobjects", "method": "PATCH", "kind": "UNABLE_TO_LOCK_ROW", "rate": 1.0}]});
    let r = emu.admin(Method::PUT, "/admin/faults", Some(good)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["latency_ms"], 1);
    let id = emu.create_account("Locked").await;
    let r = emu
        .patch(&format!("{V}/sobjects/Account/{id}"), json!({"Name": "x"}))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "UNABLE_TO_LOCK_ROW");
    let r = emu
        .admin(Method::PUT, "/admin/faults", Some(json!({})))
        .await;
    assert_eq!(r.status, 200);

    let r = emu.admin(Method::GET, "/admin/limits", None).await;
    assert_eq!(r.status, 200);
    assert!(r.body["daily_api_requests"].as_u64().unwrap() > 0);
    assert_eq!(r.body["long_running_threshold_ms"], 20_000);
    let r = emu
        .admin(
            Method::PUT,
            "/admin/limits",
            Some(json!({"daily_bulk_query_jobs": 7, "long_running_threshold_ms": 500})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["daily_bulk_query_jobs"], 7);
    assert_eq!(r.body["long_running_threshold_ms"], 500);
    let r = emu.get(&format!("{V}/limits")).await;
    assert_eq!(r.body["DailyBulkV2QueryJobs"]["Max"], 7);
    let r = emu
        .admin(Method::PUT, "/admin/limits", Some(json!({"daily_api": 1})))
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_timeout_and_token_expiry() {
    let emu = Emu::start().await;
    let path = format!("{V}/limits");
    assert_eq!(emu.get(&path).await.status, 200);
    let r = emu
        .admin(
            Method::PUT,
            "/admin/session-timeout",
            Some(json!({"seconds": 0})),
        )
        .await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let r = emu.get(&path).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "INVALID_SESSION_ID");
    let r = emu
        .admin(
            Method::PUT,
            "/admin/session-timeout",
            Some(json!({"seconds": "x"})),
        )
        .await;
    assert_eq!(r.status, 400);

    let r = emu
        .admin(
            Method::PUT,
            "/admin/session-timeout",
            Some(json!({"seconds": 7200})),
        )
        .await;
    assert_eq!(r.status, 200);
    let (token, _) = emu
        .running
        .state
        .auth
        .issue(emu.running.state.auth.admin().user_id);
    let r = emu.raw(Method::GET, &path, Some(&token), &[], None).await;
    assert_eq!(r.status, 200);
    let r = emu.admin(Method::POST, "/admin/expire-tokens", None).await;
    assert!(r.body["expired"].as_u64().unwrap() >= 1);
    let r = emu.raw(Method::GET, &path, Some(&token), &[], None).await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_can_be_added_to_objects() {
    let emu = Emu::start().await;
    let field = json!({"name": "Region__c", "label": "Region", "type": "string", "length": 40, "custom": true});
    let r = emu
        .admin(
            Method::POST,
            "/admin/objects/Account/fields",
            Some(field.clone()),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body, json!({"object": "Account", "field": "Region__c"}));
    let r = emu.get(&format!("{V}/sobjects/Account/describe")).await;
    assert!(r.body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "Region__c"));
    let r = emu
        .post(
            &format!("{V}/sobjects/Account"),
            json!({"Name": "R", "Region__c": "EMEA"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = emu.query("SELECT Region__c FROM Account").await;
    assert_eq!(r.body["records"][0]["Region__c"], "EMEA");

    let r = emu
        .admin(Method::POST, "/admin/objects/Nope__c/fields", Some(field))
        .await;
    assert_eq!(r.status, 404);
    let r = emu
        .admin(
            Method::POST,
            "/admin/objects/Account/fields",
            Some(json!({"name": "X__c"})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "INVALID_INPUT");
}

/// CDC fault injection: a change event with arbitrary bytes lands on the bus with the object's
/// schema id (or the one given); bad requests are 400s that name the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_inject_appends_a_raw_change_event() {
    let emu = Emu::start().await;
    let before = emu.admin(Method::GET, "/admin/cdc", None).await.body["latest_replay_id"]
        .as_u64()
        .unwrap();
    let r = emu
        .admin(
            Method::POST,
            "/admin/cdc/inject",
            Some(json!({"entity": "Case", "payload_hex": "deadbeef"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["replay_id"].as_u64().unwrap(), before + 1);
    let r = emu
        .admin(
            Method::POST,
            "/admin/cdc/inject",
            Some(json!({"entity": "Case", "payload_hex": "00", "schema_id": "custom"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let after = emu.admin(Method::GET, "/admin/cdc", None).await.body["latest_replay_id"]
        .as_u64()
        .unwrap();
    assert_eq!(after, before + 2);
    for (body, needle) in [
        (
            json!({"entity": "Case", "payload_hex": "zz"}),
            "payload_hex",
        ),
        (json!({"entity": "Nope__c", "payload_hex": "00"}), "Nope__c"),
        (json!({"entity": "Case"}), "payload_hex"),
        (json!({"entity": "Case", "payload_hex": "00", "x": 1}), "x"),
    ] {
        let r = emu
            .admin(Method::POST, "/admin/cdc/inject", Some(body))
            .await;
        assert_eq!(r.status, 400, "{:?}", r.body);
        assert!(r.body.to_string().contains(needle), "{:?}", r.body);
    }
}
