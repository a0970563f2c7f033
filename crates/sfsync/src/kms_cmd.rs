//! `sfsync keys kms-generate` and `sfsync keys kms-rewrap`: PII data keys wrapped by AWS KMS
//! (envelope encryption).
//!
//! Guarantees: the plaintext data key is never written anywhere — `kms-generate` writes only the
//! base64 CiphertextBlob (mode 0600, never over an existing file), after checking that KMS
//! opens it again under the encryption context `{"sfsync:pii_key_id": <key id>}`.
//! `kms-rewrap` moves wrapped keys to another KMS key with ReEncrypt (the data key never leaves
//! KMS in plaintext, so no sealed value changes), checks each new blob opens under the new KMS
//! key, and replaces each file atomically: a failure leaves every file either as it was or
//! rewrapped, and running it again is safe. Region, endpoint and credentials come from the
//! standard `AWS_*` environment variables. Exit codes: 0 done, 1 AWS refused or failed, 2 bad
//! arguments, config or AWS environment.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use base64::Engine;
use clap::Args;
use sfsync_aws::AwsClient;

use crate::admin_cmd::{failed, usage, Failure};
use crate::config::secrets::{pii_context, read_wrapped_key_file, PII_CONTEXT_KEY};
use crate::config::validate::{key_id_problem, PiiKeySource};

#[derive(Debug, Args)]
pub struct KmsGenerateArgs {
    /// The KMS key that wraps the new data key: key id, key ARN, `alias/NAME` or alias ARN.
    #[arg(long)]
    pub kms_key_id: String,
    /// Where to write the wrapped data key (the base64 CiphertextBlob); never overwritten.
    #[arg(long)]
    pub out: PathBuf,
    /// The sfsync key id the data key gets (`key_id` in `[pii]`), bound to it through the
    /// encryption context. Default: `pii-<UTC date and time>`.
    #[arg(long)]
    pub key_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct KmsRewrapArgs {
    /// The KMS key to move the wrapped data keys to.
    #[arg(long)]
    pub kms_key_id: String,
    /// Wrapped data key files. With `--config`, each must be a `wrapped_key_file` of it
    /// (default: all of them).
    pub files: Vec<PathBuf>,
    /// Take each file's key id from this config's `[pii]` / `[[pii.old_keys]]` entries.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The key id of the one FILE (without `--config`).
    #[arg(long)]
    pub key_id: Option<String>,
}

fn client() -> Result<AwsClient, Failure> {
    AwsClient::from_env(&|name| std::env::var(name).ok())
        .map_err(|e| usage(anyhow!("the AWS environment: {e}")))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Writes `text` to `path` through a temporary file in the same directory (mode 0600) and a
/// rename; with `create_new`, an existing `path` is an error and is left alone.
fn write_private(path: &Path, text: &str, create_new: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let written = f
        .write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()));
    drop(f);
    let placed = written.and_then(|_| {
        if create_new {
            // hard_link fails if `path` exists: never overwrite a wrapped key.
            std::fs::hard_link(&tmp, path).with_context(|| format!("creating {}", path.display()))
        } else {
            std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
        }
    });
    let _ = std::fs::remove_file(&tmp);
    placed
}

/// `sfsync keys kms-generate`.
pub async fn generate(args: KmsGenerateArgs) -> Result<i32, Failure> {
    let key_id = args
        .key_id
        .clone()
        .unwrap_or_else(|| format!("pii-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S")));
    if let Some(p) = key_id_problem(&key_id) {
        return Err(usage(anyhow!("--key-id '{key_id}': {p}")));
    }
    if args.kms_key_id.trim().is_empty() {
        return Err(usage(anyhow!("--kms-key-id is empty")));
    }
    if args.out.exists() {
        return Err(usage(anyhow!(
            "{} exists: a wrapped key is never overwritten (choose another --out)",
            args.out.display()
        )));
    }
    let client = client()?;
    let context = pii_context(&key_id);
    let data_key = client
        .kms_generate_data_key(&args.kms_key_id, &context)
        .await
        .context("generating the data key")
        .map_err(failed)?;
    // The blob must open again under the same key and context before it is kept.
    let check = client
        .kms_decrypt(&data_key.ciphertext_blob, Some(&args.kms_key_id), &context)
        .await
        .context("checking the wrapped data key (KMS Decrypt)")
        .map_err(failed)?;
    if check.plaintext.as_slice() != data_key.plaintext.as_slice() {
        return Err(failed(anyhow!(
            "KMS Decrypt of the new wrapped key did not give back the generated key; nothing \
             was written"
        )));
    }
    drop(check);
    let arn = data_key.key_arn.clone();
    let blob = b64(&data_key.ciphertext_blob);
    drop(data_key);
    write_private(&args.out, &format!("{blob}\n"), true)
        .context("writing the wrapped data key")
        .map_err(usage)?;
    println!(
        "wrote {}: a new AES-256 data key for key id '{key_id}', wrapped by KMS key {arn} \
         (encryption context {PII_CONTEXT_KEY}={key_id}); the plaintext key is not stored",
        args.out.display()
    );
    println!("use it in [pii] (or a [[pii.old_keys]] entry):");
    println!("  key_id = \"{key_id}\"");
    println!("  kms_key_id = \"{}\"", args.kms_key_id);
    println!("  wrapped_key_file = \"{}\"", args.out.display());
    Ok(0)
}

/// One wrapped key to move: its file and the sfsync key id of its encryption context.
struct Target {
    file: PathBuf,
    key_id: String,
    /// Where the config names it (`pii`, `pii.old_keys[1]`), when from a config.
    table: Option<String>,
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn targets(args: &KmsRewrapArgs) -> Result<Vec<Target>, Failure> {
    match (&args.config, &args.key_id) {
        (Some(_), Some(_)) => Err(usage(anyhow!(
            "give --config (key ids from its entries) or --key-id (for one FILE), not both"
        ))),
        (None, None) => Err(usage(anyhow!(
            "each file's key id is needed (its encryption context): give --config or --key-id"
        ))),
        (None, Some(key_id)) => {
            if let Some(p) = key_id_problem(key_id) {
                return Err(usage(anyhow!("--key-id '{key_id}': {p}")));
            }
            match args.files.as_slice() {
                [file] => Ok(vec![Target {
                    file: file.clone(),
                    key_id: key_id.clone(),
                    table: None,
                }]),
                _ => Err(usage(anyhow!(
                    "--key-id names the key id of exactly one FILE ({} given); use --config for \
                     several",
                    args.files.len()
                ))),
            }
        }
        (Some(config), None) => {
            let loaded = crate::config::load(config).map_err(|e| usage(anyhow!("{e}")))?;
            let mut wrapped = Vec::new();
            if let Some(pii) = &loaded.config.pii {
                if let PiiKeySource::Kms {
                    wrapped_key_file, ..
                } = &pii.key
                {
                    wrapped.push(Target {
                        file: wrapped_key_file.clone(),
                        key_id: pii.key_id.clone(),
                        table: Some("pii".into()),
                    });
                }
                for (i, old) in pii.old_keys.iter().enumerate() {
                    if let PiiKeySource::Kms {
                        wrapped_key_file, ..
                    } = &old.key
                    {
                        wrapped.push(Target {
                            file: wrapped_key_file.clone(),
                            key_id: old.key_id.clone(),
                            table: Some(format!("pii.old_keys[{i}]")),
                        });
                    }
                }
            }
            if wrapped.is_empty() {
                return Err(usage(anyhow!(
                    "{}: no PII key is KMS-wrapped (no wrapped_key_file in [pii] or \
                     [[pii.old_keys]])",
                    config.display()
                )));
            }
            if args.files.is_empty() {
                return Ok(wrapped);
            }
            let mut out = Vec::new();
            for f in &args.files {
                let Some(pos) = wrapped.iter().position(|t| same_file(&t.file, f)) else {
                    let known: Vec<String> = wrapped
                        .iter()
                        .map(|t| t.file.display().to_string())
                        .collect();
                    return Err(usage(anyhow!(
                        "{} is not a wrapped_key_file of {} (those are: {})",
                        f.display(),
                        config.display(),
                        known.join(", ")
                    )));
                };
                out.push(wrapped.remove(pos));
            }
            Ok(out)
        }
    }
}

/// `sfsync keys kms-rewrap`.
pub async fn rewrap(args: KmsRewrapArgs) -> Result<i32, Failure> {
    if args.kms_key_id.trim().is_empty() {
        return Err(usage(anyhow!("--kms-key-id is empty")));
    }
    let targets = targets(&args)?;
    // Every file must be readable before anything is moved.
    let mut blobs = Vec::new();
    for t in &targets {
        blobs.push(read_wrapped_key_file(&t.file).map_err(|e| usage(anyhow!("{e}")))?);
    }
    let client = client()?;
    let dest = &args.kms_key_id;
    let mut tables = Vec::new();
    for (t, blob) in targets.iter().zip(&blobs) {
        let context = pii_context(&t.key_id);
        let what = format!("{} (key id '{}')", t.file.display(), t.key_id);
        // No SourceKeyId: KMS reads it from the blob, so a file already moved by an earlier,
        // interrupted run is simply re-encrypted to the same key again.
        let moved = client
            .kms_re_encrypt(blob, None, &context, dest, &context)
            .await
            .with_context(|| format!("rewrapping {what}; files named before it are rewrapped"))
            .map_err(failed)?;
        client
            .kms_decrypt(&moved.ciphertext_blob, Some(dest), &context)
            .await
            .with_context(|| format!("checking the rewrapped {what}; the file is unchanged"))
            .map_err(failed)?;
        write_private(
            &t.file,
            &format!("{}\n", b64(&moved.ciphertext_blob)),
            false,
        )
        .with_context(|| format!("replacing {what}"))
        .map_err(failed)?;
        println!(
            "rewrapped {what}: KMS key {} -> {}",
            moved.source_key_arn, moved.key_arn
        );
        if let Some(table) = &t.table {
            tables.push(if table == "pii" {
                "[pii]".to_string()
            } else {
                table.clone()
            });
        }
    }
    println!(
        "the data keys are unchanged, so is every sealed value; now set kms_key_id = \"{dest}\" \
         {}",
        if tables.is_empty() {
            "where these files are configured".to_string()
        } else {
            format!("in {}", tables.join(" and "))
        }
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_private_never_overwrites_when_asked_and_replaces_otherwise() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.kms");
        write_private(&p, "one\n", true).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one\n");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let e = write_private(&p, "two\n", true).unwrap_err();
        assert!(format!("{e:#}").contains("File exists"), "{e:#}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one\n");
        write_private(&p, "three\n", false).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "three\n");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
