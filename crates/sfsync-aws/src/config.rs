//! Where AWS is and who sfsync is to it, from the standard environment variables (read through
//! an injected lookup, so tests and `config check` can give their own): the region, the
//! endpoint of each service and the credential provider chain.
//!
//! Credentials come from object_store's provider chain (the one the S3 archive uses), in its
//! order: static keys (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`),
//! web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, e.g. EKS IRSA), ECS task
//! credentials (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`), EKS Pod Identity
//! (`AWS_CONTAINER_CREDENTIALS_FULL_URI` + `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`), else the EC2
//! instance metadata service. Shared config/credentials files and `AWS_PROFILE` are not read.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AwsCredentialProvider};
use url::Url;

use crate::error::Service;

/// A problem with the AWS environment, naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EnvError(pub String);

/// The variables passed on to the credential provider chain.
const CHAIN_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_METADATA_ENDPOINT",
    "AWS_IMDSV1_FALLBACK",
];

/// Which member of the chain supplies the credentials (for summaries; no secret in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// `AWS_ACCESS_KEY_ID` (shown by its last four characters), with a session token or not.
    EnvironmentKeys {
        access_key_id: String,
        session_token: bool,
    },
    WebIdentity {
        role_arn: String,
    },
    EcsTask,
    EksPodIdentity,
    InstanceMetadata,
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::EnvironmentKeys {
                access_key_id,
                session_token,
            } => write!(
                f,
                // Only the last four characters, as `aws configure list` shows it.
                "environment keys (AWS_ACCESS_KEY_ID …{}{})",
                access_key_id
                    .chars()
                    .skip(access_key_id.chars().count().saturating_sub(4))
                    .collect::<String>(),
                if *session_token {
                    ", with AWS_SESSION_TOKEN"
                } else {
                    ""
                }
            ),
            CredentialSource::WebIdentity { role_arn } => {
                write!(f, "web identity (AWS_ROLE_ARN {role_arn})")
            }
            CredentialSource::EcsTask => f.write_str("ECS task role (container credentials)"),
            CredentialSource::EksPodIdentity => f.write_str("EKS Pod Identity"),
            CredentialSource::InstanceMetadata => {
                f.write_str("EC2 instance metadata (no credentials in the environment)")
            }
        }
    }
}

/// Region, endpoints, credentials and the client's limits.
#[derive(Clone)]
pub struct AwsConfig {
    pub region: String,
    pub kms_endpoint: Url,
    pub secrets_manager_endpoint: Url,
    pub credentials: AwsCredentialProvider,
    pub credential_source: CredentialSource,
    /// Connecting may take this long.
    pub connect_timeout: Duration,
    /// One request (connect to last byte) may take this long.
    pub request_timeout: Duration,
    /// Attempts per call: throttling, 5xx and transport failures are retried with backoff
    /// (`AWS_MAX_ATTEMPTS`, default 4).
    pub max_attempts: u32,
    /// First backoff; doubled per attempt (with jitter), at most `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl fmt::Debug for AwsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsConfig")
            .field("region", &self.region)
            .field("kms_endpoint", &self.kms_endpoint.as_str())
            .field(
                "secrets_manager_endpoint",
                &self.secrets_manager_endpoint.as_str(),
            )
            .field("credential_source", &self.credential_source)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

fn non_empty(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn is_true(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes")
}

impl AwsConfig {
    /// Reads the standard variables through `env`. The region is required (`AWS_REGION`, else
    /// `AWS_DEFAULT_REGION`); each service's endpoint is `AWS_ENDPOINT_URL_KMS` /
    /// `AWS_ENDPOINT_URL_SECRETS_MANAGER`, else `AWS_ENDPOINT_URL`, else AWS's regional
    /// endpoint. A plain `http://` endpoint needs `AWS_ALLOW_HTTP=true` (as for the S3 archive).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<AwsConfig, EnvError> {
        let region = non_empty(env, "AWS_REGION")
            .map(|r| ("AWS_REGION", r))
            .or_else(|| non_empty(env, "AWS_DEFAULT_REGION").map(|r| ("AWS_DEFAULT_REGION", r)));
        let Some((region_var, region)) = region else {
            return Err(EnvError(
                "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION)".into(),
            ));
        };
        if !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(EnvError(format!(
                "{region_var} \"{region}\" is not an AWS region (like eu-west-1)"
            )));
        }
        let allow_http = non_empty(env, "AWS_ALLOW_HTTP").is_some_and(|v| is_true(&v));
        let endpoint = |service: Service| -> Result<Url, EnvError> {
            let var = service.endpoint_env();
            let (var, text) = match non_empty(env, var) {
                Some(v) => (var, v),
                None => match non_empty(env, "AWS_ENDPOINT_URL") {
                    Some(v) => ("AWS_ENDPOINT_URL", v),
                    None => {
                        let suffix = if region.starts_with("cn-") {
                            "amazonaws.com.cn"
                        } else {
                            "amazonaws.com"
                        };
                        let url = format!("https://{}.{region}.{suffix}/", service.signing_name());
                        return Url::parse(&url)
                            .map_err(|e| EnvError(format!("{region_var}: {url}: {e}")));
                    }
                },
            };
            let url = Url::parse(&text)
                .map_err(|e| EnvError(format!("{var} \"{text}\" is not a URL: {e}")))?;
            match url.scheme() {
                "https" => {}
                "http" if allow_http => {}
                "http" => {
                    return Err(EnvError(format!(
                        "{var} \"{text}\" is plain HTTP: set AWS_ALLOW_HTTP=true to allow it \
                         (test servers only)"
                    )))
                }
                s => {
                    return Err(EnvError(format!(
                        "{var} \"{text}\": the scheme must be https (not {s})"
                    )))
                }
            }
            if url.host_str().is_none() {
                return Err(EnvError(format!("{var} \"{text}\" has no host")));
            }
            Ok(url)
        };
        let kms_endpoint = endpoint(Service::Kms)?;
        let secrets_manager_endpoint = endpoint(Service::SecretsManager)?;
        let max_attempts = match non_empty(env, "AWS_MAX_ATTEMPTS") {
            None => 4,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=20).contains(&n) => n,
                _ => {
                    return Err(EnvError(format!(
                        "AWS_MAX_ATTEMPTS \"{v}\" must be a whole number from 1 to 20"
                    )))
                }
            },
        };
        let (credentials, credential_source) = credential_chain(env, &region)?;
        Ok(AwsConfig {
            region,
            kms_endpoint,
            secrets_manager_endpoint,
            credentials,
            credential_source,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
            max_attempts,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        })
    }

    /// [`Self::from_env`] against the process environment.
    pub fn from_process_env() -> Result<AwsConfig, EnvError> {
        Self::from_env(&|name| std::env::var(name).ok())
    }

    pub fn endpoint(&self, service: Service) -> &Url {
        match service {
            Service::Kms => &self.kms_endpoint,
            Service::SecretsManager => &self.secrets_manager_endpoint,
        }
    }
}

/// object_store's provider chain, fed from `env`, and which member it picked (the chain's own
/// order, see the module doc).
fn credential_chain(
    env: &dyn Fn(&str) -> Option<String>,
    region: &str,
) -> Result<(AwsCredentialProvider, CredentialSource), EnvError> {
    let mut b = AmazonS3Builder::new()
        // The builder wants a bucket; only its credential provider is used.
        .with_bucket_name("sfsync-credentials")
        .with_region(region)
        .with_retry(object_store::RetryConfig {
            backoff: Default::default(),
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
        })
        .with_client_options(
            object_store::ClientOptions::new()
                .with_timeout(Duration::from_secs(10))
                .with_connect_timeout(Duration::from_secs(5)),
        );
    for name in CHAIN_VARS {
        if let Some(v) = non_empty(env, name) {
            let key = name
                .to_ascii_lowercase()
                .parse()
                .map_err(|e| EnvError(format!("{name}: {e}")))?;
            b = b.with_config(key, v);
        }
    }
    let source = match (
        non_empty(env, "AWS_ACCESS_KEY_ID"),
        non_empty(env, "AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(id), Some(_)) => CredentialSource::EnvironmentKeys {
            access_key_id: id,
            session_token: non_empty(env, "AWS_SESSION_TOKEN").is_some(),
        },
        (Some(_), None) => {
            return Err(EnvError(
                "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(EnvError(
                "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into(),
            ))
        }
        (None, None) => match (
            non_empty(env, "AWS_WEB_IDENTITY_TOKEN_FILE"),
            non_empty(env, "AWS_ROLE_ARN"),
        ) {
            (Some(_), Some(role_arn)) => CredentialSource::WebIdentity { role_arn },
            _ if non_empty(env, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some() => {
                CredentialSource::EcsTask
            }
            _ if non_empty(env, "AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
                && non_empty(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").is_some() =>
            {
                CredentialSource::EksPodIdentity
            }
            _ => CredentialSource::InstanceMetadata,
        },
    };
    let s3 = b
        .build()
        .map_err(|e| EnvError(format!("the AWS credential provider chain: {e}")))?;
    Ok((Arc::clone(s3.credentials()), source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const KEYS: [(&str, &str); 2] = [
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
    ];

    #[test]
    fn the_region_is_required_and_picks_default_endpoints() {
        let e = AwsConfig::from_env(&env_of(&KEYS)).unwrap_err();
        assert!(e.0.contains("AWS_REGION"), "{e}");
        let mut vars = KEYS.to_vec();
        vars.push(("AWS_DEFAULT_REGION", "eu-west-1"));
        let c = AwsConfig::from_env(&env_of(&vars)).unwrap();
        assert_eq!(c.region, "eu-west-1");
        assert_eq!(
            c.kms_endpoint.as_str(),
            "https://kms.eu-west-1.amazonaws.com/"
        );
        assert_eq!(
            c.secrets_manager_endpoint.as_str(),
            "https://secretsmanager.eu-west-1.amazonaws.com/"
        );
        assert_eq!(c.max_attempts, 4);
        assert_eq!(
            c.credential_source.to_string(),
            "environment keys (AWS_ACCESS_KEY_ID …MPLE)"
        );
        vars.push(("AWS_REGION", "cn-north-1"));
        let c = AwsConfig::from_env(&env_of(&vars)).unwrap();
        assert_eq!(
            c.kms_endpoint.as_str(),
            "https://kms.cn-north-1.amazonaws.com.cn/"
        );
    }

    #[test]
    fn service_endpoints_win_over_the_general_one() {
        let mut vars = KEYS.to_vec();
        vars.extend([
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", "https://aws.internal:4566"),
            ("AWS_ENDPOINT_URL_KMS", "https://kms.internal"),
        ]);
        let c = AwsConfig::from_env(&env_of(&vars)).unwrap();
        assert_eq!(c.kms_endpoint.as_str(), "https://kms.internal/");
        assert_eq!(
            c.secrets_manager_endpoint.as_str(),
            "https://aws.internal:4566/"
        );
        vars.push(("AWS_ENDPOINT_URL_SECRETS_MANAGER", "https://sm.internal"));
        let c = AwsConfig::from_env(&env_of(&vars)).unwrap();
        assert_eq!(c.secrets_manager_endpoint.as_str(), "https://sm.internal/");
    }

    #[test]
    fn plain_http_needs_allow_http_and_bad_values_name_the_variable() {
        let mut vars = KEYS.to_vec();
        vars.extend([
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
        ]);
        let e = AwsConfig::from_env(&env_of(&vars)).unwrap_err();
        assert!(
            e.0.starts_with("AWS_ENDPOINT_URL \"http://127.0.0.1:5000\" is plain HTTP"),
            "{e}"
        );
        vars.push(("AWS_ALLOW_HTTP", "true"));
        assert!(AwsConfig::from_env(&env_of(&vars)).is_ok());
        vars.push(("AWS_ENDPOINT_URL_KMS", "not a url"));
        let e = AwsConfig::from_env(&env_of(&vars)).unwrap_err();
        assert!(e.0.starts_with("AWS_ENDPOINT_URL_KMS \"not a url\""), "{e}");
        let e = AwsConfig::from_env(&env_of(&[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
        ]))
        .unwrap_err();
        assert!(e.0.contains("AWS_SECRET_ACCESS_KEY is not"), "{e}");
        let e = AwsConfig::from_env(&env_of(&[("AWS_REGION", "US East")])).unwrap_err();
        assert!(e.0.contains("is not an AWS region"), "{e}");
        let mut vars = KEYS.to_vec();
        vars.extend([("AWS_REGION", "us-east-1"), ("AWS_MAX_ATTEMPTS", "0")]);
        let e = AwsConfig::from_env(&env_of(&vars)).unwrap_err();
        assert!(e.0.starts_with("AWS_MAX_ATTEMPTS"), "{e}");
    }

    #[test]
    fn the_chain_member_is_named() {
        let c = AwsConfig::from_env(&env_of(&[
            ("AWS_REGION", "us-east-1"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/sfsync"),
        ]))
        .unwrap();
        assert_eq!(
            c.credential_source.to_string(),
            "web identity (AWS_ROLE_ARN arn:aws:iam::123456789012:role/sfsync)"
        );
        let c = AwsConfig::from_env(&env_of(&[
            ("AWS_REGION", "us-east-1"),
            (
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "/v2/credentials/x",
            ),
        ]))
        .unwrap();
        assert_eq!(c.credential_source, CredentialSource::EcsTask);
        let c = AwsConfig::from_env(&env_of(&[("AWS_REGION", "us-east-1")])).unwrap();
        assert_eq!(c.credential_source, CredentialSource::InstanceMetadata);
        // Building the chain contacts nothing: no credential is fetched here.
        let d = format!("{c:?}");
        assert!(d.contains("InstanceMetadata"), "{d}");
    }
}
