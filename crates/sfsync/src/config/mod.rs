//! sfsync's configuration: one TOML file, parsed strictly, validated purely, secrets resolved in
//! a separate explicit step.
//!
//! Guarantees: an unknown key, a wrong type, an inline secret or a semantic mistake is never
//! ignored — every problem in the file is reported at once, each naming the file, the key path
//! and the line:column (`sfsync.toml:14:1: objects[2].pii_fields[0]: …`). [`SfsyncConfig::validate`]
//! does no I/O; only [`LoadedConfig::resolve_secrets_with_aws`] reads environment variables,
//! secret files and AWS (Secrets Manager, KMS), and the values it returns are [`Secret`]s that
//! never print.
//!
//! Flow: [`load`] = read file → [`parse`] (syntax + shape, all tables independently) →
//! [`SfsyncConfig::validate`] (semantics) → [`LoadedConfig`]; then
//! [`LoadedConfig::resolve_secrets_with_aws`] → [`ResolvedSecrets`].

// The binary's `run` command is the main consumer of this API and lands later in issue 4; until
// then some of it (resolved secrets, pipeline figures, re-exports) is only used by tests.
#![allow(dead_code, unused_imports)]

pub mod check;
pub mod deployment;
pub mod model;
pub mod secrets;
mod span;
pub mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

pub use model::*;
pub use secrets::{PiiKey, ResolvedSecrets};
pub use sfsync_salesforce::Secret;
pub use span::{LineCol, SpanIndex};
pub use validate::{
    ApiRole, ArchiveWhere, CredentialsSource, PiiKeySource, SinkTarget, ValidApi, ValidApiToken,
    ValidArchive, ValidConfig, ValidObject, ValidOdata, ValidOldKey, ValidOutboundMessage,
    ValidPii, ValidPlatformEvents, ValidSalesforce, ValidSink, ValidWarehouse,
};

/// One problem in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path, e.g. `objects[2].pii_fields[0]`; empty for a document-level syntax error.
    pub key: String,
    pub message: String,
    /// Where in the file; `None` when the key (and every ancestor) is absent.
    pub at: Option<LineCol>,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
            at: None,
        }
    }
}

/// Every problem found in one config file. `Display` prints one per line:
/// `file:line:col: key: message`.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file)?;
            if let Some(at) = e.at {
                write!(f, ":{at}")?;
            }
            if e.key.is_empty() {
                write!(f, ": {}", e.message)?;
            } else {
                write!(f, ": {}: {}", e.key, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    fn new(file: &str, mut errors: Vec<ConfigError>) -> Self {
        // In file order; errors without a location (absent tables) last.
        errors.sort_by_key(|e| e.at.map_or((usize::MAX, 0), |a| (a.line, a.col)));
        ConfigErrors {
            file: file.to_string(),
            errors,
        }
    }
}

/// A parsed and validated config, with what is needed to locate keys for later errors.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: ValidConfig,
    /// The file name used in messages.
    pub file: String,
    index: SpanIndex,
}

impl LoadedConfig {
    /// The explicit I/O step without AWS: reads every referenced environment variable
    /// (through `env`) and secret file; an AWS reference is reported as not fetched (use
    /// [`Self::resolve_secrets_with_aws`]). Reports all failures, each naming the key and the
    /// variable or path.
    pub fn resolve_secrets(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ResolvedSecrets, ConfigErrors> {
        secrets::resolve(&self.config, env, &secrets::AwsFetched::default())
            .map_err(|errs| self.locate(errs))
    }

    /// [`Self::resolve_secrets`] with AWS values already fetched (`aws`); what it asked for is
    /// recorded in `aws` ([`secrets::AwsFetched::asked`]).
    pub fn resolve_secrets_fetched(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        aws: &secrets::AwsFetched,
    ) -> Result<ResolvedSecrets, ConfigErrors> {
        secrets::resolve(&self.config, env, aws).map_err(|errs| self.locate(errs))
    }

    /// The explicit I/O step: environment variables (through `env`), secret files, and the
    /// AWS references (Secrets Manager secrets, KMS-wrapped PII keys) with a client configured
    /// from the `AWS_*` variables of `env`. Reports all failures, each naming the key and the
    /// variable, path or secret id.
    pub async fn resolve_secrets_with_aws(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ResolvedSecrets, ConfigErrors> {
        secrets::resolve_with_aws(&self.config, env)
            .await
            .map_err(|errs| self.locate(errs))
    }

    /// [`Self::resolve_secrets_with_aws`] against the process environment.
    pub async fn resolve_secrets_from_env(&self) -> Result<ResolvedSecrets, ConfigErrors> {
        self.resolve_secrets_with_aws(&|name| std::env::var(name).ok())
            .await
    }

    fn locate(&self, errors: Vec<ConfigError>) -> ConfigErrors {
        locate_all(&self.file, &self.index, errors)
    }
}

fn locate_all(file: &str, index: &SpanIndex, errors: Vec<ConfigError>) -> ConfigErrors {
    let errors = errors
        .into_iter()
        .map(|mut e| {
            if e.at.is_none() {
                e.at = index.locate(&e.key);
            }
            e
        })
        .collect();
    ConfigErrors::new(file, errors)
}

/// Reads, parses and validates `path` (no secrets are read).
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: file.clone(),
        errors: vec![ConfigError::new(
            "",
            format!("cannot read the config file: {e}"),
        )],
    })?;
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    load_str(&text, &file, &base_dir)
}

/// Parses and validates config text; `file` names it in messages and `base_dir` anchors
/// relative paths.
pub fn load_str(text: &str, file: &str, base_dir: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let (raw, index) = parse(text, file)?;
    let config = raw
        .validate(base_dir)
        .map_err(|errs| locate_all(file, &index, errs))?;
    Ok(LoadedConfig {
        config,
        file: file.to_string(),
        index,
    })
}

const TABLES: &[&str] = &[
    "salesforce",
    "objects",
    "warehouse",
    "pii",
    "pipeline",
    "writeback",
    "api",
    "archive",
    "sinks",
    "freshness",
    "log",
    "odata",
    "outbound_messages",
    "platform_events",
];

/// Syntax and shape: every top-level table (and each `[[objects]]` entry) is deserialised on its
/// own, so all shape errors are reported together.
pub fn parse(text: &str, file: &str) -> Result<(SfsyncConfig, SpanIndex), ConfigErrors> {
    let root = DeTable::parse(text).map_err(|e| {
        let at = e.span().map(|s| span::line_col(text, s.start));
        ConfigErrors {
            file: file.to_string(),
            errors: vec![ConfigError {
                key: String::new(),
                message: format!("invalid TOML: {}", e.message().trim()),
                at,
            }],
        }
    })?;
    let index = SpanIndex::build(text, &root);
    let mut p = Parser {
        index: &index,
        errors: Vec::new(),
    };
    let mut cfg = SfsyncConfig::default();
    for (key, value) in root.get_ref().iter() {
        let name: &str = key.get_ref();
        match name {
            "salesforce" => cfg.salesforce = p.salesforce(value),
            "objects" => match value.get_ref() {
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(o) = p.de::<ObjectConfig>(&format!("objects[{i}]"), item) {
                            cfg.objects.push(o);
                        }
                    }
                }
                _ => p.error(
                    "objects",
                    value.span(),
                    "expected an array of tables ([[objects]])",
                ),
            },
            "warehouse" => {
                cfg.warehouse = p.tagged("warehouse", value, WAREHOUSE_TYPES, |p, ty, v| {
                    Some(match ty {
                        "sqlite" => WarehouseConfig::Sqlite(p.de("warehouse", v)?),
                        _ => WarehouseConfig::Postgres(p.de("warehouse", v)?),
                    })
                })
            }
            "pii" => cfg.pii = p.pii(value),
            "pipeline" => {
                if let Some(v) = p.de("pipeline", value) {
                    cfg.pipeline = v;
                }
            }
            "writeback" => cfg.writeback = p.de("writeback", value),
            "api" => cfg.api = p.api(value),
            "archive" => cfg.archive = p.de("archive", value),
            "sinks" => match value.get_ref() {
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(s) = p.de::<SinkConfig>(&format!("sinks[{i}]"), item) {
                            cfg.sinks.push(s);
                        }
                    }
                }
                _ => p.error(
                    "sinks",
                    value.span(),
                    "expected an array of tables ([[sinks]])",
                ),
            },
            "freshness" => cfg.freshness = p.de("freshness", value),
            "log" => cfg.log = p.de("log", value),
            "odata" => cfg.odata = p.de("odata", value),
            "platform_events" => cfg.platform_events = p.de("platform_events", value),
            "outbound_messages" => match value.get_ref() {
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(o) =
                            p.de::<OutboundMessageConfig>(&format!("outbound_messages[{i}]"), item)
                        {
                            cfg.outbound_messages.push(o);
                        }
                    }
                }
                _ => p.error(
                    "outbound_messages",
                    value.span(),
                    "expected an array of tables ([[outbound_messages]])",
                ),
            },
            other => p.error(
                other,
                key.span(),
                &format!(
                    "unknown table `{other}`, expected one of {}",
                    TABLES.join(", ")
                ),
            ),
        }
    }
    if p.errors.is_empty() {
        Ok((cfg, index))
    } else {
        Err(ConfigErrors::new(file, std::mem::take(&mut p.errors)))
    }
}

struct Parser<'a> {
    index: &'a SpanIndex,
    errors: Vec<ConfigError>,
}

impl Parser<'_> {
    fn error(&mut self, key: &str, span: std::ops::Range<usize>, message: &str) {
        self.errors.push(ConfigError {
            key: key.to_string(),
            message: message.to_string(),
            at: Some(self.index.line_col(span.start)),
        });
    }

    /// Deserialises one value; a failure is recorded at the deepest key containing toml's span.
    fn de<T: for<'de> Deserialize<'de>>(
        &mut self,
        path: &str,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<T> {
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(v) => Some(v),
            Err(e) => {
                let span = e.span().unwrap_or_else(|| value.span());
                let key = self
                    .index
                    .path_at(&span)
                    .filter(|k| k.starts_with(path))
                    .unwrap_or(path)
                    .to_string();
                self.error(&key, span, e.message().trim());
                None
            }
        }
    }

    /// A table tagged by `type = "…"`: the tag picks the variant, the rest of the table is
    /// deserialised straight into it (no buffering, so spans stay exact).
    fn tagged<T>(
        &mut self,
        path: &str,
        value: &Spanned<DeValue<'_>>,
        types: &[&str],
        build: impl FnOnce(&mut Self, &str, &Spanned<DeValue<'_>>) -> Option<T>,
    ) -> Option<T> {
        let DeValue::Table(table) = value.get_ref() else {
            self.error(path, value.span(), "expected a table");
            return None;
        };
        let expected = types
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let Some(tag) = table.get("type") else {
            self.error(
                path,
                value.span(),
                &format!("missing `type`, expected one of {expected}"),
            );
            return None;
        };
        let ty = match tag.get_ref().as_str() {
            Some(t) if types.contains(&t) => t.to_string(),
            _ => {
                let found = match tag.get_ref().as_str() {
                    Some(s) => format!("\"{s}\""),
                    None => tag.get_ref().type_str().to_string(),
                };
                self.error(
                    &format!("{path}.type"),
                    tag.span(),
                    &format!("unknown type {found}, expected one of {expected}"),
                );
                return None;
            }
        };
        let mut rest = table.clone();
        rest.remove("type");
        let rest = Spanned::new(value.span(), DeValue::Table(rest));
        build(self, &ty, &rest)
    }

    /// `[pii]` and each `[[pii.old_keys]]` entry on its own (like `[[objects]]`), so an entry's
    /// errors are reported at that entry (`pii.old_keys[1]`) and do not hide the others'.
    fn pii(&mut self, value: &Spanned<DeValue<'_>>) -> Option<PiiConfig> {
        let DeValue::Table(table) = value.get_ref() else {
            self.error("pii", value.span(), "expected a table");
            return None;
        };
        let mut rest = table.clone();
        let old_value = rest.remove("old_keys");
        let rest = Spanned::new(value.span(), DeValue::Table(rest));
        let mut pii: Option<PiiConfig> = self.de("pii", &rest);
        let mut old_keys = Vec::new();
        if let Some(ov) = old_value {
            match ov.get_ref() {
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(k) = self.de::<PiiOldKey>(&format!("pii.old_keys[{i}]"), item) {
                            old_keys.push(k);
                        }
                    }
                }
                _ => self.error(
                    "pii.old_keys",
                    ov.span(),
                    "expected an array of tables ([[pii.old_keys]])",
                ),
            }
        }
        if let Some(p) = pii.as_mut() {
            p.old_keys = old_keys;
        }
        pii
    }

    /// `[api]` and each `[[api.tokens]]` entry on its own (like `[[pii.old_keys]]`).
    fn api(&mut self, value: &Spanned<DeValue<'_>>) -> Option<ApiConfig> {
        let DeValue::Table(table) = value.get_ref() else {
            self.error("api", value.span(), "expected a table");
            return None;
        };
        let mut rest = table.clone();
        let tokens_value = rest.remove("tokens");
        let rest = Spanned::new(value.span(), DeValue::Table(rest));
        let mut api: Option<ApiConfig> = self.de("api", &rest);
        let mut tokens = Vec::new();
        if let Some(tv) = tokens_value {
            match tv.get_ref() {
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(t) =
                            self.de::<ApiTokenConfig>(&format!("api.tokens[{i}]"), item)
                        {
                            tokens.push(t);
                        }
                    }
                }
                _ => self.error(
                    "api.tokens",
                    tv.span(),
                    "expected an array of tables ([[api.tokens]])",
                ),
            }
        }
        if let Some(a) = api.as_mut() {
            a.tokens = tokens;
        }
        api
    }

    fn salesforce(&mut self, value: &Spanned<DeValue<'_>>) -> Option<SalesforceConfig> {
        let DeValue::Table(table) = value.get_ref() else {
            self.error("salesforce", value.span(), "expected a table");
            return None;
        };
        let mut rest = table.clone();
        let auth_value = rest.remove("auth");
        let rest = Spanned::new(value.span(), DeValue::Table(rest));
        let mut sf: Option<SalesforceConfig> = self.de("salesforce", &rest);
        if let Some(av) = auth_value {
            let p = "salesforce.auth";
            let auth = self.tagged(p, &av, AUTH_TYPES, |s, ty, v| {
                Some(match ty {
                    "jwt_bearer" => AuthConfig::JwtBearer(s.de(p, v)?),
                    "client_credentials" => AuthConfig::ClientCredentials(s.de(p, v)?),
                    "refresh_token" => AuthConfig::RefreshToken(s.de(p, v)?),
                    _ => AuthConfig::Password(s.de(p, v)?),
                })
            });
            if let Some(sf) = sf.as_mut() {
                sf.auth = auth;
            }
        }
        sf
    }
}
