//! A small AWS client for what sfsync needs of AWS besides S3: KMS (envelope encryption of the
//! PII data keys) and Secrets Manager (secrets named in the config), both over the AWS JSON 1.1
//! protocol, SigV4-signed, over the workspace's reqwest/rustls.
//!
//! Guarantees: a call is retried only on throttling, 5xx, AWS's internal errors and transport
//! failures (exponential backoff with jitter, a bounded number of attempts, each with a
//! timeout), so a refusal (no such key, access denied, wrong encryption context) surfaces at
//! once. Errors name the service, operation, key or secret id and AWS's error type and
//! message; no secret value, key material or credential is ever put in an error, a log line or
//! a `Debug` output. Region, endpoints and credentials come from the standard `AWS_*`
//! variables ([`AwsConfig::from_env`]).

pub mod client;
pub mod config;
pub mod error;
pub mod kms;
pub mod secrets_manager;
pub mod sigv4;

pub use client::AwsClient;
pub use config::{AwsConfig, CredentialSource, EnvError};
pub use error::{AwsError, ErrorClass, ErrorKind, Service};
pub use kms::{DataKey, Decrypted, EncryptionContext, ReEncrypted};
pub use secrets_manager::{SecretValue, SecretVersion};
