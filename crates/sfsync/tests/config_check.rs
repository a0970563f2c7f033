//! `sfsync config check` as a user runs it: the real binary on real files, checking stdout,
//! stderr and the exit status.

use std::path::Path;
use std::process::{Command, Output};

fn sfsync(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sfsync"));
    cmd.args(args)
        .env_remove("SFSYNC_WAREHOUSE_URL")
        .env_remove("SFSYNC_PII_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run sfsync")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The repository's example config copied beside the secret files it references.
fn example_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sfsync.example.toml");
    std::fs::copy(example, dir.path().join("sfsync.toml")).unwrap();
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    std::fs::write(
        dir.path().join("secrets/jwt-private-key.pem"),
        "-----BEGIN PRIVATE KEY-----\nMIIfixture\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    for (file, token) in [
        ("api-ops.token", "ops-token-0123456789abcdef"),
        ("api-viewer.token", "viewer-token-0123456789abcdef"),
        ("api-case-mgmt.token", "case-mgmt-token-0123456789abcdef"),
        ("case-mgmt-hook.secret", "case-mgmt-hook-secret-0123456789"),
        ("odata-connect.password", "odata-connect-password-0123"),
        (
            "om-grant-applications.secret",
            "om-grant-applications-secret-0123456789",
        ),
    ] {
        std::fs::write(dir.path().join("secrets").join(file), token).unwrap();
    }
    dir
}

#[test]
fn example_config_checks_ok_with_a_summary() {
    let dir = example_dir();
    let cfg = dir.path().join("sfsync.toml");
    let key = "0f".repeat(32);
    let out = sfsync(
        &["config", "check", "--config", cfg.to_str().unwrap()],
        &[
            (
                "SFSYNC_WAREHOUSE_URL",
                "postgres://sfsync:secret-pw@127.0.0.1/warehouse",
            ),
            ("SFSYNC_PII_KEY", &key),
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with("ok\n"), "{stdout}");
    for want in [
        "auth:       jwt_bearer",
        "warehouse:  postgres (schema sfsync)",
        "objects:    7",
        "Grant_Application__c outbound messages",
        "outbound:   grant-applications → Grant_Application__c at POST /soap/outbound/grant-applications/<secret from",
        "org 00D5e000000Abc1; 5 field(s)",
        "/data/CaseChangeEvent",
        "/data/Payment__ChangeEvent",
        "pii: Email, Phone, Birthdate",
        "api:        http://127.0.0.1:8787 (3 tokens)",
        "/archive every 3600 s; raw log hot 7 d, archive 396 d, audit 2557 d",
        "sink:       case-mgmt (webhook) → https://cases.example.org/sfsync/changes; 1 object(s), batch 200, PII omit, dead letters after 3600 s, not back to case_mgmt",
        "freshness:  sync_status every 5 s; delayed after 120 s (Case 60 s)",
        "secrets:    all resolved",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }
    assert!(!stdout.contains("secret-pw") && !stdout.contains(&key));
}

#[test]
fn unset_secrets_fail_naming_key_and_variable_unless_skipped() {
    let dir = example_dir();
    let cfg = dir.path().join("sfsync.toml");
    let cfg = cfg.to_str().unwrap();
    let out = sfsync(&["config", "check", "--config", cfg], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines[0]
            .ends_with(": warehouse.url.env: environment variable SFSYNC_WAREHOUSE_URL is not set"),
        "{stderr}"
    );
    assert!(lines[0].contains("sfsync.toml:"), "{stderr}");
    assert!(
        lines[1].ends_with(": pii.key_env: environment variable SFSYNC_PII_KEY is not set"),
        "{stderr}"
    );
    assert!(lines[2].ends_with("sfsync.toml: 2 errors"), "{stderr}");

    let out = sfsync(&["config", "check", "--config", cfg, "--skip-secrets"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("secrets:    not checked (--skip-secrets)"));
}

#[test]
fn bad_config_lists_every_error_with_line_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        r#"[salesforce]
instance_url = "https://x.my.salesforce.com"
credentials_file = "creds.json"

[warehouse]
type = "sqlite"
path = "w.db"

[[objects]]
name = "Case"

[[objects]]
name = "Case"
pii_fields = ["Emial"]

[pipeline]
batch_max_records = 0
"#,
    )
    .unwrap();
    let out = sfsync(&["config", "check", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let f = cfg.display().to_string();
    assert_eq!(
        text(&out.stderr),
        format!(
            "{f}:13:1: objects[1].name: object \"Case\" is configured twice (also objects[0])\n\
             {f}:14:1: objects[1].pii_fields: PII fields need a key: add a [pii] table with key_file or key_env\n\
             {f}:17:1: pipeline.batch_max_records: must be greater than 0\n\
             {f}: 3 errors\n"
        )
    );
}

#[test]
fn inline_secret_and_missing_file_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(
        &cfg,
        "[salesforce]\ninstance_url = \"https://x\"\n[salesforce.auth]\ntype = \"client_credentials\"\nclient_id = \"cid\"\nclient_secret = \"do-not-print\"\n[warehouse]\ntype = \"sqlite\"\npath = \"w.db\"\n[[objects]]\nname = \"Case\"\n",
    )
    .unwrap();
    let out = sfsync(&["config", "check", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(":6:17: salesforce.auth.client_secret: inline secrets are not allowed; write { env = \"VAR\" }, { file = \"path\" } or { aws_secret = \"name\" }"), "{stderr}");
    assert!(!stderr.contains("do-not-print"));

    let missing = dir.path().join("nope.toml");
    let out = sfsync(
        &["config", "check", "--config", missing.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read the config file"));
}

#[test]
fn map_of_the_example_config_draws_every_flow_in_each_format() {
    let dir = example_dir();
    let cfg = dir.path().join("sfsync.toml");
    let cfg = cfg.to_str().unwrap();
    // No secrets needed: the map reads the config only.
    let json = sfsync(&["map", "--config", cfg, "--format", "json"], &[]);
    assert!(json.status.success(), "{}", text(&json.stderr));
    let map: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let flows = map["flows"].as_array().unwrap();
    // Six streamed objects, one formula refresh (Account), one object fed by Outbound
    // Messages, one subscribed platform event; Case writeback by case_mgmt and by any system
    // (its shared fields), and one published platform event.
    let inbound = flows.iter().filter(|f| f["direction"] == "inbound").count();
    let outbound: Vec<&serde_json::Value> = flows
        .iter()
        .filter(|f| f["direction"] == "outbound" && f["pattern"] == "writeback")
        .collect();
    assert_eq!(inbound, 9, "{map:#}");
    let edge = |direction: &str, pattern: &str, object: &str| {
        flows
            .iter()
            .find(|f| {
                f["direction"] == direction && f["pattern"] == pattern && f["object"] == object
            })
            .unwrap_or_else(|| panic!("no {direction} {pattern} edge of {object}: {map:#}"))
    };
    let escalated = edge("inbound", "platform event", "Case_Escalated__e");
    assert!(
        escalated["transformation"]
            .as_str()
            .unwrap()
            .contains("delivered by sink(s) escalations"),
        "{escalated:#}"
    );
    let applied = edge("outbound", "platform event", "Record_Applied__e");
    assert_eq!(
        (&applied["source"], &applied["target"]),
        (
            &serde_json::json!("warehouse"),
            &serde_json::json!("salesforce")
        )
    );
    let trigger = applied["trigger"].as_str().unwrap();
    assert!(
        trigger.contains("POST /api/v1/events/Record_Applied__e")
            && trigger.contains("platform_event sink(s) case-applied"),
        "{trigger}"
    );
    assert!(
        applied["transformation"]
            .as_str()
            .unwrap()
            .contains("hourly publish budget: "),
        "{applied:#}"
    );
    // The "record applied" sink publishes into Salesforce.
    assert_eq!(
        edge("delivery", "platform_event", "Case")["target"],
        "salesforce"
    );
    let om = flows
        .iter()
        .find(|f| f["object"] == "Grant_Application__c")
        .unwrap();
    assert_eq!(om["pattern"], "outbound message", "{om:#}");
    assert_eq!(om["sla_secs"], 300, "{om:#}");
    assert!(
        om["trigger"]
            .as_str()
            .unwrap()
            .contains("/soap/outbound/grant-applications/"),
        "{om:#}"
    );
    assert_eq!(outbound.len(), 2, "{map:#}");
    let case = flows
        .iter()
        .find(|f| f["object"] == "Case" && f["pattern"] == "CDC stream")
        .unwrap();
    assert_eq!(case["sla_secs"], 60);
    assert_eq!(case["team"], "Case management integration");
    assert!(outbound
        .iter()
        .all(|f| f["sla_secs"] == 300 && f["target"] == "salesforce"));

    let mermaid = sfsync(&["map", "--config", cfg], &[]);
    let mermaid = text(&mermaid.stdout);
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
    assert_eq!(mermaid.matches("-->|").count(), flows.len(), "{mermaid}");
    assert!(mermaid.contains("system_case_mgmt -->|"), "{mermaid}");

    let dot = sfsync(&["map", "--config", cfg, "--format", "dot"], &[]);
    let dot = text(&dot.stdout);
    assert!(dot.starts_with("digraph sfsync {"), "{dot}");
    assert_eq!(dot.matches(" -> ").count(), flows.len(), "{dot}");
    assert!(dot.contains("salesforce -> warehouse"), "{dot}");

    let bad = sfsync(&["map", "--config", "/nonexistent/sfsync.toml"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("cannot read the config file"));
}
