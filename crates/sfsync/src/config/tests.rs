//! Config tests: every error class with its exact `file:line:col: key: message`, the secret
//! rules, and the annotated example file at the repository root.

use std::collections::HashMap;
use std::path::Path;

use super::*;

const GOOD: &str = r#"[salesforce]
instance_url = "https://x.my.salesforce.com/"
credentials_file = "creds.json"

[[objects]]
name = "Case"
history = { fields = ["Status", "Priority"] }

[[objects]]
name = "Service_Request__c"
pii_fields = ["Email__c"]
history = { fields = ["Email__c"] }

[[objects]]
name = "Task"
mode = "poll"

[warehouse]
type = "sqlite"
path = "w.db"

[pii]
key_env = "PII_KEY"
key_id = "k1"
"#;

fn load_t(text: &str) -> Result<LoadedConfig, ConfigErrors> {
    load_str(text, "t.toml", Path::new("/cfg"))
}

/// The rendered error lines of `text` (panics if it loads).
fn errs(text: &str) -> Vec<String> {
    match load_t(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

/// A `[salesforce]` + `[warehouse]` prefix (7 lines) for object/pipeline tests.
const HEAD: &str = "[salesforce]\ninstance_url = \"https://x\"\ncredentials_file = \"c.json\"\n[warehouse]\ntype = \"sqlite\"\npath = \"w.db\"\n\n";

#[test]
fn good_config_validates_with_defaults_and_channels() {
    let l = load_t(GOOD).unwrap();
    let c = &l.config;
    assert_eq!(
        c.salesforce.instance_url.as_deref(),
        Some("https://x.my.salesforce.com")
    );
    assert_eq!(c.salesforce.api_version, "66.0");
    assert_eq!(c.salesforce.client_id_header, "sfsync");
    assert!(
        matches!(&c.salesforce.credentials, CredentialsSource::File(p) if p == Path::new("/cfg/creds.json"))
    );
    assert_eq!(
        c.objects[0].channel.as_deref(),
        Some("/data/CaseChangeEvent")
    );
    assert_eq!(
        c.objects[1].channel.as_deref(),
        Some("/data/Service_Request__ChangeEvent")
    );
    assert_eq!(c.objects[2].channel, None);
    assert_eq!(c.objects[2].mode, SyncMode::Poll);
    assert_eq!(
        c.objects[0].history,
        Some(HistoryFields::List(vec![
            "Status".into(),
            "Priority".into()
        ]))
    );
    assert!(
        matches!(&c.warehouse, ValidWarehouse::Sqlite { path } if path == Path::new("/cfg/w.db"))
    );
    assert_eq!(c.pipeline, PipelineConfig::default());
    assert_eq!(
        c.pii.as_ref().unwrap().key,
        PiiKeySource::Env("PII_KEY".into())
    );
}

#[test]
fn default_channel_rule() {
    use super::validate::default_channel;
    assert_eq!(default_channel("Account"), "/data/AccountChangeEvent");
    assert_eq!(default_channel("Payment__c"), "/data/Payment__ChangeEvent");
    assert_eq!(
        default_channel("ns__Thing__c"),
        "/data/ns__Thing__ChangeEvent"
    );
}

#[test]
fn unknown_key_names_path_line_and_column() {
    let t = format!("{HEAD}[[objects]]\nname = \"Case\"\n\n[[objects]]\nname = \"Contact\"\npii_feilds = [\"Email\"]\n");
    assert_eq!(
        errs(&t),
        ["t.toml:13:1: objects[1].pii_feilds: unknown field `pii_feilds`, expected one of `name`, `channel`, `history`, `pii_fields`, `mode`, `required`, `rules`, `references`, `schema_checks`, `formula_fields`, `team`, `sla_secs`"]
    );
}

#[test]
fn syntax_error_has_line_and_column() {
    assert_eq!(
        errs("[salesforce]\ninstance_url = \"https://x\"\n[warehouse\n"),
        ["t.toml:3:11: invalid TOML: unclosed table, expected `]`"]
    );
}

#[test]
fn all_shape_errors_reported_together_in_file_order() {
    let t = r#"[salesforce]
instance_url = "https://x"
[salesforce.auth]
type = "password"
client_id = "a"
client_secret = { env = "X" }
username = "u"
password = "hunter2"
[warehouse]
type = "sqlite"
path = 3
[[objects]]
name = "A"
[pipeline]
batch_max_records = -1
[bogus]
"#;
    assert_eq!(
        errs(t),
        [
            "t.toml:8:12: salesforce.auth.password: inline secrets are not allowed; write { env = \"VAR\" }, { file = \"path\" } or { aws_secret = \"name\" }",
            "t.toml:11:8: warehouse.path: invalid type: integer `3`, expected path string",
            "t.toml:15:21: pipeline.batch_max_records: invalid value: integer `-1`, expected u64",
            "t.toml:16:2: bogus: unknown table `bogus`, expected one of salesforce, objects, warehouse, pii, pipeline, writeback, api, archive, sinks, freshness, log, odata, outbound_messages, platform_events",
        ]
    );
}

#[test]
fn inline_secret_rejected_everywhere() {
    let t = "[salesforce]\ninstance_url = \"https://x\"\n[salesforce.auth]\ntype = \"client_credentials\"\nclient_id = \"a\"\nclient_secret = \"s3cret\"\n[warehouse]\ntype = \"postgres\"\nurl = \"postgres://u:pw@h/db\"\n[[objects]]\nname = \"A\"\n";
    let e = errs(t);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0]
        .starts_with("t.toml:6:17: salesforce.auth.client_secret: inline secrets are not allowed"));
    assert!(e[1].starts_with("t.toml:9:7: warehouse.url: inline secrets are not allowed"));
    // the secret value itself is never echoed
    assert!(!e.join("\n").contains("s3cret") && !e.join("\n").contains("pw@h"));
}

#[test]
fn secret_reference_shape_errors() {
    let t = "[salesforce]\ninstance_url = \"https://x\"\n[salesforce.auth]\ntype = \"client_credentials\"\nclient_id = \"a\"\nclient_secret = { env = \"X\", file = \"y\" }\n[warehouse]\ntype = \"postgres\"\nurl = { vault = \"PG\" }\n";
    let e = errs(t);
    assert_eq!(e[0], "t.toml:6:17: salesforce.auth.client_secret: give either `env` or `file` for a secret, not both");
    assert!(
        e[1].starts_with("t.toml:9:9: warehouse.url.vault: unknown field `vault`"),
        "{e:?}"
    );
}

#[test]
fn unknown_tagged_types() {
    let t = "[salesforce]\ninstance_url = \"https://x\"\n[salesforce.auth]\ntype = \"oauth\"\n[warehouse]\ntype = \"pg\"\n";
    assert_eq!(
        errs(t),
        [
            "t.toml:4:8: salesforce.auth.type: unknown type \"oauth\", expected one of \"jwt_bearer\", \"client_credentials\", \"refresh_token\", \"password\"",
            "t.toml:6:8: warehouse.type: unknown type \"pg\", expected one of \"sqlite\", \"postgres\"",
        ]
    );
    assert_eq!(
        errs("[warehouse]\npath = \"x\"\n")[0],
        "t.toml:1:1: warehouse: missing `type`, expected one of \"sqlite\", \"postgres\""
    );
}

#[test]
fn object_semantic_errors() {
    let t = format!(
        r#"{HEAD}[[objects]]
name = "Case"
channel = "/data/AccountChangeEvent"

[[objects]]
name = "case"

[[objects]]
name = ""

[[objects]]
name = "Contact"
pii_fields = ["Email", "Id", "Email"]
history = {{ fields = [] }}

[[objects]]
name = "Lead"
mode = "poll"
channel = "/data/LeadChangeEvent"

[[objects]]
name = "Payment__c"
channel = "/data/Finance__chn"
history = {{ fields = ["Amount__c", "Bad Field"] }}
"#
    );
    assert_eq!(
        errs(&t),
        [
            "t.toml:10:1: objects[0].channel: \"/data/AccountChangeEvent\" is not a channel of Case: use \"/data/CaseChangeEvent\" or a custom channel \"/data/<Name>__chn\"",
            "t.toml:13:1: objects[1].name: object \"case\" is configured twice (also objects[0])",
            "t.toml:16:1: objects[2].name: the object name is empty",
            "t.toml:20:1: objects[3].pii_fields: PII fields need a key: add a [pii] table with key_file or key_env",
            "t.toml:20:24: objects[3].pii_fields[1]: Id is the record key and cannot be encrypted",
            "t.toml:20:30: objects[3].pii_fields[2]: \"Email\" is listed twice (also at objects[3].pii_fields[0])",
            "t.toml:21:13: objects[3].history.fields: empty: list the tracked fields, write \"all\", or remove `history`",
            "t.toml:26:1: objects[4].channel: a channel is only used with mode = \"cdc\"",
            "t.toml:31:36: objects[5].history.fields[1]: \"Bad Field\" is not a valid field API name",
        ]
    );
}

#[test]
fn missing_tables_and_objects() {
    assert_eq!(
        errs("[pipeline]\nfetch_records = 10\n"),
        [
            "t.toml: salesforce: missing table [salesforce]",
            "t.toml: objects: no objects configured: add at least one [[objects]] table",
            "t.toml: warehouse: missing table [warehouse] (type = \"sqlite\" or \"postgres\")",
        ]
    );
}

#[test]
fn credentials_source_rules() {
    let none = "[salesforce]\ninstance_url = \"https://x\"\n[warehouse]\ntype = \"sqlite\"\npath = \"w\"\n[[objects]]\nname = \"A\"\n";
    assert_eq!(
        errs(none),
        ["t.toml:1:2: salesforce: no credentials source: set credentials_file or a [salesforce.auth] table"]
    );
    let both = "[salesforce]\ninstance_url = \"https://x\"\ncredentials_file = \"c.json\"\n[salesforce.auth]\ntype = \"client_credentials\"\nclient_id = \"a\"\nclient_secret = { env = \"S\" }\n[warehouse]\ntype = \"sqlite\"\npath = \"w\"\n[[objects]]\nname = \"A\"\n";
    assert_eq!(
        errs(both),
        ["t.toml:4:13: salesforce.auth: give either credentials_file or [salesforce.auth], not both"]
    );
    let no_url = "[salesforce]\napi_version = \"v66\"\n[salesforce.auth]\ntype = \"jwt_bearer\"\nclient_id = \"\"\nusername = \"u\"\nprivate_key = { env = \"1BAD\" }\n[warehouse]\ntype = \"sqlite\"\npath = \"w\"\n[[objects]]\nname = \"A\"\n";
    assert_eq!(
        errs(no_url),
        [
            "t.toml:1:2: salesforce.instance_url: required with [salesforce.auth] (only a credentials_file can supply it)",
            "t.toml:2:1: salesforce.api_version: \"v66\" is not an API version like \"66.0\"",
            "t.toml:5:1: salesforce.auth.client_id: must not be empty",
            "t.toml:7:17: salesforce.auth.private_key.env: \"1BAD\" is not a valid environment variable name",
        ]
    );
}

#[test]
fn pipeline_units_must_be_positive() {
    let t = format!("{HEAD}[[objects]]\nname = \"A\"\n[pipeline]\nbatch_max_wait_ms = 0\npoll_interval_secs = 0\nfetch_records = 500\n");
    assert_eq!(
        errs(&t),
        [
            "t.toml:11:1: pipeline.batch_max_wait_ms: must be greater than 0",
            "t.toml:12:1: pipeline.poll_interval_secs: must be greater than 0",
            "t.toml:13:1: pipeline.fetch_records: 500 is over the Pub/Sub API maximum of 100 events per fetch",
        ]
    );
}

#[test]
fn poll_bulk_threshold_is_zero_or_at_least_one_rest_page() {
    let t = format!("{HEAD}[[objects]]\nname = \"A\"\nmode = \"poll\"\n[pipeline]\npoll_bulk_threshold = 1999\n");
    assert_eq!(
        errs(&t),
        ["t.toml:12:1: pipeline.poll_bulk_threshold: 1999 is below 2000: use 0 (never read a poll backlog through Bulk API 2.0) or at least 2000 rows (one REST page)"]
    );
    for ok in [0u64, 2_000, 1_000_000] {
        let t = format!("{HEAD}[[objects]]\nname = \"A\"\nmode = \"poll\"\n[pipeline]\npoll_bulk_threshold = {ok}\n");
        let c = load_t(&t).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(c.config.pipeline.poll_bulk_threshold, ok);
        assert_eq!(crate::run_cmd::poll_config(&c.config).bulk_threshold, ok);
    }
    let t = format!("{HEAD}[[objects]]\nname = \"A\"\n");
    assert_eq!(
        load_t(&t).unwrap().config.pipeline.poll_bulk_threshold,
        DEFAULT_POLL_BULK_THRESHOLD
    );
}

#[test]
fn pii_table_rules() {
    let t = format!("{HEAD}[[objects]]\nname = \"A\"\n[pii]\nkey_file = \"k\"\nkey_env = \"K\"\nkey_id = \"bad id\"\n");
    assert_eq!(
        errs(&t),
        [
            "t.toml:12:1: pii.key_env: give either key_file or key_env, not both",
            "t.toml:13:1: pii.key_id: must be non-empty letters, digits, `_`, `.` or `-`",
        ]
    );
}

/// `[pii]` (current key `k2`) after [`HEAD`] and one object: lines 8–12, old keys from line 13.
fn with_old_keys(old_keys: &str) -> String {
    format!("{HEAD}[[objects]]\nname = \"A\"\n[pii]\nkey_env = \"K\"\nkey_id = \"k2\"\n{old_keys}")
}

#[test]
fn old_keys_validate_like_the_current_key() {
    let t = with_old_keys(
        "[[pii.old_keys]]\nkey_id = \"k1\"\nkey_file = \"keys/k1.hex\"\n\
         [[pii.old_keys]]\nkey_id = \"k0\"\nkey_env = \"K0\"\n",
    );
    let l = load_t(&t).unwrap_or_else(|e| panic!("{e}"));
    let pii = l.config.pii.as_ref().unwrap();
    assert_eq!(pii.key_id, "k2");
    let old: Vec<(&str, &PiiKeySource)> = pii
        .old_keys
        .iter()
        .map(|k| (k.key_id.as_str(), &k.key))
        .collect();
    assert_eq!(
        old,
        [
            ("k1", &PiiKeySource::File("/cfg/keys/k1.hex".into())),
            ("k0", &PiiKeySource::Env("K0".into())),
        ]
    );
    // `config check` names how many old keys there are and their ids (never key material).
    let s = check::summary(&l);
    assert!(
        s.contains("pii key:    k2 (+2 old keys for reading: k1, k0)\n"),
        "{s}"
    );
    // Without old keys the line is as before.
    let s = check::summary(&load_t(&with_old_keys("")).unwrap());
    assert!(s.contains("pii key:    k2\n"), "{s}");
}

#[test]
fn old_key_errors_name_the_entry_key_and_line() {
    let t = with_old_keys(
        r#"[[pii.old_keys]]
key_id = "k1"
key_file = "k1.hex"
[[pii.old_keys]]
key_id = "k2"
key_env = "K_OLD"
[[pii.old_keys]]
key_id = "k1"
key_file = "x.hex"
key_env = "X"
[[pii.old_keys]]
key_id = "k0"
[[pii.old_keys]]
key_id = "old key"
key_env = "9BAD"
"#,
    );
    assert_eq!(
        errs(&t),
        [
            "t.toml:17:1: pii.old_keys[1].key_id: \"k2\" is the current key (pii.key_id); old_keys lists only retired keys",
            "t.toml:20:1: pii.old_keys[2].key_id: key id \"k1\" is given twice (also pii.old_keys[0])",
            "t.toml:22:1: pii.old_keys[2].key_env: give either key_file or key_env, not both",
            "t.toml:23:1: pii.old_keys[3]: no key: set key_file, key_env, key (a secret reference) or kms_key_id + wrapped_key_file",
            "t.toml:26:1: pii.old_keys[4].key_id: must be non-empty letters, digits, `_`, `.` or `-`",
            "t.toml:27:1: pii.old_keys[4].key_env: \"9BAD\" is not a valid environment variable name",
        ]
    );
    // The keyring stores ids of at most 255 bytes; the config says so before it is built.
    let long = "k".repeat(256);
    let t = with_old_keys(&format!(
        "[[pii.old_keys]]\nkey_id = \"{long}\"\nkey_env = \"K1\"\n"
    ));
    assert_eq!(
        errs(&t),
        ["t.toml:14:1: pii.old_keys[0].key_id: must be at most 255 characters"]
    );
}

#[test]
fn old_key_shape_errors_are_located() {
    // deny_unknown_fields, a missing key_id, and an inline key are all shape errors.
    let t = with_old_keys("[[pii.old_keys]]\nkey_id = \"k1\"\nkey_hex = \"00\"\n");
    assert_eq!(
        errs(&t),
        ["t.toml:15:1: pii.old_keys[0].key_hex: unknown field `key_hex`, expected one of `key_file`, `key_env`, `key`, `kms_key_id`, `wrapped_key_file`, `key_id`"]
    );
    // Each entry on its own: the second entry's missing id and the third's wrong type are both
    // reported, at their entries.
    let t = with_old_keys(
        "[[pii.old_keys]]\nkey_id = \"k1\"\nkey_env = \"K1\"\n\
         [[pii.old_keys]]\nkey_env = \"K0\"\n\
         [[pii.old_keys]]\nkey_id = 7\nkey_env = \"K7\"\n",
    );
    assert_eq!(
        errs(&t),
        [
            "t.toml:16:1: pii.old_keys[1]: missing field `key_id`",
            "t.toml:19:10: pii.old_keys[2].key_id: invalid type: integer `7`, expected a string",
        ]
    );
    assert_eq!(
        errs(&with_old_keys("old_keys = \"k1\"\n")),
        ["t.toml:13:12: pii.old_keys: expected an array of tables ([[pii.old_keys]])"]
    );
}

#[test]
fn old_keys_resolve_with_errors_per_entry_and_never_print_keys() {
    let dir = tempfile::tempdir().unwrap();
    let t = with_old_keys(
        "[[pii.old_keys]]\nkey_id = \"k1\"\nkey_env = \"K1\"\n\
         [[pii.old_keys]]\nkey_id = \"k0\"\nkey_file = \"k0.hex\"\n",
    );
    std::fs::write(
        dir.path().join("c.json"),
        r#"{"instance_url":"https://x","client_id":"cid","client_secret":"cs","username":"u","password":"p"}"#,
    )
    .unwrap();
    let l = load_str(&t, "t.toml", dir.path()).unwrap();
    let current = "c3".repeat(32);
    // Bad hex in the first old key, an unreadable file for the second.
    let e = l
        .resolve_secrets(&env_of(&[("K", &current), ("K1", &"zz".repeat(32))]))
        .unwrap_err()
        .to_string();
    let k0 = dir.path().join("k0.hex");
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(
        lines[0],
        "t.toml:15:1: pii.old_keys[0].key_env: the key must be 64 hex digits (32 bytes, AES-256)"
    );
    assert!(
        lines[1].starts_with(&format!(
            "t.toml:18:1: pii.old_keys[1].key_file: cannot read {}",
            k0.display()
        )),
        "{e}"
    );
    assert_eq!(lines.len(), 2, "{e}");
    // An unset variable and a short key.
    std::fs::write(&k0, "0123").unwrap();
    let e = l
        .resolve_secrets(&env_of(&[("K", &current)]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "t.toml:15:1: pii.old_keys[0].key_env: environment variable K1 is not set\n\
         t.toml:18:1: pii.old_keys[1].key_file: the key must be 64 hex digits (32 bytes, AES-256)"
    );

    // All present: both old keys, in file order, beside the current one; Debug shows no key.
    let (hex1, hex0) = ("a1".repeat(32), "B0".repeat(32));
    std::fs::write(&k0, format!("{hex0}\n")).unwrap();
    let r = l
        .resolve_secrets(&env_of(&[("K", &current), ("K1", &hex1)]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.pii_key.as_ref().unwrap().id, "k2");
    let old: Vec<(&str, [u8; 32])> = r
        .pii_old_keys
        .iter()
        .map(|k| (k.id.as_str(), k.key))
        .collect();
    assert_eq!(old, [("k1", [0xa1; 32]), ("k0", [0xb0; 32])]);
    let debug = format!("{r:?}");
    for hex in [&current, &hex1, &hex0, &"b0".repeat(32)] {
        assert!(!debug.contains(hex.as_str()), "key material in {debug}");
    }
    assert!(debug.contains("PiiKey { id: \"k1\", key: *** }"), "{debug}");
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

#[test]
fn resolve_secrets_reports_unset_env_and_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let t = "[salesforce]\ninstance_url = \"https://x\"\n[salesforce.auth]\ntype = \"password\"\nclient_id = \"a\"\nclient_secret = { env = \"SF_SECRET\" }\nusername = \"u\"\npassword = { file = \"missing-pw.txt\" }\n[warehouse]\ntype = \"postgres\"\nurl = { env = \"PG_URL\" }\n[[objects]]\nname = \"Contact\"\npii_fields = [\"Email\"]\n[pii]\nkey_file = \"pii.key\"\nkey_id = \"k1\"\n";
    let l = load_str(t, "t.toml", dir.path()).unwrap();
    let e = l
        .resolve_secrets(&env_of(&[("PG_URL", "mysql://nope")]))
        .unwrap_err()
        .to_string();
    let lines: Vec<&str> = e.lines().collect();
    let missing = dir.path().join("missing-pw.txt");
    let key = dir.path().join("pii.key");
    assert_eq!(
        lines[0],
        "t.toml:6:19: salesforce.auth.client_secret.env: environment variable SF_SECRET is not set"
    );
    assert!(
        lines[1].starts_with(&format!(
            "t.toml:8:14: salesforce.auth.password.file: cannot read {}: No such file",
            missing.display()
        )),
        "{e}"
    );
    assert_eq!(
        lines[2],
        "t.toml:11:9: warehouse.url.env: the value is not a postgres:// or postgresql:// URL"
    );
    assert!(
        lines[3].starts_with(&format!(
            "t.toml:16:1: pii.key_file: cannot read {}",
            key.display()
        )),
        "{e}"
    );
    assert_eq!(lines.len(), 4);

    // Now with everything present: resolves, and nothing secret is printable.
    std::fs::write(&missing, "pw-value\n").unwrap();
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    let r = l
        .resolve_secrets(&env_of(&[
            ("SF_SECRET", "cs-value"),
            ("PG_URL", "postgres://u:pg-pass@h/db"),
        ]))
        .unwrap();
    assert_eq!(r.credentials.flow_name(), "password");
    assert_eq!(
        r.warehouse_url.as_ref().unwrap().expose(),
        "postgres://u:pg-pass@h/db"
    );
    assert_eq!(r.pii_key.as_ref().unwrap().key, [0xab; 32]);
    let debug = format!("{r:?}");
    for s in ["pw-value", "cs-value", "pg-pass"] {
        assert!(!debug.contains(s), "{s} leaked in {debug}");
    }
    match &r.credentials {
        sfsync_salesforce::Credentials::Password {
            password,
            login_url,
            ..
        } => {
            assert_eq!(password.expose(), "pw-value");
            assert_eq!(login_url, "https://x");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn resolve_rejects_bad_pii_key_and_empty_secret() {
    let t = format!("{HEAD}[[objects]]\nname = \"A\"\npii_fields = [\"B\"]\n[pii]\nkey_env = \"K\"\nkey_id = \"k\"\n").replace(
        "credentials_file = \"c.json\"",
        "[salesforce.auth]\ntype = \"refresh_token\"\nclient_id = \"a\"\nrefresh_token = { env = \"RT\" }",
    );
    let l = load_t(&t).unwrap();
    let e = l
        .resolve_secrets(&env_of(&[("K", "short"), ("RT", "  ")]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "t.toml:6:19: salesforce.auth.refresh_token.env: environment variable RT is empty\n\
         t.toml:15:1: pii.key_env: the key must be 64 hex digits (32 bytes, AES-256)"
    );
}

#[test]
fn credentials_file_is_loaded_and_supplies_the_instance_url() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("creds.json"),
        r#"{"instance_url":"https://emu.local:8443","login_url":"https://emu.local:8443","client_id":"cid","client_secret":"cs","username":"u","password":"p","pubsub_address":"emu.local:7443"}"#,
    )
    .unwrap();
    let t = "[salesforce]\ncredentials_file = \"creds.json\"\n[warehouse]\ntype = \"sqlite\"\npath = \"w.db\"\n[[objects]]\nname = \"Case\"\n";
    let l = load_str(t, "t.toml", dir.path()).unwrap();
    let r = l.resolve_secrets(&env_of(&[])).unwrap();
    assert_eq!(r.instance_url, "https://emu.local:8443");
    assert_eq!(r.pubsub_address.as_deref(), Some("emu.local:7443"));
    // The file has a password, so the preferred flow is username-password.
    assert_eq!(r.credentials.flow_name(), "password");

    let missing = "[salesforce]\ncredentials_file = \"nope.json\"\n[warehouse]\ntype = \"sqlite\"\npath = \"w.db\"\n[[objects]]\nname = \"Case\"\n";
    let l = load_str(missing, "t.toml", dir.path()).unwrap();
    let e = l.resolve_secrets(&env_of(&[])).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "t.toml:2:1: salesforce.credentials_file: cannot load {}",
            dir.path().join("nope.json").display()
        )),
        "{e}"
    );
}

/// Copies the repository's `sfsync.example.toml` into a temp dir beside fixture secret files
/// (the paths the example references) and returns the dir and the env the example names.
pub(crate) fn example_with_fixtures() -> (tempfile::TempDir, Vec<(&'static str, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sfsync.example.toml");
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
    let env = vec![
        (
            "SFSYNC_WAREHOUSE_URL",
            "postgres://sfsync:pw@127.0.0.1:5432/warehouse".to_string(),
        ),
        ("SFSYNC_PII_KEY", "0f".repeat(32)),
    ];
    (dir, env)
}

#[test]
fn example_config_parses_validates_and_resolves() {
    let (dir, env) = example_with_fixtures();
    let l = load(&dir.path().join("sfsync.toml")).unwrap_or_else(|e| panic!("{e}"));
    let c = &l.config;
    let names: Vec<&str> = c.objects.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Case",
            "Account",
            "Contact",
            "Opportunity",
            "Service_Request__c",
            "Payment__c",
            "Grant_Application__c"
        ]
    );
    assert_eq!(c.objects[6].mode, SyncMode::OutboundMessage);
    assert_eq!(c.objects[6].channel, None);
    let om = &c.outbound_messages[0];
    assert_eq!(
        (
            om.name.as_str(),
            om.object.as_str(),
            om.organization_id.as_str()
        ),
        (
            "grant-applications",
            "Grant_Application__c",
            "00D5e000000Abc1"
        )
    );
    assert_eq!(
        c.objects[5].channel.as_deref(),
        Some("/data/Payment__ChangeEvent")
    );
    assert_eq!(c.objects[2].pii_fields, ["Email", "Phone", "Birthdate"]);
    assert_eq!(c.objects[3].history, Some(HistoryFields::All));
    assert_eq!(c.salesforce.credentials.describe(), "jwt_bearer");
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = l
        .resolve_secrets(&env_of(&pairs))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.credentials.flow_name(), "jwt_bearer");
    assert_eq!(r.pii_key.unwrap().id, "pii-2026-01");
    // The rotation example is commented out: the example config has no old keys.
    assert!(r.pii_old_keys.is_empty());
    assert!(c.pii.as_ref().unwrap().old_keys.is_empty());
    // The summary `config check` prints.
    let s = check::summary(&l);
    assert!(s.contains("auth:       jwt_bearer"), "{s}");
    assert!(s.contains("/data/Service_Request__ChangeEvent"), "{s}");
}

#[test]
fn every_documented_example_key_is_explained() {
    // Each `key =` line of the example is preceded by a comment line (the annotation rule).
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../sfsync.example.toml"
    ))
    .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut seen_keys = std::collections::HashSet::new();
    for (i, l) in lines.iter().enumerate() {
        let l = l.trim();
        if l.starts_with('#') || l.is_empty() || l.starts_with('[') {
            continue;
        }
        let key = l.split('=').next().unwrap().trim();
        if !seen_keys.insert(key) {
            continue; // explained at its first use (e.g. `name` in [[objects]])
        }
        let explained = text.contains(&format!("#   {key}"))
            || lines[..i]
                .iter()
                .rev()
                .take(3)
                .any(|p| p.trim_start().starts_with('#'));
        assert!(explained, "line {}: `{key}` has no explanation", i + 1);
    }
}

#[test]
fn truncated_and_mangled_input_never_panics() {
    // Stand-in for the config fuzz target: every prefix of the example (and each with a stray
    // byte inserted) gives Ok or located errors, never a panic.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../sfsync.example.toml"
    ))
    .unwrap();
    let cuts: Vec<usize> = (0..=text.len())
        .filter(|i| text.is_char_boundary(*i))
        .step_by(3)
        .collect();
    for &i in &cuts {
        for junk in ["", "\"", "=", "[", "é"] {
            let tail: String = text[i..].chars().take(40).collect();
            let t = format!("{}{junk}{tail}", &text[..i]);
            if let Err(e) = load_t(&t) {
                assert!(!e.errors.is_empty());
                let _ = e.to_string();
            }
        }
    }
}

#[test]
fn quality_rules_validated_with_their_key_and_line() {
    let t = format!(
        r#"{HEAD}[[objects]]
name = "Account"

[[objects]]
name = "Contact"
pii_fields = ["Email"]
required = ["LastName", "bad name"]
references = [{{ field = "AccountId", object = "Acount" }}]

[[objects.rules]]
field = "MailingPostalCode"
check = "regex"
pattern = "("

[[objects.rules]]
field = "Score__c"
check = "between"
severity = "fatal"

[[objects.rules]]
field = "Email"
check = "unique"

[[objects.rules]]
field = "Code__c"
check = "range"
values = ["x"]

[pii]
key_env = "K"
key_id = "k1"
"#
    );
    let e = errs(&t);
    let has = |key: &str, msg: &str| {
        assert!(
            e.iter()
                .any(|l| l.contains(key) && l.contains(msg) && l.starts_with("t.toml:")),
            "no error on {key} saying {msg}: {e:#?}"
        )
    };
    has("objects[1].required[1]", "not a valid field API name");
    has(
        "objects[1].references[0].object",
        "\"Acount\" is not a configured object",
    );
    has("objects[1].rules[0].pattern", "does not compile");
    has("objects[1].rules[1].check", "\"between\" is not a check");
    has(
        "objects[1].rules[1].severity",
        "\"fatal\" is not a severity",
    );
    has(
        "objects[1].rules[2].check",
        "cannot be checked for uniqueness",
    );
    has("objects[1].rules[3].min", "give min, max or both");
    has(
        "objects[1].rules[3].values",
        "only used with check = \"accepted_values\"",
    );
    // A good set compiles into the object's quality spec.
    let ok = format!(
        r#"{HEAD}[[objects]]
name = "Account"

[[objects]]
name = "Contact"
required = ["LastName"]
schema_checks = false
references = [{{ field = "AccountId", object = "Account", alert_after_secs = 60 }}]
rules = [{{ field = "Title", check = "accepted_values", values = ["Dr"], severity = "warn" }},
         {{ field = "Score__c", check = "range", min = 0, max = 10.5 }}]

[pipeline]
max_stored_failures_per_rule = 50
"#
    );
    let l = load_t(&ok).unwrap();
    let q = &l.config.objects[1].quality;
    assert_eq!(q.required, ["LastName"]);
    assert!(!q.schema_checks);
    assert_eq!(q.references[0].parent, "Account");
    assert_eq!(q.references[0].alert_after_secs, 60);
    assert_eq!(q.rules.len(), 2);
    assert_eq!(
        q.rules[1].check,
        sfsync_pipeline::quality::CheckSpec::Range {
            min: Some(0.0),
            max: Some(10.5)
        }
    );
    assert_eq!(l.config.pipeline.max_stored_failures_per_rule, 50);
}

#[test]
fn formula_fields_parse_and_are_checked() {
    use sfsync_pipeline::model::FormulaFields;
    let ok = format!(
        r#"{HEAD}[[objects]]
name = "Account"
formula_fields = true

[[objects]]
name = "Contact"
formula_fields = ["Full_Name__c"]

[[objects]]
name = "Case"
formula_fields = false

[[objects]]
name = "Lead"

[pipeline]
formula_refresh_secs = 30
"#
    );
    let l = load_t(&ok).unwrap_or_else(|e| panic!("{e}"));
    let f: Vec<&FormulaFields> = l.config.objects.iter().map(|o| &o.formula_fields).collect();
    assert_eq!(
        f,
        [
            &FormulaFields::All,
            &FormulaFields::Fields(vec!["Full_Name__c".into()]),
            &FormulaFields::None,
            &FormulaFields::None
        ]
    );
    assert_eq!(l.config.pipeline.formula_refresh_secs, 30);
    let s = check::summary(&l);
    assert!(s.contains("formulas: all"), "{s}");
    assert!(s.contains("formulas: Full_Name__c"), "{s}");
    // The default interval: five minutes.
    let l = load_t(&format!("{HEAD}[[objects]]\nname = \"Account\"\n")).unwrap();
    assert_eq!(l.config.pipeline.formula_refresh_secs, 300);
    assert_eq!(l.config.pipeline.job_slice_secs, 30 * 24 * 3600);

    let bad = format!(
        r#"{HEAD}[[objects]]
name = "Account"
formula_fields = []

[[objects]]
name = "Contact"
formula_fields = ["Full_Name__c", "bad name", "full_name__c"]
history = {{ fields = ["LastName", "Full_Name__c"] }}

[[objects]]
name = "Lead"
mode = "poll"
formula_fields = true

[pipeline]
formula_refresh_secs = 0
job_slice_secs = 0
"#
    );
    let e = errs(&bad);
    let has = |key: &str, msg: &str| {
        assert!(
            e.iter().any(|l| l.contains(key) && l.contains(msg)),
            "no error on {key} saying {msg}: {e:#?}"
        )
    };
    has("objects[0].formula_fields", "empty");
    has("objects[1].formula_fields[1]", "not a valid field API name");
    has("objects[1].formula_fields[2]", "listed twice");
    has(
        "objects[1].history.fields[1]",
        "cannot be tracked in history",
    );
    has("objects[2].formula_fields", "mode = \"cdc\" objects only");
    has("pipeline.formula_refresh_secs", "greater than 0");
    has("pipeline.job_slice_secs", "greater than 0");
    let e = errs(&format!(
        "{HEAD}[[objects]]\nname = \"Case\"\nformula_fields = \"all\"\n"
    ));
    assert!(
        e.iter().any(|l| l.contains("objects[0].formula_fields")
            && l.contains("expected true, false or a list of formula field names")),
        "{e:#?}"
    );
}

#[test]
fn writeback_objects_parse_into_the_policy() {
    use sfsync_pipeline::writeback::{ConflictPolicy, Owner};
    let t = format!(
        "{GOOD}\n[[writeback.objects]]\nname = \"Case\"\nowner = \"shared\"\npolicy = \"merge\"\n\
         fields = [{{ name = \"Status\", owner = \"case_mgmt\", policy = \"source_of_truth\" }},\n\
         {{ name = \"Priority\", owner = \"salesforce\" }}]\n"
    );
    let l = load_t(&t).unwrap();
    let case = &l.config.writeback.objects["Case"];
    assert_eq!(case.default.owner, Owner::Shared);
    assert_eq!(case.default.policy, ConflictPolicy::Merge);
    let status = case.rule("status");
    assert_eq!(status.owner, Owner::System("case_mgmt".into()));
    assert_eq!(status.policy, ConflictPolicy::SourceOfTruth);
    assert_eq!(case.rule("Priority").owner, Owner::Salesforce);
    assert_eq!(
        case.rule("Priority").policy,
        ConflictPolicy::Merge,
        "object's policy"
    );
    // No [writeback]: an empty policy (everything refused).
    assert!(load_t(GOOD).unwrap().config.writeback.objects.is_empty());
}

#[test]
fn writeback_errors_name_the_key() {
    let t = format!(
        "{GOOD}\n[[writeback.objects]]\nname = \"Lead\"\nowner = \"shared\"\npolicy = \"source_of_truth\"\n\
         fields = [{{ name = \"Bad Name\", owner = \"\" }}, {{ name = \"bad name\", owner = \"x y\" }}]\n"
    );
    let e = errs(&t).join("\n");
    for want in [
        "writeback.objects[0].name: \"Lead\" is not a synced object",
        "writeback.objects[0].policy: source_of_truth needs an owner",
        "writeback.objects[0].fields[0].name: \"Bad Name\" is not a valid field API name",
        "writeback.objects[0].fields[0].owner: must be salesforce, shared or a system name",
        "writeback.objects[0].fields[1].owner: \"x y\" is not a valid system name",
        "writeback.objects[0].fields[1].name: \"bad name\" is listed twice for Lead",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    let e = errs(&format!(
        "{GOOD}\n[[writeback.objects]]\nname = \"Case\"\npolicy = \"newest\"\n"
    ))
    .join("\n");
    assert!(
        e.contains("writeback.objects[0].policy: unknown variant `newest`"),
        "{e}"
    );
    let e = errs(&format!("{GOOD}\n[writeback]\nobjets = []\n")).join("\n");
    assert!(
        e.contains("writeback.objets: unknown field `objets`"),
        "{e}"
    );
}

#[test]
fn writeback_delivery_keys_parse_and_are_checked() {
    let t = format!(
        "{GOOD}\n[writeback]\nlinger_ms = 250\nmax_batch = 400\nbulk_threshold = 300\nmax_attempts = 3\nlease_secs = 30\n\
         [[writeback.objects]]\nname = \"Case\"\nowner = \"shared\"\nparent_field = \"AccountId\"\n"
    );
    let d = load_t(&t).unwrap().config.writeback_delivery;
    assert_eq!(
        (
            d.linger_ms,
            d.max_batch,
            d.bulk_threshold,
            d.max_attempts,
            d.lease_secs
        ),
        (250, 400, 300, 3, 30)
    );
    assert_eq!(d.parent_fields["Case"], "AccountId");
    // Defaults without the keys.
    let d = load_t(GOOD).unwrap().config.writeback_delivery;
    assert_eq!(
        (d.linger_ms, d.max_attempts, d.lease_secs),
        (2_000, 10, 120)
    );
    let e = errs(&format!(
        "{GOOD}\n[writeback]\nlinger_ms = 0\nmax_batch = 0\nmax_attempts = 500\nlease_secs = 0\n\
         [[writeback.objects]]\nname = \"Case\"\nparent_field = \"Account Id\"\n"
    ))
    .join("\n");
    for want in [
        "writeback.linger_ms: must be greater than 0",
        "writeback.max_batch: must be greater than 0",
        "writeback.lease_secs: must be greater than 0",
        "writeback.max_attempts: 500 is too many (at most 100)",
        "writeback.objects[0].parent_field: \"Account Id\" is not a valid field API name",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

/// `HEAD` + an `[[objects]]` + `api` text.
fn with_api(api: &str) -> String {
    format!("{HEAD}[[objects]]\nname = \"Case\"\n\n{api}")
}

#[test]
fn api_defaults_to_loopback_when_absent_and_can_be_turned_off() {
    let c = load_t(&with_api("")).unwrap().config;
    let api = c.api.expect("the API is on by default");
    assert_eq!(api.listen.to_string(), "127.0.0.1:8787");
    assert!(!api.explicit && api.tls.is_none() && api.tokens.is_empty());
    assert_eq!(api.max_batch_writes, 1000);
    let c = load_t(&with_api("[api]\nenabled = false\n"))
        .unwrap()
        .config;
    assert!(c.api.is_none());
}

#[test]
fn api_non_loopback_listen_needs_tls_and_names_the_key() {
    let e = errs(&with_api("[api]\nlisten = \"0.0.0.0:8787\"\n"));
    assert_eq!(
        e[0],
        "t.toml:12:1: api.listen: \"0.0.0.0:8787\" is not a loopback address: serving bearer tokens over plain HTTP is refused; set api.tls_cert_file and api.tls_key_file, or listen on 127.0.0.1"
    );
    let e = errs(&with_api(
        "[api]\nlisten = \"0.0.0.0:8787\"\ntls_cert_file = \"c.pem\"\n",
    ));
    assert!(
        e[0].contains("api.tls_key_file: required with api.tls_cert_file"),
        "{e:?}"
    );
    let c = load_t(&with_api(
        "[api]\nlisten = \"0.0.0.0:8787\"\ntls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"\n",
    ))
    .unwrap()
    .config;
    let api = c.api.unwrap();
    assert!(api.explicit);
    assert_eq!(
        api.tls,
        Some((
            Path::new("/cfg/c.pem").into(),
            Path::new("/cfg/k.pem").into()
        ))
    );
    let e = errs(&with_api("[api]\nlisten = \"localhost:80\"\n"));
    assert!(
        e[0].contains("api.listen: \"localhost:80\" is not IP:port"),
        "{e:?}"
    );
    // IPv6 loopback is loopback.
    assert!(load_t(&with_api("[api]\nlisten = \"[::1]:8787\"\n")).is_ok());
}

#[test]
fn api_token_rules_name_the_entry() {
    let e = errs(&with_api(
        r#"[api]
[[api.tokens]]
name = "ops"
role = "admin"
token_env = "T1"
[[api.tokens]]
name = "ops"
role = "viewer"
token_env = "T2"
[[api.tokens]]
name = "w"
role = "writer"
token_file = "w.token"
[[api.tokens]]
name = "both"
role = "viewer"
token_env = "T3"
token_file = "t3"
"#,
    ));
    let all = e.join("\n");
    assert!(
        all.contains(
            "api.tokens[0].role: unknown role \"admin\", expected viewer, operator or writer"
        ),
        "{all}"
    );
    assert!(
        all.contains("api.tokens[1].name: token name \"ops\" is given twice (also api.tokens[0])"),
        "{all}"
    );
    assert!(
        all.contains("api.tokens[2].source_system: required for a writer token"),
        "{all}"
    );
    assert!(
        all.contains("api.tokens[3].token_file: give either token_env or token_file, not both"),
        "{all}"
    );
    let e = errs(&with_api(
        "[api]\n[[api.tokens]]\nname = \"x\"\nrole = \"viewer\"\ntoken = \"inline\"\n",
    ));
    // `token` takes a secret reference, never the token itself.
    assert!(
        e[0].contains("api.tokens[0].token: inline secrets are not allowed"),
        "{e:?}"
    );
}

#[test]
fn api_tokens_resolve_without_printing_them() {
    let l = load_t(&with_api(
        r#"[api]
[[api.tokens]]
name = "ops"
role = "operator"
token_env = "OPS"
[[api.tokens]]
name = "short"
role = "viewer"
token_env = "SHORT"
[[api.tokens]]
name = "copy"
role = "viewer"
token_env = "COPY"
"#,
    ))
    .unwrap();
    let long = "a-long-operator-token-123";
    let env = env_of(&[("OPS", long), ("SHORT", "tiny"), ("COPY", long)]);
    let e = l.resolve_secrets(&env).unwrap_err().to_string();
    assert!(
        e.contains("api.tokens[1].token_env: the token of 'short' is shorter than 16 characters"),
        "{e}"
    );
    assert!(
        e.contains("api.tokens[2].token_env: 'copy' has the same token as 'ops' (api.tokens[0])"),
        "{e}"
    );
    assert!(!e.contains(long) && !e.contains("tiny"), "{e}");
    let env = env_of(&[
        ("OPS", long),
        ("SHORT", "another-long-token-456"),
        ("COPY", "a-third-long-token-789"),
    ]);
    let mut problems = Vec::new();
    let tokens = secrets::resolve_api_tokens(
        &mut problems,
        l.config.api.as_ref(),
        &env,
        &secrets::AwsFetched::default(),
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(tokens.len(), 3);
    assert_eq!(tokens[0].role, ApiRole::Operator);
    assert_eq!(tokens[0].token.expose(), long);
    assert!(!format!("{tokens:?}").contains(long));
}

#[test]
fn archive_defaults_locations_and_errors() {
    // Without [archive]: on, in `archive` beside the SQLite file, with the customer's periods.
    let l = load_t(&format!("{HEAD}[[objects]]\nname = \"Account\"\n")).unwrap();
    let a = &l.config.archive;
    assert_eq!(
        a.location,
        Some(ArchiveWhere::Local(PathBuf::from("/cfg/archive")))
    );
    assert_eq!(
        (
            a.hot_retention_days,
            a.retention_days,
            a.audit_retention_days
        ),
        (7, 396, 2557)
    );
    assert_eq!((a.every_secs, a.retention_every_secs), (3600, 86_400));
    let with = |table: &str| format!("{HEAD}[[objects]]\nname = \"Account\"\n\n[archive]\n{table}");
    let l = load_t(&with(
        "location = \"s3://raw-history/org-a/\"\nhot_retention_days = 0\n",
    ))
    .unwrap();
    assert_eq!(
        l.config.archive.location,
        Some(ArchiveWhere::S3 {
            bucket: "raw-history".into(),
            prefix: "org-a".into()
        })
    );
    assert_eq!(l.config.archive.hot_retention_days, 0);
    let l = load_t(&with("location = \"arch\"\n")).unwrap();
    assert_eq!(
        l.config.archive.location,
        Some(ArchiveWhere::Local(PathBuf::from("/cfg/arch")))
    );
    let l = load_t(&with("enabled = false\n")).unwrap();
    assert_eq!(l.config.archive.location, None);
    let e = errs(&with(
        "location = \"gs://bucket/x\"\nretention_days = 0\nevery_secs = 0\nhot_retention_days = 30\naudit_retention_days = 0\n",
    ));
    let has = |key: &str, msg: &str| {
        assert!(
            e.iter().any(|l| l.contains(key) && l.contains(msg)),
            "no error on {key} saying {msg}: {e:#?}"
        )
    };
    has(
        "archive.location",
        "expected a local directory or s3://bucket/prefix",
    );
    has("archive.retention_days", "greater than 0");
    has("archive.every_secs", "greater than 0");
    has("archive.audit_retention_days", "greater than 0");
    has(
        "archive.hot_retention_days",
        "longer than archive.retention_days",
    );
    let e = errs(&with("location = \"s3:///x\"\n"));
    assert!(e.iter().any(|l| l.contains("names no bucket")), "{e:#?}");
    let e = errs(&with("keep = 3\n"));
    assert!(
        e.iter()
            .any(|l| l.contains("archive") && l.contains("keep")),
        "{e:#?}"
    );
}

#[test]
fn freshness_defaults_and_errors() {
    // Without [freshness]: every 5 s, delayed after 120 s (the customer's target).
    let l = load_t(&format!("{HEAD}[[objects]]\nname = \"Account\"\n")).unwrap();
    let f = &l.config.freshness;
    assert_eq!((f.update_every_secs, f.delayed_after_secs), (5, 120));
    let l = load_t(&format!(
        "{HEAD}[[objects]]\nname = \"Account\"\nsla_secs = 30\n\n[freshness]\nupdate_every_secs = 2\ndelayed_after_secs = 300\n"
    ))
    .unwrap();
    assert_eq!(
        (
            l.config.freshness.update_every_secs,
            l.config.freshness.delayed_after_secs
        ),
        (2, 300)
    );
    let e = errs(&format!(
        "{HEAD}[[objects]]\nname = \"Account\"\n\n[freshness]\nupdate_every_secs = 0\ndelayed_after_secs = 0\n"
    ));
    let has = |e: &[String], key: &str, msg: &str| {
        assert!(
            e.iter().any(|l| l.contains(key) && l.contains(msg)),
            "no error on {key} saying {msg}: {e:#?}"
        )
    };
    has(&e, "freshness.update_every_secs", "greater than 0");
    has(&e, "freshness.delayed_after_secs", "greater than 0");
    // Updates must come more often than any threshold, the objects' own included.
    let e = errs(&format!(
        "{HEAD}[[objects]]\nname = \"Account\"\n\n[[objects]]\nname = \"Case\"\nsla_secs = 10\n\n[freshness]\nupdate_every_secs = 10\ndelayed_after_secs = 10\n"
    ));
    has(
        &e,
        "freshness.update_every_secs",
        "10 s is not less than freshness.delayed_after_secs (10 s)",
    );
    has(
        &e,
        "objects[1].sla_secs",
        "10 s is not more than freshness.update_every_secs (10 s)",
    );
    let e = errs(&format!(
        "{HEAD}[[objects]]\nname = \"Account\"\n\n[freshness]\nevery = 3\n"
    ));
    has(&e, "freshness", "unknown field `every`");
}

#[test]
fn sinks_validate_with_defaults_and_name_each_error() {
    let with = |sinks: &str| {
        format!("{HEAD}[[objects]]\nname = \"Account\"\n\n[[objects]]\nname = \"Case\"\n\n{sinks}")
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.json"),
        r#"{"instance_url":"https://x","client_id":"cid","client_secret":"cs","username":"u","password":"p"}"#,
    )
    .unwrap();
    let l = load_str(
        &with(
            "[[sinks]]\nname = \"hooks\"\nurl = \"https://h.example.org/x?token=abc\"\nsecret = { env = \"HOOK\" }\n\n\
             [[sinks]]\nname = \"stream\"\nkind = \"kafka\"\nbrokers = \"b1:9092,b2:9092\"\nobjects = [\"Case\"]\npii = \"sealed\"\nstart = \"latest\"\n",
        ),
        "t.toml",
        dir.path(),
    )
    .unwrap();
    let s = &l.config.sinks;
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].objects, ["Account", "Case"]);
    assert_eq!(
        (s[0].batch_max, s[0].pii, s[0].dead_letter_after_secs),
        (200, sfsync_store::PiiMode::Omit, 3600)
    );
    assert_eq!(s[0].target.kind(), "webhook");
    // Query strings may hold credentials: never shown.
    assert_eq!(s[0].target.describe(), "https://h.example.org/x");
    assert_eq!(s[1].target.kind(), "kafka");
    assert_eq!(
        s[1].target.describe(),
        "kafka://b1:9092,b2:9092 topic sfsync.{object}"
    );
    assert_eq!(s[1].start, sfsync_pipeline::sinks::StartFrom::Latest);
    let r = l
        .resolve_secrets(&env_of(&[("HOOK", "a-signing-secret-0123456789")]))
        .unwrap();
    assert_eq!(
        r.sink_secrets["hooks"].expose(),
        "a-signing-secret-0123456789"
    );
    let short = l
        .resolve_secrets(&env_of(&[("HOOK", "tiny-secret")]))
        .unwrap_err()
        .to_string();
    assert!(
        short.contains("sinks[0].secret: the signing secret is shorter than 16 bytes"),
        "{short}"
    );
    assert!(!short.contains("tiny-secret"), "{short}");

    let e = errs(&with(
        "[[sinks]]\nname = \"a\"\nurl = \"http://h.example.org/x\"\n\n\
         [[sinks]]\nname = \"a\"\nurl = \"https://ok.example.org/\"\nsecret = { env = \"S\" }\nobjects = [\"Lead\"]\nbatch_max = 0\npii = \"clear\"\nbrokers = \"x:1\"\n\n\
         [[sinks]]\nname = \"k\"\nkind = \"kafka\"\ntopic = \"all-changes\"\nurl = \"https://x/\"\n\n\
         [[sinks]]\nname = \"q\"\nkind = \"queue\"\nstart = \"middle\"\n",
    ));
    let has = |key: &str, msg: &str| {
        assert!(
            e.iter().any(|l| l.contains(key) && l.contains(msg)),
            "no error on {key} saying {msg}: {e:#?}"
        )
    };
    has("sinks[0].url", "loopback receiver only");
    has("sinks[0].secret", "needs a signing secret");
    has("sinks[1].name", "used by another sink");
    has("sinks[1].objects[0]", "'Lead' is not a synced object");
    has("sinks[1].batch_max", "greater than 0");
    has("sinks[1].pii", "expected omit, sealed or plain");
    has("sinks[1].brokers", "kafka setting");
    has("sinks[2].url", "webhook setting");
    has("sinks[2].topic", "no {object}");
    has("sinks[2].brokers", "needs brokers");
    has("sinks[3].kind", "expected webhook or kafka");
    has("sinks[3].start", "expected earliest or latest");
}

#[test]
fn platform_events_validate_and_name_each_error_with_its_line() {
    let with = |extra: &str| format!("{HEAD}[[objects]]\nname = \"Account\"\n\n{extra}");
    let l = load_t(&with(
        "[platform_events]\nsubscribe = [\"/event/Order_Shipped__e\", \"/event/Orders__chn\"]\npublish = [\"Record_Applied__e\"]\n\n\
         [[sinks]]\nname = \"applied\"\nkind = \"platform_event\"\nevent = \"Record_Applied__e\"\nfields = { Record_Id__c = \"id\", Name__c = \"record.Name\" }\n\n\
         [[sinks]]\nname = \"orders\"\nurl = \"http://127.0.0.1:9/x\"\nsecret = { env = \"S\" }\nobjects = [\"Order_Shipped__e\", \"Order_Lost__e\", \"Account\"]\n",
    ))
    .unwrap();
    let pe = &l.config.platform_events;
    assert_eq!(
        pe.subscribe,
        ["/event/Order_Shipped__e", "/event/Orders__chn"]
    );
    assert_eq!(pe.publish, ["Record_Applied__e"]);
    assert_eq!(
        (
            pe.publish_batch_max,
            pe.publish_max_attempts,
            pe.max_events_per_request
        ),
        (200, 8, 1000)
    );
    let s = &l.config.sinks;
    assert_eq!(s[0].target.kind(), "platform_event");
    assert_eq!(s[0].target.describe(), "/event/Record_Applied__e");
    assert_eq!(s[0].objects, ["Account"]);
    assert_eq!(s[1].objects.len(), 3);
    // Without [platform_events] nothing is subscribed or published.
    assert!(load_t(&with(""))
        .unwrap()
        .config
        .platform_events
        .subscribe
        .is_empty());

    // Lines: HEAD is 7, [[objects]] 8-9, blank 10, [platform_events] at 11.
    let e = errs(&with(
        "[platform_events]\nsubscribe = [\"/data/AccountChangeEvent\", \"/event/A__e\", \"/event/A__e\"]\npublish = [\"Nope\"]\npublish_batch_max = 500\npublish_max_attempts = 0\nunknown_key = 1\n",
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with("t.toml:16:1: platform_events.unknown_key: unknown field `unknown_key`"),
        "{e:#?}"
    );
    let e = errs(&with(
        "[platform_events]\nsubscribe = [\"/data/AccountChangeEvent\", \"/event/A__e\", \"/event/A__e\"]\npublish = [\"Nope\"]\npublish_batch_max = 500\npublish_max_attempts = 0\n\n\
         [[sinks]]\nname = \"ev\"\nkind = \"platform_event\"\nevent = \"Other__e\"\nurl = \"https://x/\"\nfields = { Bad = \"nope\" }\n\n\
         [[sinks]]\nname = \"hook\"\nurl = \"https://x/\"\nsecret = { env = \"S\" }\nobjects = [\"Unknown__e\"]\nevent = \"A__e\"\n",
    ));
    let has = |prefix: &str, msg: &str| {
        assert!(
            e.iter().any(|l| l.starts_with(prefix) && l.contains(msg)),
            "no error {prefix} saying {msg}: {e:#?}"
        )
    };
    has("t.toml:12:", "platform_events.subscribe[0]: \"/data/AccountChangeEvent\" is not a platform-event channel");
    has(
        "t.toml:12:",
        "platform_events.subscribe[2]: \"/event/A__e\" is subscribed twice",
    );
    has(
        "t.toml:13:",
        "platform_events.publish[0]: \"Nope\" is not a platform event API name",
    );
    has(
        "t.toml:14:",
        "platform_events.publish_batch_max: 500 must be 1 to 200",
    );
    has(
        "t.toml:15:",
        "platform_events.publish_max_attempts: must be greater than 0",
    );
    has(
        "t.toml:20:",
        "sinks[0].event: 'Other__e' is not in [platform_events] publish",
    );
    has(
        "t.toml:21:",
        "sinks[0].url: is not a platform_event setting",
    );
    has(
        "t.toml:22:",
        "sinks[0].fields.Bad: 'nope': expected id, object",
    );
    has(
        "t.toml:",
        "sinks[1].objects[0]: 'Unknown__e' is not a subscribed platform event",
    );
    has(
        "t.toml:",
        "sinks[1].event: is a platform_event setting; this sink is webhook",
    );
}

#[test]
fn the_publish_budget_is_validated_under_salesforce_budget() {
    let text = "[salesforce]\ninstance_url = \"https://x\"\ncredentials_file = \"c.json\"\n[salesforce.budget.publish]\nshare = 0.0\nheadroom = 1.5\n[warehouse]\ntype = \"sqlite\"\npath = \"w.db\"\n[[objects]]\nname = \"Account\"\n";
    let e = errs(text);
    assert!(
        e.iter()
            .any(|l| l.contains("salesforce.budget.publish.share") && l.contains("(0, 1]")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|l| l.contains("salesforce.budget.publish.headroom")),
        "{e:#?}"
    );
}

// ---- AWS: Secrets Manager references and KMS-wrapped PII keys ----

/// Client credentials from Secrets Manager, a token from Secrets Manager, a Postgres URL from
/// the environment: lines 1–23.
const AWS_REFS: &str = r#"[salesforce]
instance_url = "https://x"
[salesforce.auth]
type = "client_credentials"
client_id = "cid"
client_secret = { aws_secret = "prod/sfsync/salesforce", json_key = "client_secret" }
[warehouse]
type = "postgres"
url = { aws_secret = "prod/sfsync/pg", version_stage = "AWSPREVIOUS" }
[[objects]]
name = "Contact"
pii_fields = ["Email"]
[pii]
key_id = "k2"
kms_key_id = "alias/sfsync-pii"
wrapped_key_file = "keys/k2.kms"
[[pii.old_keys]]
key_id = "k1"
key = { aws_secret = "prod/sfsync/pii", json_key = "k1" }
[[api.tokens]]
name = "grafana"
role = "viewer"
token = { aws_secret = "prod/sfsync/api", json_key = "grafana" }
"#;

fn sv(s: &str) -> Result<sfsync_aws::SecretValue, String> {
    Ok(sfsync_aws::SecretValue::String(s.to_string()))
}

fn wrapped_k2() -> secrets::WrappedKey {
    secrets::WrappedKey {
        key_id: "k2".into(),
        kms_key_id: "alias/sfsync-pii".into(),
        file: Path::new("/cfg/keys/k2.kms").to_path_buf(),
    }
}

#[test]
fn aws_references_parse_validate_and_summarise_without_values() {
    let l = load_t(AWS_REFS).unwrap_or_else(|e| panic!("{e}"));
    let c = &l.config;
    match &c.salesforce.credentials {
        CredentialsSource::Auth(AuthConfig::ClientCredentials(a)) => assert_eq!(
            a.client_secret,
            SecretRef::Aws(Box::new(AwsSecretRef {
                secret_id: "prod/sfsync/salesforce".into(),
                json_key: Some("client_secret".into()),
                version_stage: None,
            }))
        ),
        other => panic!("{other:?}"),
    }
    let pii = c.pii.as_ref().unwrap();
    assert_eq!(
        pii.key,
        PiiKeySource::Kms {
            kms_key_id: "alias/sfsync-pii".into(),
            wrapped_key_file: "/cfg/keys/k2.kms".into(),
        }
    );
    assert_eq!(pii.key_field, "wrapped_key_file");
    assert_eq!(pii.old_keys[0].key_field, "key.aws_secret");
    let api = c.api.as_ref().unwrap();
    assert_eq!(api.tokens[0].source_key, "api.tokens[0].token.aws_secret");
    let s = check::summary(&l);
    assert!(
        s.contains("  key k2: data key /cfg/keys/k2.kms wrapped by KMS key alias/sfsync-pii\n"),
        "{s}"
    );
    assert!(
        s.contains("  key k1: AWS Secrets Manager secret 'prod/sfsync/pii' (json_key 'k1')\n"),
        "{s}"
    );
}

#[test]
fn aws_reference_shape_and_value_errors_name_the_key() {
    let base = "[salesforce]\ninstance_url = \"https://x\"\n[salesforce.auth]\ntype = \"client_credentials\"\nclient_id = \"a\"\n";
    let e = errs(&format!(
        "{base}client_secret = {{ env = \"X\", json_key = \"k\" }}\n[warehouse]\ntype = \"postgres\"\nurl = {{ aws_secret = \"db\", file = \"f\" }}\n[[objects]]\nname = \"A\"\n"
    ));
    assert_eq!(
        e,
        [
            "t.toml:6:17: salesforce.auth.client_secret: `json_key` and `version_stage` go with `aws_secret`",
            "t.toml:9:7: warehouse.url: give one of `env`, `file` or `aws_secret` for a secret, not several",
        ]
    );
    let e = errs(&format!(
        "{base}client_secret = {{ aws_secret = \"has space\", json_key = \"\" }}\n[warehouse]\ntype = \"postgres\"\nurl = {{ aws_secret = \"\", version_stage = \" \" }}\n[[objects]]\nname = \"A\"\n"
    ));
    assert_eq!(
        e,
        [
            "t.toml:6:19: salesforce.auth.client_secret.aws_secret: \"has space\" is not a secret name or ARN: it contains whitespace or control characters",
            "t.toml:6:45: salesforce.auth.client_secret.json_key: must not be empty",
            "t.toml:9:9: warehouse.url.aws_secret: the secret name or ARN is empty",
            "t.toml:9:26: warehouse.url.version_stage: must be 1 to 256 characters (e.g. AWSCURRENT, AWSPREVIOUS)",
        ]
    );
}

#[test]
fn kms_key_source_rules() {
    let pii =
        |fields: &str| format!("{HEAD}[[objects]]\nname = \"A\"\n[pii]\nkey_id = \"k\"\n{fields}");
    assert_eq!(
        errs(&pii("kms_key_id = \"alias/x\"\n")),
        ["t.toml:12:1: pii.kms_key_id: needs wrapped_key_file: the data key wrapped by this KMS key (`sfsync keys kms-generate` writes one)"]
    );
    assert_eq!(
        errs(&pii("wrapped_key_file = \"k.kms\"\n")),
        ["t.toml:12:1: pii.wrapped_key_file: needs kms_key_id: the KMS key that wraps it (id, ARN or alias/…)"]
    );
    assert_eq!(
        errs(&pii("key_env = \"K\"\nkms_key_id = \"alias/x\"\nwrapped_key_file = \"k.kms\"\n")),
        ["t.toml:14:1: pii.wrapped_key_file: give only one key source (found key_env, wrapped_key_file): key_file, key_env, key or kms_key_id + wrapped_key_file"]
    );
    assert_eq!(
        errs(&pii("kms_key_id = \"\"\nwrapped_key_file = \"k.kms\"\n")),
        ["t.toml:12:1: pii.kms_key_id: the KMS key id is empty"]
    );
    let l = load_t(&pii("key = { env = \"PII\" }\n")).unwrap();
    let p = l.config.pii.as_ref().unwrap();
    assert_eq!(p.key, PiiKeySource::Env("PII".into()));
    assert_eq!(p.key_field, "key.env");
}

#[test]
fn aws_values_resolve_into_secrets_and_keys_and_failures_name_key_and_id() {
    let l = load_t(AWS_REFS).unwrap();
    // Resolution records what it needs of AWS (the first pass of resolve_with_aws).
    let probe = secrets::AwsFetched::default();
    assert!(l.resolve_secrets_fetched(&env_of(&[]), &probe).is_err());
    let needs = probe.asked();
    let ids: Vec<(&str, Option<&str>)> = needs
        .secrets
        .iter()
        .map(|(i, s)| (i.as_str(), s.as_deref()))
        .collect();
    assert_eq!(
        ids,
        [
            ("prod/sfsync/api", None),
            ("prod/sfsync/pg", Some("AWSPREVIOUS")),
            ("prod/sfsync/pii", None),
            ("prod/sfsync/salesforce", None),
        ]
    );
    assert_eq!(
        needs.wrapped_keys.iter().collect::<Vec<_>>(),
        [&wrapped_k2()]
    );

    // Everything answered: values picked by json_key, trimmed; nothing printable.
    let mut f = secrets::AwsFetched::default();
    f.insert_secret(
        "prod/sfsync/salesforce",
        None,
        sv(r#"{"client_id":"cid","client_secret":"sf-secret-value"}"#),
    );
    f.insert_secret(
        "prod/sfsync/pg",
        Some("AWSPREVIOUS"),
        sv("postgres://u:pg-pass@h/db\n"),
    );
    f.insert_secret(
        "prod/sfsync/pii",
        None,
        sv(&format!(r#"{{"k1":"{}"}}"#, "a1".repeat(32))),
    );
    f.insert_secret(
        "prod/sfsync/api",
        None,
        sv(r#"{"grafana":"grafana-token-0123456789"}"#),
    );
    f.insert_data_key(wrapped_k2(), Ok([0x42; 32]));
    let r = l
        .resolve_secrets_fetched(&env_of(&[]), &f)
        .unwrap_or_else(|e| panic!("{e}"));
    match &r.credentials {
        sfsync_salesforce::Credentials::ClientCredentials { client_secret, .. } => {
            assert_eq!(client_secret.expose(), "sf-secret-value")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        r.warehouse_url.as_ref().unwrap().expose(),
        "postgres://u:pg-pass@h/db"
    );
    assert_eq!(r.pii_key.as_ref().unwrap().key, [0x42; 32]);
    assert_eq!(r.pii_old_keys[0].key, [0xa1; 32]);
    assert_eq!(r.api_tokens[0].token.expose(), "grafana-token-0123456789");
    let debug = format!("{r:?}");
    for s in [
        "sf-secret-value",
        "pg-pass",
        "grafana-token",
        &"a1".repeat(32),
    ] {
        assert!(!debug.contains(s), "{s} leaked in {debug}");
    }

    // Failures: each names the config key and the secret id or file, never a value.
    let mut f = secrets::AwsFetched::default();
    f.insert_secret(
        "prod/sfsync/salesforce",
        None,
        sv(r#"{"client_id":"cid","secret":"sf-secret-value"}"#),
    );
    f.insert_secret(
        "prod/sfsync/pg",
        Some("AWSPREVIOUS"),
        Err(
            "Secrets Manager GetSecretValue (secret prod/sfsync/pg, stage AWSPREVIOUS): \
             ResourceNotFoundException: Secrets Manager can't find the specified secret. \
             (HTTP 400)"
                .into(),
        ),
    );
    f.insert_secret("prod/sfsync/pii", None, sv("not-json"));
    f.insert_secret(
        "prod/sfsync/api",
        None,
        Ok(sfsync_aws::SecretValue::Binary(vec![0xff, 0xfe])),
    );
    f.insert_data_key(
        wrapped_k2(),
        Err((
            secrets::WrappedKeyFault::Kms,
            "KMS Decrypt (key alias/sfsync-pii): AccessDeniedException: no (HTTP 400)".into(),
        )),
    );
    let e = l
        .resolve_secrets_fetched(&env_of(&[]), &f)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e.lines().collect::<Vec<_>>(),
        [
            "t.toml:6:19: salesforce.auth.client_secret.aws_secret: secret 'prod/sfsync/salesforce' has no JSON key 'client_secret' (its keys: client_id, secret)",
            "t.toml:9:9: warehouse.url.aws_secret: Secrets Manager GetSecretValue (secret prod/sfsync/pg, stage AWSPREVIOUS): ResourceNotFoundException: Secrets Manager can't find the specified secret. (HTTP 400)",
            "t.toml:15:1: pii.kms_key_id: KMS Decrypt (key alias/sfsync-pii): AccessDeniedException: no (HTTP 400)",
            "t.toml:19:9: pii.old_keys[0].key.aws_secret: secret 'prod/sfsync/pii' is not JSON, so json_key 'k1' picks nothing",
            "t.toml:23:11: api.tokens[0].token.aws_secret: secret 'prod/sfsync/api' is binary (SecretBinary) and not UTF-8 text",
        ]
    );
    assert!(!e.contains("sf-secret-value"), "{e}");

    // AWS unusable (no region): every AWS reference says so at its key.
    let f = secrets::AwsFetched::unavailable(&needs, "no AWS region: set AWS_REGION");
    let e = l
        .resolve_secrets_fetched(&env_of(&[]), &f)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("salesforce.auth.client_secret.aws_secret: cannot use AWS Secrets Manager: no AWS region: set AWS_REGION"),
        "{e}"
    );
    assert!(
        e.contains("pii.kms_key_id: cannot use AWS KMS: no AWS region"),
        "{e}"
    );
}

#[test]
fn odata_table_is_validated_naming_each_key() {
    let text = format!(
        "{HEAD}[[objects]]\nname = \"Account\"\n\n[odata]\nentity_sets = [\"Account\", \"Lead\", \"Account\"]\npage_size = 0\npublic_url = \"ftp://x\"\n\n[[odata.basic_auth]]\nusername = \"a:b\"\npassword = {{ env = \"1BAD\" }}\n"
    );
    let e = errs(&text);
    let want = [
        (
            "t.toml:12:",
            "odata.entity_sets[1]: 'Lead' is not a synced object ([[objects]])",
        ),
        (
            "t.toml:12:",
            "odata.entity_sets[2]: 'Account' is given twice",
        ),
        ("t.toml:13:", "odata.page_size: 0 is not between 1 and 5000"),
        (
            "t.toml:14:",
            "odata.public_url: \"ftp://x\" is not an http(s) URL",
        ),
        (
            "t.toml:17:",
            "odata.basic_auth[0].username: \"a:b\" must be non-empty, without ':'",
        ),
        (
            "t.toml:18:",
            "odata.basic_auth[0].password.env: \"1BAD\" is not a valid environment variable name",
        ),
    ];
    for (at, w) in want {
        assert!(
            e.iter().any(|l| l.starts_with(at) && l.contains(w)),
            "missing {at} {w:?} in {e:#?}"
        );
    }
    // Valid: defaults, a PII flag on tokens, the read rate.
    let ok = format!(
        "{HEAD}[[objects]]\nname = \"Account\"\n\n[api]\nread_rate_per_sec = 5\nread_burst = 10\n[[api.tokens]]\nname = \"v\"\nrole = \"viewer\"\ntoken_env = \"T\"\npii = true\n\n[odata]\nentity_sets = [\"Account\"]\noutbox = true\n"
    );
    let l = load_t(&ok).unwrap_or_else(|e| panic!("{e}"));
    let o = l.config.odata.as_ref().unwrap();
    assert_eq!(
        (o.entity_sets.as_slice(), o.outbox, o.page_size),
        (&["Account".to_string()][..], true, 500)
    );
    let api = l.config.api.as_ref().unwrap();
    assert_eq!(
        (api.read_rate_per_sec, api.read_burst, api.tokens[0].pii),
        (5, 10, true)
    );
    // Nothing to expose is an error; an absent [odata] is no endpoint.
    let none = format!("{HEAD}[[objects]]\nname = \"Account\"\n\n[odata]\n");
    assert!(errs(&none)
        .iter()
        .any(|l| l.contains("odata.entity_sets: names no object")));
    let l = load_t(&format!("{HEAD}[[objects]]\nname = \"Account\"\n")).unwrap();
    assert!(l.config.odata.is_none());
}

#[test]
fn log_table_is_validated_naming_each_key() {
    // Kafka on SQLite, bad brokers, topic and figures: each named.
    let text = format!(
        "{HEAD}[[objects]]\nname = \"Account\"\n\n[log]\nbackend = \"kafka\"\nbrokers = \"k1\"\ntopic = \"bad topic\"\npartitions = 0\nlease_ttl_secs = 1\n"
    );
    let e = errs(&text);
    for w in [
        "log.backend: \"kafka\" needs the Postgres warehouse",
        "log.brokers: 'k1': expected host:port",
        "log.topic: 'bad topic'",
        "log.partitions: must be at least 1",
        "log.lease_ttl_secs: must be at least 2",
    ] {
        assert!(e.iter().any(|l| l.contains(w)), "missing {w:?} in {e:#?}");
    }
    let bad = format!("{HEAD}[[objects]]\nname = \"Account\"\n\n[log]\nbackend = \"nats\"\n");
    assert!(errs(&bad)
        .iter()
        .any(|l| l.contains("log.backend: 'nats': expected store or kafka")));
    // Absent: the store's raw log.
    let l = load_t(&format!("{HEAD}[[objects]]\nname = \"Account\"\n")).unwrap();
    assert!(l.config.log.kafka.is_none());
    // Kafka on Postgres.
    let pg = "[salesforce]\ninstance_url = \"https://x\"\ncredentials_file = \"c.json\"\n[warehouse]\ntype = \"postgres\"\nurl = { env = \"PG\" }\n[[objects]]\nname = \"A\"\n[log]\nbackend = \"kafka\"\nbrokers = \"127.0.0.1:9092,k2:9093\"\npartitions = 8\nnode_name = \"n1\"\n";
    let l = load_t(pg).unwrap_or_else(|e| panic!("{e}"));
    let k = l.config.log.kafka.as_ref().unwrap();
    assert_eq!(
        (k.topic.as_str(), k.partitions, k.group.as_str()),
        ("sfsync.raw", 8, "sfsync-apply")
    );
    assert_eq!(l.config.log.node_name, "n1");
    assert_eq!(
        k.kafka.security_protocol,
        sfsync_kafka::SecurityProtocol::Plaintext
    );
    // MSK's SCRAM listener: SASL over TLS, the password a secret reference resolved later.
    let msk = format!(
        "{pg}security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"scram_sha_512\"\n\
         sasl_username = \"sfsync\"\nsasl_password = {{ env = \"KAFKA_PW\" }}\nca_file = \"ca.pem\"\n"
    );
    let l = load_t(&msk).unwrap_or_else(|e| panic!("{e}"));
    let k = &l.config.log.kafka.as_ref().unwrap().kafka;
    assert_eq!(k.security_protocol, sfsync_kafka::SecurityProtocol::SaslSsl);
    assert_eq!(
        k.sasl_mechanism,
        Some(sfsync_kafka::SaslMechanism::ScramSha512)
    );
    assert_eq!(k.sasl_username.as_deref(), Some("sfsync"));
    assert_eq!(k.ca_file.as_deref(), Some(Path::new("/cfg/ca.pem")));
    assert!(
        matches!(&l.config.log.sasl_password, Some(SecretRef::Env(v)) if v == "KAFKA_PW"),
        "{:?}",
        l.config.log.sasl_password
    );
    // Inconsistent security settings are each named.
    let bad = format!(
        "{pg}security_protocol = \"tls\"\nsasl_username = \"u\"\nsasl_mechanism = \"gssapi\"\n"
    );
    let e = errs(&bad).join("\n");
    for want in [
        "log.security_protocol: 'tls': expected plaintext, ssl or sasl_ssl",
        "log.sasl_mechanism: 'gssapi': expected scram_sha_512, scram_sha_256 or plain",
        "log.sasl_username: is a SASL setting; set security_protocol = \"sasl_ssl\" to use it",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    let e = errs(&format!("{pg}security_protocol = \"sasl_ssl\"\n")).join("\n");
    assert!(
        e.contains("log.sasl_password: security_protocol = \"sasl_ssl\" needs it"),
        "{e}"
    );
}

#[test]
fn outbound_messages_are_validated_naming_each_key() {
    let text = format!(
        "{HEAD}[[objects]]\nname = \"Account\"\n\n[[objects]]\nname = \"Legacy__c\"\nmode = \"outbound_message\"\n\n[[outbound_messages]]\nname = \"a b\"\nobject = \"Lead\"\norganization_id = \"001000000000001\"\nsecret = {{ env = \"1BAD\" }}\nfields = [\"Name\", \"Name\", \"bad-field\"]\nsla_secs = 0\n\n[[outbound_messages]]\nname = \"accounts\"\nobject = \"Account\"\norganization_id = \"00D000000000062EAA\"\nsecret = {{ env = \"OM\" }}\nfields = []\n"
    );
    let e = errs(&text);
    let want = [
        ("t.toml:16:", "outbound_messages[0].name: \"a b\" must be 1 to 80 letters"),
        (
            "t.toml:17:",
            "outbound_messages[0].object: 'Lead' is not a synced object ([[objects]])",
        ),
        (
            "t.toml:18:",
            "outbound_messages[0].organization_id: \"001000000000001\" is not an org id",
        ),
        (
            "t.toml:19:",
            "outbound_messages[0].secret.env: \"1BAD\" is not a valid environment variable name",
        ),
        ("t.toml:20:", "outbound_messages[0].fields: must include SystemModstamp"),
        ("t.toml:20:", "outbound_messages[0].fields[1]: \"Name\" is given twice"),
        (
            "t.toml:20:",
            "outbound_messages[0].fields[2]: \"bad-field\" is not a field API name",
        ),
        ("t.toml:21:", "outbound_messages[0].sla_secs: must be greater than 0"),
        ("t.toml:28:", "outbound_messages[1].fields: lists no field"),
        (
            "t.toml:13:",
            "objects[1].mode: mode = \"outbound_message\" but no [[outbound_messages]] entry has object = \"Legacy__c\"",
        ),
    ];
    for (at, w) in want {
        assert!(
            e.iter().any(|l| l.starts_with(at) && l.contains(w)),
            "missing {at} {w:?} in {e:#?}"
        );
    }
    // An unknown key in an entry is named with its line.
    let unknown = format!(
        "{HEAD}[[objects]]\nname = \"Account\"\n\n[[outbound_messages]]\nname = \"a\"\nendpoint = \"x\"\n"
    );
    assert!(errs(&unknown)
        .iter()
        .any(|l| l.starts_with("t.toml:13:") && l.contains("unknown field `endpoint`")));
    // The Kafka raw log and a disabled API cannot receive them.
    let off = format!(
        "{HEAD}[[objects]]\nname = \"Account\"\n\n[api]\nenabled = false\n\n[[outbound_messages]]\nname = \"accounts\"\nobject = \"Account\"\norganization_id = \"00D000000000062\"\nsecret = {{ env = \"OM\" }}\nfields = [\"Name\", \"SystemModstamp\"]\n"
    );
    assert!(errs(&off).iter().any(|l| l
        .contains("outbound_messages[0]: Outbound Messages are received by the API's listener")));
    // Valid: an Outbound-Message-only object and a CDC object with a flow too.
    let ok = format!(
        "{HEAD}[[objects]]\nname = \"Account\"\n\n[[objects]]\nname = \"Legacy__c\"\nmode = \"outbound_message\"\n\n[[outbound_messages]]\nname = \"legacy\"\nobject = \"Legacy__c\"\norganization_id = \"00D000000000062EAA\"\nsecret = {{ env = \"OM1\" }}\nfields = [\"Name\", \"SystemModstamp\"]\n\n[[outbound_messages]]\nname = \"accounts\"\nobject = \"Account\"\norganization_id = \"00D000000000062\"\nsecret = {{ env = \"OM2\" }}\nfields = [\"Name\", \"systemmodstamp\"]\n"
    );
    let l = load_t(&ok).unwrap_or_else(|e| panic!("{e}"));
    let c = &l.config;
    assert_eq!(c.objects[1].channel, None);
    assert_eq!(c.outbound_messages.len(), 2);
    assert_eq!(c.outbound_messages[0].organization_id, "00D000000000062");
    assert_eq!(
        c.outbound_messages[0].secret_key,
        "outbound_messages[0].secret.env"
    );
    // Secrets: short or not URL-safe ones are refused, naming the key (never the value).
    let r = l
        .resolve_secrets(&env_of(&[
            ("OM1", "short"),
            ("OM2", "has a space but is long enough!!"),
        ]))
        .unwrap_err()
        .to_string();
    assert!(
        r.contains("outbound_messages[0].secret.env: the secret of outbound message flow 'legacy' must be at least 24 characters"),
        "{r}"
    );
    assert!(r.contains("outbound_messages[1].secret.env"), "{r}");
    assert!(!r.contains("has a space"), "{r}");
    let r = l
        .resolve_secrets(&env_of(&[
            ("OM1", "legacy-secret-0123456789abcdef"),
            ("OM2", "accounts-secret-0123456789abcdef"),
        ]))
        .map(|s| s.outbound_secrets.len());
    assert!(
        matches!(r, Ok(2))
            || r.as_ref()
                .is_err_and(|e| !e.to_string().contains("outbound")),
        "{r:?}"
    );
}
