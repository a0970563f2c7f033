//! The one I/O step of configuration: environment variables and secret files become
//! [`Secret`]s. Every failure is collected and names the key and the variable or path; secret
//! values are never put into messages.

use std::fmt;
use std::path::Path;

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
}

/// A bearer token of the API with its name, role and (optional) bound writing system.
#[derive(Debug, Clone)]
pub struct ApiToken {
    pub name: String,
    pub role: super::validate::ApiRole,
    pub source_system: Option<String>,
    /// Never printed (`Secret` redacts in `Debug`).
    pub token: Secret,
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

fn secret(
    errs: &mut Vec<ConfigError>,
    key: &str,
    r: &SecretRef,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Secret> {
    let (v, key) = match r {
        SecretRef::Env(var) => {
            let key = format!("{key}.env");
            match env(var) {
                Some(v) => (v, key),
                None => {
                    errs.push(ConfigError::new(
                        key,
                        format!("environment variable {var} is not set"),
                    ));
                    return None;
                }
            }
        }
        SecretRef::File(p) => {
            let key = format!("{key}.file");
            match read_file(&key, p) {
                Ok(v) => (v, key),
                Err(e) => {
                    errs.push(e);
                    return None;
                }
            }
        }
    };
    if v.trim().is_empty() {
        let what = match r {
            SecretRef::Env(var) => format!("environment variable {var}"),
            SecretRef::File(p) => p.display().to_string(),
        };
        errs.push(ConfigError::new(key, format!("{what} is empty")));
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
/// names `table.key_file` / `table.key_env` and the path or variable, never the value.
fn load_pii_key(
    errs: &mut Vec<ConfigError>,
    table: &str,
    source: &PiiKeySource,
    key_id: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<PiiKey> {
    let (key, text) = match source {
        PiiKeySource::Env(var) => {
            let key = format!("{table}.key_env");
            match env(var) {
                Some(v) => (key, v),
                None => {
                    errs.push(ConfigError::new(
                        key,
                        format!("environment variable {var} is not set"),
                    ));
                    return None;
                }
            }
        }
        PiiKeySource::File(p) => {
            let key = format!("{table}.key_file");
            match read_file(&key, p) {
                Ok(v) => (key, v),
                Err(e) => {
                    errs.push(e);
                    return None;
                }
            }
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

/// Resolves every secret of `cfg`; reads `env` and the referenced files.
pub fn resolve(
    cfg: &ValidConfig,
    env: &dyn Fn(&str) -> Option<String>,
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
                    let pem = secret(&mut errs, &k("private_key"), &a.private_key, env);
                    if let Some(p) = &pem {
                        if !p.expose().contains("-----BEGIN") {
                            let key = match &a.private_key {
                                SecretRef::Env(_) => k("private_key.env"),
                                SecretRef::File(_) => k("private_key.file"),
                            };
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
                    secret(&mut errs, &k("client_secret"), &a.client_secret, env).map(
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
                        .map(|s| secret(&mut errs, &k("client_secret"), s, env));
                    let rt = secret(&mut errs, &k("refresh_token"), &a.refresh_token, env);
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
                    let cs = secret(&mut errs, &k("client_secret"), &a.client_secret, env);
                    let pw = secret(&mut errs, &k("password"), &a.password, env);
                    let st = a
                        .security_token
                        .as_ref()
                        .map(|s| secret(&mut errs, &k("security_token"), s, env));
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
            let s = secret(&mut errs, "warehouse.url", url, env);
            if let Some(u) = &s {
                let e = u.expose();
                if !(e.starts_with("postgres://") || e.starts_with("postgresql://")) {
                    let key = match url {
                        SecretRef::Env(_) => "warehouse.url.env",
                        SecretRef::File(_) => "warehouse.url.file",
                    };
                    errs.push(ConfigError::new(
                        key,
                        "the value is not a postgres:// or postgresql:// URL",
                    ));
                }
            }
            s
        }
    };
    let pii_key = cfg
        .pii
        .as_ref()
        .and_then(|pii| load_pii_key(&mut errs, "pii", &pii.key, &pii.key_id, env));
    let pii_old_keys = cfg.pii.as_ref().map_or_else(Vec::new, |pii| {
        pii.old_keys
            .iter()
            .enumerate()
            .filter_map(|(i, old)| {
                let table = format!("pii.old_keys[{i}]");
                load_pii_key(&mut errs, &table, &old.key, &old.key_id, env)
            })
            .collect()
    });
    let api_tokens = resolve_api_tokens(&mut errs, cfg, env);
    let mut sink_secrets = std::collections::HashMap::new();
    for (i, sink) in cfg.sinks.iter().enumerate() {
        if let super::validate::SinkTarget::Webhook { secret: r, .. } = &sink.target {
            if let Some(v) = secret(&mut errs, &format!("sinks[{i}].secret"), r, env) {
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
            sink_secrets,
            credentials,
            instance_url,
            pubsub_address,
            ca_file,
            warehouse_url,
            pii_key,
            pii_old_keys,
        }),
        _ => Err(errs),
    }
}

/// Reads each `[[api.tokens]]` token; a short token, or two entries with the same token, is an
/// error naming the entries (never the value).
pub(crate) fn resolve_api_tokens(
    errs: &mut Vec<ConfigError>,
    cfg: &ValidConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<ApiToken> {
    let Some(api) = &cfg.api else {
        return Vec::new();
    };
    let mut out: Vec<ApiToken> = Vec::new();
    let mut index_of = Vec::new();
    for (i, t) in api.tokens.iter().enumerate() {
        let table = format!("api.tokens[{i}]");
        let key = match &t.source {
            SecretRef::Env(_) => format!("{table}.token_env"),
            SecretRef::File(_) => format!("{table}.token_file"),
        };
        let value = match &t.source {
            SecretRef::Env(var) => match env(var) {
                Some(v) => v.trim().to_string(),
                None => {
                    errs.push(ConfigError::new(
                        key,
                        format!("environment variable {var} is not set"),
                    ));
                    continue;
                }
            },
            SecretRef::File(p) => match read_file(&key, p) {
                Ok(v) => v,
                Err(e) => {
                    errs.push(e);
                    continue;
                }
            },
        };
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
