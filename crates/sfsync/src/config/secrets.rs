//! The one I/O step of configuration: environment variables, secret files and AWS (Secrets
//! Manager secrets, KMS-wrapped PII data keys) become [`Secret`]s and keys. Every failure is
//! collected and names the key and the variable, path or secret id; secret values are never
//! put into messages.
//!
//! Resolution itself ([`resolve`]) is synchronous and takes what AWS answered as an
//! [`AwsFetched`]: [`resolve_with_aws`] runs it once recording the AWS references it meets,
//! fetches those (one GetSecretValue per secret and stage, one KMS Decrypt per wrapped key),
//! then runs it again with the answers. A config without AWS references is resolved in one
//! pass and never touches AWS.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use sfsync_aws::{AwsClient, EncryptionContext, SecretValue};
use sfsync_salesforce::{Credentials, CredentialsFile, Secret};

use super::model::*;
use super::validate::{CredentialsSource, PiiKeySource, ValidConfig, ValidWarehouse};
use super::ConfigError;

/// Secrets and connection details, ready to build clients.
#[derive(Debug, Clone)]
pub struct ResolvedSecrets {
    pub credentials: Credentials,
    /// From the config, else from the credentials file.
    pub instance_url: String,
    pub pubsub_address: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
    /// Postgres connection URL (`None` for SQLite).
    pub warehouse_url: Option<Secret>,
    /// The current key: seals, and opens values sealed under it.
    pub pii_key: Option<PiiKey>,
    /// `[[pii.old_keys]]`, in file order: open values sealed under them, never seal.
    pub pii_old_keys: Vec<PiiKey>,
    /// `[[api.tokens]]` with their tokens, in file order.
    pub api_tokens: Vec<ApiToken>,
    /// The signing secret of each webhook sink, by sink name.
    pub sink_secrets: std::collections::HashMap<String, Secret>,
    /// The Kafka raw log's SASL password (`[log] sasl_password`).
    pub log_sasl_password: Option<Secret>,
    /// `[[odata.basic_auth]]` principals with their passwords, in file order.
    pub odata_basic: Vec<BasicPrincipal>,
    /// The URL secret of each `[[outbound_messages]]` flow, by flow name.
    pub outbound_secrets: std::collections::HashMap<String, Secret>,
    /// What AWS was used for, when it was (`region …, credentials …; 2 Secrets Manager
    /// secrets, 1 KMS-wrapped data key`); no secret in it.
    pub aws: Option<String>,
}

/// A bearer token of the API with its name, role and (optional) bound writing system.
#[derive(Debug, Clone)]
pub struct ApiToken {
    pub name: String,
    pub role: super::validate::ApiRole,
    pub source_system: Option<String>,
    /// Never printed (`Secret` redacts in `Debug`).
    pub token: Secret,
    /// May read PII in clear (read API, OData).
    pub pii: bool,
}

/// An HTTP Basic principal of the OData endpoint.
#[derive(Debug, Clone)]
pub struct BasicPrincipal {
    pub username: String,
    /// Never printed.
    pub password: Secret,
    pub pii: bool,
}

/// The shortest Basic password accepted.
pub const MIN_BASIC_PASSWORD_CHARS: usize = 12;

/// Reads each `[[odata.basic_auth]]` password; a short one is an error naming the entry.
fn resolve_odata_basic(
    errs: &mut Vec<ConfigError>,
    cfg: &ValidConfig,
    env: &dyn Fn(&str) -> Option<String>,
    aws: &AwsFetched,
) -> Vec<BasicPrincipal> {
    let Some(o) = &cfg.odata else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for b in &o.basic_auth {
        let Some(value) = read_ref(errs, &b.password_key, &b.password, env, aws) else {
            continue;
        };
        let value = value.trim().to_string();
        if value.chars().count() < MIN_BASIC_PASSWORD_CHARS {
            errs.push(ConfigError::new(
                b.password_key.clone(),
                format!(
                    "the password of '{}' is shorter than {MIN_BASIC_PASSWORD_CHARS} characters",
                    b.username
                ),
            ));
            continue;
        }
        out.push(BasicPrincipal {
            username: b.username.clone(),
            password: Secret::new(value),
            pii: b.pii,
        });
    }
    out
}

/// The shortest Outbound Message URL secret accepted.
pub const MIN_OUTBOUND_SECRET_CHARS: usize = 24;

/// Reads each `[[outbound_messages]]` secret: at least [`MIN_OUTBOUND_SECRET_CHARS`] URL-safe
/// characters (it is a path segment of the endpoint URL), else an error naming the entry.
fn resolve_outbound_secrets(
    errs: &mut Vec<ConfigError>,
    cfg: &ValidConfig,
    env: &dyn Fn(&str) -> Option<String>,
    aws: &AwsFetched,
) -> std::collections::HashMap<String, Secret> {
    let mut out = std::collections::HashMap::new();
    for f in &cfg.outbound_messages {
        let Some(value) = read_ref(errs, &f.secret_key, &f.secret, env, aws) else {
            continue;
        };
        let value = value.trim().to_string();
        let url_safe = value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
        if value.chars().count() < MIN_OUTBOUND_SECRET_CHARS || !url_safe {
            errs.push(ConfigError::new(
                f.secret_key.clone(),
                format!(
                    "the secret of outbound message flow '{}' must be at least \
                     {MIN_OUTBOUND_SECRET_CHARS} characters of A-Z a-z 0-9 - _ . ~ (it goes in the \
                     endpoint URL)",
                    f.name
                ),
            ));
            continue;
        }
        out.insert(f.name.clone(), Secret::new(value));
    }
    out
}

/// The shortest token accepted: a short token can be guessed.
pub const MIN_API_TOKEN_CHARS: usize = 16;

/// An AES-256 key and its id.
#[derive(Clone)]
pub struct PiiKey {
    pub id: String,
    pub key: [u8; 32],
}

impl fmt::Debug for PiiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PiiKey {{ id: {:?}, key: *** }}", self.id)
    }
}

fn read_file(key: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))
}

/// The encryption-context key binding a KMS-wrapped PII data key to its sfsync key id.
pub const PII_CONTEXT_KEY: &str = "sfsync:pii_key_id";

/// The encryption context of the data key of sfsync key id `key_id`:
/// `{"sfsync:pii_key_id": key_id}`. KMS opens the wrapped key only with the same context, so a
/// wrapped key cannot be passed off as another key id's.
pub fn pii_context(key_id: &str) -> EncryptionContext {
    EncryptionContext::from([(PII_CONTEXT_KEY.to_string(), key_id.to_string())])
}

/// A KMS-wrapped data key to unwrap: the sfsync key id (its encryption context), the KMS key
/// and the file holding the base64 CiphertextBlob.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WrappedKey {
    pub key_id: String,
    pub kms_key_id: String,
    pub file: PathBuf,
}

/// Which config key a wrapped-key failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrappedKeyFault {
    /// The file (`wrapped_key_file`): unreadable or not base64.
    File,
    /// KMS refused or failed (`kms_key_id`).
    Kms,
}

/// What resolution asks of AWS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsNeeds {
    /// (secret id, version stage).
    pub secrets: BTreeSet<(String, Option<String>)>,
    pub wrapped_keys: BTreeSet<WrappedKey>,
}

impl AwsNeeds {
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty() && self.wrapped_keys.is_empty()
    }
}

/// What AWS answered for each need (errors as messages naming the service, operation and id),
/// and the needs resolution met while reading it.
#[derive(Default)]
pub struct AwsFetched {
    secrets: HashMap<(String, Option<String>), Result<SecretValue, String>>,
    data_keys: HashMap<WrappedKey, Result<[u8; 32], (WrappedKeyFault, String)>>,
    asked: RefCell<AwsNeeds>,
}

impl fmt::Debug for AwsFetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsFetched")
            .field("secrets", &self.secrets.len())
            .field("data_keys", &self.data_keys.len())
            .finish()
    }
}

const NOT_FETCHED: &str = "not fetched from AWS (resolve with resolve_with_aws)";

impl AwsFetched {
    /// Every need failed the same way (AWS cannot be used: no region, bad endpoint …).
    pub fn unavailable(needs: &AwsNeeds, reason: &str) -> AwsFetched {
        let mut f = AwsFetched::default();
        for s in &needs.secrets {
            f.secrets.insert(
                s.clone(),
                Err(format!("cannot use AWS Secrets Manager: {reason}")),
            );
        }
        for w in &needs.wrapped_keys {
            f.data_keys.insert(
                w.clone(),
                Err((
                    WrappedKeyFault::Kms,
                    format!("cannot use AWS KMS: {reason}"),
                )),
            );
        }
        f
    }

    /// A secret's value as read (for tests and tools that fetched it themselves).
    pub fn insert_secret(
        &mut self,
        secret_id: &str,
        version_stage: Option<&str>,
        value: Result<SecretValue, String>,
    ) {
        self.secrets.insert(
            (secret_id.to_string(), version_stage.map(str::to_string)),
            value,
        );
    }

    /// An unwrapped data key (or why it could not be unwrapped).
    pub fn insert_data_key(
        &mut self,
        key: WrappedKey,
        value: Result<[u8; 32], (WrappedKeyFault, String)>,
    ) {
        self.data_keys.insert(key, value);
    }

    /// What resolution asked for so far.
    pub fn asked(&self) -> AwsNeeds {
        self.asked.borrow().clone()
    }

    /// The value of `r`: the secret's string (or UTF-8 binary), surrounding whitespace
    /// trimmed, or the field `json_key` of its JSON object.
    fn secret(&self, r: &AwsSecretRef) -> Result<String, String> {
        let id = (r.secret_id.clone(), r.version_stage.clone());
        self.asked.borrow_mut().secrets.insert(id.clone());
        let value = match self.secrets.get(&id) {
            None => return Err(NOT_FETCHED.into()),
            Some(Err(e)) => return Err(e.clone()),
            Some(Ok(v)) => v,
        };
        let text = match value {
            SecretValue::String(s) => s.as_str(),
            SecretValue::Binary(b) => std::str::from_utf8(b).map_err(|_| {
                format!(
                    "secret '{}' is binary (SecretBinary) and not UTF-8 text",
                    r.secret_id
                )
            })?,
        };
        let Some(field) = &r.json_key else {
            return Ok(text.trim().to_string());
        };
        let json: serde_json::Value = serde_json::from_str(text).map_err(|_| {
            format!(
                "secret '{}' is not JSON, so json_key '{field}' picks nothing",
                r.secret_id
            )
        })?;
        let Some(obj) = json.as_object() else {
            return Err(format!(
                "secret '{}' is not a JSON object, so json_key '{field}' picks nothing",
                r.secret_id
            ));
        };
        match obj.get(field) {
            Some(serde_json::Value::String(v)) => Ok(v.trim().to_string()),
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                Ok(v.to_string())
            }
            Some(_) => Err(format!(
                "the field '{field}' of secret '{}' is not a string",
                r.secret_id
            )),
            None => {
                // Field names only, never values.
                let names: Vec<&str> = obj.keys().map(String::as_str).collect();
                Err(format!(
                    "secret '{}' has no JSON key '{field}' (its keys: {})",
                    r.secret_id,
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            }
        }
    }

    fn data_key(&self, w: &WrappedKey) -> Result<[u8; 32], (WrappedKeyFault, String)> {
        self.asked.borrow_mut().wrapped_keys.insert(w.clone());
        match self.data_keys.get(w) {
            None => Err((WrappedKeyFault::Kms, NOT_FETCHED.into())),
            Some(r) => r.clone(),
        }
    }
}

/// Reads the base64 CiphertextBlob of a wrapped data key file.
pub fn read_wrapped_key_file(path: &Path) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text: String = text.split_whitespace().collect();
    if text.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|e| {
            format!(
                "{} is not a base64 CiphertextBlob (as `sfsync keys kms-generate` writes): {e}",
                path.display()
            )
        })
}

/// Unwraps one data key: reads its file, KMS Decrypt with its KMS key and encryption context,
/// checks that it is 32 bytes.
pub async fn unwrap_data_key(
    client: &AwsClient,
    w: &WrappedKey,
) -> Result<[u8; 32], (WrappedKeyFault, String)> {
    let blob = read_wrapped_key_file(&w.file).map_err(|e| (WrappedKeyFault::File, e))?;
    let d = client
        .kms_decrypt(&blob, Some(&w.kms_key_id), &pii_context(&w.key_id))
        .await
        .map_err(|e| {
            let hint = match e.code() {
                Some("InvalidCiphertextException") => format!(
                    " — {} was not made for key id '{}' (its encryption context differs) or is \
                     damaged",
                    w.file.display(),
                    w.key_id
                ),
                Some("IncorrectKeyException" | "AccessDeniedException") => format!(
                    " — is {} wrapped by KMS key {}? (after `sfsync keys kms-rewrap`, set \
                     kms_key_id to the new key)",
                    w.file.display(),
                    w.kms_key_id
                ),
                _ => String::new(),
            };
            (WrappedKeyFault::Kms, format!("{e}{hint}"))
        })?;
    d.plaintext.as_slice().try_into().map_err(|_| {
        (
            WrappedKeyFault::Kms,
            format!(
                "{} unwraps to {} bytes, not a 32-byte AES-256 key",
                w.file.display(),
                d.plaintext.len()
            ),
        )
    })
}

/// Fetches every need from AWS with `client`.
pub async fn fetch_with(client: &AwsClient, needs: &AwsNeeds) -> AwsFetched {
    let mut f = AwsFetched::default();
    for (id, stage) in &needs.secrets {
        let v = client
            .get_secret_value(id, stage.as_deref())
            .await
            .map(|s| s.value)
            .map_err(|e| e.to_string());
        f.secrets.insert((id.clone(), stage.clone()), v);
    }
    for w in &needs.wrapped_keys {
        let v = unwrap_data_key(client, w).await;
        f.data_keys.insert(w.clone(), v);
    }
    f
}

/// A one-line account of the AWS use (for `config check`): region, credentials and counts.
pub fn describe_aws_use(client: &AwsClient, needs: &AwsNeeds) -> String {
    let c = client.config();
    let mut parts = Vec::new();
    if !needs.secrets.is_empty() {
        let n = needs.secrets.len();
        parts.push(format!(
            "{n} Secrets Manager secret{}",
            if n == 1 { "" } else { "s" }
        ));
    }
    if !needs.wrapped_keys.is_empty() {
        let n = needs.wrapped_keys.len();
        parts.push(format!(
            "{n} KMS-wrapped data key{}",
            if n == 1 { "" } else { "s" }
        ));
    }
    format!(
        "region {}, credentials: {}; {}",
        c.region,
        c.credential_source,
        parts.join(", ")
    )
}

/// [`resolve`] with the AWS step: a first pass records the AWS references, which are fetched
/// with a client built from `env` (the standard `AWS_*` variables), then a second pass uses the
/// answers. Without AWS references, one pass and no AWS.
pub async fn resolve_with_aws(
    cfg: &ValidConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ResolvedSecrets, Vec<ConfigError>> {
    let probe = AwsFetched::default();
    let first = resolve(cfg, env, &probe);
    let needs = probe.asked();
    if needs.is_empty() {
        return first;
    }
    let (fetched, aws) = match AwsClient::from_env(env) {
        Ok(client) => (
            fetch_with(&client, &needs).await,
            Some(describe_aws_use(&client, &needs)),
        ),
        Err(e) => (AwsFetched::unavailable(&needs, &e.to_string()), None),
    };
    let mut resolved = resolve(cfg, env, &fetched)?;
    resolved.aws = aws;
    Ok(resolved)
}

/// Reads the value `r` refers to; a failure is recorded at `field_key` (the key of the
/// reference's own field: `….env`, `….file`, `….aws_secret`, or `token_env`).
fn read_ref(
    errs: &mut Vec<ConfigError>,
    field_key: &str,
    r: &SecretRef,
    env: &dyn Fn(&str) -> Option<String>,
    aws: &AwsFetched,
) -> Option<String> {
    let v = match r {
        SecretRef::Env(var) => env(var).ok_or_else(|| {
            ConfigError::new(field_key, format!("environment variable {var} is not set"))
        }),
        SecretRef::File(p) => read_file(field_key, p),
        SecretRef::Aws(a) => aws.secret(a).map_err(|m| ConfigError::new(field_key, m)),
    };
    match v {
        Ok(v) => Some(v),
        Err(e) => {
            errs.push(e);
            None
        }
    }
}

fn secret(
    errs: &mut Vec<ConfigError>,
    key: &str,
    r: &SecretRef,
    env: &dyn Fn(&str) -> Option<String>,
    aws: &AwsFetched,
) -> Option<Secret> {
    let key = format!("{key}.{}", r.field());
    let v = read_ref(errs, &key, r, env, aws)?;
    if v.trim().is_empty() {
        errs.push(ConfigError::new(key, format!("{} is empty", r.describe())));
        return None;
    }
    Some(Secret::new(v))
}

fn parse_hex_key(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

/// Reads and parses the PII key of the key table `table` (`pii`, `pii.old_keys[1]`); a failure
/// names `table.<field>` (`key_file`, `key.aws_secret`, `wrapped_key_file`, `kms_key_id`) and
/// the path, variable or id, never the value.
fn load_pii_key(
    errs: &mut Vec<ConfigError>,
    table: &str,
    source: &PiiKeySource,
    key_field: &str,
    key_id: &str,
    env: &dyn Fn(&str) -> Option<String>,
    aws: &AwsFetched,
) -> Option<PiiKey> {
    let key = format!("{table}.{key_field}");
    let text = match source {
        PiiKeySource::Env(var) => read_ref(errs, &key, &SecretRef::Env(var.clone()), env, aws)?,
        PiiKeySource::File(p) => read_ref(errs, &key, &SecretRef::File(p.clone()), env, aws)?,
        PiiKeySource::Aws(a) => {
            read_ref(errs, &key, &SecretRef::Aws(Box::new(a.clone())), env, aws)?
        }
        PiiKeySource::Kms {
            kms_key_id,
            wrapped_key_file,
        } => {
            let w = WrappedKey {
                key_id: key_id.to_string(),
                kms_key_id: kms_key_id.clone(),
                file: wrapped_key_file.clone(),
            };
            return match aws.data_key(&w) {
                Ok(k) => Some(PiiKey {
                    id: key_id.to_string(),
                    key: k,
                }),
                Err((fault, message)) => {
                    let at = match fault {
                        WrappedKeyFault::File => format!("{table}.wrapped_key_file"),
                        WrappedKeyFault::Kms => format!("{table}.kms_key_id"),
                    };
                    errs.push(ConfigError::new(at, message));
                    None
                }
            };
        }
    };
    match parse_hex_key(&text) {
        Some(k) => Some(PiiKey {
            id: key_id.to_string(),
            key: k,
        }),
        None => {
            errs.push(ConfigError::new(
                key,
                "the key must be 64 hex digits (32 bytes, AES-256)",
            ));
            None
        }
    }
}

/// Resolves every secret of `cfg`; reads `env` and the referenced files, and takes AWS values
/// from `aws` (recording each one asked for).
pub fn resolve(
    cfg: &ValidConfig,
    env: &dyn Fn(&str) -> Option<String>,
    aws: &AwsFetched,
) -> Result<ResolvedSecrets, Vec<ConfigError>> {
    let mut errs = Vec::new();
    let sf = &cfg.salesforce;
    let mut instance_url = sf.instance_url.clone();
    let mut pubsub_address = sf.pubsub_address.clone();
    let mut ca_file = sf.ca_file.clone();
    let credentials = match &sf.credentials {
        CredentialsSource::File(path) => {
            let key = "salesforce.credentials_file";
            match CredentialsFile::load(path) {
                Err(e) => {
                    errs.push(ConfigError::new(
                        key,
                        format!("cannot load {}: {e}", path.display()),
                    ));
                    None
                }
                Ok(file) => {
                    instance_url = instance_url.or_else(|| file.instance_url.clone());
                    pubsub_address = pubsub_address.or_else(|| file.pubsub_address.clone());
                    ca_file = ca_file.or_else(|| {
                        file.ca_file.as_ref().map(|c| match (&file.base_dir, c) {
                            (Some(d), c) if c.is_relative() => d.join(c),
                            _ => c.clone(),
                        })
                    });
                    if instance_url.is_none() {
                        errs.push(ConfigError::new(
                            "salesforce.instance_url",
                            format!("not set, and {} has no instance_url either", path.display()),
                        ));
                    }
                    match file.preferred() {
                        Ok(c) => Some(c),
                        Err(e) => {
                            errs.push(ConfigError::new(key, format!("{}: {e}", path.display())));
                            None
                        }
                    }
                }
            }
        }
        CredentialsSource::Auth(auth) => {
            let inst = instance_url.clone().unwrap_or_default();
            let login = |l: &Option<String>| l.clone().unwrap_or_else(|| inst.clone());
            let k = |f: &str| format!("salesforce.auth.{f}");
            match auth {
                AuthConfig::JwtBearer(a) => {
                    let pem = secret(&mut errs, &k("private_key"), &a.private_key, env, aws);
                    if let Some(p) = &pem {
                        if !p.expose().contains("-----BEGIN") {
                            let key = k(&format!("private_key.{}", a.private_key.field()));
                            errs.push(ConfigError::new(
                                key,
                                "the private key is not PEM (no -----BEGIN line)",
                            ));
                        }
                    }
                    pem.map(|private_key_pem| Credentials::JwtBearer {
                        login_url: login(&a.login_url),
                        client_id: a.client_id.clone(),
                        username: a.username.clone(),
                        private_key_pem,
                    })
                }
                AuthConfig::ClientCredentials(a) => {
                    secret(&mut errs, &k("client_secret"), &a.client_secret, env, aws).map(
                        |client_secret| Credentials::ClientCredentials {
                            instance_url: inst.clone(),
                            client_id: a.client_id.clone(),
                            client_secret,
                        },
                    )
                }
                AuthConfig::RefreshToken(a) => {
                    let cs = a
                        .client_secret
                        .as_ref()
                        .map(|s| secret(&mut errs, &k("client_secret"), s, env, aws));
                    let rt = secret(&mut errs, &k("refresh_token"), &a.refresh_token, env, aws);
                    match (cs, rt) {
                        (Some(None), _) | (_, None) => None,
                        (cs, Some(refresh_token)) => Some(Credentials::RefreshToken {
                            login_url: login(&a.login_url),
                            client_id: a.client_id.clone(),
                            client_secret: cs.flatten(),
                            refresh_token,
                        }),
                    }
                }
                AuthConfig::Password(a) => {
                    let cs = secret(&mut errs, &k("client_secret"), &a.client_secret, env, aws);
                    let pw = secret(&mut errs, &k("password"), &a.password, env, aws);
                    let st = a
                        .security_token
                        .as_ref()
                        .map(|s| secret(&mut errs, &k("security_token"), s, env, aws));
                    match (cs, pw, st) {
                        (Some(client_secret), Some(password), st) if !matches!(st, Some(None)) => {
                            Some(Credentials::Password {
                                login_url: login(&a.login_url),
                                client_id: a.client_id.clone(),
                                client_secret,
                                username: a.username.clone(),
                                password,
                                security_token: st.flatten(),
                            })
                        }
                        _ => None,
                    }
                }
            }
        }
    };
    let warehouse_url = match &cfg.warehouse {
        ValidWarehouse::Sqlite { .. } => None,
        ValidWarehouse::Postgres { url, .. } => {
            let s = secret(&mut errs, "warehouse.url", url, env, aws);
            if let Some(u) = &s {
                let e = u.expose();
                if !(e.starts_with("postgres://") || e.starts_with("postgresql://")) {
                    let key = format!("warehouse.url.{}", url.field());
                    errs.push(ConfigError::new(
                        key,
                        "the value is not a postgres:// or postgresql:// URL",
                    ));
                }
            }
            s
        }
    };
    let pii_key = cfg.pii.as_ref().and_then(|pii| {
        load_pii_key(
            &mut errs,
            "pii",
            &pii.key,
            &pii.key_field,
            &pii.key_id,
            env,
            aws,
        )
    });
    let pii_old_keys = cfg.pii.as_ref().map_or_else(Vec::new, |pii| {
        pii.old_keys
            .iter()
            .enumerate()
            .filter_map(|(i, old)| {
                let table = format!("pii.old_keys[{i}]");
                load_pii_key(
                    &mut errs,
                    &table,
                    &old.key,
                    &old.key_field,
                    &old.key_id,
                    env,
                    aws,
                )
            })
            .collect()
    });
    let api_tokens = resolve_api_tokens(&mut errs, cfg.api.as_ref(), env, aws);
    let odata_basic = resolve_odata_basic(&mut errs, cfg, env, aws);
    let outbound_secrets = resolve_outbound_secrets(&mut errs, cfg, env, aws);
    let log_sasl_password = cfg
        .log
        .sasl_password
        .as_ref()
        .and_then(|r| secret(&mut errs, "log.sasl_password", r, env, aws));
    let mut sink_secrets = std::collections::HashMap::new();
    for (i, sink) in cfg.sinks.iter().enumerate() {
        if let super::validate::SinkTarget::Webhook { secret: r, .. } = &sink.target {
            if let Some(v) = secret(&mut errs, &format!("sinks[{i}].secret"), r, env, aws) {
                if v.expose().len() < 16 {
                    errs.push(ConfigError::new(
                        format!("sinks[{i}].secret"),
                        "the signing secret is shorter than 16 bytes",
                    ));
                } else {
                    sink_secrets.insert(sink.name.clone(), v);
                }
            }
        }
    }
    match (credentials, instance_url) {
        (Some(credentials), Some(instance_url)) if errs.is_empty() => Ok(ResolvedSecrets {
            api_tokens,
            odata_basic,
            outbound_secrets,
            sink_secrets,
            log_sasl_password,
            credentials,
            instance_url,
            pubsub_address,
            ca_file,
            warehouse_url,
            pii_key,
            pii_old_keys,
            aws: None,
        }),
        _ => Err(errs),
    }
}

/// Reads each `[[api.tokens]]` token; a short token, or two entries with the same token, is an
/// error naming the entries (never the value).
pub(crate) fn resolve_api_tokens(
    errs: &mut Vec<ConfigError>,
    api: Option<&super::validate::ValidApi>,
    env: &dyn Fn(&str) -> Option<String>,
    aws: &AwsFetched,
) -> Vec<ApiToken> {
    let Some(api) = api else {
        return Vec::new();
    };
    let mut out: Vec<ApiToken> = Vec::new();
    let mut index_of = Vec::new();
    for (i, t) in api.tokens.iter().enumerate() {
        let key = t.source_key.clone();
        let Some(value) = read_ref(errs, &key, &t.source, env, aws) else {
            continue;
        };
        let value = value.trim().to_string();
        if value.chars().count() < MIN_API_TOKEN_CHARS {
            errs.push(ConfigError::new(
                key,
                format!(
                    "the token of '{}' is shorter than {MIN_API_TOKEN_CHARS} characters",
                    t.name
                ),
            ));
            continue;
        }
        if let Some(j) = out.iter().position(|o| o.token.expose() == value) {
            errs.push(ConfigError::new(
                key,
                format!(
                    "'{}' has the same token as '{}' (api.tokens[{}]): each token must be its own",
                    t.name, out[j].name, index_of[j]
                ),
            ));
            continue;
        }
        index_of.push(i);
        out.push(ApiToken {
            name: t.name.clone(),
            role: t.role,
            source_system: t.source_system.clone(),
            token: Secret::new(value),
            pii: t.pii,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_keys() {
        assert_eq!(parse_hex_key(&"00".repeat(32)), Some([0u8; 32]));
        assert_eq!(parse_hex_key(&"ff".repeat(32)).unwrap()[31], 255);
        assert!(parse_hex_key("abc").is_none());
        assert!(parse_hex_key(&"zz".repeat(32)).is_none());
    }

    #[test]
    fn pii_key_debug_redacts() {
        let k = PiiKey {
            id: "k1".into(),
            key: [7; 32],
        };
        assert_eq!(format!("{k:?}"), "PiiKey { id: \"k1\", key: *** }");
    }
}
