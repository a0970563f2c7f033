//! Secrets Manager's GetSecretValue: a secret's current (or staged) value, as a string or
//! bytes. `Debug` never shows the value.

use std::fmt;

use serde_json::{json, Value};

use crate::client::{blob_field, str_field, AwsClient};
use crate::error::{AwsError, ErrorKind, Service};

/// A secret's value: `SecretString` or `SecretBinary`.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretValue {
    String(String),
    Binary(Vec<u8>),
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretValue::String(_) => f.write_str("SecretValue::String(***)"),
            SecretValue::Binary(b) => write!(f, "SecretValue::Binary({} bytes)", b.len()),
        }
    }
}

/// One version of a secret.
#[derive(Debug, Clone)]
pub struct SecretVersion {
    pub arn: String,
    pub name: String,
    pub version_id: String,
    pub value: SecretValue,
}

impl AwsClient {
    /// GetSecretValue of `secret_id` (name or ARN), at `version_stage` (default `AWSCURRENT`).
    pub async fn get_secret_value(
        &self,
        secret_id: &str,
        version_stage: Option<&str>,
    ) -> Result<SecretVersion, AwsError> {
        let resource = match version_stage {
            Some(s) => format!("secret {secret_id}, stage {s}"),
            None => format!("secret {secret_id}"),
        };
        let mut body = json!({ "SecretId": secret_id });
        if let Some(s) = version_stage {
            body["VersionStage"] = Value::String(s.to_string());
        }
        let v = self
            .call(Service::SecretsManager, "GetSecretValue", &resource, &body)
            .await?;
        let parse = || -> Result<SecretVersion, ErrorKind> {
            let value = match v.get("SecretString").and_then(Value::as_str) {
                Some(s) => SecretValue::String(s.to_string()),
                None if v.get("SecretBinary").is_some() => {
                    SecretValue::Binary(blob_field(&v, "SecretBinary")?)
                }
                None => {
                    return Err(ErrorKind::InvalidResponse(
                        "neither SecretString nor SecretBinary".into(),
                    ))
                }
            };
            Ok(SecretVersion {
                arn: str_field(&v, "ARN").unwrap_or_default().to_string(),
                name: str_field(&v, "Name").unwrap_or(secret_id).to_string(),
                version_id: str_field(&v, "VersionId").unwrap_or_default().to_string(),
                value,
            })
        };
        parse().map_err(|kind| AwsError {
            service: Service::SecretsManager,
            operation: "GetSecretValue",
            resource,
            kind,
            attempts: 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let v = SecretValue::String("hunter2".into());
        assert_eq!(format!("{v:?}"), "SecretValue::String(***)");
        let v = SecretValue::Binary(vec![1, 2]);
        assert_eq!(format!("{v:?}"), "SecretValue::Binary(2 bytes)");
    }
}
