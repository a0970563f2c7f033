//! How to reach a Kafka cluster: bootstrap servers, identity, TLS and SASL, plus librdkafka
//! properties passed through. [`KafkaConfig::validate`] is pure and exhaustive: it reports every
//! problem at once, each naming its key relative to the config section.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::Deserialize;
use sfsync_salesforce::Secret;

/// The connection settings shared by [`Admin`](crate::Admin), [`Producer`](crate::Producer) and
/// [`Consumer`](crate::Consumer).
///
/// Deserialises from a TOML section such as
/// ```toml
/// bootstrap_servers = "b-1.msk.example:9096,b-2.msk.example:9096"
/// client_id = "sfsync"
/// security_protocol = "sasl_ssl"
/// sasl_mechanism = "scram_sha_512"
/// sasl_username = "sfsync"
/// sasl_password = "..."
/// [extra]
/// "socket.keepalive.enable" = "true"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list (librdkafka's `bootstrap.servers`).
    pub bootstrap_servers: String,
    /// The client id the brokers log and quota by.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// Required with `sasl_ssl`, refused otherwise.
    #[serde(default)]
    pub sasl_mechanism: Option<SaslMechanism>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    /// PEM file of the CA(s) that sign the brokers' certificates (`ssl.ca.location`); without it
    /// the system's trust store is used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Further librdkafka properties, passed through unchanged (see librdkafka's
    /// CONFIGURATION.md). Properties this crate sets itself are refused here.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

fn default_client_id() -> String {
    "sfsync".to_string()
}

/// How the client talks to the brokers (`security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No encryption, no authentication: for a broker on loopback or a private test network.
    #[default]
    Plaintext,
    /// TLS, optionally with a client certificate given through `extra`.
    Ssl,
    /// SASL authentication over TLS (Amazon MSK's SCRAM listener, Confluent Cloud's PLAIN).
    SaslSsl,
}

impl SecurityProtocol {
    fn librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
}

/// The SASL mechanism (`sasl.mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaslMechanism {
    Plain,
    #[serde(rename = "scram_sha_256")]
    ScramSha256,
    #[serde(rename = "scram_sha_512")]
    ScramSha512,
}

impl SaslMechanism {
    fn librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// One problem found by [`KafkaConfig::validate`]: the key (relative to the Kafka section, e.g.
/// `sasl_username` or `extra."acks"`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// librdkafka properties that [`KafkaConfig`]'s own fields or this crate's guarantees set; `extra`
/// may not override them. The second element says where the setting comes from.
const RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "use bootstrap_servers"),
    ("metadata.broker.list", "use bootstrap_servers"),
    ("client.id", "use client_id"),
    ("security.protocol", "use security_protocol"),
    ("sasl.mechanism", "use sasl_mechanism"),
    ("sasl.mechanisms", "use sasl_mechanism"),
    ("sasl.username", "use sasl_username"),
    ("sasl.password", "use sasl_password"),
    ("ssl.ca.location", "use ca_file"),
    (
        "enable.idempotence",
        "the producer is always idempotent (ordering per key across retries depends on it)",
    ),
    ("acks", "the producer always waits for all in-sync replicas"),
    (
        "request.required.acks",
        "the producer always waits for all in-sync replicas",
    ),
    (
        "message.timeout.ms",
        "set by the producer's delivery timeout (ProducerOptions::delivery_timeout)",
    ),
    (
        "delivery.timeout.ms",
        "set by the producer's delivery timeout (ProducerOptions::delivery_timeout)",
    ),
    ("group.id", "given when the consumer is created"),
    (
        "enable.auto.commit",
        "the consumer commits only what the caller commits",
    ),
    (
        "transactional.id",
        "transactions are not used (the test broker cannot do them)",
    ),
];

/// Whether this build of librdkafka has TLS (the `tls` feature, on by default).
pub const TLS_BUILT_IN: bool = cfg!(feature = "tls");

impl KafkaConfig {
    /// A plaintext config for `bootstrap_servers` with every other field at its default.
    pub fn plaintext(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            client_id: default_client_id(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ca_file: None,
            extra: BTreeMap::new(),
        }
    }

    /// Checks every field without any I/O (the CA file is not opened) and returns all problems,
    /// each naming its key. Extra properties are checked against librdkafka's own list of
    /// property names and values.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(ConfigProblem {
                key: key.to_string(),
                message,
            })
        };

        let servers: Vec<&str> = self
            .bootstrap_servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            problem(
                "bootstrap_servers",
                "is empty; give at least one host:port".to_string(),
            );
        }
        for server in &servers {
            if let Err(reason) = check_host_port(server) {
                problem("bootstrap_servers", format!("'{server}': {reason}"));
            }
        }
        if self.client_id.trim().is_empty() {
            problem("client_id", "is empty".to_string());
        } else if !self
            .client_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            problem(
                "client_id",
                format!(
                    "'{}' may contain only ASCII letters, digits, '.', '_' and '-'",
                    self.client_id
                ),
            );
        }

        let sasl = self.security_protocol == SecurityProtocol::SaslSsl;
        if self.security_protocol != SecurityProtocol::Plaintext && !TLS_BUILT_IN {
            problem(
                "security_protocol",
                format!(
                    "'{}' needs TLS, but this sfsync was built without the sfsync-kafka feature \
                     'tls'",
                    self.security_protocol.librdkafka()
                ),
            );
        }
        if sasl {
            if self.sasl_mechanism.is_none() {
                problem(
                    "sasl_mechanism",
                    "is required with security_protocol = \"sasl_ssl\" (plain, scram_sha_256 or \
                     scram_sha_512)"
                        .to_string(),
                );
            }
            if self.sasl_username.as_deref().is_none_or(str::is_empty) {
                problem(
                    "sasl_username",
                    "is required with security_protocol = \"sasl_ssl\"".to_string(),
                );
            }
            if self.sasl_password.as_ref().is_none_or(Secret::is_empty) {
                problem(
                    "sasl_password",
                    "is required with security_protocol = \"sasl_ssl\"".to_string(),
                );
            }
        } else {
            let protocol = self.security_protocol.librdkafka();
            for (key, set) in [
                ("sasl_mechanism", self.sasl_mechanism.is_some()),
                ("sasl_username", self.sasl_username.is_some()),
                ("sasl_password", self.sasl_password.is_some()),
            ] {
                if set {
                    problem(
                        key,
                        format!(
                            "is only used with security_protocol = \"sasl_ssl\", not \
                             \"{protocol}\""
                        ),
                    );
                }
            }
        }
        if let Some(ca) = &self.ca_file {
            if self.security_protocol == SecurityProtocol::Plaintext {
                problem(
                    "ca_file",
                    "is only used with security_protocol = \"ssl\" or \"sasl_ssl\"".to_string(),
                );
            } else if ca.as_os_str().is_empty() {
                problem("ca_file", "is empty".to_string());
            }
        }

        for (key, value) in &self.extra {
            let field = format!("extra.\"{key}\"");
            if let Some((_, why)) = RESERVED.iter().find(|(k, _)| k == key) {
                problem(&field, format!("is set by sfsync-kafka: {why}"));
                continue;
            }
            // librdkafka checks the name and the value's syntax when the property is set on a
            // configuration object; that is pure (no client is created, nothing connects).
            let mut one = ClientConfig::new();
            one.set(key, value);
            if let Err(e) = one.create_native_config() {
                problem(&field, format!("librdkafka refuses '{value}': {e}"));
            }
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The brokers, for error messages.
    pub(crate) fn brokers(&self) -> String {
        self.bootstrap_servers.clone()
    }

    /// The librdkafka configuration for this connection (no role-specific properties yet).
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id)
            .set("security.protocol", self.security_protocol.librdkafka())
            // Reconnect quickly after a broker restart (librdkafka's default backs off to 10 s).
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "2000")
            // librdkafka logs through the `log` crate; keep its chatter about brokers that are
            // down (which our errors report) at warning level.
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
        if let Some(m) = self.sasl_mechanism {
            c.set("sasl.mechanism", m.librdkafka());
        }
        if let Some(u) = &self.sasl_username {
            c.set("sasl.username", u);
        }
        if let Some(p) = &self.sasl_password {
            c.set("sasl.password", p.expose());
        }
        match &self.ca_file {
            Some(ca) => {
                c.set("ssl.ca.location", ca.to_string_lossy());
            }
            // The vendored OpenSSL's built-in CA directory is inside its build tree; "probe"
            // makes librdkafka look in the usual system places (/etc/ssl/certs/...) instead.
            None if self.security_protocol != SecurityProtocol::Plaintext => {
                c.set("ssl.ca.location", "probe");
            }
            None => {}
        }
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }
}

fn check_host_port(server: &str) -> Result<(), String> {
    let (host, port) = server
        .rsplit_once(':')
        .ok_or_else(|| "expected host:port".to_string())?;
    // No "PLAINTEXT://" prefixes: the protocol comes from one place, security_protocol.
    if host.is_empty() || host.contains("://") || host.contains(char::is_whitespace) {
        return Err("expected host:port".to_string());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("port '{port}' is not a number in 1..=65535")),
    }
}

/// Options of a [`Producer`](crate::Producer).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerOptions {
    /// How long librdkafka may try to deliver one record (queueing, retries and broker
    /// acknowledgement included) before reporting it failed (`message.timeout.ms`).
    /// [`Producer::send_batch`](crate::Producer::send_batch) returns within about this time.
    #[serde(default = "default_delivery_timeout_ms")]
    pub delivery_timeout_ms: u64,
    /// How long librdkafka waits to fill a batch before sending it (`linger.ms`).
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Record compression on the wire and in the log.
    #[serde(default)]
    pub compression: Compression,
}

fn default_delivery_timeout_ms() -> u64 {
    30_000
}

fn default_linger_ms() -> u64 {
    5
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            delivery_timeout_ms: default_delivery_timeout_ms(),
            linger_ms: default_linger_ms(),
            compression: Compression::default(),
        }
    }
}

impl ProducerOptions {
    /// The delivery timeout as a [`Duration`].
    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }

    /// Problems with the options, each naming its key (pure).
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        // librdkafka's bounds: message.timeout.ms 0..=2147483647 (0 = infinite, which would let
        // send_batch wait forever), linger.ms 0..=900000.
        if self.delivery_timeout_ms == 0 || self.delivery_timeout_ms > i32::MAX as u64 {
            problems.push(ConfigProblem {
                key: "delivery_timeout_ms".to_string(),
                message: format!(
                    "{} is out of range 1..={} (0 would mean wait forever)",
                    self.delivery_timeout_ms,
                    i32::MAX
                ),
            });
        }
        if self.linger_ms > 900_000 {
            problems.push(ConfigProblem {
                key: "linger_ms".to_string(),
                message: format!("{} is out of range 0..=900000", self.linger_ms),
            });
        }
        if self.linger_ms >= self.delivery_timeout_ms && self.delivery_timeout_ms > 0 {
            problems.push(ConfigProblem {
                key: "linger_ms".to_string(),
                message: format!(
                    "{} must be below delivery_timeout_ms ({})",
                    self.linger_ms, self.delivery_timeout_ms
                ),
            });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Compression codec (`compression.codec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Lz4,
    Snappy,
    Zstd,
}

impl Compression {
    pub(crate) fn librdkafka(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
            Compression::Snappy => "snappy",
            Compression::Zstd => "zstd",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(r: Result<(), Vec<ConfigProblem>>) -> Vec<String> {
        r.err()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.key)
            .collect()
    }

    #[test]
    fn plaintext_config_is_valid() {
        assert_eq!(
            KafkaConfig::plaintext("127.0.0.1:9092,broker-2:9092").validate(),
            Ok(())
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let mut c = KafkaConfig::plaintext(" , host-without-port,h:99999,PLAINTEXT://h:1");
        c.client_id = "sfsync sink".into();
        c.sasl_username = Some("u".into());
        c.ca_file = Some("ca.pem".into());
        c.extra.insert("acks".into(), "1".into());
        c.extra.insert("no.such.property".into(), "1".into());
        c.extra.insert("linger.ms".into(), "soon".into());
        c.extra
            .insert("socket.keepalive.enable".into(), "true".into());
        let problems = c.validate().unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
            [
                "bootstrap_servers",
                "bootstrap_servers",
                "bootstrap_servers",
                "client_id",
                "sasl_username",
                "ca_file",
                "extra.\"acks\"",
                "extra.\"linger.ms\"",
                "extra.\"no.such.property\"",
            ],
            "{text:#?}"
        );
        assert!(text[0].contains("'host-without-port': expected host:port"));
        assert!(text[1].contains("port '99999'"));
        assert!(text[6].contains("always waits for all in-sync replicas"));
        assert!(text[8].contains("librdkafka refuses"), "{}", text[8]);
    }

    #[test]
    fn sasl_ssl_needs_mechanism_user_and_password() {
        let mut c = KafkaConfig::plaintext("b:9096");
        c.security_protocol = SecurityProtocol::SaslSsl;
        let expected: Vec<&str> = if TLS_BUILT_IN {
            vec!["sasl_mechanism", "sasl_username", "sasl_password"]
        } else {
            vec![
                "security_protocol",
                "sasl_mechanism",
                "sasl_username",
                "sasl_password",
            ]
        };
        assert_eq!(keys(c.validate()), expected);
        c.sasl_mechanism = Some(SaslMechanism::ScramSha512);
        c.sasl_username = Some("sfsync".into());
        c.sasl_password = Some(Secret::new("pw"));
        c.ca_file = Some("/etc/ssl/msk-ca.pem".into());
        if TLS_BUILT_IN {
            assert_eq!(c.validate(), Ok(()));
            // The config is accepted by librdkafka as a whole, including SCRAM.
            c.client_config().create_native_config().unwrap();
        }
    }

    #[test]
    fn password_never_shows_in_debug() {
        let mut c = KafkaConfig::plaintext("b:9096");
        c.sasl_password = Some(Secret::new("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn deserialises_from_toml_and_refuses_unknown_keys() {
        let c: KafkaConfig = toml::from_str(
            r#"
            bootstrap_servers = "b-1:9096"
            security_protocol = "sasl_ssl"
            sasl_mechanism = "scram_sha_256"
            sasl_username = "u"
            sasl_password = "p"
            ca_file = "ca.pem"
            [extra]
            "socket.keepalive.enable" = "true"
            "#,
        )
        .unwrap();
        assert_eq!(c.client_id, "sfsync");
        assert_eq!(c.sasl_mechanism, Some(SaslMechanism::ScramSha256));
        assert_eq!(c.extra.len(), 1);
        let err = toml::from_str::<KafkaConfig>("bootstrap_servers = \"b:1\"\nbrokers = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `brokers`"), "{err}");
    }

    #[test]
    fn producer_options_bounds() {
        assert_eq!(ProducerOptions::default().validate(), Ok(()));
        let o = ProducerOptions {
            delivery_timeout_ms: 0,
            linger_ms: 1_000_000,
            compression: Compression::Zstd,
        };
        assert_eq!(keys(o.validate()), ["delivery_timeout_ms", "linger_ms"]);
        let o = ProducerOptions {
            delivery_timeout_ms: 100,
            linger_ms: 100,
            compression: Compression::None,
        };
        assert_eq!(keys(o.validate()), ["linger_ms"]);
    }
}
