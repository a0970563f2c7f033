//! The config file as written: serde structs, one per TOML table, all `deny_unknown_fields`.
//!
//! These types only promise that the document has the right *shape*; the semantic rules
//! (duplicates, channel format, non-zero units, one credentials source) live in
//! [`super::validate`]. Secrets can only be *references* (`{ env = "VAR" }` / `{ file = "path" }`):
//! an inline literal is rejected while parsing, so a secret never sits in the file.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// The whole file. Each table is deserialised on its own so that one bad table does not hide
/// the errors of the others.
#[derive(Debug, Clone, Default)]
pub struct SfsyncConfig {
    pub salesforce: Option<SalesforceConfig>,
    pub objects: Vec<ObjectConfig>,
    pub warehouse: Option<WarehouseConfig>,
    pub pii: Option<PiiConfig>,
    pub pipeline: PipelineConfig,
    pub writeback: Option<WritebackConfig>,
    /// `[api]`; absent: the API is on, on the loopback default (see [`ApiConfig`]).
    pub api: Option<ApiConfig>,
    /// `[archive]`; absent: the defaults of [`ArchiveConfig`].
    pub archive: Option<ArchiveConfig>,
    /// `[[sinks]]`: downstream delivery of the curated change stream.
    pub sinks: Vec<SinkConfig>,
    /// `[freshness]`; absent: the defaults of [`FreshnessConfig`].
    pub freshness: Option<FreshnessConfig>,
    /// `[log]`; absent: the raw change log is in the warehouse database.
    pub log: Option<LogConfig>,
    /// `[odata]`; absent: no OData endpoint.
    pub odata: Option<OdataConfig>,
    /// `[platform_events]`; absent: no platform events in or out.
    pub platform_events: Option<PlatformEventsConfig>,
    /// `[[outbound_messages]]`: Salesforce Outbound Message definitions whose notifications
    /// the API's SOAP endpoint receives.
    pub outbound_messages: Vec<OutboundMessageConfig>,
}

/// One `[[orgs]]` entry of a deployment file (see [`super::deployment`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgRef {
    /// The org's label in metrics (`org="…"`), API routes (`/orgs/<name>/…`) and log lines.
    pub name: String,
    /// The org's own complete sfsync config, relative to the deployment file.
    pub config: PathBuf,
}

/// `[salesforce]`: where the org is and how to authenticate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceConfig {
    /// My Domain / instance URL. Optional with `credentials_file` (taken from the file).
    pub instance_url: Option<String>,
    /// REST API version, `NN.0`.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// An emulator-style credentials JSON file; excludes `[salesforce.auth]`.
    pub credentials_file: Option<PathBuf>,
    /// An explicit OAuth flow (`[salesforce.auth]`); excludes `credentials_file`. Filled by the
    /// parser from the `type` tag (see [`super::parse`]), so errors keep exact key positions.
    #[serde(skip)]
    pub auth: Option<AuthConfig>,
    /// PEM CA certificate to trust in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// The client id sent in `Sforce-Call-Options: client=…`; sfsync's own writes carry it
    /// as their change origin, so they can be recognised in the change stream.
    #[serde(default = "default_client_id_header")]
    pub client_id_header: String,
    /// Pub/Sub API endpoint, `host:port`.
    pub pubsub_address: Option<String>,
    /// `[salesforce.budget]`: the share of the org's daily API allocation sfsync may use, lanes'
    /// reserves and concurrency caps (see `sfsync_salesforce::governor`).
    #[serde(default)]
    pub budget: sfsync_salesforce::BudgetConfig,
}

pub fn default_api_version() -> String {
    sfsync_salesforce::http::DEFAULT_API_VERSION.to_string()
}

pub fn default_client_id_header() -> String {
    "sfsync".to_string()
}

/// `[salesforce.auth]`, tagged by `type`.
#[derive(Debug, Clone)]
pub enum AuthConfig {
    JwtBearer(JwtBearerAuth),
    ClientCredentials(ClientCredentialsAuth),
    RefreshToken(RefreshTokenAuth),
    Password(PasswordAuth),
}

/// `type = "jwt_bearer"`: an RS256 assertion signed with the connected app's key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtBearerAuth {
    /// Token endpoint host and JWT audience; default the instance URL.
    pub login_url: Option<String>,
    pub client_id: String,
    pub username: String,
    /// PEM RSA private key.
    pub private_key: SecretRef,
}

/// `type = "client_credentials"`: the token endpoint is the instance URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCredentialsAuth {
    pub client_id: String,
    pub client_secret: SecretRef,
}

/// `type = "refresh_token"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshTokenAuth {
    pub login_url: Option<String>,
    pub client_id: String,
    pub client_secret: Option<SecretRef>,
    pub refresh_token: SecretRef,
}

/// `type = "password"` (legacy username-password flow).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordAuth {
    pub login_url: Option<String>,
    pub client_id: String,
    pub client_secret: SecretRef,
    pub username: String,
    pub password: SecretRef,
    pub security_token: Option<SecretRef>,
}

pub const AUTH_TYPES: &[&str] = &[
    "jwt_bearer",
    "client_credentials",
    "refresh_token",
    "password",
];

impl AuthConfig {
    pub fn flow_name(&self) -> &'static str {
        match self {
            AuthConfig::JwtBearer(_) => "jwt_bearer",
            AuthConfig::ClientCredentials(_) => "client_credentials",
            AuthConfig::RefreshToken(_) => "refresh_token",
            AuthConfig::Password(_) => "password",
        }
    }
}

/// Where a secret comes from. Never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable.
    Env(String),
    /// A file (relative paths are relative to the config file); surrounding whitespace is trimmed.
    File(PathBuf),
    /// A secret in AWS Secrets Manager, read once at start (boxed: the enum stays small).
    Aws(Box<AwsSecretRef>),
}

/// `{ aws_secret = "prod/sfsync/salesforce", json_key = "client_secret", version_stage = "…" }`:
/// a secret in AWS Secrets Manager (region, endpoint and credentials from the standard AWS
/// environment variables).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AwsSecretRef {
    /// The secret's name or ARN.
    pub secret_id: String,
    /// Picks one field of a JSON-object `SecretString` (without it the whole string is the
    /// value).
    pub json_key: Option<String>,
    /// The version stage; default `AWSCURRENT`.
    pub version_stage: Option<String>,
}

impl AwsSecretRef {
    /// For messages: `'prod/sfsync/salesforce'`, with its JSON key and stage when given.
    pub fn describe(&self) -> String {
        let mut s = format!("'{}'", self.secret_id);
        if let Some(k) = &self.json_key {
            s.push_str(&format!(" (json_key '{k}')"));
        }
        if let Some(v) = &self.version_stage {
            s.push_str(&format!(" (version_stage '{v}')"));
        }
        s
    }
}

impl SecretRef {
    /// The key naming the source inside the reference's table: `env`, `file` or `aws_secret`.
    pub fn field(&self) -> &'static str {
        match self {
            SecretRef::Env(_) => "env",
            SecretRef::File(_) => "file",
            SecretRef::Aws(_) => "aws_secret",
        }
    }

    /// For summaries and messages (never the value): `environment variable X`, the path, or
    /// `AWS Secrets Manager secret 'id'`.
    pub fn describe(&self) -> String {
        match self {
            SecretRef::Env(v) => format!("environment variable {v}"),
            SecretRef::File(p) => p.display().to_string(),
            SecretRef::Aws(a) => format!("AWS Secrets Manager secret {}", a.describe()),
        }
    }
}

pub const INLINE_SECRET: &str =
    "inline secrets are not allowed; write { env = \"VAR\" }, { file = \"path\" } or { aws_secret = \"name\" }";

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SecretRef;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("{ env = \"VAR\" }, { file = \"path\" } or { aws_secret = \"name\" }")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<SecretRef, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SecretRef, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Raw {
                    env: Option<String>,
                    file: Option<PathBuf>,
                    aws_secret: Option<String>,
                    json_key: Option<String>,
                    version_stage: Option<String>,
                }
                let raw = Raw::deserialize(de::value::MapAccessDeserializer::new(map))?;
                if raw.aws_secret.is_none()
                    && (raw.json_key.is_some() || raw.version_stage.is_some())
                {
                    return Err(de::Error::custom(
                        "`json_key` and `version_stage` go with `aws_secret`",
                    ));
                }
                match (raw.env, raw.file, raw.aws_secret) {
                    (Some(v), None, None) => Ok(SecretRef::Env(v)),
                    (None, Some(p), None) => Ok(SecretRef::File(p)),
                    (None, None, Some(id)) => Ok(SecretRef::Aws(Box::new(AwsSecretRef {
                        secret_id: id,
                        json_key: raw.json_key,
                        version_stage: raw.version_stage,
                    }))),
                    (Some(_), Some(_), None) => Err(de::Error::custom(
                        "give either `env` or `file` for a secret, not both",
                    )),
                    (None, None, None) => Err(de::Error::custom(
                        "a secret needs `env = \"VAR\"`, `file = \"path\"` or `aws_secret = \"name\"`",
                    )),
                    _ => Err(de::Error::custom(
                        "give one of `env`, `file` or `aws_secret` for a secret, not several",
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `[[objects]]`: one synced Salesforce object.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectConfig {
    /// API name, e.g. `Case` or `Service_Request__c`.
    pub name: String,
    /// Change Data Capture channel; default `/data/<Name>ChangeEvent`.
    pub channel: Option<String>,
    /// SCD2 history: which fields open a new version.
    pub history: Option<HistoryConfig>,
    /// Fields encrypted at rest.
    #[serde(default)]
    pub pii_fields: Vec<String>,
    #[serde(default)]
    pub mode: SyncMode,
    /// Data quality: fields that must not be null (a failing change is quarantined).
    #[serde(default)]
    pub required: Vec<String>,
    /// Data quality: checks per field (`[[objects.rules]]`).
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Data quality: lookups whose parent must arrive before the child is merged.
    #[serde(default)]
    pub references: Vec<ReferenceConfig>,
    /// Data quality: text length and restricted picklist values checked against describe.
    #[serde(default = "yes")]
    pub schema_checks: bool,
    /// Formula fields synced as columns (change events never carry them; a scheduled refresh
    /// re-reads them): `true` for all, a list of names, or `false` (the default).
    pub formula_fields: Option<FormulaFieldsConfig>,
    /// Integration map: the team answerable for this flow (shown by `sfsync map`).
    pub team: Option<String>,
    /// Integration map: the flow's freshness target in seconds, Salesforce commit → warehouse
    /// (default `[freshness] delayed_after_secs`, 120). Also the object's `sync_status`
    /// threshold: `delayed` past it.
    pub sla_secs: Option<u64>,
}

/// `formula_fields = true | false | ["A__c", "B__c"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormulaFieldsConfig {
    All(bool),
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for FormulaFieldsConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FormulaFieldsConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or a list of formula field names")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<FormulaFieldsConfig, E> {
                Ok(FormulaFieldsConfig::All(b))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<FormulaFieldsConfig, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    v.push(s);
                }
                Ok(FormulaFieldsConfig::List(v))
            }
        }
        d.deserialize_any(V)
    }
}

fn yes() -> bool {
    true
}

/// `[[objects.rules]]`: one data-quality check on one field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub field: String,
    /// `not_null`, `accepted_values`, `regex`, `range` or `unique`.
    pub check: String,
    /// For `accepted_values`.
    #[serde(default)]
    pub values: Vec<String>,
    /// For `regex`.
    pub pattern: Option<String>,
    /// For `range`.
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// `error` (quarantine; the default) or `warn` (apply and record).
    pub severity: Option<String>,
}

/// `references = [{ field = "AccountId", object = "Account" }]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceConfig {
    pub field: String,
    /// The parent object.
    pub object: String,
    /// A child waiting this long for its parent raises an alert (it keeps waiting).
    #[serde(default = "default_alert_after")]
    pub alert_after_secs: u64,
}

fn default_alert_after() -> u64 {
    3600
}

/// How changes are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Change Data Capture over the Pub/Sub API.
    #[default]
    Cdc,
    /// Periodic SOQL on `SystemModstamp` (objects without CDC).
    Poll,
    /// Only Salesforce Outbound Messages pushed to the API's SOAP endpoint (an
    /// `[[outbound_messages]]` flow names the object); no CDC subscription.
    OutboundMessage,
}

/// `history = { fields = [...] }` or `history = { fields = "all" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    pub fields: HistoryFields,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryFields {
    All,
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for HistoryFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HistoryFields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"all\" or a list of field names")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HistoryFields, E> {
                if s == "all" {
                    Ok(HistoryFields::All)
                } else {
                    Err(E::custom(format!(
                        "expected \"all\" or a list of field names, found \"{s}\""
                    )))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HistoryFields, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    v.push(s);
                }
                Ok(HistoryFields::List(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// `[warehouse]`, tagged by `type`.
#[derive(Debug, Clone)]
pub enum WarehouseConfig {
    Sqlite(SqliteWarehouse),
    Postgres(PostgresWarehouse),
}

pub const WAREHOUSE_TYPES: &[&str] = &["sqlite", "postgres"];

/// `type = "sqlite"`: an embedded SQLite file (WAL).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteWarehouse {
    /// Relative paths are relative to the config file.
    pub path: PathBuf,
}

/// `type = "postgres"`: Postgres 15+. The URL usually carries a password, so it is a secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresWarehouse {
    pub url: SecretRef,
    /// Schema holding sfsync's tables.
    #[serde(default = "default_pg_schema")]
    pub schema: String,
}

fn default_pg_schema() -> String {
    "sfsync".to_string()
}

/// `[pii]`: the AES-256-GCM key for PII fields, from exactly one of `key_file`, `key_env`,
/// `key` (any secret reference, e.g. Secrets Manager) or `kms_key_id` + `wrapped_key_file` (a
/// data key wrapped by AWS KMS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiConfig {
    /// A file holding the 32-byte key as 64 hex digits.
    pub key_file: Option<PathBuf>,
    /// An environment variable holding the key as 64 hex digits.
    pub key_env: Option<String>,
    /// A secret reference holding the key as 64 hex digits.
    pub key: Option<SecretRef>,
    /// The KMS key (id, ARN, alias name or alias ARN) that wraps `wrapped_key_file`.
    pub kms_key_id: Option<String>,
    /// The data key wrapped by KMS: the base64 `CiphertextBlob` of GenerateDataKey, made with the
    /// encryption context `{"sfsync:pii_key_id": key_id}` (`sfsync keys kms-generate`).
    pub wrapped_key_file: Option<PathBuf>,
    /// Stored with every encrypted value, so keys can be rotated.
    pub key_id: String,
    /// `[[pii.old_keys]]`: retired keys that still open values sealed under them (never seal),
    /// kept until `sfsync keys rotate` has re-sealed everything under the current key. Filled by
    /// the parser one entry at a time (see [`super::parse`]), so errors name the entry.
    #[serde(skip)]
    pub old_keys: Vec<PiiOldKey>,
}

/// One `[[pii.old_keys]]` entry: a retired key, given exactly like the current one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiOldKey {
    /// A file holding the 32-byte key as 64 hex digits.
    pub key_file: Option<PathBuf>,
    /// An environment variable holding the key as 64 hex digits.
    pub key_env: Option<String>,
    /// A secret reference holding the key as 64 hex digits.
    pub key: Option<SecretRef>,
    /// The KMS key that wraps `wrapped_key_file`.
    pub kms_key_id: Option<String>,
    /// The data key wrapped by KMS (base64 `CiphertextBlob`).
    pub wrapped_key_file: Option<PathBuf>,
    /// The id the values sealed under this key carry.
    pub key_id: String,
}

/// Default `[pipeline] poll_bulk_threshold`: 25 REST pages of 2,000 rows, against about
/// 6–10 calls for a Bulk job (count, upper bound, create, status polls, one result page).
pub const DEFAULT_POLL_BULK_THRESHOLD: u64 = 50_000;

/// Smallest non-zero `[pipeline] poll_bulk_threshold`: one REST page reads fewer rows for
/// fewer calls than a Bulk job takes, and every job counts against the org's 10,000 Bulk
/// query jobs a day.
pub const MIN_POLL_BULK_THRESHOLD: u64 = 2_000;

/// `[pipeline]`: batching and timing. Every value must be > 0.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Most events applied in one warehouse transaction.
    pub batch_max_records: u64,
    /// Longest a partial batch waits before it is applied.
    pub batch_max_wait_ms: u64,
    /// Events requested per Pub/Sub `FetchRequest`.
    pub fetch_records: u64,
    /// Bound of the queue between subscriber and apply (blocks when full).
    pub queue_capacity_records: u64,
    /// Records per re-read after a gap event.
    pub gap_reread_batch_records: u64,
    /// Interval of `mode = "poll"` objects.
    pub poll_interval_secs: u64,
    /// Each poll round re-reads this far before its cursor (SystemModstamp), so a transaction
    /// committed after a round but stamped before its cursor is still read (commit-order skew).
    pub poll_overlap_secs: u64,
    /// Rows per keyset query of a poll round (SOQL `LIMIT`; read in queryMore pages of at most
    /// 2,000).
    pub poll_page_records: u64,
    /// CDC objects are polled (like `mode = "poll"`) while their Pub/Sub stream is down or the
    /// org's event delivery allocation is exhausted, and go back to CDC when it recovers.
    pub cdc_fallback: bool,
    /// How long a stream must have been failing before its objects are polled (an exhausted
    /// delivery allocation falls back at once).
    pub cdc_fallback_after_secs: u64,
    /// A poll round whose first keyset query past its cursor comes back full and that has at least
    /// this many rows after the cursor (SOQL `COUNT()`) reads them through one Bulk API 2.0 `queryAll` job over a
    /// SystemModstamp window instead of REST pages (result pages of `backfill_page_records`).
    /// 0: never.
    pub poll_bulk_threshold: u64,
    /// Grace period for a final checkpoint on SIGTERM.
    pub shutdown_timeout_secs: u64,
    /// Data-quality failures stored in full per object and rule; beyond, they are counted
    /// (and a held change keeps only its raw-log offset).
    pub max_stored_failures_per_rule: u64,
    /// Objects whose curated table does not exist yet are loaded through Bulk API 2.0.
    pub backfill_new_objects: bool,
    /// Rows per Bulk API 2.0 result page read by backfills and re-syncs (`maxRecords`).
    pub backfill_page_records: u64,
    /// Reconcile every synced object against Salesforce this often (omitted: on demand only).
    pub reconcile_interval_secs: Option<u64>,
    /// Re-read the formula fields of records changed since the last refresh this often (objects
    /// with `formula_fields` only).
    pub formula_refresh_secs: u64,
    /// Backfills and re-syncs spanning more SystemModstamp than this run in slices of it.
    pub job_slice_secs: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_max_records: 1000,
            batch_max_wait_ms: 200,
            fetch_records: 100,
            queue_capacity_records: 10_000,
            gap_reread_batch_records: 200,
            poll_interval_secs: 60,
            poll_overlap_secs: 60,
            poll_page_records: 2_000,
            cdc_fallback: true,
            cdc_fallback_after_secs: 60,
            poll_bulk_threshold: DEFAULT_POLL_BULK_THRESHOLD,
            shutdown_timeout_secs: 30,
            max_stored_failures_per_rule: 10_000,
            backfill_new_objects: true,
            backfill_page_records: 100_000,
            reconcile_interval_secs: None,
            formula_refresh_secs: 300,
            job_slice_secs: 30 * 24 * 3600,
        }
    }
}

/// `[writeback]`: which objects other systems may write back to Salesforce, and who owns which
/// fields (`[[writeback.objects]]`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WritebackConfig {
    #[serde(default)]
    pub objects: Vec<WritebackObjectConfig>,
    /// Longest a write waits for others to fill a call (from its acceptance). Default 500.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Most writes claimed and delivered per round. Default 2000.
    #[serde(default = "default_max_batch")]
    pub max_batch: u64,
    /// One object's batch larger than this goes through Bulk API 2.0. Default 2000.
    #[serde(default = "default_bulk_threshold")]
    pub bulk_threshold: u64,
    /// Sends of a record on transient errors before it is a dead letter. Default 10.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u64,
    /// A write claimed this long ago without an outcome is delivered again. Default 120.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
}

fn default_linger_ms() -> u64 {
    2_000
}
fn default_max_batch() -> u64 {
    2_000
}
fn default_bulk_threshold() -> u64 {
    2_000
}
fn default_max_attempts() -> u64 {
    10
}
fn default_lease_secs() -> u64 {
    120
}

/// `[[writeback.objects]]`: an object's default owner and policy, with per-field overrides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritebackObjectConfig {
    pub name: String,
    /// `salesforce`, `shared`, or a system name. Default `salesforce` (nothing writable).
    #[serde(default = "default_owner")]
    pub owner: String,
    #[serde(default = "default_policy")]
    pub policy: sfsync_pipeline::writeback::ConflictPolicy,
    #[serde(default)]
    pub fields: Vec<WritebackFieldConfig>,
    /// Integration map: the team answerable for this flow (shown by `sfsync map`).
    pub team: Option<String>,
    /// Integration map: the flow's target in seconds, write accepted → applied in Salesforce
    /// (default 300).
    pub sla_secs: Option<u64>,
    /// A parent reference field (`AccountId`): batches are ordered by its value so children of
    /// one parent go together (fewer lock conflicts). Default: ordered by record id.
    #[serde(default)]
    pub parent_field: Option<String>,
}

/// `[[writeback.objects.fields]]`: one field's owner and (optionally) policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritebackFieldConfig {
    pub name: String,
    pub owner: String,
    /// Defaults to the object's policy.
    pub policy: Option<sfsync_pipeline::writeback::ConflictPolicy>,
}

fn default_owner() -> String {
    "salesforce".into()
}

fn default_policy() -> sfsync_pipeline::writeback::ConflictPolicy {
    sfsync_pipeline::writeback::ConflictPolicy::Manual
}

/// `[api]`: the operator HTTP API `sfsync run` serves (versioned JSON under `/api/v1/`,
/// Prometheus `/metrics`, the writeback ingress). Without the table the API is on at
/// `127.0.0.1:8787` (loopback only, so plain HTTP), with no tokens: every endpoint but
/// `/api/v1/openapi.json` then answers 401 until tokens are configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `false` turns the API off.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `IP:port`. Anything but a loopback address needs `tls_cert_file` and `tls_key_file`.
    #[serde(default = "default_api_listen")]
    pub listen: String,
    /// PEM certificate chain served over TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// `/metrics` without a token (for scrapers that cannot send one); by default it needs a
    /// viewer or operator token like the rest.
    #[serde(default)]
    pub metrics_public: bool,
    /// Largest request body accepted (larger: 413).
    #[serde(default = "default_api_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Most writes in one `POST /api/v1/writes` batch.
    #[serde(default = "default_api_max_batch_writes")]
    pub max_batch_writes: u64,
    /// `[[api.tokens]]`: who may call the API. Filled by the parser one entry at a time (see
    /// [`super::parse`]), so errors name the entry.
    #[serde(skip)]
    pub tokens: Vec<ApiTokenConfig>,
    /// Reads of the operational read API (`/api/v1/records`) and the OData endpoint each
    /// caller may make per second, on average (token bucket; 0: unlimited).
    #[serde(default = "default_api_read_rate")]
    pub read_rate_per_sec: u64,
    /// The bucket's size: reads a caller may make in a burst.
    #[serde(default = "default_api_read_burst")]
    pub read_burst: u64,
}

fn default_api_read_rate() -> u64 {
    50
}

fn default_api_read_burst() -> u64 {
    100
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: default_api_listen(),
            tls_cert_file: None,
            tls_key_file: None,
            metrics_public: false,
            max_body_bytes: default_api_max_body_bytes(),
            max_batch_writes: default_api_max_batch_writes(),
            tokens: Vec::new(),
            read_rate_per_sec: default_api_read_rate(),
            read_burst: default_api_read_burst(),
        }
    }
}

pub fn default_api_listen() -> String {
    "127.0.0.1:8787".to_string()
}

fn default_api_max_body_bytes() -> u64 {
    4 * 1024 * 1024
}

fn default_api_max_batch_writes() -> u64 {
    1000
}

/// One `[[api.tokens]]` entry: a bearer token's name (recorded in the audit trail as who
/// acted), its role and where the token comes from (`token_env` or `token_file`, never inline).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenConfig {
    pub name: String,
    /// `viewer` (read), `operator` (read and act, submit writes) or `writer` (the writeback
    /// ingress only).
    pub role: String,
    /// An environment variable holding the token.
    pub token_env: Option<String>,
    /// A file holding the token (surrounding whitespace trimmed).
    pub token_file: Option<PathBuf>,
    /// Any secret reference holding the token (e.g. `{ aws_secret = "prod/sfsync/api",
    /// json_key = "grafana" }`).
    pub token: Option<SecretRef>,
    /// Binds the token to one writing system: its writes must carry this `source_system`.
    /// Required for `writer` tokens.
    pub source_system: Option<String>,
    /// May read PII fields in clear through the read API and OData (default: operators yes,
    /// viewers no).
    pub pii: Option<bool>,
}

/// `[archive]`: the Parquet archive of the raw change log and the retention of everything.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// `false`: no archive jobs, and the hot raw log is never pruned (it is pruned only once
    /// archived).
    #[serde(default = "yes_archive")]
    pub enabled: bool,
    /// A local directory (relative to the config file) or `s3://bucket/prefix` (region,
    /// endpoint and credentials from the standard AWS environment). Default: `archive` beside
    /// a SQLite warehouse file, or beside the config file.
    pub location: Option<String>,
    /// Archive the applied raw log this often.
    #[serde(default = "default_archive_every")]
    pub every_secs: u64,
    /// Raw-log entries stay in the hot log this long after their commit (7 days: beyond the
    /// 72-hour replay window, so a redelivered event is still recognised by its key; 0 prunes
    /// entries as soon as they are archived and applied, and a redelivery is then applied
    /// again as a no-op by its version).
    #[serde(default = "default_hot_retention_days")]
    pub hot_retention_days: u64,
    /// Archive partitions are kept this long (13 months).
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
    /// Audit-trail entries are kept this long (7 years).
    #[serde(default = "default_audit_retention_days")]
    pub audit_retention_days: u64,
    /// Run retention this often.
    #[serde(default = "default_retention_every")]
    pub retention_every_secs: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            enabled: true,
            location: None,
            every_secs: default_archive_every(),
            hot_retention_days: default_hot_retention_days(),
            retention_days: default_retention_days(),
            audit_retention_days: default_audit_retention_days(),
            retention_every_secs: default_retention_every(),
        }
    }
}

fn yes_archive() -> bool {
    true
}
fn default_archive_every() -> u64 {
    3600
}
fn default_hot_retention_days() -> u64 {
    7
}
fn default_retention_days() -> u64 {
    396
}
fn default_audit_retention_days() -> u64 {
    2557
}
fn default_retention_every() -> u64 {
    86_400
}

/// One `[[sinks]]` entry: a downstream consumer of the curated change stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique; names the sink's positions and dead letters in the store (keep it stable).
    pub name: String,
    /// `webhook` (default), `kafka` or `platform_event` ("record applied" notifications
    /// published to Salesforce).
    #[serde(default = "default_sink_kind")]
    pub kind: String,
    /// The downstream system this sink feeds, as named in writeback (`source_system`): changes
    /// that system wrote through sfsync are not delivered back to it.
    pub system: Option<String>,
    /// Objects delivered (default: every synced object).
    pub objects: Option<Vec<String>>,
    /// Webhook: the receiver's URL (`https://…`; plain `http://` only to a loopback host).
    pub url: Option<String>,
    /// Webhook: the HMAC-SHA256 signing secret (at least 16 bytes).
    pub secret: Option<SecretRef>,
    /// Webhook: a PEM CA bundle to trust besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Webhook: request timeout.
    #[serde(default = "default_sink_timeout")]
    pub timeout_secs: u64,
    /// Kafka: bootstrap servers, `host:port[,host:port…]`.
    pub brokers: Option<String>,
    /// Platform event: the event each change becomes (`Record_Applied__e`; listed in
    /// `[platform_events] publish`).
    pub event: Option<String>,
    /// Platform event: event field → value source (`id`, `object`, `change_type`,
    /// `commit_timestamp`, `applied_at`, `event_key`, `changed_fields`, `record.<Field>`).
    pub fields: Option<std::collections::BTreeMap<String, String>>,
    /// Kafka: the topic of each object; `{object}` is replaced by the object's API name.
    #[serde(default = "default_sink_topic")]
    pub topic: String,
    /// Kafka: partitions of topics sfsync creates.
    #[serde(default = "default_sink_partitions")]
    pub partitions: i32,
    /// Kafka: replication factor of topics sfsync creates.
    #[serde(default = "default_sink_replication")]
    pub replication_factor: i32,
    /// Changes per batch (a webhook POST, a Kafka produce round).
    #[serde(default = "default_sink_batch")]
    pub batch_max: usize,
    /// PII fields: `omit` (default), `sealed` (as stored), or `plain` (opened).
    #[serde(default = "default_sink_pii")]
    pub pii: String,
    /// A change still undeliverable this long after the sink started failing becomes a dead
    /// letter, and the sink moves on.
    #[serde(default = "default_sink_dead_letter_after")]
    pub dead_letter_after_secs: u64,
    /// First retry pause (doubling, with full jitter, up to `retry_max_secs`).
    #[serde(default = "default_sink_retry_base_ms")]
    pub retry_base_ms: u64,
    #[serde(default = "default_sink_retry_max")]
    pub retry_max_secs: u64,
    /// Where a new sink starts: `earliest` (the oldest change the outbox holds) or `latest`.
    #[serde(default = "default_sink_start")]
    pub start: String,
}

fn default_sink_kind() -> String {
    "webhook".into()
}
fn default_sink_timeout() -> u64 {
    30
}
fn default_sink_topic() -> String {
    "sfsync.{object}".into()
}
fn default_sink_partitions() -> i32 {
    6
}
fn default_sink_replication() -> i32 {
    1
}
fn default_sink_batch() -> usize {
    200
}
fn default_sink_pii() -> String {
    "omit".into()
}
fn default_sink_dead_letter_after() -> u64 {
    3600
}
fn default_sink_retry_base_ms() -> u64 {
    500
}
fn default_sink_retry_max() -> u64 {
    60
}
fn default_sink_start() -> String {
    "earliest".into()
}

/// `[freshness]`: the consumer freshness contract, `sync_status` in the warehouse (and
/// `/api/v1/sync-status`), kept up to date by `sfsync run`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FreshnessConfig {
    /// Seconds between two updates of `sync_status_state`.
    pub update_every_secs: u64,
    /// An object is `delayed` once its `current_as_of` is older than this many seconds; an
    /// object's `sla_secs` replaces it for that object.
    pub delayed_after_secs: u64,
}

impl Default for FreshnessConfig {
    fn default() -> Self {
        FreshnessConfig {
            update_every_secs: 5,
            delayed_after_secs: 120,
        }
    }
}

/// `[log]`: where the raw change log lives, and how processes share the deployment (run roles).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `store` (default: the warehouse database's raw log) or `kafka` (a topic partitioned by
    /// record id; apply workers share it as a consumer group; needs the Postgres warehouse).
    pub backend: String,
    /// Kafka: bootstrap servers, `host:port[,host:port…]`.
    pub brokers: Option<String>,
    /// Kafka: the raw-log topic.
    pub topic: String,
    /// Kafka: partitions of the topic when sfsync creates it (the most apply workers that share
    /// the work).
    pub partitions: u32,
    /// Kafka: replication factor of the topic when sfsync creates it.
    pub replication_factor: u16,
    /// Kafka: the apply workers' consumer group.
    pub group: String,
    /// Kafka: seconds a produced batch may take to be acknowledged.
    pub delivery_timeout_secs: u64,
    /// Seconds an ingest lease lives without renewal (renewed every third of it). A process
    /// that stops renewing (crash, pause, partition) is replaced after at most this long.
    pub lease_ttl_secs: u64,
    /// This process's name in leases (default: host name and process id).
    pub node_name: Option<String>,
    /// Kafka: `plaintext` (default), `ssl` (TLS) or `sasl_ssl` (SASL over TLS, e.g. Amazon
    /// MSK's SCRAM listener).
    pub security_protocol: String,
    /// Kafka with TLS: PEM file of the CA(s) that sign the brokers' certificates (default: the
    /// system's trust store).
    pub ca_file: Option<PathBuf>,
    /// Kafka with `sasl_ssl`: `scram_sha_512`, `scram_sha_256` or `plain`.
    pub sasl_mechanism: Option<String>,
    /// Kafka with `sasl_ssl`: the user name.
    pub sasl_username: Option<String>,
    /// Kafka with `sasl_ssl`: the password, as a secret reference (`{ env = "…" }`,
    /// `{ file = "…" }` or `{ aws_secret = "…" }`).
    pub sasl_password: Option<SecretRef>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            backend: "store".into(),
            brokers: None,
            topic: "sfsync.raw".into(),
            partitions: 12,
            replication_factor: 1,
            group: "sfsync-apply".into(),
            delivery_timeout_secs: 30,
            lease_ttl_secs: 15,
            node_name: None,
            security_protocol: "plaintext".into(),
            ca_file: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
        }
    }
}

/// `[odata]`: the OData 4.0 endpoint (`/odata/v4/`) for Salesforce Connect and other OData
/// clients, served by the API's listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OdataConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Curated objects (`[[objects]]` names) exposed as entity sets of the same name.
    #[serde(default)]
    pub entity_sets: Vec<String>,
    /// Also expose the writeback outbox table (rows other systems wrote) as the entity set
    /// `WritebackOutbox`.
    #[serde(default)]
    pub outbox: bool,
    /// Entities per page before `@odata.nextLink` (server-driven paging).
    #[serde(default = "default_odata_page_size")]
    pub page_size: u64,
    /// The service root as clients reach it (behind a proxy), e.g.
    /// `https://sfsync.example.com/odata/v4/`; default: from the request's Host header.
    pub public_url: Option<String>,
    /// `[[odata.basic_auth]]`: HTTP Basic principals (Salesforce Connect's Named Principal).
    #[serde(default)]
    pub basic_auth: Vec<OdataBasicAuthConfig>,
}

fn default_odata_page_size() -> u64 {
    500
}

/// One `[[odata.basic_auth]]` entry: a user name and its password (a secret reference).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OdataBasicAuthConfig {
    pub username: String,
    /// `{ env = "VAR" }`, `{ file = "path" }` or `{ aws_secret = "…" }`.
    pub password: SecretRef,
    /// May read PII fields in clear (default false).
    #[serde(default)]
    pub pii: bool,
}

/// `[platform_events]`: platform events in (subscribed channels, delivered by the sinks like
/// curated changes) and out (published through Pub/Sub `Publish` within the hourly allocation).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformEventsConfig {
    /// Channels to subscribe to: `/event/<Name>__e` or a custom channel `/event/<Name>__chn`.
    /// Sinks name the events by their API name (`objects = ["Order_Shipped__e"]`).
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Platform events sfsync may publish (`POST /api/v1/events/{name}`, `platform_event`
    /// sinks).
    #[serde(default)]
    pub publish: Vec<String>,
    /// Events per Pub/Sub `Publish` call (at most 200).
    #[serde(default = "default_pe_batch")]
    pub publish_batch_max: u64,
    /// Failed publish attempts after which an event is a dead letter.
    #[serde(default = "default_pe_attempts")]
    pub publish_max_attempts: u32,
    /// First retry pause after a failed publish (doubling, up to `publish_retry_max_secs`).
    #[serde(default = "default_pe_retry_base")]
    pub publish_retry_base_ms: u64,
    #[serde(default = "default_pe_retry_max")]
    pub publish_retry_max_secs: u64,
    /// Most events in one `POST /api/v1/events/{name}`.
    #[serde(default = "default_pe_request")]
    pub max_events_per_request: u64,
}

fn default_pe_batch() -> u64 {
    200
}
fn default_pe_attempts() -> u32 {
    8
}
fn default_pe_retry_base() -> u64 {
    1000
}
fn default_pe_retry_max() -> u64 {
    300
}
fn default_pe_request() -> u64 {
    1000
}

/// One `[[outbound_messages]]` entry: a Salesforce Outbound Message definition (workflow rule or
/// flow action "Send Outbound Message") whose notifications sfsync receives at
/// `POST /soap/outbound/<name>/<secret>` on the API's listener, acknowledges once they are in the
/// raw change log, and applies like any other change of the object.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundMessageConfig {
    /// The flow's name: the endpoint's path segment and the raw log's channel
    /// `/outbound/<name>` (letters, digits, `-`, `_`).
    pub name: String,
    /// The object the Outbound Message is defined on (an `[[objects]]` entry).
    pub object: String,
    /// The org that may send (15 or 18 characters, `00D…`): a notification naming any other
    /// org is refused.
    pub organization_id: String,
    /// The shared secret in the endpoint URL Salesforce is given (Salesforce cannot send a
    /// bearer token): at least 24 characters of `A-Z a-z 0-9 - _ . ~`.
    pub secret: SecretRef,
    /// The fields the Outbound Message definition sends (`Id` is always sent). Must include
    /// `SystemModstamp` (the version that orders notifications against other changes); a listed
    /// field the message leaves out is null (Salesforce leaves empty fields out).
    pub fields: Vec<String>,
    /// Integration map: the team answerable for this flow.
    pub team: Option<String>,
    /// Integration map: the flow's target in seconds, Salesforce commit → warehouse.
    pub sla_secs: Option<u64>,
}
