//! KMS for envelope encryption: a data key is generated under a KMS key (GenerateDataKey,
//! AES-256), kept only wrapped (its CiphertextBlob), unwrapped in memory at start (Decrypt) and
//! moved to another KMS key without ever leaving KMS in plaintext (ReEncrypt). Every call takes
//! an encryption context, so a wrapped key opens only for the purpose it was made for.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use serde_json::{json, Value};

use crate::client::{blob_field, str_field, AwsClient};
use crate::error::{AwsError, Service};

/// KMS's encryption context: non-secret pairs bound to the ciphertext (authenticated, logged
/// by CloudTrail).
pub type EncryptionContext = BTreeMap<String, String>;

/// A fresh AES-256 data key: its plaintext (in memory only; `Debug` hides it) and the same key
/// wrapped by the KMS key.
pub struct DataKey {
    /// The ARN of the KMS key that wraps it.
    pub key_arn: String,
    pub plaintext: [u8; 32],
    pub ciphertext_blob: Vec<u8>,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("key_arn", &self.key_arn)
            .field("plaintext", &"***")
            .field(
                "ciphertext_blob",
                &format!("{} bytes", self.ciphertext_blob.len()),
            )
            .finish()
    }
}

/// What Decrypt returned: the plaintext (`Debug` hides it) and the KMS key that held it.
pub struct Decrypted {
    pub key_arn: String,
    pub plaintext: Vec<u8>,
}

impl fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decrypted")
            .field("key_arn", &self.key_arn)
            .field("plaintext", &"***")
            .finish()
    }
}

/// What ReEncrypt returned.
#[derive(Debug, Clone)]
pub struct ReEncrypted {
    pub ciphertext_blob: Vec<u8>,
    /// The KMS key it is now under.
    pub key_arn: String,
    /// The KMS key it was under.
    pub source_key_arn: String,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn key_resource(key_id: Option<&str>) -> String {
    match key_id {
        Some(k) => format!("key {k}"),
        None => "the key named in the ciphertext".to_string(),
    }
}

impl AwsClient {
    fn kms_answer<T>(
        &self,
        operation: &'static str,
        resource: &str,
        parse: impl FnOnce() -> Result<T, crate::error::ErrorKind>,
    ) -> Result<T, AwsError> {
        parse().map_err(|kind| AwsError {
            service: Service::Kms,
            operation,
            resource: resource.to_string(),
            kind,
            attempts: 1,
        })
    }

    /// GenerateDataKey with `KeySpec = AES_256` under `key_id` (id, ARN, alias name or alias
    /// ARN).
    pub async fn kms_generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<DataKey, AwsError> {
        let resource = key_resource(Some(key_id));
        let body = json!({ "KeyId": key_id, "KeySpec": "AES_256", "EncryptionContext": context });
        let v = self
            .call(Service::Kms, "GenerateDataKey", &resource, &body)
            .await?;
        self.kms_answer("GenerateDataKey", &resource, || {
            let plaintext = blob_field(&v, "Plaintext")?;
            let plaintext: [u8; 32] = plaintext.as_slice().try_into().map_err(|_| {
                crate::error::ErrorKind::InvalidResponse(format!(
                    "the Plaintext is {} bytes, not 32 (AES_256)",
                    plaintext.len()
                ))
            })?;
            Ok(DataKey {
                key_arn: str_field(&v, "KeyId")?.to_string(),
                plaintext,
                ciphertext_blob: blob_field(&v, "CiphertextBlob")?,
            })
        })
    }

    /// Decrypt; with `key_id`, KMS refuses a ciphertext under any other key.
    pub async fn kms_decrypt(
        &self,
        ciphertext_blob: &[u8],
        key_id: Option<&str>,
        context: &EncryptionContext,
    ) -> Result<Decrypted, AwsError> {
        let resource = key_resource(key_id);
        let mut body = json!({
            "CiphertextBlob": b64(ciphertext_blob),
            "EncryptionContext": context,
        });
        if let Some(k) = key_id {
            body["KeyId"] = Value::String(k.to_string());
        }
        let v = self.call(Service::Kms, "Decrypt", &resource, &body).await?;
        self.kms_answer("Decrypt", &resource, || {
            Ok(Decrypted {
                key_arn: str_field(&v, "KeyId")?.to_string(),
                plaintext: blob_field(&v, "Plaintext")?,
            })
        })
    }

    /// ReEncrypt: decrypts inside KMS under the source context (and `source_key_id` when
    /// given) and encrypts under `destination_key_id` and its context.
    pub async fn kms_re_encrypt(
        &self,
        ciphertext_blob: &[u8],
        source_key_id: Option<&str>,
        source_context: &EncryptionContext,
        destination_key_id: &str,
        destination_context: &EncryptionContext,
    ) -> Result<ReEncrypted, AwsError> {
        let resource = match source_key_id {
            Some(s) => format!("key {s} to key {destination_key_id}"),
            None => format!("to key {destination_key_id}"),
        };
        let mut body = json!({
            "CiphertextBlob": b64(ciphertext_blob),
            "SourceEncryptionContext": source_context,
            "DestinationKeyId": destination_key_id,
            "DestinationEncryptionContext": destination_context,
        });
        if let Some(k) = source_key_id {
            body["SourceKeyId"] = Value::String(k.to_string());
        }
        let v = self
            .call(Service::Kms, "ReEncrypt", &resource, &body)
            .await?;
        self.kms_answer("ReEncrypt", &resource, || {
            Ok(ReEncrypted {
                ciphertext_blob: blob_field(&v, "CiphertextBlob")?,
                key_arn: str_field(&v, "KeyId")?.to_string(),
                source_key_arn: str_field(&v, "SourceKeyId")?.to_string(),
            })
        })
    }

    /// Encrypt (up to 4 KiB of plaintext) under `key_id`; the CiphertextBlob.
    pub async fn kms_encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Vec<u8>, AwsError> {
        let resource = key_resource(Some(key_id));
        let body = json!({
            "KeyId": key_id,
            "Plaintext": b64(plaintext),
            "EncryptionContext": context,
        });
        let v = self.call(Service::Kms, "Encrypt", &resource, &body).await?;
        self.kms_answer("Encrypt", &resource, || blob_field(&v, "CiphertextBlob"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_key_material() {
        let k = DataKey {
            key_arn: "arn:aws:kms:us-east-1:1:key/x".into(),
            plaintext: [0xab; 32],
            ciphertext_blob: vec![1, 2, 3],
        };
        let d = format!("{k:?}");
        assert!(!d.contains("171") && !d.contains("ab, ab"), "{d}");
        assert!(d.contains("3 bytes"), "{d}");
        let p = Decrypted {
            key_arn: "k".into(),
            plaintext: vec![0xcd; 32],
        };
        assert!(!format!("{p:?}").contains("205"));
    }
}
