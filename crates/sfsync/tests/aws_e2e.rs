//! AWS KMS envelope encryption of the PII keys and AWS Secrets Manager as a secret source, end
//! to end: a local AWS-compatible server (`moto` in server mode, from PyPI through
//! tests/compat/requirements.txt), the emulator over loopback TLS, and the real `sfsync` binary
//! given region, endpoint and credentials through the standard `AWS_*` variables. Checked:
//! 1. `sfsync keys kms-generate` writes only the wrapped data key (base64 CiphertextBlob, mode
//!    0600, bound to its key id by the encryption context); `sfsync run` unwraps it with KMS
//!    and seals the PII column with it (no plaintext in any warehouse file), `sfsync read
//!    --decrypt` opens it; a wrong KMS key, a missing KMS key, a wrong key id and a missing file
//!    each stop start-up with the config key and the reason;
//! 2. `sfsync keys kms-rewrap` moves the wrapped key to a second KMS key (the old key no longer
//!    opens it, the new one does, every sealed value still opens), and is safe to run again;
//!    data-key rotation goes through `sfsync keys rotate` with KMS-wrapped keys on both sides;
//! 3. the Salesforce client secret and an API token from Secrets Manager: `sfsync config check`
//!    resolves them (printing neither), `sfsync run` authenticates against the emulator with
//!    the client-credentials flow and serves the API to that token; a missing secret, a missing
//!    JSON key and a missing region fail naming the config key and the secret id.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value as J};
use sfsync_aws::{AwsClient, EncryptionContext, Service};
use sfsync_emulator::RunningEmulator;
use sfsync_org::{ApiKind, CallContext};
use sfsync_pipeline::{ObjectMapping, ObjectSpec};
use sfsync_salesforce::SalesforceClient;
use sfsync_store::{Keyring, SqliteChangeLog, Warehouse};
use support::api::{free_port, Api};
use support::moto::Moto;
use support::{stop, wait_for, KillOnDrop};

struct Env {
    moto: Moto,
    aws: AwsClient,
    emu: RunningEmulator,
    client: SalesforceClient,
    dir: tempfile::TempDir,
}

async fn env() -> Env {
    let moto = tokio::task::spawn_blocking(Moto::start).await.unwrap();
    let aws = moto.client();
    let tmp = tempfile::tempdir().unwrap();
    let (emu, client) = support::emulator(tmp.path()).await;
    Env {
        moto,
        aws,
        emu,
        client,
        dir: tmp,
    }
}

impl Env {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `sfsync ARGS` with the AWS variables of moto (plus `extra`, minus `without`).
    fn cli_with(&self, args: &[&str], extra: &[(&str, &str)], without: &[&str]) -> Out {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sfsync"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("USER", "test-operator")
            .env("SFSYNC_LOG", "warn");
        for (k, v) in self.moto.vars() {
            if !without.contains(&k.as_str()) {
                cmd.env(k, v);
            }
        }
        for k in without {
            cmd.env_remove(k);
        }
        cmd.envs(extra.iter().copied());
        let out = cmd.output().expect("running the sfsync CLI");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn cli(&self, args: &[&str]) -> Out {
        self.cli_with(args, &[], &[])
    }

    fn run(&self, config: &Path) -> KillOnDrop {
        KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_sfsync"))
                .args(["run", "--progress-secs", "0", "--config"])
                .arg(config)
                .env("SFSYNC_LOG", "warn")
                .envs(self.moto.vars())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawning sfsync run"),
        )
    }

    fn ctx(&self) -> CallContext {
        CallContext {
            user_id: self.emu.org().admin_user_id(),
            api: ApiKind::Rest,
            api_version: "66.0".into(),
            client: None,
        }
    }

    /// A symmetric KMS key with alias `alias`; its key id.
    async fn kms_key(&self, alias: &str) -> String {
        let v = self
            .aws
            .call(
                Service::Kms,
                "CreateKey",
                "a test key",
                &json!({ "Description": alias }),
            )
            .await
            .unwrap();
        let id = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        self.aws
            .call(
                Service::Kms,
                "CreateAlias",
                alias,
                &json!({ "AliasName": alias, "TargetKeyId": id }),
            )
            .await
            .unwrap();
        id
    }

    async fn secret(&self, name: &str, value: &str) {
        self.aws
            .call(
                Service::SecretsManager,
                "CreateSecret",
                name,
                &json!({ "Name": name, "SecretString": value }),
            )
            .await
            .unwrap();
    }

    /// The emulator's credentials file as JSON.
    fn emulator_credentials(&self) -> J {
        serde_json::from_str(&std::fs::read_to_string(&self.emu.credentials_path).unwrap()).unwrap()
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn all(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn context(key_id: &str) -> EncryptionContext {
    EncryptionContext::from([("sfsync:pii_key_id".to_string(), key_id.to_string())])
}

fn blob(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap_or_else(|e| panic!("{} is not base64: {e}", path.display()))
}

/// The config of the KMS test: Contact's Email sealed under `pii` (the `[pii]` table body and
/// any `[[pii.old_keys]]`).
fn kms_config(env: &Env, name: &str, pii: &str) -> PathBuf {
    let path = env.path(name);
    std::fs::write(
        &path,
        format!(
            r#"[salesforce]
credentials_file = "{creds}"
ca_file = "{ca}"

[[objects]]
name = "Contact"
pii_fields = ["Email"]

[warehouse]
type = "sqlite"
path = "wh.db"

[api]
enabled = false

[pipeline]
batch_max_records = 200
batch_max_wait_ms = 50
backfill_new_objects = false

[archive]
enabled = false

[pii]
{pii}
"#,
            creds = env.emu.credentials_path.display(),
            ca = env.emu.ca_pem_path.display(),
        ),
    )
    .unwrap();
    path
}

/// Every file of the warehouse (SQLite files, WAL, the change log beside it).
fn warehouse_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("wh."))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_wrapped_pii_key_seals_opens_rewraps_rotates_and_refuses_the_wrong_key() {
    let env = env().await;
    env.kms_key("alias/sfsync-pii").await;
    env.kms_key("alias/sfsync-pii-next").await;

    // ---- kms-generate: only the wrapped key is written ----
    let out = env.cli(&[
        "keys",
        "kms-generate",
        "--kms-key-id",
        "alias/sfsync-pii",
        "--out",
        "pii-k1.kms",
        "--key-id",
        "k1",
    ]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains("wrote pii-k1.kms")
            && out.stdout.contains("key_id = \"k1\"")
            && out.stdout.contains("wrapped_key_file = \"pii-k1.kms\""),
        "{}",
        out.all()
    );
    let wrapped = env.path("pii-k1.kms");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&wrapped).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the wrapped key is private to its owner");
    }
    // The data key is what KMS unwraps under the key id's encryption context, and under no
    // other context.
    let data_key: [u8; 32] = env
        .aws
        .kms_decrypt(&blob(&wrapped), Some("alias/sfsync-pii"), &context("k1"))
        .await
        .unwrap()
        .plaintext
        .try_into()
        .unwrap();
    let e = env
        .aws
        .kms_decrypt(&blob(&wrapped), Some("alias/sfsync-pii"), &context("k2"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidCiphertextException"), "{e}");
    let hex: String = data_key.iter().map(|b| format!("{b:02x}")).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(data_key);
    for text in [
        &out.stdout,
        &out.stderr,
        &std::fs::read_to_string(&wrapped).unwrap(),
    ] {
        assert!(
            !text.contains(&hex) && !text.contains(&b64),
            "the plaintext key is printed or stored"
        );
    }
    // Never over an existing file.
    let again = env.cli(&[
        "keys",
        "kms-generate",
        "--kms-key-id",
        "alias/sfsync-pii",
        "--out",
        "pii-k1.kms",
        "--key-id",
        "k1",
    ]);
    assert_eq!(again.code, 2, "{}", again.all());
    assert!(
        again.stderr.contains("never overwritten"),
        "{}",
        again.all()
    );

    // ---- config check shows where the key comes from ----
    let pii_k1 =
        "key_id = \"k1\"\nkms_key_id = \"alias/sfsync-pii\"\nwrapped_key_file = \"pii-k1.kms\"\n";
    let config = kms_config(&env, "sfsync.toml", pii_k1);
    let config_arg = config.to_str().unwrap();
    let out = env.cli(&["config", "check", "--config", config_arg]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains(&format!(
            "  key k1: data key {} wrapped by KMS key alias/sfsync-pii\n",
            wrapped.display()
        )),
        "{}",
        out.all()
    );
    assert!(
        out.stdout.contains(
            "secrets:    all resolved (AWS region us-east-1, credentials: environment keys \
             (AWS_ACCESS_KEY_ID …ting); 1 KMS-wrapped data key)"
        ),
        "{}",
        out.all()
    );

    // ---- sfsync run seals Email with the unwrapped key ----
    let contacts = env.emu.org().seed(&env.ctx(), "Contact", 12, 5).unwrap();
    assert_eq!(contacts.len(), 12);
    let mut child = env.run(&config);
    let store = SqliteChangeLog::open(&env.path("wh.db")).await.unwrap();
    store.set_keyring(Some(Arc::new(Keyring::new("k1", data_key))));
    let d = env.client.describe_object("Contact").await.unwrap();
    let mut spec = ObjectSpec::new("Contact");
    spec.pii_fields = vec!["Email".into()];
    let contact = ObjectMapping::build(&d, &spec).unwrap();
    store.ensure_model(&contact.model).await.unwrap();
    {
        let child = std::sync::Mutex::new(&mut child);
        let (child, store, contact, client) = (&child, &store, &contact, &env.client);
        wait_for(
            "the Contacts are applied",
            Duration::from_secs(90),
            || async move {
                let mut p = Vec::new();
                if let Ok(Some(status)) = child.lock().unwrap().0.try_wait() {
                    p.push(format!("sfsync run exited with {status}"));
                }
                p.extend(support::live_diff(client, contact, store).await);
                p
            },
        )
        .await;
    }
    stop(child);
    let rows = store.read_current("Contact").await.unwrap();
    let emails: Vec<String> = rows
        .iter()
        .filter_map(|r| match r.values.get("email") {
            Some(sfsync_store::Value::Text(t)) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 12);
    // The seed leaves some Emails empty; most have one.
    assert!(
        emails.len() >= 6,
        "{} of 12 Contacts have an Email",
        emails.len()
    );
    drop(store);
    for f in warehouse_files(env.dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        for email in &emails {
            assert!(
                !bytes.windows(email.len()).any(|w| w == email.as_bytes()),
                "{} holds {email} in the clear",
                f.display()
            );
        }
    }
    let read = |config: &str| env.cli(&["read", "Contact", "--decrypt", "--config", config]);
    let out = read(config_arg);
    assert_eq!(out.code, 0, "{}", out.all());
    for email in &emails {
        assert!(out.stdout.contains(email.as_str()), "{}", out.all());
    }

    // ---- refusals, each naming the key and the reason ----
    let wrong_kms = kms_config(
        &env,
        "wrong-kms.toml",
        "key_id = \"k1\"\nkms_key_id = \"alias/sfsync-pii-next\"\nwrapped_key_file = \"pii-k1.kms\"\n",
    );
    let out = read(wrong_kms.to_str().unwrap());
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr
            .contains("pii.kms_key_id: KMS Decrypt (key alias/sfsync-pii-next): ")
            && out
                .stderr
                .contains("wrapped by KMS key alias/sfsync-pii-next?"),
        "{}",
        out.all()
    );
    let missing_kms = kms_config(
        &env,
        "missing-kms.toml",
        "key_id = \"k1\"\nkms_key_id = \"alias/no-such-key\"\nwrapped_key_file = \"pii-k1.kms\"\n",
    );
    let out = read(missing_kms.to_str().unwrap());
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr
            .contains("pii.kms_key_id: KMS Decrypt (key alias/no-such-key): NotFoundException"),
        "{}",
        out.all()
    );
    let wrong_id = kms_config(
        &env,
        "wrong-id.toml",
        "key_id = \"k9\"\nkms_key_id = \"alias/sfsync-pii\"\nwrapped_key_file = \"pii-k1.kms\"\n",
    );
    let out = read(wrong_id.to_str().unwrap());
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr.contains(
            "pii.kms_key_id: KMS Decrypt (key alias/sfsync-pii): InvalidCiphertextException"
        ) && out.stderr.contains("was not made for key id 'k9'"),
        "{}",
        out.all()
    );
    let missing_file = kms_config(
        &env,
        "missing-file.toml",
        "key_id = \"k1\"\nkms_key_id = \"alias/sfsync-pii\"\nwrapped_key_file = \"nope.kms\"\n",
    );
    let out = read(missing_file.to_str().unwrap());
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr.contains(&format!(
            "pii.wrapped_key_file: cannot read {}",
            env.path("nope.kms").display()
        )),
        "{}",
        out.all()
    );
    let no_region = env.cli_with(
        &["config", "check", "--config", config_arg],
        &[],
        &["AWS_REGION"],
    );
    assert_eq!(no_region.code, 1, "{}", no_region.all());
    assert!(
        no_region
            .stderr
            .contains("pii.kms_key_id: cannot use AWS KMS: no AWS region: set AWS_REGION"),
        "{}",
        no_region.all()
    );

    // ---- kms-rewrap: KMS key rotation, no sealed value touched ----
    let before = std::fs::read_to_string(&wrapped).unwrap();
    let out = env.cli(&[
        "keys",
        "kms-rewrap",
        "--kms-key-id",
        "alias/sfsync-pii-next",
        "--config",
        config_arg,
    ]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains(&format!("rewrapped {} (key id 'k1')", wrapped.display()))
            && out
                .stdout
                .contains("now set kms_key_id = \"alias/sfsync-pii-next\" in [pii]\n"),
        "{}",
        out.all()
    );
    assert_ne!(std::fs::read_to_string(&wrapped).unwrap(), before);
    // The old KMS key no longer opens it; the new one opens the same data key.
    let out = read(config_arg);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stderr.contains("pii.kms_key_id"), "{}", out.all());
    let moved = env
        .aws
        .kms_decrypt(
            &blob(&wrapped),
            Some("alias/sfsync-pii-next"),
            &context("k1"),
        )
        .await
        .unwrap();
    assert_eq!(
        moved.plaintext, data_key,
        "the data key itself is unchanged"
    );
    let out = read(wrong_kms.to_str().unwrap());
    assert_eq!(out.code, 0, "{}", out.all());
    for email in &emails {
        assert!(out.stdout.contains(email.as_str()), "{}", out.all());
    }
    // Safe to run again (an interrupted run is finished by running it again).
    let out = env.cli(&[
        "keys",
        "kms-rewrap",
        "--kms-key-id",
        "alias/sfsync-pii-next",
        "--key-id",
        "k1",
        "pii-k1.kms",
    ]);
    assert_eq!(out.code, 0, "{}", out.all());

    // ---- data-key rotation: a new wrapped key current, the old one in old_keys ----
    let out = env.cli(&[
        "keys",
        "kms-generate",
        "--kms-key-id",
        "alias/sfsync-pii-next",
        "--out",
        "pii-k2.kms",
        "--key-id",
        "k2",
    ]);
    assert_eq!(out.code, 0, "{}", out.all());
    let rotated = kms_config(
        &env,
        "rotated.toml",
        "key_id = \"k2\"\nkms_key_id = \"alias/sfsync-pii-next\"\nwrapped_key_file = \"pii-k2.kms\"\n\
         [[pii.old_keys]]\nkey_id = \"k1\"\nkms_key_id = \"alias/sfsync-pii-next\"\nwrapped_key_file = \"pii-k1.kms\"\n",
    );
    let rotated = rotated.to_str().unwrap();
    let out = env.cli(&["keys", "rotate", "--config", rotated]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains("re-sealed under key 'k2'"),
        "{}",
        out.all()
    );
    let only_k2 = kms_config(
        &env,
        "only-k2.toml",
        "key_id = \"k2\"\nkms_key_id = \"alias/sfsync-pii-next\"\nwrapped_key_file = \"pii-k2.kms\"\n",
    );
    let out = read(only_k2.to_str().unwrap());
    assert_eq!(out.code, 0, "{}", out.all());
    for email in &emails {
        assert!(out.stdout.contains(email.as_str()), "{}", out.all());
    }
}

/// The config of the Secrets Manager test: client credentials with the secret from
/// `client_secret`, an API token from `token`.
fn sm_config(env: &Env, name: &str, client_secret: &str, token: &str, port: u16) -> PathBuf {
    let creds = env.emulator_credentials();
    let path = env.path(name);
    std::fs::write(
        &path,
        format!(
            r#"[salesforce]
instance_url = "{instance}"
pubsub_address = "{pubsub}"
ca_file = "{ca}"

[salesforce.auth]
type = "client_credentials"
client_id = "{client_id}"
client_secret = {client_secret}

[[objects]]
name = "Account"

[warehouse]
type = "sqlite"
path = "wh.db"

[pipeline]
batch_max_records = 200
batch_max_wait_ms = 50
backfill_new_objects = false

[archive]
enabled = false

[api]
listen = "127.0.0.1:{port}"

[[api.tokens]]
name = "grafana"
role = "viewer"
token = {token}
"#,
            instance = creds["instance_url"].as_str().unwrap(),
            pubsub = creds["pubsub_address"].as_str().unwrap(),
            ca = env.emu.ca_pem_path.display(),
            client_id = creds["client_id"].as_str().unwrap(),
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_supplies_the_client_secret_and_an_api_token() {
    let env = env().await;
    let creds = env.emulator_credentials();
    let client_secret = creds["client_secret"].as_str().unwrap().to_string();
    env.secret(
        "prod/sfsync/salesforce",
        &json!({ "client_id": creds["client_id"], "client_secret": client_secret }).to_string(),
    )
    .await;
    let token = "grafana-viewer-token-0123456789";
    env.secret("prod/sfsync/api-token", token).await;
    let port = free_port();
    let sf_ref = r#"{ aws_secret = "prod/sfsync/salesforce", json_key = "client_secret" }"#;
    let token_ref = r#"{ aws_secret = "prod/sfsync/api-token" }"#;
    let config = sm_config(&env, "sfsync.toml", sf_ref, token_ref, port);
    let config_arg = config.to_str().unwrap();

    // ---- config check resolves both, prints neither ----
    let out = env.cli(&["config", "check", "--config", config_arg]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains("auth:       client_credentials")
            && out.stdout.contains(
                "secrets:    all resolved (AWS region us-east-1, credentials: environment keys \
                 (AWS_ACCESS_KEY_ID …ting); 2 Secrets Manager secrets)"
            ),
        "{}",
        out.all()
    );
    assert!(
        !out.all().contains(&client_secret) && !out.all().contains(token),
        "a secret value is printed"
    );

    // ---- sfsync run authenticates with it and serves the API to the token ----
    let accounts = env.emu.org().seed(&env.ctx(), "Account", 8, 3).unwrap();
    assert_eq!(accounts.len(), 8);
    let mut child = env.run(&config);
    let store = SqliteChangeLog::open(&env.path("wh.db")).await.unwrap();
    let d = env.client.describe_object("Account").await.unwrap();
    let account = ObjectMapping::build(&d, &ObjectSpec::new("Account")).unwrap();
    store.ensure_model(&account.model).await.unwrap();
    {
        let child = std::sync::Mutex::new(&mut child);
        let (child, store, account, client) = (&child, &store, &account, &env.client);
        wait_for(
            "the Accounts are applied (OAuth client credentials from Secrets Manager)",
            Duration::from_secs(90),
            || async move {
                let mut p = Vec::new();
                if let Ok(Some(status)) = child.lock().unwrap().0.try_wait() {
                    p.push(format!("sfsync run exited with {status}"));
                }
                p.extend(support::live_diff(client, account, store).await);
                p
            },
        )
        .await;
    }
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}"),
    };
    api.ready().await;
    let (status, _) = api
        .call_text("GET", "/api/v1/status", Some(token), None)
        .await;
    assert_eq!(status, 200, "the token from Secrets Manager is accepted");
    let (status, _) = api
        .call_text(
            "GET",
            "/api/v1/status",
            Some("not-the-token-0123456789"),
            None,
        )
        .await;
    assert_eq!(status, 401);
    stop(child);

    // ---- a missing secret, a missing JSON key, no region: the key and the id named ----
    let missing = sm_config(
        &env,
        "missing.toml",
        r#"{ aws_secret = "prod/sfsync/missing", json_key = "client_secret" }"#,
        r#"{ aws_secret = "prod/sfsync/api-token", json_key = "grafana" }"#,
        port,
    );
    let out = env.cli(&["config", "check", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.all());
    let name = missing.display().to_string();
    assert!(
        out.stderr.contains(&format!(
            "{name}:9:19: salesforce.auth.client_secret.aws_secret: Secrets Manager \
             GetSecretValue (secret prod/sfsync/missing): ResourceNotFoundException"
        )),
        "{}",
        out.all()
    );
    assert!(
        out.stderr.contains(&format!(
            "{name}:32:11: api.tokens[0].token.aws_secret: secret 'prod/sfsync/api-token' is \
             not JSON, so json_key 'grafana' picks nothing"
        )),
        "{}",
        out.all()
    );
    assert!(out.stderr.contains(": 2 errors"), "{}", out.all());
    let out = env.cli(&["run", "--config", missing.to_str().unwrap()]);
    assert_ne!(out.code, 0, "{}", out.all());
    assert!(
        out.stderr
            .contains("salesforce.auth.client_secret.aws_secret")
            && out.stderr.contains("prod/sfsync/missing"),
        "{}",
        out.all()
    );
    let no_field = sm_config(
        &env,
        "no-field.toml",
        r#"{ aws_secret = "prod/sfsync/salesforce", json_key = "secret" }"#,
        token_ref,
        port,
    );
    let out = env.cli(&["config", "check", "--config", no_field.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr.contains(
            "salesforce.auth.client_secret.aws_secret: secret 'prod/sfsync/salesforce' has no \
             JSON key 'secret' (its keys: client_id, client_secret)"
        ),
        "{}",
        out.all()
    );
    assert!(
        !out.all().contains(&client_secret),
        "a secret value is printed"
    );
    let out = env.cli_with(
        &["config", "check", "--config", config_arg],
        &[],
        &["AWS_REGION"],
    );
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr.contains(
            "salesforce.auth.client_secret.aws_secret: cannot use AWS Secrets Manager: no AWS \
             region: set AWS_REGION (or AWS_DEFAULT_REGION)"
        ),
        "{}",
        out.all()
    );
}
